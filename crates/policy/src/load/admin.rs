//! `[admin]`: the private listener for metrics and health, and the admin API's token.

use super::context::Loader;
use super::file::AdminFile;
use crate::diagnostic::SourceFile;
use crate::snapshot::{Admin, AdminToken};

/// Shorter tokens are refused: the admin API moves money.
const MIN_TOKEN_BYTES: usize = 32;

pub(crate) fn admin(l: &mut Loader, src: &SourceFile, f: AdminFile) -> Option<Admin> {
    let listen = l.address(src, &f.listen);
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
}
