//! Pure predicates: may this campaign serve to this listener, now, in this break?
//!
//! Rules run cheapest and most selective first, contextual before profile-based, so that the
//! rule reported for a rejection is the most useful one: a campaign that matched everything the
//! request says but needs profile data reports `Consent`, not a targeting miss.

use std::sync::Arc;

use rand::Rng;

use super::pacing::{self, Pace};
use super::{Listener, Policy, Rule, SpendView};
use crate::domain::life_stage::Lapse;
use crate::domain::{
    AdRequest, AgeBracket, Campaign, CampaignStatus, CapScope, GenreId, MINUTE_MS, Signal, SignalRequirement,
    Taste, UnixMillis,
};

/// A listener's genre counts as an affinity when it holds at least this share of their taste
/// (the retrieval index relies on the same threshold).
pub const MIN_AFFINITY_SHARE: f32 = 0.05;
/// An excluded genre rejects a listener when it holds at least this share of their taste.
pub const STRONG_AFFINITY_SHARE: f32 = 0.2;
/// A listener with fewer decayed plays than this has a *thin* history: the context (the track
/// playing, the session's recent tracks) stands in for the part of their taste we do not know
/// yet, in proportion — at 0 plays the context is all the evidence, at this many it is none.
pub const THIN_HISTORY_PLAYS: f32 = 20.0;
/// In the contextual evidence, the playing track's genres weigh this much against one recent
/// track's genre.
const PLAYING_WEIGHT: f32 = 2.0;

/// Everything about the request that every candidate is checked against.
#[derive(Debug)]
pub(super) struct Context<'a> {
    listener: Listener<'a>,
    request: &'a AdRequest,
    policy: &'a Policy,
    personalized: bool,
    now: UnixMillis,
    /// `now` shifted to the listener's local time.
    local_ms: i64,
    /// The member's taste when profile data may be used.
    taste: Option<&'a Taste>,
    /// The member's own age bracket and signals (`ListenerProfile::member_attributes`), when
    /// profile data may be used.
    age: Option<AgeBracket>,
    signals: &'a [Signal],
    total_weight: f32,
    top_weight: f32,
    /// How much of the taste evidence is history, in [0, 1]: 1 = history alone (the common
    /// case, and the engine's path before contextual evidence), 0 = the context alone (no
    /// usable history: a new listener, or one without consent).
    history_share: f32,
    /// The highest blended share of any genre (see `share`), to scale genre fit.
    top_share: f32,
}

/// A campaign that may serve, with its chosen creative and rank key.
#[derive(Clone, Debug)]
pub(super) struct Candidate<'c> {
    pub(super) campaign: &'c Arc<Campaign>,
    pub(super) creative: usize,
    pub(super) duration_ms: u32,
    pub(super) relevance: f64,
    pub(super) score: f64,
    /// Breaks exact ties of tier, score and relevance: drawn per decision, so equal campaigns
    /// rotate evenly instead of the one with the lower id always winning.
    pub(super) tie_break: u32,
}

/// The verdict on one campaign.
#[derive(Debug)]
pub(super) enum Evaluation<'c> {
    Eligible(Candidate<'c>),
    Rejected(Rule),
}

impl<'a> Context<'a> {
    pub(super) fn new(
        listener: Listener<'a>,
        request: &'a AdRequest,
        policy: &'a Policy,
        personalized: bool,
        now: UnixMillis,
    ) -> Self {
        let taste = listener.taste.filter(|_| personalized);
        let (age, signals) = match listener.profile.filter(|_| personalized) {
            Some(p) => p.member_attributes(&request.member_id),
            None => (None, &[][..]),
        };
        let total_weight = taste.map_or(0.0, Taste::total_weight);
        let top_weight = taste.map_or(0.0, Taste::top_weight);
        let mut ctx = Self {
            listener,
            request,
            policy,
            personalized,
            now,
            local_ms: now.0 + i64::from(request.utc_offset_minutes) * MINUTE_MS,
            taste,
            age,
            signals,
            total_weight,
            top_weight,
            history_share: (total_weight / THIN_HISTORY_PLAYS).clamp(0.0, 1.0),
            top_share: 0.0,
        };
        ctx.top_share = if ctx.history_share >= 1.0 {
            if total_weight > 0.0 { top_weight / total_weight } else { 0.0 }
        } else {
            let tasted = taste.into_iter().flat_map(|t| &t.genres).map(|s| ctx.share(s.genre));
            let context = request.track_genres.iter().chain(&request.recent_genres).map(|&g| ctx.share(g));
            tasted.chain(context).fold(0.0, f32::max)
        };
        ctx
    }

    /// The share of `genre` in the context's evidence: the playing track's genres and the
    /// session's recent ones, in [0, 1] (0 when the request names none).
    fn context_share(&self, genre: GenreId) -> f32 {
        let playing = &self.request.track_genres;
        let recent = &self.request.recent_genres;
        let total = PLAYING_WEIGHT * playing.len() as f32 + recent.len() as f32;
        if total <= 0.0 {
            return 0.0;
        }
        let hits = PLAYING_WEIGHT * playing.iter().filter(|&&g| g == genre).count() as f32
            + recent.iter().filter(|&&g| g == genre).count() as f32;
        hits / total
    }

    /// The genre's weight relative to the strongest genre of the evidence, in [0, 1].
    fn genre_fit(&self, genre: GenreId) -> f32 {
        if self.history_share >= 1.0 {
            if self.top_weight <= 0.0 {
                return 0.0;
            }
            return (self.taste.map_or(0.0, |t| t.weight(genre)) / self.top_weight).min(1.0);
        }
        if self.top_share <= 0.0 { 0.0 } else { (self.share(genre) / self.top_share).min(1.0) }
    }

    /// The highest genre fit a campaign first found under `genre` can reach: the blended fit,
    /// or for a history-only campaign the taste's own (the same in the common case).
    fn list_fit(&self, genre: GenreId) -> f32 {
        let taste_fit = if self.top_weight <= 0.0 {
            0.0
        } else {
            (self.taste.map_or(0.0, |t| t.weight(genre)) / self.top_weight).min(1.0)
        };
        self.genre_fit(genre).max(taste_fit)
    }

    /// The affinity index lists of the evidence a decision may use (see `share`), each with
    /// the highest genre fit a campaign first found there can reach; the playing track's
    /// genres have fit 1.
    pub(super) fn affinity_lists(&self) -> impl Iterator<Item = (GenreId, f64)> + '_ {
        let playing = &self.request.track_genres;
        let recent = &self.request.recent_genres;
        let blended = self.history_share < 1.0;
        // The taste's genres, read off its stats (a lookup per genre would make this quadratic
        // in the genres of a rich taste).
        let tasted = self.taste.into_iter().flat_map(|t| &t.genres).filter_map(move |s| {
            let history = if self.total_weight > 0.0 { s.weight / self.total_weight } else { 0.0 };
            let share = if blended {
                self.history_share * history + (1.0 - self.history_share) * self.context_share(s.genre)
            } else {
                history
            };
            (share >= MIN_AFFINITY_SHARE).then(|| {
                let fit = if playing.contains(&s.genre) {
                    1.0
                } else if blended {
                    f64::from(self.list_fit(s.genre))
                } else {
                    f64::from((s.weight / self.top_weight).min(1.0))
                };
                (s.genre, fit)
            })
        });
        // Context genres not already among the taste's (first occurrence only).
        let context =
            playing.iter().chain(recent).enumerate().filter(move |_| blended).filter_map(move |(i, &g)| {
                let earlier = playing.iter().chain(recent).take(i).any(|&e| e == g);
                let tasted = self.taste.is_some_and(|t| t.weight(g) > 0.0);
                (!earlier && !tasted).then_some(g)
            });
        let context = context
            .filter(move |&g| self.share(g) >= MIN_AFFINITY_SHARE)
            .map(move |g| (g, if playing.contains(&g) { 1.0 } else { f64::from(self.list_fit(g)) }));
        tasted
            .chain(context)
            .chain(playing.iter().filter(move |&&g| self.share(g) < MIN_AFFINITY_SHARE).map(|&g| (g, 1.0)))
    }

    /// The lists of the listener's own taste, whether or not it may be used (probed without
    /// consent, to learn whether consent was the obstacle): the listener's genres holding at
    /// least `MIN_AFFINITY_SHARE` (fit = the genre's weight relative to the top genre, since a
    /// campaign's fit is that of its best targeted genre, and it is first found under that
    /// genre), and the playing track's genres (fit 1).
    pub(super) fn taste_lists(&self) -> impl Iterator<Item = (GenreId, f64)> + '_ {
        let taste = self.listener.taste;
        let total = taste.map_or(0.0, Taste::total_weight);
        let top = taste.map_or(0.0, Taste::top_weight);
        let playing = &self.request.track_genres;
        let tasted = taste
            .into_iter()
            .flat_map(|t| &t.genres)
            .filter(move |s| total > 0.0 && s.weight / total >= MIN_AFFINITY_SHARE);
        let from_taste = tasted.map(move |s| {
            let fit = if playing.contains(&s.genre) { 1.0 } else { f64::from((s.weight / top).min(1.0)) };
            (s.genre, fit)
        });
        let weak = move |g: &GenreId| {
            taste.is_none_or(|t| total <= 0.0 || t.weight(*g) / total < MIN_AFFINITY_SHARE)
        };
        from_taste.chain(playing.iter().filter(move |g| weak(g)).map(|&g| (g, 1.0)))
    }

    /// Checks every rule; on success picks a creative (randomly among the fitting, uncapped ones)
    /// and scores the campaign.
    pub(super) fn evaluate<'c>(
        &self,
        campaign: &'c Arc<Campaign>,
        spend: &impl SpendView,
        rng: &mut impl Rng,
    ) -> Evaluation<'c> {
        if let Err(rule) = self.check_targeting(campaign) {
            return Evaluation::Rejected(rule);
        }
        // Relevance before delivery: most rejected candidates fail here, and a campaign that is
        // not relevant enough is reported as such even if it is also capped.
        let relevance = self.relevance(campaign);
        if campaign.tier.is_paid()
            && relevance < campaign.relevance_floor.unwrap_or(self.policy.relevance_floor)
        {
            return Evaluation::Rejected(Rule::RelevanceFloor);
        }
        if let Err(rule) = self.check_delivery(campaign, spend) {
            return Evaluation::Rejected(rule);
        }
        let creative = match self.pick_creative(campaign, rng) {
            Ok(i) => i,
            Err(rule) => return Evaluation::Rejected(rule),
        };
        let score = if campaign.tier.is_paid() {
            rank_score(campaign.bid_cpm_micros, relevance, self.policy.relevance_exponent)
        } else {
            relevance
        };
        Evaluation::Eligible(Candidate {
            campaign,
            creative,
            duration_ms: campaign.creatives[creative].duration_ms,
            relevance,
            score,
            tie_break: rng.random(),
        })
    }

    /// Status, flight and targeting: whether the campaign is for this listener and context.
    fn check_targeting(&self, c: &Campaign) -> Result<(), Rule> {
        let t = &c.targeting;
        let req = self.request;
        if c.status != CampaignStatus::Active {
            return Err(Rule::Status);
        }
        if !c.in_flight(self.now) {
            return Err(Rule::Flight);
        }
        // Contextual rules: what the request itself says.
        if !t.devices.is_empty() && !req.device.is_some_and(|d| t.devices.contains(&d)) {
            return Err(Rule::Device);
        }
        if !t.track_genres.is_empty() && !req.track_genres.iter().any(|g| t.track_genres.contains(g)) {
            return Err(Rule::TrackGenre);
        }
        if req.track_genres.iter().any(|g| t.exclude_track_genres.contains(g)) {
            return Err(Rule::TrackGenre);
        }
        if let Some(daypart) = t.daypart
            && !daypart.contains(self.local_ms)
        {
            return Err(Rule::Daypart);
        }
        if !t.geo_use_home && !geo_matches(c, req.location.as_ref()) {
            return Err(Rule::Geo);
        }
        // Profile-based rules.
        // An age-restricted category needs the listener's age, which is profile data.
        if !self.personalized && (t.needs_consent() || c.categories.age_restricted()) {
            return Err(Rule::Consent);
        }
        let profile = self.listener.profile;
        if t.geo_use_home && !geo_matches(c, profile.and_then(|p| p.details().home.as_ref())) {
            return Err(Rule::Geo);
        }
        let share = |g: GenreId| {
            // Real fans only: history counts in proportion to how much of it there is (so a
            // campaign that passes here is also on one of the lists `affinity_lists` gives).
            if t.affinity_from_history_only {
                self.history_share * self.history_only_share(g)
            } else {
                self.share(g)
            }
        };
        if !t.affinity_genres.is_empty() && !t.affinity_genres.iter().any(|&g| share(g) >= MIN_AFFINITY_SHARE)
        {
            return Err(Rule::AffinityGenre);
        }
        if t.exclude_affinity_genres.iter().any(|&g| share(g) >= STRONG_AFFINITY_SHARE) {
            return Err(Rule::AffinityGenre);
        }
        if !t
            .milestones
            .iter()
            .all(|m| self.taste.is_some_and(|ts| ts.lifetime_plays(m.genre) >= m.min_plays))
        {
            return Err(Rule::Milestone);
        }
        if !t.age_brackets.is_empty() && !self.age.is_some_and(|a| t.age_brackets.contains(&a)) {
            return Err(Rule::Age);
        }
        // Alcohol and gambling: never to a member whose age is unknown or under 21.
        if c.categories.age_restricted() && !self.age.is_some_and(AgeBracket::is_over_21) {
            return Err(Rule::Age);
        }
        let holds = |req: &SignalRequirement| self.signal_standing(req).is_ok();
        if !t.signals.iter().all(holds) || t.exclude_signals.iter().any(holds) {
            return Err(Rule::Signal);
        }
        Ok(())
    }

    /// Delivery: what the listener has heard, and what the advertiser can still pay.
    fn check_delivery(&self, c: &Campaign, spend: &impl SpendView) -> Result<(), Rule> {
        let history = self.listener.history;
        let heard = !history.is_blank();
        if heard && history.is_suppressed(&c.advertiser_id, &c.categories, self.now) {
            return Err(Rule::Suppressed);
        }
        // Spend is read only for campaigns that have a limit: most have none.
        if c.tier.is_paid() && c.budget.is_limited() {
            match pacing::pace(c, &spend.spend(&c.id), self.now) {
                Pace::Open => {}
                Pace::Throttled => return Err(Rule::Pacing),
                Pace::Exhausted => return Err(Rule::Budget),
            }
        }
        if !heard {
            return Ok(());
        }
        let capped = c.caps.iter().filter(|cap| cap.scope != CapScope::Creative).any(|cap| {
            let n = history.count(
                cap.scope,
                &c.id,
                &c.creatives[0].id,
                &c.advertiser_id,
                cap.window_ms,
                self.now,
            );
            n >= cap.max_impressions
        });
        if capped {
            return Err(Rule::FrequencyCap);
        }
        if self.policy.category_separation_ms > 0
            && !c.categories.is_empty()
            && history.heard_category_within(&c.categories, self.policy.category_separation_ms, self.now)
        {
            return Err(Rule::CategorySeparation);
        }
        Ok(())
    }

    fn pick_creative(&self, c: &Campaign, rng: &mut impl Rng) -> Result<usize, Rule> {
        let max = self.request.max_duration_ms;
        let fits = |i: &usize| c.creatives[*i].duration_ms <= max;
        if !(0..c.creatives.len()).any(|i| fits(&i)) {
            return Err(Rule::BreakDuration);
        }
        let history = self.listener.history;
        let uncapped = |i: &usize| {
            c.caps.iter().filter(|cap| cap.scope == CapScope::Creative).all(|cap| {
                let n = history.count(
                    CapScope::Creative,
                    &c.id,
                    &c.creatives[*i].id,
                    &c.advertiser_id,
                    cap.window_ms,
                    self.now,
                );
                n < cap.max_impressions
            })
        };
        let count = (0..c.creatives.len()).filter(fits).filter(uncapped).count();
        if count == 0 {
            return Err(Rule::FrequencyCap);
        }
        let nth = if count == 1 { 0 } else { rng.random_range(0..count) };
        let pick = (0..c.creatives.len()).filter(fits).filter(uncapped).nth(nth);
        // `nth < count` and both iterate the same filter, so there is an nth element.
        pick.ok_or(Rule::FrequencyCap)
    }

    /// How relevant the campaign is to this listener now, in [0, 1]: 60 % genre fit (the
    /// listener's affinity for the campaign's best-matching genre relative to their top genre,
    /// or 1 when the playing track has a targeted genre), 25 % geo fit (1 for a matched city,
    /// 0.8 for a region, 0.5 for a whole country), 15 % audience fit. Rules a campaign does not set count as a weak, neutral fit, so an
    /// untargeted campaign stays under the default floor: it is relevant to nobody in particular.
    pub(super) fn relevance(&self, c: &Campaign) -> f64 {
        let t = &c.targeting;
        let genre_fit = if t.targets_genres() {
            let playing = self
                .request
                .track_genres
                .iter()
                .any(|g| t.track_genres.contains(g) || t.affinity_genres.contains(g));
            if playing || t.affinity_genres.is_empty() {
                f64::from(u8::from(playing))
            } else if t.affinity_from_history_only {
                let w = t
                    .affinity_genres
                    .iter()
                    .map(|&g| self.taste.map_or(0.0, |ts| ts.weight(g)))
                    .fold(0.0, f32::max);
                if self.top_weight <= 0.0 { 0.0 } else { f64::from((w / self.top_weight).min(1.0)) }
            } else {
                f64::from(t.affinity_genres.iter().map(|&g| self.genre_fit(g)).fold(0.0, f32::max))
            }
        } else {
            NEUTRAL_GENRE_FIT
        };
        let at = if t.geo_use_home {
            self.listener.profile.and_then(|p| p.details().home.as_ref())
        } else {
            self.request.location.as_ref()
        };
        let geo_fit = match at {
            Some(at) if !t.geo_include.is_empty() => {
                let fit =
                    t.geo_include.iter().filter(|g| g.covers(at)).map(geo_specificity).fold(0.0, f64::max);
                // Only ever lowers a fit, so the retrieval bounds stay upper bounds.
                if !t.geo_use_home && self.away_from_home(at) {
                    fit * self.policy.away_geo_weight
                } else {
                    fit
                }
            }
            _ => NEUTRAL_FIT,
        };
        GENRE_WEIGHT * genre_fit + GEO_WEIGHT * geo_fit + AUDIENCE_WEIGHT * audience_fit(c)
    }

    /// Whether a consenting listener with a declared home city is somewhere else (`at`).
    fn away_from_home(&self, at: &crate::domain::GeoLocation) -> bool {
        self.personalized
            && self.listener.profile.and_then(|p| p.details().home.as_ref()).is_some_and(|home| {
                !home.metro.is_empty() && (home.country != at.country || home.metro != at.metro)
            })
    }

    /// The genre's share of the evidence of taste: history's share blended with the context's,
    /// `history_share` of the one and the rest of the other. With history enough (the common
    /// case) it is the taste's share alone; for a new listener, or one without consent, the
    /// context's alone.
    fn share(&self, genre: GenreId) -> f32 {
        let history = self.history_only_share(genre);
        if self.history_share >= 1.0 {
            return history;
        }
        self.history_share * history + (1.0 - self.history_share) * self.context_share(genre)
    }

    /// The genre's share of the listener's usable history alone (0 without consent).
    fn history_only_share(&self, genre: GenreId) -> f32 {
        if self.total_weight <= 0.0 {
            return 0.0;
        }
        self.taste.map_or(0.0, |t| t.weight(genre) / self.total_weight)
    }

    /// Whether the listener holds the signal `req` asks for, now, as far as the campaign is
    /// concerned; Err(None) = never asserted.
    fn signal_standing(&self, req: &SignalRequirement) -> Result<(), Option<Lapse>> {
        let signal = self.signals.iter().find(|s| s.name == req.signal).ok_or(None)?;
        signal.standing(self.now, req.max_age_ms).map_err(Some)
    }

    /// Which signal rule stopped `c`, in words, naming a lapsed signal's end.
    fn describe_signals(&self, c: &Campaign) -> String {
        let t = &c.targeting;
        let days = |ms: i64| ms / crate::domain::DAY_MS;
        for req in &t.signals {
            let name = &req.signal;
            match self.signal_standing(req) {
                Ok(()) => {}
                Err(None) => return format!("required signal {name} not asserted"),
                Err(Some(Lapse::OlderThanCampaignAllows { max_age_ms })) => {
                    return format!("signal {name} older than the campaign's {} days", days(max_age_ms));
                }
                Err(Some(Lapse::PastValidUntil { until })) => {
                    return format!("signal {name} ended {} days ago", days(self.now.0 - until.0));
                }
                Err(Some(Lapse::PastNaturalLife { life_ms })) => {
                    return format!("signal {name} expired: past its natural life of {} days", days(life_ms));
                }
            }
        }
        match t.exclude_signals.iter().find(|req| self.signal_standing(req).is_ok()) {
            Some(req) => format!("excluded signal {} present", req.signal),
            None => "signal rules not met".into(),
        }
    }

    /// What made an eligible campaign relevant, in words (explain only).
    pub(super) fn evidence(&self, c: &Campaign) -> &'static str {
        let t = &c.targeting;
        let playing = |genres: &[GenreId]| self.request.track_genres.iter().any(|g| genres.contains(g));
        if playing(&t.track_genres) {
            "the track playing is of a targeted genre"
        } else if t.affinity_genres.is_empty() {
            "no genre rule; matched on place or run of network"
        } else if self.history_share >= 1.0 {
            "affinity from the listener's history"
        } else if self.history_share <= 0.0 {
            if playing(&t.affinity_genres) {
                "affinity from the context: the track playing (no usable history)"
            } else {
                "affinity from the context: the session's recent tracks (no usable history)"
            }
        } else {
            "affinity from a thin history blended with the context"
        }
    }

    /// A human-readable reason for a rejection (explain only; allocates).
    pub(super) fn describe(&self, c: &Campaign, rule: Rule) -> String {
        let t = &c.targeting;
        match rule {
            Rule::Status => format!("campaign is {:?}", c.status).to_lowercase(),
            Rule::Flight => "outside its flight dates".into(),
            Rule::Device => match self.request.device {
                Some(d) => format!("device {d:?} not targeted"),
                None => "targets devices; the request names none".into(),
            },
            Rule::TrackGenre => "track genre not targeted or excluded".into(),
            Rule::Daypart => "outside its daypart in the listener's local time".into(),
            Rule::Geo if t.geo_use_home => "listener's home location not targeted".into(),
            Rule::Geo => "request location not targeted".into(),
            Rule::Consent => "uses profile data; listener has not consented to personalised ads".into(),
            Rule::AffinityGenre => {
                let share: f32 = t.affinity_genres.iter().map(|&g| self.share(g)).sum();
                format!(
                    "affinity share {share:.2} of targeted genres < {MIN_AFFINITY_SHARE} or excluded genre"
                )
            }
            Rule::Milestone => "listening milestone not reached".into(),
            Rule::Age if c.categories.age_restricted() && !self.age.is_some_and(AgeBracket::is_over_21) => {
                "age-restricted category (alcohol, gambling): the member's age is unknown or under 21".into()
            }
            Rule::Age => "age bracket not targeted".into(),
            Rule::Signal => self.describe_signals(c),
            Rule::Suppressed => "listener said \"not for me\" to this advertiser or category".into(),
            Rule::Budget => "budget exhausted".into(),
            Rule::Pacing => "ahead of its delivery curve".into(),
            Rule::FrequencyCap => "frequency cap reached".into(),
            Rule::CategorySeparation => "same category heard too recently".into(),
            Rule::AdLoad => "ad load limit reached".into(),
            Rule::RelevanceFloor => format!(
                "relevance {:.2} < floor {:.2}",
                self.relevance(c),
                c.relevance_floor.unwrap_or(self.policy.relevance_floor)
            ),
            Rule::BreakDuration => "no creative fits the break".into(),
            Rule::Outranked => "outranked".into(),
        }
    }
}

/// The fit of a rule the campaign does not set.
const NEUTRAL_FIT: f64 = 0.3;
/// The genre fit of a campaign without genre targeting.
pub(super) const NEUTRAL_GENRE_FIT: f64 = 0.25;
/// Share of relevance from the genre fit; geo and audience fits take the rest.
const GENRE_WEIGHT: f64 = 0.6;
const GEO_WEIGHT: f64 = 0.25;
const AUDIENCE_WEIGHT: f64 = 0.15;

/// The rank key of a paid ad: bid × relevance^exponent (`Policy::relevance_exponent`).
pub(super) fn rank_score(bid_cpm_micros: i64, relevance: f64, exponent: i32) -> f64 {
    bid_cpm_micros as f64 * relevance.powi(exponent)
}

/// Relevance from a genre fit and the static part.
pub(super) fn relevance_of(genre_fit: f64, static_relevance: f64) -> f64 {
    GENRE_WEIGHT * genre_fit + static_relevance
}

/// The part of relevance that depends on the campaign alone, at its best: geo fit (the most
/// specific rule it has) and audience fit. An upper bound, exact for one-place campaigns.
pub(super) fn static_relevance(c: &Campaign) -> f64 {
    let geo_fit = c.targeting.geo_include.iter().map(geo_specificity).fold(NEUTRAL_FIT, f64::max);
    GEO_WEIGHT * geo_fit + AUDIENCE_WEIGHT * audience_fit(c)
}

/// A set audience rule (age, signals, milestones) has matched if the campaign is eligible.
fn audience_fit(c: &Campaign) -> f64 {
    let t = &c.targeting;
    if t.age_brackets.is_empty() && t.signals.is_empty() && t.milestones.is_empty() {
        NEUTRAL_FIT
    } else {
        1.0
    }
}

/// How specifically a matched geo rule targets: a city is personal, a whole country barely.
fn geo_specificity(rule: &crate::domain::GeoLocation) -> f64 {
    if !rule.metro.is_empty() {
        1.0
    } else if !rule.region.is_empty() {
        0.8
    } else {
        0.5
    }
}

fn geo_matches(c: &Campaign, at: Option<&crate::domain::GeoLocation>) -> bool {
    let t = &c.targeting;
    if t.geo_include.is_empty() && t.geo_exclude.is_empty() {
        return true;
    }
    let Some(at) = at else { return false };
    (t.geo_include.is_empty() || t.geo_include.iter().any(|g| g.covers(at)))
        && !t.geo_exclude.iter().any(|g| g.covers(at))
}
