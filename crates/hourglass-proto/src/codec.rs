//! The codec of the generated clients and servers (the public API and the internal
//! transport): tonic's prost codec, except for what a request that does not decode is
//! answered.
//!
//! tonic answers every protobuf decode failure INTERNAL. For a request that is the caller's
//! mistake, a string field that is not UTF-8 say, so the public services answer
//! INVALID_ARGUMENT, with a `google.rpc.BadRequest` naming the field when the decoder says
//! which, like every other invalid argument (crates/hourglass-server/src/status.rs): a client
//! must not retry it as a server failure. A client that cannot decode a response still sees
//! INTERNAL. Which messages are requests is declared below, per message type; a new RPC whose
//! messages are not declared does not compile.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, ProstCodec};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo.domain` of every error the API answers.
pub const ERROR_DOMAIN: &str = "hourglass.dev";

/// Which end decodes a message type: servers decode requests, clients decode responses.
pub trait Direction {
    /// True for a request message.
    const REQUEST: bool;
}

macro_rules! direction {
    ($request:expr => $($ty:ty),+ $(,)?) => {
        $(impl Direction for $ty { const REQUEST: bool = $request; })+
    };
}

direction!(true =>
    crate::v1::ScheduleRequest,
    crate::v1::CancelRequest,
    crate::v1::GetRequest,
    crate::v1::ListRequest,
    crate::v1::ScheduleBatchRequest,
    crate::v1::ClusterStatusRequest,
    crate::v1::WorkerMessage,
    // Also the transport's answer to AppendEntries, Vote and InstallSnapshot: the same type
    // both ways, declared for the server, whose port strangers reach. A node that cannot
    // decode a peer's answer sees INVALID_ARGUMENT there instead of INTERNAL; it treats every
    // failed call alike (a network error, retried).
    crate::internal::RaftMessage,
    crate::internal::HelloRequest,
    crate::internal::LocalStatusRequest,
    crate::internal::ClockRequest,
);
direction!(false =>
    crate::v1::ScheduleResponse,
    crate::v1::CancelResponse,
    crate::v1::GetResponse,
    crate::v1::ListResponse,
    crate::v1::ScheduleBatchResponse,
    crate::v1::ClusterStatusResponse,
    crate::v1::Delivery,
    crate::internal::HelloResponse,
    crate::internal::LocalStatusResponse,
    crate::internal::ClockResponse,
);

/// tonic's prost codec with [`decode_error`] for undecodable requests.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec { _pd: PhantomData }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Direction + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { _pd: PhantomData }
    }
}

/// Decodes `U` as tonic's prost decoder does, answering failures with [`decode_error`].
#[derive(Debug, Clone, Default)]
pub struct RequestDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default + Direction> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| decode_error(&e, U::REQUEST))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The status for a message that does not decode: INVALID_ARGUMENT with the field for a
/// request, INTERNAL for a response.
pub fn decode_error(error: &prost::DecodeError, request: bool) -> Status {
    if !request {
        return Status::new(Code::Internal, error.to_string());
    }
    let (path, description) = decode_error_parts(error);
    let mut details = ErrorDetails::new();
    let message = match &path {
        Some(field) => {
            details.add_bad_request_violation(field.clone(), description.clone());
            details.set_error_info(
                "INVALID_FIELD",
                ERROR_DOMAIN,
                [("field".to_string(), field.clone())],
            );
            format!("invalid {field}: {description}")
        }
        None => {
            details.set_error_info(
                "MALFORMED_REQUEST",
                ERROR_DOMAIN,
                std::collections::HashMap::new(),
            );
            format!("invalid request: {description}")
        }
    };
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// The failing field's path (outermost first, dot-separated: `timers.workflow_id`) and the
/// decoder's reason, from a prost decode error. prost keeps both private and prints them as
/// `failed to decode Protobuf message: Inner.field: Outer.field: reason`.
fn decode_error_parts(error: &prost::DecodeError) -> (Option<String>, String) {
    let text = error.to_string();
    let mut rest = text
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&text);
    let mut fields = Vec::new();
    while let Some((segment, tail)) = rest.split_once(": ") {
        let Some((message, field)) = segment.split_once('.') else {
            break;
        };
        let ident = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        if !ident(message) || !ident(field) {
            break;
        }
        fields.push(field);
        rest = tail;
    }
    fields.reverse();
    let path = (!fields.is_empty()).then(|| fields.join("."));
    (path, rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    /// A ScheduleRequest whose workflow_id (field 1) is not UTF-8, as raw protobuf.
    fn non_utf8_schedule() -> Vec<u8> {
        vec![0x0a, 0x02, 0xff, 0xfe, 0x12, 0x01, b't']
    }

    #[test]
    fn a_request_that_does_not_decode_is_invalid_argument_naming_the_field() {
        let e = v1::ScheduleRequest::decode(&non_utf8_schedule()[..]).unwrap_err();
        let status = decode_error(&e, true);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "workflow_id"
        );
        assert!(
            status.message().starts_with("invalid workflow_id: "),
            "{}",
            status.message()
        );
        assert_eq!(
            status.get_details_error_info().unwrap().domain,
            ERROR_DOMAIN
        );

        // Nested: ScheduleBatchRequest.timers (field 1) holding that request.
        let inner = non_utf8_schedule();
        let mut batch = vec![0x0a, inner.len() as u8];
        batch.extend(inner);
        let e = v1::ScheduleBatchRequest::decode(&batch[..]).unwrap_err();
        let status = decode_error(&e, true);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "timers.workflow_id"
        );

        // A truncated field is named too.
        let e = v1::ScheduleRequest::decode(&[0x0a, 0x05, b'a'][..]).unwrap_err();
        let status = decode_error(&e, true);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "workflow_id"
        );

        // Bytes that are no field at all (a key that is not a varint) name none.
        let e = v1::ScheduleRequest::decode(&[0x80; 11][..]).unwrap_err();
        let status = decode_error(&e, true);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.get_details_bad_request().is_none());
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "MALFORMED_REQUEST"
        );
    }

    /// Regression (found building tests/fuzz.rs): the transport's generated server used
    /// tonic's own codec, and answered bytes that are no RaftMessage INTERNAL.
    #[test]
    fn fuzz_regression_an_undecodable_transport_request_is_invalid_argument() {
        use crate::internal::RaftMessage;
        // Field 2 (body) claims 5 bytes; one follows.
        let e = RaftMessage::decode(&[0x12, 0x05, 0x01][..]).unwrap_err();
        let status = decode_error(&e, <RaftMessage as Direction>::REQUEST);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            "body"
        );
    }

    #[test]
    fn a_response_that_does_not_decode_stays_internal() {
        let e = v1::ScheduleRequest::decode(&non_utf8_schedule()[..]).unwrap_err();
        assert_eq!(decode_error(&e, false).code(), Code::Internal);
        const { assert!(!<v1::ScheduleResponse as Direction>::REQUEST) };
        const { assert!(<v1::WorkerMessage as Direction>::REQUEST) };
    }
}
