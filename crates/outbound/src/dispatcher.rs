//! The dispatcher: one sender per channel across every process sharing the database.
//!
//! Each process renews and takes channel leases (`channel_directory.dispatch_owner`). The
//! holder of a channel's lease alone claims its outbox rows, so its in-memory token buckets
//! (the number's throughput and the pair rate per recipient) are the only ones that count.
//! A claim records the attempt before the provider is called; outcomes are committed in
//! small batches by a writer task. A process that dies leaves `in_flight` rows behind: the
//! next holder reports them `unknown` instead of sending them again.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::json;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use waypost_core::{ChannelId, ErrorCode, MessageId, Result, Timestamp};
use waypost_store::{Channel, ChannelRoute, OutboxItem, SendOutcome, Store, TenantScope, Tx};
use waypost_vault::Vault;

use crate::{
    provider::{
        Attempt, ClientConfig, Credentials, Provider, ProviderFailure, ProviderHttp, Reaction,
        SendRequest, client_for, load_credentials, react,
    },
    send::{OutboxPayload, record_marketing_stop},
};

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// This process's lease owner id.
    pub owner: String,
    /// How long a channel lease lasts without renewal (another process takes over after).
    pub lease: Duration,
    pub renew_every: Duration,
    /// How often an idle channel looks for work sent by other processes.
    pub poll_interval: Duration,
    /// Concurrent provider calls per channel.
    pub max_in_flight: usize,
    /// Pair rate: one message per `pair_interval` to one recipient, bursts of `pair_burst`.
    pub pair_interval: Duration,
    pub pair_burst: u32,
    pub request_timeout: Duration,
    /// Transient failures are retried this many times, then the message fails.
    pub max_attempts: i64,
    /// An `unknown` outcome no status webhook reconciled becomes `failed` after this long.
    pub unknown_expiry: Duration,
    /// The server's public URL (Twilio status callbacks point there).
    pub public_base_url: String,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            owner: format!("dispatcher-{}", uuid::Uuid::now_v7().simple()),
            lease: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            poll_interval: Duration::from_millis(100),
            max_in_flight: 256,
            pair_interval: Duration::from_secs(6),
            pair_burst: 3,
            request_timeout: Duration::from_secs(30),
            max_attempts: 10,
            unknown_expiry: Duration::from_secs(15 * 60),
            public_base_url: "http://localhost:8080".into(),
        }
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    vault: Arc<Vault>,
    http: ProviderHttp,
    config: Arc<DispatcherConfig>,
    wake: Waker,
}

/// Wakes one channel's sender when a message is queued in this process, so it goes out at
/// once instead of at the sender's next poll. Other processes' senders find it by polling.
#[derive(Clone, Default)]
pub struct Waker {
    channels: Arc<Mutex<HashMap<ChannelId, Arc<Notify>>>>,
}

impl Waker {
    pub fn wake(&self, channel: ChannelId) {
        if let Some(notify) = self
            .channels
            .lock()
            .ok()
            .and_then(|m| m.get(&channel).cloned())
        {
            // A stored permit: a sender not waiting yet still sees it.
            notify.notify_one();
        }
    }

    fn register(&self, channel: ChannelId) -> Arc<Notify> {
        match self.channels.lock() {
            Ok(mut map) => map.entry(channel).or_default().clone(),
            Err(_) => Arc::new(Notify::new()),
        }
    }
}

/// Something the writer does besides recording an outcome.
#[derive(Debug, Clone)]
enum Effect {
    None,
    OptOut,
    SendState(&'static str, String),
}

struct Outcome {
    message: MessageId,
    outcome: SendOutcome,
    effect: Effect,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        vault: Arc<Vault>,
        http: ProviderHttp,
        config: DispatcherConfig,
    ) -> Self {
        Self {
            store,
            vault,
            http,
            config: Arc::new(config),
            wake: Waker::default(),
        }
    }

    /// Notified after a message is queued in this process, so it goes out without polling.
    pub fn waker(&self) -> Waker {
        self.wake.clone()
    }

    /// Holds leases and runs one sender per held channel until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut senders: HashMap<ChannelId, (CancellationToken, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        let mut tick = tokio::time::interval(self.config.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let leases = match self.renew_leases().await {
                Ok(leases) => leases,
                Err(err) => {
                    tracing::warn!(error = %err, "could not renew channel leases");
                    continue;
                }
            };
            let held: HashMap<ChannelId, ChannelRoute> =
                leases.iter().map(|l| (l.channel, *l)).collect();
            senders.retain(|channel, (token, handle)| {
                let keep = held.contains_key(channel) && !handle.is_finished();
                if !keep {
                    token.cancel();
                }
                keep
            });
            for (channel, route) in held {
                if senders.contains_key(&channel) {
                    continue;
                }
                let token = shutdown.child_token();
                let sender = ChannelSender::new(self.clone(), route);
                let handle = tokio::spawn(sender.run(token.clone()));
                senders.insert(channel, (token, handle));
            }
        }
        for (_, (token, handle)) in senders.drain() {
            token.cancel();
            let _ = handle.await;
        }
        let mut tx = self.store.platform().await?;
        tx.release_dispatch_leases(&self.config.owner).await?;
        tx.commit().await
    }

    async fn renew_leases(&self) -> Result<Vec<ChannelRoute>> {
        let mut tx = self.store.platform().await?;
        let until = Timestamp::now().plus(self.config.lease);
        let leases = tx
            .acquire_dispatch_leases(&self.config.owner, until)
            .await?;
        tx.commit().await?;
        Ok(leases)
    }
}

/// Shared between a channel's claim loop and its in-flight sends.
struct ChannelControl {
    /// No claims before this instant (130429 and friends hold the whole number).
    hold_until: Mutex<Option<Instant>>,
    /// Set when a send paused the channel or found its credentials invalid.
    stopped: AtomicBool,
}

impl ChannelControl {
    fn hold_for(&self, d: Duration) {
        if let Ok(mut hold) = self.hold_until.lock() {
            let until = Instant::now() + d;
            if hold.is_none_or(|h| h < until) {
                *hold = Some(until);
            }
        }
    }

    fn held_until(&self) -> Option<Instant> {
        self.hold_until
            .lock()
            .ok()
            .and_then(|h| *h)
            .filter(|h| *h > Instant::now())
    }
}

struct ChannelSender {
    dispatcher: Dispatcher,
    route: ChannelRoute,
    /// Unique per sender instance: rows it claimed and never finished are recognisable.
    attempt_owner: String,
}

type Limiter = DefaultDirectRateLimiter;

impl ChannelSender {
    fn new(dispatcher: Dispatcher, route: ChannelRoute) -> Self {
        let attempt_owner = format!(
            "{}#{}",
            dispatcher.config.owner,
            uuid::Uuid::now_v7().simple()
        );
        Self {
            dispatcher,
            route,
            attempt_owner,
        }
    }

    async fn run(self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            if let Err(err) = self.serve(&cancel).await {
                tracing::warn!(channel = %self.route.channel, error = %err, "channel sender failed; restarting");
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }

    async fn load(&self) -> Result<(Channel, Credentials)> {
        let mut tx = self.dispatcher.store.tenant_read(self.route.tenant).await?;
        let channel = tx.get_channel(self.route.channel).await?;
        let credentials = load_credentials(&mut tx, &self.dispatcher.vault, &channel).await?;
        Ok((channel, credentials))
    }

    /// Recovers what a previous holder left, then sends until cancelled or until the
    /// channel's settings need reloading.
    async fn serve(&self, cancel: &CancellationToken) -> Result<()> {
        {
            let mut tx = self.dispatcher.store.tenant(self.route.tenant).await?;
            let unknown = tx
                .recover_in_flight(self.route.channel, &self.attempt_owner)
                .await?;
            tx.commit().await?;
            if unknown > 0 {
                tracing::warn!(channel = %self.route.channel, unknown, "attempts of a stopped dispatcher are now unknown");
            }
        }
        let (outcomes, receiver) = mpsc::channel::<Outcome>(4096);
        let writer = tokio::spawn(write_outcomes(
            self.dispatcher.store.clone(),
            self.route,
            receiver,
        ));
        let result = self.send_loop(cancel, &outcomes).await;
        drop(outcomes);
        let _ = writer.await;
        result
    }

    async fn send_loop(
        &self,
        cancel: &CancellationToken,
        outcomes: &mpsc::Sender<Outcome>,
    ) -> Result<()> {
        let config = self.dispatcher.config.clone();
        let pair: Arc<DefaultKeyedRateLimiter<String>> = Arc::new(RateLimiter::keyed(
            Quota::with_period(config.pair_interval)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(config.pair_burst).unwrap_or(NonZeroU32::MIN)),
        ));
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
        let control = Arc::new(ChannelControl {
            hold_until: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        let mut paced: Option<(u32, Limiter)> = None;
        let wake = self.dispatcher.wake.register(self.route.channel);
        let mut idle = config.poll_interval;
        let mut last_expiry = Instant::now()
            .checked_sub(Duration::from_secs(3600))
            .unwrap_or_else(Instant::now);
        while !cancel.is_cancelled() {
            // Reload every few seconds: send state, credentials and throughput may change.
            let (channel, credentials) = self.load().await?;
            if channel.send_state != "active" {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            control.stopped.store(false, Ordering::Release);
            let provider: Arc<dyn Provider> = Arc::from(client_for(
                &channel,
                &credentials,
                ClientConfig {
                    http: self.dispatcher.http.clone(),
                    status_callback: Some(format!(
                        "{}/webhooks/twilio/{}",
                        config.public_base_url.trim_end_matches('/'),
                        channel.id
                    )),
                },
            )?);
            let mps = u32::try_from(channel.throughput_mps.max(1)).unwrap_or(80);
            // A tenth of a second of burst: a claim delayed by a busy database catches up,
            // and no one-second window ever carries more than 1.1 times the rate.
            let burst = NonZeroU32::new((mps / 10).max(1)).unwrap_or(NonZeroU32::MIN);
            // Kept across reloads: a fresh bucket would grant a fresh burst every time.
            if paced.as_ref().is_none_or(|(rate, _)| *rate != mps) {
                let quota = Quota::per_second(NonZeroU32::new(mps).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(burst);
                paced = Some((mps, RateLimiter::direct(quota)));
            }
            let Some((_, bucket)) = paced.as_ref() else {
                continue;
            };
            if last_expiry.elapsed() > Duration::from_secs(60) {
                let mut tx = self.dispatcher.store.tenant(self.route.tenant).await?;
                tx.expire_unknown(channel.id, Timestamp::now().minus(config.unknown_expiry))
                    .await?;
                tx.commit().await?;
                pair.retain_recent();
                last_expiry = Instant::now();
            }
            let reload_at = Instant::now() + Duration::from_secs(5);
            while Instant::now() < reload_at && !cancel.is_cancelled() {
                if control.stopped.load(Ordering::Acquire) {
                    break;
                }
                if let Some(until) = control.held_until() {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep_until(until.into()) => {}
                    }
                }
                // Tokens first, then the claim: every claimed row is called at once, so a
                // crash leaves only calls really in flight as `unknown`.
                let room = in_flight.available_permits().min(burst.get() as usize);
                if room == 0 {
                    let permit = in_flight.clone().acquire_owned().await;
                    drop(permit);
                    continue;
                }
                let wanted =
                    NonZeroU32::new(u32::try_from(room).unwrap_or(1)).unwrap_or(NonZeroU32::MIN);
                tokio::select! {
                    () = cancel.cancelled() => break,
                    ready = bucket.until_n_ready(wanted) => {
                        if ready.is_err() {
                            continue;
                        }
                    }
                }
                let items = {
                    let mut tx = self.dispatcher.store.tenant(self.route.tenant).await?;
                    let items = tx
                        .claim_outbox(
                            channel.id,
                            &config.owner,
                            &self.attempt_owner,
                            u32::try_from(room).unwrap_or(1),
                        )
                        .await?;
                    tx.commit().await?;
                    items
                };
                if items.is_empty() {
                    // An idle channel polls less and less often (up to once a second), so
                    // thousands of quiet channels cost little; a local send wakes it at once.
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = wake.notified() => idle = config.poll_interval,
                        () = tokio::time::sleep(idle) => idle = (idle * 2).min(MAX_IDLE_POLL),
                    }
                    continue;
                }
                idle = config.poll_interval;
                let mut items = items.into_iter();
                while let Some(item) = items.next() {
                    let hold = control.held_until();
                    let stopping = cancel.is_cancelled() || control.stopped.load(Ordering::Acquire);
                    if hold.is_some() || stopping {
                        // Not attempted: straight back to the queue.
                        let not_before = hold.map_or(Timestamp::now(), |h| {
                            Timestamp::now().plus(h.saturating_duration_since(Instant::now()))
                        });
                        for rest in std::iter::once(item).chain(items.by_ref()) {
                            requeue(outcomes, rest.message_id, not_before, "held").await;
                        }
                        break;
                    }
                    if let Err(not_until) = pair.check_key(&item.recipient) {
                        let wait = not_until.wait_time_from(governor::clock::Clock::now(
                            &governor::clock::DefaultClock::default(),
                        ));
                        requeue(
                            outcomes,
                            item.message_id,
                            Timestamp::now().plus(wait),
                            "paced for the pair rate",
                        )
                        .await;
                        continue;
                    }
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break;
                    };
                    let send = SendOne {
                        provider: provider.clone(),
                        control: control.clone(),
                        outcomes: outcomes.clone(),
                        timeout: config.request_timeout,
                        max_attempts: config.max_attempts,
                    };
                    tokio::spawn(async move {
                        send.run(item).await;
                        drop(permit);
                    });
                }
            }
        }
        // Let in-flight sends finish so their outcomes are recorded.
        let all = u32::try_from(config.max_in_flight).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(
            config.request_timeout + Duration::from_secs(1),
            in_flight.acquire_many(all),
        )
        .await;
        Ok(())
    }
}

async fn requeue(
    outcomes: &mpsc::Sender<Outcome>,
    message: MessageId,
    not_before: Timestamp,
    why: &str,
) {
    let _ = outcomes
        .send(Outcome {
            message,
            outcome: SendOutcome::Retry {
                not_before,
                error: json!({"code": "paced", "message": why}),
            },
            effect: Effect::None,
        })
        .await;
}

struct SendOne {
    provider: Arc<dyn Provider>,
    control: Arc<ChannelControl>,
    outcomes: mpsc::Sender<Outcome>,
    timeout: Duration,
    max_attempts: i64,
}

/// Exponential backoff with jitter for transient failures: 2, 4, 8 ... seconds, capped at
/// ten minutes.
fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(1, 10)).unwrap_or(1);
    let base = Duration::from_secs(2u64.pow(exp).min(600));
    let mut byte = [0u8; 1];
    let jitter = if getrandom::fill(&mut byte).is_ok() {
        f64::from(byte[0]) / 255.0 * 0.4 + 0.8
    } else {
        1.0
    };
    base.mul_f64(jitter)
}

impl SendOne {
    async fn run(self, item: OutboxItem) {
        let provider_name = self.provider.name();
        let (outcome, effect, result) =
            match serde_json::from_value::<OutboxPayload>(item.payload.clone()) {
                Err(err) => (
                    SendOutcome::Failed {
                        error: json!({"code": "invalid_payload", "message": err.to_string()}),
                    },
                    Effect::None,
                    "invalid",
                ),
                Ok(payload) => {
                    let callback = item.message_id.to_string();
                    let request = SendRequest {
                        recipient: &item.recipient,
                        content: &payload.content,
                        reply_to: payload.reply_to.as_deref(),
                        callback_data: &callback,
                    };
                    let attempt = tokio::time::timeout(self.timeout, self.provider.send(&request))
                        .await
                        .unwrap_or_else(|_| {
                            Attempt::Ambiguous("the provider did not answer in time".into())
                        });
                    self.decide(provider_name, &item, attempt)
                }
            };
        metrics::counter!("waypost_outbound_attempts_total", "provider" => provider_name, "result" => result)
            .increment(1);
        let _ = self
            .outcomes
            .send(Outcome {
                message: item.message_id,
                outcome,
                effect,
            })
            .await;
    }

    fn decide(
        &self,
        provider: &str,
        item: &OutboxItem,
        attempt: Attempt,
    ) -> (SendOutcome, Effect, &'static str) {
        let retry_later = |error: serde_json::Value| {
            if item.attempts >= self.max_attempts {
                SendOutcome::Failed { error }
            } else {
                SendOutcome::Retry {
                    not_before: Timestamp::now().plus(backoff(item.attempts)),
                    error,
                }
            }
        };
        match attempt {
            Attempt::Accepted(id) => (
                SendOutcome::Accepted {
                    provider_message_id: id,
                },
                Effect::None,
                "accepted",
            ),
            Attempt::NotSent(why) => (
                retry_later(json!({"code": "unreachable", "message": why})),
                Effect::None,
                "unreachable",
            ),
            // A channel pointed at an internal address fails its messages with the reason,
            // rather than retrying what the policy will keep refusing.
            Attempt::Refused(why) => (
                SendOutcome::Failed {
                    error: json!({"code": ErrorCode::EgressRefused, "message": why}),
                },
                Effect::None,
                "egress_refused",
            ),
            Attempt::Ambiguous(why) => (
                SendOutcome::Unknown {
                    error: json!({"code": "outcome_unknown", "message": why}),
                },
                Effect::None,
                "unknown",
            ),
            Attempt::Rejected(failure) => {
                let error = failure.to_json(provider);
                let now = Timestamp::now();
                match react(provider, &failure, item.attempts) {
                    Reaction::RetryChannel(d) => {
                        self.control.hold_for(d);
                        (
                            SendOutcome::Retry {
                                not_before: now.plus(d),
                                error,
                            },
                            Effect::None,
                            "throttled",
                        )
                    }
                    Reaction::RetryRecipient(d) => (
                        SendOutcome::Retry {
                            not_before: now.plus(d),
                            error,
                        },
                        Effect::None,
                        "pair_limited",
                    ),
                    Reaction::Retry => (retry_later(error), Effect::None, "retried"),
                    Reaction::Fail { opt_out } => (
                        SendOutcome::Failed { error },
                        if opt_out {
                            Effect::OptOut
                        } else {
                            Effect::None
                        },
                        "failed",
                    ),
                    Reaction::PauseChannel => self.stop_channel("paused", &failure, error),
                    Reaction::CredentialsInvalid => {
                        self.stop_channel("credentials_invalid", &failure, error)
                    }
                }
            }
        }
    }

    /// The message was not sent and stays queued; the channel stops until a person acts.
    fn stop_channel(
        &self,
        state: &'static str,
        failure: &ProviderFailure,
        error: serde_json::Value,
    ) -> (SendOutcome, Effect, &'static str) {
        self.control.stopped.store(true, Ordering::Release);
        (
            SendOutcome::Retry {
                not_before: Timestamp::now(),
                error,
            },
            Effect::SendState(state, failure.message.clone()),
            "channel_stopped",
        )
    }
}

/// The longest an idle channel waits before looking at its outbox again.
const MAX_IDLE_POLL: Duration = Duration::from_secs(1);

/// How long the outcome writer gathers before committing.
const OUTCOME_GATHER: Duration = Duration::from_millis(20);

/// Commits outcomes in small batches: one transaction per batch keeps up with 1,000
/// messages a second on one SQLite writer.
async fn write_outcomes(store: Store, route: ChannelRoute, mut receiver: mpsc::Receiver<Outcome>) {
    let mut batch = Vec::new();
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        // Gather for a moment: fewer, larger transactions leave the (SQLite) writer free
        // for the claims that pace the channel.
        let gather_until = tokio::time::Instant::now() + OUTCOME_GATHER;
        while batch.len() < 512 {
            match tokio::time::timeout_at(gather_until, receiver.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        // A database hiccup must not drop outcomes: retry until it commits.
        loop {
            match write_batch(&store, route, &batch).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "could not record send outcomes; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        batch.clear();
    }
}

async fn write_batch(store: &Store, route: ChannelRoute, batch: &[Outcome]) -> Result<()> {
    let mut tx = store.tenant(route.tenant).await?;
    let outcomes: Vec<(MessageId, SendOutcome)> = batch
        .iter()
        .map(|o| (o.message, o.outcome.clone()))
        .collect();
    tx.record_send_outcomes(&outcomes).await?;
    for o in batch {
        apply_effect(&mut tx, route.channel, o).await?;
    }
    tx.commit().await
}

async fn apply_effect(tx: &mut Tx<TenantScope>, channel: ChannelId, o: &Outcome) -> Result<()> {
    match &o.effect {
        Effect::None => Ok(()),
        Effect::OptOut => match tx.message_route(o.message).await {
            Ok((_, contact)) => record_marketing_stop(tx, contact, Timestamp::now()).await,
            // Erased meanwhile: there is no one left to record it for.
            Err(err) if err.code() == ErrorCode::NotFound => Ok(()),
            Err(err) => Err(err),
        },
        Effect::SendState(state, reason) => {
            tracing::error!(%channel, state, reason, "channel sending stopped; it needs attention");
            metrics::counter!("waypost_channel_alerts_total", "state" => *state).increment(1);
            tx.set_send_state(channel, state, Some(reason)).await?;
            tx.record_channel_event(
                channel,
                "send_state",
                &json!({"state": state, "reason": reason}),
            )
            .await
        }
    }
}
