//! Which tombstones a partition's leader expires, decided without I/O.
//!
//! Completed and cancelled timers keep their record (payload included) and a tombstone index
//! entry for `tombstone_retention` (G6); after that they only cost disk. Expiry must keep pace
//! with any sustained rate of completions, so a sweep does not stop after one batch: it goes on
//! proposing `Expire` batches, oldest tombstones first, until none finished before its cutoff
//! remains, one batch per turn of the engine's loop so that firing is never starved.
//!
//! The cutoff is the engine's time (cluster time, never this node's bare clock) minus the
//! retention, fixed when the sweep starts and carried in each `Expire`: applying it removes
//! only tombstones finished before it, the same on every replica. Tombstones that pass the
//! cutoff during a sweep wait for the next one, so a sweep always ends.

use hourglass_storage::{keys, TombstoneEntry};
use hourglass_types::TimerKey;

/// Reads the partition's tombstone index, oldest first.
pub trait TombstoneIndex {
    /// At most `limit` tombstones finished before `before_ms`, from the raw key `from` on.
    fn scan(
        &self,
        from: &[u8],
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<TombstoneEntry>, String>;
}

/// One `Expire` proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpireBatch {
    pub timers: Vec<TimerKey>,
    /// Only tombstones finished before this go.
    pub before_ms: u64,
}

/// A sweep under way: where the next batch starts and the sweep's cutoff.
#[derive(Debug, Clone)]
struct Sweep {
    from: Vec<u8>,
    before_ms: u64,
}

/// The expiry decisions of one partition.
#[derive(Debug)]
pub struct Expiry {
    partition: u32,
    retention_ms: u64,
    /// Most tombstones per `Expire`.
    batch: usize,
    sweep: Option<Sweep>,
}

impl Expiry {
    pub fn new(partition: u32, retention_ms: u64, batch: usize) -> Self {
        Expiry {
            partition,
            retention_ms,
            batch: batch.max(1),
            sweep: None,
        }
    }

    /// Starts a sweep at the engine's time `now_ms`, unless one is still under way (it keeps
    /// its cutoff and the next sweep catches up with what it left).
    pub fn start(&mut self, now_ms: u64) {
        if self.sweep.is_none() {
            self.sweep = Some(Sweep {
                from: keys::partition_prefix(self.partition).to_vec(),
                before_ms: now_ms.saturating_sub(self.retention_ms),
            });
        }
    }

    /// Whether a sweep has batches left: the engine then turns its loop again without sleeping.
    pub fn busy(&self) -> bool {
        self.sweep.is_some()
    }

    /// The sweep's next batch, oldest tombstones first; `None` (and the sweep ends) when no
    /// tombstone finished before the cutoff is left. One extra entry is read to tell whether
    /// another batch follows, and becomes where it starts: the expired keys are not scanned
    /// (or skipped over as deleted) again.
    pub fn next_batch(
        &mut self,
        index: &impl TombstoneIndex,
    ) -> Result<Option<ExpireBatch>, String> {
        let Some(sweep) = &mut self.sweep else {
            return Ok(None);
        };
        let before_ms = sweep.before_ms;
        let mut found = index.scan(&sweep.from, before_ms, self.batch + 1)?;
        // The index's bound is the cutoff already; checked again because an `Expire` of a
        // tombstone at or after it would be refused at apply anyway.
        found.retain(|t| t.finished_at_ms < before_ms);
        if found.len() > self.batch {
            let rest = found.split_off(self.batch);
            sweep.from = rest[0].raw.clone();
        } else {
            self.sweep = None;
        }
        if found.is_empty() {
            return Ok(None);
        }
        Ok(Some(ExpireBatch {
            timers: found.into_iter().map(|t| t.key).collect(),
            before_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;

    const P: u32 = 3;

    /// The tombstone index as a sorted map of raw keys, like `CF_TOMBSTONES`.
    #[derive(Default)]
    struct Model {
        index: RefCell<BTreeMap<Vec<u8>, (u64, TimerKey)>>,
        scans: RefCell<usize>,
    }

    impl Model {
        fn add(&self, finished_at_ms: u64, id: usize) {
            let key = TimerKey {
                workflow_id: format!("w{}", id % 7),
                timer_id: format!("t{id}"),
            };
            self.index.borrow_mut().insert(
                keys::tombstone_key(P, finished_at_ms, &key),
                (finished_at_ms, key),
            );
        }

        /// What applying `Expire` does to the index.
        fn apply(&self, batch: &ExpireBatch) {
            self.index
                .borrow_mut()
                .retain(|_, (at, key)| !(batch.timers.contains(key) && *at < batch.before_ms));
        }

        fn older_than(&self, before_ms: u64) -> usize {
            self.index
                .borrow()
                .values()
                .filter(|(at, _)| *at < before_ms)
                .count()
        }
    }

    impl TombstoneIndex for Model {
        fn scan(
            &self,
            from: &[u8],
            before_ms: u64,
            limit: usize,
        ) -> Result<Vec<TombstoneEntry>, String> {
            *self.scans.borrow_mut() += 1;
            Ok(self
                .index
                .borrow()
                .range(from.to_vec()..keys::due_bound(P, before_ms).to_vec())
                .take(limit)
                .map(|(raw, (at, key))| TombstoneEntry {
                    raw: raw.clone(),
                    finished_at_ms: *at,
                    key: key.clone(),
                })
                .collect())
        }
    }

    /// Runs one sweep to its end, applying each batch; returns the batches.
    fn sweep(expiry: &mut Expiry, model: &Model, now_ms: u64) -> Vec<ExpireBatch> {
        expiry.start(now_ms);
        let mut batches = Vec::new();
        while expiry.busy() {
            if let Some(batch) = expiry.next_batch(model).unwrap() {
                model.apply(&batch);
                batches.push(batch);
            }
        }
        batches
    }

    #[test]
    fn one_sweep_expires_the_whole_backlog_past_retention_in_batches() {
        let model = Model::default();
        // 10_000 completions over 10 s (1,000/s), then 500 more within the retention.
        for i in 0..10_000 {
            model.add(1_000 + i as u64, i);
        }
        for i in 10_000..10_500 {
            model.add(20_000 + i as u64, i);
        }
        let mut expiry = Expiry::new(P, 5_000, 1_000);
        let batches = sweep(&mut expiry, &model, 25_000);
        // Everything finished before 20_000 went, in full batches, oldest first; nothing later.
        assert_eq!(model.older_than(20_000), 0);
        assert_eq!(model.index.borrow().len(), 500);
        assert_eq!(batches.len(), 10);
        assert!(batches
            .iter()
            .all(|b| b.timers.len() == 1_000 && b.before_ms == 20_000));
        assert_eq!(batches[0].timers[0].timer_id, "t0");
        // The extra entry read per batch is where the next one starts: one scan per batch.
        assert_eq!(*model.scans.borrow(), 10);
        // A sweep with nothing past retention proposes nothing and ends at once.
        assert!(sweep(&mut expiry, &model, 25_001).is_empty());
        assert!(!expiry.busy());
    }

    #[test]
    fn tombstones_within_retention_stay_and_the_cutoff_never_underflows() {
        let model = Model::default();
        model.add(0, 1);
        model.add(4_999, 2);
        model.add(5_000, 3);
        let mut expiry = Expiry::new(P, 5_000, 10);
        // Before the retention has passed since the epoch, the cutoff is 0: nothing goes.
        assert!(sweep(&mut expiry, &model, 3_000).is_empty());
        let batches = sweep(&mut expiry, &model, 10_000);
        assert_eq!(batches.len(), 1);
        assert_eq!(
            batches[0]
                .timers
                .iter()
                .map(|k| k.timer_id.as_str())
                .collect::<Vec<_>>(),
            ["t1", "t2"]
        );
        assert_eq!(batches[0].before_ms, 5_000);
        assert_eq!(model.index.borrow().len(), 1);
    }

    #[test]
    fn a_sweep_keeps_its_cutoff_and_leaves_later_tombstones_to_the_next() {
        let model = Model::default();
        for i in 0..25 {
            model.add(100 + i as u64, i);
        }
        let mut expiry = Expiry::new(P, 1_000, 4);
        expiry.start(1_110);
        let first = expiry.next_batch(&model).unwrap().unwrap();
        model.apply(&first);
        assert_eq!(first.before_ms, 110);
        // A start while the sweep is under way does not move its cutoff.
        expiry.start(5_000);
        assert!(expiry.busy());
        let mut total = first.timers.len();
        while let Some(batch) = expiry.next_batch(&model).unwrap() {
            assert_eq!(batch.before_ms, 110);
            total += batch.timers.len();
            model.apply(&batch);
        }
        assert_eq!(total, 10);
        // The next sweep takes the rest: 15 tombstones, in batches of 4.
        assert_eq!(sweep(&mut expiry, &model, 5_000).len(), 4);
        assert!(model.index.borrow().is_empty());
    }
}
