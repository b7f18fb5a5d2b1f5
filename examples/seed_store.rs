//! Writes a data directory of 10,000 synthetic campaigns and 1M listeners, each with a profile
//! of 10 genres and a history of 5 impressions, straight through the durable store: the world
//! the recovery figures of docs/PERFORMANCE.md start from.
//!
//! Run: `cargo run --release --example seed_store -- /tmp/idata-1m`

use std::sync::Arc;

use interlude::domain::{DAY_MS, DeliveryHistory, GenreId, ImpressionRecord, UnixMillis};
use interlude::store::Listeners;
use interlude::store::delivery::HistoryKey;
use interlude::store::durable::{Change, Durable};
use interlude::store::listeners::Play;

const LISTENERS: usize = 1_000_000;
const NOW: UnixMillis = UnixMillis(1_795_435_200_000);

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp/idata-1m".into()));
    let (durable, _) = Durable::open(&dir)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let vocabulary = interlude::store::Vocabulary::default();
    let spec = interlude::synth::WorldSpec { seed: 7, campaigns: 10_000, listeners: 0, booked_at: NOW };
    let campaigns = interlude::synth::campaigns(&spec, &vocabulary)?;
    let mut changes: Vec<Change> =
        vocabulary.pending().1.into_iter().map(|(id, name)| Change::Genre { id, name }).collect();
    changes.extend(campaigns.iter().map(|c| Change::Campaign(Arc::new(c.clone()))));
    rt.block_on(durable.submit(changes)?.wait())?;
    let scratch = Listeners::default();
    for chunk in (0..LISTENERS).collect::<Vec<_>>().chunks(20_000) {
        let mut changes = Vec::with_capacity(chunk.len() * 2);
        for &i in chunk {
            let id = format!("listener-{i:07}");
            let plays: Vec<Play> = (0..10u32)
                .map(|g| Play {
                    listener: id.as_str().into(),
                    member: "".into(),
                    genres: vec![GenreId((i as u32 + g * 7) % 40)],
                    artist: None,
                    played_at: UnixMillis(NOW.0 - i64::from(g) * 3_600_000),
                    seconds_played: 200,
                })
                .collect();
            changes.extend(scratch.record_plays(&plays, 30 * DAY_MS)?.into_iter().map(Change::Listener));
            scratch.forget(&id)?;
            let mut h = DeliveryHistory::default();
            for k in 0..5 {
                let c = &campaigns[(i * 7 + k * 131) % campaigns.len()];
                h.record_impression(ImpressionRecord::of(
                    c,
                    0,
                    UnixMillis(NOW.0 - (k as i64 + 1) * 3_600_000),
                ));
            }
            changes.push(Change::History(HistoryKey { listener: id.as_str().into(), member: "".into() }, h));
        }
        rt.block_on(durable.submit(changes)?.wait())?;
    }
    Ok(())
}
