//! Listeners and the connection lifecycle: accept, TLS, protocol choice, graceful drain.
//!
//! Each connection's protocol is decided before hyper sees it, under the header timeout: by ALPN
//! with TLS, by peeking at the HTTP/2 preface without. hyper-util's auto-detection would wait for
//! the first bytes without any deadline, letting a silent client hold a connection forever.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, ServerConfig};
use crate::proxy;
use crate::state::AppState;
use crate::stream_tasks::StreamTasks;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest request head (request line plus headers) over HTTP/1.1, and header list over HTTP/2.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long a connection closed for never sending a request may take to go before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Concurrent HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    /// A setting could not be used (exit code 64).
    Config(String),
    /// A listener could not be bound.
    Bind {
        /// The setting naming the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: io::Error,
    },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(msg) => f.write_str(msg),
            StartError::Bind { key, addr, error } => {
                write!(f, "cannot listen on {addr} ({key}): {error}")
            }
        }
    }
}

impl std::error::Error for StartError {}

/// A bound, not yet running phonegate: the proxy and admin listeners and the shared state.
pub struct Server {
    state: Arc<AppState>,
    listener: TcpListener,
    admin_listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Builds the state and binds both listeners (port 0 picks a free port, as tests do).
    pub async fn bind(config: Config) -> Result<Server, StartError> {
        let listen = config.startup.listen;
        let admin_listen = config.startup.admin_listen;
        let state = AppState::new(config).map_err(|e| StartError::Config(e.to_string()))?;
        let tls = state
            .certificates
            .server_config()
            .map_err(|e| StartError::Config(e.to_string()))?
            .map(|config| TlsAcceptor::from(Arc::new(config)));
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| StartError::Bind {
                key: "listen",
                addr: listen,
                error,
            })?;
        let admin_listener =
            TcpListener::bind(admin_listen)
                .await
                .map_err(|error| StartError::Bind {
                    key: "admin.listen",
                    addr: admin_listen,
                    error,
                })?;
        Ok(Server {
            state,
            listener,
            admin_listener,
            tls,
        })
    }

    /// The proxy listener's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, marks itself not ready, and gives
    /// in-flight requests up to `server.drain_timeout_ms` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            state,
            listener,
            admin_listener,
            tls,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        // The admin listener outlives the drain, so probes see /readyz turn 503 while it runs.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin = tokio::spawn(admin::serve(
            Arc::clone(&state),
            admin_listener,
            admin_stop_rx,
        ));
        // Connection handling is fixed at start; a reload does not change it.
        let config = &state.startup;
        let protocols = Arc::new(Protocols::new(&config.server));
        let connections = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(config.server.max_connections));
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, tls = tls.is_some(), "phonegate listening");
        }

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        // At the limit, close at once: a prompt refusal beats a connection that
                        // hangs in the backlog until the client gives up.
                        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                            tracing::debug!("max_connections reached; closing a new connection");
                            drop(stream);
                            continue;
                        };
                        connections.spawn(serve_connection(
                            Arc::clone(&state),
                            Arc::clone(&protocols),
                            tls.clone(),
                            stream,
                            stop_rx.clone(),
                            slot,
                        ));
                    }
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }

        state.start_draining();
        drop(listener);
        let drain = config.server.drain_timeout;
        tracing::info!(
            connections = connections.len(),
            drain_timeout_ms = drain.as_millis() as u64,
            "shutting down: draining in-flight requests"
        );
        let _ = stop_tx.send(true);
        connections.close();
        tokio::select! {
            () = connections.wait() => tracing::info!("drained"),
            () = tokio::time::sleep(drain) => {
                tracing::warn!("drain deadline passed; exiting with requests still in flight");
            }
        }
        let _ = admin_stop_tx.send(true);
        let _ = admin.await;
        if let Some(telemetry) = &state.telemetry {
            telemetry.shutdown().await;
        }
    }
}

/// The connection builders' settings, fixed once.
struct Protocols {
    http1: http1::Builder,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// Interval of HTTP/2 pings, and how long an answer may take.
    ping: Duration,
}

impl Protocols {
    fn new(config: &ServerConfig) -> Self {
        let header_timeout = config.header_timeout;
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            .max_buf_size(MAX_HEADER_BYTES)
            .max_header_size(MAX_HEADER_BYTES);
        let idle_timeout = config.idle_timeout;
        // Pings at half the idle timeout find a dead peer (no PING ack) before the connection
        // would have been closed for idleness anyway.
        let ping = (idle_timeout / 2).max(Duration::from_millis(500));
        Protocols {
            http1: h1,
            header_timeout,
            idle_timeout,
            ping,
        }
    }

    /// An HTTP/2 server for one connection, running its streams on `streams`.
    fn http2(&self, streams: StreamTasks) -> http2::Builder<StreamTasks> {
        let mut h2 = http2::Builder::new(streams);
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .keep_alive_interval(Some(self.ping))
            .keep_alive_timeout(self.ping);
        h2
    }
}

/// Serves one client connection: protocol choice (and TLS handshake) under the header timeout,
/// then HTTP until the client leaves or shutdown asks it to.
async fn serve_connection(
    state: Arc<AppState>,
    protocols: Arc<Protocols>,
    tls: Option<TlsAcceptor>,
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new(&state);
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + protocols.header_timeout;
    let opening = async {
        match tls {
            None => {
                let is_h2 = sniff_h2(&stream).await.ok().flatten()?;
                Some(Opened::Plain(stream, is_h2))
            }
            Some(acceptor) => {
                let stream = acceptor
                    .accept(stream)
                    .await
                    .inspect_err(|error| tracing::debug!(%error, "TLS handshake failed"))
                    .ok()?;
                let is_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                Some(Opened::Tls(Box::new(stream), is_h2))
            }
        }
    };
    // Closed, failed, silent past the header timeout, or shutting down: drop the connection.
    let opened = tokio::select! {
        opened = tokio::time::timeout_at(deadline, opening) => opened.ok().flatten(),
        _ = stop.wait_for(|stopping| *stopping) => None,
    };
    match opened {
        Some(Opened::Plain(stream, is_h2)) => {
            serve_http(
                state,
                &protocols,
                TokioIo::new(stream),
                is_h2,
                deadline,
                stop,
            )
            .await
        }
        Some(Opened::Tls(stream, is_h2)) => {
            serve_http(
                state,
                &protocols,
                TokioIo::new(*stream),
                is_h2,
                deadline,
                stop,
            )
            .await
        }
        None => {}
    }
}

/// Keeps the open-connections gauge up while a connection lives.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(state: &AppState) -> Self {
        let gauge = state.metrics.open_connections().clone();
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A connection whose protocol is known.
enum Opened {
    Plain(TcpStream, bool),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, bool),
}

async fn serve_http<I>(
    state: Arc<AppState>,
    protocols: &Protocols,
    io: I,
    is_h2: bool,
    deadline: Instant,
    stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Activity::default();
    let idle = Idle {
        activity: activity.clone(),
        after: protocols.idle_timeout,
    };
    if is_h2 {
        // hyper's HTTP/2 server has no header timeout, so a client that opens a connection and
        // never completes a request would hold it forever: the first request must arrive by the
        // deadline.
        let seen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&seen);
        let service = service_fn(move |req| {
            flag.store(true, Ordering::Relaxed);
            activity.track(proxy::handle(Arc::clone(&state), req))
        });
        // The streams run in this task, beside the connection (see `stream_tasks`).
        let streams = StreamTasks::default();
        let conn = protocols
            .http2(streams.clone())
            .serve_connection(io, service);
        streams
            .run(drive(conn, stop, Some((deadline, seen)), idle))
            .await;
    } else {
        let service = service_fn(move |req| activity.track(proxy::handle(Arc::clone(&state), req)));
        let conn = protocols.http1.serve_connection(io, service);
        drive(conn, stop, None, idle).await;
    }
}

/// Runs a connection to its end, asking it to finish gracefully on shutdown or when no request
/// arrived by `first_request`'s deadline. A connection closed for idleness has nothing in flight,
/// so if it still lingers a second later (a stalled HTTP/2 handshake) it is dropped.
async fn drive<C>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    first_request: Option<(Instant, Arc<AtomicBool>)>,
    idle_for: Idle,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let no_first_request = async {
        match &first_request {
            Some((deadline, seen)) => {
                tokio::time::sleep_until(*deadline).await;
                if seen.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    let idle = async {
        tokio::select! {
            () = no_first_request => {}
            () = idle_for.elapsed() => {}
        }
    };
    tokio::pin!(idle);
    let mut closing = false;
    let mut idle_closed_at: Option<Instant> = None;
    loop {
        let give_up = async {
            match idle_closed_at {
                Some(at) => tokio::time::sleep_until(at + IDLE_CLOSE_GRACE).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|stopping| *stopping), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut idle, if !closing => {
                closing = true;
                idle_closed_at = Some(Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            () = give_up => return,
        }
    }
}

/// Requests in flight on one connection and when the last one ended. Plain atomics: a request
/// pays two counter updates and one clock read, and wakes nobody; the idle timer checks them
/// when it fires.
#[derive(Clone)]
struct Activity(Arc<ActivityState>);

struct ActivityState {
    in_flight: AtomicUsize,
    /// When the last request ended, as nanoseconds after `opened`.
    last_done: AtomicU64,
    opened: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(ActivityState {
            in_flight: AtomicUsize::new(0),
            last_done: AtomicU64::new(0),
            opened: Instant::now(),
        }))
    }
}

impl Activity {
    /// Counts `request` as in flight until it finishes (or is dropped).
    fn track<F: Future>(&self, request: F) -> impl Future<Output = F::Output> + use<F> {
        struct InFlight(Arc<ActivityState>);
        impl Drop for InFlight {
            fn drop(&mut self) {
                let since = u64::try_from(self.0.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
                self.0.last_done.fetch_max(since, Ordering::Relaxed);
                self.0.in_flight.fetch_sub(1, Ordering::Release);
            }
        }
        self.0.in_flight.fetch_add(1, Ordering::Acquire);
        let guard = InFlight(Arc::clone(&self.0));
        async move {
            let output = request.await;
            drop(guard);
            output
        }
    }

    /// When the connection will have been idle for `after`, if nothing starts meanwhile; `None`
    /// while a request is in flight.
    fn idle_deadline(&self, after: Duration) -> Option<Instant> {
        if self.0.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_nanos(self.0.last_done.load(Ordering::Relaxed));
        Some(self.0.opened + last + after)
    }
}

/// A connection's idle timeout (`server.idle_timeout_ms`).
struct Idle {
    activity: Activity,
    after: Duration,
}

impl Idle {
    /// Resolves once no request has been in flight for the whole timeout. One timer, re-armed
    /// when it fires early: requests themselves never touch it.
    async fn elapsed(&self) {
        let first = self
            .activity
            .idle_deadline(self.after)
            .unwrap_or_else(|| Instant::now() + self.after);
        let sleep = tokio::time::sleep_until(first);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            match self.activity.idle_deadline(self.after) {
                Some(deadline) if deadline <= now => return,
                Some(deadline) => sleep.as_mut().reset(deadline),
                None => sleep.as_mut().reset(now + self.after),
            }
        }
    }
}

/// `Some(true)` when the client opens with the HTTP/2 preface (h2c with prior knowledge),
/// `Some(false)` for anything else, `None` if it closed first. Peeks, so nothing is consumed.
///
/// Two bytes decide: no HTTP/1 method starts with "PR", so "PR" can only be the preface (or
/// garbage, which the HTTP/2 handshake then refuses).
async fn sniff_h2(stream: &TcpStream) -> io::Result<Option<bool>> {
    let mut buf = [0u8; 2];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == buf.len() {
            return Ok(Some(true));
        }
        // Only "P" so far: peek returns at once while data is buffered, so wait a little for the
        // next byte. The caller's deadline bounds this.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long `idle` takes to resolve from now, on tokio's paused clock.
    async fn resolves_after(idle: &Idle) -> Duration {
        let start = Instant::now();
        idle.elapsed().await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_is_idle_after_the_timeout() {
        let idle = Idle {
            activity: Activity::default(),
            after: Duration::from_secs(10),
        };
        assert_eq!(resolves_after(&idle).await, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_end_of_the_last_request() {
        let activity = Activity::default();
        let idle = Idle {
            activity: activity.clone(),
            after: Duration::from_secs(10),
        };
        // A request in flight from 0 s to 25 s (longer than the timeout), then one at 30-31 s.
        let requests = tokio::spawn(async move {
            activity
                .track(tokio::time::sleep(Duration::from_secs(25)))
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            activity
                .track(tokio::time::sleep(Duration::from_secs(1)))
                .await;
        });
        tokio::task::yield_now().await;
        assert_eq!(resolves_after(&idle).await, Duration::from_secs(41));
        requests.await.expect("requests task");
    }
}
