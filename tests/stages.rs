//! The per-stage latency histograms on a real 3-process cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hourglass_tests::{now_ms, schedule_at, Cluster, Options};
use hourglass_types::partition_for;

/// How many samples `histogram{stage="…"}` counted on node `id`.
fn stage_count(c: &Cluster, id: u64, histogram: &str, stage: &str) -> u64 {
    let (code, text) = c.http_get(id, "/metrics").unwrap();
    assert_eq!(code, 200, "/metrics of node {id}");
    text.lines()
        .filter(|l| {
            l.starts_with(&format!("{histogram}_count{{"))
                && l.contains(&format!("stage=\"{stage}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Timers scheduled through node 1 and delivered to a worker leave a sample in every stage
/// of their path: the fire's and the Schedule's on the leaders of their partitions, Raft's
/// on the leaders and followers, and forwarding on node 1 for the partitions it does not lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_of_a_fire_and_a_schedule_is_measured() {
    let c = Cluster::start(Options::default()).await.unwrap();
    let status = c.wait_all_led(Duration::from_secs(30)).await.unwrap();
    let partitions = status.partition_count;
    let leaders: BTreeMap<u32, u64> = status
        .partitions
        .iter()
        .map(|p| (p.partition, p.leader))
        .collect();
    let worker = c.worker("q", &[]).unwrap();
    let client = c.client_of(&[1]);
    let base = now_ms() + 1_500;
    let mut expected = BTreeSet::new();
    let mut used = BTreeSet::new();
    for i in 0..24u64 {
        let w = format!("wf-{i}");
        let t = format!("t-{i}");
        // Most are fired ahead and parked until due (`release`); every fourth is already due
        // when scheduled, so its fire goes straight to the dispatcher (`dispatch`).
        let at = if i % 4 == 0 {
            now_ms() - 1_000
        } else {
            base + i * 10
        };
        client
            .schedule(schedule_at(&w, &t, "q", at, ""))
            .await
            .unwrap();
        used.insert(partition_for(&w, partitions));
        expected.insert((w, t));
    }
    let seen = worker
        .wait_for(Duration::from_secs(30), |s| {
            s.iter()
                .map(|s| (s.workflow_id.clone(), s.timer_id.clone()))
                .collect::<BTreeSet<_>>()
                == expected
        })
        .await
        .unwrap();
    assert!(seen.len() >= expected.len());

    let serving: BTreeSet<u64> = used.iter().map(|p| leaders[p]).collect();
    for &leader in &serving {
        for stage in ["propose", "commit", "stream_write"] {
            let n = stage_count(&c, leader, "hourglass_fire_stage_seconds", stage);
            assert!(n > 0, "fire stage {stage} not measured on leader {leader}");
        }
        for stage in ["propose", "commit", "respond"] {
            let n = stage_count(&c, leader, "hourglass_schedule_stage_seconds", stage);
            assert!(
                n > 0,
                "schedule stage {stage} not measured on leader {leader}"
            );
        }
        for stage in ["leader_log_flush", "replication", "apply"] {
            let n = stage_count(&c, leader, "hourglass_raft_stage_seconds", stage);
            assert!(n > 0, "raft stage {stage} not measured on leader {leader}");
        }
    }
    // A leader may have had timers of one kind only.
    for stage in ["dispatch", "release"] {
        let n: u64 = serving
            .iter()
            .map(|&l| stage_count(&c, l, "hourglass_fire_stage_seconds", stage))
            .sum();
        assert!(n > 0, "fire stage {stage} not measured on any leader");
    }
    let followed: u64 = (1..=3)
        .map(|id| stage_count(&c, id, "hourglass_raft_stage_seconds", "follower_log_flush"))
        .sum();
    assert!(followed > 0, "no follower's log flush measured");
    if serving.iter().any(|&l| l != 1) {
        let n = stage_count(&c, 1, "hourglass_schedule_stage_seconds", "forward");
        assert!(n > 0, "node 1 forwarded schedules but measured no forward");
    }
}
