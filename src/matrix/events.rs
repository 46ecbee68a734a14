//! Typed view of the timeline events the bot acts on.
//!
//! Event contents are ruma's `m.call.*` types (they accept `version` as the integer `0` or a
//! string, and an end-of-candidates entry without `sdpMid`). The envelope stays a raw JSON
//! value until we know the type, so one malformed event costs a warning, never the batch.

use ruma::events::call::{
    answer::CallAnswerEventContent, candidates::CallCandidatesEventContent,
    hangup::CallHangupEventContent, invite::CallInviteEventContent,
    negotiate::CallNegotiateEventContent, reject::CallRejectEventContent,
    select_answer::CallSelectAnswerEventContent,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// A timeline event we care about.
#[derive(Debug, Clone)]
pub struct TimelineEvent {
    /// The event id, for logs.
    pub event_id: String,
    /// Who sent it.
    pub sender: String,
    /// `unsigned.age` in ms at the time of the sync response.
    pub age_ms: Option<u64>,
    /// What it says.
    pub kind: EventKind,
}

/// The parsed content.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// An `m.call.*` event.
    Call(CallEvent),
    /// `m.room.member` with its state key and membership.
    Member {
        /// Whose membership.
        user_id: String,
        /// `join`, `leave`, `ban` ...
        membership: String,
    },
    /// `m.room.message` (commands such as `!dtmf`).
    Message {
        /// `body`.
        body: String,
    },
    /// An `m.call.*` event whose content did not parse.
    Malformed {
        /// The event type.
        event_type: String,
        /// The `call_id`, when it could be read.
        call_id: Option<String>,
        /// serde's message.
        error: String,
    },
}

/// The `m.call.*` events of the legacy 1:1 VoIP spec.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// `m.call.invite`.
    Invite(Box<CallInviteEventContent>),
    /// `m.call.candidates`.
    Candidates(CallCandidatesEventContent),
    /// `m.call.answer` (from another device of the callee side).
    Answer(Box<CallAnswerEventContent>),
    /// `m.call.select_answer`.
    SelectAnswer(CallSelectAnswerEventContent),
    /// `m.call.hangup`.
    Hangup(CallHangupEventContent),
    /// `m.call.reject`.
    Reject(CallRejectEventContent),
    /// `m.call.negotiate`.
    Negotiate(Box<CallNegotiateEventContent>),
}

impl CallEvent {
    /// The `call_id` every call event carries.
    pub fn call_id(&self) -> &str {
        match self {
            CallEvent::Invite(c) => c.call_id.as_str(),
            CallEvent::Candidates(c) => c.call_id.as_str(),
            CallEvent::Answer(c) => c.call_id.as_str(),
            CallEvent::SelectAnswer(c) => c.call_id.as_str(),
            CallEvent::Hangup(c) => c.call_id.as_str(),
            CallEvent::Reject(c) => c.call_id.as_str(),
            CallEvent::Negotiate(c) => c.call_id.as_str(),
        }
    }
}

/// Who we are in an outgoing call event: version 0 contents carry `"version": 0` and no party,
/// version 1 contents `"version": "1"` and our `party_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Voip {
    /// The integer `0`.
    V0,
    /// `"1"`, with our party.
    V1 {
        /// Our `party_id`.
        party_id: String,
    },
}

/// `description.type` of `m.call.negotiate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    /// A new offer (ours, after FreeSWITCH re-offered the call).
    Offer,
    /// Our answer to the caller's offer.
    Answer,
}

impl SdpKind {
    fn as_str(self) -> &'static str {
        match self {
            SdpKind::Offer => "offer",
            SdpKind::Answer => "answer",
        }
    }
}

/// An `m.call.*` event the bot sends to a caller, or (calls from FreeSWITCH) to a callee. The contents are built here, so the call
/// layer decides what to say and never how it is spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEventOut {
    /// `m.call.answer`. Version 1 answers announce DTMF, which makes Element show its dial pad.
    Answer {
        /// The call.
        call_id: String,
        /// Version and party.
        voip: Voip,
        /// Our answer SDP.
        sdp: String,
        /// The answer's media stream ids, for `sdp_stream_metadata` (version 1).
        stream_ids: Vec<String>,
    },
    /// `m.call.candidates` with only the end-of-candidates marker (version 1): our answer
    /// already holds every candidate, and the spec still wants the marker.
    EndOfCandidates {
        /// The call.
        call_id: String,
        /// Our `party_id`.
        party_id: String,
    },
    /// `m.call.negotiate` (version 1 only: version 0 has no renegotiation).
    Negotiate {
        /// The call.
        call_id: String,
        /// Our `party_id`.
        party_id: String,
        /// How long the description stays valid, in ms.
        lifetime_ms: u64,
        /// Offer or answer.
        kind: SdpKind,
        /// The SDP.
        sdp: String,
        /// Its media stream ids, for `sdp_stream_metadata`.
        stream_ids: Vec<String>,
    },
    /// `m.call.hangup`.
    Hangup {
        /// The call.
        call_id: String,
        /// Version and party.
        voip: Voip,
        /// The Matrix hangup reason.
        reason: String,
    },
    /// `m.call.invite` (version 1), when the bot rings a Matrix user. It announces DTMF, so
    /// the callee's client offers its dial pad.
    Invite {
        /// A new call.
        call_id: String,
        /// Our `party_id`.
        party_id: String,
        /// The user rung; other members ignore the invite.
        invitee: String,
        /// How long it rings, in ms.
        lifetime_ms: u64,
        /// The offer.
        sdp: String,
        /// Its media stream ids, for `sdp_stream_metadata`.
        stream_ids: Vec<String>,
    },
    /// `m.call.select_answer`: which of the callee's devices got the call, so the others stop
    /// ringing.
    SelectAnswer {
        /// The call.
        call_id: String,
        /// Our `party_id`.
        party_id: String,
        /// The answering device's `party_id`.
        selected: String,
    },
    /// `m.call.reject` (version 1). The non-spec `reason` is what matrix-js-sdk shows.
    Reject {
        /// The call.
        call_id: String,
        /// Our `party_id`.
        party_id: String,
        /// The Matrix hangup reason.
        reason: String,
    },
}

impl CallEventOut {
    /// The event type.
    pub fn event_type(&self) -> &'static str {
        match self {
            CallEventOut::Answer { .. } => "m.call.answer",
            CallEventOut::EndOfCandidates { .. } => "m.call.candidates",
            CallEventOut::Negotiate { .. } => "m.call.negotiate",
            CallEventOut::Hangup { .. } => "m.call.hangup",
            CallEventOut::Reject { .. } => "m.call.reject",
            CallEventOut::Invite { .. } => "m.call.invite",
            CallEventOut::SelectAnswer { .. } => "m.call.select_answer",
        }
    }

    /// The event content.
    pub fn content(&self) -> Value {
        match self {
            CallEventOut::Answer {
                call_id,
                voip: Voip::V0,
                sdp,
                ..
            } => json!({
                "call_id": call_id,
                "version": 0,
                "answer": {"type": "answer", "sdp": sdp},
            }),
            CallEventOut::Answer {
                call_id,
                voip: Voip::V1 { party_id },
                sdp,
                stream_ids,
            } => json!({
                "call_id": call_id,
                "party_id": party_id,
                "version": "1",
                "answer": {"type": "answer", "sdp": sdp},
                "capabilities": {"m.call.dtmf": true, "m.call.transferee": false},
                "sdp_stream_metadata": stream_metadata(stream_ids),
            }),
            CallEventOut::Invite { .. } | CallEventOut::SelectAnswer { .. } => {
                self.caller_content()
            }
            CallEventOut::EndOfCandidates { call_id, party_id } => json!({
                "call_id": call_id,
                "party_id": party_id,
                "version": "1",
                "candidates": [{"candidate": ""}],
            }),
            CallEventOut::Negotiate {
                call_id,
                party_id,
                lifetime_ms,
                kind,
                sdp,
                stream_ids,
            } => json!({
                "call_id": call_id,
                "party_id": party_id,
                "version": "1",
                "lifetime": lifetime_ms,
                "description": {"type": kind.as_str(), "sdp": sdp},
                "sdp_stream_metadata": stream_metadata(stream_ids),
            }),
            CallEventOut::Hangup {
                call_id,
                voip: Voip::V0,
                reason,
            } => json!({"call_id": call_id, "version": 0, "reason": reason}),
            CallEventOut::Hangup {
                call_id,
                voip: Voip::V1 { party_id },
                reason,
            }
            | CallEventOut::Reject {
                call_id,
                party_id,
                reason,
            } => {
                json!({"call_id": call_id, "party_id": party_id, "version": "1", "reason": reason})
            }
        }
    }
}

impl CallEventOut {
    /// The contents only a caller sends (the bot ringing a Matrix user).
    fn caller_content(&self) -> Value {
        match self {
            CallEventOut::Invite {
                call_id,
                party_id,
                invitee,
                lifetime_ms,
                sdp,
                stream_ids,
            } => json!({
                "call_id": call_id,
                "party_id": party_id,
                "version": "1",
                "invitee": invitee,
                "lifetime": lifetime_ms,
                "offer": {"type": "offer", "sdp": sdp},
                "capabilities": {"m.call.dtmf": true, "m.call.transferee": false},
                "sdp_stream_metadata": stream_metadata(stream_ids),
            }),
            CallEventOut::SelectAnswer {
                call_id,
                party_id,
                selected,
            } => json!({
                "call_id": call_id,
                "party_id": party_id,
                "version": "1",
                "selected_party_id": selected,
            }),
            _ => Value::Null,
        }
    }
}

/// `sdp_stream_metadata` for the bot's side of a call: audio streams of user media.
/// matrix-js-sdk warns without it and cannot tell what a stream is for.
fn stream_metadata(stream_ids: &[String]) -> Value {
    let meta = json!({"purpose": "m.usermedia", "audio_muted": false, "video_muted": true});
    Value::Object(
        stream_ids
            .iter()
            .map(|id| (id.clone(), meta.clone()))
            .collect(),
    )
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    event_id: String,
    sender: String,
    #[serde(borrow)]
    content: &'a RawValue,
    #[serde(default)]
    state_key: Option<String>,
    #[serde(default)]
    unsigned: Unsigned,
}

#[derive(Deserialize, Default)]
struct Unsigned {
    #[serde(default)]
    age: Option<u64>,
}

/// The spec: a `version` other than `0` or `"1"` (the number `1` included) is treated as
/// `"1"`. ruma accepts only the integer `0` and strings, so other numbers become `"1"` here.
fn normalise_version(v: &mut serde_json::Value) {
    if let Some(ver) = v.get_mut("version") {
        if ver.is_number() && ver.as_u64() != Some(0) {
            *ver = serde_json::Value::String("1".into());
        }
    }
}

/// Why an event was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not even a valid event envelope.
    #[error("bad event envelope: {0}")]
    Envelope(String),
    /// A type we do not act on.
    #[error("not an event the bot acts on")]
    Irrelevant,
}

/// Parses one raw timeline event.
pub fn parse_event(raw: &RawValue) -> Result<TimelineEvent, EventError> {
    let env: Envelope<'_> =
        serde_json::from_str(raw.get()).map_err(|e| EventError::Envelope(e.to_string()))?;
    let c = env.content.get();
    fn p<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, serde_json::Error> {
        let mut v: serde_json::Value = serde_json::from_str(s)?;
        normalise_version(&mut v);
        serde_json::from_value(v)
    }
    let parsed: Result<CallEvent, serde_json::Error> = match env.event_type.as_str() {
        "m.call.invite" => p(c).map(|x| CallEvent::Invite(Box::new(x))),
        "m.call.candidates" => p(c).map(CallEvent::Candidates),
        "m.call.answer" => p(c).map(|x| CallEvent::Answer(Box::new(x))),
        "m.call.select_answer" => p(c).map(CallEvent::SelectAnswer),
        "m.call.hangup" => p(c).map(CallEvent::Hangup),
        "m.call.reject" => p(c).map(CallEvent::Reject),
        "m.call.negotiate" => p(c).map(|x| CallEvent::Negotiate(Box::new(x))),
        "m.room.member" => {
            #[derive(Deserialize)]
            struct M {
                membership: String,
            }
            let m: M = p(c).map_err(|e| EventError::Envelope(e.to_string()))?;
            return Ok(TimelineEvent {
                event_id: env.event_id,
                sender: env.sender,
                age_ms: env.unsigned.age,
                kind: EventKind::Member {
                    user_id: env.state_key.unwrap_or_default(),
                    membership: m.membership,
                },
            });
        }
        "m.room.message" => {
            #[derive(Deserialize)]
            struct M {
                #[serde(default)]
                body: String,
            }
            let m: M = p(c).map_err(|e| EventError::Envelope(e.to_string()))?;
            return Ok(TimelineEvent {
                event_id: env.event_id,
                sender: env.sender,
                age_ms: env.unsigned.age,
                kind: EventKind::Message { body: m.body },
            });
        }
        _ => return Err(EventError::Irrelevant),
    };
    let kind = match parsed {
        Ok(ev) => EventKind::Call(ev),
        Err(e) => {
            #[derive(Deserialize)]
            struct Id {
                call_id: Option<String>,
            }
            EventKind::Malformed {
                call_id: p::<Id>(c).ok().and_then(|i| i.call_id),
                event_type: env.event_type,
                error: e.to_string(),
            }
        }
    };
    Ok(TimelineEvent {
        event_id: env.event_id,
        sender: env.sender,
        age_ms: env.unsigned.age,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::VoipVersionId;
    use serde_json::json;

    fn raw(v: serde_json::Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    fn ev(t: &str, content: serde_json::Value) -> Box<RawValue> {
        raw(
            json!({"type": t, "event_id": "$e", "sender": "@a:b", "content": content, "unsigned": {"age": 1200}, "origin_server_ts": 1}),
        )
    }

    #[test]
    fn invite_versions() {
        let cases = [
            (json!(0), VoipVersionId::V0),
            (json!("1"), VoipVersionId::V1),
        ];
        for (version, want) in cases {
            let e = parse_event(&ev(
                "m.call.invite",
                json!({"call_id": "c1", "version": version, "lifetime": 60000, "party_id": "P",
                       "offer": {"type": "offer", "sdp": "v=0"}, "unknown_field": {"x": 1},
                       "capabilities": {"m.call.dtmf": false}}),
            ))
            .unwrap();
            assert_eq!(e.age_ms, Some(1200));
            match e.kind {
                EventKind::Call(CallEvent::Invite(i)) => {
                    assert_eq!(i.version, want);
                    assert_eq!(i.lifetime, ruma::UInt::from(60000u32));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn unknown_versions_count_as_1() {
        for version in [json!(1), json!(2.5), json!("2"), json!("1")] {
            let e = parse_event(&ev(
                "m.call.hangup",
                json!({"call_id": "c", "version": version, "party_id": "P", "reason": "user_hangup"}),
            ))
            .unwrap();
            let EventKind::Call(CallEvent::Hangup(h)) = e.kind else {
                panic!("{version}")
            };
            assert_ne!(h.version, VoipVersionId::V0, "{version}");
        }
    }

    #[test]
    fn candidates_from_real_chromium_capture() {
        let json: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/chromium_candidates.json"
        ))
        .unwrap();
        for content in json["events"].as_array().unwrap() {
            let e = parse_event(&ev("m.call.candidates", content.clone())).unwrap();
            let EventKind::Call(CallEvent::Candidates(c)) = e.kind else {
                panic!()
            };
            assert!(!c.candidates.is_empty());
        }
        // The last event ends with the marker, which has no sdpMid/sdpMLineIndex.
        let last = &json["events"][1];
        let e = parse_event(&ev("m.call.candidates", last.clone())).unwrap();
        let EventKind::Call(CallEvent::Candidates(c)) = e.kind else {
            panic!()
        };
        let end = c.candidates.last().unwrap();
        assert!(end.candidate.is_empty() && end.sdp_mid.is_none());
    }

    #[test]
    fn malformed_and_irrelevant() {
        // Missing lifetime and offer.
        let e = parse_event(&ev(
            "m.call.invite",
            json!({"call_id": "c2", "version": "1"}),
        ))
        .unwrap();
        assert!(matches!(e.kind, EventKind::Malformed { call_id: Some(ref c), .. } if c == "c2"));
        assert!(matches!(
            parse_event(&ev("m.room.topic", json!({"topic": "hi"}))),
            Err(EventError::Irrelevant)
        ));
        let e = parse_event(&ev(
            "m.room.message",
            json!({"msgtype": "m.text", "body": "!dtmf 12#"}),
        ))
        .unwrap();
        assert!(matches!(e.kind, EventKind::Message { ref body, .. } if body == "!dtmf 12#"));
        // A body that is not a string is a bad envelope, not a panic.
        assert!(parse_event(&ev("m.room.message", json!({"body": 5}))).is_err());
        assert!(matches!(
            parse_event(&raw(json!([1, 2]))),
            Err(EventError::Envelope(_))
        ));
        assert!(matches!(
            parse_event(&raw(json!({"type": "m.call.hangup"}))),
            Err(EventError::Envelope(_))
        ));
        // Hangup without reason (v0) parses; reason defaults to user_hangup.
        let e = parse_event(&ev("m.call.hangup", json!({"call_id": "c3", "version": 0}))).unwrap();
        assert!(matches!(e.kind, EventKind::Call(CallEvent::Hangup(_))));
    }

    #[test]
    fn membership() {
        let e = parse_event(&raw(json!({"type": "m.room.member", "state_key": "@u:x", "sender": "@u:x", "event_id": "$m", "content": {"membership": "leave"}}))).unwrap();
        assert!(
            matches!(e.kind, EventKind::Member { ref membership, .. } if membership == "leave")
        );
    }

    /// The invite and select_answer the bot sends as a caller read back as the spec's types.
    #[test]
    fn outgoing_invite_and_select_answer() {
        let inv = CallEventOut::Invite {
            call_id: "c".into(),
            party_id: "BOT".into(),
            invitee: "@alice:x.org".into(),
            lifetime_ms: 45000,
            sdp: "v=0".into(),
            stream_ids: vec!["s1".into()],
        };
        assert_eq!(inv.event_type(), "m.call.invite");
        let c = inv.content();
        assert_eq!(c["capabilities"]["m.call.dtmf"], true);
        assert_eq!(c["sdp_stream_metadata"]["s1"]["purpose"], "m.usermedia");
        let back: CallInviteEventContent = serde_json::from_value(c).unwrap();
        assert_eq!(back.invitee.unwrap().as_str(), "@alice:x.org");
        assert_eq!(u64::from(back.lifetime), 45000);
        assert_eq!(back.offer.sdp, "v=0");
        let sel = CallEventOut::SelectAnswer {
            call_id: "c".into(),
            party_id: "BOT".into(),
            selected: "DEV1".into(),
        };
        assert_eq!(sel.event_type(), "m.call.select_answer");
        let back: CallSelectAnswerEventContent = serde_json::from_value(sel.content()).unwrap();
        assert_eq!(back.selected_party_id.as_str(), "DEV1");
    }

    #[test]
    fn outgoing_contents_by_version() {
        let v1 = Voip::V1 {
            party_id: "BOT".into(),
        };
        let meta =
            json!({"s1": {"purpose": "m.usermedia", "audio_muted": false, "video_muted": true}});
        let answer = |voip| CallEventOut::Answer {
            call_id: "c".into(),
            voip,
            sdp: "v=0".into(),
            stream_ids: vec!["s1".into()],
        };
        assert_eq!(answer(Voip::V0).event_type(), "m.call.answer");
        assert_eq!(
            answer(Voip::V0).content(),
            json!({"call_id": "c", "version": 0, "answer": {"type": "answer", "sdp": "v=0"}})
        );
        assert_eq!(
            answer(v1.clone()).content(),
            json!({"call_id": "c", "party_id": "BOT", "version": "1",
                "answer": {"type": "answer", "sdp": "v=0"},
                "capabilities": {"m.call.dtmf": true, "m.call.transferee": false},
                "sdp_stream_metadata": meta})
        );
        let end = CallEventOut::EndOfCandidates {
            call_id: "c".into(),
            party_id: "BOT".into(),
        };
        assert_eq!(end.event_type(), "m.call.candidates");
        assert_eq!(
            end.content(),
            json!({"call_id": "c", "party_id": "BOT", "version": "1", "candidates": [{"candidate": ""}]})
        );
        let neg = CallEventOut::Negotiate {
            call_id: "c".into(),
            party_id: "BOT".into(),
            lifetime_ms: 15000,
            kind: SdpKind::Offer,
            sdp: "v=0".into(),
            stream_ids: vec!["s1".into()],
        };
        assert_eq!(neg.event_type(), "m.call.negotiate");
        assert_eq!(
            neg.content(),
            json!({"call_id": "c", "party_id": "BOT", "version": "1", "lifetime": 15000,
                "description": {"type": "offer", "sdp": "v=0"}, "sdp_stream_metadata": meta})
        );
        let hangup = |voip| CallEventOut::Hangup {
            call_id: "c".into(),
            voip,
            reason: "user_busy".into(),
        };
        assert_eq!(
            hangup(Voip::V0).content(),
            json!({"call_id": "c", "version": 0, "reason": "user_busy"})
        );
        let v1_ending =
            json!({"call_id": "c", "party_id": "BOT", "version": "1", "reason": "user_busy"});
        assert_eq!(hangup(v1).content(), v1_ending);
        let reject = CallEventOut::Reject {
            call_id: "c".into(),
            party_id: "BOT".into(),
            reason: "user_busy".into(),
        };
        assert_eq!(
            (reject.event_type(), reject.content()),
            ("m.call.reject", v1_ending)
        );
    }
}
