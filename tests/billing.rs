//! Billing integrity through the real server: each kind of event counts once per decided ad,
//! whatever its event id (a replayed token bills nothing), across restarts; and an erasure
//! leaves no byte of the listener in any file of the data directory.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::path::{Path, PathBuf};

use common::*;
use interlude::config::Config;
use interlude::grpc::pb;

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("interlude-billing-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn durable_config(dir: &Path) -> Config {
    let mut config = Config { demo: false, data_dir: Some(dir.to_path_buf()), ..Config::default() };
    config.token_key =
        Some((0..KEY.len()).step_by(2).map(|i| u8::from_str_radix(&KEY[i..i + 2], 16).unwrap()).collect());
    config
}

fn event(id: &str, kind: pb::EventType, token: &str) -> pb::AdEvent {
    pb::AdEvent {
        event_id: id.into(),
        r#type: kind as i32,
        impression_token: token.into(),
        occurred_at: None,
        ..Default::default()
    }
}

async fn record(server: &TestServer, events: Vec<pb::AdEvent>) -> pb::RecordEventsResponse {
    server.decisions().record_events(pb::RecordEventsRequest { events }).await.unwrap().into_inner()
}

fn outcomes_of(response: &pb::RecordEventsResponse) -> Vec<pb::EventOutcome> {
    response.outcomes().collect()
}

/// One jazz ad for `listener`: its token.
async fn jazz_ad(server: &TestServer, listener: &str) -> pb::DecidedAd {
    let mut request = break_for(listener);
    request.context = Some(pb::PlaybackContext { track_genres: vec!["jazz".into()], ..Default::default() });
    let response = server.decide(request).await;
    assert_eq!(served(&response), ["jazz-ad"], "{response:?}");
    response.ads[0].clone()
}

fn jazz_campaign() -> pb::Campaign {
    let mut c = campaign("jazz-ad", "label", 10);
    c.targeting = Some(pb::Targeting { track_genres: vec!["jazz".into()], ..Default::default() });
    c
}

#[tokio::test]
async fn a_replayed_token_bills_one_impression_whatever_its_event_ids() {
    let server = start_server().await;
    server.upsert([jazz_campaign()]).await;
    let ad = jazz_ad(&server, "listener-jazz").await;
    assert_eq!(ad.ad_id.len(), 32, "a 128-bit id in hex: {}", ad.ad_id);

    let mut outcomes = Vec::new();
    for i in 1..=5 {
        let response = record(
            &server,
            vec![event(&format!("replay-{i}"), pb::EventType::Impression, &ad.impression_token)],
        )
        .await;
        outcomes.push((response.accepted, response.duplicates, outcomes_of(&response)));
    }
    assert_eq!(outcomes[0], (1, 0, vec![pb::EventOutcome::Accepted]));
    for replay in &outcomes[1..] {
        assert_eq!(*replay, (0, 1, vec![pb::EventOutcome::AlreadyCounted]), "{outcomes:?}");
    }
    // The caller's own retry is told apart from a replay.
    let retry =
        record(&server, vec![event("replay-1", pb::EventType::Impression, &ad.impression_token)]).await;
    assert_eq!(outcomes_of(&retry), [pb::EventOutcome::Retried]);

    let stats = server.stats("jazz-ad").await;
    assert_eq!((stats.impressions, stats.spend_micros), (1, 10_000), "one impression at CPM $10");
    server.stop().await;
}

#[tokio::test]
async fn each_event_type_counts_once_per_ad_within_one_batch_too() {
    let server = start_server().await;
    server.upsert([jazz_campaign()]).await;
    let ad = jazz_ad(&server, "listener-jazz").await;
    let t = &ad.impression_token;
    let response = record(
        &server,
        vec![
            event("a", pb::EventType::Impression, t),
            event("b", pb::EventType::Impression, t),
            event("c", pb::EventType::Complete, t),
            event("d", pb::EventType::Complete, t),
            event("e", pb::EventType::Click, t),
        ],
    )
    .await;
    use pb::EventOutcome::{Accepted, AlreadyCounted};
    assert_eq!(outcomes_of(&response), [Accepted, AlreadyCounted, Accepted, AlreadyCounted, Accepted]);
    assert_eq!((response.accepted, response.duplicates), (3, 2));
    let stats = server.stats("jazz-ad").await;
    assert_eq!((stats.impressions, stats.completes, stats.clicks), (1, 1, 1));
    server.stop().await;
}

#[tokio::test]
async fn two_players_may_use_the_same_event_id_for_their_own_ads() {
    let server = start_server().await;
    server.upsert([jazz_campaign()]).await;
    let first = jazz_ad(&server, "listener-a").await;
    let second = jazz_ad(&server, "listener-b").await;
    assert_ne!(first.ad_id, second.ad_id);
    for ad in [&first, &second] {
        let response =
            record(&server, vec![event("ev-1", pb::EventType::Impression, &ad.impression_token)]).await;
        assert_eq!(outcomes_of(&response), [pb::EventOutcome::Accepted], "{}", ad.ad_id);
    }
    assert_eq!(server.stats("jazz-ad").await.impressions, 2, "two real impressions, both counted");
    server.stop().await;
}

#[tokio::test]
async fn once_per_ad_holds_across_a_restart() {
    let dir = data_dir("restart");
    let server = start_server_with(durable_config(&dir)).await;
    server.upsert([jazz_campaign()]).await;
    let ad = jazz_ad(&server, "listener-jazz").await;
    let first = record(&server, vec![event("first", pb::EventType::Impression, &ad.impression_token)]).await;
    assert_eq!(first.accepted, 1);
    server.stop().await;

    let server = start_server_with(durable_config(&dir)).await;
    let replay = record(&server, vec![event("again", pb::EventType::Impression, &ad.impression_token)]).await;
    assert_eq!(outcomes_of(&replay), [pb::EventOutcome::AlreadyCounted]);
    let retry = record(&server, vec![event("first", pb::EventType::Impression, &ad.impression_token)]).await;
    assert_eq!(outcomes_of(&retry), [pb::EventOutcome::Retried]);
    let stats = server.stats("jazz-ad").await;
    assert_eq!((stats.impressions, stats.spend_micros), (1, 10_000));
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Every occurrence of `needle` in the files of `dir` (file name and offset).
fn occurrences(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // The WAL and its index go away when the last connection closes.
        let Ok(bytes) = std::fs::read(&path) else { continue };
        for (offset, window) in bytes.windows(needle.len()).enumerate() {
            if window == needle {
                found.push(format!("{}@{offset}", path.display()));
            }
        }
    }
    found
}

#[tokio::test]
async fn after_forget_listener_no_byte_of_the_listener_remains_in_the_data_directory() {
    let dir = data_dir("erasure");
    let server = start_server_with(durable_config(&dir)).await;
    server.upsert([jazz_campaign()]).await;
    let unique = "listener-erasure-7f3a9c";
    let alias = "email-sha256:e1a5e1a5e1a5";
    let home = "QZXWV7K";
    server
        .listener(unique, |l| {
            l.home =
                Some(pb::GeoLocation { country: "DE".into(), region: "DE-BY".into(), metro: home.into() })
        })
        .await;
    // Rewritten several times, so that older versions of the row were in the WAL and pages.
    for _ in 0..3 {
        server.plays(unique, "", &[("jazz", 20)]).await;
    }
    server
        .listeners()
        .link_identity(pb::LinkIdentityRequest { listener_id: unique.into(), alias: alias.into() })
        .await
        .unwrap();
    let ad = jazz_ad(&server, unique).await;
    record(&server, vec![event("heard", pb::EventType::Impression, &ad.impression_token)]).await;
    // A neighbour stays, so the pages are not simply all freed.
    server.listener("listener-stays", |_| {}).await;
    for needle in [unique, alias, home] {
        assert!(!occurrences(&dir, needle.as_bytes()).is_empty(), "{needle} was written before the erasure");
    }

    server
        .listeners()
        .forget_listener(pb::ForgetListenerRequest { listener_id: alias.into() })
        .await
        .unwrap();
    // Acknowledged means on disk: checked while the server still runs, then after it stopped.
    for needle in [unique, alias, home] {
        assert_eq!(
            occurrences(&dir, needle.as_bytes()),
            Vec::<String>::new(),
            "{needle} after ForgetListener"
        );
    }
    server.stop().await;
    for needle in [unique, alias, home] {
        assert_eq!(occurrences(&dir, needle.as_bytes()), Vec::<String>::new(), "{needle} after shutdown");
    }
    assert!(!occurrences(&dir, b"listener-stays").is_empty(), "the neighbour is kept");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_event_dated_ahead_of_the_server_clock_is_accounted_at_the_server_clock() {
    let dir = data_dir("clock-ahead");
    let server = start_server_with(durable_config(&dir)).await;
    server.upsert([genre_campaign("jazz-ad", "label", 10, &["jazz"])]).await;
    let ad = jazz_ad(&server, "early-bird").await;
    let ahead = interlude::grpc::now().0 + 4 * 60_000;
    let mut impression = event("ev-ahead", pb::EventType::Impression, &ad.impression_token);
    impression.occurred_at = Some(ts(ahead));
    record(&server, vec![impression]).await;
    let after = interlude::grpc::now().0;
    let db = rusqlite::Connection::open(dir.join("interlude.sqlite3")).unwrap();
    let at: i64 = db.query_row("SELECT at FROM ad_events", [], |row| row.get(0)).unwrap();
    assert!(at <= after, "stored at {at}, {} ms ahead of the server", at - after);
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_event_after_an_erasure_bills_but_does_not_bring_the_listener_back() {
    let dir = data_dir("erased-event");
    let server = start_server_with(durable_config(&dir)).await;
    server.upsert([jazz_campaign()]).await;
    let unique = "listener-gone-5b2e81";
    server.listener(unique, |_| {}).await;
    server.plays(unique, "", &[("jazz", 20)]).await;
    // Decided before the erasure; played (and reported) after it.
    let ad = jazz_ad(&server, unique).await;
    let forget = pb::ForgetListenerRequest { listener_id: unique.into() };
    server.listeners().forget_listener(forget).await.unwrap();
    let response =
        record(&server, vec![event("heard", pb::EventType::Impression, &ad.impression_token)]).await;
    assert_eq!(outcomes_of(&response), vec![pb::EventOutcome::Accepted], "the advertiser is billed");
    assert_eq!(server.stats(&ad.campaign_id).await.impressions, 1);
    server.stop().await;
    assert_eq!(occurrences(&dir, unique.as_bytes()), Vec::<String>::new(), "no history came back");

    // After a restart the erasure is still known: a later event of the same ad keeps nothing.
    let server = start_server_with(durable_config(&dir)).await;
    record(&server, vec![event("done", pb::EventType::Complete, &ad.impression_token)]).await;
    server.stop().await;
    assert_eq!(occurrences(&dir, unique.as_bytes()), Vec::<String>::new(), "nor after a restart");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_event_is_rejected_on_its_own_and_the_rest_of_its_batch_lands() {
    let server = start_server().await;
    let rock = |creative: &str| {
        let mut c = campaign("rock-ad", "riffs", 10);
        c.targeting = Some(pb::Targeting { track_genres: vec!["rock".into()], ..Default::default() });
        c.creatives[0].creative_id = creative.into();
        c
    };
    server.upsert([jazz_campaign(), rock("first-cut")]).await;
    let good = jazz_ad(&server, "player-a").await;
    let mut request = break_for("player-b");
    request.context = Some(pb::PlaybackContext { track_genres: vec!["rock".into()], ..Default::default() });
    let doomed = server.decide(request).await.ads.remove(0);
    assert_eq!(doomed.campaign_id, "rock-ad");
    // The advertiser replaces the creative the rock ad was decided with.
    server.upsert([rock("second-cut")]).await;

    let batch = vec![
        event("good", pb::EventType::Impression, &good.impression_token),
        event("doomed", pb::EventType::Impression, &doomed.impression_token),
        event("forged", pb::EventType::Impression, "not-a-token"),
    ];
    let first = record(&server, batch.clone()).await;
    use pb::EventOutcome::{Accepted, Rejected, Retried};
    assert_eq!(outcomes_of(&first), vec![Accepted, Rejected, Rejected]);
    let fields: Vec<(u32, &str)> = first.rejections.iter().map(|r| (r.index, r.field.as_str())).collect();
    assert_eq!(fields, vec![(1, "events[1].impression_token"), (2, "events[2].impression_token")]);
    assert!(first.rejections[0].reason.contains("creative"), "{:?}", first.rejections);
    // The retry of the whole batch: the good one is a retry, the bad ones stay rejected.
    let retry = record(&server, batch).await;
    assert_eq!(outcomes_of(&retry), vec![Retried, Rejected, Rejected]);
    // A batch with nothing valid is refused as a whole, naming the field.
    let status = server
        .decisions()
        .record_events(pb::RecordEventsRequest {
            events: vec![event("x", pb::EventType::Impression, "nope")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}
