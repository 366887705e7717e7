//! TLS and HTTP/2 on the client side, an https upstream with mutual TLS, and the PROXY
//! protocol: real handshakes with rustls clients that trust only the test CA, HTTP/2
//! spoken by hyper's client, and the demo backend's report of what it received.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::{eventually, raw, Harness, RawResponse, Setup};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tls")
        .join(name)
}

fn der(name: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(fixture(name)).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts the test CA only and offers `alpn`.
fn client_config(
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der("ca.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect_with(
    addr: SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

async fn connect(addr: SocketAddr, name: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    connect_with(addr, name, client_config(alpn, rustls::DEFAULT_VERSIONS))
        .await
        .unwrap()
}

fn served_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// One request over HTTP/2 on `io`, read whole.
async fn h2<I>(io: I, request: http::Request<Full<Bytes>>) -> RawResponse
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    collect(response).await
}

/// One request over HTTP/1.1 on `io`, read whole.
async fn h1<I>(io: I, request: http::Request<Full<Bytes>>) -> RawResponse
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    collect(response).await
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> RawResponse {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    RawResponse {
        status,
        headers,
        body,
    }
}

/// A request body of one empty DATA frame, then its end (`true`: no frame at all).
struct OneEmptyFrame(bool);

impl hyper::body::Body for OneEmptyFrame {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.0 {
            return std::task::Poll::Ready(None);
        }
        self.0 = true;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::new()))))
    }
}

fn get(uri: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn tls_server(certificates: &[(&str, &str)]) -> String {
    let list: Vec<String> = certificates
        .iter()
        .map(|(cert, key)| format!("{{ cert_file = \"{cert}\", key_file = \"{key}\" }}"))
        .collect();
    format!(
        "h2c = true\n\n[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncertificates = [{}]\n",
        list.join(", ")
    )
}

fn fixture_str(name: &str) -> String {
    fixture(name).display().to_string()
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn tls_offers_h2_and_http1_picks_the_certificate_by_name_and_keeps_the_pipeline() {
    let server = tls_server(&[
        (&fixture_str("server.pem"), &fixture_str("server.key.pem")),
        (&fixture_str("other.pem"), &fixture_str("other.key.pem")),
    ]);
    let h = Harness::with(Setup {
        server,
        ..Setup::default()
    })
    .await;
    let addr = h.gateway.tls.expect("a TLS listener");

    // ALPN h2: HTTP/2 through the same pipeline. The path is normalized, the backend
    // hears HTTP/1.1 with the connection's scheme, and the browser is told to stay on TLS.
    let stream = connect(addr, "localhost", &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(served_certificate(&stream), der("server.pem"));
    let r = h2(stream, get("https://localhost/echo/a/./b/../c?x=1")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/echo/a/c");
    assert_eq!(r.json()["query"], "x=1");
    assert_eq!(r.echoed_header("x-forwarded-proto"), ["https"]);
    assert_eq!(r.echoed_header("x-forwarded-host"), ["localhost"]);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert!(r.header("x-request-id").is_some());

    // The same refusals as HTTP/1.1, as problem+json: a traversal out of the tree, a
    // Host that is not the authority, a header block over the limit.
    let stream = connect(addr, "localhost", &[b"h2"]).await;
    h2(stream, get("https://localhost/echo/%2e%2e/%2fadmin"))
        .await
        .assert_problem(400, "PATH_INVALID");
    let mut other_host = get("https://localhost/echo/a");
    other_host
        .headers_mut()
        .insert("host", "elsewhere.example".parse().unwrap());
    let stream = connect(addr, "localhost", &[b"h2"]).await;
    h2(stream, other_host)
        .await
        .assert_problem(400, "REQUEST_INVALID");
    let mut big = get("https://localhost/echo/a");
    big.headers_mut()
        .insert("x-big", "a".repeat(40 * 1024).parse().unwrap());
    let stream = connect(addr, "localhost", &[b"h2"]).await;
    h2(stream, big)
        .await
        .assert_problem(431, "HEADERS_TOO_LARGE");

    // An upload streams through HTTP/2 byte for byte.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let digest = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&body))
    };
    let upload = http::Request::post("https://localhost/echo/upload")
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let stream = connect(addr, "localhost", &[b"h2"]).await;
    let r = h2(stream, upload).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"]["bytes"], 3_000_000);
    assert_eq!(r.json()["body"]["sha256"], digest);

    // ALPN http/1.1, by the other name: the other certificate, HTTP/1.1.
    let stream = connect(addr, "api.test", &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(served_certificate(&stream), der("other.pem"));
    let mut request = get("/echo/one");
    request
        .headers_mut()
        .insert("host", "api.test".parse().unwrap());
    let r = h1(stream, request).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-forwarded-proto"), ["https"]);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );

    // No ALPN at all, and TLS 1.2 only: HTTP/1.1 over the default certificate.
    let config = client_config(&[], &[&rustls::version::TLS12]);
    let stream = connect_with(addr, "localhost", config).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut request = get("/echo/two");
    request
        .headers_mut()
        .insert("host", "localhost".parse().unwrap());
    assert_eq!(h1(stream, request).await.status, 200);

    // h2c on the plain listener: HTTP/2 with prior knowledge, and HTTP/1.1 beside it,
    // both over http and without HSTS.
    let plain = TcpStream::connect(h.gateway.addr).await.unwrap();
    let r = h2(plain, get("http://gw.test/echo/h2c")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-forwarded-proto"), ["http"]);
    assert!(r.header("strict-transport-security").is_none());
    assert_eq!(h.get("/echo/h1", &[]).await.status, 200);

    // Plain HTTP sent to the TLS port is a failed handshake, counted.
    let _ = raw_attempt(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "tollgate_tls_handshakes_total{result=\"success\",protocol=\"h2\"}"
        ) >= 5,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "tollgate_tls_handshakes_total{result=\"success\",protocol=\"http/1.1\"}"
        ) >= 2,
        "{metrics}"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(
                &h.metrics().await,
                "tollgate_tls_handshakes_total{result=\"failure\",protocol=\"\"}",
            ) >= 1
        })
        .await
    );
}

/// Sends bytes and reads what comes back until the peer closes (bounded).
async fn raw_attempt(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn without_h2c_a_plain_listener_speaks_only_http1() {
    let h = Harness::start().await;
    let plain = TcpStream::connect(h.gateway.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(plain))
            .await
            .unwrap();
    tokio::spawn(conn);
    assert!(sender
        .send_request(get("http://gw.test/echo/a"))
        .await
        .is_err());
    assert_eq!(h.get("/echo/a", &[]).await.status, 200);
}

/// HTTP/2 requests are judged as HTTP/1.1 ones: a host in `:authority` alone is a Host,
/// more than 100 fields are 431 (hyper's HTTP/1.1 bound; the backend hears HTTP/1.1),
/// cookies sent as fields of their own reach the backend joined, trailers the backend
/// sends are not passed on, and an idle connection is closed like a keep-alive one.
#[tokio::test]
async fn http2_requests_are_held_to_the_http1_rules() {
    let trailing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trailing_addr = trailing.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = trailing.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nset-cookie: sess=evil\r\nkeep-alive: timeout=5\r\n\r\n")
                    .await;
            });
        }
    });
    let h = Harness::with(Setup {
        server: "h2c = true\nheader_read_timeout = \"1s\"".into(),
        ..Setup::default()
    })
    .await;
    let h2c = |addr: SocketAddr| async move {
        let plain = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(plain))
                .await
                .unwrap();
        (sender, tokio::spawn(conn))
    };
    let send = |request: http::Request<Full<Bytes>>| async move {
        let (mut sender, _conn) = h2c(h.gateway.addr).await;
        collect(sender.send_request(request).await.unwrap()).await
    };
    for authority in ["a,b", "evil.test:99999"] {
        send(get(&format!("http://{authority}/echo/a")))
            .await
            .assert_problem(400, "REQUEST_INVALID");
    }
    let mut many = get("http://gw.test/echo/a");
    for i in 0..120 {
        many.headers_mut().insert(
            http::header::HeaderName::try_from(format!("x-h{i}")).unwrap(),
            "v".parse().unwrap(),
        );
    }
    send(many).await.assert_problem(431, "HEADERS_TOO_LARGE");
    // A GET's body (DATA frames) would reach the backend as HTTP/1.1 content that
    // handlers of GET do not read.
    let with_body = http::Request::get("http://gw.test/echo/a")
        .body(Full::new(Bytes::from_static(
            b"GET /admin HTTP/1.1\r\n\r\n",
        )))
        .unwrap();
    send(with_body).await.assert_problem(400, "REQUEST_INVALID");
    // An empty DATA frame is no body (HTTP/2 clients send one for `-d ''`), and a
    // HEAD the gateway answers itself carries no DATA (it did: a protocol error).
    let plain = TcpStream::connect(h.gateway.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(plain))
            .await
            .unwrap();
    tokio::spawn(conn);
    let empty = http::Request::get("http://gw.test/echo/a")
        .body(OneEmptyFrame(false))
        .unwrap();
    let r = collect(sender.send_request(empty).await.unwrap()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let head = http::Request::head("http://gw.test/nowhere")
        .body(OneEmptyFrame(true))
        .unwrap();
    let r = collect(sender.send_request(head).await.unwrap()).await;
    assert_eq!((r.status, r.body.len()), (404, 0));
    let mut crumbs = get("http://gw.test/echo/a");
    for i in 0..150 {
        crumbs
            .headers_mut()
            .append("cookie", format!("c{i}=v").parse().unwrap());
    }
    let r = send(crumbs).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let cookie = r.echoed_header("cookie");
    assert_eq!(cookie.len(), 1, "{cookie:?}");
    assert!(cookie[0].starts_with("c0=v; c1=v; c2=v"), "{cookie:?}");

    // Idle: one request, then nothing; closed after header_read_timeout.
    let (mut sender, conn) = h2c(h.gateway.addr).await;
    let r = collect(
        sender
            .send_request(get("http://gw.test/echo/a"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let closed = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(closed.is_ok(), "the idle HTTP/2 connection was not closed");

    // The backend's trailers stay behind.
    let t = Harness::with(Setup {
        server: "h2c = true".into(),
        upstream_addr: Some(trailing_addr),
        ..Setup::default()
    })
    .await;
    let (mut sender, _conn) = h2c(t.gateway.addr).await;
    let response = sender
        .send_request(get("http://gw.test/echo/a"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    assert!(collected.trailers().is_none(), "{:?}", collected.trailers());
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"ok"));
}

/// An HTTP/2 connection carries up to 128 requests at once: a client with twenty
/// connections held 2,560 backend connections while `max_connections` counted twenty.
/// Requests in flight are bounded by `max_connections` too, whatever the version: past
/// it, 503 `GATEWAY_OVERLOADED` before anything reaches the backend; room comes back as
/// answers end.
#[tokio::test]
async fn requests_in_flight_are_bounded_by_max_connections_over_http2_too() {
    let h = Harness::with(Setup {
        server: "h2c = true\nmax_connections = 4".into(),
        ..Setup::default()
    })
    .await;
    let plain = TcpStream::connect(h.gateway.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(plain))
            .await
            .unwrap();
    tokio::spawn(conn);
    let before = h.backend.requests();
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let request = get(&format!("http://gw.test/echo/slow{i}?delay_ms=1500"));
                collect(sender.send_request(request).await.unwrap()).await
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(3), || async {
            h.backend.requests() == before + 4
        })
        .await
    );
    let mut fifth = sender.clone();
    let r = collect(
        fifth
            .send_request(get("http://gw.test/echo/fifth"))
            .await
            .unwrap(),
    )
    .await;
    r.assert_problem(503, "GATEWAY_OVERLOADED");
    assert_eq!(r.header("retry-after"), Some("1"));
    // An HTTP/1.1 request meanwhile is refused alike (its connection was accepted:
    // two are open).
    raw(
        h.gateway.addr,
        b"GET /echo/h1 HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n",
    )
    .await
    .assert_problem(503, "GATEWAY_OVERLOADED");
    assert_eq!(h.backend.requests(), before + 4, "nothing more reached it");
    for answer in slow {
        assert_eq!(answer.await.unwrap().status, 200);
    }
    let mut after = sender.clone();
    let r = collect(
        after
            .send_request(get("http://gw.test/echo/after"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Every answer ended: none counted in flight any more.
    assert!(
        eventually(Duration::from_secs(2), || async {
            h.metrics()
                .await
                .lines()
                .any(|l| l == "tollgate_requests_in_flight 0")
        })
        .await
    );
}

#[tokio::test]
async fn certificates_rotate_under_load_without_a_failed_handshake() {
    // The gateway starts on `server.pem`; the test then rewrites the files in place.
    let h = Harness::with(Setup {
        server: tls_server(&[("tls/live.pem", "tls/live.key.pem")]),
        files: vec![
            (
                "tls/live.pem".into(),
                std::fs::read(fixture("server.pem")).unwrap(),
            ),
            (
                "tls/live.key.pem".into(),
                std::fs::read(fixture("server.key.pem")).unwrap(),
            ),
        ],
        ..Setup::default()
    })
    .await;
    let tls = h.dir.path().join("tls");
    let addr = h.gateway.tls.unwrap();
    let reloads = |m: &str, result: &str| {
        metric(
            m,
            &format!("tollgate_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    let before = h.metrics().await;

    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (failures, done, stop) = (Arc::clone(&failures), Arc::clone(&done), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let config = client_config(&[b"http/1.1"], rustls::DEFAULT_VERSIONS);
            while !stop.load(Ordering::SeqCst) {
                match connect_with(addr, "localhost", Arc::clone(&config)).await {
                    Ok(stream) => {
                        let mut request = get("/echo/load");
                        request
                            .headers_mut()
                            .insert("host", "localhost".parse().unwrap());
                        if h1(stream, request).await.status != 200 {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(_) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A broken certificate file: refused, counted, and the old certificate serves on.
    std::fs::write(
        tls.join("live.pem"),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            reloads(&h.metrics().await, "failure") > reloads(&before, "failure")
        })
        .await
    );
    let stream = connect(addr, "localhost", &[]).await;
    assert_eq!(served_certificate(&stream), der("server.pem"));

    // The rotation, written as a deploy tool does, certificate first, then key: in
    // between the two do not match and that reload is refused; then the new pair serves.
    std::fs::copy(fixture("rotated.pem"), tls.join("live.pem")).unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    std::fs::copy(fixture("rotated.key.pem"), tls.join("live.key.pem")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let stream = connect(addr, "localhost", &[]).await;
            served_certificate(&stream) == der("rotated.pem")
        })
        .await,
        "{}",
        h.gateway.stderr()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        done.load(Ordering::SeqCst) >= 20,
        "load ran: {}",
        done.load(Ordering::SeqCst)
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "handshakes or requests failed during the rotation"
    );
    let after = h.metrics().await;
    assert!(
        reloads(&after, "success") > reloads(&before, "success"),
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            "tollgate_tls_handshakes_total{result=\"failure\",protocol=\"\"}"
        ),
        0,
        "{after}"
    );
}

/// A TLS terminator (the test CA's server certificate) in front of `backend`, which
/// counts the TLS connections it accepted; with `client_certificates`, it accepts only
/// clients presenting a certificate from the test CA.
struct TlsFront {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl TlsFront {
    async fn start(backend: SocketAddr, client_certificates: bool) -> Self {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_certificates {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(der("ca.pem")).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let chain = CertificateDer::pem_file_iter(fixture("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key.pem")).unwrap();
        let config = builder.with_single_cert(chain, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (c, r) = (Arc::clone(&connections), Arc::clone(&refused));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, c, r) = (acceptor.clone(), Arc::clone(&c), Arc::clone(&r));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        r.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let mut inner = TcpStream::connect(backend).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
                });
            }
        });
        TlsFront {
            addr,
            connections,
            refused,
        }
    }
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_and_a_client_certificate() {
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let front = TlsFront::start(backend.addr(), true).await;
    // By address: the certificate names 127.0.0.1 too, and is checked against it.
    let upstream = front.addr.to_string();
    let h = Harness::with(Setup {
        upstream_scheme: "https",
        upstream_addr: Some(front.addr),
        upstream: format!(
            "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            fixture_str("ca.pem"),
            fixture_str("client.pem"),
            fixture_str("client.key.pem")
        ),
        ..Setup::default()
    })
    .await;
    let config = h.dir.path().join("gateway.toml");

    for i in 0..5 {
        let r = h.get(&format!("/echo/tls/{i}"), &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["path"], format!("/echo/tls/{i}"));
        assert_eq!(r.echoed_header("host"), [upstream.as_str()]);
    }
    // Pooled: five requests, one TLS connection per worker at most.
    let connections = front.connections.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&connections),
        "{connections} connections for 5 requests"
    );
    assert_eq!(front.refused.load(Ordering::SeqCst), 0);

    // Without the client certificate the backend refuses the handshake: 502, never a 500.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .lines()
        .filter(|l| !l.starts_with("client_"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, text).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.get("/echo/anon", &[]).await.status == 502
        })
        .await,
        "{}",
        h.gateway.stderr()
    );
    // The terminator counts its side of the failed handshake after the alert it sent or
    // received, which can be after the gateway has already reported its side.
    assert!(
        eventually(Duration::from_secs(5), || async {
            front.refused.load(Ordering::SeqCst) >= 1
        })
        .await
    );
}

/// A PROXY protocol v2 header for a TCP client over IPv4.
fn proxy_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(c), SocketAddr::V4(s)) = (client, server) else {
        panic!("IPv4 only here");
    };
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
    out.extend_from_slice(&c.ip().octets());
    out.extend_from_slice(&s.ip().octets());
    out.extend_from_slice(&c.port().to_be_bytes());
    out.extend_from_slice(&s.port().to_be_bytes());
    out
}

#[tokio::test]
async fn the_proxy_protocol_is_read_only_from_trusted_balancers() {
    let client: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let request = b"GET /echo/pp HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n";

    let trusted = Harness::with(Setup {
        server: "proxy_protocol_from = [\"127.0.0.1/32\"]".into(),
        ..Setup::default()
    })
    .await;
    let mut bytes = proxy_header(client, trusted.gateway.addr);
    bytes.extend_from_slice(request);
    let r = raw(trusted.gateway.addr, &bytes).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-forwarded-for"), ["203.0.113.9"]);
    assert_eq!(r.echoed_header("x-real-ip"), ["203.0.113.9"]);
    // From a trusted balancer the header is required: a bare request is closed unanswered.
    assert!(raw_attempt(trusted.gateway.addr, request).await.is_empty());
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(
                &trusted.metrics().await,
                "tollgate_proxy_protocol_refused_total",
            ) >= 1
        })
        .await
    );

    // From anyone else a header is not read: it is not HTTP, and nobody's address.
    let untrusted = Harness::with(Setup {
        server: "proxy_protocol_from = [\"10.0.0.0/8\"]".into(),
        ..Setup::default()
    })
    .await;
    let mut bytes = proxy_header(client, untrusted.gateway.addr);
    bytes.extend_from_slice(request);
    let answer = raw_attempt(untrusted.gateway.addr, &bytes).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(!String::from_utf8_lossy(&answer).contains("203.0.113.9"));
    let r = raw(untrusted.gateway.addr, request).await;
    assert_eq!(r.echoed_header("x-forwarded-for"), ["127.0.0.1"]);
}

/// Spans go to an https collector whose certificate comes from a private CA named by
/// `[tracing] ca_file`; without it the handshake fails, and that is counted, never
/// passed off as an export.
#[tokio::test]
async fn spans_reach_an_https_collector_behind_a_private_ca() {
    let collector = tollgate_proxy::rehearsal::StandIn::start().await.unwrap();
    let front = TlsFront::start(collector.addr, false).await;
    let tracing = format!(
        "[tracing]\notlp_url = \"https://{}/v1/traces\"\nca_file = \"{}\"\n",
        front.addr,
        fixture_str("ca.pem")
    );
    let h = Harness::with(Setup {
        extra: tracing.clone(),
        ..Setup::default()
    })
    .await;
    let sampled = [(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )];
    assert_eq!(h.get("/echo/over-tls", &sampled).await.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let received = loop {
        if let Some(r) = collector.take() {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no spans within 10 s: {}",
            h.gateway.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(received.target, "/v1/traces");
    let doc: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
    let span = &doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(front.connections.load(Ordering::SeqCst) >= 1);

    // Without the private CA the collector's certificate is not trusted: the handshake
    // is refused and the batch counted as failed.
    let config = h.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let without = text
        .lines()
        .filter(|l| !l.starts_with("ca_file"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, without).unwrap();
    h.gateway.signal("HUP");
    let failed = || async {
        h.get("/echo/over-tls", &sampled).await;
        let metrics = h.metrics().await;
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_otlp_export_failures_total ") && !l.ends_with(" 0"))
    };
    assert!(
        eventually(Duration::from_secs(10), failed).await,
        "{}",
        h.metrics().await
    );
    // The terminator counts its side of the failed handshake after the alert it sent or
    // received, which can be after the gateway has already reported its side.
    assert!(
        eventually(Duration::from_secs(5), || async {
            front.refused.load(Ordering::SeqCst) >= 1
        })
        .await
    );
}
