//! The ledger in one `redb` file: the default for a single instance.
//!
//! Every change goes through one writer thread. It takes every request waiting when it
//! is free, applies them in order in one write transaction and commits it durably
//! (fsynced) before any of them is answered: a movement a client was told about
//! survives `kill -9`, and concurrent requests share one commit (group commit) instead
//! of queueing for one fsync each. One writer also makes every operation atomic, so no
//! interleaving can take a balance below zero. Reads use their own snapshots on Tokio's
//! blocking pool and never wait for the writer.
//!
//! Tables: `accounts` (client → available, held), `journal` ((client, sequence) →
//! movement: a client's movements are one range), `reservations` (id → reservation; the
//! open ones are the requests in flight, so a sweep reads them all), `opened` (clients whose opening balance is in), `idempotency` (client,
//! key → record) and its `idempotency_expiry`, and `meta` (the next sequence number).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use super::{
    check_client, decide_adjust, decide_settle, Account, Adjust, Adjusted, Claim, Claimed,
    IdempotencyRecord, Kind, Ledger, LedgerError, Movement, Page, Report, Reservation, Reserved,
    Settle, Settled, StoredAnswer, EXPIRED,
};
use crate::BoxFuture;

const ACCOUNTS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("accounts");
const JOURNAL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("journal");
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
const OPENED: TableDefinition<&str, u64> = TableDefinition::new("opened");
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
const IDEMPOTENCY_EXPIRY: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("idempotency_expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most requests committed together: bounds one transaction's size.
const MAX_BATCH: usize = 1024;

fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Embedded(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt(e.to_string())
}

/// A change, as the writer applies it.
enum Op {
    Reserve(Reservation, u64),
    Settle {
        client: String,
        id: String,
        settle: Settle,
        now_ms: u64,
    },
    Adjust(Adjust),
    Expire {
        now_ms: u64,
        max: usize,
    },
    Claim(Claim),
    Answer {
        client: String,
        key: String,
        answer: StoredAnswer,
        until: u64,
    },
    Release {
        client: String,
        key: String,
    },
    Prune(u64),
}

enum Done {
    Reserved(Reserved),
    Settled(Settled),
    Adjusted(Adjusted),
    Count(u64),
    Claimed(Claimed),
    Unit,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Done, LedgerError>>,
}

/// How the group commit is doing: commits, and the changes they carried.
#[derive(Debug, Default)]
pub struct GroupStats {
    pub commits: AtomicU64,
    pub changes: AtomicU64,
}

/// A ledger in a local file.
pub struct EmbeddedLedger {
    db: Arc<Database>,
    /// `None` once dropping: the writer then commits what is queued and ends.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    stats: Arc<GroupStats>,
}

impl Drop for EmbeddedLedger {
    /// Waits for the writer to commit every change already queued (a graceful stop
    /// loses no settlement), then lets go of the file.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLedger").finish_non_exhaustive()
    }
}

impl EmbeddedLedger {
    /// Opens (or creates) the ledger at `path`, creating its directory, and starts its
    /// writer thread.
    pub fn open(path: &Path) -> Result<EmbeddedLedger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let db = Arc::new(Database::create(path).map_err(err)?);
        let txn = db.begin_write().map_err(err)?;
        Tables::open(&txn)?;
        txn.commit().map_err(err)?;
        let (jobs, queue) = mpsc::channel();
        let stats = Arc::new(GroupStats::default());
        let writer_db = Arc::clone(&db);
        let writer_stats = Arc::clone(&stats);
        let writer = std::thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || write_loop(&writer_db, &queue, &writer_stats))
            .map_err(err)?;
        Ok(EmbeddedLedger {
            db,
            jobs: Some(jobs),
            writer: Some(writer),
            stats,
        })
    }

    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    fn submit(&self, op: Op) -> BoxFuture<'static, Result<Done, LedgerError>> {
        let (reply, answer) = oneshot::channel();
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(Job { op, reply }).map_err(|_| ()),
            None => Err(()),
        };
        Box::pin(async move {
            sent.map_err(|_| LedgerError::Stopped)?;
            answer.await.map_err(|_| LedgerError::Stopped)?
        })
    }

    /// Submits `op` and reads its outcome with `pick` (a mismatch means the writer is
    /// broken: reported as stopped).
    fn submit_as<T: Send + 'static>(
        &self,
        op: Op,
        pick: fn(Done) -> Option<T>,
    ) -> BoxFuture<'static, Result<T, LedgerError>> {
        let done = self.submit(op);
        Box::pin(async move { pick(done.await?).ok_or(LedgerError::Stopped) })
    }

    fn settle_op(
        &self,
        client: &str,
        reservation: &str,
        settle: Settle,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<Settled, LedgerError>> {
        let op = Op::Settle {
            client: client.to_owned(),
            id: reservation.to_owned(),
            settle,
            now_ms,
        };
        self.submit_as(op, |d| match d {
            Done::Settled(s) => Some(s),
            _ => None,
        })
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, LedgerError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, LedgerError>> {
        let db = Arc::clone(&self.db);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(err)?
        })
    }
}

/// The writer: one transaction per batch of waiting changes, committed before any of
/// them is answered. Ends when the ledger is dropped.
fn write_loop(db: &Database, queue: &mpsc::Receiver<Job>, stats: &GroupStats) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        match apply_batch(db, &mut batch) {
            Ok(outcomes) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .changes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                // Nothing of the batch was committed: every request hears so.
                tracing::error!(error = %e, "the ledger could not commit");
                for job in batch {
                    let _ = job.reply.send(Err(LedgerError::Embedded(e.to_string())));
                }
            }
        }
    }
}

fn apply_batch(db: &Database, batch: &mut [Job]) -> Result<Vec<Done>, LedgerError> {
    let txn = db.begin_write().map_err(err)?;
    let outcomes = {
        let mut tables = Tables::open(&txn)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for job in batch.iter_mut() {
            let op = std::mem::replace(&mut job.op, Op::Prune(0));
            outcomes.push(tables.apply(op)?);
        }
        tables.meta.insert("seq", tables.seq).map_err(err)?;
        outcomes
    };
    txn.commit().map_err(err)?;
    Ok(outcomes)
}

struct Tables<'t> {
    accounts: Table<'t, &'static str, (u64, u64)>,
    journal: Table<'t, (&'static str, u64), &'static [u8]>,
    reservations: Table<'t, &'static str, &'static [u8]>,
    opened: Table<'t, &'static str, u64>,
    idempotency: Table<'t, (&'static str, &'static str), &'static [u8]>,
    expiry: Table<'t, (u64, &'static str, &'static str), ()>,
    meta: Table<'t, &'static str, u64>,
    /// The last sequence number used.
    seq: u64,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, LedgerError> {
        let meta = txn.open_table(META).map_err(err)?;
        let seq = meta.get("seq").map_err(err)?.map_or(0, |v| v.value());
        Ok(Tables {
            accounts: txn.open_table(ACCOUNTS).map_err(err)?,
            journal: txn.open_table(JOURNAL).map_err(err)?,
            reservations: txn.open_table(RESERVATIONS).map_err(err)?,
            opened: txn.open_table(OPENED).map_err(err)?,
            idempotency: txn.open_table(IDEMPOTENCY).map_err(err)?,
            expiry: txn.open_table(IDEMPOTENCY_EXPIRY).map_err(err)?,
            meta,
            seq,
        })
    }

    fn apply(&mut self, op: Op) -> Result<Done, LedgerError> {
        Ok(match op {
            Op::Reserve(reservation, now_ms) => Done::Reserved(self.reserve(reservation, now_ms)?),
            Op::Settle {
                client,
                id,
                settle,
                now_ms,
            } => Done::Settled(self.settle(&client, &id, &settle, now_ms)?),
            Op::Adjust(adjust) => Done::Adjusted(self.adjust(adjust)?),
            Op::Expire { now_ms, max } => Done::Count(self.expire(now_ms, max)?),
            Op::Claim(claim) => Done::Claimed(self.claim(claim)?),
            Op::Answer {
                client,
                key,
                answer,
                until,
            } => {
                self.answer(&client, &key, answer, until)?;
                Done::Unit
            }
            Op::Release { client, key } => {
                self.release(&client, &key)?;
                Done::Unit
            }
            Op::Prune(now_ms) => Done::Count(self.prune(now_ms)?),
        })
    }

    fn account(&self, client: &str) -> Result<Account, LedgerError> {
        Ok(self
            .accounts
            .get(client)
            .map_err(err)?
            .map_or_else(Account::default, |v| {
                let (available, held) = v.value();
                Account { available, held }
            }))
    }

    /// Stores the account and appends the movement under the next sequence number.
    fn record(&mut self, account: Account, mut movement: Movement) -> Result<(), LedgerError> {
        self.seq += 1;
        movement.seq = self.seq;
        movement.balance = account.available;
        self.accounts
            .insert(movement.client.as_str(), (account.available, account.held))
            .map_err(err)?;
        let bytes = serde_json::to_vec(&movement).map_err(corrupt)?;
        self.journal
            .insert((movement.client.as_str(), self.seq), bytes.as_slice())
            .map_err(err)?;
        Ok(())
    }

    fn reserve(&mut self, r: Reservation, now_ms: u64) -> Result<Reserved, LedgerError> {
        let mut account = self.account(&r.client)?;
        if account.available < r.amount {
            return Ok(Reserved::Short {
                balance: account.available,
            });
        }
        account.available -= r.amount;
        account.held += r.amount;
        let amount = signed(r.amount);
        let movement = Movement {
            kind: Kind::Reserve,
            amount: -amount,
            held_change: amount,
            reservation: Some(r.id.clone()),
            route: r.route.clone(),
            request_id: r.request_id.clone(),
            idempotency_key: r.idempotency_key.clone(),
            ..movement(&r.client, now_ms)
        };
        self.record(account, movement)?;
        let bytes = serde_json::to_vec(&r).map_err(corrupt)?;
        self.reservations
            .insert(r.id.as_str(), bytes.as_slice())
            .map_err(err)?;
        Ok(Reserved::Held {
            balance: account.available,
        })
    }

    fn settle(
        &mut self,
        client: &str,
        id: &str,
        settle: &Settle,
        now_ms: u64,
    ) -> Result<Settled, LedgerError> {
        let stored = match self.reservations.get(id).map_err(err)? {
            Some(bytes) => serde_json::from_slice::<Reservation>(bytes.value()).map_err(corrupt)?,
            None => return Ok(Settled::Gone),
        };
        if stored.client != client {
            return Ok(Settled::Gone);
        }
        self.reservations.remove(id).map_err(err)?;
        let mut account = self.account(client)?;
        let (kind, charged, back) = decide_settle(&mut account, stored.amount, settle);
        let reason = match settle {
            Settle::Void { reason } => Some(reason.clone()),
            Settle::Post { .. } => None,
        };
        let movement = Movement {
            kind,
            amount: back,
            held_change: -signed(stored.amount),
            reservation: Some(stored.id),
            route: stored.route,
            request_id: stored.request_id,
            idempotency_key: stored.idempotency_key,
            reason,
            ..movement(client, now_ms)
        };
        self.record(account, movement)?;
        Ok(Settled::Done {
            charged,
            balance: account.available,
        })
    }

    fn adjust(&mut self, a: Adjust) -> Result<Adjusted, LedgerError> {
        let mut account = self.account(&a.client)?;
        let opened = self.opened.get(a.client.as_str()).map_err(err)?.is_some();
        let (kind, amount) = match decide_adjust(&mut account, a.change, opened) {
            Ok(moved) => moved,
            Err(refused) => return Ok(refused),
        };
        let movement = Movement {
            kind,
            amount,
            reason: Some(a.reason),
            ..movement(&a.client, a.now_ms)
        };
        self.record(account, movement)?;
        if kind == Kind::Opening {
            self.opened
                .insert(a.client.as_str(), self.seq)
                .map_err(err)?;
        }
        Ok(Adjusted::Done {
            balance: account.available,
        })
    }

    fn expire(&mut self, now_ms: u64, max: usize) -> Result<u64, LedgerError> {
        // Open reservations are the requests in flight (and what dead gateways left):
        // few enough to read them all.
        let mut due = Vec::new();
        for item in self.reservations.iter().map_err(err)? {
            let (id, bytes) = item.map_err(err)?;
            let r: Reservation = serde_json::from_slice(bytes.value()).map_err(corrupt)?;
            if r.deadline <= now_ms {
                due.push(id.value().to_owned());
                if due.len() == max {
                    break;
                }
            }
        }
        let mut voided = 0;
        for id in due {
            let client = match self.reservations.get(id.as_str()).map_err(err)? {
                Some(bytes) => {
                    serde_json::from_slice::<Reservation>(bytes.value())
                        .map_err(corrupt)?
                        .client
                }
                None => continue,
            };
            let void = Settle::Void {
                reason: EXPIRED.to_owned(),
            };
            if let Settled::Done { .. } = self.settle(&client, &id, &void, now_ms)? {
                voided += 1;
            }
        }
        Ok(voided)
    }

    fn record_of(&self, client: &str, key: &str) -> Result<Option<IdempotencyRecord>, LedgerError> {
        match self.idempotency.get((client, key)).map_err(err)? {
            Some(bytes) => Ok(Some(
                serde_json::from_slice(bytes.value()).map_err(corrupt)?,
            )),
            None => Ok(None),
        }
    }

    fn put_record(
        &mut self,
        client: &str,
        key: &str,
        old: Option<&IdempotencyRecord>,
        record: &IdempotencyRecord,
    ) -> Result<(), LedgerError> {
        if let Some(old) = old {
            self.expiry.remove((old.until, client, key)).map_err(err)?;
        }
        let bytes = serde_json::to_vec(record).map_err(corrupt)?;
        self.idempotency
            .insert((client, key), bytes.as_slice())
            .map_err(err)?;
        self.expiry
            .insert((record.until, client, key), ())
            .map_err(err)?;
        Ok(())
    }

    fn claim(&mut self, c: Claim) -> Result<Claimed, LedgerError> {
        let old = self.record_of(&c.client, &c.key)?;
        if let Some(outcome) = old.as_ref().and_then(|r| super::judge_claim(r, &c)) {
            return Ok(outcome);
        }
        let record = IdempotencyRecord {
            fingerprint: c.fingerprint.clone(),
            until: c.hold_until,
            answer: None,
        };
        self.put_record(&c.client, &c.key, old.as_ref(), &record)?;
        Ok(Claimed::New)
    }

    fn answer(
        &mut self,
        client: &str,
        key: &str,
        answer: StoredAnswer,
        until: u64,
    ) -> Result<(), LedgerError> {
        let Some(old) = self.record_of(client, key)? else {
            return Ok(());
        };
        let record = IdempotencyRecord {
            fingerprint: old.fingerprint.clone(),
            until,
            answer: Some(answer),
        };
        self.put_record(client, key, Some(&old), &record)
    }

    fn release(&mut self, client: &str, key: &str) -> Result<(), LedgerError> {
        if let Some(old) = self.record_of(client, key)? {
            if old.answer.is_none() {
                self.idempotency.remove((client, key)).map_err(err)?;
                self.expiry.remove((old.until, client, key)).map_err(err)?;
            }
        }
        Ok(())
    }

    fn prune(&mut self, now_ms: u64) -> Result<u64, LedgerError> {
        let mut due = Vec::new();
        for item in self
            .expiry
            .range(..(now_ms.saturating_add(1), "", ""))
            .map_err(err)?
            .take(MAX_BATCH)
        {
            let (key, _) = item.map_err(err)?;
            let (until, client, key) = key.value();
            due.push((until, client.to_owned(), key.to_owned()));
        }
        for (until, client, key) in &due {
            self.expiry
                .remove((*until, client.as_str(), key.as_str()))
                .map_err(err)?;
            self.idempotency
                .remove((client.as_str(), key.as_str()))
                .map_err(err)?;
        }
        Ok(due.len() as u64)
    }
}

/// The outcome of a change that counts.
fn count(done: Done) -> Option<u64> {
    match done {
        Done::Count(n) => Some(n),
        _ => None,
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A movement of `client` at `now_ms` with nothing else set yet.
fn movement(client: &str, now_ms: u64) -> Movement {
    Movement {
        seq: 0,
        client: client.to_owned(),
        kind: Kind::Credit,
        amount: 0,
        held_change: 0,
        balance: 0,
        at: now_ms,
        reservation: None,
        route: None,
        request_id: None,
        idempotency_key: None,
        reason: None,
    }
}

fn read_journal(
    db: &Database,
    client: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Page, LedgerError> {
    let txn = db.begin_read().map_err(err)?;
    let journal = txn.open_table(JOURNAL).map_err(err)?;
    let end = before.unwrap_or(u64::MAX);
    let mut movements = Vec::new();
    let mut next = None;
    for item in journal
        .range((client, 0)..(client, end))
        .map_err(err)?
        .rev()
    {
        let (_, bytes) = item.map_err(err)?;
        if movements.len() == limit {
            next = movements.last().map(|m: &Movement| m.seq);
            break;
        }
        movements.push(serde_json::from_slice(bytes.value()).map_err(corrupt)?);
    }
    Ok(Page { movements, next })
}

fn verify_all(db: &Database) -> Result<Report, LedgerError> {
    let txn = db.begin_read().map_err(err)?;
    let accounts = txn.open_table(ACCOUNTS).map_err(err)?;
    let journal = txn.open_table(JOURNAL).map_err(err)?;
    let reservations = txn.open_table(RESERVATIONS).map_err(err)?;
    let mut open: HashMap<String, u64> = HashMap::new();
    let mut report = Report::default();
    for item in reservations.iter().map_err(err)? {
        let (_, bytes) = item.map_err(err)?;
        let r: Reservation = serde_json::from_slice(bytes.value()).map_err(corrupt)?;
        *open.entry(r.client).or_default() += r.amount;
        report.open_reservations += 1;
    }
    for item in accounts.iter().map_err(err)? {
        let (client, value) = item.map_err(err)?;
        let client = client.value().to_owned();
        let (available, held) = value.value();
        let mut movements = Vec::new();
        for entry in journal
            .range((client.as_str(), 0)..=(client.as_str(), u64::MAX))
            .map_err(err)?
        {
            let (_, bytes) = entry.map_err(err)?;
            movements.push(serde_json::from_slice::<Movement>(bytes.value()).map_err(corrupt)?);
        }
        report.clients += 1;
        report.movements += movements.len() as u64;
        let held_open = open.get(&client).copied().unwrap_or(0);
        report.problems.extend(check_client(
            &client,
            Account { available, held },
            &movements,
            held_open,
        ));
    }
    Ok(report)
}

impl Ledger for EmbeddedLedger {
    fn reserve(
        &self,
        _worker: usize,
        reservation: Reservation,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Reserved, LedgerError>> {
        self.submit_as(Op::Reserve(reservation, now_ms), |d| match d {
            Done::Reserved(r) => Some(r),
            _ => None,
        })
    }

    fn settle(
        &self,
        _worker: usize,
        client: &str,
        reservation: &str,
        settle: Settle,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Settled, LedgerError>> {
        self.settle_op(client, reservation, settle, now_ms)
    }

    fn settle_detached(
        &self,
        _worker: usize,
        client: &str,
        reservation: &str,
        settle: Settle,
        now_ms: u64,
    ) -> Option<BoxFuture<'static, Result<Settled, LedgerError>>> {
        Some(self.settle_op(client, reservation, settle, now_ms))
    }

    fn adjust(
        &self,
        _worker: usize,
        adjust: Adjust,
    ) -> BoxFuture<'_, Result<Adjusted, LedgerError>> {
        self.submit_as(Op::Adjust(adjust), |d| match d {
            Done::Adjusted(a) => Some(a),
            _ => None,
        })
    }

    fn account(&self, _worker: usize, client: &str) -> BoxFuture<'_, Result<Account, LedgerError>> {
        let client = client.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let accounts = txn.open_table(ACCOUNTS).map_err(err)?;
            Ok(accounts
                .get(client.as_str())
                .map_err(err)?
                .map_or_else(Account::default, |v| {
                    let (available, held) = v.value();
                    Account { available, held }
                }))
        })
    }

    fn journal(
        &self,
        _worker: usize,
        client: &str,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, LedgerError>> {
        let client = client.to_owned();
        self.read(move |db| read_journal(db, &client, before, limit))
    }

    fn expire(
        &self,
        _worker: usize,
        now_ms: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<u64, LedgerError>> {
        self.submit_as(Op::Expire { now_ms, max }, count)
    }

    fn claim(&self, _worker: usize, claim: Claim) -> BoxFuture<'_, Result<Claimed, LedgerError>> {
        self.submit_as(Op::Claim(claim), |d| match d {
            Done::Claimed(c) => Some(c),
            _ => None,
        })
    }

    fn answer(
        &self,
        _worker: usize,
        client: &str,
        key: &str,
        answer: StoredAnswer,
        until: u64,
    ) -> BoxFuture<'_, Result<(), LedgerError>> {
        let done = self.submit(Op::Answer {
            client: client.to_owned(),
            key: key.to_owned(),
            answer,
            until,
        });
        Box::pin(async move { done.await.map(|_| ()) })
    }

    fn release(
        &self,
        _worker: usize,
        client: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<(), LedgerError>> {
        let done = self.submit(Op::Release {
            client: client.to_owned(),
            key: key.to_owned(),
        });
        Box::pin(async move { done.await.map(|_| ()) })
    }

    fn prune(&self, _worker: usize, now_ms: u64) -> BoxFuture<'_, Result<u64, LedgerError>> {
        self.submit_as(Op::Prune(now_ms), count)
    }

    fn verify(&self, _worker: usize) -> BoxFuture<'_, Result<Report, LedgerError>> {
        self.read(verify_all)
    }
}
