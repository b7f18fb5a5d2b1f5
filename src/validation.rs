//! Validation errors shared by every edge: each offending field or parameter, with what is
//! wrong with it (gRPC turns them into google.rpc.BadRequest, HTTP into a 400 naming them).

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::domain::GeoLocation;

/// Longest id (listener, alias, campaign, creative, advertiser, event).
pub const MAX_ID_LEN: usize = 128;
/// Most ads in one break.
pub const MAX_ADS_PER_BREAK: u32 = 10;
/// Longest break.
pub const MAX_BREAK_MS: i64 = 10 * 60_000;
/// Most genres of the playing track a request may name.
pub const MAX_TRACK_GENRES: usize = 10;
/// Most genres of the session's recent tracks a request may name.
pub const MAX_RECENT_GENRES: usize = 20;
/// Widest UTC offset of a listener's clock, in minutes (UTC−14:00..=UTC+14:00).
pub const MAX_UTC_OFFSET_MINUTES: i32 = 840;

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

/// Whether `code` is in the range of VAST error codes (IAB VAST 4.2 §2.3.6.3: 100..=999).
pub fn is_vast_error_code(code: u16) -> bool {
    (100..=999).contains(&code)
}

/// Why `value` is not an acceptable id, if it is not.
pub fn id_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("is required".into())
    } else if value.len() > MAX_ID_LEN {
        Some(format!("must be at most {MAX_ID_LEN} bytes"))
    } else if !value.bytes().all(|b| b.is_ascii_graphic()) {
        Some("must be printable ASCII without spaces".into())
    } else {
        None
    }
}

/// Why `value` is not a slug (`[a-z0-9][a-z0-9-]{0,47}`), if it is not.
pub fn slug_problem(value: &str) -> Option<String> {
    let ok = !value.is_empty()
        && value.len() <= 48
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-');
    (!ok).then(|| "must be a slug: 1..=48 of a-z, 0-9 and '-', e.g. \"hip-hop\"".into())
}

/// What is wrong with each part of a place ("country", "region", "metro"), if anything.
pub fn location_problems(l: &GeoLocation) -> Vec<(&'static str, &'static str)> {
    let mut problems = Vec::new();
    if !(l.country.len() == 2 && l.country.bytes().all(|b| b.is_ascii_uppercase())) {
        problems.push(("country", "must be an ISO 3166-1 alpha-2 code in upper case, e.g. \"DE\""));
    }
    if !l.region.is_empty() {
        let ok = l.region.len() > 3
            && l.region.len() <= 6
            && l.region.starts_with(&*l.country)
            && l.region.as_bytes()[2] == b'-'
            // Bytes, not a str slice: byte 3 may fall inside a character (found by fuzzing).
            && l.region.as_bytes()[3..].iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !ok {
            problems.push((
                "region",
                "must be an ISO 3166-2 code of the same country in upper case, e.g. \"DE-BE\"",
            ));
        }
    }
    if !l.metro.is_empty() {
        let ok = l.metro.len() <= 8 && l.metro.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !ok {
            problems.push(("metro", "must be 1..=8 upper-case letters or digits, e.g. \"BER\""));
        }
    }
    problems
}

/// The IAB Content Taxonomy 3.1: unique id → name (embedded from `data/`).
static IAB_CATEGORIES: LazyLock<HashMap<&'static str, &'static str>> = LazyLock::new(|| {
    include_str!("../data/iab_content_taxonomy_3.1.tsv")
        .lines()
        .skip(2)
        .filter_map(|line| {
            let mut columns = line.split('\t').map(str::trim);
            let id = columns.next().filter(|id| !id.is_empty())?;
            let name = columns.nth(1).unwrap_or_default();
            Some((id, name))
        })
        .collect()
});

/// The name of IAB Content Taxonomy 3.1 category `id`; None for an id the taxonomy lacks.
pub fn iab_category_name(id: &str) -> Option<&'static str> {
    IAB_CATEGORIES.get(id).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iab_taxonomy_is_embedded_with_its_names() {
        assert_eq!(iab_category_name("653"), Some("Travel"));
        assert_eq!(iab_category_name("346"), Some("Classical Music"));
        assert_eq!(iab_category_name("Unique ID"), None);
        assert!(IAB_CATEGORIES.len() > 700);
    }
}
