//! The test network: one namespace per node on a bridge, with iptables partitions inside the
//! namespaces. Everything is named `hgj-*` so that a later run (or `cleanup`) can remove what
//! a crashed run left behind.

use std::process::Command;

use anyhow::{bail, Context, Result};

pub const BRIDGE: &str = "hgj-br0";
/// The harness's own address on the bridge; clients and workers run in the root namespace.
pub const HOST_ADDR: &str = "10.213.0.1";

pub fn namespace(node: u64) -> String {
    format!("hgj-n{node}")
}

pub fn node_addr(node: u64) -> String {
    format!("10.213.0.{}", 10 + node)
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

/// Kills every process in the harness's namespaces and removes them and the bridge.
pub fn teardown() {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let names = out
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    for ns in names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("hgj-n"))
    {
        if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                run_quiet(&["kill", "-CONT", pid]);
                run_quiet(&["kill", "-9", pid]);
            }
        }
        run_quiet(&["ip", "netns", "del", ns]);
    }
    for i in 1..=9 {
        run_quiet(&["ip", "link", "del", &format!("hgj-v{i}")]);
    }
    run_quiet(&["ip", "link", "del", BRIDGE]);
}

/// Creates the bridge and one namespace per node with its own address.
pub fn setup(nodes: u64) -> Result<()> {
    teardown();
    run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{HOST_ADDR}/24"),
        "dev",
        BRIDGE,
    ])?;
    run(&["ip", "link", "set", BRIDGE, "up"])?;
    for i in 1..=nodes {
        let ns = namespace(i);
        let veth = format!("hgj-v{i}");
        run(&["ip", "netns", "add", &ns])?;
        run(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        run(&["ip", "link", "set", &veth, "master", BRIDGE])?;
        run(&["ip", "link", "set", &veth, "up"])?;
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", node_addr(i)),
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// Cuts traffic between `node` and each of `others`, in both directions, inside `node`'s
/// namespace. The harness (on the bridge address) still reaches every node.
pub fn cut(node: u64, others: &[u64]) -> Result<()> {
    let ns = namespace(node);
    for &o in others {
        let addr = node_addr(o);
        run(&[
            "ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &addr, "-j", "DROP",
        ])?;
        run(&[
            "ip", "netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-d", &addr, "-j", "DROP",
        ])?;
    }
    Ok(())
}

/// Removes every partition rule of `node`.
pub fn heal(node: u64) {
    let ns = namespace(node);
    run_quiet(&["ip", "netns", "exec", &ns, "iptables", "-F", "INPUT"]);
    run_quiet(&["ip", "netns", "exec", &ns, "iptables", "-F", "OUTPUT"]);
}
