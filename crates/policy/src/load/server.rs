//! `[server]`: listeners, request-head limits, client bodies, header hygiene, trusted
//! proxies.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderName;
use toml::Spanned;

use super::context::{Loader, Zero};
use super::file::{ServerFile, UnderscoresFile};
use crate::cidr::Cidr;
use crate::diagnostic::SourceFile;
use crate::snapshot::{BodyLimits, Server, Underscores};

/// Request headers that make common backends and frameworks re-route a request, change
/// its method, or believe another client address or another user (the headers auth
/// proxies set: a backend behind one trusts them); removed unless the operator lists
/// otherwise. (`X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` are handled by the
/// forwarding headers: believed from trusted proxies only.)
pub const DEFAULT_STRIPPED_REQUEST_HEADERS: &[&str] = &[
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-host",
    "x-original-host",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
    "front-end-https",
    // Client addresses read by `get_client_ip()`-style code.
    "x-forwarded",
    "forwarded-for",
    "x-proxyuser-ip",
    "x-original-forwarded-for",
    // Re-routing (Envoy, Traefik, Next.js middleware: CVE-2025-29927).
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-envoy-original-path",
    "x-matched-path",
    "x-middleware-subrequest",
    "x-forwarded-method",
    "x-original-forwarded-host",
    "x-http-host-override",
    // httpoxy: CGI-style backends (PHP-CGI, Go's net/http/cgi, wsgiref) turn `Proxy`
    // into `HTTP_PROXY`, and send their own outgoing calls, credentials and all,
    // through the caller's proxy.
    "proxy",
    // Identities set by auth proxies and API gateways (oauth2-proxy, Apache, Envoy,
    // nginx mTLS, AWS ALB, Google IAP, Azure App Service, Cloudflare Access, Kong,
    // WSO2, Kubernetes impersonation).
    "x-auth-request-preferred-username",
    "x-auth-request-groups",
    "x-auth-request-access-token",
    "x-forwarded-access-token",
    "x-amzn-oidc-identity",
    "x-amzn-oidc-data",
    "x-amzn-oidc-accesstoken",
    "x-goog-authenticated-user-email",
    "x-goog-authenticated-user-id",
    "x-endpoint-api-userinfo",
    "x-apigateway-api-userinfo",
    "x-ms-client-principal",
    "x-ms-client-principal-name",
    "x-ms-client-principal-id",
    "x-ms-client-principal-idp",
    "cf-access-authenticated-user-email",
    "cf-access-jwt-assertion",
    "x-consumer-id",
    "x-consumer-custom-id",
    "x-consumer-username",
    "x-authenticated-userid",
    "x-authenticated-scope",
    "x-credential-identifier",
    "x-userinfo",
    "x-jwt-assertion",
    "x-jwt-payload",
    "impersonate-user",
    "impersonate-group",
    "impersonate-uid",
    "x-user-id",
    "remote-user",
    "x-remote-user",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-webauth-user",
    "x-forwarded-client-cert",
    "x-ssl-client-cert",
    "x-client-cert",
    // Client certificates and their verdicts as other front ends forward them (ASP.NET
    // Core's certificate forwarding, Traefik, nginx and Apache conventions).
    "x-arr-clientcert",
    "ssl-client-cert",
    "x-forwarded-tlsclientcert",
    "x-forwarded-tlsclientcert-info",
    "ssl-client-verify",
    "x-ssl-client-verify",
    "x-client-verify",
    "x-ssl-client-dn",
    "x-ssl-client-s-dn",
    "x-client-dn",
    // Generic ones that hand-written auth middleware trusts.
    "x-auth-user",
    "x-auth-userid",
    "x-auth-email",
    "x-authenticated-user",
    "x-authenticated-email",
    "x-authenticated-groups",
    "x-user",
    "x-username",
    "x-user-email",
    "x-account-id",
    "x-tenant-id",
    // Client-id spellings beside the configured header.
    "client-id",
    "x-clientid",
];

pub(crate) fn server(l: &mut Loader, src: &SourceFile, f: ServerFile) -> Option<Server> {
    let mark = l.mark();
    if f.listen.get_ref().is_empty() {
        l.error(
            src,
            Some(f.listen.span()),
            "[server] listen: give at least one address",
        );
    }
    let listen: Vec<SocketAddr> = f
        .listen
        .get_ref()
        .iter()
        .filter_map(|a| l.address(src, a))
        .collect();
    let trusted_proxies = cidrs(l, src, &f.trusted_proxies, "trusted_proxies");
    let proxy_protocol_from = cidrs(l, src, &f.proxy_protocol_from, "proxy_protocol_from");
    let tls = f.tls.and_then(|tls| super::tls::server_tls(l, src, tls));
    let strip_request_headers = match &f.strip_request_headers {
        None => DEFAULT_STRIPPED_REQUEST_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect(),
        Some(list) => list.iter().filter_map(|h| l.header_name(src, h)).collect(),
    };
    let server = Server {
        listen,
        header_read_timeout: l.duration(
            src,
            &f.header_read_timeout,
            Duration::from_secs(10),
            Zero::Refused,
        ),
        max_header_bytes: l.size(src, &f.max_header_bytes, 32 * 1024, 1024..=1024 * 1024),
        max_uri_bytes: l.size(src, &f.max_uri_bytes, 8 * 1024, 256..=64 * 1024),
        shutdown_grace: l.duration(
            src,
            &f.shutdown_grace,
            Duration::from_secs(30),
            Zero::Refused,
        ),
        drain_delay: l.duration(src, &f.drain_delay, Duration::ZERO, Zero::Allowed),
        workers: l.size(
            src,
            &f.workers,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            1..=1024,
        ),
        trusted_proxies,
        headers_with_underscores: match f.headers_with_underscores {
            None | Some(UnderscoresFile::Drop) => Underscores::Drop,
            Some(UnderscoresFile::Refuse) => Underscores::Refuse,
        },
        strip_request_headers,
        bodies: BodyLimits {
            timeout: l.duration(
                src,
                &f.request_body_timeout,
                Duration::from_secs(10),
                Zero::Refused,
            ),
            min_rate: l.size(
                src,
                &f.request_body_min_rate,
                8 * 1024,
                1..=1024 * 1024 * 1024,
            ) as u64,
            max_buffered: l.size(
                src,
                &f.max_buffered_body_bytes,
                64 * 1024 * 1024,
                64 * 1024..=64 * 1024 * 1024 * 1024,
            ),
        },
        max_connections: l.size(src, &f.max_connections, 10_000, 1..=10_000_000),
        h2c: f.h2c.unwrap_or(false),
        proxy_protocol_from,
        tls,
    };
    (!l.errors_since(mark)).then_some(server)
}

/// The CIDRs of a `[server]` list; an error at each one that does not parse.
fn cidrs(l: &mut Loader, src: &SourceFile, list: &[Spanned<String>], field: &str) -> Vec<Cidr> {
    list.iter()
        .filter_map(|c| match c.get_ref().parse::<Cidr>() {
            Ok(cidr) => Some(cidr),
            Err(e) => {
                l.error(src, Some(c.span()), format!("[server] {field}: {e}"));
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};

    #[test]
    fn every_mistake_in_the_table_is_reported_in_one_run() {
        let gateway = GATEWAY.replace(
            "listen = [\"127.0.0.1:0\"]\n",
            "listen = [\"127.0.0.1:0\"]\nheader_read_timeout = \"10 s\"\nmax_header_bytes = \"big\"\nshutdown_grace = \"0s\"\nworkrs = 2\n",
        );
        let e = errors(&gateway, &[]);
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("gateway.toml:3:23: `10 s`"), "{e:?}");
        // In an operator's words, not serde's (`expected usize`).
        assert!(
            e[1].starts_with(
                "gateway.toml:4:20: [server]: invalid type: string \"big\", expected a whole number, such as 32768 (sizes are in bytes)"
            ),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("gateway.toml:5:18: a duration must be greater than zero"),
            "{e:?}"
        );
        assert!(
            e[3].starts_with("gateway.toml:6:1: [server]: unknown field `workrs`"),
            "{e:?}"
        );
        // A required key of the wrong type is the one error: without it the rest means
        // little.
        let e = errors(
            &GATEWAY.replace("listen = [\"127.0.0.1:0\"]", "listen = 8080"),
            &[],
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0],
            "gateway.toml:2:10: [server]: invalid type: integer `8080`, expected an array, such as [\"a\", \"b\"]",
            "{e:?}"
        );
        // A duration written as a number; a flag written as a word.
        let e = errors(
            &GATEWAY.replace(
                "listen = [\"127.0.0.1:0\"]",
                "listen = [\"127.0.0.1:0\"]\nshutdown_grace = 2\nh2c = \"yes\"",
            ),
            &[],
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].ends_with("expected a string in quotes (a duration is written \"2s\", \"500ms\")"),
            "{e:?}"
        );
        assert!(e[1].ends_with("expected true or false"), "{e:?}");
    }

    #[test]
    fn defaults_and_every_field() {
        let s = load(&GATEWAY.replace(
            "listen = [\"127.0.0.1:0\"]",
            "listen = [\"127.0.0.1:0\", \"[::1]:0\"]\nheader_read_timeout = \"2s\"\nmax_header_bytes = 2048\nmax_uri_bytes = 512\nshutdown_grace = \"1s\"\nworkers = 3\ntrusted_proxies = [\"10.0.0.0/8\"]\nheaders_with_underscores = \"refuse\"\nstrip_request_headers = [\"x-a\"]\nrequest_body_timeout = \"1s\"\nrequest_body_min_rate = 100\nmax_buffered_body_bytes = 65536\nmax_connections = 5",
        ), &[])
        .unwrap();
        let s = &s.server;
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.header_read_timeout.as_secs(), 2);
        assert_eq!(
            (s.max_header_bytes, s.max_uri_bytes, s.workers),
            (2048, 512, 3)
        );
        assert_eq!(s.shutdown_grace.as_secs(), 1);
        assert_eq!(s.trusted_proxies.len(), 1);
        assert_eq!(
            s.headers_with_underscores,
            crate::snapshot::Underscores::Refuse
        );
        assert_eq!(s.strip_request_headers, ["x-a"]);
        assert_eq!((s.bodies.min_rate, s.bodies.max_buffered), (100, 65536));
        assert_eq!(s.max_connections, 5);
        let d = load(GATEWAY, &[]).unwrap();
        assert_eq!(
            d.server.strip_request_headers.len(),
            super::DEFAULT_STRIPPED_REQUEST_HEADERS.len()
        );
        assert_eq!(d.server.bodies.max_buffered, 64 << 20);
    }

    #[test]
    fn each_mistake_is_one_error_at_its_place() {
        let e = errors(&GATEWAY.replace(
            "listen = [\"127.0.0.1:0\"]",
            "listen = [\"nowhere\"]\nheader_read_timeout = \"0s\"\nmax_uri_bytes = 1\ntrusted_proxies = [\"10.0.0.0/33\"]\nstrip_request_headers = [\"bad header\"]",
        ), &[]);
        assert_eq!(
            e,
            [
                "gateway.toml:2:11: `nowhere` is not a socket address such as `127.0.0.1:8080`",
                "gateway.toml:3:23: a duration must be greater than zero",
                "gateway.toml:4:17: must be between 256 and 65536",
                "gateway.toml:5:20: [server] trusted_proxies: `10.0.0.0/33` has an invalid prefix length (0..=32)",
                "gateway.toml:6:26: `bad header` is not a valid header name",
            ]
        );
    }
}
