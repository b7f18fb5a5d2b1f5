//! The one mapping from every error type to `tonic::Status`.
//!
//! Invariant: handlers never build a `Status` by hand; they return these errors and `?` turns
//! them into the restricted set of codes documented in ARCHITECTURE.md.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::auth::AuthError;
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::store::durable::DurableError;
pub use crate::validation::InvalidRequest;

impl From<InvalidRequest> for Status {
    fn from(e: InvalidRequest) -> Status {
        let violations: Vec<FieldViolation> =
            e.violations.iter().map(|(f, d)| FieldViolation::new(f.clone(), d.clone())).collect();
        Status::with_error_details(
            Code::InvalidArgument,
            e.to_string(),
            ErrorDetails::with_bad_request(violations),
        )
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        let code = match &e {
            StoreError::NotFound { .. } => Code::NotFound,
            StoreError::Archived(_) | StoreError::SelfMerge(_) => Code::FailedPrecondition,
            StoreError::AliasTaken { .. } => Code::AlreadyExists,
            StoreError::VocabularyFull(_) => Code::ResourceExhausted,
            StoreError::Corrupt(_) => Code::Internal,
            StoreError::Unavailable(_) => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::Invalid(e) => e.into(),
            ServiceError::Store(e) => e.into(),
            ServiceError::Durable(e) => e.into(),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Unguarded => Status::internal(e.to_string()),
            AuthError::ExplainNeedsAdmin => Status::permission_denied(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        }
    }
}

impl From<DurableError> for Status {
    fn from(e: DurableError) -> Status {
        tracing::error!(error = %e, "write not made durable");
        Status::unavailable(format!("the write could not be made durable and was not acknowledged: {e}"))
    }
}

/// An RPC the contract defines but this version does not implement yet.
pub fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented yet"))
}
