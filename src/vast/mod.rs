//! The VAST edge: ad tags and trackers over HTTP for standard audio players, beside the gRPC
//! edge and over the same `service::Decisions`.
//!
//! - `GET /vast/4.2?listener_id=…&track_genre=…&max_ads=…` decides a break exactly as `Decide`
//!   does and answers it as a VAST 4.2 pod (`document.rs`); no fill is `<VAST version="4.2"/>`.
//! - `GET /vast/track?e=<event>&t=<token>` and `GET /vast/error?t=<token>&code=<code>` record
//!   what the player reports through the code `RecordEvents` runs (`tracking.rs`), and answer
//!   204 whether the event counted now or was counted before.
//!
//! Bad parameters are a 400 naming each one; over the server's in-flight bound (the one the
//! gRPC decision service uses) or with the store unable to acknowledge, a 503 with
//! `Retry-After`. Ad tags are public URLs by nature (a web player cannot keep a secret), so this
//! edge asks for no token: the signed ad tokens are what keep its events honest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::service::decisions::{EventInput, Recorded};
use crate::service::{Decisions, ServiceError};
use crate::store::StoreError;
use crate::telemetry::{self, HttpMetrics};
use crate::validation::InvalidRequest;

pub mod consent;
pub mod document;
pub mod params;
pub mod tracking;

/// How this edge presents itself.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Scheme, host and port players reach this edge at (e.g. behind a proxy), without a
    /// trailing slash; None = `http://` and the request's own Host.
    pub public_url: Option<String>,
    /// ISO 4217 code of prices in documents.
    pub currency: String,
}

/// The routes, with CORS: any origin is echoed with credentials allowed, so that a web player
/// on the publisher's domain may fetch tags and fire trackers with its cookies.
pub fn router(
    decisions: Decisions,
    settings: Settings,
    admission: Arc<Semaphore>,
    local: SocketAddr,
) -> Router {
    let expires_secs = (decisions.state().signer.ttl_ms() / 1000).max(0) as u64;
    let edge = Edge(Arc::new(Inner {
        decisions,
        settings,
        admission,
        local,
        expires_secs,
        metrics: RouteMetrics {
            tag: HttpMetrics::new("vast", 200),
            track: HttpMetrics::new("track", 204),
            error: HttpMetrics::new("error", 204),
        },
    }));
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(true)
        .allow_methods([http::Method::GET])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(Duration::from_secs(600));
    Router::new()
        .route("/vast/4.2", get(vast_tag))
        .route("/vast/track", get(track))
        .route("/vast/error", get(error))
        .with_state(edge)
        .layer(cors)
}

/// The edge's shared handle. Cheap to clone.
#[derive(Clone, Debug)]
struct Edge(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    decisions: Decisions,
    settings: Settings,
    /// The server-wide bound on decision calls in flight, shared with the gRPC edge.
    admission: Arc<Semaphore>,
    /// This listener's own address: the base of tracker URLs for a request without a Host.
    local: SocketAddr,
    expires_secs: u64,
    metrics: RouteMetrics,
}

#[derive(Debug)]
struct RouteMetrics {
    tag: HttpMetrics,
    track: HttpMetrics,
    error: HttpMetrics,
}

/// Why a request was not answered as asked.
#[derive(Debug)]
enum Failure {
    Invalid(InvalidRequest),
    Overloaded,
    Unavailable(String),
    Internal(String),
}

// === impl Edge ===

impl Edge {
    async fn vast_tag(&self, uri: &Uri, headers: &HeaderMap) -> Result<Response<Body>, Failure> {
        let _permit = self.admit()?;
        let query = params::Query::parse(uri.query().unwrap_or_default());
        let request = params::ad_request(&query, headers, &self.0.decisions.state().vocabulary)
            .map_err(Failure::Invalid)?;
        let served = self.0.decisions.decide(&request).await?;
        let base = self.base_url(uri, headers);
        let context = document::Context {
            base_url: &base,
            currency: &self.0.settings.currency,
            expires_secs: self.0.expires_secs,
        };
        let body = document::write(&served, &context).map_err(|e| Failure::Internal(e.to_string()))?;
        let mut response = Response::new(Body::from(body));
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    async fn record(&self, event: Result<EventInput<'_>, InvalidRequest>) -> Result<Response<Body>, Failure> {
        let _permit = self.admit()?;
        let event = event.map_err(Failure::Invalid)?;
        let Recorded { rejections, .. } =
            self.0.decisions.record(&[Ok(event)]).await.map_err(tracker_failure)?;
        // One event: rejected, the batch is refused above; counted now or before, both 204.
        debug_assert!(rejections.is_empty());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// A permit of the server-wide in-flight bound, or a refusal at once.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Failure> {
        self.0.admission.clone().try_acquire_owned().map_err(|_| {
            telemetry::record_shed();
            Failure::Overloaded
        })
    }

    /// Where trackers point: the configured public URL, else this request's own authority.
    fn base_url(&self, uri: &Uri, headers: &HeaderMap) -> String {
        if let Some(url) = &self.0.settings.public_url {
            return url.clone();
        }
        let authority = uri.authority().cloned().or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
        });
        match authority {
            // An authority parsed, so it holds no character that could break out of a URL.
            Some(a) if !a.as_str().contains('@') => format!("http://{a}"),
            _ => format!("http://{}", self.0.local),
        }
    }
}

/// A tracker's failure, with the service's field names turned into the URL's parameters.
fn tracker_failure(e: ServiceError) -> Failure {
    match e {
        ServiceError::Invalid(invalid) => Failure::Invalid(InvalidRequest {
            violations: invalid
                .violations
                .into_iter()
                .map(|(field, reason)| {
                    let param = if field.ends_with(".occurred_at") { "ts" } else { "t" };
                    (param.to_owned(), reason)
                })
                .collect(),
        }),
        other => other.into(),
    }
}

async fn vast_tag(State(edge): State<Edge>, uri: Uri, headers: HeaderMap) -> Response<Body> {
    let started = Instant::now();
    let response = edge.vast_tag(&uri, &headers).await.unwrap_or_else(Failure::into_response);
    edge.0.metrics.tag.record(response.status().as_u16(), started.elapsed());
    response
}

async fn track(State(edge): State<Edge>, uri: Uri) -> Response<Body> {
    tracker(&edge, &uri, tracking::tracked_event, &edge.0.metrics.track).await
}

async fn error(State(edge): State<Edge>, uri: Uri) -> Response<Body> {
    tracker(&edge, &uri, tracking::error_event, &edge.0.metrics.error).await
}

/// A tracker route: its query read by `event`, recorded, and measured in `metrics`.
async fn tracker(
    edge: &Edge,
    uri: &Uri,
    event: for<'q> fn(&'q params::Query<'_>) -> Result<EventInput<'q>, InvalidRequest>,
    metrics: &HttpMetrics,
) -> Response<Body> {
    let started = Instant::now();
    let query = params::Query::parse(uri.query().unwrap_or_default());
    let response = edge.record(event(&query)).await.unwrap_or_else(Failure::into_response);
    metrics.record(response.status().as_u16(), started.elapsed());
    response
}

// === impl Failure ===

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(invalid) => Failure::Invalid(invalid),
            ServiceError::Store(StoreError::Unavailable(reason)) => Failure::Unavailable(reason),
            ServiceError::Durable(e) => {
                tracing::error!(error = %e, "write not made durable");
                Failure::Unavailable(format!("the event could not be made durable and was not recorded: {e}"))
            }
            ServiceError::Store(e) => Failure::Internal(e.to_string()),
        }
    }
}

impl Failure {
    /// A plain-text answer: each bad parameter on its own line as `name: what is wrong`.
    fn into_response(self) -> Response<Body> {
        let (status, text) = match self {
            Failure::Invalid(invalid) => {
                let mut text = String::new();
                for (param, reason) in &invalid.violations {
                    text.push_str(param);
                    text.push_str(": ");
                    text.push_str(reason);
                    text.push('\n');
                }
                (StatusCode::BAD_REQUEST, text)
            }
            Failure::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server overloaded: too many calls in flight; retry with backoff\n".to_owned(),
            ),
            Failure::Unavailable(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            Failure::Internal(reason) => {
                tracing::error!(error = %reason, "vast request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".to_owned())
            }
        };
        let mut response = Response::new(Body::from(text));
        *response.status_mut() = status;
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
