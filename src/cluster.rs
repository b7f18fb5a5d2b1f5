//! Cluster mode's replica side: storing a write's changes in the shared store, and following
//! what other replicas change there (campaigns, aliases, vocabularies, counters).

use std::collections::HashMap;
use std::time::Duration;

use crate::domain::{Campaign, ListenerId};
use crate::state::AppState;
use crate::store::durable::Change;
use crate::store::histories::AccountHistories;
use crate::store::shared::{self, Shared, SharedError};

/// How often a replica polls the directories' versions: a change made on any replica is
/// served by every replica within this plus a catalog rebuild (docs/SCALING.md: ≤ 1 s).
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);
/// Counters of limited or paced campaigns are read every this many polls (pacing's view; the
/// hard limits are held in the shared store itself), the others' every `ALL_COUNTERS_EVERY`.
const PACED_COUNTERS_EVERY: u64 = 4;
const ALL_COUNTERS_EVERY: u64 = 40;
/// Polls between two sweeps of the trusted listener copies.
const SWEEP_EVERY: u64 = 20;
/// Counter reads in flight at once (pipelined on the multiplexed connections).
const COUNTER_READS_IN_FLIGHT: usize = 64;

/// The health service name that reports whether this replica reaches the shared store.
pub const HEALTH_SERVICE: &str = "interlude.SharedState";

/// Stores the changes of one applied write in the shared store, in order.
pub async fn store_changes(store: &Shared, changes: &[Change]) -> Result<(), SharedError> {
    let mut merged: HashMap<&ListenerId, AccountHistories> = HashMap::new();
    for (i, change) in changes.iter().enumerate() {
        match change {
            Change::Campaign(c) => store.put_campaign(c).await?,
            Change::Listener(p) => store.put_profile(p).await?,
            Change::ForgetListener(id) => {
                // An erasure is followed by its mark; a merge's source has none.
                let erased_at = match changes.get(i + 1) {
                    Some(Change::Erased { at, .. }) => Some(*at),
                    _ => None,
                };
                store.forget_listener(id.as_str(), erased_at).await?;
            }
            Change::Alias { alias, listener } => {
                store.put_entry(shared::ALIASES, alias, Some(listener.as_str())).await?;
            }
            Change::History(key, history) => {
                *merged.entry(&key.listener).or_default().get_mut(&key.member) = history.clone();
            }
            // Interned in the shared store already; counted by the event path; plays are
            // deduplicated per replica; dedupe keys expire by themselves.
            Change::Genre { .. }
            | Change::Artist { .. }
            | Change::Erased { .. }
            | Change::PlayCounted { .. }
            | Change::Counters(..)
            // Made by single-node RecordEvents only; cluster mode applies events in the shared
            // store itself (`Decisions::record_shared`).
            | Change::HistoryChanges(..)
            | Change::Event(_)
            | Change::PurgeEvents { .. } => {}
        }
    }
    for (listener, account) in merged {
        let members: Vec<(Box<str>, crate::domain::DeliveryHistory)> =
            account.iter().map(|(m, h)| (m.into(), h.clone())).collect();
        store
            .update_histories(listener.as_str(), |h| {
                h.replace(members.clone());
                true
            })
            .await?;
    }
    Ok(())
}

/// What this replica last read of the directories.
#[derive(Debug, Default)]
struct Seen {
    catalog_version: Option<u64>,
    campaigns: HashMap<String, String>,
    aliases_version: Option<u64>,
    aliases: HashMap<String, String>,
    polls: u64,
}

/// Follows the shared store every `FOLLOW_INTERVAL` until dropped, reporting whether it
/// answers on health (`HEALTH_SERVICE`) and in metrics.
pub async fn follow(state: AppState, store: Shared, health: tonic_health::server::HealthReporter) {
    let mut every = tokio::time::interval(FOLLOW_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = Seen::default();
    let mut up = None;
    loop {
        every.tick().await;
        let result = follow_once(&state, &store, &mut seen).await;
        let now_up = result.is_ok();
        if up != Some(now_up) {
            let status = if now_up {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status(HEALTH_SERVICE, status).await;
            crate::telemetry::record_shared_store_up(now_up);
            match &result {
                Ok(()) => tracing::info!("shared store answers"),
                Err(error) => {
                    tracing::warn!(%error, "shared store does not answer: decisions on local copies, writes refused")
                }
            }
            up = Some(now_up);
        }
    }
}

/// One poll: takes up whatever changed since the last.
async fn follow_once(state: &AppState, store: &Shared, seen: &mut Seen) -> Result<(), SharedError> {
    seen.polls += 1;
    if seen.polls.is_multiple_of(SWEEP_EVERY) {
        store.freshness().sweep();
    }
    // The vocabularies first: a campaign may name a genre interned since the last poll.
    catch_up_vocabularies(state, store).await?;
    let version = store.version(shared::CAMPAIGNS).await?;
    if seen.catalog_version != Some(version) {
        let docs = store.entries(shared::CAMPAIGNS).await?;
        let changed: Vec<Campaign> = docs
            .iter()
            .filter(|(id, doc)| seen.campaigns.get(*id) != Some(*doc))
            .map(|(_, doc)| serde_json::from_str(doc))
            .collect::<Result<_, _>>()?;
        if !changed.is_empty() {
            let catalog = state.catalog.clone();
            // A rebuild costs time in proportion to the catalog: off the runtime's thread.
            tokio::task::spawn_blocking(move || catalog.restore(changed))
                .await
                .map_err(|e| SharedError::Unavailable(format!("catalog rebuild: {e}")))?;
        }
        seen.campaigns = docs;
        seen.catalog_version = Some(version);
    }
    let version = store.version(shared::ALIASES).await?;
    if seen.aliases_version != Some(version) {
        let aliases = store.entries(shared::ALIASES).await?;
        for (alias, id) in &aliases {
            if seen.aliases.get(alias) != Some(id) {
                state.listeners.restore_alias(alias, ListenerId::from(id.as_str()));
            }
        }
        for alias in seen.aliases.keys().filter(|a| !aliases.contains_key(*a)) {
            state.listeners.drop_alias(alias);
        }
        seen.aliases = aliases;
        seen.aliases_version = Some(version);
    }
    if seen.polls.is_multiple_of(PACED_COUNTERS_EVERY) {
        use futures_util::StreamExt as _;
        let all = seen.polls.is_multiple_of(ALL_COUNTERS_EVERY);
        let snapshot = state.catalog.snapshot();
        let watched: Vec<std::sync::Arc<Campaign>> = snapshot
            .campaigns()
            .iter()
            .filter(|c| all || c.budget.is_limited() || c.budget.pacing != crate::domain::PacingMode::Asap)
            .cloned()
            .collect();
        let mut reads = futures_util::stream::iter(watched)
            .map(|c| {
                let store = store.clone();
                async move { store.counters(&c).await.map(|counters| (c, counters)) }
            })
            .buffer_unordered(COUNTER_READS_IN_FLIGHT);
        while let Some(read) = reads.next().await {
            let (campaign, counters) = read?;
            state.delivery.set_counters(campaign.id.clone(), counters);
        }
    }
    // Which masters have a replica to wait for (an acknowledged write's `WAIT`).
    store.refresh_topology().await?;
    Ok(())
}

/// Takes up the genres and artists other replicas interned since this one last looked.
pub async fn catch_up_vocabularies(state: &AppState, store: &Shared) -> Result<(), SharedError> {
    let from = state.vocabulary.len();
    let genres = store.terms_from(shared::GENRES, from).await?;
    state.vocabulary.catch_up(from, genres);
    let from = state.artists.len();
    let artists = store.terms_from(shared::ARTISTS, from).await?;
    state.artists.catch_up(from, artists);
    Ok(())
}
