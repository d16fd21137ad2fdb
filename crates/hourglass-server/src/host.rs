//! The multi-raft host: every partition replica of this node as one openraft group over the
//! node's single RocksDB, log syncer and peer connections.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use hourglass_proto::internal::HelloRequest;
use hourglass_storage::{ClusterMeta, LogStore, LogSyncer, StateMachine, Store, TimerEvents};
use hourglass_types::{NodeId, Placement, TypeConfig};
use openraft::{BasicNode, Raft};
use tracing::{info, warn, Instrument};

use crate::clock::{ClockConfig, SystemTimeSource, TimeSource};
use crate::clock_probe::{self, NodeClock};
use crate::config::NodeConfig;
use crate::dispatch::Dispatcher;
use crate::engine;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::network::{GroupNetworkFactory, Peers};
use crate::tls::Tls;

/// Schedule changes buffered per partition before a slow engine must reload its window (a
/// bounded scan of the due index). The ring is allocated whole at start, about 90 bytes a
/// slot, and fills with the ids it carries: 8,192 holds eight full `Fire` or `ScheduleBatch`
/// entries for about 12 MiB over 16 partitions (65,536 took 92 MiB).
const EVENT_BUFFER: usize = 8_192;

pub type Group = Raft<TypeConfig>;

/// One partition replica on this node.
#[derive(Clone)]
struct GroupSlot {
    raft: Group,
    events: TimerEvents,
    /// Timers in the engine's wheel while this node leads; 0 otherwise.
    in_memory: Arc<AtomicU64>,
}

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
        let store = Store::open(&config.data_dir)?;
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
        if let Some(meta) = host.store.cluster_meta()? {
            host.store
                .check_meta(&meta, host.node_id, host.config.partitions)?;
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

    pub fn group(&self, partition: u32) -> Option<&Group> {
        self.groups.get()?.get(&partition).map(|g| &g.raft)
    }

    pub fn groups(&self) -> impl Iterator<Item = (u32, &Group)> {
        self.groups
            .get()
            .into_iter()
            .flat_map(|g| g.iter().map(|(p, slot)| (*p, &slot.raft)))
    }

    /// Timers of `partition` held in memory by this node's engine.
    pub fn timers_in_memory(&self, partition: u32) -> u64 {
        self.groups
            .get()
            .and_then(|g| g.get(&partition))
            .map(|slot| slot.in_memory.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Start-up: records the cluster identity on first start (refusing a wiped node), creates
    /// this node's groups, and bootstraps the groups it is responsible for.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        if self.meta.get().is_none() {
            let placement = Placement::compute(
                self.config.partitions,
                &self.config.node_ids(),
                self.config.replication_factor,
            )?;
            let fences = match self.check_not_wiped().await {
                Err(Error::WipedNode { .. }) if self.config.rejoin => {
                    self.vote_fences(&placement).await?
                }
                other => {
                    other?;
                    Vec::new()
                }
            };
            let syncer = LogSyncer::start(&self.store);
            for (partition, term) in &fences {
                // In every term up to the cluster's highest, act as if this node already voted:
                // whatever it voted before its data was lost, it cannot vote twice.
                let mut log = LogStore::new(self.store.clone(), *partition, syncer.clone());
                openraft::storage::RaftLogStorage::save_vote(
                    &mut log,
                    &openraft::Vote::new(*term, self.node_id),
                )
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
            }
            if !fences.is_empty() {
                warn!(
                    node_id = self.node_id,
                    partitions = fences.len(),
                    "rejoining with lost data: votes fenced, catching up from the leaders"
                );
            }
            let meta = ClusterMeta {
                node_id: self.node_id,
                partitions: self.config.partitions,
                replication_factor: self.config.replication_factor,
                placement,
            };
            self.store.write_cluster_meta(&meta)?;
            let _ = self.meta.set(meta);
            info!(node_id = self.node_id, "cluster identity recorded");
        }
        let meta = self.meta.get().expect("set above");
        let expected = Placement::compute(
            meta.partitions,
            &self.config.node_ids(),
            meta.replication_factor,
        )
        .ok();
        if expected.as_ref() != Some(&meta.placement) {
            warn!(
                node_id = self.node_id,
                "configured peers differ from the recorded placement; keeping the recorded placement"
            );
        }
        let raft_config = Arc::new(self.config.openraft_config()?);
        let engine_config = self.config.engine_config();
        if engine_config.lose_fired_fraction > 0.0 {
            warn!(
                node_id = self.node_id,
                fraction = engine_config.lose_fired_fraction,
                "FAULT INJECTION ACTIVE: fired timers will be lost on purpose"
            );
        }
        if engine_config.early_fire_ms > 0 {
            warn!(
                node_id = self.node_id,
                early_ms = engine_config.early_fire_ms,
                "FAULT INJECTION ACTIVE: timers will fire early on purpose"
            );
        }
        let syncer = LogSyncer::start(&self.store);
        // Only the groups hold the writer itself, so that it (and the database it uses) ends
        // when they shut down; the metrics keep its counters.
        self.metrics.count_wal(syncer.stats());
        self.metrics.watch_store(&self.store);
        let mut groups = HashMap::new();
        for partition in meta.placement.partitions_of(self.node_id) {
            let network = GroupNetworkFactory {
                partition,
                peers: Arc::clone(&self.peers),
            };
            let events = tokio::sync::broadcast::channel(EVENT_BUFFER).0;
            let raft = Raft::new(
                self.node_id,
                Arc::clone(&raft_config),
                network,
                LogStore::new(self.store.clone(), partition, syncer.clone()),
                StateMachine::open(self.store.clone(), partition, events.clone())?,
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
                },
            );
        }
        info!(
            node_id = self.node_id,
            groups = groups.len(),
            "raft groups started"
        );
        let _ = self.groups.set(groups);
        let host = Arc::clone(self);
        tokio::spawn(async move { host.bootstrap().await });
        for (partition, _) in self.groups() {
            tokio::spawn(Arc::clone(self).lead(partition));
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

    /// Runs the partition's timer engine exactly while this node leads the partition.
    async fn lead(self: Arc<Self>, partition: u32) {
        let Some(GroupSlot {
            raft: group,
            events,
            in_memory,
        }) = self.groups.get().and_then(|g| g.get(&partition)).cloned()
        else {
            return;
        };
        let mut metrics = group.metrics();
        let mut running: Option<(
            tokio::sync::watch::Sender<bool>,
            tokio::task::JoinHandle<()>,
        )> = None;
        let (mut last_leader, mut last_snapshot) = (None, None);
        loop {
            let leading = {
                let m = metrics.borrow();
                if m.current_leader != last_leader {
                    if m.current_leader.is_some() {
                        self.metrics.raft_leader_changes.inc();
                    }
                    last_leader = m.current_leader;
                }
                if m.snapshot != last_snapshot {
                    if m.snapshot.is_some() {
                        self.metrics.raft_snapshots.inc();
                    }
                    last_snapshot = m.snapshot;
                }
                m.current_leader == Some(self.node_id) && m.state.is_leader()
            };
            if running.as_ref().is_some_and(|(_, task)| task.is_finished()) {
                running = None;
            }
            match (leading, running.is_some()) {
                (true, false) => {
                    let (stop, stopped) = tokio::sync::watch::channel(false);
                    let context = engine::EngineContext {
                        partition,
                        group: group.clone(),
                        store: self.store.clone(),
                        events: events.clone(),
                        dispatcher: Arc::clone(&self.dispatcher),
                        metrics: Arc::clone(&self.metrics),
                        config: self.config.engine_config(),
                        clock: Arc::clone(&self.clock),
                        replicas: self.replicas(partition),
                        in_memory: Arc::clone(&in_memory),
                    };
                    let task = tokio::spawn(engine::run(context, stopped).instrument(
                        tracing::info_span!("engine", node_id = self.node_id, partition),
                    ));
                    running = Some((stop, task));
                }
                (false, true) => {
                    if let Some((stop, task)) = running.take() {
                        stop_engine(stop, task).await;
                    }
                }
                _ => {}
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { break },
                // An engine that stopped on an error is restarted while still leading.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if let Some((stop, task)) = running.take() {
            stop_engine(stop, task).await;
        }
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

    /// A node starting with empty data asks its peers whether the cluster already exists. If
    /// one holds Raft state, this node's votes and log were lost: joining would risk two
    /// leaders in one term, so it refuses. Peers that are still starting are waited for.
    async fn check_not_wiped(&self) -> Result<()> {
        let others: Vec<NodeId> = self
            .config
            .node_ids()
            .into_iter()
            .filter(|&id| id != self.node_id)
            .collect();
        let mut answered: BTreeMap<NodeId, bool> = BTreeMap::new();
        let mut waits = 0u32;
        let mut backoff = peer_backoff();
        loop {
            for &peer in &others {
                if answered.contains_key(&peer) {
                    continue;
                }
                let Some(mut client) = self.peers.transport(peer) else {
                    continue;
                };
                let mut req = tonic::Request::new(HelloRequest {
                    from_node: self.node_id,
                    partition_count: self.config.partitions,
                });
                req.set_timeout(Duration::from_secs(2));
                let Ok(resp) = client.hello(req).await else {
                    continue;
                };
                let resp = resp.into_inner();
                if resp.partition_count != self.config.partitions {
                    return Err(Error::PeerPartitionMismatch {
                        peer,
                        theirs: resp.partition_count,
                        ours: self.config.partitions,
                    });
                }
                if resp.initialized {
                    return Err(Error::WipedNode {
                        dir: self.config.data_dir.clone(),
                        peer,
                    });
                }
                answered.insert(peer, true);
            }
            if answered.len() == others.len() {
                return Ok(());
            }
            if waits.is_multiple_of(10) {
                let missing: Vec<_> = others
                    .iter()
                    .filter(|p| !answered.contains_key(p))
                    .collect();
                info!(
                    node_id = self.node_id,
                    ?missing,
                    "new node waiting for peers before joining"
                );
            }
            waits += 1;
            tokio::time::sleep(next_wait(&mut backoff)).await;
        }
    }

    /// For each partition of this node, the highest term any other replica has seen. Every
    /// other replica must answer: a vote this node cast before losing its data was for a
    /// candidate that recorded that term.
    async fn vote_fences(&self, placement: &Placement) -> Result<Vec<(u32, u64)>> {
        let mut fences = Vec::new();
        for partition in placement.partitions_of(self.node_id) {
            let mut term = 0;
            for &peer in placement.replicas[partition as usize]
                .iter()
                .filter(|&&p| p != self.node_id)
            {
                let status = match self.peers.transport(peer) {
                    Some(mut client) => {
                        let mut req =
                            tonic::Request::new(hourglass_proto::internal::LocalStatusRequest {});
                        req.set_timeout(Duration::from_secs(3));
                        client.local_status(req).await.ok().map(|r| r.into_inner())
                    }
                    None => None,
                };
                let seen = status
                    .and_then(|s| s.partitions.into_iter().find(|p| p.partition == partition))
                    .ok_or_else(|| {
                        Error::Rejoin(format!(
                            "replica {peer} of partition {partition} did not report its term; every other replica must be up"
                        ))
                    })?;
                term = term.max(seen.term);
            }
            fences.push((partition, term));
        }
        Ok(fences)
    }

    /// The first replica of each partition (in ring order, so spread over the nodes) initializes
    /// its group once every replica has recorded its identity; the initializer becomes the
    /// first leader, so leadership starts out spread too. Initializing an already initialized
    /// group is refused by openraft, which makes this safe to repeat on every start.
    async fn bootstrap(self: Arc<Self>) {
        let meta = self.meta.get().expect("bootstrap runs after start");
        let mine: Vec<(u32, Vec<NodeId>)> = meta
            .placement
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.first() == Some(&self.node_id))
            .map(|(p, r)| (p as u32, r.clone()))
            .collect();
        if mine.is_empty() {
            return;
        }
        let mut replicas: Vec<NodeId> = mine.iter().flat_map(|(_, r)| r.iter().copied()).collect();
        replicas.sort_unstable();
        replicas.dedup();
        self.wait_ready(&replicas).await;
        for (partition, members) in mine {
            let Some(raft) = self.group(partition) else {
                continue;
            };
            if raft.is_initialized().await.unwrap_or(true) {
                continue;
            }
            let nodes: BTreeMap<NodeId, BasicNode> = members
                .iter()
                .map(|id| {
                    (
                        *id,
                        BasicNode::new(self.peers.address(*id).unwrap_or_default()),
                    )
                })
                .collect();
            match raft.initialize(nodes).await {
                Ok(()) => info!(node_id = self.node_id, partition, "group initialized"),
                Err(e) => {
                    info!(node_id = self.node_id, partition, error = %e, "group already initialized")
                }
            }
        }
    }

    async fn wait_ready(&self, replicas: &[NodeId]) {
        for &peer in replicas.iter().filter(|&&p| p != self.node_id) {
            let mut backoff = peer_backoff();
            loop {
                if self.stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(mut client) = self.peers.transport(peer) {
                    let req = HelloRequest {
                        from_node: self.node_id,
                        partition_count: self.config.partitions,
                    };
                    if let Ok(resp) = client.hello(req).await {
                        if resp.into_inner().ready {
                            break;
                        }
                    }
                }
                tokio::time::sleep(next_wait(&mut backoff)).await;
            }
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

/// Asks an engine to stop; one stuck waiting on a quorum is aborted (its cleanup still runs).
async fn stop_engine(
    stop: tokio::sync::watch::Sender<bool>,
    mut task: tokio::task::JoinHandle<()>,
) {
    let _ = stop.send(true);
    if tokio::time::timeout(Duration::from_secs(2), &mut task)
        .await
        .is_err()
    {
        task.abort();
        let _ = task.await;
    }
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
