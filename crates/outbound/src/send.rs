//! Queuing a message: every check that can refuse it runs first, then the message row and
//! its outbox row are written in the caller's transaction.

use serde::{Deserialize, Serialize};
use waypost_core::{ContactId, Error, ErrorCode, MessageId, PhoneNumber, Result, Timestamp};
use waypost_store::{Channel, ContactIdentity, MARKETING, NewOutboundMessage, TenantScope, Tx};

use crate::{message::OutboundContent, provider::supports, template};

/// What the outbox carries for one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxPayload {
    pub content: OutboundContent,
    /// The provider id of the message this replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// Who a message goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Phone(PhoneNumber),
    /// A WhatsApp id a contact already has (digits, as WhatsApp reported them): trusted even
    /// when no numbering plan knows it, because WhatsApp itself delivered from it.
    WaId(String),
    /// A business-scoped user id, e.g. `US.13491208655302741918`.
    Bsuid(String),
}

impl Recipient {
    /// `to` as given: a number in E.164 or a business-scoped user id; else the WhatsApp id of a
    /// contact the tenant already has.
    pub async fn resolve(tx: &mut Tx<TenantScope>, value: &str) -> Result<Self> {
        match Self::parse(value) {
            Ok(recipient) => Ok(recipient),
            Err(err) => {
                let digits = value.trim().trim_start_matches('+');
                if tx.contact_by_wa_id(digits).await?.is_some() {
                    Ok(Self::WaId(digits.to_string()))
                } else {
                    Err(err)
                }
            }
        }
    }

    /// A number in E.164 (`+15551234567`) or a business-scoped user id.
    pub fn parse(value: &str) -> Result<Self> {
        let value = value.trim();
        let bsuid = value.len() > 3
            && value.len() <= 160
            && value.as_bytes()[..2].iter().all(u8::is_ascii_uppercase)
            && value.as_bytes()[2] == b'.'
            && value[3..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.');
        if bsuid {
            return Ok(Self::Bsuid(value.to_string()));
        }
        PhoneNumber::parse(value).map(Self::Phone).map_err(|_| {
            Error::validation(
                "to must be a phone number in E.164 (+15551234567) or a business-scoped user id",
            )
        })
    }

    /// The address the provider gets.
    pub fn address(&self) -> String {
        match self {
            Self::Phone(p) => p.as_e164().to_string(),
            Self::WaId(digits) => format!("+{digits}"),
            Self::Bsuid(b) => b.clone(),
        }
    }

    fn identity(&self) -> ContactIdentity {
        match self {
            Self::Phone(p) => ContactIdentity {
                wa_id: Some(p.as_e164().trim_start_matches('+').to_string()),
                phone_e164: Some(p.as_e164().to_string()),
                ..Default::default()
            },
            Self::WaId(digits) => ContactIdentity {
                wa_id: Some(digits.clone()),
                phone_e164: Some(format!("+{digits}")),
                ..Default::default()
            },
            Self::Bsuid(b) => ContactIdentity {
                bsuid: Some(b.clone()),
                ..Default::default()
            },
        }
    }
}

pub struct QueueRequest {
    pub recipient: Recipient,
    pub content: OutboundContent,
    pub reply_to: Option<String>,
    pub lane: i64,
    pub idempotency: Option<(String, String)>,
}

/// Records Meta's 131050 ("the user stopped marketing messages") as the contact's own
/// marketing opt-out, whether it came as a send's answer or in a status webhook.
pub async fn record_marketing_stop(
    tx: &mut Tx<TenantScope>,
    contact: ContactId,
    at: Timestamp,
) -> Result<()> {
    tx.record_consent(
        contact,
        MARKETING,
        "opt_out",
        "meta_signal",
        Some("error 131050: the user stopped marketing messages"),
        at,
    )
    .await
}

/// Checks a message against the window, consent and the template, then queues it in `tx`.
pub async fn queue(
    tx: &mut Tx<TenantScope>,
    channel: &Channel,
    request: QueueRequest,
) -> Result<MessageId> {
    request.content.validate()?;
    supports(&channel.provider, &request.content)?;
    let contact = tx.upsert_contact(&request.recipient.identity()).await?;
    let conversation = tx.touch_conversation(channel.id, contact, None).await?;
    let category = match &request.content {
        OutboundContent::Template { template: send } => {
            // Templates of BSPs without a template API (Twilio content SIDs, Gupshup ids)
            // are checked by the provider.
            if matches!(channel.provider.as_str(), "meta" | "360dialog") {
                let stored = tx
                    .find_template(channel.id, &send.name, &send.language.code)
                    .await?
                    .ok_or_else(|| {
                        Error::new(
                            ErrorCode::TemplateInvalid,
                            format!(
                                "template {} ({}) is not known on this channel; sync the channel's templates",
                                send.name, send.language.code
                            ),
                        )
                    })?;
                template::check_send(&stored, send)?;
                stored.category.to_ascii_lowercase()
            } else {
                "utility".into()
            }
        }
        _ => "service".into(),
    };
    if request.content.needs_open_window() {
        let open = tx
            .conversation_window(conversation)
            .await?
            .is_some_and(|until| until > Timestamp::now());
        if !open {
            return Err(Error::new(
                ErrorCode::WindowClosed,
                "the contact has not written in the last 24 hours, so only a template can be sent \
                 (send type template)",
            ));
        }
    }
    if category == MARKETING && tx.get_contact(contact).await?.marketing_consent == "opted_out" {
        return Err(Error::new(
            ErrorCode::ContactOptedOut,
            "the contact opted out of marketing messages",
        ));
    }
    let payload = OutboxPayload {
        content: request.content,
        reply_to: request.reply_to.clone(),
    };
    tx.insert_outbound_message(NewOutboundMessage {
        channel_id: channel.id,
        conversation_id: conversation,
        recipient: request.recipient.address(),
        kind: payload.content.kind().to_string(),
        content: serde_json::to_value(&payload.content)
            .map_err(|e| Error::internal("serializing a message", e))?,
        payload: serde_json::to_value(&payload)
            .map_err(|e| Error::internal("serializing a message", e))?,
        reply_to: request.reply_to,
        category,
        lane: request.lane,
        idempotency: request.idempotency,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_numbers_or_business_scoped_ids() {
        assert_eq!(
            Recipient::parse("+1 650 555 1234").unwrap().address(),
            "+16505551234"
        );
        assert_eq!(
            Recipient::parse("US.13491208655302741918").unwrap(),
            Recipient::Bsuid("US.13491208655302741918".into())
        );
        assert!(Recipient::parse("hello").is_err());
        assert!(Recipient::parse("us.123").is_err());
    }
}
