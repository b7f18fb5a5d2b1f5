//! Wiring: the shared state, the gRPC server with health and reflection, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::config::{Config, Limits};
use crate::decision::Policy;
use crate::grpc::campaigns::CampaignAdmin;
use crate::grpc::decisions::DecisionService;
use crate::grpc::listeners::ListenerAdmin;
use crate::grpc::pb;
use crate::grpc::pb::ad_decision_service_server::AdDecisionServiceServer;
use crate::grpc::pb::campaign_service_server::CampaignServiceServer;
use crate::grpc::pb::listener_service_server::ListenerServiceServer;
use crate::store::delivery::SuppressionPolicy;
use crate::store::{Catalog, Delivery, Listeners, Vocabulary};
use crate::token::TokenSigner;

/// Everything the services share. Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct AppState {
    pub catalog: Catalog,
    pub listeners: Listeners,
    pub delivery: Delivery,
    pub vocabulary: Vocabulary,
    pub signer: Arc<TokenSigner>,
    pub policy: Arc<Policy>,
    pub suppression: SuppressionPolicy,
    pub taste_half_life_ms: i64,
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
        let key = config.token_key.clone().unwrap_or_else(|| {
            use rand::RngCore as _;
            let mut key = vec![0u8; 32];
            rand::rng().fill_bytes(&mut key);
            key
        });
        let token_ttl_ms = config.token_ttl.as_millis() as i64;
        Self {
            catalog: Catalog::default(),
            listeners: Listeners::default(),
            // Event ids are remembered a little longer than a token lives (clock skew).
            delivery: Delivery::new(config.token_ttl + Duration::from_secs(600)),
            vocabulary: Vocabulary::default(),
            signer: Arc::new(TokenSigner::new(&key, token_ttl_ms)),
            policy: Arc::new(config.policy.clone()),
            suppression: config.suppression,
            taste_half_life_ms: config.taste_half_life.as_millis() as i64,
        }
    }
}

/// Serves every gRPC service on `listener` with `limits` until `shutdown` resolves, then
/// reports NOT_SERVING on health, stops accepting, and drains in-flight RPCs for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    limits: Limits,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<AdDecisionServiceServer<DecisionService>>().await;
    reporter.set_serving::<CampaignServiceServer<CampaignAdmin>>().await;
    reporter.set_serving::<ListenerServiceServer<ListenerAdmin>>().await;

    let reflection_v1 = reflection_builder().build_v1()?;
    // grpcurl 1.8 speaks only v1alpha.
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;

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
    let server = Server::builder()
        // Over the in-flight limit a request is refused with RESOURCE_EXHAUSTED at once: an ad
        // break cannot wait, and an unbounded queue would only turn overload into latency.
        .concurrency_limit_per_connection(limits.max_in_flight_per_connection)
        .load_shed(true)
        .timeout(limits.request_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_interval))
        .http2_max_header_list_size(limits.max_header_list_bytes)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            AdDecisionServiceServer::new(DecisionService::new(state.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            CampaignServiceServer::new(CampaignAdmin::new(state.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            ListenerServiceServer::new(ListenerAdmin::new(state))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(incoming(listener), stop_accepting);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        _ = draining_rx => match tokio::time::timeout(grace, &mut server).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(grace_secs = grace.as_secs_f64(), "grace period over; dropping in-flight rpcs"),
        },
    }
    tracing::info!("server stopped");
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: a unary response is several small writes
/// (headers, data, trailers), and Nagle plus delayed ACKs would hold them back ~40 ms.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        Ok(stream)
    })
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
