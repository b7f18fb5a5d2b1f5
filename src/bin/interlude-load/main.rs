//! `interlude-load`: the load-test harness. Generates a synthetic world from a seed, seeds a
//! running server through the admin RPCs, drives Decide + RecordEvents like a player backend,
//! and reports throughput, latency percentiles, errors and decision quality.
//!
//! It is a client of the server, so unlike the server's library it speaks wire (`pb`) types.
//!
//! ```sh
//! cargo run --release --bin interlude-load -- --campaigns 10000 --listeners 100000 --compare
//! ```

// The report is the program's output.
#![allow(clippy::print_stdout)]

mod drive;
mod report;
mod server_cpu;
mod world;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use interlude::grpc::auth::Bearer;
use interlude::grpc::pb;
use interlude::grpc::pb::listener_service_client::ListenerServiceClient;
use interlude::synth::WorldSpec;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use drive::{Mode, Shared, Target};
use report::{BudgetReport, PhaseReport, Report};
use world::World;

/// Load-test an Interlude server.
#[derive(Debug, Parser)]
#[command(name = "interlude-load", version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Several replicas of one cluster ("URL,URL,…"): each Decide and each RecordEvents goes to
    /// one of them at random, and the report adds the cluster-wide checks (every acknowledged
    /// impression counted exactly once). Seeding goes through the first.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Fault: kill -9 one Redis master this many seconds into the first measured phase (with
    /// --redis-node); the phase's errors, latency and the exactly-once check show its effect.
    #[arg(long, requires = "redis_node")]
    kill_redis_master_after: Option<f64>,
    /// A node of the cluster's Redis (host:port, loopback), asked which nodes are masters.
    #[arg(long)]
    redis_node: Option<String>,
    /// The server's HTTP (VAST) edge, for `--workload vast`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http_target: String,
    /// Speak HTTP/2 (h2c, multiplexed like the gRPC workloads) to the HTTP edge instead of
    /// HTTP/1.1 (a connection per request in flight, as most players).
    #[arg(long)]
    http2: bool,
    /// World seed: the same seed gives the same campaigns, listeners and requests.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Synthetic campaigns to seed (ten of them house ads).
    #[arg(long, default_value_t = 10_000)]
    campaigns: usize,
    /// Synthetic listener accounts to seed (about a fifth are households of 2-3 members).
    #[arg(long, default_value_t = 10_000)]
    listeners: usize,
    /// Skip seeding (the server already holds this seed's world).
    #[arg(long)]
    no_seed: bool,
    /// Concurrent workers (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Open loop at this many requests per second instead of closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: requests in flight or queued in the generator before it sheds the next ones
    /// itself ("client shed") [default: 64 × --concurrency]. Raise it to overload a server.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// HTTP/2 connections to spread requests over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Threads of the load generator: 1 (the default, for a generator pinned to one core) runs
    /// every worker on one current-thread runtime; more use a multi-thread runtime.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured warm-up seconds per phase.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// What each request does.
    #[arg(long, value_enum, default_value = "decide-and-record")]
    workload: Target,
    /// Also run Decide alone and grpc.health.v1 Check with the same load, and print the ratio
    /// (with `--workload vast`, also Decide + RecordEvents, the same work over gRPC).
    #[arg(long)]
    compare: bool,
    /// The bare tonic reference server (`interlude-bare`): with --compare, its Check and its
    /// canned Decide run beside Interlude's, and the report gives Check / bare Check and bare
    /// Check / bare Decide (the Check / Decide ratio of a decision that costs nothing).
    #[arg(long)]
    bare_target: Option<String>,
    /// The bare server's Prometheus endpoint, for its CPU per request ("off": don't).
    #[arg(long, default_value = "http://127.0.0.1:9465/metrics")]
    bare_metrics: String,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write a gRPC-framed DecideRequest here (for h2load -d) and exit.
    #[arg(long)]
    write_h2load_body: Option<std::path::PathBuf>,
    /// Admin token for seeding [default: the server's generated one in interlude-data/admin.token].
    #[arg(long, env = "INTERLUDE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Decision token for Decide and RecordEvents, if the server has one.
    #[arg(long, env = "INTERLUDE_DECISION_TOKEN", hide_env_values = true)]
    decision_token: Option<String>,
    /// The server's Prometheus endpoint, read for its CPU seconds per request ("off": don't).
    #[arg(long, default_value = "http://127.0.0.1:9464/metrics")]
    server_metrics: String,
    /// Share of Decide requests from listener ids never seen before (granting consent in the
    /// request, no history: the cold start of a free tier).
    #[arg(long, default_value_t = 0.2, value_parser = share)]
    new_listener_share: f64,
    /// Share of Decide requests from seeded listeners denying personalised ads in the request
    /// (on top of the accounts that denied it when seeded).
    #[arg(long, default_value_t = 0.1, value_parser = share)]
    no_consent_share: f64,
    /// With `--workload record`: impressions per RecordEvents call (a player backend that
    /// forwards its players' beacons in batches).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=500))]
    events_per_record: u16,
    /// With `--workload record`: impressions decided before the phase, to record in it. The
    /// phase ends early (and says so) when they run out.
    #[arg(long, default_value_t = 400_000)]
    record_stash: usize,
    /// Exit non-zero if any request failed or a cap was violated (for CI smoke runs).
    #[arg(long)]
    strict: bool,
}

/// A share in [0, 1].
fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{s:?} is not a share in [0, 1]")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.new_listener_share + args.no_consent_share > 1.0 {
        anyhow::bail!("--new-listener-share and --no-consent-share add up to more than 1");
    }
    if args.workload == Target::Record && args.rate.is_some() {
        anyhow::bail!("--workload record runs closed loop only: drop --rate");
    }
    if args.workload.is_bare() && args.bare_target.is_none() {
        // Without it the phase would run against Interlude under the bare server's name.
        anyhow::bail!(
            "--workload bare-check and bare-decide run against the bare server: give --bare-target"
        );
    }
    // On one core a multi-thread runtime is two threads taking turns (the one in `block_on` and
    // its one worker), and every wake-up crosses between them: measured, it capped the generator
    // at ~60k health Checks/s where one current thread sends ~110k/s (docs/PERFORMANCE.md).
    let runtime = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(usize::from(n)).enable_all().build()?
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Sponsorship flights start now: a world seeded now is booked now.
    let spec = WorldSpec {
        seed: args.seed,
        campaigns: args.campaigns,
        listeners: args.listeners,
        booked_at: interlude::grpc::now(),
    };
    let world = Arc::new(World::generate(spec)?);
    if let Some(path) = &args.write_h2load_body {
        return write_h2load_body(&world, path);
    }
    let first_target = args.targets.first().unwrap_or(&args.target).clone();
    let channels = connect(&first_target, args.connections).await?;
    let mut replicas = Vec::new();
    if args.targets.len() > 1 {
        for target in &args.targets {
            replicas.push(connect(target, args.connections).await?);
        }
    }

    // A server started without an admin token generates one and keeps it in its data
    // directory (by default ./interlude-data, beside a `cargo run`).
    let admin_token = match args.admin_token.clone() {
        Some(token) => Some(token),
        None => std::fs::read_to_string(DEFAULT_ADMIN_TOKEN_FILE).ok().map(|t| t.trim().to_owned()),
    };
    let admin = Bearer::new(admin_token.as_deref()).context("admin_token is not a valid header value")?;
    let decision_token =
        Bearer::new(args.decision_token.as_deref()).context("decision_token is not a valid header value")?;
    let seeding_started = Instant::now();
    if !args.no_seed {
        seed(&world, &channels, &admin, args.concurrency.max(8)).await?;
    }
    let seeding_seconds = seeding_started.elapsed().as_secs_f64();

    let shared = Shared {
        world: world.clone(),
        channels: channels.clone(),
        decision_token,
        seed: args.seed,
        event_counter: Arc::new(AtomicU64::new(0)),
        run_id: rand::random(),
        mix: drive::Mix { new_share: args.new_listener_share, no_consent_share: args.no_consent_share },
        new_listeners: Arc::new(AtomicU64::new(0)),
        http: matches!(args.workload, Target::Vast | Target::VastTag)
            .then(|| drive::HttpEdge::new(&args.http_target, args.http2)),
        bare: match &args.bare_target {
            Some(target) => connect(target, args.connections).await?,
            None => Vec::new(),
        },
        replicas,
        events_per_record: usize::from(args.events_per_record),
        record_stash: args.record_stash,
    };
    let mode = match args.rate {
        Some(rate) => Mode::Open {
            rate,
            max_in_flight: args.max_in_flight.unwrap_or(args.concurrency.max(1) * 64).max(1),
        },
        None => Mode::Closed { concurrency: args.concurrency.max(1) },
    };
    // The comparison runs first: Decide alone changes no state, so it sees the fresh world.
    let mut targets = if args.compare { vec![Target::Decide, Target::HealthCheck] } else { Vec::new() };
    if args.compare && args.bare_target.is_some() {
        targets.extend([Target::BareCheck, Target::BareDecide]);
    }
    if args.compare && args.workload == Target::Vast {
        targets.extend([Target::DecideAndRecord, Target::VastTag]);
    }
    if !targets.contains(&args.workload) {
        targets.push(args.workload);
    }
    let cpu = match args.server_metrics.as_str() {
        "off" => None,
        url => Some(server_cpu::ServerCpu::new(url).context("--server-metrics")?),
    };
    let bare_cpu = match (&args.bare_target, args.bare_metrics.as_str()) {
        (Some(_), url) if url != "off" => Some(server_cpu::ServerCpu::new(url).context("--bare-metrics")?),
        _ => None,
    };
    let impressions_before = server_impressions(&world, &channels[0], &admin).await?;
    let mut fault = None;
    let mut phases = Vec::new();
    for target in targets {
        if let (Some(after), Some(node), None) = (args.kill_redis_master_after, &args.redis_node, &fault) {
            fault = Some(tokio::spawn(kill_redis_master(node.clone(), args.warmup + after)));
        }
        let cpu = if target.is_bare() { bare_cpu.as_ref() } else { cpu.as_ref() };
        let progress = progress_bar(target, args.duration);
        let outcome = drive::run(
            &shared,
            target,
            mode,
            (Duration::from_secs_f64(args.warmup), Duration::from_secs_f64(args.duration)),
            cpu,
            &progress,
        )
        .await;
        progress.finish_and_clear();
        phases.push(PhaseReport::from_outcome(&outcome, matches!(mode, Mode::Closed { .. })));
    }
    let throughput = |t: Target| phases.iter().find(|p| p.target == t).map(|p| p.throughput_per_sec);
    let decide_to_check_ratio = match (throughput(Target::Decide), throughput(Target::HealthCheck)) {
        (Some(d), Some(c)) if c > 0.0 => Some(d / c),
        _ => None,
    };
    let cost = |t: Target| {
        phases.iter().find(|p| p.target == t).and_then(|p| p.server.as_ref()).map(|s| s.cpu_us_per_request)
    };
    // Check's cost over Decide's: what share of the Check rate the server could decide at if it
    // alone were the bottleneck.
    let check_to_decide_cost_ratio = match (cost(Target::Decide), cost(Target::HealthCheck)) {
        (Some(d), Some(c)) if d > 0.0 => Some(c / d),
        _ => None,
    };
    let over = |a: Target, b: Target| match (throughput(a), throughput(b)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let check_to_bare_ratio = over(Target::HealthCheck, Target::BareCheck);
    // Bare Check's CPU over Interlude's: Interlude's Check costs 1 / this of a bare one.
    let bare_to_check_cost_ratio = match (cost(Target::HealthCheck), cost(Target::BareCheck)) {
        (Some(c), Some(b)) if c > 0.0 => Some(b / c),
        _ => None,
    };
    // The bare server's Check over its canned Decide, CPU: the Decide / Check cost ratio of a
    // server whose decision took no time at all, the ceiling of `check_to_decide_cost_ratio`.
    let bare_check_to_bare_decide_cost_ratio = match (cost(Target::BareDecide), cost(Target::BareCheck)) {
        (Some(d), Some(c)) if d > 0.0 => Some(c / d),
        _ => None,
    };
    // What RecordEvents (one impression per decided ad) costs over what the Decide costs.
    let record_to_decide_cost_ratio = match (cost(Target::DecideAndRecord), cost(Target::Decide)) {
        (Some(both), Some(d)) if d > 0.0 => Some((both - d) / d),
        _ => None,
    };
    let vast_to_decide_ratio = over(Target::Vast, Target::Decide);
    let vast_to_decide_and_record_ratio = over(Target::Vast, Target::DecideAndRecord);
    let vast_tag_to_decide_ratio = over(Target::VastTag, Target::Decide);
    let budgets = budget_report(&world, &channels[0], &admin).await?;
    let fault = match fault {
        Some(task) => Some(task.await??),
        None => None,
    };
    let quality = phases.iter().filter_map(|p| p.quality.as_ref());
    let (mut acknowledged, unacknowledged) =
        quality.fold((0, 0), |(a, u), q| (a + q.impressions_acknowledged, u + q.impressions_unacknowledged));
    acknowledged += phases.iter().filter_map(|p| p.events.as_ref()).map(|e| e.acknowledged).sum::<u64>();
    let counted = server_impressions(&world, &channels[0], &admin).await? - impressions_before;
    let exactly_once = report::ExactlyOnce {
        acknowledged,
        counted_by_server: counted,
        unacknowledged,
        // Counted beyond what was acknowledged: a double count, unless some of the
        // unacknowledged ones were counted before their refusal.
        counted_beyond_acknowledged: counted.saturating_sub(acknowledged),
        acknowledged_not_counted: acknowledged.saturating_sub(counted),
    };
    let report = Report {
        seed: args.seed,
        campaigns: args.campaigns,
        listeners: args.listeners,
        mode: match mode {
            Mode::Closed { concurrency } => format!("closed loop, {concurrency} workers"),
            Mode::Open { rate, .. } => format!("open loop, {rate} req/s"),
        },
        threads: args.threads,
        seeding_seconds,
        phases,
        decide_to_check_ratio,
        check_to_decide_cost_ratio,
        check_to_bare_ratio,
        bare_to_check_cost_ratio,
        bare_check_to_bare_decide_cost_ratio,
        record_to_decide_cost_ratio,
        vast_to_decide_ratio,
        vast_to_decide_and_record_ratio,
        vast_tag_to_decide_ratio,
        server_metrics: cpu.as_ref().map(server_cpu::ServerCpu::url),
        closed_loop: matches!(mode, Mode::Closed { .. }),
        budgets: Some(budgets),
        replicas: args.targets.len().max(1),
        exactly_once: Some(exactly_once),
        fault,
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.strict {
        let failed: u64 = report.phases.iter().flat_map(|p| p.errors.values()).sum();
        let violations: u64 =
            report.phases.iter().filter_map(|p| p.quality.as_ref()).map(|q| q.cap_violations).sum();
        let served: u64 = report.phases.iter().map(|p| p.requests_ok).sum();
        anyhow::ensure!(failed == 0, "{failed} requests failed");
        anyhow::ensure!(violations == 0, "{violations} frequency-cap violations");
        anyhow::ensure!(served > 0, "no request succeeded");
        if let Some(e) = &report.exactly_once {
            anyhow::ensure!(
                e.acknowledged_not_counted == 0,
                "{} acknowledged impressions lost",
                e.acknowledged_not_counted
            );
        }
    }
    Ok(())
}

/// `connections` HTTP/2 connections (at least one) to the gRPC server at `target`.
async fn connect(target: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(target.to_owned())?
            .connect()
            .await
            .with_context(|| format!("connecting to {target}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

fn progress_bar(target: Target, seconds: f64) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    let style = ProgressStyle::with_template("{spinner} {msg} {pos} requests ({per_sec}) {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(format!("{target:?} for {seconds} s:"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Where a server started with the default data directory keeps its generated admin token.
const DEFAULT_ADMIN_TOKEN_FILE: &str = "interlude-data/admin.token";

/// Chunks (of about 1,000 plays) sent over one RecordPlays stream before it is closed.
const CHUNKS_PER_PLAY_STREAM: usize = 50;

/// One client-streaming RecordPlays call being fed chunk by chunk.
struct PlayStream {
    tx: tokio::sync::mpsc::Sender<pb::RecordPlaysRequest>,
    call: tokio::task::JoinHandle<Result<tonic::Response<pb::RecordPlaysResponse>, tonic::Status>>,
    chunks: usize,
}

impl PlayStream {
    fn open(listeners: &ListenerServiceClient<InterceptedService<Channel, Bearer>>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::RecordPlaysRequest>(4);
        let mut client = listeners.clone();
        let call = tokio::spawn(async move {
            client.record_plays(tokio_stream::wrappers::ReceiverStream::new(rx)).await
        });
        Self { tx, call, chunks: 0 }
    }

    async fn send(&mut self, plays: Vec<pb::PlayEvent>) -> anyhow::Result<()> {
        self.chunks += 1;
        if self.tx.send(pb::RecordPlaysRequest { plays }).await.is_ok() {
            return Ok(());
        }
        // The call ended early: its status says why.
        (&mut self.call).await??;
        anyhow::bail!("the play stream ended before it was closed")
    }

    async fn finish(self) -> anyhow::Result<()> {
        drop(self.tx);
        let response = self.call.await??.into_inner();
        anyhow::ensure!(
            response.rejected == 0,
            "the server rejected {} plays: {:?}",
            response.rejected,
            response.rejections
        );
        Ok(())
    }
}

/// Seeds campaigns, listeners and plays through the admin RPCs, `concurrency` at a time.
async fn seed(
    world: &Arc<World>,
    channels: &[Channel],
    admin: &Bearer,
    concurrency: usize,
) -> anyhow::Result<()> {
    let bar = ProgressBar::new((world.campaigns.len() + world.spec.listeners) as u64);
    bar.set_style(
        ProgressStyle::with_template("seeding {bar:40} {pos}/{len} ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let world = world.clone();
        let channel = channels[w % channels.len()].clone();
        let bar = bar.clone();
        let admin = admin.clone();
        tasks.spawn(async move {
            let mut campaigns = pb::campaign_service_client::CampaignServiceClient::with_interceptor(
                channel.clone(),
                admin.clone(),
            );
            for c in world.campaigns.iter().skip(w).step_by(concurrency) {
                campaigns.upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(c.clone()) }).await?;
                bar.inc(1);
            }
            let mut listeners = ListenerServiceClient::with_interceptor(channel, admin.clone());
            // Plays stream while listeners are upserted, in chunks through a small channel, so
            // memory stays flat whatever the world's size. A stream carries a bounded number of
            // chunks, so that it ends well within the server's request timeout.
            let mut plays = PlayStream::open(&listeners);
            let now = interlude::grpc::now();
            let mut chunk = Vec::new();
            for i in (w..world.spec.listeners).step_by(concurrency) {
                listeners.upsert_listener(world.listener_request(i)).await?;
                chunk.extend(world.plays(i, now));
                if chunk.len() >= 1000 {
                    plays.send(std::mem::take(&mut chunk)).await?;
                    if plays.chunks == CHUNKS_PER_PLAY_STREAM {
                        plays.finish().await?;
                        plays = PlayStream::open(&listeners);
                    }
                }
                bar.inc(1);
            }
            if !chunk.is_empty() {
                plays.send(chunk).await?;
            }
            plays.finish().await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    bar.finish_and_clear();
    Ok(())
}

async fn budget_report(world: &World, channel: &Channel, admin: &Bearer) -> anyhow::Result<BudgetReport> {
    let mut client =
        pb::campaign_service_client::CampaignServiceClient::with_interceptor(channel.clone(), admin.clone());
    let mut report = BudgetReport::default();
    for (id, facts) in &world.facts {
        if facts.lifetime_budget_micros == 0 {
            continue;
        }
        report.budgeted_campaigns += 1;
        let stats = client
            .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: id.clone() })
            .await?
            .into_inner();
        let over = stats.spend_micros - facts.lifetime_budget_micros;
        if stats.pacing_status() == pb::PacingStatus::BudgetExhausted {
            report.exhausted += 1;
        }
        if over > 0 {
            report.total_overspend_micros += over;
            report.max_overspend_share =
                report.max_overspend_share.max(over as f64 / facts.lifetime_budget_micros as f64);
        }
    }
    Ok(report)
}

/// Impressions the server counted over every campaign of the world.
async fn server_impressions(world: &World, channel: &Channel, admin: &Bearer) -> anyhow::Result<u64> {
    let mut client =
        pb::campaign_service_client::CampaignServiceClient::with_interceptor(channel.clone(), admin.clone());
    let mut total = 0;
    for id in world.facts.keys() {
        let request = pb::GetDeliveryStatsRequest { campaign_id: id.clone() };
        match client.get_delivery_stats(request).await {
            Ok(stats) => total += stats.into_inner().impressions,
            // Not seeded (yet): nothing counted.
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(status.into()),
        }
    }
    Ok(total)
}

/// After `after_secs`, kill -9 of one master of the Redis Cluster `node` belongs to (found with
/// `redis-cli`, killed by the pid it reports: loopback test clusters only). Returns what it did.
async fn kill_redis_master(node: String, after_secs: f64) -> anyhow::Result<String> {
    tokio::time::sleep(Duration::from_secs_f64(after_secs)).await;
    tokio::task::spawn_blocking(move || {
        let cli = |addr: &str, args: &[&str]| -> anyhow::Result<String> {
            let (host, port) = addr.rsplit_once(':').context("--redis-node is host:port")?;
            let out = std::process::Command::new("redis-cli")
                .args(["-h", host, "-p", port])
                .args(args)
                .output()
                .context("running redis-cli")?;
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let nodes = cli(&node, &["cluster", "nodes"])?;
        let master = nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .and_then(|f| f[1].split('@').next().map(str::to_owned))
            .context("no live master in CLUSTER NODES")?;
        let info = cli(&master, &["info", "server"])?;
        let pid = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("process_id:"))
            .context("no process_id in INFO server")?
            .to_owned();
        let killed = std::process::Command::new("kill").args(["-9", &pid]).status()?;
        anyhow::ensure!(killed.success(), "kill -9 {pid} failed");
        Ok(format!("kill -9 of Redis master {master} (pid {pid}) {after_secs} s into the run"))
    })
    .await?
}

/// A DecideRequest in gRPC framing (1-byte flag, 4-byte length, message) for `h2load -d`.
fn write_h2load_body(world: &World, path: &std::path::Path) -> anyhow::Result<()> {
    use prost::Message as _;
    let member = world.members.first().context("the world has no listeners")?;
    let request = pb::DecideRequest {
        listener_id: member.listener_id.clone(),
        member_id: member.member_id.clone(),
        context: Some(pb::PlaybackContext {
            track_genres: member.top3.iter().take(1).map(|g| g.to_string()).collect(),
            device: pb::DeviceType::Mobile as i32,
            ..Default::default()
        }),
        break_constraints: Some(pb::BreakConstraints {
            max_ads: 2,
            max_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        }),
        explain: false,
    };
    let body = request.encode_to_vec();
    let mut framed = Vec::with_capacity(body.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    std::fs::write(path, framed).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({} bytes) for listener {}", path.display(), body.len() + 5, member.listener_id);
    Ok(())
}
