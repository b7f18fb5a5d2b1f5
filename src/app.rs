//! Wiring: the shared state, the gRPC server with health and reflection, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower::Layer as _;

use crate::config::{Config, Limits, Tls};
use crate::decision::Policy;
use crate::domain::{ArtistId, UnixMillis};
use crate::grpc::auth::{self, Auth};
use crate::grpc::campaigns::CampaignAdmin;
use crate::grpc::deadline;
use crate::grpc::decisions::DecisionService;
use crate::grpc::listeners::ListenerAdmin;
use crate::grpc::pb;
use crate::grpc::pb::ad_decision_service_server::AdDecisionServiceServer;
use crate::grpc::pb::campaign_service_server::CampaignServiceServer;
use crate::grpc::pb::listener_service_server::ListenerServiceServer;
use crate::store::delivery::SuppressionPolicy;
use crate::store::durable::{self, Change, Durable, DurableError};
use crate::store::{Catalog, Delivery, Listeners, Vocabulary};
use crate::token::TokenSigner;

/// Everything the services share. Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct AppState {
    pub catalog: Catalog,
    pub listeners: Listeners,
    pub delivery: Delivery,
    pub vocabulary: Vocabulary,
    pub artists: Vocabulary<ArtistId>,
    pub signer: Arc<TokenSigner>,
    pub policy: Arc<Policy>,
    pub suppression: SuppressionPolicy,
    pub taste_half_life_ms: i64,
    /// The embedded store; None = memory only.
    pub durable: Option<Durable>,
    /// Who may call what.
    pub auth: Auth,
    /// How long applied event ids are remembered.
    pub dedupe_window: Duration,
    /// Held while a write is applied and its changes are queued (see `write`).
    write_order: Arc<std::sync::Mutex<()>>,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl AppState {
    /// Empty state configured by `config`. Without a configured token key, a random one is
    /// drawn: tokens then do not survive a restart.
    pub fn new(config: &Config) -> Self {
        let key = config.token_key.clone().unwrap_or_else(random_token_key);
        Self::with_key(config, &key)
    }

    fn with_key(config: &Config, key: &[u8]) -> Self {
        let token_ttl_ms = config.token_ttl.as_millis() as i64;
        // Event ids are remembered a little longer than a token lives (clock skew).
        let dedupe_window = config.token_ttl + Duration::from_secs(600);
        Self {
            catalog: Catalog::default(),
            listeners: Listeners::default(),
            delivery: Delivery::new(dedupe_window),
            vocabulary: Vocabulary::default(),
            artists: Vocabulary::default(),
            signer: Arc::new(TokenSigner::new(key, token_ttl_ms)),
            policy: Arc::new(config.policy.clone()),
            suppression: config.suppression,
            taste_half_life_ms: config.taste_half_life.as_millis() as i64,
            durable: None,
            // Without a configured admin token (tests that never call admin RPCs), a random one
            // nobody knows: admin RPCs are closed, never open.
            auth: Auth::new(
                &config.admin_token.as_ref().map_or_else(auth::generate_token, |t| t.0.clone()),
                config.decision_token.as_ref().map(|t| t.0.as_str()),
            ),
            dedupe_window,
            write_order: Arc::default(),
        }
    }

    /// State configured by `config`, with the embedded store opened and everything it holds
    /// loaded back. Also returns whether the store was empty (a first start). Without a
    /// configured token key, the key is kept in the data directory, so that tokens handed out
    /// before a restart still verify after it.
    pub fn open(config: &Config, now: UnixMillis) -> Result<(Self, bool), DurableError> {
        let Some(dir) = &config.data_dir else { return Ok((Self::new(config), true)) };
        let (durable, r) = Durable::open(dir)?;
        let key = match &config.token_key {
            Some(key) => key.clone(),
            None => durable::token_key(dir, random_token_key)?,
        };
        let mut state = Self::with_key(config, &key);
        let empty = r.campaigns.is_empty() && r.listener_count == 0 && r.genres.is_empty();
        for (id, name) in &r.genres {
            state.vocabulary.restore(*id, name).map_err(|e| DurableError::Corrupt(e.to_string()))?;
        }
        for (id, name) in &r.artists {
            state.artists.restore(*id, name).map_err(|e| DurableError::Corrupt(e.to_string()))?;
        }
        state.catalog.restore(r.campaigns);
        state.listeners =
            Listeners::cached(Durable::profile_reader(dir), config.profile_cache_bytes, r.listener_count);
        for (alias, id) in r.aliases {
            state.listeners.restore_alias(&alias, id);
        }
        let window = state.dedupe_window.as_millis() as i64;
        state.delivery.restore(r.histories, r.counters, r.events, r.legacy_events, window, now);
        for (fingerprint, at) in r.erased {
            state.delivery.erased(fingerprint, at);
        }
        for fingerprint in r.plays_counted {
            state.delivery.admit_play(fingerprint);
        }
        // The event table would otherwise grow forever; what is older than the window is dead.
        // Not awaited: nothing acknowledged depends on it.
        drop(durable.submit(vec![Change::PurgeEvents { before: UnixMillis(now.0 - window) }])?);
        state.durable = Some(durable);
        Ok((state, empty))
    }

    /// Whether writes are made durable: without a store, `write` drops the changes it is
    /// given, so a hot write path can skip taking its snapshots.
    pub fn persists(&self) -> bool {
        self.durable.is_some()
    }

    /// Applies a write to memory and makes it durable: `apply` runs under the write-order lock
    /// and returns its result with the changes to persist (snapshots of what it changed), which
    /// are queued before the lock is released — so the store receives snapshots in the order
    /// they were taken, and a newer one is never overwritten by an older one. Returns once the
    /// changes are committed. Without a store, only applies.
    pub async fn write<T, E: From<DurableError>>(
        &self,
        apply: impl FnOnce() -> Result<(T, Vec<Change>), E>,
    ) -> Result<T, E> {
        let (value, commit, persisted) = {
            // A poisoned lock guards no data; the order it gives still holds.
            let _order = self.write_order.lock().unwrap_or_else(|e| e.into_inner());
            let (value, mut changes) = apply()?;
            let Some(durable) = &self.durable else { return Ok(value) };
            let (from, genres) = self.vocabulary.pending();
            let (artists_from, artists) = self.artists.pending();
            let persisted = (from + genres.len(), artists_from + artists.len());
            let mut all: Vec<Change> =
                genres.into_iter().map(|(id, name)| Change::Genre { id, name }).collect();
            all.extend(artists.into_iter().map(|(id, name)| Change::Artist { id, name }));
            // What the profile cache keeps aside until it is committed.
            let profiles: Vec<ProfileWrite> = changes
                .iter()
                .filter_map(|c| match c {
                    Change::Listener(p) => Some(ProfileWrite::Saved(p.clone())),
                    Change::ForgetListener(id) => Some(ProfileWrite::Erased(id.clone())),
                    _ => None,
                })
                .collect();
            all.append(&mut changes);
            (value, durable.submit(all)?, (persisted, profiles))
        };
        commit.wait().await?;
        let ((genres, artists), profiles) = persisted;
        self.vocabulary.mark_persisted(genres);
        self.artists.mark_persisted(artists);
        for write in profiles {
            match write {
                ProfileWrite::Saved(p) => self.listeners.committed(&p),
                ProfileWrite::Erased(id) => self.listeners.erasure_committed(&id),
            }
        }
        Ok(value)
    }

    /// Persists everything held in memory (after loading the demo catalog into a fresh store).
    pub async fn persist_all(&self) -> Result<(), DurableError> {
        let mut changes: Vec<Change> =
            self.catalog.snapshot().campaigns().iter().map(|c| Change::Campaign(c.clone())).collect();
        changes.extend(self.listeners.unsaved().into_iter().map(Change::Listener));
        changes.extend(
            self.listeners
                .all_aliases()
                .into_iter()
                .map(|(alias, listener)| Change::Alias { alias, listener }),
        );
        self.write(|| Ok::<_, DurableError>(((), changes))).await
    }
}

/// A profile change on its way to the store.
enum ProfileWrite {
    Saved(Arc<crate::domain::ListenerProfile>),
    Erased(crate::domain::ListenerId),
}

/// A fresh random 256-bit impression-token key.
fn random_token_key() -> Vec<u8> {
    use rand::RngCore as _;
    let mut key = vec![0u8; 32];
    rand::rng().fill_bytes(&mut key);
    key
}

/// Serves every gRPC service on `listener` with `limits` until `shutdown` resolves, then
/// reports NOT_SERVING on health, stops accepting, and drains in-flight RPCs for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    limits: Limits,
    tls: Option<&Tls>,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AdDecisionServiceServer<DecisionService>>().await;
    reporter.set_serving::<CampaignServiceServer<CampaignAdmin>>().await;
    reporter.set_serving::<ListenerServiceServer<ListenerAdmin>>().await;

    let reflection_v1 = reflection_builder().build_v1()?;
    // grpcurl 1.8 speaks only v1alpha.
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;

    // A store that can no longer acknowledge writes takes the replica out of rotation.
    let watch_store = state.durable.clone().map(|durable| {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            durable.refusing_writes().await;
            for service in ["", AD_DECISION, CAMPAIGNS, LISTENERS] {
                reporter.set_service_status(service, ServingStatus::NotServing).await;
            }
            tracing::error!("durable store refuses writes: health NOT_SERVING until a restart");
        })
    });

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_accepting = async move {
        shutdown.await;
        for service in ["", AD_DECISION, CAMPAIGNS, LISTENERS] {
            reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
        tracing::info!("health NOT_SERVING; draining in-flight rpcs");
        let _ = draining_tx.send(());
    };

    let max = limits.max_message_bytes;
    let deadline = |streams: deadline::Streams| deadline::DeadlineLayer::new(limits.request_timeout, streams);
    let builder = match tls {
        Some(tls) => Server::builder().tls_config(tls.server_config())?,
        None => Server::builder(),
    };
    let server = builder
        // Over the in-flight limit a request is refused with RESOURCE_EXHAUSTED at once: an ad
        // break cannot wait, and an unbounded queue would only turn overload into latency.
        .concurrency_limit_per_connection(limits.max_in_flight_per_connection)
        .load_shed(true)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_interval))
        .http2_max_header_list_size(limits.max_header_list_bytes)
        // Both reset guards explicitly: tonic passes None for the first unless told, which
        // turns hyper's protection against server-provoked resets off (CVE-2025-8671).
        .http2_max_local_error_reset_streams(Some(limits.max_error_reset_streams))
        .http2_max_pending_accept_reset_streams(Some(limits.max_pending_reset_streams))
        // Marks each request's connection active (the idle and handshake timeouts, net.rs).
        .layer(crate::net::ActivityLayer)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Health and reflection stay open (load balancers, grpcurl); the rest is guarded. The
        // decision service checks its callers in its handlers (`Auth::admit_decision`): an
        // interceptor costs a request round trip through parts and an extension per call.
        // The hot service alone is admitted against the server-wide bound (admission.rs).
        // Unary calls end at the server's request timeout; streams at their idle timeout
        // (grpc/deadline.rs).
        .add_service(
            deadline(deadline::unary_only).layer(
                crate::admission::AdmissionLayer::new(limits.max_in_flight).layer(
                    AdDecisionServiceServer::new(DecisionService::new(state.clone()))
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                ),
            ),
        )
        // Each service's roles are a property of the service: a guard in front refuses a
        // caller before any handler runs (RecordPlays, from the player backend, takes the
        // decision role; everything else the admin role).
        .add_service(
            deadline(deadline::unary_only).layer(
                state.auth.guard(auth::admin_only).layer(
                    CampaignServiceServer::new(CampaignAdmin::new(state.clone()))
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                ),
            ),
        )
        .add_service(
            deadline(crate::grpc::listeners::streams).layer(
                state.auth.guard(crate::grpc::listeners::roles).layer(
                    ListenerServiceServer::new(ListenerAdmin::new(state.clone(), limits.stream_idle_timeout))
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                ),
            ),
        )
        .serve_with_incoming_shutdown(crate::net::incoming(listener, limits.edge()), stop_accepting);
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        _ = draining_rx => match tokio::time::timeout(grace, &mut server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(grace_secs = grace.as_secs_f64(), "grace period over; dropping in-flight rpcs");
                Ok(())
            }
        },
    };
    if let Some(task) = watch_store {
        task.abort();
    }
    if let Some(durable) = &state.durable {
        durable.release();
    }
    result?;
    tracing::info!("server stopped");
    Ok(())
}

/// Reflection over our contract, health, both reflection versions, and google.rpc error details
/// (so grpcurl can print the BadRequest details of an INVALID_ARGUMENT).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

const AD_DECISION: &str = "interlude.v1.AdDecisionService";
const CAMPAIGNS: &str = "interlude.v1.CampaignService";
const LISTENERS: &str = "interlude.v1.ListenerService";
