//! `hourglass bench`: load against a running cluster. Figures are printed as a table, or as
//! JSON with `--json`; docs/benchmarks.md records them with the command and the machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hourglass_client::{v1, Client, RetryPolicy, Worker, WorkerOptions};
use serde_json::json;

use crate::breakdown;
use crate::cli::{BenchArgs, BenchCommand, Global};
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

/// Each node's resident memory and, of it, RocksDB's (MiB) by node id, as `cluster status`
/// reports them.
async fn memory_mib(client: &Client) -> Result<BTreeMap<u64, (u64, u64)>, Failure> {
    Ok(client
        .cluster_status()
        .await?
        .nodes
        .iter()
        .map(|n| (n.node_id, (n.rss_bytes >> 20, n.store_memory_bytes >> 20)))
        .collect())
}

/// Each node's data directory (MiB) by node id.
async fn disk_mib(client: &Client) -> Result<BTreeMap<u64, u64>, Failure> {
    Ok(client
        .cluster_status()
        .await?
        .nodes
        .iter()
        .map(|n| (n.node_id, n.disk_bytes >> 20))
        .collect())
}

/// Per node, over the samples from `from_minute` on: the smallest and largest disk figure and
/// the largest over the smallest (1.10 is 10 % apart). `null` where there are no samples.
fn disk_spread(samples: &[(u64, BTreeMap<u64, u64>)], from_minute: u64) -> serde_json::Value {
    let mut range: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (_, nodes) in samples.iter().filter(|(m, _)| *m >= from_minute) {
        for (&node, &mib) in nodes {
            let r = range.entry(node).or_insert((mib, mib));
            *r = (r.0.min(mib), r.1.max(mib));
        }
    }
    range
        .into_iter()
        .map(|(node, (min, max))| {
            (
                node.to_string(),
                json!({ "min_mib": min, "max_mib": max, "max_over_min": max as f64 / min.max(1) as f64 }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Each node's resident memory (MiB) by node id.
async fn rss_mib(client: &Client) -> Result<BTreeMap<u64, u64>, Failure> {
    Ok(memory_mib(client)
        .await?
        .into_iter()
        .map(|(node, (rss, _))| (node, rss))
        .collect())
}

/// Timers of the cluster still SCHEDULED.
async fn pending(client: &Client) -> Result<Option<u64>, Failure> {
    Ok(pending_of(&client.cluster_status().await?))
}

/// Timers still SCHEDULED in the cluster, known only when every partition reported through a
/// leader: during a leader change a partition is missing or reports nothing, and its timers
/// must not count as fired.
fn pending_of(status: &v1::ClusterStatusResponse) -> Option<u64> {
    let led = status.partitions.iter().filter(|p| p.leader != 0).count();
    (led == status.partition_count as usize)
        .then(|| status.partitions.iter().map(|p| p.timers_pending).sum())
}

/// Percentile of a sorted slice.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// p50, p99 and max of samples in ms.
fn percentiles(mut samples: Vec<u64>) -> serde_json::Value {
    samples.sort_unstable();
    json!({ "p50": pct(&samples, 0.5), "p99": pct(&samples, 0.99), "max": pct(&samples, 1.0) })
}

/// How the load generator schedules.
#[derive(Clone, Copy)]
struct Load {
    /// Requests in flight.
    concurrency: u64,
    /// Timers per request: 1 uses `Schedule`, more use `ScheduleBatch`.
    batch: u64,
    /// With a seed: ids of 16 pseudo-random hex digits (workflow and timer), which share no
    /// prefix and compress like random UUIDs; otherwise numbered after the run.
    random_ids: Option<u64>,
}

/// The `i`-th pseudo-random 64-bit number (splitmix64): the same for every run.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The load generator's worker: subscribed to `queue` with `credits` deliveries at a time.
async fn worker(client: &Arc<Client>, queue: &str, credits: u32) -> Result<Worker, Failure> {
    Ok(Worker::start(
        Arc::clone(client),
        WorkerOptions {
            credits,
            ..WorkerOptions::new(queue.to_owned())
        },
    )
    .await?)
}

/// What scheduling took: in all, and per call (µs, from send to answer).
struct Scheduled {
    took: Duration,
    call_us: Vec<u64>,
}

impl Scheduled {
    /// p50, p99 and max of the calls, in ms.
    fn call_ms(&self) -> serde_json::Value {
        let mut us = self.call_us.clone();
        us.sort_unstable();
        let ms = |p| pct(&us, p) as f64 / 1000.0;
        json!({ "calls": us.len(), "p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0) })
    }
}

/// Schedules `count` timers with `payload`; `at(i)` gives each due time.
async fn schedule_many(
    client: &Arc<Client>,
    run: &str,
    queue: &str,
    count: u64,
    load: Load,
    payload: Vec<u8>,
    at: impl Fn(u64) -> u64 + Send + Sync + 'static,
) -> Result<Scheduled, Failure> {
    let payload = Arc::new(payload);
    let next = Arc::new(AtomicU64::new(0));
    let at = Arc::new(at);
    let started = Instant::now();
    let batch = load.batch.clamp(1, 1000);
    let mut tasks = Vec::new();
    for _ in 0..load.concurrency.max(1) {
        let (client, next, at, run, queue, payload) = (
            Arc::clone(client),
            Arc::clone(&next),
            Arc::clone(&at),
            run.to_owned(),
            queue.to_owned(),
            Arc::clone(&payload),
        );
        tasks.push(tokio::spawn(async move {
            let mut call_us = Vec::new();
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= count {
                    return Ok::<_, hourglass_client::Error>(call_us);
                }
                let requests: Vec<_> = (first..(first + batch).min(count))
                    .map(|i| v1::ScheduleRequest {
                        payload: payload.to_vec(),
                        ..request(
                            match load.random_ids {
                                Some(seed) => format!("{:016x}", mix(seed ^ (2 * i))),
                                None => format!("{run}-w{}", i % 10_000),
                            },
                            match load.random_ids {
                                Some(seed) => format!("{:016x}", mix(seed ^ (2 * i + 1))),
                                None => format!("t{i:09}"),
                            },
                            &queue,
                            at(i),
                        )
                    })
                    .collect();
                let sent = Instant::now();
                if requests.len() == 1 {
                    client
                        .schedule(requests.into_iter().next().expect("one request"))
                        .await?;
                } else {
                    for outcome in client.schedule_batch(requests).await? {
                        outcome?;
                    }
                }
                call_us.push(sent.elapsed().as_micros() as u64);
                if first / 100_000 != (first + batch) / 100_000 && first > 0 {
                    eprintln!(
                        "bench: scheduled {} of {count}",
                        (first + batch) / 100_000 * 100_000
                    );
                }
            }
        }));
    }
    let mut call_us = Vec::new();
    for t in tasks {
        call_us.extend(
            t.await
                .map_err(|e| anyhow::anyhow!("schedule task: {e}"))??,
        );
    }
    Ok(Scheduled {
        took: started.elapsed(),
        call_us,
    })
}

/// An instant at which `count` timers, scheduled from now, will all have been scheduled:
/// 1,000 probe timers (a `-probe` queue, due in an hour) give the rate, with a margin.
/// Returns it and how far from now it is, in ms.
async fn due_after_scheduling(
    client: &Arc<Client>,
    run: &str,
    count: u64,
    load: Load,
    payload: usize,
) -> Result<(u64, u64), Failure> {
    let probe = Instant::now();
    let probes = 1_000.min(count);
    schedule_many(
        client,
        &format!("{run}-probe"),
        &format!("{run}-probe"),
        probes,
        load,
        vec![b'x'; payload],
        |_| now_ms() + 3_600_000,
    )
    .await?;
    let per_timer = probe.elapsed().as_secs_f64() / probes.max(1) as f64;
    let lead_ms = (per_timer * count as f64 * 1_000.0 * 2.0) as u64 + 20_000;
    Ok((now_ms() + lead_ms, lead_ms))
}

/// Schedule requests `steady` keeps in flight at most.
const STEADY_IN_FLIGHT: usize = 2_048;

pub async fn run(global: &Global, args: BenchArgs) -> Result<(), Failure> {
    // A load generator pushes the cluster to where commits take seconds: it keeps retrying
    // (schedules are idempotent) rather than give up after the default budget.
    let mut client = global.client_with(RetryPolicy {
        budget: Duration::from_secs(300),
        ..RetryPolicy::default()
    })?;
    if !args.unrouted {
        client = client.routed();
    }
    let client = Arc::new(client);
    let cmd = args.cmd;
    let run = format!("bench-{}-{}", std::process::id(), now_ms());
    match cmd {
        BenchCommand::Steady {
            rate,
            duration,
            lead,
            payload,
        } => {
            let duration = parse_duration("--duration", &duration)?;
            let lead = parse_duration("--lead", &lead)?;
            if rate == 0 {
                return Err(usage("--rate must be positive"));
            }
            let queue = run.clone();
            let stages_before = breakdown::before(&client).await;
            let mut worker = worker(&client, &queue, 10_000).await?;
            let total = rate * duration.as_secs().max(1);
            eprintln!("bench: {total} timers at {rate}/s, each due {lead:?} after scheduling");
            // Schedules `rate / 100` timers every 10 ms, each due `lead` later.
            let scheduled = Arc::new(AtomicU64::new(0));
            let producer = {
                let client = Arc::clone(&client);
                let scheduled = Arc::clone(&scheduled);
                let (run, queue) = (run.clone(), queue.clone());
                let payload = vec![b'x'; payload];
                let in_flight = Arc::new(tokio::sync::Semaphore::new(STEADY_IN_FLIGHT));
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    let per_tick = (rate / 100).max(1);
                    let mut i = 0u64;
                    while i < total {
                        tick.tick().await;
                        let due = now_ms() + lead.as_millis() as u64;
                        for _ in 0..per_tick.min(total - i) {
                            let client = Arc::clone(&client);
                            let req = v1::ScheduleRequest {
                                payload: payload.clone(),
                                ..request(
                                    format!("{run}-w{}", i % 10_000),
                                    format!("t{i}"),
                                    &queue,
                                    due,
                                )
                            };
                            // A cluster that falls behind the rate gets at most this many
                            // requests at once; the rate achieved then shows in the result.
                            let permit = Arc::clone(&in_flight).acquire_owned().await;
                            let scheduled = Arc::clone(&scheduled);
                            tokio::spawn(async move {
                                let _permit = permit;
                                if client.schedule(req).await.is_ok() {
                                    scheduled.fetch_add(1, Ordering::Relaxed);
                                }
                            });
                            i += 1;
                        }
                    }
                })
            };
            let mut lateness = Vec::with_capacity(total as usize);
            let mut end_to_end = Vec::with_capacity(total as usize);
            let mut receive = Vec::with_capacity(total as usize);
            let mut seen = HashSet::new();
            let started = Instant::now();
            let deadline = started + duration + lead + Duration::from_secs(60);
            // Each node's disk once a minute: under a steady load it must level off once the
            // tombstone retention is reached (G8).
            let mut disk_samples: Vec<(u64, BTreeMap<u64, u64>)> = Vec::new();
            let mut next_sample = started;
            while (seen.len() as u64) < total && Instant::now() < deadline {
                if Instant::now() >= next_sample {
                    let minute = (next_sample - started).as_secs() / 60;
                    // A sample the cluster cannot answer in time is missing, not fatal.
                    match disk_mib(&client).await {
                        Ok(disk) => {
                            eprintln!(
                                "bench: minute {minute}: {} of {total} scheduled, {} delivered; disk MiB by node {disk:?}",
                                scheduled.load(Ordering::Relaxed),
                                seen.len()
                            );
                            disk_samples.push((minute, disk));
                        }
                        Err(e) => eprintln!("bench: minute {minute}: no disk sample: {}", e.error),
                    }
                    next_sample += Duration::from_secs(60);
                }
                let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), worker.next()).await
                else {
                    continue;
                };
                let received = now_ms();
                let t = &d.timer;
                if seen.insert((t.workflow_id.clone(), t.timer_id.clone())) {
                    lateness.push(ts_ms(&t.delivered_at).saturating_sub(ts_ms(&t.fire_at)));
                    end_to_end.push(received.saturating_sub(ts_ms(&t.fire_at)));
                    receive.push(received.saturating_sub(ts_ms(&t.delivered_at)));
                }
                d.ack();
            }
            producer.abort();
            // A cluster slower than the rate has not scheduled everything by the deadline:
            // what counts is what it acknowledged.
            let scheduled = scheduled.load(Ordering::Relaxed);
            if (seen.len() as u64) < scheduled {
                eprintln!(
                    "bench: {} of {scheduled} acknowledged timers not delivered by the deadline",
                    scheduled - seen.len() as u64
                );
            }
            let stages = breakdown::after(&client, stages_before).await;
            lateness.sort_unstable();
            end_to_end.sort_unstable();
            if let Ok(disk) = disk_mib(&client).await {
                disk_samples.push((started.elapsed().as_secs() / 60, disk));
            }
            let result = json!({
                "bench": "steady", "rate": rate, "timers": total, "scheduled": scheduled,
                "delivered": seen.len(),
                "payload_bytes": payload,
                "lateness_ms": { "p50": pct(&lateness, 0.5), "p99": pct(&lateness, 0.99), "max": pct(&lateness, 1.0) },
                "end_to_end_ms": { "p50": pct(&end_to_end, 0.5), "p99": pct(&end_to_end, 0.99), "max": pct(&end_to_end, 1.0) },
                "stages": stages, "worker_receive_ms": percentiles(receive),
                "disk_mib_by_minute": disk_samples.iter().map(|(m, d)| json!({ "minute": m, "nodes": d })).collect::<Vec<_>>(),
                "disk_spread_from_minute_5": disk_spread(&disk_samples, 5),
            });
            report(global, &result);
        }
        BenchCommand::Burst {
            count,
            concurrency,
            batch,
        } => {
            let load = Load {
                concurrency,
                batch,
                random_ids: None,
            };
            let queue = run.clone();
            // Schedule everything for an instant far enough out, then watch it all fall due.
            let (due, lead_ms) = due_after_scheduling(&client, &run, count, load, 0).await?;
            eprintln!(
                "bench: scheduling {count} timers all due in {} s",
                lead_ms / 1000
            );
            let stages_before = breakdown::before(&client).await;
            let took = schedule_many(&client, &run, &queue, count, load, Vec::new(), move |_| due)
                .await?
                .took;
            let mut worker = worker(&client, &queue, 10_000).await?;
            let mut seen = HashSet::new();
            let mut receive = Vec::with_capacity(count as usize);
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
                    receive.push(last.saturating_sub(ts_ms(&d.timer.delivered_at)));
                }
                d.ack();
            }
            let stages = breakdown::after(&client, stages_before).await;
            let result = json!({
                "bench": "burst", "timers": count, "delivered": seen.len(),
                "stages": stages, "worker_receive_ms": percentiles(receive),
                "schedule_seconds": took.as_secs_f64(),
                "schedule_per_second": count as f64 / took.as_secs_f64(),
                "deliver_all_after_due_ms": last.saturating_sub(due),
            });
            report(global, &result);
        }
        BenchCommand::Backlog {
            count,
            payload,
            concurrency,
            batch,
            wait,
            lead,
        } => {
            let wait = parse_duration("--wait", &wait)?;
            let lead = lead.map(|l| parse_duration("--lead", &l)).transpose()?;
            let load = Load {
                concurrency,
                batch,
                random_ids: None,
            };
            let queue = run.clone();
            let pending_before = loop {
                match pending(&client).await? {
                    Some(n) => break n,
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            let rss_before = rss_mib(&client).await?;
            // The probe's timers (due in an hour) stay pending throughout.
            let probes = if lead.is_some() { 0 } else { 1_000.min(count) };
            let (due, lead_ms) = match lead {
                Some(lead) => {
                    let lead_ms = u64::try_from(lead.as_millis()).unwrap_or(u64::MAX);
                    (now_ms().saturating_add(lead_ms), lead_ms)
                }
                None => due_after_scheduling(&client, &run, count, load, payload).await?,
            };
            eprintln!(
                "bench: scheduling {count} timers of {payload} bytes, all due in {} s, no worker",
                lead_ms / 1000
            );
            let took = schedule_many(
                &client,
                &run,
                &queue,
                count,
                load,
                vec![b'x'; payload],
                move |_| due,
            )
            .await?
            .took;
            let memory_scheduled = memory_mib(&client).await?;
            let rss_scheduled: BTreeMap<u64, u64> = memory_scheduled
                .iter()
                .map(|(&n, &(rss, _))| (n, rss))
                .collect();
            // The memory they cost while they wait is measured from here; due earlier, some
            // fired while scheduling still ran and this is not their baseline.
            let scheduled_before_due = now_ms() < due;
            if !scheduled_before_due {
                eprintln!("bench: warning: the timers fell due before all were scheduled (the probe's rate was not sustained); growth figures are over a baseline taken after some fired");
            }
            // Watch memory while they fall due and fire, and for `wait` after the last fire.
            let mut rss_max = rss_scheduled.clone();
            // RocksDB's memory when each node's RSS was at its highest.
            let mut store_at_max: BTreeMap<u64, u64> = memory_scheduled
                .iter()
                .map(|(&n, &(_, store))| (n, store))
                .collect();
            let mut fired_at = None;
            let mut last_report = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for (node, (rss, store)) in memory_mib(&client).await? {
                    let max = rss_max.entry(node).or_default();
                    if rss > *max {
                        *max = rss;
                        store_at_max.insert(node, store);
                    }
                }
                let left = pending(&client)
                    .await?
                    .map(|n| n.saturating_sub(pending_before + probes));
                match left {
                    Some(0) if now_ms() >= due => {
                        let at = *fired_at.get_or_insert_with(Instant::now);
                        if at.elapsed() >= wait {
                            break;
                        }
                    }
                    // Not all fired yet (or not known): the wait starts again at the last fire.
                    _ => fired_at = None,
                }
                if last_report.elapsed() >= Duration::from_secs(10) {
                    let left = left.map_or("unknown (a partition has no leader)".into(), |n| {
                        n.to_string()
                    });
                    eprintln!(
                        "bench: {left} of {count} not fired yet; RSS MiB now {rss_max:?} at most"
                    );
                    last_report = Instant::now();
                }
            }
            let rss_waiting = rss_mib(&client).await?;
            eprintln!("bench: every timer fired; a worker subscribes");
            let mut worker = worker(&client, &queue, 1_000).await?;
            let started = Instant::now();
            let mut seen = HashSet::new();
            // G7 per partition: first attempts come in fire order, which for timers due at one
            // instant, all scheduled before it, is (workflow_id, timer_id) order. Later attempts
            // (redeliveries, or a new leader's) are not ordered.
            let mut last_key: HashMap<u32, (String, String)> = HashMap::new();
            let mut out_of_order = 0u64;
            let mut redelivered = 0u64;
            let deadline = Instant::now() + Duration::from_secs(1_800);
            while (seen.len() as u64) < count && Instant::now() < deadline {
                let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), worker.next()).await
                else {
                    continue;
                };
                let t = &d.timer;
                if t.attempt > 1 {
                    redelivered += 1;
                } else {
                    let key = (t.workflow_id.clone(), t.timer_id.clone());
                    if let Some(prev) = last_key.insert(t.partition, key.clone()) {
                        if prev >= key {
                            out_of_order += 1;
                        }
                    }
                }
                seen.insert((t.workflow_id.clone(), t.timer_id.clone()));
                d.ack();
                if seen.len() % 100_000 == 0 {
                    eprintln!("bench: {} of {count} delivered", seen.len());
                }
            }
            let delivered_in = started.elapsed();
            let nodes: Vec<_> = rss_before
                .iter()
                .map(|(node, before)| {
                    let max = rss_max.get(node).copied().unwrap_or(0);
                    let (scheduled, store_scheduled) =
                        memory_scheduled.get(node).copied().unwrap_or_default();
                    let store_max = store_at_max.get(node).copied().unwrap_or(0);
                    let growth = max.saturating_sub(scheduled);
                    json!({
                        "node_id": node,
                        "rss_mib_before": before,
                        "rss_mib_scheduled": scheduled,
                        "rss_mib_max_while_firing_and_waiting": max,
                        "rss_mib_waiting": rss_waiting.get(node),
                        "growth_mib_over_scheduled": growth,
                        "store_mib_scheduled": store_scheduled,
                        "store_mib_at_max": store_max,
                        "growth_mib_outside_store": growth.saturating_sub(store_max.saturating_sub(store_scheduled)),
                    })
                })
                .collect();
            let result = json!({
                "bench": "backlog", "timers": count, "payload_bytes": payload,
                "scheduled_before_due": scheduled_before_due,
                "schedule_seconds": took.as_secs_f64(),
                "schedule_per_second": count as f64 / took.as_secs_f64(),
                "nodes": nodes,
                "delivered": seen.len(), "deliver_seconds": delivered_in.as_secs_f64(),
                "deliver_per_second": seen.len() as f64 / delivered_in.as_secs_f64(),
                "first_attempts_out_of_fire_order": out_of_order,
                "redeliveries": redelivered,
            });
            report(global, &result);
        }
        BenchCommand::Restart {
            count,
            concurrency,
            batch,
            lead,
            down_for,
            down_cmd,
            up_cmd,
        } => {
            let lead = parse_duration("--lead", &lead)?;
            let down_for = parse_duration("--down-for", &down_for)?;
            let load = Load {
                concurrency,
                batch,
                random_ids: None,
            };
            let queue = run.clone();
            let due = now_ms() + lead.as_millis() as u64;
            schedule_many(&client, &run, &queue, count, load, Vec::new(), move |_| due).await?;
            // Nothing is fired more than `timers.fire_ahead` (at most 1 s) before it is due.
            let stop_at = due.saturating_sub(1_500);
            if now_ms() > stop_at {
                return Err(usage(format!(
                    "scheduling {count} timers took longer than --lead allows (it must end 1.5 s before they are due): give a longer --lead"
                )));
            }
            tokio::time::sleep(Duration::from_millis(stop_at - now_ms())).await;
            eprintln!("bench: stopping the cluster: {down_cmd}");
            shell(&down_cmd).await?;
            let stopped = Instant::now();
            tokio::time::sleep(down_for.saturating_sub(stopped.elapsed())).await;
            eprintln!("bench: starting the cluster: {up_cmd}");
            let restarted = Instant::now();
            shell(&up_cmd).await?;
            let ready = restarted.elapsed();
            let mut worker = worker(&client, &queue, 10_000).await?;
            let mut seen = HashSet::new();
            let mut early = 0u64;
            let mut last = ready;
            let deadline = Instant::now() + Duration::from_secs(300);
            while (seen.len() as u64) < count && Instant::now() < deadline {
                let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), worker.next()).await
                else {
                    continue;
                };
                // By this process's clock: a timer received before its instant came early.
                if now_ms() < ts_ms(&d.timer.fire_at) {
                    early += 1;
                }
                if seen.insert((d.timer.workflow_id.clone(), d.timer.timer_id.clone())) {
                    last = restarted.elapsed();
                }
                d.ack();
            }
            let result = json!({
                "bench": "restart", "timers": count, "delivered": seen.len(), "early": early,
                "down_seconds": (restarted - stopped).as_secs_f64(),
                "restart_to_ready_ms": ready.as_millis() as u64,
                "restart_to_last_delivered_ms": last.as_millis() as u64,
                "ready_to_last_delivered_ms": last.saturating_sub(ready).as_millis() as u64,
            });
            report(global, &result);
            if seen.len() as u64 != count || early > 0 {
                return Err(
                    anyhow::anyhow!("{} of {count} delivered, {early} early", seen.len()).into(),
                );
            }
        }
        BenchCommand::Fill {
            count,
            concurrency,
            batch,
            payload,
            settle,
            random_ids,
        } => {
            let settle = parse_duration("--settle", &settle)?;
            let load = Load {
                concurrency,
                batch,
                random_ids: random_ids.then(|| mix(now_ms())),
            };
            let year = 365 * 24 * 3600 * 1000u64;
            let base = now_ms() + year;
            let before = client.cluster_status().await?;
            let scheduled = schedule_many(
                &client,
                &run,
                "far",
                count,
                load,
                vec![b'x'; payload],
                move |i| base + (i % 1_000_000) * 1_000,
            )
            .await?;
            let took = scheduled.took;
            eprintln!(
                "bench: scheduled; settling for {}",
                humantime::format_duration(settle)
            );
            tokio::time::sleep(settle).await;
            let after = client.cluster_status().await?;
            let nodes: Vec<_> = after
                .nodes
                .iter()
                .map(|n| {
                    let was = before.nodes.iter().find(|b| b.node_id == n.node_id);
                    let (rss, disk) = was.map(|b| (b.rss_bytes, b.disk_bytes)).unwrap_or_default();
                    json!({
                        "node_id": n.node_id,
                        "rss_mib_before": rss / (1 << 20), "rss_mib_after": n.rss_bytes / (1 << 20),
                        "disk_mib_before": disk / (1 << 20), "disk_mib_after": n.disk_bytes / (1 << 20),
                        "disk_bytes_per_timer": n.disk_bytes.saturating_sub(disk) as f64 / count.max(1) as f64,
                    })
                })
                .collect();
            let in_memory: u64 = after.partitions.iter().map(|p| p.timers_in_memory).sum();
            let pending: u64 = after.partitions.iter().map(|p| p.timers_pending).sum();
            let result = json!({
                "bench": "fill", "timers": count, "payload_bytes": payload, "random_ids": random_ids,
                "schedule_seconds": took.as_secs_f64(),
                "schedule_per_second": count as f64 / took.as_secs_f64(),
                "call_ms": scheduled.call_ms(),
                "settle_seconds": settle.as_secs_f64(),
                "cluster_pending": pending, "cluster_in_memory": in_memory, "nodes": nodes,
            });
            report(global, &result);
        }
    }
    Ok(())
}

/// Runs `cmd` with `sh -c`; fails with its output unless it succeeds.
async fn shell(cmd: &str) -> Result<(), Failure> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(leader: u64, pending: u64) -> v1::PartitionStatus {
        v1::PartitionStatus {
            leader,
            timers_pending: pending,
            ..Default::default()
        }
    }

    #[test]
    fn pending_is_unknown_while_a_partition_has_no_leader() {
        let mut status = v1::ClusterStatusResponse {
            partition_count: 3,
            partitions: vec![partition(1, 5), partition(2, 0), partition(3, 7)],
            ..Default::default()
        };
        assert_eq!(pending_of(&status), Some(12));
        status.partitions[2].leader = 0;
        assert_eq!(
            pending_of(&status),
            None,
            "a leaderless partition reports nothing"
        );
        status.partitions.pop();
        assert_eq!(pending_of(&status), None, "a missing partition is not zero");
    }
}
