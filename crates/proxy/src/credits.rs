//! The runtime part for token credits: the ledger `[credits]` and `[store]` name, its
//! sweeper, and the counters of what metering did.
//!
//! The ledger is Redis when `[store]` has a URL; otherwise a `redb` file at
//! `[credits] path`. It is opened once and kept across reloads while that setting
//! holds (redb locks its file). The opening balances of `[credits] opening_balances`
//! are credited when it opens, once per client ever; until then metered routes answer
//! 503 and `/readyz` says not ready, so a fresh start never refuses a client the
//! balance its legacy record shows.
//!
//! The sweeper voids reservations past their deadline (a gateway that died
//! mid-request) every second, on every instance, and forgets old idempotency records.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tollgate_policy::snapshot::{Credits as CreditSettings, RedisSettings};
use tollgate_state::ledger::embedded::{EmbeddedLedger, Options};
use tollgate_state::ledger::shared::SharedLedger;
use tollgate_state::ledger::{import, Ledger, LedgerError};

use crate::errors::{CreditError, GatewayError};
use crate::metrics::{self, Labeled};
use crate::part::{Build, Part};

/// How often reservations past their deadline are looked for.
const SWEEP: Duration = Duration::from_secs(1);
/// How often old idempotency records are forgotten.
const PRUNE: Duration = Duration::from_secs(60);
/// Expired reservations voided per sweep (the next sweep takes the rest).
const SWEEP_MAX: usize = 1000;

/// Which ledger a snapshot asks for: kept across reloads while this is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Embedded(PathBuf),
    Redis(RedisSettings),
}

/// Why a reservation was voided (the metrics' `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoidReason {
    /// The backend answered with a refunding status (5xx by default).
    UpstreamStatus,
    /// The backend could not be reached, or did not answer in time.
    UpstreamError,
    /// The gateway refused the request after reserving (a bad body, a spoofed id).
    RequestRefused,
    /// The client went away before the response head.
    ClientAbort,
}

impl VoidReason {
    pub fn as_str(self) -> &'static str {
        match self {
            VoidReason::UpstreamStatus => "upstream_status",
            VoidReason::UpstreamError => "upstream_error",
            VoidReason::RequestRefused => "request_refused",
            VoidReason::ClientAbort => "client_abort",
        }
    }

    const ALL: [VoidReason; 4] = [
        VoidReason::UpstreamStatus,
        VoidReason::UpstreamError,
        VoidReason::RequestRefused,
        VoidReason::ClientAbort,
    ];
}

/// What metering did, kept across reloads.
#[derive(Debug)]
pub struct CreditCounters {
    pub reservations: Counter,
    pub posts: Counter,
    pub tokens_charged: Counter,
    voids: Labeled<4>,
    pub insufficient: Counter,
    pub replays: Counter,
    pub expired: Counter,
    pub store_errors: Counter,
    /// Latency of the ledger calls on the request path.
    pub latency: Histogram,
    /// Settlements running on tasks of their own (an exchange whose client left, a post
    /// written in the background): a graceful stop waits for them.
    pub detached: Arc<Detached>,
}

/// A count of settlements in flight on tasks of their own, and a way to wait until none
/// is. A worker's runtime ends when it has drained; a task still settling on it would
/// end with it, and the money it settles would be decided by the reservation's expiry
/// (a refund) instead.
#[derive(Debug, Default)]
pub struct Detached {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Detached {
    /// Counts one until the guard is dropped.
    pub fn track(self: &Arc<Self>) -> DetachedGuard {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        DetachedGuard(Arc::clone(self))
    }

    /// Resolves once none is running.
    pub async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One detached settlement, counted while it lives.
#[derive(Debug)]
pub struct DetachedGuard(Arc<Detached>);

impl Drop for DetachedGuard {
    fn drop(&mut self) {
        if self
            .0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

impl Default for CreditCounters {
    fn default() -> CreditCounters {
        CreditCounters {
            reservations: Counter::default(),
            posts: Counter::default(),
            tokens_charged: Counter::default(),
            voids: Labeled::new("reason", VoidReason::ALL.map(VoidReason::as_str)),
            insufficient: Counter::default(),
            replays: Counter::default(),
            expired: Counter::default(),
            store_errors: Counter::default(),
            latency: metrics::latency(),
            detached: Arc::default(),
        }
    }
}

impl CreditCounters {
    pub fn count_post(&self, charged: u64) {
        self.posts.inc();
        self.tokens_charged.inc_by(charged);
    }

    pub fn count_void(&self, reason: VoidReason) {
        if let Some(i) = VoidReason::ALL.iter().position(|r| *r == reason) {
            self.voids.at(i).inc();
        }
    }
}

/// The ledger a snapshot names, once it is open and the opening balances are in.
pub struct LedgerState {
    location: Location,
    ledger: OnceLock<Arc<dyn Ledger>>,
    /// The Redis connection slot of the sweeper (0 for the embedded ledger).
    background: usize,
}

/// The part: `None` without `[credits]`.
pub struct Credits {
    state: Option<Arc<LedgerState>>,
    pub counters: Arc<CreditCounters>,
}

impl Credits {
    /// Whether metering can serve: true without `[credits]`, else once the ledger is
    /// open and the opening balances are in (`/readyz` waits for it).
    pub fn ready(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.ledger.get().is_some())
    }

    /// After a drain that `shutdown_grace` ended with requests still running: what they
    /// hold is refunded now rather than at their deadline (minutes later, for whoever
    /// opens the ledger next). Their clients got no answer; a crash would refund them
    /// the same way, only later. The embedded ledger only: it is this process's alone,
    /// while in Redis other instances' holds sit beside ours and expire on their own.
    pub async fn refund_cut_off(&self) -> u64 {
        let Some(state) = self
            .state
            .as_ref()
            .filter(|s| matches!(s.location, Location::Embedded(_)))
        else {
            return 0;
        };
        let Some(ledger) = state.ledger.get() else {
            return 0;
        };
        match ledger.expire(state.background, u64::MAX, usize::MAX).await {
            Ok(n) => {
                self.counters.expired.inc_by(n);
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot refund what the shutdown cut off; it expires at its deadline");
                0
            }
        }
    }

    /// The ledger, or 503.
    pub fn ledger(&self) -> Result<&Arc<dyn Ledger>, GatewayError> {
        self.state
            .as_ref()
            .and_then(|s| s.ledger.get())
            .ok_or_else(|| CreditError::LedgerUnavailable.into())
    }

    /// A ledger error as a request sees it: 503, nothing charged (the ledger's own
    /// words go to the log only: they may name files or hosts).
    pub fn unavailable(&self, error: &LedgerError) -> GatewayError {
        self.counters.store_errors.inc();
        tracing::warn!(error = %error, "token ledger error");
        CreditError::LedgerUnavailable.into()
    }
}

fn location(build: &Build) -> Option<Location> {
    let credits = build.snapshot.credits.as_ref()?;
    Some(match &build.snapshot.store.redis {
        Some(settings) => Location::Redis(settings.clone()),
        None => Location::Embedded(credits.path.clone()),
    })
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Credits the opening balances of `settings` that are not in yet.
async fn open_balances(
    ledger: &dyn Ledger,
    worker: usize,
    settings: &CreditSettings,
) -> Result<(), String> {
    let Some(path) = &settings.opening_balances else {
        return Ok(());
    };
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot read the opening balances {}: {e}", path.display()))?;
    let openings = import::parse(&text).map_err(|problems| {
        format!(
            "the opening balances {} are not valid: {}",
            path.display(),
            problems.join("; ")
        )
    })?;
    let reason = format!("opening balance from {}", path.display());
    let credited = import::credit(ledger, worker, openings, &reason, now_ms())
        .await
        .map_err(|e| format!("cannot credit the opening balances: {e}"))?
        .credited;
    if credited > 0 {
        tracing::info!(clients = credited, file = %path.display(), "opening balances credited");
    }
    Ok(())
}

impl Part for Credits {
    fn build(build: &Build, previous: Option<&Self>) -> Self {
        let counters = previous.map_or_else(Arc::default, |p| Arc::clone(&p.counters));
        let (Some(location), Some(settings)) = (location(build), build.snapshot.credits.clone())
        else {
            return Credits {
                state: None,
                counters,
            };
        };
        if let Some(state) = previous.and_then(|p| p.state.as_ref()) {
            // The ledger is where the money is: a reload that names another file or
            // Redis (a typo, say) would have opened an empty ledger and credited the
            // opening balances into it, forgiving everything spent. Bound at start-up,
            // as `sync` is: the ledger in use is kept until a restart.
            if state.location != location {
                tracing::warn!(
                    "[credits] path or [store] redis_url changed: the ledger moves only at a restart; the one in use is kept"
                );
            }
            return Credits {
                state: Some(Arc::clone(state)),
                counters,
            };
        }
        let (pending, background): (Option<Arc<dyn Ledger>>, usize) = match &location {
            Location::Embedded(_) => (None, 0),
            Location::Redis(_) => match build.redis.redis() {
                Some(redis) => (
                    Some(Arc::new(SharedLedger::new(Arc::clone(redis)))),
                    redis.background_worker(),
                ),
                None => {
                    tracing::error!(
                        "the configured redis cannot be used: metered routes answer 503"
                    );
                    (None, 0)
                }
            },
        };
        let state = Arc::new(LedgerState {
            location,
            ledger: OnceLock::new(),
            background,
        });
        spawn_keeper(
            Arc::downgrade(&state),
            pending,
            settings,
            Arc::clone(&counters),
        );
        Credits {
            state: Some(state),
            counters,
        }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        let Some(_) = &self.state else {
            return;
        };
        let c = &self.counters;
        for (name, help, counter) in [
            (
                "tollgate_credit_reservations",
                "Metered requests whose cost was reserved",
                &c.reservations,
            ),
            (
                "tollgate_credit_posts",
                "Reservations posted (the backend answered; the tokens are spent)",
                &c.posts,
            ),
            (
                "tollgate_credit_tokens_charged",
                "Tokens spent by posted reservations",
                &c.tokens_charged,
            ),
            (
                "tollgate_credit_insufficient",
                "Requests refused with 402 INSUFFICIENT_TOKENS",
                &c.insufficient,
            ),
            (
                "tollgate_credit_idempotent_replays",
                "Requests answered from an Idempotency-Key's record, not charged again",
                &c.replays,
            ),
            (
                "tollgate_credit_expired",
                "Reservations nobody settled before their deadline, refunded by the sweeper",
                &c.expired,
            ),
            (
                "tollgate_credit_ledger_errors",
                "Ledger calls that failed (the request got 503, or its settlement waits for the sweeper)",
                &c.store_errors,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "tollgate_credit_voids",
            "Reservations voided (refunded in full), by reason",
            c.voids.family(),
        );
        registry.register_with_unit(
            "tollgate_credit_ledger",
            "Latency of the ledger calls on the request path",
            Unit::Seconds,
            c.latency.clone(),
        );
        if let Some((writes, movements)) = self
            .state
            .as_ref()
            .and_then(|s| s.ledger.get())
            .and_then(|l| l.group_commits())
        {
            registry.register(
                "tollgate_credit_log_writes",
                "Writes of the embedded ledger's log (each durable when it returns)",
                ConstCounter::new(writes),
            );
            registry.register(
                "tollgate_credit_log_movements",
                "Movements those writes carried: divided by the writes, the size of a commit group",
                ConstCounter::new(movements),
            );
        }
        registry.register(
            "tollgate_credit_ledger_ready",
            "Whether the ledger is open and the opening balances are in",
            ConstGauge::new(i64::from(self.ready())),
        );
    }
}

/// Opens the ledger (retrying while another process holds the embedded file), credits
/// the opening balances, then sweeps expired reservations for as long as the state is
/// in use.
fn spawn_keeper(
    state: Weak<LedgerState>,
    pending: Option<Arc<dyn Ledger>>,
    settings: CreditSettings,
    counters: Arc<CreditCounters>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!("no runtime for the token ledger: metered routes answer 503");
        return;
    };
    runtime.spawn(async move {
        let mut pending = pending;
        let mut last_prune = Instant::now();
        let mut complained = false;
        loop {
            let Some(state) = state.upgrade() else {
                return;
            };
            match state.ledger.get() {
                None => {
                    if pending.is_none() {
                        if let Location::Embedded(path) = &state.location {
                            let path = path.clone();
                            let options = Options::for_sync(settings.sync);
                            match tokio::task::spawn_blocking(move || EmbeddedLedger::open_with(&path, options)).await {
                                Ok(Ok(ledger)) => pending = Some(Arc::new(ledger)),
                                Ok(Err(e)) if !complained => {
                                    tracing::error!(error = %e, "cannot open the token ledger; retrying");
                                    complained = true;
                                }
                                _ => {}
                            }
                        }
                    }
                    if let Some(ledger) = &pending {
                        // Open means answering: the first sweep is a round trip, so a
                        // Redis that refuses us (a wrong password in the URL) keeps the
                        // instance not ready rather than ready with every metered
                        // request answered 503.
                        let opened = match open_balances(ledger.as_ref(), state.background, &settings).await {
                            Ok(()) => ledger
                                .expire(state.background, now_ms(), SWEEP_MAX)
                                .await
                                .map(|n| {
                                    counters.expired.inc_by(n);
                                })
                                .map_err(|e| format!("cannot reach the token ledger: {e}")),
                            Err(e) => Err(e),
                        };
                        match opened {
                            Ok(()) => {
                                let _ = state.ledger.set(Arc::clone(ledger));
                                tracing::info!("the token ledger is open");
                            }
                            Err(e) if !complained => {
                                tracing::error!("{e}; retrying");
                                complained = true;
                            }
                            Err(_) => {}
                        }
                    }
                }
                Some(ledger) => {
                    match ledger.expire(state.background, now_ms(), SWEEP_MAX).await {
                        Ok(n) => {
                            counters.expired.inc_by(n);
                            if n > 0 {
                                tracing::warn!(reservations = n, "refunded reservations nobody settled before their deadline");
                            }
                        }
                        Err(e) => {
                            counters.store_errors.inc();
                            tracing::debug!(error = %e, "cannot sweep expired reservations");
                        }
                    }
                    if last_prune.elapsed() >= PRUNE {
                        last_prune = Instant::now();
                        if let Err(e) = ledger.prune(state.background, now_ms()).await {
                            tracing::debug!(error = %e, "cannot prune idempotency records");
                        }
                    }
                }
            }
            drop(state);
            tokio::time::sleep(SWEEP).await;
        }
    });
}
