//! Loading: `gateway.toml` plus the policy directory into one validated [`Snapshot`].
//!
//! Every problem is collected, not just the first: TOML syntax errors, unknown or
//! mistyped fields (each section and each route is read on its own, so one bad route does
//! not hide the next), and semantic errors (bad addresses, patterns, duplicate names).
//! Each carries the file, line and column it is about.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Uri};
use http::Method;
use serde::de::DeserializeOwned;
use thiserror::Error;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::auth;
use crate::cidr::Cidr;
use crate::diagnostic::{Diagnostic, Severity, SourceFile};
use crate::file::{
    ActionFile, AdminFile, LogFile, LogFormatFile, ReloadFile, RouteFile, RoutingFile, ServerFile,
    UnmatchedFile, UpstreamFile,
};
use crate::file::{ApiKeysFile, AuthModeFile, JwtFile, StoreFile, UnderscoresFile};
use crate::fingerprint::Fingerprint;
use crate::limits;
use crate::media::MediaRange;
use crate::pattern::PathPattern;
use crate::snapshot::{
    Admin, Log, LogFormat, Origin, Reload, Route, RouteAction, Server, Snapshot, Unmatched,
    Upstream,
};
use crate::snapshot::{
    Auth, BodyLimits, ClientIdPolicy, Credential, JsonType, LimitPolicy, Mismatch, RouteAuth,
    Underscores, Webhook,
};
use crate::sources::Sources;
use http::header::HeaderName;
use std::sync::Arc;

/// The configuration could not be turned into a snapshot; every diagnostic is listed
/// (warnings included).
#[derive(Debug, Error)]
#[error("{} error(s) in the configuration", .0.iter().filter(|d| d.severity == Severity::Error).count())]
pub struct LoadError(pub Vec<Diagnostic>);

/// Request headers that make common backends and frameworks re-route a request, change
/// its method, or believe another client address; removed unless the operator lists
/// otherwise. (`X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` are handled by the
/// forwarding headers: believed from trusted proxies only.)
pub const DEFAULT_STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-host",
    "x-original-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
    "front-end-https",
];

const DEFAULT_REDACTED_QUERY_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "key",
    "token",
    "access_token",
    "refresh_token",
    "secret",
    "password",
    "signature",
    "sig",
];

/// Reads `gateway.toml` at `config` and the policy files it names, and validates them.
pub fn load(config: &Path) -> Result<Snapshot, LoadError> {
    load_from(config, &crate::sources::Disk)
}

/// [`load`], reading files and environment variables from `sources`.
pub fn load_from(config: &Path, sources: &dyn Sources) -> Result<Snapshot, LoadError> {
    let mut diags = Vec::new();
    let snapshot = build(config, sources, &mut diags);
    sort_by_place(&mut diags);
    match snapshot {
        Some(snapshot) if !diags.iter().any(|d| d.severity == Severity::Error) => Ok(Snapshot {
            warnings: diags,
            ..snapshot
        }),
        _ => Err(LoadError(diags)),
    }
}

/// Orders diagnostics by file (in the order files were read), then line and column.
fn sort_by_place(diags: &mut [Diagnostic]) {
    let mut files: Vec<PathBuf> = Vec::new();
    for d in diags.iter() {
        if !files.contains(&d.file) {
            files.push(d.file.clone());
        }
    }
    diags.sort_by_key(|d| (files.iter().position(|f| *f == d.file), d.line, d.column));
}

fn build(config: &Path, sources: &dyn Sources, diags: &mut Vec<Diagnostic>) -> Option<Snapshot> {
    let mut fingerprint = Fingerprint::new();
    let mut referenced = Vec::new();
    let text = read(sources, config, diags);
    fingerprint.file(config, text.as_deref().map(str::as_bytes));
    let text = text?;
    let src = SourceFile {
        path: config,
        text: &text,
    };
    let mut sections = parse_sections(&src, diags)?;
    let mut take = |name: &str| sections.remove(name);

    let server = section::<ServerFile>(&src, take("server"), "server", true, diags)
        .and_then(|f| server(&src, f, diags));
    let upstream = section::<UpstreamFile>(&src, take("upstream"), "upstream", true, diags)
        .and_then(|f| upstream(&src, f, diags));
    let routing = section::<RoutingFile>(&src, take("routing"), "routing", true, diags);
    let admin = section::<AdminFile>(&src, take("admin"), "admin", false, diags)
        .map(|f| address(&src, &f.listen, diags).map(|listen| Admin { listen }));
    let log = section::<LogFile>(&src, take("log"), "log", false, diags);
    let reload = section::<ReloadFile>(&src, take("reload"), "reload", false, diags)
        .map_or(Some(default_reload()), |f| reload(&src, f, diags));
    let base = config.parent().unwrap_or(Path::new("."));
    let jwt_section = take("jwt");
    let jwt_span = jwt_section.as_ref().map(|(k, _)| k.clone());
    let jwt = section::<JwtFile>(&src, jwt_section, "jwt", false, diags).and_then(|f| {
        let mut ctx = auth::Ctx {
            src: &src,
            base,
            diags,
            fingerprint: &mut fingerprint,
            files: &mut referenced,
            sources,
        };
        auth::jwt(&mut ctx, f, jwt_span.unwrap_or(0..0))
    });
    let api_keys = section::<ApiKeysFile>(&src, take("api_keys"), "api_keys", false, diags)
        .and_then(|f| {
            let mut ctx = auth::Ctx {
                src: &src,
                base,
                diags,
                fingerprint: &mut fingerprint,
                files: &mut referenced,
                sources,
            };
            auth::api_keys(&mut ctx, f)
        });
    let credentials = take("credentials").map_or_else(HashMap::new, |(_, v)| {
        auth::credentials(
            &mut auth::Ctx {
                src: &src,
                base,
                diags,
                fingerprint: &mut fingerprint,
                files: &mut referenced,
                sources,
            },
            v,
        )
    });
    let webhooks = take("webhooks").map_or_else(HashMap::new, |(_, v)| {
        auth::webhooks(
            &mut auth::Ctx {
                src: &src,
                base,
                diags,
                fingerprint: &mut fingerprint,
                files: &mut referenced,
                sources,
            },
            v,
        )
    });
    let store = section::<StoreFile>(&src, take("store"), "store", false, diags);
    let store = limits::store(&src, store, sources, diags);
    let auth_settings = Auth { jwt, api_keys };
    for (name, (key_span, _)) in sections {
        diags.push(src.error(
            Some(key_span),
            format!(
                "unknown section `{name}`; expected one of: server, upstream, routing, admin, log, reload, jwt, api_keys, credentials, webhooks, store"
            ),
        ));
    }

    let policy_dir = routing.as_ref().map(|r| {
        config
            .parent()
            .unwrap_or(Path::new("."))
            .join(r.policies.get_ref())
    });
    let (routes, limit_policies, policy_files) = match (&routing, &policy_dir) {
        (Some(r), Some(dir)) => {
            let refs = Refs {
                auth: &auth_settings,
                credentials: &credentials,
                webhooks: &webhooks,
            };
            load_policies(
                sources,
                dir,
                &src,
                r.policies.span(),
                &refs,
                &mut fingerprint,
                diags,
            )
        }
        _ => (Vec::new(), Vec::new(), Vec::new()),
    };
    let identity_headers = identity_headers(&routes);

    Some(Snapshot {
        server: server?,
        upstream: upstream?,
        routes,
        unmatched: match routing?.unmatched {
            UnmatchedFile::Deny => Unmatched::Deny,
            UnmatchedFile::Forward => Unmatched::Forward,
        },
        // An invalid `[admin]` is already an error in `diags`, which stops the snapshot.
        admin: admin.flatten(),
        log: {
            let mut log = log_settings(&src, log, diags)?;
            // Secrets that arrive in the query string are never logged.
            let secret_params = webhooks
                .values()
                .flatten()
                .filter_map(|w| match &**w {
                    Webhook::UrlSecret { param, .. } => Some(crate::param::fold(param)),
                    _ => None,
                })
                .chain(
                    auth_settings
                        .api_keys
                        .iter()
                        .filter_map(|k| k.query_param.as_deref().map(crate::param::fold)),
                );
            log.redact_query_params.extend(secret_params);
            log
        },
        reload: reload?,
        auth: auth_settings,
        policy_dir: policy_dir?,
        policy_files,
        identity_headers,
        fingerprint: fingerprint.finish(),
        referenced_files: referenced,
        warnings: Vec::new(),
        store: store?,
        limits: limit_policies,
    })
}

fn read(sources: &dyn Sources, path: &Path, diags: &mut Vec<Diagnostic>) -> Option<String> {
    match sources.read(path).and_then(|bytes| {
        String::from_utf8(bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }) {
        Ok(text) => Some(text),
        Err(e) => {
            diags.push(Diagnostic {
                file: path.to_path_buf(),
                line: 1,
                column: 1,
                severity: Severity::Error,
                message: format!("cannot read file: {e}"),
            });
            None
        }
    }
}

type Sections<'i> = HashMap<String, (Range<usize>, Spanned<DeValue<'i>>)>;

/// Parses a document and splits it into its top-level keys; syntax errors are all reported.
fn parse_sections<'i>(src: &SourceFile<'i>, diags: &mut Vec<Diagnostic>) -> Option<Sections<'i>> {
    let (root, errors) = DeTable::parse_recoverable(src.text);
    if !errors.is_empty() {
        for e in errors {
            diags.push(src.error(e.span(), format!("TOML syntax: {}", e.message().trim())));
        }
        return None;
    }
    Some(
        root.into_inner()
            .into_iter()
            .map(|(k, v)| (k.get_ref().to_string(), (k.span(), v)))
            .collect(),
    )
}

/// Deserializes one section; a missing required section is reported at the top of the file.
fn section<T: DeserializeOwned>(
    src: &SourceFile,
    value: Option<(Range<usize>, Spanned<DeValue>)>,
    name: &str,
    required: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    match value {
        Some((_, value)) => deserialize(src, value, &format!("[{name}]"), diags),
        None => {
            if required {
                diags.push(src.error(None, format!("missing required section `[{name}]`")));
            }
            None
        }
    }
}

fn deserialize<T: DeserializeOwned>(
    src: &SourceFile,
    value: Spanned<DeValue>,
    what: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    let whole = value.span();
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(src.error(
                e.span().or(Some(whole)),
                format!("{what}: {}", e.message().trim()),
            ));
            None
        }
    }
}

fn server(src: &SourceFile, f: ServerFile, diags: &mut Vec<Diagnostic>) -> Option<Server> {
    let before = diags.len();
    if f.listen.is_empty() {
        diags.push(src.error(None, "[server] listen: give at least one address"));
    }
    let listen: Vec<SocketAddr> = f
        .listen
        .iter()
        .filter_map(|a| address(src, a, diags))
        .collect();
    let trusted_proxies = f
        .trusted_proxies
        .iter()
        .filter_map(|c| match c.get_ref().parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                diags.push(src.error(Some(c.span()), format!("[server] trusted_proxies: {e}")));
                None
            }
        })
        .collect();
    let server = Server {
        listen,
        header_read_timeout: duration(src, &f.header_read_timeout, 10_000, diags),
        max_header_bytes: size(
            src,
            &f.max_header_bytes,
            32 * 1024,
            1024..=1024 * 1024,
            diags,
        ),
        max_uri_bytes: size(src, &f.max_uri_bytes, 8 * 1024, 256..=64 * 1024, diags),
        shutdown_grace: duration(src, &f.shutdown_grace, 30_000, diags),
        workers: size(
            src,
            &f.workers,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            1..=1024,
            diags,
        ),
        trusted_proxies,
        headers_with_underscores: match f.headers_with_underscores {
            None | Some(UnderscoresFile::Drop) => Underscores::Drop,
            Some(UnderscoresFile::Refuse) => Underscores::Refuse,
        },
        strip_request_headers: match &f.strip_request_headers {
            None => DEFAULT_STRIPPED_REQUEST_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            Some(list) => list
                .iter()
                .filter_map(|h| match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                    Ok(name) => Some(name),
                    Err(_) => {
                        diags.push(src.error(
                            Some(h.span()),
                            format!(
                                "[server] strip_request_headers: `{}` is not a header name",
                                h.get_ref()
                            ),
                        ));
                        None
                    }
                })
                .collect(),
        },
        bodies: BodyLimits {
            timeout: duration(src, &f.request_body_timeout, 10_000, diags),
            min_rate: size(
                src,
                &f.request_body_min_rate,
                8 * 1024,
                1..=1024 * 1024 * 1024,
                diags,
            ) as u64,
            max_buffered: size(
                src,
                &f.max_buffered_body_bytes,
                64 * 1024 * 1024,
                64 * 1024..=64 * 1024 * 1024 * 1024,
                diags,
            ),
        },
        max_connections: size(src, &f.max_connections, 10_000, 1..=10_000_000, diags),
    };
    (diags.len() == before).then_some(server)
}

fn upstream(src: &SourceFile, f: UpstreamFile, diags: &mut Vec<Diagnostic>) -> Option<Upstream> {
    let before = diags.len();
    let url_error =
        |message: &str| src.error(Some(f.url.span()), format!("[upstream] url: {message}"));
    let (authority, base_path) = match f.url.get_ref().parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) if uri.query().is_none() => {
                let base = uri.path().trim_end_matches('/').to_owned();
                (Some(authority.clone()), base)
            }
            (Some("https"), _) => {
                diags.push(url_error(
                    "https upstreams are not supported yet; use http:// on a private network",
                ));
                (None, String::new())
            }
            _ => {
                diags.push(url_error(
                    "expected `http://host:port[/base/path]` without a query",
                ));
                (None, String::new())
            }
        },
        Err(e) => {
            diags.push(url_error(&e.to_string()));
            (None, String::new())
        }
    };
    let upstream = Upstream {
        authority: authority.unwrap_or_else(|| Authority::from_static("invalid")),
        base_path,
        connect_timeout: duration(src, &f.connect_timeout, 2_000, diags),
        response_timeout: duration(src, &f.response_timeout, 30_000, diags),
        pool_idle_timeout: duration(src, &f.pool_idle_timeout, 90_000, diags),
        pool_max_idle: size(src, &f.pool_max_idle, 256, 0..=65_536, diags),
    };
    (diags.len() == before).then_some(upstream)
}

fn log_settings(src: &SourceFile, f: Option<LogFile>, diags: &mut Vec<Diagnostic>) -> Option<Log> {
    let Some(f) = f else {
        return Some(Log {
            level: "info".into(),
            format: LogFormat::Json,
            access_log: true,
            redact_query_params: DEFAULT_REDACTED_QUERY_PARAMS
                .iter()
                .map(|s| crate::param::fold(s))
                .collect(),
        });
    };
    let level = match &f.level {
        Some(level) if level.get_ref().trim().is_empty() => {
            diags.push(src.error(Some(level.span()), "[log] level: must not be empty"));
            return None;
        }
        Some(level) => level.get_ref().clone(),
        None => "info".into(),
    };
    Some(Log {
        level,
        format: match f.format {
            LogFormatFile::Json => LogFormat::Json,
            LogFormatFile::Text => LogFormat::Text,
        },
        access_log: f.access_log.unwrap_or(true),
        redact_query_params: f
            .redact_query_params
            .unwrap_or_else(|| {
                DEFAULT_REDACTED_QUERY_PARAMS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .iter()
            .map(|p| crate::param::fold(p))
            .collect(),
    })
}

fn default_reload() -> Reload {
    Reload {
        watch: true,
        poll_interval: Duration::from_secs(1),
    }
}

fn reload(src: &SourceFile, f: ReloadFile, diags: &mut Vec<Diagnostic>) -> Option<Reload> {
    let before = diags.len();
    let poll_interval = duration(src, &f.poll_interval, 1_000, diags);
    if poll_interval < Duration::from_millis(50) {
        diags.push(src.error(
            f.poll_interval.as_ref().map(|p| p.span()),
            "[reload] poll_interval: must be at least 50ms",
        ));
    }
    (diags.len() == before).then_some(Reload {
        watch: f.watch.unwrap_or(true),
        poll_interval,
    })
}

fn address(
    src: &SourceFile,
    value: &Spanned<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<SocketAddr> {
    match value.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            diags.push(src.error(
                Some(value.span()),
                format!(
                    "`{}` is not a socket address such as `127.0.0.1:8080`",
                    value.get_ref()
                ),
            ));
            None
        }
    }
}

pub(crate) fn duration(
    src: &SourceFile,
    value: &Option<Spanned<String>>,
    default_ms: u64,
    diags: &mut Vec<Diagnostic>,
) -> Duration {
    let Some(value) = value else {
        return Duration::from_millis(default_ms);
    };
    match crate::duration::parse(value.get_ref()) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            diags.push(src.error(Some(value.span()), "a duration must be greater than zero"));
            Duration::from_millis(default_ms)
        }
        Err(e) => {
            diags.push(src.error(Some(value.span()), e));
            Duration::from_millis(default_ms)
        }
    }
}

fn size(
    src: &SourceFile,
    value: &Option<Spanned<i64>>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    diags: &mut Vec<Diagnostic>,
) -> usize {
    let Some(value) = value else {
        return default;
    };
    match usize::try_from(*value.get_ref()) {
        Ok(v) if range.contains(&v) => v,
        _ => {
            diags.push(src.error(
                Some(value.span()),
                format!("must be between {} and {}", range.start(), range.end()),
            ));
            default
        }
    }
}

/// Loads every `*.toml` in `dir`, in file-name order; returns the routes in evaluation
/// order and the files read.
/// What routes may refer to by name.
struct Refs<'a> {
    auth: &'a Auth,
    /// Declared names; `None` for one that is invalid (already reported).
    credentials: &'a HashMap<String, Option<Arc<Credential>>>,
    webhooks: &'a HashMap<String, Option<Arc<Webhook>>>,
}

fn load_policies(
    sources: &dyn Sources,
    dir: &Path,
    gateway: &SourceFile,
    dir_span: Range<usize>,
    refs: &Refs,
    fingerprint: &mut Fingerprint,
    diags: &mut Vec<Diagnostic>,
) -> (Vec<Route>, Vec<Arc<LimitPolicy>>, Vec<PathBuf>) {
    let files = match sources.policy_files(dir) {
        Ok(files) => files,
        Err(e) => {
            diags.push(gateway.error(
                Some(dir_span),
                format!(
                    "[routing] policies: cannot read directory {}: {e}",
                    dir.display()
                ),
            ));
            return (Vec::new(), Vec::new(), Vec::new());
        }
    };
    // Read and parse every file first: a route may use a limit defined in another file.
    let mut texts = Vec::new();
    for file in &files {
        let text = read(sources, file, diags);
        fingerprint.file(file, text.as_deref().map(str::as_bytes));
        if let Some(text) = text {
            texts.push((file, text));
        }
    }
    let mut parsed = Vec::new();
    for (file, text) in &texts {
        let src = SourceFile { path: file, text };
        if let Some(sections) = parse_sections(&src, diags) {
            parsed.push((src, sections));
        }
    }
    let mut defined = limits::Defined::new();
    for (src, sections) in &mut parsed {
        if let Some((_, value)) = sections.remove("limits") {
            limits::policies(src, value, &mut defined, diags);
        }
    }
    let mut routes: Vec<Route> = Vec::new();
    let mut names: HashMap<String, Origin> = HashMap::new();
    for (src, sections) in parsed {
        for (key, (key_span, value)) in sections {
            if key != "route" {
                diags.push(src.error(
                    Some(key_span),
                    format!("unknown key `{key}`; a policy file holds `[[route]]` and `[limits.NAME]` tables"),
                ));
                continue;
            }
            let span = value.span();
            let DeValue::Array(items) = value.into_inner() else {
                diags.push(src.error(
                    Some(span),
                    "`route` must be an array of tables: write `[[route]]`",
                ));
                continue;
            };
            for item in items.iter().cloned() {
                let start = item.span();
                let Some(f) = deserialize::<RouteFile>(&src, item, "[[route]]", diags) else {
                    continue;
                };
                if let Some(route) = route(&src, f, start, refs, &defined, &mut names, diags) {
                    routes.push(route);
                }
            }
        }
    }
    shadowed_routes(&routes, diags);
    let mut limit_policies: Vec<Arc<LimitPolicy>> = defined.into_values().flatten().collect();
    limit_policies.sort_by(|a, b| a.name.cmp(&b.name));
    (routes, limit_policies, files)
}

fn route(
    src: &SourceFile,
    f: RouteFile,
    span: Range<usize>,
    refs: &Refs,
    defined: &limits::Defined,
    names: &mut HashMap<String, Origin>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Route> {
    let before = diags.len();
    let name = f.name.get_ref().clone();
    let origin = src.origin(f.name.span());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        diags.push(src.error(
            Some(f.name.span()),
            format!("route name `{name}`: use letters, digits, `-`, `_` and `.` only"),
        ));
    } else if let Some(first) = names.get(&name) {
        diags.push(src.error(
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
            diags.push(src.error(Some(f.path.span()), format!("route `{name}`: {e}")));
            None
        }
    };
    let methods = match &f.methods {
        None => None,
        Some(list) if list.is_empty() => {
            diags.push(src.error(Some(span.clone()), format!("route `{name}`: `methods` is empty; omit it to allow every method")));
            None
        }
        Some(list) => Some(
            list.iter()
                .filter_map(|m| {
                    let text = m.get_ref();
                    let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase());
                    match Method::from_bytes(text.as_bytes()) {
                        Ok(method) if valid => Some(method),
                        _ => {
                            diags.push(src.error(
                                Some(m.span()),
                                format!("route `{name}`: `{text}` is not an HTTP method (write it in upper case, e.g. `GET`)"),
                            ));
                            None
                        }
                    }
                })
                .collect(),
        ),
    };
    // A route that denies never reaches authentication, so it needs no auth settings.
    let route_auth = match f.action {
        ActionFile::Deny => Some(RouteAuth::None),
        ActionFile::Forward => route_auth(src, &f, &name, refs, diags),
    };
    let upstream_credential = match &f.upstream_credential {
        None => None,
        Some(c) => match refs.credentials.get(c.get_ref()) {
            Some(Some(cred)) => Some((c.get_ref().clone(), Arc::clone(cred))),
            Some(None) => None,
            None => {
                diags.push(src.error(
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
    if let (Some(c), Some(RouteAuth::None), ActionFile::Forward) =
        (&f.upstream_credential, &route_auth, f.action)
    {
        let per_client = upstream_credential
            .as_ref()
            .is_some_and(|(_, cred)| matches!(**cred, Credential::ClientMap { .. }));
        if per_client {
            diags.push(src.error(
                Some(c.span()),
                format!("route `{name}`: `{}` is a per-client credential, and an anonymous route has no client", c.get_ref()),
            ));
        } else if !f.allow_anonymous_credential {
            diags.push(src.error(
                Some(c.span()),
                format!("route `{name}`: auth = \"none\" would add the backend credential `{}` for anyone; authenticate the route, or say `allow_anonymous_credential = true` if that is what you mean", c.get_ref()),
            ));
        }
    } else if f.allow_anonymous_credential {
        diags.push(src.error(
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
        diags.push(src.error(
            Some(f.name.span()),
            format!("route `{name}`: pass_api_key passes on the key a caller authenticated with: it needs auth = \"api_key\" or \"jwt_or_api_key\""),
        ));
    }
    let opaque_body_types = opaque_types(src, f.opaque_body_types.as_deref(), &name, diags);
    if diags.len() != before {
        return None;
    }
    let route_auth = route_auth?;
    let (limits, username_fields) =
        limits::route_limits(src, &f, &name, &route_auth, defined, diags)?;
    let identifies_caller = matches!(
        route_auth,
        RouteAuth::Jwt | RouteAuth::ApiKey | RouteAuth::JwtOrApiKey
    );
    let client_id = if identifies_caller {
        Some(client_id_policy(src, f.client_id.as_ref(), &name, diags)?)
    } else {
        if f.client_id.is_some() {
            diags.push(src.error(
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
                diags.push(src.error(
                    Some(v.span()),
                    format!("route `{name}`: max_upload_bytes must be positive"),
                ));
                return None;
            }
        },
    };
    if !identifies_caller && !opaque_body_types.is_empty() {
        diags.push(src.error(
            Some(f.name.span()),
            format!("route `{name}`: opaque_body_types is for routes that authenticate a caller (bodies of other routes are not inspected)"),
        ));
        return None;
    }
    Some(Route {
        auth: route_auth,
        opaque_body_types,
        client_id,
        max_upload_bytes,
        limits,
        username_fields,
        upstream_credential,
        pass_api_key: f.pass_api_key,
        name,
        methods,
        path: path?,
        action: match f.action {
            ActionFile::Forward => RouteAction::Forward,
            ActionFile::Deny => RouteAction::Deny,
        },
        origin,
    })
}

/// Reports every route that can never match: for each method it serves, an earlier
/// route matches every path it would. Shadowed by a `forward` route it is an error: its
/// own rules never apply (a `deny` or a stricter `auth` written after a broader route
/// looks like protection and protects nothing). Shadowed only by `deny` routes it is a
/// warning: closing a path by putting a `deny` in front is a common, deliberate edit.
fn shadowed_routes(routes: &[Route], diags: &mut Vec<Diagnostic>) {
    for (index, route) in routes.iter().enumerate() {
        let earlier = &routes[..index];
        let covering = |method: Option<&Method>| {
            earlier.iter().find(|e| {
                e.path.covers(&route.path)
                    && match (method, &e.methods) {
                        (_, None) => true,
                        (Some(m), Some(list)) => list.contains(m),
                        (None, Some(_)) => false,
                    }
            })
        };
        let shadows: Option<Vec<&Route>> = match &route.methods {
            None => covering(None).map(|e| vec![e]),
            Some(methods) => methods.iter().map(|m| covering(Some(m))).collect(),
        };
        let Some(mut shadows) = shadows else {
            continue;
        };
        shadows.dedup_by(|a, b| a.name == b.name);
        let by: Vec<String> = shadows
            .iter()
            .map(|e| {
                format!(
                    "`{}` ({}:{})",
                    e.name,
                    e.origin.file.display(),
                    e.origin.line
                )
            })
            .collect();
        let closed_on_purpose = shadows.iter().all(|e| e.action == RouteAction::Deny);
        diags.push(Diagnostic {
            file: route.origin.file.clone(),
            line: route.origin.line,
            column: route.origin.column,
            severity: if closed_on_purpose {
                Severity::Warning
            } else {
                Severity::Error
            },
            message: if closed_on_purpose {
                format!(
                    "route `{}` never matches: {} before it denies every request it would",
                    route.name,
                    by.join(" and ")
                )
            } else {
                format!(
                    "route `{}` can never match: {} before it matches every request it would, so its rules never apply; move it up or remove it",
                    route.name,
                    by.join(" and ")
                )
            },
        });
    }
}

/// A route's `opaque_body_types`: media ranges, none of them a type the gateway inspects.
fn opaque_types(
    src: &SourceFile,
    list: Option<&[Spanned<String>]>,
    route: &str,
    diags: &mut Vec<Diagnostic>,
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
                if clash {
                    diags.push(src.error(
                        Some(item.span()),
                        format!("route `{route}`: opaque_body_types: `{text}` covers JSON, form or multipart bodies, which are always inspected"),
                    ));
                } else {
                    out.push(range);
                }
            }
            Err(_) => diags.push(src.error(
                Some(item.span()),
                format!("route `{route}`: opaque_body_types: `{text}` is not a media type such as `text/csv` or `image/*`"),
            )),
        }
    }
    out
}

/// The route's authentication, checked against what `gateway.toml` configures.
fn route_auth(
    src: &SourceFile,
    f: &RouteFile,
    name: &str,
    refs: &Refs,
    diags: &mut Vec<Diagnostic>,
) -> Option<RouteAuth> {
    let mode = f.auth.as_ref().map_or(AuthModeFile::Jwt, |a| *a.get_ref());
    let span = f.auth.as_ref().map_or(f.name.span(), |a| a.span());
    let mut fail = |message: String| {
        diags.push(src.error(Some(span.clone()), format!("route `{name}`: {message}")));
        None
    };
    if mode != AuthModeFile::Webhook && f.webhook.is_some() {
        return fail("`webhook` is only used with auth = \"webhook\"".into());
    }
    let needs_jwt = matches!(mode, AuthModeFile::Jwt | AuthModeFile::JwtOrApiKey);
    let needs_keys = matches!(mode, AuthModeFile::ApiKey | AuthModeFile::JwtOrApiKey);
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
                    diags.push(src.error(
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
    src: &SourceFile,
    f: Option<&crate::file::ClientIdFile>,
    route: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<ClientIdPolicy> {
    use crate::file::{InjectTargetFile, MismatchFile};
    let before = diags.len();
    let mut error = |span: Range<usize>, message: String| {
        diags.push(src.error(Some(span), format!("route `{route}`: client_id: {message}")));
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
    (diags.len() == before).then(|| ClientIdPolicy {
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
            None | Some(crate::file::JsonTypeFile::Claim) => JsonType::Claim,
            Some(crate::file::JsonTypeFile::String) => JsonType::String,
            Some(crate::file::JsonTypeFile::Number) => JsonType::Number,
        },
    })
}

/// The headers any route may read a client id from: each policy's header and every name
/// and alias that is a valid header name, plus `X-Client-Id`.
fn identity_headers(routes: &[Route]) -> Vec<http::header::HeaderName> {
    let mut names = vec![http::header::HeaderName::from_static("x-client-id")];
    for policy in routes.iter().filter_map(|r| r.client_id.as_ref()) {
        let candidates = policy.header.iter().cloned().chain(
            policy
                .names
                .iter()
                .filter_map(|n| http::header::HeaderName::from_bytes(n.as_bytes()).ok()),
        );
        for name in candidates {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}
