//! The redb file: the checkpointed ledger, and the idempotency records.
//!
//! A checkpoint replays a run of log lines onto the tables in one durable transaction:
//! the accounts as they stand after the last line, the reservations still open (one
//! opened and settled within the run is never written), the clients whose opening
//! balance is in, the journal, and `meta.seq`. The file is therefore always the ledger
//! exactly as of `meta.seq`, and reading it back plus the log's later lines rebuilds the
//! ledger after any stop.
//!
//! The journal is keyed by (client, first sequence number of a chunk): a checkpoint
//! writes each client's new movements as chunks of up to 256 log records, so a busy
//! client costs an insert per 256 movements, not one per movement. Rows of one JSON movement
//! (files written before chunks) still read.
//!
//! Tables: `accounts` (client → available, held), `journal`, `reservations` (id →
//! reservation, JSON), `opened` (client → sequence number of its opening balance),
//! `idempotency` ((client, key) → record) and its `idempotency_expiry`, and `meta`.

use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::super::{
    check_client, judge_claim, Account, Claim, Claimed, IdempotencyRecord, Kind, LedgerError,
    Movement, Report, Reservation, StoredAnswer,
};
use super::wal::{self, Line};
use super::{Map, Set};

const ACCOUNTS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("accounts");
const JOURNAL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("journal");
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
const OPENED: TableDefinition<&str, u64> = TableDefinition::new("opened");
const IDEMPOTENCY: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("idempotency");
const IDEMPOTENCY_EXPIRY: TableDefinition<(u64, &str, &str), ()> =
    TableDefinition::new("idempotency_expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most idempotency records pruned in one go.
const PRUNE_MAX: usize = 1024;
/// Most movements in one journal row: a history page of a busy client decodes one or
/// two rows, not a whole checkpoint's worth.
const CHUNK_MOVEMENTS: usize = 256;

pub(super) fn err(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Embedded(e.to_string())
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt(e.to_string())
}

/// Everything a decision needs, as the file holds it.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub accounts: Map<String, Account>,
    pub opened: Set<String>,
    pub reservations: Map<String, Reservation>,
    pub seq: u64,
}

/// Creates the tables if needed and reads what the ledger's decisions need.
pub(super) fn load(db: &Database) -> Result<Loaded, LedgerError> {
    let txn = db.begin_write().map_err(err)?;
    let mut loaded = Loaded::default();
    {
        let accounts = txn.open_table(ACCOUNTS).map_err(err)?;
        for item in accounts.iter().map_err(err)? {
            let (client, value) = item.map_err(err)?;
            let (available, held) = value.value();
            loaded
                .accounts
                .insert(client.value().to_owned(), Account { available, held });
        }
        let opened = txn.open_table(OPENED).map_err(err)?;
        for item in opened.iter().map_err(err)? {
            loaded
                .opened
                .insert(item.map_err(err)?.0.value().to_owned());
        }
        let reservations = txn.open_table(RESERVATIONS).map_err(err)?;
        for item in reservations.iter().map_err(err)? {
            let (id, bytes) = item.map_err(err)?;
            let r: Reservation = serde_json::from_slice(bytes.value()).map_err(corrupt)?;
            loaded.reservations.insert(id.value().to_owned(), r);
        }
        txn.open_table(JOURNAL).map_err(err)?;
        txn.open_table(IDEMPOTENCY).map_err(err)?;
        txn.open_table(IDEMPOTENCY_EXPIRY).map_err(err)?;
        let meta = txn.open_table(META).map_err(err)?;
        loaded.seq = meta.get("seq").map_err(err)?.map_or(0, |v| v.value());
    }
    txn.commit().map_err(err)?;
    Ok(loaded)
}

/// What a logged movement does besides setting its client's account: the one rule
/// that rebuilding the ledger in memory and checkpointing it into the file both follow.
pub(super) enum Effect<'a> {
    /// A reservation opens.
    Opens(Reservation),
    /// The reservation with this id is posted, voided or expired.
    Closes(&'a str),
    /// The client's opening balance is in.
    Opening,
    Nothing,
}

pub(super) fn effect(line: &Line) -> Effect<'_> {
    match touches(line) {
        Some(Touch::Opens(id)) => Effect::Opens(opened_by(line, id)),
        Some(Touch::Closes(id)) => Effect::Closes(id),
        None if line.movement.kind == Kind::Opening => Effect::Opening,
        None => Effect::Nothing,
    }
}

/// What a movement does to a reservation, by id.
enum Touch<'a> {
    Opens(&'a str),
    Closes(&'a str),
}

fn touches(line: &Line) -> Option<Touch<'_>> {
    let m = &line.movement;
    match (m.kind, m.reservation.as_deref()) {
        (Kind::Reserve, Some(id)) => Some(Touch::Opens(id)),
        (Kind::Post | Kind::Void | Kind::Expire, Some(id)) => Some(Touch::Closes(id)),
        _ => None,
    }
}

/// The reservation `id` that `line` (a `reserve`) opened.
fn opened_by(line: &Line, id: &str) -> Reservation {
    let m = &line.movement;
    Reservation {
        id: id.to_owned(),
        client: m.client.clone(),
        amount: u64::try_from(m.held_change).unwrap_or(0),
        deadline: line.deadline,
        route: m.route.clone(),
        request_id: m.request_id.clone(),
        idempotency_key: m.idempotency_key.clone(),
    }
}

/// The client's account after the movement, from the one before it.
pub(super) fn account_after(line: &Line, before: Account) -> Account {
    Account {
        available: line.movement.balance,
        held: before.held.saturating_add_signed(line.movement.held_change),
    }
}

/// Writes `lines` (consecutive, oldest first) into the file in one durable transaction.
pub(super) fn checkpoint(db: &Database, lines: &[Line]) -> Result<(), LedgerError> {
    let Some(last) = lines.last() else {
        return Ok(());
    };
    let txn = db.begin_write().map_err(err)?;
    {
        let mut accounts = txn.open_table(ACCOUNTS).map_err(err)?;
        let mut journal = txn.open_table(JOURNAL).map_err(err)?;
        let mut reservations = txn.open_table(RESERVATIONS).map_err(err)?;
        let mut opened = txn.open_table(OPENED).map_err(err)?;
        let mut meta = txn.open_table(META).map_err(err)?;

        let mut touched: Map<&str, Account> = Map::default();
        // id -> the line that opened it if it is open at the end of the run, None if it
        // closed. Most open and close within one run: those are never built nor stored.
        let mut changed: Map<&str, Option<&Line>> = Map::default();
        changed.reserve(lines.len());
        for line in lines {
            let m = &line.movement;
            let before = match touched.get(m.client.as_str()) {
                Some(a) => *a,
                None => accounts.get(m.client.as_str()).map_err(err)?.map_or_else(
                    Account::default,
                    |v| {
                        let (available, held) = v.value();
                        Account { available, held }
                    },
                ),
            };
            touched.insert(&m.client, account_after(line, before));
            match touches(line) {
                Some(Touch::Opens(id)) => {
                    changed.insert(id, Some(line));
                }
                Some(Touch::Closes(id)) => {
                    if let Some(Some(_)) = changed.get(id) {
                        // Opened in this run too: the file never held it, so there is
                        // nothing to remove (most reservations live well under a run).
                        changed.remove(id);
                    } else {
                        changed.insert(id, None);
                    }
                }
                None if m.kind == Kind::Opening => {
                    opened.insert(m.client.as_str(), m.seq).map_err(err)?;
                }
                None => {}
            }
        }
        for (client, account) in touched {
            accounts
                .insert(client, (account.available, account.held))
                .map_err(err)?;
        }
        for (id, open) in changed {
            match open {
                Some(line) => {
                    let bytes = serde_json::to_vec(&opened_by(line, id)).map_err(corrupt)?;
                    reservations.insert(id, bytes.as_slice()).map_err(err)?;
                }
                None => {
                    reservations.remove(id).map_err(err)?;
                }
            }
        }
        // Each client's movements in order (a stable sort keeps their sequence).
        let mut order: Vec<&Line> = lines.iter().collect();
        order.sort_by(|a, b| a.movement.client.cmp(&b.movement.client));
        let mut bytes = Vec::new();
        for run in order.chunk_by(|a, b| a.movement.client == b.movement.client) {
            for chunk in run.chunks(CHUNK_MOVEMENTS) {
                bytes.clear();
                for line in chunk {
                    wal::encode(line, &mut bytes);
                }
                let first = &chunk[0].movement;
                journal
                    .insert((first.client.as_str(), first.seq), bytes.as_slice())
                    .map_err(err)?;
            }
        }
        meta.insert("seq", last.movement.seq).map_err(err)?;
    }
    txn.commit().map_err(err)
}

/// The movements of one journal row, oldest first: a chunk of log records, or (in a
/// file written before the log) one movement as JSON. The records are tried first and
/// must check out to the last byte: a chunk whose first record's length happens to
/// start with the byte `{` (a length of 123, 379…) was read as JSON, and the client's
/// journal, and `verify`, became unreadable for good.
fn movements_of(bytes: &[u8]) -> Result<Vec<Movement>, LedgerError> {
    if let Some(lines) = wal::decode_exact(bytes) {
        return Ok(lines.into_iter().map(|l| l.movement).collect());
    }
    if bytes.first() == Some(&b'{') {
        return Ok(vec![serde_json::from_slice(bytes).map_err(corrupt)?]);
    }
    Err(corrupt("an empty or damaged journal chunk"))
}

/// Up to `limit` of the client's checkpointed movements older than `before`, newest
/// first.
pub(super) fn read_journal(
    db: &Database,
    client: &str,
    before: u64,
    limit: usize,
) -> Result<Vec<Movement>, LedgerError> {
    let txn = db.begin_read().map_err(err)?;
    let journal = txn.open_table(JOURNAL).map_err(err)?;
    let mut movements = Vec::new();
    for item in journal
        .range((client, 0)..(client, before))
        .map_err(err)?
        .rev()
    {
        let (_, bytes) = item.map_err(err)?;
        for m in movements_of(bytes.value())?.into_iter().rev() {
            if m.seq < before {
                movements.push(m);
            }
        }
        if movements.len() >= limit {
            break;
        }
    }
    movements.truncate(limit);
    Ok(movements)
}

/// Replays every client's checkpointed journal against its balance and open
/// reservations.
pub(super) fn verify(db: &Database) -> Result<Report, LedgerError> {
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
            movements.extend(movements_of(bytes.value())?);
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

/// A change of idempotency records, as the redb thread applies it.
pub(super) enum KeyOp {
    Claim(Claim),
    Answer {
        client: String,
        key: String,
        owner: String,
        answer: StoredAnswer,
        until: u64,
    },
    Release {
        client: String,
        key: String,
        owner: String,
    },
    Prune(u64),
}

/// What a [`KeyOp`] came to.
pub(super) enum KeyDone {
    Claimed(Claimed),
    Count(u64),
    Unit,
}

/// Applies idempotency changes in one durable transaction.
pub(super) fn apply_keys(db: &Database, ops: Vec<KeyOp>) -> Result<Vec<KeyDone>, LedgerError> {
    let txn = db.begin_write().map_err(err)?;
    let outcomes = {
        let mut keys = Keys::open(&txn)?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(keys.apply(op)?);
        }
        outcomes
    };
    txn.commit().map_err(err)?;
    Ok(outcomes)
}

struct Keys<'t> {
    idempotency: Table<'t, (&'static str, &'static str), &'static [u8]>,
    expiry: Table<'t, (u64, &'static str, &'static str), ()>,
}

impl<'t> Keys<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Keys<'t>, LedgerError> {
        Ok(Keys {
            idempotency: txn.open_table(IDEMPOTENCY).map_err(err)?,
            expiry: txn.open_table(IDEMPOTENCY_EXPIRY).map_err(err)?,
        })
    }

    fn apply(&mut self, op: KeyOp) -> Result<KeyDone, LedgerError> {
        Ok(match op {
            KeyOp::Claim(claim) => KeyDone::Claimed(self.claim(claim)?),
            KeyOp::Answer {
                client,
                key,
                owner,
                answer,
                until,
            } => {
                self.answer(&client, &key, &owner, answer, until)?;
                KeyDone::Unit
            }
            KeyOp::Release { client, key, owner } => {
                self.release(&client, &key, &owner)?;
                KeyDone::Unit
            }
            KeyOp::Prune(now_ms) => KeyDone::Count(self.prune(now_ms)?),
        })
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
        if let Some(outcome) = old.as_ref().and_then(|r| judge_claim(r, &c)) {
            return Ok(outcome);
        }
        let record = IdempotencyRecord {
            fingerprint: c.fingerprint.clone(),
            until: c.hold_until,
            answer: None,
            owner: c.owner.clone(),
        };
        self.put_record(&c.client, &c.key, old.as_ref(), &record)?;
        Ok(Claimed::New)
    }

    fn answer(
        &mut self,
        client: &str,
        key: &str,
        owner: &str,
        answer: StoredAnswer,
        until: u64,
    ) -> Result<(), LedgerError> {
        let Some(old) = self.record_of(client, key)? else {
            return Ok(());
        };
        if old.answer.is_some() || old.owner != owner {
            return Ok(());
        }
        let record = IdempotencyRecord {
            fingerprint: old.fingerprint.clone(),
            until,
            answer: Some(answer),
            owner: old.owner.clone(),
        };
        self.put_record(client, key, Some(&old), &record)
    }

    fn release(&mut self, client: &str, key: &str, owner: &str) -> Result<(), LedgerError> {
        if let Some(old) = self.record_of(client, key)? {
            if old.answer.is_none() && old.owner == owner {
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
            .take(PRUNE_MAX)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_testkit::TempDir;

    fn credit(seq: u64, client: &str, balance: u64) -> Line {
        Line {
            movement: Movement {
                seq,
                client: client.into(),
                kind: Kind::Credit,
                amount: 1,
                held_change: 0,
                balance,
                at: seq,
                reservation: None,
                route: None,
                request_id: None,
                idempotency_key: None,
                reason: None,
            },
            deadline: 0,
        }
    }

    #[test]
    fn rows_of_one_json_movement_from_older_files_still_read() {
        let dir = TempDir::new();
        let db = Database::create(dir.path().join("l.redb")).unwrap();
        load(&db).unwrap();
        // As the ledger wrote its journal before chunks: one JSON movement a row, and
        // the account beside it.
        let old = credit(1, "a", 1).movement;
        let txn = db.begin_write().unwrap();
        {
            let mut journal = txn.open_table(JOURNAL).unwrap();
            let json = serde_json::to_vec(&old).unwrap();
            journal.insert(("a", 1), json.as_slice()).unwrap();
            let mut accounts = txn.open_table(ACCOUNTS).unwrap();
            accounts.insert("a", (1, 0)).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("seq", 1).unwrap();
        }
        txn.commit().unwrap();
        checkpoint(&db, &[credit(2, "a", 2)]).unwrap();
        let seqs: Vec<u64> = read_journal(&db, "a", u64::MAX, 10)
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [2, 1]);
        assert!(verify(&db).unwrap().problems.is_empty());
    }

    #[test]
    fn a_chunk_whose_first_length_starts_with_a_brace_reads_as_records() {
        let dir = TempDir::new();
        let db = Database::create(dir.path().join("l.redb")).unwrap();
        load(&db).unwrap();
        // A reason long enough to make the first record's payload 123 or 379 bytes long:
        // its length's first byte is `{`, which was taken for an older JSON row.
        let mut found = Vec::new();
        for n in 0..400 {
            let mut line = credit(1, "a", 1);
            line.movement.reason = Some("r".repeat(n));
            let mut bytes = Vec::new();
            wal::encode(&line, &mut bytes);
            if bytes[0] == b'{' {
                found.push(line);
            }
        }
        assert_eq!(found.len(), 2, "lengths 123 and 379");
        for (i, mut line) in found.into_iter().enumerate() {
            let client = format!("c{i}");
            line.movement.client.clone_from(&client);
            line.movement.seq = 10 + i as u64;
            checkpoint(&db, &[line]).unwrap();
            let page = read_journal(&db, &client, u64::MAX, 10).unwrap();
            assert_eq!(page.len(), 1);
            assert_eq!(page[0].balance, 1);
        }
        assert!(verify(&db).unwrap().problems.is_empty());
    }

    #[test]
    fn history_pages_run_across_chunks_and_checkpoints() {
        let dir = TempDir::new();
        let db = Database::create(dir.path().join("l.redb")).unwrap();
        load(&db).unwrap();
        // 600 movements of "busy" (three chunks) interleaved with 100 of "quiet", in
        // two checkpoints.
        let mut lines = Vec::new();
        let (mut busy, mut quiet) = (0, 0);
        for seq in 1..=700 {
            if seq % 7 == 0 {
                quiet += 1;
                lines.push(credit(seq, "quiet", quiet));
            } else {
                busy += 1;
                lines.push(credit(seq, "busy", busy));
            }
        }
        checkpoint(&db, &lines[..350]).unwrap();
        checkpoint(&db, &lines[350..]).unwrap();
        let expected: Vec<u64> = lines
            .iter()
            .rev()
            .filter(|l| l.movement.client == "busy")
            .map(|l| l.movement.seq)
            .collect();
        assert_eq!(expected.len(), 600);
        for limit in [1, 7, 255, 256, 257, 1000] {
            let mut seen = Vec::new();
            let mut before = u64::MAX;
            loop {
                let page = read_journal(&db, "busy", before, limit).unwrap();
                assert!(page.len() <= limit);
                seen.extend(page.iter().map(|m| m.seq));
                match page.last() {
                    Some(m) if page.len() == limit => before = m.seq,
                    _ => break,
                }
            }
            assert_eq!(seen, expected, "pages of {limit}");
        }
        let report = verify(&db).unwrap();
        assert!(report.problems.is_empty(), "{report:#?}");
        assert_eq!((report.clients, report.movements), (2, 700));
    }
}
