//! The gRPC side of authentication: the role each RPC needs is a property of its service — a
//! layer in front of the service (`guard` with the service's `RolePolicy`) refuses callers
//! without it before any handler runs, and a method a policy does not name needs the admin role
//! (fail closed). On the hot Decide/RecordEvents service the handler checks for itself
//! (`admit_decision`: no per-request extension, no allocation). Which token is whose lives in
//! `crate::auth`; explaining a decision shows every campaign's rules and scores, so it needs the
//! admin token too.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::auth::{Auth, AuthError, Caller, Role, bearer_of};

/// The role each method of one service needs, by method name (the last segment of the
/// path); a policy answers `Role::Admin` for any name it does not know.
pub type RolePolicy = fn(&str) -> Role;

/// Every method needs the admin role.
pub fn admin_only(_method: &str) -> Role {
    Role::Admin
}

/// The layer that makes a service's roles hold (`Auth::guard`).
#[derive(Clone, Debug)]
pub struct GuardLayer {
    auth: Auth,
    policy: RolePolicy,
}

/// A service behind its `GuardLayer`.
#[derive(Clone, Debug)]
pub struct Guarded<S> {
    inner: S,
    auth: Auth,
    policy: RolePolicy,
}

/// The guard of a service whose methods need the roles `policy` gives.
pub fn guard(auth: &Auth, policy: RolePolicy) -> GuardLayer {
    GuardLayer { auth: auth.clone(), policy }
}

/// Whether the caller of a decision RPC may call it (decision or admin token, or none needed):
/// the check of a guard whose policy says `Role::Decision`, for handlers that check for
/// themselves.
pub fn admit_decision(auth: &Auth, metadata: &MetadataMap) -> Result<Role, AuthError> {
    let token = bearer_of(metadata.get("authorization").map(|v| v.as_bytes()))?;
    auth.identify(token, false).map(|(role, _)| role)
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded { inner, auth: self.auth.clone(), policy: self.policy }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = GuardedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let admin_only = (self.policy)(super::method_of(request.uri())) == Role::Admin;
        let token = bearer_of(request.headers().get("authorization").map(|v| v.as_bytes()));
        match token.and_then(|token| self.auth.identify(token, admin_only)) {
            Ok((role, token_id)) => {
                request.extensions_mut().insert(Caller { role, token_id: Arc::clone(token_id) });
                GuardedCall::Call { future: self.inner.call(request) }
            }
            Err(error) => GuardedCall::Refused { response: Some(Status::from(error).into_http()) },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a guarded call: the service's, or the refusal.
    #[project = GuardedProj]
    pub enum GuardedCall<F> {
        Call { #[pin] future: F },
        Refused { response: Option<http::Response<tonic::body::Body>> },
    }
}

impl<F, E> std::future::Future for GuardedCall<F>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        match self.project() {
            GuardedProj::Call { future } => future.poll(cx),
            GuardedProj::Refused { response } => match response.take() {
                Some(response) => std::task::Poll::Ready(Ok(response)),
                None => std::task::Poll::Pending,
            },
        }
    }
}

/// The caller of a request that passed a guard.
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, AuthError> {
    // Every service is guarded, so a missing caller is a wiring bug: refuse rather than serve.
    request.extensions().get::<Caller>().ok_or(AuthError::Unguarded)
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer as _, Service as _};

    use super::*;

    /// Answers with the caller the guard let through.
    #[derive(Clone)]
    struct Echo;

    impl tower::Service<http::Request<()>> for Echo {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let mut response = http::Response::new(tonic::body::Body::empty());
            if let Some(caller) = request.extensions().get::<Caller>() {
                response.extensions_mut().insert(caller.clone());
            }
            std::future::ready(Ok(response))
        }
    }

    fn listener_roles(method: &str) -> Role {
        if method == "RecordPlays" { Role::Decision } else { Role::Admin }
    }

    /// Calls `method` through a guard of `policy`: the caller admitted, or the grpc-status.
    async fn call(
        auth: &Auth,
        policy: RolePolicy,
        method: &str,
        header: Option<&str>,
    ) -> Result<Caller, String> {
        let mut request = http::Request::new(());
        *request.uri_mut() = format!("/interlude.v1.ListenerService/{method}").parse().unwrap();
        if let Some(h) = header {
            request.headers_mut().insert("authorization", h.parse().unwrap());
        }
        let response = guard(auth, policy).layer(Echo).call(request).await.unwrap();
        match response.headers().get("grpc-status") {
            Some(status) => Err(status.to_str().unwrap().to_owned()),
            None => Ok(response.extensions().get::<Caller>().expect("caller set by the guard").clone()),
        }
    }

    #[tokio::test]
    async fn roles_follow_tokens_and_unknown_methods_need_the_admin_role() {
        let auth = Auth::new("admin-secret-0123456789", Some("decision-secret-0123456789"));
        let admin =
            call(&auth, admin_only, "GetListener", Some("Bearer admin-secret-0123456789")).await.unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert!(admin.token_id.starts_with("sha256:") && admin.token_id.len() == 15, "{}", admin.token_id);
        let player = Some("Bearer decision-secret-0123456789");
        assert_eq!(call(&auth, listener_roles, "RecordPlays", player).await.unwrap().role, Role::Decision);
        let as_admin = Some("Bearer admin-secret-0123456789");
        assert_eq!(call(&auth, listener_roles, "RecordPlays", as_admin).await.unwrap().role, Role::Admin);
        let unauthenticated = "16";
        for (policy, method, header) in [
            (admin_only as RolePolicy, "GetListener", None),
            (admin_only, "GetListener", Some("Bearer decision-secret-0123456789")),
            (admin_only, "GetListener", Some("Bearer admin-secret-012345678")),
            (admin_only, "GetListener", Some("admin-secret-0123456789")),
            (listener_roles, "RecordPlays", None),
            (listener_roles, "RecordPlays", Some("Bearer nope")),
            (listener_roles, "RecordPlays", Some("Bearer ")),
            // A method the policy does not name (a new RPC nobody classified) fails closed.
            (listener_roles, "SomeNewRpc", Some("Bearer decision-secret-0123456789")),
        ] {
            assert_eq!(
                call(&auth, policy, method, header).await.unwrap_err(),
                unauthenticated,
                "{method} {header:?}"
            );
        }
    }

    #[tokio::test]
    async fn without_a_decision_token_the_decision_rpcs_are_open_but_admin_is_not() {
        let auth = Auth::new("admin-secret-0123456789", None);
        let open = call(&auth, listener_roles, "RecordPlays", None).await.unwrap();
        assert_eq!(open.token_id.as_ref(), "loopback");
        assert_eq!(call(&auth, admin_only, "GetListener", None).await.unwrap_err(), "16");
    }
}
