use axum::{extract::FromRequestParts, http::request::Parts};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;
use waypost_core::{ApiKeyId, Error, ErrorCode, Role, TenantId, Timestamp};

use crate::{AppState, problem::ApiError};

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

impl ApiKeySecret {
    pub fn generate(tenant: TenantId) -> Result<Self, Error> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; SECRET_LEN];
        getrandom::fill(&mut id)
            .and_then(|()| getrandom::fill(&mut secret))
            .map_err(|e| Error::internal("reading the OS random source", e.to_string()))?;
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

/// The authenticated caller of a `/api/v1` request.
#[derive(Debug, Clone, Copy)]
pub struct Auth {
    pub tenant: TenantId,
    pub key_id: ApiKeyId,
    pub role: Role,
}

impl Auth {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role.can_administer() {
            Ok(())
        } else {
            Err(ApiError(Error::new(
                ErrorCode::Forbidden,
                format!(
                    "the {} role cannot do this; an owner or admin key is required",
                    self.role
                ),
            )))
        }
    }
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError(Error::new(ErrorCode::Unauthorized, detail))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <api key>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be Bearer <api key>"))?;
        // One message for every kind of wrong key, so the answer reveals nothing about which
        // tenants or prefixes exist.
        let invalid = || unauthorized("invalid API key");
        let (tenant, prefix, presented_hash) = ApiKeySecret::parse(token).ok_or_else(invalid)?;

        let mut tx = state.store.tenant_read(tenant).await?;
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
                let mut tx = state.store.tenant(tenant).await?;
                tx.touch_api_key(key.id, now).await?;
                tx.commit().await
            };
            if let Err(err) = touched.await {
                tracing::warn!(error = %err, "recording API key use failed");
            }
        }
        Ok(Auth {
            tenant,
            key_id: key.id,
            role: key.role,
        })
    }
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
}
