//! Passwords and access tokens never reach the logs, at any level.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_trace_logs() {
    let capture = Capture::default();
    let c = capture.clone();
    tracing_subscriber::fmt()
        // RUST_LOG=trace, the most an operator can ask for.
        .with_env_filter(vertobot::log_filter(Some("trace")))
        .with_ansi(false)
        .with_writer(move || c.clone())
        .init();
    let verto_password = "verto-Secret-9e1f";
    // The fake: the check needs a distinctive verto password, and the test switch's is "1234".
    let fake = FakeVerto::start(verto_password).await;
    let bot = Bot::start(
        &fake,
        BotOpts {
            verto_password: verto_password.into(),
            ..Default::default()
        },
    )
    .await;
    let mut caller = TestUser::new("caller").await;
    let room = caller.create_dm(&bot.user_id).await;
    caller.wait_joined(&room, &bot.user_id, T).await;
    let cid = place_call(&caller, &room).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;
    hang_up(&caller, &room, &cid).await;
    let matrix_password = bot.password.clone();
    let (_, _, _, dir) = bot.stop().await;
    let session: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("session.json")).unwrap()).unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("verto send"), "trace logs were captured");
    assert!(
        logs.contains("\"passwd\":\"***\""),
        "the login frame is logged masked"
    );
    for (name, secret) in [
        ("verto password", verto_password),
        ("Matrix password", matrix_password.as_str()),
        ("access token", token.as_str()),
    ] {
        let line = logs.lines().find(|l| l.contains(secret));
        assert!(line.is_none(), "the {name} appears in the logs: {line:?}");
    }
}
