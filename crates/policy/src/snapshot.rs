//! The validated, immutable runtime model built from the configuration files.
//!
//! A [`Snapshot`] is built whole by [`crate::load`] and never changed afterwards; a
//! reload builds a new one. A request is judged against exactly one snapshot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, Uri};
use http::Method;
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_auth::api_key::ApiKeys;
use tollgate_auth::mint::SigningKey;
use tollgate_auth::{Algorithm, Rules, VerifyKey};

use crate::cidr::Cidr;
use crate::diagnostic::Diagnostic;
use crate::pattern::PathPattern;

/// Everything the gateway needs to serve, validated.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub server: Server,
    pub upstream: Upstream,
    /// Routes in evaluation order: policy files by file name, then routes in file order.
    pub routes: Vec<Route>,
    pub unmatched: Unmatched,
    /// The route requests no route matches are forwarded by, with `unmatched = "forward"`:
    /// no authentication, no client id, nothing added upstream.
    pub fallback: Route,
    pub admin: Option<Admin>,
    pub log: Log,
    pub reload: Reload,
    pub auth: Auth,
    /// Where the policy files live, and the ones this snapshot was built from.
    pub policy_dir: PathBuf,
    pub policy_files: Vec<PathBuf>,
    /// Every header that may carry a client id under any route's policy (and
    /// `X-Client-Id`): removed from requests that have no authenticated caller.
    pub identity_headers: Vec<HeaderName>,
    /// Every parameter name any route's policy reads a client id from, as a policy that
    /// injects nothing and drops every supplied id: applied to the query and cookies of
    /// requests that have no authenticated caller (and are not signed callbacks), so a
    /// backend never takes a caller's `?clientId=` for one the gateway vouched for.
    /// `None` when no route injects a client id.
    pub unvouched_client_id: Option<ClientIdPolicy>,
    /// A hash of every byte this snapshot was built from (see [`crate::fingerprint`]).
    pub fingerprint: u64,
    /// Files `gateway.toml` names (keys, key lists, credential maps), in the order read.
    pub referenced_files: Vec<PathBuf>,
    pub warnings: Vec<Diagnostic>,
    /// Where state shared by instances lives.
    pub store: Store,
    /// Every rate-limit policy defined, by name.
    pub limits: Vec<Arc<LimitPolicy>>,
    /// `[sessions]`: the gateway's own login sessions (login, refresh, logout).
    pub sessions: Option<Sessions>,
    /// `[login]`: how the legacy login's answer is read.
    pub login: Option<Login>,
    /// The CORS policy of `[routing] cors`: for routes that name none, and for requests
    /// no route matches.
    pub cors: Option<Arc<CorsPolicy>>,
    /// `[credits]`: token credits; `None`: every route is free.
    pub credits: Option<Credits>,
    /// `[tracing]`: where the gateway's spans go, and how new traces are sampled.
    pub tracing: Tracing,
}

/// `[store]`: in this process (and, for sessions, a local file), or in Redis shared by
/// every instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    pub redis: Option<RedisSettings>,
    /// The embedded store's file (sessions, without Redis).
    pub path: PathBuf,
}

/// `[sessions]`: the gateway's own login sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    /// A refresh token unused for this long expires.
    pub refresh_idle: Duration,
    /// The session's absolute lifetime: past it, log in again.
    pub lifetime: Duration,
    /// A refresh token presented again this soon after it was rotated gets the same
    /// successor (a client that lost the answer) instead of revoking the session.
    pub reuse_grace: Duration,
    pub tokens: TokenMode,
}

/// Where a browser keeps the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// In the JSON answers; the page sends `Authorization: Bearer`.
    Bearer,
    /// The refresh token (and, with `access_token`, the access token) in `HttpOnly`
    /// cookies; state-changing requests carry the CSRF token in a header.
    Cookie { access_token: bool, secure: bool },
}

/// `[login]`: how the legacy login's answer is read (JSON pointers, RFC 6901).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Where the client id is.
    pub client_id: String,
    /// Where the user record is.
    pub user: String,
    /// Where the token's `sub` is; `None`: the client id.
    pub subject: Option<String>,
    /// The members of the user record returned to the page; `None`: all but secrets.
    pub user_fields: Option<Vec<String>>,
    /// The members of the user record copied into every access token.
    pub token_claims: Vec<String>,
    /// Member names (see [`Login::fold`]) removed from everything the gateway returns or
    /// signs, at any depth, with every name that ends with one of them.
    pub secret_fields: Vec<String>,
}

impl Login {
    /// A member name as secrets are compared: letters and digits only, in lower case, so
    /// `apiKey`, `api_key`, `API-KEY` and `ApiKey` are one name.
    pub fn fold(name: &str) -> String {
        name.chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    }

    /// Whether `member` is secret: its folded name ends with a secret field's, so the
    /// compound names legacy records use (`plivoAuthToken`, `clientSecret`) are caught
    /// and `tokens` (a balance) or `tokenBalance` are not.
    pub fn is_secret(&self, member: &str) -> bool {
        Login::is_secret_name(&Login::fold(member), &self.secret_fields)
    }

    /// Whether a folded member name is secret under `secret_fields` (folded): it ends
    /// with one of them, or does once a word saying how the secret is written is taken
    /// off its end (`privateKeyPem`, `apiKeyValue`, `secretBase64`).
    pub fn is_secret_name(folded: &str, secret_fields: &[String]) -> bool {
        const ENCODINGS: &[&str] = &[
            "pem",
            "der",
            "jwk",
            "b64",
            "base64",
            "hex",
            "enc",
            "encrypted",
            "encoded",
            "bytes",
            "raw",
            "value",
            "text",
            "plain",
            "plaintext",
            "str",
            "string",
        ];
        let ends_secret = |name: &str| secret_fields.iter().any(|s| name.ends_with(s.as_str()));
        ends_secret(folded)
            || ENCODINGS.iter().any(|encoding| {
                folded
                    .strip_suffix(encoding)
                    .is_some_and(|name| !name.is_empty() && ends_secret(name))
            })
    }
}

/// `[cors.NAME]`: which browser origins may call, and what they may read.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub name: String,
    pub origins: Vec<OriginPattern>,
    /// Methods a preflight may ask for; `None`: the route's own.
    pub methods: Option<Vec<Method>>,
    /// Request headers a preflight may ask for (lower case).
    pub headers: Vec<HeaderName>,
    pub credentials: bool,
    pub max_age: Duration,
    /// Response headers page scripts may read.
    pub expose: Vec<HeaderName>,
    pub origin: Origin,
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin (never with credentials).
    Any,
    /// `https://app.example.com[:port]`, lower case.
    Exact(String),
    /// `https://*.example.com[:port]`: every subdomain, not the domain itself.
    Subdomains {
        scheme: String,
        /// `.example.com`
        suffix: String,
        port: Option<u16>,
    },
}

impl OriginPattern {
    /// Whether a request's `Origin` header is allowed.
    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(exact) => origin.eq_ignore_ascii_case(exact),
            OriginPattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                let origin = origin.to_ascii_lowercase();
                let Some(rest) = origin
                    .strip_prefix(scheme.as_str())
                    .and_then(|r| r.strip_prefix("://"))
                else {
                    return false;
                };
                let (host, origin_port) = match rest.rsplit_once(':') {
                    Some((host, p)) => match p.parse::<u16>() {
                        Ok(p) => (host, Some(p)),
                        Err(_) => return false,
                    },
                    None => (rest, None),
                };
                let Some(label) = host.strip_suffix(suffix.as_str()) else {
                    return false;
                };
                origin_port == *port
                    && !label.is_empty()
                    && !label.starts_with('.')
                    && !label.ends_with('.')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            }
        }
    }
}

/// How to reach Redis and when to give up on it: the one settings type the state crate
/// connects with.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`; may hold a password, so never logged.
    pub url: String,
    /// How many instances share the store (each counts its share while Redis is away).
    pub instances: std::num::NonZeroU32,
    /// Longest wait for one call, connecting included.
    pub timeout: Duration,
    /// Consecutive failures that open the circuit.
    pub breaker_failures: u32,
    /// How long an open circuit skips Redis before probing it.
    pub breaker_cooldown: Duration,
    /// Prefix of every key Tollgate writes.
    pub key_prefix: String,
    /// For a `rediss://` URL: a CA bundle to trust instead of the system's, and a client
    /// certificate. `None` for `redis://`.
    pub tls: Option<RedisTls>,
    /// The URL names one node of a Redis Cluster; the others are discovered from it.
    pub cluster: bool,
    /// The URLs of more nodes to start from (`url` with another `host:port`).
    pub cluster_seeds: Vec<String>,
}

/// TLS to Redis: PEM bytes as the Redis client takes them, checked when loaded.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RedisTls {
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate chain and private key (never printed).
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("instances", &self.instances)
            .field("timeout", &self.timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("key_prefix", &self.key_prefix)
            .field("tls", &self.tls.is_some())
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// A named rate-limit policy: its quota (validated when loaded), counted separately for
/// each value of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPolicy {
    pub name: String,
    pub quota: crate::quota::Quota,
    /// Non-empty, without repeats, in a fixed order; `[Global]` alone for one count.
    pub key: Vec<LimitKey>,
    pub on_redis_error: FailureMode,
    pub origin: Origin,
}

/// One part of what a limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LimitKey {
    /// The authenticated caller's client id.
    Client,
    /// The API key's id (requests authenticated otherwise are not counted).
    ApiKey,
    /// The client address: the socket's, or `X-Forwarded-For` through trusted proxies.
    Ip,
    Route,
    /// Every username the body submits under the route's `username_fields`, each
    /// counted (normalized and case-folded).
    Username,
    /// One count for everyone.
    Global,
}

impl LimitKey {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKey::Client => "client",
            LimitKey::ApiKey => "api_key",
            LimitKey::Ip => "ip",
            LimitKey::Route => "route",
            LimitKey::Username => "username",
            LimitKey::Global => "global",
        }
    }
}

/// What a policy does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Count in this process, at the instance's share of the limit.
    Local,
    /// Allow every request.
    Open,
    /// Refuse with 503 `RATE_LIMIT_UNAVAILABLE`.
    Closed,
}

#[derive(Debug, Clone)]
pub struct Server {
    /// Bound at start-up; changing it needs a restart.
    pub listen: Vec<SocketAddr>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the gateway keeps accepting while `/readyz` says 503, so a
    /// load balancer that polls readiness stops sending before the listeners close.
    pub drain_delay: Duration,
    /// Worker threads, each with its own listener socket (SO_REUSEPORT), runtime and
    /// upstream pool. Fixed at start-up.
    pub workers: usize,
    pub trusted_proxies: Vec<Cidr>,
    pub headers_with_underscores: Underscores,
    /// Request headers removed before forwarding: ones that make backends re-route or
    /// re-identify a request (`X-Original-URL`, `X-HTTP-Method-Override`, ...).
    pub strip_request_headers: Vec<HeaderName>,
    pub bodies: BodyLimits,
    /// Client connections open at once in this process; more are closed on accept.
    pub max_connections: usize,
    /// Plain listeners also take HTTP/2 with prior knowledge (h2c). Fixed at start-up.
    pub h2c: bool,
    /// Peers whose connections start with a PROXY protocol v2 header naming the client.
    pub proxy_protocol_from: Vec<Cidr>,
    /// `[server.tls]`: its listeners are fixed at start-up; its certificates follow
    /// every reload (a changed certificate file is a reload).
    pub tls: Option<Tls>,
}

/// Listeners that terminate TLS (1.2 and 1.3), offering HTTP/2 and HTTP/1.1 by ALPN.
#[derive(Debug, Clone)]
pub struct Tls {
    pub listen: Vec<SocketAddr>,
    /// Chosen by the name the client asks for (SNI); the first when it asks for none, or
    /// for a name no certificate is for.
    pub certificates: Vec<ServedCertificate>,
    /// Sent on every response over TLS.
    pub strict_transport_security: Option<HeaderValue>,
}

/// A certificate chain with its private key, checked to belong together.
#[derive(Clone)]
pub struct ServedCertificate {
    pub cert_file: PathBuf,
    pub key: Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServedCertificate({})", self.cert_file.display())
    }
}

/// What happens to a request header whose name contains `_`: CGI, WSGI, PHP and many
/// Java containers read `X_Client_Id` as `X-Client-Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underscores {
    /// Removed before forwarding (nginx's `underscores_in_headers off`).
    Drop,
    /// 400 `HEADER_NAME_INVALID`.
    Refuse,
}

/// How long request bodies may take, and how much of them the gateway holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A body must arrive within this plus one second per `min_rate` bytes received, and
    /// no wait for its next bytes may last longer than this.
    pub timeout: Duration,
    pub min_rate: u64,
    /// Bytes of request bodies held in memory at once, by all requests of the process.
    pub max_buffered: usize,
}

impl BodyLimits {
    /// The time a body that has delivered `received` bytes so far may have taken.
    pub fn allowance(&self, received: u64) -> Duration {
        let per_rate = Duration::from_secs_f64(received as f64 / self.min_rate.max(1) as f64);
        self.timeout.saturating_add(per_rate)
    }
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub authority: Authority,
    /// Prefix put before every forwarded path: empty, or starts with `/` and has no trailing `/`.
    pub base_path: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// `Some` for an https URL.
    pub tls: Option<UpstreamTls>,
}

/// How the gateway reaches an https upstream: whom it trusts, what it presents. The
/// host name of the URL is the name sent (SNI) and the name its certificate must be for.
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The bytes of the files it was made from: a reload that changes none of them keeps
    /// the pool and its connections.
    pub source: Vec<u8>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for UpstreamTls {}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamTls(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// 404 `ROUTE_NOT_FOUND` (405 when the path matches but the method does not).
    Deny,
    /// Forwarded to the upstream as if matched by a plain forward route.
    Forward,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The admin API's bearer token; without it the admin API is closed (metrics and
    /// health stay open).
    pub token: Option<AdminToken>,
}

/// The admin API's bearer token (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct Log {
    /// A `tracing` filter directive such as `info` or `tollgate=debug`.
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
    /// Query parameters whose values are replaced by `[redacted]` in logs (folded, see
    /// [`crate::param::fold`]).
    pub redact_query_params: Vec<String>,
    /// Secrets the gateway holds in clear (the URL secrets of callbacks, the admin
    /// token, the backend credentials it adds, Plivo auth tokens): replaced by
    /// `[redacted]` wherever they appear in a logged path or query, whatever carries them
    /// (`/callbacks/exotel/<secret>`, `?admin=<token>`, `?k=<legacy key>`).
    pub redact_values: RedactValues,
}

/// Secret values kept out of logs (never printed themselves), found in one pass
/// however many there are: a `client_map` credential holds every legacy key.
#[derive(Clone, Default)]
pub struct RedactValues {
    values: Vec<Vec<u8>>,
    finder: Option<aho_corasick::AhoCorasick>,
}

impl RedactValues {
    /// Shorter values are not looked for: a word that short would be redacted from
    /// every path that happens to hold it, and says little about a secret anyway.
    pub const MIN_LEN: usize = 8;

    pub fn new(values: impl IntoIterator<Item = Vec<u8>>) -> RedactValues {
        let mut values: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| v.len() >= Self::MIN_LEN)
            .collect();
        values.sort_unstable();
        values.dedup();
        // Built from a few thousand keys at most; a failure (a size limit) leaves only
        // the slower search.
        let finder = (!values.is_empty())
            .then(|| aho_corasick::AhoCorasick::new(&values).ok())
            .flatten();
        RedactValues { values, finder }
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether `text` holds one of the values anywhere.
    pub fn found_in(&self, text: &[u8]) -> bool {
        match &self.finder {
            Some(finder) => finder.is_match(text),
            None => self
                .values
                .iter()
                .any(|v| text.windows(v.len()).any(|w| w == v.as_slice())),
        }
    }
}

impl PartialEq for RedactValues {
    fn eq(&self, other: &RedactValues) -> bool {
        self.values == other.values
    }
}

impl std::fmt::Debug for RedactValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedactValues({} secret(s))", self.values.len())
    }
}

/// `[tracing]`: span export and the sampling of new traces.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tracing {
    /// `None`: no spans leave the process.
    pub export: Option<OtlpExport>,
    /// The share of requests without a valid `traceparent` whose new trace is sampled
    /// (and of those whose sampled flag is not followed).
    pub sample_new: f64,
    /// Whose `traceparent` sampled flag decides.
    pub follow_sampled: FollowSampled,
}

/// `[tracing] follow_sampled`: whose sampled flag a continued trace keeps. Anyone's can
/// make the gateway export a span; where the clients are the open internet, following
/// only the balancer in front keeps them from crowding the export queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FollowSampled {
    /// Every client's (W3C parent-based sampling; a browser's own tracing decides).
    #[default]
    Anyone,
    /// Only a peer in `[server] trusted_proxies`.
    TrustedProxies,
    /// Nobody's: `sample_new` decides for every request (the trace id is still kept).
    Nobody,
}

/// Where spans go: an OpenTelemetry collector's OTLP/HTTP endpoint (JSON encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpExport {
    pub url: Uri,
    pub https: bool,
    /// Roots trusted for an https collector: `[tracing] ca_file`, or the public web
    /// roots when empty.
    pub roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

#[derive(Debug, Clone)]
pub struct Reload {
    pub watch: bool,
    pub poll_interval: Duration,
}

/// How callers are authenticated: the token rules and keys, and the legacy API keys.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub jwt: Option<Jwt>,
    pub api_keys: Option<ApiKeySettings>,
}

#[derive(Debug, Clone)]
pub struct Jwt {
    pub rules: Rules,
    /// Statically configured keys, each pinned to its algorithm.
    pub keys: Vec<Arc<VerifyKey>>,
    /// The key the gateway signs with (login, refresh, `tollgate token mint`):
    /// `[jwt] signing_key`, else the last `[[jwt.key]]` that can sign.
    pub signing: Option<Arc<SigningKey>>,
    /// The public halves of the asymmetric keys the gateway can sign with (those with a
    /// `private_key_file`), served at `/.well-known/jwks.json` by an `endpoint = "jwks"`
    /// route.
    pub published: Vec<tollgate_auth::jwt::Jwk>,
    pub jwks: Vec<JwksSource>,
    pub cache_entries: usize,
    pub access_ttl: Duration,
}

/// A remote key set, fetched and refreshed by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    pub url: Uri,
    pub algorithm: Option<Algorithm>,
    pub refresh: Duration,
    /// An unknown `kid` refetches the set at most this often.
    pub min_refetch: Duration,
    /// For https: the only CA certificates to trust (PEM); the public web roots if `None`.
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct ApiKeySettings {
    pub keys: ApiKeys,
    /// Headers a key may come in, in order.
    pub headers: Vec<HeaderName>,
    pub query_param: Option<String>,
    /// Seconds since the epoch.
    pub deprecation: Option<u64>,
    pub sunset: Option<u64>,
    pub sunset_link: Option<String>,
}

/// A credential added upstream after the caller is authenticated. Values are marked
/// sensitive, so `Debug` never prints them.
#[derive(Debug, Clone)]
pub enum Credential {
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    /// The caller's own legacy key, by client id.
    ClientMap {
        name: HeaderName,
        values: HashMap<String, HeaderValue>,
    },
}

/// How a provider callback proves where it comes from.
#[derive(Clone)]
pub enum Webhook {
    PlivoV3 {
        /// The `[webhooks.NAME]` name.
        name: String,
        public_base_url: String,
        auth_tokens: Vec<Vec<u8>>,
        max_body_bytes: usize,
        /// A nonce seen within this long before is a replay.
        replay_window: Duration,
    },
    UrlSecret {
        param: String,
        secret: Vec<u8>,
    },
    IpAllowlist {
        cidrs: Vec<Cidr>,
    },
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Webhook::PlivoV3 {
                public_base_url,
                auth_tokens,
                ..
            } => f
                .debug_struct("PlivoV3")
                .field("public_base_url", public_base_url)
                .field("auth_tokens", &auth_tokens.len())
                .finish(),
            Webhook::UrlSecret { param, .. } => {
                f.debug_struct("UrlSecret").field("param", param).finish()
            }
            Webhook::IpAllowlist { cidrs } => {
                f.debug_struct("IpAllowlist").field("cidrs", cidrs).finish()
            }
        }
    }
}

/// How a route authenticates its callers.
#[derive(Debug, Clone)]
pub enum RouteAuth {
    None,
    Jwt,
    ApiKey,
    /// A key is accepted only when no JWT is presented; a bad JWT never falls back.
    JwtOrApiKey,
    Webhook(Arc<Webhook>),
}

impl RouteAuth {
    /// Whether the route knows which client calls it (and so injects and guards the
    /// client id). The one place that says which rules do.
    pub fn identifies_caller(&self) -> bool {
        matches!(
            self,
            RouteAuth::Jwt | RouteAuth::ApiKey | RouteAuth::JwtOrApiKey
        )
    }
}

pub use crate::diagnostic::Origin;

/// One validated route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// `None` means every method. GET brings HEAD with it ([`Route::allows`]).
    pub methods: Option<Vec<Method>>,
    pub path: PathPattern,
    pub action: RouteAction,
    pub auth: RouteAuth,
    pub upstream_credential: Option<(String, Arc<Credential>)>,
    pub pass_api_key: bool,
    /// Body types that pass uninspected on a route that identifies its caller.
    pub opaque_body_types: Vec<crate::media::MediaRange>,
    /// How the caller's client id reaches the backend; `None` on routes without a caller.
    pub client_id: Option<ClientIdPolicy>,
    /// Streamed bodies over this many bytes are refused with 413.
    pub max_upload_bytes: Option<u64>,
    /// Rate limits; every one applies to every request of the route.
    pub limits: Vec<Arc<LimitPolicy>>,
    /// The JSON members or form fields that may carry the submitted username (limits
    /// keyed by it): every one present counts; empty when none is set.
    pub username_fields: Vec<String>,
    /// Which browser origins may call it (CORS); `None`: the gateway answers no
    /// preflight for it and adds no CORS header.
    pub cors: Option<Arc<CorsPolicy>>,
    /// What a request costs in token credits; `None`: free.
    pub cost: Option<Arc<Cost>>,
    pub origin: Origin,
}

/// The methods a route that lists none is taken to serve: `Allow` names them, and a
/// cost may be set for them without listing them (`PSOT = 10` would leave POST free).
pub const STANDARD_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// `TRACE` (and IIS's `TRACK`): never forwarded. A backend answering it echoes the
/// request it received, the backend credential the gateway added among it (Apache's
/// `TraceEnable` is on by default), and RFC 9110 §9.3.8 forbids a client to send
/// credentials in one.
pub fn is_trace(method: &Method) -> bool {
    *method == Method::TRACE || method.as_str() == "TRACK"
}

/// The most tokens an account may hold, available and held together: 2^53 - 1.
/// Redis's Lua counts in doubles, which are exact only up to here, and so does the
/// frontend's JavaScript (`Number.MAX_SAFE_INTEGER`); the journal's signed amounts could
/// not record more either. An adjustment beyond it is refused, never rounded, and a
/// cost beyond it could never be paid.
pub const MAX_TOKENS: u64 = (1 << 53) - 1;

/// A route's price in token credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cost {
    /// Per method; a method not listed is free. One entry with `None`: every method.
    pub amounts: Vec<(Option<Method>, u64)>,
    /// The response header in which the backend reports the real cost.
    pub settle_header: Option<HeaderName>,
    /// Upstream statuses that refund (inclusive ranges).
    pub refund: Vec<(u16, u16)>,
}

impl Cost {
    /// What a request with `method` costs. A HEAD no entry names costs what a GET
    /// does: the backend does the GET's work for it.
    pub fn for_method(&self, method: &Method) -> u64 {
        let amount = |wanted: &Method| {
            self.amounts
                .iter()
                .find(|(m, _)| m.as_ref().is_none_or(|m| m == wanted))
                .map(|(_, amount)| *amount)
        };
        amount(method)
            .or_else(|| {
                (*method == Method::HEAD)
                    .then(|| amount(&Method::GET))
                    .flatten()
            })
            .unwrap_or(0)
    }

    /// Whether an upstream answer with `status` gives the tokens back.
    pub fn refunds(&self, status: u16) -> bool {
        self.refund
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// `[credits]`: token credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credits {
    /// `false`: every route is free (and the token endpoints say so).
    pub enabled: bool,
    /// The embedded ledger's file (without Redis).
    pub path: PathBuf,
    pub reservation_timeout: Duration,
    pub idempotency_ttl: Duration,
    /// Upstream statuses that refund, for routes that do not say (inclusive ranges).
    pub refund_statuses: Vec<(u16, u16)>,
    /// Opening balances to credit once per client at start.
    pub opening_balances: Option<PathBuf>,
    pub on_client_abort: ClientAbort,
    /// When the embedded ledger's movements are on disk (read when it opens).
    pub sync: LedgerSync,
}

/// When the embedded ledger makes a movement durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LedgerSync {
    /// A reservation is on disk before its request is forwarded (group-committed).
    #[default]
    BeforeForwarding,
    /// Everything logged is written at once but synced once per interval, and a
    /// request does not wait for the sync: `kill -9` loses nothing, a crash of the
    /// machine can forgive the charges of the last interval, never charge twice.
    Interval(Duration),
}

/// What a metered request whose client left before the response head costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAbort {
    /// Nothing: the reservation is voided, and the upstream request abandoned.
    #[default]
    Refund,
    /// Once the whole request went upstream, the exchange with the backend goes on and
    /// its answer settles the reservation, as if the client had waited (a client that
    /// hangs up cannot have an operation done for free). An abort during the upload
    /// still refunds.
    Settle,
}

/// Where the caller's client id goes, and what happens to client-supplied ones.
#[derive(Debug, Clone)]
pub struct ClientIdPolicy {
    pub query: bool,
    pub header: Option<HeaderName>,
    pub json: bool,
    pub form: bool,
    /// The canonical name, then the aliases; matched case-insensitively.
    pub names: Vec<String>,
    /// Segments of the JSON pointer to the object that gets the field (empty: top level).
    pub json_pointer: Vec<String>,
    pub on_mismatch: Mismatch,
    pub allow_non_object_json: bool,
    pub max_body_bytes: usize,
    pub json_type: JsonType,
}

/// The JSON type of the client id the gateway writes into a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    /// The verified claim's own type: a number for `"clientId": 42`, a string for
    /// `"clientId": "42"` (and for API-key callers).
    Claim,
    String,
    /// A number whenever the id is a plain decimal integer.
    Number,
}

impl ClientIdPolicy {
    pub fn name(&self) -> &str {
        self.names.first().map_or("clientId", String::as_str)
    }

    /// Whether a decoded parameter, member or header name means the client id: the name
    /// or an alias in any spelling a backend folds into it (see [`crate::param`]).
    pub fn is_name(&self, candidate: &str) -> bool {
        self.names.iter().any(|n| crate::param::means(candidate, n))
    }

    /// Whether `candidate` is the client id's own name (not a nested spelling of it).
    pub fn is_top_name(&self, candidate: &str) -> bool {
        self.names
            .iter()
            .any(|n| crate::param::same_top(candidate, n))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// 403 `CLIENT_ID_MISMATCH`.
    Reject,
    /// The client's value is replaced.
    Overwrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAction {
    /// Stream the request to the upstream.
    Forward,
    /// Refuse with 403 `FORBIDDEN`.
    Deny,
    /// Answered by the gateway itself, after the same authentication and limits as any
    /// route.
    Serve(Endpoint),
    /// Forwarded to the legacy login untouched; a successful answer is turned into the
    /// gateway's login answer (a session, an access token, a refresh token).
    Login,
}

/// The endpoints the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The public keys of the gateway's signing keys, as a JSON Web Key Set.
    Jwks,
    /// `POST`: a refresh token for a new pair (rotation).
    Refresh,
    /// `POST`: ends the session and its access token.
    Logout,
    /// `GET`: the caller's balance.
    TokensBalance,
    /// `GET`: every route's cost.
    TokensCosts,
    /// `POST`: what operations would cost.
    TokensPreview,
    /// `GET`: the caller's journal.
    TokensHistory,
}

impl Route {
    /// Whether the route takes `method`. A route that takes GET takes HEAD too: HEAD is
    /// GET without the body (RFC 9110 §9.3.2), backends run their GET handler for it,
    /// and a `deny` route for GET must not let the same request through as a HEAD.
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| {
            m.contains(method) || (*method == Method::HEAD && m.contains(&Method::GET))
        })
    }
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy)]
pub enum RouteMatch<'s> {
    Route(&'s Route),
    /// Some routes match the path but none the method (see [`Snapshot::allowed_methods`]).
    MethodNotAllowed,
    Unmatched,
}

impl Snapshot {
    /// The first route, in order, whose path pattern and methods match. `path` must be
    /// normalized (see [`crate::path::normalize`]).
    pub fn route(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        let mut path_matched = false;
        for route in &self.routes {
            if route.path.matches(path) {
                if route.allows(method) {
                    return RouteMatch::Route(route);
                }
                path_matched = true;
            }
        }
        if path_matched {
            RouteMatch::MethodNotAllowed
        } else {
            RouteMatch::Unmatched
        }
    }

    /// The methods allowed on `path` by any route, for an `Allow` header.
    pub fn allowed_methods(&self, path: &str) -> Vec<Method> {
        let mut methods: Vec<Method> = Vec::new();
        for route in self.routes.iter().filter(|r| r.path.matches(path)) {
            for m in route.methods.iter().flatten() {
                let with_head = (*m == Method::GET).then_some(Method::HEAD);
                for m in std::iter::once(m.clone()).chain(with_head) {
                    if !methods.contains(&m) {
                        methods.push(m);
                    }
                }
            }
        }
        methods
    }
}
