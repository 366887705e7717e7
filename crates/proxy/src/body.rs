//! Body types of the data plane, and the wrapper that observes bytes as they pass.
//!
//! Bodies are never collected: [`Observed`] counts each frame on its way through and
//! keeps `size_hint` and end-of-stream exactly as the inner body reports them.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// What the gateway answers with: the upstream's body streamed through, or its own.
pub type ResponseBody = Observed<Either<Incoming, Full<Bytes>>, crate::access_log::AccessLog>;

/// A request body on its way upstream: the client's stream, or bytes a stage had to read
/// (a signed callback's form body).
pub type RequestBody = Either<Incoming, Full<Bytes>>;

/// What the gateway sends upstream, observed for the access log.
pub type UpstreamBody = Observed<RequestBody, Arc<BodyStats>>;

/// Someone who wants to know how many bytes passed, and whether the body failed.
pub trait Observer {
    fn on_data(&mut self, bytes: u64);
    fn on_error(&mut self) {}
}

/// What passed through a request body, shared with the access log and the forward stage.
#[derive(Debug, Default)]
pub struct BodyStats {
    bytes: AtomicU64,
    failed: AtomicBool,
}

impl BodyStats {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether reading the client's body failed (bad chunked framing, a client gone):
    /// the client's fault, not the upstream's.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Observer for Arc<BodyStats> {
    fn on_data(&mut self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn on_error(&mut self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// A body that reports every data frame to its observer and is otherwise transparent.
#[derive(Debug)]
pub struct Observed<B, O> {
    inner: B,
    observer: O,
}

impl<B, O> Observed<B, O> {
    pub fn new(inner: B, observer: O) -> Self {
        Observed { inner, observer }
    }
}

impl<B, O> Body for Observed<B, O>
where
    B: Body<Data = Bytes> + Unpin,
    O: Observer + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.observer.on_data(data.len() as u64);
                }
            }
            Poll::Ready(Some(Err(_))) => this.observer.on_error(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete body the gateway made itself.
pub fn full(bytes: impl Into<Bytes>) -> Either<Incoming, Full<Bytes>> {
    Either::Right(Full::new(bytes.into()))
}
