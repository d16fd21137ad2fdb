//! Hourglass nodes as real processes in their namespaces, with libfaketime for clock skew.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use hourglass_client::Client;

use crate::net;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

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
}

impl Cluster {
    pub fn new(
        count: u64,
        bin: PathBuf,
        dir: &Path,
        partitions: u32,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        if !Path::new(LIBFAKETIME).exists() {
            anyhow::bail!(
                "{LIBFAKETIME} is missing: install faketime (deploy/install-deps.sh faketime)"
            );
        }
        let peers: Vec<String> = (1..=count)
            .map(|i| format!("\"{i}={}:7001\"", net::node_addr(i)))
            .collect();
        for i in 1..=count {
            let nd = dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&nd)?;
            std::fs::write(nd.join("clock"), "+0\n")?;
            std::fs::write(
                nd.join("node.toml"),
                format!(
                    "node_id = {i}\nlisten = \"{addr}:7001\"\nhttp_listen = \"{addr}:9001\"\ndata_dir = \"{}\"\n\
                     peers = [{}]\npartitions = {partitions}\nreplication_factor = 3\n\
                     [timers]\nack_timeout_ms = 5000\n",
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
        };
        for i in 1..=count {
            cluster.start(i)?;
        }
        Ok(cluster)
    }

    fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("{}:7001", net::node_addr(n.id)))
            .collect()
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
            .env("FAKETIME_CACHE_DURATION", "1")
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

    /// Sets node `id`'s wall clock offset, e.g. `+3s`, `-2s`, `+0`.
    pub fn skew(&self, id: u64, offset: &str) -> Result<()> {
        std::fs::write(self.node_dir(id).join("clock"), format!("{offset}\n"))?;
        Ok(())
    }

    /// The current leader of each partition, as the live nodes report it.
    pub async fn leaders(&self, client: &Client) -> Vec<u64> {
        match tokio::time::timeout(Duration::from_secs(3), client.cluster_status()).await {
            Ok(Ok(s)) => s
                .partitions
                .iter()
                .map(|p| p.leader)
                .filter(|&l| l != 0)
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
