//! Hourglass nodes as real processes in their namespaces, with libfaketime for clock skew.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hourglass_client::{Client, Tls};

use crate::net;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// How often libfaketime rereads a node's clock file, in seconds (`FAKETIME_CACHE_DURATION`).
const CLOCK_CACHE_S: u64 = 1;

/// The longest a written offset takes to reach a node: libfaketime rereads the file once the
/// whole seconds elapsed since its last read exceed [`CLOCK_CACHE_S`], so up to
/// `CLOCK_CACHE_S + 1` seconds later, plus a margin.
pub const CLOCK_STEP_LATENCY: Duration = Duration::from_millis((CLOCK_CACHE_S + 1) * 1_000 + 200);

/// The content of a node's libfaketime clock file for a wall clock `offset_ms` from true time:
/// a relative offset in seconds (`+0`, `+600.000`, `-1.500`). libfaketime adds it to the real
/// time from the moment it reads the file, so a new value is a step, not a slew. No unit
/// letter: libfaketime would read `m`, `h`, `d` or `y` anywhere in it as a multiplier.
pub fn clock_file_offset(offset_ms: i64) -> String {
    if offset_ms == 0 {
        return "+0".to_string();
    }
    let sign = if offset_ms < 0 { '-' } else { '+' };
    let abs = offset_ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

pub struct Node {
    pub id: u64,
    child: Option<Child>,
    pub paused: bool,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub bin: PathBuf,
    pub dir: PathBuf,
    /// Extra environment for every node (the fault-injection flag).
    pub env: Vec<(String, String)>,
    /// With TLS, where the CA and the certificates are.
    certs: Option<PathBuf>,
}

/// How clients and workers reach the cluster.
#[derive(Clone)]
pub struct Access {
    pub endpoints: Vec<String>,
    /// With TLS: the cluster CA and the admin client certificate.
    pub tls: Option<Tls>,
}

/// A CA, a certificate per node (naming its address in the namespace) and an admin client
/// certificate, made by the binary under test so that the run also covers its `cert` commands.
fn make_certs(bin: &Path, dir: &Path, count: u64) -> Result<()> {
    let dir_arg = dir.to_str().context("a UTF-8 run directory")?;
    let mut steps = vec![vec!["init".to_string()]];
    for i in 1..=count {
        steps.push(vec![
            "node".into(),
            i.to_string(),
            "--host".into(),
            net::node_addr(i),
        ]);
    }
    steps.push(vec![
        "client".into(),
        "admin".into(),
        "--role".into(),
        "admin".into(),
    ]);
    for step in steps {
        let out = Command::new(bin)
            .arg("cert")
            .args(&step)
            .args(["--dir", dir_arg])
            .output()
            .with_context(|| format!("running {} cert", bin.display()))?;
        if !out.status.success() {
            bail!(
                "hourglass cert {}: {}",
                step.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

impl Cluster {
    pub fn new(
        count: u64,
        bin: PathBuf,
        dir: &Path,
        partitions: u32,
        env: Vec<(String, String)>,
        tls: bool,
    ) -> Result<Self> {
        if !Path::new(LIBFAKETIME).exists() {
            bail!("{LIBFAKETIME} is missing: install faketime (deploy/install-deps.sh faketime)");
        }
        let peers: Vec<String> = (1..=count)
            .map(|i| {
                let addr = net::node_addr(i);
                format!("\"{i}={addr}:7001/{addr}:8001\"")
            })
            .collect();
        let certs = dir.join("certs");
        if tls {
            make_certs(&bin, &certs, count)?;
        }
        for i in 1..=count {
            let tls_section = if tls {
                format!(
                    "[tls]\nca = \"{0}/ca.crt\"\ncert = \"{0}/node-{i}.crt\"\nkey = \"{0}/node-{i}.key\"\n",
                    certs.display()
                )
            } else {
                String::new()
            };
            let nd = dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&nd)?;
            std::fs::write(nd.join("clock"), format!("{}\n", clock_file_offset(0)))?;
            std::fs::write(
                nd.join("node.toml"),
                format!(
                    "node_id = {i}\nlisten = \"{addr}:7001\"\npeer_listen = \"{addr}:8001\"\n\
                     http_listen = \"{addr}:9001\"\ndata_dir = \"{}\"\n\
                     peers = [{}]\npartitions = {partitions}\nreplication_factor = 3\n\
                     [timers]\nack_timeout_ms = 5000\n{tls_section}",
                    nd.join("data").display(),
                    peers.join(", "),
                    addr = net::node_addr(i),
                ),
            )?;
        }
        let mut cluster = Cluster {
            nodes: (1..=count)
                .map(|id| Node {
                    id,
                    child: None,
                    paused: false,
                })
                .collect(),
            bin,
            dir: dir.to_path_buf(),
            env,
            certs: tls.then_some(certs),
        };
        for i in 1..=count {
            cluster.start(i)?;
        }
        Ok(cluster)
    }

    fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    pub fn access(&self) -> Result<Access> {
        let tls = match &self.certs {
            Some(dir) => Some(Tls::from_files(
                &dir.join("ca.crt"),
                Some((&dir.join("client-admin.crt"), &dir.join("client-admin.key"))),
            )?),
            None => None,
        };
        Ok(Access {
            endpoints: self
                .nodes
                .iter()
                .map(|n| format!("{}:7001", net::node_addr(n.id)))
                .collect(),
            tls,
        })
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        let n = &mut self.nodes[(id - 1) as usize];
        n.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn start(&mut self, id: u64) -> Result<()> {
        if self.is_running(id) {
            return Ok(());
        }
        let dir = self.node_dir(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net::namespace(id)])
            .arg(&self.bin)
            .args(["serve", "--config"])
            .arg(dir.join("node.toml"))
            .env("RUST_LOG", "info,openraft=warn")
            // Wall-clock skew only: tokio and openraft run on the monotonic clock.
            .env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", dir.join("clock"))
            .env("FAKETIME_CACHE_DURATION", CLOCK_CACHE_S.to_string())
            // The current name, and the one libfaketime before 0.9.8 reads.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env("DONT_FAKE_MONOTONIC", "1")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting a node")?;
        let n = &mut self.nodes[(id - 1) as usize];
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    pub fn kill(&mut self, id: u64) {
        let n = &mut self.nodes[(id - 1) as usize];
        if let Some(mut c) = n.child.take() {
            // `ip netns exec` execs the binary, so this pid is the node itself.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .output();
            let _ = c.kill();
            let _ = c.wait();
        }
        n.paused = false;
    }

    pub fn signal(&mut self, id: u64, sig: &str) {
        let n = &mut self.nodes[(id - 1) as usize];
        if let Some(c) = &n.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .output();
            n.paused = sig == "-STOP";
        }
    }

    /// Steps node `id`'s wall clock to `offset_ms` from true time (0 is true time). The node
    /// sees the step within [`CLOCK_STEP_LATENCY`]; its monotonic clock never moves.
    pub fn skew(&self, id: u64, offset_ms: i64) -> Result<()> {
        let path = self.node_dir(id).join("clock");
        // Write then rename: libfaketime never reads a half-written file.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", clock_file_offset(offset_ms)))?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The current leader of each partition, as the live nodes report it.
    pub async fn leaders(&self, client: &Client) -> Vec<u64> {
        self.leader_map(client)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }

    /// (partition, leader) for every partition with a known leader.
    pub async fn leader_map(&self, client: &Client) -> Vec<(u32, u64)> {
        match tokio::time::timeout(Duration::from_secs(3), client.cluster_status()).await {
            Ok(Ok(s)) => s
                .partitions
                .iter()
                .filter(|p| p.leader != 0)
                .map(|p| (p.partition, p.leader))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn shutdown(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.kill(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_file_offsets_are_plain_seconds() {
        assert_eq!(clock_file_offset(0), "+0");
        assert_eq!(clock_file_offset(1_500), "+1.500");
        assert_eq!(clock_file_offset(-1_500), "-1.500");
        assert_eq!(clock_file_offset(-7), "-0.007");
        assert_eq!(clock_file_offset(600_000), "+600.000");
        assert_eq!(clock_file_offset(-600_000), "-600.000");
        for ms in [-600_000, -1, 1, 59_999, 600_000] {
            let s = clock_file_offset(ms);
            assert!(!s.contains(['m', 'h', 'd', 'y']), "{s}");
            // What libfaketime's atof() makes of it.
            let secs: f64 = s.parse().unwrap();
            assert_eq!((secs * 1000.0).round() as i64, ms);
        }
    }
}
