//! `[tracing]`: exporting the gateway's request spans to an OpenTelemetry collector
//! (OTLP over HTTP, JSON encoding), how new traces are sampled, and whose sampled flag
//! a continued trace keeps. Without the section nothing is exported, a client's sampled
//! flag is followed and a request without one stays unsampled.

use http::uri::{Scheme, Uri};

use super::file::TracingFile;
use crate::diagnostic::SourceFile;
use crate::load::context::Loader;
use crate::snapshot::{FollowSampled, OtlpExport, Tracing};

pub(crate) fn tracing(l: &mut Loader, src: &SourceFile, f: Option<TracingFile>) -> Option<Tracing> {
    let Some(f) = f else {
        return Some(Tracing::default());
    };
    let mark = l.mark();
    let sample_new = match &f.sample_new {
        Some(ratio) if !(0.0..=1.0).contains(ratio.get_ref()) => {
            l.error(
                src,
                Some(ratio.span()),
                "[tracing] sample_new: a share from 0.0 to 1.0",
            );
            0.0
        }
        Some(ratio) => *ratio.get_ref(),
        None => 0.0,
    };
    let service_name = match &f.service_name {
        Some(name) if name.get_ref().trim().is_empty() => {
            l.error(
                src,
                Some(name.span()),
                "[tracing] service_name: must not be empty",
            );
            String::new()
        }
        Some(name) => name.get_ref().clone(),
        None => "tollgate".to_owned(),
    };
    let export = f.otlp_url.as_ref().and_then(|url| {
        let parsed = url.get_ref().parse::<Uri>().ok().filter(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some_and(|a| !a.as_str().contains('@'))
        });
        match parsed {
            Some(uri) => Some(OtlpExport {
                https: uri.scheme() == Some(&Scheme::HTTPS),
                url: uri,
                service_name: service_name.clone(),
                roots: Vec::new(),
            }),
            None => {
                l.error(
                    src,
                    Some(url.span()),
                    "[tracing] otlp_url: an http:// or https:// URL without user info, e.g. http://collector:4318/v1/traces",
                );
                None
            }
        }
    });
    let mut export = export;
    if let Some(file) = &f.ca_file {
        match export.as_mut() {
            Some(export) if export.https => {
                export.roots =
                    super::tls::chain(l, src, file, "[tracing] ca_file").unwrap_or_default();
            }
            _ => l.error(
                src,
                Some(file.span()),
                "[tracing] ca_file is for an https:// otlp_url",
            ),
        }
    }
    if f.otlp_url.is_none() && f.service_name.is_some() {
        l.warning(
            src,
            f.service_name.as_ref().map(|n| n.span()),
            "[tracing] service_name has no effect without otlp_url",
        );
    }
    let follow_sampled = match f.follow_sampled.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "anyone")) => FollowSampled::Anyone,
        Some((_, "trusted_proxies")) => FollowSampled::TrustedProxies,
        Some((_, "nobody")) => FollowSampled::Nobody,
        Some((value, _)) => {
            l.error(
                src,
                Some(value.span()),
                "[tracing] follow_sampled: \"anyone\", \"trusted_proxies\" or \"nobody\"",
            );
            FollowSampled::Anyone
        }
    };
    (!l.errors_since(mark)).then_some(Tracing {
        export,
        sample_new,
        follow_sampled,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};
    use crate::snapshot::FollowSampled;

    #[test]
    fn an_export_is_an_http_url_and_sampling_a_share() {
        let s = load(
            &format!("{GATEWAY}\n[tracing]\notlp_url = \"https://otel.example:4318/v1/traces\"\nsample_new = 0.25\n"),
            &[],
        )
        .unwrap();
        let export = s.tracing.export.unwrap();
        assert!(export.https);
        assert_eq!(export.url.path(), "/v1/traces");
        assert_eq!(export.service_name, "tollgate");
        assert_eq!(s.tracing.sample_new, 0.25);
        assert_eq!(s.tracing.follow_sampled, FollowSampled::Anyone);
        let s = load(
            &format!("{GATEWAY}\n[tracing]\nfollow_sampled = \"trusted_proxies\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.tracing.follow_sampled, FollowSampled::TrustedProxies);
        let e = errors(
            &format!("{GATEWAY}\n[tracing]\nfollow_sampled = \"everyone\"\n"),
            &[],
        );
        assert!(
            e == ["gateway.toml:11:18: [tracing] follow_sampled: \"anyone\", \"trusted_proxies\" or \"nobody\""],
            "{e:?}"
        );
        assert!(load(GATEWAY, &[]).unwrap().tracing.export.is_none());
        let e = errors(
            &format!("{GATEWAY}\n[tracing]\notlp_url = \"ftp://x/v1\"\nsample_new = 2.0\nservice_name = \" \"\n"),
            &[],
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("gateway.toml:11:12: [tracing] otlp_url:"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("gateway.toml:12:14: [tracing] sample_new"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("gateway.toml:13:16: [tracing] service_name"),
            "{e:?}"
        );
        let e = errors(&format!("{GATEWAY}\n[tracing]\nexport = true\n"), &[]);
        assert!(e[0].contains("unknown field `export`"), "{e:?}");
        // A private CA, for an https collector only.
        let s = load(
            &format!("{GATEWAY}\n[tracing]\notlp_url = \"https://otel:4318/v1/traces\"\nca_file = \"tls/ca.pem\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.tracing.export.unwrap().roots.len(), 1);
        let e = errors(
            &format!("{GATEWAY}\n[tracing]\notlp_url = \"http://otel:4318/v1/traces\"\nca_file = \"tls/ca.pem\"\n"),
            &[],
        );
        assert_eq!(
            e,
            ["gateway.toml:12:11: [tracing] ca_file is for an https:// otlp_url"]
        );
        let e = errors(
            &format!("{GATEWAY}\n[tracing]\notlp_url = \"https://otel:4318/v1/traces\"\nca_file = \"nowhere.pem\"\n"),
            &[],
        );
        assert!(
            e.len() == 1 && e[0].starts_with("gateway.toml:12:11: [tracing] ca_file"),
            "{e:?}"
        );
    }
}
