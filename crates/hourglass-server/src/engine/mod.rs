//! The timer engine of one partition, run by its leader: the thin driver of [`core`].
//!
//! It feeds the core cluster time (never this node's bare wall clock), the due index and the
//! schedule changes as they are applied; proposes what the core finds due (up to the
//! fire-ahead past its time) as batched `Fire` commands stamped with the core's time; puts
//! back what a fire did not take; hands fired timers to the dispatcher as [`delivery`] decides
//! (a bounded window per queue with a worker, refilled from the fired index as acks free room;
//! a timer fired ahead only from its due instant by cluster time); and proposes acknowledged
//! deliveries as batched `Complete` commands. It waits on the monotonic clock (tokio's timers)
//! and stops when the node loses leadership; the next leader starts its own from the
//! replicated state.

pub mod core;
pub mod delivery;
pub mod expiry;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hourglass_storage::{DueEntry, FiredEntry, Store, TimerEvent, TimerEvents, TombstoneEntry};
use hourglass_types::{Command, CommandResponse, NodeId, TimerKey};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tracing::{debug, info, warn};

use self::core::{CoreConfig, DueIndex, EngineCore};
use self::delivery::{Delivery, DeliveryWindows, FiredIndex, WindowConfig};
use self::expiry::{Expiry, TombstoneIndex};
use crate::clock::TimeSource;
use crate::clock_probe::NodeClock;
#[cfg(feature = "fault-injection")]
use crate::config::FaultConfig;
use crate::config::NodeConfig;
use crate::dispatch::Dispatcher;
use crate::group::Group;
use crate::metrics::{FireStage, Metrics};

/// Engine settings, from the node configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How far ahead of now timers are loaded into memory.
    pub window: Duration,
    /// Most timers of one partition held in memory.
    pub max_timers_in_memory: usize,
    /// Most timers in one `Fire` or `Complete` proposal.
    pub batch: usize,
    /// How long before their due instant timers are proposed to fire.
    pub fire_ahead: Duration,
    /// Most fired timers of one queue held in memory for delivery, in number and payload bytes.
    pub delivery_window: WindowConfig,
    /// Longest single wait; cluster time is re-read at least this often.
    pub max_sleep: Duration,
    /// Tombstones older than this are expired.
    pub tombstone_retention: Duration,
    /// The faults the chaos harness injects (`fault.*`): a share of fired timers acknowledged
    /// undelivered, and cluster time moved ahead so that timers fire early. Test builds only.
    #[cfg(feature = "fault-injection")]
    pub fault: FaultConfig,
}

impl From<&NodeConfig> for EngineConfig {
    fn from(config: &NodeConfig) -> Self {
        let timers = &config.timers;
        EngineConfig {
            window: Duration::from_millis(timers.window_ms),
            max_timers_in_memory: timers.max_in_memory_per_partition,
            batch: timers.batch,
            fire_ahead: Duration::from_millis(timers.fire_ahead_ms),
            delivery_window: WindowConfig {
                timers: timers.delivery_window,
                bytes: timers.delivery_window_bytes,
            },
            max_sleep: Duration::from_millis(500),
            tombstone_retention: Duration::from_millis(timers.tombstone_retention_ms),
            #[cfg(feature = "fault-injection")]
            fault: config.fault.clone(),
        }
    }
}

/// How often the leader starts a sweep of tombstones past retention. A sweep expires its whole
/// backlog (batch after batch), so this only bounds how long past its retention a tombstone
/// lingers; short enough that a burst of completions is gone seconds after it is due, long
/// enough that an idle partition's sweep (one index seek) costs nothing.
const TOMBSTONE_SWEEP: Duration = Duration::from_secs(5);
/// A forward jump of cluster time beyond the monotonic clock's progress worth a warning.
const CLOCK_JUMP_MS: u64 = 1_000;
/// How long to wait for the cluster clock when a majority of the partition's clocks is unknown.
const CLOCK_RETRY: Duration = Duration::from_millis(100);
/// `Fire` proposals of one partition in flight at once. Proposed in order, their entries
/// commit in that order (G7); answers are taken in that order too. One at a time, the engine
/// waited out each commit before it could propose the next or hand a parked timer to a worker,
/// which put a commit's latency back between a timer fired ahead and its delivery.
const FIRES_IN_FLIGHT: usize = 4;

/// The answer to a proposal, once committed and applied.
type Outcome = Pin<Box<dyn Future<Output = Result<CommandResponse, String>> + Send>>;

/// A `Fire` proposed and not yet answered.
struct PendingFire {
    /// Its timers with their due instants, put back if it fails.
    due: Vec<(u64, TimerKey)>,
    fired_at_ms: u64,
    proposed: Instant,
    outcome: Outcome,
}

/// Proposes `command` without waiting for its commit: the entry is in the leader's queue, in
/// call order, when this returns.
async fn propose(group: &Group, command: Command) -> Result<Outcome, String> {
    let answer = group
        .client_write_ff(command)
        .await
        .map_err(|e| format!("proposal refused: {e}"))?;
    Ok(Box::pin(async move {
        match answer.await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the group ended before answering".to_owned()),
        }
    }))
}

/// Waits for `outcome`, if there is one; never ready when there is none.
async fn answer(outcome: Option<&mut Outcome>) -> Result<CommandResponse, String> {
    match outcome {
        Some(outcome) => outcome.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The due index of one partition in the node's store.
struct StoreIndex {
    store: Store,
    partition: u32,
}

impl DueIndex for StoreIndex {
    fn scan(&self, from: &[u8], until_ms: u64, limit: usize) -> Result<Vec<DueEntry>, String> {
        tokio::task::block_in_place(|| self.store.scan_due(self.partition, from, until_ms, limit))
            .map_err(|e| format!("reading the due index: {e}"))
    }
}

impl FiredIndex for StoreIndex {
    fn scan(
        &self,
        queue: &str,
        from: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<FiredEntry>, String> {
        tokio::task::block_in_place(|| {
            self.store
                .scan_fired(self.partition, queue, from, limit, max_bytes)
        })
        .map_err(|e| format!("reading the fired index: {e}"))
    }
}

impl TombstoneIndex for StoreIndex {
    fn scan(
        &self,
        from: &[u8],
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<TombstoneEntry>, String> {
        tokio::task::block_in_place(|| {
            self.store
                .scan_tombstones(self.partition, from, before_ms, limit)
        })
        .map_err(|e| format!("reading tombstones: {e}"))
    }
}

struct Engine {
    partition: u32,
    group: Group,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    clock: Arc<NodeClock>,
    /// The partition's replicas, whose clocks make its time.
    replicas: Vec<NodeId>,
    core: EngineCore<StoreIndex>,
    windows: DeliveryWindows<StoreIndex>,
    /// Notified by the dispatcher when the partition may offer more.
    wake: Arc<Notify>,
    /// The partition's tombstone index, which `expiry` reads.
    tombstones: StoreIndex,
    expiry: Expiry,
    /// Proposed fires, oldest first.
    fires: VecDeque<PendingFire>,
    /// The `Expire` batch proposed (its size and cutoff), if any: one at a time, since the
    /// next batch is read from where this one ends.
    expiring: Option<(usize, u64, Outcome)>,
    next_sweep: tokio::time::Instant,
    /// Published count of timers in memory, for status.
    in_memory: Arc<AtomicU64>,
    /// Where the injected fault sends the timers it loses.
    #[cfg(feature = "fault-injection")]
    acks: mpsc::UnboundedSender<TimerKey>,
}

/// What an engine works with.
pub struct EngineContext {
    pub partition: u32,
    pub group: Group,
    pub store: Store,
    pub events: TimerEvents,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<Metrics>,
    pub config: EngineConfig,
    pub clock: Arc<NodeClock>,
    pub replicas: Vec<NodeId>,
    /// Where the engine publishes how many timers it holds in memory.
    pub in_memory: Arc<AtomicU64>,
}

/// Cluster time over `replicas` (in a test build, moved ahead by the injected fault if any).
fn cluster_now(clock: &NodeClock, replicas: &[NodeId], config: &EngineConfig) -> Option<u64> {
    let now = clock.now_ms(replicas);
    #[cfg(feature = "fault-injection")]
    let now = now.map(|t| t.saturating_add(config.fault.early_fire_ms));
    #[cfg(not(feature = "fault-injection"))]
    let _ = config;
    now
}

/// Runs the engine of a partition until `stop` turns true or leadership is lost.
pub async fn run(context: EngineContext, mut stop: watch::Receiver<bool>) {
    let EngineContext {
        partition,
        group,
        store,
        events,
        dispatcher,
        metrics,
        config,
        clock,
        replicas,
        in_memory,
    } = context;
    // Subscribe before reading anything, so no change applied meanwhile is missed.
    let mut changes = events.subscribe();
    // Everything committed by earlier leaders must be applied before the state is read.
    tokio::select! {
        _ = stop.changed() => return,
        ready = group.ensure_linearizable() => if let Err(e) = ready {
            debug!(partition, error = %e, "not leader after all; engine not started");
            return;
        }
    }
    // A node whose persisted vote names it leader resumes leading at restart without a new
    // entry, and `ensure_linearizable` then only covers what it had applied before; entries
    // committed before the crash (a `Fire` among them) would be applied after the state was
    // read, and their timers never offered. Everything in the leader's log must be applied first.
    let mut raft_metrics = group.metrics();
    let target = raft_metrics.borrow().last_log_index;
    loop {
        let applied = raft_metrics.borrow().last_applied.map(|l| l.index);
        if applied >= target {
            break;
        }
        tokio::select! {
            _ = stop.changed() => return,
            changed = raft_metrics.changed() => if changed.is_err() {
                return;
            }
        }
    }
    // The engine starts at the partition's high-water time or the cluster time, whichever is
    // later; without a majority of known clocks it waits.
    let high_water = match store.partition_state(partition) {
        Ok(state) => state.high_water_ms,
        Err(e) => {
            warn!(partition, error = %e, "cannot read the partition's time; engine not started");
            return;
        }
    };
    let start = loop {
        if let Some(now) = cluster_now(&clock, &replicas, &config) {
            break now.max(high_water);
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(CLOCK_RETRY) => {}
        }
    };
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let wake = Arc::new(Notify::new());
    #[cfg(feature = "fault-injection")]
    let ack_tx_for_faults = ack_tx.clone();
    dispatcher.attach_partition(partition, ack_tx, Arc::clone(&wake));
    // Runs however the engine ends, also when its task is aborted.
    let _cleanup = Cleanup {
        partition,
        dispatcher: Arc::clone(&dispatcher),
        in_memory: Arc::clone(&in_memory),
        acker: tokio::spawn(complete_acks(
            partition,
            group.clone(),
            ack_rx,
            config.batch,
            Arc::clone(&clock),
            replicas.clone(),
        )),
    };

    let core = EngineCore::new(
        partition,
        CoreConfig {
            window_ms: u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX),
            max_in_memory: config.max_timers_in_memory,
            batch: config.batch,
            ahead_ms: u64::try_from(config.fire_ahead.as_millis()).unwrap_or(u64::MAX),
        },
        StoreIndex {
            store: store.clone(),
            partition,
        },
        start,
    );
    let mut engine = Engine {
        partition,
        // Whoever delivered what was fired before may have crashed mid-way: those go out as
        // new attempts.
        windows: DeliveryWindows::new(
            partition,
            config.delivery_window,
            StoreIndex {
                store: store.clone(),
                partition,
            },
            target.unwrap_or(0),
        ),
        wake,
        tombstones: StoreIndex {
            store: store.clone(),
            partition,
        },
        expiry: Expiry::new(
            partition,
            u64::try_from(config.tombstone_retention.as_millis()).unwrap_or(u64::MAX),
            config.batch,
        ),
        next_sweep: tokio::time::Instant::now(),
        fires: VecDeque::new(),
        expiring: None,
        in_memory: Arc::clone(&in_memory),
        #[cfg(feature = "fault-injection")]
        acks: ack_tx_for_faults,
        core,
        clock,
        replicas,
        group,
        dispatcher: Arc::clone(&dispatcher),
        metrics,
        config,
    };
    info!(partition, start_ms = start, "timer engine started");
    let result = engine.run_loop(&mut changes, &mut stop).await;
    match result {
        Ok(()) => info!(partition, "timer engine stopped"),
        Err(reason) => info!(partition, %reason, "timer engine stopped"),
    }
}

impl Engine {
    async fn run_loop(
        &mut self,
        changes: &mut broadcast::Receiver<TimerEvent>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut clock_missing_logged = false;
        // Cluster time should advance with the monotonic clock; a jump says a majority of the
        // replicas' clocks stepped, which operators want to know.
        let mut last = (tokio::time::Instant::now(), self.core.now_ms());
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let wait = match cluster_now(&self.clock, &self.replicas, &self.config) {
                None => {
                    if !clock_missing_logged {
                        warn!(
                            partition = self.partition,
                            "cluster time unknown (no majority of the replicas' clocks): not firing"
                        );
                        clock_missing_logged = true;
                    }
                    CLOCK_RETRY
                }
                Some(cluster) => {
                    clock_missing_logged = false;
                    let elapsed = u64::try_from(last.0.elapsed().as_millis()).unwrap_or(u64::MAX);
                    if cluster > last.1.saturating_add(elapsed).saturating_add(CLOCK_JUMP_MS) {
                        warn!(
                            partition = self.partition,
                            jump_ms = cluster - last.1 - elapsed,
                            readings = ?self.clock.readings(&self.replicas),
                            "cluster time jumped forward"
                        );
                    }
                    let now = self.core.advance(cluster);
                    last = (tokio::time::Instant::now(), now);
                    self.core.refill()?;
                    self.propose_fires().await?;
                    self.load_fired()?;
                    self.in_memory
                        .store(self.core.in_memory() as u64, Ordering::Relaxed);
                    if tokio::time::Instant::now() >= self.next_sweep {
                        self.expiry.start(now);
                        self.next_sweep = tokio::time::Instant::now() + TOMBSTONE_SWEEP;
                    }
                    // One batch per turn: due timers are fired first on every turn, however
                    // large the backlog of tombstones.
                    self.expire_tombstones().await?;
                    let now = self.core.now_ms();
                    if self.expiry.busy() && self.expiring.is_none() {
                        Duration::ZERO
                    } else {
                        // With every place taken, the oldest fire's answer is the next thing
                        // to wait for, not the due timers the core holds.
                        let fire = (self.fires.len() < FIRES_IN_FLIGHT)
                            .then(|| self.core.next_wake_ms())
                            .flatten();
                        let wake = [fire, self.windows.next_release_ms()]
                            .into_iter()
                            .flatten()
                            .min();
                        match wake {
                            Some(at) => self
                                .config
                                .max_sleep
                                .min(Duration::from_millis(at.saturating_sub(now))),
                            None => self.config.max_sleep,
                        }
                    }
                }
            };
            if wait.is_zero() {
                // Catch-up (of fires or of expiry): yield between batches, but do not sleep.
                tokio::task::yield_now().await;
                self.drain_changes(changes);
                continue;
            }
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                change = changes.recv() => match change {
                    Ok(change) => {
                        self.core.on_event(change);
                        self.drain_changes(changes);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(partition = self.partition, missed, "fell behind schedule changes; reloading");
                        self.core.reset();
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err("state machine gone".into()),
                },
                _ = self.wake.notified() => {}
                outcome = answer(self.fires.front_mut().map(|f| &mut f.outcome)) => {
                    self.fire_answered(outcome)?;
                }
                outcome = answer(self.expiring.as_mut().map(|e| &mut e.2)) => {
                    self.expiry_answered(outcome)?;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn drain_changes(&mut self, changes: &mut broadcast::Receiver<TimerEvent>) {
        loop {
            match changes.try_recv() {
                Ok(change) => self.core.on_event(change),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.core.reset(),
                Err(_) => return,
            }
        }
    }

    fn offer(&self, deliveries: Vec<Delivery>) {
        #[cfg(feature = "fault-injection")]
        let deliveries = self.inject_loss(deliveries);
        if !deliveries.is_empty() {
            self.dispatcher.offer(self.partition, deliveries);
        }
    }

    /// Offers what the windows of queues with a worker have room for, from the fired index,
    /// and what they parked that is now due.
    fn load_fired(&mut self) -> Result<(), String> {
        let now = self.core.now_ms();
        for (queue, held) in self.dispatcher.demand(self.partition).iter() {
            let ready = self.windows.load(queue, held, now)?;
            self.offer(ready);
        }
        let due = self.windows.release(now);
        for (record, _) in &due {
            self.metrics.fire_stages.observe(
                FireStage::Release,
                Duration::from_millis(now.saturating_sub(record.fire_at_ms)),
            );
        }
        self.offer(due);
        Ok(())
    }

    /// Proposes timers due by the core's horizon, in `(fire_at, workflow_id, timer_id)` order
    /// (G7), stamped with the core's time, while fewer than [`FIRES_IN_FLIGHT`] are pending.
    async fn propose_fires(&mut self) -> Result<(), String> {
        while self.fires.len() < FIRES_IN_FLIGHT {
            let due = self.core.take_due();
            if due.is_empty() {
                return Ok(());
            }
            let fired_at_ms = self.core.now_ms();
            // Cluster time again: the turn may have taken a while.
            let proposed_ms = cluster_now(&self.clock, &self.replicas, &self.config)
                .map_or(fired_at_ms, |now| now.max(fired_at_ms));
            for (at, _) in &due {
                self.metrics.fire_stages.observe(
                    FireStage::Propose,
                    Duration::from_millis(proposed_ms.saturating_sub(*at)),
                );
            }
            let timers = due.iter().map(|(_, k)| k.clone()).collect();
            let until_ms = self.core.horizon_ms();
            // Without fire-ahead, the command nodes of every release understand, so that a
            // rolling upgrade works with `timers.fire_ahead = 0` (docs/operations.md).
            let command = if until_ms > fired_at_ms {
                Command::FireAhead {
                    timers,
                    now_ms: fired_at_ms,
                    until_ms,
                }
            } else {
                Command::Fire {
                    timers,
                    fired_at_ms,
                }
            };
            let proposed = Instant::now();
            match propose(&self.group, command).await {
                Ok(outcome) => self.fires.push_back(PendingFire {
                    due,
                    fired_at_ms,
                    proposed,
                    outcome,
                }),
                Err(e) => {
                    // Not lost either way: the next engine reloads them from the due index.
                    self.core
                        .put_back(due.into_iter().map(|(at, key)| (key, at)));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Takes the oldest pending fire's answer: offers what it moved to FIRED for delivery
    /// (parking what is not due yet) and puts back what it did not.
    fn fire_answered(&mut self, outcome: Result<CommandResponse, String>) -> Result<(), String> {
        let fire = self
            .fires
            .pop_front()
            .expect("an answer is for the oldest fire");
        match outcome {
            Ok(CommandResponse::Fired { timers, not_due }) => {
                let mut laps = self.metrics.fire_stages.laps_from(fire.proposed);
                laps.mark(FireStage::Commit);
                debug!(
                    partition = self.partition,
                    fired = timers.len(),
                    not_due = not_due.len(),
                    "fired"
                );
                self.metrics.timers_fired.inc_by(timers.len() as u64);
                for t in &timers {
                    let at = t.fired_at_ms.unwrap_or(fire.fired_at_ms);
                    let late = at.saturating_sub(t.fire_at_ms);
                    self.metrics.fire_lateness.observe(late as f64 / 1000.0);
                }
                self.core.put_back(not_due);
                let demand = self.dispatcher.demand(self.partition);
                let ready = self.windows.fired(timers, &demand, self.core.now_ms());
                if !ready.is_empty() {
                    laps.mark(FireStage::Dispatch);
                }
                self.offer(ready);
                Ok(())
            }
            Ok(other) => Err(format!("unexpected fire outcome {other:?}")),
            Err(e) => {
                // Not lost either way: the next engine reloads them from the due index.
                self.core
                    .put_back(fire.due.into_iter().map(|(at, key)| (key, at)));
                Err(format!("fire not committed: {e}"))
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
impl Engine {
    /// The injected fault: completes a deterministic share of fired timers undelivered.
    fn inject_loss(&self, timers: Vec<Delivery>) -> Vec<Delivery> {
        let fraction = self.config.fault.lose_fired_fraction;
        if fraction <= 0.0 {
            return timers;
        }
        let (lost, kept): (Vec<_>, Vec<_>) = timers.into_iter().partition(|(t, _)| {
            let h = hourglass_types::partition_for(
                &format!("{}/{}", t.key.workflow_id, t.key.timer_id),
                10_000,
            );
            f64::from(h) < fraction * 10_000.0
        });
        for (t, _) in lost {
            warn!(partition = self.partition, timer = ?t.key, "fault injection: losing a fired timer");
            let _ = self.acks.send(t.key);
        }
        kept
    }
}

impl Engine {
    /// Proposes the next batch of the sweep under way, if any and none is pending: tombstones
    /// past their retention, oldest first, with the sweep's cutoff (cluster time minus the
    /// retention).
    async fn expire_tombstones(&mut self) -> Result<(), String> {
        if self.expiring.is_some() {
            return Ok(());
        }
        let Some(batch) = self.expiry.next_batch(&self.tombstones)? else {
            return Ok(());
        };
        let count = batch.timers.len();
        let command = Command::Expire {
            timers: batch.timers,
            before_ms: batch.before_ms,
        };
        let outcome = propose(&self.group, command).await?;
        self.expiring = Some((count, batch.before_ms, outcome));
        Ok(())
    }

    fn expiry_answered(&mut self, outcome: Result<CommandResponse, String>) -> Result<(), String> {
        let (count, before_ms, _) = self
            .expiring
            .take()
            .expect("an answer is for a pending batch");
        match outcome {
            Ok(r) => {
                debug!(
                    partition = self.partition,
                    count,
                    before_ms,
                    outcome = ?r,
                    "tombstones expired"
                );
                Ok(())
            }
            Err(e) => Err(format!("expiry not committed: {e}")),
        }
    }
}

/// Hands the partition's deliveries back when the engine ends: the next leader makes them.
struct Cleanup {
    partition: u32,
    dispatcher: Arc<Dispatcher>,
    in_memory: Arc<AtomicU64>,
    acker: tokio::task::JoinHandle<()>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.dispatcher.detach_partition(self.partition);
        self.in_memory.store(0, Ordering::Relaxed);
        self.acker.abort();
    }
}

/// Commits acknowledged deliveries of one partition in batches.
async fn complete_acks(
    partition: u32,
    group: Group,
    mut acks: mpsc::UnboundedReceiver<TimerKey>,
    batch: usize,
    clock: Arc<NodeClock>,
    replicas: Vec<NodeId>,
) {
    while let Some(first) = acks.recv().await {
        let mut timers = vec![first];
        while timers.len() < batch {
            match acks.try_recv() {
                Ok(k) => timers.push(k),
                Err(_) => break,
            }
        }
        let count = timers.len();
        let command = Command::Complete {
            timers,
            // Only the tombstone's retention depends on it; a lone wall clock will do when
            // the cluster's is unknown.
            completed_at_ms: clock
                .now_ms(&replicas)
                .unwrap_or_else(|| clock.source().wall_ms()),
        };
        if let Err(e) = group.client_write(command).await {
            // They stay FIRED: the next leader delivers them again, a duplicate after a fault (G5).
            warn!(partition, count, error = %e, "acks not committed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_settings_come_from_the_timers_and_fault_keys() {
        let c = NodeConfig::from_toml(
            "[timers]\nwindow = \"2m\"\nmax_in_memory_per_partition = 500\nbatch = 7\n\
             delivery_window = 30\ndelivery_window_bytes = 4096\ntombstone_retention = \"1h\"\n\
             [fault]\nlose_fired_fraction = 0.25\nearly_fire = \"3s\"",
        )
        .unwrap();
        let e = EngineConfig::from(&c);
        assert_eq!(e.window, Duration::from_secs(120));
        assert_eq!((e.max_timers_in_memory, e.batch), (500, 7));
        assert_eq!(
            (e.delivery_window.timers, e.delivery_window.bytes),
            (30, 4096)
        );
        assert_eq!(e.tombstone_retention, Duration::from_secs(3600));
        #[cfg(feature = "fault-injection")]
        assert_eq!(
            (e.fault.lose_fired_fraction, e.fault.early_fire_ms),
            (0.25, 3_000)
        );
    }
}
