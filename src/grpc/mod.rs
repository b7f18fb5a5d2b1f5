//! The transport boundary: gRPC services that convert, delegate and convert back.
//!
//! Invariant: only this module knows wire (`pb`) types; everything it hands inward is a
//! validated domain value, and every error leaves through `status.rs`.

use tonic::Status;

pub mod auth;
pub mod campaigns;
pub mod convert;
pub mod deadline;
pub mod decisions;
pub mod listeners;
pub mod status;

/// Generated protobuf types and service stubs of `interlude.v1`.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("interlude.v1");

    /// Encoded descriptors of the contract (and its imports), for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("interlude_descriptor");
}

/// The method a gRPC request calls: the last segment of its path ("/pkg.Service/Method"), as
/// the per-service layers (roles, deadlines) look it up.
pub fn method_of(uri: &http::Uri) -> &str {
    uri.path().rsplit('/').next().unwrap_or_default()
}

/// The wall clock, read once per request at the edge (the services' own clock).
pub use crate::service::now;

/// The metric handles of the RPC named `$rpc`: one static per call site, registered on first use.
macro_rules! rpc_metrics {
    ($rpc:literal) => {{
        static METRICS: std::sync::OnceLock<crate::telemetry::RpcMetrics> = std::sync::OnceLock::new();
        METRICS.get_or_init(|| crate::telemetry::RpcMetrics::new($rpc))
    }};
}
pub(crate) use rpc_metrics;

/// Runs a handler body and records its metrics.
async fn observe<T>(
    metrics: &crate::telemetry::RpcMetrics,
    body: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<tonic::Response<T>, Status> {
    let started = tokio::time::Instant::now();
    let result = body.await;
    metrics.record(code_of(&result), started.elapsed());
    result.map(tonic::Response::new)
}

/// The gRPC code of a handler result, for metrics.
fn code_of<T>(result: &Result<T, Status>) -> tonic::Code {
    match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    #[test]
    fn file_descriptor_set_is_valid() {
        let set = prost_types::FileDescriptorSet::decode(super::pb::FILE_DESCRIPTOR_SET).unwrap();
        let names: Vec<_> = set.file.iter().filter_map(|f| f.name.as_deref()).collect();
        assert!(names.contains(&"interlude/v1/decision.proto"), "{names:?}");
        assert!(names.contains(&"google/protobuf/timestamp.proto"), "imports are included: {names:?}");
    }
}
