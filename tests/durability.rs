//! The embedded store: what was acknowledged is there after a restart (graceful or kill -9),
//! and what was forgotten stays forgotten.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use interlude::config::Config;
use interlude::grpc::pb;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("interlude-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn durable_config(dir: &Path) -> Config {
    let mut config = Config { demo: false, data_dir: Some(dir.to_path_buf()), ..Config::default() };
    // Tokens must verify across restarts.
    config.token_key = Some(hex_key());
    config
}

fn hex_key() -> Vec<u8> {
    (0..KEY.len()).step_by(2).map(|i| u8::from_str_radix(&KEY[i..i + 2], 16).unwrap()).collect()
}

fn capped_once(id: &str, advertiser: &str, genre: &str) -> pb::Campaign {
    let mut c = genre_campaign(id, advertiser, 10, &[genre]);
    c.frequency_caps =
        vec![pb::FrequencyCap { scope: pb::CapScope::Campaign as i32, max_impressions: 1, window: None }];
    c
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let dir = data_dir("restart");
    let server = start_server_with(durable_config(&dir)).await;
    server
        .upsert([capped_once("jazz-once", "a", "jazz"), genre_campaign("jazz-more", "b", 5, &["jazz"])])
        .await;
    server
        .campaigns()
        .pause_campaign(pb::PauseCampaignRequest { campaign_id: "jazz-more".into() })
        .await
        .unwrap();
    server
        .listener("nina", |l| {
            l.home =
                Some(pb::GeoLocation { country: "US".into(), region: "US-NY".into(), metro: "NYC".into() })
        })
        .await;
    server.plays("nina", "", &[("jazz", 25)]).await;
    server
        .listeners()
        .link_identity(pb::LinkIdentityRequest { listener_id: "nina".into(), alias: "email:n".into() })
        .await
        .unwrap();
    let first = server.decide(break_for("nina")).await;
    assert_eq!(served(&first), vec!["jazz-once"]);
    server.record_impressions(&first, "before").await;
    server.stop().await;

    let server = start_server_with(durable_config(&dir)).await;
    let campaign = server
        .campaigns()
        .get_campaign(pb::GetCampaignRequest { campaign_id: "jazz-more".into() })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(campaign.status(), pb::CampaignStatus::Paused);
    let listener = server
        .listeners()
        .get_listener(pb::GetListenerRequest { listener_id: "email:n".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(listener.listener_id, "nina");
    assert_eq!(listener.home.unwrap().metro, "NYC");
    assert_eq!(listener.members[0].genres[0].genre, "jazz");
    assert_eq!(listener.members[0].genres[0].lifetime_plays, 25);
    let stats = server
        .campaigns()
        .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: "jazz-once".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.impressions, 1);
    // The cap still holds, and a retried event still counts once.
    assert!(served(&server.decide(break_for("nina")).await).is_empty());
    let retry = pb::AdEvent {
        event_id: "before-0".into(),
        r#type: pb::EventType::Impression as i32,
        impression_token: first.ads[0].impression_token.clone(),
        occurred_at: None,
        ..Default::default()
    };
    let response =
        server.decisions().record_events(pb::RecordEventsRequest { events: vec![retry] }).await.unwrap();
    assert_eq!((response.get_ref().accepted, response.get_ref().duplicates), (0, 1));
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_forgotten_listener_is_gone_after_a_restart_too() {
    let dir = data_dir("forget");
    let server = start_server_with(durable_config(&dir)).await;
    server.upsert([capped_once("jazz-once", "a", "jazz")]).await;
    server.listener("leaving", |_| {}).await;
    server.plays("leaving", "", &[("jazz", 10)]).await;
    server
        .listeners()
        .link_identity(pb::LinkIdentityRequest { listener_id: "leaving".into(), alias: "device:9".into() })
        .await
        .unwrap();
    let heard = server.decide(break_for("leaving")).await;
    server.record_impressions(&heard, "heard").await;
    server
        .listeners()
        .forget_listener(pb::ForgetListenerRequest { listener_id: "device:9".into() })
        .await
        .unwrap();
    server.stop().await;

    let server = start_server_with(durable_config(&dir)).await;
    for id in ["leaving", "device:9"] {
        let status = server
            .listeners()
            .get_listener(pb::GetListenerRequest { listener_id: id.into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{id}");
    }
    assert!(server.state.delivery.histories_of(&"leaving".into()).is_empty(), "caps are erased too");
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts the binary on `dir`.
fn start_binary(dir: &Path) -> Binary {
    let dir = dir.to_str().unwrap();
    Binary::start([
        "--metrics-listen",
        "off",
        "--demo",
        "false",
        "--token-key",
        KEY,
        "--data-dir",
        dir,
        "--admin-token",
        ADMIN_TOKEN,
    ])
}

/// The impressions and spend the server reports for `campaign`.
async fn delivered(channel: tonic::transport::Channel, campaign: &str) -> (u64, i64) {
    let stats = pb::campaign_service_client::CampaignServiceClient::with_interceptor(channel, admin())
        .get_delivery_stats(pb::GetDeliveryStatsRequest { campaign_id: campaign.into() })
        .await
        .unwrap()
        .into_inner();
    (stats.impressions, stats.spend_micros)
}

/// What a crash test saw.
#[derive(Debug, Default)]
struct CrashReport {
    kills: usize,
    events: usize,
    acknowledged_before_last_kill: usize,
    /// Longest time from a restart's spawn to its first answered RPC.
    slowest_restart: std::time::Duration,
    integrity_checks: usize,
}

/// The crash test: `clients` concurrent clients send impressions in small batches while the
/// server is killed with SIGKILL after a random number of acknowledged batches, `kills` times;
/// after each restart the unacknowledged events are retried. Every acknowledged event must be
/// counted after every restart, the database must pass `PRAGMA integrity_check` after every
/// kill, and at the end every event counts exactly once with the exact spend.
async fn crash_test(events_n: usize, clients: usize, kills: usize, seed: u64) -> CrashReport {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let dir = data_dir(&format!("kill9-{seed}"));
    let mut server = start_binary(&dir);
    let channel = server.channel().await;
    let mut contextual = campaign("ctx", "adv", 10);
    contextual.targeting = Some(pb::Targeting { track_genres: vec!["pop".into()], ..Default::default() });
    pb::campaign_service_client::CampaignServiceClient::with_interceptor(channel.clone(), admin())
        .upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(contextual) })
        .await
        .unwrap();
    // Tokens for the impressions (anonymous listeners: nothing caps them, so all count).
    let mut decisions = pb::ad_decision_service_client::AdDecisionServiceClient::new(channel);
    let mut request = break_for("");
    request.context = Some(pb::PlaybackContext { track_genres: vec!["pop".into()], ..Default::default() });
    let mut events = Vec::new();
    for i in 0..events_n {
        let response = decisions.decide(request.clone()).await.unwrap().into_inner();
        events.push(pb::AdEvent {
            event_id: format!("ev-{i}"),
            r#type: pb::EventType::Impression as i32,
            impression_token: response.ads[0].impression_token.clone(),
            occurred_at: None,
            ..Default::default()
        });
    }

    let mut report = CrashReport { kills, events: events_n, ..CrashReport::default() };
    let mut acknowledged = std::collections::HashSet::new();
    // Kills are spread over the run: each comes within twice a fair share of the batches.
    let share = (events_n / 3 / kills.max(1)).max(1) * 2;
    for round in 0..=kills {
        let pending: Vec<pb::AdEvent> =
            events.iter().filter(|e| !acknowledged.contains(&e.event_id)).cloned().collect();
        let batches: Vec<Vec<pb::AdEvent>> = pending.chunks(3).map(<[_]>::to_vec).collect();
        let kill_after =
            if round < kills { rng.random_range(1..=batches.len().clamp(1, share)) } else { usize::MAX };
        // `clients` connections, each sending its share of the batches one after another and
        // reporting every acknowledged batch.
        let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
        for client in 0..clients {
            let mine: Vec<Vec<pb::AdEvent>> = batches.iter().skip(client).step_by(clients).cloned().collect();
            let mut client =
                pb::ad_decision_service_client::AdDecisionServiceClient::new(server.channel().await);
            let acked_tx = acked_tx.clone();
            tokio::spawn(async move {
                for batch in mine {
                    let ids: Vec<String> = batch.iter().map(|e| e.event_id.clone()).collect();
                    if client.record_events(pb::RecordEventsRequest { events: batch }).await.is_err() {
                        break; // the server is gone
                    }
                    let _ = acked_tx.send(ids);
                }
            });
        }
        drop(acked_tx);
        let mut acked_batches = 0;
        while let Some(ids) = acked_rx.recv().await {
            acknowledged.extend(ids);
            acked_batches += 1;
            if acked_batches == kill_after {
                server.kill_9(); // the other clients' batches are in flight
            }
        }
        server.kill_9();
        report.acknowledged_before_last_kill = acknowledged.len();
        let check: String = rusqlite::Connection::open(dir.join("interlude.sqlite3"))
            .unwrap()
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(check, "ok", "round {round}: integrity_check after kill -9");
        report.integrity_checks += 1;
        let restarted = tokio::time::Instant::now();
        server = start_binary(&dir);
        let (count, _) = delivered(server.channel().await, "ctx").await;
        report.slowest_restart = report.slowest_restart.max(restarted.elapsed());
        assert!(
            count >= acknowledged.len() as u64,
            "round {round}: {count} counted < {} acknowledged",
            acknowledged.len()
        );
        assert!(count <= events_n as u64, "round {round}: {count} counted > {events_n} sent");
    }
    // Retry everything: what was committed is a duplicate, the rest is accepted once.
    let mut client = pb::ad_decision_service_client::AdDecisionServiceClient::new(server.channel().await);
    let mut duplicates = 0;
    for chunk in events.chunks(20) {
        duplicates += client
            .record_events(pb::RecordEventsRequest { events: chunk.to_vec() })
            .await
            .unwrap()
            .into_inner()
            .duplicates;
    }
    assert!(u64::from(duplicates) >= acknowledged.len() as u64);
    let (count, spend) = delivered(server.channel().await, "ctx").await;
    assert_eq!(count, events_n as u64, "every event exactly once");
    assert_eq!(spend, events_n as i64 * 10_000, "CPM $10 = 10,000 micros an impression");
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
    report
}

#[tokio::test]
async fn every_acknowledged_event_counts_exactly_once_across_kill_9() {
    crash_test(90, 3, 3, 7).await;
}

/// The long crash test, run by `.ci/run` against the release build:
/// `cargo test --release --test durability -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by .ci/run in release"]
async fn crash_test_many_clients_random_kills() {
    for seed in 0..5 {
        crash_test(600, 8, 4, seed).await;
    }
}

/// The crash loop as a tool: minutes of kills. `CRASH_LOOP_KILLS` (default 100),
/// `CRASH_LOOP_EVENTS` (default 100,000) and `CRASH_LOOP_CLIENTS` (default 8):
/// `cargo test --release --test durability crash_loop -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a tool: minutes long (docs/RELIABILITY.md)"]
async fn crash_loop() {
    let var = |name: &str, default: usize| std::env::var(name).map_or(default, |v| v.parse().unwrap());
    let kills = var("CRASH_LOOP_KILLS", 100);
    let events = var("CRASH_LOOP_EVENTS", 100_000);
    let clients = var("CRASH_LOOP_CLIENTS", 8);
    let started = tokio::time::Instant::now();
    let report = crash_test(events, clients, kills, 2026).await;
    eprintln!(
        "crash loop: {} kills, {} events from {clients} clients, {} acknowledged; \
         0 lost, 0 doubled, spend exact; integrity_check ok {} times; slowest restart to first answer \
         {:.0} ms; {:.0} s in all",
        report.kills,
        report.events,
        report.acknowledged_before_last_kill,
        report.integrity_checks,
        report.slowest_restart.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64()
    );
}

async fn campaign_count(channel: tonic::transport::Channel) -> usize {
    let request = pb::ListCampaignsRequest { page_size: 100, ..Default::default() };
    let client = &mut pb::campaign_service_client::CampaignServiceClient::with_interceptor(channel, admin());
    client.list_campaigns(request).await.unwrap().into_inner().campaigns.len()
}

#[tokio::test]
async fn the_demo_seeds_a_fresh_store_once_and_the_store_is_the_truth_afterwards() {
    let dir = data_dir("demo");
    let args = |dir: &Path| {
        ["--metrics-listen", "off", "--data-dir", dir.to_str().unwrap(), "--admin-token", ADMIN_TOKEN]
            .map(String::from)
    };
    let server = Binary::start(args(&dir));
    let channel = server.channel().await;
    let listed = campaign_count(channel.clone()).await;
    assert!(listed > 20, "the demo catalog is served: {listed}");
    let mut listeners =
        pb::listener_service_client::ListenerServiceClient::with_interceptor(channel, admin());
    listeners
        .forget_listener(pb::ForgetListenerRequest { listener_id: "listener-opera".into() })
        .await
        .unwrap();
    drop(server); // kill -9: the acknowledged forget must hold

    let server = Binary::start(args(&dir));
    let channel = server.channel().await;
    let relisted = campaign_count(channel.clone()).await;
    assert_eq!(relisted, listed, "recovered, not re-seeded");
    let mut listeners =
        pb::listener_service_client::ListenerServiceClient::with_interceptor(channel, admin());
    let gone = listeners.get_listener(pb::GetListenerRequest { listener_id: "listener-opera".into() }).await;
    assert_eq!(
        gone.unwrap_err().code(),
        tonic::Code::NotFound,
        "the demo does not resurrect a forgotten listener"
    );
    let alias =
        listeners.get_listener(pb::GetListenerRequest { listener_id: "email-sha256:5f2b9c0e".into() }).await;
    assert_eq!(alias.unwrap_err().code(), tonic::Code::NotFound, "its alias is gone too");
    listeners.get_listener(pb::GetListenerRequest { listener_id: "listener-pop".into() }).await.unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_store_that_cannot_commit_refuses_writes_and_reports_not_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = data_dir("failstop");
    let server = start_server_with(durable_config(&dir)).await;
    server.upsert([genre_campaign("jazz", "a", 10, &["jazz"])]).await;
    let mut health = HealthClient::new(server.channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.message().await.unwrap().unwrap().status(), ServingStatus::Serving);

    // The disk goes bad under the server (here: its table disappears).
    rusqlite::Connection::open(dir.join("interlude.sqlite3"))
        .unwrap()
        .execute_batch("DROP TABLE campaigns")
        .unwrap();
    let status = server
        .campaigns()
        .upsert_campaign(pb::UpsertCampaignRequest { campaign: Some(house_ad("h")) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "not acknowledged: {status:?}");
    let next = tokio::time::timeout(TEST_TIMEOUT, health.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing, "out of rotation");
    // Every later write is refused too, so nothing unacknowledged can pass for a duplicate.
    let listener = pb::Listener { listener_id: "nina".into(), ..Default::default() };
    let status = server
        .listeners()
        .upsert_listener(pb::UpsertListenerRequest { listener: Some(listener) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    drop(health); // an open Watch stream would hold the drain for the whole grace period
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn profiles_beyond_the_cache_are_read_back_from_the_store() {
    let dir = data_dir("tiny-cache");
    // A cache of a few profiles: most decisions must load the listener from disk.
    let config = || Config { profile_cache_bytes: 2_000, ..durable_config(&dir) };
    let genre = |i: usize| if i.is_multiple_of(2) { "jazz" } else { "rock" };
    let expected = |i: usize| vec![format!("{}-ad", genre(i))];
    let server = start_server_with(config()).await;
    server
        .upsert([
            genre_campaign("jazz-ad", "a", 10, &["jazz"]),
            genre_campaign("rock-ad", "b", 10, &["rock"]),
        ])
        .await;
    for i in 0..40 {
        server.listener(&format!("l{i}"), |_| {}).await;
        server.plays(&format!("l{i}"), "", &[(genre(i), 20)]).await;
    }
    for i in 0..40 {
        assert_eq!(served(&server.decide(break_for(&format!("l{i}"))).await), expected(i), "listener {i}");
    }
    server.stop().await;

    // After a restart nothing is cached at all.
    let server = start_server_with(config()).await;
    for i in (0..40).rev() {
        assert_eq!(served(&server.decide(break_for(&format!("l{i}"))).await), expected(i), "listener {i}");
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The tables of a store written before schema versions (stop 15), as that release made them.
const UNVERSIONED_SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE genres (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE artists (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE campaigns (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE listeners (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE aliases (alias TEXT PRIMARY KEY, listener TEXT NOT NULL);
    CREATE INDEX aliases_by_listener ON aliases (listener);
    CREATE TABLE histories (listener TEXT NOT NULL, member TEXT NOT NULL, doc TEXT NOT NULL,
        PRIMARY KEY (listener, member));
    CREATE TABLE counters (campaign TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE events (id TEXT PRIMARY KEY, at INTEGER NOT NULL);
    CREATE INDEX events_by_time ON events (at);
    CREATE TABLE ad_events (ad BLOB NOT NULL, kind INTEGER NOT NULL, event_id TEXT NOT NULL,
        at INTEGER NOT NULL, PRIMARY KEY (ad, kind));
    CREATE INDEX ad_events_by_time ON ad_events (at);
";

#[tokio::test]
async fn a_data_directory_of_the_previous_format_opens_and_is_migrated() {
    let dir = data_dir("previous-format");
    std::fs::create_dir_all(&dir).unwrap();
    {
        let db = rusqlite::Connection::open(dir.join("interlude.sqlite3")).unwrap();
        db.execute_batch(UNVERSIONED_SCHEMA).unwrap();
        // A profile as the previous release wrote it: signals without valid_until, no member ages.
        let doc = r#"{"id":"old-timer","consent":"Granted","consent_at":1795435200000,
            "age_bracket":"Age25To34","home":{"country":"DE","region":"DE-BE","metro":"BER"},
            "language":"de","signals":[{"name":"student","asserted_at":1795435200000}],"members":[]}"#;
        db.execute("INSERT INTO listeners (id, doc) VALUES ('old-timer', ?1)", [doc]).unwrap();
        db.execute("INSERT INTO aliases (alias, listener) VALUES ('email:old', 'old-timer')", []).unwrap();
        db.execute("INSERT INTO genres (id, name) VALUES (0, 'jazz')", []).unwrap();
    }
    let server = start_server_with(durable_config(&dir)).await;
    let listener = server
        .listeners()
        .get_listener(pb::GetListenerRequest { listener_id: "email:old".into() })
        .await
        .unwrap()
        .into_inner()
        .listener
        .unwrap();
    assert_eq!(listener.listener_id, "old-timer");
    assert_eq!(listener.age_bracket(), pb::AgeBracket::AgeBracket2534);
    assert_eq!(listener.signals[0].signal, "student");
    assert_eq!(listener.signals[0].valid_until, None);
    // What this release added works on the old store: erasure is remembered in its new table.
    server
        .listeners()
        .forget_listener(pb::ForgetListenerRequest { listener_id: "old-timer".into() })
        .await
        .unwrap();
    server.stop().await;
    let db = rusqlite::Connection::open(dir.join("interlude.sqlite3")).unwrap();
    let version: i64 = db.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    assert_eq!(version, interlude::store::durable::SCHEMA_VERSION as i64);
    let erased: i64 = db.query_row("SELECT count(*) FROM erased", [], |row| row.get(0)).unwrap();
    assert_eq!(erased, 1);

    // A store from a newer release is refused with a clear error, not misread.
    db.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(db);
    let refused = interlude::app::AppState::open(&durable_config(&dir), interlude::grpc::now()).unwrap_err();
    assert!(refused.to_string().contains("newer Interlude"), "{refused}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn caps_hold_for_histories_evicted_from_the_cache_and_after_a_restart() {
    let dir = data_dir("tiny-history-cache");
    // Room for a few accounts' histories: most are evicted and read back from the store.
    let config = || Config { history_cache_bytes: 3_000, ..durable_config(&dir) };
    let server = start_server_with(config()).await;
    server
        .upsert([capped_once("jazz-once", "a", "jazz"), genre_campaign("jazz-more", "b", 5, &["jazz"])])
        .await;
    let listeners = 40;
    for i in 0..listeners {
        let id = format!("h{i}");
        server.listener(&id, |_| {}).await;
        server.plays(&id, "", &[("jazz", 20)]).await;
        let first = server.decide(break_for(&id)).await;
        assert_eq!(served(&first), ["jazz-once"], "listener {i}");
        server.record_impressions(&first, &format!("first-{i}")).await;
    }
    let resident = server.state.delivery.resident_histories();
    assert!(resident < listeners, "the cache holds {resident} of {listeners} accounts: nothing was evicted");
    let check = async |server: &TestServer, round: &str| {
        for i in 0..listeners {
            let decided = server.decide(break_for(&format!("h{i}"))).await;
            assert_eq!(served(&decided), ["jazz-more"], "{round}: listener {i} is capped");
        }
    };
    check(&server, "evicted").await;
    server.stop().await;
    // Histories are not read back at start: each is loaded when its listener comes back.
    let server = start_server_with(config()).await;
    assert_eq!(server.state.delivery.resident_histories(), 0);
    check(&server, "after a restart").await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_history_kept_as_appended_changes_counts_each_impression_once_after_restarts() {
    use interlude::store::histories::COMPACT_AFTER;
    let dir = data_dir("appended-history");
    let config = || {
        let mut config = durable_config(&dir);
        config.policy.max_ads_per_hour = 1_000;
        config
    };
    // More impressions than one run of appended rows: the history is stored whole once on the
    // way, then gets rows again.
    let cap = COMPACT_AFTER + 8;
    let mut capped = genre_campaign("jazz-capped", "a", 10, &["jazz"]);
    capped.frequency_caps =
        vec![pb::FrequencyCap { scope: pb::CapScope::Campaign as i32, max_impressions: cap, window: None }];
    let server = start_server_with(config()).await;
    server.upsert([capped]).await;
    server.listener("fan", |_| {}).await;
    server.plays("fan", "", &[("jazz", 20)]).await;
    let hear = async |server: &TestServer, i: u32| {
        let decided = server.decide(break_for("fan")).await;
        assert_eq!(served(&decided), ["jazz-capped"], "impression {i} of {cap}");
        server.record_impressions(&decided, &format!("heard-{i}")).await;
    };
    for i in 1..cap {
        hear(&server, i).await;
    }
    server.stop().await;
    let server = start_server_with(config()).await;
    // One short of the cap: a change replayed twice would cap it now.
    hear(&server, cap).await;
    server.stop().await;
    let server = start_server_with(config()).await;
    let decided = server.decide(break_for("fan")).await;
    assert!(served(&decided).is_empty(), "capped at {cap}: none lost; got {:?}", served(&decided));
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A profile source that holds the load of listener "slow" until the test releases it.
#[derive(Debug)]
struct Gate {
    store: std::sync::Arc<interlude::store::durable::StoreReader>,
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    released_by_the_test: std::sync::atomic::AtomicBool,
}

impl interlude::store::listeners::ProfileSource for Gate {
    fn load(
        &self,
        id: &str,
    ) -> Result<Option<interlude::domain::ListenerProfile>, interlude::store::StoreError> {
        if id == "slow" {
            self.entered.lock().unwrap().send(()).unwrap();
            // Bounded: a server that blocks its runtime on this read must fail the test, not hang it.
            let released = self.release.lock().unwrap().recv_timeout(Duration::from_secs(10)).is_ok();
            self.released_by_the_test.store(released, std::sync::atomic::Ordering::SeqCst);
        }
        interlude::store::listeners::ProfileSource::load(&*self.store, id)
    }
}

#[tokio::test]
async fn a_profile_read_from_the_store_does_not_stall_other_rpcs() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = data_dir("off-runtime");
    let mut config = durable_config(&dir);
    config.admin_token = Some(interlude::config::Secret(ADMIN_TOKEN.into()));
    let (mut state, _) = interlude::app::AppState::open(&config, interlude::grpc::now()).unwrap();
    let (entered_tx, entered) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let gate = std::sync::Arc::new(Gate {
        store: interlude::store::durable::Durable::reader(&dir),
        entered: std::sync::Mutex::new(entered_tx),
        release: std::sync::Mutex::new(release_rx),
        released_by_the_test: std::sync::atomic::AtomicBool::new(false),
    });
    state.listeners = interlude::store::Listeners::cached(gate.clone(), 1 << 20, 0);
    let server = serve_state(config, state).await;
    let mut decisions = server.decisions();
    let decided = tokio::spawn(async move { decisions.decide(break_for("slow")).await });
    tokio::task::spawn_blocking(move || entered.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the Decide reads the profile of \"slow\"");
    // While that read is held, the server's (current-thread) runtime still answers.
    let health = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health answers during the read");
    assert_eq!(health.get_ref().status, 1, "SERVING");
    release.send(()).unwrap();
    let response = decided.await.unwrap().expect("the Decide completes once the read does");
    assert!(
        gate.released_by_the_test.load(std::sync::atomic::Ordering::SeqCst),
        "the read was released by the test after health answered, not by its own timeout"
    );
    assert_eq!(response.get_ref().fill, pb::Fill::Empty as i32, "no campaigns, no house ad");
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn counted_event_ids_leave_the_store_while_it_serves_once_every_token_is_past() {
    let dir = data_dir("upkeep");
    let server = start_server_with(durable_config(&dir)).await;
    server.upsert([genre_campaign("jazz-ad", "a", 10, &["jazz"])]).await;
    server.listener("purged", |_| {}).await;
    server.plays("purged", "", &[("jazz", 20)]).await;
    let decided = server.decide(break_for("purged")).await;
    server.record_impressions(&decided, "purge").await;
    let rows = || {
        let db = rusqlite::Connection::open_with_flags(
            dir.join(interlude::store::durable::DB_FILE),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        db.query_row("SELECT count(*) FROM ad_events", [], |row| row.get::<_, i64>(0)).unwrap()
    };
    assert_eq!(rows(), 1, "the impression's event id is stored");
    let now = interlude::grpc::now();
    server.state.upkeep(now).await.unwrap();
    assert_eq!(rows(), 1, "a live token's event id stays");
    let window = server.state.dedupe_window.as_millis() as i64;
    server.state.upkeep(interlude::domain::UnixMillis(now.0 + window + 1_000)).await.unwrap();
    assert_eq!(rows(), 0, "purged while serving, not only at the next start");
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
