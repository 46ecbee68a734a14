//! Prometheus metrics and the health endpoints, served on the opt-in `metrics.listen`.
//!
//! [`Metrics`] is a cheap cloneable handle. When `metrics.listen` is unset it is empty and
//! every method returns at once, so the layers call it unconditionally. It travels inside the
//! [`MatrixClient`](crate::matrix::MatrixClient) (which the sync loop, the bridge and every
//! call already hold); the bridge passes it each verto event ([`Metrics::verto_event`]).
//!
//! The hop histograms time what the bridge itself does between the two sides, from the
//! instant a sync response or a verto frame was read (carried with each input) to the instant
//! the frame or request it caused went out. The call machine stays sans-I/O: all timing is
//! taken here, in the call task and in the two clients.
//!
//! Counters are exposed in the OpenMetrics text format, where a counter's samples end in
//! `_total`: `bridge_matrix_event` is scraped as `bridge_matrix_event_total`, while the names
//! that already end in `_total` (`vertobot_calls_total` ...) are scraped exactly as named.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::call::machine::{Action, Call, Input, State};
use crate::matrix::events::{CallEvent, CallEventOut, EventKind};
use crate::verto::{Cause, VertoEvent};

type L1 = [(&'static str, &'static str); 1];
type HistogramFamily = Family<L1, Histogram, fn() -> Histogram>;
type L3 = [(&'static str, &'static str); 3];

/// The direction of calls from a Matrix caller to SIP.
pub const OUTBOUND: &str = "outbound";

/// The direction of calls from SIP (FreeSWITCH) to a Matrix user.
pub const INBOUND: &str = "inbound";

/// Buckets of `vertobot_call_setup_seconds`: candidate collection, dialling and ringing.
const SETUP_BUCKETS: [f64; 14] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0,
];

/// `hop` of `vertobot_hop_seconds`: a Matrix event's sync response read (or, for a new call,
/// its admission requests returned, if later) → the verto frame it caused written
/// (`verto.invite`, `verto.answer`, `verto.info`, `verto.bye` ...).
pub const MATRIX_TO_VERTO: &str = "matrix_to_verto";

/// `hop` of `vertobot_hop_seconds`: a verto frame read → the first Matrix send it caused
/// started (`verto.answer` → `m.call.answer`, `verto.invite` → `m.call.invite` ...).
pub const VERTO_TO_MATRIX: &str = "verto_to_matrix";

/// Buckets of the sub-second timings the bridge controls: 50 µs to 5 s.
const HOP_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.0, 5.0,
];

/// Buckets of `vertobot_candidate_wait_seconds`: dialled at once, after a marker, or after the
/// wait for more candidates.
const WAIT_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0,
];

fn hop_histogram() -> Histogram {
    Histogram::new(HOP_BUCKETS)
}

/// The metrics registry and the health state, or nothing when metrics are off.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Inner>>);

struct Inner {
    registry: Registry,
    matrix_event: Family<L1, Counter>,
    api_calls: Family<L1, Counter>,
    api_failed: Family<L1, Counter>,
    connected: Gauge,
    calls_active: Family<L1, Gauge>,
    calls_total: Family<L3, Counter>,
    setup: Histogram,
    verto_reconnects: Counter,
    reattached: Counter,
    sync_errors: Counter,
    send_retries: Counter,
    dtmf: Family<L1, Counter>,
    hop: HistogramFamily,
    admission: Histogram,
    candidate_wait: Histogram,
    candidates: Family<L1, Counter>,
    // Health.
    started: Instant,
    matrix_logged_in: AtomicBool,
    /// Milliseconds after `started` of the last successful sync, plus one (0: none yet).
    last_sync: AtomicU64,
    verto_logins: AtomicU64,
    sync_limit: Duration,
}

impl Metrics {
    /// A live registry. `sync_limit`: how old the last successful sync may be for
    /// `/health/ready` (the same limit as `vertobot --health`).
    pub fn new(sync_limit: Duration) -> Self {
        let mut r = Registry::default();
        let (matrix_event, api_calls, api_failed, sync_errors, send_retries) =
            register_matrix(&mut r);
        let (connected, verto_reconnects, reattached) = register_verto(&mut r);
        let (calls_active, calls_total, setup, dtmf) = register_calls(&mut r);
        let Timings {
            hop,
            admission,
            candidate_wait,
            candidates,
        } = register_timings(&mut r);
        Self(Some(Arc::new(Inner {
            hop,
            admission,
            candidate_wait,
            candidates,
            registry: r,
            matrix_event,
            api_calls,
            api_failed,
            connected,
            calls_active,
            calls_total,
            setup,
            verto_reconnects,
            reattached,
            sync_errors,
            send_retries,
            dtmf,
            started: Instant::now(),
            matrix_logged_in: AtomicBool::new(false),
            last_sync: AtomicU64::new(0),
            verto_logins: AtomicU64::new(0),
            sync_limit,
        })))
    }

    /// Off: every method is a no-op.
    pub fn disabled() -> Self {
        Self(None)
    }

    /// True when a registry is kept.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The OpenMetrics text of every metric (empty when off).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(m) = &self.0 {
            if let Err(e) = encode(&mut out, &m.registry) {
                warn!(error = %e, "cannot encode the metrics");
            }
        }
        out
    }

    /// A Matrix event handed to the bridge.
    pub fn matrix_event(&self, kind: &EventKind) {
        if let Some(m) = &self.0 {
            m.matrix_event
                .get_or_create(&[("event_type", event_type(kind))])
                .inc();
        }
    }

    /// One client-server request to `path` (below `/_matrix/client/v3`) and how it went.
    pub fn matrix_api(&self, path: &str, ok: bool) {
        if let Some(m) = &self.0 {
            let l = [("method", endpoint(path))];
            m.api_calls.get_or_create(&l).inc();
            if !ok {
                m.api_failed.get_or_create(&l).inc();
            }
        }
    }

    /// A Matrix event send is retried.
    pub fn send_retry(&self) {
        if let Some(m) = &self.0 {
            m.send_retries.inc();
        }
    }

    /// Logged in to Matrix (the access token works).
    pub fn matrix_logged_in(&self) {
        if let Some(m) = &self.0 {
            m.matrix_logged_in.store(true, Ordering::Relaxed);
        }
    }

    /// A `/sync` request succeeded.
    pub fn sync_ok(&self) {
        if let Some(m) = &self.0 {
            let ms = u64::try_from(m.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            m.last_sync.store(ms + 1, Ordering::Relaxed);
        }
    }

    /// A `/sync` request failed.
    pub fn sync_error(&self) {
        if let Some(m) = &self.0 {
            m.sync_errors.inc();
        }
    }

    /// The bridge refused an invite (access.allow, a limit, an unreadable invite), with the
    /// cause that says why.
    pub fn call_refused(&self, cause: Cause) {
        self.call_refused_in(OUTBOUND, cause);
    }

    /// The bridge refused a call of `direction` ([`OUTBOUND`] or [`INBOUND`]: a call from
    /// FreeSWITCH no route names a user for, or over a limit).
    pub fn call_refused_in(&self, direction: &'static str, cause: Cause) {
        self.call_finished(direction, "rejected", cause.name());
    }

    fn call_finished(&self, direction: &'static str, outcome: &'static str, cause: &'static str) {
        if let Some(m) = &self.0 {
            m.calls_total
                .get_or_create(&[
                    ("direction", direction),
                    ("outcome", outcome),
                    ("cause", cause),
                ])
                .inc();
        }
    }

    /// One hop ([`MATRIX_TO_VERTO`] or [`VERTO_TO_MATRIX`]) took `took`.
    pub fn hop(&self, hop: &'static str, took: Duration) {
        if let Some(m) = &self.0 {
            m.hop
                .get_or_create(&[("hop", hop)])
                .observe(took.as_secs_f64());
        }
    }

    /// A new call's room was checked with the homeserver (members, join rule) in `took`.
    pub fn admission(&self, took: Duration) {
        if let Some(m) = &self.0 {
            m.admission.observe(took.as_secs_f64());
        }
    }

    /// Keeps `bridge_connected` and `vertobot_verto_reconnects_total` (and readiness) up to
    /// date; the bridge passes every verto event.
    pub fn verto_event(&self, ev: &VertoEvent) {
        let Some(m) = &self.0 else { return };
        match ev {
            VertoEvent::Connected {} => {
                m.connected.set(1);
                if m.verto_logins.fetch_add(1, Ordering::Relaxed) > 0 {
                    m.verto_reconnects.inc();
                }
            }
            VertoEvent::Disconnected | VertoEvent::Punted => {
                m.connected.set(0);
            }
            _ => {}
        }
    }

    /// Whether the bridge can take calls: `Err` says why not.
    pub fn readiness(&self) -> Result<(), String> {
        let Some(m) = &self.0 else {
            return Err("metrics are off".into());
        };
        if !m.matrix_logged_in.load(Ordering::Relaxed) {
            return Err("not logged in to Matrix".into());
        }
        let last = m.last_sync.load(Ordering::Relaxed);
        if last == 0 {
            return Err("no successful sync yet".into());
        }
        let age = m
            .started
            .elapsed()
            .saturating_sub(Duration::from_millis(last - 1));
        if age > m.sync_limit {
            return Err(format!(
                "last successful sync {} s ago (limit {} s)",
                age.as_secs(),
                m.sync_limit.as_secs()
            ));
        }
        if m.connected.get() != 1 {
            return Err("not logged in to FreeSWITCH (verto)".into());
        }
        Ok(())
    }
}

/// The `fate` label of a candidate left out of the offer.
fn dropped_reason(why: &crate::sdp::Unusable) -> &'static str {
    use crate::sdp::Unusable;
    match why {
        Unusable::NotUdp(t) if t == "tcp" => "tcp",
        Unusable::NotUdp(_) => "not_udp",
        Unusable::Mdns(_) => "mdns",
        Unusable::HostName(_) => "hostname",
        Unusable::Malformed => "malformed",
        Unusable::NoSection { .. } => "no_section",
    }
}

/// The label of a Matrix event (a fixed set, so a remote user cannot grow the series).
fn event_type(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::Call(c) => match c {
            CallEvent::Invite(_) => "m.call.invite",
            CallEvent::Candidates(_) => "m.call.candidates",
            CallEvent::Answer(_) => "m.call.answer",
            CallEvent::SelectAnswer(_) => "m.call.select_answer",
            CallEvent::Hangup(_) => "m.call.hangup",
            CallEvent::Reject(_) => "m.call.reject",
            CallEvent::Negotiate(_) => "m.call.negotiate",
        },
        EventKind::Member { .. } => "m.room.member",
        EventKind::Message { .. } => "m.room.message",
        EventKind::Malformed { .. } => "malformed",
    }
}

/// The endpoint kind of a client-server path (room ids are percent-encoded, so `/` splits
/// only the path).
fn endpoint(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["login"] => "login",
        ["account", "whoami"] => "whoami",
        ["sync"] => "sync",
        ["directory", "room", ..] => "resolve_alias",
        ["rooms", _, "join"] => "join",
        ["rooms", _, "leave"] => "leave",
        ["rooms", _, "joined_members"] => "joined_members",
        ["rooms", _, "state", ..] => "room_state",
        ["rooms", _, "send", ..] => "send",
        ["keys", "upload"] => "keys_upload",
        ["keys", "query"] => "keys_query",
        ["keys", "claim"] => "keys_claim",
        ["keys", "device_signing", "upload"] => "keys_device_signing_upload",
        ["keys", "signatures", "upload"] => "keys_signatures_upload",
        ["sendToDevice", ..] => "send_to_device",
        _ => "other",
    }
}

/// Watches one call from its task: `vertobot_calls_active` while it lives, and its outcome,
/// setup time, reattachments and digits. Dropping it ends the call's accounting.
pub struct CallProbe {
    metrics: Metrics,
    direction: &'static str,
    start: Instant,
    recovered: bool,
    admitted: bool,
    answered: bool,
    detached: bool,
    caller_ended: bool,
    /// An outbound call still collecting candidates: its wait and their fates are not yet
    /// counted.
    collecting: bool,
    /// The `cause` label: the first hangup cause seen (see [`CallProbe::cause`]).
    cause: Option<&'static str>,
}

impl CallProbe {
    /// An outbound call starts (`recovered`: taken back after a restart, already counted
    /// then).
    pub fn new(metrics: &Metrics, recovered: bool) -> Self {
        Self::with_direction(metrics, recovered, OUTBOUND)
    }

    /// A call of `direction` ([`OUTBOUND`] or [`INBOUND`]) starts.
    pub fn with_direction(metrics: &Metrics, recovered: bool, direction: &'static str) -> Self {
        if let Some(m) = &metrics.0 {
            m.calls_active
                .get_or_create(&[("direction", direction)])
                .inc();
        }
        Self {
            metrics: metrics.clone(),
            direction,
            start: Instant::now(),
            recovered,
            admitted: false,
            answered: recovered,
            detached: false,
            caller_ended: false,
            collecting: !recovered && direction == OUTBOUND,
            cause: None,
        }
    }

    /// After each step of an outbound call: once it stops collecting candidates, the wait
    /// since `invited` (when the invite's sync response was read) and what became of the
    /// candidates: kept, or dropped and why. Counted when the bridge dialled, or gave up
    /// because none was usable; a call the caller ended first counts nothing.
    pub fn collected(&mut self, call: &Call, invited: tokio::time::Instant) {
        if !self.collecting || call.state() == State::Collecting {
            return;
        }
        self.collecting = false;
        let Some(m) = &self.metrics.0 else { return };
        let dialled = call.state() == State::Dialling;
        if dialled {
            m.candidate_wait.observe(invited.elapsed().as_secs_f64());
        }
        let Ok(merged) = crate::sdp::merge_candidates(&call.setup().offer, call.trickled()) else {
            return;
        };
        if !dialled && merged.usable > 0 {
            return;
        }
        let fate = |f: &'static str, n: usize| {
            m.candidates.get_or_create(&[("fate", f)]).inc_by(n as u64);
        };
        fate("kept", merged.usable);
        for (_, why) in &merged.dropped {
            fate(dropped_reason(why), 1);
        }
        fate("over_cap", call.ignored_candidates());
    }

    /// The machine's state after each step.
    pub fn state(&mut self, state: State) {
        self.admitted = true;
        let Some(m) = &self.metrics.0 else { return };
        match state {
            State::Answered if !self.answered => {
                self.answered = true;
                m.setup.observe(self.start.elapsed().as_secs_f64());
            }
            State::Answered if self.detached => {
                self.detached = false;
                m.reattached.inc();
            }
            State::Detached => self.detached = true,
            _ => {}
        }
    }

    /// An input, before the machine sees it.
    pub fn input(&mut self, input: &Input) {
        match input {
            Input::Hangup { .. } | Input::SelectAnswer { .. }
                if !self.answered && self.direction == OUTBOUND =>
            {
                self.caller_ended = true;
            }
            // An inbound call's caller is on FreeSWITCH's side.
            Input::Bye { .. } if !self.answered && self.direction == INBOUND => {
                self.caller_ended = true;
            }
            Input::FarDtmf { digit } => self.digits("from_sip", digit),
            _ => {}
        }
        self.cause_of_input(input);
    }

    /// FreeSWITCH's own cause, when it ended the call or refused the dial.
    fn cause_of_input(&mut self, input: &Input) {
        let name = |c: Option<Cause>| c.map_or("OTHER", Cause::name);
        let cause = match input {
            Input::Bye { cause_code, cause } => {
                match Cause::reported(*cause_code, cause.as_deref()) {
                    Some(c) => name(c),
                    None => return,
                }
            }
            Input::InviteResult(Err(f)) => match f.cause_code {
                Some(c) => name(Cause::from_code(c)),
                // No reply at all: the bridge hangs up with its own cause.
                None if f.timed_out => return,
                None => Cause::DestinationOutOfOrder.name(),
            },
            _ => return,
        };
        self.cause.get_or_insert(cause);
    }

    /// An action, before the task performs it.
    pub fn action(&mut self, action: &Action) {
        let cause = match action {
            Action::SendDtmf { digits, .. } => {
                self.digits("to_sip", digits);
                return;
            }
            Action::Bye { cause } => *cause,
            // A call that ends on the Matrix side alone: its reason as FreeSWITCH would see it.
            Action::Send(
                CallEventOut::Hangup { reason, .. } | CallEventOut::Reject { reason, .. },
            ) => crate::call::cause::matrix_to_verto(Some(reason), self.answered),
            _ => return,
        };
        self.cause.get_or_insert(cause.name());
    }

    /// The `cause` label: the FreeSWITCH hangup cause that ended the call, whichever side
    /// sent it (FreeSWITCH's `verto.bye` or dial error, or the bridge's `verto.bye`); for a
    /// call that ended before it reached FreeSWITCH, the cause its Matrix ending maps to.
    fn cause(&self, outcome: &str) -> &'static str {
        match (self.cause, outcome) {
            (Some(c), _) => c,
            (None, "rejected") => Cause::CallRejected.name(),
            (None, "caller_cancelled") => Cause::OriginatorCancel.name(),
            _ => Cause::NormalClearing.name(),
        }
    }

    fn digits(&self, direction: &'static str, digits: &str) {
        if let Some(m) = &self.metrics.0 {
            let n = digits
                .chars()
                .filter(|c| crate::config::is_dtmf_digit(*c) && !matches!(c, 'w' | 'W'))
                .count();
            m.dtmf
                .get_or_create(&[("direction", direction)])
                .inc_by(n as u64);
        }
    }

    fn outcome(&self) -> &'static str {
        if !self.admitted {
            "rejected"
        } else if self.answered {
            "answered"
        } else if self.caller_ended {
            "caller_cancelled"
        } else {
            "failed"
        }
    }
}

impl Drop for CallProbe {
    fn drop(&mut self) {
        let Some(m) = &self.metrics.0 else { return };
        m.calls_active
            .get_or_create(&[("direction", self.direction)])
            .dec();
        if !self.recovered {
            let outcome = self.outcome();
            self.metrics
                .call_finished(self.direction, outcome, self.cause(outcome));
        }
    }
}

/// Binds `listen` and serves `/metrics`, `/health/live` and `/health/ready` until `cancel`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    cancel: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(address = %listener.local_addr()?, "metrics and health endpoints listening");
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "metrics listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let metrics = metrics.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let resp = respond(&metrics, req.method(), req.uri().path());
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        debug!(%peer, error = %e, "metrics connection");
                    },
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            });
        }
    }))
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// The answer to one request.
fn respond(metrics: &Metrics, method: &hyper::Method, path: &str) -> hyper::Response<Body> {
    use hyper::StatusCode;
    let text = |status: StatusCode, body: String| {
        let mut r = hyper::Response::new(Body::from(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match path {
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/health/live" => text(StatusCode::OK, "live\n".into()),
        "/health/ready" => match metrics.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /health/live, /health/ready\n".into(),
        ),
    }
}

type C = Counter;
type CounterFamily = Family<L1, Counter>;

/// The Matrix side's metrics, in the names other Matrix bridges use.
fn register_matrix(r: &mut Registry) -> (CounterFamily, CounterFamily, CounterFamily, C, C) {
    let event = reg(
        r,
        "bridge_matrix_event",
        "Matrix events the bridge handled, by type",
        CounterFamily::default(),
    );
    let api = reg(
        r,
        "bridge_matrix_api_calls",
        "Client-server API requests, by endpoint",
        CounterFamily::default(),
    );
    let failed = reg(
        r,
        "bridge_matrix_api_calls_failed",
        "Client-server API requests that failed (network or error status), by endpoint",
        CounterFamily::default(),
    );
    let sync_errors = reg(
        r,
        "vertobot_sync_errors",
        "Failed /sync requests",
        C::default(),
    );
    let retries = reg(
        r,
        "vertobot_event_send_retries",
        "Matrix event sends retried after a transient error",
        C::default(),
    );
    (event, api, failed, sync_errors, retries)
}

/// The verto side's metrics.
fn register_verto(r: &mut Registry) -> (Gauge, C, C) {
    let connected = reg(
        r,
        "bridge_connected",
        "1 while the verto session is logged in to FreeSWITCH, else 0",
        Gauge::default(),
    );
    let reconnects = reg(
        r,
        "vertobot_verto_reconnects",
        "Verto logins after the first one (the connection was lost and re-established)",
        C::default(),
    );
    let reattached = reg(
        r,
        "vertobot_calls_reattached",
        "Answered calls taken back after a verto reconnect or a restart",
        C::default(),
    );
    (connected, reconnects, reattached)
}

/// The calls' metrics, with the usual series created so that they show from the first scrape.
fn register_calls(
    r: &mut Registry,
) -> (
    Family<L1, Gauge>,
    Family<L3, Counter>,
    Histogram,
    CounterFamily,
) {
    let active = reg(
        r,
        "vertobot_calls_active",
        "Calls in progress, by direction",
        Family::<L1, Gauge>::default(),
    );
    for d in [OUTBOUND, INBOUND] {
        drop(active.get_or_create(&[("direction", d)]));
    }
    // A counter's samples get `_total`: registered without it, scraped as named.
    let total = reg(
        r,
        "vertobot_calls",
        "Finished calls, by direction, outcome and hangup cause",
        Family::<L3, Counter>::default(),
    );

    let setup = reg(
        r,
        "vertobot_call_setup_seconds",
        "Seconds from the caller's invite to the bridge sending m.call.answer",
        Histogram::new(SETUP_BUCKETS),
    );
    let dtmf = reg(
        r,
        "vertobot_dtmf_digits",
        "DTMF digits: to_sip (sent to FreeSWITCH), from_sip (pressed by the far end)",
        CounterFamily::default(),
    );
    for d in ["to_sip", "from_sip"] {
        drop(dtmf.get_or_create(&[("direction", d)]));
    }
    (active, total, setup, dtmf)
}

/// The bridge's own timings and the candidates' fates.
struct Timings {
    hop: HistogramFamily,
    admission: Histogram,
    candidate_wait: Histogram,
    candidates: CounterFamily,
}

/// The timings, with their series created so that they show from the first scrape.
fn register_timings(r: &mut Registry) -> Timings {
    let hop = reg(
        r,
        "vertobot_hop_seconds",
        "The bridge's own time per hop: matrix_to_verto (sync response read to verto frame written), verto_to_matrix (verto frame read to Matrix send started)",
        HistogramFamily::new_with_constructor(hop_histogram),
    );
    for h in [MATRIX_TO_VERTO, VERTO_TO_MATRIX] {
        drop(hop.get_or_create(&[("hop", h)]));
    }
    let admission = reg(
        r,
        "vertobot_admission_seconds",
        "Homeserver requests that check a new call's room (members, join rule) before it may dial; part of matrix_to_verto for an invite",
        hop_histogram(),
    );
    let candidate_wait = reg(
        r,
        "vertobot_candidate_wait_seconds",
        "Seconds from the invite's sync response to the decision to dial (the candidate coalescing wait)",
        Histogram::new(WAIT_BUCKETS),
    );
    let candidates = reg(
        r,
        "vertobot_candidates",
        "The caller's ICE candidates when a call is dialled: kept, or dropped by reason (tcp, mdns, hostname, over_cap ...)",
        CounterFamily::default(),
    );
    for f in ["kept", "tcp", "mdns", "hostname", "over_cap"] {
        drop(candidates.get_or_create(&[("fate", f)]));
    }
    Timings {
        hop,
        admission,
        candidate_wait,
        candidates,
    }
}

/// Registers a metric and hands it back, so each one is declared in one statement.
fn reg<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    r.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::machine::DialFailure;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_metric_is_encoded_with_its_name() {
        let m = Metrics::new(Duration::from_secs(120));
        m.matrix_event(&EventKind::Message { body: "hi".into() });
        m.matrix_api("/sync", true);
        m.matrix_api("/rooms/%21r%3Ax/send/m.call.answer/vb1", false);
        m.send_retry();
        m.sync_error();
        m.call_refused(Cause::CallRejected);
        m.verto_event(&VertoEvent::Connected {});
        m.verto_event(&VertoEvent::Disconnected);
        m.verto_event(&VertoEvent::Connected {});
        m.hop(MATRIX_TO_VERTO, Duration::from_micros(300));
        m.admission(Duration::from_millis(3));
        let t = m.encode();
        for (series, want) in [
            ("vertobot_hop_seconds_count{hop=\"matrix_to_verto\"}", 1.0),
            (
                "vertobot_hop_seconds_bucket{le=\"0.0005\",hop=\"matrix_to_verto\"}",
                1.0,
            ),
            (
                "vertobot_hop_seconds_bucket{le=\"0.0002\",hop=\"matrix_to_verto\"}",
                0.0,
            ),
            ("vertobot_hop_seconds_count{hop=\"verto_to_matrix\"}", 0.0),
            ("vertobot_admission_seconds_count", 1.0),
            ("vertobot_candidate_wait_seconds_count", 0.0),
            ("vertobot_candidates_total{fate=\"kept\"}", 0.0),
            ("vertobot_candidates_total{fate=\"over_cap\"}", 0.0),
            (
                "bridge_matrix_event_total{event_type=\"m.room.message\"}",
                1.0,
            ),
            ("bridge_matrix_api_calls_total{method=\"sync\"}", 1.0),
            ("bridge_matrix_api_calls_total{method=\"send\"}", 1.0),
            ("bridge_matrix_api_calls_failed_total{method=\"send\"}", 1.0),
            ("bridge_connected", 1.0),
            ("vertobot_calls_active{direction=\"outbound\"}", 0.0),
            (
                "vertobot_calls_total{direction=\"outbound\",outcome=\"rejected\",cause=\"CALL_REJECTED\"}",
                1.0,
            ),
            ("vertobot_call_setup_seconds_count", 0.0),
            ("vertobot_verto_reconnects_total", 1.0),
            ("vertobot_calls_reattached_total", 0.0),
            ("vertobot_sync_errors_total", 1.0),
            ("vertobot_event_send_retries_total", 1.0),
        ] {
            assert_eq!(sample(&t, series), Some(want), "{series} in\n{t}");
        }
        assert!(
            t.contains("# TYPE vertobot_call_setup_seconds histogram"),
            "{t}"
        );
        assert!(t.contains("# TYPE bridge_matrix_event counter"), "{t}");
        assert_eq!(
            sample(&t, "vertobot_dtmf_digits_total{direction=\"to_sip\"}"),
            Some(0.0)
        );
        assert!(
            !t.contains("outcome=\"failed\""),
            "series with a cause appear with their first call\n{t}"
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
        assert_eq!(
            sample(&t, "bridge_matrix_api_calls_failed_total{method=\"sync\"}"),
            None
        );
    }

    fn outbound_total(outcome: &str, cause: &str) -> String {
        let labels = format!("direction=\"outbound\",outcome=\"{outcome}\",cause=\"{cause}\"");
        format!("vertobot_calls_total{{{labels}}}")
    }

    #[test]
    fn calls_are_counted_by_outcome() {
        let m = Metrics::new(Duration::from_secs(120));
        let active =
            |m: &Metrics| sample(&m.encode(), "vertobot_calls_active{direction=\"outbound\"}");
        let total = |m: &Metrics, o: &str, c: &str| sample(&m.encode(), &outbound_total(o, c));
        // Answered, with digits both ways and a reattachment.
        let mut p = CallProbe::new(&m, false);
        assert_eq!(active(&m), Some(1.0));
        p.state(State::Collecting);
        p.state(State::Ringing);
        p.action(&Action::SendDtmf {
            digits: "12w#".into(),
            react_to: None,
        });
        p.state(State::Answered);
        p.input(&Input::FarDtmf { digit: "5".into() });
        p.input(&Input::Hangup { reason: None });
        p.state(State::Detached);
        p.state(State::Renegotiating);
        p.state(State::Answered);
        p.state(State::Ended);
        drop(p);
        // The caller hangs up while it rings.
        let mut p = CallProbe::new(&m, false);
        p.state(State::Ringing);
        p.input(&Input::Hangup {
            reason: Some("user_hangup".into()),
        });
        p.state(State::Dialling);
        p.state(State::Ended);
        drop(p);
        // FreeSWITCH refuses it.
        let mut p = CallProbe::new(&m, false);
        p.state(State::Dialling);
        p.input(&Input::InviteResult(Err(DialFailure {
            cause_code: Some(3),
            message: "no route".into(),
            timed_out: false,
        })));
        p.state(State::Ended);
        drop(p);
        // Not admitted (not a 1:1 room).
        drop(CallProbe::new(&m, false));
        // Recovered after a restart: active, reattached, not counted again.
        let mut p = CallProbe::new(&m, true);
        p.state(State::Detached);
        p.state(State::Answered);
        assert_eq!(active(&m), Some(1.0));
        drop(p);
        let t = m.encode();
        assert_eq!(active(&m), Some(0.0));
        for (o, c) in [
            ("answered", "NORMAL_CLEARING"),
            ("caller_cancelled", "ORIGINATOR_CANCEL"),
            ("failed", "NO_ROUTE_DESTINATION"),
            ("rejected", "CALL_REJECTED"),
        ] {
            assert_eq!(total(&m, o, c), Some(1.0), "{o}\n{t}");
        }
        assert_eq!(
            sample(&t, "vertobot_call_setup_seconds_count"),
            Some(1.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, "vertobot_calls_reattached_total"),
            Some(2.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, "vertobot_dtmf_digits_total{direction=\"to_sip\"}"),
            Some(3.0),
            "{t}"
        );
        assert_eq!(
            sample(&t, "vertobot_dtmf_digits_total{direction=\"from_sip\"}"),
            Some(1.0),
            "{t}"
        );
    }

    /// Calls from FreeSWITCH count under `direction="inbound"`: answered, cancelled by the
    /// SIP side while ringing, and refused; the outbound series stay untouched.
    #[test]
    fn inbound_calls_are_counted_apart() {
        let m = Metrics::new(Duration::from_secs(120));
        let series = |d: &str, o: &str, c: &str| {
            let labels = format!("direction=\"{d}\",outcome=\"{o}\",cause=\"{c}\"");
            sample(&m.encode(), &format!("vertobot_calls_total{{{labels}}}"))
        };
        let active = |d: &str| {
            sample(
                &m.encode(),
                &format!("vertobot_calls_active{{direction=\"{d}\"}}"),
            )
        };
        assert_eq!(active(INBOUND), Some(0.0), "registered before any call");
        let mut p = CallProbe::with_direction(&m, false, INBOUND);
        assert_eq!((active(INBOUND), active(OUTBOUND)), (Some(1.0), Some(0.0)));
        p.state(State::Placing);
        p.state(State::Inviting);
        p.state(State::Answered);
        p.state(State::Ended);
        drop(p);
        let mut p = CallProbe::with_direction(&m, false, INBOUND);
        p.state(State::Inviting);
        p.input(&Input::Bye {
            cause_code: Some(487),
            cause: None,
        });
        p.state(State::Ended);
        drop(p);
        m.call_refused_in(INBOUND, Cause::UserBusy);
        assert_eq!(active(INBOUND), Some(0.0));
        assert_eq!(series(INBOUND, "answered", "NORMAL_CLEARING"), Some(1.0));
        let cancelled = series(INBOUND, "caller_cancelled", "ORIGINATOR_CANCEL");
        assert_eq!(cancelled, Some(1.0));
        assert_eq!(series(INBOUND, "rejected", "USER_BUSY"), Some(1.0));
        assert_eq!(series(OUTBOUND, "answered", "NORMAL_CLEARING"), None);
    }

    /// The `cause` label: the first cause either side gave, else what the Matrix ending maps to.
    #[test]
    fn calls_are_counted_by_cause() {
        let dial_error = |cause_code, timed_out| {
            Input::InviteResult(Err(DialFailure {
                cause_code,
                message: String::new(),
                timed_out,
            }))
        };
        let bye = |cause_code, cause: Option<&str>| Input::Bye {
            cause_code,
            cause: cause.map(str::to_owned),
        };
        let hangup = |reason: &str| {
            Action::Send(CallEventOut::Hangup {
                call_id: "c".into(),
                voip: crate::matrix::events::Voip::V1 {
                    party_id: "p".into(),
                },
                reason: reason.into(),
            })
        };
        let our_bye = |cause| Action::Bye { cause };
        type Case = (Vec<Input>, Vec<Action>, &'static str);
        let cases: [Case; 7] = [
            (
                vec![bye(Some(17), None)],
                vec![hangup("user_busy")],
                "USER_BUSY",
            ),
            (vec![bye(None, Some("no_answer"))], vec![], "NO_ANSWER"),
            (vec![bye(Some(999), None)], vec![], "OTHER"),
            (
                vec![dial_error(None, false)],
                vec![],
                "DESTINATION_OUT_OF_ORDER",
            ),
            (
                vec![dial_error(None, true)],
                vec![
                    our_bye(Cause::NormalTemporaryFailure),
                    hangup("unknown_error"),
                ],
                "NORMAL_TEMPORARY_FAILURE",
            ),
            (
                vec![],
                vec![hangup("ice_failed")],
                "NORMAL_TEMPORARY_FAILURE",
            ),
            (
                vec![],
                vec![our_bye(Cause::SystemShutdown)],
                "SYSTEM_SHUTDOWN",
            ),
        ];
        for (inputs, actions, want) in cases {
            let m = Metrics::new(Duration::from_secs(120));
            let mut p = CallProbe::new(&m, false);
            p.state(State::Dialling);
            inputs.iter().for_each(|i| p.input(i));
            actions.iter().for_each(|a| p.action(a));
            drop(p);
            let series = outbound_total("failed", want);
            assert_eq!(
                sample(&m.encode(), &series),
                Some(1.0),
                "{want}\n{}",
                m.encode()
            );
        }
    }

    #[test]
    fn disabled_handles_do_nothing() {
        let m = Metrics::disabled();
        m.matrix_api("/sync", false);
        m.sync_ok();
        let mut p = CallProbe::new(&m, false);
        p.state(State::Answered);
        drop(p);
        assert_eq!(m.encode(), "");
        assert!(m.readiness().is_err());
    }

    #[test]
    fn endpoints_are_a_fixed_set() {
        for (path, want) in [
            ("/login", "login"),
            ("/account/whoami", "whoami"),
            ("/sync", "sync"),
            ("/rooms/%21a%3Ab/join", "join"),
            ("/rooms/%21a%3Ab/leave", "leave"),
            ("/rooms/%21a%3Ab/joined_members", "joined_members"),
            ("/rooms/%21a%3Ab/state/m.room.join_rules/", "room_state"),
            ("/rooms/%21a%3Ab/send/m.call.invite/vb1", "send"),
            ("/directory/room/%23a%3Ab", "resolve_alias"),
            ("/something/else", "other"),
        ] {
            assert_eq!(endpoint(path), want, "{path}");
        }
    }

    #[test]
    fn readiness_needs_matrix_sync_and_verto() {
        let m = Metrics::new(Duration::from_millis(200));
        let why = |m: &Metrics| m.readiness().unwrap_err();
        assert!(why(&m).contains("Matrix"));
        m.matrix_logged_in();
        assert!(why(&m).contains("sync"));
        m.sync_ok();
        assert!(why(&m).contains("verto"));
        m.verto_event(&VertoEvent::Connected {});
        assert_eq!(m.readiness(), Ok(()));
        m.verto_event(&VertoEvent::Disconnected);
        assert!(why(&m).contains("verto"));
        m.verto_event(&VertoEvent::Connected {});
        std::thread::sleep(Duration::from_millis(300));
        assert!(why(&m).contains("last successful sync"), "{}", why(&m));
    }

    #[test]
    fn routes_and_statuses() {
        let m = Metrics::new(Duration::from_secs(120));
        let get = |p: &str| respond(&m, &hyper::Method::GET, p).status().as_u16();
        assert_eq!(get("/health/live"), 200);
        assert_eq!(get("/health/ready"), 503);
        assert_eq!(get("/metrics"), 200);
        assert_eq!(get("/nope"), 404);
        assert_eq!(
            respond(&m, &hyper::Method::POST, "/metrics")
                .status()
                .as_u16(),
            405
        );
        let r = respond(&m, &hyper::Method::GET, "/metrics");
        assert!(r.headers()[hyper::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
    }
}
