//! Listener profiles and the aliases that resolve to them.

use std::sync::Arc;

use dashmap::DashMap;

use super::StoreError;
use crate::domain::{GenreId, ListenerId, ListenerProfile, UnixMillis};

/// Profiles by canonical id, and every other alias → canonical id (a canonical id is not
/// repeated in the alias map: that would cost a map entry per listener). Cheap to clone:
/// clones share one store.
///
/// Profiles are immutable `Arc`s replaced on write (copy-on-write), so a decision holds no map
/// guard while it runs.
#[derive(Clone, Debug, Default)]
pub struct Listeners {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    aliases: DashMap<Box<str>, ListenerId>,
    profiles: DashMap<ListenerId, Arc<ListenerProfile>>,
}

/// One play, validated and with interned genres.
#[derive(Clone, Debug)]
pub struct Play {
    pub listener: Box<str>,
    pub member: Box<str>,
    pub genres: Vec<GenreId>,
    pub played_at: UnixMillis,
    pub seconds_played: u32,
}

impl Listeners {
    /// The canonical id `alias` resolves to.
    pub fn resolve(&self, alias: &str) -> Option<ListenerId> {
        if let Some(entry) = self.inner.profiles.get(alias) {
            return Some(entry.key().clone());
        }
        self.inner.aliases.get(alias).map(|id| id.clone())
    }

    /// The profile of the listener `alias` resolves to.
    pub fn get(&self, alias: &str) -> Option<Arc<ListenerProfile>> {
        if let Some(profile) = self.inner.profiles.get(alias) {
            return Some(profile.clone());
        }
        let id = self.inner.aliases.get(alias).map(|id| id.clone())?;
        self.inner.profiles.get(&id).map(|p| p.clone())
    }

    /// All aliases of a canonical id, sorted (admin reads only: walks the alias table).
    pub fn aliases_of(&self, id: &ListenerId) -> Vec<String> {
        let mut out: Vec<String> =
            self.inner.aliases.iter().filter(|e| e.value() == id).map(|e| e.key().to_string()).collect();
        out.sort();
        out
    }

    /// Applies `update` to the profile `alias` resolves to, creating it (with `alias` as its
    /// canonical id) when unknown. Returns the new profile and whether it was created.
    pub fn update(
        &self,
        alias: &str,
        update: impl FnOnce(&mut ListenerProfile),
    ) -> (Arc<ListenerProfile>, bool) {
        let id = self.resolve(alias).unwrap_or_else(|| ListenerId::from(alias));
        let mut created = false;
        let mut entry = self.inner.profiles.entry(id.clone()).or_insert_with(|| {
            created = true;
            Arc::new(ListenerProfile::new(id))
        });
        let mut profile = ListenerProfile::clone(&entry);
        update(&mut profile);
        profile.shrink_to_fit();
        let profile = Arc::new(profile);
        *entry = profile.clone();
        (profile, created)
    }

    /// Folds plays into the members' tastes. Plays of unknown listeners create them.
    pub fn record_plays(&self, plays: &[Play], half_life_ms: i64) {
        // One copy-on-write per run of plays of the same listener, not one per play.
        for run in plays.chunk_by(|a, b| a.listener == b.listener) {
            self.update(&run[0].listener, |p| {
                for play in run {
                    let taste = p.member_mut(&play.member);
                    taste.record_play(&play.genres, play.played_at, play.seconds_played, half_life_ms);
                }
            });
        }
    }

    /// Adds `alias` for the listener `existing` resolves to.
    pub fn link(&self, existing: &str, alias: &str) -> Result<Arc<ListenerProfile>, StoreError> {
        let profile = self.get(existing).ok_or_else(|| not_found(existing))?;
        if let Some(owner) = self.inner.profiles.get(alias).map(|e| e.key().clone()) {
            if owner != profile.id {
                return Err(StoreError::AliasTaken { alias: alias.into(), owner: owner.to_string() });
            }
            return Ok(profile);
        }
        match self.inner.aliases.entry(alias.into()) {
            dashmap::Entry::Occupied(e) if *e.get() != profile.id => {
                return Err(StoreError::AliasTaken { alias: alias.into(), owner: e.get().to_string() });
            }
            dashmap::Entry::Occupied(_) => {}
            dashmap::Entry::Vacant(e) => {
                e.insert(profile.id.clone());
            }
        }
        Ok(profile)
    }

    /// Erases the listener `alias` resolves to: its profile and every alias. Returns its id.
    pub fn forget(&self, alias: &str) -> Result<ListenerId, StoreError> {
        let id = self.resolve(alias).ok_or_else(|| not_found(alias))?;
        self.inner.profiles.remove(&id);
        self.inner.aliases.retain(|_, v| *v != id);
        Ok(id)
    }

    /// Folds the listener `from` resolves to into the one `into` resolves to: tastes per member,
    /// signals (the newer assertion wins), attributes `into` lacks, and every alias. Returns the
    /// merged profile and the id that was folded in (now an alias).
    pub fn merge(
        &self,
        into: &str,
        from: &str,
        half_life_ms: i64,
    ) -> Result<(Arc<ListenerProfile>, ListenerId), StoreError> {
        let into_id = self.resolve(into).ok_or_else(|| not_found(into))?;
        let from_id = self.resolve(from).ok_or_else(|| not_found(from))?;
        if into_id == from_id {
            return Err(StoreError::SelfMerge(into.to_owned()));
        }
        let (_, old) = self.inner.profiles.remove(&from_id).ok_or_else(|| not_found(from))?;
        for mut alias in self.inner.aliases.iter_mut() {
            if *alias.value() == from_id {
                *alias.value_mut() = into_id.clone();
            }
        }
        // The folded-in id keeps working, as an alias now.
        self.inner.aliases.insert(from_id.as_str().into(), into_id.clone());
        let (profile, _) = self.update(into_id.as_str(), |p| {
            for member in &old.members {
                p.member_mut(&member.member_id).absorb(&member.taste, half_life_ms);
            }
            for signal in &old.signals {
                match p.signals.iter_mut().find(|s| s.name == signal.name) {
                    Some(s) => s.asserted_at = s.asserted_at.max(signal.asserted_at),
                    None => p.signals.push(signal.clone()),
                }
            }
            if p.consent == crate::domain::ConsentState::Unspecified {
                p.consent = old.consent;
                p.consent_at = old.consent_at;
            }
            p.age_bracket = p.age_bracket.or(old.age_bracket);
            if p.home.is_none() {
                p.home.clone_from(&old.home);
            }
            if p.language.is_none() {
                p.language.clone_from(&old.language);
            }
        });
        Ok((profile, from_id))
    }

    /// Puts back a profile read from the durable store.
    pub fn restore(&self, profile: ListenerProfile) {
        self.inner.profiles.insert(profile.id.clone(), Arc::new(profile));
    }

    /// Puts back an alias read from the durable store.
    pub fn restore_alias(&self, alias: &str, listener: ListenerId) {
        self.inner.aliases.insert(alias.into(), listener);
    }

    /// Every listener's profile (the demo's snapshot into the durable store).
    pub fn all(&self) -> Vec<Arc<ListenerProfile>> {
        self.inner.profiles.iter().map(|e| e.value().clone()).collect()
    }

    /// Every (alias, canonical id).
    pub fn all_aliases(&self) -> Vec<(String, ListenerId)> {
        self.inner.aliases.iter().map(|e| (e.key().to_string(), e.value().clone())).collect()
    }

    /// Number of listeners.
    pub fn len(&self) -> usize {
        self.inner.profiles.len()
    }

    /// Whether there are no listeners.
    pub fn is_empty(&self) -> bool {
        self.inner.profiles.is_empty()
    }
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound { kind: "listener", id: id.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_to_one_profile() {
        let store = Listeners::default();
        store.update("acct-1", |p| p.age_bracket = Some(crate::domain::AgeBracket::Age25To34));
        store.link("acct-1", "email:abc").unwrap();
        assert_eq!(store.get("email:abc").unwrap().id.as_str(), "acct-1");
        assert_eq!(store.aliases_of(&"acct-1".into()), vec!["email:abc".to_string()]);
        store.update("other", |_| {});
        assert!(matches!(store.link("other", "email:abc"), Err(StoreError::AliasTaken { .. })));
        store.forget("email:abc").unwrap();
        assert!(store.get("acct-1").is_none());
        assert!(store.resolve("email:abc").is_none());
    }
}
