//! Faults the bridge must survive: verto socket drops (re-attach and renegotiation), punts,
//! FreeSWITCH restarts, vertobot restarts during calls, missing replies, hostile frames.
//!
//! All but the last two run against the real FreeSWITCH: socket drops are cut in the recording
//! tap between the bot and the switch, punts come from a second login with the bot's sessid,
//! restarts stop and start a switch of the test's own.

mod support;

use serde_json::{json, Value};
use support::*;

/// An SDP answer as matrix-js-sdk sends for a renegotiation: at once, without candidates.
const NEG_ANSWER: &str = "v=0\r\no=- 4565148522603012092 3 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 110\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:KV7c\r\na=ice-pwd:vohVJ28/DnsbLYUvWpEOL8WR\r\na=ice-options:trickle\r\na=fingerprint:sha-256 F8:BD:2E:B5:CA:CB:1D:E4:48:09:F5:50:9D:9B:76:42:74:CB:7E:20:56:90:9B:5E:0B:72:AE:A1:1D:89:07:A4\r\na=setup:passive\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:110 telephone-event/48000\r\n";

fn fingerprint(sdp: &str) -> String {
    sdp.lines()
        .find(|l| l.starts_with("a=fingerprint:"))
        .unwrap_or_default()
        .to_owned()
}

/// An answered call from a real aiortc caller. FreeSWITCH counts a WebRTC call as answered,
/// and keeps it across a socket drop, only once its media is up. The caller's later
/// renegotiation answers are scripted (`NEG_ANSWER`): these tests are about signalling, and
/// tests/media.rs renegotiates with a real browser.
async fn answered_call(
    switch: &Switch,
    fake: &FakeVerto,
    caller: &mut TestUser,
    room: &str,
) -> (
    String,
    String,
    Value,
    std::sync::Arc<support::media::MediaPeer>,
) {
    let peer = support::media::MediaPeer::start().await;
    let (cid, answer) = place_media_call(caller, room, &peer).await;
    let (verto_id, _) = wait_dialled(fake, &cid).await;
    switch.wait_audio_in(&verto_id, 10, T).await;
    (cid, verto_id, answer, peer)
}

async fn negotiate_answer(caller: &TestUser, room: &str, cid: &str) {
    caller
        .send(room, "m.call.negotiate", json!({"call_id": cid, "party_id": "CXRJGXZIQO", "version": "1", "lifetime": 10000, "description": {"type": "answer", "sdp": NEG_ANSWER}}))
        .await;
}

/// The client's `verto.attach` for a call.
async fn wait_client_attach(fake: &FakeVerto, verto_id: &str) -> Value {
    let id = verto_id.to_owned();
    fake.wait_for("the client's verto.attach", T, move |f| {
        f.msg["method"] == "verto.attach"
            && f.msg["params"]["dialogParams"]["callID"] == id.as_str()
    })
    .await
    .msg
}

/// FreeSWITCH's `verto.attach` re-offer for a call (what the switch sent after the reconnect).
async fn wait_switch_attach(fake: &FakeVerto, verto_id: &str) -> String {
    let id = verto_id.to_owned();
    let f = fake
        .wait_server("FreeSWITCH's verto.attach", T, move |f| {
            f.msg["method"] == "verto.attach" && f.msg["params"]["callID"] == id.as_str()
        })
        .await;
    f.msg["params"]["sdp"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// 1: the socket drops during an answered call; FreeSWITCH re-offers it with new ICE
/// credentials and a new fingerprint; the caller gets the offer twice (altered fingerprint,
/// then FreeSWITCH's own); the trickled answer goes back in `verto.attach`; the call goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_drop_reattaches_with_two_negotiate_rounds() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        calls_extra: support::synapse::ONE_CALL_PER_USER.into(),
        ..Default::default()
    })
    .await;
    let (cid, verto_id, answer, _peer) =
        answered_call(&Switch::shared(), &fake, &mut caller, &room).await;
    let answer_sdp = answer["content"]["answer"]["sdp"]
        .as_str()
        .unwrap()
        .to_owned();
    fake.drop_connections();

    let reoffer = wait_switch_attach(&fake, &verto_id).await;
    assert_ne!(
        fingerprint(&reoffer),
        fingerprint(&answer_sdp),
        "FreeSWITCH's new session"
    );
    let n1 = caller
        .wait_call_event(&room, "m.call.negotiate", &cid, T)
        .await;
    let sdp1 = n1["content"]["description"]["sdp"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(n1["content"]["description"]["type"], "offer");
    assert_eq!(n1["content"]["version"], "1");
    assert!(
        sdp1.contains("a=mid:0\r\n") && sdp1.contains("a=group:BUNDLE 0\r\n"),
        "{sdp1}"
    );
    assert_ne!(
        fingerprint(&sdp1),
        fingerprint(&reoffer),
        "first round: altered fingerprint"
    );
    negotiate_answer(&caller, &room, &cid).await;

    let n2 = caller
        .wait_call_event(&room, "m.call.negotiate", &cid, T)
        .await;
    let sdp2 = n2["content"]["description"]["sdp"].as_str().unwrap();
    assert_eq!(
        fingerprint(sdp2),
        fingerprint(&reoffer),
        "second round: FreeSWITCH's own"
    );
    for ice in ["a=ice-ufrag:", "a=ice-pwd:"] {
        let of = |s: &str| s.lines().find(|l| l.starts_with(ice)).map(str::to_owned);
        assert_eq!(of(sdp2), of(&reoffer), "{ice} passed on");
    }
    negotiate_answer(&caller, &room, &cid).await;
    // matrix-js-sdk trickles about 2 s later, without an end marker.
    caller
        .send(
            &room,
            "m.call.candidates",
            chromium_candidates_no_marker(&cid)[0].clone(),
        )
        .await;

    let attach = wait_client_attach(&fake, &verto_id).await;
    let sdp = attach["params"]["sdp"].as_str().unwrap();
    assert!(
        sdp.contains("a=setup:passive") && sdp.contains("a=candidate:"),
        "{sdp}"
    );
    let logins: Vec<Value> = fake
        .frames()
        .into_iter()
        .filter(|f| f.msg["method"] == "login")
        .map(|f| f.msg)
        .collect();
    assert_eq!(logins.len(), 2, "logged in again");
    assert_eq!(
        logins[0]["params"]["sessid"], logins[1]["params"]["sessid"],
        "same sessid"
    );
    Switch::shared().wait_channel(&verto_id, true, T).await;

    hang_up(&caller, &room, &cid).await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "NORMAL_CLEARING");
    // Barrier: the call's actor has sent its last event.
    support::synapse::after_earlier_calls_ended(&mut caller, &room).await;
    caller.catch_up().await;
    assert!(
        caller.seen_call_events("m.call.hangup", &cid).is_empty(),
        "the bot did not end the call"
    );
    bot.stop().await;
}

/// 1: a client that does not answer the altered offer gets the real one anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_falls_back_to_a_single_round() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let (cid, verto_id, _, _peer) =
        answered_call(&Switch::shared(), &fake, &mut caller, &room).await;
    fake.drop_connections();
    caller
        .wait_call_event(&room, "m.call.negotiate", &cid, T)
        .await;
    let n2 = caller
        .wait_call_event(&room, "m.call.negotiate", &cid, T)
        .await;
    negotiate_answer(&caller, &room, &cid).await;
    let attach = wait_client_attach(&fake, &verto_id).await;
    // No new candidates came: the caller's original ones are used.
    let (_, invite) = wait_dialled(&fake, &cid).await;
    let cands = |sdp: &str| -> Vec<String> {
        sdp.lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .map(str::to_owned)
            .collect()
    };
    let original = cands(invite["params"]["sdp"].as_str().unwrap());
    assert!(!original.is_empty());
    assert_eq!(cands(attach["params"]["sdp"].as_str().unwrap()), original);
    assert!(n2["content"]["description"]["sdp"].as_str().is_some());
    bot.stop().await;
}

/// 1: version 0 calls cannot renegotiate and end on both sides; ringing calls end too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_drop_ends_v0_and_ringing_calls() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let peer = support::media::MediaPeer::start().await;
    let (cid, _) = place_media_call_as(&mut caller, &room, &peer, true).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    Switch::shared().wait_audio_in(&verto_id, 10, T).await;
    fake.drop_connections();
    let h = caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    assert_eq!(h["content"]["version"], 0);
    // FreeSWITCH re-offers it after the reconnect; the bridge hangs it up there too.
    wait_bye(&fake, &verto_id).await;
    let switch = Switch::shared();
    switch.wait_channel(&verto_id, false, T).await;
    bot.stop().await;

    // A ringing call: FreeSWITCH ends an unanswered call when its socket goes (cause 27).
    let _ringer = Ringer::start(&switch).await;
    let (fake, bot, mut caller, room) = setup(BotOpts {
        destination: "1001".into(),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    switch.wait_channel(&verto_id, true, T).await;
    fake.drop_connections();
    let r = caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    assert_eq!(r["content"]["reason"], "unknown_error");
    switch.wait_channel(&verto_id, false, T).await;
    bot.stop().await;
}

/// 2: `verto.punt`, which FreeSWITCH sends when a second socket logs in with the same sessid:
/// the bridge reconnects once with its session and keeps the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punt_reconnects_and_recovers() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let (cid, verto_id, _, _peer) =
        answered_call(&Switch::shared(), &fake, &mut caller, &room).await;
    let login = fake
        .wait_for("the login", T, |f| f.msg["method"] == "login")
        .await;
    let sessid = login.msg["params"]["sessid"].as_str().unwrap().to_owned();
    let intruder = Ringer::start_as(&Switch::shared(), "1000@localhost", &sessid).await;
    fake.wait_server("verto.punt", T, |f| f.msg["method"] == "verto.punt")
        .await;
    drop(intruder);
    caller
        .wait_call_event(&room, "m.call.negotiate", &cid, T)
        .await;
    negotiate_answer(&caller, &room, &cid).await;
    caller
        .wait_call_event(&room, "m.call.negotiate", &cid, T)
        .await;
    negotiate_answer(&caller, &room, &cid).await;
    wait_client_attach(&fake, &verto_id).await;
    Switch::shared().wait_channel(&verto_id, true, T).await;
    bot.stop().await;
}

/// 3: FreeSWITCH stops (SIGTERM) and starts again. A stopping FreeSWITCH ends its calls itself
/// (`verto.bye` 701 SYSTEM_SHUTDOWN): the caller gets a hangup and a notice that says so; the
/// bridge reconnects with backoff, and new calls work once the switch is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeswitch_restart() {
    let mut switch = Switch::start_own(None).await;
    let tap = FakeVerto::tap(&switch).await;
    let (fake, bot, mut caller, room) = setup_with(tap, BotOpts::default()).await;
    let (cid, _, _, _peer) = answered_call(&switch, &fake, &mut caller, &room).await;
    switch.stop().await;
    let h = caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    assert_eq!(h["content"]["reason"], "unknown_error");
    caller
        .wait_notice(&room, "FreeSWITCH is shutting down", T)
        .await;
    fake.wait_until("two refused reconnects", T, |f| f.refused() >= 2)
        .await;
    switch.run().await;
    let cid2 = place_call(&caller, &room).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid2, T)
        .await;
    assert!(
        fake.refused() < 15,
        "backoff, not a spin: {} attempts",
        fake.refused()
    );
    bot.stop().await;
    switch.stop().await;
}

/// 3: FreeSWITCH crashes (SIGKILL): no goodbyes. The bridge reconnects once it is back, sees
/// that the new switch does not have the call, and ends the Matrix call with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeswitch_crash() {
    let mut switch = Switch::start_own(None).await;
    let tap = FakeVerto::tap(&switch).await;
    let (fake, bot, mut caller, room) = setup_with(tap, BotOpts::default()).await;
    let (cid, _, _, _peer) = answered_call(&switch, &fake, &mut caller, &room).await;
    switch.kill().await;
    fake.wait_until("a refused reconnect", T, |f| f.refused() >= 1)
        .await;
    switch.run().await;
    let h = caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    assert_eq!(h["content"]["reason"], "unknown_error");
    caller
        .wait_notice(&room, "FreeSWITCH no longer has the call", T)
        .await;
    bot.stop().await;
    switch.stop().await;
}

/// 4: the bot stops with `on_shutdown: detach` and stays away longer than FreeSWITCH's
/// `detach-timeout-sec`: FreeSWITCH ends the call itself, and the bot, once back, ends the
/// Matrix call with a reason instead of leaving it hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_timeout_ends_the_call() {
    let mut switch = Switch::start_own(Some(3)).await;
    let tap = FakeVerto::tap(&switch).await;
    let opts = BotOpts {
        calls_extra: "  on_shutdown: detach".into(),
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup_with(tap, opts.clone()).await;
    let (cid, verto_id, _, _peer) = answered_call(&switch, &fake, &mut caller, &room).await;
    let (_, user, pw, dir) = bot.stop().await;
    switch.wait_channel(&verto_id, false, T).await;
    let bot = Bot::start_with(user, pw, dir, &fake, opts).await;
    caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    caller
        .wait_notice(&room, "FreeSWITCH no longer has the call", T)
        .await;
    bot.stop().await;
    switch.stop().await;
}

/// 4: a rolling restart of vertobot (`on_shutdown: detach`) keeps a version 1 call: the next
/// start logs in with the same session and takes the call back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertobot_restart_keeps_a_v1_call() {
    let opts = BotOpts {
        calls_extra: "  on_shutdown: detach".into(),
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup(opts.clone()).await;
    let (cid, verto_id, _, _peer) =
        answered_call(&Switch::shared(), &fake, &mut caller, &room).await;
    let (_, user, pw, dir) = bot.stop().await;
    let switch = Switch::shared();
    assert!(
        fake.frames().iter().all(|f| f.msg["method"] != "verto.bye"),
        "no verto.bye on a detaching stop"
    );
    switch.wait_channel(&verto_id, true, T).await;
    let bot = Bot::start_with(user, pw, dir, &fake, opts).await;
    caller
        .wait_call_event(&room, "m.call.negotiate", &cid, T)
        .await;
    negotiate_answer(&caller, &room, &cid).await;
    caller
        .wait_call_event(&room, "m.call.negotiate", &cid, T)
        .await;
    negotiate_answer(&caller, &room, &cid).await;
    caller
        .send(
            &room,
            "m.call.candidates",
            chromium_candidates(&cid)[0].clone(),
        )
        .await;
    wait_client_attach(&fake, &verto_id).await;
    caller.catch_up().await;
    assert!(
        caller.seen_call_events("m.call.hangup", &cid).is_empty(),
        "the call survived"
    );
    // The recovered call still ends normally, and only then: the one hangup in the room
    // comes after a mark the caller posts before FreeSWITCH hangs up. (A hangup the bot sent
    // earlier, say when the re-attach was acknowledged, would come before the mark; the
    // hangup is the call's last event, so nothing can follow it.)
    let mark = say(&caller, &room, "FreeSWITCH hangs up now").await;
    fake.hangup(&verto_id, 16, "NORMAL_CLEARING").await;
    let hangup = caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    assert_eq!(hangup["content"]["reason"], "user_hangup", "{hangup}");
    caller.catch_up().await;
    let pos = |id: &Value| {
        caller
            .history
            .iter()
            .position(|s| s.event["event_id"] == *id)
    };
    let hangups = caller.seen_call_events("m.call.hangup", &cid);
    assert_eq!(hangups.len(), 1, "{hangups:#?}");
    let mark = pos(&Value::from(mark)).expect("the caller sees its own mark");
    assert!(
        pos(&hangups[0]["event_id"]).unwrap() > mark,
        "the bot ended the call before FreeSWITCH did: {hangups:#?}"
    );
    bot.stop().await;
}

/// 4: a call FreeSWITCH no longer has after the restart ends on the Matrix side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertobot_restart_ends_unrecoverable_calls() {
    let opts = BotOpts {
        calls_extra: "  on_shutdown: detach".into(),
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup(opts.clone()).await;
    let (cid, verto_id, _, _peer) =
        answered_call(&Switch::shared(), &fake, &mut caller, &room).await;
    let (_, user, pw, dir) = bot.stop().await;
    // While the bot is away, the call ends on the switch.
    fake.hangup(&verto_id, 16, "NORMAL_CLEARING").await;
    let bot = Bot::start_with(user, pw, dir.clone(), &fake, opts).await;
    caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    bot.stop().await;
    let saved = support::saved_calls(&dir);
    assert!(
        !saved.contains(&cid),
        "the ended call is forgotten: {saved}"
    );
}

/// 6: `verto.invite` without a reply ends the call on both sides with a reason.
/// The fake: the real switch always replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_without_reply() {
    let opts = BotOpts {
        destination: "silent".into(),
        request_timeout_secs: 1,
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup_fake(opts).await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    caller
        .wait_notice(&room, "did not answer the call request in time", T)
        .await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "NORMAL_TEMPORARY_FAILURE");
    bot.stop().await;
}

/// Hostile frames from the peer: logged and survived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_verto_frames_are_survived() {
    // The fake: the real switch sends none of these on demand.
    let (fake, bot, mut caller, room) = setup_fake(BotOpts::default()).await;
    let conn = fake.last_conn();
    for raw in [
        "not json at all",
        "[1, 2, {\"x\": 3}]",
        "{\"jsonrpc\":\"2.0\",\"id\":987654,\"result\":{\"message\":\"for nobody\"}}",
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"error\":{\"message\":\"SDP missing\",\"code\":-32002,\"message\":\"CALL ERROR\"}}",
        "{\"jsonrpc\":\"2.0\",\"id\":77,\"method\":\"verto.bye\",\"params\":{\"callID\":\"no-such-call\",\"causeCode\":16}}",
        "{\"jsonrpc\":\"2.0\",\"id\":78,\"method\":\"verto.nosuchmethod\",\"params\":{}}",
        "{\"jsonrpc\":\"2.0\",\"id\":79,\"method\":\"verto.answer\",\"params\":\"not an object\"}",
        "{\"jsonrpc\":\"2.0\",\"method\":\"verto.event\"}",
        "{}",
    ] {
        fake.send_raw(conn, raw);
    }
    // Requests among them are acknowledged like any other.
    fake.wait_for("ack of the unknown method", T, |f| {
        f.msg["id"] == 78 && f.msg["result"]["method"] == "verto.nosuchmethod"
    })
    .await;
    let cid = place_call(&caller, &room).await;
    wait_dialled(&fake, &cid).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    assert_eq!(fake.logins(), 1, "the connection survived");
    bot.stop().await;
}
