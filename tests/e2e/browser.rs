//! A real browser: headless Chromium, driven over WebDriver (Debian's `chromedriver`),
//! loads a page from another origin that uses the client documented in
//! `docs/frontend.md` (the code block is served as it is written there). The page logs
//! in through the gateway and calls a protected route. It reads
//! `X-RateLimit-Remaining` and `X-Request-Id` from JavaScript, refreshes once the token
//! has expired, waits out a 429, posts, and logs out. It does this once in bearer mode
//! and once in cookie mode, where the page never sees a token.
//!
//! The page is served on `http://localhost:<port>` and the gateway is called as
//! `http://localhost:<other port>`: another origin on the same site, as a frontend's
//! dev server and its API are.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::sessions::{session_config, POLICIES};
use crate::support::{raw, Harness, Setup, TempDir};

/// The client exactly as `docs/frontend.md` shows it.
fn documented_client() -> String {
    let doc = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/frontend.md"),
    )
    .unwrap();
    let marker = "<!-- client.js: the test serves the block below as it is -->\n```js\n";
    let start = doc
        .find(marker)
        .expect("the client block in docs/frontend.md")
        + marker.len();
    let end = start + doc[start..].find("\n```").unwrap();
    doc[start..=end].to_owned()
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>frontend</title></head>
<body><script type="module">
import { TollgateClient } from '/client.js';
window.TollgateClient = TollgateClient;
window.clientReady = true;
</script></body></html>"#;

/// Serves the page and the client (a few lines of HTTP/1.1; `Connection: close`).
async fn serve_page(listener: TcpListener, client: String) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let client = client.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split(' ').nth(1).unwrap_or("/").to_owned();
            let (status, kind, body) = match path.as_str() {
                "/" => ("200 OK", "text/html; charset=utf-8", PAGE.to_owned()),
                "/client.js" => ("200 OK", "text/javascript; charset=utf-8", client),
                _ => ("404 Not Found", "text/plain", "not found".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Debian's chromedriver and chromium; `.ci/run` installs them.
fn browser_binaries() -> (PathBuf, PathBuf) {
    let find = |names: &[&str]| {
        names
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!("{names:?} not found: install Debian's chromium and chromium-driver (.ci/run does)")
            })
    };
    (
        find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]),
        find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]),
    )
}

/// A chromedriver child, killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The browser is chromedriver's child but outlives a killed chromedriver: its
        // session is ended first (a plain blocking request: drop cannot await), or every
        // run left a headless Chromium behind.
        if let Some(id) = &self.session {
            use std::io::{Read as _, Write as _};
            if let Ok(mut stream) = std::net::TcpStream::connect(self.addr) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let request = format!(
                    "DELETE /session/{id} HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    self.addr
                );
                if stream.write_all(request.as_bytes()).is_ok() {
                    let _ = stream.read_to_end(&mut Vec::new());
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let (chromedriver, _) = browser_binaries();
        let port = tollgate_testkit::free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let driver = Driver {
            child,
            addr,
            session: None,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let status = driver.call("GET", "/status", None).await;
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    /// One WebDriver command; the answer's JSON.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let response = raw(self.addr, request.as_bytes()).await;
        serde_json::from_slice(&response.body).unwrap_or_else(|e| {
            panic!(
                "webdriver answered {} {e}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            )
        })
    }

    async fn open_browser(&mut self, profile: &TempDir) {
        let (_, chromium) = browser_binaries();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let answer = self.call("POST", "/session", Some(capabilities)).await;
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {answer}"))
            .to_owned();
        self.session = Some(id);
        self.command("timeouts", json!({"script": 60_000})).await;
    }

    async fn command(&self, what: &str, body: Value) -> Value {
        let id = self.session.as_deref().unwrap();
        self.call("POST", &format!("/session/{id}/{what}"), Some(body))
            .await
    }

    /// Runs `script` (an async function body that ends by calling `done`) in the page.
    async fn run(&self, script: &str, args: Value) -> Value {
        let answer = self
            .command("execute/async", json!({"script": script, "args": args}))
            .await;
        answer["value"].clone()
    }
}

/// The page's side of the test: what it did and what it could read.
const FLOW: &str = r#"
const [mode, base] = [arguments[0], arguments[1]];
const done = arguments[arguments.length - 1];
(async () => {
  /** @type {any} */ let unpaid = null;
  const api = new window.TollgateClient({ baseUrl: base, mode, onPaymentRequired: (p) => { unpaid = p; } });
  let refreshes = 0;
  const refresh = api.refresh.bind(api);
  api.refresh = async () => { refreshes += 1; return refresh(); };
  const out = {};
  const login = await api.login('demo@acme.test', 'demo-password');
  out.loginKeys = Object.keys(login);
  out.user = login.user;
  out.pageCookies = document.cookie;
  out.tokenInMemory = api.token;
  let r = await api.fetch('/echo/me');
  out.first = { status: r.status, remaining: r.headers.get('X-RateLimit-Remaining'),
                requestId: r.headers.get('X-Request-Id'), query: (await r.json()).query,
                refreshes };
  await new Promise((resolve) => setTimeout(resolve, 3500));
  r = await api.fetch('/echo/me');
  out.afterExpiry = { status: r.status, refreshes };
  const started = performance.now();
  const first = await api.fetch('/echo/limited');
  const second = await api.fetch('/echo/limited');
  out.limited = { first: first.status, second: second.status, waitedMs: performance.now() - started };
  r = await api.fetch('/echo/me', { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                    body: JSON.stringify({ note: 'from the page' }) });
  out.post = { status: r.status };
  r = await api.fetch('/echo/paid', { method: 'POST', headers: { 'Content-Type': 'application/json' },
                                      body: JSON.stringify({ note: 'costs more than there is' }) });
  out.paid = { status: r.status, balance: r.headers.get('X-Token-Balance'), problem: unpaid };
  await api.logout();
  r = await api.fetch('/echo/me');
  out.afterLogout = { status: r.status, code: (await r.json()).code };
  done(out);
})().catch((e) => done({ error: String((e && e.stack) || e) }));
"#;

const LIMITED: &str = r#"
[limits.tight]
rate = 1
period = "2s"
key = ["client"]

[limits.generous]
rate = 100
period = "1m"
key = ["client"]

[[route]]
name = "limited"
path = "/echo/limited"
auth = "jwt"
limits = ["tight"]

[[route]]
name = "paid"
path = "/echo/paid"
auth = "jwt"
cost = 1000
"#;

async fn page_flow(mode: &str) -> Value {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_port = listener.local_addr().unwrap().port();
    tokio::spawn(serve_page(listener, documented_client()));
    let page = format!("http://localhost:{page_port}");

    let cors = format!("[cors.page]\norigins = [\"{page}\"]\ncredentials = true\n");
    let sessions = if mode == "cookie" {
        "tokens = \"cookie\""
    } else {
        ""
    };
    let policies = POLICIES.replace(
        "[[route]]\nname = \"echo\"\npath = \"/echo/*\"\nauth = \"jwt\"\n",
        "[[route]]\nname = \"echo\"\npath = \"/echo/*\"\nauth = \"jwt\"\nlimits = [\"generous\"]\n",
    );
    let extra = session_config(sessions).replacen(
        "audience = \"legacy-api\"\n",
        "audience = \"legacy-api\"\naccess_ttl = \"3s\"\nleeway = \"0s\"\n",
        1,
    ) + "\n[credits]\npath = \"state/ledger.redb\"\n";
    let h = Harness::with(Setup {
        policies: vec![
            ("05-page.toml".into(), format!("{cors}\n{LIMITED}")),
            ("10-sessions.toml".into(), policies),
        ],
        extra,
        routing: "cors = \"page\"".into(),
        ..Setup::default()
    })
    .await;
    h.gateway.wait_ready().await;
    let gateway = format!("http://localhost:{}", h.gateway.addr.port());

    let profile = TempDir::new();
    let mut driver = Driver::start().await;
    driver.open_browser(&profile).await;
    driver
        .command("url", json!({"url": format!("{page}/")}))
        .await;
    let ready = driver
        .run(
            "const done = arguments[arguments.length - 1];\
             const wait = () => window.clientReady ? done(true) : setTimeout(wait, 20); wait();",
            json!([]),
        )
        .await;
    assert_eq!(ready, true, "the page did not load the client");
    let out = driver.run(FLOW, json!([mode, gateway])).await;
    assert!(
        out.get("error").is_none(),
        "the page failed: {out}\n{}",
        h.gateway.stderr()
    );
    out
}

fn common(out: &Value) {
    assert_eq!(out["user"]["clientId"], "1001", "{out}");
    // The protected route answered, and its headers were readable from JavaScript.
    assert_eq!(out["first"]["status"], 200, "{out}");
    assert_eq!(out["first"]["query"], "clientId=1001");
    assert_eq!(out["first"]["remaining"], "99", "{out}");
    assert!(
        out["first"]["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{out}"
    );
    // The token expired; the client refreshed once and the call went through.
    assert_eq!(out["afterExpiry"]["status"], 200, "{out}");
    // (Counted from the first call on: a loaded machine may take long enough between
    // the login and that call for one more.)
    let refreshes = out["afterExpiry"]["refreshes"].as_u64().unwrap()
        - out["first"]["refreshes"].as_u64().unwrap();
    assert_eq!(refreshes, 1, "{out}");
    // 429 with Retry-After: the client waited and the retry went through.
    assert_eq!(out["limited"]["first"], 200, "{out}");
    assert_eq!(out["limited"]["second"], 200, "{out}");
    assert!(
        out["limited"]["waitedMs"].as_f64().unwrap() >= 900.0,
        "{out}"
    );
    assert_eq!(out["post"]["status"], 200, "{out}");
    // Too few tokens: the client handed the 402 problem to the page, whose scripts can
    // read the balance header.
    assert_eq!(out["paid"]["status"], 402, "{out}");
    assert_eq!(
        out["paid"]["problem"]["code"], "INSUFFICIENT_TOKENS",
        "{out}"
    );
    assert_eq!(out["paid"]["problem"]["required"], 1000, "{out}");
    assert_eq!(out["paid"]["balance"], "0", "{out}");
    // Logged out: nothing the page holds opens the API any more.
    assert_eq!(out["afterLogout"]["status"], 401, "{out}");
    assert_eq!(out["afterLogout"]["code"], "AUTH_REQUIRED", "{out}");
}

#[tokio::test]
async fn a_page_on_another_origin_logs_in_calls_refreshes_and_logs_out() {
    let out = page_flow("bearer").await;
    common(&out);
    let keys: Vec<&str> = out["loginKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        keys.contains(&"token") && keys.contains(&"refreshToken"),
        "{keys:?}"
    );
}

#[tokio::test]
async fn in_cookie_mode_the_page_never_sees_a_token() {
    let out = page_flow("cookie").await;
    common(&out);
    let keys: Vec<&str> = out["loginKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(
        !keys.contains(&"token") && !keys.contains(&"refreshToken"),
        "{keys:?}"
    );
    assert!(keys.contains(&"csrfToken"), "{keys:?}");
    assert_eq!(out["tokenInMemory"], Value::Null);
    // The session cookies are HttpOnly: invisible to the page's scripts.
    assert!(
        !out["pageCookies"].as_str().unwrap().contains("tg_"),
        "{out}"
    );
}
