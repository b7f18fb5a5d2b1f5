//! Validation errors shared by every edge: each offending field or parameter, with what is
//! wrong with it (gRPC turns them into google.rpc.BadRequest, HTTP into a 400 naming them).

/// A request that failed validation: every offending field, with what is wrong with it.
#[derive(Debug, Default, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: {}", summary(.violations))]
pub struct InvalidRequest {
    /// (field path, description), e.g. ("break_constraints.max_ads", "must be 1..=10").
    pub violations: Vec<(String, String)>,
}

fn summary(violations: &[(String, String)]) -> String {
    violations.iter().map(|(f, d)| format!("{f}: {d}")).collect::<Vec<_>>().join("; ")
}

impl InvalidRequest {
    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations.push((field.into(), description.into()));
    }

    /// Ok when nothing was recorded.
    pub fn into_result(self) -> Result<(), InvalidRequest> {
        if self.violations.is_empty() { Ok(()) } else { Err(self) }
    }

    /// A single-field error.
    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.add(field, description);
        e
    }
}
