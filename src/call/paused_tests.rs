//! The call actor and the bridge on tokio's paused clock, with an in-process homeserver and an
//! in-process FreeSWITCH: the timing logic (candidate waits, expiry while dialling, send
//! retries, the call's duration limit, shutdown) runs on virtual time, so each deadline is
//! checked to the millisecond without a real wait and without a flaky margin.
//!
//! The two fakes answer only what the call layer asks; the real Synapse and FreeSWITCH tests
//! in `tests/` check the protocols themselves.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::actor::{self, Ctx, Stamped};
use super::machine::tests::{cands as candidates, end, ms, setup as machine_setup};
use super::machine::{Call, Input, Setup, Version};
use super::room::{self, RoomStore};
use super::route::Router;
use super::store::CallStore;
use crate::config::{CallsConfig, Config};
use crate::matrix::client::{FakeHomeserver, MatrixClient, MatrixError};
use crate::sdp::TrickleCandidate;
use crate::state::StateStore;
use crate::verto::client::FakeRequest;
use crate::verto::VertoHandle;

const OFFER: &str = include_str!("../../tests/fixtures/chromium_offer.sdp");
const FS_ANSWER: &str = "v=0\r\no=FreeSWITCH 1 2 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 16458 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\na=setup:active\r\na=rtcp-mux\r\na=ice-ufrag:x\r\na=candidate:1 1 udp 2130706431 127.0.0.1 16458 typ host generation 0\r\na=end-of-candidates\r\n";
const ROOM: &str = "!room:localhost";
const CALLER: &str = "@alice:localhost";
const BOT: &str = "@bot:localhost";

/// One request as the fake homeserver or switch saw it, with its virtual time.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    body: Value,
}

/// The homeserver: a 1:1 invite-only room; `fail_sends` event sends fail with a 502 first;
/// each answer takes `latency`.
#[derive(Default)]
struct Hs {
    seen: Mutex<Vec<Seen>>,
    fail_sends: Mutex<usize>,
    latency: Duration,
}

impl Hs {
    fn client(self: &Arc<Self>) -> MatrixClient {
        let hs = self.clone();
        let fake: FakeHomeserver = Arc::new(move |method, path, body| {
            let hs = hs.clone();
            Box::pin(async move {
                tokio::time::sleep(hs.latency).await;
                hs.answer(method.as_str(), path, body)
            })
        });
        MatrixClient::faked(fake)
    }

    fn answer(
        &self,
        method: &str,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, MatrixError> {
        let seen = Seen {
            at: Instant::now(),
            method: method.to_owned(),
            path: path.clone(),
            body: body.unwrap_or(Value::Null),
        };
        self.seen.lock().unwrap().push(seen);
        if path.ends_with("/joined_members") {
            return Ok(json!({"joined": {CALLER: {"display_name": "Alice"}, BOT: {}}}));
        }
        if path.contains("/state/m.room.join_rules") {
            return Ok(json!({"join_rule": "invite"}));
        }
        if path.contains("/send/") {
            let mut fail = self.fail_sends.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(MatrixError::Api {
                    status: 502,
                    errcode: "M_UNKNOWN".into(),
                    message: "bad gateway".into(),
                    retry_after: None,
                });
            }
            return Ok(json!({"event_id": "$e"}));
        }
        Err(MatrixError::Api {
            status: 404,
            errcode: "M_NOT_FOUND".into(),
            message: "not here".into(),
            retry_after: None,
        })
    }

    /// The events sent, as (virtual time, event type, path with the transaction id).
    fn sent(&self) -> Vec<(Instant, String, String)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| {
                let ty = s.path.split("/send/").nth(1)?.split('/').next()?;
                Some((s.at, ty.to_owned(), s.path.clone()))
            })
            .collect()
    }
}

/// FreeSWITCH: answers `verto.invite` after `invite_delay`, everything else at once.
struct Switch {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Switch {
    fn start(invite_delay: Duration) -> (Self, VertoHandle) {
        let (handle, mut rx) = VertoHandle::faked(Duration::from_secs(30));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some(FakeRequest {
                method,
                params,
                reply,
            }) = rx.recv().await
            {
                let delay = if method == "verto.invite" {
                    invite_delay
                } else {
                    Duration::ZERO
                };
                log.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    method,
                    path: String::new(),
                    body: params,
                });
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = reply.send(Ok(json!({"message": "CALL CREATED"})));
                });
            }
        });
        (Self { seen }, handle)
    }

    fn requests(&self, method: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.method == method)
            .cloned()
            .collect()
    }
}

fn state_dir() -> StateStore {
    let dir = std::env::temp_dir().join(format!("vertobot-paused-{}", uuid::Uuid::new_v4()));
    StateStore::open(&dir).expect("a temporary state directory")
}

fn setup(now: Instant, lifetime: Duration, quiet: Duration) -> Setup {
    Setup {
        expires_at: now + lifetime,
        candidate_quiet: quiet,
        ..machine_setup(Version::V1, now)
    }
}

/// Starts the actor for `setup`; returns its inbox and its task.
fn spawn_actor(
    setup: Setup,
    hs: &Arc<Hs>,
    verto: VertoHandle,
    cancel: &CancellationToken,
) -> (mpsc::Sender<Stamped>, tokio::task::JoinHandle<()>) {
    let store = state_dir();
    let matrix = hs.client();
    let (placed, _) = mpsc::unbounded_channel();
    let (ended, _) = mpsc::unbounded_channel();
    let ctx = Ctx {
        router: Arc::new(Router::new(
            CallsConfig::default(),
            Vec::new(),
            matrix.clone(),
        )),
        matrix,
        verto,
        room_id: ROOM.into(),
        call_id: setup.call_id.clone(),
        caller: CALLER.into(),
        bot_user: BOT.into(),
        verto_call_id: "v1".into(),
        dial_override: None,
        calls: Arc::new(CallStore::load(&store)),
        detach_on_shutdown: false,
        recovered: false,
        rooms: Arc::new(Mutex::new(RoomStore::load(store, room::FILE))),
        placed,
        ended,
        invited: None,
    };
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(actor::run(
        Call::new(setup),
        ctx,
        rx,
        tx.clone(),
        cancel.clone(),
    ));
    (tx, task)
}

fn host(n: u8) -> TrickleCandidate {
    TrickleCandidate {
        candidate: format!(
            "candidate:{n} 1 udp 2122194687 127.0.0.1 {} typ host",
            40000 + u16::from(n)
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
    }
}

/// A hot loop never lets tokio's paused clock advance, so no virtual timeout fires and the
/// test would hang: this real-time guard fails the whole test binary instead.
struct Watchdog(Arc<std::sync::atomic::AtomicBool>);

impl Watchdog {
    fn start(what: &'static str) -> Self {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                eprintln!("{what}: still running after 60 s of real time (a hot loop?)");
                std::process::exit(101);
            }
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits (on virtual time) for the actor to end: a call that never ends fails the test
/// instead of hanging it.
async fn ended(task: tokio::task::JoinHandle<()>) {
    let r = tokio::time::timeout(Duration::from_secs(600), task).await;
    assert!(matches!(r, Ok(Ok(()))), "the call did not end: {r:?}");
}

/// Waits (on virtual time) until `f` holds, checking after each step of the runtime.
/// The caller's one candidate with the marker; returns once the call is dialled.
async fn dial(tx: &mpsc::Sender<Stamped>, switch: &Switch) {
    tx.send(candidates(vec![host(1), end()]).into())
        .await
        .unwrap();
    until("verto.invite", || {
        !switch.requests("verto.invite").is_empty()
    })
    .await;
}

/// FreeSWITCH answers the call.
async fn fs_answers(tx: &mpsc::Sender<Stamped>) {
    let answer = Input::Answer {
        sdp: Some(FS_ANSWER.into()),
    };
    tx.send(answer.into()).await.unwrap();
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(600);
    while !f() {
        assert!(Instant::now() < give_up, "never happened: {what}");
        tokio::time::sleep(ms(1)).await;
    }
}

/// The invite expires while `verto.invite` is in flight: the caller gets one reject when the
/// invite expires, FreeSWITCH a bye once it has created the channel, and nothing loops in
/// between (the bug of issue 10: one reject per pass until the reply came).
#[tokio::test(start_paused = true)]
async fn expiry_while_dialling_rejects_once_and_byes_after_the_reply() {
    let _guard = Watchdog::start("expiry while dialling");
    let t0 = Instant::now();
    let hs = Arc::new(Hs::default());
    let (switch, verto) = Switch::start(Duration::from_secs(10));
    let cancel = CancellationToken::new();
    let (tx, task) = spawn_actor(
        setup(t0, Duration::from_secs(3), Duration::ZERO),
        &hs,
        verto,
        &cancel,
    );
    tx.send(candidates(vec![host(1), end()]).into())
        .await
        .unwrap();
    ended(task).await;
    let invites = switch.requests("verto.invite");
    assert_eq!(invites.len(), 1);
    let sent = hs.sent();
    let types: Vec<&str> = sent.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(types, ["m.call.reject"], "one ending event only");
    assert_eq!(
        sent[0].0 - t0,
        Duration::from_secs(3),
        "rejected when the invite expired"
    );
    let byes = switch.requests("verto.bye");
    assert_eq!(byes.len(), 1);
    assert_eq!(
        byes[0].at - t0,
        Duration::from_secs(10),
        "bye once the channel exists"
    );
    assert_eq!(byes[0].body["cause"], "NO_ANSWER");
}

/// Without the marker the actor dials a quiet period after the last candidates event, on the
/// millisecond, with every candidate; with nothing FreeSWITCH can use it waits the whole
/// `candidate_wait`.
#[tokio::test(start_paused = true)]
async fn quiet_period_dial_on_the_virtual_clock() {
    let t0 = Instant::now();
    let hs = Arc::new(Hs::default());
    let (switch, verto) = Switch::start(Duration::ZERO);
    let cancel = CancellationToken::new();
    let (tx, _task) = spawn_actor(
        setup(t0, Duration::from_secs(60), ms(400)),
        &hs,
        verto,
        &cancel,
    );
    for (n, at) in [(1, 0), (2, 200), (3, 400)] {
        tokio::time::sleep_until(t0 + ms(at)).await;
        tx.send(candidates(vec![host(n)]).into()).await.unwrap();
    }
    until("verto.invite", || {
        !switch.requests("verto.invite").is_empty()
    })
    .await;
    let invite = &switch.requests("verto.invite")[0];
    assert_eq!(invite.at - t0, ms(800));
    let sdp = invite.body["sdp"].as_str().unwrap_or_default();
    assert_eq!(sdp.matches("a=candidate:").count(), 3, "{sdp}");
    cancel.cancel();
}

/// An event send that fails with a 5xx is retried with the same transaction id after the
/// shared backoff (250 ms, then 500 ms, each ±20 %), and the call goes on.
#[tokio::test(start_paused = true)]
async fn failed_sends_are_retried_with_the_same_transaction_id() {
    let t0 = Instant::now();
    let hs = Arc::new(Hs::default());
    *hs.fail_sends.lock().unwrap() = 2;
    let (switch, verto) = Switch::start(Duration::ZERO);
    let cancel = CancellationToken::new();
    let (tx, _task) = spawn_actor(
        setup(t0, Duration::from_secs(60), Duration::ZERO),
        &hs,
        verto,
        &cancel,
    );
    dial(&tx, &switch).await;
    fs_answers(&tx).await;
    until("three tries", || hs.sent().len() >= 3).await;
    let tries = hs.sent();
    assert!(tries[..3]
        .iter()
        .all(|t| t.1 == "m.call.answer" && t.2 == tries[0].2));
    let gaps = [tries[1].0 - tries[0].0, tries[2].0 - tries[1].0];
    assert!((ms(200)..=ms(300)).contains(&gaps[0]), "{gaps:?}");
    assert!((ms(400)..=ms(600)).contains(&gaps[1]), "{gaps:?}");
    cancel.cancel();
}

/// The room checks before the dial (members, join rule) go to the homeserver together: with
/// 50 ms per request the call is dialled 50 ms after its invite, not 100.
#[tokio::test(start_paused = true)]
async fn admission_asks_the_homeserver_both_questions_at_once() {
    let t0 = Instant::now();
    let hs = Arc::new(Hs {
        latency: ms(50),
        ..Hs::default()
    });
    let (switch, verto) = Switch::start(Duration::ZERO);
    let cancel = CancellationToken::new();
    let s = setup(t0, Duration::from_secs(60), Duration::ZERO);
    let (tx, _task) = spawn_actor(s, &hs, verto, &cancel);
    dial(&tx, &switch).await;
    assert_eq!(switch.requests("verto.invite")[0].at - t0, ms(50));
    cancel.cancel();
}

/// `calls.max_call_secs`: the answered call ends on the second, on both sides.
#[tokio::test(start_paused = true)]
async fn the_duration_limit_ends_the_call_on_time() {
    let t0 = Instant::now();
    let hs = Arc::new(Hs::default());
    let (switch, verto) = Switch::start(Duration::ZERO);
    let cancel = CancellationToken::new();
    let s = Setup {
        max_duration: Some(Duration::from_secs(5)),
        ..setup(t0, Duration::from_secs(60), Duration::ZERO)
    };
    let (tx, task) = spawn_actor(s, &hs, verto, &cancel);
    dial(&tx, &switch).await;
    tokio::time::sleep_until(t0 + ms(100)).await;
    fs_answers(&tx).await;
    ended(task).await;
    let bye = &switch.requests("verto.bye")[0];
    assert_eq!(bye.at - t0, ms(5100), "5 s after the answer");
    let hangup = hs.sent().into_iter().find(|s| s.1 == "m.call.hangup");
    assert!(hangup.is_some_and(|h| h.0 - t0 == ms(5100)));
}

/// The whole bridge on virtual time: a sync batch with an invite and its candidates becomes a
/// `verto.invite`, FreeSWITCH's answer an `m.call.answer`, and a stop hangs the call up on
/// both sides before `run` returns.
#[tokio::test(start_paused = true)]
async fn bridge_dials_answers_and_hangs_up_on_stop() {
    let hs = Arc::new(Hs::default());
    let (switch, verto) = Switch::start(ms(50));
    let cfg = Config::parse(&format!(
        "matrix:\n  homeserver: \"http://fake.invalid\"\n  user_id: \"{BOT}\"\nverto:\n  url: \"ws://fake.invalid\"\n  login: \"1000@localhost\"\n"
    ))
    .expect("a minimal configuration");
    let bridge = crate::bridge::Bridge::new(
        &cfg,
        state_dir(),
        hs.client(),
        verto,
        BOT.into(),
        "BOT".into(),
    );
    let (batches, batch_rx) = mpsc::channel(8);
    let (verto_events, verto_rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(bridge.run(batch_rx, verto_rx, cancel.clone(), Duration::from_secs(10)));
    let cands = json!([{"candidate": host(1).candidate, "sdpMid": "0", "sdpMLineIndex": 0}, {"candidate": ""}]);
    let events = [
        json!({"type": "m.call.invite", "sender": CALLER, "event_id": "$1", "origin_server_ts": 1, "room_id": ROOM,
            "content": {"call_id": "c1", "party_id": "CALLER", "version": "1", "lifetime": 60000, "offer": {"type": "offer", "sdp": OFFER}}}),
        json!({"type": "m.call.candidates", "sender": CALLER, "event_id": "$2", "origin_server_ts": 2, "room_id": ROOM,
            "content": {"call_id": "c1", "party_id": "CALLER", "version": "1", "candidates": cands}}),
    ];
    let parsed = events
        .iter()
        .map(|e| {
            let raw = serde_json::value::to_raw_value(e).unwrap();
            crate::matrix::events::parse_event(&raw).unwrap()
        })
        .collect();
    let batch = crate::matrix::sync::Batch {
        received: Instant::now(),
        rooms: vec![(ROOM.into(), parsed)],
        handled: None,
    };
    batches.send(batch).await.unwrap();
    until("verto.invite", || {
        !switch.requests("verto.invite").is_empty()
    })
    .await;
    let invite = &switch.requests("verto.invite")[0];
    let verto_call_id = invite.body["dialogParams"]["callID"]
        .as_str()
        .unwrap()
        .to_owned();
    verto_events
        .send(crate::verto::client::Received {
            at: Instant::now(),
            event: crate::verto::VertoEvent::Answer {
                call_id: verto_call_id.clone(),
                sdp: Some(FS_ANSWER.into()),
            },
        })
        .await
        .unwrap();
    until("m.call.answer", || {
        hs.sent().iter().any(|s| s.1 == "m.call.answer")
    })
    .await;
    cancel.cancel();
    let lost = run.await.unwrap();
    assert!(lost.is_none());
    let bye = switch.requests("verto.bye");
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].body["dialogParams"]["callID"], verto_call_id);
    assert!(
        hs.sent().iter().any(|s| s.1 == "m.call.hangup"),
        "the caller was told"
    );
}
