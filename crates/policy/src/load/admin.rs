//! `[admin]`: the private listener for metrics and health, and the admin API's token.

use std::net::SocketAddr;

use super::context::Loader;
use super::file::AdminFile;
use crate::diagnostic::SourceFile;
use crate::snapshot::{Admin, AdminToken};

/// Shorter tokens are refused: the admin API moves money.
const MIN_TOKEN_BYTES: usize = 32;

/// `[admin]`; `served` are the data plane's listeners, which it may not share.
pub(crate) fn admin(
    l: &mut Loader,
    src: &SourceFile,
    f: AdminFile,
    served: &[SocketAddr],
) -> Option<Admin> {
    let listen = l.address(src, &f.listen);
    if let Some(taken) = listen.and_then(|admin| served.iter().find(|s| overlap(**s, admin))) {
        // Found at start-up as `Address already in use`, after `check` said ok.
        l.error(
            src,
            Some(f.listen.span()),
            format!("[admin] listen: {taken} is a [server] listener; give the admin listener its own port"),
        );
    }
    let token = match (&f.token_env, &f.token_file) {
        (None, None) => None,
        _ => {
            let span = f
                .token_env
                .as_ref()
                .or(f.token_file.as_ref())
                .map_or(0..0, |s| s.span());
            let token = l.secret(
                src,
                &f.token_env,
                &f.token_file,
                span.clone(),
                "[admin] token",
            )?;
            if token.len() < MIN_TOKEN_BYTES {
                l.error(
                    src,
                    Some(span),
                    format!("[admin] token: at least {MIN_TOKEN_BYTES} characters (e.g. `openssl rand -hex 32`)"),
                );
                return None;
            }
            Some(AdminToken(token))
        }
    };
    Some(Admin {
        listen: listen?,
        token,
    })
}

/// Whether binding both would collide: the same port on the same address, or under an
/// unspecified one (`0.0.0.0` covers IPv4, a dual-stack `[::]` both). Port 0 picks a
/// free port.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |any: SocketAddr, other: SocketAddr| {
        any.ip().is_unspecified() && (any.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};

    #[test]
    fn an_address_or_an_error() {
        let s = load(
            &format!("{GATEWAY}\n[admin]\nlisten = \"127.0.0.1:9901\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.admin.unwrap().listen.port(), 9901);
        assert!(load(GATEWAY, &[]).unwrap().admin.is_none());
        let e = errors(&format!("{GATEWAY}\n[admin]\nlisten = \"9901\"\n"), &[]);
        assert_eq!(
            e,
            ["gateway.toml:11:10: `9901` is not a socket address such as `127.0.0.1:8080`"]
        );
    }

    #[test]
    fn the_admin_listener_needs_its_own_port() {
        let on = |admin: &str| {
            let gateway = GATEWAY.replace("127.0.0.1:0", "0.0.0.0:8080");
            errors(&format!("{gateway}\n[admin]\nlisten = \"{admin}\"\n"), &[])
        };
        assert_eq!(
            on("127.0.0.1:8080"),
            ["gateway.toml:11:10: [admin] listen: 0.0.0.0:8080 is a [server] listener; give the admin listener its own port"]
        );
        assert_eq!(on("0.0.0.0:8080").len(), 1);
        assert!(on("127.0.0.1:9901").is_empty());
        assert!(on("[::1]:8080").is_empty(), "0.0.0.0 does not cover IPv6");
        let dual = GATEWAY.replace("127.0.0.1:0", "[::]:8080");
        assert_eq!(
            errors(
                &format!("{dual}\n[admin]\nlisten = \"127.0.0.1:8080\"\n"),
                &[]
            )
            .len(),
            1
        );
    }
}
