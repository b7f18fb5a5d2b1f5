//! The tracking and error URLs of VAST documents, read into the events `RecordEvents` counts.
//!
//! A tracker is a GET a player fires and forgets, and may fire twice; it carries the ad's
//! signed token and the event's name. Its event id is the event's name (`vast:impression`):
//! the service counts each kind at most once per ad, so a second firing is a duplicate whatever
//! the caller, and the first one bills.

use super::params::Query;
use crate::domain::{EventKind, UnixMillis};
use crate::service::decisions::EventInput;
use crate::validation::{InvalidRequest, is_vast_error_code};

/// The events a tracking URL may name: VAST's names, the event id they are recorded under,
/// and what they count. `notUsed` (a pre-fetched ad the player dropped) is accepted though the
/// 4.2 XSD does not list it among `Tracking` events: players fire it from their own logic.
const EVENTS: [(&str, &str, EventKind); 13] = [
    ("impression", "vast:impression", EventKind::Impression),
    ("start", "vast:start", EventKind::Start),
    ("firstQuartile", "vast:firstQuartile", EventKind::FirstQuartile),
    ("midpoint", "vast:midpoint", EventKind::Midpoint),
    ("thirdQuartile", "vast:thirdQuartile", EventKind::ThirdQuartile),
    ("complete", "vast:complete", EventKind::Complete),
    ("skip", "vast:skip", EventKind::Skip),
    ("mute", "vast:mute", EventKind::Mute),
    ("unmute", "vast:unmute", EventKind::Unmute),
    ("pause", "vast:pause", EventKind::Pause),
    ("resume", "vast:resume", EventKind::Resume),
    ("click", "vast:click", EventKind::Click),
    ("notUsed", "vast:notUsed", EventKind::NotUsed),
];

/// VAST 4.2's "undefined error", for an Error URL whose `[ERRORCODE]` the player left as is.
pub const UNDEFINED_ERROR: u16 = 900;

/// A tracking URL's event: `e` (the event), `t` (the token), `ts` (the player's `[TIMESTAMP]`).
pub fn tracked_event<'q>(query: &'q Query<'_>) -> Result<EventInput<'q>, InvalidRequest> {
    let mut errors = InvalidRequest::default();
    let event = match query.single("e", &mut errors) {
        None => {
            errors.add("e", "is required: the event's name, e.g. impression");
            None
        }
        Some(name) => EVENTS.iter().find(|(n, ..)| *n == name).or_else(|| {
            errors.add("e", format!("unknown event {name:?}"));
            None
        }),
    };
    let token = token(query, &mut errors);
    let occurred_at = timestamp(query, &mut errors);
    errors.into_result()?;
    let &(_, event_id, kind) = event.unwrap_or(&EVENTS[0]);
    Ok(EventInput { event_id, kind, error_code: 0, token, occurred_at })
}

/// An Error URL's event: `t` (the token) and `code` (the player's `[ERRORCODE]`).
pub fn error_event<'q>(query: &'q Query<'_>) -> Result<EventInput<'q>, InvalidRequest> {
    let mut errors = InvalidRequest::default();
    let token = token(query, &mut errors);
    let error_code = match query.single("code", &mut errors) {
        // Left unsubstituted (dropped by `Query`), or not sent: the player did not say which.
        None => UNDEFINED_ERROR,
        Some(code) => match code.parse::<u16>() {
            Ok(code) if is_vast_error_code(code) => code,
            _ => {
                errors.add("code", "must be a VAST error code, 100..=999");
                UNDEFINED_ERROR
            }
        },
    };
    let occurred_at = timestamp(query, &mut errors);
    errors.into_result()?;
    Ok(EventInput { event_id: "vast:error", kind: EventKind::Error, error_code, token, occurred_at })
}

fn token<'q>(query: &'q Query<'_>, errors: &mut InvalidRequest) -> &'q str {
    query.single("t", errors).unwrap_or_else(|| {
        errors.add("t", "is required: the ad's token");
        ""
    })
}

/// VAST's `[TIMESTAMP]` (ISO 8601 with its offset, e.g. `2026-12-04T08:15:07.127+05:00`).
fn timestamp(query: &Query<'_>, errors: &mut InvalidRequest) -> Option<UnixMillis> {
    let value = query.single("ts", errors)?;
    match value.parse::<jiff::Timestamp>() {
        Ok(at) => Some(UnixMillis(at.as_millisecond())),
        Err(_) => {
            errors.add("ts", "must be an ISO 8601 timestamp with its offset, as VAST's [TIMESTAMP]");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracking_url_names_its_event_token_and_time() {
        let q = Query::parse("e=firstQuartile&t=abc.def&ts=2026-12-04T08:15:07.127%2B05:00&cb=123");
        let e = tracked_event(&q).unwrap();
        assert_eq!(
            (e.kind, e.event_id, e.token),
            (EventKind::FirstQuartile, "vast:firstQuartile", "abc.def")
        );
        assert_eq!(e.occurred_at, Some(UnixMillis(1_796_354_107_127)));
    }

    #[test]
    fn unsubstituted_macros_are_absent() {
        let q = Query::parse("e=impression&t=x&ts=[TIMESTAMP]&cb=[CACHEBUSTING]");
        assert_eq!(tracked_event(&q).unwrap().occurred_at, None);
        let q = Query::parse("t=x&code=%5BERRORCODE%5D");
        assert_eq!(error_event(&q).unwrap().error_code, UNDEFINED_ERROR);
    }

    #[test]
    fn bad_tracking_urls_name_what_is_wrong() {
        let names = |r: Result<EventInput<'_>, InvalidRequest>| {
            r.unwrap_err().violations.into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        };
        assert_eq!(names(tracked_event(&Query::parse("t=x"))), ["e"]);
        assert_eq!(names(tracked_event(&Query::parse("e=creativeView&t=x"))), ["e"]);
        assert_eq!(names(tracked_event(&Query::parse("e=impression"))), ["t"]);
        assert_eq!(names(tracked_event(&Query::parse("e=start&t=x&ts=yesterday"))), ["ts"]);
        assert_eq!(names(error_event(&Query::parse("t=x&code=42"))), ["code"]);
        assert_eq!(error_event(&Query::parse("t=x&code=402")).unwrap().error_code, 402);
    }
}
