//! `CampaignService`: the campaign admin surface.

use tonic::{Request, Response, Status};

use super::auth;
use super::pb::campaign_service_server::CampaignService;
use super::{convert, now, observe, pb, rpc_metrics};
use crate::auth::{AUDIT, Caller};
use crate::decision::pacing::{self, PaceStatus};
use crate::domain::CampaignStatus;
use crate::state::AppState;
use crate::store::durable::Change;
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

    async fn set_status(
        &self,
        caller: &Caller,
        id: &str,
        status: CampaignStatus,
    ) -> Result<pb::Campaign, Status> {
        convert::campaign_id("campaign_id", id)?;
        let (campaign, version) = self
            .state
            .write(|| {
                let (c, version) =
                    self.state.catalog.stage_status(id, status, now()).map_err(Status::from)?;
                let changes = vec![Change::Campaign(c.clone())];
                Ok::<_, Status>(((c, version), changes))
            })
            .await?;
        self.state.publish_catalog(version).await?;
        tracing::info!(target: AUDIT, token_id = %caller.token_id, campaign_id = %campaign.id, status = ?status, "campaign status changed");
        Ok(convert::campaign_to_proto(&campaign, &self.state.vocabulary))
    }
}

#[tonic::async_trait]
impl CampaignService for CampaignAdmin {
    async fn upsert_campaign(
        &self,
        request: Request<pb::UpsertCampaignRequest>,
    ) -> Result<Response<pb::UpsertCampaignResponse>, Status> {
        observe(rpc_metrics!("UpsertCampaign"), async {
            let caller = auth::caller(&request)?;
            let campaign = convert::campaign(request.get_ref().campaign.as_ref(), &self.state.vocabulary)?;
            let ((campaign, created), version) = self
                .state
                .write(|| {
                    let (staged, version) = self.state.catalog.stage(campaign, now()).map_err(Status::from)?;
                    let changes = vec![Change::Campaign(staged.0.clone())];
                    Ok::<_, Status>(((staged, version), changes))
                })
                .await?;
            self.state.publish_catalog(version).await?;
            telemetry::record_campaigns(self.state.catalog.snapshot().len());
            tracing::info!(target: AUDIT, token_id = %caller.token_id, campaign_id = %campaign.id, created, "campaign upserted");
            Ok(pb::UpsertCampaignResponse {
                campaign: Some(convert::campaign_to_proto(&campaign, &self.state.vocabulary)),
                created,
            })
        })
        .await
    }

    async fn get_campaign(
        &self,
        request: Request<pb::GetCampaignRequest>,
    ) -> Result<Response<pb::GetCampaignResponse>, Status> {
        observe(rpc_metrics!("GetCampaign"), async {
            let id = &request.get_ref().campaign_id;
            convert::campaign_id("campaign_id", id)?;
            let campaign = self.state.catalog.get(id)?;
            Ok(pb::GetCampaignResponse {
                campaign: Some(convert::campaign_to_proto(&campaign, &self.state.vocabulary)),
            })
        })
        .await
    }

    async fn list_campaigns(
        &self,
        request: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        observe(rpc_metrics!("ListCampaigns"), async {
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
        .await
    }

    async fn pause_campaign(
        &self,
        request: Request<pb::PauseCampaignRequest>,
    ) -> Result<Response<pb::PauseCampaignResponse>, Status> {
        observe(rpc_metrics!("PauseCampaign"), async {
            let caller = auth::caller(&request)?;
            let campaign =
                self.set_status(caller, &request.get_ref().campaign_id, CampaignStatus::Paused).await?;
            Ok(pb::PauseCampaignResponse { campaign: Some(campaign) })
        })
        .await
    }

    async fn resume_campaign(
        &self,
        request: Request<pb::ResumeCampaignRequest>,
    ) -> Result<Response<pb::ResumeCampaignResponse>, Status> {
        observe(rpc_metrics!("ResumeCampaign"), async {
            let caller = auth::caller(&request)?;
            let campaign =
                self.set_status(caller, &request.get_ref().campaign_id, CampaignStatus::Active).await?;
            Ok(pb::ResumeCampaignResponse { campaign: Some(campaign) })
        })
        .await
    }

    async fn archive_campaign(
        &self,
        request: Request<pb::ArchiveCampaignRequest>,
    ) -> Result<Response<pb::ArchiveCampaignResponse>, Status> {
        observe(rpc_metrics!("ArchiveCampaign"), async {
            let caller = auth::caller(&request)?;
            let campaign =
                self.set_status(caller, &request.get_ref().campaign_id, CampaignStatus::Archived).await?;
            Ok(pb::ArchiveCampaignResponse { campaign: Some(campaign) })
        })
        .await
    }

    async fn get_delivery_stats(
        &self,
        request: Request<pb::GetDeliveryStatsRequest>,
    ) -> Result<Response<pb::GetDeliveryStatsResponse>, Status> {
        observe(rpc_metrics!("GetDeliveryStats"), async {
            let id = &request.get_ref().campaign_id;
            convert::campaign_id("campaign_id", id)?;
            let campaign = self.state.catalog.get(id)?;
            let now = now();
            let c = self.state.counters(&campaign, now).await?;
            let pacing_status = match pacing::status(&campaign, &c.recorded_spend(), now) {
                PaceStatus::NotPaced => pb::PacingStatus::NotPaced,
                PaceStatus::OnTrack => pb::PacingStatus::OnTrack,
                PaceStatus::Behind => pb::PacingStatus::Behind,
                PaceStatus::Ahead => pb::PacingStatus::Ahead,
                PaceStatus::Exhausted => pb::PacingStatus::BudgetExhausted,
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
                starts: c.progress.starts,
                first_quartiles: c.progress.first_quartiles,
                midpoints: c.progress.midpoints,
                third_quartiles: c.progress.third_quartiles,
                mutes: c.progress.mutes,
                unmutes: c.progress.unmutes,
                pauses: c.progress.pauses,
                resumes: c.progress.resumes,
                not_used: c.progress.not_used,
                errors: c
                    .errors
                    .iter()
                    .map(|e| pb::PlaybackErrorCount {
                        creative_id: e.creative.to_string(),
                        code: u32::from(e.code),
                        count: e.count,
                    })
                    .collect(),
            })
        })
        .await
    }
}
