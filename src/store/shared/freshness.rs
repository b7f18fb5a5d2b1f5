//! Which listeners this replica's copy is known to be current for: a decision about one of
//! them needs no read of the shared store. Every write to a listener's state publishes its id;
//! each replica subscribes and forgets what it hears. Nothing is trusted while the subscription
//! is down, and a copy is trusted for `TRUSTED_FOR` at most in any case.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::ListenerId;
use crate::store::FastMap;

use super::{Shared, SharedError};

/// The channel every write to a listener's profile or histories publishes the listener's id on.
pub(super) const CHANNEL: &str = "interlude:listener-changed";
/// Longest a copy is trusted without a read, whatever was (or was not) heard.
pub const TRUSTED_FOR: Duration = Duration::from_secs(30);
const TRUSTED_FOR_MS: u64 = TRUSTED_FOR.as_millis() as u64;
/// Listeners whose copies are trusted at once, at most: past it, new reads are not trusted
/// until the next sweep.
const CAPACITY: usize = 1 << 20;

/// The trusted copies. Cheap to clone.
#[derive(Clone)]
pub struct Freshness {
    inner: Arc<Inner>,
}

struct Inner {
    /// Trusted listeners, with when their copy was read (ms since `epoch`): a plain map read
    /// on every decision (a moka lookup cost 3× as much, measured), swept by `sweep`.
    trusted: FastMap<ListenerId, u64>,
    /// When each listener was last heard changed (a count of messages), kept long enough to
    /// outlast any read in flight.
    changed: FastMap<ListenerId, (u64, u64)>,
    heard: AtomicU64,
    subscribed: AtomicBool,
    epoch: Instant,
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freshness")
            .field("trusted", &self.inner.trusted.len())
            .field("subscribed", &self.inner.subscribed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                trusted: FastMap::default(),
                changed: FastMap::default(),
                heard: AtomicU64::new(0),
                subscribed: AtomicBool::new(false),
                epoch: Instant::now(),
            }),
        }
    }
}

/// Marks a read in flight: what was heard before it began.
#[derive(Clone, Copy, Debug)]
pub struct ReadStart(u64);

impl Freshness {
    /// Whether this replica's copy of `id` is current (no change heard since it was read).
    pub fn is_trusted(&self, id: &ListenerId) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
            && self.inner.trusted.get(id).is_some_and(|read_at| self.now_ms() - *read_at < TRUSTED_FOR_MS)
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Drops what is no longer trusted, and changes heard long enough ago that no read in
    /// flight can predate them (run every few seconds).
    pub fn sweep(&self) {
        let now = self.now_ms();
        self.inner.trusted.retain(|_, read_at| now - *read_at < TRUSTED_FOR_MS);
        self.inner.changed.retain(|_, (_, heard_at)| now - *heard_at < 2 * TRUSTED_FOR_MS);
    }

    /// Call before reading a listener from the shared store.
    pub fn read_start(&self) -> ReadStart {
        ReadStart(self.inner.heard.load(Ordering::Acquire))
    }

    /// Trusts the copy of `id` read since `start`, unless a change of it was heard meanwhile.
    pub fn read_done(&self, id: &ListenerId, start: ReadStart) {
        if !self.inner.subscribed.load(Ordering::Acquire) {
            return;
        }
        if self.inner.trusted.len() >= CAPACITY {
            return;
        }
        // Trusted first, then checked: a change heard in between is seen by one or the other.
        self.inner.trusted.insert(id.clone(), self.now_ms());
        if self.inner.changed.get(id).is_some_and(|at| at.0 >= start.0) {
            self.inner.trusted.remove(id);
        }
    }

    /// Forgets the copy of `id` (a change was heard).
    fn changed(&self, id: ListenerId) {
        let at = self.inner.heard.fetch_add(1, Ordering::AcqRel);
        self.inner.changed.insert(id.clone(), (at, self.now_ms()));
        self.inner.trusted.remove(&id);
    }

    /// Trusts nothing until subscribed again (messages may be lost meanwhile).
    fn unsubscribed(&self) {
        self.inner.subscribed.store(false, Ordering::Release);
        self.inner.trusted.clear();
    }
}

impl Shared {
    /// Publishes that listener `id` changed, on the connection of the write it follows (so it
    /// is sent after that write, and before the write is acknowledged).
    /// Sets the listener's bits in the filter of stored listeners first.
    pub(super) async fn publish_change(&self, id: &str) -> Result<(), SharedError> {
        self.mark_stored(id).await?;
        let _receivers: u64 = self.write(redis::cmd("PUBLISH").arg(CHANNEL).arg(id)).await?;
        Ok(())
    }

    /// Listens for listener changes until dropped, on one seed node after another; what this
    /// replica heard feeds `freshness`.
    pub async fn follow_changes(self) {
        use futures_util::StreamExt as _;
        let freshness = self.freshness.clone();
        let stored = self.stored.clone();
        // Whatever may be missed from here on: neither copies nor the stored-listener filter
        // are believed until subscribed (and loaded) again.
        let not_following = || {
            stored.unloaded();
            freshness.unsubscribed();
        };
        let mut node = 0;
        loop {
            let seed = &self.seeds[node % self.seeds.len()];
            node += 1;
            let subscribed = async {
                let client = redis::Client::open(format!("redis://{seed}/"))?;
                let mut pubsub = tokio::time::timeout(self.timeout * 4, client.get_async_pubsub())
                    .await
                    .map_err(|_| {
                    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "subscribing"))
                })??;
                pubsub.subscribe(CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(mut pubsub) => {
                    // Trusted from now on: whatever changes from here on is heard.
                    freshness.inner.subscribed.store(true, Ordering::Release);
                    tracing::debug!(node = %seed, "following listener changes");
                    // Loaded after subscribing, so that a listener first stored meanwhile is
                    // in the bitmaps or heard (messages wait in the subscription meanwhile).
                    for attempt in 1..=3 {
                        match self.load_stored().await {
                            Ok(()) => break,
                            Err(error) => {
                                tracing::warn!(%error, attempt, "stored listeners not loaded; reading every listener not trusted");
                                tokio::time::sleep(self.timeout).await;
                            }
                        }
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        match message.get_payload::<String>() {
                            Ok(id) => {
                                stored.insert(&id);
                                freshness.changed(ListenerId::from(id.as_str()));
                            }
                            Err(_) => not_following(),
                        }
                    }
                    not_following();
                    tracing::warn!(node = %seed, "listener changes no longer heard; reading every listener until subscribed again");
                }
                Err(error) => {
                    not_following();
                    tracing::debug!(%error, node = %seed, "cannot follow listener changes on this node");
                    tokio::time::sleep(self.timeout).await;
                }
            }
        }
    }

    /// Which listeners this replica's copies are current for.
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }
}
