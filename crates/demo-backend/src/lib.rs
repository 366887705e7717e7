//! A stand-in for the legacy API that Tollgate fronts: same shapes, same quirks.
//!
//! - `POST /interlogue/get-client` — the legacy login: a bare JSON array with the
//!   client record for valid credentials, an empty array otherwise.
//! - `POST /upload-csv` — wants `x-api-key`; answers 401 `{"error":"API key missing"}`
//!   without it; streams the upload (never buffers it) and reports its size and SHA-256.
//! - campaign and provider endpoints (`/campaigns`, `/plivo/calls`, `/exotel/calls`),
//!   which want `x-api-key` too, and provider callbacks (`/callbacks/plivo/answer`,
//!   `/callbacks/exotel/status`).
//! - `/echo/*` — reports exactly what arrived: method, path, query, every header in
//!   order, and the body's length and SHA-256. `?delay_ms=N` waits before answering,
//!   `?status=N` answers with that status, and `?tokens_used=N` reports what a bulk
//!   operation cost in `X-Tokens-Used` (a route can settle its token cost at that).
//!   Unknown paths answer 404 with the same report, so tests can see what was forwarded.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A demo client: the legacy credentials, its id and its legacy API key.
pub struct DemoClient {
    pub client_id: &'static str,
    pub name: &'static str,
    pub username: &'static str,
    pub password: &'static str,
    pub api_key: &'static str,
    /// The token credits the legacy record shows (the gateway's opening balance).
    pub tokens: u64,
}

/// The clients the demo backend knows. Development values, published on purpose.
pub const CLIENTS: &[DemoClient] = &[
    DemoClient {
        client_id: "1001",
        name: "Acme Telecom",
        username: "demo@acme.test",
        password: "demo-password",
        api_key: "demo-legacy-key-1001",
        tokens: 500,
    },
    DemoClient {
        client_id: "1002",
        name: "Globex Calls",
        username: "ops@globex.test",
        password: "globex-password",
        api_key: "demo-legacy-key-1002",
        tokens: 250,
    },
];

/// A running demo backend.
pub struct DemoBackend {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// What the backend has seen, for tests.
#[derive(Default)]
pub struct Counters {
    requests: AtomicU64,
    /// Request bodies that broke off before their end (the sender went away).
    broken_bodies: AtomicU64,
}

impl DemoBackend {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests have arrived so far (to show that a refused one never did).
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// How many request bodies broke off before their end.
    pub fn broken_bodies(&self) -> u64 {
        self.counters.broken_bodies.load(Ordering::SeqCst)
    }
}

impl Drop for DemoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves in the background until the returned handle is dropped.
pub async fn spawn(addr: SocketAddr) -> io::Result<DemoBackend> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let task = tokio::spawn(serve(listener, Arc::clone(&counters)));
    Ok(DemoBackend {
        addr,
        counters,
        task,
    })
}

/// Serves on `listener` forever, counting into `counters`.
pub async fn serve(listener: TcpListener, counters: Arc<Counters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let service = service_fn(|request| {
                counters.requests.fetch_add(1, Ordering::SeqCst);
                let counters = Arc::clone(&counters);
                async move { Ok::<_, Infallible>(handle(request, &counters).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(request: Request<Incoming>, counters: &Counters) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (method, path.as_str()) {
        (Method::POST, "/interlogue/get-client") => login(request).await,
        (Method::POST, "/upload-csv") => upload_csv(request, counters).await,
        (Method::POST, "/campaigns") => {
            let ok = request_has_key(request.headers());
            let body = read_json(request).await;
            match ok {
                Some(client) => json_response(
                    StatusCode::CREATED,
                    json!({"id": 3, "clientId": client, "created": body}),
                ),
                None => missing_key(),
            }
        }
        (_, p) if p == "/echo" || p.starts_with("/echo/") => {
            echo(request, StatusCode::OK, counters).await
        }
        _ => answer_read(request, counters).await,
    }
}

/// The routes that answer from the head alone. The body is read (and let go) first, as
/// a real backend's framework reads it: one that answered an upload before reading it
/// and closed would make its kernel reset the connection, and the reset can destroy
/// the answer on its way (the gateway then sees no answer, and refunds).
async fn answer_read(request: Request<Incoming>, counters: &Counters) -> Response<Full<Bytes>> {
    let (parts, mut body) = request.into_parts();
    let unknown = !matches!(
        (&parts.method, parts.uri.path()),
        (&Method::GET, "/campaigns")
            | (&Method::POST, "/plivo/calls")
            | (&Method::POST, "/exotel/calls")
            | (&Method::POST, "/callbacks/plivo/answer")
            | (&Method::POST, "/callbacks/exotel/status")
    );
    if unknown {
        return echo(
            Request::from_parts(parts, body),
            StatusCode::NOT_FOUND,
            counters,
        )
        .await;
    }
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let request = Request::from_parts(parts, ());
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/campaigns") => with_key(&request, |client| {
            json_response(
                StatusCode::OK,
                json!([
                    {"id": 1, "clientId": client, "name": "Spring outreach", "provider": "plivo", "status": "running"},
                    {"id": 2, "clientId": client, "name": "Renewals", "provider": "exotel", "status": "paused"}
                ]),
            )
        }),
        (Method::POST, "/plivo/calls") => with_key(&request, |client| {
            json_response(
                StatusCode::OK,
                json!({"provider": "plivo", "clientId": client, "requestUuid": "3e82ae9d-2c78-4d85-b1a4-6eae7dbafb36", "message": "call fired"}),
            )
        }),
        (Method::POST, "/exotel/calls") => with_key(&request, |client| {
            json_response(
                StatusCode::OK,
                json!({"provider": "exotel", "clientId": client, "Call": {"Sid": "b6cfaf0d1c1e4e5f", "Status": "queued"}}),
            )
        }),
        (Method::POST, "/callbacks/plivo/answer") => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Speak>Hello from the demo backend</Speak></Response>",
            )));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
            response
        }
        (Method::POST, "/callbacks/exotel/status") => {
            json_response(StatusCode::OK, json!({"ok": true}))
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

fn json_response(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn missing_key() -> Response<Full<Bytes>> {
    json_response(
        StatusCode::UNAUTHORIZED,
        json!({"error": "API key missing"}),
    )
}

/// The client id of a valid `x-api-key`, as the legacy API checks it.
fn request_has_key(headers: &HeaderMap) -> Option<&'static str> {
    let key = headers.get("x-api-key")?.to_str().ok()?;
    CLIENTS
        .iter()
        .find(|c| c.api_key == key)
        .map(|c| c.client_id)
}

fn with_key<B>(
    request: &Request<B>,
    ok: impl FnOnce(&str) -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    match request.headers().get("x-api-key") {
        None => missing_key(),
        Some(_) => match request_has_key(request.headers()) {
            Some(client) => ok(client),
            None => json_response(
                StatusCode::UNAUTHORIZED,
                json!({"error": "Invalid API key"}),
            ),
        },
    }
}

async fn read_json(request: Request<Incoming>) -> Value {
    match request.into_body().collect().await {
        Ok(body) => serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Accepts JSON or form credentials (`username` or `email`, and `password`).
async fn login(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let is_form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (user, password) = if is_form {
        let mut user = String::new();
        let mut password = String::new();
        for pair in String::from_utf8_lossy(&body).split('&') {
            match pair.split_once('=') {
                Some(("username" | "email", v)) => user = v.replace("%40", "@"),
                Some(("password", v)) => password = v.to_owned(),
                _ => {}
            }
        }
        (user, password)
    } else {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let user = v
            .get("username")
            .or_else(|| v.get("email"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let password = v.get("password").and_then(Value::as_str).unwrap_or("");
        (user.to_owned(), password.to_owned())
    };
    let records: Vec<Value> = CLIENTS
        .iter()
        .filter(|c| c.username == user && c.password == password)
        .map(|c| {
            json!({
                "clientId": c.client_id,
                "name": c.name,
                "email": c.username,
                "apiKey": c.api_key,
                "tokens": c.tokens,
                "providers": ["plivo", "exotel"]
            })
        })
        .collect();
    json_response(StatusCode::OK, Value::Array(records))
}

/// Streams the upload through a hasher: memory stays flat whatever the size.
async fn upload_csv(request: Request<Incoming>, counters: &Counters) -> Response<Full<Bytes>> {
    let client = match request.headers().get("x-api-key") {
        None => return missing_key(),
        Some(_) => match request_has_key(request.headers()) {
            Some(c) => c,
            None => {
                return json_response(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "Invalid API key"}),
                )
            }
        },
    };
    let query_client = query_param(request.uri().query(), "clientId");
    let content_type = header_text(request.headers(), CONTENT_TYPE.as_str());
    match digest(request.into_body()).await {
        Ok((bytes, sha256)) => json_response(
            StatusCode::OK,
            json!({"ok": true, "clientId": client, "queryClientId": query_client, "contentType": content_type, "bytes": bytes, "sha256": sha256}),
        ),
        Err(e) => {
            counters.broken_bodies.fetch_add(1, Ordering::SeqCst);
            json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("upload failed: {e}")}),
            )
        }
    }
}

async fn echo(
    request: Request<Incoming>,
    status: StatusCode,
    counters: &Counters,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    if let Some(ms) = query_param(parts.uri.query(), "delay_ms").and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    let mut start = Vec::new();
    let (bytes, sha256) = match digest_keeping(body, &mut start).await {
        Ok(d) => d,
        Err(e) => {
            counters.broken_bodies.fetch_add(1, Ordering::SeqCst);
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("body failed: {e}")}),
            );
        }
    };
    // Small bodies are echoed whole (as text, when they are UTF-8), so tests can compare
    // the exact bytes the backend received.
    let text = (bytes <= ECHOED_TEXT_BYTES as u64)
        .then(|| String::from_utf8(start).ok())
        .flatten();
    let mut report = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": {"bytes": bytes, "sha256": sha256, "text": text},
    });
    if status == StatusCode::NOT_FOUND {
        report["error"] = json!("Not found");
    }
    let status = query_param(parts.uri.query(), "status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok())
        .unwrap_or(status);
    let mut response = json_response(status, report);
    if let Some(used) =
        query_param(parts.uri.query(), "tokens_used").and_then(|v| v.parse::<u64>().ok())
    {
        response
            .headers_mut()
            .insert("x-tokens-used", HeaderValue::from(used));
    }
    response
}

/// Bodies up to this size are echoed back as text.
const ECHOED_TEXT_BYTES: usize = 64 * 1024;

async fn digest(body: Incoming) -> Result<(u64, String), hyper::Error> {
    digest_keeping(body, &mut Vec::new()).await
}

/// The body's length and SHA-256; its first bytes are kept in `start`.
async fn digest_keeping(
    mut body: Incoming,
    start: &mut Vec<u8>,
) -> Result<(u64, String), hyper::Error> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            bytes += data.len() as u64;
            hasher.update(data);
            let room = (ECHOED_TEXT_BYTES + 1).saturating_sub(start.len());
            start.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok((bytes, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
