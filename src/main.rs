//! The `phonegate` binary: parse arguments, load configuration, set up logging, bind, serve until
//! SIGTERM/SIGINT, exit. Everything else lives in the library.

#![warn(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;

use phonegate::config::Config;
use phonegate::reload;
use phonegate::server::{Server, StartError};

/// Exit code for bad configuration (EX_CONFIG is 78, but 64, EX_USAGE, is what operators of
/// linkerd-style proxies script against).
const EXIT_CONFIG: u8 = 64;

/// phonegate: a caching, secret-redacting proxy for Vapi's phone-number API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML) layered over the built-in defaults.
    #[arg(long, env = "PHONEGATE_CONFIG", value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and print it, secrets masked; exit 0 if valid, 64 if not.
    CheckConfig,
    /// Print the token_sha256 to configure for a managed-mode client token read from stdin,
    /// or, with --generate, make a new random token and print both.
    HashToken {
        /// Generate a new random token instead of reading one.
        #[arg(long)]
        generate: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::CheckConfig) => check_config(args.config.as_deref()),
        Some(Command::HashToken { generate }) => hash_token(generate),
        None => run(args.config.as_deref()),
    }
}

fn run(config_path: Option<&Path>) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => return fail(EXIT_CONFIG, &error.to_string()),
    };
    let (_log_guard, log_control) =
        match phonegate::access_log::init(config.startup.log_format, &config.live.log_level) {
            Ok(logging) => logging,
            Err(error) => return fail(EXIT_CONFIG, &error),
        };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.startup.server.worker_threads {
        runtime.worker_threads(workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &format!("cannot start the async runtime: {error}")),
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(error @ StartError::Config(_)) => return fail(EXIT_CONFIG, &error.to_string()),
            Err(error) => return fail(1, &error.to_string()),
        };
        let state = Arc::clone(server.state());
        state.metrics.count_log_drops_from(log_control.dropped());
        let config_path = config_path.map(Path::to_path_buf);
        tokio::spawn(reload::on_sighup(state, config_path, log_control));
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

fn check_config(config_path: Option<&Path>) -> ExitCode {
    match Config::load(config_path) {
        Ok(config) => match serde_json::to_string_pretty(&config.to_masked_json()) {
            Ok(text) => print_out(&text),
            Err(error) => fail(1, &format!("cannot print the configuration: {error}")),
        },
        Err(error) => fail(EXIT_CONFIG, &error.to_string()),
    }
}

fn hash_token(generate: bool) -> ExitCode {
    let token = if generate {
        let mut bytes = [0u8; 32];
        if let Err(error) = getrandom::fill(&mut bytes) {
            return fail(1, &format!("cannot generate a token: {error}"));
        }
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if let Err(code) = print_line(&format!("token: {token}")) {
            return code;
        }
        token
    } else {
        let mut line = String::new();
        if let Err(error) = std::io::stdin().read_line(&mut line) {
            return fail(1, &format!("cannot read the token from stdin: {error}"));
        }
        let token = line.trim().to_owned();
        if token.is_empty() {
            return fail(
                EXIT_CONFIG,
                "no token on stdin; pipe one in, or use --generate for a new one",
            );
        }
        token
    };
    print_out(&format!(
        "token_sha256: {}",
        phonegate::auth::token_sha256_hex(&token)
    ))
}

/// Prints `line` on stdout; see [`print_line`].
fn print_out(line: &str) -> ExitCode {
    match print_line(line) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// Prints `line` on stdout. A reader that went away (`phonegate check-config | head -1`) is not
/// an error: it has what it wanted, so the exit is clean (0); other write errors exit 1 with a
/// message, never a panic.
fn print_line(line: &str) -> Result<(), ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(ExitCode::SUCCESS),
        Err(error) => Err(fail(1, &format!("cannot write to stdout: {error}"))),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

/// Reports a start-up failure as a JSON line on stderr (logging may not be set up yet).
fn fail(code: u8, message: &str) -> ExitCode {
    let line = serde_json::json!({
        "level": "ERROR",
        "target": "phonegate",
        "message": message,
    });
    eprintln!("{line}");
    ExitCode::from(code)
}
