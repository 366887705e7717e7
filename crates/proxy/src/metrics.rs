//! Process metrics, rendered in the Prometheus text format on the admin listener.
//!
//! Plain atomic counters: the set is small and fixed, so a registry would add weight
//! without adding anything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use http::StatusCode;

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
    /// Authenticated requests by method: none, jwt, api_key, webhook.
    authenticated: [AtomicU64; 4],
    /// Refused requests by problem code.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Requests per API key id: who still has to migrate.
    api_key_use: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn count_response(&self, status: StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
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
                "tollgate_api_key_requests_total{{key_id=\"{key}\"}} {n}"
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
        out
    }
}
