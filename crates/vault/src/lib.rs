//! Secrets at rest and other keyed cryptography.
//!
//! - A master key (`WAYPOST_MASTER_KEY`, or a 0600 key file) that never enters the database.
//! - Data keys, stored wrapped by the master key; one is active for new secrets, older ones
//!   still decrypt until rotation has re-encrypted everything and they are retired.
//! - Tenant secrets sealed with AES-256-GCM in an envelope that names its key; the additional
//!   authenticated data binds each ciphertext to its tenant and purpose, so a ciphertext copied
//!   to another tenant or purpose does not decrypt.
//! - Keyed phone hashes (HMAC-SHA256 under a per-tenant key derived from the master key) and
//!   Argon2id password hashes.

mod envelope;
mod master;
mod passwords;
mod vault;

pub use master::MasterKey;
pub use passwords::{hash_password, verify_password};
pub use vault::{RotationReport, Vault};
