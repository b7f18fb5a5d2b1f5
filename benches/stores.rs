//! Store benchmarks: profile lookup by alias among 1M listeners, play ingestion, and the memory
//! one listener takes at 1M listeners with 10 genres each, and with a delivery history of
//! `IMPRESSIONS_PER_LISTENER` impressions, under the server's allocator — resident (no data
//! directory) and in the bounded caches over the durable store.
//!
//! Memory is the growth of resident memory (from /proc) while the listeners are loaded; each
//! probe runs in a fresh child process so that one does not inherit the other's heap.
//!
//! Run: `cargo bench --bench stores`. Figures and machine: docs/PERFORMANCE.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput};
use interlude::domain::{DAY_MS, GenreId, ListenerProfile, UnixMillis};
use interlude::domain::{DeliveryHistory, ImpressionRecord, ListenerId};
use interlude::store::Listeners;
use interlude::store::delivery::HistoryKey;
use interlude::store::durable::{Change, Durable};
use interlude::store::histories::Histories;
use interlude::store::listeners::Play;

/// The server's allocator, so resident memory is what the server would hold.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: UnixMillis = UnixMillis(1_795_435_200_000);
const HALF_LIFE: i64 = 30 * DAY_MS;
const LISTENERS: usize = 1_000_000;
const GENRES_PER_LISTENER: u32 = 10;
/// The profile cache budget of the cached probe (`profile_cache_mib`).
const CACHE_MIB: u64 = 128;
/// Impressions in each listener's delivery history (histories probes), of as many campaigns.
const IMPRESSIONS_PER_LISTENER: usize = 5;
/// Selects a memory probe in a child process.
const PROBE_ENV: &str = "INTERLUDE_MEMORY_PROBE";

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn id_of(i: usize) -> String {
    format!("listener-{i:07}")
}

/// One play per genre for listener `i`: ten genres of a vocabulary of 40.
fn plays_of(i: usize) -> Vec<Play> {
    (0..GENRES_PER_LISTENER)
        .map(|g| Play {
            listener: id_of(i).into(),
            member: "".into(),
            genres: vec![GenreId((i as u32 + g * 7) % 40)],
            artist: None,
            played_at: UnixMillis(NOW.0 - i64::from(g) * 3_600_000),
            seconds_played: 200,
        })
        .collect()
}

fn populate(listeners: &Listeners, n: usize) {
    for i in 0..n {
        listeners.record_plays(&plays_of(i), HALF_LIFE).expect("in memory");
    }
}

/// Every listener resident (no data directory).
#[allow(clippy::print_stdout)] // the measurement is the output
fn probe_resident() {
    let before = resident_bytes();
    let listeners = Listeners::default();
    populate(&listeners, LISTENERS);
    let rss = resident_bytes().saturating_sub(before);
    println!(
        "interlude::store::listeners memory, resident: {LISTENERS} listeners x {GENRES_PER_LISTENER} genres: \
         {} bytes per listener",
        rss / LISTENERS
    );
    black_box(listeners);
}

/// 1M listeners in the durable store, read through a cache of `CACHE_MIB`.
#[allow(clippy::print_stdout)] // the measurement is the output
fn probe_cached() {
    let dir = std::env::temp_dir().join(format!("interlude-bench-stores-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let (durable, _) = Durable::open(&dir).expect("open the store");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let scratch = Listeners::default();
        for chunk in (0..LISTENERS).collect::<Vec<_>>().chunks(20_000) {
            let mut changes = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let profiles = scratch.record_plays(&plays_of(i), HALF_LIFE).expect("in memory");
                changes.extend(profiles.into_iter().map(Change::Listener));
                scratch.forget(&id_of(i)).expect("just made");
            }
            rt.block_on(durable.submit(changes).expect("writer").wait()).expect("commit");
        }
    }
    let before = resident_bytes();
    let listeners = Listeners::cached(Durable::reader(&dir), CACHE_MIB << 20, LISTENERS);
    for i in 0..LISTENERS {
        let profile: Option<Arc<ListenerProfile>> = listeners.get(&id_of(i)).expect("read");
        assert!(profile.is_some_and(|p| p.member("").is_some_and(|t| t.genres.len() == 10)));
    }
    let rss = resident_bytes().saturating_sub(before);
    let (entries, weighed) = listeners.resident();
    println!(
        "interlude::store::listeners memory, cached: {LISTENERS} listeners x {GENRES_PER_LISTENER} genres \
         through a {CACHE_MIB} MiB cache: {} bytes per listener; {entries} profiles cached, \
         {} bytes per cached profile (weighed at {})",
        rss / LISTENERS,
        rss / entries.max(1) as usize,
        weighed.unwrap_or(0) / entries.max(1),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The impressions listener `i` heard, of a catalog of 1,000 campaigns (`campaigns`).
fn history_of(i: usize, campaigns: &[interlude::domain::Campaign]) -> DeliveryHistory {
    let mut h = DeliveryHistory::default();
    for k in 0..IMPRESSIONS_PER_LISTENER {
        let c = &campaigns[(i * 7 + k * 131) % campaigns.len()];
        h.record_impression(ImpressionRecord::of(c, 0, UnixMillis(NOW.0 - (k as i64 + 1) * 3_600_000)));
    }
    h
}

fn bench_campaigns() -> Vec<interlude::domain::Campaign> {
    let spec = interlude::synth::WorldSpec { seed: 7, campaigns: 1_000, listeners: 0, booked_at: NOW };
    interlude::synth::campaigns(&spec, &interlude::store::Vocabulary::default()).expect("a synthetic catalog")
}

/// Every listener's history resident (no data directory): records share the catalog's ids.
#[allow(clippy::print_stdout)] // the measurement is the output
fn probe_histories_resident() {
    let campaigns = bench_campaigns();
    let before = resident_bytes();
    let histories = Histories::default();
    for i in 0..LISTENERS {
        let h = history_of(i, &campaigns);
        histories.update(&ListenerId::from(id_of(i).as_str()), |a| *a.get_mut("") = h);
    }
    let rss = resident_bytes().saturating_sub(before);
    println!(
        "interlude::store::histories memory, resident: {LISTENERS} listeners x {IMPRESSIONS_PER_LISTENER} impressions: {} bytes per listener",
        rss / LISTENERS
    );
    black_box(histories);
}

/// 1M listeners' histories in the durable store, every one read through a cache of `CACHE_MIB`.
#[allow(clippy::print_stdout)] // the measurement is the output
fn probe_histories_cached() {
    let campaigns = bench_campaigns();
    let dir = std::env::temp_dir().join(format!("interlude-bench-histories-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let (durable, _) = Durable::open(&dir).expect("open the store");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        for chunk in (0..LISTENERS).collect::<Vec<_>>().chunks(20_000) {
            let changes = chunk
                .iter()
                .map(|&i| {
                    let key = HistoryKey { listener: id_of(i).as_str().into(), member: "".into() };
                    Change::History(key, history_of(i, &campaigns))
                })
                .collect();
            rt.block_on(durable.submit(changes).expect("writer").wait()).expect("commit");
        }
    }
    let before = resident_bytes();
    let histories = Histories::cached(Durable::reader(&dir), CACHE_MIB << 20);
    for i in 0..LISTENERS {
        let id = ListenerId::from(id_of(i).as_str());
        histories.load(&id).expect("read");
    }
    histories.sweep(NOW);
    let rss = resident_bytes().saturating_sub(before);
    let entries = histories.resident_count();
    println!(
        "interlude::store::histories memory, cached: {LISTENERS} listeners x {IMPRESSIONS_PER_LISTENER} impressions through a {CACHE_MIB} MiB cache: {} bytes per listener; {entries} accounts cached, {} bytes per cached account",
        rss / LISTENERS,
        rss / entries.max(1) as usize,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs each memory probe in a child process and passes its report through.
#[allow(clippy::print_stdout)]
fn report_memory() {
    let Ok(exe) = std::env::current_exe() else { return };
    for probe in ["resident", "cached", "histories-resident", "histories-cached"] {
        match std::process::Command::new(&exe).env(PROBE_ENV, probe).output() {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => println!("memory probe {probe} failed: {e}"),
        }
    }
}

fn main() {
    match std::env::var(PROBE_ENV).as_deref() {
        Ok("resident") => return probe_resident(),
        Ok("cached") => return probe_cached(),
        Ok("histories-resident") => return probe_histories_resident(),
        Ok("histories-cached") => return probe_histories_cached(),
        _ => {}
    }
    report_memory();
    let listeners = Listeners::default();
    populate(&listeners, LISTENERS);
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("interlude::store::listeners");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_with_input(BenchmarkId::new("get_by_alias", LISTENERS), &LISTENERS, |b, _| {
        let ids: Vec<String> = (0..4096).map(|k| id_of(k * 241 % LISTENERS)).collect();
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(listeners.get(&ids[i]))
        })
    });
    drop(listeners);
    let batch: Vec<Play> = (0..1000).flat_map(|k| plays_of(k * 997 % 50_000)).collect();
    group.throughput(Throughput::Elements(batch.len() as u64));
    let warm = Listeners::default();
    populate(&warm, 50_000);
    group.bench_function(BenchmarkId::new("record_plays", batch.len()), |b| {
        b.iter(|| warm.record_plays(black_box(&batch), HALF_LIFE))
    });
    group.finish();
    c.final_summary();
}
