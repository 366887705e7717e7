//! `[credits]` and a route's `cost`: token credits, metered before the backend is
//! called.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use toml::Spanned;

use super::context::{Loader, Zero};
use super::file::{ClientAbortFile, CostFile, CreditsFile, LedgerSyncFile, RouteFile};
use super::Refs;
use crate::diagnostic::SourceFile;
use crate::snapshot::{
    ClientAbort, Cost, Credits, LedgerSync, RouteAction, RouteAuth, MAX_TOKENS, STANDARD_METHODS,
};

/// What refunds when neither the route nor `[credits]` says: any answer but a success
/// (a 4xx did no work either).
const DEFAULT_REFUND: (u16, u16) = (400, 599);

/// The default and the bounds of `[credits] sync_interval`.
const SYNC_INTERVAL: Duration = Duration::from_millis(10);
const SYNC_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(1);

/// `[credits]`; `redis`: the ledger lives in Redis (`[store] redis_url`);
/// `response_timeout`: the upstream's, which a reservation must outlast.
pub(crate) fn credits(
    l: &mut Loader,
    src: &SourceFile,
    f: CreditsFile,
    redis: bool,
    response_timeout: Option<Duration>,
) -> Option<Credits> {
    let mark = l.mark();
    let sync = sync(l, src, &f, redis);
    let reservation_timeout = l.duration(
        src,
        &f.reservation_timeout,
        Duration::from_secs(15 * 60),
        Zero::Refused,
    );
    // A reservation is settled by the response head, which may take the whole upstream
    // response_timeout: one that expired first would be refunded while the backend
    // still works, and the answer would claim a charge that never happened. (A warning,
    // not an error: a test of the expiry itself wants a short one.)
    if let (Some(value), Some(upstream)) = (&f.reservation_timeout, response_timeout) {
        if reservation_timeout <= upstream {
            l.warning(
                src,
                Some(value.span()),
                format!(
                    "reservation_timeout is not longer than [upstream] response_timeout ({}s): a request still waiting for its answer is refunded, and its answer claims a charge that never happened",
                    upstream.as_secs_f64()
                ),
            );
        }
    }
    let idempotency_ttl = l.duration(
        src,
        &f.idempotency_ttl,
        Duration::from_secs(24 * 3600),
        Zero::Refused,
    );
    let refund_statuses = match &f.refund_statuses {
        None => vec![DEFAULT_REFUND],
        Some(list) => statuses(l, src, list, "[credits] refund_statuses"),
    };
    let path = l.resolve(
        f.path
            .as_ref()
            .map_or("state/ledger.redb", |p| p.get_ref().as_str()),
    );
    // Read now so a missing file is an error where it is named (and the file is
    // watched); `tollgate check` also parses it.
    let opening_balances = f.opening_balances.as_ref().and_then(|p| {
        l.read_named(src, p, "[credits] opening_balances")
            .map(|(full, _)| full)
    });
    if l.errors_since(mark) {
        return None;
    }
    Some(Credits {
        enabled: f.enabled.unwrap_or(true),
        path,
        reservation_timeout,
        idempotency_ttl,
        refund_statuses,
        opening_balances,
        on_client_abort: match f.on_client_abort {
            Some(ClientAbortFile::Settle) => ClientAbort::Settle,
            Some(ClientAbortFile::Refund) | None => ClientAbort::Refund,
        },
        sync,
    })
}

/// `sync` and `sync_interval`: the embedded ledger's durability.
fn sync(l: &mut Loader, src: &SourceFile, f: &CreditsFile, redis: bool) -> LedgerSync {
    let interval = l.duration(src, &f.sync_interval, SYNC_INTERVAL, Zero::Refused);
    if let Some(value) = &f.sync_interval {
        if !SYNC_INTERVAL_RANGE.contains(&interval) {
            l.error(src, Some(value.span()), "sync_interval must be 1ms to 1s");
        }
    }
    let chosen = f.sync.as_ref().map(|s| *s.get_ref());
    // "before_forwarding" holds in Redis too (each script runs before the request is
    // forwarded), so the shipped file's explicit default stays valid beside redis_url.
    if let (Some(sync), true) = (&f.sync, redis) {
        if *sync.get_ref() == LedgerSyncFile::Interval {
            l.error(
                src,
                Some(sync.span()),
                "sync = \"interval\" is the embedded ledger's; with [store] redis_url the ledger is in Redis, whose persistence (appendfsync) decides",
            );
        }
    }
    match (chosen, &f.sync_interval) {
        (Some(LedgerSyncFile::Interval), _) => LedgerSync::Interval(interval),
        (_, Some(value)) => {
            l.error(
                src,
                Some(value.span()),
                "sync_interval applies only with sync = \"interval\"",
            );
            LedgerSync::BeforeForwarding
        }
        _ => LedgerSync::BeforeForwarding,
    }
}

/// `5xx`, `4xx` or one status, each an inclusive range.
fn statuses(
    l: &mut Loader,
    src: &SourceFile,
    list: &Spanned<Vec<Spanned<String>>>,
    what: &str,
) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for item in list.get_ref() {
        let text = item.get_ref().trim();
        let range = match text.as_bytes() {
            [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                let base = u16::from(d - b'0') * 100;
                Some((base, base + 99))
            }
            _ => text
                .parse::<u16>()
                .ok()
                .filter(|s| (100..=599).contains(s))
                .map(|s| (s, s)),
        };
        match range {
            Some(r) => out.push(r),
            None => l.error(
                src,
                Some(item.span()),
                format!("{what}: `{text}` is not a status (`503`) or a class (`5xx`)"),
            ),
        }
    }
    out
}

/// A route's `cost`, `settle_header` and `refund_statuses`: `None` for a free route.
/// Errors are reported; the caller checks [`Loader::errors_since`].
pub(crate) fn route_cost(
    l: &mut Loader,
    src: &SourceFile,
    f: &RouteFile,
    methods: Option<&[Method]>,
    auth: Option<&RouteAuth>,
    action: Option<&RouteAction>,
    refs: &Refs,
) -> Option<Arc<Cost>> {
    let name = f.name.get_ref();
    let (credits, credits_declared) = (refs.credits, refs.credits_declared);
    let Some(cost) = &f.cost else {
        for (field, span) in [
            ("settle_header", f.settle_header.as_ref().map(|s| s.span())),
            (
                "refund_statuses",
                f.refund_statuses.as_ref().map(|s| s.span()),
            ),
        ] {
            if let Some(span) = span {
                l.error(
                    src,
                    Some(span),
                    format!("route `{name}`: `{field}` is for routes with a `cost`"),
                );
            }
        }
        return None;
    };
    let span = cost.span();
    if !credits_declared {
        l.error(
            src,
            Some(span.clone()),
            format!("route `{name}`: a cost needs a [credits] section in gateway.toml"),
        );
    }
    // No action: the route's `action`/`endpoint` pair is wrong, and said so already.
    if action.is_some_and(|a| !matches!(a, RouteAction::Forward)) {
        l.error(
            src,
            Some(span.clone()),
            format!("route `{name}`: only forwarded routes have a cost (the gateway's own endpoints, the login and denied routes are free)"),
        );
    }
    if auth.is_some_and(|a| !a.identifies_caller()) {
        l.error(
            src,
            Some(span.clone()),
            format!("route `{name}`: a cost is charged to the caller's client: the route needs auth = jwt, api_key or jwt_or_api_key"),
        );
    }
    let amount = |l: &mut Loader, n: i64, what: &str| -> u64 {
        match u64::try_from(n) {
            Ok(n) if n > MAX_TOKENS => {
                l.error(
                    src,
                    Some(span.clone()),
                    format!("route `{name}`: {what} is more than an account can hold ({MAX_TOKENS}): every request would be refused"),
                );
                0
            }
            Ok(n) => n,
            Err(_) => {
                l.error(
                    src,
                    Some(span.clone()),
                    format!("route `{name}`: {what} must be 0 or more tokens"),
                );
                0
            }
        }
    };
    let amounts = match cost.get_ref() {
        CostFile::Flat(n) => vec![(None, amount(l, *n, "cost"))],
        CostFile::PerMethod(map) => {
            let mut out = Vec::new();
            for (method, n) in map {
                let valid = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
                match Method::from_bytes(method.as_bytes()) {
                    Ok(m) if valid => {
                        if methods.is_some_and(|allowed| !allowed.contains(&m)) {
                            l.error(
                                src,
                                Some(span.clone()),
                                format!("route `{name}`: cost for {method}, which the route does not allow"),
                            );
                        } else if methods.is_none() && !STANDARD_METHODS.contains(&m) {
                            // `PSOT = 10` would leave POST free: a method outside the
                            // standard ones must be listed in `methods` to be costed.
                            l.error(
                                src,
                                Some(span.clone()),
                                format!("route `{name}`: cost for {method}, which is not a standard method (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS); list it in `methods` if the backend really takes it"),
                            );
                        }
                        let n = amount(l, *n, &format!("the cost of {method}"));
                        out.push((Some(m), n));
                    }
                    _ => l.error(
                        src,
                        Some(span.clone()),
                        format!("route `{name}`: `{method}` is not an HTTP method (write it in upper case, e.g. `POST`)"),
                    ),
                }
            }
            out
        }
    };
    let settle_header = f.settle_header.as_ref().and_then(|h| l.header_name(src, h));
    let refund = match &f.refund_statuses {
        Some(list) => statuses(l, src, list, &format!("route `{name}` refund_statuses")),
        None => credits.map_or_else(|| vec![DEFAULT_REFUND], |c| c.refund_statuses.clone()),
    };
    Some(Arc::new(Cost {
        amounts,
        settle_header,
        refund,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, HS256};
    use crate::snapshot::LedgerSync;
    use std::time::Duration;

    const CREDITS: &str = "\n[credits]\npath = \"state/l.redb\"\n";

    /// A gateway that verifies JWTs, so routes can identify their caller.
    fn gateway() -> String {
        format!(
            "{}\n[jwt]\n\n[[jwt.key]]\nalgorithm = \"HS256\"\nsecret_env = \"{HS256}\"\n",
            super::super::testing::GATEWAY
        )
    }

    fn route(extra: &str) -> String {
        format!(
            "[[route]]\nname = \"calls\"\nmethods = [\"GET\", \"POST\"]\npath = \"/calls\"\nauth = \"jwt\"\n{extra}\n"
        )
    }

    #[test]
    fn costs_per_route_and_per_method() {
        let gateway = format!(
            "{}{CREDITS}refund_statuses = [\"5xx\", \"408\"]\n",
            gateway()
        );
        let s = load(&gateway, &[("a.toml", &route("cost = { POST = 10 }"))]).unwrap();
        let cost = s.routes[0].cost.as_ref().unwrap();
        assert_eq!(cost.for_method(&http::Method::POST), 10);
        assert_eq!(cost.for_method(&http::Method::GET), 0);
        assert_eq!(cost.for_method(&http::Method::HEAD), 0);
        assert!(cost.refunds(503) && cost.refunds(408) && !cost.refunds(404));
        let credits = s.credits.unwrap();
        assert!(credits.enabled);
        assert!(credits.path.ends_with("state/l.redb"));
        assert_eq!(credits.reservation_timeout.as_secs(), 900);
        let s = load(
            &gateway,
            &[(
                "a.toml",
                &route("cost = 3\nsettle_header = \"x-tokens-used\"\nrefund_statuses = [\"4xx\"]"),
            )],
        )
        .unwrap();
        let cost = s.routes[0].cost.as_ref().unwrap();
        assert_eq!(cost.for_method(&http::Method::GET), 3);
        assert_eq!(cost.for_method(&http::Method::HEAD), 3);
        assert_eq!(cost.settle_header.as_ref().unwrap(), "x-tokens-used");
        assert!(cost.refunds(404) && !cost.refunds(503));
    }

    #[test]
    fn what_a_cost_needs() {
        let e = errors(&gateway(), &[("a.toml", &route("cost = 1"))]);
        assert!(e[0].contains("a cost needs a [credits] section"), "{e:?}");
        let with_credits = format!("{}{CREDITS}", gateway());
        let e = errors(
            &with_credits,
            &[(
                "a.toml",
                "[[route]]\nname = \"open\"\npath = \"/open\"\nauth = \"none\"\ncost = 1\n",
            )],
        );
        assert!(e[0].contains("needs auth = jwt"), "{e:?}");
        let e = errors(
            &with_credits,
            &[("a.toml", &route("cost = { DELETE = 1, post = 2 }"))],
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("DELETE, which the route does not allow"),
            "{e:?}"
        );
        assert!(e[1].contains("`post` is not an HTTP method"), "{e:?}");
        let e = errors(&with_credits, &[("a.toml", &route("cost = -1"))]);
        assert!(e[0].contains("0 or more"), "{e:?}");
        let e = errors(
            &with_credits,
            &[("a.toml", &route("cost = 9007199254740992"))],
        );
        assert!(
            e[0].contains("cost is more than an account can hold (9007199254740991)"),
            "{e:?}"
        );
        // Without `methods`, a misspelt method would leave the real one free.
        let any_method = "[[route]]\nname = \"paid\"\npath = \"/paid\"\nauth = \"jwt\"\n";
        for typo in ["PSOT", "GETT", "TRACE", "CONNECT"] {
            let e = errors(
                &with_credits,
                &[("a.toml", &format!("{any_method}cost = {{ {typo} = 10 }}\n"))],
            );
            assert_eq!(e.len(), 1, "{typo}: {e:?}");
            assert!(
                e[0].contains(&format!("cost for {typo}, which is not a standard method")),
                "{e:?}"
            );
        }
        let listed = format!("{any_method}methods = [\"PROPFIND\"]\ncost = {{ PROPFIND = 2 }}\n");
        assert!(errors(&with_credits, &[("a.toml", &listed)]).is_empty());
        let standard = format!("{any_method}cost = {{ POST = 10, PATCH = 1, DELETE = 0 }}\n");
        assert!(errors(&with_credits, &[("a.toml", &standard)]).is_empty());
        // Not whole numbers, not numbers: said so, at the value.
        let e = errors(&with_credits, &[("a.toml", &route("cost = 1.5"))]);
        assert!(e[0].contains("a.toml:6:8:"), "{e:?}");
        assert!(e[0].contains("cost 1.5 is not a whole number"), "{e:?}");
        let e = errors(
            &with_credits,
            &[("a.toml", &route("cost = { POST = 2.5 }"))],
        );
        assert!(e[0].contains("a.toml:6:17:"), "{e:?}");
        assert!(e[0].contains("cost 2.5 is not a whole number"), "{e:?}");
        let e = errors(&with_credits, &[("a.toml", &route("cost = \"ten\""))]);
        assert!(
            e[0].contains("expected a whole number of tokens (`cost = 10`) or one per method"),
            "{e:?}"
        );
        let e = errors(
            &with_credits,
            &[("a.toml", &route("cost = { POST = { GET = 1 } }"))],
        );
        assert!(
            e[0].contains("expected a whole number of tokens (`POST = 10`)"),
            "{e:?}"
        );
        let e = errors(
            &with_credits,
            &[("a.toml", &route("settle_header = \"x-used\""))],
        );
        assert!(e[0].contains("for routes with a `cost`"), "{e:?}");
        let e = errors(
            &format!(
                "{}{CREDITS}refund_statuses = [\"5xx\", \"teapot\"]\n",
                gateway()
            ),
            &[],
        );
        assert!(e[0].contains("`teapot` is not a status"), "{e:?}");
    }

    #[test]
    fn the_embedded_ledger_syncs_before_forwarding_unless_told_otherwise() {
        let with = |extra: &str| format!("{}{CREDITS}{extra}\n", gateway());
        let s = load(&with(""), &[]).unwrap();
        assert_eq!(s.credits.unwrap().sync, LedgerSync::BeforeForwarding);
        let s = load(&with("sync = \"interval\""), &[]).unwrap();
        assert_eq!(
            s.credits.unwrap().sync,
            LedgerSync::Interval(Duration::from_millis(10))
        );
        let s = load(&with("sync = \"interval\"\nsync_interval = \"50ms\""), &[]).unwrap();
        assert_eq!(
            s.credits.unwrap().sync,
            LedgerSync::Interval(Duration::from_millis(50))
        );
        let e = errors(&with("sync_interval = \"50ms\""), &[]);
        assert!(e[0].contains("only with sync = \"interval\""), "{e:?}");
        let e = errors(&with("sync = \"interval\"\nsync_interval = \"5s\""), &[]);
        assert!(e[0].contains("1ms to 1s"), "{e:?}");
        let e = errors(&with("sync = \"sometimes\""), &[]);
        assert!(e[0].contains("sometimes"), "{e:?}");
        let redis = format!(
            "{}\n[store]\nredis_url = \"redis://127.0.0.1:6399\"\n{CREDITS}sync = \"interval\"\n",
            gateway()
        );
        let e = errors(&redis, &[]);
        assert!(e[0].contains("the ledger is in Redis"), "{e:?}");
        // The shipped file's explicit default holds in Redis too.
        let s = load(&redis.replace("\"interval\"", "\"before_forwarding\""), &[]).unwrap();
        assert_eq!(s.credits.unwrap().sync, LedgerSync::BeforeForwarding);
    }

    #[test]
    fn a_reservation_shorter_than_the_upstream_response_timeout_is_warned_about() {
        let with = |extra: &str| format!("{}{CREDITS}{extra}\n", gateway());
        let w = crate::load::testing::warnings(&with("reservation_timeout = \"1s\""), &[]);
        assert!(
            w.iter()
                .any(|w| w.contains("not longer than [upstream] response_timeout")),
            "{w:?}"
        );
        let w = crate::load::testing::warnings(&with("reservation_timeout = \"10m\""), &[]);
        assert!(
            !w.iter().any(|w| w.contains("reservation_timeout")),
            "{w:?}"
        );
    }

    #[test]
    fn the_token_endpoints_need_credits_and_a_caller() {
        let endpoint = |name: &str, auth: &str| {
            format!("[[route]]\nname = \"{name}\"\npath = \"/gateway/tokens/{name}\"\nauth = \"{auth}\"\naction = \"serve\"\nendpoint = \"tokens_{name}\"\n")
        };
        let with_credits = format!("{}{CREDITS}", gateway());
        let s = load(
            &with_credits,
            &[(
                "a.toml",
                &format!(
                    "{}{}",
                    endpoint("balance", "jwt"),
                    endpoint("costs", "none")
                ),
            )],
        )
        .unwrap();
        assert_eq!(
            s.routes[0].action,
            crate::snapshot::RouteAction::Serve(crate::snapshot::Endpoint::TokensBalance)
        );
        let e = errors(&with_credits, &[("a.toml", &endpoint("history", "none"))]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("the caller's own tokens"), "{e:?}");
        let e = errors(&gateway(), &[("a.toml", &endpoint("preview", "jwt"))]);
        assert!(e[0].contains("need a [credits] section"), "{e:?}");
    }

    #[test]
    fn a_head_no_entry_names_costs_what_a_get_costs() {
        use http::Method;
        let cost = crate::snapshot::Cost {
            amounts: vec![(Some(Method::GET), 2), (Some(Method::POST), 10)],
            settle_header: None,
            refund: Vec::new(),
        };
        // The backend does the GET's work for a HEAD.
        assert_eq!(cost.for_method(&Method::HEAD), 2);
        let named = crate::snapshot::Cost {
            amounts: vec![(Some(Method::GET), 2), (Some(Method::HEAD), 0)],
            ..cost
        };
        assert_eq!(named.for_method(&Method::HEAD), 0);
        assert_eq!(named.for_method(&Method::PUT), 0);
    }
}
