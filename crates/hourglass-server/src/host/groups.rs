//! This node's partition replicas: one openraft group each, sharing the store and one log
//! writer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hourglass_storage::{ClusterMeta, LogGrowth, LogStore, LogSyncer, StateMachine, TimerEvents};
use openraft::Raft;
use tracing::{info, Instrument};

use super::Host;
use crate::error::{Error, Result};
use crate::group::Group;
use crate::network::GroupNetworkFactory;
use crate::stages::{flush_stage, RaftStage};

/// Schedule changes buffered per partition before a slow engine must reload its window (a
/// bounded scan of the due index). The ring is allocated whole at start, about 90 bytes a
/// slot, and fills with the ids it carries: 8,192 holds eight full `Fire` or `ScheduleBatch`
/// entries for about 12 MiB over 16 partitions (65,536 took 92 MiB).
const EVENT_BUFFER: usize = 8_192;

/// One partition replica on this node.
#[derive(Clone)]
pub(super) struct GroupSlot {
    pub raft: Group,
    pub events: TimerEvents,
    /// Timers in the engine's wheel while this node leads; 0 otherwise.
    pub in_memory: Arc<AtomicU64>,
    /// What the group's log store has appended, for snapshots by size.
    pub growth: LogGrowth,
}

impl Host {
    pub fn group(&self, partition: u32) -> Option<&Group> {
        self.slot(partition).map(|g| &g.raft)
    }

    pub fn groups(&self) -> impl Iterator<Item = (u32, &Group)> {
        self.groups
            .get()
            .into_iter()
            .flat_map(|g| g.iter().map(|(p, slot)| (*p, &slot.raft)))
    }

    /// Timers of `partition` held in memory by this node's engine.
    pub fn timers_in_memory(&self, partition: u32) -> u64 {
        self.slot(partition)
            .map(|slot| slot.in_memory.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    pub(super) fn slot(&self, partition: u32) -> Option<&GroupSlot> {
        self.groups.get()?.get(&partition)
    }

    /// Creates the group of every partition `meta` places on this node.
    pub(super) async fn open_groups(&self, meta: &ClusterMeta) -> Result<HashMap<u32, GroupSlot>> {
        let raft_config = Arc::new(self.config.openraft_config()?);
        let flushes = Arc::clone(&self.metrics);
        let node_id = self.node_id;
        let syncer = LogSyncer::observed(
            &self.store,
            Box::new(move |leader, took| {
                if let Some(stage) = flush_stage(node_id, leader) {
                    flushes.raft_stages.observe(stage, took);
                }
            }),
        );
        // Only the groups hold the writer itself, so that it (and the database it uses) ends
        // when they shut down; the metrics keep its counters.
        self.metrics.count_wal(syncer.stats());
        self.metrics.watch_store(&self.store);
        let mut groups = HashMap::new();
        for partition in meta.placement.partitions_of(self.node_id) {
            let network = GroupNetworkFactory {
                partition,
                peers: Arc::clone(&self.peers),
                metrics: Arc::clone(&self.metrics),
            };
            let applies = Arc::clone(&self.metrics);
            let events = tokio::sync::broadcast::channel(EVENT_BUFFER).0;
            let log = LogStore::new(self.store.clone(), partition, syncer.clone());
            let growth = log.growth();
            let raft = Raft::new(
                self.node_id,
                Arc::clone(&raft_config),
                network,
                log,
                StateMachine::open(self.store.clone(), partition, events.clone())?.observe_apply(
                    Arc::new(move |took| applies.raft_stages.observe(RaftStage::Apply, took)),
                ),
            )
            .instrument(tracing::info_span!(
                "group",
                node_id = self.node_id,
                partition
            ))
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
            groups.insert(
                partition,
                GroupSlot {
                    raft,
                    events,
                    in_memory: Arc::new(AtomicU64::new(0)),
                    growth,
                },
            );
        }
        info!(
            node_id = self.node_id,
            groups = groups.len(),
            "raft groups started"
        );
        Ok(groups)
    }
}
