//! Store benchmarks: profile lookup by alias among 1M listeners, play ingestion, and the memory
//! one listener takes (the growth of resident memory, from /proc, while 1M synthetic listeners
//! with 10 genres each are loaded, under the server's allocator).
//!
//! Run: `cargo bench --bench stores`. Figures and machine: docs/PERFORMANCE.md.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use interlude::domain::{DAY_MS, GenreId, UnixMillis};
use interlude::store::Listeners;
use interlude::store::listeners::Play;

/// The server's allocator, so resident memory is what the server would hold.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: UnixMillis = UnixMillis(1_795_435_200_000);
const HALF_LIFE: i64 = 30 * DAY_MS;
const LISTENERS: usize = 1_000_000;
const GENRES_PER_LISTENER: u32 = 10;

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// One play per genre for listener `i`: ten genres of a vocabulary of 40.
fn plays_of(i: usize) -> Vec<Play> {
    (0..GENRES_PER_LISTENER)
        .map(|g| Play {
            listener: format!("listener-{i:07}").into(),
            member: "".into(),
            genres: vec![GenreId((i as u32 + g * 7) % 40)],
            played_at: UnixMillis(NOW.0 - i64::from(g) * 3_600_000),
            seconds_played: 200,
        })
        .collect()
}

fn populate(n: usize) -> Listeners {
    let listeners = Listeners::default();
    for i in 0..n {
        listeners.record_plays(&plays_of(i), HALF_LIFE);
    }
    listeners
}

#[allow(clippy::print_stdout)] // the measurement is the output
fn report_memory() -> Listeners {
    let rss_before = resident_bytes();
    let listeners = populate(LISTENERS);
    let rss = resident_bytes().saturating_sub(rss_before);
    println!(
        "interlude::store::listeners memory: {LISTENERS} listeners x {GENRES_PER_LISTENER} genres: \
         {} resident bytes per listener",
        rss / LISTENERS
    );
    listeners
}

fn main() {
    let listeners = report_memory();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("interlude::store::listeners");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_with_input(BenchmarkId::new("get_by_alias", LISTENERS), &LISTENERS, |b, _| {
        let ids: Vec<String> = (0..4096).map(|k| format!("listener-{:07}", k * 241 % LISTENERS)).collect();
        b.iter(|| {
            i = (i + 1) % ids.len();
            black_box(listeners.get(&ids[i]))
        })
    });
    drop(listeners);
    let batch: Vec<Play> = (0..1000).flat_map(|k| plays_of(k * 997 % 50_000)).collect();
    group.throughput(Throughput::Elements(batch.len() as u64));
    let warm = populate(50_000);
    group.bench_function(BenchmarkId::new("record_plays", batch.len()), |b| {
        b.iter(|| warm.record_plays(black_box(&batch), HALF_LIFE))
    });
    group.finish();
    c.final_summary();
}
