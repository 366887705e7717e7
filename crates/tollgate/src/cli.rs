//! The command line: `run`, `check`, `explain`, `test`, `token`, `ledger` and `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http::Method;
use tollgate_policy::{Severity, Snapshot};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An authenticating reverse-proxy gateway for legacy APIs moving to JWT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given configuration until SIGTERM or Ctrl-C.
    Run {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Validate the configuration and its policy files; print every problem as
    /// file:line:col; exit 1 if there are errors.
    Check {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Play one request through the pipeline (in this process, in front of a stand-in
    /// backend) and show what happens to it, what the backend receives, and the policy
    /// of the route it lands on.
    Explain {
        /// HTTP method, e.g. GET.
        method: String,
        /// Request target exactly as a client would send it, e.g. /pub/%2e%2e/admin?x=1.
        target: String,
        /// Send a JWT for this client id (signed with the configuration's key).
        #[arg(long, value_name = "CLIENT_ID")]
        token: Option<String>,
        /// A request header, `Name: value` (an API key, a Content-Type); repeatable.
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
        /// The request body.
        #[arg(long, default_value = "")]
        body: String,
        /// The address the request comes from (a trusted proxy, say).
        #[arg(long, value_name = "IP")]
        peer: Option<std::net::IpAddr>,
        /// The status the stand-in backend answers with (100-599).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(100..=599))]
        backend_status: u16,
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Play the policy test cases (policies/tests/*.toml) through the pipeline in this
    /// process and report every outcome that differs from what a case expects; exit 1
    /// if one does.
    Test {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
        /// The directory of cases (default: tests/ in the policy directory).
        #[arg(long)]
        cases: Option<PathBuf>,
    },
    /// Tokens for operators and tests.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The token ledger: balances, adjustments, opening balances, verification.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
        #[arg(long, default_value = "gateway.toml", global = true)]
        config: PathBuf,
    },
    /// Start the built-in demo backend and the gateway in front of it.
    Demo {
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
        /// Only run the demo backend, on this address (for benchmarks and compose files).
        #[arg(long, value_name = "ADDR")]
        backend_only: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print an access token the configured gateway accepts, signed with the key the
    /// gateway signs with: `[jwt] signing_key`, else the last `[[jwt.key]]` that has a
    /// secret or a private key.
    Mint {
        /// The client id to put in the token.
        #[arg(long)]
        client: String,
        /// Lifetime, e.g. 15m, 1h (default: jwt.access_ttl).
        #[arg(long)]
        ttl: Option<String>,
        /// The `sub` claim.
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value = "gateway.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Add tokens to a client's balance. The same rules as the admin API: a client id a
    /// caller can have, an amount of at least 1, a reason of 1 to 500 bytes without
    /// control characters.
    Credit {
        #[arg(long)]
        client: String,
        #[arg(long)]
        amount: u64,
        /// Why (journaled as `cli: <reason>`).
        #[arg(long)]
        reason: String,
    },
    /// Take tokens from a client's balance (never below zero).
    Debit {
        #[arg(long)]
        client: String,
        #[arg(long)]
        amount: u64,
        #[arg(long)]
        reason: String,
    },
    /// Set a client's balance (the difference is journaled).
    Set {
        #[arg(long)]
        client: String,
        #[arg(long)]
        balance: u64,
        #[arg(long)]
        reason: String,
    },
    /// A client's balance and latest movements (journal text printed with its control
    /// characters escaped).
    Show {
        #[arg(long)]
        client: String,
        /// How many movements, 1 to 1000.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Credit opening balances from the legacy system's export (CSV `clientId,balance`
    /// or JSON), once per client.
    Import { file: PathBuf },
    /// Replay every journal and check that it sums to its balance; exit 1 if not.
    Verify,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // Warnings are logged once logging is set up, in the configured format (a JSON
        // pipeline would read plain lines as broken records); errors stop the start.
        Command::Run { config } => match load_printing(&config, |_| false) {
            Some(snapshot) => crate::run::serve(config, snapshot, None),
            None => ExitCode::FAILURE,
        },
        Command::Check { config } => check(&config),
        Command::Explain {
            method,
            target,
            token,
            headers,
            body,
            peer,
            backend_status,
            config,
        } => {
            // Taken as written: the gateway refuses `get` (methods are case-sensitive), so
            // `explain get /x` must say so, not rehearse a GET.
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                eprintln!("`{method}` is not an HTTP method");
                return ExitCode::FAILURE;
            };
            let Some(snapshot) = load_quietly(&config) else {
                return ExitCode::FAILURE;
            };
            let request = crate::rehearse::Request {
                method: &method,
                target: &target,
                headers: &headers,
                body: &body,
                token_client: token.as_deref(),
                peer,
                backend_status,
            };
            crate::rehearse::explain(&snapshot, &request)
        }
        Command::Test { config, cases } => match load_quietly(&config) {
            Some(snapshot) => {
                let dir = cases
                    .unwrap_or_else(|| tollgate_policy::cases::default_dir(&snapshot.policy_dir));
                crate::rehearse::test(&snapshot, &dir)
            }
            None => ExitCode::FAILURE,
        },
        Command::Token {
            command:
                TokenCommand::Mint {
                    client,
                    ttl,
                    subject,
                    config,
                },
        } => match load_summarizing_dev_keys(&config) {
            Some(snapshot) => match mint(&snapshot, &client, ttl.as_deref(), subject.as_deref()) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("token mint: {e}");
                    ExitCode::FAILURE
                }
            },
            None => ExitCode::FAILURE,
        },
        Command::Ledger { command, config } => {
            let Some(snapshot) = load_quietly(&config) else {
                return ExitCode::FAILURE;
            };
            use crate::ledger::Action;
            use tollgate_state::ledger::Change;
            let action = match &command {
                LedgerCommand::Credit {
                    client,
                    amount,
                    reason,
                } => Action::Adjust {
                    client,
                    change: Change::Credit(*amount),
                    reason,
                },
                LedgerCommand::Debit {
                    client,
                    amount,
                    reason,
                } => Action::Adjust {
                    client,
                    change: Change::Debit(*amount),
                    reason,
                },
                LedgerCommand::Set {
                    client,
                    balance,
                    reason,
                } => Action::Adjust {
                    client,
                    change: Change::Set(*balance),
                    reason,
                },
                LedgerCommand::Show { client, limit } => Action::Show {
                    client,
                    limit: *limit,
                },
                LedgerCommand::Import { file } => Action::Import { file },
                LedgerCommand::Verify => Action::Verify,
            };
            crate::ledger::run(&snapshot, action)
        }
        Command::Demo {
            backend_only: Some(addr),
            ..
        } => crate::run::demo_backend_only(addr),
        Command::Demo {
            config,
            backend_only: None,
        } => match load_quietly(&config) {
            Some(mut snapshot) => {
                // Said already, without the development keys the demo uses on purpose.
                snapshot.warnings.clear();
                let backend = snapshot.upstream.authority.as_str().parse::<SocketAddr>();
                match backend {
                    Ok(addr) => {
                        let token = mint(&snapshot, "1001", None, Some("demo@acme.test")).ok();
                        // The origin the printed preflight comes from: one the default
                        // CORS policy allows, so the example works as printed.
                        let origin = snapshot.cors.as_ref().and_then(|policy| {
                            policy.origins.iter().find_map(|o| match o {
                                tollgate_policy::snapshot::OriginPattern::Exact(origin) => {
                                    Some(origin.clone())
                                }
                                _ => None,
                            })
                        });
                        crate::run::serve(
                            config,
                            snapshot,
                            Some(crate::run::Demo {
                                backend: addr,
                                token,
                                origin,
                            }),
                        )
                    }
                    Err(_) => {
                        eprintln!(
                            "demo: the upstream in {} must be an IP:port for the demo backend to bind, not `{}`",
                            config.display(),
                            snapshot.upstream.authority
                        );
                        ExitCode::FAILURE
                    }
                }
            }
            None => ExitCode::FAILURE,
        },
    }
}

/// Loads the configuration, printing every diagnostic; `None` if it has errors.
/// Loads the configuration, quiet about the development keys the demo uses on purpose
/// (`check` names each).
fn load_quietly(config: &Path) -> Option<Snapshot> {
    load_printing(config, |d| {
        !d.message.contains(tollgate_policy::DEV_KEYS_DIR)
    })
}

/// As [`load_quietly`], with one line instead of a warning per development key: a
/// token signed with one is for the demo only, which `token mint` inside `$(...)` should
/// say once, not eight times.
fn load_summarizing_dev_keys(config: &Path) -> Option<Snapshot> {
    let snapshot = load_quietly(config)?;
    let dev_keys = snapshot
        .warnings
        .iter()
        .filter(|w| w.message.contains(tollgate_policy::DEV_KEYS_DIR))
        .count();
    if dev_keys > 0 {
        eprintln!(
            "warning: {dev_keys} published development key(s) in use ({}/): for `tollgate demo` only; `tollgate check` names each",
            tollgate_policy::DEV_KEYS_DIR
        );
    }
    Some(snapshot)
}

/// When the configuration file is not there at all, the likely mistake: running from
/// another directory.
fn missing_config_hint(config: &Path) -> Option<String> {
    (!config.exists()).then(|| {
        format!(
            "{} does not exist here: run tollgate in the directory that holds it, or pass --config PATH",
            config.display()
        )
    })
}

fn load_printing(
    config: &Path,
    show: impl Fn(&tollgate_policy::Diagnostic) -> bool,
) -> Option<Snapshot> {
    match tollgate_policy::load(config) {
        Ok(snapshot) => {
            for warning in snapshot.warnings.iter().filter(|w| show(w)) {
                eprintln!("{warning}");
            }
            Some(snapshot)
        }
        Err(e) => {
            for d in &e.0 {
                eprintln!("{d}");
            }
            eprintln!("{}", error_summary(&e.0));
            if let Some(hint) = missing_config_hint(config) {
                eprintln!("{hint}");
            }
            None
        }
    }
}

fn check(config: &Path) -> ExitCode {
    match tollgate_policy::load(config) {
        Ok(snapshot) => {
            for warning in &snapshot.warnings {
                println!("{warning}");
            }
            let (state_errors, state_warnings) = state_paths(&snapshot);
            for warning in &state_warnings {
                println!("{warning}");
            }
            if !state_errors.is_empty() {
                for error in &state_errors {
                    println!("{error}");
                }
                println!("{} error(s) in the state paths", state_errors.len());
                return ExitCode::FAILURE;
            }
            if let Err(problems) = opening_balances(&snapshot) {
                for problem in &problems {
                    println!("{problem}");
                }
                println!("{} error(s) in the opening balances", problems.len());
                return ExitCode::FAILURE;
            }
            let files = snapshot.policy_files.len();
            println!(
                "{}: ok ({} routes from {} policy file(s))",
                config.display(),
                snapshot.routes.len(),
                files
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for d in &e.0 {
                println!("{d}");
            }
            println!("{}", error_summary(&e.0));
            if let Some(hint) = missing_config_hint(config) {
                println!("{hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether the embedded state files can be written where the configuration puts them
/// (relative paths resolve beside `gateway.toml`, which a sandbox such as systemd's
/// `ProtectSystem=strict` keeps read-only). The ledger is an error (metering could
/// never start), the store a warning (it is opened only for what needs it). A probe
/// file is created and removed in the nearest directory that exists.
fn state_paths(snapshot: &Snapshot) -> (Vec<String>, Vec<String>) {
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    if snapshot.store.redis.is_some() {
        return (errors, warnings);
    }
    if let Some(credits) = snapshot.credits.as_ref().filter(|c| c.enabled) {
        if let Err(e) = writable(&credits.path) {
            errors.push(format!(
                "{}: error: [credits] path: the ledger cannot be written here: {e}",
                credits.path.display()
            ));
        }
    }
    if let Err(e) = writable(&snapshot.store.path) {
        warnings.push(format!(
            "{}: warning: [store] path: sessions and callback nonces cannot be kept here: {e}",
            snapshot.store.path.display()
        ));
    }
    (errors, warnings)
}

fn writable(file: &Path) -> std::io::Result<()> {
    let mut dir = file.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        dir = d.parent();
    }
    let dir = dir
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = dir.join(format!(".tollgate-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// The `[credits] opening_balances` file read as the gateway will read it at start: a
/// file it cannot credit would leave a running gateway retrying and never ready.
fn opening_balances(snapshot: &Snapshot) -> Result<(), Vec<String>> {
    let Some(path) = snapshot
        .credits
        .as_ref()
        .and_then(|c| c.opening_balances.as_ref())
    else {
        return Ok(());
    };
    let bytes = tollgate_policy::fingerprint::read_capped(path)
        .map_err(|e| vec![format!("{}: error: cannot read: {e}", path.display())])?;
    let text = String::from_utf8(bytes)
        .map_err(|_| vec![format!("{}: error: not UTF-8", path.display())])?;
    tollgate_state::ledger::import::parse(&text)
        .map(drop)
        .map_err(|problems| {
            let file = path.display();
            // In the file's order, as the other diagnostics are (the problems come
            // by kind: duplicates are found after the lines are read).
            let mut problems = problems;
            problems.sort_by_key(|p| {
                tollgate_state::ledger::import::line_of(p).map_or(usize::MAX, |(line, _)| line)
            });
            problems
                .iter()
                .map(|p| match tollgate_state::ledger::import::line_of(p) {
                    Some((line, rest)) => format!("{file}:{line}:1: error: {rest}"),
                    None => format!("{file}: error: {p}"),
                })
                .collect()
        })
}

/// `7 error(s): 1 in gateway.toml, 6 in policies/a.toml` — each file where its errors
/// are, in the order the diagnostics name them.
fn error_summary(diags: &[tollgate_policy::Diagnostic]) -> String {
    let mut files: Vec<(&Path, usize)> = Vec::new();
    for d in diags.iter().filter(|d| d.severity == Severity::Error) {
        match files.iter_mut().find(|(f, _)| *f == d.file.as_path()) {
            Some((_, n)) => *n += 1,
            None => files.push((&d.file, 1)),
        }
    }
    let total: usize = files.iter().map(|(_, n)| n).sum();
    let per_file: Vec<String> = files
        .iter()
        .map(|(f, n)| format!("{n} in {}", f.display()))
        .collect();
    format!("{total} error(s): {}", per_file.join(", "))
}

/// Signs a token with the configuration's signing key.
fn mint(
    snapshot: &Snapshot,
    client: &str,
    ttl: Option<&str>,
    subject: Option<&str>,
) -> Result<String, String> {
    let jwt = snapshot
        .auth
        .jwt
        .as_ref()
        .ok_or("gateway.toml has no [jwt]")?;
    let key = jwt
        .signing
        .as_ref()
        .ok_or("no [[jwt.key]] has a secret or a private_key_file to sign with")?;
    if !tollgate_auth::jwt::is_usable_client_id(client) {
        return Err(format!(
            "`{client}` is not a usable client id (1-128 of A-Z a-z 0-9 - _ . : @)"
        ));
    }
    let ttl = match ttl {
        Some(text) => tollgate_policy::duration::parse(text)?,
        None => jwt.access_ttl,
    };
    // Under a second the token would be expired when printed (`exp` is whole seconds).
    if ttl.as_secs() == 0 {
        return Err("--ttl: at least 1s (a shorter token is expired before it is used)".into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let spec = tollgate_auth::mint::TokenSpec {
        client_id_claim: &jwt.rules.client_id_claim,
        client_id: client,
        subject,
        issuer: jwt.rules.issuer.as_deref(),
        audience: jwt.rules.audience.as_deref(),
        issued_at: now,
        ttl_secs: ttl.as_secs(),
    };
    tollgate_auth::mint::mint(&spec, key).map_err(|e| e.to_string())
}
