//! Listeners: a profile's declared attributes, plays, and the profile's wire form.

use crate::domain::{AgeBracket, ArtistId, ConsentState, GeoLocation, ListenerProfile, Signal, UnixMillis};
use crate::grpc::pb;
use crate::grpc::status::InvalidRequest;
use crate::store::Vocabulary;

use super::campaign::{age_to_proto, campaign_id};
use super::{Checker, MAX_CLOCK_SKEW_MS, MAX_ID_LEN, MAX_NAME_LEN, millis_to_timestamp};
use crate::validation::slug_problem;

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
