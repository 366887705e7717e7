//! `[jwt]`: the claim rules, the static keys (`[[jwt.key]]`) and remote key sets
//! (`[[jwt.jwks]]`).
//!
//! Keys are parsed here, once, from files or environment variables (never from the
//! configuration text), so a snapshot never holds a key that fails at request time. Each
//! `[[jwt.key]]` and `[[jwt.jwks]]` table is read on its own: a mistake in one is
//! reported under its own name and hides no other, and `[jwt]` is still given to the
//! routes (the load fails anyway), so one mistake is one error.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Uri;
use tollgate_auth::mint::SigningKey;
use tollgate_auth::{Algorithm, Rules, VerifyKey};
use toml::de::DeValue;
use toml::Spanned;

use super::context::{Loader, Zero};
use super::document::deserialize;
use super::file::{JwksFile, JwtFile, JwtKeyFile};
use crate::diagnostic::SourceFile;
use crate::snapshot::{JwksSource, Jwt};

/// Whether `ip` is loopback, private (RFC 1918, unique-local), link-local or CGNAT: an
/// address a key set may be fetched from in clear text.
fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(std::net::IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

/// The shortest `[[jwt.jwks]] refresh` (background refetch of a key set).
const MIN_JWKS_REFRESH: (Duration, &str) = (Duration::from_secs(10), "10s");
/// The shortest `[[jwt.jwks]] min_refetch` (refetch prompted by an unknown `kid`).
const MIN_JWKS_REFETCH: (Duration, &str) = (Duration::from_secs(1), "1s");

/// The most clock skew `[jwt] leeway` may allow.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Reads `[jwt]` from its table, taking its `key` and `jwks` arrays apart first so each
/// entry is deserialized (and reported) as itself.
pub(crate) fn jwt(
    l: &mut Loader,
    src: &SourceFile,
    whole: Range<usize>,
    value: Spanned<DeValue>,
) -> Option<Jwt> {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        l.error(src, Some(span), "[jwt] must be a table");
        return None;
    };
    let mut rest = toml::de::DeTable::new();
    let (mut key_items, mut jwks_items): (Vec<Spanned<DeValue>>, Vec<Spanned<DeValue>>) =
        (Vec::new(), Vec::new());
    for (k, v) in table {
        match k.get_ref().as_ref() {
            "key" | "jwks" => {
                let is_key = k.get_ref() == "key";
                let v_span = v.span();
                match v.into_inner() {
                    DeValue::Array(items) if is_key => key_items = items.into_iter().collect(),
                    DeValue::Array(items) => jwks_items = items.into_iter().collect(),
                    _ => l.error(
                        src,
                        Some(v_span),
                        format!(
                            "[jwt] {}: write [[jwt.{}]] tables",
                            k.get_ref(),
                            k.get_ref()
                        ),
                    ),
                }
            }
            _ => {
                rest.insert(k, v);
            }
        }
    }
    let f: JwtFile = deserialize(l, src, Spanned::new(span, DeValue::Table(rest)), "[jwt]")?;
    let keys: Vec<Option<JwtKeyFile>> = key_items
        .into_iter()
        .map(|item| deserialize(l, src, item, "[[jwt.key]]"))
        .collect();
    let sets: Vec<Option<JwksFile>> = jwks_items
        .into_iter()
        .map(|item| deserialize(l, src, item, "[[jwt.jwks]]"))
        .collect();

    let mut verify_keys = Vec::new();
    let mut signing: Vec<(Option<String>, Arc<SigningKey>)> = Vec::new();
    let mut published = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for key in keys.iter().flatten() {
        let id = key.id.as_ref().map(|i| i.get_ref().clone());
        if let (Some(id), Some(span)) = (&id, key.id.as_ref().map(|i| i.span())) {
            if ids.contains(id) {
                l.error(
                    src,
                    Some(span),
                    format!("[[jwt.key]] id `{id}` is used twice"),
                );
            }
            ids.push(id.clone());
        }
        let fallback = key.id.as_ref().map_or(whole.clone(), |i| i.span());
        if let Some((verify, sign)) = jwt_key(l, src, key, id.clone(), fallback.clone()) {
            if let Some(sign) = &sign {
                if !tollgate_auth::jwt::signs_for(sign, &verify) {
                    l.error(
                        src,
                        Some(fallback),
                        "[[jwt.key]]: private_key_file is not the private half of public_key_file: tokens it signs would be refused",
                    );
                }
            }
            if key.private_key_file.is_some() {
                published.extend(verify.public_jwk());
            }
            verify_keys.push(Arc::new(verify));
            if let Some(sign) = sign {
                signing.push((id, Arc::new(sign)));
            }
        }
    }
    // Rotation adds a key at the end: the newest signs, the older ones keep verifying
    // the tokens they signed until those expire.
    let signing = match &f.signing_key {
        None => signing.pop().map(|(_, key)| key),
        Some(wanted) => match signing
            .iter()
            .find(|(id, _)| id.as_deref() == Some(wanted.get_ref()))
        {
            Some((_, key)) => Some(Arc::clone(key)),
            None => {
                l.error(
                    src,
                    Some(wanted.span()),
                    format!(
                        "[jwt] signing_key: no [[jwt.key]] with id `{}` that can sign (a secret, or a private_key_file)",
                        wanted.get_ref()
                    ),
                );
                None
            }
        },
    };
    let jwks = sets
        .iter()
        .flatten()
        .filter_map(|set| jwks_source(l, src, set))
        .collect();
    if keys.is_empty() && sets.is_empty() {
        l.error(
            src,
            Some(whole),
            "[jwt]: configure at least one [[jwt.key]] or [[jwt.jwks]]",
        );
    }
    let leeway = l.duration(src, &f.leeway, Duration::from_secs(30), Zero::Allowed);
    if leeway > MAX_LEEWAY {
        if let Some(v) = &f.leeway {
            // `30d` for `30s` would keep every expired token working for a month.
            l.error(
                src,
                Some(v.span()),
                "[jwt] leeway: at most 5m (it is clock skew: past it, expired tokens keep working)",
            );
        }
    }
    let max_token_bytes = bounded(
        l,
        src,
        &f.max_token_bytes,
        8192,
        512..=65_536,
        "[jwt] max_token_bytes",
    );
    let cache_entries = bounded(
        l,
        src,
        &f.cache_entries,
        10_000,
        0..=10_000_000,
        "[jwt] cache_entries",
    );
    let client_id_claim = match &f.client_id_claim {
        Some(c) if c.get_ref().is_empty() => {
            l.error(
                src,
                Some(c.span()),
                "[jwt] client_id_claim: must not be empty",
            );
            String::new()
        }
        Some(c) => c.get_ref().clone(),
        None => "clientId".into(),
    };
    let access_ttl = l.duration(
        src,
        &f.access_ttl,
        Duration::from_secs(24 * 3600),
        Zero::Refused,
    );
    Some(Jwt {
        rules: Rules {
            issuer: f.issuer,
            audience: f.audience,
            leeway_secs: leeway.as_secs(),
            max_token_bytes,
            client_id_claim,
        },
        keys: verify_keys,
        signing,
        published,
        jwks,
        cache_entries,
        access_ttl,
    })
}

fn bounded(
    l: &mut Loader,
    src: &SourceFile,
    value: &Option<Spanned<i64>>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
    what: &str,
) -> usize {
    match value {
        None => default,
        Some(v) => match usize::try_from(*v.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                l.error(
                    src,
                    Some(v.span()),
                    format!(
                        "{what}: must be between {} and {}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        },
    }
}

fn jwks_source(l: &mut Loader, src: &SourceFile, f: &JwksFile) -> Option<JwksSource> {
    let mark = l.mark();
    let url = match f.url.get_ref().parse::<Uri>() {
        Ok(u) if matches!(u.scheme_str(), Some("https" | "http")) && u.authority().is_some() => {
            Some(u)
        }
        _ => {
            l.error(
                src,
                Some(f.url.span()),
                "[[jwt.jwks]] url: expected https://host[:port]/path",
            );
            None
        }
    };
    // Whoever can change the key set can sign any token: in clear text only on a private
    // network, as the docs say. An address is judged here; a name cannot be, so it gets
    // a warning.
    if let Some(u) = url.as_ref().filter(|u| u.scheme_str() == Some("http")) {
        let host = u.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) if !is_private(ip) => l.error(
                src,
                Some(f.url.span()),
                format!("[[jwt.jwks]] url: `{host}` is a public address: fetch the key set over https:// (anyone on the way could replace it and sign any token)"),
            ),
            Ok(_) => {}
            Err(_) if host.eq_ignore_ascii_case("localhost") => {}
            Err(_) => l.warning(
                src,
                Some(f.url.span()),
                format!("[[jwt.jwks]] url: http:// to `{host}`: only on a private network (anyone on the way could replace the key set and sign any token); prefer https://"),
            ),
        }
    }
    let ca_pem = match &f.ca_file {
        None => None,
        Some(file) => {
            let pem = l
                .read_named(src, file, "[[jwt.jwks]] ca_file")
                .map(|(_, pem)| pem);
            if pem
                .as_ref()
                .is_some_and(|p| !p.windows(17).any(|w| w == b"BEGIN CERTIFICATE"))
            {
                l.error(
                    src,
                    Some(file.span()),
                    "[[jwt.jwks]] ca_file: no PEM certificate in it",
                );
            }
            pem
        }
    };
    let algorithm = f.algorithm.as_ref().and_then(|a| algorithm(l, src, a));
    // A short interval refetches the set without pause: `min_refetch` is paced by
    // tokens with unknown `kid`s, which anyone can send, so `1ms` would let each one
    // make the gateway fetch from the identity provider.
    let refresh = l.duration(src, &f.refresh, Duration::from_secs(300), Zero::Refused);
    at_least(l, src, &f.refresh, refresh, MIN_JWKS_REFRESH, "refresh");
    let min_refetch = l.duration(src, &f.min_refetch, Duration::from_secs(30), Zero::Refused);
    at_least(
        l,
        src,
        &f.min_refetch,
        min_refetch,
        MIN_JWKS_REFETCH,
        "min_refetch",
    );
    if l.errors_since(mark) {
        return None;
    }
    Some(JwksSource {
        url: url?,
        algorithm,
        refresh,
        min_refetch,
        ca_pem,
    })
}

fn algorithm(l: &mut Loader, src: &SourceFile, value: &Spanned<String>) -> Option<Algorithm> {
    match value.get_ref().parse::<Algorithm>() {
        Ok(a) => Some(a),
        Err(_) => {
            l.error(
                src,
                Some(value.span()),
                format!(
                    "`{}` is not a supported algorithm: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

/// The algorithms of one `[[jwt.key]]`: `algorithm`, or `algorithms` (the first is the
/// key's own and signs), with the span to report key errors at.
fn key_algorithms(
    l: &mut Loader,
    src: &SourceFile,
    f: &JwtKeyFile,
    fallback: Range<usize>,
) -> Option<(Vec<Algorithm>, Range<usize>)> {
    match (&f.algorithm, &f.algorithms) {
        (Some(one), None) => Some((vec![algorithm(l, src, one)?], one.span())),
        (None, Some(list)) if !list.get_ref().is_empty() => {
            let mut algs = Vec::new();
            for a in list.get_ref() {
                algs.push(algorithm(l, src, a)?);
            }
            Some((algs, list.span()))
        }
        (None, Some(list)) => {
            l.error(
                src,
                Some(list.span()),
                "[[jwt.key]] algorithms: list at least one",
            );
            None
        }
        (Some(one), Some(_)) => {
            l.error(
                src,
                Some(one.span()),
                "[[jwt.key]]: give `algorithm` or `algorithms`, not both",
            );
            None
        }
        (None, None) => {
            l.error(src, Some(fallback), "[[jwt.key]]: missing `algorithm` (e.g. \"RS256\"), or `algorithms` for several of one family");
            None
        }
    }
}

fn jwt_key(
    l: &mut Loader,
    src: &SourceFile,
    f: &JwtKeyFile,
    id: Option<String>,
    fallback: Range<usize>,
) -> Option<(VerifyKey, Option<SigningKey>)> {
    let (algs, span) = key_algorithms(l, src, f, fallback)?;
    let (alg, more) = algs.split_first()?;
    let (verify, signing) = key_material(l, src, f, id, *alg, span.clone())?;
    match verify.allow(more) {
        Ok(verify) => Some((verify, signing)),
        Err(e) => {
            l.error(src, Some(span), format!("[[jwt.key]] algorithms: {e}"));
            None
        }
    }
}

/// The key itself, for its own algorithm: a shared secret for HMAC, else a PEM public
/// key (and, to sign, the private key).
fn key_material(
    l: &mut Loader,
    src: &SourceFile,
    f: &JwtKeyFile,
    id: Option<String>,
    alg: Algorithm,
    span: Range<usize>,
) -> Option<(VerifyKey, Option<SigningKey>)> {
    let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    if hmac {
        if f.public_key_file.is_some() || f.private_key_file.is_some() {
            l.error(src, Some(span), format!("[[jwt.key]] {alg:?} is an HMAC algorithm: use secret_env or secret_file, not key files"));
            return None;
        }
        let secret = l.secret(
            src,
            &f.secret_env,
            &f.secret_file,
            span.clone(),
            "[[jwt.key]] secret",
        )?;
        return match VerifyKey::from_secret(id.clone(), alg, &secret) {
            Ok(v) => Some((v, Some(SigningKey::from_secret(id, alg, &secret)))),
            Err(e) => {
                l.error(src, Some(span), format!("[[jwt.key]]: {e}"));
                None
            }
        };
    }
    if f.secret_env.is_some() || f.secret_file.is_some() {
        l.error(
            src,
            Some(span),
            format!("[[jwt.key]] {alg:?} needs public_key_file, not a shared secret"),
        );
        return None;
    }
    let Some(public) = &f.public_key_file else {
        l.error(
            src,
            Some(span),
            format!("[[jwt.key]] {alg:?} needs public_key_file"),
        );
        return None;
    };
    let (_, pem) = l.read_named(src, public, "[[jwt.key]] public_key_file")?;
    let verify = match VerifyKey::from_pem(id.clone(), alg, &pem) {
        Ok(v) => v,
        Err(e) => {
            l.error(
                src,
                Some(public.span()),
                format!("[[jwt.key]] public_key_file: {e}"),
            );
            return None;
        }
    };
    let signing = match &f.private_key_file {
        None => None,
        Some(private) => {
            let (_, pem) = l.read_named(src, private, "[[jwt.key]] private_key_file")?;
            match SigningKey::from_pem(id, alg, &pem) {
                Ok(s) => Some(s),
                Err(e) => {
                    l.error(
                        src,
                        Some(private.span()),
                        format!("[[jwt.key]] private_key_file: {e}"),
                    );
                    return None;
                }
            }
        }
    };
    Some((verify, signing))
}

/// Refuses a `[[jwt.jwks]]` interval shorter than `floor`.
fn at_least(
    l: &mut Loader,
    src: &SourceFile,
    value: &Option<Spanned<String>>,
    parsed: Duration,
    (floor, floor_text): (Duration, &str),
    key: &str,
) {
    if let Some(v) = value.as_ref().filter(|_| parsed < floor) {
        l.error(
            src,
            Some(v.span()),
            format!(
                "[[jwt.jwks]] {key}: at least {floor_text} (each fetch is a request to the identity provider)"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, warnings, GATEWAY, HS256};

    fn with(jwt: &str) -> String {
        format!("{GATEWAY}\n{jwt}")
    }

    #[test]
    fn a_key_set_travels_in_clear_text_only_on_a_private_network() {
        let jwks = |url: &str| with(&format!("[jwt]\n\n[[jwt.jwks]]\nurl = \"{url}\"\n"));
        for public in [
            "http://8.8.8.8/jwks.json",
            "http://[2001:4860::8888]/j",
            "http://[::ffff:8.8.8.8]/j",
        ] {
            let e = errors(&jwks(public), &[]);
            assert!(
                e.iter().any(|e| e.contains("is a public address")),
                "{public}: {e:?}"
            );
        }
        for private in [
            "http://127.0.0.1:9/j",
            "http://10.1.2.3/j",
            "http://192.168.0.5/j",
            "http://[::1]/j",
            "http://[fd00::1]/j",
            "http://localhost:8080/j",
            "https://8.8.8.8/j",
        ] {
            assert!(errors(&jwks(private), &[]).is_empty(), "{private}");
            assert!(warnings(&jwks(private), &[]).is_empty(), "{private}");
        }
        let w = warnings(&jwks("http://idp.example.com/jwks.json"), &[]);
        assert!(
            w.iter().any(|w| w.contains("only on a private network")),
            "{w:?}"
        );
    }

    #[test]
    fn keys_rules_and_remote_sets() {
        let s = load(&with(&format!("[jwt]\nissuer = \"i\"\naudience = \"a\"\nleeway = \"0s\"\nclient_id_claim = \"cid\"\n\n[[jwt.key]]\nid = \"one\"\nalgorithms = [\"HS256\", \"HS512\"]\nsecret_env = \"{HS256}\"\n\n[[jwt.jwks]]\nurl = \"https://idp.example/jwks\"\nrefresh = \"1m\"\n")), &[]).unwrap();
        let jwt = s.auth.jwt.unwrap();
        assert_eq!(jwt.rules.leeway_secs, 0);
        let e = errors(&with(&format!("[jwt]\nleeway = \"30d\"\n\n[[jwt.key]]\nalgorithm = \"HS256\"\nsecret_env = \"{HS256}\"\n")), &[]);
        assert!(
            e.iter().any(|e| e.contains("[jwt] leeway: at most 5m")),
            "{e:?}"
        );
        assert_eq!(jwt.rules.client_id_claim, "cid");
        assert_eq!(jwt.keys.len(), 1);
        assert_eq!(jwt.keys[0].algorithms().len(), 2);
        assert!(jwt.signing.is_some());
        assert_eq!(jwt.jwks[0].refresh.as_secs(), 60);
    }

    #[test]
    fn one_broken_key_is_one_error_and_named_as_a_key() {
        let routes = [("a.toml", "[[route]]\nname = \"r\"\npath = \"/r\"\n")];
        // An unknown key is named, and what the key lacks without it is said too.
        let inline = errors(
            &with("[jwt]\n\n[[jwt.key]]\nid = \"k\"\nalgorithm = \"HS256\"\nsecret = \"inline\"\n"),
            &routes,
        );
        assert_eq!(
            inline,
            [
                "gateway.toml:14:13: [[jwt.key]] secret: give exactly one of `*_env` or `*_file` (secrets are never written inline)",
                "gateway.toml:15:1: [[jwt.key]]: unknown field `secret`, expected one of `id`, `algorithm`, `algorithms`, `secret_env`, `secret_file`, `public_key_file`, `private_key_file`",
            ]
        );
        for (key, want) in [
            (
                "id = \"k\"\nalgorithm = \"HS256\"".to_owned(),
                "gateway.toml:14:13: [[jwt.key]] secret: give exactly one of `*_env` or `*_file` (secrets are never written inline)",
            ),
            (
                format!("id = \"k\"\nalgorithm = \"RS256\"\nsecret_env = \"{HS256}\""),
                "gateway.toml:14:13: [[jwt.key]] RS256 needs public_key_file, not a shared secret",
            ),
            (
                "id = \"k\"\nalgorithm = \"HS256\"\nsecret_env = \"SHORT\"".to_owned(),
                "gateway.toml:14:13: [[jwt.key]]: the shared secret is shorter than 32 bytes",
            ),
        ] {
            let e = errors(&with(&format!("[jwt]\n\n[[jwt.key]]\n{key}\n")), &routes);
            assert_eq!(e, [want], "{key}");
        }
        let twice = format!("[jwt]\n\n[[jwt.key]]\nid = \"k\"\nalgorithm = \"HS256\"\nsecret_env = \"{HS256}\"\n\n[[jwt.key]]\nid = \"k\"\nalgorithm = \"HS256\"\nsecret_env = \"{HS256}\"\n");
        assert_eq!(
            errors(&with(&twice), &routes),
            ["gateway.toml:18:6: [[jwt.key]] id `k` is used twice"]
        );
    }

    #[test]
    fn a_key_set_that_would_refetch_without_pause_is_refused() {
        let e = errors(
            &with("[jwt]\n\n[[jwt.jwks]]\nurl = \"https://idp/jwks\"\nrefresh = \"0s\"\n"),
            &[],
        );
        assert_eq!(
            e,
            ["gateway.toml:14:11: a duration must be greater than zero"]
        );
        let e = errors(
            &with("[jwt]\n\n[[jwt.jwks]]\nurl = \"https://idp/jwks\"\nrefresh = \"9s\"\nmin_refetch = \"1ms\"\n"),
            &[],
        );
        assert_eq!(
            e,
            [
                "gateway.toml:14:11: [[jwt.jwks]] refresh: at least 10s (each fetch is a request to the identity provider)",
                "gateway.toml:15:15: [[jwt.jwks]] min_refetch: at least 1s (each fetch is a request to the identity provider)",
            ]
        );
        let floors = "[jwt]\n\n[[jwt.jwks]]\nurl = \"https://idp/jwks\"\nrefresh = \"10s\"\nmin_refetch = \"1s\"\n";
        assert_eq!(errors(&with(floors), &[]), Vec::<String>::new());
    }

    #[test]
    fn the_newest_key_signs_unless_one_is_named() {
        let two = format!("[jwt]\nissuer = \"i\"\naudience = \"a\"\n\n[[jwt.key]]\nid = \"old\"\nalgorithm = \"HS256\"\nsecret_env = \"{HS256}\"\n\n[[jwt.key]]\nid = \"new\"\nalgorithm = \"EdDSA\"\npublic_key_file = \"keys/ed.pub.pem\"\nprivate_key_file = \"keys/ed.pem\"\n\n[[jwt.key]]\nid = \"verify-only\"\nalgorithm = \"EdDSA\"\npublic_key_file = \"keys/other.pub.pem\"\n");
        let s = load(&with(&two), &[]).unwrap();
        let jwt = s.auth.jwt.unwrap();
        assert_eq!(jwt.signing.unwrap().kid.as_deref(), Some("new"));
        assert_eq!(jwt.keys.len(), 3);
        // Only the asymmetric signing key is published.
        assert_eq!(jwt.published.len(), 1);
        let named = two.replace(
            "audience = \"a\"\n",
            "audience = \"a\"\nsigning_key = \"old\"\n",
        );
        let s = load(&with(&named), &[]).unwrap();
        assert_eq!(
            s.auth.jwt.unwrap().signing.unwrap().kid.as_deref(),
            Some("old")
        );
        let unknown = two.replace(
            "audience = \"a\"\n",
            "audience = \"a\"\nsigning_key = \"verify-only\"\n",
        );
        let e = errors(&with(&unknown), &[]);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains("no [[jwt.key]] with id `verify-only` that can sign"),
            "{e:#?}"
        );
    }

    #[test]
    fn a_private_key_that_is_not_the_public_keys_half_is_refused() {
        let e = errors(&with("[jwt]\n\n[[jwt.key]]\nid = \"k\"\nalgorithm = \"EdDSA\"\npublic_key_file = \"keys/other.pub.pem\"\nprivate_key_file = \"keys/ed.pem\"\n"), &[]);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].contains("private_key_file is not the private half of public_key_file"),
            "{e:#?}"
        );
    }
}
