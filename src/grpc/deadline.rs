//! The server's own deadline for unary RPCs (`request_timeout_secs`), as a layer per service:
//! streaming methods are exempt, since a long stream is not a slow call — they have an idle
//! timeout between messages instead (`stream_idle_timeout_secs`, in their handlers). A
//! client's shorter `grpc-timeout` is honoured by tonic for every method.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;

/// Whether a method (the last segment of its path) streams, and so is exempt.
pub type Streams = fn(&str) -> bool;

/// No method of the service streams.
pub fn unary_only(_method: &str) -> bool {
    false
}

/// Ends a unary call of the wrapped service after `timeout`.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    timeout: Duration,
    streams: Streams,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration, streams: Streams) -> Self {
        Self { timeout, streams }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, layer: *self }
    }
}

/// See `DeadlineLayer`.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Deadline<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Bounded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = (!(self.layer.streams)(super::method_of(request.uri()))).then_some(self.layer.timeout);
        Bounded {
            future: self.inner.call(request),
            sleep: timeout.map(tokio::time::sleep),
            timeout: timeout.unwrap_or_default(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call that answers DEADLINE_EXCEEDED if it has not answered by its deadline.
    pub struct Bounded<F> {
        #[pin]
        future: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        timeout: Duration,
    }
}

impl<F, E> Future for Bounded<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(output);
        }
        let expired = this.sleep.as_pin_mut().is_some_and(|sleep| sleep.poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        let status = Status::deadline_exceeded(format!(
            "the server's request timeout ({} s) elapsed",
            this.timeout.as_secs_f64()
        ));
        Poll::Ready(Ok(status.into_http()))
    }
}
