//! Loading the authentication settings of `gateway.toml`: `[jwt]`, `[api_keys]`,
//! `[credentials.*]` and `[webhooks.*]`.
//!
//! Secrets are resolved here, once, from environment variables or files (never from the
//! configuration text), and keys are parsed, so a snapshot never holds a key that will
//! fail at request time. Key files under a `dev-keys` directory draw a warning: they are
//! published development keys.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::header::{HeaderName, HeaderValue};
use http::uri::Uri;
use serde::Deserialize;
use tollgate_auth::api_key::{ApiKey, ApiKeys};
use tollgate_auth::mint::SigningKey;
use tollgate_auth::{Algorithm, Rules, VerifyKey};
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

use crate::cidr::Cidr;
use crate::diagnostic::{Diagnostic, SourceFile};
use crate::file::{ApiKeyFileEntry, ApiKeysFile, CredentialFile, JwtFile, JwtKeyFile, WebhookFile};
use crate::fingerprint::Fingerprint;
use crate::snapshot::{ApiKeySettings, Credential, JwksSource, Jwt, Webhook};

/// The directory name that marks published development keys.
pub const DEV_KEYS_DIR: &str = "dev-keys";

pub(crate) struct Ctx<'a, 'd> {
    pub src: &'a SourceFile<'a>,
    /// Relative paths are resolved against this (the directory of `gateway.toml`).
    pub base: &'a Path,
    pub diags: &'d mut Vec<Diagnostic>,
    /// Every file read, in order, with its bytes: the reload watcher watches them too.
    pub fingerprint: &'d mut Fingerprint,
    pub files: &'d mut Vec<std::path::PathBuf>,
    pub sources: &'a dyn crate::sources::Sources,
}

impl Ctx<'_, '_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.src.error(Some(span), message);
        self.diags.push(d);
    }

    /// Reads a file named in the configuration, warning about development keys.
    fn read_file(&mut self, path: &Spanned<String>, what: &str) -> Option<Vec<u8>> {
        let full = self.base.join(path.get_ref());
        if full.components().any(|c| c.as_os_str() == DEV_KEYS_DIR) {
            let d = self.src.warning(
                Some(path.span()),
                format!(
                    "{what} `{}` is a published development key ({DEV_KEYS_DIR}/): for `tollgate demo` only, never in production",
                    path.get_ref()
                ),
            );
            self.diags.push(d);
        }
        let read = self.sources.read(&full);
        self.fingerprint
            .file(&full, read.as_ref().ok().map(Vec::as_slice));
        self.files.push(full.clone());
        match read {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.error(
                    path.span(),
                    format!("{what}: cannot read {}: {e}", full.display()),
                );
                None
            }
        }
    }

    /// A secret from exactly one of an environment variable or a file (trailing
    /// whitespace removed).
    fn secret(
        &mut self,
        env: &Option<Spanned<String>>,
        file: &Option<Spanned<String>>,
        span: Range<usize>,
        what: &str,
    ) -> Option<Vec<u8>> {
        let bytes = match (env, file) {
            (Some(env), None) => match self.sources.env(env.get_ref()) {
                Some(v) if !v.is_empty() => v.into_bytes(),
                _ => {
                    self.error(
                        env.span(),
                        format!(
                            "{what}: environment variable `{}` is not set",
                            env.get_ref()
                        ),
                    );
                    return None;
                }
            },
            (None, Some(file)) => self.read_file(file, what)?,
            _ => {
                self.error(span, format!("{what}: give exactly one of `*_env` or `*_file` (secrets are never written inline)"));
                return None;
            }
        };
        let trimmed = bytes.trim_ascii_end().to_vec();
        if trimmed.is_empty() {
            self.error(span, format!("{what}: the secret is empty"));
            return None;
        }
        Some(trimmed)
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => match crate::duration::parse(v.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.error(v.span(), e);
                    default
                }
            },
        }
    }

    fn header_name(&mut self, value: &Spanned<String>) -> Option<HeaderName> {
        match HeaderName::from_bytes(value.get_ref().as_bytes()) {
            Ok(h) => Some(h),
            Err(_) => {
                self.error(
                    value.span(),
                    format!("`{}` is not a valid header name", value.get_ref()),
                );
                None
            }
        }
    }
}

fn algorithm(ctx: &mut Ctx, value: &Spanned<String>) -> Option<Algorithm> {
    match value.get_ref().parse::<Algorithm>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.error(
                value.span(),
                format!(
                    "`{}` is not a supported algorithm: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

pub(crate) fn jwt(ctx: &mut Ctx, f: JwtFile, whole: Range<usize>) -> Option<Jwt> {
    let mut keys = Vec::new();
    let mut signing = None;
    let mut ids: Vec<String> = Vec::new();
    for key in &f.key {
        let id = key.id.as_ref().map(|i| i.get_ref().clone());
        if let (Some(id), Some(span)) = (&id, key.id.as_ref().map(|i| i.span())) {
            if ids.contains(id) {
                ctx.error(span, format!("[[jwt.key]] id `{id}` is used twice"));
            }
            ids.push(id.clone());
        }
        let fallback = key.id.as_ref().map_or(whole.clone(), |i| i.span());
        if let Some((verify, sign)) = jwt_key(ctx, key, id, fallback) {
            keys.push(Arc::new(verify));
            if signing.is_none() {
                signing = sign.map(Arc::new);
            }
        }
    }
    let mut jwks = Vec::new();
    for source in &f.jwks {
        let url = match source.url.get_ref().parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("https" | "http")) && u.authority().is_some() =>
            {
                Some(u)
            }
            _ => {
                ctx.error(
                    source.url.span(),
                    "[[jwt.jwks]] url: expected https://host[:port]/path",
                );
                None
            }
        };
        let ca_pem = match &source.ca_file {
            None => None,
            Some(file) => {
                let pem = ctx.read_file(file, "[[jwt.jwks]] ca_file");
                if pem
                    .as_ref()
                    .is_some_and(|p| !p.windows(17).any(|w| w == b"BEGIN CERTIFICATE"))
                {
                    ctx.error(
                        file.span(),
                        "[[jwt.jwks]] ca_file: no PEM certificate in it",
                    );
                }
                pem
            }
        };
        let algorithm = match &source.algorithm {
            Some(a) => algorithm(ctx, a),
            None => None,
        };
        let refresh = ctx.duration(&source.refresh, Duration::from_secs(300));
        let min_refetch = ctx.duration(&source.min_refetch, Duration::from_secs(30));
        if let Some(url) = url {
            jwks.push(JwksSource {
                url,
                algorithm,
                refresh,
                min_refetch,
                ca_pem,
            });
        }
    }
    if f.key.is_empty() && f.jwks.is_empty() {
        ctx.error(
            whole,
            "[jwt]: configure at least one [[jwt.key]] or [[jwt.jwks]]",
        );
    }
    let leeway = ctx.duration(&f.leeway, Duration::from_secs(30));
    let max_token_bytes = match &f.max_token_bytes {
        None => 8192,
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if (512..=65_536).contains(&n) => n,
            _ => {
                ctx.error(
                    v.span(),
                    "[jwt] max_token_bytes: must be between 512 and 65536",
                );
                8192
            }
        },
    };
    let cache_entries = match &f.cache_entries {
        None => 10_000,
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if n <= 10_000_000 => n,
            _ => {
                ctx.error(
                    v.span(),
                    "[jwt] cache_entries: must be between 0 and 10000000",
                );
                10_000
            }
        },
    };
    let client_id_claim = match &f.client_id_claim {
        Some(c) if c.get_ref().is_empty() => {
            ctx.error(c.span(), "[jwt] client_id_claim: must not be empty");
            String::new()
        }
        Some(c) => c.get_ref().clone(),
        None => "clientId".into(),
    };
    let access_ttl = ctx.duration(&f.access_ttl, Duration::from_secs(24 * 3600));
    // Given even when some key failed (and the load fails with it): routes then do not
    // also report a missing [jwt] — one mistake, one error.
    Some(Jwt {
        rules: Rules {
            issuer: f.issuer,
            audience: f.audience,
            leeway_secs: leeway.as_secs(),
            max_token_bytes,
            client_id_claim,
        },
        keys,
        signing,
        jwks,
        cache_entries,
        access_ttl,
    })
}

/// The algorithms of one `[[jwt.key]]`: `algorithm`, or `algorithms` (the first is the
/// key's own and signs).
fn key_algorithms(
    ctx: &mut Ctx,
    f: &JwtKeyFile,
    fallback: Range<usize>,
) -> Option<(Vec<Algorithm>, Range<usize>)> {
    match (&f.algorithm, &f.algorithms) {
        (Some(one), None) => Some((vec![algorithm(ctx, one)?], one.span())),
        (None, Some(list)) if !list.get_ref().is_empty() => {
            let mut algs = Vec::new();
            for a in list.get_ref() {
                algs.push(algorithm(ctx, a)?);
            }
            Some((algs, list.span()))
        }
        (None, Some(list)) => {
            ctx.error(list.span(), "[[jwt.key]] algorithms: list at least one");
            None
        }
        (Some(one), Some(_)) => {
            ctx.error(
                one.span(),
                "[[jwt.key]]: give `algorithm` or `algorithms`, not both",
            );
            None
        }
        (None, None) => {
            ctx.error(fallback, "[[jwt.key]]: missing `algorithm` (e.g. \"RS256\"), or `algorithms` for several of one family");
            None
        }
    }
}

fn jwt_key(
    ctx: &mut Ctx,
    f: &JwtKeyFile,
    id: Option<String>,
    fallback: Range<usize>,
) -> Option<(VerifyKey, Option<SigningKey>)> {
    let (algs, span) = key_algorithms(ctx, f, fallback)?;
    let (alg, more) = algs.split_first()?;
    let (verify, signing) = jwt_key_for(ctx, f, id, *alg, span.clone())?;
    match verify.allow(more) {
        Ok(verify) => Some((verify, signing)),
        Err(e) => {
            ctx.error(span, format!("[[jwt.key]] algorithms: {e}"));
            None
        }
    }
}

fn jwt_key_for(
    ctx: &mut Ctx,
    f: &JwtKeyFile,
    id: Option<String>,
    alg: Algorithm,
    span: Range<usize>,
) -> Option<(VerifyKey, Option<SigningKey>)> {
    let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    if hmac {
        if f.public_key_file.is_some() || f.private_key_file.is_some() {
            ctx.error(span, format!("[[jwt.key]] {alg:?} is an HMAC algorithm: use secret_env or secret_file, not key files"));
            return None;
        }
        let secret = ctx.secret(
            &f.secret_env,
            &f.secret_file,
            span.clone(),
            "[[jwt.key]] secret",
        )?;
        return match VerifyKey::from_secret(id.clone(), alg, &secret) {
            Ok(v) => Some((v, Some(SigningKey::from_secret(id, alg, &secret)))),
            Err(e) => {
                ctx.error(span, format!("[[jwt.key]]: {e}"));
                None
            }
        };
    }
    if f.secret_env.is_some() || f.secret_file.is_some() {
        ctx.error(
            span,
            format!("[[jwt.key]] {alg:?} needs public_key_file, not a shared secret"),
        );
        return None;
    }
    let Some(public) = &f.public_key_file else {
        ctx.error(span, format!("[[jwt.key]] {alg:?} needs public_key_file"));
        return None;
    };
    let pem = ctx.read_file(public, "[[jwt.key]] public_key_file")?;
    let verify = match VerifyKey::from_pem(id.clone(), alg, &pem) {
        Ok(v) => v,
        Err(e) => {
            ctx.error(public.span(), format!("[[jwt.key]] public_key_file: {e}"));
            return None;
        }
    };
    let signing = match &f.private_key_file {
        None => None,
        Some(private) => {
            let pem = ctx.read_file(private, "[[jwt.key]] private_key_file")?;
            match SigningKey::from_pem(id, alg, &pem) {
                Ok(s) => Some(s),
                Err(e) => {
                    ctx.error(private.span(), format!("[[jwt.key]] private_key_file: {e}"));
                    return None;
                }
            }
        }
    };
    Some((verify, signing))
}

pub(crate) fn api_keys(ctx: &mut Ctx, f: ApiKeysFile) -> Option<ApiKeySettings> {
    let keys = api_key_file(ctx, &f.file);
    let headers: Vec<HeaderName> = match &f.headers {
        None => vec![HeaderName::from_static("x-api-key")],
        Some(list) => list.iter().filter_map(|h| ctx.header_name(h)).collect(),
    };
    let deprecation = f.deprecation.as_ref().and_then(|d| timestamp(ctx, d));
    let sunset = f.sunset.as_ref().and_then(|d| timestamp(ctx, d));
    if let (Some(dep), Some(sun), Some(span)) =
        (deprecation, sunset, f.sunset.as_ref().map(|s| s.span()))
    {
        if sun < dep {
            ctx.error(span, "[api_keys] sunset: must not be before deprecation");
        }
    }
    let sunset_link = match &f.sunset_link {
        Some(link)
            if link.get_ref().parse::<Uri>().is_err()
                || link.get_ref().contains(['<', '>', '"']) =>
        {
            ctx.error(link.span(), "[api_keys] sunset_link: not a URL");
            None
        }
        other => other.as_ref().map(|l| l.get_ref().clone()),
    };
    // As for [jwt]: given even with errors (which fail the load), so routes do not also
    // report a missing [api_keys].
    Some(ApiKeySettings {
        keys: keys.unwrap_or_else(|| ApiKeys::new(Vec::new())),
        headers,
        query_param: f.query_param,
        deprecation,
        sunset,
        sunset_link,
    })
}

fn api_key_file(ctx: &mut Ctx, path: &Spanned<String>) -> Option<ApiKeys> {
    let bytes = ctx.read_file(path, "[api_keys] file")?;
    let full = ctx.base.join(path.get_ref());
    let Ok(text) = String::from_utf8(bytes) else {
        ctx.error(path.span(), "[api_keys] file: not UTF-8");
        return None;
    };
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct KeysFile {
        #[serde(default)]
        key: Vec<ApiKeyFileEntry>,
    }
    let keys_src = SourceFile {
        path: &full,
        text: &text,
    };
    let parsed: KeysFile = match toml::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            let d = keys_src.error(e.span(), e.message().to_owned());
            ctx.diags.push(d);
            return None;
        }
    };
    let mut keys = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for entry in parsed.key {
        if ids.contains(entry.id.get_ref()) {
            let d = keys_src.error(
                Some(entry.id.span()),
                format!("key id `{}` is used twice", entry.id.get_ref()),
            );
            ctx.diags.push(d);
            continue;
        }
        ids.push(entry.id.get_ref().clone());
        if !tollgate_auth::jwt::is_usable_client_id(entry.client_id.get_ref()) {
            let d = keys_src.error(
                Some(entry.client_id.span()),
                "client_id: 1-128 characters of A-Z a-z 0-9 - _ . : @",
            );
            ctx.diags.push(d);
            continue;
        }
        match ApiKey::new(
            entry.id.get_ref().clone(),
            entry.client_id.get_ref().clone(),
            entry.sha256.get_ref(),
        ) {
            Some(k) => keys.push(k),
            None => {
                let d = keys_src.error(
                    Some(entry.sha256.span()),
                    "sha256: expected the 64 lower-case hex digits of the key's SHA-256 (printf %s KEY | sha256sum)",
                );
                ctx.diags.push(d);
            }
        }
    }
    Some(ApiKeys::new(keys))
}

/// A TOML datetime (with offset) or date as seconds since the epoch.
fn timestamp(ctx: &mut Ctx, value: &Spanned<toml::value::Datetime>) -> Option<u64> {
    let dt = value.get_ref();
    let Some(date) = dt.date else {
        ctx.error(
            value.span(),
            "expected a date such as 2027-06-30 or 2027-06-30T00:00:00Z",
        );
        return None;
    };
    let offset_minutes: i64 = match (dt.time, dt.offset) {
        (None, _) => 0,
        (Some(_), Some(toml::value::Offset::Z)) => 0,
        (Some(_), Some(toml::value::Offset::Custom { minutes })) => i64::from(minutes),
        (Some(_), None) => {
            ctx.error(
                value.span(),
                "give the time with an offset, e.g. 2027-06-30T00:00:00Z",
            );
            return None;
        }
    };
    let days = days_from_civil(
        i64::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
    );
    let secs_of_day = dt.time.map_or(0, |t| {
        i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second)
    });
    u64::try_from(days * 86_400 + secs_of_day - offset_minutes * 60).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `[credentials.NAME]` tables, each read on its own so one bad entry hides no other:
/// every name declared, `None` for one that is invalid.
pub(crate) fn credentials(
    ctx: &mut Ctx,
    value: Spanned<DeValue>,
) -> HashMap<String, Option<Arc<Credential>>> {
    let mut out = HashMap::new();
    for (name, span, f) in named_tables::<CredentialFile>(ctx, value, "credentials") {
        let credential = f.and_then(|f| credential(ctx, &name, f, span));
        out.insert(name, credential.map(Arc::new));
    }
    out
}

fn sensitive(ctx: &mut Ctx, bytes: &[u8], span: Range<usize>, what: &str) -> Option<HeaderValue> {
    match HeaderValue::from_bytes(bytes) {
        Ok(mut v) => {
            v.set_sensitive(true);
            Some(v)
        }
        Err(_) => {
            ctx.error(
                span,
                format!("{what}: the value cannot be sent in a header"),
            );
            None
        }
    }
}

/// Fields of tagged tables carry the table's span (see `file::CredentialFile`).
fn at(span: &Range<usize>, value: String) -> Spanned<String> {
    Spanned::new(span.clone(), value)
}

fn at_opt(span: &Range<usize>, value: Option<String>) -> Option<Spanned<String>> {
    value.map(|v| at(span, v))
}

fn credential(
    ctx: &mut Ctx,
    name: &str,
    f: CredentialFile,
    span: Range<usize>,
) -> Option<Credential> {
    let what = format!("[credentials.{name}]");
    match f {
        CredentialFile::Header {
            header,
            value_env,
            value_file,
        } => {
            let (header, value_env, value_file) = (
                at(&span, header),
                at_opt(&span, value_env),
                at_opt(&span, value_file),
            );
            let name = ctx.header_name(&header)?;
            let value = ctx.secret(&value_env, &value_file, span.clone(), &what)?;
            let value = sensitive(ctx, &value, span, &what)?;
            Some(Credential::Header { name, value })
        }
        CredentialFile::Basic {
            username,
            password_env,
            password_file,
        } => {
            let (username, password_env, password_file) = (
                at(&span, username),
                at_opt(&span, password_env),
                at_opt(&span, password_file),
            );
            let password = ctx.secret(&password_env, &password_file, span.clone(), &what)?;
            if username.get_ref().contains(':') {
                ctx.error(
                    username.span(),
                    format!("{what}: a Basic username cannot contain ':'"),
                );
                return None;
            }
            let mut pair = username.get_ref().clone().into_bytes();
            pair.push(b':');
            pair.extend_from_slice(&password);
            let encoded = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            );
            let value = sensitive(ctx, encoded.as_bytes(), span, &what)?;
            Some(Credential::Header {
                name: http::header::AUTHORIZATION,
                value,
            })
        }
        CredentialFile::ClientMap { header, file } => {
            let (header, file) = (at(&span, header), at(&span, file));
            let name = ctx.header_name(&header)?;
            let bytes = ctx.read_file(&file, &what)?;
            let full = ctx.base.join(file.get_ref());
            let text = String::from_utf8(bytes).ok()?;
            let map_src = SourceFile {
                path: &full,
                text: &text,
            };
            let table: HashMap<String, String> = match toml::from_str(&text) {
                Ok(t) => t,
                Err(e) => {
                    let d = map_src.error(
                        e.span(),
                        format!(
                            "{}; expected lines like `\"1001\" = \"legacy-key\"`",
                            e.message().trim()
                        ),
                    );
                    ctx.diags.push(d);
                    return None;
                }
            };
            let mut values = HashMap::new();
            for (client, key) in table {
                let v = sensitive(ctx, key.as_bytes(), file.span(), &what)?;
                values.insert(client, v);
            }
            Some(Credential::ClientMap { name, values })
        }
    }
}

/// `[webhooks.NAME]` tables: every name declared, `None` for one that is invalid (its
/// errors are reported where it is written, not again at each route naming it).
pub(crate) fn webhooks(
    ctx: &mut Ctx,
    value: Spanned<DeValue>,
) -> HashMap<String, Option<Arc<Webhook>>> {
    let mut out = HashMap::new();
    for (name, span, f) in named_tables::<WebhookFile>(ctx, value, "webhooks") {
        let hook = f.and_then(|f| webhook(ctx, &name, span, f));
        out.insert(name, hook.map(Arc::new));
    }
    out
}

fn webhook(ctx: &mut Ctx, name: &str, span: Range<usize>, f: WebhookFile) -> Option<Webhook> {
    let what = format!("[webhooks.{name}]");
    let hook = match f {
        WebhookFile::PlivoV3 {
            public_base_url,
            auth_tokens_env,
            auth_tokens_file,
            max_body_bytes,
            replay_window,
        } => {
            let public_base_url = at(&span, public_base_url);
            let auth_tokens_env: Vec<Spanned<String>> =
                auth_tokens_env.into_iter().map(|e| at(&span, e)).collect();
            let auth_tokens_file = at_opt(&span, auth_tokens_file);
            let base = public_base_url.get_ref().trim_end_matches('/').to_owned();
            let valid = base.parse::<Uri>().is_ok_and(|u| {
                u.scheme().is_some() && u.authority().is_some() && u.query().is_none()
            });
            if !valid {
                ctx.error(
                    public_base_url.span(),
                    format!(
                        "{what} public_base_url: expected https://host[:port] as Plivo calls it"
                    ),
                );
                return None;
            }
            let mut tokens = Vec::new();
            for env in &auth_tokens_env {
                if let Some(t) = ctx.secret(&Some(env.clone()), &None, env.span(), &what) {
                    tokens.push(t);
                }
            }
            if let Some(file) = &auth_tokens_file {
                if let Some(text) = ctx.secret(&None, &Some(file.clone()), file.span(), &what) {
                    tokens.extend(
                        text.split(|b| *b == b'\n')
                            .map(|l| l.trim_ascii().to_vec())
                            .filter(|l| !l.is_empty()),
                    );
                }
            }
            if auth_tokens_env.is_empty() && auth_tokens_file.is_none() {
                ctx.error(span.clone(), format!("{what}: name the auth tokens with auth_tokens_env or auth_tokens_file (one per line)"));
                return None;
            }
            let max_body_bytes = max_body_bytes
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(64 * 1024);
            let replay_window = match replay_window.as_deref().map(crate::duration::parse) {
                None => Duration::from_secs(3600),
                Some(Ok(d)) if !d.is_zero() => d,
                Some(Ok(_)) => {
                    ctx.error(
                        span.clone(),
                        format!("{what} replay_window: must be greater than zero"),
                    );
                    return None;
                }
                Some(Err(e)) => {
                    ctx.error(span.clone(), format!("{what} replay_window: {e}"));
                    return None;
                }
            };
            Webhook::PlivoV3 {
                name: name.to_owned(),
                public_base_url: base,
                auth_tokens: tokens,
                max_body_bytes,
                replay_window,
            }
        }
        WebhookFile::UrlSecret {
            param,
            secret_env,
            secret_file,
        } => {
            let (param, secret_env, secret_file) = (
                at(&span, param),
                at_opt(&span, secret_env),
                at_opt(&span, secret_file),
            );
            let secret = ctx.secret(&secret_env, &secret_file, span.clone(), &what)?;
            Webhook::UrlSecret {
                param: param.get_ref().clone(),
                secret,
            }
        }
        WebhookFile::IpAllowlist { cidrs } => {
            let cidrs: Vec<Spanned<String>> = cidrs.into_iter().map(|c| at(&span, c)).collect();
            let mut parsed = Vec::new();
            for c in &cidrs {
                match c.get_ref().parse::<Cidr>() {
                    Ok(c) => parsed.push(c),
                    Err(e) => ctx.error(c.span(), format!("{what}: {e}")),
                }
            }
            Webhook::IpAllowlist { cidrs: parsed }
        }
    };
    Some(hook)
}

/// The `[SECTION.NAME]` tables of a section, each deserialized on its own so one bad
/// entry hides no other; errors go to the diagnostics (and the entry is `None`).
fn named_tables<T: serde::de::DeserializeOwned>(
    ctx: &mut Ctx,
    value: Spanned<DeValue>,
    section: &str,
) -> Vec<(String, Range<usize>, Option<T>)> {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        ctx.error(
            span,
            format!("[{section}] must hold named tables: [{section}.NAME]"),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, entry) in table {
        let (name, span) = (key.get_ref().to_string(), key.span());
        match T::deserialize(ValueDeserializer::from(entry)) {
            Ok(f) => out.push((name, span, Some(f))),
            Err(e) => {
                ctx.error(
                    e.span().unwrap_or(span.clone()),
                    format!("[{section}.{name}]: {}", e.message().trim()),
                );
                out.push((name, span, None));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::days_from_civil;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }
}
