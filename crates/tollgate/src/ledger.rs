//! `tollgate ledger ...`: the token ledger from the command line — credit, debit or set
//! a balance (each journaled with its reason), show a client, import opening balances,
//! verify every journal.
//!
//! Credit, debit, set and show apply the admin API's rules, from one place
//! ([`tollgate_state::ledger::operator`]): a client id a caller can have, an amount of at
//! least 1, a reason of 1 to 500 bytes without control characters. They are checked
//! before the ledger is opened; a refusal prints why and exits 1. Text read back from a
//! journal (reasons, routes, request ids, the client ids `verify` names) is printed with
//! its control characters escaped ([`operator::printable`]): a journal written before
//! these rules cannot draw a fake line or an escape sequence on the operator's terminal.
//!
//! It opens the ledger the configuration names. With Redis it runs beside live
//! gateways. The embedded `redb` file is held by a running gateway (redb locks it):
//! stop the gateway, or use the admin API of the running one.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tollgate_policy::Snapshot;
use tollgate_state::ledger::embedded::{EmbeddedLedger, Options};
use tollgate_state::ledger::operator::{self, printable};
use tollgate_state::ledger::shared::SharedLedger;
use tollgate_state::ledger::{import, Adjusted, Change, Ledger};
use tollgate_state::redis::Redis;

/// What to do.
pub enum Action<'a> {
    Adjust {
        client: &'a str,
        change: Change,
        reason: &'a str,
    },
    Show {
        client: &'a str,
        /// 1 to [`operator::MAX_JOURNAL_PAGE`].
        limit: usize,
    },
    Import {
        file: &'a Path,
    },
    Verify,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Credits `client`'s opening balance from `[credits] opening_balances`, if it has one
/// and it is not in yet, as the gateway would when it starts: an operator's `set` or
/// `credit` before the gateway's first start is then not topped up by the opening
/// balance when the gateway starts.
async fn open_client(snapshot: &Snapshot, ledger: &dyn Ledger, client: &str) -> Result<(), String> {
    let Some(path) = snapshot
        .credits
        .as_ref()
        .and_then(|c| c.opening_balances.as_ref())
    else {
        return Ok(());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the opening balances {}: {e}", path.display()))?;
    let openings = import::parse(&text).map_err(|problems| {
        format!(
            "the opening balances {} are not valid (nothing done):\n  {}",
            path.display(),
            problems.join("\n  ")
        )
    })?;
    let ours: Vec<_> = openings
        .into_iter()
        .filter(|o| o.client == client)
        .collect();
    let reason = format!("opening balance from {}", path.display());
    let done = import::credit(ledger, 0, ours, &reason, now_ms())
        .await
        .map_err(|e| format!("cannot credit the opening balance: {e}"))?;
    if done.credited > 0 {
        println!(
            "client {client}: opening balance from {} credited first",
            path.display()
        );
    }
    Ok(())
}

/// The opening balance `[credits] opening_balances` gives `client`, and the file: for
/// `show` on a client with no movement yet, whose balance of 0 would mislead a check
/// before launch. Nothing when the file cannot be read (`check` reports that).
fn pending_opening<'s>(snapshot: &'s Snapshot, client: &str) -> Option<(u64, &'s Path)> {
    let path = snapshot.credits.as_ref()?.opening_balances.as_ref()?;
    let text = std::fs::read_to_string(path).ok()?;
    let openings = import::parse(&text).ok()?;
    let balance = openings.iter().find(|o| o.client == client)?.balance;
    Some((balance, path.as_path()))
}

/// The embedded ledger's file when the configuration names one that does not exist
/// yet: `show` and `verify` only read, so they say so instead of creating it (an empty
/// file at a mistyped path would then look like a ledger with no money in it).
fn missing_file(snapshot: &Snapshot) -> Option<&Path> {
    let credits = snapshot.credits.as_ref()?;
    (snapshot.store.redis.is_none() && !credits.path.exists()).then_some(credits.path.as_path())
}

/// Opens the configured ledger. `instead` says what to do instead while a running
/// gateway holds the embedded file.
fn open(snapshot: &Snapshot, instead: &str) -> Result<Arc<dyn Ledger>, String> {
    let credits = snapshot
        .credits
        .as_ref()
        .ok_or("the configuration has no [credits] section")?;
    match &snapshot.store.redis {
        Some(settings) => {
            let redis = Redis::new(settings.clone(), 1).map_err(|e| format!("redis: {e}"))?;
            Ok(Arc::new(SharedLedger::new(Arc::new(redis))))
        }
        None => EmbeddedLedger::open_with(&credits.path, Options::for_sync(credits.sync))
            .map(|l| Arc::new(l) as Arc<dyn Ledger>)
            .map_err(|e| {
                // redb locks the file: only that failure is a running gateway's doing
                // (a damaged file or a permission says so itself).
                let text = e.to_string();
                let held = text.to_ascii_lowercase().contains("already open");
                let hint = if held {
                    format!("\n(a running gateway holds the file: stop it, or {instead})")
                } else {
                    String::new()
                };
                format!("cannot open {}: {text}{hint}", credits.path.display())
            }),
    }
}

pub fn run(snapshot: &Snapshot, action: Action) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ledger: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(act(snapshot, action)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ledger: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why an adjustment or a `show` is refused, naming the option at fault.
fn refused(client: &str, refusal: operator::Refusal) -> String {
    use operator::Refusal;
    match refusal {
        Refusal::ClientId => format!(
            "--client \"{}\": {refusal}; nothing was done",
            printable(client)
        ),
        Refusal::ZeroAmount => format!("--amount: {refusal}; nothing was done"),
        Refusal::ReasonEmpty | Refusal::ReasonTooLong { .. } | Refusal::ReasonControl => {
            format!("--reason: {refusal}; nothing was done")
        }
    }
}

async fn act(snapshot: &Snapshot, action: Action<'_>) -> Result<ExitCode, String> {
    let worker = 0;
    // Each action is checked before the ledger is opened: a refusal does not depend on
    // whether a running gateway holds the file.
    match action {
        Action::Adjust {
            client,
            change,
            reason,
        } => {
            let mut adjust = operator::adjustment(client, change, reason, "cli", now_ms())
                .map_err(|r| refused(client, r))?;
            let ledger = open(
                snapshot,
                "use its admin API: POST /ledger/clients/ID/credit",
            )?;
            open_client(snapshot, &*ledger, client).await?;
            // Stamped after the opening it follows, as the journal's order says.
            adjust.now_ms = now_ms();
            match ledger
                .adjust(worker, adjust)
                .await
                .map_err(|e| e.to_string())?
            {
                Adjusted::Done { balance } | Adjusted::AlreadyOpened { balance } => {
                    println!("client {client}: balance {balance}");
                    Ok(ExitCode::SUCCESS)
                }
                Adjusted::Short { balance } => Err(format!(
                    "client {client} has {balance} token(s): nothing was debited"
                )),
                Adjusted::TooLarge { balance } => Err(format!(
                    "client {client} has {balance} token(s); an account holds at most {} \
                     (available and held together): nothing was changed",
                    tollgate_state::ledger::MAX_TOKENS
                )),
            }
        }
        Action::Show { client, limit } => {
            operator::client(client).map_err(|r| refused(client, r))?;
            if !(1..=operator::MAX_JOURNAL_PAGE).contains(&(limit as u64)) {
                return Err(format!(
                    "--limit: 1 to {} movements",
                    operator::MAX_JOURNAL_PAGE
                ));
            }
            if let Some(file) = missing_file(snapshot) {
                println!(
                    "client {client}: balance 0 (no ledger at {} yet: the gateway creates it when it starts)",
                    file.display()
                );
                if let Some((balance, from)) = pending_opening(snapshot, client) {
                    println!(
                        "  opening balance {balance} from {} not in yet: the gateway credits it when it starts (so does the first `ledger credit|debit|set` for this client)",
                        from.display()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let ledger = open(snapshot, "use its admin API: GET /ledger/clients/ID")?;
            let account = ledger
                .account(worker, client)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "client {client}: balance {}, held by running requests {}",
                account.available, account.held
            );
            let page = ledger
                .journal(worker, client, None, limit)
                .await
                .map_err(|e| e.to_string())?;
            if page.movements.is_empty() {
                if let Some((balance, file)) = pending_opening(snapshot, client) {
                    println!(
                        "  opening balance {balance} from {} not in yet: the gateway credits it when it starts (so does the first `ledger credit|debit|set` for this client)",
                        file.display()
                    );
                }
            }
            for m in &page.movements {
                let at = httpdate::fmt_http_date(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.at),
                );
                // Journal text is escaped: an older journal may hold anything. The
                // idempotency key, when there is one, is what a client quotes when it
                // asks about a charge.
                let key = m
                    .idempotency_key
                    .as_deref()
                    .map(|k| format!(" key={}", printable(k)))
                    .unwrap_or_default();
                println!(
                    "#{:<6} {:<29} {:<8} {:>+8} -> {:<8} {} {}{key}",
                    m.seq,
                    at,
                    m.kind.as_str(),
                    m.amount,
                    m.balance,
                    printable(m.route.as_deref().or(m.reason.as_deref()).unwrap_or("")),
                    printable(m.request_id.as_deref().unwrap_or(""))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Import { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let openings = import::parse(&text).map_err(|problems| {
                format!(
                    "{} is not valid (nothing imported):\n  {}",
                    file.display(),
                    problems.join("\n  ")
                )
            })?;
            let ledger = open(
                snapshot,
                "name the file in [credits] opening_balances: a gateway credits it when it starts",
            )?;
            let reason = format!("opening balance from {}", file.display());
            let done = import::credit(&*ledger, worker, openings, &reason, now_ms())
                .await
                .map_err(|e| e.to_string())?;
            // Named, up to a screenful: a re-run of a large import skips every client.
            const NAMED: usize = 20;
            for client in done.skipped.iter().take(NAMED) {
                println!("client {client}: has its opening balance already; skipped");
            }
            if done.skipped.len() > NAMED {
                println!(
                    "... and {} more client(s) that had their opening balance already",
                    done.skipped.len() - NAMED
                );
            }
            let (credited, skipped) = (done.credited, done.skipped.len());
            println!("{credited} opening balance(s) credited, {skipped} skipped");
            Ok(ExitCode::SUCCESS)
        }
        Action::Verify => {
            if let Some(file) = missing_file(snapshot) {
                return Err(format!(
                    "no ledger at {}: nothing to verify (the gateway creates it when it starts; is [credits] path the one the gateway uses?)",
                    file.display()
                ));
            }
            let ledger = open(snapshot, "use its admin API: GET /ledger/verify")?;
            let report = ledger.verify(worker).await.map_err(|e| e.to_string())?;
            println!(
                "{} client(s), {} movement(s), {} open reservation(s)",
                report.clients, report.movements, report.open_reservations
            );
            for p in &report.problems {
                println!("client {}: {}", printable(&p.client), printable(&p.problem));
            }
            if report.problems.is_empty() {
                println!("every journal sums to its balance");
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
    }
}
