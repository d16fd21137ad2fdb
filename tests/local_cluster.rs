//! Drives `deploy/local-cluster.sh` as an operator would: up, status, kill, restart, down.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hourglass_tests::hourglass_bin;

struct Script {
    dir: tempfile::TempDir,
    base: u16,
}

impl Script {
    fn new(base: u16) -> Script {
        Script {
            dir: tempfile::Builder::new()
                .prefix("hourglass-lc-")
                .tempdir()
                .unwrap(),
            base,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local-cluster.sh");
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("HOURGLASS_CLUSTER_DIR", self.dir.path())
            .env("HOURGLASS_BIN", hourglass_bin())
            .env("HOURGLASS_BASE_PORT", self.base.to_string())
            .env("HOURGLASS_HTTP_BASE_PORT", (self.base + 100).to_string())
            .env("HOURGLASS_PARTITIONS", "4")
            .output()
            .expect("running the script")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?} failed: {text}");
        text
    }

    fn endpoints(&self, nodes: &[u16]) -> String {
        nodes
            .iter()
            .map(|i| format!("127.0.0.1:{}", self.base + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn cli(&self, nodes: &[u16], args: &[&str]) -> Output {
        Command::new(hourglass_bin())
            .arg("--endpoints")
            .arg(self.endpoints(nodes))
            .args(args)
            .output()
            .expect("running hourglass")
    }

    fn status(&self, nodes: &[u16]) -> serde_json::Value {
        let out = self.cli(nodes, &["--json", "cluster", "status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// A plain HTTP/1.0 GET on loopback; the body, or None when the port does not answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

fn leaders(status: &serde_json::Value) -> Vec<Option<u64>> {
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["leader"].as_u64())
        .collect()
}

#[test]
fn operator_session_up_kill_restart_down() {
    let s = Script::new(23_400);
    // Usage errors exit 2 and name the problem.
    let bad = s.run(&["frobnicate"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = s.run(&["kill", "x"]);
    assert_eq!(bad.status.code(), Some(2));

    let up = s.ok(&["up", "3"]);
    assert!(up.contains("Hourglass is running"), "{up}");
    // Idempotent: a second `up` finds the nodes running.
    assert!(s.ok(&["up", "3"]).contains("already running"));
    let status_text = s.ok(&["status"]);
    assert!(status_text.contains("node 3: running"), "{status_text}");
    assert!(leaders(&s.status(&[1, 2, 3])).iter().all(Option::is_some));

    let out = s.cli(
        &[1],
        &[
            "timer",
            "schedule",
            "--workflow",
            "ops",
            "--id",
            "t1",
            "--in",
            "1h",
            "--payload",
            "x",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    s.ok(&["kill", "2"]);
    assert!(s.ok(&["status"]).contains("node 2: stopped"));
    // Leaders move off node 2 and writes keep succeeding.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = leaders(&s.status(&[1, 3]));
        if l.iter().all(|x| x.is_some_and(|id| id != 2)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaders stayed on the killed node: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = s.cli(
        &[1, 3],
        &[
            "timer",
            "schedule",
            "--workflow",
            "ops",
            "--id",
            "t2",
            "--in",
            "1h",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    s.ok(&["restart", "2"]);
    // The restarted node catches up: once it leads nothing yet still reports every timer.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http_get(s.base + 102, "/metrics").unwrap_or_default();
        let pending: i64 = text
            .lines()
            .filter(|l| l.starts_with("hourglass_timers_pending{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .sum();
        if pending == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 did not catch up: pending {pending}\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The surviving nodes' metrics count the schedules they committed as leaders.
    let scheduled: u64 = [1u16, 3]
        .iter()
        .filter_map(|i| http_get(s.base + 100 + i, "/metrics"))
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.starts_with("hourglass_timers_scheduled_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(scheduled >= 1, "no scheduled timers in /metrics");
    s.ok(&["pause", "3"]);
    assert!(s.ok(&["status"]).contains("node 3: paused"));
    s.ok(&["resume", "3"]);
    assert!(s.ok(&["logs", "1"]).contains("node started"));
    s.ok(&["down"]);
    let after = s.run(&["status"]);
    assert!(String::from_utf8_lossy(&after.stdout).contains("node 1: stopped"));
    s.ok(&["wipe"]);
    assert!(!s.dir.path().join("size").exists());
}
