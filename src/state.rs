//! `AppState`: the shared handles every edge's services work on, opening them from the durable
//! store, and the one write path (apply in memory, then commit before acknowledging).

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{self, Auth};
use crate::config::Config;
use crate::decision::Policy;
use crate::domain::{ArtistId, ListenerId, UnixMillis};
use crate::store::delivery::SuppressionPolicy;
use crate::store::durable::{self, Change, Durable, DurableError};
use crate::store::histories::{Histories, Pins};
use crate::store::shared::{self, Shared, SharedError};
use crate::store::{Catalog, Delivery, Listeners, StoreError, Vocabulary, catalog};
use crate::token::TokenSigner;

/// Everything the services share. Cheap to clone: every field is a shared handle.
#[derive(Clone, Debug)]
pub struct AppState {
    pub catalog: Catalog,
    pub listeners: Listeners,
    pub delivery: Delivery,
    pub vocabulary: Vocabulary,
    pub artists: Vocabulary<ArtistId>,
    pub signer: Arc<TokenSigner>,
    pub policy: Arc<Policy>,
    pub suppression: SuppressionPolicy,
    pub taste_half_life_ms: i64,
    /// The embedded store; None = memory only (or cluster mode).
    pub durable: Option<Durable>,
    /// Cluster mode: the shared store every replica reads and writes; None = single node.
    pub shared: Option<Shared>,
    /// Cluster mode: held from a write's apply until the shared store has it, so this
    /// replica's writes reach it in the order they were applied.
    shared_order: Arc<tokio::sync::Mutex<()>>,
    /// Who may call what.
    pub auth: Auth,
    /// How long applied event ids are remembered.
    pub dedupe_window: Duration,
    /// Held while a write is applied and its changes are queued (see `write`).
    write_order: Arc<std::sync::Mutex<()>>,
}

impl AppState {
    /// Empty state configured by `config`. Without a configured token key, a random one is
    /// drawn: tokens then do not survive a restart.
    pub fn new(config: &Config) -> Self {
        let key = config.token_key.clone().unwrap_or_else(random_token_key);
        Self::with_key(config, &key)
    }

    fn with_key(config: &Config, key: &[u8]) -> Self {
        let token_ttl_ms = config.token_ttl.as_millis() as i64;
        // Event ids are remembered a little longer than a token lives (clock skew).
        let dedupe_window = config.token_ttl + Duration::from_secs(600);
        Self {
            catalog: Catalog::default(),
            listeners: Listeners::default(),
            delivery: Delivery::new(dedupe_window),
            vocabulary: Vocabulary::default(),
            artists: Vocabulary::default(),
            signer: Arc::new(TokenSigner::new(key, token_ttl_ms)),
            policy: Arc::new(config.policy.clone()),
            suppression: config.suppression,
            taste_half_life_ms: config.taste_half_life.as_millis() as i64,
            durable: None,
            shared: None,
            shared_order: Arc::default(),
            // Without a configured admin token (tests that never call admin RPCs), a random one
            // nobody knows: admin RPCs are closed, never open.
            auth: Auth::new(
                &config.admin_token.as_ref().map_or_else(auth::generate_token, |t| t.0.clone()),
                config.decision_token.as_ref().map(|t| t.0.as_str()),
            ),
            dedupe_window,
            write_order: Arc::default(),
        }
    }

    /// State configured by `config`, with the embedded store opened and everything it holds
    /// loaded back. Also returns whether the store was empty (a first start). Without a
    /// configured token key, the key is kept in the data directory, so that tokens handed out
    /// before a restart still verify after it.
    pub fn open(config: &Config, now: UnixMillis) -> Result<(Self, bool), DurableError> {
        let Some(dir) = &config.data_dir else { return Ok((Self::new(config), true)) };
        let (durable, r) = Durable::open(dir)?;
        let key = match &config.token_key {
            Some(key) => key.clone(),
            None => durable::token_key(dir, random_token_key)?,
        };
        let mut state = Self::with_key(config, &key);
        let empty = r.campaigns.is_empty() && r.listener_count == 0 && r.genres.is_empty();
        for (id, name) in &r.genres {
            state.vocabulary.restore(*id, name).map_err(|e| DurableError::Corrupt(e.to_string()))?;
        }
        for (id, name) in &r.artists {
            state.artists.restore(*id, name).map_err(|e| DurableError::Corrupt(e.to_string()))?;
        }
        state.catalog.restore(r.campaigns);
        let reader = Durable::reader(dir);
        state.listeners = Listeners::cached(reader.clone(), config.profile_cache_bytes, r.listener_count);
        state.delivery = Delivery::with_histories(
            state.dedupe_window,
            Histories::cached(reader, config.history_cache_bytes),
        );
        for (alias, id) in r.aliases {
            state.listeners.restore_alias(&alias, id);
        }
        state.delivery.restore(
            r.counters,
            r.events,
            r.legacy_events,
            state.dedupe_window.as_millis() as i64,
            now,
        );
        for (fingerprint, at) in r.erased {
            state.delivery.erased(fingerprint, at);
        }
        for fingerprint in r.plays_counted {
            state.delivery.admit_play(fingerprint, now);
        }
        // Not awaited: nothing acknowledged depends on it.
        drop(durable.submit(vec![state.purge(now)])?);
        state.durable = Some(durable);
        Ok((state, empty))
    }

    /// Cluster mode: state configured by `config` over the shared store, with the token key,
    /// the vocabularies, the campaigns and the aliases read from it (profiles, histories and
    /// counters are read as they are needed). Also returns whether the store held no campaign.
    pub async fn open_shared(config: &Config, store: Shared) -> Result<(Self, bool), SharedError> {
        let key = match &config.token_key {
            Some(key) => key.clone(),
            None => store.token_key(random_token_key).await?,
        };
        let mut state = Self::with_key(config, &key);
        let corrupt = |e: StoreError| SharedError::Corrupt(e.to_string());
        let genres = store.terms_from(shared::GENRES, 0).await?;
        state.vocabulary.share(store.clone(), shared::GENRES, genres).map_err(corrupt)?;
        let artists = store.terms_from(shared::ARTISTS, 0).await?;
        state.artists.share(store.clone(), shared::ARTISTS, artists).map_err(corrupt)?;
        let campaigns: Vec<crate::domain::Campaign> = store
            .entries(shared::CAMPAIGNS)
            .await?
            .values()
            .map(|doc| serde_json::from_str(doc))
            .collect::<Result<_, _>>()?;
        let empty = campaigns.is_empty();
        state.catalog.restore(campaigns);
        state.listeners = Listeners::cached(Arc::new(store.clone()), config.profile_cache_bytes, 0);
        state.delivery = Delivery::with_histories(
            state.dedupe_window,
            Histories::cached(Arc::new(store.clone()), config.history_cache_bytes),
        );
        for (alias, id) in store.entries(shared::ALIASES).await? {
            state.listeners.restore_alias(&alias, ListenerId::from(id.as_str()));
        }
        state.shared = Some(store);
        Ok((state, empty))
    }

    /// Cluster mode: reads campaigns `ids` from the shared store into this replica's catalog now,
    /// ahead of its next poll (events of a campaign created on another replica a moment ago).
    pub async fn take_up_campaigns(&self, store: &Shared, mut ids: Vec<String>) -> Result<(), StoreError> {
        ids.sort();
        ids.dedup();
        // A campaign may name a genre interned since this replica last looked.
        crate::cluster::catch_up_vocabularies(self, store).await?;
        let found = store.campaigns(&ids).await?;
        if !found.is_empty() {
            let catalog = self.catalog.clone();
            off_runtime(move || {
                catalog.restore(found);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Cluster mode: replaces this replica's copy of listener `id` (profile and histories)
    /// with the shared store's. Holds this replica placed stay, unless the store says their
    /// impression was heard or given back meanwhile.
    pub async fn refresh_listener(&self, store: &Shared, id: &ListenerId) -> Result<(), SharedError> {
        let start = store.freshness().read_start();
        let fresh = store.load_listener(id.as_str()).await?;
        self.listeners.install(id.as_str(), fresh.profile);
        let histories = &fresh.histories;
        self.delivery.install(id, histories.account(), |ad| histories.released(ad));
        store.freshness().read_done(id, start);
        Ok(())
    }

    /// Gives listener `id` an empty profile and histories where this replica has no copy (a
    /// copy it has keeps the holds of ads it decided and were not played yet).
    fn install_if_absent(&self, id: &ListenerId) {
        if !self.listeners.is_resident(id.as_str()) {
            self.listeners.install(id.as_str(), None);
        }
        if !self.delivery.is_resident(id) {
            self.delivery.install(id, Default::default(), |_| false);
        }
    }

    /// The counters of `campaign` as of `now`: in cluster mode the shared store's, across
    /// every replica (exact, where the replica's copy trails by up to a few polls).
    pub async fn counters(
        &self,
        campaign: &crate::domain::Campaign,
        now: UnixMillis,
    ) -> Result<crate::store::delivery::CampaignCounters, StoreError> {
        let Some(store) = &self.shared else { return Ok(self.delivery.counters(&campaign.id, now)) };
        let counters = store.counters(campaign).await?;
        self.delivery.set_counters(campaign.id.clone(), counters);
        Ok(self.delivery.counters(&campaign.id, now))
    }

    /// Brings the profile and the histories of the listener `alias` names into memory, reading
    /// the store on a blocking thread for what is not: a miss must not stall the runtime's
    /// thread, which serves every other RPC (health included) meanwhile.
    pub async fn warm(&self, alias: &str) -> Result<(), StoreError> {
        if let Some(store) = &self.shared {
            if !alias.is_empty() {
                // The shared store is the truth; without it, decide on this replica's copy.
                let id = self.listeners.canonical(alias);
                if store.freshness().is_trusted(&id) {
                    return Ok(());
                }
                let stored = store.stored_listeners().may_hold(id.as_str());
                crate::telemetry::record_shared_listener_read(stored);
                if !stored {
                    // Never stored by any replica: nothing to read.
                    self.install_if_absent(&id);
                    return Ok(());
                }
                if let Err(error) = self.refresh_listener(store, &id).await {
                    crate::telemetry::record_shared_fallback();
                    tracing::warn!(%error, listener_id = %id, "deciding on this replica's copy of the listener");
                    // Without a copy, the listener is decided for as one never seen (the
                    // engine must not read the store itself): contextually, no caps known.
                    self.install_if_absent(&id);
                }
            }
            return Ok(());
        }
        if !self.persists() || alias.is_empty() {
            return Ok(());
        }
        let id = self.listeners.canonical(alias);
        if self.listeners.is_resident(id.as_str()) && self.delivery.is_resident(&id) {
            return Ok(());
        }
        let state = self.clone();
        off_runtime(move || {
            state.listeners.get(id.as_str())?;
            state.delivery.load(&id)
        })
        .await
    }

    /// Brings the profiles of `aliases` into memory (see `warm`), before a write changes them.
    pub async fn warm_profiles<'a>(
        &self,
        aliases: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        if let Some(store) = &self.shared {
            // A write starts from the shared store's copy, never from a stale local one.
            let ids: Vec<ListenerId> = aliases.into_iter().map(|a| self.listeners.canonical(a)).collect();
            for id in &ids {
                self.refresh_listener(store, id).await?;
            }
            return Ok(());
        }
        if !self.persists() {
            return Ok(());
        }
        let mut missing: Vec<ListenerId> = aliases
            .into_iter()
            .map(|a| self.listeners.canonical(a))
            .filter(|id| !self.listeners.is_resident(id.as_str()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        missing.sort();
        missing.dedup();
        let listeners = self.listeners.clone();
        off_runtime(move || missing.iter().try_for_each(|id| listeners.get(id.as_str()).map(drop))).await
    }

    /// Pins the histories of `listeners` in memory for a write that changes them (hold the
    /// pins until it is committed), reading the store off the runtime for those not in memory.
    pub async fn pin_histories(
        &self,
        listeners: impl IntoIterator<Item = ListenerId>,
    ) -> Result<Pins, StoreError> {
        // Histories are cached over the store exactly when there is one (`open`); resident
        // ones need no pins, and RecordEvents in memory mode need not collect its listeners.
        if !self.persists() {
            return self.delivery.pin([]);
        }
        let mut ids: Vec<ListenerId> = listeners.into_iter().collect();
        ids.sort();
        ids.dedup();
        // Cluster mode: the callers (admin writes) read the listeners from the shared store
        // with `warm_profiles` just before; a history not resident is read through it below.
        if ids.iter().all(|id| self.delivery.is_resident(id)) {
            return self.delivery.pin(ids);
        }
        let delivery = self.delivery.clone();
        off_runtime(move || delivery.pin(ids)).await
    }

    /// Publishes the catalog up to `version` (see `Catalog::publish`), rebuilding it on a
    /// blocking thread: a rebuild costs time in proportion to the catalog, and the runtime's
    /// thread serves every decision meanwhile.
    pub async fn publish_catalog(&self, version: catalog::Version) -> Result<(), StoreError> {
        let catalog = self.catalog.clone();
        off_runtime(move || {
            catalog.publish(version);
            Ok(())
        })
        .await
    }

    /// Periodic upkeep at `now`: purges event ids and erasure marks older than every token
    /// from the store, and drops histories that can no longer matter. Returns once the purge
    /// is committed.
    pub async fn upkeep(&self, now: UnixMillis) -> Result<Upkept, StoreError> {
        let histories = self.delivery.sweep(now);
        if let Some(durable) = &self.durable {
            durable
                .submit(vec![self.purge(now)])
                .map_err(StoreError::from)?
                .wait()
                .await
                .map_err(StoreError::from)?;
        }
        Ok(Upkept { histories_dropped: histories })
    }

    /// The purge at `now` of what the store keeps for dedupe (event ids, erasure marks, play
    /// ids): it would otherwise grow forever, and what is older than the window is dead.
    fn purge(&self, now: UnixMillis) -> Change {
        Change::PurgeEvents { before: UnixMillis(now.0 - self.dedupe_window.as_millis() as i64) }
    }

    /// Whether writes are made durable: without a store, `write` drops the changes it is
    /// given, so a hot write path can skip taking its snapshots.
    pub fn persists(&self) -> bool {
        self.durable.is_some() || self.shared.is_some()
    }

    /// Applies a write to memory and makes it durable: `apply` runs under the write-order lock
    /// and returns its result with the changes to persist (snapshots of what it changed), which
    /// are queued before the lock is released — so the store receives snapshots in the order
    /// they were taken, and a newer one is never overwritten by an older one. Returns once the
    /// changes are committed. Without a store, only applies.
    pub async fn write<T, E: From<DurableError> + From<StoreError>>(
        &self,
        apply: impl FnOnce() -> Result<(T, Vec<Change>), E>,
    ) -> Result<T, E> {
        if let Some(store) = &self.shared {
            return self.write_shared(store, apply).await;
        }
        let (value, commit, persisted) = {
            // A poisoned lock guards no data; the order it gives still holds.
            let _order = self.write_order.lock().unwrap_or_else(|e| e.into_inner());
            let (value, mut changes) = apply()?;
            let Some(durable) = &self.durable else { return Ok(value) };
            let (from, genres) = self.vocabulary.pending();
            let (artists_from, artists) = self.artists.pending();
            let persisted = (from + genres.len(), artists_from + artists.len());
            let mut all: Vec<Change> =
                genres.into_iter().map(|(id, name)| Change::Genre { id, name }).collect();
            all.extend(artists.into_iter().map(|(id, name)| Change::Artist { id, name }));
            // What the profile cache keeps aside until it is committed.
            let profiles: Vec<ProfileWrite> = changes
                .iter()
                .filter_map(|c| match c {
                    Change::Listener(p) => Some(ProfileWrite::Saved(p.clone())),
                    Change::ForgetListener(id) => Some(ProfileWrite::Erased(id.clone())),
                    _ => None,
                })
                .collect();
            all.append(&mut changes);
            (value, durable.submit(all)?, (persisted, profiles))
        };
        commit.wait().await?;
        let ((genres, artists), profiles) = persisted;
        self.vocabulary.mark_persisted(genres);
        self.artists.mark_persisted(artists);
        for write in profiles {
            match write {
                ProfileWrite::Saved(p) => self.listeners.committed(&p),
                ProfileWrite::Erased(id) => self.listeners.erasure_committed(&id),
            }
        }
        Ok(value)
    }

    /// `write` in cluster mode: applies, then stores the changes in the shared store in the
    /// order applied, and answers once a replica of each master holds them. A profile the
    /// shared store refused is undone here by reading the store's copy again; a refused
    /// campaign or alias change stays in this replica's copy until the store's next change of
    /// it (the caller was told UNAVAILABLE and retries).
    async fn write_shared<T, E: From<StoreError>>(
        &self,
        store: &Shared,
        apply: impl FnOnce() -> Result<(T, Vec<Change>), E>,
    ) -> Result<T, E> {
        let _order = self.shared_order.lock().await;
        let (value, changes) = {
            let _order = self.write_order.lock().unwrap_or_else(|e| e.into_inner());
            apply()?
        };
        let stored = crate::cluster::store_changes(store, &changes).await;
        for change in &changes {
            match change {
                Change::Listener(p) => {
                    self.listeners.committed(p);
                    if stored.is_err() {
                        // Back to the truth: what was applied here never reached it.
                        drop(self.refresh_listener(store, &p.id).await);
                    }
                }
                Change::ForgetListener(id) => self.listeners.erasure_committed(id),
                _ => {}
            }
        }
        stored.map_err(|e| E::from(StoreError::from(e)))?;
        Ok(value)
    }

    /// Persists everything held in memory (after loading the demo catalog into a fresh store).
    pub async fn persist_all(&self) -> Result<(), StoreError> {
        let mut changes: Vec<Change> =
            self.catalog.snapshot().campaigns().iter().map(|c| Change::Campaign(c.clone())).collect();
        changes.extend(self.listeners.unsaved().into_iter().map(Change::Listener));
        changes.extend(
            self.listeners
                .all_aliases()
                .into_iter()
                .map(|(alias, listener)| Change::Alias { alias, listener }),
        );
        self.write(|| Ok::<_, StoreError>(((), changes))).await
    }
}

/// A profile change on its way to the store.
enum ProfileWrite {
    Saved(Arc<crate::domain::ListenerProfile>),
    Erased(crate::domain::ListenerId),
}

/// A fresh random 256-bit impression-token key.
fn random_token_key() -> Vec<u8> {
    use rand::RngCore as _;
    let mut key = vec![0u8; 32];
    rand::rng().fill_bytes(&mut key);
    key
}

/// What one `upkeep` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upkept {
    /// Listener accounts whose histories were dropped from memory.
    pub histories_dropped: usize,
}

/// How often the server runs `AppState::upkeep`.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Runs `f` (which reads the store) on tokio's blocking pool.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("a store read did not finish: {e}")))?
}
