//! The decisions of a partition's timer engine, without I/O: which timers to hold in memory,
//! which are due, what goes back after a fire, when to wake up.
//!
//! Time comes in from outside ([`EngineCore::advance`], cluster time) and never goes back
//! inside: the core's time is the highest cluster time it was given. That is safe for G2 (a
//! cluster time is at or below the true time when a majority of clocks is right, so the
//! highest one seen is too) and keeps the wheel, whose own time cannot go back, consistent
//! with what the engine proposes. Timers come from a [`DueIndex`]; the wheel holds at most a
//! cap of them, always the earliest (G7).
//!
//! With fire-ahead, timers are taken `ahead_ms` before their due instant, so that their fire
//! has committed by then: the wheel runs that far ahead of the core's time. What the core
//! takes early is not handed to a worker early; that is the delivery windows' job.

use std::collections::{BTreeMap, VecDeque};

use hourglass_storage::{keys, DueEntry, TimerEvent};
use hourglass_types::TimerKey;
use hourglass_wheel::{Handle, ManualClock, TimingWheel};

/// Reads the partition's due index, in `(fire_at, workflow_id, timer_id)` order.
pub trait DueIndex {
    /// At most `limit` entries from the raw key `from` on, due before `until_ms`.
    fn scan(&self, from: &[u8], until_ms: u64, limit: usize) -> Result<Vec<DueEntry>, String>;
}

#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    /// How far ahead of now timers are loaded.
    pub window_ms: u64,
    /// Most timers held in the wheel.
    pub max_in_memory: usize,
    /// Most timers per `Fire` proposal.
    pub batch: usize,
    /// How long before their due instant timers are taken to fire.
    pub ahead_ms: u64,
}

pub struct EngineCore<R> {
    partition: u32,
    config: CoreConfig,
    reader: R,
    /// The wheel's clock; set to `now_ms` by `advance`.
    clock: ManualClock,
    now_ms: u64,
    wheel: TimingWheel<TimerKey, ManualClock>,
    /// Every timer in the wheel, by raw due key (the due index's order).
    loaded: BTreeMap<Vec<u8>, Handle>,
    /// Every due-index entry below this raw key is in the wheel, due, or being fired.
    loaded_until: Vec<u8>,
    /// How far ahead the window reaches when the cap did not cut it short.
    covered_until_ms: Option<u64>,
    /// Expired from the wheel, waiting to be proposed, in due order.
    due: VecDeque<(u64, TimerKey)>,
}

impl<R: DueIndex> EngineCore<R> {
    /// A core starting at `start_ms`: the higher of the cluster time and the partition's
    /// high-water time.
    pub fn new(partition: u32, config: CoreConfig, reader: R, start_ms: u64) -> Self {
        let clock = ManualClock::new(start_ms.saturating_add(config.ahead_ms));
        EngineCore {
            partition,
            config,
            reader,
            wheel: TimingWheel::new(clock.clone()),
            clock,
            now_ms: start_ms,
            loaded: BTreeMap::new(),
            loaded_until: keys::partition_prefix(partition).to_vec(),
            covered_until_ms: None,
            due: VecDeque::new(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Timers due by this instant are taken to fire: the core's time plus the fire-ahead.
    pub fn horizon_ms(&self) -> u64 {
        self.now_ms.saturating_add(self.config.ahead_ms)
    }

    /// Timers held in memory: in the wheel or due.
    pub fn in_memory(&self) -> usize {
        self.wheel.len() + self.due.len()
    }

    /// Moves the core's time to `cluster_ms` if that is later; returns the core's time.
    pub fn advance(&mut self, cluster_ms: u64) -> u64 {
        if cluster_ms > self.now_ms {
            self.now_ms = cluster_ms;
            self.clock.set(self.horizon_ms());
        }
        self.now_ms
    }

    /// Follows a change applied to the partition's state.
    pub fn on_event(&mut self, event: TimerEvent) {
        match event {
            TimerEvent::Scheduled { key, fire_at_ms } => {
                let raw = keys::due_key(self.partition, fire_at_ms, &key);
                if raw >= self.loaded_until || self.loaded.contains_key(&raw) {
                    return;
                }
                self.insert(raw, fire_at_ms, key);
                if self.wheel.len() > self.config.max_in_memory {
                    self.evict_latest();
                }
            }
            TimerEvent::Unscheduled { key, fire_at_ms } => {
                let raw = keys::due_key(self.partition, fire_at_ms, &key);
                if let Some(handle) = self.loaded.remove(&raw) {
                    self.wheel.cancel(handle);
                }
            }
            TimerEvent::Reset => self.reset(),
        }
    }

    fn insert(&mut self, raw: Vec<u8>, fire_at_ms: u64, key: TimerKey) {
        let handle = self.wheel.insert(fire_at_ms, key);
        self.loaded.insert(raw, handle);
    }

    /// Gives the latest loaded timer back to the due index: the loader reads it again later.
    fn evict_latest(&mut self) {
        if let Some((raw, handle)) = self.loaded.pop_last() {
            self.wheel.cancel(handle);
            self.loaded_until = raw;
            self.covered_until_ms = None;
        }
    }

    /// Forgets the window; the next refill reads it again from the due index.
    pub fn reset(&mut self) {
        for (_, handle) in std::mem::take(&mut self.loaded) {
            self.wheel.cancel(handle);
        }
        self.due.clear();
        self.loaded_until = keys::partition_prefix(self.partition).to_vec();
        self.covered_until_ms = None;
    }

    /// Loads due timers up to `now + window`, as far as the cap allows.
    pub fn refill(&mut self) -> Result<(), String> {
        let now = self.now_ms;
        let window = self.config.window_ms;
        let target = now.saturating_add(window);
        let cap = self.config.max_in_memory;
        match self.covered_until_ms {
            // The window still reaches far enough ahead.
            Some(covered) if covered >= now.saturating_add(window / 2) => return Ok(()),
            // Cut short by the cap: wait until half of it has fired.
            None if self.wheel.len() > cap / 2 => return Ok(()),
            _ => {}
        }
        let room = cap.saturating_sub(self.wheel.len());
        if room == 0 {
            return Ok(());
        }
        let from = self.loaded_until.clone();
        let entries = self.reader.scan(&from, target, room)?;
        let full = entries.len() == room;
        let last = entries.last().map(|e| e.raw.clone());
        for e in entries {
            if !self.loaded.contains_key(&e.raw) {
                self.insert(e.raw, e.fire_at_ms, e.key);
            }
        }
        if full {
            let mut next = last.unwrap_or(from);
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
        Ok(())
    }

    /// The next timers to propose as one `Fire`, in `(fire_at, workflow_id, timer_id)` order
    /// (G7), each with its due instant; empty when nothing is due by the horizon.
    pub fn take_due(&mut self) -> Vec<(u64, TimerKey)> {
        let mut expired = Vec::new();
        self.wheel.poll(&mut expired);
        if !expired.is_empty() {
            for (fire_at, key) in &expired {
                self.loaded
                    .remove(&keys::due_key(self.partition, *fire_at, key));
            }
            let mut all: Vec<_> = self.due.drain(..).chain(expired).collect();
            all.sort();
            self.due = all.into();
        }
        let n = self.due.len().min(self.config.batch);
        self.due.drain(..n).collect()
    }

    /// Puts timers back that a fire did not move to FIRED but that are still scheduled (not
    /// yet due by the partition's time, or the fire was not committed): they fire later.
    pub fn put_back(&mut self, timers: impl IntoIterator<Item = (TimerKey, u64)>) {
        for (key, fire_at_ms) in timers {
            let raw = keys::due_key(self.partition, fire_at_ms, &key);
            if raw < self.loaded_until && !self.loaded.contains_key(&raw) {
                self.insert(raw, fire_at_ms, key);
            }
        }
        while self.wheel.len() > self.config.max_in_memory {
            self.evict_latest();
        }
    }

    /// The core time at which there may be something to do: a timer due or the window to
    /// extend. `None` when only new events can give it work.
    pub fn next_wake_ms(&self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(self.now_ms);
        }
        let refill = match self.covered_until_ms {
            Some(covered) => Some(covered.saturating_sub(self.config.window_ms / 2)),
            None if self.wheel.len() > self.config.max_in_memory / 2 => None,
            None => Some(self.now_ms),
        };
        let take = self
            .wheel
            .next_deadline()
            .map(|at| at.saturating_sub(self.config.ahead_ms));
        [take, refill].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    const T0: u64 = 1_800_000_000_000;
    const P: u32 = 3;

    /// An in-memory due index shared with the test.
    #[derive(Clone, Default)]
    struct Index(Rc<RefCell<BTreeMap<Vec<u8>, DueEntry>>>);

    impl Index {
        fn add(&self, fire_at_ms: u64, id: &str) -> TimerKey {
            let key = TimerKey {
                workflow_id: "wf".into(),
                timer_id: id.into(),
            };
            let raw = keys::due_key(P, fire_at_ms, &key);
            self.0.borrow_mut().insert(
                raw.clone(),
                DueEntry {
                    raw,
                    fire_at_ms,
                    key: key.clone(),
                },
            );
            key
        }
        fn remove(&self, fire_at_ms: u64, key: &TimerKey) {
            self.0
                .borrow_mut()
                .remove(&keys::due_key(P, fire_at_ms, key));
        }
    }

    impl DueIndex for Index {
        fn scan(&self, from: &[u8], until_ms: u64, limit: usize) -> Result<Vec<DueEntry>, String> {
            let bound = keys::due_bound(P, until_ms).to_vec();
            Ok(self
                .0
                .borrow()
                .range(from.to_vec()..bound)
                .take(limit)
                .map(|(_, e)| e.clone())
                .collect())
        }
    }

    fn core(index: &Index, cap: usize, start: u64) -> EngineCore<Index> {
        core_ahead(index, cap, start, 0)
    }

    fn core_ahead(index: &Index, cap: usize, start: u64, ahead_ms: u64) -> EngineCore<Index> {
        EngineCore::new(
            P,
            CoreConfig {
                window_ms: 60_000,
                max_in_memory: cap,
                batch: 1_000,
                ahead_ms,
            },
            index.clone(),
            start,
        )
    }

    /// What a committed `Fire` at the core's time does to the index: fired timers leave it.
    fn fire(index: &Index, core: &mut EngineCore<Index>) -> Vec<(u64, TimerKey)> {
        core.refill().unwrap();
        let due = core.take_due();
        for (at, key) in &due {
            assert!(
                *at <= core.horizon_ms(),
                "proposed {key:?} due {at} at {} (horizon {})",
                core.now_ms(),
                core.horizon_ms()
            );
            index.remove(*at, key);
        }
        due
    }

    #[test]
    fn fires_in_due_order_and_never_before_due() {
        let index = Index::default();
        let b = index.add(T0 + 2_000, "b");
        let a = index.add(T0 + 1_000, "a");
        let c = index.add(T0 + 2_000, "c");
        let mut core = core(&index, 100, T0);
        assert!(fire(&index, &mut core).is_empty());
        // A lower bound (the start of the wheel slot), never after the first due time.
        let wake = core.next_wake_ms().unwrap();
        assert!(wake > T0 && wake <= T0 + 1_000, "{wake}");
        core.advance(T0 + 999);
        assert!(fire(&index, &mut core).is_empty());
        core.advance(T0 + 5_000);
        assert_eq!(
            fire(&index, &mut core),
            vec![(T0 + 1_000, a), (T0 + 2_000, b), (T0 + 2_000, c)]
        );
    }

    #[test]
    fn fire_ahead_takes_timers_that_long_before_due_and_no_earlier() {
        let index = Index::default();
        let a = index.add(T0 + 1_000, "a");
        let b = index.add(T0 + 1_050, "b");
        let mut core = core_ahead(&index, 100, T0, 50);
        assert!(fire(&index, &mut core).is_empty());
        let wake = core.next_wake_ms().unwrap();
        assert!(wake > T0 && wake <= T0 + 950, "{wake}");
        core.advance(T0 + 949);
        assert!(fire(&index, &mut core).is_empty());
        assert_eq!(core.horizon_ms(), T0 + 999);
        core.advance(T0 + 950);
        assert_eq!(fire(&index, &mut core), vec![(T0 + 1_000, a)]);
        core.advance(T0 + 999);
        assert!(fire(&index, &mut core).is_empty());
        core.advance(T0 + 1_000);
        assert_eq!(fire(&index, &mut core), vec![(T0 + 1_050, b)]);
    }

    #[test]
    fn time_never_goes_back_and_backward_steps_lose_nothing() {
        let index = Index::default();
        let mut core = core(&index, 100, T0);
        core.advance(T0 + 10_000);
        // The cluster clock steps back an hour: the core keeps its time.
        assert_eq!(core.advance(T0 + 10_000 - 3_600_000), T0 + 10_000);
        // A timer scheduled meanwhile with a due time below the core's time fires at once.
        let k = index.add(T0 + 5_000, "late");
        core.on_event(TimerEvent::Scheduled {
            key: k.clone(),
            fire_at_ms: T0 + 5_000,
        });
        assert_eq!(fire(&index, &mut core), vec![(T0 + 5_000, k)]);
        // One due a second after the core's time is not due while the clock stays behind.
        let k = index.add(T0 + 11_000, "next");
        core.on_event(TimerEvent::Scheduled {
            key: k.clone(),
            fire_at_ms: T0 + 11_000,
        });
        core.advance(T0 + 10_500 - 3_600_000);
        assert!(fire(&index, &mut core).is_empty());
        core.advance(T0 + 11_000);
        assert_eq!(fire(&index, &mut core), vec![(T0 + 11_000, k)]);
    }

    #[test]
    fn forward_steps_fire_what_became_due_in_order() {
        let index = Index::default();
        let keys: Vec<_> = (0..10)
            .map(|i| index.add(T0 + 600_000 * i, &format!("t{i}")))
            .collect();
        let mut core = core(&index, 100, T0 - 1);
        assert!(fire(&index, &mut core).is_empty());
        core.advance(T0 + 3_600_000);
        let mut fired = Vec::new();
        // The window reaches an hour ahead only after successive refills.
        for _ in 0..10 {
            fired.extend(fire(&index, &mut core).into_iter().map(|(_, k)| k));
        }
        assert_eq!(fired, keys[..7].to_vec());
    }

    #[test]
    fn put_back_timers_fire_later_and_are_never_dropped() {
        let index = Index::default();
        let k = index.add(T0 + 1_000, "k");
        let mut core = core(&index, 100, T0);
        core.advance(T0 + 1_000);
        core.refill().unwrap();
        let due = core.take_due();
        assert_eq!(due.len(), 1);
        // The state machine found it not due (the partition's time was lower): back it goes.
        core.put_back(vec![(k.clone(), T0 + 1_000)]);
        assert_eq!(core.in_memory(), 1);
        assert_eq!(fire(&index, &mut core), vec![(T0 + 1_000, k)]);
    }

    #[test]
    fn the_cap_keeps_the_earliest_timers() {
        let index = Index::default();
        for i in 0..200u64 {
            index.add(T0 + 10_000 + i * 10, &format!("late-{i:03}"));
        }
        let mut core = core(&index, 100, T0);
        core.refill().unwrap();
        assert_eq!(core.in_memory(), 100);
        // Earlier timers arrive while the wheel is full: they go in, the latest go out.
        let mut early = Vec::new();
        for i in 0..30u64 {
            let k = index.add(T0 + 1_000 + i, &format!("early-{i:02}"));
            core.on_event(TimerEvent::Scheduled {
                key: k.clone(),
                fire_at_ms: T0 + 1_000 + i,
            });
            early.push(k);
        }
        assert_eq!(core.in_memory(), 100);
        core.advance(T0 + 100_000);
        let mut fired = Vec::new();
        for _ in 0..20 {
            fired.extend(fire(&index, &mut core));
        }
        assert_eq!(fired.len(), 230);
        let order: Vec<_> = fired.iter().map(|(at, _)| *at).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "fired out of due order");
        assert_eq!(
            fired[..30]
                .iter()
                .map(|(_, k)| k.clone())
                .collect::<Vec<_>>(),
            early
        );
    }

    #[test]
    fn cancelled_timers_are_not_fired() {
        let index = Index::default();
        let k = index.add(T0 + 1_000, "k");
        let mut core = core(&index, 100, T0);
        core.refill().unwrap();
        index.remove(T0 + 1_000, &k);
        core.on_event(TimerEvent::Unscheduled {
            key: k,
            fire_at_ms: T0 + 1_000,
        });
        core.advance(T0 + 2_000);
        assert!(fire(&index, &mut core).is_empty());
    }

    #[test]
    fn reset_reloads_from_the_index() {
        let index = Index::default();
        let k = index.add(T0 + 1_000, "k");
        let mut core = core(&index, 100, T0);
        core.refill().unwrap();
        core.on_event(TimerEvent::Reset);
        assert_eq!(core.in_memory(), 0);
        core.advance(T0 + 1_000);
        assert_eq!(fire(&index, &mut core), vec![(T0 + 1_000, k)]);
    }
}
