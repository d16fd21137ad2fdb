//! The timer engine of one partition, run by its leader.
//!
//! It keeps the timers due within a window in a timing wheel (never more than a cap), fills the
//! window from the due index, follows schedule changes as they are applied, proposes due timers
//! as batched `Fire` commands, hands what a committed fire moved to FIRED to the dispatcher, and
//! proposes acknowledged deliveries as batched `Complete` commands. It stops when the node
//! loses leadership; the next leader starts its own from the replicated state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hourglass_storage::{keys, Store, TimerEvent, TimerEvents};
use hourglass_types::{Command, CommandResponse, TimerKey};
use hourglass_wheel::{Clock, Handle, SystemClock, TimingWheel};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

use crate::dispatch::Dispatcher;
use crate::host::Group;
use crate::metrics::Metrics;

/// Engine settings, from the node configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How far ahead of now timers are loaded into memory.
    pub window: Duration,
    /// Most timers of one partition held in memory.
    pub max_timers_in_memory: usize,
    /// Most timers in one `Fire` or `Complete` proposal.
    pub batch: usize,
    /// Longest single wait; the clock is re-read at least this often, so wall-clock steps
    /// (NTP) are noticed.
    pub max_sleep: Duration,
    /// Tombstones older than this are expired.
    pub tombstone_retention: Duration,
    /// Fault injection for the chaos harness (`HOURGLASS_FAULT_LOSE_FIRES`): this fraction of
    /// fired timers is acknowledged without being delivered, i.e. lost. Always 0 otherwise.
    pub lose_fired_fraction: f64,
}

/// How often the leader looks for tombstones past retention.
const TOMBSTONE_SWEEP: Duration = Duration::from_secs(30);

struct Engine {
    partition: u32,
    group: Group,
    store: Store,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    config: EngineConfig,
    wheel: TimingWheel<TimerKey, SystemClock>,
    handles: HashMap<TimerKey, Handle>,
    /// Every due-index entry below this raw key is in the wheel (or being fired).
    loaded_until: Vec<u8>,
    /// The time the loaded window reaches when it was not cut short by the cap.
    covered_until_ms: Option<u64>,
    next_sweep: tokio::time::Instant,
    /// Published wheel size, for status.
    in_memory: Arc<AtomicU64>,
    /// Where the injected fault sends the timers it loses.
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
    /// Where the engine publishes its wheel size.
    pub in_memory: Arc<AtomicU64>,
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
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    dispatcher.attach_partition(partition, ack_tx.clone());
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
        )),
    };

    let mut engine = Engine {
        partition,
        loaded_until: keys::partition_prefix(partition).to_vec(),
        covered_until_ms: None,
        next_sweep: tokio::time::Instant::now(),
        in_memory: Arc::clone(&in_memory),
        acks: ack_tx,
        wheel: TimingWheel::new(SystemClock),
        handles: HashMap::new(),
        group,
        store,
        dispatcher: Arc::clone(&dispatcher),
        metrics,
        config,
    };
    match engine.store.fired_unacked(partition) {
        Ok(unacked) => {
            if !unacked.is_empty() {
                info!(
                    partition,
                    timers = unacked.len(),
                    "redelivering fired, unacknowledged timers"
                );
            }
            // Whoever delivered them before may have crashed mid-way: this is a new attempt.
            dispatcher.offer(
                partition,
                unacked.into_iter().map(|r| {
                    let attempt = r.attempt + 1;
                    (r, attempt)
                }),
            );
        }
        Err(e) => warn!(partition, error = %e, "cannot read fired timers"),
    }
    info!(partition, "timer engine started");
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
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let now = self.wheel.clock().now_ms();
            self.refill(now)?;
            self.fire_due().await?;
            self.in_memory
                .store(self.wheel.len() as u64, Ordering::Relaxed);
            if tokio::time::Instant::now() >= self.next_sweep {
                self.expire_tombstones(now).await?;
                self.next_sweep = tokio::time::Instant::now() + TOMBSTONE_SWEEP;
            }
            let now = self.wheel.clock().now_ms();
            let mut wait = self.config.max_sleep;
            if let Some(next) = self.wheel.next_deadline() {
                wait = wait.min(Duration::from_millis(next.saturating_sub(now)));
            }
            if let Some(covered) = self.covered_until_ms {
                let refill_at = covered.saturating_sub(self.config.window.as_millis() as u64 / 2);
                wait = wait.min(Duration::from_millis(refill_at.saturating_sub(now)));
            }
            if wait.is_zero() {
                // Catch-up: yield between batches, but do not sleep.
                tokio::task::yield_now().await;
                self.drain_changes(changes);
                continue;
            }
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                change = changes.recv() => match change {
                    Ok(change) => {
                        self.apply_change(change);
                        self.drain_changes(changes);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(partition = self.partition, missed, "fell behind schedule changes; reloading");
                        self.reset();
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err("state machine gone".into()),
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn drain_changes(&mut self, changes: &mut broadcast::Receiver<TimerEvent>) {
        loop {
            match changes.try_recv() {
                Ok(change) => self.apply_change(change),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.reset(),
                Err(_) => return,
            }
        }
    }

    fn apply_change(&mut self, change: TimerEvent) {
        match change {
            TimerEvent::Scheduled { key, fire_at_ms } => {
                let due = keys::due_key(self.partition, fire_at_ms, &key);
                if due >= self.loaded_until || self.handles.contains_key(&key) {
                    return;
                }
                if self.wheel.len() >= self.config.max_timers_in_memory {
                    // Full: shrink the window so the loader picks this timer up later.
                    self.loaded_until = due;
                    self.covered_until_ms = None;
                    return;
                }
                let handle = self.wheel.insert(fire_at_ms, key.clone());
                self.handles.insert(key, handle);
            }
            TimerEvent::Unscheduled { key, .. } => {
                if let Some(handle) = self.handles.remove(&key) {
                    self.wheel.cancel(handle);
                }
            }
            TimerEvent::Reset => self.reset(),
        }
    }

    /// Forgets the window; the next refill reads it again from the due index.
    fn reset(&mut self) {
        for (_, handle) in self.handles.drain() {
            self.wheel.cancel(handle);
        }
        self.loaded_until = keys::partition_prefix(self.partition).to_vec();
        self.covered_until_ms = None;
    }

    /// Loads due timers up to `now + window`, as far as the cap allows.
    fn refill(&mut self, now: u64) -> Result<(), String> {
        let target = now + self.config.window.as_millis() as u64;
        let half = self.config.window.as_millis() as u64 / 2;
        let cap = self.config.max_timers_in_memory;
        match self.covered_until_ms {
            // The window still reaches far enough ahead.
            Some(covered) if covered >= now + half => return Ok(()),
            // Cut short by the cap: wait until half of it has fired.
            None if self.wheel.len() > cap / 2 => return Ok(()),
            _ => {}
        }
        let room = cap.saturating_sub(self.wheel.len());
        if room == 0 {
            return Ok(());
        }
        let from = self.loaded_until.clone();
        let entries = tokio::task::block_in_place(|| {
            self.store.scan_due(self.partition, &from, target, room)
        })
        .map_err(|e| format!("reading the due index: {e}"))?;
        let full = entries.len() == room;
        for e in &entries {
            if !self.handles.contains_key(&e.key) {
                let handle = self.wheel.insert(e.fire_at_ms, e.key.clone());
                self.handles.insert(e.key.clone(), handle);
            }
        }
        if full {
            let mut next = entries.last().map(|e| e.raw.clone()).unwrap_or(from);
            next.push(0);
            self.loaded_until = next;
            self.covered_until_ms = None;
        } else {
            let bound = keys::due_bound(self.partition, target).to_vec();
            if bound > self.loaded_until {
                self.loaded_until = bound;
            }
            self.covered_until_ms = Some(target);
        }
        debug_assert!(self.wheel.len() <= self.config.max_timers_in_memory);
        Ok(())
    }

    /// Proposes every expired timer, in `(fire_at, workflow_id, timer_id)` order (G7), and
    /// offers what the committed fires moved to FIRED for delivery.
    async fn fire_due(&mut self) -> Result<(), String> {
        let mut expired = Vec::new();
        self.wheel.poll(&mut expired);
        if expired.is_empty() {
            return Ok(());
        }
        for (_, key) in &expired {
            self.handles.remove(key);
        }
        expired.sort();
        for chunk in expired.chunks(self.config.batch) {
            let fired_at_ms = self.wheel.clock().now_ms();
            let command = Command::Fire {
                timers: chunk.iter().map(|(_, k)| k.clone()).collect(),
                fired_at_ms,
            };
            match self.group.client_write(command).await {
                Ok(response) => match response.data {
                    CommandResponse::Fired { timers } => {
                        debug!(partition = self.partition, fired = timers.len(), "fired");
                        self.metrics.timers_fired.inc_by(timers.len() as u64);
                        for t in &timers {
                            let late = fired_at_ms.saturating_sub(t.fire_at_ms);
                            self.metrics.fire_lateness.observe(late as f64 / 1000.0);
                        }
                        let timers = self.inject_loss(timers);
                        self.dispatcher
                            .offer(self.partition, timers.into_iter().map(|r| (r, 1)));
                    }
                    other => return Err(format!("unexpected fire outcome {other:?}")),
                },
                Err(e) => return Err(format!("fire not committed: {e}")),
            }
        }
        Ok(())
    }
}

impl Engine {
    /// The injected fault: completes a deterministic share of fired timers undelivered.
    fn inject_loss(
        &self,
        timers: Vec<hourglass_types::TimerRecord>,
    ) -> Vec<hourglass_types::TimerRecord> {
        let fraction = self.config.lose_fired_fraction;
        if fraction <= 0.0 {
            return timers;
        }
        let (lost, kept): (Vec<_>, Vec<_>) = timers.into_iter().partition(|t| {
            let h = hourglass_types::partition_for(
                &format!("{}/{}", t.key.workflow_id, t.key.timer_id),
                10_000,
            );
            f64::from(h) < fraction * 10_000.0
        });
        for t in lost {
            warn!(partition = self.partition, timer = ?t.key, "fault injection: losing a fired timer");
            let _ = self.acks.send(t.key);
        }
        kept
    }

    /// Forgets tombstones past their retention, a batch per sweep.
    async fn expire_tombstones(&mut self, now: u64) -> Result<(), String> {
        let before_ms = now.saturating_sub(self.config.tombstone_retention.as_millis() as u64);
        let timers = tokio::task::block_in_place(|| {
            self.store
                .scan_tombstones(self.partition, before_ms, self.config.batch)
        })
        .map_err(|e| format!("reading tombstones: {e}"))?;
        if timers.is_empty() {
            return Ok(());
        }
        match self
            .group
            .client_write(Command::Expire { timers, before_ms })
            .await
        {
            Ok(r) => {
                debug!(partition = self.partition, outcome = ?r.data, "tombstones expired");
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
            completed_at_ms: SystemClock.now_ms(),
        };
        if let Err(e) = group.client_write(command).await {
            // They stay FIRED: the next leader delivers them again, a duplicate after a fault (G5).
            warn!(partition, count, error = %e, "acks not committed");
        }
    }
}
