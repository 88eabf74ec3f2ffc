//! The `phonegate` binary: parse arguments, load configuration, set up logging, bind, serve until
//! SIGTERM/SIGINT, exit. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use phonegate::config::Config;
use phonegate::server::{Server, StartError};

/// Exit code for bad configuration (EX_CONFIG is 78, but 64, EX_USAGE, is what operators of
/// linkerd-style proxies script against).
const EXIT_CONFIG: u8 = 64;

/// phonegate: a caching, secret-redacting proxy for Vapi's phone-number API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML) layered over the built-in defaults.
    #[arg(long, env = "PHONEGATE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail(EXIT_CONFIG, &error.to_string()),
    };
    let _log_guard = match phonegate::access_log::init(&config.log) {
        Ok(guard) => guard,
        Err(error) => return fail(EXIT_CONFIG, &error),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &format!("cannot start the async runtime: {error}")),
    };
    runtime.block_on(async move {
        let server = match Server::bind(config).await {
            Ok(server) => server,
            Err(error @ StartError::Config(_)) => return fail(EXIT_CONFIG, &error.to_string()),
            Err(error) => return fail(1, &error.to_string()),
        };
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
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
