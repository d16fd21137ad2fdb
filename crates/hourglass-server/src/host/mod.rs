//! The multi-raft host: every partition replica of this node as one openraft group over the
//! node's single RocksDB, log syncer and peer connections.
//!
//! Start-up checks the node's identity against what it recorded ([`identity`]), opens its
//! groups ([`groups`]), initializes the groups it is first replica of ([`bootstrap`]), and
//! runs each partition's timer engine while this node leads it ([`leadership`]).

mod bootstrap;
mod groups;
mod identity;
mod leadership;
mod snapshots;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use hourglass_storage::{ClusterMeta, Store};
use hourglass_types::{NodeId, Placement};
use tracing::warn;

use self::groups::GroupSlot;
use crate::clock::{ClockConfig, SystemTimeSource, TimeSource};
use crate::clock_probe::{self, NodeClock};
use crate::config::NodeConfig;
use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::network::Peers;
use crate::tls::Tls;

/// Shared state of a running node.
pub struct Host {
    pub node_id: NodeId,
    pub config: NodeConfig,
    pub store: Store,
    pub peers: Arc<Peers>,
    /// Set once start-up checks pass; Raft RPCs that arrive earlier are refused as unavailable.
    meta: OnceLock<ClusterMeta>,
    groups: OnceLock<HashMap<u32, GroupSlot>>,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    /// Cluster time: this node's clock checked against its peers'.
    pub clock: Arc<NodeClock>,
    stopping: AtomicBool,
}

impl Host {
    pub fn open(config: NodeConfig) -> Result<Arc<Self>> {
        let store = Store::open_with(&config.data_dir, &config.storage)?;
        let metrics = Arc::new(Metrics::new(config.node_id));
        let clock = Arc::new(NodeClock::new(
            config.node_id,
            SystemTimeSource::default(),
            ClockConfig {
                max_offset_ms: config.max_clock_offset_ms,
                ..ClockConfig::default()
            },
        ));
        let members: Vec<NodeId> = config.node_ids().into_iter().collect();
        let dispatch_clock = Arc::clone(&clock);
        // Deliveries are stamped with cluster time; a lone wall clock only when that is unknown.
        let delivery_time = Box::new(move || {
            dispatch_clock
                .now_ms(&members)
                .unwrap_or_else(|| dispatch_clock.source().wall_ms())
        });
        let host = Host {
            node_id: config.node_id,
            peers: Arc::new(Peers::new(&config.peers, Tls::load(&config.tls)?)),
            store,
            meta: OnceLock::new(),
            groups: OnceLock::new(),
            dispatcher: Arc::new(Dispatcher::new(
                config.ack_timeout(),
                Duration::from_millis(config.timers.idle_stream_timeout_ms()),
                Arc::clone(&metrics),
                delivery_time,
            )),
            clock,
            metrics,
            stopping: AtomicBool::new(false),
            config,
        };
        if let Some(meta) = identity::stored(&host.store, &host.config)? {
            host.meta.set(meta).expect("meta is set once");
        }
        Ok(Arc::new(host))
    }

    /// Cluster time over every node: what a `delay` is resolved against. UNAVAILABLE while
    /// fewer than a majority of the nodes' clocks are known (this node's own clock alone could
    /// be wrong by any amount).
    pub fn cluster_now(&self) -> Result<u64> {
        let members: Vec<NodeId> = self.config.node_ids().into_iter().collect();
        self.clock.now_ms(&members).ok_or_else(|| {
            Error::ClockUnknown(format!(
                "node {} knows the clocks of fewer than a majority of the {} nodes",
                self.node_id,
                members.len()
            ))
        })
    }

    /// Whether this node's clock disagrees with a majority of the cluster beyond the bound.
    pub fn clock_out_of_bounds(&self) -> bool {
        self.clock.out_of_bounds(self.config.peers.len())
    }

    /// The replicas of `partition`, whose clocks make its time.
    pub fn replicas(&self, partition: u32) -> Vec<NodeId> {
        self.placement()
            .and_then(|p| p.replicas.get(partition as usize).cloned())
            .unwrap_or_default()
    }

    /// True once this node's identity is recorded (it answers peers' hellos as ready).
    pub fn is_ready(&self) -> bool {
        self.meta.get().is_some()
    }

    pub fn placement(&self) -> Option<&Placement> {
        self.meta.get().map(|m| &m.placement)
    }

    /// Start-up: records the cluster identity on first start (refusing a wiped node), creates
    /// this node's groups, and bootstraps the groups it is responsible for.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        if self.meta.get().is_none() {
            let meta = self.record_identity().await?;
            let _ = self.meta.set(meta);
        }
        let meta = self.meta.get().expect("set above");
        identity::warn_if_placement_differs(self.node_id, meta, &self.config);
        #[cfg(feature = "fault-injection")]
        leadership::warn_if_faults_injected(self.node_id, &self.config.fault);
        let groups = self.open_groups(meta).await?;
        let _ = self.groups.set(groups);
        let host = Arc::clone(self);
        tokio::spawn(async move { host.bootstrap().await });
        for (partition, _) in self.groups() {
            tokio::spawn(Arc::clone(self).lead(partition));
            tokio::spawn(Arc::clone(self).snapshot_when_log_grows(partition));
        }
        let host = Arc::clone(self);
        tokio::spawn(async move { host.expire_acks().await });
        Ok(())
    }

    /// Starts probing the peers' clocks; before the groups, so that cluster time is known by
    /// the time a leader is elected.
    pub fn start_clock(self: &Arc<Self>) {
        let host = Arc::clone(self);
        tokio::spawn(async move {
            clock_probe::run(
                host.node_id,
                Arc::clone(&host.clock),
                Arc::clone(&host.peers),
                host.config.node_ids().into_iter().collect(),
                Arc::clone(&host.metrics),
                || host.stopping.load(Ordering::Relaxed),
            )
            .await
        });
    }

    async fn expire_acks(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            self.dispatcher.expire(std::time::Instant::now());
        }
    }

    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for (partition, raft) in self.groups() {
            if let Err(e) = raft.shutdown().await {
                warn!(node_id = self.node_id, partition, error = %e, "group shutdown failed");
            }
        }
    }
}

/// Waits between attempts to reach peers that are still starting: exponential from 100 ms to
/// 1 s, each wait stretched by a random part of itself (up to twice as long) so nodes started
/// together do not ask in lockstep.
fn peer_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(PEER_WAIT_MIN)
        .with_max_delay(PEER_WAIT_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

const PEER_WAIT_MIN: Duration = Duration::from_millis(100);
const PEER_WAIT_MAX: Duration = Duration::from_secs(1);

fn next_wait(backoff: &mut impl Iterator<Item = Duration>) -> Duration {
    backoff.next().unwrap_or(PEER_WAIT_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_waits_grow_with_jitter_and_stay_bounded() {
        let waits: Vec<Duration> = peer_backoff().take(40).collect();
        assert_eq!(waits.len(), 40, "the waits never run out");
        assert!(waits[0] >= PEER_WAIT_MIN && waits[0] < 2 * PEER_WAIT_MIN);
        assert!(waits.iter().all(|w| *w < 2 * PEER_WAIT_MAX), "{waits:?}");
        assert!(waits[10..].iter().all(|w| *w >= PEER_WAIT_MAX), "{waits:?}");
        // Jittered: two nodes starting together wait differently.
        let other: Vec<Duration> = peer_backoff().take(40).collect();
        assert_ne!(waits, other);
    }
}
