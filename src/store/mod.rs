//! In-memory state behind small, cloneable handles: the catalog, listener profiles, delivery.
//!
//! Invariant: no lock or map guard here is ever held across an `.await`; every method is
//! synchronous and short.

pub mod catalog;
pub mod delivery;
pub mod durable;
pub mod histories;
pub mod listeners;
pub mod shared;
pub mod vocabulary;

pub use catalog::Catalog;
pub use delivery::Delivery;
pub use listeners::Listeners;
pub use vocabulary::Vocabulary;

/// The hasher of the hot maps: foldhash with a random seed per map (keys are caller-supplied,
/// so not a fixed-key hasher), several times faster than SipHash on short ids.
pub(crate) type FastHash = foldhash::quality::RandomState;

/// A concurrent map with `FastHash`.
pub(crate) type FastMap<K, V> = dashmap::DashMap<K, V, FastHash>;

/// Per-key order without per-key locks: a key's loads from the store and its writes take the
/// key's stripe, so a load never puts a copy read before a write back after it.
pub(crate) struct Stripes(Box<[std::sync::Mutex<()>]>);

impl Stripes {
    pub(crate) fn new(n: usize) -> Self {
        Self((0..n).map(|_| std::sync::Mutex::new(())).collect())
    }

    /// Takes the stripe of `key`.
    pub(crate) fn lock(&self, key: &str) -> std::sync::MutexGuard<'_, ()> {
        // FNV-1a: stable, and enough to spread keys over a few dozen stripes.
        let h = key
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        // The mutex guards no data, only order: a poisoned one still gives it.
        self.0[h as usize % self.0.len()].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("campaign {0:?} is archived and cannot change")]
    Archived(String),
    #[error("the vocabulary is full ({0} names)")]
    VocabularyFull(usize),
    #[error("alias {alias:?} already belongs to listener {owner:?}")]
    AliasTaken { alias: String, owner: String },
    #[error("listener {0:?} cannot be merged into itself")]
    SelfMerge(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("the durable store cannot be read: {0}")]
    Unavailable(String),
}

impl From<durable::DurableError> for StoreError {
    fn from(e: durable::DurableError) -> Self {
        match e {
            durable::DurableError::Corrupt(m) => StoreError::Corrupt(m),
            e => StoreError::Unavailable(format!("the write could not be made durable: {e}")),
        }
    }
}
