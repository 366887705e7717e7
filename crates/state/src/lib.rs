//! Tollgate's shared state: what a decision about one request remembers of earlier ones.
//!
//! Every kind of state is a trait with an in-process implementation and a Redis one, so
//! one instance needs nothing else and several share exact state:
//!
//! - [`rate`]: rate limiting with GCRA ([`rate::RateStore`]) — in process with
//!   `governor`, or in Redis as one atomic Lua script.
//! - [`replay`]: callback nonces remembered for a window ([`replay::NonceStore`]).
//! - [`redis`]: the one Redis connection layer every shared feature uses — a pipelined
//!   connection per data-plane worker, short timeouts, and a [`breaker`] so an outage
//!   costs no latency.
//!
//! Later kinds (the token ledger, refresh-token families, revocations) take the same
//! shape. Nothing here speaks HTTP.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod rate;
pub mod redis;
pub mod replay;

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so stores can be chosen at run time (`Arc<dyn RateStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
