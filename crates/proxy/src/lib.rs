//! Tollgate's data plane.
//!
//! [`Gateway`] binds the listeners and serves; every request goes through the stages in
//! `pipeline`, in order, against exactly one published configuration (`runtime`), and
//! accumulates what it learns in one `exchange`. Errors from every stage are small
//! typed errors (`errors`) that know their own status and code, rendered as RFC 9457
//! problem+json in one place (`problem`).
//!
//! Modules, by role:
//! - the pipeline and its stages: `pipeline`, `accept`, `normalize`, `route`, `cors`,
//!   `authenticate`, `limit`, `meter`, `rewrite`, `forward`, `respond`, and the
//!   gateway's own `endpoints`;
//! - what a request carries: `exchange`, `caller`;
//! - what the stages use: `body` (held and streamed bodies), `classify`, `client_id`,
//!   `multipart`, `username`, `headers`, `x_forwarded`, `request_id`, `trace_context`
//!   (W3C trace context) and `otlp` (its spans, exported), `cookies` (cookie mode and
//!   its CSRF check);
//! - runtime state, one part per feature (`part`): `runtime`, `redis_link`,
//!   `upstream`, `jwks`, `replay`, `sessions` (the session store and revocations),
//!   `credits` (the token ledger; a request's open money is in `reservation`), and
//!   the limiters and body budget of `limit` and `body`;
//! - errors: `errors` (a leaf) and `problem` (rendering);
//! - operations: `server` (listeners, HTTP/1.1 and HTTP/2), `tls` (termination),
//!   `proxy_protocol` (client addresses from a load balancer), `admin`, `metrics`,
//!   `access_log`;
//! - `rehearsal`: the pipeline played in process, for `tollgate test` and `explain`.

#![forbid(unsafe_code)]

mod accept;
mod access_log;
mod admin;
mod authenticate;
mod body;
mod body_digest;
mod caller;
mod classify;
mod client_id;
mod cookies;
mod cors;
mod credits;
mod endpoints;
mod errors;
mod exchange;
mod forward;
mod headers;
mod jwks;
mod limit;
mod meter;
mod method_override;
mod metrics;
mod multipart;
mod normalize;
mod otlp;
mod part;
mod pipeline;
mod problem;
mod proxy_protocol;
mod redis_link;
pub mod rehearsal;
mod replay;
mod request_id;
mod reservation;
mod respond;
mod rewrite;
mod route;
mod runtime;
mod server;
mod sessions;
mod tls;
mod trace_context;
mod upstream;
mod username;
mod x_forwarded;

#[cfg(test)]
mod testing;

pub use access_log::AccessSink;
pub use metrics::Metrics;
pub use runtime::SnapshotHandle;
pub use server::Gateway;

/// The data plane's pure functions, for benchmarks and fuzz targets only (cargo feature
/// `internals`); the modules themselves stay private.
#[cfg(feature = "internals")]
pub mod internals {
    pub use crate::classify::{classify, BodyClass};
    pub use crate::client_id::{form_body, json_body, query, Caller};
    pub use crate::multipart::{Refusal, Scanner};
    pub use crate::rewrite::upstream_uri;
}
