//! Integration tests on real 3-node clusters: separate `hourglass serve` processes, gRPC over
//! loopback, RocksDB on disk.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hourglass_client::v1;
use hourglass_tests::{now_ms, schedule_at, schedule_in, Cluster, Options};
use hourglass_types::partition_for;
use tonic::Code;

const HOUR: Duration = Duration::from_secs(3600);

/// Timers in SCHEDULED state over every partition, as the cluster reports them.
async fn pending_timers(c: &Cluster) -> u64 {
    c.status()
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.timers_pending)
        .sum()
}

/// What the cluster reports of `partition`.
async fn partition_status(c: &Cluster, partition: u32) -> v1::PartitionStatus {
    c.status()
        .await
        .unwrap()
        .partitions
        .into_iter()
        .find(|p| p.partition == partition)
        .unwrap()
}

async fn cluster() -> Cluster {
    Cluster::start(Options::default())
        .await
        .expect("cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_through_one_node_read_through_another() {
    let c = cluster().await;
    let n1 = c.client_of(&[1]);
    let n2 = c.client_of(&[2]);
    let n3 = c.client_of(&[3]);

    let created = n1
        .schedule(schedule_in("order-1", "remind", HOUR, "hello"))
        .await
        .unwrap();
    assert!(created.created);
    let t = n2.get("order-1", "remind").await.unwrap();
    assert_eq!(t.payload, b"hello");
    assert_eq!(t.state, v1::TimerState::Scheduled as i32);
    assert_eq!(t.queue, "default");
    assert_eq!(t.partition, partition_for("order-1", c.partitions));

    // G6: an identical repeat returns the existing timer; a different one is refused.
    let again = n3
        .schedule(schedule_in("order-1", "remind", HOUR, "hello"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.timer, created.timer);
    let err = n3
        .schedule(schedule_in("order-1", "remind", HOUR, "other"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::AlreadyExists));

    for i in 0..5 {
        n1.schedule(schedule_in("order-1", &format!("t{i}"), HOUR, ""))
            .await
            .unwrap();
    }
    let listed = n3.list("order-1").await.unwrap();
    assert_eq!(listed.len(), 6);
    let page = n2.list_page("order-1", 4, "").await.unwrap();
    assert_eq!(page.timers.len(), 4);
    let rest = n2
        .list_page("order-1", 4, &page.next_page_token)
        .await
        .unwrap();
    assert_eq!(rest.timers.len(), 2);
    assert!(rest.next_page_token.is_empty());

    let cancelled = n2.cancel("order-1", "t0").await.unwrap();
    assert_eq!(cancelled.outcome, v1::CancelOutcome::Cancelled as i32);
    // Cancelling again is idempotent; the tombstone stays readable.
    let again = n3.cancel("order-1", "t0").await.unwrap();
    assert_eq!(again.outcome, v1::CancelOutcome::Cancelled as i32);
    assert_eq!(
        n1.get("order-1", "t0").await.unwrap().state,
        v1::TimerState::Cancelled as i32
    );
    let missing = n1.cancel("order-1", "nope").await.unwrap_err();
    assert_eq!(missing.code(), Some(Code::NotFound));

    let status = c.status().await.unwrap();
    assert_eq!(status.nodes.len(), 3);
    assert!(status.nodes.iter().all(|n| n.reachable));
    assert!(status
        .partitions
        .iter()
        .all(|p| p.leader != 0 && p.replicas.len() == 3));
    let pending: u64 = status.partitions.iter().map(|p| p.timers_pending).sum();
    assert_eq!(pending, 5);
    // Every node re-executed itself with two malloc arenas and a fixed mmap threshold
    // (crates/hourglass/src/allocator.rs).
    for id in 1..=3 {
        assert!(
            c.stderr(id).contains("glibc.malloc.arena_max=2")
                && c.stderr(id).contains("glibc.malloc.mmap_threshold=131072"),
            "{}",
            c.stderr(id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_the_field_named() {
    let c = cluster().await;
    let client = c.client_of(&[2]);
    let cases: Vec<(v1::ScheduleRequest, &str)> = vec![
        (schedule_in("", "t", HOUR, ""), "workflow_id"),
        (schedule_in("w", &"x".repeat(257), HOUR, ""), "timer_id"),
        (
            v1::ScheduleRequest {
                queue: "bad queue!".into(),
                ..schedule_in("w", "t", HOUR, "")
            },
            "queue",
        ),
        (
            schedule_in("w", "t", HOUR, &"p".repeat(64 * 1024 + 1)),
            "payload",
        ),
        (
            v1::ScheduleRequest {
                when: None,
                ..schedule_in("w", "t", HOUR, "")
            },
            "fire_at",
        ),
        (
            v1::ScheduleRequest {
                when: Some(v1::schedule_request::When::Delay(prost_types::Duration {
                    seconds: -3,
                    nanos: 0,
                })),
                ..schedule_in("w", "t", HOUR, "")
            },
            "delay",
        ),
    ];
    for (req, field) in cases {
        let err = client.schedule(req).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::InvalidArgument), "{field}: {err}");
        assert!(
            err.to_string().contains(field),
            "{field} not named in {err}"
        );
    }
    // Nothing was half-written.
    assert_eq!(
        client.get("w", "t").await.unwrap_err().code(),
        Some(Code::NotFound)
    );
    assert_eq!(client.list("w").await.unwrap().len(), 0);
    let err = client.list_page("w", 10, "not-a-token").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    let err = client.list_page("w", 5000, "").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("page_size"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_loses_no_acknowledged_timer() {
    let mut c = cluster().await;
    let client = c.client();
    let mut acked = Vec::new();
    for i in 0..120 {
        let w = format!("wf-{}", i % 30);
        let t = format!("t-{i}");
        client
            .schedule(schedule_in(&w, &t, HOUR, &i.to_string()))
            .await
            .unwrap();
        acked.push((w, t));
    }
    let partition = partition_for("wf-0", c.partitions);
    let leader = c.leader_of(partition).await.unwrap();
    c.kill(leader);

    let survivors: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    let client = c.client_of(&survivors);
    // Writes to the partition whose leader died resume within a few seconds.
    let started = Instant::now();
    client
        .schedule(schedule_in("wf-0", "after-failover", HOUR, ""))
        .await
        .unwrap();
    let resumed = started.elapsed();
    assert!(
        resumed < Duration::from_secs(10),
        "writes resumed only after {resumed:?}"
    );

    for (w, t) in &acked {
        let timer = client
            .get(w, t)
            .await
            .unwrap_or_else(|e| panic!("{w}/{t} lost: {e}"));
        assert_eq!(timer.state, v1::TimerState::Scheduled as i32);
    }
    // The killed node comes back from its data and catches up.
    c.spawn(leader).unwrap();
    c.wait_all_led(Duration::from_secs(30)).await.unwrap();
    let only_restarted = c.client_of(&[leader]);
    assert!(only_restarted.get("wf-0", "after-failover").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_survives_node_one_and_a_full_restart() {
    let mut c = cluster().await;
    c.client_of(&[1])
        .schedule(schedule_in("order-7", "ship", HOUR, "parcel"))
        .await
        .unwrap();
    c.kill(1);
    let t = c.client_of(&[2]).get("order-7", "ship").await.unwrap();
    assert_eq!(t.payload, b"parcel");

    // Every node at once, without a clean shutdown.
    c.kill(2);
    c.kill(3);
    for i in 1..=3 {
        c.spawn(i).unwrap();
    }
    c.wait_all_led(Duration::from_secs(60)).await.unwrap();
    let t = c.client_of(&[3]).get("order-7", "ship").await.unwrap();
    assert_eq!(t.payload, b"parcel");
    assert_eq!(t.state, v1::TimerState::Scheduled as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_timers_survive_a_full_restart() {
    let mut c = cluster().await;
    let client = c.client();
    for i in 0..200 {
        client
            .schedule(schedule_in(
                &format!("w{}", i % 50),
                &format!("t{i}"),
                HOUR,
                "",
            ))
            .await
            .unwrap();
    }
    for i in 1..=3 {
        c.kill(i);
    }
    for i in 1..=3 {
        c.spawn(i).unwrap();
    }
    c.wait_all_led(Duration::from_secs(60)).await.unwrap();
    let client = c.client();
    let mut found = 0;
    for w in 0..50 {
        found += client.list(&format!("w{w}")).await.unwrap().len();
    }
    assert_eq!(found, 200);
    let pending = pending_timers(&c).await;
    assert_eq!(pending, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refused_then_rebuilt_safely_with_rejoin() {
    let mut c = cluster().await;
    c.client()
        .schedule(schedule_in("w", "t", HOUR, ""))
        .await
        .unwrap();
    c.kill(2);
    c.wipe(2).unwrap();
    c.spawn(2).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = c.try_exit(2) {
            break s;
        }
        assert!(Instant::now() < deadline, "wiped node kept running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    assert!(c.stderr(2).contains("wiped or replaced"), "{}", c.stderr(2));
    // The rest of the cluster keeps serving.
    let survivors = c.client_of(&[1, 3]);
    assert!(survivors.get("w", "t").await.is_ok());
    survivors
        .schedule(schedule_in("w", "while-away", HOUR, ""))
        .await
        .unwrap();

    // The operator's recovery: --rejoin fences the lost votes and catches up.
    let earlier = c.stderr(2).len();
    c.spawn_with(2, &["--rejoin"]).unwrap();
    let log = |c: &Cluster| c.stderr(2)[earlier..].to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log(&c).contains("node started") {
        assert!(c.try_exit(2).is_none(), "rejoin failed: {}", log(&c));
        assert!(
            Instant::now() < deadline,
            "rejoin did not finish: {}",
            log(&c)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log(&c).contains("votes fenced"), "{}", log(&c));
    c.wait_all_led(Duration::from_secs(30)).await.unwrap();
    // With node 1 gone, every partition needs the rebuilt node 2 for its majority.
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.kill(1);
    let rebuilt = c.client_of(&[2, 3]);
    assert!(rebuilt.get("w", "t").await.is_ok());
    assert!(rebuilt.get("w", "while-away").await.is_ok());
    rebuilt
        .schedule(schedule_in("w", "after", HOUR, ""))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_through_a_snapshot() {
    let mut c = Cluster::start(Options {
        partitions: 1,
        extra_toml: "[raft]\nsnapshot_after_logs = 20\nlogs_kept_after_snapshot = 5\n".into(),
        ..Options::default()
    })
    .await
    .unwrap();
    let lagging = c.leader_of(0).await.unwrap() % 3 + 1;
    c.kill(lagging);
    let others: Vec<u64> = (1..=3).filter(|&i| i != lagging).collect();
    let client = c.client_of(&others);
    for i in 0..100 {
        client
            .schedule(schedule_in("w", &format!("t{i}"), HOUR, ""))
            .await
            .unwrap();
    }
    c.spawn(lagging).unwrap();
    // The log it misses was purged, so it can only catch up from a snapshot.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if has_snapshot(&c, lagging) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot installed on node {lagging}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With another node down, the partition needs the caught-up node for its quorum.
    c.kill(others[0]);
    let client = c.client_of(&[lagging, others[1]]);
    assert_eq!(client.list("w").await.unwrap().len(), 100);
}

/// Whether `node` has a snapshot file of partition 0.
fn has_snapshot(c: &Cluster, node: u64) -> bool {
    std::fs::read_dir(c.data_dir(node).join("snapshots").join("p0"))
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        })
        .unwrap_or(false)
}

/// A log that grows by `raft.snapshot_after_log_bytes` is snapshotted (and so purged) on every
/// replica, however few entries it holds: here a few dozen, against a count of a million.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_snapshots_when_its_log_grows_in_bytes() {
    let c = Cluster::start(Options {
        partitions: 1,
        extra_toml: "[raft]\nsnapshot_after_logs = 1000000\nsnapshot_after_log_bytes = 65536\n"
            .into(),
        ..Options::default()
    })
    .await
    .unwrap();
    let client = c.client();
    let payload = "x".repeat(4096);
    for i in 0..60 {
        client
            .schedule(schedule_in("w", &format!("t{i}"), HOUR, &payload))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(1..=3).all(|n| has_snapshot(&c, n)) {
        assert!(
            Instant::now() < deadline,
            "no snapshot on nodes {:?} after 240 KiB of log",
            (1..=3)
                .filter(|&n| !has_snapshot(&c, n))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.list("w").await.unwrap().len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_data_made_with_another_partition_count() {
    let mut c = cluster().await;
    c.kill(3);
    let config = c.node(3).config.clone();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("partitions = 4", "partitions = 8")).unwrap();
    c.spawn(3).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = c.try_exit(3) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "node kept running with another partition count"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    assert!(
        c.stderr(3).contains("created for 4 partitions"),
        "{}",
        c.stderr(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_batch_answers_each_timer_in_order() {
    let c = cluster().await;
    let client = c.client_of(&[3]);
    client
        .schedule(schedule_in("b-0", "existing", HOUR, "x"))
        .await
        .unwrap();
    let mut batch: Vec<v1::ScheduleRequest> = (0..300)
        .map(|i| schedule_in(&format!("b-{}", i % 40), &format!("t{i}"), HOUR, ""))
        .collect();
    batch.push(schedule_in("b-0", "existing", HOUR, "x")); // identical repeat
    batch.push(schedule_in("b-0", "existing", HOUR, "different")); // conflicting
    batch.push(schedule_in("", "t", HOUR, "")); // invalid
    batch.push(schedule_in("b-1", "t1", HOUR, "")); // repeat of an item of this batch
    let results = client.schedule_batch(batch).await.unwrap();
    assert_eq!(results.len(), 304);
    assert!(results[..300]
        .iter()
        .all(|r| r.as_ref().is_ok_and(|s| s.created)));
    assert!(results[300].as_ref().is_ok_and(|s| !s.created));
    assert_eq!(
        results[301].as_ref().unwrap_err().code(),
        Some(Code::AlreadyExists)
    );
    let invalid = results[302].as_ref().unwrap_err();
    assert_eq!(invalid.code(), Some(Code::InvalidArgument));
    assert!(invalid.to_string().contains("workflow_id"));
    assert!(results[303].as_ref().is_ok_and(|s| !s.created));
    // Everything is readable elsewhere and counted once.
    assert_eq!(c.client_of(&[1]).list("b-7").await.unwrap().len(), 8);
    let pending = pending_timers(&c).await;
    assert_eq!(pending, 301);
}

/// Unary Schedules to one partition arriving together share Raft entries (fewer entries than
/// Schedules), and each still gets its own answer: created, an identical repeat, a conflict.
/// `n` Schedules of `workflow` sent at once through `client`: the first repeats the timer
/// `existing` (scheduled before, with payload "x"), the second conflicts with it, the others
/// are new (`t{i}`, payload `i`); their answers, in order, each checked to be its own.
async fn race_schedules(
    client: hourglass_client::Client,
    workflow: &'static str,
    n: usize,
) -> Vec<hourglass_client::Result<v1::ScheduleResponse>> {
    client
        .schedule(schedule_in(workflow, "existing", HOUR, "x"))
        .await
        .unwrap();
    let client = std::sync::Arc::new(client);
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let client = std::sync::Arc::clone(&client);
            tokio::spawn(async move {
                let request = match i {
                    0 => schedule_in(workflow, "existing", HOUR, "x"),
                    1 => schedule_in(workflow, "existing", HOUR, "different"),
                    _ => schedule_in(workflow, &format!("t{i}"), HOUR, &i.to_string()),
                };
                client.schedule(request).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    assert!(results[0].as_ref().is_ok_and(|r| !r.created));
    let conflict = results[1].as_ref().unwrap_err();
    assert_eq!(conflict.code(), Some(Code::AlreadyExists), "{conflict}");
    for (i, r) in results.iter().enumerate().skip(2) {
        let r = r.as_ref().unwrap();
        let timer = r.timer.as_ref().unwrap();
        assert!(r.created);
        assert_eq!(timer.timer_id, format!("t{i}"), "each call its own answer");
        assert_eq!(timer.payload, i.to_string().as_bytes());
    }
    assert_eq!(client.list(workflow).await.unwrap().len(), n - 1);
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schedules_share_entries_and_keep_their_own_answers() {
    let c = cluster().await;
    let partition = partition_for("shared", c.partitions);
    let p = partition_status(&c, partition).await;
    // Straight to the leader: no forwarding in between to spread the calls out.
    let client = c.client_of(&[p.leader]);
    const N: usize = 400;
    // The first Schedule, of `existing`, takes one entry of its own.
    let applied_before = p.applied_index + 1;
    race_schedules(client, "shared", N).await;
    let p = partition_status(&c, partition).await;
    let entries = p.applied_index - applied_before;
    assert!(
        entries < N as u64 / 2,
        "{N} concurrent Schedules took {entries} entries"
    );
}

/// Unary Schedules that reach a node not leading their partition travel to the leader
/// together, in ScheduleBatch calls, and each caller still gets its own answer, failures
/// included, with the status it would have had alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_schedules_share_calls_and_keep_their_own_answers() {
    let c = cluster().await;
    let partition = partition_for("forwarded", c.partitions);
    let leader = partition_status(&c, partition).await.leader;
    let via = (1..=3).find(|&n| n != leader).unwrap();
    let forwards = |c: &Cluster| c.metric(via, "hourglass_schedule_forwards_total").unwrap();
    // The first Schedule, of `existing`, is forwarded alone.
    let before = forwards(&c) + 1.0;
    const N: usize = 400;
    race_schedules(c.client_of(&[via]), "forwarded", N).await;
    let calls = forwards(&c) - before;
    assert!(
        calls >= 1.0 && calls < N as f64 / 2.0,
        "{N} concurrent Schedules through node {via} took {calls} forwarded calls"
    );
}

/// A routed client sends each call about a workflow straight to its partition's leader: the
/// one node it was given, which does not lead that partition, forwards none of them, while
/// the same call from a client that does not route is forwarded there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_client_calls_the_partition_leader_directly() {
    let c = cluster().await;
    let partition = partition_for("routed", c.partitions);
    let leader = partition_status(&c, partition).await.leader;
    let via = (1..=3).find(|&n| n != leader).unwrap();
    let forwards = |c: &Cluster| c.metric(via, "hourglass_schedule_forwards_total").unwrap();
    let before = forwards(&c);
    let routed = c.client_of(&[via]).routed();
    for i in 0..20 {
        let request = schedule_in("routed", &format!("t{i}"), HOUR, "");
        assert!(routed.schedule(request).await.unwrap().created);
    }
    assert_eq!(routed.get("routed", "t3").await.unwrap().timer_id, "t3");
    assert_eq!(routed.list("routed").await.unwrap().len(), 20);
    routed.cancel("routed", "t4").await.unwrap();
    assert_eq!(
        forwards(&c),
        before,
        "node {via} forwarded Schedules of a routed client"
    );
    let unrouted = c.client_of(&[via]);
    let request = schedule_in("routed", "unrouted", HOUR, "");
    assert!(unrouted.schedule(request).await.unwrap().created);
    assert_eq!(forwards(&c), before + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_expire_as_fast_as_timers_complete() {
    // Batches of 100: expiring one batch per partition per sweep (what this replaced) would
    // take minutes to clear what the workers complete here in seconds.
    let c = Cluster::start(Options {
        extra_toml: "[timers]\ntombstone_retention = \"1s\"\nbatch = 100\n".into(),
        ..Options::default()
    })
    .await
    .unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let client = c.client();
    const TIMERS: u64 = 4_000;
    const WORKFLOWS: u64 = 100;
    const SPREAD_MS: u64 = 6_000;
    // About 670 fires and acks a second, continuously.
    let base = now_ms() + 2_000;
    let requests: Vec<_> = (0..TIMERS)
        .map(|i| {
            let w = format!("wf-{}", i % WORKFLOWS);
            schedule_at(
                &w,
                &format!("t-{i}"),
                "q",
                base + i * SPREAD_MS / TIMERS,
                "",
            )
        })
        .collect();
    for chunk in requests.chunks(500) {
        let results = client.schedule_batch(chunk.to_vec()).await.unwrap();
        assert!(results.iter().all(|r| r.as_ref().is_ok_and(|s| s.created)));
    }
    worker
        .wait_for(Duration::from_secs(60), |seen| {
            seen.iter()
                .map(|s| (&s.workflow_id, &s.timer_id))
                .collect::<BTreeSet<_>>()
                .len()
                == TIMERS as usize
        })
        .await
        .unwrap();
    // Acked by now or within a moment; then retention (1 s) and one sweep (5 s) at most,
    // with slack for the acks' commit and a loaded machine.
    tokio::time::sleep(Duration::from_secs(1 + 5 + 3)).await;
    let mut left = 0;
    for w in 0..WORKFLOWS {
        left += client.list(&format!("wf-{w}")).await.unwrap().len();
    }
    assert_eq!(
        left, 0,
        "completed timers still stored well past their retention"
    );
    // The names are free again.
    let again = client
        .schedule(schedule_in("wf-0", "t-0", HOUR, "again"))
        .await
        .unwrap();
    assert!(again.created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_are_bounded_in_bytes_and_batches_in_payload() {
    let c = cluster().await;
    let client = c.client();
    const TIMERS: usize = 1_000;
    let payload = "p".repeat(60 * 1024);
    let requests: Vec<_> = (0..TIMERS)
        .map(|i| schedule_in("big", &format!("t{i:04}"), HOUR, &payload))
        .collect();
    // 40 × 60 KiB = 2.4 MiB, within the batch's 3 MiB of payload.
    for chunk in requests.chunks(40) {
        let results = client.schedule_batch(chunk.to_vec()).await.unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
    }
    // Through every node: the leader answers, the others forward its pages.
    for node in 1..=3 {
        let client = c.client_of(&[node]);
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let page = client.list_page("big", 1000, &token).await.unwrap();
            let bytes = prost::Message::encoded_len(&page);
            assert!(bytes <= 3 * 1024 * 1024 + 1024, "a page of {bytes} bytes");
            assert!(!page.timers.is_empty());
            pages += 1;
            seen.extend(page.timers.into_iter().map(|t| t.timer_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let expected: Vec<_> = (0..TIMERS).map(|i| format!("t{i:04}")).collect();
        assert_eq!(seen, expected, "node {node}");
        assert!(pages >= 20, "{pages} pages");
    }
    assert_eq!(client.list("big").await.unwrap().len(), TIMERS);

    // 60 × 60 KiB = 3.5 MiB of payload: refused whole, naming the field.
    let oversized: Vec<_> = (0..60)
        .map(|i| schedule_in("over", &format!("t{i}"), HOUR, &payload))
        .collect();
    let err = client.schedule_batch(oversized).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("timers.payload"), "{err}");
    assert_eq!(
        client.get("over", "t0").await.unwrap_err().code(),
        Some(Code::NotFound)
    );
}
