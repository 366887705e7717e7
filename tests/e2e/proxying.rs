//! What the backend receives and what the client gets back: headers stripped and set,
//! bodies streamed byte for byte, upstream failures mapped, logs kept free of secrets.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use tokio::net::TcpStream;

use crate::support::{closed_port, raw, write_config, GatewayProcess, Harness, Setup, TempDir};

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_are_stripped() {
    let h = Harness::start().await;
    let response = h
        .get(
            "/echo/hop",
            &[
                ("connection", "x-internal-auth, keep-alive"),
                ("x-internal-auth", "let-me-in"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("proxy-connection", "keep-alive"),
                ("expect", "100-continue"),
                ("x-kept", "yes"),
            ],
        )
        .await;
    assert_eq!(response.status, 200);
    for gone in [
        "connection",
        "x-internal-auth",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "expect",
    ] {
        assert!(
            response.echoed_header(gone).is_empty(),
            "{gone} reached the backend"
        );
    }
    assert_eq!(response.echoed_header("x-kept"), ["yes"]);
    // No authenticated caller on this route: a claimed identity header is dropped.
    let claimed = h.get("/echo/who", &[("x-client-id", "1002")]).await;
    assert!(claimed.echoed_header("x-client-id").is_empty());
    assert_eq!(
        response.echoed_header("host"),
        [h.backend.addr().to_string()]
    );
}

#[tokio::test]
async fn forwarding_headers_are_set_and_spoofs_replaced() {
    let h = Harness::start().await;
    let response = h
        .get(
            "/echo/fwd",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.test"),
                ("x-real-ip", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
            ],
        )
        .await;
    assert_eq!(response.echoed_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(response.echoed_header("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(response.echoed_header("x-forwarded-proto"), ["http"]);
    assert_eq!(response.echoed_header("x-forwarded-host"), ["gw.test"]);
    assert!(response.echoed_header("forwarded").is_empty());
    // `Connection` cannot name away what the forwarding headers are made from, nor what
    // the body is: they arrive as the gateway judged them.
    let response = h
        .send(
            "POST",
            "/echo/fwd",
            &[
                ("connection", "Host, Content-Type, Content-Length, close"),
                ("content-type", "text/plain"),
            ],
            b"abc",
        )
        .await;
    assert_eq!(response.echoed_header("x-forwarded-host"), ["gw.test"]);
    assert_eq!(response.echoed_header("content-type"), ["text/plain"]);
    assert_eq!(response.echoed_header("content-length"), ["3"]);
    assert_eq!(response.json()["body"]["bytes"], 3);
}

#[tokio::test]
async fn a_backend_cannot_speak_for_the_gateway_about_credits_or_send_clients_to_itself() {
    // A backend that claims a balance, a cost and a replay on a free route.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let answer = format!("HTTP/1.1 302 Found\r\ncontent-length: 2\r\nx-token-balance: 99999\r\nX-Token-Cost: 0\r\nidempotent-replayed: true\r\nretry-after: 7\r\nx-own: kept\r\nlocation: http://{addr}/internal?a=1\r\nset-cookie: tg_access=evil; Path=/\r\nset-cookie: theme=dark\r\nset-cookie: tg_refresh=evil\r\nconnection: close\r\n\r\nok");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    let h = Harness::with(Setup {
        upstream_addr: Some(addr),
        ..Setup::default()
    })
    .await;
    let r = h.get("/pub/x", &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.body, b"ok");
    // A redirect to the backend's own address stays behind the gateway.
    assert_eq!(r.header("location"), Some("/internal?a=1"));
    // Nor can it plant the gateway's session cookies; its own pass.
    assert_eq!(r.header_all("set-cookie"), ["theme=dark"]);
    for gone in ["x-token-balance", "x-token-cost", "idempotent-replayed"] {
        assert_eq!(r.header(gone), None, "{gone} reached the client");
    }
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("x-own"), Some("kept"));
}

#[tokio::test]
async fn a_refusal_that_leaves_the_body_unread_says_the_connection_closes() {
    let h = Harness::start().await;
    // Head first, body later (as Python's http.client sends them): the gateway refuses
    // from the head, hyper closes the connection after the answer, and the client must
    // be told rather than find out by a reset on its next request.
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    stream
        .write_all(b"POST /admin/x HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 2\r\n\r\n")
        .await
        .unwrap();
    let r = crate::support::read_response(&mut stream).await;
    r.assert_problem(403, "FORBIDDEN");
    assert_eq!(r.header("connection"), Some("close"));
    // Without a body the connection stays open for the next request.
    let mut stream = TcpStream::connect(h.gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /admin/x HTTP/1.1\r\nhost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let r = crate::support::read_response(&mut stream).await;
    r.assert_problem(403, "FORBIDDEN");
    assert_eq!(r.header("connection"), None);
    stream
        .write_all(b"GET /echo/x HTTP/1.1\r\nhost: gw.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(crate::support::read_response(&mut stream).await.status, 200);
}

#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_forwarded_as_ipv4() {
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    write_config(dir.path(), &Setup::default(), backend.addr());
    let config = dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(r#"listen = ["127.0.0.1:0"]"#, r#"listen = ["[::]:0"]"#);
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::start(&config);
    assert!(gateway.addr.is_ipv6(), "{}", gateway.addr);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], gateway.addr.port()));
    let response = raw(
        v4,
        b"GET /echo/fwd HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.echoed_header("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(response.echoed_header("x-real-ip"), ["127.0.0.1"]);
}

#[tokio::test]
async fn trusted_proxies_extend_the_forwarded_chain() {
    let h = Harness::with(Setup {
        server: "trusted_proxies = [\"127.0.0.0/8\"]".into(),
        ..Setup::default()
    })
    .await;
    let response = h
        .get(
            "/echo/fwd",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await;
    assert_eq!(
        response.echoed_header("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"]
    );
    assert_eq!(response.echoed_header("x-real-ip"), ["203.0.113.9"]);
    assert_eq!(response.echoed_header("x-forwarded-proto"), ["https"]);
}

#[tokio::test]
async fn request_ids_are_propagated_or_created() {
    let h = Harness::start().await;
    let kept = h.get("/echo/id", &[("x-request-id", "trace-42:abc")]).await;
    assert_eq!(kept.header("x-request-id"), Some("trace-42:abc"));
    assert_eq!(kept.echoed_header("x-request-id"), ["trace-42:abc"]);

    let made = h
        .get("/echo/id", &[("x-request-id", "bad id with spaces")])
        .await;
    let id = made.header("x-request-id").unwrap().to_owned();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(made.echoed_header("x-request-id"), [id]);

    let refused = h.get("/nowhere", &[]).await;
    refused.assert_problem(404, "ROUTE_NOT_FOUND");
}

#[tokio::test]
async fn large_bodies_stream_through_unchanged() {
    let h = Harness::start().await;
    let size = 48 * 1024 * 1024;
    let body: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
    let want = hex(&Sha256::digest(&body));
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let head = format!(
        "POST /echo/big HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let response = crate::support::read_response(&mut stream).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body"]["bytes"], size);
    assert_eq!(response.json()["body"]["sha256"], want);
}

#[tokio::test]
async fn chunked_uploads_stream_through_unchanged() {
    let h = Harness::start().await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    stream
        .write_all(b"POST /echo/upload HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut hasher = Sha256::new();
    let mut total = 0;
    for i in 0..200 {
        let chunk = format!("name{i},+1555{i:07}\n").repeat(50);
        hasher.update(chunk.as_bytes());
        total += chunk.len();
        stream
            .write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let response = crate::support::read_response(&mut stream).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["body"]["bytes"], total);
    assert_eq!(response.json()["body"]["sha256"], hex(&hasher.finalize()));
}

#[tokio::test]
async fn the_legacy_backend_still_wants_its_key() {
    // Until authentication lands, the gateway passes the backend's answer through as is.
    let h = Harness::start().await;
    let response = h
        .send(
            "POST",
            "/upload-csv",
            &[("content-type", "text/csv")],
            b"a,b\n",
        )
        .await;
    assert_eq!(response.status, 401);
    assert_eq!(
        response.json(),
        serde_json::json!({"error": "API key missing"})
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let h = Harness::with(Setup {
        upstream_addr: Some(closed_port()),
        ..Setup::default()
    })
    .await;
    let response = h.get("/echo/x", &[]).await;
    response.assert_problem(502, "UPSTREAM_UNAVAILABLE");
    let metrics = h.metrics().await;
    assert!(metrics.contains("tollgate_upstream_errors_total{kind=\"unavailable\"} 1"));
    // The refused connect is timed as a failed one.
    assert!(metrics.contains("tollgate_upstream_connect_seconds_count{result=\"error\"} 1"));
    assert!(metrics.contains("tollgate_upstream_connect_seconds_count{result=\"ok\"} 0"));
}

#[tokio::test]
async fn a_slow_upstream_is_504() {
    let h = Harness::with(Setup {
        upstream: "response_timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let started = std::time::Instant::now();
    let response = h.get("/echo/slow?delay_ms=5000", &[]).await;
    response.assert_problem(504, "UPSTREAM_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn access_log_has_one_line_per_request_and_no_secrets() {
    let h = Harness::start().await;
    let response = h
        .get(
            "/echo/log?api_key=SECRET-QUERY-KEY&page=2",
            &[
                ("authorization", "Bearer SECRET-BEARER-TOKEN"),
                ("cookie", "session=SECRET-COOKIE"),
                ("x-api-key", "SECRET-HEADER-KEY"),
                ("x-request-id", "log-test-1"),
            ],
        )
        .await;
    assert_eq!(response.status, 200);
    assert!(
        h.gateway
            .wait_for_log("log-test-1", Duration::from_secs(5))
            .await
    );
    let logs = h.gateway.stderr();
    assert!(
        !logs.contains("SECRET"),
        "a secret reached the logs:\n{logs}"
    );
    let line = logs.lines().find(|l| l.contains("log-test-1")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["target"], "tollgate::access");
    assert_eq!(entry["route"], "echo");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/echo/log");
    assert_eq!(entry["query"], "api_key=[redacted]&page=2");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["bytes_out"], response.body.len());
    assert!(entry["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(logs.matches("log-test-1").count(), 1);

    // A client that hangs up before any answer is logged 499 (as nginx logs it), not
    // with a status nobody was sent.
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /echo/gone?delay_ms=1500 HTTP/1.1\r\nhost: gw.test\r\nx-request-id: log-test-2\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
    assert!(
        h.gateway
            .wait_for_log("log-test-2", Duration::from_secs(5))
            .await
    );
    let logs = h.gateway.stderr();
    let line = logs.lines().find(|l| l.contains("log-test-2")).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(entry["status"], 499, "{line}");
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_broken_chunked_body_is_the_clients_fault() {
    let h = Harness::start().await;
    let response = h
        .raw(b"POST /echo/broken HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")
        .await;
    response.assert_problem(400, "REQUEST_BODY_INVALID");
    assert_eq!(response.header("connection"), Some("close"));
}

/// An upstream whose accept queue is full never completes the TCP handshake: the
/// connect timeout turns that into a prompt 504 instead of a hang.
#[tokio::test]
async fn an_upstream_that_never_accepts_is_504_after_the_connect_timeout() {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue (never accepted), so further SYNs are dropped.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    let h = Harness::with(Setup {
        upstream_addr: Some(addr),
        upstream: "connect_timeout = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let started = std::time::Instant::now();
    let response = h.get("/echo/x", &[]).await;
    response.assert_problem(504, "UPSTREAM_TIMEOUT");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(socket);
}

#[tokio::test]
async fn unmatched_forward_never_bypasses_a_route_by_method() {
    let h = Harness::with(Setup {
        unmatched: "forward",
        ..Setup::default()
    })
    .await;
    let r = h.send("DELETE", "/campaigns/7", &[], b"").await;
    r.assert_problem(405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT"));
    let r = h.get("/elsewhere", &[]).await;
    assert_eq!(
        r.status, 404,
        "forwarded: the backend itself has no such path"
    );
    assert_eq!(r.json()["path"], "/elsewhere");
    assert_eq!(h.backend.requests(), 1);
}

/// The access line of the request with id `request_id`.
fn access_line(h: &Harness, request_id: &str) -> serde_json::Value {
    let logs = h.gateway.stderr();
    let line = logs
        .lines()
        .find(|l| l.contains(request_id) && l.contains("tollgate::access"))
        .unwrap_or_else(|| panic!("no access line for {request_id}:\n{logs}"));
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn the_clients_trace_is_continued_to_the_backend_and_logged() {
    let h = Harness::start().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = format!("00-{trace}-00f067aa0ba902b7-01");
    let response = h
        .get(
            "/echo/traced",
            &[
                ("traceparent", &sent),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("tracestate", "rojo=00f067aa0ba902b7"),
                ("x-request-id", "trace-test-1"),
            ],
        )
        .await;
    assert_eq!(response.status, 200);
    let parent = response.echoed_header("traceparent");
    assert_eq!(parent.len(), 1, "{parent:?}");
    let parent = &parent[0];
    // Same trace and sampled flag; the gateway's own span as the parent.
    assert!(parent.starts_with(&format!("00-{trace}-")), "{parent}");
    assert!(parent.ends_with("-01"), "{parent}");
    assert_ne!(parent, &sent);
    assert_ne!(&parent[36..52], "0000000000000000");
    assert_eq!(
        response.echoed_header("tracestate"),
        ["congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"]
    );
    assert!(
        h.gateway
            .wait_for_log("trace-test-1", Duration::from_secs(5))
            .await
    );
    assert_eq!(access_line(&h, "trace-test-1")["trace_id"], trace);
}

#[tokio::test]
async fn a_malformed_or_missing_trace_starts_a_new_one() {
    let h = Harness::start().await;
    let forged = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    let response = h
        .get(
            "/echo/forged",
            &[
                ("traceparent", forged),
                ("tracestate", "evil=1"),
                ("x-request-id", "trace-test-2"),
            ],
        )
        .await;
    let parent = response.echoed_header("traceparent");
    assert_eq!(parent.len(), 1, "{parent:?}");
    assert!(!parent[0].to_ascii_lowercase().contains("4bf92f3577b34da6"));
    assert!(parent[0].ends_with("-00"), "a new trace is not sampled");
    assert!(response.echoed_header("tracestate").is_empty());

    // Without one, every request gets a trace of its own, and the log names it.
    let a = h.get("/echo/a", &[("x-request-id", "trace-test-3")]).await;
    let b = h.get("/echo/b", &[]).await;
    let (a, b) = (
        a.echoed_header("traceparent")[0].clone(),
        b.echoed_header("traceparent")[0].clone(),
    );
    assert_ne!(a[3..35], b[3..35]);
    assert!(
        h.gateway
            .wait_for_log("trace-test-3", Duration::from_secs(5))
            .await
    );
    assert_eq!(access_line(&h, "trace-test-3")["trace_id"], a[3..35]);
}

/// With `[tracing] otlp_url`, a sampled request's span reaches the collector: the
/// gateway's hop, parented by the client's span, and itself the parent the backend got.
#[tokio::test]
async fn sampled_spans_are_exported_to_the_collector_as_the_backend_s_parent() {
    let collector = tollgate_proxy::rehearsal::StandIn::start().await.unwrap();
    let h = Harness::with(Setup {
        extra: format!(
            "[tracing]\notlp_url = \"http://{}/v1/traces\"\nservice_name = \"edge-gw\"\n",
            collector.addr
        ),
        ..Setup::default()
    })
    .await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sent = format!("00-{trace}-00f067aa0ba902b7-01");
    let response = h
        .get(
            "/echo/spanned?x=1",
            &[("traceparent", &sent), ("x-request-id", "span-test-1")],
        )
        .await;
    assert_eq!(response.status, 200);
    let upstream_parent = response.echoed_header("traceparent")[0][36..52].to_owned();
    // An unsampled request is not exported.
    let unsampled = format!("00-{trace}-00f067aa0ba902b8-00");
    h.get("/echo/quiet", &[("traceparent", &unsampled)]).await;

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let received = loop {
        if let Some(r) = collector.take() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "no spans within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (received.method.as_str(), received.target.as_str()),
        ("POST", "/v1/traces")
    );
    let doc: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
    let resource = &doc["resourceSpans"][0];
    assert_eq!(
        resource["resource"]["attributes"][0]["value"]["stringValue"],
        "edge-gw"
    );
    let spans = resource["scopeSpans"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "only the sampled request: {spans:?}");
    let span = &spans[0];
    assert_eq!(span["traceId"], trace);
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["spanId"], upstream_parent.as_str());
    assert_eq!(span["name"], "GET echo");
    assert_eq!(span["kind"], 2);
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(
        end >= start && end - start < 10_000_000_000,
        "{start} {end}"
    );
    let attribute = |key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"].clone())
    };
    assert_eq!(
        attribute("url.path"),
        Some(serde_json::json!({"stringValue": "/echo/spanned"}))
    );
    assert_eq!(
        attribute("http.response.status_code"),
        Some(serde_json::json!({"intValue": "200"}))
    );
    assert_eq!(
        attribute("tollgate.request_id"),
        Some(serde_json::json!({"stringValue": "span-test-1"}))
    );
    // Counted once the collector has answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !h
        .metrics()
        .await
        .contains("tollgate_otlp_spans_exported_total 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            h.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The flags of the `traceparent` the backend got for a request the client sent as
/// sampled.
async fn flags_upstream(h: &Harness) -> String {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sampled = format!("00-{trace}-00f067aa0ba902b7-01");
    let r = h.get("/echo/t", &[("traceparent", &sampled)]).await;
    assert_eq!(r.status, 200);
    let sent = r.echoed_header("traceparent")[0].clone();
    // The same trace, whoever decides.
    assert_eq!(&sent[3..35], trace);
    sent[53..55].to_owned()
}

/// `[tracing] follow_sampled = "trusted_proxies"`: a client's sampled flag is kept only
/// from a trusted proxy; from anyone else the trace continues, unsampled (here
/// `sample_new` is 0), so an unauthenticated client cannot make the gateway export.
#[tokio::test]
async fn only_trusted_proxies_decide_sampling_when_configured() {
    let tracing = "[tracing]\nfollow_sampled = \"trusted_proxies\"\n";
    let untrusted = Harness::with(Setup {
        extra: tracing.into(),
        ..Setup::default()
    })
    .await;
    assert_eq!(flags_upstream(&untrusted).await, "00");
    let trusted = Harness::with(Setup {
        server: "trusted_proxies = [\"127.0.0.0/8\"]".into(),
        extra: tracing.into(),
        ..Setup::default()
    })
    .await;
    assert_eq!(flags_upstream(&trusted).await, "01");
    // The default follows anyone, as W3C parent-based sampling does.
    let default = Harness::start().await;
    assert_eq!(flags_upstream(&default).await, "01");
}

/// HEAD is GET without the body (RFC 9110 §9.3.2): a route that takes GET takes it, so
/// `curl -I` works, and a route that denies GET denies the same request sent as HEAD
/// rather than letting it fall through to a broader route.
#[tokio::test]
async fn a_route_that_takes_get_takes_head_and_a_get_deny_holds_for_head() {
    let mut setup = Setup::default();
    setup.policies.push((
        "05-deny-get.toml".to_owned(),
        r#"
[[route]]
name = "no-reports"
methods = ["GET"]
path = "/echo/reports/*"
action = "deny"
"#
        .to_owned(),
    ));
    let h = Harness::with(setup).await;
    // A HEAD's answer has a Content-Length but no body: read to the close.
    let head = |target: &str| {
        let addr = h.gateway.addr;
        let request =
            format!("HEAD {target} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n");
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut all)
                .await
                .unwrap();
            let text = String::from_utf8(all).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            (head.to_owned(), body.to_owned())
        }
    };
    // `/campaigns/{id}` takes GET and PUT: a HEAD is forwarded (the demo backend has no
    // such campaign, so its own 404 head comes back, without a body), not refused 405.
    let (answer, body) = head("/campaigns/7").await;
    assert!(
        answer.starts_with("HTTP/1.1 404") && answer.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(body.is_empty(), "{body}");
    assert_eq!(h.backend.requests(), 1);
    // The deny for GET is a deny for HEAD, before the broader echo route could take it.
    let (answer, body) = head("/echo/reports/all").await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(body.is_empty(), "{body}");
    assert_eq!(h.backend.requests(), 1);
    h.get("/echo/reports/all", &[])
        .await
        .assert_problem(403, "FORBIDDEN");
    // POST there is someone else's business: the echo route forwards it.
    assert_eq!(
        h.send("POST", "/echo/reports/all", &[], b"").await.status,
        200
    );
}
