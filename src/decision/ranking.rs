//! Ranking: the best set of ads for a break, and the best house ad.
//!
//! A break is a small knapsack: at most `max_ads` ads, durations within `max_duration`, no two
//! ads of one advertiser or sharing a category. Candidates are ordered by tier, then score; a
//! branch-and-bound search over the best `search_width` finds the set of greatest value, where
//! one ad of a higher tier is worth more than any number of ads of lower tiers.

use super::eligibility::Candidate;
use crate::domain::Tier;

/// At most this many candidates are searched, whatever the break size.
const MAX_SEARCH_WIDTH: usize = 24;

/// How many of the best candidates (by tier, then score) the break is chosen from: enough
/// spares per slot to work around advertiser, category and duration conflicts, and a bound
/// on the work whatever the catalog size.
pub(super) fn search_width(max_ads: u8) -> usize {
    (2 + 3 * usize::from(max_ads)).min(MAX_SEARCH_WIDTH)
}

/// The rank key a candidate must beat to enter the best `width`: (tier, score), best first.
#[derive(Debug)]
pub(super) struct Threshold {
    width: usize,
    keys: Vec<(Tier, f64)>,
}

impl Threshold {
    pub(super) fn new(width: usize) -> Self {
        Self { width, keys: Vec::with_capacity(width + 1) }
    }

    /// Whether a campaign of `tier` that can score at most `bound` could still enter.
    pub(super) fn admits(&self, tier: Tier, bound: f64) -> bool {
        match self.keys.get(self.width.wrapping_sub(1)) {
            None => true,
            Some(&(t, score)) => tier < t || (tier == t && bound > score),
        }
    }

    /// Records an eligible candidate.
    pub(super) fn insert(&mut self, tier: Tier, score: f64) {
        let at = self.keys.partition_point(|&(t, s)| t < tier || (t == tier && s >= score));
        if at < self.width {
            self.keys.insert(at, (tier, score));
            self.keys.truncate(self.width);
        }
    }
}
/// Tier weight base: one ad of a tier outweighs ten ads of the tier below (each worth < 2).
const TIER_BASE: f64 = 32.0;

/// Sorts `candidates` into rank order and returns the indices of the best break, in play order.
pub(super) fn best_break(candidates: &mut [Candidate<'_>], max_ads: u8, max_duration_ms: u32) -> Vec<usize> {
    candidates.sort_by(|a, b| {
        a.campaign
            .tier
            .cmp(&b.campaign.tier)
            .then(b.score.total_cmp(&a.score))
            .then(b.relevance.total_cmp(&a.relevance))
            .then(a.tie_break.cmp(&b.tie_break))
    });
    let width = candidates.len().min(search_width(max_ads));
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

/// The most relevant house ad (exact ties rotate, see `Candidate::tie_break`).
pub(super) fn best_house(candidates: &[Candidate<'_>]) -> Option<usize> {
    (0..candidates.len()).min_by(|&a, &b| {
        let (a, b) = (&candidates[a], &candidates[b]);
        b.relevance.total_cmp(&a.relevance).then(a.tie_break.cmp(&b.tie_break))
    })
}

fn value(c: &Candidate<'_>, max_score: f64) -> f64 {
    let level = match c.campaign.tier {
        Tier::Sponsorship => 2,
        Tier::Standard => 1,
        Tier::Remnant | Tier::House => 0,
    };
    let normalised = if max_score > 0.0 { c.score / max_score * 0.999 } else { 0.0 };
    TIER_BASE.powi(level) * (1.0 + normalised)
}

struct Search<'a> {
    candidates: &'a [Candidate<'a>],
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
    fn compatible(&self, c: &Candidate<'_>) -> bool {
        self.current.iter().all(|&j| {
            let other = &self.candidates[j].campaign;
            other.advertiser_id != c.campaign.advertiser_id
                && !other.categories.iter().any(|cat| c.campaign.categories.contains(cat))
        })
    }
}
