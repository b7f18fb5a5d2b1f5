//! In-memory state behind small, cloneable handles: the catalog, listener profiles, delivery.
//!
//! Invariant: no lock or map guard here is ever held across an `.await`; every method is
//! synchronous and short.

pub mod catalog;
pub mod delivery;
pub mod durable;
pub mod listeners;
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
