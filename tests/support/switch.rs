//! A real FreeSWITCH 1.10.12 (built and configured by `tests/support/freeswitch.sh`), and its
//! event socket, through which the tests read and steer the switch's side of a call.
//!
//! `tests/run.sh` starts one switch for the whole run and exports where it listens
//! (`VERTOBOT_TEST_FS_*`); [`Switch::shared`] returns it. A test that must stop, restart or
//! reconfigure a switch starts its own with [`Switch::start_own`].

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A running FreeSWITCH.
pub struct Switch {
    /// `ws://127.0.0.1:<port>` of the verto profile.
    pub ws_url: String,
    /// `wss://localhost:<port>`: the same profile over TLS.
    pub wss_url: String,
    /// The wss listener's self-signed certificate (PEM, marked as a CA as openssl makes it).
    pub cert: PathBuf,
    /// The SIP port (`127.0.0.1`, unauthenticated, context `verto`).
    pub sip_port: u16,
    esl_port: u16,
    run_dir: PathBuf,
    child: Option<Child>,
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with tests/run.sh"))
}

fn script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/freeswitch.sh").to_owned()
}

impl Switch {
    /// The switch that `tests/run.sh` started for the whole run.
    pub fn shared() -> Switch {
        Self::from_run_dir(PathBuf::from(env("VERTOBOT_TEST_FS_RUN")), None)
    }

    fn from_run_dir(run_dir: PathBuf, child: Option<Child>) -> Switch {
        let ports = std::fs::read_to_string(run_dir.join("ports.env")).expect("ports.env");
        let port = |key: &str| -> u16 {
            ports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or_else(|| panic!("{key} missing in ports.env"))
        };
        Switch {
            ws_url: format!("ws://127.0.0.1:{}", port("FS_WS_PORT")),
            wss_url: format!("wss://localhost:{}", port("FS_WSS_PORT")),
            cert: run_dir.join("certs/cert.pem"),
            sip_port: port("FS_SIP_PORT"),
            esl_port: port("FS_ESL_PORT"),
            run_dir,
            child,
        }
    }

    /// Starts a switch of its own (for tests that stop or reconfigure it), with FreeSWITCH's
    /// `detach-timeout-sec` set to `detach_secs` when given.
    pub async fn start_own(detach_secs: Option<u32>) -> Switch {
        let base = PathBuf::from(env("VERTOBOT_TEST_RUN_DIR"));
        let run_dir = base.join(format!("own-freeswitch.{}", uuid::Uuid::new_v4().simple()));
        let mut init = Command::new(script());
        init.arg("init").arg(&run_dir).stdout(Stdio::null());
        if let Some(d) = detach_secs {
            init.env("VERTOBOT_FREESWITCH_DETACH_SECS", d.to_string());
        }
        assert!(init.status().await.expect("freeswitch.sh init").success());
        let mut s = Self::from_run_dir(run_dir, None);
        s.run().await;
        s
    }

    /// (Re)starts an own switch's process on the same run directory and ports.
    pub async fn run(&mut self) {
        let bin = env("VERTOBOT_TEST_FS_BIN");
        let child = Command::new(script())
            .arg("run")
            .arg(&bin)
            .arg(&self.run_dir)
            .kill_on_drop(true)
            .spawn()
            .expect("start FreeSWITCH");
        let pid = child.id().expect("pid").to_string();
        self.child = Some(child);
        let ok = Command::new(script())
            .args(["wait"])
            .arg(&self.run_dir)
            .arg(pid)
            .status()
            .await
            .expect("freeswitch.sh wait");
        assert!(
            ok.success(),
            "FreeSWITCH did not come up; see {}",
            self.run_dir.display()
        );
    }

    /// Stops an own switch by its process id (SIGTERM, then waits).
    pub async fn stop(&mut self) {
        let mut child = self
            .child
            .take()
            .expect("only an own switch can be stopped");
        if let Some(pid) = child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
        let _ = child.kill().await;
    }

    /// Kills an own switch by its process id with SIGKILL: a crash, no goodbyes.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("only an own switch can be killed");
        let _ = child.kill().await;
    }

    /// Runs an event-socket `api` command and returns its body.
    pub async fn api(&self, cmd: &str) -> String {
        esl_api(self.esl_port, cmd)
            .await
            .unwrap_or_else(|e| panic!("ESL api {cmd}: {e}"))
    }

    /// The switch's channels (`show channels as json`), `[]` when there are none.
    pub async fn channels(&self) -> Vec<Value> {
        let body = self.api("show channels as json").await;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        v["rows"].as_array().cloned().unwrap_or_default()
    }

    /// A channel variable (`uuid_getvar`), `None` when unset or the channel is gone.
    pub async fn getvar(&self, uuid: &str, var: &str) -> Option<String> {
        let body = self.api(&format!("uuid_getvar {uuid} {var}")).await;
        let body = body.trim();
        (!body.is_empty() && body != "_undef_" && !body.starts_with("-ERR"))
            .then(|| body.to_owned())
    }

    /// Polls `cond` on the switch's state until it holds; FreeSWITCH pushes nothing to us for
    /// most channel facts, so this is the one place the tests poll (every 100 ms).
    pub async fn wait_until<F, Fut>(&self, what: &str, timeout: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let fut = async {
            while !cond().await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        if tokio::time::timeout(timeout, fut).await.is_err() {
            panic!(
                "timed out after {timeout:?} waiting for FreeSWITCH: {what} (its log: {})",
                self.log_path().display()
            );
        }
    }

    /// Waits until the channel with this UUID exists (or no longer exists).
    pub async fn wait_channel(&self, uuid: &str, exists: bool, timeout: Duration) {
        let what = format!("channel {uuid} {}", if exists { "up" } else { "gone" });
        self.wait_until(&what, timeout, || async {
            let ch = self.channels().await;
            ch.iter().any(|c| c["uuid"] == uuid) == exists
        })
        .await;
    }

    /// The event socket's port.
    pub fn esl_port(&self) -> u16 {
        self.esl_port
    }

    /// RTP media packets the switch has received on a channel so far (`mediaStats`; 0 when
    /// the channel is gone).
    pub async fn audio_in_packets(&self, uuid: &str) -> u64 {
        let cmd = serde_json::json!({"command": "mediaStats", "data": {"uuid": uuid}});
        let body = self.api(&format!("json {cmd}")).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        v["response"]["audio"]["in_media_packet_count"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until the switch has received `more` further audio packets on a channel: proof
    /// that the caller's audio reaches FreeSWITCH (now, not only earlier).
    pub async fn wait_audio_in(&self, uuid: &str, more: u64, timeout: Duration) -> u64 {
        let start = self.audio_in_packets(uuid).await;
        let what = format!("{more} more audio packets from the caller on {uuid} (had {start})");
        self.wait_until(&what, timeout, || async {
            self.audio_in_packets(uuid).await >= start + more
        })
        .await;
        self.audio_in_packets(uuid).await
    }

    /// What the DTMF collector (extension 5000) logged as its running total for a channel
    /// (`HARNESS_DTMF uuid=... total=[...]`): the log outlives the channel.
    pub fn collected_digits(&self, uuid: &str) -> Option<String> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let key = format!("HARNESS_DTMF uuid={uuid} ");
        log.lines()
            .rev()
            .filter(|l| l.contains(&key))
            .filter_map(|l| l.split("total=[").nth(1))
            .filter_map(|t| t.split(']').next())
            .next()
            .map(str::to_owned)
    }

    /// The log of this switch (for failure messages).
    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("log/freeswitch.log")
    }
}

/// One ESL connection: authenticate, run one `api` command, return its body.
pub async fn esl_api(port: u16, cmd: &str) -> std::io::Result<String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut r = BufReader::new(tcp);
    read_msg(&mut r).await?; // auth/request
    r.get_mut().write_all(b"auth ClueCon\n\n").await?;
    let (headers, _) = read_msg(&mut r).await?;
    if !headers.contains("+OK") {
        return Err(std::io::Error::other(format!(
            "ESL auth refused: {headers}"
        )));
    }
    r.get_mut()
        .write_all(format!("api {cmd}\n\n").as_bytes())
        .await?;
    loop {
        let (headers, body) = read_msg(&mut r).await?;
        if headers.contains("api/response") {
            return Ok(body);
        }
    }
}

/// Reads one ESL message: headers up to a blank line, then `Content-Length` bytes of body.
async fn read_msg(r: &mut BufReader<TcpStream>) -> std::io::Result<(String, String)> {
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.trim().is_empty() {
            if headers.is_empty() {
                continue;
            }
            break;
        }
        headers.push_str(&line);
    }
    let len = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((headers, String::from_utf8_lossy(&body).into_owned()))
}

/// A second verto client, logged in as `1001@localhost` by default: it lets calls to
/// extension 1001 ring and never answers them (the real switch's way to keep a call ringing
/// on demand), or, with [`Ringer::answering`], answers them with a real WebRTC peer and can
/// press keys on its leg.
pub struct Ringer {
    /// The `callID`s of the invites it has received (the B legs).
    pub invites: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    out: tokio::sync::mpsc::UnboundedSender<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Ringer {
    /// Logs in as 1001 and waits for the login to succeed.
    pub async fn start(switch: &Switch) -> Ringer {
        Self::start_as(switch, "1001@localhost", &uuid::Uuid::new_v4().to_string()).await
    }

    /// Logs in as `login` with `sessid` (the bot's own sessid makes FreeSWITCH punt the bot).
    pub async fn start_as(switch: &Switch, login: &str, sessid: &str) -> Ringer {
        Self::run(switch, login, sessid, None).await
    }

    /// Logs in as 1001 and answers every call with `peer` (aiortc), as a verto phone would.
    pub async fn answering(
        switch: &Switch,
        peer: std::sync::Arc<super::media::MediaPeer>,
    ) -> Ringer {
        Self::run(
            switch,
            "1001@localhost",
            &uuid::Uuid::new_v4().to_string(),
            Some(peer),
        )
        .await
    }

    /// Presses keys on one of its calls (`verto.info {dtmf}`, as verto.js sends them).
    pub fn press(&self, call_id: &str, digits: &str) {
        let _ = self.out.send(serde_json::json!({"jsonrpc": "2.0", "id": 900_000 + digits.len(), "method": "verto.info",
            "params": {"dtmf": digits, "dialogParams": {"callID": call_id}}}));
    }

    async fn run(
        switch: &Switch,
        login: &str,
        sessid: &str,
        peer: Option<std::sync::Arc<super::media::MediaPeer>>,
    ) -> Ringer {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (ws, _) = tokio_tungstenite::connect_async(switch.ws_url.as_str())
            .await
            .expect("ringer connects");
        let (mut sink, mut stream) = ws.split();
        let login = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "login", "params": {
            "login": login, "passwd": "1234", "sessid": sessid}});
        sink.send(Message::text(login.to_string()))
            .await
            .expect("ringer login");
        loop {
            let Some(Ok(Message::Text(t))) = stream.next().await else {
                panic!("ringer: socket closed")
            };
            let v: Value = serde_json::from_str(&t).unwrap_or_default();
            if v["id"] == 1 {
                assert!(v.get("result").is_some(), "ringer login refused: {v}");
                break;
            }
        }
        let invites: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let (seen, me) = (invites.clone(), out.clone());
        let writer = tokio::spawn(async move {
            while let Some(v) = out_rx.recv().await {
                if sink.send(Message::text(v.to_string())).await.is_err() {
                    break;
                }
            }
        });
        let task = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                let Some(method) = v["method"].as_str() else {
                    continue;
                };
                // Acknowledge every request (invite, bye, ping) as a browser client does.
                let _ = me.send(serde_json::json!({"jsonrpc": "2.0", "id": v["id"], "result": {"method": method}}));
                if method != "verto.invite" {
                    continue;
                }
                let id = v["params"]["callID"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(id.clone());
                if let Some(peer) = &peer {
                    let offer = v["params"]["sdp"].as_str().unwrap_or_default();
                    let sdp = peer.answer(&id, offer).await;
                    let _ = me.send(serde_json::json!({"jsonrpc": "2.0", "id": 800_000, "method": "verto.answer",
                        "params": {"sdp": sdp, "dialogParams": {"callID": id}}}));
                }
            }
            writer.abort();
        });
        Ringer { invites, out, task }
    }
}
impl Drop for Ringer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
