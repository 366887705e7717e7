//! One `[[route]]`: its path, methods and action, how it authenticates, what it adds
//! upstream, how the caller's client id reaches the backend, which bodies it accepts, and
//! its rate limits — each checked against what `gateway.toml` configures.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use http::Method;
use toml::Spanned;

use super::context::Loader;
use super::cors;
use super::declared::Declared;
use super::file::{
    ActionFile, AuthModeFile, ClientIdFile, EndpointFile, InjectTargetFile, JsonTypeFile,
    MismatchFile, RouteFile,
};
use super::limits::route_limits;
use super::Refs;
use crate::diagnostic::SourceFile;
use crate::media::MediaRange;
use crate::pattern::PathPattern;
use crate::snapshot::{
    ClientIdPolicy, Credential, Endpoint, JsonType, Mismatch, Origin, Route, RouteAction, RouteAuth,
};

pub(crate) fn route(
    l: &mut Loader,
    src: &SourceFile,
    f: RouteFile,
    span: Range<usize>,
    refs: &Refs,
    declared: &Declared,
    names: &mut HashMap<String, Origin>,
) -> Option<Route> {
    let (defined, cors_choice) = (&declared.limits, &declared.cors);
    let mark = l.mark();
    let name = f.name.get_ref().clone();
    let origin = src.origin(f.name.span());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        l.diags.push(src.error(
            Some(f.name.span()),
            format!("route name `{name}`: use letters, digits, `-`, `_` and `.` only"),
        ));
    } else if let Some(first) = names.get(&name) {
        l.diags.push(src.error(
            Some(f.name.span()),
            format!(
                "route name `{name}` is already used at {}:{}:{}",
                first.file.display(),
                first.line,
                first.column
            ),
        ));
    } else {
        names.insert(name.clone(), origin.clone());
    }
    let path = match PathPattern::parse(f.path.get_ref()) {
        Ok(p) => Some(p),
        Err(e) => {
            l.diags
                .push(src.error(Some(f.path.span()), format!("route `{name}`: {e}")));
            None
        }
    };
    let methods = match &f.methods {
        None => None,
        Some(list) if list.is_empty() => {
            l.diags.push(src.error(
                Some(span.clone()),
                format!("route `{name}`: `methods` is empty; omit it to allow every method"),
            ));
            None
        }
        Some(list) => Some({
            let mut seen = HashSet::new();
            list.iter()
                .filter_map(|m| {
                    let text = m.get_ref();
                    let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
                    match Method::from_bytes(text.as_bytes()) {
                        // A repeated method is a slip (one meant `PUT`, wrote `POST`
                        // twice): said, not silently merged.
                        Ok(_) if valid && !seen.insert(text.as_str()) => {
                            l.diags.push(src.error(
                                Some(m.span()),
                                format!("route `{name}`: `{text}` is listed twice in `methods`"),
                            ));
                            None
                        }
                        Ok(method) if valid && crate::snapshot::is_trace(&method) => {
                            l.diags.push(src.error(
                                Some(m.span()),
                                format!("route `{name}`: {text} is never forwarded (a backend answering it echoes the credentials the gateway adds)"),
                            ));
                            None
                        }
                        Ok(method) if valid => Some(method),
                        _ => {
                            l.diags.push(src.error(
                                Some(m.span()),
                                format!("route `{name}`: `{text}` is not an HTTP method (write it in upper case, e.g. `GET`)"),
                            ));
                            None
                        }
                    }
                })
                .collect::<Vec<_>>()
        }),
    };
    // A route that denies never reaches authentication, so it needs no auth settings.
    let route_auth = match f.action {
        ActionFile::Deny => Some(RouteAuth::None),
        ActionFile::Forward | ActionFile::Serve | ActionFile::Login => {
            route_auth(l, src, &f, &name, refs)
        }
    };
    let action = match (f.action, &f.endpoint) {
        (ActionFile::Forward, None) => Some(RouteAction::Forward),
        (ActionFile::Deny, None) => Some(RouteAction::Deny),
        (ActionFile::Login, None) => Some(RouteAction::Login),
        (ActionFile::Serve, Some(endpoint)) => Some(RouteAction::Serve(match endpoint.get_ref() {
            EndpointFile::Jwks => Endpoint::Jwks,
            EndpointFile::Refresh => Endpoint::Refresh,
            EndpointFile::Logout => Endpoint::Logout,
            EndpointFile::TokensBalance => Endpoint::TokensBalance,
            EndpointFile::TokensCosts => Endpoint::TokensCosts,
            EndpointFile::TokensPreview => Endpoint::TokensPreview,
            EndpointFile::TokensHistory => Endpoint::TokensHistory,
        })),
        (ActionFile::Serve, None) => {
            l.error(
                src,
                Some(f.name.span()),
                format!(
                    "route `{name}`: action = \"serve\" needs `endpoint = \"...\"` (one of: jwks, refresh, logout, tokens_balance, tokens_costs, tokens_preview, tokens_history)"
                ),
            );
            None
        }
        (_, Some(endpoint)) => {
            l.error(
                src,
                Some(endpoint.span()),
                format!("route `{name}`: `endpoint` is only used with action = \"serve\""),
            );
            None
        }
    };
    if let (ActionFile::Serve, Some(c)) = (f.action, &f.upstream_credential) {
        l.error(src, Some(c.span()), format!("route `{name}`: the gateway answers this route itself: no backend credential is sent"));
    }
    sessions_needs(
        l,
        src,
        &f,
        &name,
        action.as_ref(),
        route_auth.as_ref(),
        refs,
    );
    credits_needs(
        l,
        src,
        &f,
        &name,
        action.as_ref(),
        route_auth.as_ref(),
        refs,
    );
    let cost = super::credits::route_cost(
        l,
        src,
        &f,
        methods.as_deref(),
        route_auth.as_ref(),
        action.as_ref(),
        refs,
    );
    let route_cors = match &f.cors {
        None => Ok(cors_choice.default.clone()),
        Some(reference) => cors::reference(
            l,
            src,
            reference,
            &cors_choice.defined,
            &format!("route `{name}` cors"),
        ),
    };
    let upstream_credential = match &f.upstream_credential {
        None => None,
        Some(c) => match refs.credentials.get(c.get_ref()) {
            Some(Some(cred)) => Some((c.get_ref().clone(), Arc::clone(cred))),
            Some(None) => None,
            None => {
                l.diags.push(src.error(
                    Some(c.span()),
                    format!(
                        "route `{name}`: no [credentials.{}] in gateway.toml",
                        c.get_ref()
                    ),
                ));
                None
            }
        },
    };
    if let (Some(c), Some(RouteAuth::None), ActionFile::Forward | ActionFile::Login) =
        (&f.upstream_credential, &route_auth, f.action)
    {
        let per_client = upstream_credential
            .as_ref()
            .is_some_and(|(_, cred)| matches!(**cred, Credential::ClientMap { .. }));
        if per_client {
            l.diags.push(src.error(
                Some(c.span()),
                format!("route `{name}`: `{}` is a per-client credential, and an anonymous route has no client", c.get_ref()),
            ));
        } else if !f.allow_anonymous_credential {
            l.diags.push(src.error(
                Some(c.span()),
                format!("route `{name}`: auth = \"none\" would add the backend credential `{}` for anyone; authenticate the route, or say `allow_anonymous_credential = true` if that is what you mean", c.get_ref()),
            ));
        }
    } else if f.allow_anonymous_credential {
        l.diags.push(src.error(
            Some(f.name.span()),
            format!("route `{name}`: allow_anonymous_credential is only for auth = \"none\" routes with an upstream_credential"),
        ));
    }
    if f.pass_api_key
        && !matches!(
            f.auth.as_ref().map(|a| *a.get_ref()),
            Some(AuthModeFile::ApiKey | AuthModeFile::JwtOrApiKey)
        )
    {
        l.diags.push(src.error(
            Some(f.name.span()),
            format!("route `{name}`: pass_api_key passes on the key a caller authenticated with: it needs auth = \"api_key\" or \"jwt_or_api_key\""),
        ));
    }
    let opaque_body_types = opaque_types(l, src, f.opaque_body_types.as_deref(), &name);
    if l.errors_since(mark) {
        return None;
    }
    let route_auth = route_auth?;
    let (limits, username_fields) = route_limits(l, src, &f, &name, &route_auth, defined)?;
    let identifies_caller = route_auth.identifies_caller();
    let client_id = if identifies_caller {
        Some(client_id_policy(l, src, f.client_id.as_ref(), &name)?)
    } else {
        if f.client_id.is_some() {
            l.diags.push(src.error(
                Some(f.name.span()),
                format!("route `{name}`: `client_id` needs an authenticated caller (auth = jwt, api_key or jwt_or_api_key)"),
            ));
            return None;
        }
        None
    };
    let max_upload_bytes = match &f.max_upload_bytes {
        None => None,
        Some(v) => match u64::try_from(*v.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                l.diags.push(src.error(
                    Some(v.span()),
                    format!("route `{name}`: max_upload_bytes must be positive"),
                ));
                return None;
            }
        },
    };
    if !identifies_caller && !opaque_body_types.is_empty() {
        l.diags.push(src.error(
            Some(f.name.span()),
            format!("route `{name}`: opaque_body_types is for routes that authenticate a caller (bodies of other routes are not inspected)"),
        ));
        return None;
    }
    Some(Route {
        auth: route_auth,
        cors: route_cors.ok()?,
        opaque_body_types,
        client_id,
        max_upload_bytes,
        limits,
        username_fields,
        upstream_credential,
        pass_api_key: f.pass_api_key,
        cost,
        name,
        methods,
        path: path?,
        action: action?,
        origin,
    })
}

/// What the session routes need: the login route and the refresh and logout endpoints
/// mint tokens (a signing key, an issuer and an audience, `[sessions]`), and read their
/// own credentials (so `auth = "none"`: a login has no token yet, and a refresh's
/// access token has usually expired).
fn sessions_needs(
    l: &mut Loader,
    src: &SourceFile,
    f: &RouteFile,
    name: &str,
    action: Option<&RouteAction>,
    auth: Option<&RouteAuth>,
    refs: &Refs,
) {
    let what = match action {
        Some(RouteAction::Login) => "the login route",
        Some(RouteAction::Serve(Endpoint::Refresh)) => "the refresh endpoint",
        Some(RouteAction::Serve(Endpoint::Logout)) => "the logout endpoint",
        _ => return,
    };
    let mut missing = Vec::new();
    if !refs.sessions {
        missing.push("a [sessions] section");
    }
    if matches!(action, Some(RouteAction::Login)) && !refs.login {
        missing.push("a [login] section");
    }
    match &refs.auth.jwt {
        None => missing.push("[jwt] with a signing key, an issuer and an audience"),
        Some(jwt) => {
            if jwt.signing.is_none() {
                missing.push("a [[jwt.key]] that can sign (a secret or a private_key_file)");
            }
            if jwt.rules.issuer.is_none() || jwt.rules.audience.is_none() {
                missing.push("[jwt] issuer and audience (RFC 9068 access tokens carry both)");
            }
        }
    }
    if !missing.is_empty() {
        l.error(
            src,
            Some(f.name.span()),
            format!("route `{name}`: {what} needs {}", missing.join(", ")),
        );
    }
    if auth.is_some_and(|a| !matches!(a, RouteAuth::None)) {
        l.error(
            src,
            f.auth.as_ref().map(|a| a.span()).or(Some(f.name.span())),
            format!("route `{name}`: {what} reads its own credentials: write auth = \"none\""),
        );
    }
}

/// What the token endpoints need: `[credits]`, and (but for the cost table, which is
/// the same for everyone) a caller whose balance they are about.
fn credits_needs(
    l: &mut Loader,
    src: &SourceFile,
    f: &RouteFile,
    name: &str,
    action: Option<&RouteAction>,
    auth: Option<&RouteAuth>,
    refs: &Refs,
) {
    let Some(RouteAction::Serve(
        endpoint @ (Endpoint::TokensBalance
        | Endpoint::TokensCosts
        | Endpoint::TokensPreview
        | Endpoint::TokensHistory),
    )) = action
    else {
        return;
    };
    if !refs.credits_declared {
        l.error(
            src,
            Some(f.name.span()),
            format!("route `{name}`: the token endpoints need a [credits] section in gateway.toml"),
        );
    }
    if *endpoint != Endpoint::TokensCosts && auth.is_some_and(|a| !a.identifies_caller()) {
        l.error(
            src,
            f.auth.as_ref().map(|a| a.span()).or(Some(f.name.span())),
            format!("route `{name}`: this endpoint answers about the caller's own tokens: it needs auth = jwt, api_key or jwt_or_api_key"),
        );
    }
}

/// A route's `opaque_body_types`: media ranges, none of them a type the gateway inspects.
fn opaque_types(
    l: &mut Loader,
    src: &SourceFile,
    list: Option<&[Spanned<String>]>,
    route: &str,
) -> Vec<MediaRange> {
    let mut out = Vec::new();
    for item in list.unwrap_or_default() {
        let text = item.get_ref();
        match MediaRange::parse(text) {
            Ok(range) => {
                let inspected = ["application/json", "application/x-www-form-urlencoded", "multipart/form-data", "application/problem+json"];
                let clash = inspected.iter().any(|t| {
                    crate::media::MediaType::parse(t.as_bytes()).is_ok_and(|m| range.matches(&m))
                }) || range.as_str().ends_with("+json");
                // Some backends pick a body parser by a search of the whole type
                // (formidable: /json/i, /urlencoded/i, /multipart/i): such a body would
                // be parsed unread by the gateway.
                let parsed_as = crate::media::FIELD_PARSER_WORDS
                    .iter()
                    .find(|w| range.as_str().contains(**w));
                if clash {
                    l.diags.push(src.error(
                        Some(item.span()),
                        format!("route `{route}`: opaque_body_types: `{text}` covers JSON, form or multipart bodies, which are always inspected"),
                    ));
                } else if let Some(word) = parsed_as {
                    l.diags.push(src.error(
                        Some(item.span()),
                        format!("route `{route}`: opaque_body_types: `{text}` names `{word}`, by which some backends (formidable) parse a body as JSON, a form or multipart: it cannot pass uninspected"),
                    ));
                } else {
                    out.push(range);
                }
            }
            Err(_) => l.diags.push(src.error(
                Some(item.span()),
                format!("route `{route}`: opaque_body_types: `{text}` is not a media type such as `text/csv` or `image/*`"),
            )),
        }
    }
    out
}

/// The route's authentication, checked against what `gateway.toml` configures.
fn route_auth(
    l: &mut Loader,
    src: &SourceFile,
    f: &RouteFile,
    name: &str,
    refs: &Refs,
) -> Option<RouteAuth> {
    let mode = f.auth.as_ref().map_or(AuthModeFile::Jwt, |a| *a.get_ref());
    let span = f.auth.as_ref().map_or(f.name.span(), |a| a.span());
    let mut fail = |message: String| {
        l.diags
            .push(src.error(Some(span.clone()), format!("route `{name}`: {message}")));
        None
    };
    if mode != AuthModeFile::Webhook && f.webhook.is_some() {
        return fail("`webhook` is only used with auth = \"webhook\"".into());
    }
    let needs_jwt = matches!(mode, AuthModeFile::Jwt | AuthModeFile::JwtOrApiKey);
    let needs_keys = matches!(mode, AuthModeFile::ApiKey | AuthModeFile::JwtOrApiKey);
    if (needs_jwt && refs.auth.jwt.is_none() && refs.jwt_declared)
        || (needs_keys && refs.auth.api_keys.is_none() && refs.api_keys_declared)
    {
        return None;
    }
    if needs_jwt && refs.auth.jwt.is_none() {
        let hint = if f.auth.is_none() {
            " (routes authenticate by JWT unless they say `auth = ...`)"
        } else {
            ""
        };
        return fail(format!(
            "needs JWT authentication but gateway.toml has no [jwt]{hint}"
        ));
    }
    if needs_keys && refs.auth.api_keys.is_none() {
        return fail("accepts API keys but gateway.toml has no [api_keys]".into());
    }
    Some(match mode {
        AuthModeFile::None => RouteAuth::None,
        AuthModeFile::Jwt => RouteAuth::Jwt,
        AuthModeFile::ApiKey => RouteAuth::ApiKey,
        AuthModeFile::JwtOrApiKey => RouteAuth::JwtOrApiKey,
        AuthModeFile::Webhook => {
            let Some(hook) = &f.webhook else {
                return fail("auth = \"webhook\" needs `webhook = \"NAME\"`".into());
            };
            match refs.webhooks.get(hook.get_ref()) {
                Some(Some(w)) => RouteAuth::Webhook(Arc::clone(w)),
                // Declared but invalid: reported where it is written.
                Some(None) => return None,
                None => {
                    l.diags.push(src.error(
                        Some(hook.span()),
                        format!(
                            "route `{name}`: no [webhooks.{}] in gateway.toml",
                            hook.get_ref()
                        ),
                    ));
                    return None;
                }
            }
        }
    })
}

/// The route's client-id policy; defaults inject everywhere and reject mismatches.
fn client_id_policy(
    l: &mut Loader,
    src: &SourceFile,
    f: Option<&ClientIdFile>,
    route: &str,
) -> Option<ClientIdPolicy> {
    let mark = l.mark();
    let mut error = |span: Range<usize>, message: String| {
        l.error(
            src,
            Some(span),
            format!("route `{route}`: client_id: {message}"),
        );
    };
    let targets: Vec<InjectTargetFile> = match f.and_then(|f| f.inject.as_ref()) {
        None => vec![
            InjectTargetFile::Query,
            InjectTargetFile::Header,
            InjectTargetFile::Json,
            InjectTargetFile::Form,
        ],
        Some(list) => list.iter().map(|t| *t.get_ref()).collect(),
    };
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let mut names = vec![f
        .and_then(|f| f.name.as_ref())
        .map_or("clientId".to_owned(), |n| n.get_ref().clone())];
    if let Some(n) = f.and_then(|f| f.name.as_ref()) {
        if !valid_name(n.get_ref()) {
            error(n.span(), format!("`{}` is not a usable name", n.get_ref()));
        }
    }
    for alias in f.and_then(|f| f.aliases.as_ref()).into_iter().flatten() {
        if !valid_name(alias.get_ref()) {
            error(
                alias.span(),
                format!("`{}` is not a usable name", alias.get_ref()),
            );
        }
        names.push(alias.get_ref().clone());
    }
    let header = match f.and_then(|f| f.header.as_ref()) {
        Some(h) => match http::header::HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                error(h.span(), format!("`{}` is not a header name", h.get_ref()));
                http::header::HeaderName::from_static("x-client-id")
            }
        },
        None => http::header::HeaderName::from_static("x-client-id"),
    };
    let json_pointer = match f.and_then(|f| f.json_pointer.as_ref()) {
        None => Vec::new(),
        Some(p) if p.get_ref().is_empty() => Vec::new(),
        Some(p) if p.get_ref().starts_with('/') => p.get_ref()[1..]
            .split('/')
            .map(|seg| seg.replace("~1", "/").replace("~0", "~"))
            .collect(),
        Some(p) => {
            error(
                p.span(),
                "a JSON pointer starts with '/' (e.g. \"/data\")".into(),
            );
            Vec::new()
        }
    };
    let max_body_bytes = match f.and_then(|f| f.max_body_bytes.as_ref()) {
        None => 1024 * 1024,
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if (1..=64 * 1024 * 1024).contains(&n) => n,
            _ => {
                error(
                    v.span(),
                    "max_body_bytes must be between 1 and 67108864".into(),
                );
                1024 * 1024
            }
        },
    };
    (!l.errors_since(mark)).then(|| ClientIdPolicy {
        query: targets.contains(&InjectTargetFile::Query),
        header: targets
            .contains(&InjectTargetFile::Header)
            .then_some(header),
        json: targets.contains(&InjectTargetFile::Json),
        form: targets.contains(&InjectTargetFile::Form),
        names,
        json_pointer,
        on_mismatch: match f.and_then(|f| f.on_mismatch) {
            Some(MismatchFile::Overwrite) => Mismatch::Overwrite,
            _ => Mismatch::Reject,
        },
        allow_non_object_json: f.is_some_and(|f| f.allow_non_object_json),
        max_body_bytes,
        json_type: match f.and_then(|f| f.json_type) {
            None | Some(JsonTypeFile::Claim) => JsonType::Claim,
            Some(JsonTypeFile::String) => JsonType::String,
            Some(JsonTypeFile::Number) => JsonType::Number,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY, HS256};
    use crate::snapshot::{Endpoint, JsonType, Mismatch, RouteAction, RouteAuth};

    fn jwt() -> String {
        format!(
            "{GATEWAY}\n[jwt]\n\n[[jwt.key]]\nalgorithm = \"HS256\"\nsecret_env = \"{HS256}\"\n"
        )
    }

    #[test]
    fn opaque_types_a_backend_may_parse_are_refused() {
        for (t, says) in [
            ("application/json", "always inspected"),
            ("application/*", "always inspected"),
            ("application/x-ndjson", "names `json`"),
            ("text/x-urlencoded", "names `urlencoded`"),
        ] {
            let route = format!(
                "[[route]]\nname = \"r\"\npath = \"/c/*\"\nopaque_body_types = [\"{t}\"]\n"
            );
            let e = errors(&jwt(), &[("a.toml", &route)]);
            assert!(e.iter().any(|d| d.contains(says)), "{t}: {e:?}");
        }
    }

    #[test]
    fn a_route_with_every_field() {
        let route = "[[route]]\nname = \"r\"\nmethods = [\"GET\", \"POST\"]\npath = \"/c/{id}\"\nauth = \"jwt\"\nmax_upload_bytes = 100\nopaque_body_types = [\"text/csv\"]\nclient_id = { inject = [\"json\"], name = \"cid\", aliases = [\"client_id\"], json_pointer = \"/data\", on_mismatch = \"overwrite\", json_type = \"number\", max_body_bytes = 10 }\n";
        let s = load(&jwt(), &[("a.toml", route)]).unwrap();
        let r = &s.routes[0];
        assert_eq!(r.methods.as_ref().unwrap().len(), 2);
        assert!(matches!(r.auth, RouteAuth::Jwt));
        assert_eq!(r.max_upload_bytes, Some(100));
        assert_eq!(r.opaque_body_types[0].as_str(), "text/csv");
        let c = r.client_id.as_ref().unwrap();
        assert!(c.json && !c.query && !c.form && c.header.is_none());
        assert_eq!(c.names, ["cid", "client_id"]);
        assert_eq!(c.json_pointer, ["data"]);
        assert_eq!(
            (c.on_mismatch, c.json_type, c.max_body_bytes),
            (Mismatch::Overwrite, JsonType::Number, 10)
        );
    }

    #[test]
    fn routes_the_gateway_serves() {
        let s = load(&jwt(), &[("a.toml", "[[route]]\nname = \"keys\"\npath = \"/.well-known/jwks.json\"\nauth = \"none\"\naction = \"serve\"\nendpoint = \"jwks\"\n")]).unwrap();
        assert_eq!(s.routes[0].action, RouteAction::Serve(Endpoint::Jwks));
        let e = errors(&jwt(), &[("a.toml", "[[route]]\nname = \"a\"\npath = \"/a\"\naction = \"serve\"\n\n[[route]]\nname = \"b\"\npath = \"/b\"\nendpoint = \"jwks\"\n")]);
        assert_eq!(
            e,
            [
                "a.toml:2:8: route `a`: action = \"serve\" needs `endpoint = \"...\"` (one of: jwks, refresh, logout, tokens_balance, tokens_costs, tokens_preview, tokens_history)",
                "a.toml:9:12: route `b`: `endpoint` is only used with action = \"serve\"",
            ]
        );
    }

    #[test]
    fn a_missing_auth_section_is_named_once_per_route_that_needs_it() {
        let e = errors(GATEWAY, &[("a.toml", "[[route]]\nname = \"a\"\npath = \"/a\"\n\n[[route]]\nname = \"b\"\npath = \"/b\"\nauth = \"api_key\"\n")]);
        assert_eq!(
            e,
            [
                "a.toml:2:8: route `a`: needs JWT authentication but gateway.toml has no [jwt] (routes authenticate by JWT unless they say `auth = ...`)",
                "a.toml:8:8: route `b`: accepts API keys but gateway.toml has no [api_keys]",
            ]
        );
    }

    #[test]
    fn an_invalid_auth_section_is_reported_where_it_is_written_only() {
        let gateway = format!(
            "{GATEWAY}\n[jwt]\nleewa = \"1s\"\n\n[[jwt.key]]\nalgorithm = \"HS256\"\nsecret_env = \"{HS256}\"\n\n[api_keys]\nfile = \"keys/missing.toml\"\n"
        );
        let routes = "[[route]]\nname = \"a\"\npath = \"/a\"\n\n[[route]]\nname = \"b\"\npath = \"/b\"\nauth = \"jwt_or_api_key\"\n";
        let e = errors(&gateway, &[("a.toml", routes)]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("gateway.toml:11:1: [jwt]: unknown field `leewa`"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("gateway.toml:18:8: [api_keys] file: cannot read"),
            "{e:?}"
        );
    }

    #[test]
    fn trace_is_never_a_route_s_method() {
        for method in ["TRACE", "TRACK"] {
            let route = format!(
                "[[route]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"GET\", \"{method}\"]\n"
            );
            assert_eq!(
                errors(&jwt(), &[("a.toml", &route)]),
                [format!("a.toml:4:19: route `r`: {method} is never forwarded (a backend answering it echoes the credentials the gateway adds)")]
            );
        }
    }

    #[test]
    fn a_method_listed_twice_is_named_where_it_repeats() {
        let route =
            "[[route]]\nname = \"r\"\npath = \"/r\"\nmethods = [\"GET\", \"POST\", \"GET\"]\n";
        let e = errors(&jwt(), &[("a.toml", route)]);
        assert_eq!(
            e,
            ["a.toml:4:27: route `r`: `GET` is listed twice in `methods`"]
        );
    }

    #[test]
    fn client_id_mistakes() {
        let e = errors(&jwt(), &[("a.toml", "[[route]]\nname = \"a\"\npath = \"/a\"\nclient_id = { name = \"bad name\", json_pointer = \"data\", max_body_bytes = 0 }\n\n[[route]]\nname = \"b\"\npath = \"/b\"\nauth = \"none\"\nclient_id = {}\n")]);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(
            e[0].contains("route `a`: client_id: `bad name` is not a usable name"),
            "{e:?}"
        );
        assert!(e[1].contains("a JSON pointer starts with '/'"), "{e:?}");
        assert!(
            e[2].contains("max_body_bytes must be between 1 and 67108864"),
            "{e:?}"
        );
        assert!(
            e[3].contains("route `b`: `client_id` needs an authenticated caller"),
            "{e:?}"
        );
    }
}
