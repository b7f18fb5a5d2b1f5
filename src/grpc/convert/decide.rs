//! Decide and RecordEvents: the break a player asks to fill, and the events it reports.

use std::collections::HashSet;

use crate::domain::{AdRequest, EventKind, GenreId};
use crate::grpc::pb;
use crate::grpc::status::InvalidRequest;
use crate::service::decisions::{EventInput, EventShape};
use crate::store::Vocabulary;

use super::{Checker, MAX_EVENTS, MAX_ID_LEN};
use crate::validation::{
    MAX_ADS_PER_BREAK, MAX_BREAK_MS, MAX_RECENT_GENRES, MAX_TRACK_GENRES, MAX_UTC_OFFSET_MINUTES,
    is_vast_error_code, slug_problem,
};

/// Validates a Decide request. Genres unknown to the server are dropped: no campaign or
/// profile can mention them, so they cannot match anything.
pub fn ad_request(req: &pb::DecideRequest, vocabulary: &Vocabulary) -> Result<AdRequest, InvalidRequest> {
    let mut c = Checker::new();
    let listener_id = if req.listener_id.is_empty() {
        None
    } else {
        c.id("listener_id", &req.listener_id);
        Some(req.listener_id.as_str().into())
    };
    if !req.member_id.is_empty() {
        if listener_id.is_none() {
            c.fail("member_id", "requires listener_id");
        } else {
            c.id("member_id", &req.member_id);
        }
    }
    let default_context = pb::PlaybackContext::default();
    let ctx = req.context.as_ref().unwrap_or(&default_context);
    if ctx.track_id.len() > MAX_ID_LEN {
        c.fail("context.track_id", format!("must be at most {MAX_ID_LEN} bytes"));
    }
    let track_genres =
        context_genres(&mut c, "context.track_genres", &ctx.track_genres, MAX_TRACK_GENRES, vocabulary);
    let recent_genres = context_genres(
        &mut c,
        "context.recent_track_genres",
        &ctx.recent_track_genres,
        MAX_RECENT_GENRES,
        vocabulary,
    );
    let device = c.device("context.device", ctx.device);
    let location = ctx.location.as_ref().map(|l| c.location("context.location", l));
    let consent = c.consent("context.personalized_ads", ctx.personalized_ads);
    if !(-MAX_UTC_OFFSET_MINUTES..=MAX_UTC_OFFSET_MINUTES).contains(&ctx.utc_offset_minutes) {
        c.fail("context.utc_offset_minutes", format!("must be within ±{MAX_UTC_OFFSET_MINUTES}"));
    }
    let (mut max_ads, mut max_duration_ms) = (0, 0);
    match &req.break_constraints {
        None => c.fail("break_constraints", "is required"),
        Some(b) => {
            if !(1..=MAX_ADS_PER_BREAK).contains(&b.max_ads) {
                c.fail("break_constraints.max_ads", format!("must be 1..={MAX_ADS_PER_BREAK}"));
            }
            max_ads = b.max_ads.min(MAX_ADS_PER_BREAK) as u8;
            max_duration_ms = c
                .duration_ms("break_constraints.max_duration", b.max_duration.as_ref(), 1000, MAX_BREAK_MS)
                .unwrap_or(0) as u32;
        }
    }
    c.finish(AdRequest {
        listener_id,
        member_id: req.member_id.as_str().into(),
        track_id: ctx.track_id.as_str().into(),
        track_genres,
        recent_genres,
        device,
        location,
        consent,
        utc_offset_minutes: ctx.utc_offset_minutes.clamp(-MAX_UTC_OFFSET_MINUTES, MAX_UTC_OFFSET_MINUTES)
            as i16,
        max_ads,
        max_duration_ms,
        explain: req.explain,
    })
}

/// Validates the shape of a RecordEvents request (not the tokens): the request as a whole
/// (refused entire), and each event on its own (a bad one does not sink the rest).
pub fn events(req: &pb::RecordEventsRequest) -> Result<Vec<EventShape<'_>>, InvalidRequest> {
    let mut batch = Checker::new();
    if req.events.is_empty() {
        batch.fail("events", "must not be empty");
    }
    if !batch.list_len("events", req.events.len(), MAX_EVENTS) {
        return batch.finish(Vec::new());
    }
    batch.finish(())?;
    let mut seen = HashSet::with_capacity(req.events.len());
    let mut out = Vec::with_capacity(req.events.len());
    for (i, e) in req.events.iter().enumerate() {
        let mut c = Checker::new();
        if c.id(&format!("events[{i}].event_id"), &e.event_id) && !seen.insert(e.event_id.as_str()) {
            c.fail(format!("events[{i}].event_id"), "appears twice in this request");
        }
        let kind = match pb::EventType::try_from(e.r#type) {
            Ok(pb::EventType::Impression) => Some(EventKind::Impression),
            Ok(pb::EventType::Click) => Some(EventKind::Click),
            Ok(pb::EventType::Complete) => Some(EventKind::Complete),
            Ok(pb::EventType::Skip) => Some(EventKind::Skip),
            Ok(pb::EventType::NotForMe) => Some(EventKind::NotForMe),
            Ok(pb::EventType::Start) => Some(EventKind::Start),
            Ok(pb::EventType::FirstQuartile) => Some(EventKind::FirstQuartile),
            Ok(pb::EventType::Midpoint) => Some(EventKind::Midpoint),
            Ok(pb::EventType::ThirdQuartile) => Some(EventKind::ThirdQuartile),
            Ok(pb::EventType::Mute) => Some(EventKind::Mute),
            Ok(pb::EventType::Unmute) => Some(EventKind::Unmute),
            Ok(pb::EventType::Pause) => Some(EventKind::Pause),
            Ok(pb::EventType::Resume) => Some(EventKind::Resume),
            Ok(pb::EventType::NotUsed) => Some(EventKind::NotUsed),
            Ok(pb::EventType::Error) => Some(EventKind::Error),
            Ok(pb::EventType::Unspecified) | Err(_) => {
                c.fail(format!("events[{i}].type"), "must be a known event type");
                None
            }
        };
        if e.impression_token.is_empty() {
            c.fail(format!("events[{i}].impression_token"), "is required");
        }
        let occurred_at =
            e.occurred_at.as_ref().and_then(|t| c.timestamp(&format!("events[{i}].occurred_at"), t));
        let error_code = match kind {
            Some(EventKind::Error) => match u16::try_from(e.error_code) {
                Ok(code) if is_vast_error_code(code) => code,
                _ => {
                    c.fail(format!("events[{i}].error_code"), "must be a VAST error code, 100..=999");
                    0
                }
            },
            _ if e.error_code != 0 => {
                c.fail(format!("events[{i}].error_code"), "is set only for EVENT_TYPE_ERROR");
                0
            }
            _ => 0,
        };
        out.push(match kind {
            Some(kind) => c.finish(EventInput {
                event_id: &e.event_id,
                kind,
                error_code,
                token: &e.impression_token,
                occurred_at,
            }),
            None => Err(c.errors),
        });
    }
    Ok(out)
}

/// Genre slugs of a request's context, at most `max`: the known ones (an unknown slug matches
/// nothing, so it is dropped, not refused).
fn context_genres(
    c: &mut Checker,
    field: &str,
    slugs: &[String],
    max: usize,
    vocabulary: &Vocabulary,
) -> Vec<GenreId> {
    let mut genres = Vec::new();
    if c.list_len(field, slugs.len(), max) {
        for (i, g) in slugs.iter().enumerate() {
            match slug_problem(g) {
                Some(p) => c.fail(format!("{field}[{i}]"), p),
                None => genres.extend(vocabulary.lookup(g)),
            }
        }
    }
    genres
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decide_request_violations_name_each_field() {
        let vocabulary = Vocabulary::default();
        let req = pb::DecideRequest {
            listener_id: "has space".into(),
            member_id: String::new(),
            context: Some(pb::PlaybackContext {
                track_genres: vec!["Not A Slug".into()],
                device: 99,
                location: Some(pb::GeoLocation { country: "de".into(), ..Default::default() }),
                utc_offset_minutes: 2000,
                ..Default::default()
            }),
            break_constraints: Some(pb::BreakConstraints { max_ads: 0, max_duration: None }),
            explain: false,
        };
        let err = ad_request(&req, &vocabulary).unwrap_err();
        let fields: Vec<&str> = err.violations.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "listener_id",
                "context.track_genres[0]",
                "context.device",
                "context.location.country",
                "context.utc_offset_minutes",
                "break_constraints.max_ads",
                "break_constraints.max_duration",
            ]
        );
    }
}
