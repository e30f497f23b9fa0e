use std::sync::Mutex;

use sqlx::{Connection, Executor, Row, postgres::PgConnection};
use waypost_core::{ErrorCode, InboxId, Role, TenantId, Timestamp};
use waypost_store::{
    IncomingWebhook, NewApiKey, NewJob, Store,
    testkit::{Flavor, TestDb, meta_channel, test_databases},
};

async fn two_tenants_with_keys(store: &Store) -> (TenantId, TenantId, waypost_store::ApiKey) {
    let mut tx = store.platform().await.unwrap();
    let a = tx.create_tenant("A").await.unwrap().id;
    let b = tx.create_tenant("B").await.unwrap().id;
    tx.commit().await.unwrap();
    let mut key_of_b = None;
    for (tenant, prefix) in [(a, "wp_aaaaaaaaaaaaaaaa"), (b, "wp_bbbbbbbbbbbbbbbb")] {
        let mut tx = store.tenant(tenant).await.unwrap();
        let key = tx
            .create_api_key(NewApiKey {
                prefix: prefix.into(),
                secret_hash: vec![1; 32],
                name: "k".into(),
                role: Role::Admin,
                expires_at: None,
            })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        key_of_b = Some(key);
    }
    (a, b, key_of_b.unwrap())
}

#[tokio::test]
async fn a_tenant_never_reads_or_writes_another_tenants_rows_through_the_store() {
    for db in test_databases().await {
        let store = db.store().await;
        let (a, _b, key_of_b) = two_tenants_with_keys(&store).await;
        let mut tx = store.tenant(a).await.unwrap();
        let listed = tx.list_api_keys(50, None).await.unwrap();
        assert_eq!(listed.data.len(), 1);
        assert!(listed.data.iter().all(|k| k.id != key_of_b.id));
        assert_eq!(
            tx.get_api_key(key_of_b.id).await.unwrap_err().code(),
            ErrorCode::NotFound
        );
        assert!(
            tx.find_api_key_by_prefix(&key_of_b.prefix)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            tx.revoke_api_key(key_of_b.id).await.unwrap_err().code(),
            ErrorCode::NotFound
        );
        // The same prefix is free in another tenant: uniqueness is per tenant, no covert channel.
        let same_prefix = tx
            .create_api_key(NewApiKey {
                prefix: key_of_b.prefix.clone(),
                secret_hash: vec![2; 32],
                name: "mine".into(),
                role: Role::Viewer,
                expires_at: None,
            })
            .await;
        assert!(same_prefix.is_ok(), "{:?}", db.flavor);
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn dedupe_keys_are_namespaced_by_tenant() {
    for db in test_databases().await {
        let store = db.store().await;
        let (a, b, _) = two_tenants_with_keys(&store).await;
        for tenant in [a, b] {
            let mut tx = store.tenant(tenant).await.unwrap();
            let job = NewJob::new("t", ()).unwrap().dedupe_key("same");
            assert!(matches!(
                tx.enqueue(job).await.unwrap(),
                waypost_store::Enqueued::Created(_)
            ));
            tx.commit().await.unwrap();
        }
    }
}

/// The PostgreSQL URLs under test: the README's recommended owner role and a superuser.
async fn postgres_flavors() -> Vec<TestDb> {
    let mut dbs = Vec::new();
    for flavor in [Flavor::Postgres, Flavor::PostgresSuperuser] {
        dbs.extend(TestDb::postgres(flavor).await);
    }
    dbs
}

#[tokio::test]
async fn postgres_app_connections_never_run_as_owner_or_superuser() {
    for db in postgres_flavors().await {
        let store = db.store().await;
        let identity = store.identity().await.unwrap().unwrap();
        assert_eq!(identity.current_user, "waypost_app", "{:?}", db.flavor);
        assert!(!identity.superuser && !identity.bypass_rls, "{identity:?}");
        let expected_session = if db.flavor == Flavor::Postgres {
            "waypost"
        } else {
            "postgres"
        };
        assert_eq!(identity.session_user, expected_session);
    }
}

#[tokio::test]
async fn postgres_without_a_tenant_set_sees_no_tenant_rows() {
    for db in postgres_flavors().await {
        let store = db.store().await;
        two_tenants_with_keys(&store).await;
        // Through the store: the platform scope sets no tenant.
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        conn.execute("SET ROLE waypost_app").await.unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "{:?}: no tenant set must mean no rows", db.flavor);
        // An empty setting (what a pooled connection reads after a transaction) is no tenant.
        conn.execute("SELECT set_config('app.tenant_id', '', false)")
            .await
            .unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
        // The owner too is fenced in (FORCE ROW LEVEL SECURITY) when it is not a superuser.
        if db.flavor == Flavor::Postgres {
            conn.execute("RESET ROLE").await.unwrap();
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys")
                .fetch_one(&mut conn)
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 0, "the schema owner must not bypass row-level security");
        }
    }
}

#[tokio::test]
async fn postgres_rejects_writing_a_row_for_another_tenant() {
    for db in postgres_flavors().await {
        let store = db.store().await;
        let (a, b, _) = two_tenants_with_keys(&store).await;
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        conn.execute("SET ROLE waypost_app").await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(a.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let visible: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&mut *tx)
            .await
            .unwrap()
            .get(0);
        assert_eq!(visible, 1);
        let err = sqlx::query(
            "INSERT INTO api_keys (tenant_id, id, prefix, secret_hash, name, role, created_at) \
             VALUES ($1, $2, 'wp_x', '\\x00', 'x', 'admin', 0)",
        )
        .bind(b.as_uuid())
        .bind(uuid::Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .unwrap_err();
        assert!(err.to_string().contains("row-level security"), "{err}");
        tx.rollback().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(a.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
        let updated = sqlx::query("UPDATE api_keys SET name = 'stolen' WHERE tenant_id = $1")
            .bind(b.as_uuid())
            .execute(&mut *tx)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(updated, 0, "tenant A updated tenant B's rows");
        tx.rollback().await.unwrap();
    }
}

/// Tables without customer data, read by the platform itself (the queue is coordinator-local
/// under Citus). Every other table must be tenant-owned and protected.
const PLATFORM_TABLES: &[&str] = &[
    "_sqlx_migrations",
    "tenants",
    "platform_meta",
    "jobs",
    "job_schedules",
    "job_probes",
    "users",
    "memberships",
    "sessions",
    "auth_failures",
    "encryption_keys",
    "platform_audit_events",
    "platform_audit_head",
    "channel_directory",
    "unrouted_webhooks",
];

#[tokio::test]
async fn postgres_catalog_every_tenant_table_is_protected() {
    for db in postgres_flavors().await {
        let _store = db.store().await;
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        let rows = sqlx::query(
            "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity, \
                    pg_get_userbyid(c.relowner)::text AS owner, \
                    EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS has_policy, \
                    EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid \
                            AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS has_tenant, \
                    COALESCE((SELECT bool_and(a.attname IS NOT NULL) FROM pg_index i \
                              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0] \
                              WHERE i.indrelid = c.oid AND i.indisprimary \
                              AND a.attname = 'tenant_id'), false) AS pk_leads_with_tenant \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(rows.len() > PLATFORM_TABLES.len());
        for row in rows {
            let name: String = row.get(0);
            if PLATFORM_TABLES.contains(&name.as_str()) {
                continue;
            }
            let (rls, forced, owner): (bool, bool, String) = (row.get(1), row.get(2), row.get(3));
            let (policy, tenant, pk): (bool, bool, bool) = (row.get(4), row.get(5), row.get(6));
            assert!(
                tenant,
                "{name} is neither a platform table nor tenant-owned"
            );
            assert!(
                rls && forced && policy,
                "{name}: RLS {rls}, forced {forced}, policy {policy}"
            );
            assert!(pk, "{name}: the primary key must start with tenant_id");
            assert_ne!(
                owner, "waypost_app",
                "{name} is owned by the application role"
            );
        }
        let (superuser, bypass): (bool, bool) = {
            let row = sqlx::query(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'waypost_app'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            (row.get(0), row.get(1))
        };
        assert!(!superuser && !bypass);
    }
}

async fn channel_of(store: &Store, tenant: TenantId) -> waypost_core::ChannelId {
    let tx = store.platform().await.unwrap();
    let (tx, channel) = tx
        .create_channel(tenant, meta_channel(&format!("pn-{tenant}")))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    channel.id
}

/// The ingestion group commit takes webhooks of several tenants at once (on PostgreSQL in
/// one function call): each lands in its own tenant, with its jobs, and a batch with one
/// webhook that does not belong stores nothing at all.
#[tokio::test]
async fn one_ingest_commit_keeps_each_tenants_webhooks_in_that_tenant() {
    for db in test_databases().await {
        let store = db.store().await;
        let (a, b, _) = two_tenants_with_keys(&store).await;
        let (channel_a, channel_b) = (channel_of(&store, a).await, channel_of(&store, b).await);
        let webhook = |tenant, channel, body: &'static str| IncomingWebhook {
            tenant,
            channel,
            provider: "meta",
            body: body.as_bytes(),
        };
        let batch = [
            webhook(a, channel_a, "a1"),
            webhook(b, channel_b, "b1"),
            webhook(a, channel_a, "a2"),
            webhook(b, channel_b, "b2"),
            webhook(a, channel_a, "a3"),
        ];
        let later = Timestamp::from_millis(Timestamp::now().as_millis() + 60_000);
        let ids = Mutex::new(Vec::new());
        let jobs_for = |new: &[InboxId]| {
            ids.lock().unwrap().extend_from_slice(new);
            Ok(vec![
                NewJob::new("test.process", new).unwrap(),
                NewJob::new("test.once", ())
                    .unwrap()
                    .dedupe_key("once")
                    .run_at(later),
            ])
        };
        store.ingest_webhooks(&batch, jobs_for).await.unwrap();
        // The same dedupe key again: per tenant, it deduplicates.
        store.ingest_webhooks(&batch[..2], jobs_for).await.unwrap();

        let ids = ids.lock().unwrap().clone();
        assert_eq!(ids.len(), 7, "{:?}", db.flavor);
        for (tenant, expected, other) in [(a, 4, b), (b, 3, a)] {
            let mut tx = store.tenant_read(tenant).await.unwrap();
            assert_eq!(tx.count_inbox().await.unwrap(), expected, "{:?}", db.flavor);
            for id in &ids {
                if let Ok(entry) = tx.inbox_entry(*id).await {
                    let body = String::from_utf8(entry.body).unwrap();
                    assert!(
                        body.starts_with(if tenant == a { 'a' } else { 'b' }),
                        "{body}"
                    );
                    assert_eq!(entry.provider, "meta");
                }
            }
            drop(tx);
            let jobs = store.list_jobs(None, 100).await.unwrap();
            let mine: Vec<_> = jobs
                .iter()
                .filter(|j| j.tenant_id == Some(tenant))
                .collect();
            assert_eq!(
                mine.iter().filter(|j| j.kind == "test.process").count(),
                2,
                "one processing job per commit"
            );
            let once: Vec<_> = mine.iter().filter(|j| j.kind == "test.once").collect();
            assert_eq!(once.len(), 1, "{:?}", db.flavor);
            assert_eq!(once[0].run_at, later);
            assert!(jobs.iter().any(|j| j.tenant_id == Some(other)));
        }

        // Tenant A claiming B's channel: the whole batch fails and nothing is stored.
        let bad = [webhook(b, channel_b, "b9"), webhook(a, channel_b, "a9")];
        let jobs_before = store.list_jobs(None, 100).await.unwrap().len();
        assert!(store.ingest_webhooks(&bad, jobs_for).await.is_err());
        for (tenant, expected) in [(a, 4), (b, 3)] {
            let mut tx = store.tenant_read(tenant).await.unwrap();
            assert_eq!(tx.count_inbox().await.unwrap(), expected, "{:?}", db.flavor);
        }
        assert_eq!(store.list_jobs(None, 100).await.unwrap().len(), jobs_before);
    }
}
