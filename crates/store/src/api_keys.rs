use serde::Serialize;
use uuid::Uuid;
use waypost_core::{ApiKeyId, Cursor, Error, ErrorCode, Page, Result, Role, Timestamp};

use crate::{
    connect::db_error,
    tx::{Tenant, Tx, on_conn},
};

/// An API key as shown to its tenant: never the secret, only the prefix that identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    /// The visible start of the key (`wp_` + 16 hex characters), to tell keys apart.
    pub prefix: String,
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}

/// A key with the stored hash of its secret, for authentication only.
#[derive(Debug, Clone)]
pub struct ApiKeyWithSecret {
    pub key: ApiKey,
    pub secret_hash: Vec<u8>,
}

pub struct NewApiKey {
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub name: String,
    pub role: Role,
    pub expires_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: Uuid,
    prefix: String,
    secret_hash: Vec<u8>,
    name: String,
    role: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
}

impl TryFrom<ApiKeyRow> for ApiKeyWithSecret {
    type Error = Error;
    fn try_from(row: ApiKeyRow) -> Result<Self> {
        let role = row
            .role
            .parse::<Role>()
            .map_err(|e| Error::internal("stored API key has an unknown role", e))?;
        Ok(ApiKeyWithSecret {
            key: ApiKey {
                id: ApiKeyId::from_uuid(row.id),
                prefix: row.prefix,
                name: row.name,
                role,
                created_at: Timestamp::from_millis(row.created_at),
                expires_at: row.expires_at.map(Timestamp::from_millis),
                revoked_at: row.revoked_at.map(Timestamp::from_millis),
                last_used_at: row.last_used_at.map(Timestamp::from_millis),
            },
            secret_hash: row.secret_hash,
        })
    }
}

macro_rules! columns {
    () => {
        "id, prefix, secret_hash, name, role, created_at, expires_at, revoked_at, last_used_at"
    };
}
const MAX_NAME_LEN: usize = 200;

/// How often `last_used_at` is written: at most once a minute per key, so authenticating a
/// request does not cost a write.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

impl Tx<Tenant> {
    pub async fn create_api_key(&mut self, new: NewApiKey) -> Result<ApiKey> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
            return Err(Error::validation(format!(
                "API key name must be 1 to {MAX_NAME_LEN} characters"
            )));
        }
        let now = Timestamp::now();
        if new.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::validation("expires_at must be in the future"));
        }
        let key = ApiKey {
            id: ApiKeyId::new(),
            prefix: new.prefix,
            name: name.to_string(),
            role: new.role,
            created_at: now,
            expires_at: new.expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO api_keys (tenant_id, id, prefix, secret_hash, name, role, created_at, \
                 expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(tenant.as_uuid())
            .bind(key.id.as_uuid())
            .bind(&key.prefix)
            .bind(&new.secret_hash)
            .bind(&key.name)
            .bind(key.role.as_str())
            .bind(key.created_at.as_millis())
            .bind(key.expires_at.map(Timestamp::as_millis))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(key)
    }

    /// The key with this prefix, with its secret hash, revoked or not.
    pub async fn find_api_key_by_prefix(
        &mut self,
        prefix: &str,
    ) -> Result<Option<ApiKeyWithSecret>> {
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, ApiKeyRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE tenant_id = $1 AND prefix = $2"
            ))
            .bind(tenant.as_uuid())
            .bind(prefix)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        row.map(ApiKeyWithSecret::try_from).transpose()
    }

    pub async fn get_api_key(&mut self, id: ApiKeyId) -> Result<ApiKey> {
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, ApiKeyRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE tenant_id = $1 AND id = $2"
            ))
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?
        .ok_or_else(|| Error::not_found("API key"))?;
        Ok(ApiKeyWithSecret::try_from(row)?.key)
    }

    /// Keys in creation order, `limit` per page.
    pub async fn list_api_keys(
        &mut self,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Page<ApiKey>> {
        let tenant = self.tenant();
        let after = after.map_or(Uuid::nil(), Cursor::id);
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, ApiKeyRow>(concat!(
                "SELECT ",
                columns!(),
                " FROM api_keys WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
            ))
            .bind(tenant.as_uuid())
            .bind(after)
            .bind(i64::from(limit) + 1)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        let keys = rows
            .into_iter()
            .map(|row| ApiKeyWithSecret::try_from(row).map(|k| k.key))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::from_rows(keys, limit, |k| *k.id.as_uuid()))
    }

    /// Revokes a key; revoking twice is a conflict so scripts notice a wrong id.
    pub async fn revoke_api_key(&mut self, id: ApiKeyId) -> Result<ApiKey> {
        let current = self.get_api_key(id).await?;
        if current.revoked_at.is_some() {
            return Err(Error::new(
                ErrorCode::Conflict,
                "API key is already revoked",
            ));
        }
        let tenant = self.tenant();
        let now = Timestamp::now();
        let revoked = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE api_keys SET revoked_at = $3 \
                 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(now.as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        // A concurrent revoke got there first.
        if revoked == 0 {
            return Err(Error::new(
                ErrorCode::Conflict,
                "API key is already revoked",
            ));
        }
        Ok(ApiKey {
            revoked_at: Some(now),
            ..current
        })
    }

    /// Records use of a key, at most once per minute. Returns whether a row was written.
    pub async fn touch_api_key(&mut self, id: ApiKeyId, now: Timestamp) -> Result<bool> {
        let tenant = self.tenant();
        let written = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $3 WHERE tenant_id = $1 AND id = $2 \
                 AND (last_used_at IS NULL OR last_used_at <= $4)",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(now.as_millis())
            .bind(now.as_millis() - LAST_USED_GRANULARITY_MS)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(written > 0)
    }
}

impl ApiKey {
    /// Whether `last_used_at` would be written now: lets callers skip the write transaction.
    pub fn needs_touch(&self, now: Timestamp) -> bool {
        self.last_used_at
            .is_none_or(|t| t.as_millis() <= now.as_millis() - LAST_USED_GRANULARITY_MS)
    }
}
