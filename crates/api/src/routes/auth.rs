use std::sync::OnceLock;

use axum::{
    Extension, Json,
    extract::State,
    http::{
        HeaderValue, StatusCode,
        header::{RETRY_AFTER, SET_COOKIE},
    },
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use waypost_core::{Error, ErrorCode, Role, TenantId, Timestamp, UserId};
use waypost_store::{Membership, NewSession, User};

use crate::{
    ApiError, AppState,
    auth::{Auth, RequestMeta, SESSION_COOKIE, random_bytes, session_token_hash},
    client::ClientAddr,
    limits::at_most,
    problem::{ApiJson, ApiPath, Problem},
    throttle::{self, Admission, Subjects},
};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// At most 254 characters.
    pub email: String,
    /// At most 1024 characters.
    pub password: String,
    /// The tenant to open; default: the first one the user belongs to.
    pub tenant_id: Option<TenantId>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub user: User,
    pub tenant_id: Option<TenantId>,
    pub role: Option<Role>,
    pub memberships: Vec<Membership>,
    /// Whether personal data (phone numbers, message bodies) is shown unredacted.
    pub unmasked: bool,
    /// Send it back as `X-CSRF-Token` on every POST, PUT, PATCH and DELETE.
    pub csrf_token: String,
    pub expires_at: Timestamp,
}

/// 429 with `Retry-After` in whole seconds, rounded up.
fn throttled(wait: std::time::Duration) -> Response {
    let mut response = ApiError(Error::new(
        ErrorCode::RateLimited,
        "too many failed sign-ins; try again later",
    ))
    .into_response();
    let secs = wait.as_millis().div_ceil(1000).max(1);
    response.headers_mut().insert(
        RETRY_AFTER,
        HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)),
    );
    response
}

/// A hash to verify against when the account does not exist, so both cases cost the same.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        waypost_vault::hash_password("no-such-account-placeholder").unwrap_or_default()
    })
}

/// Argon2 costs ~19 MiB and tens of milliseconds each; a bounded number run at once so a
/// flood of sign-ins cannot exhaust memory or the blocking pool.
fn argon2_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        tokio::sync::Semaphore::new(cores * 2)
    })
}

pub(crate) async fn verify(password: String, hash: String) -> bool {
    let Ok(_permit) = argon2_permits().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || waypost_vault::verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

fn session_cookie(token: &str, max_age_secs: u64, secure: bool) -> Result<HeaderValue, ApiError> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"
    ))
    .map_err(|e| ApiError(Error::internal("building the session cookie", e)))
}

/// Signs in with email and password. Sets the session cookie and returns the CSRF token.
/// After 5 failures for one account from one client address, each further attempt from that
/// address must wait (1 s, doubling up to 15 minutes) and is answered 429 with `Retry-After`
/// until then; the account's owner signing in from elsewhere is not affected. Beyond 100
/// failures an hour for the account from all addresses, or 100 from one address, every attempt
/// is refused with 429 before any password check.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth",
    request_body = Login,
    responses(
        (status = OK, body = SessionView, description = "Signed in; the `waypost_session` cookie is set"),
        (status = UNAUTHORIZED, body = Problem, content_type = "application/problem+json"),
        (status = TOO_MANY_REQUESTS, body = Problem, content_type = "application/problem+json",
            description = "Throttled; `Retry-After` says when to try again")
    ))]
pub async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    client: Option<Extension<ClientAddr>>,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let now = Timestamp::now();
    at_most("email", &body.email, EMAIL_MAX)?;
    at_most("password", &body.password, PASSWORD_MAX)?;
    let email = body.email.trim().to_lowercase();
    let subjects = Subjects::new(&email, client.map(|Extension(ClientAddr(ip))| ip));

    let mut tx = state.store.platform().await?;
    if let Admission::RetryAfter(wait) =
        throttle::admit(&mut tx, &state.auth, &subjects, now).await?
    {
        let mut event = meta.event(None, "auth.sign_in", "denied");
        event.target_type = Some("email".into());
        event.target_id = Some(email);
        event.reason = Some("throttled".into());
        tx.audit(event).await?;
        tx.commit().await?;
        return Ok(throttled(wait));
    }
    let found = tx.find_user_by_email(&email).await?;
    tx.commit().await?;

    let hash = found
        .as_ref()
        .map_or_else(|| dummy_hash().to_string(), |u| u.password_hash.clone());
    let password_ok = verify(body.password, hash).await;
    let user = match found {
        Some(u) if password_ok && u.user.disabled_at.is_none() => u.user,
        found => {
            let mut tx = state.store.platform().await?;
            throttle::failed(&mut tx, &subjects, now).await?;
            let mut event = meta.event(
                found.map(|u| crate::auth::Actor::User(u.user.id)),
                "auth.sign_in",
                "failure",
            );
            event.target_type = Some("email".into());
            event.target_id = Some(email);
            tx.audit(event).await?;
            tx.commit().await?;
            return Err(ApiError(Error::new(
                ErrorCode::Unauthorized,
                "wrong email or password",
            )));
        }
    };

    let mut tx = state.store.platform().await?;
    throttle::forgive(&mut tx, &subjects, now).await?;
    tx.commit().await?;
    let mut tx = state.store.platform().await?;
    let memberships = tx.memberships_of(user.id).await?;
    let tenant = match body.tenant_id {
        Some(t) if user.is_operator || memberships.iter().any(|m| m.tenant_id == t) => Some(t),
        Some(_) => {
            return Err(ApiError(Error::new(
                ErrorCode::Forbidden,
                "not a member of that tenant",
            )));
        }
        None if user.is_operator => None,
        None => memberships.first().map(|m| m.tenant_id),
    };
    let role = tenant.and_then(|t| {
        memberships
            .iter()
            .find(|m| m.tenant_id == t)
            .map(|m| m.role)
    });
    let token = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let csrf_token = URL_SAFE_NO_PAD.encode(random_bytes::<32>()?);
    let expires_at = now.plus(state.auth.session_absolute);
    tx.create_session(NewSession {
        id: session_token_hash(&token),
        user_id: user.id,
        tenant_id: if user.is_operator { None } else { tenant },
        csrf_token: csrf_token.clone(),
        expires_at,
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
    })
    .await?;
    let actor = Some(crate::auth::Actor::User(user.id));
    tx.audit(meta.event(actor, "auth.sign_in", "success"))
        .await?;
    tx.commit().await?;
    if let (Some(t), false) = (tenant, user.is_operator) {
        let mut tx = state.store.tenant(t).await?;
        tx.audit(meta.event(actor, "auth.sign_in", "success"))
            .await?;
        tx.commit().await?;
    }

    let user_is_operator = user.is_operator;
    let view = SessionView {
        user,
        tenant_id: if role.is_some() { tenant } else { None },
        role,
        memberships,
        unmasked: !user_is_operator && role != Some(Role::Analyst),
        csrf_token,
        expires_at,
    };
    let cookie = session_cookie(
        &token,
        state.auth.session_absolute.as_secs(),
        state.auth.secure_cookies,
    )?;
    let mut response = Json(view).into_response();
    response.headers_mut().insert(SET_COOKIE, cookie);
    Ok(response)
}

/// The longest email address SMTP allows.
const EMAIL_MAX: usize = 254;
/// Beyond any passphrase; keeps a guess from costing more than the check of a real one.
const PASSWORD_MAX: usize = 1024;

fn signed_in(auth: &Auth) -> Result<(Vec<u8>, UserId), ApiError> {
    auth.session
        .as_ref()
        .map(|s| (s.id.clone(), s.user))
        .ok_or_else(|| ApiError(Error::new(ErrorCode::Forbidden, "sign in first")))
}

/// Ends this session and clears the cookie.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = NO_CONTENT, description = "Signed out")))]
pub async fn logout(State(state): State<AppState>, auth: Auth) -> Result<Response, ApiError> {
    let (id, user) = signed_in(&auth)?;
    let mut tx = state.store.platform().await?;
    tx.revoke_session(user, &id).await?;
    tx.audit(
        auth.meta
            .event(Some(auth.actor), "auth.sign_out", "success"),
    )
    .await?;
    tx.commit().await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        SET_COOKIE,
        session_cookie("", 0, state.auth.secure_cookies)?,
    );
    Ok(response)
}

/// The signed-in user, their tenants, and this session's tenant and CSRF token.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = OK, body = SessionView)))]
pub async fn me(State(state): State<AppState>, auth: Auth) -> Result<Json<SessionView>, ApiError> {
    let (id, user) = signed_in(&auth)?;
    let mut tx = state.store.platform_read().await?;
    let session = tx
        .find_session(&id)
        .await?
        .ok_or_else(|| Error::not_found("session"))?;
    let memberships = tx.memberships_of(user).await?;
    let user = tx.get_user(user).await?.user;
    Ok(Json(SessionView {
        user,
        tenant_id: auth.tenant,
        role: auth.role,
        memberships,
        unmasked: auth.unmasked,
        csrf_token: session.csrf_token,
        expires_at: session.expires_at,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchTenant {
    pub tenant_id: TenantId,
}

/// Points this session at another tenant the user belongs to.
#[utoipa::path(post, path = "/api/v1/auth/tenant", tag = "auth",
    request_body = SwitchTenant,
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn switch_tenant(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<SwitchTenant>,
) -> Result<StatusCode, ApiError> {
    let (id, user) = signed_in(&auth)?;
    if matches!(auth.actor, crate::auth::Actor::Operator(_)) {
        return Err(ApiError(Error::new(
            ErrorCode::Forbidden,
            "operators open tenants with POST /api/v1/operator/access",
        )));
    }
    let mut tx = state.store.platform().await?;
    if !tx
        .memberships_of(user)
        .await?
        .iter()
        .any(|m| m.tenant_id == body.tenant_id)
    {
        // Not "forbidden": whether a tenant exists is not the caller's business.
        return Err(Error::not_found("tenant").into());
    }
    tx.set_session_scope(&id, Some(body.tenant_id), None)
        .await?;
    tx.commit().await?;
    let mut tx = state.store.tenant(body.tenant_id).await?;
    tx.audit(
        auth.meta
            .event(Some(auth.actor), "auth.tenant_switch", "success"),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    /// At most 1024 characters.
    pub current_password: String,
    /// 12 to 256 characters.
    pub new_password: String,
}

/// Changes the password and ends every other session of this user.
#[utoipa::path(post, path = "/api/v1/auth/password", tag = "auth",
    request_body = ChangePassword,
    responses((status = NO_CONTENT), (status = UNAUTHORIZED, body = Problem, content_type = "application/problem+json")))]
pub async fn change_password(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    let (id, user) = signed_in(&auth)?;
    at_most("current_password", &body.current_password, PASSWORD_MAX)?;
    let current = {
        let mut tx = state.store.platform_read().await?;
        tx.get_user(user).await?.password_hash
    };
    if !verify(body.current_password, current).await {
        let mut tx = state.store.platform().await?;
        tx.audit(
            auth.meta
                .event(Some(auth.actor), "auth.password_change", "failure"),
        )
        .await?;
        tx.commit().await?;
        return Err(ApiError(Error::new(
            ErrorCode::Unauthorized,
            "the current password is wrong",
        )));
    }
    let _permit = argon2_permits()
        .acquire()
        .await
        .map_err(|e| Error::internal("hashing a password", e))?;
    let new_hash =
        tokio::task::spawn_blocking(move || waypost_vault::hash_password(&body.new_password))
            .await
            .map_err(|e| Error::internal("hashing a password", e))??;
    let mut tx = state.store.platform().await?;
    tx.set_password_hash(user, &new_hash).await?;
    tx.revoke_other_sessions(user, Some(&id)).await?;
    tx.audit(
        auth.meta
            .event(Some(auth.actor), "auth.password_change", "success"),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionSummary {
    /// Identifies the session for revocation (a hash, never the cookie's token).
    pub id: String,
    pub current: bool,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub expires_at: Timestamp,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// The signed-in user's active sessions.
#[utoipa::path(get, path = "/api/v1/auth/sessions", tag = "auth",
    responses((status = OK, body = Vec<SessionSummary>)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<Vec<SessionSummary>>, ApiError> {
    let (current, user) = signed_in(&auth)?;
    let mut tx = state.store.platform_read().await?;
    let sessions = tx.list_sessions(user, Timestamp::now()).await?;
    Ok(Json(
        sessions
            .into_iter()
            .map(|s| SessionSummary {
                id: hex::encode(&s.id),
                current: s.id == current,
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                expires_at: s.expires_at,
                ip: s.ip,
                user_agent: s.user_agent,
            })
            .collect(),
    ))
}

/// Ends one of the signed-in user's sessions (another user's session id answers 404).
#[utoipa::path(delete, path = "/api/v1/auth/sessions/{id}", tag = "auth",
    params(("id" = String, Path, description = "Session id from the session list")),
    responses((status = NO_CONTENT), (status = NOT_FOUND, body = Problem, content_type = "application/problem+json")))]
pub async fn revoke_session(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let (_, user) = signed_in(&auth)?;
    let id = hex::decode(id).map_err(|_| Error::not_found("session"))?;
    let mut tx = state.store.platform().await?;
    tx.revoke_session(user, &id).await?;
    tx.audit(
        auth.meta
            .event(Some(auth.actor), "auth.session_revoke", "success"),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
