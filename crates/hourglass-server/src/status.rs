//! The one place where errors become gRPC statuses.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::Error;

/// Metadata key of the leader hint on UNAVAILABLE: `ID=HOST:PORT`.
pub const LEADER_HINT: &str = "x-hourglass-leader";
/// Metadata key suggesting how long to wait before retrying, in milliseconds.
pub const RETRY_AFTER_MS: &str = "x-hourglass-retry-after-ms";

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Unavailable { .. } | Error::ClockUnknown(_) => Code::Unavailable,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::PeerPartitionMismatch { .. } | Error::WipedNode { .. } | Error::Rejoin(_) => {
                Code::FailedPrecondition
            }
            Error::Storage(_)
            | Error::Config(_)
            | Error::Bind { .. }
            | Error::Raft(_)
            | Error::Transport(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if let Error::ClockUnknown(_) = &e {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_MS, MetadataValue::from(200u32));
        }
        if let Error::Unavailable { leader, .. } = &e {
            let md = status.metadata_mut();
            md.insert(RETRY_AFTER_MS, MetadataValue::from(200u32));
            if let Some((id, addr)) = leader {
                if let Ok(v) = format!("{id}={addr}").parse() {
                    md.insert(LEADER_HINT, v);
                }
            }
        }
        status
    }
}
