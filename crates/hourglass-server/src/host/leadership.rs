//! Each partition's timer engine runs exactly while this node leads the partition.

use std::sync::Arc;
use std::time::Duration;

use hourglass_types::NodeId;
use openraft::{BasicNode, LogId, RaftMetrics};
use tokio::sync::watch;
use tokio::task::JoinHandle;
#[cfg(feature = "fault-injection")]
use tracing::warn;
use tracing::Instrument;

use super::groups::GroupSlot;
use super::Host;
#[cfg(feature = "fault-injection")]
use crate::config::FaultConfig;
use crate::engine::{self, EngineConfig};

/// What one look at a group's metrics shows.
#[derive(Debug)]
struct Seen {
    /// This node leads the group.
    leading: bool,
    /// A leader other than the last one seen (none counts as no change).
    new_leader: bool,
    /// A snapshot other than the last one seen.
    new_snapshot: bool,
}

/// Follows a group's metrics from one change to the next.
#[derive(Default)]
struct Observer {
    leader: Option<NodeId>,
    snapshot: Option<LogId<NodeId>>,
}

impl Observer {
    fn see(&mut self, node_id: NodeId, m: &RaftMetrics<NodeId, BasicNode>) -> Seen {
        let seen = Seen {
            leading: m.current_leader == Some(node_id) && m.state.is_leader(),
            new_leader: m.current_leader != self.leader && m.current_leader.is_some(),
            new_snapshot: m.snapshot != self.snapshot && m.snapshot.is_some(),
        };
        self.leader = m.current_leader;
        self.snapshot = m.snapshot;
        seen
    }
}

#[derive(Debug, PartialEq, Eq)]
enum EngineChange {
    Start,
    Stop,
}

fn engine_change(leading: bool, running: bool) -> Option<EngineChange> {
    match (leading, running) {
        (true, false) => Some(EngineChange::Start),
        (false, true) => Some(EngineChange::Stop),
        _ => None,
    }
}

#[cfg(feature = "fault-injection")]
pub(super) fn warn_if_faults_injected(node_id: NodeId, config: &FaultConfig) {
    if config.lose_fired_fraction > 0.0 {
        warn!(
            node_id,
            fraction = config.lose_fired_fraction,
            "FAULT INJECTION ACTIVE: fired timers will be lost on purpose"
        );
    }
    if config.early_fire_ms > 0 {
        warn!(
            node_id,
            early_ms = config.early_fire_ms,
            "FAULT INJECTION ACTIVE: timers will fire early on purpose"
        );
    }
}

impl Host {
    /// Runs the partition's timer engine exactly while this node leads the partition.
    pub(super) async fn lead(self: Arc<Self>, partition: u32) {
        let Some(GroupSlot {
            raft: group,
            events,
            in_memory,
            ..
        }) = self.slot(partition).cloned()
        else {
            return;
        };
        let mut metrics = group.metrics();
        let mut running: Option<(watch::Sender<bool>, JoinHandle<()>)> = None;
        let mut observer = Observer::default();
        loop {
            let seen = observer.see(self.node_id, &metrics.borrow());
            if seen.new_leader {
                self.metrics.raft_leader_changes.inc();
            }
            if seen.new_snapshot {
                self.metrics.raft_snapshots.inc();
            }
            if running.as_ref().is_some_and(|(_, task)| task.is_finished()) {
                running = None;
            }
            match engine_change(seen.leading, running.is_some()) {
                Some(EngineChange::Start) => {
                    let (stop, stopped) = watch::channel(false);
                    let context = engine::EngineContext {
                        partition,
                        group: group.clone(),
                        store: self.store.clone(),
                        events: events.clone(),
                        dispatcher: Arc::clone(&self.dispatcher),
                        metrics: Arc::clone(&self.metrics),
                        config: EngineConfig::from(&self.config),
                        clock: Arc::clone(&self.clock),
                        replicas: self.replicas(partition),
                        in_memory: Arc::clone(&in_memory),
                    };
                    let task = tokio::spawn(engine::run(context, stopped).instrument(
                        tracing::info_span!("engine", node_id = self.node_id, partition),
                    ));
                    running = Some((stop, task));
                }
                Some(EngineChange::Stop) => {
                    if let Some((stop, task)) = running.take() {
                        stop_engine(stop, task).await;
                    }
                }
                None => {}
            }
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { break },
                // An engine that stopped on an error is restarted while still leading.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if let Some((stop, task)) = running.take() {
            stop_engine(stop, task).await;
        }
    }
}

/// Asks an engine to stop; one stuck waiting on a quorum is aborted (its cleanup still runs).
async fn stop_engine(stop: watch::Sender<bool>, mut task: JoinHandle<()>) {
    let _ = stop.send(true);
    if tokio::time::timeout(Duration::from_secs(2), &mut task)
        .await
        .is_err()
    {
        task.abort();
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, ServerState};

    use super::*;

    fn metrics(
        leader: Option<NodeId>,
        state: ServerState,
        snapshot: Option<u64>,
    ) -> RaftMetrics<NodeId, BasicNode> {
        let mut m = RaftMetrics::new_initial(1);
        m.current_leader = leader;
        m.state = state;
        m.snapshot = snapshot.map(|index| LogId::new(CommittedLeaderId::new(1, 2), index));
        m
    }

    #[test]
    fn a_node_leads_when_it_is_both_the_known_leader_and_in_leader_state() {
        let leads = |leader, state| {
            Observer::default()
                .see(1, &metrics(leader, state, None))
                .leading
        };
        assert!(leads(Some(1), ServerState::Leader));
        // Still stepping up, or told of itself as leader after stepping down: not leading.
        assert!(!leads(None, ServerState::Leader));
        assert!(!leads(Some(1), ServerState::Follower));
        assert!(!leads(Some(2), ServerState::Follower));
    }

    #[test]
    fn leader_changes_and_snapshots_are_seen_once_each() {
        let mut w = Observer::default();
        let seen = |w: &mut Observer, leader, snapshot| {
            let s = w.see(1, &metrics(leader, ServerState::Follower, snapshot));
            (s.new_leader, s.new_snapshot)
        };
        assert_eq!(seen(&mut w, None, None), (false, false));
        assert_eq!(seen(&mut w, Some(2), None), (true, false));
        assert_eq!(seen(&mut w, Some(2), Some(10)), (false, true));
        assert_eq!(seen(&mut w, Some(2), Some(10)), (false, false));
        // Losing the leader is not a change of leader; the next one, even the same, is.
        assert_eq!(seen(&mut w, None, Some(10)), (false, false));
        assert_eq!(seen(&mut w, Some(2), Some(20)), (true, true));
        assert_eq!(seen(&mut w, Some(3), Some(20)), (true, false));
    }

    #[test]
    fn the_engine_starts_on_gaining_leadership_and_stops_on_losing_it() {
        assert_eq!(engine_change(true, false), Some(EngineChange::Start));
        assert_eq!(engine_change(false, true), Some(EngineChange::Stop));
        assert_eq!(engine_change(true, true), None);
        assert_eq!(engine_change(false, false), None);
    }
}
