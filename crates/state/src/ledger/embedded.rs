//! The ledger in a local file: the default for a single instance.
//!
//! Decisions are made in memory, under one lock: every balance, open reservation and
//! opened client is held in a [`Book`], so reserving is a map lookup and no interleaving
//! can take a balance below zero. Each movement is then made durable through a
//! write-ahead log ([`wal`]): one writer thread appends every record waiting when it is
//! free and makes them durable with one direct, synchronous write (`O_DIRECT |
//! O_DSYNC`; a write and an `fdatasync` where the file system refuses that: see
//! [`wal::Segment`]) (group commit; under load it first
//! holds a small group open for more, see [`gather`]). A reservation is answered only
//! once its record is on disk (the writer hands each runtime thread's waiters to a
//! relay task on that thread, one cross-thread wake per thread and group: see
//! [`Relay`]), so a request is forwarded only after what
//! it holds would survive `kill -9`. Settlements and sweeps are logged the same way but
//! not waited for (the reservation is durable already; one lost to a crash expires,
//! which refunds it). With [`Options::sync_every`] the log is synced on a timer
//! instead and no request waits for it: each change writes its own records to the
//! segment before it returns (a `write`, no sync), so a `kill -9` still loses nothing,
//! and only a crash of the machine forgives the charges of the last interval.
//!
//! A keeper thread checkpoints the log into the redb file ([`tables`]) every half
//! second, in one transaction, and retires the log segments the checkpoint covered (the
//! newest is written over again as a later segment: see [`wal::recycle`]).
//! Reading the file and then the log's later records rebuilds the ledger on open. The
//! keeper also keeps the idempotency records (rarely written, so straight in redb, a
//! batch per commit) and serves journal reads and `verify` from the file.
//!
//! Why not a redb transaction per batch, as before: on the 2-core VM a durable redb
//! commit copied and wrote several B-tree pages and cost ~19 µs of CPU per metered
//! request, and an `fdatasync` alone costs 50-100 µs of CPU (`python3` loop, 2,000
//! syncs). A log append is one small write per batch; the page work happens once per
//! checkpoint for thousands of movements.

mod tables;
mod wal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redb::Database;
use tokio::sync::oneshot;
use tollgate_policy::snapshot::LedgerSync;

use self::tables::{account_after, corrupt, effect, err, Effect, KeyDone, KeyOp};
use self::wal::{Line, Pending, Segment, Waiter, Writer};
use super::{
    decide_adjust, decide_settle, Account, Adjust, Adjusted, Claim, Claimed, Kind, Ledger,
    LedgerError, Movement, Page, Report, Reservation, Reserved, Settle, Settled, StoredAnswer,
    EXPIRED,
};
use crate::BoxFuture;

/// How often the log is checkpointed into the file (when anything moved).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// A checkpoint starts early when this many movements wait for one.
const CHECKPOINT_LINES: usize = 100_000;
/// How often the keeper looks whether a checkpoint is due.
const KEEPER_TICK: Duration = Duration::from_millis(50);
/// Most idempotency changes committed together.
const MAX_KEY_BATCH: usize = 1024;
/// With `sync = "before_forwarding"`: how long the writer may hold a small group open
/// for more records while records keep coming (see [`gather`]).
const GATHER_FOR: Duration = Duration::from_micros(300);
/// A group of this many records is synced at once.
const GROUP_TARGET: u64 = 32;
/// A group is held open only after one of at least this many records: a lightly loaded
/// gateway never waits.
const GATHER_FROM: u64 = 8;

/// The book's maps, keyed by client and reservation ids: foldhash, seeded per process
/// (SipHash was about 2% of a metered request's instructions, for a few short keys).
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// How an embedded ledger makes movements durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `None`: a reservation is answered once its record is on disk, every record
    /// waiting at a sync sharing it (group commit). `Some(every)`: records are written
    /// as they are made and synced once per `every`; only operators' adjustments wait
    /// for the sync. A `kill -9` loses nothing; a crash of the machine forgives the
    /// charges of the last interval and never charges twice.
    pub sync_every: Option<Duration>,
    /// How often the log is checkpointed into the file.
    pub checkpoint_every: Duration,
    /// With `sync_every: None`: how long a small group may wait for more records once
    /// the last group had [`Options::gather_from`] or more (the writer's `gather`);
    /// zero syncs every group at once.
    pub gather_for: Duration,
    /// The size of the last group from which the next one gathers.
    pub gather_from: u64,
}

impl Options {
    /// What `[credits] sync` asks for.
    pub fn for_sync(sync: LedgerSync) -> Options {
        Options {
            sync_every: match sync {
                LedgerSync::BeforeForwarding => None,
                LedgerSync::Interval(every) => Some(every),
            },
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync_every: None,
            checkpoint_every: CHECKPOINT_EVERY,
            gather_for: GATHER_FOR,
            gather_from: GATHER_FROM,
        }
    }
}

/// How the group commit is doing: log writes, and the movements they carried.
#[derive(Debug, Default)]
pub struct GroupStats {
    pub commits: AtomicU64,
    pub changes: AtomicU64,
}

/// The ledger as decisions see it.
struct Book {
    accounts: Map<String, Account>,
    opened: Set<String>,
    reservations: Map<String, Reservation>,
    /// The last sequence number given out.
    seq: u64,
    /// Movements since the last checkpoint began, oldest first.
    recent: Vec<Line>,
    /// The movements a checkpoint is writing (readable here until it is in the file).
    checkpointing: Arc<Vec<Line>>,
    /// The last checkpoint's emptied vector, reused for `recent`: growing a fresh one
    /// every half second cost page faults and copies on the request path.
    spare: Vec<Line>,
    /// The last sequence number the file holds.
    checkpointed: u64,
    wal: Pending,
    /// Log segments a checkpoint will cover: (path, last sequence number in them).
    retired: Vec<(PathBuf, u64)>,
    /// The relays of the threads changes wait on (see [`Relay`]), by thread.
    relays: Vec<(std::thread::ThreadId, Relay)>,
    /// The log could not be written: the book is ahead of the disk, so every change is
    /// refused until a restart rebuilds it from what is durable.
    failed: Option<String>,
    stopping: bool,
}

/// Wakes, from its own thread, the changes a runtime thread waits on: the writer sends a
/// synced group's waiters in one message per thread (one cross-thread wake, an
/// `eventfd` write to tokio) instead of waking each task from the writer's thread,
/// which cost one such write per metered request.
type Relay = tokio::sync::mpsc::UnboundedSender<Vec<Waiter>>;

/// A relay's task, on the runtime of the thread it serves: a send from there wakes
/// each waiting task as a local one.
async fn relay(mut groups: tokio::sync::mpsc::UnboundedReceiver<Vec<Waiter>>) {
    while let Some(group) = groups.recv().await {
        for waiter in group {
            let _ = waiter.send(Ok(()));
        }
    }
}

/// Answers every waiter of a synced group: through its thread's relay where it has a
/// live one, else directly.
fn answer(waiters: Vec<(Option<usize>, Waiter)>, relays: &[Relay]) {
    let mut groups: Vec<Vec<Waiter>> = relays.iter().map(|_| Vec::new()).collect();
    for (relay, waiter) in waiters {
        match relay.and_then(|i| groups.get_mut(i)) {
            Some(group) => group.push(waiter),
            None => {
                let _ = waiter.send(Ok(()));
            }
        }
    }
    for (relay, group) in relays.iter().zip(groups) {
        if group.is_empty() {
            continue;
        }
        // A relay whose runtime has ended hands its group back.
        if let Err(tokio::sync::mpsc::error::SendError(group)) = relay.send(group) {
            for waiter in group {
                let _ = waiter.send(Ok(()));
            }
        }
    }
}

impl Book {
    /// The index of this thread's relay, started on the current runtime when it has
    /// none (or its runtime ended); `None` outside a runtime.
    fn relay_here(&mut self) -> Option<usize> {
        let thread = std::thread::current().id();
        let at = self.relays.iter().position(|(t, _)| *t == thread);
        if let Some(i) = at.filter(|i| !self.relays[*i].1.is_closed()) {
            return Some(i);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        drop(runtime.spawn(relay(rx)));
        match at {
            Some(i) => {
                self.relays[i] = (thread, tx);
                Some(i)
            }
            None => {
                self.relays.push((thread, tx));
                Some(self.relays.len() - 1)
            }
        }
    }

    /// Numbers a movement decided now, stores the account after it and logs it.
    fn record(&mut self, account: Account, mut line: Line) {
        self.seq += 1;
        line.movement.seq = self.seq;
        line.movement.balance = account.available;
        match self.accounts.get_mut(&line.movement.client) {
            Some(a) => *a = account,
            None => {
                self.accounts.insert(line.movement.client.clone(), account);
            }
        }
        self.wal.append(&line);
        self.recent.push(line);
    }

    /// Applies a movement read back from the log (it was decided before a stop).
    fn replay(&mut self, line: Line) {
        let m = &line.movement;
        let account = self.accounts.entry(m.client.clone()).or_default();
        *account = account_after(&line, *account);
        match effect(&line) {
            Effect::Opens(r) => {
                self.reservations.insert(r.id.clone(), r);
            }
            Effect::Closes(id) => {
                self.reservations.remove(id);
            }
            Effect::Opening => {
                self.opened.insert(m.client.clone());
            }
            Effect::Nothing => {}
        }
        self.seq = m.seq;
        self.recent.push(line);
    }

    fn reserve(&mut self, r: Reservation, now_ms: u64) -> Reserved {
        let mut account = self.accounts.get(&r.client).copied().unwrap_or_default();
        if account.available < r.amount {
            return Reserved::Short {
                balance: account.available,
            };
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
        let deadline = r.deadline;
        self.record(account, Line { movement, deadline });
        self.reservations.insert(r.id.clone(), r);
        Reserved::Held {
            balance: account.available,
        }
    }

    fn settle(&mut self, client: &str, id: &str, settle: &Settle, now_ms: u64) -> Settled {
        if self.reservations.get(id).is_none_or(|r| r.client != client) {
            return Settled::Gone;
        }
        let Some(stored) = self.reservations.remove(id) else {
            return Settled::Gone;
        };
        let mut account = self.accounts.get(client).copied().unwrap_or_default();
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
        self.record(
            account,
            Line {
                movement,
                deadline: 0,
            },
        );
        Settled::Done {
            charged,
            balance: account.available,
        }
    }

    fn adjust(&mut self, a: Adjust) -> Adjusted {
        let mut account = self.accounts.get(&a.client).copied().unwrap_or_default();
        let opened = self.opened.contains(&a.client);
        let (kind, amount) = match decide_adjust(&mut account, a.change, opened) {
            Ok(moved) => moved,
            Err(refused) => return refused,
        };
        if kind == Kind::Opening {
            self.opened.insert(a.client.clone());
        }
        let movement = Movement {
            kind,
            amount,
            reason: Some(a.reason),
            request_id: a.request_id,
            ..movement(&a.client, a.now_ms)
        };
        self.record(
            account,
            Line {
                movement,
                deadline: 0,
            },
        );
        Adjusted::Done {
            balance: account.available,
        }
    }

    fn expire(&mut self, now_ms: u64, max: usize) -> u64 {
        let due: Vec<(String, String)> = self
            .reservations
            .values()
            .filter(|r| r.deadline <= now_ms)
            .take(max)
            .map(|r| (r.client.clone(), r.id.clone()))
            .collect();
        let void = Settle::Void {
            reason: EXPIRED.to_owned(),
        };
        let mut voided = 0;
        for (client, id) in due {
            if let Settled::Done { .. } = self.settle(&client, &id, &void, now_ms) {
                voided += 1;
            }
        }
        voided
    }
}

/// What the threads and the handle share.
struct Inner {
    book: Mutex<Book>,
    /// Wakes the log writer.
    wake: Condvar,
    /// The log segment being written. Locked while the book is still held, so records
    /// reach it in the order they were numbered; never held across an `fdatasync`
    /// (a direct write, durable as it returns, is made under it: only the writer
    /// writes to such a segment).
    segment: Mutex<Segment>,
    db: Database,
    /// The redb file's path; the log's segments are named after it.
    path: PathBuf,
    stats: GroupStats,
    options: Options,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_segment(&self) -> MutexGuard<'_, Segment> {
        self.segment.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The disk refused a log write: what the book holds may never be durable. Refuses
    /// everything from now on (a restart rebuilds from what is) and answers everyone
    /// waiting for the disk.
    fn fail(&self, e: &std::io::Error, mut waiters: Vec<(Option<usize>, Waiter)>) {
        tracing::error!(error = %e, "the ledger log cannot be written: metering stops until a restart");
        let failure = format!("the ledger log cannot be written: {e}");
        let mut book = self.lock();
        book.failed = Some(failure.clone());
        waiters.append(&mut book.wal.waiters);
        drop(book);
        self.wake.notify_all();
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(LedgerError::Embedded(failure.clone())));
        }
    }

    /// Runs `decide` on the book. What it logged is written by the writer; with
    /// `durable`, the returned receiver says when it is on disk. With
    /// `sync = "interval"`, a change nobody waits for writes its records itself before
    /// it returns: a `kill -9` then loses nothing (the kernel has them), and only a
    /// crash of the machine forgives what the last interval's sync had not covered.
    fn change<T>(
        &self,
        durable: bool,
        decide: impl FnOnce(&mut Book) -> T,
    ) -> Result<(T, Option<Durable>), LedgerError> {
        let mut book = self.lock();
        if let Some(failure) = &book.failed {
            return Err(LedgerError::Embedded(failure.clone()));
        }
        if book.stopping {
            return Err(LedgerError::Stopped);
        }
        let before = book.wal.bytes.len();
        let decided = decide(&mut book);
        let appended = book.wal.bytes.len() != before;
        if appended && !durable && self.options.sync_every.is_some() {
            let rotate = book.wal.rotate_at.take();
            let records = std::mem::take(&mut book.wal.records);
            book.wal.unsynced += records;
            let wake = book.wal.writer == Writer::Idle;
            let mut segment = self.lock_segment();
            // The book gets the segment's emptied buffer: neither is allocated (nor
            // grown from nothing) per change.
            std::mem::swap(&mut book.wal.bytes, &mut segment.scratch);
            drop(book);
            let mut bytes = std::mem::take(&mut segment.scratch);
            // A rotation here syncs the segment it leaves: once per checkpoint.
            let written = segment.write(&bytes, rotate.map(|(at, _)| at));
            bytes.clear();
            segment.scratch = bytes;
            drop(segment);
            if wake {
                self.wake.notify_one();
            }
            return match written {
                Ok(retired) => {
                    if let (Some(path), Some((_, upto))) = (retired, rotate) {
                        self.lock().retired.push((path, upto));
                    }
                    Ok((decided, None))
                }
                Err(e) => {
                    self.fail(&e, Vec::new());
                    Err(LedgerError::Embedded(format!(
                        "the ledger log cannot be written: {e}"
                    )))
                }
            };
        }
        let durable = (durable && appended).then(|| {
            let (tx, rx) = oneshot::channel();
            let relay = book.relay_here();
            book.wal.waiters.push((relay, tx));
            Durable(rx)
        });
        let wake = appended
            && match book.wal.writer {
                Writer::Idle => true,
                Writer::Timer => durable.is_some(),
                Writer::Gathering => book.wal.records >= GROUP_TARGET,
                Writer::Writing => false,
            };
        drop(book);
        if wake {
            self.wake.notify_one();
        }
        Ok((decided, durable))
    }
}

/// A change waiting for its log record to be on disk.
struct Durable(oneshot::Receiver<Result<(), LedgerError>>);

impl Durable {
    async fn wait(durable: Option<Durable>) -> Result<(), LedgerError> {
        match durable {
            None => Ok(()),
            Some(Durable(rx)) => rx.await.map_err(|_| LedgerError::Stopped)?,
        }
    }
}

/// Work for the keeper thread.
enum Job {
    Keys(KeyOp, oneshot::Sender<Result<KeyDone, LedgerError>>),
    Checkpoint(oneshot::Sender<Result<(), LedgerError>>),
}

/// A ledger in a local file.
pub struct EmbeddedLedger {
    inner: Arc<Inner>,
    /// `None` once dropping: the keeper then checkpoints and ends.
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedLedger {
    /// Waits for the writer to make every logged movement durable (a graceful stop
    /// loses no settlement) and for a last checkpoint, then lets go of the file.
    fn drop(&mut self) {
        self.inner.lock().stopping = true;
        self.inner.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.jobs.take();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLedger").finish_non_exhaustive()
    }
}

impl EmbeddedLedger {
    /// Opens (or creates) the ledger at `path`, creating its directory: reads the file,
    /// replays the log's later records, checkpoints them, and starts the writer and
    /// the keeper.
    pub fn open(path: &Path) -> Result<EmbeddedLedger, LedgerError> {
        EmbeddedLedger::open_with(path, Options::default())
    }

    /// [`EmbeddedLedger::open`] with other [`Options`].
    pub fn open_with(path: &Path, options: Options) -> Result<EmbeddedLedger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        // The file's lock is taken first: the log is only touched by its holder.
        let db = crate::open_redb(path).map_err(err)?;
        let loaded = tables::load(&db)?;
        let mut book = Book {
            accounts: loaded.accounts,
            opened: loaded.opened,
            reservations: loaded.reservations,
            seq: loaded.seq,
            recent: Vec::new(),
            checkpointing: Arc::default(),
            spare: Vec::new(),
            checkpointed: loaded.seq,
            wal: Pending::default(),
            retired: Vec::new(),
            relays: Vec::new(),
            failed: None,
            stopping: false,
        };
        let segments = wal::segments(path).map_err(err)?;
        for (_, segment) in &segments {
            let bytes = std::fs::read(segment).map_err(err)?;
            // A segment may be a recycled file ([`wal::recycle`]): after the records
            // written to it this time come older ones, all in the file already.
            let (mut replayed, mut skipped) = (false, false);
            for line in wal::decode_all(&bytes) {
                let seq = line.movement.seq;
                if seq <= book.seq {
                    if replayed {
                        break; // the recycled file's older records
                    }
                    skipped = true; // covered by a checkpoint (or the head was lost: below)
                    continue;
                }
                if seq != book.seq + 1 {
                    if skipped {
                        // Older records where this time's first ones should be: those
                        // never reached the disk, so nothing after them was made
                        // durable (groups are written in order, each once the one
                        // before is durable) or acknowledged.
                        break;
                    }
                    return Err(corrupt(format!(
                        "the log {} jumps from movement {} to {seq}",
                        segment.display(),
                        book.seq
                    )));
                }
                replayed = true;
                book.replay(line);
            }
        }
        tables::checkpoint(&db, &book.recent)?;
        book.recent.clear();
        book.checkpointed = book.seq;
        // Every replayed segment goes, the newest too: after a crash it may hold
        // records past the last one replayed (a group torn mid-write: never
        // acknowledged, and numbered above everything the file holds). As a recycled
        // file it would keep them, and a later write ending where one begins would
        // make the next start replay it as a movement that never happened.
        for (_, segment) in &segments {
            std::fs::remove_file(segment).map_err(err)?;
        }
        let next = segments.last().map_or(1, |(n, _)| n + 1);
        let segment = Segment::create(path, next, options.sync_every.is_none()).map_err(err)?;

        let inner = Arc::new(Inner {
            book: Mutex::new(book),
            wake: Condvar::new(),
            segment: Mutex::new(segment),
            db,
            path: path.to_path_buf(),
            stats: GroupStats::default(),
            options,
        });
        let (jobs, queue) = mpsc::channel();
        let writer_inner = Arc::clone(&inner);
        let writer = std::thread::Builder::new()
            .name("tollgate-ledger-log".into())
            .spawn(move || write_loop(&writer_inner))
            .map_err(err)?;
        let keeper_inner = Arc::clone(&inner);
        let keeper = std::thread::Builder::new()
            .name("tollgate-ledger-file".into())
            .spawn(move || keep_loop(&keeper_inner, &queue))
            .map_err(err)?;
        Ok(EmbeddedLedger {
            inner,
            jobs: Some(jobs),
            writer: Some(writer),
            keeper: Some(keeper),
        })
    }

    pub fn stats(&self) -> &GroupStats {
        &self.inner.stats
    }

    fn send(&self, job: Job) -> Result<(), LedgerError> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|_| LedgerError::Stopped),
            None => Err(LedgerError::Stopped),
        }
    }

    fn keys(&self, op: KeyOp) -> BoxFuture<'static, Result<KeyDone, LedgerError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Job::Keys(op, reply));
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| LedgerError::Stopped)?
        })
    }

    fn settle_now(
        &self,
        client: &str,
        reservation: &str,
        settle: &Settle,
        now_ms: u64,
    ) -> BoxFuture<'static, Result<Settled, LedgerError>> {
        let settled = self
            .inner
            .change(false, |book| {
                book.settle(client, reservation, settle, now_ms)
            })
            .map(|(settled, _)| settled);
        Box::pin(std::future::ready(settled))
    }
}

/// The writer: takes every record appended since its last write, writes and syncs
/// them (with `sync = "interval"`, also what changes wrote themselves), then answers
/// whoever waits for them. Ends once stopping and nothing is left, or once the log has
/// failed.
fn write_loop(inner: &Inner) {
    let mut bytes = Vec::new();
    let mut last_sync = Instant::now();
    // Records the last write carried: how fast they arrive (see [`gather`]).
    let mut last_group = 0;
    // The relays the last group's waiters were sent through (kept: cloned per group).
    let mut relays: Vec<Relay> = Vec::new();
    loop {
        let (rotate, waiters, records, mut segment) = {
            let mut book = inner.lock();
            loop {
                if book.failed.is_some() {
                    return;
                }
                let pending = !book.wal.bytes.is_empty()
                    || book.wal.rotate_at.is_some()
                    || book.wal.unsynced > 0;
                if !book.wal.waiters.is_empty() || (pending && book.stopping) {
                    break;
                }
                if pending {
                    let Some(every) = inner.options.sync_every else {
                        break;
                    };
                    let due = last_sync + every;
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    book.wal.writer = Writer::Timer;
                    book = inner
                        .wake
                        .wait_timeout(book, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    continue;
                }
                if book.stopping {
                    return;
                }
                book.wal.writer = Writer::Idle;
                book = inner
                    .wake
                    .wait(book)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if inner.options.sync_every.is_none() {
                book = gather(inner, book, last_group);
                if book.failed.is_some() {
                    return;
                }
            }
            book.wal.writer = Writer::Writing;
            std::mem::swap(&mut bytes, &mut book.wal.bytes);
            let records =
                std::mem::take(&mut book.wal.records) + std::mem::take(&mut book.wal.unsynced);
            let rotate = book.wal.rotate_at.take();
            let waiters = std::mem::take(&mut book.wal.waiters);
            if waiters.iter().any(|(relay, _)| relay.is_some()) {
                relays.clear();
                relays.extend(book.relays.iter().map(|(_, r)| r.clone()));
            }
            // Taken before the book is let go: a change that wrote its own records
            // counted in `unsynced` has finished writing them once this is ours.
            (rotate, waiters, records, inner.lock_segment())
        };
        let written = segment.write(&bytes, rotate.map(|(at, _)| at));
        // A segment written directly is durable already; else it is synced here, with
        // the segment let go (interval-mode changes write to it meanwhile).
        let file = (!segment.syncs_itself()).then(|| segment.file());
        drop(segment);
        let synced = written.and_then(|retired| match file {
            Some(file) => file.sync_data().map(|()| retired),
            None => Ok(retired),
        });
        last_sync = Instant::now();
        bytes.clear();
        match synced {
            Ok(retired) => {
                last_group = records;
                inner.stats.commits.fetch_add(1, Ordering::Relaxed);
                inner.stats.changes.fetch_add(records, Ordering::Relaxed);
                if let (Some(path), Some((_, upto))) = (retired, rotate) {
                    inner.lock().retired.push((path, upto));
                }
            }
            Err(e) => {
                inner.fail(&e, waiters);
                return;
            }
        }
        answer(waiters, &relays);
    }
}

/// Holds a small group open for up to [`Options::gather_for`], or until it has
/// [`GROUP_TARGET`] records, when the last group carried [`Options::gather_from`] or
/// more: as PostgreSQL's `commit_delay` does when `commit_siblings` are active.
///
/// Each log write costs the machine the same CPU whatever it carries (on the 2-core
/// VM ~25 µs for a direct write, ~40-60 µs for a buffered one and its `fdatasync`).
/// Syncing whenever the disk was free made groups of ~10 records under load (two per
/// metered request), and the syncs took a large share of the machine from the requests.
/// The last group's size says how fast records arrive: a lightly loaded gateway (groups
/// of one or two) syncs at once, as before, and so does one whose reservations are held
/// long at a slow backend while few new ones come (counting open reservations instead
/// made each of those wait out the delay for a group that would not fill). Groups of
/// 30-40 records gave the most requests/s under the 50-connection benchmark; larger
/// ones kept requests waiting while the CPU idled.
fn gather<'a>(
    inner: &'a Inner,
    mut book: MutexGuard<'a, Book>,
    last_group: u64,
) -> MutexGuard<'a, Book> {
    if last_group < inner.options.gather_from {
        return book;
    }
    let until = Instant::now() + inner.options.gather_for;
    loop {
        if book.wal.records >= GROUP_TARGET || book.stopping || book.failed.is_some() {
            return book;
        }
        let now = Instant::now();
        if now >= until {
            return book;
        }
        book.wal.writer = Writer::Gathering;
        book = inner
            .wake
            .wait_timeout(book, until - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// The keeper: idempotency changes (a batch per commit), checkpoints when due or asked
/// for, and a last one when the ledger is dropped.
fn keep_loop(inner: &Inner, queue: &mpsc::Receiver<Job>) {
    let mut last = Instant::now();
    loop {
        match queue.recv_timeout(KEEPER_TICK) {
            Ok(first) => {
                let mut keys = Vec::new();
                let mut asked = Vec::new();
                let mut next = Some(first);
                while let Some(job) = next.take() {
                    match job {
                        Job::Keys(op, reply) => keys.push((op, reply)),
                        Job::Checkpoint(reply) => asked.push(reply),
                    }
                    if keys.len() < MAX_KEY_BATCH {
                        next = queue.try_recv().ok();
                    }
                }
                if !keys.is_empty() {
                    let (ops, replies): (Vec<_>, Vec<_>) = keys.into_iter().unzip();
                    match tables::apply_keys(&inner.db, ops) {
                        Ok(outcomes) => {
                            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(Ok(outcome));
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the ledger cannot keep idempotency records");
                            for reply in replies {
                                let _ = reply.send(Err(LedgerError::Embedded(e.to_string())));
                            }
                        }
                    }
                }
                if !asked.is_empty() {
                    let outcome = checkpoint(inner).map_err(|e| e.to_string());
                    last = Instant::now();
                    for reply in asked {
                        let _ = reply.send(outcome.clone().map_err(LedgerError::Embedded));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(e) = checkpoint(inner) {
                    tracing::warn!(error = %e, "the last checkpoint failed; the log replays at the next start");
                }
                return;
            }
        }
        let waiting = inner.lock().recent.len();
        if waiting >= CHECKPOINT_LINES
            || (waiting > 0 && last.elapsed() >= inner.options.checkpoint_every)
        {
            if let Err(e) = checkpoint(inner) {
                tracing::error!(error = %e, "the ledger cannot checkpoint; the log keeps everything meanwhile");
            }
            last = Instant::now();
        }
    }
}

/// Copies the movements logged since the last checkpoint into the file, asks the
/// writer to start a new segment after them, and deletes the segments the file now
/// covers.
fn checkpoint(inner: &Inner) -> Result<(), LedgerError> {
    let taken = {
        let mut book = inner.lock();
        if book.recent.is_empty() {
            None
        } else {
            let spare = std::mem::take(&mut book.spare);
            let lines = Arc::new(std::mem::replace(&mut book.recent, spare));
            book.checkpointing = Arc::clone(&lines);
            let upto = book.seq;
            if book.wal.rotate_at.is_none() {
                book.wal.rotate_at = Some((book.wal.bytes.len(), upto));
            }
            let wake = book.wal.writer == Writer::Idle;
            Some((lines, upto, wake))
        }
    };
    let mut result = Ok(());
    if let Some((lines, upto, wake)) = taken {
        if wake {
            inner.wake.notify_one();
        }
        result = tables::checkpoint(&inner.db, &lines);
        let mut book = inner.lock();
        book.checkpointing = Arc::default();
        match &result {
            Ok(()) => {
                book.checkpointed = upto;
                // A journal read may still hold the lines; then they are simply freed.
                if let Ok(mut emptied) = Arc::try_unwrap(lines) {
                    drop(book);
                    emptied.clear();
                    let mut book = inner.lock();
                    if book.spare.capacity() < emptied.capacity() {
                        book.spare = emptied;
                    }
                }
            }
            Err(_) => {
                // Not in the file: they wait for the next checkpoint, in order.
                let mut back = Vec::clone(&lines);
                back.append(&mut book.recent);
                book.recent = back;
            }
        }
    }
    let covered: Vec<PathBuf> = {
        let mut book = inner.lock();
        let upto = book.checkpointed;
        let (covered, kept) = std::mem::take(&mut book.retired)
            .into_iter()
            .partition(|(_, last)| *last <= upto);
        book.retired = kept;
        covered.into_iter().map(|(path, _)| path).collect()
    };
    // The newest covered segment becomes the next one's file; older ones go.
    let mut covered = covered.into_iter().rev();
    if let Some(path) = covered.next() {
        if let Err(e) = wal::recycle(&inner.path, &path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot keep a checkpointed log segment for reuse");
            let _ = std::fs::remove_file(&path);
        }
    }
    for path in covered {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot delete a checkpointed log segment");
        }
    }
    result
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

fn key_outcome<T>(pick: fn(KeyDone) -> Option<T>, done: KeyDone) -> Result<T, LedgerError> {
    pick(done).ok_or(LedgerError::Stopped)
}

impl Ledger for EmbeddedLedger {
    fn group_commits(&self) -> Option<(u64, u64)> {
        let stats = &self.inner.stats;
        Some((
            stats.commits.load(Ordering::Relaxed),
            stats.changes.load(Ordering::Relaxed),
        ))
    }

    fn reserve(
        &self,
        _worker: usize,
        reservation: Reservation,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Reserved, LedgerError>> {
        let wait = self.inner.options.sync_every.is_none();
        let changed = self
            .inner
            .change(wait, |book| book.reserve(reservation, now_ms));
        Box::pin(async move {
            let (reserved, durable) = changed?;
            Durable::wait(durable).await?;
            Ok(reserved)
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
        self.settle_now(client, reservation, &settle, now_ms)
    }

    fn settle_detached(
        &self,
        _worker: usize,
        client: &str,
        reservation: &str,
        settle: Settle,
        now_ms: u64,
    ) -> Option<BoxFuture<'static, Result<Settled, LedgerError>>> {
        Some(self.settle_now(client, reservation, &settle, now_ms))
    }

    fn adjust(
        &self,
        _worker: usize,
        adjust: Adjust,
    ) -> BoxFuture<'_, Result<Adjusted, LedgerError>> {
        let changed = self.inner.change(true, |book| book.adjust(adjust));
        Box::pin(async move {
            let (adjusted, durable) = changed?;
            Durable::wait(durable).await?;
            Ok(adjusted)
        })
    }

    fn account(&self, _worker: usize, client: &str) -> BoxFuture<'_, Result<Account, LedgerError>> {
        let account = self
            .inner
            .lock()
            .accounts
            .get(client)
            .copied()
            .unwrap_or_default();
        Box::pin(std::future::ready(Ok(account)))
    }

    fn journal(
        &self,
        _worker: usize,
        client: &str,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, LedgerError>> {
        let before = before.unwrap_or(u64::MAX);
        // The movements not yet in the file first: a checkpoint that lands meanwhile
        // then shows them twice (merged by sequence number), never not at all.
        let mut found: BTreeMap<u64, Movement> = {
            let book = self.inner.lock();
            book.checkpointing
                .iter()
                .chain(&book.recent)
                .map(|l| &l.movement)
                .filter(|m| m.client == client && m.seq < before)
                .map(|m| (m.seq, m.clone()))
                .collect()
        };
        let inner = Arc::clone(&self.inner);
        let client = client.to_owned();
        Box::pin(async move {
            let filed = tokio::task::spawn_blocking(move || {
                tables::read_journal(&inner.db, &client, before, limit.saturating_add(1))
            })
            .await
            .map_err(err)??;
            found.extend(filed.into_iter().map(|m| (m.seq, m)));
            let more = found.len() > limit;
            let movements: Vec<Movement> = found.into_values().rev().take(limit).collect();
            let next = if more {
                movements.last().map(|m| m.seq)
            } else {
                None
            };
            Ok(Page { movements, next })
        })
    }

    fn expire(
        &self,
        _worker: usize,
        now_ms: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<u64, LedgerError>> {
        let expired = self
            .inner
            .change(false, |book| book.expire(now_ms, max))
            .map(|(n, _)| n);
        Box::pin(std::future::ready(expired))
    }

    fn claim(&self, _worker: usize, claim: Claim) -> BoxFuture<'_, Result<Claimed, LedgerError>> {
        let done = self.keys(KeyOp::Claim(claim));
        Box::pin(async move {
            key_outcome(
                |d| match d {
                    KeyDone::Claimed(c) => Some(c),
                    _ => None,
                },
                done.await?,
            )
        })
    }

    fn answer(
        &self,
        _worker: usize,
        client: &str,
        key: &str,
        owner: &str,
        answer: StoredAnswer,
        until: u64,
    ) -> BoxFuture<'_, Result<(), LedgerError>> {
        let done = self.keys(KeyOp::Answer {
            client: client.to_owned(),
            key: key.to_owned(),
            owner: owner.to_owned(),
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
        owner: &str,
    ) -> BoxFuture<'_, Result<(), LedgerError>> {
        let done = self.keys(KeyOp::Release {
            client: client.to_owned(),
            key: key.to_owned(),
            owner: owner.to_owned(),
        });
        Box::pin(async move { done.await.map(|_| ()) })
    }

    fn prune(&self, _worker: usize, now_ms: u64) -> BoxFuture<'_, Result<u64, LedgerError>> {
        let done = self.keys(KeyOp::Prune(now_ms));
        Box::pin(async move {
            key_outcome(
                |d| match d {
                    KeyDone::Count(n) => Some(n),
                    _ => None,
                },
                done.await?,
            )
        })
    }

    /// Checkpoints first, so the file holds every movement up to now, then replays it.
    fn verify(&self, _worker: usize) -> BoxFuture<'_, Result<Report, LedgerError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Job::Checkpoint(reply));
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| LedgerError::Stopped)??;
            tokio::task::spawn_blocking(move || tables::verify(&inner.db))
                .await
                .map_err(err)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_testkit::TempDir;

    fn credit(seq: u64, balance: u64) -> Line {
        let mut movement = movement("a", seq);
        movement.seq = seq;
        movement.amount = 1;
        movement.balance = balance;
        Line {
            movement,
            deadline: 0,
        }
    }

    /// An operator's credit of `n` to client "a".
    fn credit_of_a(n: u64) -> Adjust {
        Adjust {
            client: "a".into(),
            change: crate::ledger::Change::Credit(n),
            reason: "test".into(),
            now_ms: 1,
            request_id: None,
        }
    }

    /// A ledger file whose checkpoint holds movements 1..=`upto` of client "a".
    fn checkpointed(path: &Path, upto: u64) {
        let db = Database::create(path).unwrap();
        tables::load(&db).unwrap();
        let lines: Vec<Line> = (1..=upto).map(|s| credit(s, s)).collect();
        tables::checkpoint(&db, &lines).unwrap();
    }

    /// Log records of the credits `seqs`, each leaving the balance at its number.
    fn records(seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut bytes = Vec::new();
        for s in seqs {
            wal::encode(&credit(s, s), &mut bytes);
        }
        bytes
    }

    fn write_segment(dir: &TempDir, number: u64, bytes: &[u8]) {
        std::fs::write(dir.path().join(format!("ledger.redb.wal-{number}")), bytes).unwrap();
    }

    /// Opens the ledger and checks that it holds movements 1..=`last` and nothing
    /// else: client "a" at `last`, nothing held, the journal verified.
    async fn opens_with_movements_up_to(path: &Path, last: u64) {
        let ledger = EmbeddedLedger::open(path).unwrap();
        assert_eq!(
            ledger.account(0, "a").await.unwrap(),
            Account {
                available: last,
                held: 0
            }
        );
        let report = ledger.verify(0).await.unwrap();
        assert!(report.problems.is_empty(), "{report:#?}");
        assert_eq!(report.movements, last);
    }

    /// Waiters are answered through a relay on their thread's runtime; a thread that
    /// runs one runtime after another (the CLI, tests) gets a new relay when the old
    /// one's runtime has gone, and nobody waits forever on a relay that is no more.
    #[test]
    fn waiters_are_answered_after_their_relays_runtime_is_gone() {
        let dir = TempDir::new();
        let ledger = EmbeddedLedger::open(&dir.path().join("ledger.redb")).unwrap();
        let credit = credit_of_a;
        for round in 1..=3u64 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let done = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), ledger.adjust(0, credit(round))).await
            });
            assert!(matches!(done, Ok(Ok(Adjusted::Done { .. }))), "{done:?}");
            drop(runtime);
        }
        // One relay for the one thread, started anew on each runtime.
        assert_eq!(ledger.inner.lock().relays.len(), 1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let account = runtime.block_on(ledger.account(0, "a")).unwrap();
        assert_eq!(account.available, 6);
    }

    #[tokio::test]
    async fn segments_a_checkpoint_covered_are_skipped_and_later_records_replayed() {
        let dir = TempDir::new();
        let path = dir.path().join("ledger.redb");
        checkpointed(&path, 20);
        // A crash between a checkpoint's commit and the deletion of the segments it
        // covered leaves them behind: their records are skipped, the later ones replayed.
        write_segment(&dir, 2, &records(3..=9));
        write_segment(&dir, 4, &records(10..=25));
        write_segment(&dir, 5, &records(26..=30));
        opens_with_movements_up_to(&path, 30).await;
    }

    #[tokio::test]
    async fn a_recycled_segments_older_records_after_this_times_are_not_replayed() {
        let dir = TempDir::new();
        let path = dir.path().join("ledger.redb");
        checkpointed(&path, 20);
        // Written over a file that held 5..=20 (all in the checkpoint): this time's
        // records 21..=23, then the rest of the older ones.
        let mut bytes = records(21..=23);
        let old = records(5..=20);
        bytes.extend_from_slice(&old[bytes.len()..]);
        write_segment(&dir, 3, &bytes);
        opens_with_movements_up_to(&path, 23).await;
    }

    #[tokio::test]
    async fn a_recycled_segment_whose_new_head_never_reached_the_disk_ends_there() {
        let dir = TempDir::new();
        let path = dir.path().join("ledger.redb");
        checkpointed(&path, 20);
        // The first page of this time's records was lost (never synced, so never
        // acknowledged); a later one reached the disk. The older records come first,
        // then 24..: nothing after the lost head was acknowledged, so it is not replayed.
        let mut bytes = records(5..=8);
        bytes.extend_from_slice(&records(24..=26));
        write_segment(&dir, 3, &bytes);
        opens_with_movements_up_to(&path, 20).await;
    }

    #[tokio::test]
    async fn records_after_a_torn_group_are_not_kept_for_a_later_segment() {
        let dir = TempDir::new();
        let path = dir.path().join("ledger.redb");
        checkpointed(&path, 20);
        // A crash tore a group: 21..=22 reached the disk, the block after them did not,
        // a later one (24..=25, never acknowledged) did.
        let mut bytes = records(21..=22);
        let mut torn = records(23..=23);
        torn[12] ^= 1;
        bytes.extend_from_slice(&torn);
        let unacknowledged = records(24..=25);
        bytes.extend_from_slice(&unacknowledged);
        write_segment(&dir, 3, &bytes);
        let ledger = EmbeddedLedger::open(&path).unwrap();
        assert_eq!(ledger.account(0, "a").await.unwrap().available, 22);
        // No file of the log keeps them: reused as the next segment, a write ending
        // where they begin would make the next start replay movements that never were.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if name.contains(".wal") {
                let kept = std::fs::read(entry.path()).unwrap();
                assert!(
                    !kept
                        .windows(unacknowledged.len())
                        .any(|w| w == unacknowledged),
                    "{name} keeps the torn group's later records"
                );
            }
        }
    }

    #[tokio::test]
    async fn checkpointed_segments_are_written_again_and_read_back_right() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = TempDir::new();
        let path = dir.path().join("ledger.redb");
        let spare = dir.path().join("ledger.redb.wal-spare");
        let credit = credit_of_a;
        let mut total = 0;
        // (round, inode) of the spare after each round's checkpoint, and of the live
        // segments while each round writes.
        let mut spares = Vec::new();
        let mut live = Vec::new();
        {
            let ledger = EmbeddedLedger::open(&path).unwrap();
            for round in 1..=10u64 {
                for n in 1..=50 {
                    ledger.adjust(0, credit(n)).await.unwrap();
                    total += n;
                }
                for (_, segment) in wal::segments(&path).unwrap() {
                    live.push((round, std::fs::metadata(segment).unwrap().ino()));
                }
                // A checkpoint retires the segment written so far; the next one covers
                // it, and it becomes the spare the segment after takes.
                ledger.verify(0).await.unwrap();
                if let Ok(meta) = std::fs::metadata(&spare) {
                    spares.push((round, meta.ino()));
                }
            }
        }
        assert!(
            spares
                .iter()
                .any(|(kept, ino)| live.iter().any(|(written, i)| written > kept && i == ino)),
            "no spare was written again: spares {spares:?}, live segments {live:?}"
        );
        assert!(spares.len() >= 3, "{spares:?}");
        // Reopened: the file and the log (a recycled segment among them) add up.
        let ledger = EmbeddedLedger::open(&path).unwrap();
        assert_eq!(ledger.account(0, "a").await.unwrap().available, total);
        let report = ledger.verify(0).await.unwrap();
        assert!(report.problems.is_empty(), "{report:#?}");
        assert_eq!(report.movements, 500);
    }

    #[tokio::test]
    async fn a_record_missing_from_the_middle_stops_the_start() {
        let dir = TempDir::new();
        let path = dir.path().join("ledger.redb");
        write_segment(&dir, 1, &records([1, 2, 4]));
        match EmbeddedLedger::open(&path) {
            Err(LedgerError::Corrupt(why)) => {
                assert!(why.contains("jumps from movement 2 to 4"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
