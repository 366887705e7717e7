//! clientId injection without spoofing, and uploads that stream untouched: the exact
//! bytes the backend received, for every target and every spoofing shape.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxying::hex;
use crate::support::{eventually, Harness, RawResponse, Setup, TempDir};

use crate::support::jwt_fixtures as fixtures;

/// A token for client 1001, made by PyJWT.
fn token() -> String {
    let text = std::fs::read_to_string(fixtures().join("tokens.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    format!("Bearer {}", cases["hs256"]["token"].as_str().unwrap())
}

const POLICIES: &str = r#"
[[route]]
name = "all-targets"
path = "/echo/all/*"
opaque_body_types = ["text/csv"]

[[route]]
name = "overwrite"
path = "/echo/over/*"
client_id = { on_mismatch = "overwrite", aliases = ["client_id"] }

[[route]]
name = "nested"
path = "/echo/nested/*"
client_id = { inject = ["json"], json_pointer = "/data" }

[[route]]
name = "header-only"
path = "/echo/header-only/*"
client_id = { inject = ["header"], header = "X-Caller" }

[[route]]
name = "any-json"
path = "/echo/any-json/*"
client_id = { allow_non_object_json = true }

[[route]]
name = "limited"
path = "/echo/limited/*"
client_id = { max_body_bytes = 1024 }
max_upload_bytes = 4096
opaque_body_types = ["text/csv", "application/octet-stream"]

[[route]]
name = "upload-csv"
methods = ["POST"]
path = "/upload-csv"
upstream_credential = "client-key"
opaque_body_types = ["text/csv"]

[[route]]
name = "open"
path = "/echo/open/*"
auth = "none"
"#;

async fn harness() -> (Harness, TempDir) {
    let secrets = TempDir::new();
    let keys = secrets.path().join("client-keys.toml");
    std::fs::write(&keys, "\"1001\" = \"demo-legacy-key-1001\"\n").unwrap();
    let extra = format!(
        "[jwt]\nissuer = \"https://issuer.test\"\naudience = \"legacy-api\"\n\n[[jwt.key]]\nid = \"hs-256\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n\n[credentials.client-key]\nkind = \"client_map\"\nheader = \"x-api-key\"\nfile = \"{}\"\n",
        fixtures().join("keys/hs256.secret").display(),
        keys.display()
    );
    let setup = Setup {
        policies: vec![("10.toml".into(), POLICIES.into())],
        extra,
        ..Setup::default()
    };
    (Harness::with(setup).await, secrets)
}

/// One injection case: the request, and what the backend must have received (or the
/// refusal the client must get, with the backend untouched).
struct Case {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    expect: Expect,
}

enum Expect {
    /// Forwarded: the backend saw this query, this x-client-id header, and this body.
    Received {
        query: Option<&'static str>,
        header: (&'static str, Option<&'static str>),
        body: &'static str,
    },
    Refused(u16, &'static str),
}

use Expect::*;

fn case(
    name: &'static str,
    method: &'static str,
    target: &'static str,
    headers: &[(&'static str, &'static str)],
    body: &'static str,
    expect: Expect,
) -> Case {
    Case {
        name,
        method,
        target,
        headers: headers.to_vec(),
        body,
        expect,
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const X_CLIENT: &str = "x-client-id";

#[tokio::test]
async fn injection_and_spoofing_cases() {
    let (h, _secrets) = harness().await;
    let token = token();
    let cases = vec![
        case(
            "query and header injected",
            "GET",
            "/echo/all/x",
            &[],
            "",
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: "",
            },
        ),
        case(
            "other parameters kept in order, after ours",
            "GET",
            "/echo/all/x?b=2&a=1",
            &[],
            "",
            Received {
                query: Some("clientId=1001&b=2&a=1"),
                header: (X_CLIENT, Some("1001")),
                body: "",
            },
        ),
        case(
            "the same id is accepted once",
            "GET",
            "/echo/all/x?clientId=1001&a=1",
            &[],
            "",
            Received {
                query: Some("clientId=1001&a=1"),
                header: (X_CLIENT, Some("1001")),
                body: "",
            },
        ),
        case(
            "another id in the query",
            "GET",
            "/echo/all/x?clientId=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a repeated parameter hides a second id",
            "GET",
            "/echo/all/x?clientId=1001&clientId=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the name in another case",
            "GET",
            "/echo/all/x?CLIENTID=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the name percent-encoded",
            "GET",
            "/echo/all/x?client%49d=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the name with IIS's %u escape (classic ASP.NET decodes it)",
            "GET",
            "/echo/all/x?client%u0049d=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a semicolon separates parameters for some backends",
            "GET",
            "/echo/all/x?a=1;clientId=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the same id after a semicolon is taken out, the rest kept as sent",
            "GET",
            "/echo/all/x?a=1;clientId=1001;b=2",
            &[],
            "",
            Received {
                query: Some("clientId=1001&a=1;b=2"),
                header: (X_CLIENT, Some("1001")),
                body: "",
            },
        ),
        case(
            "a semicolon in a form body hides no id",
            "POST",
            "/echo/all/x",
            &[FORM],
            "name=Spring;clientId=1002",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "another id in the header",
            "GET",
            "/echo/all/x",
            &[("X-CLIENT-ID", "1002")],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a header named like the id",
            "GET",
            "/echo/all/x",
            &[("clientid", "1002")],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the same id in the header is replaced by ours",
            "GET",
            "/echo/all/x",
            &[("x-Client-Id", "1001")],
            "",
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: "",
            },
        ),
        case(
            "Connection cannot strip the injected header",
            "GET",
            "/echo/all/x",
            &[("connection", "x-client-id")],
            "",
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: "",
            },
        ),
        case(
            "JSON body gets the id",
            "POST",
            "/echo/all/x",
            &[JSON],
            r#"{"name":"Spring","tags":["a"]}"#,
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: r#"{"name":"Spring","tags":["a"],"clientId":"1001"}"#,
            },
        ),
        case(
            "JSON with charset and +json types",
            "POST",
            "/echo/all/x",
            &[("content-type", "application/vnd.api+json; charset=utf-8")],
            r#"{"a":1}"#,
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: r#"{"a":1,"clientId":"1001"}"#,
            },
        ),
        case(
            "another id in the JSON body",
            "POST",
            "/echo/all/x",
            &[JSON],
            r#"{"clientId":"1002"}"#,
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a duplicate JSON member hides a second id",
            "POST",
            "/echo/all/x",
            &[JSON],
            r#"{"clientId":"1001","clientId":"1002"}"#,
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the same id as a JSON number",
            "POST",
            "/echo/all/x",
            &[JSON],
            r#"{"clientId":1001,"n":2}"#,
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: r#"{"n":2,"clientId":"1001"}"#,
            },
        ),
        case(
            "malformed JSON",
            "POST",
            "/echo/all/x",
            &[JSON],
            r#"{"clientId":"1001""#,
            Refused(400, "INVALID_JSON"),
        ),
        case(
            "a JSON array",
            "POST",
            "/echo/all/x",
            &[JSON],
            "[1,2]",
            Refused(400, "INVALID_JSON"),
        ),
        case(
            "bulk under a hundred levels of names that may spell the id: searching it would read it a hundred times over",
            "POST",
            "/echo/all/x",
            &[JSON],
            Box::leak(
                format!(
                    "{}\"{}\"{}",
                    "{\"clientIdx\":".repeat(100),
                    "x".repeat(4096),
                    "}".repeat(100)
                )
                .into_boxed_str(),
            ),
            Refused(400, "INVALID_JSON"),
        ),
        case(
            "a JSON array where the route allows it",
            "POST",
            "/echo/any-json/x",
            &[JSON],
            "[1,2]",
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: "[1,2]",
            },
        ),
        case(
            "form body gets the id",
            "POST",
            "/echo/all/x",
            &[FORM],
            "name=Spring+sale&n=2",
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: "clientId=1001&name=Spring+sale&n=2",
            },
        ),
        case(
            "another id in a form field",
            "POST",
            "/echo/all/x",
            &[FORM],
            "n=2&clientId=1002",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "an alias is the same parameter",
            "GET",
            "/echo/over/x?client_id=1002&a=1",
            &[],
            "",
            Received {
                query: Some("clientId=1001&a=1"),
                header: (X_CLIENT, Some("1001")),
                body: "",
            },
        ),
        case(
            "overwrite replaces a JSON alias",
            "POST",
            "/echo/over/x",
            &[JSON],
            r#"{"client_id":"1002","a":1}"#,
            Received {
                query: Some("clientId=1001"),
                header: (X_CLIENT, Some("1001")),
                body: r#"{"a":1,"clientId":"1001"}"#,
            },
        ),
        // PHP's `$_COOKIE` (and `$_REQUEST`, without `request_order`) and classic
        // ASP.NET's `Request[...]` read cookies beside parameters.
        case(
            "another id in a cookie",
            "GET",
            "/echo/all/x",
            &[("cookie", "theme=dark; client%49d=1002")],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a cookie name with a space before `=` (Express, Werkzeug trim it)",
            "GET",
            "/echo/all/x",
            &[("cookie", "clientId =1002")],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "qs turns escaped brackets into brackets before it splits",
            "GET",
            "/echo/all/x?x=%5BclientId%5D=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a cookie name with a tab before `=`",
            "GET",
            "/echo/all/x",
            &[("cookie", "a=1; clientId\t=1002")],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        // PHP's `json_decode(file_get_contents('php://input'))` and Flask's
        // `get_json(force=True)` read a body as JSON whatever its type: a form that is
        // JSON would carry an id the form reading never saw.
        case(
            "a form body that is JSON, where the id goes in a header only",
            "POST",
            "/echo/header-only/x",
            &[FORM],
            r#"{"clientId":"1002"}"#,
            Refused(415, "UNSUPPORTED_MEDIA_TYPE"),
        ),
        case(
            "a form body that is a JSON array after white space",
            "POST",
            "/echo/all/x",
            &[FORM],
            " \n[{\"clientId\":\"1002\"}]",
            Refused(415, "UNSUPPORTED_MEDIA_TYPE"),
        ),
        // Python's SimpleCookie (Bottle, aiohttp, CherryPy) ends a cookie at white space
        // too, and so after a comma.
        case(
            "a cookie after a space (SimpleCookie splits there)",
            "GET",
            "/echo/all/x",
            &[("cookie", "a=1 clientId=1002")],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a cookie after a comma (SimpleCookie splits there)",
            "GET",
            "/echo/all/x",
            &[("cookie", "a=1,clientId=1002; theme=dark")],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "overwrite drops the pair that hides another id after a space",
            "GET",
            "/echo/over/x",
            &[("cookie", "theme=dark; a=1 clientId=1002; lang=en")],
            "",
            Received {
                query: Some("clientId=1001"),
                header: ("cookie", Some("theme=dark; lang=en")),
                body: "",
            },
        ),
        case(
            "a cookie value with spaces and commas naming nobody passes",
            "GET",
            "/echo/all/x",
            &[("cookie", "list=a,b c; theme=dark")],
            "",
            Received {
                query: Some("clientId=1001"),
                header: ("cookie", Some("list=a,b c; theme=dark")),
                body: "",
            },
        ),
        case(
            "the caller's own id in a cookie passes",
            "GET",
            "/echo/all/x",
            &[("cookie", "clientId=1001; theme=dark")],
            "",
            Received {
                query: Some("clientId=1001"),
                header: ("cookie", Some("clientId=1001; theme=dark")),
                body: "",
            },
        ),
        case(
            "overwrite drops a cookie naming another id",
            "GET",
            "/echo/over/x",
            &[("cookie", "theme=dark; CLIENT_ID=1002;lang=en")],
            "",
            Received {
                query: Some("clientId=1001"),
                header: ("cookie", Some("theme=dark; lang=en")),
                body: "",
            },
        ),
        case(
            "a nested JSON pointer",
            "POST",
            "/echo/nested/x",
            &[JSON],
            r#"{"data":{"x":1},"y":2}"#,
            Received {
                query: None,
                header: (X_CLIENT, None),
                body: r#"{"data":{"x":1,"clientId":"1001"},"y":2}"#,
            },
        ),
        case(
            "an id beside the pointed-to object",
            "POST",
            "/echo/nested/x",
            &[JSON],
            r#"{"clientId":"1002","data":{}}"#,
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "array-style names are the same parameter",
            "GET",
            "/echo/all/x?clientId[]=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        // Rack 2 strips stray brackets (`[clientId]`, `clientId]`, `]clientId` are
        // `clientId`); qs reads `[clientId]` so; PHP, qs, Rack, Spring and ASP.NET nest
        // `campaign[clientId]` and `filter.clientId`; Java and .NET fold `ı` into `i`.
        case(
            "stray brackets around the name",
            "GET",
            "/echo/all/x?%5BclientId%5D=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a trailing bracket",
            "GET",
            "/echo/all/x?clientId%5D=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a leading bracket",
            "GET",
            "/echo/all/x?]clientId=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "an empty pair before the name",
            "GET",
            "/echo/all/x?%5B%5DclientId=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the id nested in brackets",
            "GET",
            "/echo/all/x?filter%5BclientId%5D=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the id nested with a dot",
            "GET",
            "/echo/all/x?campaign.clientId=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "qs splits after the first `]=`",
            "GET",
            "/echo/all/x?x=[clientId]=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "nested under a key cut by a NUL",
            "GET",
            "/echo/all/x?filter%00[clientId]=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a dotless i",
            "GET",
            "/echo/all/x?cl%C4%B1entId=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a trailing bracket in a form body",
            "POST",
            "/echo/all/x",
            &[FORM],
            "name=x&clientId%5D=1002",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "the id nested in a form body",
            "POST",
            "/echo/all/x",
            &[FORM],
            "name=x&campaign%5BclientId%5D=1002",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a dotless i in a JSON member",
            "POST",
            "/echo/all/x",
            &[JSON],
            r#"{"name":"x","data":{"clıentId":"1002"}}"#,
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a nested filter on the caller's own id is kept as sent",
            "GET",
            "/echo/all/x?filter%5BclientId%5D=1001&a=1",
            &[],
            "",
            Received {
                query: Some("clientId=1001&filter%5BclientId%5D=1001&a=1"),
                header: (X_CLIENT, Some("1001")),
                body: "",
            },
        ),
        case(
            "spoofs are judged where nothing is injected",
            "GET",
            "/echo/nested/x?clientId=1002",
            &[],
            "",
            Refused(403, "CLIENT_ID_MISMATCH"),
        ),
        case(
            "a header of the route's own name",
            "GET",
            "/echo/header-only/x",
            &[],
            "",
            Received {
                query: None,
                header: ("x-caller", Some("1001")),
                body: "",
            },
        ),
        case(
            "a JSON body over the route's limit",
            "POST",
            "/echo/limited/x",
            &[JSON],
            Box::leak(format!("{{\"pad\":\"{}\"}}", "x".repeat(2000)).into_boxed_str()),
            Refused(413, "PAYLOAD_TOO_LARGE"),
        ),
    ];
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for c in &cases {
        let mut headers = vec![("authorization", token.as_str())];
        headers.extend(c.headers.iter().copied());
        let before = h.backend.requests();
        let r = h
            .send(c.method, c.target, &headers, c.body.as_bytes())
            .await;
        let reached = h.backend.requests() - before;
        if let Err(why) = check(&r, reached, &c.expect) {
            failures.push(format!("{}: {why}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check(r: &RawResponse, reached: u64, expect: &Expect) -> Result<(), String> {
    let text = String::from_utf8_lossy(&r.body).to_string();
    match expect {
        Refused(status, code) => {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if r.status != *status || body["code"] != *code || reached != 0 {
                return Err(format!(
                    "want {status} {code} and no backend call, got {} {text} (calls {reached})",
                    r.status
                ));
            }
        }
        Received {
            query,
            header,
            body,
        } => {
            if r.status != 200 || reached != 1 {
                return Err(format!("want 200, got {} {text}", r.status));
            }
            let report = r.json();
            if report["query"].as_str() != *query {
                return Err(format!("query {} want {query:?}", report["query"]));
            }
            let seen = r.echoed_header(header.0);
            if seen.iter().map(String::as_str).collect::<Vec<_>>()
                != header.1.into_iter().collect::<Vec<_>>()
            {
                return Err(format!(
                    "header {} = {seen:?}, want {:?}",
                    header.0, header.1
                ));
            }
            if report["body"]["sha256"] != hex(&Sha256::digest(body.as_bytes()))
                || report["body"]["bytes"] != body.len()
            {
                return Err(format!(
                    "body differs from {body:?} ({} bytes arrived)",
                    report["body"]["bytes"]
                ));
            }
            let length = r.echoed_header("content-length");
            if !body.is_empty() && length != [body.len().to_string()] {
                return Err(format!("content-length {length:?}, want {}", body.len()));
            }
            if !r.echoed_header("connection").is_empty() {
                return Err("a Connection header reached the backend".into());
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_route_that_identifies_nobody_passes_on_no_claimed_client_id() {
    let (h, _secrets) = harness().await;
    // Where the gateway injects `clientId` for callers it vouches for, a backend could
    // not tell an anonymous caller's own from ours: every spelling any route reads is
    // dropped from the query and the cookies, as the identity headers are.
    let r = h
        .get(
            "/echo/open/x?clientId=1002&a=1&CLIENT_ID=1003&client_id%5B%5D=1004&b=%3D;clientid=9&filter%5BclientId%5D=5&!clientId=6&%21CLIENTID=7",
            &[
                ("cookie", "clientId=1002; theme=dark"),
                ("cookie", "a=1 client_id=1003"),
                ("x-client-id", "1002"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["query"], "a=1&b=%3D");
    assert_eq!(r.echoed_header("cookie"), ["theme=dark"]);
    assert!(r.echoed_header("x-client-id").is_empty());
    // What names no client id passes untouched.
    let r = h
        .get(
            "/echo/open/x?client=1002&id=3",
            &[("cookie", "session=abc")],
        )
        .await;
    assert_eq!(r.json()["query"], "client=1002&id=3");
    assert_eq!(r.echoed_header("cookie"), ["session=abc"]);
}

#[tokio::test]
async fn segment_parameters_naming_a_client_are_judged_like_the_query() {
    let (h, _secrets) = harness().await;
    let token = token();
    let auth = [("authorization", token.as_str())];
    // Spring's @MatrixVariable and JAX-RS's @MatrixParam read `;clientId=` in a segment.
    let r = h.get("/echo/all/42;clientId=1002/x", &auth).await;
    r.assert_problem(403, "CLIENT_ID_MISMATCH");
    let r = h.get("/echo/all/42;CLIENTID=1001,1002", &auth).await;
    r.assert_problem(403, "CLIENT_ID_MISMATCH");
    // The caller's own passes; other parameters pass.
    let r = h.get("/echo/all/42;clientId=1001;v=2/x", &auth).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/echo/all/42;clientId=1001;v=2/x");
    // Where the route overwrites, another's is removed, the rest kept.
    let r = h.get("/echo/over/42;v=1;client_id=1002;w=3/x", &auth).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/echo/over/42;v=1;w=3/x");
    // Nobody authenticated: every one is removed.
    let r = h
        .get("/echo/open/a;clientId=1002;x=1/b;clientid=7", &[])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/echo/open/a;x=1/b");
    // Spring decodes the lookup path before reading matrix variables: `%3B` starts a
    // parameter to it, in either case, first or after a raw `;`.
    for target in [
        "/echo/all/42%3BclientId=1002",
        "/echo/all/42%3bclientId=1002/x",
        "/echo/all/42;v=1%3BclientId=1002",
    ] {
        h.get(target, &auth)
            .await
            .assert_problem(403, "CLIENT_ID_MISMATCH");
    }
    let r = h.get("/echo/all/42%3BclientId=1001%3Bv=2", &auth).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/echo/all/42%3BclientId=1001%3Bv=2");
    // Removed with the separator it came with; the others keep theirs.
    let r = h
        .get("/echo/over/42%3Bv=1%3Bclient_id=1002;w=3/x", &auth)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/echo/over/42%3Bv=1;w=3/x");
}

#[tokio::test]
async fn trace_is_never_forwarded_with_the_backend_credential() {
    let (h, _secrets) = harness().await;
    let token = token();
    for method in ["TRACE", "TRACK"] {
        let r = h
            .send(
                method,
                "/upload-csv",
                &[("authorization", token.as_str())],
                b"",
            )
            .await;
        r.assert_problem(405, "METHOD_NOT_ALLOWED");
        assert_eq!(r.header("allow"), Some("POST"), "{method}");
        // A route that takes any method still refuses it, naming what it takes.
        let r = h
            .send(
                method,
                "/echo/all/x",
                &[("authorization", token.as_str())],
                b"",
            )
            .await;
        r.assert_problem(405, "METHOD_NOT_ALLOWED");
        assert!(
            r.header("allow").unwrap().contains("GET, HEAD, POST"),
            "{:?}",
            r.header("allow")
        );
        // Where no route serves the path, as for any method.
        h.send(method, "/nowhere", &[], b"")
            .await
            .assert_problem(404, "ROUTE_NOT_FOUND");
    }
}

#[tokio::test]
async fn multipart_streams_untouched_and_the_id_travels_in_query_and_header() {
    let (h, _secrets) = harness().await;
    let token = token();
    // The caller's own id in a field is accepted (and left as it is); another client's
    // is refused: see `attacks::multipart_fields_naming_another_client_never_complete`.
    let body = "--b\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1001\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.csv\"\r\n\r\nname,phone\nAda,+1555\n\r\n--b--\r\n";
    let r = h
        .send(
            "POST",
            "/echo/all/upload",
            &[
                ("authorization", &token),
                ("content-type", "multipart/form-data; boundary=b"),
            ],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["body"]["sha256"],
        hex(&Sha256::digest(body.as_bytes())),
        "multipart is never rewritten"
    );
    assert_eq!(r.json()["query"], "clientId=1001");
    assert_eq!(r.echoed_header("x-client-id"), ["1001"]);
}

#[tokio::test]
async fn upload_limits_refuse_at_once_or_cut_off() {
    let (h, _secrets) = harness().await;
    let token = token();
    // Declared too large: refused before anything reaches the backend.
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let head = format!(
        "POST /echo/limited/up HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\nContent-Type: text/csv\r\nContent-Length: 5000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let r = crate::support::read_response(&mut stream).await;
    r.assert_problem(413, "PAYLOAD_TOO_LARGE");
    assert_eq!(h.backend.requests(), 0);

    // Chunked past the limit: cut off with 413.
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let head = format!(
        "POST /echo/limited/up HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..8 {
        let chunk = "y".repeat(1000);
        if stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let r = crate::support::read_response(&mut stream).await;
    r.assert_problem(413, "PAYLOAD_TOO_LARGE");

    // Under the limit it passes.
    let r = h
        .send(
            "POST",
            "/echo/limited/up",
            &[("authorization", &token), ("content-type", "text/csv")],
            &[b'z'; 4096],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"]["bytes"], 4096);
}

#[tokio::test]
async fn expect_100_continue_is_answered_only_after_authentication() {
    let (h, _secrets) = harness().await;
    // A bad token gets its 401 before any body is sent.
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    stream
        .write_all(b"POST /echo/all/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer nope\r\nContent-Type: text/csv\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let r = crate::support::read_response(&mut stream).await;
    r.assert_problem(401, "TOKEN_INVALID");
    assert_eq!(h.backend.requests(), 0);

    // A good token gets 100 Continue, then the body goes through.
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let head = format!(
        "POST /echo/all/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nContent-Type: text/csv\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"a,b\n\n").await.unwrap();
    let r = crate::support::read_response(&mut stream).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"]["bytes"], 5);
    assert!(r.echoed_header("expect").is_empty());
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_aborts_the_upstream_request() {
    let (h, _secrets) = harness().await;
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let head = format!(
        "POST /upload-csv HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nContent-Type: text/csv\r\nContent-Length: 10000000\r\n\r\n",
        token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; 256 * 1024]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.backend.requests() == 1
        })
        .await
    );
    drop(stream);
    let aborted = eventually(Duration::from_secs(10), || async {
        h.backend.broken_bodies() == 1
    })
    .await;
    assert!(aborted, "the backend never saw the upload end early");
}

/// 1 GiB through the gateway, hashed by the client and by the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_multipart_upload_arrives_byte_for_byte() {
    let (h, _secrets) = harness().await;
    let total: u64 = 1 << 30;
    let preamble = b"--tollgate\r\nContent-Disposition: form-data; name=\"file\"; filename=\"contacts.csv\"\r\nContent-Type: text/csv\r\n\r\n";
    let epilogue = b"\r\n--tollgate--\r\n";
    let payload = total - preamble.len() as u64 - epilogue.len() as u64;
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    let head = format!(
        "POST /upload-csv HTTP/1.1\r\nHost: gw\r\nAuthorization: {}\r\nContent-Type: multipart/form-data; boundary=tollgate\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n",
        token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut hasher = Sha256::new();
    hasher.update(preamble);
    stream.write_all(preamble).await.unwrap();
    let line = b"Ada Lovelace,+15550100,London\n";
    let block: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
    let mut sent = 0u64;
    while sent < payload {
        let n = (payload - sent).min(block.len() as u64) as usize;
        hasher.update(&block[..n]);
        stream.write_all(&block[..n]).await.unwrap();
        sent += n as u64;
    }
    hasher.update(epilogue);
    stream.write_all(epilogue).await.unwrap();
    let r = crate::support::read_response(&mut stream).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["bytes"], total);
    assert_eq!(r.json()["sha256"], hex(&hasher.finalize()));
    assert_eq!(
        r.json()["clientId"],
        "1001",
        "the backend's own key check passed"
    );
    assert_eq!(r.json()["queryClientId"], "1001");
}
