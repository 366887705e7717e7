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
pub mod client_id;
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

pub use access_log::AccessSink;
pub use problem::GatewayError;
pub use server::{Gateway, SnapshotHandle};
