//! Signature checks must never panic on any header, and never accept a forged one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypost_providers::signature::{sign_meta, verify_meta};

fuzz_target!(|data: &[u8]| {
    let split = data.len() / 2;
    let (body, header) = data.split_at(split);
    let header = String::from_utf8_lossy(header);
    let accepted = verify_meta(b"fuzz-secret", body, Some(&header)).is_ok();
    assert_eq!(accepted, header == sign_meta(b"fuzz-secret", body));
});
