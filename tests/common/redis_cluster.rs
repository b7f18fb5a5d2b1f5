//! A real Redis Cluster for the cluster-mode tests: 6 `redis-server` processes on loopback
//! (3 masters, 3 replicas) on free ports, joined by `redis-cli --cluster create`; killed and
//! their files removed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// How long a failed master's replica waits before taking over: short, so a failover test
/// takes seconds.
pub const NODE_TIMEOUT_MS: u64 = 1_000;

/// A running cluster.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: std::path::PathBuf,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

/// Whether `redis-server` and `redis-cli` are installed; without them the caller skips (and
/// fails under `REQUIRE_TEST_TOOLS`).
pub fn available() -> bool {
    ["redis-server", "redis-cli"].iter().all(|tool| {
        Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    })
}

/// A port free now, whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// `redis-cli -p port args…`, its stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` until it holds, failing the test after `within`.
fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl RedisCluster {
    /// Starts 6 nodes and joins them; returns once every slot is served and every master
    /// has its replica in sync (so `WAIT 1` can succeed).
    pub fn start() -> RedisCluster {
        let dir =
            std::env::temp_dir().join(format!("interlude-redis-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        while nodes.len() < 6 {
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // A replica takes over however long it was cut off: the tests kill masters.
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .arg("--dir")
                .arg(&dir)
                .args(["--logfile", &format!("redis-{port}.log")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut node = Node { port, child: Some(child) };
            // Another process (another test's cluster) may have taken the port meanwhile: then
            // the node answering is not ours, ours exits, and another port is tried.
            let pid = format!("process_id:{}", node.child.as_ref().unwrap().id());
            let up = Instant::now();
            loop {
                if cli(port, &["info", "server"]).lines().any(|l| l.trim() == pid) {
                    nodes.push(node);
                    break;
                }
                if node.child.as_mut().unwrap().try_wait().unwrap().is_some()
                    || up.elapsed() > Duration::from_secs(10)
                {
                    node.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        for node in &cluster.nodes {
            until("cluster_state:ok", Duration::from_secs(30), || {
                cli(node.port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
        until("every master's replica in sync", Duration::from_secs(30), || {
            cluster.masters().len() == 3
                && cluster.masters().iter().all(|&p| {
                    let info = cli(p, &["info", "replication"]);
                    info.contains("connected_slaves:1") && info.contains("state=online")
                })
        });
        cluster
    }

    /// The seed nodes, as the `redis_nodes` setting takes them.
    pub fn nodes_setting(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Runs `args` on every live node (e.g. SCRIPT FLUSH).
    pub fn on_every_node(&self, args: &[&str]) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            assert_eq!(cli(node.port, args).trim(), "OK", "{args:?} on {}", node.port);
        }
    }

    /// Ports of the nodes that are masters now (as the live nodes see it).
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| cli(n.port, &["role"]).starts_with("master"))
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.live_port(), &["cluster", "keyslot", key]).trim().parse().unwrap();
        let nodes = cli(self.live_port(), &["cluster", "nodes"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 8 && fields[2].contains("master") && !fields[2].contains("fail") {
                for range in &fields[8..] {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>())
                        && (lo..=hi).contains(&slot)
                    {
                        let addr = fields[1].split('@').next().unwrap();
                        return addr.rsplit(':').next().unwrap().parse().unwrap();
                    }
                }
            }
        }
        panic!("no master serves slot {slot}: {nodes}");
    }

    fn live_port(&self) -> u16 {
        self.nodes.iter().find(|n| n.child.is_some()).unwrap().port
    }

    /// SIGKILL of the node on `port`.
    pub fn kill_9(&mut self, port: u16) {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap().kill();
    }

    /// SIGKILL of every node (the shared store gone).
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// Waits until every slot is served again (a replica took over a killed master).
    pub fn await_ok(&self) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            until("cluster_state:ok after the failover", Duration::from_secs(30), || {
                cli(node.port, &["cluster", "info"]).contains("cluster_state:ok")
            });
        }
    }
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
