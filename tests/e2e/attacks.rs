//! The holes found when the gateway was attacked from outside, one test per class, each
//! with its reported example and variants of our own; every forwarded case is checked
//! against the exact bytes the backend received, every refused one against the backend
//! never being asked (or, for a stream cut off, never getting a complete request).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    bearer_for, bearer_with, eventually, jwt_config, jwt_fixtures, read_response, GatewayProcess,
    Harness, RawResponse, RedisServer, Setup, TempDir,
};

const PLIVO_TOKEN: &str = "MAZDQ1MTZIZGY3ZJG0ZTQ2YJQ0N2"; // a test token, not a real account's
const EXOTEL_SECRET: &str = "exotel-callback-secret-for-tests";
const API_KEY: &str = "legacy-key-acme";

const POLICIES: &str = r#"
[[route]]
name = "campaigns"
path = "/echo/campaigns/*"
auth = "jwt_or_api_key"
upstream_credential = "client-key"
opaque_body_types = ["text/csv"]

[[route]]
name = "as-string"
path = "/echo/as-string/*"
client_id = { json_type = "string" }

[[route]]
name = "overwrite"
path = "/echo/over/*"
client_id = { on_mismatch = "overwrite", aliases = ["client_id"] }

[[route]]
name = "keys-passed"
path = "/echo/keys/*"
auth = "jwt_or_api_key"
pass_api_key = true

[[route]]
name = "open"
path = "/echo/open/*"
auth = "none"

[[route]]
name = "create-only"
methods = ["POST"]
path = "/echo/create/*"

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
"#;

/// Keys, secrets and a gateway with every feature these attacks aim at.
struct Attack {
    h: Harness,
    _secrets: TempDir,
}

fn setup_with(server: &str, extra: &str) -> (Setup, TempDir) {
    let secrets = TempDir::new();
    let dir = secrets.path();
    std::fs::write(
        dir.join("api-keys.toml"),
        format!(
            "[[key]]\nid = \"acme-1\"\nclient_id = \"1001\"\nsha256 = \"{}\"\n",
            tollgate_auth::api_key::hash_hex(API_KEY)
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("client-keys.toml"),
        "\"1001\" = \"demo-legacy-key-1001\"\n\"1002\" = \"demo-legacy-key-1002\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("plivo-tokens"), format!("{PLIVO_TOKEN}\n")).unwrap();
    std::fs::write(dir.join("exotel.secret"), format!("{EXOTEL_SECRET}\n")).unwrap();
    let d = |name: &str| dir.join(name).display().to_string();
    let config = format!(
        r#"{jwt}
[[jwt.key]]
id = "rsa"
algorithms = ["RS256", "PS256"]
public_key_file = "{rsa}"

[api_keys]
file = "{keys}"
headers = ["x-api-key"]
query_param = "api_key"

[credentials.client-key]
kind = "client_map"
header = "x-api-key"
file = "{client_keys}"

[webhooks.plivo]
kind = "plivo_v3"
public_base_url = "https://callbacks.example.test"
auth_tokens_file = "{plivo}"

[webhooks.exotel]
kind = "url_secret"
param = "secret"
secret_file = "{exotel}"
{extra}
"#,
        jwt = jwt_config(),
        rsa = jwt_fixtures().join("keys/rsa.pub.pem").display(),
        keys = d("api-keys.toml"),
        client_keys = d("client-keys.toml"),
        plivo = d("plivo-tokens"),
        exotel = d("exotel.secret"),
    );
    let setup = Setup {
        policies: vec![("10-attacks.toml".into(), POLICIES.into())],
        server: server.into(),
        extra: config,
        ..Setup::default()
    };
    (setup, secrets)
}

impl Attack {
    async fn start() -> Attack {
        Attack::with_server("request_body_timeout = \"1s\"\nrequest_body_min_rate = 1048576").await
    }

    async fn with_server(server: &str) -> Attack {
        let (setup, secrets) = setup_with(server, "");
        Attack {
            h: Harness::with(setup).await,
            _secrets: secrets,
        }
    }

    /// Sends a body the gateway must cut off; the answer, and whether no complete request
    /// reached the backend: a small body is refused before its head is even written, a
    /// larger one breaks off before the watched field's value.
    async fn send_cut_off(
        &self,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (RawResponse, bool) {
        let broken = self.h.backend.broken_bodies();
        let (r, reached) = self.send("POST", target, headers, body).await;
        let incomplete = eventually(Duration::from_secs(5), || async {
            reached == 0 || self.h.backend.broken_bodies() == broken + 1
        })
        .await;
        (r, incomplete)
    }

    /// [`Attack::send_cut_off`] of a multipart `body` (boundary `b`) to an upload route,
    /// as the caller `bearer`.
    async fn upload_cut_off(&self, bearer: &str, body: &[u8]) -> (RawResponse, bool) {
        let headers = [
            ("authorization", bearer),
            ("content-type", "multipart/form-data; boundary=b"),
        ];
        self.send_cut_off("/echo/campaigns/upload", &headers, body)
            .await
    }

    /// Sends a request; the number of requests the backend got meanwhile.
    async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (RawResponse, u64) {
        let before = self.h.backend.requests();
        let r = self.h.send(method, target, headers, body).await;
        (r, self.h.backend.requests() - before)
    }
}

/// What the backend reported receiving, for an echoed request.
fn received_body(r: &RawResponse) -> String {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["body"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn names_received(r: &RawResponse) -> Vec<String> {
    r.json()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn bodies_the_gateway_cannot_classify_never_reach_the_backend() {
    let a = Attack::start().await;
    let token = bearer_for("1001");
    let spoof = br#"{"name":"Spring","clientId":"1002"}"#;

    // The reported example, byte for byte: one non-ASCII byte in the charset.
    let request = [
        &b"POST /echo/campaigns/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: "[..],
        token.as_bytes(),
        b"\r\nContent-Type: application/json; charset=\xff\r\nContent-Length: ",
        spoof.len().to_string().as_bytes(),
        b"\r\n\r\n",
        spoof,
    ]
    .concat();
    let before = a.h.backend.requests();
    a.h.raw(&request)
        .await
        .assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
    assert_eq!(a.h.backend.requests(), before);

    let cases: &[(&str, &[(&str, &str)])] = &[
        ("JSON sent as text/plain", &[("content-type", "text/plain")]),
        ("no Content-Type at all", &[]),
        ("text/json", &[("content-type", "text/json")]),
        (
            "a charset a backend decodes differently",
            &[("content-type", "application/json; charset=utf-7")],
        ),
        (
            "two charsets",
            &[(
                "content-type",
                "application/json; charset=utf-8; charset=latin1",
            )],
        ),
        (
            "a compressed body",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
        ),
        (
            "multipart without a boundary",
            &[("content-type", "multipart/form-data")],
        ),
        (
            "multipart with two boundaries",
            &[(
                "content-type",
                "multipart/form-data; boundary=a; boundary=b",
            )],
        ),
        (
            "a type the route does not declare opaque",
            &[("content-type", "application/xml")],
        ),
        (
            "an unterminated parameter",
            &[("content-type", "application/json; charset=\"utf-8")],
        ),
        // formidable searches the whole header for its parser: these were parsed as
        // multipart or JSON, with the client id the body names.
        (
            "a CSV whose parameters say multipart",
            &[("content-type", "text/csv; x=multipart; boundary=XyZ")],
        ),
        (
            "a form whose parameters say multipart",
            &[(
                "content-type",
                "application/x-www-form-urlencoded; x=multipart; boundary=XyZ",
            )],
        ),
        (
            "a CSV whose parameters say json",
            &[("content-type", "text/csv; x=json")],
        ),
    ];
    for (name, headers) in cases {
        let mut all = vec![("authorization", token.as_str())];
        all.extend_from_slice(headers);
        let (r, reached) = a.send("POST", "/echo/campaigns/x", &all, spoof).await;
        assert_eq!(
            (r.status, reached),
            (415, 0),
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
    }

    // What the route declares opaque streams untouched; a bodiless POST needs no type.
    let csv = b"name,clientId\nAda,1002\n";
    let (r, _) = a
        .send(
            "POST",
            "/echo/campaigns/upload",
            &[("authorization", &token), ("content-type", "text/csv")],
            csv,
        )
        .await;
    assert_eq!(received_body(&r).as_bytes(), csv);
    let (r, _) = a
        .send(
            "POST",
            "/echo/campaigns/x",
            &[("authorization", &token)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    // A route that identifies nobody inspects nothing.
    let (r, _) = a
        .send(
            "POST",
            "/echo/open/x",
            &[("content-type", "text/plain")],
            spoof,
        )
        .await;
    assert_eq!(received_body(&r).as_bytes(), spoof);
}

#[tokio::test]
async fn a_foreign_client_id_at_any_depth_of_a_json_body_is_refused() {
    let a = Attack::start().await;
    let token = bearer_for("1001");
    let json = [
        ("authorization", token.as_str()),
        ("content-type", "application/json"),
    ];
    for body in [
        r#"{"data":{"clientId":1002}}"#,
        r#"{"contacts":[{"name":"Ada"},{"name":"Bob","clientId":"1002"}]}"#,
        r#"{"a":{"b":{"c":{"d":{"CLIENTID":"1002"}}}}}"#,
        r#"{"data":{"client\u0049d":"1002"}}"#,
        r#"{"data":{"clientId[]":"1002"}}"#,
        r#"{"data":{"clientId":["1001","1002"]}}"#,
        r#"{"data":{"clientId":1001,"clientId":1002}}"#,
        r#"{"data":{"clientId":null}}"#,
        r#"{"clientId":"1001","data":{"clientId":"1002"}}"#,
    ] {
        let (r, reached) = a
            .send("POST", "/echo/campaigns/x", &json, body.as_bytes())
            .await;
        assert_eq!((r.status, reached), (403, 0), "{body}");
        r.assert_problem(403, "CLIENT_ID_MISMATCH");
    }
    // Nested ids that are the caller's own pass untouched, spacing and all; the
    // gateway's own member goes last in the top-level object.
    let body = r#"{"name": "Spring", "contacts": [ {"clientId": "1001", "n": 1} ]}"#;
    let (r, _) = a
        .send("POST", "/echo/campaigns/x", &json, body.as_bytes())
        .await;
    assert_eq!(
        received_body(&r),
        r#"{"name":"Spring","contacts":[ {"clientId": "1001", "n": 1} ],"clientId":"1001"}"#
    );
    // In overwrite mode a nested id is replaced where it is.
    let body = r#"{"contacts":[{"client_id":1002,"n":1}],"clientId":"1002"}"#;
    let (r, _) = a.send("POST", "/echo/over/x", &json, body.as_bytes()).await;
    assert_eq!(
        received_body(&r),
        r#"{"contacts":[{"client_id":"1001","n":1}],"clientId":"1001"}"#
    );
}

#[tokio::test]
async fn the_injected_id_keeps_the_json_type_of_its_claim() {
    let a = Attack::start().await;
    let numeric = bearer_with(serde_json::json!({ "clientId": 1001 }));
    let text = bearer_for("1001");
    let post = |route: &'static str, token: String| {
        let a = &a;
        async move {
            let headers = [
                ("authorization", token.as_str()),
                ("content-type", "application/json"),
            ];
            let (r, _) = a
                .send("POST", route, &headers, br#"{"name":"Spring","n":1}"#)
                .await;
            received_body(&r)
        }
    };
    assert_eq!(
        post("/echo/campaigns/x", numeric.clone()).await,
        r#"{"name":"Spring","n":1,"clientId":1001}"#
    );
    assert_eq!(
        post("/echo/campaigns/x", text).await,
        r#"{"name":"Spring","n":1,"clientId":"1001"}"#
    );
    assert_eq!(
        post("/echo/as-string/x", numeric.clone()).await,
        r#"{"name":"Spring","n":1,"clientId":"1001"}"#
    );
    // A caller's own id in either type is theirs.
    let headers = [
        ("authorization", numeric.as_str()),
        ("content-type", "application/json"),
    ];
    let (r, _) = a
        .send(
            "POST",
            "/echo/campaigns/x",
            &headers,
            br#"{"clientId":"1001"}"#,
        )
        .await;
    assert_eq!(received_body(&r), r#"{"clientId":1001}"#);
}

#[tokio::test]
async fn multipart_fields_naming_another_client_never_complete() {
    let a = Attack::start().await;
    let token = bearer_for("1001");
    let part = |disposition: &str, value: &str| {
        format!("--b\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n")
    };
    let mismatch = (403, "CLIENT_ID_MISMATCH");
    // `clientId` in a charset Django and Tomcat decode a `name*` in (UTF-16, EBCDIC) is
    // not read here, so refused as unreadable.
    let unreadable = (400, "MULTIPART_INVALID");
    for (disposition, (status, code)) in [
        ("form-data; name=\"clientId\"", mismatch),
        ("form-data; name=clientId", mismatch),
        ("form-data; name=\"CLIENTID\"", mismatch),
        ("form-data; name=\"client%49d\"", mismatch),
        ("form-data; name*=UTF-8''client%49d", mismatch),
        ("form-data; name=\"clientId[]\"", mismatch),
        (
            "form-data; name*=UTF-16BE''%00c%00l%00i%00e%00n%00t%00I%00d",
            unreadable,
        ),
        (
            "form-data; name*=cp037''%83%93%89%85%95%A3%C9%84",
            unreadable,
        ),
    ] {
        let body = format!(
            "{}{}--b--\r\n",
            part("form-data; name=\"file\"; filename=\"c.csv\"", "a,b\n1,2"),
            part(disposition, "1002")
        );
        let (r, incomplete) = a.upload_cut_off(&token, body.as_bytes()).await;
        r.assert_problem(status, code);
        assert!(
            incomplete,
            "{disposition}: a complete request reached the backend"
        );
    }
    // JSON inside a part (a `Blob` of type `application/json` in a `FormData`), which
    // Spring binds to an object with `@RequestPart`: judged as a JSON body is.
    for json in [
        r#"{"name":"Spring","clientId":"1002"}"#,
        r#"{"name":"Spring","owner":{"clientId":1002}}"#,
    ] {
        let body = format!(
            "--b\r\nContent-Disposition: form-data; name=\"campaign\"; filename=\"blob\"\r\nContent-Type: application/json\r\n\r\n{json}\r\n--b--\r\n"
        );
        let (r, incomplete) = a.upload_cut_off(&token, body.as_bytes()).await;
        r.assert_problem(403, "CLIENT_ID_MISMATCH");
        assert!(incomplete, "{json}: a complete request reached the backend");
    }
    // XML inside a part, which Spring binds the same way where Jackson's XML module is.
    for (content_type, xml) in [
        (
            "application/xml",
            "<campaign><clientId>1002</clientId></campaign>",
        ),
        ("text/xml", "<campaign clientId=\"1002\"/>"),
        (
            "application/vnd.campaign+xml",
            "<c><a:clientId xmlns:a=\"x\">1002</a:clientId></c>",
        ),
    ] {
        let body = format!(
            "--b\r\nContent-Disposition: form-data; name=\"campaign\"; filename=\"c.xml\"\r\nContent-Type: {content_type}\r\n\r\n{xml}\r\n--b--\r\n"
        );
        let (r, incomplete) = a.upload_cut_off(&token, body.as_bytes()).await;
        r.assert_problem(403, "CLIENT_ID_MISMATCH");
        assert!(incomplete, "{xml}: a complete request reached the backend");
    }
    // A part whose headers cannot be read is not vouched for.
    let body = "--b\r\nnonsense\r\n\r\nx\r\n--b--\r\n";
    let (r, _) = a
        .send(
            "POST",
            "/echo/campaigns/upload",
            &[
                ("authorization", &token),
                ("content-type", "multipart/form-data; boundary=b"),
            ],
            body.as_bytes(),
        )
        .await;
    r.assert_problem(400, "MULTIPART_INVALID");
    // Dispositions PHP reads as a field `clientId` where a strict reading sees another
    // name or none (found against `php -S` behind the gateway): never vouched for.
    for disposition in [
        "form-data; name='clientId'",
        "form-data; name=clientId x",
        "form-data; name=\"clientId\"x",
        "form-data; x='\"'; name=clientId; y='\"'",
        r#"form-data; x="a\\"; y="; name=clientId; z=""#,
    ] {
        let body = format!("{}--b--\r\n", part(disposition, "1002"));
        let (r, incomplete) = a.upload_cut_off(&token, body.as_bytes()).await;
        r.assert_problem(400, "MULTIPART_INVALID");
        assert!(
            incomplete,
            "{disposition}: a complete request reached the backend"
        );
    }
    // Framings PHP or Werkzeug read a `clientId` field from while a line-by-line CRLF
    // reading sees none (found against `php -S` and Flask behind the gateway).
    for (body, code) in [
        (
            "--b\r\nContent-Disposition: form-data\r\n\x0b; name=clientId;:x\r\n\r\n1002\r\n--b--\r\n",
            (400, "MULTIPART_INVALID"),
        ),
        (
            "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\r\nname,phone\r--b\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--b--\r\n",
            (403, "CLIENT_ID_MISMATCH"),
        ),
        (
            "preamble--b\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--b--\r\n",
            (400, "MULTIPART_INVALID"),
        ),
        // Found by a differential run against six parsers: LF then CRLF ends the block
        // for Werkzeug, python-multipart and formidable later than for a CRLF reading;
        // a body ending in a part's headers is `clientId=""` to PHP.
        (
            "--b\r\nX: 1\n\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--b--\r\n",
            (400, "MULTIPART_INVALID"),
        ),
        (
            "--b\r\nContent-Disposition: form-data; name=\"clientId\"\r\n",
            (400, "MULTIPART_INVALID"),
        ),
        (
            "--b\r\nContent-Disposition: form-data; name*0=client; name*1=Id\r\n\r\n1002\r\n--b--\r\n",
            (400, "MULTIPART_INVALID"),
        ),
        // A multipart part: Commons FileUpload (and Tomcat) then find the outer
        // delimiter mid-line, so `x--b` opens a `clientId` field to them.
        (
            "--b\r\nContent-Disposition: form-data; name=\"data\"\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\n\r\nhello\r\n--c--\r\nx--b\r\nContent-Disposition: form-data; name=\"clientId\"\r\n\r\n1002\r\n--b--\r\n",
            (400, "MULTIPART_INVALID"),
        ),
        // Types Jackson's JAX-RS provider binds as JSON (`@FormDataParam` into an object).
        (
            "--b\r\nContent-Disposition: form-data; name=\"campaign\"\r\nContent-Type: text/json\r\n\r\n{\"name\":\"x\",\"clientId\":1002}\r\n--b--\r\n",
            (403, "CLIENT_ID_MISMATCH"),
        ),
        (
            "--b\r\nContent-Disposition: form-data; name=\"campaign\"\r\nContent-Type: application/x-javascript\r\n\r\n{\"clientId\":\"1002\"}\r\n--b--\r\n",
            (403, "CLIENT_ID_MISMATCH"),
        ),
    ] {
        let (r, incomplete) = a.upload_cut_off(&token, body.as_bytes()).await;
        r.assert_problem(code.0, code.1);
        assert!(
            incomplete,
            "{body:?}: a complete request reached the backend"
        );
    }
    // PHP takes its boundary from the first text `boundary` in the header: the body is
    // delimited by one the scan would not look for. Refused before the backend.
    let body = format!(
        "{}--AAA--\r\n",
        part("form-data; name=\"clientId\"", "1002")
    )
    .replace("--b\r\n", "--AAA\r\n");
    let (r, reached) = a
        .send(
            "POST",
            "/echo/campaigns/upload",
            &[
                ("authorization", &token),
                (
                    "content-type",
                    "multipart/form-data; xboundary=AAA; boundary=BBB",
                ),
            ],
            body.as_bytes(),
        )
        .await;
    r.assert_problem(415, "UNSUPPORTED_MEDIA_TYPE");
    assert_eq!(reached, 0, "the body reached the backend");
}

#[tokio::test]
async fn a_method_parameter_cannot_turn_an_allowed_post_into_another_method() {
    let a = Attack::start().await;
    let token = bearer_for("1001");
    let auth = ("authorization", token.as_str());
    let form = ("content-type", "application/x-www-form-urlencoded");
    let json = ("content-type", "application/json");
    // Rails, Laravel and Symfony would run each of these as a DELETE, which no route
    // allows on this path.
    for (target, headers, body) in [
        ("/echo/create/x?_method=DELETE", vec![auth], ""),
        ("/echo/create/x?a=1;_METHOD=delete", vec![auth], ""),
        ("/echo/create/x?%5Fmethod=DELETE", vec![auth], ""),
        ("/echo/create/x", vec![auth, form], "name=a&_method=DELETE"),
        // Stray brackets: Rack 2 reads `_method]` as `_method`, qs `[_method]`.
        ("/echo/create/x?%5B_method%5D=DELETE", vec![auth], ""),
        (
            "/echo/create/x",
            vec![auth, form],
            "name=a&_method%5D=DELETE",
        ),
        ("/echo/create/x", vec![auth, form], "[_method]=DELETE"),
        // qs splits after the first `]=`.
        ("/echo/create/x?x=[_method]=DELETE", vec![auth], ""),
        (
            "/echo/create/x",
            vec![auth, json],
            r#"{"name":"a","_method":"DELETE"}"#,
        ),
        ("/echo/open/x?_method=PUT", vec![], ""),
    ] {
        let (r, reached) = a.send("POST", target, &headers, body.as_bytes()).await;
        r.assert_problem(400, "METHOD_OVERRIDE_REFUSED");
        assert_eq!(reached, 0, "{target} {body}");
    }
    let multipart =
        "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n";
    let (r, incomplete) = a
        .send_cut_off(
            "/echo/create/x",
            &[auth, ("content-type", "multipart/form-data; boundary=b")],
            multipart.as_bytes(),
        )
        .await;
    r.assert_problem(400, "METHOD_OVERRIDE_REFUSED");
    assert!(incomplete, "the override reached the backend whole");
    // Naming the request's own method changes nothing, and passes untouched.
    let (r, _) = a
        .send(
            "POST",
            "/echo/create/x?_method=post",
            &[auth, form],
            b"_method=POST",
        )
        .await;
    assert_eq!(received_body(&r), "clientId=1001&_method=POST");
    // The method itself is still judged by the route.
    let (r, _) = a.send("DELETE", "/echo/create/x", &[auth], b"").await;
    r.assert_problem(405, "METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn header_spellings_a_backend_folds_together_never_reach_it() {
    let a = Attack::start().await;
    let token = bearer_for("1001");
    let (r, _) = a
        .send(
            "GET",
            "/echo/campaigns/x",
            &[
                ("authorization", &token),
                ("X_Client_Id", "1002"),
                // PHP reads `.` as `_`, and so as `-`: `HTTP_X_CLIENT_ID`.
                ("X-Client.Id", "1002"),
                ("X.HTTP.Method", "PUT"),
                ("X-HTTP-Method.Override", "DELETE"),
                ("X_Forwarded_For", "6.6.6.6"),
                ("X_Api_Key", "demo-legacy-key-1002"),
                ("x_real_ip", "6.6.6.6"),
                ("X-Original-URL", "/admin"),
                ("X-Rewrite-URL", "/admin"),
                ("X-HTTP-Method-Override", "DELETE"),
                ("X-Method-Override", "DELETE"),
                ("True-Client-IP", "6.6.6.6"),
                ("X-Client-IP", "6.6.6.6"),
                ("Forwarded", "for=6.6.6.6;host=evil"),
                ("X-Forwarded-Port", "1"),
                ("X-Forwarded-Prefix", "/admin"),
                ("X-Forwarded", "for=6.6.6.6"),
                ("X-Middleware-Subrequest", "middleware"),
                ("X-Remote-User", "admin"),
                ("X-Forwarded-Client-Cert", "Hash=1"),
                ("Client-Id", "1002"),
                ("X-Amzn-Oidc-Identity", "admin"),
                ("X-Consumer-Username", "admin"),
                ("X-Auth-User", "admin"),
                ("X-Authenticated-User", "admin"),
                ("X-Tenant-Id", "1002"),
                ("X-Account-Id", "1002"),
                ("Proxy", "http://evil.test:3128"),
                ("X-ARR-ClientCert", "MIIB"),
                ("SSL-Client-Cert", "MIIB"),
                ("X-HTTP-Host-Override", "evil.test"),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let names = names_received(&r);
    for name in &names {
        assert!(
            !name.contains('_') && !name.contains('.'),
            "{name} reached the backend"
        );
    }
    for gone in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "true-client-ip",
        "x-client-ip",
        "forwarded",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded",
        "x-middleware-subrequest",
        "x-remote-user",
        "x-forwarded-client-cert",
        "client-id",
        "x-amzn-oidc-identity",
        "x-consumer-username",
        "x-auth-user",
        "x-authenticated-user",
        "x-tenant-id",
        "x-account-id",
        "proxy",
        "x-arr-clientcert",
        "ssl-client-cert",
        "x-http-host-override",
    ] {
        assert!(
            !names.iter().any(|n| n == gone),
            "{gone} reached the backend"
        );
    }
    assert_eq!(r.echoed_header("x-client-id"), ["1001"]);
    assert_eq!(r.echoed_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(r.echoed_header("x-api-key"), ["demo-legacy-key-1001"]);
    assert!(r.json()["query"]
        .as_str()
        .unwrap()
        .starts_with("clientId=1001"));
}

/// Werkzeug reads a Cookie header as latin-1 and strips names with Python's `strip()`,
/// which takes NBSP and NEL too: `clientId\xa0=1002` is `clientId` to Flask.
#[tokio::test]
async fn a_cookie_name_padded_with_latin1_space_is_the_id() {
    let a = Attack::start().await;
    let token = bearer_for("1001");
    for cookie in [&b"clientId\xa0=1002"[..], b"a=1; \x85clientId=1002"] {
        let mut request = format!(
            "GET /echo/campaigns/x HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\nauthorization: {token}\r\ncookie: "
        )
        .into_bytes();
        request.extend_from_slice(cookie);
        request.extend_from_slice(b"\r\n\r\n");
        let before = a.h.backend.requests();
        crate::support::raw(a.h.gateway.addr, &request)
            .await
            .assert_problem(403, "CLIENT_ID_MISMATCH");
        assert_eq!(a.h.backend.requests(), before);
    }
}

#[tokio::test]
async fn underscored_headers_can_be_refused_and_the_strip_list_replaced() {
    let a = Attack::with_server(
        "headers_with_underscores = \"refuse\"\nstrip_request_headers = [\"x-legacy-admin\"]",
    )
    .await;
    for name in ["X_Client_Id", "X-Client.Id"] {
        let (r, reached) = a.send("GET", "/echo/open/x", &[(name, "1002")], b"").await;
        r.assert_problem(400, "HEADER_NAME_INVALID");
        assert_eq!(reached, 0);
    }
    let (r, _) = a
        .send(
            "GET",
            "/echo/open/x",
            &[("x-legacy-admin", "1"), ("x-original-url", "/kept")],
            b"",
        )
        .await;
    assert!(r.echoed_header("x-legacy-admin").is_empty());
    // The operator's list replaces the default one.
    assert_eq!(r.echoed_header("x-original-url"), ["/kept"]);
}

#[tokio::test]
async fn caller_credentials_never_reach_the_backend_on_anonymous_or_callback_routes() {
    let a = Attack::start().await;
    let secrets = [
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"),
        ("x-api-key", "demo-legacy-key-1002"),
    ];
    let (r, _) = a
        .send(
            "GET",
            "/echo/open/x?api_key=k&a=1&%61pi_key=k2",
            &secrets,
            b"",
        )
        .await;
    assert!(r.echoed_header("authorization").is_empty());
    assert!(r.echoed_header("x-api-key").is_empty());
    assert_eq!(r.json()["query"], "a=1");
    // Nobody is identified here, so no identity header reaches the backend in any
    // spelling it folds together (PHP: `X-Client.Id` is `HTTP_X_CLIENT_ID`).
    let (r, _) = a
        .send(
            "GET",
            "/echo/open/x",
            &[("X-Client.Id", "1002"), ("X-Client-Id", "1003")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let names = names_received(&r);
    assert!(
        !names
            .iter()
            .any(|n| n.replace(['.', '_'], "-") == "x-client-id"),
        "{names:?}"
    );

    let target = format!("/echo/exotel/status?secret={EXOTEL_SECRET}&CallSid=1");
    let (r, _) = a.send("GET", &target, &secrets, b"").await;
    assert_eq!(r.status, 200);
    assert!(r.echoed_header("authorization").is_empty());
    assert!(r.echoed_header("x-api-key").is_empty());
    assert_eq!(r.json()["query"], "CallSid=1");
    // Accepted in the spelling qs reads (`x=[secret]=…`), so removed in it too.
    for spelling in ["x=[secret]", "x=%5Bsecret%5D"] {
        let target = format!("/echo/exotel/status?{spelling}={EXOTEL_SECRET}&CallSid=1");
        let (r, _) = a.send("GET", &target, &secrets, b"").await;
        assert_eq!(r.status, 200, "{spelling}");
        assert_eq!(r.json()["query"], "CallSid=1", "{spelling}");
    }

    // A JWT caller's key is a second identity: stripped even where keys are passed on.
    let token = bearer_for("1001");
    let (r, _) = a
        .send(
            "GET",
            "/echo/keys/x",
            &[("authorization", &token), ("x-api-key", API_KEY)],
            b"",
        )
        .await;
    assert!(r.echoed_header("x-api-key").is_empty());
    // The key a caller authenticated with is passed on where the route says so.
    let (r, _) = a
        .send("GET", "/echo/keys/x", &[("x-api-key", API_KEY)], b"")
        .await;
    assert_eq!(r.echoed_header("x-api-key"), [API_KEY]);

    // A key or bearer token moved to the query, under the key header's name or a
    // conventional one, does not reach the backend either (a backend reading it there
    // would act for whoever's key it is, past the sunset too); other parameters stay.
    for route in ["/echo/campaigns/x", "/echo/keys/x"] {
        let target = format!(
            "{route}?a=1&x-api-key={API_KEY}&X%2DAPI%2DKEY={API_KEY}&api_key={API_KEY}&apikey=k2&API-KEY=k3&access_token=t&b=2"
        );
        let (r, _) = a
            .send("GET", &target, &[("authorization", &token)], b"")
            .await;
        assert_eq!(r.status, 200, "{route}");
        let query = r.json()["query"].as_str().unwrap().to_owned();
        assert!(query.ends_with("a=1&b=2"), "{route}: {query}");
        for gone in ["api", "API", "access_token", "k2", "k3"] {
            assert!(!query.contains(gone), "{route}: {query}");
        }
    }
}

/// The V3 signature Plivo would send for `path` (relative to the public base URL).
fn plivo_signature(path: &str, method: &str, params: &[(&str, &str)], nonce: &str) -> String {
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tollgate_auth::plivo::signature(
        PLIVO_TOKEN.as_bytes(),
        &format!("https://callbacks.example.test{path}"),
        method,
        &owned,
        nonce,
    )
}

/// A signed callback's bytes must have one reading: the signature is checked against the
/// parameters as the gateway decodes them, and a backend that reads the bytes another way
/// (decompressing them, decoding another charset, or a byte that is not UTF-8 that the
/// gateway read as U+FFFD) would act on parameters nobody signed.
#[tokio::test]
async fn a_signed_callback_has_one_reading_of_its_bytes() {
    let a = Attack::start().await;
    let post = "/echo/plivo/answer";
    let form = "application/x-www-form-urlencoded";
    let attempt = |params: &'static [(&'static str, &'static str)],
                   content_type: &'static str,
                   extra: Option<(&'static str, &'static str)>,
                   body: &'static [u8],
                   nonce: &'static str| {
        let a = &a;
        async move {
            let sig = plivo_signature(post, "POST", params, nonce);
            let mut headers = vec![
                ("x-plivo-signature-v3", sig.as_str()),
                ("x-plivo-signature-v3-nonce", nonce),
                ("content-type", content_type),
            ];
            headers.extend(extra);
            a.send("POST", post, &headers, body).await
        }
    };
    const A_X: &[(&str, &str)] = &[("A", "x")];
    const A_REPLACEMENT: &[(&str, &str)] = &[("A", "\u{FFFD}")];
    const A_BROKEN: &[(&str, &str)] = &[("A", "%zz")];
    let refused = [
        (
            A_X,
            form,
            Some(("content-encoding", "gzip")),
            &b"A=x"[..],
            "e-1",
        ),
        (
            A_X,
            form,
            Some(("content-encoding", "identity")),
            &b"A=x"[..],
            "e-2",
        ),
        (
            A_X,
            "application/x-www-form-urlencoded; charset=utf-16",
            None,
            &b"A=x"[..],
            "e-3",
        ),
        (A_REPLACEMENT, form, None, &b"A=%FE"[..], "e-4"),
        (A_REPLACEMENT, form, None, &b"A=%FF"[..], "e-5"),
        (A_REPLACEMENT, form, None, &b"A=\xff"[..], "e-6"),
        (A_BROKEN, form, None, &b"A=%zz"[..], "e-7"),
    ];
    for (params, content_type, extra, body, nonce) in refused {
        let (r, reached) = attempt(params, content_type, extra, body, nonce).await;
        r.assert_problem(401, "SIGNATURE_INVALID");
        assert_eq!(reached, 0, "{nonce}");
    }
    // What has one reading passes: a real U+FFFD, spelled in UTF-8, and a form that
    // names UTF-8 as its charset.
    let (r, reached) = attempt(A_REPLACEMENT, form, None, b"A=%EF%BF%BD", "e-8").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(reached, 1);
    let utf8 = "application/x-www-form-urlencoded; charset=UTF-8";
    let (r, _) = attempt(A_X, utf8, None, b"A=x", "e-9").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn provider_callbacks_cannot_be_extended_or_replayed() {
    let a = Attack::start().await;
    // The reported example: a signed GET carrying an unsigned form body.
    let path = "/echo/plivo/status?CallUUID=abc&Status=ringing";
    let signed = [("CallUUID", "abc"), ("Status", "ringing")];
    let sig = plivo_signature(path, "GET", &signed, "g-1");
    let body = b"CallStatus=completed&clientId=1002";
    let headers = [
        ("x-plivo-signature-v3", sig.as_str()),
        ("x-plivo-signature-v3-nonce", "g-1"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    // Refused before the signature is looked at: no GET carries a body through the
    // gateway (a backend may answer a GET without reading one).
    let (r, reached) = a.send("GET", path, &headers, body).await;
    r.assert_problem(400, "REQUEST_INVALID");
    assert_eq!(reached, 0);
    // The same body sent chunked.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nx-plivo-signature-v3: {sig}\r\nx-plivo-signature-v3-nonce: g-1\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        body.len(),
        String::from_utf8_lossy(body)
    );
    a.h.raw(request.as_bytes())
        .await
        .assert_problem(400, "REQUEST_INVALID");
    // Without a body it is the callback Plivo sent, once.
    let (r, _) = a.send("GET", path, &headers[..2], b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body"]["bytes"], 0);
    let (r, reached) = a.send("GET", path, &headers[..2], b"").await;
    r.assert_problem(409, "CALLBACK_REPLAYED");
    assert_eq!(reached, 0);

    // A POST: replayed as it was, and with its nonce under another valid signature.
    let post = "/echo/plivo/answer";
    let form = [("CallUUID", "abc"), ("From", "+15550100")];
    let encoded = b"CallUUID=abc&From=%2B15550100";
    for (nonce, expect) in [("p-1", 200), ("p-1", 409)] {
        let sig = plivo_signature(post, "POST", &form, nonce);
        let (r, _) = a
            .send(
                "POST",
                post,
                &[
                    ("x-plivo-signature-v3", &sig),
                    ("x-plivo-signature-v3-nonce", nonce),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                encoded,
            )
            .await;
        assert_eq!(r.status, expect, "{}", String::from_utf8_lossy(&r.body));
    }
    let other = [("CallUUID", "abc"), ("From", "+15550199")];
    let sig = plivo_signature(post, "POST", &other, "p-1");
    let (r, _) = a
        .send(
            "POST",
            post,
            &[
                ("x-plivo-signature-v3", &sig),
                ("x-plivo-signature-v3-nonce", "p-1"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            b"CallUUID=abc&From=%2B15550199",
        )
        .await;
    r.assert_problem(409, "CALLBACK_REPLAYED");
    // Signed over a path that normalizes to another: signed as one path, it would be
    // delivered as the other.
    for raw_path in [
        "/echo/plivo/x/../answer",
        "/echo/plivo/%61nswer",
        "/echo/plivo//answer",
    ] {
        let sig = plivo_signature(raw_path, "POST", &form, "p-9");
        let (r, reached) = a
            .send(
                "POST",
                raw_path,
                &[
                    ("x-plivo-signature-v3", &sig),
                    ("x-plivo-signature-v3-nonce", "p-9"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                encoded,
            )
            .await;
        r.assert_problem(401, "SIGNATURE_INVALID");
        assert!(
            r.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains("normal form")),
            "{raw_path}: {}",
            r.json()
        );
        assert_eq!(reached, 0, "{raw_path}");
    }
    // Two nonce headers: which one would the backend believe?
    let sig = plivo_signature(post, "POST", &form, "p-2");
    let (r, _) = a
        .send(
            "POST",
            post,
            &[
                ("x-plivo-signature-v3", &sig),
                ("x-plivo-signature-v3-nonce", "p-2"),
                ("x-plivo-signature-v3-nonce", "p-3"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            encoded,
        )
        .await;
    r.assert_problem(401, "SIGNATURE_INVALID");
    // A POST's query repeated: the signature reads one copy (the URL's parameters are
    // sorted into a map), the backend may read the other.
    let signed_path = "/echo/plivo/answer?CallStatus=completed";
    let sig = plivo_signature(signed_path, "POST", &form, "p-4");
    for target in [
        "/echo/plivo/answer?CallStatus=busy&CallStatus=completed",
        "/echo/plivo/answer?callstatus=busy&CallStatus=completed",
    ] {
        let (r, reached) = a
            .send(
                "POST",
                target,
                &[
                    ("x-plivo-signature-v3", &sig),
                    ("x-plivo-signature-v3-nonce", "p-4"),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                encoded,
            )
            .await;
        r.assert_problem(401, "SIGNATURE_INVALID");
        assert_eq!(reached, 0, "{target}");
    }
    let (r, _) = a
        .send(
            "POST",
            signed_path,
            &[
                ("x-plivo-signature-v3", &sig),
                ("x-plivo-signature-v3-nonce", "p-4"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            encoded,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(a
        .h
        .metrics()
        .await
        .contains("tollgate_callback_replays_total 3"));
}

/// Without Redis, a nonce is written to the store file before its callback is
/// forwarded: a Plivo V3 signature carries no time, so a gateway that forgot its nonces
/// on a restart (or a `kill -9`) would take a captured callback again.
#[tokio::test]
async fn a_nonce_is_a_replay_after_a_restart() {
    async fn send(h: &Harness, nonce: &str) -> RawResponse {
        let path = "/echo/plivo/answer";
        let sig = plivo_signature(path, "POST", &[("CallUUID", "xyz")], nonce);
        let headers = [
            ("x-plivo-signature-v3", sig.as_str()),
            ("x-plivo-signature-v3-nonce", nonce),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        h.send("POST", path, &headers, b"CallUUID=xyz").await
    }
    let (setup, _secrets) = setup_with("", "");
    let mut h = Harness::with(setup).await;
    assert_eq!(send(&h, "kept-1").await.status, 200);
    h.gateway.signal("KILL");
    assert!(h.gateway.wait_exit(Duration::from_secs(5)).is_some());
    h.gateway = GatewayProcess::start(&h.dir.path().join("gateway.toml"));
    send(&h, "kept-1")
        .await
        .assert_problem(409, "CALLBACK_REPLAYED");
    assert_eq!(send(&h, "kept-2").await.status, 200);
    assert!(h.dir.path().join("state/tollgate.redb").exists());

    // An overlapping restart: a second process cannot open the file while the first
    // holds it. It decides alone meanwhile (counted), and opens the file, with every
    // nonce the first saw, once the first is gone.
    let second = GatewayProcess::start(&h.dir.path().join("gateway.toml"));
    let b = Harness {
        gateway: second,
        backend: tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap(),
        dir: TempDir::new(),
    };
    assert_eq!(send(&b, "overlap-1").await.status, 200);
    assert!(b
        .metrics()
        .await
        .contains("tollgate_callback_nonce_fallbacks_total 1"));
    h.gateway.signal("TERM");
    assert!(h.gateway.wait_exit(Duration::from_secs(10)).is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(&b, "kept-2")
        .await
        .assert_problem(409, "CALLBACK_REPLAYED");
}

#[tokio::test]
async fn a_nonce_seen_by_one_instance_is_a_replay_at_every_other() {
    let redis = RedisServer::start();
    let store = format!("[store]\nredis_url = \"{}\"\n", redis.url());
    let (first, _s1) = setup_with("", &store);
    let (second, _s2) = setup_with("", &store);
    let a = Harness::with(first).await;
    let b = Harness::with(second).await;
    let path = "/echo/plivo/answer";
    let form = [("CallUUID", "xyz")];
    let sig = plivo_signature(path, "POST", &form, "shared-1");
    let headers = [
        ("x-plivo-signature-v3", sig.as_str()),
        ("x-plivo-signature-v3-nonce", "shared-1"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    assert_eq!(
        a.send("POST", path, &headers, b"CallUUID=xyz").await.status,
        200
    );
    b.send("POST", path, &headers, b"CallUUID=xyz")
        .await
        .assert_problem(409, "CALLBACK_REPLAYED");
    // One key, expiring with the replay window (an hour by default).
    let keys = redis.cli(&["--scan", "--pattern", "tollgate:nonce:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    let ttl: i64 = redis.cli(&["pttl", keys.trim()]).parse().unwrap();
    assert!((3_500_000..=3_600_000).contains(&ttl), "{ttl}");

    // Redis gone: each instance still refuses what it saw itself.
    drop(redis);
    let sig = plivo_signature(path, "POST", &form, "outage-1");
    let headers = [
        ("x-plivo-signature-v3", sig.as_str()),
        ("x-plivo-signature-v3-nonce", "outage-1"),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    assert_eq!(
        a.send("POST", path, &headers, b"CallUUID=xyz").await.status,
        200
    );
    a.send("POST", path, &headers, b"CallUUID=xyz")
        .await
        .assert_problem(409, "CALLBACK_REPLAYED");
    assert!(a
        .metrics()
        .await
        .contains("tollgate_callback_nonce_fallbacks_total 2"));
}

/// Writes a request head and part of its body, then waits for the answer.
async fn stall(h: &Harness, head: &str, part: &[u8]) -> (RawResponse, Duration) {
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(part).await.unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(20), read_response(&mut stream))
        .await
        .expect("an answer while the body is still stalled");
    (r, started.elapsed())
}

#[tokio::test]
async fn bodies_that_arrive_too_slowly_are_cut_off_with_408() {
    // A body has 1 s, and then must keep up 1 MiB/s.
    let a = Attack::start().await;
    let token = bearer_for("1001");

    // The reported example: a callback's declared 64 KiB sent one byte short.
    let head = "POST /echo/plivo/answer HTTP/1.1\r\nHost: gw\r\nx-plivo-signature-v3: x\r\nx-plivo-signature-v3-nonce: n\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 65536\r\n\r\n";
    let (r, took) = stall(&a.h, head, &vec![b'a'; 65535]).await;
    r.assert_problem(408, "REQUEST_TIMEOUT");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(r.header("connection"), Some("close"));

    // An authenticated JSON body stalled below its limit.
    let head = format!(
        "POST /echo/campaigns/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\ncontent-type: application/json\r\ncontent-length: 900000\r\n\r\n"
    );
    let (r, took) = stall(&a.h, &head, b"{\"pad\":\"").await;
    r.assert_problem(408, "REQUEST_TIMEOUT");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(a.h.backend.requests(), 0);

    // A streamed upload trickled: the client's fault, 408, and the backend connection
    // is let go long before the 30 s response timeout.
    let head = format!(
        "POST /echo/campaigns/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\ncontent-type: text/csv\r\ncontent-length: 1000000\r\n\r\n"
    );
    let (r, took) = stall(&a.h, &head, b"name,phone\n").await;
    r.assert_problem(408, "REQUEST_TIMEOUT");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.h.backend.broken_bodies() == 1
        })
        .await,
        "the backend's request must end"
    );

    // A fast start earns no right to stall: 600 KB at once, then nothing.
    let head = format!(
        "POST /echo/campaigns/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\ncontent-type: application/json\r\ncontent-length: 900000\r\n\r\n"
    );
    let mut start = b"{\"pad\":\"".to_vec();
    start.extend(std::iter::repeat_n(b'x', 600_000));
    let (r, took) = stall(&a.h, &head, &start).await;
    r.assert_problem(408, "REQUEST_TIMEOUT");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A client that keeps up is never cut off, however long the body takes.
    let mut stream = TcpStream::connect(a.h.gateway.addr).await.unwrap();
    let total = 3 * 512 * 1024;
    let head = format!(
        "POST /echo/campaigns/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\ncontent-type: text/csv\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..6 {
        stream.write_all(&vec![b'x'; 256 * 1024]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = read_response(&mut stream).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["body"]["bytes"], total);
}

#[tokio::test]
async fn held_bodies_share_one_memory_budget() {
    let a = Attack::with_server("max_buffered_body_bytes = 65536").await;
    let token = bearer_for("1001");
    // One client holds the whole budget with a body it does not finish.
    let mut holder = TcpStream::connect(a.h.gateway.addr).await.unwrap();
    let head = format!(
        "POST /echo/campaigns/x HTTP/1.1\r\nHost: gw\r\nAuthorization: {token}\r\ncontent-type: application/json\r\ncontent-length: 200000\r\n\r\n{{\"pad\":\""
    );
    holder.write_all(head.as_bytes()).await.unwrap();
    // 8 + 65,520 bytes held: 8 bytes of the 64 KiB budget are left.
    holder.write_all(&vec![b'x'; 65_520]).await.unwrap();
    let held = eventually(Duration::from_secs(5), || async {
        a.h.metrics().await.lines().any(|l| {
            l.strip_prefix("tollgate_request_body_buffered_bytes ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n == 65_528)
        })
    })
    .await;
    assert!(held, "{}", a.h.metrics().await);
    let json = [
        ("authorization", token.as_str()),
        ("content-type", "application/json"),
    ];
    let (r, reached) = a
        .send("POST", "/echo/campaigns/x", &json, br#"{"a":123}"#)
        .await;
    r.assert_problem(503, "GATEWAY_OVERLOADED");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(reached, 0);
    // The holder goes away: its memory comes back.
    drop(holder);
    let freed = eventually(Duration::from_secs(5), || async {
        a.h.metrics()
            .await
            .contains("tollgate_request_body_buffered_bytes 0")
    })
    .await;
    assert!(freed);
    let (r, _) = a
        .send("POST", "/echo/campaigns/x", &json, br#"{"a":123}"#)
        .await;
    assert_eq!(received_body(&r), r#"{"a":123,"clientId":"1001"}"#);
}

#[tokio::test]
async fn fake_callbacks_cannot_take_the_budget_identified_callers_need() {
    let a = Attack::with_server("max_buffered_body_bytes = 65536").await;
    let token = bearer_for("1001");
    // Anyone can send a callback, and it is read whole before its signature can be
    // checked: unfinished fake ones, held until their timeout, may fill a quarter of
    // the budget and no more.
    let mut holders = Vec::new();
    // Two of 6,000 bytes (at most 8 KiB each as held): the quarter, 16 KiB, is all but
    // full.
    for _ in 0..2 {
        let mut s = TcpStream::connect(a.h.gateway.addr).await.unwrap();
        let head = "POST /echo/plivo/answer HTTP/1.1\r\nHost: gw\r\nx-plivo-signature-v3: AAAA\r\nx-plivo-signature-v3-nonce: 1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 60000\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b'x'; 6000]).await.unwrap();
        holders.push(s);
    }
    let quarter_held = eventually(Duration::from_secs(5), || async {
        a.h.metrics().await.lines().any(|l| {
            l.strip_prefix("tollgate_request_body_buffered_bytes ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| (12_000..=16_384).contains(&n))
        })
    })
    .await;
    assert!(quarter_held, "{}", a.h.metrics().await);
    // One more fake callback finds its share full: 503, before any backend.
    let mut more = TcpStream::connect(a.h.gateway.addr).await.unwrap();
    more.write_all(b"POST /echo/plivo/answer HTTP/1.1\r\nHost: gw\r\nx-plivo-signature-v3: AAAA\r\nx-plivo-signature-v3-nonce: 2\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 60000\r\n\r\n").await.unwrap();
    more.write_all(&vec![b'x'; 8000]).await.unwrap();
    read_response(&mut more)
        .await
        .assert_problem(503, "GATEWAY_OVERLOADED");
    // An identified caller's JSON rewrite still has the rest.
    let json = [
        ("authorization", token.as_str()),
        ("content-type", "application/json"),
    ];
    let (r, _) = a
        .send("POST", "/echo/campaigns/x", &json, br#"{"a":123}"#)
        .await;
    assert_eq!(received_body(&r), r#"{"a":123,"clientId":"1001"}"#);
    drop(holders);
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let a = Attack::with_server("max_connections = 3").await;
    let open_now = || async {
        let metrics = a.h.metrics().await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_connections_open "))
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(a.h.gateway.addr).await.unwrap();
        s.write_all(b"GET /echo/open/x HTTP/1.1\r\n").await.unwrap();
        idle.push(s);
    }
    assert!(eventually(Duration::from_secs(5), || async { open_now().await == 3 }).await);
    // The fourth is closed unanswered.
    let mut s = TcpStream::connect(a.h.gateway.addr).await.unwrap();
    let _ = s
        .write_all(b"GET /echo/open/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a fourth connection must be closed unanswered: {read:?}"
    );
    assert!(a
        .h
        .metrics()
        .await
        .contains("tollgate_connections_refused_total 1"));
    // Once the others go, connections are served again.
    idle.clear();
    assert!(eventually(Duration::from_secs(5), || async { open_now().await == 0 }).await);
    assert_eq!(a.h.get("/echo/open/x", &[]).await.status, 200);
}

#[tokio::test]
async fn secrets_in_any_spelling_never_reach_the_log() {
    let a = Attack::start().await;
    let jwt = bearer_for("1001").trim_start_matches("Bearer ").to_owned();
    let leaks = [
        format!("/echo/open/x?%74oken={jwt}"),
        "/echo/open/x?pass%77ord=hunter2-secret".to_owned(),
        "/echo/open/x?api%5Fkey=leaked-api-key".to_owned(),
        "/echo/open/x?token[]=leaked-token".to_owned(),
        "/echo/open/x?API.KEY=leaked-dotted".to_owned(),
        format!("/echo/open/x?note={jwt}"),
        // Some backends split at `;` too: so does redaction.
        "/echo/open/x?a=1;password=semicolon-secret;b=2".to_owned(),
        // Names that end with a secret one.
        "/echo/open/x?x_api_key=suffixed-api-key&authToken=suffixed-token".to_owned(),
        // The Exotel secret the gateway knows, wherever a caller puts it.
        format!("/echo/open/{EXOTEL_SECRET}?q=1"),
        format!("/echo/open/x?callback={EXOTEL_SECRET}"),
        // A backend credential the gateway adds (a client's legacy key), anywhere.
        "/echo/open/x?k=demo-legacy-key-1002".to_owned(),
        "/echo/open/demo-legacy-key-1002/x".to_owned(),
        "/echo/open/x?q=%64emo-legacy-key-1002".to_owned(),
    ];
    for target in &leaks {
        assert_eq!(a.h.get(target, &[]).await.status, 200, "{target}");
    }
    // The Exotel secret under an encoded name is accepted, and neither forwarded nor
    // logged.
    let (r, _) = a
        .send(
            "GET",
            &format!("/echo/exotel/cb?%73ecret={EXOTEL_SECRET}&CallSid=9"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.json()["query"], "CallSid=9");
    // After a `;` it is the same parameter: accepted, taken out, and not logged.
    let (r, _) = a
        .send(
            "GET",
            &format!("/echo/exotel/cb?CallSid=9;secret={EXOTEL_SECRET};x=1"),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.json()["query"], "CallSid=9;x=1");
    // Refused paths are logged bounded and redacted.
    let refused = format!("/echo/open/{jwt}/%zz/{}", "a".repeat(3000));
    a.h.get(&refused, &[])
        .await
        .assert_problem(400, "PATH_INVALID");
    let logged = eventually(Duration::from_secs(5), || async {
        a.h.gateway.stderr().matches("tollgate::access").count() >= leaks.len() + 3
    })
    .await;
    assert!(logged);
    let log = a.h.gateway.stderr();
    for secret in [
        jwt.as_str(),
        "hunter2-secret",
        "leaked-api-key",
        "leaked-token",
        "leaked-dotted",
        "semicolon-secret",
        "suffixed-api-key",
        "suffixed-token",
        EXOTEL_SECRET,
        "legacy-key-1002",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    let line = log
        .lines()
        .find(|l| l.contains("PATH") || l.contains("%zz"))
        .unwrap();
    assert!(line.len() < 2000, "refused path logged unbounded: {line}");
}

/// An RS256 or PS256 token for client 1001, signed with the fixture RSA key.
fn rsa_token(alg: jsonwebtoken::Algorithm) -> String {
    let key = std::fs::read(jwt_fixtures().join("keys/rsa.key.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some("rsa".into());
    let claims = serde_json::json!({
        "clientId": "1001", "iss": "https://issuer.test", "aud": "legacy-api",
        "exp": 4_102_444_800u64,
    });
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key).unwrap(),
    )
    .unwrap();
    format!("Bearer {token}")
}

#[tokio::test]
async fn one_rsa_key_verifies_every_algorithm_it_lists_and_no_other() {
    let a = Attack::start().await;
    for alg in [
        jsonwebtoken::Algorithm::RS256,
        jsonwebtoken::Algorithm::PS256,
    ] {
        let token = rsa_token(alg);
        let (r, _) = a
            .send(
                "GET",
                "/echo/campaigns/x",
                &[("authorization", &token)],
                b"",
            )
            .await;
        assert_eq!(r.status, 200, "{alg:?}");
    }
    let rs512 = rsa_token(jsonwebtoken::Algorithm::RS512);
    let (r, _) = a
        .send(
            "GET",
            "/echo/campaigns/x",
            &[("authorization", &rs512)],
            b"",
        )
        .await;
    r.assert_problem(401, "TOKEN_INVALID");
    // The public key as an HMAC secret, under the RSA key's id: refused.
    let public = std::fs::read(jwt_fixtures().join("keys/rsa.pub.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("rsa".into());
    let forged = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"clientId": "1002", "iss": "https://issuer.test", "aud": "legacy-api", "exp": 4_102_444_800u64}),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    let (r, _) = a
        .send(
            "GET",
            "/echo/campaigns/x",
            &[("authorization", &format!("Bearer {forged}"))],
            b"",
        )
        .await;
    r.assert_problem(401, "TOKEN_INVALID");
}
