//! Meta's webhook envelope (Cloud API; also what 360dialog forwards), normalized into
//! [`InboundEvent`]s. Lenient by design: every field may be missing, ids and timestamps may be
//! strings or numbers, unknown types and fields are kept whole. It never panics.

use serde_json::Value;

use crate::event::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A string field, accepting numbers too (ids arrive as either).
fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(value: &Value, key: &str) -> Option<f64> {
    match value.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Unix seconds (string or number) as epoch milliseconds. Values that already look like
/// milliseconds (some BSPs send those) are kept. Anything outside 1970..9999 is `None`.
fn timestamp_ms(value: &Value, key: &str) -> Option<i64> {
    let raw = number(value, key)?;
    // Checked before the cast: `as` saturates, and i64::MAX "milliseconds" overflowed every
    // window computed from it.
    if !raw.is_finite() || !(0.0..=MAX_EPOCH_MS as f64).contains(&raw) {
        return None;
    }
    let whole = raw as i64;
    // Anything past year 33658 in seconds is already milliseconds.
    let ms = if whole > 1_000_000_000_000 {
        whole
    } else {
        whole.checked_mul(1000)?
    };
    plausible_epoch_ms(ms)
}

fn flag(value: &Value, key: &str) -> bool {
    value.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn errors(value: &Value) -> Vec<ProviderError> {
    value
        .get("errors")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|e| ProviderError {
                    code: number(e, "code").map(|c| c as i64),
                    title: text(e, "title"),
                    message: text(e, "message"),
                    details: e.get("error_data").and_then(|d| text(d, "details")),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn media(value: Option<&Value>) -> Media {
    let Some(v) = value else {
        return Media::default();
    };
    Media {
        id: text(v, "id"),
        url: text(v, "url").or_else(|| text(v, "link")),
        mime_type: text(v, "mime_type"),
        sha256: text(v, "sha256"),
        caption: text(v, "caption"),
        filename: text(v, "filename"),
    }
}

/// Parses one webhook POST body.
pub fn parse(body: &[u8]) -> Result<Vec<InboundEvent>, ParseError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| ParseError(format!("not JSON: {e}")))?;
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| ParseError("no entry[] in the webhook".into()))?;
    let mut events = Vec::new();
    for entry in entries {
        let waba_id = text(entry, "id");
        for change in entry
            .get("changes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = text(change, "field").unwrap_or_default();
            let value = change.get("value").cloned().unwrap_or(Value::Null);
            let channel = ChannelRef {
                phone_number_id: value
                    .get("metadata")
                    .and_then(|m| text(m, "phone_number_id")),
                display_phone_number: value
                    .get("metadata")
                    .and_then(|m| text(m, "display_phone_number")),
                waba_id: waba_id.clone(),
            };
            parse_change(&field, &value, channel, &mut events);
        }
    }
    Ok(events)
}

/// Where one change of a platform-app webhook goes: messages and statuses to the channel of
/// their number, account-wide updates (templates, quality, account notices) to the channels of
/// the WhatsApp Business Account named by the entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKey {
    Number(String),
    Account(String),
    /// Neither: kept unrouted.
    Unknown,
}

/// The route of every change, read before the body is stored (cheap: no normalization).
pub fn route_keys(body: &[u8]) -> Result<Vec<RouteKey>, ParseError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| ParseError(format!("not JSON: {e}")))?;
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| ParseError("no entry[]".into()))?;
    Ok(entries
        .iter()
        .flat_map(|entry| {
            let account = text(entry, "id");
            entry
                .get("changes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(move |change| {
                    let number = change
                        .get("value")
                        .and_then(|v| v.get("metadata"))
                        .and_then(|m| text(m, "phone_number_id"));
                    match (number, &account) {
                        (Some(number), _) => RouteKey::Number(number),
                        (None, Some(account)) => RouteKey::Account(account.clone()),
                        (None, None) => RouteKey::Unknown,
                    }
                })
        })
        .collect())
}

fn parse_change(field: &str, value: &Value, channel: ChannelRef, events: &mut Vec<InboundEvent>) {
    match field {
        "messages" => {
            let contacts: Vec<&Value> = value
                .get("contacts")
                .and_then(Value::as_array)
                .map(|c| c.iter().collect())
                .unwrap_or_default();
            for message in value
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(m) = parse_message(message, &contacts, &channel) {
                    events.push(InboundEvent::Message(Box::new(m)));
                }
            }
            for status in value
                .get("statuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(s) = parse_status(status, &channel) {
                    events.push(InboundEvent::Status(Box::new(s)));
                }
            }
            let errs = errors(value);
            if !errs.is_empty() {
                events.push(InboundEvent::Errors {
                    channel,
                    errors: errs,
                });
            }
        }
        "message_template_status_update"
        | "message_template_quality_update"
        | "message_template_components_update"
        | "template_category_update" => events.push(InboundEvent::Template(TemplateUpdate {
            channel,
            field: field.to_string(),
            template_id: text(value, "message_template_id"),
            name: text(value, "message_template_name"),
            language: text(value, "message_template_language"),
            status: text(value, "event"),
            quality: text(value, "new_quality_score"),
            category: text(value, "new_category")
                .or_else(|| text(value, "message_template_category")),
            reason: text(value, "reason"),
            raw: value.clone(),
        })),
        "user_preferences" => {
            let contacts: Vec<&Value> = value
                .get("contacts")
                .and_then(Value::as_array)
                .map(|c| c.iter().collect())
                .unwrap_or_default();
            for pref in value
                .get("user_preferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let mut user = user_ref(text(pref, "wa_id"), text(pref, "user_id"), &contacts);
                if user.profile_name.is_none() {
                    user.profile_name = pref.get("profile").and_then(|p| text(p, "name"));
                }
                events.push(InboundEvent::UserPreference(UserPreference {
                    channel: channel.clone(),
                    user,
                    category: text(pref, "category"),
                    value: text(pref, "value"),
                    at_ms: timestamp_ms(pref, "timestamp"),
                    raw: pref.clone(),
                }));
            }
        }
        "account_update"
        | "phone_number_quality_update"
        | "phone_number_name_update"
        | "business_capability_update"
        | "security"
        | "account_alerts" => events.push(InboundEvent::Account {
            channel,
            field: field.to_string(),
            value: value.clone(),
        }),
        other => events.push(InboundEvent::Unknown {
            channel,
            field: other.to_string(),
            value: value.clone(),
        }),
    }
}

/// The sender, enriched from `contacts[]` (matched on wa_id or BSUID).
fn user_ref(wa_id: Option<String>, bsuid: Option<String>, contacts: &[&Value]) -> UserRef {
    let contact = contacts
        .iter()
        .find(|c| {
            (wa_id.is_some() && text(c, "wa_id") == wa_id)
                || (bsuid.is_some() && text(c, "user_id") == bsuid)
        })
        .or_else(|| {
            if contacts.len() == 1 {
                contacts.first()
            } else {
                None
            }
        });
    let profile = contact.and_then(|c| c.get("profile"));
    UserRef {
        wa_id: wa_id.or_else(|| contact.and_then(|c| text(c, "wa_id"))),
        bsuid: bsuid.or_else(|| contact.and_then(|c| text(c, "user_id"))),
        parent_bsuid: contact.and_then(|c| text(c, "parent_user_id")),
        username: profile.and_then(|p| text(p, "username")),
        profile_name: profile.and_then(|p| text(p, "name")),
    }
}

fn parse_message(
    message: &Value,
    contacts: &[&Value],
    channel: &ChannelRef,
) -> Option<InboundMessage> {
    let id = text(message, "id")?;
    let kind = text(message, "type").unwrap_or_else(|| "unknown".into());
    Some(InboundMessage {
        channel: channel.clone(),
        provider_message_id: id,
        from: user_ref(
            text(message, "from"),
            text(message, "from_user_id"),
            contacts,
        ),
        sent_at_ms: timestamp_ms(message, "timestamp"),
        content: content(&kind, message),
        context: message.get("context").map(|c| ReplyContext {
            message_id: text(c, "id"),
            from: text(c, "from"),
            forwarded: flag(c, "forwarded"),
            frequently_forwarded: flag(c, "frequently_forwarded"),
            referred_product: c.get("referred_product").cloned(),
        }),
        referral: message.get("referral").map(|r| Referral {
            source_url: text(r, "source_url"),
            source_id: text(r, "source_id"),
            source_type: text(r, "source_type"),
            headline: text(r, "headline"),
            body: text(r, "body"),
            media_type: text(r, "media_type"),
            image_url: text(r, "image_url"),
            video_url: text(r, "video_url"),
            thumbnail_url: text(r, "thumbnail_url"),
            ctwa_clid: text(r, "ctwa_clid"),
            welcome_message: r.get("welcome_message").and_then(|w| text(w, "text")),
        }),
        raw: message.clone(),
    })
}

/// The content of a message (or of an edit's new message) of type `kind`.
fn content(kind: &str, message: &Value) -> MessageContent {
    let body = message.get(kind);
    let field = |key: &str| body.and_then(|b| text(b, key));
    match kind {
        "text" => MessageContent::Text {
            body: field("body").unwrap_or_default(),
        },
        "image" => MessageContent::Image { media: media(body) },
        "video" => MessageContent::Video { media: media(body) },
        "audio" => MessageContent::Audio {
            media: media(body),
            voice: body.is_some_and(|b| flag(b, "voice")),
        },
        "document" => MessageContent::Document { media: media(body) },
        "sticker" => MessageContent::Sticker {
            media: media(body),
            animated: body.is_some_and(|b| flag(b, "animated")),
        },
        "location" => MessageContent::Location {
            latitude: body.and_then(|b| number(b, "latitude")),
            longitude: body.and_then(|b| number(b, "longitude")),
            name: field("name"),
            address: field("address"),
            url: field("url"),
        },
        "contacts" => MessageContent::Contacts {
            contacts: message
                .get("contacts")
                .and_then(Value::as_array)
                .map(|cards| {
                    cards
                        .iter()
                        .map(|card| SharedContact {
                            formatted_name: card
                                .get("name")
                                .and_then(|n| text(n, "formatted_name")),
                            phones: card
                                .get("phones")
                                .and_then(Value::as_array)
                                .map(|phones| {
                                    phones
                                        .iter()
                                        .map(|p| SharedPhone {
                                            phone: text(p, "phone"),
                                            wa_id: text(p, "wa_id"),
                                            kind: text(p, "type"),
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                            raw: card.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        "interactive" => interactive(body),
        "button" => MessageContent::TemplateButton {
            payload: field("payload"),
            text: field("text"),
        },
        "reaction" => MessageContent::Reaction {
            message_id: field("message_id").unwrap_or_default(),
            emoji: field("emoji").filter(|e| !e.is_empty()),
        },
        "order" => MessageContent::Order {
            catalog_id: field("catalog_id"),
            text: field("text"),
            items: body
                .and_then(|b| b.get("product_items"))
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .map(|i| OrderItem {
                            product_retailer_id: text(i, "product_retailer_id"),
                            quantity: number(i, "quantity"),
                            item_price: number(i, "item_price"),
                            currency: text(i, "currency"),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        "system" => MessageContent::System {
            kind: field("type"),
            body: field("body"),
            new_wa_id: field("wa_id"),
            new_bsuid: field("user_id"),
            previous_bsuid: field("previous_user_id"),
        },
        "edit" => {
            let inner = body.and_then(|b| b.get("message"));
            let inner_kind = inner
                .and_then(|m| text(m, "type"))
                .unwrap_or_else(|| "unknown".into());
            MessageContent::Edit {
                original_message_id: field("original_message_id").unwrap_or_default(),
                content: Box::new(inner.map_or(
                    MessageContent::Unknown {
                        kind: inner_kind.clone(),
                    },
                    |m| content(&inner_kind, m),
                )),
            }
        }
        "revoke" => MessageContent::Revoke {
            original_message_id: field("original_message_id").unwrap_or_default(),
        },
        "unsupported" => MessageContent::Unsupported {
            kind: field("type"),
            errors: errors(message),
        },
        other => MessageContent::Unknown {
            kind: other.to_string(),
        },
    }
}

fn interactive(body: Option<&Value>) -> MessageContent {
    let kind = body.and_then(|b| text(b, "type")).unwrap_or_default();
    let part = body.and_then(|b| b.get(kind.as_str()));
    let field = |key: &str| part.and_then(|p| text(p, key));
    match kind.as_str() {
        "button_reply" => MessageContent::ButtonReply {
            id: field("id").unwrap_or_default(),
            title: field("title").unwrap_or_default(),
        },
        "list_reply" => MessageContent::ListReply {
            id: field("id").unwrap_or_default(),
            title: field("title").unwrap_or_default(),
            description: field("description"),
        },
        "nfm_reply" => MessageContent::FlowReply {
            name: field("name"),
            body: field("body"),
            response_json: field("response_json"),
        },
        other => MessageContent::Unknown {
            kind: format!("interactive.{other}"),
        },
    }
}

fn parse_status(status: &Value, channel: &ChannelRef) -> Option<StatusUpdate> {
    let conversation = status.get("conversation");
    let pricing = status.get("pricing");
    Some(StatusUpdate {
        channel: channel.clone(),
        provider_message_id: text(status, "id")?,
        status: DeliveryStatus::parse(&text(status, "status").unwrap_or_default()),
        at_ms: timestamp_ms(status, "timestamp"),
        recipient: UserRef {
            wa_id: text(status, "recipient_id"),
            bsuid: text(status, "recipient_user_id"),
            ..UserRef::default()
        },
        biz_opaque_callback_data: text(status, "biz_opaque_callback_data"),
        conversation_id: conversation.and_then(|c| text(c, "id")),
        conversation_origin: conversation
            .and_then(|c| c.get("origin"))
            .and_then(|o| text(o, "type")),
        pricing_category: pricing.and_then(|p| text(p, "category")),
        billable: pricing
            .and_then(|p| p.get("billable"))
            .and_then(Value::as_bool),
        errors: errors(status),
        raw: status.clone(),
    })
}
