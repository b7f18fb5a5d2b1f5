//! `interlude-bare`: the reference for what the gRPC stack itself costs — a tonic server with
//! nothing but grpc.health.v1 (tonic-health), on the same tonic, hyper and tokio as Interlude
//! and the same runtime flavour (one current thread unless `--worker-threads`). No layers, no
//! limits, no metrics on the request path; mimalloc and TCP_NODELAY as Interlude has them:
//! `interlude-load --compare --bare-target` runs its Check beside Interlude's Check and Decide,
//! and h2load can hit it the same way (docs/PERFORMANCE.md).
//!
//! Its CPU seconds are served as `process_cpu_seconds_total` on `--metrics-listen` (off the
//! gRPC path), so the harness reads its cost per request as it reads Interlude's.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;

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
    tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming).await?;
    Ok(())
}
