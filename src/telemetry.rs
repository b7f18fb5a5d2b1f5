//! Logs and metrics: the tracing subscriber, every metric name, the helpers that record them,
//! and the Prometheus `/metrics` endpoint.
//!
//! Invariant: metric names live only here, and only these helpers emit metrics (clippy.toml
//! forbids the `metrics` macros elsewhere). Label values are bounded sets. The exception that
//! proves the rule: the standard `process_*` metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …) are named by the `metrics-process` crate, as every
//! Prometheus client names them (`process_cpu_seconds_total` is exported as a gauge: the
//! `metrics` crate's counters are integers, which would round CPU time to whole seconds).

// The one module allowed to emit metrics.
#![allow(clippy::disallowed_macros)]

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// RPCs handled, by `rpc` and `grpc_status`.
pub const RPC_REQUESTS: &str = "interlude_rpc_requests_total";
/// RPC latency in seconds, by `rpc`.
pub const RPC_DURATION: &str = "interlude_rpc_duration_seconds";
/// Decisions, by `fill` (paid, house, empty) and `reason`.
pub const DECISIONS: &str = "interlude_decisions_total";
/// Ads served, by `tier`.
pub const ADS_SERVED: &str = "interlude_ads_served_total";
/// Events applied, by `kind` and `result` (accepted, duplicate).
pub const EVENTS: &str = "interlude_events_total";
/// Playback errors players reported (VAST `Error` URLs, RecordEvents), by VAST error `code`.
pub const PLAYBACK_ERRORS: &str = "interlude_playback_errors_total";
/// HTTP requests of the VAST edge, by `route` (vast, track, error) and `status`.
pub const HTTP_REQUESTS: &str = "interlude_http_requests_total";
/// HTTP latency of the VAST edge in seconds, by `route`.
pub const HTTP_DURATION: &str = "interlude_http_duration_seconds";
/// Plays ingested, by `result` (accepted, rejected).
pub const PLAYS: &str = "interlude_plays_total";
/// Connections the gRPC listener holds open.
pub const CONNECTIONS_OPEN: &str = "interlude_connections_open";
/// Connections the server closed itself, by `reason` (over_limit, handshake_timeout,
/// idle_timeout), and accept failures (`reason` = accept_failed).
pub const CONNECTIONS_CUT: &str = "interlude_connections_cut_total";
/// Decision calls refused with RESOURCE_EXHAUSTED because the server had `max_in_flight`
/// of them running (admission.rs).
pub const CALLS_SHED: &str = "interlude_calls_shed_total";
/// Campaigns in the catalog.
pub const CAMPAIGNS: &str = "interlude_campaigns";
/// Durable-store commits, by `result` (ok, failed).
pub const STORE_COMMITS: &str = "interlude_store_commits_total";
/// Write RPC batches that shared one commit (group commit at work).
pub const STORE_BATCHES_PER_COMMIT: &str = "interlude_store_batches_per_commit";
/// Time of one commit, fsync included.
pub const STORE_COMMIT_DURATION: &str = "interlude_store_commit_duration_seconds";
/// Cluster mode: 1 while the shared store answers this replica, 0 while it does not.
pub const SHARED_STORE_UP: &str = "interlude_shared_store_up";
/// Cluster mode: decisions made on this replica's copy of a listener, the shared store not
/// answering.
pub const SHARED_FALLBACKS: &str = "interlude_shared_fallbacks_total";
/// Cluster mode: ads not served because their budget share could not be held in the shared
/// store (budgets fail closed).
pub const SHARED_RESERVE_FAILURES: &str = "interlude_shared_reserve_failures_total";
/// Cluster mode: writes acknowledged on a master that had no replica at the time (after a
/// failover, until the failed node comes back as a replica).
pub const SHARED_UNREPLICATED_WRITES: &str = "interlude_shared_unreplicated_writes_total";
/// Cluster mode: decisions that had to read their listener from the shared store (label
/// `outcome`: `read`, or `never_stored` when the filter of stored listeners saved the read).
pub const SHARED_LISTENER_READS: &str = "interlude_shared_listener_reads_total";

/// Latency buckets (seconds): decisions take microseconds, so the low end is fine-grained.
const LATENCY_BUCKETS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Installs the global tracing subscriber (stderr) with the validated filter.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(crate::config::DEFAULT_LOG));
    // Ignoring the error: a subscriber installed earlier (in tests) stays in place.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Builds the Prometheus recorder with Interlude's buckets (not yet installed).
pub fn prometheus_recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(RPC_DURATION.into()),
            LATENCY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(STORE_COMMIT_DURATION.into()),
                LATENCY_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(HTTP_DURATION.into()),
                LATENCY_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(STORE_BATCHES_PER_COMMIT.into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            )
        })
        .unwrap_or_else(|_| PrometheusBuilder::new())
        .build_recorder()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the recorder globally and starts its upkeep; returns the handle that renders
/// `/metrics`.
///
/// A recorder made with `build_recorder` keeps every histogram sample until someone drains it:
/// unscraped, the server grew ~20 bytes per Decide (18.5 MB in 20 s of load, measured). A plain
/// thread drains it every second, off the runtime, in batches small enough not to be noticed.
pub fn install_metrics() -> Result<PrometheusHandle, TelemetryError> {
    let recorder = prometheus_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| TelemetryError::RecorderTaken)?;
    metrics_process::Collector::default().describe();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("interlude-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        })
        .map_err(TelemetryError::Upkeep)?;
    Ok(handle)
}

/// Why the metrics recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("a metrics recorder is already installed in this process")]
    RecorderTaken,
    #[error("starting the metrics upkeep thread: {0}")]
    Upkeep(std::io::Error),
}

/// The metric handles of one RPC, registered once. Looking a labelled metric up in the registry
/// costs ~150–200 ns and an allocation per call (measured); a handle costs ~5 ns. Handles made
/// before the recorder is installed are no-ops, so they are made on first use (main installs the
/// recorder before anything else).
#[derive(Debug)]
pub struct RpcMetrics {
    rpc: &'static str,
    ok: metrics::Counter,
    duration: metrics::Histogram,
}

impl RpcMetrics {
    /// The handles of RPC `rpc`.
    pub fn new(rpc: &'static str) -> Self {
        Self {
            rpc,
            ok: metrics::counter!(RPC_REQUESTS, "rpc" => rpc, "grpc_status" => code_label(tonic::Code::Ok)),
            duration: metrics::histogram!(RPC_DURATION, "rpc" => rpc),
        }
    }

    /// Records one finished call (failures take the registry's slow path: they are rare).
    pub fn record(&self, code: tonic::Code, elapsed: Duration) {
        if code == tonic::Code::Ok {
            self.ok.increment(1);
        } else {
            metrics::counter!(RPC_REQUESTS, "rpc" => self.rpc, "grpc_status" => code_label(code))
                .increment(1);
        }
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// The handles of one HTTP route's metrics, registered once (the hot routes answer 200/204).
#[derive(Debug)]
pub struct HttpMetrics {
    route: &'static str,
    ok_status: u16,
    ok: metrics::Counter,
    duration: metrics::Histogram,
}

impl HttpMetrics {
    /// The handles of `route`, whose usual answer is `ok_status`.
    pub fn new(route: &'static str, ok_status: u16) -> Self {
        Self {
            route,
            ok_status,
            ok: metrics::counter!(HTTP_REQUESTS, "route" => route, "status" => ok_status.to_string()),
            duration: metrics::histogram!(HTTP_DURATION, "route" => route),
        }
    }

    /// Records one answered request (other statuses take the registry's slow path).
    pub fn record(&self, status: u16, elapsed: Duration) {
        if status == self.ok_status {
            self.ok.increment(1);
        } else {
            metrics::counter!(HTTP_REQUESTS, "route" => self.route, "status" => status.to_string())
                .increment(1);
        }
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// Decision outcome counters, registered once (see `RpcMetrics`): one per fill × reason, one per
/// tier, addressed by the index of the label in the lists given to `new`.
#[derive(Debug)]
pub struct DecisionMetrics {
    decided: Vec<metrics::Counter>,
    reasons: usize,
    served: Vec<metrics::Counter>,
}

impl DecisionMetrics {
    /// Registers the counters of every combination of these labels.
    pub fn new(fills: &[&'static str], reasons: &[&'static str], tiers: &[&'static str]) -> Self {
        let decided = fills
            .iter()
            .flat_map(|&fill| {
                reasons
                    .iter()
                    .map(move |&reason| metrics::counter!(DECISIONS, "fill" => fill, "reason" => reason))
            })
            .collect();
        let served = tiers.iter().map(|&tier| metrics::counter!(ADS_SERVED, "tier" => tier)).collect();
        Self { decided, reasons: reasons.len(), served }
    }

    /// Records one decision: its fill and reason, and the tier of each ad (label indexes).
    pub fn record(&self, fill: usize, reason: usize, tiers: impl Iterator<Item = usize>) {
        if let Some(counter) = self.decided.get(fill * self.reasons + reason) {
            counter.increment(1);
        }
        for tier in tiers {
            if let Some(counter) = self.served.get(tier) {
                counter.increment(1);
            }
        }
    }
}

/// Records applied events: counted, retried (same event id), and already counted for their ad
/// under another id (replays).
pub fn record_events(accepted: u32, retried: u32, already_counted: u32) {
    metrics::counter!(EVENTS, "result" => "accepted").increment(u64::from(accepted));
    metrics::counter!(EVENTS, "result" => "duplicate").increment(u64::from(retried));
    metrics::counter!(EVENTS, "result" => "already_counted").increment(u64::from(already_counted));
}

/// Records one playback error a player reported, by its VAST error code.
pub fn record_playback_error(code: u16) {
    metrics::counter!(PLAYBACK_ERRORS, "code" => code.to_string()).increment(1);
}

/// Records the number of open gRPC connections.
pub fn record_connections_open(n: usize) {
    metrics::gauge!(CONNECTIONS_OPEN).set(n as f64);
}

/// Records a connection the server cut (or an accept that failed), by a fixed `reason`.
pub fn record_connection_cut(reason: &'static str) {
    metrics::counter!(CONNECTIONS_CUT, "reason" => reason).increment(1);
}

/// Records a decision call refused by admission.
pub fn record_shed() {
    metrics::counter!(CALLS_SHED).increment(1);
}

/// Records ingested plays.
pub fn record_plays(accepted: u64, rejected: u64) {
    metrics::counter!(PLAYS, "result" => "accepted").increment(accepted);
    metrics::counter!(PLAYS, "result" => "rejected").increment(rejected);
}

/// Records one durable-store commit of `batches` write batches.
pub fn record_commit(ok: bool, batches: usize, elapsed: Duration) {
    metrics::counter!(STORE_COMMITS, "result" => if ok { "ok" } else { "failed" }).increment(1);
    metrics::histogram!(STORE_BATCHES_PER_COMMIT).record(batches as f64);
    metrics::histogram!(STORE_COMMIT_DURATION).record(elapsed.as_secs_f64());
}

/// Records whether the shared store answers (cluster mode).
pub fn record_shared_store_up(up: bool) {
    metrics::gauge!(SHARED_STORE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Records a decision made on this replica's copy of a listener (cluster mode).
pub fn record_shared_fallback() {
    metrics::counter!(SHARED_FALLBACKS).increment(1);
}

/// Records whether a decision read its listener from the shared store, or knew it never
/// stored (cluster mode; trusted copies are not counted).
pub fn record_shared_listener_read(read: bool) {
    let outcome = if read { "read" } else { "never_stored" };
    metrics::counter!(SHARED_LISTENER_READS, "outcome" => outcome).increment(1);
}

/// Records an ad not served because its budget share could not be held (cluster mode).
pub fn record_shared_reserve_failure() {
    metrics::counter!(SHARED_RESERVE_FAILURES).increment(1);
}

/// Records a write acknowledged without a replica (cluster mode).
pub fn record_unreplicated_write() {
    metrics::counter!(SHARED_UNREPLICATED_WRITES).increment(1);
}

/// Records the catalog size.
pub fn record_campaigns(n: usize) {
    metrics::gauge!(CAMPAIGNS).set(n as f64);
}

/// Serves `GET /metrics` in Prometheus text format on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(metrics_response(&req, &handle)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
            {
                tracing::debug!(%error, "metrics connection ended");
            }
        });
    }
}

fn metrics_response(req: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let mut response = if req.uri().path() == "/metrics" {
        // Read at the scrape, so a scraper's before/after difference of CPU seconds is exact
        // to the kernel's tick (the load harness divides it by the requests it sent).
        metrics_process::Collector::default().collect();
        Response::new(Full::new(Bytes::from(handle.render())))
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found; try /metrics\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// The `grpc_status` label: the code's canonical name, a bounded set.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_metrics_render_as_prometheus_text() {
        let recorder = prometheus_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let rpc = RpcMetrics::new("Decide");
            rpc.record(tonic::Code::Ok, Duration::from_micros(80));
            rpc.record(tonic::Code::Ok, Duration::from_micros(90));
            rpc.record(tonic::Code::InvalidArgument, Duration::from_micros(20));
            let decisions =
                DecisionMetrics::new(&["paid", "empty"], &["served", "no_candidates"], &["standard"]);
            decisions.record(0, 0, [0, 0].into_iter());
            decisions.record(1, 1, std::iter::empty());
        });
        let text = handle.render();
        assert!(text.contains(r#"interlude_rpc_requests_total{rpc="Decide",grpc_status="OK"} 2"#), "{text}");
        assert!(text.contains(r#"grpc_status="INVALID_ARGUMENT"} 1"#), "{text}");
        assert!(text.contains(r#"interlude_rpc_duration_seconds_count{rpc="Decide"} 3"#), "{text}");
        assert!(text.contains(r#"interlude_decisions_total{fill="paid",reason="served"} 1"#), "{text}");
        assert!(
            text.contains(r#"interlude_decisions_total{fill="empty",reason="no_candidates"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"interlude_ads_served_total{tier="standard"} 2"#), "{text}");
    }
}
