//! `hourglass bench`: load against a running cluster. Figures are printed as a table, or as
//! JSON with `--json`; docs/benchmarks.md records them with the command and the machine.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hourglass_client::{v1, Client, Worker, WorkerOptions};
use serde_json::json;

use crate::cli::{BenchCommand, Global};
use crate::{usage, Failure};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch of a timestamp; 0 when unset or out of range.
fn ts_ms(t: &Option<prost_types::Timestamp>) -> u64 {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

fn parse_duration(flag: &str, v: &str) -> Result<Duration, Failure> {
    humantime::parse_duration(v).map_err(|e| usage(format!("{flag} {v:?}: {e}")))
}

fn request(workflow: String, timer: String, queue: &str, at_ms: u64) -> v1::ScheduleRequest {
    v1::ScheduleRequest {
        workflow_id: workflow,
        timer_id: timer,
        queue: queue.to_owned(),
        when: Some(v1::schedule_request::When::FireAt(
            prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(at_ms)),
        )),
        payload: Vec::new(),
    }
}

/// Percentile of a sorted slice.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// How the load generator schedules.
#[derive(Clone, Copy)]
struct Load {
    /// Requests in flight.
    concurrency: u64,
    /// Timers per request: 1 uses `Schedule`, more use `ScheduleBatch`.
    batch: u64,
}

/// Schedules `count` timers; `at(i)` gives each due time.
async fn schedule_many(
    client: &Arc<Client>,
    run: &str,
    queue: &str,
    count: u64,
    load: Load,
    at: impl Fn(u64) -> u64 + Send + Sync + 'static,
) -> Result<Duration, Failure> {
    let next = Arc::new(AtomicU64::new(0));
    let at = Arc::new(at);
    let started = Instant::now();
    let batch = load.batch.clamp(1, 1000);
    let mut tasks = Vec::new();
    for _ in 0..load.concurrency.max(1) {
        let (client, next, at, run, queue) = (
            Arc::clone(client),
            Arc::clone(&next),
            Arc::clone(&at),
            run.to_owned(),
            queue.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= count {
                    return Ok::<(), hourglass_client::Error>(());
                }
                let requests: Vec<_> = (first..(first + batch).min(count))
                    .map(|i| {
                        request(
                            format!("{run}-w{}", i % 10_000),
                            format!("t{i}"),
                            &queue,
                            at(i),
                        )
                    })
                    .collect();
                if requests.len() == 1 {
                    client
                        .schedule(requests.into_iter().next().expect("one request"))
                        .await?;
                } else {
                    for outcome in client.schedule_batch(requests).await? {
                        outcome?;
                    }
                }
                if first / 100_000 != (first + batch) / 100_000 && first > 0 {
                    eprintln!(
                        "bench: scheduled {} of {count}",
                        (first + batch) / 100_000 * 100_000
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| anyhow::anyhow!("schedule task: {e}"))??;
    }
    Ok(started.elapsed())
}

pub async fn run(global: &Global, cmd: BenchCommand) -> Result<(), Failure> {
    let client = Arc::new(global.client()?);
    let run = format!("bench-{}-{}", std::process::id(), now_ms());
    match cmd {
        BenchCommand::Steady {
            rate,
            duration,
            lead,
        } => {
            let duration = parse_duration("--duration", &duration)?;
            let lead = parse_duration("--lead", &lead)?;
            if rate == 0 {
                return Err(usage("--rate must be positive"));
            }
            let queue = run.clone();
            let mut worker = Worker::start(
                Arc::clone(&client),
                WorkerOptions {
                    credits: 10_000,
                    ..WorkerOptions::new(queue.clone())
                },
            )
            .await?;
            let total = rate * duration.as_secs().max(1);
            eprintln!("bench: {total} timers at {rate}/s, each due {lead:?} after scheduling");
            // Schedules `rate / 100` timers every 10 ms, each due `lead` later.
            let producer = {
                let client = Arc::clone(&client);
                let (run, queue) = (run.clone(), queue.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    let per_tick = (rate / 100).max(1);
                    let mut i = 0u64;
                    while i < total {
                        tick.tick().await;
                        let due = now_ms() + lead.as_millis() as u64;
                        for _ in 0..per_tick.min(total - i) {
                            let client = Arc::clone(&client);
                            let req = request(
                                format!("{run}-w{}", i % 10_000),
                                format!("t{i}"),
                                &queue,
                                due,
                            );
                            tokio::spawn(async move { client.schedule(req).await });
                            i += 1;
                        }
                    }
                })
            };
            let mut lateness = Vec::with_capacity(total as usize);
            let mut end_to_end = Vec::with_capacity(total as usize);
            let mut seen = HashSet::new();
            let deadline = Instant::now() + duration + lead + Duration::from_secs(60);
            while (seen.len() as u64) < total && Instant::now() < deadline {
                let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), worker.next()).await
                else {
                    continue;
                };
                let received = now_ms();
                let t = &d.timer;
                if seen.insert((t.workflow_id.clone(), t.timer_id.clone())) {
                    lateness.push(ts_ms(&t.delivered_at).saturating_sub(ts_ms(&t.fire_at)));
                    end_to_end.push(received.saturating_sub(ts_ms(&t.fire_at)));
                }
                d.ack();
            }
            producer.abort();
            lateness.sort_unstable();
            end_to_end.sort_unstable();
            let result = json!({
                "bench": "steady", "rate": rate, "timers": total, "delivered": seen.len(),
                "lateness_ms": { "p50": pct(&lateness, 0.5), "p99": pct(&lateness, 0.99), "max": pct(&lateness, 1.0) },
                "end_to_end_ms": { "p50": pct(&end_to_end, 0.5), "p99": pct(&end_to_end, 0.99), "max": pct(&end_to_end, 1.0) },
            });
            report(global, &result);
        }
        BenchCommand::Burst {
            count,
            concurrency,
            batch,
        } => {
            let load = Load { concurrency, batch };
            let queue = run.clone();
            // Schedule everything for an instant far enough out, then watch it all fall due.
            let probe = Instant::now();
            schedule_many(
                &client,
                &format!("{run}-probe"),
                &queue,
                1_000.min(count),
                load,
                |_| now_ms() + 3_600_000,
            )
            .await?;
            let per_timer = probe.elapsed().as_secs_f64() / 1_000f64.min(count as f64);
            let lead_ms = (per_timer * count as f64 * 1_000.0 * 1.5) as u64 + 5_000;
            let due = now_ms() + lead_ms;
            eprintln!(
                "bench: scheduling {count} timers all due in {} s",
                lead_ms / 1000
            );
            let took = schedule_many(&client, &run, &queue, count, load, move |_| due).await?;
            let mut worker = Worker::start(
                Arc::clone(&client),
                WorkerOptions {
                    credits: 10_000,
                    ..WorkerOptions::new(queue.clone())
                },
            )
            .await?;
            let mut seen = HashSet::new();
            let mut last = due;
            let deadline =
                Instant::now() + Duration::from_millis(lead_ms) + Duration::from_secs(300);
            while (seen.len() as u64) < count && Instant::now() < deadline {
                let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), worker.next()).await
                else {
                    continue;
                };
                if d.timer.workflow_id.starts_with(&format!("{run}-w"))
                    && seen.insert((d.timer.workflow_id.clone(), d.timer.timer_id.clone()))
                {
                    last = now_ms();
                }
                d.ack();
            }
            let result = json!({
                "bench": "burst", "timers": count, "delivered": seen.len(),
                "schedule_seconds": took.as_secs_f64(),
                "schedule_per_second": count as f64 / took.as_secs_f64(),
                "deliver_all_after_due_ms": last.saturating_sub(due),
            });
            report(global, &result);
        }
        BenchCommand::Fill {
            count,
            concurrency,
            batch,
        } => {
            let load = Load { concurrency, batch };
            let year = 365 * 24 * 3600 * 1000u64;
            let base = now_ms() + year;
            let before = client.cluster_status().await?;
            let took = schedule_many(&client, &run, "far", count, load, move |i| {
                base + (i % 1_000_000) * 1_000
            })
            .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = client.cluster_status().await?;
            let nodes: Vec<_> = after
                .nodes
                .iter()
                .map(|n| {
                    let was = before.nodes.iter().find(|b| b.node_id == n.node_id).map(|b| b.rss_bytes).unwrap_or(0);
                    json!({ "node_id": n.node_id, "rss_mib_before": was / (1 << 20), "rss_mib_after": n.rss_bytes / (1 << 20) })
                })
                .collect();
            let in_memory: u64 = after.partitions.iter().map(|p| p.timers_in_memory).sum();
            let pending: u64 = after.partitions.iter().map(|p| p.timers_pending).sum();
            let result = json!({
                "bench": "fill", "timers": count, "schedule_seconds": took.as_secs_f64(),
                "schedule_per_second": count as f64 / took.as_secs_f64(),
                "cluster_pending": pending, "cluster_in_memory": in_memory, "nodes": nodes,
            });
            report(global, &result);
        }
    }
    Ok(())
}

fn report(global: &Global, result: &serde_json::Value) {
    if global.json {
        println!("{result}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(result).expect("json values serialize")
        );
    }
}
