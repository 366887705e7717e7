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

/// What the gateway sends upstream: capped at the route's upload limit, observed for
/// the access log.
pub type UpstreamBody = Observed<Capped<RequestBody>, Arc<BodyStats>>;

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
    over_limit: AtomicBool,
}

impl BodyStats {
    /// Whether the body was cut off for passing the route's upload limit.
    pub fn over_limit(&self) -> bool {
        self.over_limit.load(Ordering::Relaxed)
    }

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

/// The route's upload limit was passed.
#[derive(Debug)]
pub struct LimitExceeded;

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body passed the route's upload limit")
    }
}

impl std::error::Error for LimitExceeded {}

/// A body that fails as soon as more than `limit` bytes have passed, so a chunked
/// upload cannot go beyond the route's limit (a declared `Content-Length` over it is
/// refused before anything is sent).
#[derive(Debug)]
pub struct Capped<B> {
    inner: B,
    limit: Option<u64>,
    seen: u64,
    stats: Arc<BodyStats>,
}

impl<B> Capped<B> {
    pub fn new(inner: B, limit: Option<u64>, stats: Arc<BodyStats>) -> Self {
        Capped {
            inner,
            limit,
            seen: 0,
            stats,
        }
    }
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.limit.is_some_and(|limit| this.seen > limit) {
                        this.stats.over_limit.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(LimitExceeded))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
