//! What an operator's change of a balance must be, whoever makes it: the admin API
//! (`POST /ledger/clients/{id}/credit`, ...) and the `tollgate ledger` command line apply
//! these rules, and only these, so one cannot journal what the other refuses.
//!
//! - the client id is one a caller can have ([`tollgate_auth::jwt::is_usable_client_id`]):
//!   an account under any other could never be spent from, and a typo (`"1001 "`) would
//!   be credited silently;
//! - a credit or debit moves at least one token (a balance may be set to 0);
//! - the reason says why: not empty, at most [`MAX_REASON_BYTES`] once trimmed, and no
//!   control character ([`is_control`]): a journal is read on terminals and in
//!   spreadsheets, where a newline, an escape sequence or a bidi override in a reason
//!   would draw a movement that is not there.
//!
//! [`printable`] is the other half for journals written before these rules: text read
//! back from a journal is escaped before it is printed on a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

use thiserror::Error;

use super::{Adjust, Change};

/// The most movements one page of a journal shows (the admin API's `limit`, the
/// command line's `--limit`).
pub const MAX_JOURNAL_PAGE: u64 = 1000;

/// The longest reason, in bytes, once trimmed (before its `admin: ` or `cli: ` prefix).
pub const MAX_REASON_BYTES: usize = 500;

/// Why an operator's change was refused; nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error(
        "no caller can have this client id: 1 to 128 of A-Z a-z 0-9 - _ . : @ (an account \
         under it could never be spent from)"
    )]
    ClientId,
    #[error("the amount must be at least 1 token (a change of nothing is a mistake)")]
    ZeroAmount,
    #[error("the reason must say why (it is journaled)")]
    ReasonEmpty,
    #[error("the reason is longer than {max} bytes")]
    ReasonTooLong { max: usize },
    #[error(
        "the reason holds a control character (a line break, tab, escape, DEL, a C1 control \
         or a bidi control such as U+202E): journal lines must read as they print"
    )]
    ReasonControl,
}

/// `client` if a caller can have it.
pub fn client(client: &str) -> Result<&str, Refusal> {
    if tollgate_auth::jwt::is_usable_client_id(client) {
        Ok(client)
    } else {
        Err(Refusal::ClientId)
    }
}

/// `change` unless it moves nothing.
pub fn change(change: Change) -> Result<Change, Refusal> {
    match change {
        Change::Credit(0) | Change::Debit(0) => Err(Refusal::ZeroAmount),
        other => Ok(other),
    }
}

/// The reason, trimmed, if it may be journaled. Control characters are looked for
/// before trimming: `trim` would quietly drop a trailing line break or NEL (U+0085), and
/// what was sent is what is judged.
pub fn reason(reason: &str) -> Result<&str, Refusal> {
    if reason.chars().any(is_control) {
        return Err(Refusal::ReasonControl);
    }
    let reason = reason.trim();
    if reason.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
        Err(Refusal::ReasonEmpty)
    } else if reason.len() > MAX_REASON_BYTES {
        Err(Refusal::ReasonTooLong {
            max: MAX_REASON_BYTES,
        })
    } else {
        Ok(reason)
    }
}

/// The adjustment `by` (`admin`, `cli`) asks for, every rule above applied; its reason
/// journaled as `<by>: <reason>`.
pub fn adjustment(
    id: &str,
    wanted: Change,
    why: &str,
    by: &str,
    now_ms: u64,
) -> Result<Adjust, Refusal> {
    Ok(Adjust {
        client: client(id)?.to_owned(),
        change: change(wanted)?,
        reason: format!("{by}: {}", reason(why)?),
        now_ms,
        request_id: None,
    })
}

/// Characters that move the cursor, start an escape sequence or reorder text rather
/// than draw: C0 (tab and line breaks included), DEL, C1 (U+0080..U+009F, which some
/// terminals read as ESC [), and the bidi controls (U+061C, U+200E, U+200F,
/// U+202A..U+202E, U+2066..U+2069) that make `+1000` display as `0001+`. The line and
/// paragraph separators U+2028 and U+2029 break lines in some viewers, so they count too.
pub fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Characters that draw nothing: Unicode's Default_Ignorable_Code_Point (zero-width
/// spaces and joiners, the word joiner, the byte-order mark, soft hyphen, variation
/// selectors, Hangul fillers, tag characters, musical format controls), and the braille
/// blank. A reason of these alone says nothing, and prints as a blank one.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// `text` safe to print on one terminal line: every [`is_control`] character written as
/// `\n`, `\r`, `\t` or `\u{..}`, and `\` as `\\` so that an escape cannot be forged.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || is_control(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_no_caller_can_have_are_refused() {
        let long = "a".repeat(129);
        for id in [
            "1001 ", " 1001", "", "a\nb", &long, "é", "../x", "bad id", "a/b", "1001\0",
        ] {
            assert_eq!(client(id), Err(Refusal::ClientId), "{id:?}");
        }
        for id in ["1001", "dev:1@acme", "a.b-c_d", &"a".repeat(128)] {
            assert_eq!(client(id), Ok(id));
        }
    }

    #[test]
    fn a_change_of_nothing_is_refused_but_a_balance_of_zero_is_not() {
        assert_eq!(change(Change::Credit(0)), Err(Refusal::ZeroAmount));
        assert_eq!(change(Change::Debit(0)), Err(Refusal::ZeroAmount));
        assert_eq!(change(Change::Set(0)), Ok(Change::Set(0)));
        assert_eq!(change(Change::Credit(1)), Ok(Change::Credit(1)));
    }

    #[test]
    fn reasons_are_trimmed_bounded_and_free_of_controls() {
        assert_eq!(
            reason("  goodwill, ticket 4711 "),
            Ok("goodwill, ticket 4711")
        );
        assert_eq!(
            reason("Erstattung für Störung"),
            Ok("Erstattung für Störung")
        );
        assert_eq!(reason(""), Err(Refusal::ReasonEmpty));
        assert_eq!(reason("   "), Err(Refusal::ReasonEmpty));
        // Characters that draw nothing say nothing either; beside a word they are kept.
        for blank in [
            "\u{200B}",
            " \u{FEFF}\u{2060} ",
            "\u{3164}",
            "\u{00A0}\u{200D}",
            "\u{FE0F}",
            "\u{E0020}",
            "\u{1D173}",
        ] {
            assert_eq!(reason(blank), Err(Refusal::ReasonEmpty), "{blank:?}");
        }
        assert_eq!(reason("re\u{200B}fund"), Ok("re\u{200B}fund"));
        // At either end too, where trimming would have hidden them.
        assert_eq!(reason(" \t\n "), Err(Refusal::ReasonControl));
        assert_eq!(reason("refund\n"), Err(Refusal::ReasonControl));
        assert_eq!(reason("refund\u{85}"), Err(Refusal::ReasonControl));
        let max = "x".repeat(MAX_REASON_BYTES);
        assert_eq!(reason(&max), Ok(max.as_str()));
        // Bytes, not characters: 251 two-byte letters are 502 bytes.
        for long in [
            "x".repeat(MAX_REASON_BYTES + 1),
            "é".repeat(251),
            "x".repeat(100_000),
        ] {
            assert_eq!(
                reason(&long),
                Err(Refusal::ReasonTooLong {
                    max: MAX_REASON_BYTES
                })
            );
        }
        for bad in [
            "x\n2026-01-01 +1000 fake line",
            "a\rb",
            "a\tb",
            "red\x1b[31m",
            "bell\x07",
            "nul\0",
            "del\x7f",
            "c1\u{9b}31m",
            "c1\u{85}next line",
            "bidi\u{202E}0001+",
            "isolate\u{2066}x\u{2069}",
            "mark\u{200F}",
            "arabic\u{061C}",
            "ls\u{2028}x",
        ] {
            assert_eq!(reason(bad), Err(Refusal::ReasonControl), "{bad:?}");
        }
    }

    #[test]
    fn an_adjustment_checks_everything_and_says_who_made_it() {
        let a = adjustment("1001", Change::Credit(5), " refund ", "cli", 7).unwrap();
        assert_eq!(
            a,
            Adjust {
                client: "1001".into(),
                change: Change::Credit(5),
                reason: "cli: refund".into(),
                now_ms: 7,
                request_id: None,
            }
        );
        assert_eq!(
            adjustment("1001 ", Change::Credit(5), "x", "cli", 7),
            Err(Refusal::ClientId)
        );
        assert_eq!(
            adjustment("1001", Change::Credit(0), "x", "cli", 7),
            Err(Refusal::ZeroAmount)
        );
        assert_eq!(
            adjustment("1001", Change::Credit(1), "x\u{1b}", "cli", 7),
            Err(Refusal::ReasonControl)
        );
    }

    #[test]
    fn printed_journal_text_cannot_draw_lines_or_escapes() {
        assert!(matches!(printable("cli: goodwill"), Cow::Borrowed(_)));
        let spoof = "x\n2026-01-01 +1000 fake line\x1b[31m\u{202E}\u{9b}\\n";
        let shown = printable(spoof);
        assert_eq!(
            shown,
            "x\\n2026-01-01 +1000 fake line\\u{1b}[31m\\u{202e}\\u{9b}\\\\n"
        );
        assert!(!shown.chars().any(is_control), "{shown}");
        assert_eq!(printable("é ü 名前"), "é ü 名前");
    }
}
