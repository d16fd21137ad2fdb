//! `timer …` and `cluster …`.

use std::io::Read;
use std::time::UNIX_EPOCH;

use hourglass_client::{v1, Client};
use serde_json::json;

use crate::cli::{ClusterCommand, Global, ScheduleArgs, TimerCommand};
use crate::output::{timer_json, timer_text};
use crate::{usage, Failure};

fn client(global: &Global) -> Result<Client, Failure> {
    global.client()
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("json values serialize")
    );
}

fn schedule_request(args: ScheduleArgs) -> Result<v1::ScheduleRequest, Failure> {
    let when = match (&args.delay, &args.at) {
        (Some(d), None) => {
            let parsed =
                humantime::parse_duration(d).map_err(|e| usage(format!("--in {d:?}: {e}")))?;
            v1::schedule_request::When::Delay(
                prost_types::Duration::try_from(parsed)
                    .map_err(|e| usage(format!("--in {d:?}: {e}")))?,
            )
        }
        (None, Some(at)) => {
            let t = humantime::parse_rfc3339_weak(at).map_err(|e| {
                usage(format!(
                    "--at {at:?}: {e}; expected RFC 3339 like 2030-01-01T00:00:00Z"
                ))
            })?;
            if t < UNIX_EPOCH {
                return Err(usage(format!("--at {at:?} is before 1970")));
            }
            v1::schedule_request::When::FireAt(prost_types::Timestamp::from(t))
        }
        _ => return Err(usage("give exactly one of --in or --at")),
    };
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| usage(format!("--payload-file {}: {e}", path.display())))?,
        (None, None) => Vec::new(),
    };
    Ok(v1::ScheduleRequest {
        workflow_id: args.key.workflow,
        timer_id: args.key.timer_id,
        queue: args.queue,
        when: Some(when),
        payload,
    })
}

pub async fn timer(global: &Global, cmd: TimerCommand) -> Result<(), Failure> {
    match cmd {
        TimerCommand::Schedule(args) => {
            let request = schedule_request(args)?;
            let client = client(global)?;
            let response = client.schedule(request).await?;
            let timer = response.timer.unwrap_or_default();
            if global.json {
                print_json(&json!({ "created": response.created, "timer": timer_json(&timer) }));
            } else {
                let verb = if response.created {
                    "scheduled"
                } else {
                    "already scheduled"
                };
                println!("{verb}: {}", timer_text(&timer));
            }
        }
        TimerCommand::Cancel(key) => {
            let response = client(global)?.cancel(&key.workflow, &key.timer_id).await?;
            let outcome = match v1::CancelOutcome::try_from(response.outcome) {
                Ok(v1::CancelOutcome::Cancelled) => "cancelled",
                Ok(v1::CancelOutcome::AlreadyFired) => "already_fired",
                _ => "unspecified",
            };
            let timer = response.timer.unwrap_or_default();
            if global.json {
                print_json(&json!({ "outcome": outcome, "timer": timer_json(&timer) }));
            } else {
                println!("{}: {}", outcome.replace('_', " "), timer_text(&timer));
            }
        }
        TimerCommand::Get(key) => {
            let timer = client(global)?.get(&key.workflow, &key.timer_id).await?;
            if global.json {
                print_json(&timer_json(&timer));
            } else {
                println!("{}", timer_text(&timer));
            }
        }
        TimerCommand::List(args) => {
            let timers = client(global)?.list(&args.workflow).await?;
            if global.json {
                print_json(&json!({ "timers": timers.iter().map(timer_json).collect::<Vec<_>>() }));
            } else if timers.is_empty() {
                println!("no timers for workflow {:?}", args.workflow);
            } else {
                for t in &timers {
                    println!("{}", timer_text(t));
                }
            }
        }
    }
    Ok(())
}

pub async fn cluster(global: &Global, cmd: ClusterCommand) -> Result<(), Failure> {
    match cmd {
        ClusterCommand::Status => {
            let s = client(global)?.cluster_status().await?;
            if global.json {
                print_json(&json!({
                    "answered_by": s.answered_by,
                    "partition_count": s.partition_count,
                    "replication_factor": s.replication_factor,
                    "nodes": s.nodes.iter().map(|n| json!({
                        "node_id": n.node_id, "address": n.address, "reachable": n.reachable,
                        "http_address": n.http_address, "rss_bytes": n.rss_bytes,
                        "store_memory_bytes": n.store_memory_bytes, "disk_bytes": n.disk_bytes,
                        "clock_offset_ms": n.clock_offset_ms,
                        "clock_out_of_bounds": n.clock_out_of_bounds,
                    })).collect::<Vec<_>>(),
                    "partitions": s.partitions.iter().map(|p| json!({
                        "partition": p.partition, "replicas": p.replicas,
                        "leader": if p.leader == 0 { None } else { Some(p.leader) },
                        "term": p.term, "applied_index": p.applied_index, "timers_pending": p.timers_pending,
                        "timers_in_memory": p.timers_in_memory,
                    })).collect::<Vec<_>>(),
                }));
                return Ok(());
            }
            let led = s.partitions.iter().filter(|p| p.leader != 0).count();
            println!(
                "cluster: {} nodes, {} partitions ({} with a leader), replication factor {}, answered by node {}",
                s.nodes.len(),
                s.partition_count,
                led,
                s.replication_factor,
                s.answered_by
            );
            for n in &s.nodes {
                let leads = s
                    .partitions
                    .iter()
                    .filter(|p| p.leader == n.node_id)
                    .count();
                let state = if n.reachable { "up" } else { "UNREACHABLE" };
                let clock = match (n.clock_offset_ms, n.clock_out_of_bounds) {
                    (Some(ms), true) => format!("clock {ms:+} ms OUT OF BOUNDS"),
                    (Some(ms), false) => format!("clock {ms:+} ms"),
                    (None, _) => "clock ?".to_string(),
                };
                println!(
                    "  node {:<3} {:<22} {:<12} leads {leads:<3} partitions  rss {} MiB (rocksdb {} MiB)  disk {} MiB  {clock}",
                    n.node_id,
                    n.address,
                    state,
                    n.rss_bytes >> 20,
                    n.store_memory_bytes >> 20,
                    n.disk_bytes >> 20,
                );
            }
            println!("  partition  leader  term  applied  pending  in-memory  replicas");
            for p in &s.partitions {
                let leader = if p.leader == 0 {
                    "-".to_string()
                } else {
                    p.leader.to_string()
                };
                println!(
                    "  {:<10} {:<7} {:<5} {:<8} {:<8} {:<10} {:?}",
                    p.partition,
                    leader,
                    p.term,
                    p.applied_index,
                    p.timers_pending,
                    p.timers_in_memory,
                    p.replicas
                );
            }
        }
    }
    Ok(())
}
