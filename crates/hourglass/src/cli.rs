use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hourglass_server::Peer;

#[derive(Parser)]
#[command(
    name = "hourglass",
    version,
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
}

#[derive(Subcommand)]
pub enum Command {
    /// Run one node of a cluster.
    Serve(ServeArgs),
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
    #[command(subcommand)]
    Bench(BenchCommand),
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
    /// Far-future timers (a year out): scheduling throughput, then each node's memory.
    Fill {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// Timers per request (1: Schedule; more: ScheduleBatch, at most 1000).
        #[arg(long, default_value_t = 1)]
        batch: u64,
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

/// Every setting can come from the TOML file, a `HOURGLASS_*` variable or a flag; flags and
/// variables override the file.
#[derive(Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as in docs/operations.md).
    #[arg(long, env = "HOURGLASS_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (positive integer).
    #[arg(long, env = "HOURGLASS_NODE_ID")]
    pub node_id: Option<u64>,
    /// gRPC listen address.
    #[arg(long, env = "HOURGLASS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address peers and clients use to reach this node (defaults to --listen).
    #[arg(long, env = "HOURGLASS_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP listen address for /healthz and /readyz.
    #[arg(long, env = "HOURGLASS_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "HOURGLASS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Every cluster node as ID=HOST:PORT, comma-separated.
    #[arg(long, env = "HOURGLASS_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<Peer>>,
    /// Partition count (fixed at cluster creation).
    #[arg(long, env = "HOURGLASS_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Replicas per partition.
    #[arg(long, env = "HOURGLASS_REPLICATION_FACTOR")]
    pub replication_factor: Option<usize>,
    /// Largest accepted payload in bytes.
    #[arg(long, env = "HOURGLASS_MAX_PAYLOAD_BYTES")]
    pub max_payload_bytes: Option<usize>,
    /// Clock offset between nodes, in milliseconds, beyond which a node warns, and a node
    /// whose clock disagrees with a majority is not ready.
    #[arg(long, env = "HOURGLASS_MAX_CLOCK_OFFSET_MS")]
    pub max_clock_offset_ms: Option<u64>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Recover a node whose data directory was lost: fence its votes at the highest term its
    /// peers have seen, then catch up from the leaders. Every other replica of its partitions
    /// must be up. Only for a node that refuses to start because it was wiped.
    #[arg(long, env = "HOURGLASS_REJOIN")]
    pub rejoin: bool,
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
    /// Node i listens for gRPC on BASE+i and for HTTP on BASE+2000+i.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
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
