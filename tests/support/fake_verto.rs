//! A fake FreeSWITCH mod_verto peer that behaves like the real captures in
//! `/work/shared/fixtures/verto/` (copies of some in `tests/fixtures/verto/`), and the recording
//! [`tap`](FakeVerto::tap) in front of the real test switch.
//!
//! The suite runs against a real FreeSWITCH (`tests/support/switch.rs`). The fake
//! ([`start`](FakeVerto::start)) is kept only for what the real switch will not do on demand:
//! malformed or hostile frames ([`send_raw`](FakeVerto::send_raw)), server ids colliding with
//! the client's on purpose ([`ping`](FakeVerto::ping)), requests left without reply
//! (`silent`), scripted far-end events ([`far_dtmf`](FakeVerto::far_dtmf)), a refused
//! subscription ([`set_fs_events`](FakeVerto::set_fs_events) off), and a password or TLS setup
//! the test switch does not have. Every test that uses it says why.
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
//! | `ring` | nothing: rings until someone hangs up (not a real extension) |
//! | `silent` | never replies to `verto.invite` (the real switch always replies) |
//!
//! An offer without a usable candidate (UDP, literal IP) is hung up with 88
//! INCOMPATIBLE_DESTINATION right after `CALL CREATED` (`no_candidates.jsonl`), whatever the
//! destination. Every frame received is recorded, so tests can wait for one.
//!
//! Everything else follows the captures:
//!
//! | request or event | behaviour (capture) |
//! |---|---|
//! | answer SDP | FreeSWITCH's answer with the offer's opus payload type, the answered direction (sendrecv, sendonly → recvonly, recvonly → sendonly, inactive), `telephone-event` only when offered, at the offer's type (`invite_echo_9196.jsonl`) |
//! | socket drop | unanswered (ringing, early media) calls end, 27 DESTINATION_OUT_OF_ORDER; answered ones are detached for `detach-timeout-sec` ([`set_detach_timeout`](FakeVerto::set_detach_timeout), default 120 s), then dropped (`reconnect_attach.jsonl`) |
//! | `login` with a detached call's sessid | `verto.attach` re-offer (new ufrag/pwd, `a=fingerprint:sha-512`, `actpass`, component 1 and 2 candidates), then `verto.clientReady {reattached_sessions}` (`reconnect_attach.jsonl`) |
//! | `login` with a sessid open on another socket | the OLD socket gets `verto.punt {}` and is closed, then the login reply and the re-attach on the new one (`punt_attach.jsonl`); never unprompted |
//! | `verto.modify` hold/unhold/toggleHold | `result {callID, action, holdState}`; an unknown action reports the current state; unknown call → -32002 CALL DOES NOT EXIST (`fs_events_modify_hold.jsonl`) |
//! | `verto.modify` updateMedia | the answer to the new offer (as above); on an unanswered call -32002 "Cannot update a call that has not been answered." and a hang-up, 27 DESTINATION_OUT_OF_ORDER |
//! | `verto.subscribe` / `unsubscribe` | user 1000's channels (`demo`, `conference`, `presence`, own callIDs; `FSevent*` only with [`set_fs_events`](FakeVerto::set_fs_events)); mixed `subscribedChannels` / `alreadySubscribedChannels` / `unauthorizedChannels`, or `error {unauthorizedChannels}` when nothing is granted (`fs_events_subscribe.jsonl`, `fs_events_subscribe_disabled.jsonl`) |
//! | `FSevent.dtmf` | `verto.event` to every `FSevent.dtmf` or `FSevent` subscriber; far-end digits on a B leg with `Other-Leg-Unique-ID` = the call (`fs_events_dtmf_bridged.jsonl`) |
//!
//! Not modelled: the real switch's delays (about 250 ms for hold, 100 ms before
//! `verto.clientReady`), its event headers beyond the few tests read, and media.

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

/// FreeSWITCH's default `detach-timeout-sec` in the capture configuration.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(120);

/// A call as FreeSWITCH keeps it.
#[derive(Debug, Clone)]
struct FakeCall {
    conn: usize,
    sessid: String,
    answered: bool,
    /// The socket went away; waiting for a login with the same sessid (`detach_calls`).
    detached: bool,
    /// Bumped on every detach, so that a stale detach timer leaves a re-detached call alone.
    detach_gen: u64,
    /// `verto.modify` hold state.
    held: bool,
    /// The answer FreeSWITCH sent (the base of its `verto.attach` re-offer).
    answer: String,
    /// From the invite's dialogParams, echoed in `verto.attach` as FreeSWITCH does.
    caller_id_name: String,
    caller_id_number: String,
    destination: String,
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
    /// `enable-fs-events` and the channel permission: whether `FSevent*` channels are granted.
    fs_events: bool,
    /// connection → the event channels it subscribed to.
    subscriptions: HashMap<usize, Vec<String>>,
    /// How long a detached call waits for its sessid before FreeSWITCH hangs it up.
    detach_timeout: Duration,
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
        let what = format!("{what} from FreeSWITCH");
        self.wait_in(&what, timeout, pred, Self::server_frames)
            .await
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
        let (sink, mut stream) = ws.split();
        let (conn, tx, writer) = self.open_conn(sink);
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
                detach_timeout: DETACH_TIMEOUT,
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

    /// `attach_jsock`: another socket logged in with this connection's sessid. FreeSWITCH
    /// sends `verto.punt {}` and closes the old socket (1000), whose calls are detached
    /// (`punt_attach.jsonl`). Only the login path calls this: real FreeSWITCH never punts
    /// unprompted.
    fn punt(&self, conn: usize) {
        self.request(conn, "verto.punt", json!({}));
        let tx = self.inner.lock().unwrap().conns.remove(&conn);
        if let Some(tx) = tx {
            let _ = tx.send(Message::Close(None));
        }
        self.detach(conn);
    }

    /// `detach_calls` when a socket goes away: calls that were never answered (ringing or
    /// early media) are hung up with 27 DESTINATION_OUT_OF_ORDER (no frame: the socket is
    /// gone); answered ones wait for a login with the same sessid, for at most the detach
    /// timeout (`reconnect_attach.jsonl`; `detach-timeout-sec` 120 in the capture config).
    fn detach(&self, conn: usize) {
        let mut i = self.inner.lock().unwrap();
        i.calls
            .retain(|_, c| c.conn != conn || c.detached || c.answered);
        let timeout = i.detach_timeout;
        let mut timers = Vec::new();
        for (id, c) in i.calls.iter_mut() {
            if c.conn == conn && !c.detached {
                c.detached = true;
                c.detach_gen += 1;
                timers.push((id.clone(), c.detach_gen));
            }
        }
        drop(i);
        for (id, gen) in timers {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                let mut i = inner.lock().unwrap();
                if i.calls
                    .get(&id)
                    .is_some_and(|c| c.detached && c.detach_gen == gen)
                {
                    i.calls.remove(&id);
                }
            });
        }
    }

    /// Sets FreeSWITCH's `detach-timeout-sec` (default [`DETACH_TIMEOUT`]): a detached call
    /// not re-attached by then is hung up, and a later login with its sessid gets no
    /// `verto.attach` for it. Applies to calls detached from now on.
    pub fn set_detach_timeout(&self, timeout: Duration) {
        self.inner.lock().unwrap().detach_timeout = timeout;
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

    /// Grants (or refuses) `verto.subscribe` to `FSevent*` channels: `enable-fs-events` with
    /// `FSevent` in the user's `jsonrpc-allowed-event-channels`, as in `fs_events_subscribe.jsonl`
    /// (on) and `fs_events_subscribe_disabled.jsonl` (off, the default).
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

    /// A DTMF event to every connection subscribed to `FSevent.dtmf` or to the main channel
    /// `FSevent` (which gets every event). Nothing is filtered per user, as in
    /// `fs_events_subscribe.jsonl`.
    fn dtmf_event(&self, unique_id: &str, other_leg: Option<&str>, digit: char) {
        let subs: Vec<(usize, &str)> = {
            let i = self.inner.lock().unwrap();
            let mut v: Vec<(usize, &str)> = i
                .subscriptions
                .iter()
                .filter(|(c, _)| i.conns.contains_key(c))
                .flat_map(|(c, chans)| {
                    ["FSevent.dtmf", "FSevent"]
                        .into_iter()
                        .filter(|want| chans.iter().any(|h| h == want))
                        .map(|want| (*c, want))
                })
                .collect();
            v.sort();
            v
        };
        for (conn, subscribed) in subs {
            let mut data = json!({"Event-Name": "DTMF", "DTMF-Digit": digit.to_string(), "DTMF-Source": "APP", "Unique-ID": unique_id, "Channel-Call-UUID": unique_id});
            if let Some(o) = other_leg {
                data["Other-Leg-Unique-ID"] = json!(o);
                data["Other-Type"] = json!("originator");
                data["Channel-Call-UUID"] = json!(o);
                data["Call-Direction"] = json!("outbound");
            }
            self.request(conn, "verto.event", json!({"eventChannel": "FSevent.dtmf", "data": data, "eventSerno": 0, "subscribedChannel": subscribed}));
        }
    }

    /// `verto.subscribe` as user 1000 of the capture configuration (allowed channels
    /// `demo,conference,presence,FSevent`): `FSevent*` needs [`set_fs_events`](Self::set_fs_events);
    /// the caller's own callIDs are allowed; anything else is unauthorized. Granted: the lists
    /// that are not empty; nothing granted: `Err({unauthorizedChannels})`
    /// (`fs_events_subscribe.jsonl`, `fs_events_subscribe_disabled.jsonl`).
    fn subscribe(&self, conn: usize, sessid: &str, chans: Vec<String>) -> Result<Value, Value> {
        let mut i = self.inner.lock().unwrap();
        let fs_events = i.fs_events;
        let own_calls: Vec<String> = i
            .calls
            .iter()
            .filter(|(_, c)| c.sessid == sessid)
            .map(|(id, _)| id.clone())
            .collect();
        let have = i.subscriptions.entry(conn).or_default();
        let (mut subscribed, mut already, mut unauthorized) = (vec![], vec![], vec![]);
        for chan in chans {
            let prefix = chan.split('.').next().unwrap_or("");
            let allowed = match prefix {
                "demo" | "conference" | "presence" => true,
                "FSevent" => fs_events,
                _ => own_calls.contains(&chan),
            };
            if have.contains(&chan) {
                already.push(chan);
            } else if allowed {
                have.push(chan.clone());
                subscribed.push(chan);
            } else {
                unauthorized.push(chan);
            }
        }
        if subscribed.is_empty() && already.is_empty() {
            return Err(json!({ "unauthorizedChannels": unauthorized }));
        }
        let mut r = json!({});
        for (k, v) in [
            ("subscribedChannels", subscribed),
            ("unauthorizedChannels", unauthorized),
            ("alreadySubscribedChannels", already),
        ] {
            if !v.is_empty() {
                r[k] = json!(v);
            }
        }
        Ok(r)
    }

    /// `verto.unsubscribe`: `unsubscribedChannels` / `notSubscribedChannels`; an error with
    /// only `notSubscribedChannels` when none was subscribed (`fs_events_subscribe*.jsonl`).
    fn unsubscribe(&self, conn: usize, chans: Vec<String>) -> Result<Value, Value> {
        let mut i = self.inner.lock().unwrap();
        let have = i.subscriptions.entry(conn).or_default();
        let (mut gone, mut not) = (vec![], vec![]);
        for chan in chans {
            match have.iter().position(|h| *h == chan) {
                Some(at) => {
                    have.remove(at);
                    gone.push(chan);
                }
                None => not.push(chan),
            }
        }
        if gone.is_empty() {
            return Err(json!({ "notSubscribedChannels": not }));
        }
        let mut r = json!({ "unsubscribedChannels": gone });
        if !not.is_empty() {
            r["notSubscribedChannels"] = json!(not);
        }
        Ok(r)
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
        self.wait_in(what, timeout, pred, Self::frames).await
    }

    /// Waits for a frame matching `pred` in one direction's record (`list`).
    async fn wait_in(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
        list: fn(&Self) -> Vec<Frame>,
    ) -> Frame {
        let mut rx = self.count.subscribe();
        let fut = async {
            loop {
                if let Some(f) = list(self).into_iter().find(|f| pred(f)) {
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
                "timed out after {timeout:?} waiting for {what}; frames: {:#?}",
                list(self)
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

    /// Registers a new connection and starts its writer: what the fake or the switch sends
    /// to the bot goes through the returned sender.
    fn open_conn<K>(
        &self,
        mut sink: K,
    ) -> (
        usize,
        mpsc::UnboundedSender<Message>,
        tokio::task::JoinHandle<()>,
    )
    where
        K: futures_util::Sink<Message> + Unpin + Send + 'static,
    {
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
        (conn, tx, writer)
    }

    async fn serve<S>(&self, ws: tokio_tungstenite::WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, mut stream) = ws.split();
        let (conn, tx, writer) = self.open_conn(sink);
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
        {
            let mut i = self.inner.lock().unwrap();
            i.conns.remove(&conn);
            i.subscriptions.remove(&conn);
        }
        // detach_calls: unanswered calls die (27), answered ones wait for the same sessid.
        self.detach(conn);
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
                // attach_jsock: the same sessid on a new socket punts the old one, before the
                // login reply (punt_attach.jsonl).
                for old in older {
                    self.punt(old);
                }
                reply(
                    json!({"jsonrpc":"2.0","id":id,"result":{"message":"logged in","sessid":sessid}}),
                );
                // attach_calls: re-offer every detached call of this sessid, then clientReady.
                let reattach: Vec<(String, FakeCall)> = {
                    let mut i = self.inner.lock().unwrap();
                    let mut calls: Vec<(String, FakeCall)> = i
                        .calls
                        .iter_mut()
                        .filter(|(_, c)| c.detached && c.sessid == sessid)
                        .map(|(id, c)| {
                            c.conn = conn;
                            c.detached = false;
                            (id.clone(), c.clone())
                        })
                        .collect();
                    calls.sort_by(|a, b| a.0.cmp(&b.0));
                    calls
                };
                for (call_id, c) in &reattach {
                    self.request(
                        conn,
                        "verto.attach",
                        json!({
                            "callID": call_id,
                            "sdp": attach_offer(&c.answer),
                            "variables": {"Event-Name": "CHANNEL_DATA"},
                            "caller_id_name": c.caller_id_name,
                            "caller_id_number": c.caller_id_number,
                            "callee_id_name": "Outbound Call",
                            "callee_id_number": c.destination,
                            "display_direction": "inbound",
                        }),
                    );
                }
                let reattach: Vec<&String> = reattach.iter().map(|(id, _)| id).collect();
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
                let answer = answer_for(&sdp);
                let dp = &p["dialogParams"];
                self.inner.lock().unwrap().calls.insert(
                    call_id.clone(),
                    FakeCall {
                        conn,
                        sessid: sessid.clone(),
                        answered: answers,
                        detached: false,
                        detach_gen: 0,
                        held: false,
                        answer: answer.clone(),
                        caller_id_name: dp["caller_id_name"].as_str().unwrap_or("").to_owned(),
                        caller_id_number: dp["caller_id_number"].as_str().unwrap_or("").to_owned(),
                        destination: dest.clone(),
                    },
                );
                reply(
                    json!({"jsonrpc":"2.0","id":id,"result":{"message":"CALL CREATED","callID":call_id,"sessid":sessid}}),
                );
                if !has_usable_candidate(&sdp) {
                    self.bye_call(&call_id, 88, "INCOMPATIBLE_DESTINATION");
                    return;
                }
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
                // fs_events_modify_hold.jsonl: replies carry callID and action; hold state is
                // kept per call; an unknown action reports the current state.
                let call_id = p["dialogParams"]["callID"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let action = p["action"].as_str().unwrap_or("").to_owned();
                let modify_err = |message: &str| json!({"jsonrpc":"2.0","id":id,"error":{"callID":call_id,"action":action,"message":message,"code":-32002}});
                let state = self
                    .inner
                    .lock()
                    .unwrap()
                    .calls
                    .get(&call_id)
                    .map(|c| (c.answered, c.held));
                let Some((answered, held)) = state else {
                    reply(modify_err("CALL DOES NOT EXIST"));
                    return;
                };
                if action == "updateMedia" {
                    if !answered {
                        // FreeSWITCH refuses and hangs the channel up.
                        reply(modify_err(
                            "Cannot update a call that has not been answered.",
                        ));
                        self.bye_call(&call_id, 27, "DESTINATION_OUT_OF_ORDER");
                        return;
                    }
                    let offer = p["sdp"].as_str().unwrap_or("");
                    if has_usable_candidate(offer) {
                        let answer = answer_for(offer);
                        if let Some(c) = self.inner.lock().unwrap().calls.get_mut(&call_id) {
                            c.answer = answer.clone();
                        }
                        reply(
                            json!({"jsonrpc":"2.0","id":id,"result":{"callID":call_id,"action":action,"sdp":answer,"sessid":sessid}}),
                        );
                    } else {
                        reply(modify_err("CODEC NEGOTIATION ERROR"));
                    }
                    return;
                }
                let held = match action.as_str() {
                    "hold" => true,
                    "unhold" => false,
                    "toggleHold" => !held,
                    _ => held,
                };
                if let Some(c) = self.inner.lock().unwrap().calls.get_mut(&call_id) {
                    c.held = held;
                }
                let hold_state = if held { "held" } else { "active" };
                reply(
                    json!({"jsonrpc":"2.0","id":id,"result":{"callID":call_id,"action":action,"holdState":hold_state,"sessid":sessid}}),
                );
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
            "verto.subscribe" | "verto.unsubscribe" => {
                let chans: Vec<String> = match &p["eventChannel"] {
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|c| c.as_str())
                        .map(String::from)
                        .collect(),
                    v => v.as_str().map(String::from).into_iter().collect(),
                };
                let body = if method == "verto.subscribe" {
                    self.subscribe(conn, &sessid, chans)
                } else {
                    self.unsubscribe(conn, chans)
                };
                match body {
                    Ok(mut r) => {
                        r["sessid"] = json!(sessid);
                        reply(json!({"jsonrpc":"2.0","id":id,"result":r}));
                    }
                    // Nothing granted: an error with no code and no message.
                    Err(e) => reply(json!({"jsonrpc":"2.0","id":id,"error":e})),
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

/// The sha-512 fingerprint of the test switch's DTLS certificate, the same one whose sha-256
/// is in [`FS_ANSWER`] (`reconnect_attach.jsonl`, `punt_attach.jsonl`).
const FS_FINGERPRINT_SHA512: &str = "sha-512 E8:D2:B0:B5:09:F7:29:85:54:88:8D:47:31:71:4C:C9:3A:E7:4C:78:F3:1C:9D:C6:48:C6:37:0F:C2:5A:5B:B9:26:3E:5A:09:9C:0F:22:4A:30:C2:26:25:FF:AB:BC:A1:70:E1:76:61:1E:C8:96:97:7A:65:30:F5:33:FD:1B:60";

/// Fresh random letters and digits, as FreeSWITCH makes ICE credentials and msids.
fn fresh_token(len: usize) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() < len {
                out.push(ABC[*b as usize % ABC.len()] as char);
            }
        }
    }
    out
}

/// A fresh decimal number below `10^digits` (o= versions, candidate foundations).
fn fresh_number(digits: u32) -> u64 {
    let b = uuid::Uuid::new_v4().as_u128();
    (b % 10u128.pow(digits)) as u64
}

/// FreeSWITCH's `verto.attach` offer after a reconnect, built from the call's `answer`: the
/// same port, codecs and SSRC, but a new `o=` version, new msid, NEW `ice-ufrag`/`ice-pwd`,
/// the certificate's `a=fingerprint:sha-512`, `a=setup:actpass`, and candidates for
/// components 1 and 2 under a new foundation (`reconnect_attach.jsonl`, `punt_attach.jsonl`).
pub fn attach_offer(answer: &str) -> String {
    let o = fresh_number(9) + 1_000_000_000;
    let msid = fresh_token(32);
    let old_msid = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=msid-semantic: WMS "))
        .unwrap_or("")
        .to_owned();
    let foundation = fresh_number(10);
    let cname = fresh_token(16);
    let mut out = Vec::new();
    for l in answer.split("\r\n").filter(|l| !l.is_empty()) {
        if l.starts_with("o=") {
            out.push(format!("o=FreeSWITCH {o} {} IN IP4 127.0.0.1", o + 1));
        } else if l.starts_with("a=fingerprint:") {
            out.push(format!("a=fingerprint:{FS_FINGERPRINT_SHA512}"));
        } else if matches!(l, "a=sendonly" | "a=recvonly" | "a=inactive") {
            // The captures re-offer sendrecv; the fake does not model a held call's re-offer.
            out.push("a=sendrecv".into());
        } else if l == "a=setup:active" {
            out.push("a=setup:actpass".into());
        } else if l.starts_with("a=ice-ufrag:") {
            out.push(format!("a=ice-ufrag:{}", fresh_token(16)));
        } else if l.starts_with("a=ice-pwd:") {
            out.push(format!("a=ice-pwd:{}", fresh_token(24)));
        } else if let Some(c) = l.strip_prefix("a=candidate:") {
            // "<foundation> 1 udp 2130706431 <ip> <port> typ host generation 0"
            let f: Vec<&str> = c.split_whitespace().collect();
            if f.len() >= 6 && f[1] == "1" {
                let (ip, port) = (f[4], f[5]);
                out.push(format!(
                    "a=candidate:{foundation} 1 udp 2130706431 {ip} {port} typ host generation 0"
                ));
                out.push(format!(
                    "a=candidate:{foundation} 2 udp 2130706430 {ip} {port} typ host generation 0"
                ));
            }
        } else if l.starts_with("a=ssrc:") && l.contains(" cname:") {
            let ssrc = l.split_whitespace().next().unwrap_or("a=ssrc:0");
            out.push(format!("{ssrc} cname:{cname}"));
        } else if !old_msid.is_empty() && l.contains(&old_msid) {
            out.push(l.replace(&old_msid, &msid));
        } else {
            out.push(l.to_owned());
        }
    }
    out.join("\r\n") + "\r\n"
}

/// The direction FreeSWITCH answers an offer with: sendrecv → sendrecv, sendonly →
/// recvonly, recvonly → sendonly, inactive → inactive (the first direction attribute wins).
fn answer_direction(offer: &str) -> &'static str {
    offer
        .lines()
        .map(str::trim_end)
        .find_map(|l| match l {
            "a=sendrecv" => Some("sendrecv"),
            "a=sendonly" => Some("recvonly"),
            "a=recvonly" => Some("sendonly"),
            "a=inactive" => Some("inactive"),
            _ => None,
        })
        .unwrap_or("sendrecv")
}

/// FreeSWITCH's answer to `offer` (`invite_echo_9196.jsonl`): opus at the OFFER's payload type
/// (96 if the offer has no opus: the fake knows no other codec), the direction answered as
/// FreeSWITCH does, and `telephone-event` only when offered, at the offer's payload type (the
/// 48 kHz one, matching opus, when there are several).
fn answer_for(offer: &str) -> String {
    let rtpmap = |codec: &str| -> Vec<String> {
        offer
            .lines()
            .filter_map(|l| l.strip_prefix("a=rtpmap:"))
            .filter_map(|l| {
                let (pt, enc) = l.trim_end().split_once(' ')?;
                enc.to_ascii_lowercase()
                    .starts_with(codec)
                    .then(|| (pt.to_owned(), enc.to_owned()))
            })
            .map(|(pt, enc)| format!("{pt} {enc}"))
            .collect()
    };
    let opus = rtpmap("opus/48000")
        .first()
        .and_then(|l| l.split(' ').next().map(String::from))
        .unwrap_or_else(|| "96".into());
    let tes = rtpmap("telephone-event/");
    let te = tes
        .iter()
        .find(|l| l.ends_with("/48000"))
        .or(tes.first())
        .and_then(|l| l.split_once(' '));
    let (pts, te_lines) = match te {
        Some((pt, enc)) => (
            format!("{opus} {pt}"),
            format!("a=rtpmap:{pt} {enc}\r\na=fmtp:{pt} 0-15\r\n"),
        ),
        None => (opus.clone(), String::new()),
    };
    FS_ANSWER
        .replace(
            "UDP/TLS/RTP/SAVPF 96\r\n",
            &format!("UDP/TLS/RTP/SAVPF {pts}\r\n"),
        )
        .replace(
            "a=rtpmap:96 opus/48000/2\r\n",
            &format!("a=rtpmap:{opus} opus/48000/2\r\n"),
        )
        .replace(
            "a=fmtp:96 useinbandfec=1; minptime=10; maxptime=40\r\n",
            &format!("a=fmtp:{opus} useinbandfec=1; minptime=10; maxptime=40\r\n{te_lines}"),
        )
        .replace(
            "a=sendrecv\r\n",
            &format!("a={}\r\n", answer_direction(offer)),
        )
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
