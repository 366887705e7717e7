//! TLS termination on `[server.tls]` listeners: TLS 1.2 and 1.3 (rustls, ring), ALPN
//! offering `h2` then `http/1.1`, and the certificate chosen per handshake by the name
//! the client asks for (SNI). (The client side, for https upstreams and key sets, is
//! built by the loader: `tollgate_policy::client_config`.)
//!
//! The certificates are read from the published snapshot at every handshake, so a
//! reload — which a changed certificate or key file triggers — rotates them without a
//! restart, and a file that does not load keeps the old certificate serving (the reload
//! is refused, logged and counted like any other).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tollgate_policy::snapshot::ServedCertificate;

use crate::runtime::Runtime;

/// ALPN identifiers, in the server's order of preference.
pub const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The acceptor every TLS listener of the process shares.
pub fn acceptor(runtime: Arc<Runtime>) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(LiveCertificates { runtime }));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    // TLS 1.3 resumption by ticket spares a returning client the full handshake.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificates of the snapshot published now.
struct LiveCertificates {
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for LiveCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCertificates")
    }
}

impl ResolvesServerCert for LiveCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let active = self.runtime.active();
        let tls = active.snapshot.server.tls.as_ref()?;
        choose(&tls.certificates, hello.server_name())
    }
}

/// The first certificate valid for `name` (exact or wildcard, as a client would check
/// it); the first certificate when there is no name or none is for it.
pub fn choose(certificates: &[ServedCertificate], name: Option<&str>) -> Option<Arc<CertifiedKey>> {
    let wanted = name.and_then(|n| ServerName::try_from(n).ok());
    if let Some(wanted) = wanted {
        let valid_for = |c: &&ServedCertificate| {
            c.key.end_entity_cert().is_ok_and(|der| {
                webpki::EndEntityCert::try_from(der)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&wanted).is_ok())
            })
        };
        if let Some(c) = certificates.iter().find(valid_for) {
            return Some(Arc::clone(&c.key));
        }
    }
    certificates.first().map(|c| Arc::clone(&c.key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn served(name: &str) -> ServedCertificate {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tls");
        let chain = CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key.pem"))).unwrap();
        let key =
            CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider()).unwrap();
        ServedCertificate {
            cert_file: name.into(),
            key: Arc::new(key),
        }
    }

    #[test]
    fn the_certificate_for_the_name_else_the_first() {
        let (localhost, api) = (served("server"), served("other"));
        let both = [localhost.clone(), api.clone()];
        let pick = |name| choose(&both, name).unwrap();
        assert!(Arc::ptr_eq(&pick(Some("api.test")), &api.key));
        // `*.api.test` covers one label, as a browser checks it...
        assert!(Arc::ptr_eq(&pick(Some("eu.api.test")), &api.key));
        // ...and neither two labels nor a look-alike.
        assert!(Arc::ptr_eq(&pick(Some("a.eu.api.test")), &localhost.key));
        assert!(Arc::ptr_eq(&pick(Some("evilapi.test")), &localhost.key));
        assert!(Arc::ptr_eq(&pick(Some("localhost")), &localhost.key));
        assert!(Arc::ptr_eq(&pick(None), &localhost.key));
        assert!(Arc::ptr_eq(&pick(Some("unknown.example")), &localhost.key));
        assert!(choose(&[], Some("api.test")).is_none());
    }
}
