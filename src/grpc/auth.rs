//! Who may call what: bearer tokens checked per service by a tonic interceptor, or, on the
//! hot Decide/RecordEvents service, by the handler itself (`Auth::admit_decision`: no
//! interceptor round trip, no allocation per request).
//!
//! Admin RPCs (CampaignService, ListenerService) need the admin token; the decision RPCs
//! (Decide, RecordEvents, and RecordPlays, which the player backend sends) need the decision
//! token, or the admin token. Tokens are compared as SHA-256 digests in constant time, and
//! known in logs only by a short fingerprint of that digest (the audit log's "who").

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

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

/// The authenticated caller, put in each request's extensions by the interceptor.
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

/// The interceptor of one service: admits the roles it lists.
#[derive(Clone, Debug)]
pub struct Guard {
    auth: Auth,
    admin_only: bool,
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

    /// The guard of the admin services.
    pub fn admin(&self) -> Guard {
        Guard { auth: self.clone(), admin_only: true }
    }

    /// The guard of the services the player backend calls.
    pub fn decision(&self) -> Guard {
        Guard { auth: self.clone(), admin_only: false }
    }

    /// Whether the caller of a decision RPC may call it (decision or admin token, or none
    /// needed): the check of `decision()`'s guard, for handlers that check for themselves.
    pub fn admit_decision(&self, metadata: &MetadataMap) -> Result<Role, AuthError> {
        self.identify(bearer(metadata)?, false).map(|(role, _)| role)
    }

    /// The role and token id of the caller presenting `token` (None: no token), if any.
    fn identify(&self, token: Option<&[u8]>, admin_only: bool) -> Result<(Role, &Arc<str>), AuthError> {
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

/// The bearer token of a request, if it sent an authorization header.
fn bearer(metadata: &MetadataMap) -> Result<Option<&[u8]>, AuthError> {
    match metadata.get("authorization") {
        None => Ok(None),
        Some(value) => {
            let token = value.as_bytes().strip_prefix(b"Bearer ").filter(|t| !t.is_empty());
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

impl Interceptor for Guard {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let (role, token_id) = self.auth.identify(bearer(request.metadata())?, self.admin_only)?;
        let caller = Caller { role, token_id: Arc::clone(token_id) };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller of a request that passed a guard.
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, AuthError> {
    // Every service is guarded, so a missing caller is a wiring bug: refuse rather than serve.
    request.extensions().get::<Caller>().ok_or(AuthError::Unguarded)
}

/// Refuses a decision-token caller on an admin RPC of a service the player backend shares.
pub fn require_admin<T>(request: &Request<T>) -> Result<&Caller, AuthError> {
    let caller = caller(request)?;
    match caller.role {
        Role::Admin => Ok(caller),
        Role::Decision => Err(AuthError::NotAdminToken),
    }
}

/// Client side: adds `authorization: Bearer <token>` to every request (the load harness, the
/// tests). None sends no header.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    /// A bearer of `token`; an error if it cannot be a header value.
    pub fn new(token: Option<&str>) -> Result<Self, tonic::metadata::errors::InvalidMetadataValue> {
        token.map(|t| format!("Bearer {t}").parse()).transpose().map(Self)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
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

    fn call(guard: &Guard, header: Option<&str>) -> Result<Caller, Status> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        let request = guard.clone().call(request)?;
        Ok(request.extensions().get::<Caller>().unwrap().clone())
    }

    #[test]
    fn roles_follow_tokens() {
        let auth = Auth::new("admin-secret-0123456789", Some("decision-secret-0123456789"));
        let admin = call(&auth.admin(), Some("Bearer admin-secret-0123456789")).unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert!(admin.token_id.starts_with("sha256:") && admin.token_id.len() == 15, "{}", admin.token_id);
        assert_eq!(
            call(&auth.decision(), Some("Bearer decision-secret-0123456789")).unwrap().role,
            Role::Decision
        );
        assert_eq!(call(&auth.decision(), Some("Bearer admin-secret-0123456789")).unwrap().role, Role::Admin);
        for (guard, header) in [
            (auth.admin(), None),
            (auth.admin(), Some("Bearer decision-secret-0123456789")),
            (auth.admin(), Some("Bearer admin-secret-012345678")),
            (auth.admin(), Some("admin-secret-0123456789")),
            (auth.decision(), None),
            (auth.decision(), Some("Bearer nope")),
            (auth.decision(), Some("Bearer ")),
        ] {
            let status = call(&guard, header).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
        }
    }

    #[test]
    fn without_a_decision_token_the_decision_rpcs_are_open_but_admin_is_not() {
        let auth = Auth::new("admin-secret-0123456789", None);
        assert_eq!(call(&auth.decision(), None).unwrap().token_id.as_ref(), "loopback");
        assert_eq!(call(&auth.admin(), None).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
