//! Loading from memory, for the section tests: a minimal `gateway.toml`, key files and
//! environment variables, and diagnostics as short strings.

use std::path::Path;

use crate::diagnostic::Severity;
use crate::snapshot::Snapshot;
use crate::sources::InMemory;

/// The smallest valid `gateway.toml` (sections are appended after its last line, 8).
pub const GATEWAY: &str = "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[routing]\npolicies = \"policies\"\n";

/// An environment variable holding a 32-byte HMAC secret.
pub const HS256: &str = "HS256_SECRET";

/// An Ed25519 key pair (`/t/keys/ed.pem`, `/t/keys/ed.pub.pem`), and the public half of
/// another (`/t/keys/other.pub.pem`).
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGhcBCDer9fXXmR9/rjrcW1Yid29NIv/S43CvUfq3Dmu\n-----END PRIVATE KEY-----\n";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJY92Gt/T7JY8bMSPHJ+fECYkJXOLNdtLkH/oGXw5w/o=\n-----END PUBLIC KEY-----\n";
const OTHER_ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEASubGOP4aaKD2oBrlGZVvokmLwCeKtLItW3p6A2ftnsQ=\n-----END PUBLIC KEY-----\n";

/// The test CA and certificates of `tests/fixtures/tls`, as `/t/tls/*.pem`.
const TLS_CA: &str = include_str!("../../../../tests/fixtures/tls/ca.pem");
const TLS_SERVER: &str = include_str!("../../../../tests/fixtures/tls/server.pem");
const TLS_SERVER_KEY: &str = include_str!("../../../../tests/fixtures/tls/server.key.pem");
const TLS_OTHER: &str = include_str!("../../../../tests/fixtures/tls/other.pem");
const TLS_OTHER_KEY: &str = include_str!("../../../../tests/fixtures/tls/other.key.pem");
const TLS_CLIENT: &str = include_str!("../../../../tests/fixtures/tls/client.pem");
const TLS_CLIENT_KEY: &str = include_str!("../../../../tests/fixtures/tls/client.key.pem");

fn sources(gateway: &str, policies: &[(&str, &str)]) -> InMemory {
    let mut sources = InMemory::new()
        .file("/t/gateway.toml", gateway)
        .file(
            "/t/keys/api-keys.toml",
            format!(
                "[[key]]\nid = \"acme-1\"\nclient_id = \"1001\"\nsha256 = \"{}\"\n",
                tollgate_auth::api_key::hash_hex("legacy-key-acme")
            ),
        )
        .file(
            "/t/keys/bad-keys.toml",
            format!(
                "[[key]]\nid = \"a\"\nclient_id = \"1001\"\nsha256 = \"{h}\"\n[[key]]\nid = \"a\"\nclient_id = \"1002\"\nsha256 = \"{h}\"\n[[key]]\nid = \"b\"\nclient_id = \"bad id\"\nsha256 = \"{h}\"\n",
                h = tollgate_auth::api_key::hash_hex("k")
            ),
        )
        .file(
            "/t/keys/same-key.toml",
            format!(
                "[[key]]\nid = \"a\"\nclient_id = \"1002\"\nsha256 = \"{h}\"\n[[key]]\nid = \"b\"\nclient_id = \"6666\"\nsha256 = \"{h}\"\n",
                h = tollgate_auth::api_key::hash_hex("k")
            ),
        )
        .file(
            "/t/keys/mixed-keys.toml",
            format!(
                "extra = 1\n[[key]]\nid = \"a\"\nclient_id = \"1001\"\nsha256 = \"{h}\"\ncolour = \"red\"\n[[key]]\nid = \"b\"\nclient_id = \"1002\"\nsha256 = \"xyz\"\n[[key]]\nid = \"c\"\nclient_id = \"1003\"\nsha256 = \"{h}\"\n[[key]]\nid = \"c\"\nclient_id = \"1004\"\nsha256 = \"{h}\"\n",
                h = tollgate_auth::api_key::hash_hex("k")
            ),
        )
        .file("/t/keys/no-keys.toml", "# every legacy caller moved\n")
        .file("/t/keys/service.key", "svc-key\n")
        .file("/t/keys/client-keys.toml", "\"1001\" = \"k1\"\n")
        .file(
            "/t/keys/long-client-keys.toml",
            "\"1001\" = \"legacy-key-of-1001\"\n",
        )
        .file("/t/keys/ed.pem", ED_PRIVATE)
        .file("/t/keys/ed.pub.pem", ED_PUBLIC)
        .file("/t/keys/other.pub.pem", OTHER_ED_PUBLIC)
        .file("/t/tls/ca.pem", TLS_CA)
        .file("/t/tls/server.pem", TLS_SERVER)
        .file("/t/tls/server.key.pem", TLS_SERVER_KEY)
        .file("/t/tls/other.pem", TLS_OTHER)
        .file("/t/tls/other.key.pem", TLS_OTHER_KEY)
        .file("/t/tls/client.pem", TLS_CLIENT)
        .file("/t/tls/client.key.pem", TLS_CLIENT_KEY)
        .var(HS256, "0123456789abcdef0123456789abcdef")
        .var("HS256_TOO", "fedcba9876543210fedcba9876543210")
        .var("SHORT", "short")
        .var("PASSWORD", "p@ss")
        .var("LONG_PASSWORD", "basic-password-1")
        .var("PLIVO", "plivo-token")
        .var("REDIS", "redis://127.0.0.1:6379");
    // The directory exists even when it holds no policy file.
    sources = sources.file("/t/policies/README", "");
    for (name, text) in policies {
        sources = sources.file(format!("/t/policies/{name}"), *text);
    }
    sources
}

/// Loads `gateway` with `policies` (file name, text) from memory.
pub fn load(gateway: &str, policies: &[(&str, &str)]) -> Result<Snapshot, crate::LoadError> {
    crate::load_from(Path::new("/t/gateway.toml"), &sources(gateway, policies))
}

/// The errors a load reports, as `file:line:col: message` with the file's name only.
pub fn errors(gateway: &str, policies: &[(&str, &str)]) -> Vec<String> {
    diagnostics(gateway, policies, Severity::Error)
}

/// The warnings a load reports, like [`errors`].
pub fn warnings(gateway: &str, policies: &[(&str, &str)]) -> Vec<String> {
    diagnostics(gateway, policies, Severity::Warning)
}

fn diagnostics(gateway: &str, policies: &[(&str, &str)], severity: Severity) -> Vec<String> {
    let diags = match load(gateway, policies) {
        Ok(snapshot) => snapshot.warnings,
        Err(e) => e.0,
    };
    diags
        .iter()
        .filter(|d| d.severity == severity)
        .map(|d| {
            let file = d
                .file
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
            format!("{file}:{}:{}: {}", d.line, d.column, d.message)
        })
        .collect()
}
