//! The built-in demo catalog: advertisers across music genres, house ads and a few listeners, so
//! that `cargo run --release` answers a realistic Decide at once.

use crate::domain::{
    AgeBracket, Budget, Campaign, CampaignStatus, CapScope, Category, ConsentState, Creative, DAY_MS,
    Daypart, DeviceType, FrequencyCap, GeoLocation, HOUR_MS, MediaFile, Milestone, PacingMode, Signal,
    SignalRequirement, Targeting, Tier, UnixMillis,
};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::listeners::Play;

/// What was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoStats {
    pub campaigns: usize,
    pub listeners: usize,
}

/// A campaign row of the demo table; unset targeting fields stay default.
struct Row {
    id: &'static str,
    advertiser: (&'static str, &'static str),
    name: &'static str,
    tier: Tier,
    /// US dollars per mille.
    cpm: f64,
    categories: &'static [&'static str],
    affinity: &'static [&'static str],
    track: &'static [&'static str],
    tune: fn(&mut Campaign, &mut Resolver<'_>),
}

struct Resolver<'a> {
    state: &'a AppState,
    error: Option<StoreError>,
    /// When the demo is loaded: flights are set around it.
    now: UnixMillis,
}

impl Resolver<'_> {
    fn genres(&mut self, slugs: &[&str]) -> Vec<crate::domain::GenreId> {
        slugs
            .iter()
            .filter_map(|s| match self.state.vocabulary.intern(s) {
                Ok(id) => Some(id),
                Err(e) => {
                    self.error = Some(e);
                    None
                }
            })
            .collect()
    }
}

fn place(country: &str, region: &str, metro: &str) -> GeoLocation {
    GeoLocation { country: country.into(), region: region.into(), metro: metro.into() }
}

fn none(_: &mut Campaign, _: &mut Resolver<'_>) {}

const ROWS: &[Row] = &[
    Row {
        id: "staatsoper-season",
        advertiser: ("staatsoper", "Staatsoper Unter den Linden"),
        name: "Season 26/27 subscriptions",
        tier: Tier::Standard,
        cpm: 18.0,
        categories: &["177"],
        affinity: &["opera", "classical"],
        track: &[],
        tune: |c, _| c.targeting.geo_include = vec![place("DE", "", "")],
    },
    Row {
        id: "philharmonie-digital",
        advertiser: ("philharmonie", "Digital Concert Hall"),
        name: "Every concert, streamed",
        tier: Tier::Standard,
        cpm: 15.0,
        categories: &["201"],
        affinity: &["classical"],
        track: &[],
        tune: none,
    },
    Row {
        id: "steinway-grand",
        advertiser: ("steinway", "Steinway Pianos"),
        name: "For devoted listeners",
        tier: Tier::Sponsorship,
        cpm: 35.0,
        categories: &["243"],
        affinity: &["classical"],
        track: &[],
        tune: |c, r| {
            if let Some(&g) = r.genres(&["classical"]).first() {
                c.targeting.milestones = vec![Milestone { genre: g, min_plays: 800 }];
            }
        },
    },
    Row {
        id: "bluenote-nyc",
        advertiser: ("bluenote", "Blue Note Jazz Club"),
        name: "Late sets this week",
        tier: Tier::Standard,
        cpm: 12.0,
        categories: &["177"],
        affinity: &["jazz"],
        track: &[],
        tune: |c, _| c.targeting.geo_include = vec![place("US", "US-NY", "")],
    },
    Row {
        id: "vinyl-house",
        advertiser: ("vinylhouse", "Vinyl House Records"),
        name: "Jazz & blues pressings",
        tier: Tier::Standard,
        cpm: 9.0,
        categories: &["473"],
        affinity: &["jazz", "blues", "soul"],
        track: &[],
        tune: none,
    },
    Row {
        id: "popstar-world-tour",
        advertiser: ("starlight", "Starlight Live"),
        name: "Nova world tour tickets",
        tier: Tier::Standard,
        cpm: 20.0,
        categories: &["8VZQHL"],
        affinity: &["pop"],
        track: &[],
        tune: none,
    },
    Row {
        id: "glow-cosmetics",
        advertiser: ("glow", "Glow Cosmetics"),
        name: "New season palette",
        tier: Tier::Standard,
        cpm: 14.0,
        categories: &["552"],
        affinity: &["pop", "k-pop"],
        track: &[],
        tune: |c, _| c.targeting.age_brackets = vec![AgeBracket::Age18To24, AgeBracket::Age25To34],
    },
    Row {
        id: "fizz-soda",
        advertiser: ("fizz", "Fizz Soda"),
        name: "Summer fizz",
        tier: Tier::Remnant,
        cpm: 4.0,
        categories: &["210"],
        affinity: &[],
        track: &["pop", "dance"],
        tune: none,
    },
    Row {
        id: "riff-guitars",
        advertiser: ("riff", "Riff Guitars"),
        name: "Spring guitar sale",
        tier: Tier::Standard,
        cpm: 11.0,
        categories: &["243"],
        affinity: &["rock", "metal"],
        track: &[],
        tune: none,
    },
    Row {
        id: "stagefest",
        advertiser: ("stagefest", "Stagefest"),
        name: "Festival weekend passes",
        tier: Tier::Standard,
        cpm: 16.0,
        categories: &["8VZQHL"],
        affinity: &["rock", "indie"],
        track: &[],
        tune: |c, _| c.targeting.geo_include = vec![place("DE", "", "")],
    },
    Row {
        id: "kicks-sneakers",
        advertiser: ("kicks", "Kicks"),
        name: "Drop of the week",
        tier: Tier::Standard,
        cpm: 13.0,
        categories: &["552"],
        affinity: &["hip-hop"],
        track: &[],
        tune: none,
    },
    Row {
        id: "beatmaker-app",
        advertiser: ("beatmaker", "Beatmaker"),
        name: "Make beats on your phone",
        tier: Tier::Standard,
        cpm: 10.0,
        categories: &["596"],
        affinity: &["hip-hop", "electronic"],
        track: &[],
        tune: |c, _| c.targeting.devices = vec![DeviceType::Mobile],
    },
    Row {
        id: "nightpulse-club",
        advertiser: ("nightpulse", "Nightpulse Club"),
        name: "This weekend's line-up",
        tier: Tier::Standard,
        cpm: 8.0,
        categories: &["177"],
        affinity: &["electronic"],
        track: &[],
        tune: |c, _| {
            c.targeting.geo_include = vec![place("DE", "DE-BE", "")];
            // Thursday to Saturday, 18:00 to 02:00 local.
            c.targeting.daypart =
                Some(Daypart { days: (1 << 3) | (1 << 4) | (1 << 5), start_hour: 18, end_hour: 2 });
        },
    },
    Row {
        id: "truck-dealer",
        advertiser: ("bigrig", "Big Rig Trucks"),
        name: "0% financing",
        tier: Tier::Standard,
        cpm: 12.0,
        categories: &["1"],
        affinity: &["country"],
        track: &[],
        tune: |c, _| c.targeting.geo_include = vec![place("US", "", "")],
    },
    Row {
        id: "skyways-from-ber",
        advertiser: ("skyways", "SkyWays"),
        name: "Deals from Berlin BER",
        tier: Tier::Standard,
        cpm: 22.0,
        categories: &["672"],
        affinity: &[],
        track: &[],
        tune: |c, _| {
            c.targeting.geo_include = vec![place("DE", "", "BER")];
            c.targeting.geo_use_home = true;
        },
    },
    Row {
        id: "skyways-from-muc",
        advertiser: ("skyways", "SkyWays"),
        name: "Deals from Munich MUC",
        tier: Tier::Standard,
        cpm: 22.0,
        categories: &["672"],
        affinity: &[],
        track: &[],
        tune: |c, _| {
            c.targeting.geo_include = vec![place("DE", "", "MUC")];
            c.targeting.geo_use_home = true;
        },
    },
    Row {
        id: "skyways-from-nyc",
        advertiser: ("skyways", "SkyWays"),
        name: "Deals from New York",
        tier: Tier::Standard,
        cpm: 22.0,
        categories: &["672"],
        affinity: &[],
        track: &[],
        tune: |c, _| {
            c.targeting.geo_include = vec![place("US", "", "NYC")];
            c.targeting.geo_use_home = true;
        },
    },
    Row {
        id: "tinysteps-uniforms",
        advertiser: ("tinysteps", "Tiny Steps"),
        name: "School uniforms",
        tier: Tier::Standard,
        cpm: 9.0,
        categories: &["197"],
        affinity: &[],
        track: &[],
        tune: |c, _| {
            c.targeting.signals = vec![SignalRequirement {
                signal: "parent-young-children".into(),
                max_age_ms: Some(3 * 365 * DAY_MS),
            }];
        },
    },
    Row {
        // Alcohol (IAB 211): only to listeners known to be over 21, never to a household's kid.
        id: "hoppy-craft-beer",
        advertiser: ("hoppy", "Hoppy Brewing"),
        name: "Craft beer for the weekend",
        tier: Tier::Standard,
        cpm: 8.0,
        categories: &["211"],
        affinity: &["rock", "indie"],
        track: &[],
        tune: none,
    },
    Row {
        id: "singalong-app",
        advertiser: ("singalong", "Singalong"),
        name: "Songs for little ones",
        tier: Tier::Remnant,
        cpm: 6.0,
        categories: &["196"],
        affinity: &["kids"],
        track: &[],
        tune: none,
    },
    Row {
        id: "neobank-students",
        advertiser: ("neobank", "Neobank"),
        name: "Free student account",
        tier: Tier::Standard,
        cpm: 7.0,
        categories: &["391"],
        affinity: &[],
        track: &[],
        tune: |c, _| c.targeting.age_brackets = vec![AgeBracket::Age18To24],
    },
    Row {
        id: "arena-console",
        advertiser: ("arena", "Arena Games"),
        name: "New console bundle",
        tier: Tier::Standard,
        cpm: 11.0,
        categories: &["681"],
        affinity: &["electronic", "soundtrack"],
        track: &[],
        tune: none,
    },
    Row {
        id: "lingua-app",
        advertiser: ("lingua", "Lingua"),
        name: "Learn Spanish with music",
        tier: Tier::Remnant,
        cpm: 6.0,
        categories: &["147"],
        affinity: &["latin", "reggaeton"],
        track: &[],
        tune: none,
    },
    Row {
        id: "runfast-shoes",
        advertiser: ("runfast", "RunFast"),
        name: "Run to the beat",
        tier: Tier::Remnant,
        cpm: 8.0,
        categories: &["483"],
        affinity: &[],
        track: &["electronic", "pop", "hip-hop"],
        tune: |c, _| c.targeting.devices = vec![DeviceType::Wearable, DeviceType::Mobile],
    },
    Row {
        id: "hifi-headphones",
        advertiser: ("hifi", "HiFi Audio"),
        name: "Hear every detail",
        tier: Tier::Sponsorship,
        cpm: 30.0,
        categories: &["596"],
        affinity: &["classical", "jazz", "electronic"],
        track: &[],
        // A four-week flight three days in, its budget spread evenly: the console's pacing
        // chart has a curve to show.
        tune: |c, r| {
            c.flight_start = Some(UnixMillis(r.now.0 - 3 * DAY_MS));
            c.flight_end = Some(UnixMillis(r.now.0 + 25 * DAY_MS));
            c.budget =
                Budget { lifetime_micros: 20_000_000_000, pacing: PacingMode::Even, ..Budget::default() };
        },
    },
    Row {
        id: "burger-late",
        advertiser: ("burgerbar", "Burger Bar"),
        name: "Late-night delivery",
        tier: Tier::Remnant,
        cpm: 3.0,
        categories: &["210"],
        affinity: &[],
        track: &[],
        tune: |c, _| {
            c.targeting.geo_include = vec![place("US", "", "")];
            c.targeting.daypart = Some(Daypart { days: 0x7f, start_hour: 20, end_hour: 2 });
        },
    },
    Row {
        id: "morning-brew",
        advertiser: ("morningbrew", "Morning Brew Coffee"),
        name: "Your commute coffee",
        tier: Tier::Remnant,
        cpm: 5.0,
        categories: &["210"],
        affinity: &[],
        track: &[],
        tune: |c, _| {
            c.targeting.geo_include = vec![place("DE", "", "")];
            c.targeting.daypart = Some(Daypart { days: 0b001_1111, start_hour: 6, end_hour: 10 });
        },
    },
    Row {
        id: "country-fest",
        advertiser: ("countryfest", "Country Fest"),
        name: "Nashville weekend",
        tier: Tier::Standard,
        cpm: 14.0,
        categories: &["8VZQHL"],
        affinity: &["country", "folk"],
        track: &[],
        tune: none,
    },
    Row {
        id: "metal-merch",
        advertiser: ("ironmerch", "Iron Merch"),
        name: "Tour shirts",
        tier: Tier::Remnant,
        cpm: 5.0,
        categories: &["552"],
        affinity: &["metal"],
        track: &[],
        tune: none,
    },
    Row {
        id: "reggae-cruise",
        advertiser: ("islandcruise", "Island Cruises"),
        name: "Reggae at sea",
        tier: Tier::Standard,
        cpm: 12.0,
        categories: &["653"],
        affinity: &["reggae"],
        track: &[],
        tune: none,
    },
    Row {
        id: "indie-label",
        advertiser: ("smallrecords", "Small Records"),
        name: "New indie releases",
        tier: Tier::Remnant,
        cpm: 4.0,
        categories: &["338"],
        affinity: &["indie", "folk"],
        track: &[],
        tune: none,
    },
    Row {
        id: "opera-glasses",
        advertiser: ("lorgnette", "Lorgnette Optics"),
        name: "Opera glasses",
        tier: Tier::Remnant,
        cpm: 5.0,
        categories: &["473"],
        affinity: &[],
        track: &["opera"],
        tune: none,
    },
    Row {
        id: "house-premium",
        advertiser: ("interlude", "Interlude"),
        name: "Go Premium: no ads",
        tier: Tier::House,
        cpm: 0.0,
        categories: &[],
        affinity: &[],
        track: &[],
        tune: none,
    },
    Row {
        id: "house-opera-essentials",
        advertiser: ("interlude", "Interlude"),
        name: "Opera Essentials playlist",
        tier: Tier::House,
        cpm: 0.0,
        categories: &[],
        affinity: &[],
        track: &["opera", "classical"],
        tune: none,
    },
    Row {
        id: "house-podcasts",
        advertiser: ("interlude", "Interlude"),
        name: "Try our podcasts",
        tier: Tier::House,
        cpm: 0.0,
        categories: &[],
        affinity: &[],
        track: &[],
        tune: |c, _| c.relevance_floor = None,
    },
];

/// Loads the demo campaigns and listeners into `state`.
pub fn load(state: &AppState, now: UnixMillis) -> Result<DemoStats, StoreError> {
    let mut resolver = Resolver { state, error: None, now };
    let mut campaigns = Vec::with_capacity(ROWS.len());
    for row in ROWS {
        let mut campaign = Campaign {
            time_zone: crate::domain::CampaignZone::default(),
            id: row.id.into(),
            advertiser_id: row.advertiser.0.into(),
            advertiser_name: row.advertiser.1.into(),
            name: row.name.into(),
            tier: row.tier,
            status: CampaignStatus::Active,
            bid_cpm_micros: (row.cpm * 1_000_000.0) as i64,
            categories: row.categories.iter().map(|&c| Category::from(c)).collect::<Vec<_>>().into(),
            targeting: Targeting {
                affinity_genres: resolver.genres(row.affinity),
                track_genres: resolver.genres(row.track),
                ..Targeting::default()
            },
            caps: vec![
                FrequencyCap { scope: CapScope::Campaign, max_impressions: 3, window_ms: Some(HOUR_MS) },
                FrequencyCap { scope: CapScope::Advertiser, max_impressions: 8, window_ms: Some(DAY_MS) },
            ],
            relevance_floor: None,
            flight_start: None,
            flight_end: None,
            budget: Budget::default(),
            creatives: vec![creative(row.id, "30s", 30_000), creative(row.id, "15s", 15_000)],
            updated_at: now,
        };
        (row.tune)(&mut campaign, &mut resolver);
        if row.tier == Tier::House {
            campaign.caps = vec![FrequencyCap {
                scope: CapScope::Campaign,
                max_impressions: 2,
                window_ms: Some(HOUR_MS),
            }];
        }
        campaigns.push(campaign);
    }
    if let Some(e) = resolver.error {
        return Err(e);
    }
    let n_campaigns = campaigns.len();
    state.catalog.upsert_all(campaigns, now)?;
    let listeners = load_listeners(state, now)?;
    Ok(DemoStats { campaigns: n_campaigns, listeners })
}

fn creative(campaign: &str, variant: &str, duration_ms: u32) -> Creative {
    Creative {
        id: variant.into(),
        audio_url: format!("https://cdn.interlude.example/ads/{campaign}/{variant}.mp3").into(),
        audio_mime: Some("audio/mpeg".into()),
        duration_ms,
        companion: None,
        // Every demo creative also comes as Ogg Vorbis, as audio CDNs serve it.
        media_files: vec![MediaFile {
            url: format!("https://cdn.interlude.example/ads/{campaign}/{variant}.ogg").into(),
            mime_type: "audio/ogg".into(),
            bitrate_kbps: 96,
        }],
    }
}

/// (listener id, member, [(genre, plays)]).
type Listening = (&'static str, &'static str, &'static [(&'static str, u32)]);

const LISTENING: &[Listening] = &[
    ("listener-opera", "", &[("opera", 400), ("classical", 900)]),
    ("listener-pop", "", &[("pop", 300), ("k-pop", 60), ("electronic", 60)]),
    ("listener-jazz-nyc", "", &[("jazz", 200), ("blues", 60)]),
    ("family-account", "", &[("rock", 150), ("indie", 90)]),
    ("family-account", "kid", &[("kids", 150), ("pop", 20)]),
    ("listener-no-consent", "", &[("hip-hop", 250)]),
];

fn load_listeners(state: &AppState, now: UnixMillis) -> Result<usize, StoreError> {
    let profiles: [(&str, ConsentState, Option<AgeBracket>, GeoLocation); 5] = [
        ("listener-opera", ConsentState::Granted, Some(AgeBracket::Age45To54), place("DE", "DE-BE", "BER")),
        ("listener-pop", ConsentState::Granted, Some(AgeBracket::Age18To24), place("DE", "DE-BY", "MUC")),
        (
            "listener-jazz-nyc",
            ConsentState::Granted,
            Some(AgeBracket::Age35To44),
            place("US", "US-NY", "NYC"),
        ),
        ("family-account", ConsentState::Granted, Some(AgeBracket::Age45To54), place("DE", "DE-BE", "BER")),
        (
            "listener-no-consent",
            ConsentState::Denied,
            Some(AgeBracket::Age25To34),
            place("DE", "DE-HH", "HAM"),
        ),
    ];
    for (id, consent, age, home) in profiles {
        state.listeners.update(id, |p| {
            p.consent = consent;
            let d = p.details_mut();
            d.consent_at = Some(now);
            d.age_bracket = age;
            d.home = Some(home);
            d.language = Some("en".into());
        })?;
    }
    // A life-stage signal from six years ago: the children have grown up.
    state.listeners.update("family-account", |p| {
        p.details_mut().signals = vec![Signal {
            name: "parent-young-children".into(),
            asserted_at: UnixMillis(now.0 - 6 * 365 * DAY_MS),
            valid_until: None,
        }];
    })?;
    state.listeners.link("listener-opera", "email-sha256:5f2b9c0e")?;
    let mut plays = Vec::new();
    for (listener, member, genres) in LISTENING {
        for &(genre, n) in *genres {
            let genre = state.vocabulary.intern(genre)?;
            for i in 0..n {
                // Spread over the last 60 days, newest last.
                let at = now.0 - 60 * DAY_MS + i64::from(i) * (60 * DAY_MS / i64::from(n));
                plays.push(Play {
                    listener: (*listener).into(),
                    member: (*member).into(),
                    genres: vec![genre],
                    artist: None,
                    played_at: UnixMillis(at),
                    seconds_played: 180,
                });
            }
        }
    }
    plays.sort_by_key(|p| p.played_at);
    state.listeners.record_plays(&plays, state.taste_half_life_ms)?;
    // The kid is a teenager: age-targeted and age-restricted ads go by that, not the account's.
    state.listeners.update("family-account", |p| {
        if let Some(kid) = p.member_record_mut("kid") {
            kid.age_bracket = Some(AgeBracket::Age13To17);
        }
    })?;
    Ok(state.listeners.len())
}
