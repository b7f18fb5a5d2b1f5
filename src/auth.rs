//! Credentials: which token is whose, and what it allows. Every edge that serves callers checks
//! tokens here — the gRPC services through their guards (`grpc::auth`), the ad-ops console at
//! its login — so this module knows no transport.
//!
//! Admin RPCs need the admin token; the decision RPCs (Decide, RecordEvents, and RecordPlays,
//! which the player backend sends) need the decision token, or the admin token. Tokens are
//! compared as SHA-256 digests in constant time, and known in logs only by a short fingerprint
//! of that digest (the audit log's "who").

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The tracing target of the audit log: every admin write, with who (`token_id`), what, and
/// when (the log line's time).
pub const AUDIT: &str = "interlude::audit";

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this RPC needs the admin token: send 'authorization: Bearer <admin_token>'")]
    AdminTokenMissing,
    #[error("the bearer token is not the admin token")]
    NotAdminToken,
    #[error("this RPC needs the decision token: send 'authorization: Bearer <decision_token>'")]
    DecisionTokenMissing,
    #[error("the bearer token is neither the decision nor the admin token")]
    NotDecisionToken,
    #[error("explain shows every campaign's rules and scores: it needs the admin token")]
    ExplainNeedsAdmin,
    #[error("authorization must be 'Bearer <token>'")]
    Malformed,
    /// A handler found no caller: a service was added without its guard.
    #[error("request was not authenticated")]
    Unguarded,
}

/// What a caller's token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Decision,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    pub role: Role,
    /// Fingerprint of the token ("sha256:" + 8 hex digits), or "loopback" for the open
    /// decision RPCs of a server with no decision token.
    pub token_id: Arc<str>,
}

/// The configured credentials. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    admin: Credential,
    /// None = the decision RPCs are open (the config allows that on loopback only).
    decision: Option<Credential>,
    /// The `token_id` of callers of open decision RPCs.
    loopback: Arc<str>,
}

#[derive(Debug)]
struct Credential {
    digest: [u8; 32],
    id: Arc<str>,
}

impl Auth {
    /// Credentials from the admin token and the optional decision token.
    pub fn new(admin_token: &str, decision_token: Option<&str>) -> Self {
        Self {
            inner: Arc::new(Inner {
                admin: Credential::new(admin_token),
                decision: decision_token.map(Credential::new),
                loopback: "loopback".into(),
            }),
        }
    }

    /// Whether `token` is the admin token (compared in constant time): the check of the edges
    /// other than gRPC that serve admins, such as the ad-ops console.
    pub fn is_admin_token(&self, token: &[u8]) -> bool {
        self.identify(Some(token), true).is_ok()
    }

    /// The role and token id of the caller presenting `token` (None: no token), when it may
    /// call a method open to the decision role (`admin_only` false) or to admins only.
    pub fn identify(&self, token: Option<&[u8]>, admin_only: bool) -> Result<(Role, &Arc<str>), AuthError> {
        let inner = &self.inner;
        if token.is_none() && !admin_only && inner.decision.is_none() {
            return Ok((Role::Decision, &inner.loopback));
        }
        let digest: Option<[u8; 32]> = token.map(|t| Sha256::digest(t).into());
        let matches = |c: &Credential| digest.is_some_and(|d| bool::from(d.ct_eq(&c.digest)));
        if matches(&inner.admin) {
            return Ok((Role::Admin, &inner.admin.id));
        }
        if !admin_only {
            match &inner.decision {
                Some(c) if matches(c) => return Ok((Role::Decision, &c.id)),
                None => return Ok((Role::Decision, &inner.loopback)),
                Some(_) => {}
            }
        }
        Err(match (token, admin_only) {
            (None, true) => AuthError::AdminTokenMissing,
            (None, false) => AuthError::DecisionTokenMissing,
            (Some(_), true) => AuthError::NotAdminToken,
            (Some(_), false) => AuthError::NotDecisionToken,
        })
    }
}

/// The token of an `authorization` header's value (None: no header).
pub fn bearer_of(value: Option<&[u8]>) -> Result<Option<&[u8]>, AuthError> {
    match value {
        None => Ok(None),
        Some(value) => {
            let token = value.strip_prefix(b"Bearer ").filter(|t| !t.is_empty());
            token.map(Some).ok_or(AuthError::Malformed)
        }
    }
}

impl Credential {
    fn new(token: &str) -> Self {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        Self { digest, id: format!("sha256:{}", hex::encode(&digest[..4])).into() }
    }
}

/// A random admin token for a server started without one (printed once in its log).
pub fn generate_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &[u8] = b"admin-secret-0123456789";
    const PLAYER: &[u8] = b"decision-secret-0123456789";

    #[test]
    fn each_token_has_its_role_and_a_fingerprint_for_the_logs() {
        let auth = Auth::new("admin-secret-0123456789", Some("decision-secret-0123456789"));
        let (role, id) = auth.identify(Some(ADMIN), true).unwrap();
        assert_eq!(role, Role::Admin);
        assert!(id.starts_with("sha256:") && id.len() == 15, "{id}");
        assert_eq!(auth.identify(Some(PLAYER), false).unwrap().0, Role::Decision);
        assert_eq!(auth.identify(Some(ADMIN), false).unwrap().0, Role::Admin, "admins may decide too");
        assert_eq!(auth.identify(Some(PLAYER), true).unwrap_err(), AuthError::NotAdminToken);
        assert_eq!(auth.identify(None, false).unwrap_err(), AuthError::DecisionTokenMissing);
        assert_eq!(
            auth.identify(Some(b"admin-secret-012345678"), false).unwrap_err(),
            AuthError::NotDecisionToken
        );
        assert!(auth.is_admin_token(ADMIN));
        assert!(!auth.is_admin_token(PLAYER));
    }

    #[test]
    fn without_a_decision_token_only_the_decision_role_is_open() {
        let auth = Auth::new("admin-secret-0123456789", None);
        assert_eq!(auth.identify(None, false).unwrap().1.as_ref(), "loopback");
        assert_eq!(auth.identify(Some(b"anything"), false).unwrap().1.as_ref(), "loopback");
        assert_eq!(auth.identify(None, true).unwrap_err(), AuthError::AdminTokenMissing);
    }

    #[test]
    fn a_header_must_say_bearer_and_a_token() {
        assert_eq!(bearer_of(None), Ok(None));
        assert_eq!(bearer_of(Some(b"Bearer abc")), Ok(Some(&b"abc"[..])));
        for bad in [&b"Bearer "[..], b"abc", b"bearer abc", b"Basic abc"] {
            assert_eq!(bearer_of(Some(bad)), Err(AuthError::Malformed), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn generated_tokens_are_long_and_differ() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
    }
}
