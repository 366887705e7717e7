//! One access-log line per request, written when the response body is finished (or
//! abandoned), so it carries the real byte counts and latency.
//!
//! Only what is safe to keep is logged: no header values at all, and the query string
//! with the values of secret-bearing parameters (`log.redact_query_params`) replaced.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{Method, StatusCode};
use tollgate_policy::Snapshot;

use crate::body::Observer;
use crate::metrics::Metrics;

pub struct AccessLog {
    snapshot: Arc<Snapshot>,
    metrics: Arc<Metrics>,
    started: Instant,
    request_id: String,
    method: Method,
    path: String,
    query: Option<String>,
    route: Option<String>,
    client: IpAddr,
    status: StatusCode,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl AccessLog {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        snapshot: Arc<Snapshot>,
        metrics: Arc<Metrics>,
        request_id: &str,
        method: &Method,
        raw_path: &str,
        query: Option<&str>,
        client: IpAddr,
    ) -> Self {
        AccessLog {
            snapshot,
            metrics,
            started: Instant::now(),
            request_id: request_id.to_owned(),
            method: method.clone(),
            path: raw_path.to_owned(),
            query: query.map(str::to_owned),
            route: None,
            client,
            status: StatusCode::OK,
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: 0,
        }
    }

    /// The counter the upstream request body adds to.
    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_in)
    }

    pub fn set_path(&mut self, normalized: &str) {
        normalized.clone_into(&mut self.path);
    }

    pub fn set_route(&mut self, route: &str) {
        self.route = Some(route.to_owned());
    }

    pub fn set_status(&mut self, status: StatusCode) {
        self.status = status;
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
        let log = &self.snapshot.log;
        if !log.access_log {
            return;
        }
        let query = self
            .query
            .as_deref()
            .map(|q| redact_query(q, &log.redact_query_params));
        tracing::info!(
            target: "tollgate::access",
            request_id = %self.request_id,
            route = self.route.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            query = query.as_deref().unwrap_or(""),
            status = self.status.as_u16(),
            latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            client = %self.client,
        );
    }
}

/// The query with the value of every listed parameter (case-insensitive) replaced.
pub fn redact_query(query: &str, secret_params: &[String]) -> String {
    query
        .split('&')
        .map(|pair| {
            let name = pair.split_once('=').map_or(pair, |(k, _)| k);
            if secret_params.iter().any(|p| p.eq_ignore_ascii_case(name)) {
                format!("{name}=[redacted]")
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_parameters_are_redacted() {
        let params = vec!["api_key".to_owned(), "token".to_owned()];
        assert_eq!(
            redact_query("a=1&API_KEY=s3cret&token=t&b", &params),
            "a=1&API_KEY=[redacted]&token=[redacted]&b"
        );
    }
}
