//! `[reload]`: whether and how often the files are polled for changes.

use std::time::Duration;

use super::context::{Loader, Zero};
use super::file::ReloadFile;
use crate::diagnostic::SourceFile;
use crate::snapshot::Reload;

pub(crate) fn reload(l: &mut Loader, src: &SourceFile, f: Option<ReloadFile>) -> Option<Reload> {
    let Some(f) = f else {
        return Some(Reload {
            watch: true,
            poll_interval: Duration::from_secs(1),
        });
    };
    let mark = l.mark();
    let poll_interval = l.duration(src, &f.poll_interval, Duration::from_secs(1), Zero::Refused);
    if poll_interval < Duration::from_millis(50) {
        l.error(
            src,
            f.poll_interval.as_ref().map(|p| p.span()),
            "[reload] poll_interval: must be at least 50ms",
        );
    }
    (!l.errors_since(mark)).then_some(Reload {
        watch: f.watch.unwrap_or(true),
        poll_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{errors, load, GATEWAY};

    #[test]
    fn polling_is_bounded_below() {
        let s = load(
            &format!("{GATEWAY}\n[reload]\nwatch = false\npoll_interval = \"50ms\"\n"),
            &[],
        )
        .unwrap();
        assert!(!s.reload.watch);
        assert_eq!(s.reload.poll_interval.as_millis(), 50);
        let e = errors(
            &format!("{GATEWAY}\n[reload]\npoll_interval = \"10ms\"\n"),
            &[],
        );
        assert_eq!(
            e,
            ["gateway.toml:11:17: [reload] poll_interval: must be at least 50ms"]
        );
    }
}
