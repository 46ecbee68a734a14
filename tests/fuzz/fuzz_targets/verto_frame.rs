#![no_main]
//! Frames come from FreeSWITCH, or whatever answers on its address.

use libfuzzer_sys::fuzz_target;
use vertobot::verto::rpc::parse_frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_frame(text);
    }
});
