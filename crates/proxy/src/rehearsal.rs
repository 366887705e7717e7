//! The gateway played in this process, for `tollgate test` and `tollgate explain`: the
//! real listener code and pipeline serve one request written as raw bytes, over an
//! in-process stream, in front of a stand-in backend that records what it receives.
//! Nothing here decides an outcome, so a case or an explanation cannot disagree with
//! the running gateway: hyper parses the same bytes, the same stages answer.
//!
//! What differs from `tollgate run`, and why:
//! - state starts empty in a private directory: no `[store]` Redis, a fresh ledger
//!   with the opening balances credited, fresh rate-limit counts. A test must never
//!   spend a real client's tokens or allowance;
//! - nothing leaves the process: no spans are exported, and remote key sets are not
//!   fetched: tokens are signed with the configuration's signing key, or, without one,
//!   with a key of the rehearsal's own that is added to the keys it trusts. Every rule
//!   a token is checked by (issuer, audience, lifetime, claims) stays the configured
//!   one;
//! - the backend is a stand-in on a loopback port, so the `Host` it sees is that
//!   address; the upstream's base path is kept;
//! - a request arrives over plain HTTP/1.1 from its case's peer: what depends on TLS
//!   (`Strict-Transport-Security`, `X-Forwarded-Proto: https`) or on HTTP/2 is not
//!   played.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tollgate_auth::mint::SigningKey;
use tollgate_auth::{Algorithm, VerifyKey};
use tollgate_policy::cases::{BackendAnswer, Case, Observed, Received};
use tollgate_policy::snapshot::{LogFormat, Store};
use tollgate_policy::Snapshot;

use crate::access_log::AccessSink;
use crate::runtime::Runtime;

/// How long one request may take, start to end, before the rehearsal gives up on it.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// The largest body the stand-in backend keeps to compare.
const BACKEND_BODY_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum RehearsalError {
    #[error("cannot set up the rehearsal: {0}")]
    Setup(#[from] io::Error),
    #[error("the ledger did not open within 10 s (is [credits] opening_balances readable?)")]
    LedgerNotReady,
    #[error("the gateway did not answer within {}s", REQUEST_DEADLINE.as_secs())]
    NoAnswer,
    #[error("the gateway's answer is not HTTP/1.1")]
    BadAnswer,
    #[error("the case sends a token, but gateway.toml has no [jwt]")]
    NoJwt,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// One gateway in this process, with its private state and stand-in backend.
pub struct Rehearsal {
    runtime: Arc<Runtime>,
    backend: StandIn,
    log_lines: Arc<Mutex<Vec<String>>>,
    /// Last, so it is removed after the runtime that has files in it.
    _dir: PrivateDir,
}

impl Rehearsal {
    /// A gateway for a copy of `snapshot`, changed as the module doc says; ready once
    /// its ledger is open.
    pub async fn start(mut snapshot: Snapshot) -> Result<Rehearsal, RehearsalError> {
        let dir = PrivateDir::new()?;
        let backend = StandIn::start().await?;
        snapshot.upstream.authority = backend
            .addr
            .to_string()
            .parse()
            .map_err(|_| io::Error::other("stand-in address"))?;
        snapshot.upstream.tls = None;
        snapshot.store = Store {
            redis: None,
            path: dir.0.join("store.redb"),
        };
        if let Some(credits) = &mut snapshot.credits {
            credits.path = dir.0.join("ledger.redb");
        }
        // No spans leave a rehearsal.
        snapshot.tracing.export = None;
        snapshot.log.access_log = true;
        snapshot.log.format = LogFormat::Json;
        snapshot.server.workers = 1;
        if let Some(jwt) = &mut snapshot.auth.jwt {
            jwt.jwks.clear();
            if jwt.signing.is_none() {
                let secret = tollgate_auth::random::token(48)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let kid = Some("tollgate-rehearsal".to_owned());
                let verify =
                    VerifyKey::from_secret(kid.clone(), Algorithm::HS256, secret.as_bytes())
                        .map_err(|e| io::Error::other(e.to_string()))?;
                jwt.keys.push(Arc::new(verify));
                jwt.signing = Some(Arc::new(SigningKey::from_secret(
                    kid,
                    Algorithm::HS256,
                    secret.as_bytes(),
                )));
            }
        }
        let log_lines = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log_lines);
        let sink: AccessSink = Arc::new(move |line: String| {
            if let Ok(mut lines) = lines.lock() {
                lines.push(line);
            }
        });
        let runtime = Runtime::new(snapshot, 1, sink);
        let ready = async {
            while !runtime.active().credits.ready() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .map_err(|_| RehearsalError::LedgerNotReady)?;
        Ok(Rehearsal {
            runtime,
            backend,
            log_lines,
            _dir: dir,
        })
    }

    /// The snapshot being played (with the rehearsal's changes).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.runtime.active().snapshot)
    }

    /// Plays `case`: its token signed, its bytes sent from its peer address, the
    /// stand-in answering as it says.
    pub async fn play(&self, case: &Case) -> Result<Observed, RehearsalError> {
        let token = match &case.token {
            Some(claims) => Some(self.sign(claims)?),
            None => None,
        };
        self.send(
            &case.raw_request(token.as_deref()),
            case.peer,
            &case.backend,
        )
        .await
    }

    /// A bearer token with `claims`: see [`sign`].
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, RehearsalError> {
        sign(&self.runtime.active().snapshot, claims)
    }

    /// Sends `raw` (one request, as a client writes it) on a fresh connection from
    /// `peer`; the stand-in answers a forwarded request with `answer`.
    pub async fn send(
        &self,
        raw: &[u8],
        peer: IpAddr,
        answer: &BackendAnswer,
    ) -> Result<Observed, RehearsalError> {
        self.backend.prepare(answer);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let runtime = Arc::clone(&self.runtime);
        let peer = SocketAddr::new(peer, 40_000);
        let serving =
            tokio::spawn(async move { crate::server::serve_stream(server, peer, &runtime).await });
        let (mut reader, mut writer) = tokio::io::split(client);
        let raw = raw.to_vec();
        let (read, done) = tokio::sync::oneshot::channel::<()>();
        // Written beside the read: a gateway that answers before taking the whole body
        // (413, 401) must not leave the writer waiting. Kept open until the answer is
        // read: a half-close could read as a client that left.
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&raw).await;
            let _ = writer.flush().await;
            let _ = done.await;
        });
        let mut bytes = Vec::new();
        let answered = tokio::time::timeout(REQUEST_DEADLINE, reader.read_to_end(&mut bytes)).await;
        let _ = read.send(());
        // Nothing of this request outlives it (a gateway that never answered included).
        serving.abort();
        writing.abort();
        answered
            .map_err(|_| RehearsalError::NoAnswer)?
            .map_err(RehearsalError::Setup)?;
        let mut observed = Observed::from_response(&bytes).ok_or(RehearsalError::BadAnswer)?;
        if let Some(id) = observed.header(crate::request_id::HEADER) {
            observed.route = self.route_of(id).await;
        }
        observed.upstream = self.backend.take();
        Ok(observed)
    }

    /// The route the access log names for request `id` (written when the response
    /// body ends, so a moment after the last byte).
    async fn route_of(&self, id: &str) -> Option<String> {
        for _ in 0..200 {
            let found = self.log_lines.lock().ok().and_then(|lines| {
                lines.iter().find_map(|line| {
                    let json: Value = serde_json::from_str(line).ok()?;
                    (json.get("request_id")?.as_str()? == id)
                        .then(|| json.get("route")?.as_str().map(str::to_owned))?
                })
            });
            if let Some(route) = found {
                return (route != "-").then_some(route);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bearer token `snapshot`'s gateway accepts, with `claims` over the defaults a login
/// would give (issuer, audience, `sub` from the client id, `iat`, `exp` one access
/// lifetime away, `jti`): a claim given wins, `exp = 0` included. Signed with the
/// configuration's signing key (the end-to-end suite signs its replayed cases here too).
pub fn sign(snapshot: &Snapshot, claims: &Map<String, Value>) -> Result<String, RehearsalError> {
    let jwt = snapshot.auth.jwt.as_ref().ok_or(RehearsalError::NoJwt)?;
    let key = jwt.signing.as_ref().ok_or(RehearsalError::NoJwt)?;
    let now = crate::credits::now_ms() / 1000;
    let rules = &jwt.rules;
    let mut all = Map::new();
    for (name, value) in [("iss", &rules.issuer), ("aud", &rules.audience)] {
        if let Some(value) = value {
            all.insert(name.into(), Value::from(value.as_str()));
        }
    }
    let subject = match claims.get(&rules.client_id_claim) {
        Some(Value::String(id)) => id.clone(),
        Some(other) => other.to_string(),
        None => "tollgate-test".to_owned(),
    };
    all.insert("sub".into(), Value::from(subject));
    all.insert("iat".into(), Value::from(now));
    all.insert("exp".into(), Value::from(now + jwt.access_ttl.as_secs()));
    let jti = tollgate_auth::random::token(12).map_err(|e| RehearsalError::Sign(e.to_string()))?;
    all.insert("jti".into(), Value::from(jti));
    for (name, value) in claims {
        all.insert(name.clone(), value.clone());
    }
    tollgate_auth::mint::mint_claims(&all, key).map_err(|e| RehearsalError::Sign(e.to_string()))
}

/// A directory of the rehearsal's own, removed with it.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> io::Result<Self> {
        let unique = format!(
            "tollgate-rehearsal-{}-{}",
            std::process::id(),
            crate::request_id::generate()
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path)?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The stand-in backend: answers what it is told to and keeps what it received (the
/// end-to-end suite puts it behind a real gateway to replay the shipped cases).
pub struct StandIn {
    pub addr: SocketAddr,
    answer: Arc<Mutex<BackendAnswer>>,
    received: Arc<Mutex<Option<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StandIn {
    pub async fn start() -> io::Result<StandIn> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let answer = Arc::new(Mutex::new(BackendAnswer::default()));
        let received = Arc::new(Mutex::new(None));
        let (a, r) = (Arc::clone(&answer), Arc::clone(&received));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, received) = (Arc::clone(&a), Arc::clone(&r));
                let service = service_fn(move |request: Request<Incoming>| {
                    let (answer, received) = (Arc::clone(&answer), Arc::clone(&received));
                    async move { Ok::<_, hyper::Error>(record(request, &answer, &received).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Ok(StandIn {
            addr,
            answer,
            received,
            task,
        })
    }

    /// Answer the next request with `answer`, and forget what came before.
    pub fn prepare(&self, answer: &BackendAnswer) {
        if let Ok(mut slot) = self.answer.lock() {
            *slot = answer.clone();
        }
        self.take();
    }

    /// What the last request was, if one came.
    pub fn take(&self) -> Option<Received> {
        self.received.lock().ok().and_then(|mut r| r.take())
    }
}

async fn record(
    request: Request<Incoming>,
    answer: &Mutex<BackendAnswer>,
    received: &Mutex<Option<Received>>,
) -> Response<Full<Bytes>> {
    let (head, body) = request.into_parts();
    let body = Limited::new(body, BACKEND_BODY_LIMIT)
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let headers = head
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Ok(mut slot) = received.lock() {
        *slot = Some(Received {
            method: head.method.to_string(),
            target: head
                .uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.to_string()),
            headers,
            body,
        });
    }
    let answer = answer.lock().map(|a| a.clone()).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() =
        http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::OK);
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
