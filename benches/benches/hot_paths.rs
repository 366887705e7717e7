//! The per-request work that is pure computation: path normalization, route matching,
//! and token verification with and without the verified-token cache.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate_auth::cache::TokenCache;
use tollgate_auth::{Algorithm, Rules, VerifyKey};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt")
}

fn token(name: &str) -> String {
    let text = std::fs::read_to_string(fixtures().join("tokens.json")).expect("tokens.json");
    let cases: serde_json::Value = serde_json::from_str(&text).expect("json");
    cases[name]["token"].as_str().expect("token").to_owned()
}

fn key(file: &str, kid: &str, alg: Algorithm) -> Arc<VerifyKey> {
    let bytes = std::fs::read(fixtures().join("keys").join(file)).expect("key");
    let key = match alg {
        Algorithm::HS256 => VerifyKey::from_secret(Some(kid.into()), alg, bytes.trim_ascii_end()),
        _ => VerifyKey::from_pem(Some(kid.into()), alg, &bytes),
    };
    Arc::new(key.expect("valid key"))
}

fn tokens(c: &mut Criterion) {
    let rules = Rules {
        issuer: Some("https://issuer.test".into()),
        audience: Some("legacy-api".into()),
        leeway_secs: 30,
        max_token_bytes: 8192,
        client_id_claim: "clientId".into(),
    };
    let now = 1_790_000_000;
    let keys = [
        key("hs256.secret", "hs-256", Algorithm::HS256),
        key("rsa.pub.pem", "rsa-256", Algorithm::RS256),
        key("ec256.pub.pem", "ec-256", Algorithm::ES256),
        key("ed25519.pub.pem", "ed-1", Algorithm::EdDSA),
    ];
    for name in ["hs256", "rs256", "es256", "eddsa"] {
        let token = token(name);
        assert!(
            tollgate_auth::jwt::verify(&token, keys.iter(), &rules, now).is_ok(),
            "{name} must verify"
        );
        c.bench_function(&format!("jwt/{name}/verify"), |b| {
            b.iter(|| tollgate_auth::jwt::verify(black_box(&token), keys.iter(), &rules, now))
        });
        let cache = TokenCache::new(10_000);
        let claims =
            tollgate_auth::jwt::verify(&token, keys.iter(), &rules, now).expect("verifies");
        cache.insert(TokenCache::key(&token), Arc::new(claims));
        c.bench_function(&format!("jwt/{name}/cached"), |b| {
            b.iter(|| {
                cache
                    .get(&TokenCache::key(black_box(&token)), now, 30)
                    .expect("hit")
            })
        });
    }
}

fn paths(c: &mut Criterion) {
    c.bench_function("path/normalize/plain", |b| {
        b.iter(|| tollgate_policy::path::normalize(black_box("/campaigns/42/contacts")))
    });
    c.bench_function("path/normalize/hostile", |b| {
        b.iter(|| {
            tollgate_policy::path::normalize(black_box("//pub/%2e%2e/./admin/%61%62/../caf%c3%a9/"))
        })
    });
    let pattern =
        tollgate_policy::pattern::PathPattern::parse("/campaigns/{id}/contacts").expect("pattern");
    c.bench_function("route/match", |b| {
        b.iter(|| pattern.matches(black_box("/campaigns/42/contacts")))
    });
}

fn injection(c: &mut Criterion) {
    use tollgate_policy::snapshot::{ClientIdPolicy, JsonType, Mismatch};
    use tollgate_proxy::internals::{json_body, Caller};
    let policy = ClientIdPolicy {
        query: true,
        header: None,
        json: true,
        form: true,
        names: vec!["clientId".into(), "client_id".into()],
        json_pointer: Vec::new(),
        on_mismatch: Mismatch::Reject,
        allow_non_object_json: false,
        max_body_bytes: 1 << 20,
        json_type: JsonType::Claim,
    };
    let caller = Caller {
        id: "1001",
        integer: false,
    };
    // A campaign with contacts, like the frontend sends; in the worst case every contact
    // also names the caller's own id, so every object must be searched.
    for (label, size, nested_ids) in [
        ("1KiB", 1024usize, false),
        ("100KiB", 100 * 1024, false),
        ("100KiB-ids-in-every-contact", 100 * 1024, true),
    ] {
        let mut contacts = Vec::new();
        let mut body = String::new();
        while body.len() < size {
            let mut contact = serde_json::json!({"name": "Ada Lovelace", "phone": "+15550100", "tags": ["vip", "london"]});
            if nested_ids {
                contact["clientId"] = serde_json::json!("1001");
            }
            contacts.push(contact);
            body = serde_json::json!({"name": "Spring outreach", "provider": "plivo", "contacts": contacts}).to_string();
        }
        let bytes = body.into_bytes();
        c.bench_function(&format!("inject/json/{label}"), |b| {
            b.iter(|| json_body(black_box(&bytes), &policy, caller))
        });
    }
    // The worst a body can make the search do: its bulk under levels of names that may
    // be an id and never are, each level reading all of it again until the search's
    // budget (16 passes over the body) refuses it.
    let nested = format!(
        "{}\"{}\"{}",
        "{\"clientIdx\":".repeat(100),
        "x".repeat(1 << 20),
        "}".repeat(100)
    )
    .into_bytes();
    c.bench_function("inject/json/1MiB-nested-100-deep-refused", |b| {
        b.iter(|| json_body(black_box(&nested), &policy, caller))
    });
}

criterion_group!(benches, tokens, paths, injection);
criterion_main!(benches);
