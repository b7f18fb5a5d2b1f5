//! The campaigns table: one row per campaign with its delivery, searched, sorted and paged on
//! the server (so a page costs the same at 10,000 campaigns as at 10: one pass over the
//! catalog and one page of markup).

use std::sync::Arc;

use crate::decision::pacing::{self, PaceStatus};
use crate::domain::{Campaign, UnixMillis};
use crate::state::AppState;

/// Rows per page.
pub const PAGE_SIZE: usize = 50;

/// What the table shows of one campaign.
#[derive(Clone, Debug)]
pub struct Row {
    pub campaign: Arc<Campaign>,
    pub impressions: u64,
    pub spend_micros: i64,
    pub spend_today_micros: i64,
    pub pacing: PaceStatus,
    /// This campaign's share of every paid impression counted (0..=1).
    pub fill_share: f64,
}

/// The column a table is sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Id,
    Name,
    Status,
    Tier,
    Budget,
    SpendToday,
    Spend,
    Pacing,
    FillShare,
}

/// A request for one page of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableQuery {
    /// Case-insensitive text searched in id, name and advertiser; empty = every campaign.
    pub search: String,
    pub sort: SortKey,
    pub descending: bool,
    /// 1-based.
    pub page: usize,
}

/// One page of the table.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<Row>,
    /// Campaigns matching the search, across all pages.
    pub matching: usize,
    pub total: usize,
    pub pages: usize,
}

// === impl SortKey ===

impl SortKey {
    pub const ALL: [SortKey; 9] = [
        SortKey::Id,
        SortKey::Name,
        SortKey::Status,
        SortKey::Tier,
        SortKey::Budget,
        SortKey::SpendToday,
        SortKey::Spend,
        SortKey::Pacing,
        SortKey::FillShare,
    ];

    /// The key's name in URLs.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::Name => "name",
            SortKey::Status => "status",
            SortKey::Tier => "tier",
            SortKey::Budget => "budget",
            SortKey::SpendToday => "spend_today",
            SortKey::Spend => "spend",
            SortKey::Pacing => "pacing",
            SortKey::FillShare => "fill",
        }
    }

    pub fn named(name: &str) -> Option<SortKey> {
        SortKey::ALL.into_iter().find(|k| k.name() == name)
    }
}

// === impl TableQuery ===

impl Default for TableQuery {
    fn default() -> Self {
        Self { search: String::new(), sort: SortKey::Id, descending: false, page: 1 }
    }
}

impl TableQuery {
    /// Reads `q`, `sort`, `dir` and `page` from a query string; a value that cannot be read is
    /// reported by name.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut out = TableQuery::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "q" => out.search = value.trim().chars().take(200).collect(),
                "sort" => {
                    out.sort = SortKey::named(&value).ok_or_else(|| {
                        let names: Vec<_> = SortKey::ALL.iter().map(|k| k.name()).collect();
                        format!("sort: unknown column {value:?}; one of {}", names.join(", "))
                    })?
                }
                "dir" => {
                    out.descending = match &*value {
                        "asc" => false,
                        "desc" => true,
                        _ => return Err(format!("dir: {value:?} is neither asc nor desc")),
                    }
                }
                "page" => {
                    out.page = value
                        .parse::<usize>()
                        .ok()
                        .filter(|&p| p >= 1)
                        .ok_or_else(|| format!("page: {value:?} is not a page number (1, 2, …)"))?
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// This query's URL with `change` applied.
    pub fn href(&self, change: impl FnOnce(&mut TableQuery)) -> String {
        let mut q = self.clone();
        change(&mut q);
        let mut url = form_urlencoded::Serializer::new(String::new());
        if !q.search.is_empty() {
            url.append_pair("q", &q.search);
        }
        url.append_pair("sort", q.sort.name());
        url.append_pair("dir", if q.descending { "desc" } else { "asc" });
        url.append_pair("page", &q.page.to_string());
        format!("/console/campaigns?{}", url.finish())
    }
}

/// The page `query` asks for, of every campaign in the catalog as of `now`.
pub fn page(state: &AppState, query: &TableQuery, now: UnixMillis) -> Page {
    let (campaigns, _) = state.catalog.list(None, usize::MAX, None);
    let total = campaigns.len();
    // Shares are of every paid impression, whatever the search shows.
    let paid: u64 = campaigns
        .iter()
        .filter(|c| c.tier.is_paid())
        .map(|c| state.delivery.counters(&c.id, now).impressions)
        .sum();
    let needle = query.search.to_lowercase();
    let mut rows: Vec<Row> = campaigns
        .into_iter()
        .filter(|c| {
            needle.is_empty()
                || [c.id.as_str(), &c.name, &c.advertiser_name]
                    .iter()
                    .any(|t| t.to_lowercase().contains(&needle))
        })
        .map(|campaign| {
            let counters = state.delivery.counters(&campaign.id, now);
            let pacing = pacing::status(&campaign, &counters.recorded_spend(), now);
            let fill_share = if campaign.tier.is_paid() && paid > 0 {
                counters.impressions as f64 / paid as f64
            } else {
                0.0
            };
            Row {
                impressions: counters.impressions,
                spend_micros: counters.spend_micros,
                spend_today_micros: counters.spend_today_micros,
                pacing,
                fill_share,
                campaign,
            }
        })
        .collect();
    sort(&mut rows, query.sort, query.descending);
    let matching = rows.len();
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    let first = (query.page.min(pages) - 1) * PAGE_SIZE;
    rows.truncate(first + PAGE_SIZE);
    rows.drain(..first.min(rows.len()));
    Page { rows, matching, total, pages }
}

/// Sorts by `key`, ties by id (so paging is stable).
fn sort(rows: &mut [Row], key: SortKey, descending: bool) {
    if key == SortKey::Name {
        // Each name lowercased once, not once per comparison.
        rows.sort_by_cached_key(|r| (r.campaign.name.to_lowercase(), r.campaign.id.to_string()));
        if descending {
            rows.reverse();
        }
        return;
    }
    rows.sort_by(|a, b| {
        let (ca, cb) = (&a.campaign, &b.campaign);
        let order = match key {
            SortKey::Id => std::cmp::Ordering::Equal,
            SortKey::Name => ca.name.cmp(&cb.name),
            SortKey::Status => (ca.status as u8).cmp(&(cb.status as u8)),
            SortKey::Tier => (ca.tier as u8).cmp(&(cb.tier as u8)),
            SortKey::Budget => budget_key(ca).cmp(&budget_key(cb)),
            SortKey::SpendToday => a.spend_today_micros.cmp(&b.spend_today_micros),
            SortKey::Spend => a.spend_micros.cmp(&b.spend_micros),
            SortKey::Pacing => pace_rank(a.pacing).cmp(&pace_rank(b.pacing)),
            SortKey::FillShare => a.fill_share.total_cmp(&b.fill_share),
        };
        let order = order.then_with(|| ca.id.as_str().cmp(cb.id.as_str()));
        if descending { order.reverse() } else { order }
    });
}

fn budget_key(c: &Campaign) -> (i64, i64) {
    (c.budget.lifetime_micros, c.budget.daily_micros)
}

/// Pacing, most in need of attention last: not paced, on track, behind, ahead, exhausted.
fn pace_rank(status: PaceStatus) -> u8 {
    match status {
        PaceStatus::NotPaced => 0,
        PaceStatus::OnTrack => 1,
        PaceStatus::Behind => 2,
        PaceStatus::Ahead => 3,
        PaceStatus::Exhausted => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_query_reads_its_parameters_and_names_a_bad_one() {
        let q = TableQuery::parse("q=+Jazz+&sort=spend&dir=desc&page=3&x=1").unwrap();
        assert_eq!(q, TableQuery { search: "Jazz".into(), sort: SortKey::Spend, descending: true, page: 3 });
        assert_eq!(TableQuery::parse("").unwrap(), TableQuery::default());
        assert!(TableQuery::parse("sort=colour").unwrap_err().starts_with("sort:"));
        assert!(TableQuery::parse("dir=up").unwrap_err().starts_with("dir:"));
        assert!(TableQuery::parse("page=0").unwrap_err().starts_with("page:"));
        let href = q.href(|q| q.page = 4);
        assert_eq!(href, "/console/campaigns?q=Jazz&sort=spend&dir=desc&page=4");
        assert_eq!(TableQuery::parse(href.split_once('?').unwrap().1).unwrap().page, 4);
    }
}
