//! The policy loader, from memory: a `gateway.toml` and one policy file (split at the
//! first NUL byte), with the shipped development keys at hand. Never a panic; every
//! diagnostic has a place; a snapshot is only ever built whole, with unique route names,
//! and the same input always gives the same result.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tollgate_policy::sources::InMemory;

fn sources(config: &[u8], policy: &[u8]) -> InMemory {
    InMemory::new()
        .file("/c/gateway.toml", config)
        .file("/c/policies/a.toml", policy)
        .file("/c/dev-keys/jwt-hs256.secret", &include_bytes!("../../dev-keys/jwt-hs256.secret")[..])
        .file("/c/dev-keys/api-keys.toml", &include_bytes!("../../dev-keys/api-keys.toml")[..])
        .file(
            "/c/dev-keys/legacy-client-keys.toml",
            &include_bytes!("../../dev-keys/legacy-client-keys.toml")[..],
        )
        .file("/c/dev-keys/plivo-auth-tokens", &include_bytes!("../../dev-keys/plivo-auth-tokens")[..])
        .file(
            "/c/dev-keys/exotel-callback.secret",
            &include_bytes!("../../dev-keys/exotel-callback.secret")[..],
        )
        .var("TOLLGATE_FUZZ_SECRET", "0123456789abcdef0123456789abcdef")
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (config, policy) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let path = Path::new("/c/gateway.toml");
    let first = tollgate_policy::load_from(path, &sources(config, policy));
    let again = tollgate_policy::load_from(path, &sources(config, policy));
    match (&first, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.fingerprint, b.fingerprint);
            let mut names: Vec<&str> = a.routes.iter().map(|r| r.name.as_str()).collect();
            let count = names.len();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), count, "duplicate route names in a snapshot");
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.0.len(), b.0.len(), "diagnostics differ between runs");
            assert!(a.0.iter().any(|d| d.severity == tollgate_policy::Severity::Error));
            for d in &a.0 {
                assert!(d.line >= 1 && d.column >= 1, "{d}");
            }
        }
        _ => panic!("the same input loaded once and failed once"),
    }
});
