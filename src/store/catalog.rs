//! The campaign catalog: a read-mostly snapshot swapped whole on every change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::StoreError;
use crate::decision::CatalogSnapshot;
use crate::domain::{Campaign, CampaignId, CampaignStatus, UnixMillis};

/// The campaigns. Cheap to clone: clones share one catalog.
///
/// Readers load the current `CatalogSnapshot` without locking; writers serialise on a mutex,
/// rebuild the snapshot and swap it in, so a decision always sees one consistent catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    snapshot: ArcSwap<CatalogSnapshot>,
    campaigns: Mutex<Campaigns>,
    /// The version of the map the current snapshot was built from. Held while building, so
    /// concurrent writers queue here and one rebuild publishes all their changes (group commit).
    published: Mutex<u64>,
}

/// A campaign as written, and whether it was new.
pub type Upserted = (Arc<Campaign>, bool);

/// A change of the catalog, by its place in the order of changes (`stage_all`, `publish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a staged change is not served until it is published"]
pub struct Version(u64);

#[derive(Debug, Default)]
struct Campaigns {
    map: BTreeMap<CampaignId, Arc<Campaign>>,
    /// Bumped on every change.
    version: u64,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                snapshot: ArcSwap::from_pointee(CatalogSnapshot::default()),
                campaigns: Mutex::new(Campaigns::default()),
                published: Mutex::new(0),
            }),
        }
    }
}

impl Catalog {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<CatalogSnapshot> {
        self.inner.snapshot.load_full()
    }

    /// Inserts or replaces campaigns in one swap. Returns, per campaign, whether it was new.
    /// An existing campaign keeps its status (status changes go through `set_status`), and an
    /// archived one cannot be replaced: then nothing at all changes.
    pub fn upsert_all(
        &self,
        campaigns: Vec<Campaign>,
        now: UnixMillis,
    ) -> Result<Vec<(Arc<Campaign>, bool)>, StoreError> {
        let (out, version) = self.stage_all(campaigns, now)?;
        self.publish(version);
        Ok(out)
    }

    /// Changes the campaigns as `upsert_all` does without publishing the change: decisions see
    /// it once `publish(version)` returns (the rebuild costs time proportional to the
    /// catalog, so the server runs it off the runtime's thread).
    pub fn stage_all(
        &self,
        campaigns: Vec<Campaign>,
        now: UnixMillis,
    ) -> Result<(Vec<Upserted>, Version), StoreError> {
        let mut guard = self.lock();
        let map = &mut guard.map;
        for c in &campaigns {
            if map.get(&c.id).is_some_and(|old| old.status == CampaignStatus::Archived) {
                return Err(StoreError::Archived(c.id.to_string()));
            }
        }
        let mut out = Vec::with_capacity(campaigns.len());
        for mut c in campaigns {
            let created = match map.get(&c.id) {
                Some(old) => {
                    c.status = old.status;
                    false
                }
                None => true,
            };
            c.updated_at = now;
            let c = Arc::new(c);
            map.insert(c.id.clone(), c.clone());
            out.push((c, created));
        }
        guard.version += 1;
        Ok((out, Version(guard.version)))
    }

    /// Puts back campaigns read from the durable store, exactly as stored.
    pub fn restore(&self, campaigns: Vec<Campaign>) {
        let mut guard = self.lock();
        for c in campaigns {
            guard.map.insert(c.id.clone(), Arc::new(c));
        }
        guard.version += 1;
        let version = Version(guard.version);
        drop(guard);
        self.publish(version);
    }

    /// Inserts or replaces one campaign, unpublished (see `stage_all`).
    pub fn stage(
        &self,
        campaign: Campaign,
        now: UnixMillis,
    ) -> Result<((Arc<Campaign>, bool), Version), StoreError> {
        let (mut out, version) = self.stage_all(vec![campaign], now)?;
        // stage_all returns one entry per input campaign.
        Ok((out.remove(0), version))
    }

    /// The campaign with `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Campaign>, StoreError> {
        self.lock()
            .map
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound { kind: "campaign", id: id.to_owned() })
    }

    /// Up to `limit` campaigns with ids after `after`, in id order, optionally of one status.
    /// Also returns whether more follow.
    pub fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        status: Option<CampaignStatus>,
    ) -> (Vec<Arc<Campaign>>, bool) {
        let guard = self.lock();
        let map = &guard.map;
        let range = match after {
            Some(a) => map.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => map.range::<str, _>(..),
        };
        let mut matching = range.map(|(_, c)| c).filter(|c| status.is_none_or(|s| c.status == s));
        let page: Vec<_> = matching.by_ref().take(limit).cloned().collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Pauses, resumes or archives a campaign, unpublished (see `stage_all`). Archived is final.
    pub fn stage_status(
        &self,
        id: &str,
        status: CampaignStatus,
        now: UnixMillis,
    ) -> Result<(Arc<Campaign>, Version), StoreError> {
        let mut guard = self.lock();
        let old =
            guard.map.get(id).ok_or_else(|| StoreError::NotFound { kind: "campaign", id: id.to_owned() })?;
        if old.status == CampaignStatus::Archived {
            if status == CampaignStatus::Archived {
                return Ok((old.clone(), Version(0)));
            }
            return Err(StoreError::Archived(id.to_owned()));
        }
        let mut c = Campaign::clone(old);
        c.status = status;
        c.updated_at = now;
        let c = Arc::new(c);
        guard.map.insert(c.id.clone(), c.clone());
        guard.version += 1;
        Ok((c, Version(guard.version)))
    }

    /// Returns once a snapshot containing change `version` is published: the caller's write is
    /// visible to every decision that starts afterwards. Concurrent writers share one rebuild.
    pub fn publish(&self, Version(version): Version) {
        // Poisoning only means a rebuild panicked; the published version is still accurate.
        let mut published = self.inner.published.lock().unwrap_or_else(|e| e.into_inner());
        if *published >= version {
            // A rebuild that started after our change already published it.
            return;
        }
        let (campaigns, latest) = {
            let guard = self.lock();
            (guard.map.values().cloned().collect(), guard.version)
        };
        self.inner.snapshot.store(Arc::new(CatalogSnapshot::new(campaigns)));
        *published = latest;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Campaigns> {
        // Every mutation completes before its guard drops; a panic mid-way leaves the map valid.
        self.inner.campaigns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Tier;

    #[test]
    fn a_staged_change_is_served_once_published_and_one_rebuild_publishes_every_change_before_it() {
        let catalog = Catalog::default();
        let now = UnixMillis(1_795_435_200_000);
        let c = |id| crate::decision::tests::campaign(id, "adv", Tier::Standard, 10);
        let ((_, created), first) = catalog.stage(c("first"), now).unwrap();
        assert!(created);
        let (_, second) = catalog.stage(c("second"), now).unwrap();
        assert!(catalog.get("second").is_ok(), "the writer's map has it at once");
        assert_eq!(catalog.snapshot().len(), 0, "decisions do not see it before it is published");
        catalog.publish(second);
        assert_eq!(catalog.snapshot().len(), 2, "publishing the later change publishes both");
        let before = catalog.snapshot();
        catalog.publish(first);
        assert!(Arc::ptr_eq(&before, &catalog.snapshot()), "an already published change rebuilds nothing");
    }
}
