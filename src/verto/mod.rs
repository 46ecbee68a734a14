//! FreeSWITCH mod_verto client. Knows nothing of Matrix.
//!
//! - [`rpc`]: pure JSON-RPC framing and classification.
//! - [`client`]: the connection actor, its handle and the events it publishes.
//! - [`messages`]: the typed requests we send and the FreeSWITCH events we read.

pub mod client;
pub mod messages;
pub mod rpc;

pub use client::{spawn, VertoError, VertoEvent, VertoHandle};
