//! `interlude-bare`: the reference for what the gRPC stack itself costs — a tonic server with
//! nothing but grpc.health.v1 (tonic-health) and a Decide that decides nothing, on the same
//! tonic, hyper and tokio as Interlude and the same runtime flavour (one current thread unless
//! `--worker-threads`). No layers, no limits, no metrics on the request path; mimalloc and
//! TCP_NODELAY as Interlude has them: `interlude-load --compare --bare-target` runs its Check and
//! its Decide beside Interlude's, and h2load can hit it the same way (docs/PERFORMANCE.md).
//!
//! Its Decide decodes the request and answers every one with the same two-ad response, shaped
//! field by field like one of Interlude's on the harness's world: what a Decide-sized exchange
//! costs tonic and prost before any decision is made.
//!
//! Its CPU seconds are served as `process_cpu_seconds_total` on `--metrics-listen` (off the
//! gRPC path), so the harness reads its cost per request as it reads Interlude's.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use interlude::grpc::pb;

/// Same allocator and allocator setting as the server, so that the difference is the server's
/// own work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "A bare tonic health server: the reference cost of the gRPC stack")]
struct Args {
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:50052")]
    listen: SocketAddr,
    /// Prometheus address for `process_cpu_seconds_total`, or "off".
    #[arg(long, default_value = "127.0.0.1:9465")]
    metrics_listen: String,
    /// Tokio worker threads; 0 = one current-thread runtime, as Interlude's default.
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
}

fn main() -> anyhow::Result<()> {
    interlude::allocator::configure();
    let args = Args::parse();
    let runtime = if args.worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.worker_threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if args.metrics_listen != "off" {
        let addr: SocketAddr = args.metrics_listen.parse().context("--metrics-listen")?;
        let handle = interlude::telemetry::install_metrics()?;
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        eprintln!("interlude-bare: metrics on http://{}/metrics", listener.local_addr()?);
        tokio::spawn(interlude::telemetry::serve_metrics(listener, handle, std::future::pending()));
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!("interlude-bare: serving grpc.health.v1 on {}", listener.local_addr()?);
    // TCP_NODELAY, as Interlude sets on its connections (net.rs): without it a response can
    // wait out a delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(pb::ad_decision_service_server::AdDecisionServiceServer::new(CannedDecisions(
            canned_response(),
        )))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// Answers every Decide with one canned response; RecordEvents is not part of the reference.
#[derive(Debug)]
struct CannedDecisions(pb::DecideResponse);

#[tonic::async_trait]
impl pb::ad_decision_service_server::AdDecisionService for CannedDecisions {
    async fn decide(
        &self,
        _request: tonic::Request<pb::DecideRequest>,
    ) -> Result<tonic::Response<pb::DecideResponse>, tonic::Status> {
        // A clone per call, strings and all: what any handler answering with prost's owned
        // messages pays, Interlude's too, so the reference is not flattered by skipping it.
        Ok(tonic::Response::new(self.0.clone()))
    }

    async fn record_events(
        &self,
        _request: tonic::Request<pb::RecordEventsRequest>,
    ) -> Result<tonic::Response<pb::RecordEventsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("the bare reference answers Decide only"))
    }
}

/// Two paid ads with every field Interlude fills, of the lengths it gives them on the harness's
/// synthetic world (ids, a CDN URL, an impression token of 139 characters, a 32-hex ad id):
/// 579 bytes encoded, as a response of Interlude's to the same world measured.
fn canned_response() -> pb::DecideResponse {
    let ad = |campaign: u32, seconds: i64, advertiser: u32| pb::DecidedAd {
        campaign_id: format!("camp-{campaign:06}"),
        creative_id: format!("{seconds}s"),
        advertiser_id: format!("adv-{advertiser:05}"),
        advertiser_name: format!("adv-{advertiser:05}"),
        audio_url: format!("https://cdn.example/{campaign}/{seconds}.mp3"),
        duration: Some(prost_types::Duration { seconds, nanos: 0 }),
        companion: None,
        price_micros: 22_354,
        relevance_score: 0.72,
        impression_token: "A".repeat(139),
        tier: pb::PriorityTier::Standard as i32,
        iab_categories: vec!["552".into()],
        ad_id: "13cd58f0c3a15ab89318ad0047ad6641".into(),
        audio_mime_type: "audio/mpeg".into(),
        media_files: Vec::new(),
    };
    pb::DecideResponse {
        ads: vec![ad(3019, 30, 3256), ad(536, 15, 763)],
        fill: pb::Fill::Paid as i32,
        reason: pb::DecisionReason::Served as i32,
        trace: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    #[test]
    fn the_canned_response_is_the_size_of_interludes_two_ad_answer() {
        let response = super::canned_response();
        assert_eq!(response.ads.len(), 2);
        // A two-ad answer of Interlude's on the harness's world (10,000 campaigns) encoded to 579
        // bytes; the reference must not be cheaper by being smaller.
        let len = response.encoded_len();
        assert!((560..=600).contains(&len), "{len} bytes");
    }
}
