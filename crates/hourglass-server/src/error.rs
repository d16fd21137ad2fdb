use hourglass_types::NodeId;

/// Errors of a node. Every gRPC status a client sees comes from this type, mapped in
/// [`crate::status`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidArgument(#[from] hourglass_types::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// No leader or no quorum yet; retryable. `leader` is a hint when known.
    #[error("partition {partition} unavailable: {reason}")]
    Unavailable {
        partition: u32,
        reason: String,
        leader: Option<(NodeId, String)>,
    },
    /// Cluster time cannot be computed yet (too few peers' clocks known); retryable.
    #[error("cluster clock unknown: {0}")]
    ClockUnknown(String),
    #[error("partition {partition}: no commit within {timeout_ms} ms; the outcome is unknown, retrying is safe")]
    DeadlineExceeded { partition: u32, timeout_ms: u64 },
    #[error("storage: {0}")]
    Storage(#[from] hourglass_storage::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the data directory {dir} is empty, but peer node {peer} already holds Raft state of this cluster; \
         this node was wiped or replaced. Refusing to start: a node that forgot its votes could break \
         Raft's safety. If its disk was lost, start it once with --rejoin (every other replica of \
         its partitions must be up); see docs/operations.md"
    )]
    WipedNode {
        dir: std::path::PathBuf,
        peer: NodeId,
    },
    #[error("cannot rejoin: {0}")]
    Rejoin(String),
    #[error("peer {peer} reports {theirs} partitions, this node is configured with {ours}")]
    PeerPartitionMismatch {
        peer: NodeId,
        theirs: u32,
        ours: u32,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("transport: {0}")]
    Transport(String),
    /// The node has not finished starting (it waits for its peers); retryable.
    #[error("node is still starting: waiting for its peers")]
    Starting,
    /// A request forwarded to `node` failed there or on the way.
    #[error("forwarded to node {node}: {}", .status.message())]
    Forwarded {
        node: NodeId,
        status: Box<tonic::Status>,
    },
    /// A worker stream sent nothing for this long after it was sent a delivery: closed, and
    /// its deliveries went to other workers. Resubscribing is safe.
    #[error("worker stream closed: no message for {idle_ms} ms after a delivery (timers.idle_stream_timeout); its deliveries go to other workers")]
    WorkerIdle { idle_ms: u64 },
    /// A client's request stream failed.
    #[error("request stream: {}", .0.message())]
    Stream(Box<tonic::Status>),
    /// The caller presented no credentials the port accepts.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known, but not allowed this call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A broken invariant of this node: a bug.
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The same failure once more, for each of the proposals one Raft entry (or one forwarded
    /// call) carried. A commit fails only as [`Error::Unavailable`] or
    /// [`Error::DeadlineExceeded`], both plain data, and a forwarded call as
    /// [`Error::Forwarded`]; anything else keeps its message.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Unavailable {
                partition,
                reason,
                leader,
            } => Error::Unavailable {
                partition: *partition,
                reason: reason.clone(),
                leader: leader.clone(),
            },
            Error::DeadlineExceeded {
                partition,
                timeout_ms,
            } => Error::DeadlineExceeded {
                partition: *partition,
                timeout_ms: *timeout_ms,
            },
            Error::Forwarded { node, status } => Error::Forwarded {
                node: *node,
                status: status.clone(),
            },
            other => Error::Internal(other.to_string()),
        }
    }
}
