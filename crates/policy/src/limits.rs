//! Rate limits in the configuration: the named `[limits.NAME]` policies of the policy
//! files, each route's `limits = [...]`, and `[store]` in `gateway.toml` (Redis, shared
//! by the instances, or this process).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

use crate::diagnostic::{Diagnostic, SourceFile};
use crate::file::{FailureModeFile, LimitFile, LimitKeyFile, RouteFile, StoreFile};
use crate::snapshot::{FailureMode, LimitKey, LimitPolicy, RedisStore, RouteAuth, Store};

/// The longest a full burst may take to come back (the same bound as the limiter's).
const MAX_REFILL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Limit policies by name; `None` for one that is declared but invalid (its errors are
/// reported where it is written, not again at every route using it).
pub(crate) type Defined = HashMap<String, Option<Arc<LimitPolicy>>>;

/// Reads the `[limits.NAME]` tables of one policy file into `defined`.
pub(crate) fn policies(
    src: &SourceFile,
    value: Spanned<DeValue>,
    defined: &mut Defined,
    diags: &mut Vec<Diagnostic>,
) {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        diags.push(src.error(Some(span), "`limits` must hold named tables: [limits.NAME]"));
        return;
    };
    for (key, entry) in table {
        let (name, span) = (key.get_ref().to_string(), key.span());
        let f = match LimitFile::deserialize(ValueDeserializer::from(entry)) {
            Ok(f) => f,
            Err(e) => {
                diags.push(src.error(
                    e.span().or(Some(span)),
                    format!("[limits.{name}]: {}", e.message().trim()),
                ));
                continue;
            }
        };
        let policy = policy(src, &name, span.clone(), f, defined, diags);
        defined.entry(name).or_insert(policy.map(Arc::new));
    }
}

use serde::Deserialize as _;

fn policy(
    src: &SourceFile,
    name: &str,
    span: Range<usize>,
    f: LimitFile,
    defined: &Defined,
    diags: &mut Vec<Diagnostic>,
) -> Option<LimitPolicy> {
    let before = diags.len();
    let origin = src.origin(span.clone());
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        diags.push(src.error(
            Some(span.clone()),
            format!("limit name `{name}`: use letters, digits, `-` and `_` only"),
        ));
    } else if let Some(Some(first)) = defined.get(name) {
        diags.push(src.error(
            Some(span.clone()),
            format!(
                "limit `{name}` is already defined at {}:{}:{}",
                first.origin.file.display(),
                first.origin.line,
                first.origin.column
            ),
        ));
    }
    let limit = positive(src, &f.rate, name, "rate", diags);
    let burst = match &f.burst {
        Some(b) => positive(src, b, name, "burst", diags),
        None => limit,
    };
    let period = match crate::duration::parse(f.period.get_ref()) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            diags.push(src.error(
                Some(f.period.span()),
                format!("limit `{name}`: period must be greater than zero"),
            ));
            None
        }
        Err(e) => {
            diags.push(src.error(Some(f.period.span()), format!("limit `{name}`: {e}")));
            None
        }
    };
    if let (Some(limit), Some(period), Some(burst)) = (limit, period, burst) {
        let interval = period / limit.get();
        if interval < Duration::from_micros(1) {
            diags.push(src.error(
                Some(f.rate.span()),
                format!("limit `{name}`: more than one request per microsecond is not a limit"),
            ));
        } else if interval
            .checked_mul(burst.get())
            .is_none_or(|refill| refill > MAX_REFILL)
        {
            diags.push(src.error(
                Some(f.period.span()),
                format!("limit `{name}`: a full burst would take over ten years to come back; use a shorter period or a smaller burst"),
            ));
        }
    }
    let key = limit_key(src, &f.key, name, diags);
    if diags.len() != before {
        return None;
    }
    Some(LimitPolicy {
        name: name.to_owned(),
        limit: limit?,
        period: period?,
        burst: burst?,
        key: key?,
        on_redis_error: match f.on_redis_error {
            None | Some(FailureModeFile::Local) => FailureMode::Local,
            Some(FailureModeFile::Open) => FailureMode::Open,
            Some(FailureModeFile::Closed) => FailureMode::Closed,
        },
        origin,
    })
}

fn positive(
    src: &SourceFile,
    value: &Spanned<i64>,
    name: &str,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<NonZeroU32> {
    let n = u32::try_from(*value.get_ref())
        .ok()
        .and_then(NonZeroU32::new);
    if n.is_none() {
        diags.push(src.error(
            Some(value.span()),
            format!(
                "limit `{name}`: {what} must be a whole number from 1 to {}",
                u32::MAX
            ),
        ));
    }
    n
}

fn limit_key(
    src: &SourceFile,
    parts: &Spanned<Vec<Spanned<LimitKeyFile>>>,
    name: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<LimitKey>> {
    if parts.get_ref().is_empty() {
        diags.push(src.error(
            Some(parts.span()),
            format!("limit `{name}`: key is empty; write [\"global\"] for one count for everyone"),
        ));
        return None;
    }
    let mut key: Vec<LimitKey> = Vec::new();
    for part in parts.get_ref() {
        let k = match part.get_ref() {
            LimitKeyFile::Client => LimitKey::Client,
            LimitKeyFile::ApiKey => LimitKey::ApiKey,
            LimitKeyFile::Ip => LimitKey::Ip,
            LimitKeyFile::Route => LimitKey::Route,
            LimitKeyFile::Username => LimitKey::Username,
            LimitKeyFile::Global => LimitKey::Global,
        };
        if key.contains(&k) {
            diags.push(src.error(
                Some(part.span()),
                format!("limit `{name}`: `{}` is listed twice", k.as_str()),
            ));
            return None;
        }
        key.push(k);
    }
    if key.len() > 1 && key.contains(&LimitKey::Global) {
        diags.push(src.error(
            Some(parts.span()),
            format!("limit `{name}`: `global` is one count for everyone and combines with nothing"),
        ));
        return None;
    }
    // One order whatever the file says, so equal policies make equal keys.
    key.sort();
    Some(key)
}

/// A route's `limits` and `username_fields`, checked against its authentication.
pub(crate) fn route_limits(
    src: &SourceFile,
    f: &RouteFile,
    route: &str,
    auth: &RouteAuth,
    defined: &Defined,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Vec<Arc<LimitPolicy>>, Vec<String>)> {
    let before = diags.len();
    let mut limits: Vec<Arc<LimitPolicy>> = Vec::new();
    for name in f.limits.iter().flatten() {
        let policy = match defined.get(name.get_ref()) {
            Some(Some(policy)) => policy,
            // Declared but invalid: already reported where it is written.
            Some(None) => continue,
            None => {
                let mut known: Vec<&str> = defined.keys().map(String::as_str).collect();
                known.sort_unstable();
                diags.push(src.error(
                    Some(name.span()),
                    format!(
                        "route `{route}`: no [limits.{}] in the policy files (defined: {})",
                        name.get_ref(),
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
                continue;
            }
        };
        if limits.iter().any(|l| l.name == policy.name) {
            diags.push(src.error(
                Some(name.span()),
                format!("route `{route}`: limit `{}` is listed twice", policy.name),
            ));
            continue;
        }
        let identifies = matches!(
            auth,
            RouteAuth::Jwt | RouteAuth::ApiKey | RouteAuth::JwtOrApiKey
        );
        let by_key = matches!(auth, RouteAuth::ApiKey | RouteAuth::JwtOrApiKey);
        for part in &policy.key {
            let problem = match part {
                LimitKey::Client if !identifies => {
                    Some("counts by `client`, but the route has no authenticated caller")
                }
                LimitKey::ApiKey if !by_key => {
                    Some("counts by `api_key`, but the route does not accept API keys")
                }
                LimitKey::Username if f.username_fields.is_none() => Some(
                    "counts by `username`: set `username_fields` on the route (JSON members or form fields)",
                ),
                _ => None,
            };
            if let Some(problem) = problem {
                diags.push(src.error(
                    Some(name.span()),
                    format!("route `{route}`: limit `{}` {problem}", policy.name),
                ));
            }
        }
        limits.push(Arc::clone(policy));
    }
    let mut username_fields = Vec::new();
    if let Some(fields) = &f.username_fields {
        if fields.get_ref().is_empty() {
            diags.push(src.error(
                Some(fields.span()),
                format!("route `{route}`: username_fields is empty"),
            ));
        }
        for field in fields.get_ref() {
            if field.get_ref().is_empty() {
                diags.push(src.error(
                    Some(field.span()),
                    format!("route `{route}`: a username field name is empty"),
                ));
            }
            username_fields.push(field.get_ref().clone());
        }
    }
    (diags.len() == before).then_some((limits, username_fields))
}

/// `[store]`: Redis when a URL is given, else this process.
pub(crate) fn store(
    src: &SourceFile,
    f: Option<StoreFile>,
    sources: &dyn crate::sources::Sources,
    diags: &mut Vec<Diagnostic>,
) -> Option<Store> {
    let Some(f) = f else {
        return Some(Store::default());
    };
    let before = diags.len();
    let url = match (&f.redis_url, &f.redis_url_env) {
        (Some(_), Some(env)) => {
            diags.push(src.error(
                Some(env.span()),
                "[store]: give redis_url or redis_url_env, not both",
            ));
            None
        }
        (Some(url), None) => Some((url.get_ref().clone(), url.span())),
        (None, Some(env)) => match sources.env(env.get_ref()) {
            Some(url) if !url.is_empty() => Some((url, env.span())),
            _ => {
                diags.push(src.error(
                    Some(env.span()),
                    format!("[store]: environment variable {} is not set", env.get_ref()),
                ));
                None
            }
        },
        (None, None) => None,
    };
    if let Some((url, span)) = &url {
        // The URL itself may hold a password: never echo it.
        if url.starts_with("rediss://") {
            diags.push(src.error(
                Some(span.clone()),
                "[store]: TLS to Redis (rediss://) is not built in; reach Redis over a private network or a local TLS tunnel with redis://",
            ));
        } else if let Some(problem) = redis_url_problem(url) {
            diags.push(src.error(Some(span.clone()), format!("[store]: {problem}")));
        }
    }
    let instances = match &f.instances {
        None => NonZeroU32::MIN,
        Some(n) => match u32::try_from(*n.get_ref()).ok().and_then(NonZeroU32::new) {
            Some(n) => n,
            None => {
                diags.push(src.error(Some(n.span()), "[store]: instances must be at least 1"));
                NonZeroU32::MIN
            }
        },
    };
    let breaker_failures = match &f.breaker_failures {
        None => 5,
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                diags.push(src.error(
                    Some(n.span()),
                    "[store]: breaker_failures must be at least 1",
                ));
                5
            }
        },
    };
    let key_prefix = match &f.key_prefix {
        None => "tollgate".to_owned(),
        Some(p) => {
            let text = p.get_ref();
            if text.is_empty() || text.contains(['{', '}']) || text.chars().any(char::is_whitespace)
            {
                diags.push(src.error(
                    Some(p.span()),
                    "[store]: key_prefix must be non-empty, without spaces, `{` or `}`",
                ));
            }
            text.clone()
        }
    };
    let timeout = crate::load::duration(src, &f.timeout, 50, diags);
    let breaker_cooldown = crate::load::duration(src, &f.breaker_cooldown, 2000, diags);
    if diags.len() != before {
        return None;
    }
    Some(Store {
        redis: url.map(|(url, _)| RedisStore {
            url,
            instances,
            timeout,
            breaker_failures,
            breaker_cooldown,
            key_prefix,
        }),
    })
}

/// What is wrong with a Redis URL, without echoing it (it may hold a password):
/// `redis://[user[:password]@]host[:port][/db][?options]`.
fn redis_url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url.strip_prefix("redis://") else {
        return Some("the Redis URL must start with redis://");
    };
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Some("the Redis URL has an unclosed `[` in its host"),
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Some("the Redis URL names no host");
    }
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Some("the Redis URL's port must be a number from 1 to 65535");
    }
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Some("the Redis URL's path must be a database number (`/0`)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::redis_url_problem;

    #[test]
    fn redis_urls_are_checked_without_connecting() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://redis",
            "redis://:secret@redis:6379/2",
            "redis://user:p%40ss@[::1]:6380/0?protocol=resp3",
        ] {
            assert_eq!(redis_url_problem(ok), None, "{ok}");
        }
        for bad in [
            "http://127.0.0.1:6379",
            "redis://",
            "redis://:6379",
            "redis://host:notaport",
            "redis://host:0",
            "redis://host:6379/db",
            "redis://[::1:6379",
        ] {
            assert!(redis_url_problem(bad).is_some(), "{bad}");
        }
    }
}
