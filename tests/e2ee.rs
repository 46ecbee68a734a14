//! Calls in encrypted rooms, from the caller Element is made of: matrix-js-sdk with its Rust
//! crypto in Chromium. The browser does what Element does for a new chat (its own
//! cross-signing identity, a DM with `m.room.encryption` in the initial state) and calls the
//! bot there; the real FreeSWITCH answers. Nothing in the browser is shaped for the bridge.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::http_proxy::HttpProxy;
use support::media::run_browser;
use support::synapse::TestUser;
use support::*;

/// The browser caller's options for an encrypted DM with the bot (a new one unless `room`).
fn browser_opts(caller: &TestUser, hs: &str, bot: &str, room: Option<&str>, extra: Value) -> Value {
    let local = caller.user_id.trim_start_matches('@');
    let local = local.split(':').next().unwrap_or_default();
    let mut o = json!({
        "hs": hs, "token": caller.token(), "userId": caller.user_id,
        "deviceId": caller.device_id, "holdMs": 1500,
        "encrypted": {"bot": bot, "password": format!("pw-{local}"), "roomId": room},
    });
    if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if k == "onlySigned" {
                o["encrypted"]["onlySigned"] = v.clone();
            } else {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    o
}

/// The call connected and carried audio both ways.
fn assert_audio(r: &Value) {
    assert_eq!(r["dtlsState"], "connected", "{r}");
    assert!(
        r["packetsReceived"].as_u64().unwrap_or(0) > 30,
        "audio from FreeSWITCH: {r}"
    );
    assert!(
        r["packetsSent"].as_u64().unwrap_or(0) > 30,
        "audio to FreeSWITCH: {r}"
    );
}

/// What the caller's client says of the bot: its device is signed by its owner, and its call
/// events arrived encrypted and decrypted without a shield.
fn assert_bot_trusted(r: &Value) {
    let devices = r["botDevices"].as_array().cloned().unwrap_or_default();
    assert_eq!(devices.len(), 1, "one bot device: {r}");
    assert_eq!(
        devices[0]["signedByOwner"], true,
        "the bot cross-signed its device: {r}"
    );
    let events = r["botEvents"].as_array().cloned().unwrap_or_default();
    let answers: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "m.call.answer")
        .collect();
    assert_eq!(answers.len(), 1, "the bot's answer, decrypted: {r}");
    for e in events.iter().filter(|e| e["type"] != "m.room.member") {
        assert_eq!(e["encrypted"], true, "every bot event encrypted: {e}");
        assert!(e["failure"].is_null(), "decrypted: {e}");
        assert_eq!(e["shield"], 0, "no shield on the bot's events: {e}");
    }
}

/// On the homeserver, the bot's events in the room are `m.room.encrypted`: no plain call
/// event and no plain notice.
async fn assert_raw_encrypted(caller: &mut TestUser, room: &str, bot: &str) {
    caller.catch_up().await;
    let types: Vec<String> = caller
        .history
        .iter()
        .filter(|s| s.room_id == room && s.event["sender"] == bot)
        .map(|s| s.event["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(types.iter().any(|t| t == "m.room.encrypted"), "{types:?}");
    assert!(
        types
            .iter()
            .all(|t| t == "m.room.encrypted" || t == "m.room.member"),
        "the bot sent plain events into an encrypted room: {types:?}"
    );
}

/// Element's default chat with the bot: an encrypted DM, the caller in "exclude insecure
/// devices" mode (keys only for cross-signed devices, MSC4153). The call connects with audio
/// both ways, keypad digits and a typed `!dtmf` reach FreeSWITCH (the bot's ✅ reaction comes
/// encrypted too), the bot's answer arrives encrypted and the bot's device is cross-signed by
/// its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_dm_call_from_a_caller_that_excludes_insecure_devices() {
    let (fake, bot, mut caller, _plain) = setup(BotOpts {
        destination: "5000".into(),
        candidate_wait_ms: 2500,
        ..Default::default()
    })
    .await;
    let hs = caller.homeserver().to_owned();
    let opts = browser_opts(
        &caller,
        &hs,
        &bot.user_id,
        None,
        json!({"dtmf": "12#", "dtmfCommand": "4#", "onlySigned": true}),
    );
    let r = run_browser(opts).await;
    eprintln!("Chromium caller: {r}");
    assert_audio(&r);
    assert_eq!(r["tonesPlayed"], "12#", "{r}");
    assert_eq!(r["dtmfCommandReaction"], "✅", "!dtmf confirmed: {r}");
    assert_bot_trusted(&r);
    let room = r["roomId"].as_str().expect("the DM's room id").to_owned();
    let cid = r["callId"].as_str().unwrap().to_owned();
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    assert_eq!(wait_bye(&fake, &verto_id).await, "NORMAL_CLEARING");
    let digits = Switch::shared().collected_digits(&verto_id);
    assert_eq!(
        digits.as_deref(),
        Some("12#4#"),
        "keypad and !dtmf digits FreeSWITCH collected"
    );
    assert_raw_encrypted(&mut caller, &room, &bot.user_id).await;
    bot.stop().await;
}

/// The room key reaches the homeserver a second after the invite (the caller's homeserver,
/// or federation, delivers to-device messages late): the bot keeps the invite it cannot read
/// yet, decrypts it when the key arrives, and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_key_after_the_invite() {
    let (_fake, bot, caller, _plain) = setup(BotOpts::default()).await;
    let proxy = HttpProxy::deferring(
        caller.homeserver(),
        |method, path| method == "PUT" && path.contains("/sendToDevice/m.room.encrypted/"),
        Duration::from_secs(1),
    )
    .await;
    let opts = browser_opts(&caller, &proxy.url, &bot.user_id, None, json!({}));
    let r = run_browser(opts).await;
    assert_audio(&r);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|f| f.path.contains("/sendToDevice/m.room.encrypted/")),
        "the caller's keys went through the deferring proxy"
    );
    bot.stop().await;
}

/// The bot's first room key share (an Olm-encrypted to-device message to the caller's
/// devices) reaches Synapse, but its reply is lost: the bot sends it again with the same
/// transaction id, so the caller gets the key once, decrypts the answer, and the call has
/// audio. The bot alone talks through the proxy; the browser talks to Synapse directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_reply_to_the_bots_room_key_share() {
    let (hs, secret) = support::synapse::homeserver();
    let key_share = |method: &str, path: &str| {
        method == "PUT" && path.contains("/sendToDevice/m.room.encrypted/")
    };
    let proxy = HttpProxy::start(&hs, key_share).await;
    let (_fake, bot, caller, _plain) = setup(BotOpts {
        homeserver: Some((proxy.url.clone(), secret)),
        ..Default::default()
    })
    .await;
    let opts = browser_opts(&caller, &hs, &bot.user_id, None, json!({}));
    let r = run_browser(opts).await;
    assert_audio(&r);
    let shares: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|f| key_share(&f.method, &f.path))
        .collect();
    assert!(shares.len() >= 2 && shares[0].dropped, "{shares:#?}");
    let txn = |f: &support::http_proxy::Forwarded| f.path.rsplit('/').next().map(str::to_owned);
    assert_eq!(txn(&shares[0]), txn(&shares[1]), "{shares:#?}");
    bot.stop().await;
}

/// The bot restarts with the same `state_dir` (same device, no new login) and still answers
/// in the encrypted room, also a second device of the caller that appeared in the meantime;
/// after its encryption store is deleted it comes back as a new device and works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_decrypting_new_caller_devices_and_a_lost_store() {
    let (fake, bot, caller, _plain) = setup(BotOpts::default()).await;
    let hs = caller.homeserver().to_owned();
    let r = run_browser(browser_opts(&caller, &hs, &bot.user_id, None, json!({}))).await;
    assert_audio(&r);
    let room = r["roomId"].as_str().unwrap().to_owned();
    let first_device = r["botDevices"][0]["deviceId"].clone();

    let (_, user_id, password, state_dir) = bot.stop().await;
    let bot = Bot::start_with(user_id, password, state_dir, &fake, BotOpts::default()).await;
    let second = caller.second_device().await;
    let r = run_browser(browser_opts(
        &second,
        &hs,
        &bot.user_id,
        Some(&room),
        json!({}),
    ))
    .await;
    assert_audio(&r);
    assert_bot_trusted(&r);
    assert_eq!(
        r["botDevices"][0]["deviceId"], first_device,
        "the same bot device"
    );

    // The store is lost: the bot logs out its old device, logs in as a new one, and callers
    // reach it again in the same room.
    let (_, user_id, password, state_dir) = bot.stop().await;
    std::fs::remove_dir_all(state_dir.join("crypto")).unwrap();
    let bot = Bot::start_with(user_id, password, state_dir, &fake, BotOpts::default()).await;
    let third = caller.second_device().await;
    let r = run_browser(browser_opts(
        &third,
        &hs,
        &bot.user_id,
        Some(&room),
        json!({}),
    ))
    .await;
    assert_audio(&r);
    let devices = r["botDevices"].as_array().cloned().unwrap_or_default();
    assert_eq!(devices.len(), 1, "the old device was logged out: {r}");
    assert_ne!(
        devices[0]["deviceId"], first_device,
        "a new bot device: {r}"
    );
    bot.stop().await;
}

/// Not a check but a measurement (run it with `tests/run.sh --test e2ee -- --ignored
/// --nocapture`): invite → answer as the caller sees it, 10 calls in a plain DM and 10 in an
/// encrypted one, to the echo extension. Prints both medians and the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_encryption_setup_overhead() {
    let (_fake, bot, caller, plain) = setup(BotOpts::default()).await;
    let hs = caller.homeserver().to_owned();
    let median = |r: &Value| {
        let mut t: Vec<u64> = r["times"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        t.sort();
        (t[t.len() / 2], t)
    };
    let base = json!({"hs": hs, "token": caller.token(), "userId": caller.user_id,
        "deviceId": caller.device_id, "measure": true, "calls": 10});
    let mut p = base.clone();
    p["roomId"] = json!(plain);
    let (plain_ms, plain_all) = median(&run_browser(p).await);
    let second = caller.second_device().await;
    let mut e = browser_opts(&second, &hs, &bot.user_id, None, json!({}));
    e["measure"] = json!(true);
    e["calls"] = json!(10);
    let (enc_ms, enc_all) = median(&run_browser(e).await);
    println!("invite -> answer, median of 10: plain {plain_ms} ms {plain_all:?}, encrypted {enc_ms} ms {enc_all:?}, encryption adds {} ms", enc_ms as i64 - plain_ms as i64);
    bot.stop().await;
}

/// A caller whose session is not cross-signed by its owner (the default trust does not accept
/// it) gets a notice that says so, instead of ringing with no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_device_is_told_why() {
    let (_fake, bot, caller, _plain) = setup(BotOpts::default()).await;
    let hs = caller.homeserver().to_owned();
    let mut o = browser_opts(&caller, &hs, &bot.user_id, None, json!({}));
    o["encrypted"]["crossSign"] = json!(false);
    o["say"] = json!(true);
    o["text"] = json!("!help");
    o["expect"] = json!("not verified");
    let r = run_browser(o).await;
    let notices = r["notices"].as_array().cloned().unwrap_or_default();
    assert!(
        !notices
            .iter()
            .any(|n| n.as_str().unwrap_or("").contains("!dtmf")),
        "the bot did not read the untrusted message: {r}"
    );
    bot.stop().await;
}
