//! vertobot: bridges Matrix 1:1 calls (`m.call.*`) to FreeSWITCH through mod_verto.
//!
//! # Layout
//! - [`config`]: the operator's YAML file, validated as a whole.
//! - [`matrix`]: client-server API, `/sync` loop, typed call events. Knows nothing of verto.
//! - [`verto`]: JSON-RPC over WebSocket to mod_verto. Knows nothing of Matrix.
//! - [`sdp`]: pure SDP edits (candidate merge, answer repair).
//! - [`call`]: the per-call state machine and its task; the only translator.
//! - [`bridge`]: routes events from both sides to the calls.
//! - [`state`]: what survives a restart.
//! - [`backoff`]: the retry pacing every layer shares.
//! - [`chain`]: error messages with their causes, for the logs.
//! - [`metrics`]: Prometheus metrics and health endpoints on the opt-in `metrics.listen`.

#![warn(missing_docs)]

pub mod backoff;
pub mod bridge;
pub mod call;
pub mod chain;
pub mod config;
pub mod matrix;
pub mod metrics;
pub mod sdp;
pub mod state;
pub mod verto;

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::chain::Chain;

/// Libraries whose `trace`/`debug` output carries raw payloads (tungstenite logs every frame,
/// the verto login with its password included). They are capped whatever `RUST_LOG` says, so no
/// log level can leak a secret.
const CAPPED: &[&str] = &[
    "tungstenite=info",
    "tokio_tungstenite=info",
    "hyper=info",
    "hyper_util=info",
    "h2=info",
    "reqwest=info",
    "rustls=info",
];

/// The log filter: `spec` (as in `RUST_LOG`, default `info`) with payload-logging libraries
/// capped.
pub fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    let spec = spec.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let mut filter = tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    for d in CAPPED {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// How long calls get to hang up on both sides after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the bridge until `cancel` fires, then hangs up every call and returns.
pub async fn run(cfg: config::Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let store = state::StateStore::open(&cfg.state_dir).context("state_dir")?;
    if cfg.matrix.tls_insecure_skip_verify {
        tracing::error!("matrix.tls_insecure_skip_verify is set: the homeserver's TLS certificate is NOT verified, so anyone on the network path can impersonate it and read the bot's password and token");
    }

    // The metrics listener first, so /health/live answers while the bridge logs in. It stops
    // when run returns, whichever way.
    let metrics_cancel = cancel.child_token();
    let _metrics_stop = metrics_cancel.clone().drop_guard();
    let (metrics, metrics_task) = start_metrics(&cfg, &metrics_cancel).await?;

    let Some((matrix, session)) = login(&cfg, &store, &cancel).await? else {
        return Ok(());
    };
    let our_party = party_id_from_device(&session.device_id);
    let matrix = matrix.with_metrics(metrics.clone());
    metrics.matrix_logged_in();

    // The verto session id is kept in state_dir: a reconnect, and a restart, log in with the
    // same one, which is what makes FreeSWITCH re-offer the answered calls.
    let sessid = verto_sessid(&store);
    let (verto_tx, verto_rx) = mpsc::channel(256);
    let verto_cancel = CancellationToken::new();
    let (verto, verto_task) =
        verto::spawn_received(&cfg.verto, sessid, verto_tx, verto_cancel.clone())
            .context("verto")?;

    let (batch_tx, batch_rx) = mpsc::channel(16);
    let sync_cancel = cancel.child_token();
    let crypto_task = start_crypto(&cfg, &store, &session, &matrix, &sync_cancel).await?;
    let own_server = matrix::server_name(&session.user_id).to_owned();
    let allow = cfg.access.allow.clone();
    let accept: matrix::sync::InvitePolicy = std::sync::Arc::new(move |inviter: &str| {
        call::route::allowed(&allow, &own_server, inviter)
    });
    let sync_task = tokio::spawn(matrix::sync::run(
        matrix.clone(),
        cfg.matrix.clone(),
        store.clone(),
        batch_tx,
        accept,
        sync_cancel.clone(),
    ));

    info!(user_id = %session.user_id, destination = %cfg.calls.destination, "vertobot running");
    let bridge = bridge::Bridge::new(
        &cfg,
        store.clone(),
        matrix,
        verto,
        session.user_id.clone(),
        our_party,
    );
    let lost = bridge
        .run(batch_rx, verto_rx, cancel.clone(), SHUTDOWN_GRACE)
        .await;
    sync_cancel.cancel();
    verto_cancel.cancel();
    metrics_cancel.cancel();
    join_tasks(sync_task, verto_task, [metrics_task, crypto_task]).await;
    if let Some(lost) = lost {
        // A non-zero exit lets systemd or the container runtime start a fresh bridge, which
        // takes the kept calls back; running on without the input would serve nobody.
        anyhow::bail!("{lost} ended unexpectedly; vertobot stopped its calls as on a stop signal");
    }
    info!("stopped");
    Ok(())
}

/// Waits (briefly) for the stopped tasks, so their last log lines are written.
async fn join_tasks(
    sync_task: tokio::task::JoinHandle<()>,
    verto_task: tokio::task::JoinHandle<()>,
    others: [Option<tokio::task::JoinHandle<()>>; 2],
) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if let Err(e) = sync_task.await {
            tracing::error!(error = %e, "the Matrix sync task failed");
        }
        if let Err(e) = verto_task.await {
            tracing::error!(error = %e, "the verto task failed");
        }
        for t in others.into_iter().flatten() {
            let _ = t.await;
        }
    })
    .await;
}

/// The metrics handle, and the listener's task when `metrics.listen` is set.
async fn start_metrics(
    cfg: &config::Config,
    cancel: &CancellationToken,
) -> anyhow::Result<(metrics::Metrics, Option<tokio::task::JoinHandle<()>>)> {
    let Some(addr) = cfg.metrics.addr() else {
        return Ok((metrics::Metrics::disabled(), None));
    };
    let m = metrics::Metrics::new(Duration::from_secs(cfg.matrix.health_limit_secs()));
    let task = metrics::serve(addr, m.clone(), cancel.clone())
        .await
        .with_context(|| format!("metrics.listen {addr}"))?;
    Ok((m, Some(task)))
}

/// Opens the encryption store and gives `matrix` encryption, when it is on: the bot then
/// reads and answers calls in encrypted rooms. Returns the task that sends key requests.
async fn start_crypto(
    cfg: &config::Config,
    store: &state::StateStore,
    session: &matrix::Session,
    matrix: &matrix::MatrixClient,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let enc = &cfg.matrix.encryption;
    if !enc.enabled {
        info!("encryption is off (matrix.encryption.enabled: false): calls in encrypted rooms are not seen");
        return Ok(None);
    }
    let passphrase = cfg.matrix.store_passphrase.as_ref().map(|p| p.expose());
    if passphrase.is_none() {
        tracing::warn!("no matrix.store_passphrase: the encryption store (the bot's device keys) is kept unencrypted in state_dir; protect that directory, or set a passphrase");
    }
    let crypto = matrix::crypto::Crypto::open(store.dir(), passphrase, session, enc.trust)
        .await
        .context("encryption store")?;
    matrix.set_crypto(crypto.clone());
    if let Err(e) = crypto.flush(matrix).await {
        warn!(error = %Chain(&e), "cannot upload the device keys yet; retrying in the background");
    } else if let Err(e) = crypto.ensure_identity(matrix).await {
        warn!(error = %Chain(&e), "cannot set up the bot's cross-signing identity; the next start tries again");
    }
    Ok(Some(tokio::spawn(
        crypto.run_outgoing(matrix.clone(), cancel.clone()),
    )))
}

/// The Matrix login, retried while the homeserver is unreachable; `None` when stopped first.
async fn login(
    cfg: &config::Config,
    store: &state::StateStore,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<(matrix::MatrixClient, matrix::Session)>> {
    let mut backoff = backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match matrix::sync::login(&cfg.matrix, store).await {
            Ok(x) => return Ok(Some(x)),
            Err(e) if e.is_transient() => {
                let wait = backoff.next_wait();
                warn!(error = %Chain(&e), retry_in = ?wait, "Matrix login failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e).context("Matrix login"),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct VertoSession {
    sessid: String,
}

fn verto_sessid(store: &state::StateStore) -> String {
    const FILE: &str = "verto.json";
    match store.read_json::<VertoSession>(FILE) {
        Ok(Some(s)) if uuid::Uuid::parse_str(&s.sessid).is_ok() => return s.sessid,
        Ok(_) => {}
        Err(e) => {
            warn!(error = %Chain(&e), "cannot read the saved verto session id; using a new one")
        }
    }
    let sessid = uuid::Uuid::new_v4().to_string();
    if let Err(e) = store.write_json(
        FILE,
        &VertoSession {
            sessid: sessid.clone(),
        },
    ) {
        warn!(error = %Chain(&e), "cannot save the verto session id; a restart cannot recover calls");
    }
    sessid
}

/// Our VoIP `party_id`: the device id if it fits the opaque-id grammar, else a fixed one.
fn party_id_from_device(device_id: &str) -> String {
    let ok = !device_id.is_empty()
        && device_id.len() <= 255
        && device_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
    if ok {
        device_id.to_owned()
    } else {
        "VERTOBOT".to_owned()
    }
}
