//! The only layer that knows both Matrix and verto: one state machine and one task per call.
//!
//! - [`machine`]: the sans-IO [`machine::Call`] with its states, inputs and actions.
//! - [`actor`]: the task that drives a machine and performs its actions.
//! - [`cause`]: hangup reason ↔ FreeSWITCH cause tables.

pub mod actor;
pub mod cause;
pub mod machine;
