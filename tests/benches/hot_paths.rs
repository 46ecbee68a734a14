//! Speed and memory of the per-call hot paths, measured rather than asserted:
//! `cargo bench --bench hot_paths`. Prints nanoseconds per operation and the size of a call's
//! state machine, so changes can be compared run to run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::time::Instant as TokioInstant;
use vertobot::call::machine::{Call, Direction, Input, Recovery, Setup, Version};
use vertobot::matrix::events::parse_event;
use vertobot::sdp::{self, TrickleCandidate};
use vertobot::verto::rpc::parse_frame;

const OFFER: &str = include_str!("../fixtures/chromium_offer.sdp");
const CANDIDATES: &str = include_str!("../fixtures/chromium_candidates.json");

fn bench(name: &str, mut f: impl FnMut()) {
    // Warm up, then run for about half a second.
    for _ in 0..100 {
        f();
    }
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{name:<40} {ns:>10.0} ns/op  ({n} runs)");
}

fn trickled() -> Vec<TrickleCandidate> {
    let v: serde_json::Value = serde_json::from_str(CANDIDATES).unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["candidates"].as_array().unwrap().clone())
        .map(|c| TrickleCandidate {
            candidate: c["candidate"].as_str().unwrap().to_owned(),
            sdp_mid: c["sdpMid"].as_str().map(str::to_owned),
            sdp_m_line_index: c["sdpMLineIndex"].as_u64(),
        })
        .collect()
}

fn main() {
    let cands = trickled();
    let merged = sdp::merge_candidates(OFFER, &cands).unwrap();
    let fs_answer = "v=0\r\no=FreeSWITCH 1 2 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nt=0 0\r\nm=audio 16458 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\na=candidate:1 1 udp 2130706431 127.0.0.1 16458 typ host generation 0\r\na=end-of-candidates\r\n";
    let frame = serde_json::json!({"jsonrpc": "2.0", "id": 54, "method": "verto.answer", "params": {"callID": "cda1015a-4083-4ce7-a3c0-93f554056581", "sdp": fs_answer, "variables": {"Event-Name": "CHANNEL_DATA"}}}).to_string();
    let invite = serde_json::json!({"type": "m.call.invite", "event_id": "$e", "sender": "@a:b", "unsigned": {"age": 100},
        "content": {"call_id": "c1", "party_id": "P", "version": "1", "lifetime": 60000, "offer": {"type": "offer", "sdp": OFFER}}}).to_string();
    let invite = RawValue::from_string(invite).unwrap();

    println!(
        "vertobot hot paths (offer {} bytes, {} trickled candidates)",
        OFFER.len(),
        cands.len()
    );
    bench("sdp::merge_candidates (Chromium offer)", || {
        black_box(sdp::merge_candidates(black_box(OFFER), black_box(&cands)).unwrap());
    });
    bench("sdp::repair_answer", || {
        black_box(sdp::repair_answer(black_box(fs_answer), black_box(OFFER)));
    });
    bench("verto::rpc::parse_frame (verto.answer)", || {
        black_box(parse_frame(black_box(&frame)));
    });
    bench("matrix::events::parse_event (m.call.invite)", || {
        black_box(parse_event(black_box(&invite)).unwrap());
    });
    bench("call machine: invite to answer to hangup", || {
        let now = TokioInstant::now();
        let mut c = Call::new(Setup {
            call_id: "c1".into(),
            caller_party: Some("P".into()),
            version: Version::V1,
            offer: OFFER.into(),
            direction: Direction::Outbound,
            candidate_wait: Duration::from_secs(2),
            our_party: "BOT".into(),
            expires_at: now + Duration::from_secs(60),
            candidate_deadline: now + Duration::from_secs(2),
            candidate_quiet: Duration::from_millis(400),
            max_candidates: 64,
            max_sdp_bytes: 65536,
            notices: true,
            digits_on_answer: None,
            max_duration: None,
            dtmf_burst: Duration::from_millis(1500),
            recovery: Recovery::default(),
        });
        c.start(now);
        c.handle(
            Input::Candidates {
                party_id: Some("P".into()),
                candidates: cands.clone(),
            },
            now,
        );
        c.handle(Input::InviteResult(Ok(())), now);
        black_box(c.handle(
            Input::Answer {
                sdp: Some(fs_answer.into()),
            },
            now,
        ));
        black_box(c.handle(Input::Hangup { reason: None }, now));
    });
    println!(
        "memory: Call machine {} bytes inline; merged offer {} bytes",
        std::mem::size_of::<Call>(),
        merged.sdp.len()
    );
}
