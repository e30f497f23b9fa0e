//! Test databases for Waypost's own suites. Every test gets a database of its own: a SQLite
//! file in a temporary folder, and — when `WAYPOST_TEST_DATABASE_URL` names a PostgreSQL
//! server (any database on it; the user must be able to create roles and databases) — a fresh
//! PostgreSQL database, dropped afterwards. Under `CI=true` a missing PostgreSQL fails the
//! test instead of skipping it.

use std::{
    path::PathBuf,
    str::FromStr,
    sync::{Arc, OnceLock},
};

use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, postgres::PgConnection};
use zeroize::Zeroizing;

use waypost_core::TenantId;

use crate::{AuditKeys, DatabaseUrl, Engine, MacKey, NewChannel, Store, StoreOptions};

pub const TEST_DATABASE_URL_VAR: &str = "WAYPOST_TEST_DATABASE_URL";
/// The login role the README recommends: owns the schema, is neither superuser nor BYPASSRLS.
pub const RECOMMENDED_USER: &str = "waypost";

/// How a test reaches its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Sqlite,
    /// As the README's recommended owner role.
    Postgres,
    /// As the superuser of `WAYPOST_TEST_DATABASE_URL`.
    PostgresSuperuser,
}

/// A database that exists for one test and is removed when dropped.
pub struct TestDb {
    pub flavor: Flavor,
    /// The URL to hand to Waypost (as a flag or environment variable).
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Database { admin_url: String, name: String },
}

impl TestDb {
    pub fn engine(&self) -> Engine {
        match self.flavor {
            Flavor::Sqlite => Engine::Sqlite,
            Flavor::Postgres | Flavor::PostgresSuperuser => Engine::Postgres,
        }
    }

    pub fn database_url(&self) -> DatabaseUrl {
        match DatabaseUrl::from_str(&self.url) {
            Ok(url) => url,
            Err(err) => panic!("test database URL does not parse: {err}"),
        }
    }

    /// Connects (and migrates) with default options.
    pub async fn store(&self) -> Store {
        match Store::connect(&self.database_url(), &StoreOptions::default()).await {
            Ok(store) => store,
            Err(err) => panic!("cannot open test store {}: {err}", self.url),
        }
    }

    /// A store that can append to audit chains without a vault: a stand-in data key is stored
    /// (once) and [`TestAuditKeys`] derives MAC keys from it, as the vault would from a real
    /// one with the master key. Not for tests that also open a vault on this database.
    pub async fn audited_store(&self) -> Store {
        let store = self.store().await;
        let added = async {
            let mut tx = store.platform().await?;
            tx.add_first_key(b"testkit: a stand-in, not a wrapped key")
                .await?;
            tx.commit().await
        };
        if let Err(err) = added.await {
            panic!("storing the stand-in data key: {err}");
        }
        store.set_audit_keys(Arc::new(TestAuditKeys));
        store
    }

    /// A URL that reaches this database as a superuser, bypassing row-level security (for
    /// tests that play an intruder). For SQLite, the same file.
    pub fn superuser_url(&self) -> String {
        match &self.cleanup {
            Cleanup::Dir(_) => self.url.clone(),
            Cleanup::Database { admin_url, name } => {
                let mut url = match admin_url.parse::<url::Url>() {
                    Ok(url) => url,
                    Err(err) => panic!("{TEST_DATABASE_URL_VAR} is not a URL: {err}"),
                };
                url.set_path(name);
                url.to_string()
            }
        }
    }

    /// Runs one statement as a superuser (bypassing the application's role and row-level
    /// security), as an intruder with database access would.
    pub async fn execute_as_superuser(&self, sql: &str) {
        let result = match self.flavor {
            Flavor::Sqlite => {
                let mut conn = match sqlx::SqliteConnection::connect(&self.url).await {
                    Ok(conn) => conn,
                    Err(err) => panic!("cannot open {}: {err}", self.url),
                };
                conn.execute(sqlx::AssertSqlSafe(sql.to_string()))
                    .await
                    .map(|_| ())
            }
            _ => {
                let mut conn = admin_connection(&self.superuser_url()).await;
                conn.execute(sqlx::AssertSqlSafe(sql.to_string()))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(err) = result {
            panic!("{sql}: {err}");
        }
    }

    /// Runs `sql` in a superuser transaction on PostgreSQL and keeps that transaction open
    /// (holding whatever locks it took) until the returned value is dropped.
    pub async fn hold_as_superuser(&self, sql: &str) -> HeldTransaction {
        assert!(
            self.flavor != Flavor::Sqlite,
            "hold_as_superuser is for PostgreSQL"
        );
        let mut conn = admin_connection(&self.superuser_url()).await;
        for statement in ["BEGIN", sql] {
            if let Err(err) = conn
                .execute(sqlx::AssertSqlSafe(statement.to_string()))
                .await
            {
                panic!("{statement}: {err}");
            }
        }
        HeldTransaction { _conn: conn }
    }

    /// Plays an intruder with database access but no master key: gives the tenant's audit
    /// records from `from_seq` on consistent plain SHA-256 links (how an edit could be hidden
    /// before chains were keyed), with `keyless` also as legacy records, and points the head at
    /// the last.
    pub async fn relink_audit_as_sha256(&self, tenant: TenantId, from_seq: i64, keyless: bool) {
        let records = match self.store().await.tenant_read(tenant).await {
            Ok(mut tx) => tx.list_audit(&crate::AuditFilter::default(), 100_000).await,
            Err(err) => Err(err),
        };
        let records = records.unwrap_or_else(|e| panic!("reading the audit trail: {e}"));
        let tenant = self.uuid_literal(*tenant.as_uuid());
        let mut sql = String::new();
        let mut prev = None;
        for mut record in records.into_iter().filter(|r| r.seq >= from_seq) {
            record.prev_hash = prev.unwrap_or(record.prev_hash);
            if keyless {
                record.key_id = None;
            }
            let link = record.expected_hash(None);
            sql.push_str(&format!(
                "UPDATE audit_events SET {}prev_hash = {}, hash = {} \
                 WHERE tenant_id = {tenant} AND seq = {};",
                if keyless { "key_id = NULL, " } else { "" },
                self.bytes_literal(&record.prev_hash),
                self.bytes_literal(&link),
                record.seq
            ));
            prev = Some(link);
        }
        if let Some(head) = prev {
            sql.push_str(&format!(
                "UPDATE audit_heads SET hash = {} WHERE tenant_id = {tenant};",
                self.bytes_literal(&head)
            ));
        }
        self.execute_as_superuser(&sql).await;
    }

    fn bytes_literal(&self, bytes: &[u8]) -> String {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        match self.flavor {
            Flavor::Sqlite => format!("X'{hex}'"),
            _ => format!("'\\x{hex}'::bytea"),
        }
    }

    /// A UUID as stored: a 16-byte blob in SQLite.
    fn uuid_literal(&self, id: uuid::Uuid) -> String {
        match self.flavor {
            Flavor::Sqlite => self.bytes_literal(id.as_bytes()),
            _ => format!("'{id}'::uuid"),
        }
    }

    /// Every byte the database holds, as text: the SQLite files, or every row of every table
    /// on PostgreSQL. For scans that prove something is stored nowhere in plain text.
    pub async fn dump(&self) -> Vec<u8> {
        match self.flavor {
            Flavor::Sqlite => {
                let path = self.url.trim_start_matches("sqlite://");
                let mut bytes = Vec::new();
                for suffix in ["", "-wal", "-shm"] {
                    bytes.extend(std::fs::read(format!("{path}{suffix}")).unwrap_or_default());
                }
                bytes
            }
            _ => {
                let mut conn = admin_connection(&self.superuser_url()).await;
                let tables: Vec<String> = match sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(&mut conn)
                .await
                {
                    Ok(tables) => tables,
                    Err(err) => panic!("listing tables: {err}"),
                };
                let mut bytes = Vec::new();
                for table in tables {
                    let sql = format!("SELECT CAST(t AS text) FROM \"{table}\" t");
                    let rows: Vec<String> = match sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .fetch_all(&mut conn)
                        .await
                    {
                        Ok(rows) => rows,
                        Err(err) => panic!("dumping {table}: {err}"),
                    };
                    for row in rows {
                        bytes.extend(row.into_bytes());
                    }
                }
                bytes
            }
        }
    }

    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("waypost-test-{}", uuid::Uuid::now_v7()));
        let url = format!("sqlite://{}", dir.join("waypost.db").display());
        TestDb {
            flavor: Flavor::Sqlite,
            url,
            cleanup: Cleanup::Dir(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` when no server is configured (outside CI).
    pub async fn postgres(flavor: Flavor) -> Option<TestDb> {
        let admin_url = postgres_admin_url()?;
        let name = format!("waypost_t_{}", uuid::Uuid::now_v7().simple());
        let owner = match flavor {
            Flavor::Postgres => {
                ensure_recommended_roles(&admin_url).await;
                RECOMMENDED_USER.to_string()
            }
            Flavor::PostgresSuperuser => {
                let admin = admin_url.parse::<url::Url>().ok()?;
                admin.username().to_string()
            }
            Flavor::Sqlite => panic!("Flavor::Sqlite is not a PostgreSQL flavor"),
        };
        let mut conn = admin_connection(&admin_url).await;
        let create = format!("CREATE DATABASE {name} OWNER \"{owner}\"");
        if let Err(err) = conn.execute(sqlx::AssertSqlSafe(create)).await {
            panic!("cannot create test database {name}: {err}");
        }
        let _ = conn.close().await;
        let mut url = match admin_url.parse::<url::Url>() {
            Ok(url) => url,
            Err(err) => panic!("{TEST_DATABASE_URL_VAR} is not a URL: {err}"),
        };
        url.set_path(&name);
        if flavor == Flavor::Postgres {
            let _ = url.set_username(RECOMMENDED_USER);
            let _ = url.set_password(None);
        }
        Some(TestDb {
            flavor,
            url: url.to_string(),
            cleanup: Cleanup::Database { admin_url, name },
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("WAYPOST_TEST_KEEP").is_some() {
            return;
        }
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop may run inside a runtime; a thread of its own can block on its own one.
                let _ = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async {
                        if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = conn.execute(sqlx::AssertSqlSafe(drop)).await;
                            let _ = conn.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

/// MAC keys for [`TestDb::audited_store`]: SHA-256 of the key id and the stored bytes.
pub struct TestAuditKeys;

impl AuditKeys for TestAuditKeys {
    fn mac_key(&self, key_id: i64, wrapped: &[u8]) -> waypost_core::Result<MacKey> {
        let digest = Sha256::new()
            .chain_update(key_id.to_be_bytes())
            .chain_update(wrapped)
            .finalize();
        Ok(Zeroizing::new(digest.into()))
    }
}

/// An open transaction; dropping it closes the connection, which rolls it back.
pub struct HeldTransaction {
    _conn: PgConnection,
}

/// A Meta channel for tests, its Graph API pointed at a port nothing listens on.
pub fn meta_channel(phone_number_id: &str) -> NewChannel {
    NewChannel {
        provider: "meta".into(),
        name: "Main".into(),
        phone_number_id: Some(phone_number_id.into()),
        waba_id: None,
        display_number: None,
        provider_account: None,
        throughput_mps: 80,
        graph_api_base_url: "http://127.0.0.1:1".into(),
        graph_api_version: "v25.0".into(),
    }
}

/// The databases every contract test runs on: SQLite always, PostgreSQL when configured.
pub async fn test_databases() -> Vec<TestDb> {
    let mut dbs = vec![TestDb::sqlite()];
    dbs.extend(TestDb::postgres(Flavor::Postgres).await);
    dbs
}

/// `WAYPOST_TEST_DATABASE_URL`, or `None` when unset outside CI. Panics under `CI=true`:
/// there the PostgreSQL pass is required, never skipped.
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var(TEST_DATABASE_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!(
                "CI=true but {TEST_DATABASE_URL_VAR} is not set: the PostgreSQL pass is required"
            )
        }
        _ => {
            static WARNED: OnceLock<()> = OnceLock::new();
            WARNED.get_or_init(|| {
                eprintln!("PostgreSQL pass SKIPPED: set {TEST_DATABASE_URL_VAR} to run it");
            });
            None
        }
    }
}

async fn admin_connection(admin_url: &str) -> PgConnection {
    match PgConnection::connect(admin_url).await {
        Ok(conn) => conn,
        Err(err) => panic!("cannot reach PostgreSQL at {TEST_DATABASE_URL_VAR}: {err}"),
    }
}

/// Creates the README's recommended roles once per process. Concurrent test processes may
/// race on the catalog, so each statement tolerates "already exists" and is retried.
async fn ensure_recommended_roles(admin_url: &str) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let statements = [
            "DO $$ BEGIN CREATE ROLE waypost LOGIN; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
            "DO $$ BEGIN CREATE ROLE waypost_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
            "DO $$ BEGIN GRANT waypost_app TO waypost; \
             EXCEPTION WHEN others THEN NULL; END $$",
        ];
        let mut conn = admin_connection(admin_url).await;
        for sql in statements {
            for attempt in 0..5 {
                match conn.execute(sql).await {
                    Ok(_) => break,
                    Err(err) if attempt == 4 => panic!("cannot prepare roles: {err}"),
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
            }
        }
        let _ = conn.close().await;
    })
    .await;
}
