//! A listener's taste: per-genre affinity with exponential time decay, and lifetime play counts.
//!
//! Weights are stored as of `updated_at`. Every genre decays at the same rate, so the normalised
//! shares do not change between plays; decay only matters when a new play is folded in, which is
//! when it is applied. This keeps reads free of floating-point work per genre and time.
//!
//! Top artists are kept the same way, but only the few strongest: a bounded "space-saving"
//! summary (Metwally et al., 2005), so a listener of thousands of artists still costs a few bytes.

use super::{ArtistId, GenreId, UnixMillis};

/// Plays shorter than this were skipped early: they count a quarter and are no lifetime play.
pub const FULL_PLAY_SECONDS: u32 = 30;
/// The weight of a play skipped early, relative to a full play.
pub const SKIPPED_PLAY_WEIGHT: f32 = 0.25;
/// At most this many genres are kept per member; the weakest is dropped first.
pub const MAX_GENRES: usize = 32;
/// This many artists are kept per member.
pub const TOP_ARTISTS: usize = 5;

/// One member's listening taste.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Taste {
    /// The time the weights are expressed at.
    pub updated_at: UnixMillis,
    pub genres: Vec<GenreStat>,
    /// The strongest artists (at most `TOP_ARTISTS`), unordered. Boxed, not a `Vec`: 8 bytes
    /// less per member, and it changes rarely.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub artists: Box<[ArtistStat]>,
}

/// Decayed play weight of one artist.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ArtistStat {
    pub artist: ArtistId,
    /// Decayed weight as of `Taste::updated_at`; an over-estimate by at most the weight of the
    /// artist it replaced (space-saving).
    pub weight: f32,
}

/// Affinity and history for one genre.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenreStat {
    pub genre: GenreId,
    /// Decayed weight as of `Taste::updated_at`.
    pub weight: f32,
    /// Full plays ever (for milestone targeting); never decays.
    pub lifetime_plays: u32,
}

impl Taste {
    /// Folds one play into the taste. `genres` share the play's weight equally.
    pub fn record_play(
        &mut self,
        genres: &[GenreId],
        artist: Option<ArtistId>,
        played_at: UnixMillis,
        seconds_played: u32,
        half_life_ms: i64,
    ) {
        if genres.is_empty() {
            return;
        }
        let full = seconds_played >= FULL_PLAY_SECONDS;
        let mut weight = if full { 1.0 } else { SKIPPED_PLAY_WEIGHT };
        if played_at > self.updated_at {
            self.decay(decay_factor(played_at.0 - self.updated_at.0, half_life_ms));
            self.updated_at = played_at;
        } else {
            // A late event: decay the play itself to the taste's time instead.
            weight *= decay_factor(self.updated_at.0 - played_at.0, half_life_ms);
        }
        let share = weight / genres.len() as f32;
        for &genre in genres {
            match self.genres.iter_mut().find(|s| s.genre == genre) {
                Some(stat) => {
                    stat.weight += share;
                    stat.lifetime_plays = stat.lifetime_plays.saturating_add(u32::from(full));
                }
                None => self.genres.push(GenreStat { genre, weight: share, lifetime_plays: u32::from(full) }),
            }
        }
        if self.genres.len() > MAX_GENRES {
            self.genres.sort_by(|a, b| b.weight.total_cmp(&a.weight));
            self.genres.truncate(MAX_GENRES);
        }
        if let Some(artist) = artist {
            self.add_artist(artist, weight);
        }
    }

    fn decay(&mut self, factor: f32) {
        for stat in &mut self.genres {
            stat.weight *= factor;
        }
        for stat in &mut self.artists {
            stat.weight *= factor;
        }
    }

    /// Space-saving: a new artist, when the summary is full, takes the weakest one's place
    /// and inherits its weight, so a frequent artist cannot be starved out by many rare ones.
    fn add_artist(&mut self, artist: ArtistId, weight: f32) {
        if let Some(stat) = self.artists.iter_mut().find(|s| s.artist == artist) {
            stat.weight += weight;
        } else if self.artists.len() < TOP_ARTISTS {
            let mut artists = std::mem::take(&mut self.artists).into_vec();
            artists.push(ArtistStat { artist, weight });
            self.artists = artists.into_boxed_slice();
        } else if let Some(weakest) = self.artists.iter_mut().min_by(|a, b| a.weight.total_cmp(&b.weight)) {
            *weakest = ArtistStat { artist, weight: weakest.weight + weight };
        }
    }

    /// Artist ids ordered strongest first.
    pub fn top_artists(&self) -> Vec<ArtistId> {
        let mut sorted = self.artists.to_vec();
        sorted.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.artist.cmp(&b.artist)));
        sorted.into_iter().map(|s| s.artist).collect()
    }

    /// Folds another member's taste (a merged listener) into this one.
    pub fn absorb(&mut self, other: &Taste, half_life_ms: i64) {
        let (older_factor, newer) = if other.updated_at > self.updated_at {
            self.decay(decay_factor(other.updated_at.0 - self.updated_at.0, half_life_ms));
            self.updated_at = other.updated_at;
            (1.0, true)
        } else {
            (decay_factor(self.updated_at.0 - other.updated_at.0, half_life_ms), false)
        };
        debug_assert!(newer || older_factor <= 1.0);
        for o in &other.genres {
            let w = o.weight * older_factor;
            match self.genres.iter_mut().find(|s| s.genre == o.genre) {
                Some(stat) => {
                    stat.weight += w;
                    stat.lifetime_plays = stat.lifetime_plays.saturating_add(o.lifetime_plays);
                }
                None => self.genres.push(GenreStat { weight: w, ..*o }),
            }
        }
        for o in other.artists.iter() {
            self.add_artist(o.artist, o.weight * older_factor);
        }
    }

    /// Sum of all genre weights (as of `updated_at`).
    pub fn total_weight(&self) -> f32 {
        self.genres.iter().map(|s| s.weight).sum()
    }

    /// The share of `genre` in the listener's taste, in [0, 1].
    pub fn share(&self, genre: GenreId) -> f32 {
        let total = self.total_weight();
        if total <= 0.0 {
            return 0.0;
        }
        self.genres.iter().find(|s| s.genre == genre).map_or(0.0, |s| s.weight / total)
    }

    /// The weight of the strongest genre (0 when no plays).
    pub fn top_weight(&self) -> f32 {
        self.genres.iter().map(|s| s.weight).fold(0.0, f32::max)
    }

    /// The weight of `genre` (0 when never played).
    pub fn weight(&self, genre: GenreId) -> f32 {
        self.genres.iter().find(|s| s.genre == genre).map_or(0.0, |s| s.weight)
    }

    /// Lifetime full plays of `genre`.
    pub fn lifetime_plays(&self, genre: GenreId) -> u64 {
        self.genres.iter().find(|s| s.genre == genre).map_or(0, |s| u64::from(s.lifetime_plays))
    }

    /// Genre ids ordered strongest first.
    pub fn top_genres(&self, n: usize) -> Vec<GenreId> {
        let mut sorted: Vec<_> = self.genres.clone();
        sorted.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.genre.cmp(&b.genre)));
        sorted.into_iter().take(n).map(|s| s.genre).collect()
    }
}

/// `0.5 ^ (elapsed / half_life)`.
pub fn decay_factor(elapsed_ms: i64, half_life_ms: i64) -> f32 {
    debug_assert!(half_life_ms > 0, "half-life is validated positive");
    (0.5f64).powf(elapsed_ms as f64 / half_life_ms as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DAY_MS;

    const HALF_LIFE: i64 = 30 * DAY_MS;
    const CLASSICAL: GenreId = GenreId(1);
    const POP: GenreId = GenreId(2);

    #[test]
    fn affinity_halves_after_one_half_life() {
        let mut taste = Taste::default();
        taste.record_play(&[CLASSICAL], None, UnixMillis(0), 200, HALF_LIFE);
        taste.record_play(&[POP], None, UnixMillis(HALF_LIFE), 200, HALF_LIFE);
        assert!((taste.weight(CLASSICAL) - 0.5).abs() < 1e-6, "{:?}", taste);
        assert!((taste.weight(POP) - 1.0).abs() < 1e-6);
        assert!((taste.share(POP) - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn two_half_lives_quarter_the_weight() {
        let mut taste = Taste::default();
        taste.record_play(&[CLASSICAL], None, UnixMillis(0), 200, HALF_LIFE);
        taste.record_play(&[POP], None, UnixMillis(2 * HALF_LIFE), 200, HALF_LIFE);
        assert!((taste.weight(CLASSICAL) - 0.25).abs() < 1e-6);
    }

    #[test]
    fn late_events_are_decayed_to_the_taste_time() {
        let mut taste = Taste::default();
        taste.record_play(&[POP], None, UnixMillis(HALF_LIFE), 200, HALF_LIFE);
        taste.record_play(&[CLASSICAL], None, UnixMillis(0), 200, HALF_LIFE);
        assert_eq!(taste.updated_at, UnixMillis(HALF_LIFE));
        assert!((taste.weight(CLASSICAL) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn skipped_plays_count_less_and_are_not_lifetime_plays() {
        let mut taste = Taste::default();
        taste.record_play(&[CLASSICAL], None, UnixMillis(0), 200, HALF_LIFE);
        taste.record_play(&[POP], None, UnixMillis(0), 5, HALF_LIFE);
        assert_eq!(taste.lifetime_plays(CLASSICAL), 1);
        assert_eq!(taste.lifetime_plays(POP), 0);
        assert!((taste.weight(POP) - SKIPPED_PLAY_WEIGHT).abs() < 1e-6);
    }

    #[test]
    fn multi_genre_plays_split_their_weight() {
        let mut taste = Taste::default();
        taste.record_play(&[CLASSICAL, POP], None, UnixMillis(0), 200, HALF_LIFE);
        assert!((taste.share(CLASSICAL) - 0.5).abs() < 1e-6);
        assert_eq!(taste.lifetime_plays(POP), 1);
    }

    #[test]
    fn absorb_keeps_both_histories() {
        let mut a = Taste::default();
        a.record_play(&[CLASSICAL], None, UnixMillis(0), 200, HALF_LIFE);
        let mut b = Taste::default();
        b.record_play(&[POP], None, UnixMillis(HALF_LIFE), 200, HALF_LIFE);
        b.record_play(&[CLASSICAL], None, UnixMillis(HALF_LIFE), 200, HALF_LIFE);
        a.absorb(&b, HALF_LIFE);
        assert_eq!(a.lifetime_plays(CLASSICAL), 2);
        assert_eq!(a.lifetime_plays(POP), 1);
        assert!((a.weight(CLASSICAL) - 1.5).abs() < 1e-6);
    }

    #[test]
    fn top_artists_follow_recent_listening() {
        let mut taste = Taste::default();
        let (verdi, puccini) = (ArtistId(1), ArtistId(2));
        for day in 0..10 {
            taste.record_play(&[CLASSICAL], Some(verdi), UnixMillis(day * DAY_MS), 200, HALF_LIFE);
        }
        // Later, and more of it: the newer favourite leads.
        for day in 100..115 {
            taste.record_play(&[CLASSICAL], Some(puccini), UnixMillis(day * DAY_MS), 200, HALF_LIFE);
        }
        assert_eq!(taste.top_artists(), vec![puccini, verdi]);
    }

    #[test]
    fn many_rare_artists_cannot_starve_a_frequent_one() {
        let mut taste = Taste::default();
        let favourite = ArtistId(0);
        for i in 0..200u32 {
            taste.record_play(&[POP], Some(favourite), UnixMillis(i64::from(i)), 200, HALF_LIFE);
            taste.record_play(&[POP], Some(ArtistId(1000 + i)), UnixMillis(i64::from(i)), 200, HALF_LIFE);
        }
        assert_eq!(taste.artists.len(), TOP_ARTISTS, "the summary stays bounded");
        assert_eq!(taste.top_artists()[0], favourite);
    }
}
