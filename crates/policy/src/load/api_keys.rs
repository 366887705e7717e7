//! `[api_keys]`: the legacy keys (stored as hashes, in a file of their own), where a
//! request may carry one, and the migration dates.

use http::header::HeaderName;
use http::uri::Uri;
use tollgate_auth::api_key::{ApiKey, ApiKeys};
use toml::de::DeValue;
use toml::Spanned;

use super::context::Loader;
use super::document;
use super::file::{ApiKeyFileEntry, ApiKeysFile};
use crate::diagnostic::SourceFile;
use crate::snapshot::ApiKeySettings;

pub(crate) fn api_keys(l: &mut Loader, src: &SourceFile, f: ApiKeysFile) -> Option<ApiKeySettings> {
    let keys = api_key_file(l, src, &f.file);
    let headers: Vec<HeaderName> = match &f.headers {
        None => vec![HeaderName::from_static("x-api-key")],
        Some(list) => list.iter().filter_map(|h| l.header_name(src, h)).collect(),
    };
    let deprecation = f.deprecation.as_ref().and_then(|d| timestamp(l, src, d));
    let sunset = f.sunset.as_ref().and_then(|d| timestamp(l, src, d));
    if let (Some(dep), Some(sun), Some(span)) =
        (deprecation, sunset, f.sunset.as_ref().map(|s| s.span()))
    {
        if sun < dep {
            l.error(
                src,
                Some(span),
                "[api_keys] sunset: must not be before deprecation",
            );
        }
    }
    let sunset_link = match &f.sunset_link {
        Some(link)
            if link.get_ref().parse::<Uri>().is_err()
                || link.get_ref().contains(['<', '>', '"']) =>
        {
            l.error(src, Some(link.span()), "[api_keys] sunset_link: not a URL");
            None
        }
        other => other.as_ref().map(|l| l.get_ref().clone()),
    };
    // As for [jwt]: given even with errors (which fail the load), so routes do not also
    // report a missing [api_keys].
    Some(ApiKeySettings {
        keys: keys.unwrap_or_else(|| ApiKeys::new(Vec::new())),
        headers,
        query_param: f.query_param,
        deprecation,
        sunset,
        sunset_link,
    })
}

fn api_key_file(l: &mut Loader, src: &SourceFile, path: &Spanned<String>) -> Option<ApiKeys> {
    let (full, bytes) = l.read_named(src, path, "[api_keys] file")?;
    let Ok(text) = String::from_utf8(bytes) else {
        l.error(src, Some(path.span()), "[api_keys] file: not UTF-8");
        return None;
    };
    let keys_src = SourceFile {
        path: &full,
        text: &text,
    };
    // Each `[[key]]` is read on its own, so one entry's mistake hides no other's.
    let mark = l.mark();
    let mut sections = document::parse(l, &keys_src)?;
    let entries = match sections.remove("key") {
        None => Vec::new(),
        Some((_, value)) => {
            let span = value.span();
            match value.into_inner() {
                DeValue::Array(items) => items
                    .into_iter()
                    .filter_map(|item| {
                        document::deserialize::<ApiKeyFileEntry>(l, &keys_src, item, "[[key]]")
                    })
                    .collect(),
                _ => {
                    l.error(
                        &keys_src,
                        Some(span),
                        "`key` must be an array of tables: [[key]]",
                    );
                    return None;
                }
            }
        }
    };
    for (name, (span, _)) in sections {
        l.error(
            &keys_src,
            Some(span),
            format!("unknown field `{name}`, expected `key` (each entry a [[key]] table)"),
        );
    }
    if entries.is_empty() && !l.errors_since(mark) {
        // Loading one empty is legal (every legacy caller moved to JWT), but more often
        // the export that fills it failed: every API-key caller is then refused.
        let d = keys_src.warning(
            None,
            "no [[key]] in this file: every API key will be refused",
        );
        l.diags.push(d);
    }
    let mut keys = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    // (sha256, id) of every key taken: one key names one client.
    let mut hashes: Vec<(String, String)> = Vec::new();
    for entry in entries {
        if ids.contains(entry.id.get_ref()) {
            let d = keys_src.error(
                Some(entry.id.span()),
                format!("key id `{}` is used twice", entry.id.get_ref()),
            );
            l.diags.push(d);
            continue;
        }
        ids.push(entry.id.get_ref().clone());
        if !tollgate_auth::jwt::is_usable_client_id(entry.client_id.get_ref()) {
            let d = keys_src.error(
                Some(entry.client_id.span()),
                "client_id: 1-128 characters of A-Z a-z 0-9 - _ . : @",
            );
            l.diags.push(d);
            continue;
        }
        // The same key listed twice would authenticate as whichever entry came last:
        // another client's traffic, counted, charged and credentialed as that client.
        if let Some((_, first)) = hashes
            .iter()
            .find(|(hash, _)| hash.eq_ignore_ascii_case(entry.sha256.get_ref()))
        {
            let d = keys_src.error(
                Some(entry.sha256.span()),
                format!("sha256: the same key as key `{first}`: one key names one client"),
            );
            l.diags.push(d);
            continue;
        }
        match ApiKey::new(
            entry.id.get_ref().clone(),
            entry.client_id.get_ref().clone(),
            entry.sha256.get_ref(),
        ) {
            Some(k) => {
                hashes.push((entry.sha256.get_ref().clone(), entry.id.get_ref().clone()));
                keys.push(k);
            }
            None => {
                let d = keys_src.error(
                    Some(entry.sha256.span()),
                    "sha256: expected the 64 lower-case hex digits of the key's SHA-256 (printf %s KEY | sha256sum)",
                );
                l.diags.push(d);
            }
        }
    }
    Some(ApiKeys::new(keys))
}

/// A TOML datetime (with offset) or date as seconds since the epoch.
fn timestamp(
    l: &mut Loader,
    src: &SourceFile,
    value: &Spanned<toml::value::Datetime>,
) -> Option<u64> {
    let dt = value.get_ref();
    let Some(date) = dt.date else {
        l.error(
            src,
            Some(value.span()),
            "expected a date such as 2027-06-30 or 2027-06-30T00:00:00Z",
        );
        return None;
    };
    let offset_minutes: i64 = match (dt.time, dt.offset) {
        (None, _) => 0,
        (Some(_), Some(toml::value::Offset::Z)) => 0,
        (Some(_), Some(toml::value::Offset::Custom { minutes })) => i64::from(minutes),
        (Some(_), None) => {
            l.error(
                src,
                Some(value.span()),
                "give the time with an offset, e.g. 2027-06-30T00:00:00Z",
            );
            return None;
        }
    };
    let days = days_from_civil(
        i64::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
    );
    let secs_of_day = dt.time.map_or(0, |t| {
        i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second)
    });
    u64::try_from(days * 86_400 + secs_of_day - offset_minutes * 60).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, warnings, GATEWAY};
    use super::days_from_civil;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }

    #[test]
    fn keys_headers_and_dates() {
        let s = load(&format!("{GATEWAY}\n[api_keys]\nfile = \"keys/api-keys.toml\"\nheaders = [\"x-key\", \"x-api-key\"]\ndeprecation = 2026-12-01T00:00:00Z\nsunset = 2027-06-30\nsunset_link = \"https://example.test/migrate\"\n"), &[]).unwrap();
        let k = s.auth.api_keys.unwrap();
        assert_eq!(k.headers, ["x-key", "x-api-key"]);
        assert_eq!(k.deprecation, Some(1_796_083_200));
        assert_eq!(k.sunset, Some(1_814_313_600));
        assert!(k.keys.find("legacy-key-acme").is_some());
    }

    #[test]
    fn an_empty_key_file_loads_with_a_warning() {
        let gateway = format!("{GATEWAY}\n[api_keys]\nfile = \"keys/no-keys.toml\"\n");
        let k = load(&gateway, &[]).unwrap().auth.api_keys.unwrap();
        assert!(k.keys.find("legacy-key-acme").is_none());
        assert_eq!(
            warnings(&gateway, &[]),
            ["no-keys.toml:1:1: no [[key]] in this file: every API key will be refused"]
        );
    }

    #[test]
    fn each_mistake_where_it_is() {
        let e = errors(&format!("{GATEWAY}\n[api_keys]\nfile = \"keys/missing.toml\"\nsunset = 2026-01-01T00:00:00\nsunset_link = \"<x>\"\n"), &[]);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("gateway.toml:11:8: [api_keys] file: cannot read"),
            "{e:?}"
        );
        assert_eq!(
            e[1],
            "gateway.toml:12:10: give the time with an offset, e.g. 2027-06-30T00:00:00Z"
        );
        assert_eq!(
            e[2],
            "gateway.toml:13:15: [api_keys] sunset_link: not a URL"
        );
        let e = errors(
            &format!("{GATEWAY}\n[api_keys]\nfile = \"keys/bad-keys.toml\"\n"),
            &[],
        );
        assert_eq!(
            e,
            [
                "bad-keys.toml:6:6: key id `a` is used twice",
                "bad-keys.toml:11:13: client_id: 1-128 characters of A-Z a-z 0-9 - _ . : @"
            ]
        );
        // Every entry is read: one entry's unknown field hides no other entry's mistake.
        let e = errors(
            &format!("{GATEWAY}\n[api_keys]\nfile = \"keys/mixed-keys.toml\"\n"),
            &[],
        );
        assert_eq!(
            e,
            [
                "mixed-keys.toml:1:1: unknown field `extra`, expected `key` (each entry a [[key]] table)",
                "mixed-keys.toml:6:1: [[key]]: unknown field `colour`, expected one of `id`, `client_id`, `sha256`",
                "mixed-keys.toml:10:10: sha256: expected the 64 lower-case hex digits of the key's SHA-256 (printf %s KEY | sha256sum)",
                "mixed-keys.toml:14:10: sha256: the same key as key `a`: one key names one client",
                "mixed-keys.toml:16:6: key id `c` is used twice",
            ]
        );
        let e = errors(
            &format!("{GATEWAY}\n[api_keys]\nfile = \"keys/same-key.toml\"\n"),
            &[],
        );
        assert_eq!(
            e,
            ["same-key.toml:8:10: sha256: the same key as key `a`: one key names one client"]
        );
    }
}
