//! The `hourglass` command line against `hourglass dev`: a whole cluster in one process.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hourglass_tests::hourglass_bin;

const BASE: u16 = 24_600;

fn cli(args: &[&str]) -> Output {
    Command::new(hourglass_bin())
        .arg("--endpoints")
        .arg(format!("127.0.0.1:{},127.0.0.1:{}", BASE + 1, BASE + 2))
        .args(args)
        .output()
        .expect("running hourglass")
}

/// `hourglass dev ARGS --data DATA`, its stdout piped, its log in DATA/dev.log.
fn spawn_dev(args: &[&str], data: &std::path::Path) -> std::process::Child {
    Command::new(hourglass_bin())
        .arg("dev")
        .args(args)
        .arg("--data")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.join("dev.log")).unwrap())
        .spawn()
        .unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

#[test]
fn dev_cluster_and_cli_round_trip() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = spawn_dev(
        &["--partitions", "4", "--base-port", &BASE.to_string()],
        data.path(),
    );
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines.next().expect("dev printed its endpoints").unwrap();
        if line.contains("cluster is up") {
            break;
        }
        assert!(Instant::now() < deadline);
    }

    // Payloads that are not UTF-8 print as base64, and say so.
    let payload = data.path().join("payload.bin");
    std::fs::write(&payload, [0xff, 0xfe, 0x00]).unwrap();
    let scheduled = json(&cli(&[
        "--json",
        "timer",
        "schedule",
        "--workflow",
        "w",
        "--id",
        "t",
        "--in",
        "1h",
        "--payload-file",
        payload.to_str().unwrap(),
    ]));
    assert_eq!(scheduled["created"], true);
    assert_eq!(scheduled["timer"]["payload_encoding"], "base64");
    assert_eq!(scheduled["timer"]["payload"], "//4A");
    let got = json(&cli(&[
        "--json",
        "timer",
        "get",
        "--workflow",
        "w",
        "--id",
        "t",
    ]));
    assert_eq!(got["state"], "scheduled");
    let text = cli(&["timer", "get", "--workflow", "w", "--id", "t"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("w/t  scheduled"));

    // Exit codes: 1 for errors the cluster reports, 2 for usage errors.
    let missing = cli(&["timer", "get", "--workflow", "w", "--id", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
    let bad_queue = cli(&[
        "timer",
        "schedule",
        "--workflow",
        "w",
        "--id",
        "q",
        "--in",
        "1s",
        "--queue",
        "a b",
    ]);
    assert_eq!(bad_queue.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad_queue.stderr).to_string();
    assert!(
        err.contains("InvalidArgument") && err.contains("queue"),
        "{err}"
    );
    let bad_delay = cli(&[
        "timer",
        "schedule",
        "--workflow",
        "w",
        "--id",
        "q",
        "--in",
        "banana",
    ]);
    assert_eq!(bad_delay.status.code(), Some(2));
    let no_when = cli(&["timer", "schedule", "--workflow", "w", "--id", "q"]);
    assert_eq!(no_when.status.code(), Some(2));

    let listed = json(&cli(&["--json", "timer", "list", "--workflow", "w"]));
    assert_eq!(listed["timers"].as_array().unwrap().len(), 1);
    let status = json(&cli(&["--json", "cluster", "status"]));
    assert_eq!(status["partitions"].as_array().unwrap().len(), 4);
    assert!(status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["leader"].is_u64()));

    // A worker prints the delivery as one JSON line and acknowledges it.
    let out = cli(&[
        "timer",
        "schedule",
        "--workflow",
        "w",
        "--id",
        "soon",
        "--in",
        "500ms",
        "--payload",
        "hi",
    ]);
    assert!(out.status.success());
    let worker = cli(&["worker", "--queue", "default", "--max-deliveries", "1"]);
    let line = json(&worker);
    assert_eq!(line["timer_id"], "soon");
    assert_eq!(line["payload"], "hi");
    assert_eq!(line["attempt"], 1);
    for field in ["fire_at", "fired_at", "delivered_at"] {
        assert!(line[field].is_string(), "{field} missing: {line}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = json(&cli(&[
            "--json",
            "timer",
            "get",
            "--workflow",
            "w",
            "--id",
            "soon",
        ]));
        if t["state"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ack never completed the timer: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Ctrl-C stops the whole dev cluster cleanly.
    Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = dev.try_wait().unwrap() {
            let log = std::fs::read_to_string(data.path().join("dev.log")).unwrap_or_default();
            let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
            assert!(
                status.success(),
                "dev exited with {status}; last log lines (newest first):\n{tail}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "dev did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `hourglass serve --print-config` with `args`, only the `HOURGLASS_*` variables in `env`.
fn print_config(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(hourglass_bin());
    for (var, _) in std::env::vars() {
        if var.starts_with("HOURGLASS_") {
            command.env_remove(var);
        }
    }
    command
        .args(["serve", "--print-config"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running hourglass")
}

fn printed(out: &Output) -> toml::Table {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("--print-config prints TOML")
}

fn failure(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_print_config_layers_file_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "node_id = 1\nreplication_factor = 1\npartitions = 8\nrequest_timeout_ms = 7000\n\
         [timers]\nwindow_ms = 45000\nbatch = 200\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let t = printed(&print_config(&[], &["--config", file]));
    assert_eq!(t["partitions"].as_integer(), Some(8));
    assert_eq!(t["request_timeout"].as_str(), Some("7s"));
    assert_eq!(t["timers"]["window"].as_str(), Some("45s"));

    let env = [
        ("HOURGLASS_PARTITIONS", "4"),
        ("HOURGLASS_TIMERS__WINDOW", "30s"),
        ("HOURGLASS_RAFT__HEARTBEAT_INTERVAL", "100ms"),
        ("HOURGLASS_HTTP_LISTEN", "127.0.0.1:9999"),
        ("HOURGLASS_TIMERS__ACK_TIMEOUT_MS", "2000"),
        // Not configuration keys: ignored.
        ("HOURGLASS_ENDPOINTS", "127.0.0.1:7001"),
        ("HOURGLASS_BIN", "/bin/true"),
    ];
    let t = printed(&print_config(&env, &["--config", file]));
    assert_eq!(t["partitions"].as_integer(), Some(4));
    assert_eq!(t["timers"]["window"].as_str(), Some("30s"));
    assert_eq!(t["timers"]["batch"].as_integer(), Some(200));
    assert_eq!(t["raft"]["heartbeat_interval"].as_str(), Some("100ms"));
    assert_eq!(t["http_listen"].as_str(), Some("127.0.0.1:9999"));
    assert_eq!(t["timers"]["ack_timeout"].as_str(), Some("2s"));

    let flags = [
        "--config",
        file,
        "--partitions",
        "2",
        "--max-clock-offset-ms",
        "250",
        "--set",
        "timers.batch=300",
        "--set",
        "timers.window=1m 30s",
    ];
    let out = print_config(&env, &flags);
    let t = printed(&out);
    assert_eq!(t["partitions"].as_integer(), Some(2));
    assert_eq!(t["max_clock_offset"].as_str(), Some("250ms"));
    assert_eq!(t["timers"]["batch"].as_integer(), Some(300));
    assert_eq!(t["timers"]["window"].as_str(), Some("1m 30s"));
    assert_eq!(t["raft"]["heartbeat_interval"].as_str(), Some("100ms"));
    assert_eq!(t["raft"]["election_timeout_min"].as_str(), Some("1s"));
    // Every key is printed, unset ones included, and the output reads back as it was.
    let mut keys = 0;
    for (key, value) in &t {
        keys += value.as_table().map_or(1, |section| {
            assert!(!section.is_empty(), "{key}");
            section.len()
        });
    }
    assert_eq!(keys, 47, "{t:?}");
    assert_eq!(t["advertise"].as_str(), Some(""));
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &out.stdout).unwrap();
    let reread = print_config(&[], &["--config", again.to_str().unwrap()]);
    assert_eq!(printed(&reread), t);
    assert_eq!(reread.stdout, out.stdout);
}

#[test]
fn serve_print_config_refuses_unknown_and_doubled_keys() {
    let base = ["--node-id", "1", "--replication-factor", "1"];
    // Unknown names are built with format! so the repository scan of config.rs skips them.
    let unknown = format!("HOURGLASS_{}", "TIMERS__WINDWO");
    let e = failure(&print_config(&[(&unknown, "30s")], &base));
    assert!(e.contains(&unknown), "{e}");
    let e = failure(&print_config(
        &[
            ("HOURGLASS_TIMERS__WINDOW", "30s"),
            ("HOURGLASS_TIMERS__WINDOW_MS", "30000"),
        ],
        &base,
    ));
    assert!(
        e.contains("HOURGLASS_TIMERS__WINDOW and HOURGLASS_TIMERS__WINDOW_MS"),
        "{e}"
    );
    let e = failure(&print_config(
        &[],
        &[&base[..], &["--set", "timers.windwo=1s"]].concat(),
    ));
    assert!(e.contains("timers.windwo"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "node_id = 1\nreplication_factor = 1\n[raft]\nheartbeat = \"1s\"\n",
    )
    .unwrap();
    let e = failure(&print_config(&[], &["--config", file.to_str().unwrap()]));
    assert!(e.contains("raft.heartbeat"), "{e}");
    // Validation runs too, naming the keys in their current spelling.
    let e = failure(&print_config(
        &[("HOURGLASS_RAFT__HEARTBEAT_INTERVAL", "800ms")],
        &base,
    ));
    assert!(e.contains("raft.heartbeat_interval"), "{e}");

    // Fault injection is for test builds only: the release binary refuses it, from any source.
    for (var, value) in [
        ("HOURGLASS_FAULT__LOSE_FIRED_FRACTION", "0.05"),
        ("HOURGLASS_FAULT__EARLY_FIRE", "2s"),
    ] {
        let e = failure(&print_config(&[(var, value)], &base));
        assert!(e.contains("built without fault injection"), "{var}: {e}");
    }
}

/// `hourglass dev --tls`: prints how to connect, and the printed command works while a
/// plaintext one is refused.
#[test]
fn dev_with_tls_prints_a_working_connection() {
    const TLS_BASE: u16 = 25_000;
    let data = tempfile::tempdir().unwrap();
    let mut dev = spawn_dev(
        &[
            "--tls",
            "--nodes",
            "1",
            "--partitions",
            "2",
            "--base-port",
            &TLS_BASE.to_string(),
        ],
        data.path(),
    );
    let mut printed = Vec::new();
    for line in BufReader::new(dev.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("press Ctrl-C") {
            break;
        }
        printed.push(line);
    }
    let log = || std::fs::read_to_string(data.path().join("dev.log")).unwrap_or_default();
    assert!(
        printed.iter().any(|l| l.contains("cluster is up")),
        "{printed:?}\n{}",
        log()
    );
    let certs = data.path().join("certs");
    let exports = printed
        .iter()
        .find_map(|l| l.strip_prefix("connect:"))
        .unwrap_or_else(|| panic!("no connect line: {printed:?}"));
    assert!(exports.contains(&format!("HOURGLASS_CA={}", certs.join("ca.crt").display())));
    let status = printed
        .iter()
        .find(|l| l.ends_with("cluster status"))
        .unwrap()
        .split_once("hourglass ")
        .unwrap()
        .1;
    let pasted = Command::new("bash")
        .arg("-c")
        .arg(format!("{} {status}", hourglass_bin().display()))
        .output()
        .unwrap();
    assert!(
        pasted.status.success(),
        "{status}: {}",
        String::from_utf8_lossy(&pasted.stderr)
    );
    assert!(String::from_utf8_lossy(&pasted.stdout).contains("partition"));
    let via_env = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{exports}; {} --endpoints 127.0.0.1:{} cluster status",
            hourglass_bin().display(),
            TLS_BASE + 1
        ))
        .output()
        .unwrap();
    assert!(
        via_env.status.success(),
        "{}",
        String::from_utf8_lossy(&via_env.stderr)
    );
    let plain = Command::new(hourglass_bin())
        .args(["--endpoints", &format!("127.0.0.1:{}", TLS_BASE + 1)])
        .args(["cluster", "status"])
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plaintext answered");
    Command::new("kill")
        .args(["-INT", &dev.id().to_string()])
        .status()
        .unwrap();
    let status = dev.wait().unwrap();
    assert!(status.success(), "dev exited with {status}\n{}", log());
}
