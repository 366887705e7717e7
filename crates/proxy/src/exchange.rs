//! The request context: everything one request accumulates on its way through the
//! stages, in one place the stages take by `&mut`.
//!
//! Connection facts (peer, client address, scheme, request id) are set when the request
//! arrives; routing sets the route; authentication the caller (and the credentials it
//! consumed, so rewrite strips exactly those); the limit stage its verdict; later stages
//! their own (CORS, credits). [`crate::respond::decorate`] then writes every response —
//! success or error — from it, so no stage hands facts to another through out-parameters.
//!
//! The types the exchange carries live here, so that the stages that produce them and
//! the one that reads them depend on this module, and it on none of them.

use std::net::IpAddr;
use std::sync::Arc;

use tollgate_policy::snapshot::LimitPolicy;
use tollgate_policy::{Route, Snapshot};
use tollgate_state::rate::Decision;

use crate::access_log::AccessLog;
pub use crate::caller::{AuthMethod, Caller, Consumed, Identity};
use crate::metrics::InFlight;
use crate::reservation::{Hold, KeyClaim};
use crate::trace_context::TraceContext;

/// How the client reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// TLS (the listener terminates it). Every stage already follows the connection's
    /// scheme; no listener terminates TLS yet, so nothing constructs this outside tests.
    #[cfg_attr(not(test), allow(dead_code))]
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One request in flight.
pub struct Exchange<'a> {
    /// The one snapshot this request is judged by.
    pub snapshot: &'a Snapshot,
    /// The data-plane worker serving it (its upstream pool, its Redis connection).
    pub worker: usize,
    /// The TCP peer.
    pub peer: IpAddr,
    /// The client: the peer, or the `X-Forwarded-For` client through trusted proxies.
    pub client: IpAddr,
    pub scheme: Scheme,
    pub request_id: String,
    /// The W3C trace it belongs to, continued to the backend.
    pub trace: TraceContext,
    /// Seconds since the epoch when the request arrived.
    pub now: u64,
    /// The route, once routing has chosen one.
    pub route: Option<&'a Route>,
    pub caller: Caller,
    /// The rate-limit decision the response reports (set by the limit stage, allowed or
    /// refused).
    pub rate_limit: Option<Verdict>,
    /// What CORS decided for this request (the CORS stage).
    pub cors: Cors,
    /// What this request is charged (the metering stage), for the response headers.
    pub metering: Metering,
    /// The open reservation, until the response head settles it.
    pub hold: Option<Hold>,
    /// The claim on the request's `Idempotency-Key`, until its answer is kept.
    pub key_claim: Option<KeyClaim>,
    /// Whether the gateway wrote the answer itself (an endpoint, the login wrap): such
    /// answers carry the gateway's security headers.
    pub own_answer: bool,
    /// Its place among the requests in flight (`server.max_connections`), once admitted.
    /// A backend exchange that outlives its client keeps a share of it.
    pub in_flight: Option<InFlight>,
    pub log: AccessLog,
}

/// The rate-limit decision a response reports: the one closest to exhaustion, and its
/// policy.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub policy: Arc<LimitPolicy>,
    pub decision: Decision,
}

/// The CORS decision for a request (the CORS stage).
#[derive(Debug, Clone, Default)]
pub enum Cors {
    /// No policy for the request: no CORS header is added or removed.
    #[default]
    NotApplicable,
    /// The policy allows the origin: its headers go on the response.
    Allowed {
        /// What `Access-Control-Allow-Origin` says: the origin, or `*`.
        origin: http::HeaderValue,
        policy: Arc<tollgate_policy::snapshot::CorsPolicy>,
    },
    /// A policy applies and allows no origin of this request (it named none, or one
    /// the policy does not list): the backend's CORS headers are removed and only
    /// `Vary: Origin` is added.
    Refused,
}

/// What a request is charged in token credits (balances are the available balance
/// after the step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metering {
    /// No cost, or metering is off: no credit headers.
    #[default]
    Free,
    /// Reserved and not settled (the settlement could not be recorded: the reservation
    /// expires, refunded).
    Held { cost: u64, balance: u64 },
    /// Posted: `cost` tokens spent.
    Charged { cost: u64, balance: u64 },
    /// Voided: nothing spent.
    Refunded { balance: u64 },
    /// Refused with 402: nothing reserved.
    Short { balance: u64 },
    /// Answered from an idempotency record: not charged again.
    Replayed { balance: u64 },
    /// Refused before anything was reserved: by its idempotency key (400 malformed,
    /// 409 in flight, 422 another request), or for want of a backend credential (403).
    Refused { balance: u64 },
}
