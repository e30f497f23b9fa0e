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
//! - `GET|POST|DELETE /simulator/graph/{version}/{waba_id}/message_templates` lists templates
//!   in pages like the Graph API, submits one (approved a moment later by a signed
//!   `message_template_status_update` webhook) and deletes one.
//! - `POST /simulator/graph/{version}/{phone_number_id}/media` takes an upload.
//! - `GET /simulator/stats` counts what was sent, for checking that nothing was sent twice.
//! - `PUT /simulator/numbers/{phone_number_id}` registers another number with its own
//!   webhook URL, app secret and throughput; `POST /simulator/faults` makes the next sends
//!   fail with given error codes (130429, 131048, 190, ...).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, State},
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
    /// Sends per second the number accepts before answering 130429 (a token bucket holding
    /// one second of sends).
    pub throughput_mps: u32,
    /// Pair rate: after a burst of `pair_burst` sends to one recipient, one per
    /// `pair_interval`; faster answers 131056.
    pub pair_interval: Duration,
    pub pair_burst: u32,
    /// When set, sends must carry this bearer token (else error 190).
    pub access_token: Option<String>,
    /// When set, the control routes (inject, stats, numbers, faults) require
    /// `Authorization: Bearer <token>`: inside `waypost serve` they sit on the server's port.
    pub control_token: Option<String>,
    /// Share of accepted sends that later fail (0.0 to 1.0), and with which error code.
    pub failure_rate: f64,
    pub failure_code: i64,
    /// Pause between the `sent`, `delivered` and `read` statuses.
    pub status_delay: Duration,
    /// How long a webhook the receiver does not take is retried, with decreasing frequency
    /// (Meta: up to 7 days; tests shorten it).
    pub retry_window: Duration,
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
            pair_burst: 3,
            access_token: None,
            control_token: None,
            failure_rate: 0.0,
            failure_code: 131_026,
            status_delay: Duration::from_millis(200),
            retry_window: Duration::from_secs(7 * 24 * 3600),
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
    pub accepted_by_number: HashMap<String, u64>,
    /// Milliseconds since the first accepted send, per recipient (for pacing checks).
    pub send_times_by_recipient: HashMap<String, Vec<u64>>,
    pub media_uploads: u64,
    /// Bytes received by uploads (multipart framing included).
    pub uploaded_bytes: u64,
    pub reads: u64,
    pub webhooks_delivered: u64,
    /// Deliveries the receiver did not take (each retry counts).
    pub webhooks_failed: u64,
    /// Webhooks given up on after the retry window.
    pub webhooks_dropped: u64,
}

/// A number the simulator serves, with its throughput bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NumberConfig {
    pub webhook_url: String,
    pub app_secret: String,
    pub throughput_mps: u32,
    #[serde(default)]
    pub display_number: Option<String>,
    /// The WhatsApp Business Account the number belongs to (default: the configured one).
    #[serde(default)]
    pub waba_id: Option<String>,
}

struct NumberState {
    config: NumberConfig,
    tokens: f64,
    refilled: Instant,
}

impl NumberState {
    /// A full bucket: one second of sends.
    fn new(config: NumberConfig) -> Self {
        Self {
            tokens: f64::from(config.throughput_mps),
            config,
            refilled: Instant::now(),
        }
    }
}

/// The number given in the simulator's own configuration.
fn configured_number(config: &SimulatorConfig) -> NumberConfig {
    NumberConfig {
        webhook_url: config.webhook_url.clone(),
        app_secret: config.app_secret.clone(),
        throughput_mps: config.throughput_mps,
        display_number: Some(config.display_number.clone()),
        waba_id: Some(config.waba_id.clone()),
    }
}

struct Inner {
    config: SimulatorConfig,
    http: reqwest::Client,
    numbers: HashMap<String, NumberState>,
    /// Theoretical arrival time per (number, recipient), for the pair rate (GCRA).
    pair_tat: HashMap<(String, String), Instant>,
    last_inbound_from: HashMap<String, SystemTime>,
    /// Error codes the next sends fail with.
    faults: std::collections::VecDeque<i64>,
    templates: Vec<Value>,
    started: Instant,
    stats: Stats,
}

/// The largest body the simulator reads, uploads aside.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// WhatsApp's largest media file (documents).
const MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;

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
                numbers: HashMap::new(),
                pair_tat: HashMap::new(),
                last_inbound_from: HashMap::new(),
                faults: std::collections::VecDeque::new(),
                templates: default_templates(),
                started: Instant::now(),
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

    /// The simulator's routes. The Graph API routes check the number's access token like
    /// Meta; the control routes need the control token when one is configured. Bodies are
    /// limited like the API's: 1 MiB, uploads 100 MiB (streamed, never held whole).
    pub fn router(&self) -> Router {
        let control = Router::new()
            .route("/simulator/inbound", post(inject_handler))
            .route("/simulator/stats", get(stats_handler))
            .route(
                "/simulator/numbers/{id}",
                axum::routing::put(number_handler),
            )
            .route("/simulator/faults", post(faults_handler))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                require_control_token,
            ));
        let upload = Router::new()
            .route(
                "/simulator/graph/{version}/{id}/media",
                post(upload_handler),
            )
            .layer(DefaultBodyLimit::disable());
        Router::new()
            .route("/simulator/media/{id}", get(media_bytes))
            .route(
                "/simulator/graph/{version}/{id}/messages",
                post(send_handler),
            )
            .route("/simulator/graph/{version}/{id}", get(graph_object))
            .route(
                "/simulator/graph/{version}/{id}/phone_numbers",
                get(phone_numbers),
            )
            .route(
                "/simulator/graph/{version}/{id}/message_templates",
                get(templates).post(create_template).delete(delete_template),
            )
            .merge(control)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .merge(upload)
            .with_state(self.clone())
    }

    /// Registers (or changes) a number served besides the configured one.
    pub fn add_number(&self, phone_number_id: &str, config: NumberConfig) {
        self.with(|i| {
            i.numbers
                .insert(phone_number_id.to_string(), NumberState::new(config))
        });
    }

    /// Makes the next sends fail with these error codes, in order.
    pub fn inject_faults(&self, codes: &[i64]) {
        self.with(|i| i.faults.extend(codes.iter().copied()));
    }

    /// The configured number's settings, or a registered number's.
    fn number_config(i: &Inner, phone_number_id: &str) -> Option<NumberConfig> {
        if let Some(n) = i.numbers.get(phone_number_id) {
            return Some(n.config.clone());
        }
        (phone_number_id == i.config.phone_number_id).then(|| configured_number(&i.config))
    }

    /// Signs `value` with the number's app secret and posts it to its webhook URL; returns
    /// the receiver's status.
    async fn deliver(&self, phone_number_id: &str, value: &Value) -> u16 {
        let Some((url, secret, http)) = self.with(|i| {
            let number = Self::number_config(i, phone_number_id)
                .unwrap_or_else(|| configured_number(&i.config));
            (number.webhook_url, number.app_secret, i.http.clone())
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

    /// Like Meta, retries a webhook the receiver did not take, with decreasing frequency
    /// (the pause doubles up to an hour) for the retry window; then it is counted as dropped.
    async fn deliver_with_retries(&self, phone_number_id: &str, value: &Value) {
        let window = self
            .with(|i| i.config.retry_window)
            .unwrap_or(Duration::from_secs(60));
        let give_up = Instant::now() + window;
        let mut pause = Duration::from_millis(200);
        loop {
            if self.deliver(phone_number_id, value).await == 200 {
                return;
            }
            let now = Instant::now();
            if now >= give_up {
                self.with(|i| i.stats.webhooks_dropped += 1);
                tracing::warn!("simulator gave up on a webhook after its retry window");
                return;
            }
            tokio::time::sleep(pause.min(give_up - now)).await;
            pause = (pause * 2).min(Duration::from_secs(3600));
        }
    }

    fn envelope(&self, phone_number_id: &str, value: Value) -> Value {
        let (display, waba) = self
            .with(|i| {
                let number = Self::number_config(i, phone_number_id);
                (
                    number
                        .as_ref()
                        .and_then(|n| n.display_number.clone())
                        .unwrap_or_else(|| i.config.display_number.clone()),
                    number
                        .and_then(|n| n.waba_id)
                        .unwrap_or_else(|| i.config.waba_id.clone()),
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
        let number = self
            .with(|i| i.config.phone_number_id.clone())
            .unwrap_or_default();
        let envelope = self.envelope(&number, json!({"contacts": [contact], "messages": [body]}));
        let webhook_status = self.deliver(&number, &envelope).await;
        Injected {
            wamid: id,
            webhook_status,
        }
    }

    /// The send path: injected faults, then the number's throughput, the pair rate and the
    /// window; on acceptance the send is counted.
    fn admit(
        &self,
        phone_number_id: &str,
        recipient: &str,
        free_form: bool,
    ) -> Result<(), (i64, &'static str)> {
        self.with(|i| {
            if let Some(code) = i.faults.pop_front() {
                return Err((code, "Injected fault"));
            }
            let now = Instant::now();
            // An unregistered number is served with the configured number's settings.
            let number = Self::number_config(i, phone_number_id)
                .unwrap_or_else(|| configured_number(&i.config));
            let rate = f64::from(number.throughput_mps.max(1));
            let state = i
                .numbers
                .entry(phone_number_id.to_string())
                .or_insert_with(|| NumberState::new(number));
            state.tokens =
                (state.tokens + now.duration_since(state.refilled).as_secs_f64() * rate).min(rate);
            state.refilled = now;
            if state.tokens < 1.0 {
                return Err((130_429, "Rate limit hit"));
            }
            // GCRA: each send moves the recipient's theoretical arrival time on by one
            // interval; a burst may run ahead of now by (burst - 1) intervals.
            let interval = i.config.pair_interval;
            let tolerance = interval * i.config.pair_burst.saturating_sub(1);
            let key = (phone_number_id.to_string(), recipient.to_string());
            let tat = i.pair_tat.get(&key).copied().unwrap_or(now).max(now);
            if tat.duration_since(now) > tolerance {
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
            if let Some(state) = i.numbers.get_mut(phone_number_id) {
                state.tokens -= 1.0;
            }
            i.pair_tat.insert(key, tat + interval);
            let since_start =
                u64::try_from(now.duration_since(i.started).as_millis()).unwrap_or(u64::MAX);
            i.stats
                .send_times_by_recipient
                .entry(recipient.to_string())
                .or_default()
                .push(since_start);
            Ok(())
        })
        .unwrap_or(Err((131_000, "Something went wrong")))
    }

    fn count_rejection(&self, code: i64) {
        self.with(|i| *i.stats.rejected.entry(code.to_string()).or_insert(0) += 1);
    }

    async fn statuses(
        self,
        phone_number_id: String,
        message_id: String,
        recipient: String,
        callback: Option<String>,
    ) {
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
            let envelope = self.envelope(&phone_number_id, json!({"statuses": [object]}));
            self.deliver_with_retries(&phone_number_id, &envelope).await;
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

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The control routes answer only to the control token, when one is configured.
async fn require_control_token(
    State(sim): State<Simulator>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let expected = sim.with(|i| i.config.control_token.clone()).flatten();
    match expected {
        Some(token) if bearer(request.headers()) != Some(token.as_str()) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "the simulator's control routes need Authorization: Bearer <simulator token>"})),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

fn authorized(sim: &Simulator, headers: &axum::http::HeaderMap) -> bool {
    let expected = sim.with(|i| i.config.access_token.clone()).flatten();
    let given = bearer(headers);
    match expected {
        Some(token) => given == Some(token.as_str()),
        None => given.is_some(),
    }
}

fn invalid_token() -> Response {
    let mut response = graph_error(190, "Error validating access token: the session is invalid");
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

async fn send_handler(
    State(sim): State<Simulator>,
    Path((_version, phone_number_id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let known = sim
        .with(|i| Simulator::number_config(i, &phone_number_id).is_some())
        .unwrap_or(false);
    if !known {
        return graph_error(100, "Unsupported post request: unknown phone number id");
    }
    if !authorized(&sim, &headers) {
        return invalid_token();
    }
    // Marking a message read has no recipient.
    if body.get("status").and_then(Value::as_str) == Some("read") {
        sim.with(|i| i.stats.reads += 1);
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
    if let Err((code, message)) = sim.admit(&phone_number_id, &recipient, kind != "template") {
        sim.count_rejection(code);
        let mut response = graph_error(code, message);
        if code == 190 {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        return response;
    }
    let id = wamid();
    let callback = body
        .get("biz_opaque_callback_data")
        .and_then(Value::as_str)
        .map(str::to_string);
    sim.with(|i| {
        i.stats.accepted += 1;
        *i.stats
            .accepted_by_number
            .entry(phone_number_id.clone())
            .or_insert(0) += 1;
        if let Some(data) = &callback {
            *i.stats.by_callback_data.entry(data.clone()).or_insert(0) += 1;
        }
    });
    tokio::spawn(
        sim.clone()
            .statuses(phone_number_id, id.clone(), recipient.clone(), callback),
    );
    let mut answer = json!({"messaging_product": "whatsapp", "contacts": [{"input": recipient, "wa_id": recipient}], "messages": [{"id": id}]});
    if kind == "template" {
        answer["messages"][0]["message_status"] = json!("accepted");
    }
    Json(answer).into_response()
}

async fn number_handler(
    State(sim): State<Simulator>,
    Path(id): Path<String>,
    Json(config): Json<NumberConfig>,
) -> StatusCode {
    sim.add_number(&id, config);
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct Faults {
    codes: Vec<i64>,
}

async fn faults_handler(State(sim): State<Simulator>, Json(faults): Json<Faults>) -> StatusCode {
    sim.inject_faults(&faults.codes);
    StatusCode::NO_CONTENT
}

/// Reads the upload as it streams in (counting, keeping nothing), like a file store would.
async fn upload_handler(
    State(sim): State<Simulator>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Response {
    use futures_util::StreamExt;
    if !authorized(&sim, &headers) {
        return invalid_token();
    }
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return graph_error(131_053, "Media upload error: the upload was cut");
        };
        size += chunk.len() as u64;
        if size > MAX_UPLOAD_BYTES {
            return graph_error(131_053, "Media upload error: the file is too large");
        }
    }
    if size == 0 {
        return graph_error(100, "Param file is required");
    }
    sim.with(|i| {
        i.stats.media_uploads += 1;
        i.stats.uploaded_bytes += size;
    });
    Json(json!({"id": format!("sim-upload-{}", uuid::Uuid::now_v7().simple())})).into_response()
}

/// `GET /{id}`: a phone number the simulator serves (its profile, as Meta answers with
/// `fields=display_phone_number,verified_name,quality_rating,messaging_limit_tier`), else a
/// media id's download URL.
async fn graph_object(
    State(sim): State<Simulator>,
    Path((_version, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !authorized(&sim, &headers) {
        return invalid_token();
    }
    if let Some(number) = sim.with(|i| Simulator::number_config(i, &id)).flatten() {
        return Json(number_profile(&id, &number)).into_response();
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    Json(json!({"messaging_product": "whatsapp", "url": format!("http://{host}/simulator/media/{id}"), "mime_type": "image/png",
        "sha256": "c2ltdWxhdG9y", "file_size": 8, "id": id}))
    .into_response()
}

fn number_profile(id: &str, number: &NumberConfig) -> Value {
    json!({"id": id, "display_phone_number": number.display_number.clone().unwrap_or_default(),
        "verified_name": "Simulated business", "quality_rating": "GREEN",
        "messaging_limit_tier": "TIER_1K", "throughput": {"level": "STANDARD"}})
}

/// `GET /{waba_id}/phone_numbers`: the numbers of one business account.
async fn phone_numbers(
    State(sim): State<Simulator>,
    Path((_version, waba)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !authorized(&sim, &headers) {
        return invalid_token();
    }
    let numbers = sim
        .with(|i| {
            let mut all: Vec<(String, NumberConfig)> = i
                .numbers
                .iter()
                .map(|(id, n)| (id.clone(), n.config.clone()))
                .collect();
            if !i.numbers.contains_key(&i.config.phone_number_id) {
                all.push((
                    i.config.phone_number_id.clone(),
                    configured_number(&i.config),
                ));
            }
            all.into_iter()
                .filter(|(_, n)| n.waba_id.as_deref().unwrap_or(&i.config.waba_id) == waba)
                .map(|(id, n)| number_profile(&id, &n))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    Json(json!({"data": numbers})).into_response()
}

/// A tiny PNG signature stands in for every file; like Meta's media host it wants the token.
async fn media_bytes(State(sim): State<Simulator>, headers: axum::http::HeaderMap) -> Response {
    if !authorized(&sim, &headers) {
        return invalid_token();
    }
    (
        [(axum::http::header::CONTENT_TYPE, "image/png")],
        &b"\x89PNG\r\n\x1a\n"[..],
    )
        .into_response()
}

fn template_object(name: &str, category: &str, body: &str, status: &str) -> Value {
    json!({"name": name, "status": status, "category": category, "language": "en_US", "parameter_format": "POSITIONAL",
        "id": format!("sim-{name}"), "components": [{"type": "BODY", "text": body}]})
}

fn default_templates() -> Vec<Value> {
    vec![
        template_object(
            "hello_world",
            "UTILITY",
            "Hello from the simulator!",
            "APPROVED",
        ),
        template_object(
            "seasonal_offer",
            "MARKETING",
            "Hi {{1}}, {{2}} off this week.",
            "APPROVED",
        ),
        template_object(
            "order_update",
            "UTILITY",
            "Your order {{1}} is {{2}}.",
            "APPROVED",
        ),
    ]
}

/// The templates in pages of two, linked by `paging.next` like the Graph API.
async fn templates(
    State(sim): State<Simulator>,
    headers: axum::http::HeaderMap,
    Path((version, waba)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if !authorized(&sim, &headers) {
        return invalid_token();
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let all = sim.with(|i| i.templates.clone()).unwrap_or_default();
    let start = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("after=page")))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let page: Vec<Value> = all.iter().skip(start).take(2).cloned().collect();
    let mut paging = json!({"cursors": {"before": format!("page{start}")}});
    if start + 2 < all.len() {
        let next = start + 2;
        paging["cursors"]["after"] = json!(format!("page{next}"));
        paging["next"] = json!(format!(
            "http://{host}/simulator/graph/{version}/{waba}/message_templates?after=page{next}"
        ));
    }
    Json(json!({"data": page, "paging": paging})).into_response()
}

/// Takes a template as pending, then approves it by webhook like Meta's review would.
async fn create_template(
    State(sim): State<Simulator>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&sim, &headers) {
        return invalid_token();
    }
    let Some(name) = body.get("name").and_then(Value::as_str).map(str::to_string) else {
        return graph_error(100, "Param name is required");
    };
    let exists = sim
        .with(|i| i.templates.iter().any(|t| t["name"] == json!(name)))
        .unwrap_or(false);
    if exists {
        return graph_error(2_388_024, "Content in this language already exists");
    }
    let id = format!("sim-{name}");
    let category = body.get("category").cloned().unwrap_or(json!("UTILITY"));
    let mut stored = body.clone();
    stored["id"] = json!(id);
    stored["status"] = json!("PENDING");
    sim.with(|i| i.templates.push(stored));
    let approver = sim.clone();
    let language = body.get("language").cloned().unwrap_or(json!("en_US"));
    let (template_id, template_name) = (id.clone(), name.clone());
    tokio::spawn(async move {
        let delay = approver
            .with(|i| i.config.status_delay)
            .unwrap_or(Duration::from_millis(200));
        tokio::time::sleep(delay).await;
        approver.with(|i| {
            for t in &mut i.templates {
                if t["name"] == json!(template_name) {
                    t["status"] = json!("APPROVED");
                }
            }
        });
        let (number, waba) = approver
            .with(|i| (i.config.phone_number_id.clone(), i.config.waba_id.clone()))
            .unwrap_or_default();
        let envelope = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": now_secs(),
            "changes": [{"field": "message_template_status_update", "value": {"event": "APPROVED",
                "message_template_id": template_id, "message_template_name": template_name,
                "message_template_language": language, "reason": "NONE"}}]}]});
        approver.deliver_with_retries(&number, &envelope).await;
    });
    Json(json!({"id": id, "status": "PENDING", "category": category})).into_response()
}

async fn delete_template(
    State(sim): State<Simulator>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&sim, &headers) {
        return invalid_token();
    }
    let Some(name) = query.get("name").cloned() else {
        return graph_error(100, "Param name is required");
    };
    let removed = sim
        .with(|i| {
            let before = i.templates.len();
            i.templates.retain(|t| t["name"] != json!(name));
            before != i.templates.len()
        })
        .unwrap_or(false);
    if !removed {
        return graph_error(100, "Template not found");
    }
    Json(json!({"success": true})).into_response()
}
