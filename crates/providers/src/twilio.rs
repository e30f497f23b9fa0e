//! Twilio's WhatsApp webhooks: form-encoded inbound messages and status callbacks, normalized
//! into [`InboundEvent`]s. Unknown parameters are kept in `raw` (Twilio adds them freely).

use serde_json::{Map, Value};

use crate::event::*;

/// Decodes an `application/x-www-form-urlencoded` body into its pairs.
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn strip_whatsapp(address: &str) -> String {
    address.trim_start_matches("whatsapp:").to_string()
}

/// Parses one webhook (an inbound message, or a status callback when `MessageStatus` is set).
pub fn parse(pairs: &[(String, String)]) -> Vec<InboundEvent> {
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let raw = Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    );
    let Some(sid) = get("MessageSid").or_else(|| get("SmsMessageSid")) else {
        return Vec::new();
    };
    let channel = ChannelRef {
        phone_number_id: None,
        display_phone_number: get("To").map(|t| strip_whatsapp(&t)),
        waba_id: None,
    };
    if let Some(status) = get("MessageStatus") {
        let status = match status.as_str() {
            "undelivered" => DeliveryStatus::Failed,
            other => DeliveryStatus::parse(other),
        };
        let errors = get("ErrorCode")
            .map(|code| {
                vec![ProviderError {
                    code: code.parse().ok(),
                    title: None,
                    message: get("ErrorMessage"),
                    details: None,
                }]
            })
            .unwrap_or_default();
        return vec![InboundEvent::Status(Box::new(StatusUpdate {
            channel,
            provider_message_id: sid,
            status,
            at_ms: None,
            recipient: UserRef {
                wa_id: get("To").map(|t| strip_whatsapp(&t).trim_start_matches('+').to_string()),
                ..UserRef::default()
            },
            biz_opaque_callback_data: None,
            conversation_id: None,
            conversation_origin: None,
            pricing_category: None,
            billable: None,
            errors,
            raw,
        }))];
    }
    let media = || Media {
        id: None,
        url: get("MediaUrl0"),
        mime_type: get("MediaContentType0"),
        sha256: None,
        caption: get("Body"),
        filename: None,
    };
    let kind = get("MessageType").unwrap_or_else(|| {
        if get("NumMedia").is_some_and(|n| n != "0") {
            "media".into()
        } else {
            "text".into()
        }
    });
    let content = match kind.as_str() {
        "text" => MessageContent::Text {
            body: get("Body").unwrap_or_default(),
        },
        "image" => MessageContent::Image { media: media() },
        "video" => MessageContent::Video { media: media() },
        "audio" => MessageContent::Audio {
            media: media(),
            voice: false,
        },
        "document" | "media" => MessageContent::Document { media: media() },
        "sticker" => MessageContent::Sticker {
            media: media(),
            animated: false,
        },
        "location" => MessageContent::Location {
            latitude: get("Latitude").and_then(|v| v.parse().ok()),
            longitude: get("Longitude").and_then(|v| v.parse().ok()),
            name: get("Label"),
            address: get("Address"),
            url: None,
        },
        "button" => MessageContent::TemplateButton {
            payload: get("ButtonPayload"),
            text: get("ButtonText"),
        },
        "interactive" => MessageContent::ButtonReply {
            id: get("ButtonPayload").unwrap_or_default(),
            title: get("ButtonText").unwrap_or_default(),
        },
        other => MessageContent::Unknown {
            kind: other.to_string(),
        },
    };
    let referral = get("ReferralSourceId")
        .or_else(|| get("ReferralCtwaClid"))
        .map(|_| Referral {
            source_url: get("ReferralSourceUrl"),
            source_id: get("ReferralSourceId"),
            source_type: get("ReferralSourceType"),
            headline: get("ReferralHeadline"),
            body: get("ReferralBody"),
            media_type: get("ReferralMediaContentType"),
            image_url: get("ReferralMediaUrl"),
            video_url: None,
            thumbnail_url: None,
            ctwa_clid: get("ReferralCtwaClid"),
            welcome_message: None,
        });
    vec![InboundEvent::Message(Box::new(InboundMessage {
        channel,
        provider_message_id: sid,
        from: UserRef {
            wa_id: get("WaId").or_else(|| {
                get("From").map(|f| strip_whatsapp(&f).trim_start_matches('+').to_string())
            }),
            profile_name: get("ProfileName"),
            ..UserRef::default()
        },
        sent_at_ms: None,
        content,
        context: get("OriginalRepliedMessageSid").map(|id| ReplyContext {
            message_id: Some(id),
            ..ReplyContext::default()
        }),
        referral,
        raw,
    }))]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(body: &str) -> Vec<(String, String)> {
        form_pairs(body.as_bytes())
    }

    #[test]
    fn inbound_text_with_referral() {
        let events = parse(&pairs(
            "SmsMessageSid=SM1&NumMedia=0&ProfileName=Ada&MessageType=text&WaId=14155550100&Body=Hi%20there\
             &To=whatsapp%3A%2B14155238886&From=whatsapp%3A%2B14155550100&MessageSid=SM1&AccountSid=AC1\
             &ReferralCtwaClid=ARAclid&ReferralSourceId=123&ReferralSourceType=ad&NewParam=kept",
        ));
        let InboundEvent::Message(m) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            m.content,
            MessageContent::Text {
                body: "Hi there".into()
            }
        );
        assert_eq!(
            (m.from.wa_id.as_deref(), m.from.profile_name.as_deref()),
            (Some("14155550100"), Some("Ada"))
        );
        assert_eq!(
            m.channel.display_phone_number.as_deref(),
            Some("+14155238886")
        );
        assert_eq!(
            m.referral.as_ref().unwrap().ctwa_clid.as_deref(),
            Some("ARAclid")
        );
        assert_eq!(m.raw["NewParam"], "kept");
    }

    #[test]
    fn media_location_buttons_and_replies() {
        let image = parse(&pairs(
            "MessageSid=SM2&MessageType=image&NumMedia=1&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm&MediaContentType0=image%2Fjpeg&WaId=1&Body=look",
        ));
        let InboundEvent::Message(m) = &image[0] else {
            panic!()
        };
        assert!(
            matches!(&m.content, MessageContent::Image { media } if media.url.as_deref() == Some("https://api.twilio.com/m") && media.caption.as_deref() == Some("look"))
        );
        let location = parse(&pairs(
            "MessageSid=SM3&MessageType=location&Latitude=1.5&Longitude=-2.25&Label=Home&WaId=1",
        ));
        let InboundEvent::Message(m) = &location[0] else {
            panic!()
        };
        assert!(matches!(
            m.content,
            MessageContent::Location {
                latitude: Some(1.5),
                longitude: Some(-2.25),
                ..
            }
        ));
        let button = parse(&pairs(
            "MessageSid=SM4&MessageType=button&ButtonPayload=YES&ButtonText=Yes&WaId=1&OriginalRepliedMessageSid=SM0",
        ));
        let InboundEvent::Message(m) = &button[0] else {
            panic!()
        };
        assert_eq!(
            m.content,
            MessageContent::TemplateButton {
                payload: Some("YES".into()),
                text: Some("Yes".into())
            }
        );
        assert_eq!(
            m.context.as_ref().unwrap().message_id.as_deref(),
            Some("SM0")
        );
    }

    #[test]
    fn status_callbacks() {
        let events = parse(&pairs(
            "MessageSid=SM5&MessageStatus=undelivered&ErrorCode=63016&To=whatsapp%3A%2B14155550100&AccountSid=AC1",
        ));
        let InboundEvent::Status(s) = &events[0] else {
            panic!()
        };
        assert_eq!(
            (s.status.clone(), s.errors[0].code),
            (DeliveryStatus::Failed, Some(63016))
        );
        let delivered = parse(&pairs("MessageSid=SM5&MessageStatus=delivered"));
        assert!(
            matches!(&delivered[0], InboundEvent::Status(s) if s.status == DeliveryStatus::Delivered)
        );
        assert!(parse(&pairs("Body=no+sid")).is_empty());
    }
}
