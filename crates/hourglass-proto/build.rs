//! Compiles `proto/` with a vendored protoc, so builds never depend on a system protoc.
//!
//! The public API (`hourglass.v1`) is compiled on its own: its file descriptor set, written
//! next to the generated code, is what server reflection serves, so reflection describes the
//! public services and never the internal transport. Its generated clients and servers use
//! [`hourglass_proto::codec::Codec`], which answers undecodable requests INVALID_ARGUMENT; so
//! do the internal transport's, whose peer port anyone may reach.

use std::path::PathBuf;

const PUBLIC: [&str; 3] = [
    "hourglass/v1/timers.proto",
    "hourglass/v1/admin.proto",
    "hourglass/v1/workers.proto",
];
const INTERNAL: [&str; 1] = ["hourglass/internal/v1/raft.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("../../proto")
        .canonicalize()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    for f in PUBLIC.iter().chain(&INTERNAL) {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let includes = [root.clone(), include];

    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_build::configure()
        .file_descriptor_set_path(out.join("hourglass_v1_descriptor.bin"))
        .codec_path("crate::codec::Codec")
        .compile_protos_with_config(config, &PUBLIC.map(|f| root.join(f)), &includes)?;

    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_protos_with_config(config, &INTERNAL.map(|f| root.join(f)), &includes)?;
    Ok(())
}
