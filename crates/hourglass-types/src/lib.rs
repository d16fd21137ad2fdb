//! Domain types of Hourglass: timer identity and definition, input validation, the pinned
//! partition hash, replica placement, the replicated commands, and the openraft type config.
//!
//! Everything here is pure: no I/O, no clocks. Callers pass time in as milliseconds since the
//! Unix epoch.

mod error;
pub mod placement;
pub mod raft;
mod timer;

pub use error::{Error, Result};
pub use placement::{partition_for, Placement};
pub use raft::{Command, CommandResponse, NodeId, TypeConfig};
pub use timer::{
    validate_queue, validate_timer_key, Limits, TimerDefinition, TimerKey, TimerRecord, TimerState,
    DEFAULT_QUEUE, MAX_ID_BYTES, MAX_QUEUE_BYTES,
};
