#![no_main]
//! The offer and trickled candidates come from the caller: any bytes.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vertobot_fuzz::sdp_merge(data));
