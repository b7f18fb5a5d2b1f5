//! An immutable, indexed view of the campaigns: what one decision reads.
//!
//! Built whole on every catalog change and swapped in atomically by `store::Catalog`, so a
//! decision never sees a half-applied update and readers never take a lock.
//!
//! Every index list is sorted in rank order — tier first, then bid descending. The campaigns of
//! one list share the relevance they can reach for a request, so a list's order is their score
//! order whatever the rank key's exponent, and a decision can walk the lists merged, best first,
//! each scaled by what it can reach, and stop as soon as no remaining campaign can enter the
//! ranking.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::Policy;
use crate::domain::{
    Campaign, CampaignId, CampaignStatus, GenreId, GeoLocation, ListenerProfile, Tier, UnixMillis,
};

/// The maps of the snapshot: built once per catalog change, read by every decision.
type IndexMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Index of a campaign within `CatalogSnapshot::campaigns`.
pub type Slot = u32;

/// The campaigns that can serve, and indexes to find the few that matter for a request.
#[derive(Debug, Default)]
pub struct CatalogSnapshot {
    /// Every campaign, any status, sorted by id (the explain trace walks all of them).
    campaigns: Vec<Arc<Campaign>>,
    /// The slot of each campaign id: recording an event finds its campaign here with one hash
    /// and one comparison, where a search of the sorted ids compares ~14 strings.
    by_id: IndexMap<CampaignId, Slot>,
    /// Active paid campaigns with affinity targeting, under each targeted genre.
    by_affinity_genre: IndexMap<GenreId, GenreLists>,
    /// The same, for the campaigns of `by_affinity_genre` that may serve without consent on the
    /// context's evidence alone (`Targeting::needs_consent`): what a decision without consent
    /// reads, so that it does not walk the many that would be rejected for want of it.
    by_contextual_genre: IndexMap<GenreId, GenreLists>,
    /// Active paid campaigns with track-genre targeting, under each track genre.
    by_track_genre: IndexMap<GenreId, GenreLists>,
    /// Active paid campaigns without genre targeting, under each country of their geo rule.
    open_by_place: IndexMap<Place, Lists>,
    /// Active paid campaigns without genre or geo targeting.
    open_anywhere: Lists,
    /// Active house campaigns (evaluated when no paid ad fills, or for the trace).
    house: Vec<Slot>,
    /// Per slot: whether the campaign sits in more than one index list (only those need
    /// de-duplicating when lists are merged).
    multi: Vec<bool>,
    /// Per slot: until when (unix ms) the campaign is known to be held back by its pacing or
    /// budget, whoever the listener. The one thing in a snapshot that decisions write: a memo
    /// of `pacing::held_until`, so that paced campaigns, which lead every list of their tier,
    /// do not cost each decision a spend lookup apiece.
    held: Box<[AtomicI64]>,
}

/// The campaigns under one index key, split by their static relevance (geo and audience fit,
/// a handful of values), so that the relevance a list can reach is known exactly per request.
type Lists = Vec<List>;

/// The campaigns under one genre, split by where they may serve: those without a country rule,
/// and those under each country their geo rule names. A decision reads only the lists of the
/// request's and the listener's home country, so campaigns for other countries cost nothing.
#[derive(Debug, Default)]
struct GenreLists {
    anywhere: Lists,
    /// Few entries (the countries campaigns of this genre name): a scan beats a map.
    by_place: Vec<(Place, Lists)>,
}

/// Where a campaign's geo rule is checked, as an index key: one country of the request's
/// location, or of the listener's home.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Place {
    Request([u8; 2]),
    Home([u8; 2]),
}

impl Place {
    /// The keys of the places `c` may serve in, or None when it may serve anywhere (as far as
    /// the index knows: a country that is not a two-letter code is left to the geo rule).
    fn of(c: &Campaign) -> Option<Vec<Place>> {
        let t = &c.targeting;
        if t.geo_include.is_empty() {
            return None;
        }
        let mut places = Vec::with_capacity(t.geo_include.len());
        for g in &t.geo_include {
            let code = country_code(g)?;
            places.push(if t.geo_use_home { Place::Home(code) } else { Place::Request(code) });
        }
        places.sort_unstable_by_key(|p| match *p {
            Place::Request(c) => (0, c),
            Place::Home(c) => (1, c),
        });
        places.dedup();
        Some(places)
    }
}

fn country_code(at: &GeoLocation) -> Option<[u8; 2]> {
    at.country.as_bytes().try_into().ok()
}

/// Campaigns sharing an index key and a static relevance, in rank order.
#[derive(Debug, Default)]
pub struct List {
    /// The geo and audience part of relevance, the same for every campaign here.
    static_relevance: f64,
    /// The lowest relevance-floor override here (infinite when none overrides).
    min_floor_override: f64,
    /// Whether some campaign here uses the server's default floor.
    default_floor: bool,
    entries: Vec<Entry>,
    /// The run of held campaigns this list starts with (its first tier's paced deals), as
    /// `held_run::pack(until, length)`: the first `length` entries are all held until `until`
    /// at least, so a decision passes them with one load instead of one per campaign.
    held_run: AtomicU64,
}

/// `List::held_run`: an instant in unix ms (41 bits) and a run length (23 bits).
mod held_run {
    const LEN_BITS: u32 = 23;
    const LEN_MASK: u64 = (1 << LEN_BITS) - 1;

    pub(super) fn pack(until: i64, len: usize) -> u64 {
        // A run too long to count is recorded shorter: it only means more per-campaign loads.
        (u64::try_from(until).unwrap_or(0) << LEN_BITS) | (len as u64).min(LEN_MASK)
    }

    pub(super) fn unpack(packed: u64) -> (i64, usize) {
        ((packed >> LEN_BITS) as i64, (packed & LEN_MASK) as usize)
    }
}

impl List {
    /// The campaigns, in rank order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// One campaign in an index list, with its rank key inline so a merge reads lists sequentially.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    /// The bid (CPM micros). Within a list every campaign reaches the same relevance for a
    /// request, so the rank key is the bid times one factor per list and request.
    pub bid: f64,
    pub slot: Slot,
    pub tier: Tier,
}

impl CatalogSnapshot {
    /// Indexes `campaigns` (any order, unique ids).
    pub fn new(mut campaigns: Vec<Arc<Campaign>>) -> Self {
        campaigns.sort_by(|a, b| a.id.cmp(&b.id));
        debug_assert!(campaigns.windows(2).all(|w| w[0].id != w[1].id), "campaign ids are unique");
        // Slots per key while collecting; split into rank-ordered lists at the end.
        type Slots = Vec<Slot>;
        let mut by_affinity_genre: IndexMap<(GenreId, Option<Place>), Slots> = IndexMap::default();
        let mut by_contextual_genre: IndexMap<(GenreId, Option<Place>), Slots> = IndexMap::default();
        let mut by_track_genre: IndexMap<(GenreId, Option<Place>), Slots> = IndexMap::default();
        let mut open_by_place: IndexMap<Place, Slots> = IndexMap::default();
        let mut open_anywhere = Vec::new();
        let mut house = Vec::new();
        let mut lists_per_slot = vec![0u8; campaigns.len()];
        for (slot, campaign) in campaigns.iter().enumerate() {
            let slot = slot as Slot;
            if campaign.status != CampaignStatus::Active {
                continue;
            }
            let t = &campaign.targeting;
            if campaign.tier == Tier::House {
                house.push(slot);
                continue;
            }
            let places = Place::of(campaign);
            let mut keys: Vec<Option<Place>> = match places {
                Some(places) => places.into_iter().map(Some).collect(),
                None => vec![None],
            };
            if !t.targets_genres() && keys == [None] {
                open_anywhere.push(slot);
                continue;
            }
            let mut lists = 0usize;
            if t.targets_genres() {
                // A decision reads either the affinity lists or the contextual ones, never both,
                // so only the former count towards `multi`.
                let contextual = !t.needs_consent();
                for g in dedup(&t.affinity_genres) {
                    for &place in &keys {
                        by_affinity_genre.entry((g, place)).or_default().push(slot);
                        if contextual {
                            by_contextual_genre.entry((g, place)).or_default().push(slot);
                        }
                        lists += 1;
                    }
                }
                // Also under the track genres (with or without affinity rules): a playing
                // targeted genre makes the genre fit 1, and that list is read at full bound.
                for g in dedup(&t.track_genres) {
                    for &place in &keys {
                        by_track_genre.entry((g, place)).or_default().push(slot);
                        lists += 1;
                    }
                }
            } else {
                for place in keys.drain(..).flatten() {
                    open_by_place.entry(place).or_default().push(slot);
                    lists += 1;
                }
            }
            lists_per_slot[slot as usize] = u8::try_from(lists).unwrap_or(u8::MAX);
        }
        let split = |slots: Vec<Slot>| split_lists(&campaigns, slots);
        let by_genre = |slots: IndexMap<(GenreId, Option<Place>), Slots>| {
            let mut out: IndexMap<GenreId, GenreLists> = IndexMap::default();
            for ((genre, place), slots) in slots {
                let lists = out.entry(genre).or_default();
                match place {
                    None => lists.anywhere = split(slots),
                    Some(place) => lists.by_place.push((place, split(slots))),
                }
            }
            out
        };
        CatalogSnapshot {
            by_affinity_genre: by_genre(by_affinity_genre),
            by_contextual_genre: by_genre(by_contextual_genre),
            by_track_genre: by_genre(by_track_genre),
            open_by_place: open_by_place.into_iter().map(|(k, v)| (k, split(v))).collect(),
            open_anywhere: split(open_anywhere),
            house,
            multi: lists_per_slot.into_iter().map(|n| n > 1).collect(),
            held: campaigns.iter().map(|_| AtomicI64::new(0)).collect(),
            by_id: campaigns.iter().enumerate().map(|(slot, c)| (c.id.clone(), slot as Slot)).collect(),
            campaigns,
        }
    }

    /// All campaigns, sorted by id.
    pub fn campaigns(&self) -> &[Arc<Campaign>] {
        &self.campaigns
    }

    /// The campaign in `slot`.
    pub fn get(&self, slot: Slot) -> &Arc<Campaign> {
        &self.campaigns[slot as usize]
    }

    /// The campaign with `id`, of any status.
    pub fn find(&self, id: &str) -> Option<&Arc<Campaign>> {
        self.by_id.get(id).map(|&slot| self.get(slot))
    }

    /// Whether the campaign in `slot` is known to be held back by pacing or budget at `now`.
    pub fn is_held(&self, slot: Slot, now: UnixMillis) -> bool {
        // Relaxed: a stale read only makes a decision look at the campaign itself.
        self.held[slot as usize].load(Ordering::Relaxed) > now.0
    }

    /// Records that the campaign in `slot` is held back until `until`.
    pub fn hold(&self, slot: Slot, until: UnixMillis) {
        self.held[slot as usize].store(until.0, Ordering::Relaxed);
    }

    fn held_until(&self, slot: Slot) -> i64 {
        self.held[slot as usize].load(Ordering::Relaxed)
    }

    /// Number of campaigns of any status.
    pub fn len(&self) -> usize {
        self.campaigns.len()
    }

    /// Whether there are no campaigns at all.
    pub fn is_empty(&self) -> bool {
        self.campaigns.is_empty()
    }

    /// Active house campaigns.
    pub fn house(&self) -> &[Slot] {
        &self.house
    }

    /// Active paid campaigns with an affinity rule on `genre`, wherever they may serve.
    pub fn affinity_lists(&self, genre: GenreId) -> impl Iterator<Item = &List> {
        self.by_affinity_genre
            .get(&genre)
            .into_iter()
            .flat_map(|g| g.anywhere.iter().chain(g.by_place.iter().flat_map(|(_, lists)| lists.iter())))
    }

    /// The paid campaigns that could serve this request, each once, in descending order of an
    /// upper bound of their score: a superset of the eligible ones that can clear their floor.
    /// `affinity.genres` pairs each genre whose affinity list should be read with the highest
    /// genre fit a campaign found there can reach (see `Context::affinity_lists`); without
    /// consent only the campaigns that may serve on the context are read there.
    ///
    /// With `skip_held_at`, campaigns known to be held back by pacing or budget at that instant
    /// are passed over inside the merge (`Ranked::skipped_held` tells whether any were).
    pub fn retrieve<'a>(
        &'a self,
        affinity: Affinity<impl Iterator<Item = (GenreId, f64)>>,
        track_genres: &[GenreId],
        request_country: Option<&str>,
        home: Option<&ListenerProfile>,
        policy: &Policy,
        skip_held_at: Option<UnixMillis>,
    ) -> Ranked<'a> {
        let (default_floor, exponent) = (policy.relevance_floor, policy.relevance_exponent);
        let mut ranked = Ranked {
            snapshot: self,
            lists: Vec::with_capacity(32),
            heads: Vec::with_capacity(32),
            below_floor: Vec::new(),
            seen: Vec::new(),
            skip_held_at,
            skipped_held: false,
        };
        let request = request_country.and_then(|c| c.as_bytes().try_into().ok()).map(Place::Request);
        let home = home.and_then(|p| p.details().home.as_ref()).and_then(country_code).map(Place::Home);
        let here = |place: &Place| Some(*place) == request || Some(*place) == home;
        let add_genre = |ranked: &mut Ranked<'a>, lists: &'a GenreLists, fit: f64| {
            ranked.add(&lists.anywhere, Some(fit), default_floor, exponent);
            for (place, lists) in &lists.by_place {
                if here(place) {
                    ranked.add(lists, Some(fit), default_floor, exponent);
                }
            }
        };
        let index = if affinity.consented { &self.by_affinity_genre } else { &self.by_contextual_genre };
        for (g, fit) in affinity.genres {
            if let Some(lists) = index.get(&g) {
                add_genre(&mut ranked, lists, fit);
            }
        }
        for g in track_genres {
            if let Some(lists) = self.by_track_genre.get(g) {
                add_genre(&mut ranked, lists, 1.0);
            }
        }
        for place in [request, home].into_iter().flatten() {
            if let Some(lists) = self.open_by_place.get(&place) {
                ranked.add(lists, None, default_floor, exponent);
            }
        }
        ranked.add(&self.open_anywhere, None, default_floor, exponent);
        ranked
    }
}

/// The affinity lists a decision reads (see `CatalogSnapshot::retrieve`).
#[derive(Debug)]
pub struct Affinity<I> {
    /// Each genre to read, with the highest genre fit a campaign found there can reach.
    pub genres: I,
    /// Whether profile data may be used; without, only the campaigns that may serve on the
    /// context's evidence are read.
    pub consented: bool,
}

/// Splits `slots` by static relevance into rank-ordered lists.
fn split_lists(campaigns: &[Arc<Campaign>], slots: Vec<Slot>) -> Lists {
    use super::eligibility::static_relevance;
    let mut lists: Lists = Vec::new();
    for slot in slots {
        let c = &campaigns[slot as usize];
        let s = static_relevance(c);
        let i = match lists.iter().position(|l| l.static_relevance == s) {
            Some(i) => i,
            None => {
                lists.push(List {
                    static_relevance: s,
                    min_floor_override: f64::INFINITY,
                    ..List::default()
                });
                lists.len() - 1
            }
        };
        let list = &mut lists[i];
        match c.relevance_floor {
            Some(floor) => list.min_floor_override = list.min_floor_override.min(floor),
            None => list.default_floor = true,
        }
        list.entries.push(Entry { bid: c.bid_cpm_micros as f64, slot, tier: c.tier });
    }
    for list in &mut lists {
        list.entries
            .sort_by(|a, b| a.tier.cmp(&b.tier).then(b.bid.total_cmp(&a.bid)).then(a.slot.cmp(&b.slot)));
    }
    lists
}

/// A retrieved candidate: its slot, tier and an upper bound of the score it can reach here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retrieved {
    pub slot: Slot,
    pub tier: Tier,
    pub bound: f64,
}

/// The merge of several rank-ordered index lists, each scaled by its factor: yields candidates
/// by tier, then bound descending, each campaign once (at its highest bound). Lazy, so a
/// decision pays only for the candidates it looks at.
#[derive(Debug)]
pub struct Ranked<'a> {
    snapshot: &'a CatalogSnapshot,
    /// The unconsumed rest of each list, with its factor.
    lists: Vec<(&'a [Entry], f64)>,
    /// The rank key of each list's head, side by side so a step scans one small array
    /// instead of visiting every list; an exhausted list holds `EXHAUSTED`.
    heads: Vec<(Tier, f64)>,
    /// Lists set aside: every campaign in them is below its relevance floor here.
    below_floor: Vec<&'a [Entry]>,
    /// Slots already yielded, sorted.
    seen: Vec<Slot>,
    /// Pass over campaigns held back at this instant (see `CatalogSnapshot::hold`).
    skip_held_at: Option<UnixMillis>,
    skipped_held: bool,
}

impl<'a> Ranked<'a> {
    /// Adds the lists of one index key. `genre_fit` is the highest genre fit its campaigns can
    /// reach (None: they target no genre, and have the neutral fit). Lists whose best relevance
    /// is under every floor in them are set aside: nothing there can serve.
    fn add(&mut self, lists: &'a [List], genre_fit: Option<f64>, default_floor: f64, exponent: i32) {
        use super::eligibility::{NEUTRAL_GENRE_FIT, relevance_of};
        for list in lists {
            let reachable = relevance_of(genre_fit.unwrap_or(NEUTRAL_GENRE_FIT), list.static_relevance);
            let floor = if list.default_floor {
                list.min_floor_override.min(default_floor)
            } else {
                list.min_floor_override
            };
            if list.entries.is_empty() {
                continue;
            }
            if reachable < floor {
                self.below_floor.push(&list.entries);
                continue;
            }
            // bid × reachable^exponent bounds the score of every campaign here.
            let factor = reachable.powi(exponent);
            let entries = self.past_held_run(list);
            self.lists.push((entries, factor));
            self.heads.push(entries.first().map_or(EXHAUSTED, |e| (e.tier, e.bid * factor)));
        }
    }

    /// `entries` from the first campaign not held back. Paced campaigns lead their lists (they
    /// are of the first tier), so passing them here, one atomic load each, spares the merge a
    /// step per held campaign and list.
    fn past_held(&mut self, entries: &'a [Entry]) -> &'a [Entry] {
        let Some(now) = self.skip_held_at else { return entries };
        let held = entries.iter().take_while(|e| self.snapshot.is_held(e.slot, now)).count();
        self.skipped_held |= held > 0;
        &entries[held..]
    }

    /// `list`'s entries from the first campaign not held back: the run of held campaigns it
    /// starts with is passed by its memo while the memo holds, and the memo renewed when the
    /// run has grown.
    fn past_held_run(&mut self, list: &'a List) -> &'a [Entry] {
        let Some(now) = self.skip_held_at else { return &list.entries };
        let (until, len) = held_run::unpack(list.held_run.load(Ordering::Relaxed));
        let known = if until > now.0 { len.min(list.entries.len()) } else { 0 };
        let more = list.entries[known..].iter().take_while(|e| self.snapshot.is_held(e.slot, now)).count();
        let run = known + more;
        if more > 0 {
            // Holds end on shared period boundaries (`pacing::held_until`), so the run's earliest
            // end is usually the next boundary: about one renewal per list and period.
            let until = list.entries[..run].iter().map(|e| self.snapshot.held_until(e.slot)).min();
            list.held_run.store(held_run::pack(until.unwrap_or(0), run), Ordering::Relaxed);
        }
        self.skipped_held |= run > 0;
        &list.entries[run..]
    }

    /// Whether campaigns held back by pacing or budget were passed over.
    pub fn skipped_held(&self) -> bool {
        self.skipped_held
    }

    /// The lists set aside because none of their campaigns can clear its relevance floor.
    pub fn below_floor(&self) -> impl Iterator<Item = &'a Entry> + '_ {
        self.below_floor.iter().flat_map(|l| l.iter())
    }
}

/// The head key of an exhausted list: below every real one (lists hold no house ads).
const EXHAUSTED: (Tier, f64) = (Tier::House, f64::NEG_INFINITY);

impl Iterator for Ranked<'_> {
    type Item = Retrieved;

    fn next(&mut self) -> Option<Retrieved> {
        loop {
            // Tens of lists at most, and a decision takes few steps: a linear scan of the head
            // keys beats building a heap.
            let mut best = 0;
            let mut best_key = EXHAUSTED;
            for (i, &(tier, bound)) in self.heads.iter().enumerate() {
                if tier < best_key.0 || (tier == best_key.0 && bound > best_key.1) {
                    best = i;
                    best_key = (tier, bound);
                }
            }
            if best_key.1 == f64::NEG_INFINITY {
                return None;
            }
            let (tier, bound) = best_key;
            let (entries, factor) = self.lists[best];
            let slot = entries[0].slot;
            let rest = self.past_held(&entries[1..]);
            self.lists[best].0 = rest;
            self.heads[best] = rest.first().map_or(EXHAUSTED, |e| (e.tier, e.bid * factor));
            if !self.snapshot.multi[slot as usize] {
                return Some(Retrieved { slot, tier, bound });
            }
            if let Err(at) = self.seen.binary_search(&slot) {
                self.seen.insert(at, slot);
                return Some(Retrieved { slot, tier, bound });
            }
        }
    }
}

fn dedup(genres: &[GenreId]) -> Vec<GenreId> {
    let mut v = genres.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
