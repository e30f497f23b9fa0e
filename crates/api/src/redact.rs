//! What masked callers (analysts, operators without an unmask) see of personal data.
//!
//! Every view that can carry personal data — a phone number, a name, a message body, a
//! provider's error text (which may echo either) — implements [`Redact`], and handlers pass
//! what they answer through [`Auth::shown`], the one place that decides by caller. Each
//! implementation takes its view apart without `..`: a field added to a view does not compile
//! until someone decides whether it is personal.

use serde_json::{Map, Value, json};
use waypost_core::Page;
use waypost_store::{AuditRecord, Channel, ConsentEvent, Contact, Conversation, StoredMessage};

use crate::auth::Auth;

/// A view as a masked caller may see it.
pub trait Redact {
    fn redact(self) -> Self;
}

impl Auth {
    /// `value` as this caller may see it: whole for those who see personal data, redacted for
    /// analysts and for operators who did not unmask with a reason.
    pub fn shown<T: Redact>(&self, value: T) -> T {
        if self.unmasked { value } else { value.redact() }
    }
}

/// Free text that may hold anything personal, replaced whole.
const HIDDEN: &str = "•••";

/// Keeps the last four characters of an identifier: enough to tell records apart.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    let keep = chars.len().min(4);
    format!(
        "{HIDDEN}{}",
        chars[chars.len() - keep..].iter().collect::<String>()
    )
}

fn mask_opt(value: Option<String>) -> Option<String> {
    value.as_deref().map(mask)
}

/// A name shows its first letter only.
fn initial(value: Option<String>) -> Option<String> {
    value.map(|n| n.chars().take(1).collect::<String>() + HIDDEN)
}

fn hide(value: Option<String>) -> Option<String> {
    value.map(|_| HIDDEN.to_string())
}

/// What a masked caller learns of a failure: whose code it was and our explanation, never the
/// provider's own words (which can quote the number or the message).
fn provider_error(error: Value) -> Value {
    let mut kept = Map::new();
    for key in ["provider", "code", "http_status", "explanation"] {
        if let Some(value) = error.get(key) {
            kept.insert(key.to_string(), value.clone());
        }
    }
    kept.insert("redacted".into(), Value::Bool(true));
    Value::Object(kept)
}

impl<T: Redact> Redact for Vec<T> {
    fn redact(self) -> Self {
        self.into_iter().map(Redact::redact).collect()
    }
}

impl<T: Redact> Redact for Page<T> {
    fn redact(self) -> Self {
        Page {
            data: self.data.redact(),
            next_cursor: self.next_cursor,
        }
    }
}

impl Redact for Contact {
    fn redact(self) -> Self {
        let Contact {
            id,
            phone,
            wa_id,
            bsuid,
            name,
            username,
            marketing_consent,
            created_at,
            updated_at,
        } = self;
        Contact {
            id,
            phone: mask_opt(phone),
            wa_id: mask_opt(wa_id),
            bsuid: mask_opt(bsuid),
            name: initial(name),
            username: hide(username),
            marketing_consent,
            created_at,
            updated_at,
        }
    }
}

impl Redact for ConsentEvent {
    fn redact(self) -> Self {
        let ConsentEvent {
            purpose,
            action,
            source,
            note,
            at,
        } = self;
        // Notes are free text (an agent's, or a provider's signal).
        ConsentEvent {
            purpose,
            action,
            source,
            note: hide(note),
            at,
        }
    }
}

impl Redact for Conversation {
    fn redact(self) -> Self {
        let Conversation {
            id,
            channel_id,
            contact_id,
            contact_name,
            contact_wa_id,
            contact_bsuid,
            last_inbound_at,
            window_expires_at,
            created_at,
        } = self;
        Conversation {
            id,
            channel_id,
            contact_id,
            contact_name: initial(contact_name),
            contact_wa_id: mask_opt(contact_wa_id),
            contact_bsuid: mask_opt(contact_bsuid),
            last_inbound_at,
            window_expires_at,
            created_at,
        }
    }
}

impl Redact for StoredMessage {
    fn redact(self) -> Self {
        let StoredMessage {
            id,
            conversation_id,
            direction,
            provider_message_id,
            recipient,
            category,
            kind,
            content: _,
            referral,
            reply_to,
            status,
            status_at,
            error,
            sent_at,
            created_at,
        } = self;
        StoredMessage {
            id,
            conversation_id,
            direction,
            // Meta's message ids encode the customer's number (base64 inside `wamid.`).
            provider_message_id: mask_opt(provider_message_id),
            recipient: mask_opt(recipient),
            category,
            content: json!({ "type": kind, "redacted": true }),
            kind,
            referral: referral.map(|_| json!({ "redacted": true })),
            reply_to: mask_opt(reply_to),
            status,
            status_at,
            error: error.map(provider_error),
            sent_at,
            created_at,
        }
    }
}

impl Redact for Channel {
    fn redact(self) -> Self {
        let Channel {
            id,
            provider,
            name,
            phone_number_id,
            waba_id,
            display_number,
            provider_account,
            throughput_mps,
            graph_api_base_url,
            graph_api_version,
            send_state,
            send_state_reason,
            verification,
            verification_reason,
            created_at,
        } = self;
        // The business's own number and settings are not personal data; the reason a
        // channel stopped is the provider's text about a send to some customer. The
        // verification is about the business's number only.
        Channel {
            id,
            provider,
            name,
            phone_number_id,
            waba_id,
            display_number,
            provider_account,
            throughput_mps,
            graph_api_base_url,
            graph_api_version,
            send_state,
            send_state_reason: hide(send_state_reason),
            verification,
            verification_reason,
            created_at,
        }
    }
}

impl Redact for AuditRecord {
    fn redact(self) -> Self {
        let AuditRecord {
            seq,
            id,
            occurred_at,
            actor_type,
            actor_id,
            action,
            target_type,
            target_id,
            reason,
            ip,
            user_agent,
            request_id,
            outcome,
            prev_hash,
            hash,
            key_id,
        } = self;
        // Records name their targets by id; an operator's reason is free text and may name
        // a customer.
        AuditRecord {
            seq,
            id,
            occurred_at,
            actor_type,
            actor_id,
            action,
            target_type,
            target_id,
            reason: hide(reason),
            ip,
            user_agent,
            request_id,
            outcome,
            prev_hash,
            hash,
            key_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_four() {
        assert_eq!(super::mask("+14155550100"), "•••0100");
        assert_eq!(super::mask("ab"), "•••ab");
    }

    #[test]
    fn provider_errors_keep_the_code_and_our_explanation_only() {
        let error = json!({"provider": "meta", "code": 131026, "http_status": 400,
            "message": "Undeliverable to +14155550100", "explanation": "Not on WhatsApp.",
            "errors": [{"details": "+14155550100"}]});
        assert_eq!(
            provider_error(error),
            json!({"provider": "meta", "code": 131026, "http_status": 400,
                "explanation": "Not on WhatsApp.", "redacted": true})
        );
    }
}
