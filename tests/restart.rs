//! Restarts: the saved sync position, session reuse, and what happens to invites sent while
//! the bot was down.

mod support;

use support::synapse::{after_earlier_calls_ended, ONE_CALL_PER_USER};
use support::*;

/// An invite and the real Chromium candidate events (ending with the marker).
fn place(cid: &str, lifetime: u64) -> Vec<(String, serde_json::Value)> {
    let mut evs = vec![("m.call.invite".to_owned(), invite_v1(cid, OFFER, lifetime))];
    evs.extend(
        chromium_candidates(cid)
            .into_iter()
            .map(|c| ("m.call.candidates".to_owned(), c)),
    );
    evs
}

/// The bot of these tests: one call per user, so that
/// [`after_earlier_calls_ended`] is a barrier.
fn one_call_per_user() -> BotOpts {
    BotOpts {
        calls_extra: ONE_CALL_PER_USER.into(),
        ..Default::default()
    }
}

async fn send_all(caller: &TestUser, room: &str, evs: Vec<(String, serde_json::Value)>) {
    for (t, c) in evs {
        caller.send(room, &t, c).await;
    }
}

/// With a saved sync position, a still-valid invite sent while the bot was down is answered;
/// one that expired, and one that was hung up, are not. The Matrix session is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_sent_while_down() {
    let (fake, bot, mut caller, room) = setup(one_call_per_user()).await;
    let (_, user, password, dir) = bot.stop().await;
    let session_before = std::fs::read_to_string(dir.join("session.json")).unwrap();
    assert!(dir.join("sync.json").exists(), "sync position saved");

    let (expired, hung_up, valid) = (call_id(), call_id(), call_id());
    send_all(&caller, &room, place(&expired, 1)).await;
    send_all(&caller, &room, place(&hung_up, 60000)).await;
    hang_up(&caller, &room, &hung_up).await;
    send_all(&caller, &room, place(&valid, 60000)).await;

    let bot = Bot::start_with(user, password, dir.clone(), &fake, one_call_per_user()).await;
    let (valid_verto, _) = wait_dialled(&fake, &valid).await;
    caller
        .wait_call_event(&room, "m.call.answer", &valid, T)
        .await;
    hang_up(&caller, &room, &valid).await;
    wait_bye(&fake, &valid_verto).await;
    // Barrier: every call of this caller the bot took on has ended and sent its last event
    // and its last verto request (a wrong one for the expired or hung-up invite included).
    let barrier = after_earlier_calls_ended(&mut caller, &room).await;
    wait_dialled(&fake, &barrier).await;
    assert!(
        fake.frames()
            .iter()
            .all(|f| invite_for(f, &expired).is_none() && invite_for(f, &hung_up).is_none()),
        "no dial of an expired or hung-up invite"
    );
    caller.catch_up().await;
    assert!(caller
        .seen_call_events("m.call.answer", &expired)
        .is_empty());
    assert!(caller
        .seen_call_events("m.call.answer", &hung_up)
        .is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.join("session.json")).unwrap(),
        session_before,
        "no new login: the saved session was reused"
    );
    bot.stop().await;
}

/// Without a saved sync position (a first start), old call invites are not acted on, but
/// invites to rooms that arrived while the bot was down are still joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_skips_old_calls_but_joins_pending_invites() {
    let (fake, bot, mut caller, room) = setup(one_call_per_user()).await;
    let (_, user, password, dir) = bot.stop().await;
    std::fs::remove_file(dir.join("sync.json")).unwrap();

    let old = call_id();
    send_all(&caller, &room, place(&old, 60000)).await;
    let new_room = caller.create_dm(&user).await;

    let bot = Bot::start_with(user.clone(), password, dir, &fake, one_call_per_user()).await;
    caller.wait_joined(&new_room, &user, T).await;
    let fresh = call_id();
    send_all(&caller, &new_room, place(&fresh, 60000)).await;
    let (fresh_verto, _) = wait_dialled(&fake, &fresh).await;
    caller
        .wait_call_event(&new_room, "m.call.answer", &fresh, T)
        .await;
    hang_up(&caller, &new_room, &fresh).await;
    wait_bye(&fake, &fresh_verto).await;
    // Barrier: as in `invites_sent_while_down`.
    let barrier = after_earlier_calls_ended(&mut caller, &new_room).await;
    wait_dialled(&fake, &barrier).await;
    assert!(
        fake.frames().iter().all(|f| invite_for(f, &old).is_none()),
        "no dial of an invite from before the first start"
    );
    caller.catch_up().await;
    assert!(caller.seen_call_events("m.call.answer", &old).is_empty());
    bot.stop().await;
}
