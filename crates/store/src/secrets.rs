//! Ciphertexts and the wrapped keys that encrypt them. The store never sees a plaintext
//! secret or an unwrapped key: encryption happens in `waypost-vault`.

use serde::Serialize;
use uuid::Uuid;
use waypost_core::{Error, ErrorCode, Result, SecretId, Timestamp};

use crate::{
    connect::db_error,
    tx::{Conn, Platform, Tenant, Tx, on_conn},
};

/// The advisory lock that serialises keyring changes on PostgreSQL ("waypkeys").
const KEYRING_LOCK: i64 = 0x7761_7970_6b65_7973;

const ACTIVE_KEY_SQLITE: &str = "SELECT id FROM encryption_keys WHERE state = 'active'";
const ACTIVE_KEY_POSTGRES: &str = "SELECT id FROM encryption_keys WHERE state = 'active' FOR SHARE";

/// A data-encryption key as stored: wrapped by the master key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredKey {
    pub id: i64,
    pub wrapped_key: Vec<u8>,
    /// `active` (encrypts new secrets), `previous` (decrypts only) or `retired`.
    pub state: String,
    pub created_at: i64,
}

/// A tenant secret as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub id: SecretId,
    pub purpose: String,
    pub ciphertext: Vec<u8>,
    pub key_id: i64,
    /// At most the last four characters, to recognise a secret without revealing it.
    pub hint: String,
    pub updated_at: Timestamp,
}

/// What the API may say about a secret: whether it is set, and its hint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SecretStatus {
    pub set: bool,
    pub last4: Option<String>,
}

#[derive(sqlx::FromRow)]
struct SecretRow {
    id: Uuid,
    purpose: String,
    ciphertext: Vec<u8>,
    key_id: i64,
    hint: String,
    updated_at: i64,
}

impl From<SecretRow> for StoredSecret {
    fn from(r: SecretRow) -> Self {
        StoredSecret {
            id: SecretId::from_uuid(r.id),
            purpose: r.purpose,
            ciphertext: r.ciphertext,
            key_id: r.key_id,
            hint: r.hint,
            updated_at: Timestamp::from_millis(r.updated_at),
        }
    }
}

impl Tx<Platform> {
    pub async fn encryption_keys(&mut self) -> Result<Vec<StoredKey>> {
        on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, StoredKey>(
                "SELECT id, wrapped_key, state, created_at FROM encryption_keys ORDER BY id",
            )
            .fetch_all(c)
            .await
        })
        .map_err(db_error)
    }

    /// Serialises changes to the keyring until this transaction ends, so two rotations, or two
    /// processes creating the first key, cannot interleave. (SQLite writers are serial.)
    async fn lock_keyring(&mut self) -> Result<()> {
        if let Conn::Postgres(c) = &mut self.conn {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(KEYRING_LOCK)
                .execute(&mut **c)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    /// Adds a key and makes it the one new secrets are encrypted with; the former active key
    /// becomes `previous` (decrypt only). On PostgreSQL the update waits for every secret
    /// write that share-locked the former key ([`Tx::active_key_for_write`]) to commit, so the
    /// re-encryption that follows sees them all.
    pub async fn add_active_key(&mut self, wrapped_key: &[u8]) -> Result<i64> {
        self.lock_keyring().await?;
        let now = Timestamp::now().as_millis();
        let id = on_conn!(&mut self.conn, |c| {
            sqlx::query("UPDATE encryption_keys SET state = 'previous' WHERE state = 'active'")
                .execute(&mut *c)
                .await
                .map_err(db_error)?;
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO encryption_keys (id, wrapped_key, state, created_at) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, 'active', $2 FROM encryption_keys RETURNING id",
            )
            .bind(wrapped_key)
            .bind(now)
            .fetch_one(c)
            .await
        })
        .map_err(db_error)?;
        Ok(id)
    }

    /// Stores the keyring's first key, unless another process starting at the same time got
    /// there first. Returns whether this one was stored; either way exactly one key exists.
    pub async fn add_first_key(&mut self, wrapped_key: &[u8]) -> Result<bool> {
        self.lock_keyring().await?;
        let inserted = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "INSERT INTO encryption_keys (id, wrapped_key, state, created_at) \
                 SELECT 1, $1, 'active', $2 WHERE NOT EXISTS (SELECT 1 FROM encryption_keys)",
            )
            .bind(wrapped_key)
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(inserted == 1)
    }

    pub async fn retire_key(&mut self, id: i64) -> Result<()> {
        let updated = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE encryption_keys SET state = 'retired', retired_at = $2 \
                 WHERE id = $1 AND state = 'previous'",
            )
            .bind(id)
            .bind(Timestamp::now().as_millis())
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        if updated == 1 {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::Conflict,
                format!("key {id} is not a previous key; only those can be retired"),
            ))
        }
    }
}

impl Tx<Tenant> {
    /// The id of the key a secret written in this transaction must be encrypted with, read in
    /// this transaction. On PostgreSQL the key's row stays share-locked until the transaction
    /// ends, so a rotation cannot retire the key to `previous` — and start re-encrypting —
    /// before this write is committed and visible to it. (SQLite writers are serial.)
    pub async fn active_key_for_write(&mut self) -> Result<i64> {
        // A rotation committing while this waits on the lock leaves no row matching in this
        // statement's snapshot; the next statement sees the new key.
        let sql = match self.conn {
            Conn::Sqlite(_) => ACTIVE_KEY_SQLITE,
            Conn::Postgres(_) => ACTIVE_KEY_POSTGRES,
        };
        for _ in 0..10 {
            let id = on_conn!(&mut self.conn, |c| {
                sqlx::query_scalar::<_, i64>(sql).fetch_optional(c).await
            })
            .map_err(db_error)?;
            if let Some(id) = id {
                return Ok(id);
            }
        }
        Err(Error::new(
            ErrorCode::Internal,
            "the keyring has no active encryption key",
        ))
    }

    /// Stores (or replaces) the tenant's secret for `purpose`.
    pub async fn put_secret(
        &mut self,
        purpose: &str,
        ciphertext: &[u8],
        key_id: i64,
        hint: &str,
    ) -> Result<SecretId> {
        let tenant = self.tenant();
        let now = Timestamp::now().as_millis();
        let id = on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, Uuid>(
                "INSERT INTO tenant_secrets (tenant_id, id, purpose, ciphertext, key_id, hint, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                 ON CONFLICT (tenant_id, purpose) DO UPDATE SET ciphertext = $4, key_id = $5, \
                 hint = $6, updated_at = $7 RETURNING id",
            )
            .bind(tenant.as_uuid())
            .bind(Uuid::now_v7())
            .bind(purpose)
            .bind(ciphertext)
            .bind(key_id)
            .bind(hint)
            .bind(now)
            .fetch_one(c)
            .await
        })
        .map_err(db_error)?;
        Ok(SecretId::from_uuid(id))
    }

    pub async fn get_secret(&mut self, purpose: &str) -> Result<Option<StoredSecret>> {
        let tenant = self.tenant();
        let row = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, SecretRow>(
                "SELECT id, purpose, ciphertext, key_id, hint, updated_at FROM tenant_secrets \
                 WHERE tenant_id = $1 AND purpose = $2",
            )
            .bind(tenant.as_uuid())
            .bind(purpose)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        Ok(row.map(StoredSecret::from))
    }

    /// The tenant's secrets encrypted with any key other than `key_id`.
    pub async fn secrets_not_on_key(&mut self, key_id: i64) -> Result<Vec<StoredSecret>> {
        let tenant = self.tenant();
        let rows = on_conn!(&mut self.conn, |c| {
            sqlx::query_as::<_, SecretRow>(
                "SELECT id, purpose, ciphertext, key_id, hint, updated_at FROM tenant_secrets \
                 WHERE tenant_id = $1 AND key_id <> $2 ORDER BY id",
            )
            .bind(tenant.as_uuid())
            .bind(key_id)
            .fetch_all(c)
            .await
        })
        .map_err(db_error)?;
        Ok(rows.into_iter().map(StoredSecret::from).collect())
    }

    /// Swaps a secret's ciphertext if it is still the one that was read (so a concurrent
    /// write is never overwritten with an older value). Returns whether it was swapped.
    pub async fn rewrap_secret(
        &mut self,
        id: SecretId,
        old_ciphertext: &[u8],
        new_ciphertext: &[u8],
        new_key_id: i64,
    ) -> Result<bool> {
        let tenant = self.tenant();
        let updated = on_conn!(&mut self.conn, |c| {
            sqlx::query(
                "UPDATE tenant_secrets SET ciphertext = $4, key_id = $5 \
                 WHERE tenant_id = $1 AND id = $2 AND ciphertext = $3",
            )
            .bind(tenant.as_uuid())
            .bind(id.as_uuid())
            .bind(old_ciphertext)
            .bind(new_ciphertext)
            .bind(new_key_id)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(db_error)?;
        Ok(updated == 1)
    }

    pub async fn count_secrets_on_key(&mut self, key_id: i64) -> Result<i64> {
        let tenant = self.tenant();
        on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM tenant_secrets WHERE tenant_id = $1 AND key_id = $2",
            )
            .bind(tenant.as_uuid())
            .bind(key_id)
            .fetch_one(c)
            .await
        })
        .map_err(db_error)
    }
}
