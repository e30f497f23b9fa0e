//! Secrets at rest against real databases: round trips, tenant and purpose binding, online
//! rotation across two processes' keyrings, retirement, wrong master keys, phone hashes.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use waypost_core::{ErrorCode, TenantId};
use waypost_store::{
    Store,
    testkit::{Flavor, test_databases},
};
use waypost_vault::{MasterKey, Vault};

const SENTINEL: &str = "sk-SENTINEL-7f3a9c1e5b2d4068";

async fn tenants(store: &Store, n: usize) -> Vec<TenantId> {
    let mut tx = store.platform().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(tx.create_tenant(&format!("t{i}")).await.unwrap().id);
    }
    tx.commit().await.unwrap();
    ids
}

fn key_copy(key: &MasterKey) -> MasterKey {
    MasterKey::from_base64(&key.to_base64()).unwrap()
}

#[tokio::test]
async fn secrets_round_trip_and_are_bound_to_their_tenant_and_purpose() {
    for db in test_databases().await {
        let store = db.store().await;
        let vault = Vault::open(store.clone(), MasterKey::generate().unwrap())
            .await
            .unwrap();
        let t = tenants(&store, 2).await;

        let mut tx = store.tenant(t[0]).await.unwrap();
        vault
            .put_secret(&mut tx, "ai.api_key", SENTINEL)
            .await
            .unwrap();
        assert_eq!(
            vault
                .reveal(&mut tx, "ai.api_key")
                .await
                .unwrap()
                .unwrap()
                .as_str(),
            SENTINEL
        );
        let status = vault.status(&mut tx, "ai.api_key").await.unwrap();
        assert_eq!((status.set, status.last4.as_deref()), (true, Some("4068")));
        let stored = tx.get_secret("ai.api_key").await.unwrap().unwrap();
        assert!(
            !stored
                .ciphertext
                .windows(SENTINEL.len())
                .any(|w| w == SENTINEL.as_bytes())
        );
        // The same ciphertext under another purpose of the same tenant does not open.
        tx.put_secret("webhook.secret", &stored.ciphertext, stored.key_id, "")
            .await
            .unwrap();
        let err = vault.reveal(&mut tx, "webhook.secret").await.unwrap_err();
        assert!(err.to_string().contains("failed authentication"), "{err}");
        tx.commit().await.unwrap();

        // Nor in another tenant's row.
        let mut tx = store.tenant(t[1]).await.unwrap();
        tx.put_secret("ai.api_key", &stored.ciphertext, stored.key_id, "")
            .await
            .unwrap();
        assert!(
            vault.reveal(&mut tx, "ai.api_key").await.is_err(),
            "{:?}",
            db.flavor
        );
        assert!(!vault.status(&mut tx, "missing").await.unwrap().set);
        assert!(vault.reveal(&mut tx, "missing").await.unwrap().is_none());
    }
}

#[tokio::test]
async fn rotation_reencrypts_online_and_old_keys_retire() {
    for db in test_databases().await {
        let store = db.store().await;
        let master = MasterKey::generate().unwrap();
        let vault = Vault::open(store.clone(), key_copy(&master)).await.unwrap();
        // A second process, opened before the rotation.
        let other = Vault::open(db.store().await, key_copy(&master))
            .await
            .unwrap();
        let t = tenants(&store, 3).await;
        for (i, tenant) in t.iter().enumerate() {
            let mut tx = store.tenant(*tenant).await.unwrap();
            vault
                .put_secret(&mut tx, "ai.api_key", &format!("{SENTINEL}-{i}"))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let first_key = {
            let mut tx = store.tenant(t[0]).await.unwrap();
            tx.get_secret("ai.api_key").await.unwrap().unwrap().key_id
        };
        let refused = vault.retire(first_key).await.unwrap_err();
        assert_eq!(refused.code(), ErrorCode::Conflict);

        let report = vault.rotate().await.unwrap();
        assert_eq!(
            (report.reencrypted, report.skipped),
            (3, 0),
            "{:?}",
            db.flavor
        );
        assert_ne!(report.active_key, first_key);
        for (i, tenant) in t.iter().enumerate() {
            let mut tx = store.tenant(*tenant).await.unwrap();
            assert_eq!(
                tx.get_secret("ai.api_key").await.unwrap().unwrap().key_id,
                report.active_key
            );
            // The stale process reads the new ciphertexts and writes with the new key.
            let value = other.reveal(&mut tx, "ai.api_key").await.unwrap().unwrap();
            assert_eq!(value.as_str(), format!("{SENTINEL}-{i}"));
            other
                .put_secret(&mut tx, "other", "value-from-the-other-process")
                .await
                .unwrap();
            assert_eq!(
                tx.get_secret("other").await.unwrap().unwrap().key_id,
                report.active_key
            );
            tx.commit().await.unwrap();
        }
        vault.retire(first_key).await.unwrap();
        assert_eq!(
            vault.retire(report.active_key).await.unwrap_err().code(),
            ErrorCode::Conflict
        );
        let again = Vault::open(store.clone(), key_copy(&master)).await.unwrap();
        let mut tx = store.tenant(t[2]).await.unwrap();
        assert_eq!(
            again
                .reveal(&mut tx, "ai.api_key")
                .await
                .unwrap()
                .unwrap()
                .as_str(),
            format!("{SENTINEL}-2")
        );
    }
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_with_one_clear_line() {
    for db in test_databases().await {
        let store = db.store().await;
        Vault::open(store.clone(), MasterKey::generate().unwrap())
            .await
            .unwrap();
        let err = Vault::open(store, MasterKey::generate().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidConfig);
        assert!(
            err.to_string().contains("master key does not match"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn phone_hashes_are_keyed_per_tenant_and_master_key() {
    let db = waypost_store::testkit::TestDb::sqlite();
    let store = db.store().await;
    let master = MasterKey::generate().unwrap();
    let vault = Vault::open(store.clone(), key_copy(&master)).await.unwrap();
    let (a, b) = (TenantId::new(), TenantId::new());
    assert_eq!(
        vault.phone_hash(a, "+14155550100"),
        vault.phone_hash(a, "+14155550100")
    );
    assert_ne!(
        vault.phone_hash(a, "+14155550100"),
        vault.phone_hash(a, "+14155550101")
    );
    assert_ne!(
        vault.phone_hash(a, "+14155550100"),
        vault.phone_hash(b, "+14155550100")
    );
    let other_db = waypost_store::testkit::TestDb::sqlite();
    let other = Vault::open(other_db.store().await, MasterKey::generate().unwrap())
        .await
        .unwrap();
    assert_ne!(
        vault.phone_hash(a, "+14155550100"),
        other.phone_hash(a, "+14155550100")
    );
}

#[tokio::test]
async fn no_plaintext_secret_byte_reaches_the_sqlite_file() {
    let db = waypost_store::testkit::TestDb::sqlite();
    assert_eq!(db.flavor, Flavor::Sqlite);
    let store = db.store().await;
    let vault = Vault::open(store.clone(), MasterKey::generate().unwrap())
        .await
        .unwrap();
    let t = tenants(&store, 1).await;
    let mut tx = store.tenant(t[0]).await.unwrap();
    vault
        .put_secret(&mut tx, "ai.api_key", SENTINEL)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    store.close().await;
    let path = db.url.trim_start_matches("sqlite://").to_string();
    for file in [path.clone(), format!("{path}-wal")] {
        if let Ok(bytes) = std::fs::read(&file) {
            assert!(
                !bytes
                    .windows(SENTINEL.len())
                    .any(|w| w == SENTINEL.as_bytes()),
                "{file}"
            );
        }
    }
}

/// Two processes starting on the same new database at once: both open, and they end with one
/// active key between them, so each reads what the other wrote.
#[tokio::test]
async fn processes_opening_a_new_database_together_share_one_first_key() {
    for _ in 0..4 {
        for db in test_databases().await {
            let master = MasterKey::generate().unwrap();
            let (one, two) = (db.store().await, db.store().await);
            let (a, b) = tokio::join!(
                Vault::open(one.clone(), key_copy(&master)),
                Vault::open(two.clone(), key_copy(&master))
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let keys = one
                .platform_read()
                .await
                .unwrap()
                .encryption_keys()
                .await
                .unwrap();
            assert_eq!(
                keys.iter().map(|k| k.state.as_str()).collect::<Vec<_>>(),
                ["active"],
                "{:?}",
                db.flavor
            );
            let t = tenants(&one, 1).await[0];
            let mut tx = one.tenant(t).await.unwrap();
            a.put_secret(&mut tx, "from.a", "written by a")
                .await
                .unwrap();
            b.put_secret(&mut tx, "from.b", "written by b")
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let mut tx = two.tenant(t).await.unwrap();
            for (vault, purpose, value) in [
                (&b, "from.a", "written by a"),
                (&a, "from.b", "written by b"),
            ] {
                let revealed = vault.reveal(&mut tx, purpose).await.unwrap().unwrap();
                assert_eq!(revealed.as_str(), value);
            }
        }
    }
}

/// `keys rotate` while other transactions write secrets: none is left behind on the old key
/// (a write that read the key before the rotation must not commit after the rotation passed
/// its tenant), and every one still opens.
#[tokio::test]
async fn a_rotation_racing_secret_writes_leaves_every_secret_on_the_new_key() {
    const WRITES: usize = 15;
    for db in test_databases().await {
        let store = db.store().await;
        let master = MasterKey::generate().unwrap();
        let writer =
            std::sync::Arc::new(Vault::open(store.clone(), key_copy(&master)).await.unwrap());
        let rotator = Vault::open(db.store().await, key_copy(&master))
            .await
            .unwrap();
        let t = tenants(&store, 4).await;
        let mut writers = tokio::task::JoinSet::new();
        for tenant in t.clone() {
            let (store, vault) = (store.clone(), writer.clone());
            writers.spawn(async move {
                for i in 0..WRITES {
                    let mut tx = store.tenant(tenant).await.unwrap();
                    vault
                        .put_secret(&mut tx, &format!("p{i}"), &format!("{SENTINEL}-{i}"))
                        .await
                        .unwrap();
                    // Hold the transaction open: the window a rotation must not slip into.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    tx.commit().await.unwrap();
                }
            });
        }
        let mut active = 0;
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            active = rotator.rotate().await.unwrap().active_key;
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
        for tenant in t {
            let mut tx = store.tenant_read(tenant).await.unwrap();
            for i in 0..WRITES {
                let purpose = format!("p{i}");
                let stored = tx.get_secret(&purpose).await.unwrap().unwrap();
                assert_eq!(stored.key_id, active, "{:?}: {purpose} stranded", db.flavor);
                let value = writer.reveal(&mut tx, &purpose).await.unwrap().unwrap();
                assert_eq!(value.as_str(), format!("{SENTINEL}-{i}"));
            }
        }
    }
}
