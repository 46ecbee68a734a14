//! Calls that carry real audio: a real WebRTC caller (aiortc) on the Matrix side and a real
//! WebRTC answerer (aiortc, behaving like FreeSWITCH's echo test) behind the fake verto peer.
//! Each scenario checks that ICE and DTLS connected and that audio flowed both ways through the
//! SDP the bridge assembled.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::media::MediaPeer;
use support::*;

const MEDIA_T: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// Several candidate events, then the end-of-candidates marker.
    BatchesThenMarker,
    /// Several candidate events, no marker (seen with matrix-js-sdk).
    BatchesNoMarker,
    /// All candidates inside the offer, no candidates event.
    InOffer,
    /// A version 0 caller (integer version, no party_id), candidates in the offer.
    Version0,
}

async fn call_with_audio(pattern: Pattern) {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let peer = MediaPeer::start().await;
    fake.set_media(peer.clone());
    let cid = call_id();
    let trickle = matches!(
        pattern,
        Pattern::BatchesThenMarker | Pattern::BatchesNoMarker
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
        let half = cands.len().div_ceil(2);
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
    let f = peer.wait_media(&verto_id, 50, MEDIA_T).await;
    eprintln!("{pattern:?}: caller {c}, FreeSWITCH side {f}");
    caller
        .send(&room, "m.call.hangup", json!({"call_id": cid, "party_id": "CXRJGXZIQO", "version": "1", "reason": "user_hangup"}))
        .await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "NORMAL_CLEARING");
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_trickled_batches_and_marker() {
    call_with_audio(Pattern::BatchesThenMarker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_trickled_batches_without_marker() {
    call_with_audio(Pattern::BatchesNoMarker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_candidates_in_the_offer() {
    call_with_audio(Pattern::InOffer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_with_a_version_0_caller() {
    call_with_audio(Pattern::Version0).await;
}

/// A caller whose only candidates are mDNS names gets a clear rejection, not a dead call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_only_caller_is_rejected() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let peer = MediaPeer::start().await;
    fake.set_media(peer.clone());
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
