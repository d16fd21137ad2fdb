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
    let mut dev = Command::new(hourglass_bin())
        .args([
            "dev",
            "--partitions",
            "4",
            "--base-port",
            &BASE.to_string(),
            "--data",
        ])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.path().join("dev.log")).unwrap())
        .spawn()
        .unwrap();
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
