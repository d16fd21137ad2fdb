//! Raft transport, server side: decodes a peer's openraft message and hands it to the group
//! of its partition.

use std::sync::Arc;

use hourglass_proto::internal::raft_transport_server::RaftTransport;
use hourglass_proto::internal::{
    ClockOffset, ClockRequest, ClockResponse, HelloRequest, HelloResponse, LocalPartition,
    LocalStatusRequest, LocalStatusResponse, RaftMessage,
};
use hourglass_types::{NodeId, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::Vote;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::clock::TimeSource;
use crate::error::Error;
use crate::group::Group;
use crate::host::Host;

pub struct TransportService {
    pub host: Arc<Host>,
}

impl TransportService {
    fn group(&self, partition: u32) -> Result<&Group, Error> {
        self.host
            .group(partition)
            .ok_or_else(|| Error::Unavailable {
                partition,
                reason: format!(
                    "node {} does not (yet) host a replica of partition {partition}",
                    self.host.node_id
                ),
                leader: None,
            })
    }
}

impl TransportService {
    /// Refuses a message sent in the name of a node that is no replica of `partition`: a
    /// forged vote for a stranger at a huge term left a plaintext cluster's partition unable
    /// to commit for good (found by tests/fuzz.rs, seed 7608045832334285667). Real peers only
    /// ever speak for themselves, and replicas only for members of their partition.
    fn check_sender(&self, partition: u32, vote: &Vote<NodeId>) -> Result<(), Error> {
        let node = vote.leader_id().voted_for();
        let member = self
            .host
            .placement()
            .and_then(|p| p.replicas.get(partition as usize))
            .is_some_and(|replicas| node.is_some_and(|n| replicas.contains(&n)));
        if member {
            Ok(())
        } else {
            Err(Error::from(hourglass_types::Error::invalid(
                "body",
                format!("a raft message for partition {partition} in the name of {node:?}, which is none of its replicas"),
            )))
        }
    }
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    bincode::deserialize(body).map_err(|e| {
        Error::from(hourglass_types::Error::invalid(
            "body",
            format!("undecodable raft message: {e}"),
        ))
    })
}

fn reply<T: Serialize>(partition: u32, value: &T) -> Result<Response<RaftMessage>, Error> {
    let body = bincode::serialize(value)
        .map_err(|e| Error::Internal(format!("raft message not serializable: {e}")))?;
    Ok(Response::new(RaftMessage { partition, body }))
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let group = self.group(m.partition)?;
        let message: AppendEntriesRequest<TypeConfig> = decode(&m.body)?;
        self.check_sender(m.partition, &message.vote)?;
        let result = group.append_entries(message).await;
        Ok(reply(m.partition, &result)?)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let group = self.group(m.partition)?;
        let message: VoteRequest<NodeId> = decode(&m.body)?;
        self.check_sender(m.partition, &message.vote)?;
        let result = group.vote(message).await;
        Ok(reply(m.partition, &result)?)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let m = request.into_inner();
        let group = self.group(m.partition)?;
        let message: InstallSnapshotRequest<TypeConfig> = decode(&m.body)?;
        self.check_sender(m.partition, &message.vote)?;
        let result = group.install_snapshot(message).await;
        Ok(reply(m.partition, &result)?)
    }

    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let from = request.into_inner().from_node;
        // Only groups shared with the caller matter: with more nodes than replicas, other
        // groups may legitimately start before the caller has joined.
        let initialized = match self.host.placement() {
            Some(placement) => {
                let shared = placement
                    .replicas
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.contains(&from))
                    .map(|(p, _)| p as u32);
                self.host
                    .store
                    .has_raft_state(shared)
                    .map_err(Error::from)?
            }
            None => false,
        };
        Ok(Response::new(HelloResponse {
            node_id: self.host.node_id,
            partition_count: self.host.config.partitions,
            ready: self.host.is_ready(),
            initialized,
        }))
    }

    async fn local_status(
        &self,
        _request: Request<LocalStatusRequest>,
    ) -> Result<Response<LocalStatusResponse>, Status> {
        let mut partitions = Vec::new();
        for (partition, raft) in self.host.groups() {
            let m = raft.metrics().borrow().clone();
            let pending = self
                .host
                .store
                .partition_state(partition)
                .map_err(Error::from)?
                .pending;
            partitions.push(LocalPartition {
                partition,
                leader: m.current_leader.unwrap_or(0),
                term: m.current_term,
                applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
                timers_pending: pending,
                timers_in_memory: self.host.timers_in_memory(partition),
            });
        }
        partitions.sort_by_key(|p| p.partition);
        let store = self.host.store.clone();
        let (store_memory, disk_bytes) = tokio::task::spawn_blocking(move || {
            Ok::<_, hourglass_storage::Error>((store.memory()?.total(), store.disk_bytes()?))
        })
        .await
        .map_err(|e| Error::Internal(format!("store figures: {e}")))?
        .map_err(Error::from)?;
        Ok(Response::new(LocalStatusResponse {
            node_id: self.host.node_id,
            http_address: self
                .host
                .config
                .http_listen
                .map(|a| a.to_string())
                .unwrap_or_default(),
            partitions,
            rss_bytes: resident_memory_bytes(),
            clock_offsets: self
                .host
                .clock
                .offsets()
                .into_iter()
                .map(|o| ClockOffset {
                    peer: o.peer,
                    offset_ms: o.offset_ms,
                    error_ms: o.error_ms,
                    age_ms: o.age_ms,
                })
                .collect(),
            clock_out_of_bounds: self.host.clock_out_of_bounds(),
            store_memory_bytes: store_memory,
            disk_bytes,
        }))
    }

    async fn clock(
        &self,
        _request: Request<ClockRequest>,
    ) -> Result<Response<ClockResponse>, Status> {
        Ok(Response::new(ClockResponse {
            wall_ms: self.host.clock.source().wall_ms(),
        }))
    }
}

/// Resident set size of this process (0 where the platform does not tell).
fn resident_memory_bytes() -> u64 {
    memory_stats::memory_stats()
        .map(|m| m.physical_mem as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    /// The figure is this process's resident memory: it grows by what the process touches.
    #[test]
    fn resident_memory_is_measured() {
        let before = super::resident_memory_bytes();
        assert!(before > 1024 * 1024, "{before}");
        let touched: Vec<u8> = vec![1; 128 * 1024 * 1024];
        let after = super::resident_memory_bytes();
        assert!(std::hint::black_box(&touched).iter().all(|&b| b == 1));
        assert!(after >= before + 64 * 1024 * 1024, "{before} -> {after}");
    }
}
