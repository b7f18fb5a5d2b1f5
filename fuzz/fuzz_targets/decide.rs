//! Fuzz target: a decoded, validated DecideRequest decided against a synthetic world. The
//! engine must never panic, must respect the break, and explaining must not change the decision.
#![no_main]

use std::sync::{Arc, LazyLock};

use interlude::decision::{self, CatalogSnapshot, Listener, NoSpend, Policy};
use interlude::domain::{DAY_MS, DeliveryHistory, UnixMillis};
use interlude::grpc::{convert, pb};
use interlude::store::Vocabulary;
use interlude::synth::{self, SyntheticListener, WorldSpec};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use rand::SeedableRng as _;

const NOW: UnixMillis = UnixMillis(1_795_435_200_000);

struct World {
    vocabulary: Vocabulary,
    snapshot: CatalogSnapshot,
    listeners: Vec<SyntheticListener>,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let spec = WorldSpec { seed: 3, campaigns: 500, listeners: 16, booked_at: UnixMillis(NOW.0 - DAY_MS) };
    let vocabulary = Vocabulary::default();
    let campaigns = synth::campaigns(&spec, &vocabulary).expect("synthetic campaigns");
    let snapshot = CatalogSnapshot::new(campaigns.into_iter().map(Arc::new).collect());
    let listeners = (0..spec.listeners)
        .map(|i| synth::listener_with_taste(&spec, i, &vocabulary, NOW, 30 * DAY_MS).expect("listener"))
        .collect();
    World { vocabulary, snapshot, listeners }
});

fuzz_target!(|data: &[u8]| {
    let Some((&who, bytes)) = data.split_first() else { return };
    let world = &*WORLD;
    let Ok(req) = pb::DecideRequest::decode(bytes) else { return };
    let Ok(mut request) = convert::ad_request(&req, &world.vocabulary) else { return };
    let history = DeliveryHistory::default();
    let profile = (who < 128).then(|| &world.listeners[who as usize % world.listeners.len()].profile);
    let listener =
        Listener { profile, taste: profile.and_then(|p| p.member(&request.member_id)), history: &history };
    let policy = Policy::default();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::from(who));
    request.explain = false;
    let plain = decision::decide(&world.snapshot, listener, &request, &policy, &NoSpend, NOW, &mut rng);
    assert!(plain.ads.len() <= request.max_ads as usize);
    let total: i64 = plain.ads.iter().map(|a| i64::from(a.campaign.creatives[a.creative].duration_ms)).sum();
    assert!(total <= i64::from(request.max_duration_ms), "the break's duration holds");
    request.explain = true;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::from(who));
    let explained = decision::decide(&world.snapshot, listener, &request, &policy, &NoSpend, NOW, &mut rng);
    let ids = |d: &decision::Decision| d.ads.iter().map(|a| a.campaign.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&plain), ids(&explained), "explaining never changes a decision");
});
