//! Transport limits through the real server: oversized messages, load shedding instead of
//! queueing, and request timeouts — after each, the server still answers.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use interlude::config::{Config, Limits};
use interlude::grpc::pb;
use tonic::Code;

fn config(limits: impl FnOnce(&mut Limits)) -> Config {
    let mut config = Config { demo: false, data_dir: None, ..Config::default() };
    limits(&mut config.limits);
    config
}

fn play(listener: &str) -> pb::PlayEvent {
    pb::PlayEvent {
        listener_id: listener.into(),
        track_id: "t".into(),
        genres: vec!["jazz".into()],
        played_at: Some(ts(interlude::grpc::now().0)),
        seconds_played: 100,
        ..Default::default()
    }
}

async fn still_serving(server: &TestServer) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    server.decide(break_for("anyone")).await;
}

/// Opens a RecordPlays stream and waits until the server has applied its first chunk, so the
/// RPC is known to be in flight. Returns the sender that keeps it open, and the call.
async fn open_stream(
    server: &TestServer,
    listener: &str,
    timeout: Option<Duration>,
) -> (
    tokio::sync::mpsc::Sender<pb::RecordPlaysRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::RecordPlaysResponse>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::RecordPlaysRequest { plays: vec![play(listener)] }).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    let mut client = server.listeners();
    let call = tokio::spawn(async move { client.record_plays(request).await });
    let state = server.state.clone();
    let listener = listener.to_string();
    tokio::time::timeout(TEST_TIMEOUT, async move {
        while state.listeners.get(&listener).unwrap().is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first chunk is applied");
    (tx, call)
}

/// A Decide on a raw HTTP/2 connection of its own whose message is only partly sent: admitted
/// and in flight until `rest` is sent. Returns the response, the body stream and the rest.
async fn half_sent_decide(
    server: &TestServer,
    listener: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>, Vec<u8>) {
    use prost::Message as _;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let request =
        http::Request::post(format!("http://{}/interlude.v1.AdDecisionService/Decide", server.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    let message = break_for(listener).encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let rest = framed.split_off(6);
    body.send_data(framed.into(), false).unwrap();
    (response, body, rest)
}

/// The grpc-status of a raw response, in its headers (trailers-only) or its trailers.
async fn grpc_status_of(response: http::Response<h2::RecvStream>) -> String {
    match response.headers().get("grpc-status") {
        Some(status) => status.to_str().unwrap().to_owned(),
        None => {
            let mut body = response.into_body();
            while body.data().await.is_some() {}
            body.trailers().await.unwrap().unwrap()["grpc-status"].to_str().unwrap().to_owned()
        }
    }
}

#[tokio::test]
async fn an_oversized_message_is_refused_and_the_server_stays_up() {
    let server = start_server_with(config(|l| l.max_message_bytes = 16 * 1024)).await;
    let plays: Vec<pb::PlayEvent> = (0..1000).map(|_| play("big")).collect();
    assert!(prost::Message::encoded_len(&pb::RecordPlaysRequest { plays: plays.clone() }) > 16 * 1024);
    let status = server
        .listeners()
        .record_plays(tokio_stream::iter(vec![pb::RecordPlaysRequest { plays }]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{}", status.message());
    assert!(server.state.listeners.get("big").unwrap().is_none(), "nothing of it was applied");
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn overload_is_shed_with_resource_exhausted_not_queued() {
    let server = start_server_with(config(|l| l.max_in_flight_per_connection = 1)).await;
    let (tx, call) = open_stream(&server, "busy", None).await;

    // The one in-flight slot of this connection is taken: the next RPC is refused at once.
    let status = server.decisions().decide(break_for("anyone")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    drop(tx);
    let response = call.await.unwrap().unwrap().into_inner();
    assert_eq!(response.accepted, 1);
    server.decide(break_for("anyone")).await;
    server.stop().await;
}

#[tokio::test]
async fn an_idle_play_stream_is_ended_by_its_idle_timeout() {
    let server = start_server_with(config(|l| l.stream_idle_timeout = Duration::from_millis(300))).await;
    // No client deadline: only the server's limit can end this silent stream.
    let (tx, call) = open_stream(&server, "silent", None).await;
    let status =
        tokio::time::timeout(TEST_TIMEOUT, call).await.expect("ended by the server").unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("stream_idle_timeout_secs"), "{}", status.message());
    drop(tx);
    // The chunk before the silence was counted.
    assert!(server.state.listeners.get("silent").unwrap().is_some());
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_play_stream_that_keeps_sending_outlives_the_request_timeout() {
    let server = start_server_with(config(|l| {
        l.request_timeout = Duration::from_millis(300);
        l.stream_idle_timeout = Duration::from_secs(10);
    }))
    .await;
    let (tx, call) = open_stream(&server, "steady", None).await;
    // Eight more chunks, 100 ms apart: the stream lasts well past the unary request timeout.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(pb::RecordPlaysRequest { plays: vec![play("steady")] }).await.unwrap();
    }
    drop(tx);
    let response = tokio::time::timeout(TEST_TIMEOUT, call).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(response.accepted, 9);
    server.stop().await;
}

#[tokio::test]
async fn a_unary_call_past_the_request_timeout_is_ended_with_deadline_exceeded() {
    let server = start_server_with(config(|l| l.request_timeout = Duration::from_millis(300))).await;
    // A Decide whose message never completes: only the server's deadline can end it.
    let (response, _body, _rest) = half_sent_decide(&server, "stalled").await;
    let response = tokio::time::timeout(TEST_TIMEOUT, response).await.expect("answered").unwrap();
    let status = grpc_status_of(response).await;
    assert_eq!(status, (Code::DeadlineExceeded as i32).to_string());
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_deadline_is_honoured() {
    let server = start_server().await;
    let (tx, call) = open_stream(&server, "impatient", Some(Duration::from_millis(200))).await;
    let status =
        tokio::time::timeout(TEST_TIMEOUT, call).await.expect("ended by the deadline").unwrap().unwrap_err();
    assert!(matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded), "{status:?}");
    drop(tx);
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_rapid_reset_flood_is_cut_off_and_health_keeps_answering() {
    let server = start_server().await;
    // A raw HTTP/2 connection that opens Decide streams and cancels each at once (CVE-2023-44487).
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut flood, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut sent = 0;
    for _ in 0..20_000 {
        let request =
            http::Request::post(format!("http://{}/interlude.v1.AdDecisionService/Decide", server.addr))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
        let ready = match flood.ready().await {
            Ok(ready) => ready,
            Err(_) => break, // the server hung up on us
        };
        flood = ready;
        match flood.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        sent += 1;
        // Let the connection task write the frames and read the server's answer.
        tokio::task::yield_now().await;
    }
    // The server answers the flood with GOAWAY, closing that connection…
    let ended = tokio::time::timeout(TEST_TIMEOUT, connection).await.expect("the flooding connection ends");
    assert!((1..20_000).contains(&sent), "the server stopped the flood after {sent} resets");
    eprintln!("rapid reset: cut off after {sent} resets");
    let error = ended.unwrap().expect_err("closed with an error");
    assert!(error.is_go_away() || error.is_io() || error.is_remote(), "{error:?}");
    // …while everyone else is served.
    still_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn past_the_server_wide_bound_decision_calls_are_shed_on_every_connection_but_health_is_not() {
    let server = start_server_with(config(|l| l.max_in_flight = 1)).await;
    // On a connection of its own, a Decide whose message has not fully arrived: admitted and in
    // flight, it holds the one place until the rest comes.
    let (response, mut body, rest) = half_sent_decide(&server, "slow-player").await;

    // Another connection's Decide is refused once that call is admitted (until then it is
    // served: the test waits for the refusal, not for a time).
    let refused = tokio::time::timeout(TEST_TIMEOUT, async {
        loop {
            match server.decisions().decide(break_for("anyone")).await {
                Err(status) => break status,
                Ok(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("shed while the slow call holds the place");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("overloaded"), "{}", refused.message());
    // Health is not counted: a busy server must not look dead to its load balancer.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();

    // The slow call completes and gives its place back.
    body.send_data(rest.into(), true).unwrap();
    let response = tokio::time::timeout(TEST_TIMEOUT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(grpc_status_of(response).await, "0", "the slow call was served");
    still_serving(&server).await;
    server.stop().await;
}
