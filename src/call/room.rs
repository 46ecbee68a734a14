//! Where an inbound call rings: the bot's 1:1 room with the user, remembered in
//! `state_dir/rooms.json`, else one found among the bot's rooms, else a new direct chat. The
//! call rings once the user has joined it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::route::is_one_to_one;
use crate::chain::Chain;
use crate::matrix::MatrixClient;
use crate::state::SavedMap;

/// The 1:1 room of each user the bot has rung, by user id.
pub type RoomStore = SavedMap<String>;

/// Its file name in `state_dir`.
pub const FILE: &str = "rooms.json";

/// How many of the bot's rooms are looked at for an existing 1:1 room: each costs a request.
const SCAN_LIMIT: usize = 100;

/// How often the user's join is checked while the new room waits for it.
const JOIN_POLL: Duration = Duration::from_millis(500);

/// What the user's membership in a remembered room allows.
enum Known {
    /// Joined with the bot alone: ring there.
    Ready,
    /// Only the bot is left: invite the user again and wait.
    Reinvite,
    /// Gone, or someone else joined: find another room.
    Unusable,
}

/// The room to ring `user` in, joined by them, or why there is none by `until`.
pub async fn find_or_create(
    matrix: &MatrixClient,
    store: &Mutex<RoomStore>,
    user: &str,
    bot: &str,
    until: Instant,
) -> Result<String, String> {
    let saved = store.lock().ok().and_then(|s| s.get(user));
    if let Some(room) = saved {
        match check(matrix, &room, user, bot).await {
            Known::Ready => return Ok(room),
            Known::Reinvite => {
                if let Err(e) = matrix.invite(&room, user).await {
                    debug!(error = %Chain(&e), "re-invite failed (the user may still be invited)");
                }
                return wait_joined(matrix, &room, user, until).await.map(|_| room);
            }
            Known::Unusable => {
                info!(%room, "the remembered room is no longer a 1:1 with the user");
                remember(store, user, None);
            }
        }
    }
    if let Some(room) = scan(matrix, user, bot).await {
        remember(store, user, Some(&room));
        return Ok(room);
    }
    let room = matrix
        .create_direct_room(user)
        .await
        .map_err(|e| format!("cannot create a direct chat: {}", Chain(&e)))?;
    info!(%room, %user, "created a direct chat to ring the user in");
    remember(store, user, Some(&room));
    if let Err(e) = matrix.add_direct(bot, user, &room).await {
        warn!(error = %Chain(&e), "cannot list the new room in m.direct");
    }
    wait_joined(matrix, &room, user, until).await.map(|_| room)
}

fn remember(store: &Mutex<RoomStore>, user: &str, room: Option<&str>) {
    if let Ok(mut s) = store.lock() {
        s.set(user, room.map(str::to_owned));
    }
}

async fn check(matrix: &MatrixClient, room: &str, user: &str, bot: &str) -> Known {
    match matrix.joined_members(room).await {
        Ok(m) if is_one_to_one(&m, user, bot) => Known::Ready,
        Ok(m) if m.len() == 1 && m.contains_key(bot) => Known::Reinvite,
        Ok(_) => Known::Unusable,
        // The bot left or was removed (403), or the homeserver hiccuped: look elsewhere.
        Err(e) => {
            debug!(error = %Chain(&e), "cannot read the remembered room's members");
            Known::Unusable
        }
    }
}

/// A room the bot already shares with the user alone (e.g. the one they call the bot from).
async fn scan(matrix: &MatrixClient, user: &str, bot: &str) -> Option<String> {
    let rooms = match matrix.joined_rooms().await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %Chain(&e), "cannot list the bot's rooms");
            return None;
        }
    };
    for room in rooms.into_iter().take(SCAN_LIMIT) {
        if let Ok(m) = matrix.joined_members(&room).await {
            if is_one_to_one(&m, user, bot) {
                debug!(%room, "found a 1:1 room with the user");
                return Some(room);
            }
        }
    }
    None
}

/// Polls the members until the user has joined; the user's client joins when they accept the
/// invite, which may take the whole ring time.
async fn wait_joined(
    matrix: &MatrixClient,
    room: &str,
    user: &str,
    until: Instant,
) -> Result<(), String> {
    loop {
        if let Ok(m) = matrix.joined_members(room).await {
            if m.contains_key(user) {
                info!(%room, "the user joined");
                return Ok(());
            }
        }
        if Instant::now() + JOIN_POLL >= until {
            return Err("the user did not join the direct chat in time".into());
        }
        tokio::time::sleep(JOIN_POLL).await;
    }
}
