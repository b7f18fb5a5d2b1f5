//! Admission: a server-wide bound on the decision RPCs in flight. Over it, a call is answered
//! RESOURCE_EXHAUSTED at once, before it is decoded or costs a decision.
//!
//! The per-connection limit alone cannot bound the server: it allows as many calls as there are
//! connections times the stream limit, and those queue on the one runtime thread, so under
//! overload every admitted call waits behind thousands and answers late for everyone. A global
//! bound keeps the queue short (in-flight × cost per call, about 10 ms at the default), so the
//! calls it admits answer within their deadline and the rest learn at once to back off.
//! Health, reflection and the admin services are not counted: a load balancer's probe must see
//! a busy server as busy, not as dead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// Wraps a service so that at most `max_in_flight` of its calls run at once, across every
/// connection; the rest are refused.
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
}

impl AdmissionLayer {
    pub fn new(max_in_flight: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_in_flight)) }
    }

    /// The bound itself, for the other edges that decide (VAST): one server, one bound.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission { inner, permits: self.permits.clone() }
    }
}

/// See `AdmissionLayer`.
#[derive(Clone, Debug)]
pub struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Admission<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Admitted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Admitted::Running { future: self.inner.call(request), permit: Some(permit) },
            Err(_) => {
                crate::telemetry::record_shed();
                Admitted::Refused { response: Some(overloaded()) }
            }
        }
    }
}

/// The refusal: a trailers-only gRPC response.
fn overloaded() -> http::Response<tonic::body::Body> {
    tonic::Status::resource_exhausted("server overloaded: too many calls in flight; retry with backoff")
        .into_http()
}

pin_project_lite::pin_project! {
    /// An admitted call, holding its permit until it answers, or a refusal.
    #[project = AdmittedProj]
    pub enum Admitted<F> {
        Running { #[pin] future: F, permit: Option<OwnedSemaphorePermit> },
        Refused { response: Option<http::Response<tonic::body::Body>> },
    }
}

impl<F, E> Future for Admitted<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            AdmittedProj::Running { future, permit } => {
                let output = std::task::ready!(future.poll(cx));
                // The handler is done: the next call may start while this response is written.
                drop(permit.take());
                Poll::Ready(output)
            }
            AdmittedProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A service whose calls finish when their request's gate opens.
    #[derive(Clone)]
    struct Gated;

    type Gate = Arc<Semaphore>;

    impl Service<http::Request<Gate>> for Gated {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Gate>) -> Self::Future {
            let gate = request.into_body();
            Box::pin(async move {
                let _open = gate.acquire().await;
                Ok(http::Response::new(tonic::body::Body::empty()))
            })
        }
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<&str> {
        response.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn over_the_bound_a_call_is_refused_at_once_and_a_finished_call_frees_its_place() {
        let mut service = AdmissionLayer::new(2).layer(Gated);
        let gates: Vec<Gate> = (0..4).map(|_| Arc::new(Semaphore::new(0))).collect();
        let call = |service: &mut Admission<Gated>, i: usize| {
            tokio::spawn(service.call(http::Request::new(gates[i].clone())))
        };
        // Permits are taken in `call`: two calls hold them, the third finds none.
        let first = call(&mut service, 0);
        let second = call(&mut service, 1);
        let refused = call(&mut service, 2).await.unwrap().unwrap();
        assert_eq!(grpc_status(&refused), Some("8"), "RESOURCE_EXHAUSTED");
        // The first answers; its place goes to the next call.
        gates[0].add_permits(1);
        assert_eq!(grpc_status(&first.await.unwrap().unwrap()), None, "the admitted call ran");
        let fourth = call(&mut service, 3);
        gates[1].add_permits(1);
        gates[3].add_permits(1);
        for admitted in [second, fourth] {
            assert_eq!(grpc_status(&admitted.await.unwrap().unwrap()), None);
        }
    }
}
