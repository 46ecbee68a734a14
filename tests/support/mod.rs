//! Shared test support: the fake FreeSWITCH, Synapse helpers, and an in-process bot.

#![allow(dead_code)]

pub mod fake_verto;
pub mod http_proxy;
pub mod media;
pub mod switch;
pub mod synapse;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub use fake_verto::FakeVerto;
#[allow(unused_imports)]
pub use switch::{Ringer, Switch};
pub use synapse::TestUser;

/// A generous bound for anything that crosses Synapse.
pub const T: Duration = Duration::from_secs(30);

/// The verto password the fake accepts.
pub const VERTO_PASSWORD: &str = "1234";

/// The real Chromium offer captured from matrix-js-sdk (no candidates inside, trickle).
pub const OFFER: &str = include_str!("../fixtures/chromium_offer.sdp");

/// Logs to the test's captured output; `RUST_LOG` overrides the level.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(vertobot::log_filter(Some(
            &std::env::var("RUST_LOG").unwrap_or_else(|_| "vertobot=debug".into()),
        )))
        .with_test_writer()
        .try_init();
}

/// A bot running in this process.
pub struct Bot {
    /// Its Matrix user id.
    pub user_id: String,
    /// Its password.
    pub password: String,
    /// Its state directory (kept across restarts).
    pub state_dir: PathBuf,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// How a test bot is configured.
#[derive(Clone)]
pub struct BotOpts {
    /// `calls.destination`.
    pub destination: String,
    /// `calls.candidate_wait_ms`.
    pub candidate_wait_ms: u64,
    /// `verto.password`.
    pub verto_password: String,
    /// More lines for the `calls:` section (indented by two spaces).
    pub calls_extra: String,
    /// More top-level YAML (routes, dtmf, dial, access).
    pub extra: String,
    /// `verto.request_timeout_secs`.
    pub request_timeout_secs: u64,
    /// Another homeserver than the shared one: (URL, registration secret).
    pub homeserver: Option<(String, String)>,
}

impl Default for BotOpts {
    fn default() -> Self {
        Self {
            destination: "9196".into(),
            // Calls with candidates dial at the marker or a quiet period after them; the wait
            // only bounds a caller whose candidates are late (a loaded homeserver).
            candidate_wait_ms: 3000,
            verto_password: VERTO_PASSWORD.into(),
            calls_extra: String::new(),
            extra: String::new(),
            request_timeout_secs: 5,
            homeserver: None,
        }
    }
}

impl Bot {
    /// Registers a bot user and starts the bridge.
    pub async fn start(fake: &FakeVerto, opts: BotOpts) -> Bot {
        let (hs, secret) = opts.homeserver.clone().unwrap_or_else(synapse::homeserver);
        let (user_id, password) = synapse::register_on(&hs, &secret, &synapse::unique("bot")).await;
        let state_dir =
            std::env::temp_dir().join(format!("vertobot-test-{}", uuid::Uuid::new_v4()));
        Self::start_with(user_id, password, state_dir, fake, opts).await
    }

    /// Starts the bridge for an existing bot user and state directory (a restart).
    pub async fn start_with(
        user_id: String,
        password: String,
        state_dir: PathBuf,
        fake: &FakeVerto,
        opts: BotOpts,
    ) -> Bot {
        init_logs();
        let (hs, _) = opts.homeserver.clone().unwrap_or_else(synapse::homeserver);
        let yaml = format!(
            r#"
matrix:
  homeserver: "{hs}"
  user_id: "{user_id}"
  password: "{password}"
  sync_timeout_secs: 5
verto:
  url: "{url}"
  login: "1000@localhost"
  password: "{vp}"
  request_timeout_secs: {rts}
  keepalive_secs: 20
  reconnect_max_secs: 2
calls:
  destination: "{dest}"
  candidate_wait_ms: {wait}
{calls_extra}
state_dir: "{state}"
{extra}
"#,
            calls_extra = opts.calls_extra,
            rts = opts.request_timeout_secs,
            extra = opts.extra,
            url = fake.url,
            vp = opts.verto_password,
            dest = opts.destination,
            wait = opts.candidate_wait_ms,
            state = state_dir.display(),
        );
        let cfg = vertobot::config::Config::parse(&yaml).expect("test config parses");
        cfg.validate().expect("test config is valid");
        let cancel = CancellationToken::new();
        let task = tokio::spawn(vertobot::run(cfg, cancel.clone()));
        Bot {
            user_id,
            password,
            state_dir,
            cancel,
            task,
        }
    }

    /// Stops the bridge (as SIGTERM does) and returns how long it took.
    pub async fn stop(self) -> (Duration, String, String, PathBuf) {
        let start = tokio::time::Instant::now();
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("bridge stops within 15 s")
            .expect("bridge task did not panic")
            .expect("bridge returned Ok");
        (start.elapsed(), self.user_id, self.password, self.state_dir)
    }
}

/// The real FreeSWITCH of this run behind a recording tap, a bot, and a caller in a 1:1 room
/// with the bot.
pub async fn setup(opts: BotOpts) -> (FakeVerto, Bot, TestUser, String) {
    let tap = FakeVerto::tap(&Switch::shared()).await;
    setup_with(tap, opts).await
}

/// The fake verto peer, a bot, and a caller: only for what the real switch will not do on
/// demand (hostile frames, requests left without reply, scripted far-end events); each caller
/// says why.
pub async fn setup_fake(opts: BotOpts) -> (FakeVerto, Bot, TestUser, String) {
    setup_with(FakeVerto::start(VERTO_PASSWORD).await, opts).await
}

/// A bot on `fake` (a fake or a tap) and a caller in a 1:1 room with it.
pub async fn setup_with(fake: FakeVerto, opts: BotOpts) -> (FakeVerto, Bot, TestUser, String) {
    let bot = Bot::start(&fake, opts).await;
    let mut caller = TestUser::new("caller").await;
    let room = caller.create_dm(&bot.user_id).await;
    caller.wait_joined(&room, &bot.user_id, T).await;
    (fake, bot, caller, room)
}

/// Places a call with the real Chromium offer and candidates (marker included).
pub async fn place_call(caller: &TestUser, room: &str) -> String {
    let cid = call_id();
    caller
        .send(room, "m.call.invite", invite_v1(&cid, OFFER, 60000))
        .await;
    for ev in chromium_candidates(&cid) {
        caller.send(room, "m.call.candidates", ev).await;
    }
    cid
}

/// Places a call from a real WebRTC caller (aiortc, its offer as it makes it, candidates
/// inside), waits for the bot's answer and applies it, so that FreeSWITCH's side has media
/// (its dialplan applications run only then). Returns the call id and the answer event.
pub async fn place_media_call(
    caller: &mut TestUser,
    room: &str,
    peer: &media::MediaPeer,
) -> (String, Value) {
    place_media_call_as(caller, room, peer, false).await
}

/// [`place_media_call`] as a version 0 caller (`version: 0`, no `party_id`) when `v0`.
pub async fn place_media_call_as(
    caller: &mut TestUser,
    room: &str,
    peer: &media::MediaPeer,
    v0: bool,
) -> (String, Value) {
    let cid = call_id();
    let (offer, _) = peer.offer(&cid, false).await;
    let invite = if v0 {
        json!({"call_id": cid, "version": 0, "lifetime": 60000, "offer": {"type": "offer", "sdp": offer}})
    } else {
        invite_v1(&cid, &offer, 60000)
    };
    caller.send(room, "m.call.invite", invite).await;
    let answer = caller.wait_call_event(room, "m.call.answer", &cid, T).await;
    let sdp = answer["content"]["answer"]["sdp"]
        .as_str()
        .unwrap_or_default();
    peer.apply_answer(&cid, sdp).await;
    (cid, answer)
}

/// Hangs up a call as matrix-js-sdk does (`user_hangup`).
pub async fn hang_up(caller: &TestUser, room: &str, call_id: &str) {
    caller
        .send(room, "m.call.hangup", json!({"call_id": call_id, "party_id": "CXRJGXZIQO", "version": "1", "reason": "user_hangup"}))
        .await;
}

/// Places a version 0 call (integer version, no party_id) with a candidate inside the offer
/// and an end-of-candidates event.
pub async fn place_v0_call(caller: &TestUser, room: &str) -> String {
    let cid = call_id();
    let offer = OFFER.replace(
        "a=mid:0\r\n",
        "a=mid:0\r\na=candidate:1 1 udp 2122194687 127.0.0.1 40000 typ host\r\n",
    );
    caller
        .send(room, "m.call.invite", json!({"call_id": cid, "version": 0, "lifetime": 60000, "offer": {"type": "offer", "sdp": offer}}))
        .await;
    caller
        .send(room, "m.call.candidates", json!({"call_id": cid, "version": 0, "candidates": [{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]}))
        .await;
    cid
}

/// Sends a text message; returns its event id.
pub async fn say(user: &TestUser, room: &str, text: &str) -> String {
    user.send(
        room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": text}),
    )
    .await
}

/// A fresh Matrix call id.
pub fn call_id() -> String {
    format!(
        "{}{}",
        1795762030935u64,
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    )
}

/// `m.call.invite` content as matrix-js-sdk sends it (version "1").
pub fn invite_v1(call_id: &str, offer: &str, lifetime: u64) -> Value {
    json!({
        "call_id": call_id, "party_id": "CXRJGXZIQO", "version": "1", "lifetime": lifetime,
        "offer": {"type": "offer", "sdp": offer},
        "capabilities": {"m.call.transferee": false, "m.call.dtmf": false},
        "sdp_stream_metadata": {"c82307e8-72dd-46a1-acc4-4f440e10e8af": {"purpose": "m.usermedia", "audio_muted": false, "video_muted": true}},
    })
}

/// The two `m.call.candidates` contents of the real Chromium capture, for `call_id`.
/// The second one ends with the end-of-candidates marker.
pub fn chromium_candidates(call_id: &str) -> Vec<Value> {
    let json: Value =
        serde_json::from_str(include_str!("../fixtures/chromium_candidates.json")).unwrap();
    json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e["call_id"] = json!(call_id);
            e
        })
        .collect()
}

/// Every call a bot kept for a restart (`state_dir/calls/`, one file each), as one text.
pub fn saved_calls(state_dir: &std::path::Path) -> String {
    let Ok(entries) = std::fs::read_dir(state_dir.join("calls")) else {
        return String::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The same candidates without the end-of-candidates marker.
pub fn chromium_candidates_no_marker(call_id: &str) -> Vec<Value> {
    chromium_candidates(call_id)
        .into_iter()
        .map(|mut e| {
            let c: Vec<Value> = e["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["candidate"] != "")
                .cloned()
                .collect();
            e["candidates"] = json!(c);
            e
        })
        .collect()
}

/// Finds the `verto.invite` the bot sent for a Matrix call id.
pub fn invite_for<'a>(f: &'a fake_verto::Frame, matrix_call_id: &str) -> Option<&'a Value> {
    (f.msg["method"] == "verto.invite"
        && f.msg["params"]["dialogParams"]["userVariables"]["matrix_call_id"] == matrix_call_id)
        .then_some(&f.msg)
}

/// The verto `callID` of the bot's invite for a Matrix call.
pub async fn wait_dialled(fake: &FakeVerto, matrix_call_id: &str) -> (String, Value) {
    let id = matrix_call_id.to_owned();
    let f = fake
        .wait_for(&format!("verto.invite for {id}"), T, move |f| {
            invite_for(f, &id).is_some()
        })
        .await;
    let verto_id = f.msg["params"]["dialogParams"]["callID"]
        .as_str()
        .unwrap()
        .to_owned();
    (verto_id, f.msg)
}

/// Waits for the bot's `verto.bye` for a verto call and returns its cause.
pub async fn wait_bye(fake: &FakeVerto, verto_id: &str) -> String {
    let id = verto_id.to_owned();
    let f = fake
        .wait_for(&format!("verto.bye for {id}"), T, move |f| {
            f.msg["method"] == "verto.bye"
                && f.msg["params"]["dialogParams"]["callID"] == id.as_str()
        })
        .await;
    f.msg["params"]["cause"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
