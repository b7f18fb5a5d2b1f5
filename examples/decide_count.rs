//! `decide()` in a loop over the benchmark's world, for an instruction count that does not
//! depend on the neighbours of a shared VM (criterion's times here move ±10–25 % between runs):
//!
//! ```sh
//! cargo build --release --example decide_count
//! valgrind --tool=callgrind --toggle-collect='interlude::decision::decide*' \
//!   target/release/examples/decide_count 10000
//! ```
//!
//! The total of `Ir` over `ROUNDS × LISTENERS` decisions is the figure (docs/PERFORMANCE.md).
//! The world, listeners and requests are those of `benches/decision.rs`.

use std::hint::black_box;
use std::sync::Arc;

use interlude::decision::{self, CatalogSnapshot, Listener, NoSpend, Policy};
use interlude::domain::{AdRequest, DAY_MS, DeliveryHistory, UnixMillis};
use interlude::store::Vocabulary;
use interlude::synth::{self, WorldSpec};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const NOW: UnixMillis = UnixMillis(1_795_435_200_000);
const LISTENERS: usize = 512;
const ROUNDS: usize = 10;

fn main() {
    let campaigns: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let spec = WorldSpec { seed: 7, campaigns, listeners: LISTENERS, booked_at: UnixMillis(NOW.0 - DAY_MS) };
    let vocabulary = Vocabulary::default();
    let catalog = synth::campaigns(&spec, &vocabulary).expect("synthetic campaigns");
    let snapshot = CatalogSnapshot::new(catalog.into_iter().map(Arc::new).collect());
    let listeners: Vec<_> = (0..LISTENERS)
        .map(|i| synth::listener_with_taste(&spec, i, &vocabulary, NOW, 30 * DAY_MS).expect("listener"))
        .collect();
    let requests: Vec<AdRequest> = listeners.iter().map(|l| synth::engine_request(l, &vocabulary)).collect();
    let empty = DeliveryHistory::default();
    let policy = Policy::default();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut paid = 0usize;
    for _ in 0..ROUNDS {
        for (listener, request) in listeners.iter().zip(&requests) {
            let profile = &listener.profile;
            let listener = Listener { profile: Some(profile), taste: profile.member(""), history: &empty };
            let d = decision::decide(&snapshot, listener, request, &policy, &NoSpend, NOW, &mut rng);
            paid += black_box(d).ads.len();
        }
    }
    // Outside the counted function; says the run did what it should.
    eprintln!("{} decisions over {campaigns} campaigns, {paid} ads", ROUNDS * LISTENERS);
}
