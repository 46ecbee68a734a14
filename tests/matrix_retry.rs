//! A Matrix send whose response is lost is retried with the same transaction id, so the room
//! gets the event once: the bot talks to the real Synapse through a proxy
//! (tests/support/http_proxy.rs) that lets Synapse process the bot's first `m.call.answer` and
//! then closes the connection without a reply.

mod support;

use support::http_proxy::HttpProxy;
use support::*;

/// The last path segment: the transaction id of a `/send/{type}/{txnId}` request.
fn txn_id(path: &str) -> &str {
    path.split('?')
        .next()
        .unwrap_or(path)
        .rsplit('/')
        .next()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_send_response_is_retried_with_the_same_transaction_id() {
    let (hs, secret) = support::synapse::homeserver();
    let proxy = HttpProxy::start(&hs, |method, path| {
        method == "PUT" && path.contains("/send/m.call.answer/")
    })
    .await;
    let (fake, bot, mut caller, room) = setup(BotOpts {
        homeserver: Some((proxy.url.clone(), secret)),
        ..Default::default()
    })
    .await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    let answer = caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    // Barrier: the bot's Matrix events for a call are sent in order, one at a time, so the
    // hangup reaches the room only after every attempt at sending the answer has ended.
    fake.hangup(&verto_id, 16, "NORMAL_CLEARING").await;
    caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
    caller.catch_up().await;
    let answers = caller.seen_call_events("m.call.answer", &cid);
    assert_eq!(
        answers.len(),
        1,
        "exactly one answer in the room: {answers:#?}"
    );

    let puts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/send/m.call.answer/"))
        .collect();
    assert_eq!(
        puts.len(),
        2,
        "the lost reply and one retry (the proxy withholds only the first): {puts:#?}"
    );
    assert!(puts[0].dropped && !puts[1].dropped, "{puts:#?}");
    assert_eq!(
        txn_id(&puts[0].path),
        txn_id(&puts[1].path),
        "the retry reuses the transaction id"
    );
    // Synapse processed both and answered both with the one event.
    for p in &puts {
        assert_eq!(p.status, 200, "{p:#?}");
        assert!(
            p.body.contains(answer["event_id"].as_str().unwrap()),
            "Synapse returned the event the room shows: {p:#?}"
        );
    }
    bot.stop().await;
}
