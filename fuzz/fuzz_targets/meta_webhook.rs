//! Meta's webhook parser must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = waypost_providers::meta::parse(data) {
        for event in &events {
            let _ = format!("{event:?}");
        }
    }
    let _ = waypost_providers::meta::phone_number_ids(data);
});
