//! Ranking: the best set of ads for a break, and the best house ad.
//!
//! A break is a small knapsack: at most `max_ads` ads, durations within `max_duration`, no two
//! ads of one advertiser or sharing a category. Candidates are ordered by tier, then score; a
//! branch-and-bound search over the best `SEARCH_WIDTH` finds the set of greatest value, where
//! one ad of a higher tier is worth more than any number of ads of lower tiers.

use super::eligibility::Candidate;
use crate::domain::Tier;

/// Only the best this-many candidates are searched; deeper ones cannot beat them in practice
/// and the search stays bounded whatever the catalog size.
const SEARCH_WIDTH: usize = 24;
/// Tier weight base: one ad of a tier outweighs ten ads of the tier below (each worth < 2).
const TIER_BASE: f64 = 32.0;

/// Sorts `candidates` into rank order and returns the indices of the best break, in play order.
pub(super) fn best_break(candidates: &mut [Candidate], max_ads: u8, max_duration_ms: u32) -> Vec<usize> {
    candidates.sort_by(|a, b| {
        a.campaign
            .tier
            .cmp(&b.campaign.tier)
            .then(b.score.total_cmp(&a.score))
            .then_with(|| a.campaign.id.cmp(&b.campaign.id))
    });
    let width = candidates.len().min(SEARCH_WIDTH);
    if width == 0 || max_ads == 0 {
        return Vec::new();
    }
    let max_score = candidates[..width].iter().map(|c| c.score).fold(0.0, f64::max);
    let values: Vec<f64> = candidates[..width].iter().map(|c| value(c, max_score)).collect();
    let mut search = Search {
        candidates: &candidates[..width],
        values: &values,
        max_ads: usize::from(max_ads),
        max_duration_ms,
        current: Vec::with_capacity(usize::from(max_ads)),
        best: Vec::new(),
        best_value: 0.0,
    };
    search.run(0, 0, 0.0);
    search.best
}

/// The most relevant house ad (ties: lower campaign id).
pub(super) fn best_house(candidates: &[Candidate]) -> Option<usize> {
    (0..candidates.len()).min_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        b.relevance.total_cmp(&a.relevance).then_with(|| a.campaign.id.cmp(&b.campaign.id))
    })
}

fn value(c: &Candidate, max_score: f64) -> f64 {
    let level = match c.campaign.tier {
        Tier::Sponsorship => 2,
        Tier::Standard => 1,
        Tier::Remnant | Tier::House => 0,
    };
    let normalised = if max_score > 0.0 { c.score / max_score * 0.999 } else { 0.0 };
    TIER_BASE.powi(level) * (1.0 + normalised)
}

struct Search<'a> {
    candidates: &'a [Candidate],
    /// Non-increasing: candidates are sorted by tier, then score.
    values: &'a [f64],
    max_ads: usize,
    max_duration_ms: u32,
    current: Vec<usize>,
    best: Vec<usize>,
    best_value: f64,
}

impl Search<'_> {
    fn run(&mut self, from: usize, duration: u32, value: f64) {
        if value > self.best_value {
            self.best_value = value;
            self.best.clone_from(&self.current);
        }
        let room = self.max_ads - self.current.len();
        if room == 0 {
            return;
        }
        for i in from..self.candidates.len() {
            // Values are non-increasing, so this is the most any extension from i can add.
            let bound: f64 = self.values[i..].iter().take(room).sum();
            if value + bound <= self.best_value {
                return;
            }
            let c = &self.candidates[i];
            let total = duration + c.duration_ms;
            if total > self.max_duration_ms || !self.compatible(c) {
                continue;
            }
            self.current.push(i);
            self.run(i + 1, total, value + self.values[i]);
            self.current.pop();
        }
    }

    /// No two ads of one advertiser, and no shared category, within a break.
    fn compatible(&self, c: &Candidate) -> bool {
        self.current.iter().all(|&j| {
            let other = &self.candidates[j].campaign;
            other.advertiser_id != c.campaign.advertiser_id
                && !other.categories.iter().any(|cat| c.campaign.categories.contains(cat))
        })
    }
}
