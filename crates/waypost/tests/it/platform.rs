//! The platform's own Meta app (`/webhooks/meta`, one app for many tenants): a number is
//! routed to a channel only once the channel's own token proved it belongs to the channel's
//! WhatsApp Business Account, and each change goes to the channels it concerns — by number
//! for messages and statuses, by account for template and account updates.

use std::time::Duration;

use serde_json::{Value, json};
use waypost_providers::signature::sign_meta;
use waypost_simulator::{NumberConfig, Simulator, SimulatorConfig};
use waypost_store::testkit::test_databases;

use crate::process::{Scratch, Server, run_json};

const TOKEN: &str = "EAAG-platform-token";
const PLATFORM_SECRET: &str = "platform-secret";

/// A Graph API stand-in serving numbers of two accounts.
async fn graph() -> (Simulator, String) {
    let sim = Simulator::new(SimulatorConfig {
        access_token: Some(TOKEN.into()),
        ..SimulatorConfig::default()
    });
    for (number, waba) in [("111", "waba-a"), ("222", "waba-b"), ("333", "waba-a")] {
        sim.add_number(
            number,
            NumberConfig {
                webhook_url: "http://127.0.0.1:9/unused".into(),
                app_secret: "unused".into(),
                throughput_mps: 80,
                display_number: Some(format!("1555000{number}")),
                waba_id: Some(waba.into()),
            },
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/simulator/graph", listener.local_addr().unwrap());
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (sim, base)
}

struct Tenant {
    key: String,
}

struct Rig {
    _scratch: Scratch,
    server: Server,
    client: reqwest::Client,
    a: Tenant,
    b: Tenant,
}

impl Rig {
    fn start(url: &str) -> Rig {
        let scratch = Scratch::new();
        let env = [
            ("WAYPOST_META__APP_SECRET", PLATFORM_SECRET),
            ("WAYPOST_META__VERIFY_TOKEN", "platform-verify"),
            ("WAYPOST_JOBS__POLL_INTERVAL_MS", "50"),
            ("WAYPOST_EGRESS__ALLOW", "127.0.0.1"),
        ];
        let args = ["serve", "--listen", "127.0.0.1:0", "--database-url", url];
        let mut server = Server::start(&scratch.0, &args, &env);
        let a = Tenant {
            key: server.wait_for_stdout("  wp_").trim().to_string(),
        };
        let tenant = run_json(
            &scratch.0,
            &[
                "tenant",
                "create",
                "--name",
                "B",
                "--json",
                "--database-url",
                url,
            ],
        );
        let key = run_json(
            &scratch.0,
            &[
                "apikey",
                "create",
                "--tenant",
                tenant["id"].as_str().unwrap(),
                "--role",
                "admin",
                "--json",
                "--database-url",
                url,
            ],
        );
        let b = Tenant {
            key: key["key"].as_str().unwrap().to_string(),
        };
        Rig {
            _scratch: scratch,
            server,
            client: reqwest::Client::new(),
            a,
            b,
        }
    }

    async fn call(
        &self,
        tenant: &Tenant,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, self.server.url(path))
            .bearer_auth(&tenant.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn channel(&self, tenant: &Tenant, number: &str, waba: &str, base: &str) -> (u16, Value) {
        let body = json!({"phone_number_id": number, "waba_id": waba, "access_token": TOKEN,
            "app_secret": "own-app-secret", "graph_api_base_url": base});
        self.call(
            tenant,
            reqwest::Method::POST,
            "/api/v1/channels",
            Some(body),
        )
        .await
    }

    /// Polls the channel until its verification leaves `pending`.
    async fn verified(&self, tenant: &Tenant, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, channel) = self
                .call(
                    tenant,
                    reqwest::Method::GET,
                    &format!("/api/v1/channels/{id}"),
                    None,
                )
                .await;
            if channel["verification"] != "pending" {
                return channel;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still pending: {channel}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post_platform(&self, body: &Value) {
        let body = serde_json::to_vec(body).unwrap();
        let response = self
            .client
            .post(self.server.url("/webhooks/meta"))
            .header(
                "x-hub-signature-256",
                sign_meta(PLATFORM_SECRET.as_bytes(), &body),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    async fn conversations(&self, tenant: &Tenant) -> Vec<Value> {
        let (_, page) = self
            .call(tenant, reqwest::Method::GET, "/api/v1/conversations", None)
            .await;
        page["data"].as_array().cloned().unwrap_or_default()
    }

    async fn template_status(&self, tenant: &Tenant, name: &str) -> String {
        let (_, page) = self
            .call(tenant, reqwest::Method::GET, "/api/v1/templates", None)
            .await;
        let found = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name);
        found.unwrap()["status"].as_str().unwrap().to_string()
    }
}

fn message_change(number: &str, wamid: &str) -> Value {
    json!({"field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": format!("1555000{number}"), "phone_number_id": number},
        "contacts": [{"profile": {"name": "Customer"}, "wa_id": "16505551234"}],
        "messages": [{"from": "16505551234", "id": wamid, "timestamp": "1749416383", "type": "text",
            "text": {"body": wamid}}]}})
}

fn template_change(name: &str, event: &str) -> Value {
    json!({"field": "message_template_status_update", "value": {"event": event,
        "message_template_id": format!("sim-{name}"), "message_template_name": name,
        "message_template_language": "en_US", "reason": "NONE"}})
}

#[tokio::test]
async fn the_platform_app_routes_only_to_verified_numbers_by_number_and_by_account() {
    let (_graph, base) = graph().await;
    let closed = format!(
        "http://127.0.0.1:{}/simulator/graph",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    for db in test_databases().await {
        let rig = Rig::start(&db.url);
        let (status, a) = rig.channel(&rig.a, "111", "waba-a", &base).await;
        assert_eq!(status, 201, "{a}");
        assert_eq!(a["verification"], "pending", "{a}");
        let (_, b) = rig.channel(&rig.b, "222", "waba-b", &base).await;

        // A number connected elsewhere cannot be claimed, and the answer names no tenant.
        let (status, taken) = rig.channel(&rig.b, "111", "waba-a", &base).await;
        assert_eq!(status, 409, "{taken}");
        assert!(!taken.to_string().contains(a["id"].as_str().unwrap()));
        // A number of another account, an unknown number, an unreachable Graph API.
        let (_, wrong_account) = rig.channel(&rig.b, "333", "waba-b", &base).await;
        let (_, unknown) = rig.channel(&rig.b, "444", "waba-b", &base).await;
        let (_, unreachable) = rig.channel(&rig.b, "555", "waba-b", &closed).await;

        let a = rig.verified(&rig.a, a["id"].as_str().unwrap()).await;
        assert_eq!(a["verification"], "verified", "{a}");
        let b = rig.verified(&rig.b, b["id"].as_str().unwrap()).await;
        assert_eq!(b["verification"], "verified", "{b}");
        let wrong = rig
            .verified(&rig.b, wrong_account["id"].as_str().unwrap())
            .await;
        assert_eq!(wrong["verification"], "failed");
        assert!(
            wrong["verification_reason"]
                .as_str()
                .unwrap()
                .contains("does not belong"),
            "{wrong}"
        );
        let unknown = rig.verified(&rig.b, unknown["id"].as_str().unwrap()).await;
        assert_eq!(unknown["verification"], "failed", "{unknown}");

        // Both tenants synced the same template names from their accounts.
        for (tenant, channel) in [(&rig.a, &a), (&rig.b, &b)] {
            let path = format!(
                "/api/v1/channels/{}/templates/sync",
                channel["id"].as_str().unwrap()
            );
            let (status, synced) = rig
                .call(tenant, reqwest::Method::POST, &path, Some(json!({})))
                .await;
            assert_eq!(status, 200, "{synced}");
        }

        // One body: a message for A's number, and a rejection of B's template of the same
        // name as one of A's; then a body carrying only an account update for B; then
        // messages for numbers that are not verified (yet, or ever).
        rig.post_platform(&json!({"object": "whatsapp_business_account", "entry": [
            {"id": "waba-a", "changes": [message_change("111", "wamid.FOR-A")]},
            {"id": "waba-b", "changes": [template_change("seasonal_offer", "REJECTED")]}]}))
            .await;
        rig.post_platform(&json!({"object": "whatsapp_business_account", "entry": [
            {"id": "waba-b", "changes": [template_change("order_update", "PAUSED")]}]}))
            .await;
        rig.post_platform(&json!({"object": "whatsapp_business_account", "entry": [
            {"id": "waba-b", "changes": [message_change("555", "wamid.PENDING"),
                message_change("333", "wamid.FAILED")]}]}))
            .await;

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while rig.template_status(&rig.b, "order_update").await != "PAUSED" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "B's account update was not routed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            rig.template_status(&rig.b, "seasonal_offer").await,
            "REJECTED"
        );
        assert_eq!(
            rig.template_status(&rig.a, "seasonal_offer").await,
            "APPROVED",
            "B's account update must not touch A's template of the same name"
        );
        let for_a = rig.conversations(&rig.a).await;
        assert_eq!(for_a.len(), 1, "{for_a:?}");
        assert!(
            rig.conversations(&rig.b).await.is_empty(),
            "a pending or failed number receives nothing"
        );
        // The subscription handshake, and a body signed with a channel's own app secret.
        let challenge = rig
            .client
            .get(rig.server.url(
                "/webhooks/meta?hub.mode=subscribe&hub.challenge=42&hub.verify_token=platform-verify",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(challenge.text().await.unwrap(), "42");
        let body = serde_json::to_vec(&json!({"entry": []})).unwrap();
        let foreign = rig
            .client
            .post(rig.server.url("/webhooks/meta"))
            .header("x-hub-signature-256", sign_meta(b"own-app-secret", &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            foreign.status(),
            403,
            "the platform route takes only the platform app's signature"
        );
        let pending = rig
            .call(
                &rig.b,
                reqwest::Method::GET,
                &format!("/api/v1/channels/{}", unreachable["id"].as_str().unwrap()),
                None,
            )
            .await
            .1;
        assert_eq!(pending["verification"], "pending", "{pending}");
    }
}
