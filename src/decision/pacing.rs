//! Budget pacing: how much of a budget may be spent by a given instant, and whether one more
//! ad of a campaign may serve now.
//!
//! Two questions, both pure:
//! - **Hard limits** (lifetime budget, daily budget, impression goal) count what is recorded
//!   *plus what is decided but not yet recorded* (the reservation), so concurrent breaks cannot
//!   all take the last impression: overspend is bounded by reservations that expired before
//!   their impression was recorded.
//! - **Pacing** keeps delivery on a curve: `Even` spreads a budget uniformly, `FrontLoaded`
//!   spends 1.5× the even rate at the start and 0.5× at the end, `Asap` has no curve. The
//!   lifetime budget and the impression goal follow the curve over the flight (when the
//!   campaign has both a start and an end); the daily budget follows it over each UTC day. A
//!   campaign ahead of its curve is throttled until the curve catches up, so with enough
//!   traffic delivery tracks the curve to within one ad.

use super::Spend;
use crate::domain::{Campaign, DAY_MS, PacingMode, UnixMillis};

/// Whether a campaign may serve one more ad now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Under every limit and not ahead of its curve.
    Open,
    /// Ahead of its delivery curve: wait for the curve to catch up.
    Throttled,
    /// One more ad would exceed a hard limit.
    Exhausted,
}

/// How delivery compares with the curve, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaceStatus {
    /// No curve: `Asap`, or no budget, or a lifetime budget without a flight end.
    NotPaced,
    OnTrack,
    Behind,
    Ahead,
    Exhausted,
}

/// Relative distance from the curve still reported as on track.
const ON_TRACK_TOLERANCE: f64 = 0.10;

/// Whether `campaign` may serve one more ad at `now`, given its `spend`.
pub fn pace(campaign: &Campaign, spend: &Spend, now: UnixMillis) -> Pace {
    if !campaign.budget.is_limited() {
        return Pace::Open;
    }
    if !fits(campaign, spend) {
        return Pace::Exhausted;
    }
    let ahead = curves(campaign, spend, now).any(|c| c.delivered > c.target);
    if ahead { Pace::Throttled } else { Pace::Open }
}

/// How long a campaign held back at `now` may be skipped without asking again: until its
/// curve allows one more ad, assuming its spend does not change, and at most until the end of
/// the current `max_hold_ms` period — spend can fall (reservations expire, the UTC day turns),
/// so a hold must stay short, and holds that end on the same period boundary let a list's
/// held campaigns be passed over as one run. `None` when the campaign may serve now.
pub fn held_until(
    campaign: &Campaign,
    spend: &Spend,
    now: UnixMillis,
    max_hold_ms: i64,
) -> Option<UnixMillis> {
    let period_end = now.0 - now.0.rem_euclid(max_hold_ms) + max_hold_ms;
    match pace(campaign, spend, now) {
        Pace::Open => None,
        Pace::Exhausted => Some(UnixMillis(period_end)),
        Pace::Throttled => {
            // Targets only grow with time within a flight and a day, so the first instant the
            // campaign opens again is found by bisection; the search stops at the day's end,
            // where the daily curve starts over with today's spend.
            let day_end = campaign.time_zone.day_end(now).0;
            let mut hi = period_end.min(day_end - 1);
            if pace(campaign, spend, UnixMillis(hi)) != Pace::Open {
                return Some(UnixMillis(hi));
            }
            let mut lo = now.0;
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if pace(campaign, spend, UnixMillis(mid)) == Pace::Open {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            Some(UnixMillis(hi))
        }
    }
}

/// How `campaign`'s recorded delivery compares with its curve at `now`.
pub fn status(campaign: &Campaign, spend: &Spend, now: UnixMillis) -> PaceStatus {
    let recorded = Spend { reserved_micros: 0, reserved_impressions: 0, ..*spend };
    if !fits(campaign, &recorded) {
        return PaceStatus::Exhausted;
    }
    // Ahead of any curve is ahead; otherwise behind any is behind. One ad of slack, so a
    // campaign that has only begun is not reported off track for a single ad.
    let (mut ahead, mut behind, mut paced) = (false, false, false);
    for c in curves(campaign, &recorded, now) {
        paced = true;
        let slack = ON_TRACK_TOLERANCE * c.target + c.unit;
        ahead |= c.delivered > c.target + slack;
        behind |= c.delivered < c.target - slack;
    }
    match (paced, ahead, behind) {
        (false, _, _) => PaceStatus::NotPaced,
        (true, true, _) => PaceStatus::Ahead,
        (true, false, true) => PaceStatus::Behind,
        (true, false, false) => PaceStatus::OnTrack,
    }
}

/// The share of a budget a curve allows after `elapsed` (in [0, 1]) of its period.
pub fn curve(mode: PacingMode, elapsed: f64) -> f64 {
    let x = elapsed.clamp(0.0, 1.0);
    match mode {
        PacingMode::Asap => 1.0,
        PacingMode::Even => x,
        // Rate 1.5 at the start falling linearly to 0.5 at the end; integrates to 1.
        PacingMode::FrontLoaded => x * (1.5 - 0.5 * x),
    }
}

/// Whether one more ad fits under every hard limit, counting reservations.
pub fn fits(campaign: &Campaign, s: &Spend) -> bool {
    let b = &campaign.budget;
    let price = campaign.price_micros();
    (b.lifetime_micros == 0 || s.lifetime_micros + s.reserved_micros + price <= b.lifetime_micros)
        && (b.daily_micros == 0 || s.today_micros + s.reserved_micros + price <= b.daily_micros)
        && (b.impression_goal == 0 || s.impressions + s.reserved_impressions < b.impression_goal)
}

/// One delivery curve at an instant.
#[derive(Clone, Copy, Debug)]
struct Curve {
    /// Delivered so far (with whatever reservations the spend holds).
    delivered: f64,
    /// What the curve allows by now.
    target: f64,
    /// One ad's worth on this curve.
    unit: f64,
}

/// Every curve that applies to `campaign` at `now`.
fn curves(campaign: &Campaign, s: &Spend, now: UnixMillis) -> impl Iterator<Item = Curve> {
    let b = campaign.budget;
    let paced = b.pacing != PacingMode::Asap;
    let flight = match (campaign.flight_start, campaign.flight_end) {
        (Some(start), Some(end)) if paced && end.0 > start.0 => {
            Some(curve(b.pacing, (now.0 - start.0) as f64 / (end.0 - start.0) as f64))
        }
        _ => None,
    };
    let into_day = campaign.time_zone.day_of(now).1;
    let day = paced.then(|| curve(b.pacing, into_day as f64 / DAY_MS as f64));
    let price = campaign.price_micros() as f64;
    [
        flight.filter(|_| b.lifetime_micros > 0).map(|f| Curve {
            delivered: (s.lifetime_micros + s.reserved_micros) as f64,
            target: f * b.lifetime_micros as f64,
            unit: price,
        }),
        flight.filter(|_| b.impression_goal > 0).map(|f| Curve {
            delivered: (s.impressions + s.reserved_impressions) as f64,
            target: f * b.impression_goal as f64,
            unit: 1.0,
        }),
        day.filter(|_| b.daily_micros > 0).map(|f| Curve {
            delivered: (s.today_micros + s.reserved_micros) as f64,
            target: f * b.daily_micros as f64,
            unit: price,
        }),
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::tests::campaign;
    use crate::domain::{Budget, HOUR_MS, Tier};

    /// $10 CPM: 10,000 micros an impression.
    const PRICE: i64 = 10_000;

    fn paced(mode: PacingMode, budget: Budget, days: i64) -> Campaign {
        let mut c = campaign("paced", "adv", Tier::Standard, 10);
        c.budget = Budget { pacing: mode, ..budget };
        c.flight_start = Some(UnixMillis(0));
        c.flight_end = Some(UnixMillis(days * DAY_MS));
        c
    }

    /// Simulates a flight: a break every `every_ms`, each taking the ad when pacing allows and
    /// recording it at once. Calls `each_hour` with the time and the spend after every hour.
    fn simulate(c: &Campaign, every_ms: i64, mut each_hour: impl FnMut(i64, &Spend)) -> Spend {
        let end = c.flight_end.map_or(DAY_MS, |e| e.0);
        let mut s = Spend::default();
        let mut t = 0;
        while t < end {
            if t % DAY_MS == 0 {
                s.today_micros = 0;
            }
            if pace(c, &s, UnixMillis(t)) == Pace::Open {
                s.lifetime_micros += PRICE;
                s.today_micros += PRICE;
                s.impressions += 1;
            }
            t += every_ms;
            if t % HOUR_MS == 0 {
                each_hour(t, &s);
            }
        }
        s
    }

    #[test]
    fn an_even_campaign_tracks_its_curve_within_five_percent() {
        // 100,000 impressions over 10 days; traffic offers about three times that.
        let c = paced(PacingMode::Even, Budget { lifetime_micros: 100_000 * PRICE, ..Budget::default() }, 10);
        let mut worst: f64 = 0.0;
        let spent = simulate(&c, 3_000, |t, s| {
            let expected = c.budget.lifetime_micros as f64 * t as f64 / (10 * DAY_MS) as f64;
            let off = (s.lifetime_micros as f64 - expected).abs() / expected;
            worst = worst.max(off);
            assert!(
                off <= 0.05,
                "at hour {}: spent {} expected {expected:.0}",
                t / HOUR_MS,
                s.lifetime_micros
            );
        });
        assert!(worst < 0.01, "tracks far closer than required: {worst}");
        assert_eq!(
            spent.lifetime_micros, c.budget.lifetime_micros,
            "spends the whole budget, not a cent more"
        );
    }

    #[test]
    fn a_front_loaded_campaign_spends_more_early_and_all_by_the_end() {
        let c = paced(
            PacingMode::FrontLoaded,
            Budget { lifetime_micros: 50_000 * PRICE, ..Budget::default() },
            4,
        );
        let mut at_half = 0;
        let spent = simulate(&c, 2_000, |t, s| {
            let expected = c.budget.lifetime_micros as f64
                * curve(PacingMode::FrontLoaded, t as f64 / (4 * DAY_MS) as f64);
            assert!((s.lifetime_micros as f64 - expected).abs() <= 0.05 * expected, "hour {}", t / HOUR_MS);
            if t == 2 * DAY_MS {
                at_half = s.lifetime_micros;
            }
        });
        assert_eq!(at_half, c.budget.lifetime_micros / 8 * 5, "5/8 of the budget by half time");
        assert_eq!(spent.lifetime_micros, c.budget.lifetime_micros);
    }

    #[test]
    fn a_daily_budget_is_spread_over_each_day() {
        let c = paced(PacingMode::Even, Budget { daily_micros: 2_400 * PRICE, ..Budget::default() }, 3);
        let spent = simulate(&c, 10_000, |t, s| {
            let hours_today = (t - 1).rem_euclid(DAY_MS) / HOUR_MS + 1;
            let expected = 100 * PRICE * hours_today;
            assert!(
                (s.today_micros - expected).abs() <= PRICE,
                "hour {}: {} vs {expected}",
                t / HOUR_MS,
                s.today_micros
            );
        });
        assert_eq!(spent.impressions, 3 * 2_400);
    }

    #[test]
    fn a_daily_budget_is_paced_over_the_campaigns_own_day() {
        let mut c = paced(PacingMode::Even, Budget { daily_micros: 2_400 * PRICE, ..Budget::default() }, 3);
        c.flight_end = None;
        // 2026-12-03 04:00 UTC is 23:00 on the 2nd in New York (UTC-5).
        let at = UnixMillis(1_796_270_400_000);
        let ninety_percent = Spend { today_micros: 2_160 * PRICE, ..Spend::default() };
        assert_eq!(pace(&c, &ninety_percent, at), Pace::Throttled, "4 hours into the UTC day");
        c.time_zone = crate::domain::CampaignZone::named("America/New_York").unwrap();
        assert_eq!(pace(&c, &ninety_percent, at), Pace::Open, "23 hours into the New York day");
        let (day, into) = c.time_zone.day_of(at);
        assert_eq!((day, into), (at.0.div_euclid(DAY_MS) - 1, 23 * HOUR_MS));
        assert_eq!(c.time_zone.day_end(at), UnixMillis(at.0 + HOUR_MS), "New York's midnight is 05:00 UTC");
    }

    #[test]
    fn asap_serves_until_a_hard_limit_and_reservations_count() {
        let mut c = paced(PacingMode::Asap, Budget { lifetime_micros: 3 * PRICE, ..Budget::default() }, 10);
        let at = UnixMillis(1);
        let s = Spend { lifetime_micros: 2 * PRICE, ..Spend::default() };
        assert_eq!(pace(&c, &s, at), Pace::Open);
        let reserved = Spend { reserved_micros: PRICE, reserved_impressions: 1, ..s };
        assert_eq!(
            pace(&c, &reserved, at),
            Pace::Exhausted,
            "the last impression is taken by an ad in flight"
        );
        c.budget = Budget { impression_goal: 3, ..Budget::default() };
        assert_eq!(pace(&c, &Spend { impressions: 2, ..Spend::default() }, at), Pace::Open);
        assert_eq!(
            pace(&c, &Spend { impressions: 2, reserved_impressions: 1, ..Spend::default() }, at),
            Pace::Exhausted
        );
        c.budget = Budget { daily_micros: PRICE, ..Budget::default() };
        assert_eq!(
            pace(&c, &Spend { lifetime_micros: 99 * PRICE, ..Spend::default() }, at),
            Pace::Open,
            "a new day"
        );
        assert_eq!(pace(&c, &Spend { today_micros: PRICE, ..Spend::default() }, at), Pace::Exhausted);
    }

    #[test]
    fn a_held_campaign_is_held_until_its_curve_allows_one_more_ad() {
        // 2,400 impressions evenly over a day: one every 36 s.
        let c = paced(PacingMode::Even, Budget { impression_goal: 2_400, ..Budget::default() }, 1);
        let at = |s: i64| UnixMillis(s * 1000);
        let open = Spend { impressions: 10, ..Spend::default() };
        // At 360 s the curve allows 10: open now, not held.
        assert_eq!(held_until(&c, &open, at(360), 60_000), None);
        // One more delivered: held until the curve reaches 11, at 396 s.
        let ahead = Spend { impressions: 11, ..Spend::default() };
        assert_eq!(pace(&c, &ahead, at(360)), Pace::Throttled);
        let until = held_until(&c, &ahead, at(360), 60_000).unwrap();
        assert_eq!(pace(&c, &ahead, until), Pace::Open);
        assert_eq!(pace(&c, &ahead, UnixMillis(until.0 - 1)), Pace::Throttled);
        assert!((until.0 - 396_000).abs() <= 1, "{until:?}");
        // Further ahead than the hold period: held to the period's end, then asked again.
        assert_eq!(held_until(&c, &ahead, at(360), 10_000), Some(at(370)));
        assert_eq!(held_until(&c, &ahead, UnixMillis(361_500), 10_000), Some(at(370)));
        // Past a hard limit: held to the period's end.
        let spent = Spend { impressions: 2_400, ..Spend::default() };
        assert_eq!(held_until(&c, &spent, UnixMillis(365_000), 10_000), Some(at(370)));
    }

    #[test]
    fn status_reports_the_curve() {
        let c = paced(PacingMode::Even, Budget { lifetime_micros: 1_000 * PRICE, ..Budget::default() }, 10);
        let half = UnixMillis(5 * DAY_MS);
        let with = |n: i64| Spend { lifetime_micros: n * PRICE, impressions: n as u64, ..Spend::default() };
        assert_eq!(status(&c, &with(500), half), PaceStatus::OnTrack);
        assert_eq!(status(&c, &with(300), half), PaceStatus::Behind);
        assert_eq!(status(&c, &with(700), half), PaceStatus::Ahead);
        assert_eq!(status(&c, &with(1_000), half), PaceStatus::Exhausted);
        let asap = paced(PacingMode::Asap, c.budget, 10);
        assert_eq!(status(&asap, &with(300), half), PaceStatus::NotPaced);
        let mut open_ended = c.clone();
        open_ended.flight_end = None;
        assert_eq!(status(&open_ended, &with(300), half), PaceStatus::NotPaced, "no end, no curve");
    }
}
