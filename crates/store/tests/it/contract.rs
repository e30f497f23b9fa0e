use waypost_core::{ErrorCode, Role, Timestamp};
use waypost_store::{NewApiKey, testkit::test_databases};

fn new_key(prefix: &str, role: Role) -> NewApiKey {
    NewApiKey {
        prefix: prefix.to_string(),
        secret_hash: vec![7; 32],
        name: format!("key {prefix}"),
        role,
        expires_at: None,
    }
}

#[tokio::test]
async fn tenants_are_created_listed_and_validated() {
    for db in test_databases().await {
        let store = db.store().await;
        let mut tx = store.platform().await.unwrap();
        let acme = tx.create_tenant("  Acme  ").await.unwrap();
        let globex = tx.create_tenant("Globex").await.unwrap();
        assert_eq!(acme.name, "Acme");
        let err = tx.create_tenant("   ").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ValidationFailed);
        tx.commit().await.unwrap();

        let mut tx = store.platform_read().await.unwrap();
        let names: Vec<_> = tx
            .list_tenants()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["Acme", "Globex"], "{:?}", db.flavor);
        assert_eq!(tx.get_tenant(globex.id).await.unwrap(), globex);
        let missing = tx
            .get_tenant(waypost_core::TenantId::new())
            .await
            .unwrap_err();
        assert_eq!(missing.code(), ErrorCode::NotFound);
    }
}

#[tokio::test]
async fn first_run_is_claimed_exactly_once() {
    for db in test_databases().await {
        let store = db.store().await;
        let other = db.store().await;
        let (a, b) = tokio::join!(
            async {
                store
                    .platform()
                    .await
                    .unwrap()
                    .claim_first_run()
                    .await
                    .unwrap()
            },
            async {
                other
                    .platform()
                    .await
                    .unwrap()
                    .claim_first_run()
                    .await
                    .unwrap()
            },
        );
        // Neither transaction committed, so both may see an empty table; commit decides.
        assert!(a || b);
        let mut tx = store.platform().await.unwrap();
        assert!(tx.claim_first_run().await.unwrap());
        tx.commit().await.unwrap();
        let mut tx = other.platform().await.unwrap();
        assert!(!tx.claim_first_run().await.unwrap(), "{:?}", db.flavor);
    }
}

#[tokio::test]
async fn api_keys_round_trip_paginate_and_revoke() {
    for db in test_databases().await {
        let store = db.store().await;
        let mut tx = store.platform().await.unwrap();
        let tenant = tx.create_tenant("Acme").await.unwrap().id;
        tx.commit().await.unwrap();

        let mut tx = store.tenant(tenant).await.unwrap();
        let mut created = Vec::new();
        for i in 0..5 {
            created.push(
                tx.create_api_key(new_key(&format!("wp_{i:016x}"), Role::Agent))
                    .await
                    .unwrap(),
            );
        }
        let dup = tx
            .create_api_key(new_key("wp_0000000000000000", Role::Admin))
            .await
            .unwrap_err();
        assert_eq!(dup.code(), ErrorCode::Conflict, "{:?}", db.flavor);
        tx.rollback().await.unwrap();

        // Rolled back: nothing exists.
        let mut tx = store.tenant_read(tenant).await.unwrap();
        assert!(tx.list_api_keys(10, None).await.unwrap().data.is_empty());
        drop(tx);

        let mut tx = store.tenant(tenant).await.unwrap();
        for i in 0..5 {
            created.push(
                tx.create_api_key(new_key(&format!("wp_{i:016x}"), Role::Agent))
                    .await
                    .unwrap(),
            );
        }
        tx.commit().await.unwrap();
        let created = &created[5..];

        let mut tx = store.tenant_read(tenant).await.unwrap();
        let first = tx.list_api_keys(2, None).await.unwrap();
        assert_eq!(first.data, created[..2]);
        let cursor = waypost_core::Cursor::decode(first.next_cursor.as_deref().unwrap()).unwrap();
        let second = tx.list_api_keys(3, Some(cursor)).await.unwrap();
        assert_eq!(second.data, created[2..]);
        assert!(second.next_cursor.is_none());
        let found = tx
            .find_api_key_by_prefix(&created[3].prefix)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.key, created[3]);
        assert_eq!(found.secret_hash, vec![7; 32]);
        drop(tx);

        let mut tx = store.tenant(tenant).await.unwrap();
        let revoked = tx.revoke_api_key(created[0].id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(
            tx.revoke_api_key(created[0].id).await.unwrap_err().code(),
            ErrorCode::Conflict
        );
        let now = Timestamp::now();
        assert!(tx.touch_api_key(created[1].id, now).await.unwrap());
        // Written at most once a minute.
        assert!(!tx.touch_api_key(created[1].id, now).await.unwrap());
        tx.commit().await.unwrap();
        let mut tx = store.tenant_read(tenant).await.unwrap();
        assert_eq!(
            tx.get_api_key(created[1].id).await.unwrap().last_used_at,
            Some(now)
        );
        assert!(
            tx.get_api_key(created[0].id)
                .await
                .unwrap()
                .revoked_at
                .is_some()
        );
    }
}
