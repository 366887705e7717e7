//! Stage 6, **limit**: the route's rate-limit policies, each counted by its key.
//!
//! Runs after authentication, so a policy can count by the verified client or API key.
//! The route's policies are applied in order, those that need no body first; the first
//! refusal (429 `RATE_LIMITED`) ends it, so a caller refused by one policy does not use
//! up the others (an address refused at login cannot burn a victim's per-account
//! allowance, and its body is never read). Otherwise the decision closest to exhaustion
//! is the [`Verdict`] the response's headers describe (see [`crate::respond`]).
//!
//! Where the count lives: in this process (`governor`) without `[store]`, or in Redis
//! shared by every instance. While Redis cannot answer (timeout, error, open circuit)
//! each policy follows its failure mode: `local` counts here at this instance's share of
//! the limit, `open` lets the request through uncounted, `closed` refuses it with 503
//! `RATE_LIMIT_UNAVAILABLE`. One decision waits at most twice `[store] timeout` (the
//! worker's pipeline in flight, then its own) until the circuit opens; then not at all.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::Request;
use tollgate_policy::snapshot::{FailureMode, LimitKey, LimitPolicy, Route, Store};
use tollgate_policy::Snapshot;
use tollgate_state::rate::local::LocalLimiter;
use tollgate_state::rate::shared::{self, SharedLimiter};
use tollgate_state::rate::{Decision, Quota};
use tollgate_state::redis::{Redis, RedisSettings, StoreError};

use crate::authenticate::Outcome;
use crate::body::RequestBody;
use crate::problem::GatewayError;

/// The decision a response reports: the one closest to exhaustion, and its policy.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub policy: Arc<LimitPolicy>,
    pub decision: Decision,
}

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
/// while Redis is away) and its metrics; kept across reloads while its numbers hold.
#[derive(Debug)]
struct Counter {
    quota: Quota,
    local: LocalLimiter,
    counts: Counts,
}

/// A policy as this snapshot says it, with its (possibly older) counter.
#[derive(Debug)]
struct PolicyLimiter {
    policy: Arc<LimitPolicy>,
    counter: Arc<Counter>,
}

/// The limiters of one published snapshot. Built by [`Limiters::new`], which carries
/// counts over from the previous snapshot for every policy whose numbers did not
/// change: a reload does not hand anyone a fresh allowance.
#[derive(Debug)]
pub struct Limiters {
    policies: HashMap<String, PolicyLimiter>,
    /// The Redis count, when `[store]` names one; an error if it cannot be used, and
    /// then every decision follows its policy's failure mode.
    shared: Option<Result<Arc<SharedLimiter>, StoreError>>,
}

impl Limiters {
    pub fn new(snapshot: &Snapshot, previous: Option<&Limiters>, workers: usize) -> Limiters {
        let shared = shared_for(&snapshot.store, previous, workers);
        let share = snapshot.store.redis.as_ref().map(|r| r.instances);
        let policies = snapshot
            .limits
            .iter()
            .filter_map(|policy| {
                let quota = Quota::new(policy.limit, policy.period, policy.burst)?;
                let local_quota = match share {
                    Some(instances) if shared.is_some() => quota.share(instances),
                    _ => quota,
                };
                // The counts carry over; the policy (its failure mode) is this snapshot's.
                let kept = previous
                    .and_then(|p| p.policies.get(&policy.name))
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
                        counts: Counts::default(),
                    })
                });
                let limiter = PolicyLimiter {
                    policy: Arc::clone(policy),
                    counter,
                };
                Some((policy.name.clone(), limiter))
            })
            .collect();
        Limiters { policies, shared }
    }

    /// The Redis connection, when `[store]` names one that could be set up.
    pub fn redis(&self) -> Option<Arc<Redis>> {
        match &self.shared {
            Some(Ok(shared)) => Some(Arc::clone(shared.redis())),
            _ => None,
        }
    }

    /// Forgets in-process keys whose allowance is full again; called periodically.
    pub fn forget_idle(&self) {
        for limiter in self.policies.values() {
            limiter.counter.local.forget_idle();
        }
    }
}

/// The Redis limiter of `store`, reusing the previous one (its connections and batch
/// senders) if the settings did not change.
fn shared_for(
    store: &Store,
    previous: Option<&Limiters>,
    workers: usize,
) -> Option<Result<Arc<SharedLimiter>, StoreError>> {
    let config = store.redis.as_ref()?;
    let settings = RedisSettings {
        url: config.url.clone(),
        timeout: config.timeout,
        breaker_failures: config.breaker_failures,
        breaker_cooldown: config.breaker_cooldown,
        key_prefix: config.key_prefix.clone(),
    };
    if let Some(Ok(shared)) = previous
        .and_then(|p| p.shared.as_ref())
        .filter(|s| s.as_ref().is_ok_and(|s| *s.redis().settings() == settings))
    {
        return Some(Ok(Arc::clone(shared)));
    }
    Some(match Redis::new(settings, workers) {
        Ok(redis) => Ok(SharedLimiter::new(Arc::new(redis), workers)),
        Err(e) => {
            // Not a silent switch to counting here: each policy's failure mode applies.
            tracing::error!(error = %e, "cannot use the configured redis; every limit follows its on_redis_error");
            Err(StoreError::Redis(e))
        }
    })
}

/// Who the request is from, as the limit keys see it.
pub struct Subject<'a> {
    pub auth: &'a Outcome,
    pub client: IpAddr,
}

/// Applies the route's limits. Returns the request (its body re-assembled if it had to
/// be read for a username) and the verdict to report, or the refusal.
pub async fn check(
    request: Request<RequestBody>,
    route: &Route,
    subject: &Subject<'_>,
    limiters: &Limiters,
    worker: usize,
    reading: &crate::body::Reading,
) -> Result<(Request<RequestBody>, Option<Verdict>), GatewayError> {
    if route.limits.is_empty() {
        return Ok((request, None));
    }
    let counts_username = |p: &&Arc<LimitPolicy>| p.key.contains(&LimitKey::Username);
    let mut verdict: Option<Verdict> = None;
    for policy in route.limits.iter().filter(|p| !counts_username(p)) {
        apply(policy, route, subject, None, limiters, worker, &mut verdict).await?;
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
                apply(
                    policy,
                    route,
                    subject,
                    Some(name),
                    limiters,
                    worker,
                    &mut verdict,
                )
                .await?;
            }
        }
    }
    Ok((request, verdict))
}

/// One decision: folded into `verdict` when allowed, the refusal when not.
async fn apply(
    policy: &LimitPolicy,
    route: &Route,
    subject: &Subject<'_>,
    username: Option<&str>,
    limiters: &Limiters,
    worker: usize,
    verdict: &mut Option<Verdict>,
) -> Result<(), GatewayError> {
    let Some(limiter) = limiters.policies.get(&policy.name) else {
        return Ok(());
    };
    let Some((tag, rest)) = key_parts(policy, route, subject, username) else {
        return Ok(());
    };
    let Some((decision, source)) = decide(limiter, &tag, &rest, limiters, worker).await? else {
        return Ok(());
    };
    let counts = &limiter.counter.counts;
    counts.decided[source as usize][usize::from(!decision.allowed)].fetch_add(1, Ordering::Relaxed);
    let this = Verdict {
        policy: Arc::clone(&limiter.policy),
        decision,
    };
    if !decision.allowed {
        return Err(GatewayError::RateLimited(Box::new(this)));
    }
    if verdict
        .as_ref()
        .is_none_or(|v| decision.is_tighter_than(&v.decision))
    {
        *verdict = Some(this);
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
            shared.check(worker, key, &counter.quota).await
        }
    };
    match outcome {
        Ok(decision) => Ok(Some((decision, Source::Redis))),
        Err(e) => match policy.on_redis_error {
            FailureMode::Local => Ok(Some((counter.local.check(&local_key()), Source::Fallback))),
            FailureMode::Open => {
                counter.counts.open.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            FailureMode::Closed => {
                counter.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                Err(GatewayError::RateLimitUnavailable {
                    retry_after: tollgate_state::rate::ceil_secs(e.retry_after()).max(1),
                })
            }
        },
    }
}

/// The hash tag (the first part) and the rest of the key `policy` counts this request
/// by; `None` when the policy does not apply (an `api_key` policy and a JWT caller).
fn key_parts(
    policy: &LimitPolicy,
    route: &Route,
    subject: &Subject<'_>,
    username: Option<&str>,
) -> Option<(String, String)> {
    let identity = subject.auth.identity.as_ref();
    let mut tag: Option<String> = None;
    let mut rest = String::new();
    for part in &policy.key {
        let value = match part {
            LimitKey::Client => format!("client={}", identity?.client_id),
            LimitKey::ApiKey => format!("key={}", identity?.key_id.as_deref()?),
            LimitKey::Ip => ip_key(subject.client),
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

/// Appends the rate-limit metrics in the Prometheus text format.
pub fn render_metrics(limiters: &Limiters, out: &mut String) {
    out.push_str("# HELP tollgate_rate_limit_decisions_total Rate-limit decisions, by policy, where they were made (local, redis, fallback: here while redis was away; none: uncounted) and outcome.\n");
    out.push_str("# TYPE tollgate_rate_limit_decisions_total counter\n");
    let mut names: Vec<&String> = limiters.policies.keys().collect();
    names.sort();
    for name in names {
        let Some(limiter) = limiters.policies.get(name) else {
            continue;
        };
        let c = &limiter.counter.counts;
        for (source, label) in [
            (Source::Local, "local"),
            (Source::Redis, "redis"),
            (Source::Fallback, "fallback"),
        ] {
            for (index, outcome) in ["allowed", "limited"].iter().enumerate() {
                let n = c.decided[source as usize][index].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "tollgate_rate_limit_decisions_total{{policy=\"{name}\",store=\"{label}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "tollgate_rate_limit_decisions_total{{policy=\"{name}\",store=\"none\",outcome=\"allowed\"}} {}",
            c.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tollgate_rate_limit_decisions_total{{policy=\"{name}\",store=\"none\",outcome=\"unavailable\"}} {}",
            c.unavailable.load(Ordering::Relaxed)
        );
    }
    if let Some(Ok(shared)) = &limiters.shared {
        let redis = shared.redis();
        let errors = redis.errors();
        out.push_str("# HELP tollgate_redis_errors_total Redis calls that gave no answer, by reason (skipped: the circuit was open).\n");
        out.push_str("# TYPE tollgate_redis_errors_total counter\n");
        for (reason, counter) in [
            ("timeout", &errors.timeouts),
            ("error", &errors.failures),
            ("skipped", &errors.skipped),
        ] {
            let _ = writeln!(
                out,
                "tollgate_redis_errors_total{{reason=\"{reason}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP tollgate_redis_circuit_open Whether calls to Redis are being skipped after repeated failures.\n");
        out.push_str("# TYPE tollgate_redis_circuit_open gauge\n");
        let _ = writeln!(
            out,
            "tollgate_redis_circuit_open {}",
            u8::from(redis.breaker().is_open())
        );
        out.push_str(
            "# HELP tollgate_redis_circuit_opened_total Times the Redis circuit opened.\n",
        );
        out.push_str("# TYPE tollgate_redis_circuit_opened_total counter\n");
        let _ = writeln!(
            out,
            "tollgate_redis_circuit_opened_total {}",
            redis.breaker().times_opened()
        );
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
