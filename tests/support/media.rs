//! The aiortc peer (`tests/media/peer.py`) driven over JSON lines: a real WebRTC stack for
//! the caller side; the answerer is the real FreeSWITCH.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One `peer.py` process; requests may run concurrently.
pub struct MediaPeer {
    stdin: tokio::sync::Mutex<ChildStdin>,
    waiters: Waiters,
    next: AtomicU64,
    _child: Child,
}

impl MediaPeer {
    /// Starts the helper with the test venv's Python (aiortc is installed there by tests/run.sh).
    pub async fn start() -> Arc<Self> {
        let venv = std::env::var("VERTOBOT_VENV").expect("run with tests/run.sh");
        let mut child = Command::new(format!("{venv}/bin/python"))
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/media/peer.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start tests/media/peer.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let waiters: Waiters = Arc::default();
        let w = waiters.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if let Some(req) = v["req"].as_u64() {
                    if let Some(tx) = w.lock().unwrap().remove(&req) {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        Arc::new(MediaPeer {
            stdin: tokio::sync::Mutex::new(stdin),
            waiters,
            next: AtomicU64::new(1),
            _child: child,
        })
    }

    /// One request; panics with the helper's error.
    pub async fn call(&self, mut msg: Value) -> Value {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        msg["req"] = json!(req);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(req, tx);
        {
            let mut stdin = self.stdin.lock().await;
            stdin
                .write_all(format!("{msg}\n").as_bytes())
                .await
                .unwrap();
            stdin.flush().await.unwrap();
        }
        let v = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("peer.py did not answer {msg}"))
            .unwrap();
        assert!(
            v.get("error").is_none(),
            "peer.py: {} for {msg}",
            v["error"]
        );
        v
    }

    /// A callee's answer to `offer`, as aiortc makes it.
    pub async fn answer(&self, id: &str, offer: &str) -> String {
        self.call(json!({"cmd": "answer", "id": id, "offer": offer}))
            .await["answer"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A caller's offer; with `trickle`, the candidates separately.
    pub async fn offer(&self, id: &str, trickle: bool) -> (String, Vec<Value>) {
        let v = self
            .call(json!({"cmd": "offer", "id": id, "trickle": trickle}))
            .await;
        (
            v["offer"].as_str().unwrap().to_owned(),
            v["candidates"].as_array().cloned().unwrap_or_default(),
        )
    }

    /// Applies the answer the caller got.
    pub async fn apply_answer(&self, id: &str, answer: &str) {
        self.call(json!({"cmd": "apply_answer", "id": id, "answer": answer}))
            .await;
    }

    /// ICE/DTLS state and packet counts.
    pub async fn stats(&self, id: &str) -> Value {
        self.call(json!({"cmd": "stats", "id": id})).await
    }

    /// Waits until `id` is connected and has received and sent `packets` RTP packets; fails
    /// with the last stats otherwise.
    pub async fn wait_media(&self, id: &str, packets: u64, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.stats(id).await;
            let ok = s["connection"] == "connected"
                && s["dtls"] == "connected"
                && s["packets_received"].as_u64().unwrap_or(0) >= packets
                && s["packets_sent"].as_u64().unwrap_or(0) >= packets;
            if ok {
                return s;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no media on {id} within {timeout:?} (ICE, DTLS and audio in both directions expected): {s}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs `tests/media/js/caller.mjs` (matrix-js-sdk in Chromium) and returns its report.
pub async fn run_browser(opts: Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/media/js/caller.mjs");
    let run = tokio::process::Command::new("node")
        .arg(script)
        .arg(opts.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser caller finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "caller.mjs failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(stdout.trim().lines().last().unwrap_or("{}")).unwrap();
    assert!(r.get("error").is_none(), "matrix-js-sdk call failed: {r:#}");
    r
}
