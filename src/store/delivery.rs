//! Delivery state: per-listener histories (caps, suppression), per-campaign counters (spend),
//! and the events already counted: each kind of event at most once per decided ad, whatever
//! its event id (IAB/MRC: duplicate impressions are removed), so a replayed token bills nothing.

use std::sync::Arc;
use std::time::Duration;

use super::histories::{AccountHistories, Histories, Pins};
use super::{FastMap, StoreError};

use crate::decision::{Spend, SpendView};
use crate::domain::history::{Suppression, SuppressionTarget};
use crate::domain::{
    AdId, AdvertiserId, Campaign, CampaignId, CreativeId, DAY_MS, DeliveryHistory, EventKind, HistoryChange,
    ImpressionRecord, ListenerId, UnixMillis,
};

/// Whose history: a listener account's household member ("" = main profile).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct HistoryKey {
    pub listener: ListenerId,
    pub member: Box<str>,
}

/// Running totals of one campaign.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CampaignCounters {
    pub impressions: u64,
    pub spend_micros: i64,
    pub clicks: u64,
    pub completes: u64,
    pub skips: u64,
    pub not_for_me: u64,
    /// Playback progress (VAST's linear tracking events), each at most once per ad.
    #[serde(default)]
    pub progress: Progress,
    /// Playback errors by creative and VAST error code, in (creative, code) order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<PlaybackErrors>,
    /// The campaign's local day (days since the epoch) the `*_today` figures belong to.
    pub day: i64,
    /// When that day ends (unix ms; 0 in counters stored before time zones: the UTC day's end).
    #[serde(default)]
    pub day_ends_at: i64,
    pub impressions_today: u64,
    pub spend_today_micros: i64,
}

impl CampaignCounters {
    /// What these counters recorded, as the engine's `Spend` without reservations: what
    /// `pacing::status` reports on (it leaves reservations out), read from counters already at
    /// hand rather than from the store again.
    pub fn recorded_spend(&self) -> Spend {
        Spend {
            lifetime_micros: self.spend_micros,
            today_micros: self.spend_today_micros,
            impressions: self.impressions,
            ..Spend::default()
        }
    }

    /// Whether the day the `*_today` figures belong to has ended at `now`.
    fn day_is_over(&self, now: UnixMillis) -> bool {
        let day_ends_at = if self.day_ends_at > 0 { self.day_ends_at } else { (self.day + 1) * DAY_MS };
        now.0 >= day_ends_at
    }
}

/// Counts of the playback-progress events of one campaign.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Progress {
    pub starts: u64,
    pub first_quartiles: u64,
    pub midpoints: u64,
    pub third_quartiles: u64,
    pub mutes: u64,
    pub unmutes: u64,
    pub pauses: u64,
    pub resumes: u64,
    pub not_used: u64,
}

/// How often the players reported one VAST error code for one creative.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlaybackErrors {
    pub creative: CreativeId,
    pub code: u16,
    pub count: u64,
}

/// One authenticated event, ready to apply.
#[derive(Clone, Debug)]
pub struct VerifiedEvent {
    /// The decided ad, from its token.
    pub ad: AdId,
    /// The ad came from a version-1 token: its event id may be stored in the legacy form.
    pub legacy: bool,
    pub event_id: Box<str>,
    pub kind: EventKind,
    /// The VAST error code of an `EventKind::Error` (100..=999); 0 otherwise.
    pub error_code: u16,
    pub at: UnixMillis,
    /// None for anonymous listeners (no history is kept for them).
    pub history: Option<HistoryKey>,
    pub campaign: Arc<Campaign>,
    pub creative_index: usize,
    pub price_micros: i64,
    /// When the ad was decided (from its token): finds the reservation an impression releases.
    pub decided_at: UnixMillis,
}

/// How long "not for me" suppresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuppressionPolicy {
    pub advertiser_ms: i64,
    /// 0 = the category is not suppressed.
    pub category_ms: i64,
}

/// Histories, counters and applied event ids. Cheap to clone: clones share one store.
#[derive(Clone, Debug)]
pub struct Delivery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    histories: Histories,
    campaigns: FastMap<CampaignId, CampaignCounters>,
    /// The events counted, by ad and kind: kept as long as a token can be valid (an event
    /// whose token expired is rejected anyway, so an older one can never be applied twice).
    /// Written only by `apply` and `restore`, which callers serialise: never contended.
    counted: std::sync::Mutex<Counted>,
    /// Event ids applied before ad ids existed (read back from an older store), checked for
    /// version-1 tokens only; they age out with the dedupe window.
    legacy: moka::sync::Cache<Box<str>, ()>,
    /// Erased listeners, by keyed fingerprint, with when (see `erased`).
    erased: moka::sync::Cache<[u8; 32], UnixMillis>,
    /// Plays counted, by keyed fingerprint of (listener, play id) (see `admit_play`).
    plays: std::sync::Mutex<Generations<u128, ()>>,
    /// Whether anyone was ever erased here: until then events skip the fingerprint's HMAC.
    any_erased: std::sync::atomic::AtomicBool,
    /// Ads decided but not yet recorded, of campaigns with a budget (see `reserve`).
    reserved: FastMap<CampaignId, Reservations>,
}

/// How long a decided ad holds its share of a budget: between one and two of these. A player
/// reports an impression within seconds of playing the ad; one that never plays it gives the
/// share back when the hold ends.
pub const RESERVATION_HOLD_MS: i64 = 60_000;

/// Reservations of one campaign in two rotating buckets of `RESERVATION_HOLD_MS`.
#[derive(Clone, Copy, Debug, Default)]
struct Reservations {
    buckets: [ReservationBucket; 2],
}

impl Reservations {
    /// What is held at `now`: (micros, impressions) of this hold period and the last.
    fn held_at(&self, now: UnixMillis) -> (i64, u64) {
        let current = now.0.div_euclid(RESERVATION_HOLD_MS);
        self.buckets
            .iter()
            .filter(|b| b.slot == current || b.slot == current - 1)
            .fold((0, 0), |(m, i), b| (m + b.micros, i + b.impressions))
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ReservationBucket {
    /// `time / RESERVATION_HOLD_MS` of the ads in it.
    slot: i64,
    micros: i64,
    impressions: u64,
}

/// Entries kept for the last `window` or so (between one and two of it), in two generations
/// of plain hash maps: an entry costs its key and value, where a moka entry with a time to
/// live cost ~350 bytes plus its own allocations. Play ids and counted events arrive by the
/// million (2.9M play ids for 50k seeded listeners took 1 GB and 4 s to restore as a moka
/// cache), and on this machine every fresh page the heap grows by costs several microseconds
/// of the kernel's zeroing.
#[derive(Debug)]
struct Generations<K, V> {
    window_ms: i64,
    current: std::collections::HashMap<K, V, super::FastHash>,
    previous: std::collections::HashMap<K, V, super::FastHash>,
    current_since: i64,
}

impl<K: std::hash::Hash + Eq, V> Generations<K, V> {
    fn new(window: Duration) -> Self {
        Self {
            window_ms: window.as_millis() as i64,
            current: Default::default(),
            previous: Default::default(),
            current_since: i64::MIN,
        }
    }

    /// Inserts `key` with `value` unless it is there; returns the value already there.
    fn insert_new(&mut self, key: K, value: V, now: UnixMillis) -> Option<&V> {
        // The first key starts a generation too (from i64::MIN, every window has passed).
        if now.0.saturating_sub(self.current_since) >= self.window_ms {
            self.previous = std::mem::take(&mut self.current);
            self.current_since = now.0;
        }
        if let Some(old) = self.previous.get(&key) {
            return Some(old);
        }
        match self.current.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(value);
                None
            }
        }
    }

    fn contains(&self, key: &K) -> bool {
        self.current.contains_key(key) || self.previous.contains_key(key)
    }
}

/// The events counted, by ad and kind, with a fingerprint of the event id that counted (it
/// tells a retry from a replay; two event ids share one with odds of 2^-64, and either way
/// nothing is counted twice).
#[derive(Debug)]
struct Counted {
    events: Generations<(AdId, EventKind), u64>,
    /// Seeded per process: fingerprints live in memory only, rebuilt from the store at start.
    hasher: super::FastHash,
}

impl Counted {
    fn new(window: Duration) -> Self {
        Self { events: Generations::new(window), hasher: super::FastHash::default() }
    }

    fn admit(&mut self, ad: AdId, kind: EventKind, event_id: &str, now: UnixMillis) -> EventOutcome {
        use std::hash::BuildHasher;
        let id = self.hasher.hash_one(event_id);
        match self.events.insert_new((ad, kind), id, now) {
            None => EventOutcome::Accepted,
            Some(&counted) if counted == id => EventOutcome::Retried,
            Some(_) => EventOutcome::AlreadyCounted,
        }
    }

    fn contains(&self, ad: AdId, kind: EventKind) -> bool {
        self.events.contains(&(ad, kind))
    }
}

/// What became of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Counted now.
    Accepted,
    /// The same event again (same ad, kind and event id): a retry, not counted again.
    Retried,
    /// This kind of event was already counted for this ad under another event id (a replayed
    /// token, or a player firing twice): not counted again.
    AlreadyCounted,
}

/// Outcome of applying a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub accepted: u32,
    pub duplicates: u32,
    /// One per event, in order.
    pub outcomes: Vec<EventOutcome>,
}

/// Whether an event of `kind` changes its listener's history (the rest only count).
pub fn changes_history(kind: EventKind) -> bool {
    matches!(kind, EventKind::Impression | EventKind::NotForMe | EventKind::NotUsed)
}

/// What `event` changes in `member`'s history of an account: an impression heard, "not for
/// me" suppressions, a hold given back.
pub fn remember(
    account: &mut AccountHistories,
    member: &str,
    event: &VerifiedEvent,
    suppression: SuppressionPolicy,
) {
    let history = account.get_mut(member);
    if event.kind == EventKind::NotUsed {
        history.release_hold(event.ad);
    }
    // Holds live in memory only: an impression releases its ad's hold, which is not one of the
    // lasting changes.
    lasting_changes(event, suppression, |change| match change {
        HistoryChange::Heard(record) => history.record_impression_of(event.ad, record),
        other => history.apply(other),
    });
}

/// The changes `event` makes to its history that outlive a restart, in the order `remember`
/// applies them: what the durable store appends for it.
pub fn lasting_changes(
    event: &VerifiedEvent,
    suppression: SuppressionPolicy,
    mut f: impl FnMut(HistoryChange),
) {
    let c = &event.campaign;
    match event.kind {
        EventKind::Impression => {
            f(HistoryChange::Heard(ImpressionRecord::of(c, event.creative_index, event.at)));
        }
        EventKind::NotForMe => {
            let until = UnixMillis(event.at.0 + suppression.advertiser_ms);
            let target = SuppressionTarget::Advertiser(AdvertiserId::clone(&c.advertiser_id));
            f(HistoryChange::Suppressed(Suppression { target, until }));
            if suppression.category_ms > 0 {
                let until = UnixMillis(event.at.0 + suppression.category_ms);
                for category in c.categories.iter() {
                    let target = SuppressionTarget::Category(category.clone());
                    f(HistoryChange::Suppressed(Suppression { target, until }));
                }
            }
        }
        EventKind::NotUsed
        | EventKind::Click
        | EventKind::Complete
        | EventKind::Skip
        | EventKind::Start
        | EventKind::FirstQuartile
        | EventKind::Midpoint
        | EventKind::ThirdQuartile
        | EventKind::Mute
        | EventKind::Unmute
        | EventKind::Pause
        | EventKind::Resume
        | EventKind::Error => {}
    }
}

/// One counted event as stored: restored at start so that it never counts twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedEvent {
    pub ad: AdId,
    pub kind: EventKind,
    pub event_id: String,
    pub at: UnixMillis,
}

static EMPTY_HISTORY: std::sync::LazyLock<DeliveryHistory> =
    std::sync::LazyLock::new(DeliveryHistory::default);

impl Delivery {
    /// A store that remembers event ids for `dedupe_window` (at least the token lifetime),
    /// with every history resident.
    pub fn new(dedupe_window: Duration) -> Self {
        Self::with_histories(dedupe_window, Histories::default())
    }

    /// A store over `histories` (resident, or a cache over the durable store).
    pub fn with_histories(dedupe_window: Duration, histories: Histories) -> Self {
        Self {
            inner: Arc::new(Inner {
                histories,
                campaigns: FastMap::default(),
                counted: std::sync::Mutex::new(Counted::new(dedupe_window)),
                legacy: moka::sync::Cache::builder().time_to_live(dedupe_window).build(),
                erased: moka::sync::Cache::builder().time_to_live(dedupe_window).build(),
                plays: std::sync::Mutex::new(Generations::new(dedupe_window)),
                any_erased: std::sync::atomic::AtomicBool::new(false),
                reserved: FastMap::default(),
            }),
        }
    }

    /// Runs `f` with the history of `key` (an empty one when unknown or anonymous). Holds the
    /// account's lock while `f` runs: `f` must be short and synchronous. A history not in
    /// memory is read from the store on this thread (`is_resident`, `load`).
    pub fn with_history<R>(
        &self,
        key: Option<&HistoryKey>,
        f: impl FnOnce(&DeliveryHistory) -> R,
    ) -> Result<R, StoreError> {
        match key {
            Some(k) => self
                .inner
                .histories
                .read(&k.listener, |h| f(h.and_then(|h| h.get(&k.member)).unwrap_or(&EMPTY_HISTORY))),
            None => Ok(f(&EMPTY_HISTORY)),
        }
    }

    /// Whether the histories of `listener` are in memory.
    pub fn is_resident(&self, listener: &ListenerId) -> bool {
        self.inner.histories.is_resident(listener)
    }

    /// Brings the histories of `listener` into memory (reads the store: off the runtime).
    pub fn load(&self, listener: &ListenerId) -> Result<(), StoreError> {
        self.inner.histories.load(listener)
    }

    /// Pins the histories of `listeners` in memory until the returned pins drop: a write that
    /// changes them (`apply`, `merge`, `forget`) holds them until it is committed. Reads the
    /// store for those not in memory.
    pub fn pin(&self, listeners: impl IntoIterator<Item = ListenerId>) -> Result<Pins, StoreError> {
        Pins::new(&self.inner.histories, listeners)
    }

    /// Drops what can no longer matter (see `Histories::sweep`); returns how many accounts.
    pub fn sweep(&self, now: UnixMillis) -> usize {
        self.inner.histories.sweep(now)
    }

    /// Listener accounts whose histories are in memory.
    pub fn resident_histories(&self) -> u64 {
        self.inner.histories.resident_count()
    }

    /// Applies each event unless its kind was already counted for its ad. `suppression` says
    /// how long "not for me" lasts. Callers serialise batches (`AppState::write`) and pin the
    /// histories they touch (`pin`). `now` ages out what was counted longer ago than the
    /// dedupe window.
    pub fn apply(
        &self,
        events: &[VerifiedEvent],
        suppression: SuppressionPolicy,
        now: UnixMillis,
    ) -> Applied {
        let mut out = Applied { outcomes: Vec::with_capacity(events.len()), ..Applied::default() };
        // Serialised by the callers, so never contended; each change to it is one whole insert,
        // so a panic elsewhere leaves it valid.
        let mut counted = self.inner.counted.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            let outcome = self.admit(&mut counted, event, now);
            out.outcomes.push(outcome);
            if outcome != EventOutcome::Accepted {
                out.duplicates += 1;
                continue;
            }
            out.accepted += 1;
            self.count(&counted, event);
            if let Some(key) = &event.history {
                self.remember(key, event, suppression);
            }
        }
        out
    }

    /// Records that `event` counts, unless its ad already counted its kind.
    fn admit(&self, counted: &mut Counted, event: &VerifiedEvent, now: UnixMillis) -> EventOutcome {
        if event.legacy && self.inner.legacy.contains_key(&event.event_id) {
            return EventOutcome::Retried;
        }
        counted.admit(event.ad, event.kind, &event.event_id, now)
    }

    fn count(&self, counted: &Counted, event: &VerifiedEvent) {
        let mut counters = self.inner.campaigns.entry(event.campaign.id.clone()).or_default();
        let zone = &event.campaign.time_zone;
        let (day, _) = zone.day_of(event.at);
        if day > counters.day {
            counters.day = day;
            counters.day_ends_at = zone.day_end(event.at).0;
            counters.impressions_today = 0;
            counters.spend_today_micros = 0;
        }
        let progress = &mut counters.progress;
        match event.kind {
            EventKind::Impression => {
                // An ad reported not used gave its reservation back already.
                if !counted.contains(event.ad, EventKind::NotUsed) {
                    self.release(&event.campaign.id, event.price_micros, event.decided_at);
                }
                counters.impressions += 1;
                counters.spend_micros += event.price_micros;
                if day == counters.day {
                    counters.impressions_today += 1;
                    counters.spend_today_micros += event.price_micros;
                }
            }
            EventKind::Click => counters.clicks += 1,
            EventKind::Complete => counters.completes += 1,
            EventKind::Skip => counters.skips += 1,
            EventKind::NotForMe => counters.not_for_me += 1,
            EventKind::Start => progress.starts += 1,
            EventKind::FirstQuartile => progress.first_quartiles += 1,
            EventKind::Midpoint => progress.midpoints += 1,
            EventKind::ThirdQuartile => progress.third_quartiles += 1,
            EventKind::Mute => progress.mutes += 1,
            EventKind::Unmute => progress.unmutes += 1,
            EventKind::Pause => progress.pauses += 1,
            EventKind::Resume => progress.resumes += 1,
            EventKind::NotUsed => {
                progress.not_used += 1;
                // Not played: its share of the budget comes back now (an impression that
                // still arrives is counted, and releases nothing twice).
                if !counted.contains(event.ad, EventKind::Impression) {
                    self.release(&event.campaign.id, event.price_micros, event.decided_at);
                }
            }
            EventKind::Error => {
                let creative = &event.campaign.creatives[event.creative_index].id;
                let key = (creative, event.error_code);
                match counters.errors.binary_search_by(|e| (&e.creative, e.code).cmp(&key)) {
                    Ok(i) => counters.errors[i].count += 1,
                    Err(i) => counters.errors.insert(
                        i,
                        PlaybackErrors { creative: creative.clone(), code: event.error_code, count: 1 },
                    ),
                }
            }
        }
    }

    fn remember(&self, key: &HistoryKey, event: &VerifiedEvent, suppression: SuppressionPolicy) {
        if changes_history(event.kind) {
            self.inner.histories.update(&key.listener, |h| remember(h, &key.member, event, suppression));
        }
    }

    /// Replaces the histories of `listener` with `fresh` as read from the shared store (cluster
    /// mode), keeping this replica's holds except those `released` names.
    pub fn install(&self, listener: &ListenerId, fresh: AccountHistories, released: impl Fn(AdId) -> bool) {
        self.inner.histories.install(listener, fresh, released);
    }

    /// Replaces the counters of `campaign` with the cluster's (cluster mode).
    pub fn set_counters(&self, campaign: CampaignId, counters: CampaignCounters) {
        self.inner.campaigns.insert(campaign, counters);
    }

    /// Holds a place in `key`'s history for each ad decided for it at `now`, until the ad's
    /// impression arrives (`DeliveryHistory::hold`): ad load and caps count a break fetched
    /// ahead of playing it.
    pub fn hold(
        &self,
        key: &HistoryKey,
        ads: impl IntoIterator<Item = (AdId, ImpressionRecord)>,
    ) -> Result<(), StoreError> {
        self.inner.histories.update_unpersisted(&key.listener, |h| {
            let history = h.get_mut(&key.member);
            for (ad, record) in ads {
                history.hold(ad, record);
            }
        })
    }

    /// Totals of one campaign, with the `*_today` figures as of `now`.
    pub fn counters(&self, campaign: &CampaignId, now: UnixMillis) -> CampaignCounters {
        let mut c = self.inner.campaigns.get(campaign).map(|c| c.clone()).unwrap_or_default();
        if c.day_is_over(now) {
            c.impressions_today = 0;
            c.spend_today_micros = 0;
        }
        c
    }

    /// What `campaign` has spent as of `now` (lifetime micros, today's micros, impressions):
    /// the budget checks' part of `counters`, without copying the rest.
    fn spent(&self, campaign: &CampaignId, now: UnixMillis) -> (i64, i64, u64) {
        self.inner.campaigns.get(campaign).map_or((0, 0, 0), |c| {
            let today = if c.day_is_over(now) { 0 } else { c.spend_today_micros };
            (c.spend_micros, today, c.impressions)
        })
    }

    /// Holds one impression's price of `campaign`'s budget for an ad decided at `now`, if it
    /// still fits under every hard limit — checked and taken as one step under the campaign's
    /// reservation lock, so that concurrent decisions (on a multi-thread runtime) cannot all
    /// take the last of a budget that each saw free. False: the ad must not be served.
    pub fn reserve_within_limits(&self, campaign: &Campaign, now: UnixMillis) -> bool {
        // Lock order campaigns → reserved, as `count` takes them.
        let (lifetime_micros, today_micros, impressions) = self.spent(&campaign.id, now);
        let mut r = self.inner.reserved.entry(campaign.id.clone()).or_default();
        let (reserved_micros, reserved_impressions) = r.held_at(now);
        let spend =
            Spend { lifetime_micros, today_micros, impressions, reserved_micros, reserved_impressions };
        if !crate::decision::pacing::fits(campaign, &spend) {
            return false;
        }
        Self::add_reservation(&mut r, campaign.price_micros(), now);
        true
    }

    /// Holds `price_micros` in `r` for an ad decided at `now`, until its impression is recorded
    /// (`release`) or the hold ends.
    fn add_reservation(r: &mut Reservations, price_micros: i64, now: UnixMillis) {
        let slot = now.0.div_euclid(RESERVATION_HOLD_MS);
        let bucket = &mut r.buckets[slot.rem_euclid(2) as usize];
        if bucket.slot != slot {
            *bucket = ReservationBucket { slot, micros: 0, impressions: 0 };
        }
        bucket.micros += price_micros;
        bucket.impressions += 1;
    }

    /// Gives back the reservation of an ad decided at `decided_at`, if it is still held.
    fn release(&self, campaign: &CampaignId, price_micros: i64, decided_at: UnixMillis) {
        let slot = decided_at.0.div_euclid(RESERVATION_HOLD_MS);
        if let Some(mut r) = self.inner.reserved.get_mut(campaign) {
            let bucket = &mut r.buckets[slot.rem_euclid(2) as usize];
            if bucket.slot == slot && bucket.impressions > 0 {
                bucket.micros = (bucket.micros - price_micros).max(0);
                bucket.impressions -= 1;
            }
        }
    }

    /// What `campaign` holds in reservations at `now`: (micros, impressions).
    pub fn reserved(&self, campaign: &CampaignId, now: UnixMillis) -> (i64, u64) {
        self.inner.reserved.get(campaign).map_or((0, 0), |r| r.held_at(now))
    }

    /// Spend as of `now`, for the engine's budget checks.
    pub fn spend_at(&self, now: UnixMillis) -> SpendAt<'_> {
        SpendAt { delivery: self, now }
    }

    /// Folds every history of `from` into the same member's history of `into` (both pinned).
    pub fn merge(&self, from: &ListenerId, into: &ListenerId) {
        let taken = self.inner.histories.take(from);
        self.inner.histories.update(into, |target| {
            for (member, history) in taken.iter() {
                target.get_mut(member).absorb(history);
            }
        });
    }

    /// How the durable store takes `key`'s latest changes (see `AccountHistories::next_stored_form`):
    /// None = as appended rows; Some = this whole copy. Pinned by the caller.
    pub fn next_stored_form(&self, key: &HistoryKey) -> Option<DeliveryHistory> {
        self.inner
            .histories
            .update_unpersisted(&key.listener, |h| h.next_stored_form(&key.member))
            .ok()
            .flatten()
    }

    /// Every history of `listener`, to persist them (pinned: they are in memory).
    pub fn histories_of(&self, listener: &ListenerId) -> Vec<(HistoryKey, DeliveryHistory)> {
        self.inner
            .histories
            .read(listener, |h| {
                h.map_or_else(Vec::new, |h| {
                    h.iter()
                        .map(|(member, history)| {
                            (
                                HistoryKey { listener: listener.clone(), member: member.into() },
                                history.clone(),
                            )
                        })
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// The stored counters of one campaign, to persist them.
    pub fn raw_counters(&self, campaign: &CampaignId) -> CampaignCounters {
        self.inner.campaigns.get(campaign).map(|c| c.clone()).unwrap_or_default()
    }

    /// Puts back what the durable store holds. Event ids older than the dedupe window are
    /// skipped: their tokens have expired, so they cannot come back.
    pub fn restore(
        &self,
        counters: Vec<(CampaignId, CampaignCounters)>,
        events: Vec<CountedEvent>,
        legacy_events: Vec<(String, UnixMillis)>,
        window_ms: i64,
        now: UnixMillis,
    ) {
        for (id, c) in counters {
            self.inner.campaigns.insert(id, c);
        }
        let mut counted = self.inner.counted.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            if now.0 - e.at.0 <= window_ms {
                counted.admit(e.ad, e.kind, &e.event_id, now);
            }
        }
        drop(counted);
        for (id, at) in legacy_events {
            if now.0 - at.0 <= window_ms {
                self.inner.legacy.insert(id.into(), ());
            }
        }
    }

    /// Drops every history of `listener` (erasure; pinned).
    pub fn forget(&self, listener: &ListenerId) {
        drop(self.inner.histories.take(listener));
    }

    /// Whether the play of `fingerprint` (`TokenSigner::play_fingerprint`) is new, recording
    /// it: a retried RecordPlays stream counts each identified play once within the dedupe
    /// window.
    pub fn admit_play(&self, fingerprint: [u8; 32], now: UnixMillis) -> bool {
        // 128 bits of a keyed fingerprint: a collision (one play dropped as a retry) is as
        // likely as guessing the key.
        let key = u128::from_be_bytes(fingerprint[..16].try_into().unwrap_or_default());
        // The set is only ever inserted into whole; a panic mid-insert leaves it valid.
        self.inner.plays.lock().unwrap_or_else(|e| e.into_inner()).insert_new(key, (), now).is_none()
    }

    /// Records that the listener of keyed `fingerprint` was erased at `at`: an event of an ad
    /// decided before then still counts for the advertiser, but keeps nothing of the listener
    /// (`erased_since`). Remembered for the dedupe window, which outlives every token.
    pub fn erased(&self, fingerprint: [u8; 32], at: UnixMillis) {
        self.inner.erased.insert(fingerprint, at);
        self.inner.any_erased.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the listener whose fingerprint `fingerprint` gives was erased after an ad
    /// decided at `decided_at` (the fingerprint is computed only once someone was erased).
    pub fn erased_since(&self, fingerprint: impl FnOnce() -> [u8; 32], decided_at: UnixMillis) -> bool {
        self.inner.any_erased.load(std::sync::atomic::Ordering::Acquire)
            && self.inner.erased.get(&fingerprint()).is_some_and(|at| at >= decided_at)
    }
}

/// `SpendView` over the delivery counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct SpendAt<'a> {
    delivery: &'a Delivery,
    now: UnixMillis,
}

impl SpendView for SpendAt<'_> {
    fn spend(&self, campaign: &CampaignId) -> Spend {
        let (lifetime_micros, today_micros, impressions) = self.delivery.spent(campaign, self.now);
        let (reserved_micros, reserved_impressions) = self.delivery.reserved(campaign, self.now);
        Spend { lifetime_micros, today_micros, impressions, reserved_micros, reserved_impressions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Budget, Tier};

    #[test]
    fn a_play_id_counts_once_for_at_least_the_window_and_is_forgotten_after_two() {
        let window = Duration::from_secs(3600);
        let delivery = Delivery::new(window);
        let t = UnixMillis(1_795_435_200_000);
        let later = |ms: i64| UnixMillis(t.0 + ms);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert!(delivery.admit_play(a, t), "new");
        assert!(!delivery.admit_play(a, later(1)), "a retry");
        assert!(delivery.admit_play(b, later(3_599_000)), "another play");
        assert!(!delivery.admit_play(a, later(3_600_000)), "a window later: still a retry");
        assert!(!delivery.admit_play(b, later(7_100_000)), "b is within its window");
        assert!(delivery.admit_play(a, later(7_200_000)), "two windows later the id is forgotten");
    }

    #[test]
    fn an_event_counts_once_per_ad_and_kind_for_at_least_the_window() {
        use EventOutcome::{Accepted, AlreadyCounted, Retried};
        let mut counted = Counted::new(Duration::from_secs(3600));
        let t = UnixMillis(1_795_435_200_000);
        let later = |ms: i64| UnixMillis(t.0 + ms);
        let (ad, other) = (AdId(7), AdId(8));
        assert_eq!(counted.admit(ad, EventKind::Impression, "e1", t), Accepted);
        assert_eq!(counted.admit(ad, EventKind::Impression, "e1", later(1)), Retried, "the same event id");
        assert_eq!(counted.admit(ad, EventKind::Impression, "e2", later(2)), AlreadyCounted, "a replay");
        assert_eq!(counted.admit(ad, EventKind::Click, "e2", later(3)), Accepted, "another kind");
        assert_eq!(counted.admit(other, EventKind::Impression, "e1", later(4)), Accepted, "another ad");
        assert_eq!(
            counted.admit(ad, EventKind::Impression, "e3", later(3_600_000)),
            AlreadyCounted,
            "a window later: still counted"
        );
        assert!(counted.contains(ad, EventKind::Impression));
        assert!(!counted.contains(ad, EventKind::NotUsed));
        // Two windows on, its token has long expired: nothing needs it any more.
        assert_eq!(counted.admit(ad, EventKind::Impression, "e4", later(7_200_000)), Accepted);
    }

    #[test]
    fn a_reservation_is_taken_only_while_the_budget_has_room_for_it() {
        let mut c = crate::decision::tests::campaign("last-one", "adv", Tier::Standard, 10);
        // Room for two impressions at $10 CPM (10,000 micros each).
        c.budget = Budget { lifetime_micros: 20_000, ..Budget::default() };
        let delivery = Delivery::new(Duration::from_secs(3600));
        let now = UnixMillis(1_795_435_200_000);
        assert!(delivery.reserve_within_limits(&c, now));
        assert!(delivery.reserve_within_limits(&c, now));
        assert!(!delivery.reserve_within_limits(&c, now), "the third decision finds the budget taken");
        assert_eq!(delivery.reserved(&c.id, now), (20_000, 2));
    }
}
