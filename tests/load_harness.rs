//! Smoke run of the shipped load harness against the real server binary: it must seed a small
//! world, drive Decide + RecordEvents and Check, and report no errors and no cap violations.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

mod common;

use std::process::Command;

use common::{ADMIN_TOKEN, Binary};

/// The bare reference server (`interlude-bare`) on ephemeral ports; killed when dropped.
struct Bare {
    child: std::process::Child,
    grpc: String,
    metrics: String,
}

impl Bare {
    fn start() -> Bare {
        use std::io::BufRead as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_interlude-bare"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut after = |prefix: &str| {
            let line = lines.next().expect("the bare server logs its addresses").unwrap();
            line.strip_prefix(prefix).unwrap_or_else(|| panic!("{line:?} after {prefix:?}")).to_owned()
        };
        let metrics = after("interlude-bare: metrics on ");
        let grpc = after("interlude-bare: serving grpc.health.v1 on ");
        Bare { child, grpc, metrics }
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_harness_seeds_drives_and_reports_against_a_fresh_server() {
    let server = Binary::in_memory("127.0.0.1:0");
    let bare = Bare::start();
    let addr = server.grpc.clone();
    let metrics = format!("http://{}/metrics", server.metrics);
    let bare_target = format!("http://{}", bare.grpc);
    let (stdout, report) = run_harness(
        server,
        "fresh",
        &[
            "--target",
            &format!("http://{addr}"),
            "--campaigns",
            "300",
            "--listeners",
            "300",
            "--concurrency",
            "4",
            "--connections",
            "2",
            "--duration",
            "1.5",
            "--warmup",
            "0.2",
            "--compare",
            "--strict",
            "--server-metrics",
            &metrics,
            "--bare-target",
            &bare_target,
            "--bare-metrics",
            &bare.metrics,
        ],
    );
    drop(bare);
    assert!(stdout.contains("Decide / health Check throughput"), "{stdout}");
    assert!(stdout.contains("Interlude Check / bare tonic Check throughput"), "{stdout}");
    assert!(stdout.contains("health Check / Decide server CPU per request"), "{stdout}");
    assert!(stdout.contains("bare tonic Check / bare canned Decide server CPU per request"), "{stdout}");
    let phases = report["phases"].as_array().unwrap();
    let targets: Vec<&str> = phases.iter().map(|p| p["target"].as_str().unwrap()).collect();
    assert_eq!(targets, vec!["Decide", "HealthCheck", "BareCheck", "BareDecide", "DecideAndRecord"]);
    for phase in phases {
        assert!(phase["requests_ok"].as_u64().unwrap() > 0, "{phase}");
        // The server's own CPU was read from its /metrics around the measured window.
        assert!(phase["server"]["cpu_us_per_request"].as_f64().unwrap() > 0.0, "{phase}");
        assert!(phase["server"]["busy"].as_f64().unwrap() > 0.0, "{phase}");
        assert!(phase["errors"].as_object().unwrap().is_empty(), "{phase}");
        assert!(phase["latency_us"]["p99"].as_u64().unwrap() >= phase["latency_us"]["p50"].as_u64().unwrap());
    }
    // Every paid ad either matches taste or track or is counted as one kind of miss.
    let decided = &phases[0]["quality"];
    assert!(decided["paid_ads"].as_u64().unwrap() > 0, "{decided}");
    let share = |key: &str| decided["misses"][key].as_f64().unwrap();
    let misses =
        share("place_ads_without_consent") + share("place_ads_with_consent") + share("affinity_outside_top3");
    let matching = decided["paid_ads_matching_taste"].as_f64().unwrap();
    assert!((matching + misses - 1.0).abs() < 1e-9, "{decided}");
    assert!(share("sponsorship") <= misses + 1e-12, "{decided}");
    // Quality per kind of listener: every kind was asked for, and their decisions add up.
    let classes = decided["by_class"].as_array().unwrap();
    let names: Vec<&str> = classes.iter().map(|c| c["class"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["known", "new", "no_consent"]);
    let per_class: u64 = classes.iter().map(|c| c["decisions"].as_u64().unwrap()).sum();
    assert_eq!(Some(per_class), decided["decisions"].as_u64(), "{decided}");
    for c in classes {
        assert!(c["decisions"].as_u64().unwrap() > 0, "{c}");
        let fill = c["paid_fill"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&fill), "{c}");
    }
    let recorded = &phases[4]["quality"];
    assert_eq!(recorded["cap_violations"].as_u64(), Some(0), "{recorded}");
    assert!(recorded["impressions_recorded"].as_u64().unwrap() > 0, "{recorded}");
    assert!(report["decide_to_check_ratio"].as_f64().unwrap() > 0.0);
    assert!(report["check_to_decide_cost_ratio"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["check_to_bare_ratio"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["bare_to_check_cost_ratio"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["bare_check_to_bare_decide_cost_ratio"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["record_to_decide_cost_ratio"].as_f64().unwrap().is_finite(), "{report}");
    assert!(report["budgets"]["budgeted_campaigns"].as_u64().unwrap() > 0);
    assert_eq!(report["threads"].as_u64(), Some(1), "one current-thread runtime by default");
}

/// Runs the harness against `server` with `args` (and the admin token, and a JSON report),
/// stops the server, and returns the printed table and the report; a failed run fails the test.
fn run_harness(server: Binary, name: &str, args: &[&str]) -> (String, serde_json::Value) {
    let report_path = std::env::temp_dir().join(format!("interlude-load-{name}-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_interlude-load"))
        .args(["--admin-token", ADMIN_TOKEN])
        .args(args)
        .arg("--json")
        .arg(&report_path)
        .output()
        .unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let report = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let _ = std::fs::remove_file(report_path);
    (stdout, report)
}

#[test]
fn the_harness_runs_on_several_threads_when_asked_and_refuses_none() {
    let server = Binary::bare();
    let report_path = std::env::temp_dir().join(format!("interlude-load-mt-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_interlude-load"))
        .args(["--target", &format!("http://{}", server.grpc), "--admin-token", ADMIN_TOKEN])
        .args(["--campaigns", "30", "--listeners", "30", "--threads", "2", "--workload", "health-check"])
        .args(["--duration", "0.5", "--warmup", "0", "--strict", "--server-metrics", "off", "--json"])
        .arg(&report_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["threads"].as_u64(), Some(2));
    assert!(report["phases"][0]["requests_ok"].as_u64().unwrap() > 0, "{report}");
    let _ = std::fs::remove_file(report_path);

    let refused =
        Command::new(env!("CARGO_BIN_EXE_interlude-load")).args(["--threads", "0"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--threads"));
    let refused = Command::new(env!("CARGO_BIN_EXE_interlude-load"))
        .args(["--new-listener-share", "1.5"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a share"));
    // A bare phase without the bare server would measure Interlude under the bare server's name.
    let refused = Command::new(env!("CARGO_BIN_EXE_interlude-load"))
        .args(["--workload", "bare-decide"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("give --bare-target"), "{refused:?}");
}

#[test]
fn the_harness_drives_the_vast_edge_beside_grpc_decide() {
    let server = Binary::in_memory("off");
    let (grpc, http) = (format!("http://{}", server.grpc), format!("http://{}", server.http));
    let (stdout, report) = run_harness(
        server,
        "vast",
        &[
            "--target",
            &grpc,
            "--http-target",
            &http,
            "--server-metrics",
            "off",
            "--campaigns",
            "200",
            "--listeners",
            "200",
            "--concurrency",
            "4",
            "--connections",
            "2",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--workload",
            "vast",
            "--compare",
            "--strict",
        ],
    );
    assert!(stdout.contains("VAST tag + pixels / Decide throughput"), "{stdout}");
    let phases = report["phases"].as_array().unwrap();
    let targets: Vec<&str> = phases.iter().map(|p| p["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["Decide", "HealthCheck", "DecideAndRecord", "VastTag", "Vast"]);
    for phase in phases {
        assert!(phase["requests_ok"].as_u64().unwrap() > 0, "{phase}");
        assert!(phase["errors"].as_object().unwrap().is_empty(), "{phase}");
    }
    // The tags' impression pixels were fired and answered.
    assert!(phases[4]["quality"]["impressions_recorded"].as_u64().unwrap() > 0, "{}", phases[4]);
    for ratio in ["vast_to_decide_ratio", "vast_tag_to_decide_ratio", "vast_to_decide_and_record_ratio"] {
        assert!(report[ratio].as_f64().unwrap() > 0.0, "{ratio}: {report}");
    }
}

#[test]
fn the_harness_records_impressions_decided_before_the_phase_each_counted_once() {
    let server = Binary::in_memory("off");
    let grpc = format!("http://{}", server.grpc);
    let (stdout, report) = run_harness(
        server,
        "record",
        &["--target", &grpc, "--server-metrics", "off", "--campaigns", "200", "--listeners", "200"]
            .into_iter()
            .chain(["--concurrency", "4", "--duration", "30", "--warmup", "0", "--workload", "record"])
            .chain(["--events-per-record", "8", "--record-stash", "300"])
            .collect::<Vec<_>>(),
    );
    let phases = report["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "{report}");
    let (phase, events) = (&phases[0], &phases[0]["events"]);
    assert_eq!(phase["target"], "Record");
    let accepted = events["accepted"].as_u64().unwrap();
    // The phase ends once the stash is used up (long before 30 s), and says so.
    assert!(accepted > 0 && accepted <= 300, "{phase}");
    assert_eq!(phase["errors"].as_object().unwrap().len(), 1, "{phase}");
    assert!(stdout.contains("record stash used up"), "{stdout}");
    // Its rates are over the time it ran, not over --duration.
    assert!(phase["seconds"].as_f64().unwrap() < 30.0, "{phase}");
    // Every call but the last of each worker carried 8.
    assert!(phase["requests_ok"].as_u64().unwrap() * 8 >= accepted, "{phase}");
    let once = &report["exactly_once"];
    assert_eq!(once["acknowledged"].as_u64(), Some(accepted), "{report}");
    assert_eq!(once["counted_by_server"].as_u64(), Some(accepted), "each counted once: {report}");
}
