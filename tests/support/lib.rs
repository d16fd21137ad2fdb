//! Test harness for real Hourglass clusters: real `hourglass serve` processes on loopback,
//! real gRPC, real RocksDB in temporary directories.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hourglass_client::{v1, Client, RetryPolicy, Tls};

pub mod secure;

/// The release `hourglass` binary next to this test executable (`target/release/`), or
/// `$HOURGLASS_BIN`.
pub fn hourglass_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HOURGLASS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("hourglass");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --release -p hourglass`",
        bin.display()
    );
    bin
}

/// A port free now, below Linux's ephemeral range (32768 and up): a port the kernel handed
/// out for `127.0.0.1:0` could be taken, between this check and the node's bind, as the source
/// port of one of the many connections tests open, and that node then never started. Each
/// test process walks its own sequence and claims the port for itself (see [`claim`]): two
/// test processes picking the same free port, one's node then answering the other's test,
/// made a test see a node of another cluster.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + (start.wrapping_add(n.wrapping_mul(104_729)) % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && claim(port) {
            return port;
        }
        assert!(n < 100_000, "no free loopback port below 32768");
    }
}

/// Claims `port` for this test process among all test processes of the machine: a file named
/// after it holds the claimant's pid, and a claim of a process that has exited is taken over.
fn claim(port: u16) -> bool {
    let dir = std::env::temp_dir().join("hourglass-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(port.to_string());
    let me = std::process::id();
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
        {
            Ok(mut f) => return writeln!(f, "{me}").is_ok(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&file).unwrap_or_default();
                let alive = owner
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| pid == me || Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    return false;
                }
                let _ = std::fs::remove_file(&file);
            }
            Err(_) => return false,
        }
    }
    false
}

pub struct NodeProc {
    pub id: u64,
    /// The client port.
    pub addr: String,
    /// The peer port (Raft transport).
    pub peer_addr: String,
    pub http: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

/// Runs `hourglass cert ARGS` (the CLI makes every certificate the tests use); returns what
/// it printed.
pub fn cert(args: &[&str]) -> Result<String> {
    let out = Command::new(hourglass_bin())
        .arg("cert")
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "hourglass cert {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A cluster of `hourglass serve` processes. Dropping it kills them.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub partitions: u32,
    /// The certificates' directory (`hourglass cert`), when the cluster runs with TLS.
    pub certs: Option<PathBuf>,
    faketime: bool,
    _root: tempfile::TempDir,
}

/// Knobs of a test cluster.
#[derive(Clone)]
pub struct Options {
    pub nodes: usize,
    pub partitions: u32,
    /// Extra TOML appended to every node's configuration.
    pub extra_toml: String,
    /// Run every node under libfaketime, so [`Cluster::set_clock`] can move its wall clock
    /// (its monotonic clock stays true).
    pub faketime: bool,
    /// Run with TLS: a CA and node certificates made by `hourglass cert`, clients with the CA
    /// and an admin certificate (`client-admin`).
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            partitions: 4,
            extra_toml: String::new(),
            faketime: false,
            tls: false,
        }
    }
}

/// libfaketime's multi-threaded library, from Debian's `faketime` package.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// libfaketime rereads a node's clock file this often (seconds).
const FAKETIME_CACHE_S: u64 = 1;

/// A libfaketime offset for `offset_ms`: seconds with a sign and three decimals, no unit.
fn faketime_offset(offset_ms: i64) -> String {
    let sign = if offset_ms < 0 { '-' } else { '+' };
    let abs = offset_ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

impl Cluster {
    /// Starts the cluster and waits until every partition has a leader.
    pub async fn start(opts: Options) -> Result<Cluster> {
        let mut cluster = Cluster::prepare(opts)?;
        for id in 1..=cluster.nodes.len() as u64 {
            cluster.spawn(id)?;
        }
        cluster.wait_all_led(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Writes every node's configuration and data directory without starting any node; start
    /// them with [`Cluster::spawn`].
    pub fn prepare(opts: Options) -> Result<Cluster> {
        // HOURGLASS_TEST_KEEP=1 keeps every node's data and log after the test, to inspect.
        let keep = std::env::var_os("HOURGLASS_TEST_KEEP").is_some_and(|v| v == "1");
        let root = tempfile::Builder::new()
            .prefix("hourglass-it-")
            .disable_cleanup(keep)
            .tempdir()?;
        let ports: Vec<(u16, u16, u16)> = (0..opts.nodes)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (g, p, _))| format!("\"{}=127.0.0.1:{g}/127.0.0.1:{p}\"", i + 1))
            .collect();
        let certs = root.path().join("certs");
        if opts.tls {
            let dir = certs.to_str().context("a UTF-8 temporary directory")?;
            cert(&["init", "--dir", dir])?;
            for id in 1..=opts.nodes {
                cert(&["node", &id.to_string(), "--dir", dir])?;
            }
            // What the clients of the tests present: TLS nodes require credentials.
            cert(&["client", "admin", "--dir", dir, "--role", "admin"])?;
        }
        let mut nodes = Vec::new();
        for (i, (grpc, peer, http)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let tls = if opts.tls {
                format!(
                    "[tls]\nca = \"{0}/ca.crt\"\ncert = \"{0}/node-{id}.crt\"\nkey = \"{0}/node-{id}.key\"\n",
                    certs.display()
                )
            } else {
                String::new()
            };
            let dir = root.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&dir)?;
            let config = root.path().join(format!("node-{id}.toml"));
            // Short election timeouts keep failover tests quick on loopback.
            let toml = format!(
                "node_id = {id}\nlisten = \"127.0.0.1:{grpc}\"\npeer_listen = \"127.0.0.1:{peer}\"\n\
                 http_listen = \"127.0.0.1:{http}\"\n\
                 data_dir = \"{}\"\npeers = [{}]\npartitions = {}\nreplication_factor = {}\n{}\n{tls}",
                dir.join("data").display(),
                peers.join(", "),
                opts.partitions,
                opts.nodes.min(3),
                opts.extra_toml,
            );
            std::fs::write(&config, toml)?;
            nodes.push(NodeProc {
                id,
                addr: format!("127.0.0.1:{grpc}"),
                peer_addr: format!("127.0.0.1:{peer}"),
                http: format!("127.0.0.1:{http}"),
                dir,
                config,
                child: None,
            });
        }
        if opts.faketime && !Path::new(LIBFAKETIME).exists() {
            bail!("{LIBFAKETIME} is missing: install faketime (deploy/install-deps.sh faketime)");
        }
        let cluster = Cluster {
            nodes,
            partitions: opts.partitions,
            certs: opts.tls.then_some(certs),
            faketime: opts.faketime,
            _root: root,
        };
        if opts.faketime {
            for id in 1..=opts.nodes as u64 {
                cluster.write_clock(id, 0)?;
            }
        }
        Ok(cluster)
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts node `id`'s process (stderr to `node-dir/stderr.log`).
    pub fn spawn(&mut self, id: u64) -> Result<()> {
        self.spawn_with(id, &[])
    }

    /// Starts node `id`'s process with extra `serve` arguments.
    pub fn spawn_with(&mut self, id: u64, extra: &[&str]) -> Result<()> {
        let bin = hourglass_bin();
        let node = self.node_mut(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("stderr.log"))?;
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .args(extra)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log);
        // The node's whole configuration is its file: the tests' own HOURGLASS_* variables
        // (HOURGLASS_TEST_KEEP, HOURGLASS_FUZZ_SECS, …) are no configuration keys, and a node
        // refuses to start on unknown ones.
        for (var, _) in std::env::vars() {
            if var.starts_with("HOURGLASS_") {
                command.env_remove(var);
            }
        }
        if self.faketime {
            let node = self.node(id);
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", node.dir.join("clock"))
                .env("FAKETIME_CACHE_DURATION", FAKETIME_CACHE_S.to_string())
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let child = command.spawn().context("spawning hourglass serve")?;
        self.node_mut(id).child = Some(child);
        Ok(())
    }

    fn write_clock(&self, id: u64, offset_ms: i64) -> Result<()> {
        let dir = &self.node(id).dir;
        let tmp = dir.join("clock.tmp");
        std::fs::write(&tmp, format!("{}\n", faketime_offset(offset_ms)))?;
        // Renamed into place, so libfaketime never reads a half-written file.
        std::fs::rename(&tmp, dir.join("clock"))?;
        Ok(())
    }

    /// Steps node `id`'s wall clock to `offset_ms` from the true time (the cluster must run
    /// under faketime); returns once the node has certainly reread it.
    pub async fn set_clock(&self, id: u64, offset_ms: i64) -> Result<()> {
        if !self.faketime {
            bail!("the cluster does not run under faketime");
        }
        self.write_clock(id, offset_ms)?;
        // libfaketime rereads the file once more than the cache duration's whole seconds
        // have passed since its last read: up to one second more.
        tokio::time::sleep(Duration::from_millis((FAKETIME_CACHE_S + 1) * 1000 + 200)).await;
        Ok(())
    }

    /// The value of the metric `name` (a line `name{…} value`) on node `id`, summed over its
    /// label sets; 0 when absent.
    pub fn metric(&self, id: u64, name: &str) -> Result<f64> {
        let (code, body) = self.http_get(id, "/metrics")?;
        if code != 200 {
            bail!("/metrics of node {id} answered {code}");
        }
        Ok(body
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// [`Cluster::metric`] summed over every node.
    pub fn metric_total(&self, name: &str) -> Result<f64> {
        self.nodes.iter().map(|n| self.metric(n.id, name)).sum()
    }

    /// GET `path` from node `id`'s HTTP port: the status code and the body.
    pub fn http_get(&self, id: u64, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.node(id).http)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status line")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// SIGTERM, as an orderly stop, without waiting for the process to exit.
    pub fn terminate(&mut self, id: u64) -> Result<()> {
        let child = self
            .node_mut(id)
            .child
            .as_ref()
            .context("node is not running")?;
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed: {status}");
        }
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Exit status of node `id` if its process ended.
    pub fn try_exit(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.node_mut(id)
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stderr(&self, id: u64) -> String {
        std::fs::read_to_string(self.node(id).dir.join("stderr.log")).unwrap_or_default()
    }

    /// Deletes node `id`'s data directory (the node must be stopped).
    pub fn wipe(&self, id: u64) -> Result<()> {
        let data = self.node(id).dir.join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data)?;
        }
        Ok(())
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.node(id).dir.join("data")
    }

    /// A client of the given nodes only (with TLS, as the admin certificate).
    pub fn client_of(&self, ids: &[u64]) -> Client {
        let endpoints: Vec<String> = ids.iter().map(|&i| self.node(i).addr.clone()).collect();
        let tls = self.certs.as_ref().map(|dir| {
            let admin = (dir.join("client-admin.crt"), dir.join("client-admin.key"));
            Tls::from_files(&dir.join("ca.crt"), Some((&admin.0, &admin.1)))
                .expect("the CA and the admin certificate are readable")
        });
        Client::with_options(
            &endpoints,
            RetryPolicy {
                budget: Duration::from_secs(30),
                attempt_timeout: Duration::from_secs(12),
            },
            tls,
        )
        .expect("valid endpoints")
    }

    /// A client of every node.
    pub fn client(&self) -> Client {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        self.client_of(&ids)
    }

    /// Cluster status as seen by any live node.
    pub async fn status(&self) -> Result<v1::ClusterStatusResponse> {
        Ok(self.client().cluster_status().await?)
    }

    /// Waits until every partition reports a leader among live nodes.
    pub async fn wait_all_led(&self, within: Duration) -> Result<v1::ClusterStatusResponse> {
        let deadline = Instant::now() + within;
        let mut last;
        loop {
            match self.status().await {
                Ok(s) if s.partitions.iter().all(|p| p.leader != 0) => return Ok(s),
                Ok(s) => {
                    last = format!(
                        "{:?}",
                        s.partitions.iter().map(|p| p.leader).collect::<Vec<_>>()
                    )
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!("not every partition got a leader within {within:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn leader_of(&self, partition: u32) -> Result<u64> {
        let s = self.status().await?;
        let p = s
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .context("partition missing from status")?;
        if p.leader == 0 {
            bail!("partition {partition} has no leader");
        }
        Ok(p.leader)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A schedule request due `delay` from now with a text payload.
pub fn schedule_in(
    workflow: &str,
    timer: &str,
    delay: Duration,
    payload: &str,
) -> v1::ScheduleRequest {
    v1::ScheduleRequest {
        workflow_id: workflow.into(),
        timer_id: timer.into(),
        queue: String::new(),
        when: Some(v1::schedule_request::When::Delay(
            prost_types::Duration::try_from(delay).expect("a delay within i64 seconds"),
        )),
        payload: payload.as_bytes().to_vec(),
    }
}

/// One delivery as `hourglass worker` printed it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub workflow_id: String,
    pub timer_id: String,
    pub attempt: u64,
    pub fire_at_ms: u64,
    pub fired_at_ms: u64,
    pub delivered_at_ms: u64,
    pub payload: String,
    /// When this test read the delivery, by the test's own (true) clock.
    pub received_ms: u64,
}

fn parse_rfc3339_ms(v: &serde_json::Value) -> u64 {
    v.as_str()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An `hourglass worker` process; its deliveries are collected as they are printed.
pub struct WorkerProc {
    child: Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
}

impl WorkerProc {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGSTOP: the process keeps its connections but neither reads nor answers (not even
    /// HTTP/2 pings). Dropping the worker still kills it.
    pub fn pause(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-STOP", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -STOP failed: {status}");
        }
        Ok(())
    }

    /// Waits until `pred` holds over the deliveries seen so far.
    pub async fn wait_for(
        &self,
        within: Duration,
        pred: impl Fn(&[Seen]) -> bool,
    ) -> Result<Vec<Seen>> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen();
            if pred(&seen) {
                return Ok(seen);
            }
            if Instant::now() > deadline {
                bail!(
                    "condition not met within {within:?}; {} deliveries seen",
                    seen.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    /// Starts `hourglass worker --queue QUEUE` with extra arguments against every node.
    pub fn worker(&self, queue: &str, extra: &[&str]) -> Result<WorkerProc> {
        let endpoints: Vec<String> = self.nodes.iter().map(|n| n.addr.clone()).collect();
        let mut child = Command::new(hourglass_bin())
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .arg("worker")
            .arg("--queue")
            .arg(queue)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning hourglass worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let s = Seen {
                    workflow_id: v["workflow_id"].as_str().unwrap_or_default().to_owned(),
                    timer_id: v["timer_id"].as_str().unwrap_or_default().to_owned(),
                    attempt: v["attempt"].as_u64().unwrap_or(0),
                    fire_at_ms: parse_rfc3339_ms(&v["fire_at"]),
                    fired_at_ms: parse_rfc3339_ms(&v["fired_at"]),
                    delivered_at_ms: parse_rfc3339_ms(&v["delivered_at"]),
                    payload: v["payload"].as_str().unwrap_or_default().to_owned(),
                    received_ms: now_ms(),
                };
                sink.lock().expect("seen lock").push(s);
            }
        });
        Ok(WorkerProc { child, seen })
    }
}

/// A schedule request due at an absolute time, in milliseconds since the epoch.
pub fn schedule_at(
    workflow: &str,
    timer: &str,
    queue: &str,
    at_ms: u64,
    payload: &str,
) -> v1::ScheduleRequest {
    v1::ScheduleRequest {
        workflow_id: workflow.into(),
        timer_id: timer.into(),
        queue: queue.into(),
        when: Some(v1::schedule_request::When::FireAt(
            prost_types::Timestamp::from(std::time::UNIX_EPOCH + Duration::from_millis(at_ms)),
        )),
        payload: payload.as_bytes().to_vec(),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
