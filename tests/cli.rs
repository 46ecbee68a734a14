//! The command line as an operator uses it: `--help`, `--version`, `--check`, `--health`, and
//! a real process stopped with SIGTERM.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_vertobot");

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("vertobot-cli-{}-{name}", uuid::Uuid::new_v4()))
}

#[test]
fn help_version_and_check() {
    assert!(Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap()
        .status
        .success());
    let v = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("vertobot "));
    let ok = Command::new(BIN)
        .args(["-c", "config.example.yaml", "--check"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let bad = tmp("bad.yaml");
    std::fs::write(
        &bad,
        "matrix:\n  homeserver: nope\n  user_id: x\nverto:\n  url: http://x\n  login: \"\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["--config", bad.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "matrix.homeserver",
        "matrix.user_id",
        "matrix: set password",
        "verto.url",
        "verto.login",
        "verto.password",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
    std::fs::write(&bad, "matrix:\n  homeserver: https://x\n  typo: 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", bad.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `typo`"));
}

/// `--check` reports every problem of the `inbound:` section (calls from FreeSWITCH).
#[test]
fn check_validates_the_inbound_section() {
    let text = std::fs::read_to_string("config.example.yaml").unwrap().replace(
        "  ring_timeout_secs: 45\n",
        "  ring_timeout_secs: 1\n  default_user: \"alice\"\n  routes:\n    - caller: \"1*\"\n      user: \"@*:example.org\"\n",
    );
    let cfg = tmp("inbound.yaml");
    std::fs::write(&cfg, text.replace("  routes: []\n", "")).unwrap();
    let out = Command::new(BIN)
        .args(["-c", cfg.to_str().unwrap(), "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "inbound.routes[0].user",
        "inbound.default_user",
        "inbound.ring_timeout_secs",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

#[test]
fn health_reflects_the_last_sync() {
    let dir = tmp("state");
    let cfg = tmp("cfg.yaml");
    let text = std::fs::read_to_string("config.example.yaml")
        .unwrap()
        .replace("./vertobot-state", dir.to_str().unwrap());
    std::fs::write(&cfg, text).unwrap();
    let health = || {
        Command::new(BIN)
            .args(["-c", cfg.to_str().unwrap(), "--health"])
            .output()
            .unwrap()
    };
    assert_eq!(health().status.code(), Some(1), "no sync yet");
    vertobot::state::StateStore::open(&dir)
        .unwrap()
        .touch_alive()
        .unwrap();
    assert!(health().status.success());
}

/// Prints a child bot's log when the test fails; its output is otherwise lost.
struct LogOnFailure(std::path::PathBuf);

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- the bot's log ({}) ---\n{log}", self.0.display());
        }
    }
}

/// SIGTERM on the real process: every active call is hung up on both sides, then it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hangs_up_and_exits() {
    // The real switch behind the recording tap: nothing here needs the fake.
    let fake = FakeVerto::tap(&Switch::shared()).await;
    let (hs, secret) = support::synapse::homeserver();
    let (bot_user, bot_pw) =
        support::synapse::register_on(&hs, &secret, &support::synapse::unique("bot")).await;
    let dir = tmp("state");
    let cfg = tmp("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "matrix:\n  homeserver: \"{hs}\"\n  user_id: \"{bot_user}\"\n  sync_timeout_secs: 5\nverto:\n  url: \"{}\"\n  login: \"1000@localhost\"\ncalls:\n  destination: \"9196\"\n  candidate_wait_ms: 1000\nstate_dir: \"{}\"\n",
            fake.url,
            dir.display()
        ),
    )
    .unwrap();
    // Secrets from the environment, as documented. The log goes to a file, shown if the
    // test fails.
    let log = LogOnFailure(tmp("bot.log"));
    let mut child = tokio::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .env("VERTOBOT_MATRIX_PASSWORD", &bot_pw)
        .env("VERTOBOT_VERTO_PASSWORD", VERTO_PASSWORD)
        .env("RUST_LOG", "vertobot=debug")
        .stdout(std::fs::File::create(&log.0).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut caller = TestUser::new("caller").await;
    let room = caller.create_dm(&bot_user).await;
    caller.wait_joined(&room, &bot_user, T).await;
    let cid = place_call(&caller, &room).await;
    let (verto_id, _) = wait_dialled(&fake, &cid).await;
    caller
        .wait_call_event(&room, "m.call.answer", &cid, T)
        .await;

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
    wait_bye(&fake, &verto_id).await;
    caller
        .wait_call_event(&room, "m.call.hangup", &cid, T)
        .await;
}

/// A damaged encryption store (or one of another account, or a wrong passphrase) stops the
/// bridge at start with an error that names the store: never a panic, never a silent reset of
/// the bot's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_encryption_store_is_a_clear_error_at_start() {
    let fake = FakeVerto::tap(&Switch::shared()).await;
    let (hs, secret) = support::synapse::homeserver();
    let (bot_user, bot_pw) =
        support::synapse::register_on(&hs, &secret, &support::synapse::unique("bot")).await;
    let dir = tmp("state");
    std::fs::create_dir_all(dir.join("crypto")).unwrap();
    std::fs::write(
        dir.join("crypto/matrix-sdk-crypto.sqlite3"),
        "this is not a database",
    )
    .unwrap();
    let cfg = tmp("cfg.yaml");
    std::fs::write(
        &cfg,
        format!(
            "matrix:\n  homeserver: \"{hs}\"\n  user_id: \"{bot_user}\"\nverto:\n  url: \"{}\"\n  login: \"1000@localhost\"\nstate_dir: \"{}\"\n",
            fake.url,
            dir.display()
        ),
    )
    .unwrap();
    let run = tokio::process::Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .env("VERTOBOT_MATRIX_PASSWORD", &bot_pw)
        .env("VERTOBOT_VERTO_PASSWORD", VERTO_PASSWORD)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("vertobot stops at start")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cannot open the encryption store"), "{text}");
    assert!(text.contains("crypto"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}
