//! The decision engine: picks the ads for one break. Pure and synchronous.
//!
//! Invariant: nothing here does I/O or knows a wire type; time (`now`) and randomness (`rng`)
//! are passed in, so the same inputs and seed always give the same decision.

use std::sync::Arc;

use rand::Rng;

use crate::domain::{
    AdRequest, Campaign, CampaignId, ConsentState, DeliveryHistory, HOUR_MS, ListenerProfile, Taste, Tier,
    UnixMillis,
};

pub mod catalog;
pub mod eligibility;
pub mod pacing;
mod ranking;

pub use catalog::CatalogSnapshot;
use catalog::List;
use eligibility::Evaluation;

/// Server-wide rules of the engine, from the config.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Paid ads less relevant than this are not served (campaigns may override).
    pub relevance_floor: f64,
    /// At most this many ads per listener per rolling hour.
    pub max_ads_per_hour: u32,
    /// No two ads of one category within this window, across breaks.
    pub category_separation_ms: i64,
    /// How much relevance counts against money: a paid ad's rank key is
    /// bid × relevance^relevance_exponent (1..=4; see `eligibility::rank_score`).
    pub relevance_exponent: i32,
    /// A listener away from their declared home (consenting, home city known, the request from
    /// another city): the request location's geo fit counts this much. Where someone lives is
    /// stronger evidence for home-bound products ("flights from NYC") than where a request
    /// comes from, so a home match outranks an equal match on the trip's city.
    pub away_geo_weight: f64,
}

/// The default `Policy::away_geo_weight`.
pub const DEFAULT_AWAY_GEO_WEIGHT: f64 = 0.8;

impl Default for Policy {
    fn default() -> Self {
        Self {
            relevance_floor: 0.35,
            max_ads_per_hour: 8,
            category_separation_ms: 10 * 60_000,
            relevance_exponent: DEFAULT_RELEVANCE_EXPONENT,
            away_geo_weight: DEFAULT_AWAY_GEO_WEIGHT,
        }
    }
}

/// Squared, an ad half as relevant needs four times the bid to win: listeners would rather hear
/// nothing than something that is not for them, so a high bid must not buy its way past a much
/// better fit — while money still counts. What the exponent does to quality in the synthetic
/// world is in docs/PERFORMANCE.md; it is the business's choice of relevance against revenue.
pub const DEFAULT_RELEVANCE_EXPONENT: i32 = 2;

/// The period of the holds on campaigns held back by their pacing or budget
/// (`CatalogSnapshot::hold`): a hold ends at the latest on the next multiple of this, when a
/// decision looks at the campaign's spend again. Spend can fall as reservations expire or the
/// day turns, so a held campaign may serve at most this much later than it could have.
pub const PACE_HOLD_MS: i64 = 250;

/// What a campaign has spent so far, as the engine needs it for budget checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    pub lifetime_micros: i64,
    pub today_micros: i64,
    pub impressions: u64,
    /// Decided but not yet recorded (see `pacing`): counted against every hard limit.
    pub reserved_micros: i64,
    pub reserved_impressions: u64,
}

/// Read access to campaign spend; implemented by the delivery store and by test fixtures.
pub trait SpendView {
    /// Spend of `campaign` so far (zero when it never served).
    fn spend(&self, campaign: &CampaignId) -> Spend;
}

/// No spend anywhere (anonymous tests, benchmarks).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSpend;

impl SpendView for NoSpend {
    fn spend(&self, _: &CampaignId) -> Spend {
        Spend::default()
    }
}

/// Who the decision is for: the listener's profile, the member's taste, and their history.
#[derive(Clone, Copy, Debug)]
pub struct Listener<'a> {
    /// None = anonymous or unknown listener.
    pub profile: Option<&'a ListenerProfile>,
    /// The household member's taste (None = no plays yet).
    pub taste: Option<&'a Taste>,
    pub history: &'a DeliveryHistory,
}

/// How the break was filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    Paid,
    House,
    Empty,
}

/// Why no paid ad was served, or `Served`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Served,
    // The rest in pipeline order: a later stage is "further" (see `Rule::reason`).
    NoCandidates,
    NoConsent,
    BelowRelevanceFloor,
    Suppressed,
    BudgetExhausted,
    FrequencyCapped,
    DoesNotFitBreak,
    AdLoadLimit,
}

/// The rule a candidate was stopped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    Status,
    Flight,
    AffinityGenre,
    TrackGenre,
    Milestone,
    Geo,
    Device,
    Age,
    Daypart,
    Signal,
    Consent,
    Suppressed,
    FrequencyCap,
    CategorySeparation,
    AdLoad,
    Budget,
    /// Ahead of its delivery curve (pacing): held back for now.
    Pacing,
    RelevanceFloor,
    BreakDuration,
    Outranked,
}

impl Rule {
    /// The outcome reported when this rule stopped the paid candidate that got furthest.
    fn reason(self) -> Reason {
        match self {
            Rule::Status
            | Rule::Flight
            | Rule::AffinityGenre
            | Rule::TrackGenre
            | Rule::Milestone
            | Rule::Geo
            | Rule::Device
            | Rule::Age
            | Rule::Daypart
            | Rule::Signal => Reason::NoCandidates,
            Rule::Consent => Reason::NoConsent,
            Rule::Suppressed => Reason::Suppressed,
            Rule::Budget | Rule::Pacing => Reason::BudgetExhausted,
            Rule::FrequencyCap | Rule::CategorySeparation => Reason::FrequencyCapped,
            Rule::RelevanceFloor => Reason::BelowRelevanceFloor,
            Rule::BreakDuration | Rule::Outranked => Reason::DoesNotFitBreak,
            Rule::AdLoad => Reason::AdLoadLimit,
        }
    }
}

/// One ad chosen for the break.
#[derive(Clone, Debug)]
pub struct SelectedAd {
    pub campaign: Arc<Campaign>,
    /// Index into `campaign.creatives`.
    pub creative: usize,
    /// In [0, 1].
    pub relevance: f64,
    /// The rank key: bid × relevance^exponent (relevance alone for house ads).
    pub score: f64,
}

/// Why one candidate did or did not serve (explain only).
#[derive(Clone, Debug, PartialEq)]
pub struct TraceEntry {
    pub campaign_id: CampaignId,
    pub tier: Tier,
    /// None = served.
    pub rejected_by: Option<Rule>,
    pub relevance: f64,
    pub score: f64,
    pub detail: String,
}

/// The engine's answer for one break.
#[derive(Clone, Debug)]
pub struct Decision {
    /// In play order: highest tier and score first.
    pub ads: Vec<SelectedAd>,
    pub fill: Fill,
    pub reason: Reason,
    /// Empty unless the request asked to explain.
    pub trace: Vec<TraceEntry>,
}

/// Decides one ad break.
///
/// Paid candidates are walked best rank first from the snapshot's indexes, and the walk stops
/// once no remaining campaign could enter the ranking. When explaining, every other campaign is
/// evaluated afterwards for the trace only, so explaining never changes the decision.
pub fn decide(
    catalog: &CatalogSnapshot,
    listener: Listener<'_>,
    request: &AdRequest,
    policy: &Policy,
    spend: &impl SpendView,
    now: UnixMillis,
    rng: &mut impl Rng,
) -> Decision {
    let explain = request.explain;
    let mut trace = Vec::new();
    // Ad load counts the ads heard in the last hour and those decided but not yet heard, and
    // bounds this break by what is left of it.
    let heard = listener.history.impressions_within(HOUR_MS, now);
    let max_ads = request
        .max_ads
        .min(u8::try_from((policy.max_ads_per_hour as usize).saturating_sub(heard)).unwrap_or(u8::MAX));
    if max_ads == 0 {
        if explain {
            let detail = format!("{} ads in the last hour", policy.max_ads_per_hour);
            trace.extend(catalog.campaigns().iter().map(|c| rejected(c, Rule::AdLoad, detail.clone())));
        }
        return Decision { ads: Vec::new(), fill: Fill::Empty, reason: Reason::AdLoadLimit, trace };
    }

    let personalized = personalization_allowed(listener.profile, request.consent);
    let ctx = eligibility::Context::new(listener, request, policy, personalized, now);
    let mut furthest: Option<Rule> = None;
    let mut visited = Vec::new();
    let country = request.location.as_ref().map(|l| &*l.country);
    // Without consent only the affinity campaigns that may serve on the context are walked
    // (walking all of them would cost a decision many consent rejections: 3 → 232 µs at 100k
    // campaigns, measured); the other lists still are, and report a campaign the listener would
    // match but for consent.
    let affinity = || catalog::Affinity { genres: ctx.affinity_lists(), consented: personalized };
    // Campaigns held back by pacing or budget cannot serve: the merge passes over them unseen
    // (not when explaining, which names every campaign's rule).
    let skip_held_at = (!explain).then_some(now);
    let mut ranked =
        catalog.retrieve(affinity(), &request.track_genres, country, listener.profile, policy, skip_held_at);

    let width = ranking::search_width(max_ads);
    let mut threshold = ranking::Threshold::new(width);
    let mut paid = Vec::with_capacity(width);
    let mut cut_at = None;
    let mut skipped_held = false;
    for catalog::Retrieved { slot, tier, bound } in ranked.by_ref() {
        if !threshold.admits(tier, bound) {
            cut_at = Some(slot);
            break;
        }
        if explain {
            visited.push(slot);
        } else if catalog.is_held(slot, now) {
            // Held by an earlier candidate of this very walk (it sits in several lists).
            skipped_held = true;
            continue;
        }
        let campaign = catalog.get(slot);
        match ctx.evaluate(campaign, spend, rng) {
            Evaluation::Eligible(candidate) => {
                threshold.insert(tier, candidate.score);
                paid.push(candidate);
            }
            Evaluation::Rejected(rule) => {
                if furthest.is_none_or(|f| rule.reason() > f.reason()) {
                    furthest = Some(rule);
                }
                if matches!(rule, Rule::Pacing | Rule::Budget)
                    && let Some(until) =
                        pacing::held_until(campaign, &spend.spend(&campaign.id), now, PACE_HOLD_MS)
                {
                    catalog.hold(slot, until);
                }
                if explain {
                    trace.push(rejected(campaign, rule, ctx.describe(campaign, rule)));
                }
            }
        }
    }

    let chosen = ranking::best_break(&mut paid, max_ads, request.max_duration_ms);
    if chosen.is_empty() && (skipped_held || ranked.skipped_held()) {
        // The reason for an unfilled break must not depend on the memo: look at the campaigns
        // it skipped (they may have got further than any other before pacing stopped them).
        for r in catalog.retrieve(affinity(), &request.track_genres, country, listener.profile, policy, None)
        {
            if !catalog.is_held(r.slot, now) {
                continue;
            }
            if let Evaluation::Rejected(rule) = ctx.evaluate(catalog.get(r.slot), spend, rng)
                && furthest.is_none_or(|f| rule.reason() > f.reason())
            {
                furthest = Some(rule);
            }
        }
    }

    if chosen.is_empty() && !personalized {
        // Learn whether a campaign of the listener's own taste would have matched but for
        // consent (the reason to report): those that need it were not walked.
        'probe: for (genre, _) in ctx.taste_lists() {
            for entry in catalog.affinity_lists(genre).flat_map(List::entries) {
                let campaign = catalog.get(entry.slot);
                if !campaign.targeting.needs_consent() {
                    continue;
                }
                if let Evaluation::Rejected(rule) = ctx.evaluate(campaign, spend, rng) {
                    if furthest.is_none_or(|f| rule.reason() > f.reason()) {
                        furthest = Some(rule);
                    }
                    if rule == Rule::Consent {
                        break 'probe;
                    }
                }
            }
        }
    }

    // House ads fill only a break no paid ad serves: evaluated then, or for the trace.
    let mut house = Vec::new();
    if chosen.is_empty() || explain {
        for &slot in catalog.house() {
            let campaign = catalog.get(slot);
            match ctx.evaluate(campaign, spend, rng) {
                Evaluation::Eligible(candidate) => house.push(candidate),
                Evaluation::Rejected(rule) if explain => {
                    trace.push(rejected(campaign, rule, ctx.describe(campaign, rule)));
                }
                Evaluation::Rejected(_) => {}
            }
        }
    }
    if chosen.is_empty() && furthest.is_none_or(|f| f.reason() < Reason::BelowRelevanceFloor) {
        // No paid ad: learn whether a campaign set aside as below its floor got that far, so
        // the reason says "not relevant enough" rather than "nothing targets you".
        for entry in ranked.below_floor() {
            if let Evaluation::Rejected(rule) = ctx.evaluate(catalog.get(entry.slot), spend, rng) {
                if furthest.is_none_or(|f| rule.reason() > f.reason()) {
                    furthest = Some(rule);
                }
                if rule == Rule::RelevanceFloor {
                    break;
                }
            }
        }
    }
    let (fill, reason, ads) = if !chosen.is_empty() {
        (Fill::Paid, Reason::Served, chosen)
    } else {
        let reason = furthest.map_or(Reason::NoCandidates, Rule::reason);
        match ranking::best_house(&house) {
            Some(i) => (Fill::House, reason, vec![i]),
            None => (Fill::Empty, reason, Vec::new()),
        }
    };
    let pool = if fill == Fill::House { &house } else { &paid };

    if explain {
        let rest: Vec<catalog::Slot> = cut_at.into_iter().chain(ranked.map(|r| r.slot)).collect();
        explain_rest(catalog, &ctx, spend, rng, (&visited, &rest, &threshold), &mut trace);
        for (i, c) in pool.iter().enumerate() {
            let served = ads.contains(&i);
            trace.push(TraceEntry {
                campaign_id: c.campaign.id.clone(),
                tier: c.campaign.tier,
                rejected_by: (!served).then_some(Rule::Outranked),
                relevance: c.relevance,
                score: c.score,
                detail: if served {
                    format!("served: {}", ctx.evidence(c.campaign))
                } else {
                    "a better set filled the break".into()
                },
            });
        }
        let other = if fill == Fill::House { &paid } else { &house };
        for c in other {
            trace.push(TraceEntry {
                campaign_id: c.campaign.id.clone(),
                tier: c.campaign.tier,
                rejected_by: Some(Rule::Outranked),
                relevance: c.relevance,
                score: c.score,
                detail: if c.campaign.tier.is_paid() {
                    "a better set filled the break".into()
                } else {
                    "house ads fill only when no paid ad serves".into()
                },
            });
        }
        trace.sort_by(|a, b| a.campaign_id.cmp(&b.campaign_id));
    }
    let ads = ads
        .into_iter()
        .map(|i| {
            let c = &pool[i];
            SelectedAd {
                campaign: Arc::clone(c.campaign),
                creative: c.creative,
                relevance: c.relevance,
                score: c.score,
            }
        })
        .collect();
    Decision { ads, fill, reason, trace }
}

/// Traces the paid campaigns the decision did not look at: those retrieved but ranked below the
/// cut (`rest`), and those no index retrieved — which must all be ineligible.
fn explain_rest(
    catalog: &CatalogSnapshot,
    ctx: &eligibility::Context<'_>,
    spend: &impl SpendView,
    rng: &mut impl Rng,
    (visited, rest, threshold): (&[catalog::Slot], &[catalog::Slot], &ranking::Threshold),
    trace: &mut Vec<TraceEntry>,
) {
    let house = catalog.house();
    for slot in 0..catalog.len() as catalog::Slot {
        if visited.contains(&slot) || house.contains(&slot) {
            continue;
        }
        let campaign = catalog.get(slot);
        match ctx.evaluate(campaign, spend, rng) {
            Evaluation::Eligible(c) => {
                debug_assert!(
                    rest.contains(&slot),
                    "retrieval must return every eligible campaign: {}",
                    campaign.id
                );
                debug_assert!(
                    !threshold.admits(campaign.tier, c.score),
                    "the cut dropped a contender: {}",
                    campaign.id
                );
                trace.push(TraceEntry {
                    campaign_id: campaign.id.clone(),
                    tier: campaign.tier,
                    rejected_by: Some(Rule::Outranked),
                    relevance: c.relevance,
                    score: c.score,
                    detail: "ranked below the candidates searched".into(),
                });
            }
            Evaluation::Rejected(rule) => trace.push(rejected(campaign, rule, ctx.describe(campaign, rule))),
        }
    }
}

/// Profile data may be used only when neither the request nor the stored profile denies it and
/// at least one of them grants it. A listener we have no profile for has stored nothing: the
/// request's GRANTED counts (a new account that consented in the player), and there is simply
/// no history yet.
pub fn personalization_allowed(profile: Option<&ListenerProfile>, request: ConsentState) -> bool {
    let stored = profile.map_or(ConsentState::Unspecified, |p| p.consent);
    request != ConsentState::Denied
        && stored != ConsentState::Denied
        && (request == ConsentState::Granted || stored == ConsentState::Granted)
}

fn rejected(campaign: &Campaign, rule: Rule, detail: String) -> TraceEntry {
    TraceEntry {
        campaign_id: campaign.id.clone(),
        tier: campaign.tier,
        rejected_by: Some(rule),
        relevance: 0.0,
        score: 0.0,
        detail,
    }
}

#[cfg(test)]
pub(crate) mod tests;
