//! `tollgate check` and `tollgate explain`, as an operator runs them.

use std::path::Path;
use std::process::Command;

use crate::support::TempDir;

pub fn tollgate(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn repo_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn the_shipped_configuration_passes_check() {
    let (ok, out) = tollgate(&["check", "--config", &repo_file("gateway.toml")]);
    assert!(ok, "{out}");
    assert!(out.contains(": ok ("), "{out}");
    // ...and says loudly that its keys are the published development ones.
    assert!(
        out.contains("warning: [[jwt.key]] secret `dev-keys/jwt-hs256.secret` is a published development key"),
        "{out}"
    );
}

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let dir = TempDir::new();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = [\"127.0.0.1:notaport\"]\nheader_read_timeout = \"10 seconds\"\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\nconect_timeout = \"1s\"\n\n[routing]\npolicies = \"policies\"\n\n[bogus]\nx = 1\n",
    )
    .unwrap();
    std::fs::write(
        policies.join("a.toml"),
        "[[route]]\nname = \"a\"\npath = \"/a/../b\"\n\n[[route]]\nname = \"a\"\npath = \"/ok\"\nmethods = [\"get\"]\n\n[[route]]\nname = \"c\"\npth = \"/c\"\n\n[[route]]\nname = \"d\"\npath = \"/d\"\naction = \"allow\"\n",
    )
    .unwrap();
    std::fs::write(policies.join("b.toml"), "[[route]\nname = 3\n").unwrap();
    let config = dir.path().join("gateway.toml").display().to_string();
    let (ok, out) = tollgate(&["check", "--config", &config]);
    assert!(!ok, "check must fail: {out}");
    let gw = config.as_str();
    let a = policies.join("a.toml").display().to_string();
    let b = policies.join("b.toml").display().to_string();
    for expected in [
        format!("{gw}:2:11: error: `127.0.0.1:notaport` is not a socket address"),
        format!("{gw}:3:23: error: `10 seconds` has no valid unit"),
        format!("{gw}:7:1: error: [upstream]: unknown field `conect_timeout`"),
        format!("{gw}:12:2: error: unknown section `bogus`"),
        format!("{a}:3:8: error: route `a`: path pattern `/a/../b` contains a dot segment"),
        format!("{a}:6:8: error: route name `a` is already used at {a}:2:8"),
        format!("{a}:8:12: error: route `a`: `get` is not an HTTP method"),
        format!("{a}:12:1: error: [[route]]: unknown field `pth`"),
        format!("{a}:17:10: error: [[route]]: unknown variant `allow`"),
        format!("{b}:1:9: error: TOML syntax: unclosed array table"),
    ] {
        assert!(out.contains(&expected), "missing `{expected}` in:\n{out}");
    }
    let no_jwt = "needs JWT authentication but gateway.toml has no [jwt]";
    assert!(
        out.contains(&format!("{a}:2:8: error: route `a`: {no_jwt}")),
        "{out}"
    );
    // Route `d`'s misspelt action does not hide what else is wrong with it.
    assert!(
        out.contains(&format!("{a}:15:8: error: route `d`: {no_jwt}")),
        "{out}"
    );
    assert!(out.contains("13 error(s)"), "{out}");
}

#[test]
fn a_policy_file_that_cannot_be_read_is_an_error_not_skipped() {
    let dir = TempDir::new();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[routing]\npolicies = \"policies\"\nunmatched = \"forward\"\n",
    )
    .unwrap();
    std::fs::write(
        policies.join("20-public.toml"),
        "[[route]]\nname = \"public\"\npath = \"/*\"\nauth = \"none\"\n",
    )
    .unwrap();
    // A deny file whose ConfigMap key is gone (its link dangles), and one that is a
    // directory: skipping them would open what they closed.
    std::os::unix::fs::symlink(
        "/nonexistent/10-closed.toml",
        policies.join("10-closed.toml"),
    )
    .unwrap();
    std::fs::create_dir(policies.join("11-more.toml")).unwrap();
    // Saved in Latin-1: pointed at the first byte that is not UTF-8.
    std::fs::write(
        policies.join("12-latin1.toml"),
        b"[[route]]\nname = \"caf\xe9\"\n",
    )
    .unwrap();
    // An editor's lock link is hidden, and ignored.
    std::os::unix::fs::symlink("user@host.1234", policies.join(".#20-public.toml")).unwrap();
    let config = dir.path().join("gateway.toml").display().to_string();
    let (ok, out) = tollgate(&["check", "--config", &config]);
    assert!(!ok, "check must fail: {out}");
    let closed = policies.join("10-closed.toml").display().to_string();
    let more = policies.join("11-more.toml").display().to_string();
    assert!(
        out.contains(&format!("{closed}:1:1: error: cannot read file")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{more}:1:1: error: cannot read file")),
        "{out}"
    );
    let latin1 = policies.join("12-latin1.toml").display().to_string();
    assert!(
        out.contains(&format!("{latin1}:2:12: error: not UTF-8")),
        "{out}"
    );
    assert!(out.contains("3 error(s)"), "{out}");
    assert!(!out.contains(".#20-public.toml"), "{out}");
}

#[test]
fn check_refuses_what_run_could_not_serve() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    let gateway = |admin: &str, credits: &str| {
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!("[server]\nlisten = [\"127.0.0.1:18080\"]\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[routing]\npolicies = \"policies\"\n\n[admin]\nlisten = \"{admin}\"\n\n[credits]\npath = \"state/l.redb\"\n{credits}\n"),
        )
        .unwrap();
        let config = dir.path().join("gateway.toml").display().to_string();
        tollgate(&["check", "--config", &config])
    };
    // The admin listener on the data plane's port, an opening-balances file that is not
    // there: each reported where it is written.
    let (ok, out) = gateway("127.0.0.1:18080", "opening_balances = \"credits/nope.csv\"");
    assert!(!ok, "{out}");
    assert!(
        out.contains(":11:10: error: [admin] listen: 127.0.0.1:18080 is a [server] listener"),
        "{out}"
    );
    assert!(
        out.contains(":15:20: error: [credits] opening_balances: cannot read"),
        "{out}"
    );
    // A file that is there but that the gateway could not credit.
    std::fs::create_dir_all(dir.path().join("credits")).unwrap();
    std::fs::write(
        dir.path().join("credits/open.csv"),
        "clientId,balance\n1001,5\n1001,7\nbad id,1\n",
    )
    .unwrap();
    let (ok, out) = gateway("127.0.0.1:18081", "opening_balances = \"credits/open.csv\"");
    assert!(!ok, "{out}");
    assert!(
        out.contains("open.csv:3:1: error: client 1001 appears more than once (first: line 2)"),
        "{out}"
    );
    assert!(
        out.contains("open.csv:4:1: error: client \"bad id\": not a client id"),
        "{out}"
    );
    std::fs::write(
        dir.path().join("credits/open.csv"),
        "clientId,balance\n1001,5\n",
    )
    .unwrap();
    let (ok, out) = gateway("127.0.0.1:18081", "opening_balances = \"credits/open.csv\"");
    assert!(ok, "{out}");
    // State where nothing can be written (as under systemd's ProtectSystem=strict; the
    // tests run as root, so a read-only file system stands in for permissions).
    std::fs::write(
        dir.path().join("gateway.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[routing]\npolicies = \"policies\"\n\n[store]\npath = \"/proc/tollgate-check/s.redb\"\n\n[credits]\npath = \"/proc/tollgate-check/l.redb\"\n",
    )
    .unwrap();
    let config = dir.path().join("gateway.toml").display().to_string();
    let (ok, out) = tollgate(&["check", "--config", &config]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "/proc/tollgate-check/l.redb: error: [credits] path: the ledger cannot be written here"
        ),
        "{out}"
    );
    assert!(
        out.contains("/proc/tollgate-check/s.redb: warning: [store] path"),
        "{out}"
    );
}

#[test]
fn explain_plays_the_request_and_shows_the_route_s_policy() {
    let config = repo_file("gateway.toml");
    let (ok, out) = tollgate(&["explain", "GET", "/pub/%2e%2e/admin", "--config", &config]);
    assert!(ok, "{out}");
    assert!(out.contains("normalized: /admin"), "{out}");
    assert!(out.contains("`admin-closed`"), "{out}");
    assert!(out.contains("outcome:    403 FORBIDDEN"), "{out}");

    // A declared length the body cannot fill is said at once, not after a 10 s wait;
    // a stand-in status no backend can answer is refused by the argument parser.
    let started = std::time::Instant::now();
    let args = ["explain", "GET", "/pub/x", "-H", "Content-Length: 5"];
    let (ok, out) = tollgate(&[&args[..], &["--config", &config]].concat());
    assert!(
        !ok && out.contains("Content-Length 5 is longer than --body (0 bytes)"),
        "{out}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let args = ["explain", "GET", "/pub/x", "--backend-status", "1000"];
    let (ok, out) = tollgate(&[&args[..], &["--config", &config]].concat());
    assert!(!ok && out.contains("1000 is not in 100..=599"), "{out}");
    // A target without its leading slash is named as that slip.
    let (ok, out) = tollgate(&["explain", "GET", "campaigns", "--config", &config]);
    assert!(
        !ok && out.contains("start it with `/` (`/campaigns`)"),
        "{out}"
    );
    // A token that would be expired when printed is not minted.
    let args = ["token", "mint", "--client", "1001", "--ttl", "0s"];
    let (ok, out) = tollgate(&[&args[..], &["--config", &config]].concat());
    assert!(!ok && out.contains("--ttl: at least 1s"), "{out}");

    // Without a token the route's 401, with the rule that asks for one.
    let (_, out) = tollgate(&["explain", "GET", "/campaigns/42?x=1", "--config", &config]);
    assert!(
        out.contains("`campaign`") && out.contains("params:   id=42"),
        "{out}"
    );
    assert!(out.contains("auth:     a JWT, or an API key"), "{out}");
    assert!(out.contains("outcome:    401 AUTH_REQUIRED"), "{out}");
    assert!(!out.contains("backend receives"), "{out}");

    // With one: what the backend is given, the credential's value never printed.
    let args = ["explain", "GET", "/campaigns/42?x=1", "--token", "1001"];
    let (_, out) = tollgate(&[&args[..], &["--config", &config]].concat());
    assert!(out.contains("outcome:    200 from the backend"), "{out}");
    assert!(
        out.contains("backend receives: GET /campaigns/42?clientId=1001&x=1"),
        "{out}"
    );
    assert!(out.contains("  + x-client-id: 1001"), "{out}");
    assert!(out.contains("  + x-api-key: <secret>"), "{out}");
    assert!(out.contains("  removed: authorization"), "{out}");
    assert!(out.contains("limit:    per-client"), "{out}");
    assert!(
        out.contains("adds:     credential `legacy-client-key`"),
        "{out}"
    );
    assert!(out.contains("client id: `clientId`"), "{out}");

    // A metered route: the cost, and the headers the client is told.
    let args = [
        "explain",
        "POST",
        "/campaigns",
        "--token",
        "1001",
        "-H",
        "Content-Type: application/json",
        "--body",
        "{}",
    ];
    let (_, out) = tollgate(&[&args[..], &["--config", &config]].concat());
    assert!(out.contains("cost:     10 token(s)"), "{out}");
    assert!(out.contains("response: x-token-balance: 490"), "{out}");
    assert!(
        out.contains("body rewritten: {\"clientId\":\"1001\"}"),
        "{out}"
    );

    let (_, out) = tollgate(&["explain", "GET", "/ADMIN", "--config", &config]);
    assert!(out.contains("404 ROUTE_NOT_FOUND"), "{out}");

    let (_, out) = tollgate(&["explain", "GET", "/pub/..%2fadmin", "--config", &config]);
    assert!(out.contains("400 PATH_INVALID"), "{out}");

    // The targets `explain` used to judge differently from the gateway: now the same
    // bytes go through the same parser and pipeline (policies/tests/10-paths.toml pins
    // each outcome, and the end-to-end suite replays it against `tollgate run`).
    let (_, out) = tollgate(&["explain", "OPTIONS", "*", "--config", &config]);
    assert!(out.contains("outcome:    204"), "{out}");
    let (_, out) = tollgate(&["explain", "GET", "/pub/a b", "--config", &config]);
    assert!(
        out.contains("outcome:    400 (HTTP refused the request"),
        "{out}"
    );
    // A method as written: the gateway refuses `get`, so `explain get` says so too.
    let (_, out) = tollgate(&["explain", "get", "/pub/x", "--config", &config]);
    assert!(out.contains("outcome:    400 REQUEST_INVALID"), "{out}");
}

#[test]
fn check_refuses_configurations_that_open_a_hole() {
    let dir = TempDir::new();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let keys = crate::support::jwt_fixtures().join("keys");
    let service_key = dir.path().join("service.key");
    std::fs::write(&service_key, "svc-key\n").unwrap();
    let client_keys = dir.path().join("client-keys.toml");
    std::fs::write(&client_keys, "\"1001\" = \"k\"\n").unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            r#"[server]
listen = ["127.0.0.1:0"]

[upstream]
url = "http://127.0.0.1:9"

[routing]
policies = "policies"

[jwt]

[[jwt.key]]
id = "mixed"
algorithms = ["RS256", "HS256"]
public_key_file = "{rsa}"

[[jwt.key]]
id = "rsa"
algorithms = ["RS256", "PS256"]
public_key_file = "{rsa}"

[credentials.service]
kind = "header"
header = "x-api-key"
value_file = "{service_key}"

[credentials.per-client]
kind = "client_map"
header = "x-api-key"
file = "{client_keys}"
"#,
            rsa = keys.join("rsa.pub.pem").display(),
            service_key = service_key.display(),
            client_keys = client_keys.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        policies.join("a.toml"),
        r#"[[route]]
name = "anonymous-with-key"
path = "/a/*"
auth = "none"
upstream_credential = "service"

[[route]]
name = "anonymous-on-purpose"
path = "/b/*"
auth = "none"
upstream_credential = "service"
allow_anonymous_credential = true

[[route]]
name = "anonymous-per-client"
path = "/c/*"
auth = "none"
upstream_credential = "per-client"
allow_anonymous_credential = true

[[route]]
name = "api"
path = "/api/*"

[[route]]
name = "api-admin-closed"
path = "/api/admin"
action = "deny"

[[route]]
name = "closed"
path = "/old/*"
action = "deny"

[[route]]
name = "old-reports"
path = "/old/reports"
methods = ["GET"]

[[route]]
name = "opaque-json"
path = "/d/*"
opaque_body_types = ["application/json", "text/csv"]

[[route]]
name = "opaque-anonymous"
path = "/e/*"
auth = "none"
opaque_body_types = ["text/csv"]

[[route]]
name = "passes-without-keys"
path = "/f/*"
pass_api_key = true
"#,
    )
    .unwrap();
    let config = dir.path().join("gateway.toml").display().to_string();
    let (ok, out) = tollgate(&["check", "--config", &config]);
    assert!(!ok, "check must fail: {out}");
    let gw = config.as_str();
    let a = policies.join("a.toml").display().to_string();
    for expected in [
        format!("{gw}:14:14: error: [[jwt.key]] algorithms: RS256 and HS256 cannot share one key"),
        format!("{a}:5:23: error: route `anonymous-with-key`: auth = \"none\" would add the backend credential `service` for anyone"),
        format!("{a}:18:23: error: route `anonymous-per-client`: `per-client` is a per-client credential"),
        format!("{a}:26:8: error: route `api-admin-closed` can never match: `api` ({a}:22) before it matches every request it would"),
        format!("{a}:36:8: warning: route `old-reports` never matches: `closed` ({a}:31) before it denies every request it would"),
        format!("{a}:43:22: error: route `opaque-json`: opaque_body_types: `application/json` covers JSON, form or multipart bodies"),
        format!("{a}:46:8: error: route `opaque-anonymous`: opaque_body_types is for routes that authenticate a caller"),
        format!("{a}:52:8: error: route `passes-without-keys`: pass_api_key passes on the key a caller authenticated with"),
    ] {
        assert!(out.contains(&expected), "missing `{expected}` in:\n{out}");
    }
    // Said on purpose, an anonymous credential is accepted; one RSA key may serve RS256
    // and PS256; one broken key is one error (no route reports a missing [jwt]).
    assert!(!out.contains("anonymous-on-purpose"), "{out}");
    assert!(!out.contains("gateway.toml:19"), "{out}");
    assert!(!out.contains("no [jwt]"), "{out}");
    // The summary says where the errors are: one in gateway.toml, six in a.toml.
    assert!(
        out.contains(&format!("7 error(s): 1 in {gw}, 6 in {a}")),
        "{out}"
    );
}
