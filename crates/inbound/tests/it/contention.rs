//! Processing under contention: many webhooks from a few returning customers, and statuses
//! racing the send outcomes of the messages they are about, processed by concurrent workers
//! while a dispatcher-like writer records those outcomes. Nothing may deadlock, wait its way
//! into retries, or be lost.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use waypost_core::{ChannelId, MessageId, TenantId};
use waypost_inbound::{PROCESS_KIND, ProcessInboxHandler, process_job};
use waypost_jobs::{Registry, Worker, WorkerConfig};
use waypost_store::{
    IncomingWebhook, JobState, LANE_TRANSACTIONAL, NewOutboundMessage, SendOutcome, Store,
    testkit::test_databases,
};

const CUSTOMERS: usize = 8;
const MESSAGES: usize = 1_500;
const OUTBOUND: usize = 400;

fn envelope(value: Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": value}]}]}),
    )
    .unwrap()
}

fn metadata() -> Value {
    json!({"display_phone_number": "15550783881", "phone_number_id": "106540352242922"})
}

/// Customers in a scrambled order, so batches meet them in different orders (as real
/// traffic does).
fn customer(n: usize) -> String {
    let scrambled = n.wrapping_mul(2_654_435_761) >> 7;
    format!("1650555{:04}", scrambled % CUSTOMERS)
}

fn inbound(n: usize) -> Vec<u8> {
    let from = customer(n);
    envelope(
        json!({"messaging_product": "whatsapp", "metadata": metadata(),
        "contacts": [{"profile": {"name": format!("Customer {from}")}, "wa_id": from}],
        "messages": [{"from": from, "id": format!("wamid.IN{n}"), "timestamp": "1749416383",
            "type": "text", "text": {"body": format!("message {n}")}}]}),
    )
}

fn status(n: usize, status: &str) -> Vec<u8> {
    envelope(
        json!({"messaging_product": "whatsapp", "metadata": metadata(),
        "statuses": [{"id": format!("wamid.OUT{n}"), "status": status, "timestamp": "1749416390",
            "recipient_id": customer(n)}]}),
    )
}

/// Outbound messages as the API queues them, not yet sent (no provider id).
async fn queued_messages(store: &Store, tenant: TenantId, channel: ChannelId) -> Vec<MessageId> {
    let mut tx = store.tenant(tenant).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..OUTBOUND {
        let contact = tx
            .upsert_contact(&waypost_store::ContactIdentity {
                wa_id: Some(customer(n)),
                ..Default::default()
            })
            .await
            .unwrap();
        let conversation = tx.touch_conversation(channel, contact, None).await.unwrap();
        let content = json!({"type": "text", "text": {"body": "hi"}});
        let id = tx
            .insert_outbound_message(NewOutboundMessage {
                channel_id: channel,
                conversation_id: conversation,
                recipient: format!("+{}", customer(n)),
                kind: "text".into(),
                content: content.clone(),
                payload: content,
                reply_to: None,
                category: "service".into(),
                lane: LANE_TRANSACTIONAL,
                idempotency: None,
            })
            .await
            .unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    ids
}

/// Stores webhooks as the API's group commit does: several bodies per commit, their
/// processing jobs in the same transaction.
async fn ingest(store: &Store, tenant: TenantId, channel: ChannelId, bodies: &[Vec<u8>]) {
    for chunk in bodies.chunks(64) {
        let webhooks: Vec<_> = chunk
            .iter()
            .map(|body| IncomingWebhook {
                tenant,
                channel,
                provider: "meta",
                body,
            })
            .collect();
        store
            .ingest_webhooks(&webhooks, |ids| {
                ids.chunks(32).map(|c| process_job(c.to_vec())).collect()
            })
            .await
            .unwrap();
    }
}

/// The dispatcher's side: send outcomes recorded in batches, in an order of their own.
async fn record_outcomes(store: Store, tenant: TenantId, ids: Vec<MessageId>) {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.reverse();
    for batch in order.chunks(50) {
        let outcomes: Vec<_> = batch
            .iter()
            .map(|&n| {
                let accepted = SendOutcome::Accepted {
                    provider_message_id: format!("wamid.OUT{n}"),
                };
                (ids[n], accepted)
            })
            .collect();
        let mut tx = store.tenant(tenant).await.unwrap();
        tx.record_send_outcomes(&outcomes).await.unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn returning_customers_and_racing_statuses_process_without_deadlocks() {
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, channel) = crate::channel(&store).await;
        let outbound = queued_messages(&store, tenant, channel).await;
        let worker = Worker::new(
            store.clone(),
            Registry::new().register(PROCESS_KIND, ProcessInboxHandler),
            WorkerConfig {
                concurrency: 8,
                poll_interval: Duration::from_millis(10),
                ..WorkerConfig::default()
            },
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(worker.run(shutdown.clone()));

        let mut bodies: Vec<Vec<u8>> = (0..MESSAGES).map(inbound).collect();
        for step in ["sent", "delivered", "read"] {
            bodies.extend((0..OUTBOUND).map(|n| status(n, step)));
        }
        let started = Instant::now();
        let outcomes = tokio::spawn(record_outcomes(store.clone(), tenant, outbound.clone()));
        ingest(&store, tenant, channel, &bodies).await;
        outcomes.await.unwrap();

        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pending = store.list_jobs(Some(JobState::Pending), 10).await.unwrap();
            if pending.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: still processing after 60 s",
                db.flavor
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        running.await.unwrap().unwrap();

        // Nothing retried (a deadlock or a lock timeout would have been), nothing dead.
        let done = store.list_jobs(None, 10_000).await.unwrap();
        let troubled: Vec<_> = done
            .iter()
            .filter(|j| j.attempts > 1 || j.state != JobState::Done)
            .map(|j| (j.state, j.attempts, j.last_error.clone()))
            .collect();
        assert!(troubled.is_empty(), "{:?}: {troubled:?}", db.flavor);

        let mut tx = store.tenant_read(tenant).await.unwrap();
        let conversations = tx.list_conversations(200, None).await.unwrap().data;
        assert_eq!(conversations.len(), CUSTOMERS, "{:?}", db.flavor);
        let mut inbound_count = 0;
        for conversation in &conversations {
            let mut cursor = None;
            loop {
                let page = tx
                    .list_messages(conversation.id, 200, cursor)
                    .await
                    .unwrap();
                inbound_count += page
                    .data
                    .iter()
                    .filter(|m| m.direction == "inbound")
                    .count();
                match page.next_cursor {
                    Some(next) => cursor = Some(waypost_core::Cursor::decode(&next).unwrap()),
                    None => break,
                }
            }
        }
        assert_eq!(
            inbound_count, MESSAGES,
            "{:?}: every message once",
            db.flavor
        );
        for id in &outbound {
            let message = tx.get_message(*id).await.unwrap();
            assert_eq!(
                message.status.as_deref(),
                Some("read"),
                "{:?}: {message:?}",
                db.flavor
            );
        }
        eprintln!(
            "{:?}: {} webhooks processed in {:.1} s",
            db.flavor,
            bodies.len(),
            started.elapsed().as_secs_f64()
        );
    }
}
