//! OpenTelemetry span export (a runtime part): with `[tracing] otlp_url`, every request
//! of a sampled trace becomes one server span, posted in batches to the collector's
//! OTLP/HTTP endpoint in the JSON encoding.
//!
//! The span is the gateway's hop: its id is the parent id the backend received in
//! `traceparent`, its parent the client's span (when the client sent one), so the
//! collector joins browser, gateway and backend into one trace. It is recorded when the
//! access line is (the response body done), from the same fields.
//!
//! Written against the OTLP specification rather than with the `opentelemetry` crates:
//! one small JSON document per batch over the HTTP client the gateway already has, no
//! new dependency. The request path only formats the span and offers it to a bounded
//! queue (`try_send`): a slow or absent collector costs dropped spans (counted), never
//! latency.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tollgate_policy::snapshot::OtlpExport;

use crate::part::{Build, Part};
use crate::trace_context::hex;

/// Spans waiting for the exporter; past it new ones are dropped.
const QUEUE: usize = 4096;
/// Spans in one request to the collector.
const BATCH: usize = 512;
/// How long spans wait for their batch.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One post to the collector, connecting included.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one request's span says.
pub struct Span<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The client's span, when its `traceparent` named one.
    pub parent: Option<[u8; 8]>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub method: &'a Method,
    /// The normalized path, redacted as in the access log.
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub status: StatusCode,
    pub request_id: &'a str,
    pub auth: &'a str,
}

#[derive(Default)]
struct Counters {
    exported: Counter,
    dropped: Counter,
    failed_batches: Counter,
}

/// The part: `None` without `[tracing] otlp_url`.
pub struct Traces {
    exporter: Option<Arc<Exporter>>,
    counters: Arc<Counters>,
}

pub struct Exporter {
    settings: OtlpExport,
    queue: mpsc::Sender<String>,
    counters: Arc<Counters>,
}

impl Traces {
    pub fn exporter(&self) -> Option<Arc<Exporter>> {
        self.exporter.clone()
    }
}

impl Exporter {
    /// Offers one span to the exporter; dropped (and counted) when the queue is full.
    pub fn record(&self, span: &Span) {
        // A full queue drops the span before it is formatted.
        if self.queue.capacity() == 0 || self.queue.try_send(span_json(span)).is_err() {
            self.counters.dropped.inc();
        }
    }
}

impl Part for Traces {
    fn build(build: &Build, previous: Option<&Self>) -> Self {
        let counters = previous.map_or_else(Arc::default, |p| Arc::clone(&p.counters));
        let Some(settings) = build.snapshot.tracing.export.clone() else {
            return Traces {
                exporter: None,
                counters,
            };
        };
        // Kept while the settings hold: its queue and task carry over a reload.
        if let Some(kept) = previous
            .and_then(|p| p.exporter.as_ref())
            .filter(|e| e.settings == settings)
        {
            return Traces {
                exporter: Some(Arc::clone(kept)),
                counters,
            };
        }
        let (queue, spans) = mpsc::channel(QUEUE);
        tokio::spawn(export(settings.clone(), spans, Arc::clone(&counters)));
        Traces {
            exporter: Some(Arc::new(Exporter {
                settings,
                queue,
                counters: Arc::clone(&counters),
            })),
            counters,
        }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        if self.exporter.is_none() {
            return;
        }
        let c = &self.counters;
        for (name, help, counter) in [
            (
                "tollgate_otlp_spans_exported",
                "Spans the collector accepted",
                &c.exported,
            ),
            (
                "tollgate_otlp_spans_dropped",
                "Spans dropped: the queue was full, or the collector refused their batch",
                &c.dropped,
            ),
            (
                "tollgate_otlp_export_failures",
                "Batches the collector did not accept (unreachable, timeout, non-2xx)",
                &c.failed_batches,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
    }
}

/// The exporter task: batches spans and posts them until every sender is gone (the
/// settings changed, or the process ends).
async fn export(settings: OtlpExport, mut spans: mpsc::Receiver<String>, counters: Arc<Counters>) {
    let tls = tollgate_policy::client_config(settings.roots.clone(), None);
    let Ok(tls) = tls else {
        tracing::error!("cannot build the TLS client for [tracing] otlp_url: no spans exported");
        return;
    };
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        // The builder's own TCP connector, which passes https URIs on (as the JWKS
        // client's does); a plain `HttpConnector` would refuse them.
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let head = resource_head(&settings.service_name);
    let mut batch: Vec<String> = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(deadline);
        let open = loop {
            tokio::select! {
                span = spans.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= BATCH {
                            break true;
                        }
                    }
                    None => break false,
                },
                _ = &mut deadline => break true,
            }
        };
        if !batch.is_empty() {
            let body = format!("{head}{}]}}]}}]}}", batch.join(","));
            let request = Request::post(settings.url.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)));
            let sent = match request {
                Ok(request) => tokio::time::timeout(POST_TIMEOUT, client.request(request)).await,
                Err(e) => {
                    // The URL was checked at load; this would be our bug.
                    tracing::error!(error = %e, "cannot build a request to [tracing] otlp_url: no spans exported");
                    return;
                }
            };
            let n = batch.len() as u64;
            match sent {
                Ok(Ok(response)) if response.status().is_success() => {
                    counters.exported.inc_by(n);
                }
                outcome => {
                    counters.failed_batches.inc();
                    counters.dropped.inc_by(n);
                    match outcome {
                        Ok(Ok(response)) => {
                            tracing::warn!(status = %response.status(), "the OTLP collector refused a batch of spans")
                        }
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot reach the OTLP collector"),
                        Err(_) => tracing::warn!("the OTLP collector did not answer in time"),
                    }
                }
            }
            batch.clear();
        }
        if !open {
            return;
        }
    }
}

/// The batch's document up to its spans array (OTLP `ExportTraceServiceRequest`).
fn resource_head(service_name: &str) -> String {
    let mut head = String::from(r#"{"resourceSpans":[{"resource":{"attributes":["#);
    attribute(&mut head, "service.name", service_name);
    let _ = write!(
        head,
        r#"]}},"scopeSpans":[{{"scope":{{"name":"tollgate","version":"{}"}},"spans":["#,
        env!("CARGO_PKG_VERSION")
    );
    head
}

fn nanos(time: SystemTime) -> u128 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// One span in the OTLP JSON encoding: ids in hex, times and integers as strings,
/// `kind` 2 (server), `status.code` 2 (error) for a 5xx.
fn span_json(span: &Span) -> String {
    let mut out = String::with_capacity(512);
    // OpenTelemetry's HTTP server span name: the method, and the route when there is one.
    let name = match span.route {
        Some(route) => format!("{} {route}", span.method),
        None => span.method.to_string(),
    };
    let _ = write!(
        out,
        r#"{{"traceId":"{}","spanId":"{}","#,
        hex(&span.trace_id),
        hex(&span.span_id)
    );
    if let Some(parent) = span.parent {
        let _ = write!(out, r#""parentSpanId":"{}","#, hex(&parent));
    }
    out.push_str(r#""name":"#);
    json_string(&mut out, &name);
    let _ = write!(
        out,
        r#","kind":2,"startTimeUnixNano":"{}","endTimeUnixNano":"{}","attributes":["#,
        nanos(span.start),
        nanos(span.end)
    );
    attribute(&mut out, "http.request.method", span.method.as_str());
    out.push(',');
    attribute(&mut out, "url.path", span.path);
    out.push(',');
    let _ = write!(
        out,
        r#"{{"key":"http.response.status_code","value":{{"intValue":"{}"}}}},"#,
        span.status.as_u16()
    );
    attribute(&mut out, "tollgate.request_id", span.request_id);
    out.push(',');
    attribute(&mut out, "tollgate.auth", span.auth);
    if let Some(route) = span.route {
        out.push(',');
        attribute(&mut out, "tollgate.route", route);
    }
    let code = match span.status.is_server_error() {
        true => 2,
        false => 0,
    };
    let _ = write!(out, r#"],"status":{{"code":{code}}}}}"#);
    out
}

fn attribute(out: &mut String, key: &str, value: &str) {
    let _ = write!(out, r#"{{"key":"{key}","value":{{"stringValue":"#);
    json_string(out, value);
    out.push_str("}}");
}

fn json_string(out: &mut String, text: &str) {
    // serde_json escapes exactly as JSON requires; a string always serializes.
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_otlp_json() {
        let start = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let span = Span {
            trace_id: [0x4b; 16],
            span_id: [0x01, 2, 3, 4, 5, 6, 7, 8],
            parent: Some([0xaa; 8]),
            start,
            end: start + Duration::from_millis(5),
            method: &Method::POST,
            path: "/campaigns/\"x\"",
            route: Some("campaigns"),
            status: StatusCode::BAD_GATEWAY,
            request_id: "r-1",
            auth: "jwt",
        };
        let doc = format!("{}{}]}}]}}]}}", resource_head("edge"), span_json(&span));
        let json: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let resource = &json["resourceSpans"][0];
        assert_eq!(
            resource["resource"]["attributes"][0]["value"]["stringValue"],
            "edge"
        );
        let s = &resource["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "4b".repeat(16));
        assert_eq!(s["spanId"], "0102030405060708");
        assert_eq!(s["parentSpanId"], "aa".repeat(8));
        assert_eq!(s["name"], "POST campaigns");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "1700000000123000000");
        assert_eq!(s["endTimeUnixNano"], "1700000000128000000");
        assert_eq!(s["status"]["code"], 2);
        let attrs: Vec<(String, serde_json::Value)> = s["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"].clone()))
            .collect();
        assert!(attrs.contains(&(
            "url.path".into(),
            serde_json::json!({"stringValue": "/campaigns/\"x\""})
        )));
        assert!(attrs.contains(&(
            "http.response.status_code".into(),
            serde_json::json!({"intValue": "502"})
        )));
        let unparented = Span {
            parent: None,
            status: StatusCode::OK,
            route: None,
            ..span
        };
        let json: serde_json::Value = serde_json::from_str(&span_json(&unparented)).unwrap();
        assert!(json.get("parentSpanId").is_none());
        assert_eq!(
            (json["name"].as_str(), json["status"]["code"].as_u64()),
            (Some("POST"), Some(0))
        );
    }
}
