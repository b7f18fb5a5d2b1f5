//! The built-in demo catalog: advertisers across music genres, house ads and a few listeners, so
//! that `cargo run --release` answers a realistic Decide at once. The catalog is data
//! (`data/demo_catalog.toml`, compiled in); this module reads it into the stores.

use serde::Deserialize;

use crate::domain::{
    AgeBracket, Budget, Campaign, CampaignStatus, CampaignZone, CapScope, Category, ConsentState, Creative,
    DAY_MS, Daypart, DeviceType, FrequencyCap, GenreId, GeoLocation, HOUR_MS, MediaFile, Milestone,
    PacingMode, Signal, SignalRequirement, Targeting, Tier, UnixMillis,
};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::listeners::Play;

/// The demo catalog, as shipped.
const CATALOG: &str = include_str!("../data/demo_catalog.toml");

/// How long before loading the demo its listeners' plays begin.
const PLAYS_SPAN_MS: i64 = 60 * DAY_MS;
/// How long each demo play lasted.
const PLAY_SECONDS: u32 = 180;

/// What was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoStats {
    pub campaigns: usize,
    pub listeners: usize,
}

/// Why the demo could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("data/demo_catalog.toml: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("data/demo_catalog.toml: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `data/demo_catalog.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoFile {
    creatives: Creatives,
    caps: Caps,
    campaign: Vec<CampaignRow>,
    listener: Vec<ListenerRow>,
}

/// The creatives every demo campaign gets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Creatives {
    cdn: String,
    ogg_bitrate_kbps: u32,
    variants: Vec<Variant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Variant {
    id: String,
    seconds: u32,
}

/// The frequency caps of paid campaigns and of house ads.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Caps {
    paid: Vec<CapRow>,
    house: Vec<CapRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapRow {
    scope: CapScope,
    max_impressions: u32,
    /// None = lifetime.
    window_hours: Option<i64>,
}

/// A campaign; what it does not set stays untargeted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignRow {
    id: String,
    /// (id, display name).
    advertiser: (String, String),
    name: String,
    tier: Tier,
    /// US dollars per mille.
    cpm: f64,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default)]
    affinity: Vec<String>,
    #[serde(default)]
    track: Vec<String>,
    #[serde(default)]
    milestones: Vec<MilestoneRow>,
    #[serde(default)]
    geo: Vec<Place>,
    #[serde(default)]
    geo_use_home: bool,
    #[serde(default)]
    devices: Vec<DeviceType>,
    #[serde(default)]
    age_brackets: Vec<AgeBracket>,
    daypart: Option<DaypartRow>,
    #[serde(default)]
    signals: Vec<SignalRow>,
    flight: Option<Flight>,
    budget: Option<BudgetRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MilestoneRow {
    genre: String,
    min_plays: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Place {
    country: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    metro: String,
}

impl Place {
    fn location(&self) -> GeoLocation {
        GeoLocation {
            country: self.country.as_str().into(),
            region: self.region.as_str().into(),
            metro: self.metro.as_str().into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DaypartRow {
    days: Vec<Weekday>,
    start_hour: u8,
    end_hour: u8,
}

/// Monday first, as `Daypart::days` counts.
#[derive(Clone, Copy, Deserialize)]
enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalRow {
    signal: String,
    /// None = a signal of any age.
    max_age_days: Option<i64>,
}

/// A flight around the moment the demo is loaded.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flight {
    started_days_ago: i64,
    ends_in_days: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetRow {
    lifetime_usd: f64,
    pacing: PacingMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerRow {
    id: String,
    consent: ConsentState,
    age: Option<AgeBracket>,
    home: Option<Place>,
    language: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    signals: Vec<AssertedSignal>,
    #[serde(default)]
    plays: Vec<Plays>,
    /// Household members' own attributes (a member exists once it has plays).
    #[serde(default)]
    members: Vec<MemberRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssertedSignal {
    name: String,
    asserted_days_ago: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Plays {
    genre: String,
    count: u32,
    /// "" = the account holder.
    #[serde(default)]
    member: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberRow {
    id: String,
    age: AgeBracket,
}

/// Loads the demo campaigns and listeners into `state`; times in the catalog are relative to `now`.
pub fn load(state: &AppState, now: UnixMillis) -> Result<DemoStats, DemoError> {
    let file: DemoFile = toml::from_str(CATALOG)?;
    check(&file)?;
    let genres = |slugs: &[String]| -> Result<Vec<GenreId>, StoreError> {
        slugs.iter().map(|s| state.vocabulary.intern(s)).collect()
    };
    let mut campaigns = Vec::with_capacity(file.campaign.len());
    for row in &file.campaign {
        let caps = if row.tier == Tier::House { &file.caps.house } else { &file.caps.paid };
        let milestones = row
            .milestones
            .iter()
            .map(|m| Ok(Milestone { genre: state.vocabulary.intern(&m.genre)?, min_plays: m.min_plays }))
            .collect::<Result<_, StoreError>>()?;
        campaigns.push(Campaign {
            id: row.id.as_str().into(),
            advertiser_id: row.advertiser.0.as_str().into(),
            advertiser_name: row.advertiser.1.as_str().into(),
            name: row.name.as_str().into(),
            tier: row.tier,
            status: CampaignStatus::Active,
            bid_cpm_micros: usd_to_micros(row.cpm),
            categories: row.categories.iter().map(|c| Category::from(c.as_str())).collect::<Vec<_>>().into(),
            targeting: Targeting {
                affinity_genres: genres(&row.affinity)?,
                track_genres: genres(&row.track)?,
                milestones,
                geo_include: row.geo.iter().map(Place::location).collect(),
                geo_use_home: row.geo_use_home,
                devices: row.devices.clone(),
                age_brackets: row.age_brackets.clone(),
                daypart: row.daypart.as_ref().map(|d| Daypart {
                    days: d.days.iter().fold(0, |days, &day| days | (1 << day as u8)),
                    start_hour: d.start_hour,
                    end_hour: d.end_hour,
                }),
                signals: row
                    .signals
                    .iter()
                    .map(|s| SignalRequirement {
                        signal: s.signal.as_str().into(),
                        max_age_ms: s.max_age_days.map(|d| d * DAY_MS),
                    })
                    .collect(),
                ..Targeting::default()
            },
            caps: caps
                .iter()
                .map(|c| FrequencyCap {
                    scope: c.scope,
                    max_impressions: c.max_impressions,
                    window_ms: c.window_hours.map(|h| h * HOUR_MS),
                })
                .collect(),
            relevance_floor: None,
            flight_start: row.flight.as_ref().map(|f| UnixMillis(now.0 - f.started_days_ago * DAY_MS)),
            flight_end: row.flight.as_ref().map(|f| UnixMillis(now.0 + f.ends_in_days * DAY_MS)),
            budget: row.budget.as_ref().map_or_else(Budget::default, |b| Budget {
                lifetime_micros: usd_to_micros(b.lifetime_usd),
                pacing: b.pacing,
                ..Budget::default()
            }),
            time_zone: CampaignZone::default(),
            creatives: file
                .creatives
                .variants
                .iter()
                .map(|v| creative(&file.creatives, &row.id, v))
                .collect(),
            updated_at: now,
        });
    }
    let n_campaigns = campaigns.len();
    state.catalog.upsert_all(campaigns, now)?;
    let listeners = load_listeners(state, &file.listener, now)?;
    Ok(DemoStats { campaigns: n_campaigns, listeners })
}

/// What the file's types cannot say, checked before anything is written.
fn check(file: &DemoFile) -> Result<(), DemoError> {
    let invalid = |what: String| Err(DemoError::Invalid(what));
    // The edges' own checks: what the wire would refuse, the demo must not bring in.
    let place_problem =
        |place: &Place| crate::validation::location_problems(&place.location()).first().copied();
    for row in &file.campaign {
        if let Some(c) = row.categories.iter().find(|c| crate::validation::iab_category_name(c).is_none()) {
            return invalid(format!("campaign {}: category {c} is not in the IAB taxonomy 3.1", row.id));
        }
        if let Some((part, problem)) = row.geo.iter().find_map(place_problem) {
            return invalid(format!("campaign {}: geo {part} {problem}", row.id));
        }
    }
    for row in &file.listener {
        if let Some((part, problem)) = row.home.as_ref().and_then(place_problem) {
            return invalid(format!("listener {}: home {part} {problem}", row.id));
        }
        // A member exists once it has played something: one named without plays would get no
        // attributes, silently.
        if let Some(m) = row.members.iter().find(|m| !row.plays.iter().any(|p| p.member == m.id)) {
            return invalid(format!("listener {}: member {} has no plays", row.id, m.id));
        }
    }
    Ok(())
}

fn usd_to_micros(usd: f64) -> i64 {
    (usd * 1_000_000.0).round() as i64
}

fn creative(creatives: &Creatives, campaign: &str, variant: &Variant) -> Creative {
    let base = format!("{}/{campaign}/{}", creatives.cdn, variant.id);
    Creative {
        id: variant.id.as_str().into(),
        audio_url: format!("{base}.mp3").into(),
        audio_mime: Some("audio/mpeg".into()),
        duration_ms: variant.seconds * 1000,
        companion: None,
        media_files: vec![MediaFile {
            url: format!("{base}.ogg").into(),
            mime_type: "audio/ogg".into(),
            bitrate_kbps: creatives.ogg_bitrate_kbps,
        }],
    }
}

fn load_listeners(state: &AppState, rows: &[ListenerRow], now: UnixMillis) -> Result<usize, DemoError> {
    for row in rows {
        state.listeners.update(&row.id, |p| {
            p.consent = row.consent;
            let d = p.details_mut();
            d.consent_at = Some(now);
            d.age_bracket = row.age;
            d.home = row.home.as_ref().map(Place::location);
            d.language = row.language.as_deref().map(Into::into);
            d.signals = row
                .signals
                .iter()
                .map(|s| Signal {
                    name: s.name.as_str().into(),
                    asserted_at: UnixMillis(now.0 - s.asserted_days_ago * DAY_MS),
                    valid_until: None,
                })
                .collect();
        })?;
        for alias in &row.aliases {
            state.listeners.link(&row.id, alias)?;
        }
    }
    let mut plays = Vec::new();
    for row in rows {
        for p in &row.plays {
            let genre = state.vocabulary.intern(&p.genre)?;
            for i in 0..p.count {
                // Spread evenly over the span, newest last.
                let at = now.0 - PLAYS_SPAN_MS + i64::from(i) * (PLAYS_SPAN_MS / i64::from(p.count));
                plays.push(Play {
                    listener: row.id.as_str().into(),
                    member: p.member.as_str().into(),
                    genres: vec![genre],
                    artist: None,
                    played_at: UnixMillis(at),
                    seconds_played: PLAY_SECONDS,
                });
            }
        }
    }
    plays.sort_by_key(|p| p.played_at);
    state.listeners.record_plays(&plays, state.taste_half_life_ms)?;
    // Members exist once they have played something: their own attributes come last.
    for row in rows.iter().filter(|r| !r.members.is_empty()) {
        state.listeners.update(&row.id, |p| {
            for m in &row.members {
                if let Some(member) = p.member_record_mut(&m.id) {
                    member.age_bracket = Some(m.age);
                }
            }
        })?;
    }
    Ok(state.listeners.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn loaded() -> (AppState, DemoStats) {
        let state = AppState::new(&Config { demo: false, data_dir: None, ..Config::default() });
        let stats = load(&state, UnixMillis(1_780_000_000_000)).unwrap();
        (state, stats)
    }

    #[test]
    fn the_shipped_catalog_loads_every_campaign_and_listener() {
        let (state, stats) = loaded();
        assert_eq!(stats, DemoStats { campaigns: 35, listeners: 5 });
        let hifi = state.catalog.get("hifi-headphones").unwrap();
        assert_eq!(hifi.budget.lifetime_micros, 20_000_000_000);
        assert_eq!(hifi.budget.pacing, PacingMode::Even);
        assert_eq!(hifi.flight_end.unwrap().0 - hifi.flight_start.unwrap().0, 28 * DAY_MS);
        let club = state.catalog.get("nightpulse-club").unwrap();
        assert_eq!(club.targeting.daypart, Some(Daypart { days: 0b011_1000, start_hour: 18, end_hour: 2 }));
        let house = state.catalog.get("house-premium").unwrap();
        assert_eq!(house.caps.len(), 1, "house ads have caps of their own");
        assert_eq!(
            house.creatives[1].media_files[0].url.as_ref(),
            "https://cdn.interlude.example/ads/house-premium/15s.ogg"
        );
    }

    #[test]
    fn a_member_without_plays_is_refused_before_anything_is_written() {
        let mut file: DemoFile = toml::from_str(CATALOG).unwrap();
        assert!(check(&file).is_ok());
        file.listener[0].members.push(MemberRow { id: "guest".into(), age: AgeBracket::Age25To34 });
        let error = check(&file).unwrap_err().to_string();
        assert!(error.contains("member guest has no plays"), "{error}");
    }

    #[test]
    fn what_the_wire_would_refuse_the_demo_refuses_too() {
        let mut file: DemoFile = toml::from_str(CATALOG).unwrap();
        file.campaign[0].categories.push("999999".into());
        let error = check(&file).unwrap_err().to_string();
        assert!(error.contains("category 999999 is not in the IAB taxonomy"), "{error}");
        let mut file: DemoFile = toml::from_str(CATALOG).unwrap();
        file.listener[0].home =
            Some(Place { country: "de".into(), region: String::new(), metro: String::new() });
        let error = check(&file).unwrap_err().to_string();
        assert!(error.contains("home country must be an ISO 3166-1"), "{error}");
    }

    #[test]
    fn every_demo_category_is_in_the_iab_taxonomy() {
        let file: DemoFile = toml::from_str(CATALOG).unwrap();
        for row in &file.campaign {
            for c in &row.categories {
                assert!(crate::validation::iab_category_name(c).is_some(), "{}: {c}", row.id);
            }
        }
    }

    #[test]
    fn the_household_keeps_its_members_apart() {
        let (state, _) = loaded();
        let family = state.listeners.get("family-account").unwrap().unwrap();
        let (age, _) = family.member_attributes("kid");
        assert_eq!(age, Some(AgeBracket::Age13To17));
        let opera = state.listeners.get("email-sha256:5f2b9c0e").unwrap().unwrap();
        assert_eq!(opera.consent, ConsentState::Granted, "the alias resolves to the opera listener");
    }
}
