//! The embedded durable store (SQLite): every acknowledged write is committed before its RPC
//! answers, and the in-memory stores are rebuilt from it at start.
//!
//! One writer thread owns the connection. Writers hand it a batch of changes and wait for the
//! commit; the thread takes every batch waiting at that moment into one transaction (group
//! commit), so one disk flush serves many RPCs and the decision path never waits on a disk.
//! Rows hold the domain values as JSON: the schema is key → document, the documents are the
//! types of `domain` (genres and artists as ids, with the vocabularies persisted beside them).
//!
//! Listener profiles and delivery histories are not read back at start: `StoreReader` loads
//! them on demand into their caches, through read-only connections (WAL lets them read beside
//! the writer).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::domain::{AdId, EventKind};
use crate::domain::{
    Campaign, CampaignId, DeliveryHistory, HistoryChange, ListenerId, ListenerProfile, UnixMillis,
};
use crate::store::StoreError;
use crate::store::delivery::{CampaignCounters, CountedEvent, HistoryKey};
use crate::store::histories::{AccountHistories, HistorySource};
use crate::store::listeners::ProfileSource;

/// The SQLite file inside the data directory.
pub const DB_FILE: &str = "interlude.sqlite3";
/// The lock file that keeps a second server out of the data directory.
pub const LOCK_FILE: &str = "interlude.lock";
/// The admin token generated at start when none is configured, for local tools (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The impression-token key generated on first start when none is configured (hex, mode 0600).
pub const TOKEN_KEY_FILE: &str = "token.key";

/// Why the durable store failed.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("cannot use {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot encode or decode a stored document: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the durable store's writer has stopped")]
    WriterGone,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// The database file cannot be read back at start (not a database, truncated, corrupt).
    #[error("cannot read {path}: {reason} (restore it from a backup, or move it aside to start empty)")]
    Unreadable { path: PathBuf, reason: String },
    /// Another process holds the data directory.
    #[error(
        "{path} is in use by another Interlude server (one server per data directory; stop it or choose another data_dir)"
    )]
    InUse { path: PathBuf },
}

/// One change to persist.
#[derive(Debug)]
pub enum Change {
    Genre {
        id: u32,
        name: String,
    },
    Artist {
        id: u32,
        name: String,
    },
    Campaign(Arc<Campaign>),
    Listener(Arc<ListenerProfile>),
    ForgetListener(ListenerId),
    /// The keyed fingerprint of an erased listener and when it was erased (`Delivery::erased`).
    Erased {
        fingerprint: [u8; 32],
        at: UnixMillis,
    },
    /// A play counted under its caller's play id (`Delivery::admit_play`).
    PlayCounted {
        fingerprint: [u8; 32],
        at: UnixMillis,
    },
    Alias {
        alias: String,
        listener: ListenerId,
    },
    /// A whole history: replaces the stored one and the changes appended to it.
    History(HistoryKey, DeliveryHistory),
    /// Changes to a history, appended after its stored copy (replayed over it when read).
    HistoryChanges(HistoryKey, Vec<HistoryChange>),
    Counters(CampaignId, CampaignCounters),
    /// An event counted for its ad (once per ad and kind).
    Event(CountedEvent),
    /// Drops counted events older than this: their tokens have expired, so they cannot come back.
    PurgeEvents {
        before: UnixMillis,
    },
}

struct Batch {
    changes: Vec<Change>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Durable {
    tx: mpsc::Sender<Batch>,
    /// The data directory's lock (`lock`): released by `release`, or when the last handle goes.
    lock: Arc<Mutex<Option<std::fs::File>>>,
    /// Turns true when the writer stops after a failed commit (see `writer`).
    stopped: tokio::sync::watch::Receiver<bool>,
}

/// The (fingerprint, at) rows of `table`.
fn fingerprints(conn: &Connection, table: &str) -> Result<Vec<([u8; 32], UnixMillis)>, DurableError> {
    let mut stmt = conn.prepare(&format!("SELECT fingerprint, at FROM {table}"))?;
    let rows: Vec<(Vec<u8>, i64)> =
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(fingerprint, at)| {
            let fingerprint = <[u8; 32]>::try_from(fingerprint.as_slice()).map_err(|_| {
                DurableError::Corrupt(format!("a fingerprint of {} bytes in {table}", fingerprint.len()))
            })?;
            Ok((fingerprint, UnixMillis(at)))
        })
        .collect()
}

/// Takes the data directory's lock: an advisory exclusive lock on `LOCK_FILE`, released by the
/// operating system when the process ends however it ends (kill -9 included), so a stale lock
/// never keeps a restarted server out.
fn lock(dir: &Path) -> Result<std::fs::File, DurableError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| DurableError::Dir { path: path.clone(), source };
    let file =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DurableError::InUse { path: dir.to_owned() }),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("changes", &self.changes.len()).finish()
    }
}

/// Everything stored, as read at start.
#[derive(Debug, Default)]
pub struct Recovered {
    pub genres: Vec<(u32, String)>,
    pub artists: Vec<(u32, String)>,
    pub campaigns: Vec<Campaign>,
    /// How many listener profiles are stored (they are loaded on demand).
    pub listener_count: usize,
    pub aliases: Vec<(String, ListenerId)>,
    pub counters: Vec<(CampaignId, CampaignCounters)>,
    pub events: Vec<CountedEvent>,
    /// Event ids stored before ad ids existed (the `events` table), still within their window.
    pub legacy_events: Vec<(String, UnixMillis)>,
    /// Erased listeners' fingerprints and erasure times, within the dedupe window.
    pub erased: Vec<([u8; 32], UnixMillis)>,
    /// Fingerprints of the plays counted under a play id, within the dedupe window.
    pub plays_counted: Vec<[u8; 32]>,
}

/// `secure_delete` overwrites deleted content with zeros, so an erased listener's bytes leave
/// the database pages (and, after the checkpoint that follows an erasure, the WAL).
/// Set on every open: how the store is written, not what it holds.
const PRAGMAS: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    PRAGMA secure_delete = ON;
";

/// Statements the writer keeps prepared: every one `apply` runs (19), so that none is parsed
/// again per change (rusqlite keeps 16 by default).
const WRITER_STATEMENTS: usize = 24;

/// The schema, one migration per release that changed it, in order; the database's
/// `user_version` says how many it has had. A store written before versioning (version 0)
/// already holds the first one's tables, which is why that one only creates what is missing.
/// Stored documents are serde JSON whose new fields read as their defaults, so a release that
/// only adds fields needs no migration; one that changes a field's meaning adds a migration
/// that rewrites the documents. Never edit a released migration: add the next.
const MIGRATIONS: &[&str] = &[
    // 1: the schema before versioning (stop 15 and earlier).
    "
    CREATE TABLE IF NOT EXISTS genres (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE IF NOT EXISTS artists (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE IF NOT EXISTS campaigns (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS listeners (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS aliases (alias TEXT PRIMARY KEY, listener TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS aliases_by_listener ON aliases (listener);
    CREATE TABLE IF NOT EXISTS histories (listener TEXT NOT NULL, member TEXT NOT NULL, doc TEXT NOT NULL,
        PRIMARY KEY (listener, member));
    CREATE TABLE IF NOT EXISTS counters (campaign TEXT PRIMARY KEY, doc TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, at INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS events_by_time ON events (at);
    CREATE TABLE IF NOT EXISTS ad_events (ad BLOB NOT NULL, kind INTEGER NOT NULL, event_id TEXT NOT NULL,
        at INTEGER NOT NULL, PRIMARY KEY (ad, kind));
    CREATE INDEX IF NOT EXISTS ad_events_by_time ON ad_events (at);
    ",
    // 2: erased listeners' fingerprints, counted play ids.
    "
    CREATE TABLE IF NOT EXISTS erased (fingerprint BLOB PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS plays_counted (fingerprint BLOB PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;
    ",
    // 3: changes appended to a stored history (a JSON array of `HistoryChange` per write), in
    // rowid order; a history stored whole deletes its rows. Counted events lose their (ad,
    // kind) key: memory admits each pair once (`Delivery::admit`) and start-up reads them all
    // back, so the key only cost a b-tree insert at a random page per event.
    "
    CREATE TABLE history_changes (listener TEXT NOT NULL, member TEXT NOT NULL, doc TEXT NOT NULL);
    CREATE INDEX history_changes_by_member ON history_changes (listener, member);
    CREATE TABLE ad_events_appended (ad BLOB NOT NULL, kind INTEGER NOT NULL, event_id TEXT NOT NULL,
        at INTEGER NOT NULL);
    INSERT INTO ad_events_appended (ad, kind, event_id, at) SELECT ad, kind, event_id, at FROM ad_events;
    DROP TABLE ad_events;
    ALTER TABLE ad_events_appended RENAME TO ad_events;
    CREATE INDEX ad_events_by_time ON ad_events (at);
    ",
];

/// The schema version this release writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Brings `conn`'s schema to `SCHEMA_VERSION`, each migration in its own transaction; refuses
/// a store written by a newer release.
fn migrate(conn: &mut Connection) -> Result<(), DurableError> {
    let migrations = rusqlite_migration::Migrations::new(
        MIGRATIONS.iter().map(|sql| rusqlite_migration::M::up(sql)).collect(),
    );
    migrations.to_latest(conn).map_err(|e| match e {
        rusqlite_migration::Error::MigrationDefinition(
            rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead,
        ) => DurableError::Corrupt(format!(
            "written by a newer Interlude (schema version above {SCHEMA_VERSION}); run that release or restore a backup"
        )),
        other => DurableError::Corrupt(format!("schema migration failed: {other}")),
    })
}

impl Durable {
    /// Opens (or creates) the store in `dir`, reads everything back, and starts the writer.
    pub fn open(dir: &Path) -> Result<(Durable, Recovered), DurableError> {
        std::fs::create_dir_all(dir).map_err(|source| DurableError::Dir { path: dir.to_owned(), source })?;
        let lock = lock(dir)?;
        let path = dir.join(DB_FILE);
        let unreadable = |e: DurableError| match e {
            DurableError::Sqlite(_) | DurableError::Codec(_) | DurableError::Corrupt(_) => {
                DurableError::Unreadable { path: path.clone(), reason: e.to_string() }
            }
            other => other,
        };
        let mut conn = Connection::open(&path).map_err(|e| unreadable(e.into()))?;
        // The checkpoint after an erasure waits this long for a reader to finish.
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| unreadable(e.into()))?;
        conn.execute_batch(PRAGMAS).map_err(|e| unreadable(e.into()))?;
        conn.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
        migrate(&mut conn).map_err(unreadable)?;
        let recovered = recover(&conn).map_err(unreadable)?;
        let (tx, rx) = mpsc::channel::<Batch>();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        std::thread::Builder::new()
            .name("interlude-durable".into())
            .spawn(move || {
                writer(conn, rx);
                let _ = stop.send(true);
            })
            .map_err(|source| DurableError::Dir { path: dir.to_owned(), source })?;
        Ok((Durable { tx, lock: Arc::new(Mutex::new(Some(lock))), stopped }, recovered))
    }

    /// Gives up the data directory when the server has stopped, although handles to the store
    /// may live on in tasks not yet dropped: a server started next in the same process (tests,
    /// embedders) can take it at once.
    pub fn release(&self) {
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }

    /// A reader of stored listener profiles and histories, for their caches.
    pub fn reader(dir: &Path) -> Arc<StoreReader> {
        Arc::new(StoreReader { path: dir.join(DB_FILE), idle: Mutex::new(Vec::new()) })
    }

    /// Resolves once the store refuses writes (after a failed commit); the server then reports
    /// NOT_SERVING so that load balancers route around it.
    pub async fn refusing_writes(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// Queues `changes` for the next commit (in submission order); await the result to know
    /// they are durable.
    pub fn submit(&self, changes: Vec<Change>) -> Result<Commit, DurableError> {
        let (done, committed) = oneshot::channel();
        self.tx.send(Batch { changes, done }).map_err(|_| DurableError::WriterGone)?;
        Ok(Commit { committed })
    }
}

/// Reads stored listener profiles on demand. Connections are read-only and pooled: a read
/// takes an idle one (or opens one) and puts it back, so readers never wait on each other.
pub struct StoreReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader").field("path", &self.path).finish_non_exhaustive()
    }
}

impl StoreReader {
    /// Runs `f` on an idle connection (or a new one), then puts it back.
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DurableError>,
    ) -> Result<T, DurableError> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?,
        };
        let result = f(&conn);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        result
    }

    fn read(&self, id: &str) -> Result<Option<ListenerProfile>, DurableError> {
        let doc: Option<String> = self.with_connection(|conn| {
            Ok(conn
                .prepare_cached("SELECT doc FROM listeners WHERE id = ?1")?
                .query_row(params![id], |row| row.get(0))
                .optional()?)
        })?;
        Ok(doc.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    /// Every stored member history of listener `id`: its last whole copy, with the changes
    /// appended since replayed over it in order.
    fn histories(&self, id: &str) -> Result<AccountHistories, DurableError> {
        type MemberDocs = Vec<(String, String)>;
        let (whole, appended): (MemberDocs, MemberDocs) = self.with_connection(|conn| {
            let rows = |sql| -> Result<MemberDocs, DurableError> {
                let mut stmt = conn.prepare_cached(sql)?;
                let rows = stmt.query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            };
            Ok((
                rows("SELECT member, doc FROM histories WHERE listener = ?1")?,
                rows("SELECT member, doc FROM history_changes WHERE listener = ?1 ORDER BY rowid")?,
            ))
        })?;
        let mut account = AccountHistories::default();
        for (member, doc) in whole {
            account.restore(&member, serde_json::from_str(&doc)?);
        }
        for (member, doc) in appended {
            account.replay(&member, serde_json::from_str(&doc)?);
        }
        Ok(account)
    }
}

impl HistorySource for StoreReader {
    fn load_histories(&self, id: &str) -> Result<AccountHistories, StoreError> {
        self.histories(id).map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

impl ProfileSource for StoreReader {
    fn load(&self, id: &str) -> Result<Option<ListenerProfile>, StoreError> {
        self.read(id).map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// The token key kept in `dir`: read back, or made by `generate` and written (owner-only, and
/// synced before use, so a token signed with it is never orphaned by a crash).
pub fn token_key(dir: &Path, generate: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, DurableError> {
    let path = dir.join(TOKEN_KEY_FILE);
    let io = |source| DurableError::Dir { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return hex::decode(text.trim()).ok().filter(|k| k.len() >= 32).ok_or_else(|| {
                DurableError::Corrupt(format!("{} is not a hex key of 32+ bytes", path.display()))
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let key = generate();
    write_private(&path, hex::encode(&key).as_bytes(), true)?;
    Ok(key)
}

/// Writes `contents` to a file only its owner can read, and syncs it. `create_new`: fail if it
/// exists (a key must never be replaced); otherwise it is replaced.
pub fn write_private(path: &Path, contents: &[u8], create_new: bool) -> Result<(), DurableError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| DurableError::Dir { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(io)
}

/// A submitted batch; resolves once it is committed.
#[derive(Debug)]
pub struct Commit {
    committed: oneshot::Receiver<Result<(), String>>,
}

impl Commit {
    /// Waits for the commit.
    pub async fn wait(self) -> Result<(), DurableError> {
        match self.committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(DurableError::Commit(message)),
            Err(_) => Err(DurableError::WriterGone),
        }
    }
}

/// Group commit: wait for a batch, take every other batch already waiting, commit them in one
/// transaction, then answer them all.
///
/// Fail-stop: after a failed commit the writer stops, and every later write is refused
/// (`WriterGone`, answered UNAVAILABLE). Memory may then hold a change the store does not; were
/// writes to go on, a retried event would be acknowledged as a duplicate of one that was never
/// made durable. A restart rebuilds memory from the store.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Batch>) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        // The writer is a plain thread: std time is right here (nothing pauses it in tests).
        #[allow(clippy::disallowed_types)]
        let started = std::time::Instant::now();
        let result = apply(&mut conn, &batches).map_err(|e| e.to_string());
        let failed = result.is_err();
        crate::telemetry::record_commit(!failed, batches.len(), started.elapsed());
        if let Err(error) = &result {
            tracing::error!(%error, batches = batches.len(), "durable commit failed; refusing further writes");
        }
        for batch in batches {
            let _ = batch.done.send(result.clone());
        }
        if failed {
            return;
        }
    }
}

fn apply(conn: &mut Connection, batches: &[Batch]) -> Result<(), DurableError> {
    let changes = || batches.iter().flat_map(|b| &b.changes);
    // Counters are whole totals, each read under the write order (`AppState::write`), so the
    // newest of a campaign in this transaction holds everything the earlier ones did: a group
    // commit of many RecordEvents calls writes each campaign's counters once, not once a call.
    let newest_counters: HashMap<&CampaignId, usize> = changes()
        .enumerate()
        .filter_map(|(i, change)| match change {
            Change::Counters(id, _) => Some((id, i)),
            _ => None,
        })
        .collect();
    let tx = conn.transaction()?;
    for (i, change) in changes().enumerate() {
        match change {
            Change::Genre { id, name } => {
                tx.prepare_cached("INSERT OR IGNORE INTO genres (id, name) VALUES (?1, ?2)")?
                    .execute(params![id, name])?;
            }
            Change::Artist { id, name } => {
                tx.prepare_cached("INSERT OR IGNORE INTO artists (id, name) VALUES (?1, ?2)")?
                    .execute(params![id, name])?;
            }
            Change::Campaign(c) => {
                tx.prepare_cached("INSERT OR REPLACE INTO campaigns (id, doc) VALUES (?1, ?2)")?
                    .execute(params![c.id.as_str(), doc(c)?])?;
            }
            Change::Listener(p) => {
                tx.prepare_cached("INSERT OR REPLACE INTO listeners (id, doc) VALUES (?1, ?2)")?
                    .execute(params![p.id.as_str(), doc(p)?])?;
            }
            Change::ForgetListener(id) => {
                tx.prepare_cached("DELETE FROM listeners WHERE id = ?1")?.execute(params![id.as_str()])?;
                tx.prepare_cached("DELETE FROM aliases WHERE listener = ?1 OR alias = ?1")?
                    .execute(params![id.as_str()])?;
                tx.prepare_cached("DELETE FROM histories WHERE listener = ?1")?
                    .execute(params![id.as_str()])?;
                tx.prepare_cached("DELETE FROM history_changes WHERE listener = ?1")?
                    .execute(params![id.as_str()])?;
            }
            Change::Alias { alias, listener } => {
                tx.prepare_cached("INSERT OR REPLACE INTO aliases (alias, listener) VALUES (?1, ?2)")?
                    .execute(params![alias, listener.as_str()])?;
            }
            Change::History(key, h) => {
                let key = params![key.listener.as_str(), &*key.member];
                tx.prepare_cached("DELETE FROM history_changes WHERE listener = ?1 AND member = ?2")?
                    .execute(key)?;
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO histories (listener, member, doc) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![key[0], key[1], doc(h)?])?;
            }
            Change::HistoryChanges(key, changes) => {
                tx.prepare_cached("INSERT INTO history_changes (listener, member, doc) VALUES (?1, ?2, ?3)")?
                    .execute(params![key.listener.as_str(), &*key.member, doc(changes)?])?;
            }
            Change::Counters(id, _) if newest_counters.get(id) != Some(&i) => {}
            Change::Counters(id, c) => {
                tx.prepare_cached("INSERT OR REPLACE INTO counters (campaign, doc) VALUES (?1, ?2)")?
                    .execute(params![id.as_str(), doc(c)?])?;
            }
            Change::Event(e) => {
                tx.prepare_cached("INSERT INTO ad_events (ad, kind, event_id, at) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![&e.ad.0.to_be_bytes()[..], e.kind.code(), e.event_id, e.at.0])?;
            }
            Change::Erased { fingerprint, at } => {
                tx.prepare_cached("INSERT OR REPLACE INTO erased (fingerprint, at) VALUES (?1, ?2)")?
                    .execute(params![&fingerprint[..], at.0])?;
            }
            Change::PlayCounted { fingerprint, at } => {
                tx.prepare_cached("INSERT OR IGNORE INTO plays_counted (fingerprint, at) VALUES (?1, ?2)")?
                    .execute(params![&fingerprint[..], at.0])?;
            }
            Change::PurgeEvents { before } => {
                tx.prepare_cached("DELETE FROM plays_counted WHERE at < ?1")?.execute(params![before.0])?;
                tx.prepare_cached("DELETE FROM events WHERE at < ?1")?.execute(params![before.0])?;
                tx.prepare_cached("DELETE FROM ad_events WHERE at < ?1")?.execute(params![before.0])?;
                tx.prepare_cached("DELETE FROM erased WHERE at < ?1")?.execute(params![before.0])?;
            }
        }
    }
    tx.commit()?;
    let erased = changes().any(|c| matches!(c, Change::ForgetListener(_)));
    if erased {
        checkpoint(conn)?;
    }
    Ok(())
}

/// Copies the WAL into the database and truncates it, so that the frames holding an erased
/// listener's rows leave the disk with the erasure. It waits for readers (the busy timeout;
/// reads are single primary-key lookups) and is tried three times; failing that the erasure
/// is not acknowledged.
fn checkpoint(conn: &Connection) -> Result<(), DurableError> {
    for _ in 0..3 {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy == 0 {
            return Ok(());
        }
    }
    Err(DurableError::Commit("the WAL could not be checkpointed after an erasure".into()))
}

fn doc(value: &impl Serialize) -> Result<String, DurableError> {
    Ok(serde_json::to_string(value)?)
}

fn rows<T: DeserializeOwned>(conn: &Connection, sql: &str) -> Result<Vec<T>, DurableError> {
    let mut stmt = conn.prepare(sql)?;
    let docs = stmt.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    docs.iter().map(|d| Ok(serde_json::from_str(d)?)).collect()
}

fn recover(conn: &Connection) -> Result<Recovered, DurableError> {
    let mut r = Recovered {
        campaigns: rows(conn, "SELECT doc FROM campaigns")?,
        listener_count: conn.query_row("SELECT count(*) FROM listeners", [], |row| row.get(0))?,
        ..Recovered::default()
    };
    let mut stmt = conn.prepare("SELECT id, name FROM genres ORDER BY id")?;
    r.genres = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare("SELECT id, name FROM artists ORDER BY id")?;
    r.artists = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare("SELECT alias, listener FROM aliases")?;
    r.aliases = stmt
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, ListenerId::from(row.get::<_, String>(1)?.as_str())))
        })?
        .collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare("SELECT campaign, doc FROM counters")?;
    let counters: Vec<(String, String)> =
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
    for (id, d) in counters {
        r.counters.push((id.as_str().into(), serde_json::from_str(&d)?));
    }
    let mut stmt = conn.prepare("SELECT id, at FROM events")?;
    r.legacy_events =
        stmt.query_map([], |row| Ok((row.get(0)?, UnixMillis(row.get(1)?))))?.collect::<Result<_, _>>()?;
    let mut stmt = conn.prepare("SELECT ad, kind, event_id, at FROM ad_events")?;
    let rows: Vec<(Vec<u8>, u8, String, i64)> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?
        .collect::<Result<_, _>>()?;
    for (ad, kind, event_id, at) in rows {
        let ad = <[u8; 16]>::try_from(ad.as_slice())
            .map_err(|_| DurableError::Corrupt(format!("an ad id of {} bytes", ad.len())))?;
        let kind = EventKind::from_code(kind)
            .ok_or_else(|| DurableError::Corrupt(format!("unknown event kind {kind}")))?;
        r.events.push(CountedEvent { ad: AdId(u128::from_be_bytes(ad)), kind, event_id, at: UnixMillis(at) });
    }
    r.erased = fingerprints(conn, "erased")?;
    r.plays_counted = fingerprints(conn, "plays_counted")?.into_iter().map(|(f, _)| f).collect();
    let _ = conn.query_row("SELECT 1", [], |_| Ok(())).optional()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("interlude-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn counted(ad: u128, event_id: &str, at: i64) -> CountedEvent {
        CountedEvent {
            ad: AdId(ad),
            kind: EventKind::Impression,
            event_id: event_id.into(),
            at: UnixMillis(at),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn committed_changes_come_back_and_forgetting_deletes() {
        let dir = temp_dir("roundtrip");
        let (durable, recovered) = Durable::open(&dir).unwrap();
        assert!(recovered.genres.is_empty() && recovered.events.is_empty());
        let changes = vec![
            Change::Genre { id: 0, name: "jazz".into() },
            Change::Artist { id: 0, name: "Nina Simone".into() },
            Change::Event(counted(1, "ev-1", 5)),
            Change::Listener(Arc::new(ListenerProfile::new("nina".into()))),
            Change::Alias { alias: "email:n".into(), listener: "nina".into() },
        ];
        block_on(durable.submit(changes).unwrap().wait()).unwrap();
        drop(durable);
        let (durable, recovered) = Durable::open(&dir).unwrap();
        assert_eq!(recovered.genres, vec![(0, "jazz".to_string())]);
        assert_eq!(recovered.events, vec![counted(1, "ev-1", 5)]);
        assert_eq!(recovered.artists, vec![(0, "Nina Simone".to_string())]);
        assert_eq!(recovered.listener_count, 1);
        let reader = Durable::reader(&dir);
        assert_eq!(reader.load("nina").unwrap().map(|p| p.id), Some("nina".into()), "loaded on demand");
        assert!(reader.load("nobody").unwrap().is_none());
        assert_eq!(recovered.aliases, vec![("email:n".to_string(), ListenerId::from("nina"))]);
        block_on(durable.submit(vec![Change::ForgetListener("nina".into())]).unwrap().wait()).unwrap();
        drop(durable);
        let (durable, recovered) = Durable::open(&dir).unwrap();
        assert!(recovered.listener_count == 0 && recovered.aliases.is_empty());
        assert!(reader.load("nina").unwrap().is_none(), "erased from disk");
        let late = Change::Event(counted(2, "ev-2", 100));
        block_on(durable.submit(vec![late, Change::PurgeEvents { before: UnixMillis(50) }]).unwrap().wait())
            .unwrap();
        drop(durable);
        let (_, recovered) = Durable::open(&dir).unwrap();
        assert_eq!(recovered.events, vec![counted(2, "ev-2", 100)], "expired events are purged");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_history_read_back_is_its_whole_copy_with_the_appended_changes_replayed_in_order() {
        use crate::domain::history::{Suppression, SuppressionTarget};
        let dir = temp_dir("appended");
        let (durable, _) = Durable::open(&dir).unwrap();
        let campaign = crate::decision::tests::campaign("c", "adv", crate::domain::Tier::Standard, 10);
        let heard =
            |at| HistoryChange::Heard(crate::domain::ImpressionRecord::of(&campaign, 0, UnixMillis(at)));
        let key = |member: &str| HistoryKey { listener: "nina".into(), member: member.into() };
        let suppressed = HistoryChange::Suppressed(Suppression {
            target: SuppressionTarget::Advertiser("adv".into()),
            until: UnixMillis(9_000),
        });
        // What memory holds after the same changes, applied in the same order.
        let mut expected = DeliveryHistory::default();
        let mut whole = DeliveryHistory::default();
        whole.apply(heard(1_000));
        expected.apply(heard(1_000));
        let rows = [vec![heard(2_000), suppressed.clone()], vec![heard(1_500)]];
        for change in rows.iter().flatten() {
            expected.apply(change.clone());
        }
        let mut changes = vec![Change::History(key(""), whole)];
        changes.extend(rows.iter().map(|row| Change::HistoryChanges(key(""), row.clone())));
        changes.push(Change::HistoryChanges(key("kid"), vec![heard(3_000)]));
        block_on(durable.submit(changes).unwrap().wait()).unwrap();
        let reader = Durable::reader(&dir);
        let account = reader.histories("nina").unwrap();
        assert_eq!(account.get(""), Some(&expected), "whole copy + two rows replayed in order");
        assert_eq!(account.get("kid").map(|h| h.impressions_within(1_000, UnixMillis(3_000))), Some(1));
        let stored_rows = |conn: &Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM history_changes", [], |r| r.get(0)).unwrap()
        };
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        assert_eq!(stored_rows(&conn), 3);
        // A whole copy replaces its member's rows, and only that member's.
        block_on(durable.submit(vec![Change::History(key(""), expected.clone())]).unwrap().wait()).unwrap();
        assert_eq!(stored_rows(&conn), 1, "the kid's row stays");
        assert_eq!(reader.histories("nina").unwrap().get(""), Some(&expected));
        block_on(durable.submit(vec![Change::ForgetListener("nina".into())]).unwrap().wait()).unwrap();
        assert_eq!(stored_rows(&conn), 0, "erasure deletes appended rows too");
        assert!(reader.histories("nina").unwrap().get("kid").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_group_commit_stores_each_campaigns_newest_counters() {
        let dir = temp_dir("counters");
        std::fs::create_dir_all(&dir).unwrap();
        let mut conn = Connection::open(dir.join(DB_FILE)).unwrap();
        migrate(&mut conn).unwrap();
        let counters = |impressions| CampaignCounters { impressions, ..CampaignCounters::default() };
        let batch = |changes| Batch { changes, done: oneshot::channel().0 };
        // Three RecordEvents calls committed together, as the writer takes them from its queue.
        let batches = [
            batch(vec![Change::Counters("c".into(), counters(1)), Change::Counters("d".into(), counters(5))]),
            batch(vec![Change::Event(counted(1, "a", 1)), Change::Counters("c".into(), counters(2))]),
            batch(vec![Change::Counters("c".into(), counters(3))]),
        ];
        apply(&mut conn, &batches).unwrap();
        let mut stored = recover(&conn).unwrap().counters;
        stored.sort_by(|a, b| a.0.cmp(&b.0));
        let impressions: Vec<(&str, u64)> =
            stored.iter().map(|(id, c)| (id.as_str(), c.impressions)).collect();
        assert_eq!(impressions, [("c", 3), ("d", 5)], "the newest of each campaign");
        assert_eq!(recover(&conn).unwrap().events, vec![counted(1, "a", 1)]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn after_a_failed_commit_every_write_is_refused() {
        let dir = temp_dir("failstop");
        let (durable, _) = Durable::open(&dir).unwrap();
        // Sabotage the store behind the writer's back: its next insert fails.
        Connection::open(dir.join(DB_FILE)).unwrap().execute_batch("DROP TABLE ad_events").unwrap();
        let failed = block_on(durable.submit(vec![Change::Event(counted(1, "a", 1))]).unwrap().wait());
        assert!(matches!(failed, Err(DurableError::Commit(_))), "{failed:?}");
        let genre = vec![Change::Genre { id: 0, name: "jazz".into() }];
        let refused = durable.submit(genre).map_or_else(Err, |commit| block_on(commit.wait()));
        assert!(matches!(refused, Err(DurableError::WriterGone)), "{refused:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_token_key_is_made_once_and_kept() {
        let dir = temp_dir("key");
        std::fs::create_dir_all(&dir).unwrap();
        let first = token_key(&dir, || vec![7; 32]).unwrap();
        let again = token_key(&dir, || vec![9; 32]).unwrap();
        assert_eq!((first.clone(), again), (vec![7; 32], vec![7; 32]));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join(TOKEN_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
