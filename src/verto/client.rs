//! The verto connection actor.
//!
//! One task owns the WebSocket, the request-id counter and the map of pending requests, so a
//! pending entry can be inserted right after a successful send and no reply can race it. Every
//! pending request ends: on its reply, on its own deadline, or with [`VertoError::Disconnected`]
//! when the socket goes away. The actor reconnects with backoff and logs in again with the same
//! `sessid`, which is what lets FreeSWITCH re-offer answered calls (`verto.attach`).
//!
//! Keepalive is a `verto.ping` request: FreeSWITCH answers WebSocket ping frames with an error
//! frame and never a pong (`ping_with_ws_keepalive.jsonl`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, trace, warn, Instrument};

use super::messages::{Bye, Dialog, FsDtmf, IncomingCall, Request, DTMF_CHANNEL};
use super::rpc::{self, Incoming, RpcError};
use crate::backoff::Backoff;
use crate::chain::Chain;
use crate::config::{Secret, VertoConfig};

/// A cause from another library, kept whole for the log's error chain.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the verto layer.
#[derive(Debug, thiserror::Error)]
pub enum VertoError {
    /// Connecting, the TLS handshake or the WebSocket upgrade failed.
    #[error("cannot reach FreeSWITCH {url}")]
    Connect {
        /// The configured `verto.url`.
        url: String,
        /// What tungstenite saw.
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
    /// `verto.ca_file` cannot be used.
    #[error("verto.ca_file {path}")]
    CaFile {
        /// The configured file.
        path: std::path::PathBuf,
        /// Why it cannot be used.
        #[source]
        source: Cause,
    },
    /// The TLS client could not be set up.
    #[error("cannot set up TLS")]
    Tls(#[source] Cause),
    /// FreeSWITCH answered with an error object.
    #[error("FreeSWITCH error: {0}")]
    Rpc(RpcError),
    /// No reply within the request timeout.
    #[error("no reply from FreeSWITCH within {0:?}")]
    Timeout(Duration),
    /// Not connected, or the connection dropped before the reply.
    #[error("not connected to FreeSWITCH")]
    Disconnected,
}

/// What FreeSWITCH tells us, routed to the call layer by `callID`.
#[derive(Debug, Clone, PartialEq)]
pub enum VertoEvent {
    /// Logged in (again). Which calls FreeSWITCH kept comes later, in [`VertoEvent::Ready`].
    /// (Braces without fields keep `Connected { .. }` patterns in callers valid.)
    Connected {},
    /// The socket is gone; requests fail until `Connected`.
    Disconnected,
    /// Early media: FreeSWITCH's answer SDP before the answer.
    Media {
        /// The verto `callID`.
        call_id: String,
        /// FreeSWITCH's SDP.
        sdp: String,
    },
    /// FreeSWITCH answered; `sdp` is absent when `verto.media` carried it.
    Answer {
        /// The verto `callID`.
        call_id: String,
        /// FreeSWITCH's SDP, if any.
        sdp: Option<String>,
    },
    /// FreeSWITCH hung up.
    Bye {
        /// The verto `callID`.
        call_id: String,
        /// Numeric cause (Q.850 or FreeSWITCH-specific).
        cause_code: Option<i64>,
        /// Cause name.
        cause: Option<String>,
    },
    /// A new offer for a call (after a reconnect, or a media renegotiation).
    Attach {
        /// The verto `callID`.
        call_id: String,
        /// FreeSWITCH's offer.
        sdp: String,
    },
    /// FreeSWITCH offers us a call (server `verto.invite`).
    Invite(Box<IncomingCall>),
    /// Another connection took over our session.
    Punted,
    /// `verto.clientReady` after a login: the calls FreeSWITCH kept and re-offered.
    Ready {
        /// `reattached_sessions`.
        reattached: Vec<String>,
    },
    /// A digit from the subscribed `FSevent.dtmf` channel.
    Dtmf(FsDtmf),
    /// `verto.event` from another subscribed event channel.
    Event {
        /// `eventChannel`, e.g. `FSevent.dtmf`.
        channel: String,
        /// `data`: for FreeSWITCH events, a flat object of header strings.
        data: Value,
    },
    /// Any other server request, acknowledged and passed on for logging.
    Other {
        /// The method.
        method: String,
        /// The `callID`, when there is one.
        call_id: Option<String>,
    },
}

/// A verto event and when the frame that carried it was read: the layers above time what
/// they do with it from there (the bridge's hop metrics), not from when they got to it.
#[derive(Debug)]
pub struct Received {
    /// When the WebSocket frame was read.
    pub at: Instant,
    /// What it said.
    pub event: VertoEvent,
}

/// Told the instant a request's frame was written to the socket (the caller's hop metrics).
type Written = Box<dyn FnOnce(Instant) + Send>;

enum Command {
    Request {
        method: String,
        params: Value,
        reply: oneshot::Sender<Result<Value, VertoError>>,
        written: Option<Written>,
    },
}

/// A cheap handle for making requests.
#[derive(Clone)]
pub struct VertoHandle {
    tx: mpsc::Sender<Command>,
    timeout: Duration,
}

/// A request as an in-process FreeSWITCH sees it (unit tests on a paused clock).
#[cfg(test)]
pub struct FakeRequest {
    /// The method.
    pub method: String,
    /// Its params.
    pub params: Value,
    /// Where the reply goes.
    pub reply: oneshot::Sender<Result<Value, VertoError>>,
}

impl VertoHandle {
    /// A handle whose requests come out of the receiver instead of a WebSocket, for unit
    /// tests that play FreeSWITCH on tokio's paused clock.
    #[cfg(test)]
    pub fn faked(timeout: Duration) -> (Self, mpsc::Receiver<FakeRequest>) {
        let (tx, mut rx) = mpsc::channel::<Command>(64);
        let (out_tx, out_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(Command::Request {
                method,
                params,
                reply,
                written,
            }) = rx.recv().await
            {
                // The frame counts as written when the fake switch has it.
                if let Some(w) = written {
                    w(Instant::now());
                }
                let r = FakeRequest {
                    method,
                    params,
                    reply,
                };
                if out_tx.send(r).await.is_err() {
                    break;
                }
            }
        });
        (Self { tx, timeout }, out_rx)
    }

    /// Sends one request and waits for its reply.
    pub async fn request(&self, method: &str, params: Value) -> Result<Value, VertoError> {
        self.request_noting(method, params, None).await
    }

    /// Sends one typed request and waits for its reply; `written` is called with the instant
    /// its frame went out (not if it never did).
    pub async fn send_noting<R: Request>(
        &self,
        request: &R,
        written: impl FnOnce(Instant) + Send + 'static,
    ) -> Result<Value, VertoError> {
        let params = serde_json::to_value(request).unwrap_or_default();
        self.request_noting(R::METHOD, params, Some(Box::new(written)))
            .await
    }

    async fn request_noting(
        &self,
        method: &str,
        params: Value,
        written: Option<Written>,
    ) -> Result<Value, VertoError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Request {
                method: method.to_owned(),
                params,
                reply,
                written,
            })
            .await
            .map_err(|_| VertoError::Disconnected)?;
        // The actor enforces the deadline; this outer bound only guards against a stuck actor.
        match tokio::time::timeout(self.timeout + Duration::from_secs(2), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(VertoError::Disconnected),
            Err(_) => Err(VertoError::Timeout(self.timeout)),
        }
    }

    /// Sends one typed request and waits for its reply.
    pub async fn send<R: Request>(&self, request: &R) -> Result<Value, VertoError> {
        // A typed request always serializes; an object is what mod_verto expects.
        let params = serde_json::to_value(request).unwrap_or_default();
        self.request(R::METHOD, params).await
    }

    /// `verto.invite` with hand-made `dialogParams` (tests and tools; the bridge sends a typed
    /// [`Invite`](super::messages::Invite)). Ok means FreeSWITCH created the channel.
    pub async fn invite(&self, sdp: &str, dialog_params: Value) -> Result<Value, VertoError> {
        self.request(
            "verto.invite",
            json!({"sdp": sdp, "dialogParams": dialog_params}),
        )
        .await
    }

    /// `verto.bye`: hangs the call up with this cause.
    pub async fn bye(&self, call_id: &str, cause: super::Cause) -> Result<Value, VertoError> {
        self.send(&Bye {
            dialog: Dialog::new(call_id),
            cause,
        })
        .await
    }
}

struct Pending {
    method: String,
    deadline: Instant,
    reply: Option<oneshot::Sender<Result<Value, VertoError>>>,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Starts the actor. Events go to `events`; the task ends when `cancel` fires. (Tests and
/// tools; the bridge uses [`spawn_received`], which keeps when each frame was read.)
pub fn spawn(
    cfg: &VertoConfig,
    sessid: String,
    events: mpsc::Sender<VertoEvent>,
    cancel: CancellationToken,
) -> Result<(VertoHandle, tokio::task::JoinHandle<()>), VertoError> {
    let (tx, mut rx) = mpsc::channel::<Received>(256);
    let started = spawn_received(cfg, sessid, tx, cancel)?;
    tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            if events.send(r.event).await.is_err() {
                break;
            }
        }
    });
    Ok(started)
}

/// Starts the actor. Events go to `events` with the instant their frame was read; the task
/// ends when `cancel` fires.
pub fn spawn_received(
    cfg: &VertoConfig,
    sessid: String,
    events: mpsc::Sender<Received>,
    cancel: CancellationToken,
) -> Result<(VertoHandle, tokio::task::JoinHandle<()>), VertoError> {
    let tls = if cfg.tls_insecure_skip_verify {
        error!("verto.tls_insecure_skip_verify is set: FreeSWITCH's TLS certificate is NOT verified, so anyone on the network path can impersonate it and read the verto password. Use verto.ca_file instead in production");
        insecure_tls_config()?
    } else {
        tls_config(cfg.ca_file.as_deref())?
    };
    let (tx, rx) = mpsc::channel(256);
    let timeout = Duration::from_secs(cfg.request_timeout_secs);
    let actor = Actor {
        url: cfg.url.clone(),
        login: cfg.login.clone(),
        password: cfg.password.clone().unwrap_or_default(),
        sessid,
        timeout,
        keepalive: Duration::from_secs(cfg.keepalive_secs),
        reconnect_max: Duration::from_secs(cfg.reconnect_max_secs),
        tls,
        events,
        rx,
        next_id: 1,
        pending: HashMap::new(),
        punts: Default::default(),
        up_since: None,
    };
    let span = tracing::info_span!("verto", url = %cfg.url);
    let task = tokio::spawn(actor.run(cancel).instrument(span));
    Ok((VertoHandle { tx, timeout }, task))
}

/// Verifies FreeSWITCH's certificate against the system roots plus `ca_file`.
///
/// A certificate in `ca_file` that the server presents *as is* is also accepted (pinning).
/// FreeSWITCH's wss listener usually runs on a self-signed certificate made by
/// `openssl req -x509`, which is marked as a CA, and WebPKI refuses a CA certificate as the
/// server's own (`CaUsedAsEndEntity`). An exact match of the configured bytes, with the
/// handshake signed by its key, is at least as strong as a chain to it.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, VertoError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    let mut pinned = Vec::new();
    if let Some(path) = ca_file {
        let bad = |source: Cause| VertoError::CaFile {
            path: path.to_owned(),
            source,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.into()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| bad(e.into()))?;
            // A CA-flagged self-signed certificate is still a valid anchor for its own chain.
            roots.add(cert.clone()).map_err(|e| bad(e.into()))?;
            pinned.push(cert);
        }
        if pinned.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| VertoError::Tls(e.into()))?;
    let verifier = PinnedOrWebPki {
        webpki,
        pinned,
        provider: provider.clone(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| VertoError::Tls(e.into()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// WebPKI verification, except that a server certificate equal to one of `pinned` passes.
#[derive(Debug)]
struct PinnedOrWebPki {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<rustls::pki_types::CertificateDer<'static>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            debug!("FreeSWITCH presented the pinned certificate from ca_file");
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config that accepts any server certificate (signatures are still checked, so
/// the handshake itself stays well-formed).
fn insecure_tls_config() -> Result<Arc<rustls::ClientConfig>, VertoError> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| VertoError::Tls(e.into()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Opens the WebSocket, TLS included, within `timeout`.
async fn connect(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Ws, VertoError> {
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let fut = tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector));
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(source)) => Err(VertoError::Connect {
            url: url.to_owned(),
            source,
        }),
        Err(_) => Err(VertoError::Timeout(timeout)),
    }
}

/// The first reconnect wait: short, because most drops are a FreeSWITCH reload.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);

/// A session up at least this long that is lost is reconnected at once: every answered call
/// is without audio until FreeSWITCH re-offers it, and a drop after a stable session is a
/// one-off (a reload, a network blip) more often than the start of a flapping link, which the
/// backoff still slows down.
const STABLE_SESSION: Duration = Duration::from_secs(2);

/// The wait before reconnecting after a session that was logged in for `up_for` (`None`: not
/// logged in, or punted).
fn reconnect_wait(up_for: Option<Duration>, backoff: &mut Backoff) -> Duration {
    if up_for.is_some_and(|d| d >= STABLE_SESSION) {
        Duration::ZERO
    } else {
        backoff.next_wait()
    }
}

struct Actor {
    url: String,
    login: String,
    password: Secret,
    sessid: String,
    timeout: Duration,
    keepalive: Duration,
    reconnect_max: Duration,
    tls: Arc<rustls::ClientConfig>,
    events: mpsc::Sender<Received>,
    rx: mpsc::Receiver<Command>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    punts: std::collections::VecDeque<Instant>,
    /// When the current session's login was accepted (none after a punt).
    up_since: Option<Instant>,
}

/// Why a connection ended.
enum End {
    Cancelled,
    Lost(String),
}

impl Actor {
    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, self.reconnect_max);
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.connect() => r,
            };
            let ws = match outcome {
                Ok(ws) => ws,
                Err(e) => {
                    let wait = backoff.next_wait();
                    warn!(error = %Chain(&e), retry_in = ?wait, "cannot connect to FreeSWITCH");
                    if !self.wait(wait, &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            match self.session(ws, &cancel, &mut backoff).await {
                End::Cancelled => {
                    self.fail_pending();
                    return;
                }
                End::Lost(why) => {
                    self.fail_pending();
                    self.emit(Instant::now(), VertoEvent::Disconnected).await;
                    let up_for = self.up_since.take().map(|t| t.elapsed());
                    let wait = reconnect_wait(up_for, &mut backoff);
                    warn!(reason = %why, retry_in = ?wait, "verto connection lost; reconnecting");
                    if !self.wait(wait, &cancel).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps while failing requests that arrive meanwhile. False when cancelled.
    async fn wait(&mut self, d: Duration, cancel: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = &mut sleep => return true,
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Request { reply, method, .. }) => {
                        debug!(%method, "request while disconnected");
                        let _ = reply.send(Err(VertoError::Disconnected));
                    }
                    None => return false,
                }
            }
        }
    }

    async fn connect(&self) -> Result<Ws, VertoError> {
        connect(&self.url, self.tls.clone(), self.timeout).await
    }

    async fn emit(&self, at: Instant, event: VertoEvent) {
        let _ = self.events.send(Received { at, event }).await;
    }

    fn fail_pending(&mut self) {
        for (_, p) in self.pending.drain() {
            if let Some(r) = p.reply {
                let _ = r.send(Err(VertoError::Disconnected));
            }
        }
    }

    async fn send(&mut self, ws: &mut Ws, frame: &Value) -> Result<(), String> {
        trace!(frame = %rpc::redacted(frame), "verto send");
        ws.send(Message::text(frame.to_string()))
            .await
            .map_err(|e| Chain(&e).to_string())
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// One connection, from the login to the end. Nothing but the login is sent until
    /// FreeSWITCH accepts it, so no request can reach an unauthenticated socket.
    async fn session(&mut self, ws: Ws, cancel: &CancellationToken, backoff: &mut Backoff) -> End {
        let mut conn = match self.login(ws).await {
            Ok(conn) => conn,
            Err(end) => return end,
        };
        loop {
            let due = self.next_due(&conn);
            let step = tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = conn.ws.close(None).await;
                    Err(End::Cancelled)
                }
                msg = conn.ws.next() => self.on_frame(&mut conn, msg, backoff).await,
                cmd = self.rx.recv(), if conn.logged_in => self.on_command(&mut conn, cmd).await,
                _ = tokio::time::sleep_until(due) => self.on_tick(&mut conn).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Sends the login; its pending entry has no reply channel, so a login that times out
    /// ends the connection instead of failing a caller.
    async fn login(&mut self, mut ws: Ws) -> Result<Conn, End> {
        let login_id = self.alloc_id();
        let frame = rpc::request(
            login_id,
            "login",
            json!({
                "login": self.login,
                "passwd": self.password.expose(),
                "loginParams": {},
                "userVariables": {},
                "sessid": self.sessid,
            }),
        );
        if let Err(e) = self.send(&mut ws, &frame).await {
            return Err(End::Lost(e));
        }
        self.pending.insert(
            login_id,
            Pending {
                method: "login".into(),
                deadline: Instant::now() + self.timeout,
                reply: None,
            },
        );
        Ok(Conn {
            ws,
            login_id,
            logged_in: false,
            ping: None,
            last_ping: Instant::now(),
        })
    }

    /// One WebSocket frame may carry several verto messages; each is handled in order and
    /// the first one that ends the connection stops the rest.
    async fn on_frame(
        &mut self,
        conn: &mut Conn,
        msg: Option<Result<Message, tungstenite::Error>>,
        backoff: &mut Backoff,
    ) -> Result<(), End> {
        let at = Instant::now();
        let Some(text) = frame_text(msg)? else {
            return Ok(());
        };
        trace!(frame = %text, "verto recv");
        for item in rpc::parse_frame(&text) {
            match item {
                Err(e) => warn!(error = %e, "ignoring verto frame"),
                Ok(Incoming::Response { id, outcome }) => {
                    self.on_response(conn, id, outcome, backoff).await?;
                }
                Ok(Incoming::Request { id, method, params }) => {
                    self.on_request(conn, (id, at), method, params, backoff)
                        .await?;
                }
                Ok(Incoming::Notification { method, .. }) => {
                    debug!(%method, "verto notification ignored");
                }
            }
        }
        Ok(())
    }

    /// The login reply and the keepalive reply are ours; every other reply goes to the
    /// request that waits for it.
    async fn on_response(
        &mut self,
        conn: &mut Conn,
        id: Option<u64>,
        outcome: Result<Value, RpcError>,
        backoff: &mut Backoff,
    ) -> Result<(), End> {
        if id == Some(conn.login_id) && !conn.logged_in {
            return self.on_login_reply(conn, outcome, backoff).await;
        }
        if let (Some(id), Some((pid, _))) = (id, conn.ping) {
            if id == pid {
                conn.ping = None;
                return Ok(());
            }
        }
        match id.and_then(|id| self.pending.remove(&id)) {
            Some(p) => {
                debug!(method = %p.method, ok = outcome.is_ok(), "verto reply");
                if let Some(r) = p.reply {
                    let _ = r.send(outcome.map_err(VertoError::Rpc));
                }
            }
            None => {
                warn!(?id, outcome = ?outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()), "verto reply to no pending request")
            }
        }
        Ok(())
    }

    /// Only an accepted login resets the backoff, so a connection that is refused every
    /// time never reconnects at full speed.
    async fn on_login_reply(
        &mut self,
        conn: &mut Conn,
        outcome: Result<Value, RpcError>,
        backoff: &mut Backoff,
    ) -> Result<(), End> {
        self.pending.remove(&conn.login_id);
        match outcome {
            Ok(_) => {
                conn.logged_in = true;
                self.up_since = Some(Instant::now());
                backoff.reset();
                info!(login = %self.login, "logged in to FreeSWITCH");
                self.emit(Instant::now(), VertoEvent::Connected {}).await;
                Ok(())
            }
            Err(e) => {
                error!(login = %self.login, error = %e, "FreeSWITCH refused the verto login; check verto.login and verto.password");
                // Do not hammer FreeSWITCH with a bad password.
                backoff.set_next(self.reconnect_max);
                let _ = conn.ws.close(None).await;
                Err(End::Lost("login refused".into()))
            }
        }
    }

    /// Every server request is acknowledged before it is acted on, as FreeSWITCH expects.
    async fn on_request(
        &mut self,
        conn: &mut Conn,
        (id, at): (Value, Instant),
        method: String,
        params: Value,
        backoff: &mut Backoff,
    ) -> Result<(), End> {
        if let Err(e) = self.send(&mut conn.ws, &rpc::ack(&id, &method)).await {
            return Err(End::Lost(e));
        }
        if method == "verto.punt" {
            return Err(self.on_punt(conn, backoff).await);
        }
        if let Some(ev) = to_event(&method, &params) {
            self.emit(at, ev).await;
        }
        Ok(())
    }

    /// A single punt is usually our own stale connection, so one quick reconnect is fine;
    /// repeated punts mean another client shares the session id, and reconnecting fast would
    /// only make the two fight.
    async fn on_punt(&mut self, conn: &mut Conn, backoff: &mut Backoff) -> End {
        let now = Instant::now();
        self.punts
            .retain(|t| now.duration_since(*t) < Duration::from_secs(600));
        self.punts.push_back(now);
        self.up_since = None;
        if self.punts.len() > 1 {
            error!(punts = self.punts.len(), "FreeSWITCH keeps punting this connection: another client logs in with the same verto login and session id. Make sure only one vertobot runs with this state_dir; backing off");
            backoff.set_next(self.reconnect_max);
        } else {
            warn!("FreeSWITCH punted this connection (another connection claimed our session id); reconnecting once");
            backoff.set_next(Duration::from_millis(200));
        }
        self.emit(Instant::now(), VertoEvent::Punted).await;
        let _ = conn.ws.close(None).await;
        End::Lost("punted".into())
    }

    /// Requests wait for the login, so none is sent on a socket FreeSWITCH has not accepted;
    /// the pending entry is made only after the send succeeded.
    async fn on_command(&mut self, conn: &mut Conn, cmd: Option<Command>) -> Result<(), End> {
        let Some(Command::Request {
            method,
            mut params,
            reply,
            written,
        }) = cmd
        else {
            let _ = conn.ws.close(None).await;
            return Err(End::Cancelled);
        };
        if let Value::Object(m) = &mut params {
            m.insert("sessid".into(), Value::String(self.sessid.clone()));
        }
        let id = self.alloc_id();
        let frame = rpc::request(id, &method, params);
        if let Err(e) = self.send(&mut conn.ws, &frame).await {
            let _ = reply.send(Err(VertoError::Disconnected));
            return Err(End::Lost(e));
        }
        if let Some(w) = written {
            w(Instant::now());
        }
        self.pending.insert(
            id,
            Pending {
                method,
                deadline: Instant::now() + self.timeout,
                reply: Some(reply),
            },
        );
        Ok(())
    }

    /// When the actor next has something to do on its own: the earliest request deadline, the
    /// outstanding ping's, or the next keepalive. It sleeps until then rather than ticking, so
    /// an idle bridge (however many calls it holds) wakes only for the keepalive.
    fn next_due(&self, conn: &Conn) -> Instant {
        let keepalive = match conn.ping {
            Some((_, sent)) => sent + self.timeout,
            // No pings before the login: its own deadline (in `pending`) is what is due.
            None if !conn.logged_in => Instant::now() + self.keepalive,
            None => conn.last_ping + self.keepalive,
        };
        self.pending
            .values()
            .map(|p| p.deadline)
            .fold(keepalive, Instant::min)
    }

    /// Deadlines and the keepalive share one wake-up, so both see the same `now`.
    async fn on_tick(&mut self, conn: &mut Conn) -> Result<(), End> {
        let now = Instant::now();
        self.expire_pending(now)?;
        self.keepalive(conn, now).await
    }

    /// A request without a reply channel is the login: its timeout ends the connection.
    fn expire_pending(&mut self, now: Instant) -> Result<(), End> {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                warn!(method = %p.method, "no reply from FreeSWITCH in time");
                match p.reply {
                    Some(r) => {
                        let _ = r.send(Err(VertoError::Timeout(self.timeout)));
                    }
                    None => return Err(End::Lost(format!("no reply to {}", p.method))),
                }
            }
        }
        Ok(())
    }

    /// At most one ping is outstanding; an unanswered one means the socket is dead even if
    /// TCP has not noticed yet.
    async fn keepalive(&mut self, conn: &mut Conn, now: Instant) -> Result<(), End> {
        if let Some((_, sent)) = conn.ping {
            if now.duration_since(sent) >= self.timeout {
                let _ = conn.ws.close(None).await;
                return Err(End::Lost("verto.ping unanswered".into()));
            }
        } else if conn.logged_in && now.duration_since(conn.last_ping) >= self.keepalive {
            let id = self.alloc_id();
            let frame = rpc::request(id, "verto.ping", json!({"sessid": self.sessid}));
            if let Err(e) = self.send(&mut conn.ws, &frame).await {
                return Err(End::Lost(e));
            }
            conn.ping = Some((id, now));
            conn.last_ping = now;
        }
        Ok(())
    }
}

/// One connection's socket and where its login and keepalive stand; it starts afresh on
/// every reconnect while the actor's pending map and punt history carry over.
struct Conn {
    ws: Ws,
    login_id: u64,
    logged_in: bool,
    /// The outstanding `verto.ping`: its id and when it was sent.
    ping: Option<(u64, Instant)>,
    last_ping: Instant,
}

/// The text of a frame, `None` for frames that carry no verto message, or how the
/// connection ended.
fn frame_text(msg: Option<Result<Message, tungstenite::Error>>) -> Result<Option<String>, End> {
    match msg {
        None => Err(End::Lost("socket closed".into())),
        Some(Err(e)) => Err(End::Lost(Chain(&e).to_string())),
        Some(Ok(Message::Text(t))) => Ok(Some(t.to_string())),
        Some(Ok(Message::Close(f))) => Err(End::Lost(format!("closed by FreeSWITCH ({f:?})"))),
        Some(Ok(Message::Binary(_))) => {
            warn!("ignoring binary frame from FreeSWITCH");
            Ok(None)
        }
        Some(Ok(_)) => Ok(None),
    }
}

/// Maps a server request to an event for the call layer.
fn to_event(method: &str, p: &Value) -> Option<VertoEvent> {
    let call_id = p.get("callID").and_then(Value::as_str).map(str::to_owned);
    let sdp = p.get("sdp").and_then(Value::as_str).map(str::to_owned);
    match (method, call_id) {
        ("verto.ping", _) => None,
        ("verto.clientReady", _) => {
            let reattached: Vec<String> = p
                .get("reattached_sessions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            debug!(?reattached, "verto.clientReady");
            Some(VertoEvent::Ready { reattached })
        }
        ("verto.media", Some(call_id)) => match sdp {
            Some(sdp) => Some(VertoEvent::Media { call_id, sdp }),
            None => {
                warn!(%call_id, "verto.media without sdp ignored");
                None
            }
        },
        ("verto.answer", Some(call_id)) => Some(VertoEvent::Answer { call_id, sdp }),
        ("verto.bye", Some(call_id)) => Some(VertoEvent::Bye {
            call_id,
            cause_code: p.get("causeCode").and_then(|c| {
                c.as_i64()
                    .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
            }),
            cause: p.get("cause").and_then(Value::as_str).map(str::to_owned),
        }),
        ("verto.attach", Some(call_id)) => sdp.map(|sdp| VertoEvent::Attach { call_id, sdp }),
        ("verto.invite", Some(call_id)) => match IncomingCall::from_params(p) {
            Some(inc) => Some(VertoEvent::Invite(Box::new(inc))),
            None => {
                warn!(%call_id, "unreadable verto.invite ignored");
                None
            }
        },
        ("verto.event", _) => {
            let channel = p
                .get("eventChannel")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let data = p.get("data").cloned().unwrap_or(Value::Null);
            Some(if channel == DTMF_CHANNEL {
                VertoEvent::Dtmf(FsDtmf::from_data(&data))
            } else {
                VertoEvent::Event {
                    channel: channel.to_owned(),
                    data,
                }
            })
        }
        (m, call_id) => Some(VertoEvent::Other {
            method: m.to_owned(),
            call_id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost session that carried calls is reconnected at once; one that never logged in,
    /// was punted, or dropped right after its login waits its backoff.
    #[test]
    fn reconnect_waits_only_after_a_short_session() {
        let ms = Duration::from_millis;
        for (up_for, immediate) in [
            (Some(Duration::from_secs(600)), true),
            (Some(STABLE_SESSION), true),
            (Some(ms(1999)), false),
            (None, false),
        ] {
            let mut backoff = Backoff::new(INITIAL_BACKOFF, Duration::from_secs(30));
            let wait = reconnect_wait(up_for, &mut backoff);
            assert_eq!(wait.is_zero(), immediate, "{up_for:?}: {wait:?}");
            assert!(immediate || wait >= ms(400), "{up_for:?}: {wait:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_freeswitch_names_the_address_and_the_cause() {
        // A local port nothing listens on: connecting to it is refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("local address"));
        drop(listener);
        let tls = tls_config(None).expect("TLS");
        let Err(e) = connect(&url, tls, Duration::from_secs(5)).await else {
            panic!("nothing listens at {url}");
        };
        let line = Chain(&e).to_string();
        assert!(
            line.starts_with(&format!("cannot reach FreeSWITCH {url}: "))
                && line.to_lowercase().contains("refused"),
            "{line}"
        );
    }

    #[test]
    fn events_from_requests() {
        let e = to_event(
            "verto.bye",
            &json!({"callID":"c","causeCode":17,"cause":"USER_BUSY"}),
        );
        assert_eq!(
            e,
            Some(VertoEvent::Bye {
                call_id: "c".into(),
                cause_code: Some(17),
                cause: Some("USER_BUSY".into())
            })
        );
        let e = to_event("verto.answer", &json!({"callID":"c"}));
        assert_eq!(
            e,
            Some(VertoEvent::Answer {
                call_id: "c".into(),
                sdp: None
            })
        );
        assert_eq!(to_event("verto.media", &json!({"callID":"c"})), None);
        assert_eq!(to_event("verto.ping", &json!({"serno":1})), None);
        assert!(matches!(
            to_event("verto.display", &json!({"callID":"c"})),
            Some(VertoEvent::Other { .. })
        ));
        let dtmf = json!({"eventChannel": "FSevent.dtmf", "data": {"Unique-ID": "a",
            "Other-Leg-Unique-ID": "b", "DTMF-Digit": "7"}});
        assert_eq!(
            to_event("verto.event", &dtmf),
            Some(VertoEvent::Dtmf(FsDtmf {
                unique_id: "a".into(),
                other_leg_unique_id: "b".into(),
                digit: "7".into()
            }))
        );
        assert!(matches!(
            to_event(
                "verto.event",
                &json!({"eventChannel": "FSevent.api", "data": {}})
            ),
            Some(VertoEvent::Event { .. })
        ));
        // A bye without a callID cannot be routed; it is reported as "other".
        assert!(matches!(
            to_event("verto.bye", &json!({})),
            Some(VertoEvent::Other { call_id: None, .. })
        ));
    }
}
