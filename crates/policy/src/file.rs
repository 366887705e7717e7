//! The TOML file structs, exactly as operators write them.
//!
//! These are *not* the runtime model: `load` converts them into the validated types of
//! [`crate::snapshot`], and nothing outside this crate sees a raw string that could be
//! invalid. Every struct denies unknown fields, so a typo is an error, never a default.

use serde::Deserialize;
use toml::Spanned;

/// `[server]` in `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Vec<Spanned<String>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_uri_bytes: Option<Spanned<i64>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
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
}

/// `[routing]` in `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingFile {
    /// Directory of policy files, relative to `gateway.toml`.
    pub policies: Spanned<String>,
    #[serde(default)]
    pub unmatched: UnmatchedFile,
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
}

#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum ActionFile {
    #[default]
    Forward,
    Deny,
}
