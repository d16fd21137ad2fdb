//! Raft transport, client side: one lazily connected, cached gRPC channel per peer, shared by
//! every group on this node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hourglass_proto::internal::raft_transport_client::RaftTransportClient;
use hourglass_proto::internal::RaftMessage;
use hourglass_types::{NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::config::Peer;

/// Raft messages can carry many entries with payloads of up to a MiB each.
pub(crate) const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The node's connections to its peers.
pub struct Peers {
    addresses: HashMap<NodeId, String>,
    channels: Mutex<HashMap<NodeId, Channel>>,
}

impl Peers {
    pub fn new(peers: &[Peer]) -> Self {
        Peers {
            addresses: peers.iter().map(|p| (p.id, p.address.clone())).collect(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.addresses.get(&id).map(String::as_str)
    }

    /// The cached channel to `id`; created on first use, reconnecting by itself afterwards.
    pub fn channel(&self, id: NodeId) -> Option<Channel> {
        let mut channels = self.channels.lock().expect("peer channel map poisoned");
        if let Some(c) = channels.get(&id) {
            return Some(c.clone());
        }
        let address = self.addresses.get(&id)?;
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        channels.insert(id, channel.clone());
        Some(channel)
    }

    pub fn transport(&self, id: NodeId) -> Option<RaftTransportClient<Channel>> {
        self.channel(id).map(|c| {
            RaftTransportClient::new(c)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        })
    }
}

/// Creates the connections of one partition's group.
pub struct GroupNetworkFactory {
    pub partition: u32,
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> GroupNetwork {
        GroupNetwork {
            partition: self.partition,
            target,
            peers: Arc::clone(&self.peers),
        }
    }
}

pub struct GroupNetwork {
    partition: u32,
    target: NodeId,
    peers: Arc<Peers>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl GroupNetwork {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .transport(self.target)
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&UnknownPeer(self.target))))?;
        let body = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftMessage {
            partition: self.partition,
            body,
        });
        request.set_timeout(option.hard_ttl());
        let response = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let message = response.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&message.into_inner().body)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not in the configured peers")]
struct UnknownPeer(NodeId);

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
