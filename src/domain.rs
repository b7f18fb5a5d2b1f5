//! Plain domain types shared by the engine, the stores and the transport edge; no wire types here.
//!
//! Everything in this module is validated data: values are built by `grpc::convert` (or the demo
//! catalog) and are trusted afterwards.

use std::fmt;
use std::sync::Arc;

pub mod history;
pub mod life_stage;
pub mod taste;

pub use history::{DeliveryHistory, HistoryChange, ImpressionRecord};
pub use taste::{ArtistStat, GenreStat, Taste};

/// Milliseconds since the Unix epoch (UTC). The engine's only notion of time; callers pass it in.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct UnixMillis(pub i64);

/// The unique id of one decided ad (one slot of one break), bound into its impression token:
/// each kind of event counts at most once per ad. 128 random bits, so that replicas drawing
/// them independently never collide in practice.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdId(pub u128);

impl AdId {
    /// A fresh id from `rng`.
    pub fn random(rng: &mut impl rand::Rng) -> Self {
        Self(rng.random())
    }
}

impl std::fmt::Display for AdId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::fmt::Debug for AdId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdId({self})")
    }
}

impl std::str::FromStr for AdId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u128::from_str_radix(s, 16).map(Self)
    }
}

/// One minute in milliseconds.
pub const MINUTE_MS: i64 = 60_000;
/// One hour in milliseconds.
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
/// One day in milliseconds.
pub const DAY_MS: i64 = 24 * HOUR_MS;

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Arc<str>);

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                // By content, as equality is (pointer equality is only a shortcut).
                self.0.hash(state);
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                // Ids in histories share the campaign's Arc: most equal pairs are one pointer.
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }
    };
}

/// Like `string_id!`, plus a 64-bit fingerprint of the text, so that two different ids are told
/// apart without comparing their bytes: delivery histories compare these ids against every
/// candidate of a decision, and most pairs differ (measured: 8 % of a server's CPU in `memcmp`).
/// `Hash` stays the text's, so maps keyed by the id can be probed with a `&str`.
macro_rules! fingerprinted_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name {
            text: Arc<str>,
            fingerprint: u64,
        }

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.text.hash(state);
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.text, &other.text)
                    || (self.fingerprint == other.fingerprint && self.text == other.text)
            }
        }

        impl Eq for $name {}

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.text.cmp(&other.text)
            }
        }

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.text
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.text, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.text
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self { text: Arc::from(s), fingerprint: fingerprint(s) }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.text)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(deserializer)?;
                Ok(Self::from(&*text))
            }
        }
    };
}

/// FNV-1a over the bytes: cheap, stable, and well spread for short ids.
fn fingerprint(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fingerprinted_id!(
    /// Identifies a campaign; unique across the catalog.
    CampaignId
);
fingerprinted_id!(
    /// Identifies a creative within its campaign.
    CreativeId
);
fingerprinted_id!(
    /// Identifies an advertiser; separation and "not for me" act on it.
    AdvertiserId
);
string_id!(
    /// Canonical id of a listener account (aliases resolve to it).
    ListenerId
);
fingerprinted_id!(
    /// An IAB Content Taxonomy 3.1 unique id, the category of an ad.
    Category
);
string_id!(
    /// An interest or life-stage signal slug such as `parent-young-children`.
    SignalName
);

/// An interned genre slug. Interning keeps profiles small (the slug is stored once per server)
/// and makes genre matching an integer compare; `store::Vocabulary` owns the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct GenreId(pub u32);

/// An interned artist name (`store::Vocabulary<ArtistId>` owns the mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ArtistId(pub u32);

/// The kind of device the listener is playing on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DeviceType {
    Mobile,
    Desktop,
    SmartSpeaker,
    ConnectedTv,
    Car,
    Wearable,
    GameConsole,
    Web,
}

/// Audience age brackets; exact ages are never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AgeBracket {
    Age13To17,
    Age18To24,
    Age25To34,
    Age35To44,
    Age45To54,
    Age55To64,
    Age65Plus,
}

impl AgeBracket {
    /// Whether everyone in the bracket is of legal age for alcohol and gambling everywhere we
    /// serve (21 in the US): 18–24 includes 18-year-olds, so it does not qualify.
    pub fn is_over_21(self) -> bool {
        !matches!(self, AgeBracket::Age13To17 | AgeBracket::Age18To24)
    }
}

/// IAB Content Taxonomy 3.1 categories whose ads reach only listeners known to be over 21:
/// Casinos & Gambling (181), Alcoholic Beverages (211), Poker and Professional Gambling (524),
/// Illegal Drugs, Tobacco, eCigarettes, Vaping, Alcohol (pg0WhF).
pub const AGE_RESTRICTED_CATEGORIES: &[&str] = &["181", "211", "524", "pg0WhF"];

/// Priority tiers; the derived order is the serving priority (sponsorship first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Tier {
    Sponsorship,
    Standard,
    Remnant,
    House,
}

impl Tier {
    /// House ads are our own promotions: never paid, never subject to the relevance floor.
    pub fn is_paid(self) -> bool {
        self != Tier::House
    }
}

/// Consent for ads personalised with profile data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ConsentState {
    #[default]
    Unspecified,
    Granted,
    Denied,
}

impl ConsentState {
    /// The choice of one person known under two profiles (a merge): a denial on either side
    /// wins, else a grant on either side, else nothing was said.
    pub fn combined(self, other: ConsentState) -> ConsentState {
        use ConsentState::{Denied, Granted, Unspecified};
        match (self, other) {
            (Denied, _) | (_, Denied) => Denied,
            (Granted, _) | (_, Granted) => Granted,
            (Unspecified, Unspecified) => Unspecified,
        }
    }
}

/// Lifecycle of a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CampaignStatus {
    Active,
    Paused,
    Archived,
}

/// What a frequency cap counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CapScope {
    Creative,
    Campaign,
    Advertiser,
}

/// How a budget is spread over the flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PacingMode {
    #[default]
    Asap,
    Even,
    FrontLoaded,
}

/// What happened to a decided ad, as reported by the player (RecordEvents, or a VAST tracker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Impression,
    Click,
    Complete,
    Skip,
    NotForMe,
    /// Playback began (VAST `start`).
    Start,
    FirstQuartile,
    Midpoint,
    ThirdQuartile,
    Mute,
    Unmute,
    Pause,
    Resume,
    /// The player fetched the ad in a pod but will not play it (VAST `notUsed`): its hold on
    /// caps, ad load and budget is released.
    NotUsed,
    /// The player could not play the ad (VAST `Error`); the code travels beside the event.
    Error,
}

impl EventKind {
    /// Every kind, in `code` order.
    pub const ALL: [EventKind; 15] = [
        EventKind::Impression,
        EventKind::Click,
        EventKind::Complete,
        EventKind::Skip,
        EventKind::NotForMe,
        EventKind::Start,
        EventKind::FirstQuartile,
        EventKind::Midpoint,
        EventKind::ThirdQuartile,
        EventKind::Mute,
        EventKind::Unmute,
        EventKind::Pause,
        EventKind::Resume,
        EventKind::NotUsed,
        EventKind::Error,
    ];

    /// The kind's stable number in stored data (never reuse one).
    pub fn code(self) -> u8 {
        match self {
            EventKind::Impression => 1,
            EventKind::Click => 2,
            EventKind::Complete => 3,
            EventKind::Skip => 4,
            EventKind::NotForMe => 5,
            EventKind::Start => 6,
            EventKind::FirstQuartile => 7,
            EventKind::Midpoint => 8,
            EventKind::ThirdQuartile => 9,
            EventKind::Mute => 10,
            EventKind::Unmute => 11,
            EventKind::Pause => 12,
            EventKind::Resume => 13,
            EventKind::NotUsed => 14,
            EventKind::Error => 15,
        }
    }

    /// The kind stored as `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// A place; empty optional parts match anything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct GeoLocation {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: Box<str>,
    /// ISO 3166-2 subdivision, upper case; empty = unknown / any.
    pub region: Box<str>,
    /// Metro or city code, upper case; empty = unknown / any.
    pub metro: Box<str>,
}

impl GeoLocation {
    /// Whether `self`, used as a targeting rule, covers the place `at`.
    pub fn covers(&self, at: &GeoLocation) -> bool {
        self.country == at.country
            && (self.region.is_empty() || self.region == at.region)
            && (self.metro.is_empty() || self.metro == at.metro)
    }
}

/// A campaign's IAB categories, with what every decision asks of them per candidate answered
/// once: whether any is age-restricted (`AGE_RESTRICTED_CATEGORIES`). The only way in is from
/// the list, so the answer cannot be missing or stale, whichever way the campaign arrived (the
/// wire, the store, the demo). Stored as the plain list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Arc<[Category]>", into = "Arc<[Category]>")]
pub struct Categories {
    list: Arc<[Category]>,
    age_restricted: bool,
}

impl Categories {
    /// Whether ads of any of these categories reach only listeners known to be over 21.
    pub fn age_restricted(&self) -> bool {
        self.age_restricted
    }

    /// The list, shared (impression records keep it for separation and suppression).
    pub fn shared(&self) -> &Arc<[Category]> {
        &self.list
    }
}

impl From<Arc<[Category]>> for Categories {
    fn from(list: Arc<[Category]>) -> Self {
        let age_restricted = list.iter().any(|c| AGE_RESTRICTED_CATEGORIES.contains(&c.as_str()));
        Self { list, age_restricted }
    }
}

impl From<Vec<Category>> for Categories {
    fn from(list: Vec<Category>) -> Self {
        Self::from(Arc::<[Category]>::from(list))
    }
}

impl From<Categories> for Arc<[Category]> {
    fn from(c: Categories) -> Self {
        c.list
    }
}

impl std::ops::Deref for Categories {
    type Target = [Category];

    fn deref(&self) -> &[Category] {
        &self.list
    }
}

/// A campaign: who pays, what plays, whom it is for, and how often.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Campaign {
    pub id: CampaignId,
    pub advertiser_id: AdvertiserId,
    pub advertiser_name: Arc<str>,
    pub name: Box<str>,
    pub tier: Tier,
    pub status: CampaignStatus,
    /// Bid per thousand impressions in micros; 0 for house ads.
    pub bid_cpm_micros: i64,
    pub categories: Categories,
    pub targeting: Targeting,
    pub caps: Vec<FrequencyCap>,
    /// Overrides the server-wide relevance floor.
    pub relevance_floor: Option<f64>,
    pub flight_start: Option<UnixMillis>,
    pub flight_end: Option<UnixMillis>,
    pub budget: Budget,
    /// Where the campaign's days run: a daily budget starts over at local midnight.
    #[serde(default)]
    pub time_zone: CampaignZone,
    /// Never empty (validated on the way in).
    pub creatives: Vec<Creative>,
    pub updated_at: UnixMillis,
}

/// A campaign's time zone (IANA name, e.g. "Europe/Berlin"); the default is UTC. Days are
/// reckoned by the UTC offset in force at the instant asked about, 24 h long: on the two days
/// a year a zone changes its clocks, the day's last or first hour is counted with its
/// neighbour.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CampaignZone(Option<jiff::tz::TimeZone>);

impl CampaignZone {
    /// The zone of an IANA name (from the bundled time zone database).
    pub fn named(name: &str) -> Result<Self, String> {
        jiff::tz::TimeZone::get(name).map(|tz| Self(Some(tz))).map_err(|e| e.to_string())
    }

    /// The IANA name, or None for UTC.
    pub fn name(&self) -> Option<&str> {
        self.0.as_ref().and_then(|tz| tz.iana_name())
    }

    /// The local day of `at` (days since the epoch) and how far into it `at` is, in ms.
    pub fn day_of(&self, at: UnixMillis) -> (i64, i64) {
        let offset_ms = match (&self.0, jiff::Timestamp::from_millisecond(at.0)) {
            (Some(tz), Ok(t)) => i64::from(tz.to_offset(t).seconds()) * 1000,
            _ => 0,
        };
        let local = at.0 + offset_ms;
        (local.div_euclid(DAY_MS), local.rem_euclid(DAY_MS))
    }

    /// When the local day of `at` ends (unix ms).
    pub fn day_end(&self, at: UnixMillis) -> UnixMillis {
        UnixMillis(at.0 - self.day_of(at).1 + DAY_MS)
    }
}

impl serde::Serialize for CampaignZone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.name().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for CampaignZone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Self::default()),
            Some(name) => Self::named(&name).map_err(serde::de::Error::custom),
        }
    }
}

impl Campaign {
    /// The price of one impression: a thousandth of the CPM bid.
    pub fn price_micros(&self) -> i64 {
        self.bid_cpm_micros / 1000
    }

    /// Whether the flight window contains `now`.
    pub fn in_flight(&self, now: UnixMillis) -> bool {
        self.flight_start.is_none_or(|s| now >= s) && self.flight_end.is_none_or(|e| now < e)
    }
}

/// One audio ad.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Creative {
    pub id: CreativeId,
    pub audio_url: Arc<str>,
    /// The MIME type of `audio_url`; None in campaigns stored before it was kept (see
    /// `audio_mime_type`).
    #[serde(default, rename = "audio_mime_type")]
    pub audio_mime: Option<Arc<str>>,
    pub duration_ms: u32,
    pub companion: Option<Companion>,
    /// The same audio in other encodings (a player picks the one it can play).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media_files: Vec<MediaFile>,
}

impl Creative {
    /// The MIME type of `audio_url`: as given, else as its extension names it.
    pub fn audio_mime_type(&self) -> &str {
        self.audio_mime.as_deref().or_else(|| audio_mime_of_url(&self.audio_url)).unwrap_or("audio/mpeg")
    }
}

/// The audio MIME type an URL's file extension names, if it names one.
pub fn audio_mime_of_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let extension = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
    Some(match extension.as_str() {
        "mp3" => "audio/mpeg",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "m4a" | "mp4" => "audio/mp4",
        "aac" => "audio/aac",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "webm" => "audio/webm",
        _ => return None,
    })
}

/// One encoding of a creative's audio.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MediaFile {
    pub url: Arc<str>,
    /// An `audio/*` MIME type.
    pub mime_type: Arc<str>,
    /// 0 = not stated.
    pub bitrate_kbps: u32,
}

/// A banner shown while the audio ad plays.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Companion {
    pub image_url: Arc<str>,
    pub click_url: Arc<str>,
    pub width: u32,
    pub height: u32,
}

/// Whom a campaign is for. Every set rule must hold; within a list any entry may match.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Targeting {
    pub affinity_genres: Vec<GenreId>,
    pub exclude_affinity_genres: Vec<GenreId>,
    pub track_genres: Vec<GenreId>,
    pub exclude_track_genres: Vec<GenreId>,
    pub milestones: Vec<Milestone>,
    pub geo_include: Vec<GeoLocation>,
    pub geo_exclude: Vec<GeoLocation>,
    /// Match the listener's declared home instead of the request's location.
    pub geo_use_home: bool,
    pub devices: Vec<DeviceType>,
    pub age_brackets: Vec<AgeBracket>,
    pub daypart: Option<Daypart>,
    pub signals: Vec<SignalRequirement>,
    pub exclude_signals: Vec<SignalRequirement>,
    /// Affinity only from real listening history (with consent); false = the context may stand
    /// in for a listener with thin or no history. Stored campaigns without it read as false.
    #[serde(default)]
    pub affinity_from_history_only: bool,
}

impl Targeting {
    /// Whether the listener's consent is needed to serve: some rule reads profile data that the
    /// context cannot stand in for. Affinity rules alone do not need it unless the advertiser
    /// asked for real fans only (`affinity_from_history_only`): without consent they are
    /// judged on the track playing and the session's recent tracks, which are no personal data.
    pub fn needs_consent(&self) -> bool {
        let affinity = !self.affinity_genres.is_empty() || !self.exclude_affinity_genres.is_empty();
        (affinity && self.affinity_from_history_only)
            || !self.milestones.is_empty()
            || self.geo_use_home
            || !self.age_brackets.is_empty()
            || !self.signals.is_empty()
            || !self.exclude_signals.is_empty()
    }

    /// Whether any genre rule (affinity or contextual) is set.
    pub fn targets_genres(&self) -> bool {
        !self.affinity_genres.is_empty() || !self.track_genres.is_empty()
    }
}

/// "At least `min_plays` lifetime plays of `genre`".
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Milestone {
    pub genre: GenreId,
    pub min_plays: u64,
}

/// Days of the week and local hours a campaign may serve in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Daypart {
    /// Bit `d` set = weekday `d` allowed (0 = Monday). 0x7f = every day.
    pub days: u8,
    /// Local hour the window opens, 0..=23.
    pub start_hour: u8,
    /// Local hour the window closes (exclusive), 1..=24; wraps past midnight when <= start.
    pub end_hour: u8,
}

impl Daypart {
    /// Whether local time `local_ms` (ms since the epoch, already shifted by the UTC offset)
    /// falls in the window. The day that counts is the day the window opened on.
    pub fn contains(&self, local_ms: i64) -> bool {
        let day_index = local_ms.div_euclid(DAY_MS);
        let hour = (local_ms.rem_euclid(DAY_MS) / HOUR_MS) as u8;
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = |day: i64| ((day + 3).rem_euclid(7)) as u8;
        let allowed = |day: i64| self.days & (1 << weekday(day)) != 0;
        if self.start_hour < self.end_hour {
            allowed(day_index) && hour >= self.start_hour && hour < self.end_hour
        } else if hour >= self.start_hour {
            allowed(day_index)
        } else {
            hour < self.end_hour && allowed(day_index - 1)
        }
    }
}

/// A signal the listener must have (or, as an exclusion, must not have) asserted recently enough.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignalRequirement {
    pub signal: SignalName,
    /// None = any age.
    pub max_age_ms: Option<i64>,
}

/// At most `max_impressions` per listener per `window_ms` (None = lifetime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrequencyCap {
    pub scope: CapScope,
    pub max_impressions: u32,
    pub window_ms: Option<i64>,
}

/// Money limits of a campaign; 0 = no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Budget {
    pub lifetime_micros: i64,
    pub daily_micros: i64,
    pub impression_goal: u64,
    pub pacing: PacingMode,
}

impl Budget {
    /// Whether any limit is set (otherwise spend is never consulted).
    pub fn is_limited(&self) -> bool {
        self.lifetime_micros > 0 || self.daily_micros > 0 || self.impression_goal > 0
    }
}

/// A listener: consent, the main profile's taste, and — boxed, as most listeners have none of
/// them — declared attributes, signals and further household members.
///
/// The layout is for memory: a listener with one member and ten genres takes under 300 bytes
/// resident (docs/PERFORMANCE.md). The stored document keeps the flat layout of `ProfileDoc`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(from = "ProfileDoc", into = "ProfileDoc")]
pub struct ListenerProfile {
    pub id: ListenerId,
    pub consent: ConsentState,
    /// The main member's (`""`) taste, inline: most accounts have one member.
    main: Taste,
    details: Option<Box<ProfileDetails>>,
}

/// The rarely set part of a profile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileDetails {
    pub consent_at: Option<UnixMillis>,
    pub age_bracket: Option<AgeBracket>,
    pub home: Option<GeoLocation>,
    pub language: Option<Box<str>>,
    pub signals: Vec<Signal>,
    /// Household members other than the main one, sorted by member id.
    pub members: Vec<MemberTaste>,
}

static NO_DETAILS: ProfileDetails = ProfileDetails {
    consent_at: None,
    age_bracket: None,
    home: None,
    language: None,
    signals: Vec::new(),
    members: Vec::new(),
};

impl ListenerProfile {
    /// A listener we know nothing about yet.
    pub fn new(id: ListenerId) -> Self {
        Self { id, consent: ConsentState::Unspecified, main: Taste::default(), details: None }
    }

    /// Declared attributes, signals and further members (all empty when never set).
    pub fn details(&self) -> &ProfileDetails {
        self.details.as_deref().unwrap_or(&NO_DETAILS)
    }

    /// Declared attributes, signals and further members, for changing them.
    pub fn details_mut(&mut self) -> &mut ProfileDetails {
        self.details.get_or_insert_with(Box::default)
    }

    /// The taste of one household member, if it has any plays.
    pub fn member(&self, member_id: &str) -> Option<&Taste> {
        if member_id.is_empty() {
            return (!self.main.genres.is_empty()).then_some(&self.main);
        }
        let members = &self.details().members;
        members.binary_search_by(|m| (*m.member_id).cmp(member_id)).ok().map(|i| &members[i].taste)
    }

    /// Who `member_id` is, as far as age and signals go: the account's declarations for the
    /// main profile (""), a household member's own for anyone else — unset means unknown,
    /// never the account's (a child on a parent's account is not 45 to 54).
    pub fn member_attributes(&self, member_id: &str) -> (Option<AgeBracket>, &[Signal]) {
        let details = self.details();
        if member_id.is_empty() {
            return (details.age_bracket, &details.signals);
        }
        match details.members.binary_search_by(|m| (*m.member_id).cmp(member_id)) {
            Ok(i) => (details.members[i].age_bracket, &details.members[i].signals),
            Err(_) => (None, &[]),
        }
    }

    /// The member record of `member_id` (not the main profile), created on first use.
    pub fn member_record_mut(&mut self, member_id: &str) -> Option<&mut MemberTaste> {
        if member_id.is_empty() {
            return None;
        }
        self.member_mut(member_id);
        let members = &mut self.details_mut().members;
        let i = members.binary_search_by(|m| (*m.member_id).cmp(member_id)).ok()?;
        Some(&mut members[i])
    }

    /// The taste of a member, created on first use.
    pub fn member_mut(&mut self, member_id: &str) -> &mut Taste {
        if member_id.is_empty() {
            return &mut self.main;
        }
        let members = &mut self.details_mut().members;
        let i = match members.binary_search_by(|m| (*m.member_id).cmp(member_id)) {
            Ok(i) => i,
            Err(i) => {
                members.insert(
                    i,
                    MemberTaste {
                        member_id: member_id.into(),
                        taste: Taste::default(),
                        age_bracket: None,
                        signals: Vec::new(),
                    },
                );
                i
            }
        };
        &mut members[i].taste
    }

    /// Every member with plays and its taste, sorted by member id (the main member first).
    pub fn members(&self) -> impl Iterator<Item = (&str, &Taste)> {
        let main = (!self.main.genres.is_empty()).then_some(("", &self.main));
        main.into_iter().chain(self.details().members.iter().map(|m| (&*m.member_id, &m.taste)))
    }

    /// Drops spare capacity, and the details box when it holds nothing (profiles are copied on
    /// write and kept for long).
    pub fn shrink_to_fit(&mut self) {
        self.main.genres.shrink_to_fit();
        if let Some(details) = &mut self.details {
            if **details == NO_DETAILS {
                self.details = None;
                return;
            }
            details.signals.shrink_to_fit();
            details.members.shrink_to_fit();
            for m in &mut details.members {
                m.taste.genres.shrink_to_fit();
            }
        }
    }

    /// The listener's signal of this name, if asserted.
    pub fn signal(&self, name: &SignalName) -> Option<&Signal> {
        self.details().signals.iter().find(|s| s.name == *name)
    }

    /// A rough count of the heap bytes the profile holds (the profile cache's weigher).
    pub fn approx_bytes(&self) -> usize {
        let taste = |t: &Taste| t.genres.capacity() * std::mem::size_of::<GenreStat>();
        let mut bytes = std::mem::size_of::<Self>() + self.id.as_str().len() + 32 + taste(&self.main);
        if let Some(d) = &self.details {
            bytes += std::mem::size_of::<ProfileDetails>()
                + d.signals
                    .iter()
                    .map(|s| std::mem::size_of::<Signal>() + s.name.as_str().len() + 16)
                    .sum::<usize>()
                + d.members
                    .iter()
                    .map(|m| std::mem::size_of::<MemberTaste>() + m.member_id.len() + taste(&m.taste))
                    .sum::<usize>();
        }
        bytes
    }
}

/// The stored form of a profile: flat, with every member in one list (the in-memory layout
/// can change without touching what is on disk).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct ProfileDoc {
    id: ListenerId,
    consent: ConsentState,
    consent_at: Option<UnixMillis>,
    age_bracket: Option<AgeBracket>,
    home: Option<GeoLocation>,
    language: Option<Box<str>>,
    signals: Vec<Signal>,
    members: Vec<MemberTaste>,
}

impl From<ListenerProfile> for ProfileDoc {
    fn from(p: ListenerProfile) -> Self {
        let d = p.details.map(|d| *d).unwrap_or_default();
        let mut members = Vec::with_capacity(d.members.len() + 1);
        if !p.main.genres.is_empty() {
            members.push(MemberTaste {
                member_id: "".into(),
                taste: p.main,
                age_bracket: None,
                signals: Vec::new(),
            });
        }
        members.extend(d.members);
        Self {
            id: p.id,
            consent: p.consent,
            consent_at: d.consent_at,
            age_bracket: d.age_bracket,
            home: d.home,
            language: d.language,
            signals: d.signals,
            members,
        }
    }
}

impl From<ProfileDoc> for ListenerProfile {
    fn from(doc: ProfileDoc) -> Self {
        let mut p = ListenerProfile::new(doc.id);
        p.consent = doc.consent;
        let d = p.details_mut();
        d.consent_at = doc.consent_at;
        d.age_bracket = doc.age_bracket;
        d.home = doc.home;
        d.language = doc.language;
        d.signals = doc.signals;
        for member in doc.members {
            *p.member_mut(&member.member_id) = member.taste;
        }
        p.shrink_to_fit();
        p
    }
}

/// An interest or life-stage signal and when it was asserted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    pub name: SignalName,
    pub asserted_at: UnixMillis,
    /// When this assertion stops holding, if the caller said; else the kind's natural life
    /// applies (`life_stage`). Stored signals without it read as None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<UnixMillis>,
}

/// One household member's listening taste.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemberTaste {
    pub member_id: Box<str>,
    pub taste: Taste,
    /// The member's own age bracket: a household member never takes the account's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_bracket: Option<AgeBracket>,
    /// The member's own life-stage and interest signals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<Signal>,
}

/// One ad break to fill, as validated from the request.
#[derive(Clone, Debug)]
pub struct AdRequest {
    /// The identifier the caller sent (any alias); None = anonymous.
    pub listener_id: Option<Box<str>>,
    /// Household member; "" = main profile.
    pub member_id: Box<str>,
    pub track_id: Box<str>,
    /// Genres of the playing track that the server knows (unknown slugs cannot match anything).
    pub track_genres: Vec<GenreId>,
    /// Genres of the session's recent tracks, most recent first (known ones, at most 20).
    pub recent_genres: Vec<GenreId>,
    pub device: Option<DeviceType>,
    pub location: Option<GeoLocation>,
    pub consent: ConsentState,
    pub utc_offset_minutes: i16,
    /// 1..=10.
    pub max_ads: u8,
    /// Positive.
    pub max_duration_ms: u32,
    pub explain: bool,
}

/// One validated event from RecordEvents.
#[derive(Clone, Debug)]
pub struct AdEvent {
    pub event_id: Box<str>,
    pub kind: EventKind,
    pub occurred_at: Option<UnixMillis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_know_whether_they_are_age_restricted_however_they_arrive() {
        let beer: Categories = vec![Category::from("210"), Category::from("211")].into();
        assert!(beer.age_restricted(), "211 is alcohol");
        let json = serde_json::to_string(&beer).unwrap();
        assert_eq!(json, r#"["210","211"]"#, "stored as the plain list, as before");
        let back: Categories = serde_json::from_str(&json).unwrap();
        assert!(back.age_restricted(), "read back from the store");
        let soda: Categories = serde_json::from_str(r#"["210"]"#).unwrap();
        assert!(!soda.age_restricted());
        assert_eq!(&*soda, &[Category::from("210")][..]);
    }

    #[test]
    fn fingerprinted_ids_compare_by_text() {
        let a = CampaignId::from("camp-000123");
        let same_text = CampaignId::from("camp-000123");
        assert_eq!(a, same_text, "different allocations, same id");
        assert_ne!(a, CampaignId::from("camp-000124"));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#""camp-000123""#);
        assert_eq!(serde_json::from_str::<CampaignId>(&json).unwrap(), a);
        let mut map = std::collections::HashMap::new();
        map.insert(a, 1);
        assert_eq!(map.get("camp-000123"), Some(&1), "probed by &str");
    }

    #[test]
    fn geo_rule_covers_more_specific_places_only() {
        let rule = GeoLocation { country: "DE".into(), region: "".into(), metro: "".into() };
        let berlin = GeoLocation { country: "DE".into(), region: "DE-BE".into(), metro: "BER".into() };
        let paris = GeoLocation { country: "FR".into(), region: "FR-IDF".into(), metro: "PAR".into() };
        assert!(rule.covers(&berlin));
        assert!(!rule.covers(&paris));
        let munich_rule = GeoLocation { country: "DE".into(), region: "".into(), metro: "MUC".into() };
        assert!(!munich_rule.covers(&berlin));
    }

    #[test]
    fn daypart_handles_weekdays_and_midnight_wrap() {
        // 1970-01-05 was a Monday.
        let monday = 4 * DAY_MS;
        let workday_mornings = Daypart { days: 0b001_1111, start_hour: 6, end_hour: 10 };
        assert!(workday_mornings.contains(monday + 7 * HOUR_MS));
        assert!(!workday_mornings.contains(monday + 11 * HOUR_MS));
        assert!(!workday_mornings.contains(monday + 5 * DAY_MS + 7 * HOUR_MS), "saturday");

        let friday_nights = Daypart { days: 1 << 4, start_hour: 22, end_hour: 4 };
        let friday = monday + 4 * DAY_MS;
        assert!(friday_nights.contains(friday + 23 * HOUR_MS));
        assert!(friday_nights.contains(friday + DAY_MS + 2 * HOUR_MS), "saturday 2am belongs to friday");
        assert!(!friday_nights.contains(friday + 2 * HOUR_MS), "friday 2am belongs to thursday");
    }

    #[test]
    fn stored_document_round_trips_and_keeps_the_flat_layout() {
        let mut profile = ListenerProfile::new("acct".into());
        profile.member_mut("").record_play(&[GenreId(1)], None, UnixMillis(5), 200, DAY_MS);
        profile.member_mut("kid").record_play(&[GenreId(2)], None, UnixMillis(6), 200, DAY_MS);
        profile.details_mut().age_bracket = Some(AgeBracket::Age35To44);
        let json = serde_json::to_string(&profile).unwrap();
        assert!(json.contains(r#""members":[{"member_id":"","#), "{json}");
        let back: ListenerProfile = serde_json::from_str(&json).unwrap();
        let members: Vec<&str> = back.members().map(|(id, _)| id).collect();
        assert_eq!(members, ["", "kid"]);
        assert_eq!(back.details().age_bracket, Some(AgeBracket::Age35To44));
        assert_eq!(back.member("kid"), profile.member("kid"));
    }

    #[test]
    fn a_profile_without_details_holds_no_box() {
        let mut profile = ListenerProfile::new("acct".into());
        profile.details_mut().signals.clear();
        profile.shrink_to_fit();
        assert!(profile.details.is_none());
        assert!(std::mem::size_of::<ListenerProfile>() <= 80);
    }

    #[test]
    fn members_are_kept_apart() {
        let mut profile = ListenerProfile::new("acct".into());
        profile.member_mut("kid").genres.push(GenreStat {
            genre: GenreId(1),
            weight: 1.0,
            lifetime_plays: 1,
        });
        assert!(profile.member("").is_none());
        assert_eq!(profile.member("kid").map(|t| t.genres.len()), Some(1));
    }
}
