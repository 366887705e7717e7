//! A TOML document split into its top-level sections, each deserialized on its own so
//! that one bad section (or one bad `[NAME.entry]`) hides no other.

use std::collections::HashMap;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeArray, DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::context::Loader;
use crate::diagnostic::SourceFile;

/// A document's top-level keys: the key's span and the value.
pub(crate) type Sections<'i> = HashMap<String, (Range<usize>, Spanned<DeValue<'i>>)>;

/// Parses a document and splits it into its top-level keys; syntax errors are all reported.
pub(crate) fn parse<'i>(loader: &mut Loader, src: &SourceFile<'i>) -> Option<Sections<'i>> {
    let (root, errors) = DeTable::parse_recoverable(src.text);
    if !errors.is_empty() {
        for e in errors {
            loader.error(
                src,
                e.span(),
                format!("TOML syntax: {}", e.message().trim()),
            );
        }
        return None;
    }
    Some(
        root.into_inner()
            .into_iter()
            .map(|(k, v)| (k.get_ref().to_string(), (k.span(), v)))
            .collect(),
    )
}

/// Deserializes one section; a missing required section is reported at the top of the file.
pub(crate) fn section<T: DeserializeOwned>(
    loader: &mut Loader,
    src: &SourceFile,
    value: Option<(Range<usize>, Spanned<DeValue>)>,
    name: &str,
    required: bool,
) -> Option<T> {
    match value {
        Some((_, value)) => deserialize(loader, src, value, &format!("[{name}]")),
        None => {
            if required {
                loader.error(src, None, format!("missing required section `[{name}]`"));
            }
            None
        }
    }
}

/// Deserializes a value; each error names `what` and points at the offending field.
///
/// serde stops at a table's first error, which would hide the next: after each one the
/// entry it is in is taken out and the rest read again, so every unknown key and every
/// value of the wrong type in the table is reported in one run. What is left then goes
/// on to the section's own checks (a removed key reads as absent), so their errors are
/// reported too; the configuration is refused either way. A required field that had to
/// be taken out ends it: the rest would not mean much.
pub(crate) fn deserialize<T: DeserializeOwned>(
    loader: &mut Loader,
    src: &SourceFile,
    value: Spanned<DeValue>,
    what: &str,
) -> Option<T> {
    read(loader, src, value, what, |value| value)
}

/// [`deserialize`], of `wrap(value)`: errors are taken out of `value`.
fn read<'i, T: DeserializeOwned>(
    loader: &mut Loader,
    src: &SourceFile,
    mut value: Spanned<DeValue<'i>>,
    what: &str,
    wrap: impl Fn(Spanned<DeValue<'i>>) -> Spanned<DeValue<'i>>,
) -> Option<T> {
    let whole = value.span();
    let mut reported = false;
    for _ in 0..MAX_ERRORS_PER_TABLE {
        let e = match T::deserialize(ValueDeserializer::from(wrap(value.clone()))) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let message = e.message().trim();
        if reported && message.starts_with("missing field") {
            return None;
        }
        loader.error(
            src,
            e.span().or(Some(whole.clone())),
            format!("{what}: {}", in_plain_words(message)),
        );
        reported = true;
        if !e
            .span()
            .is_some_and(|at| take_out_entry_at(&mut value, at.start))
        {
            return None;
        }
    }
    None
}

/// Reads a table whose `kind` names its variant of `T`, an enum of struct variants that
/// serde tags externally. serde reads an internally tagged enum (`tag = "kind"`) from a
/// buffer that has lost every position, so it would report only the table's first
/// error, at its name: the table is handed to `T` as `{KIND = {rest}}` instead, and
/// every error is reported where it is written.
fn kind_tagged<T: DeserializeOwned>(
    loader: &mut Loader,
    src: &SourceFile,
    mut value: Spanned<DeValue>,
    what: &str,
) -> Option<T> {
    let whole = value.span();
    let DeValue::Table(table) = value.get_mut() else {
        loader.error(src, Some(whole), format!("{what}: expected a table"));
        return None;
    };
    let Some((_, kind)) = table.remove_entry("kind") else {
        loader.error(src, Some(whole), format!("{what}: missing field `kind`"));
        return None;
    };
    let DeValue::String(name) = kind.get_ref() else {
        loader.error(
            src,
            Some(kind.span()),
            format!("{what}: `kind` must be a string"),
        );
        return None;
    };
    let variant = Spanned::new(kind.span(), name.clone());
    read(loader, src, value, what, |rest| {
        let mut tagged = DeTable::new();
        tagged.insert(variant.clone(), rest);
        Spanned::new(whole.clone(), DeValue::Table(tagged))
    })
}

/// serde's type names, said as an operator writes TOML: `expected i64` is a whole
/// number, `expected a sequence` an array.
fn in_plain_words(message: &str) -> String {
    const PLAIN: &[(&str, &str)] = &[
        (
            "expected i64",
            "expected a whole number, such as 32768 (sizes are in bytes)",
        ),
        (
            "expected u64",
            "expected a whole number, such as 32768 (sizes are in bytes)",
        ),
        (
            "expected usize",
            "expected a whole number, such as 32768 (sizes are in bytes)",
        ),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number"),
        ("expected f64", "expected a number"),
        (
            "expected a sequence",
            "expected an array, such as [\"a\", \"b\"]",
        ),
        ("expected a boolean", "expected true or false"),
        (
            "expected a string",
            "expected a string in quotes (a duration is written \"2s\", \"500ms\")",
        ),
    ];
    // toml's own words for an unknown key in a struct variant (see [`kind_tagged`]),
    // said as serde says them elsewhere. It names every such key but points at the
    // first: the others are reported, each where it is, once that one is taken out.
    if let Some(rest) = message.strip_prefix("unexpected keys in table: ") {
        if let Some((keys, known)) = rest.split_once(", available keys: ") {
            let first = keys.split(", ").next().unwrap_or(keys);
            let known: Vec<String> = known.split(", ").map(|k| format!("`{k}`")).collect();
            return format!(
                "unknown field `{first}`, expected one of {}",
                known.join(", ")
            );
        }
    }
    let mut plain = message.to_owned();
    for (serde, words) in PLAIN {
        if let Some(at) = plain.find(serde) {
            // Whole words only: `expected u8` is not the start of `expected u8x`.
            let end = at + serde.len();
            if !plain[end..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                plain.replace_range(at..end, words);
                break;
            }
        }
    }
    plain
}

/// The most errors one table reports (each costs another pass over it).
const MAX_ERRORS_PER_TABLE: usize = 32;

/// Takes out of a table the entry whose key or value holds byte `at`; false when none
/// does (the error is the table's own, or the value is not a table). Of an array with
/// other elements, only the element holding `at` goes: `key = ["client", "bogus"]`
/// still fills its (required) field, so the table's other errors are reported too. A
/// lone element takes its entry with it: an emptied array would be an error of its own.
fn take_out_entry_at(value: &mut Spanned<DeValue>, at: usize) -> bool {
    let DeValue::Table(table) = value.get_mut() else {
        return false;
    };
    let Some(key) = table
        .iter()
        .find(|(key, entry)| key.span().contains(&at) || entry.span().contains(&at))
        .map(|(key, _)| key.clone())
    else {
        return false;
    };
    if let Some(DeValue::Array(items)) = table.get_mut(&key).map(Spanned::get_mut) {
        if let Some(bad) = items.iter().position(|item| item.span().contains(&at)) {
            if items.len() > 1 {
                let all = std::mem::replace(items, DeArray::new());
                *items = all
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, item)| (i != bad).then_some(item))
                    .collect();
                return true;
            }
        }
    }
    table.remove(&key).is_some()
}

/// The `[SECTION.NAME]` tables of a section, each deserialized on its own as the
/// variant of `T` its `kind` names (see [`kind_tagged`]): every name declared, with
/// `None` for one that did not deserialize (its errors are reported).
pub(crate) fn named_tables<T: DeserializeOwned>(
    loader: &mut Loader,
    src: &SourceFile,
    value: Spanned<DeValue>,
    section: &str,
) -> Vec<(String, Range<usize>, Option<T>)> {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        loader.error(
            src,
            Some(span),
            format!("[{section}] must hold named tables: [{section}.NAME]"),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, entry) in table {
        let (name, span) = (key.get_ref().to_string(), key.span());
        let what = format!("[{section}.{name}]");
        let parsed = kind_tagged(
            loader,
            src,
            Spanned::new(span.clone(), entry.into_inner()),
            &what,
        );
        out.push((name, span, parsed));
    }
    out
}
