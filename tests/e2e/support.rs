//! The test harness: a temporary configuration, the demo backend in-process, the real
//! `tollgate` binary as a child process on 127.0.0.1:0, and a raw HTTP/1.1 client.
//!
//! Readiness is the gateway's own "listening on" line, never a sleep.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_demo_backend::DemoBackend;

pub use tollgate_testkit::{
    bearer_for, bearer_with, jwt_config, jwt_fixtures, tls_fixture, RedisCluster, RedisServer,
    TempDir,
};

/// The policies most tests run against.
pub const POLICIES: &[(&str, &str)] = &[
    (
        "10-closed.toml",
        r#"
[[route]]
name = "admin-closed"
path = "/admin/*"
action = "deny"
"#,
    ),
    (
        "20-api.toml",
        r#"
[[route]]
name = "upload-csv"
methods = ["POST"]
path = "/upload-csv"
auth = "none"

[[route]]
name = "campaign"
methods = ["GET", "PUT"]
path = "/campaigns/{id}"
auth = "none"

[[route]]
name = "public"
methods = ["GET", "HEAD"]
path = "/pub/*"
auth = "none"

[[route]]
name = "echo"
path = "/echo/*"
auth = "none"
"#,
    ),
];

/// How to configure one gateway under test.
pub struct Setup {
    pub policies: Vec<(String, String)>,
    /// Extra keys for `[server]`.
    pub server: String,
    /// Extra keys for `[upstream]`.
    pub upstream: String,
    pub unmatched: &'static str,
    /// Extra keys for `[routing]`.
    pub routing: String,
    pub reload: String,
    /// Extra keys for `[admin]`.
    pub admin: String,
    /// More of `gateway.toml`: `[jwt]`, `[api_keys]`, `[credentials.*]`, `[webhooks.*]`.
    pub extra: String,
    /// Upstream address; the demo backend's when `None`.
    pub upstream_addr: Option<SocketAddr>,
    /// `http` or `https`.
    pub upstream_scheme: &'static str,
    /// More files, by path relative to `gateway.toml` (certificates, keys).
    pub files: Vec<(String, Vec<u8>)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            policies: POLICIES
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
            server: String::new(),
            upstream: String::new(),
            unmatched: "deny",
            routing: String::new(),
            reload: "watch = true\npoll_interval = \"100ms\"".into(),
            admin: String::new(),
            extra: String::new(),
            upstream_addr: None,
            upstream_scheme: "http",
            files: Vec::new(),
        }
    }
}

/// A running demo backend plus a running gateway in front of it.
pub struct Harness {
    pub backend: DemoBackend,
    pub gateway: GatewayProcess,
    pub dir: TempDir,
}

impl Harness {
    pub async fn start() -> Self {
        Self::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Self {
        let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let dir = TempDir::new();
        let upstream = setup.upstream_addr.unwrap_or(backend.addr());
        write_config(dir.path(), &setup, upstream);
        let gateway = GatewayProcess::start(&dir.path().join("gateway.toml"));
        Harness {
            backend,
            gateway,
            dir,
        }
    }

    pub fn policy_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("policies").join(name)
    }

    /// Sends raw bytes to the gateway and reads one response.
    pub async fn raw(&self, request: &[u8]) -> RawResponse {
        raw(self.gateway.addr, request).await
    }

    /// A simple request with `Connection: close`.
    pub async fn get(&self, target: &str, headers: &[(&str, &str)]) -> RawResponse {
        self.send("GET", target, headers, b"").await
    }

    pub async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        let mut request =
            format!("{method} {target} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            request.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes).await
    }

    pub async fn metrics(&self) -> String {
        let request = b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n";
        let response = raw(self.gateway.admin, request).await;
        String::from_utf8(response.body).unwrap()
    }
}

pub fn write_config(dir: &Path, setup: &Setup, upstream: SocketAddr) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for (name, text) in &setup.policies {
        std::fs::write(policies.join(name), text).unwrap();
    }
    for (name, bytes) in &setup.files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let config = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
{server}

[upstream]
url = "{scheme}://{upstream}"
{upstream_extra}

[routing]
policies = "policies"
unmatched = "{unmatched}"
{routing}

[admin]
listen = "127.0.0.1:0"
{admin}

[log]
level = "info"
format = "json"

[reload]
{reload}

{extra}
"#,
        server = setup.server,
        scheme = setup.upstream_scheme,
        upstream_extra = setup.upstream,
        unmatched = setup.unmatched,
        routing = setup.routing,
        reload = setup.reload,
        admin = setup.admin,
        extra = setup.extra,
    );
    std::fs::write(dir.join("gateway.toml"), config).unwrap();
}

/// The `tollgate run` child process.
pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The first `[server.tls]` listener, if any.
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["run", "--config"])
            .arg(config)
            // The gateway logs at its own default level; TG_RUST_LOG=debug
            // (set when running the tests) turns its debug log on to chase a failure.
            .env_remove("RUST_LOG")
            .envs(std::env::var("TG_RUST_LOG").map(|v| ("RUST_LOG", v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_lines = Arc::clone(&stderr);
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                err_lines.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        let mut admin = None;
        let mut tls = None;
        // The listeners are announced before the admin listener.
        while addr.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    panic!(
                        "gateway did not start; stderr: {:?}",
                        stderr.lock().unwrap()
                    )
                });
            if let Some(a) = line.strip_prefix("tollgate listening on http://") {
                addr = Some(a.parse().unwrap());
            }
            if let Some(a) = line.strip_prefix("tollgate listening on https://") {
                tls = tls.or(Some(a.parse().unwrap()));
            }
            if let Some(a) = line.strip_prefix("tollgate admin on http://") {
                admin = Some(a.parse().unwrap());
            }
        }
        GatewayProcess {
            child,
            addr: addr.unwrap(),
            tls,
            admin: admin.unwrap(),
            stderr,
        }
    }

    /// The access-log line of request `id` (with `[log] format = "json"`), once written
    /// (within 5 s).
    pub fn access_line(&self, id: &str) -> Option<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let found = self.stderr.lock().unwrap().iter().find_map(|line| {
                let json: serde_json::Value = serde_json::from_str(line).ok()?;
                (json["request_id"] == id).then_some(json)
            });
            if found.is_some() {
                return found;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// The admin listener's `/readyz` status.
    pub async fn readyz(&self) -> u16 {
        let request = b"GET /readyz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n";
        raw(self.admin, request).await.status
    }

    /// Waits (bounded) until `/readyz` says the gateway takes traffic, as a load
    /// balancer would.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.readyz().await != 200 {
            assert!(Instant::now() < deadline, "never ready: {}", self.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits (bounded) until the log holds a line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The demo backend's report of the header it received, if any.
    pub fn echoed_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|h| h[1].as_str().unwrap().to_owned())
            .collect()
    }

    /// Asserts this is the gateway's own problem+json with `code`.
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["code"], code);
        assert_eq!(body["status"], status);
        assert_eq!(
            body["requestId"].as_str(),
            self.header("x-request-id"),
            "problem requestId must equal the X-Request-Id header"
        );
    }
}

/// Writes `request`, then reads one response (the request should say `Connection: close`
/// or the response carry a length).
/// Reads one response from a connection that carries no pipelined responses after it.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    read_next(stream, &mut Vec::new()).await
}

pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), read_response(&mut stream))
        .await
        .expect("response within 20s")
}

/// Sends `request` (with `connection: close`) and reads to the end: the response's
/// status, or `None` when the connection failed or closed before a status line (a
/// gateway that was killed).
pub async fn try_status(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(request).await.ok()?;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let line = buf.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// Reads one response from `stream`. Bytes read past its end (a pipelined response) are
/// kept in `pending` for the next call.
pub async fn read_next(stream: &mut TcpStream, pending: &mut Vec<u8>) -> RawResponse {
    let mut buf = std::mem::take(pending);
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end + 4..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        *pending = rest;
        Vec::new()
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().unwrap();
        while rest.len() < len {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "body cut short");
            rest.extend_from_slice(&chunk[..n]);
        }
        *pending = rest.split_off(len);
        rest
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            if let Some(body) = dechunk(&rest) {
                break body;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "chunked body cut short");
            rest.extend_from_slice(&chunk[..n]);
        }
    } else {
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break rest;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The decoded body if `data` holds a complete chunked body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return find(data, b"\r\n").map(|_| body);
        }
        if data.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Polls `check` until it holds or `limit` passes; for waiting on asynchronous effects
/// (a reload) without guessing a sleep.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A local port with nothing listening on it.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shipped `gateway.toml` in `dir`: its files found in the repository, its policy
/// files copied (each through `edit`), state in `dir`, listeners on free ports, and the
/// backend at `upstream`.
pub fn shipped_config(
    dir: &Path,
    upstream: &str,
    edit: impl Fn(&str, String) -> String,
) -> PathBuf {
    let repo = repo().canonicalize().unwrap();
    let text = std::fs::read_to_string(repo.join("gateway.toml"))
        .unwrap()
        .replace("\"dev-keys/", &format!("\"{}/dev-keys/", repo.display()))
        .replace("\"credits/", &format!("\"{}/credits/", repo.display()))
        .replace(
            "listen = [\"127.0.0.1:8080\"]",
            "listen = [\"127.0.0.1:0\"]",
        )
        .replace("listen = \"127.0.0.1:9901\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "url = \"http://127.0.0.1:8081\"",
            &format!("url = \"{upstream}\""),
        )
        .replace("watch = true", "watch = false");
    assert!(text.contains(upstream), "the shipped upstream moved");
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for file in std::fs::read_dir(repo.join("policies")).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let policy = edit(&name, std::fs::read_to_string(&path).unwrap());
            std::fs::write(policies.join(&name), policy).unwrap();
        }
    }
    let config = dir.join("gateway.toml");
    std::fs::write(&config, text).unwrap();
    config
}
