//! Each provider's client against a local server speaking that provider's wire format: the
//! request it makes, and how each kind of answer is read.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::IntoResponse,
};
use serde_json::{Value, json};
use waypost_core::{ChannelId, Timestamp};
use waypost_egress::{ClientOptions, EgressClient, EgressPolicy, SystemLookup};
use waypost_outbound::{
    Attempt, ClientConfig, OutboundContent, Provider, Reaction, client_for,
    provider::{Credentials, MediaHosts, ProviderFailure, ProviderHttp, SendRequest},
    react,
};
use waypost_store::Channel;

/// One request as the fake provider saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    fn field(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<(u16, Value)>>,
}

async fn record(
    State(fake): State<Fake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    fake.seen.lock().unwrap().push(Seen {
        method,
        uri,
        headers,
        body,
    });
    let (status, body) = fake.answer.lock().unwrap().clone();
    (StatusCode::from_u16(status).unwrap(), axum::Json(body))
}

/// A provider stand-in answering `status` with `body` to everything.
async fn fake(status: u16, body: Value) -> (Fake, String) {
    let fake = Fake {
        seen: Arc::default(),
        answer: Arc::new(Mutex::new((status, body))),
    };
    let app = Router::new().fallback(record).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, base)
}

fn channel(provider: &str, base: &str) -> Channel {
    Channel {
        id: ChannelId::new(),
        provider: provider.into(),
        name: "Test".into(),
        phone_number_id: Some("106540352242922".into()),
        waba_id: Some("102290129340398".into()),
        display_number: Some("+15550783881".into()),
        provider_account: Some(match provider {
            "bird" => "ws-1/ch-2".into(),
            _ => "DemoApp".into(),
        }),
        throughput_mps: 80,
        graph_api_base_url: base.into(),
        graph_api_version: "v25.0".into(),
        send_state: "active".into(),
        send_state_reason: None,
        verification: waypost_store::Verification::Pending,
        verification_reason: None,
        created_at: Timestamp::now(),
    }
}

/// The local fakes are on loopback, which the tests' egress policy allows.
fn http(allow: &[&str], media_hosts: MediaHosts) -> ProviderHttp {
    let client = EgressClient::build(
        EgressPolicy::new(allow).unwrap(),
        ClientOptions {
            timeout: Some(Duration::from_millis(500)),
            ..ClientOptions::default()
        },
        std::sync::Arc::new(SystemLookup),
    )
    .unwrap();
    ProviderHttp {
        client,
        media_hosts: std::sync::Arc::new(media_hosts),
    }
}

fn client_with(
    provider: &str,
    base: &str,
    secrets: &[(&str, &str)],
    http: ProviderHttp,
) -> Box<dyn Provider> {
    let credentials: Credentials = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    client_for(
        &channel(provider, base),
        &credentials,
        ClientConfig {
            http,
            status_callback: Some("https://waypost.example/webhooks/twilio/ch".into()),
        },
    )
    .unwrap()
}

fn client(provider: &str, base: &str, secrets: &[(&str, &str)]) -> Box<dyn Provider> {
    client_with(
        provider,
        base,
        secrets,
        http(&["127.0.0.0/8"], MediaHosts::default()),
    )
}

fn content(v: Value) -> OutboundContent {
    serde_json::from_value(v).unwrap()
}

async fn send(client: &dyn Provider, recipient: &str, content: &OutboundContent) -> Attempt {
    client
        .send(&SendRequest {
            recipient,
            content,
            reply_to: Some("wamid.REPLYTO"),
            callback_data: "01a2-our-message-id",
        })
        .await
}

#[tokio::test]
async fn meta_sends_the_cloud_api_body_with_our_id_as_callback_data() {
    let (fake, base) = fake(
        200,
        json!({"messaging_product": "whatsapp", "contacts": [{"input": "+16505551234", "wa_id": "16505551234"}],
               "messages": [{"id": "wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}]}),
    )
    .await;
    let meta = client("meta", &base, &[("access_token", "EAAG-secret")]);
    let text = content(json!({"type": "text", "text": {"body": "Hi", "preview_url": true}}));
    let attempt = send(meta.as_ref(), "+16505551234", &text).await;
    assert_eq!(
        attempt,
        Attempt::Accepted("wamid.HBgLMTY1MDUwNzY1MjAVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA".into())
    );
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri.path(), "/v25.0/106540352242922/messages");
    assert_eq!(seen.headers["authorization"], "Bearer EAAG-secret");
    assert_eq!(
        seen.json(),
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "+16505551234",
               "type": "text", "text": {"body": "Hi", "preview_url": true},
               "context": {"message_id": "wamid.REPLYTO"}, "biz_opaque_callback_data": "01a2-our-message-id"})
    );
    // A business-scoped user id goes in `recipient`.
    send(meta.as_ref(), "US.13491208655302741918", &text).await;
    let body = fake.seen.lock().unwrap()[1].json();
    assert_eq!(
        (body.get("to"), body["recipient"].as_str()),
        (None, Some("US.13491208655302741918"))
    );
}

#[tokio::test]
async fn meta_errors_are_read_by_code_and_classified() {
    let (_fake, base) = fake(
        400,
        json!({"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
               "error_data": {"messaging_product": "whatsapp", "details": "Cloud API message throughput has been reached."},
               "error_subcode": 2494055, "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}}),
    )
    .await;
    let meta = client("meta", &base, &[("access_token", "t")]);
    let text = content(json!({"type": "text", "text": {"body": "Hi"}}));
    let Attempt::Rejected(failure) = send(meta.as_ref(), "+16505551234", &text).await else {
        panic!("expected a rejection")
    };
    assert_eq!(failure.code, Some(130_429));
    assert_eq!(
        failure.message,
        "Cloud API message throughput has been reached."
    );
    assert_eq!(
        react("meta", &failure, 1),
        Reaction::RetryChannel(Duration::from_secs(1))
    );

    let failure = |code| ProviderFailure {
        http_status: 400,
        code: Some(code),
        message: String::new(),
    };
    let cases = [
        (131_056, 1, Reaction::RetryRecipient(Duration::from_secs(1))),
        (
            131_056,
            3,
            Reaction::RetryRecipient(Duration::from_secs(16)),
        ),
        (4, 1, Reaction::RetryChannel(Duration::from_secs(60))),
        (80_007, 1, Reaction::RetryChannel(Duration::from_secs(60))),
        (131_057, 1, Reaction::RetryChannel(Duration::from_secs(60))),
        (131_000, 1, Reaction::Retry),
        (131_016, 1, Reaction::Retry),
        (131_047, 1, Reaction::Fail { opt_out: false }),
        (131_026, 1, Reaction::Fail { opt_out: false }),
        (131_050, 1, Reaction::Fail { opt_out: true }),
        (132_000, 1, Reaction::Fail { opt_out: false }),
        (132_001, 1, Reaction::Fail { opt_out: false }),
        (131_051, 1, Reaction::Fail { opt_out: false }),
        (368, 1, Reaction::Fail { opt_out: false }),
        (131_048, 1, Reaction::PauseChannel),
        (190, 1, Reaction::CredentialsInvalid),
    ];
    for (code, attempts, expected) in cases {
        assert_eq!(react("meta", &failure(code), attempts), expected, "{code}");
    }
    let bare = |status| ProviderFailure {
        http_status: status,
        code: None,
        message: String::new(),
    };
    assert_eq!(react("meta", &bare(503), 1), Reaction::Retry);
    assert_eq!(
        react("gupshup", &bare(429), 1),
        Reaction::RetryChannel(Duration::from_secs(1))
    );
    assert_eq!(react("bird", &bare(401), 1), Reaction::CredentialsInvalid);
}

#[tokio::test]
async fn unanswered_requests_are_unknown_and_refused_connections_are_not_sent() {
    // A gateway error without a provider error may hide a send that happened.
    let (_fake, base) = fake(502, json!({})).await;
    let meta = client("meta", &base, &[("access_token", "t")]);
    let text = content(json!({"type": "text", "text": {"body": "Hi"}}));
    assert!(matches!(
        send(meta.as_ref(), "+16505551234", &text).await,
        Attempt::Ambiguous(_)
    ));
    // A provider that never answers: the client's timeout makes it ambiguous too.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_base = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (socket, _) = silent.accept().await.unwrap();
            held.push(socket);
        }
    });
    let meta = client("meta", &silent_base, &[("access_token", "t")]);
    assert!(matches!(
        send(meta.as_ref(), "+16505551234", &text).await,
        Attempt::Ambiguous(_)
    ));
    // Nothing listening: certainly not sent.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let meta = client("meta", &closed, &[("access_token", "t")]);
    assert!(matches!(
        send(meta.as_ref(), "+16505551234", &text).await,
        Attempt::NotSent(_)
    ));
}

#[tokio::test]
async fn dialog360_uses_its_key_header_and_no_number_in_the_path() {
    let (fake, base) = fake(
        200,
        json!({"messaging_product": "whatsapp", "messages": [{"id": "wamid.D360"}]}),
    )
    .await;
    let d360 = client("360dialog", &base, &[("api_key", "d360-key")]);
    let image = content(
        json!({"type": "image", "image": {"link": "https://x.test/a.png", "caption": "Receipt"}}),
    );
    assert_eq!(
        send(d360.as_ref(), "+16505551234", &image).await,
        Attempt::Accepted("wamid.D360".into())
    );
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.uri.path(), "/messages");
    assert_eq!(seen.headers["d360-api-key"], "d360-key");
    assert_eq!(seen.json()["image"]["caption"], "Receipt");
}

#[tokio::test]
async fn twilio_posts_a_form_with_whatsapp_addresses_and_content_templates() {
    let (fake, base) = fake(
        201,
        json!({"sid": "SM1234567890abcdef1234567890abcdef", "status": "queued"}),
    )
    .await;
    let twilio = client(
        "twilio",
        &base,
        &[("account_sid", "AC123"), ("auth_token", "tw-token")],
    );
    let template = content(
        json!({"type": "template", "template": {"name": "HXabc", "language": {"code": "en"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "Friday"}]}]}}),
    );
    assert_eq!(
        send(twilio.as_ref(), "+16505551234", &template).await,
        Attempt::Accepted("SM1234567890abcdef1234567890abcdef".into())
    );
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.uri.path(), "/2010-04-01/Accounts/AC123/Messages.json");
    assert!(
        seen.headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(seen.field("From").as_deref(), Some("whatsapp:+15550783881"));
    assert_eq!(seen.field("To").as_deref(), Some("whatsapp:+16505551234"));
    assert_eq!(seen.field("ContentSid").as_deref(), Some("HXabc"));
    assert_eq!(
        serde_json::from_str::<Value>(&seen.field("ContentVariables").unwrap()).unwrap(),
        json!({"1": "Ana", "2": "Friday"})
    );
    assert_eq!(
        seen.field("StatusCallback").as_deref(),
        Some("https://waypost.example/webhooks/twilio/ch")
    );

    *fake.answer.lock().unwrap() = (
        400,
        json!({"code": 63016, "message": "Failed to send freeform message because you are outside the allowed window.", "status": 400}),
    );
    let text = content(json!({"type": "text", "text": {"body": "Hi"}}));
    let Attempt::Rejected(failure) = send(twilio.as_ref(), "+16505551234", &text).await else {
        panic!()
    };
    assert_eq!(failure.code, Some(63_016));
    assert_eq!(
        react("twilio", &failure, 1),
        Reaction::Fail { opt_out: false }
    );
    assert!(
        failure.to_json("twilio")["explanation"]
            .as_str()
            .unwrap()
            .contains("24 hours")
    );
}

#[tokio::test]
async fn gupshup_posts_the_message_as_json_in_a_form() {
    let (fake, base) = fake(
        202,
        json!({"status": "submitted", "messageId": "ee4a68a0-1203-4c85-8dc3-49d0b3226a35"}),
    )
    .await;
    let gupshup = client("gupshup", &base, &[("api_key", "gs-key")]);
    let text = content(json!({"type": "text", "text": {"body": "Hi"}}));
    assert_eq!(
        send(gupshup.as_ref(), "+919876543210", &text).await,
        Attempt::Accepted("ee4a68a0-1203-4c85-8dc3-49d0b3226a35".into())
    );
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.uri.path(), "/wa/api/v1/msg");
    assert_eq!(seen.headers["apikey"], "gs-key");
    assert_eq!(seen.field("channel").as_deref(), Some("whatsapp"));
    assert_eq!(seen.field("source").as_deref(), Some("15550783881"));
    assert_eq!(seen.field("destination").as_deref(), Some("919876543210"));
    assert_eq!(seen.field("src.name").as_deref(), Some("DemoApp"));
    assert_eq!(
        serde_json::from_str::<Value>(&seen.field("message").unwrap()).unwrap()["text"],
        "Hi"
    );
    let template = content(
        json!({"type": "template", "template": {"name": "welcome", "language": {"code": "en"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]}}),
    );
    send(gupshup.as_ref(), "+919876543210", &template).await;
    let seen = fake.seen.lock().unwrap()[1].clone();
    assert_eq!(seen.uri.path(), "/wa/api/v1/template/msg");
    assert_eq!(
        serde_json::from_str::<Value>(&seen.field("template").unwrap()).unwrap(),
        json!({"id": "welcome", "params": ["Ana"]})
    );
}

#[tokio::test]
async fn bird_posts_to_the_workspace_channel_with_an_access_key() {
    let (fake, base) = fake(
        202,
        json!({"id": "5c7b3b1e-0a3b-4a0e-9a67-1f3c2b0c9d11", "status": "accepted"}),
    )
    .await;
    let bird = client(
        "bird",
        &base,
        &[("api_key", "bird-key"), ("signing_key", "s")],
    );
    let location = content(
        json!({"type": "location", "location": {"latitude": 38.7, "longitude": -9.1, "name": "Shop"}}),
    );
    assert_eq!(
        send(bird.as_ref(), "+351910000000", &location).await,
        Attempt::Accepted("5c7b3b1e-0a3b-4a0e-9a67-1f3c2b0c9d11".into())
    );
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.uri.path(), "/workspaces/ws-1/channels/ch-2/messages");
    assert_eq!(seen.headers["authorization"], "AccessKey bird-key");
    let body = seen.json();
    assert_eq!(
        body["receiver"]["contacts"][0]["identifierValue"],
        "+351910000000"
    );
    assert_eq!(body["body"]["type"], "location");
    assert_eq!(body["body"]["location"]["coordinates"]["latitude"], 38.7);
}

#[tokio::test]
async fn templates_are_listed_across_pages_created_and_deleted_at_meta() {
    let (fake, base) = fake(
        200,
        json!({"data": [{"name": "hello_world", "language": "en_US", "status": "APPROVED", "category": "UTILITY", "id": "1"}],
               "paging": {"cursors": {"before": "a"}}}),
    )
    .await;
    let meta = client("meta", &base, &[("access_token", "t")]);
    let listed = meta.list_templates().await.unwrap();
    assert_eq!(listed.len(), 1);
    let seen = fake.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.uri.path(), "/v25.0/102290129340398/message_templates");
    assert!(seen.uri.query().unwrap().contains("fields="));
    meta.delete_template("hello_world", Some("1"))
        .await
        .unwrap();
    let seen = fake.seen.lock().unwrap()[1].clone();
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(seen.uri.query(), Some("name=hello_world&hsm_id=1"));
    // BSPs without a template API say so instead of pretending.
    let twilio = client(
        "twilio",
        &base,
        &[("account_sid", "AC1"), ("auth_token", "x")],
    );
    assert_eq!(
        twilio.list_templates().await.unwrap_err().code(),
        waypost_core::ErrorCode::ValidationFailed
    );
}

#[tokio::test]
async fn media_is_fetched_with_each_providers_credentials_and_only_from_its_host() {
    use waypost_outbound::provider::MediaRef;
    // Meta: the id's URL first, then the file, both with the token.
    let (server, base) = fake(200, json!({"url": "http://127.0.0.1:1/unused", "id": "m1"})).await;
    let file_url = format!("{base}/whatsapp_business/attachments/?mid=m1");
    *server.answer.lock().unwrap() = (200, json!({"url": file_url}));
    let meta = client("meta", &base, &[("access_token", "EAAG-secret")]);
    let by_id = MediaRef {
        id: Some("m1"),
        url: None,
    };
    assert!(meta.fetch_media(&by_id).await.is_ok());
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen[0].uri.path(), "/v25.0/m1");
    assert_eq!(seen[1].uri.path(), "/whatsapp_business/attachments/");
    assert!(
        seen.iter()
            .all(|s| s.headers["authorization"] == "Bearer EAAG-secret")
    );

    // 360dialog: Meta's lookaside host is swapped for 360dialog's own, with its key.
    let (server, base) = fake(
        200,
        json!({"url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=m2&ext=1"}),
    )
    .await;
    let d360 = client("360dialog", &base, &[("api_key", "d360-key")]);
    assert!(
        d360.fetch_media(&MediaRef {
            id: Some("m2"),
            url: None
        })
        .await
        .is_ok()
    );
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen[0].uri.path(), "/m2");
    assert_eq!(seen[1].uri.path(), "/whatsapp_business/attachments/");
    assert_eq!(seen[1].uri.query(), Some("mid=m2&ext=1"));
    assert!(seen.iter().all(|s| s.headers["d360-api-key"] == "d360-key"));

    // Twilio: the webhook's URL, with the account's credentials on Twilio's host only.
    let (server, base) = fake(200, json!({})).await;
    let twilio = client(
        "twilio",
        &base,
        &[("account_sid", "AC1"), ("auth_token", "tok")],
    );
    let own = format!("{base}/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1");
    twilio
        .fetch_media(&MediaRef {
            id: None,
            url: Some(&own),
        })
        .await
        .unwrap();
    assert!(
        server.seen.lock().unwrap()[0].headers["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    // Another host is not Twilio's: refused, and nothing reaches it.
    let (elsewhere, other_base) = fake(200, json!({})).await;
    let refused = twilio
        .fetch_media(&MediaRef {
            id: None,
            url: Some(&format!("{other_base}/m.jpg")),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), waypost_core::ErrorCode::EgressRefused);
    assert!(elsewhere.seen.lock().unwrap().is_empty());
    // A configured Twilio media host gets the request, but not the credentials.
    let hosts = MediaHosts::default().with("twilio", vec!["localhost".into()]);
    let twilio = client_with(
        "twilio",
        &base,
        &[("account_sid", "AC1"), ("auth_token", "tok")],
        http(&["127.0.0.0/8"], hosts),
    );
    let storage = other_base.replace("127.0.0.1", "localhost");
    twilio
        .fetch_media(&MediaRef {
            id: None,
            url: Some(&format!("{storage}/m.jpg")),
        })
        .await
        .unwrap();
    assert!(
        elsewhere.seen.lock().unwrap()[0]
            .headers
            .get("authorization")
            .is_none()
    );

    // Gupshup: a signed link, fetched as it is; a missing file is not found.
    let (server, base) = fake(404, json!({})).await;
    let gupshup = client("gupshup", &base, &[("api_key", "gs-key")]);
    let missing = gupshup
        .fetch_media(&MediaRef {
            id: None,
            url: Some(&format!("{base}/f.jpg")),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), waypost_core::ErrorCode::NotFound);
    assert!(
        server.seen.lock().unwrap()[0]
            .headers
            .get("apikey")
            .is_none()
    );
    // A message without a URL says so.
    assert_eq!(
        gupshup
            .fetch_media(&MediaRef {
                id: Some("x"),
                url: None
            })
            .await
            .unwrap_err()
            .code(),
        waypost_core::ErrorCode::ValidationFailed
    );
}

#[tokio::test]
async fn a_channel_pointed_at_an_internal_address_is_refused_without_connecting() {
    let (server, base) = fake(200, json!({"messages": [{"id": "wamid.X"}]})).await;
    let strict = client_with(
        "meta",
        &base,
        &[("access_token", "EAAG-secret")],
        http(&[], MediaHosts::default()),
    );
    let text = content(json!({"type": "text", "text": {"body": "hi"}}));
    match send(strict.as_ref(), "+15551234567", &text).await {
        Attempt::Refused(why) => assert!(why.contains("127.0.0.1"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let templates = strict.list_templates().await.unwrap_err();
    assert_eq!(templates.code(), waypost_core::ErrorCode::EgressRefused);
    assert!(
        server.seen.lock().unwrap().is_empty(),
        "nothing may connect"
    );
}
