//! Stage 6, **limit**: the route's rate-limit policies, each counted by its key.
//!
//! Runs after authentication, so a policy can count by the verified client or API key;
//! every policy of the route counts every request. The decision closest to exhaustion
//! is the [`Verdict`] the response's headers describe (see [`crate::respond`]); a
//! refusal is 429 `RATE_LIMITED`.
//!
//! Where the count lives: in this process (`governor`) without `[store]`, or in Redis
//! shared by every instance. While Redis cannot answer (timeout, error, open circuit)
//! each policy follows its failure mode: `local` counts here at this instance's share of
//! the limit, `open` lets the request through uncounted, `closed` refuses it with 503
//! `RATE_LIMIT_UNAVAILABLE`. Nothing waits longer than `[store] timeout`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::Request;
use sha2::{Digest, Sha256};
use tollgate_policy::snapshot::{FailureMode, LimitKey, LimitPolicy, Route, Store};
use tollgate_policy::Snapshot;
use tollgate_state::rate::local::LocalLimiter;
use tollgate_state::rate::shared::{self, SharedLimiter};
use tollgate_state::rate::{Decision, Quota};
use tollgate_state::redis::{Redis, RedisSettings};

use crate::authenticate::{read_bounded, Outcome};
use crate::body::RequestBody;
use crate::problem::GatewayError;

/// Login bodies are small; this much is read to find the username.
const MAX_LOGIN_BODY_BYTES: usize = 64 * 1024;

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

/// One policy's limiter in this process: the whole quota, or this instance's share of
/// it while Redis is away.
#[derive(Debug)]
struct PolicyLimiter {
    policy: Arc<LimitPolicy>,
    quota: Quota,
    local: LocalLimiter,
    counts: Counts,
}

/// The limiters of one published snapshot. Built by [`Limiters::new`], which carries
/// counts over from the previous snapshot for every policy whose numbers did not
/// change: a reload does not hand anyone a fresh allowance.
#[derive(Debug)]
pub struct Limiters {
    policies: HashMap<String, Arc<PolicyLimiter>>,
    /// The Redis count, when `[store]` names one.
    shared: Option<Arc<SharedLimiter>>,
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
                let local_quota = match (share, &shared) {
                    (Some(instances), Some(_)) => quota.share(instances),
                    _ => quota,
                };
                let kept = previous
                    .and_then(|p| p.policies.get(&policy.name))
                    .filter(|p| {
                        p.quota == quota
                            && *p.local.quota() == local_quota
                            && p.policy.key == policy.key
                    });
                let limiter = match kept {
                    Some(kept) => Arc::clone(kept),
                    None => Arc::new(PolicyLimiter {
                        policy: Arc::clone(policy),
                        quota,
                        local: LocalLimiter::new(local_quota),
                        counts: Counts::default(),
                    }),
                };
                Some((policy.name.clone(), limiter))
            })
            .collect();
        Limiters { policies, shared }
    }

    /// Forgets in-process keys whose allowance is full again; called periodically.
    pub fn forget_idle(&self) {
        for limiter in self.policies.values() {
            limiter.local.forget_idle();
        }
    }
}

/// The Redis limiter of `store`, reusing the previous one (its connections and batch
/// senders) if the settings did not change.
fn shared_for(
    store: &Store,
    previous: Option<&Limiters>,
    workers: usize,
) -> Option<Arc<SharedLimiter>> {
    let config = store.redis.as_ref()?;
    let settings = RedisSettings {
        url: config.url.clone(),
        timeout: config.timeout,
        breaker_failures: config.breaker_failures,
        breaker_cooldown: config.breaker_cooldown,
        key_prefix: config.key_prefix.clone(),
    };
    if let Some(shared) = previous
        .and_then(|p| p.shared.as_ref())
        .filter(|s| *s.redis().settings() == settings)
    {
        return Some(Arc::clone(shared));
    }
    match Redis::new(settings, workers) {
        Ok(redis) => Some(SharedLimiter::new(Arc::new(redis), workers)),
        Err(e) => {
            // `check` validated the URL's shape; anything else shows here.
            tracing::error!(error = %e, "cannot use the configured redis; limits count in this process");
            None
        }
    }
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
) -> Result<(Request<RequestBody>, Option<Verdict>), GatewayError> {
    if route.limits.is_empty() {
        return Ok((request, None));
    }
    let counts_usernames = route
        .limits
        .iter()
        .any(|l| l.key.contains(&LimitKey::Username));
    let (request, username) = if counts_usernames {
        submitted_username(request, &route.username_fields).await?
    } else {
        (request, None)
    };
    let mut verdict: Option<Verdict> = None;
    for policy in &route.limits {
        let Some(limiter) = limiters.policies.get(&policy.name) else {
            continue;
        };
        let Some((tag, rest)) = key_parts(policy, route, subject, username.as_deref()) else {
            continue;
        };
        let Some((decision, source)) = decide(limiter, &tag, &rest, limiters, worker).await? else {
            continue;
        };
        let index = usize::from(!decision.allowed);
        limiter.counts.decided[source as usize][index].fetch_add(1, Ordering::Relaxed);
        if verdict
            .as_ref()
            .is_none_or(|v| decision.is_tighter_than(&v.decision))
        {
            verdict = Some(Verdict {
                policy: Arc::clone(&limiter.policy),
                decision,
            });
        }
    }
    match verdict {
        Some(v) if !v.decision.allowed => Err(GatewayError::RateLimited(Box::new(v))),
        verdict => Ok((request, verdict)),
    }
}

/// One policy's decision; `None` when the request passes uncounted (`open`).
async fn decide(
    limiter: &PolicyLimiter,
    tag: &str,
    rest: &str,
    limiters: &Limiters,
    worker: usize,
) -> Result<Option<(Decision, Source)>, GatewayError> {
    let local_key = || {
        let mut key = String::with_capacity(tag.len() + rest.len());
        key.push_str(tag);
        key.push_str(rest);
        key
    };
    let Some(shared) = &limiters.shared else {
        return Ok(Some((limiter.local.check(&local_key()), Source::Local)));
    };
    let policy = &limiter.policy;
    let key = shared::key(
        &shared.redis().settings().key_prefix,
        &policy.name,
        tag,
        rest,
    );
    match shared.check(worker, key, &limiter.quota).await {
        Ok(decision) => Ok(Some((decision, Source::Redis))),
        Err(e) => match policy.on_redis_error {
            FailureMode::Local => Ok(Some((limiter.local.check(&local_key()), Source::Fallback))),
            FailureMode::Open => {
                limiter.counts.open.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            FailureMode::Closed => {
                limiter.counts.unavailable.fetch_add(1, Ordering::Relaxed);
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
            LimitKey::Ip => format!("ip={}", subject.client),
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

/// Reads a login body (bounded) for the username in the first of `fields` present (a
/// top-level JSON member or a form field), and hands the body back whole. Without one,
/// the request counts under one shared "no username" key. The username is case-folded and
/// trimmed, so `Alice ` and `alice` share one count, then hashed: no usernames in Redis.
async fn submitted_username(
    request: Request<RequestBody>,
    fields: &[String],
) -> Result<(Request<RequestBody>, Option<String>), GatewayError> {
    let (parts, body) = request.into_parts();
    let bytes = read_bounded(&parts, body, MAX_LOGIN_BODY_BYTES).await?;
    let media = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let username = if media == "application/x-www-form-urlencoded" {
        let pairs = crate::form::pairs(&bytes);
        fields.iter().find_map(|field| {
            pairs
                .iter()
                .find(|(k, _)| k == field)
                .map(|(_, v)| v.clone())
        })
    } else {
        let body = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        fields
            .iter()
            .find_map(|field| body.as_ref()?.get(field)?.as_str().map(str::to_owned))
    };
    let hashed = username.map(|u| {
        let digest = Sha256::digest(u.trim().to_lowercase().as_bytes());
        let mut hex = String::with_capacity(32);
        for b in &digest[..16] {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    });
    Ok((Request::from_parts(parts, crate::body::full(bytes)), hashed))
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
        let c = &limiter.counts;
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
    if let Some(shared) = &limiters.shared {
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
