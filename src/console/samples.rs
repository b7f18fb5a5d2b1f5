//! What the console draws over time, sampled by the server itself: each campaign's delivery
//! (for its pacing chart) and the decision counters of the server's own metrics (for the
//! server page). Bounded: a campaign keeps at most `MAX_POINTS` points, added only when its
//! delivery moved; the server keeps `SERVER_POINTS` samples.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::domain::{CampaignId, UnixMillis};
use crate::store::delivery::CampaignCounters;

/// How often each campaign's delivery is sampled.
pub const DELIVERY_INTERVAL: Duration = Duration::from_secs(300);
/// How often the server's decision counters are sampled.
pub const SERVER_INTERVAL: Duration = Duration::from_secs(10);
/// Points kept per campaign: 12 hours in which it delivered (32 bytes each; at
/// most ~46 MB for 10,000 campaigns that all deliver all the time).
pub const MAX_POINTS: usize = 144;
/// Server samples kept: 10 minutes at `SERVER_INTERVAL`.
pub const SERVER_POINTS: usize = 61;

/// One campaign's cumulative delivery at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliveryPoint {
    pub at: UnixMillis,
    pub spend_micros: i64,
    pub impressions: u64,
    /// Spend of the campaign's local day at `at`.
    pub spend_today_micros: i64,
}

impl DeliveryPoint {
    /// The delivery `counters` (read at `at`) say.
    pub fn of(counters: &CampaignCounters, at: UnixMillis) -> Self {
        Self {
            at,
            spend_micros: counters.spend_micros,
            impressions: counters.impressions,
            spend_today_micros: counters.spend_today_micros,
        }
    }
}

/// The decision counters (`interlude_decisions_total{fill, reason}`) at an instant.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerPoint {
    pub at: UnixMillis,
    /// (fill, reason) → decisions since the server started.
    pub decisions: Vec<((String, String), f64)>,
}

/// The samples. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    delivery: Mutex<HashMap<CampaignId, VecDeque<DeliveryPoint>>>,
    server: Mutex<VecDeque<ServerPoint>>,
}

// === impl Samples ===

impl Samples {
    /// Adds `point` to `campaign`'s series when its delivery moved since the last point (or
    /// it has none): a campaign that delivers nothing costs nothing. A point closer than
    /// `DELIVERY_INTERVAL` / 2 to the last one replaces it.
    pub fn record_delivery(&self, campaign: &CampaignId, point: DeliveryPoint) {
        let mut delivery = lock(&self.inner.delivery);
        let series = delivery.entry(campaign.clone()).or_default();
        if let Some(last) = series.back_mut() {
            if (last.spend_micros, last.impressions, last.spend_today_micros)
                == (point.spend_micros, point.impressions, point.spend_today_micros)
            {
                return;
            }
            if point.at.0 - last.at.0 < DELIVERY_INTERVAL.as_millis() as i64 / 2 {
                *last = point;
                return;
            }
        }
        if series.len() == MAX_POINTS {
            series.pop_front();
        }
        series.push_back(point);
    }

    /// `campaign`'s points since `since`, oldest first.
    pub fn delivery_since(&self, campaign: &CampaignId, since: UnixMillis) -> Vec<DeliveryPoint> {
        lock(&self.inner.delivery)
            .get(campaign)
            .map(|s| s.iter().filter(|p| p.at >= since).copied().collect())
            .unwrap_or_default()
    }

    /// Forgets campaigns that are no longer in the catalog.
    pub fn retain_campaigns(&self, keep: impl Fn(&CampaignId) -> bool) {
        lock(&self.inner.delivery).retain(|id, _| keep(id));
    }

    /// Adds a sample of the server's decision counters.
    pub fn record_server(&self, point: ServerPoint) {
        let mut server = lock(&self.inner.server);
        if server.len() == SERVER_POINTS {
            server.pop_front();
        }
        server.push_back(point);
    }

    /// The server samples, oldest first.
    pub fn server(&self) -> Vec<ServerPoint> {
        lock(&self.inner.server).iter().cloned().collect()
    }
}

/// The lock, whether or not a sampler panicked while holding it: the data is plain numbers.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The decision counters in a Prometheus text exposition (the server's own `/metrics`):
/// `interlude_decisions_total{fill="paid",reason="served"} 12`.
pub fn decision_counters(exposition: &str) -> Vec<((String, String), f64)> {
    let prefix = concat!("interlude_decisions_total", "{");
    debug_assert_eq!(&prefix[..prefix.len() - 1], crate::telemetry::DECISIONS);
    let mut out = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(prefix) else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        if let (Some(fill), Some(reason)) = (label("fill"), label("reason")) {
            out.push(((fill, reason), value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(minute: i64, spend_micros: i64) -> DeliveryPoint {
        DeliveryPoint {
            at: UnixMillis(minute * 300_000),
            spend_micros,
            impressions: spend_micros as u64 / 10,
            spend_today_micros: spend_micros,
        }
    }

    #[test]
    fn a_series_keeps_only_moves_and_stays_bounded() {
        let samples = Samples::default();
        let id = CampaignId::from("c");
        samples.record_delivery(&id, point(0, 0));
        samples.record_delivery(&id, point(1, 0));
        assert_eq!(samples.delivery_since(&id, UnixMillis(0)).len(), 1, "no move, no point");
        for minute in 2..(2 + MAX_POINTS as i64 + 10) {
            samples.record_delivery(&id, point(minute, minute * 100));
        }
        let series = samples.delivery_since(&id, UnixMillis(0));
        assert_eq!(series.len(), MAX_POINTS);
        assert_eq!(series.last().unwrap().spend_micros, (MAX_POINTS as i64 + 11) * 100);
        assert!(series.windows(2).all(|w| w[0].at < w[1].at));
        samples.retain_campaigns(|_| false);
        assert!(samples.delivery_since(&id, UnixMillis(0)).is_empty());
    }

    #[test]
    fn decision_counters_are_read_from_the_exposition() {
        let text = "# TYPE interlude_decisions_total counter\n\
            interlude_decisions_total{fill=\"paid\",reason=\"served\"} 12\n\
            interlude_decisions_total{fill=\"empty\",reason=\"frequency_capped\"} 3\n\
            interlude_decisions_total_other{fill=\"x\",reason=\"y\"} 9\n\
            interlude_rpc_requests_total{rpc=\"Decide\"} 15\n";
        assert_eq!(
            decision_counters(text),
            vec![
                (("empty".into(), "frequency_capped".into()), 3.0),
                (("paid".into(), "served".into()), 12.0)
            ]
        );
    }
}
