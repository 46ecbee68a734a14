#![no_main]
//! Timeline events come from any Matrix user in a room with the bot.

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use vertobot::matrix::events::parse_event;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(raw) = serde_json::from_str::<Box<RawValue>>(text) {
            let _ = parse_event(&raw);
        }
    }
});
