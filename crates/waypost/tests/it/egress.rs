//! The egress policy through the binary: tenant-supplied URLs and webhook-supplied media URLs
//! that point inside are refused with `egress_refused`, and nothing connects to them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use waypost_simulator::{Simulator, SimulatorConfig};
use waypost_store::testkit::test_databases;

use crate::process::{Scratch, Server};

/// A listener that counts the connections it accepts (and answers each with an image).
async fn trap() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let app =
        axum::Router::new().fallback(|| async { ([("content-type", "image/jpeg")], "secret") });
    tokio::spawn(async move {
        let listener = CountingListener { listener, count };
        axum::serve(listener, app).await.unwrap();
    });
    (port, accepted)
}

struct CountingListener {
    listener: tokio::net::TcpListener,
    count: Arc<AtomicUsize>,
}

impl axum::serve::Listener for CountingListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let accepted = axum::serve::Listener::accept(&mut self.listener).await;
        self.count.fetch_add(1, Ordering::SeqCst);
        accepted
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

fn serve(scratch: &Scratch, url: &str, env: &[(&str, &str)]) -> Server {
    let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", url];
    let mut env = env.to_vec();
    env.push(("WAYPOST_JOBS__POLL_INTERVAL_MS", "50"));
    Server::start(&scratch.0, &args, &env)
}

/// The first run's owner key.
fn owner_key(server: &mut Server) -> String {
    server.wait_for_stdout("  wp_").trim().to_string()
}

async fn call(
    server: &Server,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, server.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

fn assert_refused((status, body): &(u16, Value), what: &str) {
    assert_eq!(*status, 422, "{what}: {body}");
    assert_eq!(body["code"], "egress_refused", "{what}: {body}");
}

#[tokio::test]
async fn tenant_and_webhook_urls_pointing_inside_are_refused_and_nothing_connects() {
    let (port, accepted) = trap().await;
    for db in test_databases().await {
        let scratch = Scratch::new();
        // Gupshup's media hosts include `localhost` here: the host rule passes, the
        // address rule still refuses.
        let mut server = serve(
            &scratch,
            &db.url,
            &[(
                "WAYPOST_EGRESS__MEDIA_HOSTS__GUPSHUP",
                "gupshup.io, localhost",
            )],
        );
        let key = owner_key(&mut server);
        let post = reqwest::Method::POST;
        for base in [
            format!("http://127.0.0.1:{port}"),
            format!("http://localhost:{port}/graph"),
            format!("http://2130706433:{port}"),
            format!("http://[::ffff:127.0.0.1]:{port}"),
            "http://169.254.169.254/latest".to_string(),
        ] {
            let body = json!({"phone_number_id": "106540352242922", "waba_id": "1", "access_token": "t",
                "app_secret": "s", "graph_api_base_url": base});
            let answer = call(&server, &key, post.clone(), "/api/v1/channels", Some(body)).await;
            assert_refused(&answer, &base);
        }
        for base_url in [
            format!("http://localhost:{port}/v1"),
            "http://10.0.0.1/v1".into(),
        ] {
            let body = json!({"provider": "openai_compatible", "base_url": base_url, "model": "m", "enabled": true});
            let answer = call(
                &server,
                &key,
                reqwest::Method::PUT,
                "/api/v1/settings/ai",
                Some(body),
            )
            .await;
            assert_refused(&answer, &base_url);
        }
        let (_, channels) = call(
            &server,
            &key,
            reqwest::Method::GET,
            "/api/v1/channels",
            None,
        )
        .await;
        assert_eq!(
            channels["data"].as_array().unwrap().len(),
            0,
            "a refused channel is not kept"
        );

        // A Gupshup webhook naming internal media URLs: not Gupshup's host, or Gupshup's
        // host list but an internal address.
        let body = json!({"provider": "gupshup", "display_number": "+918898000000", "api_key": "gs-key-1234"});
        let (_, gupshup) = call(&server, &key, post.clone(), "/api/v1/channels", Some(body)).await;
        let callback = gupshup["webhook"]["callback_url"].as_str().unwrap();
        for (n, media) in [
            format!("http://127.0.0.1:{port}/secret.jpg"),
            format!("http://localhost:{port}/secret.jpg"),
        ]
        .iter()
        .enumerate()
        {
            let webhook = json!({"app": "DemoApp", "timestamp": 1580227766370u64, "version": 2, "type": "message",
                "payload": {"id": format!("ABEG{n}"), "source": format!("91889800021{n}"), "type": "image",
                    "payload": {"url": media, "caption": "c"}, "sender": {"phone": format!("91889800021{n}"), "name": "A"}}});
            let sent = reqwest::Client::new()
                .post(callback)
                .json(&webhook)
                .send()
                .await
                .unwrap();
            assert_eq!(sent.status(), 200);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut refused = 0;
        while refused < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "media messages did not arrive"
            );
            refused = 0;
            let (_, conversations) = call(
                &server,
                &key,
                reqwest::Method::GET,
                "/api/v1/conversations",
                None,
            )
            .await;
            for conversation in conversations["data"].as_array().unwrap() {
                let path = format!(
                    "/api/v1/conversations/{}/messages",
                    conversation["id"].as_str().unwrap()
                );
                let (_, messages) = call(&server, &key, reqwest::Method::GET, &path, None).await;
                for message in messages["data"].as_array().unwrap() {
                    let path =
                        format!("/api/v1/messages/{}/media", message["id"].as_str().unwrap());
                    let answer = call(&server, &key, reqwest::Method::GET, &path, None).await;
                    assert_refused(&answer, &path);
                    refused += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "a refused destination was connected to"
        );
    }
}

/// A Graph stand-in whose media lookup points at an internal address.
async fn lookup_pointing_at(target: String) -> u16 {
    let app = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { axum::Json(json!({"url": target, "mime_type": "image/jpeg", "id": "m1"})) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[tokio::test]
async fn a_channel_whose_destination_is_not_allowed_fails_its_sends_with_the_reason() {
    let (trap_port, accepted) = trap().await;
    let sim = Simulator::new(SimulatorConfig {
        access_token: Some("EAAG-token".into()),
        ..SimulatorConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = listener.local_addr().unwrap();
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let lookup_port = lookup_pointing_at(format!("http://127.0.0.1:{trap_port}/file")).await;

    for db in test_databases().await {
        let scratch = Scratch::new();
        // Only the simulator's and the lookup's address and port are allowed.
        let allow = format!("{sim_addr}, 127.0.0.1:{lookup_port}");
        let mut server = serve(&scratch, &db.url, &[("WAYPOST_EGRESS__ALLOW", &allow)]);
        let key = owner_key(&mut server);
        let body = json!({"phone_number_id": "100000000000001", "waba_id": "200000000000001",
            "access_token": "EAAG-token", "app_secret": "s", "graph_api_base_url": format!("http://{sim_addr}/simulator/graph")});
        let (status, channel) = call(
            &server,
            &key,
            reqwest::Method::POST,
            "/api/v1/channels",
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{channel}");
        let id = channel["id"].as_str().unwrap().to_string();
        let sync = format!("/api/v1/channels/{id}/templates/sync");
        assert_eq!(
            call(&server, &key, reqwest::Method::POST, &sync, Some(json!({})))
                .await
                .0,
            200
        );

        // Meta's media lookup answers with a URL inside: the download is refused.
        let body = json!({"phone_number_id": "100000000000002", "access_token": "t", "app_secret": "s",
            "graph_api_base_url": format!("http://127.0.0.1:{lookup_port}")});
        let (_, lookup) = call(
            &server,
            &key,
            reqwest::Method::POST,
            "/api/v1/channels",
            Some(body),
        )
        .await;
        let path = format!(
            "/api/v1/media/123?channel_id={}",
            lookup["id"].as_str().unwrap()
        );
        assert_refused(
            &call(&server, &key, reqwest::Method::GET, &path, None).await,
            "lookup",
        );
        drop(server);

        // The operator withdraws the exception: the channel's sends fail with the reason.
        let server = serve(&scratch, &db.url, &[]);
        let send = json!({"channel_id": id, "to": "+14155550123", "type": "template",
            "template": {"name": "hello_world", "language": {"code": "en_US"}}});
        let (status, sent) = call(
            &server,
            &key,
            reqwest::Method::POST,
            "/api/v1/messages",
            Some(send),
        )
        .await;
        assert_eq!(status, 202, "{sent}");
        let path = format!("/api/v1/messages/{}", sent["id"].as_str().unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let failed = loop {
            let (_, message) = call(&server, &key, reqwest::Method::GET, &path, None).await;
            if message["status"] == "failed" {
                break message;
            }
            assert!(tokio::time::Instant::now() < deadline, "{message}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(failed["error"]["code"], "egress_refused", "{failed}");
        assert_refused(
            &call(&server, &key, reqwest::Method::POST, &sync, Some(json!({}))).await,
            "sync",
        );
        assert_eq!(sim.stats().accepted, 0, "nothing reached the provider");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}
