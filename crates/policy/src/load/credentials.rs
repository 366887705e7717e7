//! `[credentials.NAME]`: what a route adds upstream once its caller is authenticated —
//! a static header, HTTP Basic, or the caller's own legacy key from a per-client map.
//! Values are marked sensitive, so they never print.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use base64::Engine as _;
use http::header::HeaderValue;
use toml::de::DeValue;
use toml::Spanned;

use super::context::Loader;
use super::document::named_tables;
use super::file::CredentialFile;
use crate::diagnostic::SourceFile;
use crate::snapshot::Credential;

/// `[credentials.NAME]` tables, each read on its own so one bad entry hides no other:
/// every name declared, `None` for one that is invalid.
pub(crate) fn credentials(
    l: &mut Loader,
    src: &SourceFile,
    value: Spanned<DeValue>,
) -> HashMap<String, Option<Arc<Credential>>> {
    let mut out = HashMap::new();
    for (name, span, f) in named_tables::<CredentialFile>(l, src, value, "credentials") {
        let credential = f.and_then(|f| credential(l, src, &name, f, span));
        out.insert(name, credential.map(Arc::new));
    }
    out
}

fn sensitive(
    l: &mut Loader,
    src: &SourceFile,
    bytes: &[u8],
    span: Range<usize>,
    what: &str,
) -> Option<HeaderValue> {
    match HeaderValue::from_bytes(bytes) {
        Ok(mut v) => {
            v.set_sensitive(true);
            Some(v)
        }
        Err(_) => {
            l.error(
                src,
                Some(span),
                format!("{what}: the value cannot be sent in a header"),
            );
            None
        }
    }
}

fn credential(
    l: &mut Loader,
    src: &SourceFile,
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
            let name = l.header_name(src, &header)?;
            let value = l.secret(src, &value_env, &value_file, span.clone(), &what)?;
            let value = sensitive(l, src, &value, span, &what)?;
            Some(Credential::Header { name, value })
        }
        CredentialFile::Basic {
            username,
            password_env,
            password_file,
        } => {
            let password = l.secret(src, &password_env, &password_file, span.clone(), &what)?;
            if username.get_ref().contains(':') {
                l.error(
                    src,
                    Some(username.span()),
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
            let value = sensitive(l, src, encoded.as_bytes(), span, &what)?;
            Some(Credential::Header {
                name: http::header::AUTHORIZATION,
                value,
            })
        }
        CredentialFile::ClientMap { header, file } => {
            let name = l.header_name(src, &header)?;
            let (full, bytes) = l.read_named(src, &file, &what)?;
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
                    l.diags.push(d);
                    return None;
                }
            };
            let mut values = HashMap::new();
            for (client, key) in table {
                let v = sensitive(l, src, key.as_bytes(), file.span(), &what)?;
                values.insert(client, v);
            }
            Some(Credential::ClientMap { name, values })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};
    use crate::snapshot::Credential;

    #[test]
    fn each_kind() {
        let s = load(&format!("{GATEWAY}\n[credentials.svc]\nkind = \"header\"\nheader = \"x-api-key\"\nvalue_file = \"keys/service.key\"\n\n[credentials.basic]\nkind = \"basic\"\nusername = \"gw\"\npassword_env = \"PASSWORD\"\n\n[credentials.map]\nkind = \"client_map\"\nheader = \"x-api-key\"\nfile = \"keys/client-keys.toml\"\n"), &[("a.toml", "[[route]]\nname = \"a\"\npath = \"/a\"\nauth = \"none\"\n")]).unwrap();
        // Credentials are only kept where a route names them: check through `check`'s view.
        assert!(s.routes.iter().all(|r| r.upstream_credential.is_none()));
        let _ = Credential::Header {
            name: http::header::HeaderName::from_static("x"),
            value: http::header::HeaderValue::from_static("y"),
        };
    }

    #[test]
    fn a_broken_credential_is_one_error_not_one_per_route() {
        let routes = [("a.toml", "[[route]]\nname = \"a\"\npath = \"/a\"\nauth = \"none\"\nupstream_credential = \"svc\"\nallow_anonymous_credential = true\n")];
        let e = errors(&format!("{GATEWAY}\n[credentials.svc]\nkind = \"header\"\nheader = \"x-api-key\"\nvalue = \"inline\"\n"), &routes);
        assert_eq!(
            e,
            [
                "gateway.toml:10:14: [credentials.svc]: give exactly one of `*_env` or `*_file` (secrets are never written inline)",
                "gateway.toml:13:1: [credentials.svc]: unknown field `value`, expected one of `header`, `value_env`, `value_file`",
            ]
        );
        // The kind names the variant; a missing or unknown one is said where it is.
        let e = errors(
            &format!("{GATEWAY}\n[credentials.svc]\nheader = \"x-api-key\"\n"),
            &routes,
        );
        assert_eq!(
            e,
            ["gateway.toml:10:14: [credentials.svc]: missing field `kind`"]
        );
        let e = errors(
            &format!("{GATEWAY}\n[credentials.svc]\nkind = \"bearer\"\nheader = \"x\"\n"),
            &routes,
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with(
                "gateway.toml:11:8: [credentials.svc]: unknown variant `bearer`, expected one of"
            ),
            "{e:?}"
        );
        let e = errors(&format!("{GATEWAY}\n[credentials.svc]\nkind = \"basic\"\nusername = \"a:b\"\npassword_env = \"PASSWORD\"\n"), &routes);
        assert_eq!(
            e,
            ["gateway.toml:12:12: [credentials.svc]: a Basic username cannot contain ':'"]
        );
    }
}
