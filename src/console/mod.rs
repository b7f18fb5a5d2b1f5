//! The ad-ops console: read-only web pages of delivery, pacing and why an ad did not serve,
//! on the HTTP listener beside the VAST edge and over the same state and decision service.
//!
//! - `/console/campaigns` — every campaign with its spend, pacing and fill share; searched,
//!   sorted and paged on the server (`table.rs`).
//! - `/console/campaigns/{id}` — one campaign: delivery against its pacing curve over the
//!   flight and the day (SVG drawn here, `chart.rs`, from the points `samples.rs` keeps), caps,
//!   targeting, the VAST error codes its players reported.
//! - `/console/server` — decisions per second, fill and no-fill reasons over the last minutes,
//!   from the server's own metrics.
//! - `/console/explain` — the engine's explain for a listener and context, as a dry run
//!   (`Decisions::preview`: nothing reserved, held or counted).
//!
//! Every page needs the admin token (`session.rs`): a bearer header, or the session cookie the
//! login form sets. Without it: 401 and the login form, nothing else. No GET changes state,
//! and the session cookie is `SameSite=Strict`, so no other site can act through a browser
//! that is logged in; the pages send a CSP that allows no script and no framing.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::middleware::{self, Next};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use maud::Markup;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::decision::pacing;
use crate::domain::{Campaign, GenreId, UnixMillis};
use crate::service::{Decisions, ServiceError, now};
use crate::store::StoreError;

pub mod chart;
pub mod pages;
pub mod samples;
pub mod session;
pub mod table;

use samples::{DeliveryPoint, Samples, ServerPoint};
use session::Sessions;

/// The console's shared handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Console(Arc<Inner>);

struct Inner {
    decisions: Decisions,
    sessions: Sessions,
    samples: Samples,
    /// The server's own metrics (None when `metrics_listen` is off: nothing was recorded).
    metrics: Option<PrometheusHandle>,
    /// ISO 4217 code of the amounts shown.
    currency: String,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("metrics", &self.metrics.is_some()).finish_non_exhaustive()
    }
}

/// What the explain form asked, as typed (shown back in the form).
#[derive(Clone, Debug, Default)]
pub struct ExplainForm {
    pub listener_id: String,
    pub member_id: String,
    pub track_genre: String,
    pub country: String,
    pub region: String,
    pub metro: String,
    pub max_ads: String,
    pub max_duration: String,
}

// === impl Console ===

impl Console {
    /// A console over `decisions`' state; `secure_cookies` when it is reached over https.
    pub fn new(
        decisions: Decisions,
        metrics: Option<PrometheusHandle>,
        currency: String,
        secure_cookies: bool,
    ) -> Self {
        let sessions = Sessions::new(decisions.state().auth.clone(), secure_cookies);
        Self(Arc::new(Inner { decisions, sessions, samples: Samples::default(), metrics, currency }))
    }

    /// Samples the server's decision counters every `SERVER_INTERVAL` and each campaign's
    /// delivery every `DELIVERY_INTERVAL`, from now until `stop` resolves. A pass over 10,000
    /// campaigns reads memory only (counters, no store) and takes a few milliseconds, on tokio's
    /// blocking pool.
    pub async fn sample(self, stop: impl Future<Output = ()>) {
        let mut server = tokio::time::interval(samples::SERVER_INTERVAL);
        let mut delivery = tokio::time::interval(samples::DELIVERY_INTERVAL);
        server.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        delivery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = server.tick() => self.sample_server(now()),
                _ = delivery.tick() => {
                    // A pass over every campaign: off the runtime's thread, as the table is.
                    let console = self.clone();
                    let _ = tokio::task::spawn_blocking(move || console.sample_delivery(now())).await;
                }
            }
        }
    }

    /// One sample of the decision counters in the server's metrics.
    pub fn sample_server(&self, at: UnixMillis) {
        if let Some(point) = self.server_point(at) {
            self.0.samples.record_server(point);
        }
    }

    /// The decision counters in the server's metrics at `at` (None: metrics are off).
    fn server_point(&self, at: UnixMillis) -> Option<ServerPoint> {
        let metrics = self.0.metrics.as_ref()?;
        Some(ServerPoint { at, decisions: samples::decision_counters(&metrics.render()) })
    }

    /// One sample of every campaign's delivery.
    pub fn sample_delivery(&self, at: UnixMillis) {
        let state = self.0.decisions.state();
        let (campaigns, _) = state.catalog.list(None, usize::MAX, None);
        for c in &campaigns {
            let counters = state.delivery.counters(&c.id, at);
            self.0.samples.record_delivery(&c.id, DeliveryPoint::of(&counters, at));
        }
        let ids: std::collections::HashSet<_> = campaigns.iter().map(|c| c.id.clone()).collect();
        self.0.samples.retain_campaigns(|id| ids.contains(id));
    }
}

/// The console's routes. Every page but the login form and the stylesheet needs an admin.
pub fn router(console: Console) -> Router {
    let pages = Router::new()
        .route("/console", get(|| async { redirect("/console/campaigns") }))
        .route("/console/", get(|| async { redirect("/console/campaigns") }))
        .route("/console/campaigns", get(campaigns))
        .route("/console/campaigns/{id}", get(campaign))
        .route("/console/server", get(server))
        .route("/console/explain", get(explain))
        .route_layer(middleware::from_fn_with_state(console.clone(), require_admin));
    Router::new()
        .merge(pages)
        .route("/console/login", get(|| async { html(StatusCode::OK, pages::login(false)) }).post(login))
        .route("/console/logout", post(logout))
        .route("/console/console.css", get(stylesheet))
        .layer(middleware::map_response(secure_headers))
        .with_state(console)
}

/// Lets admins through; anyone else gets 401 and the login form.
async fn require_admin(State(console): State<Console>, request: Request<Body>, next: Next) -> Response<Body> {
    if console.0.sessions.admits(request.headers(), now()) {
        return next.run(request).await;
    }
    let mut response = html(StatusCode::UNAUTHORIZED, pages::login(false));
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"interlude-console\""));
    response
}

/// No caching, no framing, no script, no sniffing, no referrer beyond this origin: on every
/// console response. (`no-referrer` would make browsers send `Origin: null` with the login
/// form, which the cross-origin check must refuse.)
async fn secure_headers(mut response: Response<Body>) -> Response<Body> {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// The login form's POST: the admin token sets a session cookie; anything else is a 401.
/// A cross-origin post (an `Origin` other than this host) is refused before the token is read.
async fn login(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    if !same_origin(&headers) {
        return html(StatusCode::FORBIDDEN, pages::bad_request("cross-origin login refused"));
    }
    let token = form_urlencoded::parse(&body).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
    match token {
        Some(token) if console.0.sessions.is_admin_token(&token) => {
            let mut response = redirect("/console/campaigns");
            if let Ok(cookie) = HeaderValue::from_str(&console.0.sessions.issue(now())) {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            tracing::info!(target: crate::auth::AUDIT, what = "console login", "admin logged in to the console");
            response
        }
        _ => html(StatusCode::UNAUTHORIZED, pages::login(true)),
    }
}

async fn logout(State(console): State<Console>, headers: HeaderMap) -> Response<Body> {
    if !same_origin(&headers) {
        return html(StatusCode::FORBIDDEN, pages::bad_request("cross-origin logout refused"));
    }
    let mut response = redirect("/console/login");
    if let Ok(cookie) = HeaderValue::from_str(&console.0.sessions.clear()) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn stylesheet() -> Response<Body> {
    let mut response = Response::new(Body::from(pages::CSS));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    response
}

async fn campaigns(State(console): State<Console>, uri: Uri) -> Response<Body> {
    let query = match table::TableQuery::parse(uri.query().unwrap_or_default()) {
        Ok(q) => q,
        Err(message) => return html(StatusCode::BAD_REQUEST, pages::bad_request(&message)),
    };
    // A pass over every campaign (~3 ms at 10,000): on tokio's blocking pool, so that a page
    // view does not hold decisions back on the runtime's thread.
    let rendered = tokio::task::spawn_blocking(move || {
        let page = table::page(console.0.decisions.state(), &query, now());
        pages::layout("Campaigns", pages::campaigns(&page, &query, &console.0.currency))
    })
    .await;
    match rendered {
        Ok(markup) => html(StatusCode::OK, markup),
        Err(error) => {
            tracing::error!(%error, "the campaigns page failed");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::failed("the campaigns page failed; see the server's log"),
            )
        }
    }
}

async fn campaign(State(console): State<Console>, Path(id): Path<String>) -> Response<Body> {
    let state = console.0.decisions.state();
    let c = match state.catalog.get(&id) {
        Ok(c) => c,
        Err(_) => return html(StatusCode::NOT_FOUND, pages::not_found(&format!("No campaign {id:?}."))),
    };
    let at = now();
    let counters = state.delivery.counters(&c.id, at);
    let pace = pacing::status(&c, &counters.recorded_spend(), at);
    let since = UnixMillis(c.flight_start.map_or(0, |s| s.0).min(at.0 - crate::domain::DAY_MS));
    let points = console.0.samples.delivery_since(&c.id, since);
    let charts = chart::pacing_charts(&c, &points, DeliveryPoint::of(&counters, at));
    let targeting = describe_targeting(&c, |g| state.vocabulary.name(g).to_string());
    let body = pages::campaign(&c, &counters, pace, &charts, &targeting, &console.0.currency);
    html(StatusCode::OK, pages::layout(&format!("{} — {}", c.id.as_str(), c.name), body))
}

async fn server(State(console): State<Console>) -> Response<Body> {
    // The page shows up to now, not up to the last tick (without keeping the view's point:
    // a page refreshed often must not crowd the window's samples out).
    let mut points = console.0.samples.server();
    points.extend(console.server_point(now()));
    html(StatusCode::OK, pages::layout("Server", pages::server(&points, console.0.metrics.is_some())))
}

async fn explain(State(console): State<Console>, uri: Uri) -> Response<Body> {
    let raw = uri.query().unwrap_or_default();
    let form = ExplainForm::read(raw);
    if raw.is_empty() {
        return html(StatusCode::OK, pages::layout("Explain", pages::explain(&form, None)));
    }
    let state = console.0.decisions.state();
    let query = crate::vast::params::Query::parse(raw);
    let request = match crate::vast::params::ad_request(&query, &HeaderMap::new(), &state.vocabulary) {
        Ok(r) => r,
        Err(invalid) => {
            let message = invalid.to_string();
            return html(
                StatusCode::BAD_REQUEST,
                pages::layout("Explain", pages::explain(&form, Some(Err(&message)))),
            );
        }
    };
    match console.0.decisions.preview(&request).await {
        Ok(decision) => {
            html(StatusCode::OK, pages::layout("Explain", pages::explain(&form, Some(Ok(&decision)))))
        }
        Err(error) => {
            let (status, message) = match &error {
                ServiceError::Invalid(e) => (StatusCode::BAD_REQUEST, e.to_string()),
                ServiceError::Store(StoreError::NotFound { .. }) => {
                    (StatusCode::NOT_FOUND, error.to_string())
                }
                _ => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
            };
            html(status, pages::layout("Explain", pages::explain(&form, Some(Err(&message)))))
        }
    }
}

// === impl ExplainForm ===

impl ExplainForm {
    fn read(query: &str) -> Self {
        let mut form = ExplainForm { max_ads: "2".into(), max_duration: "60".into(), ..Default::default() };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let field = match &*name {
                "listener_id" => &mut form.listener_id,
                "member_id" => &mut form.member_id,
                "track_genre" => &mut form.track_genre,
                "country" => &mut form.country,
                "region" => &mut form.region,
                "metro" => &mut form.metro,
                "max_ads" => &mut form.max_ads,
                "max_duration" => &mut form.max_duration,
                _ => continue,
            };
            *field = value.chars().take(200).collect();
        }
        form
    }
}

/// A campaign's targeting rules in words, rule by rule (empty = anyone).
fn describe_targeting(c: &Campaign, genre: impl Fn(GenreId) -> String) -> Vec<(&'static str, String)> {
    let t = &c.targeting;
    let genres = |ids: &[GenreId]| ids.iter().map(|&g| genre(g)).collect::<Vec<_>>().join(", ");
    let places = |places: &[crate::domain::GeoLocation]| {
        places
            .iter()
            .map(|p| {
                [&*p.country, &*p.region, &*p.metro]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut out = Vec::new();
    let mut add = |rule: &'static str, value: String| {
        if !value.is_empty() {
            out.push((rule, value));
        }
    };
    add("Listeners who like", genres(&t.affinity_genres));
    add("Not listeners who like", genres(&t.exclude_affinity_genres));
    add("While playing", genres(&t.track_genres));
    add("Not while playing", genres(&t.exclude_track_genres));
    add(
        "Milestones",
        t.milestones
            .iter()
            .map(|m| format!("{} plays of {}", m.min_plays, genre(m.genre)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let geo_of = if t.geo_use_home { "Home in" } else { "Located in" };
    add(geo_of, places(&t.geo_include));
    add("Not in", places(&t.geo_exclude));
    add("Devices", t.devices.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>().join(", "));
    add("Ages", t.age_brackets.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", "));
    if let Some(d) = t.daypart {
        add("Hours", format!("{}:00–{}:00 local, days mask {:07b}", d.start_hour, d.end_hour, d.days));
    }
    add("Signals", t.signals.iter().map(|s| format!("{:?}", s.signal)).collect::<Vec<_>>().join(", "));
    add(
        "Not with signals",
        t.exclude_signals.iter().map(|s| format!("{:?}", s.signal)).collect::<Vec<_>>().join(", "),
    );
    let category = |c: &crate::domain::Category| match crate::validation::iab_category_name(c.as_str()) {
        Some(name) => format!("{name} (IAB {})", c.as_str()),
        None => format!("IAB {}", c.as_str()),
    };
    add("Categories", c.categories.iter().map(category).collect::<Vec<_>>().join(", "));
    out
}

/// An origin other than the request's own host (a `POST` from another site's page).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        // Browsers send Origin with every POST; a client that does not is not a browser.
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

fn html(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut response = Response::new(Body::from(markup.into_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_post_from_this_host_or_from_no_browser_passes_the_origin_check() {
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            h
        };
        assert!(same_origin(&headers(None)));
        assert!(same_origin(&headers(Some("http://127.0.0.1:8080"))));
        assert!(!same_origin(&headers(Some("https://evil.example"))));
        assert!(!same_origin(&headers(Some("null"))));
    }
}
