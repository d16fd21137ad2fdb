use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use hourglass_types::TypeConfig;
use openraft::storage::LogFlushed;
use rocksdb::DB;

use crate::store::Store;

/// The node's log writer: every partition's appends are written to RocksDB without sync, and
/// their completion callbacks queue here; one `fsync` of the shared WAL then completes every
/// callback that queued before it. Under load, one fsync covers the appends of many groups.
#[derive(Clone)]
pub struct LogSyncer {
    tx: mpsc::Sender<LogFlushed<TypeConfig>>,
    stats: Arc<SyncStats>,
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
        let (tx, rx) = mpsc::channel();
        // Weak: the database closes with the last `Store`, on its owner's thread, never on this
        // one at a moment nobody waits for (a process exiting meanwhile aborts in RocksDB).
        let db = Arc::downgrade(&store.db);
        let stats = Arc::new(SyncStats::default());
        let counts = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("log-syncer".into())
            .spawn(move || run(db, rx, &counts))
            .expect("spawning the log syncer thread");
        LogSyncer { tx, stats }
    }

    /// The syncer's counters, readable without keeping the syncer (and its database) alive.
    pub fn stats(&self) -> Arc<SyncStats> {
        Arc::clone(&self.stats)
    }

    /// Queues `callback` to be completed after the next WAL sync.
    pub(crate) fn after_sync(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(callback)) = self.tx.send(callback) {
            callback.log_io_completed(Err(std::io::Error::other("log syncer stopped")));
        }
    }
}

fn run(db: Weak<DB>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>, stats: &SyncStats) {
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
        for callback in waiting {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}
