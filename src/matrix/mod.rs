//! Matrix client-server side. Knows nothing of verto.
//!
//! - [`client`]: the HTTP calls, error classification, reliable sending.
//! - [`sync`]: login, the `/sync` loop and auto-join.
//! - [`events`]: typed `m.call.*` and membership events from the timeline.

pub mod client;
pub mod events;
pub mod sync;

pub use client::{MatrixClient, MatrixError, Session};
