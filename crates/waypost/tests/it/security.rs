//! What the server exposes and how: the demo's simulator behind its token, media served so it
//! cannot run in our origin, baseline security headers on every answer, upload limits that
//! hold for streamed bodies, and problem documents for every 413.

use std::time::Duration;

use serde_json::{Value, json};
use waypost_simulator::{Simulator, SimulatorConfig};
use waypost_store::testkit::test_databases;

use crate::process::{Scratch, Server, assert_one_line_error, run};

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn assert_baseline_headers(response: &reqwest::Response, what: &str) {
    assert_eq!(
        header(response, "x-content-type-options"),
        "nosniff",
        "{what}"
    );
    assert_eq!(header(response, "x-frame-options"), "DENY", "{what}");
    assert_eq!(header(response, "referrer-policy"), "no-referrer", "{what}");
    assert!(
        header(response, "content-security-policy").contains("frame-ancestors 'none'")
            || header(response, "content-security-policy").contains("sandbox"),
        "{what}"
    );
}

#[tokio::test]
async fn the_demo_simulator_answers_only_to_its_token() {
    let scratch = Scratch::new();
    let mut server = Server::start(&scratch.0, &["--listen", "127.0.0.1:0"], &[]);
    let token = server
        .wait_for_stdout("Simulator token")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let client = reqwest::Client::new();
    let inject = json!({"from": "15550100007", "text": "forged STOP"});
    for (path, body) in [
        ("/simulator/inbound", Some(inject.clone())),
        ("/simulator/faults", Some(json!({"codes": [131048]}))),
        ("/simulator/numbers/100000000000001", None),
        ("/simulator/stats", None),
    ] {
        let request = match &body {
            Some(b) if path.ends_with("faults") || path.ends_with("inbound") => {
                client.post(server.url(path)).json(b)
            }
            _ if path.contains("numbers") => client
                .put(server.url(path))
                .json(&json!({"webhook_url": "http://127.0.0.1:9/x", "app_secret": "s", "throughput_mps": 80})),
            _ => client.get(server.url(path)),
        };
        for bearer in [None, Some("wrong")] {
            let mut attempt = request.try_clone().unwrap();
            if let Some(b) = bearer {
                attempt = attempt.bearer_auth(b);
            }
            let answer = attempt.send().await.unwrap();
            assert_eq!(answer.status(), 401, "{path} with {bearer:?}");
            assert_baseline_headers(&answer, path);
        }
    }
    // The Graph routes want the demo channel's own token, which is not "simulated-token".
    let send = client
        .post(server.url("/simulator/graph/v25.0/100000000000001/messages"))
        .bearer_auth("simulated-token")
        .json(&json!({"messaging_product": "whatsapp", "to": "15550100001", "type": "text", "text": {"body": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(send.status(), 401);

    let ok = client
        .post(server.url("/simulator/inbound"))
        .bearer_auth(&token)
        .json(&json!({"from": "15550100007", "text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let huge = client
        .post(server.url("/simulator/inbound"))
        .bearer_auth(&token)
        .json(&json!({"from": "15550100007", "text": "x".repeat(2 * 1024 * 1024)}))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413, "the simulator's bodies are limited too");

    // `simulator inject` finds the token in the data folder, or takes --token.
    let base = server.base.clone().unwrap();
    let args = [
        "simulator",
        "inject",
        "--url",
        &base,
        "--from",
        "15550100008",
        "--text",
        "hi",
    ];
    let out = run(&scratch.0, &args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let elsewhere = Scratch::new();
    let out = run(&elsewhere.0, &args, &[]);
    assert_one_line_error(&out, "needs its token");
    let mut with_token = args.to_vec();
    with_token.extend(["--token", &token]);
    let out = run(&elsewhere.0, &with_token, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_demo_runs_only_on_loopback_unless_enabled_explicitly() {
    let scratch = Scratch::new();
    let mut server = Server::start(&scratch.0, &["--listen", "0.0.0.0:0"], &[]);
    let note = server.wait_for_stdout("Demo: off");
    assert!(note.contains("not a loopback address"), "{note}");
    let port = server
        .base
        .as_deref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let local = format!("http://127.0.0.1:{port}/simulator/stats");
    assert_eq!(reqwest::get(&local).await.unwrap().status(), 404);
    drop(server);

    let scratch = Scratch::new();
    let mut server = Server::start(
        &scratch.0,
        &["--listen", "0.0.0.0:0"],
        &[("WAYPOST_DEMO__ENABLED", "true")],
    );
    server.wait_for_stdout("SIMULATED WhatsApp number");
    server.wait_for_stdout("reachable from the network");
}

/// A Twilio API stand-in serving whatever type the test asks for.
async fn twilio_files() -> String {
    let app = axum::Router::new().fallback(|uri: axum::http::Uri| async move {
        let kind = if uri.path().ends_with("html") {
            "text/html"
        } else {
            "image/jpeg"
        };
        (
            [("content-type", kind)],
            "<script>alert(document.cookie)</script>",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn twilio_media_webhook(
    client: &reqwest::Client,
    callback: &str,
    sid: &str,
    url: &str,
    kind: &str,
) {
    let params: Vec<(String, String)> = [
        ("MessageSid", sid),
        ("AccountSid", "AC123"),
        ("From", "whatsapp:+14155550177"),
        ("To", "whatsapp:+14155238886"),
        ("WaId", "14155550177"),
        ("MessageType", "document"),
        ("NumMedia", "1"),
        ("MediaUrl0", url),
        ("MediaContentType0", kind),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let signature = waypost_providers::signature::sign_twilio(b"twilio-token", callback, &params);
    let answer = client
        .post(callback)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn media_is_served_so_it_cannot_run_in_our_origin() {
    let twilio = twilio_files().await;
    for db in test_databases().await {
        let scratch = Scratch::new();
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ];
        let env = [
            ("WAYPOST_EGRESS__ALLOW", "127.0.0.1"),
            ("WAYPOST_JOBS__POLL_INTERVAL_MS", "50"),
        ];
        let mut server = Server::start(&scratch.0, &args, &env);
        let key = server.wait_for_stdout("  wp_").trim().to_string();
        let client = reqwest::Client::new();
        let channel: Value = client
            .post(server.url("/api/v1/channels"))
            .bearer_auth(&key)
            .json(&json!({"provider": "twilio", "display_number": "+1 415 523 8886",
                "account_sid": "AC123", "auth_token": "twilio-token", "graph_api_base_url": twilio}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            channel["name"], "+14155238886",
            "the name defaults to the number"
        );
        let callback = channel["webhook"]["callback_url"].as_str().unwrap();
        let html = format!("{twilio}/2010-04-01/Accounts/AC123/Messages/MM1/Media/page.html");
        let jpeg = format!("{twilio}/2010-04-01/Accounts/AC123/Messages/MM2/Media/photo");
        twilio_media_webhook(&client, callback, "MM1", &html, "text/html").await;
        twilio_media_webhook(&client, callback, "MM2", &jpeg, "image/jpeg").await;
        let (_, messages) = crate::inbound::wait_for_messages(&client, &server, &key, 2).await;
        for message in messages["data"].as_array().unwrap() {
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
            let is_html = message["content"]["media"]["mime_type"] == "text/html";
            let expected = if is_html {
                "application/octet-stream"
            } else {
                "image/jpeg"
            };
            assert_eq!(header(&file, "content-type"), expected, "{message}");
            let disposition = header(&file, "content-disposition");
            assert!(
                disposition.starts_with("attachment; filename=\""),
                "{disposition}"
            );
            assert!(!disposition.contains(".html"), "{disposition}");
            assert_eq!(header(&file, "x-content-type-options"), "nosniff");
            assert_eq!(
                header(&file, "content-security-policy"),
                "sandbox; default-src 'none'"
            );
            assert_eq!(header(&file, "cache-control"), "private, no-store");
        }

        // Baseline headers on every kind of answer.
        for (path, auth) in [
            ("/healthz", false),
            ("/api/v1/tenant", true),
            ("/api/v1/nothing-here", true),
            ("/api/openapi.json", false),
            ("/metrics", false),
        ] {
            let mut request = client.get(server.url(path));
            if auth {
                request = request.bearer_auth(&key);
            }
            assert_baseline_headers(&request.send().await.unwrap(), path);
        }
    }
}

/// A body of `len` zero bytes sent in chunks, without a declared length.
fn chunked(len: usize) -> reqwest::Body {
    let chunk = bytes::Bytes::from(vec![0u8; 1024 * 1024]);
    let stream = futures_util::stream::iter((0..len.div_ceil(chunk.len())).map(move |i| {
        let end = chunk.len().min(len - i * chunk.len());
        Ok::<_, std::io::Error>(chunk.slice(..end))
    }));
    reqwest::Body::wrap_stream(stream)
}

enum Framing {
    /// `Content-Length`, and no body sent at all (the answer must not wait for it).
    Declared(usize),
    /// `Transfer-Encoding: chunked`, 1 MiB chunks.
    Chunked(usize),
}

/// A POST over a bare socket: writes while the server reads, ignores a broken pipe, and
/// returns everything the server answered.
async fn raw_post(server: &Server, path: &str, headers: &str, framing: Framing) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server
        .base
        .as_deref()
        .unwrap()
        .trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let length = match framing {
        Framing::Declared(n) => format!("content-length: {n}"),
        Framing::Chunked(_) => "transfer-encoding: chunked".into(),
    };
    let head = format!("POST {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}\r\n{length}\r\n\r\n");
    write.write_all(head.as_bytes()).await.unwrap();
    let writer = tokio::spawn(async move {
        if let Framing::Chunked(total) = framing {
            let chunk = vec![0u8; 1024 * 1024];
            for _ in 0..total.div_ceil(chunk.len()) {
                let framed =
                    [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if write.write_all(&framed).await.is_err() {
                    return;
                }
            }
            let _ = write.write_all(b"0\r\n\r\n").await;
        }
        // Keep the socket open until the answer is read.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
            break;
        }
    }
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

fn assert_raw_too_large(answer: &str, what: &str) {
    assert!(answer.starts_with("HTTP/1.1 413"), "{what}: {answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{what}: {answer}"
    );
    assert!(
        answer.contains("\"code\":\"payload_too_large\""),
        "{what}: {answer}"
    );
}

#[tokio::test]
async fn uploads_stream_up_to_100_mib_and_every_413_is_a_problem_document() {
    let sim = Simulator::new(SimulatorConfig {
        access_token: Some("EAAG-token".into()),
        ..SimulatorConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_base = format!("http://{}/simulator/graph", listener.local_addr().unwrap());
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let db = &test_databases().await[0];
    let scratch = Scratch::new();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db.url,
    ];
    let mut server = Server::start(&scratch.0, &args, &[("WAYPOST_EGRESS__ALLOW", "127.0.0.1")]);
    let key = server.wait_for_stdout("  wp_").trim().to_string();
    let client = reqwest::Client::new();
    let channel: Value = client
        .post(server.url("/api/v1/channels"))
        .bearer_auth(&key)
        .json(
            &json!({"phone_number_id": "100000000000001", "display_phone_number": "15550000001",
            "access_token": "EAAG-token", "app_secret": "s", "graph_api_base_url": sim_base}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        channel["display_number"], "15550000001",
        "Meta's own field name is taken"
    );
    assert_eq!(channel["name"], "15550000001");
    let upload = server.url(&format!(
        "/api/v1/media?channel_id={}&filename=a.pdf",
        channel["id"].as_str().unwrap()
    ));

    let five_mb = client
        .post(&upload)
        .bearer_auth(&key)
        .header("content-type", "application/pdf")
        .body(vec![7u8; 5 * 1000 * 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(five_mb.status(), 201, "{}", five_mb.text().await.unwrap());
    assert!(sim.stats().uploaded_bytes >= 5 * 1000 * 1000);
    let chunked_ok = client
        .post(&upload)
        .bearer_auth(&key)
        .header("content-type", "application/pdf")
        .body(chunked(3 * 1024 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked_ok.status(), 201);

    // The server answers as soon as the limit is crossed, before the client finished
    // writing: raw HTTP, so the answer is read even after the server stops reading.
    let over = 101 * 1024 * 1024;
    let target = upload.trim_start_matches(server.base.as_deref().unwrap());
    let auth = format!("authorization: Bearer {key}\r\ncontent-type: application/pdf");
    let declared = raw_post(&server, target, &auth, Framing::Declared(over)).await;
    assert_raw_too_large(&declared, "101 MiB with a length");
    let streamed = raw_post(&server, target, &auth, Framing::Chunked(over)).await;
    assert_raw_too_large(&streamed, "101 MiB chunked");
    let html = client
        .post(&upload)
        .bearer_auth(&key)
        .header("content-type", "text/html")
        .body("<html>")
        .send()
        .await
        .unwrap();
    assert_eq!(
        html.status(),
        422,
        "only WhatsApp's media types are uploaded"
    );

    // Other routes: 1 MiB, declared or chunked, JSON or webhook.
    let json = format!("authorization: Bearer {key}\r\ncontent-type: application/json");
    let webhook = format!("/webhooks/meta/{}", channel["id"].as_str().unwrap());
    for (path, headers, framing, what) in [
        (
            "/api/v1/contacts",
            json.as_str(),
            Framing::Chunked(2 << 20),
            "chunked JSON",
        ),
        (
            "/api/v1/contacts",
            json.as_str(),
            Framing::Declared(2 << 20),
            "declared JSON",
        ),
        (
            webhook.as_str(),
            "content-type: application/json",
            Framing::Chunked(2 << 20),
            "chunked webhook",
        ),
        (
            webhook.as_str(),
            "content-type: application/json",
            Framing::Declared(2 << 20),
            "declared webhook",
        ),
    ] {
        assert_raw_too_large(&raw_post(&server, path, headers, framing).await, what);
    }
}
