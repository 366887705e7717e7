//! Policy test cases: the requests an operator writes beside the policies
//! (`policies/tests/*.toml`) with the outcome each must get, and the comparison of an
//! expected outcome with an observed one.
//!
//! This module only describes: the proxy crate plays a case through the real pipeline
//! (`tollgate test`, in process) and the end-to-end suite plays it against a running
//! gateway; both report with [`Case::compare`], so a case means the same in both.
//!
//! ```toml
//! [[case]]
//! name = "a campaign is created in the caller's name"
//! method = "POST"
//! target = "/campaigns?clientId=1002"          # as sent, byte for byte
//! headers = { Content-Type = "application/json" }
//! body = '{"name": "spring"}'
//! token = { clientId = "1001" }                # claims; signed with the gateway's key
//! backend = { status = 201 }                   # what the stand-in backend answers
//!
//! [case.expect]
//! status = 403
//! code = "CLIENT_ID_MISMATCH"
//! route = "campaigns"
//! forwarded = false
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Origin, SourceFile};

/// One case file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    case: Vec<Spanned<CaseEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseEntry {
    name: String,
    #[serde(default = "get")]
    method: String,
    target: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
    token: Option<toml::Table>,
    /// The connecting address (a trusted proxy, say); a public address by default.
    peer: Option<String>,
    #[serde(default)]
    backend: BackendAnswer,
    expect: Expect,
}

fn get() -> String {
    "GET".to_owned()
}

/// What the stand-in backend answers to a forwarded request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendAnswer {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

fn ok() -> u16 {
    200
}

impl Default for BackendAnswer {
    fn default() -> Self {
        BackendAnswer {
            status: ok(),
            headers: BTreeMap::new(),
            body: String::new(),
        }
    }
}

/// The outcome a case expects; what it leaves out is not checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub status: Option<u16>,
    /// The problem+json `code` of an error answer.
    pub code: Option<String>,
    /// The route the request landed on; `""`: none (refused before routing, or no
    /// route matched).
    pub route: Option<String>,
    /// Response headers and their exact values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Whether the backend was called; implied `true` by `[case.expect.upstream]`.
    pub forwarded: Option<bool>,
    pub upstream: Option<UpstreamExpect>,
}

/// What the backend must have received.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamExpect {
    pub method: Option<String>,
    /// The path, without the query.
    pub path: Option<String>,
    /// Query parameters and their values (decoded); others may be present.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Query parameters that must not be there.
    #[serde(default)]
    pub query_absent: Vec<String>,
    /// Headers and their exact values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers that must be there, whatever their value (a credential, say: a case
    /// file need not hold the secret).
    #[serde(default)]
    pub present: Vec<String>,
    /// Headers that must not be there.
    #[serde(default)]
    pub absent: Vec<String>,
    /// The body, byte for byte.
    pub body: Option<String>,
    /// Members the JSON body must have, with these values (others may be present).
    pub json: Option<toml::Table>,
}

/// A loaded case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub origin: Origin,
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The claims of the bearer token to send, as JSON; `None`: no token.
    pub token: Option<serde_json::Map<String, serde_json::Value>>,
    pub peer: std::net::IpAddr,
    pub backend: BackendAnswer,
    pub expect: Expect,
}

/// A client on the internet (TEST-NET-3), not a trusted proxy.
pub const DEFAULT_PEER: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));

/// What came back, and what the backend saw.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The route the gateway logged; `None`: none.
    pub route: Option<String>,
    pub upstream: Option<Received>,
}

/// A request as the backend received it.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub method: String,
    /// Path and query, as sent upstream.
    pub target: String,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Observed {
    /// One HTTP/1.1 response, read to the end of its connection; route and upstream are
    /// for the caller to fill in. `None` if it is not a whole response.
    pub fn from_response(bytes: &[u8]) -> Option<Observed> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&bytes[..end]).ok()?;
        let rest = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = match chunked {
            true => dechunk(rest)?,
            false => rest.to_vec(),
        };
        Some(Observed {
            status,
            headers,
            body,
            route: None,
            upstream: None,
        })
    }

    /// The problem+json `code`, if the answer is one.
    pub fn code(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        json.get("code")?.as_str().map(str::to_owned)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }
}

fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Case {
    /// The request as a client sends it on a fresh connection: the target exactly as
    /// written, `Host: gateway.test` unless the case names one, the bearer token if
    /// any, and a `Content-Length` for the body unless the case frames it itself.
    pub fn raw_request(&self, token: Option<&str>) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        if find(&self.headers, "host").is_none() {
            head.push_str("Host: gateway.test\r\n");
        }
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if let Some(token) = token {
            let _ = write!(head, "Authorization: Bearer {token}\r\n");
        }
        let framed = find(&self.headers, "content-length").is_some()
            || find(&self.headers, "transfer-encoding").is_some();
        if !framed && (!self.body.is_empty() || !matches!(self.method.as_str(), "GET" | "HEAD")) {
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(self.body.as_bytes());
        raw
    }

    /// Every way `observed` differs from what the case expects, one line each; empty
    /// when the case passes.
    /// Values of the backend headers named in `secret_headers` (the credentials the
    /// gateway adds) are never printed, only whether they matched.
    pub fn compare(&self, observed: &Observed, secret_headers: &[String]) -> Vec<String> {
        let expect = &self.expect;
        let mut diffs = Vec::new();
        if let Some(status) = expect.status.filter(|s| *s != observed.status) {
            diffs.push(format!(
                "status: expected {status}, got {}",
                observed.status
            ));
        }
        if let Some(code) = &expect.code {
            let got = observed.code();
            if got.as_deref() != Some(code.as_str()) {
                diffs.push(format!(
                    "code: expected {code}, got {}",
                    shown(got.as_deref())
                ));
            }
        }
        if let Some(route) = &expect.route {
            let got = observed.route.as_deref().unwrap_or("");
            if got != route {
                diffs.push(format!(
                    "route: expected {}, got {}",
                    named(route),
                    named(got)
                ));
            }
        }
        for (name, value) in &expect.headers {
            let got = observed.header(name);
            if got != Some(value.as_str()) {
                diffs.push(format!(
                    "response header {name}: expected {value:?}, got {}",
                    shown(got)
                ));
            }
        }
        let forwarded = expect.forwarded.or(expect.upstream.as_ref().map(|_| true));
        match (forwarded, &observed.upstream) {
            (Some(true), None) => {
                diffs.push("backend: expected the request forwarded, it was not".into())
            }
            (Some(false), Some(r)) => diffs.push(format!(
                "backend: expected nothing forwarded, it received {} {}",
                r.method, r.target
            )),
            _ => {}
        }
        if let (Some(want), Some(got)) = (&expect.upstream, &observed.upstream) {
            want.compare(got, secret_headers, &mut diffs);
        }
        diffs
    }
}

impl UpstreamExpect {
    fn compare(&self, got: &Received, secret_headers: &[String], diffs: &mut Vec<String>) {
        if let Some(method) = self.method.as_ref().filter(|m| **m != got.method) {
            diffs.push(format!(
                "backend method: expected {method}, got {}",
                got.method
            ));
        }
        let (path, query) = got.target.split_once('?').unwrap_or((&got.target, ""));
        if let Some(want) = self.path.as_ref().filter(|p| *p != path) {
            diffs.push(format!("backend path: expected {want}, got {path}"));
        }
        let params = crate::param::pairs(query.as_bytes());
        for (name, value) in &self.query {
            let got: Vec<&str> = params
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect();
            if got != [value.as_str()] {
                diffs.push(format!(
                    "backend query {name}: expected {value:?}, got {got:?}"
                ));
            }
        }
        for name in &self.query_absent {
            if params.iter().any(|(n, _)| n == name) {
                diffs.push(format!(
                    "backend query {name}: expected absent, it was sent"
                ));
            }
        }
        for (name, value) in &self.headers {
            let seen = find(&got.headers, name);
            if seen != Some(value.as_str()) {
                let secret = secret_headers.iter().any(|s| s.eq_ignore_ascii_case(name));
                let (want, seen) = match (secret, seen) {
                    (true, Some(_)) => ("<secret>".to_owned(), "another value".to_owned()),
                    (true, None) => ("<secret>".to_owned(), shown(None)),
                    (false, _) => (format!("{value:?}"), shown(seen)),
                };
                diffs.push(format!(
                    "backend header {name}: expected {want}, got {seen}"
                ));
            }
        }
        for name in self
            .present
            .iter()
            .filter(|n| find(&got.headers, n).is_none())
        {
            diffs.push(format!(
                "backend header {name}: expected present, it was not sent"
            ));
        }
        for name in self
            .absent
            .iter()
            .filter(|n| find(&got.headers, n).is_some())
        {
            diffs.push(format!(
                "backend header {name}: expected absent, it was sent"
            ));
        }
        if let Some(body) = self.body.as_ref().filter(|b| b.as_bytes() != got.body) {
            diffs.push(format!(
                "backend body: expected {body:?}, got {:?}",
                String::from_utf8_lossy(&got.body)
            ));
        }
        if let Some(members) = &self.json {
            match serde_json::from_slice::<serde_json::Value>(&got.body) {
                Ok(serde_json::Value::Object(seen)) => {
                    for (name, value) in members {
                        let want = serde_json::to_value(value).unwrap_or_default();
                        if seen.get(name) != Some(&want) {
                            diffs.push(format!(
                                "backend JSON {name}: expected {want}, got {}",
                                seen.get(name)
                                    .map_or("(absent)".to_owned(), ToString::to_string)
                            ));
                        }
                    }
                }
                _ => diffs.push("backend body: expected a JSON object".into()),
            }
        }
    }
}

/// A chunked body, decoded; `None` if it is cut short.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

fn shown(value: Option<&str>) -> String {
    value.map_or_else(|| "(none)".to_owned(), |v| format!("{v:?}"))
}

fn named(route: &str) -> String {
    match route {
        "" => "(no route)".to_owned(),
        r => format!("`{r}`"),
    }
}

/// Reads every `*.toml` of `dir`, in name order: the cases, or every problem with its
/// place (each file is read whole, so one bad case never hides the next).
pub fn load(dir: &Path) -> Result<Vec<Case>, Vec<Diagnostic>> {
    let files = crate::fingerprint::policy_files(dir).map_err(|e| {
        vec![Diagnostic {
            file: dir.to_path_buf(),
            line: 1,
            column: 1,
            severity: crate::Severity::Error,
            message: format!("cannot read the case directory: {e}"),
        }]
    })?;
    let mut cases = Vec::new();
    let mut diags = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => parse(&file, &text, &mut cases, &mut diags),
            Err(e) => diags.push(Diagnostic {
                file: file.clone(),
                line: 1,
                column: 1,
                severity: crate::Severity::Error,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    match diags.is_empty() {
        true => Ok(cases),
        false => Err(diags),
    }
}

/// The cases of one file's `text`.
pub fn parse(path: &Path, text: &str, cases: &mut Vec<Case>, diags: &mut Vec<Diagnostic>) {
    let src = SourceFile { path, text };
    let file: CaseFile = match toml::from_str(text) {
        Ok(file) => file,
        Err(e) => {
            diags.push(src.error(e.span(), e.message().to_owned()));
            return;
        }
    };
    for entry in file.case {
        let span = entry.span();
        let entry = entry.into_inner();
        let mut bad = |message: String| diags.push(src.error(Some(span.clone()), message));
        if http::Method::from_bytes(entry.method.as_bytes()).is_err() {
            bad(format!(
                "case `{}`: `{}` is not an HTTP method",
                entry.name, entry.method
            ));
        }
        let peer = match entry.peer.as_deref().map(str::parse) {
            None => DEFAULT_PEER,
            Some(Ok(ip)) => ip,
            Some(Err(_)) => {
                bad(format!("case `{}`: peer is not an IP address", entry.name));
                DEFAULT_PEER
            }
        };
        let expect = &entry.expect;
        // A status outside 100-599 can never be answered: the case could never pass
        // (expected), or the stand-in could not answer it (backend).
        for (what, status) in [
            ("[case.expect] status", expect.status),
            ("backend status", Some(entry.backend.status)),
        ] {
            if let Some(status) = status.filter(|s| !(100..=599).contains(s)) {
                bad(format!(
                    "case `{}`: {what} {status} is not an HTTP status (100-599)",
                    entry.name
                ));
            }
        }
        let checks_nothing = expect.status.is_none()
            && expect.code.is_none()
            && expect.route.is_none()
            && expect.headers.is_empty()
            && expect.forwarded.is_none()
            && expect.upstream.is_none();
        if checks_nothing {
            bad(format!(
                "case `{}`: [case.expect] checks nothing (give at least a status)",
                entry.name
            ));
        }
        let token = entry
            .token
            .map(|claims| match serde_json::to_value(claims) {
                Ok(serde_json::Value::Object(map)) => map,
                _ => serde_json::Map::new(),
            });
        cases.push(Case {
            origin: src.origin(span),
            name: entry.name,
            method: entry.method,
            target: entry.target,
            headers: entry.headers.into_iter().collect(),
            body: entry.body,
            token,
            peer,
            backend: entry.backend,
            expect: entry.expect,
        });
    }
}

/// Where a case directory is by default: `tests/` in the policy directory.
pub fn default_dir(policy_dir: &Path) -> PathBuf {
    policy_dir.join("tests")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Case {
        let mut cases = Vec::new();
        let mut diags = Vec::new();
        parse(Path::new("t.toml"), text, &mut cases, &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
        cases.remove(0)
    }

    #[test]
    fn a_case_reads_with_its_line_and_sends_its_target_untouched() {
        let case = one("# a comment\n[[case]]\nname = \"x\"\ntarget = \"/pub/x#/../a b\"\n[case.expect]\nstatus = 400\n");
        assert_eq!(case.origin.line, 2);
        assert_eq!(case.method, "GET");
        let raw = String::from_utf8(case.raw_request(None)).unwrap();
        assert!(
            raw.starts_with("GET /pub/x#/../a b HTTP/1.1\r\nHost: gateway.test\r\n"),
            "{raw}"
        );
        assert!(!raw.contains("Content-Length"), "{raw}");
    }

    #[test]
    fn a_post_is_framed_and_carries_its_token() {
        let case = one("[[case]]\nname = \"x\"\nmethod = \"POST\"\ntarget = \"/a\"\nbody = \"{}\"\ntoken = { clientId = \"1001\" }\n[case.expect]\nstatus = 200\n");
        assert_eq!(case.token.as_ref().unwrap()["clientId"], "1001");
        let raw = String::from_utf8(case.raw_request(Some("t0k"))).unwrap();
        assert!(raw.contains("Authorization: Bearer t0k\r\n"), "{raw}");
        assert!(
            raw.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n{}"),
            "{raw}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_methods_are_reported_where_they_are() {
        let mut cases = Vec::new();
        let mut diags = Vec::new();
        parse(
            Path::new("t.toml"),
            "[[case]]\nname = \"x\"\ntarget = \"/\"\nstatuss = 1\n[case.expect]\n",
            &mut cases,
            &mut diags,
        );
        assert_eq!(diags.len(), 1);
        assert!(diags[0].message.contains("statuss"), "{}", diags[0]);
        diags.clear();
        parse(
            Path::new("t.toml"),
            "\n[[case]]\nname = \"x\"\nmethod = \"G T\"\ntarget = \"/\"\n[case.expect]\nstatus = 400\n",
            &mut cases,
            &mut diags,
        );
        assert_eq!((diags.len(), diags[0].line), (1, 2), "{diags:?}");
        // A case that checks nothing would always pass: refused.
        diags.clear();
        parse(
            Path::new("t.toml"),
            "[[case]]\nname = \"idle\"\ntarget = \"/\"\n[case.expect]\n",
            &mut cases,
            &mut diags,
        );
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].message.contains("checks nothing"), "{}", diags[0]);
        // Statuses no answer can have: the case could never pass, or never be played.
        diags.clear();
        parse(
            Path::new("t.toml"),
            "[[case]]\nname = \"s\"\ntarget = \"/\"\nbackend = { status = 1000 }\n[case.expect]\nstatus = 999\n",
            &mut cases,
            &mut diags,
        );
        assert_eq!(diags.len(), 2, "{diags:?}");
        assert!(
            diags[0]
                .message
                .contains("[case.expect] status 999 is not an HTTP status"),
            "{}",
            diags[0]
        );
        assert!(
            diags[1]
                .message
                .contains("backend status 1000 is not an HTTP status"),
            "{}",
            diags[1]
        );
    }

    #[test]
    fn a_credential_s_value_is_never_printed() {
        let case = one("[[case]]\nname = \"x\"\ntarget = \"/a\"\n[case.expect.upstream]\nheaders = { X-Api-Key = \"old-key\" }\n");
        let observed = Observed {
            status: 200,
            upstream: Some(Received {
                headers: vec![("x-api-key".into(), "the-real-backend-key".into())],
                ..Received::default()
            }),
            ..Observed::default()
        };
        let diffs = case.compare(&observed, &["X-API-KEY".to_owned()]);
        assert_eq!(
            diffs,
            ["backend header X-Api-Key: expected <secret>, got another value"]
        );
        let shown = case.compare(&observed, &[]);
        assert!(shown[0].contains("the-real-backend-key"), "{shown:?}");
    }

    #[test]
    fn every_difference_is_named() {
        let case = one(r#"[[case]]
name = "x"
target = "/a"
[case.expect]
status = 200
route = "a"
headers = { X-Token-Cost = "1" }
[case.expect.upstream]
path = "/a"
query = { clientId = "1001" }
query_absent = ["api_key"]
headers = { X-Client-Id = "1001" }
present = ["X-Api-Key"]
absent = ["Authorization"]
json = { clientId = "1001" }
"#);
        let observed = Observed {
            status: 401,
            headers: vec![("x-token-cost".into(), "2".into())],
            body: br#"{"code":"AUTH_REQUIRED"}"#.to_vec(),
            route: None,
            upstream: Some(Received {
                method: "GET".into(),
                target: "/b?clientId=1002&api_key=k".into(),
                headers: vec![("authorization".into(), "Bearer x".into())],
                body: br#"{"clientId":1001}"#.to_vec(),
            }),
        };
        let diffs = case.compare(&observed, &[]);
        for want in [
            "status: expected 200, got 401",
            "route: expected `a`, got (no route)",
            "response header X-Token-Cost: expected \"1\", got \"2\"",
            "backend path: expected /a, got /b",
            "backend query clientId: expected \"1001\", got [\"1002\"]",
            "backend query api_key: expected absent, it was sent",
            "backend header X-Client-Id: expected \"1001\", got (none)",
            "backend header X-Api-Key: expected present, it was not sent",
            "backend header Authorization: expected absent, it was sent",
            "backend JSON clientId: expected \"1001\", got 1001",
        ] {
            assert!(
                diffs.iter().any(|d| d == want),
                "missing {want:?} in {diffs:#?}"
            );
        }
        assert_eq!(diffs.len(), 10, "{diffs:#?}");
        let mut fixed = observed.clone();
        fixed.status = 200;
        fixed.route = Some("a".into());
        fixed.headers = vec![("x-token-cost".into(), "1".into())];
        fixed.upstream = Some(Received {
            method: "GET".into(),
            target: "/a?clientId=1001".into(),
            headers: vec![
                ("x-client-id".into(), "1001".into()),
                ("x-api-key".into(), "k".into()),
            ],
            body: br#"{"clientId":"1001"}"#.to_vec(),
        });
        assert_eq!(case.compare(&fixed, &[]), Vec::<String>::new());
        fixed.upstream = None;
        assert_eq!(
            case.compare(&fixed, &[]),
            ["backend: expected the request forwarded, it was not"]
        );
    }

    #[test]
    fn responses_are_read_plain_and_chunked() {
        let plain = b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/problem+json\r\nContent-Length: 2\r\n\r\n{}";
        let Observed {
            status,
            headers,
            body,
            ..
        } = Observed::from_response(plain).unwrap();
        assert_eq!((status, body.as_slice()), (401, &b"{}"[..]));
        assert_eq!(
            headers[0],
            ("content-type".into(), "application/problem+json".into())
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(Observed::from_response(chunked).unwrap().body, b"abcde");
        assert!(Observed::from_response(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(Observed::from_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
        )
        .is_none());
    }
}
