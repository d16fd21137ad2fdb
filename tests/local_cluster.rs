//! Drives `deploy/local-cluster.sh` as an operator would: up, status, kill, restart, down; and
//! a cluster it made with `up --tls`, attacked as the Security section says it resists.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use hourglass_client::{Client, RetryPolicy, Tls};
use hourglass_tests::secure::{ack, code, eventually, peer_hello, worker_stream, Credential};
use hourglass_tests::{cert, hourglass_bin, schedule_in};
use tonic::Code;

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

    /// The directory of the certificates of a cluster made with `up --tls`.
    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The CLI; on a cluster made with `up --tls`, as its admin.
    fn cli(&self, nodes: &[u16], args: &[&str]) -> Output {
        let mut command = Command::new(hourglass_bin());
        if self.certs().join("complete").exists() {
            let certs = self.certs();
            command
                .arg("--ca")
                .arg(certs.join("ca.crt"))
                .arg("--cert")
                .arg(certs.join("client-admin.crt"))
                .arg("--key")
                .arg(certs.join("client-admin.key"));
        }
        command
            .arg("--endpoints")
            .arg(self.endpoints(nodes))
            .args(args)
            .output()
            .expect("running hourglass")
    }

    /// A client of `nodes` presenting `tls`, that gives up quickly (refusals are final).
    fn client(&self, nodes: &[u16], tls: Tls) -> Client {
        let endpoints: Vec<String> = self.endpoints(nodes).split(',').map(String::from).collect();
        Client::with_options(
            &endpoints,
            RetryPolicy {
                budget: Duration::from_secs(10),
                attempt_timeout: Duration::from_secs(5),
            },
            Some(tls),
        )
        .expect("valid endpoints")
    }

    /// The secret of the token `name` that `up --tls` made.
    fn token(&self, name: &str) -> String {
        std::fs::read_to_string(self.certs().join(format!("{name}.token")))
            .expect("the token file")
            .trim()
            .to_owned()
    }

    /// `hourglass_acks_refused_total` summed over every node.
    fn acks_refused(&self) -> f64 {
        (1..=3)
            .filter_map(|i| http_get(self.base + 100 + i, "/metrics"))
            .flat_map(|text| {
                text.lines()
                    .filter(|l| l.starts_with("hourglass_acks_refused_total"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
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

/// The line of `up`'s output that contains `what`, as a shell command.
fn printed_command<'a>(up: &'a str, what: &str) -> &'a str {
    up.lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in:\n{up}"))
        .trim()
}

/// Runs `command` with bash, as a reader pasting it would; its stdout.
fn paste(command: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(command)
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_admits_only_whom_it_should() -> anyhow::Result<()> {
    let s = Script::new(23_700);
    let up = s.ok(&["up", "3", "--tls"]);
    assert!(up.contains("TLS is on"), "{up}");
    let certs = s.certs();
    let ca = certs.join("ca.crt");

    // The admin's commands work as printed, with the flags and with the variables.
    paste(printed_command(&up, "timer schedule --workflow order-1"));
    let got = paste(printed_command(&up, "--id reminder --endpoints"));
    assert!(got.contains("order-1/reminder"), "{got}");
    let exports = printed_command(&up, "export HOURGLASS_CA=");
    let status = paste(&format!(
        "{exports}; {} --endpoints {} cluster status",
        hourglass_bin().display(),
        s.endpoints(&[1])
    ));
    assert!(status.contains("partition"), "{status}");
    // So do the token holders'.
    let got = paste(printed_command(&up, "local-client.token"));
    assert!(got.contains("order-1/reminder"), "{got}");

    // Later commands keep TLS: a plain `up` finds it running, status and restart work.
    assert!(s.ok(&["up"]).contains("already running"));
    s.ok(&["restart", "2"]);
    assert!(s.ok(&["status"]).contains("node 2: running"));
    let led = |s: &Script| leaders(&s.status(&[1, 2, 3])).iter().all(Option::is_some);
    eventually("every partition led after the restart", || async {
        led(&s)
    })
    .await?;
    // Without TLS, nothing answers.
    let plain = Command::new(hourglass_bin())
        .args(["--endpoints", &s.endpoints(&[1]), "cluster", "status"])
        .output()?;
    assert!(!plain.status.success());

    // No credentials: UNAUTHENTICATED.
    let anonymous = s.client(&[1], Tls::from_files(&ca, None)?);
    assert_eq!(
        code(anonymous.cluster_status().await),
        Some(Code::Unauthenticated)
    );
    // A worker's token may not schedule.
    let worker_token = s.token("local-worker");
    let worker = s.client(
        &[1, 2, 3],
        Tls::from_files(&ca, None)?.with_token(&worker_token)?,
    );
    let refused = worker
        .schedule(schedule_in("w", "t", Duration::from_secs(60), ""))
        .await;
    assert_eq!(code(refused), Some(Code::PermissionDenied));

    // A node certificate of another CA does not reach the Raft transport, whichever CA the
    // caller trusts; the partitions stay led.
    let other = s.dir.path().join("other-ca");
    let other_dir = other.to_str().expect("UTF-8 path");
    cert(&["init", "--dir", other_dir])?;
    cert(&["node", "2", "--dir", other_dir])?;
    let forged = (other.join("node-2.crt"), other.join("node-2.key"));
    let peer1 = format!("127.0.0.1:{}", s.base + 1001);
    for trusted in [&other.join("ca.crt"), &ca] {
        let answer = peer_hello(&peer1, 1, 4, trusted, (&forged.0, &forged.1)).await;
        assert!(answer.is_err(), "the transport answered: {answer:?}");
    }
    assert!(led(&s), "a partition lost its leader");

    // A worker acking a timer it was not given: refused, and the timer is still delivered.
    let admin = s.client(
        &[1, 2, 3],
        Tls::from_files(
            &ca,
            Some((
                &certs.join("client-admin.crt"),
                &certs.join("client-admin.key"),
            )),
        )?,
    );
    let mut intruders = Vec::new();
    for i in 1..=3u16 {
        let addr = format!("127.0.0.1:{}", s.base + i);
        let stream = worker_stream(
            &addr,
            u64::from(i),
            &ca,
            Credential::Token(&worker_token),
            "elsewhere",
        )
        .await;
        intruders.push(stream.map_err(|c| anyhow::anyhow!("subscribing: {c:?}"))?);
    }
    admin
        .schedule(schedule_in("acked", "t", Duration::from_secs(1), "x"))
        .await?;
    eventually("the timer fired", || async {
        admin
            .get("acked", "t")
            .await
            .is_ok_and(|t| t.state == hourglass_client::v1::TimerState::Fired as i32)
    })
    .await?;
    let before = s.acks_refused();
    for (tx, _) in &intruders {
        tx.send(ack("acked", "t")).await?;
    }
    eventually("three refused acks", || async {
        s.acks_refused() >= before + 3.0
    })
    .await?;
    let t = admin.get("acked", "t").await?;
    assert_eq!(t.state, hourglass_client::v1::TimerState::Fired as i32);
    let delivered = paste(
        printed_command(&up, "local-worker.token")
            .replace(
                "worker --queue default",
                "worker --queue default --max-deliveries 1",
            )
            .as_str(),
    );
    let line: serde_json::Value = serde_json::from_str(delivered.trim())?;
    assert_eq!(
        (line["timer_id"].as_str(), line["attempt"].as_u64()),
        (Some("t"), Some(1))
    );
    eventually("the worker's ack completed it", || async {
        admin
            .get("acked", "t")
            .await
            .is_ok_and(|t| t.state == hourglass_client::v1::TimerState::Completed as i32)
    })
    .await?;
    drop(intruders);

    // A token removed from the tokens file is refused on every node once they reread it.
    let client_token = s.token("local-client");
    let tokens_file = certs.join("tokens.toml");
    let mut tokens: toml::Table = std::fs::read_to_string(&tokens_file)?.parse()?;
    let entries = tokens["token"].as_array_mut().expect("[[token]] entries");
    let count = entries.len();
    entries.retain(|e| e["name"].as_str() != Some("local-client"));
    assert_eq!(entries.len(), count - 1);
    std::fs::write(&tokens_file, toml::to_string(&tokens)?)?;
    for i in 1..=3 {
        let revoked = s.client(&[i], Tls::from_files(&ca, None)?.with_token(&client_token)?);
        eventually("the token's revocation", || async {
            code(revoked.get("order-1", "reminder").await) == Some(Code::Unauthenticated)
        })
        .await?;
    }
    worker.cluster_status().await?;
    Ok(())
}
