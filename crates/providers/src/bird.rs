//! Bird's (formerly MessageBird) Channels webhooks for WhatsApp. Inbound text, media and
//! location are normalized; anything else keeps its raw payload. The WhatsApp message id
//! (`parts[].platformReference`) is preferred over Bird's own id, so deduplication matches
//! Meta's.

use serde_json::Value;

use crate::{event::*, meta};

fn text_at(value: &Value, path: &[&str]) -> Option<String> {
    let mut v = value;
    for key in path {
        v = v.get(*key)?;
    }
    v.as_str().map(str::to_string)
}

pub fn parse(body: &[u8]) -> Result<Vec<InboundEvent>, meta::ParseError> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| meta::ParseError(format!("not JSON: {e}")))?;
    let payload = root.get("payload").cloned().unwrap_or(Value::Null);
    let event = text_at(&root, &["event"]).unwrap_or_default();
    let channel = ChannelRef {
        phone_number_id: None,
        display_phone_number: text_at(&payload, &["receiver", "connector", "identifierValue"]),
        waba_id: text_at(&payload, &["channelId"]),
    };
    if event != "whatsapp.inbound" {
        return Ok(vec![InboundEvent::Unknown {
            channel,
            field: format!("bird.{event}"),
            value: root,
        }]);
    }
    let id = payload
        .get("parts")
        .and_then(Value::as_array)
        .and_then(|parts| {
            parts
                .iter()
                .find_map(|p| text_at(p, &["platformReference"]))
        })
        .or_else(|| text_at(&payload, &["id"]));
    let Some(id) = id else { return Ok(Vec::new()) };
    let phone = text_at(&payload, &["sender", "contact", "identifierValue"]);
    let body = payload.get("body").cloned().unwrap_or(Value::Null);
    let kind = text_at(&body, &["type"]).unwrap_or_default();
    let content = match kind.as_str() {
        "text" => MessageContent::Text {
            body: text_at(&body, &["text", "text"]).unwrap_or_default(),
        },
        "image" => MessageContent::Image {
            media: Media {
                url: body
                    .pointer("/image/images/0/mediaUrl")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                caption: body
                    .pointer("/image/images/0/altText")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                ..Media::default()
            },
        },
        "location" => MessageContent::Location {
            latitude: body
                .pointer("/location/coordinates/latitude")
                .and_then(Value::as_f64),
            longitude: body
                .pointer("/location/coordinates/longitude")
                .and_then(Value::as_f64),
            name: body
                .pointer("/location/location/label")
                .and_then(Value::as_str)
                .map(str::to_string),
            address: None,
            url: None,
        },
        other => MessageContent::Unknown {
            kind: other.to_string(),
        },
    };
    let sent_at_ms = text_at(&payload, &["createdAt"]).and_then(|t| time_millis(&t));
    Ok(vec![InboundEvent::Message(Box::new(InboundMessage {
        channel,
        provider_message_id: id,
        from: UserRef {
            wa_id: phone.map(|p| p.trim_start_matches('+').to_string()),
            ..UserRef::default()
        },
        sent_at_ms,
        content,
        context: None,
        referral: None,
        raw: payload,
    }))])
}

fn time_millis(text: &str) -> Option<i64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .ok()
        .and_then(plausible_epoch_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_text_uses_the_whatsapp_message_id() {
        let body = br#"{"service":"channels","event":"whatsapp.inbound","payload":{"id":"bird-1","channelId":"ch-1","sender":{"contact":{"id":"c","identifierKey":"phonenumber","identifierValue":"+351911111111"}},"receiver":{"connector":{"id":"x","identifierValue":"+351922222222"}},"body":{"type":"text","text":{"text":"Ola"}},"parts":[{"platformReference":"wamid.BIRD"}],"direction":"incoming","createdAt":"2026-11-21T10:00:00.5Z"}}"#;
        let events = parse(body).unwrap();
        let InboundEvent::Message(m) = &events[0] else {
            panic!()
        };
        assert_eq!(
            (m.provider_message_id.as_str(), m.from.wa_id.as_deref()),
            ("wamid.BIRD", Some("351911111111"))
        );
        assert_eq!(m.content, MessageContent::Text { body: "Ola".into() });
        assert_eq!(m.sent_at_ms, Some(1_795_255_200_500));
        let other = parse(br#"{"event":"whatsapp.outbound","payload":{}}"#).unwrap();
        assert!(
            matches!(&other[0], InboundEvent::Unknown { field, .. } if field == "bird.whatsapp.outbound")
        );
    }
}
