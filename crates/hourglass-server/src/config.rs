//! Node configuration: one serde struct, filled from a TOML file, then `HOURGLASS_*` variables
//! and flags (the binary layers those), then validated before anything starts.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use hourglass_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A cluster member: `ID=HOST:PORT`, the address its gRPC port is reached at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Peer {
    pub id: NodeId,
    pub address: String,
}

impl FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (id, address) = s
            .split_once('=')
            .ok_or_else(|| format!("peer {s:?} is not of the form ID=HOST:PORT"))?;
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {s:?}: node id {id:?} is not a positive integer"))?;
        let address = address.trim().to_owned();
        if address.is_empty() || !address.contains(':') {
            return Err(format!("peer {s:?}: address {address:?} is not HOST:PORT"));
        }
        Ok(Peer { id, address })
    }
}

impl TryFrom<String> for Peer {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Peer> for String {
    fn from(p: Peer) -> String {
        p.to_string()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.id, self.address)
    }
}

/// Test-only fault injection read by the chaos harness's `--inject-fault lose-fires`: the
/// fraction of fired timers to lose. Never set it in production.
pub const LOSE_FIRES_ENV: &str = "HOURGLASS_FAULT_LOSE_FIRES";

/// Test-only fault injection read by the chaos harness's `--inject-fault early-fire`: leaders
/// fire timers this many milliseconds before they are due. Never set it in production.
pub const EARLY_FIRE_ENV: &str = "HOURGLASS_FAULT_EARLY_FIRE_MS";

/// Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging followers need no snapshot.
    pub logs_kept_after_snapshot: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// The per-partition timer engine of a leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersConfig {
    /// Timers due within this window are held in memory; later ones only on disk.
    pub window_ms: u64,
    /// Most timers one partition holds in memory; the window shrinks to respect it.
    pub max_in_memory_per_partition: usize,
    /// Most timers per `Fire` or `Complete` proposal.
    pub batch: usize,
    /// A delivery not acknowledged within this is delivered again.
    pub ack_timeout_ms: u64,
    /// How long completed and cancelled timers keep their name (G6).
    pub tombstone_retention_ms: u64,
}

impl Default for TimersConfig {
    fn default() -> Self {
        TimersConfig {
            window_ms: 60_000,
            max_in_memory_per_partition: 50_000,
            batch: 1_000,
            ack_timeout_ms: 30_000,
            tombstone_retention_ms: 24 * 3600 * 1000,
        }
    }
}

/// Everything one node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id, a positive integer unique in the cluster.
    pub node_id: NodeId,
    /// Where the gRPC port (public services and Raft transport) listens.
    pub listen: SocketAddr,
    /// The address peers and clients use to reach this node; defaults to `listen`.
    pub advertise: Option<String>,
    /// Where `/healthz` and `/readyz` are served; none when unset.
    pub http_listen: Option<SocketAddr>,
    /// RocksDB and snapshots live here.
    pub data_dir: PathBuf,
    /// Every node of the cluster, this one included.
    pub peers: Vec<Peer>,
    /// Partition count, fixed when the cluster is created.
    pub partitions: u32,
    pub replication_factor: usize,
    /// Largest accepted timer payload.
    pub max_payload_bytes: usize,
    /// How long a request may wait for its partition to commit before DEADLINE_EXCEEDED.
    pub request_timeout_ms: u64,
    /// Clock offsets between nodes beyond this are warned about, exported and, when this
    /// node's clock disagrees with a majority, reported by /readyz. Timers are decided on
    /// cluster time whatever the offsets.
    pub max_clock_offset_ms: u64,
    pub raft: RaftConfig,
    pub timers: TimersConfig,
    /// One-time recovery of a node whose data was lost (`--rejoin`), never stored in a file.
    #[serde(skip)]
    pub rejoin: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: 0,
            listen: "127.0.0.1:7001".parse().expect("valid literal"),
            advertise: None,
            http_listen: None,
            data_dir: PathBuf::from("data"),
            peers: Vec::new(),
            partitions: 16,
            replication_factor: 3,
            max_payload_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            max_clock_offset_ms: 500,
            raft: RaftConfig::default(),
            timers: TimersConfig::default(),
            rejoin: false,
        }
    }
}

impl NodeConfig {
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serializes")
    }

    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.timers.ack_timeout_ms)
    }

    pub(crate) fn engine_config(&self) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            window: Duration::from_millis(self.timers.window_ms),
            max_timers_in_memory: self.timers.max_in_memory_per_partition,
            batch: self.timers.batch,
            max_sleep: Duration::from_millis(500),
            tombstone_retention: Duration::from_millis(self.timers.tombstone_retention_ms),
            lose_fired_fraction: std::env::var(LOSE_FIRES_ENV)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .map(|f| f.clamp(0.0, 1.0))
                .unwrap_or(0.0),
            early_fire_ms: std::env::var(EARLY_FIRE_ENV)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0),
        }
    }

    /// Every node id of the cluster.
    pub fn node_ids(&self) -> BTreeSet<NodeId> {
        self.peers.iter().map(|p| p.id).collect()
    }

    /// Fills in this node as a peer when the list leaves it out, then checks every rule.
    pub fn validate(mut self) -> Result<Self> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.node_id == 0 {
            return bad(
                "node_id must be set to a positive integer (--node-id or HOURGLASS_NODE_ID)".into(),
            );
        }
        if !self.peers.iter().any(|p| p.id == self.node_id) {
            self.peers.push(Peer {
                id: self.node_id,
                address: self.advertise_address(),
            });
        }
        self.peers.sort();
        let ids = self.node_ids();
        if ids.len() != self.peers.len() {
            return bad("peers lists a node id more than once".into());
        }
        if self.partitions == 0 || self.partitions > 4096 {
            return bad(format!(
                "partitions must be in 1..=4096, got {}",
                self.partitions
            ));
        }
        if self.replication_factor == 0 {
            return bad("replication_factor must be at least 1".into());
        }
        if self.replication_factor > ids.len() {
            return bad(format!(
                "replication_factor {} needs at least that many peers, {} configured",
                self.replication_factor,
                ids.len()
            ));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 1024 * 1024 {
            return bad(format!(
                "max_payload_bytes must be in 1..=1048576, got {}",
                self.max_payload_bytes
            ));
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms * 2
        {
            return bad(
                "raft.election_timeout_min_ms must exceed twice raft.heartbeat_interval_ms".into(),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad(
                "raft.election_timeout_max_ms must exceed raft.election_timeout_min_ms".into(),
            );
        }
        if r.snapshot_after_logs == 0 {
            return bad("raft.snapshot_after_logs must be positive".into());
        }
        let t = &self.timers;
        if t.window_ms < 1_000 {
            return bad("timers.window_ms must be at least 1000".into());
        }
        if t.max_in_memory_per_partition < 100 {
            return bad("timers.max_in_memory_per_partition must be at least 100".into());
        }
        if t.batch == 0 || t.batch > 10_000 {
            return bad("timers.batch must be in 1..=10000".into());
        }
        if t.ack_timeout_ms < 100 {
            return bad("timers.ack_timeout_ms must be at least 100".into());
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms must be positive".into());
        }
        if self.max_clock_offset_ms == 0 || self.max_clock_offset_ms > 3_600_000 {
            return bad(format!(
                "max_clock_offset_ms must be in 1..=3600000, got {}",
                self.max_clock_offset_ms
            ));
        }
        Ok(self)
    }

    pub(crate) fn openraft_config(&self) -> Result<openraft::Config> {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "hourglass".into(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_after_logs),
            max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Config(format!("raft: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults_and_unknown_keys() {
        let c = NodeConfig::from_toml(
            r#"
            node_id = 2
            listen = "127.0.0.1:7002"
            peers = ["1=127.0.0.1:7001", "2=127.0.0.1:7002", "3=127.0.0.1:7003"]
            [raft]
            heartbeat_interval_ms = 100
            "#,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.partitions, 16);
        assert_eq!(c.raft.election_timeout_min_ms, 1_000);
        assert_eq!(c.node_ids().len(), 3);
        let err = NodeConfig::from_toml("node_id = 1\nlisten_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        // The printed config reads back identically.
        assert_eq!(NodeConfig::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn validation_names_the_problem() {
        let base = NodeConfig {
            node_id: 1,
            ..Default::default()
        };
        assert!(NodeConfig {
            node_id: 0,
            ..base.clone()
        }
        .validate()
        .unwrap_err()
        .to_string()
        .contains("node_id"));
        // A lone node cannot hold three replicas.
        assert!(base
            .clone()
            .validate()
            .unwrap_err()
            .to_string()
            .contains("replication_factor"));
        let single = NodeConfig {
            replication_factor: 1,
            ..base.clone()
        }
        .validate()
        .unwrap();
        assert_eq!(single.peers.len(), 1);
        assert!("x".parse::<Peer>().is_err());
        assert!("1=".parse::<Peer>().is_err());
        assert_eq!("7=10.0.0.1:7001".parse::<Peer>().unwrap().id, 7);
    }
}
