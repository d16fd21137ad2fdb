//! The one place where column families and key layouts are defined.
//!
//! Every key starts with the partition id as a big-endian `u32`, so that one partition's data
//! is one contiguous range per column family (snapshots iterate it, installs delete it).
//! Strings inside keys use an order-preserving, prefix-free escape (`0x00` → `0x00 0xFF`,
//! terminated by `0x00 0x01`) so that byte order equals the order of the decoded tuple.

use hourglass_types::{TimerKey, TimerRecord, TimerState};

/// Raft log entries: `partition | index (u64 BE)`.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Raft hard state: `partition | tag`.
pub const CF_RAFT_STATE: &str = "raft_state";
/// State-machine bookkeeping: `partition | tag`.
pub const CF_SM_META: &str = "sm_meta";
/// Timers by id: `partition | workflow_id | timer_id`.
pub const CF_TIMERS: &str = "timers";
/// Scheduled timers by due time: `partition | fire_at_ms (u64 BE) | workflow_id | timer_id`.
pub const CF_DUE: &str = "due";
/// Fired timers not yet acknowledged, per queue in fire order:
/// `partition | queue | fire_seq (u64 BE) | fire_at_ms (u64 BE) | workflow_id | timer_id`,
/// where `fire_seq` is the log index of the `Fire` that fired the timer. Keys of a later fire
/// sort after every key already there, so a reader's cursor never misses one.
pub const CF_FIRED: &str = "fired";
/// Tombstones by the time they were written, for expiry:
/// `partition | finished_at_ms (u64 BE) | workflow_id | timer_id`.
pub const CF_TOMBSTONES: &str = "tombstones";

/// Every column family this crate opens, `default` (node metadata) aside.
pub const ALL_CFS: [&str; 7] = [
    CF_RAFT_LOG,
    CF_RAFT_STATE,
    CF_SM_META,
    CF_TIMERS,
    CF_DUE,
    CF_FIRED,
    CF_TOMBSTONES,
];
/// The column families that make up a partition's state machine, hence its snapshot.
pub const SNAPSHOT_CFS: [&str; 4] = [CF_TIMERS, CF_DUE, CF_FIRED, CF_TOMBSTONES];

/// Tags of `CF_RAFT_STATE`.
pub const RAFT_VOTE: u8 = 1;
pub const RAFT_COMMITTED: u8 = 2;
pub const RAFT_LAST_PURGED: u8 = 3;

/// Tags of `CF_SM_META`.
pub const SM_LAST_APPLIED: u8 = 1;
pub const SM_MEMBERSHIP: u8 = 2;
pub const SM_PENDING: u8 = 3;
pub const SM_SNAPSHOT: u8 = 4;
/// The partition's high-water time: the latest time a `Fire` committed.
pub const SM_HIGH_WATER: u8 = 5;
/// A snapshot install under way (its `SnapshotRecord`): present, the partition's state may be
/// half replaced, and opening the state machine loads the snapshot again.
pub const SM_INSTALLING: u8 = 6;

/// Keys of the `default` column family.
pub const META_CLUSTER: &[u8] = b"cluster";
/// The layout of the column families (a `u32`); absent in stores of layout 1, whose
/// `CF_FIRED` keys were `partition | workflow_id | timer_id`. Layout 3 writes timer records
/// without their ids (their key has them): a build of layout 2 would read those as empty, so
/// it must refuse such a store, while this build reads records of both.
pub const META_LAYOUT: &[u8] = b"layout";
/// The layout this build writes.
pub const LAYOUT: u32 = 3;

pub fn partition_prefix(partition: u32) -> [u8; 4] {
    partition.to_be_bytes()
}

/// The first key after every key of `partition`, for range deletes and iterator bounds.
/// Partition ids stay far below `u32::MAX`, so the successor always exists.
pub fn partition_end(partition: u32) -> [u8; 4] {
    debug_assert!(partition < u32::MAX);
    (partition + 1).to_be_bytes()
}

pub fn tagged(partition: u32, tag: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4] = tag;
    k
}

fn partition_and_u64(partition: u32, n: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition.to_be_bytes());
    k[4..].copy_from_slice(&n.to_be_bytes());
    k
}

pub fn log_key(partition: u32, index: u64) -> [u8; 12] {
    partition_and_u64(partition, index)
}

pub fn log_index_of(key: &[u8]) -> u64 {
    debug_assert_eq!(key.len(), 12);
    u64::from_be_bytes(key[4..12].try_into().expect("log keys are 12 bytes"))
}

fn put_escaped(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Reads one escaped string from the front of `input`; returns it and the rest.
fn take_escaped(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b == 0 {
            match input.get(i + 1)? {
                0xFF => out.push(0),
                0x01 => return Some((out, &input[i + 2..])),
                _ => return None,
            }
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    None
}

/// Prefix of every timer of one workflow in `CF_TIMERS`.
pub fn workflow_prefix(partition: u32, workflow_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + workflow_id.len());
    k.extend_from_slice(&partition.to_be_bytes());
    put_escaped(&mut k, workflow_id.as_bytes());
    k
}

pub fn timer_key(partition: u32, key: &TimerKey) -> Vec<u8> {
    let mut k = workflow_prefix(partition, &key.workflow_id);
    put_escaped(&mut k, key.timer_id.as_bytes());
    k
}

fn timed_key(partition: u32, at_ms: u64, key: &TimerKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + key.workflow_id.len() + key.timer_id.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&at_ms.to_be_bytes());
    put_escaped(&mut k, key.workflow_id.as_bytes());
    put_escaped(&mut k, key.timer_id.as_bytes());
    k
}

/// Every `CF_DUE` (or `CF_TOMBSTONES`) key of `partition` timed before `at_ms` sorts below
/// this bound.
pub fn due_bound(partition: u32, at_ms: u64) -> [u8; 12] {
    partition_and_u64(partition, at_ms)
}

pub fn due_key(partition: u32, fire_at_ms: u64, key: &TimerKey) -> Vec<u8> {
    timed_key(partition, fire_at_ms, key)
}

/// Prefix of every `CF_FIRED` key of `queue` in `partition`; a reader starts here.
pub fn fired_queue_prefix(partition: u32, queue: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + queue.len());
    k.extend_from_slice(&partition.to_be_bytes());
    put_escaped(&mut k, queue.as_bytes());
    k
}

/// The first key after every `CF_FIRED` key of `queue` in `partition`. The escaped queue
/// ends with `0x00 0x01` and no escaped string continues past it, so raising that last byte
/// bounds exactly this queue.
pub fn fired_queue_end(partition: u32, queue: &str) -> Vec<u8> {
    let mut k = fired_queue_prefix(partition, queue);
    *k.last_mut().expect("escaped strings end with a terminator") += 1;
    k
}

pub fn fired_key(
    partition: u32,
    queue: &str,
    fire_seq: u64,
    fire_at_ms: u64,
    key: &TimerKey,
) -> Vec<u8> {
    let mut k = fired_queue_prefix(partition, queue);
    k.extend_from_slice(&fire_seq.to_be_bytes());
    k.extend_from_slice(&fire_at_ms.to_be_bytes());
    put_escaped(&mut k, key.workflow_id.as_bytes());
    put_escaped(&mut k, key.timer_id.as_bytes());
    k
}

/// The `CF_FIRED` key of a fired timer. Timers fired before fire sequences were recorded
/// (layout 1) sort first, as the oldest fires.
pub fn fired_key_of(partition: u32, record: &TimerRecord) -> Vec<u8> {
    fired_key(
        partition,
        &record.definition.queue,
        record.fire_seq.unwrap_or(0),
        record.fire_at_ms,
        &record.key,
    )
}

/// The index entry a timer's record has in its state: a scheduled timer in `CF_DUE`, a fired
/// one in `CF_FIRED`, a finished one in `CF_TOMBSTONES`. It holds only the fields its key is
/// made of, so the record's former place can be kept while the record changes, without its
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexEntry {
    Due {
        fire_at_ms: u64,
    },
    Fired {
        queue: String,
        fire_seq: u64,
        fire_at_ms: u64,
    },
    Tombstone {
        finished_at_ms: u64,
    },
}

impl IndexEntry {
    /// The entry of `record`; none for a finished timer without a finish time.
    pub fn of(record: &TimerRecord) -> Option<Self> {
        match record.state {
            TimerState::Scheduled => Some(IndexEntry::Due {
                fire_at_ms: record.fire_at_ms,
            }),
            // The same key as `fired_key_of`.
            TimerState::Fired => Some(IndexEntry::Fired {
                queue: record.definition.queue.clone(),
                fire_seq: record.fire_seq.unwrap_or(0),
                fire_at_ms: record.fire_at_ms,
            }),
            TimerState::Completed | TimerState::Cancelled => record
                .finished_at_ms
                .map(|finished_at_ms| IndexEntry::Tombstone { finished_at_ms }),
        }
    }

    /// The column family and key of the entry of `key`'s timer in `partition`.
    pub fn key(&self, partition: u32, key: &TimerKey) -> (&'static str, Vec<u8>) {
        match self {
            IndexEntry::Due { fire_at_ms } => (CF_DUE, due_key(partition, *fire_at_ms, key)),
            IndexEntry::Fired {
                queue,
                fire_seq,
                fire_at_ms,
            } => (
                CF_FIRED,
                fired_key(partition, queue, *fire_seq, *fire_at_ms, key),
            ),
            IndexEntry::Tombstone { finished_at_ms } => (
                CF_TOMBSTONES,
                tombstone_key(partition, *finished_at_ms, key),
            ),
        }
    }

    /// The due instant of a scheduled timer's entry.
    pub fn due_at(&self) -> Option<u64> {
        match self {
            IndexEntry::Due { fire_at_ms } => Some(*fire_at_ms),
            _ => None,
        }
    }
}

/// Decodes a `CF_FIRED` key into `(partition, queue, fire_seq, fire_at_ms, key)`.
pub fn decode_fired_key(k: &[u8]) -> Option<(u32, String, u64, u64, TimerKey)> {
    let partition = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
    let (queue, rest) = take_escaped(&k[4..])?;
    let seq = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let at = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
    Some((
        partition,
        String::from_utf8(queue).ok()?,
        seq,
        at,
        decode_ids(&rest[16..])?,
    ))
}

pub fn tombstone_key(partition: u32, finished_at_ms: u64, key: &TimerKey) -> Vec<u8> {
    timed_key(partition, finished_at_ms, key)
}

/// Decodes `esc(workflow_id) | esc(timer_id)`, which must fill `input` exactly.
fn decode_ids(input: &[u8]) -> Option<TimerKey> {
    let (wf, rest) = take_escaped(input)?;
    let (tid, rest) = take_escaped(rest)?;
    if !rest.is_empty() {
        return None;
    }
    Some(TimerKey {
        workflow_id: String::from_utf8(wf).ok()?,
        timer_id: String::from_utf8(tid).ok()?,
    })
}

/// Decodes a `CF_DUE` or `CF_TOMBSTONES` key into `(partition, time, key)`.
pub fn decode_timed_key(k: &[u8]) -> Option<(u32, u64, TimerKey)> {
    let partition = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
    let at = u64::from_be_bytes(k.get(4..12)?.try_into().ok()?);
    Some((partition, at, decode_ids(&k[12..])?))
}

/// Decodes a `CF_TIMERS` key into `(partition, key)`.
pub fn decode_timer_key(k: &[u8]) -> Option<(u32, TimerKey)> {
    let partition = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
    Some((partition, decode_ids(&k[4..])?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(w: &str, t: &str) -> TimerKey {
        TimerKey {
            workflow_id: w.into(),
            timer_id: t.into(),
        }
    }

    // Strings with NULs and 0xFF-adjacent chars exercise the escape.
    fn id() -> impl Strategy<Value = String> {
        prop_oneof!["[a-c\u{0}\u{1}]{0,6}", ".{0,12}",]
    }

    proptest! {
        #[test]
        fn due_key_order_equals_tuple_order(
            a in (0u32..3, any::<u64>(), id(), id()),
            b in (0u32..3, any::<u64>(), id(), id()),
        ) {
            let ka = due_key(a.0, a.1, &key(&a.2, &a.3));
            let kb = due_key(b.0, b.1, &key(&b.2, &b.3));
            let ta = (a.0, a.1, a.2.as_bytes(), a.3.as_bytes());
            let tb = (b.0, b.1, b.2.as_bytes(), b.3.as_bytes());
            prop_assert_eq!(ka.cmp(&kb), ta.cmp(&tb));
            prop_assert_eq!(decode_timed_key(&ka), Some((a.0, a.1, key(&a.2, &a.3))));
        }

        #[test]
        fn timer_key_order_equals_tuple_order(
            a in (0u32..3, id(), id()),
            b in (0u32..3, id(), id()),
        ) {
            let ka = timer_key(a.0, &key(&a.1, &a.2));
            let kb = timer_key(b.0, &key(&b.1, &b.2));
            let ta = (a.0, a.1.as_bytes(), a.2.as_bytes());
            let tb = (b.0, b.1.as_bytes(), b.2.as_bytes());
            prop_assert_eq!(ka.cmp(&kb), ta.cmp(&tb));
            prop_assert_eq!(decode_timer_key(&ka), Some((a.0, key(&a.1, &a.2))));
            // A workflow's prefix selects exactly that workflow's timers.
            prop_assert_eq!(ka.starts_with(&workflow_prefix(b.0, &b.1)), a.0 == b.0 && a.1 == b.1);
        }

        #[test]
        fn fired_key_order_equals_tuple_order_and_queue_ranges_are_exact(
            a in (0u32..3, id(), any::<u64>(), any::<u64>(), id(), id()),
            b in (0u32..3, id(), any::<u64>(), any::<u64>(), id(), id()),
        ) {
            let ka = fired_key(a.0, &a.1, a.2, a.3, &key(&a.4, &a.5));
            let kb = fired_key(b.0, &b.1, b.2, b.3, &key(&b.4, &b.5));
            let ta = (a.0, a.1.as_bytes(), a.2, a.3, a.4.as_bytes(), a.5.as_bytes());
            let tb = (b.0, b.1.as_bytes(), b.2, b.3, b.4.as_bytes(), b.5.as_bytes());
            prop_assert_eq!(ka.cmp(&kb), ta.cmp(&tb));
            prop_assert_eq!(
                decode_fired_key(&ka),
                Some((a.0, a.1.clone(), a.2, a.3, key(&a.4, &a.5)))
            );
            // [prefix, end) of a queue holds exactly that queue's keys.
            let inside = ka.as_slice() >= fired_queue_prefix(b.0, &b.1).as_slice()
                && ka.as_slice() < fired_queue_end(b.0, &b.1).as_slice();
            prop_assert_eq!(inside, a.0 == b.0 && a.1 == b.1);
        }

        #[test]
        fn log_key_order(p in 0u32..5, q in 0u32..5, i in any::<u64>(), j in any::<u64>()) {
            prop_assert_eq!(log_key(p, i).cmp(&log_key(q, j)), (p, i).cmp(&(q, j)));
            prop_assert_eq!(log_index_of(&log_key(p, i)), i);
        }
    }

    #[test]
    fn a_records_index_entry_is_keyed_as_its_state_says() {
        use hourglass_types::TimerDefinition;
        let mut r = TimerRecord {
            key: key("w", "t"),
            definition: TimerDefinition {
                queue: "q".into(),
                fire_at_ms: Some(100),
                delay_ms: None,
                payload: vec![7; 16],
            },
            fire_at_ms: 100,
            state: TimerState::Scheduled,
            created_at_ms: 1,
            fired_at_ms: None,
            finished_at_ms: None,
            attempt: 0,
            fire_seq: None,
        };
        let entry = |r: &TimerRecord| IndexEntry::of(r).map(|e| e.key(3, &r.key));
        assert_eq!(entry(&r), Some((CF_DUE, due_key(3, 100, &r.key))));
        assert_eq!(IndexEntry::of(&r).and_then(|e| e.due_at()), Some(100));
        r.state = TimerState::Fired;
        for seq in [None, Some(9)] {
            r.fire_seq = seq;
            assert_eq!(entry(&r), Some((CF_FIRED, fired_key_of(3, &r))));
        }
        r.state = TimerState::Completed;
        assert_eq!(entry(&r), None, "no finish time, no tombstone");
        r.finished_at_ms = Some(150);
        assert_eq!(
            entry(&r),
            Some((CF_TOMBSTONES, tombstone_key(3, 150, &r.key)))
        );
        assert_eq!(IndexEntry::of(&r).and_then(|e| e.due_at()), None);
    }

    #[test]
    fn partition_ranges_nest() {
        let k = due_key(7, u64::MAX, &key("\u{ff}", "\u{ff}"));
        assert!(k.as_slice() >= partition_prefix(7).as_slice());
        assert!(k.as_slice() < partition_end(7).as_slice());
    }
}
