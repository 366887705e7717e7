//! What `deploy/` ships that a running gateway can check: the Grafana dashboard graphs
//! only metrics the gateway exports (a renamed metric would leave a panel silently
//! empty). The manifests themselves are checked by `tests/tools/deploy_checks.py` in CI.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::{raw, repo, shipped_config, GatewayProcess, RedisServer, TempDir};

/// The metric names in a PromQL expression (histogram series by their family name).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tollgate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.push(family.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_dashboard_graphs_only_metrics_the_gateway_exports() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/tollgate.json")).unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    let mut wanted = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}: no query", panel["title"]);
        for target in targets {
            let names = metric_names(target["expr"].as_str().unwrap());
            assert!(!names.is_empty(), "{}: no tollgate metric", panel["title"]);
            wanted.extend(names);
        }
    }
    // The migration panel is the dashboard's reason to exist.
    assert!(wanted.contains("tollgate_api_key_requests_total"));
    assert!(wanted.contains("tollgate_auth_total"));

    // The shipped configuration with Redis, so the store's metrics exist too.
    let redis = RedisServer::start();
    let dir = TempDir::new();
    let config = shipped_config(dir.path(), "http://127.0.0.1:9", |_, text| text);
    // `sync` is the embedded ledger's setting, refused with Redis.
    let mut text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("sync = \"before_forwarding\"", "");
    text.push_str(&format!("\n[store]\nredis_url = \"{}\"\n", redis.url()));
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::start(&config);
    gateway.wait_ready().await;
    // Series appear once something was counted: a legacy-key call (forwarded to an
    // upstream that is not there: a 502 and an upstream latency) and a refused key.
    for key in ["demo-legacy-key-1001", "not-a-key"] {
        let request = format!(
            "GET /campaigns/42 HTTP/1.1\r\nhost: gateway.test\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n"
        );
        let status = raw(gateway.addr, request.as_bytes()).await.status;
        assert!(status == 502 || status == 401, "{key}: {status}");
    }
    let metrics = raw(
        gateway.admin,
        b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .await;
    let exported: BTreeSet<String> = String::from_utf8_lossy(&metrics.body)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard graphs metrics the gateway does not export: {missing:?}"
    );
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(tollgate_x_seconds_bucket[5m]))) / tollgate_y_total"),
        ["tollgate_x_seconds", "tollgate_y_total"]
    );
}

/// Every configuration we ship that meters provider calls settles hang-ups: with the
/// default (refund), a caller who hangs up gets the call placed for free.
#[test]
fn shipped_configurations_that_meter_settle_hang_ups() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for config in ["gateway.toml", "deploy/gateway.toml"] {
        let snapshot = tollgate_policy::load(&root.join(config)).unwrap();
        let metered = snapshot.routes.iter().any(|r| r.cost.is_some());
        let credits = snapshot.credits.as_ref().unwrap();
        assert!(
            metered,
            "{config} meters nothing any more: revisit this test"
        );
        assert_eq!(
            credits.on_client_abort,
            tollgate_policy::snapshot::ClientAbort::Settle,
            "{config}"
        );
    }
}
