//! Builders for unit tests: policy objects and exchanges made in code, from
//! configuration text loaded from memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::header::HeaderName;
use tollgate_policy::pattern::PathPattern;
use tollgate_policy::snapshot::{ClientIdPolicy, JsonType, Mismatch, Origin, RouteAuth, Upstream};
use tollgate_policy::sources::InMemory;
use tollgate_policy::{Route, RouteAction, Snapshot};

use crate::access_log::AccessLog;
use crate::exchange::{Exchange, Scheme};
use crate::metrics::Metrics;

/// An http upstream at `authority` (`host:port`) with base path `base`.
pub fn upstream(authority: &'static str, base: &str) -> Upstream {
    let second = std::time::Duration::from_secs(1);
    Upstream {
        authority: http::uri::Authority::from_static(authority),
        base_path: base.to_owned(),
        connect_timeout: second,
        response_timeout: second,
        pool_idle_timeout: second,
        pool_max_idle: 1,
        tls: None,
    }
}

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
        cors: None,
        cost: None,
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

/// A snapshot with one anonymous route, `/x/*` for GET, loaded from memory.
pub fn snapshot_with_route() -> Arc<Snapshot> {
    let sources = InMemory::new()
        .file(
            "/t/gateway.toml",
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[routing]\npolicies = \"p\"\n",
        )
        .file(
            "/t/p/a.toml",
            "[[route]]\nname = \"x\"\nmethods = [\"GET\"]\npath = \"/x/*\"\nauth = \"none\"\n",
        );
    Arc::new(tollgate_policy::load_from(Path::new("/t/gateway.toml"), &sources).expect("loads"))
}

/// A fresh exchange for a request from 127.0.0.1, judged by `snapshot`.
pub fn exchange_for(snapshot: &Arc<Snapshot>) -> Exchange<'_> {
    let client = "127.0.0.1".parse().expect("an address");
    let log = AccessLog::start(
        Arc::new(|_| {}),
        Arc::clone(snapshot),
        Arc::new(Metrics::default()),
        "test-1",
        &http::Method::GET,
        "/x",
        None,
        client,
        None,
    );
    Exchange {
        snapshot,
        worker: 0,
        peer: client,
        client,
        scheme: Scheme::Http,
        request_id: "test-1".into(),
        trace: crate::trace_context::TraceContext::from_headers(&http::HeaderMap::new(), 0.0, true),
        now: 0,
        route: None,
        caller: Default::default(),
        rate_limit: None,
        cors: Default::default(),
        metering: Default::default(),
        hold: None,
        key_claim: None,
        own_answer: false,
        in_flight: None,
        log,
    }
}
