//! `[webhooks.NAME]`: how provider callbacks prove where they come from — Plivo V3
//! signatures (with the replay window for their nonces), a secret in the callback URL
//! (Exotel), or a source-address allowlist.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Uri;
use toml::de::DeValue;
use toml::Spanned;

use super::context::{Loader, Zero};
use super::document::named_tables;
use super::file::WebhookFile;
use crate::cidr::Cidr;
use crate::diagnostic::SourceFile;
use crate::snapshot::Webhook;

/// `[webhooks.NAME]` tables: every name declared, `None` for one that is invalid (its
/// errors are reported where it is written, not again at each route naming it).
pub(crate) fn webhooks(
    l: &mut Loader,
    src: &SourceFile,
    value: Spanned<DeValue>,
) -> HashMap<String, Option<Arc<Webhook>>> {
    let mut out = HashMap::new();
    for (name, span, f) in named_tables::<WebhookFile>(l, src, value, "webhooks") {
        let hook = f.and_then(|f| webhook(l, src, &name, span, f));
        out.insert(name, hook.map(Arc::new));
    }
    out
}

fn webhook(
    l: &mut Loader,
    src: &SourceFile,
    name: &str,
    span: Range<usize>,
    f: WebhookFile,
) -> Option<Webhook> {
    let what = format!("[webhooks.{name}]");
    let hook = match f {
        WebhookFile::PlivoV3 {
            public_base_url,
            auth_tokens_env,
            auth_tokens_file,
            max_body_bytes,
            replay_window,
        } => {
            let base = public_base_url.get_ref().trim_end_matches('/').to_owned();
            let valid = base.parse::<Uri>().is_ok_and(|u| {
                u.scheme().is_some() && u.authority().is_some() && u.query().is_none()
            });
            if !valid {
                l.error(
                    src,
                    Some(public_base_url.span()),
                    format!(
                        "{what} public_base_url: expected https://host[:port] as Plivo calls it"
                    ),
                );
                return None;
            }
            let mut tokens = Vec::new();
            for env in &auth_tokens_env {
                if let Some(t) = l.secret(src, &Some(env.clone()), &None, env.span(), &what) {
                    tokens.push(t);
                }
            }
            if let Some(file) = &auth_tokens_file {
                if let Some(text) = l.secret(src, &None, &Some(file.clone()), file.span(), &what) {
                    tokens.extend(
                        text.split(|b| *b == b'\n')
                            .map(|l| l.trim_ascii().to_vec())
                            .filter(|l| !l.is_empty()),
                    );
                }
            }
            if auth_tokens_env.is_empty() && auth_tokens_file.is_none() {
                l.error(src, Some(span.clone()), format!("{what}: name the auth tokens with auth_tokens_env or auth_tokens_file (one per line)"));
                return None;
            }
            let max_body_bytes =
                match max_body_bytes.map(|n| (n.span(), usize::try_from(n.into_inner()))) {
                    None => 64 * 1024,
                    Some((_, Ok(n))) if (1..=16 * 1024 * 1024).contains(&n) => n,
                    Some((at, _)) => {
                        l.error(
                            src,
                            Some(at),
                            format!("{what} max_body_bytes: must be between 1 and 16777216"),
                        );
                        return None;
                    }
                };
            let mark = l.mark();
            let replay_window = l.duration(
                src,
                &replay_window,
                Duration::from_secs(3600),
                Zero::Refused,
            );
            if l.errors_since(mark) {
                return None;
            }
            Webhook::PlivoV3 {
                name: name.to_owned(),
                public_base_url: base,
                auth_tokens: tokens,
                max_body_bytes,
                replay_window,
            }
        }
        WebhookFile::UrlSecret {
            param,
            secret_env,
            secret_file,
        } => {
            let secret = l.secret(src, &secret_env, &secret_file, span.clone(), &what)?;
            Webhook::UrlSecret {
                param: param.get_ref().clone(),
                secret,
            }
        }
        WebhookFile::IpAllowlist { cidrs } => {
            let mut parsed = Vec::new();
            for c in &cidrs {
                match c.get_ref().parse::<Cidr>() {
                    Ok(c) => parsed.push(c),
                    Err(e) => l.error(src, Some(c.span()), format!("{what}: {e}")),
                }
            }
            Webhook::IpAllowlist { cidrs: parsed }
        }
    };
    Some(hook)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};
    use crate::snapshot::{RouteAuth, Webhook};

    const ROUTE: &str =
        "[[route]]\nname = \"cb\"\npath = \"/cb/*\"\nauth = \"webhook\"\nwebhook = \"hook\"\n";

    #[test]
    fn each_kind() {
        for (table, check) in [
            ("kind = \"plivo_v3\"\npublic_base_url = \"https://cb.example/\"\nauth_tokens_env = [\"PLIVO\"]\nreplay_window = \"10m\"", "plivo"),
            ("kind = \"url_secret\"\nparam = \"secret\"\nsecret_file = \"keys/service.key\"", "secret"),
            ("kind = \"ip_allowlist\"\ncidrs = [\"10.0.0.0/8\"]", "ip"),
        ] {
            let s = load(&format!("{GATEWAY}\n[webhooks.hook]\n{table}\n"), &[("a.toml", ROUTE)]).unwrap();
            let RouteAuth::Webhook(hook) = &s.routes[0].auth else { panic!() };
            match (&**hook, check) {
                (Webhook::PlivoV3 { public_base_url, replay_window, name, .. }, "plivo") => {
                    assert_eq!(public_base_url, "https://cb.example");
                    assert_eq!(replay_window.as_secs(), 600);
                    assert_eq!(name, "hook");
                }
                (Webhook::UrlSecret { param, .. }, "secret") => assert_eq!(param, "secret"),
                (Webhook::IpAllowlist { cidrs }, "ip") => assert_eq!(cidrs.len(), 1),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_broken_webhook_is_one_error() {
        for (table, want) in [
            ("kind = \"plivo_v3\"\npublic_base_url = \"cb.example\"\nauth_tokens_env = [\"PLIVO\"]", "gateway.toml:12:19: [webhooks.hook] public_base_url: expected https://host[:port] as Plivo calls it"),
            ("kind = \"plivo_v3\"\npublic_base_url = \"https://cb\"", "gateway.toml:10:11: [webhooks.hook]: name the auth tokens with auth_tokens_env or auth_tokens_file (one per line)"),
            ("kind = \"plivo_v3\"\npublic_base_url = \"https://cb\"\nauth_tokens_env = [\"PLIVO\"]\nreplay_window = \"0s\"", "gateway.toml:14:17: a duration must be greater than zero"),
            ("kind = \"plivo_v3\"\npublic_base_url = \"https://cb\"\nauth_tokens_env = [\"PLIVO\"]\nmax_body_bytes = 0", "gateway.toml:14:18: [webhooks.hook] max_body_bytes: must be between 1 and 16777216"),
            ("kind = \"nope\"", "gateway.toml:11:8: [webhooks.hook]: unknown variant `nope`, expected one of `plivo_v3`, `url_secret`, `ip_allowlist`"),
        ] {
            let e = errors(&format!("{GATEWAY}\n[webhooks.hook]\n{table}\n"), &[("a.toml", ROUTE)]);
            assert_eq!(e, [want], "{table}");
        }
        // A value of the wrong type, at its own place, hides none of the table's others.
        let table = "kind = \"plivo_v3\"\npublic_base_url = \"https://cb\"\nauth_tokens_env = [\"PLIVO\"]\nmax_body_bytes = \"big\"\nreplay_window = \"0s\"\ncolour = 1";
        let e = errors(
            &format!("{GATEWAY}\n[webhooks.hook]\n{table}\n"),
            &[("a.toml", ROUTE)],
        );
        assert_eq!(
            e,
            [
                "gateway.toml:14:18: [webhooks.hook]: invalid type: string \"big\", expected a whole number, such as 32768 (sizes are in bytes)",
                "gateway.toml:15:17: a duration must be greater than zero",
                "gateway.toml:16:1: [webhooks.hook]: unknown field `colour`, expected one of `public_base_url`, `auth_tokens_env`, `auth_tokens_file`, `max_body_bytes`, `replay_window`",
            ]
        );
    }
}
