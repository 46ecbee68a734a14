//! The only layer that knows both Matrix and verto: one state machine and one task per call.
//!
//! - [`machine`]: the sans-IO [`machine::Call`] with its states, inputs and actions.
//! - [`actor`]: the task that drives a machine and performs its actions.
//! - [`cause`]: hangup reason ↔ FreeSWITCH cause tables.
//! - [`route`]: routes, caller ids, access globs.
//! - [`command`]: `!help`, `!dtmf`, `!dial`.
//! - [`store`]: answered calls kept across restarts.
//! - [`inbound`]: which Matrix user a call from FreeSWITCH rings.
//! - [`room`]: the room it rings in.

pub mod actor;
pub mod cause;
pub mod command;
pub mod inbound;
pub mod machine;
#[cfg(test)]
mod paused_tests;
pub mod room;
pub mod route;
pub mod store;
