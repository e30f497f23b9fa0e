use waypost_core::{ErrorCode, Role, Timestamp};
use waypost_store::{
    NewApiKey,
    testkit::{meta_channel, test_databases},
};

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

/// The outbox contract: claims need the channel's lease, record the attempt, and another
/// holder's unfinished attempts become `unknown` until a status reconciles them.
#[tokio::test]
async fn the_outbox_claims_under_a_lease_and_never_repeats_an_attempt() {
    use waypost_store::{
        ContactIdentity, LANE_BULK, LANE_TRANSACTIONAL, NewOutboundMessage, SendOutcome,
    };
    for db in test_databases().await {
        let store = db.store().await;
        let mut tx = store.platform().await.unwrap();
        let tenant = tx.create_tenant("Outbox").await.unwrap().id;
        let (mut tx, channel) = tx
            .create_channel(tenant, meta_channel("1061"))
            .await
            .unwrap();
        let contact = tx
            .upsert_contact(&ContactIdentity {
                wa_id: Some("14155550100".into()),
                ..ContactIdentity::default()
            })
            .await
            .unwrap();
        let conversation = tx
            .touch_conversation(channel.id, contact, None)
            .await
            .unwrap();
        let queue = |lane, key: Option<&str>| NewOutboundMessage {
            channel_id: channel.id,
            conversation_id: conversation,
            recipient: "+14155550100".into(),
            kind: "text".into(),
            content: serde_json::json!({"type": "text", "text": {"body": "hi"}}),
            payload: serde_json::json!({"content": {"type": "text", "text": {"body": "hi"}}}),
            reply_to: None,
            category: "service".into(),
            lane,
            idempotency: key.map(|k| (k.to_string(), "hash".to_string())),
        };
        let bulk = tx
            .insert_outbound_message(queue(LANE_BULK, None))
            .await
            .unwrap();
        let urgent = tx
            .insert_outbound_message(queue(LANE_TRANSACTIONAL, Some("k1")))
            .await
            .unwrap();
        assert_eq!(
            tx.idempotent_message("k1").await.unwrap(),
            Some(("hash".to_string(), urgent))
        );
        // Without the lease nothing is claimed.
        assert!(
            tx.claim_outbox(channel.id, "p1", "p1#a", 10)
                .await
                .unwrap()
                .is_empty()
        );
        tx.commit().await.unwrap();

        let mut platform = store.platform().await.unwrap();
        let until = Timestamp::now().plus(std::time::Duration::from_secs(10));
        assert_eq!(
            platform
                .acquire_dispatch_leases("p1", until)
                .await
                .unwrap()
                .len(),
            1
        );
        // Another process cannot take a live lease.
        assert!(
            platform
                .acquire_dispatch_leases("p2", until)
                .await
                .unwrap()
                .is_empty()
        );
        platform.commit().await.unwrap();

        let mut tx = store.tenant(tenant).await.unwrap();
        let claimed = tx.claim_outbox(channel.id, "p1", "p1#a", 1).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].message_id, urgent, "transactional before bulk");
        assert_eq!(
            tx.get_message(urgent).await.unwrap().status.as_deref(),
            Some("sending")
        );
        // Claimed rows are not claimed again.
        let second = tx.claim_outbox(channel.id, "p1", "p1#a", 10).await.unwrap();
        assert_eq!(
            second.iter().map(|i| i.message_id).collect::<Vec<_>>(),
            vec![bulk]
        );
        // A new sender (the old one died) reports the first one's attempts as unknown.
        assert_eq!(tx.recover_in_flight(channel.id, "p1#b").await.unwrap(), 2);
        assert_eq!(
            tx.get_message(bulk).await.unwrap().status.as_deref(),
            Some("unknown")
        );
        assert!(
            tx.claim_outbox(channel.id, "p1", "p1#b", 10)
                .await
                .unwrap()
                .is_empty()
        );
        // The provider's status webhook echoes our id: the message is reconciled, once.
        assert!(tx.reconcile_outbound(bulk, "wamid.B").await.unwrap());
        assert!(!tx.reconcile_outbound(bulk, "wamid.C").await.unwrap());
        let reconciled = tx.get_message(bulk).await.unwrap();
        assert_eq!(
            (
                reconciled.provider_message_id.as_deref(),
                reconciled.status.as_deref()
            ),
            (Some("wamid.B"), Some("accepted"))
        );
        // The old sender's late answer is a definite outcome: it settles the unknown too.
        tx.record_send_outcomes(&[(
            urgent,
            SendOutcome::Accepted {
                provider_message_id: "wamid.U".into(),
            },
        )])
        .await
        .unwrap();
        let settled = tx.get_message(urgent).await.unwrap();
        assert_eq!(
            (
                settled.provider_message_id.as_deref(),
                settled.status.as_deref()
            ),
            (Some("wamid.U"), Some("accepted"))
        );
        tx.commit().await.unwrap();
    }
}
