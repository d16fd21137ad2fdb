//! The stages the per-stage latency histograms of [`crate::metrics`] split a fire, a
//! Schedule and a Raft commit into, and the cheap ways to time them.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use hourglass_types::NodeId;
use prometheus::{Histogram, HistogramOpts, HistogramVec, Registry};

/// Buckets of the stage histograms: fine enough to tell a 1 ms stage from a 2 ms one, and
/// reaching the seconds a stage takes under overload.
const STAGE_BUCKETS: [f64; 22] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `stage` label values of one stage histogram. docs/operations.md says from which
/// instant to which each stage is measured.
pub trait Stage: Copy + 'static {
    const ALL: &'static [Self];
    fn label(self) -> &'static str;
    fn index(self) -> usize;
}

macro_rules! stages {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $label:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant,)+ }

        impl Stage for $name {
            const ALL: &'static [Self] = &[$($name::$variant,)+];
            fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

stages! {
    /// The stages of a fire, on the partition's leader.
    FireStage {
        /// The timer's fire_at → the engine proposes the `Fire` holding it (cluster time).
        Propose = "propose",
        /// The `Fire` proposed → its answer (committed and applied) taken by the engine.
        Commit = "commit",
        /// The `Fire` applied → its timers offered to the dispatcher.
        Dispatch = "dispatch",
        /// A timer fired ahead and parked: its fire_at → offered to the dispatcher (cluster
        /// time).
        Release = "release",
        /// A timer offered to the dispatcher → its delivery sent into a worker's stream.
        StreamWrite = "stream_write",
    }
}

stages! {
    /// The stages of a Schedule or ScheduleBatch call, on the nodes it passes.
    ScheduleStage {
        /// Received by a node that does not lead the partition → the leader's answer.
        Forward = "forward",
        /// Received by the leader → proposed.
        Propose = "propose",
        /// Proposed → committed and applied.
        Commit = "commit",
        /// Applied → the answer built.
        Respond = "respond",
    }
}

stages! {
    /// The stages of Raft inside a commit, shared by every command.
    RaftStage {
        /// A log append of this node's own entries, as leader → fsynced.
        LeaderLogFlush = "leader_log_flush",
        /// A log append of another leader's entries, as follower → fsynced.
        FollowerLogFlush = "follower_log_flush",
        /// An AppendEntries request carrying entries sent to a follower → its answer.
        Replication = "replication",
        /// A batch of committed entries applied to a replica's state machine.
        Apply = "apply",
    }
}

/// One histogram per stage, resolved once: observing is one bucket search, no label lookup.
pub struct Stages<S> {
    by_stage: Vec<Histogram>,
    _stage: PhantomData<S>,
}

impl<S: Stage> Stages<S> {
    pub(crate) fn new(r: &Registry, name: &str, help: &str) -> Self {
        let vec = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(STAGE_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        r.register(Box::new(vec.clone()))
            .expect("metric registered once");
        Stages {
            by_stage: S::ALL
                .iter()
                .map(|s| vec.with_label_values(&[s.label()]))
                .collect(),
            _stage: PhantomData,
        }
    }

    pub fn observe(&self, stage: S, took: Duration) {
        self.by_stage[stage.index()].observe(took.as_secs_f64());
    }

    /// A stopwatch over consecutive stages, the first starting at `start`.
    pub fn laps_from(&self, start: Instant) -> Laps<'_, S> {
        Laps {
            stages: self,
            last: start,
        }
    }

    #[cfg(test)]
    pub fn count(&self, stage: S) -> u64 {
        self.by_stage[stage.index()].get_sample_count()
    }

    #[cfg(test)]
    pub fn sum(&self, stage: S) -> f64 {
        self.by_stage[stage.index()].get_sample_sum()
    }
}

/// Consecutive stages of one piece of work: each lasts from the previous mark (the first from
/// the start) to its own.
pub struct Laps<'a, S> {
    stages: &'a Stages<S>,
    last: Instant,
}

impl<S: Stage> Laps<'_, S> {
    /// Ends `stage` now.
    pub fn mark(&mut self, stage: S) {
        self.mark_at(stage, Instant::now());
    }

    fn mark_at(&mut self, stage: S, at: Instant) {
        self.stages
            .observe(stage, at.saturating_duration_since(self.last));
        self.last = self.last.max(at);
    }
}

/// The stage of a log append made durable, by whose entries it held (see
/// [`hourglass_storage::FlushObserver`]); none for an append of no entries.
pub fn flush_stage(node_id: NodeId, leader: Option<NodeId>) -> Option<RaftStage> {
    match leader? {
        l if l == node_id => Some(RaftStage::LeaderLogFlush),
        _ => Some(RaftStage::FollowerLogFlush),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_lap_lasts_from_the_previous_mark() {
        let stages: Stages<ScheduleStage> = Stages::new(&Registry::new(), "t", "t");
        let t0 = Instant::now();
        let mut laps = stages.laps_from(t0);
        laps.mark_at(ScheduleStage::Propose, t0 + ms(3));
        laps.mark_at(ScheduleStage::Commit, t0 + ms(10));
        // An instant before the last mark makes an empty stage, and the next starts later.
        laps.mark_at(ScheduleStage::Respond, t0 + ms(9));
        laps.mark_at(ScheduleStage::Respond, t0 + ms(12));
        let sum = |s| (stages.sum(s) * 1e6).round() / 1e3;
        assert_eq!(sum(ScheduleStage::Propose), 3.0);
        assert_eq!(sum(ScheduleStage::Commit), 7.0);
        assert_eq!(sum(ScheduleStage::Respond), 2.0);
        assert_eq!(stages.count(ScheduleStage::Respond), 2);
        assert_eq!(stages.count(ScheduleStage::Forward), 0);
    }

    #[test]
    fn every_stage_is_exported_from_the_start_with_its_own_label() {
        let registry = Registry::new();
        let _fire: Stages<FireStage> = Stages::new(&registry, "fire", "h");
        let families = registry.gather();
        let labels: Vec<_> = families[0]
            .get_metric()
            .iter()
            .map(|m| m.get_label()[0].value().to_owned())
            .collect();
        assert_eq!(labels.len(), FireStage::ALL.len());
        for stage in FireStage::ALL {
            assert!(labels.iter().any(|l| l == stage.label()), "{labels:?}");
        }
    }

    #[test]
    fn a_flush_belongs_to_the_leader_stage_only_for_this_nodes_own_entries() {
        assert_eq!(flush_stage(1, Some(1)), Some(RaftStage::LeaderLogFlush));
        assert_eq!(flush_stage(1, Some(2)), Some(RaftStage::FollowerLogFlush));
        assert_eq!(flush_stage(1, None), None);
    }
}
