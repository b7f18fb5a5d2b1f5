//! `ListenerService`: profiles, identity, consent, erasure and listening ingestion.

use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::auth;
use super::pb::listener_service_server::ListenerService;
use super::{code_of, convert, now, observe, pb, rpc_metrics};
use crate::auth::{AUDIT, Role};
use crate::domain::{ConsentState, ListenerProfile};
use crate::state::AppState;
use crate::store::durable::Change;
use crate::telemetry;

/// Rejections reported back in detail per stream; the rest are only counted.
pub const MAX_REPORTED_REJECTIONS: usize = 10;

/// Serves `interlude.v1.ListenerService`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ListenerAdmin {
    state: AppState,
    /// Longest a RecordPlays stream may wait for its next message.
    stream_idle_timeout: std::time::Duration,
}

impl ListenerAdmin {
    /// A service over `state`.
    pub fn new(state: AppState, stream_idle_timeout: std::time::Duration) -> Self {
        Self { state, stream_idle_timeout }
    }

    fn to_proto(&self, profile: &ListenerProfile) -> pb::Listener {
        let aliases = self.state.listeners.aliases_of(&profile.id);
        convert::listener_to_proto(profile, aliases, &self.state.vocabulary, &self.state.artists)
    }

    async fn record_plays(
        &self,
        mut stream: Streaming<pb::RecordPlaysRequest>,
    ) -> Result<pb::RecordPlaysResponse, Status> {
        let mut response = pb::RecordPlaysResponse::default();
        let mut index = 0u64;
        let half_life_ms = self.state.taste_half_life_ms;
        // A stream may run as long as it keeps sending: only a silence ends it. The chunks
        // before are committed, and their play ids make the retry exact.
        let idle = self.stream_idle_timeout;
        let silent = || {
            Status::deadline_exceeded(format!(
                "no message for {} s (stream_idle_timeout_secs); the chunks before were counted",
                idle.as_secs_f64()
            ))
        };
        while let Some(chunk) = tokio::time::timeout(idle, stream.message()).await.map_err(|_| silent())?? {
            let now = now();
            let mut plays = Vec::with_capacity(chunk.plays.len());
            // Keyed fingerprints of the identified plays, beside their plays.
            let mut ids = Vec::with_capacity(chunk.plays.len());
            for play in &chunk.plays {
                match convert::play(play, &self.state.vocabulary, &self.state.artists, now) {
                    Ok(valid) => {
                        plays.push(valid);
                        ids.push(
                            (!play.play_id.is_empty()).then(|| {
                                self.state.signer.play_fingerprint(&play.listener_id, &play.play_id)
                            }),
                        );
                    }
                    Err((field, reason)) => {
                        response.rejected += 1;
                        if response.rejections.len() < MAX_REPORTED_REJECTIONS {
                            response.rejections.push(pb::PlayRejection { index, field, reason });
                        }
                    }
                }
                index += 1;
            }
            self.state.warm_profiles(plays.iter().map(|p| &*p.listener)).await?;
            let counted = self
                .state
                .write(|| {
                    // A play counted before under its play id (a retried stream) is skipped;
                    // the check and the count are one step of the serialised writer.
                    let mut fresh = Vec::new();
                    let mut keep = ids.iter().map(|id| match id {
                        Some(f) if self.state.delivery.admit_play(*f, now) => {
                            fresh.push(*f);
                            true
                        }
                        Some(_) => false,
                        None => true,
                    });
                    plays.retain(|_| keep.next().unwrap_or(true));
                    // Acknowledged plays are durable: persist every profile this chunk changed.
                    let mut changed = self.state.listeners.record_plays(&plays, half_life_ms)?;
                    // The last snapshot of each profile is the one that counts.
                    changed.reverse();
                    let mut seen = std::collections::HashSet::new();
                    changed.retain(|p| seen.insert(p.id.clone()));
                    let mut changes: Vec<Change> = changed.into_iter().map(Change::Listener).collect();
                    changes.extend(
                        fresh.into_iter().map(|fingerprint| Change::PlayCounted { fingerprint, at: now }),
                    );
                    Ok::<_, Status>((plays.len(), changes))
                })
                .await?;
            response.accepted += counted as u64;
            response.duplicates += (ids.len() - counted) as u64;
        }
        telemetry::record_plays(response.accepted, response.rejected);
        Ok(response)
    }
}

/// The methods of ListenerService that stream (exempt from the unary request timeout).
pub fn streams(method: &str) -> bool {
    method == "RecordPlays"
}

/// The roles of ListenerService: RecordPlays comes from the player backend (the decision
/// role); every other method, and any added later, needs the admin role.
pub fn roles(method: &str) -> Role {
    match method {
        "RecordPlays" => Role::Decision,
        _ => Role::Admin,
    }
}

#[tonic::async_trait]
impl ListenerService for ListenerAdmin {
    async fn upsert_listener(
        &self,
        request: Request<pb::UpsertListenerRequest>,
    ) -> Result<Response<pb::UpsertListenerResponse>, Status> {
        observe(rpc_metrics!("UpsertListener"), async {
            let caller = auth::caller(&request)?;
            let now = now();
            let update = convert::listener_update(request.get_ref().listener.as_ref(), now)?;
            self.state.warm_profiles([update.listener_id.as_str()]).await?;
            let (profile, created) = self
                .state
                .write(|| {
                    let (profile, created) = self.state.listeners.update(&update.listener_id, |p| {
                        // UNSPECIFIED leaves the stored choice as it is: an update that does not
                        // mention consent must not withdraw (or reset) one the listener made.
                        let consent = match update.consent {
                            ConsentState::Unspecified => p.consent,
                            said => said,
                        };
                        let consent_changed = p.consent != consent;
                        p.consent = consent;
                        let d = p.details_mut();
                        if consent_changed {
                            d.consent_at = Some(now);
                        }
                        d.age_bracket = update.age_bracket;
                        d.home = update.home;
                        d.language = update.language;
                        d.signals = update.signals;
                        for m in update.members {
                            if let Some(member) = p.member_record_mut(&m.member_id) {
                                member.age_bracket = m.age_bracket;
                                member.signals = m.signals;
                            }
                        }
                    })?;
                    let changes = vec![Change::Listener(profile.clone())];
                    Ok::<_, Status>(((profile, created), changes))
                })
                .await?;
            tracing::info!(target: AUDIT, token_id = %caller.token_id, listener_id = %profile.id, created, "listener upserted");
            Ok(pb::UpsertListenerResponse { listener: Some(self.to_proto(&profile)), created })
        })
        .await
    }

    async fn get_listener(
        &self,
        request: Request<pb::GetListenerRequest>,
    ) -> Result<Response<pb::GetListenerResponse>, Status> {
        observe(rpc_metrics!("GetListener"), async {
            auth::caller(&request)?;
            let id = &request.get_ref().listener_id;
            convert::listener_id("listener_id", id)?;
            self.state.warm_profiles([id.as_str()]).await?;
            let profile = self
                .state
                .listeners
                .get(id)?
                .ok_or_else(|| crate::store::StoreError::NotFound { kind: "listener", id: id.clone() })?;
            Ok(pb::GetListenerResponse { listener: Some(self.to_proto(&profile)) })
        })
        .await
    }

    async fn forget_listener(
        &self,
        request: Request<pb::ForgetListenerRequest>,
    ) -> Result<Response<pb::ForgetListenerResponse>, Status> {
        observe(rpc_metrics!("ForgetListener"), async {
            let caller = auth::caller(&request)?;
            let id = &request.get_ref().listener_id;
            convert::listener_id("listener_id", id)?;
            self.state.warm_profiles([id.as_str()]).await?;
            let pins = self.state.pin_histories([self.state.listeners.canonical(id)]).await?;
            let canonical = self
                .state
                .write(|| {
                    let canonical = self.state.listeners.forget(id).map_err(Status::from)?;
                    self.state.delivery.forget(&canonical);
                    // Tokens issued before now still bill, but must not bring the listener back.
                    let fingerprint = self.state.signer.listener_fingerprint(canonical.as_str());
                    let at = now();
                    self.state.delivery.erased(fingerprint, at);
                    let changes =
                        vec![Change::ForgetListener(canonical.clone()), Change::Erased { fingerprint, at }];
                    Ok::<_, Status>((canonical, changes))
                })
                .await?;
            drop(pins);
            tracing::info!(target: AUDIT, token_id = %caller.token_id, listener_id = %canonical, "listener forgotten");
            Ok(pb::ForgetListenerResponse {})
        })
        .await
    }

    async fn link_identity(
        &self,
        request: Request<pb::LinkIdentityRequest>,
    ) -> Result<Response<pb::LinkIdentityResponse>, Status> {
        observe(rpc_metrics!("LinkIdentity"), async {
            let caller = auth::caller(&request)?;
            let req = request.get_ref();
            let mut errors = super::status::InvalidRequest::default();
            for (field, value) in [("listener_id", &req.listener_id), ("alias", &req.alias)] {
                if let Err(e) = convert::listener_id(field, value) {
                    errors.violations.extend(e.violations);
                }
            }
            errors.into_result()?;
            self.state.warm_profiles([req.listener_id.as_str(), req.alias.as_str()]).await?;
            let profile = self
                .state
                .write(|| {
                    let profile =
                        self.state.listeners.link(&req.listener_id, &req.alias).map_err(Status::from)?;
                    let changes =
                        vec![Change::Alias { alias: req.alias.clone(), listener: profile.id.clone() }];
                    Ok::<_, Status>((profile, changes))
                })
                .await?;
            tracing::info!(target: AUDIT, token_id = %caller.token_id, listener_id = %profile.id, "identity linked");
            Ok(pb::LinkIdentityResponse { listener: Some(self.to_proto(&profile)) })
        })
        .await
    }

    async fn merge_listeners(
        &self,
        request: Request<pb::MergeListenersRequest>,
    ) -> Result<Response<pb::MergeListenersResponse>, Status> {
        observe(rpc_metrics!("MergeListeners"), async {
            let caller = auth::caller(&request)?;
            let req = request.get_ref();
            let mut errors = super::status::InvalidRequest::default();
            for (field, value) in
                [("into_listener_id", &req.into_listener_id), ("from_listener_id", &req.from_listener_id)]
            {
                if let Err(e) = convert::listener_id(field, value) {
                    errors.violations.extend(e.violations);
                }
            }
            errors.into_result()?;
            let ids = [&req.into_listener_id, &req.from_listener_id];
            self.state.warm_profiles(ids.map(String::as_str)).await?;
            let pins = self.state.pin_histories(ids.map(|id| self.state.listeners.canonical(id))).await?;
            let (profile, from) = self
                .state
                .write(|| {
                    let (profile, from) = self
                        .state
                        .listeners
                        .merge(&req.into_listener_id, &req.from_listener_id, self.state.taste_half_life_ms)
                        .map_err(Status::from)?;
                    self.state.delivery.merge(&from, &profile.id);
                    let mut changes =
                        vec![Change::ForgetListener(from.clone()), Change::Listener(profile.clone())];
                    for alias in self.state.listeners.aliases_of(&profile.id) {
                        changes.push(Change::Alias { alias, listener: profile.id.clone() });
                    }
                    for (key, history) in self.state.delivery.histories_of(&profile.id) {
                        changes.push(Change::History(key, history));
                    }
                    Ok::<_, Status>(((profile, from), changes))
                })
                .await?;
            drop(pins);
            tracing::info!(target: AUDIT, token_id = %caller.token_id, listener_id = %profile.id, merged = %from, "listeners merged");
            Ok(pb::MergeListenersResponse { listener: Some(self.to_proto(&profile)) })
        })
        .await
    }

    async fn record_plays(
        &self,
        request: Request<Streaming<pb::RecordPlaysRequest>>,
    ) -> Result<Response<pb::RecordPlaysResponse>, Status> {
        let started = Instant::now();
        let result = ListenerAdmin::record_plays(self, request.into_inner()).await;
        rpc_metrics!("RecordPlays").record(code_of(&result), started.elapsed());
        result.map(Response::new)
    }
}
