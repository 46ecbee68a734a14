//! Calls from FreeSWITCH to Matrix users (issue 12), end to end: the real FreeSWITCH rings
//! the bot's verto user (`originate` over the event socket, with `verto_svar_matrix_user` set
//! as an administrator's dialplan would), the bot rings the user in Matrix, and the callee is
//! matrix-js-sdk's MatrixCall in headless Chromium (`tests/media/js/callee.mjs`), which
//! answers, rejects or lets it ring as Element would.
//!
//! Every bot here logs in as verto user 1000, and `user/1000@localhost` rings every session
//! of that user: the tests take turns ([`serial`]) so that each call reaches one bot.

#![allow(clippy::await_holding_lock)]

mod support;

use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

static TURN: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bot with inbound calls on (ring timeout `ring_secs`) and a user in a 1:1 room with it.
async fn inbound_setup(ring_secs: u64, more: &str) -> (FakeVerto, Bot, TestUser, String) {
    setup(BotOpts {
        extra: format!("inbound:\n  ring_timeout_secs: {ring_secs}\n{more}"),
        ..Default::default()
    })
    .await
}

/// The browser callee, running until it reports.
struct Callee {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Callee {
    /// Starts matrix-js-sdk in Chromium for `user` and waits until its client syncs, so the
    /// call can be placed. `opts` go to `window.runCallee` (action, holdMs, dtmf, ...).
    async fn start(user: &TestUser, device: Option<(&str, &str)>, opts: Value) -> Callee {
        let (token, device_id) = device.unwrap_or((user.token(), &user.device_id));
        let mut o = json!({"hs": user.homeserver(), "token": token, "userId": user.user_id,
            "deviceId": device_id});
        for (k, v) in opts.as_object().cloned().unwrap_or_default() {
            o[k] = v;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/media/js/callee.mjs");
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .arg(o.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut c = Callee {
            child,
            lines: BufReader::new(stdout).lines(),
        };
        let first = c.line(Duration::from_secs(90)).await;
        assert_eq!(
            first["ready"], true,
            "callee.mjs did not get ready: {first}"
        );
        c
    }

    async fn line(&mut self, timeout: Duration) -> Value {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .expect("callee.mjs reports in time")
            .expect("callee.mjs stdout")
            .unwrap_or_default();
        serde_json::from_str(&line).unwrap_or_else(|_| json!({"error": line}))
    }

    /// What the callee saw, once it is done.
    async fn report(mut self) -> Value {
        let r = self.line(Duration::from_secs(120)).await;
        let _ = self.child.wait().await;
        assert!(r.get("error").is_none(), "callee.mjs failed: {r:#}");
        r
    }
}

/// Rings `user` from FreeSWITCH: an `originate` to the bot's verto user with the channel
/// variable set, and `app` run on the leg once answered. Returns the leg's UUID (the verto
/// `callID`) and the task that ends with the originate's result.
fn ring(user: Option<&str>, app: &str) -> (String, tokio::task::JoinHandle<String>) {
    let uuid = uuid::Uuid::new_v4().to_string();
    // Without the variable, the routes decide; the called number is set as a dialplan would
    // pass on the number the phone dialled.
    let var = user.map_or_else(
        || ",origination_callee_id_number=2001".to_owned(),
        |u| format!(",verto_svar_matrix_user={u}"),
    );
    let cmd = format!(
        "originate {{origination_uuid={uuid},origination_caller_id_name='Alice Smith',origination_caller_id_number=+49301234567,originate_timeout=60{var}}}user/1000@localhost {app}"
    );
    let port = Switch::shared().esl_port();
    let task = tokio::spawn(async move {
        support::switch::esl_api(port, &cmd)
            .await
            .unwrap_or_else(|e| format!("-ERR {e}"))
    });
    (uuid, task)
}

/// Rings `user` as an administrator's dialplan would: a call (a loopback leg to extension 9664,
/// which answers with an endless 440 Hz tone, standing in for a phone) is bridged to the bot's
/// verto user with the channel variable set on the bridged leg. A loopback leg offers only
/// L16, which FreeSWITCH would pass on to the bot's leg; the bridge sets browser codecs, as
/// the README tells administrators to when the calling leg's are not. Returns the calling leg's UUID,
/// the bot's leg's UUID (its verto `callID`), and the originate's task.
fn ring_bridged(user: &str) -> (String, String, tokio::task::JoinHandle<String>) {
    let (a, b) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    let cmd = format!(
        "originate {{origination_uuid={a},effective_caller_id_name='Alice Smith',effective_caller_id_number=+49301234567}}loopback/9664/verto &bridge({{origination_uuid={b},absolute_codec_string=^^:OPUS:PCMU:PCMA,verto_svar_matrix_user={user}}}user/1000@localhost)"
    );
    let port = Switch::shared().esl_port();
    let task = tokio::spawn(async move {
        support::switch::esl_api(port, &cmd)
            .await
            .unwrap_or_else(|e| format!("-ERR {e}"))
    });
    (a, b, task)
}

/// One request to the homeserver's client API as `token`; panics unless it succeeds.
async fn client_api(hs: &str, token: &str, method: reqwest::Method, path: &str) -> Value {
    let r = reqwest::Client::new()
        .request(method, format!("{hs}/_matrix/client/v3{path}"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .expect("homeserver reachable");
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

/// The bot's global account data of `kind`, read through a login of its own that is logged
/// out again (the bot's own device and store are not touched).
async fn bot_account_data(bot: &Bot, kind: &str) -> Value {
    let (hs, _) = support::synapse::homeserver();
    let login: Value = reqwest::Client::new()
        .post(format!("{hs}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": bot.user_id}, "password": bot.password}))
        .send()
        .await
        .expect("homeserver reachable")
        .json()
        .await
        .expect("login reply");
    let token = login["access_token"]
        .as_str()
        .expect("bot login")
        .to_owned();
    let path = format!("/user/{}/account_data/{kind}", bot.user_id);
    let data = client_api(&hs, &token, reqwest::Method::GET, &path).await;
    client_api(&hs, &token, reqwest::Method::POST, "/logout").await;
    data
}

/// The leg runs extension 9664 once answered: an endless 440 Hz tone.
const TONE: &str = "9664 XML verto";

/// The bot's `verto.answer` for a leg.
async fn wait_verto_answer(fake: &FakeVerto, uuid: &str) -> Value {
    let id = uuid.to_owned();
    fake.wait_for("verto.answer from the bot", T, move |f| {
        f.msg["method"] == "verto.answer"
            && f.msg["params"]["dialogParams"]["callID"] == id.as_str()
    })
    .await
    .msg
}

/// The Matrix user is rung in their 1:1 room with the bot, after a notice with the caller
/// id; the browser answers; FreeSWITCH's tone reaches the browser and the browser's audio
/// reaches FreeSWITCH; the callee's hangup ends the FreeSWITCH leg.
#[tokio::test]
async fn answered_with_audio_both_ways() {
    let _turn = serial();
    let (fake, bot, mut user, room) = inbound_setup(30, "").await;
    let callee = Callee::start(&user, None, json!({"action": "answer", "holdMs": 6000})).await;
    let (phone, uuid, originate) = ring_bridged(&user.user_id);
    let invite = user
        .wait_for("the bot's m.call.invite", T, |s| {
            s.event["type"] == "m.call.invite"
        })
        .await;
    let c = &invite["content"];
    assert_eq!(c["invitee"], user.user_id.as_str());
    assert_eq!(c["version"], "1");
    assert_eq!(c["capabilities"]["m.call.dtmf"], true);
    let lifetime = c["lifetime"].as_u64().unwrap();
    assert!((20_000..=30_000).contains(&lifetime), "{lifetime}");
    let cid = c["call_id"].as_str().unwrap().to_owned();
    // The notice came first.
    let notices = user.notices(&room);
    assert!(
        notices
            .iter()
            .any(|n| n == "📞 Call from Alice Smith <+49301234567>"),
        "{notices:?}"
    );
    let answer = wait_verto_answer(&fake, &uuid).await;
    assert!(answer["params"]["sdp"]
        .as_str()
        .unwrap()
        .contains("a=candidate"));
    let select = user
        .wait_call_event(&room, "m.call.select_answer", &cid, T)
        .await;
    assert!(select["content"]["selected_party_id"].is_string());
    let sw = Switch::shared();
    sw.wait_audio_in(&uuid, 50, MEDIA_T).await;
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    assert_eq!(r["callId"], cid.as_str());
    assert_eq!(r["roomId"], room.as_str());
    assert_eq!(r["opponentSupportsDTMF"], true, "{r:#}");
    assert!(
        r["packetsReceived"].as_u64().unwrap() > 100,
        "the tone: {r:#}"
    );
    assert!(r["packetsSent"].as_u64().unwrap() > 100, "{r:#}");
    assert!(originate.await.unwrap().starts_with("+OK"));
    // The callee hung up: the leg ends with a normal clearing.
    assert_eq!(wait_bye(&fake, &uuid).await, "NORMAL_CLEARING");
    sw.wait_channel(&uuid, false, T).await;
    sw.wait_channel(&phone, false, T).await;
    bot.stop().await;
}

const MEDIA_T: Duration = Duration::from_secs(20);

/// The callee declines: FreeSWITCH gets CALL_REJECTED and the originate fails with it.
#[tokio::test]
async fn rejected_by_the_callee() {
    let _turn = serial();
    let (fake, bot, user, _room) = inbound_setup(30, "").await;
    let callee = Callee::start(&user, None, json!({"action": "reject"})).await;
    let (uuid, originate) = ring(Some(&user.user_id), TONE);
    let r = callee.report().await;
    assert_eq!(r["rung"], true, "{r:#}");
    assert_eq!(wait_bye(&fake, &uuid).await, "CALL_REJECTED");
    let res = originate.await.unwrap();
    assert!(res.contains("CALL_REJECTED"), "{res}");
    bot.stop().await;
}

/// Busy: matrix-js-sdk's hangup with `user_busy` becomes USER_BUSY.
#[tokio::test]
async fn busy_callee() {
    let _turn = serial();
    let (fake, bot, user, _room) = inbound_setup(30, "").await;
    let callee = Callee::start(&user, None, json!({"action": "busy"})).await;
    let (uuid, originate) = ring(Some(&user.user_id), TONE);
    callee.report().await;
    assert_eq!(wait_bye(&fake, &uuid).await, "USER_BUSY");
    assert!(originate.await.unwrap().contains("USER_BUSY"));
    bot.stop().await;
}

/// Nobody answers within the ring timeout: the callee's client stops ringing on the bot's
/// `invite_timeout` hangup, and FreeSWITCH gets NO_ANSWER.
#[tokio::test]
async fn not_answered_in_the_ring_time() {
    let _turn = serial();
    let (fake, bot, mut user, room) = inbound_setup(6, "").await;
    let callee = Callee::start(
        &user,
        None,
        json!({"action": "ignore", "ringWaitMs": 30000}),
    )
    .await;
    let (uuid, originate) = ring(Some(&user.user_id), TONE);
    let invite = user
        .wait_for("the bot's m.call.invite", T, |s| {
            s.event["type"] == "m.call.invite"
        })
        .await;
    let cid = invite["content"]["call_id"].as_str().unwrap().to_owned();
    let hangup = user.wait_call_event(&room, "m.call.hangup", &cid, T).await;
    assert_eq!(hangup["content"]["reason"], "invite_timeout");
    assert_eq!(wait_bye(&fake, &uuid).await, "NO_ANSWER");
    let r = callee.report().await;
    assert_eq!(r["finalState"], "ended", "{r:#}");
    assert!(originate.await.unwrap().contains("NO_ANSWER"));
    bot.stop().await;
}

/// The SIP side gives up while the user's client rings: the Matrix call is cancelled.
#[tokio::test]
async fn caller_hangs_up_while_ringing() {
    let _turn = serial();
    let (fake, bot, mut user, room) = inbound_setup(30, "").await;
    let callee = Callee::start(
        &user,
        None,
        json!({"action": "ignore", "ringWaitMs": 30000}),
    )
    .await;
    let (phone, _uuid, originate) = ring_bridged(&user.user_id);
    let invite = user
        .wait_for("the bot's m.call.invite", T, |s| {
            s.event["type"] == "m.call.invite"
        })
        .await;
    let cid = invite["content"]["call_id"].as_str().unwrap().to_owned();
    // The phone gives up.
    Switch::shared()
        .api(&format!("uuid_kill {phone} ORIGINATOR_CANCEL"))
        .await;
    let hangup = user.wait_call_event(&room, "m.call.hangup", &cid, T).await;
    assert_eq!(hangup["content"]["reason"], "user_hangup");
    let r = callee.report().await;
    assert_eq!(r["finalState"], "ended", "{r:#}");
    assert_eq!(r["hangupParty"], "remote", "{r:#}");
    let _ = originate.await;
    assert!(
        !fake
            .frames()
            .iter()
            .any(|f| f.msg["method"] == "verto.answer"),
        "nothing answered"
    );
    bot.stop().await;
}

/// A call no variable, route or default names a user for is refused with
/// NO_ROUTE_DESTINATION, and nothing reaches Matrix.
#[tokio::test]
async fn unrouted_call_is_refused_and_matrix_sees_nothing() {
    let _turn = serial();
    let (fake, bot, mut user, _room) = inbound_setup(30, "").await;
    let (uuid, originate) = ring(None, TONE);
    assert_eq!(wait_bye(&fake, &uuid).await, "NO_ROUTE_DESTINATION");
    let res = originate.await.unwrap();
    assert!(res.contains("NO_ROUTE_DESTINATION"), "{res}");
    // A user the variable names who is not on access.allow (empty: this server's users only)
    // is not rung either: the bot would otherwise open direct chats with anyone.
    let (uuid, originate) = ring(Some("@mallory:elsewhere.example"), TONE);
    assert_eq!(wait_bye(&fake, &uuid).await, "NO_ROUTE_DESTINATION");
    let res = originate.await.unwrap();
    assert!(res.contains("NO_ROUTE_DESTINATION"), "{res}");
    // A later routed call's invite is the first event the bot sends: nothing came before it.
    let (uuid2, originate2) = ring(Some(&user.user_id), TONE);
    user.wait_for("the routed call's invite", T, |s| {
        s.event["type"] == "m.call.invite"
    })
    .await;
    let sent: Vec<String> = user
        .history
        .iter()
        .filter(|s| s.event["sender"] == bot.user_id.as_str())
        .filter(|s| s.event["type"] != "m.room.member")
        .map(|s| s.event["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        sent,
        ["m.room.message", "m.call.invite"],
        "only the second call's notice and invite"
    );
    Switch::shared().api(&format!("uuid_kill {uuid2}")).await;
    let _ = originate2.await;
    bot.stop().await;
}

/// Over `calls.max_calls` (which counts both directions) a call from FreeSWITCH is refused
/// with NORMAL_CIRCUIT_CONGESTION, and the user is not rung for it.
#[tokio::test]
async fn max_calls_refuses_a_call_from_freeswitch() {
    let _turn = serial();
    let (fake, bot, mut user, room) = setup(BotOpts {
        extra: "inbound:\n  ring_timeout_secs: 30\n".into(),
        calls_extra: "  max_calls: 1".into(),
        ..Default::default()
    })
    .await;
    let (first, originate) = ring(Some(&user.user_id), TONE);
    let invite = user
        .wait_for("the first call's invite", T, |s| {
            s.event["type"] == "m.call.invite"
        })
        .await;
    let cid = invite["content"]["call_id"].as_str().unwrap().to_owned();
    let (second, originate2) = ring(Some(&user.user_id), TONE);
    assert_eq!(wait_bye(&fake, &second).await, "NORMAL_CIRCUIT_CONGESTION");
    let res = originate2.await.unwrap();
    assert!(res.contains("NORMAL_CIRCUIT_CONGESTION"), "{res}");
    // The phone gives up on the first call: it ends in Matrix, and it was the only one rung.
    Switch::shared().api(&format!("uuid_kill {first}")).await;
    user.wait_call_event(&room, "m.call.hangup", &cid, T).await;
    let _ = originate.await;
    let invites = user
        .history
        .iter()
        .filter(|s| s.event["type"] == "m.call.invite")
        .count();
    assert_eq!(invites, 1, "only the first call rang");
    bot.stop().await;
}

/// The user left the remembered 1:1 room, where the bot stayed: the next call invites them
/// back into that room (no new one) and rings once they have joined.
#[tokio::test]
async fn a_user_who_left_the_remembered_room_is_invited_back_into_it() {
    let _turn = serial();
    let (fake, bot, mut user, room) = inbound_setup(40, "").await;
    // A first call finds the room and remembers it; the phone gives up at once.
    let (first, originate) = ring(Some(&user.user_id), TONE);
    let invite = user
        .wait_for("the first call's invite, in the 1:1 room", T, |s| {
            s.event["type"] == "m.call.invite" && s.room_id == room
        })
        .await;
    let cid = invite["content"]["call_id"].as_str().unwrap().to_owned();
    Switch::shared().api(&format!("uuid_kill {first}")).await;
    user.wait_call_event(&room, "m.call.hangup", &cid, T).await;
    let _ = originate.await;
    let rooms = std::fs::read_to_string(bot.state_dir.join("rooms.json")).unwrap();
    assert!(rooms.contains(&room), "{rooms}");
    let leave = format!("/rooms/{}/leave", urlencode(&room));
    client_api(
        user.homeserver(),
        user.token(),
        reqwest::Method::POST,
        &leave,
    )
    .await;
    let callee = Callee::start(
        &user,
        None,
        json!({"action": "answer", "holdMs": 1000, "joinInvites": true, "skipCallIds": [cid]}),
    )
    .await;
    let (uuid, originate) = ring(Some(&user.user_id), TONE);
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    assert_eq!(r["roomId"], room.as_str(), "rung in the same room: {r:#}");
    wait_verto_answer(&fake, &uuid).await;
    let _ = originate.await;
    bot.stop().await;
}

/// Percent-encodes a room id for a URL path.
fn urlencode(s: &str) -> String {
    s.replace('!', "%21").replace(':', "%3A")
}

/// A route picks the user by caller id when the channel has no variable; a user the bot has
/// no room with gets a new direct chat, and the call rings once they have joined it.
#[tokio::test]
async fn routed_to_a_user_without_a_room_rings_in_a_new_direct_chat() {
    let _turn = serial();
    let mut user = TestUser::new("newdm").await;
    let route = format!(
        "  routes:\n    - callee: \"1000\"\n      user: \"@nobody:localhost\"\n    - caller: \"+4930*\"\n      callee: \"2001\"\n      user: \"{}\"\n",
        user.user_id
    );
    let (fake, bot, _other, other_room) = inbound_setup(40, &route).await;
    let callee = Callee::start(
        &user,
        None,
        json!({"action": "answer", "holdMs": 2000, "joinInvites": true}),
    )
    .await;
    let (uuid, originate) = ring(None, TONE);
    let inv = user
        .wait_for("the bot's room invite", T, |s| {
            s.event["type"] == "m.room.member" && s.event["content"]["membership"] == "invite"
        })
        .await;
    assert_eq!(inv["content"]["is_direct"], true, "{inv}");
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    assert_ne!(r["roomId"], other_room.as_str());
    // Remembered for the next call, and across restarts.
    let rooms = std::fs::read_to_string(bot.state_dir.join("rooms.json")).unwrap();
    assert!(
        rooms.contains(r["roomId"].as_str().unwrap()) && rooms.contains(&user.user_id),
        "{rooms}"
    );
    // Listed as a direct chat with the user in the bot's m.direct, as clients expect.
    let direct = bot_account_data(&bot, "m.direct").await;
    assert_eq!(direct[&user.user_id], json!([r["roomId"]]), "{direct}");
    wait_verto_answer(&fake, &uuid).await;
    assert!(r["packetsReceived"].as_u64().unwrap() > 20, "{r:#}");
    assert!(originate.await.unwrap().starts_with("+OK"));
    // After a restart the next call rings in the same room, with no new invite to accept.
    let (_, bot_user, password, state_dir) = bot.stop().await;
    let opts = BotOpts {
        extra: format!("inbound:\n  ring_timeout_secs: 40\n{route}"),
        ..Default::default()
    };
    let bot = Bot::start_with(bot_user, password, state_dir, &fake, opts).await;
    let callee = Callee::start(
        &user,
        None,
        json!({"action": "answer", "holdMs": 1000, "skipCallIds": [r["callId"]]}),
    )
    .await;
    let (uuid, originate) = ring(None, TONE);
    let again = callee.report().await;
    assert_eq!(again["connected"], true, "{again:#}");
    assert_eq!(again["roomId"], r["roomId"], "{again:#}");
    wait_verto_answer(&fake, &uuid).await;
    let _ = originate.await;
    bot.stop().await;
}

/// FreeSWITCH hangs up an answered call: the callee's call ends as a remote hangup.
#[tokio::test]
async fn far_end_hangs_up_after_the_answer() {
    let _turn = serial();
    let (fake, bot, user, _room) = inbound_setup(30, "").await;
    let callee = Callee::start(
        &user,
        None,
        json!({"action": "answer", "holdMs": 500, "endWaitMs": 20000, "hangup": false}),
    )
    .await;
    let (uuid, originate) = ring(Some(&user.user_id), TONE);
    wait_verto_answer(&fake, &uuid).await;
    let sw = Switch::shared();
    sw.wait_audio_in(&uuid, 20, MEDIA_T).await;
    sw.api(&format!("uuid_kill {uuid}")).await;
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    assert_eq!(r["finalState"], "ended", "{r:#}");
    assert_eq!(r["hangupParty"], "remote", "{r:#}");
    assert_eq!(r["hangupReason"], "user_hangup", "{r:#}");
    let _ = originate.await;
    bot.stop().await;
}

/// A second login of `user`: (access token, device id).
async fn second_device(user: &TestUser) -> (String, String) {
    let local = user
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap();
    let r: Value = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/login", user.homeserver()))
        .json(&json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": format!("pw-{local}")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        r["access_token"].as_str().expect("second login").to_owned(),
        r["device_id"].as_str().unwrap().to_owned(),
    )
}

/// Two devices of the user ring; the first to answer gets the call, and the bot's
/// `m.call.select_answer` makes the other stop ringing (matrix-js-sdk ends it as answered
/// elsewhere).
#[tokio::test]
async fn two_devices_ring_and_the_second_stops_when_the_first_answers() {
    let _turn = serial();
    let (fake, bot, mut user, room) = inbound_setup(30, "").await;
    let (token2, device2) = second_device(&user).await;
    let other = Callee::start(
        &user,
        Some((&token2, &device2)),
        json!({"action": "ignore", "ringWaitMs": 30000}),
    )
    .await;
    let first = Callee::start(&user, None, json!({"action": "answer", "holdMs": 2000})).await;
    let (uuid, originate) = ring(Some(&user.user_id), TONE);
    wait_verto_answer(&fake, &uuid).await;
    let r2 = other.report().await;
    assert_eq!(r2["rung"], true, "{r2:#}");
    assert_eq!(r2["finalState"], "ended", "{r2:#}");
    assert_eq!(r2["hangupReason"], "answered_elsewhere", "{r2:#}");
    let r1 = first.report().await;
    assert_eq!(r1["connected"], true, "{r1:#}");
    let cid = r1["callId"].as_str().unwrap().to_owned();
    let sel = user
        .wait_call_event(&room, "m.call.select_answer", &cid, T)
        .await;
    assert_eq!(sel["content"]["selected_party_id"], user.device_id.as_str());
    assert!(originate.await.unwrap().starts_with("+OK"));
    bot.stop().await;
}

/// Digits from the callee reach FreeSWITCH through `!dtmf` in the call's room (sent as
/// `verto.info`), where the DTMF collector (extension 5000) logs them. (The dial pad's digits
/// take the media path: [`keypad_digits_from_the_callee_reach_freeswitch`].)
#[tokio::test]
async fn dtmf_command_from_the_callee_reaches_freeswitch() {
    let _turn = serial();
    let (fake, bot, mut user, room) = inbound_setup(30, "").await;
    let callee = Callee::start(&user, None, json!({"action": "answer", "holdMs": 8000})).await;
    let (uuid, originate) = ring(Some(&user.user_id), "5000 XML verto");
    wait_verto_answer(&fake, &uuid).await;
    let sw = Switch::shared();
    sw.wait_audio_in(&uuid, 20, MEDIA_T).await;
    let ev = say(&user, &room, "!dtmf 12#").await;
    let info = fake
        .wait_for("verto.info dtmf", T, |f| f.msg["method"] == "verto.info")
        .await;
    assert_eq!(info.msg["params"]["dtmf"], "12#");
    assert_eq!(info.msg["params"]["dialogParams"]["callID"], uuid.as_str());
    user.wait_for("the ✅ reaction", T, |s| {
        s.event["type"] == "m.reaction"
            && s.event["content"]["m.relates_to"]["event_id"] == ev.as_str()
    })
    .await;
    sw.wait_until("the collector's digits", T, || async {
        sw.collected_digits(&uuid).as_deref() == Some("12#")
    })
    .await;
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    let _ = originate.await;
    bot.stop().await;
}

/// The callee presses keys on its client's dial pad (matrix-js-sdk's `sendDtmfDigit`, RFC 4733
/// telephone events in Chromium) right after the call connects: FreeSWITCH decodes them on
/// the bot's leg, where the DTMF collector (extension 5000) logs them. This needs the
/// telephone-event the bot adds to FreeSWITCH's offer (else Chromium cannot send digits) and
/// the answer offered back to FreeSWITCH after it took it (else FreeSWITCH has no payload type
/// to receive them on, logs `recv payload to 0`, and drops them): see README, inbound item 6.
#[tokio::test]
async fn keypad_digits_from_the_callee_reach_freeswitch() {
    let _turn = serial();
    let (fake, bot, user, _room) = inbound_setup(30, "").await;
    let callee = Callee::start(
        &user,
        None,
        json!({"action": "answer", "holdMs": 3000, "dtmf": "12#"}),
    )
    .await;
    let (uuid, originate) = ring(Some(&user.user_id), "5000 XML verto");
    wait_verto_answer(&fake, &uuid).await;
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    assert_eq!(
        r["canInsertDTMF"], true,
        "telephone-event negotiated: {r:#}"
    );
    assert_eq!(r["tonesPlayed"], "12#", "{r:#}");
    let sw = Switch::shared();
    sw.wait_until("the collector's digits", T, || async {
        sw.collected_digits(&uuid).as_deref() == Some("12#")
    })
    .await;
    let _ = originate.await;
    bot.stop().await;
}

/// The verto socket drops during an answered call from FreeSWITCH (cut in the tap):
/// FreeSWITCH re-offers the call, the bot renegotiates with the callee (two rounds, as for
/// outgoing calls) and answers with `verto.attach`, and the callee's audio reaches
/// FreeSWITCH again.
#[tokio::test]
async fn an_answered_call_survives_a_verto_reconnect() {
    let _turn = serial();
    let (fake, bot, mut user, room) = inbound_setup(30, "").await;
    let callee = Callee::start(&user, None, json!({"action": "answer", "holdMs": 20000})).await;
    let (_phone, uuid, originate) = ring_bridged(&user.user_id);
    wait_verto_answer(&fake, &uuid).await;
    let sw = Switch::shared();
    sw.wait_audio_in(&uuid, 50, MEDIA_T).await;
    fake.drop_connections();
    let id = uuid.clone();
    fake.wait_for("the bot's verto.attach", T, move |f| {
        f.msg["method"] == "verto.attach"
            && f.msg["params"]["dialogParams"]["callID"] == id.as_str()
    })
    .await;
    sw.wait_audio_in(&uuid, 50, MEDIA_T).await;
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    assert_eq!(r["dtlsState"], "connected", "{r:#}");
    let cid = r["callId"].as_str().unwrap().to_owned();
    user.catch_up().await;
    assert_eq!(user.seen_call_events("m.call.negotiate", &cid).len(), 2);
    let _ = (room, originate.await);
    bot.stop().await;
}

/// A restart with `on_shutdown: detach` keeps an answered call from FreeSWITCH: the next
/// start reads it back from `state_dir/calls/` (as an inbound call) and re-attaches it when
/// FreeSWITCH re-offers it, and the callee's audio reaches FreeSWITCH again.
#[tokio::test]
async fn an_answered_call_survives_a_bot_restart() {
    let _turn = serial();
    let opts = BotOpts {
        extra: "inbound:\n  ring_timeout_secs: 30\n".into(),
        calls_extra: "  on_shutdown: detach".into(),
        ..Default::default()
    };
    let (fake, bot, mut user, _room) = setup(opts.clone()).await;
    let callee = Callee::start(&user, None, json!({"action": "answer", "holdMs": 25000})).await;
    let (_phone, uuid, originate) = ring_bridged(&user.user_id);
    wait_verto_answer(&fake, &uuid).await;
    let sw = Switch::shared();
    sw.wait_audio_in(&uuid, 50, MEDIA_T).await;
    let (_, user_id, password, state_dir) = bot.stop().await;
    let saved = support::saved_calls(&state_dir);
    assert!(
        saved.contains(&user.user_id) && saved.contains("inbound_user"),
        "{saved}"
    );
    let start = std::time::Instant::now();
    let bot = Bot::start_with(user_id, password, state_dir, &fake, opts).await;
    let id = uuid.clone();
    fake.wait_for("the restarted bot's verto.attach", T, move |f| {
        f.msg["method"] == "verto.attach"
            && f.msg["params"]["dialogParams"]["callID"] == id.as_str()
    })
    .await;
    // (Five packets, 100 ms of audio, time when it comes back; fifty show that it stays.)
    sw.wait_audio_in(&uuid, 5, MEDIA_T).await;
    eprintln!(
        "audio back at FreeSWITCH {} ms after the new bot started",
        start.elapsed().as_millis()
    );
    sw.wait_audio_in(&uuid, 50, MEDIA_T).await;
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    let cid = r["callId"].as_str().unwrap().to_owned();
    user.catch_up().await;
    assert_eq!(user.seen_call_events("m.call.negotiate", &cid).len(), 2);
    let _ = originate.await;
    bot.stop().await;
}

/// Digits the phone sends during an answered call from FreeSWITCH are reported to the callee
/// (`dtmf.report_far_end`), as on outgoing calls: FreeSWITCH's DTMF event on the phone's leg
/// names the bot's leg as its other leg.
#[tokio::test]
async fn far_end_digits_are_reported_to_the_callee() {
    let _turn = serial();
    let (fake, bot, mut user, room) =
        inbound_setup(30, "dtmf:\n  report_far_end: true\n  burst_ms: 300\n").await;
    let callee = Callee::start(&user, None, json!({"action": "answer", "holdMs": 8000})).await;
    let (phone, uuid, originate) = ring_bridged(&user.user_id);
    wait_verto_answer(&fake, &uuid).await;
    let sw = Switch::shared();
    sw.wait_audio_in(&uuid, 20, MEDIA_T).await;
    // The phone's keys, as FreeSWITCH receives them on its leg.
    sw.api(&format!("uuid_recv_dtmf {phone} 12#")).await;
    user.wait_notice(&room, "The other side pressed: 12#", T)
        .await;
    let r = callee.report().await;
    assert_eq!(r["connected"], true, "{r:#}");
    let _ = originate.await;
    bot.stop().await;
}

/// An invite without an offer (which the real switch never sends: hence the fake) is refused
/// at once instead of being left to ring, and Matrix sees nothing.
#[tokio::test]
async fn an_invite_without_an_offer_is_refused() {
    let (fake, bot, mut user, _room) = setup_fake(BotOpts {
        extra: "inbound:\n  default_user: \"@someone:localhost\"\n".into(),
        ..Default::default()
    })
    .await;
    fake.wait_for("the bot's login", T, |f| f.msg["method"] == "login")
        .await;
    let conn = fake.last_conn();
    fake.request(
        conn,
        "verto.invite",
        json!({"callID": "no-offer", "caller_id_number": "1000"}),
    );
    assert_eq!(
        wait_bye(&fake, "no-offer").await,
        "INCOMPATIBLE_DESTINATION"
    );
    user.catch_up().await;
    assert!(
        !user
            .history
            .iter()
            .any(|s| s.event["type"] == "m.call.invite"),
        "nothing rang"
    );
    bot.stop().await;
}
