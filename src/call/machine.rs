//! The sans-IO state machine of one bridged call, in either direction: a Matrix caller
//! dialling FreeSWITCH ([`Direction::Outbound`]) or FreeSWITCH ringing a Matrix user
//! ([`Direction::Inbound`]). Once answered, both are the same call: the states from
//! [`State::Answered`] on do not care who called.
//!
//! Contract (as in quinn-proto): feed inputs with [`Call::handle`], fire timers with
//! [`Call::handle_timeout`] once [`Call::poll_timeout`] has passed, and execute the returned
//! [`Action`]s in order. The machine never does I/O and never reads the clock itself, so every
//! ordering race in PROTOCOL.md C.3 can be replayed in a unit test with chosen `now` values.
//! Inputs the current state does not allow are logged and ignored.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::cause;
use crate::matrix::events::{CallEventOut, SdpKind, Voip};
use crate::sdp::{self, TrickleCandidate};
use crate::verto::Cause;

/// Matrix VoIP version of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The integer `0`: no party ids, no reject, no negotiate.
    V0,
    /// `"1"` (and anything else, as the spec says).
    V1,
}

/// Who started the call. The machine is one for both; only the states before the answer
/// differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// A Matrix user calls through the bot: the offer is theirs, the bot answers in Matrix
    /// and dials FreeSWITCH.
    Outbound,
    /// FreeSWITCH calls a Matrix user: the offer is FreeSWITCH's, the bot rings the user in
    /// Matrix and answers FreeSWITCH once a device of theirs answered.
    Inbound {
        /// The Matrix user rung.
        user: String,
        /// Who calls, posted before the call rings.
        notice: String,
        /// FreeSWITCH's offer named `telephone-event`. mod_verto's never do, and then
        /// FreeSWITCH sets no payload type to receive them on (see `Call::keypad_update`).
        fs_telephone_event: bool,
    },
}

/// Everything fixed when the call starts.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Matrix `call_id`.
    pub call_id: String,
    /// The other Matrix party's `party_id` (v1): the caller's, or for an inbound call the
    /// answering device's, once it answered.
    pub caller_party: Option<String>,
    /// The other Matrix party's VoIP version (inbound calls are version 1).
    pub version: Version,
    /// The offer SDP: the caller's from `m.call.invite`, or for an inbound call FreeSWITCH's,
    /// made acceptable to browsers.
    pub offer: String,
    /// Who called.
    pub direction: Direction,
    /// Inbound: how long the answering device may trickle candidates before its answer goes
    /// to FreeSWITCH without the end-of-candidates marker.
    pub candidate_wait: Duration,
    /// Our `party_id`.
    pub our_party: String,
    /// When the invite stops being valid (from `lifetime` and `age`).
    pub expires_at: Instant,
    /// When to dial if no end-of-candidates marker has come.
    pub candidate_deadline: Instant,
    /// Once every transport of the offer has a usable candidate, dial when no candidates
    /// event has come for this long (zero: wait for the marker or `candidate_deadline`).
    pub candidate_quiet: Duration,
    /// Flood guard: trickled candidates beyond this are ignored.
    pub max_candidates: usize,
    /// Offers larger than this are rejected.
    pub max_sdp_bytes: usize,
    /// Post a notice in the room when a call fails, because Matrix clients show little.
    pub notices: bool,
    /// Digits sent after the answer, and the pause before them (set by routing).
    pub digits_on_answer: Option<(String, Duration)>,
    /// Longest answered call.
    pub max_duration: Option<Duration>,
    /// Far-end digits closer together than this are reported in one notice.
    pub dtmf_burst: Duration,
    /// Timers of the recovery after a lost verto connection.
    pub recovery: Recovery,
}

/// Timers of the recovery after a lost verto connection (PROTOCOL.md part D).
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// How long an answered call waits for FreeSWITCH to re-offer it. FreeSWITCH keeps it for
    /// `detach-timeout-sec` (120 s by default).
    pub detach_timeout: Duration,
    /// How long the first, fingerprint-altered offer waits for its answer before the real offer
    /// is sent anyway (a client that refuses the altered offer falls back to one round).
    pub first_round: Duration,
    /// How long the real offer waits for its answer.
    pub answer_timeout: Duration,
    /// The longest wait for trickled candidates after the answer.
    pub candidate_wait: Duration,
    /// After a batch of candidates, how long to wait for more before attaching.
    pub quiet: Duration,
}

impl Default for Recovery {
    fn default() -> Self {
        Self {
            detach_timeout: Duration::from_secs(130),
            first_round: Duration::from_millis(2500),
            answer_timeout: Duration::from_secs(15),
            candidate_wait: Duration::from_millis(3000),
            quiet: Duration::from_millis(300),
        }
    }
}

/// A renegotiation with the caller after `verto.attach`.
#[derive(Debug, Clone)]
struct Reneg {
    /// FreeSWITCH's offer, made acceptable to the browser.
    offer: String,
    /// 1: the fingerprint-altered offer is out; 2: the real one.
    round: u8,
    /// The caller's answer to the real offer, while its candidates are collected.
    answer: Option<String>,
    candidates: Vec<TrickleCandidate>,
    deadline: Instant,
    /// The latest attach: `candidate_wait` after the caller's answer, however long it trickles.
    attach_by: Option<Instant>,
}

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for trickled candidates before dialling.
    Collecting,
    /// `verto.invite` sent, no reply yet.
    Dialling,
    /// FreeSWITCH created the channel; waiting for its answer.
    Ringing,
    /// `verto.media` gave us FreeSWITCH's SDP; still waiting for `verto.answer`.
    EarlyMedia,
    /// `m.call.answer` sent.
    Answered,
    /// Answered, but the verto socket is gone; waiting for FreeSWITCH to re-offer the call.
    Detached,
    /// FreeSWITCH re-offered the call (`verto.attach`); renegotiating with the caller.
    Renegotiating,
    /// Inbound: finding or creating the room with the user, and waiting for their join.
    Placing,
    /// Inbound: `m.call.invite` sent; the user's devices ring.
    Inviting,
    /// Inbound: a device answered; its candidates are collected before `verto.answer`.
    Connecting,
    /// Nothing more to do.
    Ended,
}

/// Where the call is, with what only that state needs.
#[derive(Debug, Clone)]
enum Stage {
    Collecting {
        /// Set once every transport has a usable candidate: dial then unless more come.
        quiet_until: Option<Instant>,
    },
    Dialling {
        /// The call ended towards Matrix while `verto.invite` was in flight: the cause to
        /// hang up with once FreeSWITCH has created the channel.
        cancel: Option<Cause>,
        /// FreeSWITCH's SDP from `verto.media`, which can come before the invite's reply.
        early_sdp: Option<String>,
    },
    Ringing,
    EarlyMedia {
        /// FreeSWITCH's SDP, for an answer that carries none.
        sdp: String,
    },
    Answered,
    Detached {
        /// When to give up waiting for FreeSWITCH to re-offer the call.
        due: Instant,
    },
    Renegotiating(Reneg),
    Placing,
    Inviting {
        /// Candidates of devices that have not answered (yet), with their party, end markers
        /// included: a device's candidates may come before its answer.
        early: Vec<(Option<String>, TrickleCandidate)>,
    },
    Connecting {
        /// The answering device's SDP.
        answer: String,
        /// When to answer FreeSWITCH without the end-of-candidates marker.
        due: Instant,
        /// While no usable candidate has come, `due` moves on, but not past this.
        give_up: Instant,
    },
    Ended,
}

/// The timers that outlive a state; the others are deadlines in the [`Setup`] or the
/// [`Stage`].
#[derive(Debug, Clone, Copy)]
enum Timer {
    /// Report the far end's digits collected so far.
    FarDigits,
    /// Send the route's digits after the answer.
    Digits,
    /// The call's maximum length.
    MaxLength,
}

/// When each [`Timer`] fires, if it is set.
#[derive(Debug, Default)]
struct Timers([Option<Instant>; 3]);

impl Timers {
    fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.0[t as usize] = at;
    }

    fn is_due(&self, t: Timer, now: Instant) -> bool {
        self.0[t as usize].is_some_and(|d| now >= d)
    }

    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

/// Inputs from both sides and from the actor.
#[derive(Debug, Clone)]
pub enum Input {
    /// `m.call.candidates` from the caller.
    Candidates {
        /// The event's `party_id`.
        party_id: Option<String>,
        /// The candidates, the end marker included.
        candidates: Vec<TrickleCandidate>,
    },
    /// `m.call.hangup` from the caller (or the caller left the room).
    Hangup {
        /// The Matrix reason.
        reason: Option<String>,
    },
    /// `m.call.select_answer` from the caller.
    SelectAnswer {
        /// The chosen party.
        party_id: String,
    },
    /// The reply to our `verto.invite`.
    InviteResult(Result<(), DialFailure>),
    /// `verto.media`.
    Media {
        /// FreeSWITCH's SDP.
        sdp: String,
    },
    /// `verto.answer`.
    Answer {
        /// FreeSWITCH's SDP, unless `verto.media` carried it.
        sdp: Option<String>,
    },
    /// `verto.bye` from FreeSWITCH.
    Bye {
        /// Numeric cause.
        cause_code: Option<i64>,
        /// Cause name.
        cause: Option<String>,
    },
    /// A new offer from FreeSWITCH for this call (`verto.attach`).
    Attach {
        /// FreeSWITCH's offer.
        sdp: String,
    },
    /// FreeSWITCH is ready after a (re)login; `reattached` says whether it kept this call.
    VertoReady {
        /// Listed in `reattached_sessions`.
        reattached: bool,
    },
    /// `m.call.negotiate` from the caller.
    Negotiate {
        /// The event's `party_id`.
        party_id: Option<String>,
        /// `description.type`.
        kind: String,
        /// `description.sdp`.
        sdp: String,
    },
    /// The reply to our `verto.attach`.
    AttachResult(Result<(), String>),
    /// The reply to our `verto.modify updateMedia`: FreeSWITCH's answer SDP.
    ModifyResult(Result<String, String>),
    /// The bridge stops but keeps answered calls for the next start (rolling upgrade).
    Detach,
    /// `!dtmf` from the caller: digits for FreeSWITCH.
    Dtmf {
        /// Validated digits.
        digits: String,
        /// The command event, to confirm with a reaction.
        event_id: Option<String>,
    },
    /// A digit pressed by the far end (from FreeSWITCH's DTMF events).
    FarDtmf {
        /// The digit.
        digit: String,
    },
    /// The verto socket dropped.
    VertoDown,
    /// The bridge is stopping.
    Shutdown,
    /// Inbound: the room with the user is ready (found, or created and joined).
    RoomReady {
        /// The room.
        room_id: String,
    },
    /// Inbound: no room with the user could be found or made in time.
    RoomFailed {
        /// For the log.
        why: String,
    },
    /// Inbound: `m.call.answer` from one of the user's devices.
    CalleeAnswer {
        /// The device's `party_id`.
        party_id: Option<String>,
        /// Its answer SDP.
        sdp: String,
    },
    /// Inbound: `m.call.reject` from one of the user's devices.
    Reject,
    /// Inbound: `m.call.hangup` from one of the user's devices; once a device answered, only
    /// its own hangup counts.
    CalleeHangup {
        /// The device's `party_id`.
        party_id: Option<String>,
        /// The Matrix reason.
        reason: Option<String>,
    },
    /// Inbound: the reply to our `verto.answer`.
    AnswerResult(Result<(), String>),
}

/// Why `verto.invite` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialFailure {
    /// `causeCode` from the error object, if any.
    pub cause_code: Option<i64>,
    /// What went wrong, for the log.
    pub message: String,
    /// No reply came: FreeSWITCH may have created the channel anyway.
    pub timed_out: bool,
}

/// What the actor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `verto.invite` with this SDP and report the reply as [`Input::InviteResult`].
    Dial {
        /// The complete offer.
        sdp: String,
    },
    /// Send `verto.bye` with this cause.
    Bye {
        /// Why.
        cause: Cause,
    },
    /// Send `verto.info {dtmf}`; confirm to the caller if `react_to` is set.
    SendDtmf {
        /// The digits.
        digits: String,
        /// The `!dtmf` command event.
        react_to: Option<String>,
    },
    /// Send `verto.modify {action: updateMedia}` with the caller's new offer (hold, resume,
    /// ICE restart); report as [`Input::ModifyResult`].
    Modify {
        /// The offer, with candidates.
        sdp: String,
    },
    /// Send `verto.modify {action: hold}` (or `unhold`): FreeSWITCH's own hold, as verto.js
    /// does it, without renegotiating media. Fire and forget.
    Hold {
        /// Hold (true) or resume (false).
        on: bool,
    },
    /// Send `verto.attach` with the caller's answer; report as [`Input::AttachResult`].
    Attach {
        /// The complete answer.
        sdp: String,
    },
    /// Post a notice in the call's room.
    Notice {
        /// Its text.
        text: String,
    },
    /// Send a Matrix event in the call's room.
    Send(CallEventOut),
    /// Inbound: find or create the room with `user`, ready (joined) by `until`; report as
    /// [`Input::RoomReady`] or [`Input::RoomFailed`].
    FindRoom {
        /// The user to ring.
        user: String,
        /// When ringing is over anyway.
        until: Instant,
    },
    /// Inbound: send `verto.answer` with the callee's answer; report as
    /// [`Input::AnswerResult`].
    AnswerVerto {
        /// The complete answer.
        sdp: String,
    },
}

/// One call.
#[derive(Debug)]
pub struct Call {
    setup: Setup,
    stage: Stage,
    trickled: Vec<TrickleCandidate>,
    ignored_candidates: usize,
    timers: Timers,
    far_digits: String,
    /// The caller's renegotiation offer while `verto.modify` is in flight.
    caller_offer: Option<String>,
    /// The Matrix side's current offer and our answer to it, while our side is an answer:
    /// what a hold or resume is compared with and answered from.
    matrix_media: Option<(String, String)>,
    /// Inbound: the answering device's SDP (its candidates are where it listens, should a
    /// renegotiation bring no new ones).
    peer_answer: Option<String>,
    /// Inbound: our `verto.modify updateMedia` for the callee's keypad is with FreeSWITCH.
    keypad_update: bool,
    /// Set when the call was left running for the next start ([`Input::Detach`]).
    pub kept: bool,
    /// Why it ended, for the final log line.
    pub end_reason: Option<String>,
}

impl Call {
    /// Creates the machine; call [`start`](Self::start) next.
    pub fn new(setup: Setup) -> Self {
        Self {
            setup,
            stage: Stage::Collecting { quiet_until: None },
            trickled: Vec::new(),
            ignored_candidates: 0,
            timers: Timers::default(),
            far_digits: String::new(),
            caller_offer: None,
            matrix_media: None,
            peer_answer: None,
            keypad_update: false,
            kept: false,
            end_reason: None,
        }
    }

    /// A call recovered after a restart: answered, its verto leg detached, waiting for
    /// FreeSWITCH to re-offer it. `trickled` are the other party's original candidates, and
    /// `peer_answer` an inbound callee's answer.
    pub fn recovered(
        setup: Setup,
        trickled: Vec<TrickleCandidate>,
        peer_answer: Option<String>,
        now: Instant,
    ) -> Self {
        let mut c = Self::new(setup);
        c.trickled = trickled;
        c.peer_answer = peer_answer;
        c.stage = Stage::Detached {
            due: now + c.setup.recovery.detach_timeout,
        };
        c
    }

    /// The caller's candidates (kept for recovery).
    pub fn trickled(&self) -> &[TrickleCandidate] {
        &self.trickled
    }

    /// Trickled candidates ignored over `max_candidates` (for the metrics).
    pub fn ignored_candidates(&self) -> usize {
        self.ignored_candidates
    }

    /// The setup (kept for recovery).
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// Inbound: the answering device's SDP (kept for recovery).
    pub fn peer_answer(&self) -> Option<&str> {
        self.peer_answer.as_deref()
    }

    fn is_inbound(&self) -> bool {
        matches!(self.setup.direction, Direction::Inbound { .. })
    }

    /// The SDP the other Matrix party sent first: where it listens.
    fn peer_sdp(&self) -> &str {
        match self.setup.direction {
            Direction::Outbound => &self.setup.offer,
            Direction::Inbound { .. } => self.peer_answer.as_deref().unwrap_or_default(),
        }
    }

    /// A v1 event's `party_id` must be the caller's (v0 events have none).
    fn is_callers_party(&self, party_id: Option<&str>) -> bool {
        match (party_id, self.setup.caller_party.as_deref()) {
            (Some(got), Some(want)) => got == want,
            _ => true,
        }
    }

    fn answered(&self) -> bool {
        matches!(
            self.stage,
            Stage::Answered | Stage::Detached { .. } | Stage::Renegotiating(_)
        )
    }

    /// Sets the digits to send after the answer (known once the call is routed).
    pub fn set_digits_on_answer(&mut self, digits: Option<(String, Duration)>) {
        self.setup.digits_on_answer = digits;
    }

    /// The current state.
    pub fn state(&self) -> State {
        match self.stage {
            Stage::Collecting { .. } => State::Collecting,
            Stage::Dialling { .. } => State::Dialling,
            Stage::Ringing => State::Ringing,
            Stage::EarlyMedia { .. } => State::EarlyMedia,
            Stage::Answered => State::Answered,
            Stage::Detached { .. } => State::Detached,
            Stage::Renegotiating(_) => State::Renegotiating,
            Stage::Placing => State::Placing,
            Stage::Inviting { .. } => State::Inviting,
            Stage::Connecting { .. } => State::Connecting,
            Stage::Ended => State::Ended,
        }
    }

    /// A hangup, expiry or shutdown while `verto.invite` is in flight: Matrix is told now,
    /// FreeSWITCH once the invite's reply comes.
    fn cancel_dial_with(&mut self, cause: Cause) {
        if let Stage::Dialling { cancel, .. } = &mut self.stage {
            *cancel = Some(cause);
        }
    }

    /// True once nothing is left to do.
    pub fn is_ended(&self) -> bool {
        matches!(self.stage, Stage::Ended)
    }

    /// Checks the offer, and dials at once if it cannot expect trickled candidates.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        // A recovered call starts Detached: it was dialled in the last run, never again.
        if self.state() != State::Collecting {
            debug!(state = ?self.state(), "start of a call that is not new: nothing to dial");
            return Vec::new();
        }
        if let Direction::Inbound { user, .. } = &self.setup.direction {
            let (user, until) = (user.clone(), self.setup.expires_at);
            self.stage = Stage::Placing;
            return vec![Action::FindRoom { user, until }];
        }
        if self.setup.offer.len() > self.setup.max_sdp_bytes {
            return self.fail("unknown_error", "the offer SDP is too large");
        }
        if sdp::is_complete(&self.setup.offer) {
            debug!("offer is complete; dialling without waiting for candidates");
            return self.flush(now);
        }
        self.arm_quiet(now);
        Vec::new()
    }

    /// Restarts the quiet period after a candidates event (or the invite), once every
    /// transport has a usable candidate: the caller is then most likely done gathering, and
    /// matrix-js-sdk may never send the end-of-candidates marker.
    fn arm_quiet(&mut self, now: Instant) {
        let quiet = self.setup.candidate_quiet;
        let Stage::Collecting { quiet_until } = &mut self.stage else {
            return;
        };
        if !quiet.is_zero() && sdp::covers_every_transport(&self.setup.offer, &self.trickled) {
            *quiet_until = Some(now + quiet);
        }
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let state = match &self.stage {
            Stage::Collecting { quiet_until } => {
                let wait = self.setup.candidate_deadline.min(self.setup.expires_at);
                Some(quiet_until.map_or(wait, |q| q.min(wait)))
            }
            // Already ended towards Matrix: only the invite reply is awaited, no timer.
            Stage::Dialling {
                cancel: Some(_), ..
            } => None,
            Stage::Dialling { .. } | Stage::Ringing | Stage::EarlyMedia { .. } => {
                Some(self.setup.expires_at)
            }
            Stage::Answered => None,
            Stage::Detached { due } => Some(*due),
            Stage::Renegotiating(r) => Some(r.deadline),
            Stage::Placing | Stage::Inviting { .. } => Some(self.setup.expires_at),
            Stage::Connecting { due, .. } => Some(*due),
            Stage::Ended => return None,
        };
        [state, self.timers.next()].into_iter().flatten().min()
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.timers.is_due(Timer::FarDigits, now) {
            out.extend(self.flush_far_digits());
        }
        if self.timers.is_due(Timer::Digits, now) {
            self.timers.set(Timer::Digits, None);
            if let (State::Answered, Some((digits, _))) =
                (self.state(), &self.setup.digits_on_answer)
            {
                info!(%digits, "sending the route's digits");
                out.push(Action::SendDtmf {
                    digits: digits.clone(),
                    react_to: None,
                });
            }
        }
        if self.timers.is_due(Timer::MaxLength, now) && self.answered() {
            self.timers.set(Timer::MaxLength, None);
            let mins = self.setup.max_duration.map_or(0, |d| d.as_secs() / 60);
            out.push(Action::Bye {
                cause: Cause::AllottedTimeout,
            });
            out.extend(self.fail(
                "user_hangup",
                &format!("the call reached the maximum length of {mins} minutes"),
            ));
            return out;
        }
        out.extend(self.handle_state_timeout(now));
        out
    }

    fn handle_state_timeout(&mut self, now: Instant) -> Vec<Action> {
        match &self.stage {
            Stage::Detached { due } if now >= *due => self.fail(
                "unknown_error",
                "FreeSWITCH did not recover the call after the connection was lost",
            ),
            Stage::Renegotiating(r) if now >= r.deadline => self.reneg_timeout(now),
            Stage::Placing if now >= self.setup.expires_at => {
                info!("the room was not ready before the ring timeout");
                self.finish("the user could not be rung in time");
                vec![Action::Bye {
                    cause: Cause::NoAnswer,
                }]
            }
            Stage::Inviting { .. } if now >= self.setup.expires_at => {
                let mut out = vec![Action::Bye {
                    cause: Cause::NoAnswer,
                }];
                out.extend(self.fail("invite_timeout", "nobody answered"));
                out
            }
            Stage::Connecting { due, .. } if now >= *due => self.connecting_timeout(now),
            Stage::Collecting { .. } if now >= self.setup.expires_at => self.fail(
                "invite_timeout",
                "the invite expired before it could be dialled",
            ),
            Stage::Collecting { .. } if now >= self.setup.candidate_deadline => {
                debug!(
                    candidates = self.trickled.len(),
                    "candidate wait over without end-of-candidates; dialling"
                );
                self.flush(now)
            }
            Stage::Collecting {
                quiet_until: Some(q),
            } if now >= *q => {
                debug!(
                    candidates = self.trickled.len(),
                    "every transport has a candidate and none came for a while; dialling"
                );
                self.flush(now)
            }
            Stage::Dialling {
                cancel: Some(_), ..
            } => Vec::new(),
            Stage::Dialling { .. } if now >= self.setup.expires_at => {
                // The channel FreeSWITCH may be creating is hung up once the invite reply says
                // it exists; until then the machine waits without a timer.
                self.cancel_dial_with(Cause::NoAnswer);
                self.end_matrix(
                    "invite_timeout",
                    "nobody answered before the invite expired",
                )
            }
            Stage::Ringing | Stage::EarlyMedia { .. } if now >= self.setup.expires_at => {
                let mut out = vec![Action::Bye {
                    cause: Cause::NoAnswer,
                }];
                out.extend(self.end_matrix(
                    "invite_timeout",
                    "nobody answered before the invite expired",
                ));
                self.finish("nobody answered before the invite expired");
                out
            }
            _ => Vec::new(),
        }
    }

    /// Feeds one input.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        if let Stage::Dialling {
            cancel: Some(cause),
            ..
        } = self.stage
        {
            return self.cancel_dial(cause, input);
        }
        if self.is_ended() {
            debug!(?input, "input for an ended call ignored");
            return Vec::new();
        }
        // Inputs every live state handles by one rule; the rest go to the state's handler.
        match input {
            Input::Dtmf { digits, event_id } => self.on_dtmf(digits, event_id),
            Input::FarDtmf { digit } => {
                if self.far_digits.len() < 256 {
                    self.far_digits.push_str(&digit);
                }
                self.timers
                    .set(Timer::FarDigits, Some(now + self.setup.dtmf_burst));
                Vec::new()
            }
            Input::Candidates {
                party_id,
                candidates,
            } => self.on_candidates(party_id, candidates, now),
            Input::SelectAnswer { party_id } => self.on_select_answer(party_id),
            Input::VertoReady { reattached } => {
                if self.state() == State::Detached && !reattached {
                    return self.fail(
                        "unknown_error",
                        "FreeSWITCH no longer has the call (it may have restarted)",
                    );
                }
                Vec::new()
            }
            Input::Detach if self.answered() && self.setup.version == Version::V1 => {
                info!("keeping the call for the next start");
                self.kept = true;
                self.finish("kept for the next start");
                Vec::new()
            }
            Input::Detach => self.handle(Input::Shutdown, now),
            Input::CalleeHangup { party_id, reason } => {
                if !self.is_callers_party(party_id.as_deref()) {
                    debug!(
                        ?party_id,
                        "hangup from a device that did not get the call ignored"
                    );
                    return Vec::new();
                }
                self.handle(Input::Hangup { reason }, now)
            }
            input => match self.state() {
                State::Collecting => self.collecting(input),
                State::Dialling => self.dialling(input, now),
                State::Ringing | State::EarlyMedia => self.ringing(input, now),
                State::Answered => self.answered_input(input, now),
                State::Detached => self.connected(input, now),
                State::Renegotiating => self.renegotiating(input, now),
                State::Placing | State::Inviting | State::Connecting => {
                    self.inbound_ringing(input, now)
                }
                State::Ended => Vec::new(),
            },
        }
    }

    /// Collecting: nothing has reached FreeSWITCH yet.
    fn collecting(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::Hangup { reason } => {
                info!(
                    ?reason,
                    "caller hung up before dialling; nothing sent to FreeSWITCH"
                );
                self.finish("caller hung up while candidates were collected");
                Vec::new()
            }
            Input::Shutdown => self.fail("unknown_error", "the bridge is shutting down"),
            input => self.ignored(input),
        }
    }

    /// Dialling: `verto.invite` is in flight, so an ending must wait for its reply.
    fn dialling(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Hangup { reason } => {
                self.cancel_dial_with(cause::matrix_to_verto(reason.as_deref(), false));
                Vec::new()
            }
            Input::InviteResult(res) => self.on_invite_result(res),
            Input::Shutdown => {
                self.cancel_dial_with(Cause::SystemShutdown);
                self.end_matrix("unknown_error", "the bridge is shutting down")
            }
            input => self.ringing(input, now),
        }
    }

    /// Ringing or early media (and what Dialling shares with them): FreeSWITCH has the call,
    /// nobody answered yet.
    fn ringing(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Hangup { reason } => {
                self.finish("caller hung up");
                vec![Action::Bye {
                    cause: cause::matrix_to_verto(reason.as_deref(), false),
                }]
            }
            Input::Media { sdp } => {
                match &mut self.stage {
                    Stage::Dialling { early_sdp, .. } => *early_sdp = Some(sdp),
                    stage => *stage = Stage::EarlyMedia { sdp },
                }
                Vec::new()
            }
            Input::Answer { sdp } => self.on_fs_answer(sdp, now),
            Input::Bye { cause_code, cause } => self.on_fs_bye(cause_code, cause),
            // FreeSWITCH hangs up unanswered calls of a lost socket (cause 27).
            Input::VertoDown => self.fail("unknown_error", "the connection to FreeSWITCH was lost"),
            Input::Shutdown => {
                let mut out = vec![Action::Bye {
                    cause: Cause::SystemShutdown,
                }];
                out.extend(self.fail("unknown_error", "the bridge is shutting down"));
                out
            }
            input => self.ignored(input),
        }
    }

    /// Answered: the caller may hold, resume or renegotiate.
    fn answered_input(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Negotiate {
                party_id,
                kind,
                sdp,
            } if kind == "offer" && self.setup.version == Version::V1 => {
                self.on_caller_offer(party_id, sdp)
            }
            Input::ModifyResult(res) => self.on_modify_result(res),
            Input::AttachResult(Ok(())) => {
                info!("call re-attached to FreeSWITCH");
                Vec::new()
            }
            Input::AnswerResult(Ok(())) => {
                info!("FreeSWITCH took the answer");
                self.keypad_update()
            }
            Input::AnswerResult(Err(e)) => {
                warn!(error = %e, "verto.answer failed");
                let mut out = vec![Action::Bye {
                    cause: Cause::NormalTemporaryFailure,
                }];
                out.extend(self.fail("unknown_error", "FreeSWITCH did not take the answer"));
                out
            }
            Input::AttachResult(Err(e)) => {
                warn!(error = %e, "verto.attach failed");
                let mut out = vec![Action::Bye {
                    cause: Cause::NormalTemporaryFailure,
                }];
                out.extend(self.fail(
                    "ice_failed",
                    "the call could not be re-attached to FreeSWITCH",
                ));
                out
            }
            input => self.connected(input, now),
        }
    }

    /// Renegotiating: the caller's answer to FreeSWITCH's re-offer is awaited.
    fn renegotiating(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Negotiate {
                party_id,
                kind,
                sdp,
            } => {
                if !self.is_callers_party(party_id.as_deref()) {
                    debug!(party_id = ?party_id, "negotiate from another party ignored");
                    return Vec::new();
                }
                if kind != "answer" {
                    warn!(%kind, "caller sent a negotiate offer during our renegotiation; ignored");
                    return Vec::new();
                }
                self.reneg_answer(sdp, now)
            }
            input => self.connected(input, now),
        }
    }

    /// What Answered, Detached and Renegotiating share: the caller is connected to us, and
    /// FreeSWITCH may lose or re-offer the call.
    fn connected(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::Hangup { reason } => {
                self.finish(if self.is_inbound() {
                    "the callee hung up"
                } else {
                    "caller hung up"
                });
                vec![Action::Bye {
                    cause: cause::matrix_to_verto(reason.as_deref(), true),
                }]
            }
            Input::Bye { cause_code, cause } => self.on_fs_bye(cause_code, cause),
            // Version 0 callers cannot renegotiate; FreeSWITCH's re-offer will be refused.
            Input::VertoDown if self.setup.version == Version::V0 => {
                self.fail("unknown_error", "the connection to FreeSWITCH was lost")
            }
            Input::VertoDown => {
                info!("verto connection lost; keeping the call until FreeSWITCH re-offers it");
                // A `verto.modify` in flight fails with the socket; its offer must not block
                // the caller's next renegotiation once the call is back.
                self.matrix_media = None;
                self.caller_offer = None;
                self.keypad_update = false;
                self.stage = Stage::Detached {
                    due: now + self.setup.recovery.detach_timeout,
                };
                Vec::new()
            }
            Input::Attach { sdp } => self.on_attach(sdp, now),
            Input::Shutdown => {
                let mut out = vec![Action::Bye {
                    cause: Cause::NormalClearing,
                }];
                out.extend(self.fail("user_hangup", "the bridge is shutting down"));
                out
            }
            input => self.ignored(input),
        }
    }

    /// Inbound, before FreeSWITCH has our answer: placing the call, ringing, or collecting
    /// the answering device's candidates. Endings from either side end both.
    fn inbound_ringing(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let placing = self.state() == State::Placing;
        match input {
            Input::RoomReady { .. } if placing => self.ring(now),
            Input::RoomFailed { why } if placing => {
                warn!(%why, "no room to ring the user in");
                self.finish("no room to ring the user in");
                vec![Action::Bye {
                    cause: Cause::DestinationOutOfOrder,
                }]
            }
            Input::CalleeAnswer { party_id, sdp } if self.state() == State::Inviting => {
                self.on_callee_answer(party_id, sdp, now)
            }
            Input::CalleeAnswer { party_id, .. } => {
                debug!(
                    ?party_id,
                    "a later answer ignored: select_answer tells that device"
                );
                Vec::new()
            }
            Input::Reject => self.callee_declined(Cause::CallRejected, "the call was declined"),
            Input::Hangup { reason } => {
                let cause = match reason.as_deref() {
                    Some("user_busy") => Cause::UserBusy,
                    Some("invite_timeout") => Cause::NoAnswer,
                    _ => Cause::CallRejected,
                };
                self.callee_declined(cause, "the callee hung up before the call was connected")
            }
            Input::Bye { cause_code, cause } => {
                info!(
                    ?cause_code,
                    ?cause,
                    "FreeSWITCH ended the call before it was answered"
                );
                if placing {
                    self.finish("the caller hung up before the call rang");
                    return Vec::new();
                }
                let mut out = self.end_matrix("user_hangup", "the caller hung up");
                if self.setup.notices {
                    out.push(Action::Notice {
                        text: "📞 Missed call: the caller hung up.".into(),
                    });
                }
                self.finish("the caller hung up before the answer");
                out
            }
            // FreeSWITCH hangs up unanswered calls of a lost socket (cause 27).
            Input::VertoDown if placing => {
                self.finish("the connection to FreeSWITCH was lost");
                Vec::new()
            }
            Input::VertoDown => self.fail("unknown_error", "the connection to FreeSWITCH was lost"),
            Input::Shutdown => {
                let mut out = vec![Action::Bye {
                    cause: Cause::SystemShutdown,
                }];
                if placing {
                    self.finish("the bridge is shutting down");
                } else {
                    out.extend(self.fail("unknown_error", "the bridge is shutting down"));
                }
                out
            }
            input => self.ignored(input),
        }
    }

    /// The room is ready: say who calls, then ring. The invite lives as long as the ringing
    /// has left, so the user's devices stop when we give up.
    fn ring(&mut self, now: Instant) -> Vec<Action> {
        let Direction::Inbound { user, notice, .. } = &self.setup.direction else {
            return Vec::new();
        };
        let s = &self.setup;
        let lifetime = s.expires_at.saturating_duration_since(now);
        info!(%user, ?lifetime, "ringing the Matrix user");
        let out = vec![
            Action::Notice {
                text: notice.clone(),
            },
            Action::Send(CallEventOut::Invite {
                call_id: s.call_id.clone(),
                party_id: s.our_party.clone(),
                invitee: user.clone(),
                lifetime_ms: lifetime.as_millis() as u64,
                stream_ids: sdp::stream_ids(&s.offer),
                sdp: s.offer.clone(),
            }),
        ];
        self.stage = Stage::Inviting { early: Vec::new() };
        out
    }

    fn callee_declined(&mut self, cause: Cause, why: &str) -> Vec<Action> {
        info!(%cause, "the callee declined");
        self.finish(why);
        vec![Action::Bye { cause }]
    }

    /// The first device to answer gets the call; `m.call.select_answer` stops the others.
    fn on_callee_answer(
        &mut self,
        party_id: Option<String>,
        answer: String,
        now: Instant,
    ) -> Vec<Action> {
        let Stage::Inviting { early } = std::mem::replace(&mut self.stage, Stage::Placing) else {
            return Vec::new();
        };
        info!(party_id = ?party_id, "the callee answered");
        if sdp::media_rejected(&answer) {
            // The browser has none of the codecs FreeSWITCH offered (e.g. a leg inheriting
            // L16 or G.729 from the caller): no media could ever flow.
            warn!("the callee's answer refuses all media: no common codec");
            self.stage = Stage::Inviting { early: Vec::new() };
            let mut out = vec![Action::Bye {
                cause: Cause::IncompatibleDestination,
            }];
            out.extend(self.fail(
                "user_media_failed",
                "the callee's client has none of the codecs FreeSWITCH offered",
            ));
            return out;
        }
        let mut out = Vec::new();
        if let Some(p) = &party_id {
            out.push(Action::Send(CallEventOut::SelectAnswer {
                call_id: self.setup.call_id.clone(),
                party_id: self.setup.our_party.clone(),
                selected: p.clone(),
            }));
        }
        self.setup.caller_party = party_id.clone();
        self.peer_answer = Some(answer.clone());
        let mine: Vec<TrickleCandidate> = early
            .into_iter()
            .filter(|(p, _)| party_id.is_none() || *p == party_id)
            .map(|(_, c)| c)
            .collect();
        let wait = self.setup.candidate_wait;
        self.stage = Stage::Connecting {
            due: now + wait,
            give_up: now + (4 * wait).max(Duration::from_secs(10)),
            answer: answer.clone(),
        };
        let (end, _) = add_capped(&mut self.trickled, mine, self.setup.max_candidates);
        if end || sdp::is_complete(&answer) {
            out.extend(self.answer_verto(now));
        }
        out
    }

    /// Candidates of the user's devices: kept by party while ringing, and for the answering
    /// device added to its answer until its end-of-candidates marker.
    fn callee_candidates(
        &mut self,
        party_id: Option<String>,
        candidates: Vec<TrickleCandidate>,
        now: Instant,
    ) -> Vec<Action> {
        let max = self.setup.max_candidates;
        match &mut self.stage {
            Stage::Inviting { early } => {
                let room = (4 * max).saturating_sub(early.len());
                early.extend(
                    candidates
                        .into_iter()
                        .take(room)
                        .map(|c| (party_id.clone(), c)),
                );
                Vec::new()
            }
            Stage::Connecting { .. } => {
                let (end, _) = add_capped(&mut self.trickled, candidates, max);
                if end {
                    return self.answer_verto(now);
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The candidate wait is over without the marker. matrix-js-sdk sends an answering
    /// device's first batch anywhere from a few hundred ms to seconds after the answer; with
    /// none usable yet, FreeSWITCH would hang up (cause 88), so the wait goes on, bounded.
    fn connecting_timeout(&mut self, now: Instant) -> Vec<Action> {
        let wait = self.setup.candidate_wait;
        let Stage::Connecting {
            answer,
            due,
            give_up,
        } = &mut self.stage
        else {
            return Vec::new();
        };
        let usable = sdp::merge_candidates(answer, &self.trickled).is_ok_and(|m| m.usable > 0);
        if !usable && now < *give_up {
            debug!("no usable candidate from the answering device yet; waiting on");
            *due = (now + wait).min(*give_up);
            return Vec::new();
        }
        debug!("candidate wait over without end-of-candidates; answering FreeSWITCH");
        self.answer_verto(now)
    }

    /// Sends the callee's answer, with its candidates, to FreeSWITCH: from here on the call
    /// is answered as any other.
    fn answer_verto(&mut self, now: Instant) -> Vec<Action> {
        let Stage::Connecting { answer, .. } = std::mem::replace(&mut self.stage, Stage::Answered)
        else {
            return Vec::new();
        };
        let merged = sdp::merge_candidates(&answer, &self.trickled);
        match merged {
            Ok(m) if m.usable > 0 => {
                info!(usable = m.usable, "answering FreeSWITCH");
                let hangup_due = self.setup.max_duration.map(|d| now + d);
                self.timers.set(Timer::MaxLength, hangup_due);
                vec![Action::AnswerVerto { sdp: m.sdp }]
            }
            Ok(_) => {
                self.stage = Stage::Connecting {
                    answer,
                    due: now,
                    give_up: now,
                };
                let mut out = vec![Action::Bye {
                    cause: Cause::IncompatibleDestination,
                }];
                out.extend(self.fail(
                    "ice_failed",
                    "no usable ICE candidates: FreeSWITCH needs UDP candidates with IP addresses",
                ));
                out
            }
            Err(e) => {
                self.stage = Stage::Connecting {
                    answer,
                    due: now,
                    give_up: now,
                };
                let mut out = vec![Action::Bye {
                    cause: Cause::IncompatibleDestination,
                }];
                out.extend(self.fail(
                    "unknown_error",
                    &format!("the answer is not usable SDP: {e}"),
                ));
                out
            }
        }
    }

    /// An input the state does not act on: replies that came too late are dropped quietly,
    /// the rest logged.
    fn ignored(&self, input: Input) -> Vec<Action> {
        match input {
            Input::InviteResult(_)
            | Input::ModifyResult(_)
            | Input::AttachResult(_)
            | Input::AnswerResult(_) => {}
            Input::Negotiate { kind, .. } => {
                warn!(%kind, "m.call.negotiate from the caller is not supported in this state; ignored");
            }
            input => {
                warn!(state = ?self.state(), ?input, "input not allowed in this state; ignored")
            }
        }
        Vec::new()
    }

    fn on_dtmf(&self, digits: String, event_id: Option<String>) -> Vec<Action> {
        if matches!(
            self.state(),
            State::Ringing | State::EarlyMedia | State::Answered
        ) {
            info!(%digits, "sending the caller's digits");
            return vec![Action::SendDtmf {
                digits,
                react_to: event_id,
            }];
        }
        vec![Action::Notice {
            text: "The call is not connected to FreeSWITCH yet; send the digits once it rings or is answered.".into(),
        }]
    }

    fn on_candidates(
        &mut self,
        party_id: Option<String>,
        candidates: Vec<TrickleCandidate>,
        now: Instant,
    ) -> Vec<Action> {
        if !self.is_callers_party(party_id.as_deref()) {
            debug!(party_id = ?party_id, "candidates from another party ignored");
            return Vec::new();
        }
        if self.state() == State::Renegotiating {
            return self.reneg_candidates(candidates, now);
        }
        if matches!(self.state(), State::Inviting | State::Connecting) {
            return self.callee_candidates(party_id, candidates, now);
        }
        if self.state() != State::Collecting {
            debug!(
                n = candidates.len(),
                "candidates after dialling cannot reach FreeSWITCH (no trickle in verto)"
            );
            return Vec::new();
        }
        let max = self.setup.max_candidates;
        let (end, ignored) = add_capped(&mut self.trickled, candidates, max);
        if ignored > 0 && self.ignored_candidates == 0 {
            warn!(max, "too many candidates; ignoring the rest");
        }
        self.ignored_candidates += ignored;
        if end {
            debug!(
                candidates = self.trickled.len(),
                "end-of-candidates: dialling"
            );
            return self.flush(now);
        }
        self.arm_quiet(now);
        Vec::new()
    }

    fn on_select_answer(&mut self, party_id: String) -> Vec<Action> {
        if self.is_inbound() {
            debug!(%party_id, "select_answer from a callee ignored: the caller selects");
            return Vec::new();
        }
        if party_id == self.setup.our_party {
            debug!("caller selected our answer");
            return Vec::new();
        }
        info!(selected = %party_id, "caller selected another answer; ending our leg quietly");
        match self.state() {
            State::Collecting => {
                self.finish("answered elsewhere");
                Vec::new()
            }
            State::Dialling => {
                self.cancel_dial_with(Cause::LoseRace);
                Vec::new()
            }
            _ => {
                self.finish("answered elsewhere");
                vec![Action::Bye {
                    cause: Cause::LoseRace,
                }]
            }
        }
    }

    fn on_invite_result(&mut self, res: Result<(), DialFailure>) -> Vec<Action> {
        match res {
            Ok(()) => {
                // verto.media may have come first.
                self.stage = match std::mem::replace(&mut self.stage, Stage::Ringing) {
                    Stage::Dialling {
                        early_sdp: Some(sdp),
                        ..
                    } => Stage::EarlyMedia { sdp },
                    _ => Stage::Ringing,
                };
                Vec::new()
            }
            Err(f) if f.timed_out => {
                warn!(error = %f.message, "verto.invite got no reply; hanging up in case FreeSWITCH created the call");
                let mut out = vec![Action::Bye {
                    cause: Cause::NormalTemporaryFailure,
                }];
                out.extend(self.fail(
                    "unknown_error",
                    "FreeSWITCH did not answer the call request in time",
                ));
                out
            }
            Err(f) => {
                warn!(error = %f.message, "verto.invite failed");
                let end = match f.cause_code {
                    Some(c) => cause::verto_to_matrix(Some(c), None, false),
                    None => cause::MatrixEnd {
                        reason: "unknown_error",
                        human: "FreeSWITCH is not reachable",
                    },
                };
                self.fail(end.reason, end.human)
            }
        }
    }

    fn on_fs_answer(&mut self, sdp: Option<String>, now: Instant) -> Vec<Action> {
        let early = match std::mem::replace(&mut self.stage, Stage::Ringing) {
            Stage::Dialling { early_sdp, .. } => early_sdp,
            Stage::EarlyMedia { sdp } => Some(sdp),
            _ => None,
        };
        let Some(answer) = sdp.or(early) else {
            warn!("FreeSWITCH answered without any SDP");
            let mut out = vec![Action::Bye {
                cause: Cause::IncompatibleDestination,
            }];
            out.extend(self.fail("unknown_error", "FreeSWITCH answered without SDP"));
            return out;
        };
        self.stage = Stage::Answered;
        info!("FreeSWITCH answered");
        let digits_due = self.setup.digits_on_answer.as_ref().map(|(_, d)| now + *d);
        self.timers.set(Timer::Digits, digits_due);
        let hangup_due = self.setup.max_duration.map(|d| now + d);
        self.timers.set(Timer::MaxLength, hangup_due);
        self.answer(&answer)
    }

    fn on_fs_bye(&mut self, cause_code: Option<i64>, name: Option<String>) -> Vec<Action> {
        let answered = self.answered();
        let end = cause::verto_to_matrix(cause_code, name.as_deref(), answered);
        info!(?cause_code, cause = ?name, "FreeSWITCH hung up");
        if answered && end.reason == "user_hangup" {
            // A normal hangup needs no explanation.
            let mut out = self.flush_far_digits();
            out.extend(self.end_matrix(end.reason, end.human));
            self.finish(end.human);
            return out;
        }
        self.fail(end.reason, end.human)
    }

    /// FreeSWITCH re-offered the call: renegotiate with the caller, first with an altered
    /// fingerprint so that Chromium drops its old DTLS session.
    fn on_attach(&mut self, sdp: String, now: Instant) -> Vec<Action> {
        if self.setup.version == Version::V0 {
            let mut out = vec![Action::Bye {
                cause: Cause::NormalClearing,
            }];
            out.extend(self.fail(
                "unknown_error",
                "media could not be renegotiated with a version 0 client",
            ));
            return out;
        }
        info!("FreeSWITCH re-offered the call; renegotiating with the caller");
        let offer = match self.setup.direction {
            Direction::Outbound => sdp::repair_answer(&sdp, &self.setup.offer),
            Direction::Inbound { .. } => sdp::offer_for_browser(&sdp),
        };
        let altered = sdp::alter_fingerprint(&offer);
        self.stage = Stage::Renegotiating(Reneg {
            offer,
            round: 1,
            answer: None,
            candidates: Vec::new(),
            deadline: now + self.setup.recovery.first_round,
            attach_by: None,
        });
        vec![self.negotiate_offer(altered)]
    }

    /// A renegotiation offer from the caller while answered.
    fn on_caller_offer(&mut self, party_id: Option<String>, sdp: String) -> Vec<Action> {
        if !self.is_callers_party(party_id.as_deref()) {
            debug!(party_id = ?party_id, "negotiate from another party ignored");
            return Vec::new();
        }
        if self.caller_offer.is_some() || self.keypad_update {
            warn!("a negotiate offer while another is with FreeSWITCH; ignored");
            return Vec::new();
        }
        if let Some(out) = self.local_hold(&sdp) {
            return out;
        }
        // Hold, resume or an ICE restart from the caller. FreeSWITCH needs the
        // candidates in the SDP: new ones if the offer has them, else the call's own
        // (without an ICE restart they are unchanged).
        let merged = match sdp::merge_candidates(&sdp, &[]) {
            Ok(m) if m.usable > 0 => Ok(m),
            _ => sdp::merge_candidates(&sdp, &self.trickled),
        };
        match merged {
            Ok(m) if m.usable > 0 => {
                info!("caller renegotiates (hold/resume); passing the offer to FreeSWITCH");
                self.caller_offer = Some(sdp);
                vec![Action::Modify { sdp: m.sdp }]
            }
            _ => {
                warn!("caller's negotiate offer has no usable candidates; ignored");
                Vec::new()
            }
        }
    }

    fn on_modify_result(&mut self, res: Result<String, String>) -> Vec<Action> {
        if std::mem::take(&mut self.keypad_update) {
            match res {
                Ok(fs) if sdp::has_telephone_event(&fs) => {
                    info!("FreeSWITCH now receives the callee's keypad digits");
                }
                Ok(_) => warn!(
                    "FreeSWITCH took no telephone-event: the callee's keypad will not reach it"
                ),
                Err(e) => warn!(error = %e, "verto.modify for the callee's keypad failed"),
            }
            return Vec::new();
        }
        let Some(offer) = self.caller_offer.take() else {
            return Vec::new();
        };
        match res {
            Ok(fs_sdp) => {
                let answer = sdp::repair_answer(&fs_sdp, &offer);
                let out = vec![self.negotiate(SdpKind::Answer, answer.clone())];
                self.matrix_media = Some((offer, answer));
                out
            }
            Err(e) => {
                // FreeSWITCH hangs the call up itself when it cannot renegotiate.
                warn!(error = %e, "verto.modify updateMedia failed");
                Vec::new()
            }
        }
    }

    /// Inbound, once FreeSWITCH took the answer: offers the callee's answer back to FreeSWITCH
    /// (`verto.modify updateMedia`) when it names `telephone-event` and FreeSWITCH's offer did
    /// not. FreeSWITCH (1.10.12, `switch_core_media_negotiate_sdp`) sets the payload type it
    /// receives telephone events on only from its own offer, or from an offer it is sent: for
    /// an answer it sets only the one it sends. Without this, the RFC 4733 events of the
    /// callee's dial pad reach FreeSWITCH as unknown packets and are dropped. FreeSWITCH's
    /// answer is the same media again (same ICE credentials, fingerprint and codec) and is not
    /// passed on. The update resets FreeSWITCH's ICE state, which costs nothing this early:
    /// live, it lands 20 ms after the answer, during the DTLS handshake, and the first digit
    /// pressed on "connected" is decoded 140 ms after the answer.
    fn keypad_update(&mut self) -> Vec<Action> {
        let Direction::Inbound {
            fs_telephone_event: false,
            ..
        } = self.setup.direction
        else {
            return Vec::new();
        };
        let Some(answer) = self.peer_answer.as_deref() else {
            return Vec::new();
        };
        if !sdp::has_telephone_event(answer) || self.caller_offer.is_some() {
            return Vec::new();
        }
        match sdp::merge_candidates(answer, &self.trickled) {
            Ok(m) if m.usable > 0 => {
                info!("offering the callee's telephone-event to FreeSWITCH, for its keypad");
                self.keypad_update = true;
                vec![Action::Modify { sdp: m.sdp }]
            }
            _ => Vec::new(),
        }
    }

    /// The call ended (caller hangup, expiry, shutdown, answered elsewhere) while
    /// `verto.invite` was in flight. Matrix has already been told, so only FreeSWITCH's side is
    /// left: a channel it created must be hung up, and nothing may go to the caller again.
    fn cancel_dial(&mut self, cause: Cause, input: Input) -> Vec<Action> {
        match input {
            Input::InviteResult(Ok(())) | Input::Answer { .. } => {
                self.finish("ended while dialling");
                vec![Action::Bye { cause }]
            }
            Input::InviteResult(Err(_)) | Input::Bye { .. } | Input::VertoDown => {
                self.finish("ended while dialling");
                Vec::new()
            }
            input => {
                debug!(?input, "input ignored: the dial is being cancelled");
                Vec::new()
            }
        }
    }

    fn finish(&mut self, why: &str) {
        self.stage = Stage::Ended;
        self.end_reason.get_or_insert_with(|| why.to_owned());
    }

    /// Tells the caller the call is over and ends the machine. (Where a dial in flight must
    /// still be cancelled, callers use `end_matrix` and `cancel_dial_with` instead.)
    fn fail(&mut self, reason: &'static str, human: &str) -> Vec<Action> {
        let mut out = self.flush_far_digits();
        out.extend(self.end_matrix(reason, human));
        if self.setup.notices {
            let text = if self.answered() {
                format!("📞 Call ended: {human}.")
            } else {
                format!("📞 Call failed: {human}.")
            };
            out.push(Action::Notice { text });
        }
        self.finish(human);
        out
    }

    fn flush_far_digits(&mut self) -> Vec<Action> {
        self.timers.set(Timer::FarDigits, None);
        if self.far_digits.is_empty() {
            return Vec::new();
        }
        let digits = std::mem::take(&mut self.far_digits);
        vec![Action::Notice {
            text: format!("🔢 The other side pressed: {digits}"),
        }]
    }

    /// Tells the caller the call is over (see [`ending_event`]).
    fn end_matrix(&mut self, reason: &'static str, human: &str) -> Vec<Action> {
        self.end_reason.get_or_insert_with(|| human.to_owned());
        let s = &self.setup;
        // A caller ends with a hangup whether or not it was answered; only a callee rejects.
        let answered = self.answered() || self.is_inbound();
        let event = ending_event(s.version, answered, &s.call_id, &s.our_party, reason);
        info!(%reason, why = %human, "ending the Matrix call");
        vec![Action::Send(event)]
    }

    /// A hold or resume from the caller (an offer that changes nothing but the direction) is
    /// answered here, from our current answer, and becomes FreeSWITCH's own hold. Passing it
    /// on as `updateMedia` makes FreeSWITCH reset ICE (`switch_core_media_clear_ice`), and its
    /// media then stops until the browser's next connectivity check, up to 2.5 s.
    fn local_hold(&mut self, offer: &str) -> Option<Vec<Action>> {
        let (current, ours) = self.matrix_media.as_ref()?;
        let dir = sdp::direction_change(current, offer)?;
        let answer = sdp::with_direction(ours, dir.answer());
        info!(
            hold = dir.is_hold(),
            "caller holds or resumes; answering it and telling FreeSWITCH"
        );
        let out = vec![
            self.negotiate(SdpKind::Answer, answer.clone()),
            Action::Hold { on: dir.is_hold() },
        ];
        self.matrix_media = Some((offer.to_owned(), answer));
        Some(out)
    }

    fn negotiate_offer(&self, sdp: String) -> Action {
        self.negotiate(SdpKind::Offer, sdp)
    }

    /// An `m.call.negotiate` event to the caller.
    fn negotiate(&self, kind: SdpKind, sdp: String) -> Action {
        let s = &self.setup;
        Action::Send(CallEventOut::Negotiate {
            call_id: s.call_id.clone(),
            party_id: s.our_party.clone(),
            lifetime_ms: s.recovery.answer_timeout.as_millis() as u64,
            kind,
            stream_ids: sdp::stream_ids(&sdp),
            sdp,
        })
    }

    fn reneg_answer(&mut self, answer: String, now: Instant) -> Vec<Action> {
        let rec = self.setup.recovery;
        let Stage::Renegotiating(r) = &mut self.stage else {
            return Vec::new();
        };
        if r.round == 1 {
            // Chromium has dropped its DTLS session for the altered fingerprint; now the real one.
            debug!("first renegotiation round answered; sending the real offer");
            r.round = 2;
            r.deadline = now + rec.answer_timeout;
            let offer = r.offer.clone();
            return vec![self.negotiate_offer(offer)];
        }
        if r.answer.is_some() {
            debug!("second negotiate answer ignored");
            return Vec::new();
        }
        let complete = sdp::is_complete(&answer);
        r.answer = Some(answer);
        if complete {
            return self.reneg_attach();
        }
        // The caller still listens where it did (its offer's and trickled candidates, which
        // `reneg_attach` falls back to), so waiting ~2 s for matrix-js-sdk's new batch only
        // delays the audio: attach after a short quiet window unless candidates keep coming.
        r.deadline = now + rec.quiet;
        r.attach_by = Some(now + rec.candidate_wait);
        Vec::new()
    }

    fn reneg_candidates(&mut self, candidates: Vec<TrickleCandidate>, now: Instant) -> Vec<Action> {
        let quiet = self.setup.recovery.quiet;
        let max = self.setup.max_candidates;
        let Stage::Renegotiating(r) = &mut self.stage else {
            return Vec::new();
        };
        let (end, _) = add_capped(&mut r.candidates, candidates, max);
        if r.answer.is_none() {
            // Candidates before the answer: keep them for when it comes.
            return Vec::new();
        }
        if end {
            return self.reneg_attach();
        }
        // matrix-js-sdk never re-sends the marker after a renegotiation: attach once the
        // batch has gone quiet, and no later than `attach_by`.
        r.deadline = (now + quiet).min(r.attach_by.unwrap_or(now + quiet));
        Vec::new()
    }

    fn reneg_timeout(&mut self, now: Instant) -> Vec<Action> {
        let rec = self.setup.recovery;
        let Stage::Renegotiating(r) = &mut self.stage else {
            return Vec::new();
        };
        match (r.round, r.answer.is_some()) {
            (1, _) => {
                info!("no answer to the fingerprint-altered offer; sending the real offer");
                r.round = 2;
                r.deadline = now + rec.answer_timeout;
                let offer = r.offer.clone();
                vec![self.negotiate_offer(offer)]
            }
            (_, false) => {
                let mut out = vec![Action::Bye {
                    cause: Cause::NormalTemporaryFailure,
                }];
                out.extend(self.fail(
                    "ice_failed",
                    "the caller did not answer the media renegotiation",
                ));
                out
            }
            (_, true) => self.reneg_attach(),
        }
    }

    /// Sends the caller's answer to FreeSWITCH with its candidates (the new ones, or the
    /// original call's when none came: without an ICE restart they are still valid).
    fn reneg_attach(&mut self) -> Vec<Action> {
        let stage = std::mem::replace(&mut self.stage, Stage::Answered);
        let Stage::Renegotiating(r) = stage else {
            self.stage = stage;
            return Vec::new();
        };
        let Some(answer) = r.answer else {
            return Vec::new();
        };
        // A caller that sent no new candidates still listens where it did: its trickled ones
        // and those inside its original offer (aiortc and v0 clients put them there).
        let cands = if r.candidates.is_empty() {
            let mut c = sdp::candidates_of(self.peer_sdp());
            c.extend(self.trickled.iter().cloned());
            c
        } else {
            r.candidates
        };
        match sdp::merge_candidates(&answer, &cands) {
            Ok(m) if m.usable > 0 => {
                info!(usable = m.usable, "re-attaching the call to FreeSWITCH");
                vec![Action::Attach { sdp: m.sdp }]
            }
            Ok(_) => {
                let mut out = vec![Action::Bye {
                    cause: Cause::IncompatibleDestination,
                }];
                out.extend(self.fail(
                    "ice_failed",
                    "no usable ICE candidates after the renegotiation",
                ));
                out
            }
            Err(e) => {
                let mut out = vec![Action::Bye {
                    cause: Cause::IncompatibleDestination,
                }];
                out.extend(self.fail(
                    "unknown_error",
                    &format!("the renegotiation answer is not usable SDP: {e}"),
                ));
                out
            }
        }
    }

    fn answer(&mut self, fs_sdp: &str) -> Vec<Action> {
        let sdp = sdp::repair_answer(fs_sdp, &self.setup.offer);
        self.matrix_media = Some((self.setup.offer.clone(), sdp.clone()));
        let s = &self.setup;
        let answer = CallEventOut::Answer {
            call_id: s.call_id.clone(),
            voip: voip(s),
            stream_ids: sdp::stream_ids(&sdp),
            sdp,
        };
        match s.version {
            // FreeSWITCH's answer already holds all its candidates; the spec still wants the
            // end-of-candidates marker.
            Version::V1 => vec![
                Action::Send(answer),
                Action::Send(CallEventOut::EndOfCandidates {
                    call_id: s.call_id.clone(),
                    party_id: s.our_party.clone(),
                }),
            ],
            Version::V0 => vec![Action::Send(answer)],
        }
    }

    fn flush(&mut self, _now: Instant) -> Vec<Action> {
        match sdp::merge_candidates(&self.setup.offer, &self.trickled) {
            Err(e) => self.fail(
                "unknown_error",
                &format!("the offer is not usable SDP: {e}"),
            ),
            Ok(m) => {
                for (c, why) in &m.dropped {
                    debug!(candidate = %c, reason = %why, "candidate left out");
                }
                if m.usable == 0 {
                    return self.fail(
                        "ice_failed",
                        "no usable ICE candidates: FreeSWITCH needs UDP candidates with IP addresses (mDNS .local names and TCP cannot be used)",
                    );
                }
                info!(
                    usable = m.usable,
                    dropped = m.dropped.len(),
                    "dialling FreeSWITCH"
                );
                self.stage = Stage::Dialling {
                    cancel: None,
                    early_sdp: None,
                };
                vec![Action::Dial { sdp: m.sdp }]
            }
        }
    }
}

/// Adds trickled candidates to `list` up to `max` (the flood guard). Returns whether the
/// end-of-candidates marker was among them, and how many were left out.
fn add_capped(
    list: &mut Vec<TrickleCandidate>,
    new: Vec<TrickleCandidate>,
    max: usize,
) -> (bool, usize) {
    let end = new.iter().any(TrickleCandidate::is_end_of_candidates);
    let mut ignored = 0;
    for c in new.into_iter().filter(|c| !c.is_end_of_candidates()) {
        if list.len() < max {
            list.push(c);
        } else {
            ignored += 1;
        }
    }
    (end, ignored)
}

/// The Matrix event that ends a call, with its content: `m.call.reject` before our answer for
/// a v1 caller (matrix-js-sdk ignores a callee's hangup before the answer), else
/// `m.call.hangup`. Shared by the machine and by the bridge's refusals, so both end a call the
/// same way.
pub fn ending_event(
    version: Version,
    answered: bool,
    call_id: &str,
    our_party: &str,
    reason: &str,
) -> CallEventOut {
    let (call_id, reason) = (call_id.to_owned(), reason.to_owned());
    let party_id = our_party.to_owned();
    match (version, answered) {
        (Version::V1, false) => CallEventOut::Reject {
            call_id,
            party_id,
            reason,
        },
        (Version::V1, true) => CallEventOut::Hangup {
            call_id,
            voip: Voip::V1 { party_id },
            reason,
        },
        (Version::V0, _) => CallEventOut::Hangup {
            call_id,
            voip: Voip::V0,
            reason,
        },
    }
}

/// Our version and party in the caller's terms.
fn voip(s: &Setup) -> Voip {
    match s.version {
        Version::V0 => Voip::V0,
        Version::V1 => Voip::V1 {
            party_id: s.our_party.clone(),
        },
    }
}

/// The default pause a caller gets to trickle candidates, exposed for tests.
pub const DEFAULT_CANDIDATE_WAIT: Duration = Duration::from_millis(2500);

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const OFFER: &str = include_str!("../../tests/fixtures/chromium_offer.sdp");
    const FS_ANSWER: &str = "v=0\r\no=FreeSWITCH 1 2 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nt=0 0\r\nm=audio 16458 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\na=candidate:1 1 udp 2130706431 127.0.0.1 16458 typ host generation 0\r\na=end-of-candidates\r\n";

    pub(in crate::call) fn setup(version: Version, now: Instant) -> Setup {
        Setup {
            call_id: "c1".into(),
            caller_party: Some("CALLER".into()),
            version,
            offer: OFFER.into(),
            direction: Direction::Outbound,
            candidate_wait: DEFAULT_CANDIDATE_WAIT,
            our_party: "BOT".into(),
            expires_at: now + Duration::from_secs(60),
            candidate_deadline: now + DEFAULT_CANDIDATE_WAIT,
            candidate_quiet: Duration::ZERO,
            max_candidates: 16,
            max_sdp_bytes: 65536,
            notices: false,
            digits_on_answer: None,
            max_duration: None,
            dtmf_burst: Duration::from_millis(1500),
            recovery: Recovery::default(),
        }
    }

    pub(in crate::call) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn udp(n: u8) -> TrickleCandidate {
        TrickleCandidate {
            candidate: format!("candidate:{n} 1 udp 2122194687 127.0.0.{n} 5000 typ host"),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
        }
    }
    pub(in crate::call) fn end() -> TrickleCandidate {
        TrickleCandidate {
            candidate: String::new(),
            sdp_mid: None,
            sdp_m_line_index: None,
        }
    }
    pub(in crate::call) fn cands(c: Vec<TrickleCandidate>) -> Input {
        Input::Candidates {
            party_id: Some("CALLER".into()),
            candidates: c,
        }
    }
    fn sent_types(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::Dial { .. } => "dial",
                Action::Bye { .. } => "bye",
                Action::Send(event) => event.event_type(),
                Action::SendDtmf { .. } => "dtmf",
                Action::Notice { .. } => "notice",
                Action::Attach { .. } => "attach",
                Action::Modify { .. } => "modify",
                Action::Hold { .. } => "hold",
                Action::FindRoom { .. } => "find_room",
                Action::AnswerVerto { .. } => "answer_verto",
            })
            .collect()
    }

    fn dialled(version: Version) -> (Call, Instant) {
        let now = Instant::now();
        let mut c = Call::new(setup(version, now));
        assert!(c.start(now).is_empty(), "trickle offer waits");
        let a = c.handle(cands(vec![udp(1), end()]), now);
        assert_eq!(sent_types(&a), ["dial"]);
        (c, now)
    }

    #[test]
    fn happy_path_v1_with_marker() {
        let (mut c, now) = dialled(Version::V1);
        assert!(c.handle(Input::InviteResult(Ok(())), now).is_empty());
        assert_eq!(c.state(), State::Ringing);
        let a = c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        assert_eq!(sent_types(&a), ["m.call.answer", "m.call.candidates"]);
        let Action::Send(event) = &a[0] else { panic!() };
        let content = event.content();
        assert_eq!(content["version"], "1");
        assert_eq!(content["party_id"], "BOT");
        assert_eq!(content["capabilities"]["m.call.dtmf"], true);
        let sdp = content["answer"]["sdp"].as_str().unwrap();
        assert!(sdp.contains("a=mid:0") && sdp.contains("a=group:BUNDLE 0"));
        let a = c.handle(
            Input::Bye {
                cause_code: Some(16),
                cause: None,
            },
            now,
        );
        assert_eq!(sent_types(&a), ["m.call.hangup"]);
        assert!(c.is_ended());
    }

    #[test]
    fn dial_waits_for_deadline_without_marker() {
        let now = Instant::now();
        let mut c = Call::new(setup(Version::V1, now));
        c.start(now);
        assert!(c.handle(cands(vec![udp(1)]), now).is_empty());
        assert!(c.handle(cands(vec![udp(2)]), now).is_empty());
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, now + DEFAULT_CANDIDATE_WAIT);
        let a = c.handle_timeout(due);
        let [Action::Dial { sdp }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(sdp.matches("a=candidate").count(), 2);
    }

    /// Without the marker, the quiet period restarts with each candidates event once every
    /// transport is covered: three host candidates 200 ms apart all reach FreeSWITCH, and the
    /// dial comes a quiet period after the last, long before `candidate_wait`.
    #[test]
    fn dial_after_quiet_period_once_every_transport_is_covered() {
        let now = Instant::now();
        let quiet = ms(400);
        let mut c = Call::new(Setup {
            candidate_quiet: quiet,
            ..setup(Version::V1, now)
        });
        assert!(c.start(now).is_empty());
        assert_eq!(
            c.poll_timeout(),
            Some(now + DEFAULT_CANDIDATE_WAIT),
            "not covered"
        );
        for (i, at) in [(1, 0), (2, 200), (3, 400)] {
            assert!(c.handle(cands(vec![udp(i)]), now + ms(at)).is_empty());
            assert_eq!(c.poll_timeout(), Some(now + ms(at) + quiet));
            // A timer that fires early (before the period is over) dials nothing.
            assert!(c.handle_timeout(now + ms(at) + ms(100)).is_empty());
        }
        let a = c.handle_timeout(now + ms(800));
        let [Action::Dial { sdp }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(sdp.matches("a=candidate").count(), 3, "{sdp}");
    }

    /// Candidates FreeSWITCH cannot use (TCP, mDNS) do not cover a transport: the bridge
    /// waits the whole `candidate_wait` for a usable one rather than dial a call without audio.
    #[test]
    fn unusable_candidates_do_not_start_the_quiet_period() {
        let now = Instant::now();
        let mut c = Call::new(Setup {
            candidate_quiet: ms(400),
            ..setup(Version::V1, now)
        });
        c.start(now);
        let tcp = TrickleCandidate {
            candidate: "candidate:9 1 tcp 1518214911 127.0.0.1 9 typ host tcptype active".into(),
            ..udp(9)
        };
        assert!(c.handle(cands(vec![tcp]), now).is_empty());
        assert_eq!(c.poll_timeout(), Some(now + DEFAULT_CANDIDATE_WAIT));
        assert!(c.handle(cands(vec![udp(1)]), now + ms(1000)).is_empty());
        assert_eq!(c.poll_timeout(), Some(now + ms(1400)));
    }

    /// The quiet period never outlasts the overall wait.
    #[test]
    fn quiet_period_is_capped_by_the_candidate_wait() {
        let now = Instant::now();
        let mut c = Call::new(Setup {
            candidate_quiet: ms(400),
            ..setup(Version::V1, now)
        });
        c.start(now);
        let late = now + DEFAULT_CANDIDATE_WAIT - ms(100);
        assert!(c.handle(cands(vec![udp(1)]), late).is_empty());
        assert_eq!(c.poll_timeout(), Some(now + DEFAULT_CANDIDATE_WAIT));
    }

    #[test]
    fn no_usable_candidates_rejects_without_dialling() {
        let now = Instant::now();
        let mut c = Call::new(setup(Version::V1, now));
        c.start(now);
        let mdns = TrickleCandidate {
            candidate: "candidate:1 1 udp 1 x.local 5 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: None,
        };
        let a = c.handle(cands(vec![mdns, end()]), now);
        assert_eq!(sent_types(&a), ["m.call.reject"]);
        let Action::Send(event) = &a[0] else { panic!() };
        let content = event.content();
        assert_eq!(content["reason"], "ice_failed");
        assert!(c.is_ended());
    }

    #[test]
    fn v0_caller_gets_v0_events() {
        let (mut c, now) = dialled(Version::V0);
        c.handle(Input::InviteResult(Ok(())), now);
        let a = c.handle(
            Input::Bye {
                cause_code: Some(17),
                cause: Some("USER_BUSY".into()),
            },
            now,
        );
        let [Action::Send(event)] = a.as_slice() else {
            panic!()
        };
        let (event_type, content) = (event.event_type(), event.content());
        assert_eq!(event_type, "m.call.hangup");
        assert_eq!(content["version"], 0);
        assert_eq!(content["reason"], "user_busy");
        assert!(content.get("party_id").is_none());
    }

    #[test]
    fn early_media_then_answer_without_sdp() {
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        assert!(c
            .handle(
                Input::Media {
                    sdp: FS_ANSWER.into()
                },
                now
            )
            .is_empty());
        assert_eq!(c.state(), State::EarlyMedia);
        let a = c.handle(Input::Answer { sdp: None }, now);
        assert_eq!(sent_types(&a), ["m.call.answer", "m.call.candidates"]);
        // Exactly one answer: a repeated answer is ignored.
        assert!(c.handle(Input::Answer { sdp: None }, now).is_empty());
    }

    #[test]
    fn media_before_the_invite_reply_is_kept_for_the_answer() {
        let (mut c, now) = dialled(Version::V1);
        let media = Input::Media {
            sdp: FS_ANSWER.into(),
        };
        assert!(c.handle(media, now).is_empty());
        assert_eq!(c.state(), State::Dialling);
        assert!(c.handle(Input::InviteResult(Ok(())), now).is_empty());
        assert_eq!(c.state(), State::EarlyMedia);
        let a = c.handle(Input::Answer { sdp: None }, now);
        assert_eq!(sent_types(&a), ["m.call.answer", "m.call.candidates"]);
        assert_eq!(c.state(), State::Answered);
    }

    #[test]
    fn busy_before_answer_is_a_reject() {
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        let a = c.handle(
            Input::Bye {
                cause_code: Some(17),
                cause: None,
            },
            now,
        );
        let [Action::Send(event)] = a.as_slice() else {
            panic!()
        };
        let (event_type, content) = (event.event_type(), event.content());
        assert_eq!(event_type, "m.call.reject");
        assert_eq!(content["reason"], "user_busy");
    }

    #[test]
    fn hangup_while_collecting_sends_nothing() {
        let now = Instant::now();
        let mut c = Call::new(setup(Version::V1, now));
        c.start(now);
        c.handle(cands(vec![udp(1)]), now);
        assert!(c.handle(Input::Hangup { reason: None }, now).is_empty());
        assert!(c.is_ended());
        assert!(c.handle_timeout(now + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn hangup_while_dialling_byes_after_created() {
        let (mut c, now) = dialled(Version::V1);
        assert!(c.handle(Input::Hangup { reason: None }, now).is_empty());
        let a = c.handle(Input::InviteResult(Ok(())), now);
        assert_eq!(
            a,
            vec![Action::Bye {
                cause: Cause::OriginatorCancel
            }]
        );
        assert!(c.is_ended());
        // And if the invite had failed, nothing at all.
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::Hangup { reason: None }, now);
        let a = c.handle(
            Input::InviteResult(Err(DialFailure {
                cause_code: None,
                message: "x".into(),
                timed_out: false,
            })),
            now,
        );
        assert!(a.is_empty() && c.is_ended());
    }

    #[test]
    fn hangup_while_ringing_and_after_answer() {
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        let a = c.handle(
            Input::Hangup {
                reason: Some("user_hangup".into()),
            },
            now,
        );
        assert_eq!(
            a,
            vec![Action::Bye {
                cause: Cause::OriginatorCancel
            }]
        );
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        let a = c.handle(Input::Hangup { reason: None }, now);
        assert_eq!(
            a,
            vec![Action::Bye {
                cause: Cause::NormalClearing
            }]
        );
    }

    #[test]
    fn select_answer_of_another_party_ends_quietly() {
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        assert!(c
            .handle(
                Input::SelectAnswer {
                    party_id: "BOT".into()
                },
                now
            )
            .is_empty());
        let a = c.handle(
            Input::SelectAnswer {
                party_id: "OTHER".into(),
            },
            now,
        );
        assert_eq!(
            a,
            vec![Action::Bye {
                cause: Cause::LoseRace
            }]
        );
        assert!(c.is_ended());
    }

    #[test]
    fn invite_failure_and_disconnect() {
        let (mut c, now) = dialled(Version::V1);
        let a = c.handle(
            Input::InviteResult(Err(DialFailure {
                cause_code: None,
                message: "down".into(),
                timed_out: false,
            })),
            now,
        );
        assert_eq!(sent_types(&a), ["m.call.reject"]);
        assert!(c.is_ended());
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        let a = c.handle(Input::VertoDown, now);
        assert_eq!(sent_types(&a), ["m.call.reject"]);
    }

    #[test]
    fn invite_expiry_while_ringing() {
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        let due = c.poll_timeout().unwrap();
        let a = c.handle_timeout(due);
        assert_eq!(sent_types(&a), ["bye", "m.call.reject"]);
    }

    #[test]
    fn invite_expiry_while_dialling_rejects_once_then_byes_the_channel() {
        let (mut c, _) = dialled(Version::V1);
        let due = c.poll_timeout().unwrap();
        let a = c.handle_timeout(due);
        assert_eq!(sent_types(&a), ["m.call.reject"]);
        assert!(
            c.poll_timeout().is_none_or(|d| d > due),
            "the expiry must not fire again"
        );
        assert!(c.handle_timeout(due + Duration::from_secs(1)).is_empty());
        assert!(
            c.handle(Input::Shutdown, due).is_empty(),
            "no second reject"
        );
        let a = c.handle(Input::InviteResult(Ok(())), due);
        assert_eq!(
            a,
            vec![Action::Bye {
                cause: Cause::NoAnswer
            }]
        );
        assert!(c.is_ended());
    }

    #[test]
    fn shutdown_in_each_state() {
        let now = Instant::now();
        let mut c = Call::new(setup(Version::V1, now));
        c.start(now);
        assert_eq!(
            sent_types(&c.handle(Input::Shutdown, now)),
            ["m.call.reject"]
        );
        let (mut c, now) = dialled(Version::V1);
        assert_eq!(
            sent_types(&c.handle(Input::Shutdown, now)),
            ["m.call.reject"]
        );
        assert_eq!(
            sent_types(&c.handle(Input::InviteResult(Ok(())), now)),
            ["bye"]
        );
        assert!(c.is_ended());
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        assert_eq!(
            sent_types(&c.handle(Input::Shutdown, now)),
            ["bye", "m.call.hangup"]
        );
    }

    #[test]
    fn offer_without_trickle_option_or_candidates_waits_for_trickled_ones() {
        // aiortc's offer: no a=ice-options:trickle, no candidates; they follow in events.
        let now = Instant::now();
        let mut s = setup(Version::V1, now);
        s.offer = OFFER.replace("a=ice-options:trickle\r\n", "");
        assert!(!s.offer.contains("a=candidate"));
        let mut c = Call::new(s);
        assert!(c.start(now).is_empty(), "dialled with no candidates");
        c.handle(cands(vec![udp(1)]), now);
        let a = c.handle(cands(vec![end()]), now);
        let [Action::Dial { sdp }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(sdp.matches("a=candidate").count(), 1);
    }

    #[test]
    fn complete_offer_dials_at_once_and_candidate_flood_is_capped() {
        let now = Instant::now();
        let mut s = setup(Version::V1, now);
        s.offer = OFFER.replace("a=ice-options:trickle\r\n", "").replace(
            "a=mid:0\r\n",
            "a=mid:0\r\na=candidate:1 1 udp 1 10.0.0.1 5 typ host\r\n",
        );
        let mut c = Call::new(s);
        assert_eq!(sent_types(&c.start(now)), ["dial"]);

        let mut s = setup(Version::V1, now);
        s.max_candidates = 2;
        let mut c = Call::new(s);
        c.start(now);
        c.handle(cands((1..=10).map(udp).collect()), now);
        let a = c.handle(cands(vec![end()]), now);
        let [Action::Dial { sdp }] = a.as_slice() else {
            panic!()
        };
        assert_eq!(sdp.matches("a=candidate").count(), 2);
    }

    #[test]
    fn candidates_of_another_party_and_late_ones_are_ignored() {
        let now = Instant::now();
        let mut c = Call::new(setup(Version::V1, now));
        c.start(now);
        let a = c.handle(
            Input::Candidates {
                party_id: Some("X".into()),
                candidates: vec![udp(1), end()],
            },
            now,
        );
        assert!(a.is_empty());
        assert_eq!(c.state(), State::Collecting);
        let (mut c, now) = dialled(Version::V1);
        assert!(c.handle(cands(vec![udp(9)]), now).is_empty());
    }

    #[test]
    fn notices_explain_failures_but_not_normal_hangups() {
        let now = Instant::now();
        let mut s = setup(Version::V1, now);
        s.notices = true;
        let mut c = Call::new(s.clone());
        c.start(now);
        c.handle(cands(vec![udp(1), end()]), now);
        c.handle(Input::InviteResult(Ok(())), now);
        let a = c.handle(
            Input::Bye {
                cause_code: Some(17),
                cause: None,
            },
            now,
        );
        assert_eq!(sent_types(&a), ["m.call.reject", "notice"]);
        let Action::Notice { text } = &a[1] else {
            panic!()
        };
        assert!(text.contains("busy"), "{text}");

        let mut c = Call::new(s);
        c.start(now);
        c.handle(cands(vec![udp(1), end()]), now);
        c.handle(Input::InviteResult(Ok(())), now);
        c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        let a = c.handle(
            Input::Bye {
                cause_code: Some(16),
                cause: None,
            },
            now,
        );
        assert_eq!(sent_types(&a), ["m.call.hangup"]);
    }

    #[test]
    fn dtmf_digits_on_answer_and_max_duration() {
        let now = Instant::now();
        let mut s = setup(Version::V1, now);
        s.max_duration = Some(Duration::from_secs(60));
        let mut c = Call::new(s);
        c.set_digits_on_answer(Some(("*5".into(), Duration::from_secs(2))));
        c.start(now);
        // Too early for digits.
        let a = c.handle(
            Input::Dtmf {
                digits: "1".into(),
                event_id: None,
            },
            now,
        );
        assert_eq!(sent_types(&a), ["notice"]);
        c.handle(cands(vec![udp(1), end()]), now);
        c.handle(Input::InviteResult(Ok(())), now);
        c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(2)));
        let a = c.handle_timeout(now + Duration::from_secs(2));
        assert_eq!(
            a,
            vec![Action::SendDtmf {
                digits: "*5".into(),
                react_to: None
            }]
        );
        let a = c.handle(
            Input::Dtmf {
                digits: "12#".into(),
                event_id: Some("$e".into()),
            },
            now,
        );
        assert_eq!(
            a,
            vec![Action::SendDtmf {
                digits: "12#".into(),
                react_to: Some("$e".into())
            }]
        );
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(60)));
        let a = c.handle_timeout(now + Duration::from_secs(60));
        assert_eq!(sent_types(&a), ["bye", "m.call.hangup"]);
        assert_eq!(
            a[0],
            Action::Bye {
                cause: Cause::AllottedTimeout
            }
        );
        assert!(c.is_ended());
    }

    #[test]
    fn far_end_digits_are_reported_per_burst() {
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        for (i, d) in ["1", "2", "3"].iter().enumerate() {
            assert!(c
                .handle(
                    Input::FarDtmf { digit: (*d).into() },
                    now + ms(100 * i as u64)
                )
                .is_empty());
        }
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, now + ms(200) + ms(1500));
        let a = c.handle_timeout(due);
        assert_eq!(
            a,
            vec![Action::Notice {
                text: "🔢 The other side pressed: 123".into()
            }]
        );
        assert!(
            c.handle_timeout(due + ms(5000)).is_empty(),
            "one notice per burst"
        );
        // Digits pending when the call ends are flushed first.
        c.handle(Input::FarDtmf { digit: "#".into() }, now);
        let a = c.handle(
            Input::Bye {
                cause_code: Some(16),
                cause: None,
            },
            now,
        );
        assert_eq!(sent_types(&a), ["notice", "m.call.hangup"]);
    }

    fn answered_call(version: Version) -> (Call, Instant) {
        let (mut c, now) = dialled(version);
        c.handle(Input::InviteResult(Ok(())), now);
        c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        (c, now)
    }

    fn negotiate_sdp(a: &Action) -> String {
        match a {
            Action::Send(event) if event.event_type() == "m.call.negotiate" => {
                let content = event.content();
                assert_eq!(content["description"]["type"], "offer");
                content["description"]["sdp"].as_str().unwrap().to_owned()
            }
            other => panic!("{other:?}"),
        }
    }

    const ATTACH: &str = "v=0\r\no=FreeSWITCH 1 2 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nt=0 0\r\nm=audio 16458 UDP/TLS/RTP/SAVPF 96\r\na=fingerprint:sha-256 58:2D:1D\r\na=setup:actpass\r\na=candidate:1 1 udp 2130706431 127.0.0.1 16458 typ host\r\n";
    const BROWSER_ANSWER: &str = "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-options:trickle\r\na=setup:passive\r\n";

    fn neg_answer() -> Input {
        Input::Negotiate {
            party_id: Some("CALLER".into()),
            kind: "answer".into(),
            sdp: BROWSER_ANSWER.into(),
        }
    }

    #[test]
    fn reattach_renegotiates_in_two_rounds() {
        let (mut c, now) = answered_call(Version::V1);
        assert!(c.handle(Input::VertoDown, now).is_empty());
        assert_eq!(c.state(), State::Detached);
        assert!(c
            .handle(Input::VertoReady { reattached: true }, now)
            .is_empty());
        let a = c.handle(Input::Attach { sdp: ATTACH.into() }, now);
        let first = negotiate_sdp(&a[0]);
        assert!(
            first.contains("a=fingerprint:sha-256 58:2D:1C"),
            "altered: {first}"
        );
        assert!(
            first.contains("a=mid:0") && first.contains("a=group:BUNDLE 0"),
            "{first}"
        );
        let a = c.handle(neg_answer(), now);
        let second = negotiate_sdp(&a[0]);
        assert!(
            second.contains("a=fingerprint:sha-256 58:2D:1D"),
            "real: {second}"
        );
        // The answer to the real offer has no candidates: a short quiet window for a trickle,
        // extended while candidates keep coming.
        assert!(c.handle(neg_answer(), now).is_empty());
        assert_eq!(
            c.poll_timeout(),
            Some(now + ms(300)),
            "quiet window after the answer"
        );
        assert!(c.handle(cands(vec![udp(7)]), now + ms(200)).is_empty());
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, now + ms(500), "quiet window after the batch");
        let a = c.handle_timeout(due);
        let [Action::Attach { sdp }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert!(sdp.contains("127.0.0.7 5000"), "{sdp}");
        assert_eq!(c.state(), State::Answered);
        assert!(c.handle(Input::AttachResult(Ok(())), now).is_empty());
        assert_eq!(
            c.handle(Input::Hangup { reason: None }, now),
            vec![Action::Bye {
                cause: Cause::NormalClearing
            }]
        );
    }

    #[test]
    fn reattach_falls_back_to_one_round_and_old_candidates() {
        let (mut c, now) = answered_call(Version::V1);
        c.handle(Input::VertoDown, now);
        c.handle(Input::Attach { sdp: ATTACH.into() }, now);
        let due = c.poll_timeout().unwrap();
        let a = c.handle_timeout(due);
        assert!(
            negotiate_sdp(&a[0]).contains("58:2D:1D"),
            "the real offer after the first round timed out"
        );
        c.handle(neg_answer(), due);
        // No candidates at all: the original ones (still valid without an ICE restart).
        let a = c.handle_timeout(c.poll_timeout().unwrap());
        let [Action::Attach { sdp }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert!(sdp.contains("127.0.0.1 5000"), "{sdp}");
    }

    #[test]
    fn reattach_falls_back_to_the_candidates_inside_the_offer() {
        // aiortc's offer: candidates inside, none trickled.
        let now = Instant::now();
        let mut s = setup(Version::V1, now);
        s.offer = OFFER.replace("a=ice-options:trickle\r\n", "").replace(
            "a=mid:0\r\n",
            "a=mid:0\r\na=candidate:1 1 udp 1 10.0.0.9 4444 typ host\r\n",
        );
        let mut c = Call::new(s);
        assert_eq!(sent_types(&c.start(now)), ["dial"]);
        c.handle(Input::InviteResult(Ok(())), now);
        c.handle(
            Input::Answer {
                sdp: Some(FS_ANSWER.into()),
            },
            now,
        );
        c.handle(Input::VertoDown, now);
        c.handle(Input::Attach { sdp: ATTACH.into() }, now);
        c.handle_timeout(c.poll_timeout().unwrap());
        c.handle(neg_answer(), now);
        let a = c.handle_timeout(c.poll_timeout().unwrap());
        let [Action::Attach { sdp }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert!(sdp.contains("10.0.0.9 4444"), "{sdp}");
    }

    #[test]
    fn recovered_call_with_a_complete_offer_is_not_dialled_again() {
        let now = Instant::now();
        let mut s = setup(Version::V1, now);
        s.offer = OFFER.replace("a=ice-options:trickle\r\n", "").replace(
            "a=mid:0\r\n",
            "a=mid:0\r\na=candidate:1 1 udp 1 10.0.0.9 4444 typ host\r\n",
        );
        let mut c = Call::recovered(s, Vec::new(), None, now);
        assert!(
            c.start(now).is_empty(),
            "a recovered call waits for the re-offer"
        );
        assert_eq!(c.state(), State::Detached);
    }

    #[test]
    fn detached_call_endings() {
        let (mut c, now) = answered_call(Version::V1);
        c.handle(Input::VertoDown, now);
        assert_eq!(
            sent_types(&c.handle(Input::VertoReady { reattached: false }, now)),
            ["m.call.hangup"]
        );
        let (mut c, now) = answered_call(Version::V1);
        c.handle(Input::VertoDown, now);
        let a = c.handle_timeout(c.poll_timeout().unwrap());
        assert_eq!(sent_types(&a), ["m.call.hangup"]);
        let (mut c, now) = answered_call(Version::V0);
        assert_eq!(
            sent_types(&c.handle(Input::VertoDown, now)),
            ["m.call.hangup"]
        );
        let (mut c, now) = answered_call(Version::V1);
        c.handle(Input::VertoDown, now);
        c.handle(Input::Attach { sdp: ATTACH.into() }, now);
        c.handle(neg_answer(), now);
        let a = c.handle_timeout(c.poll_timeout().unwrap());
        assert_eq!(
            sent_types(&a),
            ["bye", "m.call.hangup"],
            "no answer to the real offer"
        );
    }

    fn caller_offer(sdp: &str) -> Input {
        Input::Negotiate {
            party_id: Some("CALLER".into()),
            kind: "offer".into(),
            sdp: sdp.into(),
        }
    }

    fn negotiate_answer_sdp(a: &Action) -> String {
        match a {
            Action::Send(event) if event.event_type() == "m.call.negotiate" => {
                let content = event.content();
                assert_eq!(content["description"]["type"], "answer");
                assert!(content["sdp_stream_metadata"].is_object(), "{content}");
                content["description"]["sdp"].as_str().unwrap().to_owned()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn caller_hold_and_resume_are_answered_here_and_held_in_freeswitch() {
        let (mut c, now) = answered_call(Version::V1);
        let hold = OFFER.replace("a=sendrecv", "a=sendonly");
        let a = c.handle(caller_offer(&hold), now);
        let [answer, Action::Hold { on: true }] = a.as_slice() else {
            panic!("{a:?}")
        };
        let sdp = negotiate_answer_sdp(answer);
        assert_eq!(sdp::direction(&sdp), sdp::Direction::RecvOnly, "{sdp}");
        assert!(sdp.contains("a=mid:0"));
        let a = c.handle(caller_offer(OFFER), now);
        let [answer, Action::Hold { on: false }] = a.as_slice() else {
            panic!("{a:?}")
        };
        let sdp = negotiate_answer_sdp(answer);
        assert_eq!(sdp::direction(&sdp), sdp::Direction::SendRecv);
    }

    #[test]
    fn a_modify_lost_with_the_socket_does_not_block_the_next_offer() {
        let (mut c, now) = answered_call(Version::V1);
        let restart = OFFER.replace("a=ice-ufrag:", "a=ice-ufrag:new");
        assert!(matches!(
            c.handle(caller_offer(&restart), now).as_slice(),
            [Action::Modify { .. }]
        ));
        c.handle(Input::VertoDown, now);
        c.handle(Input::ModifyResult(Err("disconnected".into())), now);
        assert!(c.caller_offer.is_none());
    }

    #[test]
    fn other_caller_renegotiations_go_through_verto_modify() {
        let (mut c, now) = answered_call(Version::V1);
        // An ICE restart: new credentials, so FreeSWITCH must see the new offer.
        let restart = OFFER.replace("a=ice-ufrag:", "a=ice-ufrag:new");
        let a = c.handle(caller_offer(&restart), now);
        let [Action::Modify { sdp }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert!(
            sdp.contains("127.0.0.1 5000"),
            "the call's candidates: {sdp}"
        );
        assert!(
            c.handle(caller_offer(&restart), now).is_empty(),
            "one at a time"
        );
        let a = c.handle(Input::ModifyResult(Ok(FS_ANSWER.into())), now);
        let [answer] = a.as_slice() else {
            panic!("{a:?}")
        };
        let sdp = negotiate_answer_sdp(answer);
        assert!(sdp.contains("a=mid:0"));
        // After the modify, a hold compares with the restarted session and stays local.
        let hold = restart.replace("a=sendrecv", "a=sendonly");
        let a = c.handle(caller_offer(&hold), now);
        assert!(
            matches!(a.as_slice(), [_, Action::Hold { on: true }]),
            "{a:?}"
        );
        let hold = OFFER.replace("a=sendrecv", "a=sendonly");
        // Version 0 callers do not renegotiate.
        let (mut c, now) = answered_call(Version::V0);
        assert!(c
            .handle(
                Input::Negotiate {
                    party_id: None,
                    kind: "offer".into(),
                    sdp: hold
                },
                now
            )
            .is_empty());
    }

    #[test]
    fn detach_keeps_only_answered_v1_calls() {
        let (mut c, now) = answered_call(Version::V1);
        assert!(c.handle(Input::Detach, now).is_empty());
        assert!(c.is_ended() && c.kept);
        let (mut c, now) = answered_call(Version::V0);
        assert_eq!(
            sent_types(&c.handle(Input::Detach, now)),
            ["bye", "m.call.hangup"]
        );
        assert!(!c.kept);
        let (mut c, now) = dialled(Version::V1);
        c.handle(Input::InviteResult(Ok(())), now);
        assert_eq!(
            sent_types(&c.handle(Input::Detach, now)),
            ["bye", "m.call.reject"]
        );
    }

    #[test]
    fn recovered_call_waits_for_the_reoffer() {
        let now = Instant::now();
        let mut c = Call::recovered(setup(Version::V1, now), vec![udp(3)], None, now);
        assert_eq!(c.state(), State::Detached);
        let a = c.handle(Input::Attach { sdp: ATTACH.into() }, now);
        negotiate_sdp(&a[0]);
    }

    #[test]
    fn oversized_offer_is_rejected() {
        let now = Instant::now();
        let mut s = setup(Version::V1, now);
        s.max_sdp_bytes = 100;
        let mut c = Call::new(s);
        assert_eq!(sent_types(&c.start(now)), ["m.call.reject"]);
    }

    mod inbound {
        use super::*;

        const ANSWER: &str = include_str!("../../tests/fixtures/chromium_answer.sdp");

        fn fs_offer() -> String {
            include_str!("../../tests/fixtures/verto/incoming_call_1001.jsonl")
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|r| r["conn"] == "u1001" && r["msg"]["method"] == "verto.invite")
                .unwrap()["msg"]["params"]["sdp"]
                .as_str()
                .map(sdp::offer_for_browser)
                .unwrap()
        }

        fn inbound_setup(now: Instant) -> Setup {
            let mut s = setup(Version::V1, now);
            s.caller_party = None;
            s.offer = fs_offer();
            s.notices = true;
            s.direction = Direction::Inbound {
                user: "@alice:x".into(),
                notice: "📞 Call from 1000".into(),
                fs_telephone_event: false,
            };
            s.expires_at = now + Duration::from_secs(45);
            s
        }

        /// A call whose invite is out: the room was found.
        fn ringing(now: Instant) -> Call {
            let mut c = Call::new(inbound_setup(now));
            let a = c.start(now);
            assert!(
                matches!(&a[..], [Action::FindRoom { user, until }] if user == "@alice:x" && *until == now + Duration::from_secs(45)),
                "{a:?}"
            );
            assert_eq!(c.state(), State::Placing);
            let a = c.handle(
                Input::RoomReady {
                    room_id: "!r:x".into(),
                },
                now + Duration::from_secs(5),
            );
            assert_eq!(sent_types(&a), ["notice", "m.call.invite"]);
            let Action::Send(inv) = &a[1] else { panic!() };
            let content = inv.content();
            assert_eq!(content["invitee"], "@alice:x");
            assert_eq!(content["lifetime"], 40000, "what is left of the ring time");
            assert!(content["offer"]["sdp"]
                .as_str()
                .unwrap()
                .contains("a=mid:0"));
            assert_eq!(c.state(), State::Inviting);
            c
        }

        fn cands_of(party: &str, c: Vec<TrickleCandidate>) -> Input {
            Input::Candidates {
                party_id: Some(party.into()),
                candidates: c,
            }
        }

        fn answer_of(party: &str) -> Input {
            Input::CalleeAnswer {
                party_id: Some(party.into()),
                sdp: ANSWER.into(),
            }
        }

        fn bye_cause(a: &[Action]) -> Option<Cause> {
            a.iter().find_map(|a| match a {
                Action::Bye { cause } => Some(*cause),
                _ => None,
            })
        }

        #[test]
        fn first_answer_wins_and_its_candidates_go_to_freeswitch() {
            let now = Instant::now();
            let mut c = ringing(now);
            // Device B trickles before anyone answers; device A's first batch comes early too.
            assert!(c.handle(cands_of("B", vec![udp(2)]), now).is_empty());
            assert!(c.handle(cands_of("A", vec![udp(1)]), now).is_empty());
            let a = c.handle(answer_of("A"), now);
            assert_eq!(sent_types(&a), ["m.call.select_answer"]);
            assert_eq!(
                a[0],
                Action::Send(CallEventOut::SelectAnswer {
                    call_id: "c1".into(),
                    party_id: "BOT".into(),
                    selected: "A".into(),
                })
            );
            assert_eq!(c.state(), State::Connecting);
            // B answers too late: nothing (select_answer already told it).
            assert!(c.handle(answer_of("B"), now).is_empty());
            assert!(c.handle(cands_of("B", vec![udp(3), end()]), now).is_empty());
            let a = c.handle(cands_of("A", vec![udp(4), end()]), now);
            let [Action::AnswerVerto { sdp }] = &a[..] else {
                panic!("{a:?}")
            };
            assert!(
                sdp.contains("127.0.0.1 5000") && sdp.contains("127.0.0.4 5000"),
                "{sdp}"
            );
            assert!(
                !sdp.contains("127.0.0.2") && !sdp.contains("127.0.0.3"),
                "{sdp}"
            );
            assert_eq!(c.state(), State::Answered);
            // The answer names telephone-event and FreeSWITCH's offer did not: once taken, it
            // is offered back to FreeSWITCH, so that it receives the keypad's digits.
            let again = c.handle(Input::AnswerResult(Ok(())), now);
            assert_eq!(again, [Action::Modify { sdp: sdp.clone() }]);
            // FreeSWITCH's answer to it stays with FreeSWITCH.
            let fs = FS_ANSWER.replace(
                "a=candidate",
                "a=rtpmap:126 telephone-event/8000\r\na=candidate",
            );
            assert!(c.handle(Input::ModifyResult(Ok(fs)), now).is_empty());
            // A normal hangup from FreeSWITCH ends the Matrix call with a hangup.
            let a = c.handle(
                Input::Bye {
                    cause_code: Some(16),
                    cause: None,
                },
                now,
            );
            assert_eq!(sent_types(&a), ["m.call.hangup"]);
            assert!(c.is_ended());
        }

        /// A call from FreeSWITCH answered with `answer`, the answer just sent to FreeSWITCH.
        fn answered_inbound(now: Instant, fs_telephone_event: bool, answer: &str) -> Call {
            let mut setup = inbound_setup(now);
            if let Direction::Inbound {
                fs_telephone_event: te,
                ..
            } = &mut setup.direction
            {
                *te = fs_telephone_event;
            }
            let mut c = Call::new(setup);
            c.start(now);
            c.handle(
                Input::RoomReady {
                    room_id: "!r:x".into(),
                },
                now,
            );
            let mut a = c.handle(
                Input::CalleeAnswer {
                    party_id: Some("A".into()),
                    sdp: answer.into(),
                },
                now,
            );
            a.extend(c.handle(cands_of("A", vec![udp(1), end()]), now));
            assert!(
                a.iter().any(|a| matches!(a, Action::AnswerVerto { .. })),
                "{a:?}"
            );
            c
        }

        #[test]
        fn the_callees_telephone_event_is_offered_back_only_when_freeswitch_offered_none() {
            let now = Instant::now();
            let taken = || Input::AnswerResult(Ok(()));
            // FreeSWITCH offered telephone-event itself, or the callee has none: nothing to do.
            let mut c = answered_inbound(now, true, ANSWER);
            assert!(c.handle(taken(), now).is_empty());
            let no_te: String = ANSWER
                .lines()
                .filter(|l| !l.contains("telephone-event"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            let mut c = answered_inbound(now, false, &no_te);
            assert!(c.handle(taken(), now).is_empty());
            // While it is with FreeSWITCH, a negotiate offer from the callee is not passed on
            // (the two replies could not be told apart); once it is back, it is.
            let mut c = answered_inbound(now, false, ANSWER);
            let a = c.handle(taken(), now);
            assert!(matches!(&a[..], [Action::Modify { .. }]), "{a:?}");
            let offer = Input::Negotiate {
                party_id: Some("A".into()),
                kind: "offer".into(),
                sdp: OFFER.into(),
            };
            assert!(c.handle(offer.clone(), now).is_empty());
            // A failed update is only logged: FreeSWITCH hangs up itself if it must.
            assert!(c
                .handle(Input::ModifyResult(Err("x".into())), now)
                .is_empty());
            let a = c.handle(offer, now);
            assert!(matches!(&a[..], [Action::Modify { .. }]), "{a:?}");
            assert_eq!(c.state(), State::Answered);
        }

        #[test]
        fn without_the_marker_freeswitch_is_answered_after_the_candidate_wait() {
            let now = Instant::now();
            let mut c = ringing(now);
            c.handle(answer_of("A"), now);
            c.handle(cands_of("A", vec![udp(1)]), now);
            let due = c.poll_timeout().unwrap();
            assert_eq!(due, now + DEFAULT_CANDIDATE_WAIT);
            let a = c.handle_timeout(due);
            assert!(matches!(&a[..], [Action::AnswerVerto { .. }]), "{a:?}");
            // Answered: the callee's hangup is a normal clearing.
            let a = c.handle(
                Input::Hangup {
                    reason: Some("user_hangup".into()),
                },
                due,
            );
            assert_eq!(bye_cause(&a), Some(Cause::NormalClearing));
        }

        /// matrix-js-sdk's first batch after the answer can come later than the candidate
        /// wait: without a usable candidate the wait goes on (bounded) instead of failing.
        #[test]
        fn a_late_first_batch_is_waited_for() {
            let now = Instant::now();
            let mut c = ringing(now);
            let bare: String = ANSWER
                .split_inclusive('\n')
                .filter(|l| !l.starts_with("a=candidate"))
                .collect();
            c.handle(
                Input::CalleeAnswer {
                    party_id: Some("A".into()),
                    sdp: bare.clone(),
                },
                now,
            );
            let due = c.poll_timeout().unwrap();
            assert!(c.handle_timeout(due).is_empty());
            assert_eq!(c.state(), State::Connecting);
            c.handle(cands_of("A", vec![udp(1)]), due);
            let due = c.poll_timeout().unwrap();
            assert!(matches!(
                &c.handle_timeout(due)[..],
                [Action::AnswerVerto { .. }]
            ));
            // Nothing at all: given up after 10 s with ice_failed on both sides.
            let mut c = ringing(now);
            c.handle(
                Input::CalleeAnswer {
                    party_id: Some("A".into()),
                    sdp: bare,
                },
                now,
            );
            let mut out = Vec::new();
            while let Some(d) = c.poll_timeout().filter(|_| !c.is_ended()) {
                assert!(d <= now + Duration::from_secs(10), "{d:?}");
                out = c.handle_timeout(d);
            }
            assert_eq!(bye_cause(&out), Some(Cause::IncompatibleDestination));
        }

        #[test]
        fn an_answer_refusing_all_media_fails_at_once() {
            let now = Instant::now();
            let mut c = ringing(now);
            let refused = ANSWER.replace("m=audio 46805 ", "m=audio 0 ");
            let a = c.handle(
                Input::CalleeAnswer {
                    party_id: Some("A".into()),
                    sdp: refused,
                },
                now,
            );
            assert_eq!(bye_cause(&a), Some(Cause::IncompatibleDestination));
            assert!(sent_types(&a).contains(&"m.call.hangup"), "{a:?}");
            assert!(c.is_ended());
        }

        #[test]
        fn an_answer_without_usable_candidates_fails_on_both_sides() {
            let now = Instant::now();
            let mut c = ringing(now);
            let bare: String = ANSWER
                .split_inclusive('\n')
                .filter(|l| !l.starts_with("a=candidate"))
                .collect();
            let answer = Input::CalleeAnswer {
                party_id: Some("A".into()),
                sdp: bare,
            };
            c.handle(answer, now);
            let a = c.handle(cands_of("A", vec![end()]), now);
            assert_eq!(bye_cause(&a), Some(Cause::IncompatibleDestination));
            assert!(sent_types(&a).contains(&"m.call.hangup"), "{a:?}");
            assert!(c.is_ended());
        }

        #[test]
        fn endings_while_ringing() {
            let now = Instant::now();
            // (input, the cause FreeSWITCH gets, Matrix events)
            let cases: Vec<(Input, Option<Cause>, Vec<&str>)> = vec![
                (Input::Reject, Some(Cause::CallRejected), vec![]),
                (
                    Input::Hangup {
                        reason: Some("user_busy".into()),
                    },
                    Some(Cause::UserBusy),
                    vec![],
                ),
                (
                    Input::Hangup { reason: None },
                    Some(Cause::CallRejected),
                    vec![],
                ),
                (
                    Input::Bye {
                        cause_code: Some(487),
                        cause: Some("ORIGINATOR_CANCEL".into()),
                    },
                    None,
                    vec!["m.call.hangup", "notice"],
                ),
                (Input::VertoDown, None, vec!["m.call.hangup", "notice"]),
                (
                    Input::Shutdown,
                    Some(Cause::SystemShutdown),
                    vec!["m.call.hangup", "notice"],
                ),
            ];
            for (input, cause, events) in cases {
                let mut c = ringing(now);
                let name = format!("{input:?}");
                let a = c.handle(input, now);
                assert_eq!(bye_cause(&a), cause, "{name}");
                let sent: Vec<&str> = sent_types(&a).into_iter().filter(|t| *t != "bye").collect();
                assert_eq!(sent, events, "{name}");
                assert!(c.is_ended(), "{name}");
                if let Some(Action::Send(e)) = a.iter().find(|a| matches!(a, Action::Send(_))) {
                    assert_eq!(
                        e.content()["reason"],
                        if name.starts_with("Bye") {
                            "user_hangup"
                        } else {
                            "unknown_error"
                        },
                        "{name}"
                    );
                }
            }
        }

        #[test]
        fn only_the_answering_devices_hangup_counts() {
            let now = Instant::now();
            let mut c = ringing(now);
            c.handle(answer_of("A"), now);
            c.handle(cands_of("A", vec![udp(1), end()]), now);
            let other = Input::CalleeHangup {
                party_id: Some("B".into()),
                reason: Some("user_hangup".into()),
            };
            assert!(c.handle(other, now).is_empty());
            assert_eq!(c.state(), State::Answered);
            let mine = Input::CalleeHangup {
                party_id: Some("A".into()),
                reason: Some("user_hangup".into()),
            };
            let a = c.handle(mine, now);
            assert_eq!(bye_cause(&a), Some(Cause::NormalClearing));
            assert!(c.is_ended());
        }

        #[test]
        fn no_answer_in_the_ring_time() {
            let now = Instant::now();
            let mut c = ringing(now);
            let due = c.poll_timeout().unwrap();
            assert_eq!(due, now + Duration::from_secs(45));
            let a = c.handle_timeout(due);
            assert_eq!(bye_cause(&a), Some(Cause::NoAnswer));
            let Some(Action::Send(e)) = a.iter().find(|a| matches!(a, Action::Send(_))) else {
                panic!("{a:?}")
            };
            assert_eq!(e.event_type(), "m.call.hangup");
            assert_eq!(e.content()["reason"], "invite_timeout");
            assert!(c.is_ended());
        }

        #[test]
        fn before_the_room_is_ready_nothing_reaches_matrix() {
            let now = Instant::now();
            for input in [
                Input::Bye {
                    cause_code: Some(487),
                    cause: None,
                },
                Input::VertoDown,
                Input::RoomFailed { why: "x".into() },
                Input::Shutdown,
            ] {
                let mut c = Call::new(inbound_setup(now));
                c.start(now);
                let name = format!("{input:?}");
                let a = c.handle(input, now);
                assert!(sent_types(&a).iter().all(|t| *t == "bye"), "{name}: {a:?}");
                assert!(c.is_ended(), "{name}");
            }
            let mut c = Call::new(inbound_setup(now));
            c.start(now);
            let a = c.handle_timeout(now + Duration::from_secs(45));
            assert_eq!(
                a,
                vec![Action::Bye {
                    cause: Cause::NoAnswer
                }]
            );
            assert!(c.is_ended());
            // A room found after the caller gave up rings nobody.
            assert!(c
                .handle(
                    Input::RoomReady {
                        room_id: "!r:x".into()
                    },
                    now
                )
                .is_empty());
        }

        #[test]
        fn an_answered_inbound_call_renegotiates_toward_the_callee() {
            let now = Instant::now();
            let mut c = ringing(now);
            c.handle(answer_of("A"), now);
            c.handle(cands_of("A", vec![udp(1), end()]), now);
            assert!(c.handle(Input::VertoDown, now).is_empty());
            assert_eq!(c.state(), State::Detached);
            let a = c.handle(Input::Attach { sdp: fs_offer() }, now);
            let [Action::Send(CallEventOut::Negotiate {
                kind: SdpKind::Offer,
                sdp,
                ..
            })] = &a[..]
            else {
                panic!("{a:?}")
            };
            assert!(sdp.contains("a=mid:0"), "{sdp}");
            // The other device's negotiate is not the callee's.
            let other = Input::Negotiate {
                party_id: Some("B".into()),
                kind: "answer".into(),
                sdp: ANSWER.into(),
            };
            assert!(c.handle(other, now).is_empty());
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One step of a random call: an input, or time passing (after which the due timers
        /// fire, as the actor does).
        #[derive(Debug, Clone)]
        enum Step {
            Feed(Input),
            Wait(u64),
        }

        fn dial_failure() -> impl Strategy<Value = DialFailure> {
            (
                prop::option::of(prop_oneof![Just(17i64), Just(88), Just(480)]),
                any::<bool>(),
            )
                .prop_map(|(cause_code, timed_out)| DialFailure {
                    cause_code,
                    message: "x".into(),
                    timed_out,
                })
        }

        fn input() -> impl Strategy<Value = Input> {
            let party =
                || prop::option::of(prop_oneof![Just("CALLER".to_owned()), Just("X".to_owned())]);
            let kind = || prop_oneof![Just("offer".to_owned()), Just("answer".to_owned())];
            prop_oneof![
                (
                    party(),
                    prop::collection::vec(prop_oneof![(1u8..4).prop_map(udp), Just(end())], 0..3)
                )
                    .prop_map(|(party_id, candidates)| Input::Candidates {
                        party_id,
                        candidates
                    }),
                prop::option::of(Just("user_hangup".to_owned()))
                    .prop_map(|reason| Input::Hangup { reason }),
                prop_oneof![Just("BOT".to_owned()), Just("OTHER".to_owned())]
                    .prop_map(|party_id| Input::SelectAnswer { party_id }),
                Just(Input::InviteResult(Ok(()))),
                dial_failure().prop_map(|f| Input::InviteResult(Err(f))),
                Just(Input::Media {
                    sdp: FS_ANSWER.into()
                }),
                prop::option::of(Just(FS_ANSWER.to_owned())).prop_map(|sdp| Input::Answer { sdp }),
                (
                    prop::option::of(prop_oneof![Just(16i64), Just(17)]),
                    prop::option::of(Just("NORMAL_CLEARING".to_owned()))
                )
                    .prop_map(|(cause_code, cause)| Input::Bye { cause_code, cause }),
                Just(Input::Attach { sdp: ATTACH.into() }),
                any::<bool>().prop_map(|reattached| Input::VertoReady { reattached }),
                (
                    party(),
                    kind(),
                    prop_oneof![Just(BROWSER_ANSWER.to_owned()), Just(OFFER.to_owned())]
                )
                    .prop_map(|(party_id, kind, sdp)| Input::Negotiate {
                        party_id,
                        kind,
                        sdp
                    }),
                prop_oneof![Just(Ok(())), Just(Err("x".to_owned()))].prop_map(Input::AttachResult),
                prop_oneof![Just(Ok(FS_ANSWER.to_owned())), Just(Err("x".to_owned()))]
                    .prop_map(Input::ModifyResult),
                Just(Input::Detach),
                Just(Input::Dtmf {
                    digits: "1".into(),
                    event_id: None
                }),
                Just(Input::FarDtmf { digit: "2".into() }),
                Just(Input::VertoDown),
                Just(Input::Shutdown),
            ]
        }

        fn steps() -> impl Strategy<Value = Vec<Step>> {
            let step = prop_oneof![
                3 => input().prop_map(Step::Feed),
                2 => prop_oneof![0u64..400, 0u64..5_000, 0u64..200_000].prop_map(Step::Wait),
            ];
            prop::collection::vec(step, 0..40)
        }

        fn endings(actions: &[Action]) -> usize {
            sent_types(actions)
                .iter()
                .filter(|t| matches!(**t, "m.call.hangup" | "m.call.reject"))
                .count()
        }

        proptest! {
            /// Timers never repeat a deadline that has been handled (the actor would spin),
            /// and every call, however its inputs come, ends once the bridge stops and
            /// FreeSWITCH has replied to the invite (which the verto client guarantees),
            /// having told the caller at most once.
            #[test]
            fn timers_advance_and_every_call_ends_once(v1 in any::<bool>(), notices in any::<bool>(), steps in steps()) {
                let version = if v1 { Version::V1 } else { Version::V0 };
                let mut now = Instant::now();
                let mut s = setup(version, now);
                s.notices = notices;
                s.max_duration = Some(Duration::from_secs(600));
                let mut c = Call::new(s);
                c.set_digits_on_answer(Some(("1".into(), Duration::from_secs(1))));
                let mut ended = endings(&c.start(now));
                let finish = [Step::Feed(Input::Shutdown), Step::Feed(Input::InviteResult(Ok(())))];
                for step in steps.into_iter().chain(finish) {
                    match step {
                        Step::Feed(i) => ended += endings(&c.handle(i, now)),
                        Step::Wait(ms) => {
                            now += Duration::from_millis(ms);
                            while let Some(due) = c.poll_timeout().filter(|d| *d <= now) {
                                ended += endings(&c.handle_timeout(now));
                                let next = c.poll_timeout();
                                prop_assert!(next.is_none_or(|d| d > now), "deadline {due:?} repeats as {next:?} at {now:?}");
                            }
                        }
                    }
                    prop_assert!(ended <= 1, "{ended} ending events sent");
                }
                prop_assert_eq!(c.state(), State::Ended);
            }
        }

        fn inbound_input() -> impl Strategy<Value = Input> {
            let party = || prop_oneof![Just("CALLER".to_owned()), Just("X".to_owned())];
            prop_oneof![
                3 => input(),
                1 => Just(Input::RoomReady { room_id: "!r:x".into() }),
                1 => Just(Input::RoomFailed { why: "x".into() }),
                2 => (party(), prop_oneof![Just(BROWSER_ANSWER.to_owned()), Just(FS_ANSWER.to_owned())])
                    .prop_map(|(p, sdp)| Input::CalleeAnswer { party_id: Some(p), sdp }),
                1 => Just(Input::Reject),
                1 => (party(), prop::option::of(Just("user_busy".to_owned())))
                    .prop_map(|(p, reason)| Input::CalleeHangup { party_id: Some(p), reason }),
                1 => prop_oneof![Just(Ok(())), Just(Err("x".to_owned()))].prop_map(Input::AnswerResult),
            ]
        }

        fn inbound_steps() -> impl Strategy<Value = Vec<Step>> {
            let step = prop_oneof![
                3 => inbound_input().prop_map(Step::Feed),
                2 => prop_oneof![0u64..400, 0u64..5_000, 0u64..200_000].prop_map(Step::Wait),
            ];
            prop::collection::vec(step, 0..40)
        }

        fn byes(actions: &[Action]) -> usize {
            actions
                .iter()
                .filter(|a| matches!(a, Action::Bye { .. }))
                .count()
        }

        proptest! {
            /// A call from FreeSWITCH, whatever the order of its inputs and timers, ends once
            /// the bridge stops, leaves nothing ringing: once the user was rung, Matrix is told
            /// the end exactly once unless the user ended it, and FreeSWITCH gets one
            /// `verto.bye` unless it ended the call itself (or the call was kept for the next
            /// start, which tells neither side). A caller never rejects.
            #[test]
            fn inbound_calls_end_once_on_both_sides(steps in inbound_steps()) {
                let mut now = Instant::now();
                let mut s = setup(Version::V1, now);
                s.caller_party = None;
                s.direction = Direction::Inbound { user: "@u:x".into(), notice: "n".into(), fs_telephone_event: false };
                s.max_duration = Some(Duration::from_secs(600));
                let mut c = Call::new(s);
                let mut out = c.start(now);
                let (mut user_ended, mut fs_ended) = (false, false);
                for step in steps.into_iter().chain([Step::Feed(Input::Shutdown)]) {
                    match step {
                        Step::Feed(i) => {
                            if !c.is_ended() {
                                user_ended |= matches!(
                                    i,
                                    Input::Reject | Input::Hangup { .. } | Input::CalleeHangup { .. }
                                );
                                fs_ended |= matches!(i, Input::Bye { .. } | Input::VertoDown);
                            }
                            out.extend(c.handle(i, now));
                        }
                        Step::Wait(ms) => {
                            now += Duration::from_millis(ms);
                            while let Some(due) = c.poll_timeout().filter(|d| *d <= now) {
                                out.extend(c.handle_timeout(now));
                                let next = c.poll_timeout();
                                prop_assert!(next.is_none_or(|d| d > now), "deadline {due:?} repeats as {next:?}");
                            }
                        }
                    }
                }
                prop_assert_eq!(c.state(), State::Ended);
                let types = sent_types(&out);
                prop_assert!(!types.contains(&"m.call.reject"), "{types:?}");
                if c.kept {
                    // Left up on purpose for the next start (`on_shutdown: detach`).
                    prop_assert_eq!(endings(&out) + byes(&out), 0, "{:?}", types);
                    return Ok(());
                }
                let rung = types.contains(&"m.call.invite");
                let ended = endings(&out);
                prop_assert!(ended <= 1, "{types:?}");
                prop_assert!(!rung || ended == 1 || user_ended, "left ringing in Matrix: {types:?}");
                prop_assert!(rung || ended == 0, "an ending for a call never rung: {types:?}");
                let b = byes(&out);
                prop_assert!(b <= 1, "{types:?}");
                prop_assert!(b == 1 || fs_ended, "left up in FreeSWITCH: {types:?}");
            }
        }
    }
}
