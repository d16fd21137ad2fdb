//! Which partition a workflow belongs to, and which nodes hold each partition.
//!
//! Both functions are pinned forever: a change in either strands every stored timer.

use std::collections::BTreeSet;

use hashring::HashRing;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, Xxh3DefaultBuilder};

use crate::error::{Error, Result};
use crate::raft::NodeId;

/// Virtual nodes per physical node on the placement ring.
const VNODES_PER_NODE: u32 = 64;

/// `xxh3_64(workflow_id bytes, seed 0) mod partitions`.
pub fn partition_for(workflow_id: &str, partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    (xxh3_64(workflow_id.as_bytes()) % u64::from(partitions)) as u32
}

/// The replica set of every partition. Computed once when a cluster is created and then
/// recorded, so that later edits of the node list do not silently move data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// `replicas[p]` lists the nodes of partition `p`, in ring order.
    pub replicas: Vec<Vec<NodeId>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct VNode {
    node: NodeId,
    index: u32,
}

impl Placement {
    /// Places `partitions` partitions on `nodes` with `replication_factor` distinct replicas each,
    /// by consistent hashing (xxh3 with seed 0, 64 virtual nodes per node).
    pub fn compute(
        partitions: u32,
        nodes: &BTreeSet<NodeId>,
        replication_factor: usize,
    ) -> Result<Self> {
        if partitions == 0 {
            return Err(Error::InvalidLayout(
                "partition count must be at least 1".into(),
            ));
        }
        if replication_factor == 0 {
            return Err(Error::InvalidLayout(
                "replication factor must be at least 1".into(),
            ));
        }
        if nodes.len() < replication_factor {
            return Err(Error::InvalidLayout(format!(
                "replication factor {replication_factor} needs at least that many nodes, {} configured",
                nodes.len()
            )));
        }
        let mut ring: HashRing<VNode, Xxh3DefaultBuilder> =
            HashRing::with_hasher(Xxh3DefaultBuilder::new());
        for &node in nodes {
            for index in 0..VNODES_PER_NODE {
                ring.add(VNode { node, index });
            }
        }
        let replicas = (0..partitions)
            .map(|p| {
                let walk = ring
                    .get_with_replicas(&format!("partition-{p}"), ring.len())
                    .unwrap_or_default();
                let mut chosen: Vec<NodeId> = Vec::with_capacity(replication_factor);
                for v in walk {
                    if !chosen.contains(&v.node) {
                        chosen.push(v.node);
                        if chosen.len() == replication_factor {
                            break;
                        }
                    }
                }
                debug_assert_eq!(chosen.len(), replication_factor);
                chosen
            })
            .collect();
        Ok(Placement { replicas })
    }

    pub fn partitions(&self) -> u32 {
        self.replicas.len() as u32
    }

    /// Partitions with a replica on `node`.
    pub fn partitions_of(&self, node: NodeId) -> impl Iterator<Item = u32> + '_ {
        self.replicas
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.contains(&node))
            .map(|(p, _)| p as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// These values are part of the on-disk contract: a change here strands stored timers.
    /// Never update them to make a test pass.
    #[test]
    fn partition_hash_and_placement_are_pinned() {
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(xxh3_64(b"order-42"), 0x79cc_a591_0b9a_ce3c);
        assert_eq!(partition_for("order-42", 16), 12);
        assert_eq!(partition_for("workflow-\u{e9}", 1024), 802);
        let placement = Placement::compute(4, &[1, 2, 3, 4, 5].into(), 3).unwrap();
        assert_eq!(
            placement.replicas,
            vec![vec![5, 1, 4], vec![5, 3, 2], vec![5, 3, 4], vec![3, 2, 1]]
        );
    }

    #[test]
    fn placement_is_deterministic_and_distinct() {
        let nodes: BTreeSet<NodeId> = [1, 2, 3, 4, 5].into();
        let a = Placement::compute(16, &nodes, 3).unwrap();
        let b = Placement::compute(16, &nodes, 3).unwrap();
        assert_eq!(a, b);
        for r in &a.replicas {
            let set: BTreeSet<_> = r.iter().collect();
            assert_eq!(set.len(), 3);
        }
        // Every node carries some replicas.
        for n in &nodes {
            assert!(a.partitions_of(*n).count() > 0, "node {n} unused");
        }
    }

    #[test]
    fn placement_rejects_bad_shapes() {
        let nodes: BTreeSet<NodeId> = [1, 2].into();
        assert!(Placement::compute(16, &nodes, 3).is_err());
        assert!(Placement::compute(0, &nodes, 1).is_err());
        assert!(Placement::compute(4, &nodes, 0).is_err());
    }

    #[test]
    fn adding_a_node_moves_few_replicas() {
        let before = Placement::compute(64, &[1, 2, 3, 4].into(), 3).unwrap();
        let after = Placement::compute(64, &[1, 2, 3, 4, 5].into(), 3).unwrap();
        let moved: usize = before
            .replicas
            .iter()
            .zip(&after.replicas)
            .map(|(a, b)| a.iter().filter(|n| !b.contains(n)).count())
            .sum();
        // A fifth node should take about a fifth of the 192 replicas, not reshuffle them all.
        assert!(moved < 192 / 2, "moved {moved} of 192 replicas");
    }

    proptest! {
        #[test]
        fn partition_in_range(w in ".{0,64}", p in 1u32..1024) {
            prop_assert!(partition_for(&w, p) < p);
        }
    }
}
