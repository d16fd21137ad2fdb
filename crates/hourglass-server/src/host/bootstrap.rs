//! Initial membership: each partition's group is initialized by one node, its first replica,
//! once every replica has recorded its identity.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hourglass_proto::internal::HelloRequest;
use hourglass_types::{NodeId, Placement};
use openraft::BasicNode;
use tracing::info;

use super::{next_wait, peer_backoff, Host};

/// The partitions whose group `node` initializes, with their members: those it is the first
/// replica of, in ring order, so the initializers (the first leaders) are spread over the nodes.
fn initialized_by(placement: &Placement, node: NodeId) -> Vec<(u32, Vec<NodeId>)> {
    placement
        .replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.first() == Some(&node))
        .map(|(p, r)| (p as u32, r.clone()))
        .collect()
}

/// Every member of `groups`, once each.
fn members_of(groups: &[(u32, Vec<NodeId>)]) -> Vec<NodeId> {
    let mut members: Vec<NodeId> = groups.iter().flat_map(|(_, r)| r.iter().copied()).collect();
    members.sort_unstable();
    members.dedup();
    members
}

impl Host {
    /// Initializes the groups this node is first replica of. Initializing an already
    /// initialized group is refused by openraft, which makes this safe to repeat on every start.
    pub(super) async fn bootstrap(self: Arc<Self>) {
        let meta = self.meta.get().expect("bootstrap runs after start");
        let mine = initialized_by(&meta.placement, self.node_id);
        if mine.is_empty() {
            return;
        }
        self.wait_ready(&members_of(&mine)).await;
        for (partition, members) in mine {
            let Some(raft) = self.group(partition) else {
                continue;
            };
            if raft.is_initialized().await.unwrap_or(true) {
                continue;
            }
            let nodes: BTreeMap<NodeId, BasicNode> = members
                .iter()
                .map(|id| {
                    (
                        *id,
                        BasicNode::new(self.peers.address(*id).unwrap_or_default()),
                    )
                })
                .collect();
            match raft.initialize(nodes).await {
                Ok(()) => info!(node_id = self.node_id, partition, "group initialized"),
                Err(e) => {
                    info!(node_id = self.node_id, partition, error = %e, "group already initialized")
                }
            }
        }
    }

    async fn wait_ready(&self, replicas: &[NodeId]) {
        for &peer in replicas.iter().filter(|&&p| p != self.node_id) {
            let mut backoff = peer_backoff();
            loop {
                if self.stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(mut client) = self.peers.transport(peer) {
                    let req = HelloRequest {
                        from_node: self.node_id,
                        partition_count: self.config.partitions,
                    };
                    if let Ok(resp) = client.hello(req).await {
                        if resp.into_inner().ready {
                            break;
                        }
                    }
                }
                tokio::time::sleep(next_wait(&mut backoff)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_group_is_initialized_by_exactly_its_first_replica() {
        let nodes = BTreeSet::from([1, 2, 3, 4, 5]);
        let placement = Placement::compute(32, &nodes, 3).unwrap();
        let mut initialized = BTreeMap::new();
        for &node in &nodes {
            let mine = initialized_by(&placement, node);
            for (partition, members) in &mine {
                assert_eq!(members, &placement.replicas[*partition as usize]);
                assert_eq!(members[0], node);
                assert!(
                    initialized.insert(*partition, node).is_none(),
                    "{partition}"
                );
            }
            let waits = members_of(&mine);
            assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
            let expected: BTreeSet<NodeId> =
                mine.iter().flat_map(|(_, r)| r.iter().copied()).collect();
            assert_eq!(waits, expected.into_iter().collect::<Vec<_>>());
        }
        assert_eq!(initialized.len(), 32);
        // Spread: with 32 partitions on 5 nodes, every node initializes some.
        let initializers: BTreeSet<NodeId> = initialized.values().copied().collect();
        assert_eq!(initializers, nodes);
    }
}
