//! The verto client against the fake FreeSWITCH alone (no Matrix): login, server requests
//! with colliding ids, keepalive, timeouts, disconnect and reconnect with the same sessid.
//!
//! Why the fake and not the real test switch (each test repeats its reason in one line):
//! - server request ids that collide with the client's on purpose, and a server `verto.ping`
//!   on demand (the real switch's ids come from a server-wide counter, and it pings only after
//!   30 s idle, `ping.jsonl`);
//! - requests left without reply (`silent`): the real switch always replies at once;
//! - a count of logins and of WebSocket control frames, which only the fake records (the tap
//!   records text frames);
//! - fresh TLS certificates per test (a trusted one, an untrusted one, a second CA-flagged one
//!   with the same name) and a count of failed TLS handshakes: the test switch has one fixed
//!   wss certificate.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{FakeVerto, VERTO_PASSWORD};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vertobot::verto::{self, VertoError, VertoEvent, VertoHandle};

const T: Duration = Duration::from_secs(10);

fn cfg(url: &str, password: &str, keepalive: u64) -> vertobot::config::VertoConfig {
    serde_yaml_ng::from_str(&format!(
        "url: \"{url}\"\nlogin: \"1000@localhost\"\npassword: \"{password}\"\nrequest_timeout_secs: 1\nkeepalive_secs: {keepalive}\nreconnect_max_secs: 1\n"
    ))
    .unwrap()
}

async fn start(
    fake: &FakeVerto,
    password: &str,
    keepalive: u64,
) -> (
    VertoHandle,
    mpsc::Receiver<VertoEvent>,
    CancellationToken,
    String,
) {
    support::init_logs();
    let (tx, rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let sessid = uuid::Uuid::new_v4().to_string();
    let (h, _task) = verto::spawn(
        &cfg(&fake.url, password, keepalive),
        sessid.clone(),
        tx,
        cancel.clone(),
    )
    .unwrap();
    (h, rx, cancel, sessid)
}

async fn next_event(
    rx: &mut mpsc::Receiver<VertoEvent>,
    want: impl Fn(&VertoEvent) -> bool,
) -> VertoEvent {
    tokio::time::timeout(T, async {
        loop {
            let ev = rx.recv().await.expect("verto events channel open");
            if want(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("timed out waiting for a verto event")
}

#[tokio::test]
async fn login_and_replies_to_server_requests_with_colliding_ids() {
    // The fake: ids colliding with ours on purpose, and a server verto.ping on demand.
    let fake = FakeVerto::start(VERTO_PASSWORD).await;
    let (h, mut rx, cancel, sessid) = start(&fake, VERTO_PASSWORD, 600).await;
    next_event(&mut rx, |e| matches!(e, VertoEvent::Connected { .. })).await;
    let login = fake
        .wait_for("login", T, |f| f.msg["method"] == "login")
        .await;
    assert_eq!(login.msg["params"]["sessid"], sessid.as_str());
    assert_eq!(login.msg["id"], 1);
    // The fake's clientReady carried id 1 too, the same as our login: it must be acknowledged
    // as a request, not taken for the reply to our login.
    fake.wait_for("clientReady ack", T, |f| {
        f.msg["result"]["method"] == "verto.clientReady" && f.msg["id"] == 1
    })
    .await;
    // A server ping whose id equals our next request id.
    fake.ping();
    fake.wait_for("verto.ping ack", T, |f| {
        f.msg["result"]["method"] == "verto.ping"
    })
    .await;
    let r = h.request("verto.ping", json!({})).await.unwrap();
    assert_eq!(r["message"], "PONG");
    // Unknown method: a typed RPC error, the connection stays up.
    match h.request("verto.nosuchmethod", json!({})).await {
        Err(VertoError::Rpc(e)) => assert_eq!(e.code, Some(-32601)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.request("verto.ping", json!({})).await.unwrap()["message"],
        "PONG"
    );
    cancel.cancel();
}

#[tokio::test]
async fn wrong_password_never_connects_and_requests_fail_fast() {
    // The fake: counts connection attempts and successful logins (the tap does not count logins).
    let fake = FakeVerto::start(VERTO_PASSWORD).await;
    let (h, mut rx, cancel, _) = start(&fake, "wrong", 600).await;
    fake.wait_for("a login attempt", T, |f| f.msg["method"] == "login")
        .await;
    match h.request("verto.ping", json!({})).await {
        Err(VertoError::Disconnected) => {}
        other => panic!("{other:?}"),
    }
    // It retries (with backoff), and never claims to be connected.
    fake.wait_for("a second login attempt", T, |f| {
        f.msg["method"] == "login" && f.conn == 2
    })
    .await;
    assert!(fake.logins() == 0);
    while let Ok(ev) = rx.try_recv() {
        assert!(!matches!(ev, VertoEvent::Connected { .. }), "{ev:?}");
    }
    // The password never appears in a frame other than the login itself.
    cancel.cancel();
}

#[tokio::test]
async fn request_without_reply_times_out() {
    // The fake: `silent` leaves verto.invite without reply; the real switch always replies.
    let fake = FakeVerto::start(VERTO_PASSWORD).await;
    let (h, mut rx, cancel, _) = start(&fake, VERTO_PASSWORD, 600).await;
    next_event(&mut rx, |e| matches!(e, VertoEvent::Connected { .. })).await;
    let r = h
        .invite(
            "v=0\r\nm=audio 9 RTP/SAVPF 0\r\n",
            json!({"callID": "x", "destination_number": "silent"}),
        )
        .await;
    assert!(matches!(r, Err(VertoError::Timeout(_))), "{r:?}");
    cancel.cancel();
}

#[tokio::test]
async fn disconnect_fails_pending_and_reconnects_with_the_same_sessid() {
    // The fake: a request must still be pending when the socket drops (`silent`).
    let fake = FakeVerto::start(VERTO_PASSWORD).await;
    let (h, mut rx, cancel, sessid) = start(&fake, VERTO_PASSWORD, 600).await;
    next_event(&mut rx, |e| matches!(e, VertoEvent::Connected { .. })).await;
    let h2 = h.clone();
    let pending = tokio::spawn(async move {
        h2.invite(
            "v=0\r\nm=audio 9 RTP/SAVPF 0\r\n",
            json!({"callID": "y", "destination_number": "silent"}),
        )
        .await
    });
    fake.wait_for("the invite", T, |f| f.msg["method"] == "verto.invite")
        .await;
    fake.drop_connections();
    let r = tokio::time::timeout(T, pending).await.unwrap().unwrap();
    assert!(matches!(r, Err(VertoError::Disconnected)), "{r:?}");
    next_event(&mut rx, |e| matches!(e, VertoEvent::Disconnected)).await;
    next_event(&mut rx, |e| matches!(e, VertoEvent::Connected { .. })).await;
    let logins: Vec<Value> = fake
        .frames()
        .into_iter()
        .filter(|f| f.msg["method"] == "login")
        .map(|f| f.msg)
        .collect();
    assert_eq!(logins.len(), 2);
    assert!(logins
        .iter()
        .all(|l| l["params"]["sessid"] == sessid.as_str()));
    assert_eq!(
        h.request("verto.ping", json!({})).await.unwrap()["message"],
        "PONG"
    );
    cancel.cancel();
}

#[tokio::test]
async fn keepalive_uses_verto_ping_not_websocket_pings() {
    // The fake: only it records WebSocket ping frames (the tap records text frames).
    let fake = FakeVerto::start(VERTO_PASSWORD).await;
    let (_h, mut rx, cancel, sessid) = start(&fake, VERTO_PASSWORD, 1).await;
    next_event(&mut rx, |e| matches!(e, VertoEvent::Connected { .. })).await;
    let ping = fake
        .wait_for("a keepalive verto.ping", T, |f| {
            f.msg["method"] == "verto.ping"
        })
        .await;
    assert_eq!(ping.msg["params"]["sessid"], sessid.as_str());
    fake.wait_for("a second keepalive", T, |f| {
        f.msg["method"] == "verto.ping" && f.msg["id"] != ping.msg["id"]
    })
    .await;
    assert!(
        fake.frames().iter().all(|f| f.msg != "<websocket ping>"),
        "no WebSocket ping frames"
    );
    assert_eq!(fake.logins(), 1, "keepalive did not drop the connection");
    cancel.cancel();
}

fn tls_cfg(url: &str, ca: Option<&std::path::Path>) -> vertobot::config::VertoConfig {
    let mut c = cfg(url, VERTO_PASSWORD, 600);
    c.ca_file = ca.map(|p| p.to_owned());
    c
}

/// `wss://` with a private CA: verified against `ca_file`; refused without it.
#[tokio::test]
async fn wss_with_custom_ca_file_and_verification() {
    // The fake: a fresh certificate per test and a count of failed TLS handshakes.
    support::init_logs();
    let (fake, pem) = FakeVerto::start_tls(VERTO_PASSWORD).await;
    let ca = std::env::temp_dir().join(format!("vertobot-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&ca, pem).unwrap();

    // Without the CA the certificate is not trusted: no login ever happens.
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let (_h, _t) =
        verto::spawn(&tls_cfg(&fake.url, None), "s1".into(), tx, cancel.clone()).unwrap();
    fake.wait_until("the untrusted certificate to be refused", T, |f| {
        f.tls_failures() > 0
    })
    .await;
    assert_eq!(fake.logins(), 0);
    assert!(rx.try_recv().is_err(), "no Connected event");
    cancel.cancel();

    // With the CA file it connects and logs in.
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let (h, _t) = verto::spawn(
        &tls_cfg(&fake.url, Some(&ca)),
        "s2".into(),
        tx,
        cancel.clone(),
    )
    .unwrap();
    next_event(&mut rx, |e| matches!(e, VertoEvent::Connected { .. })).await;
    assert_eq!(
        h.request("verto.ping", json!({})).await.unwrap()["message"],
        "PONG"
    );
    cancel.cancel();
    let _ = std::fs::remove_file(ca);
}

/// FreeSWITCH's usual wss certificate is self-signed and marked as a CA (`openssl req -x509`);
/// WebPKI refuses such a certificate as the server's own. Named in `ca_file`, it is pinned:
/// accepted when the server presents exactly it, with verification on.
#[tokio::test]
async fn wss_with_pinned_ca_flagged_self_signed_certificate() {
    // The fake: two CA-flagged certificates with the same name, and failed TLS handshakes counted.
    support::init_logs();
    let (fake, pem) = FakeVerto::start_tls_with(VERTO_PASSWORD, true).await;
    let pin = std::env::temp_dir().join(format!("vertobot-pin-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&pin, pem).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let cfg = tls_cfg(&fake.url, Some(&pin));
    assert!(!cfg.tls_insecure_skip_verify);
    let (h, _t) = verto::spawn(&cfg, "s4".into(), tx, cancel.clone()).unwrap();
    next_event(&mut rx, |e| matches!(e, VertoEvent::Connected { .. })).await;
    assert_eq!(
        h.request("verto.ping", json!({})).await.unwrap()["message"],
        "PONG"
    );
    cancel.cancel();

    // Another certificate with the same name is still refused.
    let (other, other_pem) = FakeVerto::start_tls_with(VERTO_PASSWORD, true).await;
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let (_h, _t) = verto::spawn(
        &tls_cfg(&other.url, Some(&pin)),
        "s5".into(),
        tx,
        cancel.clone(),
    )
    .unwrap();
    other
        .wait_until("the unpinned certificate to be refused", T, |f| {
            f.tls_failures() > 0
        })
        .await;
    assert_eq!(other.logins(), 0);
    assert!(rx.try_recv().is_err(), "no Connected event");
    assert_ne!(other_pem, std::fs::read_to_string(&pin).unwrap());
    cancel.cancel();
    let _ = std::fs::remove_file(pin);
}

/// `tls_insecure_skip_verify` is an explicit opt-out: it connects to an untrusted certificate.
#[tokio::test]
async fn insecure_option_skips_verification() {
    // The fake: a fresh certificate no CA file names.
    support::init_logs();
    let (fake, _pem) = FakeVerto::start_tls(VERTO_PASSWORD).await;
    let mut c = tls_cfg(&fake.url, None);
    c.tls_insecure_skip_verify = true;
    let (tx, mut rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let (h, _t) = verto::spawn(&c, "s3".into(), tx, cancel.clone()).unwrap();
    next_event(&mut rx, |e| matches!(e, VertoEvent::Connected { .. })).await;
    assert_eq!(
        h.request("verto.ping", json!({})).await.unwrap()["message"],
        "PONG"
    );
    cancel.cancel();
}
