#![no_main]
//! Timeline events come from any Matrix user in a room with the bot.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vertobot_fuzz::matrix_event(data));
