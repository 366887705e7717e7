//! `application/x-www-form-urlencoded` and query-string decoding.

/// The decoded `name=value` pairs, in order (`+` is a space; broken escapes are kept
/// as written).
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

/// Percent-decodes one form component.
pub fn decode(component: &[u8]) -> String {
    let mut out = Vec::with_capacity(component.len());
    let mut i = 0;
    while i < component.len() {
        match component[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= component.len() => {
                let hex = std::str::from_utf8(&component[i + 1..i + 3]).ok();
                match hex
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query without the parameters named in `remove` (compared after decoding).
pub fn without_params(query: &str, remove: &[&str]) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let decoded = decode(name.as_bytes());
            !remove.iter().any(|r| *r == decoded)
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
    fn removes_named_params() {
        assert_eq!(
            without_params("a=1&secret=x&b=2&secre%74=y", &["secret"]),
            "a=1&b=2"
        );
        assert_eq!(without_params("secret=x", &["secret"]), "");
    }
}
