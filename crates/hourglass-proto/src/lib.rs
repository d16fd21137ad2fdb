//! Generated protobuf and gRPC code: the public `hourglass.v1` API and the internal transport.

pub mod codec;

/// The public API, package `hourglass.v1`.
pub mod v1 {
    tonic::include_proto!("hourglass.v1");
}

/// Node-to-node messages and the stored timer encoding, package `hourglass.internal.v1`.
pub mod internal {
    tonic::include_proto!("hourglass.internal.v1");
}

/// The encoded `FileDescriptorSet` of the public API (`hourglass/v1/*.proto` and the
/// well-known types they import), for server reflection. The internal transport is not in it.
pub const PUBLIC_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("hourglass_v1_descriptor");

pub use codec::ERROR_DOMAIN;
