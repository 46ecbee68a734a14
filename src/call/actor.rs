//! The task that drives one [`Call`] machine: it owns the machine, its timers and its inbox,
//! and performs the machine's actions on the two clients.
//!
//! Matrix events of one call go through a dedicated sender task, in order, each retried with
//! its own transaction id, so an answer can never overtake or duplicate itself and a slow
//! homeserver does not stall the call's reaction to FreeSWITCH.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::machine::{Action, Call, DialFailure, Direction, Input};
use super::room::RoomStore;
use super::route::{Caller, Routed, Router};
use super::store::{CallStore, Record};
use crate::backoff::Backoff;
use crate::chain::Chain;
use crate::matrix::client::{notice_content, reaction_content};
use crate::matrix::MatrixClient;
use crate::verto::messages::{
    AnswerCall, Attach, Bye, Dialog, Info, Invite, InviteDialog, Modify, ModifyAction,
};
use crate::verto::{Cause, VertoError, VertoHandle};

/// Where an input came from, and when the sync response or verto frame that carried it was
/// read: the actions it causes are timed from there (`vertobot_hop_seconds`).
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A Matrix event; the instant its sync response was read.
    Matrix(Instant),
    /// A verto request from FreeSWITCH; the instant its frame was read.
    Verto(Instant),
}

/// An input of the call task, with its origin when it came from either side (the task's own
/// side tasks report without one).
#[derive(Debug)]
pub struct Stamped {
    /// The input, boxed: the inbox's queue is allocated 32 slots at a time for every call,
    /// held or not, and an input is many times the size of a pointer.
    pub input: Box<Input>,
    /// Where and when it arrived.
    pub origin: Option<Origin>,
}

impl From<Input> for Stamped {
    fn from(input: Input) -> Self {
        Self {
            input: Box::new(input),
            origin: None,
        }
    }
}

/// What the actor needs besides the machine.
#[derive(Clone)]
pub struct Ctx {
    /// Matrix client.
    pub matrix: MatrixClient,
    /// Verto handle.
    pub verto: VertoHandle,
    /// The call's room (an inbound call learns it once the room is found or made).
    pub room_id: String,
    /// Matrix `call_id`.
    pub call_id: String,
    /// The caller's user id (for an inbound call, the user rung).
    pub caller: String,
    /// The bot's user id.
    pub bot_user: String,
    /// Verto `callID` (a fresh UUID).
    pub verto_call_id: String,
    /// Routes and caller ids.
    pub router: std::sync::Arc<Router>,
    /// The room's `!dial` choice, if any.
    pub dial_override: Option<String>,
    /// Where answered calls are saved for a restart.
    pub calls: std::sync::Arc<CallStore>,
    /// On stop, keep answered calls for the next start instead of hanging up.
    pub detach_on_shutdown: bool,
    /// A call taken back after a restart: already admitted and routed.
    pub recovered: bool,
    /// When the invite that started the call was read (`None` when recovered).
    pub invited: Option<Origin>,
    /// Inbound: the rooms the bot rings users in.
    pub rooms: std::sync::Arc<std::sync::Mutex<RoomStore>>,
    /// Inbound: tells the bridge the call's room once known, as (verto `callID`, room id), so
    /// that the callee's events find the call.
    pub placed: mpsc::UnboundedSender<(String, String)>,
    /// Told the verto `callID` as soon as the call has ended, before its last Matrix events
    /// are out: from then on the bridge treats the call as unknown, so a `verto.attach` that
    /// FreeSWITCH sends for it meanwhile is hung up instead of going to an inbox nobody reads.
    pub ended: mpsc::UnboundedSender<String>,
}

/// A Matrix event to send: its room, type and content, and when the verto frame that caused
/// it was read (for `vertobot_hop_seconds`).
type Outgoing = (String, &'static str, Value, Option<Instant>);

/// Matrix events to send, in order (boxed, like [`Stamped::input`]).
type MatrixQueue = mpsc::UnboundedSender<Box<Outgoing>>;

/// Queues one event for the call's sender task; it is gone only once the call has ended.
fn enqueue(mtx: &MatrixQueue, out: Outgoing) {
    let _ = mtx.send(Box::new(out));
}

/// The Matrix event whose sync response was read at `.1` caused a verto request: its hop ends
/// when the request's frame is written.
#[derive(Clone)]
struct Hop(Option<(crate::metrics::Metrics, Instant)>);

impl Hop {
    /// Called by the verto client with the instant the frame went out.
    fn written(self) -> impl FnOnce(Instant) + Send + 'static {
        move |at| {
            if let Some((m, t)) = self.0 {
                m.hop(
                    crate::metrics::MATRIX_TO_VERTO,
                    at.saturating_duration_since(t),
                );
            }
        }
    }
}

/// How the actions one input caused are timed (`vertobot_hop_seconds`).
struct Timing {
    /// From a Matrix event: each verto request it causes ends the hop when written.
    matrix: Hop,
    /// From a verto frame: the first Matrix event it causes ends the hop when its send starts.
    /// The next ones wait for that send, which is the homeserver's time, not the bridge's.
    verto: Option<Instant>,
}

impl Timing {
    /// `admitted`: when the call's admission requests returned. A Matrix event read before
    /// is timed from then: the homeserver's time is `vertobot_admission_seconds`, and the
    /// hop is what the bridge itself adds.
    fn of(ctx: &Ctx, origin: Option<Origin>, admitted: Instant) -> Self {
        match origin {
            Some(Origin::Matrix(t)) => Self {
                matrix: Hop(Some((ctx.matrix.metrics().clone(), t.max(admitted)))),
                verto: None,
            },
            Some(Origin::Verto(t)) => Self {
                matrix: Hop(None),
                verto: Some(t),
            },
            None => Self {
                matrix: Hop(None),
                verto: None,
            },
        }
    }
}

/// Runs the call to its end. `done` is told when the task is finished, so the registry can
/// forget it.
pub async fn run(
    mut call: Call,
    mut ctx: Ctx,
    mut inbox: mpsc::Receiver<Stamped>,
    self_tx: mpsc::Sender<Stamped>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("call", call_id = %ctx.call_id, room_id = tracing::field::Empty, verto_call_id = %ctx.verto_call_id);
    if !ctx.room_id.is_empty() {
        span.record("room_id", ctx.room_id.as_str());
    }
    async move {
        let direction = match call.setup().direction {
            Direction::Outbound => crate::metrics::OUTBOUND,
            Direction::Inbound { .. } => crate::metrics::INBOUND,
        };
        let mut probe = crate::metrics::CallProbe::with_direction(
            ctx.matrix.metrics(),
            ctx.recovered,
            direction,
        );
        // Boxed (as `finish`): held calls need no room for their requests in their task.
        let Some(routed) = Box::pin(accept(&mut call, &ctx)).await else {
            return;
        };
        let admitted = Instant::now();
        let mut saved = ctx.recovered;
        let (mtx, mrx): (MatrixQueue, _) = mpsc::unbounded_channel();
        let sender = tokio::spawn(
            send_matrix_events(ctx.matrix.clone(), mrx).instrument(tracing::Span::current()),
        );
        let mut side_tasks = JoinSet::new();
        let mut shutting_down = false;
        let mut actions = call.start(Instant::now());
        let mut origin = ctx.invited;
        let invited = match ctx.invited {
            Some(Origin::Matrix(t)) => Some(t),
            _ => None,
        };
        loop {
            let mut timing = Timing::of(&ctx, origin, admitted);
            for a in actions.drain(..) {
                probe.action(&a);
                execute(
                    a,
                    &ctx,
                    &routed,
                    (&mtx, &self_tx),
                    &mut timing,
                    &mut side_tasks,
                );
            }
            probe.state(call.state());
            if let Some(t) = invited {
                probe.collected(&call, t);
            }
            if !saved && call.state() == super::machine::State::Answered {
                saved = true;
                save(&call, &ctx);
            }
            if call.is_ended() {
                break;
            }
            (actions, origin) = next_actions(
                &mut call,
                &mut ctx,
                &mut inbox,
                &cancel,
                &mut shutting_down,
                &mut probe,
            )
            .await;
        }
        drop(probe);
        let _ = ctx.ended.send(ctx.verto_call_id.clone());
        Box::pin(finish(&call, &ctx, mtx, sender, side_tasks, &cancel)).await;
    }
    .instrument(span)
    .await
}

/// The route of a new call, or `None` when it is not admitted. A recovered call was admitted
/// and routed in the last run, and FreeSWITCH re-offers it without being dialled again, so it
/// gets a placeholder route; so does a call from FreeSWITCH, which the bridge routed to its
/// Matrix user and which is never dialled.
async fn accept(call: &mut Call, ctx: &Ctx) -> Option<Routed> {
    let inbound = matches!(call.setup().direction, Direction::Inbound { .. });
    if ctx.recovered {
        info!(caller = %ctx.caller, "call recovered from the last run; waiting for FreeSWITCH to re-offer it");
    } else if inbound {
        // Routed by the bridge already; the room is found by the machine's first action.
        info!(user = %ctx.caller, "call from FreeSWITCH");
    }
    if ctx.recovered || inbound {
        return Some(Routed {
            name: if inbound { "inbound" } else { "recovered" }.into(),
            destination: String::new(),
            caller_id_name: String::new(),
            caller_id_number: String::new(),
            digits_on_answer: None,
        });
    }
    let asked = Instant::now();
    let display_name = admit(ctx).await?;
    ctx.matrix.metrics().admission(asked.elapsed());
    let caller = Caller {
        user_id: &ctx.caller,
        display_name: &display_name,
    };
    let routed = ctx
        .router
        .route(&ctx.room_id, &caller, ctx.dial_override.as_deref())
        .await;
    info!(caller = %ctx.caller, route = %routed.name, destination = %routed.destination, "call accepted");
    call.set_digits_on_answer(routed.digits_on_answer.clone());
    Some(routed)
}

/// Saved once, on answer: from then on a restart can take the call back when FreeSWITCH
/// re-offers it, instead of dropping a call that is in progress.
fn save(call: &Call, ctx: &Ctx) {
    let r = Record::of(&ctx.room_id, &ctx.caller, call);
    ctx.calls.set(&ctx.verto_call_id, Some(r));
}

/// Waits for whatever moves the call on: an input, a due timer, or the stop. The stop is
/// taken once; after that the call ends through its own inputs and timers. Returns the
/// actions, and the origin of the input that caused them.
async fn next_actions(
    call: &mut Call,
    ctx: &mut Ctx,
    inbox: &mut mpsc::Receiver<Stamped>,
    cancel: &CancellationToken,
    shutting_down: &mut bool,
    probe: &mut crate::metrics::CallProbe,
) -> (Vec<Action>, Option<Origin>) {
    let deadline = call.poll_timeout();
    tokio::select! {
        input = inbox.recv() => match input {
            Some(Stamped { input, origin }) => {
                let i = *input;
                probe.input(&i);
                if let Input::RoomReady { room_id } = &i {
                    placed(ctx, room_id);
                }
                (call.handle(i, Instant::now()), origin)
            }
            None => (call.handle(super::machine::Input::Shutdown, Instant::now()), None),
        },
        _ = sleep_until(deadline), if deadline.is_some() => {
            (call.handle_timeout(Instant::now()), None)
        }
        _ = cancel.cancelled(), if !*shutting_down => {
            *shutting_down = true;
            let input = if ctx.detach_on_shutdown { Input::Detach } else { Input::Shutdown };
            (call.handle(input, Instant::now()), None)
        }
    }
}

/// Forgets the saved call unless it was kept for the next start, then gives the last Matrix
/// events and side tasks time to finish: the caller should still see the hangup.
async fn finish(
    call: &Call,
    ctx: &Ctx,
    mtx: MatrixQueue,
    sender: tokio::task::JoinHandle<()>,
    mut side_tasks: JoinSet<()>,
    cancel: &CancellationToken,
) {
    info!(
        reason = call.end_reason.as_deref().unwrap_or("-"),
        "call ended"
    );
    if !call.kept {
        ctx.calls.set(&ctx.verto_call_id, None);
    }
    drop(mtx);
    // Let the last events out; during shutdown only briefly.
    let grace = if cancel.is_cancelled() {
        Duration::from_secs(4)
    } else {
        Duration::from_secs(90)
    };
    let _ = tokio::time::timeout(grace, async {
        while side_tasks.join_next().await.is_some() {}
        let _ = sender.await;
    })
    .await;
}

/// An inbound call's room is known: events go there from now on, and the bridge routes the
/// callee's events to this call.
fn placed(ctx: &mut Ctx, room_id: &str) {
    ctx.room_id = room_id.to_owned();
    tracing::Span::current().record("room_id", room_id);
    let _ = ctx
        .placed
        .send((ctx.verto_call_id.clone(), room_id.to_owned()));
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Checks that the room is a 1:1 with the caller, and returns the caller's display name.
/// Both questions go to the homeserver at once: they sit between the invite and the dial.
async fn admit(ctx: &Ctx) -> Option<String> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_millis(800));
    for attempt in 1..=4 {
        let (members, rule) = tokio::join!(
            ctx.matrix.joined_members(&ctx.room_id),
            ctx.matrix.join_rule(&ctx.room_id)
        );
        match members {
            Ok(members) => {
                if !super::route::is_one_to_one(&members, &ctx.caller, &ctx.bot_user) {
                    info!(
                        joined = members.len(),
                        "invite ignored: not a 1:1 room with the caller"
                    );
                    return None;
                }
                // The spec recommends ignoring calls in public rooms: anyone could join and
                // answer or watch the signalling.
                if let Ok(Some(rule)) = rule {
                    if rule == "public" {
                        info!("invite ignored: the room is public");
                        return None;
                    }
                }
                let name = members
                    .get(&ctx.caller)
                    .and_then(|m| m.display_name.clone())
                    .unwrap_or_default();
                return Some(name);
            }
            Err(e) if attempt < 4 && e.is_transient() => {
                debug!(error = %Chain(&e), "cannot read room members yet; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
            Err(e) => {
                warn!(error = %Chain(&e), "invite ignored: cannot read the room's members");
                return None;
            }
        }
    }
    None
}

/// Performs one action; `timing` says how it is timed (the input that caused it).
fn execute(
    action: Action,
    ctx: &Ctx,
    routed: &Routed,
    (mtx, self_tx): (&MatrixQueue, &mpsc::Sender<Stamped>),
    timing: &mut Timing,
    side: &mut JoinSet<()>,
) {
    let (verto, id) = (ctx.verto.clone(), ctx.verto_call_id.clone());
    let span = tracing::Span::current();
    let room = ctx.room_id.clone();
    let hop = timing.matrix.clone();
    match action {
        Action::Notice { text } => {
            let verto_at = timing.verto.take();
            enqueue(
                mtx,
                (room, "m.room.message", notice_content(&text), verto_at),
            );
        }
        Action::Send(event) => {
            let verto_at = timing.verto.take();
            enqueue(mtx, (room, event.event_type(), event.content(), verto_at));
        }
        Action::FindRoom { user, until } => {
            let (matrix, rooms, bot) =
                (ctx.matrix.clone(), ctx.rooms.clone(), ctx.bot_user.clone());
            let tx = self_tx.clone();
            side.spawn(
                async move {
                    let input = match super::room::find_or_create(
                        &matrix, &rooms, &user, &bot, until,
                    )
                    .await
                    {
                        Ok(room_id) => Input::RoomReady { room_id },
                        Err(why) => Input::RoomFailed { why },
                    };
                    let _ = tx.send(input.into()).await;
                }
                .instrument(span),
            );
        }
        Action::AnswerVerto { sdp } => {
            side.spawn(answer(verto, (id, hop), sdp, self_tx.clone()).instrument(span));
        }
        Action::Dial { sdp } => {
            let invite = Invite {
                sdp,
                dialog: invite_dialog(ctx, routed),
            };
            side.spawn(dial(verto, invite, hop, self_tx.clone()).instrument(span));
        }
        Action::Modify { sdp } => {
            side.spawn(update_media(verto, (id, hop), sdp, self_tx.clone()).instrument(span));
        }
        Action::Hold { on } => {
            side.spawn(hold(verto, (id, hop), on).instrument(span));
        }
        Action::Attach { sdp } => {
            side.spawn(attach(verto, (id, hop), sdp, self_tx.clone()).instrument(span));
        }
        Action::SendDtmf { digits, react_to } => {
            let mtx = (mtx.clone(), room);
            side.spawn(send_dtmf(verto, (id, hop), digits, react_to, mtx).instrument(span));
        }
        Action::Bye { cause } => {
            side.spawn(bye(verto, (id, hop), cause).instrument(span));
        }
    }
}

/// `verto.invite`, its failure classified for the machine: a timeout may have left a channel.
async fn dial(verto: VertoHandle, invite: Invite, hop: Hop, tx: mpsc::Sender<Stamped>) {
    tracing::trace!(sdp = %invite.sdp, "offer sent to FreeSWITCH");
    let sent = verto.send_noting(&invite, hop.written()).await;
    let res = sent.map(|_| ()).map_err(|e| {
        let cause_code = match &e {
            VertoError::Rpc(r) => r.data.get("causeCode").and_then(Value::as_i64),
            _ => None,
        };
        DialFailure {
            cause_code,
            message: Chain(&e).to_string(),
            timed_out: matches!(e, VertoError::Timeout(_)),
        }
    });
    let _ = tx.send(Input::InviteResult(res).into()).await;
}

/// `verto.modify updateMedia`; FreeSWITCH's answer SDP goes back to the machine.
async fn update_media(
    verto: VertoHandle,
    (id, hop): (String, Hop),
    sdp: String,
    tx: mpsc::Sender<Stamped>,
) {
    let modify = Modify {
        action: ModifyAction::UpdateMedia { sdp },
        dialog: Dialog::new(&id),
    };
    let res = match verto.send_noting(&modify, hop.written()).await {
        Ok(v) => v
            .get("sdp")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| "verto.modify reply without sdp".to_owned()),
        Err(e) => Err(Chain(&e).to_string()),
    };
    let _ = tx.send(Input::ModifyResult(res).into()).await;
}

/// FreeSWITCH's own hold or resume; nothing depends on the reply but the log.
async fn hold(verto: VertoHandle, (id, hop): (String, Hop), on: bool) {
    let (action, modify) = if on {
        ("hold", ModifyAction::Hold)
    } else {
        ("unhold", ModifyAction::Unhold)
    };
    let modify = Modify {
        action: modify,
        dialog: Dialog::new(&id),
    };
    match verto.send_noting(&modify, hop.written()).await {
        Ok(v) => debug!(%action, hold_state = %v["holdState"], "FreeSWITCH hold state"),
        Err(e) => warn!(%action, error = %Chain(&e), "verto.modify hold failed"),
    }
}

/// `verto.attach` with the caller's answer to FreeSWITCH's re-offer.
async fn attach(
    verto: VertoHandle,
    (id, hop): (String, Hop),
    sdp: String,
    tx: mpsc::Sender<Stamped>,
) {
    tracing::trace!(%sdp, "answer sent to FreeSWITCH in verto.attach");
    let attach = Attach {
        sdp,
        dialog: Dialog::new(&id),
    };
    let res = verto
        .send_noting(&attach, hop.written())
        .await
        .map(|_| ())
        .map_err(|e| Chain(&e).to_string());
    let _ = tx.send(Input::AttachResult(res).into()).await;
}

/// `verto.answer` with the callee's answer, for a call FreeSWITCH offered us.
async fn answer(
    verto: VertoHandle,
    (id, hop): (String, Hop),
    sdp: String,
    tx: mpsc::Sender<Stamped>,
) {
    tracing::trace!(%sdp, "answer sent to FreeSWITCH in verto.answer");
    let answer = AnswerCall {
        sdp,
        dialog: Dialog::new(&id),
    };
    let res = verto
        .send_noting(&answer, hop.written())
        .await
        .map(|_| ())
        .map_err(|e| Chain(&e).to_string());
    let _ = tx.send(Input::AnswerResult(res).into()).await;
}

/// `verto.info {dtmf}`; the caller's `!dtmf` gets a reaction, or a notice when it failed.
async fn send_dtmf(
    verto: VertoHandle,
    (id, hop): (String, Hop),
    digits: String,
    react_to: Option<String>,
    (mtx, room): (MatrixQueue, String),
) {
    let info = Info {
        dialog: Dialog::new(&id),
        dtmf: digits.clone(),
    };
    match verto.send_noting(&info, hop.written()).await {
        Ok(_) => {
            debug!(%digits, "digits sent");
            if let Some(ev) = react_to {
                enqueue(
                    &mtx,
                    (room, "m.reaction", reaction_content(&ev, "✅"), None),
                );
            }
        }
        Err(e) => {
            warn!(%digits, error = %Chain(&e), "verto.info dtmf failed");
            let text = format!("Could not send the digits {digits}: {}", Chain(&e));
            enqueue(&mtx, (room, "m.room.message", notice_content(&text), None));
        }
    }
}

/// `verto.bye`; a failure is expected when FreeSWITCH already ended the call.
async fn bye(verto: VertoHandle, (id, hop): (String, Hop), cause: Cause) {
    let bye = Bye {
        dialog: Dialog::new(&id),
        cause,
    };
    match verto.send_noting(&bye, hop.written()).await {
        Ok(_) => debug!(%cause, "verto.bye sent"),
        Err(e) => {
            debug!(%cause, error = %Chain(&e), "verto.bye failed (the call may already be gone)")
        }
    }
}

/// The `dialogParams` of `verto.invite`. The user variables become `verto_dvar_*` channel
/// variables, so the dialplan and the CDRs can tell which Matrix call a channel belongs to.
fn invite_dialog(ctx: &Ctx, routed: &Routed) -> InviteDialog {
    let vars = [
        ("matrix_room_id", &ctx.room_id),
        ("matrix_call_id", &ctx.call_id),
        ("matrix_sender", &ctx.caller),
    ];
    InviteDialog::audio(
        &ctx.verto_call_id,
        &routed.destination,
        &routed.caller_id_name,
        &routed.caller_id_number,
        vars.into_iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect(),
    )
}

/// Sends the call's Matrix events one after another. An event a verto frame caused ends that
/// frame's hop here, as its send starts (encryption, when on, comes after).
async fn send_matrix_events(matrix: MatrixClient, mut rx: mpsc::UnboundedReceiver<Box<Outgoing>>) {
    while let Some(out) = rx.recv().await {
        let (room_id, event_type, content, verto_at) = *out;
        if room_id.is_empty() {
            debug!(%event_type, "no room yet; event dropped");
            continue;
        }
        if let Some(t) = verto_at {
            matrix
                .metrics()
                .hop(crate::metrics::VERTO_TO_MATRIX, t.elapsed());
        }
        // Boxed: the task waits for its next event most of the call, in no send.
        let send =
            matrix.send_reliably(&room_id, event_type, &content, Duration::from_secs(15 * 60));
        match Box::pin(send).await {
            Ok(event_id) => debug!(%event_type, %event_id, "sent"),
            Err(e) => warn!(%event_type, error = %Chain(&e), "could not send event to the caller"),
        }
    }
}
