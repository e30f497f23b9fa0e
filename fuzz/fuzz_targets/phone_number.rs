//! Phone normalization must never panic, and what it accepts must be stable E.164.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypost_core::PhoneNumber;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(phone) = PhoneNumber::parse(text) {
        assert!(phone.as_e164().starts_with('+'));
        let again = PhoneNumber::parse(phone.as_e164()).expect("a normalized number parses again");
        assert_eq!(again, phone);
    }
});
