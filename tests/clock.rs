//! Clock faults on real 3-process clusters, each node under libfaketime (its wall clock moved
//! at run time, its monotonic clock true). The reference for "early" and "late" is this test's
//! own clock and its own record of each timer's due time, never a server's echo.

use std::collections::BTreeMap;
use std::time::Duration;

use hourglass_client::Client;
use hourglass_tests::{now_ms, schedule_at, schedule_in, Cluster, Options, Seen, WorkerProc};

/// Allowance for reading a delivery off the worker's pipe; nothing else is forgiven.
const MEASUREMENT_SLACK_MS: u64 = 50;

fn options() -> Options {
    Options {
        partitions: 1,
        faketime: true,
        extra_toml: "[timers]\nack_timeout_ms = 3000\n".into(),
        ..Options::default()
    }
}

/// Schedules `n` timers through `client`, alternating absolute times and delays of 1–5 s;
/// returns each timer's due time by this test's clock (for a delay: the send time plus it,
/// a lower bound of when it may fire).
async fn schedule_batch(client: &Client, tag: &str, n: u64) -> BTreeMap<String, u64> {
    let mut due = BTreeMap::new();
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let lead = 1_000 + (i * 4_000) / n.max(1);
        let sent = now_ms();
        let request = if i % 2 == 0 {
            schedule_at("wf", &id, "q", sent + lead, tag)
        } else {
            let mut r = schedule_in("wf", &id, Duration::from_millis(lead), tag);
            r.queue = "q".into();
            r
        };
        client.schedule(request).await.unwrap();
        due.insert(id, sent + lead);
    }
    due
}

/// Waits for every timer of `due` and checks each first delivery against this test's clock:
/// never before its due time, and at most `max_late_ms` after it.
async fn assert_on_time(worker: &WorkerProc, due: &BTreeMap<String, u64>, max_late_ms: u64) {
    let seen = worker
        .wait_for(Duration::from_secs(30), |seen| {
            due.keys().all(|id| seen.iter().any(|s| &s.timer_id == id))
        })
        .await
        .unwrap_or_else(|e| panic!("not every timer was delivered: {e}"));
    let mut first: BTreeMap<&str, &Seen> = BTreeMap::new();
    for s in &seen {
        first.entry(s.timer_id.as_str()).or_insert(s);
    }
    for (id, &at) in due {
        let s = first[id.as_str()];
        assert!(
            s.received_ms + MEASUREMENT_SLACK_MS >= at,
            "{id} received {} ms before it was due: {s:?}",
            at - s.received_ms
        );
        assert!(
            s.received_ms <= at + max_late_ms,
            "{id} received {} ms after it was due: {s:?}",
            s.received_ms - at
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_clock_runs_ahead_fires_nothing_early() {
    let c = Cluster::start(options()).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let leader = c.leader_of(0).await.unwrap();
    // Timers already in the leader's wheel when its clock jumps.
    let loaded = schedule_batch(&c.client(), "loaded", 20).await;
    c.set_clock(leader, 300_000).await.unwrap();
    assert_on_time(&worker, &loaded, 2_000).await;
    for (step, ahead_ms) in [("30s", 30_000i64), ("10m", 600_000)] {
        c.set_clock(leader, ahead_ms).await.unwrap();
        // Through the skewed leader itself and through the others.
        let due = schedule_batch(&c.client_of(&[leader]), &format!("ahead-{step}"), 20).await;
        assert_on_time(&worker, &due, 2_000).await;
        assert_eq!(
            c.leader_of(0).await.unwrap(),
            leader,
            "the test needs the same leader"
        );
    }
    // The skewed node knows it is the odd one out, and says so.
    let (code, body) = c.http_get(leader, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("clock out of bounds"), "{body}");
    let other = leader % 3 + 1;
    let (code, body) = c.http_get(other, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = c.http_get(other, "/metrics").unwrap();
    let exported: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("hourglass_clock_offset_seconds{")
                && l.contains(&format!("peer=\"{leader}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no offset of node {leader} exported:\n{metrics}"));
    assert!((exported - 600.0).abs() < 1.0, "exported offset {exported}");
    let status = c.status().await.unwrap();
    let node = status.nodes.iter().find(|n| n.node_id == leader).unwrap();
    assert!(node.clock_out_of_bounds, "{node:?}");
    assert!(
        (node.clock_offset_ms.unwrap() - 600_000).abs() < 1_000,
        "{node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stepped_back_still_fires_everything_on_time() {
    let c = Cluster::start(options()).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let leader = c.leader_of(0).await.unwrap();
    // Timers loaded before the step, then the step, then timers scheduled through the leader.
    let before = schedule_batch(&c.client(), "before-step", 10).await;
    c.set_clock(leader, -60_000).await.unwrap();
    let after = schedule_batch(&c.client_of(&[leader]), "after-step", 20).await;
    assert_on_time(&worker, &before, 2_000).await;
    assert_on_time(&worker, &after, 2_000).await;
    // And back: the forward step of its return changes nothing either.
    c.set_clock(leader, 0).await.unwrap();
    let back = schedule_batch(&c.client_of(&[leader]), "stepped-forward", 10).await;
    assert_on_time(&worker, &back, 2_000).await;
    assert_eq!(
        c.leader_of(0).await.unwrap(),
        leader,
        "no leader change needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_follower_changes_nothing() {
    let c = Cluster::start(options()).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    let leader = c.leader_of(0).await.unwrap();
    let follower = leader % 3 + 1;
    for (step, skew) in [("ahead", 600_000i64), ("behind", -600_000)] {
        c.set_clock(follower, skew).await.unwrap();
        // Delays resolved on the skewed follower itself must not land early or late either.
        let due = schedule_batch(&c.client_of(&[follower]), &format!("follower-{step}"), 20).await;
        assert_on_time(&worker, &due, 2_000).await;
    }
}

/// Hourglass trusts a majority of clocks, not an oracle: when every clock is wrong by the same
/// amount, timers follow that common time. A delay still lasts as long as asked; an absolute
/// time is judged by the cluster's (wrong) clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_clock_is_skewed_timers_follow_the_common_time() {
    let c = Cluster::start(options()).await.unwrap();
    let worker = c.worker("q", &[]).unwrap();
    for id in 1..=3 {
        c.set_clock(id, 20_000).await.unwrap();
    }
    let client = c.client();
    let sent = now_ms();
    let mut delayed = schedule_in("wf", "delay-3s", Duration::from_secs(3), "");
    delayed.queue = "q".into();
    client.schedule(delayed).await.unwrap();
    // Due in 10 s by the true clock, but 20 s ago by the cluster's: it fires at once.
    client
        .schedule(schedule_at("wf", "at-plus-10s", "q", sent + 10_000, ""))
        .await
        .unwrap();
    let seen = worker
        .wait_for(Duration::from_secs(20), |s| s.len() >= 2)
        .await
        .unwrap();
    let by_id = |id: &str| seen.iter().find(|s| s.timer_id == id).unwrap().clone();
    let at = by_id("at-plus-10s");
    assert!(at.received_ms < sent + 5_000, "{at:?}");
    let delayed = by_id("delay-3s");
    assert!(
        delayed.received_ms + MEASUREMENT_SLACK_MS >= sent + 3_000
            && delayed.received_ms <= sent + 5_000,
        "{delayed:?}"
    );
}
