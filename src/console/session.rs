//! Who may see the console: whoever shows the admin token, as a bearer header (scripts, curl)
//! or once through the login form, which sets a session cookie (browsers).
//!
//! The cookie never holds the token: it is `<expiry ms>.<HMAC-SHA256(key, expiry) in hex>`,
//! with a key made when the server starts (a restart ends every session), `HttpOnly` (no
//! script reads it), `SameSite=Strict` (no other site's page sends it, so no cross-site request
//! is ever authenticated) and `Secure` when the console is reached over https.

use hmac::{Hmac, Mac as _};
use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use rand::RngCore as _;
use sha2::Sha256;

use crate::auth::Auth;
use crate::domain::UnixMillis;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "interlude_console";
/// How long a login lasts.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

/// Checks and issues console sessions. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    auth: Auth,
    key: [u8; 32],
    secure: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("secure", &self.secure).finish_non_exhaustive()
    }
}

// === impl Sessions ===

impl Sessions {
    /// Sessions of admins of `auth`, with a fresh key; `secure` marks cookies https-only.
    pub fn new(auth: Auth, secure: bool) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self { auth, key, secure }
    }

    /// Whether the request comes from an admin: the admin token as a bearer header, or a
    /// session cookie this server issued that has not expired.
    pub fn admits(&self, headers: &HeaderMap, now: UnixMillis) -> bool {
        if let Some(token) = headers.get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) {
            return self.auth.is_admin_token(token);
        }
        cookies(headers).any(|(name, value)| name == COOKIE_NAME && self.valid(value, now))
    }

    /// Whether `token` is the admin token (the login form's check).
    pub fn is_admin_token(&self, token: &str) -> bool {
        self.auth.is_admin_token(token.as_bytes())
    }

    /// The `Set-Cookie` value of a session starting at `now`.
    pub fn issue(&self, now: UnixMillis) -> String {
        let expires = now.0 + SESSION_MS;
        let value = format!("{expires}.{}", hex::encode(self.mac(expires)));
        self.cookie(&value, SESSION_MS / 1000)
    }

    /// The `Set-Cookie` value that ends a session.
    pub fn clear(&self) -> String {
        self.cookie("", 0)
    }

    fn cookie(&self, value: &str, max_age_secs: i64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE_NAME}={value}; Path=/console; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
        )
    }

    fn valid(&self, value: &str, now: UnixMillis) -> bool {
        let Some((expires, mac)) = value.split_once('.') else { return false };
        let (Ok(expires), Ok(mac)) = (expires.parse::<i64>(), hex::decode(mac)) else { return false };
        if expires <= now.0 {
            return false;
        }
        let mut check = self.hmac();
        check.update(&expires.to_be_bytes());
        check.verify_slice(&mac).is_ok()
    }

    fn mac(&self, expires: i64) -> Vec<u8> {
        let mut mac = self.hmac();
        mac.update(&expires.to_be_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC accepts a key of any length, so this cannot fail.
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }
}

/// The (name, value) pairs of every `Cookie` header.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: http::header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_admin_token_or_an_unexpired_issued_cookie_admits_and_nothing_else_does() {
        let sessions = Sessions::new(Auth::new("admin-token-0123456789", Some("decision-token-0123")), false);
        let now = UnixMillis(1_800_000_000_000);
        assert!(!sessions.admits(&HeaderMap::new(), now));
        assert!(sessions.admits(&with(AUTHORIZATION, "Bearer admin-token-0123456789"), now));
        assert!(!sessions.admits(&with(AUTHORIZATION, "Bearer decision-token-0123"), now), "decision role");

        let set_cookie = sessions.issue(now);
        assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
        assert!(!set_cookie.contains("admin-token"), "the cookie never holds the token");
        let pair = set_cookie.split(';').next().unwrap();
        assert!(sessions.admits(&with(COOKIE, &format!("theme=dark; {pair}")), now));
        assert!(!sessions.admits(&with(COOKIE, pair), UnixMillis(now.0 + SESSION_MS)), "expired");

        let (name, value) = pair.split_once('=').unwrap();
        let (expires, mac) = value.split_once('.').unwrap();
        let extended = format!("{name}={}.{mac}", expires.parse::<i64>().unwrap() + 1);
        assert!(!sessions.admits(&with(COOKIE, &extended), now), "a changed expiry breaks the MAC");
        let other = Sessions::new(Auth::new("admin-token-0123456789", None), false);
        assert!(!other.admits(&with(COOKIE, pair), now), "another process's key");
    }
}
