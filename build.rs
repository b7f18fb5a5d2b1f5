//! Compiles the wire contract in `proto/` with a vendored protoc, so a fresh machine needs no apt step.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/interlude/v1/types.proto",
    "proto/interlude/v1/decision.proto",
    "proto/interlude/v1/campaign.proto",
    "proto/interlude/v1/listener.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("interlude_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;
    Ok(())
}
