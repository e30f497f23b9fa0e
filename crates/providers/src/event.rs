//! The normalized inbound event model, the same for every provider.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The latest instant a provider's timestamp may name, in epoch milliseconds: the end of year
/// 9999, the last one RFC 3339 can write. Webhook bodies are untrusted input; a later value
/// (or one before 1970) is noise, not a time, and is dropped rather than overflow arithmetic
/// downstream.
pub const MAX_EPOCH_MS: i64 = 253_402_300_799_999;

/// `ms` if it names a plausible instant (1970 to 9999).
pub fn plausible_epoch_ms(ms: i64) -> Option<i64> {
    (0..=MAX_EPOCH_MS).contains(&ms).then_some(ms)
}

/// Which of our channels an event arrived on, as the provider names it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelRef {
    /// Meta's phone number id (`metadata.phone_number_id`): routes an event to a channel.
    pub phone_number_id: Option<String>,
    pub display_phone_number: Option<String>,
    /// The WhatsApp Business Account id (`entry[].id`).
    pub waba_id: Option<String>,
}

/// A WhatsApp user. Any of the identifiers may be missing: users with a username may arrive
/// with a business-scoped user id (BSUID) and no phone number, and must still be kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserRef {
    /// Digits with country code, no `+`.
    pub wa_id: Option<String>,
    /// Business-scoped user id, e.g. `US.13491208655302741918`.
    pub bsuid: Option<String>,
    pub parent_bsuid: Option<String>,
    pub username: Option<String>,
    pub profile_name: Option<String>,
}

impl UserRef {
    /// Whether the user can be identified at all.
    pub fn is_identified(&self) -> bool {
        self.wa_id.is_some() || self.bsuid.is_some()
    }
}

/// Everything a provider can tell us.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum InboundEvent {
    Message(Box<InboundMessage>),
    Status(Box<StatusUpdate>),
    Template(TemplateUpdate),
    /// Marketing opt-out or opt-in signalled by the user to Meta (`user_preferences`).
    UserPreference(UserPreference),
    /// Account, number quality, name and capability updates, kept as sent.
    Account {
        channel: ChannelRef,
        field: String,
        value: Value,
    },
    /// Errors reported without a message (`value.errors[]`).
    Errors {
        channel: ChannelRef,
        errors: Vec<ProviderError>,
    },
    /// A webhook field this version does not know, kept whole.
    Unknown {
        channel: ChannelRef,
        field: String,
        value: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    pub channel: ChannelRef,
    /// The provider's message id (a `wamid.` for Meta): the deduplication key.
    pub provider_message_id: String,
    pub from: UserRef,
    /// When the user sent it, epoch milliseconds.
    pub sent_at_ms: Option<i64>,
    pub content: MessageContent,
    pub context: Option<ReplyContext>,
    /// Click-to-WhatsApp ad details, on the first message after an ad click.
    pub referral: Option<Referral>,
    /// The provider's message object as received.
    pub raw: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Media {
    pub id: Option<String>,
    pub url: Option<String>,
    pub mime_type: Option<String>,
    pub sha256: Option<String>,
    pub caption: Option<String>,
    pub filename: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedContact {
    pub formatted_name: Option<String>,
    pub phones: Vec<SharedPhone>,
    /// The whole card (emails, addresses, organisation, ...).
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedPhone {
    pub phone: Option<String>,
    pub wa_id: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_retailer_id: Option<String>,
    pub quantity: Option<f64>,
    pub item_price: Option<f64>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MessageContent {
    Text {
        body: String,
    },
    Image {
        media: Media,
    },
    Video {
        media: Media,
    },
    Audio {
        media: Media,
        voice: bool,
    },
    Document {
        media: Media,
    },
    Sticker {
        media: Media,
        animated: bool,
    },
    Location {
        latitude: Option<f64>,
        longitude: Option<f64>,
        name: Option<String>,
        address: Option<String>,
        url: Option<String>,
    },
    Contacts {
        contacts: Vec<SharedContact>,
    },
    ButtonReply {
        id: String,
        title: String,
    },
    ListReply {
        id: String,
        title: String,
        description: Option<String>,
    },
    /// A WhatsApp Flow's answer (`nfm_reply`); `response_json` is the flow's JSON text.
    FlowReply {
        name: Option<String>,
        body: Option<String>,
        response_json: Option<String>,
    },
    /// A template quick-reply button tap.
    TemplateButton {
        payload: Option<String>,
        text: Option<String>,
    },
    /// `emoji: None` means the reaction was removed.
    Reaction {
        message_id: String,
        emoji: Option<String>,
    },
    Order {
        catalog_id: Option<String>,
        text: Option<String>,
        items: Vec<OrderItem>,
    },
    /// Number changes, identity changes and other system notices.
    System {
        kind: Option<String>,
        body: Option<String>,
        new_wa_id: Option<String>,
        new_bsuid: Option<String>,
        previous_bsuid: Option<String>,
    },
    Edit {
        original_message_id: String,
        content: Box<MessageContent>,
    },
    Revoke {
        original_message_id: String,
    },
    /// WhatsApp says it could not deliver the content (e.g. polls); kept with its errors.
    Unsupported {
        kind: Option<String>,
        errors: Vec<ProviderError>,
    },
    /// A type this version does not know; the raw message is kept.
    Unknown {
        kind: String,
    },
}

impl MessageContent {
    /// The `type` this content is tagged with in JSON (`text`, `image`, ...), without
    /// serializing it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Image { .. } => "image",
            Self::Video { .. } => "video",
            Self::Audio { .. } => "audio",
            Self::Document { .. } => "document",
            Self::Sticker { .. } => "sticker",
            Self::Location { .. } => "location",
            Self::Contacts { .. } => "contacts",
            Self::ButtonReply { .. } => "button_reply",
            Self::ListReply { .. } => "list_reply",
            Self::FlowReply { .. } => "flow_reply",
            Self::TemplateButton { .. } => "template_button",
            Self::Reaction { .. } => "reaction",
            Self::Order { .. } => "order",
            Self::System { .. } => "system",
            Self::Edit { .. } => "edit",
            Self::Revoke { .. } => "revoke",
            Self::Unsupported { .. } => "unsupported",
            Self::Unknown { .. } => "unknown",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplyContext {
    /// The message replied to.
    pub message_id: Option<String>,
    pub from: Option<String>,
    pub forwarded: bool,
    pub frequently_forwarded: bool,
    pub referred_product: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Referral {
    pub source_url: Option<String>,
    pub source_id: Option<String>,
    pub source_type: Option<String>,
    pub headline: Option<String>,
    pub body: Option<String>,
    pub media_type: Option<String>,
    pub image_url: Option<String>,
    pub video_url: Option<String>,
    pub thumbnail_url: Option<String>,
    /// Meta's click id; absent for ads in WhatsApp Status.
    pub ctwa_clid: Option<String>,
    pub welcome_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    /// A voice message was played.
    Played,
    Failed,
    /// A status this version does not know (e.g. a BSP's `enqueued`).
    Other(String),
}

impl DeliveryStatus {
    pub fn parse(raw: &str) -> Self {
        match raw {
            "sent" => DeliveryStatus::Sent,
            "delivered" => DeliveryStatus::Delivered,
            "read" => DeliveryStatus::Read,
            "played" => DeliveryStatus::Played,
            "failed" => DeliveryStatus::Failed,
            other => DeliveryStatus::Other(other.to_string()),
        }
    }

    /// Statuses only move forward: sent < delivered < read < played; failed is terminal.
    /// `None` for statuses outside that order.
    pub fn rank(&self) -> Option<u8> {
        match self {
            DeliveryStatus::Sent => Some(1),
            DeliveryStatus::Delivered => Some(2),
            DeliveryStatus::Read => Some(3),
            DeliveryStatus::Played => Some(4),
            DeliveryStatus::Failed => Some(5),
            DeliveryStatus::Other(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderError {
    pub code: Option<i64>,
    pub title: Option<String>,
    pub message: Option<String>,
    pub details: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub channel: ChannelRef,
    /// The id of the message this status is about.
    pub provider_message_id: String,
    pub status: DeliveryStatus,
    pub at_ms: Option<i64>,
    pub recipient: UserRef,
    /// Echo of what we sent with the message: our own message id.
    pub biz_opaque_callback_data: Option<String>,
    pub conversation_id: Option<String>,
    pub conversation_origin: Option<String>,
    pub pricing_category: Option<String>,
    pub billable: Option<bool>,
    pub errors: Vec<ProviderError>,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateUpdate {
    pub channel: ChannelRef,
    /// `message_template_status_update`, `message_template_quality_update`, ...
    pub field: String,
    pub template_id: Option<String>,
    pub name: Option<String>,
    pub language: Option<String>,
    /// The new status (`APPROVED`, `REJECTED`, ...) for status updates.
    pub status: Option<String>,
    pub quality: Option<String>,
    pub category: Option<String>,
    pub reason: Option<String>,
    pub raw: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserPreference {
    pub channel: ChannelRef,
    pub user: UserRef,
    /// e.g. `marketing_messages`.
    pub category: Option<String>,
    /// `stop` or `resume`.
    pub value: Option<String>,
    pub at_ms: Option<i64>,
    pub raw: Value,
}
