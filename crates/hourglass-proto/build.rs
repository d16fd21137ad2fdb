//! Compiles `proto/` with a vendored protoc, so builds never depend on a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("../../proto")
        .canonicalize()?;
    let files = [
        "hourglass/v1/timers.proto",
        "hourglass/v1/admin.proto",
        "hourglass/v1/workers.proto",
        "hourglass/internal/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_build::configure().compile_protos_with_config(
        config,
        &files.map(|f| root.join(f)),
        &[root.clone(), include],
    )?;
    Ok(())
}
