use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use waypost_core::{Error, ErrorCode, Result};

/// Envelope layout: `version (1) ‖ key id (4, big-endian) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`.
const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;
const TAG: usize = 16;

pub(crate) fn seal(key: &[u8; 32], key_id: u32, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    // A random 96-bit nonce per message; see ARCHITECTURE.md for the rotation bound.
    getrandom::fill(&mut nonce)
        .map_err(|e| Error::internal("reading the OS random source", e.to_string()))?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| Error::new(ErrorCode::Internal, "encryption failed"))?;
    let mut out = Vec::with_capacity(HEADER + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The key id an envelope names, without decrypting it. Short or unknown input is an error,
/// never a panic.
pub(crate) fn key_id(envelope: &[u8]) -> Result<u32> {
    if envelope.len() < HEADER + TAG || envelope[0] != VERSION {
        return Err(Error::new(ErrorCode::Internal, "not a Waypost ciphertext"));
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&envelope[1..5]);
    Ok(u32::from_be_bytes(id))
}

pub(crate) fn open(key: &[u8; 32], aad: &[u8], envelope: &[u8]) -> Result<Vec<u8>> {
    key_id(envelope)?;
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&envelope[5..HEADER]);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &envelope[HEADER..],
                aad,
            },
        )
        .map_err(|_| {
            Error::new(
                ErrorCode::Internal,
                "a stored secret failed authentication (wrong key, tenant or purpose, or tampered)",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_only_with_the_same_key_and_aad() {
        let key = [7u8; 32];
        let sealed = seal(&key, 3, b"tenant-a|ai.api_key", b"sk-secret").unwrap();
        assert_eq!(key_id(&sealed).unwrap(), 3);
        assert_eq!(
            open(&key, b"tenant-a|ai.api_key", &sealed).unwrap(),
            b"sk-secret"
        );
        assert!(open(&key, b"tenant-b|ai.api_key", &sealed).is_err());
        assert!(open(&[8u8; 32], b"tenant-a|ai.api_key", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(&key, b"tenant-a|ai.api_key", &flipped).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in 0..40 {
            let junk = vec![1u8; len];
            assert!(open(&[0u8; 32], b"", &junk).is_err());
        }
    }

    #[test]
    fn nonces_do_not_repeat() {
        let key = [1u8; 32];
        let nonces: std::collections::HashSet<Vec<u8>> = (0..10_000)
            .map(|_| seal(&key, 1, b"", b"x").unwrap()[5..17].to_vec())
            .collect();
        assert_eq!(nonces.len(), 10_000);
    }
}
