//! Generated protobuf and gRPC code: the public `hourglass.v1` API and the internal transport.

/// The public API, package `hourglass.v1`.
pub mod v1 {
    tonic::include_proto!("hourglass.v1");
}

/// Node-to-node messages and the stored timer encoding, package `hourglass.internal.v1`.
pub mod internal {
    tonic::include_proto!("hourglass.internal.v1");
}
