//! Which fired timers of a partition to hold in memory for delivery, without I/O.
//!
//! Fired, unacknowledged timers live on disk, in the fired index (per queue, in fire order).
//! Memory holds only a window of them per queue that has a worker on this node: at most
//! `timers` and `bytes` (counted by the dispatcher, [`Held`]); as acks free room, the window
//! moves on from a cursor in the index. A queue without a worker costs nothing per fired
//! timer, however many there are. While a window has read everything there is (caught up),
//! timers a fire just committed join it at once, without reading them back.
//!
//! A fired timer of a fire committed before this engine started may have been delivered by an
//! earlier leader: it goes out as the next attempt. One fired since goes out as attempt 1.
//!
//! A timer fired ahead of its due instant (fire-ahead) is taken into the window like any other
//! but parked until the engine's time reaches that instant ([`DeliveryWindows::release`]):
//! none goes out early (G2), and a parked timer counts against the window's room.

use std::collections::{BTreeMap, HashMap};

use hourglass_storage::{keys, FiredEntry};
use hourglass_types::TimerRecord;

use crate::dispatch::{Demand, Held};

/// Reads a partition's fired index.
pub trait FiredIndex {
    /// Fired timers of `queue` from the raw key `from` on, in fire order: at most `limit`,
    /// and no more once their payloads reach `max_bytes` (at least one when any is left).
    fn scan(
        &self,
        queue: &str,
        from: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<FiredEntry>, String>;
}

/// A fired timer to offer for delivery, with its delivery attempt.
pub type Delivery = (TimerRecord, u32);

/// How much of one queue's fired timers a partition holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    pub timers: usize,
    pub bytes: usize,
}

struct Cursor {
    /// Every fired timer of the queue below this raw key was offered.
    next: Vec<u8>,
    /// The last read found nothing more on disk: until something does not fit, every timer
    /// fired from now on is offered as it fires.
    caught_up: bool,
    /// Taken from the index but not due yet, by `(fire_at, raw key)`: released in due order.
    parked: BTreeMap<(u64, Vec<u8>), Delivery>,
    /// What `parked` holds.
    parked_held: Held,
}

impl Cursor {
    /// Hands `record` out now if it is due by `now_ms`, else parks it until it is.
    fn take(
        &mut self,
        raw: Vec<u8>,
        record: TimerRecord,
        attempt: u32,
        now_ms: u64,
        out: &mut Vec<Delivery>,
    ) {
        if record.fire_at_ms <= now_ms {
            out.push((record, attempt));
        } else {
            self.parked_held.timers += 1;
            self.parked_held.bytes += record.definition.payload.len();
            self.parked
                .insert((record.fire_at_ms, raw), (record, attempt));
        }
    }
}

pub struct DeliveryWindows<R> {
    partition: u32,
    config: WindowConfig,
    reader: R,
    /// Fires at or below this log index were committed before this engine started.
    started_after_seq: u64,
    cursors: HashMap<String, Cursor>,
}

impl<R: FiredIndex> DeliveryWindows<R> {
    /// Windows of an engine whose partition's log ended at `last_log_index` when it started.
    pub fn new(partition: u32, config: WindowConfig, reader: R, last_log_index: u64) -> Self {
        DeliveryWindows {
            partition,
            config,
            reader,
            started_after_seq: last_log_index,
            cursors: HashMap::new(),
        }
    }

    fn cursor(&mut self, queue: &str) -> &mut Cursor {
        let partition = self.partition;
        self.cursors
            .entry(queue.to_owned())
            .or_insert_with(|| Cursor {
                next: keys::fired_queue_prefix(partition, queue),
                caught_up: false,
                parked: BTreeMap::new(),
                parked_held: Held::default(),
            })
    }

    /// Moves `queue`'s cursor past `last`, the raw key of the last timer offered (if any).
    fn advance(&mut self, queue: &str, last: Option<Vec<u8>>, caught_up: bool) {
        let cursor = self.cursor(queue);
        if let Some(mut raw) = last {
            raw.push(0);
            cursor.next = raw;
        }
        cursor.caught_up = caught_up;
    }

    fn attempt(&self, record: &TimerRecord) -> u32 {
        if record.fire_seq.unwrap_or(0) <= self.started_after_seq {
            record.attempt.saturating_add(1)
        } else {
            1
        }
    }

    /// Room left in a window whose dispatcher holds `held` and which has `parked` parked, as
    /// (timers, bytes); `None` when it is full.
    fn room(&self, held: Held, parked: Held) -> Option<(usize, usize)> {
        let timers = self
            .config
            .timers
            .saturating_sub(held.timers.saturating_add(parked.timers));
        let bytes = self
            .config
            .bytes
            .saturating_sub(held.bytes.saturating_add(parked.bytes));
        (timers > 0 && bytes > 0).then_some((timers, bytes))
    }

    /// Fired timers of `queue` to offer now, read from the index after the cursor into the
    /// room its window has left (`held` is what the dispatcher holds of it). None is offered
    /// before it is due by `now_ms`, the engine's time: those are parked.
    pub fn load(&mut self, queue: &str, held: Held, now_ms: u64) -> Result<Vec<Delivery>, String> {
        let parked = self.cursor(queue).parked_held;
        let Some((limit, max_bytes)) = self.room(held, parked) else {
            return Ok(Vec::new());
        };
        let cursor = self.cursor(queue);
        if cursor.caught_up {
            return Ok(Vec::new());
        }
        let from = cursor.next.clone();
        let entries = self.reader.scan(queue, &from, limit, max_bytes)?;
        let bytes: usize = entries
            .iter()
            .map(|e| e.record.definition.payload.len())
            .sum();
        let caught_up = entries.len() < limit && bytes < max_bytes;
        let mut out = Vec::with_capacity(entries.len());
        let next = entries.last().map(|e| e.raw.clone());
        for FiredEntry { raw, record } in entries {
            let attempt = self.attempt(&record);
            self.cursor(queue)
                .take(raw, record, attempt, now_ms, &mut out);
        }
        self.advance(queue, next, caught_up);
        Ok(out)
    }

    /// Parked timers of every queue that are due by `now_ms`, in due order per queue.
    pub fn release(&mut self, now_ms: u64) -> Vec<Delivery> {
        let mut out = Vec::new();
        for cursor in self.cursors.values_mut() {
            while let Some(entry) = cursor.parked.first_entry() {
                if entry.key().0 > now_ms {
                    break;
                }
                let (record, attempt) = entry.remove();
                cursor.parked_held.timers -= 1;
                cursor.parked_held.bytes -= record.definition.payload.len();
                out.push((record, attempt));
            }
        }
        out
    }

    /// The earliest due instant of a parked timer, when the engine must look again.
    pub fn next_release_ms(&self) -> Option<u64> {
        self.cursors
            .values()
            .filter_map(|c| c.parked.first_key_value().map(|(k, _)| k.0))
            .min()
    }

    /// Of the timers a fire just committed, those to offer at once: the next ones of windows
    /// that are caught up, have room and a worker (`demand` holds what the dispatcher holds of
    /// every queue with a worker on this node). The others wait on disk for [`Self::load`].
    pub fn fired(
        &mut self,
        records: Vec<TimerRecord>,
        demand: &Demand,
        now_ms: u64,
    ) -> Vec<Delivery> {
        let mut by_queue: BTreeMap<String, Vec<(Vec<u8>, TimerRecord)>> = BTreeMap::new();
        for record in records {
            let raw = keys::fired_key_of(self.partition, &record);
            by_queue
                .entry(record.definition.queue.clone())
                .or_default()
                .push((raw, record));
        }
        let mut out = Vec::new();
        for (queue, mut fired) in by_queue {
            let Some(held) = demand.get(&queue) else {
                // No worker: the window is not kept up; it starts over from its cursor.
                if let Some(cursor) = self.cursors.get_mut(&queue) {
                    cursor.caught_up = false;
                }
                continue;
            };
            let Some(cursor) = self.cursors.get(&queue).filter(|c| c.caught_up) else {
                continue;
            };
            let parked = cursor.parked_held;
            fired.sort_by(|a, b| a.0.cmp(&b.0));
            let mut held = held;
            let mut next = None;
            let mut all = true;
            for (raw, record) in fired {
                if self.room(held, parked).is_none() {
                    all = false;
                    break;
                }
                held.timers += 1;
                held.bytes += record.definition.payload.len();
                next = Some(raw.clone());
                let attempt = self.attempt(&record);
                self.cursor(&queue)
                    .take(raw, record, attempt, now_ms, &mut out);
            }
            self.advance(&queue, next, all);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_types::{TimerDefinition, TimerKey, TimerState};
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::rc::Rc;

    const P: u32 = 2;
    const NOW: u64 = 10_000;

    /// An in-memory fired index shared with the test.
    #[derive(Clone, Default)]
    struct Index(Rc<RefCell<BTreeMap<Vec<u8>, TimerRecord>>>);

    impl Index {
        fn fire(&self, seq: u64, id: &str, queue: &str, payload: usize) -> TimerRecord {
            self.fire_due(seq, id, queue, payload, NOW - 1)
        }
        /// A timer due at `due`, fired by the fire at log index `seq` (ahead, if `due` is
        /// after the time the test gives the windows).
        fn fire_due(
            &self,
            seq: u64,
            id: &str,
            queue: &str,
            payload: usize,
            due: u64,
        ) -> TimerRecord {
            let record = TimerRecord {
                key: TimerKey {
                    workflow_id: "wf".into(),
                    timer_id: id.into(),
                },
                definition: TimerDefinition {
                    queue: queue.into(),
                    fire_at_ms: Some(due),
                    delay_ms: None,
                    payload: vec![1; payload],
                },
                fire_at_ms: due,
                state: TimerState::Fired,
                created_at_ms: 0,
                fired_at_ms: Some(due),
                finished_at_ms: None,
                attempt: 1,
                fire_seq: Some(seq),
            };
            self.0
                .borrow_mut()
                .insert(keys::fired_key_of(P, &record), record.clone());
            record
        }
        fn ack(&self, record: &TimerRecord) {
            self.0.borrow_mut().remove(&keys::fired_key_of(P, record));
        }
    }

    impl FiredIndex for Index {
        fn scan(
            &self,
            queue: &str,
            from: &[u8],
            limit: usize,
            max_bytes: usize,
        ) -> Result<Vec<FiredEntry>, String> {
            let end = keys::fired_queue_end(P, queue);
            let mut out = Vec::new();
            let mut bytes = 0;
            for (raw, record) in self.0.borrow().range(from.to_vec()..end) {
                if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                    break;
                }
                bytes += record.definition.payload.len();
                out.push(FiredEntry {
                    raw: raw.clone(),
                    record: record.clone(),
                });
            }
            Ok(out)
        }
    }

    fn windows(index: &Index, timers: usize, bytes: usize, started: u64) -> DeliveryWindows<Index> {
        DeliveryWindows::new(P, WindowConfig { timers, bytes }, index.clone(), started)
    }

    fn ids(out: &[Delivery]) -> Vec<(String, u32)> {
        out.iter()
            .map(|(r, attempt)| (r.key.timer_id.clone(), *attempt))
            .collect()
    }

    fn held(timers: usize, bytes: usize) -> Held {
        Held { timers, bytes }
    }

    #[test]
    fn a_window_reads_in_fire_order_within_its_room() {
        let index = Index::default();
        for (seq, id) in [(3, "c"), (1, "a"), (2, "b"), (4, "d")] {
            index.fire(seq, id, "q", 10);
        }
        index.fire(1, "other", "r", 10);
        // Fired before this engine started (seq <= 2): the next attempt.
        let mut w = windows(&index, 2, 1_000, 2);
        assert_eq!(
            ids(&w.load("q", held(0, 0), NOW).unwrap()),
            [("a".into(), 2), ("b".into(), 2)]
        );
        // Full: nothing more, and no read.
        assert!(w.load("q", held(2, 20), NOW).unwrap().is_empty());
        // One acked: one more, after the cursor.
        assert_eq!(
            ids(&w.load("q", held(1, 10), NOW).unwrap()),
            [("c".into(), 1)]
        );
        // Bytes bound too: 15 bytes of room hold two payloads of 10 at most.
        let mut w = windows(&index, 100, 15, 0);
        assert_eq!(w.load("q", held(0, 0), NOW).unwrap().len(), 2);
        assert!(w.load("q", held(0, 15), NOW).unwrap().is_empty());
        // Queues are separate.
        assert_eq!(
            ids(&w.load("r", held(0, 0), NOW).unwrap()),
            [("other".into(), 1)]
        );
    }

    #[test]
    fn fires_join_a_caught_up_window_and_wait_on_disk_otherwise() {
        let index = Index::default();
        let mut w = windows(&index, 3, 1_000, 0);
        let demand = |timers| Demand::from_iter([("q".to_owned(), held(timers, 0))]);
        // Nothing loaded yet: not caught up, so the fire waits on disk.
        let first = index.fire(1, "a", "q", 0);
        assert!(w.fired(vec![first], &demand(0), NOW).is_empty());
        assert_eq!(
            ids(&w.load("q", held(0, 0), NOW).unwrap()),
            [("a".into(), 1)]
        );
        // Caught up: fired timers go out at once, in key order, as far as the room goes.
        let fired = vec![
            index.fire(2, "c", "q", 0),
            index.fire(2, "b", "q", 0),
            index.fire(2, "d", "q", 0),
        ];
        assert_eq!(
            ids(&w.fired(fired, &demand(1), NOW)),
            [("b".into(), 1), ("c".into(), 1)]
        );
        // "d" did not fit: it is read from disk when room comes, and nothing is read twice.
        assert!(w.load("q", held(3, 0), NOW).unwrap().is_empty());
        assert_eq!(
            ids(&w.load("q", held(2, 0), NOW).unwrap()),
            [("d".into(), 1)]
        );
        assert!(w.load("q", held(0, 0), NOW).unwrap().is_empty());
        // A queue without a worker gets nothing in memory, and its window starts over.
        let e = index.fire(3, "e", "q", 0);
        assert!(w.fired(vec![e], &Demand::from_iter([]), NOW).is_empty());
        let f = index.fire(4, "f", "q", 0);
        assert!(w.fired(vec![f], &demand(0), NOW).is_empty());
        assert_eq!(
            ids(&w.load("q", held(0, 0), NOW).unwrap()),
            [("e".into(), 1), ("f".into(), 1)]
        );
    }

    #[test]
    fn timers_fired_ahead_are_parked_until_due_and_count_against_the_room() {
        let index = Index::default();
        index.fire(1, "a", "q", 0);
        let mut w = windows(&index, 3, 1_000, 0);
        // Read from disk before its due instant (a new leader, say): parked, not offered.
        assert!(w.load("q", held(0, 0), NOW - 2).unwrap().is_empty());
        assert_eq!(w.next_release_ms(), Some(NOW - 1));
        assert!(w.release(NOW - 2).is_empty());
        assert_eq!(ids(&w.release(NOW - 1)), [("a".into(), 1)]);
        assert_eq!(w.next_release_ms(), None);
        // Caught up: a fire of one due timer and three due later, one of which does not fit.
        let demand = |timers| Demand::from_iter([("q".to_owned(), held(timers, 0))]);
        let fired = vec![
            index.fire_due(2, "late", "q", 0, NOW + 30),
            index.fire_due(2, "now", "q", 0, NOW),
            index.fire_due(2, "soon", "q", 0, NOW + 10),
            index.fire_due(2, "later", "q", 0, NOW + 40),
        ];
        // The dispatcher holds "a": room for two, the due one at once and one parked; the
        // other two wait on disk.
        assert_eq!(ids(&w.fired(fired, &demand(1), NOW)), [("now".into(), 1)]);
        assert_eq!(w.next_release_ms(), Some(NOW + 10));
        // The parked one counts: with "a" and "now" held, the window is full.
        assert!(w.load("q", held(2, 0), NOW).unwrap().is_empty());
        assert_eq!(ids(&w.release(NOW + 29)), [("soon".into(), 1)]);
        // Two acked: the rest is read from disk, parked, and released in due order.
        assert!(w.load("q", held(1, 0), NOW + 29).unwrap().is_empty());
        assert_eq!(w.next_release_ms(), Some(NOW + 30));
        assert_eq!(ids(&w.release(NOW + 39)), [("late".into(), 1)]);
        assert_eq!(ids(&w.release(NOW + 40)), [("later".into(), 1)]);
        assert_eq!(w.next_release_ms(), None);
        assert!(w.load("q", held(0, 0), NOW + 40).unwrap().is_empty());
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A fire of these queues' timers (`true`: queue "q", else "r").
        Fire(Vec<bool>),
        /// The worker acks this many of what is held.
        Ack(usize),
        /// The engine's loop looks at the windows.
        Load,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            prop::collection::vec(any::<bool>(), 0..6).prop_map(Step::Fire),
            (0usize..5).prop_map(Step::Ack),
            Just(Step::Load),
        ]
    }

    proptest! {
        /// Against a model of the dispatcher (what is held, in offer order): whatever the
        /// interleaving of fires, acks and loads, a window never holds more than its bound,
        /// nothing is offered twice, every queue's offers follow fire order, and once the
        /// fires stop, loading drains the index completely.
        #[test]
        fn windows_are_bounded_ordered_and_lose_nothing(
            steps in prop::collection::vec(step(), 1..60),
            cap in 1usize..5,
        ) {
            let index = Index::default();
            let mut w = windows(&index, cap, usize::MAX, 0);
            let mut held_q: Vec<TimerRecord> = Vec::new();
            let mut offered: Vec<TimerRecord> = Vec::new();
            let mut seq = 0u64;
            let mut n = 0;
            let take = |out: Vec<Delivery>, held_q: &mut Vec<TimerRecord>, offered: &mut Vec<TimerRecord>| {
                for (r, _) in out {
                    prop_assert_eq!(r.definition.queue.as_str(), "q", "r has no worker");
                    held_q.push(r.clone());
                    offered.push(r);
                }
                Ok(())
            };
            // Then the fires stop and the worker keeps acking everything it is given.
            let drain = (0..200).flat_map(|_| [Step::Ack(usize::MAX), Step::Load]);
            for s in steps.into_iter().chain(drain) {
                match s {
                    Step::Fire(queues) => {
                        seq += 1;
                        let mut fired = Vec::new();
                        for is_q in queues {
                            n += 1;
                            let queue = if is_q { "q" } else { "r" };
                            fired.push(index.fire(seq, &format!("t{n:04}"), queue, 1));
                        }
                        let demand = Demand::from_iter([("q".to_owned(), held(held_q.len(), held_q.len()))]);
                        let out = w.fired(fired, &demand, NOW);
                        take(out, &mut held_q, &mut offered)?;
                    }
                    Step::Ack(k) => {
                        for r in held_q.drain(..k.min(held_q.len())) {
                            index.ack(&r);
                        }
                    }
                    Step::Load => {
                        let out = w.load("q", held(held_q.len(), held_q.len()), NOW).unwrap();
                        take(out, &mut held_q, &mut offered)?;
                    }
                }
                prop_assert!(held_q.len() <= cap, "window of {} over {}", held_q.len(), cap);
            }
            let keys: Vec<Vec<u8>> = offered.iter().map(|r| keys::fired_key_of(P, r)).collect();
            let unique: BTreeSet<_> = keys.iter().collect();
            prop_assert_eq!(unique.len(), keys.len(), "offered twice");
            let mut sorted = keys.clone();
            sorted.sort();
            prop_assert_eq!(&keys, &sorted, "out of fire order");
            let left: Vec<_> = index
                .0
                .borrow()
                .values()
                .filter(|r| r.definition.queue == "q")
                .map(|r| r.key.timer_id.clone())
                .collect();
            prop_assert!(left.is_empty(), "never offered: {:?}", left);
        }
    }
}
