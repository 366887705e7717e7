//! The gateway's own surface against its contract, `docs/openapi.json`: real answers of
//! a running gateway (the shipped configuration, the demo backend behind it), each
//! looked up by operation and status in the document and its body validated against
//! the documented schema (JSON Schema 2020-12). A field renamed in code, a status the
//! document does not list, or a problem `code` missing from its enum fails here.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::{raw, repo, shipped_config, GatewayProcess, RawResponse, TempDir};

struct Contract {
    doc: Value,
}

/// `text` as one token of a JSON pointer inside a URI fragment.
fn pointer_token(text: &str) -> String {
    text.replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

impl Contract {
    fn load() -> Contract {
        let text = std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap();
        Contract {
            doc: serde_json::from_str(&text).unwrap(),
        }
    }

    /// Checks one real answer to `method template`: its status is documented (exactly,
    /// or by class such as `4XX`), its content type is one the document
    /// lists for it, and a JSON body validates against that schema.
    fn check(&self, method: &str, template: &str, response: &RawResponse) -> Result<(), String> {
        let what = format!("{method} {template} → {}", response.status);
        let operation = &self.doc["paths"][template][method.to_ascii_lowercase()];
        if operation.is_null() {
            return Err(format!("{what}: the operation is not documented"));
        }
        // The status itself or its class (`4XX`); never `default`, which would let any
        // status through.
        let status = response.status.to_string();
        let class = format!("{}XX", response.status / 100);
        let key = [status.as_str(), class.as_str()]
            .into_iter()
            .find(|k| !operation["responses"][*k].is_null())
            .ok_or_else(|| format!("{what}: status not documented"))?;
        let mut pointer = format!(
            "#/paths/{}/{}/responses/{key}",
            pointer_token(template),
            method.to_ascii_lowercase()
        );
        let mut documented = &operation["responses"][key];
        if let Some(reference) = documented["$ref"].as_str() {
            pointer = reference.to_owned();
            let path = reference.trim_start_matches('#');
            documented = self
                .doc
                .pointer(path)
                .ok_or_else(|| format!("{what}: dangling {reference}"))?;
        }
        let content_type = response
            .header("content-type")
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let Some(content_type) = content_type else {
            return match response.body.is_empty() || documented["content"].is_null() {
                true => Ok(()),
                false => Err(format!("{what}: a body without a content type")),
            };
        };
        let media = &documented["content"][&content_type];
        if media.is_null() {
            return Err(format!(
                "{what}: content type {content_type} not documented (documented: {})",
                documented["content"]
            ));
        }
        if !(content_type.ends_with("json")) || media["schema"].is_null() {
            return Ok(());
        }
        let body: Value = serde_json::from_slice(&response.body)
            .map_err(|e| format!("{what}: the body is not JSON: {e}"))?;
        // The whole document is the schema resource, so `#/components/...` references
        // resolve; its root `$ref` picks the response's schema.
        let mut schema = self.doc.clone();
        schema["$ref"] = json!(format!(
            "{pointer}/content/{}/schema",
            pointer_token(&content_type)
        ));
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .map_err(|e| format!("{what}: the schema does not compile: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        match errors.is_empty() {
            true => Ok(()),
            false => Err(format!("{what}: {} in {body}", errors.join("; "))),
        }
    }
}

/// Sends one request to `addr` and checks the answer against the contract, keeping
/// every failure.
struct Checker<'a> {
    contract: &'a Contract,
    failures: Vec<String>,
    seen: BTreeSet<(String, String, u16)>,
}

impl Checker<'_> {
    /// Sends one request; the answer must have status `expect` and match the document.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &mut self,
        expect: u16,
        addr: std::net::SocketAddr,
        method: &str,
        template: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> RawResponse {
        let mut request = format!("{method} {target} HTTP/1.1\r\nhost: gateway.test\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            request.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("connection: close\r\n\r\n");
        request.push_str(body);
        let response = raw(addr, request.as_bytes()).await;
        if response.status != expect {
            self.failures.push(format!(
                "{method} {target}: expected {expect}, got {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
        if let Err(e) = self.contract.check(method, template, &response) {
            self.failures.push(e);
        }
        self.seen
            .insert((method.to_owned(), template.to_owned(), response.status));
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_match_the_openapi_document() {
    let contract = Contract::load();
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    let upstream = format!("http://{}", backend.addr());
    let config = shipped_config(dir.path(), &upstream, |_, text| text);
    let gateway = GatewayProcess::start(&config);
    gateway.wait_ready().await;
    let gw = gateway.addr;
    let admin = gateway.admin;
    let admin_token = std::fs::read_to_string(repo().join("dev-keys/admin-token")).unwrap();
    let admin_auth = format!("Bearer {}", admin_token.trim());
    let mut c = Checker {
        contract: &contract,
        failures: Vec::new(),
        seen: BTreeSet::new(),
    };

    // Login, refresh, logout.
    let login = "/interlogue/get-client";
    let creds = r#"{"username":"demo@acme.test","password":"demo-password"}"#;
    let session = c.call(200, gw, "POST", login, login, &[], creds).await;
    assert_eq!(session.status, 200);
    let session = session.json();
    let access = format!("Bearer {}", session["token"].as_str().unwrap());
    let refresh_body = format!(
        r#"{{"refreshToken":"{}"}}"#,
        session["refreshToken"].as_str().unwrap()
    );
    let wrong = r#"{"username":"demo@acme.test","password":"nope"}"#;
    c.call(401, gw, "POST", login, login, &[], wrong).await;
    let refresh = "/gateway/auth/refresh";
    let renewed = c
        .call(200, gw, "POST", refresh, refresh, &[], &refresh_body)
        .await;
    assert_eq!(renewed.status, 200);
    // The spent token again within the grace: the same successor again.
    c.call(200, gw, "POST", refresh, refresh, &[], &refresh_body)
        .await;
    c.call(
        401,
        gw,
        "POST",
        refresh,
        refresh,
        &[],
        r#"{"refreshToken":"x"}"#,
    )
    .await;
    c.call(400, gw, "POST", refresh, refresh, &[], "[]").await;

    // The key set.
    let jwks = "/.well-known/jwks.json";
    c.call(200, gw, "GET", jwks, jwks, &[], "").await;

    // Token credits, as 1001 (500 tokens) and as a client with none.
    let bearer = [("authorization", access.as_str())];
    let balance = "/gateway/tokens/balance";
    c.call(200, gw, "GET", balance, balance, &bearer, "").await;
    c.call(401, gw, "GET", balance, balance, &[], "").await;
    let key = [("x-api-key", "demo-legacy-key-1002")];
    c.call(200, gw, "GET", balance, balance, &key, "").await;
    let costs = "/gateway/tokens/costs";
    c.call(200, gw, "GET", costs, costs, &bearer, "").await;
    let preview = "/gateway/tokens/preview";
    let ops = r#"{"operations":[{"method":"POST","path":"/campaigns"},{"method":"GET","path":"/campaigns"}]}"#;
    c.call(200, gw, "POST", preview, preview, &bearer, ops)
        .await;
    let one = r#"{"method":"POST","path":"/plivo/call"}"#;
    c.call(200, gw, "POST", preview, preview, &bearer, one)
        .await;
    let many = r#"[{"method":"POST","path":"/campaigns"}]"#;
    c.call(200, gw, "POST", preview, preview, &bearer, many)
        .await;
    c.call(400, gw, "POST", preview, preview, &bearer, r#"{"nope":1}"#)
        .await;
    // A movement for the history: a metered call.
    let created = c_post_campaign(gw, &access).await;
    assert_eq!(created, 201);
    let history = "/gateway/tokens/history";
    let page = c
        .call(
            200,
            gw,
            "GET",
            history,
            "/gateway/tokens/history?limit=1",
            &bearer,
            "",
        )
        .await;
    assert_eq!(page.status, 200);
    c.call(
        400,
        gw,
        "GET",
        history,
        "/gateway/tokens/history?limit=0",
        &bearer,
        "",
    )
    .await;

    // Logout ends the session; its access token then fails.
    let logout = "/gateway/auth/logout";
    let new_access = format!("Bearer {}", renewed.json()["token"].as_str().unwrap());
    let out = [("authorization", new_access.as_str())];
    c.call(200, gw, "POST", logout, logout, &out, "").await;
    c.call(401, gw, "GET", balance, balance, &out, "").await;

    // The admin listener.
    for path in ["/healthz", "/readyz", "/metrics"] {
        c.call(200, admin, "GET", path, path, &[], "").await;
    }
    let openmetrics = [(
        "accept",
        "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
    )];
    c.call(200, admin, "GET", "/metrics", "/metrics", &openmetrics, "")
        .await;
    let auth = [("authorization", admin_auth.as_str())];
    let client = "/ledger/clients/{id}";
    c.call(
        200,
        admin,
        "GET",
        client,
        "/ledger/clients/1001?limit=2",
        &auth,
        "",
    )
    .await;
    c.call(401, admin, "GET", client, "/ledger/clients/1001", &[], "")
        .await;
    // A page size out of range is refused, as the history refuses it.
    c.call(
        400,
        admin,
        "GET",
        client,
        "/ledger/clients/1001?limit=1001",
        &auth,
        "",
    )
    .await;
    let credit = "/ledger/clients/{id}/credit";
    let change = r#"{"amount":5,"reason":"contract test"}"#;
    c.call(
        200,
        admin,
        "POST",
        credit,
        "/ledger/clients/1001/credit",
        &auth,
        change,
    )
    .await;
    c.call(
        400,
        admin,
        "POST",
        credit,
        "/ledger/clients/1001/credit",
        &auth,
        "{}",
    )
    .await;
    // An id no caller can have: an account under it could never be spent from.
    c.call(
        400,
        admin,
        "POST",
        credit,
        "/ledger/clients/1001%0A/credit",
        &auth,
        change,
    )
    .await;
    c.call(
        400,
        admin,
        "GET",
        client,
        "/ledger/clients/a%2Fb",
        &auth,
        "",
    )
    .await;
    // Over 16 KiB: refused as too large, not as malformed.
    let huge = format!(r#"{{"amount":5,"reason":"{}"}}"#, "x".repeat(17 * 1024));
    c.call(
        413,
        admin,
        "POST",
        credit,
        "/ledger/clients/1001/credit",
        &auth,
        &huge,
    )
    .await;
    // Beyond 2^53 - 1 tokens a journal amount (and a JavaScript number) would round.
    let beyond = r#"{"amount":9223372036854775808,"reason":"contract test"}"#;
    c.call(
        422,
        admin,
        "POST",
        credit,
        "/ledger/clients/1001/credit",
        &auth,
        beyond,
    )
    .await;
    let debit = "/ledger/clients/{id}/debit";
    let too_much = r#"{"amount":1000000,"reason":"contract test"}"#;
    c.call(
        402,
        admin,
        "POST",
        debit,
        "/ledger/clients/1001/debit",
        &auth,
        too_much,
    )
    .await;
    c.call(
        200,
        admin,
        "POST",
        debit,
        "/ledger/clients/1001/debit",
        &auth,
        change,
    )
    .await;
    let set = "/ledger/clients/{id}/balance";
    let to = r#"{"balance":7,"reason":"contract test"}"#;
    c.call(
        200,
        admin,
        "PUT",
        set,
        "/ledger/clients/4242/balance",
        &auth,
        to,
    )
    .await;
    let verify = "/ledger/verify";
    c.call(200, admin, "GET", verify, verify, &auth, "").await;
    // Not an admin resource: the same problem+json as a ledger path that is not one.
    let unknown = raw(
        admin,
        b"GET /nowhere HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .await;
    unknown.assert_problem(404, "ROUTE_NOT_FOUND");

    assert!(
        c.failures.is_empty(),
        "answers that break docs/openapi.json:\n{}",
        c.failures.join("\n")
    );
    // The run covered success and refusal for the operations it names.
    let statuses: BTreeSet<u16> = c.seen.iter().map(|(_, _, s)| *s).collect();
    for want in [200, 400, 401, 402] {
        assert!(statuses.contains(&want), "no {want} among {:?}", c.seen);
    }
}

/// `POST /campaigns` as the token's client (a metered legacy route, not the contract's).
async fn c_post_campaign(gw: std::net::SocketAddr, access: &str) -> u16 {
    let body = r#"{"name":"contract"}"#;
    let request = format!(
        "POST /campaigns HTTP/1.1\r\nhost: gateway.test\r\nauthorization: {access}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(gw, request.as_bytes()).await.status
}

/// Every `code` the gateway can send (the `code()` arms of `crates/proxy/src/errors.rs`)
/// is in the document's problem `code` enum, and the enum names no other.
#[test]
fn the_problem_code_enum_is_every_code_the_gateway_sends() {
    let source = std::fs::read_to_string(repo().join("crates/proxy/src/errors.rs")).unwrap();
    let mut in_code = false;
    let mut sent = BTreeSet::new();
    for line in source.lines() {
        let line = line.trim();
        if line.starts_with("fn code(&self)") {
            in_code = true;
        } else if in_code && line.starts_with("fn ") {
            in_code = false;
        }
        if !in_code {
            continue;
        }
        // Every string literal in a `code()` body is a code: `X => "CODE"` or a bare
        // `"CODE"`.
        for (i, literal) in line.split('"').enumerate() {
            let is_code =
                !literal.is_empty() && literal.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
            if i % 2 == 1 && is_code {
                sent.insert(literal.to_owned());
            }
        }
    }
    assert!(sent.len() > 40, "{sent:?}");
    let contract = Contract::load();
    let documented: BTreeSet<String> = contract.doc["components"]["schemas"]["Problem"]
        ["properties"]["code"]["enum"]
        .as_array()
        .expect("Problem.code has an enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let undocumented: Vec<_> = sent.difference(&documented).collect();
    let never_sent: Vec<_> = documented.difference(&sent).collect();
    assert!(
        undocumented.is_empty(),
        "codes sent but not documented: {undocumented:?}"
    );
    assert!(
        never_sent.is_empty(),
        "codes documented but never sent: {never_sent:?}"
    );
}
