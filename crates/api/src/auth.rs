//! Who is calling: a tenant API key (`Authorization: Bearer wp_…`) or a signed-in user
//! (the `waypost_session` cookie, with an `X-CSRF-Token` header on every unsafe request).

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, Method, request::Parts},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;
use waypost_core::{ApiKeyId, Error, ErrorCode, Role, TenantId, Timestamp, UserId};
use waypost_store::{AuditEvent, Store};

use crate::{AppState, client::ClientAddr, problem::ApiError};

pub const SESSION_COOKIE: &str = "waypost_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A freshly generated API key. The full text is shown once; only `prefix` and the SHA-256 of
/// the secret are stored (a 256-bit random secret needs no slow hash).
///
/// Format: `wp_<16 hex>_<base64url(tenant id ‖ 32 secret bytes)>`. The hex part is the visible
/// prefix; the tenant travels inside the key so authentication can open that tenant's scope
/// directly, and row-level security never has to be bypassed to find a key.
pub struct ApiKeySecret {
    pub token: String,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
}

const SECRET_LEN: usize = 32;

/// `n` bytes from the OS random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal("reading the OS random source", e.to_string()))?;
    Ok(bytes)
}

impl ApiKeySecret {
    pub fn generate(tenant: TenantId) -> Result<Self, Error> {
        let id: [u8; 8] = random_bytes()?;
        let secret: [u8; SECRET_LEN] = random_bytes()?;
        let prefix = format!("wp_{}", hex::encode(id));
        let mut body = tenant.as_uuid().as_bytes().to_vec();
        body.extend_from_slice(&secret);
        let token = format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(&body));
        Ok(Self {
            token,
            prefix,
            secret_hash: Sha256::digest(secret).to_vec(),
        })
    }

    /// Splits a presented key into `(tenant, prefix, sha256(secret))`.
    pub fn parse(token: &str) -> Option<(TenantId, String, Vec<u8>)> {
        let mut parts = token.splitn(3, '_');
        let (wp, id, body) = (parts.next()?, parts.next()?, parts.next()?);
        if wp != "wp" || id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let body = URL_SAFE_NO_PAD.decode(body).ok()?;
        if body.len() != 16 + SECRET_LEN {
            return None;
        }
        let (tenant, secret) = body.split_at(16);
        let tenant = TenantId::from_uuid(Uuid::from_slice(tenant).ok()?);
        Some((tenant, format!("wp_{id}"), Sha256::digest(secret).to_vec()))
    }
}

/// Who acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Actor {
    ApiKey(ApiKeyId),
    User(UserId),
    /// A platform operator looking into a tenant.
    Operator(UserId),
}

impl Actor {
    pub fn kind(self) -> &'static str {
        match self {
            Actor::ApiKey(_) => "api_key",
            Actor::User(_) => "user",
            Actor::Operator(_) => "operator",
        }
    }

    pub fn id(self) -> String {
        match self {
            Actor::ApiKey(id) => id.to_string(),
            Actor::User(id) | Actor::Operator(id) => id.to_string(),
        }
    }

    pub fn user(self) -> Option<UserId> {
        match self {
            Actor::User(id) | Actor::Operator(id) => Some(id),
            Actor::ApiKey(_) => None,
        }
    }
}

/// Where a request came from, for the audit trail.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl RequestMeta {
    pub fn from_parts(parts: &Parts) -> Self {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect())
        };
        RequestMeta {
            // The peer, or the client a trusted proxy names (see `client`).
            ip: parts
                .extensions
                .get::<ClientAddr>()
                .map(|c| c.0.to_string()),
            user_agent: header("user-agent"),
            request_id: header("x-request-id"),
        }
    }

    /// An audit event with this request's origin filled in.
    pub fn event(&self, actor: Option<Actor>, action: &str, outcome: &'static str) -> AuditEvent {
        AuditEvent {
            actor_type: actor.map_or("anonymous", Actor::kind),
            actor_id: actor.map(Actor::id),
            action: action.to_string(),
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            outcome,
            ..AuditEvent::default()
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(RequestMeta::from_parts(parts))
    }
}

/// The signed-in session behind a cookie-authenticated request.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: Vec<u8>,
    pub user: UserId,
    pub is_operator: bool,
}

/// The authenticated caller, put in the request by the authorization middleware. Handlers
/// take it as an extractor; it is never built from the request twice.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The tenant whose data the request may touch; `None` for a signed-in user with no
    /// tenant selected (only self-service and operator routes are open to them).
    pub tenant: Option<TenantId>,
    pub actor: Actor,
    pub role: Option<Role>,
    pub session: Option<SessionInfo>,
    /// Personal data (phone numbers, message bodies) is shown only when true: for members
    /// other than analysts, and for operators only after an audited unmask with a reason.
    pub unmasked: bool,
    pub meta: RequestMeta,
}

impl Auth {
    /// The tenant, for tenant routes (the middleware guarantees one is set there).
    pub fn tenant(&self) -> Result<TenantId, ApiError> {
        self.tenant.ok_or_else(|| {
            ApiError(Error::new(
                ErrorCode::Forbidden,
                "select a tenant first (POST /api/v1/auth/tenant)",
            ))
        })
    }

    pub fn event(&self, action: &str, target_type: &str, target_id: impl ToString) -> AuditEvent {
        AuditEvent {
            target_type: Some(target_type.to_string()),
            target_id: Some(target_id.to_string()),
            ..self.meta.event(Some(self.actor), action, "success")
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        parts.extensions.get::<Auth>().cloned().ok_or_else(|| {
            ApiError(Error::new(
                ErrorCode::Internal,
                "route reached a handler without authentication",
            ))
        })
    }
}

#[track_caller]
pub fn unauthorized(detail: &str) -> ApiError {
    ApiError(Error::new(ErrorCode::Unauthorized, detail))
}

pub fn session_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Authenticates a request: bearer key first, then the session cookie.
pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<Auth, ApiError> {
    let meta = RequestMeta::from_parts(parts);
    if let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer <api key>"))?;
        return authenticate_key(token, &state.store, meta).await;
    }
    if let Some(token) = cookie(&parts.headers, SESSION_COOKIE) {
        return authenticate_session(&token, parts, state, meta).await;
    }
    Err(unauthorized(
        "missing Authorization: Bearer <api key> or a session cookie",
    ))
}

async fn authenticate_key(token: &str, store: &Store, meta: RequestMeta) -> Result<Auth, ApiError> {
    // One message for every kind of wrong key, so the answer reveals nothing about which
    // tenants or prefixes exist.
    let invalid = || unauthorized("invalid API key");
    let (tenant, prefix, presented_hash) = ApiKeySecret::parse(token).ok_or_else(invalid)?;
    let mut tx = store.tenant_read(tenant).await?;
    let found = tx.find_api_key_by_prefix(&prefix).await?;
    tx.rollback().await?;
    let found = found.ok_or_else(invalid)?;
    if !bool::from(found.secret_hash.as_slice().ct_eq(&presented_hash)) {
        return Err(invalid());
    }
    let now = Timestamp::now();
    let key = found.key;
    if key.revoked_at.is_some() {
        return Err(unauthorized("API key has been revoked"));
    }
    if key.expires_at.is_some_and(|at| at <= now) {
        return Err(unauthorized("API key has expired"));
    }
    if key.needs_touch(now) {
        // Best effort: failing to record the last use must not fail the request.
        let touched = async {
            let mut tx = store.tenant(tenant).await?;
            tx.touch_api_key(key.id, now).await?;
            tx.commit().await
        };
        if let Err(err) = touched.await {
            tracing::warn!(error = %err, "recording API key use failed");
        }
    }
    Ok(Auth {
        tenant: Some(tenant),
        actor: Actor::ApiKey(key.id),
        role: Some(key.role),
        session: None,
        unmasked: key.role != Role::Analyst,
        meta,
    })
}

async fn authenticate_session(
    token: &str,
    parts: &Parts,
    state: &AppState,
    meta: RequestMeta,
) -> Result<Auth, ApiError> {
    let id = session_token_hash(token);
    let now = Timestamp::now();
    let mut tx = state.store.platform_read().await?;
    let session = tx
        .find_session(&id)
        .await?
        .ok_or_else(|| unauthorized("session not found; sign in again"))?;
    if session.revoked_at.is_some() {
        return Err(unauthorized("session has ended; sign in again"));
    }
    if session.expires_at <= now {
        return Err(unauthorized("session expired; sign in again"));
    }
    if session.last_seen_at.plus(state.auth.session_idle) <= now {
        return Err(unauthorized(
            "session expired after inactivity; sign in again",
        ));
    }
    let user = tx.get_user(session.user_id).await?.user;
    if user.disabled_at.is_some() {
        return Err(unauthorized("account disabled"));
    }
    // Cookies ride along on cross-site requests; a state change needs proof the caller read
    // the CSRF token, which only our own pages and API clients can.
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let presented = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(session.csrf_token.as_bytes())) {
            return Err(ApiError(Error::new(
                ErrorCode::Forbidden,
                "missing or wrong X-CSRF-Token",
            )));
        }
    }
    let role = match (session.tenant_id, user.is_operator) {
        (Some(tenant), false) => Some(
            tx.memberships_of(user.id)
                .await?
                .into_iter()
                .find(|m| m.tenant_id == tenant)
                .map(|m| m.role)
                .ok_or_else(|| unauthorized("no longer a member of this tenant; sign in again"))?,
        ),
        // Operators see a tenant read-only.
        (Some(_), true) => Some(Role::Viewer),
        (None, _) => None,
    };
    tx.rollback().await?;
    if session
        .last_seen_at
        .plus(std::time::Duration::from_secs(60))
        <= now
    {
        let mut tx = state.store.platform().await?;
        tx.touch_session(&id, now).await?;
        tx.commit().await?;
    }
    let unmasked = if user.is_operator {
        session.unmask_until.is_some_and(|until| until > now)
    } else {
        role != Some(Role::Analyst)
    };
    Ok(Auth {
        tenant: session.tenant_id,
        actor: if user.is_operator {
            Actor::Operator(user.id)
        } else {
            Actor::User(user.id)
        },
        role,
        session: Some(SessionInfo {
            id,
            user: user.id,
            is_operator: user.is_operator,
        }),
        unmasked,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_to_their_parts() {
        let tenant = TenantId::new();
        let key = ApiKeySecret::generate(tenant).unwrap();
        assert!(key.token.starts_with(&key.prefix));
        let (t, prefix, hash) = ApiKeySecret::parse(&key.token).unwrap();
        assert_eq!(
            (t, prefix, hash),
            (tenant, key.prefix.clone(), key.secret_hash.clone())
        );
        assert!(key.token.len() >= 80);
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let key = ApiKeySecret::generate(TenantId::new()).unwrap().token;
        let truncated = &key[..key.len() - 2];
        for bad in [
            "",
            "wp_",
            "wp_zz_abc",
            "xx_0123456789abcdef_AAAA",
            truncated,
        ] {
            assert!(ApiKeySecret::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; waypost_session=tok; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
