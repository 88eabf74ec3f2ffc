//! The operator files checked with the real `promtool` (Debian's `prometheus` package) and against
//! a live phonegate's `/metrics`:
//!
//! - `deploy/prometheus/alerts.yaml` passes `promtool check rules`, and every alert carries a
//!   severity and `summary`/`description`/`runbook` annotations;
//! - `deploy/prometheus/alerts.test.yaml` passes `promtool test rules`, and proves every alert
//!   fires (and some stay silent on healthy series);
//! - the exposition of an in-process phonegate, after hits, misses, a 404, a refusal, a stale
//!   answer, an upstream failure and a failing Redis tier, passes `promtool check metrics`;
//! - every PromQL expression of `deploy/grafana/phonegate.json` parses (one recording rule per
//!   panel target, fed to `promtool check rules`), and every metric named by the dashboard or the
//!   alerts is one that the live `/metrics` exposes (counters read through a range, as rate() or
//!   increase() need).
//!
//! Without `promtool` on PATH these tests fail with install instructions rather than skip: a
//! skipped check would let the files drift from the binary unnoticed. promtool runs as a child
//! process (killed if a test times out) on files in a private temporary directory, removed after
//! each test; phonegate, its mock upstream and the Redis it cannot reach are all on loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::mock_vapi::{INVALID_TOKEN, TWILIO_ID, VONAGE_ID};
use crate::support::{
    Behavior, MockVapi, Proxy, TOKEN_A, TempDir, admin_get, free_addr, get, on_path, path,
    read_repo_file, repo_root,
};

const DASHBOARD: &str = "deploy/grafana/phonegate.json";
const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts.test.yaml";

const INSTALL_HINT: &str = "promtool not found on PATH: install Debian's package with \
    `apt-get install prometheus` (or run .ci/run, which installs it when missing)";

/// Longest a promtool run may take before the test fails (and the child is killed).
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// What Grafana's built-in interval variables stand for in the parse check.
const GRAFANA_BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "5m"),
    ("__interval", "1m"),
    ("__range", "6h"),
    ("__interval_ms", "60000"),
    ("__range_s", "21600"),
    ("__range_ms", "21600000"),
];

/// The key secret phonegate needs before it accepts `[redis]`.
const KEY_SECRET: &str = "promtool-test-key-secret-0123456789";

// ---- the tests ----

#[tokio::test]
async fn alert_rules_pass_promtool_check_rules() {
    let out = promtool(
        &["check", "rules", "--lint=all", "--lint-fatal", ALERTS],
        None,
    )
    .await;
    assert!(
        out.success,
        "`promtool check rules {ALERTS}` failed:\n{}",
        out.text
    );
    let rules = alert_rules();
    assert!(rules.len() >= 10, "{ALERTS}: only {} alerts", rules.len());
    for rule in &rules {
        let name = rule["alert"].as_str().expect("alert name");
        for key in ["summary", "description", "runbook"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(
                !text.trim().is_empty(),
                "{ALERTS}: alert {name} has no `{key}` annotation"
            );
        }
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{ALERTS}: alert {name} has severity {severity:?}, not critical, warning or info"
        );
    }
}

#[tokio::test]
async fn alert_unit_tests_pass_and_cover_every_alert() {
    let out = promtool(&["test", "rules", ALERT_TESTS], None).await;
    assert!(
        out.success,
        "`promtool test rules {ALERT_TESTS}` failed:\n{}",
        out.text
    );
    // What the unit tests prove: every alert fires on some series, and some stay quiet on
    // healthy ones.
    let tests = yaml(ALERT_TESTS);
    assert_eq!(
        tests["rule_files"],
        serde_json::json!(["alerts.yaml"]),
        "{ALERT_TESTS} must test {ALERTS}"
    );
    let (mut fired, mut silent) = (BTreeSet::new(), 0);
    for case in tests["tests"].as_array().expect("tests: a list") {
        for check in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = check["alertname"].as_str().expect("alertname").to_owned();
            match check["exp_alerts"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                true => {
                    fired.insert(name);
                }
                false => silent += 1,
            }
        }
    }
    let names: BTreeSet<String> = alert_rules()
        .iter()
        .map(|r| r["alert"].as_str().expect("alert name").to_owned())
        .collect();
    let untested: Vec<&String> = names.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "{ALERT_TESTS}: no test shows these alerts firing: {untested:?}"
    );
    let unknown: Vec<&String> = fired.difference(&names).collect();
    assert!(
        unknown.is_empty(),
        "{ALERT_TESTS} expects alerts {ALERTS} does not define: {unknown:?}"
    );
    assert!(
        silent >= 3,
        "{ALERT_TESTS}: only {silent} checks that an alert stays silent on healthy series"
    );
}

#[tokio::test]
async fn live_metrics_pass_promtool_check_metrics() {
    let scrape = live_scrape().await;
    let out = promtool(&["check", "metrics"], Some(scrape.as_bytes())).await;
    let lints: Vec<&str> = out.text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut hint = String::new();
    if lints.iter().any(|l| l.contains("_total no help text")) {
        hint = "\nhint: promtool's linter reads the Prometheus text format (0.0.4); phonegate \
                answers OpenMetrics, whose HELP/TYPE lines name a counter without `_total`, so \
                each counter's `_total` series looks untyped and undocumented to it. Serving \
                the 0.0.4 format to scrapers that do not ask for OpenMetrics (src/admin.rs, \
                src/metrics.rs) makes the linter see them."
            .to_owned();
    }
    assert!(
        out.success && lints.is_empty(),
        "`promtool check metrics` on a live phonegate's /metrics reports {} problem(s):\n{}\n{hint}",
        lints.len(),
        lints.join("\n"),
    );
}

#[tokio::test]
async fn dashboard_queries_parse_and_name_only_exposed_metrics() {
    let dashboard: Value =
        serde_json::from_str(&read_repo_file(DASHBOARD)).expect("dashboard is JSON");
    check_dashboard_shape(&dashboard);
    let vars = dashboard_variables(&dashboard);
    let queries = dashboard_queries(&dashboard, &vars);
    assert!(
        queries.len() >= 20,
        "{DASHBOARD}: only {} queries",
        queries.len()
    );

    // promtool parses PromQL when it checks rules: one recording rule per query.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for query in &queries {
        rules.push_str(&format!(
            "      - record: {}\n        expr: {}\n",
            query.record,
            serde_json::to_string(&query.expr).expect("a JSON string is a YAML scalar")
        ));
    }
    let dir = TempDir::new("promtool");
    let file = dir.write("dashboard-rules.yaml", &rules);
    let out = promtool(
        &[
            "check",
            "rules",
            file.to_str().expect("temp paths are UTF-8"),
        ],
        None,
    )
    .await;
    let legend: Vec<String> = queries
        .iter()
        .map(|q| format!("{} = {}: {}", q.record, q.origin, q.expr))
        .collect();
    assert!(
        out.success,
        "{DASHBOARD}: promtool cannot parse every query:\n{}\nqueries:\n{}",
        out.text,
        legend.join("\n")
    );

    let exposed = Exposition::parse(&live_scrape().await);
    for query in &queries {
        exposed.check_expression(&query.expr, &format!("{DASHBOARD}: {}", query.origin));
    }
}

#[tokio::test]
async fn alert_rules_name_only_exposed_metrics() {
    let exposed = Exposition::parse(&live_scrape().await);
    let mut named = 0;
    for rule in alert_rules() {
        let name = rule["alert"].as_str().expect("alert name");
        let expr = rule["expr"].as_str().expect("expr is a string");
        named += exposed.check_expression(expr, &format!("{ALERTS}: alert {name}"));
    }
    assert!(named >= 12, "{ALERTS}: only {named} metric names found");
}

/// The PromQL reader that the name checks rely on, on expressions whose names are known.
#[test]
fn metric_names_are_read_from_promql() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"histogram_quantile(0.99, sum by (le, route) (rate(a_seconds_bucket{job=~"x|y", le!="+Inf"}[5m])))"#,
            &["a_seconds_bucket"],
        ),
        (
            "sum(rate(b_total[5m] offset 1h)) by (job) / on (job) group_left (reason) c",
            &["b_total", "c"],
        ),
        (
            r#"label_replace(up_total{a="sum(x)"}, "dst", "$1", "src", "(.*)") > bool 1e-3 and d:rule:ratio"#,
            &["up_total", "d:rule:ratio"],
        ),
        (
            "vector(0) or absent(e) unless count_values(\"v\", f)",
            &["e", "f"],
        ),
        (
            "max_over_time(g[10m:1m]) # a comment naming h\n * 2",
            &["g"],
        ),
    ];
    for (expr, expected) in cases {
        let names: Vec<&str> = metric_selectors(expr).iter().map(|s| s.name).collect();
        assert_eq!(&names, expected, "{expr}");
    }
    let ranged: Vec<bool> = metric_selectors("rate(a{x=\"]\"} [5m]) + b + c[1m]")
        .iter()
        .map(|s| s.ranged)
        .collect();
    assert_eq!(ranged, [true, false, true]);
}

// ---- promtool ----

struct PromtoolOutput {
    success: bool,
    /// stdout and stderr, in that order.
    text: String,
}

/// Runs promtool from the repository root (so the paths above resolve), feeding `stdin` if any.
async fn promtool(args: &[&str], stdin: Option<&[u8]>) -> PromtoolOutput {
    assert!(on_path("promtool"), "{INSTALL_HINT}");
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}); {INSTALL_HINT}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input).await.expect("write promtool's stdin");
        drop(pipe); // EOF
    }
    let out = tokio::time::timeout(PROMTOOL_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`promtool {}` took over {PROMTOOL_TIMEOUT:?}",
                args.join(" ")
            )
        })
        .expect("promtool output");
    PromtoolOutput {
        success: out.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

// ---- files ----

fn yaml(file: &str) -> Value {
    serde_norway::from_str(&read_repo_file(file))
        .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"))
}

/// Every alerting rule of alerts.yaml, in order.
fn alert_rules() -> Vec<Value> {
    let doc = yaml(ALERTS);
    let groups = doc["groups"].as_array().expect("groups: a list");
    let rules: Vec<Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r.get("alert").is_some())
        .collect();
    assert!(!rules.is_empty(), "{ALERTS}: no alerts");
    rules
}

// ---- the dashboard ----

/// A panel query with the dashboard's variables substituted.
struct Query {
    /// The recording rule name it gets in the parse check.
    record: String,
    /// Where it is, for messages: the panel's title and the target's refId.
    origin: String,
    expr: String,
}

/// The structure Grafana needs to import the dashboard anywhere: the data source chosen through
/// `${datasource}`, never a data source uid of the machine it was exported from.
fn check_dashboard_shape(dashboard: &Value) {
    let version = dashboard["schemaVersion"].as_u64().unwrap_or_default();
    assert!(version >= 39, "{DASHBOARD}: schemaVersion {version} is old");
    let list = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let datasource = list
        .iter()
        .find(|v| v["name"] == "datasource")
        .unwrap_or_else(|| panic!("{DASHBOARD}: no `datasource` variable"));
    assert_eq!(datasource["type"], "datasource", "{DASHBOARD}");
    assert_eq!(datasource["query"], "prometheus", "{DASHBOARD}");
    let mut ids = BTreeSet::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{DASHBOARD}: {title}: no id"));
        assert!(ids.insert(id), "{DASHBOARD}: panel id {id} used twice");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{DASHBOARD}: panel {title:?} does not use the ${{datasource}} variable"
        );
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(
            !targets.is_empty(),
            "{DASHBOARD}: panel {title:?} has no query"
        );
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{DASHBOARD}: a query of {title:?} does not use the ${{datasource}} variable"
            );
        }
    }
    for var in list.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            var["datasource"]["uid"], "${datasource}",
            "{DASHBOARD}: variable {} does not use the ${{datasource}} variable",
            var["name"]
        );
    }
}

/// Panels at the top level and inside (collapsed) rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels: a list") {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// What each dashboard variable stands for in the parse check: its text for constants and
/// text boxes, a match-all regex for query variables (they appear in `=~` matchers).
fn dashboard_variables(dashboard: &Value) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = GRAFANA_BUILTINS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().expect("variable name").to_owned();
        let value = match var["type"].as_str().unwrap_or_default() {
            "constant" | "textbox" => var["query"].as_str().expect("variable value").to_owned(),
            "query" | "custom" | "interval" => ".*".to_owned(),
            // A data source name has no place in PromQL: left out, so its use fails.
            _ => continue,
        };
        vars.insert(name, value);
    }
    vars
}

/// Every panel target's expression, and every query variable's `label_values(...)` selector.
fn dashboard_queries(dashboard: &Value, vars: &BTreeMap<String, String>) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let id = &panel["id"];
        for target in panel["targets"].as_array().into_iter().flatten() {
            let ref_id = target["refId"].as_str().unwrap_or("?");
            let origin = format!("panel {title:?} query {ref_id}");
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{DASHBOARD}: {origin} has no expr"));
            out.push(Query {
                record: format!("dashboard:panel_{id}:{ref_id}"),
                expr: substitute(expr, vars, &origin),
                origin,
            });
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or_default();
        let origin = format!("variable {name:?}");
        let definition = var["definition"].as_str().unwrap_or_default();
        let selector = definition
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .unwrap_or_else(|| {
                panic!("{DASHBOARD}: {origin}: expected label_values(selector, label)")
            });
        out.push(Query {
            record: format!("dashboard:variable_{name}"),
            expr: substitute(selector, vars, &origin),
            origin,
        });
    }
    out
}

/// Replaces Grafana's `$name`, `${name}`, `${name:format}` and `[[name]]` with `vars`' values.
fn substitute(expr: &str, vars: &BTreeMap<String, String>, origin: &str) -> String {
    let lookup = |name: &str| -> &str {
        vars.get(name).unwrap_or_else(|| {
            panic!("{DASHBOARD}: {origin} uses ${name}, which the dashboard does not define")
        })
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = expr;
    while let Some(pos) = rest.find(['$', '[']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(inner) = tail.strip_prefix("${") {
            let end = inner
                .find('}')
                .unwrap_or_else(|| panic!("{origin}: unclosed ${{"));
            let name = inner[..end].split(':').next().unwrap_or_default();
            out.push_str(lookup(name));
            rest = &inner[end + 1..];
        } else if let Some(inner) = tail.strip_prefix("[[") {
            let end = inner
                .find("]]")
                .unwrap_or_else(|| panic!("{origin}: unclosed [["));
            out.push_str(lookup(inner[..end].split(':').next().unwrap_or_default()));
            rest = &inner[end + 2..];
        } else if let Some(inner) = tail.strip_prefix('$') {
            let end = inner.find(|c: char| !is_name(c)).unwrap_or(inner.len());
            assert!(end > 0, "{DASHBOARD}: {origin}: a lone `$` in {expr:?}");
            out.push_str(lookup(&inner[..end]));
            rest = &inner[end..];
        } else {
            out.push('[');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

// ---- the live exposition ----

/// A phonegate's `/metrics` after traffic that sets every family the dashboard and the alerts
/// read: hits, misses, an upstream 404, a refusal (a key the upstream refused moments ago), a
/// stale answer whose background refresh gets a garbage body (an upstream failure), and a shared
/// tier configured on a port nothing listens on (Redis failures, its breaker, unsubscribed, L2
/// lookups counted as `untrusted`).
async fn live_scrape() -> String {
    let mock = MockVapi::start().await;
    let dead_redis = free_addr().port();
    let proxy = Proxy::start(
        &mock.url(),
        &format!(
            "[cache]\nkey_secret = \"{KEY_SECRET}\"\n\
             [redis]\nurl = \"redis://127.0.0.1:{dead_redis}\"\n"
        ),
    )
    .await;
    let twilio = path(TWILIO_ID);
    let first = get(&proxy, &twilio, Some(TOKEN_A)).await;
    assert_eq!(first.status, StatusCode::OK);
    first.assert_cache("miss");
    for _ in 0..2 {
        let hit = get(&proxy, &twilio, Some(TOKEN_A)).await;
        assert_eq!(hit.status, StatusCode::OK);
        hit.assert_cache("hit");
    }
    let missing = path("00000000-0000-4000-8000-000000000000");
    assert_eq!(
        get(&proxy, &missing, Some(TOKEN_A)).await.status,
        StatusCode::NOT_FOUND
    );
    // The upstream refuses this key; phonegate then refuses it itself for a while.
    for _ in 0..2 {
        let refused = get(&proxy, &path(VONAGE_ID), Some(INVALID_TOKEN)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    }
    // Past the TTL, inside stale-while-revalidate: a stale answer, and a refresh that fails.
    mock.set_behavior(Behavior::Garbage);
    proxy.state.clock.advance(Duration::from_secs(65));
    let stale = get(&proxy, &twilio, Some(TOKEN_A)).await;
    assert_eq!(stale.status, StatusCode::OK);
    stale.assert_cache("stale");

    let wanted = [
        "phonegate_refusals_total{",
        "phonegate_stale_served_total{",
        "phonegate_upstream_failures_total{",
        "phonegate_l2_lookups_total{",
        "phonegate_redis_failures_total{",
    ];
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape(&proxy).await;
        if wanted.iter().all(|w| text.contains(w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let absent: Vec<&&str> = wanted.iter().filter(|w| !text.contains(**w)).collect();
    assert!(
        absent.is_empty(),
        "the traffic did not produce {absent:?}:\n{text}"
    );
    proxy.stop().await;
    text
}

async fn scrape(proxy: &Proxy) -> String {
    let resp = admin_get(proxy.admin_addr, "/metrics").await;
    assert_eq!(resp.status, StatusCode::OK, "/metrics: {}", resp.text());
    resp.text()
}

/// The metric families of a scrape, and the series names Prometheus stores for them.
struct Exposition {
    /// Series name -> the family's type.
    series: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families: BTreeMap<String, String> = BTreeMap::new();
        let mut samples = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name type");
                families.insert(name.to_owned(), kind.trim().to_owned());
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                samples.insert(line[..end].to_owned());
            }
        }
        // A family's series names, by the suffix rules of the format: OpenMetrics (which ends
        // in `# EOF`) names a counter family without its `_total`, the text format (0.0.4) with.
        let openmetrics = text.trim_end().ends_with("# EOF");
        let mut series = BTreeMap::new();
        for (family, kind) in &families {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" if openmetrics => &["_total", "_created"],
                "counter" => &[""],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                _ => &[""], // gauge, stateset, unknown, untyped
            };
            for suffix in suffixes {
                series.insert(format!("{family}{suffix}"), kind.clone());
            }
        }
        let stray: Vec<&String> = samples
            .iter()
            .filter(|s| !series.contains_key(*s))
            .collect();
        assert!(
            stray.is_empty(),
            "/metrics: samples outside any declared family: {stray:?}"
        );
        assert!(
            samples.len() >= 20,
            "/metrics: only {} series names; is this phonegate?",
            samples.len()
        );
        Exposition { series }
    }

    /// Panics unless every metric `expr` names is exposed, and every counter series is read
    /// through a range (`rate(x[5m])`, not a bare running total). Returns how many it named.
    fn check_expression(&self, expr: &str, origin: &str) -> usize {
        let selectors = metric_selectors(expr);
        for selector in &selectors {
            let Some(kind) = self.series.get(selector.name) else {
                let close: Vec<&String> = self
                    .series
                    .keys()
                    .filter(|s| {
                        s.starts_with(selector.name) || selector.name.starts_with(s.as_str())
                    })
                    .collect();
                panic!(
                    "{origin}: `{}` is not a series phonegate's /metrics exposes (close: \
                     {close:?}) in:\n{expr}",
                    selector.name
                );
            };
            let cumulative = matches!(kind.as_str(), "counter" | "histogram" | "summary")
                && !selector.name.ends_with("_created");
            assert!(
                selector.ranged || !cumulative || kind == "summary",
                "{origin}: `{}` is a {kind} series, read without a range (rate/increase) in:\n{expr}",
                selector.name
            );
        }
        selectors.len()
    }
}

// ---- a PromQL reader: just enough to find the metric names ----

/// A metric name in an expression, and whether a range (`[5m]`) follows its matchers.
#[derive(Debug)]
struct Selector<'a> {
    name: &'a str,
    ranged: bool,
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// The metric names of a PromQL expression, in order: identifiers that are not functions,
/// aggregations, keywords, label names (in `{...}` or grouping lists), strings, numbers or
/// durations. `{__name__="..."}` selectors are refused, so a name cannot hide from the check.
fn metric_selectors(expr: &str) -> Vec<Selector<'_>> {
    assert!(
        !expr.contains("__name__"),
        "select metrics by name, not with __name__: {expr}"
    );
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' | b'`' => i = skip_string(bytes, i),
            b'{' => i = skip_group(bytes, i, b'{', b'}'),
            b'[' => i = skip_group(bytes, i, b'[', b']'),
            b'0'..=b'9' | b'.' => {
                // Numbers, durations (5m, 1h30m), exponents (1e-3), hex.
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || bytes[i] == b'.'
                        || (matches!(bytes[i], b'+' | b'-')
                            && matches!(bytes[i - 1], b'e' | b'E')
                            && !expr[..i].ends_with("0x")))
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = skip_ws(i);
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    if bytes.get(next) == Some(&b'(') {
                        i = skip_group(bytes, next, b'(', b')');
                    }
                } else if AGGREGATIONS.contains(&lower.as_str())
                    || KEYWORDS.contains(&lower.as_str())
                    || bytes.get(next) == Some(&b'(')
                {
                    // An aggregation, a keyword or a function call.
                } else {
                    let mut after = next;
                    if bytes.get(after) == Some(&b'{') {
                        after = skip_ws(skip_group(bytes, after, b'{', b'}'));
                    }
                    out.push(Selector {
                        name: word,
                        ranged: bytes.get(after) == Some(&b'['),
                    });
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// The index after the string literal starting at `start`.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() && bytes[i] != quote {
        if bytes[i] == b'\\' && quote != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// The index after the bracketed group starting at `start`, strings inside included.
fn skip_group(bytes: &[u8], start: usize, open: u8, close: u8) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' | b'`' => {
                i = skip_string(bytes, i);
                continue;
            }
            b if b == open => depth += 1,
            b if b == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}
