//! Process metrics, rendered in the Prometheus text format on the admin listener.
//!
//! Plain atomic counters: the set is small and fixed, so a registry would add weight
//! without adding anything. Latency is kept per route ([`Histogram`]s): the whole
//! request by method and status class, and the upstream's response head. Labels are
//! bounded: route names from the configuration (`-` before a route was found), eight
//! method names (`other` for the rest) and five status classes; never paths or
//! client ids. The metrics live as long as the process, so a reload keeps them.
//! Recording a request's latency costs about 800 instructions (callgrind,
//! `tests/bench/instructions.sh`: 69,952 → 70,749 per anonymous request, +1.1%).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::histogram::Histogram;

use crate::caller::AuthMethod;
use crate::errors::{Family, Problem};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class, 1xx..5xx.
    responses: [AtomicU64; 5],
    /// Upstream failures by kind (`unavailable`, `timeout`, `invalid_response`).
    upstream_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Every problem answered, by code.
    problems: Mutex<BTreeMap<&'static str, u64>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    connections_open: AtomicI64,
    /// Connections closed on accept: `server.max_connections` were open.
    connections_refused: AtomicU64,
    /// TLS handshakes: completed with HTTP/1.1, completed with HTTP/2, failed.
    tls_handshakes: [AtomicU64; 3],
    /// Connections from `server.proxy_protocol_from` closed for a missing or bad header.
    proxy_headers_refused: AtomicU64,
    /// Authenticated requests by method: none, jwt, api_key, webhook.
    authenticated: [AtomicU64; 4],
    /// Refused requests by problem code.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests per API key id: who still has to migrate.
    api_key_use: Mutex<BTreeMap<String, u64>>,
    /// Latency by route name.
    times: RwLock<BTreeMap<String, Box<RouteTimes>>>,
}

/// The method labels of the duration histograms.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

/// One route's latency.
#[derive(Debug, Default)]
struct RouteTimes {
    /// The whole request, by method and status class.
    requests: [[Histogram; 5]; METHODS.len()],
    /// From sending the request upstream to the response head (or the failure).
    upstream: Histogram,
}

/// The status class, 1xx..5xx, as an index 0..5.
fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

fn method_index(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1)
}

/// A label value as the exposition format wants it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records a finished request: how long it took in all, and how long the upstream
    /// took to answer its head when it was forwarded.
    pub fn observe_request(
        &self,
        route: &str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
        upstream: Option<Duration>,
    ) {
        let class = class_index(status);
        let method = method_index(method);
        let record = |times: &RouteTimes| {
            times.requests[method][class].observe(elapsed);
            if let Some(upstream) = upstream {
                times.upstream.observe(upstream);
            }
        };
        if let Some(times) = self
            .times
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(route)
        {
            record(times);
            return;
        }
        let mut times = self.times.write().unwrap_or_else(PoisonError::into_inner);
        record(times.entry(route.to_owned()).or_default());
    }

    fn render_times(&self, out: &mut String) {
        let times = self.times.read().unwrap_or_else(PoisonError::into_inner);
        out.push_str("# HELP tollgate_request_duration_seconds Time from the request head to the end of the response, by route, method and status class.\n");
        out.push_str("# TYPE tollgate_request_duration_seconds histogram\n");
        for (route, t) in times.iter() {
            let route = label(route);
            for (method, by_class) in METHODS.iter().zip(&t.requests) {
                for (class, h) in by_class.iter().enumerate() {
                    if h.count() > 0 {
                        let labels = format!(
                            "route=\"{route}\",method=\"{method}\",class=\"{}xx\"",
                            class + 1
                        );
                        h.render(out, "tollgate_request_duration_seconds", &labels);
                    }
                }
            }
        }
        out.push_str("# HELP tollgate_upstream_response_seconds Time from sending a request upstream to its response head (or failure), by route.\n");
        out.push_str("# TYPE tollgate_upstream_response_seconds histogram\n");
        for (route, t) in times.iter() {
            if t.upstream.count() > 0 {
                let labels = format!("route=\"{}\"", label(route));
                t.upstream
                    .render(out, "tollgate_upstream_response_seconds", &labels);
            }
        }
    }

    pub fn count_response(&self, status: StatusCode) {
        self.responses[class_index(status)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_auth(&self, method: AuthMethod, key_id: Option<&str>) {
        let index = match method {
            AuthMethod::None => 0,
            AuthMethod::Jwt => 1,
            AuthMethod::ApiKey => 2,
            AuthMethod::Webhook => 3,
        };
        self.authenticated[index].fetch_add(1, Ordering::Relaxed);
        if let Some(id) = key_id {
            let mut map = self.api_key_use.lock().unwrap_or_else(|p| p.into_inner());
            match map.get_mut(id) {
                Some(n) => *n += 1,
                None => {
                    map.insert(id.to_owned(), 1);
                }
            }
        }
    }

    /// Counts a problem by its code, and by its family where a metric groups them.
    pub fn count_problem(&self, problem: &dyn Problem) {
        let bump = |map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str| {
            let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
            *map.entry(key).or_insert(0) += 1;
        };
        bump(&self.problems, problem.code());
        match problem.family() {
            Family::Auth => bump(&self.refused, problem.code()),
            Family::Upstream { kind } => bump(&self.upstream_errors, kind),
            _ => {}
        }
    }

    pub fn count_reload(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads_failed(&self) -> u64 {
        self.reloads_failed.load(Ordering::Relaxed)
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        usize::try_from(self.connections_open.load(Ordering::Relaxed)).unwrap_or(0)
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake: `Some(h2)` when it completed (and whether ALPN chose HTTP/2),
    /// `None` when it failed or timed out.
    pub fn tls_handshake(&self, completed: Option<bool>) {
        let i = match completed {
            Some(false) => 0,
            Some(true) => 1,
            None => 2,
        };
        self.tls_handshakes[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn proxy_header_refused(&self) {
        self.proxy_headers_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(1024);
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str("# HELP tollgate_responses_total Responses sent, by status class.\n");
        out.push_str("# TYPE tollgate_responses_total counter\n");
        for (i, c) in self.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "tollgate_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                get(c)
            );
        }
        out.push_str(
            "# HELP tollgate_upstream_errors_total Upstream requests that failed, by kind.\n",
        );
        out.push_str("# TYPE tollgate_upstream_errors_total counter\n");
        {
            let upstream = self
                .upstream_errors
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for kind in ["unavailable", "timeout", "invalid_response"] {
                let n = upstream.get(kind).copied().unwrap_or(0);
                let _ = writeln!(out, "tollgate_upstream_errors_total{{kind=\"{kind}\"}} {n}");
            }
        }
        out.push_str("# HELP tollgate_problems_total Responses the gateway answered with a problem document, by code.\n");
        out.push_str("# TYPE tollgate_problems_total counter\n");
        for (code, n) in self
            .problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "tollgate_problems_total{{code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP tollgate_config_reloads_total Configuration reloads, by result.\n");
        out.push_str("# TYPE tollgate_config_reloads_total counter\n");
        let _ = writeln!(
            out,
            "tollgate_config_reloads_total{{result=\"success\"}} {}",
            get(&self.reloads_ok)
        );
        let _ = writeln!(
            out,
            "tollgate_config_reloads_total{{result=\"failure\"}} {}",
            get(&self.reloads_failed)
        );
        out.push_str(
            "# HELP tollgate_auth_total Requests let through, by authentication method.\n",
        );
        out.push_str("# TYPE tollgate_auth_total counter\n");
        for (method, c) in ["none", "jwt", "api_key", "webhook"]
            .iter()
            .zip(&self.authenticated)
        {
            let _ = writeln!(out, "tollgate_auth_total{{method=\"{method}\"}} {}", get(c));
        }
        out.push_str(
            "# HELP tollgate_auth_refused_total Requests refused by authentication, by code.\n",
        );
        out.push_str("# TYPE tollgate_auth_refused_total counter\n");
        for (code, n) in self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "tollgate_auth_refused_total{{code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP tollgate_api_key_requests_total Requests authenticated by each legacy API key.\n");
        out.push_str("# TYPE tollgate_api_key_requests_total counter\n");
        for (key, n) in self
            .api_key_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "tollgate_api_key_requests_total{{key_id=\"{}\"}} {n}",
                label(key)
            );
        }
        out.push_str("# HELP tollgate_connections_open Client connections currently open.\n");
        out.push_str("# TYPE tollgate_connections_open gauge\n");
        let _ = writeln!(
            out,
            "tollgate_connections_open {}",
            self.connections_open.load(Ordering::Relaxed)
        );
        out.push_str("# HELP tollgate_connections_refused_total Client connections closed on accept because server.max_connections were open.\n");
        out.push_str("# TYPE tollgate_connections_refused_total counter\n");
        let _ = writeln!(
            out,
            "tollgate_connections_refused_total {}",
            get(&self.connections_refused)
        );
        out.push_str("# HELP tollgate_tls_handshakes_total TLS handshakes on the gateway's listeners, by result and the protocol ALPN chose.\n");
        out.push_str("# TYPE tollgate_tls_handshakes_total counter\n");
        for (labels, c) in [
            "result=\"success\",protocol=\"http/1.1\"",
            "result=\"success\",protocol=\"h2\"",
            "result=\"failure\",protocol=\"\"",
        ]
        .iter()
        .zip(&self.tls_handshakes)
        {
            let _ = writeln!(out, "tollgate_tls_handshakes_total{{{labels}}} {}", get(c));
        }
        out.push_str("# HELP tollgate_proxy_protocol_refused_total Connections from server.proxy_protocol_from closed for a missing or invalid PROXY protocol header.\n");
        out.push_str("# TYPE tollgate_proxy_protocol_refused_total counter\n");
        let _ = writeln!(
            out,
            "tollgate_proxy_protocol_refused_total {}",
            get(&self.proxy_headers_refused)
        );
        self.render_times(&mut out);
        out
    }
}
