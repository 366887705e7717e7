//! End-to-end tests: the real `tollgate` binary in front of the demo backend, over real
//! sockets on 127.0.0.1, checking what the backend actually received.

// This whole crate is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod attacks;
mod auth;
mod browser;
mod browser_side;
mod cli;
mod contract;
mod credits;
mod deploy;
mod doc_examples;
mod endpoints;
mod framing;
mod jwks;
mod lifecycle;
mod limits;
mod policy_cases;
mod proxying;
mod rewriting;
mod robustness;
mod sessions;
mod shared_limits;
mod support;
mod tls;
