//! Impression tokens: an HMAC-SHA256-authenticated record of one decided ad.
//!
//! A token binds the decided ad's unique id, the resolved listener, member, campaign, creative,
//! price and decision time, so RecordEvents can trust what it counts, nobody can forge or alter
//! an impression, and each kind of event is counted once per ad whatever its event id.
//! Format: `base64url(payload) "." base64url(mac)`; the payload is versioned binary.
//!
//! Version 1 tokens (before ad ids) still verify until they expire: their ad id is derived from
//! their payload, so one token is still one ad.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::{AdId, UnixMillis};

/// The version signed today: 2 carries the ad id.
const VERSION: u8 = 2;
/// Tokens signed before ad ids existed; accepted until they expire.
const VERSION_WITHOUT_AD_ID: u8 = 1;
/// Tokens longer than this are rejected before any decoding work.
pub const MAX_TOKEN_LEN: usize = 1024;

/// What a token asserts. Signing borrows the ids (`ImpressionClaims<&str>`); verifying
/// returns them owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImpressionClaims<S = String> {
    /// The decided ad: unique per ad of every break, the key of "once per ad".
    pub ad: AdId,
    /// True for a version-1 token, whose ad id is derived from its payload (see the module doc).
    pub legacy: bool,
    /// Canonical listener id; empty = anonymous.
    pub listener: S,
    pub member: S,
    pub campaign: S,
    pub creative: S,
    pub price_micros: i64,
    pub decided_at: UnixMillis,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("impression token is malformed")]
    Malformed,
    #[error("impression token signature does not match")]
    BadSignature,
    #[error("impression token expired")]
    Expired,
}

/// Signs and verifies tokens with one secret key.
#[derive(Clone)]
pub struct TokenSigner {
    key: Hmac<Sha256>,
    ttl_ms: i64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("ttl_ms", &self.ttl_ms).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer with `key` (at least 32 bytes, checked by config validation); tokens are valid
    /// for `ttl_ms` after the decision.
    pub fn new(key: &[u8], ttl_ms: i64) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let key =
            Hmac::<Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac takes any key length"));
        Self { key, ttl_ms }
    }

    /// How long a token stays valid.
    /// A keyed fingerprint of a listener id, for the record that it was erased: it tells a
    /// token's listener from others without keeping the id (nor a hash anyone could compute
    /// from a guessed id without the key).
    pub fn listener_fingerprint(&self, listener: &str) -> [u8; 32] {
        let mut mac = self.key.clone();
        mac.update(b"interlude erased listener\0");
        mac.update(listener.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A keyed fingerprint of one play of one listener (its caller-given play id), for the
    /// record that it was counted: retries are recognised without keeping the listener's id.
    pub fn play_fingerprint(&self, listener: &str, play_id: &str) -> [u8; 32] {
        let mut mac = self.key.clone();
        mac.update(b"interlude play\0");
        mac.update(listener.as_bytes());
        mac.update(b"\0");
        mac.update(play_id.as_bytes());
        mac.finalize().into_bytes().into()
    }

    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// Encodes and signs `claims`.
    pub fn sign<S: AsRef<str>>(&self, claims: &ImpressionClaims<S>) -> String {
        let mut payload = Vec::with_capacity(96);
        payload.push(VERSION);
        payload.extend_from_slice(&claims.ad.0.to_be_bytes());
        payload.extend_from_slice(&claims.decided_at.0.to_be_bytes());
        payload.extend_from_slice(&claims.price_micros.to_be_bytes());
        for s in [&claims.listener, &claims.member, &claims.campaign, &claims.creative].map(AsRef::as_ref) {
            // Ids are validated to at most 128 bytes, so the length fits in a u16.
            payload.extend_from_slice(&(s.len() as u16).to_be_bytes());
            payload.extend_from_slice(s.as_bytes());
        }
        let mut mac = self.key.clone();
        mac.update(&payload);
        let tag = mac.finalize().into_bytes();
        let mut out = String::with_capacity(payload.len() * 4 / 3 + 48);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut out);
        out
    }

    /// Checks the signature and age of `token` and returns its claims.
    pub fn verify(&self, token: &str, now: UnixMillis) -> Result<ImpressionClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.key.clone();
        mac.update(&payload);
        // verify_slice compares in constant time.
        mac.verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
        let claims = decode(&payload).ok_or(TokenError::Malformed)?;
        if now.0 - claims.decided_at.0 > self.ttl_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn decode(payload: &[u8]) -> Option<ImpressionClaims> {
    let (&version, rest) = payload.split_first()?;
    let (ad, legacy, rest) = match version {
        VERSION => {
            let (ad, rest) = rest.split_first_chunk::<16>()?;
            (AdId(u128::from_be_bytes(*ad)), false, rest)
        }
        VERSION_WITHOUT_AD_ID => (legacy_ad_id(payload), true, rest),
        _ => return None,
    };
    let (decided_at, rest) = rest.split_first_chunk::<8>()?;
    let (price, mut rest) = rest.split_first_chunk::<8>()?;
    let mut next = || -> Option<String> {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if tail.len() < len {
            return None;
        }
        let (s, tail) = tail.split_at(len);
        rest = tail;
        String::from_utf8(s.to_vec()).ok()
    };
    let claims = ImpressionClaims {
        ad,
        legacy,
        listener: next()?,
        member: next()?,
        campaign: next()?,
        creative: next()?,
        price_micros: i64::from_be_bytes(*price),
        decided_at: UnixMillis(i64::from_be_bytes(*decided_at)),
    };
    rest.is_empty().then_some(claims)
}

/// The ad id of a version-1 token: the first 128 bits of the SHA-256 of its payload, so that
/// every copy of one token names one ad.
fn legacy_ad_id(payload: &[u8]) -> AdId {
    use sha2::Digest as _;
    let digest = Sha256::digest(payload);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    AdId(u128::from_be_bytes(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> ImpressionClaims {
        ImpressionClaims {
            ad: AdId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210),
            legacy: false,
            listener: "acct-1".into(),
            member: "kid".into(),
            campaign: "camp".into(),
            creative: "cr".into(),
            price_micros: 12_000,
            decided_at: UnixMillis(1_000),
        }
    }

    #[test]
    fn round_trips() {
        let signer = TokenSigner::new(&[7; 32], 60_000);
        let token = signer.sign(&claims());
        assert_eq!(signer.verify(&token, UnixMillis(2_000)), Ok(claims()));
    }

    #[test]
    fn rejects_forged_altered_and_expired_tokens() {
        let signer = TokenSigner::new(&[7; 32], 60_000);
        let token = signer.sign(&claims());
        let other = TokenSigner::new(&[8; 32], 60_000);
        assert_eq!(other.verify(&token, UnixMillis(2_000)), Err(TokenError::BadSignature));

        let mut altered = claims();
        altered.price_micros = 1;
        let forged_payload = other.sign(&altered);
        let (payload, _) = forged_payload.split_once('.').unwrap();
        let (_, tag) = token.split_once('.').unwrap();
        assert_eq!(
            signer.verify(&format!("{payload}.{tag}"), UnixMillis(2_000)),
            Err(TokenError::BadSignature)
        );

        assert_eq!(signer.verify(&token, UnixMillis(62_000)), Err(TokenError::Expired));
        assert_eq!(signer.verify("garbage", UnixMillis(0)), Err(TokenError::Malformed));
        assert_eq!(signer.verify("a.b.c", UnixMillis(0)), Err(TokenError::Malformed));
    }

    #[test]
    fn a_version_1_token_still_verifies_as_one_ad() {
        let signer = TokenSigner::new(&[7; 32], 60_000);
        // A version-1 payload, as the previous release signed it.
        let mut payload = vec![VERSION_WITHOUT_AD_ID];
        payload.extend_from_slice(&1_000i64.to_be_bytes());
        payload.extend_from_slice(&12_000i64.to_be_bytes());
        for s in ["acct-1", "kid", "camp", "cr"] {
            payload.extend_from_slice(&(s.len() as u16).to_be_bytes());
            payload.extend_from_slice(s.as_bytes());
        }
        let mut mac = signer.key.clone();
        mac.update(&payload);
        let token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        let first = signer.verify(&token, UnixMillis(2_000)).unwrap();
        let again = signer.verify(&token, UnixMillis(3_000)).unwrap();
        assert!(first.legacy);
        assert_eq!(first.ad, again.ad, "one token, one ad");
        assert_eq!((first.campaign.as_str(), first.price_micros), ("camp", 12_000));
        assert_ne!(signer.verify(&signer.sign(&claims()), UnixMillis(2_000)).unwrap().ad, first.ad);
    }
}
