//! Rate limits in the policy files: the named `[limits.NAME]` policies, and each route's
//! `limits = [...]` and `username_fields`, checked against what the route can supply.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;

use toml::de::DeValue;
use toml::Spanned;

use super::context::Loader;
use super::document::deserialize;
use super::file::{FailureModeFile, LimitFile, LimitKeyFile, RouteFile};
use crate::diagnostic::SourceFile;
use crate::quota::{Quota, QuotaError};
use crate::snapshot::{FailureMode, LimitKey, LimitPolicy, RouteAuth};

/// Limit policies by name; `None` for one that is declared but invalid (its errors are
/// reported where it is written, not again at every route using it).
pub(crate) type Defined = HashMap<String, Option<Arc<LimitPolicy>>>;

/// Reads the `[limits.NAME]` tables of one policy file into `defined`.
pub(crate) fn policies(
    l: &mut Loader,
    src: &SourceFile,
    value: Spanned<DeValue>,
    defined: &mut Defined,
) {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        l.error(
            src,
            Some(span),
            "`limits` must hold named tables: [limits.NAME]",
        );
        return;
    };
    for (key, entry) in table {
        let (name, span) = (key.get_ref().to_string(), key.span());
        // Every error in the table is reported, and what is left is still checked.
        let what = format!("[limits.{name}]");
        let entry = Spanned::new(span.clone(), entry.into_inner());
        let policy = deserialize::<LimitFile>(l, src, entry, &what)
            .and_then(|f| policy(l, src, &name, span, f, defined).map(Arc::new));
        defined.entry(name).or_insert(policy);
    }
}

fn policy(
    l: &mut Loader,
    src: &SourceFile,
    name: &str,
    span: Range<usize>,
    f: LimitFile,
    defined: &Defined,
) -> Option<LimitPolicy> {
    let mark = l.mark();
    let origin = src.origin(span.clone());
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        l.error(
            src,
            Some(span.clone()),
            format!("limit name `{name}`: use letters, digits, `-` and `_` only"),
        );
    } else if let Some(Some(first)) = defined.get(name) {
        l.error(
            src,
            Some(span.clone()),
            format!(
                "limit `{name}` is already defined at {}:{}:{}",
                first.origin.file.display(),
                first.origin.line,
                first.origin.column
            ),
        );
    }
    let limit = positive(l, src, &f.rate, name, "rate");
    let burst = match &f.burst {
        Some(b) => positive(l, src, b, name, "burst"),
        None => limit,
    };
    let period = match crate::duration::parse(f.period.get_ref()) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            l.error(
                src,
                Some(f.period.span()),
                format!("limit `{name}`: period must be greater than zero"),
            );
            None
        }
        Err(e) => {
            l.error(src, Some(f.period.span()), format!("limit `{name}`: {e}"));
            None
        }
    };
    // Validated here, once, by the quota itself: a policy that loads is one the
    // limiters can count.
    let quota = match (limit, period, burst) {
        (Some(limit), Some(period), Some(burst)) => match Quota::new(limit, period, burst) {
            Ok(q) => Some(q),
            Err(e) => {
                let at = match e {
                    QuotaError::TooFine => f.rate.span(),
                    QuotaError::TooLong => f.period.span(),
                };
                l.error(src, Some(at), format!("limit `{name}`: {e}"));
                None
            }
        },
        _ => None,
    };
    let key = limit_key(l, src, &f.key, name);
    if l.errors_since(mark) {
        return None;
    }
    Some(LimitPolicy {
        name: name.to_owned(),
        quota: quota?,
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
    l: &mut Loader,
    src: &SourceFile,
    value: &Spanned<i64>,
    name: &str,
    what: &str,
) -> Option<NonZeroU32> {
    let n = u32::try_from(*value.get_ref())
        .ok()
        .and_then(NonZeroU32::new);
    if n.is_none() {
        l.error(
            src,
            Some(value.span()),
            format!(
                "limit `{name}`: {what} must be a whole number from 1 to {}",
                u32::MAX
            ),
        );
    }
    n
}

fn limit_key(
    l: &mut Loader,
    src: &SourceFile,
    parts: &Spanned<Vec<Spanned<LimitKeyFile>>>,
    name: &str,
) -> Option<Vec<LimitKey>> {
    if parts.get_ref().is_empty() {
        l.error(
            src,
            Some(parts.span()),
            format!("limit `{name}`: key is empty; write [\"global\"] for one count for everyone"),
        );
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
            l.error(
                src,
                Some(part.span()),
                format!("limit `{name}`: `{}` is listed twice", k.as_str()),
            );
            return None;
        }
        key.push(k);
    }
    if key.len() > 1 && key.contains(&LimitKey::Global) {
        l.error(
            src,
            Some(parts.span()),
            format!("limit `{name}`: `global` is one count for everyone and combines with nothing"),
        );
        return None;
    }
    // One order whatever the file says, so equal policies make equal keys.
    key.sort();
    Some(key)
}

/// A route's `limits` and `username_fields`, checked against its authentication.
pub(crate) fn route_limits(
    l: &mut Loader,
    src: &SourceFile,
    f: &RouteFile,
    route: &str,
    auth: &RouteAuth,
    defined: &Defined,
) -> Option<(Vec<Arc<LimitPolicy>>, Vec<String>)> {
    let mark = l.mark();
    let mut limits: Vec<Arc<LimitPolicy>> = Vec::new();
    for name in f.limits.iter().flatten() {
        let policy = match defined.get(name.get_ref()) {
            Some(Some(policy)) => policy,
            // Declared but invalid: already reported where it is written.
            Some(None) => continue,
            None => {
                let mut known: Vec<&str> = defined.keys().map(String::as_str).collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                };
                l.error(
                    src,
                    Some(name.span()),
                    format!(
                        "route `{route}`: no [limits.{}] in the policy files (defined: {known})",
                        name.get_ref()
                    ),
                );
                continue;
            }
        };
        if limits.iter().any(|p| p.name == policy.name) {
            l.error(
                src,
                Some(name.span()),
                format!("route `{route}`: limit `{}` is listed twice", policy.name),
            );
            continue;
        }
        let by_key = matches!(auth, RouteAuth::ApiKey | RouteAuth::JwtOrApiKey);
        for part in &policy.key {
            let problem = match part {
                LimitKey::Client if !auth.identifies_caller() => {
                    Some("counts by `client`, but the route has no authenticated caller")
                }
                LimitKey::ApiKey if !by_key => Some("counts by `api_key`, but the route does not accept API keys"),
                LimitKey::Username if f.username_fields.is_none() => {
                    Some("counts by `username`: set `username_fields` on the route (JSON members or form fields)")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                l.error(
                    src,
                    Some(name.span()),
                    format!("route `{route}`: limit `{}` {problem}", policy.name),
                );
            }
        }
        limits.push(Arc::clone(policy));
    }
    let mut username_fields = Vec::new();
    if let Some(fields) = &f.username_fields {
        if fields.get_ref().is_empty() {
            l.error(
                src,
                Some(fields.span()),
                format!("route `{route}`: username_fields is empty"),
            );
        }
        for field in fields.get_ref() {
            if field.get_ref().is_empty() {
                l.error(
                    src,
                    Some(field.span()),
                    format!("route `{route}`: a username field name is empty"),
                );
            }
            username_fields.push(field.get_ref().clone());
        }
    }
    (!l.errors_since(mark)).then_some((limits, username_fields))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};

    #[test]
    fn policies_and_the_routes_using_them() {
        let policies = [(
            "a.toml",
            "[limits.per-ip]\nrate = 600\nperiod = \"1m\"\nburst = 100\nkey = [\"route\", \"ip\"]\non_redis_error = \"closed\"\n\n[[route]]\nname = \"a\"\npath = \"/a\"\nauth = \"none\"\nlimits = [\"per-ip\"]\n",
        )];
        let s = load(GATEWAY, &policies).unwrap();
        let p = &s.routes[0].limits[0];
        assert_eq!(
            (p.quota.limit(), p.quota.period().as_secs(), p.quota.burst()),
            (600, 60, 100)
        );
        assert_eq!(
            p.key,
            [
                crate::snapshot::LimitKey::Ip,
                crate::snapshot::LimitKey::Route
            ]
        );
        assert_eq!(s.limits.len(), 1);
    }

    #[test]
    fn a_broken_policy_is_one_error_not_one_per_route() {
        let policies = [(
            "a.toml",
            "[limits.tiny]\nrate = 1\nperiod = \"1s\"\n\n[[route]]\nname = \"a\"\npath = \"/a\"\nauth = \"none\"\nlimits = [\"tiny\"]\n",
        )];
        let e = errors(GATEWAY, &policies);
        assert_eq!(e, ["a.toml:1:9: [limits.tiny]: missing field `key`"]);
        // A bad element of a list hides none of the table's other mistakes: the rest of
        // the list still fills its field.
        let policies = [(
            "b.toml",
            "[limits.bad]\nrate = 0\nperiod = \"0s\"\nkey = [\"client\", \"bogus\"]\n",
        )];
        let e = errors(GATEWAY, &policies);
        assert_eq!(
            e,
            [
                "b.toml:2:8: limit `bad`: rate must be a whole number from 1 to 4294967295",
                "b.toml:3:10: limit `bad`: period must be greater than zero",
                "b.toml:4:18: [limits.bad]: unknown variant `bogus`, expected one of `client`, `api_key`, `ip`, `route`, `username`, `global`",
            ]
        );
    }

    #[test]
    fn numbers_the_limiters_could_not_count_are_refused_here() {
        for (limit, want) in [
            ("rate = 2000000\nperiod = \"1s\"", "a.toml:2:8: limit `x`: more than one request per microsecond is not a limit"),
            ("rate = 1\nperiod = \"3660d\"\nburst = 2", "a.toml:3:10: limit `x`: a full burst would take over ten years to come back; use a shorter period or a smaller burst"),
            ("rate = 0\nperiod = \"1s\"", "a.toml:2:8: limit `x`: rate must be a whole number from 1 to 4294967295"),
            ("rate = 1\nperiod = \"0s\"", "a.toml:3:10: limit `x`: period must be greater than zero"),
        ] {
            let file = format!("[limits.x]\n{limit}\nkey = [\"ip\"]\n");
            assert_eq!(errors(GATEWAY, &[("a.toml", &file)]), [want], "{limit}");
        }
        let e = errors(
            GATEWAY,
            &[(
                "a.toml",
                "[limits.x]\nrate = 1\nperiod = \"1s\"\nkey = [\"ip\", \"global\"]\n",
            )],
        );
        assert_eq!(e, ["a.toml:4:7: limit `x`: `global` is one count for everyone and combines with nothing"]);
    }

    #[test]
    fn a_route_must_supply_what_its_limits_count_by() {
        let file = "[limits.c]\nrate = 1\nperiod = \"1s\"\nkey = [\"client\"]\n\n[limits.u]\nrate = 1\nperiod = \"1s\"\nkey = [\"username\"]\n\n[[route]]\nname = \"a\"\npath = \"/a\"\nauth = \"none\"\nlimits = [\"c\", \"u\", \"nope\"]\n";
        let e = errors(GATEWAY, &[("a.toml", file)]);
        assert_eq!(
            e,
            [
                "a.toml:15:11: route `a`: limit `c` counts by `client`, but the route has no authenticated caller",
                "a.toml:15:16: route `a`: limit `u` counts by `username`: set `username_fields` on the route (JSON members or form fields)",
                "a.toml:15:21: route `a`: no [limits.nope] in the policy files (defined: c, u)",
            ]
        );
    }
}
