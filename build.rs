//! Compiles `proto/` with protox (no system `protoc`) into tonic/prost code, and writes the
//! descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let protos = [
        "proto/cedargate/v1/authorizer.proto",
        "proto/cedargate/v1/sessions.proto",
        "proto/cedargate/v1/admin.proto",
    ];
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("cedargate_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&descriptors))?;

    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
