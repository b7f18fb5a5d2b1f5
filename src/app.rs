//! Wiring: the gRPC server with health and reflection, upkeep, graceful shutdown.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower::Layer as _;

use crate::config::{Limits, Tls};
use crate::grpc::auth;
use crate::grpc::campaigns::CampaignAdmin;
use crate::grpc::deadline;
use crate::grpc::decisions::DecisionService;
use crate::grpc::listeners::ListenerAdmin;
use crate::grpc::pb;
use crate::grpc::pb::ad_decision_service_server::AdDecisionServiceServer;
use crate::grpc::pb::campaign_service_server::CampaignServiceServer;
use crate::grpc::pb::listener_service_server::ListenerServiceServer;
pub use crate::state::AppState;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The runtime every server of this crate runs on: one current thread when `worker_threads` is
/// 0 (the default: measured best on one pinned core, docs/PERFORMANCE.md), else a multi-thread
/// runtime of that many workers. `interlude-bare` builds the same, so that its comparison holds.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder.max_blocking_threads(MAX_BLOCKING_THREADS).enable_all().build()
}

/// Threads for blocking work (store reads of cold listeners, console pages). Tokio's default
/// (512) let a burst of cold reads start ~30 threads, and each one that touched a cache stayed
/// registered with the caches' epoch collector, which walks them all as it advances: 7 % of a
/// durable server's CPU (docs/PERFORMANCE.md). SQLite reads on a few cores gain nothing from
/// more.
pub const MAX_BLOCKING_THREADS: usize = 4;

/// Serves every gRPC service on `listener` with `limits`, and the VAST edge on `http` when
/// given, until `shutdown` resolves; then reports NOT_SERVING on health, stops accepting on
/// both, and drains in-flight requests for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    limits: Limits,
    tls: Option<&Tls>,
    http: Option<crate::http::HttpEdge>,
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

    let upkeep = tokio::spawn(upkeep(state.clone()));
    // Cluster mode: what other replicas change reaches this one by polling.
    let follow = state.shared.clone().map(|store| {
        (
            tokio::spawn(crate::cluster::follow(state.clone(), store.clone(), reporter.clone())),
            tokio::spawn(store.follow_changes()),
        )
    });
    // One decision service for every edge: a break decided over VAST obeys the same rules
    // and its events are counted by the same code as over gRPC.
    let decisions = crate::service::Decisions::new(state.clone());

    // One bound on decisions in flight for every edge that decides.
    let admission = crate::admission::AdmissionLayer::new(limits.max_in_flight);

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let (http_stop_tx, mut http_stop_rx) = tokio::sync::watch::channel(false);
    let stop_accepting = async move {
        shutdown.await;
        for service in ["", AD_DECISION, CAMPAIGNS, LISTENERS] {
            reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
        tracing::info!("health NOT_SERVING; draining in-flight rpcs");
        let _ = http_stop_tx.send(true);
        let _ = draining_tx.send(());
    };
    let http_task = http.map(|edge| {
        let stopped = async move {
            let _ = http_stop_rx.wait_for(|&stop| stop).await;
        };
        tokio::spawn(crate::http::serve(edge, decisions.clone(), admission.permits(), stopped))
    });

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
        // decision service checks its callers in its handlers (`grpc::auth::admit_decision`): an
        // interceptor costs a request round trip through parts and an extension per call.
        // The hot service alone is admitted against the server-wide bound (admission.rs).
        // Unary calls end at the server's request timeout; streams at their idle timeout
        // (grpc/deadline.rs).
        .add_service(
            deadline(deadline::unary_only).layer(
                admission.layer(
                    AdDecisionServiceServer::new(DecisionService::new(decisions.clone()))
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
                auth::guard(&state.auth, auth::admin_only).layer(
                    CampaignServiceServer::new(CampaignAdmin::new(state.clone()))
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                ),
            ),
        )
        .add_service(
            deadline(crate::grpc::listeners::streams).layer(
                auth::guard(&state.auth, crate::grpc::listeners::roles).layer(
                    ListenerServiceServer::new(ListenerAdmin::new(state.clone(), limits.stream_idle_timeout))
                        .max_decoding_message_size(max)
                        .max_encoding_message_size(max),
                ),
            ),
        )
        .serve_with_incoming_shutdown(crate::net::incoming(listener, limits.edge()), stop_accepting);
    tokio::pin!(server);
    let mut drain_deadline = None;
    let result = tokio::select! {
        result = &mut server => result,
        _ = draining_rx => {
            let deadline = tokio::time::Instant::now() + grace;
            drain_deadline = Some(deadline);
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(grace_secs = grace.as_secs_f64(), "grace period over; dropping in-flight rpcs");
                    Ok(())
                }
            }
        }
    };
    // The HTTP edge stopped accepting with the gRPC one; what it still serves has the rest of
    // the same grace.
    if let Some(task) = http_task {
        let abort = task.abort_handle();
        let deadline = drain_deadline.unwrap_or_else(|| tokio::time::Instant::now() + grace);
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!(%error, "http edge failed"),
            Ok(Err(error)) => tracing::error!(%error, "http edge panicked"),
            Err(_) => {
                tracing::warn!("grace period over; dropping in-flight http requests");
                abort.abort();
            }
        }
    }
    if let Some(task) = watch_store {
        task.abort();
    }
    upkeep.abort();
    if let Some((directories, changes)) = follow {
        directories.abort();
        changes.abort();
    }
    if let Some(durable) = &state.durable {
        durable.release();
    }
    result?;
    tracing::info!("server stopped");
    Ok(())
}

/// Runs `AppState::upkeep` every `UPKEEP_INTERVAL` while the server runs: event ids, erasure
/// marks and play ids past every token's life leave the store while it serves, not only at the
/// next start.
async fn upkeep(state: AppState) {
    let mut every = tokio::time::interval(crate::state::UPKEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: start-up has just purged.
    every.tick().await;
    loop {
        every.tick().await;
        match state.upkeep(crate::grpc::now()).await {
            Ok(done) => tracing::debug!(histories_dropped = done.histories_dropped, "upkeep done"),
            Err(error) => tracing::warn!(%error, "upkeep failed; retried at the next interval"),
        }
    }
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
