//! Which node leads each partition, as the cluster last reported it (`Admin.ClusterStatus`),
//! so that a call about one workflow goes straight to its partition's leader. Any node would
//! answer it, but a node that does not lead the partition forwards the call: two gRPC calls
//! instead of one (docs/benchmarks.md, "Unary and batch throughput").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hourglass_proto::v1;
use xxhash_rust::xxh3::xxh3_64;

/// How long a table is used before the cluster is asked again. A leader that changes within it
/// costs a forwarded hop per call until then, never a wrong answer: every node forwards.
pub(crate) const ROUTES_TTL: Duration = Duration::from_secs(30);

/// The most partitions a node accepts (`partitions`, docs/operations.md): a status naming more
/// is not believed, rather than have the client allocate a table for four billion.
const MAX_PARTITIONS: u32 = 4096;

/// The partition of a workflow, as every node computes it: `xxh3_64(workflow_id, seed 0) mod
/// partitions` (docs/api.md, "Partitions"; pinned by a test against the server's function).
pub(crate) fn partition_for(workflow_id: &str, partitions: u32) -> u32 {
    (xxh3_64(workflow_id.as_bytes()) % u64::from(partitions)) as u32
}

/// Each partition's leader address; `None` where the status knew no leader, or no address
/// for it, or a call there failed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    leaders: Vec<Option<String>>,
}

impl Table {
    /// The table a cluster status gives; `None` when it names no partitions, or more than a
    /// node accepts.
    pub(crate) fn from_status(status: &v1::ClusterStatusResponse) -> Option<Table> {
        if !(1..=MAX_PARTITIONS).contains(&status.partition_count) {
            return None;
        }
        let addresses: HashMap<u64, &str> = status
            .nodes
            .iter()
            .filter(|n| !n.address.is_empty())
            .map(|n| (n.node_id, n.address.as_str()))
            .collect();
        let mut leaders = vec![None; status.partition_count as usize];
        for p in &status.partitions {
            if let Some(slot) = leaders.get_mut(p.partition as usize) {
                *slot = addresses.get(&p.leader).map(|a| (*a).to_owned());
            }
        }
        Some(Table { leaders })
    }

    pub(crate) fn leader_of(&self, workflow_id: &str) -> Option<&str> {
        let partition = partition_for(workflow_id, self.leaders.len() as u32);
        self.leaders[partition as usize].as_deref()
    }

    /// A call to `address` failed: its partitions go to any endpoint until the next refresh.
    pub(crate) fn forget(&mut self, address: &str) {
        for slot in &mut self.leaders {
            if slot.as_deref() == Some(address) {
                *slot = None;
            }
        }
    }
}

/// The table, when it was last asked for, and whether a caller is asking now (one at a time:
/// the others go on with the table they have).
#[derive(Default)]
pub(crate) struct Routes {
    state: Mutex<State>,
    refreshing: AtomicBool,
}

#[derive(Default)]
struct State {
    table: Option<Table>,
    asked: Option<Instant>,
}

/// The right to refresh the table, given back when dropped (also when the caller's future is).
pub(crate) struct Refresh<'a>(&'a Routes);

impl Drop for Refresh<'_> {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

impl Refresh<'_> {
    /// Records what the cluster answered; `None` (no answer) keeps the old table until the next
    /// refresh is due, so a cluster that cannot say is not asked on every call.
    pub(crate) fn finish(self, table: Option<Table>, now: Instant) {
        let mut state = self.0.state.lock().expect("routes poisoned");
        state.asked = Some(now);
        if table.is_some() {
            state.table = table;
        }
    }
}

impl Routes {
    pub(crate) fn leader_of(&self, workflow_id: &str) -> Option<String> {
        let state = self.state.lock().expect("routes poisoned");
        state
            .table
            .as_ref()?
            .leader_of(workflow_id)
            .map(str::to_owned)
    }

    /// The right to ask the cluster again, when the table is due for it and nobody else is
    /// asking.
    pub(crate) fn refresh_due(&self, now: Instant) -> Option<Refresh<'_>> {
        let due = {
            let state = self.state.lock().expect("routes poisoned");
            state
                .asked
                .is_none_or(|at| now.saturating_duration_since(at) >= ROUTES_TTL)
        };
        let ours = due
            && self
                .refreshing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        ours.then_some(Refresh(self))
    }

    pub(crate) fn forget(&self, address: &str) {
        let mut state = self.state.lock().expect("routes poisoned");
        if let Some(table) = &mut state.table {
            table.forget(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(leaders: &[u64]) -> v1::ClusterStatusResponse {
        v1::ClusterStatusResponse {
            partition_count: leaders.len() as u32,
            nodes: (1..=3)
                .map(|id| v1::NodeInfo {
                    node_id: id,
                    address: format!("10.0.0.{id}:7000"),
                    ..Default::default()
                })
                .collect(),
            partitions: leaders
                .iter()
                .enumerate()
                .map(|(p, &leader)| v1::PartitionStatus {
                    partition: p as u32,
                    leader,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn partitions_are_the_servers() {
        for partitions in [1, 2, 3, 16, 17, 1024] {
            for i in 0..2_000 {
                let workflow = format!("wf-{i}-{}", "x".repeat(i % 40));
                assert_eq!(
                    partition_for(&workflow, partitions),
                    hourglass_types::partition_for(&workflow, partitions),
                    "{workflow} of {partitions}"
                );
            }
        }
    }

    #[test]
    fn a_workflow_goes_to_its_partitions_leader_while_it_is_known() {
        // Partition 3 has no leader; partition 2's leader is a node the status does not list.
        let mut s = status(&[1, 2, 9, 0]);
        s.nodes[2].address.clear();
        s.partitions.push(v1::PartitionStatus {
            partition: 7,
            leader: 3,
            ..Default::default()
        });
        let mut table = Table::from_status(&s).unwrap();
        let of = |p: u32| {
            (0..)
                .map(|i| format!("w{i}"))
                .find(|w| partition_for(w, 4) == p)
                .unwrap()
        };
        assert_eq!(table.leader_of(&of(0)), Some("10.0.0.1:7000"));
        assert_eq!(table.leader_of(&of(1)), Some("10.0.0.2:7000"));
        assert_eq!(table.leader_of(&of(2)), None);
        assert_eq!(table.leader_of(&of(3)), None);
        table.forget("10.0.0.2:7000");
        assert_eq!(table.leader_of(&of(1)), None);
        assert_eq!(table.leader_of(&of(0)), Some("10.0.0.1:7000"));
        assert_eq!(Table::from_status(&status(&[])), None);
        let mut huge = status(&[1]);
        huge.partition_count = u32::MAX;
        assert_eq!(Table::from_status(&huge), None);
        huge.partition_count = MAX_PARTITIONS;
        assert!(Table::from_status(&huge).is_some());
    }

    #[test]
    fn one_caller_refreshes_at_a_time_and_not_before_the_table_is_due() {
        let routes = Routes::default();
        let start = Instant::now();
        assert_eq!(routes.leader_of("w"), None);
        let refresh = routes.refresh_due(start).expect("never asked");
        assert!(routes.refresh_due(start).is_none(), "one at a time");
        refresh.finish(Table::from_status(&status(&[2])), start);
        assert_eq!(routes.leader_of("w").as_deref(), Some("10.0.0.2:7000"));
        assert!(routes.refresh_due(start + ROUTES_TTL / 2).is_none());
        // A refresh that finds no answer keeps the table, and waits as long to ask again.
        let refresh = routes.refresh_due(start + ROUTES_TTL).expect("due");
        refresh.finish(None, start + ROUTES_TTL);
        assert_eq!(routes.leader_of("w").as_deref(), Some("10.0.0.2:7000"));
        assert!(routes
            .refresh_due(start + ROUTES_TTL + ROUTES_TTL / 2)
            .is_none());
        // A caller dropped while refreshing gives the right back.
        drop(routes.refresh_due(start + 2 * ROUTES_TTL).expect("due"));
        assert!(routes.refresh_due(start + 2 * ROUTES_TTL).is_some());
        routes.forget("10.0.0.2:7000");
        assert_eq!(routes.leader_of("w"), None);
    }
}
