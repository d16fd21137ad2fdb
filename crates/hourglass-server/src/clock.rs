//! The cluster clock: a time no minority of wrong clocks can move.
//!
//! Every node probes every peer over the Raft transport (NTP-style: the probe's monotonic
//! send time, the peer's wall clock, the monotonic receive time). A sample bounds the peer's
//! wall clock at any later local monotonic instant `m`:
//!
//! ```text
//! peer_wall + (m - received) <= peer's clock at m <= peer_wall + (m - sent)
//! ```
//!
//! Samples are kept against the local *monotonic* clock, so a step of this node's wall clock
//! does not move what it knows of its peers. The cluster time over a set of `n` members is
//! computed from this node's wall clock and the lower bound of each peer's clock, of which at
//! least a majority must be known; with `f = (n - 1) / 2` the number of wrong clocks tolerated,
//! it is the value with more than `f` values at or above it. So when at most `f` clocks are
//! wrong, in either direction and by any amount, it is at or below some correct clock (never
//! early), and with every member known it is also at or above some correct clock (late by at
//! most the spread of the correct clocks plus a round trip).
//!
//! This module is pure: time comes from a [`TimeSource`], which tests drive by hand.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hourglass_types::NodeId;

/// A node's two clocks: the wall clock (ms since the Unix epoch; it may step either way) and
/// the monotonic clock (ms since an arbitrary origin; it never steps).
pub trait TimeSource: Send + Sync {
    fn wall_ms(&self) -> u64;
    fn mono_ms(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Debug, Clone, Copy)]
pub struct SystemTimeSource {
    origin: Instant,
}

impl Default for SystemTimeSource {
    fn default() -> Self {
        SystemTimeSource {
            origin: Instant::now(),
        }
    }
}

impl TimeSource for SystemTimeSource {
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Clocks moved by hand, for tests: `advance` moves both, `step_wall` only the wall clock.
#[derive(Debug, Clone, Default)]
pub struct ManualTimeSource(Arc<Mutex<(u64, u64)>>);

impl ManualTimeSource {
    pub fn new(wall_ms: u64) -> Self {
        ManualTimeSource(Arc::new(Mutex::new((wall_ms, 0))))
    }

    pub fn advance(&self, ms: u64) {
        let mut t = self.0.lock().expect("manual clock poisoned");
        t.0 += ms;
        t.1 += ms;
    }

    pub fn step_wall(&self, delta_ms: i64) {
        let mut t = self.0.lock().expect("manual clock poisoned");
        t.0 = t.0.saturating_add_signed(delta_ms);
    }
}

impl TimeSource for ManualTimeSource {
    fn wall_ms(&self) -> u64 {
        self.0.lock().expect("manual clock poisoned").0
    }
    fn mono_ms(&self) -> u64 {
        self.0.lock().expect("manual clock poisoned").1
    }
}

/// One probe of a peer's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Local monotonic time when the probe was sent.
    pub sent_mono_ms: u64,
    /// The peer's wall clock when it answered.
    pub peer_wall_ms: u64,
    /// Local monotonic time when the answer arrived.
    pub received_mono_ms: u64,
    /// Local wall clock when the answer arrived, for the offset estimate only.
    pub received_wall_ms: u64,
}

impl Sample {
    fn rtt_ms(&self) -> u64 {
        self.received_mono_ms.saturating_sub(self.sent_mono_ms)
    }

    /// The peer's clock is at least this at local monotonic time `mono_ms`. Every reading is
    /// in whole milliseconds, so the time elapsed since the answer, as a difference of two
    /// truncated readings, may exceed the true one by almost a millisecond: one is taken off,
    /// or a cluster of nodes on one clock ran up to 1 ms ahead of it and fired that early.
    fn lower_bound(&self, mono_ms: u64) -> u64 {
        self.peer_wall_ms
            .saturating_add(mono_ms.saturating_sub(self.received_mono_ms))
            .saturating_sub(1)
    }

    /// Peer clock minus local clock, estimated at the middle of the round trip.
    fn offset_ms(&self) -> i64 {
        let local_mid = self.received_wall_ms.saturating_sub(self.rtt_ms() / 2);
        self.peer_wall_ms as i64 - local_mid as i64
    }
}

/// What this node knows of one peer's clock, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerOffset {
    pub peer: NodeId,
    /// Peer clock minus this node's clock.
    pub offset_ms: i64,
    /// Half the round trip of the sample the estimate comes from.
    pub error_ms: u64,
    /// How long ago that sample arrived.
    pub age_ms: u64,
}

/// Settings of the cluster clock.
#[derive(Debug, Clone, Copy)]
pub struct ClockConfig {
    /// Offsets beyond this are reported as a clock problem.
    pub max_offset_ms: u64,
    /// Samples older than this are not used.
    pub max_sample_age_ms: u64,
    /// Samples kept per peer; the best bound among them is used.
    pub samples_per_peer: usize,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig {
            max_offset_ms: 500,
            max_sample_age_ms: 5_000,
            samples_per_peer: 8,
        }
    }
}

/// Cluster time from this node's clock and its samples of its peers' clocks.
pub struct ClusterClock<T: TimeSource> {
    node_id: NodeId,
    source: T,
    config: ClockConfig,
    samples: Mutex<HashMap<NodeId, VecDeque<Sample>>>,
}

impl<T: TimeSource> ClusterClock<T> {
    pub fn new(node_id: NodeId, source: T, config: ClockConfig) -> Self {
        ClusterClock {
            node_id,
            source,
            config,
            samples: Mutex::new(HashMap::new()),
        }
    }

    pub fn source(&self) -> &T {
        &self.source
    }

    pub fn config(&self) -> ClockConfig {
        self.config
    }

    /// Records a probe of `peer` answered with `peer_wall_ms`; `sent_mono_ms` is the
    /// monotonic time read just before it was sent.
    pub fn record(&self, peer: NodeId, sent_mono_ms: u64, peer_wall_ms: u64) -> Sample {
        let sample = Sample {
            sent_mono_ms,
            peer_wall_ms,
            received_mono_ms: self.source.mono_ms(),
            received_wall_ms: self.source.wall_ms(),
        };
        let mut samples = self.samples.lock().expect("clock samples poisoned");
        let kept = samples.entry(peer).or_default();
        kept.push_back(sample);
        while kept.len() > self.config.samples_per_peer.max(1) {
            kept.pop_front();
        }
        sample
    }

    /// The highest lower bound of `peer`'s clock now, from its fresh samples.
    fn peer_lower_bound(
        &self,
        samples: &HashMap<NodeId, VecDeque<Sample>>,
        peer: NodeId,
        mono: u64,
    ) -> Option<u64> {
        samples
            .get(&peer)?
            .iter()
            .filter(|s| mono.saturating_sub(s.received_mono_ms) <= self.config.max_sample_age_ms)
            .map(|s| s.lower_bound(mono))
            .max()
    }

    /// Cluster time over `members` (this node may or may not be one of them), or `None` when
    /// fewer than a majority of them have a known clock.
    pub fn now_ms(&self, members: &[NodeId]) -> Option<u64> {
        let values = self
            .readings(members)
            .into_iter()
            .filter_map(|(_, v)| v)
            .collect();
        fault_tolerant_time(members.len(), values)
    }

    /// What cluster time over `members` is made of: each member's clock as known now (this
    /// node's wall clock, a peer's lower bound), `None` where unknown.
    pub fn readings(&self, members: &[NodeId]) -> Vec<(NodeId, Option<u64>)> {
        let mono = self.source.mono_ms();
        let wall = self.source.wall_ms();
        let samples = self.samples.lock().expect("clock samples poisoned");
        members
            .iter()
            .map(|&m| {
                let value = if m == self.node_id {
                    Some(wall)
                } else {
                    self.peer_lower_bound(&samples, m, mono)
                };
                (m, value)
            })
            .collect()
    }

    /// The latest estimate of each peer's offset, from its tightest fresh sample.
    pub fn offsets(&self) -> Vec<PeerOffset> {
        let mono = self.source.mono_ms();
        let samples = self.samples.lock().expect("clock samples poisoned");
        let mut out: Vec<PeerOffset> = samples
            .iter()
            .filter_map(|(&peer, kept)| {
                let best = kept
                    .iter()
                    .filter(|s| {
                        mono.saturating_sub(s.received_mono_ms) <= self.config.max_sample_age_ms
                    })
                    .min_by_key(|s| s.rtt_ms())?;
                Some(PeerOffset {
                    peer,
                    offset_ms: best.offset_ms(),
                    error_ms: best.rtt_ms().div_ceil(2),
                    age_ms: mono.saturating_sub(best.received_mono_ms),
                })
            })
            .collect();
        out.sort_by_key(|o| o.peer);
        out
    }

    /// This node's clock minus the cluster's: minus the median of its offsets to every known
    /// node, itself (0) included. `None` when no peer is known.
    pub fn own_offset_ms(&self) -> Option<i64> {
        own_offset_ms(self.offsets().iter().map(|o| o.offset_ms))
    }

    /// Whether this node's own clock disagrees (beyond the configured bound) with a majority
    /// of a cluster of `cluster_size` nodes; `false` when too few peers are known to say.
    pub fn out_of_bounds(&self, cluster_size: usize) -> bool {
        let max = self.config.max_offset_ms;
        let disagreeing = self
            .offsets()
            .iter()
            .filter(|o| o.offset_ms.unsigned_abs().saturating_sub(o.error_ms) > max)
            .count();
        disagreeing > cluster_size / 2
    }
}

/// A node's clock minus the cluster's, from its offsets to its peers (peer minus node): minus
/// the median of those offsets and its own (0). `None` without any peer.
pub fn own_offset_ms(peer_offsets: impl IntoIterator<Item = i64>) -> Option<i64> {
    let mut offsets: Vec<i64> = peer_offsets.into_iter().collect();
    if offsets.is_empty() {
        return None;
    }
    offsets.push(0);
    offsets.sort_unstable();
    Some(-offsets[offsets.len() / 2])
}

/// The fault-tolerant time of `members` nodes from the known `values` (lower bounds of their
/// clocks): `None` without a majority; otherwise the value with `f + 1` values at or above
/// it, `f = (members - 1) / 2`.
pub fn fault_tolerant_time(members: usize, mut values: Vec<u64>) -> Option<u64> {
    if members == 0 || values.len() < members / 2 + 1 {
        return None;
    }
    let tolerated = (members - 1) / 2;
    values.sort_unstable();
    // values.len() > members / 2 >= tolerated, so the index is in range.
    values.get(values.len() - tolerated - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn fault_tolerant_time_ignores_any_minority() {
        // Three members, one wrong either way: the answer is a correct clock.
        assert_eq!(fault_tolerant_time(3, vec![T0, T0, T0 + 600_000]), Some(T0));
        assert_eq!(fault_tolerant_time(3, vec![T0 - 600_000, T0, T0]), Some(T0));
        // Two known of three: the lower one, so a fast clock cannot make it early.
        assert_eq!(fault_tolerant_time(3, vec![T0 + 600_000, T0]), Some(T0));
        // One known of three is not a majority.
        assert_eq!(fault_tolerant_time(3, vec![T0]), None);
        // Five members, two fast: still at or below a correct clock.
        assert_eq!(
            fault_tolerant_time(5, vec![T0, T0 + 1, T0 + 2, T0 + 9_999, T0 + 99_999]),
            Some(T0 + 2)
        );
        assert_eq!(
            fault_tolerant_time(5, vec![T0, T0 + 9_999, T0 + 99_999]),
            Some(T0)
        );
        assert_eq!(fault_tolerant_time(1, vec![T0]), Some(T0));
        assert_eq!(fault_tolerant_time(0, vec![]), None);
    }

    /// Three nodes sharing one true clock; `skews[i]` is added to node i's wall clock.
    fn probe_all(clock: &ClusterClock<ManualTimeSource>, truth: u64, skews: &[i64], rtt: u64) {
        for (i, skew) in skews.iter().enumerate().skip(1) {
            let sent = clock.source().mono_ms();
            clock.source().advance(rtt / 2);
            let peer_wall = (truth + rtt / 2).saturating_add_signed(*skew);
            clock.source().advance(rtt - rtt / 2);
            clock.record(i as NodeId + 1, sent, peer_wall);
        }
    }

    #[test]
    fn a_leader_far_ahead_or_behind_does_not_move_cluster_time() {
        for skew in [600_000i64, -600_000, 30_000, -3_600_000] {
            let source = ManualTimeSource::new(T0.saturating_add_signed(skew));
            let clock = ClusterClock::new(1, source.clone(), ClockConfig::default());
            probe_all(&clock, T0, &[skew, 0, 0], 2);
            let truth = T0 + 4; // both probes took 2 ms
            let now = clock.now_ms(&[1, 2, 3]).unwrap();
            assert!(now <= truth, "early by {} ms with skew {skew}", now - truth);
            assert!(
                truth - now <= 4,
                "late by {} ms with skew {skew}",
                truth - now
            );
            assert!(clock.out_of_bounds(3), "its own clock is the odd one out");
            let own = clock.own_offset_ms().unwrap();
            assert!((own - skew).abs() <= 4, "own offset {own} for skew {skew}");
        }
    }

    #[test]
    fn a_wrong_peer_does_not_move_cluster_time() {
        for skew in [600_000i64, -600_000] {
            let clock = ClusterClock::new(1, ManualTimeSource::new(T0), ClockConfig::default());
            probe_all(&clock, T0, &[0, skew, 0], 2);
            let now = clock.now_ms(&[1, 2, 3]).unwrap();
            assert!(now <= T0 + 4 && now + 4 >= T0 + 4, "{now} vs {}", T0 + 4);
            assert!(!clock.out_of_bounds(3));
            let offsets = clock.offsets();
            assert_eq!(offsets.len(), 2);
            assert!((offsets[0].offset_ms - skew).abs() <= 2, "{offsets:?}");
        }
    }

    #[test]
    fn steps_of_the_local_wall_clock_are_ignored_when_peers_agree() {
        let source = ManualTimeSource::new(T0);
        let clock = ClusterClock::new(1, source.clone(), ClockConfig::default());
        probe_all(&clock, T0, &[0, 0, 0], 0);
        source.advance(1_000);
        source.step_wall(3_600_000);
        // Peers' clocks as lower bounds: a millisecond short for readings in whole ones.
        assert_eq!(clock.now_ms(&[1, 2, 3]), Some(T0 + 1_000 - 1));
        source.step_wall(-7_200_000);
        source.advance(1_000);
        assert_eq!(clock.now_ms(&[1, 2, 3]), Some(T0 + 2_000 - 1));
    }

    #[test]
    fn stale_samples_are_not_used() {
        let source = ManualTimeSource::new(T0);
        let clock = ClusterClock::new(1, source.clone(), ClockConfig::default());
        probe_all(&clock, T0, &[0, 0, 0], 0);
        source.advance(5_001);
        assert_eq!(clock.now_ms(&[1, 2, 3]), None);
        assert!(clock.offsets().is_empty());
    }

    #[test]
    fn the_best_of_several_samples_is_used() {
        let source = ManualTimeSource::new(T0);
        let clock = ClusterClock::new(1, source.clone(), ClockConfig::default());
        // A slow probe (400 ms round trip) then a fast one: the bound of the fast one wins.
        probe_all(&clock, T0, &[0, 0, 0], 400);
        let truth = T0 + 800;
        probe_all(&clock, truth, &[0, 0, 0], 2);
        let truth = truth + 4;
        let now = clock.now_ms(&[1, 2, 3]).unwrap();
        assert!(now <= truth && truth - now <= 2, "{now} vs {truth}");
        assert!(clock.offsets().iter().all(|o| o.error_ms <= 1));
    }

    #[test]
    fn a_node_outside_the_members_uses_theirs() {
        let clock = ClusterClock::new(
            9,
            ManualTimeSource::new(T0 + 600_000),
            ClockConfig::default(),
        );
        probe_all(&clock, T0, &[0, 0, 0], 0);
        assert_eq!(clock.now_ms(&[2, 3]), Some(T0 - 1));
    }
}
