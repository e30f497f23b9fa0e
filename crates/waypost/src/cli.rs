use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Waypost: WhatsApp Business messaging, ad attribution and business-system connector.
#[derive(Debug, Parser)]
#[command(
    name = "waypost",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// `waypost --listen …` is `waypost serve --listen …`.
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Accepted by every subcommand.
#[derive(Debug, Args, Default)]
pub struct GlobalArgs {
    /// Configuration file (default: ./waypost.toml if it exists).
    #[arg(long, global = true, env = "WAYPOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder for the embedded SQLite database (default ./waypost-data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// postgres://… (production) or sqlite://PATH; empty means SQLite in the data folder.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: HTTP API, job workers and scheduler (the default command).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(JsonFlag),
    /// Print the effective configuration, secrets masked.
    Config(JsonFlag),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// Inspect and operate the job queue.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Manage people who sign in.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage the encryption keys for secrets at rest.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Run the WhatsApp Cloud API simulator, or inject a customer message into one.
    Simulator(Box<SimulatorArgs>),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SimulatorArgs {
    #[command(subcommand)]
    pub action: Option<SimulatorAction>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub listen: String,
    /// Where signed webhooks go: a channel's callback URL.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// The app secret webhooks are signed with (the channel's `app_secret`).
    #[arg(long)]
    pub app_secret: Option<String>,
    #[arg(long, default_value = "100000000000001")]
    pub phone_number_id: String,
    #[arg(long, default_value_t = 80)]
    pub throughput_mps: u32,
    /// Share of accepted sends that fail later (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub failure_rate: f64,
    /// The error code of those failures.
    #[arg(long, default_value_t = 131_026)]
    pub failure_code: i64,
    /// Require this token on the control routes (inject, stats, numbers, faults).
    #[arg(long)]
    pub token: Option<String>,
    /// How long a webhook Waypost does not take is retried, less and less often (Meta: up to
    /// 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub retry_window_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum SimulatorAction {
    /// Send a customer message through a running simulator (standalone, or the demo inside
    /// `waypost serve`).
    Inject {
        /// The simulator's base URL, e.g. http://127.0.0.1:8080 for the built-in demo.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The simulator's control token. Omitted: the embedded demo's, read from the data
        /// folder (the standalone simulator needs one only if started with --token).
        #[arg(long)]
        token: Option<String>,
        /// The customer's number, digits with country code.
        #[arg(long)]
        from: Option<String>,
        /// A business-scoped user id, for customers without a phone number.
        #[arg(long)]
        bsuid: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// A Meta message type: text, image, location, button_reply, reaction, or any other with
        /// --object.
        #[arg(long = "type", default_value = "text")]
        kind: String,
        #[arg(long)]
        text: Option<String>,
        /// The type's object as Meta sends it, as JSON (any message type: video, contacts,
        /// order, system, edit, ...).
        #[arg(long)]
        object: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user, optionally as a member of a tenant. Prints a generated password once
    /// unless --password-stdin is given.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, value_name = "TENANT_ID", requires = "role")]
        tenant: Option<String>,
        /// owner, admin, agent, analyst or viewer (with --tenant).
        #[arg(long, requires = "tenant")]
        role: Option<String>,
        /// A platform operator (manages tenants; sees tenant data redacted by default).
        #[arg(long)]
        operator: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        json: bool,
    },
    /// Set a new password and end all of the user's sessions.
    ResetPassword {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chains (one tenant's, or the platform's and every tenant's) and report
    /// the first broken link. Exits non-zero if any chain is broken.
    Verify {
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (base64) for WAYPOST_MASTER_KEY.
    GenerateMaster,
    /// List data keys and their state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a data key, make it active, and re-encrypt every stored secret with it (online).
    Rotate {
        #[arg(long)]
        json: bool,
    },
    /// Retire a previous data key once no secret uses it.
    Retire {
        key_id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Do not serve HTTP (a worker-only process).
    #[arg(long)]
    pub no_http: bool,
    /// Do not run jobs in this process.
    #[arg(long)]
    pub no_workers: bool,
    /// Do not fire recurring jobs from this process.
    #[arg(long)]
    pub no_scheduler: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key; the key is printed once.
    Create {
        #[arg(long, value_name = "TENANT_ID")]
        tenant: String,
        /// owner, admin, agent, analyst or viewer.
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "cli")]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List a tenant's API keys.
    List {
        #[arg(long, value_name = "TENANT_ID")]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key.
    Revoke {
        #[arg(long, value_name = "TENANT_ID")]
        tenant: String,
        /// The key's id.
        key_id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// pending, done or dead.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Put a dead job back in the queue.
    Replay {
        job_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Enqueue probe jobs and wait until workers have run them all: an end-to-end check of
    /// the queue that also reports duplicates and which worker ran what.
    Probe {
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        #[arg(long)]
        json: bool,
    },
}
