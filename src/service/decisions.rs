//! Decisions and their events: `decide` picks a break's ads and signs their tokens; `record`
//! verifies and counts what players report. Both edges (gRPC, VAST) call these.

use std::sync::Arc;

use crate::decision::{self, Decision, Fill, Listener, Reason};
use crate::domain::{
    AdId, AdRequest, Campaign, CampaignId, EventKind, HistoryChange, ImpressionRecord, ListenerId, Tier,
    UnixMillis,
};
use crate::state::AppState;
use crate::store::StoreError;
use crate::store::delivery::{Applied, CountedEvent, EventOutcome, HistoryKey, VerifiedEvent};
use crate::store::delivery::{changes_history, lasting_changes, remember};
use crate::store::durable::Change;
use crate::store::shared::{Shared, SharedError, event_field};
use crate::telemetry;
use crate::token::{ImpressionClaims, TokenError};
use crate::validation::InvalidRequest;

use super::ServiceError;

/// Client clocks may run this far ahead of ours.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60_000;

/// The decision and event service over the shared state. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Decisions {
    state: AppState,
    /// Decision outcome counters, registered when the service is made.
    outcomes: Arc<telemetry::DecisionMetrics>,
}

/// A decided break: the engine's decision, and for each of its ads (same order) what the
/// player needs to report it.
#[derive(Debug)]
pub struct Served {
    pub decision: Decision,
    pub ads: Vec<ServedAd>,
}

/// The identity of one decided ad.
#[derive(Clone, Debug)]
pub struct ServedAd {
    pub id: AdId,
    /// Binds the ad, its listener, campaign, creative and price: sent back with its events.
    pub token: String,
    /// What its impression bills (0 for house ads).
    pub price_micros: i64,
}

/// One reported event, valid in shape; its token is verified by `record`.
#[derive(Clone, Copy, Debug)]
pub struct EventInput<'a> {
    /// The caller's id of the event, for its own retries.
    pub event_id: &'a str,
    pub kind: EventKind,
    /// The VAST error code of an `EventKind::Error` (100..=999); 0 otherwise.
    pub error_code: u16,
    pub token: &'a str,
    pub occurred_at: Option<UnixMillis>,
}

/// One event of a batch: valid in shape, or what is wrong with it.
pub type EventShape<'a> = Result<EventInput<'a>, InvalidRequest>;

/// What became of a batch of events.
#[derive(Debug)]
pub struct Recorded {
    pub accepted: u32,
    pub duplicates: u32,
    /// One per event, in order; None = rejected (see `rejections`).
    pub outcomes: Vec<Option<EventOutcome>>,
    pub rejections: Vec<Rejection>,
}

/// Why one event of a batch was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub index: usize,
    /// The field at fault, e.g. "events[2].impression_token".
    pub field: String,
    pub reason: String,
}

/// Every fill, reason and tier in discriminant order: the label index of a value is `as usize`.
const FILLS: [Fill; 3] = [Fill::Paid, Fill::House, Fill::Empty];
const REASONS: [Reason; 9] = [
    Reason::Served,
    Reason::NoCandidates,
    Reason::NoConsent,
    Reason::BelowRelevanceFloor,
    Reason::Suppressed,
    Reason::BudgetExhausted,
    Reason::FrequencyCapped,
    Reason::DoesNotFitBreak,
    Reason::AdLoadLimit,
];
const TIERS: [Tier; 4] = [Tier::Sponsorship, Tier::Standard, Tier::Remnant, Tier::House];

impl Decisions {
    /// A service over `state`.
    pub fn new(state: AppState) -> Self {
        let outcomes = telemetry::DecisionMetrics::new(
            &FILLS.map(fill_label),
            &REASONS.map(reason_label),
            &TIERS.map(tier_label),
        );
        Self { state, outcomes: Arc::new(outcomes) }
    }

    /// The state this service works on.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Decides one break for `request`. With a store, a listener not in memory is read off
    /// the runtime's thread first.
    pub async fn decide(&self, request: &AdRequest) -> Result<Served, ServiceError> {
        if let Some(store) = &self.state.shared {
            return self.decide_shared(store, request).await;
        }
        if self.state.persists()
            && let Some(id) = request.listener_id.as_deref()
        {
            self.state.warm(id).await?;
        }
        self.decide_now(request)
    }

    /// What the engine would decide for `request` now, with the trace of every campaign
    /// (explain), as a dry run: no budget is reserved, no ad held, no token signed and no
    /// outcome counted — the ad-ops console's explain, which must not change what it explains.
    pub async fn preview(&self, request: &AdRequest) -> Result<Decision, ServiceError> {
        if self.state.persists()
            && let Some(id) = request.listener_id.as_deref()
        {
            self.state.warm(id).await?;
        }
        let explained = AdRequest { explain: true, ..request.clone() };
        Ok(self.engine(&explained, super::now())?.0)
    }

    /// The engine's decision for `request` at `now`, and the history it was decided on.
    fn engine(
        &self,
        request: &AdRequest,
        now: UnixMillis,
    ) -> Result<(Decision, Option<HistoryKey>), ServiceError> {
        self.engine_without(request, now, &[])
    }

    /// `engine`, with the budgets of `exhausted` taken as spent (their share could not be held).
    fn engine_without(
        &self,
        request: &AdRequest,
        now: UnixMillis,
        exhausted: &[CampaignId],
    ) -> Result<(Decision, Option<HistoryKey>), ServiceError> {
        let state = &self.state;
        let profile = match request.listener_id.as_deref() {
            Some(id) => state.listeners.get(id)?,
            None => None,
        };
        // Caps follow the resolved listener; an id we have no profile for still gets its own
        // history, so an unknown listener does not hear the same ad again and again.
        let key = request.listener_id.as_deref().map(|id| HistoryKey {
            listener: profile.as_ref().map_or_else(|| ListenerId::from(id), |p| p.id.clone()),
            member: request.member_id.clone(),
        });
        let snapshot = state.catalog.snapshot();
        let decision = state.delivery.with_history(key.as_ref(), |history| {
            let listener = Listener {
                profile: profile.as_deref(),
                taste: profile.as_deref().and_then(|p| p.member(&request.member_id)),
                history,
            };
            let spend = Exhausted { spend: state.delivery.spend_at(now), exhausted };
            decision::decide(&snapshot, listener, request, &state.policy, &spend, now, &mut rand::rng())
        })?;
        Ok((decision, key))
    }

    fn decide_now(&self, request: &AdRequest) -> Result<Served, ServiceError> {
        let state = &self.state;
        let now = super::now();
        let (mut decision, key) = self.engine(request, now)?;
        // The engine saw each budget free; taking its share is checked again, atomically per
        // campaign, so that decisions running at once on several threads cannot all take the
        // last of it. An ad whose budget went meanwhile is not served.
        decision.ads.retain(|ad| {
            !holds_budget(&ad.campaign) || state.delivery.reserve_within_limits(&ad.campaign, now)
        });
        let ad_ids = fresh_ad_ids(&decision);
        self.serve(decision, key, ad_ids, now)
    }

    /// `decide` in cluster mode: the listener is read from the shared store first (this
    /// replica's copy when it does not answer), and each limited budget's share is held there,
    /// across every replica; an ad whose share cannot be held is not served (fail closed).
    async fn decide_shared(&self, store: &Shared, request: &AdRequest) -> Result<Served, ServiceError> {
        if let Some(id) = request.listener_id.as_deref() {
            self.state.warm(id).await?;
        }
        let now = super::now();
        let mut exhausted = Vec::new();
        loop {
            let (mut decision, key) = self.engine_without(request, now, &exhausted)?;
            let mut ad_ids = fresh_ad_ids(&decision);
            let mut keep = Vec::with_capacity(ad_ids.len());
            for (ad, id) in decision.ads.iter().zip(&mut ad_ids) {
                let c = &ad.campaign;
                let held = !holds_budget(c)
                    || match store.reserve(c, *id, now).await {
                        // The ad takes the id its share is held under.
                        Ok(Some(held_as)) => {
                            *id = held_as;
                            true
                        }
                        Ok(None) => false,
                        Err(error) => {
                            telemetry::record_shared_reserve_failure();
                            tracing::warn!(%error, campaign_id = %c.id, "budget share not held: ad not served");
                            false
                        }
                    };
                if !held {
                    exhausted.push(c.id.clone());
                }
                keep.push(held);
            }
            // A break none of whose shares could be held is decided again without those
            // campaigns (another may serve); one that holds some is served with what it holds.
            if !keep.is_empty() && !keep.contains(&true) && exhausted.len() <= MAX_REDECISIONS {
                continue;
            }
            let mut kept = keep.iter();
            decision.ads.retain(|_| kept.next().copied().unwrap_or(false));
            let mut kept = keep.iter();
            ad_ids.retain(|_| kept.next().copied().unwrap_or(false));
            return self.serve(decision, key, ad_ids, now);
        }
    }

    /// Finishes a decided break whose budgets are held: holds its ads in the listener's
    /// history, counts the outcome and signs each ad's token.
    fn serve(
        &self,
        mut decision: Decision,
        key: Option<HistoryKey>,
        ad_ids: Vec<AdId>,
        now: UnixMillis,
    ) -> Result<Served, ServiceError> {
        let state = &self.state;
        if decision.ads.is_empty() && decision.fill == Fill::Paid {
            decision.fill = Fill::Empty;
            decision.reason = Reason::BudgetExhausted;
        }
        if let Some(key) = &key
            && !decision.ads.is_empty()
        {
            // Until their impressions arrive, the break's ads count against ad load and caps.
            state.delivery.hold(
                key,
                decision
                    .ads
                    .iter()
                    .zip(&ad_ids)
                    .map(|(ad, &id)| (id, ImpressionRecord::of(&ad.campaign, ad.creative, now))),
            )?;
        }
        self.outcomes.record(
            decision.fill as usize,
            decision.reason as usize,
            decision.ads.iter().map(|a| a.campaign.tier as usize),
        );
        let (listener, member) = key.as_ref().map_or(("", ""), |k| (k.listener.as_str(), &*k.member));
        let ads = decision
            .ads
            .iter()
            .zip(ad_ids)
            .map(|(ad, id)| {
                let c = &ad.campaign;
                let price_micros = if c.tier.is_paid() { c.price_micros() } else { 0 };
                let token = state.signer.sign(&ImpressionClaims {
                    ad: id,
                    legacy: false,
                    listener,
                    member,
                    campaign: c.id.as_str(),
                    creative: c.creatives[ad.creative].id.as_str(),
                    price_micros,
                    decided_at: now,
                });
                ServedAd { id, token, price_micros }
            })
            .collect();
        Ok(Served { decision, ads })
    }

    /// Verifies and applies a batch of events. Each event stands on its own: a bad one is
    /// rejected with its reason and the rest land, so one event that can never be valid (its
    /// creative removed, its token expired) does not sink its batch on every retry. Only a
    /// batch with nothing valid is refused. Answers once what it applied is durable.
    pub async fn record(&self, events: &[EventShape<'_>]) -> Result<Recorded, ServiceError> {
        let state = &self.state;
        let now = super::now();
        let mut errors = InvalidRequest::default();
        let mut rejections = Vec::new();
        let mut reject = |index: usize, field: String, reason: String| {
            errors.add(field.clone(), reason.clone());
            rejections.push(Rejection { index, field, reason });
        };
        let mut verified = Vec::with_capacity(events.len());
        let mut verified_at = Vec::with_capacity(events.len());
        // A token names a campaign that served, so it is in the snapshot that decided it or a
        // later one (campaigns are never removed, only archived).
        let mut catalog = state.catalog.snapshot();
        // Each token verified once (an HMAC): the claims of every event in shape, in order.
        let claims: Vec<Option<Result<ImpressionClaims, TokenError>>> =
            events.iter().map(|e| e.as_ref().ok().map(|e| state.signer.verify(e.token, now))).collect();
        if let Some(store) = &state.shared {
            // Cluster mode: a campaign created on another replica moments ago may not have
            // reached this one's catalog yet: it is read from the shared store, its events
            // not refused.
            let unknown: Vec<String> = claims
                .iter()
                .flatten()
                .filter_map(|c| c.as_ref().ok())
                .filter(|c| catalog.find(&c.campaign).is_none())
                .map(|c| c.campaign.clone())
                .collect();
            if !unknown.is_empty() {
                state.take_up_campaigns(store, unknown).await?;
                catalog = state.catalog.snapshot();
            }
        }
        for (i, (e, claims)) in events.iter().zip(claims).enumerate() {
            let e = match e {
                Ok(e) => e,
                Err(invalid) => {
                    for (field, reason) in &invalid.violations {
                        reject(i, field.clone(), reason.clone());
                    }
                    continue;
                }
            };
            // Some for every event in shape (see `claims`).
            let claims = match claims.unwrap_or(Err(TokenError::Malformed)) {
                Ok(claims) => claims,
                Err(error) => {
                    reject(i, format!("events[{i}].impression_token"), error.to_string());
                    continue;
                }
            };
            let Some(campaign) = catalog.find(&claims.campaign).cloned() else {
                reject(
                    i,
                    format!("events[{i}].impression_token"),
                    "names a campaign this server does not have".into(),
                );
                continue;
            };
            let Some(creative_index) =
                campaign.creatives.iter().position(|c| c.id.as_str() == claims.creative)
            else {
                reject(
                    i,
                    format!("events[{i}].impression_token"),
                    "names a creative the campaign no longer has".into(),
                );
                continue;
            };
            let at = e.occurred_at.unwrap_or(now);
            if at.0 < claims.decided_at.0 - MAX_CLOCK_SKEW_MS || at.0 > now.0 + MAX_CLOCK_SKEW_MS {
                reject(i, format!("events[{i}].occurred_at"), "must lie between the decision and now".into());
                continue;
            }
            verified_at.push(i);
            verified.push(VerifiedEvent {
                ad: claims.ad,
                legacy: claims.legacy,
                event_id: e.event_id.into(),
                kind: e.kind,
                error_code: e.error_code,
                // A player clock ahead of ours is tolerated, not believed: accounted at our
                // now, so an event just before midnight cannot count towards tomorrow's
                // budget, nor an impression stay in a cap's window longer than it should.
                at: at.min(now),
                // An ad decided before its listener was erased counts for the advertiser only.
                history: (!claims.listener.is_empty()
                    && !state.delivery.erased_since(
                        || state.signer.listener_fingerprint(&claims.listener),
                        claims.decided_at,
                    ))
                .then(|| HistoryKey {
                    listener: claims.listener.as_str().into(),
                    member: claims.member.as_str().into(),
                }),
                campaign,
                creative_index,
                price_micros: claims.price_micros,
                decided_at: claims.decided_at,
            });
        }
        if verified.is_empty() {
            errors.into_result()?;
        }
        let applied = match &state.shared {
            Some(store) => self.record_shared(store, &verified).await?,
            None => {
                // The histories these events change stay in memory until their commit (read
                // from the store off the runtime's thread when they are not there).
                let pins = state
                    .pin_histories(
                        verified.iter().filter_map(|e| e.history.as_ref().map(|k| k.listener.clone())),
                    )
                    .await?;
                let applied = state
                    .write(|| {
                        let applied = state.delivery.apply(&verified, state.suppression, now);
                        if !state.persists() {
                            return Ok((applied, Vec::new()));
                        }
                        let changes = self.changes_of(&verified, &applied);
                        Ok::<_, ServiceError>((applied, changes))
                    })
                    .await?;
                drop(pins);
                applied
            }
        };
        let replays = applied.outcomes.iter().filter(|&&o| o == EventOutcome::AlreadyCounted).count() as u32;
        telemetry::record_events(applied.accepted, applied.duplicates - replays, replays);
        for e in verified.iter().zip(&applied.outcomes).filter(|(_, o)| **o == EventOutcome::Accepted) {
            if e.0.kind == EventKind::Error {
                telemetry::record_playback_error(e.0.error_code);
            }
        }
        let mut outcomes = vec![None; events.len()];
        for (&i, &outcome) in verified_at.iter().zip(&applied.outcomes) {
            outcomes[i] = Some(outcome);
        }
        Ok(Recorded { accepted: applied.accepted, duplicates: applied.duplicates, outcomes, rejections })
    }

    /// Applies verified events in cluster mode: each is counted once against its campaign in
    /// the shared store (its dedupe in the same script), then applied once to its listener's
    /// histories there; answers once a replica of every master involved holds it. Any failure
    /// fails the batch (UNAVAILABLE): nothing unacknowledged is claimed, and the caller's
    /// retry, with the same event ids, completes what was done without doing anything twice.
    async fn record_shared(
        &self,
        store: &Shared,
        verified: &[VerifiedEvent],
    ) -> Result<Applied, ServiceError> {
        let dedupe_ms = self.state.dedupe_window.as_millis() as i64;
        let counted =
            futures_util::future::try_join_all(verified.iter().map(|e| store.count_event(e, dedupe_ms)))
                .await
                .map_err(StoreError::from)?;
        let mut applied = Applied { outcomes: counted, ..Applied::default() };
        applied.accepted = applied.outcomes.iter().filter(|&&o| o == EventOutcome::Accepted).count() as u32;
        applied.duplicates = applied.outcomes.len() as u32 - applied.accepted;
        // A retry (same event id) applies what its first try may not have reached.
        let mut by_listener: std::collections::BTreeMap<&ListenerId, Vec<&VerifiedEvent>> =
            Default::default();
        for (e, outcome) in verified.iter().zip(&applied.outcomes) {
            if let Some(key) = &e.history
                && changes_history(e.kind)
                && *outcome != EventOutcome::AlreadyCounted
            {
                by_listener.entry(&key.listener).or_default().push(e);
            }
        }
        let suppression = self.state.suppression;
        let stored = futures_util::future::try_join_all(by_listener.into_iter().map(
            |(listener, events)| async move {
                let histories = store
                    .update_histories(listener.as_str(), |h| {
                        let mut changed = false;
                        for e in &events {
                            let label = event_field(e.kind);
                            let Some(key) = &e.history else { continue };
                            if h.erased_since(e.decided_at) || h.applied(e.ad, label) {
                                continue;
                            }
                            h.apply(e.ad, label, e.at, dedupe_ms, |account| {
                                remember(account, &key.member, e, suppression)
                            });
                            changed = true;
                        }
                        changed
                    })
                    .await?;
                Ok::<_, SharedError>((listener, histories))
            },
        ))
        .await
        .map_err(StoreError::from)?;
        for (listener, histories) in stored {
            self.state.delivery.install(listener, histories.account(), |ad| histories.released(ad));
        }
        Ok(applied)
    }

    /// What an applied batch changed, to make durable: the events that counted, the histories
    /// and the counters they changed.
    fn changes_of(&self, verified: &[VerifiedEvent], applied: &Applied) -> Vec<Change> {
        let delivery = &self.state.delivery;
        let mut changes: Vec<Change> = verified
            .iter()
            .zip(&applied.outcomes)
            .filter(|(_, outcome)| **outcome == EventOutcome::Accepted)
            .map(|(e, _)| {
                Change::Event(CountedEvent {
                    ad: e.ad,
                    kind: e.kind,
                    event_id: e.event_id.to_string(),
                    at: e.at,
                })
            })
            .collect();
        // Each history's lasting changes, in the order they were applied.
        let mut by_key: Vec<(&HistoryKey, Vec<HistoryChange>)> = Vec::new();
        for (e, _) in verified.iter().zip(&applied.outcomes).filter(|(_, o)| **o == EventOutcome::Accepted) {
            let Some(key) = &e.history else { continue };
            let i = match by_key.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    by_key.push((key, Vec::new()));
                    by_key.len() - 1
                }
            };
            lasting_changes(e, self.state.suppression, |change| by_key[i].1.push(change));
        }
        changes.extend(by_key.into_iter().filter(|(_, c)| !c.is_empty()).map(|(key, appended)| {
            match delivery.next_stored_form(key) {
                Some(whole) => Change::History(key.clone(), whole),
                None => Change::HistoryChanges(key.clone(), appended),
            }
        }));
        let mut campaigns: Vec<&CampaignId> = verified.iter().map(|e| &e.campaign.id).collect();
        campaigns.sort();
        campaigns.dedup();
        changes
            .extend(campaigns.into_iter().map(|id| Change::Counters(id.clone(), delivery.raw_counters(id))));
        changes
    }
}

/// Campaigns a cluster-mode decision may set aside (their budget share not held) before it
/// serves what it has.
const MAX_REDECISIONS: usize = 4;

/// A spend view in which the budgets of `exhausted` are spent.
struct Exhausted<'a, S> {
    spend: S,
    exhausted: &'a [CampaignId],
}

impl<S: decision::SpendView> decision::SpendView for Exhausted<'_, S> {
    fn spend(&self, campaign: &CampaignId) -> decision::Spend {
        let spend = self.spend.spend(campaign);
        if self.exhausted.contains(campaign) {
            // Past every limit a budget can have.
            return decision::Spend {
                lifetime_micros: i64::MAX / 4,
                today_micros: i64::MAX / 4,
                impressions: u64::MAX / 4,
                ..spend
            };
        }
        spend
    }
}

/// A new id for each ad of `decision` (what its token, events and hold name it by).
fn fresh_ad_ids(decision: &Decision) -> Vec<AdId> {
    let mut rng = rand::rng();
    decision.ads.iter().map(|_| AdId::random(&mut rng)).collect()
}

/// Whether serving `campaign` takes a share of a budget (paid, with a limit).
fn holds_budget(campaign: &Campaign) -> bool {
    campaign.tier.is_paid() && campaign.budget.is_limited()
}

fn fill_label(f: Fill) -> &'static str {
    match f {
        Fill::Paid => "paid",
        Fill::House => "house",
        Fill::Empty => "empty",
    }
}

/// A decision reason's label in the metrics (and the console's key for its words).
pub fn reason_label(r: Reason) -> &'static str {
    match r {
        Reason::Served => "served",
        Reason::NoCandidates => "no_candidates",
        Reason::NoConsent => "no_consent",
        Reason::Suppressed => "suppressed",
        Reason::BudgetExhausted => "budget_exhausted",
        Reason::FrequencyCapped => "frequency_capped",
        Reason::BelowRelevanceFloor => "below_relevance_floor",
        Reason::DoesNotFitBreak => "does_not_fit_break",
        Reason::AdLoadLimit => "ad_load_limit",
    }
}

/// A tier's label in the metrics and the console.
pub fn tier_label(t: Tier) -> &'static str {
    match t {
        Tier::Sponsorship => "sponsorship",
        Tier::Standard => "standard",
        Tier::Remnant => "remnant",
        Tier::House => "house",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_lists_follow_discriminant_order() {
        assert!(FILLS.iter().enumerate().all(|(i, &f)| f as usize == i));
        assert!(REASONS.iter().enumerate().all(|(i, &r)| r as usize == i));
        assert!(TIERS.iter().enumerate().all(|(i, &t)| t as usize == i));
    }
}
