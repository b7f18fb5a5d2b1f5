//! Pacing charts, drawn server-side as SVG: a campaign's delivery (the points the server
//! sampled, and now) against the curve its pacing follows, over the flight and over its local
//! day. Pure: the campaign, its points and `now` in, markup out.

use maud::{Markup, html};

use super::samples::DeliveryPoint;
use crate::decision::pacing;
use crate::domain::{Campaign, DAY_MS, PacingMode, UnixMillis};

/// One chart: a period on the x axis, an amount on the y axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// "flight" or "day" or "recent": the chart's id in the page.
    pub kind: &'static str,
    pub title: String,
    pub from: UnixMillis,
    pub to: UnixMillis,
    pub unit: Unit,
    /// The limit drawn as a dashed line (budget or goal); 0 = none.
    pub limit: f64,
    /// What the curve allows by each instant, (at, amount); empty = not paced.
    pub expected: Vec<(UnixMillis, f64)>,
    /// Delivery as sampled, the last point being now.
    pub actual: Vec<(UnixMillis, f64)>,
}

/// What a chart's y axis counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Micros,
    Impressions,
}

/// Points drawn along a curve.
const CURVE_STEPS: usize = 48;
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const PAD_LEFT: f64 = 72.0;
const PAD_RIGHT: f64 = 16.0;
const PAD_TOP: f64 = 16.0;
const PAD_BOTTOM: f64 = 32.0;
/// The window of the chart of a campaign without a curve.
const RECENT_MS: i64 = 12 * 3600 * 1000;

/// The charts of `campaign`: its flight (lifetime budget or impression goal, when it has both
/// flight ends), its day (daily budget), or else its recent delivery. `points` are the
/// server's samples, oldest first; `live` is delivery now.
pub fn pacing_charts(campaign: &Campaign, points: &[DeliveryPoint], live: DeliveryPoint) -> Vec<Chart> {
    let now = live.at;
    let budget = &campaign.budget;
    let mut charts = Vec::new();
    if let (Some(start), Some(end)) = (campaign.flight_start, campaign.flight_end)
        && (budget.lifetime_micros > 0 || budget.impression_goal > 0)
        && end > start
    {
        let (unit, limit) = if budget.lifetime_micros > 0 {
            (Unit::Micros, budget.lifetime_micros as f64)
        } else {
            (Unit::Impressions, budget.impression_goal as f64)
        };
        let amount = |p: &DeliveryPoint| match unit {
            Unit::Micros => p.spend_micros as f64,
            Unit::Impressions => p.impressions as f64,
        };
        charts.push(Chart {
            kind: "flight",
            title: format!("Flight: {} against its {} curve", unit.noun(), mode_name(budget.pacing)),
            from: start,
            to: end,
            unit,
            limit,
            expected: curve(budget.pacing, start, end, limit),
            actual: series(points, live, start, end, amount),
        });
    }
    if budget.daily_micros > 0 {
        let (_, into_day) = campaign.time_zone.day_of(now);
        let day_start = UnixMillis(now.0 - into_day);
        let day_end = UnixMillis(day_start.0 + DAY_MS);
        let limit = budget.daily_micros as f64;
        charts.push(Chart {
            kind: "day",
            title: format!(
                "Today ({}): spend against its {} curve",
                campaign.time_zone.name().unwrap_or("UTC"),
                mode_name(budget.pacing)
            ),
            from: day_start,
            to: day_end,
            unit: Unit::Micros,
            limit,
            expected: curve(budget.pacing, day_start, day_end, limit),
            actual: series(points, live, day_start, day_end, |p| p.spend_today_micros as f64),
        });
    }
    if charts.is_empty() {
        let from = UnixMillis(now.0 - RECENT_MS);
        charts.push(Chart {
            kind: "recent",
            title: "Last 12 hours: spend (not paced)".into(),
            from,
            to: now,
            unit: Unit::Micros,
            limit: budget.lifetime_micros as f64,
            expected: Vec::new(),
            actual: series(points, live, from, now, |p| p.spend_micros as f64),
        });
    }
    charts
}

/// What the curve of `mode` allows of `limit` across [from, to]; none for `Asap`.
fn curve(mode: PacingMode, from: UnixMillis, to: UnixMillis, limit: f64) -> Vec<(UnixMillis, f64)> {
    if mode == PacingMode::Asap {
        return Vec::new();
    }
    let span = (to.0 - from.0) as f64;
    (0..=CURVE_STEPS)
        .map(|i| {
            let x = i as f64 / CURVE_STEPS as f64;
            (UnixMillis(from.0 + (span * x) as i64), limit * pacing::curve(mode, x))
        })
        .collect()
}

/// The points within [from, to], then `live`.
fn series(
    points: &[DeliveryPoint],
    live: DeliveryPoint,
    from: UnixMillis,
    to: UnixMillis,
    amount: impl Fn(&DeliveryPoint) -> f64,
) -> Vec<(UnixMillis, f64)> {
    points
        .iter()
        .filter(|p| p.at >= from && p.at <= to && p.at < live.at)
        .chain(std::iter::once(&live).filter(|p| p.at >= from && p.at <= to))
        .map(|p| (p.at, amount(p)))
        .collect()
}

fn mode_name(mode: PacingMode) -> &'static str {
    match mode {
        PacingMode::Asap => "as-soon-as-possible (no)",
        PacingMode::Even => "even",
        PacingMode::FrontLoaded => "front-loaded",
    }
}

// === impl Unit ===

impl Unit {
    fn noun(self) -> &'static str {
        match self {
            Unit::Micros => "spend",
            Unit::Impressions => "impressions",
        }
    }

    /// An amount as the axis shows it.
    pub fn format(self, amount: f64) -> String {
        match self {
            Unit::Micros => super::pages::money(amount as i64),
            Unit::Impressions => format!("{}", amount.round() as i64),
        }
    }
}

// === impl Chart ===

impl Chart {
    /// The chart as an SVG element: the curve as a line, the limit dashed, each sampled point
    /// a circle (`data-at` / `data-amount` carry its values), the last one now.
    pub fn svg(&self) -> Markup {
        let top =
            self.expected.iter().chain(&self.actual).map(|&(_, v)| v).fold(self.limit, f64::max).max(1.0)
                * 1.05;
        let span = (self.to.0 - self.from.0).max(1) as f64;
        let x =
            |at: UnixMillis| PAD_LEFT + (at.0 - self.from.0) as f64 / span * (WIDTH - PAD_LEFT - PAD_RIGHT);
        let y = |v: f64| PAD_TOP + (1.0 - v / top) * (HEIGHT - PAD_TOP - PAD_BOTTOM);
        let line = |points: &[(UnixMillis, f64)]| {
            points.iter().map(|&(at, v)| format!("{:.1},{:.1}", x(at), y(v))).collect::<Vec<_>>().join(" ")
        };
        let bottom = HEIGHT - PAD_BOTTOM;
        html! {
            svg class="chart" id={ "chart-" (self.kind) } viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
                role="img" aria-label=(self.title) xmlns="http://www.w3.org/2000/svg" {
                title { (self.title) }
                line class="axis" x1=(PAD_LEFT) y1=(bottom) x2=(WIDTH - PAD_RIGHT) y2=(bottom) {}
                line class="axis" x1=(PAD_LEFT) y1=(PAD_TOP) x2=(PAD_LEFT) y2=(bottom) {}
                text class="tick" x=(PAD_LEFT - 6.0) y=(PAD_TOP + 4.0) text-anchor="end" { (self.unit.format(top)) }
                text class="tick" x=(PAD_LEFT - 6.0) y=(bottom) text-anchor="end" { (self.unit.format(0.0)) }
                text class="tick" x=(PAD_LEFT) y=(HEIGHT - 10.0) { (super::pages::time(self.from)) }
                text class="tick" x=(WIDTH - PAD_RIGHT) y=(HEIGHT - 10.0) text-anchor="end" { (super::pages::time(self.to)) }
                @if self.limit > 0.0 {
                    line class="limit" x1=(PAD_LEFT) y1=(y(self.limit)) x2=(WIDTH - PAD_RIGHT) y2=(y(self.limit)) {}
                }
                @if !self.expected.is_empty() {
                    polyline class="expected" points=(line(&self.expected)) {}
                }
                @if self.actual.len() > 1 {
                    polyline class="actual" points=(line(&self.actual)) {}
                }
                @for &(at, v) in &self.actual {
                    circle class="point" cx=(format!("{:.1}", x(at))) cy=(format!("{:.1}", y(v))) r="3"
                        data-at=(at.0) data-amount=(v) {
                        title { (super::pages::time(at)) ": " (self.unit.format(v)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Budget, Tier};

    const HOUR: i64 = 3_600_000;

    fn point(at: i64, spend_micros: i64, spend_today_micros: i64) -> DeliveryPoint {
        DeliveryPoint { at: UnixMillis(at), spend_micros, impressions: 0, spend_today_micros }
    }

    #[test]
    fn a_flight_and_a_day_are_charted_against_their_curves_with_every_point_and_now() {
        let mut c = crate::decision::tests::campaign("paced", "adv", Tier::Standard, 10);
        let start = 20_000 * DAY_MS;
        c.flight_start = Some(UnixMillis(start));
        c.flight_end = Some(UnixMillis(start + 10 * DAY_MS));
        c.budget = Budget {
            lifetime_micros: 1_000_000,
            daily_micros: 100_000,
            pacing: PacingMode::Even,
            ..Budget::default()
        };
        let now = start + DAY_MS + 12 * HOUR;
        let points = [
            point(start - HOUR, 0, 0),
            point(start + HOUR, 10_000, 10_000),
            point(start + DAY_MS + HOUR, 90_000, 5_000),
        ];
        let charts = pacing_charts(&c, &points, point(now, 150_000, 50_000));
        let kinds: Vec<_> = charts.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["flight", "day"]);
        let flight = &charts[0];
        assert_eq!(flight.actual.len(), 3, "the point before the flight is left out; now is last");
        assert_eq!(flight.actual.last(), Some(&(UnixMillis(now), 150_000.0)));
        assert_eq!(flight.expected.first().map(|p| p.1), Some(0.0));
        assert_eq!(flight.expected.last().map(|p| p.1), Some(1_000_000.0));
        let day = &charts[1];
        assert_eq!(
            day.actual,
            vec![(UnixMillis(start + DAY_MS + HOUR), 5_000.0), (UnixMillis(now), 50_000.0)]
        );
        let svg = flight.svg().into_string();
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(svg.contains("class=\"expected\""));
    }

    #[test]
    fn an_unpaced_campaign_gets_its_recent_delivery_without_a_curve() {
        let c = crate::decision::tests::campaign("asap", "adv", Tier::Remnant, 10);
        let now = 20_000 * DAY_MS;
        let charts = pacing_charts(&c, &[], point(now, 0, 0));
        assert_eq!(charts.len(), 1);
        assert_eq!(charts[0].kind, "recent");
        assert!(charts[0].expected.is_empty());
        assert_eq!(charts[0].actual.len(), 1, "now is always drawn");
    }
}
