//! The node's cluster identity: checked against what it recorded on every start, recorded on
//! its first start once the peers confirm it is not a wiped member (or, with `--rejoin`, once
//! its lost votes are fenced).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hourglass_proto::internal::{HelloRequest, LocalStatusRequest};
use hourglass_storage::{ClusterMeta, LogStore, LogSyncer, Store};
use hourglass_types::{NodeId, Placement};
use tracing::{info, warn};

use super::{next_wait, peer_backoff, Host};
use crate::config::NodeConfig;
use crate::error::{Error, Result};

/// The identity `store` recorded, refused if it is another node's or another layout's.
pub(super) fn stored(store: &Store, config: &NodeConfig) -> Result<Option<ClusterMeta>> {
    let Some(meta) = store.cluster_meta()? else {
        return Ok(None);
    };
    store.check_meta(&meta, config.node_id, config.partitions)?;
    Ok(Some(meta))
}

/// How a node without recorded identity joins, given what its peers said.
#[derive(Debug, PartialEq, Eq)]
enum FirstStart {
    /// No peer holds Raft state: the cluster is new.
    Join,
    /// The node lost its data and was told to rejoin: its votes must be fenced first.
    Rejoin,
}

fn first_start(peers_checked: Result<()>, rejoin: bool) -> Result<FirstStart> {
    match peers_checked {
        Ok(()) => Ok(FirstStart::Join),
        Err(Error::WipedNode { .. }) if rejoin => Ok(FirstStart::Rejoin),
        Err(e) => Err(e),
    }
}

/// Whether the configured peers would place the partitions as recorded.
fn placement_matches(meta: &ClusterMeta, node_ids: &BTreeSet<NodeId>) -> bool {
    Placement::compute(meta.partitions, node_ids, meta.replication_factor)
        .is_ok_and(|expected| expected == meta.placement)
}

pub(super) fn warn_if_placement_differs(node_id: NodeId, meta: &ClusterMeta, config: &NodeConfig) {
    if !placement_matches(meta, &config.node_ids()) {
        warn!(
            node_id,
            "configured peers differ from the recorded placement; keeping the recorded placement"
        );
    }
}

impl Host {
    /// First start: refuses a wiped node unless it rejoins, fences a rejoining node's votes,
    /// and records the cluster identity.
    pub(super) async fn record_identity(&self) -> Result<ClusterMeta> {
        let placement = Placement::compute(
            self.config.partitions,
            &self.config.node_ids(),
            self.config.replication_factor,
        )?;
        let fences = match first_start(self.check_not_wiped().await, self.config.rejoin)? {
            FirstStart::Join => Vec::new(),
            FirstStart::Rejoin => self.vote_fences(&placement).await?,
        };
        let syncer = LogSyncer::start(&self.store);
        for (partition, term) in &fences {
            // In every term up to the cluster's highest, act as if this node already voted:
            // whatever it voted before its data was lost, it cannot vote twice.
            let mut log = LogStore::new(self.store.clone(), *partition, syncer.clone());
            openraft::storage::RaftLogStorage::save_vote(
                &mut log,
                &openraft::Vote::new(*term, self.node_id),
            )
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        }
        if !fences.is_empty() {
            warn!(
                node_id = self.node_id,
                partitions = fences.len(),
                "rejoining with lost data: votes fenced, catching up from the leaders"
            );
        }
        let meta = ClusterMeta {
            node_id: self.node_id,
            partitions: self.config.partitions,
            replication_factor: self.config.replication_factor,
            placement,
        };
        self.store.write_cluster_meta(&meta)?;
        info!(node_id = self.node_id, "cluster identity recorded");
        Ok(meta)
    }

    /// A node starting with empty data asks its peers whether the cluster already exists. If
    /// one holds Raft state, this node's votes and log were lost: joining would risk two
    /// leaders in one term, so it refuses. Peers that are still starting are waited for.
    async fn check_not_wiped(&self) -> Result<()> {
        let others: Vec<NodeId> = self
            .config
            .node_ids()
            .into_iter()
            .filter(|&id| id != self.node_id)
            .collect();
        let mut answered: BTreeMap<NodeId, bool> = BTreeMap::new();
        let mut waits = 0u32;
        let mut backoff = peer_backoff();
        loop {
            for &peer in &others {
                if answered.contains_key(&peer) {
                    continue;
                }
                let Some(mut client) = self.peers.transport(peer) else {
                    continue;
                };
                let mut req = tonic::Request::new(HelloRequest {
                    from_node: self.node_id,
                    partition_count: self.config.partitions,
                });
                req.set_timeout(Duration::from_secs(2));
                let Ok(resp) = client.hello(req).await else {
                    continue;
                };
                let resp = resp.into_inner();
                if resp.partition_count != self.config.partitions {
                    return Err(Error::PeerPartitionMismatch {
                        peer,
                        theirs: resp.partition_count,
                        ours: self.config.partitions,
                    });
                }
                if resp.initialized {
                    return Err(Error::WipedNode {
                        dir: self.config.data_dir.clone(),
                        peer,
                    });
                }
                answered.insert(peer, true);
            }
            if answered.len() == others.len() {
                return Ok(());
            }
            if waits.is_multiple_of(10) {
                let missing: Vec<_> = others
                    .iter()
                    .filter(|p| !answered.contains_key(p))
                    .collect();
                info!(
                    node_id = self.node_id,
                    ?missing,
                    "new node waiting for peers before joining"
                );
            }
            waits += 1;
            tokio::time::sleep(next_wait(&mut backoff)).await;
        }
    }

    /// For each partition of this node, the highest term any other replica has seen. Every
    /// other replica must answer: a vote this node cast before losing its data was for a
    /// candidate that recorded that term.
    async fn vote_fences(&self, placement: &Placement) -> Result<Vec<(u32, u64)>> {
        let mut fences = Vec::new();
        for partition in placement.partitions_of(self.node_id) {
            let mut term = 0;
            for &peer in placement.replicas[partition as usize]
                .iter()
                .filter(|&&p| p != self.node_id)
            {
                let status = match self.peers.transport(peer) {
                    Some(mut client) => {
                        let mut req = tonic::Request::new(LocalStatusRequest {});
                        req.set_timeout(Duration::from_secs(3));
                        client.local_status(req).await.ok().map(|r| r.into_inner())
                    }
                    None => None,
                };
                let seen = status
                    .and_then(|s| s.partitions.into_iter().find(|p| p.partition == partition))
                    .ok_or_else(|| {
                        Error::Rejoin(format!(
                            "replica {peer} of partition {partition} did not report its term; every other replica must be up"
                        ))
                    })?;
                term = term.max(seen.term);
            }
            fences.push((partition, term));
        }
        Ok(fences)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wiped() -> Error {
        Error::WipedNode {
            dir: "/data".into(),
            peer: 2,
        }
    }

    #[test]
    fn a_wiped_node_joins_only_when_told_to_rejoin() {
        assert_eq!(first_start(Ok(()), false).unwrap(), FirstStart::Join);
        assert_eq!(first_start(Ok(()), true).unwrap(), FirstStart::Join);
        assert_eq!(first_start(Err(wiped()), true).unwrap(), FirstStart::Rejoin);
        assert!(matches!(
            first_start(Err(wiped()), false),
            Err(Error::WipedNode { peer: 2, .. })
        ));
        // `--rejoin` answers only a wipe: a peer of another layout is refused either way.
        let mismatch = || Error::PeerPartitionMismatch {
            peer: 3,
            theirs: 8,
            ours: 16,
        };
        for rejoin in [false, true] {
            assert!(matches!(
                first_start(Err(mismatch()), rejoin),
                Err(Error::PeerPartitionMismatch { .. })
            ));
        }
    }

    #[test]
    fn the_recorded_placement_is_checked_against_the_configured_peers() {
        let nodes = BTreeSet::from([1, 2, 3]);
        let meta = ClusterMeta {
            node_id: 1,
            partitions: 16,
            replication_factor: 3,
            placement: Placement::compute(16, &nodes, 3).unwrap(),
        };
        assert!(placement_matches(&meta, &nodes));
        assert!(!placement_matches(&meta, &BTreeSet::from([1, 2, 3, 4])));
        // Too few peers for the recorded replication factor place nothing.
        assert!(!placement_matches(&meta, &BTreeSet::from([1, 2])));
    }
}
