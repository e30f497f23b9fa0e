//! Personal data through the binary: masked callers find none of it on any read route, and an
//! erased contact leaves no copy in the database, on SQLite and PostgreSQL.

use axum::{
    body::Bytes,
    http::{Method, StatusCode, Uri},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::header;
use serde_json::{Value, json};
use waypost_api::authz::{Permission, ROUTE_PERMISSIONS};
use waypost_core::Role;
use waypost_providers::signature::sign_meta;
use waypost_store::testkit::{Flavor, TestDb, test_databases};

use crate::process::{Scratch, Server, run_json};

const NUMBER: &str = "+14155557319";
const DIGITS: &str = "14155557319";
const NAME: &str = "Quintessa Varnhagen";
const BODY: &str = "Sentinel body Xylophone-4417";
const CAPTION: &str = "Sentinel caption Zebrafish-8812";
const MEDIA_URL: &str = "https://lookaside.example/sentinel-media-5521";
const HEADLINE: &str = "Sentinel referral Okapi-3390";
const REPLY: &str = "Sentinel reply Quokka-6604";
const NOTE: &str = "Sentinel note Ibis-2207";
/// A provider's failure text quoting the number and the name, as some do.
const PROVIDER_ERROR: &str = "Recipient +14155557319 (Quintessa Varnhagen) cannot receive this";

/// Someone else, who writes in the same webhook body as the sentinel contact.
const OTHER_DIGITS: &str = "14155558842";
const OTHER_TEXT: &str = "Other person's message";

const PHONE_NUMBER_ID: &str = "106540352242922";
const WABA_ID: &str = "102290129340398";
const APP_SECRET: &str = "privacy-app-secret";
const MEDIA_ID: &str = "991234567";

/// A Meta message id as Meta makes them: the customer's number sits base64-encoded inside.
fn wamid(digits: &str, n: u8) -> String {
    let mut raw = vec![0x1c, 0x18, 0x0b];
    raw.extend_from_slice(digits.as_bytes());
    raw.extend_from_slice(&[0x15, 0x02, 0x00, 0x12, 0x18, 0x14]);
    raw.extend_from_slice(format!("3A{n:018}").as_bytes());
    format!("wamid.{}", STANDARD.encode(raw))
}

/// Everything about the sentinel contact that must not show.
fn sentinels() -> Vec<String> {
    let mut all: Vec<String> = [
        NUMBER,
        DIGITS,
        NAME,
        BODY,
        CAPTION,
        MEDIA_URL,
        HEADLINE,
        REPLY,
        NOTE,
        PROVIDER_ERROR,
    ]
    .map(str::to_string)
    .to_vec();
    all.extend((1..=6).map(|n| wamid(DIGITS, n)));
    all
}

fn now_secs() -> i64 {
    waypost_core::Timestamp::now().as_millis() / 1000
}

/// A Meta webhook body with one change.
fn envelope(field: &str, value: Value) -> Vec<u8> {
    let mut value = value;
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] =
        json!({"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID});
    json!({"object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"field": field, "value": value}]}]})
    .to_string()
    .into_bytes()
}

fn person(wa_id: &str, name: &str) -> Value {
    json!({"profile": {"name": name}, "wa_id": wa_id})
}

/// A message object from `from` of `kind` with its type object.
fn message(from: &str, id: &str, kind: &str, object: Value) -> Value {
    let mut m = json!({"from": from, "id": id, "timestamp": now_secs().to_string(), "type": kind});
    m[kind] = object;
    m
}

fn messages(people: Vec<Value>, messages: Vec<Value>) -> Vec<u8> {
    envelope(
        "messages",
        json!({"contacts": people, "messages": messages}),
    )
}

/// A stand-in for Meta's Graph API: marks read, lists one template, and refuses every send
/// with a failure text that quotes the recipient.
async fn fake_graph() -> String {
    let app = axum::Router::new().fallback(|method: Method, uri: Uri, body: Bytes| async move {
        let path = uri.path().to_string();
        let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if method == Method::GET && path.ends_with("/message_templates") {
            let template = json!({"id": "tpl-1", "name": "order_update", "language": "en_US",
                "status": "APPROVED", "category": "UTILITY",
                "components": [{"type": "BODY", "text": "Order {{1}} is {{2}}"}]});
            return (StatusCode::OK, json!({"data": [template]}).to_string());
        }
        if method == Method::POST && path.ends_with("/messages") && sent["status"] == "read" {
            return (StatusCode::OK, json!({"success": true}).to_string());
        }
        let error = json!({"error": {"message": "(#131026) Message undeliverable", "code": 131026,
            "error_data": {"messaging_product": "whatsapp", "details": PROVIDER_ERROR}}});
        (StatusCode::BAD_REQUEST, error.to_string())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A server with a Meta channel and the sentinel contact in every place personal data goes.
struct Seeded {
    scratch: Scratch,
    /// `None` only while restarting.
    server: Option<Server>,
    client: reqwest::Client,
    owner: String,
    tenant: String,
    channel: String,
    contact: String,
}

impl Seeded {
    fn server(&self) -> &Server {
        self.server.as_ref().expect("a running server")
    }

    /// Stops the server and, unless `extra` is `None`, starts it again with those flags.
    fn restart(&mut self, url: &str, extra: Option<&[&str]>) {
        if let Some(server) = self.server.take() {
            assert!(server.terminate().0.success());
        }
        self.server = extra.map(|extra| Self::serve(&self.scratch, url, extra));
    }

    fn serve(scratch: &Scratch, url: &str, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--database-url", url];
        args.extend_from_slice(extra);
        Server::start(
            &scratch.0,
            &args,
            &[
                ("WAYPOST_JOBS__POLL_INTERVAL_MS", "50"),
                // The fake Graph API listens on this machine.
                ("WAYPOST_EGRESS__ALLOW", "127.0.0.1"),
            ],
        )
    }

    async fn start(db: &TestDb) -> Seeded {
        let graph = fake_graph().await;
        let scratch = Scratch::new();
        let mut server = Self::serve(&scratch, &db.url, &[]);
        let owner = server.wait_for_stdout("  wp_").trim().to_string();
        let client = reqwest::Client::new();
        let channel: Value = client
            .post(server.url("/api/v1/channels"))
            .bearer_auth(&owner)
            .json(&json!({"name": "Main", "phone_number_id": PHONE_NUMBER_ID, "waba_id": WABA_ID,
                "access_token": "EAAG-privacy", "app_secret": APP_SECRET, "graph_api_base_url": graph}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut seeded = Seeded {
            scratch,
            server: Some(server),
            client,
            owner,
            tenant: String::new(),
            channel: channel["id"].as_str().unwrap().to_string(),
            contact: String::new(),
        };
        seeded.tenant = seeded.get("/api/v1/tenant").await.1["id"]
            .as_str()
            .unwrap()
            .to_string();
        seeded.seed().await;
        seeded
    }

    async fn seed(&mut self) {
        let me = || person(DIGITS, NAME);
        self.webhook(messages(
            vec![me()],
            vec![message(
                DIGITS,
                &wamid(DIGITS, 1),
                "text",
                json!({"body": BODY}),
            )],
        ))
        .await;
        self.webhook(messages(
            vec![me()],
            vec![message(
                DIGITS,
                &wamid(DIGITS, 2),
                "image",
                json!({"caption": CAPTION, "mime_type": "image/jpeg", "sha256": "x", "id": MEDIA_ID, "url": MEDIA_URL}),
            )],
        ))
        .await;
        let mut referred = message(DIGITS, &wamid(DIGITS, 3), "text", json!({"body": "Hi"}));
        referred["referral"] = json!({"source_url": "https://fb.me/a", "source_type": "ad",
            "headline": HEADLINE, "body": HEADLINE, "ctwa_clid": "ARAsentinel"});
        self.webhook(messages(vec![me()], vec![referred])).await;
        self.webhook(messages(
            vec![me()],
            vec![message(
                DIGITS,
                &wamid(DIGITS, 4),
                "text",
                json!({"body": "STOP"}),
            )],
        ))
        .await;
        self.webhook(envelope(
            "user_preferences",
            json!({"contacts": [me()], "user_preferences": [{"wa_id": DIGITS,
                "detail": "User requested to stop marketing messages", "category": "marketing_messages",
                "value": "stop", "timestamp": now_secs()}]}),
        ))
        .await;
        // A failure for a message we never learned the id of: it waits as an early status.
        self.webhook(envelope(
            "messages",
            json!({"statuses": [{"id": wamid(DIGITS, 6), "status": "failed",
                "timestamp": now_secs().to_string(), "recipient_id": DIGITS,
                "errors": [{"code": 131026, "title": "Undeliverable", "message": "Undeliverable",
                    "error_data": {"details": PROVIDER_ERROR}}]}]}),
        ))
        .await;
        let conversation = self.conversation_of(DIGITS, 4).await;
        self.contact = conversation["contact_id"].as_str().unwrap().to_string();

        let (status, sent) = self
            .call(
                Method::POST,
                "/api/v1/messages",
                Some(json!({"channel_id": self.channel, "to": NUMBER, "type": "text", "text": {"body": REPLY}})),
                &[("idempotency-key", &format!("order-{DIGITS}"))],
            )
            .await;
        assert_eq!(status, 202, "{sent}");
        let outbound = sent["id"].as_str().unwrap().to_string();
        self.eventually(&format!("/api/v1/messages/{outbound}"), |m| {
            m["status"] == "failed"
        })
        .await;
        let (status, _) = self
            .call(
                Method::PATCH,
                &format!("/api/v1/contacts/{}", self.contact),
                Some(json!({"marketing_consent": "opt_in", "note": NOTE})),
                &[],
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = self
            .call(
                Method::POST,
                &format!("/api/v1/channels/{}/templates/sync", self.channel),
                Some(json!({})),
                &[],
            )
            .await;
        assert_eq!(status, 200);
    }

    async fn webhook(&self, body: Vec<u8>) {
        let signature = sign_meta(APP_SECRET.as_bytes(), &body);
        let resp = self
            .client
            .post(
                self.server()
                    .url(&format!("/webhooks/meta/{}", self.channel)),
            )
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    /// A request as the owner; the status and the JSON answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, self.server().url(path))
            .bearer_auth(&self.owner);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None, &[]).await
    }

    /// Polls `path` as the owner until `done` holds.
    async fn eventually(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, value) = self.get(path).await;
            if done(&value) {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "{path}: {value}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The conversation of `wa_id` once it holds at least `count` messages.
    async fn conversation_of(&self, wa_id: &str, count: usize) -> Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, list) = self.get("/api/v1/conversations").await;
            let found = list["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["contact_wa_id"] == wa_id)
                .cloned();
            if let Some(conversation) = found
                && self.messages_of(&conversation).await.len() >= count
            {
                return conversation;
            }
            assert!(tokio::time::Instant::now() < deadline, "{wa_id}: {list}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn messages_of(&self, conversation: &Value) -> Vec<Value> {
        let id = conversation["id"].as_str().unwrap();
        let (_, page) = self
            .get(&format!("/api/v1/conversations/{id}/messages"))
            .await;
        page["data"].as_array().cloned().unwrap_or_default()
    }

    fn cli(&self, args: &[&str], url: &str) -> Value {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--json", "--database-url", url]);
        run_json(&self.scratch.0, &all)
    }

    /// Signs in (with a CSRF token for later writes); the cookie header and the token.
    async fn sign_in(&self, email: &str, password: &str) -> (String, String) {
        let resp = self
            .client
            .post(self.server().url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let cookie = resp.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let body: Value = resp.json().await.unwrap();
        (cookie, body["csrf_token"].as_str().unwrap().to_string())
    }
}

/// How a walk authenticates.
enum Caller {
    Key(String),
    Session(String),
}

/// The ids every path template needs, read as the owner.
struct Ids {
    channel: String,
    contact: String,
    conversation: String,
    messages: Vec<String>,
    image_message: String,
    api_key: String,
    template: String,
}

impl Ids {
    async fn read(seeded: &Seeded) -> Ids {
        let conversation = seeded.conversation_of(DIGITS, 4).await;
        let all = seeded.messages_of(&conversation).await;
        let id_of = |v: &Value| v["id"].as_str().unwrap().to_string();
        let image = all.iter().find(|m| m["kind"] == "image").unwrap();
        let keys = seeded.get("/api/v1/api-keys").await.1;
        let templates = seeded.get("/api/v1/templates").await.1;
        Ids {
            channel: seeded.channel.clone(),
            contact: seeded.contact.clone(),
            conversation: id_of(&conversation),
            messages: all.iter().map(id_of).collect(),
            image_message: id_of(image),
            api_key: id_of(&keys["data"][0]),
            template: id_of(&templates["data"][0]),
        }
    }

    /// Every concrete URL a masked caller tries for a GET route. A route added to the table
    /// without a case here fails the test, so no read route escapes the walk.
    fn urls(&self, template: &str) -> Vec<String> {
        let search = |q: &str| format!("/api/v1/contacts?search={}", urlencode(q));
        match template {
            "/api/v1/contacts" => vec![template.into(), search(NUMBER), search(&self.contact)],
            "/api/v1/audit-events" => ["", "?format=csv", "?format=jsonl"]
                .map(|f| format!("{template}{f}"))
                .to_vec(),
            "/api/v1/api-keys/{id}" => vec![format!("/api/v1/api-keys/{}", self.api_key)],
            "/api/v1/channels/{id}" => vec![format!("/api/v1/channels/{}", self.channel)],
            "/api/v1/contacts/{id}" => vec![format!("/api/v1/contacts/{}", self.contact)],
            "/api/v1/conversations/{id}/messages" => vec![format!(
                "/api/v1/conversations/{}/messages",
                self.conversation
            )],
            "/api/v1/media/{id}" => vec![format!(
                "/api/v1/media/{MEDIA_ID}?channel_id={}",
                self.channel
            )],
            "/api/v1/messages/{id}/media" => {
                vec![format!("/api/v1/messages/{}/media", self.image_message)]
            }
            "/api/v1/messages/{id}" => self
                .messages
                .iter()
                .map(|id| format!("/api/v1/messages/{id}"))
                .collect(),
            "/api/v1/templates/{id}" => vec![format!("/api/v1/templates/{}", self.template)],
            "/webhooks/meta/{channel_id}" => vec![format!(
                "/webhooks/meta/{}?hub.mode=subscribe&hub.challenge=1&hub.verify_token=x",
                self.channel
            )],
            other if !other.contains('{') => vec![other.to_string()],
            other => panic!("GET {other} has no case in the privacy walk: add one"),
        }
    }
}

fn urlencode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The status a masked caller with `role` must get from a route needing `permission`.
fn expected_status(
    permission: Permission,
    role: Role,
    caller: &Caller,
    route: &str,
) -> Option<u16> {
    let session = matches!(caller, Caller::Session(_));
    let operator = session && role == Role::Viewer;
    Some(match permission {
        Permission::Public => return None,
        Permission::SignedIn if session => 200,
        Permission::Operate if operator => 200,
        Permission::SignedIn | Permission::Operate => 403,
        // Media is personal data whole: masked callers may not fetch it at all.
        _ if route.contains("/media") => 403,
        p if p.granted_to(role) => 200,
        _ => 403,
    })
}

/// Calls every GET route as `caller` and finds no sentinel in any answer.
async fn walk(seeded: &Seeded, ids: &Ids, caller: &Caller, role: Role) -> usize {
    let mut answers = 0;
    for (method, template, permission) in ROUTE_PERMISSIONS {
        if *method != "GET" {
            continue;
        }
        for path in ids.urls(template) {
            let mut req = seeded.client.get(seeded.server().url(&path));
            req = match caller {
                Caller::Key(key) => req.bearer_auth(key),
                Caller::Session(cookie) => req.header(header::COOKIE, cookie),
            };
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            if let Some(expected) = expected_status(*permission, role, caller, template) {
                assert_eq!(status, expected, "GET {path} as {role}: {text}");
            }
            let lower = text.to_lowercase();
            for sentinel in sentinels() {
                assert!(
                    !lower.contains(&sentinel.to_lowercase()),
                    "GET {path} as a masked {role} shows {sentinel:?}: {text}"
                );
            }
            answers += usize::from(status == 200);
        }
    }
    answers
}

#[tokio::test]
async fn masked_callers_find_no_personal_data_on_any_read_route() {
    for db in test_databases().await {
        let seeded = Seeded::start(&db).await;
        let url = db.url.as_str();
        let tenant = seeded.tenant.as_str();
        let key = seeded.cli(
            &["apikey", "create", "--tenant", tenant, "--role", "analyst"],
            url,
        )["key"]
            .as_str()
            .unwrap()
            .to_string();
        let analyst = seeded.cli(
            &[
                "user",
                "create",
                "--email",
                "ana@example.com",
                "--tenant",
                tenant,
                "--role",
                "analyst",
            ],
            url,
        );
        let operator = seeded.cli(
            &["user", "create", "--email", "ops@example.com", "--operator"],
            url,
        );
        let (analyst, _) = seeded
            .sign_in("ana@example.com", analyst["password"].as_str().unwrap())
            .await;
        let (operator, csrf) = seeded
            .sign_in("ops@example.com", operator["password"].as_str().unwrap())
            .await;
        // The operator unmasks once with a reason that names the customer, then looks again
        // without: the trail keeps the reason, the masked view must not show it.
        for body in [
            json!({"tenant_id": tenant, "unmask": true, "reason": format!("customer {NUMBER} asked for help")}),
            json!({"tenant_id": tenant}),
        ] {
            let resp = seeded
                .client
                .post(seeded.server().url("/api/v1/operator/access"))
                .header(header::COOKIE, &operator)
                .header("x-csrf-token", &csrf)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }

        let ids = Ids::read(&seeded).await;
        let walks = [
            (Caller::Key(key.clone()), Role::Analyst),
            (Caller::Session(analyst), Role::Analyst),
            (Caller::Session(operator), Role::Viewer),
        ];
        for (caller, role) in &walks {
            let answered = walk(&seeded, &ids, caller, *role).await;
            assert!(answered >= 12, "{role} read too little to prove anything");
        }

        // What the masked answers still say: which record is which, and why a send failed.
        let analyst = Caller::Key(key.clone());
        let contact = masked_get(
            &seeded,
            &analyst,
            &format!("/api/v1/contacts/{}", ids.contact),
        )
        .await;
        assert_eq!(contact["phone"], "•••7319", "{contact}");
        assert_eq!(contact["name"], "Q•••");
        let failed = failed_message(&seeded, &analyst, &ids).await;
        assert_eq!(failed["error"]["code"], 131_026, "{failed}");
        assert!(failed["error"]["explanation"].is_string());

        // Search is not an oracle: a whole number or an id, nothing partial.
        for partial in ["Quint", "7319", "5557319", "varnhagen"] {
            let path = format!("/api/v1/contacts?search={partial}");
            let resp = seeded
                .client
                .get(seeded.server().url(&path))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 422, "{partial}");
        }
        for exact in [NUMBER, "+1 (415) 555-7319", DIGITS, ids.contact.as_str()] {
            let path = format!("/api/v1/contacts?search={}", urlencode(exact));
            let found = masked_get(&seeded, &analyst, &path).await;
            assert_eq!(
                found["data"].as_array().unwrap().len(),
                1,
                "{exact}: {found}"
            );
        }
        let owner_search = seeded.get("/api/v1/contacts?search=Quint").await.1;
        assert_eq!(
            owner_search["data"][0]["name"], NAME,
            "the owner still searches freely"
        );
    }
}

async fn masked_get(seeded: &Seeded, caller: &Caller, path: &str) -> Value {
    let Caller::Key(key) = caller else {
        panic!("masked_get takes a key")
    };
    let resp = seeded
        .client
        .get(seeded.server().url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

/// The failed outbound message, as a masked caller reads it.
async fn failed_message(seeded: &Seeded, caller: &Caller, ids: &Ids) -> Value {
    for id in &ids.messages {
        let message = masked_get(seeded, caller, &format!("/api/v1/messages/{id}")).await;
        if message["status"] == "failed" {
            return message;
        }
    }
    panic!("no failed message")
}

/// Every form a sentinel can take in a dump: as is, and as PostgreSQL prints `bytea` (hex).
fn forms(sentinel: &str) -> [Vec<u8>; 2] {
    let hex: String = sentinel.bytes().map(|b| format!("{b:02x}")).collect();
    [sentinel.as_bytes().to_vec(), hex.into_bytes()]
}

#[tokio::test]
async fn an_erased_contact_leaves_no_copy_in_the_database() {
    for db in test_databases().await {
        let mut seeded = Seeded::start(&db).await;
        // Without workers, what is queued when the erasure comes stays queued: a body that
        // speaks for the contact and someone else, and a mark-read of the contact's message.
        seeded.restart(&db.url, Some(&["--no-workers"]));
        seeded
            .webhook(messages(
                vec![person(DIGITS, NAME), person(OTHER_DIGITS, "Other Person")],
                vec![
                    message(DIGITS, &wamid(DIGITS, 5), "text", json!({"body": BODY})),
                    message(
                        OTHER_DIGITS,
                        &wamid(OTHER_DIGITS, 1),
                        "text",
                        json!({"body": OTHER_TEXT}),
                    ),
                ],
            ))
            .await;
        let conversation = seeded.conversation_of(DIGITS, 4).await;
        let first = seeded.messages_of(&conversation).await[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let path = format!("/api/v1/messages/{first}/read");
        assert_eq!(seeded.call(Method::POST, &path, None, &[]).await.0, 202);

        let path = format!("/api/v1/contacts/{}", seeded.contact);
        assert_eq!(seeded.call(Method::DELETE, &path, None, &[]).await.0, 204);
        // The shared body was processed inside the erasure: the other person keeps theirs.
        let other = seeded.conversation_of(OTHER_DIGITS, 1).await;
        assert_eq!(
            seeded.messages_of(&other).await[0]["content"]["body"],
            OTHER_TEXT
        );
        let (_, audit) = seeded
            .get("/api/v1/audit-events?action=contact.delete")
            .await;
        assert_eq!(audit["data"][0]["target_id"], seeded.contact.as_str());

        seeded.restart(&db.url, None);
        if db.flavor == Flavor::Sqlite {
            db.execute_as_superuser("PRAGMA wal_checkpoint(TRUNCATE)")
                .await;
        }
        let dump = db.dump().await;
        assert!(
            dump.len() > 10_000,
            "the dump holds too little to prove anything"
        );
        for sentinel in sentinels() {
            for form in forms(&sentinel) {
                if let Some(at) = dump.windows(form.len()).position(|w| w == form.as_slice()) {
                    let around = &dump[at.saturating_sub(200)..(at + 200).min(dump.len())];
                    panic!(
                        "{sentinel:?} survives the erasure ({:?}): …{}…",
                        db.flavor,
                        String::from_utf8_lossy(around)
                    );
                }
            }
        }

        // The workers come back and run what was queued before the erasure: the contact
        // stays gone.
        seeded.restart(&db.url, Some(&[]));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while !seeded
            .cli(&["jobs", "list", "--state", "pending"], &db.url)
            .as_array()
            .unwrap()
            .is_empty()
        {
            assert!(tokio::time::Instant::now() < deadline, "jobs stay pending");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let (_, found) = seeded
            .get(&format!("/api/v1/contacts?search={}", urlencode(NUMBER)))
            .await;
        assert_eq!(found["data"], json!([]), "{found}");
        let (_, conversations) = seeded.get("/api/v1/conversations").await;
        assert_eq!(conversations["data"].as_array().unwrap().len(), 1);
    }
}
