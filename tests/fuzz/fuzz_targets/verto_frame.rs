#![no_main]
//! Frames come from FreeSWITCH, or whatever answers on its address.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vertobot_fuzz::verto_frame(data));
