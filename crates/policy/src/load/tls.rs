//! Certificates and keys in PEM files: `[server.tls]` (what the gateway serves) and the
//! TLS settings of an https `[upstream]` (whom it trusts, what it presents). Each file
//! is read here, so `check` reports a missing, empty or mismatched one at the line that
//! names it, and a changed file is a reload like any other configuration file. Both
//! sides come out ready to use: a `CertifiedKey` per served certificate, a rustls
//! `ClientConfig` for the upstream.

use std::sync::Arc;

use http::header::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use toml::Spanned;

use super::context::Loader;
use super::file::{CertificateFile, TlsFile};
use crate::diagnostic::SourceFile;
use crate::snapshot::{RedisTls, ServedCertificate, Tls, UpstreamTls};

/// HSTS for a year, the value browsers' preload lists ask for.
const DEFAULT_HSTS: &str = "max-age=31536000";

pub(crate) fn server_tls(l: &mut Loader, src: &SourceFile, f: TlsFile) -> Option<Tls> {
    let mark = l.mark();
    if f.listen.get_ref().is_empty() {
        l.error(
            src,
            Some(f.listen.span()),
            "[server.tls] listen: give at least one address",
        );
    }
    let listen = f
        .listen
        .get_ref()
        .iter()
        .filter_map(|a| l.address(src, a))
        .collect();
    if f.certificates.get_ref().is_empty() {
        l.error(
            src,
            Some(f.certificates.span()),
            "[server.tls] certificates: give at least one { cert_file, key_file }",
        );
    }
    let certificates = f
        .certificates
        .get_ref()
        .iter()
        .filter_map(|c| served(l, src, c))
        .collect();
    let strict_transport_security = match &f.strict_transport_security {
        None => Some(HeaderValue::from_static(DEFAULT_HSTS)),
        Some(v) if v.get_ref().is_empty() => None,
        Some(v) if v.get_ref().starts_with("max-age=") => HeaderValue::from_str(v.get_ref())
            .map_err(|_| {
                l.error(
                    src,
                    Some(v.span()),
                    "[server.tls] strict_transport_security: not a valid header value",
                )
            })
            .ok(),
        Some(v) => {
            l.error(
                src,
                Some(v.span()),
                "[server.tls] strict_transport_security: expected `max-age=SECONDS[; includeSubDomains]`, or \"\" for none",
            );
            None
        }
    };
    (!l.errors_since(mark)).then_some(Tls {
        listen,
        certificates,
        strict_transport_security,
    })
}

fn served(l: &mut Loader, src: &SourceFile, f: &CertificateFile) -> Option<ServedCertificate> {
    let what = "[server.tls] certificates";
    let chain = chain(l, src, &f.cert_file, &format!("{what} cert_file"));
    let key = private_key(l, src, &f.key_file, &format!("{what} key_file"));
    let key = certified(l, src, what, &f.cert_file, &f.key_file, chain?, key?)?;
    Some(ServedCertificate {
        cert_file: l.resolve(f.cert_file.get_ref()),
        key: Arc::new(key),
    })
}

/// The chain and key, checked to belong together; an error at the key file if not.
fn certified(
    l: &mut Loader,
    src: &SourceFile,
    what: &str,
    cert_file: &Spanned<String>,
    key_file: &Spanned<String>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Option<CertifiedKey> {
    match CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()) {
        Ok(key) => Some(key),
        Err(e) => {
            l.error(
                src,
                Some(key_file.span()),
                format!(
                    "{what}: `{}` is not the key of `{}` ({e})",
                    key_file.get_ref(),
                    cert_file.get_ref()
                ),
            );
            None
        }
    }
}

/// A client certificate: its chain and key, parsed, checked to belong together, and the
/// bytes of both files.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

/// The client certificate named by `cert_file` and `key_file` (`what` names them in
/// errors): `Some(None)` when neither is named, `None` after an error (both or neither;
/// files that parse; a key that is the certificate's).
fn identity(
    l: &mut Loader,
    src: &SourceFile,
    (cert_file, cert_what): (&Option<Spanned<String>>, &str),
    (key_file, key_what): (&Option<Spanned<String>>, &str),
    pair_error: &str,
) -> Option<Option<Identity>> {
    match (cert_file, key_file) {
        (None, None) => Some(None),
        (Some(cert), Some(key)) => {
            let chain = chain_pem(l, src, cert, cert_what);
            let private = private_key_pem(l, src, key, key_what);
            let ((chain, cert_pem), (private, key_pem)) = (chain?, private?);
            certified(
                l,
                src,
                key_what,
                cert,
                key,
                chain.clone(),
                private.clone_key(),
            )?;
            Some(Some(Identity {
                chain,
                key: private,
                cert_pem,
                key_pem,
            }))
        }
        (Some(one), None) | (None, Some(one)) => {
            l.error(src, Some(one.span()), pair_error);
            None
        }
    }
}

/// Errors for TLS files named where the URL does not use TLS.
fn refuse_files(
    l: &mut Loader,
    src: &SourceFile,
    files: [&Option<Spanned<String>>; 3],
    message: &str,
) {
    for file in files.into_iter().flatten() {
        l.error(src, Some(file.span()), message);
    }
}

/// The TLS settings of an https upstream; errors for TLS files named on an http one.
pub(crate) fn upstream_tls(
    l: &mut Loader,
    src: &SourceFile,
    https: bool,
    ca_file: &Option<Spanned<String>>,
    cert_file: &Option<Spanned<String>>,
    key_file: &Option<Spanned<String>>,
) -> Option<UpstreamTls> {
    if !https {
        let files = [ca_file, cert_file, key_file];
        refuse_files(
            l,
            src,
            files,
            "[upstream]: TLS files are for an https:// url",
        );
        return None;
    }
    let roots = match ca_file {
        None => Vec::new(),
        Some(file) => chain(l, src, file, "[upstream] ca_file").unwrap_or_default(),
    };
    let identity = identity(
        l,
        src,
        (cert_file, "[upstream] client_cert_file"),
        (key_file, "[upstream] client_key_file"),
        "[upstream]: mutual TLS needs both client_cert_file and client_key_file",
    )?;
    let mut source: Vec<u8> = roots.iter().flat_map(|der| der.to_vec()).collect();
    if let Some(identity) = &identity {
        source.extend(identity.chain.iter().flat_map(|der| der.to_vec()));
        source.extend_from_slice(identity.key.secret_der());
    }
    let files = identity.as_ref().map(|_| key_file).unwrap_or(ca_file);
    let identity = identity.map(|i| (i.chain, i.key));
    match client_config(roots, identity) {
        Ok(config) => Some(UpstreamTls {
            config: Arc::new(config),
            source,
        }),
        Err(e) => {
            l.error(
                src,
                files.as_ref().map(|f| f.span()),
                format!("[upstream]: the TLS files do not load: {e}"),
            );
            None
        }
    }
}

/// A client configuration that trusts `roots` (the public web roots when there are
/// none) and, for mutual TLS, presents `identity` (a chain and its key, checked to
/// belong together).
pub fn client_config(
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut store = rustls::RootCertStore::empty();
    if roots.is_empty() {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for root in roots {
        store.add(root)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store);
    match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// TLS to Redis (`rediss://`): the CA bundle and client certificate as PEM, each file
/// checked here; errors for TLS files named beside a `redis://` URL.
pub(crate) fn redis_tls(
    l: &mut Loader,
    src: &SourceFile,
    rediss: bool,
    ca_file: &Option<Spanned<String>>,
    cert_file: &Option<Spanned<String>>,
    key_file: &Option<Spanned<String>>,
) -> Option<RedisTls> {
    if !rediss {
        let files = [ca_file, cert_file, key_file];
        refuse_files(l, src, files, "[store]: TLS files are for a rediss:// URL");
        return None;
    }
    let ca_pem = ca_file
        .as_ref()
        .and_then(|file| chain_pem(l, src, file, "[store] redis_ca_file"))
        .map(|(_, pem)| pem);
    let client_pem = identity(
        l,
        src,
        (cert_file, "[store] redis_client_cert_file"),
        (key_file, "[store] redis_client_key_file"),
        "[store]: a Redis client certificate needs both redis_client_cert_file and redis_client_key_file",
    )?
    .map(|i| (i.cert_pem, i.key_pem));
    Some(RedisTls { ca_pem, client_pem })
}

/// Every certificate of a PEM file, in order; an error if it holds none.
pub(crate) fn chain(
    l: &mut Loader,
    src: &SourceFile,
    file: &Spanned<String>,
    what: &str,
) -> Option<Vec<CertificateDer<'static>>> {
    chain_pem(l, src, file, what).map(|(chain, _)| chain)
}

/// [`chain`], and the file's bytes.
fn chain_pem(
    l: &mut Loader,
    src: &SourceFile,
    file: &Spanned<String>,
    what: &str,
) -> Option<(Vec<CertificateDer<'static>>, Vec<u8>)> {
    let (_, pem) = l.read_named(src, file, what)?;
    match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
        Ok(chain) if !chain.is_empty() => Some((chain, pem)),
        Ok(_) => {
            l.error(
                src,
                Some(file.span()),
                format!("{what}: no PEM certificate in it"),
            );
            None
        }
        Err(e) => {
            l.error(src, Some(file.span()), format!("{what}: {e}"));
            None
        }
    }
}

fn private_key(
    l: &mut Loader,
    src: &SourceFile,
    file: &Spanned<String>,
    what: &str,
) -> Option<PrivateKeyDer<'static>> {
    private_key_pem(l, src, file, what).map(|(key, _)| key)
}

/// [`private_key`], and the file's bytes.
fn private_key_pem(
    l: &mut Loader,
    src: &SourceFile,
    file: &Spanned<String>,
    what: &str,
) -> Option<(PrivateKeyDer<'static>, Vec<u8>)> {
    let (_, pem) = l.read_named(src, file, what)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Some((key, pem)),
        // The parser's own message could quote the file; say only what is wrong.
        Err(_) => {
            l.error(
                src,
                Some(file.span()),
                format!("{what}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};

    const TLS: &str = "\n[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncertificates = [\n  { cert_file = \"tls/server.pem\", key_file = \"tls/server.key.pem\" },\n  { cert_file = \"tls/other.pem\", key_file = \"tls/other.key.pem\" },\n]\n";

    fn with_tls(tls: &str) -> String {
        GATEWAY.replace("\n\n[upstream]", &format!("{tls}\n[upstream]"))
    }

    #[test]
    fn certificates_by_sni_and_hsts() {
        let s = load(&with_tls(TLS), &[]).unwrap();
        let tls = s.server.tls.unwrap();
        assert_eq!(tls.listen.len(), 1);
        assert_eq!(tls.certificates.len(), 2);
        assert!(tls.certificates[1].cert_file.ends_with("tls/other.pem"));
        assert_eq!(tls.strict_transport_security.unwrap(), "max-age=31536000");
        assert!(s
            .referenced_files
            .iter()
            .any(|f| f.ends_with("tls/other.key.pem")));

        let s = load(
            &with_tls(&format!(
                "{TLS}strict_transport_security = \"max-age=60; includeSubDomains\"\n"
            )),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.server.tls.unwrap().strict_transport_security.unwrap(),
            "max-age=60; includeSubDomains"
        );
        let s = load(
            &with_tls(&format!("{TLS}strict_transport_security = \"\"\n")),
            &[],
        )
        .unwrap();
        assert!(s.server.tls.unwrap().strict_transport_security.is_none());
        assert!(load(GATEWAY, &[]).unwrap().server.tls.is_none());
    }

    #[test]
    fn each_bad_file_is_reported_where_it_is_named() {
        let e = errors(&with_tls("\n[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncertificates = [\n  { cert_file = \"tls/missing.pem\", key_file = \"tls/server.key.pem\" },\n  { cert_file = \"tls/server.key.pem\", key_file = \"tls/server.pem\" },\n  { cert_file = \"tls/server.pem\", key_file = \"tls/other.key.pem\" },\n]\nstrict_transport_security = \"1 year\"\n"), &[]);
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(
            e[0].starts_with("gateway.toml:6:17: [server.tls] certificates cert_file: cannot read"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with(
                "gateway.toml:7:17: [server.tls] certificates cert_file: no PEM certificate in it"
            ),
            "{e:?}"
        );
        assert!(
            e[2].starts_with(
                "gateway.toml:7:50: [server.tls] certificates key_file: no PEM private key"
            ),
            "{e:?}"
        );
        assert!(e[3].starts_with("gateway.toml:8:46: [server.tls] certificates: `tls/other.key.pem` is not the key of `tls/server.pem`"), "{e:?}");
        assert!(
            e[4].starts_with(
                "gateway.toml:10:29: [server.tls] strict_transport_security: expected"
            ),
            "{e:?}"
        );

        let e = errors(
            &with_tls("\n[server.tls]\nlisten = []\ncertificates = []\n"),
            &[],
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("[server.tls] listen: give at least one address"),
            "{e:?}"
        );
        assert!(
            e[1].contains("[server.tls] certificates: give at least one"),
            "{e:?}"
        );
    }

    #[test]
    fn an_https_upstream_with_its_own_ca_and_client_certificate() {
        let https = |extra: &str| {
            GATEWAY.replace(
                "url = \"http://127.0.0.1:9\"",
                &format!("url = \"https://localhost:9/api\"\n{extra}"),
            )
        };
        let s = load(&https(""), &[]).unwrap();
        let public = s.upstream.tls.unwrap();
        let s = load(&https("ca_file = \"tls/ca.pem\"\nclient_cert_file = \"tls/client.pem\"\nclient_key_file = \"tls/client.key.pem\""), &[]).unwrap();
        let private = s.upstream.tls.unwrap();
        assert!(private.config.client_auth_cert_resolver.has_certs());
        assert!(!public.config.client_auth_cert_resolver.has_certs());
        assert!(public != private, "another CA or identity is another pool");
        assert!(load(GATEWAY, &[]).unwrap().upstream.tls.is_none());

        for (extra, message) in [
            ("client_cert_file = \"tls/client.pem\"", "gateway.toml:6:20: [upstream]: mutual TLS needs both"),
            ("client_cert_file = \"tls/client.pem\"\nclient_key_file = \"tls/server.key.pem\"", "gateway.toml:7:19: [upstream] client_key_file: `tls/server.key.pem` is not the key of `tls/client.pem`"),
            ("ca_file = \"tls/server.key.pem\"", "gateway.toml:6:11: [upstream] ca_file: no PEM certificate in it"),
        ] {
            let e = errors(&https(extra), &[]);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].starts_with(message), "{e:?}");
        }
        let e = errors(
            &GATEWAY.replace(
                "url = \"http://127.0.0.1:9\"",
                "url = \"http://127.0.0.1:9\"\nca_file = \"tls/ca.pem\"",
            ),
            &[],
        );
        assert_eq!(
            e,
            ["gateway.toml:6:11: [upstream]: TLS files are for an https:// url"]
        );
    }
}
