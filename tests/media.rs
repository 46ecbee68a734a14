//! Calls that carry real audio: real WebRTC callers (aiortc, and matrix-js-sdk in Chromium) on
//! the Matrix side and the real FreeSWITCH on the other (ICE, DTLS with its RSA certificate,
//! SRTP, opus, telephone-event). Echo (9196) sends back what it receives, so audio at the
//! caller proves both directions; the tone (9664) proves FreeSWITCH's own audio; the DTMF
//! collector (5000) shows which keypad digits FreeSWITCH decoded.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::media::{run_browser, MediaPeer};
use support::*;

const MEDIA_T: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// aiortc's offer as aiortc makes it, but with its candidates sent in one
    /// `m.call.candidates` event instead: no `a=ice-options:trickle`, no marker (what
    /// aiortc-based clients and bots send).
    AiortcTrickle,
    /// Several candidate events, then the end-of-candidates marker.
    BatchesThenMarker,
    /// Several candidate events, no marker (seen with matrix-js-sdk).
    BatchesNoMarker,
    /// All candidates inside the offer, no candidates event.
    InOffer,
    /// A version 0 caller (integer version, no party_id), candidates in the offer.
    Version0,
}

async fn call_with_audio(pattern: Pattern, destination: &str) {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        destination: destination.into(),
        ..Default::default()
    })
    .await;
    let peer = MediaPeer::start().await;
    let cid = call_id();
    let trickle = matches!(
        pattern,
        Pattern::BatchesThenMarker | Pattern::BatchesNoMarker | Pattern::AiortcTrickle
    );
    let (offer, cands) = peer.offer(&cid, trickle).await;
    let invite = match pattern {
        Pattern::Version0 => {
            json!({"call_id": cid, "version": 0, "lifetime": 60000, "offer": {"type": "offer", "sdp": offer}})
        }
        _ => invite_v1(&cid, &offer, 60000),
    };
    caller.send(&room, "m.call.invite", invite).await;
    if trickle {
        assert!(!cands.is_empty(), "aiortc gathered no candidates");
        let half = match pattern {
            Pattern::AiortcTrickle => cands.len(),
            _ => cands.len().div_ceil(2),
        };
        let mut batches: Vec<Vec<Value>> = vec![cands[..half].to_vec(), cands[half..].to_vec()];
        if matches!(pattern, Pattern::BatchesThenMarker) {
            batches[1].push(json!({"candidate": ""}));
        }
        for b in batches.into_iter().filter(|b| !b.is_empty()) {
            caller
                .send(&room, "m.call.candidates", json!({"call_id": cid, "party_id": "CXRJGXZIQO", "version": "1", "candidates": b}))
                .await;
        }
    }
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    let answer = caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    let sdp = answer["content"]["answer"]["sdp"].as_str().unwrap();
    peer.apply_answer(&cid, sdp).await;
    if !matches!(pattern, Pattern::Version0) {
        let party = answer["content"]["party_id"].clone();
        caller
            .send(&room, "m.call.select_answer", json!({"call_id": cid, "party_id": "CXRJGXZIQO", "version": "1", "selected_party_id": party}))
            .await;
    }
    let c = peer.wait_media(&cid, 50, MEDIA_T).await;
    let switch = Switch::shared();
    let fs_in = switch.wait_audio_in(&verto_id, 50, MEDIA_T).await;
    let codec = switch.getvar(&verto_id, "read_codec").await;
    eprintln!(
        "{pattern:?} to {destination}: caller {c}, FreeSWITCH got {fs_in} packets, reads {codec:?}"
    );
    assert_eq!(codec.as_deref(), Some("opus"), "FreeSWITCH negotiated opus");
    hang_up(&caller, &room, &cid).await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "NORMAL_CLEARING");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_trickled_batches_and_marker() {
    call_with_audio(Pattern::BatchesThenMarker, "9196").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_trickled_batches_without_marker() {
    call_with_audio(Pattern::BatchesNoMarker, "9196").await;
}

/// The offer exactly as aiortc makes it, candidates inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_candidates_in_the_offer() {
    call_with_audio(Pattern::InOffer, "9196").await;
}

/// Before the fix, such an offer was "complete" and dialled with no candidate: rejected at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_an_aiortc_offer_and_trickled_candidates() {
    call_with_audio(Pattern::AiortcTrickle, "9196").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_a_version_0_caller() {
    call_with_audio(Pattern::Version0, "9196").await;
}

/// FreeSWITCH's own audio (a 440 Hz tone) reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tone_from_freeswitch() {
    call_with_audio(Pattern::InOffer, "9664").await;
}

/// Early media (3 s of 425 Hz before the answer) flows before the call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_audio() {
    call_with_audio(Pattern::AiortcTrickle, "7000").await;
}

/// A caller whose only candidates are mDNS names gets a clear rejection, not a dead call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_only_caller_is_rejected() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let peer = MediaPeer::start().await;
    let cid = call_id();
    let (offer, cands) = peer.offer(&cid, true).await;
    let mdns: Vec<Value> = cands
        .iter()
        .map(|c| {
            let s = c["candidate"].as_str().unwrap();
            let f: Vec<&str> = s.split(' ').collect();
            let renamed = s.replacen(f[4], "6d9f2a4e-1c1b-4a4b-9d55-7f5f2b1f8c3e.local", 1);
            json!({"candidate": renamed, "sdpMid": "0", "sdpMLineIndex": 0})
        })
        .chain([json!({"candidate": ""})])
        .collect();
    caller
        .send(&room, "m.call.invite", invite_v1(&cid, &offer, 60000))
        .await;
    caller
        .send(
            &room,
            "m.call.candidates",
            json!({"call_id": cid, "party_id": "CXRJGXZIQO", "version": "1", "candidates": mdns}),
        )
        .await;
    let r = caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    assert_eq!(r["content"]["reason"], "ice_failed");
    caller
        .wait_notice(&room, "no usable ICE candidates", T)
        .await;
    assert!(fake.invites().is_empty());
    bot.stop().await;
}

/// matrix-js-sdk's `MatrixCall` (the code Element uses) in headless Chromium calls the bot:
/// ICE, DTLS and audio both ways; the SDK sees `m.call.dtmf` and its keypad digits leave
/// Chromium as RFC 4733 telephone events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_matrix_js_sdk_call_with_audio_and_keypad() {
    // Extension 5000 collects the digits FreeSWITCH decodes in the channel variable dtmf_received.
    let (fake, bot, caller, room) = setup(BotOpts {
        destination: "5000".into(),
        candidate_wait_ms: 2500,
        ..Default::default()
    })
    .await;
    let opts = json!({
        "hs": caller.homeserver(), "token": caller.token(), "userId": caller.user_id,
        "deviceId": caller.device_id, "roomId": room, "holdMs": 3000, "dtmf": "12#",
    });
    let r = run_browser(opts).await;
    eprintln!("Chromium caller: {r}");
    assert_eq!(r["opponentSupportsDTMF"], true, "the SDK sees m.call.dtmf");
    assert_eq!(r["canInsertDTMF"], true, "telephone-event was negotiated");
    assert_eq!(
        r["tonesPlayed"], "12#",
        "keypad digits left Chromium as telephone events"
    );
    assert!(
        matches!(
            r["iceConnectionState"].as_str(),
            Some("connected" | "completed")
        ),
        "{r}"
    );
    assert_eq!(r["dtlsState"], "connected");
    assert!(
        r["packetsReceived"].as_u64().unwrap_or(0) > 50,
        "audio from FreeSWITCH: {r}"
    );
    assert!(
        r["packetsSent"].as_u64().unwrap_or(0) > 50,
        "audio to FreeSWITCH: {r}"
    );
    let cid = r["callId"].as_str().unwrap().to_owned();
    let (verto_id, invite) = wait_dialled(&fake, &cid).await;
    let offer = invite["params"]["sdp"].as_str().unwrap();
    assert!(
        offer
            .lines()
            .filter(|l| l.starts_with("a=candidate:"))
            .all(|l| l.contains(" udp ")),
        "{offer}"
    );
    assert_eq!(wait_bye(&fake, &verto_id).await, "NORMAL_CLEARING");
    // FreeSWITCH decoded the keypad's RFC 4733 events into digits and collected them.
    let digits = Switch::shared().collected_digits(&verto_id);
    assert_eq!(
        digits.as_deref(),
        Some("12#"),
        "digits FreeSWITCH collected"
    );
    bot.stop().await;
}

/// The verto socket drops during a Chromium call (cut in the tap). FreeSWITCH re-offers the
/// call with a new media session; the bridge renegotiates with matrix-js-sdk in two rounds
/// (altered, then real fingerprint) and audio comes back in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_audio_comes_back_after_a_verto_reconnect() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        candidate_wait_ms: 2500,
        ..Default::default()
    })
    .await;
    let switch = Switch::shared();
    let opts = json!({
        "hs": caller.homeserver(), "token": caller.token(), "userId": caller.user_id,
        "deviceId": caller.device_id, "roomId": room, "holdMs": 0, "observeMs": 22000,
    });
    let browser = tokio::spawn(run_browser(opts));
    let answer = caller
        .wait_for("the bot's answer", T, |s| {
            s.event["type"] == "m.call.answer"
        })
        .await;
    let cid = answer["content"]["call_id"].as_str().unwrap().to_owned();
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    switch.wait_audio_in(&verto_id, 50, MEDIA_T).await;

    let cut = std::time::Instant::now();
    fake.drop_connections();
    let id = verto_id.clone();
    fake.wait_for("the client's verto.attach", T, move |f| {
        f.msg["method"] == "verto.attach"
            && f.msg["params"]["dialogParams"]["callID"] == id.as_str()
    })
    .await;
    // FreeSWITCH's new media session connects and carries the caller's audio again.
    // (Five packets, 100 ms of audio, time when it comes back; fifty show that it stays.)
    switch.wait_audio_in(&verto_id, 5, MEDIA_T).await;
    let back = cut.elapsed();
    let after = switch.wait_audio_in(&verto_id, 50, MEDIA_T).await;
    eprintln!(
        "FreeSWITCH after the reconnect: {after} packets in; audio back {} ms after the cut",
        back.as_millis()
    );

    let r = browser.await.expect("the browser caller did not panic");
    let series = r["series"].as_array().unwrap();
    eprintln!("Chromium audio counters every 500 ms: {series:?}");
    let rx = |i: usize| series[i]["rx"].as_u64().unwrap_or(0);
    let n = series.len();
    assert!(n > 10, "{r}");
    assert!(
        rx(n - 1) - rx(n - 5) > 50,
        "Chromium receives audio again at the end: {series:?}"
    );
    assert_eq!(series[n - 1]["dtls"], "connected", "{series:?}");
    caller.catch_up().await;
    let negotiates = caller.seen_call_events("m.call.negotiate", &cid).len();
    assert_eq!(negotiates, 2, "two renegotiation rounds");
    bot.stop().await;
}

/// Element's hold button (matrix-js-sdk `setRemoteOnHold`) on a Chromium call: the bridge
/// answers the hold and resume offers itself (complete negotiate answers, with
/// `sdp_stream_metadata`) and puts the call on hold in FreeSWITCH with `verto.modify hold` /
/// `unhold`; after the resume audio flows again without a gap. (Passed on as `updateMedia`,
/// FreeSWITCH resets ICE and its audio stopped for 1 to 2.5 s after every resume.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_hold_and_resume() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        candidate_wait_ms: 2500,
        ..Default::default()
    })
    .await;
    let opts = json!({
        "hs": caller.homeserver(), "token": caller.token(), "userId": caller.user_id,
        "deviceId": caller.device_id, "roomId": room, "holdMs": 1000, "holdButtonMs": 3000,
        "observeMs": 8000,
    });
    let r = run_browser(opts).await;
    let cid = r["callId"].as_str().unwrap().to_owned();
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    let id = verto_id.clone();
    let modifies = fake
        .frames()
        .into_iter()
        .filter(|f| {
            f.msg["method"] == "verto.modify"
                && f.msg["params"]["dialogParams"]["callID"] == id.as_str()
        })
        .count();
    assert_eq!(modifies, 2, "hold and resume each reached FreeSWITCH");
    caller.catch_up().await;
    for n in caller.seen_call_events("m.call.negotiate", &cid) {
        if n["sender"] == bot.user_id.as_str() {
            assert_eq!(n["content"]["description"]["type"], "answer");
            assert!(
                n["content"]["sdp_stream_metadata"].is_object(),
                "complete answer: {n}"
            );
        }
    }
    assert_eq!(r["hold"][0]["held"], true, "{r}");
    assert_eq!(r["hold"][1]["held"], false, "{r}");
    let series = r["series"].as_array().unwrap();
    eprintln!("Chromium audio counters every 500 ms after the resume: {series:?}");
    let rx: Vec<u64> = series
        .iter()
        .map(|s| s["rx"].as_u64().unwrap_or(0))
        .collect();
    // From 1 s after the resume on, every 500 ms brings new audio: no gap.
    for w in rx.windows(2).skip(2) {
        assert!(w[1] > w[0], "audio stalled after the resume: {rx:?}");
    }
    bot.stop().await;
}

/// The conference (3000): the Matrix caller joins, a second member (a loopback leg playing a
/// tone, started over the event socket) joins too; FreeSWITCH lists both, and the conference's
/// audio keeps reaching the caller. (aiortc reports packets, not levels: that the caller hears
/// the tone itself is not checked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conference_with_a_second_member() {
    let (fake, bot, mut caller, room) = setup(BotOpts {
        destination: "3000".into(),
        ..Default::default()
    })
    .await;
    let switch = Switch::shared();
    let peer = MediaPeer::start().await;
    let (cid, _) = place_media_call(&mut caller, &room, &peer).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    switch.wait_audio_in(&verto_id, 20, MEDIA_T).await;
    let other = switch
        .api("originate {origination_caller_id_number=tone}loopback/3000/verto &playback(tone_stream://%(1000,0,440);loops=-1)")
        .await;
    let other_id = other
        .trim()
        .strip_prefix("+OK ")
        .expect("originate +OK")
        .to_owned();
    switch
        .wait_until("two members in conference 3000", MEDIA_T, || async {
            let list = switch.api("conference 3000 list").await;
            list.contains(&verto_id) && list.lines().filter(|l| l.contains(';')).count() >= 2
        })
        .await;
    let before = peer.stats(&cid).await["packets_received"]
        .as_u64()
        .unwrap_or(0);
    peer.wait_media(&cid, before + 50, MEDIA_T).await;
    switch.api(&format!("uuid_kill {other_id}")).await;
    hang_up(&caller, &room, &cid).await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "NORMAL_CLEARING");
    bot.stop().await;
}
