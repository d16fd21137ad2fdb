//! A partition's state machine: openraft's adapter over the command logic ([`commands`], pure)
//! and the snapshots ([`snapshot`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hourglass_types::{CommandResponse, NodeId, TimerKey, TimerRecord, TypeConfig};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, StorageError, StorageIOError,
    StoredMembership,
};
use rocksdb::WriteBatch;
use serde::Serialize;

use crate::codec;
use crate::error::{Error, Result};
use crate::keys::{self, IndexEntry};
use crate::store::Store;

mod commands;
mod snapshot;

use self::commands::{Change, Effects, PartitionView};
pub use self::snapshot::SnapshotBuilder;
use self::snapshot::{remove_files, unique_suffix, SnapshotRecord, INSTALL_BATCH_BYTES};

pub(super) type StorageResult<T> = Result<T, StorageError<NodeId>>;
pub(super) type Membership = StoredMembership<NodeId, BasicNode>;

/// What applying commands changed in a partition's schedule, for the timer engine of its
/// leader. Sent after the change is written; nobody listening is normal (followers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerEvent {
    Scheduled {
        key: TimerKey,
        fire_at_ms: u64,
    },
    /// Cancelled or fired: no longer due.
    Unscheduled {
        key: TimerKey,
        fire_at_ms: u64,
    },
    /// The partition's whole state was replaced by a snapshot.
    Reset,
}

pub type TimerEvents = tokio::sync::broadcast::Sender<TimerEvent>;

/// Told how long each batch of committed entries took to apply.
pub type ApplyObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// The timer state machine of one partition on this node.
pub struct StateMachine {
    store: Store,
    partition: u32,
    dir: PathBuf,
    events: TimerEvents,
    /// One snapshot build or install of this partition at a time: both write and prune the
    /// same directory, and an install would delete a build's file before its rename.
    snapshot_lock: Arc<Mutex<()>>,
    applied: Option<ApplyObserver>,
}

impl StateMachine {
    /// The state machine of one partition's group in `store`; it reports schedule changes to
    /// `events`.
    pub fn open(store: Store, partition: u32, events: TimerEvents) -> Result<Self> {
        let dir = store.snapshot_dir(partition);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        // Half-received snapshots from before a restart are useless.
        remove_files(&dir, |name| name.starts_with("incoming-"));
        let sm = StateMachine {
            store,
            partition,
            dir,
            events,
            snapshot_lock: Arc::default(),
            applied: None,
        };
        // An install cut short by a crash left part of the partition replaced: finish it from
        // the snapshot file, which was complete and durable before the install began.
        if let Some(record) = sm.meta_get::<SnapshotRecord>(keys::SM_INSTALLING)? {
            tracing::warn!(
                partition,
                snapshot = %record.meta.snapshot_id,
                "a snapshot install was interrupted; installing it again"
            );
            sm.load_snapshot(&record, INSTALL_BATCH_BYTES)?;
        }
        Ok(sm)
    }

    /// Tells `observe` how long each batch of entries takes to apply from now on.
    pub fn observe_apply(mut self, observe: ApplyObserver) -> Self {
        self.applied = Some(observe);
        self
    }

    fn meta_get<T: serde::de::DeserializeOwned>(&self, tag: u8) -> Result<Option<T>> {
        self.store
            .db
            .get_cf(
                self.store.cf(keys::CF_SM_META),
                keys::tagged(self.partition, tag),
            )?
            .map(|v| codec::decode("state machine metadata", &v))
            .transpose()
    }

    fn meta_put<T: Serialize>(&self, batch: &mut WriteBatch, tag: u8, value: &T) {
        batch.put_cf(
            self.store.cf(keys::CF_SM_META),
            keys::tagged(self.partition, tag),
            codec::encode(value),
        );
    }

    /// Writes what a command did: each changed record, its index entries (a scheduled timer
    /// in the due index, a fired one in the fired index, a finished one among the tombstones),
    /// the count of scheduled timers and the high-water time; and tells the engine which
    /// timers became due or stopped being due.
    fn write_effects(
        &self,
        batch: &mut WriteBatch,
        events: &mut Vec<TimerEvent>,
        effects: Effects,
    ) -> Result<CommandResponse> {
        let p = self.partition;
        let timers_cf = self.store.cf(keys::CF_TIMERS);
        let mut pending = 0i64;
        for Change { key, before, after } in effects.changes {
            if let Some(entry) = &before {
                let (cf, k) = entry.key(p, &key);
                batch.delete_cf(self.store.cf(cf), k);
            }
            let now = after.as_ref().and_then(IndexEntry::of);
            match &after {
                Some(record) => batch.put_cf(
                    timers_cf,
                    keys::timer_key(p, &key),
                    codec::encode_timer(record),
                ),
                None => batch.delete_cf(timers_cf, keys::timer_key(p, &key)),
            }
            if let Some(entry) = &now {
                let (cf, k) = entry.key(p, &key);
                batch.put_cf(self.store.cf(cf), k, []);
            }
            let due_at = |e: &Option<IndexEntry>| e.as_ref().and_then(IndexEntry::due_at);
            match (due_at(&before), due_at(&now)) {
                (None, Some(fire_at_ms)) => {
                    pending += 1;
                    events.push(TimerEvent::Scheduled { key, fire_at_ms });
                }
                (Some(fire_at_ms), None) => {
                    pending -= 1;
                    events.push(TimerEvent::Unscheduled { key, fire_at_ms });
                }
                _ => {}
            }
        }
        if let Some(high_water) = effects.high_water_ms {
            self.meta_put(batch, keys::SM_HIGH_WATER, &high_water);
        }
        self.add_pending(batch, pending)?;
        Ok(effects.response)
    }

    fn add_pending(&self, batch: &mut WriteBatch, delta: i64) -> Result<()> {
        if delta == 0 {
            return Ok(());
        }
        let pending = self.store.partition_state(self.partition)?.pending;
        let next = pending.checked_add_signed(delta).ok_or_else(|| {
            Error::corrupt(
                "pending count",
                format!("{pending} cannot change by {delta}"),
            )
        })?;
        self.meta_put(batch, keys::SM_PENDING, &next);
        Ok(())
    }

    fn apply_entry(&self, entry: Entry<TypeConfig>) -> Result<CommandResponse> {
        let mut batch = WriteBatch::default();
        let mut events = Vec::new();
        let response = match entry.payload {
            EntryPayload::Blank => CommandResponse::None,
            EntryPayload::Normal(command) => {
                let view = StoreView {
                    store: &self.store,
                    partition: self.partition,
                };
                let effects = commands::apply(&view, entry.log_id.index, command)?;
                self.write_effects(&mut batch, &mut events, effects)?
            }
            EntryPayload::Membership(m) => {
                self.meta_put(
                    &mut batch,
                    keys::SM_MEMBERSHIP,
                    &Membership::new(Some(entry.log_id), m),
                );
                CommandResponse::None
            }
        };
        self.meta_put(&mut batch, keys::SM_LAST_APPLIED, &Some(entry.log_id));
        // Not synced: the WAL is shared with the log, whose next synced append covers this
        // write, and anything lost is re-applied from the log on restart.
        self.store.db.write(batch)?;
        for event in events {
            // No receiver is normal: only a leader runs a timer engine.
            let _ = self.events.send(event);
        }
        Ok(response)
    }
}

/// A partition's state in the store, as commands read it.
struct StoreView<'a> {
    store: &'a Store,
    partition: u32,
}

impl PartitionView for StoreView<'_> {
    type Error = Error;

    fn timer(&self, key: &TimerKey) -> Result<Option<TimerRecord>> {
        self.store.get_timer(self.partition, key)
    }

    fn high_water_ms(&self) -> Result<u64> {
        Ok(self.store.partition_state(self.partition)?.high_water_ms)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let read = |e: Error| StorageIOError::read_state_machine(&e);
        let applied = self
            .meta_get::<Option<LogId<NodeId>>>(keys::SM_LAST_APPLIED)
            .map_err(read)?;
        let membership = self
            .meta_get::<Membership>(keys::SM_MEMBERSHIP)
            .map_err(read)?;
        Ok((applied.flatten(), membership.unwrap_or_default()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            out.push(
                self.apply_entry(entry)
                    .map_err(|e| StorageIOError::apply(log_id, &e))?,
            );
        }
        if let Some(observe) = &self.applied {
            observe(started.elapsed());
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            partition: self.partition,
            dir: self.dir.clone(),
            snapshot_lock: Arc::clone(&self.snapshot_lock),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.dir.join(format!("incoming-{}.snap", unique_suffix()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        let file = snapshot.into_std().await;
        let err = |e: Error| StorageIOError::write_snapshot(Some(meta.signature()), &e);
        let sm = StateMachine {
            store: self.store.clone(),
            partition: self.partition,
            dir: self.dir.clone(),
            events: self.events.clone(),
            snapshot_lock: Arc::clone(&self.snapshot_lock),
            applied: None,
        };
        let meta_owned = meta.clone();
        tokio::task::spawn_blocking(move || sm.install(&meta_owned, file))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?
            .map_err(err)?;
        let _ = self.events.send(TimerEvent::Reset);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.current_snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}
