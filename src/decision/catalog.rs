//! An immutable, indexed view of the campaigns: what one decision reads.
//!
//! Built whole on every catalog change and swapped in atomically by `store::Catalog`, so a
//! decision never sees a half-applied update and readers never take a lock.
//!
//! Every index list is sorted in rank order — tier first, then the campaign's score bound
//! (bid × the highest relevance it can reach) descending — so a decision can walk the lists
//! merged, best first, and stop as soon as no remaining campaign can enter the ranking.

use std::cmp::Ordering;
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
    /// Per slot: (tier, score bound), the rank key of the index lists.
    rank: Vec<(Tier, f64)>,
    /// Active paid campaigns with affinity targeting, under each targeted genre.
    by_affinity_genre: HashMap<GenreId, Vec<Slot>>,
    /// Active paid campaigns with track-genre targeting, under each track genre.
    by_track_genre: HashMap<GenreId, Vec<Slot>>,
    /// Active paid campaigns without genre targeting, under each country of their request-geo rule.
    open_by_country: HashMap<Box<str>, Vec<Slot>>,
    /// Active paid campaigns without genre targeting, under each country of their home-geo rule.
    open_by_home_country: HashMap<Box<str>, Vec<Slot>>,
    /// Active paid campaigns without genre or geo targeting.
    open_anywhere: Vec<Slot>,
    /// Active house campaigns (always evaluated: there are few, and they are the fallback).
    house: Vec<Slot>,
    /// Per slot: whether the campaign sits in more than one index list (only those need
    /// de-duplicating when lists are merged).
    multi: Vec<bool>,
}

impl CatalogSnapshot {
    /// Indexes `campaigns` (any order, unique ids).
    pub fn new(mut campaigns: Vec<Arc<Campaign>>) -> Self {
        campaigns.sort_by(|a, b| a.id.cmp(&b.id));
        debug_assert!(campaigns.windows(2).all(|w| w[0].id != w[1].id), "campaign ids are unique");
        let mut snapshot = CatalogSnapshot {
            rank: campaigns
                .iter()
                .map(|c| (c.tier, c.bid_cpm_micros as f64 * super::eligibility::max_relevance(c)))
                .collect(),
            ..CatalogSnapshot::default()
        };
        for (slot, campaign) in campaigns.iter().enumerate() {
            let slot = slot as Slot;
            if campaign.status != CampaignStatus::Active {
                continue;
            }
            let t = &campaign.targeting;
            if campaign.tier == Tier::House {
                snapshot.house.push(slot);
            } else if t.targets_genres() {
                for g in dedup(&t.affinity_genres) {
                    snapshot.by_affinity_genre.entry(g).or_default().push(slot);
                }
                // Also under the track genres (with or without affinity rules): a playing
                // targeted genre makes the genre fit 1, and that list is read at full bound.
                for g in dedup(&t.track_genres) {
                    snapshot.by_track_genre.entry(g).or_default().push(slot);
                }
            } else if !t.geo_include.is_empty() {
                let index = if t.geo_use_home {
                    &mut snapshot.open_by_home_country
                } else {
                    &mut snapshot.open_by_country
                };
                let mut countries: Vec<&str> = t.geo_include.iter().map(|g| &*g.country).collect();
                countries.sort_unstable();
                countries.dedup();
                for country in countries {
                    index.entry(country.into()).or_default().push(slot);
                }
            } else {
                snapshot.open_anywhere.push(slot);
            }
        }
        let mut lists_per_slot = vec![0u8; campaigns.len()];
        for list in snapshot
            .by_affinity_genre
            .values()
            .chain(snapshot.by_track_genre.values())
            .chain(snapshot.open_by_country.values())
            .chain(snapshot.open_by_home_country.values())
        {
            for &slot in list {
                lists_per_slot[slot as usize] = lists_per_slot[slot as usize].saturating_add(1);
            }
        }
        snapshot.multi = lists_per_slot.into_iter().map(|n| n > 1).collect();
        let rank = std::mem::take(&mut snapshot.rank);
        let order = |a: &Slot, b: &Slot| rank_order(&rank, *a, *b);
        for list in snapshot
            .by_affinity_genre
            .values_mut()
            .chain(snapshot.by_track_genre.values_mut())
            .chain(snapshot.open_by_country.values_mut())
            .chain(snapshot.open_by_home_country.values_mut())
        {
            list.sort_by(order);
        }
        snapshot.open_anywhere.sort_by(order);
        snapshot.rank = rank;
        snapshot.campaigns = campaigns;
        snapshot
    }

    /// All campaigns, sorted by id.
    pub fn campaigns(&self) -> &[Arc<Campaign>] {
        &self.campaigns
    }

    /// The campaign in `slot`.
    pub fn get(&self, slot: Slot) -> &Arc<Campaign> {
        &self.campaigns[slot as usize]
    }

    /// The rank key of `slot`: its tier and the highest score it can reach.
    pub fn rank(&self, slot: Slot) -> (Tier, f64) {
        self.rank[slot as usize]
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

    /// Active paid campaigns with an affinity rule on `genre`, in rank order.
    pub fn affinity_list(&self, genre: GenreId) -> &[Slot] {
        self.by_affinity_genre.get(&genre).map_or(&[], Vec::as_slice)
    }

    /// The paid campaigns that could serve this request, each once, in descending order of an
    /// upper bound of their score: a superset of the eligible ones. `affinity_genres` pairs each
    /// genre whose affinity list should be read with a factor in (0, 1] that bounds how much of
    /// its rank bound a campaign found there can reach (see `Context::affinity_lists`).
    pub fn retrieve<'a>(
        &'a self,
        affinity_genres: impl Iterator<Item = (GenreId, f64)>,
        track_genres: &[GenreId],
        request_country: Option<&str>,
        home: Option<&ListenerProfile>,
    ) -> Ranked<'a> {
        let mut lists: Vec<(&'a [Slot], f64)> = Vec::with_capacity(16);
        lists.extend(
            affinity_genres.filter_map(|(g, f)| self.by_affinity_genre.get(&g).map(|l| (l.as_slice(), f))),
        );
        lists.extend(
            track_genres.iter().filter_map(|g| self.by_track_genre.get(g)).map(|l| (l.as_slice(), 1.0)),
        );
        lists.extend(request_country.and_then(|c| self.open_by_country.get(c)).map(|l| (l.as_slice(), 1.0)));
        let home_country = home.and_then(|p| p.home.as_ref()).map(|h| &*h.country);
        lists
            .extend(home_country.and_then(|c| self.open_by_home_country.get(c)).map(|l| (l.as_slice(), 1.0)));
        lists.push((&self.open_anywhere, 1.0));
        lists.retain(|(l, _)| !l.is_empty());
        Ranked { snapshot: self, lists, seen: Vec::new() }
    }
}

/// Tier first (sponsorship first), then score bound descending, then slot.
fn rank_order(rank: &[(Tier, f64)], a: Slot, b: Slot) -> Ordering {
    let (ta, sa) = rank[a as usize];
    let (tb, sb) = rank[b as usize];
    ta.cmp(&tb).then(sb.total_cmp(&sa)).then(a.cmp(&b))
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
    lists: Vec<(&'a [Slot], f64)>,
    /// Slots already yielded, sorted.
    seen: Vec<Slot>,
}

impl Iterator for Ranked<'_> {
    type Item = Retrieved;

    fn next(&mut self) -> Option<Retrieved> {
        loop {
            // Few lists (the listener's genres and a couple more): a linear scan beats a heap.
            let mut best: Option<(usize, Tier, f64)> = None;
            for (i, &(list, factor)) in self.lists.iter().enumerate() {
                let Some(&head) = list.first() else { continue };
                let (tier, bound) = self.snapshot.rank[head as usize];
                let bound = bound * factor;
                let better = match best {
                    None => true,
                    Some((_, bt, bb)) => tier < bt || (tier == bt && bound > bb),
                };
                if better {
                    best = Some((i, tier, bound));
                }
            }
            let (i, tier, bound) = best?;
            let slot = self.lists[i].0[0];
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
