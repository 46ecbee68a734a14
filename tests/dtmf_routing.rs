//! DTMF in both directions, routes and caller ids, `!dial`, notices, limits and access
//! (real Synapse, the real FreeSWITCH behind a recording tap; the fake only where noted).

mod support;

use serde_json::Value;
use support::*;

fn dtmf_infos(fake: &FakeVerto, verto_id: &str) -> Vec<String> {
    fake.frames()
        .into_iter()
        .filter(|f| {
            f.msg["method"] == "verto.info" && f.msg["params"]["dialogParams"]["callID"] == verto_id
        })
        .filter_map(|f| f.msg["params"]["dtmf"].as_str().map(str::to_owned))
        .collect()
}

async fn wait_dtmf(fake: &FakeVerto, verto_id: &str, digits: &str) {
    let (id, d) = (verto_id.to_owned(), digits.to_owned());
    fake.wait_for(&format!("verto.info dtmf {digits}"), T, move |f| {
        f.msg["method"] == "verto.info"
            && f.msg["params"]["dialogParams"]["callID"] == id.as_str()
            && f.msg["params"]["dtmf"] == d.as_str()
    })
    .await;
}

/// 1: the answer advertises `m.call.dtmf` and `telephone-event` survives in both SDPs, so the
/// client's keypad (RFC 4733 in RTP) reaches FreeSWITCH directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keypad_capability_and_telephone_event() {
    let (fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    let cid = place_call(&caller, &room).await;
    let (_, invite) = wait_dialled(&fake, &cid).await;
    let offer = invite["params"]["sdp"].as_str().unwrap();
    for line in [
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
    ] {
        assert!(offer.contains(line), "offer to FreeSWITCH lost {line}");
    }
    assert!(
        offer.contains("UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"),
        "payload list kept"
    );
    let answer = caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    assert_eq!(answer["content"]["capabilities"]["m.call.dtmf"], true);
    let sdp = answer["content"]["answer"]["sdp"].as_str().unwrap();
    assert!(sdp.contains("a=rtpmap:110 telephone-event/48000"), "{sdp}");
    bot.stop().await;
}

/// 2: `!dtmf` from the caller reaches FreeSWITCH as `verto.info`; bad input gets a notice;
/// nobody else in the room can send digits to the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_dtmf() {
    let opts = BotOpts {
        // Extension 5000 collects the digits it receives in the channel variable dtmf_received.
        destination: "5000".into(),
        extra: "dtmf:\n  max_digits: 8\n".into(),
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup(opts).await;
    say(&caller, &room, "!dtmf 1").await;
    caller.wait_notice(&room, "no call", T).await;

    // A real caller: the collector runs only once FreeSWITCH's media is up.
    let peer = support::media::MediaPeer::start().await;
    let (cid, _) = place_media_call(&mut caller, &room, &peer).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;

    let cmd = say(&caller, &room, "!dtmf 12ab#").await;
    wait_dtmf(&fake, &verto_id, "12AB#").await;
    let switch = Switch::shared();
    switch
        .wait_until("the collector to hold 12AB#", T, || async {
            switch.getvar(&verto_id, "dtmf_received").await.as_deref() == Some("12AB#")
        })
        .await;
    let c = cmd.clone();
    let reaction = caller
        .wait_for("a ✅ reaction", T, move |s| {
            s.event["type"] == "m.reaction"
                && s.event["content"]["m.relates_to"]["event_id"] == c.as_str()
        })
        .await;
    assert_eq!(reaction["content"]["m.relates_to"]["key"], "✅");

    say(&caller, &room, "!dtmf 12x").await;
    caller
        .wait_notice(&room, "'x' is not a DTMF digit", T)
        .await;
    say(&caller, &room, "!dtmf 123456789").await;
    caller.wait_notice(&room, "at most 8", T).await;

    // A third user who joins the room cannot press keys in the caller's call.
    let mut other = TestUser::new("other").await;
    caller.invite(&room, &other.user_id).await;
    other.join(&room).await;
    say(&other, &room, "!dtmf 9").await;
    other.wait_notice(&room, "no call", T).await;
    assert_eq!(dtmf_infos(&fake, &verto_id), vec!["12AB#".to_owned()]);
    bot.stop().await;
}

/// 3 and 6: a route for an aliased room sends its digits after the answer; a user route
/// changes the destination and the caller id; the default applies otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_digits_on_answer() {
    let fake = FakeVerto::tap(&Switch::shared()).await;
    let mut caller = TestUser::new("caller").await;
    caller.set_display_name("Ada \"Countess\" Lovelace").await;
    let alias_local = support::synapse::unique("conf");
    // The bot user must exist before the room invites it.
    let (bot_user, bot_pw) = support::synapse::register(&support::synapse::unique("bot")).await;
    let (conf_room, alias) = caller.create_room_with_alias(&alias_local, &bot_user).await;
    let caller_glob = format!("@{}*:localhost", &caller.user_id[1..7]);
    let extra = format!(
        "routes:\n  - name: conference\n    room: \"{alias}\"\n    destination: \"9196\"\n    digits_on_answer: \"*5\"\n    digits_delay_ms: 100\n  - name: by-user\n    user: \"{caller_glob}\"\n    destination: \"7000\"\n    caller_id_number: \"+99{{localpart}}\"\n"
    );
    let dir = std::env::temp_dir().join(format!("vertobot-test-{}", uuid::Uuid::new_v4()));
    let bot = Bot::start_with(
        bot_user.clone(),
        bot_pw,
        dir,
        &fake,
        BotOpts {
            extra,
            calls_extra: "  caller_id_name: \"{display_name} (Matrix)\"".into(),
            ..Default::default()
        },
    )
    .await;
    caller.wait_joined(&conf_room, &bot_user, T).await;

    let cid = place_call(&caller, &conf_room).await;
    let (verto_id, invite) = wait_dialled(&fake, &cid).await;
    let dp = &invite["params"]["dialogParams"];
    assert_eq!(dp["destination_number"], "9196");
    assert_eq!(dp["caller_id_name"], "Ada Countess Lovelace (Matrix)");
    caller
        .wait_call_event(&conf_room, "m.call.answer", &cid, T)
        .await;
    wait_dtmf(&fake, &verto_id, "*5").await;

    let dm = caller.create_dm(&bot_user).await;
    caller.wait_joined(&dm, &bot_user, T).await;
    let cid2 = place_call(&caller, &dm).await;
    let (verto2, invite2) = wait_dialled(&fake, &cid2).await;
    let dp2 = &invite2["params"]["dialogParams"];
    assert_eq!(dp2["destination_number"], "7000", "the user route");
    let local = caller
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap();
    assert_eq!(dp2["caller_id_number"], format!("+99{local}").as_str());
    caller.wait_call_event(&dm, "m.call.answer", &cid2, T).await;
    assert!(
        dtmf_infos(&fake, &verto2).is_empty(),
        "no digits for a route without them"
    );
    bot.stop().await;
}

/// 5: far-end digits become one notice per burst; the bot's own digits are not echoed; a
/// refused subscription does not stop calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_end_digits_reported() {
    let opts = BotOpts {
        extra: "dtmf:\n  report_far_end: true\n  burst_ms: 300\n".into(),
        ..Default::default()
    };
    // The fake: far-end digits on demand (scripted FSevent.dtmf frames as in
    // fs_events_dtmf_bridged.jsonl).
    let fake = FakeVerto::start(VERTO_PASSWORD).await;
    fake.set_fs_events(true);
    let bot = Bot::start(&fake, opts).await;
    let mut caller = TestUser::new("caller").await;
    let room = caller.create_dm(&bot.user_id).await;
    caller.wait_joined(&room, &bot.user_id, T).await;
    fake.wait_for("verto.subscribe", T, |f| {
        f.msg["method"] == "verto.subscribe" && f.msg["params"]["eventChannel"] == "FSevent.dtmf"
    })
    .await;

    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    say(&caller, &room, "!dtmf 7").await;
    wait_dtmf(&fake, &verto_id, "7").await;
    fake.far_dtmf(&verto_id, "123#");
    let n = caller.wait_notice(&room, "pressed", T).await;
    assert_eq!(n, "🔢 The other side pressed: 123#");
    fake.far_dtmf(&verto_id, "9");
    caller.wait_notice(&room, "pressed: 9", T).await;
    let pressed: Vec<String> = caller
        .notices(&room)
        .into_iter()
        .filter(|n| n.contains("pressed"))
        .collect();
    assert_eq!(
        pressed.len(),
        2,
        "one notice per burst, none for our own 7: {pressed:?}"
    );
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_event_subscription_leaves_calls_working() {
    let opts = BotOpts {
        extra: "dtmf:\n  report_far_end: true\n".into(),
        ..Default::default()
    };
    // The fake: the test switch grants the subscription; the fake refuses it, as a switch
    // without enable-fs-events does (fs_events_subscribe_disabled.jsonl).
    let (fake, bot, mut caller, room) = setup_fake(opts).await;
    let f = fake
        .wait_for("verto.subscribe", T, |f| {
            f.msg["method"] == "verto.subscribe"
        })
        .await;
    assert_eq!(f.msg["params"]["eventChannel"], "FSevent.dtmf");
    let cid = place_call(&caller, &room).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    bot.stop().await;
}

/// 7: `!dial` sets the room's destination if it matches the pattern, survives a restart,
/// and works only in 1:1 rooms; `!help` lists the commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_command_and_help() {
    let opts = BotOpts {
        extra: "dial:\n  pattern: \"\\\\+?[0-9]{3,15}\"\n".into(),
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup(opts.clone()).await;
    say(&caller, &room, "!help").await;
    let help = caller.wait_notice(&room, "!dtmf", T).await;
    assert!(help.contains("!dial NUMBER"), "{help}");
    say(&caller, &room, "!dial").await;
    caller.wait_notice(&room, "go to 9196", T).await;
    say(&caller, &room, "!dial 12ab").await;
    caller
        .wait_notice(&room, "not a number this bridge may dial", T)
        .await;
    say(&caller, &room, "!dial +49 30 1234").await;
    caller.wait_notice(&room, "now go to +49301234", T).await;

    let (_, user, pw, dir) = bot.stop().await;
    let bot = Bot::start_with(user, pw, dir, &fake, opts).await;
    let cid = place_call(&caller, &room).await;
    let (_, invite) = wait_dialled(&fake, &cid).await;
    assert_eq!(
        invite["params"]["dialogParams"]["destination_number"], "+49301234",
        "kept across a restart"
    );

    say(&caller, &room, "!dial reset").await;
    caller
        .wait_notice(&room, "default destination again (9196)", T)
        .await;

    let other = TestUser::new("other").await;
    caller.invite(&room, &other.user_id).await;
    other.join(&room).await;
    say(&caller, &room, "!dial 123").await;
    caller.wait_notice(&room, "only in a 1:1 room", T).await;
    bot.stop().await;
}

/// `!dial` is off by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_is_off_by_default() {
    let (_fake, bot, mut caller, room) = setup(BotOpts::default()).await;
    say(&caller, &room, "!dial 123").await;
    caller.wait_notice(&room, "not enabled", T).await;
    bot.stop().await;
}

/// 9: a call that fails before the answer gets a notice with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_notice() {
    let (_fake, bot, mut caller, room) = setup(BotOpts {
        destination: "4860".into(),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    caller
        .wait_call_event(&room, "m.call.reject", &cid, T)
        .await;
    let n = caller.wait_notice(&room, "Call failed", T).await;
    assert!(n.contains("busy"), "{n}");
    bot.stop().await;
}

/// 10: per-user and total limits reject with a reason; the maximum call length hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits() {
    let _ringer = Ringer::start(&Switch::shared()).await;
    let opts = BotOpts {
        destination: "1001".into(),
        calls_extra: "  max_calls_per_user: 1\n  max_calls: 2".into(),
        ..Default::default()
    };
    let (fake, bot, mut alice, room) = setup(opts).await;
    let first = place_call(&alice, &room).await;
    wait_dialled(&fake, &first).await;
    let room2 = alice.create_dm(&bot.user_id).await;
    alice.wait_joined(&room2, &bot.user_id, T).await;
    let second = place_call(&alice, &room2).await;
    let r = alice
        .wait_call_event(&room2, "m.call.reject", &second, T)
        .await;
    assert_eq!(r["content"]["reason"], "user_busy");
    alice.wait_notice(&room2, "hang one up first", T).await;

    let mut bob = TestUser::new("bob").await;
    let broom = bob.create_dm(&bot.user_id).await;
    bob.wait_joined(&broom, &bot.user_id, T).await;
    let b1 = place_call(&bob, &broom).await;
    wait_dialled(&fake, &b1).await;
    let mut carol = TestUser::new("carol").await;
    let croom = carol.create_dm(&bot.user_id).await;
    carol.wait_joined(&croom, &bot.user_id, T).await;
    let c1 = place_call(&carol, &croom).await;
    carol.wait_call_event(&croom, "m.call.reject", &c1, T).await;
    carol.wait_notice(&croom, "limit of 2 calls", T).await;
    assert!(fake
        .frames()
        .iter()
        .all(|f| invite_for(f, &second).is_none() && invite_for(f, &c1).is_none()));
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_call_length() {
    let opts = BotOpts {
        calls_extra: "  max_call_secs: 1".into(),
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup(opts).await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "ALLOTTED_TIMEOUT");
    caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    caller.wait_notice(&room, "maximum length", T).await;
    bot.stop().await;
}

/// Access: invites from users not on `access.allow` are declined; allowed users get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_allow_list() {
    let fake = FakeVerto::tap(&Switch::shared()).await;
    let mut friend = TestUser::new("friend").await;
    let opts = BotOpts {
        extra: format!("access:\n  allow: [\"{}\"]\n", friend.user_id),
        ..Default::default()
    };
    let bot = Bot::start(&fake, opts).await;
    let mut stranger = TestUser::new("stranger").await;
    let sroom = stranger.create_dm(&bot.user_id).await;
    let bot_id = bot.user_id.clone();
    let s = sroom.clone();
    let left: Value = stranger
        .wait_for("the bot to decline", T, move |e| {
            e.room_id == s
                && e.event["type"] == "m.room.member"
                && e.event["state_key"] == bot_id.as_str()
                && e.event["content"]["membership"] == "leave"
        })
        .await;
    assert!(left["content"]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("not allowed"));
    let froom = friend.create_dm(&bot.user_id).await;
    friend.wait_joined(&froom, &bot.user_id, T).await;
    let cid = place_call(&friend, &froom).await;
    friend
        .wait_call_event(&froom, "m.call.answer", &cid, T)
        .await;
    bot.stop().await;
}

/// 5 on the real switch: the bot calls 1001, a verto phone (aiortc) answers the bridged leg
/// and presses keys there; FreeSWITCH raises `FSevent.dtmf` on that B leg only
/// (fs_events_dtmf_bridged.jsonl), and the caller gets one notice for the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_end_digits_from_a_bridged_leg() {
    let switch = Switch::shared();
    // The phone's own media is not checked: only its keys matter here.
    let phone_media = support::media::MediaPeer::start().await;
    let phone = Ringer::answering(&switch, phone_media).await;
    let opts = BotOpts {
        destination: "1001".into(),
        extra: "dtmf:\n  report_far_end: true\n  burst_ms: 300\n".into(),
        ..Default::default()
    };
    let (fake, bot, mut caller, room) = setup(opts).await;
    fake.wait_server("the granted FSevent.dtmf subscription", T, |f| {
        f.msg["result"]["subscribedChannels"]
            .to_string()
            .contains("FSevent.dtmf")
    })
    .await;
    let peer = support::media::MediaPeer::start().await;
    let (cid, _) = place_media_call(&mut caller, &room, &peer).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    let b_leg = {
        let invites = phone.invites.lock().unwrap().clone();
        invites.last().cloned().expect("the phone was rung")
    };
    // The caller got FreeSWITCH's answer (place_media_call waited for it): the phone answered.
    phone.press(&b_leg, "123#");
    let n = caller.wait_notice(&room, "pressed", T).await;
    assert_eq!(n, "🔢 The other side pressed: 123#");
    assert!(!verto_id.is_empty());
    bot.stop().await;
}
