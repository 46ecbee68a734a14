#![no_main]
//! The offer and trickled candidates come from the caller: any bytes.

use libfuzzer_sys::fuzz_target;
use vertobot::sdp::{self, TrickleCandidate};

fuzz_target!(|data: &[u8]| {
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
        let lines = m.sdp.split('\n').filter(|l| l.starts_with("a=candidate:")).count();
        assert_eq!(lines, m.usable);
    }
    let _ = sdp::repair_answer(offer, offer);
    let _ = sdp::alter_fingerprint(offer);
});
