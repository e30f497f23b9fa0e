//! Sign-in, sessions, CSRF, throttling, the authorization table, the audit trail over HTTP,
//! write-only secrets and operator access.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use waypost_api::{
    AuthConfig, CSRF_HEADER,
    authz::{Permission, ROUTE_PERMISSIONS, permission_for},
};
use waypost_core::{Role, TenantId};
use waypost_store::testkit::{TestDb, test_databases};

use super::{Server, start, start_with};

pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// A signed-in browser: the session cookie and the CSRF token.
pub(crate) struct Browser {
    cookie: String,
    csrf: String,
    body: Value,
}

impl Server {
    pub(crate) async fn user(
        &self,
        email: &str,
        tenant: Option<(TenantId, Role)>,
        operator: bool,
    ) -> waypost_core::UserId {
        let hash = waypost_vault::hash_password(PASSWORD).unwrap();
        let mut tx = self.store.platform().await.unwrap();
        let user = tx.create_user(email, &hash, operator).await.unwrap();
        if let Some((t, role)) = tenant {
            tx.set_membership(t, user.id, role).await.unwrap();
        }
        tx.commit().await.unwrap();
        user.id
    }

    pub(crate) async fn login(
        &self,
        email: &str,
        password: &str,
    ) -> (StatusCode, Option<Browser>, Value) {
        let resp = self
            .client
            .post(format!("{}/api/v1/auth/login", self.base))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let cookie = resp
            .headers()
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_string());
        let body: Value = resp.json().await.unwrap();
        let browser = cookie.map(|c| {
            assert!(
                c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("Path=/"),
                "{c}"
            );
            Browser {
                cookie: c.split(';').next().unwrap().to_string(),
                csrf: body["csrf_token"].as_str().unwrap_or_default().to_string(),
                body: body.clone(),
            }
        });
        (status, browser, body)
    }

    pub(crate) async fn as_browser(
        &self,
        method: Method,
        path: &str,
        browser: &Browser,
        csrf: bool,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(header::COOKIE, &browser.cookie);
        if csrf {
            req = req.header(CSRF_HEADER, &browser.csrf);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn audit_actions(&self, tenant: Option<TenantId>) -> Vec<String> {
        let records = match tenant {
            Some(t) => self
                .store
                .tenant_read(t)
                .await
                .unwrap()
                .list_audit(&Default::default(), 1000)
                .await
                .unwrap(),
            None => self
                .store
                .platform_read()
                .await
                .unwrap()
                .list_platform_audit(0, 1000)
                .await
                .unwrap(),
        };
        records
            .into_iter()
            .map(|r| format!("{}:{}", r.action, r.outcome))
            .collect()
    }
}

#[tokio::test]
async fn sign_in_sessions_csrf_logout_and_password_change() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        server
            .user("ada@example.com", Some((tenant, Role::Admin)), false)
            .await;

        let (status, browser, problem) = server.login("ada@example.com", "wrong password!!").await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized"))
        );
        assert!(browser.is_none(), "a failed sign-in set a cookie");
        let (status, _, problem) = server.login("nobody@example.com", PASSWORD).await;
        assert_eq!(problem["detail"], "wrong email or password", "{status}");

        let (status, browser, body) = server.login("ADA@example.com", PASSWORD).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let browser = browser.unwrap();
        assert_eq!(
            (
                browser.body["role"].as_str(),
                browser.body["tenant_id"].as_str()
            ),
            (Some("admin"), Some(tenant.to_string().as_str()))
        );

        let (status, me) = server
            .as_browser(Method::GET, "/api/v1/auth/me", &browser, false, None)
            .await;
        assert_eq!(
            (status, me["user"]["email"].as_str()),
            (StatusCode::OK, Some("ada@example.com"))
        );
        let (status, _) = server
            .as_browser(Method::GET, "/api/v1/api-keys", &browser, false, None)
            .await;
        assert_eq!(status, StatusCode::OK, "an admin session manages keys");

        // A state change without the CSRF token is refused and changes nothing.
        let new_key = json!({ "name": "from the browser", "role": "viewer" });
        let (status, problem) = server
            .as_browser(
                Method::POST,
                "/api/v1/api-keys",
                &browser,
                false,
                Some(new_key.clone()),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden"))
        );
        assert_eq!(server.key_count(tenant).await, 0);
        let (status, _) = server
            .as_browser(
                Method::POST,
                "/api/v1/api-keys",
                &browser,
                true,
                Some(new_key),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);

        // A second session, then a password change ends it but not the current one.
        let (_, second, _) = server.login("ada@example.com", PASSWORD).await;
        let second = second.unwrap();
        let (_, sessions) = server
            .as_browser(Method::GET, "/api/v1/auth/sessions", &browser, false, None)
            .await;
        assert_eq!(sessions.as_array().unwrap().len(), 2);
        assert_eq!(
            sessions
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["current"] == true)
                .count(),
            1
        );
        let change = json!({ "current_password": "not it at all", "new_password": "a brand new passphrase" });
        let (status, _) = server
            .as_browser(
                Method::POST,
                "/api/v1/auth/password",
                &browser,
                true,
                Some(change),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let change = json!({ "current_password": PASSWORD, "new_password": "short" });
        let (status, _) = server
            .as_browser(
                Method::POST,
                "/api/v1/auth/password",
                &browser,
                true,
                Some(change),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let change =
            json!({ "current_password": PASSWORD, "new_password": "a brand new passphrase" });
        let (status, _) = server
            .as_browser(
                Method::POST,
                "/api/v1/auth/password",
                &browser,
                true,
                Some(change),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = server
            .as_browser(Method::GET, "/api/v1/auth/me", &second, false, None)
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "the other session survived a password change"
        );
        assert_eq!(
            server.login("ada@example.com", PASSWORD).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, third, _) = server
            .login("ada@example.com", "a brand new passphrase")
            .await;
        assert_eq!(status, StatusCode::OK);

        // Revoking a session by id; someone else's id is not found.
        let third = third.unwrap();
        let (_, sessions) = server
            .as_browser(Method::GET, "/api/v1/auth/sessions", &browser, false, None)
            .await;
        let other_id = sessions
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["current"] == false)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, _) = server
            .as_browser(
                Method::DELETE,
                &format!("/api/v1/auth/sessions/{other_id}"),
                &browser,
                true,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = server
            .as_browser(Method::GET, "/api/v1/auth/me", &third, false, None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = server
            .as_browser(
                Method::DELETE,
                &format!("/api/v1/auth/sessions/{}", "00".repeat(32)),
                &browser,
                true,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, _) = server
            .as_browser(Method::POST, "/api/v1/auth/logout", &browser, true, None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = server
            .as_browser(Method::GET, "/api/v1/auth/me", &browser, false, None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let platform = server.audit_actions(None).await;
        for expected in [
            "auth.sign_in:failure",
            "auth.sign_in:success",
            "auth.password_change:failure",
            "auth.password_change:success",
            "auth.session_revoke:success",
            "auth.sign_out:success",
        ] {
            assert!(
                platform.contains(&expected.to_string()),
                "{expected} not in {platform:?}"
            );
        }
        let tenant_trail = server.audit_actions(Some(tenant)).await;
        assert!(tenant_trail.contains(&"auth.sign_in:success".to_string()));
        assert!(tenant_trail.contains(&"api_key.create:success".to_string()));
    }
}

#[tokio::test]
async fn sessions_expire_when_idle_or_old() {
    let config = AuthConfig {
        session_idle: Duration::from_secs(1),
        ..AuthConfig::default()
    };
    let server = start_with(TestDb::sqlite(), config).await;
    let tenant = server.tenant("Acme").await;
    server
        .user("ada@example.com", Some((tenant, Role::Viewer)), false)
        .await;
    let (_, browser, _) = server.login("ada@example.com", PASSWORD).await;
    let browser = browser.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, problem) = server
        .as_browser(Method::GET, "/api/v1/tenant", &browser, false, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        problem["detail"].as_str().unwrap().contains("inactivity"),
        "{problem}"
    );

    let config = AuthConfig {
        session_absolute: Duration::from_secs(1),
        ..AuthConfig::default()
    };
    let server = start_with(TestDb::sqlite(), config).await;
    let tenant = server.tenant("Acme").await;
    server
        .user("ada@example.com", Some((tenant, Role::Viewer)), false)
        .await;
    let (_, browser, _) = server.login("ada@example.com", PASSWORD).await;
    let browser = browser.unwrap();
    assert!(browser.body["expires_at"].is_string());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, problem) = server
        .as_browser(Method::GET, "/api/v1/tenant", &browser, false, None)
        .await;
    assert_eq!(
        (status, problem["detail"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("session expired; sign in again")
        )
    );
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_ip_and_per_account() {
    for db in test_databases().await {
        let config = AuthConfig {
            max_failures_per_ip: 5,
            max_failures_per_account: 3,
            ..AuthConfig::default()
        };
        let server = start_with(db, config).await;
        let tenant = server.tenant("Acme").await;
        server
            .user("ada@example.com", Some((tenant, Role::Viewer)), false)
            .await;
        server
            .user("bob@example.com", Some((tenant, Role::Viewer)), false)
            .await;
        for _ in 0..3 {
            assert_eq!(
                server.login("ada@example.com", "wrong password!!").await.0,
                StatusCode::UNAUTHORIZED
            );
        }
        // The account is locked for the hour, even with the right password...
        let (status, browser, problem) = server.login("ada@example.com", PASSWORD).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
        );
        assert!(browser.is_none());
        // ...another account from the same IP still works until the IP limit.
        assert_eq!(
            server.login("bob@example.com", PASSWORD).await.0,
            StatusCode::OK
        );
        for _ in 0..2 {
            assert_eq!(
                server.login("bob@example.com", "wrong password!!").await.0,
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(
            server.login("bob@example.com", PASSWORD).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "IP limit"
        );
        let platform = server.audit_actions(None).await;
        assert!(
            platform.contains(&"auth.sign_in:denied".to_string()),
            "{platform:?}"
        );
    }
}

#[tokio::test]
async fn the_authorization_table_covers_exactly_the_routes_served() {
    let doc = waypost_api::openapi();
    let mut documented = Vec::new();
    for (path, item) in &doc.paths.paths {
        let item = serde_json::to_value(item).unwrap();
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    for (method, path) in &documented {
        assert!(
            permission_for(method, path).is_some(),
            "{method} {path} has no authorization entry"
        );
    }
    for (method, path, _) in ROUTE_PERMISSIONS {
        assert!(
            documented.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is in the table but not served"
        );
    }
}

/// Every route as every tenant role (API keys), a signed-in member and an operator: allowed
/// exactly when the table says so.
#[tokio::test]
async fn every_route_as_every_role() {
    let server = start(TestDb::sqlite()).await;
    let tenant = server.tenant("Acme").await;
    let mut keys = Vec::new();
    for role in Role::ALL {
        keys.push((*role, server.key(tenant, *role, None).await));
    }
    server
        .user("member@example.com", Some((tenant, Role::Agent)), false)
        .await;
    server.user("operator@example.com", None, true).await;
    let member = server
        .login("member@example.com", PASSWORD)
        .await
        .1
        .unwrap();
    let operator = server
        .login("operator@example.com", PASSWORD)
        .await
        .1
        .unwrap();

    for (method, path, permission) in ROUTE_PERMISSIONS {
        if *permission == Permission::Public
            || path.ends_with("/logout")
            || path.ends_with("/password")
        {
            continue;
        }
        let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        let method: Method = method.parse().unwrap();
        for (role, key) in &keys {
            let (status, _) = server
                .call(method.clone(), &concrete, Some(key), Some(json!({})))
                .await;
            let allowed = permission.granted_to(*role);
            if allowed {
                assert!(
                    status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                    "{role} {method} {path}: {status}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{role} {method} {path}");
            }
        }
        let (status, _) = server
            .as_browser(method.clone(), &concrete, &member, true, Some(json!({})))
            .await;
        let member_allowed =
            *permission == Permission::SignedIn || permission.granted_to(Role::Agent);
        assert_eq!(
            status == StatusCode::FORBIDDEN,
            !member_allowed,
            "member {method} {path}: {status}"
        );
        let (status, _) = server
            .as_browser(method.clone(), &concrete, &operator, true, Some(json!({})))
            .await;
        let operator_allowed = matches!(permission, Permission::SignedIn | Permission::Operate);
        assert_eq!(
            status == StatusCode::FORBIDDEN,
            !operator_allowed,
            "operator {method} {path}: {status}"
        );
    }
}

#[tokio::test]
async fn the_audit_trail_is_readable_filterable_exportable_and_reads_are_audited() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let owner = server.key(tenant, Role::Owner, None).await;
        let viewer = server.key(tenant, Role::Viewer, None).await;
        for i in 0..3 {
            let (status, _) = server
                .call(
                    Method::POST,
                    "/api/v1/api-keys",
                    Some(&owner),
                    Some(json!({"name": format!("=HYPERLINK{i}"), "role": "agent"})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (status, _) = server
            .call(Method::GET, "/api/v1/audit-events", Some(&viewer), None)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        let (status, page) = server
            .call(
                Method::GET,
                "/api/v1/audit-events?action=api_key.create&limit=2",
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["data"].as_array().unwrap().len(), 2);
        let cursor = page["next_cursor"].as_str().unwrap();
        let (_, rest) = server
            .call(
                Method::GET,
                &format!("/api/v1/audit-events?action=api_key.create&limit=2&cursor={cursor}"),
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(rest["data"].as_array().unwrap().len(), 1);
        assert!(rest["next_cursor"].is_null());
        let first = &page["data"][0];
        assert_eq!(
            (first["actor_type"].as_str(), first["outcome"].as_str()),
            (Some("api_key"), Some("success"))
        );
        assert_eq!(first["ip"], "127.0.0.1");
        assert!(first["request_id"].is_string() && first["hash"].as_str().unwrap().len() == 64);

        let csv = server
            .client
            .get(format!(
                "{}/api/v1/audit-events?format=csv&action=api_key.create",
                server.base
            ))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap();
        assert_eq!(
            csv.headers()[header::CONTENT_TYPE],
            "text/csv; charset=utf-8"
        );
        let csv = csv.text().await.unwrap();
        assert_eq!(csv.lines().count(), 4, "{csv}");
        assert!(csv.starts_with("seq,id,occurred_at,actor_type"));
        let jsonl = server
            .client
            .get(format!("{}/api/v1/audit-events?format=jsonl", server.base))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            jsonl
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok())
        );

        let (status, _) = server
            .call(
                Method::GET,
                "/api/v1/audit-events?from=yesterday",
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _) = server
            .call(
                Method::GET,
                "/api/v1/audit-events?format=xml",
                Some(&owner),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

        let trail = server.audit_actions(Some(tenant)).await;
        for expected in [
            "access.denied:denied",
            "audit.read:success",
            "audit.export:success",
        ] {
            assert!(
                trail.contains(&expected.to_string()),
                "{expected} not in {trail:?}"
            );
        }
        let report = server.store.verify_audit(Some(tenant)).await.unwrap();
        assert_eq!(report.first_broken_seq, None);
    }
}

#[tokio::test]
async fn secrets_are_write_only_and_changes_are_audited() {
    const SENTINEL: &str = "sk-SENTINEL-api-9d2f6a1c";
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let admin = server.key(tenant, Role::Admin, None).await;
        let (_, empty) = server
            .call(Method::GET, "/api/v1/settings/ai", Some(&admin), None)
            .await;
        assert_eq!(empty["api_key"], json!({"set": false, "last4": null}));
        let body = json!({"provider": "openai_compatible", "base_url": "https://api.example.com/v1", "model": "gpt-x", "enabled": true, "api_key": SENTINEL});
        let (status, saved) = server
            .call(Method::PUT, "/api/v1/settings/ai", Some(&admin), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{saved}");
        assert_eq!(saved["api_key"], json!({"set": true, "last4": "6a1c"}));
        assert!(!saved.to_string().contains(SENTINEL));
        // Updating other fields keeps the key.
        let body = json!({"provider": "flowise", "base_url": "https://flowise.example.com", "model": "m", "enabled": false});
        let (_, kept) = server
            .call(Method::PUT, "/api/v1/settings/ai", Some(&admin), Some(body))
            .await;
        assert_eq!(kept["api_key"]["set"], true);
        for bad in [
            json!({"provider": "skynet", "base_url": "https://x.io", "model": "m", "enabled": true}),
            json!({"provider": "flowise", "base_url": "file:///etc/passwd", "model": "m", "enabled": true}),
            json!({"provider": "flowise", "base_url": "https://x.io", "model": "", "enabled": true}),
        ] {
            let (status, _) = server
                .call(
                    Method::PUT,
                    "/api/v1/settings/ai",
                    Some(&admin),
                    Some(bad.clone()),
                )
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
        let (_, after) = server
            .call(Method::GET, "/api/v1/settings/ai", Some(&admin), None)
            .await;
        assert_eq!(
            after["provider"], "flowise",
            "a refused update changed the settings"
        );
        let (status, settings) = server
            .call(
                Method::PUT,
                "/api/v1/settings",
                Some(&admin),
                Some(json!({"audit_retention_days": 90})),
            )
            .await;
        assert_eq!(
            (status, settings["audit_retention_days"].as_i64()),
            (StatusCode::OK, Some(90))
        );
        let (status, _) = server
            .call(
                Method::PUT,
                "/api/v1/settings",
                Some(&admin),
                Some(json!({"audit_retention_days": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let trail = server.audit_actions(Some(tenant)).await;
        assert!(trail.contains(&"secret.update:success".to_string()));
        assert_eq!(
            trail
                .iter()
                .filter(|a| *a == "settings.update:success")
                .count(),
            3,
            "{trail:?}"
        );
        let mut tx = server.store.tenant_read(tenant).await.unwrap();
        let stored = tx.get_secret("ai.api_key").await.unwrap().unwrap();
        assert!(
            !stored
                .ciphertext
                .windows(SENTINEL.len())
                .any(|w| w == SENTINEL.as_bytes())
        );
    }
}

#[tokio::test]
async fn operators_see_tenants_read_only_and_unmasking_needs_a_recorded_reason() {
    for db in test_databases().await {
        let server = start(db).await;
        let tenant = server.tenant("Acme").await;
        let owner = server.key(tenant, Role::Owner, None).await;
        let (status, _) = server
            .call(
                Method::POST,
                "/api/v1/contacts",
                Some(&owner),
                Some(json!({"phone": "+14155550100", "name": "Ada"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        server.user("ops@example.com", None, true).await;
        let ops = server.login("ops@example.com", PASSWORD).await.1.unwrap();
        let (status, _) = server
            .as_browser(Method::GET, "/api/v1/tenant", &ops, false, None)
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "an operator needs to open a tenant first"
        );
        let (_, redacted) = server
            .as_browser(
                Method::POST,
                "/api/v1/operator/access",
                &ops,
                true,
                Some(json!({"tenant_id": tenant})),
            )
            .await;
        assert!(redacted["unmasked_until"].is_null(), "{redacted}");
        let (_, me) = server
            .as_browser(Method::GET, "/api/v1/auth/me", &ops, false, None)
            .await;
        assert_eq!(
            me["unmasked"], false,
            "operators see tenant data redacted by default"
        );
        let (status, contacts) = server
            .as_browser(Method::GET, "/api/v1/contacts", &ops, false, None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            contacts["data"][0]["phone"], "•••0100",
            "an operator saw a phone number unredacted"
        );
        let (_, tenants) = server
            .as_browser(Method::GET, "/api/v1/operator/tenants", &ops, false, None)
            .await;
        assert_eq!(tenants.as_array().unwrap().len(), 1);

        let (status, _) = server
            .as_browser(
                Method::POST,
                "/api/v1/operator/access",
                &ops,
                true,
                Some(json!({"tenant_id": tenant, "unmask": true})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unmasking without a reason"
        );
        let (status, access) = server.as_browser(Method::POST, "/api/v1/operator/access", &ops, true, Some(json!({"tenant_id": tenant, "reason": "ticket 4711: customer asked", "unmask": true}))).await;
        assert_eq!(status, StatusCode::OK, "{access}");
        assert!(access["unmasked_until"].is_string());
        let (status, seen) = server
            .as_browser(Method::GET, "/api/v1/tenant", &ops, false, None)
            .await;
        assert_eq!(
            (status, seen["name"].as_str()),
            (StatusCode::OK, Some("Acme"))
        );
        let (status, _) = server
            .as_browser(
                Method::PUT,
                "/api/v1/settings",
                &ops,
                true,
                Some(json!({"audit_retention_days": 90})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "operators are read-only in a tenant"
        );

        let mut tx = server.store.tenant_read(tenant).await.unwrap();
        let records = tx.list_audit(&Default::default(), 100).await.unwrap();
        let unmask = records
            .iter()
            .find(|r| r.action == "operator.unmask")
            .expect("operator access not audited");
        assert_eq!(unmask.actor_type, "operator");
        assert_eq!(
            unmask.reason.as_deref(),
            Some("ticket 4711: customer asked")
        );
        drop(tx);
        let (_, me) = server
            .as_browser(Method::GET, "/api/v1/auth/me", &ops, false, None)
            .await;
        assert_eq!(me["unmasked"], true);
        let (_, contacts) = server
            .as_browser(Method::GET, "/api/v1/contacts", &ops, false, None)
            .await;
        assert_eq!(
            contacts["data"][0]["phone"], "+14155550100",
            "unmasked with a reason"
        );
        assert!(
            records
                .iter()
                .any(|r| r.action == "operator.access" && r.actor_type == "operator")
        );

        // Members see personal data, analysts do not.
        server
            .user("analyst@example.com", Some((tenant, Role::Analyst)), false)
            .await;
        let (_, _, analyst) = server.login("analyst@example.com", PASSWORD).await;
        assert_eq!(analyst["unmasked"], false);
        server
            .user("agent@example.com", Some((tenant, Role::Agent)), false)
            .await;
        let (_, _, agent) = server.login("agent@example.com", PASSWORD).await;
        assert_eq!(agent["unmasked"], true);
    }
}

#[tokio::test]
async fn contacts_are_normalized_searchable_consented_audited_and_erasable() {
    for db in test_databases().await {
        let server = start(db).await;
        let (tenant, other) = (server.tenant("Acme").await, server.tenant("Other").await);
        let agent = server.key(tenant, Role::Agent, None).await;
        let analyst = server.key(tenant, Role::Analyst, None).await;
        let stranger = server.key(other, Role::Owner, None).await;

        let (status, created) = server
            .call(
                Method::POST,
                "/api/v1/contacts",
                Some(&agent),
                Some(
                    json!({"phone": "+1 (415) 555-0100", "name": "Ada Lovelace", "opted_in": true}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(
            (created["phone"].as_str(), created["wa_id"].as_str()),
            (Some("+14155550100"), Some("14155550100"))
        );
        assert_eq!(created["marketing_consent"], "opted_in");
        let id = created["id"].as_str().unwrap().to_string();
        let (status, _) = server
            .call(
                Method::POST,
                "/api/v1/contacts",
                Some(&agent),
                Some(json!({"phone": "14155550100"})),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, problem) = server
            .call(
                Method::POST,
                "/api/v1/contacts",
                Some(&agent),
                Some(json!({"phone": "555-0100"})),
            )
            .await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
        );
        server
            .call(
                Method::POST,
                "/api/v1/contacts",
                Some(&agent),
                Some(json!({"phone": "+442079460958", "name": "Charles"})),
            )
            .await;

        for search in ["4155550100", "%2B1%20415%20555%200100", "lovel", "ADA"] {
            let (_, found) = server
                .call(
                    Method::GET,
                    &format!("/api/v1/contacts?search={search}"),
                    Some(&agent),
                    None,
                )
                .await;
            let ids: Vec<_> = found["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(ids, std::slice::from_ref(&id), "search {search}");
        }
        let (_, all) = server
            .call(Method::GET, "/api/v1/contacts", Some(&agent), None)
            .await;
        assert_eq!(all["data"].as_array().unwrap().len(), 2);

        let (status, updated) = server
            .call(
                Method::PATCH,
                &format!("/api/v1/contacts/{id}"),
                Some(&agent),
                Some(json!({"marketing_consent": "opt_out", "note": "asked by phone"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{updated}");
        assert_eq!(updated["marketing_consent"], "opted_out");
        let history = updated["consent_history"].as_array().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(
            (
                history[1]["action"].as_str(),
                history[1]["source"].as_str(),
                history[1]["note"].as_str()
            ),
            (Some("opt_out"), Some("api"), Some("asked by phone"))
        );
        let (status, _) = server
            .call(
                Method::PATCH,
                &format!("/api/v1/contacts/{id}"),
                Some(&agent),
                Some(json!({"marketing_consent": "maybe"})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

        let (_, masked) = server
            .call(
                Method::GET,
                &format!("/api/v1/contacts/{id}"),
                Some(&analyst),
                None,
            )
            .await;
        assert_eq!(
            masked["phone"], "•••0100",
            "analysts see identifiers masked"
        );
        assert_eq!(masked["name"], "A•••");
        let (status, _) = server
            .call(
                Method::PATCH,
                &format!("/api/v1/contacts/{id}"),
                Some(&analyst),
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            let (status, _) = server
                .call(
                    method.clone(),
                    &format!("/api/v1/contacts/{id}"),
                    Some(&stranger),
                    Some(json!({})),
                )
                .await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{method} from another tenant"
            );
        }
        let (status, _) = server
            .call(
                Method::DELETE,
                &format!("/api/v1/contacts/{id}"),
                Some(&agent),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = server
            .call(
                Method::GET,
                &format!("/api/v1/contacts/{id}"),
                Some(&agent),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let trail = server.audit_actions(Some(tenant)).await;
        for expected in [
            "contact.create:success",
            "contact.list:success",
            "contact.read:success",
            "contact.update:success",
            "contact.delete:success",
        ] {
            assert!(
                trail.contains(&expected.to_string()),
                "{expected} not in {trail:?}"
            );
        }
    }
}
