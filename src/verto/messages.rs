//! Typed verto requests the bridge sends, and the FreeSWITCH events it reads.
//!
//! Each request serializes to exactly the `params` object of its JSON-RPC frame, without
//! `sessid`: the connection actor adds that one, because only it knows the session. Field names
//! are verto.js's (camelCase and snake_case mixed, as mod_verto reads them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Cause;

/// A verto request: its JSON-RPC method and, through `Serialize`, its `params`.
pub trait Request: Serialize {
    /// The JSON-RPC method, e.g. `verto.invite`.
    const METHOD: &'static str;
}

/// `dialogParams` of every request about an existing call: mod_verto finds the call by
/// `callID` and ignores the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dialog {
    /// The verto `callID`.
    #[serde(rename = "callID")]
    pub call_id: String,
}

impl Dialog {
    /// The dialog of the call `call_id`.
    pub fn new(call_id: &str) -> Self {
        Self {
            call_id: call_id.to_owned(),
        }
    }
}

/// `verto.invite`: a new call. Ok means FreeSWITCH created the channel (`CALL CREATED`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invite {
    /// The complete offer (mod_verto has no trickle ICE).
    pub sdp: String,
    /// Who calls whom.
    #[serde(rename = "dialogParams")]
    pub dialog: InviteDialog,
}

impl Request for Invite {
    const METHOD: &'static str = "verto.invite";
}

/// `dialogParams` of `verto.invite`, with the media flags verto.js sends for an audio call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InviteDialog {
    /// A fresh `callID`.
    #[serde(rename = "callID")]
    pub call_id: String,
    /// What the dialplan routes on.
    pub destination_number: String,
    /// Caller id shown to the far end.
    pub caller_id_name: String,
    /// Caller id number shown to the far end.
    pub caller_id_number: String,
    /// verto.js's label for the called side.
    pub remote_caller_id_name: String,
    /// The called number, again.
    pub remote_caller_id_number: String,
    /// Audio only.
    #[serde(rename = "useVideo")]
    pub use_video: bool,
    /// Mono.
    #[serde(rename = "useStereo")]
    pub use_stereo: bool,
    /// No screen share.
    #[serde(rename = "screenShare")]
    pub screen_share: bool,
    /// We send audio.
    #[serde(rename = "useMic")]
    pub use_mic: bool,
    /// We receive audio.
    #[serde(rename = "useSpeak")]
    pub use_speak: bool,
    /// Exposed by FreeSWITCH as `verto_dvar_*` channel variables to the dialplan and CDRs.
    #[serde(rename = "userVariables")]
    pub user_variables: BTreeMap<String, String>,
}

impl InviteDialog {
    /// An audio call to `destination` with verto.js's defaults for the rest.
    pub fn audio(
        call_id: &str,
        destination: &str,
        caller_id_name: &str,
        caller_id_number: &str,
        user_variables: BTreeMap<String, String>,
    ) -> Self {
        Self {
            call_id: call_id.to_owned(),
            destination_number: destination.to_owned(),
            caller_id_name: caller_id_name.to_owned(),
            caller_id_number: caller_id_number.to_owned(),
            remote_caller_id_name: "Outbound Call".to_owned(),
            remote_caller_id_number: destination.to_owned(),
            use_video: false,
            use_stereo: false,
            screen_share: false,
            use_mic: true,
            use_speak: true,
            user_variables,
        }
    }
}

/// `verto.bye`: hang a call up with a cause FreeSWITCH logs and passes to the far end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bye {
    /// The call.
    #[serde(rename = "dialogParams")]
    pub dialog: Dialog,
    /// Sent by its FreeSWITCH name.
    #[serde(serialize_with = "cause_name")]
    pub cause: Cause,
}

impl Request for Bye {
    const METHOD: &'static str = "verto.bye";
}

fn cause_name<S: serde::Serializer>(cause: &Cause, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(cause.name())
}

/// `verto.info {dtmf}`: digits FreeSWITCH plays into the call as RFC 2833 events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Info {
    /// The call.
    #[serde(rename = "dialogParams")]
    pub dialog: Dialog,
    /// The digits.
    pub dtmf: String,
}

impl Request for Info {
    const METHOD: &'static str = "verto.info";
}

/// `verto.modify`: renegotiate media, or FreeSWITCH's own hold and resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Modify {
    /// What to change (flattened: `action`, and `sdp` for `updateMedia`).
    #[serde(flatten)]
    pub action: ModifyAction,
    /// The call.
    #[serde(rename = "dialogParams")]
    pub dialog: Dialog,
}

impl Request for Modify {
    const METHOD: &'static str = "verto.modify";
}

/// The `action` of `verto.modify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum ModifyAction {
    /// A new offer; FreeSWITCH replies with its answer in `sdp`.
    UpdateMedia {
        /// The offer, with candidates.
        sdp: String,
    },
    /// FreeSWITCH stops sending and plays hold music to the other leg.
    Hold,
    /// Ends the hold.
    Unhold,
}

/// `verto.attach`: our answer to FreeSWITCH's re-offer of a call after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attach {
    /// The complete answer.
    pub sdp: String,
    /// The call.
    #[serde(rename = "dialogParams")]
    pub dialog: Dialog,
}

impl Request for Attach {
    const METHOD: &'static str = "verto.attach";
}

/// `verto.answer` from our side: we answer a call FreeSWITCH offered us (`verto.invite`).
/// Ok means FreeSWITCH took the answer and connects the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnswerCall {
    /// Our complete answer (mod_verto has no trickle ICE).
    pub sdp: String,
    /// The call.
    #[serde(rename = "dialogParams")]
    pub dialog: Dialog,
}

impl Request for AnswerCall {
    const METHOD: &'static str = "verto.answer";
}

/// A server `verto.invite`: FreeSWITCH offers us a call (a bridge or originate to our
/// verto user). Fields are read leniently: a missing caller id is empty, never an error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IncomingCall {
    /// The verto `callID` (FreeSWITCH's channel UUID).
    #[serde(rename = "callID")]
    pub call_id: String,
    /// FreeSWITCH's complete offer; empty when the invite has none (the call layer refuses
    /// it, so that FreeSWITCH does not ring on).
    #[serde(default)]
    pub sdp: String,
    /// Who calls.
    #[serde(default)]
    pub caller_id_name: String,
    /// Who calls (number).
    #[serde(default)]
    pub caller_id_number: String,
    /// Who is called, as FreeSWITCH names our leg.
    #[serde(default)]
    pub callee_id_name: String,
    /// Who is called (number).
    #[serde(default)]
    pub callee_id_number: String,
    /// Event headers and every `verto_svar_*` channel variable, by name; values that are not
    /// strings are left out.
    #[serde(default, deserialize_with = "string_map")]
    pub variables: BTreeMap<String, String>,
}

impl IncomingCall {
    /// Reads the `params` of a server `verto.invite`.
    pub fn from_params(p: &Value) -> Option<Self> {
        serde_json::from_value(p.clone()).ok()
    }
}

fn string_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let v = Option::<BTreeMap<String, Value>>::deserialize(d)?.unwrap_or_default();
    Ok(v.into_iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
        .collect())
}

/// `verto.subscribe` to one event channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscribe {
    /// e.g. `FSevent.dtmf`.
    #[serde(rename = "eventChannel")]
    pub event_channel: String,
}

impl Request for Subscribe {
    const METHOD: &'static str = "verto.subscribe";
}

impl Subscribe {
    /// Whether the reply grants this channel: newly, or already from an earlier login.
    /// FreeSWITCH answers a refusal with a result too (`unauthorizedChannels`).
    pub fn granted(&self, reply: &Value) -> bool {
        ["subscribedChannels", "alreadySubscribedChannels"]
            .iter()
            .any(|k| {
                reply[*k]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|c| c == self.event_channel.as_str()))
            })
    }
}

/// The event channel of FreeSWITCH's DTMF events.
pub const DTMF_CHANNEL: &str = "FSevent.dtmf";

/// A digit from FreeSWITCH's `FSevent.dtmf`: the event's headers that say which leg saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsDtmf {
    /// `Unique-ID`: the channel that received the digit.
    pub unique_id: String,
    /// `Other-Leg-Unique-ID`: the channel bridged to it, if any.
    pub other_leg_unique_id: String,
    /// `DTMF-Digit`.
    pub digit: String,
}

impl FsDtmf {
    /// Reads the headers from the event's `data`; a missing or non-string header is empty,
    /// so one odd event cannot fail the others.
    pub fn from_data(data: &Value) -> Self {
        let field = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or_default();
        Self {
            unique_id: field("Unique-ID").to_owned(),
            other_leg_unique_id: field("Other-Leg-Unique-ID").to_owned(),
            digit: field("DTMF-Digit").to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The `params` of a sent frame as captured, without the `sessid` the actor adds.
    fn captured(line: &str) -> Value {
        let rec: Value = serde_json::from_str(line).unwrap();
        let mut p = rec["msg"]["params"].clone();
        p.as_object_mut().unwrap().remove("sessid");
        p
    }

    fn params<R: Request>(r: &R) -> Value {
        serde_json::to_value(r).unwrap()
    }

    #[test]
    fn invite_as_in_the_echo_capture_plus_user_variables() {
        let line = include_str!("../../tests/fixtures/verto/invite_echo_9196.jsonl")
            .lines()
            .find(|l| l.contains(r#""method": "verto.invite""#))
            .unwrap();
        let mut want = captured(line);
        // verto.js sends its login in the dialog; mod_verto does not need it, and vertobot
        // sends the Matrix call's identity instead.
        want["dialogParams"]
            .as_object_mut()
            .unwrap()
            .remove("login");
        want["dialogParams"]["userVariables"] = json!({"matrix_room_id": "!r:x"});
        let vars = BTreeMap::from([("matrix_room_id".to_owned(), "!r:x".to_owned())]);
        let d = &want["dialogParams"];
        let invite = Invite {
            sdp: want["sdp"].as_str().unwrap().to_owned(),
            dialog: InviteDialog::audio(
                d["callID"].as_str().unwrap(),
                "9196",
                "verto smoke",
                "1000",
                vars,
            ),
        };
        assert_eq!(params(&invite), want);
        assert_eq!(Invite::METHOD, "verto.invite");
    }

    #[test]
    fn bye_carries_the_cause_name() {
        // From invite_echo_9196.jsonl (verto.js sends no cause; we always do).
        let line = r#"{"seq": 16, "t": 5.219, "conn": "c1", "dir": "send", "msg": {"jsonrpc": "2.0", "method": "verto.bye", "params": {"dialogParams": {"callID": "cd0192ad-c808-468b-beaa-6ff2baa355a9"}, "sessid": "696eaeca-b688-46d7-9248-3e87bb7b2e2a"}, "id": 3}}"#;
        let mut want = captured(line);
        want["cause"] = json!("NORMAL_CLEARING");
        let bye = Bye {
            dialog: Dialog::new("cd0192ad-c808-468b-beaa-6ff2baa355a9"),
            cause: Cause::NormalClearing,
        };
        assert_eq!(params(&bye), want);
    }

    #[test]
    fn info_dtmf_as_captured() {
        // dtmf_to_fs_5000.jsonl, seq 14.
        let line = r##"{"seq": 14, "t": 1.672, "conn": "c1", "dir": "send", "msg": {"jsonrpc": "2.0", "method": "verto.info", "params": {"dialogParams": {"callID": "1ce5c97a-5aa5-49ea-975f-e26c147689da"}, "dtmf": "1234#", "sessid": "568f62d3-7610-4ada-9aa2-9598ee7fb8c6"}, "id": 3}}"##;
        let info = Info {
            dialog: Dialog::new("1ce5c97a-5aa5-49ea-975f-e26c147689da"),
            dtmf: "1234#".into(),
        };
        assert_eq!(params(&info), captured(line));
    }

    #[test]
    fn modify_hold_unhold_as_captured_and_update_media() {
        // fs_events_modify_hold.jsonl.
        let hold = r#"{"seq": 23, "dir": "send", "msg": {"jsonrpc": "2.0", "method": "verto.modify", "params": {"action": "hold", "dialogParams": {"callID": "a9ca2888-39d0-46a3-8c46-9916353b203d"}, "sessid": "d5a92bc9-e898-4075-b1b2-0b090debdfc7"}, "id": 4}}"#;
        let unhold = r#"{"seq": 36, "dir": "send", "msg": {"jsonrpc": "2.0", "method": "verto.modify", "params": {"action": "unhold", "dialogParams": {"callID": "a9ca2888-39d0-46a3-8c46-9916353b203d"}, "sessid": "d5a92bc9-e898-4075-b1b2-0b090debdfc7"}, "id": 6}}"#;
        let dialog = Dialog::new("a9ca2888-39d0-46a3-8c46-9916353b203d");
        let m = |action| Modify {
            action,
            dialog: dialog.clone(),
        };
        assert_eq!(params(&m(ModifyAction::Hold)), captured(hold));
        assert_eq!(params(&m(ModifyAction::Unhold)), captured(unhold));
        assert_eq!(
            params(&m(ModifyAction::UpdateMedia { sdp: "v=0".into() })),
            json!({"action": "updateMedia", "sdp": "v=0",
                   "dialogParams": {"callID": "a9ca2888-39d0-46a3-8c46-9916353b203d"}})
        );
    }

    #[test]
    fn attach_as_in_the_reconnect_capture() {
        // reconnect_attach.jsonl, seq 27 (the SDP shortened).
        let line = r#"{"seq": 27, "dir": "send", "msg": {"jsonrpc": "2.0", "method": "verto.attach", "params": {"sdp": "v=0\r\no=- 4004750075 4004750075 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=setup:active\r\n", "dialogParams": {"callID": "cda1015a-4083-4ce7-a3c0-93f554056581"}, "sessid": "2559be1b-75e6-40f3-a0b3-0253bbbe1df2"}, "id": 2}}"#;
        let want = captured(line);
        let attach = Attach {
            sdp: want["sdp"].as_str().unwrap().to_owned(),
            dialog: Dialog::new("cda1015a-4083-4ce7-a3c0-93f554056581"),
        };
        assert_eq!(params(&attach), want);
    }

    #[test]
    fn subscribe_and_its_replies_as_captured() {
        // fs_events_subscribe.jsonl, seq 12, 15 and 17.
        let line = r#"{"seq": 12, "dir": "send", "msg": {"jsonrpc": "2.0", "method": "verto.subscribe", "params": {"eventChannel": "FSevent.dtmf", "sessid": "bff221b9-e303-4b76-84d3-1fca69c9298e"}, "id": 2}}"#;
        let sub = Subscribe {
            event_channel: DTMF_CHANNEL.into(),
        };
        assert_eq!(params(&sub), captured(line));
        let other = json!({"subscribedChannels": ["FSevent.channel_answer"]});
        let granted = json!({"subscribedChannels": ["FSevent.dtmf", "demo"],
            "unauthorizedChannels": ["nosuchchannel"],
            "alreadySubscribedChannels": ["FSevent.channel_answer"]});
        let again = json!({"alreadySubscribedChannels": ["FSevent.dtmf"]});
        let refused = json!({"unauthorizedChannels": ["FSevent.dtmf"]});
        assert!(!sub.granted(&other));
        assert!(sub.granted(&granted));
        assert!(sub.granted(&again));
        assert!(!sub.granted(&refused));
    }

    #[test]
    fn incoming_invite_and_our_answer_as_captured() {
        let lines = include_str!("../../tests/fixtures/verto/incoming_call_1001.jsonl");
        let find = |dir: &str, method: &str| -> Value {
            lines
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .find(|r| r["conn"] == "u1001" && r["dir"] == dir && r["msg"]["method"] == method)
                .unwrap()
        };
        let invite = find("recv", "verto.invite");
        let inc = IncomingCall::from_params(&invite["msg"]["params"]).unwrap();
        assert_eq!(inc.call_id, "ef3fb379-d858-4f78-8eb3-cef3eaf2e97a");
        assert_eq!(inc.caller_id_name, "Harness 1000");
        assert_eq!(inc.caller_id_number, "1000");
        assert!(inc.sdp.starts_with("v=0\r\n"));
        assert_eq!(inc.variables["Event-Name"], "CHANNEL_DATA");
        let answer = find("send", "verto.answer");
        let mut want = answer["msg"]["params"].clone();
        want.as_object_mut().unwrap().remove("sessid");
        let ours = AnswerCall {
            sdp: want["sdp"].as_str().unwrap().to_owned(),
            dialog: Dialog::new(&inc.call_id),
        };
        assert_eq!(params(&ours), want);
        assert_eq!(AnswerCall::METHOD, "verto.answer");
        let odd = json!({"callID": "c", "sdp": "v=0", "variables": {"n": 1, "verto_svar_matrix_user": "@a:b"}});
        let inc = IncomingCall::from_params(&odd).unwrap();
        assert_eq!(inc.variables.len(), 1);
        assert_eq!(inc.caller_id_number, "");
        let bare = IncomingCall::from_params(&json!({"callID": "c"})).unwrap();
        assert!(bare.sdp.is_empty());
        assert!(IncomingCall::from_params(&json!({"sdp": "v=0"})).is_none());
    }

    #[test]
    fn dtmf_event_headers() {
        // fs_events_dtmf_bridged.jsonl, seq 39 (headers shortened to the ones read).
        let data = json!({"Event-Name": "DTMF",
            "Unique-ID": "c1c83e3c-9509-403b-8637-a8f8bde2fb44",
            "Other-Leg-Unique-ID": "8f1cff10-de47-4da5-83d8-8f69106245d3",
            "DTMF-Digit": "1", "DTMF-Duration": "2000", "DTMF-Source": "APP"});
        assert_eq!(
            FsDtmf::from_data(&data),
            FsDtmf {
                unique_id: "c1c83e3c-9509-403b-8637-a8f8bde2fb44".into(),
                other_leg_unique_id: "8f1cff10-de47-4da5-83d8-8f69106245d3".into(),
                digit: "1".into(),
            }
        );
        let odd = FsDtmf::from_data(&json!({"DTMF-Digit": 5}));
        assert_eq!((odd.unique_id.as_str(), odd.digit.as_str()), ("", ""));
    }
}
