//! Group commit for inbound webhooks. Each webhook must be durable before it is acknowledged,
//! but one transaction (one fsync) per webhook caps ingestion at a few thousand per second.
//! Requests hand their bodies to one writer task, which commits everything that queued up
//! while the previous commit ran in one transaction per tenant, then answers them all. A
//! webhook is still acknowledged only after its own commit.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::body::Bytes;
use tokio::sync::{mpsc, oneshot};
use waypost_core::{ChannelId, Error, ErrorCode, TenantId};
use waypost_store::{ChannelRoute, Engine, Store};

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
    queues: Arc<Vec<mpsc::Sender<Pending>>>,
    next: Arc<AtomicUsize>,
}

impl InboxWriter {
    /// One writer on SQLite (it has one writer connection anyway); on PostgreSQL several,
    /// whose commits proceed in parallel.
    pub fn start(store: Store) -> Self {
        let writers = match store.engine() {
            Engine::Sqlite => 1,
            Engine::Postgres => 4,
        };
        let queues = (0..writers)
            .map(|_| {
                let (queue, rx) = mpsc::channel(8 * MAX_BATCH);
                tokio::spawn(run(store.clone(), rx));
                queue
            })
            .collect();
        Self {
            queues: Arc::new(queues),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Returns once the body and its processing job are committed.
    pub async fn store(
        &self,
        route: ChannelRoute,
        provider: &'static str,
        body: Bytes,
    ) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        let queue = &self.queues[self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len()];
        queue
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
        let mut by_tenant: BTreeMap<TenantId, Vec<Pending>> = BTreeMap::new();
        for pending in batch {
            by_tenant
                .entry(pending.route.tenant)
                .or_default()
                .push(pending);
        }
        for (tenant, items) in by_tenant {
            if write(&store, tenant, &items).await.is_ok() {
                for item in items {
                    let _ = item.done.send(Ok(()));
                }
                continue;
            }
            // One bad body must not fail its neighbours: retry each in its own transaction.
            for item in items {
                let result = write(&store, tenant, std::slice::from_ref(&item)).await;
                let _ = item
                    .done
                    .send(result.map_err(|e| (e.code(), e.public_message().to_string())));
            }
        }
    }
}

/// Webhooks processed per `inbound.process` job.
const PROCESS_BATCH: usize = 32;

async fn write(store: &Store, tenant: TenantId, items: &[Pending]) -> Result<(), Error> {
    let mut tx = store.tenant(tenant).await?;
    let bodies: Vec<_> = items
        .iter()
        .map(|i| (i.route.channel, i.provider, i.body.as_ref()))
        .collect();
    let ids = tx.store_webhooks(&bodies).await?;
    // Small enough that processing one job never holds the (SQLite) writer for long, large
    // enough that a flood of statuses costs few jobs.
    let jobs = ids
        .chunks(PROCESS_BATCH)
        .map(|chunk| waypost_inbound::process_job(chunk.to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    tx.enqueue_many(jobs).await?;
    tx.commit().await
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
