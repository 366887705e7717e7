//! Hot reload and graceful shutdown of the real process.

use std::time::{Duration, Instant};

use crate::support::{eventually, raw, GatewayProcess, Harness, Setup};

const DENY_ECHO: &str = r#"
[[route]]
name = "admin-closed"
path = "/admin/*"
action = "deny"

[[route]]
name = "echo-closed"
path = "/echo/*"
action = "deny"
"#;

#[tokio::test]
async fn an_edited_policy_is_picked_up_by_the_watcher() {
    let h = Harness::start().await;
    assert_eq!(h.get("/echo/a", &[]).await.status, 200);
    std::fs::write(h.policy_path("10-closed.toml"), DENY_ECHO).unwrap();
    let denied = eventually(Duration::from_secs(10), || async {
        h.get("/echo/a", &[]).await.status == 403
    })
    .await;
    assert!(
        denied,
        "the edit was not applied; logs:\n{}",
        h.gateway.stderr()
    );
    assert!(h
        .metrics()
        .await
        .contains("tollgate_config_reloads_total{result=\"success\"} 1"));

    // A new file is noticed too.
    std::fs::write(
        h.policy_path("05-open.toml"),
        "[[route]]\nname = \"echo-open\"\npath = \"/echo/open\"\nauth = \"none\"\n",
    )
    .unwrap();
    let open = eventually(Duration::from_secs(10), || async {
        h.get("/echo/open", &[]).await.status == 200
    })
    .await;
    assert!(open);
    assert_eq!(h.get("/echo/other", &[]).await.status, 403);
}

#[tokio::test]
async fn start_up_warnings_are_logged_in_the_configured_format() {
    let h = Harness::with(Setup {
        extra: "[tracing]\nservice_name = \"lifecycle\"\n".into(),
        ..Setup::default()
    })
    .await;
    assert!(
        h.gateway
            .wait_for_log("configuration warning", Duration::from_secs(5))
            .await
    );
    let log = h.gateway.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("service_name has no effect"))
        .unwrap_or_else(|| panic!("{log}"));
    let record: serde_json::Value = serde_json::from_str(line).expect("a JSON record");
    assert_eq!(record["level"], "WARN", "{line}");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a plain line in a JSON log: {line}"
        );
    }
}

#[tokio::test]
async fn an_invalid_edit_keeps_the_old_snapshot_serving() {
    // A configuration that also carries a warning: a rejected reload must not log it
    // as one of the errors that refused it.
    let h = Harness::with(Setup {
        extra: "[tracing]\nservice_name = \"lifecycle\"\n".into(),
        ..Setup::default()
    })
    .await;
    std::fs::write(
        h.policy_path("10-closed.toml"),
        "[[route]]\nname = \"admin-closed\"\npath = \"/admin/*\"\naction = \"deny\"\n\n[[route]]\nname = \"broken\"\npth = \"/echo/*\"\naction = \"deny\"\n",
    )
    .unwrap();
    let counted = eventually(Duration::from_secs(10), || async {
        h.metrics()
            .await
            .contains("tollgate_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    assert!(
        counted,
        "the failed reload was not counted: {}\n{}",
        h.metrics().await,
        h.gateway.stderr()
    );
    let said = h
        .gateway
        .wait_for_log(
            "10-closed.toml:8:1: error: [[route]]: unknown field `pth`",
            Duration::from_secs(5),
        )
        .await;
    assert!(
        said,
        "the log must say where and why:\n{}",
        h.gateway.stderr()
    );
    assert!(
        h.gateway
            .wait_for_log("reload refused", Duration::from_secs(5))
            .await
    );
    let log = h.gateway.stderr();
    let summary = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        summary.contains("\"errors\":1") && summary.contains("\"warnings\":1"),
        "{summary}"
    );
    for line in log
        .lines()
        .filter(|l| l.contains("service_name has no effect"))
    {
        assert!(
            !line.contains("\"ERROR\""),
            "a warning logged as an error: {line}"
        );
    }
    assert_eq!(
        h.get("/echo/still", &[]).await.status,
        200,
        "old snapshot must keep serving"
    );
    assert_eq!(h.get("/admin", &[]).await.status, 403);

    std::fs::write(h.policy_path("10-closed.toml"), DENY_ECHO).unwrap();
    let fixed = eventually(Duration::from_secs(10), || async {
        h.get("/echo/a", &[]).await.status == 403
    })
    .await;
    assert!(fixed, "a corrected file must be applied");
}

#[tokio::test]
async fn writing_the_file_a_refused_edit_named_retries_it() {
    let h = Harness::start().await;
    let config = h.dir.path().join("gateway.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[api_keys]\nfile = \"keys/api-keys.toml\"\n");
    std::fs::write(&config, text).unwrap();
    assert!(
        h.gateway
            .wait_for_log("reload refused", Duration::from_secs(10))
            .await,
        "{}",
        h.gateway.stderr()
    );
    // The file the edit names is written afterwards, gateway.toml left as it is.
    std::fs::create_dir_all(h.dir.path().join("keys")).unwrap();
    std::fs::write(
        h.dir.path().join("keys/api-keys.toml"),
        format!(
            "[[key]]\nid = \"k\"\nclient_id = \"1001\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let applied = eventually(Duration::from_secs(10), || async {
        h.metrics()
            .await
            .contains("tollgate_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    assert!(applied, "{}\n{}", h.metrics().await, h.gateway.stderr());
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let h = Harness::with(Setup {
        reload: "watch = false".into(),
        ..Setup::default()
    })
    .await;
    std::fs::write(h.policy_path("10-closed.toml"), DENY_ECHO).unwrap();
    assert_eq!(
        h.get("/echo/a", &[]).await.status,
        200,
        "nothing reloads without the watcher or a signal"
    );
    h.gateway.signal("HUP");
    let denied = eventually(Duration::from_secs(10), || async {
        h.get("/echo/a", &[]).await.status == 403
    })
    .await;
    assert!(
        denied,
        "SIGHUP did not reload; logs:\n{}",
        h.gateway.stderr()
    );
}

#[tokio::test]
async fn a_request_in_flight_finishes_under_its_own_snapshot() {
    let h = Harness::start().await;
    let addr = h.gateway.addr;
    let slow = tokio::spawn(async move {
        crate::support::raw(
            addr,
            b"GET /echo/slow?delay_ms=1500 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.backend.requests() == 1
        })
        .await
    );
    std::fs::write(h.policy_path("10-closed.toml"), DENY_ECHO).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.get("/echo/a", &[]).await.status == 403
        })
        .await
    );
    let response = slow.await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["path"], "/echo/slow");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let mut h = Harness::start().await;
    let addr = h.gateway.addr;
    let slow = tokio::spawn(async move {
        crate::support::raw(
            addr,
            b"POST /echo/drain?delay_ms=2000 HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.backend.requests() == 1
        })
        .await
    );
    h.gateway.signal("TERM");
    // While it drains, the admin listener still answers: not ready, but alive (a
    // liveness probe that found the port closed would kill it mid-drain).
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.gateway.readyz().await == 503
        })
        .await
    );
    let health = crate::support::raw(
        h.gateway.admin,
        b"GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(health.status, 200);
    assert!(
        !slow.is_finished(),
        "the check ran while the request was in flight"
    );
    let response = slow.await.unwrap();
    assert_eq!(response.status, 200, "the in-flight request must complete");
    assert_eq!(response.json()["body"]["bytes"], 5);
    let status = h
        .gateway
        .wait_exit(Duration::from_secs(10))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_delay_keeps_serving_while_readiness_says_no() {
    let mut h = Harness::with(Setup {
        server: "drain_delay = \"1500ms\"".into(),
        ..Setup::default()
    })
    .await;
    // A keep-alive connection opened before the signal.
    let mut kept = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let request = b"GET /echo/kept HTTP/1.1\r\nhost: gw.test\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut kept, request)
        .await
        .unwrap();
    let r = crate::support::read_response(&mut kept).await;
    assert_eq!((r.status, r.header("connection")), (200, None));
    let started = Instant::now();
    h.gateway.signal("TERM");
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.gateway.readyz().await == 503
        })
        .await
    );
    // A balancer that has not polled yet still sends here: new connections are served.
    let r = h.get("/echo/late", &[]).await;
    assert_eq!(r.status, 200, "{}", h.gateway.stderr());
    // A kept connection is served and told to leave, so its client's next request goes
    // elsewhere instead of meeting the connection closed under it when the delay ends.
    tokio::io::AsyncWriteExt::write_all(&mut kept, request)
        .await
        .unwrap();
    let r = crate::support::read_response(&mut kept).await;
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    let mut rest = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncReadExt::read(&mut kept, &mut rest),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "closed after the answer: {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the check was too late"
    );
    let status = h
        .gateway
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the delay and the drain");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(h
        .gateway
        .stderr()
        .contains("still accepting until the drain delay ends"));
}

#[tokio::test]
async fn the_drain_is_bounded_by_the_grace_period() {
    let mut h = Harness::with(Setup {
        server: "shutdown_grace = \"300ms\"".into(),
        ..Setup::default()
    })
    .await;
    let addr = h.gateway.addr;
    let _stuck = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            b"GET /echo/stuck?delay_ms=20000 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.backend.requests() == 1
        })
        .await
    );
    let started = Instant::now();
    h.gateway.signal("TERM");
    let status = h
        .gateway
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the grace period");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(h.gateway.stderr().contains("grace period ended"));
}

/// The value of the series `series` (its exact name and labels) in a scrape.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

#[tokio::test]
async fn latency_is_kept_per_route_method_and_class_across_a_reload() {
    let h = Harness::with(Setup {
        reload: "watch = false".into(),
        ..Setup::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(h.get("/echo/a?delay_ms=30", &[]).await.status, 200);
    }
    assert_eq!(h.send("POST", "/echo/b", &[], b"x").await.status, 200);
    assert_eq!(h.get("/admin/x", &[]).await.status, 403);
    assert_eq!(h.get("/nowhere", &[]).await.status, 404);

    let scrape = h.metrics().await;
    let echo_get =
        "tollgate_request_duration_seconds_count{route=\"echo\",method=\"GET\",class=\"2xx\"}";
    assert_eq!(sample(&scrape, echo_get), 3.0);
    // The backend waited 30 ms each time: no GET to the echo route finished within 25 ms.
    let fast = "tollgate_request_duration_seconds_bucket{route=\"echo\",method=\"GET\",class=\"2xx\",le=\"0.025\"}";
    assert_eq!(sample(&scrape, fast), 0.0);
    let sum = sample(
        &scrape,
        "tollgate_request_duration_seconds_sum{route=\"echo\",method=\"GET\",class=\"2xx\"}",
    );
    assert!(sum >= 0.09, "{sum}");
    let inf = "tollgate_request_duration_seconds_bucket{route=\"echo\",method=\"GET\",class=\"2xx\",le=\"+Inf\"}";
    assert_eq!(sample(&scrape, inf), 3.0);
    assert_eq!(
        sample(
            &scrape,
            "tollgate_request_duration_seconds_count{route=\"echo\",method=\"POST\",class=\"2xx\"}"
        ),
        1.0
    );
    // Refusals count under their route, or `-` before any route matched; only
    // forwarded requests have an upstream time.
    assert_eq!(
        sample(
            &scrape,
            "tollgate_request_duration_seconds_count{route=\"admin-closed\",method=\"GET\",class=\"4xx\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "tollgate_request_duration_seconds_count{route=\"-\",method=\"GET\",class=\"4xx\"}"
        ),
        1.0
    );
    let upstream = "tollgate_upstream_response_seconds_count{route=\"echo\"}";
    assert_eq!(sample(&scrape, upstream), 4.0);
    let upstream_sum = sample(
        &scrape,
        "tollgate_upstream_response_seconds_sum{route=\"echo\"}",
    );
    assert!(
        upstream_sum >= 0.09 && upstream_sum <= sum + 1.0,
        "{upstream_sum}"
    );
    assert!(!scrape.contains("tollgate_upstream_response_seconds_count{route=\"admin-closed\"}"));
    // Four forwarded requests over pooled connections: at least one connect, at most one
    // each, none failed.
    let connects = sample(
        &scrape,
        "tollgate_upstream_connect_seconds_count{result=\"ok\"}",
    );
    assert!((1.0..=4.0).contains(&connects), "{connects}");
    let failed = "tollgate_upstream_connect_seconds_count{result=\"error\"}";
    assert_eq!(sample(&scrape, failed), 0.0);

    // A reload (here one that closes the route) keeps what was counted.
    std::fs::write(h.policy_path("10-closed.toml"), DENY_ECHO).unwrap();
    h.gateway.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || async {
            h.get("/echo/a", &[]).await.status == 403
        })
        .await
    );
    // (The loop above may have reached the echo route once more before the reload.)
    let after = h.metrics().await;
    assert!(sample(&after, echo_get) >= 3.0, "{after}");
    assert!(sample(&after, upstream) >= 4.0, "{after}");
    assert!(
        sample(
            &after,
            "tollgate_request_duration_seconds_count{route=\"echo-closed\",method=\"GET\",class=\"4xx\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn a_scraper_that_asks_for_openmetrics_gets_it_with_the_same_series() {
    let h = Harness::start().await;
    assert_eq!(h.get("/echo/a", &[]).await.status, 200);
    assert_eq!(h.get("/admin/x", &[]).await.status, 403);
    let scrape = |accept: &'static str| {
        let admin = h.gateway.admin;
        async move {
            let request = format!(
                "GET /metrics HTTP/1.1\r\nhost: admin\r\n{accept}connection: close\r\n\r\n"
            );
            raw(admin, request.as_bytes()).await
        }
    };
    let plain = scrape("").await;
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // Prometheus's own Accept header.
    let open = scrape("accept: application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2\r\n").await;
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    // Refused with q=0: the plain format.
    let refused = scrape("accept: application/openmetrics-text;q=0, text/plain\r\n").await;
    assert_eq!(
        refused.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // Preferred less than the text format: the text format.
    let second = scrape("accept: text/plain;q=1, application/openmetrics-text;q=0.5\r\n").await;
    assert_eq!(
        second.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    let plain = String::from_utf8(plain.body).unwrap();
    let open = String::from_utf8(open.body).unwrap();
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(!plain.contains("# EOF"), "{plain}");
    // A series as a name and its labels in order of name, bucket bounds as numbers:
    // OpenMetrics puts `le` first and writes `1.0` where the other writes `1`.
    let series = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
            .map(|s| {
                let Some((name, labels)) = s.split_once('{') else {
                    return s.to_owned();
                };
                let mut labels: Vec<String> = labels
                    .trim_end_matches('}')
                    .split("\",")
                    .map(|l| {
                        let (key, value) = l.split_once("=\"").unwrap();
                        let value = value.trim_end_matches('"');
                        match value.parse::<f64>() {
                            Ok(n) if key == "le" => format!("le={n}"),
                            _ => format!("{key}={value}"),
                        }
                    })
                    .collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            })
            .collect()
    };
    let plain_series = series(&plain);
    assert_eq!(plain_series, series(&open));
    for expected in [
        "tollgate_responses_total{class=2xx}",
        "tollgate_responses_total{class=4xx}",
        "tollgate_request_duration_seconds_count{class=2xx,method=GET,route=echo}",
        "tollgate_request_duration_seconds_bucket{class=4xx,le=0.001,method=GET,route=admin-closed}",
        "tollgate_request_duration_seconds_bucket{class=4xx,le=inf,method=GET,route=admin-closed}",
        "tollgate_problems_total{code=FORBIDDEN}",
    ] {
        assert!(plain_series.contains(expected), "{expected} in {plain_series:?}");
    }
    assert!(
        open.contains("# TYPE tollgate_responses counter\n"),
        "{open}"
    );
    assert!(
        plain.contains("# TYPE tollgate_responses_total counter\n"),
        "{plain}"
    );
}

/// A second gateway on the same address binds beside the first (SO_REUSEPORT, as an
/// overlapping restart needs) and says so: started by mistake, it would take half the
/// connections without the first's ledger and sessions.
#[tokio::test]
async fn a_second_gateway_on_a_taken_address_says_so() {
    let h = Harness::start().await;
    let config = h.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let port = h.gateway.addr.port();
    let second_config = h.dir.path().join("second.toml");
    std::fs::write(
        &second_config,
        text.replacen(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{port}\"]"),
            1,
        ),
    )
    .unwrap();
    let second = GatewayProcess::start(&second_config);
    assert_eq!(second.addr.port(), port);
    assert!(
        second
            .wait_for_log("another process listens", Duration::from_secs(5))
            .await,
        "{}",
        second.stderr()
    );
    assert!(!h.gateway.stderr().contains("another process listens"));
}

/// A file written while a reload runs (the second half of an in-place write, an
/// editor's second save) is loaded again: the watcher reads the files after each load,
/// and does not take what changed meanwhile as loaded (found by review: with a slow load
/// the second version stayed unserved until some later edit).
#[tokio::test]
async fn an_edit_made_while_a_reload_runs_is_loaded_too() {
    let h = Harness::start().await;
    // Enough routes that a load takes a while (a debug build: about a second). The
    // routes told apart deny (403), as no other route answers their paths (404).
    let filler: String = (0..3000)
        .map(|i| {
            format!("[[route]]\nname = \"f{i}\"\npath = \"/filler/{i}/*\"\nauth = \"none\"\n\n")
        })
        .collect();
    let version = |name: &str| {
        format!("{filler}[[route]]\nname = \"{name}\"\npath = \"/{name}/*\"\naction = \"deny\"\n")
    };
    let file = h.policy_path("97-race.toml");
    let write = |text: String| {
        let tmp = h.dir.path().join("race.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write(version("first"));
    assert!(
        h.gateway
            .wait_for_log(
                "configuration files changed: reloading",
                Duration::from_secs(10)
            )
            .await
    );
    // Mid-load (or just after it, on a fast machine: then it is an ordinary edit).
    tokio::time::sleep(Duration::from_millis(150)).await;
    write(version("second"));
    let served = eventually(Duration::from_secs(20), || async {
        h.get("/second/x", &[]).await.status == 403
    })
    .await;
    assert!(
        served,
        "the second version was never loaded:\n{}",
        h.gateway.stderr()
    );
    assert_eq!(h.get("/first/x", &[]).await.status, 404);
}

/// What is bound at start-up stays as it was on a reload, and the reload says so: a
/// changed log format used to switch the access lines alone (one stream, two formats),
/// and a changed `h2c` took effect though it needs a restart.
#[tokio::test]
async fn settings_bound_at_start_up_are_kept_on_a_reload_and_named() {
    let h = Harness::start().await;
    let config = h.dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let edited = text
        .replace("format = \"json\"", "format = \"text\"")
        .replacen("[server]\n", "[server]\nh2c = true\n", 1);
    assert_ne!(edited, text);
    std::fs::write(&config, edited).unwrap();
    assert!(
        h.gateway
            .wait_for_log("bound at start-up", Duration::from_secs(10))
            .await,
        "{}",
        h.gateway.stderr()
    );
    let warning = h
        .gateway
        .stderr()
        .lines()
        .find(|l| l.contains("bound at start-up"))
        .unwrap()
        .to_owned();
    assert!(
        warning.contains("server.h2c") && warning.contains("log.format"),
        "{warning}"
    );
    // The access line of a request after the reload is JSON still.
    let r = h.gateway.access_line(&{
        let resp = h
            .get("/echo/open/x", &[("x-request-id", "after-reload-1")])
            .await;
        assert_eq!(resp.status, 200);
        "after-reload-1".to_owned()
    });
    assert!(r.is_some(), "{}", h.gateway.stderr());
    // And HTTP/2 with prior knowledge is still not spoken on the plain listener.
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .map_or(0, |r| r.unwrap_or(0));
    // An h2c listener answers with its SETTINGS frame (type 4); this one closes.
    assert!(n < 9 || buf[3] != 4, "{:?}", &buf[..n]);
}
