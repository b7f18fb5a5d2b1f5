//! Wire ↔ domain conversion. Every request field is validated here, and every violation is
//! reported with its field path; nothing past this module sees an unvalidated value. Here: the
//! limits, the `Checker` every conversion reports through, and time; one submodule per service.

use super::pb;
use super::status::InvalidRequest;
use crate::domain::{AgeBracket, ConsentState, DeviceType, GenreId, GeoLocation, Signal, UnixMillis};
use crate::store::{StoreError, Vocabulary};

pub use crate::validation::MAX_ID_LEN;
use crate::validation::{id_problem, location_problems, slug_problem};

/// Longest free-text name.
pub const MAX_NAME_LEN: usize = 200;
/// Longest URL.
pub const MAX_URL_LEN: usize = 2048;
/// Most entries in one targeting list.
pub const MAX_LIST: usize = 100;
/// Longest creative.
pub const MAX_CREATIVE_MS: i64 = 120_000;
/// Most creatives per campaign.
pub const MAX_CREATIVES: usize = 20;
/// Most extra encodings of one creative.
pub const MAX_MEDIA_FILES: usize = 5;
/// Most frequency caps per campaign.
pub const MAX_CAPS: usize = 10;
/// Longest frequency-cap window.
pub const MAX_CAP_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;
/// Most events in one RecordEvents call.
pub const MAX_EVENTS: usize = 500;
/// Largest campaign page.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Campaign page size when the request leaves it 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub use crate::service::decisions::MAX_CLOCK_SKEW_MS;
/// Largest bid: a million currency units per mille.
pub const MAX_BID_CPM_MICROS: i64 = 1_000_000_000_000;

/// Collects violations while converting; every check names its field.
struct Checker {
    errors: InvalidRequest,
    /// False on a dry run: genres a request names are looked up, not added, so that a request
    /// refused for any reason adds nothing to the vocabulary (see `campaign`).
    intern: bool,
}

impl Checker {
    fn new() -> Self {
        Self { errors: InvalidRequest::default(), intern: true }
    }

    fn dry_run() -> Self {
        Self { errors: InvalidRequest::default(), intern: false }
    }

    fn fail(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.errors.add(field, description);
    }

    fn finish<T>(self, value: T) -> Result<T, InvalidRequest> {
        self.errors.into_result().map(|()| value)
    }

    /// A required id.
    fn id(&mut self, field: &str, value: &str) -> bool {
        match id_problem(value) {
            Some(p) => {
                self.fail(field, p);
                false
            }
            None => true,
        }
    }

    /// Free text: 1..=MAX_NAME_LEN characters, no control characters.
    fn name(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(field, "is required");
        } else if value.chars().count() > MAX_NAME_LEN || value.chars().any(char::is_control) {
            self.fail(field, format!("must be at most {MAX_NAME_LEN} characters without control characters"));
        }
    }

    fn url(&mut self, field: &str, value: &str) {
        let ok = (value.starts_with("https://") || value.starts_with("http://"))
            && value.len() <= MAX_URL_LEN
            && value.len() > "https://".len()
            && !value.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            self.fail(field, format!("must be an http(s) URL of at most {MAX_URL_LEN} bytes"));
        }
    }

    fn list_len(&mut self, field: &str, len: usize, max: usize) -> bool {
        if len > max {
            self.fail(field, format!("must have at most {max} entries"));
            return false;
        }
        true
    }

    /// Genre slugs, interned. Invalid ones are reported and skipped.
    fn genres(&mut self, field: &str, values: &[String], vocabulary: &Vocabulary) -> Vec<GenreId> {
        if !self.list_len(field, values.len(), MAX_LIST) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(values.len());
        for (i, g) in values.iter().enumerate() {
            if let Some(id) = self.genre(&format!("{field}[{i}]"), g, vocabulary) {
                out.push(id);
            }
        }
        out
    }

    fn genre(&mut self, field: &str, value: &str, vocabulary: &Vocabulary) -> Option<GenreId> {
        if let Some(p) = slug_problem(value) {
            self.fail(field, p);
            return None;
        }
        if !self.intern {
            // A placeholder for a slug not known yet: the dry run's result is not kept.
            return Some(vocabulary.lookup(value).unwrap_or(GenreId(0)));
        }
        match vocabulary.intern(value) {
            Ok(id) => Some(id),
            Err(StoreError::VocabularyFull(n)) => {
                self.fail(field, format!("the server knows {n} genres already; no more can be added"));
                None
            }
            Err(other) => {
                self.fail(field, other.to_string());
                None
            }
        }
    }

    fn location(&mut self, field: &str, value: &pb::GeoLocation) -> GeoLocation {
        let location = GeoLocation {
            country: value.country.as_str().into(),
            region: value.region.as_str().into(),
            metro: value.metro.as_str().into(),
        };
        for (part, problem) in location_problems(&location) {
            self.fail(format!("{field}.{part}"), problem);
        }
        location
    }

    /// The audio MIME type of a media file: `given`, or as the URL's extension names it.
    fn audio_mime(&mut self, field: &str, given: &str, url: &str) -> String {
        if given.is_empty() {
            return match crate::domain::audio_mime_of_url(url) {
                Some(mime) => mime.into(),
                None => {
                    self.fail(field, "is required when the URL's extension names no audio type");
                    String::new()
                }
            };
        }
        let valid = given.len() <= 64
            && given.strip_prefix("audio/").is_some_and(|sub| {
                !sub.is_empty() && sub.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            });
        if !valid {
            self.fail(field, "must be an audio MIME type such as \"audio/mpeg\"");
        }
        given.into()
    }

    fn duration_ms(
        &mut self,
        field: &str,
        value: Option<&prost_types::Duration>,
        min_ms: i64,
        max_ms: i64,
    ) -> Option<i64> {
        let Some(d) = value else {
            self.fail(field, "is required");
            return None;
        };
        let ms = duration_to_ms(d);
        match ms {
            Some(ms) if (min_ms..=max_ms).contains(&ms) => Some(ms),
            _ => {
                self.fail(
                    field,
                    format!("must be between {} s and {} s", min_ms as f64 / 1000.0, max_ms as f64 / 1000.0),
                );
                None
            }
        }
    }

    fn timestamp(&mut self, field: &str, value: &prost_types::Timestamp) -> Option<UnixMillis> {
        match timestamp_to_millis(value) {
            Some(t) => Some(t),
            None => {
                self.fail(field, "must be a valid timestamp between 1970 and 9999");
                None
            }
        }
    }

    fn device(&mut self, field: &str, value: i32) -> Option<DeviceType> {
        use pb::DeviceType as D;
        match D::try_from(value) {
            Ok(D::Unspecified) => None,
            Ok(D::Mobile) => Some(DeviceType::Mobile),
            Ok(D::Desktop) => Some(DeviceType::Desktop),
            Ok(D::SmartSpeaker) => Some(DeviceType::SmartSpeaker),
            Ok(D::ConnectedTv) => Some(DeviceType::ConnectedTv),
            Ok(D::Car) => Some(DeviceType::Car),
            Ok(D::Wearable) => Some(DeviceType::Wearable),
            Ok(D::GameConsole) => Some(DeviceType::GameConsole),
            Ok(D::Web) => Some(DeviceType::Web),
            Err(_) => {
                self.fail(field, format!("unknown device type {value}"));
                None
            }
        }
    }

    /// Asserted signals (at most 50), none in the future, each ending after it began.
    fn signals(&mut self, field: &str, list: &[pb::Signal], now: UnixMillis) -> Vec<Signal> {
        let mut signals = Vec::new();
        if !self.list_len(field, list.len(), 50) {
            return signals;
        }
        for (i, s) in list.iter().enumerate() {
            let field = format!("{field}[{i}]");
            if let Some(p) = slug_problem(&s.signal) {
                self.fail(format!("{field}.signal"), p);
            }
            let Some(t) = &s.asserted_at else {
                self.fail(format!("{field}.asserted_at"), "is required");
                continue;
            };
            let Some(at) = self.timestamp(&format!("{field}.asserted_at"), t) else { continue };
            if at.0 > now.0 + MAX_CLOCK_SKEW_MS {
                self.fail(format!("{field}.asserted_at"), "must not be in the future");
            }
            let until_field = format!("{field}.valid_until");
            let valid_until = s.valid_until.as_ref().and_then(|t| self.timestamp(&until_field, t));
            if valid_until.is_some_and(|until| until.0 <= at.0) {
                self.fail(until_field, "must be after asserted_at");
            }
            signals.push(Signal { name: s.signal.as_str().into(), asserted_at: at, valid_until });
        }
        signals
    }

    fn age(&mut self, field: &str, value: i32) -> Option<AgeBracket> {
        use pb::AgeBracket as A;
        match A::try_from(value) {
            Ok(A::Unspecified) => None,
            Ok(A::AgeBracket1317) => Some(AgeBracket::Age13To17),
            Ok(A::AgeBracket1824) => Some(AgeBracket::Age18To24),
            Ok(A::AgeBracket2534) => Some(AgeBracket::Age25To34),
            Ok(A::AgeBracket3544) => Some(AgeBracket::Age35To44),
            Ok(A::AgeBracket4554) => Some(AgeBracket::Age45To54),
            Ok(A::AgeBracket5564) => Some(AgeBracket::Age55To64),
            Ok(A::AgeBracket65Plus) => Some(AgeBracket::Age65Plus),
            Err(_) => {
                self.fail(field, format!("unknown age bracket {value}"));
                None
            }
        }
    }

    fn consent(&mut self, field: &str, value: i32) -> ConsentState {
        match pb::ConsentState::try_from(value) {
            Ok(pb::ConsentState::Unspecified) => ConsentState::Unspecified,
            Ok(pb::ConsentState::Granted) => ConsentState::Granted,
            Ok(pb::ConsentState::Denied) => ConsentState::Denied,
            Err(_) => {
                self.fail(field, format!("unknown consent state {value}"));
                ConsentState::Unspecified
            }
        }
    }
}

/// Milliseconds of a protobuf Duration, if it is well-formed.
pub fn duration_to_ms(d: &prost_types::Duration) -> Option<i64> {
    let well_formed = (0..1_000_000_000).contains(&d.nanos.abs())
        && (d.seconds == 0 || d.nanos == 0 || (d.seconds > 0) == (d.nanos > 0));
    if !well_formed {
        return None;
    }
    d.seconds.checked_mul(1000)?.checked_add(i64::from(d.nanos / 1_000_000))
}

/// A protobuf Duration of `ms` milliseconds.
pub fn ms_to_duration(ms: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// Milliseconds since the epoch of a protobuf Timestamp, if it is well-formed (years 1970..=9999).
pub fn timestamp_to_millis(t: &prost_types::Timestamp) -> Option<UnixMillis> {
    const MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    ((0..=MAX_SECONDS).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos))
        .then(|| UnixMillis(t.seconds * 1000 + i64::from(t.nanos / 1_000_000)))
}

/// A protobuf Timestamp of `t`.
pub fn millis_to_timestamp(t: UnixMillis) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.0.div_euclid(1000), nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32 }
}

mod campaign;
mod decide;
mod listener;

pub use campaign::*;
pub use decide::*;
pub use listener::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_with_a_multibyte_character_is_refused_not_a_panic() {
        // From the decode_validate fuzz target: byte 3 of "-r\u{114}" is inside a character.
        let mut c = Checker::new();
        let place = pb::GeoLocation { country: "".into(), region: "-r\u{114}".into(), metro: "".into() };
        c.location("listener.home", &place);
        let fields: Vec<&str> = c.errors.violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, ["listener.home.country", "listener.home.region"]);
    }

    #[test]
    fn durations_and_timestamps_round_trip() {
        assert_eq!(duration_to_ms(&ms_to_duration(30_500)), Some(30_500));
        assert_eq!(duration_to_ms(&prost_types::Duration { seconds: 1, nanos: -5 }), None);
        assert_eq!(
            timestamp_to_millis(&millis_to_timestamp(UnixMillis(1_700_000_000_123))),
            Some(UnixMillis(1_700_000_000_123))
        );
        assert_eq!(timestamp_to_millis(&prost_types::Timestamp { seconds: -1, nanos: 0 }), None);
    }
}
