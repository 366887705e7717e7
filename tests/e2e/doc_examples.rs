//! The HTTP examples in `docs/` are run, so they cannot drift from what the gateway
//! does. Every ```` ```http ```` block is preceded by an HTML comment saying how:
//!
//! - `<!-- example -->`: run as written; `<!-- example: as=1002 -->`: a bearer token in
//!   it is one for client 1002 (otherwise the last login's);
//!   `<!-- example: request="GET /nowhere" -->`: a block that shows only an answer is
//!   the answer to this request;
//! - `<!-- example: not run, REASON -->`: an illustration (a list of headers, a state
//!   the demo does not reach); the reason is required.
//!
//! A block holds one request and its answer (`POST /x` … `HTTP/1.1 201 Created` …), or
//! several in short form (`GET /x` then `→ 200 {json}`). A file's examples run in order
//! against one fresh gateway with the shipped configuration and the demo backend, so
//! they tell one story (a balance spent by one example is lower in the next).
//!
//! In a documented answer `…` stands for what varies: `"eyJ…"` is any string with that
//! start, `"…"` or a bare `…` any value, `…` as an object's last member or an array's
//! last item "and more". In a documented request, a string ending in `…` is the
//! same member of the last login answer (`"refreshToken": "N82…"`).

use std::path::Path;

use serde_json::{Map, Value};

use crate::support::{raw, repo, shipped_config, GatewayProcess, RawResponse, TempDir};

#[derive(Debug, Default)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Debug, Default)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Debug)]
struct Example {
    line: usize,
    as_client: Option<String>,
    exchanges: Vec<(Request, Option<Answer>)>,
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

fn is_request_line(line: &str) -> bool {
    line.split_once(' ')
        .is_some_and(|(m, rest)| METHODS.contains(&m) && rest.starts_with('/'))
}

fn request_line(line: &str) -> Request {
    let mut parts = line.split_whitespace();
    Request {
        method: parts.next().unwrap_or_default().to_owned(),
        target: parts.next().unwrap_or_default().to_owned(),
        ..Request::default()
    }
}

fn header(line: &str) -> Option<(String, String)> {
    line.split_once(':')
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
}

/// Every ```` ```http ```` block of `text`, with the line it starts on and its
/// annotation; `Err` names a block without one.
fn blocks(path: &Path, text: &str) -> Vec<(usize, String, Vec<String>)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "```http" {
            let note = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim())
                .filter(|l| l.starts_with("<!-- example") && l.ends_with("-->"))
                .unwrap_or_else(|| {
                    panic!(
                        "{}:{}: an http example without an `<!-- example -->` note",
                        path.display(),
                        i + 1
                    )
                })
                .trim_start_matches("<!-- example")
                .trim_end_matches("-->")
                .trim()
                .trim_start_matches(':')
                .trim()
                .to_owned();
            let start = i + 1;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "```" {
                body.push(lines[i].to_owned());
                i += 1;
            }
            out.push((start, note, body));
        }
        i += 1;
    }
    out
}

fn parse(line: usize, note: &str, body: &[String]) -> Option<Example> {
    if note.starts_with("not run") {
        assert!(
            note.len() > "not run, ".len(),
            "line {line}: say why it is not run"
        );
        return None;
    }
    let mut as_client = None;
    let mut given_request = None;
    for part in note.split_whitespace() {
        if let Some(id) = part.strip_prefix("as=") {
            as_client = Some(id.to_owned());
        }
    }
    if let Some((_, rest)) = note.split_once("request=\"") {
        given_request = rest.split_once('"').map(|(r, _)| request_line(r));
    }
    let short = body.iter().any(|l| l.trim_start().starts_with('→'));
    let exchanges = if short {
        parse_short(body)
    } else {
        parse_full(body, given_request)
    };
    assert!(!exchanges.is_empty(), "line {line}: no request");
    Some(Example {
        line,
        as_client,
        exchanges,
    })
}

/// `GET /x` [body lines] `→ 200 {json…}` [json lines], repeated.
fn parse_short(body: &[String]) -> Vec<(Request, Option<Answer>)> {
    let mut out: Vec<(Request, Option<Answer>)> = Vec::new();
    for line in body {
        let trimmed = line.trim();
        if is_request_line(trimmed) {
            out.push((request_line(trimmed), None));
        } else if let Some(rest) = trimmed.strip_prefix('→') {
            let rest = rest.trim();
            let (status, json) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some((_, answer)) = out.last_mut() {
                *answer = Some(Answer {
                    status: status.parse().unwrap(),
                    headers: Vec::new(),
                    body: json.to_owned(),
                });
            }
        } else if let Some((request, answer)) = out.last_mut() {
            match answer {
                Some(a) => a.body.push_str(line),
                None => request.body.push_str(trimmed),
            }
        }
    }
    out
}

/// A request (line, headers, body) and, after `HTTP/1.1 …`, its answer; or an answer
/// alone, to the note's `request`.
fn parse_full(body: &[String], given: Option<Request>) -> Vec<(Request, Option<Answer>)> {
    let answer_at = body.iter().position(|l| l.starts_with("HTTP/1.1 "));
    let (request_part, answer_part) = body.split_at(answer_at.unwrap_or(body.len()));
    let request = match given {
        Some(r) => r,
        None => {
            let mut lines = request_part.iter();
            let mut request = request_line(lines.next().expect("a request line"));
            let mut in_body = false;
            for line in lines {
                if in_body {
                    request.body.push_str(line.trim());
                } else if line.trim().is_empty() {
                    in_body = true;
                } else if let Some(h) = header(line) {
                    request.headers.push(h);
                }
            }
            request
        }
    };
    let answer = answer_part.split_first().map(|(status_line, rest)| {
        let mut answer = Answer {
            status: status_line.split(' ').nth(1).unwrap().parse().unwrap(),
            ..Answer::default()
        };
        let mut in_body = false;
        for line in rest {
            if in_body {
                answer.body.push_str(line);
            } else if line.trim().is_empty() {
                in_body = true;
            } else if let Some(h) = header(line) {
                answer.headers.push(h);
            }
        }
        answer
    });
    vec![(request, answer)]
}

/// The documented JSON with its `…` turned into markers: `"\u{0}any"` (any value),
/// `"\u{0}more": true` (an object's further members), `"\u{0}more"` (further items).
fn pattern(text: &str) -> Value {
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    let chars: Vec<char> = text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if in_string {
            out.push(*c);
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => escaped = false,
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push('"');
            }
            '…' => {
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                let previous = out.trim_end().chars().last();
                match (previous, next) {
                    (Some(',' | '{'), Some('}')) => out.push_str("\"\\u0000more\": true"),
                    (Some(',' | '['), Some(']')) => out.push_str("\"\\u0000more\""),
                    _ => out.push_str("\"\\u0000any\""),
                }
            }
            c => out.push(*c),
        }
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Where `actual` differs from the documented `expected` pattern.
fn differences(expected: &Value, actual: &Value, at: &str, out: &mut Vec<String>) {
    match (expected, actual) {
        // A bare `…`, or the string "…": any value at all.
        (Value::String(s), _) if s == "\u{0}any" || s == "…" => {}
        (Value::String(s), Value::String(a)) if varying(s) || s.ends_with('…') => {
            let fits = match varying(s) {
                true => varying(a) && is_request_id(s) == is_request_id(a),
                false => a.starts_with(s.trim_end_matches('…')),
            };
            if !fits {
                out.push(format!("{at}: expected a value like {s:?}, got {a:?}"));
            }
        }
        (Value::Object(e), Value::Object(a)) => {
            let more = e.contains_key("\u{0}more");
            for (key, value) in e.iter().filter(|(k, _)| *k != "\u{0}more") {
                match a.get(key) {
                    Some(got) => differences(value, got, &format!("{at}.{key}"), out),
                    None => out.push(format!("{at}.{key}: missing")),
                }
            }
            if !more {
                for key in a.keys().filter(|k| !e.contains_key(*k)) {
                    out.push(format!("{at}.{key}: not documented"));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            let more = e.last().is_some_and(|v| v == "\u{0}more");
            let listed = e.len() - usize::from(more);
            if a.len() < listed || (!more && a.len() != listed) {
                out.push(format!("{at}: {} items, documented {}", a.len(), e.len()));
            }
            for (i, (value, got)) in e.iter().take(listed).zip(a).enumerate() {
                differences(value, got, &format!("{at}[{i}]"), out);
            }
        }
        (e, a) if e != a => out.push(format!("{at}: expected {e}, got {a}")),
        _ => {}
    }
}

/// A request id (`0214e005b87524e0-0000002a`) or a UTC timestamp
/// (`2026-12-01T04:32:34Z`): documented as an example of its kind, since each run
/// makes new ones.
fn varying(text: &str) -> bool {
    is_request_id(text) || is_timestamp(text)
}

fn is_request_id(text: &str) -> bool {
    let hex = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    text.split_once('-')
        .is_some_and(|(a, b)| a.len() == 16 && b.len() == 8 && hex(a) && hex(b))
}

fn is_timestamp(text: &str) -> bool {
    let shape: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    shape == "9999-99-99T99:99:99Z"
}

/// A request body with its `…` strings taken from the last login answer.
fn fill(body: &str, session: &Map<String, Value>) -> String {
    let Ok(Value::Object(mut json)) = serde_json::from_str::<Value>(body) else {
        return body.to_owned();
    };
    for (key, value) in json.iter_mut() {
        if value.as_str().is_some_and(|s| s.ends_with('…')) {
            *value = session.get(key).cloned().unwrap_or(Value::Null);
        }
    }
    Value::Object(json).to_string()
}

async fn run_file(name: &str) -> usize {
    let path = repo().join("docs").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let backend = tollgate_demo_backend::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = TempDir::new();
    let config = shipped_config(dir.path(), &format!("http://{}", backend.addr()), |_, t| t);
    let snapshot = tollgate_policy::load(&config).unwrap();
    let gateway = GatewayProcess::start(&config);
    gateway.wait_ready().await;
    let mut session = Map::new();
    let mut failures = Vec::new();
    let mut ran = 0;
    for (line, note, body) in blocks(&path, &text) {
        let Some(example) = parse(line, &note, &body) else {
            continue;
        };
        for (request, answer) in &example.exchanges {
            let token = match &example.as_client {
                Some(client) => {
                    let mut claims = Map::new();
                    claims.insert("clientId".into(), Value::from(client.as_str()));
                    tollgate_proxy::rehearsal::sign(&snapshot, &claims).unwrap()
                }
                None => session
                    .get("token")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            };
            let mut raw_request = format!(
                "{} {} HTTP/1.1\r\nhost: gateway.test\r\n",
                request.method, request.target
            );
            for (name, value) in &request.headers {
                let value = match name.eq_ignore_ascii_case("authorization") {
                    true => format!("Bearer {token}"),
                    false => value.clone(),
                };
                raw_request.push_str(&format!("{name}: {value}\r\n"));
            }
            if request.headers.is_empty() && example.as_client.is_some() {
                raw_request.push_str(&format!("authorization: Bearer {token}\r\n"));
            }
            let body = fill(&request.body, &session);
            if !body.is_empty() {
                if !request
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                {
                    raw_request.push_str("content-type: application/json\r\n");
                }
                raw_request.push_str(&format!("content-length: {}\r\n", body.len()));
            }
            raw_request.push_str("connection: close\r\n\r\n");
            raw_request.push_str(&body);
            let response = raw(gateway.addr, raw_request.as_bytes()).await;
            ran += 1;
            let place = format!(
                "docs/{name}:{} {} {}",
                example.line, request.method, request.target
            );
            check(&place, answer.as_ref(), &response, &mut failures);
            if let Ok(Value::Object(json)) = serde_json::from_slice::<Value>(&response.body) {
                if json.contains_key("refreshToken") {
                    session = json;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "examples in docs/{name} that the gateway does not answer as written:\n{}",
        failures.join("\n")
    );
    ran
}

fn check(place: &str, answer: Option<&Answer>, response: &RawResponse, failures: &mut Vec<String>) {
    let body = String::from_utf8_lossy(&response.body);
    let Some(answer) = answer else {
        // A request shown alone must succeed.
        if !(200..300).contains(&response.status) {
            failures.push(format!("{place}: {} {body}", response.status));
        }
        return;
    };
    if answer.status != response.status {
        failures.push(format!(
            "{place}: status {} documented, got {}: {body}",
            answer.status, response.status
        ));
        return;
    }
    for (name, value) in &answer.headers {
        // A documented header must be there; `…` ends a prefix, and a request id is
        // any request id.
        let fits = match response.header(name) {
            None => false,
            Some(got) if name.eq_ignore_ascii_case("x-request-id") => is_request_id(got),
            Some(got) => match value.split_once('…') {
                Some((prefix, _)) => got.starts_with(prefix),
                None => got == value,
            },
        };
        if !fits {
            let got = response.header(name).unwrap_or("(none)");
            failures.push(format!(
                "{place}: {name}: documented {value:?}, got {got:?}"
            ));
        }
    }
    if answer.body.trim().is_empty() {
        return;
    }
    let actual: Value = match serde_json::from_slice(&response.body) {
        Ok(v) => v,
        Err(_) => return failures.push(format!("{place}: the answer is not JSON: {body}")),
    };
    let mut diffs = Vec::new();
    differences(&pattern(&answer.body), &actual, "$", &mut diffs);
    for d in diffs {
        failures.push(format!("{place}: {d}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_guide_s_examples_run_as_written() {
    assert!(run_file("frontend.md").await >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_catalogue_s_examples_run_as_written() {
    assert!(run_file("errors.md").await >= 1);
}

#[test]
fn documented_json_reads_with_its_elisions() {
    let p = pattern(r#"{"a":"eyJ…","b":…,"c":[1, …],"d":{"x":1, …},"f":"…", …}"#);
    let actual =
        serde_json::json!({"a":"eyJhbG","b":[3],"c":[1,2,3],"d":{"x":1,"y":2},"e":0,"f":7});
    let mut diffs = Vec::new();
    differences(&p, &actual, "$", &mut diffs);
    assert!(diffs.is_empty(), "{diffs:?}");
    let ids = pattern(r#"{"requestId":"0214e005b87524e0-0000002a","at":"2026-12-01T04:32:34Z"}"#);
    let now =
        serde_json::json!({"requestId":"9294198c13ce2a70-00000007","at":"2031-01-02T03:04:05Z"});
    differences(&ids, &now, "$", &mut diffs);
    assert!(diffs.is_empty(), "{diffs:?}");
    let wrong = serde_json::json!({"requestId":"nope","at":"tomorrow"});
    differences(&ids, &wrong, "$", &mut diffs);
    assert_eq!(diffs.len(), 2, "{diffs:?}");
    diffs.clear();
    let strict = pattern(r#"{"a":"x…","c":[1],"d":{"x":2}}"#);
    differences(&strict, &actual, "$", &mut diffs);
    assert_eq!(
        diffs,
        [
            "$.a: expected a value like \"x…\", got \"eyJhbG\"",
            "$.c: 3 items, documented 1",
            "$.d.x: expected 2, got 1",
            "$.d.y: not documented",
            "$.b: not documented",
            "$.e: not documented",
            "$.f: not documented",
        ]
    );
}
