//! Inbound processing: turns a stored webhook body into contacts, conversations, messages and
//! statuses. Runs as a job, so the webhook was acknowledged as soon as it was stored; every
//! write and the job's completion commit together, so a crash mid-way redoes the whole body
//! and retried or duplicated webhooks change nothing (messages deduplicate on the provider id,
//! statuses only move forward).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use waypost_core::{ContactId, Error, ErrorCode, InboxId, Timestamp};
use waypost_jobs::{Handler, JobContext, JobError};
use waypost_outbound::{OutboundContent, QueueRequest, Recipient};
use waypost_providers::{ChannelRef, InboundEvent, MessageContent, UserRef};
use waypost_store::{
    Channel, ConsentSettings, ContactIdentity, LANE_TRANSACTIONAL, NewJob, TenantScope, Tx,
};

mod batch;

pub const PROCESS_KIND: &str = "inbound.process";

/// The job payload: which inbox entries to process (ids only, never content).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessInbox {
    /// Jobs queued before batching carry one id here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<InboxId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbox_ids: Vec<InboxId>,
}

impl ProcessInbox {
    fn ids(&self) -> Vec<InboxId> {
        self.inbox_id
            .into_iter()
            .chain(self.inbox_ids.iter().copied())
            .collect()
    }
}

/// Webhooks processed per job at most. Large batches are what make processing cheap (a batch
/// costs a handful of statements and one commit whatever its size: measured in-process, 32 →
/// ~3,200/s, 512 → ~8,000/s on SQLite); a group commit under load holds up to 512 webhooks.
pub const PROCESS_BATCH: usize = 512;

/// The jobs that process webhooks just stored, to enqueue in the transaction that stored
/// them: one per `PROCESS_BATCH`, so a flood of statuses costs a job per batch, not per
/// webhook.
pub fn process_jobs(inbox_ids: &[InboxId]) -> Result<Vec<NewJob>, Error> {
    inbox_ids
        .chunks(PROCESS_BATCH)
        .map(|chunk| process_job(chunk.to_vec()))
        .collect()
}

/// The job that processes these stored webhooks.
pub fn process_job(inbox_ids: Vec<InboxId>) -> Result<NewJob, Error> {
    NewJob::new(
        PROCESS_KIND,
        ProcessInbox {
            inbox_id: None,
            inbox_ids,
        },
    )
}

/// What processing one body did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Processed {
    pub messages: u32,
    pub duplicates: u32,
    pub statuses: u32,
    pub other_events: u32,
    pub consent_changes: u32,
}

/// `opt_out` / `opt_in` when a text message is exactly one of the tenant's keywords (case and
/// whitespace ignored).
pub fn keyword_action(
    settings: &ConsentSettings,
    content: &MessageContent,
) -> Option<&'static str> {
    let MessageContent::Text { body } = content else {
        return None;
    };
    let normalize = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_uppercase()
    };
    let said = normalize(body);
    if said.is_empty() || said.len() > 64 {
        return None;
    }
    if settings
        .opt_out_keywords
        .iter()
        .any(|k| normalize(k) == said)
    {
        Some("opt_out")
    } else if settings
        .opt_in_keywords
        .iter()
        .any(|k| normalize(k) == said)
    {
        Some("opt_in")
    } else {
        None
    }
}

/// When something a webhook reports happened: the provider's time, but never later than we
/// received it. Provider clocks are untrusted (an unsigned body dated 2100 must not open the
/// 24-hour window for 75 years); a time slightly in the past is kept, so the window closes
/// 24 hours after the customer actually wrote.
fn reported_at(provider_ms: i64, received_at: Timestamp) -> Timestamp {
    Timestamp::from_millis(provider_ms).min(received_at)
}

/// Processes one inbox entry inside `tx` (which belongs to the entry's tenant); an entry
/// already processed does nothing.
pub async fn process(tx: &mut Tx<TenantScope>, inbox_id: InboxId) -> Result<Processed, Error> {
    process_batch(tx, &[inbox_id]).await
}

/// Processes stored webhooks together inside `tx` (of their tenant): those already processed
/// (a job run twice) are skipped.
pub async fn process_batch(
    tx: &mut Tx<TenantScope>,
    inbox_ids: &[InboxId],
) -> Result<Processed, Error> {
    let entries = tx.unprocessed_inbox(inbox_ids).await?;
    if entries.is_empty() {
        return Ok(Processed::default());
    }
    batch::write(tx, batch::Parsed::of(entries)?).await
}

/// Erases a contact and every copy of it (`Tx::delete_contact`). Webhooks that mention it and
/// still wait are processed first, inside the erasure: a body can speak for several people,
/// and the others keep their messages when the body is blanked. A body that cannot be read is
/// blanked like the rest (parsing fails before anything is written).
pub async fn erase_contact(tx: &mut Tx<TenantScope>, contact: ContactId) -> Result<(), Error> {
    for inbox_id in tx.unprocessed_inbox_mentioning(contact).await? {
        match process(tx, inbox_id).await {
            Ok(_) => {}
            Err(err) if err.code() == ErrorCode::ValidationFailed => {
                tracing::warn!(inbox = %inbox_id, error = %err, "an unreadable body is erased unprocessed");
            }
            Err(err) => return Err(err),
        }
    }
    tx.delete_contact(contact).await
}

/// A webhook may carry other numbers' and other accounts' changes (the platform app's come
/// whole to every channel they concern); each channel takes its own: changes of its number,
/// and account-wide updates of its WhatsApp Business Account.
fn belongs_to(channel: &Channel, event: &InboundEvent) -> bool {
    let of = event_channel(event);
    match (&of.phone_number_id, &channel.phone_number_id) {
        (Some(number), Some(ours)) => number == ours,
        (Some(_), None) => true,
        (None, _) => match (&of.waba_id, &channel.waba_id) {
            (Some(account), Some(ours)) => account == ours,
            _ => true,
        },
    }
}

fn event_channel(event: &InboundEvent) -> &ChannelRef {
    match event {
        InboundEvent::Message(m) => &m.channel,
        InboundEvent::Status(s) => &s.channel,
        InboundEvent::Template(t) => &t.channel,
        InboundEvent::UserPreference(p) => &p.channel,
        InboundEvent::Account { channel, .. }
        | InboundEvent::Errors { channel, .. }
        | InboundEvent::Unknown { channel, .. } => channel,
    }
}

fn identity(user: &UserRef) -> ContactIdentity {
    ContactIdentity {
        wa_id: user.wa_id.clone(),
        bsuid: user.bsuid.clone(),
        phone_e164: user
            .wa_id
            .as_ref()
            .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
            .map(|w| format!("+{w}")),
        profile_name: user.profile_name.clone(),
        username: user.username.clone(),
    }
}

/// The tenant's confirmation after a keyword changed consent, sent as a reply in the
/// window the keyword just opened. A channel that cannot send it is logged, not fatal.
async fn confirm(
    tx: &mut Tx<TenantScope>,
    channel: &Channel,
    to: &UserRef,
    reply: &str,
) -> Result<(), Error> {
    let recipient = match (&to.wa_id, &to.bsuid) {
        (Some(wa_id), _) => Ok(Recipient::WaId(wa_id.clone())),
        (None, Some(bsuid)) => Recipient::parse(bsuid),
        (None, None) => return Ok(()),
    };
    let queued = match recipient {
        Ok(recipient) => {
            waypost_outbound::queue(
                tx,
                channel,
                QueueRequest {
                    recipient,
                    content: OutboundContent::text(reply),
                    reply_to: None,
                    lane: LANE_TRANSACTIONAL,
                    idempotency: None,
                },
            )
            .await
        }
        Err(err) => Err(err),
    };
    match queued {
        Ok(_) => Ok(()),
        Err(err) if matches!(err.code(), ErrorCode::Internal | ErrorCode::Unavailable) => Err(err),
        Err(err) => {
            tracing::warn!(channel = %channel.id, error = %err, "consent confirmation not sent");
            Ok(())
        }
    }
}

fn describe(event: &InboundEvent) -> (String, serde_json::Value) {
    let payload = serde_json::to_value(event).unwrap_or(serde_json::Value::Null);
    let kind = match event {
        InboundEvent::Template(t) => t.field.clone(),
        InboundEvent::UserPreference(_) => "user_preferences".into(),
        InboundEvent::Account { field, .. } | InboundEvent::Unknown { field, .. } => field.clone(),
        InboundEvent::Errors { .. } => "errors".into(),
        InboundEvent::Message(_) | InboundEvent::Status(_) => "other".into(),
    };
    (kind, payload)
}

/// The job handler.
pub struct ProcessInboxHandler;

#[async_trait]
impl Handler for ProcessInboxHandler {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let job: ProcessInbox = serde_json::from_value(ctx.job().payload.clone())
            .map_err(|e| JobError::Permanent(format!("bad payload: {e}")))?;
        let tenant = ctx
            .job()
            .tenant_id
            .ok_or_else(|| JobError::Permanent("inbound job without a tenant".into()))?;
        let ids = job.ids();
        // Read and parsed before the write transaction begins (on SQLite it holds the writer).
        let entries = ctx
            .store()
            .tenant_read(tenant)
            .await?
            .peek_unprocessed_inbox(&ids)
            .await?;
        let parsed = batch::Parsed::of(entries);
        let mut tx = ctx.store().tenant(tenant).await?;
        let written = match parsed {
            Ok(parsed) => batch::write(&mut tx, parsed).await,
            Err(err) => Err(err),
        };
        match written {
            Ok(processed) => {
                tracing::debug!(batch = ids.len(), ?processed, "webhooks processed");
                ctx.complete_with(tx).await?;
            }
            // One bad body must not hold the others back: the batch is split into one job
            // per webhook, so only the bad one fails (and is dead-lettered for a look).
            Err(err) if ids.len() > 1 && err.code() == ErrorCode::ValidationFailed => {
                drop(tx);
                tracing::warn!(error = %err, batch = ids.len(), "splitting a webhook batch");
                let mut tx = ctx.store().tenant(tenant).await?;
                let singles = ids
                    .iter()
                    .map(|id| process_job(vec![*id]))
                    .collect::<Result<Vec<_>, _>>()?;
                tx.enqueue_many(singles).await?;
                ctx.complete_with(tx).await?;
            }
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }
}
