//! The `Bearer` scheme of an `Authorization` value (RFC 6750 §2.1), read one way
//! wherever the gateway reads it: the data plane, logout and the admin API.
//!
//! The scheme's name is case-insensitive (RFC 9110 §11.1): `Bearer`, `bearer` and
//! `BEARER` are one scheme. A client library that upper-cases it was refused by the
//! admin API while the data plane took it.

/// The credentials after a `Bearer` scheme, trimmed (empty when the value is the scheme
/// alone); `None` when `value` names another scheme. The scheme ends at the first space
/// or tab.
pub fn credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_matches([' ', '\t']))
}

#[cfg(test)]
mod tests {
    use super::credentials;

    #[test]
    fn the_scheme_is_case_insensitive() {
        for value in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "bEaReR t0k",
            "Bearer  t0k ",
            "Bearer\tt0k",
        ] {
            assert_eq!(credentials(value), Some("t0k"), "{value:?}");
        }
    }

    #[test]
    fn other_schemes_are_not_bearer_tokens() {
        for value in [
            "Basic dXNlcjpwdw==",
            "Bearertok",
            "Bearer-x y",
            "",
            "Token t0k",
            "MAC bearer",
        ] {
            assert_eq!(credentials(value), None, "{value:?}");
        }
        assert_eq!(credentials("Bearer"), Some(""));
        assert_eq!(credentials("BEARER   "), Some(""));
    }
}
