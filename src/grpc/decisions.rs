//! `AdDecisionService`: Decide and RecordEvents, the hot path.

use std::sync::Arc;

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::pb::ad_decision_service_server::AdDecisionService;
use super::{code_of, convert, pb, rpc_metrics};
use crate::auth::{AuthError, Role};
use crate::decision::{self, Fill, Reason};
use crate::service::Decisions;
use crate::service::decisions::Served;
use crate::state::AppState;
use crate::store::delivery::EventOutcome;

/// Serves `interlude.v1.AdDecisionService`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DecisionService {
    decisions: Decisions,
    /// Explained decisions evaluate every campaign (thousands of times a plain decision's
    /// work): a server-wide budget of them.
    explain_budget: Arc<governor::DefaultDirectRateLimiter>,
}

/// Explained decisions allowed per second, server-wide (bursts of as many): 1 + 9 = 10.
pub const EXPLAIN_PER_SECOND: std::num::NonZeroU32 = std::num::NonZeroU32::MIN.saturating_add(9);

impl DecisionService {
    /// A service over `decisions` (the one the other edges share).
    pub fn new(decisions: Decisions) -> Self {
        let quota = governor::Quota::per_second(EXPLAIN_PER_SECOND);
        Self { decisions, explain_budget: Arc::new(governor::RateLimiter::direct(quota)) }
    }

    fn state(&self) -> &AppState {
        self.decisions.state()
    }

    /// Refuses callers without the decision (or admin) token, when one is configured.
    fn admit<T>(&self, request: &Request<T>) -> Result<Role, Status> {
        Ok(super::auth::admit_decision(&self.state().auth, request.metadata())?)
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

    async fn decide(&self, req: &pb::DecideRequest, role: Role) -> Result<pb::DecideResponse, Status> {
        let request = convert::ad_request(req, &self.state().vocabulary)?;
        if request.explain {
            self.admit_explain(role)?;
        }
        let served = self.decisions.decide(&request).await?;
        Ok(response(served))
    }

    async fn record_events(&self, req: &pb::RecordEventsRequest) -> Result<pb::RecordEventsResponse, Status> {
        let events = convert::events(req)?;
        let recorded = self.decisions.record(&events).await?;
        Ok(pb::RecordEventsResponse {
            accepted: recorded.accepted,
            duplicates: recorded.duplicates,
            outcomes: recorded
                .outcomes
                .iter()
                .map(|o| o.map_or(pb::EventOutcome::Rejected, outcome_to_proto) as i32)
                .collect(),
            rejections: recorded
                .rejections
                .into_iter()
                .map(|r| pb::EventRejection { index: r.index as u32, field: r.field, reason: r.reason })
                .collect(),
        })
    }
}

/// The wire form of a decided break.
fn response(served: Served) -> pb::DecideResponse {
    let Served { decision, ads } = served;
    let ads = decision
        .ads
        .iter()
        .zip(ads)
        .map(|(ad, served)| {
            let c = &ad.campaign;
            let creative = &c.creatives[ad.creative];
            // `String::from(&str)`, not `to_string()`: no trip through the formatter.
            pb::DecidedAd {
                campaign_id: c.id.as_str().into(),
                creative_id: creative.id.as_str().into(),
                advertiser_id: c.advertiser_id.as_str().into(),
                advertiser_name: (*c.advertiser_name).into(),
                audio_url: (*creative.audio_url).into(),
                audio_mime_type: creative.audio_mime_type().into(),
                media_files: creative.media_files.iter().map(convert::media_file_to_proto).collect(),
                duration: Some(convert::ms_to_duration(i64::from(creative.duration_ms))),
                companion: creative.companion.as_ref().map(convert::companion_to_proto),
                price_micros: served.price_micros,
                relevance_score: ad.relevance,
                impression_token: served.token,
                tier: convert::tier_to_proto(c.tier) as i32,
                iab_categories: c.categories.iter().map(|cat| cat.as_str().into()).collect(),
                ad_id: served.id.to_string(),
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

#[tonic::async_trait]
impl AdDecisionService for DecisionService {
    async fn decide(
        &self,
        request: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideResponse>, Status> {
        let started = Instant::now();
        let result = match self.admit(&request) {
            Ok(role) => DecisionService::decide(self, request.get_ref(), role).await,
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
