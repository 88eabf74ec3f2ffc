//! The real `phonegate` binary: configuration layers and start-up errors, the JSON access log on
//! stdout, readiness, and graceful shutdown on SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::mock_vapi::{FIXTURE_IDS, PLANTED, TWILIO_ID, VAPI_ID, VONAGE_ID};
use crate::support::{
    Behavior, MockVapi, Resp, TOKEN_A, TOKEN_B, admin_get, free_addrs, path, request,
    scrape_metric, send, upstream_reached,
};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_phonegate");

/// How long a child may take to become ready or to exit.
const PROCESS_DEADLINE: Duration = Duration::from_secs(10);

/// Two distinct free loopback ports (bound together, then released: a small race, acceptable).
fn free_ports() -> (SocketAddr, SocketAddr) {
    let addrs = free_addrs(2);
    (addrs[0], addrs[1])
}

/// The binary with no inherited phonegate settings, output piped, killed when dropped.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PHONEGATE") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running phonegate binary.
struct Running {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Running {
    /// Starts the binary on free ports in front of `upstream`, with extra args and env, and waits
    /// until `/readyz` answers 200.
    async fn start(upstream: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
        let (listen, admin) = free_ports();
        let listen_s = listen.to_string();
        let admin_s = admin.to_string();
        let mut all_env = vec![
            ("PHONEGATE__LISTEN", listen_s.as_str()),
            ("PHONEGATE__ADMIN__LISTEN", admin_s.as_str()),
            ("PHONEGATE__UPSTREAM__URL", upstream),
        ];
        all_env.extend_from_slice(env);
        let child = command(args, &all_env).spawn().expect("spawn phonegate");
        let mut running = Running {
            child,
            listen,
            admin,
        };
        running.wait_ready().await;
        running
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + PROCESS_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let out = read_all(&mut self.child).await;
                panic!(
                    "phonegate exited before becoming ready ({status}); stdout: {}; stderr: {}",
                    out.0, out.1
                );
            }
            if let Some(status) = readyz(self.admin).await {
                assert_eq!(status, StatusCode::OK, "a fresh phonegate is ready");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "phonegate did not become ready within {PROCESS_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the child is running")
    }

    /// Sends SIGHUP and waits until `phonegate_reloads_total{result}` shows it was handled.
    async fn hup_and_wait(&self, result: &str) {
        let series = format!("phonegate_reloads_total{{result=\"{result}\"}}");
        let before = scrape_metric(self.admin, &series).await.unwrap_or(0.0);
        let status = std::process::Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + PROCESS_DEADLINE;
        while scrape_metric(self.admin, &series).await.unwrap_or(0.0) <= before {
            assert!(
                Instant::now() < deadline,
                "SIGHUP was not handled ({result}) within {PROCESS_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the status, stdout and stderr.
    async fn terminate(self) -> (ExitStatus, String, String) {
        self.sigterm();
        finish(self.child).await
    }
}

/// Waits (bounded) for the child to exit and collects its output.
async fn finish(child: Child) -> (ExitStatus, String, String) {
    let output = tokio::time::timeout(PROCESS_DEADLINE, child.wait_with_output())
        .await
        .expect("phonegate exits in time")
        .expect("wait for phonegate");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whatever the (already exited) child wrote.
async fn read_all(child: &mut Child) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut err = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut err)).await;
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// `/readyz` status, or `None` when the admin listener does not answer.
async fn readyz(admin: SocketAddr) -> Option<StatusCode> {
    let req = Request::get(format!("http://{admin}/readyz"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let fut = crate::support::client().request(req);
    match tokio::time::timeout(Duration::from_secs(2), fut).await {
        Ok(Ok(resp)) => Some(resp.status()),
        _ => None,
    }
}

/// `GET url` with an optional bearer token and an `x-request-id`.
async fn get(url: &str, token: Option<&str>, request_id: &str) -> Resp {
    let req = request(
        Method::GET,
        url,
        token,
        &[("x-request-id", request_id)],
        Bytes::new(),
    );
    tokio::time::timeout(Duration::from_secs(10), send(req))
        .await
        .expect("the proxy answers in time")
}

fn exit_code(status: &ExitStatus) -> Option<i32> {
    status.code()
}

/// Parses every stdout line as a JSON object; panics naming the offending line.
fn json_lines(stdout: &str) -> Vec<serde_json::Map<String, Value>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => map,
            Ok(other) => panic!("stdout line is JSON but not an object: {other}"),
            Err(e) => panic!("stdout line is not JSON ({e}): {line:?}"),
        })
        .collect()
}

fn is_access(line: &serde_json::Map<String, Value>) -> bool {
    line.get("target").and_then(Value::as_str) == Some("phonegate::access")
}

#[tokio::test]
async fn access_log_is_one_json_line_per_request_and_never_leaks_the_credential() {
    let mock = MockVapi::start().await;
    let proxy = Running::start(&mock.url(), &[], &[]).await;

    // (x-request-id sent, status answered) of every request made.
    let mut made: Vec<(String, StatusCode)> = Vec::new();
    let miss = get(&proxy.url(&path(VAPI_ID)), Some(TOKEN_A), "t1-miss").await;
    assert_eq!(miss.status, StatusCode::OK);
    miss.assert_cache("miss");
    made.push(("t1-miss".into(), miss.status));

    let hit = get(&proxy.url(&path(VAPI_ID)), Some(TOKEN_A), "t1-hit").await;
    assert_eq!(hit.status, StatusCode::OK);
    hit.assert_cache("hit");
    made.push(("t1-hit".into(), hit.status));

    let noauth = get(&proxy.url(&path(TWILIO_ID)), None, "t1-noauth").await;
    assert_eq!(noauth.status, StatusCode::UNAUTHORIZED);
    made.push(("t1-noauth".into(), noauth.status));

    let no_route = get(&proxy.url("/not-a-route"), Some(TOKEN_A), "t1-no-route").await;
    assert_eq!(no_route.status, StatusCode::NOT_FOUND);
    made.push(("t1-no-route".into(), no_route.status));

    let bad_id = get(
        &proxy.url("/phone-number/not-a-uuid"),
        Some(TOKEN_A),
        "t1-bad-id",
    )
    .await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    made.push(("t1-bad-id".into(), bad_id.status));

    for (provider, id) in FIXTURE_IDS {
        let rid = format!("t1-fixture-{provider}");
        let resp = get(&proxy.url(&path(id)), Some(TOKEN_A), &rid).await;
        assert_eq!(resp.status, StatusCode::OK, "{provider}");
        assert!(
            !resp.text().contains(PLANTED),
            "{provider}: a planted secret reached the client"
        );
        made.push((rid, resp.status));
    }

    let (status, stdout, stderr) = proxy.terminate().await;
    assert_eq!(
        exit_code(&status),
        Some(0),
        "SIGTERM exits 0; stderr: {stderr}"
    );

    let lines = json_lines(&stdout);
    let access: Vec<_> = lines.iter().filter(|l| is_access(l)).collect();
    assert_eq!(
        access.len(),
        made.len(),
        "exactly one access line per request; stdout:\n{stdout}"
    );
    let mut by_id: HashMap<&str, Vec<&serde_json::Map<String, Value>>> = HashMap::new();
    for line in &access {
        for field in [
            "status",
            "cache",
            "method",
            "path",
            "duration_ms",
            "upstream_ms",
            "request_id",
            "key_id",
        ] {
            assert!(
                line.contains_key(field),
                "access line lacks {field}: {line:?}"
            );
        }
        assert!(line["duration_ms"].is_number(), "{line:?}");
        assert_eq!(line["method"], "GET", "{line:?}");
        let rid = line["request_id"].as_str().expect("request_id is a string");
        by_id.entry(rid).or_default().push(line);
    }
    for (rid, expected_status) in &made {
        let found = by_id.get(rid.as_str()).map_or(0, Vec::len);
        assert_eq!(found, 1, "request {rid} logged {found} times:\n{stdout}");
        let line = by_id[rid.as_str()][0];
        assert_eq!(
            line["status"].as_u64(),
            Some(u64::from(expected_status.as_u16())),
            "{rid}: {line:?}"
        );
    }

    let miss_line = by_id["t1-miss"][0];
    assert_eq!(miss_line["cache"], "miss");
    assert_eq!(miss_line["path"], path(VAPI_ID).as_str());
    assert!(
        miss_line["upstream_ms"].is_number(),
        "a miss logs upstream_ms: {miss_line:?}"
    );
    let hit_line = by_id["t1-hit"][0];
    assert_eq!(hit_line["cache"], "hit");
    assert!(
        hit_line["upstream_ms"].is_null(),
        "a hit logs upstream_ms null: {hit_line:?}"
    );
    let key_id = miss_line["key_id"].as_str().expect("a miss has a key_id");
    assert_eq!(key_id.len(), 16, "key_id {key_id:?}");
    assert!(key_id.bytes().all(|b| b.is_ascii_hexdigit()), "{key_id:?}");
    assert!(!key_id.contains(TOKEN_A) && !TOKEN_A.contains(key_id));
    assert_eq!(
        hit_line["key_id"].as_str(),
        Some(key_id),
        "same credential, same key_id"
    );
    let noauth_line = by_id["t1-noauth"][0];
    assert!(
        noauth_line["key_id"].is_null(),
        "no credential, no key_id: {noauth_line:?}"
    );
    for (provider, _) in FIXTURE_IDS {
        let line = by_id[format!("t1-fixture-{provider}").as_str()][0];
        assert_eq!(line["key_id"].as_str(), Some(key_id), "{provider}");
    }

    // Operational lines exist too (start-up, shutdown), and they are JSON like the rest.
    assert!(
        lines.len() > access.len(),
        "operational logs share stdout:\n{stdout}"
    );

    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        for needle in [PLANTED, TOKEN_A, "Bearer"] {
            assert!(
                !text.contains(needle),
                "{name} contains {needle:?}:\n{text}"
            );
        }
    }
    assert_eq!(mock.hits(), FIXTURE_IDS.len(), "VAPI_ID was fetched once");
}

/// Runs the binary expecting a start-up failure; returns (stderr JSON message, raw stderr).
async fn start_failure(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let (listen, admin) = free_ports();
    let listen_s = listen.to_string();
    let admin_s = admin.to_string();
    // Free ports come first so that, should the bad setting be accepted, nothing collides.
    let mut all_env = vec![
        ("PHONEGATE__LISTEN", listen_s.as_str()),
        ("PHONEGATE__ADMIN__LISTEN", admin_s.as_str()),
        ("PHONEGATE__UPSTREAM__URL", "http://127.0.0.1:9"),
    ];
    all_env.retain(|(k, _)| !env.iter().any(|(k2, _)| k2 == k));
    all_env.extend_from_slice(env);
    let child = command(args, &all_env).spawn().expect("spawn phonegate");
    let (status, stdout, stderr) = finish(child).await;
    assert_eq!(
        exit_code(&status),
        Some(64),
        "{args:?} {env:?}: bad configuration exits 64; stdout: {stdout}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one stderr line: {stderr:?}");
    let v: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("stderr is not a JSON line ({e}): {stderr:?}"));
    assert!(v.is_object(), "{v}");
    let message = v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {v}"))
        .to_owned();
    (message, stderr)
}

#[tokio::test]
async fn invalid_settings_stop_start_up_with_exit_64_naming_key_and_value() {
    let cases: &[(&str, &str, &str)] = &[
        ("PHONEGATE__CACHE__TTL_SECS", "soon", "cache.ttl_secs"),
        ("PHONEGATE__REDACT__MODE", "scramble", "redact.mode"),
        ("PHONEGATE__LISTEN", "nowhere", "listen"),
        ("PHONEGATE__ADMIN__LISTEN", "nowhere-admin", "admin.listen"),
        (
            "PHONEGATE__UPSTREAM__URL",
            "ftp://example.test",
            "upstream.url",
        ),
    ];
    for (key, value, expect_key) in cases {
        let (message, _) = start_failure(&[], &[(key, value)]).await;
        assert!(
            message.contains(expect_key),
            "{key}={value}: message should name {expect_key}: {message}"
        );
        assert!(
            message.contains(value),
            "{key}={value}: message should show the value: {message}"
        );
    }
}

#[tokio::test]
async fn a_missing_or_bad_config_file_stops_start_up_with_exit_64() {
    let (message, _) = start_failure(&["--config", "/nonexistent.toml"], &[]).await;
    assert!(
        message.contains("/nonexistent.toml"),
        "the message names the file: {message}"
    );

    let (message, _) = start_failure(&[], &[("PHONEGATE_CONFIG", "/nonexistent.toml")]).await;
    assert!(
        message.contains("/nonexistent.toml"),
        "the message names the file: {message}"
    );

    let file = crate::support::temp_file(
        "binary",
        "bad-value.toml",
        "[log]\nformat = \"xml-please\"\n",
    );
    let arg = file.to_str().expect("utf-8 temp path");
    let (message, _) = start_failure(&["--config", arg], &[]).await;
    assert!(message.contains("log.format"), "{message}");
    assert!(message.contains("xml-please"), "{message}");

    let file2 =
        crate::support::temp_file("binary", "bad-type.toml", "[cache]\nttl_secs = \"later\"\n");
    let arg2 = file2.to_str().expect("utf-8 temp path");
    let (message, _) = start_failure(&["--config", arg2], &[]).await;
    assert!(message.contains("cache.ttl_secs"), "{message}");
    assert!(message.contains("later"), "{message}");

    let file3 =
        crate::support::temp_file("binary", "unknown-key.toml", "[cache]\nttl_seconds = 5\n");
    let arg3 = file3.to_str().expect("utf-8 temp path");
    let (message, _) = start_failure(&["--config", arg3], &[]).await;
    assert!(message.contains("ttl_seconds"), "{message}");

    for f in [file, file2, file3] {
        let _ = std::fs::remove_file(f);
    }
}

/// Two lookups of one number: both 200, the first answered `expect[0]`, the second `expect[1]`.
async fn two_gets(proxy: &Running, tag: &str, expect: [&str; 2]) {
    let url = proxy.url(&path(TWILIO_ID));
    let first = get(&url, Some(TOKEN_A), &format!("{tag}-1")).await;
    let second = get(&url, Some(TOKEN_A), &format!("{tag}-2")).await;
    assert_eq!(first.status, StatusCode::OK, "{tag}");
    assert_eq!(second.status, StatusCode::OK, "{tag}");
    first.assert_cache_because(expect[0], format_args!("{tag}, first"));
    second.assert_cache_because(expect[1], format_args!("{tag}, second"));
}

async fn stop_cleanly(proxy: Running) {
    let (status, _stdout, stderr) = proxy.terminate().await;
    assert_eq!(exit_code(&status), Some(0), "stderr: {stderr}");
}

#[tokio::test]
async fn a_config_file_applies_and_the_environment_overrides_it() {
    let mock = MockVapi::start().await;
    let file = crate::support::temp_file("binary", "ttl-zero.toml", "[cache]\nttl_secs = 0\n");
    let file_s = file.to_str().expect("utf-8 temp path").to_owned();

    // Baseline: the built-in default caches.
    let proxy = Running::start(&mock.url(), &[], &[]).await;
    two_gets(&proxy, "defaults", ["miss", "hit"]).await;
    stop_cleanly(proxy).await;

    // --config FILE: ttl 0, nothing is cached.
    mock.reset_hits();
    let proxy = Running::start(&mock.url(), &["--config", &file_s], &[]).await;
    two_gets(&proxy, "flag", ["miss", "miss"]).await;
    assert_eq!(mock.hits(), 2);
    stop_cleanly(proxy).await;

    // PHONEGATE_CONFIG=FILE does the same.
    mock.reset_hits();
    let proxy = Running::start(&mock.url(), &[], &[("PHONEGATE_CONFIG", &file_s)]).await;
    two_gets(&proxy, "env-file", ["miss", "miss"]).await;
    assert_eq!(mock.hits(), 2);
    stop_cleanly(proxy).await;

    // The environment wins over the file.
    mock.reset_hits();
    let proxy = Running::start(
        &mock.url(),
        &["--config", &file_s],
        &[("PHONEGATE__CACHE__TTL_SECS", "60")],
    )
    .await;
    two_gets(&proxy, "env-over-file", ["miss", "hit"]).await;
    assert_eq!(mock.hits(), 1);
    stop_cleanly(proxy).await;

    let _ = std::fs::remove_file(Path::new(&file_s));
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(1500)))
        .start()
        .await;
    let proxy = Running::start(&mock.url(), &[], &[]).await;
    let listen = proxy.listen;
    let admin = proxy.admin;

    let url = proxy.url(&path(TWILIO_ID));
    let in_flight = tokio::spawn(async move { get(&url, Some(TOKEN_A), "drain-1").await });

    // Wait until the request has reached the upstream, then a little more.
    upstream_reached(&mock, &path(TWILIO_ID)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!in_flight.is_finished(), "the upstream is still delaying");

    proxy.sigterm();
    let signalled = Instant::now();
    let mut readyz_during_drain: Vec<(Duration, Option<StatusCode>)> = Vec::new();
    let mut connect_after_sigterm: Option<std::io::Result<tokio::net::TcpStream>> = None;
    while !in_flight.is_finished() {
        assert!(
            signalled.elapsed() < Duration::from_secs(8),
            "the in-flight request did not finish"
        );
        let status = readyz(admin).await;
        if !in_flight.is_finished() {
            readyz_during_drain.push((signalled.elapsed(), status));
        }
        if connect_after_sigterm.is_none() && signalled.elapsed() >= Duration::from_millis(200) {
            connect_after_sigterm = Some(tokio::net::TcpStream::connect(listen).await);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let resp = in_flight.await.expect("request task");
    assert_eq!(
        resp.status,
        StatusCode::OK,
        "the in-flight request completes"
    );
    assert_eq!(resp.json()["id"], TWILIO_ID);

    assert!(
        readyz_during_drain
            .iter()
            .any(|(_, s)| *s == Some(StatusCode::SERVICE_UNAVAILABLE)),
        "/readyz answered 503 during the drain: {readyz_during_drain:?}"
    );
    // Signal delivery takes a moment, but well after it readiness must not be 200 any more.
    for (at, status) in &readyz_during_drain {
        if *at > Duration::from_millis(300) {
            assert_eq!(
                *status,
                Some(StatusCode::SERVICE_UNAVAILABLE),
                "at {at:?} after SIGTERM: {readyz_during_drain:?}"
            );
        }
    }
    match connect_after_sigterm.expect("a connection attempt was made during the drain") {
        Ok(_) => panic!("the proxy port still accepts connections after SIGTERM"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "unexpected connect error: {e}"
        ),
    }

    let Running { child, .. } = proxy;
    let started = Instant::now();
    let (status, stdout, stderr) = finish(child).await;
    assert_eq!(exit_code(&status), Some(0), "stderr: {stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exit took {:?} after SIGTERM ({:?} after the request completed)",
        signalled.elapsed(),
        started.elapsed()
    );
    let lines = json_lines(&stdout);
    assert_eq!(
        lines
            .iter()
            .filter(|l| is_access(l) && l["request_id"] == "drain-1")
            .count(),
        1,
        "the drained request was logged:\n{stdout}"
    );
}

#[tokio::test]
async fn version_and_help_exit_zero() {
    let child = command(&["--version"], &[]).spawn().expect("spawn");
    let (status, stdout, stderr) = finish(child).await;
    assert_eq!(exit_code(&status), Some(0), "stderr: {stderr}");
    assert!(
        stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version prints the version: {stdout:?}"
    );
    assert!(stdout.contains("phonegate"), "{stdout:?}");

    let child = command(&["--help"], &[]).spawn().expect("spawn");
    let (status, stdout, stderr) = finish(child).await;
    assert_eq!(exit_code(&status), Some(0), "stderr: {stderr}");
    assert!(
        stdout.contains("--config"),
        "--help lists --config: {stdout:?}"
    );
}

#[tokio::test]
async fn trace_level_operational_logs_stay_json_and_leak_nothing() {
    let mock = MockVapi::start().await;
    let proxy = Running::start(&mock.url(), &[], &[("PHONEGATE__LOG__LEVEL", "trace")]).await;

    // HTTP/1.1 and h2c (prior knowledge), so both protocol stacks log what they log.
    let h1 = get(&proxy.url(&path(TWILIO_ID)), Some(TOKEN_A), "trace-h1").await;
    assert_eq!(h1.status, StatusCode::OK);
    let h2_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
    let req = request(
        Method::GET,
        &proxy.url(&path(VAPI_ID)),
        Some(TOKEN_A),
        &[("x-request-id", "trace-h2")],
        Bytes::new(),
    );
    let resp = tokio::time::timeout(Duration::from_secs(10), h2_client.request(req))
        .await
        .expect("h2c answer in time")
        .expect("h2c request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    drop(resp);
    drop(h2_client);

    let (status, stdout, stderr) = proxy.terminate().await;
    assert_eq!(exit_code(&status), Some(0), "stderr: {stderr}");
    let lines = json_lines(&stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.get("level") == Some(&Value::from("TRACE"))),
        "log.level = trace took effect"
    );
    for rid in ["trace-h1", "trace-h2"] {
        assert_eq!(
            lines
                .iter()
                .filter(|l| is_access(l) && l["request_id"] == rid)
                .count(),
            1,
            "{rid} logged once"
        );
    }
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        for needle in [PLANTED, TOKEN_A, "Bearer"] {
            assert!(
                !text.contains(needle),
                "{name} contains {needle:?} at trace level"
            );
        }
    }
}

#[tokio::test]
async fn refusals_and_stale_answers_are_logged_with_their_reason() {
    let mock = MockVapi::start().await;
    let file = crate::support::temp_file("binary", "reasons.toml", "[cache]\nttl_secs = 60\n");
    let file_s = file.to_str().expect("utf-8 temp path").to_owned();
    let proxy = Running::start(
        &mock.url(),
        &["--config", &file_s],
        &[
            ("PHONEGATE__LIMITS__MISSES_PER_SEC_PER_KEY", "1"),
            ("PHONEGATE__LIMITS__MISS_BURST", "2"),
            ("PHONEGATE__UPSTREAM__BREAKER__FAILURES", "1"),
            ("PHONEGATE__UPSTREAM__BREAKER__OPEN_SECS", "30"),
            ("PHONEGATE__CACHE__STALE_WHILE_REVALIDATE_SECS", "0"),
        ],
    )
    .await;
    const TOKEN_C: &str = "test-key-carol-0003";
    let at = |id: &str| proxy.url(&path(id));
    let ok = get(&at(TWILIO_ID), Some(TOKEN_A), "reason-ok").await;
    assert_eq!(ok.status, StatusCode::OK);
    get(&at(VAPI_ID), Some(TOKEN_A), "reason-second").await;
    let limited = get(&at(VONAGE_ID), Some(TOKEN_A), "reason-limit").await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "burst of 2 spent"
    );
    let cached = get(&at(TWILIO_ID), Some(TOKEN_B), "reason-cached").await;
    assert_eq!(cached.status, StatusCode::OK);
    // TTL 0 by reload applies to the entries already cached: B's is stale at once, with no
    // stale-while-revalidate window, so only a failing upstream makes it stand in.
    std::fs::write(&file, "[cache]\nttl_secs = 0\n").expect("rewrite config");
    proxy.hup_and_wait("applied").await;
    mock.set_behavior(Behavior::Status(500));
    let stale = get(&at(TWILIO_ID), Some(TOKEN_B), "reason-stale").await;
    stale.assert_cache("stale");
    // That 500 opened the breaker (failures = 1 from the nested environment variable).
    let open = get(&at(VAPI_ID), Some(TOKEN_C), "reason-breaker").await;
    assert_eq!(open.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        mock.hits(),
        4,
        "the breaker kept the last request away from the upstream"
    );

    let (status, stdout, _) = proxy.terminate().await;
    assert_eq!(exit_code(&status), Some(0));
    let lines = json_lines(&stdout);
    let reason_of = |id: &str| -> (Value, Value) {
        let line = lines
            .iter()
            .find(|l| is_access(l) && l.get("request_id") == Some(&Value::from(id)))
            .unwrap_or_else(|| panic!("no access line for {id}"));
        (line["reason"].clone(), line["cache"].clone())
    };
    assert_eq!(reason_of("reason-ok"), (Value::Null, Value::from("miss")));
    assert_eq!(reason_of("reason-limit").0, Value::from("miss_limit"));
    assert_eq!(
        reason_of("reason-stale"),
        (Value::from("upstream_5xx"), Value::from("stale"))
    );
    assert_eq!(reason_of("reason-breaker").0, Value::from("breaker_open"));
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn sighup_reloads_the_file_and_rejects_a_bad_one() {
    let mock = MockVapi::start().await;
    let file = crate::support::temp_file("binary", "reload.toml", "[cache]\nttl_secs = 60\n");
    let file_s = file.to_str().expect("utf-8 temp path").to_owned();
    let proxy = Running::start(&mock.url(), &["--config", &file_s], &[]).await;

    // Cached under ttl 60 and the mask policy.
    let twilio = proxy.url(&path(TWILIO_ID));
    let first = get(&twilio, Some(TOKEN_A), "hup-1").await;
    assert!(first.text().contains("[REDACTED]"));
    get(&twilio, Some(TOKEN_A), "hup-2")
        .await
        .assert_cache("hit");

    // ttl 0: new lookups are no longer cached.
    std::fs::write(&file, "[cache]\nttl_secs = 0\n").expect("rewrite config");
    proxy.hup_and_wait("applied").await;
    let vapi = proxy.url(&path(VAPI_ID));
    for n in 3..5 {
        let resp = get(&vapi, Some(TOKEN_A), &format!("hup-{n}")).await;
        resp.assert_cache_because("miss", "ttl 0 applies after SIGHUP");
    }

    // A bad file is rejected and the running configuration stays (ttl still 0).
    std::fs::write(&file, "[cache]\nttl_secs = \"soon\"\n").expect("rewrite config");
    proxy.hup_and_wait("rejected").await;
    let hits_before = mock.hits();
    for n in 5..7 {
        let resp = get(&vapi, Some(TOKEN_A), &format!("hup-{n}")).await;
        assert_eq!(resp.status, StatusCode::OK, "still serving");
        resp.assert_cache("miss");
    }
    assert_eq!(mock.hits(), hits_before + 2);

    // A new redaction policy: the entry cached under the old one is never served again.
    std::fs::write(
        &file,
        "[cache]\nttl_secs = 60\n[redact]\nmode = \"remove\"\n",
    )
    .expect("rewrite");
    proxy.hup_and_wait("applied").await;
    let after = get(&twilio, Some(TOKEN_A), "hup-7").await;
    after.assert_cache_because("miss", "old-policy entry not served");
    assert!(!after.text().contains("[REDACTED]"), "remove mode applies");
    assert!(!after.text().contains(PLANTED));

    let (status, stdout, _) = proxy.terminate().await;
    assert_eq!(exit_code(&status), Some(0));
    let lines = json_lines(&stdout);
    let messages: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.get("message").and_then(Value::as_str))
        .collect();
    assert_eq!(
        messages
            .iter()
            .filter(|m| **m == "configuration reloaded")
            .count(),
        2,
        "{messages:?}"
    );
    let rejected = lines
        .iter()
        .find(|l| {
            l.get("message").and_then(Value::as_str)
                == Some("configuration reload rejected; keeping the running configuration")
        })
        .expect("a rejection line");
    assert_eq!(rejected["level"], "ERROR");
    assert!(
        rejected["error"]
            .as_str()
            .unwrap_or("")
            .contains("ttl_secs"),
        "{rejected:?}"
    );
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn check_config_prints_the_masked_configuration_or_exits_64() {
    let good = crate::support::temp_file(
        "binary",
        "check-good.toml",
        "[cache]\nttl_secs = 17\nkey_secret = \"check-config-secret-0123\"\n",
    );
    let good_s = good.to_str().expect("utf-8 temp path").to_owned();
    let out = command(&["check-config", "--config", &good_s], &[])
        .output()
        .await
        .expect("run check-config");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).expect("check-config prints JSON");
    assert_eq!(v["cache"]["ttl_secs"], 17);
    assert_eq!(v["cache"]["key_secret"], "(set)");
    assert!(!stdout.contains("check-config-secret-0123"), "{stdout}");

    let bad = crate::support::temp_file(
        "binary",
        "check-bad.toml",
        "[redact]\nmode = \"scramble\"\n",
    );
    let bad_s = bad.to_str().expect("utf-8 temp path").to_owned();
    let out = command(&["check-config", "--config", &bad_s], &[])
        .output()
        .await
        .expect("run check-config");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redact.mode") && stderr.contains("scramble"),
        "{stderr}"
    );
    // The environment layer applies to check-config too.
    let out = command(&["check-config"], &[("PHONEGATE__CACHE__TTL_SECS", "soon")])
        .output()
        .await
        .expect("run check-config");
    assert_eq!(out.status.code(), Some(64));
    let _ = std::fs::remove_file(&good);
    let _ = std::fs::remove_file(&bad);
}

#[tokio::test]
async fn a_shared_tier_without_a_shared_key_secret_is_refused_with_64() {
    let env = [("PHONEGATE__REDIS__URL", "redis://127.0.0.1:6379")];
    for args in [&["check-config"][..], &[][..]] {
        let out = command(args, &env).output().await.expect("run phonegate");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("cache.key_secret"), "{args:?}: {stderr}");
    }
    let out = command(
        &["check-config"],
        &[
            (
                "PHONEGATE__REDIS__URL",
                "redis://:hunter2-secret@127.0.0.1:6379",
            ),
            ("PHONEGATE__CACHE__KEY_SECRET", "binary-test-secret-0123"),
        ],
    )
    .output()
    .await
    .expect("run check-config");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(v["redis"]["url"], "redis://:(hidden)@127.0.0.1:6379");
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[tokio::test]
async fn hash_token_prints_the_sha256_of_stdin() {
    use tokio::io::AsyncWriteExt;
    let mut child = command(&["hash-token"], &[])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn hash-token");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"test\n").await.expect("write token");
    drop(stdin);
    let out = child.wait_with_output().await.expect("hash-token output");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
}

/// `phonegate_log_lines_dropped_total` on the admin listener.
async fn dropped_lines(admin: SocketAddr) -> u64 {
    scrape_metric(admin, "phonegate_log_lines_dropped_total")
        .await
        .expect("the metric is exported") as u64
}

/// Sends hits until the log buffer (1 MiB) behind a stdout nobody reads has overflowed; every
/// request must be answered meanwhile.
async fn overflow_the_log(running: &Running) {
    let url = running.url(&path(TWILIO_ID));
    for round in 0..40 {
        let ids: Vec<String> = (0..250).map(|i| format!("stall-{round}-{i}")).collect();
        let batch = ids.iter().map(|id| get(&url, Some(TOKEN_A), id));
        for resp in futures_util::future::join_all(batch).await {
            assert_eq!(
                resp.status,
                StatusCode::OK,
                "answered while stdout is stalled"
            );
        }
        if dropped_lines(running.admin).await > 0 {
            return;
        }
    }
    panic!("10,000 requests never filled the log buffer");
}

#[tokio::test]
async fn a_stalled_stdout_drops_counted_lines_instead_of_blocking_and_reports_them_later() {
    let mock = MockVapi::start().await;
    let mut running = Running::start(&mock.url(), &[], &[]).await;
    // Nobody reads stdout: the pipe fills, then phonegate's log buffer.
    overflow_the_log(&running).await;
    assert_eq!(
        admin_get(running.admin, "/healthz").await.status,
        StatusCode::OK
    );
    // Output flows again: the lost lines are reported.
    let mut stdout = running.child.stdout.take().expect("stdout");
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut chunk).await {
                Ok(0) | Err(_) => return seen,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    });
    // One more request gives the flusher a batch to write after the stall.
    let _ = get(&running.url(&path(VAPI_ID)), Some(TOKEN_A), "after-stall").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, _) = running.terminate().await;
    assert!(status.success(), "{status}");
    let out = String::from_utf8_lossy(&reader.await.expect("reader")).into_owned();
    let report = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "phonegate::log")
        .expect("a line reports the dropped lines once output flows");
    assert!(
        report["dropped"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
}

#[tokio::test]
async fn sigterm_ends_the_process_whatever_stdout_does() {
    let mock = MockVapi::start().await;
    let running = Running::start(
        &mock.url(),
        &[],
        &[("PHONEGATE__SERVER__DRAIN_TIMEOUT_MS", "1000")],
    )
    .await;
    overflow_the_log(&running).await;
    let pid = running.pid();
    running.sigterm();
    let mut child = running.child;
    // stdout is still never read.
    let exited = tokio::time::timeout(Duration::from_secs(6), child.wait()).await;
    assert!(
        matches!(exited, Ok(Ok(status)) if status.success()),
        "phonegate (pid {pid}) did not exit within the drain timeout with stdout stalled: {exited:?}"
    );
}

#[tokio::test]
async fn no_access_log_line_exceeds_the_documented_bound() {
    let mock = MockVapi::start().await;
    let running = Running::start(&mock.url(), &[], &[]).await;
    let method = "X".repeat(60_000);
    let long_path = format!("/phone-number/{}", "a".repeat(20_000));
    for request in [
        format!(
            "{method} /phone-number/{TWILIO_ID} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET {long_path} HTTP/1.1\r\nHost: x\r\nx-request-id: {}\r\nConnection: close\r\n\r\n",
            "r".repeat(5_000)
        ),
    ] {
        let answer = crate::support::raw(running.listen, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 4"),
            "{}",
            &answer[..answer.len().min(200)]
        );
    }
    let (status, stdout, _) = running.terminate().await;
    assert!(status.success());
    let access: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("\"phonegate::access\""))
        .collect();
    assert_eq!(access.len(), 2, "{stdout}");
    for line in access {
        assert!(line.len() <= 4096, "a {} byte access-log line", line.len());
        let v: Value = serde_json::from_str(line).expect("JSON");
        assert!(v["method"].as_str().is_some_and(|m| m.len() <= 32), "{v}");
    }
}

#[tokio::test]
async fn every_subcommand_exits_cleanly_on_a_closed_pipe() {
    for (args, input) in [
        (&["check-config"][..], None),
        (&["hash-token", "--generate"][..], None),
        (&["hash-token"][..], Some("some-token\n")),
        (&["--version"][..], None),
        (&["--help"][..], None),
    ] {
        // A pipe whose reader is already gone: every write to it fails with EPIPE.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut cmd = command(args, &[]);
        cmd.stdout(Stdio::from(writer));
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn");
        if let Some(text) = input {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(text.as_bytes()).await.expect("write stdin");
        }
        let out = tokio::time::timeout(PROCESS_DEADLINE, child.wait_with_output())
            .await
            .expect("exits in time")
            .expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {stderr}");
        assert!(
            out.status.code().is_some(),
            "{args:?} died of a signal: {:?}",
            out.status
        );
    }
}

/// Threads of process `pid` named as tokio names its runtime workers.
fn runtime_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn server_worker_threads_sets_the_runtime_workers() {
    let mock = MockVapi::start().await;
    for workers in [1, 3] {
        let proxy = Running::start(
            &mock.url(),
            &[],
            &[("PHONEGATE__SERVER__WORKER_THREADS", &workers.to_string())],
        )
        .await;
        two_gets(&proxy, &format!("workers-{workers}"), ["miss", "hit"]).await;
        assert_eq!(runtime_workers(proxy.pid()), workers);
        stop_cleanly(proxy).await;
        mock.reset_hits();
    }
    let (_, stderr) = start_failure(&[], &[("PHONEGATE__SERVER__WORKER_THREADS", "5000")]).await;
    assert!(stderr.contains("server.worker_threads"), "{stderr}");
}
