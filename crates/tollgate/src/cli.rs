//! The command line: `run`, `check`, `explain` and `demo`.

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
    /// Show which route a request lands on after normalization, and what happens to it.
    Explain {
        /// HTTP method, e.g. GET.
        method: String,
        /// Request target as a client would send it, e.g. /pub/%2e%2e/admin?x=1.
        path: String,
        #[arg(long, default_value = "gateway.toml")]
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

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => match load(&config) {
            Some(snapshot) => crate::run::serve(config, snapshot, None),
            None => ExitCode::FAILURE,
        },
        Command::Check { config } => check(&config),
        Command::Explain {
            method,
            path,
            config,
        } => explain(&config, &method, &path),
        Command::Demo {
            backend_only: Some(addr),
            ..
        } => crate::run::demo_backend_only(addr),
        Command::Demo {
            config,
            backend_only: None,
        } => match load(&config) {
            Some(snapshot) => {
                let backend = snapshot.upstream.authority.as_str().parse::<SocketAddr>();
                match backend {
                    Ok(addr) => crate::run::serve(config, snapshot, Some(addr)),
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
fn load(config: &Path) -> Option<Snapshot> {
    match tollgate_policy::load(config) {
        Ok(snapshot) => {
            for warning in &snapshot.warnings {
                eprintln!("{warning}");
            }
            Some(snapshot)
        }
        Err(e) => {
            for d in &e.0 {
                eprintln!("{d}");
            }
            eprintln!("{}: {e}", config.display());
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
            let errors = e.0.iter().filter(|d| d.severity == Severity::Error).count();
            println!("{}: {errors} error(s)", config.display());
            ExitCode::FAILURE
        }
    }
}

fn explain(config: &Path, method: &str, path: &str) -> ExitCode {
    let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
        eprintln!("`{method}` is not an HTTP method");
        return ExitCode::FAILURE;
    };
    match load(config) {
        Some(snapshot) => {
            print!(
                "{}",
                tollgate_policy::explain::explain(&snapshot, &method, path)
            );
            ExitCode::SUCCESS
        }
        None => ExitCode::FAILURE,
    }
}
