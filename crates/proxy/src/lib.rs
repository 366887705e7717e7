//! Tollgate's data plane.
//!
//! [`Gateway`] binds the listeners and serves; every request goes through the stages in
//! [`pipeline`], in order, against exactly one policy [`Snapshot`](tollgate_policy::Snapshot).
//! Errors from every stage are typed ([`GatewayError`]) and turned into RFC 9457
//! problem+json responses by one function, [`problem::respond`].

#![forbid(unsafe_code)]

mod accept;
mod access_log;
mod admin;
mod authenticate;
mod body;
mod classify;
mod client_id;
mod forward;
mod forwarded;
mod headers;
mod jwks;
pub mod limit;
pub mod metrics;
mod multipart;
mod normalize;
pub mod pipeline;
pub mod problem;
mod replay;
mod request_id;
mod respond;
mod rewrite;
mod route;
mod server;
mod username;

#[cfg(test)]
mod testing;

/// The data plane's pure functions, for benchmarks and fuzz targets only (cargo feature
/// `internals`); the modules themselves stay private.
#[cfg(feature = "internals")]
pub mod internals {
    pub use crate::classify::{classify, BodyClass};
    pub use crate::client_id::{form_body, json_body, query, Caller};
    pub use crate::multipart::{Refusal, Scanner};
    pub use crate::rewrite::upstream_uri;
}

pub use access_log::AccessSink;
pub use problem::GatewayError;
pub use server::{Gateway, SnapshotHandle};
