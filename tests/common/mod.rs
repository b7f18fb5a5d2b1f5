//! Shared helpers for the integration tests: a real server on 127.0.0.1:0, clients, fixtures.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod redis_cluster;

use std::net::SocketAddr;
use std::time::Duration;

use interlude::app::{self, AppState};
use interlude::config::Config;
use interlude::grpc::auth::Bearer;
use interlude::grpc::pb;
use interlude::grpc::pb::ad_decision_service_client::AdDecisionServiceClient;
use interlude::grpc::pb::campaign_service_client::CampaignServiceClient;
use interlude::grpc::pb::listener_service_client::ListenerServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The admin token of test servers (unless a test configures another).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A channel whose requests carry a bearer token.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// The admin token as a client interceptor.
pub fn admin() -> Bearer {
    Bearer::new(Some(ADMIN_TOKEN)).unwrap()
}

/// A running server; `stop()` shuts it down and waits for it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The VAST edge's address.
    pub http_addr: SocketAddr,
    pub channel: Channel,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), app::ServeError>>>,
}

/// Starts a server with no demo data and the default policy.
pub async fn start_server() -> TestServer {
    start_server_with(Config { demo: false, data_dir: None, ..Config::default() }).await
}

/// Starts a server with `config` on an ephemeral loopback port (and its embedded store, when
/// `config.data_dir` is set).
pub async fn start_server_with(mut config: Config) -> TestServer {
    if config.admin_token.is_none() {
        config.admin_token = Some(interlude::config::Secret(ADMIN_TOKEN.into()));
    }
    let (state, _) = AppState::open(&config, interlude::grpc::now()).unwrap();
    if config.demo {
        interlude::demo::load(&state, interlude::grpc::now()).unwrap();
    }
    serve_state(config, state).await
}

/// Serves an already opened `state` with `config`'s limits (tests that swap a part of it).
pub async fn serve_state(config: Config, state: AppState) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    let http = interlude::http::HttpEdge {
        listener: http_listener,
        settings: interlude::vast::Settings {
            public_url: config.public_url.clone(),
            currency: config.currency.clone(),
        },
        limits: config.limits.edge(),
        metrics: None,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app::serve(
        listener,
        state.clone(),
        async {
            let _ = rx.await;
        },
        config.shutdown_grace,
        config.limits,
        None,
        Some(http),
    ));
    // The listener is bound already, so the connection succeeds at once.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    TestServer { addr, http_addr, channel, state, shutdown: Some(tx), handle: Some(handle) }
}

impl TestServer {
    /// A Decide/RecordEvents client with no token (the test server has no decision token).
    pub fn decisions(&self) -> AdDecisionServiceClient<Authed> {
        AdDecisionServiceClient::with_interceptor(self.channel.clone(), Bearer::default())
    }

    /// A Decide client with the admin token, which explaining needs.
    pub fn explainer(&self) -> AdDecisionServiceClient<Authed> {
        AdDecisionServiceClient::with_interceptor(self.channel.clone(), admin())
    }

    /// An admin client.
    pub fn campaigns(&self) -> CampaignServiceClient<Authed> {
        CampaignServiceClient::with_interceptor(self.channel.clone(), admin())
    }

    /// An admin client.
    pub fn listeners(&self) -> ListenerServiceClient<Authed> {
        ListenerServiceClient::with_interceptor(self.channel.clone(), admin())
    }

    /// Signals shutdown without waiting.
    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn stop(mut self) {
        self.trigger_shutdown();
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// Upserts campaigns through the admin API.
    pub async fn upsert(&self, campaigns: impl IntoIterator<Item = pb::Campaign>) {
        let mut client = self.campaigns();
        for campaign in campaigns {
            client.upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(campaign) }).await.unwrap();
        }
    }

    /// Creates a listener who consents to personalised ads.
    pub async fn listener(&self, id: &str, configure: impl FnOnce(&mut pb::Listener)) {
        let mut listener = pb::Listener {
            listener_id: id.into(),
            personalized_ads: pb::ConsentState::Granted as i32,
            ..Default::default()
        };
        configure(&mut listener);
        self.listeners()
            .upsert_listener(pb::UpsertListenerRequest { listener: Some(listener) })
            .await
            .unwrap();
    }

    /// Streams `n` recent full plays of each genre for `listener` (member "").
    pub async fn plays(
        &self,
        listener: &str,
        member: &str,
        genres: &[(&str, u32)],
    ) -> pb::RecordPlaysResponse {
        let now = interlude::grpc::now().0;
        let mut plays = Vec::new();
        for &(genre, n) in genres {
            for i in 0..n {
                plays.push(pb::PlayEvent {
                    listener_id: listener.into(),
                    member_id: member.into(),
                    track_id: format!("track-{genre}-{i}"),
                    genres: vec![genre.into()],
                    artist: "Some Artist".into(),
                    played_at: Some(ts(now - i64::from(i) * 60_000)),
                    seconds_played: 200,
                    play_id: String::new(),
                });
            }
        }
        let request = tokio_stream::iter(vec![pb::RecordPlaysRequest { plays }]);
        self.listeners().record_plays(request).await.unwrap().into_inner()
    }

    /// The delivery stats of `campaign`.
    pub async fn stats(&self, campaign: &str) -> pb::GetDeliveryStatsResponse {
        self.campaigns()
            .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: campaign.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Decides one break for `listener`.
    pub async fn decide(&self, request: pb::DecideRequest) -> pb::DecideResponse {
        // Explaining needs the admin token; a player's decision does not.
        let mut client = if request.explain { self.explainer() } else { self.decisions() };
        client.decide(request).await.unwrap().into_inner()
    }

    /// Records an impression for each ad of `response`, with fresh event ids.
    pub async fn record_impressions(&self, response: &pb::DecideResponse, prefix: &str) {
        let events = response
            .ads
            .iter()
            .enumerate()
            .map(|(i, ad)| pb::AdEvent {
                event_id: format!("{prefix}-{i}"),
                r#type: pb::EventType::Impression as i32,
                impression_token: ad.impression_token.clone(),
                occurred_at: None,
                ..Default::default()
            })
            .collect();
        self.decisions().record_events(pb::RecordEventsRequest { events }).await.unwrap();
    }
}

/// A protobuf timestamp `ms` milliseconds after the epoch.
pub fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A protobuf duration of `secs` seconds.
pub fn secs(secs: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: secs, nanos: 0 }
}

/// A paid standard campaign with one 30 s creative and no caps, targeting nothing yet.
pub fn campaign(id: &str, advertiser: &str, cpm_usd: i64) -> pb::Campaign {
    pb::Campaign {
        campaign_id: id.into(),
        advertiser_id: advertiser.into(),
        advertiser_name: format!("{advertiser} Inc."),
        name: format!("{id} campaign"),
        tier: pb::PriorityTier::Standard as i32,
        bid_cpm_micros: cpm_usd * 1_000_000,
        iab_categories: Vec::new(),
        targeting: Some(pb::Targeting::default()),
        creatives: vec![pb::Creative {
            creative_id: "c30".into(),
            audio_url: format!("https://cdn.example/{id}.mp3"),
            duration: Some(secs(30)),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A campaign targeting listeners with affinity for `genres`.
pub fn genre_campaign(id: &str, advertiser: &str, cpm_usd: i64, genres: &[&str]) -> pb::Campaign {
    let mut c = campaign(id, advertiser, cpm_usd);
    c.targeting = Some(pb::Targeting {
        affinity_genres: genres.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    });
    c
}

/// An untargeted house ad.
pub fn house_ad(id: &str) -> pb::Campaign {
    let mut c = campaign(id, "interlude", 0);
    c.tier = pb::PriorityTier::House as i32;
    c.bid_cpm_micros = 0;
    c
}

/// A one-ad, 60 s break for `listener`.
pub fn break_for(listener: &str) -> pb::DecideRequest {
    pb::DecideRequest {
        listener_id: listener.into(),
        member_id: String::new(),
        context: Some(pb::PlaybackContext::default()),
        break_constraints: Some(pb::BreakConstraints { max_ads: 1, max_duration: Some(secs(60)) }),
        explain: false,
    }
}

/// The campaign ids of a response, in order.
pub fn served(response: &pb::DecideResponse) -> Vec<&str> {
    response.ads.iter().map(|a| a.campaign_id.as_str()).collect()
}

/// What an HTTP request to the server's HTTP listener (VAST, console) got back.
#[allow(dead_code)] // not every test binary speaks HTTP
pub struct HttpAnswer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// Sends `method path_and_query` with `headers` and `body` to `addr` over HTTP/1.1.
#[allow(dead_code)] // not every test binary speaks HTTP
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: http::Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpAnswer {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut request = http::Request::builder().method(method).uri(format!("http://{addr}{path_and_query}"));
    for &(name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    let response = tokio::time::timeout(TEST_TIMEOUT, client.request(request))
        .await
        .expect("the HTTP listener answers")
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    HttpAnswer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Set (by `.ci/run`) to make the tests that need a tool beyond cargo (xmllint, node,
/// chromium) fail rather than skip when it is missing.
pub const REQUIRE_TOOLS: &str = "REQUIRE_TEST_TOOLS";

/// Reports that `check` was skipped because `why` — on the process's stderr itself, which
/// the test harness does not capture, so a plain `cargo test` shows it — or fails when the
/// tools are required.
#[allow(dead_code)] // not every test binary skips
pub fn skipped(check: &str, why: &str) {
    use std::io::Write as _;
    assert!(std::env::var_os(REQUIRE_TOOLS).is_none(), "{REQUIRE_TOOLS} is set but {why}");
    let _ = writeln!(std::io::stderr().lock(), "skipped: {check}, because {why}; .ci/run installs it");
}

/// Waits at most this long for anything in a test (a hang is a failure, not a pass).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The real `interlude` binary, started on ephemeral ports; killed if dropped while running (a
/// failed test must not leave a server holding the test runner's pipes).
pub struct Binary {
    pub child: std::process::Child,
    /// The gRPC address it logged.
    pub grpc: String,
    /// The HTTP (VAST) address it logged ("off" when off).
    pub http: String,
    /// The metrics address it logged ("off" when off).
    pub metrics: String,
    /// Every later stderr line.
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Binary {
    /// Starts the binary with `args` (after `--listen 127.0.0.1:0`) and waits for its "serving"
    /// line. Pass `--admin-token` to use admin RPCs.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Binary {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_interlude"));
        command.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]).args(args);
        Binary::run(command)
    }

    /// Like [`Binary::start`], with at most `max_files` open file descriptors (`ulimit -n`).
    pub fn start_with_file_limit<S: AsRef<std::ffi::OsStr>>(
        max_files: u32,
        args: impl IntoIterator<Item = S>,
    ) -> Binary {
        let mut command = std::process::Command::new("sh");
        command
            .args([
                "-c",
                &format!("ulimit -n {max_files} && exec \"$0\" \"$@\""),
                env!("CARGO_BIN_EXE_interlude"),
            ])
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(args);
        Binary::run(command)
    }

    fn run(mut command: std::process::Command) -> Binary {
        use std::io::BufRead as _;
        let mut child =
            command.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut before = Vec::new();
        let serving = loop {
            let line = rx
                .recv_timeout(TEST_TIMEOUT)
                .unwrap_or_else(|_| panic!("the server logs its addresses; it logged {before:#?}"));
            if line.contains("serving") {
                break line;
            }
            before.push(line);
        };
        let field = |name: &str| {
            let start = serving.find(&format!("{name}=")).unwrap() + name.len() + 1;
            serving[start..].split_whitespace().next().unwrap().trim_matches('"').to_string()
        };
        Binary {
            grpc: field("grpc_addr"),
            http: field("http_addr"),
            metrics: field("metrics_addr"),
            child,
            log: rx,
        }
    }

    /// The binary in memory only, with no demo, no metrics, and the test admin token.
    pub fn bare() -> Binary {
        Binary::in_memory("off")
    }

    /// Like [`Binary::bare`], with metrics on `metrics_listen` ("127.0.0.1:0" for any port).
    pub fn in_memory(metrics_listen: &str) -> Binary {
        Binary::start([
            "--metrics-listen",
            metrics_listen,
            "--demo",
            "false",
            "--data-dir",
            "off",
            "--admin-token",
            ADMIN_TOKEN,
        ])
    }

    /// A connected channel to its gRPC address.
    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// SIGKILL, and reap.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill_9();
        }
    }
}
