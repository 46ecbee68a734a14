//! Property tests over everything that parses untrusted input: the SDP edits, the verto frame
//! parser and the Matrix event parser. None may panic, and every rejection is a typed error.

use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use vertobot::matrix::events::{parse_event, EventError};
use vertobot::sdp::{self, SdpError, TrickleCandidate};
use vertobot::verto::rpc::{parse_frame, FrameError, Incoming};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        prop_oneof![
            Just("0"),
            Just("1"),
            Just("offer"),
            Just("answer"),
            Just(""),
            Just("candidate:1 1 udp 1 1.2.3.4 5 typ host")
        ]
        .prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("call_id".to_owned()),
                        Just("version".to_owned()),
                        Just("party_id".to_owned()),
                        Just("lifetime".to_owned()),
                        Just("offer".to_owned()),
                        Just("sdp".to_owned()),
                        Just("type".to_owned()),
                        Just("candidates".to_owned()),
                        Just("candidate".to_owned()),
                        Just("sdpMid".to_owned()),
                        Just("sdpMLineIndex".to_owned()),
                        Just("method".to_owned()),
                        Just("id".to_owned()),
                        Just("result".to_owned()),
                        Just("error".to_owned()),
                        Just("params".to_owned()),
                        Just("reason".to_owned()),
                        Just("description".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// SDP-like text: real lines in random order and amounts, plus noise.
fn sdp_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("v=0".to_owned()),
        Just("m=audio 9 UDP/TLS/RTP/SAVPF 111".to_owned()),
        Just("m=video 0 RTP/SAVPF 96".to_owned()),
        Just("a=mid:0".to_owned()),
        Just("a=mid:".to_owned()),
        Just("a=group:BUNDLE 0 1".to_owned()),
        Just("a=ice-options:trickle".to_owned()),
        Just("a=end-of-candidates".to_owned()),
        Just("a=fingerprint:sha-256 AB:CD".to_owned()),
        Just("a=fingerprint:".to_owned()),
        Just("a=candidate:1 1 udp 2122194687 127.0.0.1 55085 typ host".to_owned()),
        Just("a=candidate:1 1 tcp 1 ::1 9 typ host tcptype active".to_owned()),
        Just("t=0 0".to_owned()),
        ".{0,30}",
    ];
    (
        prop::collection::vec(line, 0..20),
        prop_oneof![Just("\r\n"), Just("\n"), Just("\r")],
    )
        .prop_map(|(lines, eol)| lines.join(eol))
}

fn candidate() -> impl Strategy<Value = TrickleCandidate> {
    (
        prop_oneof![
            Just(String::new()),
            Just("candidate:1 1 udp 2122194687 10.0.0.1 5000 typ host".to_owned()),
            Just("candidate:2 1 UDP 1 x.local 5000 typ host".to_owned()),
            ".{0,60}",
        ],
        prop::option::of(prop_oneof![Just("0".to_owned()), ".{0,4}"]),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(candidate, sdp_mid, sdp_m_line_index)| TrickleCandidate {
            candidate,
            sdp_mid,
            sdp_m_line_index,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sdp_merge_never_panics(offer in sdp_text(), cands in prop::collection::vec(candidate(), 0..12)) {
        match sdp::merge_candidates(&offer, &cands) {
            Ok(m) => {
                // Every usable candidate is a line of the result, and nothing can inject lines.
                let lines = m.sdp.split('\n').filter(|l| l.starts_with("a=candidate:")).count();
                prop_assert_eq!(lines, m.usable);
                for c in &cands {
                    if !c.candidate.is_empty() && c.candidate.contains(['\r', '\n']) {
                        prop_assert!(!m.sdp.contains(c.candidate.as_str()));
                    }
                }
            }
            Err(SdpError::NotSdp | SdpError::NoMediaSection) => {}
        }
        let _ = sdp::repair_answer(&offer, &offer);
        let _ = sdp::alter_fingerprint(&offer);
        for c in &cands {
            let _ = sdp::classify(&c.candidate);
        }
    }

    #[test]
    fn verto_frames_never_panic(text in ".{0,200}", v in json_value()) {
        for input in [text, v.to_string()] {
            for r in parse_frame(&input) {
                match r {
                    Ok(Incoming::Request { params, .. }) | Ok(Incoming::Notification { params, .. }) => {
                        // Params are always an object, whatever the peer sent.
                        prop_assert!(params.is_object());
                    }
                    Ok(Incoming::Response { .. }) => {}
                    Err(FrameError::NotJson(_) | FrameError::Unclassifiable) => {}
                }
            }
        }
    }

    #[test]
    fn matrix_events_never_panic(
        t in prop_oneof![Just("m.call.invite"), Just("m.call.candidates"), Just("m.call.answer"), Just("m.call.hangup"),
                         Just("m.call.reject"), Just("m.call.select_answer"), Just("m.call.negotiate"), Just("m.room.member"),
                         Just("m.room.message"), Just("x")],
        content in json_value(),
        sender in prop_oneof![Just(json!("@a:b")), json_value()],
        age in prop_oneof![Just(json!(5)), json_value()],
    ) {
        let ev = json!({"type": t, "event_id": "$e", "sender": sender, "content": content, "unsigned": {"age": age}});
        let raw = RawValue::from_string(ev.to_string()).unwrap();
        match parse_event(&raw) {
            Ok(_) | Err(EventError::Envelope(_) | EventError::Irrelevant) => {}
        }
    }
}
