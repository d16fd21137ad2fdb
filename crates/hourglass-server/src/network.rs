//! Connections to the other nodes, shared by every group on this node: per peer one lazily
//! connected, cached channel to its peer port (the Raft transport, and the node-to-node
//! calls of start-up and status) and one to its client port (forwarded client calls). With
//! TLS, both present this node's certificate and accept only that peer's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use hourglass_proto::internal::raft_transport_client::RaftTransportClient;
use hourglass_proto::internal::RaftMessage;
use hourglass_types::{NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

use crate::config::Peer;
use crate::metrics::{Metrics, RaftStage};
use crate::tls::Tls;

/// Raft messages can carry many entries with payloads of up to a MiB each.
pub(crate) const MAX_RAFT_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Most encoded bytes of one AppendEntries request. The log reader already stops at
/// `hourglass_storage::REPLICATION_READ_BYTES` of stored entries; this guards the encoding
/// sent (openraft could otherwise batch up to `max_payload_entries`, 300, entries of up to
/// about 4 MiB each, past [`MAX_RAFT_MESSAGE_BYTES`], and a follower would never catch up).
/// Above this bound the request is refused before it is sent, with a hint of how many entries
/// fit, and openraft sends fewer. A single entry always goes, whatever its size.
pub(crate) const MAX_APPEND_BYTES: usize = 8 * 1024 * 1024;

/// How many entries an AppendEntries request of `entries` entries encoding to `bytes` should
/// carry instead, or `None` when it is within `max_bytes` or holds a single entry. The hint
/// assumes entries of the average size and is strictly smaller, so repeated refusals of
/// uneven batches still come down to a request that fits, one entry at worst.
fn entries_hint(entries: usize, bytes: usize, max_bytes: usize) -> Option<u64> {
    if bytes <= max_bytes || entries <= 1 {
        return None;
    }
    let scaled = entries as u128 * max_bytes as u128 / bytes as u128;
    let fewer = entries as u64 - 1;
    Some(u64::try_from(scaled).unwrap_or(fewer).clamp(1, fewer))
}

/// The node's connections to its peers.
pub struct Peers {
    peers: HashMap<NodeId, Peer>,
    tls: Option<Tls>,
    channels: Mutex<HashMap<(NodeId, Port), Channel>>,
}

/// Which port of a peer a channel goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Port {
    Client,
    Peer,
}

impl Peers {
    pub fn new(peers: &[Peer], tls: Option<Tls>) -> Self {
        Peers {
            peers: peers.iter().map(|p| (p.id, p.clone())).collect(),
            tls,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The node's certificates, when TLS is on.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The client address of `id`.
    pub fn address(&self, id: NodeId) -> Option<&str> {
        self.peers.get(&id).map(|p| p.address.as_str())
    }

    /// The cached channel to a port of `id`; created on first use, reconnecting by itself
    /// afterwards.
    fn connect(&self, id: NodeId, port: Port) -> Option<Channel> {
        let mut channels = self.channels.lock().expect("peer channel map poisoned");
        if let Some(c) = channels.get(&(id, port)) {
            return Some(c.clone());
        }
        let peer = self.peers.get(&id)?;
        let address = match port {
            Port::Client => &peer.address,
            Port::Peer => &peer.peer_address,
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .ok()?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.dial(id)).ok()?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert((id, port), channel.clone());
        Some(channel)
    }

    /// A channel to the client port of `id`, for forwarding client calls.
    pub fn channel(&self, id: NodeId) -> Option<Channel> {
        self.connect(id, Port::Client)
    }

    /// The Raft transport of `id`, on its peer port.
    pub fn transport(&self, id: NodeId) -> Option<RaftTransportClient<Channel>> {
        self.connect(id, Port::Peer).map(|c| {
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
    pub metrics: Arc<Metrics>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> GroupNetwork {
        GroupNetwork {
            partition: self.partition,
            target,
            peers: Arc::clone(&self.peers),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

pub struct GroupNetwork {
    partition: u32,
    target: NodeId,
    peers: Arc<Peers>,
    metrics: Arc<Metrics>,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl GroupNetwork {
    async fn call<Resp, E>(
        &self,
        rpc: Rpc,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let mut client = self
            .peers
            .transport(self.target)
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&UnknownPeer(self.target))))?;
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

/// openraft's request in bincode, the body of a [`RaftMessage`].
fn encode<Req: Serialize, Err>(req: &Req) -> Result<Vec<u8>, RPCError<NodeId, BasicNode, Err>>
where
    Err: std::error::Error,
{
    bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))
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
        let body = encode(&rpc)?;
        if let Some(hint) = entries_hint(rpc.entries.len(), body.len(), MAX_APPEND_BYTES) {
            debug!(
                partition = self.partition,
                target = self.target,
                entries = rpc.entries.len(),
                bytes = body.len(),
                hint,
                "append too large; openraft sends fewer entries"
            );
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        // Heartbeats carry no entries: they would hide replication's cost among round trips
        // of nothing.
        let sent = (!rpc.entries.is_empty()).then(Instant::now);
        let answer = self.call(Rpc::Append, body, &option).await;
        if let (Some(sent), Ok(_)) = (sent, &answer) {
            self.metrics
                .raft_stages
                .observe(RaftStage::Replication, sent.elapsed());
        }
        answer
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, encode(&rpc)?, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, encode(&rpc)?, &option).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(unreachable_backoff())
    }
}

/// How long openraft waits before sending again to a peer it could not reach. Its default is
/// 500 ms every time; at a cluster's start the nodes' groups come up milliseconds apart, so a
/// leader's first send to a peer still starting failed, and its first commit (the fires of
/// timers that fell due while the cluster was down) waited those 500 ms (docs/benchmarks.md,
/// "restart"). Exponential from 10 ms with jitter, up to about the same 500 ms (a second with
/// jitter) for a peer that stays away.
fn unreachable_backoff() -> impl Iterator<Item = Duration> + Send + 'static {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use hourglass_types::{Command, TimerDefinition, TimerKey};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;

    #[test]
    fn the_hint_shrinks_an_oversized_append_until_it_fits() {
        assert_eq!(entries_hint(300, 1_000, 1_000), None);
        assert_eq!(entries_hint(1, 10_000, 1_000), None);
        assert_eq!(entries_hint(300, 3_000, 1_000), Some(100));
        assert_eq!(entries_hint(2, 1_000_000, 1_000), Some(1));
        // Just over the bound: one entry fewer at least.
        assert_eq!(entries_hint(10, 1_001, 1_000), Some(9));
        // Uneven entries: each refusal asks for fewer, down to one.
        let sizes = [100, 100, 100, 5_000, 100];
        let mut n = sizes.len();
        while let Some(hint) = entries_hint(n, sizes[..n].iter().sum(), 1_000) {
            assert!((hint as usize) < n);
            n = hint as usize;
        }
        assert!(sizes[..n].iter().sum::<usize>() <= 1_000);
    }

    fn entry(index: u64, payload_bytes: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Schedule {
                key: TimerKey {
                    workflow_id: "w".into(),
                    timer_id: index.to_string(),
                },
                definition: TimerDefinition {
                    queue: "default".into(),
                    fire_at_ms: Some(1),
                    delay_ms: None,
                    payload: vec![1; payload_bytes],
                },
                received_at_ms: 0,
            }),
        }
    }

    fn append(entries: Vec<Entry<TypeConfig>>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries,
        }
    }

    /// A network to a peer that is not configured: whatever is sent fails as unreachable,
    /// after the size check.
    fn network() -> GroupNetwork {
        GroupNetwork {
            partition: 0,
            target: 2,
            peers: Arc::new(Peers::new(&[], None)),
            metrics: Arc::new(Metrics::new(1)),
        }
    }

    #[tokio::test]
    async fn an_append_over_the_byte_bound_is_refused_with_a_hint_before_it_is_sent() {
        let option = RPCOption::new(Duration::from_secs(1));
        let mib = 1024 * 1024;
        let big = append((1..=4).map(|i| entry(i, 3 * mib)).collect());
        match network().append_entries(big, option.clone()).await {
            Err(RPCError::PayloadTooLarge(e)) => assert_eq!(e.entries_hint(), 2),
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        // A lone entry over the bound goes anyway, and so does a batch within it.
        for request in [
            append(vec![entry(1, 9 * mib)]),
            append((1..=4).map(|i| entry(i, mib)).collect()),
        ] {
            match network().append_entries(request, option.clone()).await {
                Err(RPCError::Unreachable(_)) => {}
                other => panic!("expected an attempt to send, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_unreachable_peer_is_retried_soon_then_every_half_second_or_so() {
        let waits: Vec<Duration> = unreachable_backoff().take(100).collect();
        assert_eq!(waits.len(), 100, "never gives up");
        assert!(waits[0] <= Duration::from_millis(20), "{waits:?}");
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(1)),
            "{waits:?}"
        );
        assert!(waits[99] >= Duration::from_millis(500), "{waits:?}");
    }
}
