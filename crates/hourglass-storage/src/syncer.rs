use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hourglass_types::{NodeId, TypeConfig};
use openraft::storage::LogFlushed;
use rocksdb::DB;

use crate::store::Store;

/// The node's log writer: every partition's appends are written to RocksDB without sync, and
/// their completion callbacks queue here; one `fsync` of the shared WAL then completes every
/// callback that queued before it. Under load, one fsync covers the appends of many groups.
#[derive(Clone)]
pub struct LogSyncer {
    tx: mpsc::Sender<Waiting>,
    stats: Arc<SyncStats>,
}

/// Told of every append made durable: the leader whose entries it held (none for an append
/// of no entries) and how long it took from `append` to the flush completing it. Called on
/// the syncer's thread, between an fsync and the callbacks it completes: it must be quick.
pub type FlushObserver = Box<dyn Fn(Option<NodeId>, Duration) + Send>;

/// An append waiting for the next fsync.
struct Waiting {
    callback: LogFlushed<TypeConfig>,
    appended: Instant,
    leader: Option<NodeId>,
}

/// Counts of the syncer's work since it started.
#[derive(Debug, Default)]
pub struct SyncStats {
    syncs: AtomicU64,
    appends: AtomicU64,
}

impl SyncStats {
    /// `(fsyncs, appends)` so far: their ratio is how many appends one fsync covered.
    pub fn get(&self) -> (u64, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.appends.load(Ordering::Relaxed),
        )
    }
}

impl LogSyncer {
    /// Starts the syncer thread; it ends when the last clone of the returned handle is dropped.
    pub fn start(store: &Store) -> Self {
        Self::observed(store, Box::new(|_, _| {}))
    }

    /// [`LogSyncer::start`], telling `observe` of every append it makes durable.
    pub fn observed(store: &Store, observe: FlushObserver) -> Self {
        let (tx, rx) = mpsc::channel();
        // Weak: the database closes with the last `Store`, on its owner's thread, never on this
        // one at a moment nobody waits for (a process exiting meanwhile aborts in RocksDB).
        let db = Arc::downgrade(&store.db);
        let stats = Arc::new(SyncStats::default());
        let counts = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("log-syncer".into())
            .spawn(move || run(db, rx, &counts, &observe))
            .expect("spawning the log syncer thread");
        LogSyncer { tx, stats }
    }

    /// The syncer's counters, readable without keeping the syncer (and its database) alive.
    pub fn stats(&self) -> Arc<SyncStats> {
        Arc::clone(&self.stats)
    }

    /// Queues `callback` of an append of `leader`'s entries, begun at `appended`, to be
    /// completed after the next WAL sync.
    pub(crate) fn after_sync(
        &self,
        callback: LogFlushed<TypeConfig>,
        appended: Instant,
        leader: Option<NodeId>,
    ) {
        let waiting = Waiting {
            callback,
            appended,
            leader,
        };
        if let Err(mpsc::SendError(waiting)) = self.tx.send(waiting) {
            waiting
                .callback
                .log_io_completed(Err(std::io::Error::other("log syncer stopped")));
        }
    }
}

fn run(db: Weak<DB>, rx: mpsc::Receiver<Waiting>, stats: &SyncStats, observe: &FlushObserver) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("the store is closed".to_owned()),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "wal sync failed");
        }
        tracing::trace!(appends = waiting.len(), "wal synced");
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats
            .appends
            .fetch_add(waiting.len() as u64, Ordering::Relaxed);
        let synced = Instant::now();
        for w in waiting {
            if result.is_ok() {
                observe(w.leader, synced.saturating_duration_since(w.appended));
            }
            w.callback
                .log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}
