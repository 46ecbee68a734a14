//! Matrix client-server side. Knows nothing of verto.
//!
//! - [`client`]: the HTTP calls, error classification, reliable sending.
//! - [`sync`]: login, the `/sync` loop and auto-join.
//! - [`crypto`]: end-to-end encryption (decrypting what arrives, encrypting what we send).
//! - [`events`]: typed `m.call.*` and membership events from the timeline.
//! - [`rooms`]: direct chats the bot opens itself (to ring a user).
//! - [`room_facts`]: rooms' members and join rules, kept from answers and the sync.

pub mod client;
pub mod crypto;
pub mod events;
pub mod room_facts;
pub mod rooms;
pub mod sync;

pub use client::{MatrixClient, MatrixError, Session};

/// The server name of a user id: `@local:server` → `server`. Only the first colon splits, as
/// the server name may carry a port. A malformed id has none (empty), so it matches no server
/// pattern.
pub fn server_name(user_id: &str) -> &str {
    user_id.split_once(':').map_or("", |(_, s)| s)
}
