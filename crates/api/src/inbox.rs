//! Group commit for inbound webhooks. Each webhook must be durable before it is acknowledged,
//! but one transaction (one fsync) per webhook caps ingestion at a few thousand per second.
//! Requests hand their bodies to one writer task, which commits everything that queued up
//! while the previous commit ran in one transaction (whatever their tenants), then answers
//! them all. A webhook is still acknowledged only after its own commit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};
use waypost_core::{ChannelId, Error, ErrorCode};
use waypost_store::{ChannelRoute, IncomingWebhook, Store};

/// The most webhooks one commit takes.
const MAX_BATCH: usize = 512;

struct Pending {
    route: ChannelRoute,
    provider: &'static str,
    body: Bytes,
    done: oneshot::Sender<Result<(), (ErrorCode, String)>>,
}

#[derive(Clone)]
pub struct InboxWriter {
    queue: mpsc::Sender<Pending>,
}

impl InboxWriter {
    /// One writer, on both engines: while a commit runs the next batch gathers, so under load
    /// commits grow rather than multiply, and each commit is one round trip on PostgreSQL.
    /// (Measured: several writers splitting the load into smaller commits were slower.)
    pub fn start(store: Store) -> Self {
        let (queue, rx) = mpsc::channel(8 * MAX_BATCH);
        tokio::spawn(run(store, rx));
        Self { queue }
    }

    /// Returns once the body and its processing job are committed.
    pub async fn store(
        &self,
        route: ChannelRoute,
        provider: &'static str,
        body: Bytes,
    ) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                route,
                provider,
                body,
                done,
            })
            .await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "the inbox writer has stopped"))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((code, message))) => Err(Error::new(code, message)),
            Err(_) => Err(Error::new(
                ErrorCode::Unavailable,
                "the inbox writer has stopped",
            )),
        }
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        if write(&store, &batch).await.is_ok() {
            for item in batch {
                let _ = item.done.send(Ok(()));
            }
            continue;
        }
        // One bad body must not fail its neighbours: retry each in its own transaction.
        for item in batch {
            let result = write(&store, std::slice::from_ref(&item)).await;
            let _ = item
                .done
                .send(result.map_err(|e| (e.code(), e.public_message().to_string())));
        }
    }
}

async fn write(store: &Store, items: &[Pending]) -> Result<(), Error> {
    let webhooks: Vec<_> = items
        .iter()
        .map(|i| IncomingWebhook {
            tenant: i.route.tenant,
            channel: i.route.channel,
            provider: i.provider,
            body: &i.body,
        })
        .collect();
    store
        .ingest_webhooks(&webhooks, waypost_inbound::process_jobs)
        .await
}

/// Channel routes and webhook secrets, cached briefly so a flood of webhooks does not cost two
/// reads and a decryption each. A changed secret takes effect within the TTL.
struct Cached {
    route: ChannelRoute,
    secret: String,
    at: Instant,
}

#[derive(Clone, Default)]
pub struct ChannelSecrets {
    entries: Arc<Mutex<HashMap<(ChannelId, &'static str), Cached>>>,
}

pub const SECRET_TTL: Duration = Duration::from_secs(30);

impl ChannelSecrets {
    pub fn get(&self, channel: ChannelId, name: &'static str) -> Option<(ChannelRoute, String)> {
        let entries = self.entries.lock().ok()?;
        let cached = entries.get(&(channel, name))?;
        (cached.at.elapsed() < SECRET_TTL).then(|| (cached.route, cached.secret.clone()))
    }

    pub fn put(&self, channel: ChannelId, name: &'static str, route: ChannelRoute, secret: String) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(
                (channel, name),
                Cached {
                    route,
                    secret,
                    at: Instant::now(),
                },
            );
        }
    }
}
