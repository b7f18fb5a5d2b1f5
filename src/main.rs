//! The `interlude` binary: read config, init telemetry, build the runtime, serve until a signal.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use interlude::config::{Cli, Config, ProcessEnv, Secret};
use interlude::store::durable;
use interlude::{app, demo, grpc, signal, telemetry};

/// mimalloc: the hot path allocates small strings per response; it measured faster than the
/// system allocator under load (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// BSD `EX_USAGE`: the configuration is unusable.
const EXIT_USAGE: u8 = 64;
/// BSD `EX_DATAERR`: the stored data cannot be read (a corrupt or truncated database).
const EXIT_DATAERR: u8 = 65;
/// sysexits EX_TEMPFAIL: another server holds the data directory; try again once it stops.
const EXIT_TEMPFAIL: u8 = 75;

fn main() -> ExitCode {
    interlude::allocator::configure();
    let config = match Config::load(Cli::parse(), &ProcessEnv) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("interlude: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    telemetry::init_tracing(&config.log);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "interlude failed");
            match error.downcast_ref::<durable::DurableError>() {
                Some(durable::DurableError::Unreadable { .. }) => ExitCode::from(EXIT_DATAERR),
                Some(durable::DurableError::InUse { .. }) => ExitCode::from(EXIT_TEMPFAIL),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = app::runtime(config.worker_threads)?;
    runtime.block_on(serve(config))
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    // The recorder first, so that start-up work (recovery, the demo's commit) is counted too.
    let metrics_handle = config.metrics_listen.map(|_| telemetry::install_metrics()).transpose()?;
    if config.admin_token.is_none() {
        // Secure by default, still one command (as Jupyter does): a token for this run, printed
        // once, and kept beside the data for local tools such as interlude-load.
        let token = interlude::auth::generate_token();
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            durable::write_private(&dir.join(durable::ADMIN_TOKEN_FILE), token.as_bytes(), false)
                .context("writing the generated admin token")?;
        }
        tracing::warn!(
            admin_token = %token,
            "no admin_token configured: generated one for this run; admin rpcs need 'authorization: Bearer <admin_token>'"
        );
        config.admin_token = Some(Secret(token));
    }
    let started = tokio::time::Instant::now();
    let (state, first_start) = match &config.redis {
        Some(redis) => {
            let store = interlude::store::shared::Shared::connect(redis)
                .await
                .with_context(|| format!("connecting to the Redis Cluster at {}", redis.nodes.join(",")))?;
            app::AppState::open_shared(&config, store).await.context("reading the shared state")?
        }
        None => app::AppState::open(&config, grpc::now()).context("opening the data directory")?,
    };
    match (&config.data_dir, &config.redis) {
        (_, Some(redis)) => tracing::info!(
            redis_nodes = %redis.nodes.join(","),
            campaigns = state.catalog.snapshot().len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cluster mode: shared state read"
        ),
        (Some(dir), None) => tracing::info!(
            data_dir = %dir.display(),
            campaigns = state.catalog.snapshot().len(),
            listeners = state.listeners.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state recovered"
        ),
        (None, None) => tracing::warn!("data_dir is off: nothing survives a restart"),
    }
    if config.token_key.is_none() && config.data_dir.is_none() && config.redis.is_none() {
        tracing::warn!(
            "no token_key configured: impression tokens use a random key and die with the process"
        );
    }
    // The demo seeds a fresh store once; afterwards the store is the truth (a demo listener
    // that was forgotten stays forgotten).
    if config.demo && first_start {
        let stats = demo::load(&state, grpc::now()).context("loading the demo catalog")?;
        state.persist_all().await.context("persisting the demo catalog")?;
        tracing::info!(campaigns = stats.campaigns, listeners = stats.listeners, "demo catalog loaded");
    }
    telemetry::record_campaigns(state.catalog.snapshot().len());

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding gRPC address {}", config.listen))?;
    let grpc_addr = listener.local_addr()?;

    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_addr = match (config.metrics_listen, metrics_handle.clone()) {
        (Some(addr), Some(handle)) => {
            let metrics_listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics address {addr}"))?;
            let bound = metrics_listener.local_addr()?;
            tokio::spawn(telemetry::serve_metrics(metrics_listener, handle, async {
                let _ = metrics_stopped.await;
            }));
            Some(bound)
        }
        _ => None,
    };
    let http = match config.http_listen {
        Some(addr) => Some(interlude::http::HttpEdge {
            listener: tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTP (VAST) address {addr}"))?,
            settings: interlude::vast::Settings {
                public_url: config.public_url.clone(),
                currency: config.currency.clone(),
            },
            limits: config.limits.edge(),
            metrics: metrics_handle.clone(),
        }),
        None => None,
    };
    let http_addr = http.as_ref().map(|edge| edge.listener.local_addr()).transpose()?;
    tracing::info!(
        grpc_addr = %grpc_addr,
        http_addr = http_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        metrics_addr = metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        "serving"
    );
    app::serve(
        listener,
        state,
        signal::shutdown(),
        config.shutdown_grace,
        config.limits,
        config.tls.as_ref(),
        http,
    )
    .await?;
    let _ = stop_metrics.send(());
    Ok(())
}
