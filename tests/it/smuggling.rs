//! Request smuggling and HTTP/1.1 framing, over raw sockets on 127.0.0.1 against an in-process
//! phonegate in front of the mock upstream.
//!
//! Every case writes raw bytes in one write, reads until the server closes (bounded by
//! [`READ_TIMEOUT`]), and asserts three things:
//!
//! 1. exactly which answers came back, and from whom: [`Answer::Hyper`] is hyper's own answer to a
//!    message it cannot parse (a bare status, no `x-request-id`: phonegate's handler never ran);
//!    [`Answer::Phonegate`] is the handler's JSON answer; no answer at all is an empty list;
//! 2. that the connection was closed (a framing error must never leave a connection that goes on
//!    to read more requests);
//! 3. exactly which requests reached the upstream (method, path, body), and how many requests
//!    phonegate's handler served (its `phonegate_requests_total`, from the admin `/metrics`).
//!
//! Most malformed messages carry, hidden in their body or after them on the same connection, a
//! request the attacker wants executed: a read of [`VAPI_ID`], a `DELETE` of [`TELNYX_ID`] or a
//! `PATCH` of [`VONAGE_ID`], well-formed and authorized. No legitimate request in this file ever
//! touches those three ids, so any upstream call for them is a smuggled request that got through;
//! the cache is off ([`EXTRA`]) so a smuggled read cannot hide behind a cache hit.
//!
//! The expected outcomes are what hyper 1.x does today; they are asserted exactly, so a change in
//! how the HTTP layer frames or refuses a message shows up here. Each test also checks that no
//! panic happened anywhere outside this test code and that the proxy still serves afterwards.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::support::mock_vapi::{
    BYO_ID, RecordedRequest, TELNYX_ID, TWILIO_ID, VAPI_ID, VONAGE_ID,
};
use crate::support::{MockVapi, Proxy, TOKEN_A, path};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a case may take to be answered and closed.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// How long to wait after a connection closed for a late upstream call to land (the write routes
/// run their upstream exchange in a task of its own, which outlives a closed connection).
const SETTLE: Duration = Duration::from_millis(40);

/// Cache off (every read the handler executes reaches the upstream, so none can hide behind a
/// hit) and no miss budget (the suite makes more upstream calls than the default burst).
const EXTRA: &str = "[cache]\nttl_secs = 0\nnegative_ttl_secs = 0\nlist_ttl_secs = 0\n\
                     [limits]\nmisses_per_sec_per_key = 0\n";

/// The `Host` every request here names (phonegate ignores it; the upstream authority is fixed).
const HOST: &str = "phonegate.test";

/// The JSON body of the legitimate writes.
const PATCH_BODY: &str = r#"{"name":"smuggling-suite"}"#;
/// The JSON body of the legitimate creates.
const POST_BODY: &str = r#"{"provider":"vapi","name":"smuggling-suite"}"#;

// ---------------------------------------------------------------------------------------------
// Requests.

/// A request head: request line, `Host`, the bearer token, then `extra` (complete header lines,
/// each ending in CRLF), then the blank line.
fn head(method: &str, target: &str, extra: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN_A}\r\n{extra}\r\n"
    )
}

/// `body` as one chunk and the last chunk.
fn chunked(body: &str) -> String {
    format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
}

/// A read the attacker wants executed (an id no legitimate request here reads).
fn smuggled_get() -> String {
    head("GET", &path(VAPI_ID), "")
}

/// A delete the attacker wants executed.
fn smuggled_delete() -> String {
    head("DELETE", &path(TELNYX_ID), "")
}

/// A change the attacker wants executed.
fn smuggled_patch() -> String {
    let body = r#"{"name":"pwned"}"#;
    format!(
        "{}{body}",
        head(
            "PATCH",
            &path(VONAGE_ID),
            &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
        )
    )
}

/// All three smuggled requests, back to back.
fn smuggled_all() -> String {
    format!(
        "{}{}{}",
        smuggled_get(),
        smuggled_delete(),
        smuggled_patch()
    )
}

fn twilio() -> String {
    path(TWILIO_ID)
}

// ---------------------------------------------------------------------------------------------
// Outcomes.

/// One answer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// hyper's automatic answer to a message it cannot parse: the status, an empty body, no
    /// `x-request-id`. phonegate's handler never saw the request.
    Hyper(u16),
    /// An answer from phonegate's handler (it carries `x-request-id`).
    Phonegate(u16),
}

/// How the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The server closed it (FIN).
    Closed,
    /// The server reset it (it closed with bytes of ours still unread).
    Reset,
    /// Still open when [`READ_TIMEOUT`] passed.
    Open,
}

/// One request as the upstream should have received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Forwarded {
    method: Method,
    path: String,
    body: String,
}

fn fwd(method: Method, path: String, body: &str) -> Forwarded {
    Forwarded {
        method,
        path,
        body: body.to_owned(),
    }
}

/// A case: the bytes, what must come back, and what must reach the upstream.
struct Case {
    name: String,
    bytes: Vec<u8>,
    /// Shut our write half down after writing (for a body that promises more than is sent).
    half_close: bool,
    answers: Vec<Answer>,
    forwarded: Vec<Forwarded>,
    /// A phrase the message of phonegate's first error answer must contain.
    because: Option<&'static str>,
}

impl Case {
    /// `bytes` must get exactly `answers`, then a closed connection, and nothing may reach the
    /// upstream.
    fn new(name: impl Into<String>, bytes: impl Into<Vec<u8>>, answers: &[Answer]) -> Case {
        Case {
            name: name.into(),
            bytes: bytes.into(),
            half_close: false,
            answers: answers.to_vec(),
            forwarded: Vec::new(),
            because: None,
        }
    }

    /// phonegate's first error answer must say this (which refusal it was).
    fn because(mut self, phrase: &'static str) -> Case {
        self.because = Some(phrase);
        self
    }

    /// Exactly these requests reach the upstream, in this order.
    fn forwards(mut self, forwarded: Vec<Forwarded>) -> Case {
        self.forwarded = forwarded;
        self
    }

    fn half_close(mut self) -> Case {
        self.half_close = true;
        self
    }
}

/// A response parsed off the wire.
#[derive(Debug)]
struct Parsed {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn answer(&self) -> Answer {
        if self.header("x-request-id").is_some() {
            Answer::Phonegate(self.status)
        } else {
            Answer::Hyper(self.status)
        }
    }
}

/// Splits the bytes a server sent into responses (content-length or chunked bodies). Anything
/// that is not a complete response is an error: a server must never send a torn answer.
fn parse_responses(mut bytes: &[u8]) -> Result<Vec<Parsed>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("a response head without its blank line")?;
        let head = std::str::from_utf8(&bytes[..end]).map_err(|e| e.to_string())?;
        bytes = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut words = status_line.split(' ');
        if words.next() != Some("HTTP/1.1") {
            return Err(format!("not an HTTP/1.1 status line: {status_line:?}"));
        }
        let status: u16 = words
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status code in {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .ok_or_else(|| format!("a header line without a colon: {line:?}"))?;
                Ok((name.trim().to_owned(), value.trim().to_owned()))
            })
            .collect::<Result<_, String>>()?;
        let mut parsed = Parsed {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = parsed.header("content-length") {
            let len: usize = len.parse().map_err(|_| format!("content-length {len:?}"))?;
            if bytes.len() < len {
                return Err(format!("a body of {} bytes, {len} announced", bytes.len()));
            }
            parsed.body = bytes[..len].to_vec();
            bytes = &bytes[len..];
        } else if parsed
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = bytes
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or("a torn chunk size line")?;
                let size = std::str::from_utf8(&bytes[..line_end]).map_err(|e| e.to_string())?;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or(""), 16)
                    .map_err(|_| format!("chunk size {size:?}"))?;
                bytes = &bytes[line_end + 2..];
                if bytes.len() < size + 2 {
                    return Err("a torn chunk".into());
                }
                parsed.body.extend_from_slice(&bytes[..size]);
                bytes = &bytes[size + 2..];
                if size == 0 {
                    break;
                }
            }
        } else if status != 304 && status != 204 && !(100..200).contains(&status) {
            return Err(format!("a {status} response without framing"));
        }
        out.push(parsed);
    }
    Ok(out)
}

/// What one connection saw.
struct Exchange {
    bytes: Vec<u8>,
    end: End,
    elapsed: Duration,
}

/// Writes `bytes` in one write, then reads until the server closes or [`READ_TIMEOUT`] passes.
async fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Exchange {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may refuse and close before it has read everything: a failed write is part of
    // the outcome, not an error of the test.
    let _ = stream.write_all(bytes).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let end = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
        }
    };
    Exchange {
        bytes: out,
        end,
        elapsed: started.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------------
// Panics.

/// Panics raised anywhere but in this test code (phonegate, hyper, their tasks).
static SERVER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Installs, once, a panic hook that records panics raised outside `tests/` (a server task's
/// panic is otherwise swallowed by its runtime) and then runs the default hook.
fn watch_for_panics() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().starts_with("tests/") || l.file().contains("/tests/"));
            if !in_tests {
                SERVER_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(info.to_string());
            }
            default(info);
        }));
    });
}

fn assert_no_server_panic() {
    let panics = SERVER_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        panics.is_empty(),
        "the server panicked on malformed input: {panics:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The harness.

/// A mock upstream, a phonegate in front of it, and the running tallies the cases check.
struct Harness {
    mock: MockVapi,
    proxy: Proxy,
    /// Upstream requests recorded so far.
    seen: usize,
    /// Requests phonegate's handler has answered so far.
    handled: u64,
    /// Every upstream request the cases so far expected.
    expected_total: Vec<Forwarded>,
    /// One line per case: what hyper and phonegate did.
    report: String,
}

impl Harness {
    async fn start() -> Harness {
        watch_for_panics();
        let mock = MockVapi::start().await;
        let proxy = Proxy::start(&mock.url(), EXTRA).await;
        let mut h = Harness {
            mock,
            proxy,
            seen: 0,
            handled: 0,
            expected_total: Vec::new(),
            report: String::new(),
        };
        h.handled = h.handled_now().await;
        h
    }

    /// `phonegate_requests_total`, summed over its labels.
    async fn handled_now(&self) -> u64 {
        let resp = crate::support::send(
            Request::get(format!("http://{}/metrics", self.proxy.admin_addr))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK);
        resp.text()
            .lines()
            .filter(|l| l.starts_with("phonegate_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Runs one case and asserts its outcome exactly; returns the answers and what the upstream
    /// received, for checks of their own.
    async fn run(&mut self, case: Case) -> (Vec<Parsed>, Vec<RecordedRequest>) {
        let ex = exchange(self.proxy.addr, &case.bytes, case.half_close).await;
        tokio::time::sleep(SETTLE).await;
        let name = &case.name;
        let shown = String::from_utf8_lossy(&ex.bytes).into_owned();

        let parsed = parse_responses(&ex.bytes)
            .unwrap_or_else(|e| panic!("{name}: unparsable answer ({e}): {shown:?}"));
        let answers: Vec<Answer> = parsed.iter().map(Parsed::answer).collect();

        let requests = self.mock.requests();
        let new: Vec<Forwarded> = requests[self.seen..]
            .iter()
            .map(|r| Forwarded {
                method: r.method.clone(),
                path: r.path_and_query.clone(),
                body: String::from_utf8_lossy(&r.body).into_owned(),
            })
            .collect();
        self.seen = requests.len();
        let handled = self.handled_now().await;
        let handled_delta = handled - self.handled;
        self.handled = handled;

        let messages: Vec<String> = parsed
            .iter()
            .filter(|p| p.status >= 400)
            .filter_map(|p| serde_json::from_slice::<serde_json::Value>(&p.body).ok())
            .map(|v| v["message"].as_str().unwrap_or_default().to_owned())
            .collect();
        let _ = writeln!(
            self.report,
            "{name}: {answers:?} {messages:?}, {:?} after {:?}, upstream {:?}",
            ex.end,
            ex.elapsed,
            new.iter()
                .map(|f| format!("{} {}", f.method, f.path))
                .collect::<Vec<_>>()
        );

        // Nothing smuggled, whatever else the case expects.
        for f in &new {
            let smuggled = [VAPI_ID, TELNYX_ID, VONAGE_ID]
                .iter()
                .any(|id| f.path.contains(id) || f.body.contains("pwned"));
            assert!(
                !smuggled,
                "{name}: A SMUGGLED REQUEST REACHED THE UPSTREAM: {f:?}\nanswer: {shown:?}"
            );
        }
        assert_eq!(
            new, case.forwarded,
            "{name}: what reached the upstream\nanswer: {shown:?}"
        );
        assert_eq!(
            answers, case.answers,
            "{name}: the answers on the wire\n{shown:?}"
        );
        let by_handler = answers
            .iter()
            .filter(|a| matches!(a, Answer::Phonegate(_)))
            .count() as u64;
        assert_eq!(
            handled_delta, by_handler,
            "{name}: requests phonegate's handler served (a smuggled request it answered on a \
             closed connection counts too)\n{shown:?}"
        );
        assert_ne!(
            ex.end,
            End::Open,
            "{name}: the connection must be closed, not left open for more requests\n{shown:?}"
        );
        // Every hyper refusal is bare, every phonegate answer is JSON with its own status.
        let mut because = case.because;
        for p in &parsed {
            match p.answer() {
                Answer::Hyper(_) => assert!(p.body.is_empty(), "{name}: {shown:?}"),
                Answer::Phonegate(status) => {
                    let v: serde_json::Value = serde_json::from_slice(&p.body)
                        .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {shown:?}"));
                    if status >= 400 {
                        assert_eq!(v["statusCode"], status, "{name}: {shown:?}");
                        if let Some(phrase) = because.take() {
                            let message = v["message"].as_str().unwrap_or_default();
                            assert!(
                                message.contains(phrase),
                                "{name}: refused for {message:?}, not {phrase:?}"
                            );
                        }
                    }
                }
            }
        }
        assert!(
            because.is_none(),
            "{name}: no phonegate error answer saying {because:?}\n{shown:?}"
        );
        self.expected_total.extend(case.forwarded);
        (parsed, requests[requests.len() - new.len()..].to_vec())
    }

    /// Runs every case, then checks the totals, that nothing smuggled landed late, that no panic
    /// happened and that the proxy still serves.
    async fn run_all(mut self, cases: Vec<Case>) {
        for case in cases {
            self.run(case).await;
        }
        self.finish().await;
    }

    async fn finish(self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            self.mock.hits(),
            self.expected_total.len(),
            "upstream calls over the whole test\n{}",
            self.report
        );
        for id in [VAPI_ID, TELNYX_ID, VONAGE_ID] {
            assert_eq!(
                self.mock.hits_for(&path(id)),
                0,
                "smuggled {id} reached the upstream"
            );
        }
        assert!(
            self.mock.object(TELNYX_ID).is_some(),
            "the smuggled DELETE happened"
        );
        assert_ne!(
            self.mock.object(VONAGE_ID).expect("vonage")["name"],
            "pwned",
            "the smuggled PATCH happened"
        );
        assert_no_server_panic();
        // Still serving, on a fresh connection.
        let ok = crate::support::get(&self.proxy, &path(TWILIO_ID), Some(TOKEN_A)).await;
        assert_eq!(ok.status, StatusCode::OK, "the proxy still serves");
        eprintln!("{}", self.report);
        self.proxy.stop().await;
    }
}

use Answer::{Hyper, Phonegate};

// ---------------------------------------------------------------------------------------------
// Content-Length and Transfer-Encoding together.

#[tokio::test]
async fn content_length_with_transfer_encoding_never_lets_a_hidden_request_through() {
    let h = Harness::start().await;
    let t = twilio();
    let json = "Content-Type: application/json\r\n";
    let mut cases = Vec::new();

    // CL.TE on a GET: a CL-framing front end reads `0\r\n\r\n` plus the smuggled requests as
    // the body; a TE-framing back end would end the body at the last chunk and run them.
    // hyper frames by TE (dropping the CL), phonegate refuses a GET with a body, and hyper closes
    // after any message that had both headers.
    for smuggled in [smuggled_get(), smuggled_delete(), smuggled_all()] {
        let body = format!("0\r\n\r\n{smuggled}");
        cases.push(
            Case::new(
                "CL.TE GET",
                format!(
                    "{}{body}",
                    head(
                        "GET",
                        &t,
                        &format!(
                            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                            body.len()
                        )
                    )
                ),
                &[Phonegate(400)],
            )
            .because("must not carry a body"),
        );
    }
    // The same with Transfer-Encoding first.
    let body = format!("0\r\n\r\n{}", smuggled_get());
    cases.push(
        Case::new(
            "TE first, CL second, GET",
            format!(
                "{}{body}",
                head(
                    "GET",
                    &t,
                    &format!(
                        "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                        body.len()
                    )
                )
            ),
            &[Phonegate(400)],
        )
        .because("must not carry a body"),
    );
    // TE.CL on a GET: the smuggled request sits inside a chunk; a CL-framing back end would stop
    // after `Content-Length: 4` bytes (the chunk size line) and run it.
    let smuggled = smuggled_delete();
    cases.push(
        Case::new(
            "TE.CL GET",
            format!(
                "{}{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                head(
                    "GET",
                    &t,
                    "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"
                ),
                smuggled.len()
            ),
            &[Phonegate(400)],
        )
        .because("must not carry a body"),
    );

    // CL.TE on a PATCH: the chunked body is the JSON; after the last chunk come the smuggled
    // requests, and the Content-Length covers them all. hyper frames by TE: the PATCH goes
    // upstream with exactly the JSON, and the connection closes before anything after it is read.
    for smuggled in [smuggled_delete(), smuggled_get(), smuggled_all()] {
        let body = format!("{}{smuggled}", chunked(PATCH_BODY));
        cases.push(
            Case::new(
                "CL.TE PATCH",
                format!(
                    "{}{body}",
                    head(
                        "PATCH",
                        &t,
                        &format!(
                            "{json}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                            body.len()
                        )
                    )
                ),
                &[Phonegate(200)],
            )
            .forwards(vec![fwd(Method::PATCH, t.clone(), PATCH_BODY)]),
        );
    }
    // The same, but Connection: keep-alive asked for explicitly: hyper still closes.
    let body = format!("{}{}", chunked(PATCH_BODY), smuggled_delete());
    cases.push(
        Case::new(
            "CL.TE PATCH, keep-alive asked for",
            format!(
                "{}{body}",
                head(
                    "PATCH",
                    &t,
                    &format!(
                        "{json}Connection: keep-alive\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                        body.len()
                    )
                )
            ),
            &[Phonegate(200)],
        )
        .forwards(vec![fwd(Method::PATCH, t.clone(), PATCH_BODY)]),
    );
    // CL.TE where the CL is short: a CL-framing back end would take 5 bytes of body and read the
    // rest as requests. By TE the body is the JSON.
    cases.push(
        Case::new(
            "CL.TE PATCH, short CL",
            format!(
                "{}{}{}",
                head(
                    "PATCH",
                    &t,
                    &format!("{json}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")
                ),
                chunked(PATCH_BODY),
                smuggled_all()
            ),
            &[Phonegate(200)],
        )
        .forwards(vec![fwd(Method::PATCH, t.clone(), PATCH_BODY)]),
    );
    // TE.CL on a PATCH: the CL covers the chunk size line only, the smuggled DELETE is the
    // chunk's data. By TE the body is the DELETE's text, which is not JSON: refused, nothing
    // forwarded.
    let smuggled = smuggled_delete();
    cases.push(
        Case::new(
            "TE.CL PATCH",
            format!(
                "{}{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                head(
                    "PATCH",
                    &t,
                    &format!("{json}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n")
                ),
                smuggled.len()
            ),
            &[Phonegate(400)],
        )
        .because("valid JSON"),
    );
    // CL-framed JSON followed by the smuggled request, TE: chunked alongside: by TE the JSON's
    // first byte is not a chunk size. The body cannot be read: refused, nothing forwarded.
    cases.push(
        Case::new(
            "TE.CL PATCH, CL frames the JSON",
            format!(
                "{}{PATCH_BODY}{}",
                head(
                    "PATCH",
                    &t,
                    &format!(
                        "{json}Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                        PATCH_BODY.len()
                    )
                ),
                smuggled_delete()
            ),
            &[Phonegate(400)],
        )
        .because("could not be read"),
    );
    // CL.TE on a POST (create): the same as the PATCH.
    let body = format!("{}{}", chunked(POST_BODY), smuggled_delete());
    cases.push(
        Case::new(
            "CL.TE POST",
            format!(
                "{}{body}",
                head(
                    "POST",
                    "/phone-number",
                    &format!(
                        "{json}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                        body.len()
                    )
                )
            ),
            &[Phonegate(201)],
        )
        .forwards(vec![fwd(Method::POST, "/phone-number".into(), POST_BODY)]),
    );
    // TE.CL on a POST.
    let smuggled = smuggled_patch();
    cases.push(
        Case::new(
            "TE.CL POST",
            format!(
                "{}{:x}\r\n{smuggled}\r\n0\r\n\r\n",
                head(
                    "POST",
                    "/phone-number",
                    &format!("{json}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n")
                ),
                smuggled.len()
            ),
            &[Phonegate(400)],
        )
        .because("valid JSON"),
    );
    // CL.TE on a DELETE (which must not have a body at all).
    let body = format!("0\r\n\r\n{}", smuggled_get());
    cases.push(
        Case::new(
            "CL.TE DELETE",
            format!(
                "{}{body}",
                head(
                    "DELETE",
                    &t,
                    &format!(
                        "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                        body.len()
                    )
                )
            ),
            &[Phonegate(400)],
        )
        .because("DELETE requests must not carry a body"),
    );
    // TE that is not chunked, with a CL: hyper refuses the head.
    cases.push(Case::new(
        "CL + TE: identity",
        format!(
            "{}{PATCH_BODY}{}",
            head(
                "PATCH",
                &t,
                &format!(
                    "{json}Content-Length: {}\r\nTransfer-Encoding: identity\r\n",
                    PATCH_BODY.len()
                )
            ),
            smuggled_delete()
        ),
        &[Hyper(400)],
    ));
    h.run_all(cases).await;
}

// ---------------------------------------------------------------------------------------------
// Content-Length.

/// A PATCH of the twilio number with `cl_lines` (complete header lines) as its framing, the JSON
/// body, then everything the attacker wants executed.
fn patch_with(cl_lines: &str, body: &str) -> String {
    format!(
        "{}{body}{}",
        head(
            "PATCH",
            &twilio(),
            &format!("Content-Type: application/json\r\n{cl_lines}")
        ),
        smuggled_all()
    )
}

/// A GET of the twilio number with `lines` (complete header lines), `body`, then everything the
/// attacker wants executed.
fn get_with(lines: &str, body: &str) -> String {
    format!("{}{body}{}", head("GET", &twilio(), lines), smuggled_all())
}

#[tokio::test]
async fn content_length_variants_are_refused_or_framed_exactly() {
    let h = Harness::start().await;
    let t = twilio();
    let n = PATCH_BODY.len();
    let patched = || vec![fwd(Method::PATCH, twilio(), PATCH_BODY)];
    let mut cases = Vec::new();

    // Two Content-Lengths with different values: a front end taking the first and a back end
    // taking the last would disagree on where the body ends. hyper refuses the head.
    for (a, b) in [(0, 5), (5, 0), (n, n + 5), (n, 0)] {
        cases.push(Case::new(
            format!("Content-Length {a} then {b}, GET"),
            get_with(
                &format!("Content-Length: {a}\r\nContent-Length: {b}\r\n"),
                "hello",
            ),
            &[Hyper(400)],
        ));
        cases.push(Case::new(
            format!("Content-Length {a} then {b}, PATCH"),
            patch_with(
                &format!("Content-Length: {a}\r\nContent-Length: {b}\r\n"),
                PATCH_BODY,
            ),
            &[Hyper(400)],
        ));
    }
    // Comma lists, even of one repeated value (which RFC 9110 lets a recipient accept), signs,
    // hex, decimals, exponents, inner spaces, empty values, non-ASCII digits, and values past u64:
    // all refused by hyper before phonegate sees the request.
    for value in [
        format!("{n}, {n}"),
        format!("{n},{n}"),
        format!("0, {n}"),
        format!("{n}, 0"),
        format!("+{n}"),
        format!("-{n}"),
        "-1".to_owned(),
        format!("0x{n:x}"),
        format!("{n}.0"),
        format!("{n}e0"),
        format!("{} {}", n / 10, n % 10),
        String::new(),
        "\u{0661}\u{0662}".to_owned(), // Arabic-Indic digits
        "99999999999999999999999".to_owned(),
        "18446744073709551616".to_owned(), // u64::MAX + 1
    ] {
        cases.push(Case::new(
            format!("Content-Length: {value:?}, PATCH"),
            patch_with(&format!("Content-Length: {value}\r\n"), PATCH_BODY),
            &[Hyper(400)],
        ));
    }
    // The largest u64 values: past hyper's own maximum body length they are "too large" (431);
    // just under it, the head is accepted and phonegate refuses a GET with a body, after which the
    // body can never be drained and the connection closes.
    for value in ["18446744073709551615", "18446744073709551614"] {
        cases.push(Case::new(
            format!("Content-Length: {value}, GET"),
            get_with(&format!("Content-Length: {value}\r\n"), "hello"),
            &[Hyper(431)],
        ));
    }
    cases.push(
        Case::new(
            "Content-Length: 18446744073709551613, GET",
            get_with("Content-Length: 18446744073709551613\r\n", "hello"),
            &[Phonegate(400)],
        )
        .because("must not carry a body"),
    );
    // A Content-Length over server.max_request_body_bytes on a write is refused from the
    // declared length alone, before any body is read (and so before anything smuggled in the
    // "body" could matter); nothing is forwarded.
    for value in ["18446744073709551613", "1000000000000", "262145"] {
        cases.push(
            Case::new(
                format!("Content-Length: {value}, PATCH, then EOF"),
                patch_with(&format!("Content-Length: {value}\r\n"), PATCH_BODY),
                &[Phonegate(413)],
            )
            .half_close()
            .because("too large"),
        );
    }
    // Accepted variants, framed exactly: the same value twice, leading zeros, whitespace around
    // the value (which the header grammar strips). `Connection: close` makes the smuggled
    // requests after the body unreachable, so the upstream gets exactly the JSON.
    for lines in [
        format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"),
        format!("Content-Length: 000{n}\r\n"),
        format!("Content-Length:    {n}   \r\n"),
        format!("Content-Length:\t{n}\t\r\n"),
    ] {
        cases.push(
            Case::new(
                format!("accepted {lines:?}, PATCH"),
                patch_with(&format!("{lines}Connection: close\r\n"), PATCH_BODY),
                &[Phonegate(200)],
            )
            .forwards(patched()),
        );
    }
    // The same value twice on a bodiless GET: accepted and served.
    cases.push(
        Case::new(
            "Content-Length 0 twice, GET",
            get_with(
                "Content-Length: 0\r\nContent-Length: 0\r\nConnection: close\r\n",
                "",
            ),
            &[Phonegate(200)],
        )
        .forwards(vec![fwd(Method::GET, t.clone(), "")]),
    );
    // A Content-Length shorter than the JSON: the body is cut where the length says, so the
    // PATCH is refused as bad JSON; the rest of the JSON is then parsed as the next request
    // (a garbage request line), which hyper refuses and closes on. The smuggled requests behind
    // it are never read.
    cases.push(
        Case::new(
            "Content-Length shorter than the JSON, PATCH",
            patch_with("Content-Length: 5\r\n", PATCH_BODY),
            &[Phonegate(400), Hyper(400)],
        )
        .because("valid JSON"),
    );
    h.run_all(cases).await;
}

// ---------------------------------------------------------------------------------------------
// Transfer-Encoding.

/// A chunked PATCH of the twilio number with `te_lines` (complete header lines), its chunked
/// JSON body, then everything the attacker wants executed.
fn chunked_patch(te_lines: &str) -> String {
    patch_with(te_lines, &chunked(PATCH_BODY))
}

#[tokio::test]
async fn transfer_encoding_variants_are_refused_or_framed_exactly() {
    let h = Harness::start().await;
    let patched = || vec![fwd(Method::PATCH, twilio(), PATCH_BODY)];
    let mut cases = Vec::new();

    // Codings where chunked is not the final one, look-alikes, and lists hyper cannot read as
    // chunked: refused by hyper (a request whose body length it cannot determine).
    for value in [
        "chunked, identity",
        "chunked,identity",
        "chunked, gzip",
        "identity",
        "gzip",
        "xchunked",
        "chunkedx",
        "chunk",
        "chunked;q=1",
        "\"chunked\"",
        "chu nked",
        "chunked\u{017f}", // a Unicode long s, which some case folding maps to "s"
        "",
    ] {
        cases.push(Case::new(
            format!("Transfer-Encoding: {value:?}"),
            chunked_patch(&format!("Transfer-Encoding: {value}\r\n")),
            &[Hyper(400)],
        ));
    }
    // Two Transfer-Encoding headers whose last one is not chunked.
    for lines in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: \r\n",
    ] {
        cases.push(Case::new(
            format!("two TEs {lines:?}"),
            chunked_patch(lines),
            &[Hyper(400)],
        ));
    }
    // Malformed header lines carrying the TE: a space or tab before the colon, a vertical tab or
    // form feed in the value, an obs-fold continuation, a NUL, a bare CR: refused by hyper.
    for lines in [
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding\t: chunked\r\n",
        "Transfer-Encoding:\x0bchunked\r\n",
        "Transfer-Encoding: chunked\x0c\r\n",
        "Transfer-Encoding:\r\n chunked\r\n",
        "Transfer-Encoding: identity\r\n\tchunked\r\n",
        "X-Padding: x\r\n Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\0\r\n",
        "Transfer-Encoding: chunked\rX: y\r\n",
    ] {
        cases.push(Case::new(
            format!("TE line {lines:?}"),
            chunked_patch(lines),
            &[Hyper(400)],
        ));
    }
    // Transfer-Encoding in HTTP/1.0, which has no chunked coding.
    cases.push(Case::new(
        "Transfer-Encoding in HTTP/1.0",
        chunked_patch("Transfer-Encoding: chunked\r\n").replacen("HTTP/1.1", "HTTP/1.0", 1),
        &[Hyper(400)],
    ));
    // Accepted as chunked (coding names are case-insensitive, whitespace around a value is not
    // part of it, and hyper looks only at the final coding of the last TE line). `Connection:
    // close` leaves the smuggled requests after the last chunk unread; the upstream gets exactly
    // the JSON.
    for lines in [
        "Transfer-Encoding: Chunked\r\n",
        "Transfer-Encoding: CHUNKED\r\n",
        "Transfer-Encoding: cHuNkEd\r\n",
        "Transfer-Encoding:\tchunked\r\n",
        "Transfer-Encoding: chunked   \r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
        "transfer-encoding: chunked\r\n",
    ] {
        cases.push(
            Case::new(
                format!("accepted TE {lines:?}"),
                chunked_patch(&format!("{lines}Connection: close\r\n")),
                &[Phonegate(200)],
            )
            .forwards(patched()),
        );
    }
    // TE.TE: an obfuscated Transfer-Encoding next to a Content-Length that covers the chunked
    // body *and* the smuggled requests, so that a front end which does not recognise the TE
    // frames by the CL and passes the lot along as one request. hyper either refuses the TE
    // outright, or reads it as chunked, ignores the CL, forwards exactly the JSON and closes
    // (no `Connection: close` here: the CL + TE pair alone ends the connection).
    let cl = chunked(PATCH_BODY).len() + smuggled_all().len();
    for (te, accepted) in [
        ("Transfer-Encoding: xchunked\r\n", false),
        ("Transfer-Encoding: chunked, identity\r\n", false),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
            false,
        ),
        ("Transfer-Encoding : chunked\r\n", false),
        ("Transfer-Encoding:\x0bchunked\r\n", false),
        ("Transfer-Encoding:\r\n chunked\r\n", false),
        ("Transfer-Encoding: Chunked\r\n", true),
        ("Transfer-Encoding: CHUNKED\r\n", true),
        ("Transfer-Encoding:\tchunked\r\n", true),
        ("Transfer-Encoding: identity, chunked\r\n", true),
        (
            "Transfer-Encoding: x\r\nTransfer-Encoding: chunked\r\n",
            true,
        ),
    ] {
        for lines in [
            format!("Content-Length: {cl}\r\n{te}"),
            format!("{te}Content-Length: {cl}\r\n"),
        ] {
            let case = Case::new(
                format!("TE.TE {lines:?}"),
                chunked_patch(&lines),
                &[if accepted { Phonegate(200) } else { Hyper(400) }],
            );
            cases.push(if accepted {
                case.forwards(patched())
            } else {
                case
            });
        }
    }
    // A TE name that is not Transfer-Encoding: the PATCH has no body (refused as bad JSON) and
    // its chunked "body" is read as the next request, a garbage request line hyper refuses; the
    // smuggled requests behind it are never read.
    for name in [
        "Transfer_Encoding",
        "Transfer-Encodings",
        "TransferEncoding",
    ] {
        cases.push(
            Case::new(
                format!("{name}: chunked"),
                chunked_patch(&format!("{name}: chunked\r\n")),
                &[Phonegate(400), Hyper(400)],
            )
            .because("valid JSON"),
        );
    }
    h.run_all(cases).await;
}

// ---------------------------------------------------------------------------------------------
// Chunk sizes.

#[tokio::test]
async fn bad_chunk_sizes_are_refused_and_end_the_connection() {
    let h = Harness::start().await;
    let te = "Transfer-Encoding: chunked\r\n";
    let patched = || vec![fwd(Method::PATCH, twilio(), PATCH_BODY)];
    let len = PATCH_BODY.len();
    let mut cases = Vec::new();

    // Bodies hyper cannot decode: phonegate's handler has started the PATCH, reading the body
    // fails, it answers 400 and hyper closes. Nothing is forwarded, and nothing after is read.
    for (what, body) in [
        (
            "negative size",
            format!("-{len:x}\r\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        ("negative one", format!("-1\r\n{PATCH_BODY}\r\n0\r\n\r\n")),
        (
            "hex overflow",
            format!("1{:016x}\r\n{PATCH_BODY}\r\n0\r\n\r\n", len),
        ),
        (
            "twenty f",
            format!("ffffffffffffffffffff\r\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        ("non-hex size", format!("zz\r\n{PATCH_BODY}\r\n0\r\n\r\n")),
        (
            "0x prefix",
            format!("0x{len:x}\r\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        (
            "leading space",
            format!(" {len:x}\r\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        (
            "space inside size",
            format!("1 a\r\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        ("empty size line", format!("\r\n{PATCH_BODY}\r\n0\r\n\r\n")),
        (
            "size then bare LF",
            format!("{len:x}\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        (
            "size then bare CR",
            format!("{len:x}\r{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        (
            "no CRLF after the data",
            format!("{len:x}\r\n{PATCH_BODY}0\r\n\r\n"),
        ),
        (
            "bare LF after the data",
            format!("{len:x}\r\n{PATCH_BODY}\n0\r\n\r\n"),
        ),
        (
            "size shorter than the data",
            format!("5\r\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        (
            "extension with a bare LF",
            format!("{len:x};ext\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        (
            "extension with a bare CR",
            format!("{len:x};ext\rx\r\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        (
            "extension over 16 KiB",
            format!(
                "{len:x};{}\r\n{PATCH_BODY}\r\n0\r\n\r\n",
                "x".repeat(16 * 1024)
            ),
        ),
        (
            // The 16 KiB extension budget is per body, not per chunk.
            "extensions over 16 KiB in total",
            (0..20)
                .map(|_| format!("1;{}\r\nx\r\n", "e".repeat(1024)))
                .chain(["0\r\n\r\n".to_owned()])
                .collect(),
        ),
        (
            "a request hidden in the trailers",
            format!(
                "{}0\r\n{}",
                chunked(PATCH_BODY).trim_end_matches("0\r\n\r\n"),
                smuggled_get()
            ),
        ),
    ] {
        cases.push(
            Case::new(
                format!("chunked PATCH, {what}"),
                patch_with(te, &body),
                &[Phonegate(400)],
            )
            .because("could not be read"),
        );
    }
    // A size larger than what follows swallows the smuggled requests into the chunk; when the
    // client stops sending, the body is incomplete: refused, nothing forwarded.
    cases.push(
        Case::new(
            "chunked PATCH, size larger than the rest, then EOF",
            patch_with(te, &format!("ffff\r\n{PATCH_BODY}\r\n0\r\n\r\n")),
            &[Phonegate(400)],
        )
        .half_close()
        .because("could not be read"),
    );
    // A bad chunk on a GET: phonegate refuses a GET with a body without reading it; hyper then
    // fails to drain the body and closes. The request after it is never read.
    cases.push(
        Case::new(
            "chunked GET, non-hex size",
            get_with(te, "zz\r\nhello\r\n0\r\n\r\n"),
            &[Phonegate(400)],
        )
        .because("must not carry a body"),
    );
    // Accepted (and framed exactly): chunk extensions of any bytes but CR and LF, whitespace
    // after the size, leading zeros, a size line of many zeros, trailers. `Connection: close`
    // leaves the smuggled requests after the last chunk unread.
    for (what, body) in [
        (
            "junk chunk extensions",
            format!("{len:x};\x01\x7f\u{ff} junk=\"\\\";;\r\n{PATCH_BODY}\r\n0;last=\"x\"\r\n\r\n"),
        ),
        (
            "whitespace after the size",
            format!("{len:x} \t \r\n{PATCH_BODY}\r\n0\r\n\r\n"),
        ),
        (
            "leading zeros",
            format!("000{len:x}\r\n{PATCH_BODY}\r\n000\r\n\r\n"),
        ),
        (
            // No limit on the size line's leading zeros: they are framing, not body, so they
            // count neither towards hyper's 64 KiB buffer nor towards max_request_body_bytes.
            "a 300 KiB size line of zeros",
            format!(
                "{}{len:x}\r\n{PATCH_BODY}\r\n0\r\n\r\n",
                "0".repeat(300 * 1024)
            ),
        ),
        (
            "trailers",
            format!("{len:x}\r\n{PATCH_BODY}\r\n0\r\nX-Trailer: 1\r\nContent-Length: 999\r\n\r\n"),
        ),
        (
            "one byte per chunk",
            PATCH_BODY
                .chars()
                .map(|c| format!("1\r\n{c}\r\n"))
                .chain(["0\r\n\r\n".to_owned()])
                .collect(),
        ),
    ] {
        cases.push(
            Case::new(
                format!("chunked PATCH, accepted {what}"),
                patch_with(&format!("{te}Connection: close\r\n"), &body),
                &[Phonegate(200)],
            )
            .forwards(patched()),
        );
    }
    h.run_all(cases).await;
}

// ---------------------------------------------------------------------------------------------
// Header lines.

#[tokio::test]
async fn malformed_header_lines_are_refused_by_the_parser() {
    let h = Harness::start().await;
    let t = twilio();
    let mut cases = Vec::new();

    // obs-fold continuation lines (RFC 9112 lets a server reject them; hyper does), bare CRs,
    // NULs and other control bytes, whitespace before the colon or inside a name, lines without
    // a colon, an empty name, a header line before the request line's end: refused by hyper,
    // nothing after them read.
    for lines in [
        "X-Folded: a\r\n b\r\n",
        "X-Folded: a\r\n\tb\r\n",
        "Content-Length:\r\n 0\r\n",
        "Authorization: Bearer\r\n x\r\n",
        " X-Leading-Space: a\r\n",
        "\tX-Leading-Tab: a\r\n",
        "X-Bare-CR: a\rb\r\n",
        "X-Bare-CR-End: a\r",
        "X-Nul: a\0b\r\n",
        "X-N\0ul: a\r\n",
        "Content-Length: 0\0\r\n",
        "X-Control: a\x01b\r\n",
        "X-Delete: a\x7fb\r\n",
        "Content-Length : 0\r\n",
        "Host : evil.example\r\n",
        "Authorization : Bearer x\r\n",
        "X-Tab\t: a\r\n",
        "Content Length: 0\r\n",
        "Content-Length 0\r\n",
        ": empty-name\r\n",
        "X<A>: a\r\n",
        "X-\u{e9}: a\r\n",
    ] {
        cases.push(Case::new(
            format!("header line {lines:?}"),
            get_with(lines, ""),
            &[Hyper(400)],
        ));
    }
    // Request lines: a bare CR, a double space, an unknown version, HTTP/2 over HTTP/1, a NUL in
    // the method, a tab between method and target.
    for line in [
        format!("GET {t} HTTP/1.1\r"),
        format!("GET  {t} HTTP/1.1"),
        format!("GET {t}  HTTP/1.1"),
        format!("GET {t} HTTP/1.2"),
        format!("GET {t} HTTP/2.0"),
        format!("GET {t} HTTP/1.1 extra"),
        format!("G\0ET {t} HTTP/1.1"),
        format!("GET\t{t} HTTP/1.1"),
        format!("GET {t}\tHTTP/1.1"),
    ] {
        cases.push(Case::new(
            format!("request line {line:?}"),
            format!(
                "{line}\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN_A}\r\n\r\n{}",
                smuggled_all()
            ),
            &[Hyper(400)],
        ));
    }
    // More than hyper's 100 headers: 431.
    let many: String = (0..101).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    cases.push(Case::new("101 headers", get_with(&many, ""), &[Hyper(431)]));
    // Bare LF line endings: httparse accepts them, so the request is served as written, and the
    // smuggled requests after it are not read (Connection: close). Accepted means framed exactly:
    // one GET upstream, nothing else.
    cases.push(
        Case::new(
            "bare LF line endings",
            format!(
                "GET {t} HTTP/1.1\nHost: {HOST}\nAuthorization: Bearer {TOKEN_A}\nConnection: close\n\n{}",
                smuggled_all()
            ),
            &[Phonegate(200)],
        )
        .forwards(vec![fwd(Method::GET, t.clone(), "")]),
    );
    // Bare LF line endings on a chunked PATCH: the head is accepted, the chunk framing (which
    // needs CRLF) is not.
    cases.push(
        Case::new(
            "bare LF line endings, chunked PATCH",
            format!(
                "PATCH {t} HTTP/1.1\nHost: {HOST}\nAuthorization: Bearer {TOKEN_A}\nContent-Type: application/json\nTransfer-Encoding: chunked\n\n{:x}\n{PATCH_BODY}\n0\n\n{}",
                PATCH_BODY.len(),
                smuggled_all()
            ),
            &[Phonegate(400)],
        )
        .because("could not be read"),
    );
    h.run_all(cases).await;
}

// ---------------------------------------------------------------------------------------------
// Pipelining.

#[tokio::test]
async fn a_request_pipelined_after_a_framing_error_is_never_executed() {
    let h = Harness::start().await;
    let t = twilio();
    let json = "Content-Type: application/json\r\n";
    let mut cases = Vec::new();
    // Each malformed message is followed, in the same write, by a well-formed request the
    // attacker wants executed; at most one answer may come back, and nothing may reach the
    // upstream. (Every case in this file does this; these are the plainest forms.)
    for smuggled in [smuggled_get(), smuggled_delete(), smuggled_patch()] {
        cases.push(Case::new(
            "unparsable head, then a request",
            format!("GET {t} HTTP/1.1\r\nHost : x\r\n\r\n{smuggled}"),
            &[Hyper(400)],
        ));
        cases.push(Case::new(
            "conflicting Content-Lengths, then a request",
            format!(
                "{}{smuggled}",
                head("GET", &t, "Content-Length: 0\r\nContent-Length: 1\r\n")
            ),
            &[Hyper(400)],
        ));
        cases.push(
            Case::new(
                "GET with a broken chunked body, then a request",
                format!(
                    "{}5\r\nhelloXX0\r\n\r\n{smuggled}",
                    head("GET", &t, "Transfer-Encoding: chunked\r\n")
                ),
                &[Phonegate(400)],
            )
            .because("must not carry a body"),
        );
        cases.push(
            Case::new(
                "PATCH with a broken chunked body, then a request",
                format!(
                    "{}zz\r\n{PATCH_BODY}\r\n0\r\n\r\n{smuggled}",
                    head(
                        "PATCH",
                        &t,
                        &format!("{json}Transfer-Encoding: chunked\r\n")
                    )
                ),
                &[Phonegate(400)],
            )
            .because("could not be read"),
        );
        cases.push(Case::new(
            "invalid method, then a request",
            format!("G(T {t} HTTP/1.1\r\nHost: {HOST}\r\n\r\n{smuggled}"),
            &[Hyper(400)],
        ));
        cases.push(Case::new(
            "too many headers, then a request",
            format!(
                "{}{smuggled}",
                head(
                    "GET",
                    &t,
                    &(0..101)
                        .map(|i| format!("X-H{i}: {i}\r\n"))
                        .collect::<String>()
                )
            ),
            &[Hyper(431)],
        ));
        cases.push(Case::new(
            "an over-long target, then a request",
            format!(
                "GET /{} HTTP/1.1\r\nHost: {HOST}\r\n\r\n{smuggled}",
                "a".repeat(70 * 1024)
            ),
            &[Hyper(431)],
        ));
    }
    h.run_all(cases).await;
}

#[tokio::test]
async fn well_framed_pipelined_requests_are_each_answered_in_order() {
    let mut h = Harness::start().await;
    let t = twilio();
    let byo = path(BYO_ID);
    let json = "Content-Type: application/json\r\n";
    let close = "Connection: close\r\n";

    // Two GETs in one write: two answers, in order, two upstream calls.
    let (answers, _) = h
        .run(
            Case::new(
                "two pipelined GETs",
                format!("{}{}", head("GET", &t, ""), head("GET", &byo, close)),
                &[Phonegate(200), Phonegate(200)],
            )
            .forwards(vec![
                fwd(Method::GET, t.clone(), ""),
                fwd(Method::GET, byo.clone(), ""),
            ]),
        )
        .await;
    let ids: Vec<String> = answers
        .iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&p.body).expect("JSON");
            v["id"].as_str().expect("id").to_owned()
        })
        .collect();
    assert_eq!(ids, [TWILIO_ID, BYO_ID], "answered in order");

    // Bodies framed by Content-Length and by chunks, between GETs: each body ends exactly where
    // its framing says, and the next request starts right after it.
    h.run(
        Case::new(
            "GET, CL PATCH, chunked PATCH, GET",
            format!(
                "{}{}{PATCH_BODY}{}{}{}",
                head("GET", &t, ""),
                head(
                    "PATCH",
                    &t,
                    &format!("{json}Content-Length: {}\r\n", PATCH_BODY.len())
                ),
                head(
                    "PATCH",
                    &t,
                    &format!("{json}Transfer-Encoding: chunked\r\n")
                ),
                chunked(r#"{"name":"second"}"#),
                head("GET", &byo, close),
            ),
            &[
                Phonegate(200),
                Phonegate(200),
                Phonegate(200),
                Phonegate(200),
            ],
        )
        .forwards(vec![
            fwd(Method::GET, t.clone(), ""),
            fwd(Method::PATCH, t.clone(), PATCH_BODY),
            fwd(Method::PATCH, t.clone(), r#"{"name":"second"}"#),
            fwd(Method::GET, byo.clone(), ""),
        ]),
    )
    .await;

    // A refusal by phonegate of a well-framed request (401, a GET with a well-framed body)
    // does not end the connection: the next request is served. This is what separates a refused
    // *request* from refused *framing*, which always ends the connection.
    h.run(
        Case::new(
            "401, then a GET",
            format!(
                "GET {t} HTTP/1.1\r\nHost: {HOST}\r\n\r\n{}",
                head("GET", &byo, close)
            ),
            &[Phonegate(401), Phonegate(200)],
        )
        .forwards(vec![fwd(Method::GET, byo.clone(), "")])
        .because("Authorization"),
    )
    .await;
    h.run(
        Case::new(
            "GET with a 5-byte body, then a GET",
            format!(
                "{}hello{}",
                head("GET", &t, "Content-Length: 5\r\n"),
                head("GET", &byo, close)
            ),
            &[Phonegate(400), Phonegate(200)],
        )
        .forwards(vec![fwd(Method::GET, byo.clone(), "")])
        .because("must not carry a body"),
    )
    .await;
    h.run(
        Case::new(
            "GET with a chunked body, then a GET",
            format!(
                "{}5\r\nhello\r\n0\r\n\r\n{}",
                head("GET", &t, "Transfer-Encoding: chunked\r\n"),
                head("GET", &byo, close)
            ),
            &[Phonegate(400), Phonegate(200)],
        )
        .forwards(vec![fwd(Method::GET, byo.clone(), "")])
        .because("must not carry a body"),
    )
    .await;
    // Connection: close on the first request: the second is never read.
    h.run(
        Case::new(
            "Connection: close, then a request",
            format!("{}{}", head("GET", &t, close), smuggled_all()),
            &[Phonegate(200)],
        )
        .forwards(vec![fwd(Method::GET, t.clone(), "")]),
    )
    .await;
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Request targets and Host.

#[tokio::test]
async fn request_targets_and_host_headers_cannot_redirect_or_smuggle() {
    let mut h = Harness::start().await;
    let t = twilio();
    let close = "Connection: close\r\n";
    let upstream_host = h.mock.addr().to_string();

    // Absolute-form targets naming other hosts, ports, schemes and userinfo, and Host headers
    // that are duplicated, missing, or carry a path: the authority is ignored, the request goes
    // to the configured upstream (with the upstream's own Host) or nowhere.
    let mut accepted = Vec::new();
    for target in [
        format!("http://evil.example:8080{t}"),
        format!("https://evil.example{t}"),
        format!("http://user:pass@evil.example{t}"),
        format!("http://127.0.0.1:1{t}"),
        format!("http://{upstream_host}{t}"),
    ] {
        accepted.push((
            format!("absolute-form {target}"),
            format!(
                "GET {target} HTTP/1.1\r\nHost: evil.example\r\nAuthorization: Bearer {TOKEN_A}\r\n{close}\r\n{}",
                smuggled_all()
            ),
        ));
    }
    for hosts in [
        "Host: evil.example\r\nHost: other.example\r\n",
        "Host: evil.example, other.example\r\n",
        "Host: evil.example/phone-number\r\n",
        "Host: evil.example@other.example\r\n",
        "",
    ] {
        accepted.push((
            format!("Host lines {hosts:?}"),
            format!(
                "GET {t} HTTP/1.1\r\n{hosts}Authorization: Bearer {TOKEN_A}\r\n{close}\r\n{}",
                smuggled_all()
            ),
        ));
    }
    for (name, bytes) in accepted {
        let (_, upstream) = h
            .run(
                Case::new(name.clone(), bytes, &[Phonegate(200)]).forwards(vec![fwd(
                    Method::GET,
                    t.clone(),
                    "",
                )]),
            )
            .await;
        let host = upstream[0]
            .headers
            .get_all("host")
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>();
        assert_eq!(
            host,
            std::slice::from_ref(&upstream_host),
            "{name}: the upstream's Host"
        );
    }

    // `*` targets, CONNECT (authority-form and otherwise) and protocol upgrades: refused, or
    // served as the plain request they are, never tunnelled or switched. With `Connection:
    // close` nothing after them is read; kept alive, the connection stays HTTP/1.1 and the next
    // bytes are parsed as the next request (a refused CONNECT opens no tunnel, RFC 9110 9.3.6).
    let byo = path(BYO_ID);
    let upgrade_h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n";
    let upgrade_ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let specials: Vec<(String, String, String, u16, Vec<Forwarded>)> = vec![
        (
            "OPTIONS *".into(),
            "OPTIONS".into(),
            "*".into(),
            404,
            vec![],
        ),
        ("GET *".into(), "GET".into(), "*".into(), 404, vec![]),
        (
            "CONNECT to the real upstream".into(),
            "CONNECT".into(),
            "api.vapi.ai:443".into(),
            404,
            vec![],
        ),
        (
            "CONNECT to the mock upstream".into(),
            "CONNECT".into(),
            upstream_host.clone(),
            404,
            vec![],
        ),
        (
            "CONNECT to a phone-number path".into(),
            "CONNECT".into(),
            t.clone(),
            405,
            vec![],
        ),
    ];
    for (name, method, target, status, forwarded) in specials {
        h.run(
            Case::new(
                format!("{name}, Connection: close, then smuggled requests"),
                format!("{}{}", head(&method, &target, close), smuggled_all()),
                &[Phonegate(status)],
            )
            .forwards(forwarded.clone()),
        )
        .await;
        let mut then = forwarded;
        then.push(fwd(Method::GET, byo.clone(), ""));
        h.run(
            Case::new(
                format!("{name}, then a GET"),
                format!("{}{}", head(&method, &target, ""), head("GET", &byo, close)),
                &[Phonegate(status), Phonegate(200)],
            )
            .forwards(then),
        )
        .await;
    }
    // An upgrade request is served as a plain GET (no 101): a front end that forwards the
    // Upgrade never gets a switched connection to tunnel through, and the next request on the
    // connection is parsed as HTTP/1.1.
    for (name, lines) in [
        ("Upgrade: h2c", upgrade_h2c),
        ("Upgrade: websocket", upgrade_ws),
    ] {
        h.run(
            Case::new(
                format!("{name}, then a GET"),
                format!("{}{}", head("GET", &t, lines), head("GET", &byo, close)),
                &[Phonegate(200), Phonegate(200)],
            )
            .forwards(vec![
                fwd(Method::GET, t.clone(), ""),
                fwd(Method::GET, byo.clone(), ""),
            ]),
        )
        .await;
    }
    h.finish().await;
}
