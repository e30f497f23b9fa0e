//! Webhook signatures, checked on the raw bytes, in constant time, before anything is parsed.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a signature was refused. The HTTP layer answers 401 for `Missing`, 403 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Mismatch,
}

/// Meta: `X-Hub-Signature-256: sha256=<64 lowercase hex>` = HMAC-SHA256(app secret, raw body).
/// Non-ASCII arrives `\u`-escaped and is signed in that form, so the bytes are hashed exactly
/// as received.
pub fn verify_meta(
    app_secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_part = header
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(SignatureError::Malformed);
    }
    let expected = hex::decode(hex_part).map_err(|_| SignatureError::Malformed)?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(app_secret)
        .map_err(|_| SignatureError::Malformed)?;
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// The value Meta would send for `body` (for the simulator and tests).
pub fn sign_meta(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(app_secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Twilio: `X-Twilio-Signature` = Base64(HMAC-SHA1(auth token, URL + each POST parameter,
/// sorted by name (then value), as name followed by value)). `url` is the externally visible
/// URL Twilio called, query string included.
pub fn sign_twilio(auth_token: &[u8], url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(auth_token)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

pub fn verify_twilio(
    auth_token: &[u8],
    url: &str,
    params: &[(String, String)],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let presented = header.ok_or(SignatureError::Missing)?;
    let expected = sign_twilio(auth_token, url, params);
    if bool::from(expected.as_bytes().ct_eq(presented.trim().as_bytes())) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Bird: `Messagebird-Signature` = Base64(HMAC-SHA256(signing key,
/// `timestamp + "\n" + url + "\n" + SHA-256(body)` with the digest as raw bytes)).
pub fn sign_bird(signing_key: &[u8], timestamp: &str, url: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(signing_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(url.as_bytes());
    mac.update(b"\n");
    mac.update(&Sha256::digest(body));
    STANDARD.encode(mac.finalize().into_bytes())
}

pub fn verify_bird(
    signing_key: &[u8],
    timestamp: Option<&str>,
    url: &str,
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let (timestamp, presented) = match (timestamp, header) {
        (Some(t), Some(h)) => (t, h),
        _ => return Err(SignatureError::Missing),
    };
    let expected = sign_bird(signing_key, timestamp, url, body);
    if bool::from(expected.as_bytes().ct_eq(presented.trim().as_bytes())) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// A shared secret compared in constant time (verify tokens, Gupshup path secrets).
pub fn secrets_match(expected: &str, presented: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference vector: 479 bytes with a `\u00e9` escape, signed as received.
    const META_BODY: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Sheena Nelson"},"wa_id":"16505551234"}],"messages":[{"from":"16505551234","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Caf\u00e9?"}}]},"field":"messages"}]}]}"#;
    const META_SIG: &str =
        "sha256=18bd62b1a8bb7d9a20c9a62f8bab19ead74b078856d31d16198b542da05755da";

    #[test]
    fn meta_vector_verifies_and_re_serialised_bodies_do_not() {
        assert_eq!(META_BODY.len(), 479);
        assert_eq!(
            verify_meta(b"test_app_secret", META_BODY.as_bytes(), Some(META_SIG)),
            Ok(())
        );
        assert_eq!(
            sign_meta(b"test_app_secret", META_BODY.as_bytes()),
            META_SIG
        );
        let reserialised = META_BODY.replace("\\u00e9", "é");
        assert_eq!(
            verify_meta(b"test_app_secret", reserialised.as_bytes(), Some(META_SIG)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_meta(b"other", META_BODY.as_bytes(), Some(META_SIG)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_meta(b"test_app_secret", META_BODY.as_bytes(), None),
            Err(SignatureError::Missing)
        );
        for bad in [
            "18bd62b1",
            "sha1=18bd",
            &META_SIG.to_uppercase().replace("SHA256", "sha256"),
            "sha256=zz",
        ] {
            assert_eq!(
                verify_meta(b"test_app_secret", META_BODY.as_bytes(), Some(bad)),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn twilio_vector() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            sign_twilio(b"12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert_eq!(
            verify_twilio(b"12345", url, &params, Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ=")),
            Ok(())
        );
        let mut tampered = params.clone();
        tampered[2].1 = "1235".into();
        assert_eq!(
            verify_twilio(
                b"12345",
                url,
                &tampered,
                Some("0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_twilio(b"12345", url, &params, None),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn bird_signatures_cover_timestamp_url_and_body() {
        let sig = sign_bird(
            b"key",
            "1700000000",
            "https://w.example/webhooks/bird/1",
            b"{\"a\":1}",
        );
        assert_eq!(
            verify_bird(
                b"key",
                Some("1700000000"),
                "https://w.example/webhooks/bird/1",
                b"{\"a\":1}",
                Some(&sig)
            ),
            Ok(())
        );
        for (ts, url, body) in [
            (
                "1700000001",
                "https://w.example/webhooks/bird/1",
                &b"{\"a\":1}"[..],
            ),
            (
                "1700000000",
                "https://w.example/webhooks/bird/2",
                &b"{\"a\":1}"[..],
            ),
            (
                "1700000000",
                "https://w.example/webhooks/bird/1",
                &b"{\"a\":2}"[..],
            ),
        ] {
            assert_eq!(
                verify_bird(b"key", Some(ts), url, body, Some(&sig)),
                Err(SignatureError::Mismatch)
            );
        }
        assert_eq!(
            verify_bird(b"key", None, "u", b"", Some(&sig)),
            Err(SignatureError::Missing)
        );
    }
}
