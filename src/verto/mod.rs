//! FreeSWITCH mod_verto client. Knows nothing of Matrix.
//!
//! - [`rpc`]: pure JSON-RPC framing and classification.
//! - [`cause`]: FreeSWITCH's hangup causes, by name and code.
//! - [`client`]: the connection actor, its handle and the events it publishes.
//! - [`messages`]: the typed requests we send and the FreeSWITCH events we read.

pub mod cause;
pub mod client;
pub mod messages;
pub mod rpc;

pub use cause::Cause;
pub use client::{spawn, spawn_received, Received, VertoError, VertoEvent, VertoHandle};
