//! The node's delivery hub: fired timers of the partitions this node leads wait here until a
//! worker of their queue takes them, and stay until acknowledged.
//!
//! Deliveries go round-robin to the queue's subscribers that have credit. A delivery not
//! acknowledged within the ack timeout, or held by a worker that disconnects, goes back to the
//! front of its queue with attempt + 1 (G5). Acks are handed to the partition's engine, which
//! commits them as `Complete` proposals.
//!
//! Memory stays bounded whatever the workers do (G8). The dispatcher holds only what the
//! engines offer, and an engine offers a partition's fired timers of a queue only while the
//! dispatcher holds fewer than its delivery window of them ([`Dispatcher::held`]); the rest
//! waits on disk. Each stream's buffer holds at most its credits, and a delivery is only ever
//! offered to it with `try_send` under the lock, so a worker that stops reading fills its
//! buffer and then gets nothing more (its share stays pending for the queue's other workers).
//! A stream that sends no message for the idle timeout after it was sent a delivery is closed,
//! and what it held goes to other workers. Ack deadlines are kept in deadline order, so expiry
//! touches only what is late.
//!
//! A stream acknowledges only what it holds: a delivery made on it and not since taken back.
//! Any other ack (never delivered to it, delivered to another stream, already acknowledged,
//! timed out and pending or redelivered) is refused, counted, and never completes the timer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hourglass_proto::v1;
use hourglass_types::{TimerKey, TimerRecord};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::convert;
use crate::metrics::{FireStage, Metrics};

pub type WorkerId = u64;

/// An ack deadline, made unique by a sequence number.
type Deadline = (Instant, u64);

#[derive(Debug, Clone, Copy)]
struct Holder {
    worker: WorkerId,
    deadline: Deadline,
}

struct Inflight {
    partition: u32,
    record: TimerRecord,
    attempt: u32,
    holder: Option<Holder>,
    /// When it was offered, until its first delivery after the offer: what
    /// `fire_stage_seconds{stage="stream_write"}` measures. Redeliveries are not its delay.
    offered: Option<Instant>,
}

struct WorkerState {
    queue: String,
    /// Bounded by the stream's credits: a worker that stops reading cannot grow it.
    tx: mpsc::Sender<v1::Delivery>,
    /// Fired (then dropped) when the dispatcher closes the stream for idleness.
    closed: oneshot::Sender<()>,
    credits: u32,
    holding: HashSet<TimerKey>,
    /// When the first delivery since the stream's last message was sent: the stream has been
    /// silent since then.
    unanswered_since: Option<Instant>,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<TimerKey>,
    workers: Vec<WorkerId>,
    next: usize,
}

/// What the dispatcher holds of a partition's queue (or of everything): fired timers and
/// their payload bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub timers: usize,
    pub bytes: usize,
}

/// What the dispatcher holds of one partition's fired timers in every queue with a worker
/// subscribed to this node: the only queues whose fired timers are worth loading.
#[derive(Debug, Clone)]
pub struct Demand {
    /// In name order; shared with the dispatcher until the set of subscribed queues changes,
    /// so that an engine's turn copies no queue name.
    queues: Arc<[String]>,
    /// `held[i]` is what is held of `queues[i]`.
    held: Vec<Held>,
}

impl Demand {
    /// What is held of `queue`, if it has a worker.
    pub fn get(&self, queue: &str) -> Option<Held> {
        self.queues
            .binary_search_by(|q| q.as_str().cmp(queue))
            .ok()
            .map(|i| self.held[i])
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Held)> {
        self.queues
            .iter()
            .map(String::as_str)
            .zip(self.held.iter().copied())
    }
}

#[cfg(test)]
impl FromIterator<(String, Held)> for Demand {
    fn from_iter<I: IntoIterator<Item = (String, Held)>>(iter: I) -> Self {
        let mut pairs: Vec<(String, Held)> = iter.into_iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let (queues, held): (Vec<String>, Vec<Held>) = pairs.into_iter().unzip();
        Demand {
            queues: queues.into(),
            held,
        }
    }
}

/// The engine of a partition this node leads.
struct PartitionLink {
    /// Where acks of its timers go.
    acks: mpsc::UnboundedSender<TimerKey>,
    /// Woken when it may offer more: an ack freed room, or a queue gained a worker.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    inflight: HashMap<TimerKey, Inflight>,
    workers: HashMap<WorkerId, WorkerState>,
    queues: HashMap<String, QueueState>,
    partitions: HashMap<u32, PartitionLink>,
    /// Deliveries held by streams, by ack deadline.
    deadlines: BTreeMap<Deadline, TimerKey>,
    next_deadline: u64,
    /// What `inflight` holds per partition and queue, and in all.
    held: HashMap<u32, HashMap<String, Held>>,
    total: Held,
    /// The queues with a worker, in name order; rebuilt only when that set changes.
    subscribed: Arc<[String]>,
    next_worker: WorkerId,
}

impl State {
    fn count(&mut self, partition: u32, record: &TimerRecord, add: bool) {
        let bytes = record.definition.payload.len();
        let queue = &record.definition.queue;
        let by_queue = self.held.entry(partition).or_default();
        if add {
            let held = by_queue.entry(queue.clone()).or_default();
            held.timers += 1;
            held.bytes += bytes;
            self.total.timers += 1;
            self.total.bytes += bytes;
        } else {
            let held = by_queue
                .get_mut(queue)
                .expect("a timer is counted when offered");
            held.timers -= 1;
            held.bytes -= bytes;
            self.total.timers -= 1;
            self.total.bytes -= bytes;
            if held.timers == 0 {
                by_queue.remove(queue);
                if by_queue.is_empty() {
                    self.held.remove(&partition);
                }
            }
        }
    }

    fn refresh_subscribed(&mut self) {
        let mut queues: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.workers.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        queues.sort_unstable();
        self.subscribed = queues.into();
    }

    /// Takes a timer out of flight, with what it held.
    fn remove(&mut self, key: &TimerKey) -> Option<Inflight> {
        let item = self.inflight.remove(key)?;
        self.count(item.partition, &item.record, false);
        if let Some(holder) = item.holder {
            self.deadlines.remove(&holder.deadline);
            if let Some(w) = self.workers.get_mut(&holder.worker) {
                w.holding.remove(key);
                w.credits += 1;
            }
        }
        Some(item)
    }
}

/// Counts for tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchStats {
    pub inflight: usize,
    pub workers: usize,
    /// Deliveries waiting for a worker (stale keys of detached partitions included).
    pub pending: usize,
    pub deadlines: usize,
}

/// One worker stream's end of the dispatcher.
pub struct Subscription {
    pub worker: WorkerId,
    /// At most the stream's credits deliveries wait here.
    pub deliveries: mpsc::Receiver<v1::Delivery>,
    /// Resolves when the dispatcher closed the stream because it stayed idle (see
    /// [`Dispatcher::expire`]).
    pub closed: oneshot::Receiver<()>,
}

/// Why an ack was refused. Never an error of the stream: a late ack racing the ack timeout is
/// an ordinary event, and the timer is redelivered (G5) or was already completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRefused {
    /// The timer is not in flight on this node: never fired here, already acknowledged, or
    /// of a partition this node no longer leads.
    NotInFlight,
    /// The timer is in flight, but not held by this stream: delivered to another stream, or
    /// taken back after a timeout and pending again.
    NotHolder,
}

/// The time a delivery is stamped with (`delivered_at`): the node's cluster time.
pub type DeliveryClock = Box<dyn Fn() -> u64 + Send + Sync>;

pub struct Dispatcher {
    state: Mutex<State>,
    ack_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    now_ms: DeliveryClock,
}

impl Dispatcher {
    /// `idle_timeout`: how long a stream that was sent a delivery may stay silent before it is
    /// closed.
    pub fn new(
        ack_timeout: Duration,
        idle_timeout: Duration,
        metrics: Arc<Metrics>,
        now_ms: DeliveryClock,
    ) -> Self {
        Dispatcher {
            state: Mutex::new(State::default()),
            ack_timeout,
            idle_timeout,
            metrics,
            now_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("dispatcher state poisoned")
    }

    fn publish(&self, s: &State) {
        let timers = s.total.timers as i64;
        self.metrics.deliveries_in_memory.set(timers);
        self.metrics
            .deliveries_in_memory_bytes
            .set(s.total.bytes as i64);
        if timers > self.metrics.deliveries_in_memory_max.get() {
            self.metrics.deliveries_in_memory_max.set(timers);
        }
    }

    #[cfg(test)]
    pub fn stats(&self) -> DispatchStats {
        let s = self.lock();
        DispatchStats {
            inflight: s.inflight.len(),
            workers: s.workers.len(),
            pending: s.queues.values().map(|q| q.pending.len()).sum(),
            deadlines: s.deadlines.len(),
        }
    }

    /// This node now leads `partition`; acks of its timers go to `acks`, and `wake` is
    /// notified whenever the partition may offer more.
    pub fn attach_partition(
        &self,
        partition: u32,
        acks: mpsc::UnboundedSender<TimerKey>,
        wake: Arc<Notify>,
    ) {
        self.lock()
            .partitions
            .insert(partition, PartitionLink { acks, wake });
    }

    /// This node no longer leads `partition`: its deliveries are the new leader's to make.
    pub fn detach_partition(&self, partition: u32) {
        let mut s = self.lock();
        s.partitions.remove(&partition);
        let gone: Vec<TimerKey> = s
            .inflight
            .iter()
            .filter(|(_, i)| i.partition == partition)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            s.remove(&key);
        }
        // Stale keys left in pending queues are skipped when popped.
        self.publish(&s);
    }

    /// What the dispatcher holds of `queue`'s fired timers of `partition`.
    #[cfg(test)]
    pub fn held(&self, partition: u32, queue: &str) -> Held {
        self.lock()
            .held
            .get(&partition)
            .and_then(|by_queue| by_queue.get(queue))
            .copied()
            .unwrap_or_default()
    }

    /// What the dispatcher holds of `partition`'s fired timers, per queue with a worker.
    /// Asked on every turn of every engine, so it copies no queue name.
    pub fn demand(&self, partition: u32) -> Demand {
        let s = self.lock();
        let by_queue = s.held.get(&partition);
        Demand {
            held: s
                .subscribed
                .iter()
                .map(|q| by_queue.and_then(|h| h.get(q)).copied().unwrap_or_default())
                .collect(),
            queues: Arc::clone(&s.subscribed),
        }
    }

    /// Offers fired timers for delivery with the given attempt numbers.
    pub fn offer(&self, partition: u32, timers: impl IntoIterator<Item = (TimerRecord, u32)>) {
        let offered = Instant::now();
        let mut s = self.lock();
        let mut touched = HashSet::new();
        for (record, attempt) in timers {
            let key = record.key.clone();
            if s.inflight.contains_key(&key) {
                continue;
            }
            let queue = record.definition.queue.clone();
            s.count(partition, &record, true);
            s.queues
                .entry(queue.clone())
                .or_default()
                .pending
                .push_back(key.clone());
            s.inflight.insert(
                key,
                Inflight {
                    partition,
                    record,
                    attempt,
                    holder: None,
                    offered: Some(offered),
                },
            );
            touched.insert(queue);
        }
        for q in touched {
            pump(&mut s, &q, self.ack_timeout, &self.metrics, &self.now_ms);
        }
        self.publish(&s);
    }

    /// Registers a worker of `queue` that may hold `credits` (at least 1) unacknowledged
    /// deliveries.
    pub fn subscribe(&self, queue: &str, credits: u32) -> Subscription {
        // The buffer holds what the stream may hold, and no more.
        let (tx, deliveries) = mpsc::channel(credits as usize);
        let (closed_tx, closed) = oneshot::channel();
        let mut s = self.lock();
        s.next_worker += 1;
        let id = s.next_worker;
        s.workers.insert(
            id,
            WorkerState {
                queue: queue.to_owned(),
                tx,
                closed: closed_tx,
                credits,
                holding: HashSet::new(),
                unanswered_since: None,
            },
        );
        let workers = &mut s.queues.entry(queue.to_owned()).or_default().workers;
        workers.push(id);
        if workers.len() == 1 {
            s.refresh_subscribed();
        }
        self.metrics.workers_connected.inc();
        pump(&mut s, queue, self.ack_timeout, &self.metrics, &self.now_ms);
        // The queue's fired timers may wait on disk for a worker: every engine looks.
        for link in s.partitions.values() {
            link.wake.notify_one();
        }
        Subscription {
            worker: id,
            deliveries,
            closed,
        }
    }

    /// The worker is gone: what it held is delivered again to others.
    pub fn unsubscribe(&self, worker: WorkerId) {
        let mut s = self.lock();
        if let Some(w) = remove_worker(&mut s, worker, &self.metrics) {
            pump(
                &mut s,
                &w.queue,
                self.ack_timeout,
                &self.metrics,
                &self.now_ms,
            );
        }
    }

    /// A worker acknowledged a delivery. Only the stream holding it may: an ack of anything
    /// else is refused and counted, and the timer stays in flight for its holder or its next
    /// attempt. Completing it on the word of another stream would complete a timer whose
    /// current attempt may still fail, and would let one worker complete another's timers.
    pub fn ack(&self, worker: WorkerId, key: &TimerKey) -> Result<(), AckRefused> {
        let mut s = self.lock();
        // Any message shows the stream is alive, even an ack that is refused.
        if let Some(w) = s.workers.get_mut(&worker) {
            w.unanswered_since = None;
        }
        let holder = match s.inflight.get(key) {
            None => Err(AckRefused::NotInFlight),
            Some(i) => match i.holder {
                Some(h) if h.worker == worker => Ok(()),
                _ => Err(AckRefused::NotHolder),
            },
        };
        if let Err(refused) = holder {
            self.metrics.acks_refused.inc();
            return Err(refused);
        }
        let inflight = s.remove(key).expect("checked in flight");
        self.metrics.timers_acked.inc();
        if let Some(link) = s.partitions.get(&inflight.partition) {
            let _ = link.acks.send(key.clone());
            // Room in the partition's window: it may load the next of its fired timers.
            link.wake.notify_one();
        }
        pump(
            &mut s,
            &inflight.record.definition.queue,
            self.ack_timeout,
            &self.metrics,
            &self.now_ms,
        );
        self.publish(&s);
        Ok(())
    }

    /// Takes back deliveries whose ack deadline passed and closes the streams that stayed
    /// silent for the idle timeout after being sent a delivery, to deliver all of it again;
    /// then offers every queue's pending deliveries once more, since a stream whose full
    /// buffer refused them may have drained it.
    pub fn expire(&self, now: Instant) {
        let mut s = self.lock();
        let late: Vec<TimerKey> = s
            .deadlines
            .range(..=(now, u64::MAX))
            .map(|(_, key)| key.clone())
            .collect();
        for key in late {
            requeue(&mut s, key);
        }
        let idle: Vec<WorkerId> = s
            .workers
            .iter()
            .filter(|(_, w)| {
                w.unanswered_since
                    .is_some_and(|since| since + self.idle_timeout <= now)
            })
            .map(|(&id, _)| id)
            .collect();
        for worker in idle {
            if let Some(w) = remove_worker(&mut s, worker, &self.metrics) {
                self.metrics.worker_streams_idle_closed.inc();
                // The stream's task ends the stream with an error saying why.
                let _ = w.closed.send(());
            }
        }
        let queues: Vec<String> = s
            .queues
            .iter()
            .filter(|(_, q)| !q.pending.is_empty() && !q.workers.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        for q in queues {
            pump(&mut s, &q, self.ack_timeout, &self.metrics, &self.now_ms);
        }
    }
}

/// Removes a worker, putting what it held back for others.
fn remove_worker(s: &mut State, worker: WorkerId, metrics: &Metrics) -> Option<WorkerState> {
    let w = s.workers.get(&worker)?;
    let held: Vec<TimerKey> = w.holding.iter().cloned().collect();
    for key in held {
        requeue(s, key);
    }
    let w = s.workers.remove(&worker)?;
    metrics.workers_connected.dec();
    if let Some(q) = s.queues.get_mut(&w.queue) {
        q.workers.retain(|&id| id != worker);
        if q.workers.is_empty() {
            s.refresh_subscribed();
        }
    }
    Some(w)
}

/// Takes a held delivery back from its stream and puts it at the front of its queue for
/// another attempt.
fn requeue(s: &mut State, key: TimerKey) {
    let Some(i) = s.inflight.get_mut(&key) else {
        return;
    };
    let Some(holder) = i.holder.take() else {
        return;
    };
    i.attempt += 1;
    let queue = i.record.definition.queue.clone();
    s.deadlines.remove(&holder.deadline);
    if let Some(w) = s.workers.get_mut(&holder.worker) {
        w.holding.remove(&key);
        w.credits += 1;
    }
    s.queues.entry(queue).or_default().pending.push_front(key);
}

/// Hands pending deliveries of `queue` to its workers with credit, round-robin.
fn pump(
    s: &mut State,
    queue: &str,
    ack_timeout: Duration,
    metrics: &Metrics,
    clock: &DeliveryClock,
) {
    let State {
        inflight,
        workers,
        queues,
        deadlines,
        next_deadline,
        ..
    } = s;
    let Some(q) = queues.get_mut(queue) else {
        return;
    };
    // Streams whose buffer refused a delivery in this round; none is tried twice, so a round
    // ends even if every stream's buffer is full.
    let mut refused: Vec<WorkerId> = Vec::new();
    // Cluster time is a median over the members' clocks: read once per round, not per
    // delivery, while the lock is held.
    let mut round_ms = None;
    while !q.pending.is_empty() && !q.workers.is_empty() {
        let n = q.workers.len();
        let Some(pick) = (0..n).map(|i| (q.next + i) % n).find(|&i| {
            let id = q.workers[i];
            !refused.contains(&id)
                && workers.get(&id).is_some_and(|w| {
                    // A stream's buffer can be full with credit left: deliveries it has not
                    // read yet timed out and gave their credit back.
                    w.credits > 0 && w.tx.capacity() > 0 && !w.tx.is_closed()
                })
        }) else {
            return;
        };
        q.next = (pick + 1) % n;
        let worker_id = q.workers[pick];
        let key = q.pending.pop_front().expect("checked non-empty");
        let Some(item) = inflight.get_mut(&key) else {
            continue;
        };
        if item.holder.is_some() {
            continue;
        }
        let w = workers
            .get_mut(&worker_id)
            .expect("picked an existing worker");
        let r = &item.record;
        // The node-wide cluster time is a lower bound that can trail the partition's own time
        // by a round trip; a delivery never precedes its committed fire.
        let now_ms = (*round_ms.get_or_insert_with(clock)).max(r.fired_at_ms.unwrap_or(0));
        let delivery = v1::Delivery {
            workflow_id: r.key.workflow_id.clone(),
            timer_id: r.key.timer_id.clone(),
            queue: r.definition.queue.clone(),
            fire_at: Some(convert::timestamp(r.fire_at_ms)),
            fired_at: r.fired_at_ms.map(convert::timestamp),
            delivered_at: Some(convert::timestamp(now_ms)),
            attempt: item.attempt,
            payload: r.definition.payload.clone(),
            partition: item.partition,
        };
        // G2: the state machine fires a timer only at or after its due time.
        debug_assert!(r.fired_at_ms.is_some_and(|f| f >= r.fire_at_ms));
        // Never waits: the lock is held. A full or closed buffer leaves the delivery pending.
        if w.tx.try_send(delivery).is_err() {
            q.pending.push_front(key);
            refused.push(worker_id);
            continue;
        }
        w.credits -= 1;
        let now = Instant::now();
        if let Some(offered) = item.offered.take() {
            metrics.fire_stages.observe(
                FireStage::StreamWrite,
                now.saturating_duration_since(offered),
            );
        }
        w.unanswered_since.get_or_insert(now);
        metrics.timers_delivered.inc();
        if item.attempt > 1 {
            metrics.timers_redelivered.inc();
        }
        let deadline = (now + ack_timeout, *next_deadline);
        *next_deadline += 1;
        deadlines.insert(deadline, key.clone());
        w.holding.insert(key);
        item.holder = Some(Holder {
            worker: worker_id,
            deadline,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_types::{TimerDefinition, TimerState};

    fn record(id: &str, queue: &str) -> TimerRecord {
        TimerRecord {
            key: TimerKey {
                workflow_id: "w".into(),
                timer_id: id.into(),
            },
            definition: TimerDefinition {
                queue: queue.into(),
                fire_at_ms: Some(1),
                delay_ms: None,
                payload: vec![],
            },
            fire_at_ms: 1,
            state: TimerState::Fired,
            created_at_ms: 0,
            fired_at_ms: Some(2),
            finished_at_ms: None,
            attempt: 1,
            fire_seq: Some(1),
        }
    }

    fn ids(rx: &mut mpsc::Receiver<v1::Delivery>) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        while let Ok(d) = rx.try_recv() {
            out.push((d.timer_id, d.attempt));
        }
        out
    }

    const IDLE: Duration = Duration::from_secs(600);

    fn dispatcher(ack_timeout: Duration) -> Dispatcher {
        counted(ack_timeout, IDLE).0
    }

    /// A dispatcher with its metrics, to assert on its counters.
    fn counted(ack_timeout: Duration, idle: Duration) -> (Dispatcher, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(1));
        let d = Dispatcher::new(
            ack_timeout,
            idle,
            Arc::clone(&metrics),
            Box::new(convert::now_ms),
        );
        (d, metrics)
    }

    fn key(id: &str) -> TimerKey {
        record(id, "q").key
    }

    #[test]
    fn kept_until_a_worker_subscribes_then_credit_bounded_round_robin() {
        let d = dispatcher(Duration::from_secs(30));
        let (acks, mut acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        d.offer(0, (0..5).map(|i| (record(&format!("t{i}"), "q"), 1)));
        let Subscription {
            worker: a,
            deliveries: mut rx_a,
            ..
        } = d.subscribe("q", 2);
        let mut rx_b = d.subscribe("q", 1).deliveries;
        assert_eq!(ids(&mut rx_a), vec![("t0".into(), 1), ("t1".into(), 1)]);
        assert_eq!(ids(&mut rx_b), vec![("t2".into(), 1)]);
        // Other queues never see them.
        let mut rx_c = d.subscribe("other", 10).deliveries;
        assert!(ids(&mut rx_c).is_empty());
        d.ack(a, &key("t0")).unwrap();
        assert_eq!(acked.try_recv().unwrap().timer_id, "t0");
        assert_eq!(ids(&mut rx_a), vec![("t3".into(), 1)]);
        assert_eq!(d.stats().inflight, 4);
    }

    /// The stream write stage of a fire lasts from the offer to the first delivery after it,
    /// waiting for a worker included; a redelivery after a timeout is not counted again.
    #[test]
    fn stream_write_is_timed_once_per_offer_from_offer_to_first_delivery() {
        let (d, metrics) = counted(Duration::ZERO, IDLE);
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        d.offer(0, [(record("t", "q"), 1)]);
        std::thread::sleep(Duration::from_millis(20));
        let mut rx = d.subscribe("q", 10).deliveries;
        assert_eq!(ids(&mut rx), vec![("t".into(), 1)]);
        let stages = &metrics.fire_stages;
        assert_eq!(stages.count(FireStage::StreamWrite), 1);
        assert!(stages.sum(FireStage::StreamWrite) >= 0.020);
        // The ack timeout (zero) passes: delivered again, not timed again.
        d.expire(Instant::now());
        assert_eq!(ids(&mut rx), vec![("t".into(), 2)]);
        assert_eq!(stages.count(FireStage::StreamWrite), 1);
    }

    /// What the dispatcher holds is counted per partition and queue, in timers and payload
    /// bytes, and comes down as acks and detaches take timers out; an ack or a new worker
    /// wakes the engines, which may then offer more.
    #[test]
    fn holdings_are_counted_and_acks_wake_the_partition() {
        let (d, metrics) = counted(Duration::from_secs(30), IDLE);
        let wake = Arc::new(Notify::new());
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks.clone(), Arc::clone(&wake));
        d.attach_partition(1, acks, Arc::default());
        let big = |id: &str, queue: &str| {
            let mut r = record(id, queue);
            r.definition.payload = vec![0; 1000];
            r
        };
        d.offer(
            0,
            [(big("a", "q"), 1), (big("b", "q"), 1), (big("c", "r"), 1)],
        );
        d.offer(1, [(big("d", "q"), 1)]);
        assert_eq!(
            d.held(0, "q"),
            Held {
                timers: 2,
                bytes: 2000
            }
        );
        assert_eq!(d.held(0, "r").timers, 1);
        assert_eq!(d.held(1, "q").timers, 1);
        assert_eq!(metrics.deliveries_in_memory.get(), 4);
        assert_eq!(metrics.deliveries_in_memory_bytes.get(), 4000);
        assert_eq!(d.demand(0).iter().count(), 0, "no worker, no demand");

        let w = d.subscribe("q", 10);
        assert_eq!(
            d.demand(0).iter().collect::<Vec<_>>(),
            [(
                "q",
                Held {
                    timers: 2,
                    bytes: 2000
                }
            )]
        );
        // A new worker: every engine may have its fired timers on disk.
        assert_woken(&wake);
        assert_eq!(d.stats().deadlines, 3);
        d.ack(w.worker, &key("a")).unwrap();
        assert_woken(&wake);
        assert_eq!(d.held(0, "q").timers, 1);
        assert_eq!(d.stats().deadlines, 2);
        d.detach_partition(0);
        assert_eq!(d.held(0, "q"), Held::default());
        assert_eq!(d.held(0, "r"), Held::default());
        assert_eq!(d.stats().deadlines, 1);
        assert_eq!(metrics.deliveries_in_memory.get(), 1);
        assert_eq!(metrics.deliveries_in_memory_max.get(), 4);
    }

    /// Every engine asks for the demand on every turn: the subscribed queues are one list,
    /// rebuilt only when a queue gains its first worker or loses its last.
    #[test]
    fn demand_shares_the_subscribed_queues_until_they_change() {
        let d = dispatcher(Duration::from_secs(30));
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        d.offer(0, [(record("t", "b"), 1)]);
        let b = d.subscribe("b", 10).worker;
        let a1 = d.subscribe("a", 10).worker;
        let first = d.demand(0);
        assert_eq!(
            first.iter().collect::<Vec<_>>(),
            [
                ("a", Held::default()),
                (
                    "b",
                    Held {
                        timers: 1,
                        bytes: 0
                    }
                )
            ]
        );
        assert_eq!(first.get("b").map(|h| h.timers), Some(1));
        assert_eq!(first.get("c"), None);
        assert!(Arc::ptr_eq(&first.queues, &d.demand(1).queues));
        // More workers of a queue, or fewer while one remains: the same list.
        let a2 = d.subscribe("a", 10).worker;
        d.unsubscribe(a1);
        assert!(Arc::ptr_eq(&first.queues, &d.demand(0).queues));
        d.unsubscribe(a2);
        let now = d.demand(0);
        assert_eq!(now.iter().map(|(q, _)| q).collect::<Vec<_>>(), ["b"]);
        assert_eq!(now.get("a"), None);
        d.unsubscribe(b);
        assert_eq!(d.demand(0).iter().count(), 0);
    }

    /// `notify_one` left a permit: the engine's next wait returns at once.
    fn assert_woken(wake: &Notify) {
        use futures::FutureExt;
        assert!(
            wake.notified().now_or_never().is_some(),
            "the partition was not woken"
        );
    }

    /// Expiry takes back exactly the deliveries past their deadline, and an ack, a
    /// disconnect or a redelivery leaves no deadline behind.
    #[test]
    fn ack_deadlines_are_exact() {
        let d = dispatcher(Duration::from_secs(10));
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        d.offer(0, (0..4).map(|i| (record(&format!("t{i}"), "q"), 1)));
        let start = Instant::now();
        let mut a = d.subscribe("q", 2);
        assert_eq!(ids(&mut a.deliveries).len(), 2);
        assert_eq!(d.stats().deadlines, 2);
        d.ack(a.worker, &key("t0")).unwrap();
        // t2 goes to a in t0's place.
        assert_eq!(ids(&mut a.deliveries), vec![("t2".into(), 1)]);
        d.expire(start + Duration::from_secs(5));
        assert_eq!(d.stats().deadlines, 2, "nothing is late yet");
        d.expire(Instant::now() + Duration::from_secs(11));
        // Both came back and went out again with the next attempt.
        let mut again = ids(&mut a.deliveries);
        again.sort();
        assert_eq!(again, vec![("t1".into(), 2), ("t2".into(), 2)]);
        assert_eq!(d.stats().deadlines, 2);
        d.unsubscribe(a.worker);
        assert_eq!(d.stats().deadlines, 0);
        assert_eq!(d.stats().inflight, 3);
    }

    #[test]
    fn disconnect_and_ack_timeout_redeliver_with_next_attempt() {
        let d = dispatcher(Duration::from_millis(10));
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        d.offer(0, [(record("t", "q"), 1)]);
        let Subscription {
            worker: a,
            deliveries: mut rx_a,
            ..
        } = d.subscribe("q", 1);
        assert_eq!(ids(&mut rx_a), vec![("t".into(), 1)]);
        let mut rx_b = d.subscribe("q", 1).deliveries;
        d.unsubscribe(a);
        assert_eq!(ids(&mut rx_b), vec![("t".into(), 2)]);
        d.expire(Instant::now() + Duration::from_secs(1));
        assert_eq!(ids(&mut rx_b), vec![("t".into(), 3)]);
    }

    #[test]
    fn detaching_a_partition_drops_its_deliveries() {
        let d = dispatcher(Duration::from_secs(30));
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(7, acks, Arc::default());
        d.offer(7, [(record("t", "q"), 1), (record("u", "q"), 1)]);
        let mut rx = d.subscribe("q", 1).deliveries;
        assert_eq!(ids(&mut rx).len(), 1);
        d.detach_partition(7);
        assert_eq!(d.stats().inflight, 0);
        d.expire(Instant::now() + Duration::from_secs(60));
        assert!(ids(&mut rx).is_empty());
    }

    /// A worker that never reads holds at most its credits in its buffer, however many ack
    /// timeouts pass; the rest waits for, then goes to, another worker.
    #[test]
    fn a_stream_that_stops_reading_buffers_at_most_its_credits() {
        let (d, metrics) = counted(Duration::from_millis(10), IDLE);
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        d.offer(0, (0..20).map(|i| (record(&format!("t{i}"), "q"), 1)));
        let stopped = d.subscribe("q", 3);
        assert_eq!(stopped.deliveries.len(), 3);
        let mut now = Instant::now();
        for _ in 0..50 {
            // Each timeout gives the credit back; the unread buffer refuses the refill.
            now += Duration::from_secs(1);
            d.expire(now);
            assert_eq!(stopped.deliveries.len(), 3);
            assert_eq!(d.stats().pending, 20);
        }
        assert_eq!(
            metrics.timers_delivered.get(),
            3,
            "no refill of a full buffer"
        );
        let mut reader = d.subscribe("q", 100);
        let got = ids(&mut reader.deliveries);
        assert_eq!(got.len(), 20, "everything goes to the worker that reads");
        assert_eq!(got.iter().filter(|(_, attempt)| *attempt > 1).count(), 3);
        // The stopped stream's buffer never grew.
        assert_eq!(stopped.deliveries.len(), 3);
    }

    /// A stream acknowledges only what it holds; any other ack is refused, counted, and
    /// never reaches the engine.
    #[test]
    fn only_the_holding_stream_may_acknowledge() {
        let (d, metrics) = counted(Duration::from_secs(30), IDLE);
        let (acks, mut acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        d.offer(0, [(record("t", "q"), 1), (record("u", "q"), 1)]);
        let mut a = d.subscribe("q", 1);
        let mut b = d.subscribe("q", 1);
        assert_eq!(ids(&mut a.deliveries), vec![("t".into(), 1)]);
        assert_eq!(ids(&mut b.deliveries), vec![("u".into(), 1)]);
        // Delivered to another stream.
        assert_eq!(d.ack(b.worker, &key("t")), Err(AckRefused::NotHolder));
        // Never delivered at all.
        assert_eq!(d.ack(b.worker, &key("never")), Err(AckRefused::NotInFlight));
        // The holder still may, once.
        assert_eq!(d.ack(a.worker, &key("t")), Ok(()));
        assert_eq!(acked.try_recv().unwrap().timer_id, "t");
        assert_eq!(d.ack(a.worker, &key("t")), Err(AckRefused::NotInFlight));
        assert!(acked.try_recv().is_err(), "a refused ack never completes");
        assert_eq!(metrics.acks_refused.get(), 3);
        assert_eq!(metrics.timers_acked.get(), 1);
        assert_eq!(d.stats().inflight, 1);
    }

    /// After an ack timeout the delivery is no longer the late stream's, whether it waits for
    /// a worker or went to another one.
    #[test]
    fn a_timed_out_delivery_is_no_longer_the_late_streams_to_acknowledge() {
        let (d, metrics) = counted(Duration::from_millis(10), IDLE);
        let (acks, mut acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        d.offer(0, [(record("t", "q"), 1)]);
        // The late stream does not read: its full buffer refuses the delivery's next attempt.
        let mut late = d.subscribe("q", 1);
        d.expire(Instant::now() + Duration::from_secs(1));
        assert_eq!(d.stats().pending, 1);
        assert_eq!(d.ack(late.worker, &key("t")), Err(AckRefused::NotHolder));
        let mut other = d.subscribe("q", 1);
        assert_eq!(ids(&mut other.deliveries), vec![("t".into(), 2)]);
        // The late stream reads its stale copy and acknowledges it: still not its to ack.
        assert_eq!(ids(&mut late.deliveries), vec![("t".into(), 1)]);
        assert_eq!(d.ack(late.worker, &key("t")), Err(AckRefused::NotHolder));
        assert!(acked.try_recv().is_err(), "a refused ack never completes");
        assert_eq!(d.ack(other.worker, &key("t")), Ok(()));
        assert_eq!(acked.try_recv().unwrap().timer_id, "t");
        assert_eq!(metrics.acks_refused.get(), 2);
    }

    /// A stream sent a delivery that then says nothing for the idle timeout is closed; its
    /// deliveries go to another worker. Any message, even a refused ack, restarts the wait.
    #[test]
    fn a_stream_silent_after_a_delivery_is_closed_after_the_idle_timeout() {
        let idle = Duration::from_secs(60);
        let (d, metrics) = counted(Duration::from_secs(600), idle);
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks, Arc::default());
        // Waiting for work is not idleness.
        let mut quiet = d.subscribe("q", 2);
        let start = Instant::now();
        d.expire(start + idle * 10);
        assert_eq!(d.stats().workers, 1);
        d.offer(0, [(record("t", "q"), 1)]);
        assert_eq!(ids(&mut quiet.deliveries).len(), 1);
        let sent = Instant::now();
        d.expire(sent + idle / 2);
        assert_eq!(
            d.ack(quiet.worker, &key("nope")),
            Err(AckRefused::NotInFlight)
        );
        // The refused ack answered: the delivery is not unanswered any more.
        d.expire(sent + idle + Duration::from_millis(1));
        assert_eq!(d.stats().workers, 1);
        assert!(quiet.closed.try_recv().is_err());
        // The next delivery starts a new wait, which runs out.
        d.offer(0, [(record("u", "q"), 1)]);
        assert_eq!(ids(&mut quiet.deliveries).len(), 1);
        let mut rescuer = d.subscribe("q", 5);
        d.expire(Instant::now() + idle);
        assert_eq!(quiet.closed.try_recv(), Ok(()));
        assert_eq!(d.stats().workers, 1);
        assert_eq!(metrics.workers_connected.get(), 1);
        let mut got = ids(&mut rescuer.deliveries);
        got.sort();
        assert_eq!(got, vec![("t".into(), 2), ("u".into(), 2)]);
    }
}
