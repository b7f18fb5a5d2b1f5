//! One listener account in its slot (`{l:<id>}`): its profile, and the delivery histories of
//! all its members with the (ad, kind) pairs already applied to them, swapped whole by
//! compare-and-set on a version.

use serde::{Deserialize, Serialize};

use crate::domain::history::MAX_WINDOW_MS;
use crate::domain::{AdId, DeliveryHistory, EventKind, ListenerProfile, UnixMillis};
use crate::store::histories::AccountHistories;

use super::{Shared, SharedError, scripts};

fn profile_key(id: &str) -> String {
    format!("{{l:{id}}}:p")
}

fn histories_key(id: &str) -> String {
    format!("{{l:{id}}}:h")
}

fn version_key(id: &str) -> String {
    format!("{{l:{id}}}:hv")
}

/// Histories live a little longer than the longest window anything counts impressions over.
const HISTORY_TTL_MS: i64 = MAX_WINDOW_MS + 86_400_000;
/// Compare-and-set attempts before a write gives up as contended.
const SWAP_ATTEMPTS: usize = 8;

/// A listener account as the shared store holds it.
#[derive(Clone, Debug, Default)]
pub struct ListenerState {
    pub profile: Option<ListenerProfile>,
    pub histories: SharedHistories,
    /// Of the histories; 0 = none stored.
    pub version: u64,
}

/// The delivery histories of one account, with the events already applied to them: applying
/// is idempotent per (ad, kind), so an event whose campaign counted it but whose history write
/// was lost is applied by its retry, and never twice.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SharedHistories {
    members: Vec<(Box<str>, DeliveryHistory)>,
    /// (ad, kind label, when applied).
    applied: Vec<(u128, Box<str>, i64)>,
    /// When the listener was erased: an event of an ad decided before then keeps nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erased_at: Option<i64>,
}

impl SharedHistories {
    /// The histories as the in-memory store keeps them.
    pub fn account(&self) -> AccountHistories {
        self.members.iter().cloned().collect()
    }

    /// Histories replaced whole by `members` (a merge's result), keeping what was applied.
    pub fn replace(&mut self, members: Vec<(Box<str>, DeliveryHistory)>) {
        self.members = members;
    }

    /// Whether the listener was erased after an ad decided at `decided_at`.
    pub fn erased_since(&self, decided_at: UnixMillis) -> bool {
        self.erased_at.is_some_and(|at| at >= decided_at.0)
    }

    /// Whether `ad`'s impression was heard, or the ad given back: its hold, if a replica still
    /// keeps one, is over.
    pub fn released(&self, ad: AdId) -> bool {
        self.applied(ad, super::event_field(EventKind::Impression))
            || self.applied(ad, super::event_field(EventKind::NotUsed))
    }

    /// Whether the change named (`ad`, `kind`) was applied.
    pub fn applied(&self, ad: AdId, kind: &str) -> bool {
        self.applied.iter().any(|(a, k, _)| *a == ad.0 && &**k == kind)
    }

    /// Applies `change` to the account's histories and records it as applied under (`ad`,
    /// `kind`) at `at`; forgets applied pairs older than `remember_ms` (past every token).
    pub fn apply(
        &mut self,
        ad: AdId,
        kind: &str,
        at: UnixMillis,
        remember_ms: i64,
        change: impl FnOnce(&mut AccountHistories),
    ) {
        let mut account = self.account();
        change(&mut account);
        self.members = account.iter().map(|(m, h)| (m.into(), h.clone())).collect();
        self.applied.retain(|(_, _, t)| at.0 - *t <= remember_ms);
        self.applied.push((ad.0, kind.into(), at.0));
    }
}

impl Shared {
    /// The profile and histories of canonical listener `id`, in one round trip (one slot).
    pub async fn load_listener(&self, id: &str) -> Result<ListenerState, SharedError> {
        let (profile, histories, version): (Option<String>, Option<String>, Option<u64>) = self
            .query(redis::cmd("MGET").arg(profile_key(id)).arg(histories_key(id)).arg(version_key(id)))
            .await?;
        Ok(ListenerState {
            profile: profile.map(|p| serde_json::from_str(&p)).transpose()?,
            histories: histories.map(|h| serde_json::from_str(&h)).transpose()?.unwrap_or_default(),
            version: version.unwrap_or(0),
        })
    }

    /// Changes the histories of listener `id` with `change` (which returns false when it has
    /// nothing to do), re-reading and retrying when another replica wrote in between, and
    /// waits until a replica of the slot's master holds the result. Returns the histories as
    /// stored.
    pub async fn update_histories(
        &self,
        id: &str,
        mut change: impl FnMut(&mut SharedHistories) -> bool,
    ) -> Result<SharedHistories, SharedError> {
        for _ in 0..SWAP_ATTEMPTS {
            let mut state = self.load_listener(id).await?;
            if !change(&mut state.histories) {
                // Nothing new, but what was read may be a write not yet replicated.
                self.replicated(&histories_key(id)).await?;
                return Ok(state.histories);
            }
            let mut invocation = scripts::SWAP_HISTORIES.prepare_invoke();
            invocation
                .key(histories_key(id))
                .key(version_key(id))
                .arg(state.version)
                .arg(serde_json::to_string(&state.histories)?)
                .arg(HISTORY_TTL_MS);
            // A first write of the listener sets its bits in the filter of stored listeners
            // meanwhile (before the change is published, as the filter needs).
            let (swapped, ()): (u64, ()) =
                tokio::try_join!(self.write_invoke(invocation), self.mark_stored(id))?;
            if swapped != 0 {
                self.publish_change(id).await?;
                self.replicated(&histories_key(id)).await?;
                return Ok(state.histories);
            }
        }
        Err(SharedError::Contended(id.to_owned()))
    }

    /// Stores `profile` (Redis is its truth; replicas read it on every decision).
    pub async fn put_profile(&self, profile: &ListenerProfile) -> Result<(), SharedError> {
        let key = profile_key(profile.id.as_str());
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(serde_json::to_string(profile)?);
        let ((), ()) = tokio::try_join!(self.write(&mut set), self.mark_stored(profile.id.as_str()))?;
        self.publish_change(profile.id.as_str()).await?;
        self.replicated(&key).await
    }

    /// Erases everything stored of listener `id`: its profile, its histories and every alias
    /// naming it. With `erased_at` (an erasure, not a merge), its histories keep only that
    /// mark, so that events of ads decided before it keep nothing of the listener.
    pub async fn forget_listener(&self, id: &str, erased_at: Option<UnixMillis>) -> Result<(), SharedError> {
        let _: u64 = self.write(redis::cmd("DEL").arg(profile_key(id))).await?;
        match erased_at {
            Some(at) => {
                self.update_histories(id, |h| {
                    *h = SharedHistories { erased_at: Some(at.0), ..SharedHistories::default() };
                    true
                })
                .await?;
            }
            None => {
                let _: u64 =
                    self.write(redis::cmd("DEL").arg(histories_key(id)).arg(version_key(id))).await?;
            }
        }
        self.drop_aliases_of(id).await?;
        self.publish_change(id).await?;
        self.replicated(&profile_key(id)).await
    }

    /// The stored profile of `id`, for the blocking callers (a cache miss off the runtime).
    pub fn load_profile_blocking(&self, id: &str) -> Result<Option<ListenerProfile>, SharedError> {
        let doc = self.get_blocking(&profile_key(id))?;
        Ok(doc.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    /// The string at `key`, on the blocking connection.
    fn get_blocking(&self, key: &str) -> Result<Option<String>, SharedError> {
        let mut conn = self.blocking.lock().unwrap_or_else(|e| e.into_inner());
        redis::cmd("GET").arg(key).query(&mut *conn).map_err(|e| super::blocking("GET", e))
    }
}

impl crate::store::listeners::ProfileSource for Shared {
    fn load(&self, id: &str) -> Result<Option<ListenerProfile>, crate::store::StoreError> {
        Ok(self.load_profile_blocking(id)?)
    }
}

impl crate::store::histories::HistorySource for Shared {
    fn load_histories(&self, id: &str) -> Result<AccountHistories, crate::store::StoreError> {
        let doc = self.get_blocking(&histories_key(id))?;
        let histories: SharedHistories =
            doc.map(|d| serde_json::from_str(&d)).transpose().map_err(SharedError::from)?.unwrap_or_default();
        Ok(histories.members.into_iter().collect())
    }
}
