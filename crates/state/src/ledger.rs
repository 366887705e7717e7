//! Token credits: each client's balance, the reservations metered requests hold, the
//! journal of every movement, and the idempotency records that stop a retried request
//! from being charged twice.
//!
//! Money moves in two phases, as TigerBeetle's pending transfers do. A metered request
//! **reserves** its cost before it is forwarded: the tokens leave the client's
//! `available` balance and are `held`. When the backend answers, the reservation is
//! **posted** (the tokens are spent; a route that settles at the backend's figure gives
//! back the difference) or **voided** (all of it comes back). A reservation nobody
//! settles, because the gateway died mid-request, is voided when its deadline passes,
//! by whichever instance sweeps first. `available` never goes below zero.
//!
//! Every movement is appended to the **journal** with the balance after it, and never
//! rewritten: [`verify`] replays a client's journal and checks it sums to the balance.
//!
//! An **idempotency record** (per client and `Idempotency-Key`) remembers a request's
//! fingerprint while it runs and, once it was charged, the answer it got: a retry is
//! answered from it and not charged again.
//!
//! [`Ledger`] has two implementations that pass one test suite:
//!
//! - [`embedded`]: decisions in memory, every movement appended to a write-ahead log
//!   that one writer thread makes durable for everything waiting at once (group
//!   commit), checkpointed into a `redb` file every half second. A reservation is
//!   answered only once its movement is on disk, without one fsync each.
//! - [`shared`]: Redis, one Lua script per operation, every key of a client in one
//!   hash slot (Cluster-ready).
//!
//! [`operator`] holds the rules an operator's adjustment must meet, for the admin API and
//! the command line alike; [`import`] reads opening balances.

pub mod embedded;
pub mod import;
pub mod operator;
pub mod shared;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::redis::StoreError;
use crate::BoxFuture;

/// A client's tokens: what it can spend, and what running requests hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub available: u64,
    pub held: u64,
}

/// What moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An opening balance imported from the legacy system (applied once per client).
    Opening,
    /// An operator added tokens.
    Credit,
    /// An operator took tokens away.
    Debit,
    /// An operator set the balance (the amount is the difference).
    Set,
    /// A metered request's cost left the balance and is held.
    Reserve,
    /// The backend answered: the held tokens are spent (any difference comes back).
    Post,
    /// The request failed: the held tokens come back.
    Void,
    /// Nobody settled the reservation before its deadline: the held tokens come back.
    Expire,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Opening => "opening",
            Kind::Credit => "credit",
            Kind::Debit => "debit",
            Kind::Set => "set",
            Kind::Reserve => "reserve",
            Kind::Post => "post",
            Kind::Void => "void",
            Kind::Expire => "expire",
        }
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Movement {
    /// The entry's position: ascending, the cursor of [`Ledger::journal`].
    pub seq: u64,
    pub client: String,
    pub kind: Kind,
    /// The change of the available balance (negative: tokens left it).
    pub amount: i64,
    /// The change of the held tokens.
    #[serde(default)]
    pub held_change: i64,
    /// The available balance after this movement.
    pub balance: u64,
    /// Milliseconds since the epoch.
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Why an operator moved tokens, or why a reservation was voided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A reservation a metered request holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reservation {
    /// Chosen by the caller: unique (random), so it can be indexed before it exists.
    pub id: String,
    pub client: String,
    pub amount: u64,
    /// Milliseconds since the epoch after which a sweep voids it.
    pub deadline: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// What reserving came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// The cost is held; `balance` is what is left available.
    Held { balance: u64 },
    /// The client has fewer tokens than the cost: nothing moved.
    Short { balance: u64 },
}

/// How a reservation ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Spend `amount` of it (at most what was reserved; the rest comes back).
    Post { amount: u64 },
    /// Give all of it back, for this reason (`upstream_5xx`, `client_abort`, ...).
    Void { reason: String },
}

/// What settling came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// `charged` tokens were spent; `balance` is available now.
    Done { charged: u64, balance: u64 },
    /// The reservation is no longer open: settled already, or expired.
    Gone,
}

/// An operator's (or an import's) change of a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Credit(u64),
    Debit(u64),
    Set(u64),
    /// An opening balance: applied once per client, later ones are ignored.
    Opening(u64),
}

/// An adjustment, journaled with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjust {
    pub client: String,
    pub change: Change,
    pub reason: String,
    pub now_ms: u64,
    /// The admin API request that made it (`X-Request-Id`), journaled so the change
    /// can be traced to its call; `None` from the command line and imports.
    pub request_id: Option<String>,
}

/// What an adjustment came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjusted {
    Done {
        balance: u64,
    },
    /// A debit larger than the available balance: nothing moved.
    Short {
        balance: u64,
    },
    /// An opening balance for a client that already had one: nothing moved.
    AlreadyOpened {
        balance: u64,
    },
    /// A credit, set or opening balance that would take the account (available and
    /// held) above [`MAX_TOKENS`]: nothing moved.
    TooLarge {
        balance: u64,
    },
}

/// The most tokens an account may hold (defined with the configuration, whose costs
/// may not exceed it either).
pub use tollgate_policy::snapshot::MAX_TOKENS;

/// The answer a charged request got, kept for its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredAnswer {
    pub status: u16,
    /// The headers worth replaying (content type, the token-credit headers...).
    pub headers: Vec<(String, String)>,
    /// The body, base64; `None` when it was larger than the gateway keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub cost: u64,
    /// The SHA-256 (hex) of the request body that was charged, when it streamed through
    /// (multipart, an opaque type) rather than being read before the claim: a retry's
    /// body must hash the same to be "the same request". [`UNFINISHED_BODY`] when the
    /// body did not pass whole (cut off, or still unfinished long after the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
}

/// `StoredAnswer::request_digest` of a body that did not pass whole: no retry can be
/// shown to be the same request.
pub const UNFINISHED_BODY: &str = "unfinished";

/// An idempotency record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdempotencyRecord {
    /// What identifies "the same request": method, route, target and body digest.
    pub fingerprint: String,
    /// Milliseconds since the epoch: in flight until then (a crashed request frees its
    /// key), then kept until then once answered.
    pub until: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<StoredAnswer>,
    /// The request that claimed the key (a gateway-generated id): only it may free the
    /// key, so a request that learned nothing of its claim (its client hung up while the
    /// ledger answered) can free its own and never another's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
}

/// Claiming a key for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub client: String,
    pub key: String,
    pub fingerprint: String,
    pub now_ms: u64,
    /// How long the claim holds while the request runs.
    pub hold_until: u64,
    /// Who claims it: see [`IdempotencyRecord::owner`].
    pub owner: String,
}

/// What claiming a key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The key is this request's now.
    New,
    /// The same key is running for another request right now.
    InFlight,
    /// The key was used for a different request.
    Mismatch,
    /// The same request was answered before: answer it the same way.
    Answered(StoredAnswer),
}

/// One page of a client's journal, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub movements: Vec<Movement>,
    /// The cursor of the next (older) page, if there is one.
    pub next: Option<u64>,
}

/// What `verify` found for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discrepancy {
    pub client: String,
    pub problem: String,
}

/// What `verify` checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub clients: u64,
    pub movements: u64,
    pub open_reservations: u64,
    pub problems: Vec<Discrepancy>,
}

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error(transparent)]
    Redis(#[from] StoreError),
    #[error("the ledger file: {0}")]
    Embedded(String),
    #[error("a ledger record is unreadable: {0}")]
    Corrupt(String),
    #[error("the ledger's writer has stopped")]
    Stopped,
}

/// Where the money is.
pub trait Ledger: Send + Sync {
    /// Holds `reservation.amount` of the client's tokens, or says it is short.
    fn reserve(
        &self,
        worker: usize,
        reservation: Reservation,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Reserved, LedgerError>>;

    /// Posts or voids an open reservation, exactly once.
    fn settle(
        &self,
        worker: usize,
        client: &str,
        reservation: &str,
        settle: Settle,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Settled, LedgerError>>;

    /// [`Ledger::settle`], handed to the store at once: the change happens whether or
    /// not anyone polls the returned future (the embedded ledger queues it for its next
    /// commit, which a graceful stop still makes). `None` when the store cannot do that;
    /// the caller then drives [`Ledger::settle`] itself.
    fn settle_detached(
        &self,
        _worker: usize,
        _client: &str,
        _reservation: &str,
        _settle: Settle,
        _now_ms: u64,
    ) -> Option<BoxFuture<'static, Result<Settled, LedgerError>>> {
        None
    }

    /// An operator's credit, debit, set, or an opening balance.
    fn adjust(&self, worker: usize, adjust: Adjust)
        -> BoxFuture<'_, Result<Adjusted, LedgerError>>;

    fn account(&self, worker: usize, client: &str) -> BoxFuture<'_, Result<Account, LedgerError>>;

    /// The client's movements older than `before` (all when `None`), newest first.
    fn journal(
        &self,
        worker: usize,
        client: &str,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, LedgerError>>;

    /// Voids up to `max` reservations whose deadline passed; returns how many.
    fn expire(
        &self,
        worker: usize,
        now_ms: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<u64, LedgerError>>;

    /// Claims an idempotency key for a request.
    fn claim(&self, worker: usize, claim: Claim) -> BoxFuture<'_, Result<Claimed, LedgerError>>;

    /// Keeps the answer a charged request got, until `until` (milliseconds): only while
    /// the key is in flight and claimed by `owner`. A claim that ran out under a request
    /// still running may have been taken by a retry since; the retry's outcome is not
    /// written over (nor anyone's kept answer).
    fn answer(
        &self,
        worker: usize,
        client: &str,
        key: &str,
        owner: &str,
        answer: StoredAnswer,
        until: u64,
    ) -> BoxFuture<'_, Result<(), LedgerError>>;

    /// Frees a key whose request was not charged (refused, or refunded), so a retry runs:
    /// only while it is in flight and claimed by `owner`.
    fn release(
        &self,
        worker: usize,
        client: &str,
        key: &str,
        owner: &str,
    ) -> BoxFuture<'_, Result<(), LedgerError>>;

    /// Forgets idempotency records past their time; returns how many.
    fn prune(&self, worker: usize, now_ms: u64) -> BoxFuture<'_, Result<u64, LedgerError>>;

    /// Replays every client's journal against its balance and open reservations.
    fn verify(&self, worker: usize) -> BoxFuture<'_, Result<Report, LedgerError>>;

    /// `(log writes, movements they carried)` for a store that commits in groups: how
    /// well group commit is doing. `None` for a store that does not.
    fn group_commits(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Applies an adjustment to `account`: the movement to journal (without its `seq`,
/// `client` and `at`), or why nothing moved.
pub fn decide_adjust(
    account: &mut Account,
    change: Change,
    opened: bool,
) -> Result<(Kind, i64), Adjusted> {
    let before = account.available;
    let fits = |available: u64| {
        available
            .checked_add(account.held)
            .is_some_and(|total| total <= MAX_TOKENS)
    };
    let too_large = Err(Adjusted::TooLarge { balance: before });
    let kind = match change {
        Change::Credit(n) => {
            match before.checked_add(n).filter(|a| fits(*a)) {
                Some(after) => account.available = after,
                None => return too_large,
            }
            Kind::Credit
        }
        Change::Debit(n) => {
            if n > before {
                return Err(Adjusted::Short { balance: before });
            }
            account.available = before - n;
            Kind::Debit
        }
        Change::Set(n) => {
            if !fits(n) {
                return too_large;
            }
            account.available = n;
            Kind::Set
        }
        Change::Opening(n) => {
            if opened {
                return Err(Adjusted::AlreadyOpened { balance: before });
            }
            match before.checked_add(n).filter(|a| fits(*a)) {
                Some(after) => account.available = after,
                None => return too_large,
            }
            Kind::Opening
        }
    };
    Ok((kind, signed(account.available) - signed(before)))
}

/// Settles `amount` held tokens: what is charged and how the account changes. A post
/// never charges more than was held.
pub fn decide_settle(account: &mut Account, held: u64, settle: &Settle) -> (Kind, u64, i64) {
    account.held = account.held.saturating_sub(held);
    let (kind, charged) = match settle {
        Settle::Post { amount } => (Kind::Post, (*amount).min(held)),
        Settle::Void { reason } if reason == EXPIRED => (Kind::Expire, 0),
        Settle::Void { .. } => (Kind::Void, 0),
    };
    let back = held - charged;
    account.available = account.available.saturating_add(back);
    (kind, charged, signed(back))
}

/// What an existing record says about a claim, or `None` when the claim may take the
/// key (the record's time is over: an answer kept past its retention, or a request
/// that died holding the key).
pub fn judge_claim(record: &IdempotencyRecord, claim: &Claim) -> Option<Claimed> {
    if record.until <= claim.now_ms {
        return None;
    }
    Some(match &record.answer {
        _ if record.fingerprint != claim.fingerprint => Claimed::Mismatch,
        Some(answer) => Claimed::Answered(answer.clone()),
        None => Claimed::InFlight,
    })
}

/// The void reason of a reservation whose deadline passed.
pub const EXPIRED: &str = "expired";

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Checks one client's journal (oldest first) against its account and the amounts its
/// open reservations hold.
pub fn check_client(
    client: &str,
    account: Account,
    journal: &[Movement],
    open: u64,
) -> Vec<Discrepancy> {
    let mut problems = Vec::new();
    let mut balance: i128 = 0;
    let mut held: i128 = 0;
    let mut last = 0;
    for m in journal {
        if m.seq <= last {
            problems.push(Discrepancy {
                client: client.to_owned(),
                problem: format!("movement {} is out of order (after {last})", m.seq),
            });
        }
        last = m.seq;
        balance += i128::from(m.amount);
        held += i128::from(m.held_change);
        if balance < 0 {
            problems.push(Discrepancy {
                client: client.to_owned(),
                problem: format!("the balance went negative at movement {}", m.seq),
            });
        }
        if balance != i128::from(m.balance) {
            problems.push(Discrepancy {
                client: client.to_owned(),
                problem: format!(
                    "movement {} says the balance was {} after it; the journal sums to {balance}",
                    m.seq, m.balance
                ),
            });
        }
    }
    if balance != i128::from(account.available) {
        problems.push(Discrepancy {
            client: client.to_owned(),
            problem: format!(
                "the balance is {} but the journal sums to {balance}",
                account.available
            ),
        });
    }
    if held != i128::from(account.held) || held != i128::from(open) {
        problems.push(Discrepancy {
            client: client.to_owned(),
            problem: format!(
                "{} tokens are held, open reservations hold {open}, the journal says {held}",
                account.held
            ),
        });
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debit_never_takes_the_balance_below_zero() {
        let mut account = Account {
            available: 5,
            held: 0,
        };
        assert_eq!(
            decide_adjust(&mut account, Change::Debit(6), false),
            Err(Adjusted::Short { balance: 5 })
        );
        assert_eq!(
            decide_adjust(&mut account, Change::Debit(5), false),
            Ok((Kind::Debit, -5))
        );
        assert_eq!(account.available, 0);
    }

    #[test]
    fn set_journals_the_difference_and_opening_applies_once() {
        let mut account = Account {
            available: 7,
            held: 2,
        };
        assert_eq!(
            decide_adjust(&mut account, Change::Set(3), false),
            Ok((Kind::Set, -4))
        );
        assert_eq!(
            decide_adjust(&mut account, Change::Opening(100), true),
            Err(Adjusted::AlreadyOpened { balance: 3 })
        );
        assert_eq!(
            decide_adjust(&mut account, Change::Opening(100), false),
            Ok((Kind::Opening, 100))
        );
        assert_eq!(
            account,
            Account {
                available: 103,
                held: 2
            }
        );
    }

    #[test]
    fn a_post_charges_at_most_what_was_held_and_gives_back_the_rest() {
        let mut account = Account {
            available: 10,
            held: 5,
        };
        assert_eq!(
            decide_settle(&mut account, 5, &Settle::Post { amount: 3 }),
            (Kind::Post, 3, 2)
        );
        assert_eq!(
            account,
            Account {
                available: 12,
                held: 0
            }
        );
        let mut account = Account {
            available: 0,
            held: 5,
        };
        assert_eq!(
            decide_settle(&mut account, 5, &Settle::Post { amount: 50 }),
            (Kind::Post, 5, 0)
        );
        let void = Settle::Void {
            reason: EXPIRED.into(),
        };
        let mut account = Account {
            available: 0,
            held: 5,
        };
        assert_eq!(decide_settle(&mut account, 5, &void), (Kind::Expire, 0, 5));
        assert_eq!(
            account,
            Account {
                available: 5,
                held: 0
            }
        );
    }

    fn movement(seq: u64, amount: i64, held_change: i64, balance: u64) -> Movement {
        Movement {
            seq,
            client: "c".into(),
            kind: Kind::Credit,
            amount,
            held_change,
            balance,
            at: 0,
            reservation: None,
            route: None,
            request_id: None,
            idempotency_key: None,
            reason: None,
        }
    }

    #[test]
    fn verify_finds_a_journal_that_does_not_sum_to_the_balance() {
        let journal = [movement(1, 10, 0, 10), movement(2, -3, 3, 7)];
        let ok = Account {
            available: 7,
            held: 3,
        };
        assert!(check_client("c", ok, &journal, 3).is_empty());
        assert_eq!(
            check_client(
                "c",
                Account {
                    available: 8,
                    held: 3
                },
                &journal,
                3
            )
            .len(),
            1
        );
        assert_eq!(check_client("c", ok, &journal, 0).len(), 1);
        let rewritten = [movement(1, 10, 0, 10), movement(2, -3, 3, 6)];
        assert_eq!(
            check_client(
                "c",
                Account {
                    available: 7,
                    held: 3
                },
                &rewritten,
                3
            )
            .len(),
            1
        );
    }
}
