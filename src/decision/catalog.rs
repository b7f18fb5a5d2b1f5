//! An immutable, indexed view of the campaigns: what one decision reads.
//!
//! Built whole on every catalog change and swapped in atomically by `store::Catalog`, so a
//! decision never sees a half-applied update and readers never take a lock.
//!
//! Every index list is sorted in rank order — tier first, then the campaign's score bound
//! (bid × the highest relevance it can reach) descending — so a decision can walk the lists
//! merged, best first, and stop as soon as no remaining campaign can enter the ranking.

use std::collections::HashMap;
use std::sync::Arc;

use crate::domain::{Campaign, CampaignStatus, GenreId, ListenerProfile, Tier};

/// Index of a campaign within `CatalogSnapshot::campaigns`.
pub type Slot = u32;

/// The campaigns that can serve, and indexes to find the few that matter for a request.
#[derive(Debug, Default)]
pub struct CatalogSnapshot {
    /// Every campaign, any status, sorted by id (the explain trace walks all of them).
    campaigns: Vec<Arc<Campaign>>,
    /// Active paid campaigns with affinity targeting, under each targeted genre.
    by_affinity_genre: HashMap<GenreId, Lists>,
    /// Active paid campaigns with track-genre targeting, under each track genre.
    by_track_genre: HashMap<GenreId, Lists>,
    /// Active paid campaigns without genre targeting, under each country of their request-geo rule.
    open_by_country: HashMap<Box<str>, Lists>,
    /// Active paid campaigns without genre targeting, under each country of their home-geo rule.
    open_by_home_country: HashMap<Box<str>, Lists>,
    /// Active paid campaigns without genre or geo targeting.
    open_anywhere: Lists,
    /// Active house campaigns (always evaluated: there are few, and they are the fallback).
    house: Vec<Slot>,
    /// Per slot: whether the campaign sits in more than one index list (only those need
    /// de-duplicating when lists are merged).
    multi: Vec<bool>,
}

/// The campaigns under one index key, split by their static relevance (geo and audience fit,
/// a handful of values), so that the relevance a list can reach is known exactly per request.
type Lists = Vec<List>;

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
    /// Bid × the highest relevance the campaign can reach.
    pub bound: f64,
    pub slot: Slot,
    pub tier: Tier,
}

impl CatalogSnapshot {
    /// Indexes `campaigns` (any order, unique ids).
    pub fn new(mut campaigns: Vec<Arc<Campaign>>) -> Self {
        campaigns.sort_by(|a, b| a.id.cmp(&b.id));
        debug_assert!(campaigns.windows(2).all(|w| w[0].id != w[1].id), "campaign ids are unique");
        let mut by_affinity_genre: HashMap<GenreId, Vec<Slot>> = HashMap::new();
        let mut by_track_genre: HashMap<GenreId, Vec<Slot>> = HashMap::new();
        let mut open_by_country: HashMap<Box<str>, Vec<Slot>> = HashMap::new();
        let mut open_by_home_country: HashMap<Box<str>, Vec<Slot>> = HashMap::new();
        let mut open_anywhere = Vec::new();
        let mut house = Vec::new();
        for (slot, campaign) in campaigns.iter().enumerate() {
            let slot = slot as Slot;
            if campaign.status != CampaignStatus::Active {
                continue;
            }
            let t = &campaign.targeting;
            if campaign.tier == Tier::House {
                house.push(slot);
            } else if t.targets_genres() {
                for g in dedup(&t.affinity_genres) {
                    by_affinity_genre.entry(g).or_default().push(slot);
                }
                // Also under the track genres (with or without affinity rules): a playing
                // targeted genre makes the genre fit 1, and that list is read at full bound.
                for g in dedup(&t.track_genres) {
                    by_track_genre.entry(g).or_default().push(slot);
                }
            } else if !t.geo_include.is_empty() {
                let index = if t.geo_use_home { &mut open_by_home_country } else { &mut open_by_country };
                let mut countries: Vec<&str> = t.geo_include.iter().map(|g| &*g.country).collect();
                countries.sort_unstable();
                countries.dedup();
                for country in countries {
                    index.entry(country.into()).or_default().push(slot);
                }
            } else {
                open_anywhere.push(slot);
            }
        }
        let mut lists_per_slot = vec![0u8; campaigns.len()];
        for list in by_affinity_genre
            .values()
            .chain(by_track_genre.values())
            .chain(open_by_country.values())
            .chain(open_by_home_country.values())
        {
            for &slot in list {
                lists_per_slot[slot as usize] = lists_per_slot[slot as usize].saturating_add(1);
            }
        }
        let split = |slots: Vec<Slot>| split_lists(&campaigns, slots);
        CatalogSnapshot {
            by_affinity_genre: by_affinity_genre.into_iter().map(|(k, v)| (k, split(v))).collect(),
            by_track_genre: by_track_genre.into_iter().map(|(k, v)| (k, split(v))).collect(),
            open_by_country: open_by_country.into_iter().map(|(k, v)| (k, split(v))).collect(),
            open_by_home_country: open_by_home_country.into_iter().map(|(k, v)| (k, split(v))).collect(),
            open_anywhere: split(open_anywhere),
            house,
            multi: lists_per_slot.into_iter().map(|n| n > 1).collect(),
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

    /// Active paid campaigns with an affinity rule on `genre`.
    pub fn affinity_lists(&self, genre: GenreId) -> &[List] {
        self.by_affinity_genre.get(&genre).map_or(&[], Vec::as_slice)
    }

    /// The paid campaigns that could serve this request, each once, in descending order of an
    /// upper bound of their score: a superset of the eligible ones that can clear their floor.
    /// `affinity_genres` pairs each genre whose affinity list should be read with the highest
    /// genre fit a campaign found there can reach (see `Context::affinity_lists`).
    pub fn retrieve<'a>(
        &'a self,
        affinity_genres: impl Iterator<Item = (GenreId, f64)>,
        track_genres: &[GenreId],
        request_country: Option<&str>,
        home: Option<&ListenerProfile>,
        default_floor: f64,
    ) -> Ranked<'a> {
        let mut ranked = Ranked {
            snapshot: self,
            lists: Vec::with_capacity(16),
            below_floor: Vec::new(),
            seen: Vec::new(),
        };
        for (g, fit) in affinity_genres {
            if let Some(lists) = self.by_affinity_genre.get(&g) {
                ranked.add(lists, Some(fit), default_floor);
            }
        }
        for g in track_genres {
            if let Some(lists) = self.by_track_genre.get(g) {
                ranked.add(lists, Some(1.0), default_floor);
            }
        }
        if let Some(lists) = request_country.and_then(|c| self.open_by_country.get(c)) {
            ranked.add(lists, None, default_floor);
        }
        let home_country = home.and_then(|p| p.details().home.as_ref()).map(|h| &*h.country);
        if let Some(lists) = home_country.and_then(|c| self.open_by_home_country.get(c)) {
            ranked.add(lists, None, default_floor);
        }
        ranked.add(&self.open_anywhere, None, default_floor);
        ranked
    }
}

/// Splits `slots` by static relevance into rank-ordered lists.
fn split_lists(campaigns: &[Arc<Campaign>], slots: Vec<Slot>) -> Lists {
    use super::eligibility::{max_relevance, static_relevance};
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
        list.entries.push(Entry { bound: c.bid_cpm_micros as f64 * max_relevance(c), slot, tier: c.tier });
    }
    for list in &mut lists {
        list.entries
            .sort_by(|a, b| a.tier.cmp(&b.tier).then(b.bound.total_cmp(&a.bound)).then(a.slot.cmp(&b.slot)));
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
    /// Lists set aside: every campaign in them is below its relevance floor here.
    below_floor: Vec<&'a [Entry]>,
    /// Slots already yielded, sorted.
    seen: Vec<Slot>,
}

impl<'a> Ranked<'a> {
    /// Adds the lists of one index key. `genre_fit` is the highest genre fit its campaigns can
    /// reach (None: they target no genre, and have the neutral fit). Lists whose best relevance
    /// is under every floor in them are set aside: nothing there can serve.
    fn add(&mut self, lists: &'a [List], genre_fit: Option<f64>, default_floor: f64) {
        use super::eligibility::{NEUTRAL_GENRE_FIT, relevance_of};
        for list in lists {
            let (reachable, best) = match genre_fit {
                Some(fit) => {
                    (relevance_of(fit, list.static_relevance), relevance_of(1.0, list.static_relevance))
                }
                None => {
                    let r = relevance_of(NEUTRAL_GENRE_FIT, list.static_relevance);
                    (r, r)
                }
            };
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
            // Entries hold bid × the campaign's best relevance; scale to what is reachable here.
            self.lists.push((&list.entries, reachable / best));
        }
    }

    /// The lists set aside because none of their campaigns can clear its relevance floor.
    pub fn below_floor(&self) -> impl Iterator<Item = &'a Entry> + '_ {
        self.below_floor.iter().flat_map(|l| l.iter())
    }
}

impl Iterator for Ranked<'_> {
    type Item = Retrieved;

    fn next(&mut self) -> Option<Retrieved> {
        loop {
            // Few lists (the listener's genres and a couple more): a linear scan beats a heap.
            let mut best: Option<(usize, Tier, f64)> = None;
            for (i, &(list, factor)) in self.lists.iter().enumerate() {
                let Some(head) = list.first() else { continue };
                let bound = head.bound * factor;
                let better = match best {
                    None => true,
                    Some((_, bt, bb)) => head.tier < bt || (head.tier == bt && bound > bb),
                };
                if better {
                    best = Some((i, head.tier, bound));
                }
            }
            let (i, tier, bound) = best?;
            let slot = self.lists[i].0[0].slot;
            self.lists[i].0 = &self.lists[i].0[1..];
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
