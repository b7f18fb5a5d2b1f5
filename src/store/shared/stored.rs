//! Which listener ids ever had state in the shared store: a Bloom filter, kept in Redis as
//! bitmap shards (`{lf:<n>}`) and mirrored in every replica, so that a decision for a listener
//! never stored anywhere (a free tier's cold start: a fifth of the requests in the harness's
//! mix) needs no read of the shared store.
//!
//! Bits are only ever set. A writer sets a listener's bits (and waits for a replica to hold
//! them) before it publishes the listener's change, and so before the write is acknowledged; a
//! replica subscribes to the changes first and loads the bitmaps second, so every stored id is
//! either in what it loaded or in what it hears. A false positive costs the read the filter
//! would have saved; a negative is as current as the change subscription (the bound the
//! trusted copies of `freshness` already have), and is believed only while subscribed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::{Shared, SharedError};

/// Bitmap shards, each its own key (and so spread over the masters).
const SHARDS: usize = 64;
/// Bits a shard: 2 Mi (256 KiB), 16 MiB in all — 1 % false positives at ~11M listeners, 30 %
/// at 50M (docs/SCALING.md). Part of the stored format: every replica must agree on it.
const SHARD_BITS: u64 = 1 << 21;
const SHARD_BYTES: usize = (SHARD_BITS / 8) as usize;
/// Bits set per id, all in one shard (one command sets them).
const PROBES: usize = 3;

fn shard_key(shard: usize) -> String {
    format!("{{lf:{shard}}}")
}

/// Where `id`'s bits are: its shard, and the bit offsets inside it (Redis's order: bit 0 is the
/// most significant bit of the first byte). xxh3 is a specified hash: replicas built by other
/// compilers agree on it.
fn positions(id: &str) -> (usize, [u64; PROBES]) {
    let hash = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
    let shard = ((hash >> 64) as u64 % SHARDS as u64) as usize;
    let low = hash as u64;
    let bits = std::array::from_fn(|probe| (low >> (21 * probe)) % SHARD_BITS);
    (shard, bits)
}

/// This replica's copy of the filter. Cheap to clone.
#[derive(Clone)]
pub struct StoredListeners {
    inner: Arc<Inner>,
}

struct Inner {
    /// Shard after shard, in Redis's layout.
    bytes: Box<[AtomicU8]>,
    /// Whether the bitmaps were loaded since the change subscription last began: until then
    /// (and whenever it is down) every listener may be stored.
    loaded: AtomicBool,
}

impl Default for StoredListeners {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                bytes: (0..SHARDS * SHARD_BYTES).map(|_| AtomicU8::new(0)).collect(),
                loaded: AtomicBool::new(false),
            }),
        }
    }
}

impl std::fmt::Debug for StoredListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredListeners").field("loaded", &self.inner.loaded.load(Ordering::Relaxed)).finish()
    }
}

fn byte_and_mask(shard: usize, bit: u64) -> (usize, u8) {
    (shard * SHARD_BYTES + (bit / 8) as usize, 0x80 >> (bit % 8))
}

impl StoredListeners {
    /// Whether listener `id` may have state in the shared store: false only when it has none.
    pub fn may_hold(&self, id: &str) -> bool {
        !self.is_loaded() || self.contains(id)
    }

    /// Whether the shared filter was loaded (and the changes are followed): only then is a
    /// listener ever believed never stored.
    pub fn is_loaded(&self) -> bool {
        self.inner.loaded.load(Ordering::Acquire)
    }

    fn contains(&self, id: &str) -> bool {
        let (shard, bits) = positions(id);
        bits.iter().all(|&bit| {
            let (byte, mask) = byte_and_mask(shard, bit);
            self.inner.bytes[byte].load(Ordering::Relaxed) & mask != 0
        })
    }

    /// Records that `id` has state in the shared store (heard, or written here).
    pub(super) fn insert(&self, id: &str) {
        let (shard, bits) = positions(id);
        for bit in bits {
            let (byte, mask) = byte_and_mask(shard, bit);
            self.inner.bytes[byte].fetch_or(mask, Ordering::Relaxed);
        }
    }

    /// Adds a shard as Redis stores it (a string no longer than the shard; missing bytes are 0).
    fn merge(&self, shard: usize, stored: &[u8]) {
        let start = shard * SHARD_BYTES;
        for (local, byte) in self.inner.bytes[start..start + SHARD_BYTES].iter().zip(stored) {
            if *byte != 0 {
                local.fetch_or(*byte, Ordering::Relaxed);
            }
        }
    }

    /// Believes nothing until loaded again (changes may be lost while unsubscribed).
    pub(super) fn unloaded(&self) {
        self.inner.loaded.store(false, Ordering::Release);
    }

    /// Believes the filter from now on: every shard was merged while the changes are followed.
    fn loaded(&self) {
        self.inner.loaded.store(true, Ordering::Release);
    }
}

impl Shared {
    /// Sets `id`'s bits in the shared filter, made durable like the write they announce,
    /// unless this replica already knows them set.
    pub(super) async fn mark_stored(&self, id: &str) -> Result<(), SharedError> {
        if self.stored.contains(id) {
            return Ok(());
        }
        let (shard, bits) = positions(id);
        let key = shard_key(shard);
        let mut set = redis::cmd("BITFIELD");
        set.arg(&key);
        for bit in bits {
            set.arg("SET").arg("u1").arg(bit).arg(1);
        }
        let _previous: Vec<u8> = self.write(&mut set).await?;
        self.replicated(&key).await?;
        self.stored.insert(id);
        Ok(())
    }

    /// Loads every shard of the shared filter into this replica's copy and believes it from
    /// then on. Call once subscribed to the changes.
    pub(super) async fn load_stored(&self) -> Result<(), SharedError> {
        for shard in 0..SHARDS {
            let stored: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(shard_key(shard))).await?;
            if let Some(stored) = stored {
                if stored.len() > SHARD_BYTES {
                    return Err(SharedError::Corrupt(format!(
                        "{}: {} bytes, more than a shard's {SHARD_BYTES}",
                        shard_key(shard),
                        stored.len()
                    )));
                }
                self.stored.merge(shard, &stored);
            }
        }
        self.stored.loaded();
        tracing::info!("stored listeners loaded: a decision for one never stored reads nothing");
        Ok(())
    }

    /// Which listeners may have state in the shared store.
    pub fn stored_listeners(&self) -> &StoredListeners {
        &self.stored
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn positions_are_the_stored_format() {
        // Every replica, whatever built it, must put an id's bits where the others look.
        let (shard, bits) = positions("listener-42");
        assert!(shard < SHARDS && bits.iter().all(|b| *b < SHARD_BITS));
        assert_eq!((shard, bits), positions("listener-42"));
        let expected = {
            let h = xxhash_rust::xxh3::xxh3_128(b"listener-42");
            (
                (h >> 64) as u64 % 64,
                [h as u64 % (1 << 21), (h as u64 >> 21) % (1 << 21), (h as u64 >> 42) % (1 << 21)],
            )
        };
        assert_eq!((shard as u64, bits), expected);
    }

    #[test]
    fn unloaded_it_believes_every_listener_may_be_stored() {
        let filter = StoredListeners::default();
        assert!(filter.may_hold("never-seen"));
        filter.loaded();
        assert!(!filter.may_hold("never-seen"));
        filter.insert("written");
        assert!(filter.may_hold("written"));
        filter.unloaded();
        assert!(filter.may_hold("never-seen"));
    }

    #[test]
    fn a_shard_merges_in_redis_bit_order() {
        let filter = StoredListeners::default();
        filter.loaded();
        let (shard, bits) = positions("heard-elsewhere");
        // As SETBIT would leave it: bit n is byte n / 8, counted from the most significant bit.
        let mut stored = vec![0u8; (bits.iter().max().unwrap() / 8 + 1) as usize];
        for bit in bits {
            stored[(bit / 8) as usize] |= 0x80 >> (bit % 8);
        }
        assert!(!filter.may_hold("heard-elsewhere"));
        filter.merge(shard, &stored);
        assert!(filter.may_hold("heard-elsewhere"));
    }
}
