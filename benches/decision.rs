//! Criterion benchmarks of the pure engine: `decide()` on synthetic catalogs of 1k, 10k and
//! 100k campaigns (the synthetic world of `interlude::synth`), for listeners with real tastes.
//!
//! Run: `cargo bench --bench decision`. Figures and machine: docs/PERFORMANCE.md.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use interlude::decision::{self, CatalogSnapshot, Listener, NoSpend, Policy, Spend, SpendView};
use interlude::domain::{
    AdRequest, CampaignId, DAY_MS, DeliveryHistory, ImpressionRecord, MINUTE_MS, Tier, UnixMillis,
};
use interlude::store::Vocabulary;
use interlude::synth::{self, WorldSpec};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const NOW: UnixMillis = UnixMillis(1_795_435_200_000);
const LISTENERS: usize = 512;

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("interlude::decision::decide");
    group.throughput(Throughput::Elements(1));
    for n in [1_000usize, 10_000, 100_000] {
        // Sponsorships booked a day before the decisions: a day into their flights.
        let spec =
            WorldSpec { seed: 7, campaigns: n, listeners: LISTENERS, booked_at: UnixMillis(NOW.0 - DAY_MS) };
        let vocabulary = Vocabulary::default();
        let campaigns = synth::campaigns(&spec, &vocabulary).expect("synthetic campaigns");
        let snapshot = CatalogSnapshot::new(campaigns.into_iter().map(Arc::new).collect());
        let listeners: Vec<_> = (0..LISTENERS)
            .map(|i| synth::listener_with_taste(&spec, i, &vocabulary, NOW, 30 * DAY_MS).expect("listener"))
            .collect();
        let requests: Vec<AdRequest> =
            listeners.iter().map(|l| synth::engine_request(l, &vocabulary)).collect();
        let empty = DeliveryHistory::default();
        let mut rng = SmallRng::seed_from_u64(1);
        let warm = Policy { max_ads_per_hour: 100, ..Policy::default() };
        // Each listener's history of `breaks` earlier breaks, `apart` minutes apart, the latest
        // `apart` minutes ago; each break decided with the history before it.
        let mut histories_of = |breaks: i64, apart: i64| -> Vec<DeliveryHistory> {
            (0..LISTENERS)
                .map(|i| {
                    let profile = &listeners[i].profile;
                    let mut history = DeliveryHistory::default();
                    for k in (0..breaks).rev() {
                        let at = UnixMillis(NOW.0 - (k + 1) * apart * MINUTE_MS);
                        let so_far = history.clone();
                        let listener =
                            Listener { profile: Some(profile), taste: profile.member(""), history: &so_far };
                        let d = decision::decide(
                            &snapshot,
                            listener,
                            &requests[i],
                            &warm,
                            &NoSpend,
                            at,
                            &mut rng,
                        );
                        for ad in d.ads {
                            history.record_impression(ImpressionRecord::of(&ad.campaign, ad.creative, at));
                        }
                    }
                    history
                })
                .collect()
        };
        // Three breaks in the last two hours; a heavy listener's day (24 breaks, hourly).
        let recent = histories_of(3, 40);
        let day = histories_of(24, 60);
        let policy = Policy::default();
        let variants = [
            ("n_campaigns", None),
            ("n_campaigns_with_history", Some(&recent)),
            ("n_campaigns_with_day_history", Some(&day)),
        ];
        for (name, histories) in variants {
            let mut i = 0usize;
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) % LISTENERS;
                    let profile = &listeners[i].profile;
                    let history = histories.map_or(&empty, |h| &h[i]);
                    let listener = Listener { profile: Some(profile), taste: profile.member(""), history };
                    black_box(decision::decide(
                        &snapshot,
                        listener,
                        &requests[i],
                        &policy,
                        &NoSpend,
                        NOW,
                        &mut rng,
                    ))
                })
            });
        }
        // A server's steady state: every sponsorship held back by its pacing (they deliver a
        // small share), so the break goes to the auction of the other tiers.
        let paced = AtGoal(
            snapshot
                .campaigns()
                .iter()
                .filter(|c| c.tier == Tier::Sponsorship)
                .map(|c| c.id.clone())
                .collect(),
        );
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("n_campaigns_sponsorships_held", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % LISTENERS;
                let profile = &listeners[i].profile;
                let listener =
                    Listener { profile: Some(profile), taste: profile.member(""), history: &empty };
                black_box(decision::decide(&snapshot, listener, &requests[i], &policy, &paced, NOW, &mut rng))
            })
        });
    }
    group.finish();
}

/// Spend with the listed campaigns at their goal, the rest untouched.
struct AtGoal(HashSet<CampaignId>);

impl SpendView for AtGoal {
    fn spend(&self, campaign: &CampaignId) -> Spend {
        let impressions = if self.0.contains(campaign) { u64::MAX / 2 } else { 0 };
        Spend { impressions, ..Spend::default() }
    }
}

criterion_group!(benches, bench_decide);
criterion_main!(benches);
