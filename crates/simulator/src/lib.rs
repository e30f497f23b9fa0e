//! A stand-in for the slice of Meta's WhatsApp Cloud API that Waypost uses, for newcomers
//! without Meta credentials and for tests of pacing and delivery. Point a channel's
//! `graph_api_base_url` at `http://HOST/simulator/graph`.
//!
//! - `POST /simulator/inbound` injects a message "from a customer": it is wrapped in Meta's
//!   webhook envelope, signed with the app secret and delivered to the webhook URL.
//! - `POST /simulator/graph/{version}/{phone_number_id}/messages` accepts sends like the Cloud
//!   API, enforcing the number's throughput (130429), the pair rate to one recipient (131056)
//!   and the 24-hour window (131047), then delivers signed `sent`, `delivered` and `read`
//!   statuses (or `failed`, at a configurable rate) echoing `biz_opaque_callback_data`.
//! - `GET /simulator/graph/{version}/{media_id}` and `/simulator/media/{id}` serve media like
//!   the Graph API.
//! - `GET /simulator/graph/{version}/{waba_id}/message_templates` lists a few approved
//!   templates, in pages like the Graph API.
//! - `GET /simulator/stats` counts what was sent, for checking that nothing was sent twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use waypost_providers::signature::sign_meta;

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Where signed webhooks go (a Waypost channel's callback URL).
    pub webhook_url: String,
    pub app_secret: String,
    pub phone_number_id: String,
    pub display_number: String,
    pub waba_id: String,
    /// Sends per second the number accepts before answering 130429.
    pub throughput_mps: u32,
    /// Minimum time between two sends to one recipient before 131056.
    pub pair_interval: Duration,
    /// Share of accepted sends that later fail (0.0 to 1.0), and with which error code.
    pub failure_rate: f64,
    pub failure_code: i64,
    /// Pause between the `sent`, `delivered` and `read` statuses.
    pub status_delay: Duration,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            webhook_url: String::new(),
            app_secret: String::new(),
            phone_number_id: "100000000000001".into(),
            display_number: "15550000001".into(),
            waba_id: "200000000000001".into(),
            throughput_mps: 80,
            pair_interval: Duration::from_secs(6),
            failure_rate: 0.0,
            failure_code: 131_026,
            status_delay: Duration::from_millis(200),
        }
    }
}

/// What the simulator has seen, for tests and for `GET /simulator/stats`.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub rejected: HashMap<String, u64>,
    /// How many times each `biz_opaque_callback_data` was accepted (above 1 is a duplicate).
    pub by_callback_data: HashMap<String, u64>,
    pub webhooks_delivered: u64,
    pub webhooks_failed: u64,
}

struct Inner {
    config: SimulatorConfig,
    http: reqwest::Client,
    /// Start of the current one-second window and sends counted in it.
    window: (Instant, u32),
    last_send_to: HashMap<String, Instant>,
    last_inbound_from: HashMap<String, SystemTime>,
    stats: Stats,
}

#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Mutex<Inner>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn wamid() -> String {
    format!("wamid.SIM{}", uuid::Uuid::now_v7().simple())
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 1.0;
    }
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

/// A Cloud API error body, as Meta sends it.
fn graph_error(code: i64, message: &str) -> Response {
    let body = json!({"error": {"message": format!("(#{code}) {message}"), "type": "OAuthException", "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": message}, "fbtrace_id": "SIMULATOR"}});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// A customer message to inject.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Inject {
    /// The customer's number, digits with country code (omit to send as a phone-less user).
    pub from: Option<String>,
    /// A business-scoped user id (e.g. `US.123…`).
    pub bsuid: Option<String>,
    pub name: Option<String>,
    /// `text` (default), `image`, `location`, `button_reply` or `reaction`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub text: Option<String>,
    /// A click-to-WhatsApp referral object, passed through as given.
    pub referral: Option<Value>,
    /// For reactions and replies: the message they refer to.
    pub message_id: Option<String>,
    /// The type's object exactly as Meta sends it (e.g. a `video`, `contacts`, `order` or
    /// `system` object); overrides the built-in example, so every message type can be sent.
    pub object: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Injected {
    pub wamid: String,
    /// The webhook receiver's HTTP status.
    pub webhook_status: u16,
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::new(Mutex::new(Inner {
                config,
                http,
                window: (Instant::now(), 0),
                last_send_to: HashMap::new(),
                last_inbound_from: HashMap::new(),
                stats: Stats::default(),
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
        self.inner.lock().ok().map(|mut inner| f(&mut inner))
    }

    pub fn stats(&self) -> Stats {
        self.with(|i| i.stats.clone()).unwrap_or_default()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/simulator/inbound", post(inject_handler))
            .route("/simulator/stats", get(stats_handler))
            .route("/simulator/media/{id}", get(media_bytes))
            .route(
                "/simulator/graph/{version}/{id}/messages",
                post(send_handler),
            )
            .route("/simulator/graph/{version}/{id}", get(media_info))
            .route(
                "/simulator/graph/{version}/{id}/message_templates",
                get(templates),
            )
            .with_state(self.clone())
    }

    /// Signs `value` and posts it to the webhook URL; returns the receiver's status.
    async fn deliver(&self, value: &Value) -> u16 {
        let Some((url, secret, http)) = self.with(|i| {
            (
                i.config.webhook_url.clone(),
                i.config.app_secret.clone(),
                i.http.clone(),
            )
        }) else {
            return 0;
        };
        let body = value.to_string().into_bytes();
        let signature = sign_meta(secret.as_bytes(), &body);
        let status = match http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
        {
            Ok(resp) => resp.status().as_u16(),
            Err(err) => {
                tracing::warn!(error = %err, "simulator could not deliver a webhook");
                0
            }
        };
        self.with(|i| {
            if status == 200 {
                i.stats.webhooks_delivered += 1
            } else {
                i.stats.webhooks_failed += 1
            }
        });
        status
    }

    fn envelope(&self, value: Value) -> Value {
        let (phone_number_id, display, waba) = self
            .with(|i| {
                (
                    i.config.phone_number_id.clone(),
                    i.config.display_number.clone(),
                    i.config.waba_id.clone(),
                )
            })
            .unwrap_or_default();
        let mut value = value;
        if let Value::Object(map) = &mut value {
            map.insert("messaging_product".into(), json!("whatsapp"));
            map.insert(
                "metadata".into(),
                json!({"display_phone_number": display, "phone_number_id": phone_number_id}),
            );
        }
        json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": [{"field": "messages", "value": value}]}]})
    }

    /// Delivers a customer message as a signed webhook.
    pub async fn inject(&self, message: Inject) -> Injected {
        let id = wamid();
        let kind = message.kind.clone().unwrap_or_else(|| "text".into());
        let text = message
            .text
            .clone()
            .unwrap_or_else(|| "Hello from the simulator".into());
        let mut body = json!({"id": id, "timestamp": now_secs().to_string(), "type": kind});
        let object = match kind.as_str() {
            "image" => {
                json!({"id": format!("sim-media-{}", uuid::Uuid::now_v7().simple()), "mime_type": "image/png", "sha256": "c2ltdWxhdG9y", "caption": text})
            }
            "location" => json!({"latitude": 38.7223, "longitude": -9.1393, "name": text}),
            "reaction" => {
                json!({"message_id": message.message_id.clone().unwrap_or_default(), "emoji": "👍"})
            }
            "button_reply" => {
                body["type"] = json!("interactive");
                json!({"type": "button_reply", "button_reply": {"id": "sim-button", "title": text}})
            }
            _ => json!({"body": text}),
        };
        let key = if kind == "button_reply" {
            "interactive".to_string()
        } else {
            kind.clone()
        };
        body[key.as_str()] = message.object.clone().unwrap_or(object);
        if let Some(from) = &message.from {
            body["from"] = json!(from);
        }
        if let Some(bsuid) = &message.bsuid {
            body["from_user_id"] = json!(bsuid);
        }
        if let Some(referral) = &message.referral {
            body["referral"] = referral.clone();
        }
        let mut contact = json!({"profile": {"name": message.name.clone().unwrap_or_else(|| "Simulated customer".into())}});
        if let Some(from) = &message.from {
            contact["wa_id"] = json!(from);
            self.with(|i| i.last_inbound_from.insert(from.clone(), SystemTime::now()));
        }
        if let Some(bsuid) = &message.bsuid {
            contact["user_id"] = json!(bsuid);
        }
        let envelope = self.envelope(json!({"contacts": [contact], "messages": [body]}));
        let webhook_status = self.deliver(&envelope).await;
        Injected {
            wamid: id,
            webhook_status,
        }
    }

    /// The send path: limits first, then acceptance and asynchronous statuses.
    fn admit(&self, recipient: &str, free_form: bool) -> Result<(), (i64, &'static str)> {
        self.with(|i| {
            let now = Instant::now();
            if now.duration_since(i.window.0) >= Duration::from_secs(1) {
                i.window = (now, 0);
            }
            if i.window.1 >= i.config.throughput_mps {
                return Err((130_429, "Rate limit hit"));
            }
            if let Some(last) = i.last_send_to.get(recipient)
                && now.duration_since(*last) < i.config.pair_interval
            {
                return Err((
                    131_056,
                    "(Business Account, Consumer Account) pair rate limit hit",
                ));
            }
            let in_window = i.last_inbound_from.get(recipient).is_some_and(|at| {
                SystemTime::now()
                    .duration_since(*at)
                    .is_ok_and(|age| age < Duration::from_secs(24 * 3600))
            });
            if free_form && !in_window {
                return Err((131_047, "Re-engagement message"));
            }
            i.window.1 += 1;
            i.last_send_to.insert(recipient.to_string(), now);
            Ok(())
        })
        .unwrap_or(Err((131_000, "Something went wrong")))
    }

    fn count_rejection(&self, code: i64) {
        self.with(|i| *i.stats.rejected.entry(code.to_string()).or_insert(0) += 1);
    }

    async fn statuses(self, message_id: String, recipient: String, callback: Option<String>) {
        let (delay, fail, code) = self
            .with(|i| {
                (
                    i.config.status_delay,
                    random_unit() < i.config.failure_rate,
                    i.config.failure_code,
                )
            })
            .unwrap_or((Duration::from_millis(200), false, 0));
        let steps: &[&str] = if fail {
            &["failed"]
        } else {
            &["sent", "delivered", "read"]
        };
        for status in steps {
            tokio::time::sleep(delay).await;
            let mut object = json!({"id": message_id, "status": status, "timestamp": now_secs().to_string(), "recipient_id": recipient});
            if let Some(data) = &callback {
                object["biz_opaque_callback_data"] = json!(data);
            }
            if *status == "failed" {
                object["errors"] = json!([{"code": code, "title": "Message undeliverable", "message": "Message undeliverable",
                    "error_data": {"details": "simulated failure"}}]);
            } else if *status == "sent" {
                object["pricing"] =
                    json!({"billable": true, "pricing_model": "PMP", "category": "utility"});
            }
            let envelope = self.envelope(json!({"statuses": [object]}));
            self.deliver(&envelope).await;
        }
    }
}

async fn inject_handler(State(sim): State<Simulator>, Json(message): Json<Inject>) -> Response {
    if message.from.is_none() && message.bsuid.is_none() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "give from (digits) or bsuid"})),
        )
            .into_response();
    }
    Json(sim.inject(message).await).into_response()
}

async fn stats_handler(State(sim): State<Simulator>) -> Json<Stats> {
    Json(sim.stats())
}

async fn send_handler(
    State(sim): State<Simulator>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let expected = sim
        .with(|i| i.config.phone_number_id.clone())
        .unwrap_or_default();
    if phone_number_id != expected {
        return graph_error(100, "Unsupported post request: unknown phone number id");
    }
    // Marking a message read has no recipient.
    if body.get("status").and_then(Value::as_str) == Some("read") {
        return Json(json!({"success": true})).into_response();
    }
    let Some(recipient) = body
        .get("to")
        .or_else(|| body.get("recipient"))
        .and_then(Value::as_str)
        .map(|r| r.trim_start_matches('+').to_string())
    else {
        return graph_error(100, "Invalid parameter: to");
    };
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("text");
    if let Err((code, message)) = sim.admit(&recipient, kind != "template") {
        sim.count_rejection(code);
        return graph_error(code, message);
    }
    let id = wamid();
    let callback = body
        .get("biz_opaque_callback_data")
        .and_then(Value::as_str)
        .map(str::to_string);
    sim.with(|i| {
        i.stats.accepted += 1;
        if let Some(data) = &callback {
            *i.stats.by_callback_data.entry(data.clone()).or_insert(0) += 1;
        }
    });
    tokio::spawn(
        sim.clone()
            .statuses(id.clone(), recipient.clone(), callback),
    );
    let mut answer = json!({"messaging_product": "whatsapp", "contacts": [{"input": recipient, "wa_id": recipient}], "messages": [{"id": id}]});
    if kind == "template" {
        answer["messages"][0]["message_status"] = json!("accepted");
    }
    Json(answer).into_response()
}

async fn media_info(
    State(sim): State<Simulator>,
    Path((_version, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    if headers.get("authorization").is_none() {
        return graph_error(190, "Invalid OAuth access token");
    }
    let _ = sim;
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    Json(json!({"messaging_product": "whatsapp", "url": format!("http://{host}/simulator/media/{id}"), "mime_type": "image/png",
        "sha256": "c2ltdWxhdG9y", "file_size": 8, "id": id}))
    .into_response()
}

/// A tiny PNG signature stands in for every file.
async fn media_bytes() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "image/png")],
        &b"\x89PNG\r\n\x1a\n"[..],
    )
}

/// Two pages of templates, linked by `paging.next` like the Graph API.
async fn templates(
    headers: axum::http::HeaderMap,
    Path((version, waba)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if headers.get("authorization").is_none() {
        return graph_error(190, "Invalid OAuth access token");
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let template = |name: &str, category: &str, body: &str| {
        json!({"name": name, "status": "APPROVED", "category": category, "language": "en_US", "parameter_format": "POSITIONAL",
            "id": format!("sim-{name}"), "components": [{"type": "BODY", "text": body}]})
    };
    if query.as_deref().is_some_and(|q| q.contains("after=page2")) {
        return Json(json!({"data": [template("order_update", "UTILITY", "Your order {{1}} is {{2}}.")], "paging": {"cursors": {"before": "page2"}}})).into_response();
    }
    Json(json!({
        "data": [template("hello_world", "UTILITY", "Hello from the simulator!"), template("seasonal_offer", "MARKETING", "Hi {{1}}, {{2}} off this week.")],
        "paging": {"cursors": {"after": "page2"}, "next": format!("http://{host}/simulator/graph/{version}/{waba}/message_templates?after=page2")}
    }))
    .into_response()
}
