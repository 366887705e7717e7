//! Remote key sets: fetched, rotated, refetched on an unknown kid at most once per
//! `min_refetch`, and the last good set kept when the endpoint fails.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::support::{eventually, Harness, Setup};

/// A key-set endpoint whose answer the test changes.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    fetches: Arc<AtomicU64>,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        Self::start_with(body, None).await
    }

    /// Serves https with the test CA's server certificate.
    async fn start_tls(body: String) -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls");
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> =
            rustls::pki_types::CertificateDer::pem_file_iter(dir.join("server.pem"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        Self::start_with(
            body,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start_with(body: String, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new((200, body)));
        let fetches = Arc::new(AtomicU64::new(0));
        let (a, f) = (Arc::clone(&answer), Arc::clone(&fetches));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (a, f) = (Arc::clone(&a), Arc::clone(&f));
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = a.lock().unwrap().clone();
                        async move {
                            let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        JwksServer {
            addr,
            answer,
            fetches,
        }
    }

    fn serve(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn rotation() -> serde_json::Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/jwt/jwks.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn key_rotation_through_a_jwks_endpoint() {
    let fixture = rotation();
    let server = JwksServer::start(fixture["set_a"].to_string()).await;
    let setup = Setup {
        policies: vec![(
            "10.toml".into(),
            "[[route]]\nname = \"echo\"\npath = \"/echo/*\"\nauth = \"jwt\"\n".into(),
        )],
        extra: format!(
            "[jwt]\nissuer = \"https://issuer.test\"\naudience = \"legacy-api\"\n\n[[jwt.jwks]]\nurl = \"http://{}/jwks.json\"\nrefresh = \"1h\"\nmin_refetch = \"1s\"\n",
            server.addr
        ),
        ..Setup::default()
    };
    let h = Harness::with(setup).await;
    let auth = |name: &str| format!("Bearer {}", fixture[name].as_str().unwrap());

    // The set is fetched at start; a token signed with its key is accepted.
    assert!(eventually(Duration::from_secs(5), || async { server.fetches() >= 1 }).await);
    let r = h
        .get("/echo/a", &[("authorization", &auth("token_a"))])
        .await;
    assert_eq!(
        r.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&r.body),
        h.gateway.stderr()
    );

    // The issuer rotates: the new kid is unknown, so the set is fetched again at once.
    server.serve(200, fixture["set_b"].to_string());
    let before = server.fetches();
    let r = h
        .get("/echo/b", &[("authorization", &auth("token_b"))])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(server.fetches(), before + 1);

    // A flood of unknown kids refetches at most once per min_refetch.
    let before = server.fetches();
    for _ in 0..10 {
        let r = h
            .get("/echo/c", &[("authorization", &auth("token_unknown"))])
            .await;
        r.assert_problem(401, "TOKEN_INVALID");
    }
    assert!(
        server.fetches() - before <= 1,
        "{} fetches for 10 unknown kids",
        server.fetches() - before
    );

    // The old key is gone from the set: its tokens are refused now.
    let r = h
        .get("/echo/a", &[("authorization", &auth("token_a"))])
        .await;
    r.assert_problem(401, "TOKEN_INVALID");

    // The endpoint breaks: the last good set keeps serving.
    server.serve(500, "oops".into());
    tokio::time::sleep(Duration::from_millis(1050)).await; // past min_refetch, so a refetch is tried
    let before = server.fetches();
    let r = h
        .get("/echo/c", &[("authorization", &auth("token_unknown"))])
        .await;
    r.assert_problem(401, "TOKEN_INVALID");
    assert_eq!(
        server.fetches(),
        before + 1,
        "the failing endpoint was asked"
    );
    let r = h
        .get("/echo/b", &[("authorization", &auth("token_b"))])
        .await;
    assert_eq!(r.status, 200, "the last good set must keep serving");
    assert!(
        h.gateway
            .wait_for_log("keeping the last good set", Duration::from_secs(5))
            .await
    );
}

#[tokio::test]
async fn an_https_key_set_is_verified_against_its_ca() {
    let fixture = rotation();
    let server = JwksServer::start_tls(fixture["set_a"].to_string()).await;
    let ca =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls/ca.pem");
    let gateway = |ca_line: String| {
        Setup {
        policies: vec![(
            "10.toml".into(),
            "[[route]]\nname = \"echo\"\npath = \"/echo/*\"\nauth = \"jwt\"\n".into(),
        )],
        extra: format!(
            "[jwt]\nissuer = \"https://issuer.test\"\naudience = \"legacy-api\"\n\n[[jwt.jwks]]\nurl = \"https://127.0.0.1:{}/jwks.json\"\nrefresh = \"1h\"\nmin_refetch = \"1h\"\n{ca_line}\n",
            server.addr.port()
        ),
        ..Setup::default()
    }
    };
    let token = format!("Bearer {}", fixture["token_a"].as_str().unwrap());

    // Trusting the test CA: the set is fetched over TLS and the token verifies.
    let trusted = Harness::with(gateway(format!("ca_file = \"{}\"", ca.display()))).await;
    let ok = eventually(Duration::from_secs(5), || async {
        trusted
            .get("/echo/a", &[("authorization", &token)])
            .await
            .status
            == 200
    })
    .await;
    assert!(
        ok,
        "the https key set was not used:\n{}",
        trusted.gateway.stderr()
    );

    // With the public web roots the test CA is unknown: no keys, so no entry.
    let untrusted = Harness::with(gateway(String::new())).await;
    assert!(
        untrusted
            .gateway
            .wait_for_log("key set fetch failed", Duration::from_secs(5))
            .await
    );
    let r = untrusted.get("/echo/a", &[("authorization", &token)]).await;
    r.assert_problem(401, "TOKEN_INVALID");
}
