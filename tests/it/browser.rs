//! The example frontend (examples/frontend/) in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver, via `fantoccini`), against an in-process phonegate in managed mode in
//! front of the mock upstream. The page is served by a tiny static server on another port, so it
//! is another origin than phonegate's and every call is a real CORS exchange (preflight included).
//!
//! Needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them); without
//! them the test fails, saying so. Screenshots and chromedriver's log are written to
//! `target/browser-artifacts/`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use phonegate::auth::token_sha256_hex;
use phonegate::config::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::mock_vapi::{FIXTURE_IDS, TWILIO_ID};
use crate::support::{
    ManagedClient, MockVapi, Proxy, TempDir, contains_planted, cors_toml, find_on_path, free_addr,
    managed_toml, repo_root,
};

/// phonegate's own upstream key; the mock accepts no other, and no browser may ever see it.
const UPSTREAM_KEY: &str = "sk-upstream-browser-SECRET-7731";
/// A client with the `read` scope.
const READER: &str = "browser-reader-token-0001";
/// A client with the `read` and `write` scopes.
const WRITER: &str = "browser-writer-token-0002";

/// How long any one condition may take to become true (a loaded 2-core CI machine included).
const WAIT: Duration = Duration::from_secs(30);
/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(50);

const INSTALL_HINT: &str = "install Debian's packages: `apt-get install chromium chromium-driver` \
                            (.ci/run does this when they are missing)";

// ---- the page's files and its static server ----

fn frontend_dir() -> PathBuf {
    repo_root().join("examples/frontend")
}

/// `target/browser-artifacts/` (beside `target/tmp/`, so it follows `CARGO_TARGET_DIR`).
fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/browser-artifacts");
    dir
}

/// A static file server for one directory on 127.0.0.1:0: its own origin.
struct StaticSite {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl StaticSite {
    async fn serve(dir: PathBuf) -> StaticSite {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dir = Arc::new(dir);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let dir = Arc::clone(&dir);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        let answer = static_file(&dir, req.method(), req.uri().path());
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StaticSite { addr, task }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One file of `dir` by name (no subdirectories, no dot files); `/` is `index.html`.
fn static_file(dir: &Path, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let answer = |status: StatusCode, content_type: &str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("cache-control", "no-store")
            .header("x-content-type-options", "nosniff")
            .body(Full::new(Bytes::from(body)))
            .expect("response")
    };
    if method != Method::GET && method != Method::HEAD {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "text/plain", Vec::new());
    }
    let name = match path.trim_start_matches('/') {
        "" => "index.html",
        name => name,
    };
    let safe = !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let content_type = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    match std::fs::read(dir.join(name)) {
        Ok(body) if safe => answer(StatusCode::OK, content_type, body),
        _ => answer(StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec()),
    }
}

// ---- phonegate ----

/// Managed mode, a reader and a writer client, CORS for `page_origin` only.
async fn managed_proxy(upstream_url: &str, page_origin: &str) -> Proxy {
    let clients = [
        ManagedClient {
            name: "browser-reader",
            token: READER,
            scopes: &["read"],
        },
        ManagedClient {
            name: "browser-writer",
            token: WRITER,
            scopes: &["read", "write"],
        },
    ];
    // Cache TTLs long enough that nothing expires while a slow machine runs the test.
    let settings = format!(
        "{}[upstream]\ntimeout_ms = 5000\n[cache]\nttl_secs = 300\nlist_ttl_secs = 300\n{}",
        managed_toml(UPSTREAM_KEY, &clients),
        cors_toml(&[page_origin]),
    );
    Proxy::start(upstream_url, &settings).await
}

// ---- chromedriver and Chromium ----

/// chromedriver, started in a process group of its own so that the browsers it starts (same
/// group) go with it: the group is killed on drop, whether the test passed or not.
struct ChromeDriver {
    child: Child,
    port: u16,
    /// Chromium's profile, removed after chromedriver and its browsers are gone.
    user_data_dir: TempDir,
}

impl ChromeDriver {
    async fn start(binary: &Path, log: &Path) -> ChromeDriver {
        let mut last_error = String::new();
        for _attempt in 0..5 {
            // chromedriver cannot pick its own port: take a free one and hand it over. Another
            // process may grab it in between, hence the retries.
            let port = free_addr().port();
            use std::os::unix::process::CommandExt;
            let child = Command::new(binary)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", binary.display()));
            let mut driver = ChromeDriver {
                child,
                port,
                user_data_dir: TempDir::new("chromium-profile"),
            };
            match driver.wait_ready().await {
                Ok(()) => return driver,
                Err(e) => last_error = e,
            }
        }
        panic!(
            "chromedriver did not start: {last_error}; see {}",
            log.display()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Polls `/status` until chromedriver is ready, or it has exited.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("chromedriver exited ({status})"));
            }
            let status = tokio::time::timeout(
                Duration::from_secs(2),
                driver_request(&self.url(), Method::GET, "/status", None),
            )
            .await;
            if let Ok(Ok(v)) = status {
                if v["value"]["ready"] == true {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {WAIT:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A new headless Chromium session, with network ("performance") and console logging on.
    async fn session(&self, chromium: &Path) -> Client {
        let capabilities = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "script": 30_000, "pageLoad": 30_000, "implicit": 0 },
            "goog:loggingPrefs": { "performance": "ALL", "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-extensions",
                    "--no-first-run",
                    "--window-size=1280,1200",
                    format!("--user-data-dir={}", self.user_data_dir.path().display()),
                ],
                "perfLoggingPrefs": { "enableNetwork": true, "enablePage": false },
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        match tokio::time::timeout(WAIT * 2, builder.connect(&self.url())).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("chromedriver could not start {}: {e}", chromium.display()),
            Err(_) => panic!("no browser session after {:?}", WAIT * 2),
        }
    }

    /// Reads (and drains) one of the session's logs: `performance` or `browser`.
    async fn log(&self, session: &str, kind: &str) -> Vec<Value> {
        let answer = driver_request(
            &self.url(),
            Method::POST,
            &format!("/session/{session}/se/log"),
            Some(json!({ "type": kind })),
        )
        .await
        .unwrap_or_else(|e| panic!("reading the {kind} log: {e}"));
        match &answer["value"] {
            Value::Array(entries) => entries.clone(),
            other => panic!("the {kind} log is not a list: {other}"),
        }
    }

    /// Runs a DevTools protocol command in the session's page.
    async fn cdp(&self, session: &str, cmd: &str, params: Value) -> Result<Value, String> {
        let answer = driver_request(
            &self.url(),
            Method::POST,
            &format!("/session/{session}/goog/cdp/execute"),
            Some(json!({ "cmd": cmd, "params": params })),
        )
        .await?;
        if answer["value"]["error"].is_string() {
            return Err(answer["value"].to_string());
        }
        Ok(answer["value"].clone())
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every Chromium process it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One JSON exchange with chromedriver's HTTP API, besides fantoccini's (for its log and
/// DevTools endpoints, which WebDriver does not standardise).
async fn driver_request(
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = crate::support::client()
        .request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{status}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {value}"));
    }
    Ok(value)
}

// ---- driving the page ----

/// Evaluates `expr` (a JavaScript expression) in the page.
async fn js(c: &Client, expr: &str) -> Value {
    c.execute(&format!("return ({expr});"), vec![])
        .await
        .unwrap_or_else(|e| panic!("evaluating `{expr}`: {e}"))
}

async fn text_of(c: &Client, selector: &str) -> String {
    let v = js(
        c,
        &format!("document.querySelector({selector:?})?.textContent ?? ''"),
    )
    .await;
    v.as_str().unwrap_or_default().trim().to_owned()
}

/// What the page shows, for failure messages.
async fn page_state(c: &Client) -> String {
    match c
        .execute(
            "return document.body ? document.body.innerText : ''",
            vec![],
        )
        .await
    {
        Ok(v) => v.as_str().unwrap_or_default().to_owned(),
        Err(e) => format!("(page unreadable: {e})"),
    }
}

/// Waits until `expr` is truthy in the page; returns its value.
async fn wait_for(c: &Client, what: &str, expr: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = js(c, expr).await;
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {WAIT:?} waiting for {what}; the page shows:\n{}",
                page_state(c).await
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How many user actions the page has finished (`<body data-actions>`).
async fn actions(c: &Client) -> u64 {
    js(c, "Number(document.body.dataset.actions || 0)")
        .await
        .as_u64()
        .unwrap_or(0)
}

/// Clicks `selector` and waits until the action it starts has finished, successfully or not.
async fn click_and_wait(c: &Client, selector: &str) {
    let before = actions(c).await;
    c.find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("no {selector} on the page: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {selector}: {e}"));
    wait_for(
        c,
        &format!("the action of {selector} to finish"),
        &format!("Number(document.body.dataset.actions || 0) > {before}"),
    )
    .await;
}

async fn fill(c: &Client, selector: &str, value: &str) {
    let input = c
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("no {selector} on the page: {e}"));
    input.clear().await.expect("clear the input");
    input.send_keys(value).await.expect("type into the input");
}

/// The rendered list: `(id, name, number)` per row.
async fn rows(c: &Client) -> Vec<(String, String, String)> {
    let v = js(
        c,
        "[...document.querySelectorAll('#numbers tbody tr')].map(r => \
         [r.dataset.id, r.querySelector('.name').textContent, \
          r.querySelector('.number').textContent])",
    )
    .await;
    serde_json::from_value(v).expect("rows as triples")
}

async fn screenshot(c: &Client, name: &str) -> PathBuf {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = artifacts_dir().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("browser test: screenshot {}", path.display());
    path
}

/// Everything the browser holds or saw that a secret could hide in: the DOM (as served and as
/// rendered, input values included), every exchange the page recorded, the network log with
/// every response body, and the console.
struct Seen {
    texts: Vec<(String, String)>,
}

impl Seen {
    fn new() -> Self {
        Seen { texts: Vec::new() }
    }

    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.texts.push((what.into(), text.into()));
    }

    /// Collects the page's state and drains the browser's logs; response bodies are fetched
    /// from the page's network buffer, so call this before navigating away.
    async fn collect(&mut self, c: &Client, driver: &ChromeDriver, session: &str) -> Network {
        self.add("page source", c.source().await.expect("page source"));
        let dom = js(
            c,
            "JSON.stringify({html: document.documentElement.outerHTML, \
             text: document.body.innerText, \
             inputs: [...document.querySelectorAll('input')].map(i => i.value), \
             exchanges: window.phonegateExchanges || []})",
        )
        .await;
        self.add(
            "DOM, inputs and recorded exchanges",
            dom.as_str().unwrap_or_default(),
        );

        let mut network = Network::default();
        for entry in driver.log(session, "performance").await {
            let message = entry["message"].as_str().unwrap_or_default().to_owned();
            let event: Value = serde_json::from_str(&message).unwrap_or(Value::Null);
            let event = &event["message"];
            if event["method"] == "Network.responseReceived" {
                let params = &event["params"];
                let response = &params["response"];
                let url = response["url"].as_str().unwrap_or_default().to_owned();
                let request_id = params["requestId"].as_str().unwrap_or_default().to_owned();
                // Bodies of the pages' own loads (the browser's internal chrome:// pages aside);
                // a preflight has none.
                let body = if url.starts_with("http") {
                    driver
                        .cdp(
                            session,
                            "Network.getResponseBody",
                            json!({ "requestId": request_id }),
                        )
                        .await
                        .ok()
                        .and_then(|v| v["body"].as_str().map(str::to_owned))
                } else {
                    None
                };
                if let Some(body) = &body {
                    self.add(format!("response body of {url}"), body.clone());
                }
                network.responses.push(Observed {
                    url,
                    status: response["status"].as_u64().unwrap_or(0),
                    kind: params["type"].as_str().unwrap_or_default().to_owned(),
                    headers: response["headers"].clone(),
                    body,
                });
            }
            self.add("network log", message);
        }
        for entry in driver.log(session, "browser").await {
            let message = entry["message"].as_str().unwrap_or_default().to_owned();
            network.console.push(message.clone());
            self.add("console", message);
        }
        network
    }

    /// Asserts that no planted secret and not the upstream key is in anything collected.
    fn assert_clean(&self) {
        assert!(!self.texts.is_empty());
        for (what, text) in &self.texts {
            assert!(
                !contains_planted(text.as_bytes()),
                "a planted secret reached the browser ({what}): {text}"
            );
            assert!(
                !text.contains(UPSTREAM_KEY),
                "phonegate's upstream key reached the browser ({what}): {text}"
            );
        }
    }
}

/// What the network and console logs held.
#[derive(Default)]
struct Network {
    responses: Vec<Observed>,
    console: Vec<String>,
}

struct Observed {
    url: String,
    status: u64,
    kind: String,
    headers: Value,
    body: Option<String>,
}

impl Network {
    /// Responses from phonegate (`base`) of one kind: `Preflight` or `Fetch`.
    fn from<'a>(&'a self, base: &str, kind: &str) -> Vec<&'a Observed> {
        self.responses
            .iter()
            .filter(|r| r.url.starts_with(base) && r.kind == kind)
            .collect()
    }

    /// Asserts the page's own code ran cleanly: no uncaught error, no CSP violation.
    fn assert_no_script_errors(&self) {
        for message in &self.console {
            assert!(
                !message.contains("Uncaught") && !message.contains("Content Security Policy"),
                "the page logged an error: {message}"
            );
        }
    }
}

fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()?
        .iter()
        .find_map(|(k, v)| k.eq_ignore_ascii_case(name).then(|| v.as_str()).flatten())
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_frontend_works_in_headless_chromium() {
    let started = Instant::now();
    let chromium = find_on_path("chromium")
        .unwrap_or_else(|| panic!("`chromium` is not on PATH; {INSTALL_HINT}"));
    let chromedriver = find_on_path("chromedriver")
        .unwrap_or_else(|| panic!("`chromedriver` is not on PATH; {INSTALL_HINT}"));

    let mock = MockVapi::builder()
        .valid_tokens([UPSTREAM_KEY])
        .start()
        .await;
    let site = StaticSite::serve(frontend_dir()).await;
    let elsewhere = StaticSite::serve(frontend_dir()).await;
    let proxy = managed_proxy(&mock.url(), &site.origin()).await;
    let api = format!("http://{}", proxy.addr);
    let twilio = MockVapi::fixture_by_id(TWILIO_ID).expect("the twilio fixture");
    let twilio_name = twilio["name"].as_str().expect("a name").to_owned();

    let driver =
        ChromeDriver::start(&chromedriver, &artifacts_dir().join("chromedriver.log")).await;
    let c = driver.session(&chromium).await;
    let session = c
        .session_id()
        .await
        .expect("session id")
        .expect("a session");
    eprintln!("browser test: browser up after {:?}", started.elapsed());
    let mut seen = Seen::new();

    // 1. The read-only client, configured by the address: the list renders through CORS.
    c.goto(&format!(
        "{}/index.html?api={api}#token={READER}",
        site.origin()
    ))
    .await
    .expect("open the page");
    wait_for(
        &c,
        "the first action (listing)",
        "document.body.dataset.actions === '1'",
    )
    .await;
    assert_eq!(text_of(&c, "#error").await, "", "listing failed");
    let listed = rows(&c).await;
    assert_eq!(
        listed.len(),
        FIXTURE_IDS.len(),
        "every fixture listed: {listed:?}"
    );
    for (provider, id) in FIXTURE_IDS {
        let fixture = MockVapi::fixture_by_id(id).expect("fixture");
        let row = listed
            .iter()
            .find(|(row_id, _, _)| row_id == id)
            .unwrap_or_else(|| panic!("{provider} ({id}) is not listed: {listed:?}"));
        assert_eq!(
            row.1,
            fixture["name"].as_str().unwrap_or_default(),
            "{provider}"
        );
        let number = fixture["number"].as_str().or(fixture["sipUri"].as_str());
        assert_eq!(Some(row.2.as_str()), number, "{provider}");
    }
    assert!(
        text_of(&c, "#list-meta")
            .await
            .contains("Cache-Status: phonegate; fwd=uri-miss; stored"),
        "the list's Cache-Status is shown: {}",
        text_of(&c, "#list-meta").await
    );
    let address = c.current_url().await.expect("url");
    assert!(
        !address.as_str().contains(READER),
        "the page took the token out of the address bar: {address}"
    );

    // 2. A number's details, with phonegate's real Cache-Status: a miss that was stored, then a hit.
    click_and_wait(&c, &format!("button.view[data-id='{TWILIO_ID}']")).await;
    assert_eq!(text_of(&c, "#error").await, "");
    assert_eq!(text_of(&c, "#detail-id").await, TWILIO_ID);
    assert_eq!(text_of(&c, "#detail-title").await, twilio_name);
    assert_eq!(
        text_of(&c, "#cache-status").await,
        "phonegate; fwd=uri-miss; stored"
    );
    assert_eq!(text_of(&c, "#x-cache").await, "miss");
    let raw = text_of(&c, "#raw").await;
    assert!(
        raw.contains("[REDACTED]") && raw.contains("twilioAccountSid"),
        "the whole (redacted) answer is shown: {raw}"
    );

    click_and_wait(&c, "#reload").await;
    let hit = text_of(&c, "#cache-status").await;
    let ttl: u64 = hit
        .strip_prefix("phonegate; hit; ttl=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a hit with its remaining freshness: {hit:?}"));
    assert!((1..=300).contains(&ttl), "ttl {ttl}");
    assert_eq!(text_of(&c, "#x-cache").await, "hit");

    // 3. The read-only client's edit is refused, and the page says why.
    fill(&c, "#edit-name", "Renamed by the reader").await;
    click_and_wait(&c, "#save").await;
    let refused = text_of(&c, "#error").await;
    assert!(
        refused.starts_with("403") && refused.contains("this client may only read"),
        "phonegate's 403 message is shown: {refused:?}"
    );
    assert_eq!(text_of(&c, "#notice").await, "");
    assert_eq!(text_of(&c, "#detail-title").await, twilio_name);
    assert!(
        mock.requests().iter().all(|r| r.method != Method::PATCH),
        "a refused write never reaches the upstream"
    );
    screenshot(&c, "frontend-read-only-refused.png").await;

    // 4. The write-scoped client, configured through the form: its edit succeeds.
    fill(&c, "#token", WRITER).await;
    click_and_wait(&c, "#connect").await;
    assert_eq!(text_of(&c, "#error").await, "");
    assert_eq!(rows(&c).await.len(), FIXTURE_IDS.len());
    assert!(
        text_of(&c, "#list-meta")
            .await
            .contains("Cache-Status: phonegate; hit"),
        "managed clients share one cache: {}",
        text_of(&c, "#list-meta").await
    );
    click_and_wait(&c, &format!("button.view[data-id='{TWILIO_ID}']")).await;
    assert!(
        text_of(&c, "#cache-status")
            .await
            .starts_with("phonegate; hit; ttl=")
    );

    let renamed = "Support line (renamed in the browser)";
    fill(&c, "#edit-name", renamed).await;
    click_and_wait(&c, "#save").await;
    assert_eq!(text_of(&c, "#error").await, "", "the writer's edit failed");
    assert!(
        text_of(&c, "#notice").await.contains(renamed),
        "the page confirms the save: {}",
        text_of(&c, "#notice").await
    );
    assert_eq!(text_of(&c, "#detail-title").await, renamed);
    assert_eq!(text_of(&c, "#cache-status").await, "phonegate; fwd=bypass");
    let relisted = rows(&c).await;
    assert!(
        relisted
            .iter()
            .any(|(id, name, _)| id == TWILIO_ID && name == renamed),
        "the list shows the new name (the write invalidated it): {relisted:?}"
    );
    assert_eq!(
        mock.object(TWILIO_ID).expect("the number")["name"],
        renamed,
        "the upstream has the new name"
    );
    let patch = mock
        .requests()
        .into_iter()
        .find(|r| r.method == Method::PATCH)
        .expect("the upstream saw the PATCH");
    assert_eq!(
        patch
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str()),
        "phonegate's own key went upstream"
    );
    let sent: Value = serde_json::from_slice(&patch.body).expect("a JSON body upstream");
    assert_eq!(
        sent,
        json!({ "name": renamed }),
        "only the changed field is sent"
    );

    // The write invalidated the cached number: viewing it again is a miss, with the new name.
    click_and_wait(&c, "#reload").await;
    assert_eq!(
        text_of(&c, "#cache-status").await,
        "phonegate; fwd=uri-miss; stored"
    );
    assert_eq!(text_of(&c, "#detail-title").await, renamed);
    c.find(Locator::Css("#details summary"))
        .await
        .expect("the whole-answer panel")
        .click()
        .await
        .expect("open the whole-answer panel");
    let shot = screenshot(&c, "frontend.png").await;

    // 5. Nothing secret anywhere the browser kept: DOM, recorded exchanges, network, console.
    let network = seen.collect(&c, &driver, &session).await;
    let recorded = js(&c, "window.phonegateExchanges").await;
    let recorded = recorded.as_array().expect("the page records its exchanges");
    assert!(recorded.len() >= 8, "{recorded:?}");
    assert!(
        recorded.iter().any(|e| e["body"]
            .as_str()
            .is_some_and(|b| b.contains(TWILIO_ID) && b.contains("[REDACTED]"))),
        "the recorded bodies include a redacted number"
    );
    network.assert_no_script_errors();
    let preflights = network.from(&api, "Preflight");
    assert!(!preflights.is_empty(), "the browser sent CORS preflights");
    for r in &preflights {
        assert_eq!(r.status, 204, "preflight of {}", r.url);
        assert_eq!(
            header(&r.headers, "access-control-allow-origin"),
            Some(site.origin().as_str()),
            "preflight of {}",
            r.url
        );
        let methods = header(&r.headers, "access-control-allow-methods").unwrap_or_default();
        let allowed = header(&r.headers, "access-control-allow-headers").unwrap_or_default();
        assert!(methods.contains("PATCH"), "{}: {methods}", r.url);
        assert!(allowed.contains("authorization"), "{}: {allowed}", r.url);
    }
    let answers = network.from(&api, "Fetch");
    assert!(
        answers.iter().filter(|r| r.status == 200).count() >= 7,
        "the network log holds phonegate's answers"
    );
    for r in &answers {
        // Error answers too, or the page could not read the 403's message.
        assert_eq!(
            header(&r.headers, "access-control-allow-origin"),
            Some(site.origin().as_str()),
            "{} {}",
            r.status,
            r.url
        );
        let exposed = header(&r.headers, "access-control-expose-headers").unwrap_or_default();
        assert!(exposed.contains("cache-status"), "{}: {exposed}", r.url);
        if r.status == 200 {
            assert!(header(&r.headers, "cache-status").is_some(), "{}", r.url);
        }
    }
    assert!(
        answers
            .iter()
            .any(|r| r.body.as_deref().is_some_and(|b| b.contains("[REDACTED]"))),
        "response bodies were read from the network log"
    );
    assert!(
        answers.iter().any(|r| r.status == 403
            && r.body
                .as_deref()
                .is_some_and(|b| b.contains("may only read"))),
        "the refused PATCH is in the network log"
    );

    // 6. A page from an origin phonegate does not allow gets nothing.
    c.goto(&format!(
        "{}/index.html?api={api}#token={READER}",
        elsewhere.origin()
    ))
    .await
    .expect("open the page from another origin");
    wait_for(
        &c,
        "the listing attempt",
        "document.body.dataset.actions === '1'",
    )
    .await;
    let failed = text_of(&c, "#error").await;
    assert!(
        failed.contains("Could not reach phonegate") && failed.contains("cors.allowed_origins"),
        "the page says the call failed: {failed:?}"
    );
    assert!(rows(&c).await.is_empty(), "nothing is listed");
    let html = c.source().await.expect("page source");
    let text = page_state(&c).await;
    for (_, id) in FIXTURE_IDS {
        let fixture = MockVapi::fixture_by_id(id).expect("fixture");
        for value in [id, fixture["name"].as_str().unwrap_or_default()] {
            assert!(
                !html.contains(value) && !text.contains(value),
                "{value} reached a page of an origin that is not allowed"
            );
        }
    }
    let attempt = js(&c, "window.phonegateExchanges").await;
    assert_eq!(attempt[0]["status"], 0, "{attempt}");
    assert_eq!(attempt[0]["body"], Value::Null, "{attempt}");
    assert!(
        attempt[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{attempt}"
    );
    let refused_origin = seen.collect(&c, &driver, &session).await;
    refused_origin.assert_no_script_errors();
    let preflights = refused_origin.from(&api, "Preflight");
    assert!(!preflights.is_empty(), "the browser asked phonegate first");
    for r in &preflights {
        assert_eq!(
            r.status, 403,
            "phonegate refuses the preflight of {}",
            r.url
        );
        assert_eq!(
            header(&r.headers, "access-control-allow-origin"),
            None,
            "{}",
            r.url
        );
    }
    let answers = refused_origin.from(&api, "Fetch");
    assert!(
        answers.is_empty(),
        "after a refused preflight the browser sends nothing more: {:?}",
        answers
            .iter()
            .map(|r| (r.status, &r.url))
            .collect::<Vec<_>>()
    );
    assert!(
        refused_origin
            .console
            .iter()
            .any(|m| m.contains("blocked by CORS policy")),
        "the browser blocked the call for CORS: {:?}",
        refused_origin.console
    );
    screenshot(&c, "frontend-origin-not-allowed.png").await;
    seen.assert_clean();

    c.close().await.expect("close the browser");
    drop(driver);
    eprintln!(
        "browser test: passed in {:?}; screenshot {}",
        started.elapsed(),
        shot.display()
    );
}

/// The example's files stand alone (no CDN, no build step) and its demo phonegate config is
/// valid, with the documented demo tokens.
#[test]
fn the_example_frontend_is_self_contained_and_its_config_valid() {
    let dir = frontend_dir();
    let html = std::fs::read_to_string(dir.join("index.html")).expect("index.html");
    for attr in ["src=\"", "href=\""] {
        for (_, rest) in html
            .match_indices(attr)
            .map(|(i, _)| html.split_at(i + attr.len()))
        {
            let target = rest.split('"').next().unwrap_or_default();
            assert!(
                !target.contains("//") && !target.starts_with('/'),
                "index.html loads {target} from elsewhere"
            );
            if !target.starts_with("data:") {
                assert!(dir.join(target).is_file(), "index.html needs {target}");
            }
        }
    }
    for file in ["app.js", "style.css"] {
        let text = std::fs::read_to_string(dir.join(file)).expect(file);
        assert!(!text.contains("import "), "{file} imports nothing");
        assert!(!text.contains("@import"), "{file} imports nothing");
    }

    let toml = std::fs::read_to_string(dir.join("phonegate.toml")).expect("phonegate.toml");
    Config::from_toml(&toml).expect("examples/frontend/phonegate.toml is valid");
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README.md");
    for token in ["demo-reader-token", "demo-writer-token"] {
        assert!(
            toml.contains(&token_sha256_hex(token)),
            "{token}'s hash is configured"
        );
        assert!(readme.contains(token), "README.md names {token}");
    }
}
