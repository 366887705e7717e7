//! The shipped policy test cases (`policies/tests/*.toml`): `tollgate test` passes them
//! and fails an edit that changes an outcome, with the difference; and the running
//! gateway gives every case the outcome the in-process rehearsal gives, because both are
//! the same pipeline (this replays each case against a real `tollgate run` to prove it).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_policy::cases::{self, Observed};
use tollgate_proxy::rehearsal::{self, StandIn};

use crate::cli::tollgate;
use crate::support::{repo, shipped_config, GatewayProcess, TempDir};

fn shipped_cases() -> Vec<cases::Case> {
    cases::load(&repo().join("policies/tests")).unwrap_or_else(|d| panic!("{d:?}"))
}

#[test]
fn the_shipped_cases_pass() {
    let config = repo().join("gateway.toml").display().to_string();
    let (ok, out) = tollgate(&["test", "--config", &config]);
    assert!(ok, "{out}");
    let count = shipped_cases().len();
    assert!(count >= 30, "{count} cases");
    assert!(
        out.contains(&format!("{count} case(s): {count} passed, 0 failed")),
        "{out}"
    );
}

#[test]
fn an_edit_that_changes_an_outcome_fails_with_the_difference() {
    let dir = TempDir::new();
    // An operator halves the price of a campaign and, tidying up, drops the closed
    // admin route (the unmatched path is still refused, but differently).
    let config = shipped_config(dir.path(), "http://127.0.0.1:9", |name, text| match name {
        "20-legacy-api.toml" => text.replace("\ncost = { POST = 10 }", "\ncost = { POST = 5 }"),
        "10-closed.toml" => text.replacen(
            "name = \"admin-closed\"",
            "name = \"admin-closed\"\nmethods = [\"POST\"]",
            1,
        ),
        _ => text,
    });
    let cases_dir = repo().join("policies/tests").display().to_string();
    let config = config.display().to_string();
    let (ok, out) = tollgate(&["test", "--config", &config, "--cases", &cases_dir]);
    assert!(!ok, "{out}");
    let failure = |name: &str| {
        out.lines()
            .skip_while(|l| !l.contains(name))
            .take(4)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let cost = failure("creating a campaign costs 10 tokens");
    assert!(cost.starts_with("FAIL  "), "{out}");
    assert!(
        cost.contains("response header X-Token-Cost: expected \"10\", got \"5\""),
        "{out}"
    );
    assert!(
        cost.contains("response header X-Token-Balance: expected \"490\", got \"495\""),
        "{out}"
    );
    let closed = failure("the admin API is closed");
    assert!(closed.starts_with("FAIL  "), "{out}");
    assert!(closed.contains("status: expected 403, got 405"), "{out}");
    assert!(
        out.contains("passed, ") && !out.contains(" 0 failed"),
        "{out}"
    );

    // A case file with a typo is reported where it is, and nothing runs.
    let bad = dir.path().join("bad-cases");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("a.toml"),
        "[[case]]\nname = \"x\"\ntarget = \"/\"\n[case.expect]\nstatuss = 200\n",
    )
    .unwrap();
    let bad = bad.display().to_string();
    let (ok, out) = tollgate(&["test", "--config", &config, "--cases", &bad]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("a.toml:5:1") && out.contains("statuss"),
        "{out}"
    );
    assert!(out.contains("nothing was run"), "{out}");
}

/// Every shipped case against a real gateway process, each on a fresh one (fresh
/// allowances and balances, as `tollgate test` gives each case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_gateway_gives_every_shipped_case_its_outcome() {
    let backend = StandIn::start().await.unwrap();
    let upstream = format!("http://{}", backend.addr);
    let mut failures = Vec::new();
    let cases = shipped_cases();
    for case in &cases {
        // Replayed over a socket, the peer is this host; no shipped case says otherwise.
        assert_eq!(case.peer, cases::DEFAULT_PEER, "{}", case.name);
        let dir = TempDir::new();
        let config = shipped_config(dir.path(), &upstream, |_, text| text);
        let snapshot = tollgate_policy::load(&config).unwrap();
        let gateway = GatewayProcess::start(&config);
        gateway.wait_ready().await;
        let token = case
            .token
            .as_ref()
            .map(|claims| rehearsal::sign(&snapshot, claims).unwrap());
        backend.prepare(&case.backend);
        let bytes = exchange(gateway.addr, &case.raw_request(token.as_deref())).await;
        let mut observed = Observed::from_response(&bytes)
            .unwrap_or_else(|| panic!("{}: not a response: {bytes:?}", case.name));
        if let Some(id) = observed.header("x-request-id").map(str::to_owned) {
            let line = gateway.access_line(&id);
            observed.route = line
                .and_then(|l| l["route"].as_str().map(str::to_owned))
                .filter(|r| r != "-");
        }
        observed.upstream = backend.take();
        let diffs = case.compare(&observed, &[]);
        if !diffs.is_empty() {
            failures.push(format!("{}:\n    {}", case.name, diffs.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "the running gateway disagrees with {} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Writes `request` on a fresh connection and reads to its end.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A refusal can come before the whole request is taken: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    bytes
}
