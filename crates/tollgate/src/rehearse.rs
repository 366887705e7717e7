//! `tollgate test` and `tollgate explain`: requests played through the real pipeline in
//! this process ([`tollgate_proxy::rehearsal`]), so what they report is what the running
//! gateway does. `test` compares each case of `policies/tests/*.toml` with what it
//! expects; `explain` prints one request's outcome beside the policy of its route.

use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;

use http::Method;
use serde_json::{Map, Value};
use tollgate_policy::cases::{self, BackendAnswer, Case, Observed};
use tollgate_policy::diagnostic::Origin;
use tollgate_policy::snapshot::Credential;
use tollgate_policy::{Route, Snapshot};
use tollgate_proxy::rehearsal::Rehearsal;

/// A current-thread Tokio runtime for one command.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Plays every case of `dir`, each against a fresh gateway (full allowances, opening
/// balances), and prints each one's differences; fails if any case does.
pub fn test(snapshot: &Snapshot, dir: &Path) -> ExitCode {
    let cases = match cases::load(dir) {
        Ok(cases) => cases,
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            println!("{} error(s) in the cases: nothing was run", diags.len());
            return ExitCode::FAILURE;
        }
    };
    if cases.is_empty() {
        println!(
            "{}: no cases (write them in *.toml files there)",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("test: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A failing case names what differs, but never the value of a credential the
    // gateway adds upstream (case files need not hold it, and CI logs must not).
    let secrets = credential_headers(snapshot);
    let mut failed = 0;
    for case in &cases {
        let place = format!("{}:{}", case.origin.file.display(), case.origin.line);
        let outcome = runtime.block_on(async {
            let rehearsal = Rehearsal::start(snapshot.clone()).await?;
            rehearsal.play(case).await
        });
        match outcome {
            Ok(observed) => {
                let diffs = case.compare(&observed, &secrets);
                if diffs.is_empty() {
                    println!("ok    {place}: {} ({})", case.name, summary(&observed));
                } else {
                    failed += 1;
                    println!("FAIL  {place}: {}", case.name);
                    for diff in diffs {
                        println!("        {diff}");
                    }
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL  {place}: {}\n        {e}", case.name);
            }
        }
    }
    println!(
        "{} case(s): {} passed, {failed} failed",
        cases.len(),
        cases.len() - failed
    );
    match failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// `401 AUTH_REQUIRED, route upload-csv`: one case's outcome in a few words.
fn summary(observed: &Observed) -> String {
    let mut text = observed.status.to_string();
    if let Some(code) = observed.code() {
        text = format!("{text} {code}");
    }
    if let Some(route) = &observed.route {
        text = format!("{text}, route {route}");
    }
    if observed.upstream.is_some() {
        text.push_str(", forwarded");
    }
    text
}

/// The response headers `explain` shows: what the client is told about its
/// credentials, its allowance and its tokens.
const TOLD: &[&str] = &[
    "www-authenticate",
    "x-token-",
    "x-ratelimit-",
    "ratelimit",
    "retry-after",
    "deprecation",
    "sunset",
];

/// One request for `explain`, as the command line gives it.
pub struct Request<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a [String],
    pub body: &'a str,
    /// A JWT for this client id is sent.
    pub token_client: Option<&'a str>,
    pub peer: Option<IpAddr>,
    pub backend_status: u16,
}

/// Plays `request` and prints what happened, what the backend received, and the policy
/// of the route it landed on.
pub fn explain(snapshot: &Snapshot, request: &Request) -> ExitCode {
    // `campaigns` for `/campaigns`: the gateway would read it as an absolute-form
    // target with an odd scheme, which says nothing about the slip.
    let target = request.target;
    let absolute = target.starts_with("http://") || target.starts_with("https://");
    if !target.starts_with('/') && target != "*" && !absolute {
        eprintln!("explain: `{target}` is not a request target: start it with `/` (`/{target}`), as a client sends it");
        return ExitCode::FAILURE;
    }
    let mut headers = Vec::new();
    for header in request.headers {
        match header.split_once(':') {
            Some((name, value)) => headers.push((name.trim().to_owned(), value.trim().to_owned())),
            None => {
                eprintln!("explain: `{header}` is not a header (write `Name: value`)");
                return ExitCode::FAILURE;
            }
        }
    }
    // A declared length longer than --body would have the gateway wait for bytes that
    // never come (408 after the body timeout): said at once instead.
    let declared = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.parse::<usize>());
    if let Some(Ok(length)) = declared {
        if length > request.body.len() {
            eprintln!(
                "explain: Content-Length {length} is longer than --body ({} bytes): the gateway would wait for the rest and answer 408; leave the header out (explain sets it) or give the whole body",
                request.body.len()
            );
            return ExitCode::FAILURE;
        }
    }
    let token = request.token_client.map(|client| {
        let claim = snapshot
            .auth
            .jwt
            .as_ref()
            .map_or("clientId", |j| j.rules.client_id_claim.as_str());
        let mut claims = Map::new();
        claims.insert(claim.to_owned(), Value::from(client));
        claims
    });
    let case = Case {
        name: "explain".into(),
        origin: Origin {
            file: "command line".into(),
            line: 1,
            column: 1,
        },
        method: request.method.to_string(),
        target: request.target.to_owned(),
        headers,
        body: request.body.to_owned(),
        token,
        peer: request.peer.unwrap_or(cases::DEFAULT_PEER),
        backend: BackendAnswer {
            status: request.backend_status,
            ..BackendAnswer::default()
        },
        expect: Default::default(),
    };
    let played = runtime().map_err(|e| e.to_string()).and_then(|runtime| {
        runtime.block_on(async {
            let rehearsal = Rehearsal::start(snapshot.clone())
                .await
                .map_err(|e| e.to_string())?;
            rehearsal.play(&case).await.map_err(|e| e.to_string())
        })
    });
    let observed = match played {
        Ok(observed) => observed,
        Err(e) => {
            eprintln!("explain: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", account(snapshot, &case, request.method, &observed));
    ExitCode::SUCCESS
}

/// The text `explain` prints.
fn account(snapshot: &Snapshot, case: &Case, method: &Method, observed: &Observed) -> String {
    let mut out = format!("request:    {} {}\n", case.method, case.target);
    let sent_as = match (&case.token, case.headers.is_empty()) {
        (Some(_), _) => "with a JWT for the client given",
        (None, false) => "with the headers given, no JWT",
        (None, true) => "with no credentials (add --token CLIENT_ID, or -H for an API key)",
    };
    out.push_str(&format!("sent:       {sent_as}\n"));
    let route = observed
        .route
        .as_deref()
        .and_then(|name| find_route(snapshot, name));
    let path = case
        .target
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| tollgate_policy::path::normalize(uri.path()).ok());
    if let Some(path) = &path {
        out.push_str(&format!("normalized: {path}\n"));
    }
    match route {
        Some(route) => out.push_str(&tollgate_policy::explain::describe(
            snapshot,
            route,
            method,
            path.as_deref(),
        )),
        None => out.push_str("route:      none (refused before routing, or no route matches)\n"),
    }
    out.push_str(&outcome(observed));
    for (name, value) in observed
        .headers
        .iter()
        .filter(|(n, _)| TOLD.iter().any(|t| n.starts_with(t)))
    {
        out.push_str(&format!("  response: {name}: {value}\n"));
    }
    if let Some(received) = &observed.upstream {
        out.push_str(&format!(
            "backend receives: {} {}\n",
            received.method, received.target
        ));
        let secrets = route.map(secret_headers).unwrap_or_default();
        for (name, value) in &received.headers {
            let sent = case
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v);
            let mark = match sent {
                Some(v) if v == value => " ",
                Some(_) => "~",
                None if name == "content-length" => " ",
                None => "+",
            };
            let value = match secrets.contains(name) {
                true => "<secret>",
                false => value,
            };
            out.push_str(&format!("  {mark} {name}: {value}\n"));
        }
        let removed: Vec<&str> = case
            .headers
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(case.token.as_ref().map(|_| "authorization"))
            .filter(|n| {
                !received
                    .headers
                    .iter()
                    .any(|(r, _)| r.eq_ignore_ascii_case(n))
            })
            .collect();
        if !removed.is_empty() {
            out.push_str(&format!("  removed: {}\n", removed.join(", ")));
        }
        if received.body != case.body.as_bytes() {
            out.push_str(&format!(
                "  body rewritten: {}\n",
                String::from_utf8_lossy(&received.body)
            ));
        }
        out.push_str(
            "  (+ added, ~ replaced by the gateway; the backend here is a stand-in on a loopback port)\n",
        );
    }
    out
}

fn outcome(observed: &Observed) -> String {
    let body: Option<Value> = serde_json::from_slice(&observed.body).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut line = format!("outcome:    {}", observed.status);
    match (field("code"), observed.upstream.is_some()) {
        (Some(code), _) => {
            line.push_str(&format!(" {code}"));
            if let Some(detail) = field("detail") {
                line.push_str(&format!(": {detail}"));
            }
        }
        (None, true) => line.push_str(" from the backend (forwarded)"),
        (None, false) if observed.headers.iter().any(|(n, _)| n == "x-request-id") => {
            line.push_str(" answered by the gateway")
        }
        (None, false) => line.push_str(" (HTTP refused the request before the pipeline)"),
    }
    if let Some(allow) = observed.header("allow") {
        line.push_str(&format!(" (Allow: {allow})"));
    }
    line.push('\n');
    line
}

fn find_route<'s>(snapshot: &'s Snapshot, name: &str) -> Option<&'s Route> {
    snapshot
        .routes
        .iter()
        .chain(std::iter::once(&snapshot.fallback))
        .find(|r| r.name == name)
}

/// Every header an upstream credential of `snapshot` is sent in.
fn credential_headers(snapshot: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot.routes.iter().flat_map(secret_headers).collect();
    names.sort();
    names.dedup();
    names
}

/// The headers whose values `explain` never prints: the route's upstream credential.
fn secret_headers(route: &Route) -> Vec<String> {
    route
        .upstream_credential
        .iter()
        .map(|(_, credential)| match credential.as_ref() {
            Credential::Header { name, .. } | Credential::ClientMap { name, .. } => {
                name.as_str().to_owned()
            }
        })
        .collect()
}
