//! The HTTP listener (`http_listen`): the VAST edge for audio players (`vast/`) and the ad-ops
//! console (`console/`), each its own router over the same decision service, served together,
//! behind the same connection edge as the gRPC listener (`net.rs`: a connection cap, a
//! first-request and an idle deadline, accept backoff).

use std::future::Future;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::console::Console;
use crate::service::Decisions;

/// The HTTP listener and what it serves.
#[derive(Debug)]
pub struct HttpEdge {
    pub listener: TcpListener,
    pub settings: crate::vast::Settings,
    /// Connection cap, first-request and idle deadlines (the gRPC listener's, counted apart).
    pub limits: crate::net::EdgeLimits,
    /// The server's own metrics, for the console's server page (None: metrics are off).
    pub metrics: Option<PrometheusHandle>,
}

/// Serves the VAST routes and the console on `edge.listener` until `shutdown` resolves, then
/// stops accepting and lets requests in flight finish (the caller bounds how long). The
/// console's sampler runs as long as the listener does.
pub async fn serve(
    edge: HttpEdge,
    decisions: Decisions,
    admission: Arc<Semaphore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = edge.listener.local_addr()?;
    let secure_cookies = edge.settings.public_url.as_deref().is_some_and(|u| u.starts_with("https://"));
    let console =
        Console::new(decisions.clone(), edge.metrics, edge.settings.currency.clone(), secure_cookies);
    let router = crate::vast::router(decisions, edge.settings, admission, local)
        .merge(crate::console::router(console.clone()));
    let (stop_sampling, sampling_stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(console.sample(async {
        let _ = sampling_stopped.await;
    }));
    let listener = crate::net::HttpListener::new(edge.listener, edge.limits)?;
    let app =
        router.layer(crate::net::ActivityLayer).into_make_service_with_connect_info::<crate::net::ConnInfo>();
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    let _ = stop_sampling.send(());
    let _ = sampler.await;
    served
}
