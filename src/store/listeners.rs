//! Listener profiles and the aliases that resolve to them.
//!
//! Without a durable store every profile is resident. With one, profiles live in a bounded
//! cache (moka, weighed in bytes) over the store and are loaded on a miss; aliases stay
//! resident (one entry per extra alias, not per listener).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{FastHash, FastMap, StoreError, Stripes};
use crate::domain::{ArtistId, GenreId, ListenerId, ListenerProfile, UnixMillis};

/// Where profiles that are not in memory are read from: the durable store.
pub trait ProfileSource: Send + Sync + std::fmt::Debug {
    /// The stored profile with canonical id `id`.
    fn load(&self, id: &str) -> Result<Option<ListenerProfile>, StoreError>;
}

/// Resident bytes a cache entry costs beyond the profile itself (moka's bookkeeping, measured
/// with `cargo bench --bench stores`), so the configured budget is close to real memory.
pub const CACHE_ENTRY_OVERHEAD: usize = 240;

/// Profiles by canonical id, and every other alias → canonical id (a canonical id is not
/// repeated in the alias map: that would cost a map entry per listener). Cheap to clone:
/// clones share one store.
///
/// Profiles are immutable `Arc`s replaced on write (copy-on-write), so a decision holds no map
/// guard while it runs. Writes are serialised by the caller (`AppState::write`).
#[derive(Clone, Debug, Default)]
pub struct Listeners {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    aliases: FastMap<Box<str>, ListenerId>,
    /// The aliases of each listener: the inverse of `aliases`, kept with it, so that the admin
    /// calls about one listener (its aliases, forget, merge) cost what that listener holds,
    /// not a walk of every alias.
    aliases_by_listener: FastMap<ListenerId, Vec<Box<str>>>,
    profiles: Profiles,
    /// Listeners known, resident or not.
    count: AtomicUsize,
}

#[derive(Debug)]
enum Profiles {
    /// No store behind: every profile in memory.
    Resident(FastMap<ListenerId, Arc<ListenerProfile>>),
    /// A bounded cache over the store.
    Cached(Cached),
}

impl Default for Profiles {
    fn default() -> Self {
        Profiles::Resident(FastMap::default())
    }
}

/// Cached profiles; `None` = known not to exist (so unknown ids cost one read, not one each).
struct Cached {
    cache: moka::sync::Cache<ListenerId, Option<Arc<ListenerProfile>>, FastHash>,
    /// Written but not yet committed (`None` = erased): consulted before the store on a miss,
    /// so a profile evicted between its write and its commit is not read back stale.
    pending: FastMap<ListenerId, Option<Arc<ListenerProfile>>>,
    source: Arc<dyn ProfileSource>,
    /// A load and a write of the same id never interleave: a load could otherwise put a
    /// profile read before the write back into the cache after it.
    stripes: Stripes,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("entries", &self.cache.entry_count())
            .field("weighed_bytes", &self.cache.weighted_size())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Cached {
    /// The profile of canonical id `id`; the caller holds its stripe.
    fn load_locked(&self, id: &str) -> Result<Option<Arc<ListenerProfile>>, StoreError> {
        if let Some(hit) = self.cache.get(id) {
            return Ok(hit);
        }
        let value = match self.pending.get(id) {
            Some(pending) => pending.clone(),
            None => self.source.load(id)?.map(Arc::new),
        };
        let key = value.as_ref().map_or_else(|| ListenerId::from(id), |p| p.id.clone());
        self.cache.insert(key, value.clone());
        Ok(value)
    }

    fn put(&self, id: &ListenerId, value: Option<Arc<ListenerProfile>>) {
        self.pending.insert(id.clone(), value.clone());
        self.cache.insert(id.clone(), value);
    }
}

/// One play, validated and with interned genres.
#[derive(Clone, Debug)]
pub struct Play {
    pub listener: Box<str>,
    pub member: Box<str>,
    pub genres: Vec<GenreId>,
    pub artist: Option<ArtistId>,
    pub played_at: UnixMillis,
    pub seconds_played: u32,
}

impl Listeners {
    /// A store whose profiles live in a cache of about `capacity_bytes` over `source`, which
    /// holds `known` listeners.
    pub fn cached(source: Arc<dyn ProfileSource>, capacity_bytes: u64, known: usize) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_, v: &Option<Arc<ListenerProfile>>| {
                let bytes = CACHE_ENTRY_OVERHEAD + v.as_ref().map_or(0, |p| p.approx_bytes());
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build_with_hasher(FastHash::default());
        let cached = Cached { cache, pending: FastMap::default(), source, stripes: Stripes::new(64) };
        Self {
            inner: Arc::new(Inner {
                aliases: FastMap::default(),
                aliases_by_listener: FastMap::default(),
                profiles: Profiles::Cached(cached),
                count: AtomicUsize::new(known),
            }),
        }
    }

    /// The canonical id `alias` names, from the resident alias map alone (reads no profile):
    /// the alias's listener, or `alias` itself (a canonical id is never an alias).
    pub fn canonical(&self, alias: &str) -> ListenerId {
        self.inner.aliases.get(alias).map_or_else(|| ListenerId::from(alias), |id| id.clone())
    }

    /// Whether the profile (or the absence of one) of canonical id `id` is in memory: `get`
    /// will not read the store.
    pub fn is_resident(&self, id: &str) -> bool {
        match &self.inner.profiles {
            Profiles::Resident(_) => true,
            Profiles::Cached(cached) => cached.cache.contains_key(id) || cached.pending.contains_key(id),
        }
    }

    /// The canonical id `alias` resolves to.
    pub fn resolve(&self, alias: &str) -> Result<Option<ListenerId>, StoreError> {
        Ok(self.get(alias)?.map(|p| p.id.clone()))
    }

    /// The profile of the listener `alias` resolves to.
    pub fn get(&self, alias: &str) -> Result<Option<Arc<ListenerProfile>>, StoreError> {
        // Most callers name the canonical id: with every profile resident, look there first.
        if let Profiles::Resident(map) = &self.inner.profiles
            && let Some(profile) = map.get(alias)
        {
            return Ok(Some(profile.clone()));
        }
        // A canonical id is never an alias, so the resident alias map decides before the cache
        // (whose misses read the disk).
        match self.inner.aliases.get(alias) {
            Some(id) => {
                let id = id.clone();
                self.profile(id.as_str())
            }
            None => self.profile(alias),
        }
    }

    /// The profile with canonical id `id`.
    fn profile(&self, id: &str) -> Result<Option<Arc<ListenerProfile>>, StoreError> {
        match &self.inner.profiles {
            Profiles::Resident(map) => Ok(map.get(id).map(|p| p.clone())),
            Profiles::Cached(cached) => {
                if let Some(hit) = cached.cache.get(id) {
                    return Ok(hit);
                }
                let _stripe = cached.stripes.lock(id);
                cached.load_locked(id)
            }
        }
    }

    /// All aliases of a canonical id, sorted (admin reads only: walks the alias table).
    pub fn aliases_of(&self, id: &ListenerId) -> Vec<String> {
        let mut out: Vec<String> = self
            .inner
            .aliases_by_listener
            .get(id)
            .map(|aliases| aliases.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Applies `update` to the profile `alias` resolves to, creating it (with `alias` as its
    /// canonical id) when unknown. Returns the new profile and whether it was created.
    pub fn update(
        &self,
        alias: &str,
        update: impl FnOnce(&mut ListenerProfile),
    ) -> Result<(Arc<ListenerProfile>, bool), StoreError> {
        let id = match self.inner.aliases.get(alias) {
            Some(id) => id.clone(),
            None => ListenerId::from(alias),
        };
        let replace = |current: Option<Arc<ListenerProfile>>| {
            let created = current.is_none();
            let mut profile = match current {
                Some(p) => ListenerProfile::clone(&p),
                None => ListenerProfile::new(id.clone()),
            };
            update(&mut profile);
            profile.shrink_to_fit();
            if created {
                self.inner.count.fetch_add(1, Ordering::Relaxed);
            }
            (Arc::new(profile), created)
        };
        match &self.inner.profiles {
            Profiles::Resident(map) => {
                // Read, then replace: writes are serialised by the caller.
                let (profile, created) = replace(map.get(&id).map(|p| p.clone()));
                map.insert(id, profile.clone());
                Ok((profile, created))
            }
            Profiles::Cached(cached) => {
                let _stripe = cached.stripes.lock(id.as_str());
                let (profile, created) = replace(cached.load_locked(id.as_str())?);
                cached.put(&profile.id, Some(profile.clone()));
                Ok((profile, created))
            }
        }
    }

    /// Folds plays into the members' tastes. Plays of unknown listeners create them. Returns
    /// every profile the plays changed.
    pub fn record_plays(
        &self,
        plays: &[Play],
        half_life_ms: i64,
    ) -> Result<Vec<Arc<ListenerProfile>>, StoreError> {
        let mut changed = Vec::new();
        // One copy-on-write per run of plays of the same listener, not one per play.
        for run in plays.chunk_by(|a, b| a.listener == b.listener) {
            let (profile, _) = self.update(&run[0].listener, |p| {
                for play in run {
                    let taste = p.member_mut(&play.member);
                    taste.record_play(
                        &play.genres,
                        play.artist,
                        play.played_at,
                        play.seconds_played,
                        half_life_ms,
                    );
                }
            })?;
            changed.push(profile);
        }
        Ok(changed)
    }

    /// Adds `alias` for the listener `existing` resolves to.
    pub fn link(&self, existing: &str, alias: &str) -> Result<Arc<ListenerProfile>, StoreError> {
        let profile = self.get(existing)?.ok_or_else(|| not_found(existing))?;
        // An alias must not be another listener's canonical id.
        if self.inner.aliases.get(alias).is_none()
            && let Some(owner) = self.profile(alias)?
        {
            if owner.id != profile.id {
                return Err(StoreError::AliasTaken { alias: alias.into(), owner: owner.id.to_string() });
            }
            return Ok(profile);
        }
        match self.inner.aliases.entry(alias.into()) {
            dashmap::Entry::Occupied(e) if *e.get() != profile.id => {
                return Err(StoreError::AliasTaken { alias: alias.into(), owner: e.get().to_string() });
            }
            dashmap::Entry::Occupied(_) => {}
            dashmap::Entry::Vacant(e) => {
                e.insert(profile.id.clone());
                self.inner.aliases_by_listener.entry(profile.id.clone()).or_default().push(alias.into());
            }
        }
        Ok(profile)
    }

    /// Removes the profile of canonical id `id` (not its aliases) and returns it.
    fn take(&self, id: &ListenerId) -> Result<Option<Arc<ListenerProfile>>, StoreError> {
        let taken = match &self.inner.profiles {
            Profiles::Resident(map) => map.remove(id).map(|(_, p)| p),
            Profiles::Cached(cached) => {
                let _stripe = cached.stripes.lock(id.as_str());
                let current = cached.load_locked(id.as_str())?;
                cached.put(id, None);
                current
            }
        };
        if taken.is_some() {
            self.inner.count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(taken)
    }

    /// Erases the listener `alias` resolves to: its profile and every alias. Returns its id.
    pub fn forget(&self, alias: &str) -> Result<ListenerId, StoreError> {
        let id = self.resolve(alias)?.ok_or_else(|| not_found(alias))?;
        self.take(&id)?;
        if let Some((_, aliases)) = self.inner.aliases_by_listener.remove(&id) {
            for alias in aliases {
                self.inner.aliases.remove(&alias);
            }
        }
        Ok(id)
    }

    /// Folds the listener `from` resolves to into the one `into` resolves to: tastes per member,
    /// signals (the newer assertion wins), attributes `into` lacks, and every alias. Returns the
    /// merged profile and the id that was folded in (now an alias).
    pub fn merge(
        &self,
        into: &str,
        from: &str,
        half_life_ms: i64,
    ) -> Result<(Arc<ListenerProfile>, ListenerId), StoreError> {
        let into_id = self.resolve(into)?.ok_or_else(|| not_found(into))?;
        let from_id = self.resolve(from)?.ok_or_else(|| not_found(from))?;
        if into_id == from_id {
            return Err(StoreError::SelfMerge(into.to_owned()));
        }
        // Read both before changing anything: a merge that cannot read one changes nothing.
        self.get(into_id.as_str())?.ok_or_else(|| not_found(into))?;
        let old = self.take(&from_id)?.ok_or_else(|| not_found(from))?;
        let merged = self.update(into_id.as_str(), |p| {
            for (member_id, taste) in old.members() {
                p.member_mut(member_id).absorb(taste, half_life_ms);
            }
            let (mine, theirs) = (p.details().clone(), old.details());
            let d = p.details_mut();
            for signal in &theirs.signals {
                match d.signals.iter_mut().find(|s| s.name == signal.name) {
                    Some(s) => s.asserted_at = s.asserted_at.max(signal.asserted_at),
                    None => d.signals.push(signal.clone()),
                }
            }
            d.age_bracket = mine.age_bracket.or(theirs.age_bracket);
            if mine.home.is_none() {
                d.home.clone_from(&theirs.home);
            }
            if mine.language.is_none() {
                d.language.clone_from(&theirs.language);
            }
            let combined = p.consent.combined(old.consent);
            if combined != p.consent {
                // The other profile's choice decided it (a denial there, or the only choice).
                p.consent = combined;
                p.details_mut().consent_at = theirs.consent_at;
            }
        });
        let (profile, _) = match merged {
            Ok(merged) => merged,
            Err(e) => {
                // Put the folded profile back as it was: a failed merge leaves both whole.
                let _ = self.update(from_id.as_str(), |p| *p = (*old).clone());
                return Err(e);
            }
        };
        // Only now, with the merge done, do the folded-in id and its aliases point at `into`.
        let mut moved = self.inner.aliases_by_listener.remove(&from_id).map(|(_, a)| a).unwrap_or_default();
        for alias in &moved {
            self.inner.aliases.insert(alias.clone(), into_id.clone());
        }
        // The folded-in id keeps working, as an alias now.
        self.inner.aliases.insert(from_id.as_str().into(), into_id.clone());
        moved.push(from_id.as_str().into());
        self.inner.aliases_by_listener.entry(into_id.clone()).or_default().extend(moved);
        Ok((profile, from_id))
    }

    /// Replaces what is cached of canonical `id` with `profile` as just read from the shared
    /// store (cluster mode), unless this replica has a write of it on its way there.
    pub fn install(&self, id: &str, profile: Option<ListenerProfile>) {
        if let Profiles::Cached(cached) = &self.inner.profiles {
            let _stripe = cached.stripes.lock(id);
            if !cached.pending.contains_key(id) {
                cached.cache.insert(ListenerId::from(id), profile.map(Arc::new));
            }
        }
    }

    /// Records that `profile` is committed to the store: it need no longer be kept aside.
    pub fn committed(&self, profile: &Arc<ListenerProfile>) {
        if let Profiles::Cached(cached) = &self.inner.profiles {
            cached.pending.remove_if(&profile.id, |_, p| p.as_ref().is_some_and(|p| Arc::ptr_eq(p, profile)));
        }
    }

    /// Records that the erasure of `id` is committed to the store.
    pub fn erasure_committed(&self, id: &ListenerId) {
        if let Profiles::Cached(cached) = &self.inner.profiles {
            cached.pending.remove_if(id, |_, p| p.is_none());
        }
    }

    /// Drops `alias` (cluster mode: another replica erased its listener).
    pub fn drop_alias(&self, alias: &str) {
        if let Some((_, listener)) = self.inner.aliases.remove(alias)
            && let Some(mut list) = self.inner.aliases_by_listener.get_mut(&listener)
        {
            list.retain(|a| &**a != alias);
        }
    }

    /// Puts back an alias read from the durable store.
    pub fn restore_alias(&self, alias: &str, listener: ListenerId) {
        let previous = self.inner.aliases.insert(alias.into(), listener.clone());
        if previous.as_ref() == Some(&listener) {
            return;
        }
        if let Some(previous) = previous
            && let Some(mut list) = self.inner.aliases_by_listener.get_mut(&previous)
        {
            list.retain(|a| &**a != alias);
        }
        self.inner.aliases_by_listener.entry(listener).or_default().push(alias.into());
    }

    /// Every profile the store does not hold yet: all of them without a store, the written
    /// but uncommitted ones with one (the demo's snapshot into a fresh store).
    pub fn unsaved(&self) -> Vec<Arc<ListenerProfile>> {
        match &self.inner.profiles {
            Profiles::Resident(map) => map.iter().map(|e| e.value().clone()).collect(),
            Profiles::Cached(cached) => cached.pending.iter().filter_map(|e| e.value().clone()).collect(),
        }
    }

    /// Every (alias, canonical id).
    pub fn all_aliases(&self) -> Vec<(String, ListenerId)> {
        self.inner.aliases.iter().map(|e| (e.key().to_string(), e.value().clone())).collect()
    }

    /// Number of listeners, resident or not.
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Whether there are no listeners.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Profiles in memory and the bytes the cache weighs them at (None without a cache).
    pub fn resident(&self) -> (u64, Option<u64>) {
        match &self.inner.profiles {
            Profiles::Resident(map) => (map.len() as u64, None),
            Profiles::Cached(cached) => {
                cached.cache.run_pending_tasks();
                (cached.cache.entry_count(), Some(cached.cache.weighted_size()))
            }
        }
    }
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound { kind: "listener", id: id.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AgeBracket;
    use std::sync::Mutex;

    #[test]
    fn aliases_resolve_to_one_profile() {
        let store = Listeners::default();
        store.update("acct-1", |p| p.details_mut().age_bracket = Some(AgeBracket::Age25To34)).unwrap();
        store.link("acct-1", "email:abc").unwrap();
        assert_eq!(store.get("email:abc").unwrap().unwrap().id.as_str(), "acct-1");
        assert_eq!(store.aliases_of(&"acct-1".into()), vec!["email:abc".to_string()]);
        store.update("other", |_| {}).unwrap();
        assert!(matches!(store.link("other", "email:abc"), Err(StoreError::AliasTaken { .. })));
        assert!(matches!(store.link("other", "acct-1"), Err(StoreError::AliasTaken { .. })));
        assert_eq!(store.len(), 2);
        store.forget("email:abc").unwrap();
        assert!(store.get("acct-1").unwrap().is_none());
        assert!(store.resolve("email:abc").unwrap().is_none());
        assert_eq!(store.len(), 1);
    }

    /// A stand-in for the durable store: what was "committed", and how often it was read.
    #[derive(Debug, Default)]
    struct Disk {
        rows: Mutex<std::collections::HashMap<String, ListenerProfile>>,
        reads: AtomicUsize,
    }

    impl ProfileSource for Disk {
        fn load(&self, id: &str) -> Result<Option<ListenerProfile>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Ok(self.rows.lock().unwrap().get(id).cloned())
        }
    }

    impl Disk {
        fn commit(&self, store: &Listeners, p: &Arc<ListenerProfile>) {
            self.rows.lock().unwrap().insert(p.id.to_string(), ListenerProfile::clone(p));
            store.committed(p);
        }
    }

    fn aged(store: &Listeners, id: &str, age: AgeBracket) -> Arc<ListenerProfile> {
        store.update(id, |p| p.details_mut().age_bracket = Some(age)).unwrap().0
    }

    /// A cache that holds about one profile.
    fn tiny_cache(disk: &Arc<Disk>) -> Listeners {
        Listeners::cached(disk.clone(), CACHE_ENTRY_OVERHEAD as u64 + 300, 0)
    }

    fn flush(store: &Listeners) {
        if let Profiles::Cached(c) = &store.inner.profiles {
            c.cache.run_pending_tasks();
        }
    }

    #[test]
    fn profiles_beyond_the_cache_are_loaded_from_the_store() {
        let disk = Arc::new(Disk::default());
        let store = tiny_cache(&disk);
        for i in 0..50 {
            let p = aged(&store, &format!("l{i}"), AgeBracket::Age25To34);
            disk.commit(&store, &p);
        }
        flush(&store);
        let (resident, _) = store.resident();
        assert!(resident < 10, "the cache is bounded: {resident} resident");
        assert_eq!(store.len(), 50);
        let reads = disk.reads.load(Ordering::Relaxed);
        for i in 0..50 {
            let p = store.get(&format!("l{i}")).unwrap().expect("every listener is still there");
            assert_eq!(p.details().age_bracket, Some(AgeBracket::Age25To34));
        }
        assert!(disk.reads.load(Ordering::Relaxed) > reads, "evicted profiles came from the store");
    }

    #[test]
    fn a_profile_evicted_before_its_commit_is_not_read_back_stale() {
        let disk = Arc::new(Disk::default());
        let store = tiny_cache(&disk);
        let first = aged(&store, "nina", AgeBracket::Age25To34);
        disk.commit(&store, &first);
        // Written, not yet committed, then pushed out of the cache by other listeners.
        let newer = aged(&store, "nina", AgeBracket::Age35To44);
        for i in 0..50 {
            aged(&store, &format!("other{i}"), AgeBracket::Age18To24);
        }
        flush(&store);
        let read = store.get("nina").unwrap().unwrap();
        assert_eq!(read.details().age_bracket, Some(AgeBracket::Age35To44), "not the stale stored one");
        // Building on what was read keeps the uncommitted write.
        let (merged, created) =
            store.update("nina", |p| p.details_mut().language = Some("de".into())).unwrap();
        assert!(!created);
        assert_eq!(merged.details().age_bracket, Some(AgeBracket::Age35To44));
        disk.commit(&store, &newer);
        disk.commit(&store, &merged);
    }

    #[test]
    fn erasure_holds_before_and_after_its_commit() {
        let disk = Arc::new(Disk::default());
        let store = tiny_cache(&disk);
        let p = aged(&store, "gone", AgeBracket::Age25To34);
        disk.commit(&store, &p);
        store.forget("gone").unwrap();
        for i in 0..50 {
            aged(&store, &format!("other{i}"), AgeBracket::Age18To24);
        }
        flush(&store);
        // The row is still on "disk" (uncommitted erasure): the tombstone must win.
        assert!(store.get("gone").unwrap().is_none());
        disk.rows.lock().unwrap().remove("gone");
        store.erasure_committed(&"gone".into());
        assert!(store.get("gone").unwrap().is_none());
        let (_, created) = store.update("gone", |_| {}).unwrap();
        assert!(created, "a forgotten listener is unknown");
    }

    #[test]
    fn unknown_listeners_are_read_once() {
        let disk = Arc::new(Disk::default());
        let store = Listeners::cached(disk.clone(), 1 << 20, 0);
        for _ in 0..10 {
            assert!(store.get("stranger").unwrap().is_none());
        }
        assert_eq!(disk.reads.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn concurrent_reads_never_undo_a_write() {
        let disk = Arc::new(Disk::default());
        let store = tiny_cache(&disk);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for i in 0..2000 {
                        let _ = store.get(&format!("l{}", i % 7)).unwrap();
                    }
                });
            }
            // The single writer: every update must see the one before it.
            for round in 0..300u32 {
                let id = format!("l{}", round % 7);
                let (p, _) = store
                    .update(&id, |p| {
                        p.member_mut("").record_play(&[GenreId(1)], None, UnixMillis(1), 200, 1000);
                    })
                    .unwrap();
                let plays = p.member("").map_or(0, |t| t.lifetime_plays(GenreId(1)));
                assert_eq!(plays, u64::from(round / 7 + 1), "listener {id}, round {round}");
                if round % 3 == 0 {
                    disk.commit(&store, &p);
                }
            }
        });
    }
}
