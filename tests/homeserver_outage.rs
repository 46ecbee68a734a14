//! 5: the homeserver goes down mid-call and comes back: the sync loop resumes from its saved
//! position without losing or replaying events, and the events the bot must send go through
//! once, with the same transaction id.

mod support;

use support::synapse::OwnSynapse;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn homeserver_down_and_back_mid_call() {
    let mut hs = OwnSynapse::start().await;
    // The real switch behind the recording tap: nothing here needs the fake.
    let fake = FakeVerto::tap(&Switch::shared()).await;
    let opts = BotOpts {
        homeserver: Some((hs.url.clone(), hs.secret.clone())),
        ..Default::default()
    };
    let bot = Bot::start(&fake, opts).await;
    let mut caller = TestUser::new_on(&hs.url, &hs.secret, "caller").await;
    let room = caller.create_dm(&bot.user_id).await;
    caller.wait_joined(&room, &bot.user_id, T).await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;

    hs.stop().await;
    // FreeSWITCH hangs up while the homeserver is down: the hangup must still arrive.
    fake.hangup(&verto_id, 16, "NORMAL_CLEARING").await;
    hs.run().await;

    let h = caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    assert_eq!(h["content"]["reason"], "user_hangup");
    // The sync loop is back: a new call works, and the old invite is not replayed.
    let cid2 = place_call(&caller, &room).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid2, T)
        .await;
    caller.catch_up().await;
    assert_eq!(
        caller.seen_call_events("m.call.hangup", &cid).len(),
        1,
        "exactly one hangup"
    );
    assert_eq!(
        caller.seen_call_events("m.call.answer", &cid).len(),
        1,
        "the answer was not replayed"
    );
    assert_eq!(
        fake.invites().len(),
        2,
        "the first invite was not dialled twice"
    );
    bot.stop().await;
    hs.stop().await;
}
