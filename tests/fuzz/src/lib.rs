//! The bodies of the fuzz targets, shared by the libFuzzer binaries (`cargo fuzz run <name>`,
//! nightly) and by the stable smoke test (`tests/smoke.rs`, run by `tests/fuzz_smoke.sh`),
//! which feeds each body its corpus and mutations of it for a few seconds.

use serde_json::value::RawValue;
use vertobot::sdp::{self, TrickleCandidate};

/// A target's body: one input.
pub type Body = fn(&[u8]);

/// Every target: (name, body). The name is the binary's and the corpus directory's.
pub const TARGETS: &[(&str, Body)] = &[
    ("sdp_merge", sdp_merge),
    ("verto_frame", verto_frame),
    ("matrix_event", matrix_event),
];

/// Timeline events come from any Matrix user in a room with the bot.
pub fn matrix_event(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(raw) = serde_json::from_str::<Box<RawValue>>(text) {
            let _ = vertobot::matrix::events::parse_event(&raw);
        }
    }
}

/// The offer and trickled candidates come from the caller: any bytes.
pub fn sdp_merge(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // First line: candidates separated by '|', each "candidate;mid;index"; the rest: the SDP.
    let (head, offer) = text.split_once('\n').unwrap_or(("", &text));
    let cands: Vec<TrickleCandidate> = head
        .split('|')
        .map(|c| {
            let mut parts = c.split(';');
            TrickleCandidate {
                candidate: parts.next().unwrap_or_default().to_owned(),
                sdp_mid: parts.next().map(str::to_owned),
                sdp_m_line_index: parts.next().and_then(|i| i.parse().ok()),
            }
        })
        .collect();
    if let Ok(m) = sdp::merge_candidates(offer, &cands) {
        let lines = m
            .sdp
            .split('\n')
            .filter(|l| l.starts_with("a=candidate:"))
            .count();
        assert_eq!(lines, m.usable);
    }
    let _ = sdp::repair_answer(offer, offer);
    let _ = sdp::alter_fingerprint(offer);
}

/// Frames come from FreeSWITCH, or whatever answers on its address.
pub fn verto_frame(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vertobot::verto::rpc::parse_frame(text);
    }
}
