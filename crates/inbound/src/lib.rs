//! Inbound processing: turns a stored webhook body into contacts, conversations, messages and
//! statuses. Runs as a job, so the webhook was acknowledged as soon as it was stored; every
//! write and the job's completion commit together, so a crash mid-way redoes the whole body
//! and retried or duplicated webhooks change nothing (messages deduplicate on the provider id,
//! statuses only move forward).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use waypost_core::{ContactId, Error, ErrorCode, InboxId, MessageId, Timestamp};
use waypost_jobs::{Handler, JobContext, JobError};
use waypost_outbound::{
    OutboundContent, QueueRequest, Recipient, provider::explain, send::record_marketing_stop,
};
use waypost_providers::{
    ChannelRef, InboundEvent, InboundMessage, MessageContent, StatusUpdate, UserRef, bird, gupshup,
    meta, twilio,
};
use waypost_store::{
    Channel, ConsentSettings, ContactIdentity, InboxEntry, LANE_TRANSACTIONAL, MARKETING,
    NewInboundMessage, NewJob, StatusChange, StatusOutcome, TemplateChange, TenantScope, Tx,
};

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

/// The job that processes stored webhooks, to enqueue in the transaction that stored them.
/// One job per group commit: a flood of status webhooks costs one job per batch, not one
/// per webhook.
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

/// Processes one inbox entry inside `tx` (which belongs to the entry's tenant).
pub async fn process(tx: &mut Tx<TenantScope>, inbox_id: InboxId) -> Result<Processed, Error> {
    let entry = tx.inbox_entry(inbox_id).await?;
    let mut done = Processed::default();
    if entry.processed_at.is_some() {
        return Ok(done);
    }
    let channel = tx.get_channel(entry.channel_id).await?;
    let consent = tx.consent_settings().await?;
    let events = match entry.provider.as_str() {
        "meta" | "360dialog" => meta::parse(&entry.body).map_err(|e| {
            Error::new(
                ErrorCode::ValidationFailed,
                format!("unreadable webhook body: {e}"),
            )
        })?,
        "twilio" => twilio::parse(&twilio::form_pairs(&entry.body)),
        "gupshup" => gupshup::parse(&entry.body).map_err(|e| {
            Error::new(
                ErrorCode::ValidationFailed,
                format!("unreadable webhook body: {e}"),
            )
        })?,
        "bird" => bird::parse(&entry.body).map_err(|e| {
            Error::new(
                ErrorCode::ValidationFailed,
                format!("unreadable webhook body: {e}"),
            )
        })?,
        other => {
            return Err(Error::new(
                ErrorCode::ValidationFailed,
                format!("no parser for provider {other}"),
            ));
        }
    };
    for event in events {
        if !belongs_to(&channel, &event) {
            continue;
        }
        match event {
            InboundEvent::Message(message) => {
                match store_message(tx, entry.channel_id, &message, entry.received_at).await? {
                    Some(contact) => {
                        done.messages += 1;
                        if let Some(action) = keyword_action(&consent, &message.content) {
                            let at = message
                                .sent_at_ms
                                .map_or(entry.received_at, |ms| reported_at(ms, entry.received_at));
                            tx.record_consent(contact, MARKETING, action, "keyword", None, at)
                                .await?;
                            done.consent_changes += 1;
                            if let Some(reply) = &consent.confirmation_reply {
                                confirm(tx, &channel, &message.from, reply).await?;
                            }
                        }
                    }
                    None => done.duplicates += 1,
                }
            }
            InboundEvent::UserPreference(pref) => {
                // Meta's marketing preference signal: the user stopped or resumed marketing.
                let action = match pref.value.as_deref() {
                    Some("stop") => Some("opt_out"),
                    Some("resume") => Some("opt_in"),
                    _ => None,
                };
                let payload = serde_json::to_value(&pref)
                    .map_err(|e| Error::internal("serializing a preference", e))?;
                tx.record_channel_event(entry.channel_id, "user_preferences", &payload)
                    .await?;
                if let (Some(action), true) = (action, pref.user.is_identified()) {
                    let contact = tx.upsert_contact(&identity(&pref.user)).await?;
                    let at = pref
                        .at_ms
                        .map_or(entry.received_at, |ms| reported_at(ms, entry.received_at));
                    tx.record_consent(
                        contact,
                        MARKETING,
                        action,
                        "meta_signal",
                        pref.category.as_deref(),
                        at,
                    )
                    .await?;
                    done.consent_changes += 1;
                }
                done.other_events += 1;
            }
            InboundEvent::Status(status) => {
                apply_status(tx, &entry, &status).await?;
                done.statuses += 1;
            }
            InboundEvent::Template(update) => {
                // Status, quality and category changes update the stored template; the
                // notice itself is kept too.
                tx.apply_template_change(
                    entry.channel_id,
                    &TemplateChange {
                        provider_template_id: update.template_id.clone(),
                        name: update.name.clone(),
                        language: update.language.clone(),
                        status: update.status.clone(),
                        quality: update.quality.clone(),
                        category: update.category.clone(),
                        reason: update.reason.clone(),
                    },
                )
                .await?;
                let (kind, payload) = describe(&InboundEvent::Template(update));
                tx.record_channel_event(entry.channel_id, &kind, &payload)
                    .await?;
                done.other_events += 1;
            }
            other => {
                let (kind, payload) = describe(&other);
                tx.record_channel_event(entry.channel_id, &kind, &payload)
                    .await?;
                done.other_events += 1;
            }
        }
    }
    tx.mark_processed(inbox_id).await?;
    Ok(done)
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

fn kind_of(content: &MessageContent) -> String {
    serde_json::to_value(content)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Stores a message; the contact's id when it was new, `None` for a duplicate.
async fn store_message(
    tx: &mut Tx<TenantScope>,
    channel: waypost_core::ChannelId,
    message: &InboundMessage,
    received_at: Timestamp,
) -> Result<Option<ContactId>, Error> {
    let contact = tx.upsert_contact(&identity(&message.from)).await?;
    let sent_at = message.sent_at_ms.map(|ms| reported_at(ms, received_at));
    let conversation = tx
        .touch_conversation(channel, contact, Some(sent_at.unwrap_or(received_at)))
        .await?;
    let content = serde_json::to_value(&message.content)
        .map_err(|e| Error::internal("serializing a message", e))?;
    let referral = message
        .referral
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| Error::internal("serializing a referral", e))?;
    let inserted = tx
        .insert_inbound_message(NewInboundMessage {
            conversation_id: conversation,
            provider_message_id: message.provider_message_id.clone(),
            kind: kind_of(&message.content),
            content,
            referral,
            reply_to: message.context.as_ref().and_then(|c| c.message_id.clone()),
            sent_at,
        })
        .await?;
    Ok(inserted.map(|_| contact))
}

async fn apply_status(
    tx: &mut Tx<TenantScope>,
    entry: &InboxEntry,
    status: &StatusUpdate,
) -> Result<(), Error> {
    let (channel, provider) = (entry.channel_id, entry.provider.as_str());
    let at = status.at_ms.map(|ms| reported_at(ms, entry.received_at));
    // A status outside sent < delivered < read < played < failed is kept, not applied.
    let Some(rank) = status.status.rank() else {
        let payload =
            serde_json::to_value(status).map_err(|e| Error::internal("serializing a status", e))?;
        return tx.record_channel_event(channel, "status", &payload).await;
    };
    let name = serde_json::to_value(&status.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    // 131050: the user stopped marketing messages; record it as their choice.
    if status.errors.iter().any(|e| e.code == Some(131_050)) && status.recipient.is_identified() {
        let contact = tx.upsert_contact(&identity(&status.recipient)).await?;
        record_marketing_stop(tx, contact, at.unwrap_or(entry.received_at)).await?;
    }
    // The same shape as a refused send: the first error, explained, and all of them.
    let error = status.errors.first().map(|first| {
        serde_json::json!({
            "provider": provider,
            "code": first.code,
            "message": first.details.clone().or_else(|| first.message.clone()),
            "explanation": explain(provider, first.code),
            "errors": status.errors,
        })
    });
    let outcome = tx
        .apply_status(&StatusChange {
            provider_message_id: status.provider_message_id.clone(),
            status: name,
            rank: i64::from(rank),
            at,
            error,
        })
        .await?;
    // A status for a message we know by no provider id may echo our own id: it settles an
    // attempt whose answer we never got (and applies the status just kept pending).
    if outcome == StatusOutcome::Pending
        && let Some(id) = status
            .biz_opaque_callback_data
            .as_deref()
            .and_then(|d| d.parse::<MessageId>().ok())
    {
        tx.reconcile_outbound(id, &status.provider_message_id)
            .await?;
    }
    Ok(())
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
        let mut tx = ctx.store().tenant(tenant).await?;
        let mut failure = None;
        for id in &ids {
            match process(&mut tx, *id).await {
                Ok(processed) => tracing::debug!(inbox = %id, ?processed, "webhook processed"),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        match failure {
            None => ctx.complete_with(tx).await?,
            // One bad body must not hold the others back: the batch is split into one job
            // per webhook, so only the bad one fails (and is dead-lettered for a look).
            Some(err) if ids.len() > 1 && err.code() == ErrorCode::ValidationFailed => {
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
            Some(err) => return Err(err.into()),
        }
        Ok(())
    }
}
