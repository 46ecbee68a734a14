//! Plain-HTTP helpers for the real Synapse started by `tests/run.sh`: registration through
//! the shared-secret admin API, and a test user that can create rooms, send call events and
//! wait (with a timeout, by long-polling `/sync`) for what the bot sends.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;

/// The homeserver URL and registration secret, or a clear failure.
pub fn homeserver() -> (String, String) {
    match (
        std::env::var("VERTOBOT_TEST_HOMESERVER"),
        std::env::var("VERTOBOT_TEST_SHARED_SECRET"),
    ) {
        (Ok(u), Ok(s)) => (u, s),
        _ => panic!(
            "these tests need a real Synapse: run them with tests/run.sh, which installs and starts one"
        ),
    }
}

/// A unique user name for this test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Registers a user through `/_synapse/admin/v1/register`; returns (user_id, password).
pub async fn register(username: &str) -> (String, String) {
    let (hs, secret) = homeserver();
    register_on(&hs, &secret, username).await
}

/// [`register`] on a given homeserver.
pub async fn register_on(hs: &str, secret: &str, username: &str) -> (String, String) {
    let http = reqwest::Client::new();
    let nonce: Value = http
        .get(format!("{hs}/_synapse/admin/v1/register"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nonce = nonce["nonce"].as_str().unwrap().to_owned();
    let password = format!("pw-{username}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(nonce.as_bytes());
    mac.update(b"\x00");
    mac.update(username.as_bytes());
    mac.update(b"\x00");
    mac.update(password.as_bytes());
    mac.update(b"\x00");
    mac.update(b"notadmin");
    let mac = hex::encode(mac.finalize().into_bytes());
    let r: Value = http
        .post(format!("{hs}/_synapse/admin/v1/register"))
        .json(&json!({"nonce": nonce, "username": username, "password": password, "admin": false, "mac": mac}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = r["user_id"]
        .as_str()
        .unwrap_or_else(|| panic!("register failed: {r}"))
        .to_owned();
    (user_id, password)
}

/// The test users' `/sync` filter: a timeline window larger than any test room's history.
const SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":1000}}}"#;

/// An event seen by a test user.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Room.
    pub room_id: String,
    /// The whole event.
    pub event: Value,
}

/// A Matrix user driven by a test.
pub struct TestUser {
    /// Full user id.
    pub user_id: String,
    hs: String,
    token: String,
    /// The device id of the login.
    pub device_id: String,
    http: reqwest::Client,
    since: Option<String>,
    buffer: VecDeque<Seen>,
    /// Every event seen so far (for negative checks).
    pub history: Vec<Seen>,
    /// Rooms seen in a sync already.
    rooms: std::collections::HashSet<String>,
}

impl TestUser {
    /// Registers and logs in a fresh user.
    pub async fn new(prefix: &str) -> Self {
        let (hs, secret) = homeserver();
        Self::new_on(&hs, &secret, prefix).await
    }

    /// [`new`](Self::new) on a given homeserver.
    pub async fn new_on(hs: &str, secret: &str, prefix: &str) -> Self {
        let (user_id, password) = register_on(hs, secret, &unique(prefix)).await;
        Self::login(hs, user_id, &password).await
    }

    /// The same user logged in again: a new device.
    pub async fn second_device(&self) -> Self {
        let local = self.user_id.trim_start_matches('@');
        let local = local.split(':').next().unwrap_or_default();
        Self::login(&self.hs, self.user_id.clone(), &format!("pw-{local}")).await
    }

    async fn login(hs: &str, user_id: String, password: &str) -> Self {
        let hs = hs.to_owned();
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("{hs}/_matrix/client/v3/login"))
            .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": password}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["access_token"].as_str().unwrap().to_owned();
        let device_id = r["device_id"].as_str().unwrap_or_default().to_owned();
        let mut u = TestUser {
            user_id,
            hs,
            token,
            device_id,
            http,
            since: None,
            buffer: VecDeque::new(),
            history: Vec::new(),
            rooms: Default::default(),
        };
        // Start the timeline from now.
        u.sync_once(0).await;
        u.buffer.clear();
        u
    }

    async fn req(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self
            .http
            .request(method, format!("{}/_matrix/client/v3{path}", self.hs))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    /// The access token (for a client of its own, such as the browser caller).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The homeserver URL.
    pub fn homeserver(&self) -> &str {
        &self.hs
    }

    /// Creates a private room and invites `other`; returns the room id.
    pub async fn create_dm(&self, other: &str) -> String {
        let v = self
            .req(
                reqwest::Method::POST,
                "/createRoom",
                Some(json!({"preset": "private_chat", "is_direct": true, "invite": [other]})),
            )
            .await;
        v["room_id"].as_str().unwrap().to_owned()
    }

    /// Invites a user to a room.
    pub async fn invite(&self, room: &str, user: &str) {
        self.req(
            reqwest::Method::POST,
            &format!("/rooms/{}/invite", enc(room)),
            Some(json!({"user_id": user})),
        )
        .await;
    }

    /// Joins a room.
    pub async fn join(&self, room: &str) {
        self.req(
            reqwest::Method::POST,
            &format!("/rooms/{}/join", enc(room)),
            Some(json!({})),
        )
        .await;
    }

    /// Sends an event; returns its id.
    pub async fn send(&self, room: &str, event_type: &str, content: Value) -> String {
        let txn = uuid::Uuid::new_v4().simple().to_string();
        let v = self
            .req(
                reqwest::Method::PUT,
                &format!("/rooms/{}/send/{}/{}", enc(room), event_type, txn),
                Some(content),
            )
            .await;
        v["event_id"].as_str().unwrap().to_owned()
    }

    /// One `/sync`. The filter lifts the timeline window (10 events by default) so that an
    /// incremental sync returns every new event: a "limited" timeline would skip some, and a
    /// negative check could then pass on a gap. A limited sync of a known room fails the test.
    async fn sync_once(&mut self, timeout_ms: u64) {
        let mut q = vec![
            ("timeout", timeout_ms.to_string()),
            ("filter", SYNC_FILTER.to_owned()),
        ];
        if let Some(s) = &self.since {
            q.push(("since", s.clone()));
        }
        let resp = self
            .http
            .get(format!("{}/_matrix/client/v3/sync", self.hs))
            .bearer_auth(&self.token)
            .query(&q)
            .timeout(Duration::from_millis(timeout_ms + 10_000))
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        if let Some(rooms) = v["rooms"]["join"].as_object() {
            for (room_id, r) in rooms {
                // A room's first sync is "limited" (the start of its history); later ones
                // must not be.
                let known = !self.rooms.insert(room_id.clone());
                assert!(
                    !known || r["timeline"]["limited"] != true,
                    "{}: /sync skipped events in {room_id} (limited timeline)",
                    self.user_id
                );
                for ev in r["timeline"]["events"].as_array().into_iter().flatten() {
                    let seen = Seen {
                        room_id: room_id.clone(),
                        event: ev.clone(),
                    };
                    self.history.push(seen.clone());
                    self.buffer.push_back(seen);
                }
            }
        }
        self.since = v["next_batch"].as_str().map(str::to_owned);
    }

    /// Waits (long-polling `/sync`) for an event matching `pred`; earlier non-matching
    /// events stay in the buffer for later waits.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Seen) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buffer.iter().position(&pred) {
                return self.buffer.remove(pos).unwrap().event;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what}; seen: {:#?}",
                    self.user_id,
                    self.history
                        .iter()
                        .map(|s| format!(
                            "{} {}",
                            s.event["type"],
                            s.event["content"]
                                .to_string()
                                .chars()
                                .take(200)
                                .collect::<String>()
                        ))
                        .collect::<Vec<_>>()
                );
            }
            self.sync_once(left.as_millis().min(5000) as u64).await;
        }
    }

    /// Waits for an event of `event_type` about `call_id` in `room` sent by someone else.
    pub async fn wait_call_event(
        &mut self,
        room: &str,
        event_type: &str,
        call_id: &str,
        timeout: Duration,
    ) -> Value {
        let (room, et, cid, me) = (
            room.to_owned(),
            event_type.to_owned(),
            call_id.to_owned(),
            self.user_id.clone(),
        );
        self.wait_for(&format!("{event_type} for {call_id}"), timeout, move |s| {
            s.room_id == room
                && s.event["sender"] != me.as_str()
                && s.event["type"] == et.as_str()
                && s.event["content"]["call_id"] == cid.as_str()
        })
        .await
    }

    /// Waits for a notice from someone else in `room` whose body contains `text`.
    pub async fn wait_notice(&mut self, room: &str, text: &str, timeout: Duration) -> String {
        let (room, text2, me) = (room.to_owned(), text.to_owned(), self.user_id.clone());
        let ev = self
            .wait_for(
                &format!("a notice containing {text:?}"),
                timeout,
                move |s| {
                    s.room_id == room
                        && s.event["sender"] != me.as_str()
                        && s.event["type"] == "m.room.message"
                        && s.event["content"]["msgtype"] == "m.notice"
                        && s.event["content"]["body"]
                            .as_str()
                            .is_some_and(|b| b.contains(&text2))
                },
            )
            .await;
        ev["content"]["body"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Notices from others in `room` seen so far.
    pub fn notices(&self, room: &str) -> Vec<String> {
        self.history
            .iter()
            .filter(|s| {
                s.room_id == room
                    && s.event["sender"] != self.user_id.as_str()
                    && s.event["content"]["msgtype"] == "m.notice"
            })
            .filter_map(|s| s.event["content"]["body"].as_str().map(str::to_owned))
            .collect()
    }

    /// Creates a room with a local alias; returns (room id, `#alias:server`).
    pub async fn create_room_with_alias(
        &self,
        alias_local: &str,
        invite: &str,
    ) -> (String, String) {
        let v = self
            .req(reqwest::Method::POST, "/createRoom", Some(json!({"preset": "private_chat", "room_alias_name": alias_local, "invite": [invite]})))
            .await;
        let server = self.user_id.split_once(':').unwrap().1;
        (
            v["room_id"].as_str().unwrap().to_owned(),
            format!("#{alias_local}:{server}"),
        )
    }

    /// Sets the user's display name.
    pub async fn set_display_name(&self, name: &str) {
        self.req(
            reqwest::Method::PUT,
            &format!("/profile/{}/displayname", enc(&self.user_id)),
            Some(json!({"displayname": name})),
        )
        .await;
    }

    /// Waits until `user` has joined `room`.
    pub async fn wait_joined(&mut self, room: &str, user: &str, timeout: Duration) {
        let (room, user) = (room.to_owned(), user.to_owned());
        self.wait_for(&format!("{user} to join"), timeout, move |s| {
            s.room_id == room
                && s.event["type"] == "m.room.member"
                && s.event["state_key"] == user.as_str()
                && s.event["content"]["membership"] == "join"
        })
        .await;
    }

    /// Every event of `event_type` for `call_id` that others sent, seen so far.
    pub fn seen_call_events(&self, event_type: &str, call_id: &str) -> Vec<Value> {
        self.history
            .iter()
            .filter(|s| {
                s.event["sender"] != self.user_id.as_str()
                    && s.event["type"] == event_type
                    && s.event["content"]["call_id"] == call_id
            })
            .map(|s| s.event.clone())
            .collect()
    }

    /// Drains events already on the server into the history (a non-blocking sync).
    pub async fn catch_up(&mut self) {
        self.sync_once(0).await;
    }
}

/// `calls:` lines that make [`after_earlier_calls_ended`] a barrier.
pub const ONE_CALL_PER_USER: &str = "  max_calls_per_user: 1";

/// A barrier for "the bot sent nothing more for the caller's earlier calls", with a bot on
/// [`ONE_CALL_PER_USER`] and a destination that answers. The bridge counts a call against the
/// caller until its actor has ended, and an actor ends only after its last Matrix event and
/// its last verto request went out. So a new call that is dialled and answered proves every
/// earlier call of this caller has finished sending. A call refused by the limit (its actor
/// is still finishing) is followed by another, each waiting on the bot's reply. Returns the
/// barrier call's id (answered; the caller hangs it up).
pub async fn after_earlier_calls_ended(caller: &mut TestUser, room: &str) -> String {
    for _ in 0..20 {
        let cid = super::place_call(caller, room).await;
        let (r, c, me) = (room.to_owned(), cid.clone(), caller.user_id.clone());
        let ev = caller
            .wait_for("the barrier call's answer or reject", super::T, move |s| {
                s.room_id == r
                    && s.event["sender"] != me.as_str()
                    && (s.event["type"] == "m.call.answer" || s.event["type"] == "m.call.reject")
                    && s.event["content"]["call_id"] == c.as_str()
            })
            .await;
        if ev["type"] == "m.call.answer" {
            super::hang_up(caller, room, &cid).await;
            return cid;
        }
        assert_eq!(ev["content"]["reason"], "user_busy", "{ev}");
    }
    panic!("the earlier calls never ended: every barrier call was refused");
}

/// A homeserver of a test's own, which the test can stop and start again (same port and
/// database). Stopped by its process id when dropped.
pub struct OwnSynapse {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its registration secret.
    pub secret: String,
    port: u16,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl OwnSynapse {
    fn script() -> String {
        std::env::var("VERTOBOT_TEST_SYNAPSE_SCRIPT").expect("run with tests/run.sh")
    }

    /// Creates and starts one.
    pub async fn start() -> Self {
        let base = std::env::var("VERTOBOT_TEST_RUN_DIR").expect("run with tests/run.sh");
        let dir = std::path::PathBuf::from(base)
            .join(format!("own-synapse.{}", uuid::Uuid::new_v4().simple()));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let st = tokio::process::Command::new(Self::script())
            .args(["init", dir.to_str().unwrap(), &port.to_string(), &secret])
            .status()
            .await
            .unwrap();
        assert!(st.success(), "synapse.sh init failed");
        let mut s = OwnSynapse {
            url: format!("http://127.0.0.1:{port}"),
            secret,
            port,
            dir,
            child: None,
        };
        s.run().await;
        s
    }

    /// Starts it again after [`stop`](Self::stop).
    pub async fn run(&mut self) {
        let child = tokio::process::Command::new(Self::script())
            .args(["run", self.dir.to_str().unwrap()])
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        self.child = Some(child);
        let st = tokio::process::Command::new(Self::script())
            .args(["wait", &self.port.to_string(), &pid.to_string()])
            .status()
            .await
            .unwrap();
        assert!(
            st.success(),
            "own Synapse did not start; see {}",
            self.dir.display()
        );
    }

    /// Stops it (by its pid) and waits for the process to end.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
