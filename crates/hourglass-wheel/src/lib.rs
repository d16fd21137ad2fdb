//! A hierarchical timing wheel with millisecond resolution.
//!
//! Six levels of 64 slots: level `l` slots are `64^l` ms wide, so the wheel spans `64^6` ms
//! (about 2.2 years) ahead of its current time; later deadlines wait in the furthest slot and
//! are re-filed when it comes up. Insert and cancel are O(1). Advancing jumps straight to the
//! next occupied slot using a 64-bit occupancy mask per level, so empty slots cost nothing.
//!
//! The wheel performs no I/O and reads time only through a [`Clock`], which makes it testable
//! with a [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 6;
/// The whole range of the wheel.
const MAX_SPAN: u64 = 1 << (SLOT_BITS as u64 * LEVELS as u64);
/// How far ahead a deadline can be filed where it falls; later ones are parked here. One top
/// slot short of the full range, so a parked entry never shares the current top slot.
const PARK_AT: u64 = MAX_SPAN - (MAX_SPAN >> SLOT_BITS);

/// A source of milliseconds since the Unix epoch.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock moved only by hand; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(now_ms)))
    }

    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Names an inserted timer for [`TimingWheel::cancel`]. Stale handles are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    index: u32,
    generation: u32,
}

struct Entry<T> {
    deadline: u64,
    generation: u32,
    /// `Some` while the entry is in the wheel.
    item: Option<T>,
    /// Where the entry sits: `(level, slot, position in the slot)`, or the overdue list.
    place: Place,
}

#[derive(Clone, Copy)]
enum Place {
    Slot { level: u8, slot: u8, pos: u32 },
    Overdue { pos: u32 },
    Free,
}

/// A hierarchical timing wheel holding items of type `T`.
pub struct TimingWheel<T, C: Clock> {
    clock: C,
    /// The wheel's time: every deadline before it has been handed out.
    elapsed: u64,
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
    slots: Vec<Vec<u32>>,
    occupied: [u64; LEVELS],
    /// Entries inserted with a deadline already reached; returned by the next poll.
    overdue: Vec<u32>,
    len: usize,
}

impl<T, C: Clock> TimingWheel<T, C> {
    pub fn new(clock: C) -> Self {
        let elapsed = clock.now_ms();
        TimingWheel {
            clock,
            elapsed,
            entries: Vec::new(),
            free: Vec::new(),
            slots: (0..LEVELS * SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; LEVELS],
            overdue: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// Adds `item`, due at `deadline_ms`. A deadline already passed is due at the next poll.
    pub fn insert(&mut self, deadline_ms: u64, item: T) -> Handle {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    deadline: 0,
                    generation: 0,
                    item: None,
                    place: Place::Free,
                });
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[index as usize];
        e.deadline = deadline_ms;
        e.item = Some(item);
        let generation = e.generation;
        self.file(index);
        self.len += 1;
        Handle { index, generation }
    }

    /// Removes a timer before it expires; `None` if it already expired or was cancelled.
    pub fn cancel(&mut self, handle: Handle) -> Option<T> {
        let e = self.entries.get(handle.index as usize)?;
        if e.generation != handle.generation || e.item.is_none() {
            return None;
        }
        self.unfile(handle.index);
        Some(self.release(handle.index))
    }

    /// The earliest instant at which [`Self::poll`] may return something; `None` when empty.
    /// For timers far out this is a lower bound (the start of their slot).
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.overdue.is_empty() {
            return Some(self.elapsed);
        }
        (0..LEVELS).find_map(|level| self.next_in_level(level).map(|(_, at)| at))
    }

    /// Moves the wheel to the clock's time and appends every expired `(deadline, item)` to
    /// `out`, in non-decreasing deadline order. A clock that went backwards expires nothing.
    pub fn poll(&mut self, out: &mut Vec<(u64, T)>) {
        let now = self.clock.now_ms();
        for index in std::mem::take(&mut self.overdue) {
            self.entries[index as usize].place = Place::Free;
            let deadline = self.entries[index as usize].deadline;
            out.push((deadline, self.release(index)));
        }
        while let Some((level, slot, at)) = self.next_occupied() {
            if at > now {
                break;
            }
            self.elapsed = at;
            let bucket = std::mem::take(&mut self.slots[level * SLOTS + slot]);
            self.occupied[level] &= !(1u64 << slot);
            // Sorting a bucket keeps the output ordered; buckets are small in practice.
            let mut bucket: Vec<u32> = bucket;
            bucket.sort_by_key(|&i| self.entries[i as usize].deadline);
            for index in bucket {
                let deadline = self.entries[index as usize].deadline;
                // Slots start at or before their entries' deadlines, and `at <= now`.
                if deadline <= at {
                    self.entries[index as usize].place = Place::Free;
                    out.push((deadline, self.release(index)));
                } else {
                    // Re-file relative to the new time: it lands on a lower level.
                    self.file(index);
                }
            }
        }
        if now > self.elapsed {
            self.elapsed = now;
        }
    }

    fn release(&mut self, index: u32) -> T {
        let e = &mut self.entries[index as usize];
        e.generation = e.generation.wrapping_add(1);
        e.place = Place::Free;
        self.free.push(index);
        self.len -= 1;
        e.item.take().expect("released entries hold an item")
    }

    /// Puts entry `index` into the slot its deadline falls in, relative to `elapsed`.
    fn file(&mut self, index: u32) {
        let deadline = self.entries[index as usize].deadline;
        if deadline <= self.elapsed {
            let pos = self.overdue.len() as u32;
            self.overdue.push(index);
            self.entries[index as usize].place = Place::Overdue { pos };
            return;
        }
        let target = deadline.min(self.elapsed + PARK_AT);
        // The highest bit where the deadline differs from now picks the level; a deadline in
        // the next cycle of the top level differs above it and belongs to the top level.
        let differing = ((self.elapsed ^ target) | (SLOTS as u64 - 1)).min(MAX_SPAN - 1);
        let level = ((63 - differing.leading_zeros()) / SLOT_BITS) as usize;
        debug_assert!(level < LEVELS);
        let slot = ((target >> (level as u32 * SLOT_BITS)) & (SLOTS as u64 - 1)) as usize;
        let bucket = &mut self.slots[level * SLOTS + slot];
        let pos = bucket.len() as u32;
        bucket.push(index);
        self.occupied[level] |= 1u64 << slot;
        self.entries[index as usize].place = Place::Slot {
            level: level as u8,
            slot: slot as u8,
            pos,
        };
    }

    fn unfile(&mut self, index: u32) {
        match self.entries[index as usize].place {
            Place::Slot { level, slot, pos } => {
                let (level, slot) = (level as usize, slot as usize);
                let bucket = &mut self.slots[level * SLOTS + slot];
                bucket.swap_remove(pos as usize);
                if let Some(&moved) = bucket.get(pos as usize) {
                    if let Place::Slot { pos: p, .. } = &mut self.entries[moved as usize].place {
                        *p = pos;
                    }
                }
                if bucket.is_empty() {
                    self.occupied[level] &= !(1u64 << slot);
                }
            }
            Place::Overdue { pos } => {
                self.overdue.swap_remove(pos as usize);
                if let Some(&moved) = self.overdue.get(pos as usize) {
                    self.entries[moved as usize].place = Place::Overdue { pos };
                }
            }
            Place::Free => debug_assert!(false, "unfiling a free entry"),
        }
        self.entries[index as usize].place = Place::Free;
    }

    /// The next occupied slot of `level` at or after the wheel's time, with its start instant.
    fn next_in_level(&self, level: usize) -> Option<(usize, u64)> {
        let occupied = self.occupied[level];
        if occupied == 0 {
            return None;
        }
        let shift = level as u32 * SLOT_BITS;
        let slot_range = 1u64 << shift;
        let level_range = slot_range << SLOT_BITS;
        let now_slot = ((self.elapsed >> shift) & (SLOTS as u64 - 1)) as u32;
        let distance = occupied.rotate_right(now_slot).trailing_zeros();
        let slot = ((now_slot + distance) % SLOTS as u32) as usize;
        let level_start = self.elapsed & !(level_range - 1);
        let mut at = level_start + slot as u64 * slot_range;
        if at + slot_range <= self.elapsed {
            at += level_range;
        }
        Some((slot, at.max(self.elapsed)))
    }

    fn next_occupied(&self) -> Option<(usize, usize, u64)> {
        (0..LEVELS)
            .filter_map(|level| {
                self.next_in_level(level)
                    .map(|(slot, at)| (level, slot, at))
            })
            .min_by_key(|&(level, _, at)| (at, level))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn fires_in_order_and_not_early() {
        let clock = ManualClock::new(1_000);
        let mut w = TimingWheel::new(clock.clone());
        w.insert(1_500, "b");
        w.insert(1_001, "a");
        w.insert(1_000 + 3_600_000, "hour");
        w.insert(900, "past");
        let mut out = Vec::new();
        w.poll(&mut out);
        assert_eq!(out, vec![(900, "past")]);
        out.clear();
        clock.set(1_499);
        w.poll(&mut out);
        assert_eq!(out, vec![(1_001, "a")]);
        out.clear();
        clock.set(1_500);
        w.poll(&mut out);
        assert_eq!(out, vec![(1_500, "b")]);
        out.clear();
        assert_eq!(
            w.next_deadline().map(|d| d <= 1_000 + 3_600_000),
            Some(true)
        );
        clock.set(1_000 + 3_600_000 - 1);
        w.poll(&mut out);
        assert!(out.is_empty());
        clock.set(1_000 + 3_600_000);
        w.poll(&mut out);
        assert_eq!(out, vec![(1_000 + 3_600_000, "hour")]);
        assert!(w.is_empty());
    }

    #[test]
    fn cancel_is_exact_and_stale_handles_are_ignored() {
        let clock = ManualClock::new(0);
        let mut w = TimingWheel::new(clock.clone());
        let a = w.insert(10, 'a');
        let b = w.insert(10, 'b');
        assert_eq!(w.cancel(a), Some('a'));
        assert_eq!(w.cancel(a), None);
        let c = w.insert(20, 'c'); // reuses a's entry with a new generation
        assert_eq!(w.cancel(a), None);
        clock.set(100);
        let mut out = Vec::new();
        w.poll(&mut out);
        assert_eq!(out, vec![(10, 'b'), (20, 'c')]);
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.cancel(c), None);
    }

    #[test]
    fn beyond_the_span_still_fires_at_its_time() {
        let clock = ManualClock::new(0);
        let mut w = TimingWheel::new(clock.clone());
        let far = MAX_SPAN * 3 + 17;
        w.insert(far, ());
        let mut out = Vec::new();
        for step in [MAX_SPAN, MAX_SPAN * 2, far - 1] {
            clock.set(step);
            w.poll(&mut out);
            assert!(out.is_empty(), "fired early at {step}");
        }
        clock.set(far);
        w.poll(&mut out);
        assert_eq!(out, vec![(far, ())]);
    }

    #[test]
    fn clock_going_backwards_fires_nothing_new() {
        let clock = ManualClock::new(10_000);
        let mut w = TimingWheel::new(clock.clone());
        w.insert(10_500, 1);
        clock.set(5_000);
        let mut out = Vec::new();
        w.poll(&mut out);
        assert!(out.is_empty());
        clock.set(10_500);
        w.poll(&mut out);
        assert_eq!(out, vec![(10_500, 1)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Cancel(usize),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop_oneof![0u64..100, 0u64..10_000, 0u64..5_000_000, 0u64..MAX_SPAN * 2].prop_map(Op::Insert),
            1 => any::<usize>().prop_map(Op::Cancel),
            2 => prop_oneof![0u64..50, 0u64..5_000, 0u64..10_000_000].prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The wheel expires exactly what a BTreeMap model says is due, in deadline order.
        #[test]
        fn matches_a_btreemap_model(start in 0u64..1u64 << 40, ops in proptest::collection::vec(op(), 1..200)) {
            let clock = ManualClock::new(start);
            let mut wheel = TimingWheel::new(clock.clone());
            let mut model: BTreeMap<(u64, u64), ()> = BTreeMap::new();
            let mut handles: Vec<(Handle, u64, u64)> = Vec::new();
            let mut next_id = 0u64;
            for op in ops {
                match op {
                    Op::Insert(delay) => {
                        let deadline = clock.now_ms() + delay;
                        let h = wheel.insert(deadline, next_id);
                        model.insert((deadline, next_id), ());
                        handles.push((h, deadline, next_id));
                        next_id += 1;
                    }
                    Op::Cancel(i) if !handles.is_empty() => {
                        let (h, deadline, id) = handles[i % handles.len()];
                        let in_model = model.remove(&(deadline, id)).is_some();
                        prop_assert_eq!(wheel.cancel(h).is_some(), in_model);
                    }
                    Op::Cancel(_) => {}
                    Op::Advance(ms) => {
                        clock.advance(ms);
                        let now = clock.now_ms();
                        let mut out = Vec::new();
                        wheel.poll(&mut out);
                        let due: Vec<(u64, u64)> = model.range(..(now + 1, 0)).map(|(k, _)| *k).collect();
                        for k in &due {
                            model.remove(k);
                        }
                        let mut got: Vec<(u64, u64)> = out.clone();
                        prop_assert!(out.windows(2).all(|w| w[0].0 <= w[1].0), "out of order: {:?}", out);
                        got.sort();
                        prop_assert_eq!(got, due);
                        if let Some(next) = wheel.next_deadline() {
                            prop_assert!(next > now);
                            let earliest = model.keys().next().map(|k| k.0);
                            prop_assert!(earliest.is_some_and(|e| next <= e));
                        }
                    }
                }
                prop_assert_eq!(wheel.len(), model.len());
            }
        }
    }
}
