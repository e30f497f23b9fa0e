//! The simulator as Waypost sees it: signed webhooks out, Cloud API sends in, with Meta's
//! limits.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, http::HeaderMap, routing::post};
use serde_json::{Value, json};
use waypost_providers::{
    DeliveryStatus, InboundEvent, MessageContent, meta, signature::verify_meta,
};
use waypost_simulator::{Inject, Simulator, SimulatorConfig};

type Received = Arc<Mutex<Vec<InboundEvent>>>;

/// A webhook receiver that checks every signature and keeps the parsed events.
async fn receiver(secret: &'static str) -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let signature = headers
                    .get("x-hub-signature-256")
                    .and_then(|v| v.to_str().ok());
                assert!(
                    verify_meta(secret.as_bytes(), &body, signature).is_ok(),
                    "unsigned webhook"
                );
                sink.lock().unwrap().extend(meta::parse(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn start(config: SimulatorConfig) -> (String, Simulator) {
    let sim = Simulator::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, sim)
}

async fn send(client: &reqwest::Client, base: &str, body: Value) -> (u16, Value) {
    let resp = client
        .post(format!(
            "{base}/simulator/graph/v25.0/100000000000001/messages"
        ))
        .bearer_auth("t")
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn config(webhook_url: String) -> SimulatorConfig {
    SimulatorConfig {
        webhook_url,
        app_secret: "sim-secret".into(),
        status_delay: Duration::from_millis(10),
        ..SimulatorConfig::default()
    }
}

#[tokio::test]
async fn injected_messages_arrive_signed_in_metas_format() {
    let (url, received) = receiver("sim-secret").await;
    let (base, _sim) = start(config(url)).await;
    let client = reqwest::Client::new();
    let injected: Value = client
        .post(format!("{base}/simulator/inbound"))
        .json(&json!({"from": "14155550100", "name": "Ada", "text": "Hi!", "referral": {"source_type": "ad", "ctwa_clid": "ARAsim"}}))
        .send().await.unwrap().json().await.unwrap();
    assert_eq!(injected["webhook_status"], 200);
    client
        .post(format!("{base}/simulator/inbound"))
        .json(&json!({"bsuid": "US.999", "type": "image"}))
        .send()
        .await
        .unwrap();
    let events = received.lock().unwrap().clone();
    assert_eq!(events.len(), 2);
    let InboundEvent::Message(m) = &events[0] else {
        panic!()
    };
    assert_eq!(
        (m.provider_message_id.as_str(), m.from.wa_id.as_deref()),
        (injected["wamid"].as_str().unwrap(), Some("14155550100"))
    );
    assert_eq!(m.content, MessageContent::Text { body: "Hi!".into() });
    assert_eq!(
        m.referral.as_ref().unwrap().ctwa_clid.as_deref(),
        Some("ARAsim")
    );
    let InboundEvent::Message(phone_less) = &events[1] else {
        panic!()
    };
    assert_eq!(
        (
            phone_less.from.wa_id.as_deref(),
            phone_less.from.bsuid.as_deref()
        ),
        (None, Some("US.999"))
    );
    assert!(matches!(phone_less.content, MessageContent::Image { .. }));
    let bad = client
        .post(format!("{base}/simulator/inbound"))
        .json(&json!({"text": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}

#[tokio::test]
async fn sends_obey_the_window_the_pair_rate_and_throughput_and_report_statuses() {
    let (url, received) = receiver("sim-secret").await;
    let mut cfg = config(url);
    cfg.throughput_mps = 2;
    cfg.pair_burst = 1;
    let (base, sim) = start(cfg).await;
    let client = reqwest::Client::new();

    let (status, error) = send(&client, &base, json!({"messaging_product": "whatsapp", "to": "14155550100", "type": "text", "text": {"body": "hello"}})).await;
    assert_eq!(
        (status, error["error"]["code"].as_i64()),
        (400, Some(131_047)),
        "free-form outside the window"
    );
    sim.inject(Inject {
        from: Some("14155550100".into()),
        ..Inject::default()
    })
    .await;
    let (status, ok) = send(&client, &base, json!({"messaging_product": "whatsapp", "to": "+14155550100", "type": "text", "text": {"body": "hello"}, "biz_opaque_callback_data": "msg-1"})).await;
    assert_eq!(status, 200, "{ok}");
    let wamid = ok["messages"][0]["id"].as_str().unwrap().to_string();
    let (status, error) = send(
        &client,
        &base,
        json!({"to": "14155550100", "type": "template", "template": {"name": "t"}}),
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_i64()),
        (400, Some(131_056)),
        "pair rate"
    );
    // Templates skip the window; the third send this second hits the throughput limit.
    let (status, _) = send(
        &client,
        &base,
        json!({"to": "14155550101", "type": "template", "template": {"name": "t"}}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, error) = send(
        &client,
        &base,
        json!({"to": "14155550102", "type": "template", "template": {"name": "t"}}),
    )
    .await;
    assert_eq!(
        (status, error["error"]["code"].as_i64()),
        (400, Some(130_429)),
        "throughput"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let statuses: Vec<(DeliveryStatus, Option<String>)> = received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            InboundEvent::Status(s) if s.provider_message_id == wamid => {
                Some((s.status.clone(), s.biz_opaque_callback_data.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
        [
            DeliveryStatus::Sent,
            DeliveryStatus::Delivered,
            DeliveryStatus::Read
        ]
    );
    assert!(
        statuses.iter().all(|s| s.1.as_deref() == Some("msg-1")),
        "callback data echoed"
    );
    let stats = sim.stats();
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.by_callback_data["msg-1"], 1);
    assert_eq!(
        stats.rejected["131047"] + stats.rejected["131056"] + stats.rejected["130429"],
        3
    );
}

#[tokio::test]
async fn failures_come_back_as_failed_statuses_and_media_is_served() {
    let (url, received) = receiver("sim-secret").await;
    let mut cfg = config(url);
    cfg.failure_rate = 1.0;
    let (base, _sim) = start(cfg).await;
    let client = reqwest::Client::new();
    let (_, ok) = send(
        &client,
        &base,
        json!({"to": "1555", "type": "template", "template": {"name": "t"}}),
    )
    .await;
    let wamid = ok["messages"][0]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let failed = received.lock().unwrap().iter().any(|e| matches!(e, InboundEvent::Status(s) if s.provider_message_id == wamid && s.status == DeliveryStatus::Failed && s.errors[0].code == Some(131_026)));
    assert!(failed);

    let info: Value = client
        .get(format!("{base}/simulator/graph/v25.0/sim-media-1"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file = client
        .get(info["url"].as_str().unwrap())
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(file.headers()["content-type"], "image/png");
    assert!(file.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let stats: Value = client
        .get(format!("{base}/simulator/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["accepted"], 1);

    let first: Value = client
        .get(format!(
            "{base}/simulator/graph/v25.0/200000000000001/message_templates"
        ))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let next = first["paging"]["next"].as_str().unwrap();
    let second: Value = client
        .get(next)
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["data"][0]["name"], "order_update");
    assert!(second["paging"]["next"].is_null());
}

#[tokio::test]
async fn any_message_type_can_be_injected_with_its_meta_object() {
    let (url, received) = receiver("sim-secret").await;
    let (_base, sim) = start(config(url)).await;
    let object = json!({"original_message_id": "wamid.X", "message": {"type": "text", "text": {"body": "edited"}}});
    sim.inject(Inject {
        from: Some("1555".into()),
        kind: Some("edit".into()),
        object: Some(object),
        ..Inject::default()
    })
    .await;
    let order = json!({"catalog_id": "c", "product_items": [{"product_retailer_id": "sku", "quantity": 1, "item_price": 2.5, "currency": "EUR"}]});
    sim.inject(Inject {
        from: Some("1555".into()),
        kind: Some("order".into()),
        object: Some(order),
        ..Inject::default()
    })
    .await;
    let events = received.lock().unwrap().clone();
    assert!(
        matches!(&events[0], InboundEvent::Message(m) if matches!(&m.content, MessageContent::Edit { original_message_id, .. } if original_message_id == "wamid.X"))
    );
    assert!(
        matches!(&events[1], InboundEvent::Message(m) if matches!(&m.content, MessageContent::Order { items, .. } if items.len() == 1))
    );
}

/// A receiver that answers 503 to the first `refuse` webhooks, then 200; counts every call.
async fn flaky_receiver(refuse: usize) -> (String, Arc<Mutex<Vec<std::time::Instant>>>) {
    let calls: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let log = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let log = log.clone();
            async move {
                let mut calls = log.lock().unwrap();
                calls.push(std::time::Instant::now());
                if calls.len() <= refuse {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test]
async fn statuses_a_receiver_refuses_are_retried_less_and_less_often_within_the_window() {
    // A slow receiver is not a loss: retried with growing pauses until it takes the webhook.
    let (url, calls) = flaky_receiver(4).await;
    let (base, sim) = start(SimulatorConfig {
        retry_window: Duration::from_secs(30),
        ..config(url)
    })
    .await;
    let client = reqwest::Client::new();
    let (status, _) = send(
        &client,
        &base,
        json!({"messaging_product": "whatsapp", "to": "15550100001",
        "type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
    )
    .await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sim.stats().webhooks_delivered < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", sim.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let times = calls.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).take(4).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0]),
        "pauses grow: {gaps:?}"
    );
    assert_eq!(sim.stats().webhooks_dropped, 0);

    // Past the window it is given up on, and counted as such.
    let (url, _) = flaky_receiver(usize::MAX).await;
    let (base, sim) = start(SimulatorConfig {
        retry_window: Duration::from_millis(700),
        ..config(url)
    })
    .await;
    send(
        &client,
        &base,
        json!({"messaging_product": "whatsapp", "to": "15550100001",
        "type": "template", "template": {"name": "hello_world", "language": {"code": "en_US"}}}),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sim.stats().webhooks_dropped < 3 {
        assert!(std::time::Instant::now() < deadline, "{:?}", sim.stats());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
