use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hourglass_types::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::codec;
use crate::keys;
use crate::store::Store;
use crate::syncer::LogSyncer;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The Raft log and hard state of one partition's group on this node.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    partition: u32,
    syncer: LogSyncer,
    growth: LogGrowth,
}

/// Stored bytes of entries a partition's log store has appended since it was opened, shared
/// with whoever decides when the log is long enough for a snapshot: openraft counts entries
/// only, and entries range from a few bytes to megabytes.
#[derive(Debug, Clone, Default)]
pub struct LogGrowth(Arc<AtomicU64>);

impl LogGrowth {
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl LogStore {
    /// The log of one partition's group in `store`; its appends are made durable by `syncer`.
    pub fn new(store: Store, partition: u32, syncer: LogSyncer) -> Self {
        LogStore {
            store,
            partition,
            syncer,
            growth: LogGrowth::default(),
        }
    }

    /// What this log store (and its clones) have appended.
    pub fn growth(&self) -> LogGrowth {
        self.growth.clone()
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, tag: u8) -> crate::Result<Option<T>> {
        self.store
            .db
            .get_cf(
                self.store.cf(keys::CF_RAFT_STATE),
                keys::tagged(self.partition, tag),
            )?
            .map(|v| codec::decode("raft state", &v))
            .transpose()
    }

    fn put_state<T: serde::Serialize>(&self, tag: u8, value: &T, sync: bool) -> crate::Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.store.db.put_cf_opt(
            self.store.cf(keys::CF_RAFT_STATE),
            keys::tagged(self.partition, tag),
            codec::encode(value),
            &wo,
        )?;
        Ok(())
    }

    fn last_entry_log_id(&self) -> crate::Result<Option<LogId<NodeId>>> {
        let end = keys::partition_end(self.partition);
        let mut iter = self.store.db.iterator_cf(
            self.store.cf(keys::CF_RAFT_LOG),
            IteratorMode::From(&end, Direction::Reverse),
        );
        // `From(end, Reverse)` starts at the last key <= end; `end` itself never exists.
        match iter.next().transpose()? {
            Some((k, v)) if k.starts_with(&keys::partition_prefix(self.partition)) => {
                let entry: Entry<TypeConfig> = codec::decode("log entry", &v)?;
                Ok(Some(entry.log_id))
            }
            _ => Ok(None),
        }
    }
}

/// Most stored bytes of log entries read for one replication request. openraft asks for up to
/// `max_payload_entries` (300) entries at a time whatever their size, and each stream holds
/// what it read three times while sending (the entries, their encoding, the gRPC frame): with
/// ScheduleBatch entries of a few hundred KiB, a leader's streams held hundreds of MiB, and a
/// request that large could not be appended within openraft's timeout (the heartbeat
/// interval) on a busy follower, so it was sent again and again without progress.
pub const REPLICATION_READ_BYTES: usize = 1 << 20;

/// Whether a read that has taken `taken` entries of `bytes` stored bytes in all should stop
/// before an entry of `next` bytes: past `budget`, but never before the first entry, so that an
/// entry larger than the budget still goes on its own.
fn read_is_full(taken: usize, bytes: usize, next: usize, budget: usize) -> bool {
    taken > 0 && bytes.saturating_add(next) > budget
}

impl LogStore {
    /// Entries of `range` in index order, at most `budget` stored bytes of them (at least one).
    fn read_entries(
        &self,
        range: impl RangeBounds<u64>,
        budget: usize,
    ) -> crate::Result<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i + 1,
            Bound::Unbounded => 0,
        };
        let from = keys::log_key(self.partition, start);
        let iter = self.store.db.iterator_cf(
            self.store.cf(keys::CF_RAFT_LOG),
            IteratorMode::From(&from, Direction::Forward),
        );
        let prefix = keys::partition_prefix(self.partition);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || !range.contains(&keys::log_index_of(&k)) {
                break;
            }
            if read_is_full(out.len(), bytes, v.len(), budget) {
                break;
            }
            bytes += v.len();
            out.push(codec::decode("log entry", &v)?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.read_entries(range, usize::MAX)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }

    /// What replication sends: bounded in bytes, so that a stream's memory and the time a
    /// follower takes to append one request stay small whatever the entries hold.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.read_entries(start..end, REPLICATION_READ_BYTES)
            .map_err(|e| StorageIOError::read_logs(&e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self
            .get_state(keys::RAFT_LAST_PURGED)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = self
            .last_entry_log_id()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        // A vote must survive a crash before it is answered: always synced.
        self.put_state(keys::RAFT_VOTE, vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_state(keys::RAFT_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.put_state(keys::RAFT_COMMITTED, &committed, false)
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_state::<Option<LogId<NodeId>>>(keys::RAFT_COMMITTED)
            .map_err(|e| StorageIOError::read(&e))?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let appended = std::time::Instant::now();
        let cf = self.store.cf(keys::CF_RAFT_LOG);
        let mut batch = WriteBatch::default();
        // Whose append this is, by the leader of its last entry: a leader appends only entries
        // of its own term; a follower's last entry is its leader's, unless it is catching up
        // on older terms.
        let mut leader = None;
        let mut bytes = 0;
        for entry in entries {
            leader = Some(entry.log_id.leader_id.node_id);
            let value = codec::encode(&entry);
            bytes += value.len() as u64;
            batch.put_cf(cf, keys::log_key(self.partition, entry.log_id.index), value);
        }
        // Written now so readers see the entries at once; durable once the syncer's fsync
        // covering this write completes the callback.
        self.store
            .db
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.growth.0.fetch_add(bytes, Ordering::Relaxed);
        self.syncer.after_sync(callback, appended, leader);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.store.cf(keys::CF_RAFT_LOG),
            &keys::log_key(self.partition, log_id.index)[..],
            &keys::partition_end(self.partition)[..],
        );
        self.store
            .db
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.cf(keys::CF_RAFT_STATE),
            keys::tagged(self.partition, keys::RAFT_LAST_PURGED),
            codec::encode(&log_id),
        );
        batch.delete_range_cf(
            self.store.cf(keys::CF_RAFT_LOG),
            keys::log_key(self.partition, 0),
            keys::log_key(self.partition, log_id.index + 1),
        );
        self.store
            .db
            .write(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::read_is_full;

    #[test]
    fn a_read_stops_at_its_budget_but_never_before_the_first_entry() {
        assert!(
            !read_is_full(0, 0, 10_000, 100),
            "a large first entry goes alone"
        );
        assert!(read_is_full(1, 10_000, 1, 100));
        assert!(!read_is_full(2, 60, 40, 100), "exactly the budget fits");
        assert!(read_is_full(2, 60, 41, 100));
        assert!(
            !read_is_full(5, usize::MAX - 1, 0, usize::MAX),
            "no overflow"
        );
    }
}
