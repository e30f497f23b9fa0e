//! The audit chain's keys. Records are chained with HMAC-SHA256 under a key derived from one of
//! the vault's data keys, so only a holder of the master key can write a link that verifies:
//! database access alone cannot rewrite the chain consistently. The store never sees the
//! master key; the vault gives it a way to derive MAC keys from stored (wrapped) data keys.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use waypost_core::{Error, ErrorCode, Result};
use zeroize::Zeroizing;

use crate::{
    Store,
    connect::db_error,
    tx::{Conn, on_conn},
};

pub type MacKey = Zeroizing<[u8; 32]>;

/// Derives the audit MAC key of a data key from its stored, wrapped form.
pub trait AuditKeys: Send + Sync {
    fn mac_key(&self, key_id: i64, wrapped: &[u8]) -> Result<MacKey>;
}

/// The source of MAC keys and the keys derived so far.
#[derive(Default)]
pub(crate) struct AuditKeyring {
    source: RwLock<Option<Arc<dyn AuditKeys>>>,
    derived: RwLock<HashMap<i64, Arc<MacKey>>>,
}

impl AuditKeyring {
    fn cached(&self, key_id: i64) -> Option<Arc<MacKey>> {
        let derived = self.derived.read().unwrap_or_else(PoisonError::into_inner);
        derived.get(&key_id).cloned()
    }

    fn derive(&self, key_id: i64, wrapped: &[u8]) -> Result<Arc<MacKey>> {
        let source = self
            .source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::Internal,
                    "the audit trail needs the master key, and it was not loaded",
                )
            })?;
        let key = Arc::new(source.mac_key(key_id, wrapped)?);
        self.derived
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_id, key.clone());
        Ok(key)
    }

    /// The MAC key of data key `key_id`, read through `conn` if not derived yet; `None` when no
    /// such key is stored.
    pub(crate) async fn key(&self, conn: &mut Conn, key_id: i64) -> Result<Option<Arc<MacKey>>> {
        if let Some(key) = self.cached(key_id) {
            return Ok(Some(key));
        }
        let wrapped = on_conn!(conn, |c| {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT wrapped_key FROM encryption_keys WHERE id = $1",
            )
            .bind(key_id)
            .fetch_optional(c)
            .await
        })
        .map_err(db_error)?;
        wrapped.map(|w| self.derive(key_id, &w)).transpose()
    }
}

impl Store {
    /// Installs the MAC key source (the vault does, when it opens): from then on this store
    /// and every clone can append to and verify audit chains.
    pub fn set_audit_keys(&self, keys: Arc<dyn AuditKeys>) {
        *self
            .audit_keys
            .source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(keys);
        self.audit_keys
            .derived
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
