//! The `/sync` loop: login, long poll, invites, hand-over of batches.
//!
//! The position is saved only after the consumer has handled a sync's last batch (it fires
//! [`Batch::handled`]), so a crash or a stop replays at most one sync and never skips one. On
//! a first start (no saved position) the timeline is skipped, because it holds calls that
//! ended long ago, but pending invites are still joined: the bot must not ignore rooms people
//! invited it to while it was not running.

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
use super::crypto::{self, Decrypted, SyncParts};
use super::events::{parse_event, CallEvent, EventError, EventKind, TimelineEvent};
use super::room_facts;
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
    /// Messages to our device (room keys among them).
    #[serde(default)]
    pub to_device: ToDevice,
    /// Users whose devices changed.
    #[serde(default)]
    pub device_lists: ruma::api::client::sync::sync_events::DeviceLists,
    /// How many one-time keys the server still holds for us.
    #[serde(default)]
    pub device_one_time_keys_count:
        std::collections::BTreeMap<ruma::OneTimeKeyAlgorithm, ruma::UInt>,
    /// Our fallback key types the server has not handed out.
    #[serde(default)]
    pub device_unused_fallback_key_types: Option<Vec<ruma::OneTimeKeyAlgorithm>>,
}

/// `to_device`.
#[derive(Debug, Default, Deserialize)]
pub struct ToDevice {
    /// The events, handed to the encryption state machine as they are.
    #[serde(default)]
    pub events: Vec<ruma::serde::Raw<ruma::events::AnyToDeviceEvent>>,
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
    /// Rooms we left (or were removed from).
    #[serde(default)]
    pub leave: HashMap<String, serde::de::IgnoredAny>,
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
    /// State before the timeline (whether the room is encrypted, members).
    #[serde(default)]
    pub state: Timeline,
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
    /// Events were left out between the last sync and these.
    #[serde(default)]
    pub limited: bool,
}

/// What the consumer receives: one or more per sync response (each room with events goes as
/// soon as it is decrypted; the last batch, possibly empty, carries `handled`).
#[derive(Debug)]
pub struct Batch {
    /// When the response arrived: with `age`, decides whether an invite is still valid.
    pub received: Instant,
    /// Rooms with relevant events, each in timeline order.
    pub rooms: Vec<(String, Vec<TimelineEvent>)>,
    /// Fired by the consumer once it has handled the batch (and so every earlier one). Only
    /// then is the position after the sync saved, so a stop with a batch still queued replays
    /// it on the next start.
    pub handled: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The sync filter: only what the bot acts on, so the long poll stays cheap.
pub const FILTER: &str = r#"{"presence":{"types":[]},"account_data":{"types":[]},"room":{"timeline":{"types":["m.call.*","m.room.member","m.room.message","m.room.encrypted","m.room.encryption","m.room.join_rules"],"limit":100},"state":{"types":["m.room.member","m.room.encryption","m.room.join_rules"],"lazy_load_members":true},"ephemeral":{"types":[]},"account_data":{"types":[]}}}"#;

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
    let saved = forget_if_keys_lost(cfg, store, saved).await;
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

/// A saved session whose device keys are gone (no encryption store in `state_dir`) cannot
/// read or send encrypted events: reusing the device would leave keys on the server that
/// nobody holds. Its device is logged out and a new one logged in instead.
async fn forget_if_keys_lost(
    cfg: &MatrixConfig,
    store: &StateStore,
    saved: Option<Session>,
) -> Option<Session> {
    let s = saved?;
    if !cfg.encryption.enabled || crypto::store_exists(store.dir()) {
        return Some(s);
    }
    warn!(device_id = %s.device_id, "state_dir holds a Matrix session but no encryption store: that device's keys are lost, so it is logged out and the bot logs in as a new device");
    if let Ok(old) = MatrixClient::with_tls(
        &s.homeserver,
        Some(Secret::new(&s.access_token)),
        cfg.tls_insecure_skip_verify,
    ) {
        if let Err(e) = old.logout().await {
            warn!(error = %Chain(&e), "cannot log out the old device; it stays in the account's device list");
        }
    }
    None
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

/// Runs until cancelled, handing each sync response's events to the consumer in one or more
/// [`Batch`]es.
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
            Ok(mut resp) => {
                backoff.reset();
                let received = Instant::now();
                // Keys first: this sync's timeline may need them, and its position must not
                // be saved before the machine has seen them.
                let keys = receive_keys(&client, &mut resp).await;
                learn_rooms(&client, &resp.rooms).await;
                answer_invites(
                    &client,
                    &cfg,
                    &resp.rooms.invite,
                    &accept,
                    &joining,
                    &cancel,
                );
                let times = (fresh_start, received);
                let join = resp.rooms.join;
                if !first && !deliver(&client, &cfg.user_id, join, &keys, times, &tx, &cancel).await
                {
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

/// Hands one sync's events to the bridge and waits until it has handled them all. False when
/// the bridge is gone or the loop is cancelled.
async fn deliver(
    client: &MatrixClient,
    bot: &str,
    join: HashMap<String, JoinedRoom>,
    keys: &[(ruma::OwnedRoomId, String)],
    times: (Option<Instant>, Instant),
    tx: &mpsc::Sender<Batch>,
    cancel: &CancellationToken,
) -> bool {
    // Events held back for their room key, now readable, go with their room's new events: a
    // hangup in this sync must still settle an invite that waited for its key.
    let mut late = HashMap::new();
    late_events(client, bot, keys, &mut late).await;
    let Some(streamed) = stream_rooms(client, bot, join, times, &mut late, tx).await else {
        return false;
    };
    // The last batch carries the acknowledgement, empty if every room went ahead.
    let rest: Vec<_> = late.into_iter().collect();
    if !streamed && rest.is_empty() {
        return true;
    }
    hand_over(tx, times.1, rest, cancel).await
}

/// How many rooms' events are decrypted at once.
const ROOMS_AT_ONCE: usize = 16;

/// Decrypts and parses the rooms' events, several rooms at a time, and hands each room that
/// has events the bridge acts on to it as soon as they are ready (without an acknowledgement:
/// the sync's last batch carries that). A call's event thus waits for its own room's
/// decryption, not for every other room of a busy sync. Returns whether any room went, or
/// `None` when the bridge is gone.
async fn stream_rooms(
    client: &MatrixClient,
    bot: &str,
    join: HashMap<String, JoinedRoom>,
    (fresh_start, received): (Option<Instant>, Instant),
    late: &mut HashMap<String, Vec<TimelineEvent>>,
    tx: &mpsc::Sender<Batch>,
) -> Option<bool> {
    use futures_util::stream::{self, StreamExt};
    let mut ready = stream::iter(join)
        .map(|(room_id, room)| async move {
            let events = room_events(client, bot, &room_id, room, fresh_start, received).await;
            (room_id, events)
        })
        .buffer_unordered(ROOMS_AT_ONCE);
    let mut sent = false;
    while let Some((room_id, mut events)) = ready.next().await {
        events.extend(late.remove(&room_id).unwrap_or_default());
        if events.is_empty() {
            continue;
        }
        let rooms = vec![(room_id, events)];
        let batch = Batch {
            received,
            rooms,
            handled: None,
        };
        tx.send(batch).await.ok()?;
        sent = true;
    }
    Some(sent)
}

/// One room's events the bridge acts on, in timeline order.
async fn room_events(
    client: &MatrixClient,
    bot: &str,
    room_id: &str,
    room: JoinedRoom,
    fresh_start: Option<Instant>,
    received: Instant,
) -> Vec<TimelineEvent> {
    let mut events = Vec::new();
    for raw in room.timeline.events {
        let Some(ev) = readable(client, bot, room_id, &raw).await else {
            continue;
        };
        if is_before(fresh_start, received, ev.age_ms) {
            debug!(%room_id, event_id = %ev.event_id, "event from before the first start skipped");
            continue;
        }
        if ev.sender != bot {
            client.metrics().matrix_event(&ev.kind);
        }
        events.push(ev)
    }
    events
}

/// One timeline event as the bridge sees it: decrypted if it was encrypted, parsed, or
/// `None` (with the reason logged) when it is of no interest or cannot be read.
async fn readable(
    client: &MatrixClient,
    bot: &str,
    room_id: &str,
    raw: &RawValue,
) -> Option<TimelineEvent> {
    let decrypted = match (event_type(raw).as_deref(), client.crypto()) {
        (Some("m.room.encrypted"), Some(crypto)) => match crypto.decrypt(room_id, raw).await {
            Decrypted::Event(plain) => Some(plain),
            Decrypted::Waiting => {
                debug!(%room_id, "encrypted event waits for its room key");
                return None;
            }
            Decrypted::Failed(reason) => {
                warn!(%room_id, %reason, "cannot decrypt an event");
                return None;
            }
            Decrypted::Untrusted(level) => {
                warn!(%room_id, %level, "not decrypting an event from a device matrix.encryption.trust does not accept");
                tell_untrusted(client, room_id, raw);
                return None;
            }
        },
        (Some("m.room.encrypted"), None) => {
            debug!(%room_id, "encrypted event skipped: encryption is off");
            return None;
        }
        _ => None,
    };
    let ev = match parse_event(decrypted.as_deref().unwrap_or(raw)) {
        Ok(ev) => ev,
        Err(EventError::Irrelevant) => return None,
        Err(e) => {
            warn!(%room_id, error = %e, "skipping event");
            return None;
        }
    };
    if decrypted.is_some()
        && ev.sender != bot
        && matches!(ev.kind, EventKind::Call(CallEvent::Invite(_)))
    {
        preshare(client, room_id);
    }
    Some(ev)
}

/// A caller whose device the bot will not trust hears ringing and nothing else: tell them why,
/// once per room and sender while this process runs, and only for fresh events.
fn tell_untrusted(client: &MatrixClient, room_id: &str, raw: &RawValue) {
    #[derive(Deserialize)]
    struct Env {
        sender: String,
        #[serde(default)]
        unsigned: Unsigned,
    }
    #[derive(Deserialize, Default)]
    struct Unsigned {
        age: Option<u64>,
    }
    static TOLD: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let Ok(env) = serde_json::from_str::<Env>(raw.get()) else {
        return;
    };
    if env.unsigned.age.is_none_or(|a| a > 120_000) {
        return;
    }
    let key = format!("{room_id} {}", env.sender);
    let Ok(mut told) = TOLD.lock() else { return };
    if !told.get_or_insert_with(HashSet::new).insert(key) {
        return;
    }
    let (client, room_id) = (client.clone(), room_id.to_owned());
    tokio::spawn(async move {
        let text = "🔒 I cannot read your messages or calls: your session is not verified by you (cross-signing). Verify this session from another of your sessions, or ask the bridge's operator.";
        if let Err(e) = client.notice(&room_id, text).await {
            warn!(%room_id, error = %Chain(&e), "cannot post the untrusted-device notice");
        }
    });
}

/// Shares our room key with the caller's devices as soon as an invite arrives, so that the
/// answer does not wait for key claims and to-device round trips (Element does the same).
fn preshare(client: &MatrixClient, room_id: &str) {
    let (client, room_id) = (client.clone(), room_id.to_owned());
    tokio::spawn(async move {
        if let Some(crypto) = client.crypto() {
            if let Err(e) = crypto.prepare(&client, &room_id).await {
                warn!(%room_id, error = %Chain(&e), "cannot share the room key ahead of the answer; the answer will try again");
            }
        }
    });
}

/// The `type` of a raw event, without parsing the rest.
fn event_type(raw: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_str::<Peek>(raw.get()).ok().map(|p| p.kind)
}

/// Feeds the sync's encryption parts to the machine; the room keys that arrived.
async fn receive_keys(
    client: &MatrixClient,
    resp: &mut SyncResponse,
) -> Vec<(ruma::OwnedRoomId, String)> {
    let Some(crypto) = client.crypto() else {
        return Vec::new();
    };
    crypto
        .receive(SyncParts {
            to_device: std::mem::take(&mut resp.to_device.events),
            device_lists: &resp.device_lists,
            one_time_keys_counts: &resp.device_one_time_keys_count,
            unused_fallback_keys: resp.device_unused_fallback_key_types.as_deref(),
            next_batch: &resp.next_batch,
        })
        .await
}

/// What a sync tells of the rooms, from their state and timelines: their members and join
/// rules, kept for the next call's admission; and, for the encryption machine, which rooms are
/// encrypted and whose membership changed. Encryption first (a room's state lists members
/// before its `m.room.encryption`), so that every member of an encrypted room has its devices
/// tracked before the first call's room key arrives.
async fn learn_rooms(client: &MatrixClient, rooms: &Rooms) {
    let facts = client.room_facts();
    for (room_id, room) in &rooms.join {
        let events = || room.state.events.iter().chain(&room.timeline.events);
        let changes = room_facts::changes(events().map(AsRef::as_ref));
        facts.follow(room_id, room.timeline.limited, &changes);
        let Some(crypto) = client.crypto() else {
            continue;
        };
        if events().any(|raw| event_type(raw).as_deref() == Some("m.room.encryption")) {
            crypto.room_encrypted(room_id);
        }
        for change in &changes {
            if let room_facts::Change::Member { user_id, .. } = change {
                crypto.member_changed(room_id, user_id).await;
            }
        }
    }
    for room_id in rooms.leave.keys() {
        facts.forget(room_id);
    }
}

/// Events held back for their room key, now decrypted: added to their rooms, after the
/// events of this sync (their age grown by the wait).
async fn late_events(
    client: &MatrixClient,
    bot: &str,
    keys: &[(ruma::OwnedRoomId, String)],
    rooms: &mut HashMap<String, Vec<TimelineEvent>>,
) {
    let Some(crypto) = client.crypto() else {
        return;
    };
    if keys.is_empty() {
        return;
    }
    for (room_id, raw, waited) in crypto.ready(keys) {
        let Some(mut ev) = readable(client, bot, &room_id, &raw).await else {
            continue;
        };
        info!(%room_id, event_id = %ev.event_id, waited_ms = waited.as_millis() as u64, "decrypted an event once its room key arrived");
        ev.age_ms = ev.age_ms.map(|a| a + waited.as_millis() as u64);
        rooms.entry(room_id).or_default().push(ev);
    }
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
