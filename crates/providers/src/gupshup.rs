//! Gupshup's webhooks. Version 2 has its own JSON; version 3 wraps Meta's envelope (parsed by
//! [`crate::meta`]). Gupshup signs nothing: the channel's URL carries a secret path segment.

use serde_json::Value;

use crate::{event::*, meta};

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
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub fn parse(body: &[u8]) -> Result<Vec<InboundEvent>, meta::ParseError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| meta::ParseError(format!("not JSON: {e}")))?;
    if root.get("entry").is_some() {
        return meta::parse(body);
    }
    let outer = root.get("payload").cloned().unwrap_or(Value::Null);
    // Timestamps are milliseconds here.
    let at_ms = root
        .get("timestamp")
        .and_then(Value::as_i64)
        .and_then(plausible_epoch_ms);
    let channel = ChannelRef {
        phone_number_id: None,
        display_phone_number: None,
        waba_id: text(&root, "app"),
    };
    let kind = text(&root, "type").unwrap_or_default();
    let events = match kind.as_str() {
        "message" => {
            let Some(id) = text(&outer, "id") else {
                return Ok(Vec::new());
            };
            let sender = outer.get("sender").cloned().unwrap_or(Value::Null);
            let inner = outer.get("payload").cloned().unwrap_or(Value::Null);
            let media = || Media {
                id: None,
                url: text(&inner, "url"),
                mime_type: text(&inner, "contentType"),
                sha256: None,
                caption: text(&inner, "caption"),
                filename: text(&inner, "name"),
            };
            let content = match text(&outer, "type").unwrap_or_default().as_str() {
                "text" => MessageContent::Text {
                    body: text(&inner, "text").unwrap_or_default(),
                },
                "image" => MessageContent::Image { media: media() },
                "video" => MessageContent::Video { media: media() },
                "audio" => MessageContent::Audio {
                    media: media(),
                    voice: false,
                },
                "file" => MessageContent::Document { media: media() },
                "sticker" => MessageContent::Sticker {
                    media: media(),
                    animated: false,
                },
                "location" => MessageContent::Location {
                    latitude: number(&inner, "latitude"),
                    longitude: number(&inner, "longitude"),
                    name: text(&inner, "name"),
                    address: text(&inner, "address"),
                    url: None,
                },
                "button_reply" => MessageContent::ButtonReply {
                    id: text(&inner, "id")
                        .or_else(|| text(&inner, "postbackText"))
                        .unwrap_or_default(),
                    title: text(&inner, "title").unwrap_or_default(),
                },
                "list_reply" => MessageContent::ListReply {
                    id: text(&inner, "id")
                        .or_else(|| text(&inner, "postbackText"))
                        .unwrap_or_default(),
                    title: text(&inner, "title").unwrap_or_default(),
                    description: text(&inner, "description"),
                },
                other => MessageContent::Unknown {
                    kind: other.to_string(),
                },
            };
            vec![InboundEvent::Message(Box::new(InboundMessage {
                channel,
                provider_message_id: id,
                from: UserRef {
                    wa_id: text(&sender, "phone").or_else(|| text(&outer, "source")),
                    profile_name: text(&sender, "name"),
                    ..UserRef::default()
                },
                sent_at_ms: at_ms,
                content,
                context: outer.get("context").map(|c| ReplyContext {
                    message_id: text(c, "id"),
                    ..ReplyContext::default()
                }),
                referral: None,
                raw: outer.clone(),
            }))]
        }
        "message-event" => {
            let Some(id) = text(&outer, "gsId").or_else(|| text(&outer, "id")) else {
                return Ok(Vec::new());
            };
            let errors = match text(&outer, "type").as_deref() {
                Some("failed") => {
                    let detail = outer.get("payload").cloned().unwrap_or(Value::Null);
                    vec![ProviderError {
                        code: number(&detail, "code").map(|c| c as i64),
                        title: None,
                        message: text(&detail, "reason"),
                        details: None,
                    }]
                }
                _ => Vec::new(),
            };
            vec![InboundEvent::Status(Box::new(StatusUpdate {
                channel,
                provider_message_id: id,
                status: DeliveryStatus::parse(&text(&outer, "type").unwrap_or_default()),
                at_ms,
                recipient: UserRef {
                    wa_id: text(&outer, "destination"),
                    ..UserRef::default()
                },
                biz_opaque_callback_data: None,
                conversation_id: None,
                conversation_origin: None,
                pricing_category: None,
                billable: None,
                errors,
                raw: outer.clone(),
            }))]
        }
        other => vec![InboundEvent::Account {
            channel,
            field: format!("gupshup.{other}"),
            value: root.clone(),
        }],
    };
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_messages_statuses_and_other_events() {
        let text_body = br#"{"app":"DemoApp","timestamp":1580227766370,"version":2,"type":"message","payload":{"id":"ABEG1","source":"918898000214","type":"text","payload":{"text":"Hi"},"sender":{"phone":"918898000214","name":"Andy","country_code":"91","dial_code":"8898000214"}}}"#;
        let events = parse(text_body).unwrap();
        let InboundEvent::Message(m) = &events[0] else {
            panic!()
        };
        assert_eq!(
            (
                m.provider_message_id.as_str(),
                m.from.wa_id.as_deref(),
                m.sent_at_ms
            ),
            ("ABEG1", Some("918898000214"), Some(1_580_227_766_370))
        );
        assert_eq!(m.content, MessageContent::Text { body: "Hi".into() });
        let image = br#"{"type":"message","payload":{"id":"ABEG2","type":"image","payload":{"url":"https://g.example/i.jpg","caption":"c"},"sender":{"phone":"1"}}}"#;
        assert!(
            matches!(&parse(image).unwrap()[0], InboundEvent::Message(m) if matches!(&m.content, MessageContent::Image { media } if media.url.as_deref() == Some("https://g.example/i.jpg")))
        );
        let status = br#"{"type":"message-event","timestamp":1,"payload":{"id":"x","gsId":"gs-1","type":"delivered","destination":"918898000214"}}"#;
        assert!(
            matches!(&parse(status).unwrap()[0], InboundEvent::Status(s) if s.status == DeliveryStatus::Delivered && s.provider_message_id == "gs-1")
        );
        let user_event = br#"{"type":"user-event","payload":{"phone":"1","type":"opted-out"}}"#;
        assert!(
            matches!(&parse(user_event).unwrap()[0], InboundEvent::Account { field, .. } if field == "gupshup.user-event")
        );
    }

    #[test]
    fn v3_is_meta_shaped() {
        let body = br#"{"gs_app_id":"a","object":"whatsapp_business_account","entry":[{"id":"w","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"1"},"messages":[{"from":"1","id":"wamid.G","timestamp":"1","type":"text","text":{"body":"v3"}}]}}]}]}"#;
        assert!(
            matches!(&parse(body).unwrap()[0], InboundEvent::Message(m) if m.provider_message_id == "wamid.G")
        );
        assert!(parse(b"not json").is_err());
    }
}
