//! The HTTP API served for real on a random port, on SQLite and PostgreSQL.

// Test code: a failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod identity;
mod limits;

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use waypost_api::{ApiKeySecret, AppState, AuthConfig};
use waypost_core::{Role, TenantId, Timestamp};
use waypost_store::{
    NewApiKey, NewJob, Store,
    testkit::{TestDb, test_databases},
};

pub struct Server {
    base: String,
    store: Store,
    client: Client,
    shutdown: CancellationToken,
    _db: TestDb,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(db: TestDb) -> Server {
    start_with(db, AuthConfig::default()).await
}

async fn start_with(db: TestDb, config: AuthConfig) -> Server {
    let store = db.store().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let vault =
        waypost_vault::Vault::open(store.clone(), waypost_vault::MasterKey::generate().unwrap())
            .await
            .unwrap();
    let mut state = AppState::new(store.clone(), std::sync::Arc::new(vault), config).unwrap();
    // Fake providers listen on this machine.
    state.http = waypost_outbound::provider::ProviderHttp::new(
        waypost_egress::EgressClient::new(
            waypost_egress::EgressPolicy::new(&["127.0.0.0/8"]).unwrap(),
        )
        .unwrap(),
    );
    tokio::spawn(state.queue_gauges.clone().run(
        store.clone(),
        Duration::from_millis(100),
        shutdown.clone(),
    ));
    tokio::spawn(waypost_api::serve(listener, state, shutdown.clone()));
    Server {
        base,
        store,
        client: Client::new(),
        shutdown,
        _db: db,
    }
}

impl Server {
    async fn tenant(&self, name: &str) -> TenantId {
        let mut tx = self.store.platform().await.unwrap();
        let id = tx.create_tenant(name).await.unwrap().id;
        tx.commit().await.unwrap();
        id
    }

    async fn key(&self, tenant: TenantId, role: Role, expires_at: Option<Timestamp>) -> String {
        let secret = ApiKeySecret::generate(tenant).unwrap();
        let mut tx = self.store.tenant(tenant).await.unwrap();
        tx.create_api_key(NewApiKey {
            prefix: secret.prefix.clone(),
            secret_hash: secret.secret_hash.clone(),
            name: role.to_string(),
            role,
            expires_at,
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
        secret.token
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let problem = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/problem+json"));
        let text = resp.text().await.unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            assert!(problem, "{status} without a problem document: {value}");
            assert_eq!(value["status"], status.as_u16(), "{value}");
            assert!(
                value["code"].is_string()
                    && value["type"]
                        .as_str()
                        .unwrap()
                        .ends_with(value["code"].as_str().unwrap())
            );
        }
        (status, value)
    }

    async fn key_count(&self, tenant: TenantId) -> usize {
        let mut tx = self.store.tenant_read(tenant).await.unwrap();
        tx.list_api_keys(200, None).await.unwrap().data.len()
    }
}

#[tokio::test]
async fn every_kind_of_bad_credential_is_a_401_problem() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let good = server.key(tenant, Role::Admin, None).await;
        let other = ApiKeySecret::generate(tenant).unwrap().token;
        // The right prefix with someone else's secret.
        let wrong_secret = format!("{}{}", &good[..20], &other[20..]);
        let unknown_tenant = ApiKeySecret::generate(TenantId::new()).unwrap().token;
        let soon = server
            .key(
                tenant,
                Role::Admin,
                Some(Timestamp::now().plus(Duration::from_millis(300))),
            )
            .await;
        let revoked = server.key(tenant, Role::Admin, None).await;
        let (_, list) = server
            .call(Method::GET, "/api/v1/api-keys", Some(&good), None)
            .await;
        let revoked_id = list["data"].as_array().unwrap().last().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, _) = server
            .call(
                Method::DELETE,
                &format!("/api/v1/api-keys/{revoked_id}"),
                Some(&good),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(400)).await;

        for (key, detail) in [
            (None, "missing"),
            (Some("not-a-key"), "invalid API key"),
            (Some(wrong_secret.as_str()), "invalid API key"),
            (Some(unknown_tenant.as_str()), "invalid API key"),
            (Some(soon.as_str()), "expired"),
            (Some(revoked.as_str()), "revoked"),
        ] {
            let (status, body) = server.call(Method::GET, "/api/v1/tenant", key, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{key:?}");
            assert_eq!(body["code"], "unauthorized");
            assert!(body["detail"].as_str().unwrap().contains(detail), "{body}");
        }
        let (status, body) = server
            .call(Method::GET, "/api/v1/tenant", Some(&good), None)
            .await;
        assert_eq!(
            (status, body["name"].as_str()),
            (StatusCode::OK, Some("Acme"))
        );
    }
}

#[tokio::test]
async fn roles_gate_key_management() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let viewer = server.key(tenant, Role::Viewer, None).await;
        let admin = server.key(tenant, Role::Admin, None).await;
        let (status, body) = server
            .call(Method::GET, "/api/v1/api-keys", Some(&viewer), None)
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
        let (status, _) = server
            .call(Method::GET, "/api/v1/tenant", Some(&viewer), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let before = server.key_count(tenant).await;
        let (status, _) = server
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(&viewer),
                Some(json!({"name": "x", "role": "viewer"})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = server
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(&admin),
                Some(json!({"name": "x", "role": "owner"})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "an admin must not mint owner keys"
        );
        let owner = server.key(tenant, Role::Owner, None).await;
        let (_, keys) = server
            .call(Method::GET, "/api/v1/api-keys", Some(&admin), None)
            .await;
        let owner_id = keys["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["role"] == "owner")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, _) = server
            .call(
                Method::DELETE,
                &format!("/api/v1/api-keys/{owner_id}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "an admin must not revoke owner keys"
        );
        let (status, _) = server
            .call(Method::GET, "/api/v1/tenant", Some(&owner), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        // The owner key minted by the test; the refused requests added or revoked nothing.
        assert_eq!(
            server.key_count(tenant).await,
            before + 1,
            "a refused request changed something"
        );
    }
}

#[tokio::test]
async fn keys_are_created_shown_once_paginated_and_revoked() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let owner = server.key(tenant, Role::Owner, None).await;
        let mut created = Vec::new();
        for i in 0..3 {
            let (status, body) = server
                .call(Method::POST, "/api/v1/api-keys", Some(&owner), Some(json!({"name": format!("k{i}"), "role": "agent", "expires_at": "2999-01-01T00:00:00Z"})))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert!(
                body["key"]
                    .as_str()
                    .unwrap()
                    .starts_with(body["prefix"].as_str().unwrap())
            );
            assert_eq!(body["expires_at"], "2999-01-01T00:00:00Z");
            created.push(body);
        }
        // The new key works, and is never shown again.
        let new_key = created[0]["key"].as_str().unwrap();
        let (status, _) = server
            .call(Method::GET, "/api/v1/tenant", Some(new_key), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        let id = created[0]["id"].as_str().unwrap();
        let (_, fetched) = server
            .call(
                Method::GET,
                &format!("/api/v1/api-keys/{id}"),
                Some(&owner),
                None,
            )
            .await;
        assert!(
            fetched.get("key").is_none() && fetched["last_used_at"].is_string(),
            "{fetched}"
        );

        let (_, page1) = server
            .call(Method::GET, "/api/v1/api-keys?limit=2", Some(&owner), None)
            .await;
        assert_eq!(page1["data"].as_array().unwrap().len(), 2);
        let cursor = page1["next_cursor"].as_str().unwrap();
        let (_, page2) = server
            .call(
                Method::GET,
                &format!("/api/v1/api-keys?limit=2&cursor={cursor}"),
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(page2["data"].as_array().unwrap().len(), 2);
        assert!(page2["next_cursor"].is_null());
        let ids: Vec<_> = page1["data"]
            .as_array()
            .unwrap()
            .iter()
            .chain(page2["data"].as_array().unwrap())
            .map(|k| k["id"].clone())
            .collect();
        assert_eq!(ids.len(), 4);
        assert!(created.iter().all(|c| ids.contains(&c["id"])));

        let (status, revoked) = server
            .call(
                Method::DELETE,
                &format!("/api/v1/api-keys/{id}"),
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(revoked["revoked_at"].is_string());
        let (status, body) = server
            .call(
                Method::DELETE,
                &format!("/api/v1/api-keys/{id}"),
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::CONFLICT, Some("conflict"))
        );
        let (status, _) = server
            .call(Method::GET, "/api/v1/tenant", Some(new_key), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn another_tenants_objects_answer_404_and_stay_untouched() {
    for db in test_databases().await {
        let server = start(db).await;
        let (a, b) = (server.tenant("A").await, server.tenant("B").await);
        let key_a = server.key(a, Role::Owner, None).await;
        let key_b = server.key(b, Role::Owner, None).await;
        let (_, list) = server
            .call(Method::GET, "/api/v1/api-keys", Some(&key_a), None)
            .await;
        let id_a = list["data"][0]["id"].as_str().unwrap().to_string();
        for method in [Method::GET, Method::DELETE] {
            let (status, body) = server
                .call(
                    method.clone(),
                    &format!("/api/v1/api-keys/{id_a}"),
                    Some(&key_b),
                    None,
                )
                .await;
            assert_eq!(
                (status, body["code"].as_str()),
                (StatusCode::NOT_FOUND, Some("not_found")),
                "{method}"
            );
            assert!(
                !body.to_string().contains(&id_a[..8]) || body["detail"] == "API key not found"
            );
        }
        let (status, _) = server
            .call(Method::GET, "/api/v1/tenant", Some(&key_a), None)
            .await;
        assert_eq!(status, StatusCode::OK, "tenant B revoked tenant A's key");
        let (_, list_b) = server
            .call(Method::GET, "/api/v1/api-keys", Some(&key_b), None)
            .await;
        assert_eq!(list_b["data"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn bad_input_gets_a_stable_code_and_changes_nothing() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let owner = server.key(tenant, Role::Owner, None).await;
        let before = server.key_count(tenant).await;
        let raw = |body: &'static str| {
            server
                .client
                .post(format!("{}/api/v1/api-keys", server.base))
                .bearer_auth(&owner)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let resp = raw("{not json").await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["code"],
            "invalid_request"
        );
        let big = "x".repeat(2 * 1024 * 1024);
        let resp = server
            .client
            .post(format!("{}/api/v1/api-keys", server.base))
            .bearer_auth(&owner)
            .header("content-type", "application/json")
            .body(format!("{{\"name\":\"{big}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

        for (body, code) in [
            (json!({"name": "x"}), "validation_failed"),
            (json!({"name": "x", "role": "root"}), "validation_failed"),
            (
                json!({"name": "x", "role": "agent", "colour": "red"}),
                "validation_failed",
            ),
            (json!({"name": "", "role": "agent"}), "validation_failed"),
            (
                json!({"name": "x", "role": "agent", "expires_at": "tomorrow"}),
                "validation_failed",
            ),
            (
                json!({"name": "x", "role": "agent", "expires_at": "2001-01-01T00:00:00Z"}),
                "validation_failed",
            ),
        ] {
            let (status, problem) = server
                .call(
                    Method::POST,
                    "/api/v1/api-keys",
                    Some(&owner),
                    Some(body.clone()),
                )
                .await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
                "{body}"
            );
        }
        for (path, status, code) in [
            (
                "/api/v1/api-keys/not-a-uuid",
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "/api/v1/api-keys?limit=0",
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            ),
            (
                "/api/v1/api-keys?limit=abc",
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                "/api/v1/api-keys?cursor=%%%",
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            ("/api/v1/nothing-here", StatusCode::NOT_FOUND, "not_found"),
        ] {
            let (got, problem) = server.call(Method::GET, path, Some(&owner), None).await;
            assert_eq!(
                (got, problem["code"].as_str()),
                (status, Some(code)),
                "{path}"
            );
        }
        let (status, problem) = server
            .call(Method::PUT, "/api/v1/tenant", Some(&owner), None)
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
        assert_eq!(server.key_count(tenant).await, before);
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_the_server_answers() {
    let server = start(TestDb::sqlite()).await;
    let (status, doc) = server
        .call(Method::GET, "/api/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc, serde_json::to_value(waypost_api::openapi()).unwrap());
    let paths = doc["paths"].as_object().unwrap();
    for expected in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/tenant",
        "/api/v1/api-keys",
        "/api/v1/api-keys/{id}",
    ] {
        assert!(
            paths.contains_key(expected),
            "{expected} missing from the document"
        );
    }
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
            let (status, body) = server
                .call(
                    method.to_uppercase().parse().unwrap(),
                    &concrete,
                    None,
                    None,
                )
                .await;
            assert_ne!(body["detail"], "no such route", "{method} {path}");
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let permission =
                waypost_api::authz::permission_for(&method.to_uppercase(), path).unwrap();
            if permission != waypost_api::authz::Permission::Public {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} is not authenticated"
                );
            }
        }
    }
}

#[tokio::test]
async fn operations_endpoints_report_health_readiness_and_metrics() {
    for db in test_databases().await {
        let engine = db.engine().as_str();
        let server = start(db).await;
        let (status, health) = server.call(Method::GET, "/healthz", None, None).await;
        assert_eq!(
            (status, health["status"].as_str()),
            (StatusCode::OK, Some("ok"))
        );
        let head = server
            .client
            .head(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), StatusCode::OK, "HEAD answers like GET");
        let (status, ready) = server.call(Method::GET, "/readyz", None, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ready["database"]["engine"], engine);
        assert_eq!(
            ready["database"]["schema_version"],
            ready["database"]["expected_schema_version"]
        );

        let mut tx = server.store.platform().await.unwrap();
        tx.enqueue(NewJob::new("metrics.test", ()).unwrap())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // The queue gauges are read in the background, every 100 ms here.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let (status, text) = server.call(Method::GET, "/metrics", None, None).await;
            assert_eq!(status, StatusCode::OK);
            let text = text.as_str().unwrap().to_string();
            if text.contains("metrics.test") || tokio::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            text.contains(
                "waypost_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"}"
            ),
            "{text}"
        );
        assert!(text.contains("waypost_http_request_duration_seconds_bucket"));
        assert!(
            text.contains("waypost_jobs{kind=\"metrics.test\",state=\"pending\"} 1"),
            "{text}"
        );
        assert!(text.contains("waypost_jobs_oldest_age_seconds{kind=\"metrics.test\""));
    }
}
