//! Black-box tests of the `interlude` binary: config errors, serving, /metrics and SIGTERM.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::*;
use interlude::grpc::pb;

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TEST_TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test]
async fn serves_the_demo_exports_metrics_and_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("interlude-binary-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let running = Binary::start([
        "--metrics-listen",
        "127.0.0.1:0",
        "--log",
        "info",
        "--data-dir",
        dir.to_str().unwrap(),
        "--admin-token",
        ADMIN_TOKEN,
    ]);
    let channel = running.channel().await;
    let mut client = pb::ad_decision_service_client::AdDecisionServiceClient::new(channel);
    let mut request = break_for("listener-opera");
    request.context = Some(pb::PlaybackContext { track_genres: vec!["opera".into()], ..Default::default() });
    let response = client.decide(request).await.unwrap().into_inner();
    assert_eq!(response.fill(), pb::Fill::Paid, "the demo catalog serves a paid ad");
    let status = client.decide(break_for("bad id")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The allocator's settings reached the process (src/allocator.rs): no transparent huge pages.
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        let proc_status = std::fs::read_to_string(format!("/proc/{}/status", running.child.id())).unwrap();
        assert!(proc_status.contains("THP_enabled:\t0"), "{proc_status}");
    }

    let metrics = http_get(&running.metrics, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(r#"interlude_rpc_requests_total{rpc="Decide",grpc_status="OK"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"interlude_rpc_requests_total{rpc="Decide",grpc_status="INVALID_ARGUMENT"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("interlude_decisions_total"), "{metrics}");
    // The standard process metrics, which the load harness reads for the server's CPU per request.
    assert!(metrics.contains("process_cpu_seconds_total"), "{metrics}");
    // The demo was committed to the fresh store at start.
    assert!(metrics.contains(r#"interlude_store_commits_total{result="ok"}"#), "{metrics}");
    assert!(metrics.contains("interlude_store_commit_duration_seconds_bucket"), "{metrics}");
    assert!(http_get(&running.metrics, "/other").starts_with("HTTP/1.1 404"));

    let killed = Command::new("kill").args(["-TERM", &running.child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    // Wait off the runtime: blocking it would stop the client from answering the server's GOAWAY,
    // and the drain would last the whole grace period.
    let (status, running) = tokio::task::spawn_blocking(move || {
        let mut running = running;
        (running.child.wait(), running)
    })
    .await
    .unwrap();
    let status = status.unwrap();
    assert!(status.success(), "exits cleanly on SIGTERM: {status:?}");
    let log: Vec<String> = running.log.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("NOT_SERVING")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("server stopped")), "{log:?}");
    assert!(
        !log.iter().any(|l| l.contains("grace period over")),
        "idle connections do not hold the drain: {log:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_config_exits_64_naming_the_setting_before_binding() {
    let output = Command::new(env!("CARGO_BIN_EXE_interlude"))
        .args(["--relevance-floor", "1.5", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("relevance_floor"), "{stderr}");
    assert!(!stderr.contains("serving"), "{stderr}");
}

#[tokio::test]
async fn out_of_file_descriptors_the_listener_backs_off_and_serves_again() {
    // 64 descriptors: the runtime and listener take a handful, so accepts fail with EMFILE
    // after some fifty connections.
    let server = Binary::start_with_file_limit(
        64,
        [
            "--metrics-listen",
            "off",
            "--demo",
            "false",
            "--data-dir",
            "off",
            "--admin-token",
            ADMIN_TOKEN,
            "--handshake-timeout-secs",
            "1",
        ],
    );
    let held: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(&server.grpc).unwrap()).collect();
    let mut lines = 0;
    let backed_off = loop {
        let line = server.log.recv_timeout(TEST_TIMEOUT).expect("the server says accept failed");
        lines += 1;
        if line.contains("accept failed; backing off") {
            break line;
        }
    };
    assert!(backed_off.contains("Too many open files"), "{backed_off}");
    drop(held);
    // The silent connections it holds are closed at their handshake timeout; then it serves.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = tokio::time::timeout(
        TEST_TIMEOUT,
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }),
    )
    .await
    .expect("serving again in time")
    .unwrap();
    assert_eq!(status.into_inner().status(), tonic_health::pb::health_check_response::ServingStatus::Serving);
    // A backoff, not a spin: a handful of warnings, not one per failed accept in a tight loop.
    let warnings = lines + server.log.try_iter().filter(|l| l.contains("accept failed")).count();
    assert!(warnings < 100, "{warnings} warnings");
}

fn data_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("interlude-binary-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary on `dir` until it exits, returning its status and stderr.
fn run_on(dir: &std::path::Path) -> (std::process::ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_interlude"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_corrupt_or_truncated_database_exits_65_naming_the_file() {
    let garbage = data_dir("garbage");
    std::fs::write(
        garbage.join("interlude.sqlite3"),
        b"this is not a database, it is a shopping list".repeat(200),
    )
    .unwrap();
    let (status, stderr) = run_on(&garbage);
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("interlude.sqlite3") && stderr.contains("not a database"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A real store (the demo's), cut to its first pages.
    let truncated = data_dir("truncated");
    let mut server = Binary::start(
        ["--metrics-listen", "off", "--admin-token", ADMIN_TOKEN, "--data-dir"]
            .into_iter()
            .map(String::from)
            .chain([truncated.display().to_string()]),
    );
    server.kill_9();
    let db = truncated.join("interlude.sqlite3");
    // Fold the WAL in first, so the file holds every page, then cut it.
    rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0))
        .unwrap();
    let len = std::fs::metadata(&db).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.set_len(len / 3).unwrap();
    drop(file);
    let (status, stderr) = run_on(&truncated);
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("interlude.sqlite3"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(garbage);
    let _ = std::fs::remove_dir_all(truncated);
}

#[test]
fn a_second_server_on_the_same_data_directory_exits_75_and_the_first_keeps_serving() {
    let dir = data_dir("locked");
    let mut first = Binary::start(
        ["--metrics-listen", "off", "--admin-token", ADMIN_TOKEN, "--demo", "false", "--data-dir"]
            .into_iter()
            .map(String::from)
            .chain([dir.display().to_string()]),
    );
    let (status, stderr) = run_on(&dir);
    assert_eq!(status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("in use by another Interlude server"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The lock dies with its process, however it ends: after kill -9 the directory is free.
    first.kill_9();
    let mut second = Binary::start(
        ["--metrics-listen", "off", "--admin-token", ADMIN_TOKEN, "--demo", "false", "--data-dir"]
            .into_iter()
            .map(String::from)
            .chain([dir.display().to_string()]),
    );
    second.kill_9();
    let _ = std::fs::remove_dir_all(dir);
}
