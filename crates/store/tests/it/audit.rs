use sqlx::{Connection, Executor, postgres::PgConnection};
use waypost_core::{Timestamp, UserId};
use waypost_store::{
    AuditEvent, AuditFilter, NewSession, Store,
    testkit::{Flavor, TestDb, test_databases},
};

fn event(action: &str, actor: &str) -> AuditEvent {
    AuditEvent {
        actor_type: "user",
        actor_id: Some(actor.into()),
        action: action.into(),
        target_type: Some("api_key".into()),
        target_id: Some("k1".into()),
        ip: Some("203.0.113.9".into()),
        outcome: "success",
        ..AuditEvent::default()
    }
}

async fn tenant(store: &Store) -> waypost_core::TenantId {
    let mut tx = store.platform().await.unwrap();
    let id = tx.create_tenant("Acme").await.unwrap().id;
    tx.commit().await.unwrap();
    id
}

/// Rewrites one stored record behind the application's back, as an intruder with database
/// access would.
async fn tamper(db: &TestDb, store: &Store, sql: &'static str) {
    match db.flavor {
        Flavor::Sqlite => {
            store.close().await;
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            conn.execute(sql).await.unwrap();
        }
        _ => {
            let mut conn = PgConnection::connect(&db.superuser_url()).await.unwrap();
            conn.execute(sql).await.unwrap();
        }
    }
}

async fn append(store: &Store, t: waypost_core::TenantId, n: usize) {
    for _ in 0..n {
        let mut tx = store.tenant(t).await.unwrap();
        tx.audit(event("settings.update", "u")).await.unwrap();
        tx.commit().await.unwrap();
    }
}

/// A deployment from before keyed chains: its SHA-256 records verify as the start of a chain
/// and are counted, and keyed records continue from them. A SHA-256 record after a keyed one
/// is what a forger without the key writes, and breaks the chain.
#[tokio::test]
async fn legacy_records_count_only_before_the_first_keyed_one() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        let t = tenant(&store).await;
        append(&store, t, 2).await;
        db.relink_audit_as_sha256(t, 1, true).await;
        let report = store.verify_audit(Some(t)).await.unwrap();
        assert_eq!(
            (
                report.records,
                report.legacy_records,
                report.first_broken_seq
            ),
            (2, 2, None),
            "{:?}",
            db.flavor
        );

        append(&store, t, 2).await;
        let report = store.verify_audit(Some(t)).await.unwrap();
        assert_eq!(
            (
                report.records,
                report.legacy_records,
                report.first_broken_seq
            ),
            (4, 2, None),
            "{:?}",
            db.flavor
        );

        let mut tx = store.tenant_read(t).await.unwrap();
        let all = tx.list_audit(&AuditFilter::default(), 10).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.key_id.is_some()).collect::<Vec<_>>(),
            [false, false, true, true]
        );
        db.relink_audit_as_sha256(t, 4, true).await;
        assert_eq!(
            store.verify_audit(Some(t)).await.unwrap().first_broken_seq,
            Some(4),
            "{:?}",
            db.flavor
        );
    }
}

/// Editing a keyed record and recomputing its link the old way (plain SHA-256) keeps the
/// chain's links consistent, but the key is not there to redo them: verification fails.
#[tokio::test]
async fn a_consistently_rehashed_edit_does_not_verify() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        let t = tenant(&store).await;
        append(&store, t, 4).await;
        db.execute_as_superuser("UPDATE audit_events SET actor_id = 'someone-else' WHERE seq = 2")
            .await;
        db.relink_audit_as_sha256(t, 2, false).await;
        assert_eq!(
            store.verify_audit(Some(t)).await.unwrap().first_broken_seq,
            Some(2),
            "{:?}",
            db.flavor
        );
    }
}

#[tokio::test]
async fn the_chain_verifies_and_an_edited_row_breaks_it_at_that_record() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        let t = tenant(&store).await;
        for i in 0..5 {
            let mut tx = store.tenant(t).await.unwrap();
            tx.audit(event("api_key.create", &format!("u{i}")))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let report = store.verify_audit(Some(t)).await.unwrap();
        assert_eq!(
            (report.records, report.first_broken_seq),
            (5, None),
            "{:?}",
            db.flavor
        );

        let mut tx = store.tenant_read(t).await.unwrap();
        let only = tx
            .list_audit(
                &AuditFilter {
                    actor_id: Some("u3".into()),
                    ..AuditFilter::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].seq, 4);
        drop(tx);

        tamper(
            &db,
            &store,
            "UPDATE audit_events SET actor_id = 'someone-else' WHERE seq = 3",
        )
        .await;
        let store = db.audited_store().await;
        let report = store.verify_audit(Some(t)).await.unwrap();
        assert_eq!(report.first_broken_seq, Some(3), "{:?}", db.flavor);
    }
}

#[tokio::test]
async fn deleting_the_newest_records_is_detected_but_retention_is_not_tampering() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        let t = tenant(&store).await;
        for _ in 0..4 {
            let mut tx = store.tenant(t).await.unwrap();
            tx.audit(event("settings.update", "u")).await.unwrap();
            tx.commit().await.unwrap();
        }
        // Retention: prune the first records and record that it happened.
        let mut tx = store.tenant(t).await.unwrap();
        let cutoff = Timestamp::now().plus(std::time::Duration::from_secs(1));
        assert_eq!(tx.prune_audit(cutoff).await.unwrap(), 4);
        tx.audit(event("audit.pruned", "system")).await.unwrap();
        tx.commit().await.unwrap();
        for _ in 0..2 {
            let mut tx = store.tenant(t).await.unwrap();
            tx.audit(event("settings.update", "u")).await.unwrap();
            tx.commit().await.unwrap();
        }
        let report = store.verify_audit(Some(t)).await.unwrap();
        assert_eq!(
            (report.records, report.first_broken_seq),
            (3, None),
            "{:?}",
            db.flavor
        );

        tamper(&db, &store, "DELETE FROM audit_events WHERE seq = 7").await;
        let store = db.audited_store().await;
        assert_eq!(
            store.verify_audit(Some(t)).await.unwrap().first_broken_seq,
            Some(7)
        );
    }
}

#[tokio::test]
async fn concurrent_appends_to_one_chain_never_fork_it() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        let t = tenant(&store).await;
        let mut tasks = Vec::new();
        for w in 0..6 {
            let store = db.audited_store().await;
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let mut tx = store.tenant(t).await.unwrap();
                    tx.audit(event("x", &format!("{w}-{i}"))).await.unwrap();
                    tx.commit().await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let report = store.verify_audit(Some(t)).await.unwrap();
        assert_eq!(
            (report.records, report.first_broken_seq),
            (60, None),
            "{:?}",
            db.flavor
        );
    }
}

#[tokio::test]
async fn the_platform_chain_records_events_without_a_tenant() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        for _ in 0..3 {
            let mut tx = store.platform().await.unwrap();
            tx.audit(event("auth.sign_in", "u")).await.unwrap();
            tx.commit().await.unwrap();
        }
        let report = store.verify_audit(None).await.unwrap();
        assert_eq!(
            (
                report.chain.as_str(),
                report.records,
                report.first_broken_seq
            ),
            ("platform", 3, None)
        );
    }
}

#[tokio::test]
async fn postgres_the_application_role_cannot_rewrite_audit_records() {
    let Some(db) = TestDb::postgres(Flavor::Postgres).await else {
        return;
    };
    let store = db.audited_store().await;
    let t = tenant(&store).await;
    let mut tx = store.tenant(t).await.unwrap();
    tx.audit(event("x", "u")).await.unwrap();
    tx.commit().await.unwrap();
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    conn.execute("SET ROLE waypost_app").await.unwrap();
    let err = conn
        .execute("UPDATE audit_events SET action = 'y'")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn users_memberships_sessions_and_failures() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        let t = tenant(&store).await;
        let mut tx = store.platform().await.unwrap();
        let user = tx
            .create_user(" Ada@Example.COM ", "$argon2id$x", false)
            .await
            .unwrap();
        assert_eq!(user.email, "ada@example.com");
        assert!(tx.create_user("not-an-email", "h", false).await.is_err());
        tx.commit().await.unwrap();
        let mut tx = store.platform().await.unwrap();
        let dup = tx
            .create_user("ada@example.com", "$argon2id$y", false)
            .await
            .unwrap_err();
        assert_eq!(dup.code(), waypost_core::ErrorCode::Conflict);
        drop(tx);
        let mut tx = store.platform().await.unwrap();
        tx.set_membership(t, user.id, waypost_core::Role::Agent)
            .await
            .unwrap();
        tx.set_membership(t, user.id, waypost_core::Role::Admin)
            .await
            .unwrap();
        let memberships = tx.memberships_of(user.id).await.unwrap();
        assert_eq!(memberships.len(), 1);
        assert_eq!(memberships[0].role, waypost_core::Role::Admin);
        let found = tx
            .find_user_by_email("ADA@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.user, user);

        let now = Timestamp::now();
        let session = tx
            .create_session(NewSession {
                id: vec![1; 32],
                user_id: user.id,
                tenant_id: Some(t),
                csrf_token: "csrf".into(),
                expires_at: now.plus(std::time::Duration::from_secs(3600)),
                ip: None,
                user_agent: None,
            })
            .await
            .unwrap();
        assert_eq!(tx.find_session(&[1; 32]).await.unwrap().unwrap(), session);
        assert_eq!(tx.list_sessions(user.id, now).await.unwrap().len(), 1);
        let stranger = UserId::new();
        assert!(
            tx.revoke_session(stranger, &[1; 32]).await.is_err(),
            "revoked someone else's session"
        );
        tx.revoke_session(user.id, &[1; 32]).await.unwrap();
        assert!(tx.list_sessions(user.id, now).await.unwrap().is_empty());

        for _ in 0..3 {
            tx.record_auth_failure("ip:203.0.113.9", now).await.unwrap();
        }
        tx.lock_auth_subject("ip:203.0.113.9").await.unwrap();
        let window = tx
            .auth_failures_since(
                "ip:203.0.113.9",
                now.minus(std::time::Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(
            (window.count, window.oldest, window.latest),
            (3, Some(now), Some(now))
        );
        let later = tx
            .auth_failures_since(
                "ip:203.0.113.9",
                now.plus(std::time::Duration::from_secs(1)),
            )
            .await
            .unwrap();
        assert_eq!((later.count, later.latest), (0, None));
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn verifying_while_records_are_appended_is_not_mistaken_for_tampering() {
    for db in test_databases().await {
        let store = db.audited_store().await;
        let t = tenant(&store).await;
        let writer = {
            let store = db.audited_store().await;
            tokio::spawn(async move {
                for _ in 0..300 {
                    let mut tx = store.tenant(t).await.unwrap();
                    tx.audit(event("auth.sign_in", "u")).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        };
        for _ in 0..20 {
            let report = store.verify_audit(Some(t)).await.unwrap();
            assert_eq!(report.first_broken_seq, None, "{:?}: {report:?}", db.flavor);
        }
        writer.await.unwrap();
        assert_eq!(store.verify_audit(Some(t)).await.unwrap().records, 300);
    }
}
