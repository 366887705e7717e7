//! Process metrics, and the exposition of every metric on the admin listener.
//!
//! The metric types, the registry and the text formats are `prometheus-client`'s: the
//! Prometheus text format (0.0.4) by default, OpenMetrics 1.0 to a scraper that asks for
//! it. [`Metrics`] holds what belongs to the process (responses, authentication,
//! problems, connections, TLS, reloads, latency); each part of the runtime registers its
//! own next to them at every scrape ([`crate::part::Part::register_metrics`]), so a
//! reload that rebuilds a part carries its counters over and nothing is registered twice.
//!
//! Counting stays off the hash path: label values known in advance are resolved to their
//! counter once ([`Labeled`]), and per-route latency resolves the route's histograms the
//! first time it is seen ([`ByName`]), so a request pays an atomic add per counter and a
//! lock per histogram, never a label-set hash: 75,476 → 75,649 instructions per anonymous
//! request against the hand-written exposition this replaced (+0.2%; callgrind,
//! `tests/bench/instructions.sh`). Labels are bounded: route names from the
//! configuration (`-` before a route was found), eight method names (`other` for the
//! rest) and five status classes; never paths or client ids. The metrics live as long as
//! the process, so a reload keeps them.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::caller::AuthMethod;
use crate::errors::{Family as ProblemFamily, Problem};

/// A label set of one label whose value is fixed in the code.
pub type Label = [(&'static str, &'static str); 1];
/// A label set of one label whose value comes from the configuration.
pub type NameLabel = [(&'static str, String); 1];
/// The constructor of a latency family's histograms.
pub type NewHistogram = fn() -> Histogram;

/// Upper bounds of the latency buckets, in seconds: 100 µs to 30 s.
const LATENCY_BOUNDS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// A histogram of durations with the gateway's buckets.
pub fn latency() -> Histogram {
    Histogram::new(LATENCY_BOUNDS)
}

/// Records `elapsed` in `histogram`, in seconds.
pub fn observe(histogram: &Histogram, elapsed: Duration) {
    histogram.observe(elapsed.as_secs_f64());
}

/// The `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registry` as OpenMetrics text when `openmetrics`, else in the Prometheus
/// text format; returns the body and its `Content-Type`.
pub fn encode(registry: &Registry, openmetrics: bool) -> (String, &'static str) {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; the encoders' only errors are the writer's.
    if openmetrics {
        let _ = text::encode(&mut out, registry);
        (out, OPENMETRICS)
    } else {
        let _ = prometheus_text::encode(&mut out, registry);
        (out, prometheus_text::CONTENT_TYPE)
    }
}

/// A counter family whose label values are known in advance: each value's counter is
/// resolved once, so counting is an atomic add. Every value is exported, zero or not.
#[derive(Debug, Clone)]
pub struct Labeled<const N: usize> {
    family: Family<Label, Counter>,
    counters: [Counter; N],
}

impl<const N: usize> Labeled<N> {
    pub fn new(key: &'static str, values: [&'static str; N]) -> Labeled<N> {
        let family = Family::<Label, Counter>::default();
        let counters = values.map(|value| family.get_or_create_owned(&[(key, value)]));
        Labeled { family, counters }
    }

    /// The counter of the `index`th value given to [`Labeled::new`].
    pub fn at(&self, index: usize) -> &Counter {
        &self.counters[index.min(N - 1)]
    }

    /// The family, to register.
    pub fn family(&self) -> Family<Label, Counter> {
        self.family.clone()
    }
}

/// Metric handles by a label value known only at run time (a route name, an API key
/// id): looked up by `&str` without building a label set, created once on first use.
#[derive(Debug)]
struct ByName<T> {
    /// Ordered, not hashed: a few route names compare faster than they hash.
    handles: RwLock<BTreeMap<Box<str>, T>>,
}

impl<T> Default for ByName<T> {
    fn default() -> Self {
        ByName {
            handles: RwLock::default(),
        }
    }
}

impl<T> ByName<T> {
    /// Runs `with` on the handles of `name`, making them with `make` the first time.
    fn with(&self, name: &str, make: impl FnOnce() -> T, with: impl FnOnce(&T)) {
        if let Some(handles) = self
            .handles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            with(handles);
            return;
        }
        let mut all = self.handles.write().unwrap_or_else(PoisonError::into_inner);
        with(all.entry(name.into()).or_insert_with(make));
    }
}

/// The method labels of the duration histograms.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

type RequestLabels = [(&'static str, String); 3];

/// One route's latency histograms, resolved from the families the first time the route
/// is seen.
#[derive(Debug)]
struct RouteTimes {
    /// The whole request, by method and status class; made when first observed, so a
    /// route exports only the combinations it has answered.
    requests: [[std::sync::OnceLock<Histogram>; CLASSES.len()]; METHODS.len()],
    /// From sending the request upstream to the response head (or the failure).
    upstream: std::sync::OnceLock<Histogram>,
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

/// A request's place among those in flight (see [`Metrics::admit`]). Clones share the
/// place: work that outlives the request's answer (a metered exchange whose client left)
/// keeps a clone, so the request counts once, until the last clone is dropped.
#[derive(Clone)]
pub struct InFlight {
    _place: Arc<Place>,
}

struct Place(Gauge);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What belongs to the process rather than to one part of a snapshot.
#[derive(Debug)]
pub struct Metrics {
    /// Responses by status class.
    responses: Labeled<5>,
    /// Upstream failures by kind.
    upstream_errors: Labeled<3>,
    /// Every problem answered, by code.
    problems: Family<Label, Counter>,
    reloads: Labeled<2>,
    connections_open: Gauge,
    /// Requests between their head and the end of their response, every connection
    /// and HTTP version together.
    requests_in_flight: Gauge,
    /// Connections closed on accept: `server.max_connections` were open.
    connections_refused: Counter,
    /// TLS handshakes: completed with HTTP/1.1, completed with HTTP/2, failed.
    tls_handshakes: Family<[(&'static str, &'static str); 2], Counter>,
    tls_counters: [Counter; 3],
    /// Connections from `server.proxy_protocol_from` closed for a missing or bad header.
    proxy_headers_refused: Counter,
    /// Authenticated requests by method.
    authenticated: Labeled<4>,
    /// Refused requests by problem code.
    refused: Family<Label, Counter>,
    /// Requests per API key id: who still has to migrate.
    api_key_use: Family<NameLabel, Counter>,
    api_keys: ByName<Counter>,
    request_duration: Family<RequestLabels, Histogram, NewHistogram>,
    upstream_response: Family<NameLabel, Histogram, NewHistogram>,
    routes: ByName<Box<RouteTimes>>,
}

/// The upstream failure kinds, in the order of [`Metrics::upstream_errors`].
const UPSTREAM_ERRORS: [&str; 3] = ["unavailable", "timeout", "invalid_response"];

impl Default for Metrics {
    fn default() -> Metrics {
        let tls_handshakes = Family::<[(&'static str, &'static str); 2], Counter>::default();
        let tls_counters = [
            [("result", "success"), ("protocol", "http/1.1")],
            [("result", "success"), ("protocol", "h2")],
            [("result", "failure"), ("protocol", "")],
        ]
        .map(|labels| tls_handshakes.get_or_create_owned(&labels));
        Metrics {
            responses: Labeled::new("class", CLASSES),
            upstream_errors: Labeled::new("kind", UPSTREAM_ERRORS),
            problems: Family::default(),
            reloads: Labeled::new("result", ["success", "failure"]),
            connections_open: Gauge::default(),
            requests_in_flight: Gauge::default(),
            connections_refused: Counter::default(),
            tls_handshakes,
            tls_counters,
            proxy_headers_refused: Counter::default(),
            authenticated: Labeled::new("method", ["none", "jwt", "api_key", "webhook"]),
            refused: Family::default(),
            api_key_use: Family::default(),
            api_keys: ByName::default(),
            request_duration: Family::new_with_constructor(latency),
            upstream_response: Family::new_with_constructor(latency),
            routes: ByName::default(),
        }
    }
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
        let make = || {
            Box::new(RouteTimes {
                requests: Default::default(),
                upstream: std::sync::OnceLock::new(),
            })
        };
        self.routes.with(route, make, |times| {
            let requests = times.requests[method][class].get_or_init(|| {
                self.request_duration.get_or_create_owned(&[
                    ("route", route.to_owned()),
                    ("method", METHODS[method].to_owned()),
                    ("class", CLASSES[class].to_owned()),
                ])
            });
            observe(requests, elapsed);
            if let Some(upstream) = upstream {
                let histogram = times.upstream.get_or_init(|| {
                    self.upstream_response
                        .get_or_create_owned(&[("route", route.to_owned())])
                });
                observe(histogram, upstream);
            }
        });
    }

    pub fn count_response(&self, status: StatusCode) {
        self.responses.at(class_index(status)).inc();
    }

    pub fn count_auth(&self, method: AuthMethod, key_id: Option<&str>) {
        let index = match method {
            AuthMethod::None => 0,
            AuthMethod::Jwt => 1,
            AuthMethod::ApiKey => 2,
            AuthMethod::Webhook => 3,
        };
        self.authenticated.at(index).inc();
        if let Some(id) = key_id {
            let make = || {
                self.api_key_use
                    .get_or_create_owned(&[("key_id", id.to_owned())])
            };
            self.api_keys.with(id, make, |counter| {
                counter.inc();
            });
        }
    }

    /// Counts a problem by its code, and by its family where a metric groups them.
    pub fn count_problem(&self, problem: &dyn Problem) {
        let code = [("code", problem.code())];
        self.problems.get_or_create(&code).inc();
        match problem.family() {
            ProblemFamily::Auth => {
                self.refused.get_or_create(&code).inc();
            }
            ProblemFamily::Upstream { kind } => {
                if let Some(i) = UPSTREAM_ERRORS.iter().position(|k| *k == kind) {
                    self.upstream_errors.at(i).inc();
                }
            }
            _ => {}
        }
    }

    pub fn count_reload(&self, ok: bool) {
        self.reloads.at(usize::from(!ok)).inc();
    }

    pub fn reloads_failed(&self) -> u64 {
        self.reloads.at(1).get()
    }

    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        usize::try_from(self.connections_open.get()).unwrap_or(0)
    }

    /// Admits a request when fewer than `max` are in flight; it counts until the
    /// returned guard is dropped (with its response body). An HTTP/2 connection carries
    /// many requests at once, so `max_connections` alone bounds neither the memory nor
    /// the upstream connections its requests take.
    pub fn admit(&self, max: usize) -> Option<InFlight> {
        let before = self.requests_in_flight.inc();
        let place = Place(self.requests_in_flight.clone());
        (usize::try_from(before).unwrap_or(0) < max).then(|| InFlight {
            _place: Arc::new(place),
        })
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// A TLS handshake: `Some(h2)` when it completed (and whether ALPN chose HTTP/2),
    /// `None` when it failed or timed out.
    pub fn tls_handshake(&self, completed: Option<bool>) {
        let i = match completed {
            Some(false) => 0,
            Some(true) => 1,
            None => 2,
        };
        self.tls_counters[i].inc();
    }

    pub fn proxy_header_refused(&self) {
        self.proxy_headers_refused.inc();
    }

    /// Registers the process's metrics (handles to them: they keep counting).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "tollgate_responses",
            "Responses sent, by status class",
            self.responses.family(),
        );
        registry.register(
            "tollgate_upstream_errors",
            "Upstream requests that failed, by kind",
            self.upstream_errors.family(),
        );
        registry.register(
            "tollgate_problems",
            "Responses the gateway answered with a problem document, by code",
            self.problems.clone(),
        );
        registry.register(
            "tollgate_config_reloads",
            "Configuration reloads, by result",
            self.reloads.family(),
        );
        registry.register(
            "tollgate_auth",
            "Requests let through, by authentication method",
            self.authenticated.family(),
        );
        registry.register(
            "tollgate_auth_refused",
            "Requests refused by authentication, by code",
            self.refused.clone(),
        );
        registry.register(
            "tollgate_api_key_requests",
            "Requests authenticated by each legacy API key",
            self.api_key_use.clone(),
        );
        registry.register(
            "tollgate_connections_open",
            "Client connections currently open",
            self.connections_open.clone(),
        );
        registry.register(
            "tollgate_requests_in_flight",
            "Requests received and not yet answered to their end (or whose backend exchange, its client gone, still runs), over every connection",
            self.requests_in_flight.clone(),
        );
        registry.register(
            "tollgate_connections_refused",
            "Client connections closed on accept because server.max_connections were open",
            self.connections_refused.clone(),
        );
        registry.register(
            "tollgate_tls_handshakes",
            "TLS handshakes on the gateway's listeners, by result and the protocol ALPN chose",
            self.tls_handshakes.clone(),
        );
        registry.register(
            "tollgate_proxy_protocol_refused",
            "Connections from server.proxy_protocol_from closed for a missing or invalid PROXY protocol header",
            self.proxy_headers_refused.clone(),
        );
        registry.register_with_unit(
            "tollgate_request_duration",
            "Time from the request head to the end of the response, by route, method and status class",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        registry.register_with_unit(
            "tollgate_upstream_response",
            "Time from sending a request upstream to its response head (or failure), by route",
            Unit::Seconds,
            self.upstream_response.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(metrics: &Metrics, openmetrics: bool) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        encode(&registry, openmetrics).0
    }

    #[test]
    fn latency_buckets_are_cumulative_and_end_at_the_count() {
        let metrics = Metrics::default();
        for ms in [0, 3, 3, 700, 40_000] {
            metrics.observe_request(
                "r",
                &Method::GET,
                StatusCode::OK,
                Duration::from_millis(ms),
                None,
            );
        }
        let out = exposition(&metrics, false);
        let series = "tollgate_request_duration_seconds";
        let labels = "route=\"r\",method=\"GET\",class=\"2xx\"";
        for (le, n) in [
            ("0.0001", 1),
            ("0.005", 3),
            ("1", 4),
            ("30", 4),
            ("+Inf", 5),
        ] {
            let line = format!("{series}_bucket{{{labels},le=\"{le}\"}} {n}\n");
            assert!(out.contains(&line), "{line} in {out}");
        }
        assert!(
            out.contains(&format!("{series}_sum{{{labels}}} 40.706\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{series}_count{{{labels}}} 5\n")),
            "{out}"
        );
        // Only what was answered is exported: no series for methods or classes unseen.
        assert!(!out.contains("method=\"POST\""), "{out}");
        assert!(
            !out.contains("tollgate_upstream_response_seconds_count"),
            "{out}"
        );
    }

    #[test]
    fn label_values_from_the_configuration_are_escaped() {
        let metrics = Metrics::default();
        metrics.count_auth(AuthMethod::ApiKey, Some("a\"b\\c\nd"));
        metrics.observe_request(
            "say \"hi\"",
            &Method::from_bytes(b"BREW").unwrap_or(Method::GET),
            StatusCode::IM_A_TEAPOT,
            Duration::from_millis(1),
            Some(Duration::from_millis(1)),
        );
        let out = exposition(&metrics, false);
        assert!(
            out.contains("tollgate_api_key_requests_total{key_id=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "tollgate_request_duration_seconds_count{route=\"say \\\"hi\\\"\",method=\"other\",class=\"4xx\"} 1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("tollgate_upstream_response_seconds_count{route=\"say \\\"hi\\\"\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn both_formats_name_the_same_series() {
        let metrics = Metrics::default();
        metrics.count_response(StatusCode::OK);
        metrics.count_reload(false);
        metrics.observe_request(
            "r",
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(1),
            None,
        );
        let prometheus = exposition(&metrics, false);
        assert!(
            prometheus.contains("# TYPE tollgate_responses_total counter\n"),
            "{prometheus}"
        );
        assert!(
            prometheus.contains("tollgate_responses_total{class=\"2xx\"} 1\n"),
            "{prometheus}"
        );
        assert!(
            prometheus.contains("tollgate_responses_total{class=\"5xx\"} 0\n"),
            "{prometheus}"
        );
        assert!(
            prometheus.contains("tollgate_config_reloads_total{result=\"failure\"} 1\n"),
            "{prometheus}"
        );
        assert!(!prometheus.contains("# EOF"), "{prometheus}");
        let open = exposition(&metrics, true);
        assert!(
            open.contains("# TYPE tollgate_responses counter\n"),
            "{open}"
        );
        assert!(
            open.contains("tollgate_responses_total{class=\"2xx\"} 1\n"),
            "{open}"
        );
        assert!(
            open.contains("# UNIT tollgate_request_duration_seconds seconds\n"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert_eq!(metrics.reloads_failed(), 1);
    }
}
