use std::path::{Path, PathBuf};
use std::sync::Arc;

use hourglass_types::{NodeId, Placement, TimerKey, TimerRecord};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::keys;

/// RocksDB's budgets: the `storage.*` keys of a node's configuration (docs/operations.md).
/// Memory stays bounded however many timers are stored (G8): all memtables share one budget
/// and all column families one block cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreOptions {
    /// Write-ahead log kept before RocksDB flushes the column families that pin its oldest
    /// file. A rarely written family (Raft votes, the fired index while no timer fires)
    /// otherwise keeps every log file since its last write: under steady load the data
    /// directory grew to ~2 GiB of log for ~200 MiB of tables before RocksDB's default limit
    /// (4 × the memtables) set in. The log's fill-and-release cycle is most of how much the
    /// directory swings under a steady load (docs/benchmarks.md): smaller swings less, at the
    /// price of more, smaller flushes.
    pub write_ahead_log_bytes: u64,
    /// One memtable of one column family, before it is flushed.
    pub memtable_bytes: usize,
    /// All memtables of the node together.
    pub memtable_budget_bytes: usize,
    /// The block cache shared by every column family.
    pub block_cache_bytes: usize,
    /// RocksDB's own log (`db/LOG`: flushes, compactions) is started afresh past this size...
    pub info_log_file_bytes: usize,
    /// ...and this many earlier ones are kept, so that it cannot grow the data directory
    /// without bound: with a small write-ahead log under a steady load, one file grew by
    /// 3.6 MB a minute.
    pub info_log_files: usize,
    /// RocksDB's manifest (`db/MANIFEST-*`) records every flush and compaction, and is only
    /// started afresh (from the current state) past this size: RocksDB's default, 1 GiB, let
    /// it grow by 150 KB a minute under the steady disk benchmark, and the drop from a large
    /// bound to a fresh file is a step in the disk's use.
    pub manifest_file_bytes: usize,
    /// Size of the table files compactions write into the first level (each level below
    /// writes files four times larger). Timers, the due index and the Raft log are keyed by
    /// partition first, so every flush overlaps every partition's range: only files that are
    /// a slice of their level let a compaction rewrite, and briefly hold twice on disk, part
    /// of the level below rather than all of it.
    pub table_file_bytes: u64,
    /// Size of the first level below the flushed files (RocksDB's `max_bytes_for_level_base`;
    /// levels are sized from the bottom up): it is rewritten whenever flushed files are merged
    /// into it. Small (1 MiB, with 256 KiB table files) keeps a small store's disk flat under
    /// a steady load, where at 64 MiB every merge rewrote whole column families and swung
    /// the directory by their size; but it costs a third of the ScheduleBatch throughput, so
    /// it is not the default (docs/benchmarks.md, "Disk under a steady load").
    pub first_level_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            write_ahead_log_bytes: 32 << 20,
            memtable_bytes: 16 << 20,
            memtable_budget_bytes: 128 << 20,
            block_cache_bytes: 64 << 20,
            info_log_file_bytes: 1 << 20,
            info_log_files: 10,
            manifest_file_bytes: 1 << 20,
            table_file_bytes: 8 << 20,
            first_level_bytes: 64 << 20,
        }
    }
}

/// How much larger each level's table files are than the level's above.
const TABLE_FILE_GROWTH: i32 = 4;
/// Column families only ever iterated in key order, never read by key.
const SCANNED_CFS: [&str; 4] = [
    keys::CF_RAFT_LOG,
    keys::CF_DUE,
    keys::CF_FIRED,
    keys::CF_TOMBSTONES,
];

/// What a node records about its cluster the first time it starts, and checks on every start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub node_id: NodeId,
    pub partitions: u32,
    pub replication_factor: usize,
    pub placement: Placement,
}

/// One entry of the due index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    /// The raw `CF_DUE` key, the engine's cursor.
    pub raw: Vec<u8>,
    pub fire_at_ms: u64,
    pub key: TimerKey,
}

/// One entry of the tombstone index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TombstoneEntry {
    /// The raw `CF_TOMBSTONES` key, where a scan resumes.
    pub raw: Vec<u8>,
    /// When the timer completed or was cancelled.
    pub finished_at_ms: u64,
    pub key: TimerKey,
}

/// One fired, unacknowledged timer, as the fired index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredEntry {
    /// The raw `CF_FIRED` key, where a scan resumes.
    pub raw: Vec<u8>,
    pub record: TimerRecord,
}

/// Per-partition figures for status reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// Timers in SCHEDULED state.
    pub pending: u64,
    /// The latest time a `Fire` committed (ms since the epoch); the partition's time never
    /// goes below it.
    pub high_water_ms: u64,
}

/// What the node's RocksDB holds in memory, in bytes (RocksDB's own estimates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMemory {
    /// Every memtable, flushed or not yet.
    pub memtables: u64,
    /// The shared block cache.
    pub block_cache: u64,
    /// Index and filter blocks of open table files, which live outside the cache.
    pub table_readers: u64,
}

impl StoreMemory {
    pub fn total(&self) -> u64 {
        self.memtables + self.block_cache + self.table_readers
    }
}

/// A [`Store`] that does not keep the database open: for observers (metrics) that must not
/// outlive the node's own handles.
#[derive(Clone)]
pub struct WeakStore {
    db: std::sync::Weak<DB>,
    cache: rocksdb::Cache,
    dir: PathBuf,
}

impl WeakStore {
    /// The store, while anything else still has it open.
    pub fn upgrade(&self) -> Option<Store> {
        Some(Store {
            db: self.db.upgrade()?,
            cache: self.cache.clone(),
            dir: self.dir.clone(),
        })
    }
}

/// The node's RocksDB. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
    cache: rocksdb::Cache,
    dir: PathBuf,
}

impl Store {
    /// [`Store::open_with`] the default budgets.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens (creating if needed) the database under `dir/db`, and `dir/snapshots`.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Self> {
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir.join("snapshots")).map_err(io)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_db_write_buffer_size(options.memtable_budget_bytes);
        opts.set_max_total_wal_size(options.write_ahead_log_bytes);
        opts.set_max_log_file_size(options.info_log_file_bytes);
        opts.set_keep_log_file_num(options.info_log_files);
        opts.set_max_manifest_file_size(options.manifest_file_bytes);
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let cfs = keys::ALL_CFS.iter().map(|name| {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Only timers are read by key; the indexes and the log are scanned in order,
            // where a filter is never consulted and would cost its bits per key on disk.
            if !SCANNED_CFS.contains(name) {
                table.set_bloom_filter(10.0, false);
            }
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            // LZ4 is the one codec this build of RocksDB has (see Cargo.toml); timer keys
            // and records repeat their neighbours' ids and times, which it shrinks several
            // times over for little CPU (docs/benchmarks.md, "Disk per timer").
            cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            cf.set_write_buffer_size(options.memtable_bytes);
            cf.set_target_file_size_base(options.table_file_bytes);
            // Files four times larger at each level down: with small first-level files the
            // levels that take flushes are cut fine, so a compaction rewrites a slice of the
            // level below, and the bottom level of a large store is still a few hundred files.
            cf.set_target_file_size_multiplier(TABLE_FILE_GROWTH);
            cf.set_max_bytes_for_level_base(options.first_level_bytes);
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?;
        let store = Store {
            db: Arc::new(db),
            cache,
            dir: dir.to_path_buf(),
        };
        store.upgrade_layout()?;
        Ok(store)
    }

    /// Brings a store written by an older build to the current layout, once.
    fn upgrade_layout(&self) -> Result<()> {
        let layout = match self.db.get(keys::META_LAYOUT)? {
            Some(v) => codec::decode::<u32>("store layout", &v)?,
            None => 1,
        };
        if layout > keys::LAYOUT {
            return Err(Error::corrupt(
                "store layout",
                format!(
                    "{} was written by a newer build (layout {layout}, this build knows up to {})",
                    self.dir.display(),
                    keys::LAYOUT
                ),
            ));
        }
        if layout < 2 {
            let rebuilt = self.rebuild_fired_index()?;
            if rebuilt > 0 {
                tracing::info!(
                    dir = %self.dir.display(),
                    fired = rebuilt,
                    "store upgraded: fired timers indexed per queue in fire order"
                );
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_opt(keys::META_LAYOUT, codec::encode(&keys::LAYOUT), &wo)?;
        Ok(())
    }

    /// Rewrites `CF_FIRED` from the fired timers in `CF_TIMERS`; returns how many there are.
    fn rebuild_fired_index(&self) -> Result<u64> {
        let fired_cf = self.cf(keys::CF_FIRED);
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(fired_cf, &[0u8; 4][..], &[0xFFu8; 5][..]);
        let mut count = 0;
        for item in self
            .db
            .iterator_cf(self.cf(keys::CF_TIMERS), IteratorMode::Start)
        {
            let (k, v) = item?;
            let record = codec::decode_timer(&k, &v)?;
            if record.state != hourglass_types::TimerState::Fired {
                continue;
            }
            let (partition, _) = keys::decode_timer_key(&k)
                .ok_or_else(|| Error::corrupt("timer key", format!("{k:?}")))?;
            batch.put_cf(fired_cf, keys::fired_key_of(partition, &record), []);
            count += 1;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(count)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn downgrade(&self) -> WeakStore {
        WeakStore {
            db: Arc::downgrade(&self.db),
            cache: self.cache.clone(),
            dir: self.dir.clone(),
        }
    }

    /// RocksDB's memory, to tell it apart from the rest of the process's (G8 budgets).
    pub fn memory(&self) -> Result<StoreMemory> {
        let stats = rocksdb::perf::get_memory_usage_stats(Some(&[&self.db]), Some(&[&self.cache]))?;
        Ok(StoreMemory {
            memtables: stats.mem_table_total,
            block_cache: stats.cache_total,
            table_readers: stats.mem_table_readers_total,
        })
    }

    /// Bytes of the table files of each column family, live or awaiting deletion once no
    /// compaction reads them (RocksDB's `total-sst-files-size`): where a node's disk goes.
    pub fn table_bytes(&self) -> Result<Vec<(&'static str, u64)>> {
        keys::ALL_CFS
            .iter()
            .map(|&name| {
                let bytes = self
                    .db
                    .property_int_value_cf(self.cf(name), "rocksdb.total-sst-files-size")?;
                Ok((name, bytes.unwrap_or(0)))
            })
            .collect()
    }

    /// Bytes of every file under the node's data directory: tables, write-ahead log, files
    /// RocksDB has yet to delete, snapshots. What the operator's disk actually holds.
    pub fn disk_bytes(&self) -> Result<u64> {
        fn walk(dir: &Path) -> std::io::Result<u64> {
            let mut total = 0;
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                // A file RocksDB or a snapshot removes while we walk is simply not counted.
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                total += if meta.is_dir() {
                    match walk(&entry.path()) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                        other => other?,
                    }
                } else {
                    meta.len()
                };
            }
            Ok(total)
        }
        walk(&self.dir).map_err(|source| Error::Io {
            path: self.dir.clone(),
            source,
        })
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family in keys::ALL_CFS is opened by Store::open")
    }

    pub(crate) fn snapshot_dir(&self, partition: u32) -> PathBuf {
        self.dir.join("snapshots").join(format!("p{partition}"))
    }

    pub fn cluster_meta(&self) -> Result<Option<ClusterMeta>> {
        self.db
            .get(keys::META_CLUSTER)?
            .map(|v| codec::decode("cluster metadata", &v))
            .transpose()
    }

    /// Records the cluster metadata durably (synced).
    pub fn write_cluster_meta(&self, meta: &ClusterMeta) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_opt(keys::META_CLUSTER, codec::encode(meta), &wo)?;
        Ok(())
    }

    /// Refuses data made for another node or another partition count.
    pub fn check_meta(&self, meta: &ClusterMeta, node_id: NodeId, partitions: u32) -> Result<()> {
        if meta.node_id != node_id {
            return Err(Error::NodeIdMismatch {
                dir: self.dir.clone(),
                found: meta.node_id,
                configured: node_id,
            });
        }
        if meta.partitions != partitions {
            return Err(Error::PartitionCountMismatch {
                dir: self.dir.clone(),
                found: meta.partitions,
                configured: partitions,
            });
        }
        Ok(())
    }

    /// True when the group of any of `partitions` on this node has a vote or a log entry.
    pub fn has_raft_state(&self, partitions: impl IntoIterator<Item = u32>) -> Result<bool> {
        for p in partitions {
            for cf in [keys::CF_RAFT_STATE, keys::CF_RAFT_LOG] {
                let prefix = keys::partition_prefix(p);
                let first = self
                    .db
                    .iterator_cf(self.cf(cf), IteratorMode::From(&prefix, Direction::Forward))
                    .next()
                    .transpose()?;
                if first.is_some_and(|(k, _)| k.starts_with(&prefix)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Up to `limit` due-index entries of `partition` from the raw key `from` (inclusive) with
    /// `fire_at` before `until_ms`, in `(fire_at, workflow_id, timer_id)` order, as
    /// `(raw due key, fire_at, key)`.
    pub fn scan_due(
        &self,
        partition: u32,
        from: &[u8],
        until_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueEntry>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::due_bound(partition, until_ms));
        let iter = self.db.iterator_cf_opt(
            self.cf(keys::CF_DUE),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, _) = item?;
            let (p, fire_at_ms, key) = keys::decode_timed_key(&k)
                .ok_or_else(|| Error::corrupt("due key", format!("{k:?}")))?;
            debug_assert_eq!(p, partition);
            out.push(DueEntry {
                raw: k.to_vec(),
                fire_at_ms,
                key,
            });
        }
        Ok(out)
    }

    /// Up to `limit` tombstones of `partition` written before `before_ms`, oldest first, from
    /// the raw key `from` (inclusive; the partition's prefix to start at its oldest).
    pub fn scan_tombstones(
        &self,
        partition: u32,
        from: &[u8],
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<TombstoneEntry>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::due_bound(partition, before_ms));
        let iter = self.db.iterator_cf_opt(
            self.cf(keys::CF_TOMBSTONES),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, _) = item?;
            let (p, finished_at_ms, key) = keys::decode_timed_key(&k)
                .ok_or_else(|| Error::corrupt("tombstone key", format!("{k:?}")))?;
            debug_assert_eq!(p, partition);
            out.push(TombstoneEntry {
                raw: k.to_vec(),
                finished_at_ms,
                key,
            });
        }
        Ok(out)
    }

    /// Fired, unacknowledged timers of `queue` in `partition` in fire order, from the raw
    /// `CF_FIRED` key `from` (inclusive; [`keys::fired_queue_prefix`] to start at the oldest):
    /// at most `limit`, and no more once their payloads reach `max_bytes` (at least one is
    /// returned when any is left, whatever its size).
    pub fn scan_fired(
        &self,
        partition: u32,
        queue: &str,
        from: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<FiredEntry>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::fired_queue_end(partition, queue));
        let iter = self.db.iterator_cf_opt(
            self.cf(keys::CF_FIRED),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in iter {
            if out.len() >= limit || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let (k, _) = item?;
            let (_, _, _, _, key) = keys::decode_fired_key(&k)
                .ok_or_else(|| Error::corrupt("fired key", format!("{k:?}")))?;
            let record = self
                .get_timer(partition, &key)?
                .ok_or_else(|| Error::corrupt("fired index", format!("{key:?} has no timer")))?;
            bytes += record.definition.payload.len();
            out.push(FiredEntry {
                raw: k.to_vec(),
                record,
            });
        }
        Ok(out)
    }

    pub fn get_timer(&self, partition: u32, key: &TimerKey) -> Result<Option<TimerRecord>> {
        let k = keys::timer_key(partition, key);
        self.db
            .get_cf(self.cf(keys::CF_TIMERS), &k)?
            .map(|v| codec::decode_timer(&k, &v))
            .transpose()
    }

    /// Hands the timers of `workflow_id` after `after` to `visit` in timer-id order until it
    /// returns false or none is left. A visitor rather than a limit, so that a caller bounding
    /// its page in bytes never holds more than one record past that bound (payloads go up to a
    /// MiB each).
    pub fn list_timers(
        &self,
        partition: u32,
        workflow_id: &str,
        after: Option<&str>,
        mut visit: impl FnMut(TimerRecord) -> bool,
    ) -> Result<()> {
        let prefix = keys::workflow_prefix(partition, workflow_id);
        let start = match after {
            Some(timer_id) => {
                let mut k = keys::timer_key(
                    partition,
                    &TimerKey {
                        workflow_id: workflow_id.to_owned(),
                        timer_id: timer_id.to_owned(),
                    },
                );
                // The smallest key strictly greater than `after`'s own key.
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let iter = self.db.iterator_cf(
            self.cf(keys::CF_TIMERS),
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || !visit(codec::decode_timer(&k, &v)?) {
                break;
            }
        }
        Ok(())
    }

    pub fn partition_state(&self, partition: u32) -> Result<PartitionState> {
        let read = |tag, what| -> Result<u64> {
            self.db
                .get_cf(self.cf(keys::CF_SM_META), keys::tagged(partition, tag))?
                .map(|v| codec::decode::<u64>(what, &v))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        Ok(PartitionState {
            pending: read(keys::SM_PENDING, "pending count")?,
            high_water_ms: read(keys::SM_HIGH_WATER, "high-water time")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_types::{TimerDefinition, TimerState};

    fn fired(id: &str) -> TimerRecord {
        TimerRecord {
            key: TimerKey {
                workflow_id: "w".into(),
                timer_id: id.into(),
            },
            definition: TimerDefinition {
                queue: "q".into(),
                fire_at_ms: Some(5),
                delay_ms: None,
                payload: vec![],
            },
            fire_at_ms: 5,
            state: TimerState::Fired,
            created_at_ms: 1,
            fired_at_ms: Some(6),
            finished_at_ms: None,
            attempt: 1,
            fire_seq: None,
        }
    }

    /// The figures follow what is written: the memtables hold unflushed writes, and the
    /// disk, and the tables of the column family written, hold them once flushed.
    #[test]
    fn memory_and_disk_follow_writes() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let empty_disk = store.disk_bytes().unwrap();
        let empty_mem = store.memory().unwrap();
        let cf = store.cf(keys::CF_TIMERS);
        // Incompressible values, so the flushed tables are as large as what was written.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0u32..1000 {
            let value: Vec<u8> = (0..8192)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            store.db.put_cf(cf, i.to_be_bytes(), value).unwrap();
        }
        let written = store.memory().unwrap();
        assert!(
            written.memtables >= empty_mem.memtables + 8 * 1000 * 1000,
            "{empty_mem:?} -> {written:?}"
        );
        store.db.flush_cf(cf).unwrap();
        let disk = store.disk_bytes().unwrap();
        assert!(
            disk >= empty_disk + 8 * 1000 * 1000,
            "{empty_disk} -> {disk}"
        );
        assert!(store.memory().unwrap().total() > 0);
        // The tables are the timers' column family's alone.
        let tables = store.table_bytes().unwrap();
        assert_eq!(
            tables.iter().map(|(cf, _)| *cf).collect::<Vec<_>>(),
            keys::ALL_CFS
        );
        for (cf, bytes) in tables {
            if cf == keys::CF_TIMERS {
                assert!((8_000_000..=disk).contains(&bytes), "{bytes} of {disk}");
            } else {
                assert_eq!(bytes, 0, "{cf}");
            }
        }
    }

    /// One write to a rarely written column family must not pin the write-ahead log: under a
    /// steady load elsewhere the log stays near its configured bound, and the disk with it.
    #[test]
    fn a_quiet_column_family_does_not_pin_the_write_ahead_log() {
        let dir = tempfile::TempDir::new().unwrap();
        let options = StoreOptions {
            write_ahead_log_bytes: 4 << 20,
            memtable_bytes: 2 << 20,
            ..StoreOptions::default()
        };
        let store = Store::open_with(dir.path(), &options).unwrap();
        store
            .db
            .put_cf(store.cf(keys::CF_RAFT_STATE), b"vote", b"1")
            .unwrap();
        let cf = store.cf(keys::CF_TIMERS);
        let value = vec![7u8; 64 * 1024];
        // 48 MiB, more than the default bound, in values RocksDB cannot share (distinct keys).
        for i in 0u32..768 {
            store.db.put_cf(cf, i.to_be_bytes(), &value).unwrap();
        }
        let wal: u64 = std::fs::read_dir(dir.path().join("db"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        // The bound plus the file being written (at most a memtable's worth).
        assert!(
            wal <= options.write_ahead_log_bytes + 2 * options.memtable_bytes as u64,
            "{} MiB of write-ahead log",
            wal >> 20
        );
    }

    /// RocksDB's own log is rotated at its size and only so many are kept, however many
    /// flushes it reports. RocksDB writes that log out every 5 s, and looks at its size then:
    /// the test flushes for longer than two of those.
    #[test]
    fn rocksdb_s_own_log_is_rotated_and_trimmed() {
        let dir = tempfile::TempDir::new().unwrap();
        let options = StoreOptions {
            info_log_file_bytes: 16 << 10,
            info_log_files: 2,
            ..StoreOptions::default()
        };
        let store = Store::open_with(dir.path(), &options).unwrap();
        let cf = store.cf(keys::CF_TIMERS);
        let logs = || -> Vec<(String, u64)> {
            std::fs::read_dir(dir.path().join("db"))
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().starts_with("LOG"))
                // Rotation may remove a file between the listing and its size.
                .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?.len())))
                .collect()
        };
        let start = std::time::Instant::now();
        let mut i = 0u32;
        // Each flush logs about a kilobyte.
        while start.elapsed() < std::time::Duration::from_secs(12) {
            store.db.put_cf(cf, i.to_be_bytes(), b"v").unwrap();
            store.db.flush_cf(cf).unwrap();
            i += 1;
            assert!(logs().len() <= 3, "{:?}", logs());
        }
        let rotated = logs()
            .into_iter()
            .any(|(name, len)| name.starts_with("LOG.old") && len >= 16 << 10);
        assert!(rotated, "{i} flushes, never rotated: {:?}", logs());
    }

    /// RocksDB's manifest is started afresh past its size, however many flushes it records.
    #[test]
    fn rocksdb_s_manifest_is_started_afresh_past_its_size() {
        let dir = tempfile::TempDir::new().unwrap();
        let options = StoreOptions {
            manifest_file_bytes: 64 << 10,
            ..StoreOptions::default()
        };
        let store = Store::open_with(dir.path(), &options).unwrap();
        let cf = store.cf(keys::CF_TIMERS);
        let manifests = || -> Vec<u64> {
            std::fs::read_dir(dir.path().join("db"))
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().starts_with("MANIFEST"))
                .filter_map(|e| Some(e.metadata().ok()?.len()))
                .collect()
        };
        // Each flush records a new table file: far more than 64 KiB of edits in all.
        for i in 0u32..1_500 {
            store.db.put_cf(cf, i.to_be_bytes(), b"v").unwrap();
            store.db.flush_cf(cf).unwrap();
        }
        let sizes = manifests();
        assert!(sizes.iter().all(|&len| len < 2 * (64 << 10)), "{sizes:?}");
    }

    /// A store of layout 1 (fired index by timer id, records without a fire sequence) opens
    /// with its fired timers indexed per queue, none lost, and is marked current.
    #[test]
    fn a_layout_1_store_is_upgraded_on_open() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for (p, id) in [(0, "b"), (0, "a"), (3, "c")] {
                let record = fired(id);
                let k = keys::timer_key(p, &record.key);
                store
                    .db
                    .put_cf(store.cf(keys::CF_TIMERS), &k, codec::encode_timer(&record))
                    .unwrap();
                store.db.put_cf(store.cf(keys::CF_FIRED), &k, []).unwrap();
            }
            let mut completed = fired("done");
            completed.state = TimerState::Completed;
            store
                .db
                .put_cf(
                    store.cf(keys::CF_TIMERS),
                    keys::timer_key(0, &completed.key),
                    codec::encode_timer(&completed),
                )
                .unwrap();
            store.db.delete(keys::META_LAYOUT).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let ids = |p| -> Vec<String> {
            store
                .scan_fired(p, "q", &keys::fired_queue_prefix(p, "q"), 100, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|e| e.record.key.timer_id)
                .collect()
        };
        assert_eq!(ids(0), ["a", "b"]);
        assert_eq!(ids(3), ["c"]);
        let all = store
            .db
            .iterator_cf(store.cf(keys::CF_FIRED), IteratorMode::Start)
            .count();
        assert_eq!(all, 3, "the old keys are gone");
        assert_eq!(
            codec::decode::<u32>("layout", &store.db.get(keys::META_LAYOUT).unwrap().unwrap())
                .unwrap(),
            keys::LAYOUT
        );
    }
}
