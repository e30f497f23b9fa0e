//! Inbound processing against real databases, from the provider fixtures.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod contention;

use waypost_core::{ChannelId, TenantId};
use waypost_inbound::{Processed, process};
use waypost_store::{
    NewChannel, Store,
    testkit::{meta_channel, test_databases},
};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../providers/tests/fixtures/meta/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub(crate) async fn channel(store: &Store) -> (TenantId, ChannelId) {
    let mut tx = store.platform().await.unwrap();
    let tenant = tx.create_tenant("Acme").await.unwrap().id;
    let (tx, channel) = tx
        .create_channel(
            tenant,
            NewChannel {
                waba_id: Some("102290129340398".into()),
                display_number: Some("+15550783881".into()),
                ..meta_channel("106540352242922")
            },
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (tenant, channel.id)
}

async fn ingest(store: &Store, tenant: TenantId, channel: ChannelId, body: &[u8]) -> Processed {
    let mut tx = store.tenant(tenant).await.unwrap();
    let id = tx.store_webhook(channel, "meta", body).await.unwrap();
    let processed = process(&mut tx, id).await.unwrap();
    // Processing an entry twice does nothing the second time.
    assert_eq!(process(&mut tx, id).await.unwrap(), Processed::default());
    tx.commit().await.unwrap();
    processed
}

#[tokio::test]
async fn every_message_type_lands_once_in_its_conversation() {
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, ch) = channel(&store).await;
        let names = [
            "text",
            "image",
            "video",
            "audio_voice",
            "document",
            "sticker",
            "location",
            "contacts",
            "button_reply",
            "list_reply",
            "flow_reply",
            "template_button",
            "reaction_added",
            "reaction_removed",
            "order",
            "system_number_change",
            "system_identity_change",
            "edit",
            "revoke",
            "unsupported",
            "unknown_type",
            "forwarded",
            "referral",
        ];
        let mut stored = 0;
        for name in names {
            let processed = ingest(&store, tenant, ch, &fixture(name)).await;
            stored += processed.messages + processed.duplicates;
        }
        assert_eq!(stored, names.len() as u32);
        // Meta retries: the same bodies again create nothing.
        for name in ["text", "image", "referral"] {
            let again = ingest(&store, tenant, ch, &fixture(name)).await;
            assert_eq!((again.messages, again.duplicates), (0, 1), "{name}");
        }
        let mut tx = store.tenant_read(tenant).await.unwrap();
        let conversations = tx.list_conversations(50, None).await.unwrap().data;
        assert_eq!(
            conversations.len(),
            1,
            "one contact, one channel, one thread"
        );
        let conversation = &conversations[0];
        assert_eq!(conversation.contact_wa_id.as_deref(), Some("16505551234"));
        assert_eq!(
            conversation.contact_bsuid.as_deref(),
            Some("US.13491208655302741918")
        );
        assert_eq!(conversation.contact_name.as_deref(), Some("Sheena Nelson"));
        let last = conversation.last_inbound_at.unwrap().as_millis();
        assert_eq!(
            conversation.window_expires_at.unwrap().as_millis(),
            last + 24 * 3600 * 1000
        );

        let messages = tx
            .list_messages(conversation.id, 200, None)
            .await
            .unwrap()
            .data;
        let distinct: std::collections::HashSet<_> = messages
            .iter()
            .map(|m| m.provider_message_id.clone())
            .collect();
        assert_eq!(distinct.len(), messages.len(), "{:?}", db.flavor);
        let kinds: std::collections::HashSet<_> =
            messages.iter().map(|m| m.kind.as_str()).collect();
        for kind in [
            "text",
            "image",
            "audio",
            "document",
            "sticker",
            "location",
            "contacts",
            "button_reply",
            "list_reply",
            "flow_reply",
            "template_button",
            "reaction",
            "order",
            "system",
            "edit",
            "revoke",
            "unsupported",
            "unknown",
        ] {
            assert!(kinds.contains(kind), "{kind} missing: {kinds:?}");
        }
        let with_referral = messages
            .iter()
            .find(|m| m.referral.is_some())
            .expect("the referral was dropped");
        assert_eq!(
            with_referral.referral.as_ref().unwrap()["ctwa_clid"],
            "ARAbc123ClickId"
        );
        let reply = messages.iter().find(|m| m.kind == "button_reply").unwrap();
        assert_eq!(reply.reply_to.as_deref(), Some("wamid.ORIGINAL"));
        let unknown = messages.iter().find(|m| m.kind == "unknown").unwrap();
        assert_eq!(unknown.content["kind"], "hologram");
    }
}

#[tokio::test]
async fn phone_less_users_get_a_contact_of_their_own() {
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, ch) = channel(&store).await;
        assert_eq!(
            ingest(&store, tenant, ch, &fixture("bsuid_only"))
                .await
                .messages,
            1
        );
        let mut tx = store.tenant_read(tenant).await.unwrap();
        let conversation = &tx.list_conversations(10, None).await.unwrap().data[0];
        assert_eq!(
            (
                conversation.contact_wa_id.as_deref(),
                conversation.contact_bsuid.as_deref()
            ),
            (None, Some("US.13491208655302741918"))
        );
    }
}

fn status_body(message_id: &str, status: &str, ts: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
        "statuses":[{"id": message_id, "status": status, "timestamp": ts.to_string(), "recipient_id":"16505551234"}]}}]}]}))
    .unwrap()
}

#[tokio::test]
async fn statuses_only_move_forward_and_early_ones_wait_for_their_message() {
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, ch) = channel(&store).await;
        // The status for wamid.TEXT1 arrives before the message itself.
        ingest(
            &store,
            tenant,
            ch,
            &status_body("wamid.TEXT1", "delivered", 1_749_416_390),
        )
        .await;
        ingest(&store, tenant, ch, &fixture("text")).await;
        let status_of = |store: Store| async move {
            let mut tx = store.tenant_read(tenant).await.unwrap();
            let conversation = tx.list_conversations(1, None).await.unwrap().data[0].id;
            tx.list_messages(conversation, 10, None).await.unwrap().data[0]
                .status
                .clone()
        };
        assert_eq!(
            status_of(store.clone()).await.as_deref(),
            Some("delivered"),
            "{:?}",
            db.flavor
        );
        ingest(
            &store,
            tenant,
            ch,
            &status_body("wamid.TEXT1", "read", 1_749_416_400),
        )
        .await;
        ingest(
            &store,
            tenant,
            ch,
            &status_body("wamid.TEXT1", "delivered", 1_749_416_390),
        )
        .await;
        ingest(
            &store,
            tenant,
            ch,
            &status_body("wamid.TEXT1", "sent", 1_749_416_385),
        )
        .await;
        assert_eq!(
            status_of(store.clone()).await.as_deref(),
            Some("read"),
            "an older status moved it back"
        );
    }
}

#[tokio::test]
async fn template_account_preference_and_unknown_events_are_kept() {
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, ch) = channel(&store).await;
        let mut total = 0;
        for name in [
            "template_status",
            "template_quality",
            "template_category",
            "user_preferences",
            "phone_quality",
            "account_update",
            "unknown_field",
            "value_errors",
        ] {
            total += ingest(&store, tenant, ch, &fixture(name))
                .await
                .other_events;
        }
        assert_eq!(total, 8, "{:?}", db.flavor);
    }
}

#[tokio::test]
async fn changes_for_another_number_are_left_to_that_channel() {
    let db = waypost_store::testkit::TestDb::sqlite();
    let store = db.store().await;
    let (tenant, ch) = channel(&store).await;
    // batch.json carries two messages for this number and a status for number 999.
    let processed = ingest(&store, tenant, ch, &fixture("batch")).await;
    assert_eq!((processed.messages, processed.statuses), (2, 0));
}

fn text_body(id: &str, text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
        "contacts":[{"profile":{"name":"Sheena"},"wa_id":"16505551234"}],
        "messages":[{"from":"16505551234","id": id,"timestamp":"1749416383","type":"text","text":{"body": text}}]}}]}]}))
    .unwrap()
}

async fn consent_of(store: &Store, tenant: TenantId) -> (String, Vec<(String, String)>) {
    let mut tx = store.tenant_read(tenant).await.unwrap();
    let contact = tx
        .list_contacts(None, 10, None)
        .await
        .unwrap()
        .data
        .remove(0);
    let history = tx.consent_history(contact.id).await.unwrap();
    (
        contact.marketing_consent,
        history.into_iter().map(|e| (e.action, e.source)).collect(),
    )
}

#[tokio::test]
async fn stop_and_start_keywords_and_meta_signals_change_consent() {
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, ch) = channel(&store).await;
        ingest(
            &store,
            tenant,
            ch,
            &text_body("wamid.A", "Please stop sending me offers"),
        )
        .await;
        assert_eq!(
            consent_of(&store, tenant).await.0,
            "unknown",
            "only the whole message is a keyword"
        );
        ingest(&store, tenant, ch, &text_body("wamid.B", "  sToP \n")).await;
        assert_eq!(consent_of(&store, tenant).await.0, "opted_out");
        // A retried STOP is a duplicate message and records nothing twice.
        ingest(&store, tenant, ch, &text_body("wamid.B", "  sToP \n")).await;
        ingest(&store, tenant, ch, &text_body("wamid.C", "start")).await;
        let (state, history) = consent_of(&store, tenant).await;
        assert_eq!(state, "opted_in");
        assert_eq!(
            history,
            [
                ("opt_out".to_string(), "keyword".to_string()),
                ("opt_in".into(), "keyword".into())
            ]
        );

        // Tenants add keywords in other languages.
        let mut tx = store.tenant(tenant).await.unwrap();
        let mut settings = tx.consent_settings().await.unwrap();
        settings.opt_out_keywords.push("BASTA".into());
        tx.put_consent_settings(&settings).await.unwrap();
        tx.commit().await.unwrap();
        ingest(&store, tenant, ch, &text_body("wamid.D", "basta")).await;
        assert_eq!(
            consent_of(&store, tenant).await.0,
            "opted_out",
            "{:?}",
            db.flavor
        );

        // Meta's marketing preference signal for the same user.
        ingest(&store, tenant, ch, &text_body("wamid.E", "start")).await;
        ingest(&store, tenant, ch, &fixture("user_preferences")).await;
        let (state, history) = consent_of(&store, tenant).await;
        assert_eq!(state, "opted_out");
        assert_eq!(
            history.last().unwrap(),
            &("opt_out".to_string(), "meta_signal".to_string())
        );
    }
}

#[tokio::test]
async fn processed_raw_bodies_are_pruned_and_unprocessed_ones_kept() {
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, ch) = channel(&store).await;
        let mut tx = store.tenant(tenant).await.unwrap();
        let done = tx
            .store_webhook(ch, "meta", &fixture("text"))
            .await
            .unwrap();
        process(&mut tx, done).await.unwrap();
        let waiting = tx
            .store_webhook(ch, "meta", &fixture("image"))
            .await
            .unwrap();
        let later = waypost_core::Timestamp::now().plus(std::time::Duration::from_secs(1));
        assert_eq!(tx.prune_inbox(later).await.unwrap(), 1, "{:?}", db.flavor);
        assert!(tx.inbox_entry(done).await.is_err());
        assert!(
            tx.inbox_entry(waiting).await.is_ok(),
            "an unprocessed body was pruned"
        );
        tx.commit().await.unwrap();
    }
}

/// A Meta text message from `wa_id` with its `timestamp` given as `raw` JSON.
fn text_dated(wa_id: &str, raw: &str) -> Vec<u8> {
    let body = String::from_utf8(fixture("text"))
        .unwrap()
        .replace("16505551234", wa_id)
        .replace("US.13491208655302741918", &format!("US.{wa_id}"))
        .replace("\"1749416383\"", raw)
        .replace("wamid.TEXT1", &format!("wamid.{wa_id}"));
    assert!(body.contains(raw));
    body.into_bytes()
}

/// Stores `body` as `provider`'s, processes it, and answers when it was received and when
/// the conversation of `wa_id` closes its window.
async fn window_after(
    store: &Store,
    tenant: TenantId,
    channel: ChannelId,
    provider: &str,
    body: &[u8],
    wa_id: &str,
) -> (i64, i64) {
    let mut tx = store.tenant(tenant).await.unwrap();
    let id = tx.store_webhook(channel, provider, body).await.unwrap();
    let processed = process(&mut tx, id).await.unwrap();
    assert_eq!(processed.messages, 1, "{provider} {wa_id}");
    let received = tx.inbox_entry(id).await.unwrap().received_at.as_millis();
    let conversation = tx
        .list_conversations(200, None)
        .await
        .unwrap()
        .data
        .into_iter()
        .find(|c| c.contact_wa_id.as_deref() == Some(wa_id))
        .unwrap();
    let messages = tx.list_messages(conversation.id, 10, None).await.unwrap();
    let sent_at = messages.data[0].sent_at.map(|t| t.as_millis());
    assert!(
        sent_at.is_none_or(|s| s <= received),
        "a message cannot be sent after it was received"
    );
    tx.commit().await.unwrap();
    (
        received,
        conversation.window_expires_at.unwrap().as_millis(),
    )
}

#[tokio::test]
async fn the_service_window_trusts_no_provider_clock_beyond_receipt() {
    const DAY_MS: i64 = 24 * 3600 * 1000;
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, meta) = channel(&store).await;
        let (received, closes) = window_after(
            &store,
            tenant,
            meta,
            "meta",
            &text_dated("14155550101", "\"9223372036854775807\""),
            "14155550101",
        )
        .await;
        assert_eq!(closes, received + DAY_MS, "i64::MAX: {:?}", db.flavor);

        let (received, closes) = window_after(
            &store,
            tenant,
            meta,
            "meta",
            &text_dated("14155550102", "\"4102444800\""),
            "14155550102",
        )
        .await;
        assert_eq!(closes, received + DAY_MS, "2100, by Meta's body");

        // A message that took an hour to reach us: its window runs from when it was sent.
        let hour_ago_secs = waypost_core::Timestamp::now().as_millis() / 1000 - 3600;
        let (received, closes) = window_after(
            &store,
            tenant,
            meta,
            "meta",
            &text_dated("14155550103", &format!("\"{hour_ago_secs}\"")),
            "14155550103",
        )
        .await;
        assert_eq!(closes, hour_ago_secs * 1000 + DAY_MS);
        assert!(closes < received + DAY_MS - 3_000_000);

        // Gupshup signs nothing: a body dated 2100 (milliseconds there) is no better.
        let tx = store.platform().await.unwrap();
        let (tx, gupshup) = tx
            .create_channel(
                tenant,
                NewChannel {
                    provider: "gupshup".into(),
                    ..meta_channel("gupshup-number")
                },
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let body = br#"{"app":"DemoApp","timestamp":4102444800000,"version":2,"type":"message","payload":{"id":"gs-2100","source":"918898000214","type":"text","payload":{"text":"Hi"},"sender":{"phone":"918898000214","name":"Andy"}}}"#;
        let (received, closes) =
            window_after(&store, tenant, gupshup.id, "gupshup", body, "918898000214").await;
        assert_eq!(closes, received + DAY_MS, "2100, by Gupshup's body");
    }
}
