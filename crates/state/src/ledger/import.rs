//! Opening balances exported from the legacy system, as CSV or JSON.
//!
//! - CSV: `clientId,balance` per line; a first line naming the columns (`balance` or
//!   `tokens`) is a header; blank lines and `#` comments are skipped; fields may be
//!   quoted.
//! - JSON: an array of `{"clientId": ..., "balance": ...}` (`tokens` is read too, as the
//!   legacy client records name it), or one object `{"<clientId>": <balance>, ...}`.
//!
//! A byte-order mark before either is skipped (spreadsheets save one).
//!
//! Every problem is reported with its line (CSV) or entry (JSON); nothing is imported
//! from a file with any problem. A client appearing twice is a problem (in a JSON object
//! too, where a parser would keep one silently), and so is a client id no caller can
//! have (`tollgate_auth::jwt::is_usable_client_id`): its balance could never be spent,
//! and the real client would start at nothing.

use serde_json::Value;

use crate::members::Members;

/// One client's opening balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening {
    pub client: String,
    pub balance: u64,
}

/// What crediting a file of opening balances came to.
#[derive(Debug, Default)]
pub struct Credited {
    pub credited: usize,
    /// Clients that had their opening balance already: nothing moved for them.
    pub skipped: Vec<String>,
}

/// Opening balances credited at once: each waits for its record to be durable, and
/// those waiting together share a sync (the embedded ledger's group commit, or Redis's
/// pipeline). One at a time, 20,000 clients took 36 s (an `fdatasync` each) and an
/// interrupted import left most of the file undone.
const AT_ONCE: usize = 256;

/// Credits `openings` to a ledger (each once per client ever), journaled with `reason`.
/// The gateway does it with `[credits] opening_balances` when it opens the ledger, and
/// so does `tollgate ledger` before anything else: an operator's `set` before the first
/// start is not then topped up by the opening balance. Clients are credited
/// [`AT_ONCE`] at a time, in no particular order; on an error the others still run
/// out, and the first error is returned.
pub async fn credit(
    ledger: &dyn super::Ledger,
    worker: usize,
    openings: Vec<Opening>,
    reason: &str,
    now_ms: u64,
) -> Result<Credited, super::LedgerError> {
    use futures_util::stream::{self, StreamExt as _};
    let outcomes: Vec<_> = stream::iter(openings)
        .map(|opening| async move {
            let adjust = super::Adjust {
                client: opening.client,
                change: super::Change::Opening(opening.balance),
                reason: reason.to_owned(),
                now_ms,
                request_id: None,
            };
            let client = adjust.client.clone();
            (client, ledger.adjust(worker, adjust).await)
        })
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    let mut done = Credited::default();
    for (client, outcome) in outcomes {
        match outcome? {
            super::Adjusted::Done { .. } => done.credited += 1,
            _ => done.skipped.push(client),
        }
    }
    done.skipped.sort_unstable();
    Ok(done)
}

/// An opening balance and where the file gives it (`line 5`, `entry 3`), for messages.
type Placed = (Opening, String);

/// The line a problem of [`parse`] names (`line 3: ...`), and the rest of it: for
/// `file:line:col` diagnostics. JSON problems name entries, not lines.
pub fn line_of(problem: &str) -> Option<(usize, &str)> {
    let (line, rest) = problem.strip_prefix("line ")?.split_once(": ")?;
    Some((line.parse().ok()?, rest))
}

/// Reads `text`: JSON when it starts with `[` or `{`, CSV otherwise. A byte-order mark
/// (spreadsheets save one) is not part of the text.
pub fn parse(text: &str) -> Result<Vec<Opening>, Vec<String>> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let trimmed = text.trim_start();
    let (openings, mut problems) = if trimmed.starts_with('[') || trimmed.starts_with('{') {
        json(trimmed)
    } else {
        csv(text)
    };
    if openings.is_empty() && problems.is_empty() {
        problems.push("the file holds no balances".to_owned());
    }
    let mut seen = std::collections::HashMap::new();
    for (o, at) in &openings {
        if !tollgate_auth::jwt::is_usable_client_id(&o.client) {
            problems.push(format!(
                "{at}: client {:?}: not a client id a caller can have (1 to 128 of A-Z a-z 0-9 - _ . : @)",
                o.client
            ));
        }
        if let Some(first) = seen.insert(o.client.as_str(), at) {
            problems.push(format!(
                "{at}: client {} appears more than once (first: {first})",
                o.client
            ));
        }
        if o.balance > super::MAX_TOKENS {
            problems.push(format!(
                "{at}: client {}: {} tokens is more than an account holds ({})",
                o.client,
                o.balance,
                super::MAX_TOKENS
            ));
        }
    }
    if problems.is_empty() {
        Ok(openings.into_iter().map(|(o, _)| o).collect())
    } else {
        Err(problems)
    }
}

fn unquote(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(f)
}

fn csv(text: &str) -> (Vec<Placed>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut first = true;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(unquote).collect();
        let header = std::mem::take(&mut first)
            && fields
                .get(1)
                .is_some_and(|b| ["balance", "tokens"].contains(&b.to_ascii_lowercase().as_str()));
        if header {
            continue;
        }
        match fields.as_slice() {
            [client, balance] if !client.is_empty() => match balance.parse::<u64>() {
                Ok(balance) => out.push((
                    Opening {
                        client: (*client).to_owned(),
                        balance,
                    },
                    format!("line {}", n + 1),
                )),
                Err(_) => problems.push(format!(
                    "line {}: `{balance}` is not a whole number of tokens",
                    n + 1
                )),
            },
            _ => problems.push(format!("line {}: expected `clientId,balance`", n + 1)),
        }
    }
    (out, problems)
}

fn client_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

fn json(text: &str) -> (Vec<Placed>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (out, vec![format!("not JSON: {e}")]),
    };
    match value {
        Value::Array(_) => {
            // Read again entry by entry, member by member: a map would keep one of two
            // equal keys (`{"clientId":"1","balance":5,"clientId":"2"}`).
            let entries = match serde_json::from_str::<Vec<Members>>(text) {
                Ok(entries) => entries,
                Err(_) => {
                    return (
                        out,
                        vec![
                            "expected an array of {\"clientId\": ..., \"balance\": ...} objects"
                                .to_owned(),
                        ],
                    )
                }
            };
            for (i, entry) in entries.iter().enumerate() {
                if let Some(key) = entry.repeated() {
                    problems.push(format!("entry {}: `{key}` appears more than once", i + 1));
                    continue;
                }
                if entry.get("balance").is_some() && entry.get("tokens").is_some() {
                    problems.push(format!("entry {}: both `balance` and `tokens`", i + 1));
                    continue;
                }
                if let Some((other, _)) = entry
                    .0
                    .iter()
                    .find(|(k, _)| !["clientId", "balance", "tokens"].contains(&k.as_str()))
                {
                    problems.push(format!(
                        "entry {}: unknown member `{other}` (expected clientId and balance)",
                        i + 1
                    ));
                    continue;
                }
                let client = entry.get("clientId").and_then(client_text);
                let balance = entry
                    .get("balance")
                    .or_else(|| entry.get("tokens"))
                    .and_then(Value::as_u64);
                match (client, balance) {
                    (Some(client), Some(balance)) => {
                        out.push((Opening { client, balance }, format!("entry {}", i + 1)));
                    }
                    _ => problems.push(format!(
                        "entry {}: expected {{\"clientId\": ..., \"balance\": <whole number>}}",
                        i + 1
                    )),
                }
            }
        }
        Value::Object(_) => {
            // Read again member by member: a map would keep one of two equal keys.
            let members = match serde_json::from_str::<Members>(text) {
                Ok(Members(members)) => members,
                Err(e) => return (out, vec![format!("not JSON: {e}")]),
            };
            for (i, (client, balance)) in members.into_iter().enumerate() {
                match balance.as_u64() {
                    Some(balance) if !client.is_empty() => {
                        out.push((Opening { client, balance }, format!("member {}", i + 1)));
                    }
                    _ => problems.push(format!(
                        "client {client}: the balance must be a whole number of tokens"
                    )),
                }
            }
        }
        _ => problems.push("expected an array of entries or an object of balances".to_owned()),
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(client: &str, balance: u64) -> Opening {
        Opening {
            client: client.into(),
            balance,
        }
    }

    #[test]
    fn csv_with_or_without_a_header() {
        let text = "clientId,balance\n# exported 2026-11-30\n1001,500\n\"1002\", 250\n\n";
        assert_eq!(parse(text).unwrap(), [o("1001", 500), o("1002", 250)]);
        assert_eq!(parse("7,1\n").unwrap(), [o("7", 1)]);
        let e = parse("clientId,balance\n1001,-5\n1002\n1001,3\n").unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with("line 2:"), "{e:?}");
        assert!(e[1].starts_with("line 3:"), "{e:?}");
        assert!(parse("1,5\n1,6\n").unwrap_err()[0].contains("more than once"));
        assert!(parse("1003,ten\n").unwrap_err()[0].starts_with("line 1:"));
        assert!(parse("clientId,balance\n").unwrap_err()[0].contains("no balances"));
        assert!(parse("1004,9007199254740992\n").unwrap_err()[0].contains("more than"));
        assert_eq!(
            parse("1004,9007199254740991\n").unwrap(),
            [o("1004", (1 << 53) - 1)]
        );
    }

    #[test]
    fn json_arrays_and_objects() {
        let text = r#"[{"clientId": "1001", "tokens": 500}, {"clientId": 1002, "balance": 250}]"#;
        assert_eq!(parse(text).unwrap(), [o("1001", 500), o("1002", 250)]);
        assert_eq!(parse(r#"{"9": 3}"#).unwrap(), [o("9", 3)]);
        assert_eq!(
            parse(r#"[{"clientId": "1", "balance": 1.5}]"#)
                .unwrap_err()
                .len(),
            1
        );
        assert!(parse("[1,").unwrap_err()[0].starts_with("not JSON"));
    }

    #[test]
    fn ids_no_caller_can_have_and_repeated_json_members_are_problems() {
        for text in [
            "clientId,balance\n\"1003 \",700\n",
            "a/b,1\n",
            r#"{"1001\n": 5}"#,
            r#"[{"clientId": "{x}", "balance": 1}]"#,
        ] {
            let problems = parse(text).unwrap_err();
            assert!(
                problems.iter().any(|p| p.contains("not a client id")),
                "{text}: {problems:?}"
            );
        }
        let long = format!("{},1\n", "9".repeat(129));
        assert!(parse(&long).is_err());
        let problems = parse(r#"{"1005": 5, "1005": 900}"#).unwrap_err();
        assert_eq!(
            problems,
            ["member 2: client 1005 appears more than once (first: member 1)"]
        );
        // Within an entry of an array, too.
        for text in [
            r#"[{"clientId":"2014","balance":5,"clientId":"2015"}]"#,
            r#"[{"clientId":"2008","balance":5,"balance":9}]"#,
        ] {
            let problems = parse(text).unwrap_err();
            assert!(
                problems[0].contains("appears more than once"),
                "{problems:?}"
            );
        }
        assert!(parse(r#"[{"clientId":"1","balance":5,"tokens":6}]"#).is_err());
        assert!(parse(r#"[{"clientId":"a1","balance":5,"ClientId":"zz"}]"#).is_err());
        assert!(parse("dev-1:team@acme.test,3\n").is_ok());
    }

    #[test]
    fn each_problem_names_its_line_and_a_byte_order_mark_is_not_text() {
        let e = parse("clientId,balance\n1001,5\n\"10 01\",3\n1001,4\n1002,9007199254740992\n")
            .unwrap_err();
        assert_eq!(
            e,
            [
                "line 3: client \"10 01\": not a client id a caller can have (1 to 128 of A-Z a-z 0-9 - _ . : @)",
                "line 4: client 1001 appears more than once (first: line 2)",
                "line 5: client 1002: 9007199254740992 tokens is more than an account holds (9007199254740991)",
            ]
        );
        // Spreadsheets save a byte-order mark: before a header, a first row, or JSON.
        assert_eq!(parse("\u{FEFF}2040,10\n").unwrap(), [o("2040", 10)]);
        assert_eq!(
            parse("\u{FEFF}clientId,balance\n2040,10\n").unwrap(),
            [o("2040", 10)]
        );
        assert_eq!(
            parse("\u{FEFF}[{\"clientId\": \"2040\", \"balance\": 10}]").unwrap(),
            [o("2040", 10)]
        );
        let e = parse(r#"[{"clientId": "a", "balance": 1}, {"clientId": "a", "balance": 2}]"#)
            .unwrap_err();
        assert_eq!(
            e,
            ["entry 2: client a appears more than once (first: entry 1)"]
        );
    }
}
