//! Node configuration: one serde struct, layered by figment (lowest first: the defaults, a TOML
//! file, `HOURGLASS_*` environment variables, command-line flags), then validated before
//! anything starts. docs/operations.md lists every key; `hourglass serve --print-config` prints
//! them all with their effective values.
//!
//! Durations are written the human way (`"60s"`, `"1m 30s"`, `"500ms"`: humantime's syntax).
//! The keys that used to take milliseconds (`timers.window_ms`, `request_timeout_ms`, …) are
//! still read, as numbers of milliseconds; one source giving both spellings of a setting is an
//! error. The Rust fields keep their `_ms` names and hold milliseconds; serde renames them to
//! the human keys.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::error::Kind;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use hourglass_storage::StoreOptions;
use hourglass_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Variables named `HOURGLASS_<KEY>` set top-level keys, `HOURGLASS_<SECTION>__<KEY>` the keys
/// of a section (`HOURGLASS_TIMERS__WINDOW=30s`).
pub const ENV_PREFIX: &str = "HOURGLASS_";

/// `HOURGLASS_*` variables of the project that are not configuration keys: read by the CLI, the
/// scripts under deploy/, the tests and the Python SDK's build. `serve` ignores them; any other
/// `HOURGLASS_*` variable that names no key is an error.
pub const NON_CONFIG_ENV: &[&str] = &[
    "HOURGLASS_CONFIG",
    "HOURGLASS_REJOIN",
    "HOURGLASS_ENDPOINTS",
    // The client commands' TLS files (--ca, --cert, --key).
    "HOURGLASS_CA",
    "HOURGLASS_CERT",
    "HOURGLASS_KEY",
    // The client commands' bearer token (--token, --token-file).
    "HOURGLASS_TOKEN",
    "HOURGLASS_TOKEN_FILE",
    "HOURGLASS_BIN",
    "HOURGLASS_CLUSTER_DIR",
    // tests/fuzz.rs: its time budget and seed.
    "HOURGLASS_FUZZ_SECS",
    "HOURGLASS_FUZZ_SEED",
    "HOURGLASS_BASE_PORT",
    "HOURGLASS_HTTP_BASE_PORT",
    "HOURGLASS_DEPS_ROOT",
    "HOURGLASS_PROTO_DIR",
    "HOURGLASS_TEST_KEEP",
    // Set by `hourglass worker --exec` for its command.
    "HOURGLASS_WORKFLOW_ID",
    "HOURGLASS_TIMER_ID",
    "HOURGLASS_QUEUE",
    "HOURGLASS_ATTEMPT",
    "HOURGLASS_FIRE_AT",
];

/// The duration keys also accepted as `<key>_ms`, a number of milliseconds: (section, key).
pub const MILLISECOND_KEYS: &[(&str, &str)] = &[
    ("", "request_timeout"),
    ("", "max_clock_offset"),
    ("raft", "heartbeat_interval"),
    ("raft", "election_timeout_min"),
    ("raft", "election_timeout_max"),
    ("timers", "window"),
    ("timers", "fire_ahead"),
    ("timers", "ack_timeout"),
    ("timers", "tombstone_retention"),
    ("fault", "early_fire"),
];

/// A cluster member: `ID=CLIENT_HOST:PORT/PEER_HOST:PORT`. Clients, and nodes forwarding
/// their calls, reach it at its client address; the Raft transport of the other nodes at its
/// peer address, a port of its own so that it can be firewalled and authenticated apart from
/// the public API.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Peer {
    pub id: NodeId,
    /// Where its client port (`advertise`) is reached.
    pub address: String,
    /// Where its peer port (`peer_advertise`) is reached.
    pub peer_address: String,
}

impl FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let form = "ID=CLIENT_HOST:PORT/PEER_HOST:PORT, e.g. 1=10.0.0.1:7001/10.0.0.1:8001";
        let (id, addresses) = s
            .split_once('=')
            .ok_or_else(|| format!("peer {s:?} is not of the form {form}"))?;
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("peer {s:?}: node id {id:?} is not a positive integer"))?;
        let (address, peer_address) = addresses.split_once('/').ok_or_else(|| {
            format!("peer {s:?} names no peer (Raft transport) address: write {form}")
        })?;
        let check = |what: &str, address: &str| {
            let address = address.trim();
            if address.is_empty() || !address.contains(':') {
                return Err(format!(
                    "peer {s:?}: {what} address {address:?} is not HOST:PORT"
                ));
            }
            Ok(address.to_owned())
        };
        Ok(Peer {
            id,
            address: check("client", address)?,
            peer_address: check("peer", peer_address)?,
        })
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
        write!(f, "{}={}/{}", self.id, self.address, self.peer_address)
    }
}

/// Certificates of the node (PEM files): with them, the peer port requires a certificate of
/// the cluster CA naming a member node, and the client port is served over TLS. Without
/// them everything is plaintext, for development only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Key `tls.ca`: the cluster CA's certificate, which every node and client certificate
    /// must be signed by.
    #[serde(
        serialize_with = "optional::serialize_path",
        deserialize_with = "optional::deserialize"
    )]
    pub ca: Option<PathBuf>,
    /// Key `tls.cert`: this node's certificate (`hourglass cert node ID`).
    #[serde(
        serialize_with = "optional::serialize_path",
        deserialize_with = "optional::deserialize"
    )]
    pub cert: Option<PathBuf>,
    /// Key `tls.key`: the private key of `tls.cert`.
    #[serde(
        serialize_with = "optional::serialize_path",
        deserialize_with = "optional::deserialize"
    )]
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is on (validation makes sure all three files are given, or none).
    pub fn is_enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Authentication on the client port (docs/operations.md, "Security"): only with TLS, which
/// carries the credentials (client certificates, bearer tokens) safely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// With TLS, a call to Timers, Workers or Admin without credentials is refused
    /// (UNAUTHENTICATED). `false` admits it with every right while clients move to
    /// credentials; credentials that are sent are checked all the same.
    pub required: bool,
    /// Key `auth.tokens_file`: the bearer tokens accepted (TOML, one `[[token]]` per token, as
    /// `hourglass token new` prints them), reread when it changes. Needs TLS.
    #[serde(
        serialize_with = "optional::serialize_path",
        deserialize_with = "optional::deserialize"
    )]
    pub tokens_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            required: true,
            tokens_file: None,
        }
    }
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Key `raft.heartbeat_interval`.
    #[serde(rename = "heartbeat_interval", with = "millis")]
    pub heartbeat_interval_ms: u64,
    /// Key `raft.election_timeout_min`.
    #[serde(rename = "election_timeout_min", with = "millis")]
    pub election_timeout_min_ms: u64,
    /// Key `raft.election_timeout_max`.
    #[serde(rename = "election_timeout_max", with = "millis")]
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log) after this many applied entries.
    pub snapshot_after_logs: u64,
    /// Or once the log has grown by this many bytes since the last snapshot (or by half that
    /// snapshot's size, when more), whichever comes first.
    pub snapshot_after_log_bytes: u64,
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
            snapshot_after_log_bytes: 4 << 20,
            logs_kept_after_snapshot: 1_000,
        }
    }
}

/// The per-partition timer engine of a leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersConfig {
    /// Key `timers.window`: timers due within this window are held in memory; later ones only
    /// on disk.
    #[serde(rename = "window", with = "millis")]
    pub window_ms: u64,
    /// Most timers one partition holds in memory; the window shrinks to respect it.
    pub max_in_memory_per_partition: usize,
    /// Most timers per `Fire` or `Complete` proposal.
    pub batch: usize,
    /// Key `timers.fire_ahead`: timers are proposed to fire this long before their due
    /// instant, so that the Raft round trip is over by then, and handed to a worker at that
    /// instant by cluster time (never earlier, G2). A cancel that commits in between answers
    /// ALREADY_FIRED. Zero fires at the due instant, after which the commit adds its latency.
    #[serde(rename = "fire_ahead", with = "millis")]
    pub fire_ahead_ms: u64,
    /// Most fired timers of one queue a partition's leader holds in memory for delivery
    /// (pending or awaiting an ack); the rest wait on disk, in fire order. Only queues with a
    /// worker connected to the leader have such a window.
    pub delivery_window: usize,
    /// The same bound in payload bytes.
    pub delivery_window_bytes: usize,
    /// Key `timers.ack_timeout`: a delivery not acknowledged within this is delivered again.
    #[serde(rename = "ack_timeout", with = "millis")]
    pub ack_timeout_ms: u64,
    /// Key `timers.tombstone_retention`: how long completed and cancelled timers keep their
    /// name (G6).
    #[serde(rename = "tombstone_retention", with = "millis")]
    pub tombstone_retention_ms: u64,
    /// Key `timers.idle_stream_timeout`: a worker stream that sends no message for this long
    /// after it was sent a delivery is closed, and its deliveries go to other workers. At least
    /// `ack_timeout`, so that it never takes a delivery back before its ack timeout would;
    /// unset, the larger of one minute and `ack_timeout` (so raising only the ack timeout for
    /// long handlers just works). Read it through [`TimersConfig::idle_stream_timeout_ms`].
    #[serde(with = "optional")]
    pub idle_stream_timeout: Option<humantime::Duration>,
}

impl Default for TimersConfig {
    fn default() -> Self {
        TimersConfig {
            window_ms: 60_000,
            max_in_memory_per_partition: 50_000,
            batch: 1_000,
            fire_ahead_ms: 100,
            delivery_window: 1_000,
            delivery_window_bytes: 8 << 20,
            ack_timeout_ms: 30_000,
            tombstone_retention_ms: 24 * 3600 * 1000,
            idle_stream_timeout: None,
        }
    }
}

impl TimersConfig {
    /// The effective `timers.idle_stream_timeout`, in milliseconds.
    pub fn idle_stream_timeout_ms(&self) -> u64 {
        match self.idle_stream_timeout {
            Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            None => self.ack_timeout_ms.max(60_000),
        }
    }
}

/// Liveness of the gRPC port's connections (workers, clients and peers alike): a peer that
/// stops answering (a SIGSTOPped worker, a dead host, a dropped NAT entry) loses its
/// connection, and a worker's deliveries go back to its queue, instead of waiting forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Key `grpc.http2_keepalive_interval`: an HTTP/2 PING goes to each connection this often.
    #[serde(rename = "http2_keepalive_interval", with = "millis")]
    pub http2_keepalive_interval_ms: u64,
    /// Key `grpc.http2_keepalive_timeout`: a connection whose PING is not answered within this
    /// is closed.
    #[serde(rename = "http2_keepalive_timeout", with = "millis")]
    pub http2_keepalive_timeout_ms: u64,
    /// Key `grpc.tcp_keepalive`: idle time before the kernel probes a connection (SO_KEEPALIVE),
    /// which also finds hosts that vanished without closing their sockets.
    #[serde(rename = "tcp_keepalive", with = "millis")]
    pub tcp_keepalive_ms: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            http2_keepalive_interval_ms: 10_000,
            http2_keepalive_timeout_ms: 20_000,
            tcp_keepalive_ms: 60_000,
        }
    }
}

/// Fault injection, for tests only (the chaos harness's `--inject-fault`): it breaks the
/// service's guarantees on purpose. Never set it in production; a node with any of it set
/// logs a warning at start.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// The fraction (0 to 1) of fired timers a leader loses: acknowledged, never delivered.
    pub lose_fired_fraction: f64,
    /// Key `fault.early_fire`: leaders fire timers this long before they are due.
    #[serde(rename = "early_fire", with = "millis")]
    pub early_fire_ms: u64,
}

impl FaultConfig {
    /// Whether any fault is injected.
    pub fn is_active(&self) -> bool {
        self.lose_fired_fraction > 0.0 || self.early_fire_ms > 0
    }
}

/// Everything one node needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's id, a positive integer unique in the cluster.
    pub node_id: NodeId,
    /// Where the client port (the public services, health and reflection) listens.
    pub listen: SocketAddr,
    /// The address clients and other nodes' forwarded calls reach the client port at;
    /// defaults to `listen`.
    #[serde(with = "optional")]
    pub advertise: Option<String>,
    /// Where the peer port (the Raft transport between nodes, nothing else) listens.
    pub peer_listen: SocketAddr,
    /// The address other nodes reach the peer port at; defaults to `peer_listen`.
    #[serde(with = "optional")]
    pub peer_advertise: Option<String>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; none when unset.
    #[serde(with = "optional")]
    pub http_listen: Option<SocketAddr>,
    /// RocksDB and snapshots live here.
    pub data_dir: PathBuf,
    /// Every node of the cluster, this one included.
    #[serde(deserialize_with = "peer_list")]
    pub peers: Vec<Peer>,
    /// Partition count, fixed when the cluster is created.
    pub partitions: u32,
    pub replication_factor: usize,
    /// Largest accepted timer payload.
    pub max_payload_bytes: usize,
    /// Key `request_timeout`: how long a request may wait for its partition to commit before
    /// DEADLINE_EXCEEDED.
    #[serde(rename = "request_timeout", with = "millis")]
    pub request_timeout_ms: u64,
    /// Key `max_clock_offset`: clock offsets between nodes beyond this are warned about,
    /// exported and, when this node's clock disagrees with a majority, reported by /readyz.
    /// Timers are decided on cluster time whatever the offsets.
    #[serde(rename = "max_clock_offset", with = "millis")]
    pub max_clock_offset_ms: u64,
    pub raft: RaftConfig,
    pub timers: TimersConfig,
    /// RocksDB's budgets (keys `storage.*`).
    pub storage: StoreOptions,
    pub grpc: GrpcConfig,
    pub fault: FaultConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
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
            peer_listen: "127.0.0.1:8001".parse().expect("valid literal"),
            peer_advertise: None,
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
            storage: StoreOptions::default(),
            grpc: GrpcConfig::default(),
            fault: FaultConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            rejoin: false,
        }
    }
}

impl NodeConfig {
    /// The configuration's sources, each overriding the one before: the defaults, `file`,
    /// `HOURGLASS_*` variables, `flags`.
    pub fn figment(file: Option<&Path>, flags: &Overrides) -> Figment {
        let mut figment = Figment::new();
        if let Some(path) = file {
            figment = figment.merge(Layer {
                source: Source::File,
                inner: Toml::file_exact(path),
            });
        }
        let not_keys: Vec<&str> = NON_CONFIG_ENV
            .iter()
            .map(|var| &var[ENV_PREFIX.len()..])
            .collect();
        figment
            .merge(Layer {
                source: Source::Env,
                inner: Env::prefixed(ENV_PREFIX).ignore(&not_keys).split("__"),
            })
            .merge(Layer {
                source: Source::Flags,
                inner: flags.clone(),
            })
    }

    /// Reads the configuration from the file (if any), the environment and `flags`; not yet
    /// validated.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<NodeConfig> {
        if let Some(path) = file {
            std::fs::metadata(path)
                .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        }
        Self::figment(file, flags).extract().map_err(config_error)
    }

    /// The configuration a TOML text gives over the defaults (no environment, no flags).
    pub fn from_toml(text: &str) -> Result<Self> {
        Figment::from(Layer {
            source: Source::File,
            inner: Toml::string(text),
        })
        .extract()
        .map_err(config_error)
    }

    /// Every key with its value, durations in human form; unset optional keys print as `""`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the configuration always serializes")
    }

    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    pub fn peer_advertise_address(&self) -> String {
        self.peer_advertise
            .clone()
            .unwrap_or_else(|| self.peer_listen.to_string())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.timers.ack_timeout_ms)
    }

    /// Every node id of the cluster.
    pub fn node_ids(&self) -> BTreeSet<NodeId> {
        self.peers.iter().map(|p| p.id).collect()
    }

    /// Fills in this node as a peer when the list leaves it out, then checks every rule.
    pub fn validate(mut self) -> Result<Self> {
        let bad = |msg: String| Err(Error::Config(msg));
        let human = |ms: u64| humantime::format_duration(Duration::from_millis(ms)).to_string();
        if self.node_id == 0 {
            return bad(
                "node_id must be set to a positive integer (--node-id or HOURGLASS_NODE_ID)".into(),
            );
        }
        if !self.peers.iter().any(|p| p.id == self.node_id) {
            self.peers.push(Peer {
                id: self.node_id,
                address: self.advertise_address(),
                peer_address: self.peer_advertise_address(),
            });
        }
        if self.peer_listen == self.listen {
            return bad(format!(
                "peer_listen ({}) must differ from listen: the Raft transport has a port of its own",
                self.peer_listen
            ));
        }
        let tls = &self.tls;
        if tls.is_enabled() && (tls.ca.is_none() || tls.cert.is_none() || tls.key.is_none()) {
            return bad(
                "tls.ca, tls.cert and tls.key must be given together (or none of them, \
                 for plaintext)"
                    .into(),
            );
        }
        if self.auth.tokens_file.is_some() && !tls.is_enabled() {
            return bad(
                "auth.tokens_file needs TLS (tls.ca, tls.cert, tls.key): bearer tokens would \
                 travel in the clear"
                    .into(),
            );
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
            return bad(format!(
                "raft.election_timeout_min ({}) must exceed twice raft.heartbeat_interval ({})",
                human(r.election_timeout_min_ms),
                human(r.heartbeat_interval_ms)
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad(format!(
                "raft.election_timeout_max ({}) must exceed raft.election_timeout_min ({})",
                human(r.election_timeout_max_ms),
                human(r.election_timeout_min_ms)
            ));
        }
        if r.snapshot_after_logs == 0 {
            return bad("raft.snapshot_after_logs must be positive".into());
        }
        if r.snapshot_after_log_bytes < 64 << 10 {
            return bad(format!(
                "raft.snapshot_after_log_bytes must be at least 65536 (64 KiB), got {}",
                r.snapshot_after_log_bytes
            ));
        }
        let s = &self.storage;
        for (key, value) in [
            ("storage.write_ahead_log_bytes", s.write_ahead_log_bytes),
            ("storage.memtable_bytes", s.memtable_bytes as u64),
            (
                "storage.memtable_budget_bytes",
                s.memtable_budget_bytes as u64,
            ),
            ("storage.block_cache_bytes", s.block_cache_bytes as u64),
            ("storage.first_level_bytes", s.first_level_bytes),
        ] {
            if !(1 << 20..=64 << 30).contains(&value) {
                return bad(format!(
                    "{key} must be in 1048576..=68719476736 (1 MiB to 64 GiB), got {value}"
                ));
            }
        }
        if !(64 << 10..=1 << 30).contains(&s.info_log_file_bytes) {
            return bad(format!(
                "storage.info_log_file_bytes must be in 65536..=1073741824 (64 KiB to 1 GiB), got {}",
                s.info_log_file_bytes
            ));
        }
        if !(64 << 10..=1 << 30).contains(&s.table_file_bytes) {
            return bad(format!(
                "storage.table_file_bytes must be in 65536..=1073741824 (64 KiB to 1 GiB), got {}",
                s.table_file_bytes
            ));
        }
        if !(64 << 10..=1 << 30).contains(&s.manifest_file_bytes) {
            return bad(format!(
                "storage.manifest_file_bytes must be in 65536..=1073741824 (64 KiB to 1 GiB), got {}",
                s.manifest_file_bytes
            ));
        }
        if !(1..=1000).contains(&s.info_log_files) {
            return bad(format!(
                "storage.info_log_files must be in 1..=1000, got {}",
                s.info_log_files
            ));
        }
        if s.memtable_budget_bytes < s.memtable_bytes {
            return bad(format!(
                "storage.memtable_budget_bytes ({}) must be at least storage.memtable_bytes ({})",
                s.memtable_budget_bytes, s.memtable_bytes
            ));
        }
        let t = &self.timers;
        if t.window_ms < 1_000 {
            return bad(format!(
                "timers.window must be at least 1s, got {}",
                human(t.window_ms)
            ));
        }
        if t.fire_ahead_ms > 1_000 || t.fire_ahead_ms > t.window_ms / 2 {
            return bad(format!(
                "timers.fire_ahead must be at most 1s and at most half of timers.window ({}), got {}",
                human(t.window_ms),
                human(t.fire_ahead_ms)
            ));
        }
        if t.max_in_memory_per_partition < 100 {
            return bad("timers.max_in_memory_per_partition must be at least 100".into());
        }
        if t.batch == 0 || t.batch > 10_000 {
            return bad("timers.batch must be in 1..=10000".into());
        }
        if t.delivery_window == 0 || t.delivery_window > 1_000_000 {
            return bad(format!(
                "timers.delivery_window must be in 1..=1000000, got {}",
                t.delivery_window
            ));
        }
        if t.delivery_window_bytes < 1 << 20 || t.delivery_window_bytes > 1 << 30 {
            return bad(format!(
                "timers.delivery_window_bytes must be in 1048576..=1073741824 (1 MiB to 1 GiB), got {}",
                t.delivery_window_bytes
            ));
        }
        if t.ack_timeout_ms < 100 {
            return bad(format!(
                "timers.ack_timeout must be at least 100ms, got {}",
                human(t.ack_timeout_ms)
            ));
        }
        if t.idle_stream_timeout_ms() < t.ack_timeout_ms {
            return bad(format!(
                "timers.idle_stream_timeout ({}) must be at least timers.ack_timeout ({})",
                human(t.idle_stream_timeout_ms()),
                human(t.ack_timeout_ms)
            ));
        }
        let g = &self.grpc;
        for (key, ms) in [
            (
                "grpc.http2_keepalive_interval",
                g.http2_keepalive_interval_ms,
            ),
            ("grpc.http2_keepalive_timeout", g.http2_keepalive_timeout_ms),
        ] {
            if ms < 100 {
                return bad(format!("{key} must be at least 100ms, got {}", human(ms)));
            }
        }
        // The kernel takes the idle time in whole seconds, at most 32767 (Linux TCP_KEEPIDLE);
        // outside that every accepted connection would only log EINVAL.
        if !(1_000..=32_767_000).contains(&g.tcp_keepalive_ms) {
            return bad(format!(
                "grpc.tcp_keepalive must be in 1s..=32767s, got {}",
                human(g.tcp_keepalive_ms)
            ));
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout must be positive".into());
        }
        if self.max_clock_offset_ms == 0 || self.max_clock_offset_ms > 3_600_000 {
            return bad(format!(
                "max_clock_offset must be in 1ms..=1h, got {}",
                human(self.max_clock_offset_ms)
            ));
        }
        let f = &self.fault;
        if !(0.0..=1.0).contains(&f.lose_fired_fraction) {
            return bad(format!(
                "fault.lose_fired_fraction must be in 0..=1, got {}",
                f.lose_fired_fraction
            ));
        }
        if f.is_active() && !cfg!(feature = "fault-injection") {
            return bad(format!(
                "fault.* is set ({f:?}), but this binary was built without fault injection: \
                 only a test build (cargo build --features hourglass/fault-injection) can break \
                 the guarantees on purpose"
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

/// Every key, sections' keys dotted (`timers.window`), sorted.
pub fn keys() -> Vec<String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(t) => walk(&path, t, out),
                _ => out.push(path),
            }
        }
    }
    let table = toml::Table::try_from(NodeConfig::default()).expect("the defaults serialize");
    let mut out = Vec::new();
    walk("", &table, &mut out);
    out
}

/// The environment variable of a key: `timers.window` is `HOURGLASS_TIMERS__WINDOW`.
pub fn env_var(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// The configuration given on the command line (dedicated flags and `--set`): keys, sections'
/// keys dotted (`timers.window`), over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides(Dict);

impl Overrides {
    /// Sets `key` to `value`; a later value of the same key wins.
    pub fn set(&mut self, key: &str, value: impl Serialize) -> Result<()> {
        let value = Value::serialize(value).map_err(|e| Error::Config(format!("{key}: {e}")))?;
        insert(&mut self.0, key, value);
        Ok(())
    }

    /// `KEY=VALUE` as given to `--set`: the value is read like an environment variable's (a
    /// number, `true`/`false`, `[a, b]`, or else text).
    pub fn assign(&mut self, assignment: &str) -> Result<()> {
        let (key, value) = assignment.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "--set {assignment:?}: expected KEY=VALUE, e.g. timers.window=30s"
            ))
        })?;
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(Error::Config(format!(
                "--set {assignment:?}: {key:?} is not a key (sections' keys are SECTION.KEY)"
            )));
        }
        let value = value.trim().parse().expect("parsing a value cannot fail");
        insert(&mut self.0, &key, value);
        Ok(())
    }
}

impl Provider for Overrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("command-line flags")
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// Puts `value` at the dotted `key` of `dict`.
fn insert(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((section, rest)) => {
            let entry = dict
                .entry(section.to_owned())
                .or_insert_with(|| Dict::new().into());
            if !matches!(entry, Value::Dict(..)) {
                *entry = Dict::new().into();
            }
            if let Value::Dict(_, table) = entry {
                insert(table, rest, value);
            }
        }
    }
}

/// Where a layer of the configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    File,
    Env,
    Flags,
}

impl Source {
    /// How a key is spelled in this source, for messages.
    fn key_name(self, path: &[&str]) -> String {
        match self {
            Source::Env => env_var(&path.join(".")),
            Source::File | Source::Flags => path.join("."),
        }
    }
}

/// One layer of the configuration, with the former `_ms` keys rewritten to the keys that replaced them, and keys named in errors as this source spells
/// them.
struct Layer<P> {
    source: Source,
    inner: P,
}

impl<P: Provider> Provider for Layer<P> {
    fn metadata(&self) -> Metadata {
        let source = self.source;
        let mut metadata = self
            .inner
            .metadata()
            .interpolater(move |_: &Profile, path: &[&str]| source.key_name(path));
        if source == Source::Env {
            metadata.name = "the environment".into();
        }
        metadata
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut data = self.inner.data()?;
        for dict in data.values_mut() {
            read_millisecond_keys(dict, self.source)?;
        }
        Ok(data)
    }
}

/// The section `name` of `dict` (`dict` itself for ""), if it is there and a table.
fn section<'a>(dict: &'a mut Dict, name: &str) -> Option<&'a mut Dict> {
    if name.is_empty() {
        return Some(dict);
    }
    match dict.get_mut(name) {
        Some(Value::Dict(_, table)) => Some(table),
        _ => None,
    }
}

/// Rewrites each `<key>_ms = N` into `<key> = "Nms"`.
fn read_millisecond_keys(dict: &mut Dict, source: Source) -> figment::Result<()> {
    for &(name, key) in MILLISECOND_KEYS {
        let Some(table) = section(dict, name) else {
            continue;
        };
        let legacy = format!("{key}_ms");
        let Some(value) = table.remove(&legacy) else {
            continue;
        };
        let spell = |k: &str| match name {
            "" => source.key_name(&[k]),
            _ => source.key_name(&[name, k]),
        };
        if table.contains_key(key) {
            return Err(format!(
                "{} and {} are two spellings of one setting; give only {} (a duration such as \"30s\")",
                spell(key),
                spell(&legacy),
                spell(key)
            )
            .into());
        }
        let ms = match &value {
            Value::Num(_, n) => n.to_u128_lossy().filter(|&ms| ms <= u128::from(u64::MAX)),
            _ => None,
        };
        let Some(ms) = ms else {
            return Err(format!(
                "{} must be a whole number of milliseconds, found {}; or give {} as a duration such as \"30s\"",
                spell(&legacy),
                value.to_actual(),
                spell(key)
            )
            .into());
        };
        table.insert(key.to_owned(), format!("{ms}ms").into());
    }
    Ok(())
}

/// figment's error as ours, naming the unknown key itself rather than its section.
fn config_error(error: figment::Error) -> Error {
    let messages: Vec<String> = error
        .into_iter()
        .map(|mut e| {
            if let Kind::UnknownField(field, _) = &e.kind {
                if e.path.last() != Some(field) {
                    e.path.push(field.clone());
                }
            }
            e.to_string()
        })
        .collect();
    Error::Config(messages.join("; "))
}

/// A duration key held as milliseconds, written like `"1m 30s"` (humantime-serde).
mod millis {
    use std::time::Duration;

    use serde::de::Error as _;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(&Duration::from_millis(*ms), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let duration: Duration = humantime_serde::deserialize(d)?;
        let ms = u64::try_from(duration.as_millis())
            .map_err(|_| D::Error::custom("the duration is too long"))?;
        if Duration::from_millis(ms) != duration {
            return Err(D::Error::custom(format!(
                "{} is not a whole number of milliseconds",
                humantime::format_duration(duration)
            )));
        }
        Ok(ms)
    }
}

/// An optional key: `""` (what `--print-config` prints when it is unset) leaves it unset.
mod optional {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.collect_str(v),
            None => s.serialize_str(""),
        }
    }

    /// A path prints as text; one that is not UTF-8 could not be read back, so it is refused.
    pub fn serialize_path<S: Serializer>(
        value: &Option<std::path::PathBuf>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(p) => s.serialize_str(
                p.to_str()
                    .ok_or_else(|| S::Error::custom(format!("{} is not UTF-8", p.display())))?,
            ),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        match text.trim() {
            "" => Ok(None),
            t => t
                .parse()
                .map(Some)
                .map_err(|e| D::Error::custom(format!("{t:?}: {e}"))),
        }
    }
}

/// `peers`: a list of `"ID=CLIENT_HOST:PORT/PEER_HOST:PORT"`, or one string of them separated by commas (as in
/// `HOURGLASS_PEERS` and `--peers`).
fn peer_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Peer>, D::Error> {
    struct Peers;
    impl<'de> serde::de::Visitor<'de> for Peers {
        type Value = Vec<Peer>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(
                "a list of \"ID=CLIENT_HOST:PORT/PEER_HOST:PORT\", or one string of them \
                 separated by commas",
            )
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Vec<Peer>, E> {
            text.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| p.parse().map_err(E::custom))
                .collect()
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Peer>, A::Error> {
            let mut peers = Vec::new();
            while let Some(peer) = seq.next_element::<Peer>()? {
                peers.push(peer);
            }
            Ok(peers)
        }
    }
    d.deserialize_any(Peers)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use figment::Jail;

    use super::*;

    const NODE: &str = r#"
        node_id = 2
        listen = "127.0.0.1:7002"
        peer_listen = "127.0.0.1:8002"
        peers = ["1=127.0.0.1:7001/127.0.0.1:8001", "2=127.0.0.1:7002/127.0.0.1:8002",
                 "3=127.0.0.1:7003/127.0.0.1:8003"]
    "#;

    fn load(file: Option<&str>, flags: &Overrides) -> Result<NodeConfig> {
        NodeConfig::load(file.map(Path::new), flags)
    }

    fn flags(assignments: &[&str]) -> Overrides {
        let mut o = Overrides::default();
        for a in assignments {
            o.assign(a).unwrap();
        }
        o
    }

    fn err(r: Result<NodeConfig>) -> String {
        r.expect_err("an error").to_string()
    }

    #[test]
    fn toml_with_defaults_and_unknown_keys() {
        let c = NodeConfig::from_toml(&format!("{NODE}\n[raft]\nheartbeat_interval_ms = 100\n"))
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(c.partitions, 16);
        assert_eq!(c.raft.heartbeat_interval_ms, 100);
        assert_eq!(c.raft.election_timeout_min_ms, 1_000);
        assert_eq!(c.node_ids().len(), 3);
        let e = NodeConfig::from_toml("node_id = 1\nlisten_addr = \"x\"").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
        let e = NodeConfig::from_toml("[timers]\nwindwo = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("\"timers.windwo\""), "{e}");
        let e = NodeConfig::from_toml("[nope]\nx = 1").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        // The printed config reads back identically.
        assert_eq!(NodeConfig::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn file_then_environment_then_flags() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "node.toml",
                &format!(
                    "{NODE}\npartitions = 8\nrequest_timeout_ms = 7000\n\
                     [timers]\nwindow_ms = 45000\nbatch = 200\n\
                     [raft]\nheartbeat_interval = \"100ms\"\n"
                ),
            )?;
            let file = Some("node.toml");
            let c = load(file, &Overrides::default()).unwrap();
            assert_eq!(
                (
                    c.partitions,
                    c.timers.window_ms,
                    c.timers.batch,
                    c.request_timeout_ms
                ),
                (8, 45_000, 200, 7_000)
            );
            assert_eq!(c.raft.heartbeat_interval_ms, 100);
            assert_eq!(c.raft.snapshot_after_logs, 10_000, "a default");

            jail.set_env("HOURGLASS_PARTITIONS", 4);
            jail.set_env("HOURGLASS_TIMERS__WINDOW", "30s");
            jail.set_env("HOURGLASS_RAFT__ELECTION_TIMEOUT_MIN", "900ms");
            jail.set_env(
                "HOURGLASS_PEERS",
                "1=10.0.0.1:7001/10.0.0.1:8001, 2=10.0.0.2:7001/10.0.0.2:8001",
            );
            // Variables that are not keys but belong to the project are left alone.
            jail.set_env("HOURGLASS_BIN", "/bin/true");
            jail.set_env("HOURGLASS_ENDPOINTS", "127.0.0.1:7001");
            let c = load(file, &Overrides::default()).unwrap();
            assert_eq!(c.partitions, 4);
            assert_eq!(
                c.timers.window_ms, 30_000,
                "the variable beats the file's _ms key"
            );
            assert_eq!(c.timers.batch, 200);
            assert_eq!(c.raft.election_timeout_min_ms, 900);
            assert_eq!(c.raft.heartbeat_interval_ms, 100);
            assert_eq!(c.peers[1].address, "10.0.0.2:7001");
            assert_eq!(c.peers[1].peer_address, "10.0.0.2:8001");

            let mut f = flags(&["timers.batch=300", "timers.window=20s"]);
            f.set("partitions", 2).unwrap();
            let c = load(file, &f).unwrap();
            assert_eq!(
                (c.partitions, c.timers.window_ms, c.timers.batch),
                (2, 20_000, 300)
            );
            assert_eq!(c.raft.election_timeout_min_ms, 900);
            // A later --set wins over an earlier one.
            let c = load(file, &flags(&["partitions=3", "partitions=5"])).unwrap();
            assert_eq!(c.partitions, 5);
            Ok(())
        });
    }

    #[test]
    fn human_durations_and_millisecond_keys() {
        let c = NodeConfig::from_toml(
            r#"
            request_timeout = "2s 500ms"
            max_clock_offset_ms = 250
            [raft]
            election_timeout_max = "3s"
            [timers]
            window = "1m 30s"
            ack_timeout_ms = 4000
            tombstone_retention = "2days"
            "#,
        )
        .unwrap();
        assert_eq!(c.request_timeout_ms, 2_500);
        assert_eq!(c.max_clock_offset_ms, 250);
        assert_eq!(c.raft.election_timeout_max_ms, 3_000);
        assert_eq!(c.timers.window_ms, 90_000);
        assert_eq!(c.timers.ack_timeout_ms, 4_000);
        assert_eq!(c.timers.tombstone_retention_ms, 2 * 86_400_000);
        let text = c.to_toml();
        for line in [
            "request_timeout = \"2s 500ms\"",
            "max_clock_offset = \"250ms\"",
            "window = \"1m 30s\"",
            "tombstone_retention = \"2days\"",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains("_ms"), "{text}");

        // A bare number is not a duration: its unit would be a guess.
        let e = err(NodeConfig::from_toml("[timers]\nwindow = 30000"));
        assert!(e.contains("timers.window"), "{e}");
        let e = err(NodeConfig::from_toml("request_timeout = \"soon\""));
        assert!(e.contains("request_timeout"), "{e}");
        let e = err(NodeConfig::from_toml("request_timeout = \"1500us\""));
        assert!(e.contains("whole number of milliseconds"), "{e}");
        let e = err(NodeConfig::from_toml("[timers]\nwindow_ms = \"30s\""));
        assert!(
            e.contains("timers.window_ms must be a whole number of milliseconds"),
            "{e}"
        );
        let e = err(NodeConfig::from_toml("[timers]\nwindow_ms = -5"));
        assert!(e.contains("timers.window_ms"), "{e}");
    }

    #[test]
    fn both_spellings_of_one_setting_are_refused() {
        let e = err(NodeConfig::from_toml(
            "[timers]\nwindow = \"30s\"\nwindow_ms = 30000",
        ));
        assert!(
            e.contains("timers.window and timers.window_ms"),
            "names both: {e}"
        );
        let e = err(NodeConfig::from_toml(
            "max_clock_offset = \"1s\"\nmax_clock_offset_ms = 1000",
        ));
        assert!(
            e.contains("max_clock_offset and max_clock_offset_ms"),
            "{e}"
        );
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("HOURGLASS_NODE_ID", 1);
            jail.set_env("HOURGLASS_REQUEST_TIMEOUT", "1s");
            jail.set_env("HOURGLASS_REQUEST_TIMEOUT_MS", 1000);
            let e = err(load(None, &Overrides::default()));
            assert!(
                e.contains("HOURGLASS_REQUEST_TIMEOUT and HOURGLASS_REQUEST_TIMEOUT_MS"),
                "{e}"
            );
            std::env::remove_var("HOURGLASS_REQUEST_TIMEOUT");
            assert_eq!(
                load(None, &Overrides::default())
                    .unwrap()
                    .request_timeout_ms,
                1_000
            );
            let mut f = flags(&["max_clock_offset=5ms"]);
            f.set("max_clock_offset_ms", 5).unwrap();
            let e = err(load(None, &f));
            assert!(
                e.contains("max_clock_offset and max_clock_offset_ms")
                    && e.contains("command-line flags"),
                "{e}"
            );
            // In different sources the usual order decides.
            jail.create_file("node.toml", "[timers]\nwindow_ms = 30000\n")?;
            jail.set_env("HOURGLASS_TIMERS__WINDOW", "10s");
            let c = load(Some("node.toml"), &flags(&["timers.window_ms=12000"])).unwrap();
            assert_eq!(c.timers.window_ms, 12_000);
            let c = load(Some("node.toml"), &Overrides::default()).unwrap();
            assert_eq!(c.timers.window_ms, 10_000);
            Ok(())
        });
    }

    #[test]
    fn unknown_variables_and_flags_are_refused_by_name() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            // Spelled with format! so that the repository scan below does not find them.
            for (var, named) in [
                ("TIMERS__WINDWO", "TIMERS__WINDWO"),
                ("LISTEN_ADDR", "LISTEN_ADDR"),
                // One underscore where two belong: a top-level key that does not exist.
                ("TIMERS_WINDOW", "TIMERS_WINDOW"),
                ("NOPE__X", "NOPE"),
            ] {
                let (var, named) = (format!("{ENV_PREFIX}{var}"), format!("{ENV_PREFIX}{named}"));
                let named = named.as_str();
                jail.set_env(&var, "1s");
                let e = err(load(None, &Overrides::default()));
                assert!(e.contains(named) && e.contains("unknown"), "{var}: {e}");
                std::env::remove_var(&var);
            }
            let e = err(load(None, &flags(&["timers.windwo=1s"])));
            assert!(e.contains("\"timers.windwo\""), "{e}");
            assert!(Overrides::default().assign("timers.window").is_err());
            assert!(Overrides::default().assign("timers..window=1s").is_err());
            // A value of the wrong type names its variable too.
            jail.set_env("HOURGLASS_PARTITIONS", "many");
            let e = err(load(None, &Overrides::default()));
            assert!(e.contains("HOURGLASS_PARTITIONS"), "{e}");
            Ok(())
        });
    }

    /// A configuration with every key off its default (and valid).
    fn unusual() -> NodeConfig {
        NodeConfig {
            node_id: 3,
            listen: "127.0.0.1:7103".parse().unwrap(),
            advertise: Some("node3.example:7103".into()),
            peer_listen: "127.0.0.1:8103".parse().unwrap(),
            peer_advertise: Some("node3.example:8103".into()),
            http_listen: Some("127.0.0.1:9103".parse().unwrap()),
            data_dir: "/var/lib/hourglass-3".into(),
            peers: vec![
                "1=node1.example:7101/node1.example:8101".parse().unwrap(),
                "3=node3.example:7103/node3.example:8103".parse().unwrap(),
            ],
            partitions: 12,
            replication_factor: 2,
            max_payload_bytes: 1000,
            request_timeout_ms: 4_321,
            max_clock_offset_ms: 250,
            raft: RaftConfig {
                heartbeat_interval_ms: 150,
                election_timeout_min_ms: 1_500,
                election_timeout_max_ms: 2_500,
                snapshot_after_logs: 5_000,
                snapshot_after_log_bytes: 3 << 20,
                logs_kept_after_snapshot: 500,
            },
            timers: TimersConfig {
                window_ms: 90_000,
                max_in_memory_per_partition: 1_000,
                batch: 10,
                fire_ahead_ms: 25,
                delivery_window: 77,
                delivery_window_bytes: 3 << 20,
                ack_timeout_ms: 5_000,
                tombstone_retention_ms: 3_600_000,
                idle_stream_timeout: Some(Duration::from_secs(45).into()),
            },
            storage: StoreOptions {
                write_ahead_log_bytes: 4 << 20,
                memtable_bytes: 2 << 20,
                memtable_budget_bytes: 48 << 20,
                block_cache_bytes: 32 << 20,
                info_log_file_bytes: 256 << 10,
                info_log_files: 3,
                manifest_file_bytes: 8 << 20,
                table_file_bytes: 3 << 20,
                first_level_bytes: 24 << 20,
            },
            grpc: GrpcConfig {
                http2_keepalive_interval_ms: 5_000,
                http2_keepalive_timeout_ms: 7_000,
                tcp_keepalive_ms: 30_000,
            },
            fault: FaultConfig {
                lose_fired_fraction: 0.25,
                early_fire_ms: 2_000,
            },
            tls: TlsConfig {
                ca: Some("/etc/hourglass/ca.crt".into()),
                cert: Some("/etc/hourglass/node.crt".into()),
                key: Some("/etc/hourglass/node.key".into()),
            },
            auth: AuthConfig {
                required: false,
                tokens_file: Some("/etc/hourglass/tokens.toml".into()),
            },
            rejoin: false,
        }
    }

    /// `key = value` of every key in `to_toml`'s output, values as a variable would spell them.
    fn printed(config: &NodeConfig) -> Vec<(String, String)> {
        let table: toml::Table = config.to_toml().parse().unwrap();
        let mut out = Vec::new();
        for key in keys() {
            let value = key
                .split('.')
                .try_fold(&toml::Value::Table(table.clone()), |v, k| v.get(k))
                .cloned()
                .unwrap_or_else(|| panic!("{key} is not printed"));
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
                    .join(","),
                v => v.to_string(),
            };
            out.push((key, text));
        }
        out
    }

    #[test]
    fn every_key_prints_and_reads_back_from_file_environment_and_flags() {
        let config = unusual();
        let defaults = NodeConfig::default();
        assert_ne!(config.raft, defaults.raft);
        assert_ne!(config.timers, defaults.timers);
        assert_ne!(config.grpc, defaults.grpc);
        assert_ne!(config.storage, defaults.storage);
        let all = keys();
        assert_eq!(all.len(), 47, "{all:?}");
        let pairs = printed(&config);
        for (key, text) in &pairs {
            let default_text = &printed(&defaults)
                .into_iter()
                .find(|(k, _)| k == key)
                .unwrap()
                .1;
            assert_ne!(text, default_text, "{key} is at its default in the test");
        }
        let without_faults = NodeConfig {
            fault: FaultConfig::default(),
            ..config.clone()
        };
        assert!(without_faults.validate().is_ok());
        assert_eq!(NodeConfig::from_toml(&config.to_toml()).unwrap(), config);
        Jail::expect_with(|jail| {
            jail.clear_env();
            for (key, text) in &pairs {
                jail.set_env(env_var(key), text);
            }
            assert_eq!(load(None, &Overrides::default()).unwrap(), config);
            jail.clear_env();
            let assignments: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let refs: Vec<&str> = assignments.iter().map(String::as_str).collect();
            assert_eq!(load(None, &flags(&refs)).unwrap(), config);
            Ok(())
        });
    }

    #[test]
    fn fault_injection_is_explicit_configuration() {
        let c = NodeConfig::default();
        assert!(!c.fault.is_active());
        assert_eq!(
            (c.fault.lose_fired_fraction, c.fault.early_fire_ms),
            (0.0, 0)
        );
        let c = NodeConfig::from_toml("[fault]\nlose_fired_fraction = 0.05\nearly_fire = \"2s\"")
            .unwrap();
        assert!(c.fault.is_active());
        assert_eq!(
            (c.fault.lose_fired_fraction, c.fault.early_fire_ms),
            (0.05, 2_000)
        );
        assert!(c.to_toml().contains("[fault]"));
        let bad = NodeConfig {
            node_id: 1,
            replication_factor: 1,
            fault: FaultConfig {
                lose_fired_fraction: 1.5,
                early_fire_ms: 0,
            },
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("fault.lose_fired_fraction"), "{e}");
        let faulty = NodeConfig {
            node_id: 1,
            replication_factor: 1,
            fault: FaultConfig {
                lose_fired_fraction: 0.05,
                early_fire_ms: 0,
            },
            ..Default::default()
        };
        let checked = faulty.validate();
        if cfg!(feature = "fault-injection") {
            assert!(checked.is_ok(), "{checked:?}");
        } else {
            let e = err(checked);
            assert!(e.contains("built without fault injection"), "{e}");
        }
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("HOURGLASS_FAULT__LOSE_FIRED_FRACTION", "0.1");
            jail.set_env("HOURGLASS_FAULT__EARLY_FIRE_MS", "1500");
            let c = load(None, &Overrides::default()).unwrap();
            assert_eq!(
                (c.fault.lose_fired_fraction, c.fault.early_fire_ms),
                (0.1, 1_500)
            );
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let e = err(load(Some("/nonexistent/node.toml"), &Overrides::default()));
        assert!(e.contains("/nonexistent/node.toml"), "{e}");
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn every_key_is_documented_with_its_default_and_variable() {
        let doc = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
        let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
        for (key, default) in printed(&NodeConfig::default()) {
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("| `{key}` ")))
                .unwrap_or_else(|| panic!("docs/operations.md has no row for {key}"));
            let cells: Vec<&str> = row.split(" | ").collect();
            let shown = match default.as_str() {
                d if key == "peers" => format!("[{d}]"),
                "" => "\"\"".to_owned(),
                d => d.to_owned(),
            };
            assert!(
                cells[1].contains(&format!("`{shown}`")),
                "{key}: default `{shown}` not in {row}"
            );
            assert!(
                cells[2].contains(&env_var(&key)),
                "{key}: variable not in {row}"
            );
            assert!(cells[3].contains("--"), "{key}: no flag in {row}");
        }
    }

    /// Each `HOURGLASS_*` name the repository uses is a key's variable (or its `_ms` form), a
    /// deprecated one, or one `serve` knows to ignore: none of them stops a node. (Tests that
    /// use unknown names on purpose build them with `format!`.)
    #[test]
    fn every_hourglass_variable_in_the_repository_is_known() {
        let mut known: BTreeSet<String> = keys().iter().map(|k| env_var(k)).collect();
        for (section, key) in MILLISECOND_KEYS {
            let key = if section.is_empty() {
                format!("{key}_ms")
            } else {
                format!("{section}.{key}_ms")
            };
            known.insert(env_var(&key));
        }
        known.extend(NON_CONFIG_ENV.iter().map(|v| v.to_string()));
        let mut found = BTreeSet::new();
        let mut stack = vec![repo()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    let skip = ["target", "node_modules", "build", "dist", "__pycache__"];
                    if (!name.starts_with('.') || name == ".ci") && !skip.contains(&name.as_str()) {
                        stack.push(path);
                    }
                } else if let Ok(text) = std::fs::read_to_string(&path) {
                    for (i, _) in text.match_indices(ENV_PREFIX) {
                        let rest = &text[i + ENV_PREFIX.len()..];
                        let len = rest
                            .find(|c: char| {
                                !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                            })
                            .unwrap_or(rest.len());
                        let var = &text[i..i + ENV_PREFIX.len() + len];
                        // `HOURGLASS_<KEY>` and the like in prose.
                        if len > 0 && !var.ends_with('_') {
                            found.insert((var.to_owned(), path.display().to_string()));
                        }
                    }
                }
            }
        }
        assert!(found.iter().any(|(v, _)| v == "HOURGLASS_NODE_ID"));
        let unknown: Vec<_> = found.iter().filter(|(v, _)| !known.contains(v)).collect();
        assert!(
            unknown.is_empty(),
            "HOURGLASS_* variables that would stop `hourglass serve` as unknown keys (add them \
             to NON_CONFIG_ENV if they are not configuration): {unknown:?}"
        );
    }

    /// `config` fails validation with an error that says `named`.
    fn refused(config: NodeConfig, named: &str) {
        let e = err(config.validate());
        assert!(e.contains(named), "{e}");
    }

    #[test]
    fn validation_names_the_problem() {
        let base = NodeConfig {
            node_id: 1,
            ..Default::default()
        };
        refused(
            NodeConfig {
                node_id: 0,
                ..base.clone()
            },
            "node_id",
        );
        // A lone node cannot hold three replicas.
        refused(base.clone(), "replication_factor");
        let single = NodeConfig {
            replication_factor: 1,
            ..base.clone()
        }
        .validate()
        .unwrap();
        assert_eq!(single.peers.len(), 1);
        refused(
            NodeConfig {
                raft: RaftConfig {
                    heartbeat_interval_ms: 600,
                    ..Default::default()
                },
                ..single.clone()
            },
            "raft.election_timeout_min (1s) must exceed twice raft.heartbeat_interval (600ms)",
        );
        // Unset, the idle timeout follows a longer ack timeout; set, it must not undercut it.
        let long_acks = TimersConfig {
            ack_timeout_ms: 90_000,
            ..Default::default()
        };
        assert_eq!(long_acks.idle_stream_timeout_ms(), 90_000);
        assert_eq!(TimersConfig::default().idle_stream_timeout_ms(), 60_000);
        refused(
            NodeConfig {
                timers: TimersConfig {
                    idle_stream_timeout: Some(Duration::from_secs(60).into()),
                    ..long_acks
                },
                ..single.clone()
            },
            "timers.idle_stream_timeout (1m) must be at least timers.ack_timeout (1m 30s)",
        );
        refused(
            NodeConfig {
                grpc: GrpcConfig {
                    http2_keepalive_timeout_ms: 0,
                    ..Default::default()
                },
                ..single.clone()
            },
            "grpc.http2_keepalive_timeout",
        );
        // RocksDB's budgets: each within bounds, the budget holding at least one memtable.
        refused(
            NodeConfig {
                storage: StoreOptions {
                    write_ahead_log_bytes: 4096,
                    ..Default::default()
                },
                ..single.clone()
            },
            "storage.write_ahead_log_bytes must be in 1048576..=68719476736 (1 MiB to 64 GiB), got 4096",
        );
        refused(
            NodeConfig {
                storage: StoreOptions {
                    memtable_bytes: 64 << 20,
                    memtable_budget_bytes: 32 << 20,
                    ..Default::default()
                },
                ..single.clone()
            },
            "storage.memtable_budget_bytes (33554432) must be at least storage.memtable_bytes (67108864)",
        );
        for (storage, named) in [
            (
                StoreOptions {
                    table_file_bytes: 4096,
                    ..Default::default()
                },
                "storage.table_file_bytes must be in 65536..=1073741824 (64 KiB to 1 GiB), got 4096",
            ),
            (
                StoreOptions {
                    first_level_bytes: 65 << 30,
                    ..Default::default()
                },
                "storage.first_level_bytes must be in 1048576..=68719476736 (1 MiB to 64 GiB), got 69793218560",
            ),
        ] {
            refused(
                NodeConfig {
                    storage,
                    ..single.clone()
                },
                named,
            );
        }
        // Fire-ahead: at most 1s and half the window.
        for (window_ms, fire_ahead_ms) in [(60_000, 1_001), (1_000, 501)] {
            refused(
                NodeConfig {
                    timers: TimersConfig {
                        window_ms,
                        fire_ahead_ms,
                        ..Default::default()
                    },
                    ..single.clone()
                },
                "timers.fire_ahead must be at most 1s and at most half of timers.window",
            );
        }
        // The delivery window at the edges of what it accepts.
        for (window, bytes, named) in [
            (
                0,
                8 << 20,
                "timers.delivery_window must be in 1..=1000000, got 0",
            ),
            (
                1_000_001,
                8 << 20,
                "timers.delivery_window must be in 1..=1000000",
            ),
            (
                1_000,
                (1 << 20) - 1,
                "timers.delivery_window_bytes must be in 1048576..=1073741824",
            ),
            (
                1_000,
                (1 << 30) + 1,
                "timers.delivery_window_bytes must be in 1048576..=1073741824",
            ),
        ] {
            refused(
                NodeConfig {
                    timers: TimersConfig {
                        delivery_window: window,
                        delivery_window_bytes: bytes,
                        ..Default::default()
                    },
                    ..single.clone()
                },
                named,
            );
        }
        for (window, bytes) in [(1, 1 << 20), (1_000_000, 1 << 30)] {
            NodeConfig {
                timers: TimersConfig {
                    delivery_window: window,
                    delivery_window_bytes: bytes,
                    ..Default::default()
                },
                ..single.clone()
            }
            .validate()
            .unwrap();
        }
        for tcp_keepalive_ms in [500, 32_768_000] {
            refused(
                NodeConfig {
                    grpc: GrpcConfig {
                        tcp_keepalive_ms,
                        ..Default::default()
                    },
                    ..single.clone()
                },
                "grpc.tcp_keepalive must be in 1s..=32767s",
            );
        }
        assert!("x".parse::<Peer>().is_err());
        assert!("1=".parse::<Peer>().is_err());
        assert!("1=10.0.0.1:7001/".parse::<Peer>().is_err());
        let e = "7=10.0.0.1:7001".parse::<Peer>().unwrap_err();
        assert!(e.contains("names no peer (Raft transport) address"), "{e}");
        let p: Peer = "7=10.0.0.1:7001/10.0.0.1:8001".parse().unwrap();
        assert_eq!((p.id, p.peer_address.as_str()), (7, "10.0.0.1:8001"));
        refused(
            NodeConfig {
                peer_listen: single.listen,
                ..single.clone()
            },
            "peer_listen (127.0.0.1:7001) must differ from listen",
        );
        refused(
            NodeConfig {
                tls: TlsConfig {
                    ca: Some("ca.crt".into()),
                    ..Default::default()
                },
                ..single.clone()
            },
            "tls.ca, tls.cert and tls.key must be given together",
        );
        refused(
            NodeConfig {
                auth: AuthConfig {
                    tokens_file: Some("tokens.toml".into()),
                    ..Default::default()
                },
                ..single.clone()
            },
            "auth.tokens_file needs TLS",
        );
    }
}
