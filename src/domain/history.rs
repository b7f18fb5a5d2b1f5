//! What a listener (one household member) has heard: the facts frequency caps, ad load,
//! category separation and "not for me" suppression are decided on.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{AdId, AdvertiserId, CampaignId, CapScope, Category, CreativeId, DAY_MS, MINUTE_MS, UnixMillis};

/// Impressions older than this are dropped from the rolling record: no window is longer.
pub const MAX_WINDOW_MS: i64 = 30 * DAY_MS;
/// The rolling record keeps at most this many impressions; the ad-load limit keeps real
/// listeners far below it, and lifetime counts do not depend on it.
pub const MAX_RECENT: usize = 512;

/// How long an ad decided for a listener counts as heard before its impression arrives: a
/// player that fetches the next breaks ahead plays them within minutes, and one that never plays
/// an ad gives its place back when the hold ends.
pub const PENDING_HOLD_MS: i64 = 10 * MINUTE_MS;
/// At most this many ads are held per listener; older holds give way.
const MAX_PENDING: usize = 64;

/// One recorded impression.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImpressionRecord {
    pub at: UnixMillis,
    pub campaign: CampaignId,
    pub creative: CreativeId,
    pub advertiser: AdvertiserId,
    pub categories: Arc<[Category]>,
}

impl ImpressionRecord {
    /// The impression of `campaign`'s creative number `creative` at `at`.
    pub fn of(campaign: &super::Campaign, creative: usize, at: UnixMillis) -> Self {
        Self {
            at,
            campaign: campaign.id.clone(),
            creative: campaign.creatives[creative].id.clone(),
            advertiser: campaign.advertiser_id.clone(),
            categories: Arc::clone(campaign.categories.shared()),
        }
    }
}

/// What a "not for me" suppresses.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SuppressionTarget {
    Advertiser(AdvertiserId),
    Category(Category),
}

/// A suppression and when it ends.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Suppression {
    pub target: SuppressionTarget,
    pub until: UnixMillis,
}

/// One change an event makes to a history that outlives a restart. The durable store appends
/// these instead of rewriting the whole history, and replays them in order over the last
/// stored copy; applying them is deterministic (`DeliveryHistory::apply`), so the replay
/// rebuilds exactly what memory held.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HistoryChange {
    /// An impression heard.
    Heard(ImpressionRecord),
    /// A "not for me": an advertiser or category suppressed until `until`.
    Suppressed(Suppression),
}

/// Delivery facts for one listener member.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryHistory {
    /// Oldest first, pruned to `MAX_WINDOW_MS` and `MAX_RECENT`.
    recent: VecDeque<ImpressionRecord>,
    /// Lifetime impression counts per cap key.
    lifetime: Vec<(LifetimeKey, u32)>,
    /// Impressions pushed out of `recent` by `MAX_RECENT` while still inside `MAX_WINDOW_MS`,
    /// counted per cap key (and in all) and UTC day: a windowed cap adds those of the days its
    /// window touches, so it holds whatever the history's length — at worst a little early
    /// (a whole day counted for a window that starts within it), never late.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    overflow: Vec<DayCount>,
    suppressions: Vec<Suppression>,
    /// Ads decided but not yet heard (`hold`), oldest first: ad load, caps and category
    /// separation count them as heard until their impression arrives or `PENDING_HOLD_MS`
    /// passes. Memory only: after a restart at most one hold's worth of decided ads is unseen.
    #[serde(skip)]
    pending: Vec<PendingAd>,
}

/// An ad decided for the listener, its impression not yet recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PendingAd {
    ad: AdId,
    /// `at` = when it was decided.
    record: ImpressionRecord,
}

/// Impressions of one key on one UTC day (`DeliveryHistory::overflow`); `key` None = all.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct DayCount {
    key: Option<LifetimeKey>,
    day: i64,
    n: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum LifetimeKey {
    Creative(CampaignId, CreativeId),
    Campaign(CampaignId),
    Advertiser(AdvertiserId),
}

impl DeliveryHistory {
    /// Holds a place for `ad`, decided at `record.at`, until its impression (`record_impression_of`)
    /// or the end of the hold.
    pub fn hold(&mut self, ad: AdId, record: ImpressionRecord) {
        let now = record.at;
        self.pending.retain(|p| held(p, now));
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push(PendingAd { ad, record });
    }

    /// Takes over the holds of `from` (this replica's copy of a history read afresh from the
    /// shared store, which keeps no holds), except those `released` says were heard or given
    /// back meanwhile.
    pub fn carry_holds(&mut self, from: &DeliveryHistory, released: impl Fn(AdId) -> bool) {
        self.pending = from.pending.iter().filter(|p| !released(p.ad)).cloned().collect();
    }

    /// Records the impression of `ad` (releasing its hold) at `record.at`.
    pub fn record_impression_of(&mut self, ad: AdId, record: ImpressionRecord) {
        self.pending.retain(|p| p.ad != ad);
        self.record_impression(record);
    }

    /// Ends the hold of `ad` (decided, but the player will not play it).
    pub fn release_hold(&mut self, ad: AdId) {
        self.pending.retain(|p| p.ad != ad);
    }

    /// The held ads still counted at `now`.
    fn pending_at(&self, now: UnixMillis) -> impl Iterator<Item = &ImpressionRecord> {
        self.pending.iter().filter(move |p| held(p, now)).map(|p| &p.record)
    }

    /// Records one impression at `record.at`.
    pub fn record_impression(&mut self, record: ImpressionRecord) {
        for key in [
            LifetimeKey::Creative(record.campaign.clone(), record.creative.clone()),
            LifetimeKey::Campaign(record.campaign.clone()),
            LifetimeKey::Advertiser(record.advertiser.clone()),
        ] {
            match self.lifetime.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n = n.saturating_add(1),
                None => self.lifetime.push((key, 1)),
            }
        }
        // Keep the record ordered by time even when events arrive late.
        let pos = self.recent.iter().rposition(|r| r.at <= record.at).map_or(0, |p| p + 1);
        let newest = self.recent.back().map_or(record.at, |r| r.at.max(record.at));
        self.recent.insert(pos, record);
        while self.recent.front().is_some_and(|r| newest.0 - r.at.0 > MAX_WINDOW_MS) {
            self.recent.pop_front();
        }
        while self.recent.len() > MAX_RECENT {
            if let Some(old) = self.recent.pop_front() {
                self.overflowed(&old);
            }
        }
        let oldest_day = (newest.0 - MAX_WINDOW_MS).div_euclid(DAY_MS) - 1;
        self.overflow.retain(|c| c.day >= oldest_day);
    }

    /// Counts an impression pushed out of `recent` in the day buckets of `overflow`.
    fn overflowed(&mut self, r: &ImpressionRecord) {
        let day = r.at.0.div_euclid(DAY_MS);
        for key in [
            Some(LifetimeKey::Creative(r.campaign.clone(), r.creative.clone())),
            Some(LifetimeKey::Campaign(r.campaign.clone())),
            Some(LifetimeKey::Advertiser(r.advertiser.clone())),
            None,
        ] {
            match self.overflow.iter_mut().find(|c| c.day == day && c.key == key) {
                Some(c) => c.n = c.n.saturating_add(1),
                None => self.overflow.push(DayCount { key, day, n: 1 }),
            }
        }
    }

    /// Overflowed impressions matching `matches` on the days a window from `since` touches.
    fn overflow_since(&self, since: i64, matches: impl Fn(Option<&LifetimeKey>) -> bool) -> u32 {
        let first_day = since.div_euclid(DAY_MS);
        self.overflow.iter().filter(|c| c.day >= first_day && matches(c.key.as_ref())).map(|c| c.n).sum()
    }

    /// Applies one lasting change (what an event made, or its replay from the store).
    pub fn apply(&mut self, change: HistoryChange) {
        match change {
            HistoryChange::Heard(record) => self.record_impression(record),
            HistoryChange::Suppressed(s) => self.suppress(s.target, s.until),
        }
    }

    /// Suppresses an advertiser or category until `until`.
    pub fn suppress(&mut self, target: SuppressionTarget, until: UnixMillis) {
        match self.suppressions.iter_mut().find(|s| s.target == target) {
            Some(s) => s.until = s.until.max(until),
            None => self.suppressions.push(Suppression { target, until }),
        }
    }

    /// Impressions in scope within `window_ms` before `now` (or ever, with None).
    pub fn count(
        &self,
        scope: CapScope,
        campaign: &CampaignId,
        creative: &CreativeId,
        advertiser: &AdvertiserId,
        window_ms: Option<i64>,
        now: UnixMillis,
    ) -> u32 {
        let in_scope = |r: &ImpressionRecord| match scope {
            CapScope::Creative => r.campaign == *campaign && r.creative == *creative,
            CapScope::Campaign => r.campaign == *campaign,
            CapScope::Advertiser => r.advertiser == *advertiser,
        };
        let since = window_ms.map_or(i64::MIN, |w| now.0 - w);
        let pending = self.pending_at(now).filter(|r| r.at.0 > since && in_scope(r)).count() as u32;
        pending.saturating_add(match window_ms {
            // Compared in place: building a key would clone (and count references of) the ids.
            None => self
                .lifetime
                .iter()
                .find(|(k, _)| match (scope, k) {
                    (CapScope::Creative, LifetimeKey::Creative(c, cr)) => c == campaign && cr == creative,
                    (CapScope::Campaign, LifetimeKey::Campaign(c)) => c == campaign,
                    (CapScope::Advertiser, LifetimeKey::Advertiser(a)) => a == advertiser,
                    _ => false,
                })
                .map_or(0, |(_, n)| *n),
            Some(_) => {
                let hits = self.recent.iter().rev().take_while(|r| r.at.0 > since).filter(|r| in_scope(r));
                let overflowed = self.overflow_since(since, |k| match (scope, k) {
                    (CapScope::Creative, Some(LifetimeKey::Creative(c, cr))) => {
                        c == campaign && cr == creative
                    }
                    (CapScope::Campaign, Some(LifetimeKey::Campaign(c))) => c == campaign,
                    (CapScope::Advertiser, Some(LifetimeKey::Advertiser(a))) => a == advertiser,
                    _ => false,
                });
                (hits.count() as u32).saturating_add(overflowed)
            }
        })
    }

    /// All impressions within `window_ms` before `now`, across advertisers, held ads included.
    pub fn impressions_within(&self, window_ms: i64, now: UnixMillis) -> usize {
        let since = now.0 - window_ms;
        self.recent.iter().rev().take_while(|r| r.at.0 > since).count()
            + self.pending_at(now).filter(|r| r.at.0 > since).count()
            + self.overflow_since(since, |k| k.is_none()) as usize
    }

    /// Whether an ad sharing a category with `categories` was heard within `window_ms`.
    pub fn heard_category_within(&self, categories: &[Category], window_ms: i64, now: UnixMillis) -> bool {
        let since = now.0 - window_ms;
        let shares = |r: &ImpressionRecord| r.categories.iter().any(|c| categories.contains(c));
        self.recent.iter().rev().take_while(|r| r.at.0 > since).any(shares)
            || self.pending_at(now).any(|r| r.at.0 > since && shares(r))
    }

    /// Whether the listener suppressed this advertiser or one of these categories, as of `now`.
    pub fn is_suppressed(&self, advertiser: &AdvertiserId, categories: &[Category], now: UnixMillis) -> bool {
        self.suppressions.iter().any(|s| {
            s.until > now
                && match &s.target {
                    SuppressionTarget::Advertiser(a) => a == advertiser,
                    SuppressionTarget::Category(c) => categories.contains(c),
                }
        })
    }

    /// Folds another history (a merged listener) into this one.
    pub fn absorb(&mut self, other: &DeliveryHistory) {
        for (key, n) in &other.lifetime {
            match self.lifetime.iter_mut().find(|(k, _)| k == key) {
                Some((_, m)) => *m = m.saturating_add(*n),
                None => self.lifetime.push((key.clone(), *n)),
            }
        }
        let mut merged: Vec<_> = self.recent.drain(..).chain(other.recent.iter().cloned()).collect();
        merged.sort_by_key(|r| r.at);
        let skip = merged.len().saturating_sub(MAX_RECENT);
        for r in &merged[..skip] {
            self.overflowed(r);
        }
        for c in &other.overflow {
            match self.overflow.iter_mut().find(|m| m.day == c.day && m.key == c.key) {
                Some(m) => m.n = m.n.saturating_add(c.n),
                None => self.overflow.push(c.clone()),
            }
        }
        self.recent = merged.into_iter().skip(skip).collect();
        for s in &other.suppressions {
            self.suppress(s.target.clone(), s.until);
        }
    }

    /// Whether nothing is recorded (an empty history need not be stored; held ads are not).
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
            && self.lifetime.is_empty()
            && self.suppressions.is_empty()
            && self.overflow.is_empty()
    }

    /// Whether nothing is recorded or held: no rule of delivery can stop an ad.
    pub fn is_blank(&self) -> bool {
        self.is_empty() && self.pending.is_empty()
    }

    /// Whether any ad is held (expired holds included).
    pub fn holds_any(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether nothing is recorded and nothing is still held at `now`.
    pub fn is_idle_at(&self, now: UnixMillis) -> bool {
        self.is_empty() && self.pending_at(now).next().is_none()
    }

    /// Roughly the bytes this history occupies, for the history cache's weigher: each record's
    /// ids count as allocations of their own (as they are when read back from the store).
    pub fn approx_bytes(&self) -> usize {
        use std::mem::size_of;
        const IDS: usize = 4 * 32;
        size_of::<Self>()
            + self.recent.len() * (size_of::<ImpressionRecord>() + IDS)
            + self.lifetime.len() * (size_of::<(LifetimeKey, u32)>() + 48)
            + self.overflow.len() * (size_of::<DayCount>() + 48)
            + self.suppressions.len() * (size_of::<Suppression>() + 32)
            + self.pending.len() * (size_of::<PendingAd>() + IDS)
    }
}

fn held(p: &PendingAd, now: UnixMillis) -> bool {
    now.0 - p.record.at.0 < PENDING_HOLD_MS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{HOUR_MS, MINUTE_MS};

    fn imp(at: i64, campaign: &str, advertiser: &str, category: &str) -> ImpressionRecord {
        ImpressionRecord {
            at: UnixMillis(at),
            campaign: campaign.into(),
            creative: "c1".into(),
            advertiser: advertiser.into(),
            categories: Arc::from(vec![Category::from(category)]),
        }
    }

    #[test]
    fn windowed_and_lifetime_counts() {
        let mut h = DeliveryHistory::default();
        h.record_impression(imp(0, "camp", "adv", "653"));
        h.record_impression(imp(2 * HOUR_MS, "camp", "adv", "653"));
        h.record_impression(imp(2 * HOUR_MS + MINUTE_MS, "other", "adv", "1"));
        let now = UnixMillis(2 * HOUR_MS + 2 * MINUTE_MS);
        let (camp, cr, adv) = (CampaignId::from("camp"), CreativeId::from("c1"), AdvertiserId::from("adv"));
        assert_eq!(h.count(CapScope::Campaign, &camp, &cr, &adv, Some(HOUR_MS), now), 1);
        assert_eq!(h.count(CapScope::Campaign, &camp, &cr, &adv, None, now), 2);
        assert_eq!(h.count(CapScope::Advertiser, &camp, &cr, &adv, Some(HOUR_MS), now), 2);
        assert_eq!(h.impressions_within(HOUR_MS, now), 2);
        assert!(h.heard_category_within(&[Category::from("1")], 10 * MINUTE_MS, now));
        assert!(!h.heard_category_within(&[Category::from("653")], MINUTE_MS, now));
    }

    #[test]
    fn held_ads_count_as_heard_until_their_impression_or_the_end_of_the_hold() {
        let mut h = DeliveryHistory::default();
        let (camp, cr, adv) = (CampaignId::from("camp"), CreativeId::from("c1"), AdvertiserId::from("adv"));
        h.hold(AdId(1), imp(0, "camp", "adv", "653"));
        h.hold(AdId(2), imp(0, "camp", "adv", "653"));
        let soon = UnixMillis(MINUTE_MS);
        assert_eq!(h.count(CapScope::Campaign, &camp, &cr, &adv, Some(HOUR_MS), soon), 2);
        assert_eq!(h.count(CapScope::Campaign, &camp, &cr, &adv, None, soon), 2);
        assert_eq!(h.impressions_within(HOUR_MS, soon), 2);
        assert!(h.heard_category_within(&[Category::from("653")], HOUR_MS, soon));
        assert!(h.is_empty() && !h.is_blank(), "holds are not stored");
        // The impression of ad 1 replaces its hold: counted once.
        h.record_impression_of(AdId(1), imp(MINUTE_MS, "camp", "adv", "653"));
        assert_eq!(h.count(CapScope::Campaign, &camp, &cr, &adv, None, soon), 2);
        // Ad 2 never plays: its place comes back when the hold ends.
        let later = UnixMillis(PENDING_HOLD_MS + 1);
        assert_eq!(h.count(CapScope::Campaign, &camp, &cr, &adv, Some(HOUR_MS), later), 1);
        assert_eq!(h.impressions_within(HOUR_MS, later), 1);
    }

    #[test]
    fn a_windowed_cap_holds_past_the_recent_record_limit() {
        let mut h = DeliveryHistory::default();
        // Three weeks of a heavy listener: 40 impressions a day of one campaign, 840 in all.
        let start = 100 * DAY_MS;
        for i in 0..840 {
            h.record_impression(imp(start + i * (DAY_MS / 40), "camp", "adv", "653"));
        }
        assert!(h.recent.len() <= MAX_RECENT);
        let now = UnixMillis(start + 21 * DAY_MS);
        let (camp, cr, adv) = (CampaignId::from("camp"), CreativeId::from("c1"), AdvertiserId::from("adv"));
        let month = h.count(CapScope::Campaign, &camp, &cr, &adv, Some(30 * DAY_MS), now);
        assert_eq!(month, 840, "every impression of the window counts");
        // A window starting mid-day may count that whole day of overflow (early, never late).
        let two_weeks = h.count(CapScope::Campaign, &camp, &cr, &adv, Some(14 * DAY_MS), now);
        assert!((560..=600).contains(&two_weeks), "{two_weeks}");
        assert!(h.impressions_within(30 * DAY_MS, now) >= 840);
        // Short windows are exact: they lie within the recent record.
        assert_eq!(h.count(CapScope::Campaign, &camp, &cr, &adv, Some(DAY_MS), now), 39);
    }

    #[test]
    fn late_impressions_keep_time_order() {
        let mut h = DeliveryHistory::default();
        h.record_impression(imp(10, "a", "x", "1"));
        h.record_impression(imp(5, "b", "x", "1"));
        let times: Vec<_> = h.recent.iter().map(|r| r.at.0).collect();
        assert_eq!(times, vec![5, 10]);
    }

    #[test]
    fn suppression_expires() {
        let mut h = DeliveryHistory::default();
        h.suppress(SuppressionTarget::Advertiser("adv".into()), UnixMillis(100));
        assert!(h.is_suppressed(&"adv".into(), &[], UnixMillis(99)));
        assert!(!h.is_suppressed(&"adv".into(), &[], UnixMillis(100)));
        assert!(!h.is_suppressed(&"other".into(), &[], UnixMillis(0)));
    }
}
