//! Builders for unit tests: policy objects made in code instead of loaded from files.

use std::path::PathBuf;

use http::header::HeaderName;
use tollgate_policy::pattern::PathPattern;
use tollgate_policy::snapshot::{ClientIdPolicy, JsonType, Mismatch, Origin, RouteAuth};
use tollgate_policy::{Route, RouteAction};

/// A JWT route on `path` with the default client-id policy.
pub fn route(path: &str) -> Route {
    Route {
        name: "test".into(),
        methods: None,
        path: PathPattern::parse(path).expect("a valid pattern"),
        action: RouteAction::Forward,
        auth: RouteAuth::Jwt,
        upstream_credential: None,
        pass_api_key: false,
        opaque_body_types: Vec::new(),
        client_id: Some(client_id_policy()),
        max_upload_bytes: None,
        limits: Vec::new(),
        username_fields: Vec::new(),
        origin: Origin {
            file: PathBuf::from("test.toml"),
            line: 1,
            column: 1,
        },
    }
}

/// The default policy: injected everywhere, mismatches refused.
pub fn client_id_policy() -> ClientIdPolicy {
    ClientIdPolicy {
        query: true,
        header: Some(HeaderName::from_static("x-client-id")),
        json: true,
        form: true,
        names: vec!["clientId".into()],
        json_pointer: Vec::new(),
        on_mismatch: Mismatch::Reject,
        allow_non_object_json: false,
        max_body_bytes: 1024 * 1024,
        json_type: JsonType::Claim,
    }
}
