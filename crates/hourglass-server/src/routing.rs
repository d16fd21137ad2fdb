//! Where a partition's requests go: this node's group when it leads, otherwise the leader
//! (or, on a node without a replica, a replica) by forwarding over gRPC.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hourglass_types::{Command, CommandResponse, NodeId};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use crate::error::{Error, Result};
use crate::group::Group;
use crate::host::Host;

/// Metadata key counting how often a request was forwarded between nodes.
pub const HOPS: &str = "x-hourglass-hops";
/// A request reaches a leader in at most two forwards: non-replica → replica → leader.
pub const MAX_HOPS: u32 = 2;

pub enum Target<'a> {
    Local(&'a Group),
    Remote(NodeId),
}

pub struct Router {
    pub host: Arc<Host>,
    spread: AtomicUsize,
}

impl Router {
    pub fn new(host: Arc<Host>) -> Self {
        Router {
            host,
            spread: AtomicUsize::new(0),
        }
    }

    fn unavailable(
        &self,
        partition: u32,
        reason: impl Into<String>,
        leader: Option<NodeId>,
    ) -> Error {
        Error::Unavailable {
            partition,
            reason: reason.into(),
            leader: leader.and_then(|id| self.host.peers.address(id).map(|a| (id, a.to_owned()))),
        }
    }

    pub fn target(&self, partition: u32, hops: u32) -> Result<Target<'_>> {
        if let Some(group) = self.host.group(partition) {
            let leader = group.metrics().borrow().current_leader;
            return match leader {
                Some(id) if id == self.host.node_id => Ok(Target::Local(group)),
                // Only a forged or corrupt Raft message can name a leader outside the
                // configuration; there is nowhere to forward to until a real one is elected.
                Some(id) if self.host.peers.address(id).is_none() => Err(self.unavailable(
                    partition,
                    format!("the known leader, node {id}, is not a configured peer"),
                    None,
                )),
                Some(id) if hops < MAX_HOPS => Ok(Target::Remote(id)),
                Some(id) => Err(self.unavailable(partition, "leadership is moving", Some(id))),
                None => Err(self.unavailable(partition, "no leader elected yet", None)),
            };
        }
        let placement = self.host.placement().ok_or(Error::Starting)?;
        let replicas = placement
            .replicas
            .get(partition as usize)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| Error::Raft(format!("partition {partition} has no placement")))?;
        if hops >= MAX_HOPS {
            return Err(self.unavailable(partition, "too many forwards", None));
        }
        let i = self.spread.fetch_add(1, Ordering::Relaxed) % replicas.len();
        Ok(Target::Remote(replicas[i]))
    }

    /// Proposes `command` on the local leader and waits for it to be committed and applied.
    pub async fn commit(
        &self,
        partition: u32,
        group: &Group,
        command: Command,
    ) -> Result<CommandResponse> {
        let timeout = self.host.config.request_timeout();
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, group.client_write(command)).await {
            Ok(Ok(response)) => {
                self.host
                    .metrics
                    .raft_commit_latency
                    .observe(started.elapsed().as_secs_f64());
                Ok(response.data)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(self.unavailable(partition, "leadership moved", f.leader_id))
            }
            Ok(Err(e)) => Err(self.unavailable(partition, e.to_string(), None)),
            Err(_) => Err(Error::DeadlineExceeded {
                partition,
                timeout_ms: self.host.config.request_timeout_ms,
            }),
        }
    }

    /// Confirms leadership with a quorum and waits until everything committed before the read
    /// is applied, so the read that follows is linearizable.
    pub async fn read_barrier(&self, partition: u32, group: &Group) -> Result<()> {
        let timeout = self.host.config.request_timeout();
        match tokio::time::timeout(timeout, group.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(self.unavailable(partition, "leadership moved", f.leader_id))
            }
            Ok(Err(e)) => Err(self.unavailable(partition, e.to_string(), None)),
            Err(_) => Err(Error::DeadlineExceeded {
                partition,
                timeout_ms: self.host.config.request_timeout_ms,
            }),
        }
    }
}
