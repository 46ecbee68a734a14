//! A fake FreeSWITCH mod_verto peer that behaves like the captures in `tests/fixtures/verto/`.
//!
//! It listens on `127.0.0.1:0`, requires a `login` (wrong password → `-32001`), numbers its own
//! requests from a counter that starts at 1 (so its ids collide with the client's, as real
//! FreeSWITCH's do), acknowledges `verto.invite` with `CALL CREATED` and then plays a script
//! chosen by the destination number:
//!
//! | destination | behaviour (capture) |
//! |---|---|
//! | `9196` | `verto.answer` with SDP (`invite_echo_9196.jsonl`) |
//! | `7000` | `verto.media` with SDP, then `verto.answer` without (`early_media_7000.jsonl`) |
//! | `4860` | `verto.bye` 17 USER_BUSY (`busy_4860.jsonl`) |
//! | `4040` | `verto.bye` 3 NO_ROUTE_DESTINATION (`no_route_4040.jsonl`) |
//! | `ring` | nothing: rings until someone hangs up |
//! | `silent` | never replies to `verto.invite` |
//!
//! An offer without a usable candidate (UDP, literal IP) is hung up with 88
//! INCOMPATIBLE_DESTINATION right after `CALL CREATED` (`no_candidates.jsonl`), whatever the
//! destination. Every frame received is recorded, so tests can wait for one.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

/// FreeSWITCH's answer SDP from `invite_echo_9196.jsonl`: no `a=mid`, no BUNDLE.
pub const FS_ANSWER: &str = "v=0\r\no=FreeSWITCH 1795744740 1795744741 IN IP4 127.0.0.1\r\ns=FreeSWITCH\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=msid-semantic: WMS 3wv95VPUteELH19quUdb3bWHBuMRviYE\r\nm=audio 16458 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1; minptime=10; maxptime=40\r\na=silenceSupp:off - - - -\r\na=ptime:20\r\na=sendrecv\r\na=fingerprint:sha-256 58:2D:38:AA:98:FF:51:39:F8:26:6F:E4:29:BF:BF:0C:8B:59:DB:B1:9B:B6:81:AC:42:73:5B:E5:55:AD:1B:1D\r\na=setup:active\r\na=rtcp-mux\r\na=rtcp:16458 IN IP4 127.0.0.1\r\na=ice-ufrag:61z7sCwrljygyoQn\r\na=ice-pwd:jwR1E7YWybpNvpkKTTx5Di0U\r\na=candidate:9101603196 1 udp 2130706431 127.0.0.1 16458 typ host generation 0\r\na=end-of-candidates\r\na=ssrc:655218886 cname:hN3TYntAnIRI7PDA\r\na=ssrc:655218886 msid:3wv95VPUteELH19quUdb3bWHBuMRviYE a0\r\n";

/// One recorded inbound frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Which connection (1, 2, ...).
    pub conn: usize,
    /// The parsed frame (`Value::String` for non-JSON text).
    pub msg: Value,
}

/// A call as FreeSWITCH keeps it.
#[derive(Debug, Clone)]
struct FakeCall {
    conn: usize,
    sessid: String,
    answered: bool,
    /// The socket went away; waiting for a login with the same sessid (`detach_calls`).
    detached: bool,
}

#[derive(Default)]
struct Inner {
    frames: Vec<Frame>,
    conns: HashMap<usize, mpsc::UnboundedSender<Message>>,
    next_conn: usize,
    /// The server-wide request counter (starts at 1, like a fresh FreeSWITCH).
    next_id: u64,
    /// callID → the call.
    calls: HashMap<String, FakeCall>,
    /// connection → the sessid it logged in with.
    sessids: HashMap<usize, String>,
    /// While "down", connections are accepted and closed at once (FreeSWITCH restarting).
    down: bool,
    /// Connections attempted while down.
    refused: usize,
    logins: usize,
    tls_failures: usize,
    /// `enable-fs-events` and the channel permission: whether `verto.subscribe` succeeds.
    fs_events: bool,
    /// Connections subscribed to `FSevent.dtmf`.
    dtmf_subscribers: Vec<usize>,
    /// Tap mode: the real FreeSWITCH every connection is forwarded to.
    upstream: Option<String>,
    /// Tap mode: the switch's event-socket port, through which `hangup` acts.
    esl_port: Option<u16>,
    /// Tap mode: frames the real FreeSWITCH sent, in order.
    server_frames: Vec<Frame>,
}

/// The running fake.
#[derive(Clone)]
pub struct FakeVerto {
    /// `ws://127.0.0.1:<port>`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    count: watch::Sender<usize>,
    password: String,
}

impl FakeVerto {
    /// Starts a fake that accepts `1000@localhost` with `password`.
    pub async fn start(password: &str) -> Self {
        Self::start_inner(password, None).await
    }

    /// The same over `wss://` with a fresh self-signed certificate for 127.0.0.1; returns the
    /// certificate's PEM, to be used as the client's CA file.
    pub async fn start_tls(password: &str) -> (Self, String) {
        Self::start_tls_with(password, false).await
    }

    /// Like [`start_tls`](Self::start_tls), with a self-signed certificate that is marked as a
    /// CA when `ca_flagged`, as `openssl req -x509` and FreeSWITCH's own generator make them.
    pub async fn start_tls_with(password: &str, ca_flagged: bool) -> (Self, String) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("certificate parameters");
        if ca_flagged {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let signing_key = rcgen::KeyPair::generate().expect("key pair");
        let cert = params
            .self_signed(&signing_key)
            .expect("self-signed certificate");
        let ck = rcgen::CertifiedKey { cert, signing_key };
        let pem = ck.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
        (Self::start_inner(password, Some(acceptor)).await, pem)
    }

    /// Not a fake: a recording proxy in front of a real FreeSWITCH at `upstream` (`ws://`).
    ///
    /// Every connection is forwarded frame by frame; frames from the bot are recorded as in
    /// the fake (so `wait_for`, `invites` and friends work), frames from FreeSWITCH in
    /// [`server_frames`](Self::server_frames). [`drop_connections`](Self::drop_connections)
    /// cuts both TCP connections, which is a verto socket drop as both sides see it.
    pub async fn tap(switch: &super::switch::Switch) -> Self {
        let t = Self::start_inner("", None).await;
        let mut i = t.inner.lock().unwrap();
        i.upstream = Some(switch.ws_url.clone());
        i.esl_port = Some(switch.esl_port());
        drop(i);
        t
    }

    /// Tap mode: the frames FreeSWITCH sent so far.
    pub fn server_frames(&self) -> Vec<Frame> {
        self.inner.lock().unwrap().server_frames.clone()
    }

    /// Tap mode: waits for a frame from FreeSWITCH matching `pred`.
    pub async fn wait_server(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Frame {
        let mut rx = self.count.subscribe();
        let fut = async {
            loop {
                if let Some(f) = self.server_frames().into_iter().find(|f| pred(f)) {
                    return f;
                }
                if rx.changed().await.is_err() {
                    panic!("tap stopped");
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(f) => f,
            Err(_) => {
                panic!(
                "timed out after {timeout:?} waiting for {what} from FreeSWITCH; its frames: {:#?}",
                self.server_frames().iter().map(|f| summary(&f.msg)).collect::<Vec<_>>()
            )
            }
        }
    }

    async fn proxy<S>(&self, ws: tokio_tungstenite::WebSocketStream<S>, upstream: String)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Ok((up, _)) = tokio_tungstenite::connect_async(upstream.as_str()).await else {
            // FreeSWITCH down: the bot sees its connection closed, much as it would.
            self.inner.lock().unwrap().refused += 1;
            self.count.send_modify(|c| *c += 1);
            return;
        };
        let (mut up_sink, mut up_stream) = up.split();
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let conn = {
            let mut i = self.inner.lock().unwrap();
            i.next_conn += 1;
            let c = i.next_conn;
            i.conns.insert(c, tx.clone());
            c
        };
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
        });
        let me = self.clone();
        let down = tokio::spawn(async move {
            while let Some(Ok(m)) = up_stream.next().await {
                if let Message::Text(t) = &m {
                    let msg = serde_json::from_str(t).unwrap_or(Value::String(t.to_string()));
                    me.inner
                        .lock()
                        .unwrap()
                        .server_frames
                        .push(Frame { conn, msg });
                    me.count.send_modify(|c| *c += 1);
                }
                if matches!(m, Message::Close(_)) || tx.send(m).is_err() {
                    break;
                }
            }
            let _ = tx.send(Message::Close(None));
        });
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Text(t) = &m {
                let msg = serde_json::from_str(t).unwrap_or(Value::String(t.to_string()));
                self.inner.lock().unwrap().frames.push(Frame { conn, msg });
                self.count.send_modify(|c| *c += 1);
            }
            let close = matches!(m, Message::Close(_));
            if up_sink.send(m).await.is_err() || close {
                break;
            }
        }
        down.abort();
        writer.abort();
        self.inner.lock().unwrap().conns.remove(&conn);
        self.count.send_modify(|c| *c += 1);
    }

    async fn start_inner(password: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (count, _) = watch::channel(0);
        let fake = FakeVerto {
            url,
            inner: Arc::new(Mutex::new(Inner {
                next_id: 1,
                ..Default::default()
            })),
            count,
            password: password.to_owned(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                {
                    let mut i = f.inner.lock().unwrap();
                    if i.down {
                        i.refused += 1;
                        drop(i);
                        f.count.send_modify(|c| *c += 1);
                        drop(tcp);
                        continue;
                    }
                }
                let f = f.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let upstream = f.inner.lock().unwrap().upstream.clone();
                            match (tokio_tungstenite::accept_async(tcp).await, upstream) {
                                (Ok(ws), Some(up)) => f.proxy(ws, up).await,
                                (Ok(ws), None) => f.serve(ws).await,
                                _ => {}
                            }
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                f.inner.lock().unwrap().tls_failures += 1;
                                f.count.send_modify(|c| *c += 1);
                                return;
                            };
                            if let Ok(ws) = tokio_tungstenite::accept_async(stream).await {
                                f.serve(ws).await;
                            }
                        }
                    }
                });
            }
        });
        fake
    }

    fn server_id(&self) -> u64 {
        let mut i = self.inner.lock().unwrap();
        let id = i.next_id;
        i.next_id += 1;
        id
    }

    fn push(&self, conn: usize, v: Value) {
        let i = self.inner.lock().unwrap();
        if let Some(tx) = i.conns.get(&conn) {
            let _ = tx.send(Message::text(v.to_string()));
        }
    }

    /// Sends a server request on a connection.
    pub fn request(&self, conn: usize, method: &str, params: Value) {
        let id = self.server_id();
        self.push(
            conn,
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
    }

    /// The newest connection's number.
    pub fn last_conn(&self) -> usize {
        self.inner.lock().unwrap().next_conn
    }

    /// Sends `verto.bye` for a call, as FreeSWITCH does when the far end hangs up.
    pub async fn hangup(&self, call_id: &str, code: i64, cause: &str) {
        let esl = self.inner.lock().unwrap().esl_port;
        if let Some(port) = esl {
            // The real switch: kill the channel (its callID is the channel UUID).
            let reply = super::switch::esl_api(port, &format!("uuid_kill {call_id} {cause}"))
                .await
                .expect("ESL uuid_kill");
            assert!(reply.starts_with("+OK"), "uuid_kill {call_id}: {reply}");
            return;
        }
        self.bye_call(call_id, code, cause);
    }

    /// The fake's own `verto.bye` for a call it holds.
    fn bye_call(&self, call_id: &str, code: i64, cause: &str) {
        let call = self.inner.lock().unwrap().calls.remove(call_id);
        let conn = call
            .unwrap_or_else(|| panic!("fake verto: hangup of unknown call {call_id}"))
            .conn;
        self.request(
            conn,
            "verto.bye",
            json!({"callID": call_id, "causeCode": code, "cause": cause}),
        );
    }

    /// A FreeSWITCH restart: every connection closes and every call is gone. While `down`,
    /// connections are refused until [`set_down(false)`](Self::set_down).
    pub fn restart(&self, down: bool) {
        {
            let mut i = self.inner.lock().unwrap();
            i.calls.clear();
            i.down = down;
        }
        self.drop_connections();
    }

    /// Starts or stops refusing connections.
    pub fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    /// Connections refused while down.
    pub fn refused(&self) -> usize {
        self.inner.lock().unwrap().refused
    }

    /// Punts a connection (as when another client logs in with its sessid) and closes it.
    pub fn punt(&self, conn: usize) {
        self.request(conn, "verto.punt", json!({}));
        let tx = self.inner.lock().unwrap().conns.remove(&conn);
        if let Some(tx) = tx {
            let _ = tx.send(Message::Close(None));
        }
    }

    /// Sends a raw text frame on a connection.
    pub fn send_raw(&self, conn: usize, text: &str) {
        let i = self.inner.lock().unwrap();
        if let Some(tx) = i.conns.get(&conn) {
            let _ = tx.send(Message::text(text.to_owned()));
        }
    }

    /// Whether FreeSWITCH still has this call.
    pub fn has_call(&self, call_id: &str) -> bool {
        self.inner.lock().unwrap().calls.contains_key(call_id)
    }

    /// Grants (or refuses) `verto.subscribe` to FreeSWITCH event channels.
    pub fn set_fs_events(&self, on: bool) {
        self.inner.lock().unwrap().fs_events = on;
    }

    /// Emits `FSevent.dtmf` events as FreeSWITCH does for digits pressed on the far (B) leg
    /// of `call_id`: `Unique-ID` is the B leg, `Other-Leg-Unique-ID` is `call_id`.
    pub fn far_dtmf(&self, call_id: &str, digits: &str) {
        let b_leg = uuid::Uuid::new_v4().to_string();
        for d in digits.chars() {
            self.dtmf_event(&b_leg, Some(call_id), d);
        }
    }

    fn dtmf_event(&self, unique_id: &str, other_leg: Option<&str>, digit: char) {
        let subs = self.inner.lock().unwrap().dtmf_subscribers.clone();
        for conn in subs {
            let mut data = json!({"Event-Name": "DTMF", "DTMF-Digit": digit.to_string(), "DTMF-Source": "APP", "Unique-ID": unique_id, "Channel-Call-UUID": unique_id});
            if let Some(o) = other_leg {
                data["Other-Leg-Unique-ID"] = json!(o);
            }
            self.request(conn, "verto.event", json!({"eventChannel": "FSevent.dtmf", "data": data, "eventSerno": 0, "subscribedChannel": "FSevent.dtmf"}));
        }
    }

    /// Sends a server `verto.ping` on the newest connection (with a counter id).
    pub fn ping(&self) {
        let conn = self.last_conn();
        self.request(conn, "verto.ping", json!({"serno": 1795761220}));
    }

    /// Closes every connection, as a FreeSWITCH restart would.
    pub fn drop_connections(&self) {
        let mut i = self.inner.lock().unwrap();
        for (_, tx) in i.conns.drain() {
            let _ = tx.send(Message::Close(None));
        }
    }

    /// How many successful logins so far.
    pub fn logins(&self) -> usize {
        self.inner.lock().unwrap().logins
    }

    /// TLS handshakes that failed (e.g. the client refused the certificate).
    pub fn tls_failures(&self) -> usize {
        self.inner.lock().unwrap().tls_failures
    }

    /// All frames so far.
    pub fn frames(&self) -> Vec<Frame> {
        self.inner.lock().unwrap().frames.clone()
    }

    /// Waits until a frame matching `pred` has been received, and returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Frame {
        let mut rx = self.count.subscribe();
        let fut = async {
            loop {
                if let Some(f) = self.frames().into_iter().find(|f| pred(f)) {
                    return f;
                }
                if rx.changed().await.is_err() {
                    panic!("fake verto stopped");
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(f) => f,
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {what}; frames received: {:#?}",
                self.frames()
                    .iter()
                    .map(|f| summary(&f.msg))
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// Waits until `cond` holds for the fake (re-checked after every frame or TLS failure).
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&FakeVerto) -> bool,
    ) {
        let mut rx = self.count.subscribe();
        let fut = async {
            while !cond(self) {
                if rx.changed().await.is_err() {
                    panic!("fake verto stopped");
                }
            }
        };
        if tokio::time::timeout(timeout, fut).await.is_err() {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
    }

    /// Asserts that no frame matching `pred` arrives within `window` (for things that must
    /// not happen; bounded by the policy's own timer, not a guess).
    pub async fn assert_none_within(
        &self,
        what: &str,
        window: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) {
        let mut rx = self.count.subscribe();
        let _ = tokio::time::timeout(window, async {
            loop {
                assert!(!self.frames().iter().any(&pred), "unexpected {what}");
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(!self.frames().iter().any(&pred), "unexpected {what}");
    }

    /// All `verto.invite` requests received.
    pub fn invites(&self) -> Vec<Value> {
        self.frames()
            .into_iter()
            .filter(|f| f.msg["method"] == "verto.invite")
            .map(|f| f.msg)
            .collect()
    }

    async fn serve<S>(&self, ws: tokio_tungstenite::WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let conn = {
            let mut i = self.inner.lock().unwrap();
            i.next_conn += 1;
            let c = i.next_conn;
            i.conns.insert(c, tx.clone());
            c
        };
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
        });
        let mut authed = false;
        while let Some(Ok(msg)) = stream.next().await {
            let text = match msg {
                Message::Text(t) => t.to_string(),
                // libks hands ping frames to the JSON parser: an error frame, never a pong.
                Message::Ping(_) => {
                    self.inner.lock().unwrap().frames.push(Frame {
                        conn,
                        msg: Value::String("<websocket ping>".into()),
                    });
                    self.count.send_modify(|c| *c += 1);
                    let _ = tx.send(Message::text(
                        json!({"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"},"id":null}).to_string(),
                    ));
                    continue;
                }
                Message::Close(_) => break,
                _ => continue,
            };
            let msg: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            // Handle first, record second: a test that saw the frame can rely on its effects
            // (e.g. the call being known to `hangup`).
            self.handle(conn, &tx, &msg, &mut authed);
            self.inner.lock().unwrap().frames.push(Frame { conn, msg });
            self.count.send_modify(|c| *c += 1);
        }
        writer.abort();
        let mut i = self.inner.lock().unwrap();
        i.conns.remove(&conn);
        // detach_calls: unanswered calls die (27), answered ones wait for the same sessid.
        i.calls.retain(|_, c| c.conn != conn || c.answered);
        for c in i.calls.values_mut().filter(|c| c.conn == conn) {
            c.detached = true;
        }
    }

    fn handle(
        &self,
        conn: usize,
        tx: &mpsc::UnboundedSender<Message>,
        msg: &Value,
        authed: &mut bool,
    ) {
        let reply = |v: Value| {
            let _ = tx.send(Message::text(v.to_string()));
        };
        let Some(method) = msg["method"].as_str() else {
            return; // a response to one of our requests: FreeSWITCH ignores them
        };
        let id = msg["id"].clone();
        let p = &msg["params"];
        let err = |code: i64, message: &str| json!({"jsonrpc":"2.0","id":id,"error":{"code":code,"message":message}});
        let sessid = p["sessid"].as_str().unwrap_or("").to_owned();
        if method == "login" {
            if p["login"] != "1000@localhost" {
                reply(err(-32001, "Login Incorrect"));
            } else if p["passwd"] != self.password.as_str() {
                reply(err(-32001, "Authentication Failure"));
            } else {
                *authed = true;
                let older: Vec<usize> = {
                    let mut i = self.inner.lock().unwrap();
                    i.logins += 1;
                    i.sessids.insert(conn, sessid.clone());
                    i.sessids
                        .iter()
                        .filter(|(c, s)| **c != conn && **s == sessid && i.conns.contains_key(c))
                        .map(|(c, _)| *c)
                        .collect()
                };
                // attach_jsock: the same sessid on a new socket punts the old one.
                for old in older {
                    self.punt(old);
                    let mut i = self.inner.lock().unwrap();
                    for c in i.calls.values_mut().filter(|c| c.conn == old) {
                        c.detached = true;
                    }
                }
                reply(
                    json!({"jsonrpc":"2.0","id":id,"result":{"message":"logged in","sessid":sessid}}),
                );
                // attach_calls: re-offer every detached call of this sessid, then clientReady.
                let reattach: Vec<String> = {
                    let mut i = self.inner.lock().unwrap();
                    let ids: Vec<String> = i
                        .calls
                        .iter()
                        .filter(|(_, c)| c.detached && c.sessid == sessid)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in &ids {
                        if let Some(c) = i.calls.get_mut(id) {
                            c.conn = conn;
                            c.detached = false;
                        }
                    }
                    ids
                };
                for call_id in &reattach {
                    self.request(conn, "verto.attach", json!({"callID": call_id, "sdp": attach_offer(), "variables": {}, "display_direction": "inbound"}));
                }
                self.request(
                    conn,
                    "verto.clientReady",
                    json!({"reattached_sessions": reattach}),
                );
            }
            return;
        }
        if !*authed {
            reply(err(-32000, "Authentication Required"));
            return;
        }
        match method {
            "verto.ping" => {
                reply(json!({"jsonrpc":"2.0","id":id,"result":{"message":"PONG","sessid":sessid}}))
            }
            "verto.invite" => {
                let call_id = p["dialogParams"]["callID"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let dest = p["dialogParams"]["destination_number"]
                    .as_str()
                    .unwrap_or("service")
                    .to_owned();
                let sdp = p["sdp"].as_str().unwrap_or("").to_owned();
                if sdp.is_empty() {
                    reply(
                        json!({"jsonrpc":"2.0","id":id,"error":{"message":"SDP missing","code":-32002}}),
                    );
                    return;
                }
                if dest == "silent" {
                    return;
                }
                let answers =
                    matches!(dest.as_str(), "9196" | "7000") && has_usable_candidate(&sdp);
                self.inner.lock().unwrap().calls.insert(
                    call_id.clone(),
                    FakeCall {
                        conn,
                        sessid: sessid.clone(),
                        answered: answers,
                        detached: false,
                    },
                );
                reply(
                    json!({"jsonrpc":"2.0","id":id,"result":{"message":"CALL CREATED","callID":call_id,"sessid":sessid}}),
                );
                if !has_usable_candidate(&sdp) {
                    self.bye_call(&call_id, 88, "INCOMPATIBLE_DESTINATION");
                    return;
                }
                let answer = answer_for(&sdp);
                match dest.as_str() {
                    "9196" => self.request(conn, "verto.answer", json!({"callID": call_id, "sdp": answer, "variables": {"Event-Name": "CHANNEL_DATA"}})),
                    "7000" => {
                        self.request(conn, "verto.media", json!({"callID": call_id, "sdp": answer, "variables": {}}));
                        self.request(conn, "verto.answer", json!({"callID": call_id, "variables": {}}));
                    }
                    "4860" => self.bye_call(&call_id, 17, "USER_BUSY"),
                    "4040" => self.bye_call(&call_id, 3, "NO_ROUTE_DESTINATION"),
                    _ => {}
                }
            }
            "verto.modify" => {
                let call_id = p["dialogParams"]["callID"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let answered = self
                    .inner
                    .lock()
                    .unwrap()
                    .calls
                    .get(&call_id)
                    .map(|c| c.answered);
                match (answered, p["action"].as_str()) {
                    (None, _) => reply(
                        json!({"jsonrpc":"2.0","id":id,"error":{"message":"CALL DOES NOT EXIST","code":-32002}}),
                    ),
                    (Some(false), _) => reply(
                        json!({"jsonrpc":"2.0","id":id,"error":{"message":"Cannot update a call that has not been answered.","code":-32002}}),
                    ),
                    (Some(true), Some("updateMedia")) => {
                        let offer = p["sdp"].as_str().unwrap_or("");
                        if has_usable_candidate(offer) {
                            reply(
                                json!({"jsonrpc":"2.0","id":id,"result":{"callID":call_id,"action":"updateMedia","sdp":answer_for(offer),"sessid":sessid}}),
                            );
                        } else {
                            reply(
                                json!({"jsonrpc":"2.0","id":id,"error":{"message":"CODEC NEGOTIATION ERROR","code":-32002}}),
                            );
                        }
                    }
                    (Some(true), _) => reply(
                        json!({"jsonrpc":"2.0","id":id,"result":{"callID":call_id,"holdState":"active","sessid":sessid}}),
                    ),
                }
            }
            "verto.attach" => {
                let call_id = p["dialogParams"]["callID"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let known = self.inner.lock().unwrap().calls.contains_key(&call_id);
                if !known {
                    reply(
                        json!({"jsonrpc":"2.0","id":id,"error":{"message":"CALL DOES NOT EXIST","code":-32002}}),
                    );
                } else if !has_usable_candidate(p["sdp"].as_str().unwrap_or("")) {
                    // CODEC NEGOTIATION ERROR: the channel is hung up.
                    self.inner.lock().unwrap().calls.remove(&call_id);
                    reply(
                        json!({"jsonrpc":"2.0","id":id,"error":{"message":"CODEC NEGOTIATION ERROR","code":-32002}}),
                    );
                } else {
                    reply(json!({"jsonrpc":"2.0","id":id,"result":{"sessid":sessid}}));
                }
            }
            "verto.info" => {
                let call_id = p["dialogParams"]["callID"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                reply(json!({"jsonrpc":"2.0","id":id,"result":{"message":"SENT","sessid":sessid}}));
                // FreeSWITCH fires DTMF events for the bot's own digits on the bot's leg.
                if let Some(d) = p["dtmf"].as_str() {
                    for c in d.chars() {
                        self.dtmf_event(&call_id, None, c);
                    }
                }
            }
            "verto.subscribe" => {
                let chans: Vec<Value> = match &p["eventChannel"] {
                    Value::Array(a) => a.clone(),
                    v => vec![v.clone()],
                };
                let mut i = self.inner.lock().unwrap();
                if i.fs_events {
                    if chans.iter().any(|c| c == "FSevent.dtmf") {
                        i.dtmf_subscribers.push(conn);
                    }
                    drop(i);
                    reply(
                        json!({"jsonrpc":"2.0","id":id,"result":{"subscribedChannels": chans, "sessid": sessid}}),
                    );
                } else {
                    drop(i);
                    reply(json!({"jsonrpc":"2.0","id":id,"error":{"unauthorizedChannels": chans}}));
                }
            }
            "verto.bye" => {
                let call_id = p["dialogParams"]["callID"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let known = self.inner.lock().unwrap().calls.remove(&call_id).is_some();
                if known {
                    reply(
                        json!({"jsonrpc":"2.0","id":id,"result":{"callID":call_id,"message":"CALL ENDED","causeCode":16,"cause":"NORMAL_CLEARING","sessid":sessid}}),
                    );
                } else {
                    reply(
                        json!({"jsonrpc":"2.0","id":id,"error":{"message":"CALL DOES NOT EXIST","code":-32002}}),
                    );
                }
            }
            _ => reply(err(
                -32601,
                "Invalid Method, Missing Method or Permission Denied",
            )),
        }
    }
}

/// FreeSWITCH's `verto.attach` offer after a reconnect: a new offer (`actpass`), the same
/// certificate fingerprint as its first answer, candidates for both components
/// (`reconnect_attach.jsonl`).
pub fn attach_offer() -> String {
    FS_ANSWER
        .replace("a=setup:active", "a=setup:actpass")
        .replace(
            "a=end-of-candidates",
            "a=candidate:9101603196 2 udp 2130706430 127.0.0.1 16458 typ host generation 0\r\na=end-of-candidates",
        )
}

/// FreeSWITCH's answer; like FreeSWITCH it negotiates `telephone-event` when the offer has
/// it (at the offer's 48 kHz payload type for opus, as seen with Chromium).
fn answer_for(offer: &str) -> String {
    let te = offer
        .lines()
        .find(|l| l.starts_with("a=rtpmap:") && l.contains("telephone-event/48000"))
        .and_then(|l| l.strip_prefix("a=rtpmap:"))
        .and_then(|l| l.split_whitespace().next());
    match te {
        Some(pt) => FS_ANSWER
            .replace("UDP/TLS/RTP/SAVPF 96\r\n", &format!("UDP/TLS/RTP/SAVPF 96 {pt}\r\n"))
            .replace(
                "a=rtpmap:96 opus/48000/2\r\n",
                &format!("a=rtpmap:96 opus/48000/2\r\na=rtpmap:{pt} telephone-event/48000\r\na=fmtp:{pt} 0-15\r\n"),
            ),
        None => FS_ANSWER.to_owned(),
    }
}

/// What FreeSWITCH's check_ice accepts: a UDP candidate with a literal IP address.
fn has_usable_candidate(sdp: &str) -> bool {
    sdp.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        l.starts_with("a=candidate:")
            && f.len() >= 8
            && f[2].eq_ignore_ascii_case("udp")
            && f[4].parse::<std::net::IpAddr>().is_ok()
    })
}

fn summary(v: &Value) -> String {
    let mut s = v.clone();
    if let Some(p) = s.get_mut("params").and_then(Value::as_object_mut) {
        if p.contains_key("sdp") {
            p.insert("sdp".into(), json!("..."));
        }
    }
    s.to_string()
}
