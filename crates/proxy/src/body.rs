//! Body types of the data plane: what the gateway holds, what it streams upstream, and
//! the limits on both.
//!
//! - A body the gateway must read whole (a JSON or form rewrite, a signed callback, a
//!   login's username) is read by [`hold`]: bounded in size, in time (the whole body
//!   must keep up `request_body_min_rate` after `request_body_timeout`, and no wait for
//!   more may last longer than that timeout: a trickling or stalled client gets 408), and
//!   in memory across all requests ([`BodyBudget`]: past it, 503). The result is a
//!   [`Held`] body, whose bytes count against the budget until it is dropped. Bodies
//!   read before anyone is identified (signed callbacks; logins, refreshes and logouts)
//!   may each take only a quarter of it ([`Pool`]): anyone can send those, and a flood
//!   of fake callbacks held for their whole timeout must not leave identified callers'
//!   rewrites with nothing but 503.
//! - Every other body streams upstream through [`Outbound`], never collected: it counts
//!   bytes for the access log, cuts the body off at the route's upload limit, applies
//!   the same deadline (a slow client gets 408 and releases its upstream connection),
//!   and lets [`crate::multipart`] watch multipart bodies. `size_hint` and end-of-stream
//!   are kept exactly as the inner body reports them.
//! - [`Observed`] counts response bytes for the access log.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::time::{Instant, Sleep};
use tollgate_policy::snapshot::BodyLimits;

use crate::body_digest::{BodyDigest, BodyHasher};
use crate::errors::{GatewayError, LimitError, RequestError};
use crate::multipart::{Refusal, Scanner};
use crate::part::{Build, Part};

/// A request body on its way through the stages: the client's stream, or bytes a stage
/// had to read whole.
pub type RequestBody = Either<Incoming, Held>;

/// A complete body the gateway made itself.
pub fn full(bytes: impl Into<Bytes>) -> Either<Incoming, Full<Bytes>> {
    Either::Right(Full::new(bytes.into()))
}

/// The memory all held request bodies may take at once, in this process. Lives across
/// reloads; a reload changes only the cap.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicUsize,
    /// What each pool holds (indexed by [`Pool`]); the anonymous ones are capped.
    pools: [AtomicUsize; 3],
    max: AtomicUsize,
}

/// Whose body is read, for the budget: anonymous senders share a capped part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// A caller the gateway has identified (a JSON or form rewrite, a preview).
    Identified = 0,
    /// A callback, read before its signature can be checked.
    Callback = 1,
    /// A login, refresh or logout: read before anyone is identified.
    Session = 2,
}

/// The share of the budget one anonymous pool may hold: 1 in this many bytes.
const ANONYMOUS_SHARE: usize = 4;

/// The runtime part: one budget for the process, its cap set by each snapshot.
pub struct Bodies {
    budget: Arc<BodyBudget>,
}

impl Bodies {
    /// How a request of this snapshot reads bodies it must hold.
    pub fn reading(&self, limits: BodyLimits) -> Reading {
        Reading {
            limits,
            budget: Arc::clone(&self.budget),
            pool: Pool::Identified,
        }
    }
}

impl Part for Bodies {
    fn build(build: &Build, previous: Option<&Self>) -> Self {
        let max = build.snapshot.server.bodies.max_buffered;
        let budget = match previous {
            Some(p) => {
                p.budget.max.store(max, Ordering::Relaxed);
                Arc::clone(&p.budget)
            }
            None => BodyBudget::new(max),
        };
        Bodies { budget }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "tollgate_request_body_buffered",
            "Memory held by request bodies the gateway reads whole (capped by server.max_buffered_body_bytes)",
            Unit::Bytes,
            ConstGauge::new(i64::try_from(self.budget.held()).unwrap_or(i64::MAX)),
        );
    }
}

impl BodyBudget {
    pub fn new(max: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            max: AtomicUsize::new(max),
            ..BodyBudget::default()
        })
    }

    /// Bytes held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn take(&self, pool: Pool, bytes: usize) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        let fits = |limit: usize| {
            move |held: usize| held.checked_add(bytes).filter(|total| *total <= limit)
        };
        let share = &self.pools[pool as usize];
        if pool != Pool::Identified
            && share
                .fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    fits(max / ANONYMOUS_SHARE),
                )
                .is_err()
        {
            return false;
        }
        if pool == Pool::Identified {
            share.fetch_add(bytes, Ordering::AcqRel);
        }
        if self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits(max))
            .is_err()
        {
            share.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn give_back(&self, pool: Pool, bytes: usize) {
        self.pools[pool as usize].fetch_sub(bytes, Ordering::AcqRel);
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Memory taken from the budget, given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    budget: Arc<BodyBudget>,
    pool: Pool,
    bytes: usize,
}

impl Ticket {
    fn grow(&mut self, more: usize) -> Result<(), GatewayError> {
        if !self.budget.take(self.pool, more) {
            return Err(LimitError::Overloaded.into());
        }
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.budget.give_back(self.pool, self.bytes);
    }
}

/// A body the gateway read whole; its memory is accounted for until it is dropped.
#[derive(Debug)]
pub struct Held {
    data: Option<Bytes>,
    _ticket: Option<Ticket>,
}

impl Held {
    pub fn bytes(&self) -> Bytes {
        self.data.clone().unwrap_or_default()
    }

    /// The same memory, with other bytes (a rewrite of them).
    pub fn replaced(self, data: Bytes) -> Held {
        Held {
            data: Some(data),
            _ticket: self._ticket,
        }
    }
}

impl Body for Held {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(
            self.get_mut()
                .data
                .take()
                .filter(|d| !d.is_empty())
                .map(|d| Ok(Frame::data(d))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(Bytes::is_empty)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// What reading a held body needs: the time limits and the memory budget.
#[derive(Clone)]
pub struct Reading {
    pub limits: BodyLimits,
    pub budget: Arc<BodyBudget>,
    /// Whose body it is, for the budget.
    pub pool: Pool,
}

impl Reading {
    /// The same, reading for `pool` (an anonymous sender's body).
    pub fn for_pool(&self, pool: Pool) -> Reading {
        Reading {
            pool,
            ..self.clone()
        }
    }
}

/// Reads a whole body of at most `limit` bytes: 413 at once when `Content-Length` says
/// more, 408 when it arrives too slowly, 503 when the gateway already holds too much.
/// A body some stage already read is returned as it is.
pub async fn hold(
    parts: &Parts,
    body: RequestBody,
    limit: u64,
    reading: &Reading,
) -> Result<Held, GatewayError> {
    let mut body = match body {
        Either::Right(held) => return Ok(held),
        Either::Left(incoming) => incoming,
    };
    if declared_length(parts).is_some_and(|n| n > limit) {
        return Err(RequestError::PayloadTooLarge { limit }.into());
    }
    let limit_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    let started = Instant::now();
    let mut ticket = Ticket {
        budget: Arc::clone(&reading.budget),
        pool: reading.pool,
        bytes: 0,
    };
    let mut data: Vec<u8> = Vec::new();
    loop {
        // The body as a whole must keep up the minimum rate, and no single wait may
        // last longer than the timeout (a fast start earns no right to stall).
        let deadline = (started + reading.limits.allowance(data.len() as u64))
            .min(Instant::now() + reading.limits.timeout);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(RequestError::BodyTooSlow.into()),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(RequestError::BodyInvalid.into()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let needed = data.len() + chunk.len();
        if needed > limit_bytes {
            return Err(RequestError::PayloadTooLarge { limit }.into());
        }
        if needed > data.capacity() {
            // Grow geometrically, never past the limit, and account for what is
            // allocated; near the budget's cap, grow only as much as needed.
            let doubled = needed.max(data.capacity() * 2).max(4096).min(limit_bytes);
            let target = if ticket.grow(doubled - data.capacity()).is_ok() {
                doubled
            } else {
                ticket.grow(needed - data.capacity())?;
                needed
            };
            data.reserve_exact(target - data.len());
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Held {
        data: Some(Bytes::from(data)),
        _ticket: Some(ticket),
    })
}

/// The request's declared `Content-Length`, if it has a valid one.
pub fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::headers::whole_number)
}

/// Microseconds since the first time anyone asked: a clock for atomics.
fn micros_now() -> u64 {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    let base = *BASE.get_or_init(std::time::Instant::now);
    base.elapsed().as_micros() as u64 + 1
}

/// Why a streamed request body was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CutOff {
    None = 0,
    /// Passed the route's upload limit.
    OverLimit = 1,
    /// Arrived too slowly.
    TooSlow = 2,
    /// The client's stream failed (bad chunked framing, the client went away).
    Failed = 3,
    /// A multipart field named another client.
    ClientIdMismatch = 4,
    /// A multipart part could not be read.
    MultipartInvalid = 5,
    /// A multipart field named another method (`_method`).
    MethodOverride = 6,
}

/// What passed through a request body, shared with the access log and the forward stage.
#[derive(Debug, Default)]
pub struct BodyStats {
    bytes: AtomicU64,
    cut_off: AtomicU8,
    /// When a frame last went upstream (micros, see [`micros_now`]); 0: never.
    last_activity: AtomicU64,
    /// The whole body has gone upstream.
    finished: std::sync::atomic::AtomicBool,
}

impl BodyStats {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Why the body was cut off, if it was: the client's doing, not the upstream's.
    pub fn cut_off(&self) -> CutOff {
        match self.cut_off.load(Ordering::Relaxed) {
            1 => CutOff::OverLimit,
            2 => CutOff::TooSlow,
            3 => CutOff::Failed,
            4 => CutOff::ClientIdMismatch,
            5 => CutOff::MultipartInvalid,
            6 => CutOff::MethodOverride,
            _ => CutOff::None,
        }
    }

    fn cut(&self, why: CutOff) {
        let _ = self.cut_off.compare_exchange(
            CutOff::None as u8,
            why as u8,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn touch(&self) {
        self.last_activity.store(micros_now(), Ordering::Relaxed);
    }

    /// How long ago the body last moved (or the whole body was sent); `None` if it
    /// never did.
    pub fn idle_for(&self) -> Option<Duration> {
        match self.last_activity.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_micros(micros_now().saturating_sub(at))),
        }
    }

    /// The whole body has gone upstream: the response timeout runs from now.
    fn finish(&self) {
        self.touch();
        self.finished.store(true, Ordering::Relaxed);
    }

    /// Whether the whole body has gone upstream.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }
}

/// Someone who wants to know how many bytes passed.
pub trait Observer {
    fn on_data(&mut self, bytes: u64);
}

/// The error a cut-off body reports to the upstream connection (which is then closed).
#[derive(Debug)]
pub struct BodyCutOff(pub CutOff);

impl std::fmt::Display for BodyCutOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body was cut off: {:?}", self.0)
    }
}

impl std::error::Error for BodyCutOff {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body sent upstream: see the module docs.
pub struct Outbound {
    inner: RequestBody,
    stats: Arc<BodyStats>,
    limit: Option<u64>,
    seen: u64,
    /// For a client's stream: how long the client has kept us waiting.
    pacing: Option<Pacing>,
    scanner: Option<Scanner>,
    ready: VecDeque<Bytes>,
    done: bool,
    /// The client's bytes hashed as they pass, for an idempotent request's retries
    /// (see [`crate::reservation::KeyClaim::digest_streamed_body`]).
    digest: Option<(BodyHasher, BodyDigest)>,
}

impl Outbound {
    pub fn new(
        inner: RequestBody,
        limit: Option<u64>,
        limits: BodyLimits,
        scanner: Option<Scanner>,
        stats: Arc<BodyStats>,
    ) -> Outbound {
        // Only a client's stream that still has bytes to come needs a deadline.
        let pacing = (matches!(inner, Either::Left(_)) && !inner.is_end_stream()).then(|| Pacing {
            limits,
            waited: Duration::ZERO,
            waiting_since: None,
            sleep: Box::pin(tokio::time::sleep(limits.timeout)),
        });
        if inner.is_end_stream() {
            stats.finish();
        }
        Outbound {
            inner,
            stats,
            limit,
            seen: 0,
            pacing,
            scanner,
            ready: VecDeque::new(),
            done: false,
            digest: None,
        }
    }

    /// Hashes the client's bytes as they pass; the digest goes to `to` once the whole
    /// body has passed (never for a body cut off).
    pub fn digesting(mut self, to: BodyDigest, boundary: Option<&str>) -> Outbound {
        self.digest = Some((BodyHasher::new(boundary), to));
        if self.inner.is_end_stream() {
            self.digested();
        }
        self
    }

    /// The whole body has passed: its digest is published.
    fn digested(&mut self) {
        if let Some((hash, to)) = self.digest.take() {
            let _ = to.send(hash.finish());
        }
    }

    fn fail(&mut self, why: CutOff) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.stats.cut(why);
        self.done = true;
        self.ready.clear();
        Poll::Ready(Some(Err(Box::new(BodyCutOff(why)))))
    }

    fn scanned(&mut self, released: Result<Vec<Bytes>, Refusal>) -> Result<(), CutOff> {
        match released {
            Ok(parts) => {
                self.ready
                    .extend(parts.into_iter().filter(|b| !b.is_empty()));
                Ok(())
            }
            Err(Refusal::ClientIdMismatch) => Err(CutOff::ClientIdMismatch),
            Err(Refusal::Malformed) => Err(CutOff::MultipartInvalid),
            Err(Refusal::MethodOverride) => Err(CutOff::MethodOverride),
        }
    }
}

/// The deadline of a streamed body. Only time spent waiting for the client counts: while
/// the upstream is slow to take the body (backpressure), the client is not to blame.
struct Pacing {
    limits: BodyLimits,
    /// Time spent waiting for the client's next bytes so far.
    waited: Duration,
    /// Since when we have been waiting now, if we are.
    waiting_since: Option<Instant>,
    sleep: Pin<Box<Sleep>>,
}

impl Pacing {
    /// The client delivered: the wait (if any) is over.
    fn delivered(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }

    /// The client has nothing for us yet: `true` when it has had all its time, given
    /// that it has sent `seen` bytes — in all (the minimum rate), or in this one wait
    /// (the timeout: a fast start earns no right to stall).
    fn waiting(&mut self, seen: u64, cx: &mut Context<'_>) -> bool {
        let allowance = self.limits.allowance(seen);
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let this_wait = now.duration_since(since);
        let spent = self.waited + this_wait;
        if spent >= allowance || this_wait >= self.limits.timeout {
            return true;
        }
        let left = (allowance - spent).min(self.limits.timeout - this_wait);
        self.sleep.as_mut().reset(now + left);
        // Registers the timer; it wakes this body when the allowance runs out.
        let _ = self.sleep.as_mut().poll(cx);
        false
    }
}

impl Body for Outbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.ready.pop_front() {
                if this.done && this.ready.is_empty() {
                    // The last frame: hyper may not poll again once it sees the end.
                    this.stats.finish();
                } else {
                    this.stats.touch();
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.done {
                this.stats.finish();
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => {
                    let seen = this.seen;
                    if this.pacing.as_mut().is_some_and(|p| p.waiting(seen, cx)) {
                        return this.fail(CutOff::TooSlow);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.digested();
                    if let Some(mut scanner) = this.scanner.take() {
                        let released = scanner.finish();
                        if let Err(why) = this.scanned(released) {
                            return this.fail(why);
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => return this.fail(CutOff::Failed),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(pacing) = &mut this.pacing {
                        pacing.delivered();
                    }
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        // Trailers: fields the pipeline never judged (a client id, a
                        // credential) must not reach the backend after the body.
                        Err(_trailers) => continue,
                    };
                    this.seen += data.len() as u64;
                    this.stats
                        .bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if this.limit.is_some_and(|limit| this.seen > limit) {
                        return this.fail(CutOff::OverLimit);
                    }
                    if let Some((hash, _)) = &mut this.digest {
                        hash.update(&data);
                    }
                    match this.scanner.as_mut().map(|s| s.feed(data.clone())) {
                        Some(released) => {
                            if let Err(why) = this.scanned(released) {
                                return this.fail(why);
                            }
                        }
                        None => this.ready.push_back(data),
                    }
                    if this.inner.is_end_stream() {
                        this.digested();
                        this.done = this.scanner.is_none();
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ready.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            let left: u64 = self.ready.iter().map(|b| b.len() as u64).sum();
            return SizeHint::with_exact(left);
        }
        self.inner.size_hint()
    }
}

/// A response body that reports every data frame to its observer and drops trailers.
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
        loop {
            let polled = Pin::new(&mut this.inner).poll_frame(cx);
            if let Poll::Ready(Some(Ok(frame))) = &polled {
                match frame.data_ref() {
                    Some(data) => this.observer.on_data(data.len() as u64),
                    // The backend's trailer fields are not passed on: an HTTP/1.1 client
                    // never got them (it asked for none), and an HTTP/2 client got them
                    // unfiltered (a `Set-Cookie`, or a hop-by-hop field that reset the
                    // stream after a charged answer).
                    None => continue,
                }
            }
            return polled;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_past_its_cap_and_tickets_give_back() {
        let budget = BodyBudget::new(100);
        let ticket = |pool| Ticket {
            budget: Arc::clone(&budget),
            pool,
            bytes: 0,
        };
        let mut a = ticket(Pool::Identified);
        assert!(a.grow(60).is_ok());
        let mut b = ticket(Pool::Identified);
        assert!(matches!(
            b.grow(50),
            Err(GatewayError::Limit(LimitError::Overloaded))
        ));
        assert!(b.grow(40).is_ok());
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 40);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn anonymous_senders_hold_a_quarter_of_the_budget_each_at_most() {
        let budget = BodyBudget::new(100);
        let ticket = |pool| Ticket {
            budget: Arc::clone(&budget),
            pool,
            bytes: 0,
        };
        // Fake callbacks fill their quarter, and no more.
        let mut callbacks = ticket(Pool::Callback);
        assert!(callbacks.grow(25).is_ok());
        assert!(ticket(Pool::Callback).grow(1).is_err());
        // Logins have a quarter of their own; identified callers the rest.
        let mut logins = ticket(Pool::Session);
        assert!(logins.grow(25).is_ok());
        assert!(ticket(Pool::Session).grow(1).is_err());
        let mut identified = ticket(Pool::Identified);
        assert!(identified.grow(50).is_ok());
        assert_eq!(budget.held(), 100);
        // A full budget refuses an anonymous pool with room in its share, and takes
        // nothing from the share for it.
        drop(logins);
        assert!(identified.grow(20).is_ok());
        assert!(ticket(Pool::Session).grow(10).is_err());
        assert_eq!(
            budget.pools[Pool::Session as usize].load(Ordering::Relaxed),
            0
        );
        drop(identified);
        drop(callbacks);
        assert_eq!(budget.held(), 0);
        assert!(budget.pools.iter().all(|p| p.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn the_allowance_grows_with_the_bytes_received() {
        let limits = BodyLimits {
            timeout: Duration::from_secs(10),
            min_rate: 1000,
            max_buffered: 1,
        };
        assert_eq!(limits.allowance(0), Duration::from_secs(10));
        assert_eq!(limits.allowance(5000), Duration::from_secs(15));
    }
}
