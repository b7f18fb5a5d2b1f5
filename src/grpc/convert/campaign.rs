//! Campaigns: validated on the way in, and their wire form on the way out.

use std::collections::HashSet;

use crate::domain::{
    AgeBracket, Budget, Campaign, CampaignStatus, CampaignZone, CapScope, Category, Companion, Creative,
    Daypart, DeviceType, FrequencyCap, GenreId, GeoLocation, MediaFile, Milestone, PacingMode,
    SignalRequirement, Targeting, Tier, UnixMillis,
};
use crate::grpc::pb;
use crate::grpc::status::InvalidRequest;
use crate::store::Vocabulary;

use super::{
    Checker, DEFAULT_PAGE_SIZE, MAX_BID_CPM_MICROS, MAX_CAP_WINDOW_MS, MAX_CAPS, MAX_CREATIVE_MS,
    MAX_CREATIVES, MAX_LIST, MAX_MEDIA_FILES, MAX_PAGE_SIZE, millis_to_timestamp, ms_to_duration,
};
use crate::validation::{id_problem, slug_problem};

/// Validates a campaign for upsert (the catalog stamps `updated_at`).
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

pub(super) fn age_to_proto(a: AgeBracket) -> pb::AgeBracket {
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
