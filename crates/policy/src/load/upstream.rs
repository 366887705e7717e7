//! `[upstream]`: the legacy API and how it is reached.

use std::time::Duration;

use http::uri::{Authority, Uri};

use super::context::{Loader, Zero};
use super::file::UpstreamFile;
use crate::diagnostic::SourceFile;
use crate::snapshot::Upstream;

pub(crate) fn upstream(l: &mut Loader, src: &SourceFile, f: UpstreamFile) -> Option<Upstream> {
    let mark = l.mark();
    let url_error = "[upstream] url:";
    let (authority, base_path, https) = match f.url.get_ref().parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme @ ("http" | "https")), Some(authority))
                if uri.query().is_none() && authority.as_str().rsplit('@').nth(1).is_none() =>
            {
                let base = uri.path().trim_end_matches('/').to_owned();
                (Some(authority.clone()), base, scheme == "https")
            }
            _ => {
                l.error(
                    src,
                    Some(f.url.span()),
                    format!("{url_error} expected `http[s]://host[:port][/base/path]` without a query or user"),
                );
                (None, String::new(), false)
            }
        },
        Err(e) => {
            l.error(src, Some(f.url.span()), format!("{url_error} {e}"));
            (None, String::new(), false)
        }
    };
    let tls = super::tls::upstream_tls(
        l,
        src,
        https,
        &f.ca_file,
        &f.client_cert_file,
        &f.client_key_file,
    );
    let upstream = Upstream {
        authority: authority.unwrap_or_else(|| Authority::from_static("invalid")),
        base_path,
        connect_timeout: l.duration(
            src,
            &f.connect_timeout,
            Duration::from_secs(2),
            Zero::Refused,
        ),
        response_timeout: l.duration(
            src,
            &f.response_timeout,
            Duration::from_secs(30),
            Zero::Refused,
        ),
        pool_idle_timeout: l.duration(
            src,
            &f.pool_idle_timeout,
            Duration::from_secs(90),
            Zero::Refused,
        ),
        pool_max_idle: l.size(src, &f.pool_max_idle, 256, 0..=65_536),
        tls,
    };
    (!l.errors_since(mark)).then_some(upstream)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};

    #[test]
    fn a_base_path_and_timeouts() {
        let s = load(&GATEWAY.replace(
            "url = \"http://127.0.0.1:9\"",
            "url = \"http://backend:8081/api/\"\nconnect_timeout = \"250ms\"\npool_max_idle = 0",
        ), &[])
        .unwrap();
        assert_eq!(s.upstream.authority, "backend:8081");
        assert_eq!(s.upstream.base_path, "/api");
        assert_eq!(s.upstream.connect_timeout.as_millis(), 250);
        assert_eq!(s.upstream.response_timeout.as_secs(), 30);
        assert_eq!(s.upstream.pool_max_idle, 0);
    }

    #[test]
    fn urls_it_cannot_use() {
        for (url, message) in [
            (
                "http://backend/?q=1",
                "expected `http[s]://host[:port][/base/path]` without a query",
            ),
            ("backend:80", "expected `http[s]://host[:port][/base/path]`"),
            ("ftp://backend", "expected `http[s]://"),
            ("https://user:pw@backend", "without a query or user"),
        ] {
            let e = errors(&GATEWAY.replace("http://127.0.0.1:9", url), &[]);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(
                e[0].starts_with("gateway.toml:5:7: [upstream] url:") && e[0].contains(message),
                "{e:?}"
            );
        }
    }
}
