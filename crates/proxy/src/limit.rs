//! Stage 6, **limit**: the route's rate-limit policies, each counted by its key.
//!
//! Runs after authentication, so a policy can count by the verified client or API key.
//! The route's policies are applied in order, those that need no body first; the first
//! refusal (429 `RATE_LIMITED`) ends it, so a caller refused by one policy does not use
//! up the others (an address refused at login cannot burn a victim's per-account
//! allowance, and its body is never read). Otherwise the decision closest to exhaustion
//! is the [`Verdict`] the response's headers describe (see [`crate::respond`]); a refusal
//! is recorded the same way, so the 429 carries the headers too.
//!
//! Where the count lives: in this process (`governor`) without `[store]`, or in Redis
//! shared by every instance. While Redis cannot answer (timeout, error, open circuit)
//! each policy follows its failure mode: `local` counts here at this instance's share of
//! the limit, `open` lets the request through uncounted, `closed` refuses it with 503
//! `RATE_LIMIT_UNAVAILABLE`. One decision waits at most twice `[store] timeout` (the
//! worker's pipeline in flight, then its own) until the circuit opens; then not at all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Request;
use prometheus_client::metrics::counter as prometheus;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tollgate_policy::snapshot::{FailureMode, LimitKey, LimitPolicy};
use tollgate_policy::Route;
use tollgate_state::rate::local::LocalLimiter;
use tollgate_state::rate::shared::{self, SharedLimiter};
use tollgate_state::rate::{Decision, Quota, RateStore};
use tollgate_state::redis::StoreError;

use crate::body::{Reading, RequestBody};
use crate::errors::{GatewayError, LimitError};
use crate::exchange::{Exchange, Verdict};
use crate::part::{Build, Part};

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Local = 0,
    Redis = 1,
    /// Counted here because Redis could not answer (`local` failure mode).
    Fallback = 2,
}

/// Decisions for one policy, by source and outcome, plus the uncounted ones.
#[derive(Debug, Default)]
pub struct Counts {
    /// `[source][allowed, limited]`
    decided: [[AtomicU64; 2]; 3],
    /// Let through uncounted (`open` while Redis could not answer).
    open: AtomicU64,
    /// Refused with 503 (`closed` while Redis could not answer).
    unavailable: AtomicU64,
}

/// One policy's count in this process (the whole quota, or this instance's share of it
/// while Redis is away); kept across reloads while its numbers hold.
#[derive(Debug)]
struct Counter {
    quota: Quota,
    local: LocalLimiter,
}

/// A policy as this snapshot says it, with its (possibly older) counter. The metrics
/// are kept by name for the whole life of the process, so a reload that changes a
/// policy's numbers does not reset its counters.
#[derive(Debug)]
struct PolicyLimiter {
    policy: Arc<LimitPolicy>,
    counter: Arc<Counter>,
    counts: Arc<Counts>,
}

/// The limiters of one published snapshot, counts carried over from the previous one
/// for every policy whose numbers did not change: a reload hands nobody a fresh
/// allowance.
#[derive(Debug)]
pub struct Limiters {
    policies: HashMap<String, PolicyLimiter>,
    /// The Redis count, when `[store]` names one; an error if it cannot be used, and
    /// then every decision follows its policy's failure mode.
    shared: Option<Result<Arc<SharedLimiter>, StoreError>>,
}

impl Part for Limiters {
    fn build(build: &Build, previous: Option<&Self>) -> Self {
        let snapshot = build.snapshot;
        let shared = build.redis.configured().map(|redis| {
            let redis = redis.cloned().map_err(Clone::clone)?;
            // The same connection: keep its batch senders too.
            match previous.and_then(|p| p.shared.as_ref()) {
                Some(Ok(limiter)) if Arc::ptr_eq(limiter.redis(), &redis) => {
                    Ok(Arc::clone(limiter))
                }
                _ => Ok(SharedLimiter::new(redis, build.workers)),
            }
        });
        let share = snapshot.store.redis.as_ref().map(|r| r.instances);
        let policies = snapshot
            .limits
            .iter()
            .map(|policy| {
                let quota = policy.quota;
                let local_quota = match share {
                    Some(instances) if shared.is_some() => quota.share(instances),
                    _ => quota,
                };
                let old = previous.and_then(|p| p.policies.get(&policy.name));
                // The counts carry over; the policy (its failure mode) is this snapshot's.
                let kept = old
                    .filter(|p| {
                        p.counter.quota == quota
                            && *p.counter.local.quota() == local_quota
                            && p.policy.key == policy.key
                    })
                    .map(|p| Arc::clone(&p.counter));
                let counter = kept.unwrap_or_else(|| {
                    Arc::new(Counter {
                        quota,
                        local: LocalLimiter::new(local_quota),
                    })
                });
                let counts = old.map_or_else(Arc::default, |p| Arc::clone(&p.counts));
                let limiter = PolicyLimiter {
                    policy: Arc::clone(policy),
                    counter,
                    counts,
                };
                (policy.name.clone(), limiter)
            })
            .collect();
        Limiters { policies, shared }
    }

    fn register_metrics(&self, registry: &mut Registry) {
        // The counts live in the policies (carried across reloads by name); the family is
        // filled from them for this scrape.
        let decisions = Family::<[(&'static str, String); 3], prometheus::Counter>::default();
        let count = |policy: &str, store: &str, outcome: &str, n: u64| {
            decisions
                .get_or_create(&[
                    ("policy", policy.to_owned()),
                    ("store", store.to_owned()),
                    ("outcome", outcome.to_owned()),
                ])
                .inc_by(n);
        };
        for (name, limiter) in &self.policies {
            let c = &limiter.counts;
            for (source, store) in [
                (Source::Local, "local"),
                (Source::Redis, "redis"),
                (Source::Fallback, "fallback"),
            ] {
                for (index, outcome) in ["allowed", "limited"].iter().enumerate() {
                    let n = c.decided[source as usize][index].load(Ordering::Relaxed);
                    count(name, store, outcome, n);
                }
            }
            count(name, "none", "allowed", c.open.load(Ordering::Relaxed));
            count(
                name,
                "none",
                "unavailable",
                c.unavailable.load(Ordering::Relaxed),
            );
        }
        registry.register(
            "tollgate_rate_limit_decisions",
            "Rate-limit decisions, by policy, where they were made (local, redis, fallback: here while redis was away; none: uncounted) and outcome",
            decisions,
        );
    }
}

impl Limiters {
    /// Forgets in-process keys whose allowance is full again; called periodically.
    pub fn forget_idle(&self) {
        for limiter in self.policies.values() {
            limiter.counter.local.forget_idle();
        }
    }
}

/// Applies the route's limits. Returns the request (its body re-assembled if it had to
/// be read for a username); the verdict to report is left in the exchange.
pub async fn check(
    exchange: &mut Exchange<'_>,
    route: &Route,
    request: Request<RequestBody>,
    limiters: &Limiters,
    reading: &Reading,
) -> Result<Request<RequestBody>, GatewayError> {
    if route.limits.is_empty() {
        return Ok(request);
    }
    let counts_username = |p: &&Arc<LimitPolicy>| p.key.contains(&LimitKey::Username);
    for policy in route.limits.iter().filter(|p| !counts_username(p)) {
        apply(exchange, policy, route, None, limiters).await?;
    }
    let mut request = request;
    if route.limits.iter().any(|p| counts_username(&p)) {
        let (read, names) =
            crate::username::submitted(request, &route.username_fields, reading).await?;
        request = read;
        // No username: one shared count for such requests. Several: each is counted.
        let names = if names.is_empty() {
            vec!["-".to_owned()]
        } else {
            names
        };
        for policy in route.limits.iter().filter(counts_username) {
            for name in &names {
                apply(exchange, policy, route, Some(name), limiters).await?;
            }
        }
    }
    Ok(request)
}

/// One decision: recorded in the exchange when it is the tightest so far (a refusal
/// always is), and the refusal returned.
async fn apply(
    exchange: &mut Exchange<'_>,
    policy: &LimitPolicy,
    route: &Route,
    username: Option<&str>,
    limiters: &Limiters,
) -> Result<(), GatewayError> {
    let Some(limiter) = limiters.policies.get(&policy.name) else {
        return Ok(());
    };
    let Some((tag, rest)) = key_parts(exchange, policy, route, username) else {
        return Ok(());
    };
    let decided = decide(limiter, &tag, &rest, limiters, exchange.worker).await;
    let Some((decision, source)) = decided.inspect_err(|_| {
        // A 503 `RATE_LIMIT_UNAVAILABLE` says nothing of the other policies' counts
        // (their headers would read as this one's).
        exchange.rate_limit = None;
    })?
    else {
        return Ok(());
    };
    limiter.counts.decided[source as usize][usize::from(!decision.allowed)]
        .fetch_add(1, Ordering::Relaxed);
    let this = Verdict {
        policy: Arc::clone(&limiter.policy),
        decision,
    };
    if !decision.allowed {
        exchange.rate_limit = Some(this);
        return Err(LimitError::RateLimited {
            policy: policy.name.clone(),
            limit: policy.quota.limit(),
            period: policy.quota.period(),
            retry_after: decision.retry_after_secs(),
        }
        .into());
    }
    if exchange
        .rate_limit
        .as_ref()
        .is_none_or(|v| decision.is_tighter_than(&v.decision))
    {
        exchange.rate_limit = Some(this);
    }
    Ok(())
}

/// One policy's decision; `None` when the request passes uncounted (`open`).
async fn decide(
    limiter: &PolicyLimiter,
    tag: &str,
    rest: &str,
    limiters: &Limiters,
    worker: usize,
) -> Result<Option<(Decision, Source)>, GatewayError> {
    let counter = &limiter.counter;
    let local_key = || {
        let mut key = String::with_capacity(tag.len() + rest.len());
        key.push_str(tag);
        key.push_str(rest);
        key
    };
    let policy = &limiter.policy;
    let outcome = match &limiters.shared {
        None => return Ok(Some((counter.local.check(&local_key()), Source::Local))),
        Some(Err(e)) => Err(e.clone()),
        Some(Ok(shared)) => {
            let key = shared::key(
                &shared.redis().settings().key_prefix,
                &policy.name,
                tag,
                rest,
            );
            shared.decide(worker, key, &counter.quota).await
        }
    };
    match outcome {
        Ok(decision) => Ok(Some((decision, Source::Redis))),
        Err(e) => match policy.on_redis_error {
            FailureMode::Local => Ok(Some((counter.local.check(&local_key()), Source::Fallback))),
            FailureMode::Open => {
                limiter.counts.open.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            FailureMode::Closed => {
                limiter.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                Err(LimitError::StoreUnavailable {
                    retry_after: tollgate_state::rate::ceil_secs(e.retry_after()).max(1),
                }
                .into())
            }
        },
    }
}

/// The hash tag (the first part) and the rest of the key `policy` counts this request
/// by; `None` when the policy does not apply (an `api_key` policy and a JWT caller).
fn key_parts(
    exchange: &Exchange<'_>,
    policy: &LimitPolicy,
    route: &Route,
    username: Option<&str>,
) -> Option<(String, String)> {
    let identity = exchange.caller.identity.as_ref();
    let mut tag: Option<String> = None;
    let mut rest = String::new();
    for part in &policy.key {
        let value = match part {
            LimitKey::Client => format!("client={}", identity?.client_id),
            LimitKey::ApiKey => format!("key={}", identity?.key_id.as_deref()?),
            LimitKey::Ip => ip_key(exchange.client),
            LimitKey::Route => format!("route={}", route.name),
            LimitKey::Username => format!("user={}", username.unwrap_or("-")),
            LimitKey::Global => "global".to_owned(),
        };
        match tag {
            None => tag = Some(value),
            Some(_) => {
                rest.push('|');
                rest.push_str(&value);
            }
        }
    }
    Some((tag?, rest))
}

/// An address as a limit counts it: IPv4 whole, IPv6 by its /64 (one host usually holds
/// a whole /64, so single addresses would be a fresh allowance each).
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip={v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip={v4}"),
            None => {
                let s = v6.segments();
                format!("ip={:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_callers_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_eq!(ip_key(a), "ip=2001:db8:1:2::/64");
        assert_ne!(ip_key(a), ip_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(ip_key("::ffff:192.0.2.7".parse().unwrap()), "ip=192.0.2.7");
        assert_eq!(ip_key("192.0.2.7".parse().unwrap()), "ip=192.0.2.7");
    }
}
