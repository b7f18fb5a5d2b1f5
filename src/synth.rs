//! A synthetic world from a seed: campaigns across genres, geos and tiers, and listeners with
//! skewed (Zipf-like) tastes, households and home cities. Used by the benchmarks and the load
//! harness, so both measure the same realistic shape.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::domain::{
    AgeBracket, Budget, Campaign, CampaignStatus, CapScope, Category, ConsentState, Creative, DAY_MS,
    DeviceType, FrequencyCap, GenreId, GeoLocation, HOUR_MS, ListenerProfile, PacingMode, Targeting, Tier,
    UnixMillis,
};
use crate::store::{StoreError, Vocabulary};

/// Genre slugs, most popular first (popularity falls off as 1/rank).
pub const GENRES: &[&str] = &[
    "pop",
    "hip-hop",
    "rock",
    "electronic",
    "latin",
    "r-and-b",
    "indie",
    "country",
    "k-pop",
    "dance",
    "classical",
    "jazz",
    "metal",
    "soul",
    "reggaeton",
    "folk",
    "blues",
    "punk",
    "soundtrack",
    "ambient",
    "funk",
    "opera",
    "reggae",
    "gospel",
    "kids",
    "house",
    "techno",
    "trap",
    "afrobeats",
    "bossa-nova",
    "grunge",
    "emo",
    "ska",
    "disco",
    "lo-fi",
    "world",
    "new-age",
    "bluegrass",
    "chanson",
    "schlager",
];

/// Home and request places: (country, region, metro).
pub const PLACES: &[(&str, &str, &str)] = &[
    ("US", "US-NY", "NYC"),
    ("US", "US-CA", "LAX"),
    ("US", "US-IL", "CHI"),
    ("US", "US-TX", "DFW"),
    ("DE", "DE-BE", "BER"),
    ("DE", "DE-BY", "MUC"),
    ("DE", "DE-HH", "HAM"),
    ("GB", "GB-ENG", "LON"),
    ("FR", "FR-IDF", "PAR"),
    ("BR", "BR-SP", "SAO"),
    ("MX", "MX-CMX", "MEX"),
    ("JP", "JP-13", "TYO"),
];

/// IAB Content Taxonomy 3.1 ids used for synthetic ad categories.
const CATEGORIES: &[&str] = &[
    "1", "42", "52", "123", "132", "150", "177", "186", "201", "210", "223", "239", "243", "274", "286",
    "391", "422", "441", "473", "483", "552", "596", "653", "672", "680", "681", "147", "196", "197",
    "8VZQHL",
];

/// The shape of a synthetic world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorldSpec {
    pub seed: u64,
    pub campaigns: usize,
    pub listeners: usize,
    /// When the sponsorships were booked: their flights start here.
    pub booked_at: UnixMillis,
}

/// A sponsorship's flight: four weeks from its booking.
pub const SPONSORSHIP_FLIGHT_MS: i64 = 28 * DAY_MS;
/// A sponsorship's impression goal over its flight, per listener of the world: each listener
/// hears a given sponsor about twice in four weeks.
pub const SPONSORSHIP_IMPRESSIONS_PER_LISTENER: u64 = 2;

/// Draws an index in `0..n` with probability proportional to 1 / (index + 1).
pub fn zipf(rng: &mut impl Rng, n: usize) -> usize {
    // Harmonic weights: inverse-CDF by linear scan is fine for the small n used here.
    let total: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
    let mut x = rng.random::<f64>() * total;
    for k in 0..n {
        x -= 1.0 / (k + 1) as f64;
        if x <= 0.0 {
            return k;
        }
    }
    n - 1
}

fn place(i: usize, metro: bool) -> GeoLocation {
    let (country, region, m) = PLACES[i % PLACES.len()];
    GeoLocation {
        country: country.into(),
        region: region.into(),
        metro: if metro { m.into() } else { "".into() },
    }
}

/// `spec.campaigns` campaigns (the last ten are house ads) with genres interned in `vocabulary`.
pub fn campaigns(spec: &WorldSpec, vocabulary: &Vocabulary) -> Result<Vec<Campaign>, StoreError> {
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let genre_ids: Vec<GenreId> = GENRES.iter().map(|g| vocabulary.intern(g)).collect::<Result<_, _>>()?;
    let advertisers = (spec.campaigns / 3).max(1);
    let house = spec.campaigns.min(10);
    let mut out = Vec::with_capacity(spec.campaigns);
    for i in 0..spec.campaigns {
        let is_house = i >= spec.campaigns - house;
        let tier = if is_house {
            Tier::House
        } else {
            match rng.random_range(0..100) {
                0..3 => Tier::Sponsorship,
                3..58 => Tier::Standard,
                _ => Tier::Remnant,
            }
        };
        let advertiser = if is_house {
            "interlude".to_string()
        } else {
            format!("adv-{:05}", rng.random_range(0..advertisers))
        };
        let mut targeting = Targeting::default();
        let kind = rng.random_range(0..100);
        let pick_genres = |rng: &mut SmallRng| {
            let n = rng.random_range(1..=3);
            let mut g: Vec<GenreId> = (0..n).map(|_| genre_ids[zipf(rng, genre_ids.len())]).collect();
            g.sort_unstable();
            g.dedup();
            g
        };
        match kind {
            0..70 => targeting.affinity_genres = pick_genres(&mut rng),
            70..80 => targeting.track_genres = pick_genres(&mut rng),
            80..92 => {
                targeting.geo_include = vec![place(rng.random_range(0..PLACES.len()), rng.random_bool(0.5))];
                targeting.geo_use_home = rng.random_bool(0.3);
            }
            _ => {}
        }
        if kind < 80 && rng.random_bool(0.2) {
            targeting.geo_include = vec![place(rng.random_range(0..PLACES.len()), false)];
        }
        if rng.random_bool(0.1) {
            targeting.devices = vec![
                [DeviceType::Mobile, DeviceType::SmartSpeaker, DeviceType::Desktop][rng.random_range(0..3)],
            ];
        }
        let bid_usd = if is_house { 0.0 } else { 2.0 + 38.0 * rng.random::<f64>().powi(2) };
        // One campaign in ten has a small lifetime budget that a load test exhausts.
        let budget = if !is_house && rng.random_bool(0.1) {
            Budget { lifetime_micros: rng.random_range(1..=5) * 1_000_000, ..Budget::default() }
        } else {
            Budget::default()
        };
        // A sponsorship is a guaranteed deal: an impression goal over a flight, delivered evenly.
        // Without one, sponsorships (3 % of campaigns) outranked every other ad by tier and took
        // 98 % of the breaks, and the auction among the rest was never exercised.
        let sponsorship = tier == Tier::Sponsorship;
        let (budget, flight_start, flight_end) = if sponsorship {
            let goal = SPONSORSHIP_IMPRESSIONS_PER_LISTENER * spec.listeners.max(1) as u64;
            let start = spec.booked_at;
            (
                Budget { impression_goal: goal, pacing: PacingMode::Even, ..budget },
                Some(start),
                Some(UnixMillis(start.0 + SPONSORSHIP_FLIGHT_MS)),
            )
        } else {
            (budget, None, None)
        };
        out.push(Campaign {
            time_zone: crate::domain::CampaignZone::default(),
            id: format!("{}-{i:06}", if is_house { "house" } else { "camp" }).as_str().into(),
            advertiser_id: advertiser.as_str().into(),
            advertiser_name: advertiser.as_str().into(),
            name: format!("synthetic campaign {i}").into(),
            tier,
            status: CampaignStatus::Active,
            bid_cpm_micros: (bid_usd * 1_000_000.0) as i64,
            categories: vec![Category::from(CATEGORIES[rng.random_range(0..CATEGORIES.len())])].into(),
            targeting,
            caps: vec![
                FrequencyCap { scope: CapScope::Campaign, max_impressions: 3, window_ms: Some(HOUR_MS) },
                FrequencyCap { scope: CapScope::Advertiser, max_impressions: 10, window_ms: Some(DAY_MS) },
            ],
            relevance_floor: None,
            flight_start,
            flight_end,
            budget,
            creatives: vec![
                Creative {
                    id: "30s".into(),
                    audio_url: format!("https://cdn.example/{i}/30.mp3").into(),
                    duration_ms: 30_000,
                    companion: None,
                    media_files: Vec::new(),
                    audio_mime: None,
                },
                Creative {
                    id: "15s".into(),
                    audio_url: format!("https://cdn.example/{i}/15.mp3").into(),
                    duration_ms: 15_000,
                    companion: None,
                    media_files: Vec::new(),
                    audio_mime: None,
                },
            ],
            updated_at: UnixMillis(0),
        });
    }
    Ok(out)
}

/// One synthetic listener account: its profile, its members and their plays' genres.
#[derive(Clone, Debug)]
pub struct SyntheticListener {
    pub profile: ListenerProfile,
    /// Index into `PLACES` of the home.
    pub home: usize,
    /// Per member: (member id, [(genre index, plays)]).
    pub members: Vec<(String, Vec<(usize, u32)>)>,
}

/// Listener `index` of the world (deterministic per seed and index, so a harness can regenerate
/// any listener without keeping the whole population).
pub fn listener(spec: &WorldSpec, index: usize) -> SyntheticListener {
    let mut rng =
        SmallRng::seed_from_u64(spec.seed ^ 0x9e37_79b9_7f4a_7c15 ^ (index as u64).wrapping_mul(0x2545_f491));
    let home = rng.random_range(0..PLACES.len());
    let mut profile = ListenerProfile::new(format!("listener-{index:07}").as_str().into());
    profile.consent = if rng.random_bool(0.85) { ConsentState::Granted } else { ConsentState::Denied };
    profile.details_mut().age_bracket = Some(
        [
            AgeBracket::Age18To24,
            AgeBracket::Age25To34,
            AgeBracket::Age35To44,
            AgeBracket::Age45To54,
            AgeBracket::Age55To64,
        ][rng.random_range(0..5)],
    );
    profile.details_mut().home = Some(place(home, true));
    let n_members = if rng.random_bool(0.2) { rng.random_range(2..=3) } else { 1 };
    let members = (0..n_members)
        .map(|m| {
            let n_genres = rng.random_range(2..=10);
            // Each listener has a personal favourite, then Zipf-popular genres.
            let favourite = rng.random_range(0..GENRES.len());
            let mut plays: Vec<(usize, u32)> = vec![(favourite, rng.random_range(100..400))];
            for _ in 1..n_genres {
                plays.push((zipf(&mut rng, GENRES.len()), rng.random_range(5..80)));
            }
            (if m == 0 { String::new() } else { format!("member-{m}") }, plays)
        })
        .collect();
    SyntheticListener { profile, home, members }
}

/// The listener with its tastes built from its plays (spread over the 30 days before `now`).
pub fn listener_with_taste(
    spec: &WorldSpec,
    index: usize,
    vocabulary: &Vocabulary,
    now: UnixMillis,
    half_life_ms: i64,
) -> Result<SyntheticListener, StoreError> {
    let mut l = listener(spec, index);
    for (member, plays) in &l.members {
        let taste = l.profile.member_mut(member);
        for &(genre, n) in plays {
            let genre = vocabulary.intern(GENRES[genre])?;
            // Fold the plays in as a few batches: the decayed weight is what matters.
            let at = UnixMillis(now.0 - 30 * DAY_MS);
            for k in 0..n.min(8) {
                taste.record_play(
                    &[genre],
                    None,
                    UnixMillis(at.0 + i64::from(k) * 3 * DAY_MS),
                    200,
                    half_life_ms,
                );
            }
            if let Some(stat) = taste.genres.iter_mut().find(|s| s.genre == genre) {
                stat.lifetime_plays = n;
                stat.weight *= n as f32 / n.min(8) as f32;
            }
        }
    }
    Ok(l)
}

/// The engine benchmarks' break for `l`: two ads in 60 s, the track of their favourite genre, on
/// a phone at home (`benches/decision.rs`, `examples/decide_count.rs`: one request, one count).
pub fn engine_request(l: &SyntheticListener, vocabulary: &Vocabulary) -> crate::domain::AdRequest {
    crate::domain::AdRequest {
        listener_id: Some(l.profile.id.as_str().into()),
        member_id: "".into(),
        track_id: "t".into(),
        track_genres: top_genres(l, 0, 1).iter().filter_map(|g| vocabulary.lookup(g)).collect(),
        recent_genres: Vec::new(),
        device: Some(DeviceType::Mobile),
        location: l.profile.details().home.clone(),
        consent: ConsentState::Unspecified,
        utc_offset_minutes: 60,
        max_ads: 2,
        max_duration_ms: 60_000,
        explain: false,
    }
}

/// The favourite genres of a member, strongest first (the quality measure of the load harness).
pub fn top_genres(l: &SyntheticListener, member: usize, n: usize) -> Vec<&'static str> {
    let mut plays = l.members[member].1.clone();
    plays.sort_by_key(|p| std::cmp::Reverse(p.1));
    let mut out: Vec<&'static str> = Vec::new();
    for (g, _) in plays {
        if !out.contains(&GENRES[g]) {
            out.push(GENRES[g]);
        }
        if out.len() == n {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worlds_are_deterministic_per_seed() {
        let spec = WorldSpec { seed: 42, campaigns: 200, listeners: 10, booked_at: UnixMillis(0) };
        let v = Vocabulary::default();
        let a = campaigns(&spec, &v).unwrap();
        let b = campaigns(&spec, &v).unwrap();
        assert_eq!(a.len(), 200);
        assert!(a.iter().zip(&b).all(|(x, y)| x.id == y.id && x.bid_cpm_micros == y.bid_cpm_micros));
        assert_eq!(a.iter().filter(|c| c.tier == Tier::House).count(), 10);
        assert_eq!(listener(&spec, 3).profile.id, listener(&spec, 3).profile.id);
        assert_eq!(listener(&spec, 3).members, listener(&spec, 3).members);
    }

    #[test]
    fn sponsorships_are_booked_with_an_even_goal_over_a_flight() {
        let spec =
            WorldSpec { seed: 42, campaigns: 2000, listeners: 1000, booked_at: UnixMillis(5 * DAY_MS) };
        let all = campaigns(&spec, &Vocabulary::default()).unwrap();
        let (sponsorships, rest): (Vec<_>, Vec<_>) = all.iter().partition(|c| c.tier == Tier::Sponsorship);
        assert!(sponsorships.len() > 20, "{}", sponsorships.len());
        for c in &sponsorships {
            assert_eq!(c.budget.impression_goal, 2 * 1000);
            assert_eq!(c.budget.pacing, PacingMode::Even);
            assert_eq!(c.flight_start, Some(spec.booked_at));
            assert_eq!(c.flight_end, Some(UnixMillis(spec.booked_at.0 + SPONSORSHIP_FLIGHT_MS)));
        }
        assert!(rest.iter().all(|c| c.flight_start.is_none() && c.budget.impression_goal == 0));
    }

    #[test]
    fn genre_popularity_is_skewed() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = vec![0u32; GENRES.len()];
        for _ in 0..10_000 {
            counts[zipf(&mut rng, GENRES.len())] += 1;
        }
        assert!(counts[0] > 4 * counts[9], "{counts:?}");
        assert!(counts[9] > counts[39], "{counts:?}");
    }
}
