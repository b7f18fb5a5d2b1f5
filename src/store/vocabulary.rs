//! Interns genre slugs and artist names as small integer ids, so profiles store 4 bytes per genre
//! or artist, not a string.

use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use super::StoreError;
use super::shared::{Shared, Terms};
use crate::domain::{ArtistId, GenreId};

/// An id a vocabulary hands out: the index of the name, in order of first use.
pub trait TermId: Copy + Eq + Debug + Send + Sync + 'static {
    /// At most this many distinct names; a bound on memory.
    const LIMIT: usize;
    fn from_index(index: u32) -> Self;
    fn index(self) -> u32;
}

/// At most this many distinct genres; a bound on memory that real catalogs stay far below.
pub const MAX_GENRES: usize = 65_536;
/// At most this many distinct artists (about 100 bytes each).
pub const MAX_ARTISTS: usize = 4 << 20;

impl TermId for GenreId {
    const LIMIT: usize = MAX_GENRES;
    fn from_index(index: u32) -> Self {
        GenreId(index)
    }
    fn index(self) -> u32 {
        self.0
    }
}

impl TermId for ArtistId {
    const LIMIT: usize = MAX_ARTISTS;
    fn from_index(index: u32) -> Self {
        ArtistId(index)
    }
    fn index(self) -> u32 {
        self.0
    }
}

/// Name ↔ id (genre slugs by default). Append-only, so an id stays valid for the life of the
/// process. Cheap to clone: clones share one table.
#[derive(Debug)]
pub struct Vocabulary<Id = GenreId> {
    inner: Arc<Inner<Id>>,
}

impl<Id> Clone for Vocabulary<Id> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<Id> Default for Vocabulary<Id> {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                ids: DashMap::default(),
                names: RwLock::default(),
                persisted: Default::default(),
                shared: std::sync::OnceLock::new(),
            }),
        }
    }
}

#[derive(Debug)]
struct Inner<Id> {
    ids: DashMap<Arc<str>, Id>,
    names: RwLock<Vec<Arc<str>>>,
    /// How many of `names` are known to be in the durable store.
    persisted: std::sync::atomic::AtomicUsize,
    /// Cluster mode: ids are handed out by the shared store, so that every replica gives a
    /// name the same id (profiles and campaigns store ids).
    shared: std::sync::OnceLock<SharedTerms>,
}

/// The shared store and which of its vocabularies this is.
#[derive(Clone, Debug)]
struct SharedTerms {
    store: Shared,
    terms: Terms,
}

impl<Id: TermId> Vocabulary<Id> {
    /// The id of `slug`, adding it if new.
    pub fn intern(&self, slug: &str) -> Result<Id, StoreError> {
        if let Some(id) = self.inner.ids.get(slug) {
            return Ok(*id);
        }
        // A poisoned lock only means another thread panicked mid-push; the Vec is still valid.
        let mut names = self.inner.names.write().unwrap_or_else(|e| e.into_inner());
        // Re-check under the write lock: another thread may have added it meanwhile.
        if let Some(id) = self.inner.ids.get(slug) {
            return Ok(*id);
        }
        if let Some(shared) = self.inner.shared.get() {
            return self.intern_shared(shared, &mut names, slug);
        }
        if names.len() >= Id::LIMIT {
            return Err(StoreError::VocabularyFull(Id::LIMIT));
        }
        let id = Id::from_index(names.len() as u32);
        self.push_all(&mut names, [slug]);
        Ok(id)
    }

    /// Interns `slug` through the shared store (the caller holds the names' write lock), and
    /// takes up every name other replicas added before it, so the local table stays a prefix
    /// of the cluster's.
    fn intern_shared(
        &self,
        shared: &SharedTerms,
        names: &mut Vec<Arc<str>>,
        slug: &str,
    ) -> Result<Id, StoreError> {
        let index = shared
            .store
            .intern_blocking(shared.terms, slug, Id::LIMIT)?
            .ok_or(StoreError::VocabularyFull(Id::LIMIT))? as usize;
        if names.len() < index {
            let missing = shared.store.terms_blocking(shared.terms, names.len(), index)?;
            self.push_all(names, missing);
        }
        if names.len() == index {
            self.push_all(names, [slug]);
        }
        match self.inner.ids.get(slug) {
            Some(id) if id.index() as usize == index => Ok(*id),
            _ => Err(StoreError::Corrupt(format!("{slug:?} is {index} in the shared vocabulary, not here"))),
        }
    }

    /// Gives each of `more` the next id, in order.
    fn push_all(&self, names: &mut Vec<Arc<str>>, more: impl IntoIterator<Item = impl AsRef<str>>) {
        for name in more {
            let name: Arc<str> = Arc::from(name.as_ref());
            self.inner.ids.insert(name.clone(), Id::from_index(names.len() as u32));
            names.push(name);
        }
    }

    /// Cluster mode: from now on ids come from `store`'s `terms`, beginning with `names` (all
    /// of them, in id order, as read from it at start).
    pub fn share(&self, store: Shared, terms: Terms, names: Vec<String>) -> Result<(), StoreError> {
        let mut local = self.inner.names.write().unwrap_or_else(|e| e.into_inner());
        if !local.is_empty() {
            return Err(StoreError::Corrupt("a vocabulary is shared before it is used".into()));
        }
        self.push_all(&mut local, names);
        self.inner
            .shared
            .set(SharedTerms { store, terms })
            .map_err(|_| StoreError::Corrupt("a vocabulary is shared twice".into()))
    }

    /// How many names are known here (cluster mode polls for the rest: `catch_up`).
    pub fn len(&self) -> usize {
        self.inner.names.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no name is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the names other replicas interned: `more` are the cluster's names from id `from`.
    pub fn catch_up(&self, from: usize, more: Vec<String>) {
        let mut names = self.inner.names.write().unwrap_or_else(|e| e.into_inner());
        let skip = names.len().saturating_sub(from);
        if from <= names.len() {
            self.push_all(&mut names, more.into_iter().skip(skip));
        }
    }

    /// The id of `slug`, if any campaign or play ever used it.
    pub fn lookup(&self, slug: &str) -> Option<Id> {
        self.inner.ids.get(slug).map(|id| *id)
    }

    /// Genres not yet known to be durable: `(first id, [(id, name)])`.
    pub fn pending(&self) -> (usize, Vec<(u32, String)>) {
        let from = self.inner.persisted.load(std::sync::atomic::Ordering::Acquire);
        let names = self.inner.names.read().unwrap_or_else(|e| e.into_inner());
        (from, names.iter().enumerate().skip(from).map(|(i, n)| (i as u32, n.to_string())).collect())
    }

    /// Records that the first `n` genres are durable.
    pub fn mark_persisted(&self, n: usize) {
        self.inner.persisted.fetch_max(n, std::sync::atomic::Ordering::AcqRel);
    }

    /// Re-adds a stored genre at start; ids come back in order, so each must be the next.
    pub fn restore(&self, id: u32, name: &str) -> Result<(), StoreError> {
        let got = self.intern(name)?;
        if got.index() != id {
            return Err(StoreError::Corrupt(format!("{name:?} stored as {id}, restored as {}", got.index())));
        }
        self.mark_persisted(id as usize + 1);
        Ok(())
    }

    /// The slug of `id`.
    pub fn name(&self, id: Id) -> Arc<str> {
        let names = self.inner.names.read().unwrap_or_else(|e| e.into_inner());
        names.get(id.index() as usize).cloned().unwrap_or_else(|| Arc::from("unknown"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_reversible() {
        let v = Vocabulary::<GenreId>::default();
        let jazz = v.intern("jazz").unwrap();
        let pop = v.intern("pop").unwrap();
        assert_ne!(jazz, pop);
        assert_eq!(v.intern("jazz").unwrap(), jazz);
        assert_eq!(v.lookup("pop"), Some(pop));
        assert_eq!(v.lookup("opera"), None);
        assert_eq!(&*v.name(jazz), "jazz");
    }
}
