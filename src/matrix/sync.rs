//! The `/sync` loop: login, long poll, invites, hand-over of batches.
//!
//! The position is saved only after the consumer has handled a batch (it fires
//! [`Batch::handled`]), so a crash or a stop replays at most one batch and never skips one. On a first start (no saved position) the
//! timeline is skipped, because it holds calls that ended long ago, but pending invites are
//! still joined: the bot must not ignore rooms people invited it to while it was not running.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::client::{MatrixClient, MatrixError, Session};
use super::events::{parse_event, EventError, TimelineEvent};
use crate::backoff::Backoff;
use crate::chain::Chain;
use crate::config::{MatrixConfig, Secret};
use crate::state::StateStore;

/// The subset of the `/sync` response the bot reads.
#[derive(Debug, Deserialize)]
pub struct SyncResponse {
    /// The next position.
    pub next_batch: String,
    /// Per-room sections.
    #[serde(default)]
    pub rooms: Rooms,
}

/// `rooms`.
#[derive(Debug, Default, Deserialize)]
pub struct Rooms {
    /// Joined rooms.
    #[serde(default)]
    pub join: HashMap<String, JoinedRoom>,
    /// Rooms we are invited to.
    #[serde(default)]
    pub invite: HashMap<String, InvitedRoom>,
}

/// One room we are invited to.
#[derive(Debug, Default, Deserialize)]
pub struct InvitedRoom {
    /// Stripped state, which holds the invite itself.
    #[serde(default)]
    pub invite_state: InviteState,
}

/// `invite_state`.
#[derive(Debug, Default, Deserialize)]
pub struct InviteState {
    /// Stripped state events.
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
}

impl InvitedRoom {
    /// Who invited `me`.
    pub fn inviter(&self, me: &str) -> Option<&str> {
        self.invite_state
            .events
            .iter()
            .find(|e| e["type"] == "m.room.member" && e["state_key"] == me)
            .and_then(|e| e["sender"].as_str())
    }
}

/// Decides whether an invite from this user is accepted (the call layer's access policy).
pub type InvitePolicy = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// One joined room.
#[derive(Debug, Default, Deserialize)]
pub struct JoinedRoom {
    /// Its new timeline events.
    #[serde(default)]
    pub timeline: Timeline,
}

/// A timeline slice.
#[derive(Debug, Default, Deserialize)]
pub struct Timeline {
    /// Events, each left raw until its type is known.
    #[serde(default)]
    pub events: Vec<Box<RawValue>>,
}

/// What the consumer receives per sync response.
#[derive(Debug)]
pub struct Batch {
    /// When the response arrived: with `age`, decides whether an invite is still valid.
    pub received: Instant,
    /// Rooms with relevant events, each in timeline order.
    pub rooms: Vec<(String, Vec<TimelineEvent>)>,
    /// Fired by the consumer once it has handled the batch. Only then is the position after
    /// it saved, so a stop with a batch still queued replays it on the next start.
    pub handled: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The sync filter: only what the bot acts on, so the long poll stays cheap.
pub const FILTER: &str = r#"{"presence":{"types":[]},"account_data":{"types":[]},"room":{"timeline":{"types":["m.call.*","m.room.member","m.room.message"],"limit":100},"state":{"types":["m.room.member"],"lazy_load_members":true},"ephemeral":{"types":[]},"account_data":{"types":[]}}}"#;

/// The file in `state_dir` that holds the [`Session`]. It is private: it has the token.
const SESSION_FILE: &str = "session.json";

/// Logs in (or reuses the saved session) and returns the client and the session.
pub async fn login(
    cfg: &MatrixConfig,
    store: &StateStore,
) -> Result<(MatrixClient, Session), MatrixError> {
    if let Some(token) = &cfg.access_token {
        let client = MatrixClient::with_tls(
            &cfg.homeserver,
            Some(token.clone()),
            cfg.tls_insecure_skip_verify,
        )?;
        let (user, device) = client.whoami().await?;
        if user != cfg.user_id {
            warn!(configured = %cfg.user_id, actual = %user, "access token belongs to another user");
        }
        let session = Session {
            homeserver: cfg.homeserver.clone(),
            user_id: user,
            device_id: device.unwrap_or_else(|| "VERTOBOT".into()),
            access_token: token.expose().to_owned(),
        };
        return Ok((client, session));
    }
    let saved = store.read_json::<Session>(SESSION_FILE).ok().flatten();
    if let Some(s) = saved
        .as_ref()
        .filter(|s| s.user_id == cfg.user_id && s.homeserver == cfg.homeserver)
    {
        let client = MatrixClient::with_tls(
            &cfg.homeserver,
            Some(Secret::new(&s.access_token)),
            cfg.tls_insecure_skip_verify,
        )?;
        match client.whoami().await {
            Ok(_) => {
                info!(device_id = %s.device_id, "reusing saved Matrix session");
                return Ok((client, s.clone()));
            }
            Err(e) if e.is_unknown_token() => {
                info!("saved access token is no longer valid; logging in again")
            }
            Err(e) => return Err(e),
        }
    }
    let client = MatrixClient::with_tls(&cfg.homeserver, None, cfg.tls_insecure_skip_verify)?;
    let password = cfg.password.clone().unwrap_or_default();
    let device = saved
        .as_ref()
        .filter(|s| s.user_id == cfg.user_id)
        .map(|s| s.device_id.as_str());
    let session = client
        .login_password(&cfg.user_id, &password, device, &cfg.device_name)
        .await?;
    client.set_token(Secret::new(&session.access_token));
    if let Err(e) = store.write_private_json(SESSION_FILE, &session) {
        error!(error = %Chain(&e), "cannot save the Matrix session; the next start will log in again");
    }
    info!(device_id = %session.device_id, "logged in to Matrix");
    Ok((client, session))
}

/// Sends a batch to the consumer and waits until it has been handled. False when the consumer
/// is gone or we are stopping: the position must then stay before this batch.
async fn hand_over(
    tx: &mpsc::Sender<Batch>,
    received: Instant,
    rooms: Vec<(String, Vec<TimelineEvent>)>,
    cancel: &CancellationToken,
) -> bool {
    let (done, handled) = tokio::sync::oneshot::channel();
    let batch = Batch {
        received,
        rooms,
        handled: Some(done),
    };
    if tx.send(batch).await.is_err() {
        return false;
    }
    tokio::select! {
        r = handled => r.is_ok(),
        _ = cancel.cancelled() => false,
    }
}

/// Runs until cancelled, sending one [`Batch`] per sync response.
pub async fn run(
    client: MatrixClient,
    cfg: MatrixConfig,
    store: StateStore,
    tx: mpsc::Sender<Batch>,
    accept: InvitePolicy,
    cancel: CancellationToken,
) {
    let mut since = saved_since(&store);
    // Without a saved position, anything created before this start is history. The initial
    // sync alone does not guarantee that: Synapse may answer it from a response cache made
    // minutes ago, and the next incremental sync then replays what came after it. So events
    // older than this start are skipped for the whole run.
    let fresh_start = since.is_none().then(Instant::now);
    if fresh_start.is_some() {
        info!("no saved sync position: skipping old timeline events, joining pending invites");
    }
    let joining: Arc<Mutex<HashSet<String>>> = Arc::default();
    let timeout = Duration::from_secs(cfg.sync_timeout_secs);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let first = since.is_none();
        let poll = if first { Duration::ZERO } else { timeout };
        let res = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.sync(since.as_deref(), poll, FILTER) => r,
        };
        match res {
            Ok(resp) => {
                backoff.reset();
                let received = Instant::now();
                answer_invites(
                    &client,
                    &cfg,
                    &resp.rooms.invite,
                    &accept,
                    &joining,
                    &cancel,
                );
                let rooms = if first {
                    Vec::new()
                } else {
                    timeline_events(
                        &client,
                        &cfg.user_id,
                        resp.rooms.join,
                        fresh_start,
                        received,
                    )
                };
                if !rooms.is_empty() && !hand_over(&tx, received, rooms, &cancel).await {
                    return;
                }
                save_position(&store, &resp.next_batch);
                client.metrics().sync_ok();
                since = Some(resp.next_batch);
            }
            Err(e) => {
                client.metrics().sync_error();
                let Some(wait) = after_sync_error(&e, &client, &cfg, &store, &mut backoff).await
                else {
                    continue;
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// An unreadable position is not fatal: starting fresh only skips old timeline events.
fn saved_since(store: &StateStore) -> Option<String> {
    match store.since() {
        Ok(s) => s,
        Err(e) => {
            error!(error = %Chain(&e), "cannot read the sync position; starting fresh");
            None
        }
    }
}

/// Joins or declines in the background, so a slow homeserver does not hold up the calls
/// in the same sync response.
fn answer_invites(
    client: &MatrixClient,
    cfg: &MatrixConfig,
    invites: &HashMap<String, InvitedRoom>,
    accept: &InvitePolicy,
    joining: &Arc<Mutex<HashSet<String>>>,
    cancel: &CancellationToken,
) {
    for (room, invited) in invites {
        let inviter = invited.inviter(&cfg.user_id).unwrap_or("");
        if accept(inviter) {
            spawn_join(client, room, joining, cancel);
        } else {
            spawn_decline(client, room, inviter, joining);
        }
    }
}

/// The events the bridge acts on, per room; rooms left without any are dropped so that an
/// idle sync hands nothing over and is not waited for.
fn timeline_events(
    client: &MatrixClient,
    bot: &str,
    join: HashMap<String, JoinedRoom>,
    fresh_start: Option<Instant>,
    received: Instant,
) -> Vec<(String, Vec<TimelineEvent>)> {
    let mut rooms = Vec::new();
    for (room_id, room) in join {
        let mut events = Vec::new();
        for raw in room.timeline.events {
            match parse_event(&raw) {
                Ok(ev) if is_before(fresh_start, received, ev.age_ms) => {
                    debug!(%room_id, event_id = %ev.event_id, "event from before the first start skipped");
                }
                Ok(ev) => {
                    if ev.sender != bot {
                        client.metrics().matrix_event(&ev.kind);
                    }
                    events.push(ev)
                }
                Err(EventError::Irrelevant) => {}
                Err(e) => warn!(%room_id, error = %e, "skipping event"),
            }
        }
        if !events.is_empty() {
            rooms.push((room_id, events));
        }
    }
    rooms
}

/// A position that cannot be saved costs at most a replay after a restart, so the loop
/// goes on; the alive mark is what `vertobot --health` reads.
fn save_position(store: &StateStore, next_batch: &str) {
    if let Err(e) = store.save_since(next_batch) {
        error!(error = %Chain(&e), "cannot save the sync position");
    }
    let _ = store.touch_alive();
}

/// How long to wait before the next sync, or `None` to sync again at once because a fresh
/// login replaced a rejected token. A token-only setup cannot log in, so it waits long and
/// says what to configure instead.
async fn after_sync_error(
    e: &MatrixError,
    client: &MatrixClient,
    cfg: &MatrixConfig,
    store: &StateStore,
    backoff: &mut Backoff,
) -> Option<Duration> {
    if !e.is_unknown_token() {
        let ours = backoff.next_wait();
        let w = e.retry_after().unwrap_or(ours);
        warn!(error = %Chain(e), retry_in = ?w, "sync failed");
        return Some(w);
    }
    match &cfg.password {
        Some(_) => {
            warn!("Matrix access token rejected; logging in again");
            match login(cfg, store).await {
                Ok((c, s)) => {
                    client.set_token(Secret::new(&s.access_token));
                    drop(c);
                    None
                }
                Err(e) => {
                    error!(error = %Chain(&e), "Matrix login failed");
                    Some(Duration::from_secs(30))
                }
            }
        }
        None => {
            error!("the configured Matrix access_token was rejected (M_UNKNOWN_TOKEN): configure a new token or a password");
            Some(Duration::from_secs(60))
        }
    }
}

/// True when an event `age_ms` old at `received` was created before `started`.
fn is_before(started: Option<Instant>, received: Instant, age_ms: Option<u64>) -> bool {
    match (started, age_ms) {
        (Some(started), Some(age)) => received
            .checked_sub(Duration::from_millis(age))
            .is_some_and(|created| created < started),
        _ => false,
    }
}

/// Declines an invite from someone who may not use the bridge.
fn spawn_decline(
    client: &MatrixClient,
    room: &str,
    inviter: &str,
    joining: &Arc<Mutex<HashSet<String>>>,
) {
    let Ok(mut set) = joining.lock() else { return };
    if !set.insert(room.to_owned()) {
        return;
    }
    drop(set);
    info!(room_id = %room, %inviter, "declining invite: this user may not use the bridge (access.allow)");
    let (client, room, joining) = (client.clone(), room.to_owned(), joining.clone());
    tokio::spawn(async move {
        if let Err(e) = client
            .leave(&room, "You are not allowed to use this bridge.")
            .await
        {
            warn!(room_id = %room, error = %Chain(&e), "cannot decline invite");
        }
        if let Ok(mut set) = joining.lock() {
            set.remove(&room);
        }
    });
}

/// Joins an invited room in the background, retrying with backoff.
fn spawn_join(
    client: &MatrixClient,
    room: &str,
    joining: &Arc<Mutex<HashSet<String>>>,
    cancel: &CancellationToken,
) {
    let Ok(mut set) = joining.lock() else { return };
    if !set.insert(room.to_owned()) {
        return;
    }
    drop(set);
    let client = client.clone();
    let room = room.to_owned();
    let joining = joining.clone();
    let cancel = cancel.clone();
    let span = tracing::info_span!("join", room_id = %room);
    tokio::spawn(
        async move {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            for attempt in 1..=8 {
                match client.join(&room).await {
                    Ok(()) => {
                        info!("joined room");
                        break;
                    }
                    Err(e)
                        if attempt < 8
                            && (e.is_transient()
                                || matches!(
                                    e,
                                    MatrixError::Api {
                                        status: 404 | 403,
                                        ..
                                    }
                                )) =>
                    {
                        debug!(error = %Chain(&e), attempt, "join failed; retrying");
                    }
                    Err(e) => {
                        warn!(error = %Chain(&e), "cannot join room; giving up");
                        break;
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_wait()) => {}
                }
            }
            if let Ok(mut set) = joining.lock() {
                set.remove(&room);
            }
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_before_a_first_start() {
        let started = Instant::now();
        let received = started + Duration::from_secs(10);
        let cases = [
            (Some(started), Some(15_000), true), // created 5 s before the start
            (Some(started), Some(5_000), false), // created 5 s after the start
            (Some(started), None, false),        // no age: cannot tell, keep
            (None, Some(3_600_000), false),      // saved position: nothing is skipped
        ];
        for (s, age, want) in cases {
            assert_eq!(is_before(s, received, age), want, "{age:?}");
        }
    }
}
