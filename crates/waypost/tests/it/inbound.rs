//! WhatsApp inbound through the binary: a channel, Meta's handshake, signed webhooks stored
//! before the 200 and processed into conversations, on SQLite and PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};
use waypost_providers::signature::sign_meta;
use waypost_store::testkit::test_databases;

use crate::process::{Scratch, Server};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../providers/tests/fixtures/meta/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

const APP_SECRET: &str = "channel-app-secret-123";

/// `waypost serve` on `url` with a quick worker poll; the scratch folder, the server and the
/// first-run owner key.
fn serve_on(url: &str) -> (Scratch, Server, String) {
    serve_with(url, &[])
}

/// As `serve_on`, with more configuration in the environment.
fn serve_with(url: &str, env: &[(&str, &str)]) -> (Scratch, Server, String) {
    let scratch = Scratch::new();
    let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", url];
    let mut env = env.to_vec();
    env.push(("WAYPOST_JOBS__POLL_INTERVAL_MS", "50"));
    let mut server = Server::start(&scratch.0, &args, &env);
    let key = server.wait_for_stdout("  wp_").trim().to_string();
    (scratch, server, key)
}

/// GET `path` with the key; the JSON answer.
async fn get_json(client: &reqwest::Client, server: &Server, key: &str, path: &str) -> Value {
    let response = client.get(server.url(path)).bearer_auth(key).send().await;
    response.unwrap().json().await.unwrap()
}

/// The Prometheus exposition.
async fn metrics_text(client: &reqwest::Client, server: &Server) -> String {
    let response = client.get(server.url("/metrics")).send().await;
    response.unwrap().text().await.unwrap()
}

pub(crate) async fn wait_for_messages(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    count: usize,
) -> (Value, Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let conversations = get_json(client, server, key, "/api/v1/conversations").await;
        if let Some(first) = conversations["data"].as_array().and_then(|a| a.first()) {
            let id = first["id"].as_str().unwrap();
            let path = format!("/api/v1/conversations/{id}/messages");
            let messages = get_json(client, server, key, &path).await;
            if messages["data"].as_array().unwrap().len() >= count {
                return (conversations, messages);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "webhooks were not processed: {conversations}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn signed_webhooks_become_conversations_once() {
    for db in test_databases().await {
        let (_scratch, server, key) = serve_on(&db.url);
        let client = reqwest::Client::new();

        let created = client
            .post(server.url("/api/v1/channels"))
            .bearer_auth(&key)
            .json(&json!({"name": "Main", "phone_number_id": "106540352242922", "waba_id": "102290129340398", "access_token": "EAAG-token-9876", "app_secret": APP_SECRET}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let channel: Value = created.json().await.unwrap();
        assert!(
            !channel.to_string().contains(APP_SECRET)
                && !channel.to_string().contains("EAAG-token-9876")
        );
        assert_eq!(
            channel["credentials"]["access_token"],
            json!({"set": true, "last4": "9876"})
        );
        let callback = channel["webhook"]["callback_url"]
            .as_str()
            .unwrap()
            .to_string();
        let verify = channel["webhook"]["verify_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            callback.starts_with(server.base.as_deref().unwrap())
                && callback.ends_with(channel["id"].as_str().unwrap())
        );
        let again = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
            .json(&json!({"name": "Dup", "phone_number_id": "106540352242922", "access_token": "x", "app_secret": "y"}))
            .send().await.unwrap();
        assert_eq!(again.status(), 409, "the same number connected twice");

        // Meta's handshake echoes the challenge only with the right token.
        let ok = client
            .get(format!(
                "{callback}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={verify}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.text().await.unwrap(), "1158201444");
        let bad = client
            .get(format!(
                "{callback}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=wrong"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 403);
        assert_ne!(bad.text().await.unwrap(), "1158201444");

        // Unsigned and mis-signed bodies store nothing.
        let body = fixture("text");
        let unsigned = client
            .post(&callback)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(unsigned.status(), 401);
        let forged = client
            .post(&callback)
            .header("x-hub-signature-256", sign_meta(b"wrong-secret", &body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403);

        // Signed: stored, acknowledged, processed; Meta's retries change nothing.
        for name in ["text", "text", "referral", "status_delivered"] {
            let body = fixture(name);
            let resp = client
                .post(&callback)
                .header(
                    "x-hub-signature-256",
                    sign_meta(APP_SECRET.as_bytes(), &body),
                )
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{name}");
        }
        let (conversations, messages) = wait_for_messages(&client, &server, &key, 2).await;
        assert_eq!(conversations["data"].as_array().unwrap().len(), 1);
        assert_eq!(conversations["data"][0]["contact_wa_id"], "16505551234");
        assert!(conversations["data"][0]["window_expires_at"].is_string());
        let list = messages["data"].as_array().unwrap();
        assert_eq!(list.len(), 2, "{messages}");
        // Two webhooks may be processed in either order.
        let text = json!({"type": "text", "body": "Does it come in another color?"});
        assert!(list.iter().any(|m| m["content"] == text), "{messages}");
        let referred = list.iter().find(|m| !m["referral"].is_null()).unwrap();
        assert_eq!(referred["referral"]["ctwa_clid"], "ARAbc123ClickId");

        let metrics = metrics_text(&client, &server).await;
        assert!(
            metrics.contains(
                "waypost_webhooks_rejected_total{provider=\"meta\",reason=\"bad_signature\"} 1"
            ),
            "{metrics}"
        );
        assert!(server.terminate().0.success(), "{:?}", db.flavor);
    }
}

fn text_webhook(wamid: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages","value":{
        "messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
        "contacts":[{"profile":{"name":"Sheena"},"wa_id":"16505551234"}],
        "messages":[{"from":"16505551234","id": wamid,"timestamp":"1749416383","type":"text","text":{"body": wamid}}]}}]}]}))
    .unwrap()
}

async fn all_message_ids(client: &reqwest::Client, server: &Server, key: &str) -> Vec<String> {
    let conversations = get_json(client, server, key, "/api/v1/conversations").await;
    let Some(id) = conversations["data"][0]["id"].as_str() else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = server.url(&format!(
            "/api/v1/conversations/{id}/messages?limit=200{cursor}"
        ));
        let page: Value = client
            .get(url)
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["provider_message_id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return ids,
        }
    }
}

/// Kills the server with SIGKILL in the middle of a burst of webhooks; after a restart every
/// webhook that got its 200 has been processed, and none twice.
#[tokio::test]
async fn a_crash_mid_burst_loses_no_acknowledged_webhook_and_doubles_none() {
    for db in test_databases().await {
        let scratch = Scratch::new();
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            db.url.as_str(),
        ];
        let env = [
            ("WAYPOST_JOBS__POLL_INTERVAL_MS", "20"),
            ("WAYPOST_JOBS__LEASE_SECS", "3"),
        ];
        let mut server = Server::start(&scratch.0, &args, &env);
        let key = server.wait_for_stdout("  wp_").trim().to_string();
        let client = reqwest::Client::new();
        let channel: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
            .json(&json!({"name": "Main", "phone_number_id": "106540352242922", "access_token": "t", "app_secret": APP_SECRET}))
            .send().await.unwrap().json().await.unwrap();
        let callback = channel["webhook"]["callback_url"]
            .as_str()
            .unwrap()
            .to_string();

        let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut senders = Vec::new();
        for sender in 0..4 {
            let (client, callback, acknowledged) =
                (client.clone(), callback.clone(), acknowledged.clone());
            senders.push(tokio::spawn(async move {
                for i in 0..150 {
                    let wamid = format!("wamid.CRASH.{sender}.{i}");
                    let body = text_webhook(&wamid);
                    let sent = client
                        .post(&callback)
                        .header(
                            "x-hub-signature-256",
                            sign_meta(APP_SECRET.as_bytes(), &body),
                        )
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status() == 200 => {
                            acknowledged.lock().unwrap().push(wamid)
                        }
                        _ => break, // the server is gone
                    }
                }
            }));
        }
        while acknowledged.lock().unwrap().len() < 150 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        for sender in senders {
            sender.await.unwrap();
        }
        let acknowledged = acknowledged.lock().unwrap().clone();
        assert!(
            acknowledged.len() < 600,
            "the crash came too late to test anything"
        );

        let server = Server::start(&scratch.0, &args, &env);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let stored = loop {
            let stored = all_message_ids(&client, &server, &key).await;
            let set: std::collections::HashSet<_> = stored.iter().collect();
            if acknowledged.iter().all(|w| set.contains(w)) {
                break stored;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "acknowledged webhooks were lost: {} of {} processed",
                acknowledged.iter().filter(|w| set.contains(w)).count(),
                acknowledged.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let distinct: std::collections::HashSet<_> = stored.iter().collect();
        assert_eq!(
            distinct.len(),
            stored.len(),
            "{:?}: a webhook was processed twice",
            db.flavor
        );
        assert!(stored.len() >= acknowledged.len());
    }
}

#[tokio::test]
async fn bsp_webhooks_are_authenticated_and_processed() {
    for db in test_databases().await {
        let (_scratch, server, key) = serve_on(&db.url);
        let client = reqwest::Client::new();

        // 360dialog forwards Meta's payloads; it authenticates with a header we hand out.
        let d360: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
            .json(&json!({"provider": "360dialog", "name": "D360", "phone_number_id": "106540352242922", "api_key": "d360-key-0001"}))
            .send().await.unwrap().json().await.unwrap();
        assert_eq!(
            d360["credentials"]["api_key"],
            json!({"set": true, "last4": "0001"})
        );
        let callback = d360["webhook"]["callback_url"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(callback.contains("/webhooks/360dialog/"));
        let token = d360["webhook"]["headers"]["x-waypost-token"]
            .as_str()
            .unwrap()
            .to_string();
        let body = fixture("text");
        assert_eq!(
            client
                .post(&callback)
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
        assert_eq!(
            client
                .post(&callback)
                .header("x-waypost-token", "nope")
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            client
                .post(&callback)
                .header("x-waypost-token", &token)
                .body(body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );

        // Twilio signs the public URL and the sorted form parameters with the auth token.
        let twilio: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
            .json(&json!({"provider": "twilio", "name": "Twilio", "display_number": "+1 415 523 8886", "account_sid": "AC123", "auth_token": "twilio-token"}))
            .send().await.unwrap().json().await.unwrap();
        assert_eq!(twilio["display_number"], "+14155238886");
        let callback = twilio["webhook"]["callback_url"]
            .as_str()
            .unwrap()
            .to_string();
        let params: Vec<(String, String)> = [
            ("MessageSid", "SMabc"),
            ("AccountSid", "AC123"),
            ("From", "whatsapp:+14155550177"),
            ("To", "whatsapp:+14155238886"),
            ("WaId", "14155550177"),
            ("ProfileName", "Grace"),
            ("MessageType", "text"),
            ("Body", "Hello from Twilio"),
            ("NumMedia", "0"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let form = serde_urlencoded(&params);
        let good = waypost_providers::signature::sign_twilio(b"twilio-token", &callback, &params);
        let send = |signature: String| {
            client
                .post(&callback)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", signature)
                .body(form.clone())
                .send()
        };
        assert_eq!(send("bm90IGl0".into()).await.unwrap().status(), 403);
        let ok = send(good).await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.text().await.unwrap(), "<Response/>");

        // Gupshup signs nothing: the URL carries a secret.
        let gupshup: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
            .json(&json!({"provider": "gupshup", "name": "G", "display_number": "+918898000000", "api_key": "gs-key-1234"}))
            .send().await.unwrap().json().await.unwrap();
        let callback = gupshup["webhook"]["callback_url"]
            .as_str()
            .unwrap()
            .to_string();
        let body = br#"{"app":"DemoApp","timestamp":1580227766370,"version":2,"type":"message","payload":{"id":"ABEG9","source":"918898000214","type":"text","payload":{"text":"Hi"},"sender":{"phone":"918898000214","name":"Andy"}}}"#.to_vec();
        let wrong = format!("{}/not-the-secret", callback.rsplit_once('/').unwrap().0);
        assert_eq!(
            client
                .post(&wrong)
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            client
                .post(&callback)
                .body(body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );

        // Bird signs timestamp, URL and body hash; a stale timestamp is a replay.
        let bird: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
            .json(&json!({"provider": "bird", "name": "B", "display_number": "+351922222222", "api_key": "bird-key", "signing_key": "bird-signing"}))
            .send().await.unwrap().json().await.unwrap();
        let callback = bird["webhook"]["callback_url"]
            .as_str()
            .unwrap()
            .to_string();
        let body = br#"{"service":"channels","event":"whatsapp.inbound","payload":{"id":"bird-1","sender":{"contact":{"identifierValue":"+351911111111"}},"body":{"type":"text","text":{"text":"Ola"}},"parts":[{"platformReference":"wamid.BIRD1"}]}}"#.to_vec();
        let now = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs())
        .to_string();
        let stale = "1000000000".to_string();
        let signed = |ts: &str| {
            waypost_providers::signature::sign_bird(b"bird-signing", ts, &callback, &body)
        };
        let post = |ts: String, sig: String| {
            client
                .post(&callback)
                .header("messagebird-request-timestamp", ts)
                .header("messagebird-signature", sig)
                .body(body.clone())
                .send()
        };
        assert_eq!(
            post(now.clone(), signed(&stale)).await.unwrap().status(),
            403,
            "signature over another timestamp"
        );
        assert_eq!(
            post(stale.clone(), signed(&stale)).await.unwrap().status(),
            403,
            "replayed"
        );
        let far = i64::MIN.to_string();
        assert_eq!(
            post(far.clone(), signed(&far)).await.unwrap().status(),
            403,
            "a timestamp whose distance from now overflows"
        );
        assert_eq!(post(now.clone(), signed(&now)).await.unwrap().status(), 200);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let conversations = get_json(&client, &server, &key, "/api/v1/conversations").await;
            let wa_ids: Vec<_> = conversations["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["contact_wa_id"].as_str().unwrap_or("").to_string())
                .collect();
            let expected = ["16505551234", "14155550177", "918898000214", "351911111111"];
            if expected.iter().all(|w| wa_ids.contains(&w.to_string())) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}: {conversations}",
                db.flavor
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(server.terminate().0.success());
    }
}

fn serde_urlencoded(params: &[(String, String)]) -> String {
    let mut serializer = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

/// A stand-in for Meta's Graph API media endpoints: the lookup answers a download URL, the
/// download needs the same bearer token.
async fn fake_graph() -> String {
    use axum::{extract::Path, http::HeaderMap, routing::get};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let authorized = |headers: &HeaderMap| {
        headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some("Bearer EAAG-media-token")
    };
    let lookup_base = base.clone();
    let app = axum::Router::new()
        .route(
            "/v25.0/{id}",
            get(move |Path(id): Path<String>, headers: HeaderMap| {
                let base = lookup_base.clone();
                async move {
                    if !authorized(&headers) {
                        return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                    }
                    if id != "1003383421387256" {
                        return (axum::http::StatusCode::NOT_FOUND, r#"{"error":{"code":100}}"#.to_string());
                    }
                    let body = json!({"messaging_product":"whatsapp","url": format!("{base}/download/{id}"),"mime_type":"image/jpeg","sha256":"x","file_size":9,"id": id});
                    (axum::http::StatusCode::OK, body.to_string())
                }
            }),
        )
        .route(
            "/download/{id}",
            get(move |headers: HeaderMap| async move {
                if authorized(&headers) { (axum::http::StatusCode::OK, "JPEGBYTES") } else { (axum::http::StatusCode::UNAUTHORIZED, "") }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn media_streams_from_the_provider_with_the_channels_token() {
    let graph = fake_graph().await;
    let db = waypost_store::testkit::TestDb::sqlite();
    let scratch = Scratch::new();
    let mut server = Server::start(
        &scratch.0,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ],
        &[("WAYPOST_EGRESS__ALLOW", "127.0.0.1")],
    );
    let key = server.wait_for_stdout("  wp_").trim().to_string();
    let client = reqwest::Client::new();
    let channel: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
        .json(&json!({"name": "Main", "phone_number_id": "106540352242922", "access_token": "EAAG-media-token", "app_secret": "s", "graph_api_base_url": graph}))
        .send().await.unwrap().json().await.unwrap();
    let id = channel["id"].as_str().unwrap();
    let resp = client
        .get(server.url(&format!("/api/v1/media/1003383421387256?channel_id={id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(resp.text().await.unwrap(), "JPEGBYTES");
    let missing = client
        .get(server.url(&format!("/api/v1/media/999?channel_id={id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad_id = client
        .get(server.url(&format!("/api/v1/media/..%2Fetc?channel_id={id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_id.status(), 404);
}

async fn conversation_wa_ids(client: &reqwest::Client, server: &Server, key: &str) -> Vec<String> {
    let conversations = get_json(client, server, key, "/api/v1/conversations").await;
    conversations["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["contact_wa_id"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn eventually_wa_ids(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    expected: &[&str],
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ids = conversation_wa_ids(client, server, key).await;
        if expected.iter().all(|e| ids.contains(&e.to_string())) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {expected:?}, have {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// README command 1: the embedded default shows simulated messages without Meta.
#[tokio::test]
async fn the_first_run_demo_shows_simulated_customers_writing_in() {
    let scratch = Scratch::new();
    let mut server = Server::start(&scratch.0, &["--listen", "127.0.0.1:0"], &[]);
    let key = server.wait_for_stdout("  wp_").trim().to_string();
    server.wait_for_stdout("SIMULATED WhatsApp number");
    let client = reqwest::Client::new();
    eventually_wa_ids(&client, &server, &key, &["15550100001"]).await;
    let channels = get_json(&client, &server, &key, "/api/v1/channels").await;
    assert_eq!(channels["data"][0]["name"], "Demo number (simulated)");

    // The README's reply goes out through the in-process simulator and comes back read.
    let sent: Value = client
        .post(server.url("/api/v1/messages"))
        .bearer_auth(&key)
        .json(&json!({"channel_id": channels["data"][0]["id"], "to": "+15550100001", "type": "text", "text": {"body": "Hi!"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = sent["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{sent}"))
        .to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let message = get_json(&client, &server, &key, &format!("/api/v1/messages/{id}")).await;
        if message["status"] == "read" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{message}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let base = server.base.clone().unwrap();
    let out = crate::process::run(
        &scratch.0,
        &[
            "simulator",
            "inject",
            "--url",
            &base,
            "--from",
            "15550100002",
            "--text",
            "hello",
            "--json",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let injected: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(injected["webhook_status"], 200);
    eventually_wa_ids(&client, &server, &key, &["15550100001", "15550100002"]).await;
    assert!(server.terminate().0.success());

    // A restart keeps the demo without greeting again.
    let mut again = Server::start(&scratch.0, &["--listen", "127.0.0.1:0"], &[]);
    again.wait_for_stdout("SIMULATED");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(conversation_wa_ids(&client, &again, &key).await.len(), 2);
}

#[tokio::test]
async fn a_standalone_simulator_feeds_a_channel() {
    let db = waypost_store::testkit::TestDb::sqlite();
    let scratch = Scratch::new();
    let mut server = Server::start(
        &scratch.0,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ],
        &[("WAYPOST_JOBS__POLL_INTERVAL_MS", "50")],
    );
    let key = server.wait_for_stdout("  wp_").trim().to_string();
    let client = reqwest::Client::new();
    let channel: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
        .json(&json!({"name": "Sim", "phone_number_id": "100000000000001", "access_token": "t", "app_secret": APP_SECRET}))
        .send().await.unwrap().json().await.unwrap();
    let callback = channel["webhook"]["callback_url"]
        .as_str()
        .unwrap()
        .to_string();
    let simulator = Server::start_until(
        &scratch.0,
        &[
            "simulator",
            "--listen",
            "127.0.0.1:0",
            "--webhook-url",
            &callback,
            "--app-secret",
            APP_SECRET,
        ],
        &[],
        "simulator (simulated",
    );
    let out = crate::process::run(
        &scratch.0,
        &[
            "simulator",
            "inject",
            "--url",
            simulator.base.as_deref().unwrap(),
            "--bsuid",
            "US.4242",
            "--type",
            "location",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let conversations = get_json(&client, &server, &key, "/api/v1/conversations").await;
        if conversations["data"][0]["contact_bsuid"] == "US.4242" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{conversations}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = crate::process::run(&scratch.0, &["simulator", "--listen", "127.0.0.1:0"], &[]);
    crate::process::assert_one_line_error(&out, "--webhook-url");
    let out = crate::process::run(
        &scratch.0,
        &[
            "simulator",
            "inject",
            "--url",
            "http://127.0.0.1:1",
            "--from",
            "1",
        ],
        &[],
    );
    crate::process::assert_one_line_error(&out, "cannot reach the simulator");
}

/// Behind a reverse proxy the allowlist is checked against the client the proxy names, and
/// only when the proxy is trusted: anyone else could claim an allowed address.
#[tokio::test]
async fn the_gupshup_allowlist_believes_forwarded_addresses_only_from_trusted_proxies() {
    let body = br#"{"app":"DemoApp","timestamp":1580227766370,"version":2,"type":"message","payload":{"id":"ABEG9","source":"918898000214","type":"text","payload":{"text":"Hi"},"sender":{"phone":"918898000214","name":"Andy"}}}"#;
    for db in test_databases().await {
        let allowed = ("WAYPOST_GUPSHUP__ALLOWED_IPS", "203.0.113.7");
        let (scratch, server, key) = serve_with(
            &db.url,
            &[allowed, ("WAYPOST_HTTP__TRUSTED_PROXIES", "127.0.0.1")],
        );
        let client = reqwest::Client::new();
        let channel: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
            .json(&json!({"provider": "gupshup", "name": "G", "display_number": "+918898000000", "api_key": "gs-key-1234"}))
            .send().await.unwrap().json().await.unwrap();
        let callback = channel["webhook"]["callback_url"]
            .as_str()
            .unwrap()
            .to_string();
        let post = |forwarded: Option<&'static str>| {
            let mut request = client.post(&callback).body(body.to_vec());
            if let Some(forwarded) = forwarded {
                request = request.header("x-forwarded-for", forwarded);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };
        for (forwarded, expected) in [
            (None, 403),
            (Some("198.51.100.1"), 403),
            // The client wrote the left entry; the proxy saw 198.51.100.1.
            (Some("203.0.113.7, 198.51.100.1"), 403),
            (Some("203.0.113.7"), 200),
        ] {
            assert_eq!(
                post(forwarded).await,
                expected,
                "{:?} {forwarded:?}",
                db.flavor
            );
        }
        drop(server);

        // The same header from a peer that is not a trusted proxy proves nothing.
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ];
        let env = [allowed, ("WAYPOST_HTTP__TRUSTED_PROXIES", "10.0.0.1")];
        let server = Server::start(&scratch.0, &args, &env);
        let callback = callback.replace(
            callback.split("/webhooks").next().unwrap(),
            server.base.as_deref().unwrap(),
        );
        let status = client
            .post(&callback)
            .header("x-forwarded-for", "203.0.113.7")
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 403, "{:?}", db.flavor);
    }
}

/// Gupshup signs nothing: besides the secret in the callback URL, the operator may accept its
/// webhooks only from Gupshup's addresses. A refused one stores nothing.
#[tokio::test]
async fn gupshup_webhooks_from_outside_the_allowed_networks_are_refused() {
    let body = br#"{"app":"DemoApp","timestamp":1580227766370,"version":2,"type":"message","payload":{"id":"ABEG9","source":"918898000214","type":"text","payload":{"text":"Hi"},"sender":{"phone":"918898000214","name":"Andy"}}}"#;
    for (allowed, expected) in [
        ("192.0.2.0/24, 2001:db8::/32", 403),
        ("192.0.2.0/24, 127.0.0.1", 200),
    ] {
        let db = waypost_store::testkit::TestDb::sqlite();
        let (_scratch, server, key) =
            serve_with(&db.url, &[("WAYPOST_GUPSHUP__ALLOWED_IPS", allowed)]);
        let client = reqwest::Client::new();
        let channel: Value = client.post(server.url("/api/v1/channels")).bearer_auth(&key)
            .json(&json!({"provider": "gupshup", "name": "G", "display_number": "+918898000000", "api_key": "gs-key-1234"}))
            .send().await.unwrap().json().await.unwrap();
        let callback = channel["webhook"]["callback_url"].as_str().unwrap();
        let status = client
            .post(callback)
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, expected, "allowed: {allowed}");
        if expected == 200 {
            let (_, messages) = wait_for_messages(&client, &server, &key, 1).await;
            assert_eq!(
                messages["data"][0]["content"],
                json!({"type": "text", "body": "Hi"})
            );
            continue;
        }
        let metrics = metrics_text(&client, &server).await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("waypost_webhooks_rejected_total")
                    && l.contains(r#"reason="source_not_allowed""#)),
            "{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let conversations = get_json(&client, &server, &key, "/api/v1/conversations").await;
        assert_eq!(
            conversations["data"],
            json!([]),
            "a refused webhook was stored"
        );
    }
}
