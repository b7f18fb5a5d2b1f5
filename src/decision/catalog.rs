//! An immutable, indexed view of the active campaigns: what one decision reads.
//!
//! Built whole on every catalog change and swapped in atomically by `store::Catalog`, so a
//! decision never sees a half-applied update and readers never take a lock.

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
    /// Active campaigns with affinity targeting, under each targeted genre.
    by_affinity_genre: HashMap<GenreId, Vec<Slot>>,
    /// Active campaigns with track-genre but no affinity targeting, under each track genre.
    by_track_genre: HashMap<GenreId, Vec<Slot>>,
    /// Active campaigns without genre targeting, under each country of their request-geo rule.
    open_by_country: HashMap<Box<str>, Vec<Slot>>,
    /// Active campaigns without genre targeting, under each country of their home-geo rule.
    open_by_home_country: HashMap<Box<str>, Vec<Slot>>,
    /// Active campaigns without genre or geo targeting.
    open_anywhere: Vec<Slot>,
    /// Active house campaigns (always evaluated: there are few, and they are the fallback).
    house: Vec<Slot>,
}

impl CatalogSnapshot {
    /// Indexes `campaigns` (any order, unique ids).
    pub fn new(mut campaigns: Vec<Arc<Campaign>>) -> Self {
        campaigns.sort_by(|a, b| a.id.cmp(&b.id));
        debug_assert!(campaigns.windows(2).all(|w| w[0].id != w[1].id), "campaign ids are unique");
        let mut snapshot = CatalogSnapshot::default();
        for (slot, campaign) in campaigns.iter().enumerate() {
            let slot = slot as Slot;
            if campaign.status != CampaignStatus::Active {
                continue;
            }
            let t = &campaign.targeting;
            if campaign.tier == Tier::House {
                snapshot.house.push(slot);
            } else if !t.affinity_genres.is_empty() {
                for g in dedup(&t.affinity_genres) {
                    snapshot.by_affinity_genre.entry(g).or_default().push(slot);
                }
            } else if !t.track_genres.is_empty() {
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

    /// Number of campaigns of any status.
    pub fn len(&self) -> usize {
        self.campaigns.len()
    }

    /// Whether there are no campaigns at all.
    pub fn is_empty(&self) -> bool {
        self.campaigns.is_empty()
    }

    /// Appends to `out` every slot that could serve this request: a superset of the eligible
    /// campaigns, sorted and without duplicates. `affinity_genres` are the listener's genres
    /// that can satisfy an affinity rule (empty when profile data may not be used).
    pub fn retrieve(
        &self,
        affinity_genres: impl Iterator<Item = GenreId>,
        track_genres: &[GenreId],
        request_country: Option<&str>,
        home: Option<&ListenerProfile>,
        out: &mut Vec<Slot>,
    ) {
        for g in affinity_genres {
            if let Some(slots) = self.by_affinity_genre.get(&g) {
                out.extend_from_slice(slots);
            }
        }
        for g in track_genres {
            if let Some(slots) = self.by_track_genre.get(g) {
                out.extend_from_slice(slots);
            }
        }
        if let Some(slots) = request_country.and_then(|c| self.open_by_country.get(c)) {
            out.extend_from_slice(slots);
        }
        let home_country = home.and_then(|p| p.home.as_ref()).map(|h| &*h.country);
        if let Some(slots) = home_country.and_then(|c| self.open_by_home_country.get(c)) {
            out.extend_from_slice(slots);
        }
        out.extend_from_slice(&self.open_anywhere);
        out.extend_from_slice(&self.house);
        out.sort_unstable();
        out.dedup();
    }
}

fn dedup(genres: &[GenreId]) -> Vec<GenreId> {
    let mut v = genres.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
