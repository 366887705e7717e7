//! Query and form parameter names as backends read them: the one place names are
//! decoded and compared, for client-id spoofing checks, secret parameters and log
//! redaction alike.
//!
//! Backends fold several spellings into one name, so the gateway compares names the way
//! the most forgiving of them would ([`canonical`]): after percent-decoding (`%74oken`
//! is `token`), case-insensitively, without the `[]`/`[0]` suffix that `qs`, Rails and
//! PHP turn into arrays (`token[]` is `token`), with PHP's renaming of ` `, `.` and an
//! unmatched `[` to `_` (`client.id` reaches PHP as `client_id`), without leading
//! whitespace, and cut at a NUL (C string APIs stop there). A name the gateway treats as
//! the same as a protected one may be a different name to the backend; never the reverse.

/// Percent-decodes one form or query component (`+` is a space; a broken escape is kept
/// as written; bytes that are not UTF-8 become U+FFFD).
pub fn decode(component: &[u8]) -> String {
    let mut out = Vec::with_capacity(component.len());
    let mut i = 0;
    while i < component.len() {
        match component[i] {
            b'+' => out.push(b' '),
            b'%' => match component.get(i + 1..i + 3).and_then(hex_pair) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| char::from(b).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

/// The name a raw (still encoded) parameter name stands for, in the folded form that
/// [`same_name`] compares.
pub fn canonical(raw: &[u8]) -> String {
    fold(&decode(raw))
}

/// Folds an already decoded name (a JSON member, a multipart field name, a configured
/// name) the way [`canonical`] folds a raw one.
pub fn fold(decoded: &str) -> String {
    folded(decoded).collect()
}

/// Whether two decoded names fold to the same name (without allocating).
pub fn same_folded(a: &str, b: &str) -> bool {
    folded(a).eq(folded(b))
}

fn folded(decoded: &str) -> impl Iterator<Item = char> + '_ {
    let name = decoded.split('\0').next().unwrap_or_default();
    let name = name.trim_start();
    // `name[...]`: an array element of `name` (PHP, qs, Rails); an unmatched `[` is
    // renamed to `_` by PHP instead.
    let name = match name.find('[') {
        Some(open) if name[open..].contains(']') => &name[..open],
        _ => name,
    };
    name.chars().map(|c| match c {
        ' ' | '.' | '[' => '_',
        c => c.to_ascii_lowercase(),
    })
}

/// Whether two names, one raw and one configured, mean the same parameter.
pub fn same_name(raw: &[u8], configured: &str) -> bool {
    canonical(raw) == fold(configured)
}

/// The `name=value` pairs of a query or form body, decoded, in order.
pub fn pairs(text: &[u8]) -> Vec<(String, String)> {
    text.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = parts.next().unwrap_or_default();
            let value = parts.next().unwrap_or_default();
            (decode(name), decode(value))
        })
        .collect()
}

/// The values of every parameter of `text` that means `configured`, in order.
pub fn values_of(text: &[u8], configured: &str) -> Vec<String> {
    let want = fold(configured);
    text.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = parts.next().unwrap_or_default();
            (canonical(name) == want).then(|| decode(parts.next().unwrap_or_default()))
        })
        .collect()
}

/// The query without the parameters that mean any of `remove` (configured names).
pub fn without(query: &str, remove: &[&str]) -> String {
    let folded: Vec<String> = remove.iter().map(|r| fold(r)).collect();
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !folded.contains(&canonical(name.as_bytes()))
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs() {
        assert_eq!(
            pairs(b"a=1&b=x+y&c=%41%2b&d&=e&f=%zz&g=%4"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "A+".into()),
                ("d".into(), "".into()),
                ("".into(), "e".into()),
                ("f".into(), "%zz".into()),
                ("g".into(), "%4".into()),
            ]
        );
    }

    #[test]
    fn every_spelling_a_backend_folds_is_the_same_name() {
        for raw in [
            "token",
            "TOKEN",
            "%74oken",
            "%54OKEN",
            "token[]",
            "token[0]",
            "token%5B%5D",
            "+token",
            "token%00junk",
        ] {
            assert!(same_name(raw.as_bytes(), "token"), "{raw}");
        }
        for raw in [
            "client.id",
            "client+id",
            "client%20id",
            "client[id",
            "CLIENT_ID",
        ] {
            assert!(same_name(raw.as_bytes(), "client_id"), "{raw}");
        }
        for raw in ["tokens", "tok", "xtoken", "to_ken"] {
            assert!(!same_name(raw.as_bytes(), "token"), "{raw}");
        }
    }

    #[test]
    fn removes_named_params_in_any_spelling() {
        assert_eq!(
            without("a=1&secret=x&b=2&secre%74=y&SECRET[]=z", &["secret"]),
            "a=1&b=2"
        );
        assert_eq!(without("secret=x", &["secret"]), "");
        assert_eq!(values_of(b"a=1&%73ecret=s&secret=t", "secret"), ["s", "t"]);
    }
}
