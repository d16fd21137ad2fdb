//! A partition's snapshots: the file format, building one from a RocksDB snapshot, and
//! installing a received one in bounded batches, resumable after a crash.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hourglass_types::{NodeId, TimerState, TypeConfig};
use openraft::storage::{Snapshot, SnapshotMeta};
use openraft::{BasicNode, LogId, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use super::{Membership, StateMachine, StorageResult};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys;
use crate::store::Store;

/// Version 3 is version 2's records in one zstd frame after the magic; version 2 added the
/// partition's high-water time. Files of versions 1 and 2 (uncompressed) still load.
const SNAPSHOT_MAGIC: &[u8; 8] = b"HGSNAP03";
const SNAPSHOT_MAGIC_V2: &[u8; 8] = b"HGSNAP02";
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"HGSNAP01";
/// zstd's fastest level: a snapshot is written while the node serves, and this level already
/// shrinks one about tenfold (docs/benchmarks.md, "Disk per timer").
const SNAPSHOT_ZSTD_LEVEL: i32 = 1;
/// Largest zstd window (as a power of two) a received snapshot may ask its decoder to hold:
/// 8 MiB. Level 1 writes frames with windows of at most 512 KiB; without this a peer's frame
/// could make an install hold the library's default limit, 128 MiB.
const SNAPSHOT_ZSTD_WINDOW_LOG_MAX: u32 = 23;
const SNAPSHOT_END: u8 = 0xFF;
/// About how much of a snapshot one write batch of an install holds.
pub(super) const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Record tag of the partition's high-water time (an 8-byte big-endian value, empty key).
const SNAPSHOT_HIGH_WATER: u8 = 0xFE;

/// The current snapshot of a partition, as recorded in `CF_SM_META`.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotRecord {
    pub(super) meta: SnapshotMeta<NodeId, BasicNode>,
    pub(super) file: String,
}

impl Store {
    /// Bytes of `partition`'s current snapshot file on this node, 0 without one: about the
    /// size of its state when that snapshot was built.
    pub fn snapshot_bytes(&self, partition: u32) -> Result<u64> {
        let Some(value) = self.db.get_cf(
            self.cf(keys::CF_SM_META),
            keys::tagged(partition, keys::SM_SNAPSHOT),
        )?
        else {
            return Ok(0);
        };
        let record: SnapshotRecord = codec::decode("snapshot record", &value)?;
        let path = self.snapshot_dir(partition).join(&record.file);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            // Replaced by a newer one between the two reads.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(Error::Io { path, source }),
        }
    }
}

impl StateMachine {
    pub(super) fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>> {
        let Some(record) = self.meta_get::<SnapshotRecord>(keys::SM_SNAPSHOT)? else {
            return Ok(None);
        };
        let path = self.dir.join(&record.file);
        let file = std::fs::File::open(&path).map_err(|source| Error::Io { path, source })?;
        Ok(Some(Snapshot {
            meta: record.meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }

    /// Replaces this partition's state with the contents of a received snapshot file.
    ///
    /// The file is first checked whole and kept (fsynced) as this node's current snapshot;
    /// then the install is recorded and the partition's state is replaced in batches of about
    /// [`INSTALL_BATCH_BYTES`], so memory does not grow with the partition. A crash in between
    /// leaves the record, and the next open installs the kept file again.
    pub(super) fn install(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        mut received: std::fs::File,
    ) -> Result<()> {
        let _one_at_a_time = self
            .snapshot_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let file_name = format!("{}.snap", meta.snapshot_id);
        let final_path = self.dir.join(&file_name);
        let tmp_path = self.dir.join(format!("{file_name}.tmp"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        received.seek(SeekFrom::Start(0)).map_err(io(&final_path))?;
        let mut copy = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(io(&tmp_path))?;
        std::io::copy(&mut received, &mut copy)
            .and_then(|_| copy.sync_all())
            .and_then(|_| copy.seek(SeekFrom::Start(0)))
            .map_err(io(&tmp_path))?;
        // Every record checked before anything changes, so that a bad file changes nothing.
        // The copy is read rather than the file as it is received: a reader stops at the end
        // mark, and the kept file must be whole whatever the reader left unread.
        read_snapshot(&mut BufReader::new(&copy), |cf, k, v| {
            if cf == keys::CF_TIMERS {
                codec::decode_timer(k, v)?;
            }
            Ok(())
        })?;
        std::fs::rename(&tmp_path, &final_path).map_err(io(&final_path))?;
        sync_dir(&self.dir)?;
        let record = SnapshotRecord {
            meta: meta.clone(),
            file: file_name.clone(),
        };
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.store.db.put_cf_opt(
            self.store.cf(keys::CF_SM_META),
            keys::tagged(self.partition, keys::SM_INSTALLING),
            codec::encode(&record),
            &wo,
        )?;
        self.load_snapshot(&record, INSTALL_BATCH_BYTES)?;
        remove_files(&self.dir, |name| name != file_name);
        Ok(())
    }

    /// Replaces the partition's state with the kept snapshot file of `record`, in batches of
    /// about `batch_bytes`; the last batch, synced, records the snapshot as applied and the
    /// install as done. Returns how many batches were written.
    pub(super) fn load_snapshot(
        &self,
        record: &SnapshotRecord,
        batch_bytes: usize,
    ) -> Result<usize> {
        let path = self.dir.join(&record.file);
        let file = std::fs::File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let p = self.partition;
        let mut batch = WriteBatch::default();
        for cf in keys::SNAPSHOT_CFS {
            batch.delete_range_cf(
                self.store.cf(cf),
                keys::partition_prefix(p),
                keys::partition_end(p),
            );
        }
        let mut pending = 0u64;
        let mut batches = 0;
        let high_water = read_snapshot(&mut BufReader::new(file), |cf, k, v| {
            match cf {
                // The fired index is derived from the timers, whatever layout the sender's
                // was (older builds sent theirs).
                keys::CF_FIRED => return Ok(()),
                keys::CF_DUE => pending += 1,
                keys::CF_TIMERS => {
                    let record = codec::decode_timer(k, v)?;
                    if record.state == TimerState::Fired {
                        batch.put_cf(
                            self.store.cf(keys::CF_FIRED),
                            keys::fired_key_of(p, &record),
                            [],
                        );
                    }
                }
                _ => {}
            }
            batch.put_cf(self.store.cf(cf), k, v);
            if batch.size_in_bytes() >= batch_bytes {
                // Not synced: the last batch's synced write covers the WAL before it.
                self.store.db.write(std::mem::take(&mut batch))?;
                batches += 1;
            }
            Ok(())
        })?;
        self.meta_put(&mut batch, keys::SM_PENDING, &pending);
        self.meta_put(&mut batch, keys::SM_HIGH_WATER, &high_water);
        self.meta_put(&mut batch, keys::SM_LAST_APPLIED, &record.meta.last_log_id);
        self.meta_put(
            &mut batch,
            keys::SM_MEMBERSHIP,
            &record.meta.last_membership,
        );
        self.meta_put(&mut batch, keys::SM_SNAPSHOT, record);
        batch.delete_cf(
            self.store.cf(keys::CF_SM_META),
            keys::tagged(p, keys::SM_INSTALLING),
        );
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.store.db.write_opt(batch, &wo)?;
        tracing::info!(partition = p, snapshot = %record.meta.snapshot_id, batches = batches + 1, "snapshot installed");
        Ok(batches + 1)
    }
}

/// Builds a snapshot of one partition from a RocksDB snapshot, so applies may go on meanwhile.
pub struct SnapshotBuilder {
    pub(super) store: Store,
    pub(super) partition: u32,
    pub(super) dir: PathBuf,
    pub(super) snapshot_lock: Arc<Mutex<()>>,
}

impl SnapshotBuilder {
    fn build(&self) -> Result<Snapshot<TypeConfig>> {
        let _one_at_a_time = self
            .snapshot_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let db = &self.store.db;
        let snap = db.snapshot();
        let p = self.partition;
        let meta_cf = self.store.cf(keys::CF_SM_META);
        let last_applied: Option<LogId<NodeId>> = snap
            .get_cf(meta_cf, keys::tagged(p, keys::SM_LAST_APPLIED))?
            .map(|v| codec::decode::<Option<LogId<NodeId>>>("last applied", &v))
            .transpose()?
            .flatten();
        let membership: Membership = snap
            .get_cf(meta_cf, keys::tagged(p, keys::SM_MEMBERSHIP))?
            .map(|v| codec::decode("membership", &v))
            .transpose()?
            .unwrap_or_default();
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, unique_suffix()),
            None => format!("0-0-{}", unique_suffix()),
        };
        let file_name = format!("{snapshot_id}.snap");
        let path = self.dir.join(&file_name);
        let tmp = self.dir.join(format!("{file_name}.tmp"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let mut file = BufWriter::new(std::fs::File::create(&tmp).map_err(io(&tmp))?);
        file.write_all(SNAPSHOT_MAGIC).map_err(io(&tmp))?;
        let mut out = zstd::Encoder::new(file, SNAPSHOT_ZSTD_LEVEL).map_err(io(&tmp))?;
        let high_water: u64 = snap
            .get_cf(meta_cf, keys::tagged(p, keys::SM_HIGH_WATER))?
            .map(|v| codec::decode("high-water time", &v))
            .transpose()?
            .unwrap_or(0);
        write_record(
            &mut out,
            SNAPSHOT_HIGH_WATER,
            &[],
            &high_water.to_be_bytes(),
        )
        .map_err(io(&tmp))?;
        for (index, cf_name) in keys::SNAPSHOT_CFS.iter().enumerate() {
            // Derived from the timers at install (see `install`).
            if *cf_name == keys::CF_FIRED {
                continue;
            }
            let mut ro = ReadOptions::default();
            ro.set_iterate_upper_bound(keys::partition_end(p));
            ro.set_snapshot(&snap);
            let iter = db.iterator_cf_opt(
                self.store.cf(cf_name),
                ro,
                IteratorMode::From(&keys::partition_prefix(p), Direction::Forward),
            );
            for item in iter {
                let (k, v) = item?;
                write_record(&mut out, index as u8, &k, &v).map_err(io(&tmp))?;
            }
        }
        out.write_all(&[SNAPSHOT_END]).map_err(io(&tmp))?;
        let file = out.finish().map_err(io(&tmp))?;
        let file = file.into_inner().map_err(|e| Error::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.put_cf_opt(
            meta_cf,
            keys::tagged(p, keys::SM_SNAPSHOT),
            codec::encode(&SnapshotRecord {
                meta: meta.clone(),
                file: file_name.clone(),
            }),
            &wo,
        )?;
        remove_files(&self.dir, |name| {
            name.ends_with(".snap") && name != file_name
        });
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        tracing::info!(partition = p, snapshot = %meta.snapshot_id, "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let builder = SnapshotBuilder {
            store: self.store.clone(),
            partition: self.partition,
            dir: self.dir.clone(),
            snapshot_lock: Arc::clone(&self.snapshot_lock),
        };
        tokio::task::spawn_blocking(move || builder.build())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?
            .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }
}

fn write_record(out: &mut impl Write, cf: u8, k: &[u8], v: &[u8]) -> std::io::Result<()> {
    out.write_all(&[cf])?;
    out.write_all(&(k.len() as u32).to_be_bytes())?;
    out.write_all(k)?;
    out.write_all(&(v.len() as u32).to_be_bytes())?;
    out.write_all(v)
}

/// Reads a snapshot file, handing each record to `each`; returns the partition's high-water
/// time (0 in version 1 files, which predate it).
fn read_snapshot(
    input: &mut impl Read,
    each: impl FnMut(&str, &[u8], &[u8]) -> Result<()>,
) -> Result<u64> {
    let bad = |e: std::io::Error| Error::corrupt("snapshot", e);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(bad)?;
    if &magic == SNAPSHOT_MAGIC {
        let mut decoder = zstd::Decoder::new(input).map_err(bad)?;
        decoder
            .window_log_max(SNAPSHOT_ZSTD_WINDOW_LOG_MAX)
            .map_err(bad)?;
        return read_records(&mut decoder, each);
    }
    if &magic != SNAPSHOT_MAGIC_V2 && &magic != SNAPSHOT_MAGIC_V1 {
        return Err(Error::corrupt("snapshot", "bad magic"));
    }
    read_records(input, each)
}

/// The records after the magic, up to the end mark.
fn read_records(
    input: &mut impl Read,
    mut each: impl FnMut(&str, &[u8], &[u8]) -> Result<()>,
) -> Result<u64> {
    let bad = |e: std::io::Error| Error::corrupt("snapshot", e);
    let read_bytes = |input: &mut dyn Read| -> Result<Vec<u8>> {
        let mut len = [0u8; 4];
        input.read_exact(&mut len).map_err(bad)?;
        // The length comes from a peer's file: read what is there instead of allocating it.
        let len = u64::from(u32::from_be_bytes(len));
        let mut buf = Vec::new();
        input.take(len).read_to_end(&mut buf).map_err(bad)?;
        if buf.len() as u64 != len {
            return Err(Error::corrupt("snapshot", "truncated record"));
        }
        Ok(buf)
    };
    let mut high_water = 0;
    loop {
        let mut tag = [0u8; 1];
        input.read_exact(&mut tag).map_err(bad)?;
        if tag[0] == SNAPSHOT_END {
            return Ok(high_water);
        }
        if tag[0] == SNAPSHOT_HIGH_WATER {
            let _key = read_bytes(input)?;
            let v = read_bytes(input)?;
            let bytes: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| Error::corrupt("snapshot", "high-water time is not 8 bytes"))?;
            high_water = u64::from_be_bytes(bytes);
            continue;
        }
        let cf = *keys::SNAPSHOT_CFS.get(tag[0] as usize).ok_or_else(|| {
            Error::corrupt("snapshot", format!("unknown column family {}", tag[0]))
        })?;
        let k = read_bytes(input)?;
        let v = read_bytes(input)?;
        each(cf, &k, &v)?;
    }
}

pub(super) fn unique_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Makes a rename in `dir` durable: without it a crash can bring back the old directory entry.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })
}

pub(super) fn remove_files(dir: &Path, pred: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str() {
            if pred(name) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove old snapshot file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_types::{Command, TimerDefinition, TimerKey, TimerRecord};
    use openraft::storage::RaftStateMachine;
    use openraft::CommittedLeaderId;
    use openraft::{Entry, EntryPayload};

    const P: u32 = 1;

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn key(id: u64) -> TimerKey {
        TimerKey {
            workflow_id: "w".into(),
            timer_id: format!("{id:04}"),
        }
    }

    /// A partition of 300 timers with 1 KiB payloads, 100 of them fired; its snapshot.
    async fn source() -> (tempfile::TempDir, Snapshot<TypeConfig>) {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm =
            StateMachine::open(store.clone(), P, tokio::sync::broadcast::channel(16).0).unwrap();
        let schedule = Command::ScheduleMany {
            timers: (0..300)
                .map(|i| {
                    let definition = TimerDefinition {
                        queue: "q".into(),
                        fire_at_ms: Some(1_000 + i),
                        delay_ms: None,
                        payload: vec![7; 1024],
                    };
                    (key(i), definition)
                })
                .collect(),
            received_at_ms: 0,
        };
        let fire = Command::Fire {
            timers: (0..100).map(key).collect(),
            fired_at_ms: 5_000,
        };
        sm.apply([entry(1, schedule), entry(2, fire)])
            .await
            .unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        (dir, snap)
    }

    /// The receiver's copy of `snap`, kept as an install would keep it; its record.
    async fn receive(sm: &StateMachine, snap: Snapshot<TypeConfig>) -> SnapshotRecord {
        let file = format!("{}.snap", snap.meta.snapshot_id);
        let mut source = snap.snapshot;
        let mut kept = tokio::fs::File::create(sm.dir.join(&file)).await.unwrap();
        tokio::io::copy(&mut source, &mut kept).await.unwrap();
        SnapshotRecord {
            meta: snap.meta,
            file,
        }
    }

    fn assert_whole(store: &Store) {
        assert_eq!(store.partition_state(P).unwrap().pending, 200);
        assert_eq!(store.partition_state(P).unwrap().high_water_ms, 5_000);
        for i in [0, 99, 100, 299] {
            let record = store.get_timer(P, &key(i)).unwrap().unwrap();
            assert_eq!(record.definition.payload.len(), 1024);
        }
        let fired = store
            .scan_fired(
                P,
                "q",
                &keys::fired_queue_prefix(P, "q"),
                usize::MAX,
                usize::MAX,
            )
            .unwrap();
        assert_eq!(fired.len(), 100);
        assert!(store.get_timer(P, &key(1_000)).unwrap().is_none(), "stale");
    }

    /// An install writes the partition in batches of about the given size, not in one.
    #[tokio::test]
    async fn a_snapshot_is_installed_in_bounded_batches() {
        let (_source, snap) = source().await;
        let dir = tempfile::TempDir::new().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sm =
            StateMachine::open(store.clone(), P, tokio::sync::broadcast::channel(16).0).unwrap();
        let record = receive(&sm, snap).await;
        // About 330 KiB of records in batches of about 64 KiB.
        let batches = sm.load_snapshot(&record, 64 << 10).unwrap();
        assert!((5..=7).contains(&batches), "{batches} batches");
        assert_whole(&store);
        assert!(sm
            .meta_get::<SnapshotRecord>(keys::SM_INSTALLING)
            .unwrap()
            .is_none());
    }

    /// Snapshots are written compressed, received through `install` whole (the decompressor
    /// stops at the end mark, the kept copy must not), and the uncompressed files of older
    /// builds still install.
    #[tokio::test]
    async fn compressed_and_older_uncompressed_snapshots_install() {
        let (_source, snap) = source().await;
        let meta = snap.meta.clone();
        let mut compressed = Vec::new();
        let mut data = snap.snapshot;
        tokio::io::AsyncReadExt::read_to_end(&mut data, &mut compressed)
            .await
            .unwrap();
        assert_eq!(&compressed[..8], SNAPSHOT_MAGIC);
        let mut version_2 = SNAPSHOT_MAGIC_V2.to_vec();
        version_2.extend(zstd::decode_all(&compressed[8..]).unwrap());
        // 300 records of 1 KiB of one byte: the compressed file is a small part of them.
        assert!(version_2.len() > 300 << 10, "{}", version_2.len());
        assert!(
            compressed.len() * 20 < version_2.len(),
            "{}",
            compressed.len()
        );
        for (file, name) in [(compressed, "compressed"), (version_2, "version 2")] {
            let dir = tempfile::TempDir::new().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let sm = StateMachine::open(store.clone(), P, tokio::sync::broadcast::channel(16).0)
                .unwrap();
            let received = dir.path().join("received");
            std::fs::write(&received, &file).unwrap();
            sm.install(&meta, std::fs::File::open(&received).unwrap())
                .unwrap();
            assert_whole(&store);
            let kept: SnapshotRecord = sm.meta_get(keys::SM_SNAPSHOT).unwrap().unwrap();
            assert_eq!(
                std::fs::read(sm.dir.join(&kept.file)).unwrap(),
                file,
                "{name}: the kept copy is the file received"
            );
        }
    }

    /// A received snapshot whose zstd frame asks for a larger window than ours ever uses is
    /// refused before the decoder allocates it; the same records in a frame with our
    /// window limit are read.
    #[test]
    fn a_snapshot_frame_asking_for_a_large_window_is_refused() {
        let frame = |window_log: u32| {
            let mut file = SNAPSHOT_MAGIC.to_vec();
            let mut out = zstd::Encoder::new(&mut file, SNAPSHOT_ZSTD_LEVEL).unwrap();
            out.window_log(window_log).unwrap();
            write_record(&mut out, 0, b"k", b"v").unwrap();
            out.write_all(&[SNAPSHOT_END]).unwrap();
            out.finish().unwrap();
            file
        };
        let mut records = 0;
        read_snapshot(&mut &frame(SNAPSHOT_ZSTD_WINDOW_LOG_MAX)[..], |_, _, _| {
            records += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(records, 1);
        let err = read_snapshot(&mut &frame(27)[..], |_, _, _| Ok(())).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    }

    /// A crash in the middle of an install (the install recorded, the partition half
    /// replaced) is repaired when the state machine opens: it installs the kept file again.
    #[tokio::test]
    async fn an_interrupted_install_is_finished_on_open() {
        let (_source, snap) = source().await;
        let dir = tempfile::TempDir::new().unwrap();
        let last = snap.meta.last_log_id;
        {
            let store = Store::open(dir.path()).unwrap();
            let sm = StateMachine::open(store.clone(), P, tokio::sync::broadcast::channel(16).0)
                .unwrap();
            let record = receive(&sm, snap).await;
            let stale = TimerRecord {
                key: key(1_000),
                definition: TimerDefinition {
                    queue: "q".into(),
                    fire_at_ms: Some(1),
                    delay_ms: None,
                    payload: vec![],
                },
                fire_at_ms: 1,
                state: TimerState::Scheduled,
                created_at_ms: 0,
                fired_at_ms: None,
                finished_at_ms: None,
                attempt: 0,
                fire_seq: None,
            };
            let mut batch = WriteBatch::default();
            batch.put_cf(
                store.cf(keys::CF_TIMERS),
                keys::timer_key(P, &stale.key),
                codec::encode_timer(&stale),
            );
            sm.meta_put(&mut batch, keys::SM_INSTALLING, &record);
            store.db.write(batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let mut sm =
            StateMachine::open(store.clone(), P, tokio::sync::broadcast::channel(16).0).unwrap();
        assert_whole(&store);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, last);
        assert!(sm
            .meta_get::<SnapshotRecord>(keys::SM_INSTALLING)
            .unwrap()
            .is_none());
    }
}
