//! Sending through the binary against the Cloud API simulator: the send API and its refusals,
//! templates, pacing, Meta's error signals, and no duplicate after a SIGKILL, on SQLite and
//! PostgreSQL.

use std::{collections::HashMap, time::Duration};

use serde_json::{Value, json};
use waypost_simulator::{Inject, NumberConfig, Simulator, SimulatorConfig, Stats};
use waypost_store::testkit::test_databases;

use crate::process::{Scratch, Server};

const NUMBER_ID: &str = "100000000000001";
const TOKEN: &str = "EAAG-simulated-token";
const APP_SECRET: &str = "sim-app-secret";

/// A simulator in this test process (it outlives server restarts) on a random port.
async fn simulator(config: SimulatorConfig) -> (Simulator, String) {
    let sim = Simulator::new(SimulatorConfig {
        access_token: Some(TOKEN.into()),
        status_delay: Duration::from_millis(50),
        ..config
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (sim, base)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `waypost serve` on a fixed port (so a restarted server gets the simulator's webhooks).
fn serve(scratch: &Scratch, url: &str, port: u16, env: &[(&str, &str)]) -> Server {
    let listen = format!("127.0.0.1:{port}");
    let args = ["serve", "--listen", listen.as_str(), "--database-url", url];
    // The simulator and the fake providers listen on this machine: allow loopback.
    let mut all = vec![
        ("WAYPOST_JOBS__POLL_INTERVAL_MS", "50"),
        ("WAYPOST_EGRESS__ALLOW", "127.0.0.1"),
    ];
    all.extend_from_slice(env);
    Server::start(&scratch.0, &args, &all)
}

struct Rig {
    scratch: Scratch,
    /// `None` only while a killed server is being replaced.
    server: Option<Server>,
    key: String,
    sim: Simulator,
    sim_mps: u32,
    callback: String,
    channel: String,
    client: reqwest::Client,
    port: u16,
    url: String,
}

impl Rig {
    async fn start(
        url: &str,
        throughput: i64,
        sim_config: SimulatorConfig,
        env: &[(&str, &str)],
    ) -> Rig {
        let sim_mps = sim_config.throughput_mps;
        let (sim, sim_base) = simulator(sim_config).await;
        let scratch = Scratch::new();
        let port = free_port();
        let mut server = serve(&scratch, url, port, env);
        let key = server.wait_for_stdout("  wp_").trim().to_string();
        let client = reqwest::Client::new();
        let created: Value = client
            .post(server.url("/api/v1/channels"))
            .bearer_auth(&key)
            .json(&json!({"name": "Simulated", "phone_number_id": NUMBER_ID, "waba_id": "200000000000001",
                "access_token": TOKEN, "app_secret": APP_SECRET, "throughput_mps": throughput,
                "graph_api_base_url": format!("{sim_base}/simulator/graph")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let channel = created["id"].as_str().unwrap().to_string();
        let rig = Rig {
            scratch,
            server: Some(server),
            key,
            sim,
            sim_mps,
            callback: created["webhook"]["callback_url"]
                .as_str()
                .unwrap()
                .to_string(),
            channel,
            client,
            port,
            url: url.to_string(),
        };
        rig.sim.add_number(
            NUMBER_ID,
            NumberConfig {
                webhook_url: rig.callback.clone(),
                app_secret: APP_SECRET.into(),
                throughput_mps: rig.sim_mps,
                display_number: Some("15550000001".into()),
                waba_id: None,
            },
        );
        let synced = rig
            .post(
                &format!("/api/v1/channels/{}/templates/sync", rig.channel),
                json!({}),
            )
            .await;
        assert_eq!(synced.0, 200, "{}", synced.1);
        rig
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("a running server")
    }

    /// A request to the server with the owner key.
    fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.server().url(path))
            .bearer_auth(&self.key)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .call(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn send(&self, message: Value) -> (u16, Value) {
        let mut body = message;
        body["channel_id"] = json!(self.channel);
        self.post("/api/v1/messages", body).await
    }

    /// Waits until the message reaches `status` (or a later one in `accept`).
    async fn wait_status(&self, id: &str, accept: &[&str]) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let message = self.get(&format!("/api/v1/messages/{id}")).await;
            if accept.contains(&message["status"].as_str().unwrap_or_default()) {
                return message;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message stayed {message}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn customer_writes(&self, from: &str, text: &str) {
        let injected = self
            .sim
            .inject(Inject {
                from: Some(from.into()),
                text: Some(text.into()),
                ..Inject::default()
            })
            .await;
        assert_eq!(injected.webhook_status, 200);
    }

    async fn wait_send_state(&self, state: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let channel = self
                .get(&format!("/api/v1/channels/{}", self.channel))
                .await;
            if channel["send_state"] == state {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{channel}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Queues the approved `hello_world` template to `to`; the message id.
    async fn send_hello(&self, to: Value) -> String {
        let mut body = template("hello_world", &[]);
        body["to"] = to;
        let (status, queued) = self.send(body).await;
        assert_eq!(status, 202, "{queued}");
        queued["id"].as_str().unwrap().to_string()
    }
}

fn template(name: &str, params: &[&str]) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|p| json!({"type": "text", "text": p}))
        .collect();
    let components = if parameters.is_empty() {
        json!([])
    } else {
        json!([{"type": "body", "parameters": parameters}])
    };
    json!({"type": "template", "template": {"name": name, "language": {"code": "en_US"}, "components": components}})
}

fn duplicates(stats: &Stats) -> Vec<(&String, &u64)> {
    stats
        .by_callback_data
        .iter()
        .filter(|(_, n)| **n > 1)
        .collect()
}

#[tokio::test]
async fn the_send_api_checks_first_then_sends_once_and_follows_the_status() {
    for db in test_databases().await {
        let rig = Rig::start(&db.url, 80, SimulatorConfig::default(), &[]).await;
        let customer = "14155550100";

        // Outside the window only templates may go; the refusal changes nothing.
        let contacts_before = rig.get("/api/v1/contacts").await["data"]
            .as_array()
            .unwrap()
            .len();
        let (status, problem) = rig
            .send(json!({"to": format!("+{customer}"), "type": "text", "text": {"body": "hi"}}))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("window_closed")),
            "{problem}"
        );
        assert!(problem["detail"].as_str().unwrap().contains("template"));
        assert_eq!(
            rig.get("/api/v1/contacts").await["data"]
                .as_array()
                .unwrap()
                .len(),
            contacts_before
        );

        // A template opens no window but needs no window either.
        let mut body = template("order_update", &["A-17", "shipped"]);
        body["to"] = json!(format!("+{customer}"));
        let (status, queued) = rig.send(body).await;
        assert_eq!(status, 202, "{queued}");
        assert_eq!(queued["status"], "queued");
        let sent = rig
            .wait_status(queued["id"].as_str().unwrap(), &["read"])
            .await;
        assert!(
            sent["provider_message_id"]
                .as_str()
                .unwrap()
                .starts_with("wamid.SIM")
        );
        assert_eq!(sent["category"], "utility");

        // Once the customer writes, free-form replies flow: queued → ... → read.
        rig.customer_writes(customer, "Where is my order?").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, queued) = rig
            .send(json!({"to": format!("+{customer}"), "type": "text", "text": {"body": "On its way!", "preview_url": true}}))
            .await;
        assert_eq!(status, 202, "{queued}");
        let read = rig
            .wait_status(queued["id"].as_str().unwrap(), &["read"])
            .await;
        assert_eq!(read["direction"], "outbound");
        assert_eq!(read["content"]["text"]["body"], "On its way!");

        // Template checks: unknown, wrong parameter count, bad recipient.
        for (body, code) in [
            (template("no_such_template", &[]), "template_invalid"),
            (template("order_update", &["only one"]), "template_invalid"),
        ] {
            let mut body = body;
            body["to"] = json!(format!("+{customer}"));
            let (status, problem) = rig.send(body).await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (422, Some(code)),
                "{problem}"
            );
        }
        let (status, problem) = rig
            .send(json!({"to": "not a number", "type": "text", "text": {"body": "x"}}))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("validation_failed")),
            "{problem}"
        );
        let (status, problem) = rig
            .send(json!({"to": "+14155550100", "type": "text", "text": {"body": ""}}))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("validation_failed")),
            "{problem}"
        );

        // STOP opts out of marketing: marketing templates are refused, utility ones are not.
        rig.customer_writes(customer, " stop ").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let contacts = rig.get("/api/v1/contacts").await;
            if contacts["data"][0]["marketing_consent"] == "opted_out" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{contacts}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut marketing = template("seasonal_offer", &["Ana", "20%"]);
        marketing["to"] = json!(format!("+{customer}"));
        let (status, problem) = rig.send(marketing).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("contact_opted_out")),
            "{problem}"
        );

        // Idempotency: the same key answers with the first message and sends once; another
        // body under the same key is refused.
        let body = json!({"channel_id": rig.channel, "to": "+14155550100", "type": "text", "text": {"body": "once"}});
        let mut ids = Vec::new();
        for _ in 0..3 {
            let resp = rig
                .call(reqwest::Method::POST, "/api/v1/messages")
                .header("Idempotency-Key", "order-17-shipped")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            ids.push(
                resp.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        rig.wait_status(&ids[0], &["read"]).await;
        assert_eq!(rig.sim.stats().by_callback_data.get(&ids[0]), Some(&1));
        let other = rig.call(reqwest::Method::POST, "/api/v1/messages")
            .header("Idempotency-Key", "order-17-shipped")
            .json(&json!({"channel_id": rig.channel, "to": "+14155550100", "type": "text", "text": {"body": "twice"}}))
            .send().await.unwrap();
        assert_eq!(other.status(), 422);
        assert_eq!(
            other.json::<Value>().await.unwrap()["code"],
            "idempotency_key_reused"
        );

        // Marking the customer's message read reaches the provider.
        let conversations = rig.get("/api/v1/conversations").await;
        let conversation = conversations["data"][0]["id"].as_str().unwrap();
        let messages = rig
            .get(&format!("/api/v1/conversations/{conversation}/messages"))
            .await;
        let inbound = messages["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["direction"] == "inbound")
            .unwrap();
        let (status, _) = rig
            .post(
                &format!("/api/v1/messages/{}/read", inbound["id"].as_str().unwrap()),
                json!({}),
            )
            .await;
        assert_eq!(status, 202);
        let (status, _) = rig
            .post(&format!("/api/v1/messages/{}/read", ids[0]), json!({}))
            .await;
        assert_eq!(status, 422, "an outbound message cannot be marked read");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rig.sim.stats().reads == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mark-read never reached the provider"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Uploads go to the provider and come back as a media id a send can use.
        let upload = rig
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/media?channel_id={}&filename=a.png", rig.channel),
            )
            .header("content-type", "image/png")
            .body(vec![0x89, b'P', b'N', b'G'])
            .send()
            .await
            .unwrap();
        assert_eq!(upload.status(), 201);
        let media: Value = upload.json().await.unwrap();
        let (status, queued) = rig.send(json!({"to": "+14155550100", "type": "image", "image": {"id": media["id"], "caption": "receipt"}})).await;
        assert_eq!(status, 202, "{queued}");
        rig.wait_status(queued["id"].as_str().unwrap(), &["read"])
            .await;
        assert_eq!(rig.sim.stats().media_uploads, 1);

        // The customer's own image streams back through the provider, by message.
        let injected = rig
            .sim
            .inject(Inject {
                from: Some(customer.into()),
                kind: Some("image".into()),
                text: Some("my receipt".into()),
                ..Inject::default()
            })
            .await;
        assert_eq!(injected.webhook_status, 200);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let image = loop {
            let messages = rig
                .get(&format!("/api/v1/conversations/{conversation}/messages"))
                .await;
            if let Some(image) = messages["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["kind"] == "image" && m["direction"] == "inbound")
            {
                break image.clone();
            }
            assert!(tokio::time::Instant::now() < deadline, "{messages}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let file = rig
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/messages/{}/media", image["id"].as_str().unwrap()),
            )
            .send()
            .await
            .unwrap();
        if file.status() != 200 {
            panic!("{}", file.text().await.unwrap());
        }
        assert_eq!(file.headers()["content-type"], "image/png");
        assert_eq!(&file.bytes().await.unwrap()[..4], b"\x89PNG");
        let text_media = rig
            .client
            .get(
                rig.server()
                    .url(&format!("/api/v1/messages/{}/media", ids[0])),
            )
            .bearer_auth(&rig.key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            text_media.status(),
            404,
            "an outbound text has no inbound media"
        );
        assert!(duplicates(&rig.sim.stats()).is_empty());
    }
}

#[tokio::test]
async fn templates_sync_submit_follow_webhooks_preview_and_delete() {
    let db = &test_databases().await[0];
    let rig = Rig::start(&db.url, 80, SimulatorConfig::default(), &[]).await;
    let list = rig
        .get(&format!("/api/v1/templates?channel_id={}", rig.channel))
        .await;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "every page was read: {list}");
    assert!(names.contains(&"seasonal_offer"));

    let (status, bad) = rig.post(&format!("/api/v1/channels/{}/templates", rig.channel),
        json!({"name": "Bad Name", "language": "en_US", "category": "UTILITY", "components": []})).await;
    assert_eq!(
        (status, bad["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let (status, created) = rig
        .post(
            &format!("/api/v1/channels/{}/templates", rig.channel),
            json!({"name": "delivery_slot", "language": "en_US", "category": "UTILITY",
               "components": [{"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
                              {"type": "BODY", "text": "Hi {{1}}, we deliver on {{2}}."},
                              {"type": "FOOTER", "text": "Reply STOP to opt out"}]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "PENDING");
    let id = created["id"].as_str().unwrap();
    // The simulator approves it by a signed template webhook, which updates the copy.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let t = rig.get(&format!("/api/v1/templates/{id}")).await;
        if t["status"] == "APPROVED" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, preview) = rig.post(&format!("/api/v1/templates/{id}/preview"), json!({"components": [
        {"type": "header", "parameters": [{"type": "text", "text": "A-17"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "Friday"}]}]})).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        preview,
        json!({"header": "Order A-17", "body": "Hi Ana, we deliver on Friday.", "footer": "Reply STOP to opt out", "buttons": []})
    );
    let (status, problem) = rig
        .post(
            &format!("/api/v1/templates/{id}/preview"),
            json!({"components": []}),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("template_invalid"))
    );

    let deleted = rig
        .call(reqwest::Method::DELETE, &format!("/api/v1/templates/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = rig
        .call(reqwest::Method::GET, &format!("/api/v1/templates/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let (status, synced) = rig
        .post(
            &format!("/api/v1/channels/{}/templates/sync", rig.channel),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, synced["synced"].as_u64()),
        (200, Some(3)),
        "deleted at the provider too"
    );
}

/// Sends `count` utility templates to distinct recipients; their message ids.
async fn burst(rig: &Rig, count: usize, first_number: u64) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let to = json!(format!("+1415555{:04}", first_number + n as u64));
        ids.push(rig.send_hello(to).await);
    }
    ids
}

/// Waits until the simulator accepted `count` sends.
async fn wait_accepted(sim: &Simulator, count: u64, within: Duration) -> Stats {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let stats = sim.stats();
        if stats.accepted >= count {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} sent: {stats:?}",
            stats.accepted
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn send_span_ms(stats: &Stats) -> u64 {
    let times: Vec<u64> = stats
        .send_times_by_recipient
        .values()
        .flatten()
        .copied()
        .collect();
    times.iter().max().unwrap() - times.iter().min().unwrap()
}

#[tokio::test]
async fn a_channel_sends_at_its_throughput_and_backs_off_when_meta_says_so() {
    let db = &test_databases().await[0];
    // A 20 messages/s number (one shared with the WhatsApp Business app): 60 messages take
    // about three seconds and never trip the provider's limit.
    let rig = Rig::start(
        &db.url,
        20,
        SimulatorConfig {
            throughput_mps: 20,
            ..SimulatorConfig::default()
        },
        &[],
    )
    .await;
    burst(&rig, 60, 1000).await;
    let stats = wait_accepted(&rig.sim, 60, Duration::from_secs(20)).await;
    let span = send_span_ms(&stats);
    assert!(
        (2_500..=4_000).contains(&span),
        "60 sends at 20/s took {span} ms"
    );
    assert!(stats.rejected.is_empty(), "{:?}", stats.rejected);
    drop(rig);
    let db = &test_databases().await[0];

    // A channel configured faster than the number really is: 130429 holds the channel and
    // every message still goes out exactly once.
    let rig = Rig::start(
        &db.url,
        1000,
        SimulatorConfig {
            throughput_mps: 10,
            ..SimulatorConfig::default()
        },
        &[],
    )
    .await;
    let ids = burst(&rig, 40, 2000).await;
    let stats = wait_accepted(&rig.sim, 40, Duration::from_secs(30)).await;
    assert!(
        stats.rejected.get("130429").copied().unwrap_or(0) > 0,
        "{stats:?}"
    );
    assert!(duplicates(&stats).is_empty());
    for id in &ids {
        assert_eq!(stats.by_callback_data.get(id), Some(&1), "{id}");
    }
}

#[tokio::test]
async fn the_pair_rate_paces_one_recipient_and_131056_retries_only_that_message() {
    let db = &test_databases().await[0];
    let sim_config = SimulatorConfig {
        pair_interval: Duration::from_secs(1),
        pair_burst: 2,
        ..SimulatorConfig::default()
    };
    let env = [
        ("WAYPOST_OUTBOUND__PAIR_INTERVAL_MS", "1000"),
        ("WAYPOST_OUTBOUND__PAIR_BURST", "2"),
    ];
    let rig = Rig::start(&db.url, 80, sim_config, &env).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut body = template("hello_world", &[]);
        body["to"] = json!("+14155550199");
        ids.push(rig.send(body).await.1["id"].as_str().unwrap().to_string());
    }
    let stats = wait_accepted(&rig.sim, 5, Duration::from_secs(20)).await;
    assert!(
        stats.rejected.is_empty(),
        "paced below the pair rate: {:?}",
        stats.rejected
    );
    // Two at once, then one a second: the fifth about three seconds after the first.
    let span = send_span_ms(&stats);
    assert!((2_700..=5_000).contains(&span), "{span} ms");

    // Meta's 131056 for one message: retried after a pause, nothing else held back.
    rig.sim.inject_faults(&[131_056]);
    let mut first = template("hello_world", &[]);
    first["to"] = json!("+14155550198");
    let paced = rig.send(first).await.1["id"].as_str().unwrap().to_string();
    let mut second = template("hello_world", &[]);
    second["to"] = json!("+14155550197");
    let other = rig.send(second).await.1["id"].as_str().unwrap().to_string();
    // Whichever reached the simulator first took the fault; both end up sent, once.
    let mut retried = 0;
    for id in [&paced, &other] {
        let message = rig.wait_status(id, &["sent", "delivered", "read"]).await;
        if message["error"].to_string().contains("131056") {
            retried += 1;
        }
    }
    assert_eq!(retried, 1);
    let stats = rig.sim.stats();
    assert_eq!(stats.rejected.get("131056"), Some(&1));
    assert!(duplicates(&stats).is_empty());
}

#[tokio::test]
async fn meta_signals_fail_pause_or_hold_the_channel() {
    let db = &test_databases().await[0];
    let rig = Rig::start(&db.url, 80, SimulatorConfig::default(), &[]).await;
    let to = |n: u64| json!(format!("+1415555{n:04}"));

    // 131026: undeliverable, never retried, explained in plain words.
    rig.sim.inject_faults(&[131_026]);
    let id = rig.send_hello(to(3001)).await;
    let failed = rig.wait_status(&id, &["failed"]).await;
    assert_eq!(failed["error"]["code"], 131_026);
    assert!(
        failed["error"]["explanation"]
            .as_str()
            .unwrap()
            .contains("WhatsApp")
    );

    // 131050 on a marketing send: failed, and the contact is opted out of marketing.
    rig.sim.inject_faults(&[131_050]);
    let mut body = template("seasonal_offer", &["Ana", "10%"]);
    body["to"] = to(3002);
    let id = rig.send(body.clone()).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    rig.wait_status(&id, &["failed"]).await;
    let (status, problem) = rig.send(body).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("contact_opted_out"))
    );

    // 190: the message stays queued and the channel is held until credentials are replaced.
    rig.sim.inject_faults(&[190]);
    let id = rig.send_hello(to(3003)).await;
    rig.wait_send_state("credentials_invalid").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rig.get(&format!("/api/v1/messages/{id}")).await["status"],
        "queued"
    );
    let resp = rig
        .client
        .put(
            rig.server()
                .url(&format!("/api/v1/channels/{}/credentials", rig.channel)),
        )
        .bearer_auth(&rig.key)
        .json(&json!({"access_token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    rig.wait_status(&id, &["sent", "delivered", "read"]).await;

    // 131048: spam limits pause the channel until someone resumes it.
    rig.sim.inject_faults(&[131_048]);
    let id = rig.send_hello(to(3004)).await;
    rig.wait_send_state("paused").await;
    assert_eq!(
        rig.get(&format!("/api/v1/messages/{id}")).await["status"],
        "queued"
    );
    let (status, _) = rig
        .post(
            &format!("/api/v1/channels/{}/resume", rig.channel),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    rig.wait_status(&id, &["sent", "delivered", "read"]).await;
    let (status, problem) = rig
        .post(
            &format!("/api/v1/channels/{}/resume", rig.channel),
            json!({}),
        )
        .await;
    assert_eq!((status, problem["code"].as_str()), (409, Some("conflict")));

    // Erasing a contact while its message waits on a paused channel drops the message.
    rig.sim.inject_faults(&[131_048]);
    let first = rig.send_hello(to(3005)).await;
    rig.wait_send_state("paused").await;
    let doomed = rig.send_hello(to(3006)).await;
    let contacts = rig.get("/api/v1/contacts?search=%2B14155553006").await;
    let contact = contacts["data"][0]["id"].as_str().unwrap().to_string();
    let erased = rig
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/contacts/{contact}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 204);
    let (status, _) = rig
        .post(
            &format!("/api/v1/channels/{}/resume", rig.channel),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    rig.wait_status(&first, &["sent", "delivered", "read"])
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rig.sim.stats().by_callback_data.contains_key(&doomed));
    let gone = rig
        .call(reqwest::Method::GET, &format!("/api/v1/messages/{doomed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    assert!(duplicates(&rig.sim.stats()).is_empty());
}

/// Messages by status, as the API reports them.
async fn statuses(rig: &Rig, ids: &[String]) -> HashMap<String, Vec<String>> {
    let mut by_status: HashMap<String, Vec<String>> = HashMap::new();
    for id in ids {
        let m = rig.get(&format!("/api/v1/messages/{id}")).await;
        by_status
            .entry(m["status"].as_str().unwrap().to_string())
            .or_default()
            .push(id.clone());
    }
    by_status
}

#[tokio::test]
async fn a_dispatcher_killed_mid_burst_never_sends_a_message_twice() {
    for db in test_databases().await {
        // Short leases: a killed process's channel and claimed jobs are taken over quickly.
        let env = [
            ("WAYPOST_OUTBOUND__LEASE_SECS", "2"),
            ("WAYPOST_JOBS__LEASE_SECS", "3"),
        ];
        let mut rig = Rig::start(&db.url, 80, SimulatorConfig::default(), &env).await;
        let ids = burst(&rig, 200, 4000).await;
        // Kill while sending (200 messages at 80/s take 2.5 s).
        wait_accepted(&rig.sim, 40, Duration::from_secs(10)).await;
        rig.server.take().expect("running").kill();
        let at_kill = rig.sim.stats().accepted;
        assert!(
            at_kill < 200,
            "the kill came too late to matter ({at_kill})"
        );
        // The same database and port: the restarted server takes the channel over.
        rig.server = Some(serve(&rig.scratch, &rig.url, rig.port, &env));
        // Pooled connections died with the old process.
        rig.client = reqwest::Client::new();

        // Everything ends sent or unknown; nothing twice.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let by_status = loop {
            let by_status = statuses(&rig, &ids).await;
            let settled = by_status
                .keys()
                .all(|s| matches!(s.as_str(), "read" | "unknown" | "failed"));
            if settled {
                break by_status;
            }
            if tokio::time::Instant::now() > deadline {
                for (status, ids) in &by_status {
                    if status != "read" {
                        for id in ids {
                            eprintln!("STUCK {}", rig.get(&format!("/api/v1/messages/{id}")).await);
                        }
                    }
                }
                eprintln!("STDERR {:?}", rig.server().stderr());
                let st = rig.sim.stats();
                eprintln!(
                    "SIM {:?} failed={} delivered={}",
                    st.rejected, st.webhooks_failed, st.webhooks_delivered
                );
                panic!(
                    "{:?}",
                    by_status
                        .iter()
                        .map(|(k, v)| (k, v.len()))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let stats = rig.sim.stats();
        assert!(
            duplicates(&stats).is_empty(),
            "duplicates: {:?}",
            duplicates(&stats)
        );
        let read = by_status.get("read").map_or(0, Vec::len);
        assert_eq!(
            read as u64, stats.accepted,
            "every accepted send reconciled to its message"
        );
        let unknown = by_status.get("unknown").map_or(0, Vec::len);
        assert!(
            unknown <= 16,
            "only calls in flight at the kill are unknown: {unknown}"
        );
        assert_eq!(read + unknown, ids.len(), "{by_status:?}");
        for id in by_status.get("unknown").into_iter().flatten() {
            assert!(
                !stats.by_callback_data.contains_key(id),
                "an unknown message was received"
            );
        }
    }
}

#[tokio::test]
async fn two_processes_share_a_channel_and_the_survivor_takes_it_over() {
    // Only PostgreSQL is shared by several processes.
    for db in test_databases().await.into_iter().skip(1) {
        let env = [
            ("WAYPOST_OUTBOUND__LEASE_SECS", "2"),
            ("WAYPOST_JOBS__LEASE_SECS", "3"),
        ];
        // 20 messages a second: the burst lasts ten seconds, long enough to kill mid-way.
        let sim_config = SimulatorConfig {
            throughput_mps: 20,
            ..SimulatorConfig::default()
        };
        let mut rig = Rig::start(&db.url, 20, sim_config, &env).await;
        let ids = burst(&rig, 200, 6000).await;
        // The first process holds the channel and is sending; a second one joins.
        wait_accepted(&rig.sim, 20, Duration::from_secs(10)).await;
        let other_scratch = Scratch::new();
        let other_port = free_port();
        let other = serve(&other_scratch, &db.url, other_port, &env);
        rig.server.take().expect("running").kill();
        let at_kill = rig.sim.stats().accepted;
        assert!(at_kill < 150, "{at_kill}");
        // The survivor receives the provider's webhooks from now on and must take the
        // channel's lease to finish the burst.
        let callback = rig
            .callback
            .replace(&format!(":{}/", rig.port), &format!(":{other_port}/"));
        rig.sim.add_number(
            NUMBER_ID,
            NumberConfig {
                webhook_url: callback,
                app_secret: APP_SECRET.into(),
                throughput_mps: rig.sim_mps,
                display_number: Some("15550000001".into()),
                waba_id: None,
            },
        );
        rig.server = Some(other);
        rig.client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let by_status = loop {
            let by_status = statuses(&rig, &ids).await;
            if by_status
                .keys()
                .all(|s| matches!(s.as_str(), "read" | "unknown"))
            {
                break by_status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                by_status
                    .iter()
                    .map(|(k, v)| (k, v.len()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let stats = rig.sim.stats();
        assert!(duplicates(&stats).is_empty());
        let read = by_status.get("read").map_or(0, Vec::len);
        assert_eq!(read as u64, stats.accepted);
        assert!(
            stats.accepted > at_kill + 30,
            "the survivor sent the rest: {at_kill} before the kill, {} in all",
            stats.accepted
        );
        assert!(read >= 190, "{read} of 200 sent");
        drop(other_scratch);
    }
}

#[tokio::test]
async fn transactional_sends_overtake_bulk_traffic_on_a_busy_channel() {
    let db = &test_databases().await[0];
    let sim_config = SimulatorConfig {
        throughput_mps: 20,
        ..SimulatorConfig::default()
    };
    let rig = Rig::start(&db.url, 20, sim_config, &[]).await;
    // Three seconds of campaign traffic queued first...
    for n in 0..60 {
        let mut body = template("hello_world", &[]);
        body["to"] = json!(format!("+1415555{:04}", 5000 + n));
        body["bulk"] = json!(true);
        assert_eq!(rig.send(body).await.0, 202);
    }
    // ...then one order confirmation: it goes out next, not after the campaign.
    let mut body = template("order_update", &["A-17", "confirmed"]);
    body["to"] = json!("+14155555999");
    let id = rig.send(body).await.1["id"].as_str().unwrap().to_string();
    rig.wait_status(&id, &["accepted", "sent", "delivered", "read"])
        .await;
    let ahead = rig.sim.stats().accepted;
    assert!(ahead < 20, "{ahead} bulk messages went first");
    wait_accepted(&rig.sim, 61, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_failure_reported_later_by_webhook_is_explained_and_confirmations_are_sent() {
    let db = &test_databases().await[0];
    let sim_config = SimulatorConfig {
        failure_rate: 1.0,
        failure_code: 131_026,
        ..SimulatorConfig::default()
    };
    let rig = Rig::start(&db.url, 80, sim_config, &[]).await;
    let id = rig.send_hello(json!("+14155550142")).await;
    let failed = rig.wait_status(&id, &["failed"]).await;
    assert_eq!(failed["error"]["code"], 131_026, "{failed}");
    assert!(
        failed["error"]["explanation"]
            .as_str()
            .unwrap()
            .contains("WhatsApp")
    );

    // A tenant's confirmation reply to STOP is queued with the opt-out and sent.
    let resp = rig
        .call(reqwest::Method::PUT, "/api/v1/settings/consent")
        .json(
            &json!({"opt_out_keywords": ["STOP"], "opt_in_keywords": ["START"],
            "confirmation_reply": "You will get no more offers. Reply START to undo."}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    rig.customer_writes("14155550143", "STOP").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let accepted = rig.sim.stats().accepted;
        if accepted >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no confirmation sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conversations = rig.get("/api/v1/conversations").await;
    let conversation = conversations["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["contact_wa_id"] == "14155550143")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let messages = rig
        .get(&format!("/api/v1/conversations/{conversation}/messages"))
        .await;
    let reply = messages["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["direction"] == "outbound")
        .unwrap();
    assert_eq!(
        reply["content"]["text"]["body"],
        "You will get no more offers. Reply START to undo."
    );
}

#[tokio::test]
async fn media_from_a_twilio_message_streams_back_with_the_accounts_credentials() {
    let db = &test_databases().await[0];
    // Twilio's API host stand-in: serves the file and remembers how it was asked.
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = asked.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let log = log.clone();
        async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            log.lock().unwrap().push(auth);
            (
                [("content-type", "image/jpeg")],
                b"\xff\xd8\xffjpeg".to_vec(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let twilio_api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let scratch = Scratch::new();
    let mut server = serve(&scratch, &db.url, free_port(), &[]);
    let key = server.wait_for_stdout("  wp_").trim().to_string();
    let client = reqwest::Client::new();
    let channel: Value = client
        .post(server.url("/api/v1/channels"))
        .bearer_auth(&key)
        .json(&json!({"provider": "twilio", "name": "Twilio", "display_number": "+1 415 523 8886",
            "account_sid": "AC123", "auth_token": "twilio-token", "graph_api_base_url": twilio_api}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let callback = channel["webhook"]["callback_url"]
        .as_str()
        .unwrap()
        .to_string();
    let media_url = format!("{twilio_api}/2010-04-01/Accounts/AC123/Messages/MM1/Media/ME1");
    let params: Vec<(String, String)> = [
        ("MessageSid", "MM1"),
        ("AccountSid", "AC123"),
        ("From", "whatsapp:+14155550177"),
        ("To", "whatsapp:+14155238886"),
        ("WaId", "14155550177"),
        ("MessageType", "image"),
        ("NumMedia", "1"),
        ("MediaUrl0", media_url.as_str()),
        ("MediaContentType0", "image/jpeg"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let signature = waypost_providers::signature::sign_twilio(b"twilio-token", &callback, &params);
    let answer = client
        .post(&callback)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let (_, messages) = crate::inbound::wait_for_messages(&client, &server, &key, 1).await;
    let message = &messages["data"][0];
    let file = client
        .get(server.url(&format!(
            "/api/v1/messages/{}/media",
            message["id"].as_str().unwrap()
        )))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.headers()["content-type"], "image/jpeg");
    assert_eq!(&file.bytes().await.unwrap()[..], b"\xff\xd8\xffjpeg");
    let seen = asked.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("Basic "), "{seen:?}");
}

#[tokio::test]
async fn a_131050_reported_by_webhook_opts_the_contact_out_once() {
    for db in test_databases().await {
        let sim_config = SimulatorConfig {
            failure_rate: 1.0,
            failure_code: 131_050,
            ..SimulatorConfig::default()
        };
        let rig = Rig::start(&db.url, 80, sim_config, &[]).await;
        let id = rig.send_hello(json!("+14155550144")).await;
        let failed = rig.wait_status(&id, &["failed"]).await;
        assert_eq!(failed["error"]["code"], 131_050, "{failed}");
        let contacts = rig.get("/api/v1/contacts?search=%2B14155550144").await;
        let contact = contacts["data"][0]["id"].as_str().unwrap();
        let detail = rig.get(&format!("/api/v1/contacts/{contact}")).await;
        assert_eq!(detail["marketing_consent"], "opted_out", "{detail}");
        let history = detail["consent_history"].as_array().unwrap();
        assert_eq!(history.len(), 1, "{detail}");
        assert_eq!(history[0]["source"], "meta_signal");
    }
}
