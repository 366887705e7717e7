//! `[log]`: level, format, the access log and which query parameters it redacts.

use super::context::Loader;
use super::file::{LogFile, LogFormatFile};
use crate::diagnostic::SourceFile;
use crate::param::fold;
use crate::snapshot::{Log, LogFormat};

/// Query parameters whose values are never logged unless `redact_query_params` says
/// otherwise (the URL-secret and API-key parameters, and the API-key header names, are
/// always added).
pub const DEFAULT_REDACTED_QUERY_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "key",
    "token",
    "access_token",
    "refresh_token",
    // The gateway's own login answers spell them in camel case.
    "refreshtoken",
    "accesstoken",
    "csrf_token",
    "csrftoken",
    "secret",
    "client_secret",
    "password",
    "passwd",
    "pass",
    "pwd",
    "auth",
    "authorization",
    "jwt",
    "id_token",
    "code",
    "session",
    "sessionid",
    "signature",
    "sig",
];

pub(crate) fn log(l: &mut Loader, src: &SourceFile, f: Option<LogFile>) -> Option<Log> {
    let defaults = || {
        DEFAULT_REDACTED_QUERY_PARAMS
            .iter()
            .map(|p| fold(p))
            .collect()
    };
    let Some(f) = f else {
        return Some(Log {
            level: "info".into(),
            format: LogFormat::Json,
            access_log: true,
            redact_query_params: defaults(),
            redact_values: Default::default(),
        });
    };
    let level = match &f.level {
        Some(level) if level.get_ref().trim().is_empty() => {
            l.error(src, Some(level.span()), "[log] level: must not be empty");
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
        redact_query_params: match &f.redact_query_params {
            Some(list) => list.iter().map(|p| fold(p)).collect(),
            None => defaults(),
        },
        redact_values: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};

    #[test]
    fn names_are_folded_and_secret_parameters_always_added() {
        let s = load(
            &format!("{GATEWAY}\n[log]\nformat = \"text\"\nredact_query_params = [\"Session.ID\"]\n\n[api_keys]\nfile = \"keys/api-keys.toml\"\nquery_param = \"Api-Key\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.log.format, crate::snapshot::LogFormat::Text);
        // The API-key parameter and the API-key header name (the default, `x-api-key`).
        assert_eq!(
            s.log.redact_query_params,
            ["session_id", "api-key", "x-api-key"]
        );
        let s = load(
            &format!("{GATEWAY}\n[log]\nredact_query_params = []\n\n[api_keys]\nfile = \"keys/api-keys.toml\"\nheaders = [\"X-Legacy-Key\", \"x-key\"]\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.log.redact_query_params, ["x-legacy-key", "x-key"]);
        let d = load(GATEWAY, &[]).unwrap();
        assert!(d.log.redact_query_params.contains(&"token".to_owned()));
        let e = errors(&format!("{GATEWAY}\n[log]\nlevel = \" \"\n"), &[]);
        assert_eq!(e, ["gateway.toml:11:9: [log] level: must not be empty"]);
    }

    /// The backend credentials the gateway holds in clear are kept out of logs: every
    /// legacy key of a map, a Basic credential as sent, decoded and its password alone.
    #[test]
    fn held_credentials_are_redacted_values() {
        let s = load(&format!("{GATEWAY}\n[credentials.basic]\nkind = \"basic\"\nusername = \"gw\"\npassword_env = \"LONG_PASSWORD\"\n\n[credentials.map]\nkind = \"client_map\"\nheader = \"x-api-key\"\nfile = \"keys/long-client-keys.toml\"\n"), &[]).unwrap();
        let held = &s.log.redact_values;
        for secret in [
            &b"legacy-key-of-1001"[..],
            b"gw:basic-password-1",
            b"basic-password-1",
            b"Z3c6YmFzaWMtcGFzc3dvcmQtMQ==",
        ] {
            assert!(held.found_in(secret), "{}", String::from_utf8_lossy(secret));
        }
        assert!(!held.found_in(b"gw:other"));
    }
}
