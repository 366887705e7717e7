//! The table of path and framing cases: normalization bypass attempts, smuggling shapes
//! and oversized heads, each with the status the client gets and — when the request is
//! forwarded — the exact path the backend received.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Harness, Setup};

enum Expect {
    /// Forwarded; the backend saw this path (and answered with this status).
    Forwarded(u16, &'static str),
    /// Refused by the gateway with problem+json `code`; the backend saw nothing.
    Refused(u16, &'static str),
    /// Refused by the HTTP parser itself before the pipeline (bare status, connection
    /// closed); the backend saw nothing.
    Unparsable(u16),
    /// Answered by the gateway without a body, backend untouched.
    Answered(u16),
}

use Expect::*;

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
}

fn post(extra_headers: &str, body: &str) -> String {
    format!("POST /echo/post HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{extra_headers}\r\n{body}")
}

#[tokio::test]
async fn path_and_framing_table() {
    let h = Harness::start().await;
    let long_target = format!("/echo/{}", "a".repeat(9000));
    let big_header = format!(
        "GET /echo/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40 * 1024)
    );
    let huge_header = format!(
        "GET /echo/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(300 * 1024)
    );
    let many_small_headers: String = (0..20)
        .map(|i| format!("X-H{i}: {}\r\n", "c".repeat(1700)))
        .collect();
    let split_headers = format!(
        "GET /echo/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n{many_small_headers}\r\n"
    );
    let just_under = format!(
        "GET /echo/{} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        "u".repeat(8000)
    );

    let cases: Vec<(&str, String, Expect)> = vec![
        // Normalization: what must land where a user expects.
        ("plain", get("/echo/a"), Forwarded(200, "/echo/a")),
        // A body where backends read none (CL.0): what it holds would be read as the
        // next request on the pooled upstream connection.
        (
            "GET with a body",
            "GET /echo/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Length: 39\r\n\r\nGET /admin HTTP/1.1\r\nHost: gw.test\r\n\r\n".into(),
            Refused(400, "REQUEST_INVALID"),
        ),
        (
            "HEAD with a chunked body",
            "HEAD /echo/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(),
            // The problem's body is not sent to a HEAD.
            Answered(400),
        ),
        (
            "OPTIONS with a body",
            "OPTIONS /echo/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc".into(),
            Refused(400, "REQUEST_INVALID"),
        ),
        (
            "GET with an empty body declared",
            "GET /echo/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".into(),
            Forwarded(200, "/echo/a"),
        ),
        (
            "DELETE with a body",
            "DELETE /echo/a HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".into(),
            Forwarded(200, "/echo/a"),
        ),
        ("duplicate slashes", get("//echo///a"), Forwarded(200, "/echo/a")),
        ("dot segment", get("/echo/./a"), Forwarded(200, "/echo/a")),
        ("dot-dot segment", get("/echo/b/../a"), Forwarded(200, "/echo/a")),
        ("trailing dot keeps slash", get("/echo/a/."), Forwarded(200, "/echo/a/")),
        ("encoded unreserved decoded", get("/echo/%61%7E"), Forwarded(200, "/echo/a~")),
        ("encoded space kept", get("/echo/a%20b"), Forwarded(200, "/echo/a%20b")),
        ("escape hex upper-cased", get("/echo/caf%c3%a9"), Forwarded(200, "/echo/caf%C3%A9")),
        ("double-encoded dots stay literal", get("/echo/%252e%252e/admin"), Forwarded(200, "/echo/%252e%252e/admin")),
        ("query is not normalized", get("/echo/q?x=%2e%2e/../&y"), Forwarded(200, "/echo/q")),
        ("dot-dot above root", get("/../../echo/a"), Forwarded(200, "/echo/a")),
        ("encoded dot-dot into admin", get("/pub/%2e%2e/admin"), Refused(403, "FORBIDDEN")),
        ("mixed-case encoded dots", get("/pub/.%2E/admin"), Refused(403, "FORBIDDEN")),
        ("double slash admin", get("//admin"), Refused(403, "FORBIDDEN")),
        ("admin dot slash", get("/admin/./"), Refused(403, "FORBIDDEN")),
        ("echo climbs to admin", get("/echo/../admin/users"), Refused(403, "FORBIDDEN")),
        ("case is significant", get("/ADMIN"), Refused(404, "ROUTE_NOT_FOUND")),
        ("unmatched is denied", get("/nowhere"), Refused(404, "ROUTE_NOT_FOUND")),
        ("method not allowed", get("/campaigns/7").replace("GET", "DELETE"), Refused(405, "METHOD_NOT_ALLOWED")),
        // Paths that are refused outright.
        ("encoded slash", get("/pub/..%2fadmin"), Refused(400, "PATH_INVALID")),
        ("encoded slash upper", get("/pub/%2F..%2Fadmin"), Refused(400, "PATH_INVALID")),
        ("encoded backslash", get("/pub/..%5cadmin"), Refused(400, "PATH_INVALID")),
        ("encoded NUL", get("/echo/a%00.txt"), Refused(400, "PATH_INVALID")),
        ("encoded newline", get("/echo/a%0d%0aX-Injected:%201"), Refused(400, "PATH_INVALID")),
        ("broken escape", get("/echo/%zz"), Refused(400, "PATH_INVALID")),
        ("truncated escape", get("/echo/%4"), Refused(400, "PATH_INVALID")),
        ("invalid UTF-8", get("/echo/%ff%fe"), Refused(400, "PATH_INVALID")),
        ("servlet dot-dot-semicolon", get("/pub/..;/admin"), Refused(400, "PATH_INVALID")),
        ("segment of parameters only", get("/;x/admin"), Refused(400, "PATH_INVALID")),
        // Servlet containers and Spring route `/admin;x/users` as `/admin/users`.
        ("path parameters judged with their segment", get("/admin;jsessionid=1/users"), Refused(403, "FORBIDDEN")),
        ("path parameters kept when forwarded", get("/echo/a;v=1/b"), Forwarded(200, "/echo/a;v=1/b")),
        // Request targets and Host.
        ("absolute-form, same host", get("http://gw.test/echo/abs"), Forwarded(200, "/echo/abs")),
        ("absolute-form, other host", get("http://evil.test/echo/abs"), Refused(400, "REQUEST_INVALID")),
        ("missing Host", "GET /echo/a HTTP/1.1\r\nConnection: close\r\n\r\n".into(), Refused(400, "REQUEST_INVALID")),
        ("repeated Host", "GET /echo/a HTTP/1.1\r\nHost: gw.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n".into(), Refused(400, "REQUEST_INVALID")),
        // RFC 9112 §3.2: a Host that is not one host is 400 (it becomes X-Forwarded-Host).
        ("empty Host", "GET /echo/a HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n".into(), Refused(400, "REQUEST_INVALID")),
        ("Host with userinfo", "GET /echo/a HTTP/1.1\r\nHost: user@evil.test\r\nConnection: close\r\n\r\n".into(), Refused(400, "REQUEST_INVALID")),
        ("Host with a list", "GET /echo/a HTTP/1.1\r\nHost: gw.test,evil.test\r\nConnection: close\r\n\r\n".into(), Refused(400, "REQUEST_INVALID")),
        ("Host with a path", "GET /echo/a HTTP/1.1\r\nHost: evil.test/x?y#z\r\nConnection: close\r\n\r\n".into(), Refused(400, "REQUEST_INVALID")),
        ("Host with a bad port", "GET /echo/a HTTP/1.1\r\nHost: gw.test:99999\r\nConnection: close\r\n\r\n".into(), Refused(400, "REQUEST_INVALID")),
        ("Host IPv6 literal", "GET /echo/v6 HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n".into(), Forwarded(200, "/echo/v6")),
        ("asterisk on GET", get("*"), Refused(400, "REQUEST_INVALID")),
        ("OPTIONS asterisk", get("*").replace("GET", "OPTIONS"), Answered(204)),
        ("CONNECT", "CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\nConnection: close\r\n\r\n".into(), Refused(400, "REQUEST_INVALID")),
        ("HTTP/1.0 with Host", "GET /echo/old HTTP/1.0\r\nHost: gw.test\r\n\r\n".into(), Forwarded(200, "/echo/old")),
        // Body framing: the smuggling shapes.
        ("chunked", post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Forwarded(200, "/echo/post")),
        // RFC 9112 §6.3: chunked wins, Content-Length is dropped, the connection closes.
        ("chunked plus Content-Length", post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"), Forwarded(200, "/echo/post")),
        ("two Content-Types", post("Content-Type: text/plain\r\nContent-Type: application/json\r\nContent-Length: 2\r\n", "{}"), Refused(400, "REQUEST_INVALID")),
        ("chunked twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refused(400, "REQUEST_INVALID")),
        ("gzip then chunked", post("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Refused(400, "REQUEST_INVALID")),
        ("identity encoding", post("Transfer-Encoding: identity\r\n", "hello"), Unparsable(400)),
        ("two Content-Lengths", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), Unparsable(400)),
        ("space before colon", post("Content-Length : 5\r\n", "hello"), Unparsable(400)),
        ("obs-fold header", "GET /echo/a HTTP/1.1\r\nHost: gw.test\r\nX-A: 1\r\n  folded\r\nConnection: close\r\n\r\n".into(), Unparsable(400)),
        // Sizes.
        ("target just under 8 KiB", just_under, Forwarded(200, "")),
        ("target over 8 KiB", get(&long_target), Refused(414, "URI_TOO_LONG")),
        ("one header over 32 KiB", big_header, Refused(431, "HEADERS_TOO_LARGE")),
        ("many headers over 32 KiB", split_headers, Refused(431, "HEADERS_TOO_LARGE")),
        ("head over the parser's hard limit", huge_header, Unparsable(431)),
    ];
    assert!(cases.len() >= 30);

    let mut failures = Vec::new();
    for (name, request, expect) in &cases {
        let before = h.backend.requests();
        let response = h.raw(request.as_bytes()).await;
        let reached = h.backend.requests() - before;
        let outcome = match expect {
            Forwarded(status, path) => {
                if response.status != *status || reached != 1 {
                    Err(format!(
                        "want {status} forwarded, got {} (backend calls {reached})",
                        response.status
                    ))
                } else if !path.is_empty() && response.json()["path"] != *path {
                    Err(format!(
                        "backend saw path {}, want {path}",
                        response.json()["path"]
                    ))
                } else {
                    Ok(())
                }
            }
            Refused(status, code) => {
                let body: serde_json::Value =
                    serde_json::from_slice(&response.body).unwrap_or_default();
                if response.status != *status
                    || reached != 0
                    || body["code"] != *code
                    || response.header("content-type") != Some("application/problem+json")
                {
                    Err(format!(
                        "want {status} {code}, got {} {} (backend calls {reached})",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    ))
                } else {
                    Ok(())
                }
            }
            Unparsable(status) | Answered(status) => {
                if response.status != *status || reached != 0 {
                    Err(format!(
                        "want {status}, got {} (backend calls {reached})",
                        response.status
                    ))
                } else {
                    Ok(())
                }
            }
        };
        if let Err(why) = outcome {
            failures.push(format!("{name}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The backend is told the length the gateway read, in one spelling: `005` is 5 to
/// the gateway but 5 or octal 5 (and `010` octal 8) to a backend parsing it with
/// `strtol(…, 0)`, and two readings of one length are a desync.
#[tokio::test]
async fn content_length_reaches_the_backend_as_the_number_it_was_read_as() {
    let h = Harness::start().await;
    let response = h
        .raw(b"POST /echo/len HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 010\r\n\r\n0123456789")
        .await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.echoed_header("content-length"), ["10"]);
    assert_eq!(response.json()["body"]["text"], "0123456789");
}

/// A request pipelined behind another on one connection is judged on its own.
#[tokio::test]
async fn pipelined_requests_are_each_judged() {
    let h = Harness::start().await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let both = b"GET /echo/first HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /admin HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, both)
        .await
        .unwrap();
    let mut pending = Vec::new();
    let first = crate::support::read_next(&mut stream, &mut pending).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["path"], "/echo/first");
    let second = crate::support::read_next(&mut stream, &mut pending).await;
    second.assert_problem(403, "FORBIDDEN");
    assert_eq!(h.backend.requests(), 1);
}

/// Without `h2c`, a client speaking HTTP/2 with prior knowledge is closed on at once,
/// with nothing written: no HTTP/1.1 status it could misread, no hang (errors.md).
#[tokio::test]
async fn an_http2_preface_without_h2c_is_closed_unanswered() {
    let h = Harness::start().await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("closed at once")
        .ok();
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert_eq!(h.backend.requests(), 0);
}

/// A body that claims to be chunked but hides a second request is not a second request.
#[tokio::test]
async fn smuggled_request_in_a_body_is_just_body() {
    let h = Harness::start().await;
    let smuggle = "GET /admin HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let request = format!(
        "POST /echo/s HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{smuggle}",
        smuggle.len()
    );
    let response = h.raw(request.as_bytes()).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body"]["bytes"], smuggle.len());
    assert_eq!(h.backend.requests(), 1);
}

/// A chunked body's trailer fields came after every check the pipeline made: a client id
/// or a credential sent there must not reach the backend.
#[tokio::test]
async fn request_trailers_never_reach_the_backend() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the gateway stops sending (it keeps the connection for reuse).
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        String::from_utf8(got).unwrap()
    });
    let h = Harness::with(Setup {
        upstream_addr: Some(addr),
        ..Setup::default()
    })
    .await;
    let r = h
        .raw(
            b"POST /echo/post HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
              Transfer-Encoding: chunked\r\nTrailer: X-Client-Id, Authorization\r\n\r\n\
              5\r\nhello\r\n0\r\nX-Client-Id: 1002\r\nAuthorization: Bearer stolen\r\n\r\n",
        )
        .await;
    assert_eq!(r.status, 200);
    let got = received.await.unwrap();
    assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got}");
    let lower = got.to_ascii_lowercase();
    assert!(
        !lower.contains("1002") && !lower.contains("stolen") && !lower.contains("trailer"),
        "{got}"
    );
}

/// Answers hyper reads but a client cannot be given as they are: a 101 the gateway
/// never asked for (a switch to nothing), a status HTTP does not define (600, 999), and
/// `Transfer-Encoding` beside `Content-Length` (the body was framed by chunks, and the
/// length cut it short at the client). Each is 502, and a metered request is refunded.
#[tokio::test]
async fn answers_a_client_cannot_be_given_as_they_are_are_502() {
    for head in [
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        "HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.1 999 Odd\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let _ = stream.write_all(head.as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                });
            }
        });
        let h = Harness::with(Setup {
            upstream_addr: Some(addr),
            ..Setup::default()
        })
        .await;
        let r = h
            .get("/echo/x", &[("upgrade", "websocket"), ("connection", "upgrade")])
            .await;
        assert_eq!(r.status, 502, "{head}");
        r.assert_problem(502, "UPSTREAM_ERROR");
    }
}
