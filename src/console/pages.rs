//! The console's pages as HTML (maud: escaped by construction, compiled into the binary). Each
//! function takes what its page shows, already computed, and returns markup; nothing here
//! reads state.

use maud::{DOCTYPE, Markup, html};

use super::chart::Chart;
use super::samples::ServerPoint;
use super::table::{Page, SortKey, TableQuery};
use crate::decision::pacing::PaceStatus;
use crate::decision::{Decision, Fill, Rule};
use crate::domain::{Campaign, CampaignStatus, CapScope, PacingMode, UnixMillis};
use crate::service::decisions::{reason_label, tier_label};
use crate::store::delivery::CampaignCounters;

/// The page frame: title, navigation, log-out.
pub fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Interlude · " (title) }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                header {
                    span.brand { "Interlude ad-ops" }
                    nav {
                        a href="/console/campaigns" { "Campaigns" }
                        a href="/console/server" { "Server" }
                        a href="/console/explain" { "Explain" }
                    }
                    form.logout method="post" action="/console/logout" {
                        button type="submit" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The login form; `failed` after a wrong token. Shown with 401 to every unauthenticated
/// request, so it holds nothing but the form.
pub fn login(failed: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Interlude · log in" }
                link rel="stylesheet" href="/console/console.css";
            }
            body.login {
                main {
                    h1 { "Interlude ad-ops console" }
                    @if failed { p.error role="alert" { "That is not the admin token." } }
                    form method="post" action="/console/login" {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                    p.hint { "The server's admin token: its " code { "admin_token" } " setting, or "
                        code { "interlude-data/admin.token" } " when it generated one." }
                }
            }
        }
    }
}

/// A request the console cannot read (e.g. an unknown sort column).
pub fn bad_request(message: &str) -> Markup {
    layout("Bad request", html! { p.error { (message) } })
}

/// A page the server could not make.
pub fn failed(message: &str) -> Markup {
    layout("Server error", html! { p.error { (message) } })
}

pub fn not_found(what: &str) -> Markup {
    layout("Not found", html! { p.error { (what) } })
}

/// The campaigns table with its search box, sortable headers and pager.
pub fn campaigns(page: &Page, query: &TableQuery, currency: &str) -> Markup {
    let header = |key: SortKey, label: &str| {
        let active = query.sort == key;
        let descending = if active { !query.descending } else { false };
        let arrow = match (active, query.descending) {
            (false, _) => "",
            (true, false) => " ▲",
            (true, true) => " ▼",
        };
        html! {
            th aria-sort=(if !active { "none" } else if query.descending { "descending" } else { "ascending" }) {
                a href=(query.href(|q| { q.sort = key; q.descending = descending; q.page = 1; })) { (label) (arrow) }
            }
        }
    };
    html! {
        form.search method="get" action="/console/campaigns" {
            input type="search" name="q" value=(query.search) placeholder="Search id, name or advertiser" aria-label="Search";
            input type="hidden" name="sort" value=(query.sort.name());
            input type="hidden" name="dir" value=(if query.descending { "desc" } else { "asc" });
            button type="submit" { "Search" }
        }
        p.summary { (page.matching) " of " (page.total) " campaigns · page " (query.page.min(page.pages)) " of " (page.pages) }
        table #campaigns {
            thead { tr {
                (header(SortKey::Id, "Campaign"))
                (header(SortKey::Name, "Name"))
                (header(SortKey::Status, "Status"))
                (header(SortKey::Tier, "Tier"))
                (header(SortKey::Budget, &format!("Budget ({currency})")))
                (header(SortKey::SpendToday, "Spend today"))
                (header(SortKey::Spend, "Spend lifetime"))
                (header(SortKey::Pacing, "Pacing"))
                (header(SortKey::FillShare, "Fill share"))
            } }
            tbody {
                @for row in &page.rows {
                    @let c = &row.campaign;
                    tr data-campaign=(c.id.as_str()) {
                        td { a href={ "/console/campaigns/" (urlencode(c.id.as_str())) } { (c.id.as_str()) } }
                        td { (&*c.name) br; small { (&*c.advertiser_name) } }
                        td { (status_name(c.status)) }
                        td { (tier_label(c.tier)) }
                        td.num { (budget(c)) }
                        td.num { (money(row.spend_today_micros)) }
                        td.num { (money(row.spend_micros)) }
                        td { span class={ "pace " (pace_class(row.pacing)) } { (pace_name(row.pacing)) } }
                        td.num { (format!("{:.1} %", row.fill_share * 100.0)) }
                    }
                }
            }
        }
        nav.pager {
            @if query.page > 1 { a rel="prev" href=(query.href(|q| q.page -= 1)) { "← Previous" } }
            @if query.page < page.pages { a rel="next" href=(query.href(|q| q.page += 1)) { "Next →" } }
        }
    }
}

/// One campaign: its delivery, pacing charts, caps, targeting and playback errors.
pub fn campaign(
    c: &Campaign,
    counters: &CampaignCounters,
    pace: PaceStatus,
    charts: &[Chart],
    targeting: &[(&'static str, String)],
    currency: &str,
) -> Markup {
    html! {
        p.summary {
            (status_name(c.status)) " · " (tier_label(c.tier)) " · " (&*c.advertiser_name)
            " · bid " (money(c.bid_cpm_micros)) " " (currency) " CPM · pacing "
            span class={ "pace " (pace_class(pace)) } { (pace_name(pace)) }
        }
        section.figures {
            dl {
                dt { "Impressions" } dd { (counters.impressions) }
                dt { "Impressions today" } dd { (counters.impressions_today) }
                dt { "Spend lifetime" } dd { (money(counters.spend_micros)) " " (currency) }
                dt { "Spend today" } dd { (money(counters.spend_today_micros)) " " (currency) }
                dt { "Budget" } dd { (budget(c)) }
                dt { "Completes" } dd { (counters.completes) }
                dt { "Skips" } dd { (counters.skips) }
                dt { "Clicks" } dd { (counters.clicks) }
                dt { "Not for me" } dd { (counters.not_for_me) }
                dt { "Flight" } dd { (flight(c)) }
            }
        }
        section.charts {
            h2 { "Delivery against pacing" }
            @for chart in charts {
                figure {
                    (chart.svg())
                    figcaption { (chart.title) " — line: what the curve allows; dots: delivery the server sampled, the last one now; dashes: the limit." }
                }
            }
        }
        section {
            h2 { "Frequency caps" }
            @if c.caps.is_empty() { p { "None." } } @else {
                ul #caps { @for cap in &c.caps {
                    li { (cap.max_impressions) " per " (cap_scope(cap.scope)) " "
                        (cap.window_ms.map_or_else(|| "for the listener's lifetime".to_string(), |ms| format!("per {}", duration(ms)))) }
                } }
            }
        }
        section {
            h2 { "Targeting" }
            @if targeting.is_empty() { p { "Anyone (no targeting rule)." } } @else {
                dl #targeting { @for (rule, value) in targeting { dt { (rule) } dd { (value) } } }
            }
        }
        section {
            h2 { "Recent VAST error codes" }
            @if counters.errors.is_empty() { p #errors { "No playback error reported." } } @else {
                table #errors {
                    thead { tr { th { "Creative" } th { "Code" } th { "Meaning" } th { "Count" } } }
                    tbody { @for e in &counters.errors {
                        tr { td { (e.creative.as_str()) } td { (e.code) } td { (vast_error(e.code)) } td.num { (e.count) } }
                    } }
                }
            }
        }
    }
}

/// Decisions per second, fill and no-fill reasons over the samples' span.
pub fn server(points: &[ServerPoint], metrics_on: bool) -> Markup {
    if !metrics_on {
        return html! { p.error { "Metrics are off on this server (metrics_listen = \"off\"): there is nothing to show." } };
    }
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return html! { p { "No sample yet." } };
    };
    let total = |p: &ServerPoint, keep: &dyn Fn(&str, &str) -> bool| -> f64 {
        p.decisions.iter().filter(|((f, r), _)| keep(f, r)).map(|(_, v)| v).sum()
    };
    let seconds = ((last.at.0 - first.at.0) as f64 / 1000.0).max(0.0);
    let delta = |keep: &dyn Fn(&str, &str) -> bool| total(last, keep) - total(first, keep);
    let all = delta(&|_, _| true);
    let share = |v: f64| if all > 0.0 { format!("{:.1} %", v / all * 100.0) } else { "—".into() };
    let mut reasons: Vec<(String, f64)> = last
        .decisions
        .iter()
        .filter(|((_, r), _)| r != "served")
        .map(|((f, r), v)| {
            let before =
                first.decisions.iter().find(|(k, _)| k.0 == *f && k.1 == *r).map_or(0.0, |(_, v)| *v);
            (format!("{} ({f})", reason_words(r)), v - before)
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    reasons.sort_by(|a, b| b.1.total_cmp(&a.1));
    html! {
        p.summary { "Over the last " (format!("{:.0}", seconds)) " s (" (points.len()) " samples of the server's own "
            code { "interlude_decisions_total" } ", every 10 s)." }
        section.figures { dl #rates {
            dt { "Decisions per second" } dd { (if seconds > 0.0 { format!("{:.1}", all / seconds) } else { "—".into() }) }
            dt { "Decisions" } dd { (all) }
            dt { "Paid" } dd #fill-paid { (share(delta(&|f, _| f == "paid"))) }
            dt { "House" } dd #fill-house { (share(delta(&|f, _| f == "house"))) }
            dt { "Empty" } dd #fill-empty { (share(delta(&|f, _| f == "empty"))) }
        } }
        h2 { "Breaks without a paid ad, by reason" }
        @if reasons.is_empty() { p { "None in this span." } } @else {
            table #reasons { thead { tr { th { "Reason (what filled the break)" } th { "Breaks" } th { "Share" } } }
                tbody { @for (reason, n) in &reasons { tr { td { (reason) } td.num { (n) } td.num { (share(*n)) } } } } }
        }
        h2 { "Per sample" }
        table #samples {
            thead { tr { th { "Until" } th { "Decisions/s" } th { "Paid" } th { "House" } th { "Empty" } } }
            tbody { @for w in points.windows(2).rev() {
                @let secs = ((w[1].at.0 - w[0].at.0) as f64 / 1000.0).max(0.001);
                @let d = |keep: &dyn Fn(&str, &str) -> bool| total(&w[1], keep) - total(&w[0], keep);
                @let n = d(&|_, _| true);
                @let pct = |v: f64| if n > 0.0 { format!("{:.0} %", v / n * 100.0) } else { "—".into() };
                tr { td { (time(w[1].at)) } td.num { (format!("{:.1}", n / secs)) }
                    td.num { (pct(d(&|f, _| f == "paid"))) } td.num { (pct(d(&|f, _| f == "house"))) } td.num { (pct(d(&|f, _| f == "empty"))) } }
            } }
        }
    }
}

/// The explain form (filled with what was asked), and the decision with every campaign's
/// outcome when there is one.
pub fn explain(query: &super::ExplainForm, outcome: Option<Result<&Decision, &str>>) -> Markup {
    html! {
        form.explain method="get" action="/console/explain" {
            label { "Listener id" input name="listener_id" value=(query.listener_id) placeholder="listener-opera"; }
            label { "Member" input name="member_id" value=(query.member_id) placeholder="(main profile)"; }
            label { "Track genre" input name="track_genre" value=(query.track_genre) placeholder="opera"; }
            label { "Country" input name="country" value=(query.country) placeholder="US" size="3"; }
            label { "Region" input name="region" value=(query.region) placeholder="NY" size="4"; }
            label { "City (metro)" input name="metro" value=(query.metro) placeholder="new-york"; }
            label { "Ads in the break" input name="max_ads" type="number" min="1" max="10" value=(query.max_ads); }
            label { "Break length (s)" input name="max_duration" type="number" min="1" value=(query.max_duration); }
            button type="submit" { "Explain" }
        }
        p.hint { "A dry run of the engine with explain on: it reserves no budget, holds no ad and counts nothing." }
        @match outcome {
            None => {}
            Some(Err(message)) => { p.error role="alert" { (message) } }
            Some(Ok(decision)) => {
                section #decision {
                    h2 { "Decision: " (fill_name(decision.fill)) }
                    p #reason { (reason_words(reason_label(decision.reason))) }
                    @if !decision.ads.is_empty() {
                        ol #served { @for ad in &decision.ads {
                            li { (ad.campaign.id.as_str()) " — " (&*ad.campaign.name) " (" (tier_label(ad.campaign.tier)) ", relevance "
                                (format!("{:.2}", ad.relevance)) ")" }
                        } }
                    }
                    h2 { "Every campaign, by the rule that stopped it" }
                    table #rules {
                        thead { tr { th { "Outcome" } th { "Campaigns" } } }
                        tbody { @for (outcome, n) in outcomes(&decision.trace) {
                            tr { td { (outcome) } td.num { (n) } }
                        } }
                    }
                    @let shown = furthest(&decision.trace);
                    h2 { "The campaigns that got furthest" }
                    @if shown.len() < decision.trace.len() {
                        p.hint { "The " (shown.len()) " of " (decision.trace.len()) " campaigns that got furthest: served first, then by relevance and score." }
                    }
                    table #trace {
                        thead { tr { th { "Campaign" } th { "Tier" } th { "Outcome" } th { "Why" } th { "Relevance" } th { "Score" } } }
                        tbody { @for t in shown {
                            tr data-campaign=(t.campaign_id.as_str()) class=(if t.rejected_by.is_none() { "served" } else { "stopped" }) {
                                td { a href={ "/console/campaigns/" (urlencode(t.campaign_id.as_str())) } { (t.campaign_id.as_str()) } }
                                td { (tier_label(t.tier)) }
                                td { (t.rejected_by.map_or("served", rule_words)) }
                                td { (t.detail) }
                                td.num { (format!("{:.2}", t.relevance)) }
                                td.num { (format!("{:.4}", t.score)) }
                            }
                        } }
                    }
                }
            }
        }
    }
}

/// Rows of the explain trace shown: at 10,000 campaigns the whole trace is megabytes of HTML,
/// and the campaigns stopped by targeting are summed up by `outcomes` anyway.
pub const TRACE_ROWS: usize = 200;

/// How many campaigns each outcome (served, or the rule in words) has, most first.
fn outcomes(trace: &[crate::decision::TraceEntry]) -> Vec<(&'static str, usize)> {
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for t in trace {
        let outcome = t.rejected_by.map_or("served", rule_words);
        match counts.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => counts.push((outcome, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
}

/// The `TRACE_ROWS` entries that got furthest: served first, then by relevance and score.
fn furthest(trace: &[crate::decision::TraceEntry]) -> Vec<&crate::decision::TraceEntry> {
    let mut entries: Vec<_> = trace.iter().collect();
    entries.sort_by(|a, b| {
        b.rejected_by
            .is_none()
            .cmp(&a.rejected_by.is_none())
            .then(b.relevance.total_cmp(&a.relevance))
            .then(b.score.total_cmp(&a.score))
            .then(a.campaign_id.as_str().cmp(b.campaign_id.as_str()))
    });
    entries.truncate(TRACE_ROWS);
    entries
}

/// The console's stylesheet.
pub const CSS: &str = include_str!("console.css");

/// Micros of money as an amount with two decimals and thousands separators.
pub fn money(micros: i64) -> String {
    let cents = (micros as f64 / 10_000.0).round() as i64;
    let (sign, cents) = if cents < 0 { ("-", -cents) } else { ("", cents) };
    let whole = (cents / 100).to_string();
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}{grouped}.{:02}", cents % 100)
}

/// An instant as "2026-12-04 13:05 UTC".
pub fn time(at: UnixMillis) -> String {
    jiff::Timestamp::from_millisecond(at.0)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| at.0.to_string())
}

fn duration(ms: i64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{} day(s)", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{} hour(s)", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} minute(s)", ms / 60_000),
        ms => format!("{} s", ms / 1000),
    }
}

fn flight(c: &Campaign) -> String {
    match (c.flight_start, c.flight_end) {
        (None, None) => "always on".into(),
        (Some(s), None) => format!("from {}", time(s)),
        (None, Some(e)) => format!("until {}", time(e)),
        (Some(s), Some(e)) => format!("{} → {}", time(s), time(e)),
    }
}

fn budget(c: &Campaign) -> String {
    let b = &c.budget;
    let mut parts = Vec::new();
    if b.lifetime_micros > 0 {
        parts.push(format!("{} lifetime", money(b.lifetime_micros)));
    }
    if b.daily_micros > 0 {
        parts.push(format!("{} a day", money(b.daily_micros)));
    }
    if b.impression_goal > 0 {
        parts.push(format!("{} impressions", b.impression_goal));
    }
    if parts.is_empty() {
        return "no limit".into();
    }
    let pacing = match b.pacing {
        PacingMode::Asap => "",
        PacingMode::Even => ", even",
        PacingMode::FrontLoaded => ", front-loaded",
    };
    format!("{}{pacing}", parts.join(", "))
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn status_name(s: CampaignStatus) -> &'static str {
    match s {
        CampaignStatus::Active => "active",
        CampaignStatus::Paused => "paused",
        CampaignStatus::Archived => "archived",
    }
}

fn fill_name(f: Fill) -> &'static str {
    match f {
        Fill::Paid => "a paid ad",
        Fill::House => "a house ad",
        Fill::Empty => "no ad",
    }
}

fn pace_name(p: PaceStatus) -> &'static str {
    match p {
        PaceStatus::NotPaced => "not paced",
        PaceStatus::OnTrack => "on track",
        PaceStatus::Behind => "behind",
        PaceStatus::Ahead => "ahead",
        PaceStatus::Exhausted => "budget exhausted",
    }
}

fn pace_class(p: PaceStatus) -> &'static str {
    match p {
        PaceStatus::NotPaced => "not-paced",
        PaceStatus::OnTrack => "on-track",
        PaceStatus::Behind => "behind",
        PaceStatus::Ahead => "ahead",
        PaceStatus::Exhausted => "exhausted",
    }
}

fn cap_scope(s: CapScope) -> &'static str {
    match s {
        CapScope::Creative => "creative",
        CapScope::Campaign => "campaign",
        CapScope::Advertiser => "advertiser",
    }
}

/// The rule that stopped a campaign, in words.
pub fn rule_words(rule: Rule) -> &'static str {
    match rule {
        Rule::Status => "not active",
        Rule::Flight => "outside its flight",
        Rule::AffinityGenre => "listener's taste does not match",
        Rule::TrackGenre => "track genre does not match",
        Rule::Milestone => "listener milestone does not match",
        Rule::Geo => "location does not match",
        Rule::Device => "device does not match",
        Rule::Age => "age does not match",
        Rule::Daypart => "outside its hours of the day",
        Rule::Signal => "life-stage or interest signal does not match",
        Rule::Consent => "needs consent the listener did not give",
        Rule::Suppressed => "listener said \"not for me\"",
        Rule::FrequencyCap => "frequency cap reached",
        Rule::CategorySeparation => "same category heard too recently",
        Rule::AdLoad => "listener's ad load for the hour is reached",
        Rule::Budget => "budget spent",
        Rule::Pacing => "ahead of its pacing curve (held back)",
        Rule::RelevanceFloor => "not relevant enough (below the relevance floor)",
        Rule::BreakDuration => "does not fit the break's length",
        Rule::Outranked => "outranked by a better set of ads",
    }
}

/// A decision reason (the metrics' label) in words.
fn reason_words(label: &str) -> &str {
    match label {
        "served" => "A paid ad was served.",
        "no_candidates" => "No paid campaign targets this listener and context.",
        "no_consent" => "The paid campaigns that fit need consent the listener did not give.",
        "below_relevance_floor" => "Paid campaigns fit, but none was relevant enough (the relevance floor).",
        "suppressed" => "The listener said \"not for me\" to the paid campaigns that fit.",
        "budget_exhausted" => {
            "The paid campaigns that fit have spent their budget or are held back by pacing."
        }
        "frequency_capped" => "The paid campaigns that fit reached their frequency caps.",
        "does_not_fit_break" => "No paid ad fits the break's length.",
        "ad_load_limit" => "The listener heard as many ads this hour as the ad load allows.",
        other => other,
    }
}

/// The meaning of the VAST error codes players report most.
fn vast_error(code: u16) -> &'static str {
    match code {
        100 => "XML parsing error",
        101 => "VAST schema validation error",
        200 => "trafficking error",
        300 => "general wrapper error",
        301 => "wrapper timeout",
        303 => "no ads in the wrapper's response",
        400 => "general linear error",
        401 => "media file not found",
        402 => "media file timeout",
        403 => "no supported media file",
        405 => "problem displaying the media file",
        600 => "general companion error",
        900 => "undefined error",
        _ => "see the VAST 4.2 error table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_two_decimals_and_thousands_separators() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(10_000), "0.01");
        assert_eq!(money(1_234_567_890_000), "1,234,567.89");
        assert_eq!(money(-5_000_000), "-5.00");
        assert_eq!(money(999_000_000), "999.00");
    }

    #[test]
    fn markup_escapes_what_campaigns_say() {
        let page = login(true).into_string();
        assert!(page.contains("not the admin token"));
        let html = bad_request("<script>alert(1)</script>").into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }
}
