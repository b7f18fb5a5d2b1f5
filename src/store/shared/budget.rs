//! Campaign counters and budgets in each campaign's slot: an event counted once (with the
//! dedupe of its ad in the same script), and a limited budget's share held atomically per
//! decided ad.

use crate::domain::{AdId, Campaign, CampaignId, EventKind, UnixMillis};
use crate::store::delivery::{
    CampaignCounters, EventOutcome, PlaybackErrors, RESERVATION_HOLD_MS, VerifiedEvent,
};

use super::{Shared, SharedError, scripts};

fn counters_key(campaign: &str) -> String {
    format!("{{c:{campaign}}}:n")
}

fn holds_key(campaign: &str) -> String {
    format!("{{c:{campaign}}}:r")
}

fn seen_key(campaign: &str, ad: AdId) -> String {
    format!("{{c:{campaign}}}:e:{ad}")
}

/// The counters-hash field an event kind adds to (and its dedupe field, and its label among a
/// history's applied changes).
pub fn event_field(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Impression => "impressions",
        EventKind::Click => "clicks",
        EventKind::Complete => "completes",
        EventKind::Skip => "skips",
        EventKind::NotForMe => "not_for_me",
        EventKind::Start => "starts",
        EventKind::FirstQuartile => "first_quartiles",
        EventKind::Midpoint => "midpoints",
        EventKind::ThirdQuartile => "third_quartiles",
        EventKind::Mute => "mutes",
        EventKind::Unmute => "unmutes",
        EventKind::Pause => "pauses",
        EventKind::Resume => "resumes",
        EventKind::NotUsed => "not_used",
        EventKind::Error => "error",
    }
}

/// Spare holds asked for with each hold that needs a round trip (granted only while a budget
/// has plenty of room): the next decisions of the campaign on this replica need none.
const SPARE_HOLDS: usize = 7;
/// A spare is used only while its hold in the shared store has this much time left, so that
/// the ad decided with it is still held when its impression arrives.
const SPARE_MARGIN_MS: i64 = 20_000;

/// This replica's spare holds, by campaign: ad ids held in the shared store, not yet decided.
#[derive(Debug, Default)]
pub(super) struct Spares(crate::store::FastMap<CampaignId, Vec<(AdId, i64)>>);

impl Spares {
    /// A spare of `campaign` still usable at `now`, taken.
    fn take(&self, campaign: &CampaignId, now: UnixMillis) -> Option<AdId> {
        let mut spares = self.0.get_mut(campaign)?;
        while let Some((ad, usable_until)) = spares.pop() {
            if usable_until > now.0 {
                return Some(ad);
            }
        }
        None
    }

    /// Keeps `ads`, held at `now`.
    fn keep(&self, campaign: &CampaignId, ads: &[AdId], now: UnixMillis) {
        if ads.is_empty() {
            return;
        }
        let usable_until = now.0 + RESERVATION_HOLD_MS - SPARE_MARGIN_MS;
        self.0.entry(campaign.clone()).or_default().extend(ads.iter().map(|&a| (a, usable_until)));
    }
}

/// Error counts live beside the totals, one field per (creative, VAST code).
const ERROR_PREFIX: &str = "err:";

impl Shared {
    /// Counts `event` once, and waits until a replica of its master holds it: "accepted" is
    /// only answered for what survives the loss of that master. `dedupe_ms` is how long the
    /// ad's event ids are remembered (past every token's life).
    pub async fn count_event(
        &self,
        event: &VerifiedEvent,
        dedupe_ms: i64,
    ) -> Result<EventOutcome, SharedError> {
        let c = &event.campaign;
        let id = c.id.as_str();
        let (day, _) = c.time_zone.day_of(event.at);
        let error_field = if event.kind == EventKind::Error {
            format!("{ERROR_PREFIX}{}:{}", event.error_code, c.creatives[event.creative_index].id.as_str())
        } else {
            String::new()
        };
        let mut invocation = scripts::COUNT_EVENT.prepare_invoke();
        invocation
            .key(counters_key(id))
            .key(seen_key(id, event.ad))
            .key(holds_key(id))
            .arg(event_field(event.kind))
            .arg(&*event.event_id)
            .arg(dedupe_ms)
            .arg(day)
            .arg(c.time_zone.day_end(event.at).0)
            .arg(event.price_micros)
            .arg(event.ad.to_string())
            .arg(error_field);
        let outcome: String = self.write_invoke(invocation).await?;
        self.replicated(&counters_key(id)).await?;
        match outcome.as_str() {
            "accepted" => Ok(EventOutcome::Accepted),
            "retried" => Ok(EventOutcome::Retried),
            "already" => Ok(EventOutcome::AlreadyCounted),
            other => Err(SharedError::Corrupt(format!("the event script answered {other:?}"))),
        }
    }

    /// Holds one impression's price of `campaign`'s budget for the ad `ad`, decided at `now`,
    /// if it fits under every hard limit across the cluster: from this replica's spare holds
    /// when it has one (no round trip; the ad then takes the spare's id, under which it is
    /// held), else with one script that also asks for a few spares. None: the ad must not be
    /// served; Some(id): the ad's id.
    pub async fn reserve(
        &self,
        campaign: &Campaign,
        ad: AdId,
        now: UnixMillis,
    ) -> Result<Option<AdId>, SharedError> {
        if let Some(spare) = self.spares.take(&campaign.id, now) {
            return Ok(Some(spare));
        }
        let id = campaign.id.as_str();
        let b = &campaign.budget;
        let ads: Vec<AdId> = {
            let mut rng = rand::rng();
            std::iter::once(ad).chain((0..SPARE_HOLDS).map(|_| AdId::random(&mut rng))).collect()
        };
        let mut invocation = scripts::RESERVE.prepare_invoke();
        invocation
            .key(counters_key(id))
            .key(holds_key(id))
            .arg(now.0)
            .arg(campaign.time_zone.day_of(now).0)
            .arg(campaign.price_micros())
            .arg(b.lifetime_micros)
            .arg(b.daily_micros)
            .arg(b.impression_goal)
            .arg(RESERVATION_HOLD_MS);
        for a in &ads {
            invocation.arg(a.to_string());
        }
        let held: usize = self.invoke(invocation).await?;
        if held == 0 {
            return Ok(None);
        }
        self.spares.keep(&campaign.id, &ads[1..held.min(ads.len())], now);
        Ok(Some(ad))
    }

    /// The counters of `campaign` across the cluster.
    pub async fn counters(&self, campaign: &Campaign) -> Result<CampaignCounters, SharedError> {
        let fields: Vec<(String, String)> =
            self.query(redis::cmd("HGETALL").arg(counters_key(campaign.id.as_str()))).await?;
        parse_counters(&campaign.id, fields)
    }
}

/// Counters from the fields of a counters hash.
fn parse_counters(
    campaign: &CampaignId,
    fields: Vec<(String, String)>,
) -> Result<CampaignCounters, SharedError> {
    let mut c = CampaignCounters::default();
    for (name, value) in fields {
        let bad = || SharedError::Corrupt(format!("counter {name:?} of campaign {campaign} is {value:?}"));
        let n: i64 = value.parse().map_err(|_| bad())?;
        let count = u64::try_from(n).map_err(|_| bad())?;
        let p = &mut c.progress;
        match name.as_str() {
            "impressions" => c.impressions = count,
            "spend_micros" => c.spend_micros = n,
            "clicks" => c.clicks = count,
            "completes" => c.completes = count,
            "skips" => c.skips = count,
            "not_for_me" => c.not_for_me = count,
            "day" => c.day = n,
            "day_ends_at" => c.day_ends_at = n,
            "impressions_today" => c.impressions_today = count,
            "spend_today_micros" => c.spend_today_micros = n,
            "starts" => p.starts = count,
            "first_quartiles" => p.first_quartiles = count,
            "midpoints" => p.midpoints = count,
            "third_quartiles" => p.third_quartiles = count,
            "mutes" => p.mutes = count,
            "unmutes" => p.unmutes = count,
            "pauses" => p.pauses = count,
            "resumes" => p.resumes = count,
            "not_used" => p.not_used = count,
            other => {
                let (code, creative) =
                    other.strip_prefix(ERROR_PREFIX).and_then(|rest| rest.split_once(':')).ok_or_else(bad)?;
                c.errors.push(PlaybackErrors {
                    creative: creative.into(),
                    code: code.parse().map_err(|_| bad())?,
                    count,
                });
            }
        }
    }
    c.errors.sort_by(|a, b| (&a.creative, a.code).cmp(&(&b.creative, b.code)));
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_back_every_field_the_event_script_writes() {
        let fields = [
            ("impressions", "3"),
            ("spend_micros", "90000"),
            ("day", "20000"),
            ("day_ends_at", "1728000000000"),
            ("impressions_today", "2"),
            ("spend_today_micros", "60000"),
            ("not_used", "1"),
            ("midpoints", "2"),
            ("err:402:cr-1", "4"),
        ];
        let c = parse_counters(
            &CampaignId::from("c"),
            fields.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        )
        .unwrap();
        assert_eq!(
            (c.impressions, c.spend_micros, c.impressions_today, c.spend_today_micros),
            (3, 90000, 2, 60000)
        );
        assert_eq!((c.progress.not_used, c.progress.midpoints, c.day), (1, 2, 20000));
        assert_eq!(c.errors, vec![PlaybackErrors { creative: "cr-1".into(), code: 402, count: 4 }]);
        assert!(parse_counters(&CampaignId::from("c"), vec![("impressions".into(), "-1".into())]).is_err());
        assert!(parse_counters(&CampaignId::from("c"), vec![("nonsense".into(), "1".into())]).is_err());
    }
}
