//! The services every edge calls — gRPC (`grpc/`) and VAST over HTTP (`vast/`): validated
//! domain values in, domain results out. No wire type reaches this module, so a break decided
//! through either edge obeys the same rules and its events are counted by the same code.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::domain::UnixMillis;
use crate::store::StoreError;
use crate::store::durable::DurableError;
use crate::validation::InvalidRequest;

pub mod decisions;

pub use decisions::Decisions;

/// Why a service call failed; each edge maps it to its own status (gRPC `grpc/status.rs`,
/// HTTP `vast/`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Durable(#[from] DurableError),
}

/// The wall clock, read once per request at the edge; the engine gets it as a value.
pub fn now() -> UnixMillis {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    UnixMillis(since.as_millis() as i64)
}
