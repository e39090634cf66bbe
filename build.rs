//! Generates the protobuf types of `proto/prerank/v1/rank.proto` (module `prerank::proto::pb`).
//!
//! `protox` parses the `.proto` in pure Rust, so neither developers nor CI need `protoc` installed
//! (prost-build alone would look for a `protoc` binary); `prost-build` turns the resulting
//! descriptors into Rust. Maps become `BTreeMap`s, like the JSON request's feature maps.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/prerank/v1/rank.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let fds = protox::compile([PROTO], ["proto"])?;
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
