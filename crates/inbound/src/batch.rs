//! A batch of stored webhooks processed together: parsed first, then written set-based in one
//! global lock order (contacts, conversations, messages, statuses), so concurrent batches and
//! the dispatcher never deadlock and a batch costs a handful of statements however large.
//! The rarer events (consent keywords and signals, templates, account notices) follow, one by
//! one, in the order they arrived.

use std::collections::HashMap;

use waypost_core::{ChannelId, ContactId, Error, ErrorCode, MessageId, Timestamp};
use waypost_providers::{
    InboundEvent, InboundMessage, StatusUpdate, UserPreference, bird, gupshup, meta, twilio,
};
use waypost_store::{
    Channel, ConsentSettings, ContactIdentity, InboxEntry, MARKETING, NewInboundMessage,
    StatusChange, StatusOutcome, TemplateChange, TenantScope, Tx,
};

use crate::{Processed, belongs_to, confirm, describe, identity, keyword_action, reported_at};

/// One event and the stored webhook it came in.
struct Item<'e, T> {
    entry: &'e InboxEntry,
    event: &'e T,
}

/// What a batch will write, by kind.
#[derive(Default)]
struct Plan<'e> {
    messages: Vec<Item<'e, InboundMessage>>,
    statuses: Vec<Item<'e, StatusUpdate>>,
    /// Everything else, in arrival order.
    others: Vec<Item<'e, InboundEvent>>,
}

fn unreadable(e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::ValidationFailed,
        format!("unreadable webhook body: {e}"),
    )
}

/// The events in a stored body, by its provider's wire format.
fn parse(entry: &InboxEntry) -> Result<Vec<InboundEvent>, Error> {
    match entry.provider.as_str() {
        "meta" | "360dialog" => meta::parse(&entry.body).map_err(unreadable),
        "twilio" => Ok(twilio::parse(&twilio::form_pairs(&entry.body))),
        "gupshup" => gupshup::parse(&entry.body).map_err(unreadable),
        "bird" => bird::parse(&entry.body).map_err(unreadable),
        other => Err(Error::new(
            ErrorCode::ValidationFailed,
            format!("no parser for provider {other}"),
        )),
    }
}

/// Stored webhooks and their events, parsed before any write: on SQLite, parsing outside the
/// write transaction keeps the one writer free for acknowledgements.
pub(crate) struct Parsed {
    entries: Vec<(InboxEntry, Vec<InboundEvent>)>,
}

impl Parsed {
    pub(crate) fn of(entries: Vec<InboxEntry>) -> Result<Self, Error> {
        let entries = entries
            .into_iter()
            .map(|entry| {
                let events = parse(&entry)?;
                Ok((entry, events))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self { entries })
    }

    /// Keeps only the entries still unprocessed (another run of the job may have done some).
    fn retain(&mut self, unprocessed: &[InboxEntry]) {
        self.entries
            .retain(|(entry, _)| unprocessed.iter().any(|u| u.id == entry.id));
    }
}

impl<'e> Plan<'e> {
    fn of(parsed: &'e Parsed, channels: &HashMap<ChannelId, Channel>) -> Result<Self, Error> {
        let mut plan = Plan::default();
        for (entry, events) in &parsed.entries {
            let channel = channels
                .get(&entry.channel_id)
                .ok_or_else(|| Error::internal("planning a batch", "a channel is missing"))?;
            for event in events {
                if !belongs_to(channel, event) {
                    continue;
                }
                match event {
                    InboundEvent::Message(event) => plan.messages.push(Item { entry, event }),
                    InboundEvent::Status(event) => plan.statuses.push(Item { entry, event }),
                    event => plan.others.push(Item { entry, event }),
                }
            }
        }
        Ok(plan)
    }

    /// Everyone this batch may write to: senders, customers who stopped marketing (131050),
    /// and those whose marketing preference Meta reported.
    fn identities(&self) -> Vec<ContactIdentity> {
        let senders = self.messages.iter().map(|m| identity(&m.event.from));
        let stopped = self
            .statuses
            .iter()
            .filter(|s| opted_out_by(s.event))
            .map(|s| identity(&s.event.recipient));
        let preferring = self.others.iter().filter_map(|o| match o.event {
            InboundEvent::UserPreference(p) if preference_action(p).is_some() => {
                Some(identity(&p.user))
            }
            _ => None,
        });
        senders.chain(stopped).chain(preferring).collect()
    }
}

/// 131050: the user stopped marketing messages; recorded as their choice.
fn opted_out_by(status: &StatusUpdate) -> bool {
    status.errors.iter().any(|e| e.code == Some(131_050)) && status.recipient.is_identified()
}

/// Meta's marketing preference signal: the user stopped or resumed marketing.
fn preference_action(pref: &UserPreference) -> Option<&'static str> {
    if !pref.user.is_identified() {
        return None;
    }
    match pref.value.as_deref() {
        Some("stop") => Some("opt_out"),
        Some("resume") => Some("opt_in"),
        _ => None,
    }
}

/// Who each identity is, after the batch's contacts were written.
struct Contacts(HashMap<ContactKey, ContactId>);

#[derive(PartialEq, Eq, Hash)]
struct ContactKey(Option<String>, Option<String>);

impl Contacts {
    async fn upsert(tx: &mut Tx<TenantScope>, who: Vec<ContactIdentity>) -> Result<Self, Error> {
        let ids = tx.upsert_contacts(&who).await?;
        Ok(Self(
            who.into_iter()
                .map(|w| ContactKey(w.wa_id, w.bsuid))
                .zip(ids)
                .collect(),
        ))
    }

    fn of(&self, who: &ContactIdentity) -> Result<ContactId, Error> {
        self.0
            .get(&ContactKey(who.wa_id.clone(), who.bsuid.clone()))
            .copied()
            .ok_or_else(|| Error::internal("a batch's contacts", "an identity is missing"))
    }
}

/// Writes what `parsed` holds in `tx`, for the entries still unprocessed (locked on
/// PostgreSQL), and marks them processed.
pub(crate) async fn write(
    tx: &mut Tx<TenantScope>,
    mut parsed: Parsed,
) -> Result<Processed, Error> {
    let ids: Vec<_> = parsed.entries.iter().map(|(e, _)| e.id).collect();
    let unprocessed = tx.unprocessed_inbox(&ids).await?;
    parsed.retain(&unprocessed);
    if parsed.entries.is_empty() {
        return Ok(Processed::default());
    }
    let mut channels = HashMap::new();
    for (entry, _) in &parsed.entries {
        if let std::collections::hash_map::Entry::Vacant(slot) = channels.entry(entry.channel_id) {
            slot.insert(tx.get_channel(entry.channel_id).await?);
        }
    }
    let plan = Plan::of(&parsed, &channels)?;
    let consent = tx.consent_settings().await?;
    let contacts = Contacts::upsert(tx, plan.identities()).await?;
    let mut done = Processed::default();
    let inserted = store_messages(tx, &plan, &contacts).await?;
    for (item, inserted) in plan.messages.iter().zip(inserted) {
        match inserted {
            Some(_) => {
                done.messages += 1;
                let contact = contacts.of(&identity(&item.event.from))?;
                let channel = &channels[&item.entry.channel_id];
                done.consent_changes += keyword(tx, &consent, channel, item, contact).await?;
            }
            None => done.duplicates += 1,
        }
    }
    apply_statuses(tx, &plan, &contacts).await?;
    done.statuses += u32::try_from(plan.statuses.len()).unwrap_or(u32::MAX);
    for item in &plan.others {
        done.consent_changes += other_event(tx, item, &contacts).await?;
        done.other_events += 1;
    }
    let ids: Vec<_> = parsed.entries.iter().map(|(e, _)| e.id).collect();
    tx.mark_inbox_processed(&ids).await?;
    Ok(done)
}

/// Conversations opened or extended, then the messages; each message's id, `None` for a
/// duplicate.
async fn store_messages(
    tx: &mut Tx<TenantScope>,
    plan: &Plan<'_>,
    contacts: &Contacts,
) -> Result<Vec<Option<MessageId>>, Error> {
    let mut touches = Vec::with_capacity(plan.messages.len());
    for item in &plan.messages {
        let contact = contacts.of(&identity(&item.event.from))?;
        touches.push((
            item.entry.channel_id,
            contact,
            sent_at(item).unwrap_or(item.entry.received_at),
        ));
    }
    let conversations = tx.touch_conversations(&touches).await?;
    let mut messages = Vec::with_capacity(plan.messages.len());
    for (item, conversation) in plan.messages.iter().zip(conversations) {
        let m = item.event;
        messages.push(NewInboundMessage {
            conversation_id: conversation,
            provider_message_id: m.provider_message_id.clone(),
            kind: m.content.kind().to_string(),
            content: serde_json::to_value(&m.content)
                .map_err(|e| Error::internal("serializing a message", e))?,
            referral: m
                .referral
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(|e| Error::internal("serializing a referral", e))?,
            reply_to: m.context.as_ref().and_then(|c| c.message_id.clone()),
            sent_at: sent_at(item),
        });
    }
    tx.insert_inbound_messages(&messages).await
}

fn sent_at(item: &Item<'_, InboundMessage>) -> Option<Timestamp> {
    item.event
        .sent_at_ms
        .map(|ms| reported_at(ms, item.entry.received_at))
}

/// A message that is exactly a consent keyword records the choice (and the tenant's
/// confirmation, if set); how many consent changes it made.
async fn keyword(
    tx: &mut Tx<TenantScope>,
    consent: &ConsentSettings,
    channel: &Channel,
    item: &Item<'_, InboundMessage>,
    contact: ContactId,
) -> Result<u32, Error> {
    let Some(action) = keyword_action(consent, &item.event.content) else {
        return Ok(0);
    };
    let at = sent_at(item).unwrap_or(item.entry.received_at);
    tx.record_consent(contact, MARKETING, action, "keyword", None, at)
        .await?;
    if let Some(reply) = &consent.confirmation_reply {
        confirm(tx, channel, &item.event.from, reply).await?;
    }
    Ok(1)
}

/// Statuses applied set-based; then what some of them mean besides: a 131050 opt-out, or an
/// echo of our own id settling a send whose answer we never got.
async fn apply_statuses(
    tx: &mut Tx<TenantScope>,
    plan: &Plan<'_>,
    contacts: &Contacts,
) -> Result<(), Error> {
    let (mut items, mut changes) = (Vec::new(), Vec::new());
    let mut kept = Vec::new();
    for item in &plan.statuses {
        match status_change(item) {
            Some(change) => {
                items.push(item);
                changes.push(change);
            }
            // A status outside sent < delivered < read < played < failed is kept, not applied.
            None => kept.push(item),
        }
    }
    for item in kept {
        let payload = serde_json::to_value(item.event)
            .map_err(|e| Error::internal("serializing a status", e))?;
        tx.record_channel_event(item.entry.channel_id, "status", &payload)
            .await?;
    }
    let outcomes = tx.apply_statuses(&changes).await?;
    for (item, outcome) in items.into_iter().zip(outcomes) {
        let status = item.event;
        if opted_out_by(status) {
            let contact = contacts.of(&identity(&status.recipient))?;
            let at = status.at_ms.map_or(item.entry.received_at, |ms| {
                reported_at(ms, item.entry.received_at)
            });
            waypost_outbound::send::record_marketing_stop(tx, contact, at).await?;
        }
        if outcome == StatusOutcome::Pending
            && let Some(id) = status
                .biz_opaque_callback_data
                .as_deref()
                .and_then(|d| d.parse::<MessageId>().ok())
        {
            tx.reconcile_outbound(id, &status.provider_message_id)
                .await?;
        }
    }
    Ok(())
}

/// A status in the store's terms (the first error explained, as for a refused send); `None`
/// for a status with no place in the forward order.
fn status_change(item: &Item<'_, StatusUpdate>) -> Option<StatusChange> {
    let status = item.event;
    let rank = status.status.rank()?;
    let provider = item.entry.provider.as_str();
    let name = serde_json::to_value(&status.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let error = status.errors.first().map(|first| {
        serde_json::json!({
            "provider": provider,
            "code": first.code,
            "message": first.details.clone().or_else(|| first.message.clone()),
            "explanation": waypost_outbound::provider::explain(provider, first.code),
            "errors": status.errors,
        })
    });
    Some(StatusChange {
        provider_message_id: status.provider_message_id.clone(),
        status: name,
        rank: i64::from(rank),
        at: status
            .at_ms
            .map(|ms| reported_at(ms, item.entry.received_at)),
        error,
    })
}

/// Preferences, template updates, account notices and the unknown: kept as channel events,
/// with what they change; how many consent changes it made.
async fn other_event(
    tx: &mut Tx<TenantScope>,
    item: &Item<'_, InboundEvent>,
    contacts: &Contacts,
) -> Result<u32, Error> {
    let channel = item.entry.channel_id;
    match item.event {
        InboundEvent::UserPreference(pref) => {
            let payload = serde_json::to_value(pref)
                .map_err(|e| Error::internal("serializing a preference", e))?;
            tx.record_channel_event(channel, "user_preferences", &payload)
                .await?;
            let Some(action) = preference_action(pref) else {
                return Ok(0);
            };
            let contact = contacts.of(&identity(&pref.user))?;
            let at = pref.at_ms.map_or(item.entry.received_at, |ms| {
                reported_at(ms, item.entry.received_at)
            });
            tx.record_consent(
                contact,
                MARKETING,
                action,
                "meta_signal",
                pref.category.as_deref(),
                at,
            )
            .await?;
            Ok(1)
        }
        InboundEvent::Template(update) => {
            // Status, quality and category changes update the stored template; the notice
            // itself is kept too.
            tx.apply_template_change(
                channel,
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
            let (kind, payload) = describe(item.event);
            tx.record_channel_event(channel, &kind, &payload).await?;
            Ok(0)
        }
        other => {
            let (kind, payload) = describe(other);
            tx.record_channel_event(channel, &kind, &payload).await?;
            Ok(0)
        }
    }
}
