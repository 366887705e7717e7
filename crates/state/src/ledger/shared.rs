//! The ledger in Redis, for several instances.
//!
//! Every change is one Lua script, so it is atomic: two instances reserving from the
//! same balance at the same moment cannot both take its last token. Every key of a
//! client shares the hash tag `{client}`, so a script touches one slot (Redis Cluster
//! runs it on one node):
//!
//! - `{prefix}:ledger:{client}:account` — a hash: `available`, `held`, `seq` (the last
//!   journal position) and `opened` (the opening balance is in);
//! - `{prefix}:ledger:{client}:journal` — a list of movements (JSON), appended only;
//!   movement `seq` is at index `seq - 1`;
//! - `{prefix}:ledger:{client}:reservations` — a hash of the open reservations;
//! - `{prefix}:ledger:{client}:idempotency:{key}` — a record, expiring on its own.
//!
//! Reservations also go into one index, `{prefix}:ledger:deadlines` (a sorted set by
//! deadline), written *before* the reservation itself: an instance that dies between
//! the two leaves an index entry that points at nothing, never a reservation nobody
//! can find. Every instance sweeps the index for reservations past their deadline.
//!
//! Durability is Redis's: see `docs/operations.md` (money needs `appendonly yes` and
//! `appendfsync always`).

use std::sync::Arc;

use super::{
    check_client, judge_claim, Account, Adjust, Adjusted, Change, Claim, Claimed,
    IdempotencyRecord, Ledger, LedgerError, Movement, Page, Report, Reservation, Reserved, Settle,
    Settled, StoredAnswer, EXPIRED, MAX_TOKENS,
};
use crate::redis::{Redis, StoreError};
use crate::BoxFuture;

/// Builds a journal entry (JSON) inside a script. Strings arrive JSON-encoded from Rust
/// (`client`, and `extra`: `,"route":"…",…`), so the script only joins them; numbers are
/// written as integers.
const MOVEMENT_LUA: &str = r#"
local function int(n) return string.format('%d', n) end
local function movement(seq, client, kind, amount, held_change, balance, at, extra)
  return '{"seq":' .. int(seq) .. ',"client":' .. client .. ',"kind":"' .. kind ..
    '","amount":' .. int(amount) .. ',"heldChange":' .. int(held_change) ..
    ',"balance":' .. int(balance) .. ',"at":' .. int(at) .. extra .. '}'
end
local function account(key)
  local a = redis.call('HMGET', key, 'available', 'held')
  return tonumber(a[1] or '0'), tonumber(a[2] or '0')
end
local function numbered(key)
  local a = redis.call('HMGET', key, 'available', 'held', 'seq')
  return tonumber(a[1] or '0'), tonumber(a[2] or '0'), tonumber(a[3] or '0')
end
"#;

/// KEYS: account, journal, reservations. ARGV: id, amount, now, client (JSON), extra
/// (JSON members), deadline. The reservation is kept as `amount \n deadline \n extra`.
/// Returns {1, available} (held), {0, available} (short), {2, available} (an open
/// reservation has this id already). Each `redis.call` is a good part of what a script
/// costs Redis, so the account is read and written once (`seq` with it), and `HSETNX`
/// both looks for the id and writes the reservation.
const RESERVE_LUA: &str = r#"
local amount = tonumber(ARGV[2])
local available, held, seq = numbered(KEYS[1])
if available < amount then
  if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return {2, available} end
  return {0, available}
end
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[2] .. '\n' .. ARGV[6] .. '\n' .. ARGV[5]) == 0 then
  return {2, available}
end
available, held, seq = available - amount, held + amount, seq + 1
redis.call('HSET', KEYS[1], 'available', int(available), 'held', int(held), 'seq', int(seq))
redis.call('RPUSH', KEYS[2], movement(seq, ARGV[4], 'reserve', -amount, amount, available,
  tonumber(ARGV[3]), ARGV[5]))
return {1, available}
"#;

/// KEYS: account, journal, reservations. ARGV: id, post|void|expire, amount (post),
/// reason (JSON members, or empty), now, client (JSON). Returns {1, charged, available}
/// or {0, 0, 0} (gone).
const SETTLE_LUA: &str = r#"
local stored = redis.call('HGET', KEYS[3], ARGV[1])
if not stored then return {0, 0, 0} end
redis.call('HDEL', KEYS[3], ARGV[1])
local first = string.find(stored, '\n', 1, true)
local second = string.find(stored, '\n', first + 1, true)
local amount = tonumber(string.sub(stored, 1, first - 1))
local charged, kind = 0, ARGV[2]
if kind == 'post' then charged = math.min(tonumber(ARGV[3]), amount) end
local back = amount - charged
local available, held, seq = numbered(KEYS[1])
available, held, seq = available + back, math.max(0, held - amount), seq + 1
redis.call('HSET', KEYS[1], 'available', int(available), 'held', int(held), 'seq', int(seq))
redis.call('RPUSH', KEYS[2], movement(seq, ARGV[6], kind, back, -amount, available,
  tonumber(ARGV[5]), string.sub(stored, second + 1) .. ARGV[4]))
return {1, charged, available}
"#;

/// KEYS: account, journal. ARGV: credit|debit|set|opening, amount, reason (JSON
/// members), now, client (JSON), most tokens an account may hold. Returns {1, available}
/// (done), {0, available} (short), {2, available} (opened before), {3, available} (the
/// account would hold more than the most).
const ADJUST_LUA: &str = r#"
local kind, n, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[6])
local before, held = account(KEYS[1])
local available = before
if kind == 'credit' then
  available = before + n
elseif kind == 'debit' then
  if n > before then return {0, before} end
  available = before - n
elseif kind == 'set' then
  available = n
else
  if redis.call('HEXISTS', KEYS[1], 'opened') == 1 then return {2, before} end
  available = before + n
end
if kind ~= 'debit' and available + held > most then return {3, before} end
if kind == 'opening' then redis.call('HSET', KEYS[1], 'opened', '1') end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'available', int(available), 'held', int(held))
redis.call('RPUSH', KEYS[2], movement(seq, ARGV[5], kind, available - before, 0, available,
  tonumber(ARGV[4]), ARGV[3]))
return {1, available}
"#;

/// KEYS: record. ARGV: new record, its expiry (ms). Nil when the key was free (and is
/// this request's now), else the existing record.
const CLAIM_LUA: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"#;

/// KEYS: record; ARGV: the record as it was read, the record with its answer, its
/// expiry (ms). Writes the answer only if the record is still what was read (the
/// owner's claim, in flight): 1 if written.
const ANSWER_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
"#;

/// KEYS: record; ARGV: owner. Deletes it while it is in flight and `owner`'s.
const RELEASE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  local r = cjson.decode(v)
  if r.answer == nil and r.owner == ARGV[1] then redis.call('DEL', KEYS[1]) end
end
return 1
"#;

/// A ledger in Redis.
pub struct SharedLedger {
    redis: Arc<Redis>,
    reserve: redis::Script,
    settle: redis::Script,
    adjust: redis::Script,
    claim: redis::Script,
    answer: redis::Script,
    release: redis::Script,
}

impl std::fmt::Debug for SharedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLedger").finish_non_exhaustive()
    }
}

fn with_movement(body: &str) -> redis::Script {
    redis::Script::new(&format!("{MOVEMENT_LUA}{body}"))
}

/// `value` as a JSON string.
fn json_string(value: &str) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "\"\"".to_owned())
}

/// `,"name":"value"` for every value present: members appended to a journal entry.
fn members(fields: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    for (name, value) in fields {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            out.push_str(&json_string(value));
        }
    }
    out
}

/// The amount an open reservation (`amount \n deadline \n members`) holds.
fn held_by(stored: &str) -> Result<u64, LedgerError> {
    stored
        .split('\n')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| LedgerError::Corrupt(format!("reservation `{stored}`")))
}

fn corrupt(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Corrupt(e.to_string())
}

/// The keys of one client.
struct Keys {
    account: String,
    journal: String,
    reservations: String,
}

/// Runs `pipe`, which calls `script` by its hash, on worker `worker`'s connection; a
/// Redis that does not know the script yet (a restart, a new node) is taught it once.
async fn pipelined<T: redis::FromRedisValue>(
    redis: &Redis,
    worker: usize,
    script: &redis::Script,
    pipe: &redis::Pipeline,
) -> Result<T, StoreError> {
    redis
        .call(worker, |mut c| async move {
            match pipe.query_async(&mut c).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    script.prepare_invoke().load_async(&mut c).await?;
                    pipe.query_async(&mut c).await
                }
                other => other,
            }
        })
        .await
}

/// `EVALSHA script` with a client's keys, added to `pipe`.
fn eval_in<'a>(
    pipe: &'a mut redis::Pipeline,
    script: &redis::Script,
    keys: &Keys,
) -> &'a mut redis::Pipeline {
    pipe.cmd("EVALSHA")
        .arg(script.get_hash())
        .arg(3)
        .arg(&keys.account)
        .arg(&keys.journal)
        .arg(&keys.reservations)
}

impl SharedLedger {
    pub fn new(redis: Arc<Redis>) -> SharedLedger {
        SharedLedger {
            redis,
            reserve: with_movement(RESERVE_LUA),
            settle: with_movement(SETTLE_LUA),
            adjust: with_movement(ADJUST_LUA),
            claim: redis::Script::new(CLAIM_LUA),
            answer: redis::Script::new(ANSWER_LUA),
            release: redis::Script::new(RELEASE_LUA),
        }
    }

    /// Puts the deadline index entry before the reservation: in the same round trip on
    /// one server; on a cluster, where the index lives in a slot of its own, as a call
    /// of its own first. Either way an instance that dies between the two leaves a
    /// pointer to nothing, never a reservation no sweep can find. (The entry is a
    /// command of its own, not a fourth key of the script: a single endpoint that
    /// shards behind it, as a proxy or a managed "single" Redis may, routes a script
    /// by its keys and would refuse or misplace one spanning two slots.)
    ///
    /// On a cluster the entry must also outlive a failover of its node, which may lose
    /// writes its replica had not received yet while the reservation (on another node)
    /// survives: so it is confirmed by a replica (`WAIT 1`, on the same node) before the
    /// reservation is written. Without a replica that wait runs out (`timeout`) and the
    /// reservation goes ahead, as on one server.
    async fn index_first(
        &self,
        worker: usize,
        pipe: &mut redis::Pipeline,
        index: redis::Cmd,
    ) -> Result<(), StoreError> {
        if !self.redis.is_cluster() {
            pipe.add_command(index).ignore();
            return Ok(());
        }
        let wait_ms = self.redis.settings().timeout.as_millis() / 2;
        let mut confirmed = redis::pipe();
        confirmed
            .add_command(index)
            .ignore()
            .cmd("WAIT")
            .arg(1)
            .arg(u64::try_from(wait_ms).unwrap_or(u64::MAX).max(1));
        let (replicas,): (u64,) = self
            .redis
            .call(worker, |mut c| {
                let confirmed = &confirmed;
                async move { confirmed.query_async(&mut c).await }
            })
            .await?;
        if replicas == 0 {
            tracing::debug!("the deadline index entry reached no replica");
        }
        Ok(())
    }

    fn prefix(&self) -> &str {
        &self.redis.settings().key_prefix
    }

    fn keys(&self, client: &str) -> Keys {
        let tag = format!("{}:ledger:{{{client}}}", self.prefix());
        Keys {
            account: format!("{tag}:account"),
            journal: format!("{tag}:journal"),
            reservations: format!("{tag}:reservations"),
        }
    }

    fn record_key(&self, client: &str, key: &str) -> String {
        format!("{}:ledger:{{{client}}}:idempotency:{key}", self.prefix())
    }

    fn deadlines_key(&self) -> String {
        format!("{}:ledger:deadlines", self.prefix())
    }

    async fn settle_now(
        &self,
        worker: usize,
        client: &str,
        id: &str,
        settle: &Settle,
        now_ms: u64,
    ) -> Result<Settled, LedgerError> {
        let keys = self.keys(client);
        let (kind, amount, reason) = match settle {
            Settle::Post { amount } => ("post", *amount, String::new()),
            Settle::Void { reason } if reason == EXPIRED => {
                ("expire", 0, members(&[("reason", Some(reason))]))
            }
            Settle::Void { reason } => ("void", 0, members(&[("reason", Some(reason))])),
        };
        // The index entry goes in the same round trip: it is only a pointer, and a lost
        // removal costs the sweeper one look.
        let mut pipe = redis::pipe();
        eval_in(&mut pipe, &self.settle, &keys)
            .arg(id)
            .arg(kind)
            .arg(amount)
            .arg(&reason)
            .arg(now_ms)
            .arg(json_string(client));
        let mut unindex = redis::cmd("ZREM");
        unindex
            .arg(self.deadlines_key())
            .arg(format!("{client}\n{id}"));
        let cluster = self.redis.is_cluster();
        if !cluster {
            pipe.add_command(unindex.clone()).ignore();
        }
        let ((done, charged, balance),): ((u8, u64, u64),) =
            pipelined(&self.redis, worker, &self.settle, &pipe).await?;
        if cluster {
            // The index lives in a slot of its own: its entry goes after the settlement,
            // and a lost removal costs the sweeper one look.
            let _ = self
                .redis
                .call(worker, |mut c| {
                    let unindex = &unindex;
                    async move { unindex.query_async::<()>(&mut c).await }
                })
                .await;
        }
        Ok(if done == 1 {
            Settled::Done { charged, balance }
        } else {
            Settled::Gone
        })
    }

    async fn account_now(&self, worker: usize, client: &str) -> Result<Account, LedgerError> {
        let key = self.keys(client).account;
        let (available, held): (Option<u64>, Option<u64>) = self
            .redis
            .call(worker, |mut c| {
                let key = &key;
                async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg("available")
                        .arg("held")
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(Account {
            available: available.unwrap_or(0),
            held: held.unwrap_or(0),
        })
    }

    async fn journal_now(
        &self,
        worker: usize,
        client: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page, LedgerError> {
        let key = self.keys(client).journal;
        let len: u64 = self
            .redis
            .call(worker, |mut c| {
                let key = &key;
                async move { redis::cmd("LLEN").arg(key).query_async(&mut c).await }
            })
            .await?;
        // Movements with seq < before are at indices 0 ..= before - 2.
        let newer_than_end = before.map_or(len, |b| b.saturating_sub(1).min(len));
        if newer_than_end == 0 || limit == 0 {
            return Ok(Page {
                movements: Vec::new(),
                next: None,
            });
        }
        let end = newer_than_end - 1;
        let start = end.saturating_sub(limit as u64 - 1);
        let texts: Vec<String> = self
            .redis
            .call(worker, |mut c| {
                let key = &key;
                async move {
                    redis::cmd("LRANGE")
                        .arg(key)
                        .arg(start)
                        .arg(end)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let mut movements = texts
            .iter()
            .map(|t| serde_json::from_str::<Movement>(t).map_err(corrupt))
            .collect::<Result<Vec<_>, _>>()?;
        movements.reverse();
        Ok(Page {
            next: (start > 0).then_some(start + 1),
            movements,
        })
    }

    async fn verify_now(&self, worker: usize) -> Result<Report, LedgerError> {
        let pattern = format!("{}:ledger:{{*}}:account", self.prefix());
        let mut cursor: u64 = 0;
        let mut accounts: Vec<String> = Vec::new();
        if self.redis.is_cluster() {
            // SCAN walks one node; KEYS is sent to every primary and the answers joined.
            // It blocks each primary while it runs: verification is an operator's
            // occasional check, not traffic.
            accounts = self
                .redis
                .call(worker, |mut c| {
                    let pattern = &pattern;
                    async move { redis::cmd("KEYS").arg(pattern).query_async(&mut c).await }
                })
                .await?;
        }
        while !self.redis.is_cluster() {
            let (next, keys): (u64, Vec<String>) = self
                .redis
                .call(worker, |mut c| {
                    let pattern = &pattern;
                    async move {
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            accounts.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        accounts.sort();
        accounts.dedup();
        let head = format!("{}:ledger:{{", self.prefix());
        let mut report = Report::default();
        for key in accounts {
            // Only a real client's account: an idempotency key is the caller's text, and
            // `x}:account` made its record's name end like an account's (its string
            // then failed the account's HGET, and verification with it).
            let Some(client) = key
                .strip_prefix(&head)
                .and_then(|rest| rest.strip_suffix("}:account"))
                .filter(|client| tollgate_auth::jwt::is_usable_client_id(client))
            else {
                continue;
            };
            let keys = self.keys(client);
            let (available, held, texts, open): (
                Option<u64>,
                Option<u64>,
                Vec<String>,
                Vec<String>,
            ) = self
                .redis
                .call(worker, |mut c| {
                    let keys = &keys;
                    async move {
                        redis::pipe()
                            .atomic()
                            .cmd("HGET")
                            .arg(&keys.account)
                            .arg("available")
                            .cmd("HGET")
                            .arg(&keys.account)
                            .arg("held")
                            .cmd("LRANGE")
                            .arg(&keys.journal)
                            .arg(0)
                            .arg(-1)
                            .cmd("HVALS")
                            .arg(&keys.reservations)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            let movements = texts
                .iter()
                .map(|t| serde_json::from_str::<Movement>(t).map_err(corrupt))
                .collect::<Result<Vec<_>, _>>()?;
            let mut held_open = 0;
            for text in &open {
                held_open += held_by(text)?;
                report.open_reservations += 1;
            }
            report.clients += 1;
            report.movements += movements.len() as u64;
            report.problems.extend(check_client(
                client,
                Account {
                    available: available.unwrap_or(0),
                    held: held.unwrap_or(0),
                },
                &movements,
                held_open,
            ));
        }
        Ok(report)
    }
}

impl Ledger for SharedLedger {
    fn reserve(
        &self,
        worker: usize,
        reservation: Reservation,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Reserved, LedgerError>> {
        Box::pin(async move {
            let keys = self.keys(&reservation.client);
            let extra = members(&[
                ("reservation", Some(&reservation.id)),
                ("route", reservation.route.as_deref()),
                ("requestId", reservation.request_id.as_deref()),
                ("idempotencyKey", reservation.idempotency_key.as_deref()),
            ]);
            // The deadline index first, in the same round trip: an instance that dies
            // between the two leaves a pointer to nothing, never a reservation no sweep
            // can find.
            let mut index = redis::cmd("ZADD");
            index
                .arg(self.deadlines_key())
                .arg(reservation.deadline)
                .arg(format!("{}\n{}", reservation.client, reservation.id));
            let mut pipe = redis::pipe();
            self.index_first(worker, &mut pipe, index).await?;
            eval_in(&mut pipe, &self.reserve, &keys)
                .arg(&reservation.id)
                .arg(reservation.amount)
                .arg(now_ms)
                .arg(json_string(&reservation.client))
                .arg(&extra)
                .arg(reservation.deadline);
            let ((outcome, balance),): ((u8, u64),) =
                pipelined(&self.redis, worker, &self.reserve, &pipe).await?;
            match outcome {
                1 => Ok(Reserved::Held { balance }),
                0 => Ok(Reserved::Short { balance }),
                _ => Err(LedgerError::Corrupt(format!(
                    "reservation {} exists already",
                    reservation.id
                ))),
            }
        })
    }

    fn settle(
        &self,
        worker: usize,
        client: &str,
        reservation: &str,
        settle: Settle,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<Settled, LedgerError>> {
        let (client, id) = (client.to_owned(), reservation.to_owned());
        Box::pin(async move { self.settle_now(worker, &client, &id, &settle, now_ms).await })
    }

    fn adjust(
        &self,
        worker: usize,
        adjust: Adjust,
    ) -> BoxFuture<'_, Result<Adjusted, LedgerError>> {
        Box::pin(async move {
            let keys = self.keys(&adjust.client);
            let (kind, amount) = match adjust.change {
                Change::Credit(n) => ("credit", n),
                Change::Debit(n) => ("debit", n),
                Change::Set(n) => ("set", n),
                Change::Opening(n) => ("opening", n),
            };
            let script = &self.adjust;
            let (outcome, balance): (u8, u64) = self
                .redis
                .call(worker, |mut c| {
                    let (keys, a) = (&keys, &adjust);
                    async move {
                        script
                            .key(&keys.account)
                            .key(&keys.journal)
                            .arg(kind)
                            .arg(amount)
                            .arg(members(&[
                                ("reason", Some(&a.reason)),
                                ("requestId", a.request_id.as_deref()),
                            ]))
                            .arg(a.now_ms)
                            .arg(json_string(&a.client))
                            .arg(MAX_TOKENS)
                            .invoke_async(&mut c)
                            .await
                    }
                })
                .await?;
            Ok(match outcome {
                1 => Adjusted::Done { balance },
                0 => Adjusted::Short { balance },
                2 => Adjusted::AlreadyOpened { balance },
                _ => Adjusted::TooLarge { balance },
            })
        })
    }

    fn account(&self, worker: usize, client: &str) -> BoxFuture<'_, Result<Account, LedgerError>> {
        let client = client.to_owned();
        Box::pin(async move { self.account_now(worker, &client).await })
    }

    fn journal(
        &self,
        worker: usize,
        client: &str,
        before: Option<u64>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Page, LedgerError>> {
        let client = client.to_owned();
        Box::pin(async move { self.journal_now(worker, &client, before, limit).await })
    }

    fn expire(
        &self,
        worker: usize,
        now_ms: u64,
        max: usize,
    ) -> BoxFuture<'_, Result<u64, LedgerError>> {
        Box::pin(async move {
            let index = self.deadlines_key();
            let due: Vec<String> = self
                .redis
                .call(worker, |mut c| {
                    let index = &index;
                    async move {
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(index)
                            .arg("-inf")
                            .arg(now_ms)
                            .arg("LIMIT")
                            .arg(0)
                            .arg(max)
                            .query_async(&mut c)
                            .await
                    }
                })
                .await?;
            let mut voided = 0;
            let void = Settle::Void {
                reason: EXPIRED.to_owned(),
            };
            for member in due {
                let Some((client, id)) = member.split_once('\n') else {
                    continue;
                };
                if let Settled::Done { .. } =
                    self.settle_now(worker, client, id, &void, now_ms).await?
                {
                    voided += 1;
                }
            }
            Ok(voided)
        })
    }

    fn claim(&self, worker: usize, claim: Claim) -> BoxFuture<'_, Result<Claimed, LedgerError>> {
        Box::pin(async move {
            let key = self.record_key(&claim.client, &claim.key);
            let record = IdempotencyRecord {
                fingerprint: claim.fingerprint.clone(),
                until: claim.hold_until,
                answer: None,
                owner: claim.owner.clone(),
            };
            let json = serde_json::to_string(&record).map_err(corrupt)?;
            let script = &self.claim;
            let existing: Option<String> = self
                .redis
                .call(worker, |mut c| {
                    let (key, json) = (&key, &json);
                    async move {
                        script
                            .key(key)
                            .arg(json)
                            .arg(claim.hold_until)
                            .invoke_async(&mut c)
                            .await
                    }
                })
                .await?;
            let Some(text) = existing else {
                return Ok(Claimed::New);
            };
            let record: IdempotencyRecord = serde_json::from_str(&text).map_err(corrupt)?;
            // Redis expires records at their time; a clock behind another instance's
            // may still see one: it is running, as far as this instance can tell.
            Ok(judge_claim(&record, &claim).unwrap_or(Claimed::InFlight))
        })
    }

    fn answer(
        &self,
        worker: usize,
        client: &str,
        key: &str,
        owner: &str,
        answer: StoredAnswer,
        until: u64,
    ) -> BoxFuture<'_, Result<(), LedgerError>> {
        let key = self.record_key(client, key);
        let owner = owner.to_owned();
        Box::pin(async move {
            let existing: Option<String> = self
                .redis
                .call(worker, |mut c| {
                    let key = &key;
                    async move { redis::cmd("GET").arg(key).query_async(&mut c).await }
                })
                .await?;
            let Some(text) = existing else {
                return Ok(());
            };
            let old: IdempotencyRecord = serde_json::from_str(&text).map_err(corrupt)?;
            if old.answer.is_some() || old.owner != owner {
                return Ok(());
            }
            let record = IdempotencyRecord {
                fingerprint: old.fingerprint,
                until,
                answer: Some(answer),
                owner: old.owner,
            };
            let json = serde_json::to_string(&record).map_err(corrupt)?;
            // Written only over the record just read: a claim that expired and was
            // taken by a retry in between is the retry's.
            let script = &self.answer;
            let _: i64 = self
                .redis
                .call(worker, |mut c| {
                    let (key, text, json) = (&key, &text, &json);
                    async move {
                        script
                            .key(key)
                            .arg(text)
                            .arg(json)
                            .arg(until)
                            .invoke_async(&mut c)
                            .await
                    }
                })
                .await?;
            Ok(())
        })
    }

    fn release(
        &self,
        worker: usize,
        client: &str,
        key: &str,
        owner: &str,
    ) -> BoxFuture<'_, Result<(), LedgerError>> {
        let key = self.record_key(client, key);
        let owner = owner.to_owned();
        Box::pin(async move {
            let script = &self.release;
            let _: i64 = self
                .redis
                .call(worker, |mut c| {
                    let (key, owner) = (&key, &owner);
                    async move { script.key(key).arg(owner).invoke_async(&mut c).await }
                })
                .await?;
            Ok(())
        })
    }

    fn prune(&self, _worker: usize, _now_ms: u64) -> BoxFuture<'_, Result<u64, LedgerError>> {
        // Records carry their own expiry in Redis.
        Box::pin(async { Ok(0) })
    }

    fn verify(&self, worker: usize) -> BoxFuture<'_, Result<Report, LedgerError>> {
        Box::pin(async move { self.verify_now(worker).await })
    }
}
