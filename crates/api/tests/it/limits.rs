//! Every free-text field has a documented maximum: at the limit it is accepted, one character
//! more is a 422 `validation_failed`. Characters are counted, not bytes (`é` is two bytes).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use waypost_core::Role;
use waypost_store::testkit::test_databases;

use super::{Server, start};
use crate::identity::PASSWORD;

fn text(n: usize) -> String {
    "é".repeat(n)
}

impl Server {
    /// `body(max)` is answered `accepted`; `body(max + 1)` is a 422 naming `field`.
    async fn bounded(
        &self,
        key: &str,
        (method, path): (Method, &str),
        field: &str,
        max: usize,
        accepted: StatusCode,
        body: impl Fn(String) -> Value,
    ) {
        let (status, answer) = self
            .call(method.clone(), path, Some(key), Some(body(text(max))))
            .await;
        assert_eq!(status, accepted, "{field} at {max}: {answer}");
        let (status, problem) = self
            .call(method, path, Some(key), Some(body(text(max + 1))))
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{field} at {}",
            max + 1
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(field), "{detail}");
    }
}

#[tokio::test]
async fn consent_settings_are_bounded() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let admin = server.key(tenant, Role::Admin, None).await;
        let put = (Method::PUT, "/api/v1/settings/consent");
        server
            .bounded(&admin, put.clone(), "confirmation_reply", 4096, StatusCode::OK, |reply| {
                json!({"opt_out_keywords": ["STOP"], "opt_in_keywords": [], "confirmation_reply": reply})
            })
            .await;
        server
            .bounded(
                &admin,
                put.clone(),
                "keywords",
                32,
                StatusCode::OK,
                |word| json!({"opt_out_keywords": [word], "opt_in_keywords": []}),
            )
            .await;
        let words = |n: usize| (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>();
        let (status, _) = server
            .call(
                put.0.clone(),
                put.1,
                Some(&admin),
                Some(json!({"opt_out_keywords": words(60), "opt_in_keywords": words(40)})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, problem) = server
            .call(
                put.0,
                put.1,
                Some(&admin),
                Some(json!({"opt_out_keywords": words(60), "opt_in_keywords": words(41)})),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
        );
    }
}

#[tokio::test]
async fn ai_settings_are_bounded() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let admin = server.key(tenant, Role::Admin, None).await;
        let put = (Method::PUT, "/api/v1/settings/ai");
        let settings = |base_url: String, model: String, api_key: String| {
            json!({"provider": "openai_compatible", "base_url": base_url, "model": model,
                   "enabled": true, "api_key": api_key})
        };
        let url = |n: usize| format!("https://ai.example/{}", "a".repeat(n - 19));
        let (status, _) = server
            .call(
                put.0.clone(),
                put.1,
                Some(&admin),
                Some(settings(url(2048), "m".into(), "k".into())),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, problem) = server
            .call(
                put.0.clone(),
                put.1,
                Some(&admin),
                Some(settings(url(2049), "m".into(), "k".into())),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
        );
        let base = "https://ai.example/v1".to_string();
        server
            .bounded(&admin, put.clone(), "model", 200, StatusCode::OK, |model| {
                settings(base.clone(), model, "k".into())
            })
            .await;
        server
            .bounded(&admin, put, "api_key", 4096, StatusCode::OK, |key| {
                settings(base.clone(), "m".into(), key)
            })
            .await;
    }
}

#[tokio::test]
async fn contact_fields_and_searches_are_bounded() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let agent = server.key(tenant, Role::Agent, None).await;
        let (status, created) = server
            .call(
                Method::POST,
                "/api/v1/contacts",
                Some(&agent),
                Some(json!({"phone": "+14155550100", "name": text(200)})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let path = format!("/api/v1/contacts/{}", created["id"].as_str().unwrap());
        server
            .bounded(
                &agent,
                (Method::PATCH, &path),
                "name",
                200,
                StatusCode::OK,
                |name| json!({"name": name}),
            )
            .await;
        server
            .bounded(
                &agent,
                (Method::PATCH, &path),
                "note",
                500,
                StatusCode::OK,
                |note| json!({"marketing_consent": "opt_out", "note": note}),
            )
            .await;
        let padded = |n: usize| format!("+14155550111{}", " ".repeat(n - 12));
        let create = |phone: String| {
            server.call(
                Method::POST,
                "/api/v1/contacts",
                Some(&agent),
                Some(json!({"phone": phone})),
            )
        };
        assert_eq!(create(padded(64)).await.0, StatusCode::CREATED);
        let (status, problem) = create(padded(65)).await;
        assert_eq!(
            (status, problem["detail"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("phone must be at most 64 characters")
            )
        );
        let search = |n: usize| format!("/api/v1/contacts?search={}", "a".repeat(n));
        assert_eq!(
            server
                .call(Method::GET, &search(200), Some(&agent), None)
                .await
                .0,
            StatusCode::OK
        );
        let (status, problem) = server
            .call(Method::GET, &search(201), Some(&agent), None)
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
        );
    }
}

#[tokio::test]
async fn audit_filters_and_api_key_fields_are_bounded() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let owner = server.key(tenant, Role::Owner, None).await;
        for filter in ["actor", "action", "target_type", "target_id"] {
            let path = |n: usize| format!("/api/v1/audit-events?{filter}={}", "a".repeat(n));
            assert_eq!(
                server
                    .call(Method::GET, &path(200), Some(&owner), None)
                    .await
                    .0,
                StatusCode::OK
            );
            let (status, problem) = server
                .call(Method::GET, &path(201), Some(&owner), None)
                .await;
            assert_eq!(
                (status, problem["code"].as_str()),
                (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
                "{filter}"
            );
        }
        server
            .bounded(
                &owner,
                (Method::POST, "/api/v1/api-keys"),
                "name",
                200,
                StatusCode::CREATED,
                |name| json!({"name": name, "role": "viewer"}),
            )
            .await;
    }
}

#[tokio::test]
async fn sign_in_fields_tenant_names_and_operator_reasons_are_bounded() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let login = |email: String, password: String| {
            server
                .client
                .post(format!("{}/api/v1/auth/login", server.base))
                .json(&json!({"email": email, "password": password}))
                .send()
        };
        for (email, password) in [
            ("a".repeat(255), "p".into()),
            ("a@example.com".into(), text(1025)),
        ] {
            let resp = login(email, password).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert_eq!(
                resp.json::<Value>().await.unwrap()["code"],
                "validation_failed"
            );
        }
        server.user("ops@example.com", None, true).await;
        let ops = server.login("ops@example.com", PASSWORD).await.1.unwrap();
        let (status, problem) = server
            .as_browser(
                Method::POST,
                "/api/v1/auth/password",
                &ops,
                true,
                Some(
                    json!({"current_password": text(1025), "new_password": "a fine new password"}),
                ),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
        );

        for (n, expected) in [
            (200, StatusCode::CREATED),
            (201, StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            let (status, _) = server
                .as_browser(
                    Method::POST,
                    "/api/v1/operator/tenants",
                    &ops,
                    true,
                    Some(json!({"name": text(n)})),
                )
                .await;
            assert_eq!(status, expected, "tenant name of {n}");
        }
        for (n, expected) in [
            (500, StatusCode::OK),
            (501, StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            let (status, answer) = server
                .as_browser(
                    Method::POST,
                    "/api/v1/operator/access",
                    &ops,
                    true,
                    Some(json!({"tenant_id": tenant, "unmask": true, "reason": text(n)})),
                )
                .await;
            assert_eq!(status, expected, "reason of {n}: {answer}");
        }
    }
}

/// Answers every template submission as Meta would.
async fn fake_graph() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({"id": "4711", "status": "PENDING", "category": "UTILITY"}))
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn template_components_are_bounded_as_meta_bounds_them() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let admin = server.key(tenant, Role::Admin, None).await;
        let (status, channel) = server
            .call(
                Method::POST,
                "/api/v1/channels",
                Some(&admin),
                Some(json!({
                "name": "Main", "phone_number_id": "106540352242922", "waba_id": "102290129340398",
                "access_token": "EAAG-token", "app_secret": "secret",
                "graph_api_base_url": fake_graph().await})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{channel}");
        let path = format!(
            "/api/v1/channels/{}/templates",
            channel["id"].as_str().unwrap()
        );
        let template = |components: Value| json!({"name": "order_update", "language": "en_US", "category": "UTILITY", "components": components});
        let body = json!({"type": "BODY", "text": "Your order {{1}} has shipped."});
        let post = (Method::POST, path.as_str());
        for (field, max, component) in [
            (
                "header text",
                60,
                &(|t: String| json!({"type": "HEADER", "format": "TEXT", "text": t}))
                    as &dyn Fn(String) -> Value,
            ),
            ("footer text", 60, &|t| json!({"type": "FOOTER", "text": t})),
            (
                "button's text",
                25,
                &|t| json!({"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": t}]}),
            ),
            (
                "button's url",
                2000,
                &|t| json!({"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Track", "url": t}]}),
            ),
            (
                "button's phone_number",
                20,
                &|t| json!({"type": "BUTTONS", "buttons": [{"type": "PHONE_NUMBER", "text": "Call", "phone_number": t}]}),
            ),
            (
                "every text in a component",
                2000,
                &|t| json!({"type": "BODY", "text": "Hi {{1}}", "example": {"body_text": [[t]]}}),
            ),
        ] {
            server
                .bounded(&admin, post.clone(), field, max, StatusCode::CREATED, |t| {
                    let part = component(t);
                    let parts = if part["type"] == "BODY" {
                        vec![part]
                    } else {
                        vec![body.clone(), part]
                    };
                    template(Value::Array(parts))
                })
                .await;
        }
        let button = json!({"type": "QUICK_REPLY", "text": "Yes"});
        for (n, expected) in [
            (10, StatusCode::CREATED),
            (11, StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            let buttons = json!({"type": "BUTTONS", "buttons": vec![button.clone(); n]});
            let (status, _) = server
                .call(
                    Method::POST,
                    &path,
                    Some(&admin),
                    Some(template(json!([body, buttons]))),
                )
                .await;
            assert_eq!(status, expected, "{n} buttons");
        }
    }
}
