//! The storage crate against real RocksDB in temporary directories.

use hourglass_storage::{keys, LogStore, LogSyncer, StateMachine, Store, TimerEvent, TimerEvents};
use hourglass_types::{
    Command, CommandResponse, NodeId, TimerDefinition, TimerKey, TimerState, TypeConfig,
};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, StorageError};
use tempfile::TempDir;

fn events() -> TimerEvents {
    tokio::sync::broadcast::channel(1024).0
}

/// Opens a store again once the previous handle's background thread has released it.
fn reopen(path: &std::path::Path) -> Store {
    for _ in 0..100 {
        if let Ok(store) = Store::open(path) {
            return store;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Store::open(path).expect("reopening the store")
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path()).expect("open store");
        let syncer = LogSyncer::start(&store);
        let log = LogStore::new(store.clone(), 3, syncer);
        let sm = StateMachine::open(store.clone(), 3, events()).expect("state machine");
        Ok((dir, log, sm))
    }
}

/// openraft's own storage test suite.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn key(w: &str, t: &str) -> TimerKey {
    TimerKey {
        workflow_id: w.into(),
        timer_id: t.into(),
    }
}

fn at(fire_at_ms: u64, payload: &[u8]) -> TimerDefinition {
    TimerDefinition {
        queue: "default".into(),
        fire_at_ms: Some(fire_at_ms),
        delay_ms: None,
        payload: payload.to_vec(),
    }
}

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// The timer ids of every fired, unacknowledged timer of `queue`, in fire order.
fn fired_ids(store: &Store, partition: u32, queue: &str) -> Vec<String> {
    store
        .scan_fired(
            partition,
            queue,
            &keys::fired_queue_prefix(partition, queue),
            usize::MAX,
            usize::MAX,
        )
        .unwrap()
        .into_iter()
        .map(|e| e.record.key.timer_id)
        .collect()
}

fn schedule(k: TimerKey, d: TimerDefinition, now: u64) -> Command {
    Command::Schedule {
        key: k,
        definition: d,
        received_at_ms: now,
    }
}

#[tokio::test]
async fn apply_schedule_is_idempotent_and_cancel_tombstones() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(store.clone(), 5, events()).unwrap();
    let responses = sm
        .apply([
            entry(1, schedule(key("w", "a"), at(1_000, b"x"), 10)),
            // An identical repeat returns the existing timer.
            entry(2, schedule(key("w", "a"), at(1_000, b"x"), 20)),
            // A different definition under the same id is refused.
            entry(3, schedule(key("w", "a"), at(2_000, b"x"), 30)),
            entry(4, schedule(key("w", "b"), at(3_000, b""), 40)),
            entry(
                5,
                Command::Cancel {
                    key: key("w", "b"),
                    received_at_ms: 50,
                },
            ),
            entry(
                6,
                Command::Cancel {
                    key: key("w", "b"),
                    received_at_ms: 60,
                },
            ),
            entry(
                7,
                Command::Cancel {
                    key: key("w", "zzz"),
                    received_at_ms: 70,
                },
            ),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&responses[0], CommandResponse::Scheduled { created: true, timer } if timer.fire_at_ms == 1_000)
    );
    assert!(
        matches!(&responses[1], CommandResponse::Scheduled { created: false, timer } if timer.created_at_ms == 10)
    );
    assert!(matches!(
        &responses[2],
        CommandResponse::AlreadyExists { .. }
    ));
    assert!(
        matches!(&responses[4], CommandResponse::Cancelled { timer } if timer.finished_at_ms == Some(50))
    );
    assert!(
        matches!(&responses[5], CommandResponse::Cancelled { timer } if timer.finished_at_ms == Some(50))
    );
    assert_eq!(responses[6], CommandResponse::NotFound);

    assert_eq!(store.partition_state(5).unwrap().pending, 1);
    let b = store.get_timer(5, &key("w", "b")).unwrap().unwrap();
    assert_eq!(b.state, TimerState::Cancelled);
    // Other partitions see nothing.
    assert!(store.get_timer(4, &key("w", "a")).unwrap().is_none());
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(7));
}

#[tokio::test]
async fn delay_is_anchored_at_receipt_and_repeat_is_identical() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(store.clone(), 0, events()).unwrap();
    let d = TimerDefinition {
        queue: "q".into(),
        fire_at_ms: None,
        delay_ms: Some(500),
        payload: vec![],
    };
    let r = sm
        .apply([
            entry(1, schedule(key("w", "t"), d.clone(), 1_000)),
            entry(2, schedule(key("w", "t"), d, 9_000)),
        ])
        .await
        .unwrap();
    assert!(
        matches!(&r[0], CommandResponse::Scheduled { created: true, timer } if timer.fire_at_ms == 1_500)
    );
    assert!(
        matches!(&r[1], CommandResponse::Scheduled { created: false, timer } if timer.fire_at_ms == 1_500)
    );
}

#[tokio::test]
async fn list_pages_in_timer_order() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(store.clone(), 1, events()).unwrap();
    let entries: Vec<_> = (0..25u64)
        .map(|i| {
            entry(
                i + 1,
                schedule(key("wf", &format!("t{i:02}")), at(i, b""), 0),
            )
        })
        .chain([entry(26, schedule(key("wf2", "x"), at(0, b""), 0))])
        .collect();
    sm.apply(entries).await.unwrap();
    let list = |after: Option<&str>, limit: usize| {
        let mut out = Vec::new();
        store
            .list_timers(1, "wf", after, |t| {
                out.push(t);
                out.len() < limit
            })
            .unwrap();
        out
    };
    let first = list(None, 10);
    assert_eq!(first.len(), 10);
    assert_eq!(first[0].key.timer_id, "t00");
    let rest = list(Some("t09"), 100);
    assert_eq!(rest.len(), 15);
    assert_eq!(rest[0].key.timer_id, "t10");
    assert!(rest.iter().all(|t| t.key.workflow_id == "wf"));
}

#[tokio::test]
async fn snapshot_moves_one_partition_between_nodes() {
    let a_dir = TempDir::new().unwrap();
    let a = Store::open(a_dir.path()).unwrap();
    let mut a_sm = StateMachine::open(a.clone(), 2, events()).unwrap();
    let mut other = StateMachine::open(a.clone(), 3, events()).unwrap();
    a_sm.apply((1..=100u64).map(|i| entry(i, schedule(key("w", &i.to_string()), at(i, b"p"), 0))))
        .await
        .unwrap();
    // The partition's time travels with the snapshot.
    // Fired timers travel too; the receiver indexes them in fire order.
    a_sm.apply([entry(
        101,
        Command::Fire {
            timers: vec![key("w", "3"), key("w", "1"), key("w", "2")],
            fired_at_ms: 7_777,
        },
    )])
    .await
    .unwrap();
    other
        .apply([entry(1, schedule(key("other", "x"), at(1, b""), 0))])
        .await
        .unwrap();
    let snap = a_sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let b_dir = TempDir::new().unwrap();
    let b = Store::open(b_dir.path()).unwrap();
    let mut b_sm = StateMachine::open(b.clone(), 2, events()).unwrap();
    // Stale state on the receiver is replaced, not merged.
    b_sm.apply([entry(1, schedule(key("stale", "x"), at(1, b""), 0))])
        .await
        .unwrap();
    let mut incoming = b_sm.begin_receiving_snapshot().await.unwrap();
    let mut source = snap.snapshot;
    tokio::io::copy(&mut source, &mut *incoming).await.unwrap();
    b_sm.install_snapshot(&snap.meta, incoming).await.unwrap();

    assert_eq!(b.partition_state(2).unwrap().pending, 97);
    assert_eq!(fired_ids(&b, 2, "default"), ["1", "2", "3"]);
    assert!(b.get_timer(2, &key("w", "42")).unwrap().is_some());
    assert!(b.get_timer(2, &key("stale", "x")).unwrap().is_none());
    assert!(b.get_timer(3, &key("other", "x")).unwrap().is_none());
    let (applied, _) = b_sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(101));
    assert_eq!(b.partition_state(2).unwrap().high_water_ms, 7_777);
    assert_eq!(b.partition_state(3).unwrap().high_water_ms, 0);
    let current = b_sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
}

/// A follower may build a snapshot of a partition while a snapshot of the same partition is
/// installed: both write and prune the same directory, and the install once deleted the
/// build's unfinished file, whose rename then failed and stopped the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_during_a_build_leaves_both_whole() {
    let a_dir = TempDir::new().unwrap();
    let a = Store::open(a_dir.path()).unwrap();
    let mut a_sm = StateMachine::open(a.clone(), 2, events()).unwrap();
    a_sm.apply((1..=100u64).map(|i| entry(i, schedule(key("w", &i.to_string()), at(i, b"p"), 0))))
        .await
        .unwrap();

    let b_dir = TempDir::new().unwrap();
    let b = Store::open(b_dir.path()).unwrap();
    let mut b_sm = StateMachine::open(b.clone(), 2, events()).unwrap();
    // Big enough that a build takes a while.
    let big = vec![7u8; 1024];
    for chunk in (1..=20_000u64).collect::<Vec<_>>().chunks(1_000) {
        b_sm.apply(
            chunk
                .iter()
                .map(|&i| entry(i, schedule(key("big", &i.to_string()), at(i, &big), 0))),
        )
        .await
        .unwrap();
    }
    for round in 0..5 {
        let snap = a_sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut incoming = b_sm.begin_receiving_snapshot().await.unwrap();
        let mut source = snap.snapshot;
        tokio::io::copy(&mut source, &mut *incoming).await.unwrap();
        let mut builder = b_sm.get_snapshot_builder().await;
        let build = tokio::spawn(async move { builder.build_snapshot().await });
        // Let the build start writing before the install prunes the directory.
        tokio::time::sleep(std::time::Duration::from_millis(5 * round)).await;
        b_sm.install_snapshot(&snap.meta, incoming).await.unwrap();
        build
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: the build failed: {e}"));
        let current = b_sm.get_current_snapshot().await.unwrap().unwrap();
        assert!(b.get_timer(2, &key("w", "42")).unwrap().is_some());
        assert!(!current.meta.snapshot_id.is_empty());
        // Refill the partition for the next round's build.
        b_sm.apply((1..=20_000u64).map(|i| {
            entry(
                100 + i,
                schedule(key("big", &i.to_string()), at(i, &big), 0),
            )
        }))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn log_survives_reopen_and_purge_bounds_it() {
    let dir = TempDir::new().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut log = LogStore::new(store.clone(), 0, LogSyncer::start(&store));
        log.save_vote(&openraft::Vote::new(3, 1)).await.unwrap();
        // Append through the public API and wait for the flush notification via blocking_append.
        let entries: Vec<_> = (1..=10u64)
            .map(|i| {
                entry(
                    i,
                    Command::Cancel {
                        key: key("w", "t"),
                        received_at_ms: i,
                    },
                )
            })
            .collect();
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries)
            .await
            .unwrap();
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
    }
    // The syncer thread lets go of the database just after its last user is dropped.
    let store = reopen(dir.path());
    let mut log = LogStore::new(store.clone(), 0, LogSyncer::start(&store));
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(openraft::Vote::new(3, 1))
    );
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(4));
    assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
    let entries = openraft::RaftLogReader::try_get_log_entries(&mut log, 0..100)
        .await
        .unwrap();
    assert_eq!(entries.first().map(|e| e.log_id.index), Some(5));
    assert_eq!(entries.len(), 6);
}

/// Replication reads the log in requests of at most `REPLICATION_READ_BYTES` (one entry when a
/// single entry is larger), and reading on from where each stopped yields every entry once.
#[tokio::test]
async fn replication_reads_the_log_in_byte_bounded_requests() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut log = LogStore::new(store.clone(), 0, LogSyncer::start(&store));
    let schedule_of = |index: u64, payload: usize| {
        entry(
            index,
            schedule(key("w", &index.to_string()), at(1, &vec![7u8; payload]), 0),
        )
    };
    // 40 entries of 100 KiB, then one of 3 MiB, then 5 small ones.
    let mut entries: Vec<_> = (1..=40u64).map(|i| schedule_of(i, 100 << 10)).collect();
    entries.push(schedule_of(41, 3 << 20));
    entries.extend((42..=46u64).map(|i| schedule_of(i, 10)));
    openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries)
        .await
        .unwrap();

    let mut reader = log.get_log_reader().await;
    let mut next = 1u64;
    let mut requests = Vec::new();
    while next <= 46 {
        let got = openraft::RaftLogReader::limited_get_log_entries(&mut reader, next, 47)
            .await
            .unwrap();
        let indexes: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(
            indexes,
            (next..next + got.len() as u64).collect::<Vec<_>>(),
            "contiguous from where the last request stopped"
        );
        let bytes: usize = got.iter().map(bincode_len).sum();
        assert!(
            got.len() == 1 || bytes <= hourglass_storage::REPLICATION_READ_BYTES,
            "{} entries of {bytes} bytes in one request",
            got.len()
        );
        requests.push(got.len());
        next += got.len() as u64;
    }
    // 40 x 100 KiB take 4 requests of up to 1 MiB, the 3 MiB entry goes alone.
    assert!(requests.len() >= 6, "{requests:?}");
    assert!(requests.contains(&1), "{requests:?}");
    // The unbounded reader still returns the whole range.
    let all = openraft::RaftLogReader::try_get_log_entries(&mut reader, 1..47)
        .await
        .unwrap();
    assert_eq!(all.len(), 46);
}

fn bincode_len(e: &Entry<TypeConfig>) -> usize {
    bincode::serialized_size(e).unwrap() as usize
}

#[tokio::test]
async fn fire_moves_only_due_scheduled_timers_and_complete_tombstones() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let events = events();
    let mut rx = events.subscribe();
    let mut sm = StateMachine::open(store.clone(), 0, events.clone()).unwrap();
    sm.apply([
        entry(1, schedule(key("w", "due"), at(100, b""), 0)),
        entry(2, schedule(key("w", "later"), at(5_000, b""), 0)),
        entry(3, schedule(key("w", "cancelled"), at(100, b""), 0)),
        entry(
            4,
            Command::Cancel {
                key: key("w", "cancelled"),
                received_at_ms: 50,
            },
        ),
    ])
    .await
    .unwrap();
    let fire = Command::Fire {
        timers: vec![
            key("w", "due"),
            key("w", "later"),
            key("w", "cancelled"),
            key("w", "due"),
            key("w", "ghost"),
        ],
        fired_at_ms: 200,
    };
    let r = sm
        .apply([entry(5, fire.clone()), entry(6, fire)])
        .await
        .unwrap();
    // Not yet due, cancelled, repeated or unknown timers are left alone: only "due" fires, once.
    match &r[0] {
        CommandResponse::Fired { timers, not_due } => {
            assert_eq!(timers.len(), 1);
            assert_eq!(timers[0].key, key("w", "due"));
            assert_eq!(timers[0].attempt, 1);
            // Still scheduled but not due: the engine is told, so it can fire it later.
            assert_eq!(not_due, &vec![(key("w", "later"), 5_000)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        r[1],
        CommandResponse::Fired {
            timers: vec![],
            not_due: vec![(key("w", "later"), 5_000)]
        }
    );
    assert_eq!(store.partition_state(0).unwrap().pending, 1);
    assert_eq!(fired_ids(&store, 0, "default"), ["due"]);
    // A cancel after the fire answers already-fired.
    let r = sm
        .apply([entry(
            7,
            Command::Cancel {
                key: key("w", "due"),
                received_at_ms: 300,
            },
        )])
        .await
        .unwrap();
    assert!(matches!(r[0], CommandResponse::AlreadyFired { .. }));
    let r = sm
        .apply([entry(
            8,
            Command::Complete {
                timers: vec![key("w", "due"), key("w", "later")],
                completed_at_ms: 400,
            },
        )])
        .await
        .unwrap();
    assert_eq!(r[0], CommandResponse::Completed { count: 1 });
    assert!(fired_ids(&store, 0, "default").is_empty());
    assert_eq!(
        store.get_timer(0, &key("w", "due")).unwrap().unwrap().state,
        TimerState::Completed
    );

    let mut seen = Vec::new();
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }
    assert_eq!(
        seen,
        vec![
            TimerEvent::Scheduled {
                key: key("w", "due"),
                fire_at_ms: 100
            },
            TimerEvent::Scheduled {
                key: key("w", "later"),
                fire_at_ms: 5_000
            },
            TimerEvent::Scheduled {
                key: key("w", "cancelled"),
                fire_at_ms: 100
            },
            TimerEvent::Unscheduled {
                key: key("w", "cancelled"),
                fire_at_ms: 100
            },
            TimerEvent::Unscheduled {
                key: key("w", "due"),
                fire_at_ms: 100
            },
        ]
    );
}

/// A `Fire` proposed with a time behind the partition's (a leader whose clock stepped back)
/// commits at the partition's time: it never goes back, and nothing fires before its due time.
/// Each queue's fired timers come back in fire order (a later fire after an earlier one,
/// whatever their due times; inside one fire by due time), bounded in count and bytes, from
/// any cursor, and an acknowledged timer leaves the index.
#[tokio::test]
async fn fired_timers_are_read_per_queue_in_fire_order() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(store.clone(), 0, events()).unwrap();
    let in_queue = |queue: &str, fire_at_ms: u64| TimerDefinition {
        queue: queue.into(),
        ..at(fire_at_ms, &[7; 100])
    };
    let mut entries = Vec::new();
    for (i, (id, queue, due)) in [
        ("a", "q", 50),
        ("b", "q", 10),
        ("c", "other", 10),
        ("d", "q", 5),
        ("e", "q", 40),
    ]
    .into_iter()
    .enumerate()
    {
        entries.push(entry(
            i as u64 + 1,
            schedule(key("w", id), in_queue(queue, due), 0),
        ));
    }
    let fire = |index, ids: &[&str]| {
        entry(
            index,
            Command::Fire {
                timers: ids.iter().map(|id| key("w", id)).collect(),
                fired_at_ms: 100,
            },
        )
    };
    // The second fire holds an earlier due time than the first: fire order wins.
    entries.push(fire(6, &["a", "e", "c"]));
    entries.push(fire(7, &["d", "b"]));
    sm.apply(entries).await.unwrap();
    assert_eq!(fired_ids(&store, 0, "q"), ["e", "a", "d", "b"]);
    assert_eq!(fired_ids(&store, 0, "other"), ["c"]);
    assert!(fired_ids(&store, 1, "q").is_empty());

    let start = keys::fired_queue_prefix(0, "q");
    let page = store.scan_fired(0, "q", &start, 3, usize::MAX).unwrap();
    assert_eq!(page.len(), 3);
    assert_eq!(page[0].record.fire_seq, Some(6));
    // Bytes: two payloads of 100 reach 150, so the scan stops after them.
    assert_eq!(store.scan_fired(0, "q", &start, 10, 150).unwrap().len(), 2);
    // At least one, however large.
    assert_eq!(store.scan_fired(0, "q", &start, 10, 1).unwrap().len(), 1);
    // Resuming after the last key read.
    let mut after = page[2].raw.clone();
    after.push(0);
    let rest = store.scan_fired(0, "q", &after, 10, usize::MAX).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].record.key.timer_id, "b");

    sm.apply([entry(
        8,
        Command::Complete {
            timers: vec![key("w", "a"), key("w", "c")],
            completed_at_ms: 200,
        },
    )])
    .await
    .unwrap();
    assert_eq!(fired_ids(&store, 0, "q"), ["e", "d", "b"]);
    assert!(fired_ids(&store, 0, "other").is_empty());
}

#[tokio::test]
async fn the_partition_time_never_goes_back() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(store.clone(), 0, events()).unwrap();
    sm.apply([
        entry(1, schedule(key("w", "a"), at(101_000, b""), 0)),
        entry(2, schedule(key("w", "b"), at(101_500, b""), 0)),
        entry(3, schedule(key("w", "c"), at(103_000, b""), 0)),
    ])
    .await
    .unwrap();
    let fire = |timers: Vec<TimerKey>, fired_at_ms| Command::Fire {
        timers,
        fired_at_ms,
    };
    let r = sm
        .apply([
            entry(4, fire(vec![key("w", "a")], 102_000)),
            // A minute behind: commits at 102000 all the same, so "b" (due 101500) fires then.
            entry(
                5,
                fire(vec![key("w", "b"), key("w", "c")], 102_000 - 60_000),
            ),
        ])
        .await
        .unwrap();
    let CommandResponse::Fired { timers, not_due } = &r[1] else {
        panic!("{:?}", r[1]);
    };
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].key, key("w", "b"));
    assert_eq!(timers[0].fired_at_ms, Some(102_000));
    assert_eq!(not_due, &vec![(key("w", "c"), 103_000)]);
    assert_eq!(store.partition_state(0).unwrap().high_water_ms, 102_000);
    // Every fired timer carries a time at or after its due time.
    for k in ["a", "b"] {
        let t = store.get_timer(0, &key("w", k)).unwrap().unwrap();
        assert!(t.fired_at_ms.unwrap() >= t.fire_at_ms);
    }
}

#[tokio::test]
async fn due_scan_is_ordered_bounded_and_resumable() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(store.clone(), 4, events()).unwrap();
    let mut entries = Vec::new();
    for (i, (t, w)) in [
        (300, "b"),
        (100, "z"),
        (100, "a"),
        (200, "c"),
        (10_000, "far"),
    ]
    .iter()
    .enumerate()
    {
        entries.push(entry(i as u64 + 1, schedule(key(w, "t"), at(*t, b""), 0)));
    }
    sm.apply(entries).await.unwrap();
    let start = hourglass_storage::keys::partition_prefix(4);
    let first = store.scan_due(4, &start, 1_000, 2).unwrap();
    let got: Vec<_> = first
        .iter()
        .map(|e| (e.fire_at_ms, e.key.workflow_id.as_str()))
        .collect();
    assert_eq!(got, vec![(100, "a"), (100, "z")]);
    let mut resume = first[1].raw.clone();
    resume.push(0);
    let rest = store.scan_due(4, &resume, 1_000, 10).unwrap();
    let got: Vec<_> = rest
        .iter()
        .map(|e| (e.fire_at_ms, e.key.workflow_id.as_str()))
        .collect();
    assert_eq!(got, vec![(200, "c"), (300, "b")]);
}

#[tokio::test]
async fn tombstones_expire_after_retention_and_free_the_name() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut sm = StateMachine::open(store.clone(), 0, events()).unwrap();
    sm.apply([
        entry(1, schedule(key("w", "old"), at(10, b""), 0)),
        entry(
            2,
            Command::Cancel {
                key: key("w", "old"),
                received_at_ms: 100,
            },
        ),
        entry(3, schedule(key("w", "new"), at(10, b""), 0)),
        entry(
            4,
            Command::Cancel {
                key: key("w", "new"),
                received_at_ms: 900,
            },
        ),
        entry(5, schedule(key("w", "live"), at(10, b""), 0)),
    ])
    .await
    .unwrap();
    let start = hourglass_storage::keys::partition_prefix(0);
    let expired = store.scan_tombstones(0, &start, 500, 10).unwrap();
    assert_eq!(
        expired
            .iter()
            .map(|t| (t.finished_at_ms, t.key.clone()))
            .collect::<Vec<_>>(),
        vec![(100, key("w", "old"))]
    );
    let r = sm
        .apply([entry(
            6,
            Command::Expire {
                timers: vec![key("w", "old"), key("w", "new"), key("w", "live")],
                before_ms: 500,
            },
        )])
        .await
        .unwrap();
    // Only the tombstone past retention goes; a recent one and a live timer stay.
    assert_eq!(r[0], CommandResponse::Expired { count: 1 });
    assert!(store.get_timer(0, &key("w", "old")).unwrap().is_none());
    assert!(store.get_timer(0, &key("w", "new")).unwrap().is_some());
    assert!(store.get_timer(0, &key("w", "live")).unwrap().is_some());
    assert!(store
        .scan_tombstones(0, &start, 500, 10)
        .unwrap()
        .is_empty());
    // The name is free again: a different definition is accepted.
    let r = sm
        .apply([entry(7, schedule(key("w", "old"), at(99, b"x"), 1_000))])
        .await
        .unwrap();
    assert!(matches!(
        &r[0],
        CommandResponse::Scheduled { created: true, .. }
    ));
}

/// One WAL fsync makes the appends of many groups durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fsync_covers_appends_of_many_groups() {
    let dir = TempDir::new().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let syncer = LogSyncer::start(&store);
    let mut tasks = Vec::new();
    for partition in 0..16u32 {
        let mut log = LogStore::new(store.clone(), partition, syncer.clone());
        tasks.push(tokio::spawn(async move {
            for i in 1..=20u64 {
                let e = entry(
                    i,
                    Command::Cancel {
                        key: key("w", "t"),
                        received_at_ms: i,
                    },
                );
                openraft::storage::RaftLogStorageExt::blocking_append(&mut log, [e])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (syncs, appends) = syncer.stats().get();
    assert_eq!(appends, 16 * 20);
    // Sixteen groups appending at once share fsyncs; one each would be 320.
    assert!(syncs < appends / 2, "{syncs} fsyncs for {appends} appends");
    // Each group's entries are all there after the flush notifications.
    let mut log = LogStore::new(store.clone(), 7, syncer.clone());
    let entries = openraft::RaftLogReader::try_get_log_entries(&mut log, 0..100)
        .await
        .unwrap();
    assert_eq!(entries.len(), 20);
}
