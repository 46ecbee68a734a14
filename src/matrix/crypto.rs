//! End-to-end encryption, inside the Matrix layer: the call layer sees plain `m.call.*` events
//! and sends plain contents whichever kind of room a call is in.
//!
//! matrix-sdk-crypto's `OlmMachine` is sans-I/O: it is fed what each `/sync` brings and hands
//! back the requests it needs sent (key uploads, queries, claims, to-device messages), which go
//! out over our own HTTP client. We keep our `/sync` loop rather than adopting the `matrix-sdk`
//! client, so the bridge keeps one request path, one set of retry rules and its own layering
//! (README, "Encryption"). The machine's state lives in a SQLite store in `state_dir`: without
//! it the bot would forget its keys and could not read what callers encrypted for it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk_common::deserialized_responses::UnableToDecryptReason;
use matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent;
use matrix_sdk_crypto::types::requests::{AnyOutgoingRequest, OutgoingRequest};
use matrix_sdk_crypto::{
    CollectStrategy, DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, OlmMachine,
    RoomEventDecryptionResult, TrustRequirement,
};
use ruma::api::client::keys::{get_keys, upload_signing_keys};
use ruma::api::client::message::send_message_event;
use ruma::api::client::to_device::send_event_to_device;
use ruma::events::MessageLikeEventContent;
use ruma::serde::Raw;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::client::{MatrixClient, MatrixError, Session};
use crate::backoff::Backoff;
use crate::chain::Chain;

/// The store's directory inside `state_dir`.
pub const STORE_DIR: &str = "crypto";

/// How long an event whose room key has not arrived is kept for another try: longer than an
/// invite lives, so a late key still lets the call ring.
const KEY_WAIT: Duration = Duration::from_secs(120);

/// Whose events the bot decrypts, and to whose devices it sends its room keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trust {
    /// Devices cross-signed by their owner, and sessions from before trust was recorded.
    #[default]
    CrossSignedOrLegacy,
    /// Only devices cross-signed by their owner (keys go only to such devices, too).
    CrossSigned,
    /// Every device (not recommended: MSC4153).
    Untrusted,
}

/// What became of an encrypted timeline event.
pub enum Decrypted {
    /// The plain event, with `sender`, `event_id` and `unsigned` of the encrypted one.
    Event(Box<RawValue>),
    /// Its room key has not arrived yet; it is kept and comes back from [`Crypto::ready`].
    Waiting,
    /// It cannot be read, for the reason given.
    Failed(String),
    /// It was sent from a device the configured trust does not accept.
    Untrusted(String),
}

/// An event kept until its room key arrives.
struct Waiting {
    room_id: OwnedRoomId,
    session_id: Option<String>,
    raw: Box<RawValue>,
    since: Instant,
}

/// What we know of a room's encryption.
#[derive(Default)]
struct RoomInfo {
    encrypted: bool,
    /// The homeserver was asked (an unencrypted room is not asked again: a later
    /// `m.room.encryption` arrives through the sync).
    checked: bool,
    /// Joined members, fetched when keys are first shared and dropped on a membership change.
    members: Option<Vec<OwnedUserId>>,
}

/// The encryption state of the bot's device. Cheap to clone.
#[derive(Clone)]
pub struct Crypto(Arc<Inner>);

struct Inner {
    machine: OlmMachine,
    decryption: DecryptionSettings,
    strategy: CollectStrategy,
    /// One sender of outgoing requests at a time: the machine hands a request out again until
    /// it is marked sent.
    outgoing: tokio::sync::Mutex<()>,
    /// One key-claim and room-key share at a time (the crate's locking rules).
    sharing: tokio::sync::Mutex<()>,
    rooms: Mutex<HashMap<OwnedRoomId, RoomInfo>>,
    waiting: Mutex<Vec<Waiting>>,
    wake: tokio::sync::Notify,
}

fn crypto_err(
    what: impl Into<String>,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> MatrixError {
    let what = what.into();
    move |source| MatrixError::Crypto { what, source }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// The store's path for `state_dir`.
pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STORE_DIR)
}

/// True when `state_dir` holds a crypto store (the device's keys).
pub fn store_exists(state_dir: &Path) -> bool {
    store_path(state_dir)
        .join("matrix-sdk-crypto.sqlite3")
        .is_file()
}

impl Crypto {
    /// Opens (or creates) the store for this session's device. A store of another account or
    /// device, a wrong passphrase or a damaged file is an error that names the store.
    pub async fn open(
        state_dir: &Path,
        passphrase: Option<&str>,
        session: &Session,
        trust: Trust,
    ) -> Result<Self, MatrixError> {
        let path = store_path(state_dir);
        let shown = path.display().to_string();
        let store = matrix_sdk_sqlite::SqliteCryptoStore::open(&path, passphrase)
            .await
            .map_err(|e| crypto_err(format!("cannot open the encryption store {shown} (a wrong or missing passphrase, or a damaged file)"))(boxed(e)))?;
        let user = UserId::parse(&session.user_id)
            .map_err(|e| crypto_err(format!("bad user id {}", session.user_id))(boxed(e)))?;
        let device: &ruma::DeviceId = session.device_id.as_str().into();
        let machine = OlmMachine::with_store(&user, device, store, None)
            .await
            .map_err(|e| {
                crypto_err(format!(
                    "the encryption store {shown} cannot be used for {} device {}",
                    session.user_id, session.device_id
                ))(boxed(e))
            })?;
        let (requirement, strategy) = match trust {
            Trust::CrossSignedOrLegacy => (
                TrustRequirement::CrossSignedOrLegacy,
                CollectStrategy::AllDevices,
            ),
            Trust::CrossSigned => (
                TrustRequirement::CrossSigned,
                CollectStrategy::IdentityBasedStrategy,
            ),
            Trust::Untrusted => (TrustRequirement::Untrusted, CollectStrategy::AllDevices),
        };
        info!(store = %shown, device_id = %session.device_id, identity_key = %machine.identity_keys().curve25519.to_base64(), "end-to-end encryption ready");
        Ok(Crypto(Arc::new(Inner {
            machine,
            decryption: DecryptionSettings {
                sender_device_trust_requirement: requirement,
            },
            strategy,
            outgoing: Default::default(),
            sharing: Default::default(),
            rooms: Default::default(),
            waiting: Default::default(),
            wake: Default::default(),
        })))
    }

    /// Feeds one sync response's encryption parts in: to-device messages (room keys among
    /// them), device-list changes and key counts. Must run before that sync's timeline is
    /// decrypted and before its position is saved. Returns the rooms and sessions whose keys
    /// just arrived.
    pub async fn receive(&self, parts: SyncParts<'_>) -> Vec<(OwnedRoomId, String)> {
        let changes = EncryptionSyncChanges {
            to_device_events: parts.to_device,
            changed_devices: parts.device_lists,
            one_time_keys_counts: parts.one_time_keys_counts,
            unused_fallback_keys: parts.unused_fallback_keys,
            next_batch_token: Some(parts.next_batch.to_owned()),
        };
        let res = self
            .0
            .machine
            .receive_sync_changes(changes, &self.0.decryption)
            .await;
        self.0.wake.notify_one();
        match res {
            Ok((_, keys)) => keys
                .into_iter()
                .map(|k| (k.room_id, k.session_id))
                .collect(),
            Err(e) => {
                warn!(error = %Chain(&e), "cannot take in this sync's encryption changes");
                Vec::new()
            }
        }
    }

    /// Sends every request the machine has queued, each marked sent once answered.
    pub async fn flush(&self, client: &MatrixClient) -> Result<(), MatrixError> {
        let _one = self.0.outgoing.lock().await;
        let requests = self
            .0
            .machine
            .outgoing_requests()
            .await
            .map_err(|e| crypto_err("cannot read the outgoing key requests")(boxed(e)))?;
        for r in requests {
            self.send_request(client, &r).await?;
        }
        Ok(())
    }

    async fn send_request(
        &self,
        client: &MatrixClient,
        r: &OutgoingRequest,
    ) -> Result<(), MatrixError> {
        let m = &self.0.machine;
        let id = r.request_id();
        let marked = match r.request() {
            AnyOutgoingRequest::KeysUpload(req) => {
                m.mark_request_as_sent(id, &client.ruma(req.clone()).await?)
                    .await
            }
            AnyOutgoingRequest::KeysQuery(q) => {
                let mut req = get_keys::v3::Request::new();
                req.device_keys = q.device_keys.clone();
                req.timeout = q.timeout;
                m.mark_request_as_sent(id, &client.ruma(req).await?).await
            }
            AnyOutgoingRequest::KeysClaim(req) => {
                m.mark_request_as_sent(id, &client.ruma(req.clone()).await?)
                    .await
            }
            AnyOutgoingRequest::ToDeviceRequest(t) => {
                let req = send_event_to_device::v3::Request::new_raw(
                    t.event_type.clone(),
                    t.txn_id.clone(),
                    t.messages.clone(),
                );
                m.mark_request_as_sent(id, &client.ruma(req).await?).await
            }
            AnyOutgoingRequest::SignatureUpload(req) => {
                m.mark_request_as_sent(id, &client.ruma(req.clone()).await?)
                    .await
            }
            AnyOutgoingRequest::RoomMessage(msg) => {
                let req = send_message_event::v3::Request::new_raw(
                    msg.room_id.clone(),
                    msg.txn_id.clone(),
                    msg.content.event_type().to_string().into(),
                    Raw::new(&msg.content)
                        .map_err(|e| crypto_err("cannot encode a room message")(boxed(e)))?
                        .cast_unchecked(),
                );
                m.mark_request_as_sent(id, &client.ruma(req).await?).await
            }
        };
        marked.map_err(|e| crypto_err("cannot record a sent key request")(boxed(e)))
    }

    /// Sends queued requests whenever a sync brought changes, retrying with backoff, until
    /// `cancel`. Runs beside the sync loop, so key traffic never holds up a call's events.
    pub async fn run_outgoing(self, client: MatrixClient, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            match self.flush(&client).await {
                Ok(()) => {
                    backoff.reset();
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.0.wake.notified() => {}
                    }
                }
                Err(e) => {
                    let wait = e.retry_after().unwrap_or_else(|| backoff.next_wait());
                    warn!(error = %Chain(&e), retry_in = ?wait, "sending key requests failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// The encryption parts of one `/sync` response.
pub struct SyncParts<'a> {
    /// `to_device.events`.
    pub to_device: Vec<Raw<ruma::events::AnyToDeviceEvent>>,
    /// `device_lists`.
    pub device_lists: &'a ruma::api::client::sync::sync_events::DeviceLists,
    /// `device_one_time_keys_count`.
    pub one_time_keys_counts: &'a std::collections::BTreeMap<ruma::OneTimeKeyAlgorithm, ruma::UInt>,
    /// `device_unused_fallback_key_types`.
    pub unused_fallback_keys: Option<&'a [ruma::OneTimeKeyAlgorithm]>,
    /// `next_batch`.
    pub next_batch: &'a str,
}

impl Crypto {
    /// Gives the bot a cross-signing identity on its first start and signs its device with it,
    /// so callers whose clients send keys only to cross-signed devices (MSC4153) reach it. An
    /// identity that exists on the homeserver but whose keys this store lacks is never
    /// replaced: callers who verified the bot would see it change.
    pub async fn ensure_identity(&self, client: &MatrixClient) -> Result<(), MatrixError> {
        let m = &self.0.machine;
        let status = m.cross_signing_status().await;
        if status.has_master && status.has_self_signing && status.has_user_signing {
            debug!("cross-signing identity present");
            return Ok(());
        }
        m.update_tracked_users([m.user_id()])
            .await
            .map_err(|e| crypto_err("cannot track our own devices")(boxed(e)))?;
        self.flush(client).await?;
        let own = m
            .get_identity(m.user_id(), None)
            .await
            .map_err(|e| crypto_err("cannot read our own identity")(boxed(e)))?;
        if own.is_some() {
            warn!("the bot's account has a cross-signing identity whose private keys are not in this encryption store; the device stays unsigned and callers in \"exclude insecure devices\" mode cannot reach it (README, Encryption: a lost store)");
            return Ok(());
        }
        let reqs = m
            .bootstrap_cross_signing(false)
            .await
            .map_err(|e| crypto_err("cannot create the cross-signing keys")(boxed(e)))?;
        if let Some(up) = &reqs.upload_keys_req {
            self.send_request(client, up).await?;
        }
        let keys = reqs.upload_signing_keys_req;
        let raw = |k: Option<matrix_sdk_crypto::types::CrossSigningKey>| -> Result<_, MatrixError> {
            k.map(|k| Raw::new(&k).map(Raw::cast_unchecked))
                .transpose()
                .map_err(|e| crypto_err("cannot encode a cross-signing key")(boxed(e)))
        };
        let mut up = upload_signing_keys::v3::Request::new();
        up.master_key = raw(keys.master_key)?;
        up.self_signing_key = raw(keys.self_signing_key)?;
        up.user_signing_key = raw(keys.user_signing_key)?;
        client.ruma(up).await?;
        client.ruma(reqs.upload_signatures_req).await?;
        info!("created the bot's cross-signing identity and signed its device");
        Ok(())
    }
}

impl Crypto {
    /// Decrypts one `m.room.encrypted` timeline event. One whose room key has not arrived is
    /// kept and retried when it does (Element sends the key and the invite at nearly the
    /// same time, and they may come in different syncs).
    pub async fn decrypt(&self, room_id: &str, raw: &RawValue) -> Decrypted {
        self.mark_encrypted(room_id);
        let Ok(room) = RoomId::parse(room_id) else {
            return Decrypted::Failed(format!("bad room id {room_id}"));
        };
        let ev: Raw<EncryptedEvent> = Raw::from_json(raw.to_owned());
        match self
            .0
            .machine
            .try_decrypt_room_event(&ev, &room, &self.0.decryption)
            .await
        {
            Ok(RoomEventDecryptionResult::Decrypted(d)) => Decrypted::Event(d.event.into_json()),
            Ok(RoomEventDecryptionResult::UnableToDecrypt(info))
                if info.reason.is_missing_room_key() =>
            {
                if let Ok(mut w) = self.0.waiting.lock() {
                    w.push(Waiting {
                        room_id: room,
                        session_id: info.session_id,
                        raw: raw.to_owned(),
                        since: Instant::now(),
                    });
                }
                Decrypted::Waiting
            }
            Ok(RoomEventDecryptionResult::UnableToDecrypt(info)) => match info.reason {
                UnableToDecryptReason::SenderIdentityNotTrusted(level) => {
                    Decrypted::Untrusted(format!("{level:?}"))
                }
                other => Decrypted::Failed(format!("{other:?}")),
            },
            Err(e) => Decrypted::Failed(format!("store error: {}", Chain(&e))),
        }
    }

    /// Kept events whose room key has now arrived (in `keys`), in arrival order, with their
    /// rooms; events kept longer than [`KEY_WAIT`] are given up with a warning.
    pub fn ready(&self, keys: &[(OwnedRoomId, String)]) -> Vec<(String, Box<RawValue>, Duration)> {
        let Ok(mut w) = self.0.waiting.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        w.retain(|e| {
            let arrived = keys.iter().any(|(r, s)| {
                *r == e.room_id && e.session_id.as_deref().is_none_or(|id| id == s)
            });
            if arrived {
                out.push((e.room_id.to_string(), e.raw.clone(), e.since.elapsed()));
                return false;
            }
            if e.since.elapsed() > KEY_WAIT {
                warn!(room_id = %e.room_id, "an encrypted event's room key never arrived; it is dropped");
                return false;
            }
            true
        });
        out
    }

    fn mark_encrypted(&self, room_id: &str) {
        if let (Ok(mut rooms), Ok(id)) = (self.0.rooms.lock(), RoomId::parse(room_id)) {
            rooms.entry(id).or_default().encrypted = true;
        }
    }

    /// Learns a room's encryption from its state (an `m.room.encryption` event).
    pub fn room_encrypted(&self, room_id: &str) {
        self.mark_encrypted(room_id);
    }

    /// A membership change: the member's devices are tracked (for an encrypted room) and
    /// the room's member list is fetched again before the next key share.
    pub async fn member_changed(&self, room_id: &str, user_id: &str) {
        let encrypted = {
            let Ok(mut rooms) = self.0.rooms.lock() else {
                return;
            };
            let Ok(id) = RoomId::parse(room_id) else {
                return;
            };
            let info = rooms.entry(id).or_default();
            info.members = None;
            info.encrypted
        };
        if let (true, Ok(user)) = (encrypted, UserId::parse(user_id)) {
            if let Err(e) = self.0.machine.update_tracked_users([user.as_ref()]).await {
                warn!(error = %Chain(&e), "cannot track a member's devices");
            }
            self.0.wake.notify_one();
        }
    }
}

impl Crypto {
    /// Whether events sent into the room must be encrypted: known from the sync, else asked
    /// of the homeserver once per room.
    pub async fn is_encrypted(
        &self,
        client: &MatrixClient,
        room_id: &str,
    ) -> Result<bool, MatrixError> {
        let id = RoomId::parse(room_id)
            .map_err(|e| crypto_err(format!("bad room id {room_id}"))(boxed(e)))?;
        let known = self.0.rooms.lock().ok().and_then(|r| {
            r.get(&id)
                .filter(|i| i.encrypted || i.checked)
                .map(|i| i.encrypted)
        });
        if let Some(encrypted) = known {
            return Ok(encrypted);
        }
        let encrypted = client.room_encryption(room_id).await?.is_some();
        if let Ok(mut rooms) = self.0.rooms.lock() {
            let info = rooms.entry(id).or_default();
            info.encrypted |= encrypted;
            info.checked = true;
        }
        Ok(encrypted)
    }

    /// Makes sure every device in the room holds our current room key: tracks the members,
    /// fetches their device keys, claims one-time keys for new devices and shares the key.
    /// Run when an invite arrives, so the answer is not held up by these round trips.
    pub async fn prepare(&self, client: &MatrixClient, room_id: &str) -> Result<(), MatrixError> {
        let room = RoomId::parse(room_id)
            .map_err(|e| crypto_err(format!("bad room id {room_id}"))(boxed(e)))?;
        let _one = self.0.sharing.lock().await;
        let members = self.members(client, &room).await?;
        let m = &self.0.machine;
        track(m, &members)
            .await
            .map_err(|e| crypto_err("cannot track the room's members")(boxed(e)))?;
        self.flush(client).await?;
        if let Some((id, claim)) = missing_sessions(m, &members)
            .await
            .map_err(|e| crypto_err("cannot list missing sessions")(boxed(e)))?
        {
            let resp = client.ruma(claim).await?;
            m.mark_request_as_sent(&id, &resp)
                .await
                .map_err(|e| crypto_err("cannot record claimed keys")(boxed(e)))?;
        }
        let settings = EncryptionSettings {
            sharing_strategy: self.0.strategy.clone(),
            ..Default::default()
        };
        let shares = share(m, &room, &members, settings)
            .await
            .map_err(|e| crypto_err("cannot share the room key")(boxed(e)))?;
        for share in shares {
            match send_share(client, &share).await {
                Ok(resp) => {
                    let _ = m.mark_request_as_sent(&share.txn_id, &resp).await;
                }
                Err(e) => {
                    // A key that reached only some devices would leave the others unable to
                    // read us; the next send shares a fresh one.
                    let _ = m.discard_room_key(&room).await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn members(
        &self,
        client: &MatrixClient,
        room: &RoomId,
    ) -> Result<Vec<OwnedUserId>, MatrixError> {
        if let Some(m) = self
            .0
            .rooms
            .lock()
            .ok()
            .and_then(|r| r.get(room).and_then(|i| i.members.clone()))
        {
            return Ok(m);
        }
        let joined = client.joined_members(room.as_str()).await?;
        let members: Vec<OwnedUserId> = joined
            .keys()
            .filter_map(|u| UserId::parse(u).ok())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if let Ok(mut rooms) = self.0.rooms.lock() {
            rooms.entry(room.to_owned()).or_default().members = Some(members.clone());
        }
        Ok(members)
    }

    /// Encrypts one event's content for the room: the `m.room.encrypted` content to send.
    /// The future is boxed with owned inputs: the crate's futures hold references whose
    /// lifetimes the compiler cannot prove `Send` across our spawned tasks otherwise.
    pub fn encrypt(
        &self,
        client: &MatrixClient,
        room_id: &str,
        event_type: &str,
        content: &Value,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, MatrixError>> + Send>>
    {
        let (me, client) = (self.clone(), client.clone());
        let (room_id, event_type, content) =
            (room_id.to_owned(), event_type.to_owned(), content.clone());
        Box::pin(async move {
            me.prepare(&client, &room_id).await?;
            me.seal_prepared(&room_id, &event_type, content).await
        })
    }

    async fn seal_prepared(
        &self,
        room_id: &str,
        event_type: &str,
        content: Value,
    ) -> Result<Value, MatrixError> {
        let room = RoomId::parse(room_id)
            .map_err(|e| crypto_err(format!("bad room id {room_id}"))(boxed(e)))?;
        let raw = Raw::new(&content)
            .map_err(|e| crypto_err("cannot encode the content")(boxed(e)))?
            .cast_unchecked();
        let out = self
            .0
            .machine
            .encrypt_room_event_raw(&room, event_type, &raw)
            .await
            .map_err(|e| crypto_err(format!("cannot encrypt {event_type}"))(boxed(e)))?;
        serde_json::from_str(out.content.json().get())
            .map_err(|e| crypto_err("cannot read the encrypted content")(boxed(e)))
    }
}

type SendFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

// The three wrappers below only box the crate's futures: with an iterator of borrowed user
// ids inside, the compiler cannot otherwise prove the callers' futures `Send` (rust#64552).

fn track<'a>(
    m: &'a OlmMachine,
    users: &'a [OwnedUserId],
) -> SendFuture<'a, Result<(), matrix_sdk_crypto::CryptoStoreError>> {
    Box::pin(m.update_tracked_users(users.iter().map(|u| u.as_ref())))
}

fn missing_sessions<'a>(
    m: &'a OlmMachine,
    users: &'a [OwnedUserId],
) -> SendFuture<
    'a,
    Result<
        Option<(
            ruma::OwnedTransactionId,
            ruma::api::client::keys::claim_keys::v3::Request,
        )>,
        matrix_sdk_crypto::CryptoStoreError,
    >,
> {
    Box::pin(m.get_missing_sessions(users.iter().map(|u| u.as_ref())))
}

/// Sends one room key share, again with the same transaction id while the failure is
/// transient: a reply lost after the homeserver delivered it then costs nothing (the
/// homeserver drops the repeat), where a fresh key would reach every device a second time.
async fn send_share(
    client: &MatrixClient,
    share: &matrix_sdk_crypto::types::requests::ToDeviceRequest,
) -> Result<send_event_to_device::v3::Response, MatrixError> {
    const TRIES: u32 = 3;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    let mut attempt = 1;
    loop {
        let req = send_event_to_device::v3::Request::new_raw(
            share.event_type.clone(),
            share.txn_id.clone(),
            share.messages.clone(),
        );
        match client.ruma(req).await {
            Err(e) if attempt < TRIES && e.is_transient() => {
                let wait = e.retry_after().unwrap_or_else(|| backoff.next_wait());
                debug!(error = %Chain(&e), ?wait, "room key share failed; sending it again");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

fn share<'a>(
    m: &'a OlmMachine,
    room: &'a RoomId,
    users: &'a [OwnedUserId],
    settings: EncryptionSettings,
) -> SendFuture<
    'a,
    Result<
        Vec<Arc<matrix_sdk_crypto::types::requests::ToDeviceRequest>>,
        matrix_sdk_crypto::OlmError,
    >,
> {
    Box::pin(m.share_room_key(room, users.iter().map(|u| u.as_ref()), settings))
}
