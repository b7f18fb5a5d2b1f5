//! Delivery histories by listener account: all resident without a store, or a bounded cache
//! over it, loaded on a miss and evicted like profiles.
//!
//! One entry per account holds the histories of all its members, so what an admin call about
//! one listener touches (merge, erasure) is one entry and one indexed read, with no index of
//! members to keep beside it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{FastHash, FastMap, StoreError, Stripes};
use crate::domain::{AdId, DeliveryHistory, HistoryChange, ListenerId, UnixMillis};

/// Where histories that are not in memory are read from: the durable store.
pub trait HistorySource: Send + Sync + std::fmt::Debug {
    /// Every stored member history of listener `id` ("" = the main profile).
    fn load_histories(&self, id: &str) -> Result<AccountHistories, StoreError>;
}

/// Resident bytes a cached account costs beyond its histories (moka's bookkeeping, the entry's
/// allocation and lock), so that the configured budget is close to real memory.
pub const CACHE_ENTRY_OVERHEAD: usize = 300;

/// How long a cached account nobody asks about stays: well past a held ad's life
/// (`PENDING_HOLD_MS`), so only accounts idle for long give their memory back early.
pub const CACHE_IDLE: Duration = Duration::from_secs(3600);

/// A stored history gets its changes as appended rows until it has this many, then is stored
/// whole again (which drops them): a history read back replays at most this many rows, and a
/// write stores a few small rows rather than the whole history each time.
pub const COMPACT_AFTER: u32 = 32;

/// The histories of one listener account: the main profile's ("") and each member's.
#[derive(Clone, Debug, Default)]
pub struct AccountHistories {
    members: Vec<Member>,
}

#[derive(Clone, Debug)]
struct Member {
    name: Box<str>,
    history: DeliveryHistory,
    /// Rows of changes stored after the history's last whole copy (durable store only).
    appended: u32,
}

impl AccountHistories {
    /// The history of `member`, if it has one.
    pub fn get(&self, member: &str) -> Option<&DeliveryHistory> {
        self.members.iter().find(|m| &*m.name == member).map(|m| &m.history)
    }

    /// The history of `member`, created when new.
    pub fn get_mut(&mut self, member: &str) -> &mut DeliveryHistory {
        &mut self.member_mut(member).history
    }

    fn member_mut(&mut self, member: &str) -> &mut Member {
        let i = match self.members.iter().position(|m| &*m.name == member) {
            Some(i) => i,
            None => {
                self.members.push(Member {
                    name: member.into(),
                    history: DeliveryHistory::default(),
                    appended: 0,
                });
                self.members.len() - 1
            }
        };
        &mut self.members[i]
    }

    /// A history read back from the durable store: its last whole copy.
    pub fn restore(&mut self, member: &str, history: DeliveryHistory) {
        self.member_mut(member).history = history;
    }

    /// One row of changes read back from the durable store, replayed over `member`'s history.
    pub fn replay(&mut self, member: &str, changes: Vec<HistoryChange>) {
        let m = self.member_mut(member);
        for change in changes {
            m.history.apply(change);
        }
        m.appended += 1;
    }

    /// How `member`'s next changes are stored: None = as one more appended row; Some(copy) =
    /// whole, replacing its rows, once it has `COMPACT_AFTER` of them.
    pub fn next_stored_form(&mut self, member: &str) -> Option<DeliveryHistory> {
        let m = self.member_mut(member);
        if m.appended + 1 >= COMPACT_AFTER {
            m.appended = 0;
            Some(m.history.clone())
        } else {
            m.appended += 1;
            None
        }
    }

    /// Each member and its history.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &DeliveryHistory)> {
        self.members.iter().map(|m| (&*m.name, &m.history))
    }

    /// Whether no member's history can stop an ad at `now` (nothing recorded, nothing held).
    pub fn is_idle_at(&self, now: UnixMillis) -> bool {
        self.members.iter().all(|m| m.history.is_idle_at(now))
    }

    /// Takes over the holds of `from` (see `DeliveryHistory::carry_holds`).
    pub fn carry_holds(&mut self, from: &AccountHistories, released: impl Fn(AdId) -> bool) {
        for (member, history) in from.iter() {
            if history.holds_any() {
                self.get_mut(member).carry_holds(history, &released);
            }
        }
    }

    fn approx_bytes(&self) -> usize {
        self.members.iter().map(|m| m.name.len() + m.history.approx_bytes()).sum::<usize>()
    }
}

impl FromIterator<(Box<str>, DeliveryHistory)> for AccountHistories {
    fn from_iter<I: IntoIterator<Item = (Box<str>, DeliveryHistory)>>(iter: I) -> Self {
        Self {
            members: iter.into_iter().map(|(name, history)| Member { name, history, appended: 0 }).collect(),
        }
    }
}

/// The histories of every listener. Cheap to clone: clones share one store.
#[derive(Clone, Debug, Default)]
pub struct Histories {
    inner: Arc<Mode>,
}

#[derive(Debug)]
enum Mode {
    /// No store behind: every history in memory.
    Resident(FastMap<ListenerId, AccountHistories>),
    /// A bounded cache over the store.
    Cached(Cached),
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Resident(FastMap::default())
    }
}

/// One cached account: its histories, and their weight when last (re)inserted.
#[derive(Debug, Default)]
struct Entry {
    histories: Mutex<AccountHistories>,
    weight: AtomicU32,
}

impl Entry {
    fn lock(&self) -> MutexGuard<'_, AccountHistories> {
        // Every mutation completes before its guard drops; a panic mid-way leaves it valid.
        self.histories.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the current weight, for the cache's weigher.
    fn weigh(&self) {
        self.weight.store(self.bytes(), Ordering::Relaxed);
    }

    fn bytes(&self) -> u32 {
        u32::try_from(CACHE_ENTRY_OVERHEAD + self.lock().approx_bytes()).unwrap_or(u32::MAX)
    }

    /// Weighs the entry again if it grew or shrank by more than a quarter (and 1 KiB) since
    /// the cache last weighed it: whether the cache must take it again. Re-inserting after
    /// every change replaced the cache's node each time, and the garbage and rehashing that
    /// left were ~5 % of a durable server's CPU; the cache's sum may drift by that slack per
    /// entry instead.
    fn reweigh(&self) -> bool {
        let (weighed, now) = (self.weight.load(Ordering::Relaxed), self.bytes());
        let slack = (weighed / 4).max(1024);
        if now.abs_diff(weighed) <= slack {
            return false;
        }
        self.weight.store(now, Ordering::Relaxed);
        true
    }
}

struct Cached {
    cache: moka::sync::Cache<ListenerId, Arc<Entry>, FastHash>,
    /// Accounts a write is changing, until its commit (`pin` … `unpin`), with how many writes
    /// hold each: consulted before the store on a miss, so an account evicted between its
    /// write and its commit is not read back stale.
    pinned: FastMap<ListenerId, (Arc<Entry>, u32)>,
    source: Arc<dyn HistorySource>,
    /// A load and a pin of the same account take its stripe: a load could otherwise put a
    /// stale copy in the cache beside the one a write is changing.
    stripes: Stripes,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (entries, bytes) = (self.cache.entry_count(), self.cache.weighted_size());
        write!(f, "Cached {{ entries: {entries}, weighed_bytes: {bytes}, pinned: {} }}", self.pinned.len())
    }
}

impl Cached {
    /// The entry of `id` in memory (cached or pinned), if any.
    fn resident(&self, id: &ListenerId) -> Option<Arc<Entry>> {
        self.cache.get(id).or_else(|| self.pinned.get(id).map(|p| p.0.clone()))
    }

    /// The entry of `id`, read from the store when not in memory; the caller holds its stripe.
    fn load_locked(&self, id: &ListenerId) -> Result<Arc<Entry>, StoreError> {
        if let Some(entry) = self.resident(id) {
            return Ok(entry);
        }
        let entry = Arc::new(Entry {
            histories: Mutex::new(self.source.load_histories(id.as_str())?),
            weight: AtomicU32::new(0),
        });
        entry.weigh();
        self.cache.insert(id.clone(), entry.clone());
        Ok(entry)
    }

    /// The entry of `id`, read from the store when not in memory.
    fn entry(&self, id: &ListenerId) -> Result<Arc<Entry>, StoreError> {
        if let Some(entry) = self.resident(id) {
            return Ok(entry);
        }
        let _stripe = self.stripes.lock(id.as_str());
        self.load_locked(id)
    }
}

impl Histories {
    /// Histories in a cache of about `capacity_bytes` over `source`.
    pub fn cached(source: Arc<dyn HistorySource>, capacity_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .time_to_idle(CACHE_IDLE)
            .weigher(|_, entry: &Arc<Entry>| entry.weight.load(Ordering::Relaxed))
            .build_with_hasher(FastHash::default());
        Self {
            inner: Arc::new(Mode::Cached(Cached {
                cache,
                pinned: FastMap::default(),
                source,
                stripes: Stripes::new(64),
            })),
        }
    }

    /// Runs `f` with the histories of `id` (None when it has none). A miss reads the store on
    /// this thread: callers on the runtime first `load` off it (`is_resident` tells when).
    pub fn read<R>(
        &self,
        id: &ListenerId,
        f: impl FnOnce(Option<&AccountHistories>) -> R,
    ) -> Result<R, StoreError> {
        match &*self.inner {
            Mode::Resident(map) => Ok(f(map.get(id).as_deref())),
            Mode::Cached(cached) => {
                let entry = cached.entry(id)?;
                let histories = entry.lock();
                Ok(f(Some(&histories)))
            }
        }
    }

    /// Changes the histories of `id` in memory only (held ads: nothing to persist). A cached
    /// account evicted meanwhile forgets the change, which only holds for minutes anyway.
    pub fn update_unpersisted<R>(
        &self,
        id: &ListenerId,
        f: impl FnOnce(&mut AccountHistories) -> R,
    ) -> Result<R, StoreError> {
        match &*self.inner {
            Mode::Resident(map) => Ok(f(&mut map.entry(id.clone()).or_default())),
            Mode::Cached(cached) => {
                let entry = cached.entry(id)?;
                let r = f(&mut entry.lock());
                Ok(r)
            }
        }
    }

    /// Changes the histories of `id`, which the caller has pinned (`pin`) until the change is
    /// committed.
    pub fn update<R>(&self, id: &ListenerId, f: impl FnOnce(&mut AccountHistories) -> R) -> R {
        match &*self.inner {
            Mode::Resident(map) => f(&mut map.entry(id.clone()).or_default()),
            Mode::Cached(cached) => {
                let entry = match cached.pinned.get(id) {
                    Some(p) => p.0.clone(),
                    None => {
                        // A caller that did not pin: a bug, not a state; keep the change in
                        // memory anyway rather than lose it.
                        debug_assert!(false, "histories of {id} changed without a pin");
                        tracing::error!(listener_id = %id, "histories changed without a pin");
                        let entry = Arc::new(Entry::default());
                        cached.pinned.insert(id.clone(), (entry.clone(), 1));
                        entry
                    }
                };
                let r = f(&mut entry.lock());
                // Re-inserted so that the cache weighs it again, or has it again if it was
                // evicted while pinned.
                if entry.reweigh() || !cached.cache.contains_key(id) {
                    cached.cache.insert(id.clone(), entry);
                }
                r
            }
        }
    }

    /// Replaces the histories of `id` with `fresh` (cluster mode: as just read from the shared
    /// store), keeping the ads this replica holds for it unless `released` says they were
    /// heard or given back meanwhile.
    pub fn install(&self, id: &ListenerId, mut fresh: AccountHistories, released: impl Fn(AdId) -> bool) {
        match &*self.inner {
            Mode::Resident(map) => {
                let mut entry = map.entry(id.clone()).or_default();
                fresh.carry_holds(&entry, released);
                *entry = fresh;
            }
            Mode::Cached(cached) => {
                let _stripe = cached.stripes.lock(id.as_str());
                let entry = cached.resident(id).unwrap_or_default();
                {
                    let mut histories = entry.lock();
                    fresh.carry_holds(&histories, released);
                    *histories = fresh;
                }
                entry.weigh();
                cached.cache.insert(id.clone(), entry);
            }
        }
    }

    /// Takes every history of `id` out (erasure, merge). Pinned by the caller when cached.
    pub fn take(&self, id: &ListenerId) -> AccountHistories {
        match &*self.inner {
            Mode::Resident(map) => map.remove(id).map(|(_, h)| h).unwrap_or_default(),
            Mode::Cached(_) => self.update(id, std::mem::take),
        }
    }

    /// Whether the histories of `id` are in memory (a `read` will not touch the store).
    pub fn is_resident(&self, id: &ListenerId) -> bool {
        match &*self.inner {
            Mode::Resident(_) => true,
            Mode::Cached(cached) => cached.cache.contains_key(id) || cached.pinned.contains_key(id),
        }
    }

    /// Brings the histories of `id` into memory, reading the store on a miss: run it off the
    /// runtime.
    pub fn load(&self, id: &ListenerId) -> Result<(), StoreError> {
        match &*self.inner {
            Mode::Resident(_) => Ok(()),
            Mode::Cached(cached) => {
                let _stripe = cached.stripes.lock(id.as_str());
                cached.load_locked(id).map(drop)
            }
        }
    }

    /// Keeps the histories of `id` in memory, as they are changed, until `unpin`: the write
    /// that changes them holds a pin until its commit. Reads the store on a miss.
    pub fn pin(&self, id: &ListenerId) -> Result<(), StoreError> {
        let Mode::Cached(cached) = &*self.inner else { return Ok(()) };
        let _stripe = cached.stripes.lock(id.as_str());
        let entry = cached.load_locked(id)?;
        cached.pinned.entry(id.clone()).or_insert_with(|| (entry, 0)).1 += 1;
        Ok(())
    }

    /// Releases one `pin` of `id`.
    pub fn unpin(&self, id: &ListenerId) {
        let Mode::Cached(cached) = &*self.inner else { return };
        let _stripe = cached.stripes.lock(id.as_str());
        if let dashmap::Entry::Occupied(mut e) = cached.pinned.entry(id.clone()) {
            e.get_mut().1 -= 1;
            if e.get().1 == 0 {
                e.remove();
            }
        }
    }

    /// Drops what can no longer matter: without a store, accounts whose histories hold nothing
    /// that could stop an ad at `now` (an id decided for once and never heard); with one, the
    /// cache's own expiries. Returns how many accounts were dropped.
    pub fn sweep(&self, now: UnixMillis) -> usize {
        match &*self.inner {
            Mode::Resident(map) => {
                let before = map.len();
                map.retain(|_, h| !h.is_idle_at(now));
                before - map.len()
            }
            Mode::Cached(cached) => {
                let before = cached.cache.entry_count();
                cached.cache.run_pending_tasks();
                before.saturating_sub(cached.cache.entry_count()) as usize
            }
        }
    }

    /// Accounts in memory.
    pub fn resident_count(&self) -> u64 {
        match &*self.inner {
            Mode::Resident(map) => map.len() as u64,
            Mode::Cached(cached) => cached.cache.entry_count(),
        }
    }
}

/// Unpins its accounts when dropped: held by a write until its commit.
#[derive(Debug)]
#[must_use = "dropping the pins releases them"]
pub struct Pins {
    histories: Histories,
    ids: Vec<ListenerId>,
}

impl Pins {
    /// Pins each of `ids` (see `Histories::pin`); on an error, none stays pinned.
    pub fn new(histories: &Histories, ids: impl IntoIterator<Item = ListenerId>) -> Result<Self, StoreError> {
        let mut pins = Self { histories: histories.clone(), ids: Vec::new() };
        for id in ids {
            histories.pin(&id)?;
            pins.ids.push(id);
        }
        Ok(pins)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        for id in &self.ids {
            self.histories.unpin(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::ImpressionRecord;
    use crate::domain::history::PENDING_HOLD_MS;

    type Members = Vec<(Box<str>, DeliveryHistory)>;

    /// A store of histories in a map, counting its reads.
    #[derive(Debug, Default)]
    struct MapSource {
        rows: Mutex<HashMap<String, Members>>,
        reads: AtomicU32,
    }

    impl HistorySource for MapSource {
        fn load_histories(&self, id: &str) -> Result<AccountHistories, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            Ok(self.rows.lock().unwrap().get(id).cloned().unwrap_or_default().into_iter().collect())
        }
    }

    fn impression(at: i64) -> ImpressionRecord {
        let c = crate::decision::tests::campaign("c", "adv", crate::domain::Tier::Standard, 10);
        ImpressionRecord::of(&c, 0, UnixMillis(at))
    }

    fn members(a: &AccountHistories) -> Members {
        a.iter().map(|(m, h)| (m.into(), h.clone())).collect()
    }

    fn heard(h: &Histories, id: &ListenerId) -> usize {
        h.read(id, |a| a.and_then(|a| a.get("")).map_or(0, |h| h.impressions_within(DAY_MS, UnixMillis(10))))
            .unwrap()
    }

    const DAY_MS: i64 = crate::domain::DAY_MS;

    #[test]
    fn a_pinned_account_survives_eviction_and_an_unpinned_one_is_read_back_from_the_store() {
        let source = Arc::new(MapSource::default());
        // Room for about one account: every other insert evicts.
        let histories = Histories::cached(source.clone(), 1);
        let nina = ListenerId::from("nina");
        histories.pin(&nina).unwrap();
        histories.update(&nina, |h| h.get_mut("").record_impression(impression(1)));
        for i in 0..50 {
            histories.load(&ListenerId::from(format!("other-{i}").as_str())).unwrap();
        }
        if let Mode::Cached(c) = &*histories.inner {
            c.cache.run_pending_tasks();
        }
        // Not committed yet, so not in the store: the pin keeps it.
        assert_eq!(heard(&histories, &nina), 1, "the change is still seen while pinned");
        // Its commit lands, then the pin goes: an evicted account is read back from the store.
        source
            .rows
            .lock()
            .unwrap()
            .insert("nina".into(), histories.read(&nina, |a| members(a.unwrap())).unwrap());
        histories.unpin(&nina);
        for i in 50..100 {
            histories.load(&ListenerId::from(format!("other-{i}").as_str())).unwrap();
        }
        if let Mode::Cached(c) = &*histories.inner {
            c.cache.run_pending_tasks();
        }
        let reads = source.reads.load(Ordering::Relaxed);
        assert!(!histories.is_resident(&nina), "evicted once unpinned");
        assert_eq!(heard(&histories, &nina), 1, "read back as committed");
        assert_eq!(source.reads.load(Ordering::Relaxed), reads + 1, "one read of the store");
    }

    #[test]
    fn a_history_is_stored_whole_again_once_it_has_compact_after_appended_rows() {
        let mut account = AccountHistories::default();
        account.replay("", vec![HistoryChange::Heard(impression(1))]);
        account.replay("", vec![HistoryChange::Heard(impression(2))]);
        let forms: Vec<bool> =
            (0..2 * COMPACT_AFTER).map(|_| account.next_stored_form("").is_some()).collect();
        let whole_at: Vec<usize> = forms.iter().enumerate().filter(|(_, w)| **w).map(|(i, _)| i).collect();
        let after = COMPACT_AFTER as usize;
        // Two rows read back, so the write that would make COMPACT_AFTER stores it whole; then
        // every COMPACT_AFTER-th write.
        assert_eq!(whole_at, vec![after - 3, 2 * after - 3]);
        assert_eq!(account.next_stored_form("kid"), None, "a new member starts with appended rows");
        let whole = account.next_stored_form("").map(|_| ());
        assert_eq!(whole, None);
        assert_eq!(account.get("").map(|h| h.impressions_within(DAY_MS, UnixMillis(10))), Some(2));
    }

    #[test]
    fn without_a_store_an_account_that_only_held_ads_is_swept_once_its_holds_end() {
        let histories = Histories::default();
        let drifter = ListenerId::from("never-heard");
        let listener = ListenerId::from("heard");
        let ad = crate::domain::AdId(7);
        histories.update_unpersisted(&drifter, |h| h.get_mut("").hold(ad, impression(1_000))).unwrap();
        histories.update(&listener, |h| h.get_mut("").record_impression(impression(1_000)));
        assert_eq!(histories.sweep(UnixMillis(2_000)), 0, "a hold still counts");
        assert_eq!(histories.sweep(UnixMillis(1_000 + PENDING_HOLD_MS)), 1, "the hold ended");
        assert!(histories.read(&drifter, |h| h.is_none()).unwrap());
        assert_eq!(histories.resident_count(), 1, "a heard listener's history stays");
    }
}
