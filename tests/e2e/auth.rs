//! Authentication end to end: tokens made by an independent implementation (PyJWT,
//! `tests/fixtures/jwt/make_tokens.py`), the attack catalogue, the API-key migration
//! rules, backend credentials (the `/upload-csv` scenario) and provider callbacks.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{Harness, RawResponse, Setup};

use crate::support::jwt_fixtures as fixtures;

#[derive(serde::Deserialize)]
struct Case {
    token: String,
    status: u16,
    code: Option<String>,
    note: String,
}

fn cases() -> BTreeMap<String, Case> {
    let text = std::fs::read_to_string(fixtures().join("tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

const PLIVO_TOKEN: &str = "MAZDQ1MTZIZGY3ZJG0ZTQ2YJQ0N2"; // a test token, not a real account's
const PLIVO_OLD_TOKEN: &str = "OLDTOKENBEFOREROTATION000000";
const EXOTEL_SECRET: &str = "exotel-callback-secret-for-tests";

/// A gateway with every auth feature configured, against the fixture keys.
fn auth_setup(api_key_extra: &str) -> (Setup, crate::support::TempDir) {
    let keys = fixtures().join("keys");
    let k = |name: &str| keys.join(name).display().to_string();
    let secrets = crate::support::TempDir::new();
    let dir = secrets.path();
    let hash = |key: &str| tollgate_auth::api_key::hash_hex(key);
    std::fs::write(
        dir.join("api-keys.toml"),
        format!(
            "[[key]]\nid = \"acme-1\"\nclient_id = \"1001\"\nsha256 = \"{}\"\n\n[[key]]\nid = \"globex-1\"\nclient_id = \"1002\"\nsha256 = \"{}\"\n",
            hash("legacy-key-acme"),
            hash("legacy-key-globex")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("client-keys.toml"),
        "\"1001\" = \"demo-legacy-key-1001\"\n\"1002\" = \"demo-legacy-key-1002\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("plivo-tokens"),
        format!("{PLIVO_OLD_TOKEN}\n{PLIVO_TOKEN}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("exotel.secret"), format!("{EXOTEL_SECRET}\n")).unwrap();
    std::fs::write(dir.join("service.key"), "svc-key-123\n").unwrap();
    std::fs::write(dir.join("service.password"), "p@ss:word\n").unwrap();
    let d = |name: &str| dir.join(name).display().to_string();
    let extra = format!(
        r#"
[jwt]
issuer = "https://issuer.test"
audience = "legacy-api"

[[jwt.key]]
id = "hs-256"
algorithm = "HS256"
secret_file = "{hs256}"

[[jwt.key]]
id = "hs-512"
algorithm = "HS512"
secret_file = "{hs512}"

[[jwt.key]]
id = "rsa-256"
algorithm = "RS256"
public_key_file = "{rsa}"

[[jwt.key]]
id = "rsa-512"
algorithm = "RS512"
public_key_file = "{rsa}"

[[jwt.key]]
id = "rsa-ps256"
algorithm = "PS256"
public_key_file = "{rsa}"

[[jwt.key]]
id = "ec-256"
algorithm = "ES256"
public_key_file = "{ec256}"

[[jwt.key]]
id = "ec-384"
algorithm = "ES384"
public_key_file = "{ec384}"

[[jwt.key]]
id = "ed-1"
algorithm = "EdDSA"
public_key_file = "{ed}"

[api_keys]
file = "{api_keys}"
headers = ["x-api-key"]
query_param = "api_key"
deprecation = 2026-01-01T00:00:00Z
sunset_link = "https://docs.example.test/migrate"
{api_key_extra}

[credentials.client-key]
kind = "client_map"
header = "x-api-key"
file = "{client_keys}"

[credentials.service-key]
kind = "header"
header = "x-service-key"
value_file = "{service_key}"

[credentials.service-basic]
kind = "basic"
username = "gateway"
password_file = "{service_password}"

[webhooks.plivo]
kind = "plivo_v3"
public_base_url = "https://callbacks.example.test"
auth_tokens_file = "{plivo}"

[webhooks.exotel]
kind = "url_secret"
param = "secret"
secret_file = "{exotel}"

[webhooks.local-only]
kind = "ip_allowlist"
cidrs = ["127.0.0.1/32"]

[webhooks.elsewhere-only]
kind = "ip_allowlist"
cidrs = ["10.0.0.0/8"]
"#,
        hs256 = k("hs256.secret"),
        hs512 = k("hs512.secret"),
        rsa = k("rsa.pub.pem"),
        ec256 = k("ec256.pub.pem"),
        ec384 = k("ec384.pub.pem"),
        ed = k("ed25519.pub.pem"),
        api_keys = d("api-keys.toml"),
        client_keys = d("client-keys.toml"),
        plivo = d("plivo-tokens"),
        exotel = d("exotel.secret"),
        service_key = d("service.key"),
        service_password = d("service.password"),
    );
    let policies = r#"
[[route]]
name = "jwt-only"
path = "/echo/jwt/*"
auth = "jwt"
upstream_credential = "client-key"

[[route]]
name = "static-header"
path = "/echo/svc/*"
auth = "jwt"
upstream_credential = "service-key"

[[route]]
name = "basic"
path = "/echo/basic/*"
auth = "jwt"
upstream_credential = "service-basic"

[[route]]
name = "jwt-plain"
path = "/echo/plain/*"
auth = "jwt"

[[route]]
name = "either"
path = "/echo/either/*"
auth = "jwt_or_api_key"
upstream_credential = "client-key"

[[route]]
name = "key-only"
path = "/echo/key/*"
auth = "api_key"

[[route]]
name = "key-passed-on"
path = "/echo/passkey/*"
auth = "api_key"
pass_api_key = true

[[route]]
name = "upload-csv"
methods = ["POST"]
path = "/upload-csv"
auth = "jwt_or_api_key"
upstream_credential = "client-key"

[[route]]
name = "upload-csv-unmapped"
methods = ["POST"]
path = "/upload-csv-without-credential"
auth = "jwt"

[[route]]
name = "plivo"
path = "/echo/plivo/*"
auth = "webhook"
webhook = "plivo"

[[route]]
name = "exotel"
path = "/echo/exotel/*"
auth = "webhook"
webhook = "exotel"

[[route]]
name = "local-callbacks"
path = "/echo/local/*"
auth = "webhook"
webhook = "local-only"

[[route]]
name = "remote-callbacks"
path = "/echo/remote/*"
auth = "webhook"
webhook = "elsewhere-only"
"#;
    let setup = Setup {
        policies: vec![("10-auth.toml".into(), policies.into())],
        extra,
        ..Setup::default()
    };
    (setup, secrets)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_refused(response: &RawResponse, status: u16, code: &str) {
    response.assert_problem(status, code);
    if status == 401 {
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer realm=\"tollgate\""),
            "401 needs a Bearer challenge, got {challenge:?}"
        );
    }
}

#[tokio::test]
async fn the_attack_catalogue_and_every_algorithm() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let mut failures = Vec::new();
    let all = cases();
    assert!(all.len() >= 30, "the catalogue shrank: {}", all.len());
    for (name, case) in all {
        let before = h.backend.requests();
        let response = h
            .get("/echo/jwt/x", &[("authorization", &bearer(&case.token))])
            .await;
        let reached = h.backend.requests() - before;
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        let ok = match (&case.code, case.status) {
            (None, 200) => {
                let want_key = if body["headers"].to_string().contains("1002")
                    || name == "numeric-client-id"
                {
                    "demo-legacy-key-1002"
                } else {
                    "demo-legacy-key-1001"
                };
                response.status == 200
                    && reached == 1
                    && response.echoed_header("x-api-key") == [want_key]
                    && response.echoed_header("authorization").is_empty()
            }
            (Some(code), status) => {
                let challenge = response.header("www-authenticate").unwrap_or_default();
                response.status == status
                    && body["code"] == code.as_str()
                    && reached == 0
                    && (status != 401 || challenge.starts_with("Bearer realm=\"tollgate\""))
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{name} ({}): want {} {:?}, got {} {}",
                case.note,
                case.status,
                case.code,
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A repeated claim is named for what it is, not as a malformed claim.
    let r = h
        .get(
            "/echo/jwt/x",
            &[("authorization", &bearer(&cases()["duplicate-claims"].token))],
        )
        .await;
    assert_eq!(
        r.json()["detail"],
        "the token's payload is not one JSON object naming each claim once"
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("tollgate_auth_refused_total{code=\"TOKEN_EXPIRED\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_jku_header_is_never_fetched() {
    // A server the token points at; it must never be asked for anything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jku = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let contacted = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&contacted);
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let attacker = std::fs::read(fixtures().join("keys/attacker-rsa.key.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("attacker-key".into());
    header.jku = Some(jku);
    let claims = serde_json::json!({"clientId": "1001", "iss": "https://issuer.test", "aud": "legacy-api", "exp": 4102444800u64});
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&attacker).unwrap(),
    )
    .unwrap();

    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let response = h
        .get("/echo/jwt/x", &[("authorization", &bearer(&token))])
        .await;
    assert_refused(&response, 401, "TOKEN_INVALID");
    assert_eq!(
        contacted.load(Ordering::SeqCst),
        0,
        "the gateway fetched the jku URL"
    );
}

#[tokio::test]
async fn api_keys_are_a_fallback_only_when_no_token_is_presented() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let good_jwt = &cases()["hs256"].token;
    let expired = &cases()["expired"].token;

    // A valid key on a route that allows it: the caller's key is swapped for the
    // backend's per-client key, and the response says keys are deprecated.
    let r = h
        .get("/echo/either/a", &[("x-api-key", "legacy-key-globex")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-api-key"), ["demo-legacy-key-1002"]);
    assert_eq!(r.header("deprecation"), Some("@1767225600"));
    assert_eq!(
        r.header("link"),
        Some("<https://docs.example.test/migrate>; rel=\"sunset\"")
    );

    // Two Authorization headers: which would the backend read? Refused, and said so.
    let r = h
        .get(
            "/echo/either/a",
            &[
                ("authorization", &bearer(good_jwt)),
                ("authorization", &bearer(good_jwt)),
            ],
        )
        .await;
    assert_refused(&r, 401, "TOKEN_INVALID");
    assert!(
        r.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("more than one `Authorization` header")),
        "{}",
        r.json()
    );

    // A presented token decides, even when a good key rides along.
    let r = h
        .get(
            "/echo/either/a",
            &[
                ("authorization", &bearer("not.a.token")),
                ("x-api-key", "legacy-key-acme"),
            ],
        )
        .await;
    assert_refused(&r, 401, "TOKEN_INVALID");
    let r = h
        .get(
            "/echo/either/a",
            &[
                ("authorization", &bearer(expired)),
                ("x-api-key", "legacy-key-acme"),
            ],
        )
        .await;
    assert_refused(&r, 401, "TOKEN_EXPIRED");
    let r = h
        .get("/echo/either/a", &[("authorization", &bearer(good_jwt))])
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("deprecation").is_none(),
        "JWT callers get no deprecation notice"
    );

    // Another scheme is not a token: the key is used.
    let r = h
        .get(
            "/echo/either/a",
            &[
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("x-api-key", "legacy-key-acme"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-api-key"), ["demo-legacy-key-1001"]);

    // On a key route, a token the gateway did not check is not passed on either.
    let r = h
        .get(
            "/echo/key/a",
            &[
                ("x-api-key", "legacy-key-acme"),
                ("authorization", "Bearer forged.token.here"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.echoed_header("authorization").is_empty());

    // Nothing, or a bad key.
    assert_refused(&h.get("/echo/either/a", &[]).await, 401, "AUTH_REQUIRED");
    assert_refused(
        &h.get("/echo/either/a", &[("x-api-key", "guess")]).await,
        401,
        "API_KEY_INVALID",
    );
    assert_refused(
        &h.get("/echo/key/a", &[("x-api-key", "guess")]).await,
        401,
        "API_KEY_INVALID",
    );
    // A JWT-only route ignores keys.
    assert_refused(
        &h.get("/echo/jwt/a", &[("x-api-key", "legacy-key-acme")])
            .await,
        401,
        "AUTH_REQUIRED",
    );

    // A key in the query string works and is not forwarded; pass_api_key keeps it.
    let r = h
        .get("/echo/key/q?api_key=legacy-key-acme&page=2", &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["query"],
        "clientId=1001&page=2",
        "the key is gone, the caller's id added"
    );
    let r = h
        .get("/echo/passkey/q", &[("x-api-key", "legacy-key-acme")])
        .await;
    assert_eq!(r.echoed_header("x-api-key"), ["legacy-key-acme"]);
    let r = h
        .get("/echo/key/q", &[("x-api-key", "legacy-key-acme")])
        .await;
    assert!(
        r.echoed_header("x-api-key").is_empty(),
        "the caller's key is removed"
    );

    let metrics = h.metrics().await;
    assert!(
        metrics.contains("tollgate_api_key_requests_total{key_id=\"acme-1\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_api_key_requests_total{key_id=\"globex-1\"} 1"),
        "{metrics}"
    );

    // Two different keys in two places (a header and the query in any spelling):
    // refused, whichever is valid; a backend that reads the key itself could take the
    // one the gateway did not check.
    for (target, key) in [
        (
            "/echo/passkey/q?api_key=legacy-key-globex",
            "legacy-key-acme",
        ),
        ("/echo/passkey/q?API%5FKEY=zzz", "legacy-key-acme"),
        ("/echo/key/q?api_key[]=legacy-key-acme", "guess"),
    ] {
        let r = h.get(target, &[("x-api-key", key)]).await;
        assert_refused(&r, 401, "API_KEY_INVALID");
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(
            detail.contains("more than one API key"),
            "{target}: {detail}"
        );
    }
    // The same key twice: a route that passes keys on sends it once, from the place
    // it was checked.
    let r = h
        .get(
            "/echo/passkey/q?api_key=legacy-key-acme&page=2",
            &[("x-api-key", "legacy-key-acme")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-api-key"), ["legacy-key-acme"]);
    let query = r.json()["query"].as_str().unwrap_or_default().to_owned();
    assert!(
        !query.contains("api_key") && query.contains("page=2"),
        "{query}"
    );
    assert!(
        h.gateway
            .wait_for_log(
                "\"auth\":\"api_key\",\"client_id\":\"1002\"",
                Duration::from_secs(5)
            )
            .await
    );
    assert!(
        !h.gateway.stderr().contains("legacy-key-acme"),
        "an API key reached the logs"
    );
}

#[tokio::test]
async fn keys_are_refused_after_the_sunset() {
    let (setup, _secrets) = auth_setup("sunset = 2026-06-01T00:00:00Z");
    let h = Harness::with(setup).await;
    let r = h
        .get("/echo/either/a", &[("x-api-key", "legacy-key-acme")])
        .await;
    assert_refused(&r, 401, "API_KEY_SUNSET");
    assert_eq!(r.header("sunset"), Some("Mon, 01 Jun 2026 00:00:00 GMT"));
    let r = h
        .get(
            "/echo/either/a",
            &[("authorization", &bearer(&cases()["hs256"].token))],
        )
        .await;
    assert_eq!(r.status, 200, "tokens keep working");
}

#[tokio::test]
async fn upload_csv_with_a_jwt_reaches_the_legacy_backend_with_its_key() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let csv = b"name,phone\nAda,+15550100\nGrace,+15550101\n";
    let mut body = Vec::new();
    body.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"contacts.csv\"\r\nContent-Type: text/csv\r\n\r\n");
    body.extend_from_slice(csv);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let token = bearer(&cases()["rs256"].token);
    let headers = [
        ("authorization", token.as_str()),
        ("content-type", "multipart/form-data; boundary=XyZ"),
    ];

    // Without a backend credential the legacy API refuses a JWT caller...
    let r = h
        .send("POST", "/upload-csv-without-credential", &headers, &body)
        .await;
    assert_eq!(
        r.status, 404,
        "the backend has no such path; what matters is the next one"
    );
    // ...with the route's credential it accepts, and the bytes arrive untouched.
    let r = h.send("POST", "/upload-csv", &headers, &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["clientId"], "1001");
    assert_eq!(r.json()["bytes"], body.len());
    assert_eq!(
        r.json()["sha256"],
        crate::proxying::hex(&<sha2::Sha256 as sha2::Digest>::digest(&body))
    );

    // A JWT caller cannot choose another client's legacy key.
    let spoof = [
        ("authorization", token.as_str()),
        ("content-type", "multipart/form-data; boundary=XyZ"),
        ("x-api-key", "demo-legacy-key-1002"),
    ];
    let r = h.send("POST", "/upload-csv", &spoof, &body).await;
    assert_eq!(r.json()["clientId"], "1001");
}

#[tokio::test]
async fn tokens_minted_by_the_cli_are_accepted() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let config = h.dir.path().join("gateway.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "token", "mint", "--client", "4242", "--ttl", "5m", "--config",
        ])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = h
        .get("/echo/plain/x", &[("authorization", &bearer(&token))])
        .await;
    assert_eq!(r.status, 200);
    // A client with no legacy key in the credential map cannot reach routes that need one.
    let r = h
        .get("/echo/jwt/x", &[("authorization", &bearer(&token))])
        .await;
    r.assert_problem(403, "FORBIDDEN");
}

fn plivo_headers(
    url_path: &str,
    method: &str,
    params: &[(&str, &str)],
    token: &str,
    nonce: &str,
) -> String {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tollgate_auth::plivo::signature(
        token.as_bytes(),
        &format!("https://callbacks.example.test{url_path}"),
        method,
        &owned,
        nonce,
    )
}

#[tokio::test]
async fn plivo_callbacks_are_verified_and_forwarded_intact() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let form = "CallUUID=abc-123&From=%2B15550100&To=sip%3Aagent%40example.test&Event=StartApp";
    let params = [
        ("CallUUID", "abc-123"),
        ("From", "+15550100"),
        ("To", "sip:agent@example.test"),
        ("Event", "StartApp"),
    ];
    let path = "/echo/plivo/answer?campaign=7";
    let good = plivo_headers(path, "POST", &params, PLIVO_TOKEN, "n-1");
    let rotated = plivo_headers(path, "POST", &params, PLIVO_OLD_TOKEN, "n-1b");
    let listed = plivo_headers(path, "POST", &params, PLIVO_TOKEN, "n-1c");
    let send = |sig: String, nonce: &'static str| {
        let h = &h;
        async move {
            h.send(
                "POST",
                path,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("x-plivo-signature-v3", &sig),
                    ("x-plivo-signature-v3-nonce", nonce),
                ],
                form.as_bytes(),
            )
            .await
        }
    };
    let r = send(good.clone(), "n-1").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body"]["bytes"], form.len());
    assert_eq!(
        r.json()["body"]["sha256"],
        crate::proxying::hex(&<sha2::Sha256 as sha2::Digest>::digest(form.as_bytes()))
    );
    assert_eq!(
        send(rotated, "n-1b").await.status,
        200,
        "the previous auth token still verifies"
    );
    assert_eq!(
        send(format!("bogus, {listed}"), "n-1c").await.status,
        200,
        "any listed signature"
    );
    // The same callback again is a replay, whatever signature it lists.
    assert_refused(&send(good.clone(), "n-1").await, 409, "CALLBACK_REPLAYED");
    assert_refused(
        &send(format!("bogus, {listed}"), "n-1c").await,
        409,
        "CALLBACK_REPLAYED",
    );
    assert_refused(&send(good.clone(), "n-2").await, 401, "SIGNATURE_INVALID");
    assert_refused(&send("AAAA".into(), "n-1").await, 401, "SIGNATURE_INVALID");
    let unsigned = h
        .send(
            "POST",
            path,
            &[("content-type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
        .await;
    assert_refused(&unsigned, 401, "SIGNATURE_INVALID");

    // GET callbacks sign the sorted query.
    let get_path = "/echo/plivo/status?Status=completed&CallUUID=abc";
    let sig = plivo_headers(
        get_path,
        "GET",
        &[("Status", "completed"), ("CallUUID", "abc")],
        PLIVO_TOKEN,
        "n-3",
    );
    let r = h
        .get(
            get_path,
            &[
                ("x-plivo-signature-ma-v3", &sig),
                ("x-plivo-signature-v3-nonce", "n-3"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // What the signature does not cover is refused: a non-form body, a repeated
    // parameter, a query pair that is not name=value.
    let r = h
        .send(
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("x-plivo-signature-v3", &good),
                ("x-plivo-signature-v3-nonce", "n-1"),
            ],
            br#"{"Event":"Hangup"}"#,
        )
        .await;
    assert_refused(&r, 401, "SIGNATURE_INVALID");
    let doubled = format!("Event=Hangup&{form}");
    let r = h
        .send(
            "POST",
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-plivo-signature-v3", &good),
                ("x-plivo-signature-v3-nonce", "n-1"),
            ],
            doubled.as_bytes(),
        )
        .await;
    assert_refused(&r, 401, "SIGNATURE_INVALID");
    let r = h
        .send(
            "POST",
            "/echo/plivo/answer?campaign=7&x=a=b",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-plivo-signature-v3", &good),
                ("x-plivo-signature-v3-nonce", "n-1"),
            ],
            form.as_bytes(),
        )
        .await;
    assert_refused(&r, 401, "SIGNATURE_INVALID");

    // A body over the limit is refused before it is read.
    let big = "a=".to_owned() + &"x".repeat(70 * 1024);
    let r = h
        .send(
            "POST",
            path,
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("x-plivo-signature-v3", &good),
                ("x-plivo-signature-v3-nonce", "n-1"),
            ],
            big.as_bytes(),
        )
        .await;
    r.assert_problem(413, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn exotel_secrets_and_ip_allowlists() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let r = h
        .get(
            &format!("/echo/exotel/status?CallSid=1&secret={EXOTEL_SECRET}"),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["query"],
        "CallSid=1",
        "the secret is not forwarded"
    );
    // Wrong, missing, given twice: each says which, so a provider's operator can tell
    // a wrong secret from a URL that lost it.
    let twice =
        format!("/echo/exotel/status?CallSid=1&secret={EXOTEL_SECRET}&secret={EXOTEL_SECRET}");
    for (target, detail) in [
        ("/echo/exotel/status?CallSid=1&secret=wrong", "is wrong"),
        ("/echo/exotel/status?CallSid=1", "carries no signature"),
        (twice.as_str(), "more than once"),
    ] {
        let r = h.get(target, &[]).await;
        assert_refused(&r, 401, "SIGNATURE_INVALID");
        let said = r.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(said.contains(detail), "{target}: {said}");
    }
    assert_eq!(h.get("/echo/local/x", &[]).await.status, 200);
    h.get("/echo/remote/x", &[])
        .await
        .assert_problem(403, "FORBIDDEN");
    assert!(
        h.gateway
            .wait_for_log("secret=[redacted]", Duration::from_secs(5))
            .await
    );
    assert!(
        !h.gateway.stderr().contains(EXOTEL_SECRET),
        "the callback secret reached the logs"
    );
}

#[tokio::test]
async fn static_and_basic_backend_credentials_replace_what_the_client_sent() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let token = bearer(&cases()["es256"].token);
    let r = h
        .get(
            "/echo/svc/x",
            &[
                ("authorization", &token),
                ("x-service-key", "forged"),
                ("X-Service-Key", "forged2"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-service-key"), ["svc-key-123"]);
    let r = h.get("/echo/basic/x", &[("authorization", &token)]).await;
    assert_eq!(r.status, 200);
    // base64("gateway:p@ss:word"); the caller's bearer token itself is not forwarded.
    assert_eq!(
        r.echoed_header("authorization"),
        ["Basic Z2F0ZXdheTpwQHNzOndvcmQ="]
    );
    assert!(
        !h.gateway.stderr().contains("svc-key-123"),
        "a backend credential reached the logs"
    );
    // A legacy key sent along with a token is not passed on as a second identity.
    let r = h
        .get(
            "/echo/plain/x",
            &[
                ("authorization", &token),
                ("x-api-key", "legacy-key-globex"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.echoed_header("x-api-key").is_empty());
}

#[tokio::test]
async fn an_edited_api_key_list_is_picked_up_without_a_restart() {
    let (setup, secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    assert_refused(
        &h.get("/echo/key/a", &[("x-api-key", "brand-new-key")])
            .await,
        401,
        "API_KEY_INVALID",
    );
    let file = secrets.path().join("api-keys.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&format!(
        "\n[[key]]\nid = \"acme-2\"\nclient_id = \"1001\"\nsha256 = \"{}\"\n",
        tollgate_auth::api_key::hash_hex("brand-new-key")
    ));
    std::fs::write(&file, text).unwrap();
    let accepted = crate::support::eventually(Duration::from_secs(10), || async {
        h.get("/echo/key/a", &[("x-api-key", "brand-new-key")])
            .await
            .status
            == 200
    })
    .await;
    assert!(
        accepted,
        "the new key was not picked up:\n{}",
        h.gateway.stderr()
    );
}

/// The `Bearer` scheme is case-insensitive (RFC 9110 §11.1): a client library that
/// upper-cases it is authenticated like any other, on the data plane as on the admin API.
#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let token = &cases()["hs256"].token;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {token}");
        let r = h.get("/echo/jwt/a", &[("authorization", &value)]).await;
        assert_eq!(
            r.status,
            200,
            "{scheme}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // Another scheme is still no token at all.
    let value = format!("Token {token}");
    assert_refused(
        &h.get("/echo/jwt/a", &[("authorization", &value)]).await,
        401,
        "AUTH_REQUIRED",
    );
}

/// Credentials that arrive where they should not are not written to the access log:
/// the gateway's own refresh tokens under any parameter name or as a path segment
/// (only JWT-shaped values were redacted whatever their name), and a key sent as a
/// query parameter named like the configured API-key header (`?x-api-key=`).
#[tokio::test]
async fn credentials_in_odd_places_are_redacted_from_the_access_log() {
    let (setup, _secrets) = auth_setup("");
    let h = Harness::with(setup).await;
    let session = tollgate_auth::refresh::new_session_id().unwrap();
    let refresh = tollgate_auth::refresh::issue(&session).unwrap();
    let secret = refresh.split_once('.').unwrap().1.to_owned();
    let escaped = refresh.replace('.', "%2E");
    let cases = [
        ("log-rt-query", format!("/echo/either/a?rt={refresh}")),
        ("log-r-query", format!("/echo/either/a?x=1&r={escaped}&y=2")),
        ("log-rt-path", format!("/echo/either/{refresh}")),
        (
            "log-rt-path-param",
            format!("/echo/either/a;rt={refresh}/b"),
        ),
        (
            "log-key-query",
            "/echo/either/a?x-api-key=legacy-key-acme".to_owned(),
        ),
        (
            "log-key-query-case",
            "/echo/either/a?X-Api-Key=legacy-key-acme&q=1".to_owned(),
        ),
        (
            "log-key-query-escaped",
            "/echo/either/a?x%2Dapi%2Dkey=legacy-key-acme".to_owned(),
        ),
    ];
    for (id, target) in &cases {
        let r = h.get(target, &[("x-request-id", id)]).await;
        assert!(r.status > 0, "{id}");
    }
    for (id, target) in &cases {
        let line = h
            .gateway
            .access_line(id)
            .unwrap_or_else(|| panic!("no access line for {id}:\n{}", h.gateway.stderr()));
        let logged = format!("{} {}", line["path"], line["query"]);
        assert!(!logged.contains(&secret), "{target} logged as {logged}");
        assert!(
            !logged.contains(&secret[..20]),
            "{target} logged as {logged}"
        );
        assert!(
            !logged.contains("legacy-key-acme"),
            "{target} logged as {logged}"
        );
        assert!(logged.contains("[redacted]"), "{target} logged as {logged}");
    }
    // What is not a credential is still logged as it was sent.
    let line = h.gateway.access_line("log-key-query-case").unwrap();
    assert_eq!(line["query"], "X-Api-Key=[redacted]&q=1");
    let line = h.gateway.access_line("log-r-query").unwrap();
    assert_eq!(line["query"], "x=1&r=[redacted]&y=2");
}
