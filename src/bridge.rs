//! Wiring: routes Matrix sync batches and verto events to the call actors.
//!
//! The bridge owns the registry of live calls (Matrix `(room_id, call_id)` → inbox, verto
//! `callID` → key) and decides which invites start a call. It never touches a call's state:
//! it only forwards inputs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ruma::VoipVersionId;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::call::actor::{self, Ctx};
use crate::call::machine::{Call, Input, Setup, Version};
use crate::config::CallsConfig;
use crate::matrix::events::{CallEvent, EventKind, TimelineEvent};
use crate::matrix::sync::Batch;
use crate::matrix::MatrixClient;
use crate::sdp::TrickleCandidate;
use crate::verto::{VertoEvent, VertoHandle};

type Key = (String, String);

struct Entry {
    tx: mpsc::Sender<Input>,
    caller: String,
    verto_call_id: String,
}

/// Candidates that arrived before their invite.
struct Early {
    sender: String,
    inputs: Vec<Input>,
}

/// Caps on the stash of early candidates, so a flood of orphan events cannot grow memory.
const MAX_EARLY_CALLS: usize = 64;
const MAX_EARLY_EVENTS: usize = 16;

/// The router.
pub struct Bridge {
    calls_cfg: CallsConfig,
    matrix: MatrixClient,
    verto: VertoHandle,
    bot_user: String,
    our_party: String,
    calls: HashMap<Key, Entry>,
    by_verto: HashMap<String, Key>,
    early: HashMap<Key, Early>,
    tracker: TaskTracker,
    done_tx: mpsc::UnboundedSender<Key>,
    done_rx: mpsc::UnboundedReceiver<Key>,
}

impl Bridge {
    /// A bridge for one Matrix account and one verto connection.
    pub fn new(
        calls_cfg: CallsConfig,
        matrix: MatrixClient,
        verto: VertoHandle,
        bot_user: String,
        our_party: String,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            calls_cfg,
            matrix,
            verto,
            bot_user,
            our_party,
            calls: HashMap::new(),
            by_verto: HashMap::new(),
            early: HashMap::new(),
            tracker: TaskTracker::new(),
            done_tx,
            done_rx,
        }
    }

    /// Routes until `cancel`, then lets every call end on both sides (bounded by `grace`).
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<Batch>,
        mut verto_events: mpsc::Receiver<VertoEvent>,
        cancel: CancellationToken,
        grace: Duration,
    ) {
        let calls_cancel = CancellationToken::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(b) = batches.recv() => self.on_batch(b, &calls_cancel),
                Some(ev) = verto_events.recv() => self.on_verto(ev),
                Some(key) = self.done_rx.recv() => self.forget(&key),
            }
        }
        info!(
            calls = self.calls.len(),
            "shutting down: hanging up every call"
        );
        calls_cancel.cancel();
        self.tracker.close();
        // Keep answering verto requests while calls send their byes.
        let tracker = self.tracker.clone();
        let wait = tracker.wait();
        tokio::pin!(wait);
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                _ = &mut deadline => {
                    warn!("some calls did not finish in time");
                    break;
                }
                Some(ev) = verto_events.recv() => self.on_verto(ev),
                Some(key) = self.done_rx.recv() => self.forget(&key),
            }
        }
    }

    fn forget(&mut self, key: &Key) {
        if let Some(e) = self.calls.remove(key) {
            self.by_verto.remove(&e.verto_call_id);
        }
    }

    fn on_batch(&mut self, batch: Batch, cancel: &CancellationToken) {
        for (room_id, events) in batch.rooms {
            // Calls answered, hung up or rejected within this batch must not ring (spec, A.4).
            let settled: HashSet<String> = events
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::Call(
                        c @ (CallEvent::Answer(_) | CallEvent::Hangup(_) | CallEvent::Reject(_)),
                    ) => Some(c.call_id().to_owned()),
                    _ => None,
                })
                .collect();
            for ev in events {
                if ev.sender == self.bot_user {
                    continue;
                }
                self.on_event(&room_id, ev, &settled, batch.received, cancel);
            }
        }
    }

    fn on_event(
        &mut self,
        room_id: &str,
        ev: TimelineEvent,
        settled: &HashSet<String>,
        received: Instant,
        cancel: &CancellationToken,
    ) {
        let call = match ev.kind {
            EventKind::Call(c) => c,
            EventKind::Member {
                user_id,
                membership,
            } => {
                if membership != "join" && membership != "invite" {
                    let keys: Vec<Key> = self
                        .calls
                        .iter()
                        .filter(|((r, _), e)| r == room_id && e.caller == user_id)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in keys {
                        info!(room_id, call_id = %k.1, "caller left the room: hanging up");
                        self.deliver(&k, Input::Hangup { reason: None });
                    }
                }
                return;
            }
            EventKind::Malformed {
                event_type,
                call_id,
                error,
            } => {
                warn!(room_id, event_id = %ev.event_id, %event_type, %error, "malformed call event");
                if event_type == "m.call.invite" {
                    if let Some(call_id) = call_id {
                        self.reject_malformed(room_id, &call_id);
                    }
                }
                return;
            }
        };
        let key: Key = (room_id.to_owned(), call.call_id().to_owned());
        match call {
            CallEvent::Invite(inv) => {
                self.on_invite(key, &ev.sender, *inv, ev.age_ms, settled, received, cancel)
            }
            CallEvent::Candidates(c) => {
                let input = Input::Candidates {
                    party_id: c.party_id.map(|p| p.to_string()),
                    candidates: c
                        .candidates
                        .into_iter()
                        .map(|c| TrickleCandidate {
                            candidate: c.candidate,
                            sdp_mid: c.sdp_mid,
                            sdp_m_line_index: c.sdp_m_line_index.map(u64::from),
                        })
                        .collect(),
                };
                if self.calls.contains_key(&key) {
                    self.deliver_from(&key, &ev.sender, input);
                } else if let Some(e) = self.early.get_mut(&key) {
                    if e.sender == ev.sender && e.inputs.len() < MAX_EARLY_EVENTS {
                        e.inputs.push(input);
                    }
                } else if self.early.len() < MAX_EARLY_CALLS {
                    debug!(room_id, call_id = %key.1, "candidates before their invite: kept");
                    self.early.insert(
                        key,
                        Early {
                            sender: ev.sender,
                            inputs: vec![input],
                        },
                    );
                } else {
                    debug!(room_id, "too many orphan candidate events; dropped");
                }
            }
            CallEvent::Hangup(h) => {
                self.early.remove(&key);
                self.deliver_from(
                    &key,
                    &ev.sender,
                    Input::Hangup {
                        reason: Some(h.reason.as_str().to_owned()),
                    },
                )
            }
            CallEvent::Reject(_) => {
                self.deliver_from(&key, &ev.sender, Input::Hangup { reason: None })
            }
            CallEvent::SelectAnswer(s) => self.deliver_from(
                &key,
                &ev.sender,
                Input::SelectAnswer {
                    party_id: s.selected_party_id.to_string(),
                },
            ),
            CallEvent::Answer(_) => {
                debug!(room_id, call_id = %key.1, "answer from another party ignored")
            }
            CallEvent::Negotiate(_) => {
                warn!(room_id, call_id = %key.1, "m.call.negotiate is not supported yet; ignored")
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_invite(
        &mut self,
        key: Key,
        sender: &str,
        inv: ruma::events::call::invite::CallInviteEventContent,
        age_ms: Option<u64>,
        settled: &HashSet<String>,
        received: Instant,
        cancel: &CancellationToken,
    ) {
        let (room_id, call_id) = (&key.0, &key.1);
        if let Some(invitee) = &inv.invitee {
            if invitee.as_str() != self.bot_user {
                debug!(room_id, call_id, %invitee, "invite for someone else ignored");
                return;
            }
        }
        if settled.contains(call_id) {
            info!(
                room_id,
                call_id, "invite ignored: answered or hung up in the same sync batch"
            );
            self.early.remove(&key);
            return;
        }
        let lifetime = Duration::from_millis(u64::from(inv.lifetime));
        let age = Duration::from_millis(age_ms.unwrap_or(0)) + received.elapsed();
        if age >= lifetime {
            info!(room_id, call_id, ?age, ?lifetime, "invite ignored: expired");
            self.early.remove(&key);
            return;
        }
        if self.calls.contains_key(&key) {
            debug!(room_id, call_id, "duplicate invite ignored");
            return;
        }
        let version = match inv.version {
            VoipVersionId::V0 => Version::V0,
            _ => Version::V1,
        };
        let now = Instant::now();
        let setup = Setup {
            call_id: call_id.clone(),
            caller_party: inv.party_id.as_ref().map(|p| p.to_string()),
            version,
            offer: inv.offer.sdp,
            our_party: self.our_party.clone(),
            expires_at: now + (lifetime - age),
            candidate_deadline: now + Duration::from_millis(self.calls_cfg.candidate_wait_ms),
            max_candidates: self.calls_cfg.max_candidates,
            max_sdp_bytes: self.calls_cfg.max_sdp_bytes,
        };
        let verto_call_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel(64);
        if let Some(early) = self.early.remove(&key) {
            if early.sender == sender {
                for i in early.inputs {
                    let _ = tx.try_send(i);
                }
            }
        }
        let ctx = Ctx {
            matrix: self.matrix.clone(),
            verto: self.verto.clone(),
            room_id: room_id.clone(),
            call_id: call_id.clone(),
            caller: sender.to_owned(),
            bot_user: self.bot_user.clone(),
            verto_call_id: verto_call_id.clone(),
            destination: self.calls_cfg.destination.clone(),
        };
        self.calls.insert(
            key.clone(),
            Entry {
                tx: tx.clone(),
                caller: sender.to_owned(),
                verto_call_id: verto_call_id.clone(),
            },
        );
        self.by_verto.insert(verto_call_id, key.clone());
        let done = self.done_tx.clone();
        let cancel = cancel.child_token();
        self.tracker.spawn(async move {
            actor::run(Call::new(setup), ctx, rx, tx, cancel).await;
            let _ = done.send(key);
        });
    }

    fn deliver_from(&mut self, key: &Key, sender: &str, input: Input) {
        match self.calls.get(key) {
            Some(e) if e.caller == sender => self.deliver(key, input),
            Some(_) => {
                warn!(room_id = %key.0, call_id = %key.1, %sender, "call event from someone other than the caller ignored")
            }
            None => {
                debug!(room_id = %key.0, call_id = %key.1, "event for an unknown or finished call ignored")
            }
        }
    }

    fn deliver(&self, key: &Key, input: Input) {
        if let Some(e) = self.calls.get(key) {
            if let Err(e) = e.tx.try_send(input) {
                warn!(room_id = %key.0, call_id = %key.1, error = %e, "call inbox full or closed; input dropped");
            }
        }
    }

    fn on_verto(&mut self, ev: VertoEvent) {
        let (call_id, input) = match ev {
            VertoEvent::Connected { .. } => return,
            VertoEvent::Disconnected => {
                for key in self.calls.keys() {
                    self.deliver(key, Input::VertoDown);
                }
                return;
            }
            VertoEvent::Punted => return,
            VertoEvent::Media { call_id, sdp } => (call_id, Input::Media { sdp }),
            VertoEvent::Answer { call_id, sdp } => (call_id, Input::Answer { sdp }),
            VertoEvent::Bye {
                call_id,
                cause_code,
                cause,
            } => (call_id, Input::Bye { cause_code, cause }),
            VertoEvent::Attach { call_id, .. } => {
                if !self.by_verto.contains_key(&call_id) {
                    // A call FreeSWITCH kept for us that we no longer know: end it.
                    info!(verto_call_id = %call_id, "verto.attach for an unknown call: hanging it up");
                    let verto = self.verto.clone();
                    tokio::spawn(async move {
                        let _ = verto.bye(&call_id, "NORMAL_CLEARING").await;
                    });
                    return;
                }
                (call_id, Input::Attach)
            }
            VertoEvent::Other { method, call_id } => {
                debug!(%method, ?call_id, "verto request not used by the bridge");
                return;
            }
        };
        match self.by_verto.get(&call_id) {
            Some(key) => self.deliver(key, input),
            None => {
                debug!(verto_call_id = %call_id, "verto event for an unknown or finished call ignored")
            }
        }
    }

    fn reject_malformed(&self, room_id: &str, call_id: &str) {
        let matrix = self.matrix.clone();
        let room = room_id.to_owned();
        let content = json!({"call_id": call_id, "party_id": self.our_party, "version": "1", "reason": "unknown_error"});
        tokio::spawn(async move {
            let _ = matrix
                .send_reliably(&room, "m.call.reject", &content, Duration::from_secs(30))
                .await;
        });
    }
}
