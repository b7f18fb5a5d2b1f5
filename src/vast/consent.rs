//! Consent signals of ad tags: the IAB TCF v2 string (`gdpr`, `gdpr_consent`) and the IAB US
//! Privacy string (`us_privacy`), read into the one `ConsentState` the engine knows.
//!
//! Only what decides personalisation is read. TCF: the core segment's version and its
//! PurposesConsent bits — personalised ads need purposes 1 (store and access information on a
//! device), 3 (create a personalised ads profile) and 4 (select personalised ads). Vendor
//! consents are not read: Interlude is the publisher's own first-party ad server, not a
//! registered TCF vendor. US Privacy: the opt-out-of-sale character.

use base64::Engine as _;

use crate::domain::ConsentState;

/// Why a consent parameter cannot be read; the caller names the parameter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    #[error("must be 0 or 1")]
    GdprFlag,
    #[error("is not a TCF v2 consent string (base64url core segment of version 2)")]
    NotTcfV2,
    #[error("must be an IAB US Privacy string such as \"1YNN\"")]
    NotUsPrivacy,
}

/// The TCF purposes personalised ads need, by number (1-based).
const PERSONALISATION_PURPOSES: [usize; 3] = [1, 3, 4];
/// Bit offset of PurposesConsent in a TCF v2 core segment: after Version(6), Created(36),
/// LastUpdated(36), CmpId(12), CmpVersion(12), ConsentScreen(6), ConsentLanguage(12),
/// VendorListVersion(12), TcfPolicyVersion(6), IsServiceSpecific(1), UseNonStandardTexts(1)
/// and SpecialFeatureOptIns(12).
const PURPOSES_CONSENT_OFFSET: usize = 152;
/// Bits of PurposesConsent.
const PURPOSES: usize = 24;

/// What the three parameters say together. `gdpr=1` without a string is a refusal (the CMP
/// has not asked, so nothing was granted); an opt-out of sale under US Privacy is a refusal;
/// when both speak, a refusal on either side wins.
pub fn consent(
    gdpr: Option<&str>,
    gdpr_consent: Option<&str>,
    us_privacy: Option<&str>,
) -> Result<ConsentState, (&'static str, ConsentError)> {
    let applies = match gdpr {
        None => None,
        Some("0") => Some(false),
        Some("1") => Some(true),
        Some(_) => return Err(("gdpr", ConsentError::GdprFlag)),
    };
    let tcf = gdpr_consent.map(tcf_consent).transpose().map_err(|e| ("gdpr_consent", e))?;
    let gdpr_state = match (applies, tcf) {
        (Some(true), None) => ConsentState::Denied,
        (Some(false), _) => ConsentState::Unspecified,
        (_, Some(state)) => state,
        (None, None) => ConsentState::Unspecified,
    };
    let usp = us_privacy.map(us_privacy_consent).transpose().map_err(|e| ("us_privacy", e))?;
    Ok(gdpr_state.combined(usp.unwrap_or_default()))
}

/// Granted when a TCF v2 string consents to every personalisation purpose, else Denied.
fn tcf_consent(value: &str) -> Result<ConsentState, ConsentError> {
    let core = value.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(core.trim_end_matches('='))
        .map_err(|_| ConsentError::NotTcfV2)?;
    let bit = |i: usize| bytes.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
    let version = (0..6).fold(0u8, |v, i| (v << 1) | u8::from(bit(i)));
    if version != 2 || bytes.len() * 8 < PURPOSES_CONSENT_OFFSET + PURPOSES {
        return Err(ConsentError::NotTcfV2);
    }
    let granted = PERSONALISATION_PURPOSES.iter().all(|&p| bit(PURPOSES_CONSENT_OFFSET + p - 1));
    Ok(if granted { ConsentState::Granted } else { ConsentState::Denied })
}

/// Denied on an opt-out of sale (`1?Y?`); otherwise US Privacy grants nothing by itself.
fn us_privacy_consent(value: &str) -> Result<ConsentState, ConsentError> {
    let b = value.as_bytes();
    let ok = b.len() == 4 && b[0] == b'1' && b[1..].iter().all(|c| matches!(c, b'Y' | b'N' | b'-'));
    if !ok {
        return Err(ConsentError::NotUsPrivacy);
    }
    Ok(if b[2] == b'Y' { ConsentState::Denied } else { ConsentState::Unspecified })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCF v2 core segment consenting to `purposes`.
    fn tcf(version: u8, purposes: &[usize]) -> String {
        let mut bits = [false; PURPOSES_CONSENT_OFFSET + PURPOSES + 16];
        for (i, bit) in bits.iter_mut().take(6).enumerate() {
            *bit = version & (1 << (5 - i)) != 0;
        }
        for &p in purposes {
            bits[PURPOSES_CONSENT_OFFSET + p - 1] = true;
        }
        let bytes: Vec<u8> =
            bits.chunks(8).map(|c| c.iter().fold(0u8, |b, &on| (b << 1) | u8::from(on))).collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_tcf_string_grants_only_with_every_personalisation_purpose() {
        let all = tcf(2, &[1, 2, 3, 4, 7]);
        assert_eq!(consent(Some("1"), Some(&all), None), Ok(ConsentState::Granted));
        // Other segments (disclosed vendors, publisher TC) follow a dot and are not read.
        assert_eq!(
            consent(Some("1"), Some(&format!("{all}.IBAgAAAgAIAwgAgAAAAEAAAACA")), None),
            Ok(ConsentState::Granted)
        );
        let no_profile = tcf(2, &[1, 2, 4]);
        assert_eq!(consent(Some("1"), Some(&no_profile), None), Ok(ConsentState::Denied));
        assert_eq!(consent(Some("1"), Some(&tcf(2, &[])), None), Ok(ConsentState::Denied));
    }

    #[test]
    fn gdpr_applying_without_a_string_is_a_refusal_and_not_applying_says_nothing() {
        assert_eq!(consent(Some("1"), None, None), Ok(ConsentState::Denied));
        assert_eq!(consent(Some("0"), None, None), Ok(ConsentState::Unspecified));
        assert_eq!(consent(None, None, None), Ok(ConsentState::Unspecified));
    }

    #[test]
    fn a_us_opt_out_of_sale_refuses_whatever_tcf_says() {
        let all = tcf(2, &[1, 3, 4]);
        assert_eq!(consent(None, None, Some("1YYN")), Ok(ConsentState::Denied));
        assert_eq!(consent(Some("1"), Some(&all), Some("1YYN")), Ok(ConsentState::Denied));
        assert_eq!(consent(None, None, Some("1YNN")), Ok(ConsentState::Unspecified));
        assert_eq!(consent(None, None, Some("1---")), Ok(ConsentState::Unspecified));
    }

    #[test]
    fn malformed_signals_name_their_parameter() {
        assert_eq!(consent(Some("yes"), None, None), Err(("gdpr", ConsentError::GdprFlag)));
        assert_eq!(consent(Some("1"), Some("!!!"), None), Err(("gdpr_consent", ConsentError::NotTcfV2)));
        let v1 = tcf(1, &[1, 3, 4]);
        assert_eq!(consent(Some("1"), Some(&v1), None), Err(("gdpr_consent", ConsentError::NotTcfV2)));
        assert_eq!(consent(Some("1"), Some("CPzHq4A"), None), Err(("gdpr_consent", ConsentError::NotTcfV2)));
        assert_eq!(consent(None, None, Some("2YNN")), Err(("us_privacy", ConsentError::NotUsPrivacy)));
        assert_eq!(consent(None, None, Some("1YN")), Err(("us_privacy", ConsentError::NotUsPrivacy)));
    }
}
