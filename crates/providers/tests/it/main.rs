//! Every Meta message type and webhook field, from fixtures, into the event model; plus
//! property tests that no input makes the parser panic.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use waypost_providers::{meta, *};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/meta/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn only_message(name: &str) -> InboundMessage {
    let events = meta::parse(&fixture(name)).unwrap();
    assert_eq!(events.len(), 1, "{name}: {events:?}");
    match events.into_iter().next().unwrap() {
        InboundEvent::Message(m) => *m,
        other => panic!("{name}: not a message: {other:?}"),
    }
}

#[test]
fn text_messages_carry_sender_channel_and_time() {
    let m = only_message("text");
    assert_eq!(
        m.content,
        MessageContent::Text {
            body: "Does it come in another color?".into()
        }
    );
    assert_eq!(m.provider_message_id, "wamid.TEXT1");
    assert_eq!(m.sent_at_ms, Some(1_749_416_383_000));
    assert_eq!(
        m.channel.phone_number_id.as_deref(),
        Some("106540352242922")
    );
    assert_eq!(m.channel.waba_id.as_deref(), Some("102290129340398"));
    assert_eq!(m.from.wa_id.as_deref(), Some("16505551234"));
    assert_eq!(m.from.bsuid.as_deref(), Some("US.13491208655302741918"));
    assert_eq!(m.from.profile_name.as_deref(), Some("Sheena Nelson"));
    assert_eq!(m.raw["text"]["body"], "Does it come in another color?");
}

#[test]
fn media_messages_keep_id_mime_hash_caption_and_filename() {
    let MessageContent::Image { media } = only_message("image").content else {
        panic!()
    };
    assert_eq!(
        (
            media.id.as_deref(),
            media.mime_type.as_deref(),
            media.sha256.as_deref(),
            media.caption.as_deref()
        ),
        (
            Some("1003383421387256"),
            Some("image/jpeg"),
            Some("4654+8g="),
            Some("my receipt")
        )
    );
    assert!(
        matches!(only_message("video").content, MessageContent::Video { media } if media.caption.as_deref() == Some("look"))
    );
    assert!(
        matches!(only_message("audio_voice").content, MessageContent::Audio { voice: true, media } if media.id.as_deref() == Some("3001"))
    );
    assert!(
        matches!(only_message("document").content, MessageContent::Document { media } if media.filename.as_deref() == Some("invoice.pdf"))
    );
    assert!(matches!(
        only_message("sticker").content,
        MessageContent::Sticker { animated: true, .. }
    ));
}

#[test]
fn location_contacts_and_orders() {
    let MessageContent::Location {
        latitude,
        longitude,
        name,
        ..
    } = only_message("location").content
    else {
        panic!()
    };
    assert_eq!(
        (latitude, longitude, name.as_deref()),
        (Some(-33.8688), Some(151.2093), Some("Office"))
    );
    let MessageContent::Contacts { contacts } = only_message("contacts").content else {
        panic!()
    };
    assert_eq!(contacts[0].formatted_name.as_deref(), Some("John Doe"));
    assert_eq!(contacts[0].phones[0].wa_id.as_deref(), Some("16505559999"));
    assert_eq!(contacts[0].raw["emails"][0]["email"], "j@example.com");
    let MessageContent::Order {
        items, catalog_id, ..
    } = only_message("order").content
    else {
        panic!()
    };
    assert_eq!(
        (
            catalog_id.as_deref(),
            items[0].quantity,
            items[0].currency.as_deref()
        ),
        (Some("cat1"), Some(2.0), Some("EUR"))
    );
}

#[test]
fn interactive_replies_template_buttons_and_reply_context() {
    let m = only_message("button_reply");
    assert_eq!(
        m.content,
        MessageContent::ButtonReply {
            id: "change-button".into(),
            title: "Change".into()
        }
    );
    assert_eq!(
        m.context.unwrap().message_id.as_deref(),
        Some("wamid.ORIGINAL")
    );
    assert_eq!(
        only_message("list_reply").content,
        MessageContent::ListReply {
            id: "row-2".into(),
            title: "Blue".into(),
            description: Some("Navy blue".into())
        }
    );
    let MessageContent::FlowReply { response_json, .. } = only_message("flow_reply").content else {
        panic!()
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&response_json.unwrap()).unwrap()["flow_token"],
        "abc"
    );
    assert_eq!(
        only_message("template_button").content,
        MessageContent::TemplateButton {
            payload: Some("CONFIRM_123".into()),
            text: Some("Yes".into())
        }
    );
    let fwd = only_message("forwarded").context.unwrap();
    assert!(fwd.forwarded && fwd.frequently_forwarded && fwd.message_id.is_none());
}

#[test]
fn reactions_system_edits_revokes_unsupported_and_unknown() {
    assert_eq!(
        only_message("reaction_added").content,
        MessageContent::Reaction {
            message_id: "wamid.ORIGINAL".into(),
            emoji: Some("👍".into())
        }
    );
    assert_eq!(
        only_message("reaction_removed").content,
        MessageContent::Reaction {
            message_id: "wamid.ORIGINAL".into(),
            emoji: None
        }
    );
    let MessageContent::System {
        kind, new_wa_id, ..
    } = only_message("system_number_change").content
    else {
        panic!()
    };
    assert_eq!(
        (kind.as_deref(), new_wa_id.as_deref()),
        (Some("user_changed_number"), Some("16505550000"))
    );
    let identity = only_message("system_identity_change");
    assert!(
        matches!(identity.content, MessageContent::System { ref kind, .. } if kind.as_deref() == Some("customer_identity_changed"))
    );
    assert_eq!(identity.raw["identity"]["hash"], "h");
    assert_eq!(
        only_message("edit").content,
        MessageContent::Edit {
            original_message_id: "wamid.ORIGINAL".into(),
            content: Box::new(MessageContent::Text {
                body: "fixed typo".into()
            }),
        }
    );
    assert_eq!(
        only_message("revoke").content,
        MessageContent::Revoke {
            original_message_id: "wamid.ORIGINAL".into()
        }
    );
    let MessageContent::Unsupported { kind, errors } = only_message("unsupported").content else {
        panic!()
    };
    assert_eq!(
        (kind.as_deref(), errors[0].code),
        (Some("poll"), Some(131051))
    );
    let unknown = only_message("unknown_type");
    assert_eq!(
        unknown.content,
        MessageContent::Unknown {
            kind: "hologram".into()
        }
    );
    assert_eq!(
        unknown.raw["hologram"]["depth"], 3,
        "unknown types keep their raw object"
    );
}

#[test]
fn click_to_whatsapp_referrals_are_captured() {
    let r = only_message("referral").referral.unwrap();
    assert_eq!(r.ctwa_clid.as_deref(), Some("ARAbc123ClickId"));
    assert_eq!(
        (
            r.source_id.as_deref(),
            r.source_type.as_deref(),
            r.media_type.as_deref()
        ),
        (Some("120210000000000001"), Some("ad"), Some("image"))
    );
    assert_eq!(r.welcome_message.as_deref(), Some("Hello!"));
}

#[test]
fn users_without_a_phone_number_are_kept() {
    let m = only_message("bsuid_only");
    assert_eq!(m.from.wa_id, None);
    assert_eq!(m.from.bsuid.as_deref(), Some("US.13491208655302741918"));
    assert_eq!(m.from.parent_bsuid.as_deref(), Some("US.ENT.99"));
    assert_eq!(m.from.username.as_deref(), Some("@anon"));
    assert!(m.from.is_identified());
    assert_eq!(
        m.sent_at_ms,
        Some(1_749_416_383_000),
        "numeric timestamps parse too"
    );
}

/// The text fixture with its `timestamp` replaced by `raw` (a JSON value).
fn text_sent_at(raw: &str) -> Option<i64> {
    let body = String::from_utf8(fixture("text"))
        .unwrap()
        .replace("\"1749416383\"", raw);
    assert!(body.contains(raw));
    let events = meta::parse(body.as_bytes()).unwrap();
    match &events[0] {
        InboundEvent::Message(m) => m.sent_at_ms,
        other => panic!("not a message: {other:?}"),
    }
}

#[test]
fn timestamps_outside_1970_to_9999_are_dropped_not_saturated() {
    assert_eq!(text_sent_at("\"1749416383\""), Some(1_749_416_383_000));
    assert_eq!(text_sent_at("1749416383123"), Some(1_749_416_383_123));
    // 2100 is implausible but representable: the processing clamps it to the receipt.
    assert_eq!(text_sent_at("4102444800"), Some(4_102_444_800_000));
    for raw in [
        "\"9223372036854775807\"",
        "9223372036854775807",
        "18446744073709551615",
        "1e300",
        "\"-1\"",
        "253402300800000",
    ] {
        assert_eq!(text_sent_at(raw), None, "{raw}");
    }
    let gupshup = br#"{"app":"A","timestamp":9223372036854775807,"version":2,"type":"message","payload":{"id":"g1","source":"918898000214","type":"text","payload":{"text":"Hi"},"sender":{"phone":"918898000214"}}}"#;
    let InboundEvent::Message(m) = &gupshup::parse(gupshup).unwrap()[0] else {
        panic!()
    };
    assert_eq!(m.sent_at_ms, None);
}

#[test]
fn statuses_carry_pricing_errors_and_our_callback_data() {
    let events = meta::parse(&fixture("status_delivered")).unwrap();
    let InboundEvent::Status(s) = &events[0] else {
        panic!()
    };
    assert_eq!(
        (s.status.clone(), s.biz_opaque_callback_data.as_deref()),
        (DeliveryStatus::Delivered, Some("msg_01"))
    );
    assert_eq!(
        (
            s.pricing_category.as_deref(),
            s.billable,
            s.conversation_origin.as_deref()
        ),
        (Some("utility"), Some(true), Some("utility"))
    );
    assert_eq!(s.recipient.wa_id.as_deref(), Some("5516992318222"));
    let events = meta::parse(&fixture("status_failed")).unwrap();
    let InboundEvent::Status(s) = &events[0] else {
        panic!()
    };
    assert_eq!(
        (
            s.status.clone(),
            s.errors[0].code,
            s.errors[0].details.as_deref()
        ),
        (
            DeliveryStatus::Failed,
            Some(131047),
            Some("more than 24 hours")
        )
    );
    assert!(DeliveryStatus::Sent.rank() < DeliveryStatus::Delivered.rank());
    assert!(DeliveryStatus::Delivered.rank() < DeliveryStatus::Read.rank());
    let events = meta::parse(&fixture("value_errors")).unwrap();
    assert!(
        matches!(&events[0], InboundEvent::Errors { errors, .. } if errors[0].code == Some(130429))
    );
}

#[test]
fn template_account_preference_and_unknown_fields() {
    let InboundEvent::Template(t) = &meta::parse(&fixture("template_status")).unwrap()[0] else {
        panic!()
    };
    assert_eq!(
        (
            t.template_id.as_deref(),
            t.status.as_deref(),
            t.name.as_deref()
        ),
        (
            Some("1689556908129832"),
            Some("APPROVED"),
            Some("order_confirmation")
        )
    );
    let InboundEvent::Template(t) = &meta::parse(&fixture("template_quality")).unwrap()[0] else {
        panic!()
    };
    assert_eq!(t.quality.as_deref(), Some("YELLOW"));
    let InboundEvent::Template(t) = &meta::parse(&fixture("template_category")).unwrap()[0] else {
        panic!()
    };
    assert_eq!(t.category.as_deref(), Some("MARKETING"));
    let InboundEvent::UserPreference(p) = &meta::parse(&fixture("user_preferences")).unwrap()[0]
    else {
        panic!()
    };
    assert_eq!(
        (
            p.user.wa_id.as_deref(),
            p.value.as_deref(),
            p.category.as_deref()
        ),
        (
            Some("16505551234"),
            Some("stop"),
            Some("marketing_messages")
        )
    );
    assert_eq!(p.at_ms, Some(1_731_705_721_000));
    assert!(
        matches!(&meta::parse(&fixture("phone_quality")).unwrap()[0], InboundEvent::Account { field, .. } if field == "phone_number_quality_update")
    );
    assert!(matches!(
        &meta::parse(&fixture("account_update")).unwrap()[0],
        InboundEvent::Account { .. }
    ));
    assert!(
        matches!(&meta::parse(&fixture("unknown_field")).unwrap()[0], InboundEvent::Unknown { field, value, .. } if field == "brand_new_field" && value["anything"] == 1)
    );
}

#[test]
fn one_post_with_several_entries_changes_and_messages_yields_every_event() {
    let events = meta::parse(&fixture("batch")).unwrap();
    assert_eq!(events.len(), 3);
    let ids: Vec<_> = events
        .iter()
        .map(|e| match e {
            InboundEvent::Message(m) => m.provider_message_id.clone(),
            InboundEvent::Status(s) => s.provider_message_id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["wamid.TEXT1", "wamid.TEXT2", "wamid.OUT9"]);
    assert_eq!(
        meta::route_keys(&fixture("batch")).unwrap(),
        [
            meta::RouteKey::Number("106540352242922".into()),
            meta::RouteKey::Number("999".into())
        ]
    );
    // Account-wide updates name only the WhatsApp Business Account (entry.id).
    let template = br#"{"entry":[{"id":"102290129340398","changes":[{"field":"message_template_status_update","value":{"event":"APPROVED"}}]},{"changes":[{"field":"x","value":{}}]}]}"#;
    assert_eq!(
        meta::route_keys(template).unwrap(),
        [
            meta::RouteKey::Account("102290129340398".into()),
            meta::RouteKey::Unknown
        ]
    );
}

#[test]
fn every_fixture_round_trips_through_the_event_model_as_json() {
    let dir = format!("{}/tests/fixtures/meta", env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(dir).unwrap() {
        let events = meta::parse(&std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        assert!(!events.is_empty());
        for event in events {
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<InboundEvent>(&json).unwrap(), event);
            if let InboundEvent::Message(m) = &event {
                // The tag `kind()` names without serializing is the one JSON carries.
                let tagged = serde_json::to_value(&m.content).unwrap();
                assert_eq!(tagged["type"], m.content.kind());
            }
        }
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for body in [
        &b""[..],
        b"null",
        b"[]",
        b"{}",
        b"{\"entry\":7}",
        b"{\"entry\":[{\"changes\":[{\"value\":null}]}]}",
        b"\xff\xfe",
    ] {
        let _ = meta::parse(body);
    }
    assert!(meta::parse(b"{}").is_err());
    assert_eq!(meta::parse(b"{\"entry\":[]}").unwrap(), vec![]);
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        "[a-z_.]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("entry".to_string()),
            Just("changes".to_string()),
            Just("value".to_string()),
            Just("messages".to_string()),
            Just("statuses".to_string()),
            Just("type".to_string()),
            Just("text".to_string()),
            Just("id".to_string()),
            Just("timestamp".to_string()),
            Just("field".to_string()),
            Just("interactive".to_string()),
            Just("edit".to_string()),
            Just("message".to_string()),
            Just("contacts".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys, inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = meta::parse(&body);
        let _ = meta::route_keys(&body);
    }

    #[test]
    fn arbitrary_json_shapes_never_panic(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        let _ = meta::parse(&body);
    }

    #[test]
    fn signatures_reject_any_changed_byte(body in prop::collection::vec(any::<u8>(), 1..256), flip in any::<prop::sample::Index>()) {
        let signature = signature::sign_meta(b"secret", &body);
        prop_assert!(signature::verify_meta(b"secret", &body, Some(&signature)).is_ok());
        let mut tampered = body.clone();
        let i = flip.index(tampered.len());
        tampered[i] ^= 0x01;
        prop_assert!(signature::verify_meta(b"secret", &tampered, Some(&signature)).is_err());
    }
}
