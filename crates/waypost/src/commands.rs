use std::{str::FromStr, sync::Arc, time::Duration};

use serde_json::json;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};
use waypost_api::ApiKeySecret;
use waypost_core::{ApiKeyId, Error, ErrorCode, JobId, Result, Role, TenantId};
use waypost_store::{AuditEvent, JobState, NewApiKey, Store, broken_chain_error};
use waypost_vault::{MasterKey, Vault};

use crate::{
    cli::{
        ApiKeyCommand, AuditCommand, Cli, Command, GlobalArgs, JobsCommand, KeysCommand, ServeArgs,
        SimulatorAction, SimulatorArgs, TenantCommand, UserCommand,
    },
    config::Config,
    serve,
};

pub async fn run(cli: Cli) -> Result<()> {
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    let mut config = load_config(&cli.global)?;
    if let Command::Serve(args) = &command {
        apply_serve_flags(&mut config, args);
    }
    config.validate()?;
    let serving = matches!(command, Command::Serve(_));
    init_logging(&config, serving);

    match command {
        Command::Serve(_) => serve::run(config).await,
        Command::Config(flag) => {
            let masked = config.masked();
            let text = if flag.json {
                serde_json::to_string_pretty(&masked).map_err(|e| Error::internal("printing", e))?
            } else {
                toml::to_string(&masked).map_err(|e| Error::internal("printing", e))?
            };
            println!("{}", text.trim_end());
            Ok(())
        }
        Command::Migrate(flag) => {
            let store = open_store(&config).await?;
            store.migrate().await?;
            let readiness = store.readiness().await;
            print(
                flag.json,
                json!({ "engine": readiness.engine, "schema_version": readiness.schema_version }),
                || {
                    format!(
                        "{} is at schema version {}",
                        store.url(),
                        readiness.schema_version.unwrap_or(0)
                    )
                },
            );
            store.close().await;
            Ok(())
        }
        Command::Tenant(cmd) => {
            let store = open_audited_store(&config).await?;
            let result = tenant(&store, cmd).await;
            store.close().await;
            result
        }
        Command::Apikey(cmd) => {
            let store = open_audited_store(&config).await?;
            let result = apikey(&store, cmd).await;
            store.close().await;
            result
        }
        Command::Jobs(cmd) => {
            let store = open_store(&config).await?;
            let result = jobs(&store, cmd).await;
            store.close().await;
            result
        }
        Command::User(cmd) => {
            let store = open_audited_store(&config).await?;
            let result = user(&store, cmd).await;
            store.close().await;
            result
        }
        Command::Audit(AuditCommand::Verify { tenant, json }) => {
            let store = open_audited_store(&config).await?;
            let result = audit_verify(&store, tenant.as_deref(), json).await;
            store.close().await;
            result
        }
        Command::Simulator(args) => simulator(&config, *args).await,
        // Needs no database: it only makes a key.
        Command::Keys(KeysCommand::GenerateMaster) => print_new_master_key(),
        Command::Keys(cmd) => {
            let master = master_key(&config)?;
            let store = open_store(&config).await?;
            let result = keys(master, &store, cmd).await;
            store.close().await;
            result
        }
    }
}

fn load_config(global: &GlobalArgs) -> Result<Config> {
    let mut config = Config::load(global.config.as_deref())?;
    if let Some(dir) = &global.data_dir {
        config.data_dir.clone_from(dir);
    }
    if let Some(url) = &global.database_url {
        config.database.url.clone_from(url);
    }
    Ok(config)
}

fn apply_serve_flags(config: &mut Config, args: &ServeArgs) {
    if let Some(listen) = &args.listen {
        config.http.listen.clone_from(listen);
    }
    config.http.enabled &= !args.no_http;
    config.jobs.enabled &= !args.no_workers;
    config.scheduler.enabled &= !args.no_scheduler;
}

fn init_logging(config: &Config, serving: bool) {
    // Operator commands print results on stdout; their logs stay quiet unless asked for.
    let default = if serving {
        config.log.level.as_str()
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let registry = tracing_subscriber::registry().with(filter);
    let result = if config.log.format == "json" {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
    if result.is_err() {
        eprintln!("warning: logging was already initialised");
    }
}

pub async fn open_store(config: &Config) -> Result<Store> {
    private_data_dir(config)?;
    Store::connect(&config.database_url()?, &config.store_options()?).await
}

/// The store with the audit chain's keys, for commands that write or verify audit records:
/// they need the master key.
async fn open_audited_store(config: &Config) -> Result<Store> {
    let master = master_key(config)?;
    let store = open_store(config).await?;
    open_vault(&store, master).await?;
    Ok(store)
}

/// The embedded default keeps the database and the master key in `data_dir`: only the owner
/// may enter it (0700, tightened if an older release made it 0755).
fn private_data_dir(config: &Config) -> Result<()> {
    if config.database.url.trim().is_empty() {
        waypost_store::private_dir(&config.data_dir)?;
    }
    Ok(())
}

/// Loads the master key, creating the embedded default's key file on first use. Called
/// before the database is opened, so a missing key fails fast.
pub fn master_key(config: &Config) -> Result<MasterKey> {
    private_data_dir(config)?;
    let (master, created) = config.master_key()?;
    if let Some(path) = created {
        // On stderr: commands print their results (JSON with --json) on stdout.
        eprintln!(
            "Created the master key file {} (mode 0600). Back it up with the database: \
             without it, stored secrets cannot be decrypted and the audit trail not verified.",
            path.display()
        );
    }
    Ok(master)
}

pub async fn open_vault(store: &Store, master: MasterKey) -> Result<Arc<Vault>> {
    Ok(Arc::new(Vault::open(store.clone(), master).await?))
}

/// Prints `value` as JSON, or the human line.
fn print(json: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::internal("printing", e))
}

fn parse_tenant(raw: &str) -> Result<TenantId> {
    TenantId::from_str(raw).map_err(|_| {
        Error::new(
            ErrorCode::InvalidRequest,
            format!("--tenant: {raw:?} is not a tenant id"),
        )
    })
}

async fn existing_tenant(store: &Store, raw: &str) -> Result<TenantId> {
    let id = parse_tenant(raw)?;
    let mut tx = store.platform_read().await?;
    let tenant = tx.get_tenant(id).await.map_err(|e| match e.code() {
        ErrorCode::NotFound => Error::new(ErrorCode::NotFound, format!("no tenant with id {id}")),
        _ => e,
    })?;
    tx.rollback().await?;
    Ok(tenant.id)
}

async fn tenant(store: &Store, cmd: TenantCommand) -> Result<()> {
    match cmd {
        TenantCommand::Create { name, json } => {
            let mut tx = store.platform().await?;
            let tenant = tx.create_tenant(&name).await?;
            tx.audit(system_event("tenant.create", "tenant", tenant.id))
                .await?;
            tx.commit().await?;
            print(json, to_json(&tenant)?, || {
                format!("created tenant {} ({})", tenant.name, tenant.id)
            });
        }
        TenantCommand::List { json } => {
            let mut tx = store.platform_read().await?;
            let tenants = tx.list_tenants().await?;
            tx.rollback().await?;
            print(json, to_json(&tenants)?, || {
                tenants
                    .iter()
                    .map(|t| format!("{}  {}", t.id, t.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

async fn apikey(store: &Store, cmd: ApiKeyCommand) -> Result<()> {
    match cmd {
        ApiKeyCommand::Create {
            tenant,
            role,
            name,
            json,
        } => {
            let role = Role::from_str(&role)?;
            let tenant = existing_tenant(store, &tenant).await?;
            let secret = ApiKeySecret::generate(tenant)?;
            let mut tx = store.tenant(tenant).await?;
            let key = tx
                .create_api_key(NewApiKey {
                    prefix: secret.prefix,
                    secret_hash: secret.secret_hash,
                    name,
                    role,
                    expires_at: None,
                })
                .await?;
            tx.audit(system_event("api_key.create", "api_key", key.id))
                .await?;
            tx.commit().await?;
            let mut value = to_json(&key)?;
            value["key"] = json!(secret.token);
            print(json, value, || {
                format!(
                    "created {role} API key {} for tenant {tenant} (shown once):\n{}",
                    key.id, secret.token
                )
            });
        }
        ApiKeyCommand::List { tenant, json } => {
            let tenant = existing_tenant(store, &tenant).await?;
            let mut tx = store.tenant_read(tenant).await?;
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                let page = tx.list_api_keys(200, cursor).await?;
                keys.extend(page.data);
                match page.next_cursor {
                    Some(next) => cursor = Some(waypost_core::Cursor::decode(&next)?),
                    None => break,
                }
            }
            tx.rollback().await?;
            print(json, to_json(&keys)?, || {
                keys.iter()
                    .map(|k| {
                        let state = if k.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        format!("{}  {}  {}  {}  {state}", k.id, k.prefix, k.role, k.name)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        ApiKeyCommand::Revoke {
            tenant,
            key_id,
            json,
        } => {
            let tenant = existing_tenant(store, &tenant).await?;
            let id = ApiKeyId::from_str(&key_id)?;
            let mut tx = store.tenant(tenant).await?;
            let key = tx.revoke_api_key(id).await?;
            tx.audit(system_event("api_key.revoke", "api_key", key.id))
                .await?;
            tx.commit().await?;
            print(json, to_json(&key)?, || {
                format!("revoked API key {} ({})", key.id, key.prefix)
            });
        }
    }
    Ok(())
}

async fn jobs(store: &Store, cmd: JobsCommand) -> Result<()> {
    match cmd {
        JobsCommand::List { state, limit, json } => {
            let state = state.as_deref().map(JobState::from_str).transpose()?;
            let jobs = store.list_jobs(state, limit.clamp(1, 1000)).await?;
            print(json, to_json(&jobs)?, || {
                jobs.iter()
                    .map(|j| {
                        let error = j.last_error.as_deref().unwrap_or("");
                        format!(
                            "{}  {}  {}  attempts {}/{}  {error}",
                            j.id, j.kind, j.state, j.attempts, j.max_attempts
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        JobsCommand::Replay { job_id, json } => {
            let job = store.replay_job(JobId::from_str(&job_id)?).await?;
            print(json, to_json(&job)?, || {
                format!("job {} is pending again", job.id)
            });
        }
        JobsCommand::Probe {
            count,
            timeout_secs,
            json,
        } => {
            if count == 0 || count > 100_000 {
                return Err(Error::validation("--count must be between 1 and 100000"));
            }
            let batch = store.start_probe_batch(count).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
            let status = loop {
                let status = store.probe_status(batch).await?;
                if status.completed == status.total || tokio::time::Instant::now() >= deadline {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            print(json, to_json(&status)?, || {
                let workers = status
                    .by_worker
                    .iter()
                    .map(|(w, n)| format!("{w}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "{}/{} probes completed, {} duplicated, p50 {} ms; by worker: {workers}",
                    status.completed,
                    status.total,
                    status.duplicated,
                    status.latency_p50_ms.unwrap_or_default()
                )
            });
            if status.completed < status.total {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "only {}/{} probes completed within {timeout_secs} s: are workers running?",
                        status.completed, status.total
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub fn system_event(action: &str, target_type: &str, target_id: impl ToString) -> AuditEvent {
    AuditEvent {
        actor_type: "system",
        actor_id: Some("cli".into()),
        action: action.into(),
        target_type: Some(target_type.into()),
        target_id: Some(target_id.to_string()),
        outcome: "success",
        ..AuditEvent::default()
    }
}

/// A password from stdin, or a generated one (returned so it can be shown once).
fn password(from_stdin: bool) -> Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| {
            Error::new(
                ErrorCode::InvalidRequest,
                format!("cannot read the password from stdin: {e}"),
            )
        })?;
        return Ok((line.trim_end_matches(['\r', '\n']).to_string(), false));
    }
    let bytes: [u8; 18] = waypost_api::random_bytes()?;
    Ok((
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes),
        true,
    ))
}

async fn user(store: &Store, cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Create {
            email,
            tenant,
            role,
            operator,
            password_stdin,
            json,
        } => {
            let membership = match (tenant, role) {
                (Some(t), Some(r)) => {
                    Some((existing_tenant(store, &t).await?, Role::from_str(&r)?))
                }
                _ => None,
            };
            let (password, generated) = password(password_stdin)?;
            let hash = waypost_vault::hash_password(&password)?;
            let mut tx = store.platform().await?;
            let user = tx.create_user(&email, &hash, operator).await?;
            tx.audit(system_event("user.create", "user", user.id))
                .await?;
            if let Some((tenant, role)) = membership {
                tx.set_membership(tenant, user.id, role).await?;
            }
            tx.commit().await?;
            if let Some((tenant, role)) = membership {
                let mut tx = store.tenant(tenant).await?;
                let mut event = system_event("member.add", "user", user.id);
                event.reason = Some(format!("role {role}"));
                tx.audit(event).await?;
                tx.commit().await?;
            }
            let mut value = to_json(&user)?;
            if generated {
                value["password"] = json!(password);
            }
            print(json, value, || {
                let mut text = format!("created user {} ({})", user.email, user.id);
                if generated {
                    text.push_str(&format!("\npassword (shown once): {password}"));
                }
                text
            });
        }
        UserCommand::ResetPassword {
            email,
            password_stdin,
            json,
        } => {
            let (password, generated) = password(password_stdin)?;
            let hash = waypost_vault::hash_password(&password)?;
            let mut tx = store.platform().await?;
            let user = tx
                .find_user_by_email(&email)
                .await?
                .ok_or_else(|| {
                    Error::new(ErrorCode::NotFound, format!("no user with email {email}"))
                })?
                .user;
            tx.set_password_hash(user.id, &hash).await?;
            let ended = tx.revoke_other_sessions(user.id, None).await?;
            tx.audit(system_event("auth.password_reset", "user", user.id))
                .await?;
            tx.commit().await?;
            let mut value = json!({ "id": user.id, "email": user.email, "sessions_ended": ended });
            if generated {
                value["password"] = json!(password);
            }
            print(json, value, || {
                let mut text = format!(
                    "password reset for {}; {ended} session(s) ended",
                    user.email
                );
                if generated {
                    text.push_str(&format!("\nnew password (shown once): {password}"));
                }
                text
            });
        }
    }
    Ok(())
}

async fn audit_verify(store: &Store, tenant: Option<&str>, json: bool) -> Result<()> {
    let chains = match tenant {
        Some(raw) => vec![Some(existing_tenant(store, raw).await?)],
        None => {
            let mut tx = store.platform_read().await?;
            let tenants = tx.list_tenants().await?;
            std::iter::once(None)
                .chain(tenants.into_iter().map(|t| Some(t.id)))
                .collect()
        }
    };
    let mut reports = Vec::new();
    for chain in chains {
        reports.push(store.verify_audit(chain).await?);
    }
    print(json, to_json(&reports)?, || {
        reports
            .iter()
            .map(|r| match (r.first_broken_seq, r.legacy_records) {
                (None, 0) => format!("{}: {} records, intact", r.chain, r.records),
                (None, legacy) => format!(
                    "{}: {} records, intact; the first {legacy} predate keyed chains \
                     (plain SHA-256, not proof against database access)",
                    r.chain, r.records
                ),
                (Some(seq), _) => format!("{}: BROKEN at record {seq}", r.chain),
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    match reports.iter().find_map(broken_chain_error) {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

fn print_new_master_key() -> Result<()> {
    println!(
        "{}",
        waypost_vault::MasterKey::generate()?.to_base64().as_str()
    );
    Ok(())
}

async fn keys(master: MasterKey, store: &Store, cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::GenerateMaster => print_new_master_key()?,
        KeysCommand::List { json } => {
            let mut tx = store.platform_read().await?;
            let keys = tx.encryption_keys().await?;
            let listed: Vec<_> = keys
                .iter()
                .map(|k| json!({ "id": k.id, "state": k.state, "created_at": waypost_core::Timestamp::from_millis(k.created_at) }))
                .collect();
            print(json, json!(listed), || {
                keys.iter()
                    .map(|k| format!("{}  {}", k.id, k.state))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        KeysCommand::Rotate { json } => {
            let report = open_vault(store, master).await?.rotate().await?;
            let mut tx = store.platform().await?;
            tx.audit(system_event(
                "keys.rotate",
                "encryption_key",
                report.active_key,
            ))
            .await?;
            tx.commit().await?;
            print(json, to_json(&report)?, || {
                format!(
                    "key {} is active; {} secret(s) re-encrypted, {} changed meanwhile (run again to catch them)",
                    report.active_key, report.reencrypted, report.skipped
                )
            });
        }
        KeysCommand::Retire { key_id, json } => {
            open_vault(store, master).await?.retire(key_id).await?;
            let mut tx = store.platform().await?;
            tx.audit(system_event("keys.retire", "encryption_key", key_id))
                .await?;
            tx.commit().await?;
            print(json, json!({ "retired": key_id }), || {
                format!("key {key_id} retired")
            });
        }
    }
    Ok(())
}

/// The embedded demo's simulator token, when this data folder holds a demo (a standalone
/// simulator started without `--token` needs none).
async fn demo_token(config: &Config) -> Result<Option<String>> {
    let waypost_store::DatabaseUrl::Sqlite(path) = config.database_url()? else {
        return Ok(None);
    };
    if !path.exists() || !config.data_dir.join("master.key").exists() {
        return Ok(None);
    }
    let master = master_key(config)?;
    let store = open_store(config).await?;
    let vault = open_vault(&store, master).await?;
    let token = crate::demo::stored_token(&store, &vault).await;
    store.close().await;
    token
}

async fn simulator(config: &Config, args: SimulatorArgs) -> Result<()> {
    match args.action {
        Some(SimulatorAction::Inject {
            url,
            token,
            from,
            bsuid,
            name,
            kind,
            text,
            object,
            json,
        }) => {
            if from.is_none() && bsuid.is_none() {
                return Err(Error::validation(
                    "give --from (digits with country code) or --bsuid",
                ));
            }
            let object = object
                .map(|raw| serde_json::from_str::<serde_json::Value>(&raw))
                .transpose()
                .map_err(|e| Error::validation(format!("--object is not JSON: {e}")))?;
            let message = waypost_simulator::Inject {
                from,
                bsuid,
                name,
                kind: Some(kind),
                text,
                referral: None,
                message_id: None,
                object,
            };
            let token = match token {
                Some(token) => Some(token),
                None => demo_token(config).await?,
            };
            let endpoint = format!("{}/simulator/inbound", url.trim_end_matches('/'));
            let mut request = reqwest::Client::new().post(&endpoint).json(&message);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let resp = request.send().await.map_err(|e| {
                Error::new(
                    ErrorCode::Unavailable,
                    format!("cannot reach the simulator at {endpoint}: {e}"),
                )
            })?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                return Err(Error::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "the simulator at {endpoint} needs its token: pass --token, or run this in the demo's folder"
                    ),
                ));
            }
            if !resp.status().is_success() {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    format!("the simulator at {endpoint} answered {}", resp.status()),
                ));
            }
            let injected: waypost_simulator::Injected = resp
                .json()
                .await
                .map_err(|e| Error::internal("reading the simulator's answer", e))?;
            print(
                json,
                json!({"wamid": injected.wamid, "webhook_status": injected.webhook_status}),
                || {
                    format!(
                        "sent {} (the webhook receiver answered {})",
                        injected.wamid, injected.webhook_status
                    )
                },
            );
            Ok(())
        }
        None => {
            let (Some(webhook_url), Some(app_secret)) = (args.webhook_url, args.app_secret) else {
                return Err(Error::new(
                    ErrorCode::InvalidConfig,
                    "the simulator needs --webhook-url and --app-secret",
                ));
            };
            if !(0.0..=1.0).contains(&args.failure_rate) {
                return Err(Error::validation("--failure-rate must be between 0 and 1"));
            }
            let addr: std::net::SocketAddr = args.listen.parse().map_err(|_| {
                Error::new(
                    ErrorCode::InvalidConfig,
                    format!("--listen must be ADDRESS:PORT, not {:?}", args.listen),
                )
            })?;
            let sim = waypost_simulator::Simulator::new(waypost_simulator::SimulatorConfig {
                webhook_url,
                app_secret,
                phone_number_id: args.phone_number_id,
                throughput_mps: args.throughput_mps,
                failure_rate: args.failure_rate,
                failure_code: args.failure_code,
                control_token: args.token,
                retry_window: std::time::Duration::from_secs(args.retry_window_secs),
                ..waypost_simulator::SimulatorConfig::default()
            });
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::new(
                    ErrorCode::InvalidConfig,
                    format!("cannot listen on {addr}: {e}"),
                )
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::internal("reading the bound address", e))?;
            println!("WhatsApp Cloud API simulator (simulated, not Meta) on http://{bound}");
            println!("  Graph API base URL for a channel: http://{bound}/simulator/graph");
            println!(
                "  inject a customer message: waypost simulator inject --url http://{bound} --from 14155550100 --text hi"
            );
            axum::serve(listener, sim.router())
                .with_graceful_shutdown(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                .map_err(|e| Error::internal("serving the simulator", e))
        }
    }
}
