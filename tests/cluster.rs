//! Cluster mode on a real Redis Cluster (6 `redis-server` nodes the tests start themselves):
//! several Interlude replicas behave as one ad server — a cap, a budget, an event, a profile,
//! a campaign and a token are the same on every replica — and the failures the shared store
//! can have are survived as docs/SCALING.md says.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::Duration;

use tokio::time::Instant;

use common::redis_cluster::{self, RedisCluster};
use common::*;
use interlude::app::AppState;
use interlude::config::{Config, RedisSettings};
use interlude::grpc::pb;
use interlude::store::shared::Shared;

/// Starts a cluster, or says why this test is skipped (and fails under `REQUIRE_TEST_TOOLS`).
fn cluster(test: &str) -> Option<RedisCluster> {
    if !redis_cluster::available() {
        skipped(test, "redis-server (Debian redis-server, with redis-cli) is not installed");
        return None;
    }
    Some(tokio::task::block_in_place(RedisCluster::start))
}

fn replica_config(cluster: &RedisCluster) -> Config {
    Config {
        demo: false,
        data_dir: None,
        redis: Some(RedisSettings {
            nodes: cluster.nodes_setting().split(',').map(String::from).collect(),
            timeout: Duration::from_millis(500),
            wait_replicas: 1,
        }),
        ..Config::default()
    }
}

/// One Interlude replica in this process, in cluster mode on `cluster`.
async fn replica(cluster: &RedisCluster) -> TestServer {
    let mut config = replica_config(cluster);
    config.admin_token = Some(interlude::config::Secret(ADMIN_TOKEN.into()));
    let store = Shared::connect(config.redis.as_ref().unwrap()).await.unwrap();
    let (state, _) = AppState::open_shared(&config, store).await.unwrap();
    serve_state(config, state).await
}

fn impression(id: &str, token: &str) -> pb::AdEvent {
    pb::AdEvent {
        event_id: id.into(),
        r#type: pb::EventType::Impression as i32,
        impression_token: token.into(),
        ..Default::default()
    }
}

async fn record(
    server: &TestServer,
    events: Vec<pb::AdEvent>,
) -> Result<pb::RecordEventsResponse, tonic::Status> {
    server.decisions().record_events(pb::RecordEventsRequest { events }).await.map(|r| r.into_inner())
}

/// Polls `check` on every replica until it holds on all (a change reaches the others by their
/// poll of the shared store), failing after `TEST_TIMEOUT`; returns how long it took.
async fn on_every_replica(replicas: &[&TestServer], check: impl Fn(&TestServer) -> bool) -> Duration {
    let start = Instant::now();
    while !replicas.iter().all(|r| check(r)) {
        assert!(start.elapsed() < TEST_TIMEOUT, "not seen on every replica within {TEST_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Waits until every replica knows listener `id` has state in the shared store (a replica
/// decides for a listener it believes never stored without reading it): the bound on how soon
/// another replica's first write of a listener is seen, printed.
async fn stored_on_every_replica(replicas: &[&TestServer], id: &str) {
    let took = on_every_replica(replicas, |r| {
        r.state.shared.as_ref().is_some_and(|s| s.stored_listeners().may_hold(id))
    })
    .await;
    eprintln!("listener {id}, first stored on one replica, known stored on all after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behave_as_one_ad_server() {
    let Some(cluster) = cluster("cluster::three_replicas_behave_as_one_ad_server") else { return };
    let (a, b, c) = (replica(&cluster).await, replica(&cluster).await, replica(&cluster).await);
    let all = [&a, &b, &c];

    // A campaign created on one replica is served by all; a genre interned on one has the
    // same id on every replica (profiles and campaigns store ids).
    let mut capped = genre_campaign("opera-tickets", "opera-house", 20, &["opera"]);
    capped.frequency_caps =
        vec![pb::FrequencyCap { scope: pb::CapScope::Campaign as i32, max_impressions: 2, window: None }];
    a.upsert([capped, house_ad("house")]).await;
    // (Each campaign is its own write: a replica may poll between the two.)
    let took = on_every_replica(&all, |r| {
        let snapshot = r.state.catalog.snapshot();
        snapshot.find("opera-tickets").is_some() && snapshot.find("house").is_some()
    })
    .await;
    eprintln!("a campaign upserted on one replica was on all three after {took:?}");
    let ids: Vec<_> = all.iter().map(|r| r.state.vocabulary.lookup("opera")).collect();
    assert!(ids[0].is_some() && ids.iter().all(|id| *id == ids[0]), "opera's id differs: {ids:?}");

    // A listener first stored on one replica is known stored on the others once they hear of
    // it; until then they decide for it as never seen. Never-stored listeners are not read.
    let a_stored = a.state.shared.as_ref().unwrap().stored_listeners().clone();
    on_every_replica(&[&a], |_| a_stored.is_loaded()).await;
    assert!(!a_stored.may_hold("ana"), "never stored yet");
    b.listener("ana", |_| {}).await;
    b.plays("ana", "", &[("opera", 20)]).await;
    stored_on_every_replica(&all, "ana").await;

    // The cap (2 per listener) holds whichever replica decides and whichever records.
    let mut served_opera = 0;
    for i in 0..6 {
        let decided = all[i % 3].decide(break_for("ana")).await;
        if served(&decided) == ["opera-tickets"] {
            served_opera += 1;
        }
        all[(i + 1) % 3].record_impressions(&decided, &format!("ana-{i}")).await;
    }
    assert_eq!(served_opera, 2, "a cap of 2 across three replicas");
    // A replica started now learns which listeners are stored from the shared filter (it
    // heard none of their writes): the cap holds there too.
    let late = replica(&cluster).await;
    let stored = late.state.shared.as_ref().unwrap().stored_listeners().clone();
    on_every_replica(&[&late], |_| stored.is_loaded()).await;
    assert!(stored.may_hold("ana") && !stored.may_hold("never-stored"), "loaded from the shared filter");
    assert!(
        !served(&late.decide(break_for("ana")).await).contains(&"opera-tickets"),
        "capped on a late replica"
    );

    // The same impression reported to every replica counts once; another event id for the same
    // ad is already counted; the token of one replica verifies on the others.
    c.listener("ben", |_| {}).await;
    c.plays("ben", "", &[("opera", 20)]).await;
    stored_on_every_replica(&all, "ben").await;
    let decided = a.decide(break_for("ben")).await;
    assert_eq!(served(&decided), ["opera-tickets"]);
    let token = &decided.ads[0].impression_token;
    let before = a.stats("opera-tickets").await.impressions;
    let first = record(&b, vec![impression("ben-1", token)]).await.unwrap();
    let retry = record(&c, vec![impression("ben-1", token)]).await.unwrap();
    let replay = record(&a, vec![impression("ben-2", token)]).await.unwrap();
    assert_eq!(first.outcomes().collect::<Vec<_>>(), [pb::EventOutcome::Accepted]);
    assert_eq!(retry.outcomes().collect::<Vec<_>>(), [pb::EventOutcome::Retried]);
    assert_eq!(replay.outcomes().collect::<Vec<_>>(), [pb::EventOutcome::AlreadyCounted]);
    for r in all {
        assert_eq!(
            r.stats("opera-tickets").await.impressions,
            before + 1,
            "counted once, seen by every replica"
        );
    }

    // Consent withdrawn on one replica: decisions on another stop being personalised as soon
    // as it hears of the change (its copy of the listener is trusted until then).
    a.listener("ben", |l| l.personalized_ads = pb::ConsentState::Denied as i32).await;
    let start = Instant::now();
    while served(&c.decide(break_for("ben")).await) == ["opera-tickets"] {
        assert!(start.elapsed() < TEST_TIMEOUT, "consent withdrawn on another replica never seen");
    }
    eprintln!("consent withdrawn on one replica was seen by another after {:?}", start.elapsed());

    // An alias linked on one replica resolves on the others (they poll the aliases), and an
    // erasure on one reaches every replica's copy: its decisions are no longer personalised.
    a.listeners()
        .link_identity(pb::LinkIdentityRequest { listener_id: "ana".into(), alias: "ana-new-email".into() })
        .await
        .unwrap();
    on_every_replica(&all, |r| r.state.listeners.canonical("ana-new-email").as_str() == "ana").await;
    c.listener("dora", |_| {}).await;
    c.plays("dora", "", &[("opera", 20)]).await;
    stored_on_every_replica(&all, "dora").await;
    assert_eq!(served(&b.decide(break_for("dora")).await), ["opera-tickets"]);
    a.listeners().forget_listener(pb::ForgetListenerRequest { listener_id: "dora".into() }).await.unwrap();
    let start = Instant::now();
    while served(&b.decide(break_for("dora")).await) == ["opera-tickets"] {
        assert!(start.elapsed() < TEST_TIMEOUT, "an erasure on one replica never reached another");
    }
    let mut reader = b.listeners();
    let gone = reader.get_listener(pb::GetListenerRequest { listener_id: "dora".into() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // A budget of 5 impressions, spent from three replicas at once, is spent exactly.
    let mut limited = campaign("five-ads", "shoes", 30);
    limited.targeting = Some(pb::Targeting { track_genres: vec!["jazz".into()], ..Default::default() });
    limited.budget = Some(pb::Budget { lifetime_budget_micros: 5 * 30_000, ..Default::default() });
    b.upsert([limited]).await;
    on_every_replica(&all, |r| r.state.catalog.snapshot().find("five-ads").is_some()).await;
    let mut tasks = Vec::new();
    for (n, r) in all.iter().enumerate() {
        let (decisions, replay_to) = (r.decisions(), all[(n + 1) % 3].decisions());
        tasks.push(tokio::spawn(async move {
            let (mut decisions, mut replay_to) = (decisions, replay_to);
            let mut served = 0;
            for i in 0..10 {
                let mut request = break_for(&format!("shopper-{n}-{i}"));
                request.context =
                    Some(pb::PlaybackContext { track_genres: vec!["jazz".into()], ..Default::default() });
                let decided = decisions.decide(request).await.unwrap().into_inner();
                let events: Vec<_> = decided
                    .ads
                    .iter()
                    .filter(|ad| ad.campaign_id == "five-ads")
                    .map(|ad| impression(&format!("s-{n}-{i}"), &ad.impression_token))
                    .collect();
                served += events.len();
                if !events.is_empty() {
                    replay_to.record_events(pb::RecordEventsRequest { events }).await.unwrap();
                }
            }
            served
        }));
    }
    let mut served_total = 0;
    for t in tasks {
        served_total += t.await.unwrap();
    }
    let stats = c.stats("five-ads").await;
    assert_eq!((served_total, stats.impressions, stats.spend_micros), (5, 5, 150_000), "no overspend");

    // Scripts gone from every node (as on a new master after a failover): loaded again.
    tokio::task::block_in_place(|| cluster.on_every_node(&["script", "flush"]));
    c.listener("cleo", |_| {}).await;
    c.plays("cleo", "", &[("opera", 20)]).await;
    stored_on_every_replica(&all, "cleo").await;
    let decided = b.decide(break_for("cleo")).await;
    assert_eq!(served(&decided), ["opera-tickets"]);
    let counted = record(&a, vec![impression("cleo-1", &decided.ads[0].impression_token)]).await.unwrap();
    assert_eq!(counted.outcomes().collect::<Vec<_>>(), [pb::EventOutcome::Accepted], "after SCRIPT FLUSH");
}

/// What the load of the failover test did.
#[derive(Default)]
struct Acked {
    /// (event id, token) of every impression acknowledged.
    events: Vec<(String, String)>,
    /// Refusals answered UNAVAILABLE, each retried until acknowledged.
    unavailable: usize,
}

/// Decides on one replica and reports the impression to the other, `n` times, for listeners
/// `worker-*`; retries each report until it is acknowledged, as a player does.
async fn report_impressions(replicas: [TestServer; 2], worker: usize, n: usize) -> (Acked, [TestServer; 2]) {
    let mut acked = Acked::default();
    for i in 0..n {
        let (decide_on, record_on) = (&replicas[i % 2], &replicas[(i + 1) % 2]);
        let mut request = break_for(&format!("listener-{worker}-{}", i % 10));
        request.context =
            Some(pb::PlaybackContext { track_genres: vec!["jazz".into()], ..Default::default() });
        let decided = match decide_on.decisions().decide(request).await {
            Ok(d) => d.into_inner(),
            Err(status) => panic!("Decide must keep answering through a failover: {status:?}"),
        };
        let Some(ad) = decided.ads.iter().find(|ad| ad.campaign_id == "jazz-ad") else { continue };
        let event = impression(&format!("e-{worker}-{i}"), &ad.impression_token);
        let start = Instant::now();
        loop {
            match record(record_on, vec![event.clone()]).await {
                Ok(_) => break,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    assert!(start.elapsed() < TEST_TIMEOUT, "not acknowledged within {TEST_TIMEOUT:?}");
                    acked.unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        acked.events.push((event.event_id.clone(), event.impression_token.clone()));
    }
    (acked, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_event_survives_the_kill_of_its_master() {
    let Some(mut cluster) = cluster("cluster::an_acknowledged_event_survives_the_kill_of_its_master") else {
        return;
    };
    let (a, b) = (replica(&cluster).await, replica(&cluster).await);
    let mut jazz = campaign("jazz-ad", "label", 10);
    jazz.targeting = Some(pb::Targeting { track_genres: vec!["jazz".into()], ..Default::default() });
    a.upsert([jazz]).await;
    on_every_replica(&[&a, &b], |r| r.state.catalog.snapshot().find("jazz-ad").is_some()).await;

    let (before, replicas) = report_impressions([a, b], 0, 40).await;
    // The master holding the campaign's counters and event dedupe: every event goes there.
    let master = cluster.master_of("{c:jazz-ad}:n");
    tokio::task::block_in_place(|| cluster.kill_9(master));
    let (during, replicas) = report_impressions(replicas, 1, 60).await;
    tokio::task::block_in_place(|| cluster.await_ok());
    let (after, [a, b]) = report_impressions(replicas, 2, 20).await;
    assert!(
        during.unavailable > 0,
        "the kill was felt (else this test proves nothing): {} refusals",
        during.unavailable
    );

    // Every acknowledged impression is counted, once: the total is exact, and a replay of
    // each is a retry (one lost with its master would count now as new).
    let acked: Vec<_> = [before, during, after].into_iter().flat_map(|r| r.events).collect();
    let stats = b.stats("jazz-ad").await;
    assert_eq!(stats.impressions, acked.len() as u64, "every acknowledged event counted once");
    for (id, token) in &acked {
        // Refusals (a replica slow to acknowledge) are retried, as a player does.
        let start = Instant::now();
        let replay = loop {
            match record(&a, vec![impression(id, token)]).await {
                Ok(r) => break r,
                Err(e) if e.code() == tonic::Code::Unavailable && start.elapsed() < TEST_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("replaying {id}: {e:?}"),
            }
        };
        assert_eq!(replay.outcomes().collect::<Vec<_>>(), [pb::EventOutcome::Retried], "event {id}");
    }
}

async fn shared_state_health(server: &TestServer) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let request = HealthCheckRequest { service: interlude::cluster::HEALTH_SERVICE.into() };
    HealthClient::new(server.channel.clone()).check(request).await.map_or(-1, |r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_shared_store_decisions_go_on_and_writes_are_refused() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let Some(mut cluster) =
        cluster("cluster::without_the_shared_store_decisions_go_on_and_writes_are_refused")
    else {
        return;
    };
    let a = replica(&cluster).await;
    let mut jazz = campaign("jazz-ad", "label", 10);
    jazz.targeting = Some(pb::Targeting { track_genres: vec!["jazz".into()], ..Default::default() });
    let mut limited = campaign("limited-ad", "shoes", 50);
    limited.targeting = jazz.targeting.clone();
    limited.budget = Some(pb::Budget { lifetime_budget_micros: 1_000_000, ..Default::default() });
    a.upsert([jazz, limited]).await;
    let jazz_break = |listener: &str| {
        let mut request = break_for(listener);
        request.context =
            Some(pb::PlaybackContext { track_genres: vec!["jazz".into()], ..Default::default() });
        request
    };
    assert_eq!(
        served(&a.decide(jazz_break("cleo")).await),
        ["limited-ad"],
        "the higher bid, while it can be held"
    );
    while shared_state_health(&a).await != ServingStatus::Serving as i32 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    tokio::task::block_in_place(|| cluster.kill_all());

    // Decisions go on, from this replica's copies; a limited budget cannot be held, so its ad
    // is not served (fail closed) and the unlimited one serves instead.
    let decided = a.decide(jazz_break("cleo")).await;
    assert_eq!(served(&decided), ["jazz-ad"], "{decided:?}");
    // What cannot be stored is not acknowledged.
    let refused = record(&a, vec![impression("cleo-1", &decided.ads[0].impression_token)]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let mut admin = a.campaigns();
    let refused = admin
        .upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(house_ad("house")) })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    // Health says so, beside the replica's own SERVING (it still decides).
    let start = Instant::now();
    while shared_state_health(&a).await != ServingStatus::NotServing as i32 {
        assert!(start.elapsed() < TEST_TIMEOUT, "health never reported the shared store gone");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let overall = HealthClient::new(a.channel.clone()).check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(overall.into_inner().status, ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_leaves_the_others_serving_and_its_budget_holds_come_back() {
    let Some(cluster) =
        cluster("cluster::a_killed_replica_leaves_the_others_serving_and_its_budget_holds_come_back")
    else {
        return;
    };
    let replica_binary = || {
        Binary::start([
            "--redis-nodes",
            &cluster.nodes_setting(),
            "--demo",
            "false",
            "--metrics-listen",
            "off",
            "--admin-token",
            ADMIN_TOKEN,
        ])
    };
    let (mut x, y, z) = (replica_binary(), replica_binary(), replica_binary());
    let client = |b: &Binary| {
        let addr = format!("http://{}", b.grpc);
        async move {
            let channel = tonic::transport::Endpoint::from_shared(addr).unwrap().connect().await.unwrap();
            (
                pb::ad_decision_service_client::AdDecisionServiceClient::new(channel.clone()),
                pb::campaign_service_client::CampaignServiceClient::with_interceptor(channel, admin()),
            )
        }
    };
    let (mut x_decide, mut x_admin) = client(&x).await;
    let (mut y_decide, _) = client(&y).await;
    let (mut z_decide, mut z_admin) = client(&z).await;
    let mut limited = campaign("ten-ads", "shoes", 30);
    limited.targeting = Some(pb::Targeting { track_genres: vec!["jazz".into()], ..Default::default() });
    limited.budget = Some(pb::Budget { lifetime_budget_micros: 10 * 30_000, ..Default::default() });
    x_admin.upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(limited) }).await.unwrap();
    let request = |listener: String| {
        let mut request = break_for(&listener);
        request.context =
            Some(pb::PlaybackContext { track_genres: vec!["jazz".into()], ..Default::default() });
        request
    };
    // X decides 6 ads (holding 6 of the 10 shares), then dies.
    let mut tokens = Vec::new();
    for i in 0..6 {
        let decided = x_decide.decide(request(format!("x-{i}"))).await.unwrap().into_inner();
        assert_eq!(served(&decided), ["ten-ads"]);
        tokens.push(decided.ads[0].impression_token.clone());
    }
    tokio::task::block_in_place(|| x.kill_9());
    // Its players report to the others: 3 heard (counted, their holds released), 3 not used
    // (their holds given back).
    let mut events = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let kind = if i < 3 { pb::EventType::Impression } else { pb::EventType::NotUsed };
        events.push(pb::AdEvent {
            event_id: format!("x-{i}"),
            r#type: kind as i32,
            impression_token: token.clone(),
            ..Default::default()
        });
    }
    y_decide.record_events(pb::RecordEventsRequest { events }).await.unwrap();
    // The other two replicas serve the 7 shares left, and not one more.
    let mut heard = 0;
    for i in 0..20 {
        let decisions = if i % 2 == 0 { &mut y_decide } else { &mut z_decide };
        let decided = decisions.decide(request(format!("yz-{i}"))).await.unwrap().into_inner();
        if let Some(ad) = decided.ads.iter().find(|ad| ad.campaign_id == "ten-ads") {
            let event = impression(&format!("yz-{i}"), &ad.impression_token);
            z_decide.record_events(pb::RecordEventsRequest { events: vec![event] }).await.unwrap();
            heard += 1;
        }
    }
    if heard != 7 {
        let mut probe = request("probe".into());
        probe.explain = true;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", y.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let explained =
            pb::ad_decision_service_client::AdDecisionServiceClient::with_interceptor(channel, admin())
                .decide(probe)
                .await;
        panic!("{heard} of the 7 shares left were served; a decision on Y now: {explained:?}");
    }
    let stats = z_admin
        .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: "ten-ads".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.impressions, stats.spend_micros), (10, 300_000));
}
