//! The money a request has open: its reservation ([`Hold`]) and its claim on an
//! `Idempotency-Key` ([`KeyClaim`]). Both settle exactly once. Dropped unsettled — the
//! client went away before the response head, and the request's future with it, even
//! while the reservation was still being made — they settle in the background: the
//! reservation is voided (a full refund) and the key freed. A gateway that dies instead
//! leaves them to the ledger's deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot::error::TryRecvError;
use tollgate_state::ledger::{Ledger, LedgerError, Settle, Settled, StoredAnswer, UNFINISHED_BODY};
use tollgate_state::BoxFuture;

use crate::body_digest::{AwaitedDigest, BodyDigest};
use crate::credits::{now_ms, CreditCounters, DetachedGuard, VoidReason};

/// An open reservation.
pub struct Hold {
    ledger: Arc<dyn Ledger>,
    counters: Arc<CreditCounters>,
    worker: usize,
    client: String,
    id: String,
    /// What was reserved.
    pub cost: u64,
    /// The available balance right after the reservation (0 until it is made).
    pub balance: u64,
    open: bool,
    /// Whether the reservation was counted: one made while its request was dropped is
    /// counted when its void finds it held.
    counted: bool,
    /// When the backend's answer must have begun: a little before the reservation's
    /// deadline, past which the sweeper refunds it (see [`Hold::settle_within`]).
    pub settle_by: Option<tokio::time::Instant>,
}

/// What is kept between the forward's own deadline and the reservation's: the post
/// must reach the ledger before the sweeper could expire the hold (on any instance,
/// whose clock may run a little ahead).
const SETTLE_MARGIN: Duration = Duration::from_secs(5);

impl Hold {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        counters: Arc<CreditCounters>,
        worker: usize,
        client: String,
        id: String,
        cost: u64,
    ) -> Hold {
        Hold {
            ledger,
            counters,
            worker,
            client,
            id,
            cost,
            balance: 0,
            open: true,
            counted: false,
            settle_by: None,
        }
    }

    /// The backend's answer must begin within `timeout` (the reservation's), less a
    /// margin: a request still running at its reservation's deadline (an upload sent at
    /// the slowest allowed rate, a backend that stalls) would have its hold refunded
    /// under it by the sweeper, and then its answer could no longer charge it.
    pub fn settle_within(&mut self, timeout: Duration) {
        let margin = SETTLE_MARGIN.min(timeout / 2);
        self.settle_by = Some(tokio::time::Instant::now() + (timeout - margin));
    }

    /// The ledger holds it: counted, with the balance after it.
    pub fn held(&mut self, balance: u64) {
        self.balance = balance;
        self.counted = true;
        self.counters.reservations.inc();
    }

    /// Counts a settlement of this reservation that runs on a task of its own, until the
    /// guard is dropped: a graceful stop waits for it.
    pub fn track_detached(&self) -> DetachedGuard {
        self.counters.detached.track()
    }

    /// Nothing is held under this reservation (the ledger refused it, or failed): there
    /// is nothing to give back when this is dropped.
    pub fn disarm(&mut self) {
        self.open = false;
    }

    /// Spends `amount` of the reservation (at most what was reserved).
    pub async fn post(mut self, amount: u64) -> Result<Settled, LedgerError> {
        self.open = false;
        let settled = self
            .ledger
            .settle(
                self.worker,
                &self.client,
                &self.id,
                Settle::Post { amount },
                now_ms(),
            )
            .await?;
        if let Settled::Done { charged, .. } = settled {
            self.counters.count_post(charged);
        }
        Ok(settled)
    }

    /// [`Hold::post`], handed to the ledger now: the embedded ledger commits it even if
    /// the returned future is never polled (a worker that stops right after answering).
    pub fn post_detached(
        mut self,
        amount: u64,
    ) -> BoxFuture<'static, Result<Settled, LedgerError>> {
        let detached = self.ledger.settle_detached(
            self.worker,
            &self.client,
            &self.id,
            Settle::Post { amount },
            now_ms(),
        );
        let Some(posted) = detached else {
            return Box::pin(self.post(amount));
        };
        self.open = false;
        let counters = Arc::clone(&self.counters);
        Box::pin(async move {
            let settled = posted.await?;
            if let Settled::Done { charged, .. } = settled {
                counters.count_post(charged);
            }
            Ok(settled)
        })
    }

    /// Gives the whole reservation back.
    pub async fn void(mut self, reason: VoidReason) -> Result<Settled, LedgerError> {
        self.open = false;
        void(
            &*self.ledger,
            &self.counters,
            self.worker,
            &self.client,
            &self.id,
            reason,
        )
        .await
    }
}

async fn void(
    ledger: &dyn Ledger,
    counters: &CreditCounters,
    worker: usize,
    client: &str,
    id: &str,
    reason: VoidReason,
) -> Result<Settled, LedgerError> {
    let void = Settle::Void {
        reason: reason.as_str().to_owned(),
    };
    let settled = ledger.settle(worker, client, id, void, now_ms()).await?;
    if let Settled::Done { .. } = settled {
        counters.count_void(reason);
    }
    Ok(settled)
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (ledger, counters, worker, counted) = (
            Arc::clone(&self.ledger),
            Arc::clone(&self.counters),
            self.worker,
            self.counted,
        );
        let (client, id) = (
            std::mem::take(&mut self.client),
            std::mem::take(&mut self.id),
        );
        // Counted, so a graceful stop lets the refund finish.
        let tracked = self.counters.detached.track();
        runtime.spawn(async move {
            match void(&*ledger, &counters, worker, &client, &id, VoidReason::ClientAbort).await {
                // Made, then abandoned before its request saw it (an HTTP/2 reset while
                // the reservation was being made): it still counts as one.
                Ok(Settled::Done { .. }) if !counted => {
                    counters.reservations.inc();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refund an abandoned request now; its reservation expires instead")
                }
            }
            drop(tracked);
        });
    }
}

/// A request's claim on its `Idempotency-Key`.
pub struct KeyClaim {
    ledger: Arc<dyn Ledger>,
    worker: usize,
    client: String,
    key: String,
    /// The claim's owner: see `IdempotencyRecord::owner`.
    owner: String,
    /// Until when an answer is kept (milliseconds).
    keep_until: u64,
    state: ClaimState,
    /// For a body that streams through unread: its digest, sent by
    /// [`crate::body::Outbound`] once the whole body has passed.
    streamed: Option<AwaitedDigest>,
    /// A multipart body's boundary, which its digest leaves out.
    boundary: Option<String>,
}

enum ClaimState {
    /// Not charged (yet): freed when dropped.
    Open,
    /// Charged: the answer must be kept; dropped before the body was read, the status
    /// and headers are kept without it.
    Charged(StoredAnswer),
    Done,
}

impl KeyClaim {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        worker: usize,
        client: String,
        key: String,
        owner: String,
        keep_until: u64,
    ) -> KeyClaim {
        KeyClaim {
            ledger,
            worker,
            client,
            key,
            owner,
            keep_until,
            state: ClaimState::Open,
            streamed: None,
            boundary: None,
        }
    }

    /// The request's multipart boundary, if it has one.
    pub fn with_boundary(mut self, boundary: Option<String>) -> KeyClaim {
        self.boundary = boundary;
        self
    }

    pub fn boundary(&self) -> Option<&str> {
        self.boundary.as_deref()
    }

    /// The request's body streams through unread: the answer kept for retries will
    /// carry its digest. Returns where [`crate::body::Outbound`] sends it.
    pub fn digest_streamed_body(&mut self) -> BodyDigest {
        let (to, from) = tokio::sync::oneshot::channel();
        self.streamed = Some(from);
        to
    }

    /// The request was charged and answered so: from now on a retry gets this answer.
    pub fn charged(&mut self, answer: StoredAnswer) {
        self.state = ClaimState::Charged(answer);
    }

    /// The answer a charged request got, not yet kept.
    pub fn pending_answer(&self) -> Option<&StoredAnswer> {
        match &self.state {
            ClaimState::Charged(answer) => Some(answer),
            _ => None,
        }
    }

    /// Keeps `answer` for retries. A streamed body's digest goes with it; when the
    /// backend answered before the whole body had passed, the answer is kept once the
    /// body ends, in the background (a retry meanwhile finds the key in flight: 409).
    pub async fn keep(mut self, answer: StoredAnswer) -> Result<(), LedgerError> {
        self.state = ClaimState::Done;
        let streamed = self.streamed.take();
        let keeping = self.keeping();
        match streamed.map(|mut digest| (digest.try_recv(), digest)) {
            None => keeping.keep(answer, None).await,
            Some((Ok(digest), _)) => keeping.keep(answer, Some(Ok(digest))).await,
            Some((Err(TryRecvError::Closed), _)) => keeping.keep(answer, Some(Err(()))).await,
            Some((Err(TryRecvError::Empty), digest)) => {
                tokio::spawn(keeping.keep_after(answer, digest));
                Ok(())
            }
        }
    }

    /// What keeping an answer needs, taken out of the claim.
    fn keeping(&mut self) -> Keeping {
        Keeping {
            ledger: Arc::clone(&self.ledger),
            worker: self.worker,
            client: std::mem::take(&mut self.client),
            key: std::mem::take(&mut self.key),
            owner: std::mem::take(&mut self.owner),
            until: self.keep_until,
        }
    }

    /// Frees the key: the request was not charged, a retry runs.
    pub async fn release(mut self) -> Result<(), LedgerError> {
        self.state = ClaimState::Done;
        self.ledger
            .release(self.worker, &self.client, &self.key, &self.owner)
            .await
    }

    /// The key was not claimed by this request (in flight elsewhere, answered, or the
    /// ledger failed): there is nothing of ours to free when this is dropped.
    pub fn disarm(&mut self) {
        self.state = ClaimState::Done;
    }
}

impl Drop for KeyClaim {
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, ClaimState::Done);
        if matches!(state, ClaimState::Done) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let streamed = self.streamed.take();
        let keeping = self.keeping();
        runtime.spawn(async move {
            let done = match (state, streamed) {
                (ClaimState::Charged(answer), Some(digest)) => {
                    return keeping.keep_after(answer, digest).await;
                }
                (ClaimState::Charged(answer), None) => keeping.keep(answer, None).await,
                _ => keeping.release().await,
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "cannot settle an idempotency key now; it frees itself at its deadline");
            }
        });
    }
}

/// How long a kept answer waits for the rest of a streamed body the backend answered
/// early. The body's own deadlines end a stalled client sooner; this bounds a backend
/// that stops reading and holds the connection. Past it, retries get 422 (never a
/// wrong replay).
pub const DIGEST_WAIT: Duration = Duration::from_secs(600);

/// An answer on its way to be kept for retries.
struct Keeping {
    ledger: Arc<dyn Ledger>,
    worker: usize,
    client: String,
    key: String,
    owner: String,
    until: u64,
}

impl Keeping {
    /// Keeps `answer`, with the streamed body's digest (`Err`: the body did not pass
    /// whole, so no retry can be the same request).
    async fn keep(
        self,
        mut answer: StoredAnswer,
        digest: Option<Result<String, ()>>,
    ) -> Result<(), LedgerError> {
        if let Some(digest) = digest {
            answer.request_digest = Some(digest.unwrap_or_else(|_| UNFINISHED_BODY.to_owned()));
        }
        self.ledger
            .answer(
                self.worker,
                &self.client,
                &self.key,
                &self.owner,
                answer,
                self.until,
            )
            .await
    }

    /// Frees the key: the request was not charged.
    async fn release(self) -> Result<(), LedgerError> {
        self.ledger
            .release(self.worker, &self.client, &self.key, &self.owner)
            .await
    }

    /// Waits for the streamed body to end, then keeps `answer` with its digest.
    async fn keep_after(self, answer: StoredAnswer, digest: AwaitedDigest) {
        let digest = match tokio::time::timeout(DIGEST_WAIT, digest).await {
            Ok(Ok(digest)) => Ok(digest),
            _ => Err(()),
        };
        if let Err(e) = self.keep(answer, Some(digest)).await {
            tracing::warn!(error = %e, "cannot keep an idempotent answer; the key frees itself at its deadline");
        }
    }
}
