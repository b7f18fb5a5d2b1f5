//! HTTP/2 attacks through the real server, written as raw frames on a TCP socket (the `h2`
//! client is well-behaved by construction): server-provoked resets, a CONTINUATION flood, an
//! HPACK bomb, SETTINGS and PING floods, a thousand silent connections, and a gzip bomb. Each
//! test asserts that the server cuts the offender off and that a well-behaved client, connected
//! beside it, keeps getting health answers meanwhile.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use interlude::config::{Config, Limits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// GOAWAY / RST_STREAM error codes.
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn config(limits: impl FnOnce(&mut Limits)) -> Config {
    let mut config = Config { demo: false, data_dir: None, ..Config::default() };
    limits(&mut config.limits);
    config
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field; `index` = with incremental indexing (enters the dynamic table).
fn literal(name: &str, value: &[u8], index: bool, out: &mut Vec<u8>) {
    out.push(if index { 0x40 } else { 0x00 });
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

/// The header block of a health Check request.
fn health_request_block() -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal(name, value.as_bytes(), false, &mut block);
    }
    block
}

/// A raw connection that has sent the preface and an empty SETTINGS frame.
async fn raw(server: &TestServer) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    tcp.write_all(&hello).await.unwrap();
    tcp
}

/// What the server sent on a raw connection until it closed it.
#[derive(Debug, Default)]
struct Seen {
    resets: usize,
    goaway: Option<u32>,
    /// The GOAWAY's debug data.
    why: String,
    /// Response HEADERS frames (a request the server answered).
    responses: usize,
}

/// Reads frames until the server closes the connection (EOF or a reset socket) and returns what
/// it sent; fails the test if the server keeps it open past `TEST_TIMEOUT`.
async fn until_closed(mut tcp: impl tokio::io::AsyncRead + Unpin) -> Seen {
    let read_all = async move {
        let mut seen = Seen::default();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return seen,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while buf.len() >= 9 {
                let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let payload = &buf[9..9 + len];
                match buf[3] {
                    RST_STREAM => seen.resets += 1,
                    GOAWAY => {
                        seen.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                        seen.why = String::from_utf8_lossy(&payload[8..]).into_owned();
                    }
                    HEADERS => seen.responses += 1,
                    _ => {}
                }
                buf.drain(..9 + len);
            }
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, read_all).await.expect("the server kept the offending connection open")
}

type Health = HealthClient<tonic::transport::Channel>;

/// A well-behaved client beside the attack: its own connection, opened before it.
async fn bystander(server: &TestServer) -> Health {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    assert_healthy(&mut client).await;
    client
}

async fn assert_healthy(client: &mut Health) {
    let response =
        tokio::time::timeout(TEST_TIMEOUT, client.check(HealthCheckRequest { service: String::new() }))
            .await
            .expect("health answered in time")
            .unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
}

/// Runs `attack` on its own task while the bystander keeps checking health, then checks once
/// more. Returns the attack's output and how many checks were answered while it ran.
async fn beside<T: Send + 'static>(
    client: &mut Health,
    attack: impl std::future::Future<Output = T> + Send + 'static,
) -> (T, u32) {
    let mut attack = tokio::spawn(attack);
    let mut checks = 0;
    let output = loop {
        tokio::select! {
            output = &mut attack => break output.unwrap(),
            () = assert_healthy(client) => checks += 1,
        }
    };
    assert_healthy(client).await;
    (output, checks)
}

/// Floods `write` with `frames`, `times` times, until the server stops taking them; returns
/// how many went out whole.
async fn flood(mut write: impl tokio::io::AsyncWrite + Unpin, frames: Vec<u8>, times: usize) -> usize {
    for sent in 0..times {
        if write.write_all(&frames).await.is_err() {
            return sent;
        }
    }
    times
}

#[tokio::test]
async fn server_provoked_resets_end_in_goaway() {
    let server = start_server_with(config(|l| l.max_error_reset_streams = 200)).await;
    let mut client = bystander(&server).await;
    let tcp = raw(&server).await;
    let ((seen, sent), _) = beside(&mut client, async move {
        let (read, mut write) = tcp.into_split();
        let flood = tokio::spawn(async move {
            // Each stream: a malformed request (a connection-specific header, RFC 9113 8.2.2),
            // which the server must refuse with RST_STREAM(PROTOCOL_ERROR): a reset the
            // client provoked, and counted against it.
            let mut block = health_request_block();
            literal("connection", b"keep-alive", false, &mut block);
            for i in 0..5_000u32 {
                let stream = 2 * i + 1;
                let frames = frame(HEADERS, END_HEADERS | END_STREAM, stream, &block);
                if write.write_all(&frames).await.is_err() {
                    return i;
                }
            }
            5_000
        });
        let seen = until_closed(read).await;
        (seen, flood.await.unwrap())
    })
    .await;
    eprintln!("server-provoked resets: {seen:?} after {sent} streams");
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?} after {sent} streams");
    // h2 counts a refused request once or twice (refusal and reset), so the GOAWAY comes at
    // or before the limit; the default of 1024 lets a client provoke no more than that.
    assert!((1..=200).contains(&seen.resets), "cut off by the limit: {seen:?}");
    assert_eq!(seen.why, "too_many_internal_resets");
    server.stop().await;
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let server = start_server().await;
    let mut client = bystander(&server).await;
    let tcp = raw(&server).await;
    let ((seen, sent), _) = beside(&mut client, async move {
        let (read, mut write) = tcp.into_split();
        let flood = tokio::spawn(async move {
            // A request whose header block never ends: 1 KiB CONTINUATION frames of junk
            // headers, up to 64 MiB.
            write.write_all(&frame(HEADERS, 0, 1, &health_request_block())).await.unwrap();
            let mut junk = Vec::new();
            literal("x-junk", &[b'a'; 1000], false, &mut junk);
            flood(write, frame(CONTINUATION, 0, 1, &junk), 64 * 1024).await
        });
        let seen = until_closed(read).await;
        (seen, flood.await.unwrap())
    })
    .await;
    eprintln!("continuation flood: cut off after {sent} KiB: {seen:?}");
    assert!(sent < 64 * 1024, "the server read all 64 MiB of header block: {seen:?}");
    assert_eq!(seen.responses, 0, "the request was not served: {seen:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_hpack_bomb_is_refused_and_the_connection_cut() {
    let server = start_server().await;
    let mut client = bystander(&server).await;
    let tcp = raw(&server).await;
    let (seen, _) = beside(&mut client, async move {
        // One 4,000-byte header enters the dynamic table; 4,000 one-byte references to it
        // then decode to 16 MB of headers from a 4 KB block.
        let mut block = health_request_block();
        literal("x-bomb", &[b'b'; 4_000], true, &mut block);
        block.extend(std::iter::repeat_n(0x80 | 62, 4_000)); // indexed: the newest dynamic entry
        let (read, mut write) = tcp.into_split();
        let mut frames = Vec::new();
        for chunk in block.chunks(16_000).enumerate() {
            let (i, bytes) = chunk;
            let last = (i + 1) * 16_000 >= block.len();
            let (kind, flags) = if i == 0 { (HEADERS, END_STREAM) } else { (CONTINUATION, 0) };
            frames.extend(frame(kind, flags | if last { END_HEADERS } else { 0 }, 1, bytes));
        }
        let _ = write.write_all(&frames).await;
        until_closed(read).await
    })
    .await;
    eprintln!("hpack bomb: {seen:?}");
    assert!(
        seen.goaway.is_some() || seen.resets > 0,
        "the bomb was refused (RST_STREAM or GOAWAY), not decoded and served: {seen:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn settings_and_ping_floods_that_never_read_are_cut_off() {
    let server = start_server_with(config(|l| l.handshake_timeout = Duration::from_secs(1))).await;
    let mut client = bystander(&server).await;
    for (name, one) in [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])), // MAX_CONCURRENT_STREAMS 100
        ("PING", frame(PING, 0, 0, &[7; 8])),
    ] {
        let tcp = raw(&server).await;
        let (sent, checks) = beside(&mut client, async move {
            // Never reads: every ACK the server owes piles up on its side.
            let (_read, write) = tcp.into_split();
            let frames: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1_000).collect();
            tokio::time::timeout(TEST_TIMEOUT, flood(write, frames, 100_000))
                .await
                .expect("the flood was cut off in time")
        })
        .await;
        eprintln!("{name} flood: cut off after {sent}k frames, {checks} health checks answered meanwhile");
        assert!(sent < 100_000, "{name}: the server took a flood of 100M frames without reading");
        assert!(checks > 0, "{name}: health answered while the flood ran");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_silent_connections_are_closed_and_health_keeps_answering() {
    let server = start_server_with(config(|l| {
        l.max_connections = 300;
        l.handshake_timeout = Duration::from_secs(1);
    }))
    .await;
    let mut client = bystander(&server).await;
    let addr = server.addr;
    let (closed, checks) = beside(&mut client, async move {
        let mut silent = Vec::new();
        for _ in 0..1_200 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Over the limit: closed at once; the rest: when their handshake time is up.
        let mut closed = 0;
        for tcp in silent {
            until_closed(tcp).await;
            closed += 1;
        }
        closed
    })
    .await;
    eprintln!("silent connections: {closed} closed, {checks} health checks answered meanwhile");
    assert_eq!(closed, 1_200);
    assert!(checks > 0, "health answered while the silent connections were held");
    // A newcomer is served once the silent ones are gone.
    let mut newcomer = bystander(&server).await;
    assert_healthy(&mut newcomer).await;
    server.stop().await;
}

#[tokio::test]
async fn a_connection_with_no_rpc_in_flight_is_closed_after_the_idle_timeout() {
    let server = start_server_with(config(|l| {
        l.request_timeout = Duration::from_secs(1);
        l.idle_timeout = Duration::from_secs(1);
    }))
    .await;
    let mut tcp = raw(&server).await;
    let mut request = frame(HEADERS, END_HEADERS, 1, &health_request_block());
    request.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    tcp.write_all(&request).await.unwrap();
    // Keeps pinging: pings are not activity, so the idle connection is closed all the same.
    let (read, mut write) = tcp.into_split();
    let pinger = tokio::spawn(async move {
        while write.write_all(&frame(PING, 0, 0, &[1; 8])).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let seen = until_closed(read).await;
    assert!(seen.responses >= 1, "the request was answered before the connection went idle: {seen:?}");
    pinger.await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_gzip_bomb_is_refused_without_being_inflated() {
    use std::io::Write as _;
    let server = start_server().await;
    let mut client = bystander(&server).await;
    // 64 MiB of zeros, gzipped to ~64 KiB, as one compressed gRPC message.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..64 {
        gz.write_all(&[0u8; 1 << 20]).unwrap();
    }
    let bomb = gz.finish().unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", server.addr))
        .header("content-type", "application/grpc")
        .header("grpc-encoding", "gzip")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    let mut message = vec![1u8]; // compressed
    message.extend_from_slice(&(bomb.len() as u32).to_be_bytes());
    message.extend_from_slice(&bomb);
    body.send_data(message.into(), true).unwrap();
    let response = tokio::time::timeout(TEST_TIMEOUT, response).await.unwrap().unwrap();
    // tonic answers in the headers (a trailers-only response) or in the trailers.
    let status = match response.headers().get("grpc-status") {
        Some(status) => status.clone(),
        None => {
            let mut body = response.into_body();
            while body.data().await.is_some() {}
            body.trailers().await.unwrap().unwrap()["grpc-status"].clone()
        }
    };
    assert_eq!(
        status,
        (tonic::Code::Unimplemented as i32).to_string().as_str(),
        "compression is not accepted"
    );
    assert_healthy(&mut client).await;
    server.stop().await;
}

#[test]
fn the_frame_helpers_write_what_rfc_7541_says() {
    // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
    let mut out = Vec::new();
    hpack_int(0, 5, 1337, &mut out);
    assert_eq!(out, [31, 154, 10]);
    assert_eq!(frame(PING, 0, 0, &[1; 8])[..9], [0, 0, 8, PING, 0, 0, 0, 0, 0]);
}

/// Reads `tcp` until the server closes it (EOF or reset); returns what it sent first.
async fn until_http_closed(mut tcp: TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(TEST_TIMEOUT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn the_http_edge_closes_silent_slow_and_idle_connections_and_serves_tags_after() {
    let server = start_server_with(config(|l| {
        l.max_connections = 50;
        l.handshake_timeout = Duration::from_secs(1);
        l.idle_timeout = Duration::from_secs(1);
    }))
    .await;
    let addr = server.http_addr;
    // 200 silent sockets (150 over the cap) and a slowloris that never ends its headers.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /vast/4.2?listener_id=slow HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    held.push(slow);
    for tcp in held {
        until_http_closed(tcp).await;
    }
    // A keep-alive connection answered once, then idle: closed after the idle timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /vast/4.2 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let answered = until_http_closed(idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "answered before it went idle: {answered:.80}");
    // Once they are gone, a newcomer is served.
    let mut newcomer = TcpStream::connect(addr).await.unwrap();
    newcomer.write_all(b"GET /vast/4.2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let served = until_http_closed(newcomer).await;
    assert!(served.starts_with("HTTP/1.1 200") && served.contains("<VAST"), "{served:.200}");
    server.stop().await;
}
