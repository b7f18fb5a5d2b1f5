//! `AdDecisionService`: Decide and RecordEvents, the hot path.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::auth::{AuthError, Role};
use super::pb::ad_decision_service_server::AdDecisionService;
use super::status::InvalidRequest;
use super::{code_of, convert, now, pb, rpc_metrics};
use crate::decision::{self, Decision, Fill, Listener, Reason};
use crate::domain::{AdId, CampaignId, ImpressionRecord, ListenerId, Tier, UnixMillis};
use crate::state::AppState;
use crate::store::delivery::{CountedEvent, EventOutcome, HistoryKey, VerifiedEvent};
use crate::store::durable::Change;
use crate::telemetry;
use crate::token::ImpressionClaims;

/// Serves `interlude.v1.AdDecisionService`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DecisionService {
    state: AppState,
    /// Decision outcome counters, registered when the service is made.
    outcomes: Arc<telemetry::DecisionMetrics>,
    /// Explained decisions evaluate every campaign (thousands of times a plain decision's
    /// work): a server-wide budget of them.
    explain_budget: Arc<governor::DefaultDirectRateLimiter>,
}

/// Explained decisions allowed per second, server-wide (bursts of as many): 1 + 9 = 10.
pub const EXPLAIN_PER_SECOND: std::num::NonZeroU32 = std::num::NonZeroU32::MIN.saturating_add(9);

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

impl DecisionService {
    /// A service over `state`.
    pub fn new(state: AppState) -> Self {
        let outcomes = telemetry::DecisionMetrics::new(
            &FILLS.map(fill_label),
            &REASONS.map(reason_label),
            &TIERS.map(tier_label),
        );
        let quota = governor::Quota::per_second(EXPLAIN_PER_SECOND);
        Self {
            state,
            outcomes: Arc::new(outcomes),
            explain_budget: Arc::new(governor::RateLimiter::direct(quota)),
        }
    }

    /// Refuses callers without the decision (or admin) token, when one is configured.
    fn admit<T>(&self, request: &Request<T>) -> Result<Role, Status> {
        Ok(self.state.auth.admit_decision(request.metadata())?)
    }

    /// Explain shows every campaign's targeting and scores: admin only, and within a budget.
    fn admit_explain(&self, role: Role) -> Result<(), Status> {
        if role != Role::Admin {
            return Err(AuthError::ExplainNeedsAdmin.into());
        }
        self.explain_budget.check().map_err(|_| {
            Status::resource_exhausted(format!(
                "explain is limited to {EXPLAIN_PER_SECOND} calls a second server-wide; retry later"
            ))
        })
    }

    fn decide(&self, req: &pb::DecideRequest) -> Result<pb::DecideResponse, Status> {
        let state = &self.state;
        let request = convert::ad_request(req, &state.vocabulary)?;
        let now = now();
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
        let mut decision = state.delivery.with_history(key.as_ref(), |history| {
            let listener = Listener {
                profile: profile.as_deref(),
                taste: profile.as_deref().and_then(|p| p.member(&request.member_id)),
                history,
            };
            let spend = state.delivery.spend_at(now);
            decision::decide(&snapshot, listener, &request, &state.policy, &spend, now, &mut rand::rng())
        })?;
        // The engine saw each budget free; taking its share is checked again, atomically per
        // campaign, so that decisions running at once on several threads cannot all take the
        // last of it. An ad whose budget went meanwhile is not served.
        decision.ads.retain(|ad| {
            let c = &ad.campaign;
            !(c.tier.is_paid() && c.budget.is_limited()) || state.delivery.reserve_within_limits(c, now)
        });
        if decision.ads.is_empty() && decision.fill == Fill::Paid {
            decision.fill = Fill::Empty;
            decision.reason = Reason::BudgetExhausted;
        }
        let mut rng = rand::rng();
        let ad_ids: Vec<AdId> = decision.ads.iter().map(|_| AdId::random(&mut rng)).collect();
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
        Ok(self.response(decision, &ad_ids, key.as_ref(), now))
    }

    fn response(
        &self,
        decision: Decision,
        ad_ids: &[AdId],
        key: Option<&HistoryKey>,
        now: UnixMillis,
    ) -> pb::DecideResponse {
        let (listener, member) = key.map_or(("", ""), |k| (k.listener.as_str(), &*k.member));
        let ads = decision
            .ads
            .iter()
            .zip(ad_ids)
            .map(|(ad, &ad_id)| {
                let c = &ad.campaign;
                let creative = &c.creatives[ad.creative];
                let price_micros = if c.tier.is_paid() { c.price_micros() } else { 0 };
                let token = self.state.signer.sign(&ImpressionClaims {
                    ad: ad_id,
                    legacy: false,
                    listener,
                    member,
                    campaign: c.id.as_str(),
                    creative: creative.id.as_str(),
                    price_micros,
                    decided_at: now,
                });
                // `String::from(&str)`, not `to_string()`: no trip through the formatter.
                pb::DecidedAd {
                    campaign_id: c.id.as_str().into(),
                    creative_id: creative.id.as_str().into(),
                    advertiser_id: c.advertiser_id.as_str().into(),
                    advertiser_name: (*c.advertiser_name).into(),
                    audio_url: (*creative.audio_url).into(),
                    duration: Some(convert::ms_to_duration(i64::from(creative.duration_ms))),
                    companion: creative.companion.as_ref().map(convert::companion_to_proto),
                    price_micros,
                    relevance_score: ad.relevance,
                    impression_token: token,
                    tier: convert::tier_to_proto(c.tier) as i32,
                    iab_categories: c.categories.iter().map(|cat| cat.as_str().into()).collect(),
                    ad_id: ad_id.to_string(),
                }
            })
            .collect();
        let trace = decision
            .trace
            .iter()
            .map(|t| pb::CandidateTrace {
                campaign_id: t.campaign_id.to_string(),
                tier: convert::tier_to_proto(t.tier) as i32,
                rejected_by: t.rejected_by.map_or(pb::Rule::Unspecified, rule_to_proto) as i32,
                served: t.rejected_by.is_none(),
                relevance_score: t.relevance,
                score: t.score,
                detail: t.detail.clone(),
            })
            .collect();
        pb::DecideResponse {
            ads,
            fill: match decision.fill {
                Fill::Paid => pb::Fill::Paid,
                Fill::House => pb::Fill::House,
                Fill::Empty => pb::Fill::Empty,
            } as i32,
            reason: reason_to_proto(decision.reason) as i32,
            trace,
        }
    }

    async fn record_events(&self, req: &pb::RecordEventsRequest) -> Result<pb::RecordEventsResponse, Status> {
        let state = &self.state;
        let events = convert::events(req)?;
        let now = now();
        // Each event stands on its own: a bad one is rejected with its reason and the rest
        // land, so one event that can never be valid (its creative removed, its token expired)
        // does not sink its batch on every retry. Only a batch with nothing valid is refused.
        let mut errors = InvalidRequest::default();
        let mut rejections = Vec::new();
        let mut reject = |i: usize, field: String, reason: String| {
            rejections.push(pb::EventRejection {
                index: i as u32,
                field: field.clone(),
                reason: reason.clone(),
            });
            errors.add(field, reason);
        };
        let mut verified = Vec::with_capacity(events.len());
        let mut verified_at = Vec::with_capacity(events.len());
        // A token names a campaign that served, so it is in the snapshot that decided it or a
        // later one (campaigns are never removed, only archived).
        let catalog = state.catalog.snapshot();
        for (i, e) in events.iter().enumerate() {
            let e = match e {
                Ok(e) => e,
                Err(invalid) => {
                    for (field, reason) in &invalid.violations {
                        reject(i, field.clone(), reason.clone());
                    }
                    continue;
                }
            };
            let claims = match state.signer.verify(e.token, now) {
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
            let skew = convert::MAX_CLOCK_SKEW_MS;
            if at.0 < claims.decided_at.0 - skew || at.0 > now.0 + skew {
                reject(i, format!("events[{i}].occurred_at"), "must lie between the decision and now".into());
                continue;
            }
            verified_at.push(i);
            verified.push(VerifiedEvent {
                ad: claims.ad,
                legacy: claims.legacy,
                event_id: e.event_id.into(),
                kind: e.kind,
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
        // The histories these events change stay in memory until their commit (read from the
        // store off the runtime's thread when they are not there).
        let pins = state
            .pin_histories(verified.iter().filter_map(|e| e.history.as_ref().map(|k| k.listener.clone())))
            .await?;
        let applied = state
            .write(|| {
                let applied = state.delivery.apply(&verified, state.suppression);
                if !state.persists() {
                    return Ok((applied, Vec::new()));
                }
                // Acknowledged events are durable: what counted, and what it changed.
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
                let mut keys: Vec<&HistoryKey> = verified.iter().filter_map(|e| e.history.as_ref()).collect();
                keys.sort_by(|a, b| (&a.listener, &a.member).cmp(&(&b.listener, &b.member)));
                keys.dedup();
                changes.extend(
                    keys.into_iter()
                        .filter_map(|k| state.delivery.history(k).map(|h| Change::History(k.clone(), h))),
                );
                let mut campaigns: Vec<&CampaignId> = verified.iter().map(|e| &e.campaign.id).collect();
                campaigns.sort();
                campaigns.dedup();
                changes.extend(
                    campaigns
                        .into_iter()
                        .map(|id| Change::Counters(id.clone(), state.delivery.raw_counters(id))),
                );
                Ok::<_, Status>((applied, changes))
            })
            .await?;
        drop(pins);
        let replays = applied.outcomes.iter().filter(|&&o| o == EventOutcome::AlreadyCounted).count() as u32;
        telemetry::record_events(applied.accepted, applied.duplicates - replays, replays);
        let mut outcomes = vec![pb::EventOutcome::Rejected as i32; events.len()];
        for (&i, &outcome) in verified_at.iter().zip(&applied.outcomes) {
            outcomes[i] = outcome_to_proto(outcome) as i32;
        }
        Ok(pb::RecordEventsResponse {
            accepted: applied.accepted,
            duplicates: applied.duplicates,
            outcomes,
            rejections,
        })
    }
}

#[tonic::async_trait]
impl AdDecisionService for DecisionService {
    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let started = Instant::now();
        let result = match self.admit(&request) {
            Ok(role) => {
                let req = request.get_ref();
                // With a store, a listener not in memory is read off the runtime's thread first.
                let warmed = if self.state.persists() {
                    self.state.warm(&req.listener_id).await.map_err(Status::from)
                } else {
                    Ok(())
                };
                warmed.and_then(|()| {
                    if req.explain {
                        self.admit_explain(role)?;
                    }
                    DecisionService::decide(self, req)
                })
            }
            Err(status) => Err(status),
        };
        rpc_metrics!("Decide").record(code_of(&result), started.elapsed());
        result.map(Response::new)
    }

    async fn record_events(
        &self,
        request: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let started = Instant::now();
        let result = match self.admit(&request) {
            Ok(_) => DecisionService::record_events(self, request.get_ref()).await,
            Err(status) => Err(status),
        };
        rpc_metrics!("RecordEvents").record(code_of(&result), started.elapsed());
        result.map(Response::new)
    }
}

fn outcome_to_proto(o: EventOutcome) -> pb::EventOutcome {
    match o {
        EventOutcome::Accepted => pb::EventOutcome::Accepted,
        EventOutcome::Retried => pb::EventOutcome::Retried,
        EventOutcome::AlreadyCounted => pb::EventOutcome::AlreadyCounted,
    }
}

fn reason_to_proto(r: Reason) -> pb::DecisionReason {
    match r {
        Reason::Served => pb::DecisionReason::Served,
        Reason::NoCandidates => pb::DecisionReason::NoCandidates,
        Reason::NoConsent => pb::DecisionReason::NoConsent,
        Reason::Suppressed => pb::DecisionReason::Suppressed,
        Reason::BudgetExhausted => pb::DecisionReason::BudgetExhausted,
        Reason::FrequencyCapped => pb::DecisionReason::FrequencyCapped,
        Reason::BelowRelevanceFloor => pb::DecisionReason::BelowRelevanceFloor,
        Reason::DoesNotFitBreak => pb::DecisionReason::DoesNotFitBreak,
        Reason::AdLoadLimit => pb::DecisionReason::AdLoadLimit,
    }
}

fn rule_to_proto(r: decision::Rule) -> pb::Rule {
    use decision::Rule as R;
    match r {
        R::Status => pb::Rule::Status,
        R::Flight => pb::Rule::Flight,
        R::AffinityGenre => pb::Rule::AffinityGenre,
        R::TrackGenre => pb::Rule::TrackGenre,
        R::Milestone => pb::Rule::Milestone,
        R::Geo => pb::Rule::Geo,
        R::Device => pb::Rule::Device,
        R::Age => pb::Rule::Age,
        R::Daypart => pb::Rule::Daypart,
        R::Signal => pb::Rule::Signal,
        R::Consent => pb::Rule::Consent,
        R::Suppressed => pb::Rule::Suppressed,
        R::FrequencyCap => pb::Rule::FrequencyCap,
        R::CategorySeparation => pb::Rule::CategorySeparation,
        R::AdLoad => pb::Rule::AdLoad,
        R::Budget => pb::Rule::Budget,
        R::Pacing => pb::Rule::Pacing,
        R::RelevanceFloor => pb::Rule::RelevanceFloor,
        R::BreakDuration => pb::Rule::BreakDuration,
        R::Outranked => pb::Rule::Outranked,
    }
}

fn fill_label(f: Fill) -> &'static str {
    match f {
        Fill::Paid => "paid",
        Fill::House => "house",
        Fill::Empty => "empty",
    }
}

fn reason_label(r: Reason) -> &'static str {
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

fn tier_label(t: crate::domain::Tier) -> &'static str {
    match t {
        crate::domain::Tier::Sponsorship => "sponsorship",
        crate::domain::Tier::Standard => "standard",
        crate::domain::Tier::Remnant => "remnant",
        crate::domain::Tier::House => "house",
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
