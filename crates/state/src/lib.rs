//! Tollgate's shared state: what a decision about one request remembers of earlier ones.
//!
//! - [`rate`]: rate limiting with GCRA — in process with `governor`, or in Redis as one
//!   atomic Lua script when several instances must share one count.
//! - [`redis`]: the Redis connection every shared feature uses — one multiplexed
//!   connection per data-plane worker, short timeouts, and a [`breaker`] so an outage
//!   costs no latency.
//!
//! Later stages (the token ledger, refresh-token families, revocations) live here too,
//! each with an in-process and a Redis implementation. Nothing here speaks HTTP.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod rate;
pub mod redis;
pub mod replay;
