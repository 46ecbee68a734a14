//! Wiring: routes Matrix sync batches and verto events to the call actors.
//!
//! The bridge owns the registry of live calls (Matrix `(room_id, call_id)` → inbox, verto
//! `callID` → key) and decides which invites start a call. It never touches a call's state:
//! it only forwards inputs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ruma::VoipVersionId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::call::actor::{self, Ctx, Origin, Stamped};
use crate::call::command::{self, Command};
use crate::call::inbound::{self, Offered};
use crate::call::machine::{self, Call, Direction, Input, Recovery, Setup, Version};
use crate::call::room::{self, RoomStore};
use crate::call::route::{self, Caller, Router};
use crate::call::store::{CallStore, Record};
use crate::chain::Chain;
use crate::config::{CallsConfig, Config, DtmfConfig, InboundConfig, OnShutdown};
use crate::matrix::events::{CallEvent, EventKind, TimelineEvent};
use crate::matrix::sync::Batch;
use crate::matrix::MatrixClient;
use crate::sdp::TrickleCandidate;
use crate::state::{SavedMap, StateStore};
use crate::verto::messages::{FsDtmf, IncomingCall, Subscribe, DTMF_CHANNEL};
use crate::verto::{Cause, Received, VertoError, VertoEvent, VertoHandle};

type Key = (String, String);

struct Entry {
    tx: mpsc::Sender<Stamped>,
    /// The Matrix user of the call: the caller, or for an inbound call the user rung.
    caller: String,
    verto_call_id: String,
    /// FreeSWITCH called the Matrix user: the user's answer and reject are the call's.
    inbound: bool,
}

/// How long the stop waits for the saved calls to reach the disk.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);

/// Candidates that arrived before their invite.
struct Early {
    sender: String,
    inputs: Vec<Stamped>,
    /// When the first came: an invite follows within moments or never (late candidates of a
    /// call that has ended, an invite that was ignored), so old entries make room for new.
    at: Instant,
}

/// How long candidates wait for their invite before they count as orphans.
const EARLY_TTL: Duration = Duration::from_secs(60);

/// Caps on the stash of early candidates, so a flood of orphan events cannot grow memory.
const MAX_EARLY_CALLS: usize = 64;
const MAX_EARLY_EVENTS: usize = 16;

/// Per-room `!dial` choices, kept in `state_dir/dial.json`.
pub type DialStore = SavedMap<String>;

/// An input of the bridge that ended on its own (its task returned or panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The Matrix `/sync` loop: no more calls would arrive.
    Sync,
    /// The verto connection: no call could reach FreeSWITCH.
    Verto,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lost::Sync => "the Matrix sync loop",
            Lost::Verto => "the verto connection",
        })
    }
}

/// The router.
pub struct Bridge {
    calls_cfg: CallsConfig,
    dtmf_cfg: DtmfConfig,
    inbound_cfg: InboundConfig,
    rooms: Arc<Mutex<RoomStore>>,
    placed_tx: mpsc::UnboundedSender<(String, String)>,
    placed_rx: mpsc::UnboundedReceiver<(String, String)>,
    dial_pattern: Option<regex::Regex>,
    access: Vec<String>,
    own_server: String,
    router: Arc<Router>,
    dial: Arc<Mutex<DialStore>>,
    saved_calls: Arc<CallStore>,
    calls_cancel: CancellationToken,
    subscribe_warned: Arc<AtomicBool>,
    matrix: MatrixClient,
    verto: VertoHandle,
    bot_user: String,
    our_party: String,
    calls: HashMap<Key, Entry>,
    by_verto: HashMap<String, Key>,
    early: HashMap<Key, Early>,
    tracker: TaskTracker,
    /// A call's task ended: its verto `callID` (an inbound call's key changes once placed).
    done_tx: mpsc::UnboundedSender<String>,
    done_rx: mpsc::UnboundedReceiver<String>,
}

impl Bridge {
    /// A bridge for one Matrix account and one verto connection.
    pub fn new(
        cfg: &Config,
        store: StateStore,
        matrix: MatrixClient,
        verto: VertoHandle,
        bot_user: String,
        our_party: String,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (placed_tx, placed_rx) = mpsc::unbounded_channel();
        let own_server = crate::matrix::server_name(&bot_user).to_owned();
        Self {
            calls_cfg: cfg.calls.clone(),
            dtmf_cfg: cfg.dtmf.clone(),
            inbound_cfg: cfg.inbound.clone(),
            rooms: Arc::new(Mutex::new(RoomStore::load(store.clone(), room::FILE))),
            placed_tx,
            placed_rx,
            // Validated by Config::validate; an invalid one just turns !dial off.
            dial_pattern: cfg
                .dial
                .pattern
                .as_deref()
                .and_then(|p| regex::Regex::new(&format!("^(?:{p})$")).ok()),
            access: cfg.access.allow.clone(),
            own_server,
            router: Arc::new(Router::new(
                cfg.calls.clone(),
                cfg.routes.clone(),
                matrix.clone(),
            )),
            dial: Arc::new(Mutex::new(DialStore::load(store.clone(), "dial.json"))),
            saved_calls: Arc::new(CallStore::load(&store)),
            calls_cancel: CancellationToken::new(),
            subscribe_warned: Arc::new(AtomicBool::new(false)),
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
    /// Returns which input ended on its own, if one did: the bridge cannot go on without it.
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<Batch>,
        mut verto_events: mpsc::Receiver<Received>,
        cancel: CancellationToken,
        grace: Duration,
    ) -> Option<Lost> {
        self.recover();
        let mut lost = None;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some((verto_call_id, room)) = self.placed_rx.recv() => self.on_placed(&verto_call_id, room),
                b = batches.recv() => match b {
                    Some(b) => self.on_batch(b),
                    None => { lost = Some(Lost::Sync); break }
                },
                ev = verto_events.recv() => match ev {
                    Some(ev) => self.on_verto(ev),
                    None => { lost = Some(Lost::Verto); break }
                },
                Some(id) = self.done_rx.recv() => self.forget(&id),
            }
        }
        if let Some(l) = lost {
            error!(task = ?l, "a task the bridge depends on has ended; stopping so that a supervisor can restart vertobot");
        }
        info!(
            calls = self.calls.len(),
            "shutting down: hanging up every call"
        );
        self.calls_cancel.cancel();
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
                Some(id) = self.done_rx.recv() => self.forget(&id),
            }
        }
        // What the calls saved or forgot must be on disk before the next start reads it; a
        // disk that hangs must not hold the stop forever.
        let flushed = tokio::time::timeout(FLUSH_LIMIT, self.saved_calls.flush()).await;
        if flushed.is_err() {
            warn!(
                "saved calls not all written to state_dir in time; the next start may miss changes"
            );
        }
        lost
    }

    fn forget(&mut self, verto_call_id: &str) {
        if let Some(key) = self.by_verto.remove(verto_call_id) {
            self.calls.remove(&key);
        }
    }

    /// An inbound call found its room: from now on the callee's events there reach it.
    fn on_placed(&mut self, verto_call_id: &str, room: String) {
        let Some(old) = self.by_verto.get(verto_call_id).cloned() else {
            return;
        };
        if let Some(e) = self.calls.remove(&old) {
            let key = (room, old.1);
            self.by_verto.insert(verto_call_id.to_owned(), key.clone());
            self.calls.insert(key, e);
        }
    }

    fn on_batch(&mut self, mut batch: Batch) {
        let handled = batch.handled.take();
        for (room_id, events) in std::mem::take(&mut batch.rooms) {
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
                self.on_event(&room_id, ev, &settled, batch.received);
            }
        }
        if let Some(done) = handled {
            let _ = done.send(());
        }
    }

    fn on_event(
        &mut self,
        room_id: &str,
        ev: TimelineEvent,
        settled: &HashSet<String>,
        received: Instant,
    ) {
        match ev.kind {
            EventKind::Call(call) => {
                let key: Key = (room_id.to_owned(), call.call_id().to_owned());
                self.on_call_event(key, ev.sender, call, ev.age_ms, settled, received)
            }
            EventKind::Member {
                user_id,
                membership,
            } => {
                if membership != "join" && membership != "invite" {
                    self.on_caller_left(room_id, &user_id, received);
                }
            }
            EventKind::Message { body, .. } => {
                if let Some(cmd) = command::parse(&body) {
                    let from = (ev.sender.as_str(), ev.event_id.as_str(), received);
                    self.on_command(room_id, from, cmd);
                }
            }
            EventKind::Malformed {
                event_type,
                call_id,
                error,
            } => {
                warn!(room_id, event_id = %ev.event_id, %event_type, %error, "malformed call event");
                if let (true, Some(call_id)) = (event_type == "m.call.invite", call_id) {
                    let why = "the call invite could not be read";
                    let reason = ("unknown_error", Cause::InvalidMsgUnspecified);
                    self.reject(room_id, &call_id, Version::V1, reason, why);
                }
            }
        }
    }

    /// Leaving the room is hanging up, for every call of that caller in it.
    fn on_caller_left(&mut self, room_id: &str, user_id: &str, received: Instant) {
        let keys: Vec<Key> = self
            .calls
            .iter()
            .filter(|((r, _), e)| r == room_id && e.caller == user_id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            info!(room_id, call_id = %k.1, "caller left the room: hanging up");
            self.deliver_at(&k, Input::Hangup { reason: None }, Origin::Matrix(received));
        }
    }

    fn on_call_event(
        &mut self,
        key: Key,
        sender: String,
        call: CallEvent,
        age_ms: Option<u64>,
        settled: &HashSet<String>,
        received: Instant,
    ) {
        let input = match call {
            CallEvent::Invite(inv) => {
                return self.on_invite(key, &sender, *inv, age_ms, settled, received)
            }
            CallEvent::Candidates(c) => return self.on_candidates(key, sender, c, received),
            CallEvent::Hangup(h) if self.is_inbound(&key) => Input::CalleeHangup {
                party_id: h.party_id.map(|p| p.to_string()),
                reason: Some(h.reason.as_str().to_owned()),
            },
            CallEvent::Hangup(h) => {
                self.early.remove(&key);
                Input::Hangup {
                    reason: Some(h.reason.as_str().to_owned()),
                }
            }
            CallEvent::Reject(_) if self.is_inbound(&key) => Input::Reject,
            CallEvent::Reject(_) => Input::Hangup { reason: None },
            CallEvent::SelectAnswer(s) => Input::SelectAnswer {
                party_id: s.selected_party_id.to_string(),
            },
            CallEvent::Answer(a) if self.is_inbound(&key) => Input::CalleeAnswer {
                party_id: a.party_id.map(|p| p.to_string()),
                sdp: a.answer.sdp,
            },
            CallEvent::Answer(_) => {
                debug!(room_id = %key.0, call_id = %key.1, "answer from another party ignored");
                return;
            }
            CallEvent::Negotiate(n) => Input::Negotiate {
                party_id: Some(n.party_id.to_string()),
                kind: n.description.session_type.clone(),
                sdp: n.description.sdp.clone(),
            },
        };
        self.deliver_from(&key, &sender, input, received)
    }

    /// Candidates go to their call, or wait for an invite that has not come yet (clients race
    /// the two events), within limits.
    fn on_candidates(
        &mut self,
        key: Key,
        sender: String,
        c: ruma::events::call::candidates::CallCandidatesEventContent,
        received: Instant,
    ) {
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
        let input = Stamped {
            input: Box::new(input),
            origin: Some(Origin::Matrix(received)),
        };
        if self.calls.contains_key(&key) {
            self.deliver_from(&key, &sender, *input.input, received);
        } else if let Some(e) = self.early.get_mut(&key) {
            if e.sender == sender && e.inputs.len() < MAX_EARLY_EVENTS {
                e.inputs.push(input);
            }
        } else if self.room_for_early(received) {
            debug!(room_id = %key.0, call_id = %key.1, "candidates before their invite: kept");
            let early = Early {
                sender,
                inputs: vec![input],
                at: received,
            };
            self.early.insert(key, early);
        } else {
            debug!(room_id = %key.0, "too many orphan candidate events; dropped");
        }
    }

    /// Whether another call's early candidates fit, after dropping those that waited for
    /// their invite longer than [`EARLY_TTL`].
    fn room_for_early(&mut self, now: Instant) -> bool {
        if self.early.len() >= MAX_EARLY_CALLS {
            self.early
                .retain(|_, e| now.saturating_duration_since(e.at) < EARLY_TTL);
        }
        self.early.len() < MAX_EARLY_CALLS
    }

    /// Whether a new call may start: the access list and the limits. If not, the cause (for
    /// the metrics, as FreeSWITCH would name it) and what the caller is told.
    fn admission(&self, room_id: &str, call_id: &str, sender: &str) -> Result<(), (Cause, String)> {
        if !route::allowed(&self.access, &self.own_server, sender) {
            info!(room_id, call_id, %sender, "call refused: not on access.allow");
            let why = "you are not allowed to call through this bridge";
            return Err((Cause::CallRejected, why.into()));
        }
        let max = self.calls_cfg.max_calls;
        if self.calls.len() >= max {
            warn!(room_id, call_id, max, "call refused: too many calls");
            let why = format!("the bridge is at its limit of {max} calls; try again later");
            return Err((Cause::NormalCircuitCongestion, why));
        }
        let mine = self.calls.values().filter(|e| e.caller == sender).count();
        if mine >= self.calls_cfg.max_calls_per_user {
            info!(room_id, call_id, %sender, "call refused: per-user limit");
            let why = format!("you already have {mine} calls; hang one up first");
            return Err((Cause::UserBusy, why));
        }
        Ok(())
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
        let mut early_inputs = Vec::new();
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
        self.early
            .remove(&key)
            .filter(|e| e.sender == sender)
            .into_iter()
            .for_each(|e| early_inputs.extend(e.inputs));
        if let Err((cause, why)) = self.admission(room_id, call_id, sender) {
            self.reject(room_id, call_id, version, ("user_busy", cause), &why);
            return;
        }
        let now = Instant::now();
        let party = inv.party_id.as_ref().map(|p| p.to_string());
        let mut setup = self.setup(call_id, party, version, inv.offer.sdp, now);
        setup.expires_at = now + (lifetime - age);
        setup.candidate_deadline = now + Duration::from_millis(self.calls_cfg.candidate_wait_ms);
        setup.max_duration = (self.calls_cfg.max_call_secs > 0)
            .then(|| Duration::from_secs(self.calls_cfg.max_call_secs));
        let verto_call_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel(64);
        for i in early_inputs {
            let _ = tx.try_send(i);
        }
        let dial_override = self.dial.lock().ok().and_then(|d| d.get(room_id));
        self.spawn_call(
            key,
            sender,
            verto_call_id,
            Call::new(setup),
            (tx, rx),
            dial_override,
            Some(Origin::Matrix(received)),
        );
    }

    fn is_inbound(&self, key: &Key) -> bool {
        self.calls.get(key).is_some_and(|e| e.inbound)
    }

    /// A call from FreeSWITCH: rung in Matrix if a user is named for it and the limits allow,
    /// else refused with a cause FreeSWITCH passes on, and nothing sent to Matrix.
    fn on_fs_invite(&mut self, inc: IncomingCall, at: Instant) {
        let vid = inc.call_id.clone();
        if self.by_verto.contains_key(&vid) {
            debug!(verto_call_id = %vid, "duplicate verto.invite ignored");
            return;
        }
        let offered = Offered {
            variable: inc
                .variables
                .get(inbound::USER_VARIABLE)
                .map(String::as_str),
            caller: &inc.caller_id_number,
            callee: &inc.callee_id_number,
        };
        let Some((user, source)) = inbound::pick_user(&self.inbound_cfg, offered) else {
            info!(verto_call_id = %vid, caller = %inc.caller_id_number, callee = %inc.callee_id_number,
                "call from FreeSWITCH refused: no {} variable, inbound route or default_user names a Matrix user", inbound::USER_VARIABLE);
            return self.refuse_fs(vid, Cause::NoRouteDestination);
        };
        if let Err(cause) = self.inbound_admission(&vid, &user, inc.sdp.len()) {
            return self.refuse_fs(vid, cause);
        }
        info!(verto_call_id = %vid, %user, ?source, caller = %inc.caller_id_number, "call from FreeSWITCH");
        let now = Instant::now();
        let call_id = format!("vb{}", uuid::Uuid::new_v4().simple());
        let offer = crate::sdp::offer_for_browser(&inc.sdp);
        let mut setup = self.setup(&call_id, None, Version::V1, offer, now);
        setup.direction = Direction::Inbound {
            user: user.clone(),
            notice: inbound::caller_notice(&inc.caller_id_name, &inc.caller_id_number),
            fs_telephone_event: crate::sdp::has_telephone_event(&inc.sdp),
        };
        setup.expires_at = now + Duration::from_secs(self.inbound_cfg.ring_timeout_secs);
        setup.max_duration = (self.calls_cfg.max_call_secs > 0)
            .then(|| Duration::from_secs(self.calls_cfg.max_call_secs));
        let key = (String::new(), call_id);
        let chan = mpsc::channel(64);
        let origin = Some(Origin::Verto(at));
        self.spawn_call(key, &user, vid, Call::new(setup), chan, None, origin);
    }

    /// The limits for a call from FreeSWITCH; `max_calls` counts both directions. The user
    /// must be on `access.allow` like a caller: whatever names them (a channel variable the
    /// dialplan may fill from a SIP header, a route), the bot would otherwise open direct chats
    /// with anyone.
    fn inbound_admission(&self, vid: &str, user: &str, sdp_len: usize) -> Result<(), Cause> {
        if !route::allowed(&self.access, &self.own_server, user) {
            info!(verto_call_id = %vid, %user, "call from FreeSWITCH refused: the user is not on access.allow");
            return Err(Cause::NoRouteDestination);
        }
        let max = self.calls_cfg.max_calls;
        if self.calls.len() >= max {
            warn!(verto_call_id = %vid, max, "call from FreeSWITCH refused: too many calls");
            return Err(Cause::NormalCircuitCongestion);
        }
        let theirs = self.calls.values().filter(|e| e.caller == user).count();
        if theirs >= self.calls_cfg.max_calls_per_user {
            info!(verto_call_id = %vid, %user, "call from FreeSWITCH refused: the user's call limit");
            return Err(Cause::UserBusy);
        }
        if sdp_len == 0 || sdp_len > self.calls_cfg.max_sdp_bytes {
            warn!(verto_call_id = %vid, sdp_len, "call from FreeSWITCH refused: its offer is missing or too large");
            return Err(Cause::IncompatibleDestination);
        }
        Ok(())
    }

    fn refuse_fs(&self, verto_call_id: String, cause: Cause) {
        self.matrix
            .metrics()
            .call_refused_in(crate::metrics::INBOUND, cause);
        let verto = self.verto.clone();
        self.tracker.spawn(async move {
            if let Err(e) = verto.bye(&verto_call_id, cause).await {
                debug!(%verto_call_id, error = %Chain(&e), "verto.bye of a refused call failed");
            }
        });
    }

    /// Registers a call and starts its task. `invited`: when the invite that starts it was
    /// read; `None` for a call recovered from the last run.
    #[allow(clippy::too_many_arguments)]
    fn spawn_call(
        &mut self,
        key: Key,
        caller: &str,
        verto_call_id: String,
        call: Call,
        (tx, rx): (mpsc::Sender<Stamped>, mpsc::Receiver<Stamped>),
        dial_override: Option<String>,
        invited: Option<Origin>,
    ) {
        let recovered = invited.is_none();
        let ctx = Ctx {
            matrix: self.matrix.clone(),
            verto: self.verto.clone(),
            room_id: key.0.clone(),
            call_id: key.1.clone(),
            caller: caller.to_owned(),
            bot_user: self.bot_user.clone(),
            verto_call_id: verto_call_id.clone(),
            router: self.router.clone(),
            dial_override,
            calls: self.saved_calls.clone(),
            detach_on_shutdown: self.calls_cfg.on_shutdown == OnShutdown::Detach,
            recovered,
            invited,
            rooms: self.rooms.clone(),
            placed: self.placed_tx.clone(),
            ended: self.done_tx.clone(),
        };
        let inbound = matches!(call.setup().direction, Direction::Inbound { .. });
        self.calls.insert(
            key.clone(),
            Entry {
                tx: tx.clone(),
                caller: caller.to_owned(),
                verto_call_id: verto_call_id.clone(),
                inbound,
            },
        );
        self.by_verto.insert(verto_call_id.clone(), key.clone());
        let done = self.done_tx.clone();
        let cancel = self.calls_cancel.child_token();
        // The actor tells `done` once its call has ended; this covers an actor that stopped
        // before (a second `forget` finds nothing).
        self.tracker.spawn(async move {
            actor::run(call, ctx, rx, tx, cancel).await;
            let _ = done.send(verto_call_id);
        });
    }

    /// Takes back the answered calls the last run left: each waits for FreeSWITCH to re-offer
    /// it after our login with the same session id.
    fn recover(&mut self) {
        let saved = self.saved_calls.all();
        for (verto_call_id, r) in saved {
            info!(room_id = %r.room_id, call_id = %r.call_id, %verto_call_id, "recovering a call from the last run");
            let now = Instant::now();
            let setup = self.setup_for(&r, now);
            let call = Call::recovered(setup, r.trickled.clone(), r.peer_answer.clone(), now);
            let key = (r.room_id.clone(), r.call_id.clone());
            let chan = mpsc::channel(64);
            self.spawn_call(key, &r.caller, verto_call_id, call, chan, None, None);
        }
    }

    /// A recovered call keeps what the last run saved; it has no timers of a new call, and no
    /// maximum length (its start is not known).
    fn setup_for(&self, r: &Record, now: Instant) -> Setup {
        let version = if r.version == 0 {
            Version::V0
        } else {
            Version::V1
        };
        let mut setup = self.setup(
            &r.call_id,
            r.caller_party.clone(),
            version,
            r.offer.clone(),
            now,
        );
        setup.our_party = r.our_party.clone();
        if let Some(user) = &r.inbound_user {
            // Answered before the restart: FreeSWITCH has had the callee's keypad offered.
            setup.direction = Direction::Inbound {
                user: user.clone(),
                notice: String::new(),
                fs_telephone_event: true,
            };
        }
        setup
    }

    /// The one place the operator's limits go into a call's [`Setup`], for new and recovered
    /// calls alike. Its timers are all `now`, and it has no maximum length: new calls set
    /// those.
    fn setup(
        &self,
        call_id: &str,
        caller_party: Option<String>,
        version: Version,
        offer: String,
        now: Instant,
    ) -> Setup {
        Setup {
            call_id: call_id.to_owned(),
            caller_party,
            version,
            offer,
            direction: Direction::Outbound,
            candidate_wait: Duration::from_millis(self.calls_cfg.candidate_wait_ms),
            our_party: self.our_party.clone(),
            expires_at: now,
            candidate_deadline: now,
            candidate_quiet: Duration::from_millis(self.calls_cfg.candidate_quiet_ms),
            max_candidates: self.calls_cfg.max_candidates,
            max_sdp_bytes: self.calls_cfg.max_sdp_bytes,
            notices: self.calls_cfg.notices,
            digits_on_answer: None,
            max_duration: None,
            dtmf_burst: Duration::from_millis(self.dtmf_cfg.burst_ms),
            recovery: Recovery::default(),
        }
    }

    /// A Matrix event's input, from the call's own user only; `received`: when its sync
    /// response was read.
    fn deliver_from(&mut self, key: &Key, sender: &str, input: Input, received: Instant) {
        match self.calls.get(key) {
            Some(e) if e.caller == sender => self.deliver_at(key, input, Origin::Matrix(received)),
            Some(_) => {
                warn!(room_id = %key.0, call_id = %key.1, %sender, "call event from someone other than the caller ignored")
            }
            None => {
                debug!(room_id = %key.0, call_id = %key.1, "event for an unknown or finished call ignored")
            }
        }
    }

    fn deliver(&self, key: &Key, input: Input) {
        self.deliver_stamped(key, input.into());
    }

    fn deliver_at(&self, key: &Key, input: Input, origin: Origin) {
        let origin = Some(origin);
        let input = Box::new(input);
        self.deliver_stamped(key, Stamped { input, origin });
    }

    fn deliver_stamped(&self, key: &Key, input: Stamped) {
        if let Some(e) = self.calls.get(key) {
            if let Err(e) = e.tx.try_send(input) {
                warn!(room_id = %key.0, call_id = %key.1, error = %e, "call inbox full or closed; input dropped");
            }
        }
    }

    fn on_verto(&mut self, Received { at, event }: Received) {
        self.matrix.metrics().verto_event(&event);
        let (call_id, input) = match event {
            VertoEvent::Connected {} => {
                if self.dtmf_cfg.report_far_end {
                    self.subscribe_dtmf();
                }
                return;
            }
            VertoEvent::Dtmf(FsDtmf {
                unique_id,
                other_leg_unique_id: other,
                digit,
            }) => {
                if self.by_verto.contains_key(&unique_id) {
                    debug!(verto_call_id = %unique_id, %digit, "our own digit echoed by FreeSWITCH; not reported");
                    return;
                }
                if digit.is_empty() || !self.by_verto.contains_key(&other) {
                    return;
                }
                (
                    other,
                    Input::FarDtmf {
                        digit: digit.chars().take(4).collect(),
                    },
                )
            }
            VertoEvent::Event { channel, .. } => {
                debug!(%channel, "verto event ignored");
                return;
            }
            VertoEvent::Disconnected => {
                for key in self.calls.keys() {
                    self.deliver(key, Input::VertoDown);
                }
                return;
            }
            VertoEvent::Punted => return,
            VertoEvent::Invite(inc) => return self.on_fs_invite(*inc, at),
            VertoEvent::Media { call_id, sdp } => (call_id, Input::Media { sdp }),
            VertoEvent::Answer { call_id, sdp } => (call_id, Input::Answer { sdp }),
            VertoEvent::Bye {
                call_id,
                cause_code,
                cause,
            } => (call_id, Input::Bye { cause_code, cause }),
            VertoEvent::Ready { reattached } => {
                for (key, e) in &self.calls {
                    let input = Input::VertoReady {
                        reattached: reattached.contains(&e.verto_call_id),
                    };
                    self.deliver(key, input);
                }
                return;
            }
            VertoEvent::Attach { call_id, sdp } => {
                if !self.by_verto.contains_key(&call_id) {
                    // A call FreeSWITCH kept for us that we no longer know: end it.
                    info!(verto_call_id = %call_id, "verto.attach for an unknown call: hanging it up");
                    let verto = self.verto.clone();
                    self.tracker.spawn(async move {
                        let _ = verto.bye(&call_id, Cause::NormalClearing).await;
                    });
                    return;
                }
                (call_id, Input::Attach { sdp })
            }
            VertoEvent::Other { method, call_id } => {
                debug!(%method, ?call_id, "verto request not used by the bridge");
                return;
            }
        };
        match self.by_verto.get(&call_id) {
            Some(key) => self.deliver_at(key, input, Origin::Verto(at)),
            None => {
                debug!(verto_call_id = %call_id, "verto event for an unknown or finished call ignored")
            }
        }
    }

    /// Ends a call the bridge will not take: `m.call.reject` (v1) or `m.call.hangup` (v0) with
    /// the Matrix reason, and a notice saying why when notices are on. The cause is counted.
    fn reject(
        &self,
        room_id: &str,
        call_id: &str,
        version: Version,
        (reason, cause): (&str, Cause),
        why: &str,
    ) {
        self.matrix.metrics().call_refused(cause);
        let event = machine::ending_event(version, false, call_id, &self.our_party, reason);
        let (event_type, content) = (event.event_type(), event.content());
        let matrix = self.matrix.clone();
        let room = room_id.to_owned();
        let notice = self
            .calls_cfg
            .notices
            .then(|| format!("📞 Call refused: {why}."));
        self.tracker.spawn(async move {
            let _ = matrix
                .send_reliably(&room, event_type, &content, Duration::from_secs(30))
                .await;
            if let Some(text) = notice {
                let _ = matrix.notice(&room, &text).await;
            }
        });
    }

    fn notice(&self, room_id: &str, text: String) {
        let matrix = self.matrix.clone();
        let room = room_id.to_owned();
        self.tracker.spawn(async move {
            let _ = matrix.notice(&room, &text).await;
        });
    }

    /// `from`: the sender, the event id and when its sync response was read.
    fn on_command(&mut self, room_id: &str, from: (&str, &str, Instant), cmd: Command) {
        let (sender, event_id, received) = from;
        if !route::allowed(&self.access, &self.own_server, sender) {
            debug!(room_id, %sender, "command from a user not on access.allow ignored");
            return;
        }
        match cmd {
            Command::Help => self.notice(room_id, command::help(self.dial_pattern.is_some())),
            Command::Dtmf(digits) => {
                let digits = match command::check_digits(&digits, self.dtmf_cfg.max_digits) {
                    Ok(d) => d,
                    Err(why) => return self.notice(room_id, why),
                };
                let key = self
                    .calls
                    .iter()
                    .find(|((r, _), e)| r == room_id && e.caller == sender)
                    .map(|(k, _)| k.clone());
                match key {
                    Some(k) => self.deliver_at(
                        &k,
                        Input::Dtmf {
                            digits,
                            event_id: Some(event_id.to_owned()),
                        },
                        Origin::Matrix(received),
                    ),
                    None => self.notice(
                        room_id,
                        "You have no call in this room to send digits to.".into(),
                    ),
                }
            }
            Command::DialShow | Command::DialSet(_) | Command::DialReset => {
                let (matrix, router, dial) =
                    (self.matrix.clone(), self.router.clone(), self.dial.clone());
                let (room, sender, bot) =
                    (room_id.to_owned(), sender.to_owned(), self.bot_user.clone());
                let pattern = self.dial_pattern.clone();
                self.tracker.spawn(async move {
                    let text = dial_command(
                        &matrix,
                        &router,
                        &dial,
                        &room,
                        &sender,
                        &bot,
                        pattern.as_ref(),
                        cmd,
                    )
                    .await;
                    let _ = matrix.notice(&room, &text).await;
                });
            }
        }
    }

    /// Subscribes to FreeSWITCH's DTMF events (after every login); a refusal is logged once,
    /// with the settings that fix it.
    fn subscribe_dtmf(&self) {
        let verto = self.verto.clone();
        let warned = self.subscribe_warned.clone();
        self.tracker.spawn(async move {
            let subscribe = Subscribe {
                event_channel: DTMF_CHANNEL.to_owned(),
            };
            let granted = match verto.send(&subscribe).await {
                Ok(reply) => subscribe.granted(&reply),
                Err(VertoError::Rpc(_)) => false,
                Err(e) => {
                    debug!(error = %Chain(&e), "verto.subscribe not sent");
                    return;
                }
            };
            if granted {
                info!("subscribed to FreeSWITCH DTMF events (FSevent.dtmf)");
            } else if !warned.swap(true, Ordering::Relaxed) {
                warn!("FreeSWITCH refused the FSevent.dtmf subscription, so far-end digits cannot be reported. \
                       Set <param name=\"enable-fs-events\" value=\"true\"/> in verto.conf.xml <settings> (then reload mod_verto) \
                       and add FSevent.dtmf to the verto user's <param name=\"jsonrpc-allowed-event-channels\" .../> in the directory");
            }
        });
    }
}

/// Carries out `!dial`; returns the notice text.
#[allow(clippy::too_many_arguments)]
async fn dial_command(
    matrix: &MatrixClient,
    router: &Router,
    dial: &Mutex<DialStore>,
    room: &str,
    sender: &str,
    bot: &str,
    pattern: Option<&regex::Regex>,
    cmd: Command,
) -> String {
    let one_to_one = match matrix.joined_members(room).await {
        Ok(m) => route::is_one_to_one(&m, sender, bot),
        Err(e) => {
            return format!(
                "Cannot check this room's members right now ({}).",
                Chain(&e)
            )
        }
    };
    if !one_to_one {
        return "!dial works only in a 1:1 room with me.".into();
    }
    match cmd {
        Command::DialSet(number) => {
            let Some(re) = pattern else {
                return "Dialling numbers is not enabled on this bridge.".into();
            };
            if !re.is_match(&number) {
                return format!("{number} is not a number this bridge may dial.");
            }
            if let Ok(mut d) = dial.lock() {
                d.set(room, Some(number.clone()));
            }
            format!("Calls from this room now go to {number}. Start a voice call to dial it; !dial reset goes back to the default.")
        }
        Command::DialReset => {
            if let Ok(mut d) = dial.lock() {
                d.set(room, None);
            }
            let dest = default_destination(router, room, sender).await;
            format!("Calls from this room go to the default destination again ({dest}).")
        }
        _ => match dial.lock().ok().and_then(|d| d.get(room)) {
            Some(n) => format!("Calls from this room go to {n} (chosen with !dial)."),
            None => {
                let dest = default_destination(router, room, sender).await;
                format!("Calls from this room go to {dest}.")
            }
        },
    }
}

/// Where the routes (without `!dial`) send this sender's calls from this room.
async fn default_destination(router: &Router, room: &str, sender: &str) -> String {
    let caller = Caller {
        user_id: sender,
        display_name: "",
    };
    router.route(room, &caller, None).await.destination
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bridge on a homeserver and a FreeSWITCH that are not there: nothing in these tests
    /// reaches the network.
    async fn bridge() -> (Bridge, CancellationToken) {
        let dir = std::env::temp_dir().join(format!("vertobot-bridge-{}", uuid::Uuid::new_v4()));
        let yaml = format!(
            "matrix:\n  homeserver: \"http://127.0.0.1:9\"\n  user_id: \"@bot:localhost\"\n  access_token: \"t\"\n\
             verto:\n  url: \"ws://127.0.0.1:9\"\n  login: \"1000@localhost\"\n  password: \"p\"\n\
             calls:\n  destination: \"9196\"\nstate_dir: \"{}\"\n",
            dir.display()
        );
        let cfg = Config::parse(&yaml).expect("config");
        let store = StateStore::open(&dir).expect("state_dir");
        let matrix = MatrixClient::with_tls("http://127.0.0.1:9", None, false).expect("client");
        let (tx, _rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let (verto, _task) =
            crate::verto::spawn(&cfg.verto, "s".into(), tx, cancel.clone()).expect("verto");
        let b = Bridge::new(
            &cfg,
            store,
            matrix,
            verto,
            "@bot:localhost".into(),
            "P".into(),
        );
        (b, cancel)
    }

    /// The sync task ending on its own (its sender dropped) stops the bridge with a reason,
    /// instead of running on with no Matrix input.
    #[tokio::test]
    async fn a_lost_sync_task_stops_the_bridge() {
        let (b, verto_cancel) = bridge().await;
        let (batch_tx, batch_rx) = mpsc::channel(1);
        let (_verto_tx, verto_rx) = mpsc::channel(1);
        drop(batch_tx);
        let lost = tokio::time::timeout(
            Duration::from_secs(10),
            b.run(
                batch_rx,
                verto_rx,
                CancellationToken::new(),
                Duration::from_millis(10),
            ),
        )
        .await
        .expect("the bridge stops");
        assert_eq!(lost, Some(Lost::Sync));
        verto_cancel.cancel();
    }

    /// The same for the verto event stream; a stop signal is not a loss.
    #[tokio::test]
    async fn a_lost_verto_task_stops_the_bridge_and_a_stop_is_not_a_loss() {
        let (b, verto_cancel) = bridge().await;
        let (_batch_tx, batch_rx) = mpsc::channel(1);
        let (verto_tx, verto_rx) = mpsc::channel(1);
        drop(verto_tx);
        let run = b.run(
            batch_rx,
            verto_rx,
            CancellationToken::new(),
            Duration::from_millis(10),
        );
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .ok(),
            Some(Some(Lost::Verto))
        );

        let (b, _) = bridge().await;
        let (_batch_tx, batch_rx) = mpsc::channel(1);
        let (_verto_tx, verto_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        stop.cancel();
        let run = b.run(batch_rx, verto_rx, stop, Duration::from_millis(10));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .ok(),
            Some(None)
        );
        verto_cancel.cancel();
    }

    /// A batch is confirmed only once the bridge has handled it: that is when the sync loop
    /// may save the position after it.
    #[tokio::test]
    async fn a_batch_is_confirmed_after_it_is_handled() {
        let (b, verto_cancel) = bridge().await;
        let (batch_tx, batch_rx) = mpsc::channel(1);
        let (_verto_tx, verto_rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let run = tokio::spawn(b.run(batch_rx, verto_rx, stop.clone(), Duration::from_millis(10)));
        let (done, handled) = tokio::sync::oneshot::channel();
        let batch = Batch {
            received: std::time::Instant::now().into(),
            rooms: Vec::new(),
            handled: Some(done),
        };
        batch_tx
            .send(batch)
            .await
            .expect("the bridge takes batches");
        tokio::time::timeout(Duration::from_secs(10), handled)
            .await
            .expect("confirmed in time")
            .expect("confirmed, not dropped");
        stop.cancel();
        assert_eq!(run.await.expect("no panic"), None);
        verto_cancel.cancel();
    }
}
