//! The verto client against the real FreeSWITCH, without Matrix: login over `ws://` and
//! `wss://`, the switch's own self-signed (CA-flagged) certificate pinned with `ca_file`, and a
//! wrong password. tests/verto_client.rs covers what only the fake does on demand.

mod support;

use std::time::Duration;

use support::Switch;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vertobot::verto::{self, VertoEvent};

const T: Duration = Duration::from_secs(15);

fn cfg(
    url: &str,
    password: &str,
    ca_file: Option<&std::path::Path>,
) -> vertobot::config::VertoConfig {
    let mut c: vertobot::config::VertoConfig = serde_yaml_ng::from_str(&format!(
        "url: \"{url}\"\nlogin: \"1000@localhost\"\npassword: \"{password}\"\nrequest_timeout_secs: 2\nkeepalive_secs: 600\nreconnect_max_secs: 1\n"
    ))
    .expect("verto config");
    c.ca_file = ca_file.map(|p| p.to_owned());
    c
}

type Client = (
    mpsc::Receiver<VertoEvent>,
    CancellationToken,
    verto::VertoHandle,
);

fn start(cfg: &vertobot::config::VertoConfig) -> Client {
    support::init_logs();
    let (tx, rx) = mpsc::channel(64);
    let cancel = CancellationToken::new();
    let (h, _task) = verto::spawn(cfg, uuid::Uuid::new_v4().to_string(), tx, cancel.clone())
        .expect("verto client starts");
    (rx, cancel, h)
}

/// Asserts that a client never logged in (other events, such as `Disconnected`, may be there).
fn never_connected(c: &mut Client, what: &str) {
    while let Ok(ev) = c.0.try_recv() {
        assert!(!matches!(ev, VertoEvent::Connected { .. }), "{what}");
    }
}

async fn connected(c: &mut Client) {
    let ev = tokio::time::timeout(T, c.0.recv()).await.ok().flatten();
    assert!(matches!(ev, Some(VertoEvent::Connected { .. })), "{ev:?}");
}

/// FreeSWITCH's wss listener runs on a self-signed certificate made by `openssl req -x509`,
/// which is marked as a CA: WebPKI alone refuses it as a server certificate. Named in
/// `ca_file`, it is pinned and the login succeeds with verification on; without it, the same
/// certificate is refused. Both clients start together: by the time the pinned one is logged
/// in, the other has had its handshake too.
#[tokio::test]
async fn wss_to_freeswitch_with_its_own_certificate_pinned() {
    let switch = Switch::shared();
    let pinned = cfg(&switch.wss_url, "1234", Some(&switch.cert));
    assert!(!pinned.tls_insecure_skip_verify);
    let mut unpinned = start(&cfg(&switch.wss_url, "1234", None));
    let mut ok = start(&pinned);
    connected(&mut ok).await;
    // A second round trip on the pinned socket gives the other handshake more time still.
    ok.2.request("verto.ping", serde_json::json!({}))
        .await
        .expect("ping over wss");
    never_connected(&mut unpinned, "connected to an unverified certificate");
    ok.1.cancel();
    unpinned.1.cancel();
}

/// Plain `ws://` logs in; a wrong password, tried at the same time, does not.
#[tokio::test]
async fn ws_login_and_wrong_password() {
    let switch = Switch::shared();
    let mut wrong = start(&cfg(&switch.ws_url, "wrong", None));
    let mut ok = start(&cfg(&switch.ws_url, "1234", None));
    connected(&mut ok).await;
    ok.2.request("verto.ping", serde_json::json!({}))
        .await
        .expect("ping over ws");
    never_connected(&mut wrong, "logged in with a wrong password");
    ok.1.cancel();
    wrong.1.cancel();
}
