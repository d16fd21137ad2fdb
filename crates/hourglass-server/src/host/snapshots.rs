//! Each replica snapshots its partition when its Raft log has grown by enough bytes, not only
//! after `raft.snapshot_after_logs` entries: entries range from one cancel to a batch of
//! thousands of timers, so a count alone let the log of a busy node hold minutes of history
//! (hundreds of MiB) before it was purged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::LogId;
use tracing::{debug, warn};

use super::groups::GroupSlot;
use super::Host;
use hourglass_types::NodeId;

/// How often each replica compares its log's growth with its last snapshot.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether a log that has grown by `grown` bytes since the last snapshot, whose file holds
/// `snapshot_bytes`, is due for a new one: at `min_bytes`, or at half the snapshot's size when
/// that is more, so that however large the partition, snapshots cost at most twice the log
/// they purge, and the log stays within half the state plus `min_bytes`.
pub(super) fn snapshot_due(grown: u64, snapshot_bytes: u64, min_bytes: u64) -> bool {
    grown >= min_bytes.max(snapshot_bytes / 2)
}

impl Host {
    /// Triggers a snapshot of `partition` whenever [`snapshot_due`] says so, until the node
    /// stops.
    pub(super) async fn snapshot_when_log_grows(self: Arc<Self>, partition: u32) {
        let Some(GroupSlot { raft, growth, .. }) = self.slot(partition).cloned() else {
            return;
        };
        let min_bytes = self.config.raft.snapshot_after_log_bytes;
        let metrics = raft.metrics();
        // Log bytes appended when the snapshot last seen was taken (or asked for).
        let mut since = growth.bytes();
        let mut last: Option<LogId<NodeId>> = metrics.borrow().snapshot;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            let snapshot = metrics.borrow().snapshot;
            if snapshot != last {
                // Built by openraft's own policy, or installed from the leader.
                last = snapshot;
                since = growth.bytes();
            }
            let grown = growth.bytes().saturating_sub(since);
            // Never due below the minimum: the store is read only once the log reaches it.
            if grown < min_bytes {
                continue;
            }
            let snapshot_bytes = match self.store.snapshot_bytes(partition) {
                Ok(b) => b,
                Err(e) => {
                    warn!(partition, error = %e, "cannot read the snapshot's size");
                    continue;
                }
            };
            if !snapshot_due(grown, snapshot_bytes, min_bytes) {
                continue;
            }
            debug!(
                partition,
                log_bytes = grown,
                snapshot_bytes,
                "log grown: snapshot"
            );
            if let Err(e) = raft.trigger().snapshot().await {
                // The group is shutting down.
                debug!(partition, error = %e, "snapshot not triggered");
                return;
            }
            since = growth.bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn a_snapshot_is_due_at_the_minimum_or_half_the_state_whichever_is_more() {
        const MIN: u64 = 4 << 20;
        // A small partition: every MIN bytes of log.
        assert!(!snapshot_due(MIN - 1, 1 << 20, MIN));
        assert!(snapshot_due(MIN, 1 << 20, MIN));
        assert!(snapshot_due(MIN, 0, MIN), "no snapshot yet");
        // A large one: when the log reaches half its snapshot.
        assert!(!snapshot_due(MIN, 1 << 30, MIN));
        assert!(!snapshot_due((1 << 29) - 1, 1 << 30, MIN));
        assert!(snapshot_due(1 << 29, 1 << 30, MIN));
        assert!(snapshot_due(u64::MAX, u64::MAX, u64::MAX));
    }
}
