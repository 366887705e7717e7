//! `[store]`: where state shared by instances lives — Redis when a URL is given, else
//! this process (and, for login sessions, a local `redb` file at `path`). The URL may
//! hold a password: it is checked without being echoed.

use std::num::NonZeroU32;
use std::time::Duration;

use super::context::{Loader, Zero};
use super::file::StoreFile;
use crate::diagnostic::SourceFile;
use crate::snapshot::{RedisSettings, Store};

/// Where the embedded store lives unless `[store] path` says otherwise (relative to
/// gateway.toml).
pub const DEFAULT_PATH: &str = "state/tollgate.redb";

/// `[store]`: Redis when a URL is given, else this process.
pub(crate) fn store(l: &mut Loader, src: &SourceFile, f: Option<StoreFile>) -> Option<Store> {
    let Some(f) = f else {
        return Some(Store {
            redis: None,
            path: l.resolve(DEFAULT_PATH),
        });
    };
    let path = match &f.path {
        Some(p) if p.get_ref().trim().is_empty() => {
            l.error(src, Some(p.span()), "[store] path: must not be empty");
            l.resolve(DEFAULT_PATH)
        }
        Some(p) => l.resolve(p.get_ref()),
        None => l.resolve(DEFAULT_PATH),
    };
    let mark = l.mark();
    let url = match (&f.redis_url, &f.redis_url_env) {
        (Some(_), Some(env)) => {
            l.diags.push(src.error(
                Some(env.span()),
                "[store]: give redis_url or redis_url_env, not both",
            ));
            None
        }
        (Some(url), None) => Some((url.get_ref().clone(), url.span())),
        (None, Some(env)) => match l.env(env.get_ref()) {
            Some(url) if !url.is_empty() => Some((url, env.span())),
            _ => {
                l.diags.push(src.error(
                    Some(env.span()),
                    format!("[store]: environment variable {} is not set", env.get_ref()),
                ));
                None
            }
        },
        (None, None) => None,
    };
    if let Some((url, span)) = &url {
        // The URL itself may hold a password: never echo it.
        if let Some(problem) = redis_url_problem(url) {
            l.diags
                .push(src.error(Some(span.clone()), format!("[store]: {problem}")));
        }
    }
    let instances = match &f.instances {
        None => NonZeroU32::MIN,
        Some(n) => match u32::try_from(*n.get_ref()).ok().and_then(NonZeroU32::new) {
            Some(n) => n,
            None => {
                l.diags
                    .push(src.error(Some(n.span()), "[store]: instances must be at least 1"));
                NonZeroU32::MIN
            }
        },
    };
    let breaker_failures = match &f.breaker_failures {
        None => 5,
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                l.diags.push(src.error(
                    Some(n.span()),
                    "[store]: breaker_failures must be at least 1",
                ));
                5
            }
        },
    };
    let key_prefix = match &f.key_prefix {
        None => "tollgate".to_owned(),
        Some(p) => {
            let text = p.get_ref();
            if text.is_empty() || text.contains(['{', '}']) || text.chars().any(char::is_whitespace)
            {
                l.diags.push(src.error(
                    Some(p.span()),
                    "[store]: key_prefix must be non-empty, without spaces, `{` or `}`",
                ));
            }
            text.clone()
        }
    };
    let timeout = l.duration(src, &f.timeout, Duration::from_millis(50), Zero::Refused);
    let breaker_cooldown = l.duration(
        src,
        &f.breaker_cooldown,
        Duration::from_secs(2),
        Zero::Refused,
    );
    let tls = super::tls::redis_tls(
        l,
        src,
        url.as_ref()
            .is_some_and(|(u, _)| u.starts_with("rediss://")),
        &f.redis_ca_file,
        &f.redis_client_cert_file,
        &f.redis_client_key_file,
    );
    let cluster = f.cluster.as_ref().is_some_and(|c| *c.get_ref());
    if let (Some(c), None) = (&f.cluster, &url) {
        l.error(src, Some(c.span()), "[store] cluster: needs a redis_url");
    }
    if let (true, Some((url, span))) = (cluster, &url) {
        if url.contains('?')
            || url
                .rsplit('/')
                .next()
                .is_some_and(|db| db.parse::<u32>().is_ok_and(|n| n > 0))
        {
            l.error(
                src,
                Some(span.clone()),
                "[store]: a Redis Cluster has one database (no `/N`) and takes no URL options",
            );
        }
    }
    let mut cluster_seeds = Vec::new();
    for node in f.cluster_nodes.iter().flatten() {
        match (&url, cluster) {
            (Some((url, _)), true) => match with_authority(url, node.get_ref()) {
                Some(seed) if redis_url_problem(&seed).is_none() => cluster_seeds.push(seed),
                _ => l.error(
                    src,
                    Some(node.span()),
                    format!(
                        "[store] cluster_nodes: `{}` is not a host:port",
                        node.get_ref()
                    ),
                ),
            },
            _ => l.error(
                src,
                Some(node.span()),
                "[store] cluster_nodes: only with cluster = true",
            ),
        }
    }
    if l.errors_since(mark) {
        return None;
    }
    Some(Store {
        redis: url.map(|(url, _)| RedisSettings {
            tls,
            cluster,
            cluster_seeds,
            url,
            instances,
            timeout,
            breaker_failures,
            breaker_cooldown,
            key_prefix,
        }),
        path,
    })
}

/// `url` with its `host:port` replaced by `authority` (scheme, credentials and
/// database kept); `None` when `authority` is not a bare `host:port`.
fn with_authority(url: &str, authority: &str) -> Option<String> {
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) || !authority.contains(':')
    {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (current, path) = rest.split_at(end);
    let credentials = current.rsplit_once('@').map(|(c, _)| format!("{c}@"));
    Some(format!(
        "{scheme}://{}{authority}{path}",
        credentials.unwrap_or_default()
    ))
}

/// What is wrong with a Redis URL, without echoing it (it may hold a password):
/// `redis[s]://[user[:password]@]host[:port][/db][?options]`.
fn redis_url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Some("the Redis URL must start with redis:// or rediss://");
    };
    // The Redis client reads `#insecure` as "do not check the server's certificate".
    if rest.contains('#') {
        return Some("the Redis URL must not have a fragment (`#insecure` would turn off certificate checks)");
    }
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Some("the Redis URL has an unclosed `[` in its host"),
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Some("the Redis URL names no host");
    }
    if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Some("the Redis URL's port must be a number from 1 to 65535");
    }
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Some("the Redis URL's path must be a database number (`/0`)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};
    use super::redis_url_problem;

    #[test]
    fn redis_from_a_url_or_a_variable() {
        let s = load(&format!("{GATEWAY}\n[store]\nredis_url_env = \"REDIS\"\ninstances = 3\ntimeout = \"20ms\"\n"), &[]).unwrap();
        let r = s.store.redis.unwrap();
        assert_eq!(
            (r.url.as_str(), r.instances.get(), r.timeout.as_millis()),
            ("redis://127.0.0.1:6379", 3, 20)
        );
        assert!(load(GATEWAY, &[]).unwrap().store.redis.is_none());
        let e = errors(&format!("{GATEWAY}\n[store]\nredis_url = \"rediss://:pw@host#insecure\"\nbreaker_failures = 0\nkey_prefix = \"a{{b}}\"\n"), &[]);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].contains("`#insecure` would turn off certificate checks"),
            "{e:?}"
        );
        assert!(
            e.iter().all(|e| !e.contains("pw@")),
            "the URL is never echoed: {e:?}"
        );
    }

    #[test]
    fn rediss_with_a_private_ca_and_a_client_certificate() {
        let s = load(&format!("{GATEWAY}\n[store]\nredis_url = \"rediss://localhost:6380\"\nredis_ca_file = \"tls/ca.pem\"\nredis_client_cert_file = \"tls/client.pem\"\nredis_client_key_file = \"tls/client.key.pem\"\n"), &[]).unwrap();
        let tls = s.store.redis.unwrap().tls.unwrap();
        assert!(tls
            .ca_pem
            .unwrap()
            .starts_with(b"-----BEGIN CERTIFICATE-----"));
        let (cert, key) = tls.client_pem.unwrap();
        assert!(cert.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert!(key.starts_with(b"-----BEGIN PRIVATE KEY-----"));
        // The system's roots, no client certificate.
        let s = load(
            &format!("{GATEWAY}\n[store]\nredis_url = \"rediss://localhost:6380\"\n"),
            &[],
        )
        .unwrap();
        assert!(s.store.redis.unwrap().tls.unwrap() == Default::default());

        for (extra, message) in [
            ("redis_url = \"redis://localhost\"\nredis_ca_file = \"tls/ca.pem\"", "gateway.toml:12:17: [store]: TLS files are for a rediss:// URL"),
            ("redis_url = \"rediss://localhost\"\nredis_client_key_file = \"tls/client.key.pem\"", "gateway.toml:12:25: [store]: a Redis client certificate needs both"),
            ("redis_url = \"rediss://localhost\"\nredis_client_cert_file = \"tls/client.pem\"\nredis_client_key_file = \"tls/other.key.pem\"", "gateway.toml:13:25: [store] redis_client_key_file: `tls/other.key.pem` is not the key of `tls/client.pem`"),
            ("redis_url = \"rediss://localhost\"\nredis_ca_file = \"tls/client.key.pem\"", "gateway.toml:12:17: [store] redis_ca_file: no PEM certificate in it"),
        ] {
            let e = errors(&format!("{GATEWAY}\n[store]\n{extra}\n"), &[]);
            assert_eq!(e.len(), 1, "{e:?}");
            assert!(e[0].starts_with(message), "{e:?}");
        }
    }

    #[test]
    fn a_cluster_starts_from_several_nodes_reached_alike() {
        let s = load(&format!("{GATEWAY}\n[store]\nredis_url = \"rediss://:pw@r1:7000\"\ncluster = true\ncluster_nodes = [\"r2:7000\", \"[::1]:7001\"]\n"), &[]).unwrap();
        let r = s.store.redis.unwrap();
        assert!(r.cluster);
        assert_eq!(
            r.cluster_seeds,
            ["rediss://:pw@r2:7000", "rediss://:pw@[::1]:7001"]
        );
        let e = errors(&format!("{GATEWAY}\n[store]\nredis_url = \"redis://r1:7000/2\"\ncluster = true\ncluster_nodes = [\"r2\", \"u@r3:1\"]\n"), &[]);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("a Redis Cluster has one database"), "{e:?}");
        assert!(
            e[1].contains("`r2` is not a host:port")
                && e[2].contains("`u@r3:1` is not a host:port"),
            "{e:?}"
        );
        let e = errors(&format!("{GATEWAY}\n[store]\nredis_url = \"redis://r1:7000\"\ncluster_nodes = [\"r2:7000\"]\n"), &[]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("only with cluster = true"), "{e:?}");
    }

    #[test]
    fn redis_urls_are_checked_without_connecting() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://redis",
            "redis://:secret@redis:6379/2",
            "redis://user:p%40ss@[::1]:6380/0?protocol=resp3",
            "rediss://:secret@redis.internal:6380/1",
        ] {
            assert_eq!(redis_url_problem(ok), None, "{ok}");
        }
        for bad in [
            "http://127.0.0.1:6379",
            "redis://",
            "redis://:6379",
            "redis://host:notaport",
            "redis://host:0",
            "redis://host:6379/db",
            "redis://[::1:6379",
            "rediss://host/#insecure",
        ] {
            assert!(redis_url_problem(bad).is_some(), "{bad}");
        }
    }
}
