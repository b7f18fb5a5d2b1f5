//! The synthetic world as the harness needs it: wire campaigns and listeners to seed the
//! server with, and what the quality measures must know about them.

use std::collections::HashMap;

use interlude::domain::{CapScope, DAY_MS, UnixMillis};
use interlude::grpc::{convert, pb};
use interlude::store::Vocabulary;
use interlude::synth::{self, GENRES, PLACES, WorldSpec};

/// One play is sent per this many synthetic plays: tastes keep their proportions while
/// seeding stays fast; lifetime counts are not the point of a load test.
const PLAYS_PER_PLAY_SENT: u32 = 10;

/// What the quality measures need to know about a campaign.
#[derive(Clone, Debug)]
pub(crate) struct CampaignFacts {
    pub(crate) affinity: Vec<String>,
    pub(crate) track: Vec<String>,
    pub(crate) house: bool,
    /// (max impressions, window ms; None = lifetime) of the campaign-scope caps.
    pub(crate) caps: Vec<(u32, Option<i64>)>,
    pub(crate) lifetime_budget_micros: i64,
}

/// One household member as the driver sees it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) listener_id: String,
    pub(crate) member_id: String,
    pub(crate) top3: Vec<&'static str>,
    pub(crate) home: usize,
    /// Whether the account consented to personalised ads: without it, only contextual
    /// (track-genre) and place-based ads may serve, whatever the taste.
    pub(crate) consented: bool,
}

/// The generated world.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) campaigns: Vec<pb::Campaign>,
    pub(crate) facts: HashMap<String, CampaignFacts>,
    pub(crate) members: Vec<Member>,
    pub(crate) spec: WorldSpec,
}

impl World {
    /// Generates the world of `spec` (deterministic per seed).
    pub(crate) fn generate(spec: WorldSpec) -> anyhow::Result<World> {
        let vocabulary = Vocabulary::default();
        let campaigns = synth::campaigns(&spec, &vocabulary)?;
        let mut facts = HashMap::with_capacity(campaigns.len());
        let names = |ids: &[interlude::domain::GenreId]| {
            ids.iter().map(|&g| vocabulary.name(g).to_string()).collect()
        };
        for c in &campaigns {
            facts.insert(
                c.id.to_string(),
                CampaignFacts {
                    affinity: names(&c.targeting.affinity_genres),
                    track: names(&c.targeting.track_genres),
                    house: !c.tier.is_paid(),
                    caps: c
                        .caps
                        .iter()
                        .filter(|cap| cap.scope == CapScope::Campaign)
                        .map(|cap| (cap.max_impressions, cap.window_ms))
                        .collect(),
                    lifetime_budget_micros: c.budget.lifetime_micros,
                },
            );
        }
        let campaigns = campaigns.iter().map(|c| convert::campaign_to_proto(c, &vocabulary)).collect();
        let mut members = Vec::with_capacity(spec.listeners);
        for i in 0..spec.listeners {
            let l = synth::listener(&spec, i);
            for (m, (member_id, _)) in l.members.iter().enumerate() {
                members.push(Member {
                    listener_id: l.profile.id.to_string(),
                    member_id: member_id.clone(),
                    top3: synth::top_genres(&l, m, 3),
                    home: l.home,
                    consented: l.profile.consent != interlude::domain::ConsentState::Denied,
                });
            }
        }
        Ok(World { campaigns, facts, members, spec })
    }

    /// The UpsertListener request of listener `index`.
    pub(crate) fn listener_request(&self, index: usize) -> pb::UpsertListenerRequest {
        let l = synth::listener(&self.spec, index);
        let (country, region, metro) = PLACES[l.home];
        pb::UpsertListenerRequest {
            listener: Some(pb::Listener {
                listener_id: l.profile.id.to_string(),
                personalized_ads: match l.profile.consent {
                    interlude::domain::ConsentState::Denied => pb::ConsentState::Denied,
                    _ => pb::ConsentState::Granted,
                } as i32,
                home: Some(pb::GeoLocation {
                    country: country.into(),
                    region: region.into(),
                    metro: metro.into(),
                }),
                ..Default::default()
            }),
        }
    }

    /// The plays of listener `index`, spread over the 30 days before `now`.
    pub(crate) fn plays(&self, index: usize, now: UnixMillis) -> Vec<pb::PlayEvent> {
        let l = synth::listener(&self.spec, index);
        let mut plays = Vec::new();
        for (member_id, genres) in &l.members {
            for &(genre, n) in genres {
                let k = n.div_ceil(PLAYS_PER_PLAY_SENT);
                for j in 0..k {
                    let at = now.0 - 30 * DAY_MS + i64::from(j) * (29 * DAY_MS / i64::from(k.max(1)));
                    plays.push(pb::PlayEvent {
                        listener_id: l.profile.id.to_string(),
                        member_id: member_id.clone(),
                        track_id: format!("t-{genre}-{j}"),
                        genres: vec![GENRES[genre].to_string()],
                        artist: String::new(),
                        played_at: Some(convert::millis_to_timestamp(UnixMillis(at))),
                        seconds_played: 180,
                        // Seeding the same world twice counts each play once.
                        play_id: format!("seed-{member_id}-{genre}-{j}"),
                    });
                }
            }
        }
        plays
    }
}
