//! `[admin]`: the private listener for metrics and health.

use super::context::Loader;
use super::file::AdminFile;
use crate::diagnostic::SourceFile;
use crate::snapshot::Admin;

pub(crate) fn admin(l: &mut Loader, src: &SourceFile, f: AdminFile) -> Option<Admin> {
    l.address(src, &f.listen).map(|listen| Admin { listen })
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
