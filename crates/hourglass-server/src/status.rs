//! The one place where errors become gRPC statuses.
//!
//! Every status a client sees is made here from an [`Error`], with the standard
//! `google.rpc` error details (the "richer error model") that any gRPC client library reads:
//!
//! - every status carries a `google.rpc.ErrorInfo` with [`ERROR_DOMAIN`] and a `reason` naming
//!   the kind of error (`NOT_LEADER`, `INVALID_FIELD`, `COMMIT_TIMEOUT`, … see [`reason`]);
//! - INVALID_ARGUMENT carries a `google.rpc.BadRequest` whose field violation names the request
//!   field as the API spells it (`workflow_id`, `fire_at`, …);
//! - UNAVAILABLE carries a `google.rpc.RetryInfo` ([`RETRY_DELAY`]) and, when this node knows
//!   the partition's leader, `leader_id` and `leader_address` (`HOST:PORT`) in the ErrorInfo's
//!   metadata: the client retries there.
//!
//! A request forwarded to another node comes back with that node's status, made by its own
//! copy of this mapping, and is passed on unchanged; a forward that fails on the way (the
//! node is down, the connection breaks) becomes UNAVAILABLE (or DEADLINE_EXCEEDED) with
//! reason `FORWARD_FAILED` here. The one status made elsewhere is the answer to a request that
//! does not decode as protobuf at all, which the generated services' codec gives before any
//! handler runs: INVALID_ARGUMENT with the same details (`hourglass_proto::codec`).

use std::collections::HashMap;
use std::time::Duration;

use hourglass_proto::v1;
use prost::Message;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

pub use hourglass_proto::ERROR_DOMAIN;

/// How long a client should wait before retrying an UNAVAILABLE answer.
pub const RETRY_DELAY: Duration = Duration::from_millis(200);

/// The gRPC code of an error.
pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::Unavailable { .. } | Error::ClockUnknown(_) | Error::Starting => Code::Unavailable,
        Error::DeadlineExceeded { .. } | Error::WorkerIdle { .. } => Code::DeadlineExceeded,
        Error::PeerPartitionMismatch { .. } | Error::WipedNode { .. } | Error::Rejoin(_) => {
            Code::FailedPrecondition
        }
        Error::Forwarded { status, .. } => match status.code() {
            Code::Unavailable | Code::Unknown => Code::Unavailable,
            Code::Cancelled | Code::DeadlineExceeded => Code::DeadlineExceeded,
            other => other,
        },
        Error::Stream(status) => status.code(),
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::Storage(_)
        | Error::Config(_)
        | Error::Bind { .. }
        | Error::Raft(_)
        | Error::Transport(_)
        | Error::Internal(_) => Code::Internal,
    }
}

/// `google.rpc.ErrorInfo.reason` of an error: what kind of failure, in UPPER_SNAKE_CASE.
pub fn reason(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(hourglass_types::Error::InvalidArgument { .. }) => "INVALID_FIELD",
        Error::InvalidArgument(hourglass_types::Error::InvalidLayout(_)) => "INVALID_LAYOUT",
        Error::NotFound(_) => "TIMER_NOT_FOUND",
        Error::AlreadyExists(_) => "TIMER_ALREADY_EXISTS",
        Error::Unavailable {
            leader: Some(_), ..
        } => "NOT_LEADER",
        Error::Unavailable { leader: None, .. } => "PARTITION_UNAVAILABLE",
        Error::ClockUnknown(_) => "CLOCK_UNKNOWN",
        Error::Starting => "STARTING",
        Error::DeadlineExceeded { .. } => "COMMIT_TIMEOUT",
        Error::WorkerIdle { .. } => "WORKER_IDLE",
        Error::PeerPartitionMismatch { .. } => "PARTITION_COUNT_MISMATCH",
        Error::WipedNode { .. } => "NODE_WIPED",
        Error::Rejoin(_) => "REJOIN_FAILED",
        Error::Forwarded { .. } => "FORWARD_FAILED",
        Error::Stream(_) => "STREAM_FAILED",
        Error::Unauthenticated(_) => "UNAUTHENTICATED",
        Error::PermissionDenied(_) => "PERMISSION_DENIED",
        Error::Storage(_) => "STORAGE",
        Error::Config(_) => "INVALID_CONFIG",
        Error::Bind { .. } => "BIND_FAILED",
        Error::Raft(_) => "RAFT",
        Error::Transport(_) => "TRANSPORT",
        Error::Internal(_) => "INTERNAL",
    }
}

/// The `google.rpc` details of an error.
fn details(e: &Error) -> ErrorDetails {
    let mut details = ErrorDetails::new();
    let mut metadata: HashMap<String, String> = HashMap::new();
    match e {
        Error::InvalidArgument(hourglass_types::Error::InvalidArgument { field, reason }) => {
            details.add_bad_request_violation(*field, reason.clone());
            metadata.insert("field".into(), (*field).into());
        }
        Error::Unavailable {
            partition, leader, ..
        } => {
            metadata.insert("partition".into(), partition.to_string());
            if let Some((id, address)) = leader {
                metadata.insert("leader_id".into(), id.to_string());
                metadata.insert("leader_address".into(), address.clone());
            }
        }
        Error::DeadlineExceeded {
            partition,
            timeout_ms,
        } => {
            metadata.insert("partition".into(), partition.to_string());
            metadata.insert("timeout_ms".into(), timeout_ms.to_string());
        }
        Error::Forwarded { node, .. } => {
            metadata.insert("node_id".into(), node.to_string());
        }
        Error::WorkerIdle { idle_ms } => {
            metadata.insert("timeout_ms".into(), idle_ms.to_string());
        }
        Error::PeerPartitionMismatch { peer, .. } | Error::WipedNode { peer, .. } => {
            metadata.insert("peer_id".into(), peer.to_string());
        }
        _ => {}
    }
    if code(e) == Code::Unavailable {
        details.set_retry_info(Some(RETRY_DELAY));
    }
    details.set_error_info(reason(e), ERROR_DOMAIN, metadata);
    details
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            // Another node's answer went through its own mapping: pass it on as it is.
            Error::Forwarded { status, .. } | Error::Stream(status)
                if !status.details().is_empty() =>
            {
                *status
            }
            e => Status::with_error_details(code(&e), e.to_string(), details(&e)),
        }
    }
}

/// One item's failure in a ScheduleBatch answer: the status a single Schedule would have
/// answered, details included.
impl From<Error> for v1::BatchError {
    fn from(e: Error) -> v1::BatchError {
        let status = Status::from(e);
        let details = tonic_types::Status::decode(status.details())
            .map(|s| s.details)
            .unwrap_or_default();
        v1::BatchError {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details,
        }
    }
}

/// The status a failed item of a ScheduleBatch stands for: the same code, message and
/// details as the call would have failed with alone.
pub fn from_batch_error(e: v1::BatchError) -> Status {
    let details = tonic_types::Status {
        code: e.code,
        message: e.message.clone(),
        details: e.details,
    }
    .encode_to_vec();
    Status::with_details(Code::from_i32(e.code), e.message, details.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded Schedule that travelled in a ScheduleBatch fails as it would alone.
    #[test]
    fn a_batch_items_error_becomes_the_status_it_stands_for() {
        let errors = [
            || Error::from(hourglass_types::Error::invalid("fire_at", "is too far")),
            || Error::AlreadyExists("timer \"w\"/\"t\" already exists".into()),
        ];
        for error in errors {
            let alone = Status::from(error());
            let status = from_batch_error(v1::BatchError::from(error()));
            assert_eq!(status.code(), alone.code());
            assert_eq!(status.message(), alone.message());
            // Compared as google.rpc.Status would carry them: byte for byte.
            assert_eq!(status.details(), alone.details());
            let info = status.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.domain, ERROR_DOMAIN);
        }
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let e = Error::from(hourglass_types::Error::invalid("fire_at", "is too far"));
        let status = Status::from(e);
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(bad.field_violations[0].field, "fire_at");
        assert_eq!(bad.field_violations[0].description, "is too far");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_FIELD", ERROR_DOMAIN)
        );
        assert!(status.get_details_retry_info().is_none());
        assert!(status.metadata().is_empty(), "{:?}", status.metadata());
    }

    #[test]
    fn unavailable_carries_retry_info_and_the_leader() {
        let status = Status::from(Error::Unavailable {
            partition: 3,
            reason: "leadership is moving".into(),
            leader: Some((2, "10.0.0.2:7002".into())),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(RETRY_DELAY)
        );
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "NOT_LEADER");
        assert_eq!(info.metadata["leader_id"], "2");
        assert_eq!(info.metadata["leader_address"], "10.0.0.2:7002");
        assert_eq!(info.metadata["partition"], "3");
        // No custom metadata any more: only the standard details trailer.
        assert!(status.metadata().is_empty(), "{:?}", status.metadata());

        let status = Status::from(Error::Unavailable {
            partition: 3,
            reason: "no leader elected yet".into(),
            leader: None,
        });
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "PARTITION_UNAVAILABLE");
        assert!(!info.metadata.contains_key("leader_address"));
        assert!(status.get_details_retry_info().is_some());

        for e in [Error::Starting, Error::ClockUnknown("x".into())] {
            let status = Status::from(e);
            assert_eq!(status.code(), Code::Unavailable);
            assert!(status.get_details_retry_info().is_some());
        }
    }

    #[test]
    fn every_status_carries_error_info() {
        let errors = [
            Error::NotFound("no timer".into()),
            Error::AlreadyExists("differs".into()),
            Error::DeadlineExceeded {
                partition: 1,
                timeout_ms: 10,
            },
            Error::Rejoin("x".into()),
            Error::Unauthenticated("x".into()),
            Error::PermissionDenied("x".into()),
            Error::Internal("x".into()),
            Error::Raft("x".into()),
        ];
        for e in errors {
            let expected = (code(&e), reason(&e));
            let status = Status::from(e);
            let info = status.get_details_error_info().unwrap();
            assert_eq!((status.code(), info.reason.as_str()), expected);
            assert!(status.get_details_retry_info().is_none());
        }
        let status = Status::from(Error::Rejoin("x".into()));
        assert_eq!(status.code(), Code::FailedPrecondition);
    }

    #[test]
    fn forwarded_answers_pass_through_and_failed_forwards_are_retryable() {
        let peer_answer = Status::from(Error::Unavailable {
            partition: 1,
            reason: "r".into(),
            leader: Some((3, "h:3".into())),
        });
        let passed = Status::from(Error::Forwarded {
            node: 2,
            status: Box::new(peer_answer.clone()),
        });
        assert_eq!(passed.code(), peer_answer.code());
        assert_eq!(passed.message(), peer_answer.message());
        assert_eq!(passed.details(), peer_answer.details());

        let refused = Status::from(Error::Forwarded {
            node: 2,
            status: Box::new(Status::unavailable("tcp connect error")),
        });
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(refused.get_details_retry_info().is_some());
        let info = refused.get_details_error_info().unwrap();
        assert_eq!(info.reason, "FORWARD_FAILED");
        assert_eq!(info.metadata["node_id"], "2");

        let timed_out = Status::from(Error::Forwarded {
            node: 2,
            status: Box::new(Status::cancelled("Timeout expired")),
        });
        assert_eq!(timed_out.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn batch_errors_carry_the_same_details() {
        let e = Error::from(hourglass_types::Error::invalid("queue", "bad"));
        let item = v1::BatchError::from(e);
        assert_eq!(item.code, Code::InvalidArgument as i32);
        let rebuilt = tonic_types::Status {
            code: item.code,
            message: item.message.clone(),
            details: item.details.clone(),
        };
        let status = Status::with_details(
            Code::from(item.code),
            item.message,
            rebuilt.encode_to_vec().into(),
        );
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "queue"
        );
    }
}
