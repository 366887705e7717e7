//! Routes the gateway answers itself (`action = "serve"`): authenticated, limited and
//! decorated like any route, never forwarded.

use jsonwebtoken::{decode, DecodingKey, Validation};

use crate::support::{jwt_config, jwt_fixtures, Harness, Setup};

const POLICIES: &str = r#"
[limits.keys-per-address]
rate = 100
period = "1m"
key = ["ip"]

[[route]]
name = "jwks"
methods = ["GET"]
path = "/.well-known/jwks.json"
auth = "none"
action = "serve"
endpoint = "jwks"
limits = ["keys-per-address"]
"#;

fn setup() -> Setup {
    let keys = jwt_fixtures().join("keys");
    let ed = format!(
        "[[jwt.key]]\nid = \"idp-rsa\"\nalgorithms = [\"RS256\", \"PS256\"]\npublic_key_file = \"{}\"\n\n[[jwt.key]]\nid = \"gateway-ed\"\nalgorithm = \"EdDSA\"\npublic_key_file = \"{}\"\nprivate_key_file = \"{}\"\n",
        keys.join("rsa.pub.pem").display(),
        keys.join("ed25519.pub.pem").display(),
        keys.join("ed25519.key.pem").display(),
    );
    // The gateway's own signing key last: the newest key that can sign is the one
    // `token mint` (and the login) signs with.
    let jwt = format!("{}\n{ed}", jwt_config());
    Setup {
        policies: vec![("10-keys.toml".into(), POLICIES.into())],
        extra: jwt,
        ..Setup::default()
    }
}

#[tokio::test]
async fn the_gateway_publishes_its_signing_keys_and_nothing_else() {
    let h = Harness::with(setup()).await;
    let before = h.backend.requests();
    let r = h.get("/.well-known/jwks.json", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/jwk-set+json"));
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    // Served here, limited and decorated like any route.
    assert_eq!(h.backend.requests(), before);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    assert!(r.header("x-request-id").is_some());
    let set = r.json();
    let keys = set["keys"].as_array().unwrap();
    // Only the key with a private half: never the HMAC secret, never the identity
    // provider's public key.
    assert_eq!(keys.len(), 1, "{set}");
    assert_eq!(keys[0]["kid"], "gateway-ed");
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["use"], "sig");
    assert!(keys[0].get("d").is_none(), "no private member: {set}");

    // A token the gateway mints verifies with the published key alone.
    let config = h.dir.path().join("gateway.toml").display().to_string();
    let (ok, token) =
        crate::cli::tollgate(&["token", "mint", "--client", "1001", "--config", &config]);
    assert!(ok, "{token}");
    let token = token.lines().last().unwrap().trim();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(keys[0].clone()).unwrap();
    let mut validation = Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["legacy-api"]);
    let claims =
        decode::<serde_json::Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    assert_eq!(claims["clientId"], "1001");

    // The route's methods hold: POST is 405, not served.
    let r = h.send("POST", "/.well-known/jwks.json", &[], b"").await;
    r.assert_problem(405, "METHOD_NOT_ALLOWED");
}
