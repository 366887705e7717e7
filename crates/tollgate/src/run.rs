//! The process lifecycle of `tollgate run` and `tollgate demo`: runtime, listeners,
//! signals (SIGHUP reloads; SIGTERM and SIGINT drain and exit 0), and the ready lines
//! on stdout that scripts and tests wait for.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tollgate_policy::Snapshot;
use tollgate_proxy::Gateway;

/// What `tollgate demo` adds: the demo backend's address and a token to try.
pub struct Demo {
    pub backend: SocketAddr,
    pub token: Option<String>,
    /// An origin the default CORS policy allows, for the printed preflight.
    pub origin: Option<String>,
}

/// Serves `snapshot` (and, for `demo`, the demo backend) until a terminating signal,
/// then drains.
pub fn serve(config: PathBuf, snapshot: Snapshot, demo: Option<Demo>) -> ExitCode {
    let log = crate::logging::init(&snapshot.log);
    for warning in &snapshot.warnings {
        tracing::warn!(diagnostic = %warning, "configuration warning");
    }
    let access_sink = log.access_sink();
    // The control runtime: signals, reload, the admin listener (and the demo backend).
    // The data plane runs on its own per-core worker runtimes (see tollgate_proxy::Gateway).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Signal handlers exist before the ready line, so an early SIGHUP cannot kill us.
        let (Ok(hangup), Ok(terminate), Ok(interrupt)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        let _backend = match &demo {
            Some(Demo { backend: addr, .. }) => match tollgate_demo_backend::spawn(*addr).await {
                Ok(backend) => Some(backend),
                Err(e) => {
                    eprintln!("cannot start the demo backend on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        let gateway = match Gateway::bind(snapshot, access_sink).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("cannot bind the listeners: {e}");
                return ExitCode::FAILURE;
            }
        };
        announce(&gateway, demo.as_ref());
        let reloader = tokio::spawn(crate::reload::watch(config, gateway.handle(), hangup));
        gateway.serve(terminated(terminate, interrupt)).await;
        reloader.abort();
        ExitCode::SUCCESS
    })
}

/// Runs only the demo backend, until Ctrl-C or SIGTERM.
pub fn demo_backend_only(addr: SocketAddr) -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("cannot start the runtime");
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let (Ok(terminate), Ok(interrupt)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return ExitCode::FAILURE;
        };
        match tollgate_demo_backend::spawn(addr).await {
            Ok(backend) => {
                println!("demo backend listening on http://{}", backend.addr());
                let _ = std::io::stdout().flush();
                terminated(terminate, interrupt).await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot start the demo backend on {addr}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn terminated(mut terminate: Signal, mut interrupt: Signal) {
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}

fn announce(gateway: &Gateway, demo: Option<&Demo>) {
    let mut out = std::io::stdout().lock();
    for addr in gateway.local_addrs() {
        let _ = writeln!(out, "tollgate listening on http://{addr}");
    }
    for addr in gateway.tls_addrs() {
        let _ = writeln!(out, "tollgate listening on https://{addr}");
    }
    if let Some(addr) = gateway.admin_addr() {
        let _ = writeln!(out, "tollgate admin on http://{addr}");
    }
    if let (Some(demo), Some(gw)) = (demo, gateway.local_addrs().first()) {
        let token = demo
            .token
            .as_deref()
            .unwrap_or("(no signing key configured)");
        let _ = writeln!(
            out,
            r#"demo backend listening on http://{backend}

Log in through the gateway: the legacy login, answered with a session's tokens:
  LOGIN=$(curl -s http://{gw}/interlogue/get-client -H 'content-type: application/json' \
          -d '{{"username":"demo@acme.test","password":"demo-password"}}'); echo "$LOGIN"
  TOKEN=$(echo "$LOGIN" | sed 's/.*"token":"\([^"]*\)".*/\1/')
  REFRESH=$(echo "$LOGIN" | sed 's/.*"refreshToken":"\([^"]*\)".*/\1/')
  curl -i http://{gw}/echo/hello -H "authorization: Bearer $TOKEN"   # the backend sees clientId and x-api-key added
  curl -s http://{gw}/gateway/auth/refresh -H 'content-type: application/json' \
       -d "{{\"refreshToken\":\"$REFRESH\"}}"                        # a new pair; $REFRESH is spent
  curl -i -X POST http://{gw}/gateway/auth/logout -H "authorization: Bearer $TOKEN"
  curl -i http://{gw}/echo/hello -H "authorization: Bearer $TOKEN"   # 401 TOKEN_REVOKED

Or a token minted for client 1001 (tollgate token mint --client 1001 makes more):
  TOKEN={token}

Token credits (1001 opens with the 500 tokens of its legacy record):
  curl -s http://{gw}/gateway/tokens/balance -H "authorization: Bearer $TOKEN"
  curl -i -X POST http://{gw}/campaigns -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
       -H 'Idempotency-Key: "spring-1"' -d '{{"name":"Spring"}}'   # X-Token-Cost: 10; the same key again is not charged
  curl -s http://{gw}/gateway/tokens/costs -H "authorization: Bearer $TOKEN"

More to try:
  curl -i http://{gw}/echo/hello                                  # 401 AUTH_REQUIRED
  curl -i http://{gw}/echo/hello -H 'x-api-key: demo-legacy-key-1002'   # legacy key: Deprecation + Sunset
  printf 'name,phone\nAda,+15550100\n' > /tmp/contacts.csv
  curl -i http://{gw}/upload-csv -F file=@/tmp/contacts.csv -H "authorization: Bearer $TOKEN"
  curl -i -X OPTIONS http://{gw}/campaigns -H 'origin: {origin}' \
       -H 'access-control-request-method: POST'   # a CORS preflight, answered by the gateway
  curl -i http://{gw}/admin                  # 403 FORBIDDEN: a route that denies
  curl -i --path-as-is 'http://{gw}/pub/%2e%2e/admin'   # 403 too: normalized to /admin first
  curl -i http://{gw}/nowhere                # 404 ROUTE_NOT_FOUND: deny by default
  tollgate explain GET '/pub/%2e%2e/admin'"#,
            backend = demo.backend,
            origin = demo.origin.as_deref().unwrap_or("http://localhost:5173"),
        );
    }
    let _ = out.flush();
}
