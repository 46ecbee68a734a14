//! Answered calls saved in `state_dir/calls.json`, so that a restarted bridge can take them
//! back when FreeSWITCH re-offers them (`verto.attach`).

use serde::{Deserialize, Serialize};

use super::machine::{Call, Direction, Version};
use crate::sdp::TrickleCandidate;
use crate::state::SavedMap;

/// What is needed to resume one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The Matrix room.
    pub room_id: String,
    /// Matrix `call_id`.
    pub call_id: String,
    /// The caller's user id.
    pub caller: String,
    /// The caller's `party_id`.
    pub caller_party: Option<String>,
    /// Our `party_id`.
    pub our_party: String,
    /// The caller's VoIP version (0 or 1).
    pub version: u8,
    /// The caller's original offer (for `a=mid` repair).
    pub offer: String,
    /// The caller's original candidates.
    pub trickled: Vec<TrickleCandidate>,
    /// Inbound calls: the Matrix user rung (then `caller` is that user too). Absent in files
    /// of earlier versions, which only had outbound calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_user: Option<String>,
    /// Inbound calls: the answering device's SDP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_answer: Option<String>,
}

impl Record {
    /// From a live call.
    pub fn of(room_id: &str, caller: &str, call: &Call) -> Self {
        let (setup, trickled) = (call.setup(), call.trickled());
        let inbound_user = match &setup.direction {
            Direction::Inbound { user, .. } => Some(user.clone()),
            Direction::Outbound => None,
        };
        Self {
            room_id: room_id.to_owned(),
            call_id: setup.call_id.clone(),
            caller: caller.to_owned(),
            caller_party: setup.caller_party.clone(),
            our_party: setup.our_party.clone(),
            version: match setup.version {
                Version::V0 => 0,
                Version::V1 => 1,
            },
            offer: setup.offer.clone(),
            trickled: trickled.to_vec(),
            inbound_user,
            peer_answer: call.peer_answer().map(str::to_owned),
        }
    }
}

/// The file, keyed by verto `callID`.
pub type CallStore = SavedMap<Record>;

/// Its file name in `state_dir`.
pub const FILE: &str = "calls.json";
