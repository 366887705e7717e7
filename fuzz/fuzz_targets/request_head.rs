//! Request-head classification: content types, parameter names and header names. Never
//! a panic; every accepted media type is well formed; name folding is stable; a body is
//! only ever classified as one of the kinds the gateway inspects, or refused.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;
use tollgate_policy::media::MediaType;
use tollgate_policy::sources::InMemory;
use tollgate_policy::{param, Snapshot};
use tollgate_proxy::internals::{classify, BodyClass};

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let sources = InMemory::new()
            .file(
                "/c/gateway.toml",
                "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[routing]\npolicies = \"p\"\n[jwt]\n[[jwt.key]]\nalgorithm = \"HS256\"\nsecret_env = \"S\"\n",
            )
            .file(
                "/c/p/a.toml",
                "[[route]]\nname = \"r\"\npath = \"/*\"\nopaque_body_types = [\"text/csv\", \"image/*\"]\n",
            )
            .var("S", "0123456789abcdef0123456789abcdef");
        tollgate_policy::load_from(Path::new("/c/gateway.toml"), &sources).expect("loads")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(media) = MediaType::parse(data) {
        let essence = media.essence();
        assert_eq!(essence, essence.to_ascii_lowercase());
        assert_eq!(essence.matches('/').count(), 1);
        let _ = media.is_utf8();
        let _ = media.param("boundary");
    }
    let route = &snapshot().routes[0];
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, value);
        match classify(&headers, true, route) {
            Ok(BodyClass::Json | BodyClass::Form | BodyClass::Multipart { .. }) => {
                let media = MediaType::parse(data).expect("classified types parse");
                assert!(media.is_utf8().is_ok());
            }
            Ok(BodyClass::Opaque) => {
                let media = MediaType::parse(data).expect("classified types parse");
                assert!(
                    media.essence() == "text/csv" || media.essence().starts_with("image/"),
                    "{media}"
                );
            }
            Ok(BodyClass::Empty) => panic!("a body is never empty here"),
            Err(_) => {}
        }
        assert_eq!(classify(&headers, false, route).ok(), Some(BodyClass::Empty));
    }
    let canonical = param::canonical(data);
    assert_eq!(param::fold(&canonical), canonical, "folding is not stable");
    if let Ok(name) = HeaderName::from_bytes(data) {
        assert_eq!(name.as_str().contains('_'), data.contains(&b'_'));
    }
});
