//! `hourglass-jepsen`: runs a real Hourglass cluster in network namespaces under faults,
//! records every operation and delivery, and checks the guarantees over the history.

mod checker;
mod cluster;
mod history;
mod nemesis;
mod net;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hourglass_client::{Client, RetryPolicy};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::checker::CheckOptions;
use crate::history::{now_ms, Event, Kind, Recorder};

/// How long clients keep working after the final heal.
const RECOVERY: Duration = Duration::from_secs(10);

/// Timers due later than this before the end of the history are not expected delivered.
const GRACE_MS: u64 = 10_000;

#[derive(Parser)]
#[command(
    name = "hourglass-jepsen",
    about = "Chaos harness and checker for Hourglass."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a cluster under faults, record the history, check it. Needs root.
    Run(Box<RunArgs>),
    /// Check a recorded history (with the same strict checker as `run`).
    Check {
        /// history.jsonl of a run.
        history: PathBuf,
    },
    /// Remove namespaces, links and processes a crashed run left behind.
    Cleanup,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Partitions of the cluster.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// How long faults are injected (the drain comes after).
    #[arg(long, default_value = "60s")]
    duration: String,
    /// Comma-separated nemeses, or `all`: kill, kill-leader, kill-minority, kill-all,
    /// pause-leader, partition-one, partition-halves, partition-ring, partition-leader,
    /// clock-skew, worker-kill, or `none`.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// How long each fault lasts.
    #[arg(long, default_value = "8s")]
    fault: String,
    /// Healthy time between faults.
    #[arg(long, default_value = "6s")]
    heal: String,
    /// Largest clock step, forward or back, the clock-skew nemesis applies (to a partition
    /// leader half of the time). The checker allows nothing for it.
    #[arg(long, default_value = "10m")]
    skew_max: String,
    /// Client operations per second (schedules, cancels, reads).
    #[arg(long, default_value_t = 40)]
    rate: u64,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Share of operations that are cancels.
    #[arg(long, default_value_t = 0.2)]
    cancel_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the history, node logs and report go (default: jepsen/runs/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The hourglass binary (default: the release build in the target directory; with
    /// --inject-fault, the test build `hourglass-fault-injection` beside it).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Make the system wrong on purpose to show the checker catches it: `lose-fires`
    /// acknowledges 5% of fired timers without delivering them; `early-fire` makes leaders fire
    /// timers 2 s before their fire_at. Needs a test build (jepsen/build-fault-injection.sh):
    /// release builds refuse the fault keys.
    #[arg(long)]
    inject_fault: Option<String>,
    /// Run the cluster with TLS: a CA and node certificates made by the binary's `cert`
    /// commands, mTLS between nodes, and clients and workers presenting an admin certificate.
    #[arg(long)]
    tls: bool,
}

fn parse_duration(flag: &str, v: &str) -> Result<Duration> {
    humantime::parse_duration(v).with_context(|| format!("{flag} {v:?}"))
}

/// The binary a run uses unless told: the release build, or for a run with an injected fault
/// the test build that `jepsen/build-fault-injection.sh` puts beside it.
fn default_bin(faults: bool) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join(if faults {
        "release/hourglass-fault-injection"
    } else {
        "release/hourglass"
    })
}

/// Whether `bin` is a test build that honours the fault keys (its `--version` says so).
fn has_fault_injection(bin: &std::path::Path) -> Result<bool> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("(fault-injection)"))
}

async fn run(args: RunArgs) -> Result<bool> {
    if !(3..=9).contains(&args.nodes) {
        bail!("--nodes must be between 3 and 9");
    }
    let duration = parse_duration("--duration", &args.duration)?;
    let fault = parse_duration("--fault", &args.fault)?;
    let heal = parse_duration("--heal", &args.heal)?;
    let skew_max = parse_duration("--skew-max", &args.skew_max)?;
    let nemeses: Vec<String> = match args.nemesis.as_str() {
        "all" => nemesis::ALL.iter().map(|s| s.to_string()).collect(),
        "none" => Vec::new(),
        list => list.split(',').map(|s| s.trim().to_string()).collect(),
    };
    for n in &nemeses {
        if !nemesis::ALL.contains(&n.as_str()) {
            bail!(
                "unknown nemesis {n:?}; choose from {}",
                nemesis::ALL.join(", ")
            );
        }
    }
    let env = match args.inject_fault.as_deref() {
        None => Vec::new(),
        Some("lose-fires") => vec![(
            "HOURGLASS_FAULT__LOSE_FIRED_FRACTION".to_string(),
            "0.05".to_string(),
        )],
        Some("early-fire") => vec![("HOURGLASS_FAULT__EARLY_FIRE".to_string(), "2s".to_string())],
        Some(other) => bail!("unknown fault {other:?}; choose lose-fires or early-fire"),
    };
    let faults = !env.is_empty();
    let bin = args.bin.clone().unwrap_or_else(|| default_bin(faults));
    if !bin.exists() {
        bail!(
            "{} not found: build it with {}",
            bin.display(),
            if faults {
                "jepsen/build-fault-injection.sh"
            } else {
                "`cargo build --release --workspace --all-targets`"
            }
        );
    }
    if faults && !has_fault_injection(&bin)? {
        bail!(
            "{} is a release build, which refuses the fault keys: --inject-fault needs the test \
             build from jepsen/build-fault-injection.sh",
            bin.display()
        );
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("runs")
            .join(format!("{}", now_ms()))
    });
    std::fs::create_dir_all(&out)?;
    eprintln!("jepsen: run directory {}", out.display());

    net::setup(args.nodes)
        .context("setting up network namespaces (needs root, iproute2, iptables)")?;
    let plan = Plan {
        nemeses,
        duration,
        fault,
        heal,
        skew_max,
        env,
        bin,
        out,
    };
    let result = run_in_network(&args, plan).await;
    net::teardown();
    result
}

/// A run's validated settings.
struct Plan {
    nemeses: Vec<String>,
    duration: Duration,
    fault: Duration,
    heal: Duration,
    skew_max: Duration,
    env: Vec<(String, String)>,
    bin: PathBuf,
    out: PathBuf,
}

async fn run_in_network(args: &RunArgs, plan: Plan) -> Result<bool> {
    let Plan {
        nemeses,
        duration,
        fault,
        heal,
        skew_max,
        env,
        bin,
        out,
    } = plan;
    let rec = Recorder::create(&out.join("history.jsonl"))?;
    let mut cluster = cluster::Cluster::new(args.nodes, bin, &out, args.partitions, env, args.tls)?;
    let access = cluster.access()?;
    let admin = Client::with_options(
        &access.endpoints,
        RetryPolicy::default(),
        access.tls.clone(),
    )?;
    eprintln!("jepsen: waiting for {} nodes to elect leaders", args.nodes);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if cluster.leaders(&admin).await.len() == args.partitions as usize {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "cluster did not come up; see {}/node-*/node.log",
                out.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let stop_clients = Arc::new(AtomicBool::new(false));
    let stop_workers = Arc::new(AtomicBool::new(false));
    let known = Arc::new(Mutex::new(workload::Known::default()));
    let kills: Vec<Arc<tokio::sync::Notify>> = (0..args.workers)
        .map(|_| Arc::new(tokio::sync::Notify::new()))
        .collect();
    let workers: Vec<_> = kills
        .iter()
        .enumerate()
        .map(|(n, kill)| {
            tokio::spawn(workload::worker(
                n,
                access.clone(),
                rec.clone(),
                Arc::clone(kill),
                Arc::clone(&stop_workers),
                args.seed,
            ))
        })
        .collect();
    let clients = tokio::spawn(workload::clients(
        access.clone(),
        rec.clone(),
        workload::WorkloadOptions {
            clients: args.clients,
            rate: args.rate,
            cancel_fraction: args.cancel_fraction,
            seed: args.seed,
        },
        Arc::clone(&known),
        Arc::clone(&stop_clients),
    ));

    let mut nem = nemesis::Nemesis {
        rng: StdRng::seed_from_u64(args.seed),
        rec: rec.clone(),
        workers: kills.clone(),
        skew_max_ms: skew_max.as_millis() as u64,
        skewed: Vec::new(),
    };
    let started = tokio::time::Instant::now();
    let mut cycle = 0usize;
    let mut order: Vec<String> = nemeses.clone();
    while started.elapsed() < duration {
        tokio::time::sleep(heal.min(duration.saturating_sub(started.elapsed()))).await;
        if nemeses.is_empty() || started.elapsed() >= duration {
            continue;
        }
        // Every nemesis runs once per round, in a seeded random order.
        if cycle.is_multiple_of(order.len()) {
            order.shuffle(&mut nem.rng);
        }
        let name = order[cycle % order.len()].clone();
        cycle += 1;
        eprintln!("jepsen: {:>4} s  fault {name}", started.elapsed().as_secs());
        let applied = nem.apply(&name, &mut cluster, &admin).await?;
        tokio::time::sleep(fault).await;
        nem.heal(applied, &mut cluster).await?;
    }
    eprintln!("jepsen: final heal, recovery and drain");
    nem.heal_all(&mut cluster).await?;
    // Recovery: clients keep going against the healed cluster for a while.
    tokio::time::sleep(RECOVERY).await;
    stop_clients.store(true, Ordering::Relaxed);
    let _ = clients.await;
    // Drain: wait past the last due time, so every timer had its chance.
    let last_due = known.lock().expect("known lock").last_due;
    let drain_until = last_due.max(now_ms()) + 15_000;
    while now_ms() < drain_until {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_workers.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
    }
    rec.record(Event::new("harness", Kind::Nemesis, "end"));
    rec.flush();
    cluster.shutdown();

    let history = history::read(&out.join("history.jsonl"))?;
    let opts = CheckOptions { grace_ms: GRACE_MS };
    let report = checker::check(&history, &opts);
    let text = checker::render(&report);
    std::fs::write(out.join("report.txt"), &text)?;
    std::fs::write(
        out.join("result.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{text}");
    println!(
        "history: {}  ops: {}",
        out.join("history.jsonl").display(),
        history.len()
    );
    Ok(report.valid)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .try_init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = match cli.command {
        Cmd::Cleanup => {
            net::teardown();
            Ok(true)
        }
        Cmd::Check { history } => (|| {
            let events = history::read(&history)?;
            let opts = CheckOptions { grace_ms: GRACE_MS };
            let report = checker::check(&events, &opts);
            println!("{}", checker::render(&report));
            Ok(report.valid)
        })(),
        Cmd::Run(args) => runtime.block_on(async {
            tokio::select! {
                r = run(*args) => r,
                _ = tokio::signal::ctrl_c() => {
                    net::teardown();
                    bail!("interrupted; namespaces removed")
                }
            }
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("jepsen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
