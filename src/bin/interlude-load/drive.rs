//! Drives a server like a player backend: closed loop (each worker sends its next request when
//! the last one answers) or open loop (requests at a constant rate; latency counted from the
//! intended send time, so queueing is not hidden).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use interlude::grpc::auth::Bearer;
use interlude::grpc::pb;
use interlude::grpc::pb::ad_decision_service_client::AdDecisionServiceClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::server_cpu::ServerCpu;
use crate::world::{CampaignFacts, Member, World};

/// What each request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub(crate) enum Target {
    /// Decide, then RecordEvents with an impression per decided ad.
    DecideAndRecord,
    /// Decide only.
    Decide,
    /// grpc.health.v1 Check: the cost of the gRPC stack itself.
    HealthCheck,
    /// The same Check on the bare reference server (`interlude-bare`, `--bare-target`): the
    /// cost of tonic itself, without Interlude's layers.
    BareCheck,
    /// The same Decide requests to the bare reference server, which answers each with one
    /// canned two-ad response of Interlude's size: a Decide-shaped exchange with no decision.
    BareDecide,
    /// The same break as an ad tag, `GET /vast/4.2` on the HTTP edge, then each ad's
    /// impression pixel: what a standard audio player does.
    Vast,
    /// The ad tag alone, no pixel: the VAST counterpart of Decide.
    VastTag,
    /// RecordEvents alone, `--events-per-record` impressions a call, of ads decided before the
    /// phase (`--record-stash` of them, not measured): the rate of the event write path itself.
    Record,
}

impl Target {
    /// Whether the phase runs against the bare reference server (`--bare-target`).
    pub(crate) fn is_bare(self) -> bool {
        matches!(self, Target::BareCheck | Target::BareDecide)
    }
}

/// How load is offered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Mode {
    Closed { concurrency: usize },
    Open { rate: f64, max_in_flight: usize },
}

/// What one phase measured.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) target: Target,
    pub(crate) elapsed: Duration,
    pub(crate) ok: u64,
    /// Latency in microseconds of the measured call.
    pub(crate) latency: Histogram<u64>,
    pub(crate) errors: HashMap<String, u64>,
    pub(crate) quality: Quality,
    /// Open loop: requests not sent because too many were in flight.
    pub(crate) shed_by_client: u64,
    /// The server's CPU over the measured window, or why it could not be read.
    pub(crate) server_cpu: Option<Result<CpuWindow, String>>,
    /// Calls answered and refused in each second of the measured window.
    pub(crate) per_second: Vec<(u64, u64)>,
}

/// The server's CPU seconds over a wall-clock window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuWindow {
    pub(crate) cpu_seconds: f64,
    pub(crate) wall_seconds: f64,
}

/// Decision quality, counted by the harness from what the server answered.
#[derive(Debug, Default, Clone)]
pub(crate) struct Quality {
    pub(crate) decisions: u64,
    pub(crate) paid_ads: u64,
    pub(crate) paid_ads_matching_taste: u64,
    /// Paid ads of sponsorship campaigns, which outrank every other tier.
    pub(crate) sponsorship_ads: u64,
    /// Paid ads of campaigns without genre rules (geo or run-of-network).
    pub(crate) paid_ads_without_genre_rule: u64,
    /// The same measures per kind of listener (`Class`), indexed by `Class::index`.
    pub(crate) by_class: [ClassQuality; 3],
    /// The paid ads that match neither taste nor track, by why they could still serve.
    pub(crate) misses: Misses,
    pub(crate) house_breaks: u64,
    pub(crate) empty_breaks: u64,
    pub(crate) cap_violations: u64,
    pub(crate) impressions_recorded: u64,
    /// Impressions the server acknowledged as counted (warm-up included): what its counters
    /// must have grown by, exactly.
    pub(crate) impressions_acknowledged: u64,
    /// Impressions whose RecordEvents was never acknowledged (given up after its retries).
    pub(crate) impressions_unacknowledged: u64,
}

impl Quality {
    fn merge(&mut self, o: &Quality) {
        self.decisions += o.decisions;
        self.paid_ads += o.paid_ads;
        self.paid_ads_matching_taste += o.paid_ads_matching_taste;
        self.sponsorship_ads += o.sponsorship_ads;
        self.paid_ads_without_genre_rule += o.paid_ads_without_genre_rule;
        for (mine, theirs) in self.by_class.iter_mut().zip(&o.by_class) {
            mine.merge(theirs);
        }
        self.misses.merge(&o.misses);
        self.house_breaks += o.house_breaks;
        self.empty_breaks += o.empty_breaks;
        self.cap_violations += o.cap_violations;
        self.impressions_recorded += o.impressions_recorded;
        self.impressions_acknowledged += o.impressions_acknowledged;
        self.impressions_unacknowledged += o.impressions_unacknowledged;
    }
}

/// Who a request is for, as the quality report tells listeners apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Class {
    /// A seeded listener whose profile may be used.
    Known,
    /// A listener id never seen before, granting consent in the request: no history at all.
    New,
    /// A seeded listener who denied personalised ads (stored or in the request).
    NoConsent,
}

impl Class {
    pub(crate) const ALL: [Class; 3] = [Class::Known, Class::New, Class::NoConsent];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// How often requests come from new and from non-consenting listeners (the rest: known ones).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mix {
    pub(crate) new_share: f64,
    pub(crate) no_consent_share: f64,
}

/// Decision quality for one kind of listener.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ClassQuality {
    pub(crate) decisions: u64,
    /// Breaks with at least one paid ad.
    pub(crate) paid_breaks: u64,
    pub(crate) house_breaks: u64,
    pub(crate) paid_ads: u64,
    /// Paid ads whose genres match the track playing or the listener's top-3 genres.
    pub(crate) paid_ads_matching: u64,
}

impl ClassQuality {
    fn merge(&mut self, o: &ClassQuality) {
        self.decisions += o.decisions;
        self.paid_breaks += o.paid_breaks;
        self.house_breaks += o.house_breaks;
        self.paid_ads += o.paid_ads;
        self.paid_ads_matching += o.paid_ads_matching;
    }
}

/// Paid ads that match neither the listener's top-3 genres nor the playing track, counted by
/// the kind of campaign that served them: the engine's rules allow each kind, so the counts say
/// which rule a higher match rate would have to give up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Misses {
    /// A campaign without genre rules (targeted by place, or not at all) to a listener who
    /// denied personalised ads: for them only contextual and place ads may serve.
    pub(crate) place_without_consent: u64,
    /// A campaign without genre rules to a consenting listener.
    pub(crate) place_with_consent: u64,
    /// A campaign whose affinity genre is one of the listener's genres, but not of the top 3.
    pub(crate) affinity_outside_top3: u64,
    /// Of all the misses above, those of sponsorship campaigns, which outrank every standard
    /// ad, however relevant, by tier.
    pub(crate) sponsorship: u64,
}

impl Misses {
    /// Counts one paid ad that matched neither taste nor track.
    pub(crate) fn count(&mut self, facts: &CampaignFacts, consented: bool, tier: pb::PriorityTier) {
        match (facts.affinity.is_empty() && facts.track.is_empty(), consented) {
            (true, false) => self.place_without_consent += 1,
            (true, true) => self.place_with_consent += 1,
            (false, _) => self.affinity_outside_top3 += 1,
        }
        self.sponsorship += u64::from(tier == pb::PriorityTier::Sponsorship);
    }

    fn merge(&mut self, o: &Misses) {
        self.place_without_consent += o.place_without_consent;
        self.place_with_consent += o.place_with_consent;
        self.affinity_outside_top3 += o.affinity_outside_top3;
        self.sponsorship += o.sponsorship;
    }
}

/// Everything a worker needs.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) world: Arc<World>,
    pub(crate) channels: Vec<Channel>,
    /// Sent with Decide and RecordEvents.
    pub(crate) decision_token: Bearer,
    pub(crate) seed: u64,
    pub(crate) event_counter: Arc<AtomicU64>,
    /// Distinguishes this run's event ids from an earlier run's against the same server, which
    /// remembers ids (across restarts too) and would drop a repeat as a duplicate.
    pub(crate) run_id: u64,
    pub(crate) mix: Mix,
    /// Numbers the never-seen listener ids of this run.
    pub(crate) new_listeners: Arc<AtomicU64>,
    /// The HTTP (VAST) edge, for the `vast` workload.
    pub(crate) http: Option<HttpEdge>,
    /// Connections to the bare reference server, for `BareCheck`.
    pub(crate) bare: Vec<Channel>,
    /// With `--targets`: connections to each replica; each Decide and each RecordEvents goes
    /// to one drawn at random (a load balancer with no affinity).
    pub(crate) replicas: Vec<Vec<Channel>>,
    /// Impressions per RecordEvents call in the `record` workload.
    pub(crate) events_per_record: usize,
    /// Impressions the `record` workload decides before its phase.
    pub(crate) record_stash: usize,
}

/// An HTTP/1.1 client with a keep-alive pool, and the edge's base URL.
#[derive(Clone)]
pub(crate) struct HttpEdge {
    pub(crate) client: HttpClient,
    /// e.g. `http://127.0.0.1:8080`, without a trailing slash.
    pub(crate) base: String,
}

pub(crate) type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<hyper::body::Bytes>,
>;

impl HttpEdge {
    /// A client of `base`: HTTP/1.1 with a connection per worker in flight (as players are),
    /// or HTTP/2 without upgrade (`h2c`), multiplexed as the gRPC workloads are.
    pub(crate) fn new(base: &str, http2: bool) -> Self {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(http2)
            .build_http();
        HttpEdge { client, base: base.trim_end_matches('/').to_owned() }
    }

    /// GETs `path_and_query`: its body on a 2xx, else the status as the error.
    async fn get(&self, path_and_query: &str) -> Result<hyper::body::Bytes, String> {
        use http_body_util::BodyExt as _;
        let uri: http::Uri =
            format!("{}{path_and_query}", self.base).parse().map_err(|e| format!("bad URL: {e}"))?;
        let response = self.client.get(uri).await.map_err(|e| format!("HTTP {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| format!("HTTP body {e}"))?.to_bytes();
        if status.is_success() { Ok(body) } else { Err(format!("HTTP {}", status.as_u16())) }
    }
}

/// The query of the ad tag for `request`, as a player would build it.
pub(crate) fn vast_query(request: &pb::DecideRequest) -> String {
    let mut q = form_urlencoded::Serializer::new(String::with_capacity(256));
    if !request.listener_id.is_empty() {
        q.append_pair("listener_id", &request.listener_id);
    }
    if !request.member_id.is_empty() {
        q.append_pair("member_id", &request.member_id);
    }
    if let Some(c) = &request.context {
        for g in &c.track_genres {
            q.append_pair("track_genre", g);
        }
        for g in &c.recent_track_genres {
            q.append_pair("recent_genre", g);
        }
        let device = match c.device() {
            pb::DeviceType::Mobile => Some("mobile"),
            pb::DeviceType::Desktop => Some("desktop"),
            pb::DeviceType::SmartSpeaker => Some("smart_speaker"),
            _ => None,
        };
        if let Some(device) = device {
            q.append_pair("device", device);
        }
        if let Some(l) = &c.location {
            q.append_pair("country", &l.country);
            if !l.region.is_empty() {
                q.append_pair("region", &l.region);
            }
            if !l.metro.is_empty() {
                q.append_pair("metro", &l.metro);
            }
        }
        // A refusal in the request is GDPR applying without consent; otherwise the stored
        // choice stands, as over gRPC.
        if c.personalized_ads() == pb::ConsentState::Denied {
            q.append_pair("gdpr", "1");
        }
    }
    if let Some(b) = &request.break_constraints {
        q.append_pair("max_ads", &b.max_ads.to_string());
        if let Some(d) = &b.max_duration {
            q.append_pair("max_duration", &d.seconds.to_string());
        }
    }
    q.finish()
}

/// The impression URLs of a VAST document, as path and query on the edge, macros filled.
pub(crate) fn impression_pixels(xml: &str, cache_buster: u64) -> Vec<String> {
    let mut pixels = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find("<Impression") {
        rest = &rest[at..];
        let Some(start) = rest.find("<![CDATA[") else { break };
        let Some(len) = rest[start + 9..].find("]]>") else { break };
        let url = &rest[start + 9..start + 9 + len];
        if let Some(path) = url.split_once("://").and_then(|(_, r)| r.find('/').map(|i| &r[i..])) {
            pixels.push(path.replace("[TIMESTAMP]", "").replace("[CACHEBUSTING]", &cache_buster.to_string()));
        }
        rest = &rest[start + 9 + len..];
    }
    pixels
}

/// Runs one phase for `duration` (after `warmup`, not measured), reading the server's CPU
/// time from `cpu` when the measured window opens and once every answer is in.
pub(crate) async fn run(
    shared: &Shared,
    target: Target,
    mode: Mode,
    (warmup, duration): (Duration, Duration),
    cpu: Option<&ServerCpu>,
    progress: &ProgressBar,
) -> Outcome {
    // The record workload's impressions are decided first, outside the phase and its clock.
    let mut stashes = match (target, mode) {
        (Target::Record, Mode::Closed { concurrency }) => mint(shared, concurrency, progress).await,
        _ => Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let measuring_from = Instant::now() + warmup;
    let timeline = Arc::new(Timeline::new(measuring_from, duration));
    let deadline = measuring_from + duration;
    let cpu_before = cpu.cloned().map(|cpu| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measuring_from).await;
            cpu.seconds().await.map(|s| (s, Instant::now()))
        })
    });
    let results = match mode {
        Mode::Closed { concurrency } => {
            let mut handles = Vec::with_capacity(concurrency);
            for w in 0..concurrency {
                let mut worker = Worker::new(shared, target, w, concurrency, timeline.clone());
                worker.stash = stashes.get_mut(w).map(std::mem::take).unwrap_or_default();
                let stop = stop.clone();
                let progress = progress.clone();
                handles.push(tokio::spawn(async move {
                    worker.closed_loop(measuring_from, deadline, &stop, &progress).await
                }));
            }
            let mut all = Vec::with_capacity(concurrency);
            for h in handles {
                if let Ok(r) = h.await {
                    all.push(r);
                }
            }
            all
        }
        Mode::Open { rate, max_in_flight } => {
            vec![
                open_loop(
                    shared,
                    target,
                    rate,
                    max_in_flight,
                    (measuring_from, deadline),
                    progress,
                    &timeline,
                )
                .await,
            ]
        }
    };
    stop.store(true, Ordering::Relaxed);
    // A record phase whose stash ran out ended early: its rates are over the time it ran.
    let elapsed = Instant::now().min(deadline).saturating_duration_since(measuring_from);
    let server_cpu = match (cpu, cpu_before) {
        (Some(cpu), Some(before)) => Some(cpu_window(cpu, before).await.map_err(|e| format!("{e:#}"))),
        _ => None,
    };
    let mut outcome = Outcome {
        target,
        elapsed,
        ok: 0,
        latency: new_histogram(),
        errors: HashMap::new(),
        quality: Quality::default(),
        shed_by_client: 0,
        server_cpu,
        per_second: timeline.counts(),
    };
    for r in results {
        outcome.ok += r.ok;
        let _ = outcome.latency.add(&r.latency);
        for (k, v) in r.errors {
            *outcome.errors.entry(k).or_default() += v;
        }
        outcome.quality.merge(&r.quality);
        outcome.shed_by_client += r.shed;
    }
    outcome
}

/// The record workload's impressions, decided before its phase: one stash per worker, filled
/// by `concurrency` workers at once.
async fn mint(shared: &Shared, concurrency: usize, progress: &ProgressBar) -> Vec<Vec<pb::AdEvent>> {
    progress.set_message(format!("deciding {} impressions to record", shared.record_stash));
    let quota = shared.record_stash.div_ceil(concurrency);
    // Its own timeline: nothing here is measured.
    let timeline = Arc::new(Timeline::new(Instant::now(), Duration::ZERO));
    let handles: Vec<_> = (0..concurrency)
        .map(|w| {
            let mut worker = Worker::new(shared, Target::Record, w, concurrency, timeline.clone());
            tokio::spawn(async move {
                worker.fill_stash(quota).await;
                worker.stash
            })
        })
        .collect();
    let mut stashes = Vec::with_capacity(concurrency);
    for h in handles {
        stashes.push(h.await.unwrap_or_default());
    }
    progress.set_message(String::new());
    stashes
}

async fn cpu_window(
    cpu: &ServerCpu,
    before: tokio::task::JoinHandle<anyhow::Result<(f64, Instant)>>,
) -> anyhow::Result<CpuWindow> {
    let (from, opened) = before.await??;
    let to = cpu.seconds().await?;
    Ok(CpuWindow { cpu_seconds: to - from, wall_seconds: opened.elapsed().as_secs_f64() })
}

/// The label of a failed call: its gRPC code.
fn code(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid histogram bounds"))
}

/// Calls answered and refused per second of a phase, shared by its workers: how a fault shows
/// over time (a failover's dip and its end).
#[derive(Debug)]
pub(crate) struct Timeline {
    origin: Instant,
    seconds: Vec<[AtomicU64; 2]>,
}

impl Timeline {
    fn new(origin: Instant, span: Duration) -> Self {
        let n = span.as_secs() as usize + 2;
        Self { origin, seconds: (0..n).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect() }
    }

    /// Counts one call at `at`: answered, or refused.
    fn count(&self, at: Instant, answered: bool) {
        let second = at.saturating_duration_since(self.origin).as_secs() as usize;
        if let Some(cell) = self.seconds.get(second) {
            cell[usize::from(!answered)].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counts(&self) -> Vec<(u64, u64)> {
        self.seconds.iter().map(|c| (c[0].load(Ordering::Relaxed), c[1].load(Ordering::Relaxed))).collect()
    }
}

/// What one worker measured.
struct WorkerResult {
    ok: u64,
    latency: Histogram<u64>,
    errors: HashMap<String, u64>,
    quality: Quality,
    shed: u64,
}

/// One simulated player backend. In closed loop, worker `w` owns the members `i ≡ w (mod n)`,
/// so no two requests of one listener overlap and the cap check below is exact.
struct Worker {
    shared: Shared,
    target: Target,
    client: AdDecisionServiceClient<InterceptedService<Channel, Bearer>>,
    /// One client per replica (`Shared::replicas`); empty with one target.
    replicas: Vec<AdDecisionServiceClient<InterceptedService<Channel, Bearer>>>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    rng: SmallRng,
    index: usize,
    stride: usize,
    /// Per (member, campaign): times of the impressions this worker recorded.
    heard: HashMap<(usize, String), Vec<i64>>,
    /// The record workload's impressions still to send.
    stash: Vec<pb::AdEvent>,
    result: WorkerResult,
    timeline: Arc<Timeline>,
}

impl Worker {
    fn new(shared: &Shared, target: Target, index: usize, stride: usize, timeline: Arc<Timeline>) -> Self {
        let channels =
            if target.is_bare() && !shared.bare.is_empty() { &shared.bare } else { &shared.channels };
        let channel = channels[index % channels.len()].clone();
        Worker {
            shared: shared.clone(),
            target,
            client: AdDecisionServiceClient::with_interceptor(channel.clone(), shared.decision_token.clone()),
            replicas: shared
                .replicas
                .iter()
                .map(|c| {
                    AdDecisionServiceClient::with_interceptor(
                        c[index % c.len()].clone(),
                        shared.decision_token.clone(),
                    )
                })
                .collect(),
            health: tonic_health::pb::health_client::HealthClient::new(channel),
            rng: SmallRng::seed_from_u64(shared.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9)),
            index,
            stride: stride.max(1),
            heard: HashMap::new(),
            stash: Vec::new(),
            timeline,
            result: WorkerResult {
                ok: 0,
                latency: new_histogram(),
                errors: HashMap::new(),
                quality: Quality::default(),
                shed: 0,
            },
        }
    }

    async fn closed_loop(
        mut self,
        measuring_from: Instant,
        deadline: Instant,
        stop: &AtomicBool,
        progress: &ProgressBar,
    ) -> WorkerResult {
        let mine = self.members_owned();
        if mine == 0 {
            return self.result;
        }
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.target == Target::Record && self.stash.is_empty() {
                *self
                    .result
                    .errors
                    .entry("record stash used up before the phase ended".into())
                    .or_default() += 1;
                break;
            }
            let member = self.draw_member(mine);
            let measured = now >= measuring_from;
            self.one(member, now, measured).await;
            if measured {
                progress.inc(1);
            }
        }
        self.result
    }

    /// How many members this worker owns: those `i ≡ index (mod stride)`.
    fn members_owned(&self) -> usize {
        self.shared.world.members.len().saturating_sub(self.index).div_ceil(self.stride)
    }

    /// One of this worker's `owned` members, at random.
    fn draw_member(&mut self, owned: usize) -> usize {
        self.index + self.stride * self.rng.random_range(0..owned)
    }

    /// Sends one request for `member`; latency counts from `intended`.
    async fn one(&mut self, member: usize, intended: Instant, measured: bool) {
        match self.target {
            Target::HealthCheck | Target::BareCheck => {
                let r =
                    self.health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
                self.account(intended, measured, r.map(|_| ()).map_err(|s| code(&s)));
            }
            Target::Vast | Target::VastTag => {
                let class = self.class_of(member);
                let request = self.request(member, class);
                let Some(http) = self.shared.http.clone() else {
                    self.account(intended, measured, Err("no --http-target".into()));
                    return;
                };
                let body = match http.get(&format!("/vast/4.2?{}", vast_query(&request))).await {
                    Ok(body) => body,
                    Err(e) => {
                        self.account(intended, measured, Err(e));
                        return;
                    }
                };
                self.account(intended, measured, Ok(()));
                if self.target == Target::VastTag {
                    return;
                }
                let xml = String::from_utf8_lossy(&body);
                let n = self.shared.event_counter.fetch_add(1, Ordering::Relaxed);
                for pixel in impression_pixels(&xml, n) {
                    match http.get(&pixel).await {
                        Ok(_) if measured => self.result.quality.impressions_recorded += 1,
                        Ok(_) => {}
                        Err(e) if measured => {
                            *self.result.errors.entry(format!("impression pixel {e}")).or_default() += 1
                        }
                        Err(_) => {}
                    }
                }
            }
            Target::Record => {
                let n = self.shared.events_per_record.min(self.stash.len());
                let events = self.stash.split_off(self.stash.len() - n);
                let r = self.decider().record_events(pb::RecordEventsRequest { events }).await;
                let accepted = r.as_ref().map_or(0, |reply| {
                    reply.get_ref().outcomes().filter(|o| *o == pb::EventOutcome::Accepted).count()
                });
                self.result.quality.impressions_acknowledged += accepted as u64;
                self.account(intended, measured, r.map(drop).map_err(|s| code(&s)));
                if measured {
                    self.result.quality.impressions_recorded += accepted as u64;
                    if accepted < n {
                        *self.result.errors.entry("RecordEvents not accepted".into()).or_default() +=
                            (n - accepted) as u64;
                    }
                }
            }
            Target::BareDecide => {
                let class = self.class_of(member);
                let request = self.request(member, class);
                let r = self.client.decide(request).await;
                self.account(intended, measured, r.map(drop).map_err(|s| code(&s)));
            }
            Target::Decide | Target::DecideAndRecord => {
                let class = self.class_of(member);
                let request = self.request(member, class);
                let r = self.decider().decide(request.clone()).await;
                let response = match r {
                    Ok(r) => r.into_inner(),
                    Err(status) => {
                        self.account(intended, measured, Err(code(&status)));
                        return;
                    }
                };
                self.account(intended, measured, Ok(()));
                if measured {
                    self.judge(member, class, &request, &response);
                }
                if self.target == Target::DecideAndRecord && !response.ads.is_empty() {
                    // A new listener's id is never used again: no caps to follow.
                    let heard_by = (class != Class::New).then_some(member);
                    self.record(heard_by, &response, measured).await;
                }
            }
        }
    }

    /// The client for the next call: this worker's, or with several replicas one of them at
    /// random.
    fn decider(&mut self) -> AdDecisionServiceClient<InterceptedService<Channel, Bearer>> {
        if self.replicas.is_empty() {
            return self.client.clone();
        }
        let i = self.rng.random_range(0..self.replicas.len());
        self.replicas[i].clone()
    }

    /// Counts one answered call; an error by its label (a gRPC code, an HTTP status).
    fn account(&mut self, intended: Instant, measured: bool, r: Result<(), String>) {
        if !measured {
            return;
        }
        self.timeline.count(intended, r.is_ok());
        match r {
            Ok(()) => {
                self.result.ok += 1;
                let us = intended.elapsed().as_micros().max(1) as u64;
                let _ = self.result.latency.record(us);
            }
            Err(label) => *self.result.errors.entry(label).or_default() += 1,
        }
    }

    /// Draws who this request is for: a new listener, `member` without consent, or `member`.
    fn class_of(&mut self, member: usize) -> Class {
        let mix = self.shared.mix;
        let draw: f64 = self.rng.random();
        if draw < mix.new_share {
            Class::New
        } else if draw < mix.new_share + mix.no_consent_share || !self.shared.world.members[member].consented
        {
            Class::NoConsent
        } else {
            Class::Known
        }
    }

    fn request(&mut self, member: usize, class: Class) -> pb::DecideRequest {
        if class == Class::New {
            return self.new_listener_request();
        }
        let mut request = self.known_request(member);
        if class == Class::NoConsent
            && let Some(context) = request.context.as_mut()
        {
            // Denied in the request always wins, whatever the stored choice.
            context.personalized_ads = pb::ConsentState::Denied as i32;
        }
        request
    }

    /// A never-seen listener who grants consent: the player knows only this session, a genre
    /// the listener chose (mostly kept for the last few tracks).
    fn new_listener_request(&mut self) -> pb::DecideRequest {
        use interlude::synth::{GENRES, PLACES, zipf};
        let n = self.shared.new_listeners.fetch_add(1, Ordering::Relaxed);
        let session = zipf(&mut self.rng, GENRES.len());
        let mut genre =
            || if self.rng.random_bool(0.8) { session } else { zipf(&mut self.rng, GENRES.len()) };
        let track = GENRES[genre()].to_string();
        let recent = (0..3).map(|_| GENRES[genre()].to_string()).collect();
        let (country, region, metro) = PLACES[self.rng.random_range(0..PLACES.len())];
        let mut request = self.known_request(0);
        request.listener_id = format!("new-{:016x}-{n}", self.shared.run_id);
        request.member_id = String::new();
        if let Some(context) = request.context.as_mut() {
            context.track_genres = vec![track];
            context.recent_track_genres = recent;
            context.personalized_ads = pb::ConsentState::Granted as i32;
            context.location =
                Some(pb::GeoLocation { country: country.into(), region: region.into(), metro: metro.into() });
        }
        request
    }

    fn known_request(&mut self, member: usize) -> pb::DecideRequest {
        let m: &Member = &self.shared.world.members[member];
        // Mostly one of the member's favourite genres plays; sometimes anything.
        let track_genre = if self.rng.random_bool(0.7) && !m.top3.is_empty() {
            m.top3[self.rng.random_range(0..m.top3.len())].to_string()
        } else {
            interlude::synth::GENRES[interlude::synth::zipf(&mut self.rng, interlude::synth::GENRES.len())]
                .to_string()
        };
        let place = if self.rng.random_bool(0.9) {
            m.home
        } else {
            self.rng.random_range(0..interlude::synth::PLACES.len())
        };
        let (country, region, metro) = interlude::synth::PLACES[place];
        pb::DecideRequest {
            listener_id: m.listener_id.clone(),
            member_id: m.member_id.clone(),
            context: Some(pb::PlaybackContext {
                track_id: "track".into(),
                track_genres: vec![track_genre],
                device: [pb::DeviceType::Mobile, pb::DeviceType::Desktop, pb::DeviceType::SmartSpeaker]
                    [self.rng.random_range(0..3)] as i32,
                location: Some(pb::GeoLocation {
                    country: country.into(),
                    region: region.into(),
                    metro: metro.into(),
                }),
                personalized_ads: pb::ConsentState::Unspecified as i32,
                utc_offset_minutes: 0,
                recent_track_genres: Vec::new(),
            }),
            break_constraints: Some(pb::BreakConstraints {
                max_ads: 2,
                max_duration: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            }),
            explain: false,
        }
    }

    /// Quality: does each paid ad match the member's top-3 genres or the playing track, and does
    /// any break an already-capped campaign?
    fn judge(
        &mut self,
        member: usize,
        class: Class,
        request: &pb::DecideRequest,
        response: &pb::DecideResponse,
    ) {
        let q = &mut self.result.quality;
        q.decisions += 1;
        let by_class = &mut q.by_class[class.index()];
        by_class.decisions += 1;
        match response.fill() {
            pb::Fill::House => {
                q.house_breaks += 1;
                by_class.house_breaks += 1;
            }
            pb::Fill::Empty => q.empty_breaks += 1,
            pb::Fill::Paid => by_class.paid_breaks += 1,
            _ => {}
        }
        let m = &self.shared.world.members[member];
        // A new listener's known genres are the session's: what the player sent as recent tracks.
        let recent: Vec<&str> = match (&request.context, class) {
            (Some(c), Class::New) => c.recent_track_genres.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        let top3: &[&str] = if class == Class::New { &recent } else { &m.top3 };
        let track = request.context.as_ref().map(|c| c.track_genres.as_slice()).unwrap_or_default();
        let now = interlude::grpc::now().0;
        for ad in &response.ads {
            let Some(facts) = self.shared.world.facts.get(&ad.campaign_id) else { continue };
            if facts.house {
                continue;
            }
            q.paid_ads += 1;
            let matches = facts.affinity.iter().any(|g| top3.contains(&g.as_str()) || track.contains(g))
                || facts.track.iter().any(|g| track.contains(g));
            q.paid_ads_matching_taste += u64::from(matches);
            q.sponsorship_ads += u64::from(ad.tier() == pb::PriorityTier::Sponsorship);
            if !matches {
                q.misses.count(facts, class != Class::NoConsent, ad.tier());
            }
            q.paid_ads_without_genre_rule += u64::from(facts.affinity.is_empty() && facts.track.is_empty());
            let by_class = &mut q.by_class[class.index()];
            by_class.paid_ads += 1;
            by_class.paid_ads_matching += u64::from(matches);
            if class == Class::New {
                continue;
            }
            if let Some(times) = self.heard.get(&(member, ad.campaign_id.clone())) {
                let violated = facts.caps.iter().any(|&(max, window)| {
                    let n = times.iter().filter(|&&t| window.is_none_or(|w| now - t < w)).count();
                    n >= max as usize
                });
                q.cap_violations += u64::from(violated);
            }
        }
    }

    /// An impression event for each ad of `response`, with ids no run has used.
    fn impressions_of(&self, response: &pb::DecideResponse) -> Vec<pb::AdEvent> {
        let base = self.shared.event_counter.fetch_add(response.ads.len() as u64, Ordering::Relaxed);
        response
            .ads
            .iter()
            .enumerate()
            .map(|(i, ad)| pb::AdEvent {
                event_id: format!(
                    "load-{}-{:016x}-{}",
                    self.shared.seed,
                    self.shared.run_id,
                    base + i as u64
                ),
                r#type: pb::EventType::Impression as i32,
                impression_token: ad.impression_token.clone(),
                occurred_at: None,
                error_code: 0,
            })
            .collect()
    }

    /// Decides breaks for this worker's members until it holds `quota` impressions to record
    /// (or has tried four times as many breaks: listeners at their ad load get none).
    async fn fill_stash(&mut self, quota: usize) {
        let mine = self.members_owned();
        let mut tries = 0;
        while mine > 0 && self.stash.len() < quota && tries < 4 * quota {
            tries += 1;
            let member = self.draw_member(mine);
            let class = self.class_of(member);
            let request = self.request(member, class);
            if let Ok(response) = self.decider().decide(request).await {
                let events = self.impressions_of(response.get_ref());
                self.stash.extend(events);
            }
        }
        self.stash.truncate(quota);
    }

    async fn record(&mut self, heard_by: Option<usize>, response: &pb::DecideResponse, measured: bool) {
        let events = self.impressions_of(response);
        // Stamped before sending, so the harness never counts an impression as more recent
        // than the server does (and never reports a violation that is not one).
        let now = interlude::grpc::now().0;
        // A refusal (UNAVAILABLE: a failover) is retried with the same event ids, as a player
        // does, until acknowledged or RECORD_ATTEMPTS run out.
        let mut attempt = 0;
        let reply = loop {
            attempt += 1;
            let request = pb::RecordEventsRequest { events: events.clone() };
            match self.decider().record_events(request).await {
                Ok(reply) => break Ok(reply.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable && attempt < RECORD_ATTEMPTS => {
                    if measured {
                        self.timeline.count(Instant::now(), false);
                        *self.result.errors.entry("RecordEvents Unavailable, retried".into()).or_default() +=
                            1;
                    }
                    tokio::time::sleep(RECORD_RETRY_PAUSE).await;
                }
                Err(status) => break Err(status),
            }
        };
        match reply {
            Ok(reply) => {
                // Every id is new: counted now, or (after a refused try) by that try. Another
                // outcome means the server dropped an impression.
                let acknowledged = reply
                    .outcomes()
                    .filter(|o| matches!(o, pb::EventOutcome::Accepted | pb::EventOutcome::Retried))
                    .count() as u64;
                self.result.quality.impressions_acknowledged += acknowledged;
                let dropped = response.ads.len() as u64 - acknowledged;
                if dropped > 0 && measured {
                    *self.result.errors.entry("RecordEvents duplicates".into()).or_default() += dropped;
                }
                if let Some(member) = heard_by {
                    for ad in &response.ads {
                        self.heard.entry((member, ad.campaign_id.clone())).or_default().push(now);
                    }
                }
                if measured {
                    self.result.quality.impressions_recorded += response.ads.len() as u64;
                }
            }
            Err(status) => {
                self.result.quality.impressions_unacknowledged += response.ads.len() as u64;
                if measured {
                    *self.result.errors.entry(format!("RecordEvents {:?}", status.code())).or_default() += 1
                }
            }
        }
    }
}

/// Tries of one RecordEvents refused as UNAVAILABLE, and the pause between them: about the
/// failover time of a Redis Cluster (cluster-node-timeout plus the election).
const RECORD_ATTEMPTS: u32 = 100;
const RECORD_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Requests an open-loop worker queues behind the one it is waiting for.
const OPEN_QUEUE: usize = 4;
/// Most workers an open loop starts. Each holds a latency histogram (~140 KB), and 25,000 of them
/// (`--max-in-flight 100000`) took longer to set up than a phase lasts: the pacer then found its
/// deadline passed and sent nothing. Past this, deeper queues keep the bound instead.
const OPEN_MAX_WORKERS: usize = 1024;

/// Workers and queue depth of an open loop that holds at most `max_in_flight` requests (at least
/// that many, rounded up to whole queues).
fn open_pool(max_in_flight: usize) -> (usize, usize) {
    let workers = max_in_flight.div_ceil(OPEN_QUEUE).clamp(1, OPEN_MAX_WORKERS);
    (workers, max_in_flight.div_ceil(workers).max(1))
}

/// Open loop: one request every `1 / rate` seconds, from intended send times, dealt round-robin
/// to a fixed pool of workers (each with its own connection share and histogram). A request
/// finding its worker's queue full is shed and counted, never silently delayed.
async fn open_loop(
    shared: &Shared,
    target: Target,
    rate: f64,
    max_in_flight: usize,
    (measuring_from, deadline): (Instant, Instant),
    progress: &ProgressBar,
    timeline: &Arc<Timeline>,
) -> WorkerResult {
    let (workers, queue) = open_pool(max_in_flight);
    let mut senders = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for w in 0..workers {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Instant)>(queue);
        senders.push(tx);
        let mut worker = Worker::new(shared, target, w, workers, timeline.clone());
        let progress = progress.clone();
        handles.push(tokio::spawn(async move {
            while let Some((member, intended)) = rx.recv().await {
                let measured = intended >= measuring_from;
                worker.one(member, intended, measured).await;
                if measured {
                    progress.inc(1);
                }
            }
            worker.result
        }));
    }
    // The pacer spins on the runtime, yielding between looks at the clock: the runtime's timer
    // ticks in milliseconds, and a pacing thread beside the runtime on the generator's one core
    // waits for the scheduler (measured: p50 300 µs at 3,000 req/s); a yielding task lets the
    // workers and the I/O driver run between sends and is on time to a few µs.
    // It is a spawned task, so that it shares the workers' thread instead of competing with it.
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let members = shared.world.members.len().max(1);
    let seed = shared.seed;
    let pacer = tokio::spawn(async move {
        let mut rng = SmallRng::seed_from_u64(seed);
        let start = Instant::now();
        let mut shed = 0u64;
        let mut i: u32 = 0;
        loop {
            let intended = start + interval * i;
            if intended >= deadline {
                break;
            }
            while Instant::now() < intended {
                tokio::task::yield_now().await;
            }
            let member = rng.random_range(0..members);
            if senders[i as usize % workers].try_send((member, intended)).is_err() {
                shed += u64::from(intended >= measuring_from);
            }
            i += 1;
        }
        shed
    });
    let shed = pacer.await.unwrap_or(0);
    let mut total = WorkerResult {
        ok: 0,
        latency: new_histogram(),
        errors: HashMap::new(),
        quality: Quality::default(),
        shed,
    };
    for h in handles {
        if let Ok(r) = h.await {
            total.ok += r.ok;
            let _ = total.latency.add(&r.latency);
            for (k, v) in r.errors {
                *total.errors.entry(k).or_default() += v;
            }
            total.quality.merge(&r.quality);
        }
    }
    // Cap violations are only exact when one worker owns a listener (closed loop).
    total.quality.cap_violations = 0;
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_loop_pool_holds_the_bound_with_at_most_1024_workers() {
        assert_eq!(open_pool(1), (1, 1));
        assert_eq!(open_pool(2048), (512, 4), "the default (32 × 64) as before");
        let (workers, queue) = open_pool(100_000);
        assert_eq!(workers, OPEN_MAX_WORKERS);
        assert!(workers * queue >= 100_000 && workers * (queue - 1) < 100_000, "{workers} × {queue}");
    }

    fn facts(affinity: &[&str], track: &[&str]) -> CampaignFacts {
        CampaignFacts {
            affinity: affinity.iter().map(|g| g.to_string()).collect(),
            track: track.iter().map(|g| g.to_string()).collect(),
            house: false,
            caps: Vec::new(),
            lifetime_budget_micros: 0,
        }
    }

    #[test]
    fn misses_are_counted_by_the_kind_of_campaign_and_its_tier() {
        let mut m = Misses::default();
        m.count(&facts(&[], &[]), false, pb::PriorityTier::Sponsorship);
        m.count(&facts(&[], &[]), true, pb::PriorityTier::Standard);
        m.count(&facts(&[], &[]), true, pb::PriorityTier::Sponsorship);
        m.count(&facts(&["jazz"], &[]), true, pb::PriorityTier::Remnant);
        assert_eq!(
            m,
            Misses {
                place_without_consent: 1,
                place_with_consent: 2,
                affinity_outside_top3: 1,
                sponsorship: 2
            }
        );
        let mut total = Misses::default();
        total.merge(&m);
        total.merge(&m);
        assert_eq!(total.place_with_consent, 4);
        assert_eq!(total.sponsorship, 4);
    }
}
