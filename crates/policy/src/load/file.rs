//! The TOML file structs, exactly as operators write them.
//!
//! These are *not* the runtime model: the loader converts them into the validated types
//! of [`crate::snapshot`], and nothing outside this crate sees a raw string that could be
//! invalid. Every struct denies unknown fields, so a typo is an error, never a default.

use serde::Deserialize;
use toml::Spanned;

/// `[server]` in `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_uri_bytes: Option<Spanned<i64>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub drain_delay: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Request headers whose names contain `_`: "drop" (default) or "refuse" (400).
    pub headers_with_underscores: Option<UnderscoresFile>,
    /// Request headers removed before forwarding (replaces the default list).
    pub strip_request_headers: Option<Vec<Spanned<String>>>,
    /// A body the gateway reads or streams must arrive within this, plus one second per
    /// `request_body_min_rate` bytes received.
    pub request_body_timeout: Option<Spanned<String>>,
    /// Bytes per second a request body must average beyond `request_body_timeout`.
    pub request_body_min_rate: Option<Spanned<i64>>,
    /// All request bodies the gateway holds in memory at once (JSON and form rewrites,
    /// signed callbacks, login usernames), per process; past it, 503.
    pub max_buffered_body_bytes: Option<Spanned<i64>>,
    /// Client connections open at once, per process; more are closed at once.
    pub max_connections: Option<Spanned<i64>>,
    /// Plain listeners also take HTTP/2 with prior knowledge (h2c), for local use.
    pub h2c: Option<bool>,
    /// Load balancers (CIDRs) whose connections start with a PROXY protocol v2 header
    /// naming the client; connections from anyone else are taken as they come.
    #[serde(default)]
    pub proxy_protocol_from: Vec<Spanned<String>>,
    pub tls: Option<TlsFile>,
}

/// `[server.tls]`: listeners that terminate TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub listen: Spanned<Vec<Spanned<String>>>,
    /// Served by SNI; the first also to clients that name no host, or one none is for.
    pub certificates: Spanned<Vec<CertificateFile>>,
    /// Sent on every response over TLS; `""` sends none.
    pub strict_transport_security: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// PEM: the certificate, then its intermediates.
    pub cert_file: Spanned<String>,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Spanned<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoresFile {
    Drop,
    Refuse,
}

/// `[upstream]` in `gateway.toml`: the legacy backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub url: Spanned<String>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub pool_idle_timeout: Option<Spanned<String>>,
    pub pool_max_idle: Option<Spanned<i64>>,
    /// For an https URL: trust only the CA certificates in this PEM file instead of the
    /// public web roots.
    pub ca_file: Option<Spanned<String>>,
    /// For an https URL: the certificate (PEM chain) the gateway presents (mutual TLS).
    pub client_cert_file: Option<Spanned<String>>,
    pub client_key_file: Option<Spanned<String>>,
}

/// `[routing]` in `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// Directory of policy files, relative to `gateway.toml`.
    pub policies: Spanned<String>,
    pub unmatched: Option<Spanned<UnmatchedFile>>,
    /// The `[cors.NAME]` policy of routes that name none (and of requests no route
    /// matches).
    pub cors: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedFile {
    #[default]
    Deny,
    Forward,
}

/// `[admin]` in `gateway.toml`: the private listener for metrics and health.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Spanned<String>,
    /// The bearer token of the admin API (the ledger), from the environment or a file.
    pub token_env: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
}

/// `[log]` in `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub level: Option<Spanned<String>>,
    #[serde(default)]
    pub format: LogFormatFile,
    pub access_log: Option<bool>,
    pub redact_query_params: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum LogFormatFile {
    #[default]
    Json,
    Text,
}

/// `[tracing]` in `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingFile {
    /// The collector's OTLP/HTTP traces endpoint (JSON encoding).
    pub otlp_url: Option<Spanned<String>>,
    pub service_name: Option<Spanned<String>>,
    /// The share of requests without a `traceparent` that start a sampled trace.
    pub sample_new: Option<Spanned<f64>>,
    /// PEM roots for an https collector with a private CA.
    pub ca_file: Option<Spanned<String>>,
    /// `"anyone"`, `"trusted_proxies"` or `"nobody"`.
    pub follow_sampled: Option<Spanned<String>>,
}

/// `[reload]` in `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadFile {
    pub watch: Option<bool>,
    pub poll_interval: Option<Spanned<String>>,
}

/// One `[[route]]` in a policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Spanned<String>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub path: Spanned<String>,
    #[serde(default)]
    pub action: ActionFile,
    /// With `action = "serve"`: which of the gateway's own endpoints answers.
    pub endpoint: Option<Spanned<EndpointFile>>,
    /// Omitted means `jwt`: a route is never open by accident.
    pub auth: Option<Spanned<AuthModeFile>>,
    /// The `[webhooks.NAME]` that verifies callers, with `auth = "webhook"`.
    pub webhook: Option<Spanned<String>>,
    /// The `[credentials.NAME]` to add upstream once the caller is authenticated.
    pub upstream_credential: Option<Spanned<String>>,
    /// Forward the caller's own API key headers/parameter (removed by default).
    #[serde(default)]
    pub pass_api_key: bool,
    /// With `auth = "none"`, the operator's word that anyone may have the backend
    /// credential added (`tollgate check` refuses it otherwise).
    #[serde(default)]
    pub allow_anonymous_credential: bool,
    /// Body media types that pass uninspected on a route that identifies its caller
    /// (`text/csv`, `application/octet-stream`, `image/*`). JSON, form and multipart
    /// bodies are always inspected; any other body is refused with 415.
    pub opaque_body_types: Option<Vec<Spanned<String>>>,
    /// How the caller's client id reaches the backend (authenticated routes).
    pub client_id: Option<ClientIdFile>,
    /// Streamed bodies (uploads) over this many bytes are refused with 413.
    pub max_upload_bytes: Option<Spanned<i64>>,
    /// The `[limits.NAME]` policies that apply, all of them to every request.
    pub limits: Option<Vec<Spanned<String>>>,
    /// The JSON members or form fields that may hold the submitted username (a login
    /// route); every one present counts, for limits keyed by `username`.
    pub username_fields: Option<Spanned<Vec<Spanned<String>>>>,
    /// The `[cors.NAME]` policy for this route, or "none" (default: `[routing] cors`).
    pub cors: Option<Spanned<String>>,
    /// Token credits a request costs: a number, or one per method (`{ POST = 10 }`).
    pub cost: Option<Spanned<CostFile>>,
    /// A response header in which the backend reports what the request really cost
    /// (never more than was reserved).
    pub settle_header: Option<Spanned<String>>,
    /// Upstream statuses that refund the cost (default: `[credits] refund_statuses`).
    pub refund_statuses: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A route's `cost`.
#[derive(Debug)]
pub enum CostFile {
    Flat(i64),
    PerMethod(std::collections::BTreeMap<String, i64>),
}

/// What `cost` may be, said when it is something else: an untagged enum could only
/// say that the value "did not match any variant".
const COST_EXPECTED: &str =
    "a whole number of tokens (`cost = 10`) or one per method (`cost = { POST = 10 }`)";

impl<'de> Deserialize<'de> for CostFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CostFile, D::Error> {
        struct CostVisitor;
        impl<'de> serde::de::Visitor<'de> for CostVisitor {
            type Value = CostFile;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(COST_EXPECTED)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<CostFile, E> {
                Ok(CostFile::Flat(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<CostFile, E> {
                i64::try_from(n)
                    .map(CostFile::Flat)
                    .map_err(|_| E::custom(format!("cost {n} is too large")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<CostFile, E> {
                Err(E::custom(format!(
                    "cost {n} is not a whole number: tokens are counted in whole units; expected {COST_EXPECTED}"
                )))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<CostFile, A::Error> {
                let mut costs = std::collections::BTreeMap::new();
                while let Some((method, n)) = map.next_entry::<String, CostAmount>()? {
                    if costs.insert(method.clone(), n.0).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "the cost of {method} is given twice"
                        )));
                    }
                }
                Ok(CostFile::PerMethod(costs))
            }
        }
        d.deserialize_any(CostVisitor)
    }
}

/// One method's cost in `cost = { POST = 10 }`: a whole number, said plainly when not.
struct CostAmount(i64);

impl<'de> Deserialize<'de> for CostAmount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CostAmount, D::Error> {
        struct AmountVisitor;
        impl serde::de::Visitor<'_> for AmountVisitor {
            type Value = CostAmount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number of tokens (`POST = 10`)")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<CostAmount, E> {
                Ok(CostAmount(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<CostAmount, E> {
                i64::try_from(n)
                    .map(CostAmount)
                    .map_err(|_| E::custom(format!("cost {n} is too large")))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<CostAmount, E> {
                Err(E::custom(format!(
                    "cost {n} is not a whole number: tokens are counted in whole units (`POST = 10`)"
                )))
            }
        }
        d.deserialize_any(AmountVisitor)
    }
}

/// `[credits]` in `gateway.toml`: token credits, metered before the backend is called.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditsFile {
    /// `false` makes every route free (costs are still checked).
    pub enabled: Option<bool>,
    /// The embedded ledger's file, relative to gateway.toml (default
    /// `state/ledger.redb`); with `[store] redis_url` the ledger is in Redis.
    pub path: Option<Spanned<String>>,
    /// A reservation nobody settled within this (the gateway died mid-request) is
    /// refunded (default 15m; longer than any metered request can take).
    pub reservation_timeout: Option<Spanned<String>>,
    /// How long an `Idempotency-Key`'s answer is kept (default 24h).
    pub idempotency_ttl: Option<Spanned<String>>,
    /// Upstream statuses that refund the cost: `5xx`, `4xx` or a status (default
    /// `["4xx", "5xx"]`: only a success is charged).
    pub refund_statuses: Option<Spanned<Vec<Spanned<String>>>>,
    /// Opening balances exported from the legacy system (CSV `clientId,balance` or
    /// JSON), credited once per client when the gateway starts.
    pub opening_balances: Option<Spanned<String>>,
    /// A client that leaves after its whole request went upstream: "refund" (the
    /// default) or "settle" (the backend's answer decides, as if the client had waited).
    pub on_client_abort: Option<ClientAbortFile>,
    /// When the embedded ledger's movements reach the disk: "before_forwarding" (the
    /// default: a reservation is durable before its request goes upstream) or
    /// "interval" (written before answering, synced every `sync_interval`: a crash of
    /// the machine can forgive the charges of the last interval, never charge twice). Not with Redis: its persistence decides.
    pub sync: Option<Spanned<LedgerSyncFile>>,
    /// With `sync = "interval"`: how often (default 10ms, 1ms to 1s).
    pub sync_interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAbortFile {
    Refund,
    Settle,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LedgerSyncFile {
    BeforeForwarding,
    Interval,
}

/// `[cors.NAME]` in a policy file: which browser origins may call the routes that name
/// it, and what their scripts may read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    /// `https://app.example.com`, `https://*.example.com`, or `*` (not with credentials).
    pub origins: Spanned<Vec<Spanned<String>>>,
    /// Methods a preflight may ask for (default: the route's methods).
    pub methods: Option<Vec<Spanned<String>>>,
    /// Request headers a page may send (replaces the default list).
    pub headers: Option<Vec<Spanned<String>>>,
    /// Cookies (and `Authorization`) go with cross-origin requests: needed in cookie mode.
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may reuse a preflight's answer.
    pub max_age: Option<Spanned<String>>,
    /// Response headers scripts may read, beyond the gateway's own (rate limits, credits,
    /// deprecation, request id).
    pub expose_headers: Option<Vec<Spanned<String>>>,
}

/// `[sessions]` in `gateway.toml`: the gateway's own login sessions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsFile {
    /// A refresh token unused this long expires (default 7d).
    pub refresh_idle: Option<Spanned<String>>,
    /// The absolute lifetime of a session (default 30d).
    pub lifetime: Option<Spanned<String>>,
    /// A rotated refresh token presented again within this gets the same answer
    /// (default 10s); later, it revokes the session.
    pub reuse_grace: Option<Spanned<String>>,
    /// "bearer" (default) or "cookie".
    pub tokens: Option<TokenModeFile>,
    /// Cookie mode: the access token in a cookie too (default true).
    pub cookie_access_token: Option<Spanned<bool>>,
    /// Cookie mode: the `Secure` attribute (default true; false only for plain-HTTP
    /// development).
    pub cookie_secure: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenModeFile {
    Bearer,
    Cookie,
}

/// `[login]` in `gateway.toml`: how the legacy login's answer is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFile {
    /// JSON pointer to the client id (default `/0/clientId`).
    pub client_id: Option<Spanned<String>>,
    /// JSON pointer to the user record (default `/0`).
    pub user: Option<Spanned<String>>,
    /// JSON pointer to the token's subject (default: the client id).
    pub subject: Option<Spanned<String>>,
    /// Members of the user record returned to the page (default: all but secrets).
    pub user_fields: Option<Vec<Spanned<String>>>,
    /// Members of the user record copied into the access token (default: none).
    pub token_claims: Option<Vec<Spanned<String>>>,
    /// Member names never returned or signed, at any depth (replaces the default list).
    pub secret_fields: Option<Vec<Spanned<String>>>,
}

/// `[limits.NAME]` in a policy file: a named rate-limit policy routes refer to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFile {
    /// Requests per `period`.
    pub rate: Spanned<i64>,
    pub period: Spanned<String>,
    /// Requests allowed at once (default: `rate`).
    pub burst: Option<Spanned<i64>>,
    /// What is counted separately: any of client, api_key, ip, route, username, or
    /// just global.
    pub key: Spanned<Vec<Spanned<LimitKeyFile>>>,
    /// What to do while Redis cannot be reached (default: local).
    pub on_redis_error: Option<FailureModeFile>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitKeyFile {
    Client,
    ApiKey,
    Ip,
    Route,
    Username,
    Global,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FailureModeFile {
    Local,
    Open,
    Closed,
}

/// `[store]` in `gateway.toml`: where state shared by instances lives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `redis://...`; omit (with `redis_url_env`) to keep state in this process.
    pub redis_url: Option<Spanned<String>>,
    /// An environment variable holding the URL (it may carry a password).
    pub redis_url_env: Option<Spanned<String>>,
    /// How many instances share the store: while Redis is unreachable, each allows
    /// its share (`limit / instances`) of a `local` policy.
    pub instances: Option<Spanned<i64>>,
    pub timeout: Option<Spanned<String>>,
    pub breaker_failures: Option<Spanned<i64>>,
    pub breaker_cooldown: Option<Spanned<String>>,
    pub key_prefix: Option<Spanned<String>>,
    /// `redis_url` is one node of a Redis Cluster (the others are discovered).
    pub cluster: Option<Spanned<bool>>,
    /// More nodes of the cluster (`host:port`, reached like `redis_url`), so the
    /// gateway can connect while the first is down.
    pub cluster_nodes: Option<Vec<Spanned<String>>>,
    /// For `rediss://`: trust only the CA certificates in this PEM file instead of the
    /// system's.
    pub redis_ca_file: Option<Spanned<String>>,
    /// For `rediss://` to a Redis that checks clients (`tls-auth-clients yes`).
    pub redis_client_cert_file: Option<Spanned<String>>,
    pub redis_client_key_file: Option<Spanned<String>>,
    /// The embedded store's file, relative to gateway.toml (default
    /// `state/tollgate.redb`): sessions, when there is no Redis.
    pub path: Option<Spanned<String>>,
}

/// `client_id = { ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIdFile {
    /// Where to put it: any of "query", "header", "json", "form". Default: all four.
    pub inject: Option<Vec<Spanned<InjectTargetFile>>>,
    /// The parameter or field name (default `clientId`).
    pub name: Option<Spanned<String>>,
    /// Other names that mean the same and are checked (and removed) too.
    pub aliases: Option<Vec<Spanned<String>>>,
    /// The header for the "header" target (default `X-Client-Id`).
    pub header: Option<Spanned<String>>,
    /// A JSON pointer to the object that gets the field (default: the top level).
    pub json_pointer: Option<Spanned<String>>,
    /// A client-supplied value that differs: "reject" (403) or "overwrite".
    pub on_mismatch: Option<MismatchFile>,
    /// Accept JSON bodies that are not objects (left unchanged).
    #[serde(default)]
    pub allow_non_object_json: bool,
    /// JSON and form bodies are read up to this many bytes to be rewritten (413 above).
    pub max_body_bytes: Option<Spanned<i64>>,
    /// The JSON type of the injected id: "claim" (the token claim's own type; the
    /// default), "string" or "number".
    pub json_type: Option<JsonTypeFile>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JsonTypeFile {
    Claim,
    String,
    Number,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum InjectTargetFile {
    Query,
    Header,
    Json,
    Form,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MismatchFile {
    Reject,
    Overwrite,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthModeFile {
    None,
    Jwt,
    ApiKey,
    JwtOrApiKey,
    Webhook,
}

/// `[jwt]` in `gateway.toml`, without its `[[jwt.key]]` and `[[jwt.jwks]]` arrays: the
/// loader takes those apart first and reads each table on its own (so a mistake in one
/// is reported as that key's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Option<Spanned<String>>,
    pub max_token_bytes: Option<Spanned<i64>>,
    pub client_id_claim: Option<Spanned<String>>,
    pub cache_entries: Option<Spanned<i64>>,
    /// Lifetime of tokens this gateway mints.
    pub access_ttl: Option<Spanned<String>>,
    /// The `[[jwt.key]]` id the gateway signs with (default: the last key that can).
    pub signing_key: Option<Spanned<String>>,
}

/// One `[[jwt.key]]`: a key pinned to one algorithm. Secrets come from the environment
/// or a file, never from the configuration itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyFile {
    pub id: Option<Spanned<String>>,
    /// The key's algorithm; or `algorithms`, several of one family (RS256 and PS256).
    pub algorithm: Option<Spanned<String>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub secret_env: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub public_key_file: Option<Spanned<String>>,
    /// Only for `tollgate token mint` (and later the login): the private key.
    pub private_key_file: Option<Spanned<String>>,
}

/// One `[[jwt.jwks]]`: a remote key set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksFile {
    pub url: Spanned<String>,
    /// For keys in the set that carry no `alg`.
    pub algorithm: Option<Spanned<String>>,
    pub refresh: Option<Spanned<String>>,
    pub min_refetch: Option<Spanned<String>>,
    /// For an https URL: trust only the CA certificates in this PEM file (a private
    /// identity provider) instead of the public web roots.
    pub ca_file: Option<Spanned<String>>,
}

/// `[api_keys]` in `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysFile {
    pub file: Spanned<String>,
    pub headers: Option<Vec<Spanned<String>>>,
    pub query_param: Option<String>,
    pub deprecation: Option<Spanned<toml::value::Datetime>>,
    pub sunset: Option<Spanned<toml::value::Datetime>>,
    /// A page explaining the migration, sent as `Link: <...>; rel="sunset"`.
    pub sunset_link: Option<Spanned<String>>,
}

/// The keys file named by `[api_keys] file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFileEntry {
    pub id: Spanned<String>,
    pub client_id: Spanned<String>,
    pub sha256: Spanned<String>,
}

/// `[credentials.NAME]`: what to add upstream after authentication. The variant is
/// named by the table's `kind` (read by `document::named_tables`, which keeps the
/// fields' positions).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialFile {
    /// A static header value.
    Header {
        header: Spanned<String>,
        value_env: Option<Spanned<String>>,
        value_file: Option<Spanned<String>>,
    },
    /// HTTP Basic.
    Basic {
        username: Spanned<String>,
        password_env: Option<Spanned<String>>,
        password_file: Option<Spanned<String>>,
    },
    /// The caller's own legacy key, from a file mapping client id to key.
    ClientMap {
        header: Spanned<String>,
        file: Spanned<String>,
    },
}

/// `[webhooks.NAME]`: how provider callbacks prove where they come from. The variant is
/// named by the table's `kind` (see [`CredentialFile`]).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookFile {
    PlivoV3 {
        /// The scheme and host Plivo calls, e.g. `https://api.example.com`.
        public_base_url: Spanned<String>,
        /// Environment variables holding auth tokens (several, for rotation).
        #[serde(default)]
        auth_tokens_env: Vec<Spanned<String>>,
        /// Or a file with one auth token per line.
        auth_tokens_file: Option<Spanned<String>>,
        max_body_bytes: Option<Spanned<i64>>,
        /// How long a nonce is remembered: a callback repeated within it is refused.
        replay_window: Option<Spanned<String>>,
    },
    UrlSecret {
        param: Spanned<String>,
        secret_env: Option<Spanned<String>>,
        secret_file: Option<Spanned<String>>,
    },
    IpAllowlist {
        cidrs: Vec<Spanned<String>>,
    },
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActionFile {
    #[default]
    Forward,
    Deny,
    /// Answered by the gateway itself: the route's `endpoint`.
    Serve,
    /// The legacy login, forwarded; a success becomes the gateway's login answer.
    Login,
}

/// An endpoint the gateway answers itself (`action = "serve"`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndpointFile {
    /// `GET /.well-known/jwks.json`: the public keys of the gateway's signing keys.
    Jwks,
    /// `POST /gateway/auth/refresh`: rotates a refresh token.
    Refresh,
    /// `POST /gateway/auth/logout`: ends the session.
    Logout,
    /// `GET /gateway/tokens/balance`: the caller's token balance.
    TokensBalance,
    /// `GET /gateway/tokens/costs`: what every route costs.
    TokensCosts,
    /// `POST /gateway/tokens/preview`: what operations would cost the caller.
    TokensPreview,
    /// `GET /gateway/tokens/history`: the caller's own movements, newest first.
    TokensHistory,
}
