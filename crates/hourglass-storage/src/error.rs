use std::path::PathBuf;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error(
        "data in {dir} was created for {found} partitions but the configuration asks for {configured}; \
         the partition count is fixed when a cluster is created"
    )]
    PartitionCountMismatch {
        dir: PathBuf,
        found: u32,
        configured: u32,
    },
    #[error(
        "data in {dir} belongs to node {found}, but this node is configured as node {configured}"
    )]
    NodeIdMismatch {
        dir: PathBuf,
        found: u64,
        configured: u64,
    },
    #[error("log syncer stopped")]
    SyncerStopped,
}

impl Error {
    pub(crate) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            what,
            detail: detail.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
