use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hourglass_server::auth::Role;
use hourglass_server::config::Overrides;
use hourglass_server::Peer;

/// `--version`: a test build says it can break its guarantees on purpose, and the chaos harness
/// checks for that word before it injects a fault.
const VERSION: &str = if cfg!(feature = "fault-injection") {
    concat!(env!("CARGO_PKG_VERSION"), " (fault-injection)")
} else {
    env!("CARGO_PKG_VERSION")
};

#[derive(Parser)]
#[command(
    name = "hourglass",
    version = VERSION,
    about = "Durable timers, replicated with Raft."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct Global {
    /// Nodes to talk to, comma-separated HOST:PORT; any node serves any call.
    #[arg(
        long,
        global = true,
        env = "HOURGLASS_ENDPOINTS",
        default_value = "127.0.0.1:7001",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Talk TLS, trusting the nodes whose certificates this CA (PEM) signed.
    #[arg(long, global = true, env = "HOURGLASS_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM, `hourglass cert client`) to present; needs --key and --ca.
    #[arg(long, global = true, env = "HOURGLASS_CERT", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, global = true, env = "HOURGLASS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Bearer token (`hourglass token new`) to authenticate with; needs --ca, as a token must
    /// not travel in the clear. Prefer --token-file: a flag shows in the process list.
    #[arg(
        long,
        global = true,
        env = "HOURGLASS_TOKEN",
        hide_env_values = true,
        requires = "ca",
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token (its first line); needs --ca.
    #[arg(long, global = true, env = "HOURGLASS_TOKEN_FILE", requires = "ca")]
    pub token_file: Option<PathBuf>,
}

impl Global {
    /// A client of `--endpoints`, over TLS when `--ca` is given.
    pub fn client(&self) -> Result<hourglass_client::Client, crate::Failure> {
        self.client_with(hourglass_client::RetryPolicy::default())
    }

    /// A client of the endpoints (over TLS when `--ca` is given) that retries by `retry`.
    pub fn client_with(
        &self,
        retry: hourglass_client::RetryPolicy,
    ) -> Result<hourglass_client::Client, crate::Failure> {
        let tls = match &self.ca {
            Some(ca) => {
                let tls = hourglass_client::Tls::from_files(
                    ca,
                    self.cert.as_deref().zip(self.key.as_deref()),
                )
                .map_err(crate::usage)?;
                match self.token()? {
                    Some(token) => Some(tls.with_token(&token).map_err(crate::usage)?),
                    None => Some(tls),
                }
            }
            None => None,
        };
        hourglass_client::Client::with_options(&self.endpoints, retry, tls).map_err(crate::usage)
    }

    /// The bearer token of --token or --token-file.
    fn token(&self) -> Result<Option<String>, crate::Failure> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                crate::usage(format!("cannot read --token-file {}: {e}", path.display()))
            })?;
            let token = text.lines().next().unwrap_or_default().trim().to_owned();
            if token.is_empty() {
                return Err(crate::usage(format!(
                    "--token-file {} holds no token",
                    path.display()
                )));
            }
            return Ok(Some(token));
        }
        Ok(self.token.clone())
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run one node of a cluster.
    Serve(Box<ServeArgs>),
    /// Run a whole local cluster in this process (3 nodes on 127.0.0.1:7001-7003).
    Dev(DevArgs),
    /// Schedule, cancel and inspect timers.
    #[command(subcommand)]
    Timer(TimerCommand),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Receive fired timers of a queue: one JSON object per line per delivery, acknowledged
    /// after it is printed (or, with --exec, after the command exits 0).
    Worker(WorkerArgs),
    /// Load generator: measures fire lateness, burst delivery and memory per timer.
    Bench(BenchArgs),
    /// Create the cluster CA and certificates of nodes and clients (docs/operations.md,
    /// "Security").
    #[command(subcommand)]
    Cert(CertCommand),
    /// Create bearer tokens for clients and workers (docs/operations.md, "Security").
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a new secret token (shown once) and the entry to add to every node's
    /// auth.tokens_file.
    New {
        /// Who the token is for (shown in refusals and logs; several tokens may share it).
        name: String,
        #[arg(long, value_enum, default_value = "client")]
        role: ClientRole,
        /// For --role client: a workflow id prefix it may touch (repeatable; none: all).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
        /// For --role worker: a queue it may subscribe to (repeatable; none: all).
        #[arg(long = "queue")]
        queues: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum CertCommand {
    /// Create the cluster CA: DIR/ca.crt and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Create node ID's certificate (DIR/node-ID.crt, .key), signed by DIR's CA.
    Node {
        id: u64,
        #[arg(long)]
        dir: PathBuf,
        /// Names and IP addresses clients reach the node at (repeatable or comma-separated;
        /// default localhost and 127.0.0.1).
        #[arg(long, value_delimiter = ',')]
        host: Vec<String>,
    },
    /// Create a client's certificate (DIR/client-NAME.crt, .key), signed by DIR's CA.
    Client {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// The role the certificate carries (its OU).
        #[arg(long, value_enum, default_value = "client")]
        role: ClientRole,
        /// For --role client: a workflow id prefix it may touch (repeatable; none: all). Prints
        /// the [[certificate]] entry that limits it, for the tokens file.
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
        /// For --role worker: a queue it may subscribe to (repeatable; none: all). Prints the
        /// [[certificate]] entry that limits it, for the tokens file.
        #[arg(long = "queue")]
        queues: Vec<String>,
    },
    /// Print the [[revoked]] entry that makes every node refuse a certificate (PEM FILE) on
    /// the client port, for the tokens file.
    Revoke {
        file: PathBuf,
        /// Why, for whoever reads the tokens file (default: the certificate's CN).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ClientRole {
    Admin,
    Client,
    Worker,
}

impl From<ClientRole> for Role {
    fn from(role: ClientRole) -> Role {
        match role {
            ClientRole::Admin => Role::Admin,
            ClientRole::Client => Role::Client,
            ClientRole::Worker => Role::Worker,
        }
    }
}

#[derive(Args)]
pub struct BenchArgs {
    /// Send each call to the next endpoint, which forwards it when it does not lead the
    /// workflow's partition, instead of straight to the partition's leader: what a client
    /// that does not route does.
    #[arg(long, global = true)]
    pub unrouted: bool,
    #[command(subcommand)]
    pub cmd: BenchCommand,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Timers due at a steady rate, delivered to an in-process worker: fire lateness.
    Steady {
        /// Timers falling due per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// How long timers keep falling due.
        #[arg(long, default_value = "30s")]
        duration: String,
        /// How far ahead of its scheduling each timer is due.
        #[arg(long, default_value = "3s")]
        lead: String,
        /// Payload bytes per timer.
        #[arg(long, default_value_t = 0)]
        payload: usize,
    },
    /// Many timers due at the same instant: time until the last is delivered.
    Burst {
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Concurrent schedule requests.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// Timers per request (1: Schedule; more: ScheduleBatch, at most 1000).
        #[arg(long, default_value_t = 1)]
        batch: u64,
    },
    /// Many timers with payloads fall due at one instant while no worker is subscribed: each
    /// node's memory while they wait; then a worker takes them all, checking the fire order.
    Backlog {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Payload bytes per timer.
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: u64,
        /// Timers per request (1: Schedule; more: ScheduleBatch, at most 1000).
        #[arg(long, default_value_t = 500)]
        batch: u64,
        /// How long to watch memory after the last timer fired, before a worker subscribes.
        #[arg(long, default_value = "30s")]
        wait: String,
        /// When the timers fall due, from the start of scheduling (default: estimated from
        /// the rate of a 1,000-timer probe). Give more than scheduling takes: the memory is
        /// measured from the end of scheduling, and the fire-order check assumes nothing fell
        /// due before everything was scheduled.
        #[arg(long)]
        lead: Option<String>,
    },
    /// Timers fall due while every node is down: how soon after a restart the last of
    /// them reaches a worker. The bench stops and starts the cluster with the commands given.
    Restart {
        #[arg(long, default_value_t = 1_000)]
        count: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: u64,
        /// Timers per request (1: Schedule; more: ScheduleBatch, at most 1000).
        #[arg(long, default_value_t = 500)]
        batch: u64,
        /// When the timers fall due, from the start of scheduling; scheduling must end more
        /// than 2 s before.
        #[arg(long, default_value = "5s")]
        lead: String,
        /// How long the cluster stays down; the timers fall due meanwhile.
        #[arg(long, default_value = "15s")]
        down_for: String,
        /// Shell command that stops every node (for example with SIGKILL).
        #[arg(long)]
        down_cmd: String,
        /// Shell command that starts every node again and returns once they serve.
        #[arg(long)]
        up_cmd: String,
    },
    /// Far-future timers (a year out): scheduling throughput, then each node's memory and
    /// disk per timer.
    Fill {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// Timers per request (1: Schedule; more: ScheduleBatch, at most 1000).
        #[arg(long, default_value_t = 1)]
        batch: u64,
        /// Payload bytes per timer.
        #[arg(long, default_value_t = 0)]
        payload: usize,
        /// How long to wait after the last Schedule before reading each node's memory and
        /// disk, so that snapshots, flushes and compactions settle.
        #[arg(long, default_value = "2s")]
        settle: String,
        /// Ids of 16 random hex digits, which share no prefix and compress like random UUIDs,
        /// instead of ids numbered after the run (which compress well, as generated ids do).
        #[arg(long)]
        random_ids: bool,
    },
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Queue to receive.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Run this shell command per delivery, payload on stdin, ack on exit status 0.
    /// HOURGLASS_WORKFLOW_ID, HOURGLASS_TIMER_ID, HOURGLASS_QUEUE, HOURGLASS_ATTEMPT and
    /// HOURGLASS_FIRE_AT are set for it.
    #[arg(long)]
    pub exec: Option<String>,
    /// Deliveries each node may have outstanding to this worker.
    #[arg(long, default_value_t = 64)]
    pub credits: u32,
    /// Name shown in the servers' logs.
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Exit after this many deliveries.
    #[arg(long)]
    pub max_deliveries: Option<u64>,
}

/// Every key of the configuration comes from, lowest first: its default, the TOML file, a
/// `HOURGLASS_*` variable, a flag (docs/operations.md lists them all).
#[derive(Args)]
#[command(
    after_help = "Every configuration key can also be set by a variable: HOURGLASS_<KEY> for a \
top-level key (HOURGLASS_NODE_ID=1), HOURGLASS_<SECTION>__<KEY> for a section's \
(HOURGLASS_TIMERS__WINDOW=30s), or by --set KEY=VALUE. Flags override variables, variables \
override the file. Durations are written like 500ms, 30s, 1m 30s. --print-config shows every \
key and its effective value; docs/operations.md explains them."
)]
pub struct ServeArgs {
    /// TOML configuration file (keys as in docs/operations.md).
    #[arg(long, env = "HOURGLASS_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (positive integer) [key node_id, HOURGLASS_NODE_ID]
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Client port (public gRPC services) listen address [key listen, HOURGLASS_LISTEN]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address clients reach the client port at (defaults to --listen) [key advertise,
    /// HOURGLASS_ADVERTISE]
    #[arg(long)]
    pub advertise: Option<String>,
    /// Peer port (Raft transport between nodes only) listen address [key peer_listen,
    /// HOURGLASS_PEER_LISTEN]
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// Address other nodes reach the peer port at (defaults to --peer-listen) [key
    /// peer_advertise, HOURGLASS_PEER_ADVERTISE]
    #[arg(long)]
    pub peer_advertise: Option<String>,
    /// The cluster CA's certificate (PEM) [key tls.ca, HOURGLASS_TLS__CA]
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM, from `hourglass cert node`) [key tls.cert,
    /// HOURGLASS_TLS__CERT]
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM) [key tls.key, HOURGLASS_TLS__KEY]
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Bearer tokens accepted on the client port (TOML, `hourglass token new`) [key
    /// auth.tokens_file, HOURGLASS_AUTH__TOKENS_FILE]
    #[arg(long)]
    pub auth_tokens_file: Option<PathBuf>,
    /// HTTP listen address for /healthz, /readyz and /metrics [key http_listen,
    /// HOURGLASS_HTTP_LISTEN]
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Data directory [key data_dir, HOURGLASS_DATA_DIR]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Every cluster node as ID=CLIENT_HOST:PORT/PEER_HOST:PORT, comma-separated [key peers,
    /// HOURGLASS_PEERS]
    #[arg(long, value_delimiter = ',')]
    pub peers: Option<Vec<Peer>>,
    /// Partition count (fixed at cluster creation) [key partitions, HOURGLASS_PARTITIONS]
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Replicas per partition [key replication_factor, HOURGLASS_REPLICATION_FACTOR]
    #[arg(long)]
    pub replication_factor: Option<usize>,
    /// Largest accepted payload in bytes [key max_payload_bytes,
    /// HOURGLASS_MAX_PAYLOAD_BYTES]
    #[arg(long)]
    pub max_payload_bytes: Option<usize>,
    /// Clock offset between nodes beyond which a node warns, and a node whose clock disagrees
    /// with a majority is not ready (e.g. 500ms) [key max_clock_offset,
    /// HOURGLASS_MAX_CLOCK_OFFSET]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_clock_offset: Option<Duration>,
    /// --max-clock-offset in milliseconds (the older spelling) [key max_clock_offset_ms,
    /// HOURGLASS_MAX_CLOCK_OFFSET_MS].
    #[arg(long, conflicts_with = "max_clock_offset")]
    pub max_clock_offset_ms: Option<u64>,
    /// Set any key: KEY=VALUE, a section's keys as SECTION.KEY (timers.window=30s,
    /// raft.heartbeat_interval=100ms). Repeatable; a later one wins over an earlier one and
    /// over the dedicated flags.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the effective configuration (every key) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Recover a node whose data directory was lost: fence its votes at the highest term its
    /// peers have seen, then catch up from the leaders. Every other replica of its partitions
    /// must be up. Only for a node that refuses to start because it was wiped.
    #[arg(long, env = "HOURGLASS_REJOIN")]
    pub rejoin: bool,
}

impl ServeArgs {
    /// The configuration keys the flags set, dedicated flags first, then `--set` in order.
    pub fn overrides(&self) -> hourglass_server::Result<Overrides> {
        let mut o = Overrides::default();
        if let Some(v) = self.node_id {
            o.set("node_id", v)?;
        }
        if let Some(v) = self.listen {
            o.set("listen", v)?;
        }
        if let Some(v) = &self.advertise {
            o.set("advertise", v)?;
        }
        if let Some(v) = self.peer_listen {
            o.set("peer_listen", v)?;
        }
        if let Some(v) = &self.peer_advertise {
            o.set("peer_advertise", v)?;
        }
        if let Some(v) = &self.tls_ca {
            o.set("tls.ca", v)?;
        }
        if let Some(v) = &self.tls_cert {
            o.set("tls.cert", v)?;
        }
        if let Some(v) = &self.tls_key {
            o.set("tls.key", v)?;
        }
        if let Some(v) = &self.auth_tokens_file {
            o.set("auth.tokens_file", v)?;
        }
        if let Some(v) = self.http_listen {
            o.set("http_listen", v)?;
        }
        if let Some(v) = &self.data_dir {
            o.set("data_dir", v)?;
        }
        if let Some(v) = &self.peers {
            o.set("peers", v)?;
        }
        if let Some(v) = self.partitions {
            o.set("partitions", v)?;
        }
        if let Some(v) = self.replication_factor {
            o.set("replication_factor", v)?;
        }
        if let Some(v) = self.max_payload_bytes {
            o.set("max_payload_bytes", v)?;
        }
        if let Some(v) = self.max_clock_offset {
            o.set(
                "max_clock_offset",
                humantime::format_duration(v).to_string(),
            )?;
        }
        if let Some(v) = self.max_clock_offset_ms {
            o.set("max_clock_offset_ms", v)?;
        }
        for assignment in &self.set {
            o.assign(assignment)?;
        }
        Ok(o)
    }
}

#[derive(Args)]
pub struct DevArgs {
    /// Keep data here (reused on the next start) instead of a temporary directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Partition count.
    #[arg(long, default_value_t = 16)]
    pub partitions: u32,
    /// Node i listens for gRPC on BASE+i, for its peers on BASE+1000+i and for HTTP on
    /// BASE+2000+i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Run with TLS and authentication: a CA, node certificates and an admin client
    /// certificate are made in the data directory's certs/ (kept when --data is reused), and
    /// how to connect with them is printed.
    #[arg(long)]
    pub tls: bool,
}

#[derive(Subcommand)]
pub enum TimerCommand {
    /// Schedule a timer (idempotent: repeating it returns the existing timer).
    Schedule(ScheduleArgs),
    /// Cancel a scheduled timer.
    Cancel(KeyArgs),
    /// Show one timer.
    Get(KeyArgs),
    /// List a workflow's timers.
    List(ListArgs),
}

#[derive(Args)]
pub struct KeyArgs {
    #[arg(long)]
    pub workflow: String,
    #[arg(long = "id")]
    pub timer_id: String,
}

#[derive(Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Fire after this long, e.g. 10s, 5m, 2h 30m.
    #[arg(long = "in", conflicts_with = "at", required_unless_present = "at")]
    pub delay: Option<String>,
    /// Fire at this instant (RFC 3339, e.g. 2030-01-01T00:00:00Z).
    #[arg(long)]
    pub at: Option<String>,
    /// Queue of the workers that receive it.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Payload as text.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Payload read from a file ("-" for standard input).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(long)]
    pub workflow: String,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Nodes, partitions, replicas and leaders.
    Status,
}
