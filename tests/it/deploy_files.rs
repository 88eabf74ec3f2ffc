//! The deployment files under `deploy/` checked against the binary's real contract: every
//! `PHONEGATE__...` name is a setting the binary accepts, the ConfigMap and example TOML files pass
//! phonegate's own validation, ports and probe paths agree with what the listeners serve, the
//! termination grace periods cover the drain, and the Dockerfile and systemd unit use the binary's
//! real flags, variables and exit codes. The `kubernetes-replicas-with-redis` overlay is built the way
//! kustomize would (resources plus strategic-merge patches, for the fields it uses) and checked the
//! same way, plus its Redis: the URL in its Secret template reaches the Redis Service with the
//! password the Redis requires. Nothing here needs Docker, a cluster, Redis or systemd: the YAML,
//! Dockerfile and unit files are read with small line-based parsers (no YAML crate), the binary
//! is run only as `check-config`, and Redis is never connected to (its URLs are only validated).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{Empty, Full};
use phonegate::config::Config;
use phonegate::state::AppState;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_phonegate");

const DOCKERFILE: &str = "deploy/Dockerfile";
const KUSTOMIZATION: &str = "deploy/kubernetes/kustomization.yaml";
const DEPLOYMENT: &str = "deploy/kubernetes/deployment.yaml";
const SERVICE: &str = "deploy/kubernetes/service.yaml";
const CONFIGMAP: &str = "deploy/kubernetes/configmap.yaml";
const SECRET: &str = "deploy/kubernetes/secret.example.yaml";
const HPA: &str = "deploy/kubernetes/hpa.yaml";
const PDB: &str = "deploy/kubernetes/pdb.yaml";
const UNIT: &str = "deploy/systemd/phonegate.service";
const SYSTEMD_TOML: &str = "deploy/systemd/phonegate.toml";
const SYSTEMD_ENV: &str = "deploy/systemd/phonegate.env.example";
const BASE_DIR: &str = "deploy/kubernetes";
const OVERLAY_DIR: &str = "deploy/kubernetes-replicas-with-redis";
const OVERLAY_SECRET: &str = "deploy/kubernetes-replicas-with-redis/secret.example.yaml";

/// Value used for a `PHONEGATE__...` name a file mentions without a literal value (a shell
/// substitution, a prose mention): long enough for `cache.key_secret`, fine for any string setting.
const PLACEHOLDER: &str = "0123456789abcdef0123456789abcdef";

/// Value used for `redis.url` where a file gives none. Only ever validated, never connected to.
const REDIS_URL_PLACEHOLDER: &str = "redis://:0123456789abcdef@127.0.0.1:6379/0";

/// The placeholder for the setting `name` (see [`PLACEHOLDER`]).
fn placeholder_for(name: &str) -> String {
    match name {
        "PHONEGATE__REDIS__URL" => REDIS_URL_PLACEHOLDER.to_owned(),
        _ => PLACEHOLDER.to_owned(),
    }
}

/// Settings `name` cannot be checked without: `redis.url` requires `cache.key_secret`, and the
/// other `redis.*` settings are only validated when `redis.url` is set.
fn companions(name: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    if name.starts_with("PHONEGATE__REDIS__") {
        env.insert(
            "PHONEGATE__CACHE__KEY_SECRET".to_owned(),
            PLACEHOLDER.to_owned(),
        );
        if name != "PHONEGATE__REDIS__URL" {
            env.insert(
                "PHONEGATE__REDIS__URL".to_owned(),
                REDIS_URL_PLACEHOLDER.to_owned(),
            );
        }
    }
    env
}

// ---- reading files ----

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

/// Every file under `deploy/`, as paths relative to the repository root.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("deploy"), &mut files);
    let mut rel: Vec<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    rel.sort();
    rel
}

/// A unique temp file holding `contents`.
fn temp_file(name: &str, contents: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!(
        "phonegate-deploy-{}-{n}-{name}",
        std::process::id()
    ));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// Loads `toml` (as a file layer) with exactly `env` as the environment.
fn load(file: &str, toml: &str, env: &HashMap<String, String>) -> Config {
    let path = temp_file("layer.toml", toml);
    let result = Config::load_with_env(Some(&path), Some(env.clone()));
    std::fs::remove_file(&path).ok();
    result.unwrap_or_else(|e| panic!("{file}: phonegate refuses this configuration: {e}"))
}

/// Runs the real binary with `args`, no inherited phonegate settings, and `env`.
fn run_binary(args: &[String], env: &HashMap<String, String>) -> Output {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PHONEGATE") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run the phonegate binary")
}

// ---- a YAML subset: block mappings and sequences, scalars, `|` block scalars, `[a, b]` ----

mod yaml {
    use serde_json::{Map, Value};

    /// The documents of `text`. Scalars become strings (no type guessing), empty values null.
    /// Panics on anything outside the subset the deploy manifests use, rather than misreading it.
    pub fn parse(file: &str, text: &str) -> Vec<Value> {
        let mut docs = vec![Vec::new()];
        for line in text.lines() {
            if line.trim_end() == "---" {
                docs.push(Vec::new());
            } else {
                docs.last_mut().expect("a document").push(line.to_owned());
            }
        }
        docs.into_iter()
            .filter_map(|lines| {
                let mut p = Parser {
                    file,
                    lines,
                    pos: 0,
                };
                p.peek()?;
                let doc = p.node(0);
                if let Some((_, rest)) = p.peek() {
                    panic!("{file}: unparsed YAML at line {}: {rest:?}", p.pos + 1);
                }
                Some(doc)
            })
            .collect()
    }

    struct Parser<'a> {
        file: &'a str,
        lines: Vec<String>,
        pos: usize,
    }

    fn indent(line: &str) -> usize {
        line.len() - line.trim_start_matches(' ').len()
    }

    fn is_item(text: &str) -> bool {
        text == "-" || text.starts_with("- ")
    }

    /// Splits `key: rest` at the first colon outside quotes that ends the line or precedes a space.
    fn split_key(text: &str) -> Option<(&str, &str)> {
        let mut quote = None;
        for (i, c) in text.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '#') if i == 0 || text[..i].ends_with(' ') => return None,
                (None, ':') if text[i + 1..].is_empty() || text[i + 1..].starts_with(' ') => {
                    return Some((text[..i].trim(), &text[i + 1..]));
                }
                _ => {}
            }
        }
        None
    }

    fn strip_comment(text: &str) -> &str {
        let mut quote = None;
        for (i, c) in text.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '#') if i == 0 || text[..i].ends_with(' ') => return text[..i].trim_end(),
                _ => {}
            }
        }
        text.trim_end()
    }

    fn unquote(text: &str) -> String {
        let t = text.trim();
        if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
            t[1..t.len() - 1]
                .replace("\\\"", "\"")
                .replace("\\n", "\n")
                .replace("\\\\", "\\")
        } else if t.len() >= 2 && t.starts_with('\'') && t.ends_with('\'') {
            t[1..t.len() - 1].replace("''", "'")
        } else {
            t.to_owned()
        }
    }

    fn scalar(file: &str, text: &str) -> Value {
        let t = strip_comment(text).trim();
        match t {
            "" | "~" | "null" => Value::Null,
            "{}" => Value::Object(Map::new()),
            "[]" => Value::Array(Vec::new()),
            _ if t.starts_with('[') && t.ends_with(']') => Value::Array(
                t[1..t.len() - 1]
                    .split(',')
                    .map(|item| Value::String(unquote(item)))
                    .collect(),
            ),
            _ if t.starts_with('{') || t.starts_with('&') || t.starts_with('*') => {
                panic!("{file}: flow mappings, anchors and aliases are not supported: {t:?}")
            }
            _ => Value::String(unquote(t)),
        }
    }

    impl Parser<'_> {
        /// The next meaningful line: (indent, trimmed text), skipping blanks and comments.
        fn peek(&mut self) -> Option<(usize, String)> {
            while let Some(line) = self.lines.get(self.pos) {
                let t = line.trim();
                if t.is_empty() || t.starts_with('#') {
                    self.pos += 1;
                } else {
                    return Some((indent(line), t.to_owned()));
                }
            }
            None
        }

        fn node(&mut self, min_indent: usize) -> Value {
            match self.peek() {
                Some((ind, text)) if ind >= min_indent => {
                    if is_item(&text) {
                        self.seq(ind)
                    } else {
                        self.map(ind)
                    }
                }
                _ => Value::Null,
            }
        }

        fn seq(&mut self, ind: usize) -> Value {
            let mut items = Vec::new();
            while let Some((i, text)) = self.peek() {
                if i < ind || (i == ind && !is_item(&text)) {
                    break;
                }
                assert!(
                    i == ind,
                    "{}: unexpected indentation at line {}: {text:?}",
                    self.file,
                    self.pos + 1
                );
                let rest = text[1..].trim_start();
                if rest.is_empty() {
                    self.pos += 1;
                    items.push(self.node(ind + 1));
                } else if split_key(rest).is_some() {
                    // `- key: value` opens a mapping whose keys sit at the column of `key`.
                    let col = ind + (text.len() - rest.len());
                    self.lines[self.pos] = format!("{}{rest}", " ".repeat(col));
                    items.push(self.map(col));
                } else {
                    self.pos += 1;
                    items.push(scalar(self.file, rest));
                }
            }
            Value::Array(items)
        }

        fn map(&mut self, ind: usize) -> Value {
            let mut map = Map::new();
            while let Some((i, text)) = self.peek() {
                if i < ind || (i == ind && is_item(&text)) {
                    break;
                }
                assert!(
                    i == ind,
                    "{}: unexpected indentation at line {}: {text:?}",
                    self.file,
                    self.pos + 1
                );
                let (key, rest) = split_key(&text).unwrap_or_else(|| {
                    panic!(
                        "{}: expected `key: value` at line {}: {text:?}",
                        self.file,
                        self.pos + 1
                    )
                });
                let (key, rest) = (unquote(key), strip_comment(rest).trim().to_owned());
                self.pos += 1;
                let value = if rest.starts_with('|') {
                    self.block(ind, &rest)
                } else if rest.starts_with('>') {
                    panic!(
                        "{}: folded block scalars are not supported ({key})",
                        self.file
                    )
                } else if rest.is_empty() {
                    match self.peek() {
                        Some((i2, t2)) if i2 > ind || (i2 == ind && is_item(&t2)) => self.node(ind),
                        _ => Value::Null,
                    }
                } else {
                    scalar(self.file, &rest)
                };
                assert!(
                    map.insert(key.clone(), value).is_none(),
                    "{}: duplicate key {key}",
                    self.file
                );
            }
            Value::Object(map)
        }

        /// A literal block scalar (`|`, `|-`, `|+`) under a key at indent `ind`.
        fn block(&mut self, ind: usize, header: &str) -> Value {
            let mut raw = Vec::new();
            while let Some(line) = self.lines.get(self.pos) {
                if line.trim().is_empty() || indent(line) > ind {
                    raw.push(line.clone());
                    self.pos += 1;
                } else {
                    break;
                }
            }
            let block_indent = raw
                .iter()
                .find(|l| !l.trim().is_empty())
                .map(|l| indent(l))
                .unwrap_or(0);
            let text = raw
                .iter()
                .map(|l| l.get(block_indent..).unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            let body = text.trim_end_matches('\n');
            Value::String(match &header[1..] {
                "" => format!("{body}\n"),
                "-" => body.to_owned(),
                "+" => format!("{text}\n"),
                other => panic!("{}: block scalar header |{other} not supported", self.file),
            })
        }
    }
}

/// The one document of a manifest file.
fn manifest(file: &str) -> Value {
    let mut docs = yaml::parse(file, &read(file));
    assert_eq!(docs.len(), 1, "{file}: expected exactly one YAML document");
    docs.pop().expect("one document")
}

/// The value at `path` (object keys, or array indices) in a document from `file`.
fn at<'a>(file: &str, v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (n, seg) in path.iter().enumerate() {
        let next = match cur {
            Value::Object(map) => map.get(*seg),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        cur = next.unwrap_or_else(|| panic!("{file}: missing {}", path[..=n].join(".")));
    }
    cur
}

fn text_at<'a>(file: &str, v: &'a Value, path: &[&str]) -> &'a str {
    at(file, v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{file}: {} is not a scalar", path.join(".")))
}

fn num_at(file: &str, v: &Value, path: &[&str]) -> u64 {
    let t = text_at(file, v, path);
    t.parse()
        .unwrap_or_else(|_| panic!("{file}: {} = {t:?} is not a number", path.join(".")))
}

fn items<'a>(file: &str, v: &'a Value, path: &[&str]) -> &'a [Value] {
    at(file, v, path)
        .as_array()
        .unwrap_or_else(|| panic!("{file}: {} is not a list", path.join(".")))
}

/// The element of a list whose `name` is `name`.
fn named<'a>(file: &str, list: &'a [Value], name: &str, what: &str) -> &'a Value {
    list.iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .unwrap_or_else(|| panic!("{file}: no {what} named {name:?}"))
}

fn string_map(file: &str, v: &Value, path: &[&str]) -> BTreeMap<String, String> {
    at(file, v, path)
        .as_object()
        .unwrap_or_else(|| panic!("{file}: {} is not a mapping", path.join(".")))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect()
}

// ---- the Kubernetes objects ----

fn deployment() -> Value {
    let d = manifest(DEPLOYMENT);
    assert_eq!(
        text_at(DEPLOYMENT, &d, &["kind"]),
        "Deployment",
        "{DEPLOYMENT}: kind"
    );
    d
}

fn pod_spec(d: &Value) -> &Value {
    at(DEPLOYMENT, d, &["spec", "template", "spec"])
}

/// The `phonegate` container.
fn container(d: &Value) -> &Value {
    named(
        DEPLOYMENT,
        items(DEPLOYMENT, pod_spec(d), &["containers"]),
        "phonegate",
        "container",
    )
}

/// The Secret template's `stringData`.
fn secret_data() -> BTreeMap<String, String> {
    secret_data_of(SECRET)
}

/// `stringData` of the Secret template `file`.
fn secret_data_of(file: &str) -> BTreeMap<String, String> {
    let s = manifest(file);
    assert_eq!(text_at(file, &s, &["kind"]), "Secret", "{file}: kind");
    string_map(file, &s, &["stringData"])
}

/// The container's environment as the pod gets it: literal values, and Secret references resolved
/// from the Secret template (an `optional` reference to a key the template lacks leaves the
/// variable unset, as Kubernetes does).
fn pod_env(d: &Value) -> HashMap<String, String> {
    pod_env_with(d, &|_| None)
}

/// Like [`pod_env`], with `fill(variable)` for optional Secret keys the template lacks.
fn pod_env_with(d: &Value, fill: &dyn Fn(&str) -> Option<String>) -> HashMap<String, String> {
    container_env(DEPLOYMENT, container(d), SECRET, fill)
}

/// The environment of container `c` (from `file`), Secret references resolved from the template
/// `secret_file`; `fill(variable)` stands in for optional keys the template lacks (None: unset).
fn container_env(
    file: &str,
    c: &Value,
    secret_file: &str,
    fill: &dyn Fn(&str) -> Option<String>,
) -> HashMap<String, String> {
    let secret = manifest(secret_file);
    let secret_name = text_at(secret_file, &secret, &["metadata", "name"]);
    let data = secret_data_of(secret_file);
    let mut env = HashMap::new();
    let vars = match c.get("env") {
        Some(_) => items(file, c, &["env"]),
        None => &[],
    };
    for var in vars {
        let name = text_at(file, var, &["name"]);
        let value = if let Some(v) = var.get("value") {
            v.as_str().unwrap_or_default().to_owned()
        } else {
            let r = at(file, var, &["valueFrom", "secretKeyRef"]);
            let (sname, key) = (text_at(file, r, &["name"]), text_at(file, r, &["key"]));
            assert_eq!(
                sname, secret_name,
                "{file}: env {name} reads Secret {sname:?}, but {secret_file} is {secret_name:?}"
            );
            let optional = r.get("optional").and_then(Value::as_str) == Some("true");
            match (data.get(key), optional) {
                (Some(value), _) => value.clone(),
                (None, true) => match fill(name) {
                    Some(value) => value,
                    None => continue,
                },
                (None, false) => {
                    panic!("{file}: env {name} reads key {key:?}, absent from {secret_file}")
                }
            }
        };
        assert!(
            env.insert(name.to_owned(), value).is_none(),
            "{file}: env {name} set twice"
        );
    }
    env
}

/// The `phonegate.toml` embedded in the ConfigMap.
fn configmap_toml() -> String {
    let cm = manifest(CONFIGMAP);
    assert_eq!(
        text_at(CONFIGMAP, &cm, &["kind"]),
        "ConfigMap",
        "{CONFIGMAP}: kind"
    );
    text_at(CONFIGMAP, &cm, &["data", "phonegate.toml"]).to_owned()
}

/// What a pod runs with: defaults, the ConfigMap's file, the Deployment's environment.
fn pod_config(d: &Value) -> Config {
    load(
        &format!("{CONFIGMAP} with the env of {DEPLOYMENT}"),
        &configmap_toml(),
        &pod_env(d),
    )
}

/// A container port named `name`, and a port reference (a name or a number) resolved against them.
fn container_port(d: &Value, name: &str) -> u16 {
    let port = named(
        DEPLOYMENT,
        items(DEPLOYMENT, container(d), &["ports"]),
        name,
        "containerPort",
    );
    num_at(DEPLOYMENT, port, &["containerPort"]) as u16
}

fn resolve_port(d: &Value, reference: &str) -> u16 {
    reference
        .parse()
        .unwrap_or_else(|_| container_port(d, reference))
}

/// A Kubernetes quantity of bytes (`512Mi`, `1G`, `1000`).
fn quantity(file: &str, q: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("K", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            let n: u64 = n
                .parse()
                .unwrap_or_else(|_| panic!("{file}: quantity {q:?}"));
            return n * factor;
        }
    }
    q.parse()
        .unwrap_or_else(|_| panic!("{file}: quantity {q:?}"))
}

// ---- kustomize, as far as the manifests use it ----

/// A path relative to the repository root with `.` and `..` resolved.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts
                    .pop()
                    .unwrap_or_else(|| panic!("{path}: leaves the repository"));
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Lists of a Pod spec that a strategic-merge patch merges by a key rather than replaces, with
/// that key (Service `ports` merge by `port`, container `ports` by `containerPort`).
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "env" | "volumes" | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" if items.iter().all(|i| i.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Applies a strategic-merge `patch` (from `file`) to `target`: mappings merge, keyed lists merge
/// item by item, anything else is replaced. Deletions and `$patch` directives are refused.
fn strategic_merge(file: &str, field: &str, target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                assert!(
                    !k.starts_with('$') && !pv.is_null(),
                    "{file}: {k}: deletions and $patch directives are not supported here"
                );
                match t.get_mut(k) {
                    Some(tv) => strategic_merge(file, k, tv, pv),
                    None => {
                        t.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if merge_key(field, p).is_some() => {
            let key = merge_key(field, p).expect("checked");
            for item in p {
                let id = item
                    .get(key)
                    .unwrap_or_else(|| panic!("{file}: an item of {field} without {key}"));
                match t.iter_mut().find(|i| i.get(key) == Some(id)) {
                    Some(existing) => strategic_merge(file, field, existing, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The objects `kubectl apply -k dir` would apply, each with the file it came from (or, once
/// patched, that file and the patch): its `resources` (files or kustomization directories) with
/// its `patches` applied. Fields that would rename or relabel objects are refused rather than
/// ignored; `images` (from `kustomize edit set image`) only changes the image and is ignored.
fn kustomize(dir: &str) -> Vec<(String, Value)> {
    let kfile = format!("{dir}/kustomization.yaml");
    let k = manifest(&kfile);
    for key in k.as_object().expect("a mapping").keys() {
        assert!(
            ["apiVersion", "kind", "resources", "patches", "images"].contains(&key.as_str()),
            "{kfile}: {key} is not understood by tests/deploy_files.rs; extend its kustomize()"
        );
    }
    assert_eq!(text_at(&kfile, &k, &["kind"]), "Kustomization", "{kfile}");
    let mut objects = Vec::new();
    for r in items(&kfile, &k, &["resources"]) {
        let r = r.as_str().expect("a resource path");
        let path = normalize(&format!("{dir}/{r}"));
        if root().join(&path).is_dir() {
            assert!(
                root().join(&path).join("kustomization.yaml").is_file(),
                "{kfile}: resource {r} is a directory without kustomization.yaml"
            );
            // kustomize refuses a kustomization whose directory contains one it came from.
            assert!(
                !format!("{dir}/").starts_with(&format!("{path}/")),
                "{kfile}: resource {r} contains {dir}; kustomize rejects that as a cycle (put the \
                 overlay beside its base, not inside it)"
            );
            objects.extend(kustomize(&path));
        } else {
            // ... and, by default, files outside the kustomization's own directory.
            assert!(
                path.starts_with(&format!("{dir}/")),
                "{kfile}: resource {r} is outside {dir}; kustomize refuses it unless it is a \
                 kustomization directory"
            );
            for doc in yaml::parse(&path, &read(&path)) {
                objects.push((path.clone(), doc));
            }
        }
    }
    let patches = match k.get("patches") {
        Some(_) => items(&kfile, &k, &["patches"]),
        None => &[],
    };
    for p in patches {
        let keys: Vec<&String> = p.as_object().expect("a patch entry").keys().collect();
        assert_eq!(
            keys,
            ["path"],
            "{kfile}: only `- path: FILE` patches are understood here (a strategic merge \
             targeting the object the file names)"
        );
        let pfile = normalize(&format!("{dir}/{}", text_at(&kfile, p, &["path"])));
        assert!(
            pfile.starts_with(&format!("{dir}/")),
            "{kfile}: patch {pfile} is outside {dir}, which kustomize refuses"
        );
        let patch = manifest(&pfile);
        let kind = text_at(&pfile, &patch, &["kind"]);
        let name = text_at(&pfile, &patch, &["metadata", "name"]);
        let mut targets = objects.iter_mut().filter(|(_, o)| {
            o.get("kind").and_then(Value::as_str) == Some(kind)
                && o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        });
        let (file, target) = targets
            .next()
            .unwrap_or_else(|| panic!("{pfile}: patches {kind} {name}, which {kfile} lacks"));
        assert_eq!(
            text_at(file, target, &["apiVersion"]),
            text_at(&pfile, &patch, &["apiVersion"]),
            "{pfile}: apiVersion differs from the {kind} it patches ({file})"
        );
        strategic_merge(&pfile, "", target, &patch);
        *file = format!("{file} patched by {pfile}");
    }
    let mut seen = BTreeSet::new();
    for (file, o) in &objects {
        let id = (
            text_at(file, o, &["kind"]).to_owned(),
            text_at(file, o, &["metadata", "name"]).to_owned(),
        );
        assert!(seen.insert(id.clone()), "{kfile}: {id:?} defined twice");
    }
    objects
}

/// The one object of `kind` named `name` among `objects`.
fn object<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a (String, Value) {
    objects
        .iter()
        .find(|(_, o)| {
            o.get("kind").and_then(Value::as_str) == Some(kind)
                && o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The objects of `kind` among `objects`.
fn objects_of<'a>(objects: &'a [(String, Value)], kind: &str) -> Vec<&'a (String, Value)> {
    objects
        .iter()
        .filter(|(_, o)| o.get("kind").and_then(Value::as_str) == Some(kind))
        .collect()
}

/// The overlay's phonegate Deployment, patched: (where it came from, the object).
fn overlay_phonegate() -> (String, Value) {
    let objects = kustomize(OVERLAY_DIR);
    let name = text_at(DEPLOYMENT, &deployment(), &["metadata", "name"]).to_owned();
    object(&objects, "Deployment", &name).clone()
}

/// The phonegate container of the overlay's Deployment.
fn overlay_container((file, d): &(String, Value)) -> &Value {
    named(
        file,
        items(file, d, &["spec", "template", "spec", "containers"]),
        "phonegate",
        "container",
    )
}

/// The overlay pods' environment, Secret references resolved from the overlay's template.
fn overlay_env(
    d: &(String, Value),
    fill: &dyn Fn(&str) -> Option<String>,
) -> HashMap<String, String> {
    container_env(&d.0, overlay_container(d), OVERLAY_SECRET, fill)
}

/// Whether `selector` (label → value) selects a pod labelled `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Redis container of the overlay: (its Deployment's file, the Deployment, the container).
fn overlay_redis(objects: &[(String, Value)]) -> (String, Value, Value) {
    let found: Vec<(String, Value, Value)> = objects_of(objects, "Deployment")
        .into_iter()
        .flat_map(|(file, d)| {
            items(file, d, &["spec", "template", "spec", "containers"])
                .iter()
                .filter(|c| {
                    c.get("image")
                        .and_then(Value::as_str)
                        .is_some_and(|i| i.starts_with("redis:") || i.contains("/redis:"))
                })
                .map(|c| (file.clone(), d.clone(), c.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{OVERLAY_DIR}: expected one container running a redis image"
    );
    found.into_iter().next().expect("one")
}

/// The arguments of a container, `$(VAR)` expanded from its environment as the kubelet does.
fn expanded_args(file: &str, c: &Value, env: &HashMap<String, String>) -> Vec<String> {
    let args = match c.get("args") {
        Some(_) => items(file, c, &["args"]),
        None => &[],
    };
    args.iter()
        .map(|a| {
            let mut a = a.as_str().unwrap_or_default().to_owned();
            for (k, v) in env {
                a = a.replace(&format!("$({k})"), v);
            }
            assert!(
                !a.contains("$("),
                "{file}: argument {a:?} names an unset variable"
            );
            a
        })
        .collect()
}

/// The value following `flag` in `args` (redis-server's `--name value` form).
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .map(|i| args.get(i + 1).map(String::as_str).unwrap_or_default())
}

/// Bytes in a redis.conf memory value (`256mb`, `1gb`, `100000`).
fn redis_bytes(file: &str, v: &str) -> u64 {
    let v = v.to_ascii_lowercase();
    for (suffix, factor) in [
        ("gb", 1u64 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("g", 1_000_000_000),
        ("m", 1_000_000),
        ("k", 1000),
        ("b", 1),
    ] {
        if let Some(n) = v.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or_else(|_| panic!("{file}: {v:?}")) * factor;
        }
    }
    v.parse().unwrap_or_else(|_| panic!("{file}: {v:?}"))
}

/// Keys shown commented out in a Secret template (`# key: value`): documented optional keys.
fn commented_secret_keys(file: &str) -> BTreeSet<String> {
    read(file)
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#'))
        .filter_map(|l| {
            let (key, value) = l.trim().split_once(": ")?;
            let plain = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            (plain && !value.trim().is_empty()).then(|| key.to_owned())
        })
        .collect()
}

// ---- the Dockerfile ----

struct Instruction {
    stage: usize,
    op: String,
    args: String,
}

/// Instructions with line continuations joined and comments dropped; `stage` counts FROMs.
fn dockerfile() -> Vec<Instruction> {
    let text = read(DOCKERFILE);
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(
        current.trim().is_empty(),
        "{DOCKERFILE}: ends inside a line continuation"
    );
    let mut stage = 0;
    logical
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (op, args) = l.trim().split_once(char::is_whitespace).unwrap_or((l, ""));
            let op = op.to_ascii_uppercase();
            if op == "FROM" {
                stage += 1;
            }
            Instruction {
                stage,
                op,
                args: args.trim().to_owned(),
            }
        })
        .collect()
}

/// Whitespace-separated words, with double or single quotes grouping and removed.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in text.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// `ENV` settings of the final stage.
fn docker_env(instructions: &[Instruction]) -> HashMap<String, String> {
    let last = instructions.last().map_or(0, |i| i.stage);
    let mut env = HashMap::new();
    for i in instructions
        .iter()
        .filter(|i| i.op == "ENV" && i.stage == last)
    {
        for word in words(&i.args) {
            let (k, v) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("{DOCKERFILE}: use ENV KEY=VALUE (got {:?})", i.args));
            env.insert(k.to_owned(), v.to_owned());
        }
    }
    env
}

/// `COPY` instructions as (stage, `--from` stage or None for the build context, sources, dest).
fn docker_copies(
    instructions: &[Instruction],
) -> Vec<(usize, Option<String>, Vec<String>, String)> {
    instructions
        .iter()
        .filter(|i| i.op == "COPY" || i.op == "ADD")
        .map(|i| {
            let w = words(&i.args);
            let from = w
                .iter()
                .find_map(|a| a.strip_prefix("--from=").map(str::to_owned));
            let mut paths: Vec<String> = w.into_iter().filter(|a| !a.starts_with("--")).collect();
            let dest = paths.pop().expect("COPY has a destination");
            (i.stage, from, paths, dest)
        })
        .collect()
}

/// Where a COPY of `source` into `dest` puts it.
fn copied_to(source: &str, dest: &str) -> String {
    if dest.ends_with('/') {
        let base = source
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(source);
        format!("{dest}{base}")
    } else {
        dest.to_owned()
    }
}

// ---- the systemd unit ----

/// `Key=Value` directives of the unit (comments skipped), in order.
fn unit_directives() -> Vec<(String, String)> {
    read(UNIT)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{UNIT}: not a directive: {l:?}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn unit_values(directives: &[(String, String)], key: &str) -> Vec<String> {
    directives
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

fn unit_value(directives: &[(String, String)], key: &str) -> String {
    let values = unit_values(directives, key);
    assert_eq!(
        values.len(),
        1,
        "{UNIT}: expected one {key}=, got {values:?}"
    );
    values[0].clone()
}

/// A systemd time span: bare seconds or with units (`20`, `20s`, `1min 30s`).
fn systemd_span(file: &str, value: &str) -> Duration {
    if let Ok(secs) = value.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    humantime::parse_duration(value)
        .unwrap_or_else(|e| panic!("{file}: {value:?} is not a time span: {e}"))
}

/// `KEY=VALUE` lines of an environment file.
fn env_file(file: &str) -> HashMap<String, String> {
    read(file)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{file}: not KEY=VALUE: {l:?}"));
            (k.trim().to_owned(), words(v).join(" "))
        })
        .collect()
}

/// `KEY=VALUE` lines an environment file shows commented out (`# PHONEGATE__...=value`).
fn commented_env(file: &str) -> HashMap<String, String> {
    read(file)
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#'))
        .map(str::trim)
        .filter(|l| l.starts_with("PHONEGATE"))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_owned(), words(v).join(" ")))
        })
        .collect()
}

/// A path given to `key` in a TOML file, set or commented out (`# key = "..."`).
fn toml_path_mention(file: &str, text: &str, key: &str) -> String {
    text.lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find_map(|l| {
            let rest = l.strip_prefix(key)?.trim_start().strip_prefix('=')?;
            Some(rest.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("{file}: no {key} line, set or commented"))
}

// ---- tests ----

#[test]
fn the_yaml_reader_understands_the_manifest_subset() {
    let docs = yaml::parse(
        "inline",
        "a: 1 # note\nb:\n  - name: x\n    value: \"0.0.0.0:80\"\n  - name: y\n    valueFrom:\n      k: v\n\
         c:\n- p\n- 'q r'\nd: [\"ALL\", b]\ne: |\n  # kept\n  k = \"v\"\n\n  [s]\nf: {}\n---\ng: h\n",
    );
    assert_eq!(docs.len(), 2);
    let d = &docs[0];
    assert_eq!(d["a"], "1");
    assert_eq!(d["b"][0]["value"], "0.0.0.0:80");
    assert_eq!(d["b"][1]["valueFrom"]["k"], "v");
    assert_eq!(d["c"][1], "q r");
    assert_eq!(d["d"][0], "ALL");
    assert_eq!(d["e"], "# kept\nk = \"v\"\n\n[s]\n");
    assert!(d["f"].as_object().is_some_and(|m| m.is_empty()));
    assert_eq!(docs[1]["g"], "h");
}

#[test]
fn unknown_environment_names_are_refused_so_the_name_checks_mean_something() {
    for name in [
        "PHONEGATE__SERVER__DRAIN_TIMEOUT",
        "PHONEGATE__CACHE__KEYSECRET",
        "PHONEGATE__ADMIN_LISTEN",
        "PHONEGATE__REDIS__URI",
        "PHONEGATE__REDIS_URL",
        "PHONEGATE__REDIS__BREAKER__OPEN_SECS",
    ] {
        let mut env = companions(name);
        env.insert(name.to_owned(), PLACEHOLDER.to_owned());
        assert!(
            Config::load_with_env(None, Some(env)).is_err(),
            "phonegate accepts the unknown name {name}: the checks of deploy/ names below would \
             not catch a typo"
        );
    }
}

#[test]
fn every_phonegate_variable_in_deploy_files_is_a_setting_the_binary_accepts() {
    // Values the files give in structured form.
    let mut known: HashMap<String, (String, String)> = HashMap::new();
    for (k, v) in docker_env(&dockerfile()) {
        known.insert(k, (DOCKERFILE.to_owned(), v));
    }
    for (k, v) in pod_env_with(&deployment(), &|name| Some(placeholder_for(name))) {
        known.insert(k, (DEPLOYMENT.to_owned(), v));
    }
    let overlay = overlay_phonegate();
    for (k, v) in overlay_env(&overlay, &|name| Some(placeholder_for(name))) {
        known.insert(k, (OVERLAY_DIR.to_owned(), v));
    }
    for (k, v) in env_file(SYSTEMD_ENV) {
        known.insert(k, (SYSTEMD_ENV.to_owned(), v));
    }
    for env in unit_values(&unit_directives(), "Environment") {
        for word in words(&env) {
            if let Some((k, v)) = word.split_once('=') {
                known.insert(k.to_owned(), (UNIT.to_owned(), v.to_owned()));
            }
        }
    }

    let mut checked = 0;
    for file in deploy_files() {
        let text = read(&file);
        let mut env = HashMap::new();
        for (pos, _) in text.match_indices("PHONEGATE__") {
            let tail = &text[pos..];
            let len = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..len];
            if name.len() == "PHONEGATE__".len() || name.ends_with('_') {
                continue; // the pattern itself (`PHONEGATE__<SECTION>__<KEY>`), not a name
            }
            // An inline `NAME=value` wins; then the value a structured file gives the name.
            let inline = tail[len..].strip_prefix('=').map(|v| {
                let v = v
                    .split(|c: char| c.is_whitespace() || c == '`')
                    .next()
                    .unwrap_or("");
                v.trim_matches(|c| c == '"' || c == '\'').to_owned()
            });
            let value = inline
                .filter(|v| v_is_plain(v))
                .or_else(|| known.get(name).map(|(_, v)| v.clone()))
                .unwrap_or_else(|| placeholder_for(name));
            let mut alone = companions(name);
            alone.insert(name.to_owned(), value.clone());
            if let Err(e) = Config::load_with_env(None, Some(alone)) {
                panic!("{file}: {name}={value:?} is not accepted by phonegate: {e}");
            }
            env.insert(name.to_owned(), value);
            checked += 1;
        }
        let mut together = HashMap::new();
        for name in env.keys() {
            together.extend(companions(name));
        }
        together.extend(env.clone());
        let env = together;
        if let Err(e) = Config::load_with_env(None, Some(env.clone())) {
            panic!("{file}: its PHONEGATE__ variables together are refused: {e} ({env:?})");
        }
    }
    assert!(
        checked >= 6,
        "only {checked} PHONEGATE__ mentions found in deploy/"
    );

    // And the structured sources as whole environments (Secret values included).
    for (file, env) in [
        (DOCKERFILE, docker_env(&dockerfile())),
        (DEPLOYMENT, pod_env(&deployment())),
        (
            DEPLOYMENT,
            pod_env_with(&deployment(), &|name| Some(placeholder_for(name))),
        ),
        (OVERLAY_DIR, overlay_env(&overlay, &|_| None)),
        (
            OVERLAY_DIR,
            overlay_env(&overlay, &|name| Some(placeholder_for(name))),
        ),
        (SYSTEMD_ENV, env_file(SYSTEMD_ENV)),
        (SYSTEMD_ENV, {
            // With every commented example uncommented too.
            let mut env = env_file(SYSTEMD_ENV);
            env.extend(commented_env(SYSTEMD_ENV));
            env
        }),
    ] {
        for name in env.keys() {
            assert!(
                name.starts_with("PHONEGATE__") || name == "PHONEGATE_CONFIG",
                "{file}: {name} is not a phonegate variable (PHONEGATE__<SECTION>__<KEY> or \
                 PHONEGATE_CONFIG)"
            );
        }
        if let Err(e) = Config::load_with_env(None, Some(env)) {
            panic!("{file}: its environment is refused by phonegate: {e}");
        }
    }
}

/// Inline values that are literal settings (addresses, paths, numbers) rather than placeholders.
fn v_is_plain(v: &str) -> bool {
    !v.is_empty() && !v.contains(['$', '<']) && !v.contains("...")
}

#[test]
fn phonegate_config_is_the_variable_the_binary_reads() {
    let main = read("src/main.rs");
    assert!(
        main.contains("env = \"PHONEGATE_CONFIG\""),
        "src/main.rs no longer reads PHONEGATE_CONFIG, which {DOCKERFILE} and {DEPLOYMENT} set"
    );

    // The container starts with no arguments: PHONEGATE_CONFIG is how it finds the ConfigMap's
    // file. Run the real binary that way, with the pod's environment.
    let d = deployment();
    let mut env = pod_env(&d);
    let file = temp_file("configmap.toml", &configmap_toml());
    env.insert(
        "PHONEGATE_CONFIG".to_owned(),
        file.to_string_lossy().into_owned(),
    );
    let out = run_binary(&["check-config".to_owned()], &env);
    std::fs::remove_file(&file).ok();
    assert!(
        out.status.success(),
        "{CONFIGMAP} + {DEPLOYMENT}: `phonegate check-config` with PHONEGATE_CONFIG fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).expect("check-config prints JSON");
    let cfg = pod_config(&d);
    assert_eq!(
        shown["listen"],
        cfg.listen.to_string(),
        "{DEPLOYMENT}: the binary's view differs"
    );
    assert_eq!(
        shown["server"]["drain_timeout_ms"],
        cfg.server.drain_timeout.as_millis() as u64,
        "{CONFIGMAP}: the binary did not read the file named by PHONEGATE_CONFIG"
    );
}

#[test]
fn the_configmap_and_the_example_files_are_valid_configurations() {
    let empty = HashMap::new();
    let cm = load(CONFIGMAP, &configmap_toml(), &empty);
    assert!(
        matches!(cm.auth, phonegate::config::AuthConfig::Passthrough),
        "{CONFIGMAP}: should default to passthrough mode (managed needs a key file and clients)"
    );
    load(SYSTEMD_TOML, &read(SYSTEMD_TOML), &empty);
    // The image's baked file layer is the defaults file.
    load("config/default.toml", &read("config/default.toml"), &empty);
}

#[test]
fn deployment_mounts_the_configmap_where_phonegate_config_points() {
    let d = deployment();
    let env = pod_env(&d);
    let config_path = env
        .get("PHONEGATE_CONFIG")
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: no PHONEGATE_CONFIG env"));
    let cm = manifest(CONFIGMAP);
    let cm_name = text_at(CONFIGMAP, &cm, &["metadata", "name"]);
    let volume = items(DEPLOYMENT, pod_spec(&d), &["volumes"])
        .iter()
        .find(|v| v.pointer("/configMap/name").and_then(Value::as_str) == Some(cm_name))
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: no volume of ConfigMap {cm_name:?}"));
    let vname = text_at(DEPLOYMENT, volume, &["name"]);
    let file_name = match volume.pointer("/configMap/items") {
        Some(Value::Array(list)) => {
            let item = list
                .iter()
                .find(|i| i["key"] == "phonegate.toml")
                .unwrap_or_else(|| panic!("{DEPLOYMENT}: volume {vname} omits phonegate.toml"));
            text_at(DEPLOYMENT, item, &["path"]).to_owned()
        }
        _ => "phonegate.toml".to_owned(),
    };
    let mount = named(
        DEPLOYMENT,
        items(DEPLOYMENT, container(&d), &["volumeMounts"]),
        vname,
        "volumeMount",
    );
    let mount_path = text_at(DEPLOYMENT, mount, &["mountPath"]);
    assert_eq!(
        format!("{}/{file_name}", mount_path.trim_end_matches('/')),
        *config_path,
        "{DEPLOYMENT}: PHONEGATE_CONFIG does not point at the mounted {CONFIGMAP} file"
    );
}

#[test]
fn ports_agree_across_env_dockerfile_deployment_and_service() {
    // Dockerfile: the baked file plus its ENV.
    let instructions = dockerfile();
    let denv = docker_env(&instructions);
    let image_cfg = load(
        &format!("config/default.toml with the ENV of {DOCKERFILE}"),
        &read("config/default.toml"),
        &denv,
    );
    let exposed: BTreeSet<u16> = instructions
        .iter()
        .filter(|i| i.op == "EXPOSE")
        .flat_map(|i| words(&i.args))
        .map(|p| {
            p.split('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{DOCKERFILE}: EXPOSE {p:?}"))
        })
        .collect();
    for (what, addr) in [
        ("listen", image_cfg.listen),
        ("admin.listen", image_cfg.admin_listen),
    ] {
        assert!(
            addr.ip().is_unspecified(),
            "{DOCKERFILE}: {what} is {addr}; a container must listen on 0.0.0.0"
        );
        assert!(
            exposed.contains(&addr.port()),
            "{DOCKERFILE}: {what} port {} is not in EXPOSE {exposed:?}",
            addr.port()
        );
    }

    // Deployment: the pod's effective configuration.
    let d = deployment();
    let cfg = pod_config(&d);
    let check = |what: &str, addr: SocketAddr, port_name: &str| {
        assert!(
            addr.ip().is_unspecified(),
            "{DEPLOYMENT}: {what} is {addr}; the Service and the kubelet's probes cannot reach a \
             pod listening on loopback"
        );
        assert_eq!(
            container_port(&d, port_name),
            addr.port(),
            "{DEPLOYMENT}: containerPort {port_name:?} differs from {what} ({addr})"
        );
        assert!(
            exposed.contains(&addr.port()),
            "{DOCKERFILE}: EXPOSE {exposed:?} lacks the pod's {what} port {}",
            addr.port()
        );
    };
    check("listen", cfg.listen, "http");
    check("admin.listen", cfg.admin_listen, "admin");

    // Service: every target is a container port; http and admin reach the right listeners.
    let svc = manifest(SERVICE);
    let ports = items(SERVICE, &svc, &["spec", "ports"]);
    for (name, want) in [
        ("http", cfg.listen.port()),
        ("admin", cfg.admin_listen.port()),
    ] {
        let port = named(SERVICE, ports, name, "port");
        let target = text_at(SERVICE, port, &["targetPort"]);
        assert_eq!(
            resolve_port(&d, target),
            want,
            "{SERVICE}: port {name:?} targets {target:?}, not phonegate's {name} listener ({want})"
        );
    }

    // Probes and the Prometheus annotations go to the admin listener.
    let c = container(&d);
    for probe in ["readinessProbe", "livenessProbe"] {
        let port = text_at(DEPLOYMENT, c, &[probe, "httpGet", "port"]);
        assert_eq!(
            resolve_port(&d, port),
            cfg.admin_listen.port(),
            "{DEPLOYMENT}: {probe} port {port:?} is not the admin listener"
        );
    }
    let ann = string_map(
        DEPLOYMENT,
        &d,
        &["spec", "template", "metadata", "annotations"],
    );
    assert_eq!(
        ann.get("prometheus.io/port").map(String::as_str),
        Some(cfg.admin_listen.port().to_string().as_str()),
        "{DEPLOYMENT}: prometheus.io/port is not the admin port"
    );
}

#[tokio::test]
async fn probe_paths_are_answered_by_the_admin_listener() {
    let d = deployment();
    let c = container(&d);
    let liveness = text_at(DEPLOYMENT, c, &["livenessProbe", "httpGet", "path"]).to_owned();
    let readiness = text_at(DEPLOYMENT, c, &["readinessProbe", "httpGet", "path"]).to_owned();
    assert_eq!(liveness, "/healthz", "{DEPLOYMENT}: livenessProbe path");
    assert_eq!(readiness, "/readyz", "{DEPLOYMENT}: readinessProbe path");
    let metrics = string_map(
        DEPLOYMENT,
        &d,
        &["spec", "template", "metadata", "annotations"],
    )
    .get("prometheus.io/path")
    .cloned()
    .unwrap_or_else(|| panic!("{DEPLOYMENT}: no prometheus.io/path annotation"));

    let state = AppState::new(pod_config(&d)).expect("state from the pod's configuration");
    let get = |path: String| {
        let state = state.clone();
        async move {
            let req = Request::get(path.as_str())
                .body(Empty::<Bytes>::new())
                .expect("request");
            phonegate::admin::handle(state, req)
                .await
                .expect("infallible")
                .status()
        }
    };
    for path in [&liveness, &readiness, &metrics] {
        assert_eq!(
            get(path.clone()).await,
            StatusCode::OK,
            "{DEPLOYMENT}: {path} is not answered 200 by phonegate's admin listener"
        );
    }
    assert_eq!(
        get("/healthz-typo".to_owned()).await,
        StatusCode::NOT_FOUND,
        "an unknown admin path must be a 404, or a typo'd probe path would pass"
    );
    state.start_draining();
    assert_eq!(
        get(readiness.clone()).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "{DEPLOYMENT}: {readiness} must turn 503 while draining, so the pod leaves the endpoints"
    );
    assert_eq!(
        get(liveness.clone()).await,
        StatusCode::OK,
        "{DEPLOYMENT}: {liveness} must stay 200 while draining, or the kubelet kills the drain"
    );
}

#[tokio::test]
async fn cache_purges_on_the_pod_admin_port_need_the_optional_token() {
    let d = deployment();
    let purge = |state: std::sync::Arc<AppState>, token: Option<&str>| {
        let mut req = Request::post("/cache/purge");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from_static(b"{\"all\":true}")))
            .expect("request");
        async move {
            phonegate::admin::handle(state, req)
                .await
                .expect("infallible")
                .status()
        }
    };
    // As the template is: no admin-token, so a non-loopback admin listener refuses purges.
    let without = AppState::new(pod_config(&d)).expect("state");
    assert_eq!(
        purge(without, None).await,
        StatusCode::FORBIDDEN,
        "{DEPLOYMENT}: without admin-token in {SECRET}, POST /cache/purge should be refused as \
         deploy/README.md says"
    );
    // With the optional key present in the Secret.
    // Only admin-token: filling the optional redis-url too would give the state a Redis tier.
    let env = pod_env_with(&d, &|name| {
        (name == "PHONEGATE__ADMIN__TOKEN").then(|| PLACEHOLDER.to_owned())
    });
    assert_eq!(
        env.get("PHONEGATE__ADMIN__TOKEN").map(String::as_str),
        Some(PLACEHOLDER),
        "{DEPLOYMENT}: the optional admin-token no longer reaches PHONEGATE__ADMIN__TOKEN"
    );
    let with = AppState::new(load(DEPLOYMENT, &configmap_toml(), &env)).expect("state");
    assert_eq!(
        purge(with.clone(), None).await,
        StatusCode::UNAUTHORIZED,
        "{DEPLOYMENT}: a purge without the token must be refused"
    );
    assert_eq!(
        purge(with, Some(PLACEHOLDER)).await,
        StatusCode::OK,
        "{DEPLOYMENT}: a purge with PHONEGATE__ADMIN__TOKEN as bearer must be accepted"
    );
}

#[test]
fn termination_grace_covers_prestop_and_drain() {
    let d = deployment();
    let drain = pod_config(&d).server.drain_timeout;
    let grace = Duration::from_secs(num_at(
        DEPLOYMENT,
        pod_spec(&d),
        &["terminationGracePeriodSeconds"],
    ));
    let pre_stop = match container(&d).pointer("/lifecycle/preStop") {
        None => Duration::ZERO,
        Some(hook) => Duration::from_secs(num_at(DEPLOYMENT, hook, &["sleep", "seconds"])),
    };
    assert!(
        grace > pre_stop + drain,
        "{DEPLOYMENT}: terminationGracePeriodSeconds ({grace:?}) must exceed the preStop sleep \
         ({pre_stop:?}) plus server.drain_timeout_ms from {CONFIGMAP} ({drain:?}), or the kubelet \
         SIGKILLs requests mid-drain"
    );
}

#[test]
fn the_systemd_unit_uses_the_real_flag_exit_code_and_stop_timeout() {
    let directives = unit_directives();
    let env = env_file(SYSTEMD_ENV);
    let systemd_toml = root().join(SYSTEMD_TOML).to_string_lossy().into_owned();

    // Every command line of the unit that runs phonegate, run for real as `check-config`, with the
    // example file in place of /etc/phonegate/phonegate.toml.
    let mut config_path = None;
    for key in ["ExecStart", "ExecReload", "ExecStartPre", "ExecStop"] {
        for line in unit_values(&directives, key) {
            let w = words(line.trim_start_matches(['-', '@', '+', '!', ':']));
            if !w.first().is_some_and(|b| b.ends_with("/phonegate")) {
                continue;
            }
            let flag = w.iter().position(|a| a == "--config").unwrap_or_else(|| {
                panic!("{UNIT}: {key} runs phonegate without `--config PATH`: {line}")
            });
            let path = w.get(flag + 1).expect("--config has a value").clone();
            if key == "ExecStart" {
                config_path = Some(path.clone());
            }
            let mut args: Vec<String> = w[1..]
                .iter()
                .map(|a| {
                    if *a == path {
                        systemd_toml.clone()
                    } else {
                        a.clone()
                    }
                })
                .collect();
            if !args.iter().any(|a| a == "check-config") {
                args.push("check-config".to_owned());
            }
            let out = run_binary(&args, &env);
            assert!(
                out.status.success(),
                "{UNIT}: `{key}={line}` fails with {SYSTEMD_TOML} and {SYSTEMD_ENV}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let config_path = config_path.unwrap_or_else(|| panic!("{UNIT}: no ExecStart runs phonegate"));
    assert_eq!(
        config_path, "/etc/phonegate/phonegate.toml",
        "{UNIT}: ExecStart reads another file than the one deploy/README.md installs"
    );

    // Bad configuration: the binary's exit code must be one systemd will not restart on.
    let prevent: Vec<String> = unit_values(&directives, "RestartPreventExitStatus")
        .iter()
        .flat_map(|v| words(v))
        .collect();
    let mut bad_env = env.clone();
    bad_env.insert("PHONEGATE__LISTEN".to_owned(), "not-an-address".to_owned());
    let out = run_binary(
        &[
            "--config".to_owned(),
            systemd_toml.clone(),
            "check-config".to_owned(),
        ],
        &bad_env,
    );
    let code = out.status.code().expect("exit code").to_string();
    assert_eq!(
        code, "64",
        "phonegate's bad-configuration exit code changed"
    );
    assert!(
        prevent.contains(&code),
        "{UNIT}: RestartPreventExitStatus {prevent:?} lacks {code}, phonegate's exit code for bad \
         configuration: a typo would restart-loop"
    );
    assert_eq!(unit_value(&directives, "Restart"), "on-failure", "{UNIT}");

    // Stop: longer than the drain.
    let drain = load(SYSTEMD_TOML, &read(SYSTEMD_TOML), &env)
        .server
        .drain_timeout;
    let stop = systemd_span(UNIT, &unit_value(&directives, "TimeoutStopSec"));
    assert!(
        stop > drain,
        "{UNIT}: TimeoutStopSec ({stop:?}) must exceed server.drain_timeout_ms from \
         {SYSTEMD_TOML} ({drain:?}), or systemd SIGKILLs requests mid-drain"
    );
    let kill = unit_values(&directives, "KillSignal");
    assert!(
        kill.is_empty() || kill == ["SIGTERM"],
        "{UNIT}: KillSignal {kill:?}; phonegate drains on SIGTERM"
    );
    for (key, want) in [
        ("Type", "exec"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("EnvironmentFile", "-/etc/phonegate/phonegate.env"),
    ] {
        assert_eq!(unit_value(&directives, key), want, "{UNIT}: {key}");
    }
}

#[test]
fn systemd_credential_and_api_key_file_agree() {
    let unit = read(UNIT);
    // LoadCredential=NAME:SOURCE, active or commented out (managed mode only).
    let cred = unit
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .find_map(|l| l.strip_prefix("LoadCredential="))
        .unwrap_or_else(|| panic!("{UNIT}: no LoadCredential= line, set or commented"));
    let (name, _source) = cred
        .split_once(':')
        .unwrap_or_else(|| panic!("{UNIT}: LoadCredential={cred} is not NAME:PATH"));
    let unit_name = Path::new(UNIT)
        .file_name()
        .expect("unit file name")
        .to_string_lossy();
    let want = format!("/run/credentials/{unit_name}/{name}");
    let path = toml_path_mention(SYSTEMD_TOML, &read(SYSTEMD_TOML), "api_key_file");
    assert_eq!(
        path, want,
        "{SYSTEMD_TOML}: upstream.api_key_file is not where systemd puts the credential {name}"
    );
}

#[test]
fn the_dockerfile_builds_locked_runs_non_root_and_points_phonegate_config_at_its_copy() {
    let instructions = dockerfile();
    let last = instructions.last().expect("instructions").stage;
    assert!(last >= 2, "{DOCKERFILE}: expected a multi-stage build");

    let builds: Vec<&Instruction> = instructions
        .iter()
        .filter(|i| i.op == "RUN" && i.args.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "{DOCKERFILE}: no `cargo build` step");
    for b in &builds {
        assert!(
            b.args.contains("--locked"),
            "{DOCKERFILE}: cargo build without --locked"
        );
        assert!(
            b.args.contains("--release"),
            "{DOCKERFILE}: cargo build without --release"
        );
        assert!(
            b.stage < last,
            "{DOCKERFILE}: the build runs in the runtime stage"
        );
    }

    let final_stage: Vec<&Instruction> = instructions.iter().filter(|i| i.stage == last).collect();
    let one = |op: &str| -> String {
        let found: Vec<&&Instruction> = final_stage.iter().filter(|i| i.op == op).collect();
        assert_eq!(
            found.len(),
            1,
            "{DOCKERFILE}: the runtime stage needs one {op}"
        );
        found[0].args.clone()
    };
    let user = one("USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "{DOCKERFILE}: USER {user:?} must be a numeric non-root uid (runAsNonRoot checks it)"
    );
    let stop = final_stage
        .iter()
        .find(|i| i.op == "STOPSIGNAL")
        .map(|i| i.args.clone());
    assert!(
        stop.as_deref().is_none_or(|s| s == "SIGTERM" || s == "15"),
        "{DOCKERFILE}: STOPSIGNAL {stop:?}; phonegate drains on SIGTERM"
    );

    // PHONEGATE_CONFIG names the file the runtime stage copies config/default.toml to.
    let env = docker_env(&instructions);
    let config_path = env
        .get("PHONEGATE_CONFIG")
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no ENV PHONEGATE_CONFIG"));
    let copies = docker_copies(&instructions);
    let config_copy = copies
        .iter()
        .filter(|(stage, from, _, _)| *stage == last && from.is_none())
        .find_map(|(_, _, sources, dest)| {
            sources
                .iter()
                .find(|s| copied_to(s, dest) == *config_path)
                .cloned()
        })
        .unwrap_or_else(|| {
            panic!("{DOCKERFILE}: PHONEGATE_CONFIG={config_path} is not where any COPY puts a file")
        });
    assert!(
        root().join(&config_copy).is_file(),
        "{DOCKERFILE}: copies {config_copy}, which does not exist"
    );

    // ENTRYPOINT runs the binary copied from the build stage.
    let entrypoint = one("ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entrypoint).unwrap_or_else(|_| {
        panic!("{DOCKERFILE}: ENTRYPOINT must be exec form (JSON), so SIGTERM reaches phonegate")
    });
    let binary_copy = copies
        .iter()
        .filter(|(stage, from, _, _)| *stage == last && from.is_some())
        .find(|(_, _, sources, dest)| sources.iter().any(|s| copied_to(s, dest) == argv[0]));
    assert!(
        binary_copy.is_some(),
        "{DOCKERFILE}: ENTRYPOINT {} is not the binary copied from the build stage",
        argv[0]
    );
}

#[test]
fn the_dockerfile_copies_everything_the_release_build_reads() {
    let instructions = dockerfile();
    let last = instructions.last().expect("instructions").stage;
    let copied: Vec<String> = docker_copies(&instructions)
        .into_iter()
        .filter(|(stage, from, _, _)| *stage < last && from.is_none())
        .flat_map(|(_, _, sources, _)| sources)
        .map(|s| s.trim_start_matches("./").to_owned())
        .collect();
    for source in &copied {
        assert!(
            root().join(source).exists(),
            "{DOCKERFILE}: COPY {source}, which does not exist in the repository"
        );
    }
    let is_copied = |rel: &str| {
        copied.iter().any(|c| {
            let c = c.trim_end_matches('/');
            rel == c || rel.starts_with(&format!("{c}/"))
        })
    };
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];

    // Targets declared in Cargo.toml must exist whenever cargo reads it, even for a build of the
    // binary alone; so must a build script.
    needed.extend(cargo_declared_files(&read("Cargo.toml")));
    if root().join("build.rs").exists() {
        needed.push("build.rs".to_owned());
    }

    // Files pulled into non-test code with include_str!/include_bytes!: a test module is assumed
    // to start at the file's first #[cfg(test)].
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        let live = &text[..text.find("#[cfg(test)]").unwrap_or(text.len())];
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            for (pos, _) in live.match_indices(mac) {
                let rest = &live[pos + mac.len()..];
                let arg = &rest[..rest.find('"').expect("closing quote")];
                let full = file.parent().expect("dir").join(arg);
                let mut parts = Vec::new();
                for c in full.strip_prefix(root()).expect("in repo").components() {
                    match c {
                        std::path::Component::ParentDir => {
                            parts.pop();
                        }
                        std::path::Component::Normal(s) => parts.push(s.to_string_lossy()),
                        _ => {}
                    }
                }
                needed.push(parts.join("/"));
            }
        }
    }
    for rel in needed {
        assert!(
            is_copied(&rel),
            "{DOCKERFILE}: the release build reads {rel}, but the build stage does not COPY it"
        );
    }
}

/// Files cargo needs to find when it reads `manifest`, whatever it builds: each `[[bench]]`,
/// `[[test]]` and `[[example]]` table's `path` (or its conventional file), `src` for the library
/// and binaries, and a `build` script.
fn cargo_declared_files(manifest: &str) -> Vec<String> {
    let mut files = Vec::new();
    let mut section = String::new();
    let mut target: Option<(String, Option<String>)> = None;
    for line in manifest.lines().map(str::trim).chain(["[end]"]) {
        if line.starts_with('[') {
            if let Some((conventional, path)) = target.take() {
                let file = path.unwrap_or(conventional);
                assert!(
                    !file.is_empty(),
                    "Cargo.toml: a [[{section}]] table without name or path"
                );
                files.push(file);
            }
            section = line.trim_matches(['[', ']']).trim().to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim().trim_matches('"').to_owned());
        let dir = match section.as_str() {
            "bench" => "benches",
            "test" => "tests",
            "example" => "examples",
            "bin" | "lib" => "src",
            "package" if key == "build" && value != "false" && value != "true" => {
                files.push(value);
                continue;
            }
            _ => continue,
        };
        let entry = target.get_or_insert_with(|| (dir.to_owned(), None));
        match key {
            "name" if dir != "src" => entry.0 = format!("{dir}/{value}.rs"),
            "path" => entry.1 = Some(value),
            _ => {}
        }
    }
    files
}

#[test]
fn cargo_declared_files_reads_target_tables() {
    let files = cargo_declared_files(
        "[package]\nname = \"x\"\nbuild = \"gen.rs\"\n\n[lib]\nname = \"x\"\n\n\
         [[bin]]\nname = \"x\"\npath = \"src/main.rs\"\n\n[[bench]]\nname = \"hit_path\"\n\
         harness = false\n\n[[example]]\nname = \"demo\"\npath = \"demos/demo.rs\"\n\n\
         [dependencies]\nfoo = { path = \"../foo\" }\n",
    );
    assert_eq!(
        files,
        [
            "gen.rs",
            "src",
            "src/main.rs",
            "benches/hit_path.rs",
            "demos/demo.rs"
        ]
    );
}

#[test]
fn the_kustomization_lists_every_manifest_but_the_secret_template() {
    let k = manifest(KUSTOMIZATION);
    let listed: BTreeSet<String> = items(KUSTOMIZATION, &k, &["resources"])
        .iter()
        .map(|v| v.as_str().expect("resource path").to_owned())
        .collect();
    let dir = root().join("deploy/kubernetes");
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("read deploy/kubernetes") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    for name in &listed {
        assert!(
            present.contains(name),
            "{KUSTOMIZATION}: lists {name}, which does not exist"
        );
    }
    for name in &present {
        let example = name.ends_with(".example.yaml");
        assert_eq!(
            listed.contains(name),
            !example,
            "{KUSTOMIZATION}: {name} {}",
            if example {
                "holds placeholders and must not be applied with -k"
            } else {
                "is not listed in resources"
            }
        );
        let doc = manifest(&format!("deploy/kubernetes/{name}"));
        for key in ["apiVersion", "kind"] {
            text_at(name, &doc, &[key]);
        }
        text_at(name, &doc, &["metadata", "name"]);
    }
}

#[test]
fn selectors_and_references_agree() {
    let d = deployment();
    let name = text_at(DEPLOYMENT, &d, &["metadata", "name"]);
    let pod_labels = string_map(DEPLOYMENT, &d, &["spec", "template", "metadata", "labels"]);
    let selects_pods = |file: &str, selector: BTreeMap<String, String>| {
        assert!(!selector.is_empty(), "{file}: empty selector");
        for (k, v) in &selector {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "{file}: selector {k}={v} does not match the pod template labels {pod_labels:?}"
            );
        }
    };
    selects_pods(
        DEPLOYMENT,
        string_map(DEPLOYMENT, &d, &["spec", "selector", "matchLabels"]),
    );
    let svc = manifest(SERVICE);
    assert_eq!(
        text_at(SERVICE, &svc, &["spec", "type"]),
        "ClusterIP",
        "{SERVICE}: type"
    );
    selects_pods(SERVICE, string_map(SERVICE, &svc, &["spec", "selector"]));
    let pdb = manifest(PDB);
    selects_pods(
        PDB,
        string_map(PDB, &pdb, &["spec", "selector", "matchLabels"]),
    );

    let hpa = manifest(HPA);
    assert_eq!(
        text_at(HPA, &hpa, &["spec", "scaleTargetRef", "kind"]),
        "Deployment",
        "{HPA}: scaleTargetRef.kind"
    );
    assert_eq!(
        text_at(HPA, &hpa, &["spec", "scaleTargetRef", "name"]),
        name,
        "{HPA}: scaleTargetRef.name is not the Deployment"
    );
    let (min, max) = (
        num_at(HPA, &hpa, &["spec", "minReplicas"]),
        num_at(HPA, &hpa, &["spec", "maxReplicas"]),
    );
    let replicas = num_at(DEPLOYMENT, &d, &["spec", "replicas"]);
    assert!(
        min <= replicas && replicas <= max,
        "{DEPLOYMENT}: replicas {replicas} outside {HPA}'s {min}..={max}"
    );
    let min_available = num_at(PDB, &pdb, &["spec", "minAvailable"]);
    assert!(
        min_available < min,
        "{PDB}: minAvailable {min_available} would block every eviction at {min} replicas"
    );
    let cpu_metric = items(HPA, &hpa, &["spec", "metrics"])
        .iter()
        .any(|m| m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu"));
    if cpu_metric {
        text_at(DEPLOYMENT, container(&d), &["resources", "requests", "cpu"]);
    }
}

#[test]
fn the_secret_template_has_every_key_the_deployment_reads() {
    let d = deployment();
    let data = secret_data();
    let secret = manifest(SECRET);
    let secret_name = text_at(SECRET, &secret, &["metadata", "name"]);
    // Environment references are resolved (and checked) by pod_env.
    let env = pod_env(&d);
    let key_secret = env
        .get("PHONEGATE__CACHE__KEY_SECRET")
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: PHONEGATE__CACHE__KEY_SECRET is not set"));
    assert!(
        key_secret.len() >= 16,
        "{SECRET}: cache-key-secret is shorter than the 16 bytes phonegate requires"
    );

    // The upstream key file: mounted from the Secret, optional, where api_key_file points.
    let volume = items(DEPLOYMENT, pod_spec(&d), &["volumes"])
        .iter()
        .find(|v| v.get("secret").is_some())
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: no Secret volume for the upstream key"));
    let vname = text_at(DEPLOYMENT, volume, &["name"]);
    assert_eq!(
        text_at(DEPLOYMENT, volume, &["secret", "secretName"]),
        secret_name,
        "{DEPLOYMENT}: volume {vname} mounts another Secret than {SECRET}"
    );
    assert_eq!(
        text_at(DEPLOYMENT, volume, &["secret", "optional"]),
        "true",
        "{DEPLOYMENT}: volume {vname} must be optional: passthrough mode has no upstream key"
    );
    let item = &items(DEPLOYMENT, volume, &["secret", "items"])[0];
    let key = text_at(DEPLOYMENT, item, &["key"]);
    assert!(
        data.contains_key(key),
        "{DEPLOYMENT}: volume {vname} reads key {key:?}, absent from {SECRET}"
    );
    let mount = named(
        DEPLOYMENT,
        items(DEPLOYMENT, container(&d), &["volumeMounts"]),
        vname,
        "volumeMount",
    );
    let file = format!(
        "{}/{}",
        text_at(DEPLOYMENT, mount, &["mountPath"]).trim_end_matches('/'),
        text_at(DEPLOYMENT, item, &["path"])
    );
    assert_eq!(
        toml_path_mention(CONFIGMAP, &configmap_toml(), "api_key_file"),
        file,
        "{CONFIGMAP}: upstream.api_key_file is not where {DEPLOYMENT} mounts the key"
    );
}

#[test]
fn the_pod_runs_as_the_image_user_with_a_locked_down_context() {
    let d = deployment();
    let c = container(&d);
    let user = dockerfile()
        .into_iter()
        .rev()
        .find(|i| i.op == "USER")
        .map(|i| i.args)
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no USER"));
    let uid = user.split(':').next().unwrap_or_default().to_owned();
    for (path, want) in [
        (&["securityContext", "runAsNonRoot"][..], "true"),
        (&["securityContext", "runAsUser"][..], uid.as_str()),
        (&["securityContext", "readOnlyRootFilesystem"][..], "true"),
        (
            &["securityContext", "allowPrivilegeEscalation"][..],
            "false",
        ),
        (
            &["securityContext", "seccompProfile", "type"][..],
            "RuntimeDefault",
        ),
    ] {
        assert_eq!(
            text_at(DEPLOYMENT, c, path),
            want,
            "{DEPLOYMENT}: container {} (image USER is {user})",
            path.join(".")
        );
    }
    let drop = items(DEPLOYMENT, c, &["securityContext", "capabilities", "drop"]);
    assert!(
        drop.iter().any(|v| v == "ALL"),
        "{DEPLOYMENT}: capabilities.drop lacks ALL"
    );
}

#[test]
fn the_memory_limit_covers_the_cache_and_upstream_bodies_in_flight() {
    let d = deployment();
    let cfg = pod_config(&d);
    let c = container(&d);
    let limit = quantity(
        DEPLOYMENT,
        text_at(DEPLOYMENT, c, &["resources", "limits", "memory"]),
    );
    let request = quantity(
        DEPLOYMENT,
        text_at(DEPLOYMENT, c, &["resources", "requests", "memory"]),
    );
    let worst =
        cfg.cache.max_bytes + cfg.shield.max_in_flight as u64 * cfg.upstream.max_body_bytes as u64;
    assert!(
        limit > worst,
        "{DEPLOYMENT}: memory limit {limit} B does not exceed cache.max_bytes plus \
         upstream.max_in_flight x upstream.max_body_bytes from {CONFIGMAP} ({worst} B): the pod \
         would be OOM-killed under load"
    );
    assert!(
        request <= limit,
        "{DEPLOYMENT}: memory request above the limit"
    );
}

#[test]
fn the_deployment_runs_this_version_of_the_image() {
    let d = deployment();
    let image = text_at(DEPLOYMENT, container(&d), &["image"]);
    let (repo, tag) = image
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: image {image:?} has no tag"));
    assert!(repo.ends_with("phonegate"), "{DEPLOYMENT}: image {image:?}");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "{DEPLOYMENT}: image tag differs from the crate version in Cargo.toml"
    );
}

// ---- several replicas with Redis (kubernetes-replicas-with-redis) and Redis in the base ----

#[test]
fn the_kustomize_reader_merges_patches_by_key() {
    let target = [
        "kind: Deployment",
        "spec:",
        "  replicas: 2",
        "  template:",
        "    spec:",
        "      containers:",
        "        - name: a",
        "          image: x",
        "          env:",
        "            - name: K",
        "              valueFrom:",
        "                secretKeyRef:",
        "                  key: k",
        "                  optional: true",
        "            - name: L",
        "              value: l",
    ];
    let patch = [
        "spec:",
        "  replicas: 3",
        "  template:",
        "    spec:",
        "      containers:",
        "        - name: a",
        "          env:",
        "            - name: K",
        "              valueFrom:",
        "                secretKeyRef:",
        "                  optional: false",
    ];
    let mut target = yaml::parse("inline", &target.join("\n")).remove(0);
    let patch = yaml::parse("inline", &patch.join("\n")).remove(0);
    strategic_merge("inline", "", &mut target, &patch);
    assert_eq!(target["spec"]["replicas"], "3");
    let c = &target["spec"]["template"]["spec"]["containers"];
    assert_eq!(c.as_array().map(Vec::len), Some(1));
    assert_eq!(c[0]["image"], "x");
    let env = &c[0]["env"];
    assert_eq!(env.as_array().map(Vec::len), Some(2));
    assert_eq!(env[0]["valueFrom"]["secretKeyRef"]["key"], "k");
    assert_eq!(env[0]["valueFrom"]["secretKeyRef"]["optional"], "false");
    assert_eq!(env[1]["value"], "l");
    assert_eq!(
        normalize("deploy/kubernetes-replicas-with-redis/../kubernetes"),
        BASE_DIR
    );
}

#[test]
fn the_overlay_builds_on_the_base_and_lists_every_file_but_its_secret_template() {
    let kfile = format!("{OVERLAY_DIR}/kustomization.yaml");
    let k = manifest(&kfile);
    let mut listed = BTreeSet::new();
    for r in items(&kfile, &k, &["resources"]) {
        let path = normalize(&format!("{OVERLAY_DIR}/{}", r.as_str().expect("a path")));
        assert!(
            root().join(&path).exists(),
            "{kfile}: resource {path} does not exist"
        );
        listed.insert(path);
    }
    assert!(
        listed.contains(BASE_DIR),
        "{kfile}: does not build on the base ({BASE_DIR})"
    );
    if k.get("patches").is_some() {
        for p in items(&kfile, &k, &["patches"]) {
            listed.insert(normalize(&format!(
                "{OVERLAY_DIR}/{}",
                text_at(&kfile, p, &["path"])
            )));
        }
    }
    let mut present = 0;
    for entry in std::fs::read_dir(root().join(OVERLAY_DIR)).expect("read the overlay") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if !name.ends_with(".yaml") || name == "kustomization.yaml" {
            continue;
        }
        present += 1;
        let path = format!("{OVERLAY_DIR}/{name}");
        let example = name.ends_with(".example.yaml");
        assert_eq!(
            listed.contains(&path),
            !example,
            "{kfile}: {name} {}",
            if example {
                "holds placeholders and must not be applied with -k"
            } else {
                "is neither a resource nor a patch"
            }
        );
        let doc = manifest(&path);
        for key in ["apiVersion", "kind"] {
            text_at(&path, &doc, &[key]);
        }
        text_at(&path, &doc, &["metadata", "name"]);
    }
    assert!(present >= 4, "{OVERLAY_DIR}: expected its manifests");

    // Everything of the base is still there, plus the overlay's own objects.
    let base = kustomize(BASE_DIR);
    let built = kustomize(OVERLAY_DIR);
    for (file, o) in &base {
        object(
            &built,
            text_at(file, o, &["kind"]),
            text_at(file, o, &["metadata", "name"]),
        );
    }
    assert!(
        built.len() > base.len(),
        "{kfile}: adds nothing to the base"
    );
}

#[test]
fn the_overlay_runs_at_least_three_replicas_within_its_hpa_range() {
    let built = kustomize(OVERLAY_DIR);
    let (dfile, d) = overlay_phonegate();
    let name = text_at(&dfile, &d, &["metadata", "name"]);
    let replicas = num_at(&dfile, &d, &["spec", "replicas"]);
    assert!(
        replicas >= 3,
        "{dfile}: {replicas} replicas; the overlay is the several-replicas example"
    );
    let hpas: Vec<_> = objects_of(&built, "HorizontalPodAutoscaler")
        .into_iter()
        .filter(|(f, h)| text_at(f, h, &["spec", "scaleTargetRef", "name"]) == name)
        .collect();
    assert_eq!(
        hpas.len(),
        1,
        "{OVERLAY_DIR}: one HPA for Deployment {name}"
    );
    let (hfile, hpa) = hpas[0];
    let (min, max) = (
        num_at(hfile, hpa, &["spec", "minReplicas"]),
        num_at(hfile, hpa, &["spec", "maxReplicas"]),
    );
    assert!(
        min >= 3,
        "{hfile}: minReplicas {min}: the HPA would scale the overlay back below 3 replicas"
    );
    assert!(
        min <= replicas && replicas <= max,
        "{dfile}: replicas {replicas} outside {hfile}'s {min}..={max}"
    );
    for (pfile, pdb) in objects_of(&built, "PodDisruptionBudget") {
        let min_available = num_at(pfile, pdb, &["spec", "minAvailable"]);
        assert!(
            min_available < min,
            "{pfile}: minAvailable {min_available} would block every eviction at {min} replicas"
        );
    }
}

#[test]
fn the_overlay_pods_start_with_the_shared_tier_and_the_shared_key() {
    let d = overlay_phonegate();
    let c = overlay_container(&d);
    let var = named(
        &d.0,
        items(&d.0, c, &["env"]),
        "PHONEGATE__REDIS__URL",
        "env",
    );
    let r = at(&d.0, var, &["valueFrom", "secretKeyRef"]);
    assert_ne!(
        r.get("optional").and_then(Value::as_str),
        Some("true"),
        "{}: redis-url must be required in the overlay, or a Secret without it quietly runs the \
         replicas without the shared tier",
        d.0
    );
    let data = secret_data_of(OVERLAY_SECRET);
    let env = overlay_env(&d, &|_| None);
    let cfg = load(
        &format!("{CONFIGMAP} with the env of {} and {OVERLAY_SECRET}", d.0),
        &configmap_toml(),
        &env,
    );
    let redis = cfg
        .redis
        .as_ref()
        .unwrap_or_else(|| panic!("{}: the shared tier is off", d.0));
    let urls: Vec<&str> = redis.urls.iter().map(|u| u.expose()).collect();
    assert_eq!(
        urls,
        [data["redis-url"].as_str()],
        "{OVERLAY_SECRET}: redis-url does not reach redis.url"
    );
    assert!(!redis.cluster, "{CONFIGMAP}: redis.cluster with one Redis");
    assert_eq!(
        cfg.cache
            .key_secret
            .as_ref()
            .map(phonegate::config::Secret::expose),
        Some(data["cache-key-secret"].as_str()),
        "{OVERLAY_SECRET}: cache-key-secret does not reach cache.key_secret"
    );

    // The real binary, started as the container starts it.
    let file = temp_file("configmap.toml", &configmap_toml());
    let mut run_env = env.clone();
    run_env.insert(
        "PHONEGATE_CONFIG".to_owned(),
        file.to_string_lossy().into_owned(),
    );
    let out = run_binary(&["check-config".to_owned()], &run_env);
    let password = &data["redis-password"];
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{}: `phonegate check-config` fails: {}",
        d.0,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !printed.contains(password.as_str()),
        "check-config printed the Redis password"
    );
    let shown: Value = serde_json::from_slice(&out.stdout).expect("check-config prints JSON");
    assert!(
        shown["redis"]["url"].as_str().is_some(),
        "{}: check-config shows no redis.url: {shown}",
        d.0
    );

    // Without the shared key the replicas would not agree: start-up refuses, naming it.
    run_env.remove("PHONEGATE__CACHE__KEY_SECRET");
    let out = run_binary(&["check-config".to_owned()], &run_env);
    std::fs::remove_file(&file).ok();
    assert_eq!(
        out.status.code(),
        Some(64),
        "redis.url without cache.key_secret must be refused with exit code 64"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cache.key_secret"),
        "the refusal must name cache.key_secret: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_overlay_redis_url_reaches_its_redis_with_the_password_it_requires() {
    let built = kustomize(OVERLAY_DIR);
    let data = secret_data_of(OVERLAY_SECRET);
    let url = data
        .get("redis-url")
        .unwrap_or_else(|| panic!("{OVERLAY_SECRET}: no redis-url"));
    // The Redis client's own reading of the URL, as phonegate's.
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
        .unwrap_or_else(|e| panic!("{OVERLAY_SECRET}: redis-url is not a Redis URL: {e}"));
    let (host, port) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        other => panic!("{OVERLAY_SECRET}: redis-url is not TCP: {other:?}"),
    };

    let (rfile, rdep, rc) = overlay_redis(&built);
    let redis_labels = string_map(&rfile, &rdep, &["spec", "template", "metadata", "labels"]);
    let redis_env = container_env(&rfile, &rc, OVERLAY_SECRET, &|_| None);
    let args = expanded_args(&rfile, &rc, &redis_env);
    let listens: u16 = flag_value(&args, "--port").map_or(6379, |p| {
        p.parse()
            .unwrap_or_else(|_| panic!("{rfile}: --port {p:?}"))
    });
    let container_port = |reference: &str| -> u16 {
        reference.parse().unwrap_or_else(|_| {
            let p = named(&rfile, items(&rfile, &rc, &["ports"]), reference, "port");
            num_at(&rfile, p, &["containerPort"]) as u16
        })
    };
    let redis_ports = items(&rfile, &rc, &["ports"]);
    assert!(
        redis_ports
            .iter()
            .any(|p| num_at(&rfile, p, &["containerPort"]) == u64::from(listens)),
        "{rfile}: no containerPort is the port redis-server listens on ({listens})"
    );

    // The URL's host is the Redis Service (name, or name.namespace[.svc...]), its port one of
    // the Service's ports, and that port leads to the port redis-server listens on.
    let service = host.split('.').next().unwrap_or_default();
    let (sfile, svc) = object(&built, "Service", service);
    assert!(
        selects(
            &string_map(sfile, svc, &["spec", "selector"]),
            &redis_labels
        ),
        "{sfile}: Service {service} (the host of redis-url) does not select the Redis pods"
    );
    let sport = items(sfile, svc, &["spec", "ports"])
        .iter()
        .find(|p| num_at(sfile, p, &["port"]) == u64::from(port))
        .unwrap_or_else(|| {
            panic!("{sfile}: Service {service} has no port {port}, the port of redis-url")
        });
    let target = match sport.get("targetPort") {
        Some(t) => container_port(t.as_str().unwrap_or_default()),
        None => port,
    };
    assert_eq!(
        target, listens,
        "{sfile}: port {port} targets {target}, but redis-server listens on {listens}"
    );

    // The password in the URL is the one redis-server requires, and both come from redis-password.
    let required = flag_value(&args, "--requirepass")
        .unwrap_or_else(|| panic!("{rfile}: redis-server without --requirepass"));
    assert_eq!(
        Some(required),
        data.get("redis-password").map(String::as_str),
        "{rfile}: --requirepass is not the Secret's redis-password"
    );
    assert_eq!(
        info.redis_settings().password(),
        Some(required),
        "{OVERLAY_SECRET}: the password in redis-url differs from redis-password"
    );

    // Selectors keep the two kinds of pods apart: the phonegate Service, PDB and HPA target never
    // count Redis pods, and the NetworkPolicy lets exactly phonegate pods reach Redis.
    let (pfile, pd) = object(&built, "Deployment", "phonegate");
    let pg_labels = string_map(pfile, pd, &["spec", "template", "metadata", "labels"]);
    for (file, o) in &built {
        let path: &[&str] = match text_at(file, o, &["kind"]) {
            "Service" => &["spec", "selector"],
            "Deployment" | "PodDisruptionBudget" => &["spec", "selector", "matchLabels"],
            "NetworkPolicy" => &["spec", "podSelector", "matchLabels"],
            _ => continue,
        };
        let selector = string_map(file, o, path);
        let (pg, rd) = (
            selects(&selector, &pg_labels),
            selects(&selector, &redis_labels),
        );
        assert!(
            pg != rd,
            "{file}: selects {} of phonegate's and Redis's pods",
            if pg { "both" } else { "neither" }
        );
    }
    let mut admitted = false;
    for (file, np) in objects_of(&built, "NetworkPolicy") {
        if !selects(
            &string_map(file, np, &["spec", "podSelector", "matchLabels"]),
            &redis_labels,
        ) {
            continue;
        }
        for rule in items(file, np, &["spec", "ingress"]) {
            let from_phonegate = items(file, rule, &["from"]).iter().any(|f| {
                f.get("podSelector").is_some()
                    && selects(
                        &string_map(file, f, &["podSelector", "matchLabels"]),
                        &pg_labels,
                    )
            });
            let to_redis = items(file, rule, &["ports"])
                .iter()
                .any(|p| container_port(text_at(file, p, &["port"])) == listens);
            admitted |= from_phonegate && to_redis;
        }
    }
    assert!(
        admitted,
        "{OVERLAY_DIR}: no NetworkPolicy ingress rule lets phonegate pods reach Redis on {listens}"
    );
}

#[test]
fn every_secret_key_the_manifests_read_is_in_their_secret_template() {
    let mut documented = BTreeMap::new();
    for (dir, secret_file) in [(BASE_DIR, SECRET), (OVERLAY_DIR, OVERLAY_SECRET)] {
        let secret = manifest(secret_file);
        let secret_name = text_at(secret_file, &secret, &["metadata", "name"]).to_owned();
        let data = secret_data_of(secret_file);
        let commented = commented_secret_keys(secret_file);
        let mut refs = Vec::new();
        for (file, d) in objects_of(&kustomize(dir), "Deployment") {
            let spec = at(file, d, &["spec", "template", "spec"]);
            for c in items(file, spec, &["containers"]) {
                let vars = match c.get("env") {
                    Some(_) => items(file, c, &["env"]),
                    None => &[],
                };
                for var in vars {
                    if let Some(r) = var.pointer("/valueFrom/secretKeyRef") {
                        refs.push((
                            file.clone(),
                            text_at(file, r, &["name"]).to_owned(),
                            text_at(file, r, &["key"]).to_owned(),
                            r.get("optional").and_then(Value::as_str) == Some("true"),
                        ));
                    }
                }
            }
            let volumes = match spec.get("volumes") {
                Some(_) => items(file, spec, &["volumes"]),
                None => &[],
            };
            for v in volumes.iter().filter_map(|v| v.get("secret")) {
                let optional = v.get("optional").and_then(Value::as_str) == Some("true");
                for item in items(file, v, &["items"]) {
                    refs.push((
                        file.clone(),
                        text_at(file, v, &["secretName"]).to_owned(),
                        text_at(file, item, &["key"]).to_owned(),
                        optional,
                    ));
                }
            }
        }
        assert!(!refs.is_empty(), "{dir}: reads no Secret");
        for (file, name, key, optional) in refs {
            assert_eq!(
                name, secret_name,
                "{file}: reads Secret {name:?}, but {secret_file} is {secret_name:?}"
            );
            if optional {
                assert!(
                    data.contains_key(&key) || commented.contains(&key),
                    "{file}: reads the optional key {key:?}, which {secret_file} neither sets nor \
                     shows commented out"
                );
            } else {
                assert!(
                    data.contains_key(&key),
                    "{file}: requires key {key:?}, absent from {secret_file}"
                );
            }
        }
        let keys: BTreeSet<String> = data.keys().cloned().chain(commented).collect();
        documented.insert(secret_file, keys);
    }
    // The overlay's template is the base's plus the Redis keys.
    let missing: Vec<&String> = documented[SECRET]
        .difference(&documented[OVERLAY_SECRET])
        .collect();
    assert!(
        missing.is_empty(),
        "{OVERLAY_SECRET}: lacks the base template's keys {missing:?} (set or commented)"
    );
}

#[test]
fn the_overlay_redis_is_one_bounded_ephemeral_locked_down_pod() {
    let built = kustomize(OVERLAY_DIR);
    let (file, d, c) = overlay_redis(&built);
    assert_eq!(
        num_at(&file, &d, &["spec", "replicas"]),
        1,
        "{file}: several Redis pods behind one Service are separate caches, with separate locks \
         and generations"
    );
    let env = container_env(&file, &c, OVERLAY_SECRET, &|_| None);
    let args = expanded_args(&file, &c, &env);
    let maxmemory = redis_bytes(
        &file,
        flag_value(&args, "--maxmemory")
            .unwrap_or_else(|| panic!("{file}: no --maxmemory: Redis would grow until OOM-killed")),
    );
    assert!(maxmemory > 0, "{file}: --maxmemory 0 is no bound");
    let policy = flag_value(&args, "--maxmemory-policy").unwrap_or("noeviction");
    assert!(
        ["volatile-lru", "volatile-lfu"].contains(&policy),
        "{file}: --maxmemory-policy {policy}: full, Redis must evict entries (an evicted entry is \
         only a miss) but never phonegate's purge counters, which have no expiry"
    );
    assert_eq!(
        flag_value(&args, "--save"),
        Some(""),
        "{file}: no persistence needed; --save \"\" turns RDB snapshots off"
    );
    assert_eq!(flag_value(&args, "--appendonly"), Some("no"), "{file}");
    let limit = quantity(
        &file,
        text_at(&file, &c, &["resources", "limits", "memory"]),
    );
    assert!(
        limit >= maxmemory + maxmemory / 4,
        "{file}: memory limit {limit} B leaves too little above maxmemory ({maxmemory} B) for \
         Redis's own overhead"
    );
    let image = text_at(&file, &c, &["image"]);
    assert!(
        image
            .rsplit_once(':')
            .is_some_and(|(_, tag)| !tag.is_empty()),
        "{file}: image {image:?} without a tag"
    );
    for (path, want) in [
        (&["securityContext", "runAsNonRoot"][..], "true"),
        (&["securityContext", "readOnlyRootFilesystem"][..], "true"),
        (
            &["securityContext", "allowPrivilegeEscalation"][..],
            "false",
        ),
    ] {
        assert_eq!(text_at(&file, &c, path), want, "{file}: {}", path.join("."));
    }
    assert!(
        items(&file, &c, &["securityContext", "capabilities", "drop"])
            .iter()
            .any(|v| v == "ALL"),
        "{file}: capabilities.drop lacks ALL"
    );

    // A Service named phonegate-... would inject PHONEGATE_..._SERVICE_HOST and friends into the
    // phonegate pods; keep service links off there.
    let (pfile, pd) = overlay_phonegate();
    assert_eq!(
        text_at(
            &pfile,
            &pd,
            &["spec", "template", "spec", "enableServiceLinks"]
        ),
        "false",
        "{pfile}: enableServiceLinks"
    );
}

#[tokio::test]
async fn overlay_pods_stay_ready_and_live_while_redis_is_unreachable() {
    let d = overlay_phonegate();
    let mut env = overlay_env(&d, &|_| None);
    // A loopback port nobody listens on: the Redis Deployment not up yet, or down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    env.insert(
        "PHONEGATE__REDIS__URL".to_owned(),
        format!("redis://:{PLACEHOLDER}@127.0.0.1:{closed}/0"),
    );
    let cfg = load(&d.0, &configmap_toml(), &env);
    assert!(cfg.redis.is_some());
    let state = AppState::new(cfg).expect("state with an unreachable Redis");
    let c = overlay_container(&d);
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = text_at(&d.0, c, &[probe, "httpGet", "path"]).to_owned();
        let req = Request::get(path.as_str())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            phonegate::admin::handle(state.clone(), req),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: {probe} {path} hangs while Redis is down", d.0))
        .expect("infallible");
        assert_eq!(
            answer.status(),
            StatusCode::OK,
            "{}: {probe} {path} fails while Redis is unreachable; Redis down must only be a \
             slower path, not pods leaving the Service",
            d.0
        );
    }
}

#[test]
fn the_base_runs_without_redis_and_uses_it_when_the_secret_has_redis_url() {
    let d = deployment();
    let cfg = pod_config(&d);
    assert!(
        cfg.redis.is_none(),
        "{DEPLOYMENT} with {SECRET}: the base must run without Redis"
    );
    let var = named(
        DEPLOYMENT,
        items(DEPLOYMENT, container(&d), &["env"]),
        "PHONEGATE__REDIS__URL",
        "env",
    );
    let r = at(DEPLOYMENT, var, &["valueFrom", "secretKeyRef"]);
    assert_eq!(
        text_at(DEPLOYMENT, r, &["optional"]),
        "true",
        "{DEPLOYMENT}: redis-url must be optional, so the base starts without Redis"
    );
    let key = text_at(DEPLOYMENT, r, &["key"]);
    assert!(
        !secret_data().contains_key(key),
        "{SECRET}: sets {key}, so the template as given would need a Redis"
    );
    // The same Deployment with the overlay's redis-url in its Secret.
    let url = secret_data_of(OVERLAY_SECRET)
        .get(key)
        .cloned()
        .unwrap_or_else(|| panic!("{OVERLAY_SECRET}: no {key}, the key {DEPLOYMENT} reads"));
    let env = pod_env_with(&d, &|name| {
        (name == "PHONEGATE__REDIS__URL").then(|| url.clone())
    });
    let cfg = load(DEPLOYMENT, &configmap_toml(), &env);
    let urls: Vec<String> = cfg
        .redis
        .as_ref()
        .map(|r| r.urls.iter().map(|u| u.expose().to_owned()).collect())
        .unwrap_or_default();
    assert_eq!(urls, [url], "{DEPLOYMENT}: {key} does not reach redis.url");
}

#[test]
fn the_commented_redis_examples_of_the_systemd_files_are_valid_defaults() {
    let toml = read(SYSTEMD_TOML);
    let lines: Vec<&str> = toml.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "# [redis]")
        .unwrap_or_else(|| panic!("{SYSTEMD_TOML}: no commented `# [redis]` example"));
    // Its settings: `# key = value` and `# [table]` lines up to the next uncommented line.
    let block: Vec<&str> = lines[start..]
        .iter()
        .map(|l| l.trim())
        .take_while(|l| l.is_empty() || l.starts_with('#'))
        .filter_map(|l| {
            let t = l.strip_prefix('#')?.trim();
            let setting = t.starts_with("[redis")
                || t.split_once('=').is_some_and(|(k, _)| {
                    let k = k.trim();
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            setting.then_some(t)
        })
        .collect();
    assert!(block.len() > 2, "{SYSTEMD_TOML}: empty [redis] example");
    let uncommented = format!("{toml}\n{}\n", block.join("\n"));

    let mut env = env_file(SYSTEMD_ENV);
    env.extend(commented_env(SYSTEMD_ENV));
    assert!(
        env.contains_key("PHONEGATE__REDIS__URL"),
        "{SYSTEMD_ENV}: no PHONEGATE__REDIS__URL example"
    );
    let plain = load(SYSTEMD_TOML, &toml, &env)
        .redis
        .unwrap_or_else(|| panic!("{SYSTEMD_ENV}: the uncommented URL turns no tier on"));
    let mut example = load(
        &format!("{SYSTEMD_TOML} with its [redis] example uncommented"),
        &uncommented,
        &env,
    )
    .redis
    .expect("a tier");
    example.ca_path = None;
    assert_eq!(
        example, plain,
        "{SYSTEMD_TOML}: the commented [redis] values are no longer the defaults it says they are"
    );

    // And the real binary, as the unit runs it.
    let file = temp_file("systemd-redis.toml", &uncommented);
    let out = run_binary(
        &[
            "--config".to_owned(),
            file.to_string_lossy().into_owned(),
            "check-config".to_owned(),
        ],
        &env,
    );
    std::fs::remove_file(&file).ok();
    assert!(
        out.status.success(),
        "{SYSTEMD_TOML} + {SYSTEMD_ENV}, Redis examples uncommented: check-config fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
