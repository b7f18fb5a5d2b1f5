//! The report: throughput, latency percentiles, errors by status, decision quality, budgets;
//! as JSON and as a table.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::drive::{Class, Outcome, Target};

/// One measured phase.
#[derive(Debug, Serialize)]
pub(crate) struct PhaseReport {
    pub(crate) target: Target,
    pub(crate) seconds: f64,
    pub(crate) requests_ok: u64,
    pub(crate) throughput_per_sec: f64,
    pub(crate) latency_us: Percentiles,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) shed_by_client: u64,
    /// The server's own CPU over the measured window (read from its /metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<ServerReport>,
    /// Why the server's CPU could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_unread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) quality: Option<QualityReport>,
    /// The record workload: impressions accepted, and per second of the phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) events: Option<EventsReport>,
    /// Calls answered and refused in each second of the measured window.
    pub(crate) per_second: Vec<(u64, u64)>,
}

/// A closed-loop phase whose server was less busy than this was paced by the load generator
/// (the server is meant to run on one core).
const SATURATED: f64 = 0.9;

/// Impressions a record phase had accepted.
#[derive(Debug, Serialize)]
pub(crate) struct EventsReport {
    pub(crate) accepted: u64,
    /// Accepted, warm-up included: what the server's counters must have grown by.
    pub(crate) acknowledged: u64,
    pub(crate) per_sec: f64,
    /// Server CPU per accepted impression, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cpu_us_per_event: Option<f64>,
}

/// What the phase cost the server.
#[derive(Debug, Serialize)]
pub(crate) struct ServerReport {
    /// Server CPU (user + system, all threads) per successful request, in microseconds.
    pub(crate) cpu_us_per_request: f64,
    /// Server CPU seconds per wall-clock second: under 1 on a one-core server means the load
    /// generator, not the server, set the pace.
    pub(crate) busy: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct QualityReport {
    pub(crate) decisions: u64,
    pub(crate) paid_ads: u64,
    /// Share of paid ads matching the listener's top-3 genres or the playing track's genre.
    pub(crate) paid_ads_matching_taste: f64,
    /// Share of paid ads from sponsorship campaigns (first by tier, whatever their relevance).
    pub(crate) sponsorship_share: f64,
    /// Share of paid ads from campaigns without genre rules (geo-targeted or run-of-network).
    pub(crate) paid_ads_without_genre_rule: f64,
    /// Of the paid ads whose campaign has a genre rule, the share matching the listener's top-3
    /// genres or the playing track (an ad without genre rule never counts as a match above).
    pub(crate) genre_targeted_ads_matching_taste: f64,
    /// The same quality per kind of listener: known, new (never seen), without consent.
    pub(crate) by_class: Vec<ClassReport>,
    /// The paid ads matching neither taste nor track, as shares of all paid ads, by the kind of
    /// campaign that served them.
    pub(crate) misses: MissShares,
    pub(crate) house_break_share: f64,
    pub(crate) empty_break_share: f64,
    /// Must be 0 (closed loop only: one worker owns each listener).
    pub(crate) cap_violations: u64,
    pub(crate) impressions_recorded: u64,
    /// Impressions acknowledged as counted, warm-up included.
    pub(crate) impressions_acknowledged: u64,
    /// Impressions whose RecordEvents was given up after its retries.
    pub(crate) impressions_unacknowledged: u64,
}

/// `drive::ClassQuality` as shares.
#[derive(Debug, Serialize)]
pub(crate) struct ClassReport {
    pub(crate) class: Class,
    pub(crate) decisions: u64,
    /// Share of breaks with a paid ad.
    pub(crate) paid_fill: f64,
    /// Share of paid ads matching the track playing or the listener's top-3 genres (for a new
    /// listener, who has none yet, the session's recent tracks the player sent).
    pub(crate) match_share: f64,
    pub(crate) house_share: f64,
}

/// `drive::Misses` as shares of the paid ads.
#[derive(Debug, Serialize)]
pub(crate) struct MissShares {
    pub(crate) place_ads_without_consent: f64,
    pub(crate) place_ads_with_consent: f64,
    pub(crate) affinity_outside_top3: f64,
    pub(crate) sponsorship: f64,
}

/// Budget outcome over the campaigns with a lifetime budget.
#[derive(Debug, Default, Serialize)]
pub(crate) struct BudgetReport {
    pub(crate) budgeted_campaigns: usize,
    pub(crate) exhausted: usize,
    /// Largest spend over budget, as a share of the budget.
    pub(crate) max_overspend_share: f64,
    pub(crate) total_overspend_micros: i64,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) seed: u64,
    pub(crate) campaigns: usize,
    pub(crate) listeners: usize,
    pub(crate) mode: String,
    /// Threads of the load generator (1: one current-thread runtime).
    pub(crate) threads: u16,
    pub(crate) seeding_seconds: f64,
    pub(crate) phases: Vec<PhaseReport>,
    /// Decide throughput over health Check throughput (with --compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) decide_to_check_ratio: Option<f64>,
    /// Server CPU per Check over server CPU per Decide (with --compare and server metrics).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) check_to_decide_cost_ratio: Option<f64>,
    /// Interlude's health Check throughput over the bare tonic server's (`--bare-target`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) check_to_bare_ratio: Option<f64>,
    /// Server CPU per bare Check over server CPU per Interlude Check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bare_to_check_cost_ratio: Option<f64>,
    /// Server CPU per bare Check over server CPU per bare canned Decide: the Check / Decide cost
    /// ratio with no decision at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) bare_check_to_bare_decide_cost_ratio: Option<f64>,
    /// Server CPU of the RecordEvents in a Decide + RecordEvents over that of the Decide alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) record_to_decide_cost_ratio: Option<f64>,
    /// Ad tags (with their impression pixels) over gRPC Decides, per second (`--workload vast
    /// --compare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) vast_to_decide_ratio: Option<f64>,
    /// Ad tags with their pixels over Decide + RecordEvents, per second: the same work each way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) vast_to_decide_and_record_ratio: Option<f64>,
    /// Ad tags alone over gRPC Decides, per second: the same decision each way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) vast_tag_to_decide_ratio: Option<f64>,
    /// Where the server's CPU seconds were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_metrics: Option<String>,
    /// Closed loop (as fast as the server answers) rather than a fixed rate.
    pub(crate) closed_loop: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) budgets: Option<BudgetReport>,
    /// Replicas the load was spread over (`--targets`).
    pub(crate) replicas: usize,
    /// Impressions acknowledged by the server against what its counters grew by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) exactly_once: Option<ExactlyOnce>,
    /// The fault injected during the run, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fault: Option<String>,
}

impl PhaseReport {
    pub(crate) fn from_outcome(o: &Outcome, closed_loop: bool) -> Self {
        let h = &o.latency;
        let seconds = o.elapsed.as_secs_f64();
        let q = &o.quality;
        let share = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        PhaseReport {
            target: o.target,
            seconds,
            requests_ok: o.ok,
            throughput_per_sec: o.ok as f64 / seconds.max(1e-9),
            latency_us: Percentiles {
                p50: h.value_at_quantile(0.5),
                p90: h.value_at_quantile(0.9),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
            },
            errors: o.errors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            shed_by_client: o.shed_by_client,
            server: match &o.server_cpu {
                Some(Ok(w)) if o.ok > 0 && w.wall_seconds > 0.0 => Some(ServerReport {
                    cpu_us_per_request: 1e6 * w.cpu_seconds / o.ok as f64,
                    busy: w.cpu_seconds / w.wall_seconds,
                }),
                _ => None,
            },
            server_cpu_unread: match &o.server_cpu {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            },
            per_second: o.per_second.clone(),
            events: (o.target == Target::Record).then(|| EventsReport {
                accepted: q.impressions_recorded,
                acknowledged: q.impressions_acknowledged,
                per_sec: q.impressions_recorded as f64 / seconds.max(1e-9),
                cpu_us_per_event: match &o.server_cpu {
                    Some(Ok(w)) if q.impressions_recorded > 0 => {
                        Some(1e6 * w.cpu_seconds / q.impressions_recorded as f64)
                    }
                    _ => None,
                },
            }),
            quality: matches!(o.target, Target::Decide | Target::DecideAndRecord | Target::Vast).then(|| {
                QualityReport {
                    decisions: q.decisions,
                    paid_ads: q.paid_ads,
                    paid_ads_matching_taste: share(q.paid_ads_matching_taste, q.paid_ads),
                    sponsorship_share: share(q.sponsorship_ads, q.paid_ads),
                    paid_ads_without_genre_rule: share(q.paid_ads_without_genre_rule, q.paid_ads),
                    genre_targeted_ads_matching_taste: share(
                        q.paid_ads_matching_taste,
                        q.paid_ads.saturating_sub(q.paid_ads_without_genre_rule),
                    ),
                    by_class: Class::ALL
                        .iter()
                        .map(|&class| {
                            let c = &q.by_class[class.index()];
                            ClassReport {
                                class,
                                decisions: c.decisions,
                                paid_fill: share(c.paid_breaks, c.decisions),
                                match_share: share(c.paid_ads_matching, c.paid_ads),
                                house_share: share(c.house_breaks, c.decisions),
                            }
                        })
                        .collect(),
                    misses: MissShares {
                        place_ads_without_consent: share(q.misses.place_without_consent, q.paid_ads),
                        place_ads_with_consent: share(q.misses.place_with_consent, q.paid_ads),
                        affinity_outside_top3: share(q.misses.affinity_outside_top3, q.paid_ads),
                        sponsorship: share(q.misses.sponsorship, q.paid_ads),
                    },
                    house_break_share: share(q.house_breaks, q.decisions),
                    empty_break_share: share(q.empty_breaks, q.decisions),
                    cap_violations: if closed_loop { q.cap_violations } else { 0 },
                    impressions_recorded: q.impressions_recorded,
                    impressions_acknowledged: q.impressions_acknowledged,
                    impressions_unacknowledged: q.impressions_unacknowledged,
                }
            }),
        }
    }
}

impl Report {
    /// A human-readable table.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "interlude-load: seed {} | {} campaigns | {} listeners | {} | {} | seeding {:.1} s\n",
            self.seed,
            self.campaigns,
            self.listeners,
            self.mode,
            match self.threads {
                1 => "1 thread".to_string(),
                n => format!("{n} threads"),
            },
            self.seeding_seconds
        ));
        out.push_str(&format!(
            "{:<18} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>9}  errors\n",
            "target", "ok", "req/s", "p50 µs", "p90", "p99", "p99.9", "max", "srv cpu µs", "srv busy"
        ));
        for p in &self.phases {
            let l = &p.latency_us;
            let errors = if p.errors.is_empty() {
                "none".to_string()
            } else {
                p.errors.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            };
            let (cpu, busy) = p.server.as_ref().map_or(("-".to_string(), "-".to_string()), |s| {
                (format!("{:.1}", s.cpu_us_per_request), format!("{:.0}%", 100.0 * s.busy))
            });
            out.push_str(&format!(
                "{:<18} {:>10} {:>12.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>9}  {}{}\n",
                format!("{:?}", p.target),
                p.requests_ok,
                p.throughput_per_sec,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                cpu,
                busy,
                errors,
                if p.shed_by_client > 0 {
                    format!(" (client shed {})", p.shed_by_client)
                } else {
                    String::new()
                }
            ));
            // Second by second when anything was refused: where a fault began and ended.
            if p.per_second.iter().any(|&(_, refused)| refused > 0) {
                let seconds: Vec<String> = p.per_second.iter().map(|(ok, no)| format!("{ok}/{no}")).collect();
                out.push_str(&format!("  per second, answered/refused: {}\n", seconds.join(" ")));
            }
            if let Some(e) = &p.events {
                let cpu =
                    e.cpu_us_per_event.map_or(String::new(), |us| format!(", {us:.1} µs of server CPU each"));
                out.push_str(&format!("  events recorded {} ({:.0}/s{cpu})\n", e.accepted, e.per_sec));
            }
            if let Some(q) = &p.quality {
                out.push_str(&format!(
                    "  quality: {} decisions, {} paid ads, {:.1}% match taste or track ({:.1}% have no genre rule; {:.1}% of the genre-targeted match), house {:.1}%, empty {:.1}%, cap violations {}, impressions recorded {}\n",
                    q.decisions,
                    q.paid_ads,
                    100.0 * q.paid_ads_matching_taste,
                    100.0 * q.paid_ads_without_genre_rule,
                    100.0 * q.genre_targeted_ads_matching_taste,
                    100.0 * q.house_break_share,
                    100.0 * q.empty_break_share,
                    q.cap_violations,
                    q.impressions_recorded
                ));
                for c in &q.by_class {
                    out.push_str(&format!(
                        "  {:<10} {:>8} decisions: paid fill {:.1}%, paid ads matching {:.1}%, house {:.1}%\n",
                        format!("{:?}", c.class),
                        c.decisions,
                        100.0 * c.paid_fill,
                        100.0 * c.match_share,
                        100.0 * c.house_share,
                    ));
                }
                let m = &q.misses;
                out.push_str(&format!(
                    "  misses, as shares of paid ads: {:.1}% place ads to listeners without consent, {:.1}% place ads to consenting listeners, {:.1}% affinity for a genre outside the top 3; {:.1}% are sponsorships (sponsorships: {:.1}% of all paid ads)\n",
                    100.0 * m.place_ads_without_consent,
                    100.0 * m.place_ads_with_consent,
                    100.0 * m.affinity_outside_top3,
                    100.0 * m.sponsorship,
                    100.0 * q.sponsorship_share,
                ));
            }
        }
        if let Some(r) = self.decide_to_check_ratio {
            out.push_str(&format!("Decide / health Check throughput: {r:.2}\n"));
        }
        if let Some(r) = self.check_to_decide_cost_ratio {
            out.push_str(&format!("health Check / Decide server CPU per request: {r:.2}\n"));
        }
        if let Some(r) = self.check_to_bare_ratio {
            out.push_str(&format!("Interlude Check / bare tonic Check throughput: {r:.2}\n"));
        }
        if let Some(r) = self.bare_to_check_cost_ratio {
            out.push_str(&format!("bare tonic Check / Interlude Check server CPU per request: {r:.2}\n"));
        }
        if let Some(r) = self.bare_check_to_bare_decide_cost_ratio {
            out.push_str(&format!(
                "bare tonic Check / bare canned Decide server CPU per request: {r:.2} (the ceiling of health Check / Decide)\n"
            ));
        }
        if let Some(r) = self.record_to_decide_cost_ratio {
            out.push_str(&format!("RecordEvents / Decide server CPU per request: {r:.2}\n"));
        }
        if let Some(r) = self.vast_to_decide_ratio {
            out.push_str(&format!("VAST tag + pixels / Decide throughput: {r:.2}\n"));
        }
        if let Some(r) = self.vast_tag_to_decide_ratio {
            out.push_str(&format!("VAST tag alone / Decide throughput: {r:.2}\n"));
        }
        if let Some(r) = self.vast_to_decide_and_record_ratio {
            out.push_str(&format!("VAST tag + pixels / Decide + RecordEvents throughput: {r:.2}\n"));
        }
        let paced: Vec<String> = self
            .phases
            .iter()
            .filter(|p| p.server.as_ref().is_some_and(|s| s.busy < SATURATED))
            .map(|p| format!("{:?}", p.target))
            .collect();
        if self.closed_loop && !paced.is_empty() {
            out.push_str(&format!(
                "note: the server was under {:.0}% busy in {}: there the load generator set the pace, so compare the server CPU per request\n",
                100.0 * SATURATED,
                paced.join(", ")
            ));
        }
        if let Some(e) = self.phases.iter().find_map(|p| p.server_cpu_unread.as_ref()) {
            out.push_str(&format!("server CPU not read: {e}\n"));
        }
        if let Some(b) = &self.budgets {
            out.push_str(&format!(
                "budgets: {} budgeted, {} exhausted, max overspend {:.2}% of budget ({} micros in total)\n",
                b.budgeted_campaigns,
                b.exhausted,
                100.0 * b.max_overspend_share,
                b.total_overspend_micros
            ));
        }
        if let Some(e) = &self.exactly_once {
            out.push_str(&format!(
                "impressions over {} replica(s): {} acknowledged, {} counted by the server, {} acknowledged but not counted, {} counted beyond the acknowledged, {} never acknowledged\n",
                self.replicas,
                e.acknowledged,
                e.counted_by_server,
                e.acknowledged_not_counted,
                e.counted_beyond_acknowledged,
                e.unacknowledged
            ));
        }
        if let Some(fault) = &self.fault {
            out.push_str(&format!("fault: {fault}\n"));
        }
        out
    }
}

/// Every acknowledged impression counted exactly once, cluster-wide.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct ExactlyOnce {
    pub(crate) acknowledged: u64,
    pub(crate) counted_by_server: u64,
    /// RecordEvents calls given up after their retries.
    pub(crate) unacknowledged: u64,
    pub(crate) counted_beyond_acknowledged: u64,
    pub(crate) acknowledged_not_counted: u64,
}
