//! Loading: `gateway.toml` plus the policy directory into one validated [`Snapshot`].
//!
//! Every problem is collected, not just the first: TOML syntax errors, unknown or
//! mistyped fields (each section, each named table and each route is read on its own, so
//! one mistake hides no other and is reported once), and semantic errors (bad
//! addresses, patterns, duplicate names, routes that can never match). Each carries the
//! file, line and column it is about.
//!
//! One section, one file: [`server`], [`upstream`], [`routing`] (the policy files, with
//! each [`route`], its [`limits`] and its [`cors`] policy), [`admin`], [`log`],
//! [`reload`], [`jwt`], [`api_keys`], [`credentials`], [`webhooks`], [`store`],
//! [`sessions`] (with `[login]`), [`credits`] (with each route's cost). They share one
//! [`context::Loader`] and its field readers, and read through [`Sources`], so every
//! section is unit-tested from memory.

mod admin;
mod api_keys;
mod context;
mod cors;
mod credentials;
mod credits;
mod declared;
mod document;
pub(crate) mod file;
mod jwt;
mod limits;
mod log;
mod reload;
mod route;
mod routing;
mod server;
mod sessions;
mod store;
mod tls;
mod tracing;

pub use tls::client_config;
mod upstream;
mod webhooks;

#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use thiserror::Error;

use crate::diagnostic::{Diagnostic, Severity, SourceFile};
use crate::snapshot::{Auth, Credential, RedactValues, Snapshot, Webhook};
use crate::sources::{Disk, Sources};
use context::Loader;
use document::section;
use file::{
    AdminFile, ApiKeysFile, CreditsFile, LogFile, LoginFile, ReloadFile, RoutingFile, ServerFile,
    SessionsFile, StoreFile, TracingFile, UpstreamFile,
};

pub use context::DEV_KEYS_DIR;

/// The configuration could not be turned into a snapshot; every diagnostic is listed
/// (warnings included).
#[derive(Debug, Error)]
#[error("{} error(s) in the configuration", .0.iter().filter(|d| d.severity == Severity::Error).count())]
pub struct LoadError(
    pub Vec<Diagnostic>,
    /// Every file the refused configuration names (keys, certificates, lists): a reload
    /// watches them too, so writing the file an edit named but could not read retries it.
    pub Vec<PathBuf>,
);

/// What routes may refer to by name in `gateway.toml`.
pub(crate) struct Refs<'a> {
    pub auth: &'a Auth,
    /// Declared names; `None` for one that is invalid (already reported).
    pub credentials: &'a HashMap<String, Option<Arc<Credential>>>,
    pub webhooks: &'a HashMap<String, Option<Arc<Webhook>>>,
    /// Whether `[jwt]` and `[api_keys]` are declared (valid or not): a route needing
    /// an invalid one returns quietly, the section's own errors said it.
    pub jwt_declared: bool,
    pub api_keys_declared: bool,
    /// Whether `[sessions]` and `[login]` are declared (valid or not).
    pub sessions: bool,
    pub login: bool,
    /// `[credits]`, and whether it is declared (valid or not).
    pub credits: Option<&'a crate::snapshot::Credits>,
    pub credits_declared: bool,
}

/// Reads `gateway.toml` at `config` and the policy files it names, and validates them.
pub fn load(config: &Path) -> Result<Snapshot, LoadError> {
    load_from(config, &Disk)
}

/// [`load`], reading files and environment variables from `sources`.
pub fn load_from(config: &Path, sources: &dyn Sources) -> Result<Snapshot, LoadError> {
    let mut loader = Loader::new(sources, config);
    let snapshot = build(&mut loader, config);
    let mut diags = loader.diags;
    sort_by_place(&mut diags);
    match snapshot {
        Some(snapshot) if !diags.iter().any(|d| d.severity == Severity::Error) => Ok(Snapshot {
            warnings: diags,
            ..snapshot
        }),
        // Built with errors, the snapshot holds the files it named; stopped early, the
        // loader still does.
        Some(snapshot) => Err(LoadError(diags, snapshot.referenced_files)),
        None => Err(LoadError(diags, loader.referenced)),
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

fn build(l: &mut Loader, config: &Path) -> Option<Snapshot> {
    let text = l.read_text(config)?;
    let src = SourceFile {
        path: config,
        text: &text,
    };
    let mut sections = document::parse(l, &src)?;
    // Declared, valid or not: an invalid section is reported once, where it is written,
    // and not again at every route that needs it.
    let (jwt_declared, api_keys_declared) = (
        sections.contains_key("jwt"),
        sections.contains_key("api_keys"),
    );
    let (sessions_declared, login_declared, credits_declared) = (
        sections.contains_key("sessions"),
        sections.contains_key("login"),
        sections.contains_key("credits"),
    );
    let mut take = |name: &str| sections.remove(name);

    let server = section::<ServerFile>(l, &src, take("server"), "server", true)
        .and_then(|f| server::server(l, &src, f));
    let upstream = section::<UpstreamFile>(l, &src, take("upstream"), "upstream", true)
        .and_then(|f| upstream::upstream(l, &src, f));
    let routing = section::<RoutingFile>(l, &src, take("routing"), "routing", true);
    let admin = section::<AdminFile>(l, &src, take("admin"), "admin", false).map(|f| {
        let served: Vec<_> = server
            .iter()
            .flat_map(|s| {
                s.listen
                    .iter()
                    .chain(s.tls.iter().flat_map(|t| t.listen.iter()))
                    .copied()
            })
            .collect();
        admin::admin(l, &src, f, &served)
    });
    let log = section::<LogFile>(l, &src, take("log"), "log", false);
    let log = log::log(l, &src, log);
    let reload = section::<ReloadFile>(l, &src, take("reload"), "reload", false);
    let reload = reload::reload(l, &src, reload);
    let tracing = section::<TracingFile>(l, &src, take("tracing"), "tracing", false);
    let tracing = tracing::tracing(l, &src, tracing);
    let jwt = take("jwt").and_then(|(span, value)| jwt::jwt(l, &src, span, value));
    let api_keys = section::<ApiKeysFile>(l, &src, take("api_keys"), "api_keys", false)
        .and_then(|f| api_keys::api_keys(l, &src, f));
    let credentials = take("credentials")
        .map(|(_, v)| credentials::credentials(l, &src, v))
        .unwrap_or_default();
    let webhooks = take("webhooks")
        .map(|(_, v)| webhooks::webhooks(l, &src, v))
        .unwrap_or_default();
    let store = section::<StoreFile>(l, &src, take("store"), "store", false);
    let store = store::store(l, &src, store);
    let sessions = section::<SessionsFile>(l, &src, take("sessions"), "sessions", false)
        .and_then(|f| sessions::sessions(l, &src, f));
    let login = section::<LoginFile>(l, &src, take("login"), "login", false)
        .and_then(|f| sessions::login(l, &src, f));
    let credits =
        section::<CreditsFile>(l, &src, take("credits"), "credits", false).and_then(|f| {
            let redis = store.as_ref().is_some_and(|s| s.redis.is_some());
            let response_timeout = upstream.as_ref().map(|u| u.response_timeout);
            credits::credits(l, &src, f, redis, response_timeout)
        });
    let auth = Auth { jwt, api_keys };
    let mut unknown: Vec<_> = sections.into_iter().collect();
    unknown.sort_by_key(|(_, (span, _))| span.start);
    for (name, (key_span, _)) in unknown {
        l.error(
            &src,
            Some(key_span),
            format!(
                "unknown section `{name}`; expected one of: server, upstream, routing, admin, log, reload, jwt, api_keys, credentials, webhooks, store, sessions, login, credits, tracing"
            ),
        );
    }

    let refs = Refs {
        auth: &auth,
        credentials: &credentials,
        webhooks: &webhooks,
        jwt_declared,
        api_keys_declared,
        sessions: sessions_declared,
        login: login_declared,
        credits: credits.as_ref(),
        credits_declared,
    };
    let routing = routing.map(|f| routing::routing(l, &src, f, &refs))?;
    let mut log = log?;
    // Secrets that arrive in the query string are never logged.
    let secret_params = webhooks
        .values()
        .flatten()
        .filter_map(|w| match &**w {
            Webhook::UrlSecret { param, .. } => Some(crate::param::fold(param)),
            _ => None,
        })
        .chain(
            auth.api_keys
                .iter()
                .filter_map(|k| k.query_param.as_deref().map(crate::param::fold)),
        )
        // The API-key header names too: a client that moves its key from `X-Api-Key:`
        // to `?x-api-key=` by mistake (the key is refused there) must not have it
        // written to the access log.
        .chain(
            auth.api_keys
                .iter()
                .flat_map(|k| k.headers.iter().map(|h| crate::param::fold(h.as_str()))),
        );
    log.redact_query_params.extend(secret_params);
    // And the secrets it holds in clear, wherever a caller puts them.
    let url_secrets = webhooks.values().flatten().filter_map(|w| match &**w {
        Webhook::UrlSecret { secret, .. } => Some(secret.clone()),
        _ => None,
    });
    let admin_token = admin
        .iter()
        .flatten()
        .filter_map(|a| a.token.as_ref().map(|t| t.0.clone()));
    // The backend credentials the gateway adds (every legacy key of a `client_map`),
    // whole and, for `Basic …`/`Bearer …`, without the scheme.
    let credential_values = credentials
        .values()
        .flatten()
        .flat_map(|c| match &**c {
            Credential::Header { value, .. } => vec![value.as_bytes().to_vec()],
            Credential::ClientMap { values, .. } => {
                values.values().map(|v| v.as_bytes().to_vec()).collect()
            }
        })
        .flat_map(|value| {
            let bare = value
                .iter()
                .rposition(|b| *b == b' ')
                .map(|at| value[at + 1..].to_vec());
            // `Basic` credentials decoded too: `user:pass`, and the password alone.
            let basic = value
                .strip_prefix(b"Basic ")
                .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                .map(|pair| {
                    let password = pair
                        .iter()
                        .position(|b| *b == b':')
                        .map(|at| pair[at + 1..].to_vec());
                    std::iter::once(pair).chain(password)
                })
                .into_iter()
                .flatten();
            std::iter::once(value).chain(bare).chain(basic)
        });
    let plivo_tokens = webhooks.values().flatten().flat_map(|w| match &**w {
        Webhook::PlivoV3 { auth_tokens, .. } => auth_tokens.clone(),
        _ => Vec::new(),
    });
    log.redact_values = RedactValues::new(
        url_secrets
            .chain(admin_token)
            .chain(credential_values)
            .chain(plivo_tokens),
    );
    let identity_headers = routing::identity_headers(&routing.routes);
    let unvouched_client_id = routing::unvouched_client_id(&routing.routes);
    Some(Snapshot {
        server: server?,
        upstream: upstream?,
        fallback: routing::fallback_route(&routing.dir, routing.cors.clone()),
        routes: routing.routes,
        unmatched: routing.unmatched,
        // An invalid `[admin]` is already an error, which stops the snapshot.
        admin: admin.flatten(),
        log,
        reload: reload?,
        auth,
        policy_dir: routing.dir,
        policy_files: routing.files,
        identity_headers,
        unvouched_client_id,
        fingerprint: l.fingerprint.finish(),
        referenced_files: std::mem::take(&mut l.referenced),
        warnings: Vec::new(),
        store: store?,
        limits: routing.limits,
        sessions,
        login,
        cors: routing.cors,
        credits,
        tracing: tracing?,
    })
}
