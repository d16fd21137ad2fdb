//! RocksDB storage for Hourglass: one database per node holding the Raft logs and state
//! machines of every partition replica on that node.
//!
//! - [`keys`] defines the column families and every key layout.
//! - [`Store`] opens the database and offers typed reads of timers and node metadata.
//! - [`LogStore`] is a partition's openraft log; appends of all partitions share one fsync
//!   through the node's [`LogSyncer`].
//! - [`StateMachine`] applies a partition's commands and builds and installs its snapshots.

mod codec;
mod error;
pub mod keys;
mod log_store;
mod state_machine;
mod store;
mod syncer;

pub use error::{Error, Result};
pub use log_store::{LogGrowth, LogStore, REPLICATION_READ_BYTES};
pub use state_machine::{ApplyObserver, StateMachine, TimerEvent, TimerEvents};
pub use store::{
    ClusterMeta, DueEntry, FiredEntry, PartitionState, Store, StoreMemory, StoreOptions,
    TombstoneEntry, WeakStore,
};
pub use syncer::{FlushObserver, LogSyncer, SyncStats};
