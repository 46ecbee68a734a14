//! End-to-end call flows: a test caller on a real Synapse calls the bot, which dials the real
//! FreeSWITCH of the test run (through a recording tap). Each test checks what both sides see;
//! the switch's side is read over its event socket.
//!
//! The caller's SDP here is the captured Chromium offer with its captured candidates (one
//! on 127.0.0.1, which FreeSWITCH's candidate ACL accepts): the signalling is real, the media
//! is not (tests/media.rs carries audio).

mod support;

use std::time::Duration;

use serde_json::json;
use support::synapse::{after_earlier_calls_ended, ONE_CALL_PER_USER};
use support::*;

/// Happy path: trickled candidates in two events, the marker in the second; FreeSWITCH
/// answers; the caller hangs up after the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_call_with_trickled_candidates_and_marker() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, invite) = wait_dialled(&fake, &cid).await;

    // The offer FreeSWITCH gets: the four UDP candidates in the audio section, no TCP.
    let sdp = invite["params"]["sdp"].as_str().unwrap();
    let cands: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert_eq!(cands.len(), 4, "{sdp}");
    assert!(cands.iter().all(|c| c.contains(" udp ")), "{cands:?}");
    assert!(sdp.contains("a=end-of-candidates"));
    let dp = &invite["params"]["dialogParams"];
    assert_eq!(dp["destination_number"], "9196");
    assert!(uuid::Uuid::parse_str(&verto_id).is_ok(), "callID is a UUID");
    let localpart = caller
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap();
    assert_eq!(dp["caller_id_number"], localpart);
    assert_eq!(
        dp["caller_id_name"], localpart,
        "no display name set: the localpart"
    );
    assert_eq!(dp["userVariables"]["matrix_room_id"], room.as_str());
    assert_eq!(
        dp["userVariables"]["matrix_sender"],
        caller.user_id.as_str()
    );

    // The caller's answer: FreeSWITCH's SDP with the offer's mid and BUNDLE added.
    let answer = caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    let c = &answer["content"];
    assert_eq!(answer["sender"], bot.user_id.as_str());
    assert_eq!(c["version"], "1");
    assert!(c["party_id"].as_str().is_some_and(|p| !p.is_empty()));
    assert_eq!(c["capabilities"]["m.call.dtmf"], true);
    let asdp = c["answer"]["sdp"].as_str().unwrap();
    assert_eq!(c["answer"]["type"], "answer");
    assert!(
        asdp.contains("a=mid:0\r\n") && asdp.contains("a=group:BUNDLE 0\r\n"),
        "{asdp}"
    );
    assert!(
        asdp.lines()
            .any(|l| l.starts_with("a=candidate:") && l.contains(" 127.0.0.1 ")),
        "FreeSWITCH's candidate is kept: {asdp}"
    );
    let switch = Switch::shared();
    switch.wait_channel(&verto_id, true, T).await;
    // The end-of-candidates marker follows.
    let cands = caller
        .wait_call_event(&room, "m.call.candidates", &cid, T)
        .await;
    assert_eq!(cands["content"]["candidates"], json!([{"candidate": ""}]));

    hang_up(&caller, &room, &cid).await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "NORMAL_CLEARING");
    switch.wait_channel(&verto_id, false, T).await;
    caller.catch_up().await;
    assert_eq!(
        caller.seen_call_events("m.call.answer", &cid).len(),
        1,
        "exactly one answer"
    );
    bot.stop().await;
}

/// No end-of-candidates marker (matrix-js-sdk sometimes sends none): once the offer's one
/// transport has a usable candidate, the bot dials when no candidates event has come for
/// `candidate_quiet_ms` (400), long before `candidate_wait_ms`. A caller that trickles three
/// host candidates one per event 200 ms apart still gets all three into the `verto.invite`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_without_marker_dial_after_a_quiet_period() {
    let opts = BotOpts {
        candidate_wait_ms: 10_000,
        ..Default::default()
    };
    let (fake, bot, caller, room) = setup(opts).await;
    let cid = call_id();
    let sent = std::time::Instant::now();
    caller
        .send(&room, "m.call.invite", invite_v1(&cid, OFFER, 60000))
        .await;
    // The scenario itself: a caller whose candidates go out 200 ms apart (on a fixed
    // schedule, so a slow request does not stretch the gaps).
    let start = tokio::time::Instant::now();
    for n in 1..=3u16 {
        tokio::time::sleep_until(start + Duration::from_millis(200) * u32::from(n - 1)).await;
        let c = format!(
            "candidate:{n} 1 udp 2122194687 127.0.0.1 {} typ host generation 0",
            40000 + n
        );
        let ev = json!({"call_id": cid, "party_id": "CXRJGXZIQO", "version": "1",
            "candidates": [{"candidate": c, "sdpMid": "0", "sdpMLineIndex": 0}]});
        caller.send(&room, "m.call.candidates", ev).await;
    }
    let (_, invite) = wait_dialled(&fake, &cid).await;
    assert!(
        sent.elapsed() < Duration::from_millis(10_000),
        "dialled only after the whole wait: {:?}",
        sent.elapsed()
    );
    let sdp = invite["params"]["sdp"].as_str().unwrap();
    for port in 40001..=40003 {
        assert!(
            sdp.contains(&format!(" {port} typ host")),
            "{port} missing: {sdp}"
        );
    }
    bot.stop().await;
}

/// Candidates FreeSWITCH cannot use do not start the quiet period: with only the TCP
/// candidates of Chromium's second batch and no marker, the bot waits `candidate_wait_ms`,
/// and then refuses the call it could not give audio (`ice_failed`) instead of dialling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_unusable_candidates_without_marker_wait_then_refuse() {
    let opts = BotOpts::default();
    let wait = Duration::from_millis(opts.candidate_wait_ms);
    let (fake, bot, mut caller, room) = setup(opts).await;
    let cid = call_id();
    let sent = std::time::Instant::now();
    caller
        .send(&room, "m.call.invite", invite_v1(&cid, OFFER, 60000))
        .await;
    let tcp_only = chromium_candidates_no_marker(&cid)[1].clone();
    caller.send(&room, "m.call.candidates", tcp_only).await;
    let reject = caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    assert_eq!(reject["content"]["reason"], "ice_failed");
    assert!(sent.elapsed() >= wait, "refused after {:?}", sent.elapsed());
    assert!(fake.frames().iter().all(|f| invite_for(f, &cid).is_none()));
    bot.stop().await;
}

/// A version 0 caller (integer version, no party_id) gets version 0 events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_0_call() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let cid = place_v0_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    let answer = caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    assert_eq!(answer["content"]["version"], 0);
    assert!(answer["content"].get("party_id").is_none());
    fake.hangup(&verto_id, 16, "NORMAL_CLEARING").await;
    let hangup = caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    assert_eq!(hangup["content"]["version"], 0);
    bot.stop().await;
}

/// Busy: FreeSWITCH hangs up with 17 before answering; a v1 caller gets a reject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_rejected() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        destination: "4860".into(),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    wait_dialled(&fake, &cid).await;
    let reject = caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    assert_eq!(reject["content"]["reason"], "user_busy");
    assert_eq!(reject["content"]["version"], "1");
    // Barrier: the notice is the call's last event, sent after everything else the call sent
    // (one call's events go out in order).
    caller.wait_notice(&room, "📞 Call failed", T).await;
    caller.catch_up().await;
    assert!(caller.seen_call_events("m.call.answer", &cid).is_empty());
    assert!(
        caller.seen_call_events("m.call.hangup", &cid).is_empty(),
        "a reject, not a hangup"
    );
    bot.stop().await;
}

/// Early media then an answer without SDP: one answer, with the early SDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_then_answer_without_sdp() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        destination: "7000".into(),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    let answer = caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    assert!(answer["content"]["answer"]["sdp"]
        .as_str()
        .unwrap()
        .contains("a=candidate:"));
    // FreeSWITCH hangs up after the answer: a hangup, not a reject.
    fake.hangup(&verto_id, 16, "NORMAL_CLEARING").await;
    let hangup = caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    assert_eq!(hangup["content"]["reason"], "user_hangup");
    caller.catch_up().await;
    assert_eq!(caller.seen_call_events("m.call.answer", &cid).len(), 1);
    bot.stop().await;
}

/// No route: 3 NO_ROUTE_DESTINATION before answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_rejected() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        destination: "4040".into(),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    wait_dialled(&fake, &cid).await;
    let reject = caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    assert_eq!(reject["content"]["reason"], "unknown_error");
    bot.stop().await;
}

/// mDNS-only candidates: never dialled (FreeSWITCH would answer 88), rejected with ice_failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_only_candidates_are_rejected_without_dialling() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let cid = call_id();
    caller
        .send(&room, "m.call.invite", invite_v1(&cid, OFFER, 60000))
        .await;
    caller
        .send(&room, "m.call.candidates", json!({"call_id": cid, "party_id": "CXRJGXZIQO", "version": "1", "candidates": [
            {"candidate": "candidate:1 1 udp 2122194687 4b1f1c2e-9d7e-4c43-a0d1-3c3c5e0e7f11.local 55085 typ host generation 0", "sdpMid": "0", "sdpMLineIndex": 0},
            {"candidate": ""}]}))
        .await;
    let reject = caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    assert_eq!(reject["content"]["reason"], "ice_failed");
    assert!(
        fake.frames().iter().all(|f| invite_for(f, &cid).is_none()),
        "never dialled"
    );
    bot.stop().await;
}

/// The caller hangs up while candidates are still being collected: nothing reaches FreeSWITCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_hangup_during_coalescing_sends_nothing() {
    // No quiet period: the wait alone must keep the call undialled until the hangup.
    let opts = BotOpts {
        candidate_wait_ms: 1500,
        calls_extra: format!("{ONE_CALL_PER_USER}\n  candidate_quiet_ms: 0"),
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup(opts.clone()).await;
    let cid = call_id();
    caller
        .send(&room, "m.call.invite", invite_v1(&cid, OFFER, 60000))
        .await;
    caller
        .send(
            &room,
            "m.call.candidates",
            chromium_candidates_no_marker(&cid)[0].clone(),
        )
        .await;
    hang_up(&caller, &room, &cid).await;
    // Barrier: the hung-up call's actor has ended, so it will dial nothing and send nothing
    // more; its dial, had there been one, was recorded before the barrier call's (one socket).
    let cid2 = after_earlier_calls_ended(&mut caller, &room).await;
    wait_dialled(&fake, &cid2).await;
    assert!(
        fake.frames().iter().all(|f| invite_for(f, &cid).is_none()),
        "no verto.invite for the hung-up call"
    );
    caller.catch_up().await;
    assert!(caller.seen_call_events("m.call.reject", &cid).is_empty());
    assert!(caller.seen_call_events("m.call.answer", &cid).is_empty());
    bot.stop().await;
}

/// The caller hangs up while FreeSWITCH is ringing: verto.bye ORIGINATOR_CANCEL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_hangup_while_ringing_cancels() {
    // Extension 1001 bridges to the verto user 1001, who lets it ring.
    let _ringer = Ringer::start(&Switch::shared()).await;
    let (fake, bot, mut caller, room) = setup(BotOpts {
        destination: "1001".into(),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    // Wait for CALL CREATED to have been processed is not needed: a hangup during the dial is
    // held until the reply.
    hang_up(&caller, &room, &cid).await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "ORIGINATOR_CANCEL");
    caller.catch_up().await;
    assert!(
        caller.seen_call_events("m.call.reject", &cid).is_empty(),
        "no reject for a call the caller ended"
    );
    bot.stop().await;
}

/// Two calls in two rooms at the same time, each with its own verto leg.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_in_two_rooms_at_once() {
    let _ringer = Ringer::start(&Switch::shared()).await;
    let (fake, bot, mut alice, room_a) = setup(BotOpts {
        destination: "1001".into(),
        ..Default::default()
    })
    .await;
    let mut bob = TestUser::new("bob").await;
    let room_b = bob.create_dm(&bot.user_id).await;
    bob.wait_joined(&room_b, &bot.user_id, T).await;

    let (ca, cb) = (call_id(), call_id());
    alice
        .send(&room_a, "m.call.invite", invite_v1(&ca, OFFER, 60000))
        .await;
    bob.send(&room_b, "m.call.invite", invite_v1(&cb, OFFER, 60000))
        .await;
    for (u, r, c) in [(&alice, &room_a, &ca), (&bob, &room_b, &cb)] {
        for ev in chromium_candidates(c) {
            u.send(r, "m.call.candidates", ev).await;
        }
    }
    let (va, _) = wait_dialled(&fake, &ca).await;
    let (vb, _) = wait_dialled(&fake, &cb).await;
    assert_ne!(va, vb);
    // Both are live at once: FreeSWITCH ends them in the opposite order.
    fake.hangup(&vb, 17, "USER_BUSY").await;
    fake.hangup(&va, 19, "NO_ANSWER").await;
    let rb = bob.wait_call_event(&room_b, "m.call.reject", &cb, T).await;
    let ra = alice
        .wait_call_event(&room_a, "m.call.reject", &ca, T)
        .await;
    assert_eq!(rb["content"]["reason"], "user_busy");
    assert_eq!(ra["content"]["reason"], "invite_timeout");
    bot.stop().await;
}

/// Invites that are not for the bot are ignored: a room with a third member, an invitee
/// that is someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_not_for_the_bot_are_ignored() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        calls_extra: ONE_CALL_PER_USER.into(),
        ..Default::default()
    })
    .await;
    let other = TestUser::new("other").await;
    // Invitee is someone else.
    let c1 = call_id();
    let mut inv = invite_v1(&c1, OFFER, 60000);
    inv["invitee"] = json!(other.user_id);
    caller.send(&room, "m.call.invite", inv).await;
    for ev in chromium_candidates(&c1) {
        caller.send(&room, "m.call.candidates", ev).await;
    }
    // A group room: three members.
    let group = caller.create_dm(&bot.user_id).await;
    caller.invite(&group, &other.user_id).await;
    other.join(&group).await;
    caller.wait_joined(&group, &bot.user_id, T).await;
    let c2 = place_call(&caller, &group).await;
    // A valid call placed afterwards is dialled, and only once every call the bot took on
    // before it has ended (a wrongly taken one would be answered and live on): a barrier after
    // which the two before it are known never to be dialled.
    let c3 = after_earlier_calls_ended(&mut caller, &room).await;
    wait_dialled(&fake, &c3).await;
    assert!(
        fake.frames()
            .iter()
            .all(|f| invite_for(f, &c1).is_none() && invite_for(f, &c2).is_none()),
        "a dial of an invite that is not for the bot"
    );
    bot.stop().await;
}

/// SIGTERM-like stop during an answered call hangs it up on both sides, quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hangs_up_active_calls() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    // `stop` fails the test if the bridge takes longer than its bound.
    bot.stop().await;
    wait_bye(&fake, &verto_id).await;
    caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
}

/// The caller selects another party's answer: the verto leg ends quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_answer_of_another_party_hangs_up_quietly() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        calls_extra: ONE_CALL_PER_USER.into(),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    let answer = caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    let ours = answer["content"]["party_id"].as_str().unwrap().to_owned();
    caller
        .send(&room, "m.call.select_answer", json!({"call_id": cid, "party_id": "CXRJGXZIQO", "version": "1", "selected_party_id": "SOMEONEELSE"}))
        .await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "LOSE_RACE");
    // Selecting our own answer in another call changes nothing (checked by the unit tests);
    // here: no Matrix event follows the quiet hangup.
    after_earlier_calls_ended(&mut caller, &room).await;
    caller.catch_up().await;
    assert!(caller.seen_call_events("m.call.hangup", &cid).is_empty());
    assert!(caller.seen_call_events("m.call.reject", &cid).is_empty());
    assert_ne!(ours, "SOMEONEELSE");
    bot.stop().await;
}

/// FreeSWITCH unreachable (wrong verto password): the caller gets a reject, the bot lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeswitch_unreachable_rejects_the_call() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        verto_password: "wrong".into(),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    let reject = caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    assert_eq!(reject["content"]["reason"], "unknown_error");
    assert!(fake.invites().is_empty());
    bot.stop().await;
}

/// Candidates that arrive before their invite (clients race the two events) are kept and
/// merged into the offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_before_the_invite_are_kept() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let cid = call_id();
    let evs = chromium_candidates(&cid);
    caller
        .send(&room, "m.call.candidates", evs[0].clone())
        .await;
    caller
        .send(&room, "m.call.invite", invite_v1(&cid, OFFER, 60000))
        .await;
    caller
        .send(&room, "m.call.candidates", evs[1].clone())
        .await;
    let (_, invite) = wait_dialled(&fake, &cid).await;
    let sdp = invite["params"]["sdp"].as_str().unwrap();
    assert_eq!(
        sdp.matches("a=candidate:").count(),
        4,
        "the early UDP candidates are in: {sdp}"
    );
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    bot.stop().await;
}

/// FreeSWITCH hangs up after the answer by itself (extension 8001 answers, waits 2 s and
/// hangs up with NORMAL_CLEARING): the caller gets a hangup, not a reject, and no notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeswitch_hangs_up_after_the_answer() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        destination: "8001".into(),
        ..Default::default()
    })
    .await;
    // A real caller: FreeSWITCH's dialplan goes on past `answer` only once media is up.
    let peer = support::media::MediaPeer::start().await;
    let (cid, _) = place_media_call(&mut caller, &room, &peer).await;
    wait_dialled(&fake, &cid).await;
    let hangup = caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    assert_eq!(hangup["content"]["reason"], "user_hangup");
    caller.catch_up().await;
    assert!(caller.seen_call_events("m.call.reject", &cid).is_empty());
    bot.stop().await;
}

/// Not a check but a measurement (`tests/run.sh --test calls measure -- --ignored
/// --nocapture`): invite → answer as the caller sees it, to the echo extension, for a caller
/// that sends Chromium's candidates as matrix-js-sdk does when no marker follows (the UDP
/// batch right after the invite, the TCP batch after it). Ten calls with the quiet period
/// (`candidate_quiet_ms` 400, the default) and ten without it (0: the fixed 2500 ms wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_setup_without_marker() {
    for quiet in [400, 0] {
        let opts = BotOpts {
            candidate_wait_ms: 2500,
            calls_extra: format!("  candidate_quiet_ms: {quiet}"),
            ..Default::default()
        };
        let (_fake, bot, mut caller, room) = setup(opts).await;
        let mut times = Vec::new();
        for _ in 0..10 {
            let cid = call_id();
            let t0 = std::time::Instant::now();
            caller
                .send(&room, "m.call.invite", invite_v1(&cid, OFFER, 60000))
                .await;
            for ev in chromium_candidates_no_marker(&cid) {
                caller.send(&room, "m.call.candidates", ev).await;
            }
            caller
                .wait_call_event(&room, "m.call.answer", &cid, T)
                .await;
            times.push(t0.elapsed().as_millis());
            hang_up(&caller, &room, &cid).await;
        }
        let mut sorted = times.clone();
        sorted.sort();
        println!(
            "candidate_quiet_ms {quiet}: invite -> answer median {} ms {times:?}",
            sorted[sorted.len() / 2]
        );
        bot.stop().await;
    }
}
