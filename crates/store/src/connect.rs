use std::{fmt, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    Connection, Executor, PgPool, Row, SqlitePool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use waypost_core::{Error, ErrorCode, Result, TenantId};

use crate::{
    APP_ROLE,
    audit_keys::AuditKeyring,
    private_files,
    tx::{Conn, Platform, Tenant, Tx},
};

pub(crate) static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
pub(crate) static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Which engine a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// `(version, description)` of every migration compiled into this binary.
    pub fn migrations(self) -> Vec<(i64, String)> {
        let migrator = match self {
            Engine::Sqlite => &SQLITE_MIGRATOR,
            Engine::Postgres => &POSTGRES_MIGRATOR,
        };
        migrator
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    }
}

/// A validated database URL. Parsing never touches the file system or the network, and an
/// unknown scheme is an error: a mistyped PostgreSQL URL must not silently become a new
/// SQLite file.
#[derive(Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(Box<PgConnectOptions>, String),
}

impl DatabaseUrl {
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        DatabaseUrl::Sqlite(path.into())
    }

    pub fn engine(&self) -> Engine {
        match self {
            DatabaseUrl::Sqlite(_) => Engine::Sqlite,
            DatabaseUrl::Postgres(..) => Engine::Postgres,
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = Error;

    fn from_str(raw: &str) -> Result<Self> {
        let raw = raw.trim();
        let invalid = |why: &str| {
            Error::new(
                ErrorCode::InvalidConfig,
                format!("invalid database URL: {why}"),
            )
        };
        let Some((scheme, rest)) = raw.split_once(':') else {
            return Err(invalid("expected postgres://… or sqlite://…"));
        };
        match scheme {
            "postgres" | "postgresql" => {
                let parsed = url::Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
                if parsed.host_str().is_none_or(str::is_empty) && !raw.contains("host=") {
                    return Err(invalid("a PostgreSQL URL needs a host"));
                }
                let options =
                    PgConnectOptions::from_str(raw).map_err(|e| invalid(&e.to_string()))?;
                Ok(DatabaseUrl::Postgres(
                    Box::new(options),
                    mask_password(&parsed),
                ))
            }
            "sqlite" => {
                let path = rest.trim_start_matches("//");
                let path = path.split('?').next().unwrap_or_default();
                if path.is_empty() || path == ":memory:" {
                    return Err(invalid(
                        "a SQLite URL needs a file path, e.g. sqlite://./data.db",
                    ));
                }
                Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
            }
            other => Err(invalid(&format!(
                "unsupported scheme {other:?}; expected postgres://… or sqlite://…"
            ))),
        }
    }
}

fn mask_password(url: &url::Url) -> String {
    let mut masked = url.clone();
    if masked.password().is_some() {
        // Only fails for URLs that cannot carry credentials, which a postgres URL can.
        let _ = masked.set_password(Some("***"));
    }
    // libpq also takes the password as a query parameter.
    if url.query_pairs().any(|(k, _)| k.contains("password")) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.contains("password") {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        masked.query_pairs_mut().clear().extend_pairs(pairs);
    }
    masked.to_string()
}

/// Safe to print and log: the password is masked.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            DatabaseUrl::Postgres(_, masked) => f.write_str(masked),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// SQLite's `synchronous` level. `Full` (the default) makes every commit durable across power
/// loss, which is what "acknowledged means stored" requires; `Normal` can lose the last
/// commits on an OS crash in exchange for fewer fsyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    Full,
    Normal,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub sqlite_synchronous: SqliteSync,
    /// Apply pending migrations on connect.
    pub migrate: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            sqlite_synchronous: SqliteSync::Full,
            migrate: true,
        }
    }
}

#[derive(Clone)]
enum Backend {
    /// One writer connection (SQLite has one writer anyway; waiting in our pool is cheaper
    /// than SQLITE_BUSY retries) and a pool of read-only readers, which WAL lets run freely.
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
    },
    Postgres {
        pool: PgPool,
    },
}

/// A handle on the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Shared: every request clones the store, and a PostgreSQL URL is many strings.
    url: Arc<DatabaseUrl>,
    /// The audit chain's MAC keys, shared by every clone (see [`Store::set_audit_keys`]).
    pub(crate) audit_keys: Arc<AuditKeyring>,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub engine: &'static str,
    pub database_reachable: bool,
    pub schema_version: Option<i64>,
    pub expected_schema_version: i64,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.database_reachable && self.schema_version == Some(self.expected_schema_version)
    }
}

/// The database role the application's queries run as (PostgreSQL only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub current_user: String,
    pub session_user: String,
    pub superuser: bool,
    pub bypass_rls: bool,
}

impl Store {
    /// Connects, applies migrations when `options.migrate`, and checks that the application
    /// role can be assumed. Errors are one line, with any password masked.
    pub async fn connect(url: &DatabaseUrl, options: &StoreOptions) -> Result<Store> {
        let store = match url {
            DatabaseUrl::Sqlite(path) => Self::connect_sqlite(path, options).await?,
            DatabaseUrl::Postgres(pg, _) => {
                if options.migrate {
                    migrate_postgres(url, pg).await?;
                }
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(options.acquire_timeout)
                    // sqlx pings every connection it hands out by default: one round trip more
                    // on every transaction. Only a connection idle long enough to have been
                    // dropped by the server or a proxy is checked.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_WHEN_IDLE_FOR {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    // Superusers and table owners bypass row-level security, so every
                    // connection switches to the non-owner application role first.
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            conn.execute(SET_APP_ROLE).await?;
                            Ok(())
                        })
                    })
                    .connect_with((**pg).clone())
                    .await
                    .map_err(|e| connect_error(url, e))?;
                Store {
                    backend: Backend::Postgres { pool },
                    url: Arc::new(url.clone()),
                    audit_keys: Arc::default(),
                }
            }
        };
        Ok(store)
    }

    async fn connect_sqlite(path: &std::path::Path, options: &StoreOptions) -> Result<Store> {
        let url = DatabaseUrl::Sqlite(path.to_path_buf());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            private_files::create_dir(parent)?;
        }
        private_files::prepare_database(path)?;
        let sync = match options.sqlite_synchronous {
            SqliteSync::Full => SqliteSynchronous::Full,
            SqliteSync::Normal => SqliteSynchronous::Normal,
        };
        let base = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // Deleted and overwritten content is zeroed, not left in free pages and cells:
            // an erased contact must not linger in the file's bytes.
            .pragma("secure_delete", "ON");
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            // A file cannot drop a connection; sqlx's default ping per acquire is pure cost.
            .test_before_acquire(false)
            .connect_with(base.clone().create_if_missing(true))
            .await
            .map_err(|e| connect_error(&url, e))?;
        if options.migrate {
            SQLITE_MIGRATOR
                .run(&write)
                .await
                .map_err(|e| migrate_error(&url, e))?;
        }
        // WAL mode has created -wal and -shm by now; SQLite gives them the database file's
        // mode, but ones left over from an older release keep theirs.
        private_files::tighten_database(path)?;
        let read = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .connect_with(base.read_only(true))
            .await
            .map_err(|e| connect_error(&url, e))?;
        Ok(Store {
            backend: Backend::Sqlite { write, read },
            url: Arc::new(url),
            audit_keys: Arc::default(),
        })
    }

    /// Applies pending migrations now (whatever `StoreOptions::migrate` said at connect).
    pub async fn migrate(&self) -> Result<()> {
        match (&self.backend, &*self.url) {
            (Backend::Sqlite { write, .. }, url) => SQLITE_MIGRATOR
                .run(write)
                .await
                .map_err(|e| migrate_error(url, e)),
            (Backend::Postgres { .. }, url @ DatabaseUrl::Postgres(pg, _)) => {
                migrate_postgres(url, pg).await
            }
            (Backend::Postgres { .. }, DatabaseUrl::Sqlite(_)) => Err(Error::new(
                ErrorCode::Internal,
                "store and URL disagree on the engine",
            )),
        }
    }

    pub fn engine(&self) -> Engine {
        self.url.engine()
    }

    /// The PostgreSQL pool, for the hot path that runs as one statement outside a `Tx`
    /// (`ingest_webhooks`).
    pub(crate) fn pg_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres { pool } => Some(pool),
            Backend::Sqlite { .. } => None,
        }
    }

    /// The URL with its password masked.
    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// A read-write transaction over one tenant's data.
    pub async fn tenant(&self, tenant: TenantId) -> Result<Tx<Tenant>> {
        let conn = match &self.backend {
            Backend::Sqlite { write, .. } => Conn::Sqlite(begin_immediate(write).await?),
            Backend::Postgres { pool } => Conn::Postgres(begin_pg_tenant(pool, tenant).await?),
        };
        Ok(Tx {
            conn,
            scope: Tenant(tenant),
            audit_keys: self.audit_keys.clone(),
        })
    }

    /// A read-only transaction over one tenant's data. On SQLite it runs on the reader pool
    /// and never waits for the writer.
    pub async fn tenant_read(&self, tenant: TenantId) -> Result<Tx<Tenant>> {
        let conn = match &self.backend {
            Backend::Sqlite { read, .. } => Conn::Sqlite(read.begin().await.map_err(db_error)?),
            Backend::Postgres { pool } => Conn::Postgres(begin_pg_tenant(pool, tenant).await?),
        };
        Ok(Tx {
            conn,
            scope: Tenant(tenant),
            audit_keys: self.audit_keys.clone(),
        })
    }

    /// A read-write transaction over platform tables.
    pub async fn platform(&self) -> Result<Tx<Platform>> {
        let conn = match &self.backend {
            Backend::Sqlite { write, .. } => Conn::Sqlite(begin_immediate(write).await?),
            Backend::Postgres { pool } => Conn::Postgres(pool.begin().await.map_err(db_error)?),
        };
        Ok(Tx {
            conn,
            scope: Platform,
            audit_keys: self.audit_keys.clone(),
        })
    }

    /// A read-only transaction over platform tables.
    pub async fn platform_read(&self) -> Result<Tx<Platform>> {
        let conn = match &self.backend {
            Backend::Sqlite { read, .. } => Conn::Sqlite(read.begin().await.map_err(db_error)?),
            Backend::Postgres { pool } => Conn::Postgres(pool.begin().await.map_err(db_error)?),
        };
        Ok(Tx {
            conn,
            scope: Platform,
            audit_keys: self.audit_keys.clone(),
        })
    }

    pub async fn readiness(&self) -> Readiness {
        let engine = self.engine();
        let expected = engine.migrations().last().map_or(0, |(v, _)| *v);
        const SQL: &str = "SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success";
        let version = match &self.backend {
            Backend::Sqlite { read, .. } => sqlx::query(SQL)
                .fetch_one(read)
                .await
                .and_then(|r| r.try_get::<Option<i64>, _>(0)),
            Backend::Postgres { pool } => sqlx::query(SQL)
                .fetch_one(pool)
                .await
                .and_then(|r| r.try_get::<Option<i64>, _>(0)),
        };
        match version {
            Ok(v) => Readiness {
                engine: engine.as_str(),
                database_reachable: true,
                schema_version: v,
                expected_schema_version: expected,
            },
            Err(err) => {
                tracing::warn!(error = %err, "readiness check failed");
                Readiness {
                    engine: engine.as_str(),
                    database_reachable: false,
                    schema_version: None,
                    expected_schema_version: expected,
                }
            }
        }
    }

    /// Who the application's PostgreSQL connections act as; `None` on SQLite.
    pub async fn identity(&self) -> Result<Option<Identity>> {
        let Backend::Postgres { pool } = &self.backend else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT current_user::text, session_user::text, r.rolsuper, r.rolbypassrls \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(pool)
        .await
        .map_err(db_error)?;
        Ok(Some(Identity {
            current_user: row.try_get(0).map_err(db_error)?,
            session_user: row.try_get(1).map_err(db_error)?,
            superuser: row.try_get(2).map_err(db_error)?,
            bypass_rls: row.try_get(3).map_err(db_error)?,
        }))
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite { write, read } => {
                read.close().await;
                write.close().await;
            }
            Backend::Postgres { pool } => pool.close().await,
        }
    }
}

/// Spelled out so the SQL stays a literal; a test keeps it in step with [`APP_ROLE`].
const SET_APP_ROLE: &str = "SET ROLE waypost_app";

const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(30);

/// `BEGIN IMMEDIATE` takes SQLite's write lock up front, so a transaction never fails later
/// with SQLITE_BUSY when it upgrades from reading to writing.
async fn begin_immediate(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await.map_err(db_error)
}

async fn begin_pg_tenant(
    pool: &PgPool,
    tenant: TenantId,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    // One round trip: BEGIN and the (transaction-local) tenant setting travel together as a
    // simple query. The tenant is a UUID printed by us, never caller text.
    pool.begin_with(sqlx::AssertSqlSafe(format!(
        "BEGIN; SELECT set_config('app.tenant_id', '{}', true)",
        tenant.as_uuid()
    )))
    .await
    .map_err(db_error)
}

pub(crate) async fn set_tenant(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    tenant: TenantId,
) -> Result<()> {
    // Transaction-local (`true`): the setting cannot leak to the next user of the connection.
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

async fn migrate_postgres(url: &DatabaseUrl, pg: &PgConnectOptions) -> Result<()> {
    // Migrations run as the configured user (the tables' owner), on a connection of their
    // own that never switches role. sqlx takes an advisory lock, so concurrent starts are safe.
    let mut conn = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect_with(pg))
        .await
        .map_err(|_| {
            Error::new(
                ErrorCode::Unavailable,
                format!("cannot connect to {url}: timed out"),
            )
        })?
        .map_err(|e| connect_error(url, e))?;
    let result = POSTGRES_MIGRATOR
        .run(&mut conn)
        .await
        .map_err(|e| migrate_error(url, e));
    let _ = conn.close().await;
    result
}

#[track_caller]
fn connect_error(url: &DatabaseUrl, err: sqlx::Error) -> Error {
    // Keep the message one line; sqlx's errors never contain the password.
    let detail = match &err {
        sqlx::Error::Database(db) => db.message().to_string(),
        other => other.to_string(),
    };
    if detail.contains("waypost_app") || detail.contains("permission denied to set role") {
        return Error::new(
            ErrorCode::InvalidConfig,
            format!(
                "the database user of {url} cannot act as role {APP_ROLE}: {detail} \
                 (run `waypost migrate` as the schema owner, or GRANT {APP_ROLE} TO that user)"
            ),
        );
    }
    Error::new(
        ErrorCode::Unavailable,
        format!("cannot connect to {url}: {detail}"),
    )
}

#[track_caller]
fn migrate_error(url: &DatabaseUrl, err: sqlx::migrate::MigrateError) -> Error {
    let detail = match &err {
        sqlx::migrate::MigrateError::Execute(sqlx::Error::Database(db)) => db.message().to_string(),
        other => other.to_string(),
    };
    Error::new(
        ErrorCode::Unavailable,
        format!("cannot migrate {url}: {detail}"),
    )
}

/// Maps driver errors onto Waypost's codes. Constraint violations are the caller's doing;
/// lost connections are `unavailable`; anything else is internal and logged in full.
#[track_caller]
pub(crate) fn db_error(err: sqlx::Error) -> Error {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            Error::with_source(ErrorCode::Conflict, "already exists", err)
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => Error::with_source(
            ErrorCode::NotFound,
            "a referenced object does not exist",
            err,
        ),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            Error::with_source(ErrorCode::Unavailable, "database unavailable", err)
        }
        _ => Error::internal("database error", err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_by_scheme_and_reject_the_rest() {
        assert_eq!(
            "sqlite://./data/w.db"
                .parse::<DatabaseUrl>()
                .unwrap()
                .engine(),
            Engine::Sqlite
        );
        let pg: DatabaseUrl = "postgres://u:secret@db.example:5432/waypost"
            .parse()
            .unwrap();
        let query: DatabaseUrl = "postgres://u@db.example/w?sslmode=require&password=secret"
            .parse()
            .unwrap();
        assert!(
            !query.to_string().contains("secret") && query.to_string().contains("sslmode=require"),
            "{query}"
        );
        assert_eq!(pg.engine(), Engine::Postgres);
        assert!(!pg.to_string().contains("secret"), "{pg}");
        for bad in [
            "postgress://u@h/db",
            "mysql://h/db",
            "postgres://",
            "sqlite://",
            "nothing",
        ] {
            let err = bad.parse::<DatabaseUrl>().unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidConfig, "{bad}");
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[test]
    fn set_role_names_the_app_role() {
        assert_eq!(SET_APP_ROLE, format!("SET ROLE {APP_ROLE}"));
    }

    #[test]
    fn both_engines_ship_the_same_migration_versions() {
        let sqlite = Engine::Sqlite.migrations();
        let postgres = Engine::Postgres.migrations();
        assert!(!sqlite.is_empty());
        assert_eq!(
            sqlite, postgres,
            "migrations/sqlite and migrations/postgres differ"
        );
    }
}
