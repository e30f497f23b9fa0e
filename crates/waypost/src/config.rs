//! Configuration: built-in defaults < `waypost.toml` (or `--config FILE`) < `WAYPOST_*`
//! environment variables (`WAYPOST_SECTION__KEY`) < command-line flags. Unknown keys are
//! errors wherever they come from, so a typo never silently falls back to a default.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};
use waypost_core::{Error, ErrorCode, Result};
use waypost_store::{DatabaseUrl, SqliteSync, StoreOptions};

const DEFAULT_CONFIG_FILE: &str = "waypost.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder for the embedded SQLite database and other local state.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub jobs: JobsConfig,
    pub outbound: OutboundConfig,
    pub scheduler: SchedulerConfig,
    pub log: LogConfig,
    pub secrets: SecretsConfig,
    pub auth: AuthSection,
    pub audit: AuditConfig,
    pub meta: MetaConfig,
    pub gupshup: GupshupConfig,
    pub metrics: MetricsConfig,
    pub egress: EgressConfig,
    pub demo: DemoConfig,
}

/// `/metrics`: who may scrape it, and how fresh its job-queue gauges are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When set, a scrape must send `Authorization: Bearer <token>`. Empty: open.
    pub token: String,
    /// How often each process serving HTTP reads the queue gauges; scrapes only render them.
    pub refresh_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            token: String::new(),
            refresh_secs: 5,
        }
    }
}

/// Requests whose destination a tenant or a webhook body can influence reach only public
/// addresses, except what is allowed here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Networks (`10.0.0.0/8`), addresses, `address:port` pairs or host names that may be
    /// reached although internal.
    pub allow: Vec<String>,
    pub media_hosts: MediaHostsConfig,
}

/// The hosts (and subdomains) each BSP's inbound media may be fetched from, besides the
/// channel's own API host. Empty: the built-in list.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaHostsConfig {
    pub twilio: Vec<String>,
    pub gupshup: Vec<String>,
    pub bird: Vec<String>,
}

impl EgressConfig {
    pub fn policy(&self) -> Result<waypost_egress::EgressPolicy> {
        waypost_egress::EgressPolicy::new(&self.allow)
    }

    pub fn media_hosts(&self) -> waypost_outbound::provider::MediaHosts {
        let m = &self.media_hosts;
        [
            ("twilio", &m.twilio),
            ("gupshup", &m.gupshup),
            ("bird", &m.bird),
        ]
        .into_iter()
        .filter(|(_, hosts)| !hosts.is_empty())
        .fold(Default::default(), |all, (provider, hosts)| {
            all.with(provider, hosts.clone())
        })
    }
}

/// The built-in demo: with the embedded database, the first run connects a simulated WhatsApp
/// number to the Default tenant and has a simulated customer write to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Unset: only when listening on a loopback address. `true`: on any address. `false`: never.
    pub enabled: Option<bool>,
}

impl DemoConfig {
    pub fn runs_on(&self, listen: SocketAddr) -> bool {
        self.enabled.unwrap_or_else(|| listen.ip().is_loopback())
    }
}

/// The platform's own Meta app, for `/webhooks/meta` (one app serving many tenants).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaConfig {
    /// Signs the app's webhooks. Empty: `/webhooks/meta` refuses every event.
    pub app_secret: String,
    /// What Meta's subscription handshake must present.
    pub verify_token: String,
}

/// Gupshup signs no webhook; each channel's callback URL carries a secret, and its webhooks
/// may also be limited to Gupshup's addresses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GupshupConfig {
    /// Addresses or networks (`203.0.113.7`, `203.0.113.0/24`) webhooks may come from,
    /// compared with the client address (see `http.trusted_proxies`). Empty: any.
    pub allowed_ips: Vec<String>,
}

/// Addresses or networks (`203.0.113.7`, `10.1.0.0/16`) from a list setting named `key`.
fn networks(key: &str, entries: &[String]) -> Result<Vec<ipnet::IpNet>> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(format!(
                        "{key}: {entry:?} is neither an IP address nor a network like 203.0.113.0/24"
                    ))
                })
        })
        .collect()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Master key file. Empty: `WAYPOST_MASTER_KEY`, else (SQLite only) `data_dir/master.key`.
    pub master_key_file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub session_idle_minutes: u64,
    pub session_absolute_hours: u64,
    pub max_failures_per_ip_per_hour: u32,
    pub max_failures_per_account_per_hour: u32,
    pub failures_before_delay: u32,
    pub secure_cookies: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub platform_retention_days: u64,
    pub retention_every_secs: u64,
    pub retention_offset_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            session_idle_minutes: 30,
            session_absolute_hours: 12,
            max_failures_per_ip_per_hour: 100,
            max_failures_per_account_per_hour: 100,
            failures_before_delay: 5,
            secure_cookies: true,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            platform_retention_days: 365,
            retention_every_secs: 86_400,
            retention_offset_secs: 4 * 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// Empty: SQLite in `data_dir`. Otherwise `postgres://…` or `sqlite://PATH`.
    pub url: String,
    pub max_connections: u32,
    /// `full` or `normal`; see README.
    pub sqlite_synchronous: String,
    pub auto_migrate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: String,
    /// The externally visible base URL (shown as webhook callback URLs). Empty: http://listen.
    pub public_base_url: String,
    pub shutdown_grace_secs: u64,
    /// Reverse proxies (addresses or networks) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    pub enabled: bool,
    pub concurrency: u32,
    pub poll_interval_ms: u64,
    pub lease_secs: u64,
    pub keep_done_hours: u64,
    pub prune_every_secs: u64,
    pub prune_offset_secs: u64,
}

/// The dispatcher that sends queued messages (it runs where the job workers run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    pub lease_secs: u64,
    pub pair_interval_ms: u64,
    pub pair_burst: u32,
    pub max_in_flight: u32,
    pub request_timeout_secs: u64,
    pub max_attempts: u32,
    pub unknown_expiry_secs: u64,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            lease_secs: 10,
            pair_interval_ms: 6000,
            pair_burst: 3,
            max_in_flight: 256,
            request_timeout_secs: 30,
            max_attempts: 10,
            unknown_expiry_secs: 900,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    pub enabled: bool,
    pub tick_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `waypost=debug,sqlx=warn`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./waypost-data"),
            database: DatabaseConfig::default(),
            http: HttpConfig::default(),
            jobs: JobsConfig::default(),
            outbound: OutboundConfig::default(),
            scheduler: SchedulerConfig::default(),
            log: LogConfig::default(),
            secrets: SecretsConfig::default(),
            auth: AuthSection::default(),
            audit: AuditConfig::default(),
            meta: MetaConfig::default(),
            gupshup: GupshupConfig::default(),
            egress: EgressConfig::default(),
            metrics: MetricsConfig::default(),
            demo: DemoConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 10,
            sqlite_synchronous: "full".into(),
            auto_migrate: true,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            public_base_url: String::new(),
            shutdown_grace_secs: 10,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 8,
            poll_interval_ms: 500,
            lease_secs: 60,
            keep_done_hours: 168,
            prune_every_secs: 86_400,
            prune_offset_secs: 3 * 3600,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tick_ms: 1000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

/// Environment variables with the `WAYPOST_` prefix that are not configuration keys.
fn is_reserved_env(name: &str) -> bool {
    matches!(name, "WAYPOST_CONFIG" | "WAYPOST_MASTER_KEY") || name.starts_with("WAYPOST_TEST_")
}

pub const MASTER_KEY_VAR: &str = "WAYPOST_MASTER_KEY";

#[track_caller]
fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidConfig, message)
}

impl Config {
    /// Defaults, then the file (`path`, or `./waypost.toml` if present), then the environment.
    pub fn load(path: Option<&std::path::Path>) -> Result<Config> {
        let env =
            std::env::vars().filter(|(k, _)| k.starts_with("WAYPOST_") && !is_reserved_env(k));
        Self::load_from(path, env.collect())
    }

    pub fn load_from(
        path: Option<&std::path::Path>,
        env: config::Map<String, String>,
    ) -> Result<Config> {
        let mut builder = config::Config::builder();
        let file = match path {
            Some(path) if !path.exists() => {
                return Err(invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        if let Some(file) = &file {
            builder = builder.add_source(
                config::File::from(file.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("WAYPOST")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                // Only these keys are lists: WAYPOST_GUPSHUP__ALLOWED_IPS="a, b/24".
                .list_separator(",")
                .with_list_parse_key("gupshup.allowed_ips")
                .with_list_parse_key("egress.allow")
                .with_list_parse_key("egress.media_hosts.twilio")
                .with_list_parse_key("egress.media_hosts.gupshup")
                .with_list_parse_key("egress.media_hosts.bird")
                .with_list_parse_key("http.trusted_proxies")
                .source(Some(env)),
        );
        let where_ = file.map_or_else(
            || "environment".to_string(),
            |f| format!("{} or environment", f.display()),
        );
        let config: Config = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| {
                invalid(format!(
                    "invalid configuration ({where_}): {}",
                    one_line(&e.to_string())
                ))
            })?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        self.listen_addr()?;
        self.trusted_proxies()?;
        self.database_url()?;
        self.sqlite_sync()?;
        networks("gupshup.allowed_ips", &self.gupshup.allowed_ips)?;
        self.egress.policy()?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(format!(
                "log.format must be text or json, not {:?}",
                self.log.format
            )));
        }
        if self.jobs.concurrency == 0 || self.database.max_connections == 0 {
            return Err(invalid(
                "jobs.concurrency and database.max_connections must be at least 1",
            ));
        }
        if self.auth.session_idle_minutes == 0
            || self.auth.session_absolute_hours == 0
            || self.audit.retention_every_secs == 0
            || self.audit.platform_retention_days == 0
        {
            return Err(invalid(
                "auth session lifetimes, audit.retention_every_secs and audit.platform_retention_days must be at least 1",
            ));
        }
        if self.jobs.lease_secs < 3
            || self.jobs.prune_every_secs == 0
            || self.scheduler.tick_ms == 0
            || self.metrics.refresh_secs == 0
        {
            return Err(invalid(
                "jobs.lease_secs must be at least 3; jobs.prune_every_secs, scheduler.tick_ms and metrics.refresh_secs at least 1",
            ));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr> {
        SocketAddr::from_str(self.http.listen.trim()).map_err(|_| {
            invalid(format!(
                "http.listen must be ADDRESS:PORT (e.g. 127.0.0.1:8080), not {:?}",
                self.http.listen
            ))
        })
    }

    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>> {
        networks("http.trusted_proxies", &self.http.trusted_proxies)
    }

    pub fn database_url(&self) -> Result<DatabaseUrl> {
        if self.database.url.trim().is_empty() {
            Ok(DatabaseUrl::sqlite(self.data_dir.join("waypost.db")))
        } else {
            self.database.url.parse()
        }
    }

    fn sqlite_sync(&self) -> Result<SqliteSync> {
        match self.database.sqlite_synchronous.as_str() {
            "full" => Ok(SqliteSync::Full),
            "normal" => Ok(SqliteSync::Normal),
            other => Err(invalid(format!(
                "database.sqlite_synchronous must be full or normal, not {other:?}"
            ))),
        }
    }

    pub fn store_options(&self) -> Result<StoreOptions> {
        Ok(StoreOptions {
            max_connections: self.database.max_connections,
            sqlite_synchronous: self.sqlite_sync()?,
            migrate: self.database.auto_migrate,
            ..StoreOptions::default()
        })
    }

    pub fn worker(&self) -> waypost_jobs::WorkerConfig {
        waypost_jobs::WorkerConfig {
            concurrency: usize::try_from(self.jobs.concurrency).unwrap_or(1),
            poll_interval: Duration::from_millis(self.jobs.poll_interval_ms),
            lease: Duration::from_secs(self.jobs.lease_secs),
            shutdown_grace: Duration::from_secs(self.http.shutdown_grace_secs),
            ..waypost_jobs::WorkerConfig::default()
        }
    }

    pub fn dispatcher(&self, public_base_url: String) -> waypost_outbound::DispatcherConfig {
        let o = &self.outbound;
        waypost_outbound::DispatcherConfig {
            lease: Duration::from_secs(o.lease_secs.max(2)),
            renew_every: Duration::from_secs((o.lease_secs / 4).max(1)),
            pair_interval: Duration::from_millis(o.pair_interval_ms),
            pair_burst: o.pair_burst.max(1),
            max_in_flight: usize::try_from(o.max_in_flight.max(1)).unwrap_or(1),
            request_timeout: Duration::from_secs(o.request_timeout_secs.max(1)),
            max_attempts: i64::from(o.max_attempts.max(1)),
            unknown_expiry: Duration::from_secs(o.unknown_expiry_secs),
            public_base_url,
            ..waypost_outbound::DispatcherConfig::default()
        }
    }

    pub fn auth(&self) -> waypost_api::AuthConfig {
        waypost_api::AuthConfig {
            session_idle: Duration::from_secs(self.auth.session_idle_minutes.saturating_mul(60)),
            session_absolute: Duration::from_secs(
                self.auth.session_absolute_hours.saturating_mul(3600),
            ),
            max_failures_per_ip: i64::from(self.auth.max_failures_per_ip_per_hour),
            max_failures_per_account: i64::from(self.auth.max_failures_per_account_per_hour),
            failures_before_delay: i64::from(self.auth.failures_before_delay),
            secure_cookies: self.auth.secure_cookies,
        }
    }

    /// The master key: `WAYPOST_MASTER_KEY`, else `secrets.master_key_file`, else (embedded
    /// SQLite only) `data_dir/master.key`, created on first use. PostgreSQL deployments may
    /// run several processes, which must share one key, so there it must be given explicitly.
    /// Returns the key and, when a key file was just created, its path.
    pub fn master_key(&self) -> Result<(waypost_vault::MasterKey, Option<PathBuf>)> {
        if let Ok(text) = std::env::var(MASTER_KEY_VAR) {
            return Ok((waypost_vault::MasterKey::from_base64(&text)?, None));
        }
        if !self.secrets.master_key_file.is_empty() {
            let path = PathBuf::from(&self.secrets.master_key_file);
            return Ok((waypost_vault::MasterKey::load(&path)?, None));
        }
        match self.database_url()? {
            DatabaseUrl::Sqlite(_) => {
                let path = self.data_dir.join("master.key");
                let (key, created) = waypost_vault::MasterKey::load_or_create(&path)?;
                Ok((key, created.then_some(path)))
            }
            DatabaseUrl::Postgres(..) => Err(invalid(format!(
                "PostgreSQL needs a master key every process shares: set {MASTER_KEY_VAR} \
                 (`waypost keys generate-master` makes one) or secrets.master_key_file"
            ))),
        }
    }

    /// The externally visible base URL; by default the address the server is bound to.
    pub fn public_base_url(&self, bound: std::net::SocketAddr) -> String {
        if self.http.public_base_url.is_empty() {
            format!("http://{bound}")
        } else {
            self.http.public_base_url.clone()
        }
    }

    pub fn webhooks(&self, bound: std::net::SocketAddr) -> Result<waypost_api::WebhookConfig> {
        let non_empty = |v: &str| Some(v.to_string()).filter(|v| !v.is_empty());
        Ok(waypost_api::WebhookConfig {
            public_base_url: self.public_base_url(bound),
            meta_app_secret: non_empty(&self.meta.app_secret),
            meta_verify_token: non_empty(&self.meta.verify_token),
            gupshup_allowed_ips: networks("gupshup.allowed_ips", &self.gupshup.allowed_ips)?,
        })
    }

    /// The effective configuration as TOML, with any password in the database URL masked.
    pub fn masked(&self) -> Config {
        let mut masked = self.clone();
        if let Ok(url) = self.database_url()
            && !self.database.url.is_empty()
        {
            masked.database.url = url.to_string();
        }
        for secret in [
            &mut masked.meta.app_secret,
            &mut masked.meta.verify_token,
            &mut masked.metrics.token,
        ] {
            if !secret.is_empty() {
                *secret = "***".into();
            }
        }
        masked
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example file committed at the repository root.
    const EXAMPLE_CONFIG: &str = include_str!("../../../waypost.example.toml");

    fn env(pairs: &[(&str, &str)]) -> config::Map<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                keys(v, &path, out);
            }
        }
    }

    #[test]
    fn the_committed_example_equals_the_defaults_key_for_key() {
        let parsed: Config = toml::from_str(EXAMPLE_CONFIG).unwrap();
        assert_eq!(
            parsed,
            Config::default(),
            "waypost.example.toml drifted from the defaults"
        );
        let (mut documented, mut defaults) = (Vec::new(), Vec::new());
        keys(
            &toml::from_str(EXAMPLE_CONFIG).unwrap(),
            "",
            &mut documented,
        );
        keys(
            &toml::Value::try_from(Config::default()).unwrap(),
            "",
            &mut defaults,
        );
        documented.sort();
        defaults.sort();
        assert_eq!(
            documented, defaults,
            "every key must appear in waypost.example.toml"
        );
        Config::default().validate().unwrap();
    }

    #[test]
    fn environment_overrides_and_unknown_keys_fail() {
        let config = Config::load_from(
            None,
            env(&[
                ("WAYPOST_HTTP__LISTEN", "0.0.0.0:9000"),
                ("WAYPOST_JOBS__CONCURRENCY", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.listen, "0.0.0.0:9000");
        assert_eq!(config.jobs.concurrency, 3);
        let err = Config::load_from(None, env(&[("WAYPOST_HTTP__LISTN", "x")])).unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        assert!(err.to_string().contains("listn"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn address_lists_come_from_the_environment_and_are_checked() {
        let config = Config::load_from(
            None,
            env(&[
                (
                    "WAYPOST_GUPSHUP__ALLOWED_IPS",
                    "203.0.113.7, 198.51.100.0/24",
                ),
                ("WAYPOST_HTTP__TRUSTED_PROXIES", "10.0.0.1, 10.1.0.0/16"),
                // Other values with commas stay strings.
                ("WAYPOST_HTTP__PUBLIC_BASE_URL", "https://a.example/x,y"),
            ]),
        )
        .unwrap();
        let proxies = config.trusted_proxies().unwrap();
        assert_eq!(
            proxies,
            [
                "10.0.0.1/32".parse::<ipnet::IpNet>().unwrap(),
                "10.1.0.0/16".parse().unwrap()
            ]
        );
        let listed: Vec<_> = config
            .gupshup
            .allowed_ips
            .iter()
            .map(|ip| ip.trim())
            .collect();
        assert_eq!(listed, ["203.0.113.7", "198.51.100.0/24"]);
        assert_eq!(config.http.public_base_url, "https://a.example/x,y");
        config.validate().unwrap();
        let bound = "127.0.0.1:8080".parse().unwrap();
        let webhooks = config.webhooks(bound).unwrap();
        assert!(webhooks.gupshup_source_allowed(Some("198.51.100.9".parse().unwrap())));
        assert!(webhooks.gupshup_source_allowed(Some("::ffff:203.0.113.7".parse().unwrap())));
        assert!(!webhooks.gupshup_source_allowed(Some("203.0.113.8".parse().unwrap())));
        assert!(
            Config::default()
                .webhooks(bound)
                .unwrap()
                .gupshup_source_allowed(Some("192.0.2.1".parse().unwrap())),
            "no list: any address"
        );

        let mut config = Config::default();
        config.gupshup.allowed_ips = vec!["300.1.1.1".into()];
        let err = config.validate().unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        assert!(err.to_string().contains("gupshup.allowed_ips"), "{err}");
        assert!(err.to_string().contains("300.1.1.1"), "{err}");
        let mut config = Config::default();
        config.http.trusted_proxies = vec!["proxy.internal".into()];
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("http.trusted_proxies"), "{err}");
    }

    #[test]
    fn a_file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("waypost-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("w.toml");
        std::fs::write(
            &file,
            "[http]\nlisten = \"127.0.0.1:7000\"\n[jobs]\nlease_secs = 9\n",
        )
        .unwrap();
        let config =
            Config::load_from(Some(&file), env(&[("WAYPOST_JOBS__LEASE_SECS", "12")])).unwrap();
        assert_eq!(
            (config.http.listen.as_str(), config.jobs.lease_secs),
            ("127.0.0.1:7000", 12)
        );
        std::fs::write(&file, "[http]\nlistne = 1\n").unwrap();
        assert!(Config::load_from(Some(&file), env(&[])).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn validation_names_the_bad_value() {
        let mut config = Config::default();
        config.http.listen = "localhost".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("http.listen")
        );
        let mut config = Config::default();
        config.database.url = "postgress://x@y/z".into();
        assert_eq!(
            config.validate().unwrap_err().code(),
            ErrorCode::InvalidConfig
        );
    }

    #[test]
    fn masked_config_hides_the_database_password() {
        let mut config = Config::default();
        config.database.url = "postgres://waypost:hunter2@db:5432/waypost".into();
        let shown = toml::to_string(&config.masked()).unwrap();
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }
}
