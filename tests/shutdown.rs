//! Graceful shutdown: health turns NOT_SERVING, in-flight RPCs finish, then the server stops.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use interlude::config::Config;
use interlude::grpc::pb;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test]
async fn shutdown_reports_not_serving_and_drains_an_in_flight_stream() {
    let mut server = start_server_with(Config {
        demo: false,
        data_dir: None,
        shutdown_grace: Duration::from_secs(20),
        ..Config::default()
    })
    .await;

    // A client-streaming RecordPlays that stays open across the shutdown signal.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::RecordPlaysRequest>(4);
    let mut listeners = server.listeners();
    let in_flight =
        tokio::spawn(
            async move { listeners.record_plays(tokio_stream::wrappers::ReceiverStream::new(rx)).await },
        );
    let play = |i: i64| pb::PlayEvent {
        listener_id: "drained".into(),
        track_id: format!("t{i}"),
        genres: vec!["jazz".into()],
        played_at: Some(ts(interlude::grpc::now().0 - i * 1000)),
        seconds_played: 100,
        ..Default::default()
    };
    tx.send(pb::RecordPlaysRequest { plays: vec![play(1), play(2)] }).await.unwrap();

    // Watch health on a second connection.
    let watch_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(watch_channel);
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);

    server.trigger_shutdown();
    let status = tokio::time::timeout(TEST_TIMEOUT, watch.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(status.status(), ServingStatus::NotServing);
    drop(watch);

    // Shutdown has begun; the open stream still completes, with every play counted.
    tx.send(pb::RecordPlaysRequest { plays: vec![play(3)] }).await.unwrap();
    drop(tx);
    let response =
        tokio::time::timeout(TEST_TIMEOUT, in_flight).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(response.accepted, 3);
    assert_eq!(response.rejected, 0);

    let addr = server.addr;
    tokio::time::timeout(TEST_TIMEOUT, server.stop()).await.unwrap();
    let refused = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
    assert!(refused.is_err(), "a stopped server accepts no connections");
}

#[tokio::test]
async fn the_grace_period_bounds_the_drain() {
    let server = start_server_with(Config {
        demo: false,
        data_dir: None,
        shutdown_grace: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    // A Watch stream never ends by itself: only the grace period can end the drain.
    let mut health = HealthClient::new(server.channel.clone());
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    tokio::time::timeout(TEST_TIMEOUT, server.stop())
        .await
        .expect("stop returns once the grace period is over");
}
