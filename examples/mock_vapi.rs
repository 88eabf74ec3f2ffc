//! A stand-alone mock of Vapi's phone-number API, for demos and manual testing.
//!
//! ```text
//! cargo run --example mock_vapi -- --listen 127.0.0.1:8081
//! curl -H 'Authorization: Bearer any-key' http://127.0.0.1:8081/phone-number/<id>
//! ```
//!
//! Any bearer token is accepted except `invalid-key`. The answers are the unredacted
//! fixtures of the `mock-vapi` crate (`tests/mock-vapi/fixtures/phone-numbers/`): every secret
//! contains `PLANTED`. Serves until Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str = "usage: mock_vapi [--listen ADDR]   (default 127.0.0.1:8081)";

fn parse_args() -> Result<SocketAddr, String> {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8081));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = if arg == "--listen" || arg == "-l" {
            args.next()
                .ok_or_else(|| format!("--listen needs a value\n{USAGE}"))?
        } else if let Some(v) = arg.strip_prefix("--listen=") {
            v.to_owned()
        } else if arg == "--help" || arg == "-h" {
            return Err(USAGE.to_owned());
        } else {
            return Err(format!("unknown argument {arg:?}\n{USAGE}"));
        };
        listen = value
            .parse()
            .map_err(|e| format!("bad --listen address {value:?}: {e}\n{USAGE}"))?;
    }
    Ok(listen)
}

#[tokio::main]
async fn main() -> ExitCode {
    let listen = match parse_args() {
        Ok(addr) => addr,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mock = match mock_vapi::MockVapi::builder()
        .addr(listen)
        .try_start()
        .await
    {
        Ok(mock) => mock,
        Err(e) => {
            eprintln!("mock_vapi: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("mock Vapi listening on {}", mock.url());
    eprintln!("phone-number ids (any bearer token except `invalid-key`):");
    for (provider, id) in mock_vapi::MockVapi::ids() {
        eprintln!("  {provider:<17} {}/phone-number/{id}", mock.url());
    }
    eprintln!("press Ctrl-C to stop");
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("mock_vapi: cannot wait for Ctrl-C: {e}");
    }
    let hits = mock.hits();
    mock.shutdown().await;
    eprintln!("mock Vapi stopped after {hits} requests");
    ExitCode::SUCCESS
}
