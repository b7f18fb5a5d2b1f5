//! Cluster mode's shared state on Redis Cluster: the one truth several replicas decide on.
//!
//! Each replica keeps the same in-memory stores as in single-node mode (the engine reads them
//! unchanged); this module is where they are loaded from and written to instead of SQLite.
//! Every call has the configured timeout; every multi-key change is one script in one hash
//! slot. The key layout, consistency and failure behaviour per kind of state are in
//! docs/SCALING.md.

mod budget;
mod directory;
mod freshness;
mod listener;
mod scripts;
mod stored;
mod topology;

use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

pub use budget::event_field;
pub use directory::{ALIASES, ARTISTS, CAMPAIGNS, Directory, GENRES, Terms};
pub use freshness::{Freshness, ReadStart, TRUSTED_FOR};
pub use listener::{ListenerState, SharedHistories};
pub use stored::StoredListeners;

use crate::config::RedisSettings;

/// Why a call to the shared store failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("the shared store did not answer: {0}")]
    Unavailable(String),
    #[error("the shared store holds data this replica cannot read: {0}")]
    Corrupt(String),
    #[error("listener {0:?} changed on other replicas at every attempt; retry")]
    Contended(String),
}

impl From<redis::RedisError> for SharedError {
    fn from(e: redis::RedisError) -> Self {
        SharedError::Unavailable(e.to_string())
    }
}

impl From<serde_json::Error> for SharedError {
    fn from(e: serde_json::Error) -> Self {
        SharedError::Corrupt(e.to_string())
    }
}

impl From<SharedError> for super::StoreError {
    fn from(e: SharedError) -> Self {
        match e {
            SharedError::Corrupt(m) => super::StoreError::Corrupt(m),
            e => super::StoreError::Unavailable(e.to_string()),
        }
    }
}

/// The error of a call on the blocking connection, naming the command.
fn blocking(what: &str, e: redis::RedisError) -> SharedError {
    SharedError::Unavailable(format!("{what} (blocking): {e}"))
}

/// A handle on the cluster. Cheap to clone: clones share one multiplexed connection per node.
#[derive(Clone)]
pub struct Shared {
    /// Reads, and the writes no replica must acknowledge (budget holds).
    conn: ClusterConnection,
    /// The writes `WAIT` makes durable, and their `WAIT`s: a `WAIT` holds up every command
    /// after it on its connection until the replica answers, so the decisions' reads must not
    /// queue behind it.
    writes: ClusterConnection,
    /// A blocking connection, for the few callers that cannot await (interning a new genre
    /// inside a request's conversion): held for one short call at a time.
    blocking: std::sync::Arc<std::sync::Mutex<redis::cluster::ClusterConnection>>,
    timeout: Duration,
    /// Whether an acknowledged write waits for a replica (`redis_wait_replicas`).
    wait_for_replica: bool,
    /// The seed nodes (the change subscription connects to one).
    seeds: std::sync::Arc<[String]>,
    freshness: Freshness,
    /// Which listener ids ever had state here (a never-stored one needs no read).
    stored: StoredListeners,
    /// Budget holds this replica took ahead of its decisions.
    spares: std::sync::Arc<budget::Spares>,
    /// Which master serves each slot and its replicas in sync, as last read.
    topology: std::sync::Arc<topology::Known>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// How many replicas must hold a write before it is acknowledged (`WAIT`): one, so an
/// acknowledged event survives the loss of its master (unless configured to 0).
const REPLICAS_TO_ACK: usize = 1;

impl Shared {
    /// Connects to the cluster `settings` names, within a few of its timeouts.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, SharedError> {
        let client = redis::cluster::ClusterClientBuilder::new(
            settings.nodes.iter().map(|n| format!("redis://{n}")).collect::<Vec<_>>(),
        )
        .connection_timeout(settings.timeout)
        .response_timeout(settings.timeout)
        // A failover moves slots: the client follows MOVED and retries a little, within the
        // caller's own deadline; past that the caller answers UNAVAILABLE.
        .retries(2)
        .build()?;
        let startup = settings.timeout * 8;
        let connect = || async {
            tokio::time::timeout(startup, client.get_async_connection())
                .await
                .map_err(|_| SharedError::Unavailable(format!("no cluster answered within {startup:?}")))?
                .map_err(SharedError::from)
        };
        let conn = connect().await?;
        let writes = connect().await?;
        let blocking = tokio::task::spawn_blocking(move || client.get_connection())
            .await
            .map_err(|e| SharedError::Unavailable(e.to_string()))??;
        let shared = Self {
            conn,
            writes,
            blocking: std::sync::Arc::new(std::sync::Mutex::new(blocking)),
            timeout: settings.timeout,
            wait_for_replica: settings.wait_replicas > 0,
            seeds: settings.nodes.clone().into(),
            freshness: Freshness::default(),
            stored: StoredListeners::default(),
            spares: Default::default(),
            topology: Default::default(),
        };
        let pong: String = shared.query(&mut redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(SharedError::Unavailable(format!("PING answered {pong:?}")));
        }
        Ok(shared)
    }

    /// Runs `cmd` within the timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Result<T, SharedError> {
        self.query_on(self.conn.clone(), cmd).await
    }

    /// Runs `cmd`, a write to be made durable by `replicated`, within the timeout.
    async fn write<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> Result<T, SharedError> {
        self.query_on(self.writes.clone(), cmd).await
    }

    async fn query_on<T: redis::FromRedisValue>(
        &self,
        mut conn: ClusterConnection,
        cmd: &mut redis::Cmd,
    ) -> Result<T, SharedError> {
        let name = match cmd.args_iter().next() {
            Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).into_owned(),
            _ => String::from("a command"),
        };
        self.within(&name, async move { cmd.query_async(&mut conn).await }).await
    }

    /// Runs `script` within the timeout (EVALSHA, loading it again after a failover's NOSCRIPT).
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, SharedError> {
        self.invoke_on(self.conn.clone(), invocation).await
    }

    /// Runs `script`, a write to be made durable by `replicated`, within the timeout.
    async fn write_invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, SharedError> {
        self.invoke_on(self.writes.clone(), invocation).await
    }

    async fn invoke_on<T: redis::FromRedisValue>(
        &self,
        mut conn: ClusterConnection,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, SharedError> {
        self.within("a script", async move { invocation.invoke_async(&mut conn).await }).await
    }

    /// Runs `cmd` (named `what` in errors) on the node `routing` names, within the timeout.
    async fn route_on(
        &self,
        mut conn: ClusterConnection,
        what: &str,
        cmd: redis::Cmd,
        routing: RoutingInfo,
    ) -> Result<redis::Value, SharedError> {
        self.within(what, async move { conn.route_command(cmd, routing).await }).await
    }

    async fn within<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SharedError> {
        // The client's own response timeout covers one attempt; this bounds its retries too.
        let bound = self.timeout * 4;
        match tokio::time::timeout(bound, call).await {
            Ok(result) => result.map_err(|e| SharedError::Unavailable(format!("{what}: {e}"))),
            Err(_) => Err(SharedError::Unavailable(format!("{what}: no answer within {bound:?}"))),
        }
    }

    /// Waits until a replica of the master holding `key` has every write sent to it so far on
    /// this handle's connection: what an acknowledged event's durability rests on.
    ///
    /// A master left without any replica (its replica took over from it, and the failed node
    /// has not come back as the new replica yet) cannot meet that: rather than refusing every
    /// write until an operator brings a node back, its writes are acknowledged on the master
    /// alone and counted (`interlude_shared_unreplicated_writes_total`); docs/SCALING.md.
    async fn replicated(&self, key: &str) -> Result<(), SharedError> {
        if !self.wait_for_replica {
            return Ok(());
        }
        // Known from the last poll of the topology (an unknown slot waits, to be safe).
        if self.topology.replicas_of(key) == Some(0) {
            crate::telemetry::record_unreplicated_write();
            return Ok(());
        }
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
            key,
            SlotAddr::Master,
        )));
        // The server gives up before the client does, so that a slow replica is told apart
        // from a lost connection.
        let mut wait = redis::cmd("WAIT");
        wait.arg(REPLICAS_TO_ACK).arg((self.timeout / 2).as_millis() as u64);
        let value = self.route_on(self.writes.clone(), "WAIT", wait, route).await?;
        // Not a count (a redirect mid-failover, say): not acknowledged; the caller retries.
        let acked: usize = redis::from_redis_value(value)
            .map_err(|e| SharedError::Unavailable(format!("WAIT answered {e}")))?;
        if acked < REPLICAS_TO_ACK {
            // The replica may have gone (its master failed over to it, say): the next poll
            // reads the topology again; until then the caller's retry waits again.
            self.topology.forget();
            return Err(SharedError::Unavailable(format!(
                "the write to {key:?} reached {acked} replicas of its master, not {REPLICAS_TO_ACK}"
            )));
        }
        Ok(())
    }

    /// Whether the cluster answers now (health).
    pub async fn ping(&self) -> Result<(), SharedError> {
        let _: String = self.query(&mut redis::cmd("PING")).await?;
        Ok(())
    }

    /// The impression-token key every replica signs with: the first replica to start sets it
    /// (`SET NX`), the others read it, so any replica verifies any replica's tokens.
    pub async fn token_key(&self, generate: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, SharedError> {
        const KEY: &str = "{cfg}:token_key";
        let _: Option<String> =
            self.query(redis::cmd("SET").arg(KEY).arg(hex::encode(generate())).arg("NX")).await?;
        let stored: String = self.query(redis::cmd("GET").arg(KEY)).await?;
        hex::decode(&stored).map_err(|e| SharedError::Corrupt(format!("{KEY}: {e}")))
    }
}
