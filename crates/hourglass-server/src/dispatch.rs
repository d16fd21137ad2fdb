//! The node's delivery hub: fired timers of the partitions this node leads wait here until a
//! worker of their queue takes them, and stay until acknowledged.
//!
//! Deliveries go round-robin to the queue's subscribers that have credit. A delivery not
//! acknowledged within the ack timeout, or held by a worker that disconnects, goes back to the
//! front of its queue with attempt + 1 (G5). Acks are handed to the partition's engine, which
//! commits them as `Complete` proposals.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hourglass_proto::v1;
use hourglass_types::{TimerKey, TimerRecord};
use tokio::sync::mpsc;

use crate::convert;
use crate::metrics::Metrics;

pub type WorkerId = u64;

struct Inflight {
    partition: u32,
    record: TimerRecord,
    attempt: u32,
    holder: Option<(WorkerId, Instant)>,
}

struct WorkerState {
    queue: String,
    tx: mpsc::UnboundedSender<v1::Delivery>,
    credits: u32,
    holding: HashSet<TimerKey>,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<TimerKey>,
    workers: Vec<WorkerId>,
    next: usize,
}

#[derive(Default)]
struct State {
    inflight: HashMap<TimerKey, Inflight>,
    workers: HashMap<WorkerId, WorkerState>,
    queues: HashMap<String, QueueState>,
    ack_sinks: HashMap<u32, mpsc::UnboundedSender<TimerKey>>,
    next_worker: WorkerId,
}

/// Counts for tests.
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchStats {
    pub inflight: usize,
    pub workers: usize,
}

/// The time a delivery is stamped with (`delivered_at`): the node's cluster time.
pub type DeliveryClock = Box<dyn Fn() -> u64 + Send + Sync>;

pub struct Dispatcher {
    state: Mutex<State>,
    ack_timeout: Duration,
    metrics: Arc<Metrics>,
    now_ms: DeliveryClock,
}

impl Dispatcher {
    pub fn new(ack_timeout: Duration, metrics: Arc<Metrics>, now_ms: DeliveryClock) -> Self {
        Dispatcher {
            state: Mutex::new(State::default()),
            ack_timeout,
            metrics,
            now_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("dispatcher state poisoned")
    }

    #[cfg(test)]
    pub fn stats(&self) -> DispatchStats {
        let s = self.lock();
        DispatchStats {
            inflight: s.inflight.len(),
            workers: s.workers.len(),
        }
    }

    /// This node now leads `partition`; acks of its timers go to `acks`.
    pub fn attach_partition(&self, partition: u32, acks: mpsc::UnboundedSender<TimerKey>) {
        self.lock().ack_sinks.insert(partition, acks);
    }

    /// This node no longer leads `partition`: its deliveries are the new leader's to make.
    pub fn detach_partition(&self, partition: u32) {
        let mut s = self.lock();
        s.ack_sinks.remove(&partition);
        let gone: Vec<TimerKey> = s
            .inflight
            .iter()
            .filter(|(_, i)| i.partition == partition)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(Inflight {
                holder: Some((worker, _)),
                ..
            }) = s.inflight.remove(&key)
            {
                if let Some(w) = s.workers.get_mut(&worker) {
                    w.holding.remove(&key);
                    w.credits += 1;
                }
            }
        }
        // Stale keys left in pending queues are skipped when popped.
    }

    /// Offers fired timers for delivery with the given attempt numbers.
    pub fn offer(&self, partition: u32, timers: impl IntoIterator<Item = (TimerRecord, u32)>) {
        let mut s = self.lock();
        let mut touched = HashSet::new();
        for (record, attempt) in timers {
            let key = record.key.clone();
            if s.inflight.contains_key(&key) {
                continue;
            }
            let queue = record.definition.queue.clone();
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
                },
            );
            touched.insert(queue);
        }
        for q in touched {
            pump(&mut s, &q, self.ack_timeout, &self.metrics, &self.now_ms);
        }
    }

    /// Registers a worker of `queue` that may hold `credits` unacknowledged deliveries.
    pub fn subscribe(
        &self,
        queue: &str,
        credits: u32,
    ) -> (WorkerId, mpsc::UnboundedReceiver<v1::Delivery>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.lock();
        s.next_worker += 1;
        let id = s.next_worker;
        s.workers.insert(
            id,
            WorkerState {
                queue: queue.to_owned(),
                tx,
                credits,
                holding: HashSet::new(),
            },
        );
        s.queues
            .entry(queue.to_owned())
            .or_default()
            .workers
            .push(id);
        self.metrics.workers_connected.inc();
        pump(&mut s, queue, self.ack_timeout, &self.metrics, &self.now_ms);
        (id, rx)
    }

    /// The worker is gone: what it held is delivered again to others.
    pub fn unsubscribe(&self, worker: WorkerId) {
        let mut s = self.lock();
        let Some(w) = s.workers.remove(&worker) else {
            return;
        };
        self.metrics.workers_connected.dec();
        if let Some(q) = s.queues.get_mut(&w.queue) {
            q.workers.retain(|&id| id != worker);
        }
        for key in w.holding {
            requeue(&mut s, key);
        }
        pump(
            &mut s,
            &w.queue,
            self.ack_timeout,
            &self.metrics,
            &self.now_ms,
        );
    }

    /// A worker acknowledged a delivery. Acks of deliveries it no longer holds (timed out and
    /// handed to another worker, or of a partition this node stopped leading) still complete
    /// the timer: the work was done.
    pub fn ack(&self, worker: WorkerId, key: &TimerKey) {
        let mut s = self.lock();
        let mut queue = None;
        if let Some(w) = s.workers.get_mut(&worker) {
            if w.holding.remove(key) {
                w.credits += 1;
                queue = Some(w.queue.clone());
            }
        }
        if let Some(inflight) = s.inflight.remove(key) {
            self.metrics.timers_acked.inc();
            if let Some((holder, _)) = inflight.holder {
                if holder != worker {
                    if let Some(w) = s.workers.get_mut(&holder) {
                        w.holding.remove(key);
                        w.credits += 1;
                    }
                }
            }
            if let Some(sink) = s.ack_sinks.get(&inflight.partition) {
                let _ = sink.send(key.clone());
            }
            queue.get_or_insert(inflight.record.definition.queue);
        }
        if let Some(q) = queue {
            pump(&mut s, &q, self.ack_timeout, &self.metrics, &self.now_ms);
        }
    }

    /// Takes back deliveries whose ack deadline passed, to deliver them again.
    pub fn expire(&self, now: Instant) {
        let mut s = self.lock();
        let late: Vec<(TimerKey, WorkerId)> = s
            .inflight
            .iter()
            .filter_map(|(k, i)| match i.holder {
                Some((w, deadline)) if deadline <= now => Some((k.clone(), w)),
                _ => None,
            })
            .collect();
        let mut queues = HashSet::new();
        for (key, worker) in late {
            if let Some(w) = s.workers.get_mut(&worker) {
                w.holding.remove(&key);
                w.credits += 1;
                queues.insert(w.queue.clone());
            }
            if let Some(i) = s.inflight.get(&key) {
                queues.insert(i.record.definition.queue.clone());
            }
            requeue(&mut s, key);
        }
        for q in queues {
            pump(&mut s, &q, self.ack_timeout, &self.metrics, &self.now_ms);
        }
    }
}

/// Puts a held delivery back at the front of its queue for another attempt.
fn requeue(s: &mut State, key: TimerKey) {
    let Some(i) = s.inflight.get_mut(&key) else {
        return;
    };
    i.holder = None;
    i.attempt += 1;
    let queue = i.record.definition.queue.clone();
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
        ..
    } = s;
    let Some(q) = queues.get_mut(queue) else {
        return;
    };
    while !q.pending.is_empty() && !q.workers.is_empty() {
        let n = q.workers.len();
        let Some(pick) = (0..n).map(|i| (q.next + i) % n).find(|&i| {
            workers
                .get(&q.workers[i])
                .is_some_and(|w| w.credits > 0 && !w.tx.is_closed())
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
        let now_ms = clock().max(r.fired_at_ms.unwrap_or(0));
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
        if w.tx.send(delivery).is_err() {
            q.pending.push_front(key);
            continue;
        }
        w.credits -= 1;
        w.holding.insert(key);
        metrics.timers_delivered.inc();
        if item.attempt > 1 {
            metrics.timers_redelivered.inc();
        }
        item.holder = Some((worker_id, Instant::now() + ack_timeout));
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
        }
    }

    fn ids(rx: &mut mpsc::UnboundedReceiver<v1::Delivery>) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        while let Ok(d) = rx.try_recv() {
            out.push((d.timer_id, d.attempt));
        }
        out
    }

    #[test]
    fn kept_until_a_worker_subscribes_then_credit_bounded_round_robin() {
        let d = Dispatcher::new(
            Duration::from_secs(30),
            Arc::new(Metrics::new(1)),
            Box::new(convert::now_ms),
        );
        let (acks, mut acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks);
        d.offer(0, (0..5).map(|i| (record(&format!("t{i}"), "q"), 1)));
        let (a, mut rx_a) = d.subscribe("q", 2);
        let (_b, mut rx_b) = d.subscribe("q", 1);
        assert_eq!(ids(&mut rx_a), vec![("t0".into(), 1), ("t1".into(), 1)]);
        assert_eq!(ids(&mut rx_b), vec![("t2".into(), 1)]);
        // Other queues never see them.
        let (_c, mut rx_c) = d.subscribe("other", 10);
        assert!(ids(&mut rx_c).is_empty());
        d.ack(a, &record("t0", "q").key);
        assert_eq!(acked.try_recv().unwrap().timer_id, "t0");
        assert_eq!(ids(&mut rx_a), vec![("t3".into(), 1)]);
        assert_eq!(d.stats().inflight, 4);
    }

    #[test]
    fn disconnect_and_ack_timeout_redeliver_with_next_attempt() {
        let d = Dispatcher::new(
            Duration::from_millis(10),
            Arc::new(Metrics::new(1)),
            Box::new(convert::now_ms),
        );
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(0, acks);
        d.offer(0, [(record("t", "q"), 1)]);
        let (a, mut rx_a) = d.subscribe("q", 1);
        assert_eq!(ids(&mut rx_a), vec![("t".into(), 1)]);
        let (_b, mut rx_b) = d.subscribe("q", 1);
        d.unsubscribe(a);
        assert_eq!(ids(&mut rx_b), vec![("t".into(), 2)]);
        d.expire(Instant::now() + Duration::from_secs(1));
        assert_eq!(ids(&mut rx_b), vec![("t".into(), 3)]);
    }

    #[test]
    fn detaching_a_partition_drops_its_deliveries() {
        let d = Dispatcher::new(
            Duration::from_secs(30),
            Arc::new(Metrics::new(1)),
            Box::new(convert::now_ms),
        );
        let (acks, _acked) = mpsc::unbounded_channel();
        d.attach_partition(7, acks);
        d.offer(7, [(record("t", "q"), 1), (record("u", "q"), 1)]);
        let (_a, mut rx) = d.subscribe("q", 1);
        assert_eq!(ids(&mut rx).len(), 1);
        d.detach_partition(7);
        assert_eq!(d.stats().inflight, 0);
        d.expire(Instant::now() + Duration::from_secs(60));
        assert!(ids(&mut rx).is_empty());
    }
}
