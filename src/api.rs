//! The only place that knows tonic, HTTP and wire types: the gRPC services, the HTTP
//! listener, and the one mapping of decisions and errors onto each wire.

pub mod admin;
pub mod ext_authz;
pub mod ext_proc;
pub mod grpc;
pub mod http;
pub mod json;
pub mod panic;
pub mod serve;

/// Code generated from `proto/cedargate/v1/*.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
pub mod proto {
    tonic::include_proto!("cedargate.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/cedargate_descriptor.bin"));
}
