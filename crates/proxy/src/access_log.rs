//! One access-log line per request, written when the response body is finished (or
//! abandoned), so it carries the real byte counts and latency.
//!
//! Only what is safe to keep is logged: no header values at all; the query string with
//! the values of secret-bearing parameters (`log.redact_query_params`, compared after
//! decoding and folding, as [`tollgate_policy::param`] compares names; the configured
//! API-key header and query names are among them) and of anything shaped like a
//! credential replaced, whatever its name: a JWT, or one of the gateway's own refresh
//! tokens (`<22>.<43>` base64url). The path is logged bounded in length, with its
//! credential-shaped segments and secret `;name=value` parameters replaced too.
//!
//! The line is formatted here, directly, in the same shape as the `tracing` JSON (or
//! text) lines around it, and handed to an [`AccessSink`]. Going through `tracing`'s
//! generic formatter cost about a quarter of passthrough throughput on 2 cores.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use tollgate_policy::snapshot::{LogFormat, RedactValues};
use tollgate_policy::Snapshot;

use crate::body::{BodyStats, Observer};
use crate::metrics::Metrics;
use crate::otlp::{Exporter, Span};
use crate::trace_context::TraceContext;

/// Where access-log lines go: one complete line, newline included, at a time.
pub type AccessSink = Arc<dyn Fn(String) + Send + Sync>;

pub struct AccessLog {
    sink: AccessSink,
    snapshot: Arc<Snapshot>,
    metrics: Arc<Metrics>,
    started: Instant,
    request_id: String,
    method: Method,
    path: String,
    query: Option<String>,
    route: Option<String>,
    auth: &'static str,
    client_id: Option<String>,
    client: IpAddr,
    status: StatusCode,
    bytes_in: Arc<BodyStats>,
    bytes_out: u64,
    /// How long the upstream took to answer the head, when the request was forwarded.
    upstream: Option<Duration>,
    /// The W3C trace the request belongs to.
    trace: Option<TraceContext>,
    /// Where the request's span goes, when it is sampled and spans are exported.
    exporter: Option<Arc<Exporter>>,
}

impl AccessLog {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        sink: AccessSink,
        snapshot: Arc<Snapshot>,
        metrics: Arc<Metrics>,
        request_id: &str,
        method: &Method,
        raw_path: &str,
        query: Option<&str>,
        client: IpAddr,
        exporter: Option<Arc<Exporter>>,
    ) -> Self {
        AccessLog {
            sink,
            snapshot,
            metrics,
            started: Instant::now(),
            request_id: request_id.to_owned(),
            method: method.clone(),
            path: raw_path.to_owned(),
            query: query.map(str::to_owned),
            route: None,
            auth: "-",
            client_id: None,
            client,
            // Until an answer is written (`respond::finish`): a request dropped before
            // one had a client that closed the connection, 499 as nginx logs it.
            status: StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST),
            bytes_in: Arc::new(BodyStats::default()),
            bytes_out: 0,
            upstream: None,
            trace: None,
            exporter,
        }
    }

    /// What the upstream request body reports to.
    pub fn bytes_in(&self) -> Arc<BodyStats> {
        Arc::clone(&self.bytes_in)
    }

    pub fn set_path(&mut self, normalized: &str) {
        normalized.clone_into(&mut self.path);
    }

    pub fn set_route(&mut self, route: &str) {
        self.route = Some(route.to_owned());
    }

    /// How the caller authenticated (`none`, `jwt`, ...) and its client id.
    pub fn set_auth(&mut self, method: &'static str, client_id: Option<&str>) {
        self.auth = method;
        self.client_id = client_id.map(str::to_owned);
    }

    pub fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }

    pub fn set_trace(&mut self, trace: &TraceContext) {
        self.trace = Some(trace.clone());
    }

    pub fn set_upstream_time(&mut self, elapsed: Duration) {
        self.upstream = Some(elapsed);
    }
}

impl Observer for AccessLog {
    fn on_data(&mut self, bytes: u64) {
        self.bytes_out += bytes;
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.metrics.count_response(self.status);
        self.metrics.observe_request(
            self.route.as_deref().unwrap_or("-"),
            &self.method,
            self.status,
            self.started.elapsed(),
            self.upstream,
        );
        if self.snapshot.log.access_log {
            (self.sink)(self.line());
        }
        if let (Some(exporter), Some(trace)) = (&self.exporter, &self.trace) {
            if trace.sampled() {
                let end = SystemTime::now();
                let log = &self.snapshot.log;
                let path = bounded(redact_path(
                    &self.path,
                    &log.redact_query_params,
                    &log.redact_values,
                ));
                exporter.record(&Span {
                    trace_id: trace.trace_id,
                    span_id: trace.span_id,
                    parent: trace.parent,
                    // Wall-clock times only for an exported span: no clock read per
                    // request otherwise.
                    start: end.checked_sub(self.started.elapsed()).unwrap_or(end),
                    end,
                    method: &self.method,
                    path: &path,
                    route: self.route.as_deref(),
                    status: self.status,
                    request_id: &self.request_id,
                    auth: self.auth,
                });
            }
        }
    }
}

impl AccessLog {
    fn line(&self) -> String {
        let log = &self.snapshot.log;
        let query = self
            .query
            .as_deref()
            .map(|q| {
                bounded(redact_query(
                    q,
                    &log.redact_query_params,
                    &log.redact_values,
                ))
            })
            .unwrap_or_default();
        let path = bounded(redact_path(
            &self.path,
            &log.redact_query_params,
            &log.redact_values,
        ));
        let trace_id = self.trace.as_ref().map_or_else(
            || "-".to_owned(),
            |t| crate::trace_context::hex(&t.trace_id),
        );
        let fields: [(&str, Value); 13] = [
            ("request_id", Value::Text(&self.request_id)),
            ("trace_id", Value::Text(&trace_id)),
            ("route", Value::Text(self.route.as_deref().unwrap_or("-"))),
            ("method", Value::Text(self.method.as_str())),
            ("path", Value::Text(&path)),
            ("query", Value::Text(&query)),
            ("status", Value::Int(u64::from(self.status.as_u16()))),
            (
                "latency_ms",
                Value::Millis(self.started.elapsed().as_secs_f64() * 1000.0),
            ),
            ("bytes_in", Value::Int(self.bytes_in.bytes())),
            ("bytes_out", Value::Int(self.bytes_out)),
            ("client", Value::Addr(self.client)),
            ("auth", Value::Text(self.auth)),
            (
                "client_id",
                Value::Text(self.client_id.as_deref().unwrap_or("-")),
            ),
        ];
        let mut line = String::with_capacity(320);
        let now = rfc3339_now();
        match log.format {
            LogFormat::Json => {
                let _ = write!(line, "{{\"timestamp\":\"{now}\",\"level\":\"INFO\"");
                for (name, value) in &fields {
                    let _ = write!(line, ",\"{name}\":");
                    match value {
                        Value::Text(t) => json_string(&mut line, t),
                        Value::Int(n) => {
                            let _ = write!(line, "{n}");
                        }
                        Value::Millis(ms) => {
                            let _ = write!(line, "{ms:.3}");
                        }
                        Value::Addr(a) => {
                            let _ = write!(line, "\"{a}\"");
                        }
                    }
                }
                line.push_str(",\"target\":\"tollgate::access\"}\n");
            }
            LogFormat::Text => {
                let _ = write!(line, "{now}  INFO tollgate::access:");
                for (name, value) in &fields {
                    let _ = match value {
                        Value::Text(t) => write!(line, " {name}={t:?}"),
                        Value::Int(n) => write!(line, " {name}={n}"),
                        Value::Millis(ms) => write!(line, " {name}={ms:.3}"),
                        Value::Addr(a) => write!(line, " {name}={a}"),
                    };
                }
                line.push('\n');
            }
        }
        line
    }
}

enum Value<'a> {
    Text(&'a str),
    Int(u64),
    Millis(f64),
    Addr(IpAddr),
}

fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn rfc3339_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Logged paths and queries are cut off past this many bytes.
const MAX_LOGGED: usize = 1024;

/// `text` cut off past [`MAX_LOGGED`] bytes, saying so.
pub(crate) fn bounded(mut text: String) -> String {
    if text.len() > MAX_LOGGED {
        let mut end = MAX_LOGGED;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...[truncated]");
    }
    text
}

const REDACTED: &str = "[redacted]";

/// The status logged for a request whose client left before any answer (nginx's).
const CLIENT_CLOSED: u16 = 499;

/// The query with the value of every secret parameter (`secret_params`, folded names)
/// and of every credential-shaped value ([`looks_like_credential`]) replaced. Parameters are split at `;` as well as `&`,
/// as some backends split them ([`tollgate_policy::param`]).
///
/// A pair holding one of `values` (secrets the gateway knows in clear) anywhere, raw or
/// decoded, is redacted whatever its name.
pub fn redact_query(query: &str, secret_params: &[String], values: &RedactValues) -> String {
    let mut out = String::with_capacity(query.len());
    for piece in query.split_inclusive(['&', ';']) {
        let (pair, separator) = match piece.strip_suffix(['&', ';']) {
            Some(pair) => (pair, &piece[pair.len()..]),
            None => (piece, ""),
        };
        // A piece is secret by any reading a backend gives it: qs reads the name of
        // `x=[secret]=…` as `secret`.
        let secret = || {
            tollgate_policy::param::readings(pair.as_bytes())
                .any(|(name, _)| is_secret(&String::from_utf8_lossy(&name), secret_params))
        };
        match pair.split_once('=') {
            _ if holds_secret(pair, values) => out.push_str(REDACTED),
            Some((name, value)) if secret() || looks_like_credential(value) => {
                out.push_str(name);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ if looks_like_credential(pair) => out.push_str(REDACTED),
            _ => out.push_str(pair),
        }
        out.push_str(separator);
    }
    out
}

/// The path with credential-shaped segments, segments holding one of `values` (secrets
/// the gateway knows in clear) and secret `;name=value` parameters replaced.
pub fn redact_path(path: &str, secret_params: &[String], values: &RedactValues) -> String {
    // Most paths hold none of these: logged as they are, without splitting them. A
    // refresh token needs 66 bytes and a `.` (or an escape that could spell one).
    let may_hold_refresh_token =
        path.len() >= REFRESH_TOKEN_LEN && (path.contains('.') || path.contains('%'));
    if !path.contains("eyJ")
        && !path.contains(';')
        && !may_hold_refresh_token
        && !holds_secret(path, values)
    {
        return path.to_owned();
    }
    path.split('/')
        .map(|segment| {
            if looks_like_credential(segment) || holds_secret(segment, values) {
                return REDACTED.to_owned();
            }
            let mut parts = segment.split(';');
            let mut out = parts.next().unwrap_or_default().to_owned();
            for param in parts {
                out.push(';');
                match param.split_once('=') {
                    Some((name, value))
                        if is_secret(name, secret_params) || looks_like_credential(value) =>
                    {
                        out.push_str(name);
                        out.push('=');
                        out.push_str(REDACTED);
                    }
                    _ => out.push_str(param),
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `text`, as sent or percent-decoded, holds one of `values`.
fn holds_secret(text: &str, values: &RedactValues) -> bool {
    if values.is_empty() {
        return false;
    }
    values.found_in(text.as_bytes())
        || (text.contains(['%', '+'])
            && values.found_in(tollgate_policy::param::decode(text.as_bytes()).as_bytes()))
}

fn is_secret(raw_name: &str, secret_params: &[String]) -> bool {
    let name = tollgate_policy::param::decode(raw_name.as_bytes());
    // Over-redacting costs a log nothing: the name is also compared with everything but
    // letters, digits and `_` taken out, so a secret sent under a near miss of its name
    // (`secret%20`, refused, but still logged) is not written out; and a name that ends
    // with a secret one, letters and digits compared, is one of its kind
    // (`x_api_key`, `authToken`, `new_password`).
    let squeezed: String = name
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let backwards = letters_backwards(&name).collect::<Vec<u8>>();
    secret_params.iter().any(|secret| {
        tollgate_policy::param::means(&name, secret)
            || tollgate_policy::param::means(&squeezed, secret)
            || {
                // `name` ends with `secret`, letters and digits compared.
                let mut tail = letters_backwards(secret).peekable();
                tail.peek().is_some() && tail.enumerate().all(|(i, b)| backwards.get(i) == Some(&b))
            }
    })
}

/// The ASCII letters and digits of `text`, lower case, last first.
fn letters_backwards(text: &str) -> impl Iterator<Item = u8> + '_ {
    text.bytes()
        .rev()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| b.to_ascii_lowercase())
}

/// Whether `text`, percent-decoded (the way a backend reads it), holds a credential
/// anywhere, whatever the parameter it came in is called: a JWT, or one of the
/// gateway's own refresh tokens. (`?rt=<refresh token>` was logged in clear, since
/// only JWTs were looked for.)
pub(crate) fn looks_like_credential(text: &str) -> bool {
    looks_like_jwt(text) || looks_like_refresh_token(text)
}

/// The length of a refresh token (`<22>.<43>`): no shorter text holds one.
const REFRESH_TOKEN_LEN: usize = 22 + 1 + 43;

/// Whether `text`, percent-decoded, holds a refresh token's shape anywhere
/// ([`tollgate_auth::refresh::appears_in`], the rule that parses them).
fn looks_like_refresh_token(text: &str) -> bool {
    if text.len() < REFRESH_TOKEN_LEN {
        return false;
    }
    if !text.contains('%') {
        return tollgate_auth::refresh::appears_in(text);
    }
    tollgate_auth::refresh::appears_in(&tollgate_policy::param::decode(text.as_bytes()))
}

/// Whether `text`, percent-decoded (the way a backend reads it), holds a JWT anywhere:
/// three base64url parts, the first starting like a JSON object (`eyJ`), whatever the
/// parameter it came in is called and whatever is around it (`Bearer+…`, quotes, a
/// JSON wrapper, `%65yJ…`).
fn looks_like_jwt(text: &str) -> bool {
    // Most values hold no `eyJ`, nor an escape that could spell one: nothing to decode.
    if !text.contains("eyJ") && !text.contains('%') {
        return false;
    }
    let decoded = tollgate_policy::param::decode(text.as_bytes());
    let is_part = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'=');
    decoded.match_indices("eyJ").any(|(at, _)| {
        let run: &str = &decoded[at..];
        let end = run
            .bytes()
            .position(|b| !is_part(b) && b != b'.')
            .unwrap_or(run.len());
        let mut parts = run[..end].split('.');
        let (header, payload, signature) = (parts.next(), parts.next(), parts.next());
        header.is_some_and(|h| !h.is_empty())
            && payload.is_some_and(|p| !p.is_empty())
            && signature.is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> RedactValues {
        RedactValues::default()
    }

    #[test]
    fn dates_are_computed_in_the_gregorian_calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_782), (2026, 11, 25));
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\n");
        assert_eq!(out, r#""a\"b\\c\u000a""#);
    }

    #[test]
    fn secret_parameters_are_redacted_in_every_spelling() {
        let params = vec![
            "api_key".to_owned(),
            "token".to_owned(),
            "secret".to_owned(),
        ];
        assert_eq!(
            redact_query("a=1&API_KEY=s3cret&token=t&b", &params, &none()),
            "a=1&API_KEY=[redacted]&token=[redacted]&b"
        );
        for query in [
            "%74oken=s3cret",
            "api%5Fkey=s3cret",
            "token[]=s3cret",
            "%73ecret=s3cret",
            "api.key=s3cret",
            "TOKEN%5B0%5D=s3cret",
            "secret%20=s3cret",
            "secret%09=s3cret",
            "se-cret=s3cret",
            "%00secret=s3cret",
            // qs reads the name of these as `secret`.
            "x=[secret]=s3cret",
            "x=%5Bsecret%5D=s3cret",
            // Names that end with a secret one are of its kind.
            "x_api_key=s3cret",
            "authToken=s3cret",
            "private_token=s3cret",
            "client-secret=s3cret",
            "new.token=s3cret",
        ] {
            let logged = redact_query(query, &params, &none());
            assert!(!logged.contains("s3cret"), "{query}: {logged}");
        }
        // A secret's name inside another (not at its end) is not a secret.
        assert_eq!(
            redact_query("tokens=5&token_type=bearer&keys=1", &params, &none()),
            "tokens=5&token_type=bearer&keys=1"
        );
        // A `;` separates parameters for some backends: a secret after one is one.
        assert_eq!(
            redact_query("a=1;secret=s3cret&b=2;", &params, &none()),
            "a=1;secret=[redacted]&b=2;"
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        let logged = redact_query(&format!("x={jwt}&{jwt}"), &params, &none());
        assert!(!logged.contains("eyJ"), "{logged}");
        // However it is wrapped or escaped, once decoded.
        let escaped = format!("%65{}", &jwt[1..]);
        let dotted = jwt.replace('.', "%2E");
        for value in [
            format!("Bearer+{jwt}"),
            format!("Bearer%20{jwt}"),
            escaped,
            dotted,
            format!("%22{jwt}%22"),
            format!("%7B%22t%22%3A%22{jwt}%22%7D"),
            format!("{jwt}%0A"),
        ] {
            let logged = redact_query(&format!("a={value}"), &params, &none());
            assert_eq!(logged, "a=[redacted]", "{value}");
        }
        // Text that merely mentions `eyJ` is kept.
        assert_eq!(redact_query("q=eyJ.x", &params, &none()), "q=eyJ.x");
    }

    /// A secret the gateway knows in clear (a callback's URL secret, the admin token) is
    /// redacted wherever it is: under any name, as a path segment, escaped.
    #[test]
    fn secrets_the_gateway_holds_are_redacted_wherever_they_are() {
        let values = RedactValues::new([b"_7TogOPw-secret".to_vec()]);
        for (path, query) in [
            ("/callbacks/exotel/_7TogOPw-secret", ""),
            ("/callbacks/exotel/x_7TogOPw-secret.json", ""),
            ("/callbacks/exotel/%5F7TogOPw-secret", ""),
            ("/a", "admin=_7TogOPw-secret&b=2"),
            ("/a", "b=2;x=%5F7TogOPw%2Dsecret"),
            ("/a", "_7TogOPw-secret"),
        ] {
            let logged = format!(
                "{}?{}",
                redact_path(path, &[], &values),
                redact_query(query, &[], &values)
            );
            assert!(!logged.contains("TogOPw"), "{path}?{query}: {logged}");
            assert!(logged.contains("[redacted]"), "{logged}");
        }
        assert_eq!(
            redact_path("/callbacks/exotel/ok", &[], &values),
            "/callbacks/exotel/ok"
        );
        assert_eq!(redact_query("b=2&c=3", &[], &values), "b=2&c=3");
        assert_eq!(
            redact_query("b=2&admin=_7TogOPw-secret", &[], &values),
            "b=2&[redacted]"
        );
    }

    /// A `client_map` credential brings a legacy key per client: all are looked for at
    /// once; values too short to be secrets are not (they would blank common words).
    #[test]
    fn many_held_secrets_are_looked_for_at_once() {
        let values = RedactValues::new(
            (0..5000)
                .map(|i| format!("legacy-key-{i:05}").into_bytes())
                .chain([b"short".to_vec()]),
        );
        assert_eq!(
            redact_query("a=1&k=legacy-key-04999&b=2", &[], &values),
            "a=1&[redacted]&b=2"
        );
        assert_eq!(
            redact_path("/x/legacy%2Dkey-00000/y", &[], &values),
            "/x/[redacted]/y"
        );
        assert_eq!(redact_path("/short/x", &[], &values), "/short/x");
        assert_eq!(
            redact_query("legacy-key-5000", &[], &values),
            "legacy-key-5000"
        );
    }

    /// The gateway's own refresh tokens, under any name, escaped or wrapped, in the query
    /// or as a path segment or parameter.
    #[test]
    fn refresh_tokens_are_redacted_whatever_they_are_called() {
        let params = vec!["token".to_owned()];
        let token = "AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
        assert!(tollgate_auth::refresh::session_of(token).is_some());
        for query in [
            format!("rt={token}"),
            format!("r={token}"),
            format!("x=1&r={token}&y=2"),
            format!("r={}", token.replace('.', "%2E")),
            format!("r=%41{}", &token[1..]),
            format!("r=%22{token}%22"),
            format!("r=%7B%22refreshToken%22%3A%22{token}%22%7D"),
            format!("a=1;r={token}"),
            token.to_owned(),
        ] {
            let logged = redact_query(&query, &params, &none());
            assert!(!logged.contains("BBBBBBBBBB"), "{query}: {logged}");
            assert!(logged.contains(REDACTED), "{query}: {logged}");
        }
        assert_eq!(
            redact_query(&format!("x=1&rt={token}&y=2"), &params, &none()),
            "x=1&rt=[redacted]&y=2"
        );
        for path in [
            format!("/refresh/{token}"),
            format!("/refresh/{token}/x"),
            format!("/refresh/{}", token.replace('.', "%2E")),
            format!("/a;rt={token}/b"),
        ] {
            let logged = redact_path(&path, &params, &none());
            assert!(!logged.contains("BBBBBBBBBB"), "{path}: {logged}");
        }
        assert_eq!(
            redact_path(&format!("/refresh/{token}/x"), &params, &none()),
            "/refresh/[redacted]/x"
        );
        // Ordinary long paths and values with dots are kept as they are.
        let ordinary = "/static/assets/application-3f2a9c1d7e5b4a8f.bundle.min.js/v2/extra/padding";
        assert_eq!(redact_path(ordinary, &params, &none()), ordinary);
        assert_eq!(
            redact_query(
                "file=report.2026-01-01.final.version.csv&q=a.b",
                &params,
                &none()
            ),
            "file=report.2026-01-01.final.version.csv&q=a.b"
        );
    }

    #[test]
    fn refused_paths_are_redacted_and_bounded() {
        let params = vec!["token".to_owned()];
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        let logged = redact_path(&format!("/a/{jwt}/b;%74oken=s3cret;x=1"), &params, &none());
        assert_eq!(logged, "/a/[redacted]/b;%74oken=[redacted];x=1");
        let long = bounded("/a".repeat(2000));
        assert!(long.len() < MAX_LOGGED + 20 && long.ends_with("[truncated]"));
    }
}
