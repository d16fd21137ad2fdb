//! An Hourglass node: the multi-raft host over one RocksDB, the Raft transport over gRPC, and
//! the public `Timers` and `Admin` services with forwarding to partition leaders.

// tonic's service traits return `Status` by value; boxing it in our helpers would only add
// conversions at every call.
#![allow(clippy::result_large_err)]

mod admin;
pub mod auth;
mod client_auth;
pub mod clock;
mod clock_probe;
mod combine;
pub mod config;
mod convert;
mod dispatch;
mod engine;
mod error;
#[cfg(test)]
mod fuzz;
mod group;
mod host;
mod http;
mod metrics;
mod network;
mod node;
mod routing;
mod stages;
pub mod status;
mod timers;
pub mod tls;
mod transport;
mod workers;

pub use config::{NodeConfig, Peer, RaftConfig, TimersConfig};
pub use error::{Error, Result};
pub use metrics::{NAMESPACE, STAGE_HISTOGRAMS};
pub use node::Node;
