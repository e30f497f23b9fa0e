//! In-process processing throughput (a baseline beside the end-to-end bench): a backlog of
//! stored webhooks — 25 % messages from returning customers, 75 % statuses of sent messages —
//! drained by the job runtime's workers, per engine.
//!
//! `cargo bench -p waypost-inbound --bench processing`
//! (BENCH_WEBHOOKS=40000 BENCH_CONTACTS=5000 BENCH_BATCH=32 BENCH_CONCURRENCY=8;
//! WAYPOST_TEST_DATABASE_URL for PostgreSQL)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use waypost_core::{ChannelId, MessageId, TenantId};
use waypost_inbound::{PROCESS_KIND, ProcessInboxHandler, process_job};
use waypost_jobs::{Registry, Worker, WorkerConfig};
use waypost_store::{
    ContactIdentity, IncomingWebhook, JobState, LANE_TRANSACTIONAL, NewChannel, NewOutboundMessage,
    SendOutcome, Store,
    testkit::{meta_channel, test_databases},
};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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

fn wa_id(n: usize, contacts: usize) -> String {
    format!("1650{:07}", (n.wrapping_mul(2_654_435_761) >> 7) % contacts)
}

fn message(n: usize, contacts: usize) -> Vec<u8> {
    let from = wa_id(n, contacts);
    envelope(
        json!({"messaging_product": "whatsapp", "metadata": metadata(),
        "contacts": [{"profile": {"name": format!("Customer {from}")}, "wa_id": from}],
        "messages": [{"from": from, "id": format!("wamid.IN{n}"), "timestamp": "1749416383",
            "type": "text", "text": {"body": format!("message {n}")}}]}),
    )
}

fn status(n: usize, step: &str, contacts: usize) -> Vec<u8> {
    envelope(
        json!({"messaging_product": "whatsapp", "metadata": metadata(),
        "statuses": [{"id": format!("wamid.OUT{n}"), "status": step, "timestamp": "1749416390",
            "recipient_id": wa_id(n, contacts)}]}),
    )
}

async fn setup(store: &Store, contacts: usize, outbound: usize) -> (TenantId, ChannelId) {
    let mut tx = store.platform().await.unwrap();
    let tenant = tx.create_tenant("Bench").await.unwrap().id;
    let (tx, channel) = tx
        .create_channel(
            tenant,
            NewChannel {
                waba_id: Some("102290129340398".into()),
                ..meta_channel("106540352242922")
            },
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.tenant(tenant).await.unwrap();
    let mut sent = Vec::new();
    for n in 0..outbound {
        let who = ContactIdentity {
            wa_id: Some(wa_id(n, contacts)),
            ..Default::default()
        };
        let contact = tx.upsert_contact(&who).await.unwrap();
        let conversation = tx
            .touch_conversation(channel.id, contact, None)
            .await
            .unwrap();
        let content = json!({"type": "text", "text": {"body": "hi"}});
        let id: MessageId = tx
            .insert_outbound_message(NewOutboundMessage {
                channel_id: channel.id,
                conversation_id: conversation,
                recipient: format!("+{}", wa_id(n, contacts)),
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
        let accepted = SendOutcome::Accepted {
            provider_message_id: format!("wamid.OUT{n}"),
        };
        sent.push((id, accepted));
    }
    tx.record_send_outcomes(&sent).await.unwrap();
    tx.commit().await.unwrap();
    (tenant, channel.id)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = env("BENCH_WEBHOOKS", 40_000);
    let contacts = env("BENCH_CONTACTS", 5_000);
    let batch = env("BENCH_BATCH", 32);
    let concurrency = env("BENCH_CONCURRENCY", 8);
    let outbound = total * 3 / 4 / 3;
    for db in test_databases().await {
        let store = db.store().await;
        let (tenant, channel) = setup(&store, contacts, outbound).await;
        let mut bodies: Vec<Vec<u8>> = (0..total / 4).map(|n| message(n, contacts)).collect();
        for step in ["sent", "delivered", "read"] {
            bodies.extend((0..outbound).map(|n| status(n, step, contacts)));
        }
        // Interleave as live traffic would arrive.
        let bodies: Vec<Vec<u8>> = (0..bodies.len())
            .map(|i| bodies[(i.wrapping_mul(7919)) % bodies.len()].clone())
            .collect();
        for chunk in bodies.chunks(512) {
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
                    ids.chunks(batch).map(|c| process_job(c.to_vec())).collect()
                })
                .await
                .unwrap();
        }
        let worker = Worker::new(
            store.clone(),
            Registry::new().register(PROCESS_KIND, ProcessInboxHandler),
            WorkerConfig {
                concurrency,
                poll_interval: Duration::from_millis(5),
                ..WorkerConfig::default()
            },
        );
        let shutdown = tokio_util::sync::CancellationToken::new();
        let started = Instant::now();
        let running = tokio::spawn(worker.run(shutdown.clone()));
        loop {
            if store
                .list_jobs(Some(JobState::Pending), 1)
                .await
                .unwrap()
                .is_empty()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        shutdown.cancel();
        running.await.unwrap().unwrap();
        println!(
            "{:?}: {} webhooks (batch {batch}, {concurrency} slots) processed in {elapsed:.2} s: {:.0}/s",
            db.flavor,
            bodies.len(),
            bodies.len() as f64 / elapsed
        );
    }
}
