//! Client connection handling: the header timeout against silent, dribbling and half-preface
//! clients (and that they cannot starve real traffic), oversized request heads, keep-alive.

use std::time::{Duration, Instant};

use crate::support::mock_vapi::{PLANTED, TWILIO_ID, VONAGE_ID};
use crate::support::{Behavior, MockVapi, Proxy, Resp, TOKEN_A, get, path, upstream_reached};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A short header timeout; a short drain too, so a connection the server fails to close cannot
/// stretch the test's shutdown.
const SHORT_HEADER_TIMEOUT: &str = "[server]\nheader_timeout_ms = 300\ndrain_timeout_ms = 500\n";

/// Disconnection must come well within this, given a 300 ms header timeout.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a slow client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The server closed (EOF, reset, or a failed write) after this long.
    Closed(Duration),
    /// Still connected when the test stopped waiting.
    StillOpen,
}

/// Reads (discarding anything the server says, e.g. a 408) until EOF or an error.
async fn wait_closed(stream: &mut TcpStream, started: Instant, within: Duration) -> Outcome {
    let mut buf = [0u8; 1024];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return Outcome::StillOpen,
        }
    }
}

/// Connects and stays silent.
async fn silent(addr: std::net::SocketAddr, within: Duration) -> Outcome {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    wait_closed(&mut stream, started, within).await
}

/// Connects, sends `prefix`, then stops talking.
async fn stalled(addr: std::net::SocketAddr, prefix: &[u8], within: Duration) -> Outcome {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    if stream.write_all(prefix).await.is_err() {
        return Outcome::Closed(started.elapsed());
    }
    wait_closed(&mut stream, started, within).await
}

/// Connects, sends `GET /phone-number/`, then one more byte of a never-ending header every
/// 100 ms.
async fn dribbling(addr: std::net::SocketAddr, within: Duration) -> Outcome {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    if stream.write_all(b"GET /phone-number/").await.is_err() {
        return Outcome::Closed(started.elapsed());
    }
    let rest = format!("{TWILIO_ID} HTTP/1.1\r\nHost: localhost\r\nX-Slow: ");
    let mut bytes = rest.bytes().chain(std::iter::repeat(b'a'));
    let mut buf = [0u8; 1024];
    loop {
        if started.elapsed() >= within {
            return Outcome::StillOpen;
        }
        let byte = bytes.next().unwrap_or(b'a');
        if stream.write_all(&[byte]).await.is_err() {
            return Outcome::Closed(started.elapsed());
        }
        // Wait ~100 ms for the next byte, noticing a close meanwhile.
        let tick = Instant::now();
        while tick.elapsed() < Duration::from_millis(100) {
            let left = Duration::from_millis(100).saturating_sub(tick.elapsed());
            match tokio::time::timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed(started.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
}

fn assert_closed(what: &str, outcome: Outcome) -> Duration {
    match outcome {
        Outcome::Closed(after) => {
            assert!(after < CLOSE_WITHIN, "{what}: closed only after {after:?}");
            after
        }
        Outcome::StillOpen => panic!("{what}: still connected after {CLOSE_WITHIN:?}"),
    }
}

#[tokio::test]
async fn a_silent_client_is_disconnected_after_the_header_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), SHORT_HEADER_TIMEOUT).await;
    let after = assert_closed("silent client", silent(proxy.addr, CLOSE_WITHIN).await);
    assert!(
        after >= Duration::from_millis(200),
        "closed after {after:?}, before the 300 ms header timeout"
    );
    assert_eq!(mock.hits(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_dribbling_client_is_disconnected_after_the_header_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), SHORT_HEADER_TIMEOUT).await;
    assert_closed(
        "dribbling client",
        dribbling(proxy.addr, CLOSE_WITHIN).await,
    );
    assert_eq!(mock.hits(), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn a_stalled_request_head_is_disconnected_after_the_header_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), SHORT_HEADER_TIMEOUT).await;
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN_A}\r\n",
        path(TWILIO_ID)
    );
    assert_closed(
        "stalled request head",
        stalled(proxy.addr, head.as_bytes(), CLOSE_WITHIN).await,
    );
    assert_eq!(mock.hits(), 0, "an unfinished head is never forwarded");
    proxy.stop().await;
}

#[tokio::test]
async fn a_partial_h2_preface_is_disconnected_after_the_header_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), SHORT_HEADER_TIMEOUT).await;
    assert_closed(
        "partial HTTP/2 preface",
        stalled(proxy.addr, b"PRI * HTTP/2.0\r\n", CLOSE_WITHIN).await,
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_full_h2_preface_without_a_request_is_disconnected_after_the_header_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), SHORT_HEADER_TIMEOUT).await;
    assert_closed(
        "HTTP/2 preface, then silence",
        stalled(proxy.addr, H2_PREFACE, CLOSE_WITHIN).await,
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), SHORT_HEADER_TIMEOUT).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN_A}\r\n\r\n",
        path(TWILIO_ID)
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    // Read the whole first answer (it has a content-length), then go quiet.
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let answered = Instant::now();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the answer arrives")
            .expect("read");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                break;
            }
        }
    }
    let outcome = wait_closed(&mut stream, answered, CLOSE_WITHIN + Duration::from_secs(1)).await;
    assert!(
        matches!(outcome, Outcome::Closed(_)),
        "an idle keep-alive connection stays open past the header timeout: {outcome:?}"
    );
    proxy.stop().await;
}

/// Opens `n` slow clients of mixed kinds; returns their tasks.
fn slow_clients(
    addr: std::net::SocketAddr,
    n: usize,
    within: Duration,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    (0..n)
        .map(|i| match i % 3 {
            0 => tokio::spawn(silent(addr, within)),
            1 => tokio::spawn(dribbling(addr, within)),
            _ => tokio::spawn(stalled(addr, b"PRI * HTTP/2.0\r\n", within)),
        })
        .collect()
}

#[tokio::test]
async fn two_hundred_slow_clients_neither_starve_traffic_nor_outlive_the_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), SHORT_HEADER_TIMEOUT).await;
    let clients = slow_clients(proxy.addr, 200, CLOSE_WITHIN + Duration::from_secs(1));
    // Let them connect and start stalling.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(2),
        get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)),
    )
    .await
    .expect("a normal request is answered promptly despite 200 slow clients");
    assert_eq!(resp.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2));

    for (i, client) in clients.into_iter().enumerate() {
        let outcome = client.await.expect("client task");
        match outcome {
            Outcome::Closed(after) => assert!(
                after < CLOSE_WITHIN + Duration::from_secs(1),
                "slow client {i} closed only after {after:?}"
            ),
            Outcome::StillOpen => panic!("slow client {i} was never disconnected"),
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn slow_clients_held_open_do_not_block_the_accept_loop() {
    // A long header timeout, so the slow clients really are connected during the request.
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[server]\nheader_timeout_ms = 10000\ndrain_timeout_ms = 500\n",
    )
    .await;
    let hold = Duration::from_millis(1500);
    let clients = slow_clients(proxy.addr, 200, hold);
    tokio::time::sleep(Duration::from_millis(100)).await;

    for id in [TWILIO_ID, VONAGE_ID] {
        let started = Instant::now();
        let resp = tokio::time::timeout(
            Duration::from_secs(2),
            get(&proxy, &path(id), Some(TOKEN_A)),
        )
        .await
        .expect("answered promptly while 200 slow clients are connected");
        assert_eq!(resp.status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let mut open = 0;
    for client in clients {
        if client.await.expect("client task") == Outcome::StillOpen {
            open += 1;
        }
    }
    assert!(
        open >= 190,
        "the slow clients were held open during the requests ({open} of 200 still open)"
    );
    proxy.stop().await;
}

/// A 100 KB header, well over the proxy's 64 KiB limit on a request head.
fn filler() -> String {
    "f".repeat(100 * 1024)
}

#[tokio::test]
async fn an_oversized_http1_request_head_is_refused_without_an_upstream_call() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;

    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN_A}\r\n\
         X-Filler: {}\r\nConnection: close\r\n\r\n",
        path(TWILIO_ID),
        filler()
    );
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    // The server may stop reading (and close) before the whole head is written.
    let _ =
        tokio::time::timeout(Duration::from_secs(5), stream.write_all(request.as_bytes())).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "expected 431 or a closed connection, got {:?}",
        answer.lines().next()
    );
    assert_eq!(mock.hits(), 0, "nothing was forwarded");

    // The proxy is still fine afterwards.
    let ok = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(ok.status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn an_oversized_h2_header_list_is_refused_without_an_upstream_call() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::get(proxy.url(&path(TWILIO_ID)))
        .header("authorization", format!("Bearer {TOKEN_A}"))
        .header("x-filler", filler())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let outcome = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("h2 answer or error in time");
    if let Ok(resp) = outcome {
        assert!(
            resp.status().is_client_error(),
            "an oversized h2 header list got {}",
            resp.status()
        );
    }
    assert_eq!(mock.hits(), 0, "nothing was forwarded");

    let ok = get(&proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
    assert_eq!(ok.status, StatusCode::OK);
    proxy.stop().await;
}

#[tokio::test]
async fn two_requests_share_one_http1_keep_alive_connection() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);

    let mut bodies = Vec::new();
    for expected in ["miss", "hit"] {
        sender
            .ready()
            .await
            .expect("the connection is still usable");
        let req = Request::get(path(TWILIO_ID))
            .header("host", proxy.addr.to_string())
            .header("authorization", format!("Bearer {TOKEN_A}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
            .await
            .expect("answer in time")
            .expect("response on the kept-alive connection");
        assert_eq!(resp.version(), Version::HTTP_11);
        let resp = Resp::read(resp).await;
        assert_eq!(resp.status, StatusCode::OK);
        resp.assert_cache(expected);
        assert!(!resp.text().contains(PLANTED));
        bodies.push(resp.body);
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1);
    assert!(!conn.is_finished(), "the connection was kept alive");
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
    proxy.stop().await;
}

#[tokio::test]
async fn two_streams_share_one_h2c_connection() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let (mut sender, conn) = h2c(&proxy).await;
    let mut pending = Vec::new();
    for id in [TWILIO_ID, VONAGE_ID] {
        let req = h2_get(&proxy, id);
        pending.push((id, sender.send_request(req)));
    }
    for (id, fut) in pending {
        let resp = tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("answer in time")
            .expect("h2 response");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_2);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["id"], id);
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
    proxy.stop().await;
}

#[tokio::test]
async fn many_concurrent_streams_on_one_h2c_connection_are_all_answered_by_one_fetch() {
    // The streams run in their connection's task (src/stream_tasks.rs): a slow miss on some must
    // not hold up a hit on the same connection, and all the misses join one upstream call.
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    let (mut sender, conn) = h2c(&proxy).await;
    let cached = sender
        .send_request(h2_get(&proxy, VONAGE_ID))
        .await
        .expect("h2 response");
    assert_eq!(Resp::read(cached).await.status, StatusCode::OK);

    // Well inside the test proxy's 2 s upstream timeout.
    mock.set_behavior(Behavior::Delay(Duration::from_secs(1)));
    let mut misses = Vec::new();
    for _ in 0..50 {
        misses.push(tokio::spawn(sender.send_request(h2_get(&proxy, TWILIO_ID))));
    }
    upstream_reached(&mock, &path(TWILIO_ID)).await;
    let hit = sender
        .send_request(h2_get(&proxy, VONAGE_ID))
        .await
        .expect("h2 response");
    let hit = Resp::read(hit).await;
    assert_eq!(hit.cache(), Some("hit"));
    assert!(
        misses.iter().all(|miss| !miss.is_finished()),
        "the hit was answered while the misses still waited on the upstream"
    );
    for (i, miss) in misses.into_iter().enumerate() {
        let resp = tokio::time::timeout(Duration::from_secs(10), miss)
            .await
            .expect("answer in time")
            .expect("request task")
            .expect("h2 response");
        assert_eq!(resp.status(), StatusCode::OK, "stream {i}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(v["id"], TWILIO_ID, "stream {i}");
    }
    assert_eq!(mock.hits_for(&path(TWILIO_ID)), 1, "one upstream call");
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_h2c_stream_in_flight_is_answered_when_shutdown_begins() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(600)))
        .start()
        .await;
    let mut proxy = Proxy::start(&mock.url(), "").await;
    let (mut sender, conn) = h2c(&proxy).await;
    let in_flight = sender.send_request(h2_get(&proxy, TWILIO_ID));
    let waiting = tokio::spawn(in_flight);
    upstream_reached(&mock, &path(TWILIO_ID)).await;
    proxy.begin_shutdown();
    let server = proxy.take_task();
    let resp = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered in time")
        .expect("request task")
        .expect("h2 response");
    let resp = Resp::read(resp).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["id"], TWILIO_ID);
    // Then the connection is closed and the server's drain ends.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection ends after the drain")
        .ok();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server drains")
        .expect("server task");
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_after_the_idle_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[server]\nidle_timeout_ms = 300\nheader_timeout_ms = 5000\n",
    )
    .await;
    let (mut sender, conn) = h2c(&proxy).await;
    let req = h2_get(&proxy, TWILIO_ID);
    let resp = sender.send_request(req).await.expect("h2 response");
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await.expect("body");
    // The client keeps its side open; the server ends the idle connection (GOAWAY, then close).
    let answered = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection stayed open past the idle timeout"
    );
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(250),
        "closed before the idle timeout: {after:?}"
    );
    drop(sender);
    proxy.stop().await;
}

#[tokio::test]
async fn a_busy_h2c_connection_is_not_closed_for_idleness() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "[server]\nidle_timeout_ms = 400\n").await;
    let (mut sender, conn) = h2c(&proxy).await;
    // A request every 150 ms for 1.5 s: never 400 ms without one.
    for _ in 0..10 {
        let req = h2_get(&proxy, TWILIO_ID);
        let resp = sender
            .send_request(req)
            .await
            .expect("the connection is still open");
        assert_eq!(resp.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(!conn.is_finished());
    drop(sender);
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_the_idle_timeout() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(
        &mock.url(),
        "[server]\nidle_timeout_ms = 300\nheader_timeout_ms = 5000\n",
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN_A}\r\n\r\n",
        path(TWILIO_ID)
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let answered = Instant::now();
    let outcome = wait_closed(&mut stream, answered, Duration::from_secs(3)).await;
    assert!(
        matches!(outcome, Outcome::Closed(_)),
        "an idle HTTP/1.1 connection outlived the idle timeout: {outcome:?}"
    );
}

/// An h2c (prior knowledge) connection to `proxy`: its sender and its driving task.
async fn h2c(
    proxy: &Proxy,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    (sender, tokio::spawn(conn))
}

/// `GET /phone-number/{id}` with the test credential, for an HTTP/2 sender.
fn h2_get(proxy: &Proxy, id: &str) -> Request<Empty<Bytes>> {
    Request::get(proxy.url(&path(id)))
        .header("authorization", format!("Bearer {TOKEN_A}"))
        .body(Empty::<Bytes>::new())
        .expect("request")
}
