use std::{io::Write, path::Path};

use base64::{Engine, engine::general_purpose::STANDARD};
use hkdf::Hkdf;
use sha2::Sha256;
use waypost_core::{Error, ErrorCode, Result};
use zeroize::Zeroizing;

/// The root of every key Waypost uses. Wiped from memory on drop; its `Debug` shows nothing.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

#[track_caller]
fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidConfig, message)
}

impl MasterKey {
    pub fn generate() -> Result<MasterKey> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut())
            .map_err(|e| Error::internal("reading the OS random source", e.to_string()))?;
        Ok(MasterKey(key))
    }

    /// Parses base64 of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<MasterKey> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| {
            invalid(
                "the master key must be base64 of 32 random bytes (`waypost keys generate-master`)",
            )
        })?);
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "the master key must be 32 bytes, not {}",
                bytes.len()
            ))
        })?;
        Ok(MasterKey(Zeroizing::new(key)))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_ref()))
    }

    /// Reads the key file.
    pub fn load(path: &Path) -> Result<MasterKey> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            invalid(format!(
                "cannot read the master key file {}: {e}",
                path.display()
            ))
        })?);
        Self::from_base64(&text).map_err(|e| {
            invalid(format!(
                "master key file {}: {}",
                path.display(),
                e.message()
            ))
        })
    }

    /// Reads the key file, creating it (mode 0600, in a 0700 folder) with a new key if it does
    /// not exist.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(MasterKey, bool)> {
        if path.exists() {
            // An older release may have left it readable to others.
            waypost_store::private_file(path)?;
            return Self::load(path).map(|k| (k, false));
        }
        let key = Self::generate()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            waypost_store::private_dir(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| {
            invalid(format!(
                "cannot create the master key file {}: {e}",
                path.display()
            ))
        })?;
        file.write_all(key.to_base64().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                invalid(format!(
                    "cannot write the master key file {}: {e}",
                    path.display()
                ))
            })?;
        Ok((key, true))
    }

    /// A 32-byte key for one purpose, derived with HKDF-SHA256 so no two uses share a key.
    pub(crate) fn derive(&self, info: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        let hk = Hkdf::<Sha256>::new(Some(b"waypost"), self.0.as_ref());
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(info, out.as_mut());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_wrong_sizes() {
        let key = MasterKey::generate().unwrap();
        let again = MasterKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(key.derive(b"x").as_ref(), again.derive(b"x").as_ref());
        assert_ne!(key.derive(b"x").as_ref(), key.derive(b"y").as_ref());
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
        assert_eq!(format!("{key:?}"), "MasterKey(***)");
    }

    #[test]
    fn key_files_are_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("waypost-mk-{}", std::process::id()));
        let path = dir.join("master.key");
        let _ = std::fs::remove_dir_all(&dir);
        let (first, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (second, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.derive(b"k").as_ref(), second.derive(b"k").as_ref());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
