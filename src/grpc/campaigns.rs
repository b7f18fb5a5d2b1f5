//! `CampaignService`: the campaign admin surface.

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::pb::campaign_service_server::CampaignService;
use super::{code_of, convert, now, pb};
use crate::app::AppState;
use crate::domain::CampaignStatus;
use crate::telemetry;

/// Serves `interlude.v1.CampaignService`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CampaignAdmin {
    state: AppState,
}

impl CampaignAdmin {
    /// A service over `state`.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    fn set_status(&self, id: &str, status: CampaignStatus) -> Result<pb::Campaign, Status> {
        convert::campaign_id("campaign_id", id)?;
        let campaign = self.state.catalog.set_status(id, status, now())?;
        tracing::info!(campaign_id = %campaign.id, status = ?status, "campaign status changed");
        Ok(convert::campaign_to_proto(&campaign, &self.state.vocabulary))
    }
}

/// Runs a synchronous handler body and records its metrics.
fn observed<T>(rpc: &'static str, body: impl FnOnce() -> Result<T, Status>) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = body();
    telemetry::record_rpc(rpc, code_of(&result), started.elapsed());
    result.map(Response::new)
}

#[tonic::async_trait]
impl CampaignService for CampaignAdmin {
    async fn upsert_campaign(
        &self,
        request: Request<pb::UpsertCampaignRequest>,
    ) -> Result<Response<pb::UpsertCampaignResponse>, Status> {
        observed("UpsertCampaign", || {
            let campaign = convert::campaign(request.get_ref().campaign.as_ref(), &self.state.vocabulary)?;
            let (campaign, created) = self.state.catalog.upsert(campaign, now())?;
            telemetry::record_campaigns(self.state.catalog.snapshot().len());
            tracing::info!(campaign_id = %campaign.id, created, "campaign upserted");
            Ok(pb::UpsertCampaignResponse {
                campaign: Some(convert::campaign_to_proto(&campaign, &self.state.vocabulary)),
                created,
            })
        })
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::GetCampaignResponse>, Status> {
        observed("GetCampaign", || {
            let id = &request.get_ref().campaign_id;
            convert::campaign_id("campaign_id", id)?;
            let campaign = self.state.catalog.get(id)?;
            Ok(pb::GetCampaignResponse {
                campaign: Some(convert::campaign_to_proto(&campaign, &self.state.vocabulary)),
            })
        })
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        observed("ListCampaigns", || {
            let (after, size, status) = convert::list_campaigns(request.get_ref())?;
            let (page, more) = self.state.catalog.list(after.as_deref(), size, status);
            let next_page_token = match page.last() {
                Some(last) if more => convert::page_token(last.id.as_str()),
                _ => String::new(),
            };
            Ok(pb::ListCampaignsResponse {
                campaigns: page
                    .iter()
                    .map(|c| convert::campaign_to_proto(c, &self.state.vocabulary))
                    .collect(),
                next_page_token,
            })
        })
    }

    async fn pause_campaign(
        &self,
        request: Request<pb::PauseCampaignRequest>,
    ) -> Result<Response<pb::PauseCampaignResponse>, Status> {
        observed("PauseCampaign", || {
            let campaign = self.set_status(&request.get_ref().campaign_id, CampaignStatus::Paused)?;
            Ok(pb::PauseCampaignResponse { campaign: Some(campaign) })
        })
    }

    async fn resume_campaign(
        &self,
        request: Request<pb::ResumeCampaignRequest>,
    ) -> Result<Response<pb::ResumeCampaignResponse>, Status> {
        observed("ResumeCampaign", || {
            let campaign = self.set_status(&request.get_ref().campaign_id, CampaignStatus::Active)?;
            Ok(pb::ResumeCampaignResponse { campaign: Some(campaign) })
        })
    }

    async fn archive_campaign(
        &self,
        request: Request<pb::ArchiveCampaignRequest>,
    ) -> Result<Response<pb::ArchiveCampaignResponse>, Status> {
        observed("ArchiveCampaign", || {
            let campaign = self.set_status(&request.get_ref().campaign_id, CampaignStatus::Archived)?;
            Ok(pb::ArchiveCampaignResponse { campaign: Some(campaign) })
        })
    }

    async fn get_delivery_stats(
        &self,
        request: Request<pb::GetDeliveryStatsRequest>,
    ) -> Result<Response<pb::GetDeliveryStatsResponse>, Status> {
        observed("GetDeliveryStats", || {
            let id = &request.get_ref().campaign_id;
            convert::campaign_id("campaign_id", id)?;
            let campaign = self.state.catalog.get(id)?;
            let c = self.state.delivery.counters(&campaign.id, now());
            let exhausted = (campaign.budget.lifetime_micros > 0
                && c.spend_micros >= campaign.budget.lifetime_micros)
                || (campaign.budget.daily_micros > 0 && c.spend_today_micros >= campaign.budget.daily_micros);
            let pacing_status = if exhausted {
                pb::PacingStatus::BudgetExhausted
            } else {
                // Pacing against a delivery curve arrives with budgets and pacing (issue 5).
                pb::PacingStatus::NotPaced
            };
            Ok(pb::GetDeliveryStatsResponse {
                campaign_id: campaign.id.to_string(),
                impressions: c.impressions,
                spend_micros: c.spend_micros,
                clicks: c.clicks,
                completes: c.completes,
                skips: c.skips,
                not_for_me: c.not_for_me,
                impressions_today: c.impressions_today,
                spend_today_micros: c.spend_today_micros,
                pacing_status: pacing_status as i32,
            })
        })
    }
}
