//! Property tests of everything that turns bytes from the network into requests: protobuf
//! decoding of every request type (public and internal), the validation of their fields
//! (`convert`), and the decoding of the openraft messages the transport carries in bincode.
//! Whatever the input, nothing panics and a refusal is INVALID_ARGUMENT naming what was
//! wrong, never INTERNAL. `tests/fuzz.rs` sends the same kinds of input to real nodes.

use hourglass_proto::codec::{decode_error, Direction};
use hourglass_proto::{internal, v1};
use hourglass_types::{Command, Error as InputError, Limits, NodeId, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proptest::prelude::*;
use prost::Message;
use prost_types::{Duration as PbDuration, Timestamp};
use serde::de::DeserializeOwned;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::convert;
use crate::error::Error;

/// Seconds around the epoch, the limits of the types and of the protobuf spec (years 1 and
/// 9999), and anything.
fn seconds() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -100i64..100_000_000_000,
        prop::sample::select(vec![
            i64::MIN,
            i64::MAX,
            -62_135_596_801,
            253_402_300_800,
            1 << 62,
        ]),
    ]
}

fn nanos() -> impl Strategy<Value = i32> {
    prop_oneof![
        any::<i32>(),
        0..1_000_000_000,
        prop::sample::select(vec![i32::MIN, i32::MAX, -1, 999_999_999, 1_000_000_000]),
    ]
}

/// Valid names, names one past the limits, control and multi-byte characters, and large ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._-]{0,130}",
        any::<String>(),
        "\\PC{0,300}",
        prop::sample::select(vec![129, 256, 257, 64 * 1024]).prop_map(|n| "x".repeat(n)),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::sample::select(vec![64 * 1024, 64 * 1024 + 1, 1 << 20]).prop_map(|n| vec![7; n]),
    ]
}

fn schedule_request() -> impl Strategy<Value = v1::ScheduleRequest> {
    use v1::schedule_request::When;
    let when = prop_oneof![
        Just(None),
        (seconds(), nanos())
            .prop_map(|(seconds, nanos)| Some(When::FireAt(Timestamp { seconds, nanos }))),
        (seconds(), nanos())
            .prop_map(|(seconds, nanos)| Some(When::Delay(PbDuration { seconds, nanos }))),
    ];
    (text(), text(), text(), when, payload()).prop_map(
        |(workflow_id, timer_id, queue, when, payload)| v1::ScheduleRequest {
            workflow_id,
            timer_id,
            queue,
            when,
            payload,
        },
    )
}

/// A refusal is INVALID_ARGUMENT with a BadRequest naming the field.
fn refused_as_invalid(e: InputError) -> Result<(), TestCaseError> {
    let status = Status::from(Error::from(e));
    prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
    prop_assert!(status.get_details_bad_request().is_some(), "{:?}", status);
    Ok(())
}

/// The body of a Raft message: openraft's types in bincode are fixed-width little-endian
/// integers, one-byte tags and length-prefixed sequences, so mostly such pieces (which often
/// decode), else noise.
fn raft_body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        any::<u64>().prop_map(|v| v.to_le_bytes().to_vec()),
        (0u64..16).prop_map(|v| v.to_le_bytes().to_vec()),
        (0u32..4).prop_map(|v| v.to_le_bytes().to_vec()),
        (0u8..3).prop_map(|v| vec![v]),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(piece, 0..40).prop_map(|p| p.concat()),
    ]
}

/// A Raft body decodes, or is refused as an invalid argument.
fn raft_decodes_or_is_invalid<T: DeserializeOwned>(body: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = crate::transport::decode::<T>(body) {
        let status = Status::from(e);
        prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
    }
    Ok(())
}

/// Bytes decode as request `T`, or are refused as the server's codec refuses them:
/// INVALID_ARGUMENT.
fn request_decodes_or_is_invalid<T: Message + Default + Direction>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    prop_assert!(T::REQUEST);
    if let Err(e) = T::decode(bytes) {
        let status = decode_error(&e, T::REQUEST);
        prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
        prop_assert!(status.get_details_error_info().is_some(), "{:?}", status);
    }
    Ok(())
}

/// Protobuf made of fields of the low numbers messages use (0 is forbidden) and of every wire
/// type (6 and 7 do not exist), well formed or not.
fn protobuf() -> impl Strategy<Value = Vec<u8>> {
    let field = (0u64..12, 0u64..8, prop::collection::vec(any::<u8>(), 0..12)).prop_map(
        |(number, wire_type, value)| {
            let mut out = Vec::new();
            prost::encoding::encode_varint((number << 3) | wire_type, &mut out);
            if wire_type == 2 {
                prost::encoding::encode_varint(value.len() as u64, &mut out);
            }
            out.extend(value);
            out
        },
    );
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..128),
        prop::collection::vec(field, 0..8).prop_map(|f| f.concat()),
    ]
}

proptest! {
    /// Any schedule request is validated or refused by field; an accepted one is due within
    /// the horizon of the moment it is received.
    #[test]
    fn fuzz_schedule_requests_validate_or_name_the_field(
        request in schedule_request(),
        now_ms in prop_oneof![any::<u64>(), 0u64..4_102_444_800_000],
    ) {
        match convert::validate_schedule(request, &Limits::default()) {
            Err(e) => refused_as_invalid(e)?,
            Ok(valid) => match valid.at(now_ms) {
                Err(e) => refused_as_invalid(e)?,
                Ok(Command::Schedule { definition, received_at_ms, .. }) => {
                    prop_assert_eq!(received_at_ms, now_ms);
                    let due = definition.resolve_fire_at(now_ms);
                    prop_assert!(due <= now_ms.saturating_add(100 * 366 * 24 * 3600 * 1000));
                }
                Ok(other) => prop_assert!(false, "not a schedule: {other:?}"),
            },
        }
    }

    /// Timer keys and List page tokens of any text are accepted or refused by field.
    #[test]
    fn fuzz_keys_and_page_tokens_validate_or_name_the_field(
        workflow_id in text(),
        timer_id in text(),
        token in prop_oneof![text(), "[0-9a-fA-F+-]{0,40}"],
    ) {
        if let Err(e) = convert::timer_key(workflow_id, timer_id) {
            refused_as_invalid(e)?;
        }
        if let Err(e) = convert::decode_page_token(&token) {
            refused_as_invalid(e)?;
        }
    }

    /// Every request message of the public API and of the transport decodes or is refused
    /// INVALID_ARGUMENT by the codec of the generated servers.
    #[test]
    fn fuzz_every_request_type_decodes_or_is_invalid_argument(bytes in protobuf()) {
        request_decodes_or_is_invalid::<v1::ScheduleRequest>(&bytes)?;
        request_decodes_or_is_invalid::<v1::CancelRequest>(&bytes)?;
        request_decodes_or_is_invalid::<v1::GetRequest>(&bytes)?;
        request_decodes_or_is_invalid::<v1::ListRequest>(&bytes)?;
        request_decodes_or_is_invalid::<v1::ScheduleBatchRequest>(&bytes)?;
        request_decodes_or_is_invalid::<v1::ClusterStatusRequest>(&bytes)?;
        request_decodes_or_is_invalid::<v1::WorkerMessage>(&bytes)?;
        request_decodes_or_is_invalid::<internal::RaftMessage>(&bytes)?;
        request_decodes_or_is_invalid::<internal::HelloRequest>(&bytes)?;
        request_decodes_or_is_invalid::<internal::LocalStatusRequest>(&bytes)?;
        request_decodes_or_is_invalid::<internal::ClockRequest>(&bytes)?;
    }

    /// Every openraft request the transport decodes from a peer's body decodes or is refused
    /// INVALID_ARGUMENT.
    #[test]
    fn fuzz_raft_bodies_decode_or_are_invalid_argument(body in raft_body()) {
        raft_decodes_or_is_invalid::<AppendEntriesRequest<TypeConfig>>(&body)?;
        raft_decodes_or_is_invalid::<VoteRequest<NodeId>>(&body)?;
        raft_decodes_or_is_invalid::<InstallSnapshotRequest<TypeConfig>>(&body)?;
    }
}
