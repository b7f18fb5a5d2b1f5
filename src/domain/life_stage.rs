//! The natural life of life-stage signals: how long after its assertion a signal is still true
//! when nobody says otherwise.
//!
//! Children grow up, students graduate, a move is soon old news. A campaign may bound a
//! signal's age itself (`SignalRequirement::max_age_ms`) and a caller may say when one assertion
//! ends (`Signal::valid_until`); where neither does, a signal of a kind listed here lapses after
//! its natural life. Kinds not listed (interests such as "runner") do not age by themselves.

use super::{DAY_MS, Signal, SignalName, UnixMillis};

const YEAR_MS: i64 = 365 * DAY_MS;

/// Signal slugs and their natural life. The parent kinds run to the end of the stage for a child
/// at its start, so a signal is not dropped while it may still hold.
const NATURAL_LIFE: &[(&str, i64)] = &[
    ("expecting-parent", 300 * DAY_MS),
    ("parent-newborn", YEAR_MS),
    ("parent-young-children", 5 * YEAR_MS),
    ("parent-school-age-children", 13 * YEAR_MS),
    ("parent-teenagers", 7 * YEAR_MS),
    ("student", 5 * YEAR_MS),
    ("engaged", 2 * YEAR_MS),
    ("newly-married", 2 * YEAR_MS),
    ("recently-moved", YEAR_MS),
    ("new-driver", 2 * YEAR_MS),
    ("retiring-soon", 5 * YEAR_MS),
];

/// How long a signal of this kind stays true after its assertion (None = it does not age).
pub fn natural_life_ms(name: &SignalName) -> Option<i64> {
    NATURAL_LIFE.iter().find(|(slug, _)| *slug == name.as_str()).map(|&(_, life)| life)
}

/// Why a signal does not count at an instant (see `Signal::standing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lapse {
    /// Older than the campaign's own bound on its age.
    OlderThanCampaignAllows { max_age_ms: i64 },
    /// Past the end the caller set for this assertion.
    PastValidUntil { until: UnixMillis },
    /// Past its kind's natural life.
    PastNaturalLife { life_ms: i64 },
}

impl Signal {
    /// Whether the signal still holds at `now` for a campaign that bounds its age by
    /// `max_age_ms`: the strictest of that bound, the assertion's own end and the kind's
    /// natural life applies.
    pub fn standing(&self, now: UnixMillis, max_age_ms: Option<i64>) -> Result<(), Lapse> {
        let age = now.0 - self.asserted_at.0;
        if let Some(max_age_ms) = max_age_ms
            && age > max_age_ms
        {
            return Err(Lapse::OlderThanCampaignAllows { max_age_ms });
        }
        match self.valid_until {
            Some(until) if now > until => Err(Lapse::PastValidUntil { until }),
            Some(_) => Ok(()),
            None => match natural_life_ms(&self.name) {
                Some(life_ms) if age > life_ms => Err(Lapse::PastNaturalLife { life_ms }),
                _ => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(name: &str, years_ago: i64, valid_until: Option<UnixMillis>) -> Signal {
        Signal { name: name.into(), asserted_at: UnixMillis(NOW.0 - years_ago * YEAR_MS), valid_until }
    }

    const NOW: UnixMillis = UnixMillis(1_795_435_200_000);

    #[test]
    fn a_life_stage_lapses_after_its_natural_life_unless_the_campaign_is_stricter() {
        let school = |years| signal("parent-school-age-children", years, None);
        assert_eq!(school(2).standing(NOW, None), Ok(()));
        assert_eq!(school(15).standing(NOW, None), Err(Lapse::PastNaturalLife { life_ms: 13 * YEAR_MS }));
        let max = YEAR_MS;
        assert_eq!(
            school(2).standing(NOW, Some(max)),
            Err(Lapse::OlderThanCampaignAllows { max_age_ms: max })
        );
        // A laxer campaign bound does not lift the natural life.
        assert!(school(15).standing(NOW, Some(20 * YEAR_MS)).is_err());
    }

    #[test]
    fn an_explicit_end_replaces_the_natural_life_and_interests_do_not_age() {
        let until = UnixMillis(NOW.0 + DAY_MS);
        assert_eq!(signal("parent-newborn", 3, Some(until)).standing(NOW, None), Ok(()));
        let ended = UnixMillis(NOW.0 - DAY_MS);
        assert_eq!(
            signal("runner", 0, Some(ended)).standing(NOW, None),
            Err(Lapse::PastValidUntil { until: ended })
        );
        assert_eq!(signal("runner", 30, None).standing(NOW, None), Ok(()));
    }
}
