//! Firing and delivery on real 3-process clusters with `hourglass worker` processes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hourglass_client::v1;
use hourglass_tests::{now_ms, schedule_at, Cluster, Options, Seen, WorkerProc};
use hourglass_types::partition_for;

fn options() -> Options {
    Options {
        extra_toml: "[timers]\nack_timeout_ms = 3000\n".into(),
        ..Options::default()
    }
}

/// Every delivery is at or after its fire_at by the delivering node's clock (G2).
fn assert_none_early(seen: &[Seen]) {
    for s in seen {
        assert!(s.fired_at_ms >= s.fire_at_ms, "fired early: {s:?}");
        assert!(s.delivered_at_ms >= s.fire_at_ms, "delivered early: {s:?}");
    }
}

/// By this test's clock, the reference for "early": no delivery reached the worker before
/// its due instant.
fn assert_received_at_or_after_due(seen: &[Seen]) {
    for s in seen {
        assert!(
            s.received_ms >= s.fire_at_ms,
            "received {} ms before due by the test's clock: {s:?}",
            s.fire_at_ms - s.received_ms
        );
    }
}

fn keys(seen: &[Seen]) -> BTreeSet<(String, String)> {
    seen.iter()
        .map(|s| (s.workflow_id.clone(), s.timer_id.clone()))
        .collect()
}

/// Duplicates only after a fault, and then with a higher attempt (G5).
fn assert_duplicates_are_redeliveries(seen: &[Seen]) {
    let mut first: BTreeMap<(String, String), u64> = BTreeMap::new();
    for s in seen {
        let k = (s.workflow_id.clone(), s.timer_id.clone());
        if let Some(prev) = first.get(&k) {
            assert!(
                s.attempt > *prev || s.attempt >= 2,
                "duplicate without redelivery: {s:?}"
            );
        }
        first.entry(k).or_insert(s.attempt);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_on_time_never_early() {
    let c = Cluster::start(options()).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let client = c.client();
    let base = now_ms() + 1_500;
    let mut expected = BTreeSet::new();
    for i in 0..200u64 {
        let w = format!("wf-{}", i % 40);
        let t = format!("t-{i}");
        client
            .schedule(schedule_at(&w, &t, "q", base + i * 15, &i.to_string()))
            .await
            .unwrap();
        expected.insert((w, t));
    }
    // A timer of another queue is not delivered to this worker.
    client
        .schedule(schedule_at("other", "x", "elsewhere", base, ""))
        .await
        .unwrap();
    let seen = worker
        .wait_for(Duration::from_secs(30), |s| keys(s) == expected)
        .await
        .unwrap();
    assert_none_early(&seen);
    assert!(
        seen.iter().all(|s| s.attempt == 1),
        "redelivery without a fault"
    );
    assert_eq!(seen.len(), 200, "duplicates without a fault");
    let mut lateness: Vec<u64> = seen
        .iter()
        .map(|s| s.delivered_at_ms - s.fire_at_ms)
        .collect();
    lateness.sort_unstable();
    let p50 = lateness[lateness.len() / 2];
    assert!(p50 < 1_000, "median lateness {p50} ms");
    // Delivered and acknowledged timers end COMPLETED.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = client.get("wf-0", "t-0").await.unwrap();
    assert_eq!(t.state, v1::TimerState::Completed as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_while_timers_are_due_loses_none() {
    let mut c = Cluster::start(options()).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let client = c.client();
    let base = now_ms() + 2_000;
    let mut expected = BTreeSet::new();
    for i in 0..300u64 {
        let w = format!("wf-{}", i % 60);
        let t = format!("t-{i}");
        client
            .schedule(schedule_at(&w, &t, "q", base + i * 20, ""))
            .await
            .unwrap();
        expected.insert((w, t));
    }
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    kill_a_leader_and_expect_all(&mut c, &worker, &expected, Duration::from_secs(60)).await;
}

/// Kills the leader of `wf-0`'s partition, then checks every expected timer arrives, none
/// early, and duplicates only as redeliveries.
async fn kill_a_leader_and_expect_all(
    c: &mut Cluster,
    worker: &WorkerProc,
    expected: &BTreeSet<(String, String)>,
    within: Duration,
) {
    let victim = c
        .leader_of(partition_for("wf-0", c.partitions))
        .await
        .unwrap();
    c.kill(victim);
    let seen = worker
        .wait_for(within, |s| keys(s).is_superset(expected))
        .await
        .unwrap();
    assert_none_early(&seen);
    assert_duplicates_are_redeliveries(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_due_while_every_node_is_down_fire_on_restart() {
    let mut c = Cluster::start(options()).await.unwrap();
    let client = c.client();
    let due = now_ms() + 1_000;
    let mut expected = BTreeSet::new();
    for i in 0..100u64 {
        let (w, t) = (format!("wf-{i}"), "sleep".to_string());
        client
            .schedule(schedule_at(&w, &t, "q", due, ""))
            .await
            .unwrap();
        expected.insert((w, t));
    }
    for i in 1..=3 {
        c.kill(i);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 1..=3 {
        c.spawn(i).unwrap();
    }
    c.wait_all_led(Duration::from_secs(60)).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let seen = worker
        .wait_for(Duration::from_secs(20), |s| keys(s).is_superset(&expected))
        .await
        .unwrap_or_else(|e| panic!("{e}; missing {:?}", missing(&expected, &worker)));
    assert_none_early(&seen);
}

/// Kills every node while a partition's fires are being proposed and committed: a restarted
/// leader may resume its term without a new entry, and a `Fire` committed before the crash
/// but applied after the engine read the state would never be delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_while_timers_fire_loses_none() {
    let mut c = Cluster::start(options()).await.unwrap();
    let client = c.client();
    let due = now_ms() + 2_000;
    let mut expected = BTreeSet::new();
    let mut batch = Vec::new();
    for i in 0..2_000u64 {
        let (w, t) = (format!("wf-{i}"), "sleep".to_string());
        batch.push(schedule_at(&w, &t, "q", due + i / 2, ""));
        expected.insert((w, t));
    }
    for chunk in batch.chunks(500) {
        for r in client.schedule_batch(chunk.to_vec()).await.unwrap() {
            r.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()) + 500)).await;
    for i in 1..=3 {
        c.kill(i);
    }
    for i in 1..=3 {
        c.spawn(i).unwrap();
    }
    c.wait_all_led(Duration::from_secs(60)).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let seen = worker
        .wait_for(Duration::from_secs(30), |s| keys(s).is_superset(&expected))
        .await
        .unwrap_or_else(|e| panic!("{e}; missing {:?}", missing(&expected, &worker)));
    assert_none_early(&seen);
}

fn missing(expected: &BTreeSet<(String, String)>, worker: &WorkerProc) -> Vec<(String, String)> {
    expected
        .difference(&keys(&worker.seen()))
        .take(10)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_unacked_timers_go_to_another_worker() {
    let c = Cluster::start(options()).await.unwrap();
    // This worker takes deliveries and never finishes them.
    let stuck = c
        .worker("q", &["--exec", "sleep 600", "--credits", "1000"])
        .unwrap();
    let client = c.client();
    let due = now_ms() + 500;
    let mut expected = BTreeSet::new();
    for i in 0..50u64 {
        let (w, t) = (format!("wf-{i}"), "t".to_string());
        client
            .schedule(schedule_at(&w, &t, "q", due, ""))
            .await
            .unwrap();
        expected.insert((w, t));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stuck.kill();
    let rescuer = c.worker("q", &[]).unwrap();
    let seen = rescuer
        .wait_for(Duration::from_secs(20), |s| keys(s).is_superset(&expected))
        .await
        .unwrap();
    assert!(
        seen.iter().all(|s| s.attempt >= 2),
        "first attempts went to the killed worker"
    );
}

/// Fire-ahead (`timers.fire_ahead`, here a second): timers are FIRED before their due
/// instant, so the commit is over by then, yet no worker receives one before it by this
/// test's clock (G2); a cancel in between answers ALREADY_FIRED and the timer is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fired_ahead_reach_workers_at_their_instant_never_before() {
    let c = Cluster::start(Options {
        extra_toml: "[timers]\nack_timeout_ms = 3000\nfire_ahead = \"1s\"\n".into(),
        ..Options::default()
    })
    .await
    .unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let client = c.client();
    let base = now_ms() + 3_000;
    let due = |i: u64| base + i * 20;
    let batch = (0..100u64)
        .map(|i| schedule_at(&format!("wf-{i}"), "t", "q", due(i), ""))
        .collect();
    for r in client.schedule_batch(batch).await.unwrap() {
        r.unwrap();
    }
    let expected: BTreeSet<_> = (0..100u64)
        .map(|i| (format!("wf-{i}"), "t".to_owned()))
        .collect();
    // The last one is FIRED while its due instant is still ahead by this test's clock.
    loop {
        let t = client.get("wf-99", "t").await.unwrap();
        let now = now_ms();
        if t.state == v1::TimerState::Fired as i32 {
            assert!(now < due(99), "FIRED only {} ms after due", now - due(99));
            break;
        }
        assert!(now < due(99), "not fired ahead of its due instant: {t:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = client.cancel("wf-99", "t").await.unwrap();
    assert_eq!(r.outcome, v1::CancelOutcome::AlreadyFired as i32);
    assert!(
        now_ms() < due(99),
        "the cancel must race the due instant to mean something"
    );
    let seen = worker
        .wait_for(Duration::from_secs(30), |s| keys(s) == expected)
        .await
        .unwrap();
    assert_none_early(&seen);
    assert_received_at_or_after_due(&seen);
    for s in &seen {
        assert_eq!(
            s.fired_at_ms, s.fire_at_ms,
            "fired ahead at its instant: {s:?}"
        );
    }
}

/// A leader killed while timers it fired ahead wait parked for their instant: the new
/// leader reads them from the fired index and parks them too, so none reaches a worker before
/// its due instant by this test's clock (G2), and none is lost (G1). Short election timeouts
/// put the new leader in place while most of them are still ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_timers_it_fired_ahead_are_parked_delivers_none_early() {
    let mut c = Cluster::start(Options {
        extra_toml: "[timers]\nack_timeout_ms = 3000\nfire_ahead = \"1s\"\n\
                     [raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 200\n\
                     election_timeout_max_ms = 400\n"
            .into(),
        ..Options::default()
    })
    .await
    .unwrap();
    c.wait_all_led(Duration::from_secs(30)).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let client = c.client();
    // One workflow, so one partition and one leader; due over 3 s from 4 s out.
    let base = now_ms() + 4_000;
    let due = |i: u64| base + i * 60;
    let batch = (0..50u64)
        .map(|i| schedule_at("parked", &format!("t{i:02}"), "q", due(i), ""))
        .collect();
    for r in client.schedule_batch(batch).await.unwrap() {
        r.unwrap();
    }
    let leader = c
        .leader_of(partition_for("parked", c.partitions))
        .await
        .unwrap();
    // Timer 10 FIRED a second before it is due: it and those before it wait parked.
    loop {
        let t = client.get("parked", "t10").await.unwrap();
        if t.state == v1::TimerState::Fired as i32 {
            break;
        }
        assert!(now_ms() < due(10), "not fired ahead in time: {t:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.kill(leader);
    assert!(
        now_ms() < due(10),
        "the kill must come while the fired timers are parked"
    );
    let expected: BTreeSet<_> = (0..50u64)
        .map(|i| ("parked".to_owned(), format!("t{i:02}")))
        .collect();
    let seen = worker
        .wait_for(Duration::from_secs(30), |s| keys(s) == expected)
        .await
        .unwrap();
    assert_none_early(&seen);
    assert_received_at_or_after_due(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_that_answered_cancelled_is_never_delivered() {
    // Timers are proposed this long before their due instant: that is when the race is.
    const FIRE_AHEAD_MS: u64 = 100;
    let c = Cluster::start(Options {
        extra_toml: format!("[timers]\nack_timeout_ms = 3000\nfire_ahead_ms = {FIRE_AHEAD_MS}\n"),
        ..Options::default()
    })
    .await
    .unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let client = std::sync::Arc::new(c.client());
    // One batch, so the cancels still come before the due times on a loaded machine.
    let base = now_ms() + 1_500;
    let batch = (0..200u64)
        .map(|i| schedule_at(&format!("wf-{i}"), "t", "q", base + (i % 20) * 50, ""))
        .collect();
    for r in client.schedule_batch(batch).await.unwrap() {
        r.unwrap();
    }
    // Cancel each one around the time its fire is proposed, racing it.
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let client = std::sync::Arc::clone(&client);
        let at = (base + (i % 20) * 50 + (i % 7) * 20).saturating_sub(FIRE_AHEAD_MS);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(
                at.saturating_sub(now_ms()).saturating_sub(60),
            ))
            .await;
            let r = client.cancel(&format!("wf-{i}"), "t").await.unwrap();
            (format!("wf-{i}"), r.outcome)
        }));
    }
    let mut cancelled = BTreeSet::new();
    let mut fired = 0;
    for t in tasks {
        let (w, outcome) = t.await.unwrap();
        if outcome == v1::CancelOutcome::Cancelled as i32 {
            cancelled.insert(w);
        } else {
            fired += 1;
        }
    }
    // Both outcomes should occur for the race to mean something.
    assert!(
        !cancelled.is_empty() && fired > 0,
        "cancelled {} fired {fired}",
        cancelled.len()
    );
    let seen = worker
        .wait_for(Duration::from_secs(15), |s| keys(s).len() >= fired)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen_after = worker.seen();
    assert!(seen_after.len() >= seen.len());
    for s in &seen_after {
        assert!(
            !cancelled.contains(&s.workflow_id),
            "cancelled timer delivered: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_a_year_out_lives_only_on_disk() {
    let c = Cluster::start(options()).await.unwrap();
    let client = c.client();
    let year = 365 * 24 * 3600 * 1000u64;
    client
        .schedule(schedule_at("far", "t", "q", now_ms() + year, ""))
        .await
        .unwrap();
    client
        .schedule(schedule_at("near", "t", "q", now_ms() + 20_000, ""))
        .await
        .unwrap();
    let far = partition_for("far", c.partitions);
    let near = partition_for("near", c.partitions);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.status().await.unwrap();
        let p = |n: u32| {
            s.partitions
                .iter()
                .find(|p| p.partition == n)
                .unwrap()
                .clone()
        };
        // The near timer shows the window is loaded; the far one is pending but not in memory.
        if p(near).timers_in_memory >= 1 {
            assert_eq!(p(far).timers_pending, 1 + u64::from(far == near));
            if far != near {
                assert_eq!(p(far).timers_in_memory, 0);
            } else {
                assert_eq!(p(far).timers_in_memory, 1);
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "near timer never loaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The firing issue's acceptance scenario: 10,000 timers falling due over 30 s, an
/// `hourglass worker` printing them, and the leader of a partition killed midway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_timers_over_thirty_seconds_with_a_leader_killed_midway() {
    let mut c = Cluster::start(options()).await.unwrap();
    let worker = c.worker("q", &["--credits", "1000"]).unwrap();
    let client = std::sync::Arc::new(c.client());
    let base = now_ms() + 10_000;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, next) = (std::sync::Arc::clone(&client), std::sync::Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 10_000 {
                    return;
                }
                let at = base + i * 3; // 10,000 timers over 30 s
                client
                    .schedule(schedule_at(
                        &format!("wf-{}", i % 500),
                        &format!("t-{i}"),
                        "q",
                        at,
                        "",
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // On a slow machine some may already be due by now; they must still all arrive.
    let expected: BTreeSet<(String, String)> = (0..10_000u64)
        .map(|i| (format!("wf-{}", i % 500), format!("t-{i}")))
        .collect();
    // Midway through the 30 s, kill the leader of one partition.
    tokio::time::sleep(Duration::from_millis(
        (base + 15_000).saturating_sub(now_ms()),
    ))
    .await;
    kill_a_leader_and_expect_all(&mut c, &worker, &expected, Duration::from_secs(90)).await;
}

/// G7: within a partition, timers fire (and, to a single worker, arrive) in
/// `(fire_at, workflow_id, timer_id)` order, whatever order they were scheduled in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitions_timers_fire_in_order() {
    let c = Cluster::start(options()).await.unwrap();
    let client = c.client();
    let base = now_ms() + 2_000;
    // One workflow, hence one partition; three due instants, ids scheduled out of order.
    let mut plan: Vec<(u64, String)> = (0..30u64)
        .map(|i| (base + (i % 3) * 300, format!("t{:02}", 29 - i)))
        .collect();
    for (at, id) in &plan {
        client
            .schedule(schedule_at("ordered", id, "q", *at, ""))
            .await
            .unwrap();
    }
    let worker = c.worker("q", &["--credits", "1"]).unwrap();
    let seen = worker
        .wait_for(Duration::from_secs(20), |s| s.len() >= 30)
        .await
        .unwrap();
    plan.sort();
    let expected: Vec<String> = plan.into_iter().map(|(_, id)| id).collect();
    let got: Vec<String> = seen.iter().map(|s| s.timer_id.clone()).collect();
    assert_eq!(got, expected);
    assert!(seen
        .windows(2)
        .all(|w| w[0].fired_at_ms <= w[1].fired_at_ms));
}

/// A worker that stops (SIGSTOP) while holding deliveries keeps its TCP connections but
/// answers nothing: the nodes' HTTP/2 keepalive closes its streams and every delivery it held
/// reaches the queue's other worker, none of them a first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_workers_deliveries_go_to_another_worker() {
    let c = Cluster::start(Options {
        extra_toml: "[timers]\nack_timeout = \"3s\"\n\
                     [grpc]\nhttp2_keepalive_interval = \"2s\"\nhttp2_keepalive_timeout = \"3s\"\n"
            .into(),
        ..Options::default()
    })
    .await
    .unwrap();
    let stopped = c.worker("q", &["--credits", "1000"]).unwrap();
    let connected = || c.metric_total("hourglass_workers_connected").unwrap();
    wait_until(
        Duration::from_secs(20),
        || connected() == 3.0,
        "worker on every node",
    )
    .await;
    stopped.pause().unwrap();
    let client = c.client();
    let due = now_ms() + 300;
    let mut expected = BTreeSet::new();
    let batch = (0..50u64)
        .map(|i| {
            expected.insert((format!("wf-{i}"), "t".to_string()));
            schedule_at(&format!("wf-{i}"), "t", "q", due, "")
        })
        .collect();
    for r in client.schedule_batch(batch).await.unwrap() {
        r.unwrap();
    }
    // Every first attempt went to the stopped worker, its only subscriber.
    let delivered = || c.metric_total("hourglass_timers_delivered_total").unwrap();
    wait_until(
        Duration::from_secs(20),
        || delivered() >= 50.0,
        "first deliveries",
    )
    .await;
    let rescuer = c.worker("q", &[]).unwrap();
    let seen = rescuer
        .wait_for(Duration::from_secs(30), |s| keys(s).is_superset(&expected))
        .await
        .unwrap_or_else(|e| panic!("{e}; missing {:?}", missing(&expected, &rescuer)));
    assert!(
        seen.iter().all(|s| s.attempt >= 2),
        "first attempts went to the stopped worker"
    );
    // The stopped worker's streams are gone (the rescuer's three remain) while it is still
    // stopped: keepalive found it.
    wait_until(
        Duration::from_secs(20),
        || connected() == 3.0,
        "stopped worker dropped",
    )
    .await;
    assert_eq!(stopped.seen().len(), 0, "a stopped process prints nothing");
}

/// A stream may acknowledge only what was delivered to it: a raw gRPC client's ack of a timer
/// delivered to another stream is refused and counted, the timer stays FIRED and is delivered
/// again when its holder leaves, and the ack of its new holder completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_of_a_timer_delivered_to_another_stream_is_refused() {
    use hourglass_proto::v1::worker_message::Message;
    use hourglass_proto::v1::workers_client::WorkersClient;

    let c = Cluster::start(Options {
        extra_toml: "[timers]\nack_timeout = \"30s\"\n".into(),
        ..Options::default()
    })
    .await
    .unwrap();
    let leader = c
        .leader_of(partition_for("owned", c.partitions))
        .await
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", c.node(leader).addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A stream of queue `q` with one credit: its sender, and its deliveries.
    let subscribe = |worker: &'static str| {
        let channel = channel.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(v1::WorkerMessage {
                message: Some(Message::Start(v1::SubscribeStart {
                    queue: "q".into(),
                    worker_id: worker.into(),
                    credits: 1,
                })),
            })
            .await
            .unwrap();
            let deliveries = WorkersClient::new(channel)
                .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            (tx, deliveries)
        }
    };
    let ack = |workflow_id: &str, timer_id: &str| v1::WorkerMessage {
        message: Some(Message::Ack(v1::Ack {
            workflow_id: workflow_id.into(),
            timer_id: timer_id.into(),
        })),
    };
    let (holder_tx, mut holder) = subscribe("holder").await;
    let client = c.client();
    client
        .schedule(schedule_at("owned", "t", "q", now_ms() + 300, ""))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(15), holder.message())
        .await
        .expect("delivered within 15 s")
        .unwrap()
        .expect("a delivery");
    assert_eq!((first.timer_id.as_str(), first.attempt), ("t", 1));

    let (intruder_tx, mut intruder) = subscribe("intruder").await;
    intruder_tx.send(ack("owned", "t")).await.unwrap();
    // A key never delivered anywhere is refused the same way.
    intruder_tx.send(ack("owned", "never")).await.unwrap();
    let refused = || c.metric(leader, "hourglass_acks_refused_total").unwrap();
    wait_until(Duration::from_secs(10), || refused() >= 2.0, "acks refused").await;
    let state = client.get("owned", "t").await.unwrap().state;
    assert_eq!(
        state,
        v1::TimerState::Fired as i32,
        "a refused ack completed"
    );

    // The holder leaves: the timer is still in flight and goes to the other stream.
    drop(holder_tx);
    drop(holder);
    let again = tokio::time::timeout(Duration::from_secs(15), intruder.message())
        .await
        .expect("redelivered within 15 s")
        .unwrap()
        .expect("a delivery");
    assert_eq!((again.timer_id.as_str(), again.attempt), ("t", 2));
    intruder_tx.send(ack("owned", "t")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = client.get("owned", "t").await.unwrap().state;
        if state == v1::TimerState::Completed as i32 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never completed: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused(), 2.0);
}

/// Polls `cond` every 100 ms until it holds.
async fn wait_until(within: Duration, cond: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A queue with no worker while thousands of timers with large payloads fire: none of them is
/// held in memory (by the dispatcher's own gauges) however long they wait; then a worker
/// subscribes and gets every one, intact, while each node holds at most one delivery window
/// per partition it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fired_timers_wait_on_disk_until_a_worker_comes() {
    const N: u64 = 2_000;
    const WINDOW: f64 = 40.0;
    let c = Cluster::start(Options {
        extra_toml: format!("[timers]\ndelivery_window = {WINDOW}\n"),
        ..Options::default()
    })
    .await
    .unwrap();
    let client = c.client();
    let payload = "p".repeat(8 * 1024);
    let due = now_ms() + 1_000;
    let mut expected = BTreeSet::new();
    let ids: Vec<u64> = (0..N).collect();
    for chunk in ids.chunks(200) {
        let batch = chunk
            .iter()
            .map(|i| {
                expected.insert((format!("wf-{i}"), "t".to_string()));
                schedule_at(&format!("wf-{i}"), "t", "q", due, &payload)
            })
            .collect();
        for r in client.schedule_batch(batch).await.unwrap() {
            r.unwrap();
        }
    }
    let fired = || c.metric_total("hourglass_timers_fired_total").unwrap();
    wait_until(
        Duration::from_secs(60),
        || fired() >= N as f64,
        "every timer fired",
    )
    .await;
    let held_max = |id| c.metric(id, "hourglass_deliveries_in_memory_max").unwrap();
    for node in &c.nodes {
        assert_eq!(held_max(node.id), 0.0, "node {} held fired timers", node.id);
    }

    let worker = c.worker("q", &["--credits", "64"]).unwrap();
    let seen = worker
        .wait_for(Duration::from_secs(60), |s| keys(s).is_superset(&expected))
        .await
        .unwrap_or_else(|e| panic!("{e}; missing {}", missing(&expected, &worker).len()));
    assert!(
        seen.iter().all(|s| s.payload == payload),
        "a payload changed"
    );
    assert_none_early(&seen);
    let partitions = f64::from(c.partitions);
    let mut most = 0.0f64;
    for node in &c.nodes {
        let held = held_max(node.id);
        assert!(
            held <= partitions * WINDOW,
            "node {} held {held} fired timers, over {partitions} windows of {WINDOW}",
            node.id
        );
        most = most.max(held);
    }
    assert!(
        most > 0.0,
        "the gauge never moved: it cannot bound anything"
    );
}
