//! An ad tag's query string and headers, validated into the engine's `AdRequest`.
//!
//! Parameters are named as ad tags usually name them (`listener_id`, `track_genre`, `gdpr`,
//! `us_privacy`, `max_ads`, `max_duration` in seconds …). Unknown parameters are ignored (players
//! add cache busters and their own keys); a parameter that may appear once but appears twice,
//! or a value that cannot be read, is refused naming the parameter. An empty value, or a macro
//! the player did not substitute (`[LISTENER_ID]`, `%%LISTENER_ID%%`), counts as absent: it
//! must not become a listener id that every unsubstituted tag would share.

use std::net::IpAddr;

use http::HeaderMap;

use super::consent;
use crate::domain::{AdRequest, DeviceType, GenreId, GeoLocation};
use crate::store::Vocabulary;
use crate::validation::{
    InvalidRequest, MAX_ADS_PER_BREAK, MAX_BREAK_MS, MAX_ID_LEN, MAX_RECENT_GENRES, MAX_TRACK_GENRES,
    MAX_UTC_OFFSET_MINUTES, id_problem, location_problems, slug_problem,
};

/// Seconds of a break when the tag does not say.
pub const DEFAULT_MAX_DURATION_SECS: u32 = 60;

/// The parameters that may appear at most once.
const SINGLE: &[&str] = &[
    "listener_id",
    "member_id",
    "track_id",
    "device",
    "country",
    "region",
    "metro",
    "utc_offset",
    "gdpr",
    "gdpr_consent",
    "us_privacy",
    "max_ads",
    "max_duration",
];

/// A query string's parameters, in order, macros and empty values dropped.
#[derive(Debug)]
pub struct Query<'q> {
    pairs: Vec<(std::borrow::Cow<'q, str>, std::borrow::Cow<'q, str>)>,
}

impl<'q> Query<'q> {
    /// Parses `query` (the part of the URL after `?`, percent-encoded).
    pub fn parse(query: &'q str) -> Self {
        let mut pairs = Vec::with_capacity(query.bytes().filter(|&b| b == b'&').count() + 1);
        pairs.extend(form_urlencoded::parse(query.as_bytes()).filter(|(_, v)| !is_unset(v)));
        Self { pairs }
    }

    /// The value of single-valued `name`; given twice, a violation.
    pub fn single(&self, name: &str, errors: &mut InvalidRequest) -> Option<&str> {
        let mut values = self.pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| &**v);
        let first = values.next();
        if first.is_some() && values.next().is_some() {
            errors.add(name, "must be given at most once");
        }
        first
    }

    /// Every value of repeatable `name`, each also split at commas (`a,b` = `a` then `b`).
    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// Validates an ad tag request. Genres unknown to the server are dropped, as over gRPC: no
/// campaign or profile can mention them.
pub fn ad_request(
    query: &Query<'_>,
    headers: &HeaderMap,
    vocabulary: &Vocabulary,
) -> Result<AdRequest, InvalidRequest> {
    debug_assert!(SINGLE.iter().all(|n| !n.contains(',')));
    let mut errors = InvalidRequest::default();
    let listener_id = query.single("listener_id", &mut errors);
    if let Some(problem) = listener_id.and_then(id_problem) {
        errors.add("listener_id", problem);
    }
    let member_id = query.single("member_id", &mut errors).unwrap_or_default();
    if !member_id.is_empty() {
        match (listener_id, id_problem(member_id)) {
            (None, _) => errors.add("member_id", "requires listener_id"),
            (Some(_), Some(problem)) => errors.add("member_id", problem),
            (Some(_), None) => {}
        }
    }
    let track_id = query.single("track_id", &mut errors).unwrap_or_default();
    if track_id.len() > MAX_ID_LEN {
        errors.add("track_id", format!("must be at most {MAX_ID_LEN} bytes"));
    }
    let track_genres = genres(query, "track_genre", MAX_TRACK_GENRES, vocabulary, &mut errors);
    let recent_genres = genres(query, "recent_genre", MAX_RECENT_GENRES, vocabulary, &mut errors);
    let device = match query.single("device", &mut errors) {
        Some(name) => device_named(name).or_else(|| {
            errors.add("device", format!("unknown device {name:?}; one of {}", DEVICE_NAMES.join(", ")));
            None
        }),
        None => user_agent(headers).and_then(device_of_user_agent),
    };
    let location = location(query, &mut errors);
    let utc_offset_minutes = match query.single("utc_offset", &mut errors) {
        None => 0,
        Some(v) => match v.parse::<i32>() {
            Ok(m) if (-MAX_UTC_OFFSET_MINUTES..=MAX_UTC_OFFSET_MINUTES).contains(&m) => m as i16,
            _ => {
                errors.add("utc_offset", format!("must be minutes within ±{MAX_UTC_OFFSET_MINUTES}"));
                0
            }
        },
    };
    let consent = consent::consent(
        query.single("gdpr", &mut errors),
        query.single("gdpr_consent", &mut errors),
        query.single("us_privacy", &mut errors),
    )
    .unwrap_or_else(|(name, error)| {
        errors.add(name, error.to_string());
        Default::default()
    });
    let max_ads = match query.single("max_ads", &mut errors) {
        None => 1,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_ADS_PER_BREAK).contains(&n) => n as u8,
            _ => {
                errors.add("max_ads", format!("must be a whole number within 1..={MAX_ADS_PER_BREAK}"));
                1
            }
        },
    };
    let max_secs = MAX_BREAK_MS / 1000;
    let max_duration_ms = match query.single("max_duration", &mut errors) {
        None => DEFAULT_MAX_DURATION_SECS * 1000,
        Some(v) => match v.parse::<u32>() {
            Ok(s) if (1..=max_secs as u32).contains(&s) => s * 1000,
            _ => {
                errors.add("max_duration", format!("must be whole seconds within 1..={max_secs}"));
                0
            }
        },
    };
    device_ip(headers, &mut errors);
    errors.into_result()?;
    Ok(AdRequest {
        listener_id: listener_id.map(Into::into),
        member_id: member_id.into(),
        track_id: track_id.into(),
        track_genres,
        recent_genres,
        device,
        location,
        consent,
        utc_offset_minutes,
        max_ads,
        max_duration_ms,
        explain: false,
    })
}

/// Whether a value is absent in effect: empty, or a macro left unsubstituted.
fn is_unset(value: &str) -> bool {
    let v = value.trim();
    v.is_empty()
        || (v.len() > 2 && v.starts_with('[') && v.ends_with(']'))
        || (v.len() > 4 && v.starts_with("%%") && v.ends_with("%%"))
}

fn genres(
    query: &Query<'_>,
    name: &str,
    max: usize,
    vocabulary: &Vocabulary,
    errors: &mut InvalidRequest,
) -> Vec<GenreId> {
    let mut genres = Vec::new();
    for (i, slug) in query.all(name).enumerate() {
        if i == max {
            errors.add(name, format!("at most {max} genres"));
            break;
        }
        match slug_problem(slug) {
            Some(problem) => errors.add(name, format!("{slug:?} {problem}")),
            None => genres.extend(vocabulary.lookup(slug)),
        }
    }
    genres
}

fn location(query: &Query<'_>, errors: &mut InvalidRequest) -> Option<GeoLocation> {
    let country = query.single("country", errors);
    let region = query.single("region", errors);
    let metro = query.single("metro", errors);
    let Some(country) = country else {
        for (name, given) in [("region", region), ("metro", metro)] {
            if given.is_some() {
                errors.add(name, "requires country");
            }
        }
        return None;
    };
    let location = GeoLocation {
        country: country.into(),
        region: region.unwrap_or_default().into(),
        metro: metro.unwrap_or_default().into(),
    };
    for (part, problem) in location_problems(&location) {
        errors.add(part, problem);
    }
    Some(location)
}

/// The device names a tag may use, as the gRPC contract's device types.
const DEVICE_NAMES: [&str; 8] =
    ["mobile", "desktop", "smart_speaker", "connected_tv", "car", "wearable", "game_console", "web"];

fn device_named(name: &str) -> Option<DeviceType> {
    Some(match name {
        "mobile" => DeviceType::Mobile,
        "desktop" => DeviceType::Desktop,
        "smart_speaker" => DeviceType::SmartSpeaker,
        "connected_tv" => DeviceType::ConnectedTv,
        "car" => DeviceType::Car,
        "wearable" => DeviceType::Wearable,
        "game_console" => DeviceType::GameConsole,
        "web" => DeviceType::Web,
        _ => return None,
    })
}

/// The device's user agent: the one a server-side caller forwards, else the requester's own.
fn user_agent(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-device-user-agent")
        .or_else(|| headers.get(http::header::USER_AGENT))
        .and_then(|v| v.to_str().ok())
}

/// The kind of device a user agent names, when it plainly names one. Checked in order: a
/// speaker or TV may also say "Android" or "Mozilla".
pub fn device_of_user_agent(ua: &str) -> Option<DeviceType> {
    const KINDS: &[(&[&str], DeviceType)] = &[
        (
            &["Alexa", "Echo", "Sonos", "HomePod", "Google Home", "Nest Audio", "CrKey"],
            DeviceType::SmartSpeaker,
        ),
        (
            &["SmartTV", "SMART-TV", "Tizen", "Web0S", "webOS", "Roku", "AppleTV", "AFT", "BRAVIA"],
            DeviceType::ConnectedTv,
        ),
        (&["CarPlay", "Android Automotive", "AAOS"], DeviceType::Car),
        (&["Watch", "Wear OS"], DeviceType::Wearable),
        (&["PlayStation", "Xbox", "Nintendo"], DeviceType::GameConsole),
        (&["Mobi", "iPhone", "iPad", "Android"], DeviceType::Mobile),
        (&["Windows NT", "Macintosh", "X11", "CrOS"], DeviceType::Desktop),
    ];
    KINDS.iter().find(|(marks, _)| marks.iter().any(|m| ua.contains(m))).map(|&(_, kind)| kind)
}

/// The device's address, checked (no geo-IP database is shipped, so it is not used to place
/// the listener: the tag's `country`/`region`/`metro` do). An explicit `X-Device-IP` must be
/// an address; the proxies' `X-Forwarded-For` is not the caller's to vouch for and is only read.
pub fn device_ip(headers: &HeaderMap, errors: &mut InvalidRequest) -> Option<IpAddr> {
    if let Some(value) = headers.get("x-device-ip") {
        return match value.to_str().ok().and_then(|v| v.trim().parse().ok()) {
            Some(ip) => Some(ip),
            None => {
                errors.add("X-Device-IP", "must be an IPv4 or IPv6 address");
                None
            }
        };
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|first| first.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ConsentState;

    fn vocabulary() -> Vocabulary {
        let v = Vocabulary::default();
        for slug in ["opera", "jazz", "hip-hop"] {
            v.intern(slug).unwrap();
        }
        v
    }

    fn parse(query: &str) -> Result<AdRequest, InvalidRequest> {
        ad_request(&Query::parse(query), &HeaderMap::new(), &vocabulary())
    }

    #[track_caller]
    fn refused(query: &str, param: &str) {
        let err = parse(query).expect_err(query);
        assert!(err.violations.iter().any(|(name, _)| name == param), "{query}: {err}");
    }

    #[test]
    fn a_full_tag_is_read() {
        let r = parse(
            "listener_id=listener-opera&member_id=kid&track_id=t1&track_genre=opera,jazz&track_genre=polka\
             &recent_genre=hip-hop&device=car&country=US&region=US-NY&metro=501&utc_offset=-300\
             &gdpr=0&us_privacy=1YNN&max_ads=3&max_duration=90&cb=12345",
        )
        .unwrap();
        assert_eq!(r.listener_id.as_deref(), Some("listener-opera"));
        assert_eq!(&*r.member_id, "kid");
        assert_eq!(r.track_genres.len(), 2, "opera and jazz; polka is unknown to the server");
        assert_eq!(r.recent_genres.len(), 1);
        assert_eq!(r.device, Some(DeviceType::Car));
        assert_eq!(r.location.as_ref().map(|l| &*l.metro), Some("501"));
        assert_eq!(r.utc_offset_minutes, -300);
        assert_eq!(r.consent, ConsentState::Unspecified);
        assert_eq!((r.max_ads, r.max_duration_ms), (3, 90_000));
    }

    #[test]
    fn defaults_are_one_ad_of_a_minute_for_an_anonymous_listener() {
        let r = parse("").unwrap();
        assert_eq!(r.listener_id, None);
        assert_eq!((r.max_ads, r.max_duration_ms), (1, DEFAULT_MAX_DURATION_SECS * 1000));
        assert_eq!(r.consent, ConsentState::Unspecified);
    }

    #[test]
    fn unsubstituted_macros_and_empty_values_are_absent() {
        let r = parse("listener_id=%5BLISTENER_ID%5D&member_id=&track_genre=%%GENRE%%&max_ads=").unwrap();
        assert_eq!(r.listener_id, None, "an unsubstituted macro is not a listener id");
        assert!(r.track_genres.is_empty());
        assert_eq!(r.max_ads, 1);
    }

    #[test]
    fn each_bad_parameter_is_named() {
        refused("max_ads=0", "max_ads");
        refused("max_ads=11", "max_ads");
        refused("max_ads=two", "max_ads");
        refused("max_duration=601", "max_duration");
        refused("max_duration=1.5", "max_duration");
        refused("listener_id=a%20b", "listener_id");
        refused("member_id=kid", "member_id");
        refused("listener_id=a&listener_id=b", "listener_id");
        refused("track_genre=Hip%20Hop", "track_genre");
        refused("track_genre=a,b,c,d,e,f,g,h,i,j,k", "track_genre");
        refused("device=fridge", "device");
        refused("country=usa", "country");
        refused("region=US-NY", "region");
        refused("country=US&region=DE-BE", "region");
        refused("utc_offset=900", "utc_offset");
        refused("gdpr=yes", "gdpr");
        refused("gdpr=1&gdpr_consent=not-a-string", "gdpr_consent");
        refused("us_privacy=YES", "us_privacy");
    }

    #[test]
    fn consent_refused_by_the_tag_reaches_the_request() {
        assert_eq!(parse("gdpr=1").unwrap().consent, ConsentState::Denied);
        assert_eq!(parse("us_privacy=1YYN").unwrap().consent, ConsentState::Denied);
    }

    #[test]
    fn the_device_comes_from_the_forwarded_user_agent_else_the_requesters() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::USER_AGENT, "Mozilla/5.0 (X11; Linux x86_64)".parse().unwrap());
        let device = |h: &HeaderMap| ad_request(&Query::parse(""), h, &vocabulary()).unwrap().device;
        assert_eq!(device(&headers), Some(DeviceType::Desktop));
        headers.insert("x-device-user-agent", "Sonos/80.1 (ZPS23)".parse().unwrap());
        assert_eq!(device(&headers), Some(DeviceType::SmartSpeaker));
        assert_eq!(
            device_of_user_agent("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)"),
            Some(DeviceType::Mobile)
        );
        assert_eq!(device_of_user_agent("Roku/DVP-12.0"), Some(DeviceType::ConnectedTv));
        assert_eq!(device_of_user_agent("curl/8.5.0"), None);
    }

    #[test]
    fn an_explicit_device_ip_must_be_an_address() {
        let mut headers = HeaderMap::new();
        headers.insert("x-device-ip", "203.0.113.7".parse().unwrap());
        let mut errors = InvalidRequest::default();
        assert_eq!(device_ip(&headers, &mut errors), Some("203.0.113.7".parse().unwrap()));
        headers.insert("x-device-ip", "not-an-ip".parse().unwrap());
        assert!(ad_request(&Query::parse(""), &headers, &vocabulary()).is_err());
        let mut forwarded = HeaderMap::new();
        forwarded.insert("x-forwarded-for", "198.51.100.2, 10.0.0.1".parse().unwrap());
        assert_eq!(device_ip(&forwarded, &mut errors), Some("198.51.100.2".parse().unwrap()));
    }
}
