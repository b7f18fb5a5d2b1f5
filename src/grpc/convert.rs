//! Wire ↔ domain conversion. Every request field is validated here, and every violation is
//! reported with its field path; nothing past this module sees an unvalidated value.

use std::collections::HashSet;

use super::pb;
use super::status::InvalidRequest;
use crate::domain::{
    AdRequest, AgeBracket, ArtistId, Budget, Campaign, CampaignStatus, CampaignZone, CapScope, Category,
    Companion, ConsentState, Creative, Daypart, DeviceType, EventKind, FrequencyCap, GenreId, GeoLocation,
    ListenerProfile, MediaFile, Milestone, PacingMode, Signal, SignalRequirement, Targeting, Tier,
    UnixMillis,
};
use crate::service::decisions::{EventInput, EventShape};
use crate::store::{StoreError, Vocabulary};

pub use crate::validation::MAX_ID_LEN;
use crate::validation::{
    MAX_ADS_PER_BREAK, MAX_BREAK_MS, MAX_RECENT_GENRES, MAX_TRACK_GENRES, MAX_UTC_OFFSET_MINUTES, id_problem,
    is_vast_error_code, location_problems, slug_problem,
};
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

// === Decide ===

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

/// The wire form of a tier.
pub fn tier_to_proto(t: Tier) -> pb::PriorityTier {
    match t {
        Tier::Sponsorship => pb::PriorityTier::Sponsorship,
        Tier::Standard => pb::PriorityTier::Standard,
        Tier::Remnant => pb::PriorityTier::Remnant,
        Tier::House => pb::PriorityTier::House,
    }
}

/// The wire form of a companion banner.
pub fn companion_to_proto(c: &Companion) -> pb::CompanionBanner {
    pb::CompanionBanner {
        image_url: c.image_url.to_string(),
        click_url: c.click_url.to_string(),
        width: c.width,
        height: c.height,
    }
}

/// The wire form of one encoding of a creative.
pub fn media_file_to_proto(m: &MediaFile) -> pb::MediaFile {
    pb::MediaFile { url: (*m.url).into(), mime_type: (*m.mime_type).into(), bitrate_kbps: m.bitrate_kbps }
}

// === RecordEvents ===

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

// === Campaigns ===

/// Validates a campaign for upsert. `now` stamps nothing; it only bounds nothing here, the
/// catalog stamps `updated_at`.
pub fn campaign(req: Option<&pb::Campaign>, vocabulary: &Vocabulary) -> Result<Campaign, InvalidRequest> {
    let Some(p) = req else {
        return Err(InvalidRequest::field("campaign", "is required"));
    };
    // Everything is checked before any genre is added: a refused campaign leaves no trace.
    campaign_checked(p, vocabulary, Checker::dry_run())?;
    campaign_checked(p, vocabulary, Checker::new())
}

fn campaign_checked(
    p: &pb::Campaign,
    vocabulary: &Vocabulary,
    mut c: Checker,
) -> Result<Campaign, InvalidRequest> {
    c.id("campaign.campaign_id", &p.campaign_id);
    c.id("campaign.advertiser_id", &p.advertiser_id);
    c.name("campaign.advertiser_name", &p.advertiser_name);
    c.name("campaign.name", &p.name);
    let tier = match pb::PriorityTier::try_from(p.tier) {
        Ok(pb::PriorityTier::Sponsorship) => Tier::Sponsorship,
        Ok(pb::PriorityTier::Standard) => Tier::Standard,
        Ok(pb::PriorityTier::Remnant) => Tier::Remnant,
        Ok(pb::PriorityTier::House) => Tier::House,
        _ => {
            c.fail("campaign.tier", "must be SPONSORSHIP, STANDARD, REMNANT or HOUSE");
            Tier::Remnant
        }
    };
    let status = match pb::CampaignStatus::try_from(p.status) {
        Ok(pb::CampaignStatus::Unspecified | pb::CampaignStatus::Active) => CampaignStatus::Active,
        Ok(pb::CampaignStatus::Paused) => CampaignStatus::Paused,
        _ => {
            c.fail("campaign.status", "must be unset, ACTIVE or PAUSED; use ArchiveCampaign to archive");
            CampaignStatus::Active
        }
    };
    if tier == Tier::House && p.bid_cpm_micros != 0 {
        c.fail("campaign.bid_cpm_micros", "must be 0 for house ads");
    } else if tier != Tier::House && !(1..=MAX_BID_CPM_MICROS).contains(&p.bid_cpm_micros) {
        c.fail("campaign.bid_cpm_micros", format!("must be 1..={MAX_BID_CPM_MICROS} for paid tiers"));
    }
    let mut categories = Vec::new();
    if c.list_len("campaign.iab_categories", p.iab_categories.len(), 10) {
        for (i, cat) in p.iab_categories.iter().enumerate() {
            if crate::validation::iab_category_name(cat.as_str()).is_some() {
                categories.push(Category::from(cat.as_str()));
            } else {
                c.fail(
                    format!("campaign.iab_categories[{i}]"),
                    "must be an IAB Content Taxonomy 3.1 unique id, e.g. \"653\"",
                );
            }
        }
    }
    let default_targeting = pb::Targeting::default();
    let targeting = targeting(&mut c, p.targeting.as_ref().unwrap_or(&default_targeting), vocabulary);
    let mut caps = Vec::new();
    if c.list_len("campaign.frequency_caps", p.frequency_caps.len(), MAX_CAPS) {
        for (i, cap) in p.frequency_caps.iter().enumerate() {
            let field = format!("campaign.frequency_caps[{i}]");
            let scope = match pb::CapScope::try_from(cap.scope) {
                Ok(pb::CapScope::Creative) => Some(CapScope::Creative),
                Ok(pb::CapScope::Campaign) => Some(CapScope::Campaign),
                Ok(pb::CapScope::Advertiser) => Some(CapScope::Advertiser),
                _ => {
                    c.fail(format!("{field}.scope"), "must be CREATIVE, CAMPAIGN or ADVERTISER");
                    None
                }
            };
            if cap.max_impressions == 0 {
                c.fail(format!("{field}.max_impressions"), "must be at least 1");
            }
            let window_ms = match &cap.window {
                None => None,
                Some(w) => c.duration_ms(&format!("{field}.window"), Some(w), 60_000, MAX_CAP_WINDOW_MS),
            };
            if let Some(scope) = scope {
                caps.push(FrequencyCap { scope, max_impressions: cap.max_impressions, window_ms });
            }
        }
    }
    if let Some(floor) = p.relevance_floor
        && !(0.0..=1.0).contains(&floor)
    {
        c.fail("campaign.relevance_floor", "must be within [0, 1]");
    }
    let flight_start = p.flight_start.as_ref().and_then(|t| c.timestamp("campaign.flight_start", t));
    let flight_end = p.flight_end.as_ref().and_then(|t| c.timestamp("campaign.flight_end", t));
    if let (Some(s), Some(e)) = (flight_start, flight_end)
        && e <= s
    {
        c.fail("campaign.flight_end", "must be after flight_start");
    }
    let budget = budget(&mut c, p.budget.as_ref());
    // A lifetime budget or goal is paced along the flight: without both ends there is no curve,
    // and "even" would silently mean "as fast as possible".
    let flight_paced = budget.lifetime_micros > 0 || budget.impression_goal > 0;
    if budget.pacing != PacingMode::Asap && flight_paced && (flight_start.is_none() || flight_end.is_none()) {
        c.fail(
            "campaign.budget.pacing",
            "pacing a lifetime budget or impression goal needs flight_start and flight_end (or pacing ASAP)",
        );
    }
    let mut creatives = Vec::new();
    if p.creatives.is_empty() {
        c.fail("campaign.creatives", "must have at least one creative");
    } else if c.list_len("campaign.creatives", p.creatives.len(), MAX_CREATIVES) {
        let mut ids = HashSet::new();
        for (i, cr) in p.creatives.iter().enumerate() {
            let field = format!("campaign.creatives[{i}]");
            if c.id(&format!("{field}.creative_id"), &cr.creative_id) && !ids.insert(cr.creative_id.as_str())
            {
                c.fail(format!("{field}.creative_id"), "is used twice in this campaign");
            }
            c.url(&format!("{field}.audio_url"), &cr.audio_url);
            let duration =
                c.duration_ms(&format!("{field}.duration"), cr.duration.as_ref(), 1000, MAX_CREATIVE_MS);
            let companion = cr.companion.as_ref().map(|b| {
                c.url(&format!("{field}.companion.image_url"), &b.image_url);
                c.url(&format!("{field}.companion.click_url"), &b.click_url);
                if !(1..=4096).contains(&b.width) || !(1..=4096).contains(&b.height) {
                    c.fail(format!("{field}.companion"), "width and height must be 1..=4096");
                }
                Companion {
                    image_url: b.image_url.as_str().into(),
                    click_url: b.click_url.as_str().into(),
                    width: b.width,
                    height: b.height,
                }
            });
            let audio_mime =
                c.audio_mime(&format!("{field}.audio_mime_type"), &cr.audio_mime_type, &cr.audio_url);
            let mut media_files = Vec::new();
            if c.list_len(&format!("{field}.media_files"), cr.media_files.len(), MAX_MEDIA_FILES) {
                for (j, m) in cr.media_files.iter().enumerate() {
                    let field = format!("{field}.media_files[{j}]");
                    c.url(&format!("{field}.url"), &m.url);
                    let mime_type = c.audio_mime(&format!("{field}.mime_type"), &m.mime_type, &m.url);
                    if m.bitrate_kbps > 100_000 {
                        c.fail(format!("{field}.bitrate_kbps"), "must be at most 100000");
                    }
                    media_files.push(MediaFile {
                        url: m.url.as_str().into(),
                        mime_type: mime_type.into(),
                        bitrate_kbps: m.bitrate_kbps,
                    });
                }
            }
            creatives.push(Creative {
                id: cr.creative_id.as_str().into(),
                audio_url: cr.audio_url.as_str().into(),
                audio_mime: Some(audio_mime.into()),
                duration_ms: duration.unwrap_or(0) as u32,
                companion,
                media_files,
            });
        }
    }
    let time_zone = if p.time_zone.is_empty() {
        CampaignZone::default()
    } else {
        CampaignZone::named(&p.time_zone).unwrap_or_else(|_| {
            c.fail("campaign.time_zone", "must be an IANA time zone name, e.g. \"Europe/Berlin\"");
            CampaignZone::default()
        })
    };
    c.finish(Campaign {
        time_zone,
        id: p.campaign_id.as_str().into(),
        advertiser_id: p.advertiser_id.as_str().into(),
        advertiser_name: p.advertiser_name.as_str().into(),
        name: p.name.as_str().into(),
        tier,
        status,
        bid_cpm_micros: p.bid_cpm_micros,
        categories: categories.into(),
        targeting,
        caps,
        relevance_floor: p.relevance_floor,
        flight_start,
        flight_end,
        budget,
        creatives,
        updated_at: UnixMillis(0),
    })
}

fn targeting(c: &mut Checker, t: &pb::Targeting, vocabulary: &Vocabulary) -> Targeting {
    const F: &str = "campaign.targeting";
    let mut out = Targeting {
        affinity_genres: c.genres(&format!("{F}.affinity_genres"), &t.affinity_genres, vocabulary),
        exclude_affinity_genres: c.genres(
            &format!("{F}.exclude_affinity_genres"),
            &t.exclude_affinity_genres,
            vocabulary,
        ),
        track_genres: c.genres(&format!("{F}.track_genres"), &t.track_genres, vocabulary),
        exclude_track_genres: c.genres(
            &format!("{F}.exclude_track_genres"),
            &t.exclude_track_genres,
            vocabulary,
        ),
        affinity_from_history_only: t.affinity_from_history_only,
        ..Targeting::default()
    };
    if c.list_len(&format!("{F}.milestones"), t.milestones.len(), 10) {
        for (i, m) in t.milestones.iter().enumerate() {
            let field = format!("{F}.milestones[{i}]");
            let genre = c.genre(&format!("{field}.genre"), &m.genre, vocabulary);
            if m.min_lifetime_plays == 0 {
                c.fail(format!("{field}.min_lifetime_plays"), "must be at least 1");
            }
            out.milestones.extend(genre.map(|genre| Milestone { genre, min_plays: m.min_lifetime_plays }));
        }
    }
    if let Some(geo) = &t.geo {
        for (name, list, dest) in
            [("include", &geo.include, &mut out.geo_include), ("exclude", &geo.exclude, &mut out.geo_exclude)]
        {
            let field = format!("{F}.geo.{name}");
            if c.list_len(&field, list.len(), MAX_LIST) {
                for (i, l) in list.iter().enumerate() {
                    dest.push(c.location(&format!("{field}[{i}]"), l));
                }
            }
        }
        out.geo_use_home = geo.use_home_location;
        if geo.use_home_location && geo.include.is_empty() && geo.exclude.is_empty() {
            c.fail(format!("{F}.geo.use_home_location"), "needs include or exclude locations");
        }
    }
    if c.list_len(&format!("{F}.devices"), t.devices.len(), 10) {
        for (i, &d) in t.devices.iter().enumerate() {
            let field = format!("{F}.devices[{i}]");
            match c.device(&field, d) {
                Some(d) => out.devices.push(d),
                None if d == 0 => c.fail(field, "must not be UNSPECIFIED"),
                None => {}
            }
        }
    }
    if c.list_len(&format!("{F}.age_brackets"), t.age_brackets.len(), 10) {
        for (i, &a) in t.age_brackets.iter().enumerate() {
            let field = format!("{F}.age_brackets[{i}]");
            match c.age(&field, a) {
                Some(a) => out.age_brackets.push(a),
                None if a == 0 => c.fail(field, "must not be UNSPECIFIED"),
                None => {}
            }
        }
    }
    if let Some(d) = &t.daypart {
        let mut days = 0u8;
        for (i, &day) in d.days.iter().enumerate() {
            match pb::Weekday::try_from(day) {
                Ok(w) if w != pb::Weekday::Unspecified => days |= 1 << (w as i32 - 1),
                _ => c.fail(format!("{F}.daypart.days[{i}]"), "must be MONDAY..SUNDAY"),
            }
        }
        if d.days.is_empty() {
            days = 0x7f;
        }
        if d.start_hour > 23 {
            c.fail(format!("{F}.daypart.start_hour"), "must be 0..=23");
        }
        if d.end_hour > 24 || d.end_hour == d.start_hour {
            c.fail(format!("{F}.daypart.end_hour"), "must be 0..=24 and differ from start_hour");
        }
        out.daypart = Some(Daypart {
            days,
            start_hour: d.start_hour.min(23) as u8,
            end_hour: d.end_hour.min(24) as u8,
        });
    }
    for (name, list, dest) in [
        ("signals", &t.signals, &mut out.signals),
        ("exclude_signals", &t.exclude_signals, &mut out.exclude_signals),
    ] {
        let field = format!("{F}.{name}");
        if c.list_len(&field, list.len(), 20) {
            for (i, s) in list.iter().enumerate() {
                if let Some(p) = slug_problem(&s.signal) {
                    c.fail(format!("{field}[{i}].signal"), p);
                }
                let max_age_ms = match &s.max_age {
                    None => None,
                    Some(a) => c.duration_ms(
                        &format!("{field}[{i}].max_age"),
                        Some(a),
                        1000,
                        100 * 365 * 24 * 3_600_000,
                    ),
                };
                dest.push(SignalRequirement { signal: s.signal.as_str().into(), max_age_ms });
            }
        }
    }
    out
}

fn budget(c: &mut Checker, b: Option<&pb::Budget>) -> Budget {
    let Some(b) = b else { return Budget::default() };
    if b.lifetime_budget_micros < 0 {
        c.fail("campaign.budget.lifetime_budget_micros", "must not be negative");
    }
    if b.daily_budget_micros < 0 {
        c.fail("campaign.budget.daily_budget_micros", "must not be negative");
    }
    let pacing = match pb::PacingMode::try_from(b.pacing) {
        Ok(pb::PacingMode::Unspecified | pb::PacingMode::Asap) => PacingMode::Asap,
        Ok(pb::PacingMode::Even) => PacingMode::Even,
        Ok(pb::PacingMode::FrontLoaded) => PacingMode::FrontLoaded,
        Err(_) => {
            c.fail("campaign.budget.pacing", "must be a known pacing mode");
            PacingMode::Asap
        }
    };
    Budget {
        lifetime_micros: b.lifetime_budget_micros.max(0),
        daily_micros: b.daily_budget_micros.max(0),
        impression_goal: b.impression_goal,
        pacing,
    }
}

/// The wire form of a campaign.
pub fn campaign_to_proto(c: &Campaign, vocabulary: &Vocabulary) -> pb::Campaign {
    let names = |ids: &[GenreId]| ids.iter().map(|&g| vocabulary.name(g).to_string()).collect::<Vec<_>>();
    let t = &c.targeting;
    let location = |l: &GeoLocation| pb::GeoLocation {
        country: l.country.to_string(),
        region: l.region.to_string(),
        metro: l.metro.to_string(),
    };
    let signal = |s: &SignalRequirement| pb::SignalRequirement {
        signal: s.signal.to_string(),
        max_age: s.max_age_ms.map(ms_to_duration),
    };
    pb::Campaign {
        time_zone: c.time_zone.name().unwrap_or_default().to_owned(),
        campaign_id: c.id.to_string(),
        advertiser_id: c.advertiser_id.to_string(),
        advertiser_name: c.advertiser_name.to_string(),
        name: c.name.to_string(),
        tier: tier_to_proto(c.tier) as i32,
        status: match c.status {
            CampaignStatus::Active => pb::CampaignStatus::Active,
            CampaignStatus::Paused => pb::CampaignStatus::Paused,
            CampaignStatus::Archived => pb::CampaignStatus::Archived,
        } as i32,
        bid_cpm_micros: c.bid_cpm_micros,
        iab_categories: c.categories.iter().map(|c| c.to_string()).collect(),
        targeting: Some(pb::Targeting {
            affinity_genres: names(&t.affinity_genres),
            exclude_affinity_genres: names(&t.exclude_affinity_genres),
            track_genres: names(&t.track_genres),
            exclude_track_genres: names(&t.exclude_track_genres),
            milestones: t
                .milestones
                .iter()
                .map(|m| pb::GenreMilestone {
                    genre: vocabulary.name(m.genre).to_string(),
                    min_lifetime_plays: m.min_plays,
                })
                .collect(),
            geo: (!t.geo_include.is_empty() || !t.geo_exclude.is_empty()).then(|| pb::GeoTargeting {
                include: t.geo_include.iter().map(location).collect(),
                exclude: t.geo_exclude.iter().map(location).collect(),
                use_home_location: t.geo_use_home,
            }),
            affinity_from_history_only: t.affinity_from_history_only,
            devices: t.devices.iter().map(|&d| device_to_proto(d) as i32).collect(),
            age_brackets: t.age_brackets.iter().map(|&a| age_to_proto(a) as i32).collect(),
            daypart: t.daypart.map(|d| pb::Daypart {
                days: if d.days == 0x7f {
                    Vec::new()
                } else {
                    (0..7).filter(|i| d.days & (1 << i) != 0).map(|i| i + 1).collect()
                },
                start_hour: u32::from(d.start_hour),
                end_hour: u32::from(d.end_hour),
            }),
            signals: t.signals.iter().map(signal).collect(),
            exclude_signals: t.exclude_signals.iter().map(signal).collect(),
        }),
        frequency_caps: c
            .caps
            .iter()
            .map(|cap| pb::FrequencyCap {
                scope: match cap.scope {
                    CapScope::Creative => pb::CapScope::Creative,
                    CapScope::Campaign => pb::CapScope::Campaign,
                    CapScope::Advertiser => pb::CapScope::Advertiser,
                } as i32,
                max_impressions: cap.max_impressions,
                window: cap.window_ms.map(ms_to_duration),
            })
            .collect(),
        relevance_floor: c.relevance_floor,
        flight_start: c.flight_start.map(millis_to_timestamp),
        flight_end: c.flight_end.map(millis_to_timestamp),
        budget: Some(pb::Budget {
            lifetime_budget_micros: c.budget.lifetime_micros,
            daily_budget_micros: c.budget.daily_micros,
            impression_goal: c.budget.impression_goal,
            pacing: match c.budget.pacing {
                PacingMode::Asap => pb::PacingMode::Asap,
                PacingMode::Even => pb::PacingMode::Even,
                PacingMode::FrontLoaded => pb::PacingMode::FrontLoaded,
            } as i32,
        }),
        creatives: c
            .creatives
            .iter()
            .map(|cr| pb::Creative {
                creative_id: cr.id.to_string(),
                audio_url: cr.audio_url.to_string(),
                duration: Some(ms_to_duration(i64::from(cr.duration_ms))),
                companion: cr.companion.as_ref().map(companion_to_proto),
                audio_mime_type: cr.audio_mime_type().into(),
                media_files: cr.media_files.iter().map(media_file_to_proto).collect(),
            })
            .collect(),
        update_time: Some(millis_to_timestamp(c.updated_at)),
    }
}

fn device_to_proto(d: DeviceType) -> pb::DeviceType {
    match d {
        DeviceType::Mobile => pb::DeviceType::Mobile,
        DeviceType::Desktop => pb::DeviceType::Desktop,
        DeviceType::SmartSpeaker => pb::DeviceType::SmartSpeaker,
        DeviceType::ConnectedTv => pb::DeviceType::ConnectedTv,
        DeviceType::Car => pb::DeviceType::Car,
        DeviceType::Wearable => pb::DeviceType::Wearable,
        DeviceType::GameConsole => pb::DeviceType::GameConsole,
        DeviceType::Web => pb::DeviceType::Web,
    }
}

fn age_to_proto(a: AgeBracket) -> pb::AgeBracket {
    match a {
        AgeBracket::Age13To17 => pb::AgeBracket::AgeBracket1317,
        AgeBracket::Age18To24 => pb::AgeBracket::AgeBracket1824,
        AgeBracket::Age25To34 => pb::AgeBracket::AgeBracket2534,
        AgeBracket::Age35To44 => pb::AgeBracket::AgeBracket3544,
        AgeBracket::Age45To54 => pb::AgeBracket::AgeBracket4554,
        AgeBracket::Age55To64 => pb::AgeBracket::AgeBracket5564,
        AgeBracket::Age65Plus => pb::AgeBracket::AgeBracket65Plus,
    }
}

/// Validates a campaign id argument.
pub fn campaign_id(field: &str, value: &str) -> Result<(), InvalidRequest> {
    match id_problem(value) {
        Some(p) => Err(InvalidRequest::field(field, p)),
        None => Ok(()),
    }
}

/// Validates a ListCampaigns request: (after id, page size, status filter).
pub fn list_campaigns(
    req: &pb::ListCampaignsRequest,
) -> Result<(Option<String>, usize, Option<CampaignStatus>), InvalidRequest> {
    let mut c = Checker::new();
    if req.page_size > MAX_PAGE_SIZE {
        c.fail("page_size", format!("must be at most {MAX_PAGE_SIZE}"));
    }
    let size = if req.page_size == 0 { DEFAULT_PAGE_SIZE } else { req.page_size.min(MAX_PAGE_SIZE) };
    let after = if req.page_token.is_empty() {
        None
    } else {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&req.page_token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| id_problem(s).is_none());
        if decoded.is_none() {
            c.fail("page_token", "is not a token from a previous ListCampaigns response");
        }
        decoded
    };
    let status = match pb::CampaignStatus::try_from(req.status) {
        Ok(pb::CampaignStatus::Unspecified) => None,
        Ok(pb::CampaignStatus::Active) => Some(CampaignStatus::Active),
        Ok(pb::CampaignStatus::Paused) => Some(CampaignStatus::Paused),
        Ok(pb::CampaignStatus::Archived) => Some(CampaignStatus::Archived),
        Err(_) => {
            c.fail("status", "must be a known campaign status");
            None
        }
    };
    c.finish((after, size as usize, status))
}

/// The page token that continues after `last_id`.
pub fn page_token(last_id: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_id)
}

// === Listeners ===

/// The declared attributes of an UpsertListener request, validated.
#[derive(Debug)]
pub struct ListenerUpdate {
    pub listener_id: String,
    pub consent: ConsentState,
    pub age_bracket: Option<AgeBracket>,
    pub home: Option<GeoLocation>,
    pub language: Option<Box<str>>,
    pub signals: Vec<Signal>,
    /// Household members' own age and signals.
    pub members: Vec<MemberUpdate>,
}

/// What an UpsertListener says about one household member.
#[derive(Debug)]
pub struct MemberUpdate {
    pub member_id: Box<str>,
    pub age_bracket: Option<AgeBracket>,
    pub signals: Vec<Signal>,
}

/// Validates an UpsertListener request.
pub fn listener_update(
    req: Option<&pb::Listener>,
    now: UnixMillis,
) -> Result<ListenerUpdate, InvalidRequest> {
    let Some(l) = req else {
        return Err(InvalidRequest::field("listener", "is required"));
    };
    let mut c = Checker::new();
    c.id("listener.listener_id", &l.listener_id);
    let consent = c.consent("listener.personalized_ads", l.personalized_ads);
    let age_bracket = c.age("listener.age_bracket", l.age_bracket);
    let home = l.home.as_ref().map(|h| c.location("listener.home", h));
    let language = (!l.language.is_empty()).then(|| {
        let ok = l.language.len() <= 35 && l.language.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            c.fail("listener.language", "must be a BCP 47 language tag, e.g. \"de-DE\"");
        }
        l.language.as_str().into()
    });
    let signals = c.signals("listener.signals", &l.signals, now);
    let mut members = Vec::new();
    if c.list_len("listener.members", l.members.len(), 10) {
        for (i, m) in l.members.iter().enumerate() {
            let field = format!("listener.members[{i}]");
            if c.id(&format!("{field}.member_id"), &m.member_id) {
                members.push(MemberUpdate {
                    member_id: m.member_id.as_str().into(),
                    age_bracket: c.age(&format!("{field}.age_bracket"), m.age_bracket),
                    signals: c.signals(&format!("{field}.signals"), &m.signals, now),
                });
            }
        }
    }
    c.finish(ListenerUpdate {
        listener_id: l.listener_id.clone(),
        consent,
        age_bracket,
        home,
        language,
        signals,
        members,
    })
}

/// The wire form of a listener.
pub fn listener_to_proto(
    p: &ListenerProfile,
    aliases: Vec<String>,
    vocabulary: &Vocabulary,
    artists: &Vocabulary<ArtistId>,
) -> pb::Listener {
    let d = p.details();
    pb::Listener {
        listener_id: p.id.to_string(),
        aliases,
        personalized_ads: match p.consent {
            ConsentState::Unspecified => pb::ConsentState::Unspecified,
            ConsentState::Granted => pb::ConsentState::Granted,
            ConsentState::Denied => pb::ConsentState::Denied,
        } as i32,
        consent_time: d.consent_at.map(millis_to_timestamp),
        age_bracket: d.age_bracket.map_or(0, |a| age_to_proto(a) as i32),
        home: d.home.as_ref().map(|l| pb::GeoLocation {
            country: l.country.to_string(),
            region: l.region.to_string(),
            metro: l.metro.to_string(),
        }),
        language: d.language.as_deref().unwrap_or_default().to_owned(),
        signals: d.signals.iter().map(signal_to_proto).collect(),
        members: p
            .members()
            .map(|(member_id, taste)| {
                let total = taste.total_weight();
                let mut genres: Vec<_> = taste
                    .genres
                    .iter()
                    .map(|g| pb::GenreAffinity {
                        genre: vocabulary.name(g.genre).to_string(),
                        share: if total > 0.0 { f64::from(g.weight / total) } else { 0.0 },
                        lifetime_plays: u64::from(g.lifetime_plays),
                    })
                    .collect();
                genres.sort_by(|a, b| b.share.total_cmp(&a.share).then_with(|| a.genre.cmp(&b.genre)));
                let top_artists =
                    taste.top_artists().into_iter().map(|a| artists.name(a).to_string()).collect();
                let (age, signals) = p.member_attributes(member_id);
                pb::MemberProfile {
                    member_id: member_id.to_owned(),
                    genres,
                    top_artists,
                    // The main profile's are the account's, above.
                    age_bracket: if member_id.is_empty() {
                        0
                    } else {
                        age.map_or(0, |a| age_to_proto(a) as i32)
                    },
                    signals: if member_id.is_empty() {
                        Vec::new()
                    } else {
                        signals.iter().map(signal_to_proto).collect()
                    },
                }
            })
            .collect(),
    }
}

fn signal_to_proto(s: &Signal) -> pb::Signal {
    pb::Signal {
        signal: s.name.to_string(),
        asserted_at: Some(millis_to_timestamp(s.asserted_at)),
        valid_until: s.valid_until.map(millis_to_timestamp),
    }
}

/// Validates a listener id argument.
pub fn listener_id(field: &str, value: &str) -> Result<(), InvalidRequest> {
    campaign_id(field, value)
}

/// One play of a RecordPlays stream, validated; on failure, the field and reason.
pub fn play(
    p: &pb::PlayEvent,
    vocabulary: &Vocabulary,
    artists: &Vocabulary<ArtistId>,
    now: UnixMillis,
) -> Result<crate::store::listeners::Play, (String, String)> {
    let mut c = Checker::new();
    c.id("listener_id", &p.listener_id);
    if !p.member_id.is_empty() {
        c.id("member_id", &p.member_id);
    }
    if p.track_id.len() > MAX_ID_LEN {
        c.fail("track_id", format!("must be at most {MAX_ID_LEN} bytes"));
    }
    if p.artist.chars().count() > MAX_NAME_LEN {
        c.fail("artist", format!("must be at most {MAX_NAME_LEN} characters"));
    }
    if p.genres.is_empty() {
        c.fail("genres", "must name at least one genre");
    }
    let played_at = match &p.played_at {
        None => {
            c.fail("played_at", "is required");
            None
        }
        Some(t) => c.timestamp("played_at", t).filter(|at| {
            let future = at.0 > now.0 + MAX_CLOCK_SKEW_MS;
            if future {
                c.fail("played_at", "must not be in the future");
            }
            !future
        }),
    };
    if p.seconds_played > 24 * 3600 {
        c.fail("seconds_played", "must be at most 86400");
    }
    if p.play_id.len() > MAX_ID_LEN {
        c.fail("play_id", format!("must be at most {MAX_ID_LEN} bytes"));
    }
    // Check the slugs before interning anything, so a rejected play adds no genre.
    if p.genres.len() <= 10 {
        for (i, g) in p.genres.iter().enumerate() {
            if let Some(problem) = slug_problem(g) {
                c.fail(format!("genres[{i}]"), problem);
            }
        }
    } else {
        c.fail("genres", "must have at most 10 entries");
    }
    if !c.errors.violations.is_empty() {
        let (field, reason) = c.errors.violations.swap_remove(0);
        return Err((field, reason));
    }
    let genres = c.genres("genres", &p.genres, vocabulary);
    if let Some((field, reason)) = c.errors.violations.pop() {
        return Err((field, reason));
    }
    Ok(crate::store::listeners::Play {
        listener: p.listener_id.as_str().into(),
        member: p.member_id.as_str().into(),
        genres,
        // A full artist vocabulary costs the play its artist, not its acceptance.
        artist: Some(p.artist.trim()).filter(|a| !a.is_empty()).and_then(|a| artists.intern(a).ok()),
        // Checked above: played_at is Some when no violation was recorded.
        played_at: played_at.unwrap_or_default(),
        seconds_played: p.seconds_played,
    })
}

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
