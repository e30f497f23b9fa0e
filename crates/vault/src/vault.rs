use std::{collections::HashMap, sync::Arc};

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::RwLock;
use waypost_core::{Error, ErrorCode, Result, SecretId, TenantId};
use waypost_store::{AuditKeys, MacKey, SecretStatus, Store, TenantScope, Tx};
use zeroize::Zeroizing;

use crate::{MasterKey, envelope};

/// Wrapped data keys are bound to this label, so a ciphertext from elsewhere cannot pose as one.
const DEK_AAD: &[u8] = b"waypost:data-key:v1";
/// HKDF info for the audit chain's MAC key, derived from a data key.
const AUDIT_KEY_INFO: &[u8] = b"waypost:audit-chain:v1";

type DataKey = Zeroizing<[u8; 32]>;

/// What `waypost keys rotate` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationReport {
    pub active_key: i64,
    pub reencrypted: u64,
    /// Secrets that changed while being re-encrypted; they keep their (newer) value and are
    /// picked up by the next rotation if still on an old key.
    pub skipped: u64,
}

/// Encrypts and decrypts tenant secrets with the keyring stored in the database.
pub struct Vault {
    store: Store,
    master: MasterKey,
    wrapping_key: Zeroizing<[u8; 32]>,
    keys: RwLock<HashMap<i64, Arc<DataKey>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(***)")
    }
}

/// Gives the store the audit chain's MAC keys: each data key, unwrapped with the master key,
/// yields one through HKDF. So chaining and verifying need the master key, and a data key
/// that chained records must be kept until retention has removed them.
struct AuditKeySource {
    wrapping_key: Zeroizing<[u8; 32]>,
}

impl AuditKeys for AuditKeySource {
    fn mac_key(&self, key_id: i64, wrapped: &[u8]) -> Result<MacKey> {
        let data = Zeroizing::new(
            envelope::open(&self.wrapping_key, DEK_AAD, wrapped).map_err(|_| {
                Error::new(
                    ErrorCode::InvalidConfig,
                    format!("encryption key {key_id} does not open with this master key"),
                )
            })?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = Hkdf::<Sha256>::new(None, &data).expand(AUDIT_KEY_INFO, key.as_mut());
        Ok(key)
    }
}

fn aad(tenant: TenantId, purpose: &str) -> Vec<u8> {
    let mut aad = b"waypost:secret:v1:".to_vec();
    aad.extend_from_slice(tenant.as_uuid().as_bytes());
    aad.push(b':');
    aad.extend_from_slice(purpose.as_bytes());
    aad
}

/// At most the last four characters, and none of a short secret.
fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        String::new()
    } else {
        chars[chars.len() - 4..].iter().collect()
    }
}

impl Vault {
    /// Loads the keyring, creating the first data key on a new database. Fails with one clear
    /// line when the master key does not match the stored keys.
    pub async fn open(store: Store, master: MasterKey) -> Result<Vault> {
        let wrapping_key = master.derive(b"data-key-wrapping");
        let audit_keys = AuditKeySource {
            wrapping_key: wrapping_key.clone(),
        };
        let vault = Vault {
            store,
            master,
            wrapping_key,
            keys: RwLock::new(HashMap::new()),
        };
        vault.reload().await?;
        if vault.keys.read().await.is_empty() {
            // Another process may be opening the same new database: whichever key is stored
            // first becomes everyone's.
            let (wrapped, _) = vault.new_data_key()?;
            let mut tx = vault.store.platform().await?;
            tx.add_first_key(&wrapped).await?;
            tx.commit().await?;
            vault.reload().await?;
        }
        vault.store.set_audit_keys(Arc::new(audit_keys));
        Ok(vault)
    }

    async fn reload(&self) -> Result<()> {
        let mut tx = self.store.platform_read().await?;
        let stored = tx.encryption_keys().await?;
        tx.rollback().await?;
        let mut keys = HashMap::new();
        for key in stored.iter().filter(|k| k.state != "retired") {
            let plain =
                envelope::open(&self.wrapping_key, DEK_AAD, &key.wrapped_key).map_err(|_| {
                    Error::new(
                        ErrorCode::InvalidConfig,
                        "the master key does not match this database's encryption keys \
                     (wrong WAYPOST_MASTER_KEY or key file?)",
                    )
                })?;
            let data: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
                Error::new(ErrorCode::Internal, "a stored data key has the wrong size")
            })?;
            keys.insert(key.id, Arc::new(Zeroizing::new(data)));
        }
        *self.keys.write().await = keys;
        Ok(())
    }

    /// A fresh data key: wrapped for storage, and in the clear.
    fn new_data_key(&self) -> Result<(Vec<u8>, DataKey)> {
        let mut data = Zeroizing::new([0u8; 32]);
        getrandom::fill(data.as_mut())
            .map_err(|e| Error::internal("reading the OS random source", e.to_string()))?;
        let wrapped = envelope::seal(&self.wrapping_key, 0, DEK_AAD, data.as_ref())?;
        Ok((wrapped, data))
    }

    async fn add_key(&self) -> Result<i64> {
        let (wrapped, data) = self.new_data_key()?;
        let mut tx = self.store.platform().await?;
        let id = tx.add_active_key(&wrapped).await?;
        tx.commit().await?;
        self.keys.write().await.insert(id, Arc::new(data));
        Ok(id)
    }

    async fn key(&self, id: i64) -> Result<Arc<DataKey>> {
        if let Some(key) = self.keys.read().await.get(&id) {
            return Ok(key.clone());
        }
        // Another process may have rotated since we loaded the keyring.
        self.reload().await?;
        self.keys.read().await.get(&id).cloned().ok_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                format!("encryption key {id} is unknown or retired"),
            )
        })
    }

    fn seal_with(
        &self,
        key_id: i64,
        key: &DataKey,
        tenant: TenantId,
        purpose: &str,
        plaintext: &str,
    ) -> Result<Vec<u8>> {
        let id = u32::try_from(key_id)
            .map_err(|_| Error::new(ErrorCode::Internal, "key id out of range"))?;
        envelope::seal(key, id, &aad(tenant, purpose), plaintext.as_bytes())
    }

    /// Encrypts `plaintext` and stores it as the tenant's secret for `purpose`, in `tx`.
    pub async fn put_secret(
        &self,
        tx: &mut Tx<TenantScope>,
        purpose: &str,
        plaintext: &str,
    ) -> Result<SecretId> {
        // Read in the caller's transaction (see `active_key_for_write`): a rotation running
        // now either waits for this write or has already made its key the active one.
        let key_id = tx.active_key_for_write().await?;
        let key = self.key(key_id).await?;
        let sealed = self.seal_with(key_id, &key, tx.tenant(), purpose, plaintext)?;
        tx.put_secret(purpose, &sealed, key_id, &hint(plaintext))
            .await
    }

    /// The decrypted secret for `purpose`, if one is set.
    pub async fn reveal(
        &self,
        tx: &mut Tx<TenantScope>,
        purpose: &str,
    ) -> Result<Option<Zeroizing<String>>> {
        let Some(stored) = tx.get_secret(purpose).await? else {
            return Ok(None);
        };
        let key = self
            .key(i64::from(envelope::key_id(&stored.ciphertext)?))
            .await?;
        let plain = Zeroizing::new(envelope::open(
            &key,
            &aad(tx.tenant(), purpose),
            &stored.ciphertext,
        )?);
        let text = String::from_utf8(plain.to_vec())
            .map_err(|_| Error::new(ErrorCode::Internal, "a stored secret is not text"))?;
        Ok(Some(Zeroizing::new(text)))
    }

    /// Whether a secret is set, and its hint: all the API ever says about one.
    pub async fn status(&self, tx: &mut Tx<TenantScope>, purpose: &str) -> Result<SecretStatus> {
        Ok(match tx.get_secret(purpose).await? {
            Some(s) => SecretStatus {
                set: true,
                last4: Some(s.hint).filter(|h| !h.is_empty()),
            },
            None => SecretStatus {
                set: false,
                last4: None,
            },
        })
    }

    /// Adds a data key, makes it active, and re-encrypts every tenant's secrets with it, one
    /// tenant transaction at a time, while the server keeps running.
    pub async fn rotate(&self) -> Result<RotationReport> {
        let active = self.add_key().await?;
        let (reencrypted, skipped) = self.reencrypt_all(active).await?;
        Ok(RotationReport {
            active_key: active,
            reencrypted,
            skipped,
        })
    }

    async fn reencrypt_all(&self, active: i64) -> Result<(u64, u64)> {
        let key = self.key(active).await?;
        let tenants = {
            let mut tx = self.store.platform_read().await?;
            tx.list_tenants().await?
        };
        let (mut done, mut skipped) = (0, 0);
        for tenant in tenants {
            let mut tx = self.store.tenant(tenant.id).await?;
            for secret in tx.secrets_not_on_key(active).await? {
                let old_key = self
                    .key(i64::from(envelope::key_id(&secret.ciphertext)?))
                    .await?;
                let plain = Zeroizing::new(envelope::open(
                    &old_key,
                    &aad(tenant.id, &secret.purpose),
                    &secret.ciphertext,
                )?);
                let text = Zeroizing::new(String::from_utf8_lossy(&plain).into_owned());
                let sealed = self.seal_with(active, &key, tenant.id, &secret.purpose, &text)?;
                if tx
                    .rewrap_secret(secret.id, &secret.ciphertext, &sealed, active)
                    .await?
                {
                    done += 1;
                } else {
                    skipped += 1;
                }
            }
            tx.commit().await?;
        }
        Ok((done, skipped))
    }

    /// Retires a previous key once no secret uses it any more.
    pub async fn retire(&self, key_id: i64) -> Result<()> {
        let (keys, tenants) = {
            let mut tx = self.store.platform_read().await?;
            (tx.encryption_keys().await?, tx.list_tenants().await?)
        };
        match keys
            .iter()
            .find(|k| k.id == key_id)
            .map(|k| k.state.as_str())
        {
            None => {
                return Err(Error::new(
                    ErrorCode::NotFound,
                    format!("no encryption key {key_id}"),
                ));
            }
            Some("previous") => {}
            Some(state) => {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "key {key_id} is {state}, not a previous key; only those can be retired"
                    ),
                ));
            }
        }
        let mut chained = self
            .store
            .platform_read()
            .await?
            .count_platform_audit_on_key(key_id)
            .await?;
        for tenant in tenants {
            let mut tx = self.store.tenant_read(tenant.id).await?;
            let using = tx.count_secrets_on_key(key_id).await?;
            if using > 0 {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "key {key_id} still encrypts {using} secret(s); run `waypost keys rotate` first"
                    ),
                ));
            }
            chained += tx.count_audit_on_key(key_id).await?;
        }
        if chained > 0 {
            return Err(Error::new(
                ErrorCode::Conflict,
                format!(
                    "key {key_id} chained {chained} audit record(s), which it is needed to verify; \
                     it can be retired once audit retention has removed them"
                ),
            ));
        }
        let mut tx = self.store.platform().await?;
        tx.retire_key(key_id).await?;
        tx.commit().await?;
        self.keys.write().await.remove(&key_id);
        Ok(())
    }

    /// `HMAC-SHA256(tenant key, e164)`: lets a tenant that keeps minimal data match a phone
    /// number without storing it. The tenant key is derived from the master key, so hashes
    /// cannot be correlated across tenants or recomputed from the database alone.
    pub fn phone_hash(&self, tenant: TenantId, e164: &str) -> [u8; 32] {
        let mut info = b"phone-hash:".to_vec();
        info.extend_from_slice(tenant.as_uuid().as_bytes());
        let key = self.master.derive(&info);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(e164.as_bytes());
        mac.finalize().into_bytes().into()
    }
}
