//! The ceiling for any hyper-based service on this machine: a bare hyper server that answers every
//! request with the same fixed JSON body, doing nothing else. `benches/compare.sh` runs it beside
//! phonegate so their throughput can be compared as a ratio on the same machine, in the same run.
//!
//! `cargo run --release --example ceiling -- --listen 127.0.0.1:8099 --bytes 2931`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:8099".parse()?;
    let mut size = 2931usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs an address")?.parse()?,
            "--bytes" => size = args.next().ok_or("--bytes needs a number")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    // A JSON string padded to the requested size.
    let body = Bytes::from(format!("\"{}\"", "x".repeat(size.saturating_sub(2))));
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "ceiling listening on http://{} ({} byte body)",
        listener.local_addr()?,
        body.len()
    );
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let mut response = Response::new(Full::new(body.clone()));
                response
                    .headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
