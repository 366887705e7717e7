//! Path normalization and route matching: whatever the raw path, the normalized one is
//! stable, has one spelling per character, is free of anything a second decoder could
//! read differently, and is forwarded byte for byte; route parameters are always single
//! segments.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_policy::path::normalize;
use tollgate_policy::pattern::PathPattern;
use tollgate_policy::snapshot::Upstream;
use tollgate_proxy::internals::upstream_uri;

const PATTERNS: &[&str] = &["/", "/admin/*", "/campaigns/{id}", "/a/{x}/b/*", "/pub/*"];

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    // What the gateway is given: the path of a target hyper accepted.
    let Ok(target) = http::uri::PathAndQuery::try_from(raw) else {
        return;
    };
    let Ok(judged) = normalize(target.path()) else {
        return;
    };
    assert_eq!(normalize(&judged).as_deref(), Ok(judged.as_str()), "not idempotent");
    assert!(judged.starts_with('/'));
    assert!(!judged.contains("//"), "{judged}");
    assert!(!judged.contains('\\'), "{judged}");
    let lower = judged.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%2e"));
    for segment in judged.split('/') {
        assert!(segment != "." && segment != "..", "{judged}");
    }
    // One spelling per character: nothing raw that must be escaped, nothing escaped that
    // is written raw, hex upper case.
    assert!(judged.is_ascii(), "{judged}");
    assert!(
        !judged.contains([' ', '"', '<', '>', '[', ']', '^', '`', '{', '|', '}']),
        "{judged}"
    );
    for (at, _) in judged.match_indices('%') {
        let hex = &judged[at + 1..at + 3];
        assert_eq!(hex, hex.to_ascii_uppercase(), "{judged}");
        let byte = u8::from_str_radix(hex, 16).expect("an escape");
        let plain = byte.is_ascii_alphanumeric() || b"-._~:@!$'()*,".contains(&byte);
        assert!(!plain, "{judged}: %{hex} has a raw spelling");
    }
    let upstream = Upstream {
        authority: http::uri::Authority::from_static("backend:8081"),
        base_path: "/api".into(),
        connect_timeout: std::time::Duration::from_secs(1),
        response_timeout: std::time::Duration::from_secs(1),
        pool_idle_timeout: std::time::Duration::from_secs(1),
        pool_max_idle: 1,
        tls: None,
    };
    let uri = upstream_uri(target.query(), &judged, &upstream)
        .expect("a normalized path is always forwardable");
    assert_eq!(uri.path(), format!("/api{judged}"), "forwarded != judged");
    for pattern in PATTERNS {
        let pattern = PathPattern::parse(pattern).expect("valid");
        if let Some(params) = pattern.params(&judged) {
            for (_, value) in params {
                assert!(!value.is_empty() && !value.contains('/'), "{judged}");
            }
        }
    }
});
