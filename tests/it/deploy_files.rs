//! The deployment files under `deploy/` checked against the binary's real contract: every
//! `PHONEGATE__...` name is a setting the binary accepts, the ConfigMap and example TOML files pass
//! phonegate's own validation, ports and probe paths agree with what the listeners serve, the
//! termination grace periods cover the drain, and the Dockerfile and systemd unit use the binary's
//! real flags, variables and exit codes. The `kubernetes-replicas-with-redis` overlay is built the
//! way kustomize would (resources plus strategic-merge patches, for the fields it uses) and checked
//! the same way, plus its Redis: the URL in its Secret template reaches the Redis Service with the
//! password the Redis requires.
//!
//! The manifests are parsed by `serde_norway` into [`Doc`]s: a `serde_norway::Value` typed as the
//! API server types it (`optional: true` is a boolean, `containerPort: 8080` a number, an env
//! `value` a string), with the file it came from, walked with dotted paths
//! (`c.str("readinessProbe.httpGet.path")`) by accessors that fail naming the file and the path.
//! The overlay's patches go through a small strategic merge on those values. The Dockerfile, the
//! systemd unit and the environment files are line formats, each read in a few lines; Cargo.toml
//! is read with the `config` crate's TOML support. Nothing here needs Docker, a cluster, Redis or
//! systemd: the binary is run only as `check-config`, and Redis is never connected to (its URLs
//! are only validated).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{Empty, Full};
use phonegate::config::Config;
use phonegate::state::AppState;
use serde::Deserialize;
use serde_norway::Value;

use crate::support::{free_addr, read_repo_file, repo_root, temp_file};

const BIN: &str = env!("CARGO_BIN_EXE_phonegate");

const DOCKERFILE: &str = "deploy/Dockerfile";
const DEPLOYMENT: &str = "deploy/kubernetes/deployment.yaml";
const SERVICE: &str = "deploy/kubernetes/service.yaml";
const CONFIGMAP: &str = "deploy/kubernetes/configmap.yaml";
const SECRET: &str = "deploy/kubernetes/secret.example.yaml";
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

type Env = HashMap<String, String>;

/// What stands in for an optional Secret key a template lacks (None: the variable stays unset).
type Fill<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Missing optional Secret keys leave their variables unset, as Kubernetes does.
const UNSET: Fill = &|_| None;

/// Missing optional Secret keys are given a valid placeholder.
const FILLED: Fill = &|name| Some(placeholder_for(name));

/// The placeholder for the setting `name` (see [`PLACEHOLDER`]).
fn placeholder_for(name: &str) -> String {
    match name {
        "PHONEGATE__REDIS__URL" => REDIS_URL_PLACEHOLDER.to_owned(),
        _ => PLACEHOLDER.to_owned(),
    }
}

/// Settings `name` cannot be checked without: `redis.url` requires `cache.key_secret`, and the
/// other `redis.*` settings are only validated when `redis.url` is set.
fn companions(name: &str) -> Env {
    let mut env = Env::new();
    if name.starts_with("PHONEGATE__REDIS__") {
        env.insert("PHONEGATE__CACHE__KEY_SECRET".into(), PLACEHOLDER.into());
        if name != "PHONEGATE__REDIS__URL" {
            env.insert("PHONEGATE__REDIS__URL".into(), REDIS_URL_PLACEHOLDER.into());
        }
    }
    env
}

// ---- files, configurations and the binary ----

/// The entries of `dir` (with `deep`, the files below it), sorted, as paths from the repository root.
fn files(dir: &str, deep: bool) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo_root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let rel = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
        match deep && repo_root().join(&rel).is_dir() {
            true => out.extend(files(&rel, true)),
            false => out.push(rel),
        }
    }
    out.sort();
    out
}

/// Loads `toml` (as a file layer) with exactly `env` as the environment; `what` names the source.
fn load(what: &str, toml: &str, env: &Env) -> Config {
    let path = temp_file("deploy", "config.toml", toml);
    let result = Config::load_with_env(Some(&path), Some(env.clone()));
    std::fs::remove_file(&path).ok();
    result.unwrap_or_else(|e| panic!("{what}: phonegate refuses this configuration: {e}"))
}

/// Whether phonegate accepts `env` alone as its environment (Err: why not).
fn accepts(env: Env) -> Result<(), String> {
    Config::load_with_env(None, Some(env))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Runs the real binary with `args`, no inherited phonegate settings, and `env`; with `toml`,
/// as the container starts it: that in the file PHONEGATE_CONFIG names.
fn run(args: &[&str], env: &Env, toml: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PHONEGATE") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.args(args).envs(env).stdin(Stdio::null());
    let file = toml.map(|toml| temp_file("deploy", "config.toml", toml));
    if let Some(file) = &file {
        cmd.env("PHONEGATE_CONFIG", file);
    }
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output();
    if let Some(file) = file {
        std::fs::remove_file(file).ok();
    }
    out.expect("run the phonegate binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---- YAML, through serde_norway ----

/// A YAML value and the file it came from, walked with dotted paths of mapping keys (absent and
/// null alike). Every accessor but [`Doc::get`] fails naming the file and the path.
#[derive(Clone, Debug)]
struct Doc {
    file: String,
    v: Value,
}

fn doc(file: &str, v: &Value) -> Doc {
    Doc {
        file: file.to_owned(),
        v: v.clone(),
    }
}

/// The documents of the YAML file `file` (empty ones skipped).
fn docs(file: &str) -> Vec<Doc> {
    let text = read_repo_file(file);
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(&text) {
        let v = Value::deserialize(de).unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}"));
        docs.extend((!v.is_null()).then(|| doc(file, &v)));
    }
    docs
}

/// The one document of `file`, an object of `kind`.
fn manifest(file: &str, kind: &str) -> Doc {
    let mut docs = docs(file);
    assert_eq!(docs.len(), 1, "{file}: expected exactly one YAML document");
    let doc = docs.remove(0);
    assert_eq!(doc.str("kind"), kind, "{file}: kind");
    doc
}

impl Doc {
    fn get(&self, path: &str) -> Option<&Value> {
        let mut keys = path.split('.').filter(|key| !key.is_empty());
        let v = keys.try_fold(&self.v, |v, key| v.get(key));
        v.filter(|v| !v.is_null())
    }

    /// The value at `path` as `T`, or a failure naming the file, the path and what it should be.
    fn typed<'a, T>(&'a self, path: &str, as_t: fn(&'a Value) -> Option<T>, want: &str) -> T {
        let v = self
            .get(path)
            .unwrap_or_else(|| panic!("{}: no {path}", self.file));
        as_t(v).unwrap_or_else(|| panic!("{}: {path} is {v:?}, not {want}", self.file))
    }

    fn at(&self, path: &str) -> Doc {
        doc(&self.file, self.typed(path, Some, "present"))
    }

    fn opt(&self, path: &str) -> Option<Doc> {
        self.get(path).map(|v| doc(&self.file, v))
    }

    fn str(&self, path: &str) -> &str {
        self.typed(path, Value::as_str, "a string")
    }

    fn u64(&self, path: &str) -> u64 {
        self.typed(path, Value::as_u64, "a whole number")
    }

    /// A boolean; false when absent, as Kubernetes defaults `optional`.
    fn flag(&self, path: &str) -> bool {
        self.get(path).is_some() && self.typed(path, Value::as_bool, "a boolean")
    }

    /// The items of the list at `path`; none when absent.
    fn list(&self, path: &str) -> Vec<Doc> {
        let Some(_) = self.get(path) else {
            return Vec::new();
        };
        let items = self.typed(path, Value::as_sequence, "a list");
        items.iter().map(|v| doc(&self.file, v)).collect()
    }

    /// The item of the list at `path` whose `name` is `name`.
    fn named(&self, path: &str, name: &str) -> Doc {
        let mut items = self.list(path).into_iter();
        let found = items.find(|i| i.get("name") == Some(&name.into()));
        found.unwrap_or_else(|| panic!("{}: no {path} item named {name:?}", self.file))
    }

    /// A mapping of strings (labels, selectors, annotations, data).
    fn map(&self, path: &str) -> BTreeMap<String, String> {
        let map = self.typed(path, Value::as_mapping, "a mapping");
        let pair =
            |(k, v): (&Value, &Value)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned()));
        let pairs: Option<BTreeMap<_, _>> = map.iter().map(pair).collect();
        pairs.unwrap_or_else(|| panic!("{}: {path} is not all strings", self.file))
    }

    /// Whether this is the object of `kind` named `name`.
    fn is(&self, kind: &str, name: &str) -> bool {
        self.get("kind") == Some(&kind.into()) && self.get("metadata.name") == Some(&name.into())
    }

    /// A port of the container this is: a number, or the name of one of its `ports`.
    fn port(&self, port: &Value) -> u16 {
        let n = match port.as_str() {
            Some(name) => self.named("ports", name).u64("containerPort"),
            None => port.as_u64().unwrap_or(u64::MAX),
        };
        u16::try_from(n).unwrap_or_else(|_| panic!("{}: {port:?} is not a port", self.file))
    }

    /// A Kubernetes quantity of bytes (`512Mi`, `1G`, `1000`).
    fn bytes(&self, path: &str) -> u64 {
        let v = self.typed(path, Some, "bytes");
        let n = v.as_u64().or_else(|| scaled(v.as_str()?, &K8S_UNITS));
        n.unwrap_or_else(|| panic!("{}: {path} = {v:?} is not bytes", self.file))
    }
}

/// The units of Kubernetes quantities of bytes (`512Mi`).
const K8S_UNITS: [(&str, u64); 7] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("k", 1000),
    ("K", 1000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
];

/// The units of redis.conf memory sizes (`256mb`).
const REDIS_UNITS: [(&str, u64); 7] = [
    ("gb", 1 << 30),
    ("mb", 1 << 20),
    ("kb", 1 << 10),
    ("g", 1_000_000_000),
    ("m", 1_000_000),
    ("k", 1000),
    ("b", 1),
];

/// `text`, a number with one of the suffixes of `units` or none, times the suffix's factor.
fn scaled(text: &str, units: &[(&str, u64)]) -> Option<u64> {
    let mut units = units.iter().chain(&[("", 1)]);
    units.find_map(|(suffix, n)| Some(text.strip_suffix(suffix)?.parse::<u64>().ok()? * n))
}

// ---- the Kubernetes objects ----

fn deployment() -> Doc {
    manifest(DEPLOYMENT, "Deployment")
}

/// The `phonegate` container of the Deployment `d`.
fn container(d: &Doc) -> Doc {
    d.named("spec.template.spec.containers", "phonegate")
}

/// The Secret template `file`: its name and its `stringData`.
fn secret(file: &str) -> (String, BTreeMap<String, String>) {
    let s = manifest(file, "Secret");
    (s.str("metadata.name").to_owned(), s.map("stringData"))
}

/// Keys shown commented out in a Secret template (`# key: value`): documented optional keys.
fn commented_secret_keys(file: &str) -> BTreeSet<String> {
    let text = read_repo_file(file);
    let comments = text.lines().filter_map(|l| l.trim().strip_prefix('#'));
    let pairs = comments.filter_map(|l| l.trim().split_once(": "));
    let keys = pairs.filter(|(key, value)| {
        let plain = key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        plain && !key.is_empty() && !value.trim().is_empty()
    });
    keys.map(|(key, _)| key.to_owned()).collect()
}

/// The environment of the container `c` as its pod gets it: literal values, and Secret references
/// resolved from the template `secret_file`, `fill` standing in for optional keys it lacks.
fn container_env(c: &Doc, secret_file: &str, fill: Fill) -> Env {
    let (secret_name, data) = secret(secret_file);
    let mut env = Env::new();
    for var in c.list("env") {
        let name = var.str("name");
        let value = match var.opt("valueFrom.secretKeyRef") {
            None => var.str("value").to_owned(),
            Some(r) => {
                let (file, key) = (&c.file, r.str("key"));
                let other = r.str("name") != secret_name;
                assert!(
                    !other,
                    "{file}: env {name} reads another Secret than {secret_file}"
                );
                let value = data.get(key).cloned();
                let optional = r.flag("optional");
                assert!(
                    optional || value.is_some(),
                    "{file}: {key} is not in {secret_file}"
                );
                match value.or_else(|| fill(name)) {
                    Some(value) => value,
                    None => continue,
                }
            }
        };
        assert!(
            env.insert(name.into(), value).is_none(),
            "{}: {name} set twice",
            c.file
        );
    }
    env
}

/// The base pods' environment.
fn pod_env(fill: Fill) -> Env {
    container_env(&container(&deployment()), SECRET, fill)
}

/// The `phonegate.toml` embedded in the ConfigMap.
fn configmap_toml() -> String {
    let data = manifest(CONFIGMAP, "ConfigMap").map("data");
    data.get("phonegate.toml")
        .expect("configmap.yaml has phonegate.toml")
        .clone()
}

/// What a base pod runs with: defaults, the ConfigMap's file, the Deployment's environment.
fn pod_config() -> Config {
    let what = format!("{CONFIGMAP} with the env of {DEPLOYMENT}");
    load(&what, &configmap_toml(), &pod_env(UNSET))
}

/// Whether `selector` (label → value) selects a pod labelled `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---- kustomize, as far as the manifests use it ----

/// A path relative to the repository root with `.` and `..` resolved.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part != ".." {
            parts.push(part);
        } else if parts.pop().is_none() {
            panic!("{path}: leaves the repository");
        }
    }
    parts.join("/")
}

/// The key a strategic-merge patch merges the list `field` by, for the lists of a pod spec that
/// merge rather than replace (Service `ports` by `port`, container `ports` by `containerPort`).
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
    let key = patch.as_sequence().and_then(|p| merge_key(field, p));
    match (target, patch, key) {
        (Value::Mapping(t), Value::Mapping(p), _) => {
            for (k, pv) in p {
                let name = k.as_str().unwrap_or_default();
                let directive = name.is_empty() || name.starts_with('$') || pv.is_null();
                assert!(
                    !directive,
                    "{file}: {k:?}: deletions and $patch are not supported here"
                );
                match t.get_mut(k) {
                    Some(tv) => strategic_merge(file, name, tv, pv),
                    None => drop(t.insert(k.clone(), pv.clone())),
                }
            }
        }
        (Value::Sequence(t), Value::Sequence(p), Some(key)) => {
            for item in p {
                let id = item.get(key);
                assert!(id.is_some(), "{file}: an item of {field} without {key}");
                match t.iter_mut().find(|i| i.get(key) == id) {
                    Some(existing) => strategic_merge(file, field, existing, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p, _) => *t = p.clone(),
    }
}

/// The objects `kubectl apply -k dir` would apply, each with the file it came from (or, once
/// patched, that file and the patch): its `resources` (files or kustomization directories) with
/// its `patches` applied. Fields that would rename or relabel objects are refused rather than
/// ignored; `images` (from `kustomize edit set image`) only changes the image and is ignored.
fn kustomize(dir: &str) -> Vec<Doc> {
    let kfile = format!("{dir}/kustomization.yaml");
    let k = manifest(&kfile, "Kustomization");
    for key in k.typed("", Value::as_mapping, "a mapping").keys() {
        let known = ["apiVersion", "kind", "resources", "patches", "images"];
        let known = known.iter().any(|known| key == *known);
        assert!(
            known,
            "{kfile}: {key:?} is not understood here; extend kustomize()"
        );
    }
    let mut objects = Vec::new();
    for r in k.list("resources") {
        let path = normalize(&format!("{dir}/{}", r.typed("", Value::as_str, "a path")));
        let inside = path.starts_with(&format!("{dir}/"));
        if !repo_root().join(&path).is_dir() {
            // kustomize refuses files outside the kustomization's directory by default.
            assert!(inside, "{kfile}: resource {path} is outside {dir}");
            objects.extend(docs(&path));
            continue;
        }
        let kustomization = repo_root().join(&path).join("kustomization.yaml");
        assert!(
            kustomization.is_file(),
            "{kfile}: {path} has no kustomization.yaml"
        );
        // ... and a kustomization whose directory contains one it came from.
        let cycle = format!("{dir}/").starts_with(&format!("{path}/"));
        assert!(
            !cycle,
            "{kfile}: {path} contains {dir}, a cycle: put overlays beside their base"
        );
        objects.extend(kustomize(&path));
    }
    for p in k.list("patches") {
        let only_path = p.typed("", Value::as_mapping, "a patch").len() == 1;
        assert!(
            only_path,
            "{kfile}: only `- path: FILE` patches (strategic merges) are understood"
        );
        let pfile = normalize(&format!("{dir}/{}", p.str("path")));
        assert!(
            pfile.starts_with(&format!("{dir}/")),
            "{kfile}: {pfile} is outside {dir}"
        );
        let patch = docs(&pfile)
            .pop()
            .unwrap_or_else(|| panic!("{pfile}: empty"));
        let (kind, name) = (patch.str("kind"), patch.str("metadata.name"));
        let Some(target) = objects.iter_mut().find(|o| o.is(kind, name)) else {
            panic!("{pfile}: patches {kind} {name}, which {kfile} lacks");
        };
        let same = target.str("apiVersion") == patch.str("apiVersion");
        assert!(
            same,
            "{pfile}: apiVersion differs from the {kind} of {}",
            target.file
        );
        strategic_merge(&pfile, "", &mut target.v, &patch.v);
        target.file = format!("{} patched by {pfile}", target.file);
    }
    let mut seen = BTreeSet::new();
    for o in &objects {
        let id = (o.str("kind"), o.str("metadata.name"));
        assert!(seen.insert(id), "{kfile}: {id:?} defined twice");
    }
    objects
}

/// The one object of `kind` named `name` among `objects`.
fn object<'a>(objects: &'a [Doc], kind: &str, name: &str) -> &'a Doc {
    let found = objects.iter().find(|o| o.is(kind, name));
    found.unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn objects_of<'a>(objects: &'a [Doc], kind: &'a str) -> impl Iterator<Item = &'a Doc> {
    objects
        .iter()
        .filter(move |o| o.get("kind") == Some(&kind.into()))
}

/// The overlay's phonegate Deployment, patched.
fn overlay_phonegate() -> Doc {
    let name = deployment().str("metadata.name").to_owned();
    object(&kustomize(OVERLAY_DIR), "Deployment", &name).clone()
}

/// The overlay pods' environment, Secret references resolved from the overlay's template.
fn overlay_env(fill: Fill) -> Env {
    container_env(&container(&overlay_phonegate()), OVERLAY_SECRET, fill)
}

/// The overlay's Redis among `objects`: the Deployment of the one container running a redis
/// image, that container, and its arguments, `$(VAR)` expanded from its env as the kubelet does.
fn redis_of(objects: &[Doc]) -> (Doc, Doc, Vec<String>) {
    let mut found = Vec::new();
    for d in objects_of(objects, "Deployment") {
        for c in d.list("spec.template.spec.containers") {
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            if image.starts_with("redis:") || image.contains("/redis:") {
                found.push((d.clone(), c));
            }
        }
    }
    assert_eq!(
        found.len(),
        1,
        "{OVERLAY_DIR}: expected one container running a redis image"
    );
    let (d, c) = found.remove(0);
    let env = container_env(&c, OVERLAY_SECRET, UNSET);
    let mut args = Vec::new();
    for a in c.list("args") {
        let mut a = a.typed("", Value::as_str, "a string").to_owned();
        for (k, v) in &env {
            a = a.replace(&format!("$({k})"), v);
        }
        assert!(
            !a.contains("$("),
            "{}: {a:?} names an unset variable",
            c.file
        );
        args.push(a);
    }
    (d, c, args)
}

/// The value following `flag` in `args` (redis-server's `--name value` form).
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    Some(args.get(i + 1).map_or("", String::as_str))
}

/// The port redis-server listens on.
fn redis_port(args: &[String]) -> u16 {
    let port = arg(args, "--port").unwrap_or("6379");
    port.parse()
        .unwrap_or_else(|_| panic!("{OVERLAY_DIR}: redis-server --port {port}"))
}

// ---- line formats: the Dockerfile, the systemd unit, environment and TOML files ----

/// Whitespace-separated words, with double or single quotes grouping and removed.
fn words(text: &str) -> Vec<String> {
    let (mut out, mut word, mut quote) = (Vec::new(), None::<String>, None);
    for c in text.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => out.extend(word.take()),
            (_, c) => word.get_or_insert_default().push(c),
        }
        if quote.is_some() {
            word.get_or_insert_default();
        }
    }
    out.extend(word);
    out
}

/// A Dockerfile instruction; `stage` counts the FROMs up to it (the first stage is 1).
struct Instruction {
    stage: usize,
    op: String,
    args: String,
}

/// The Dockerfile's instructions (comment lines dropped, line continuations joined), and the
/// number of its last stage, the runtime image.
fn dockerfile() -> (Vec<Instruction>, usize) {
    let text = read_repo_file(DOCKERFILE);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let text = lines.join("\n").replace("\\\n", " ");
    assert!(
        !text.ends_with('\\'),
        "{DOCKERFILE}: ends inside a line continuation"
    );
    let mut stage = 0;
    let mut instructions = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (op, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let op = op.to_ascii_uppercase();
        stage += usize::from(op == "FROM");
        let args = args.trim().to_owned();
        instructions.push(Instruction { stage, op, args });
    }
    (instructions, stage)
}

/// The arguments of the instructions `op` of the runtime stage.
fn runtime(op: &str) -> Vec<String> {
    let (instructions, last) = dockerfile();
    let found = instructions
        .into_iter()
        .filter(|i| i.stage == last && i.op == op);
    found.map(|i| i.args).collect()
}

/// The one `op` of the runtime stage.
fn runtime_one(op: &str) -> String {
    let mut found = runtime(op);
    assert_eq!(
        found.len(),
        1,
        "{DOCKERFILE}: the runtime stage needs one {op}"
    );
    found.remove(0)
}

/// `ENV KEY=VALUE ...` settings of the runtime stage.
fn docker_env() -> Env {
    let words: Vec<String> = runtime("ENV").iter().flat_map(|args| words(args)).collect();
    let pair = |w: &String| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()));
    let pairs: Option<Env> = words.iter().map(pair).collect();
    pairs.unwrap_or_else(|| panic!("{DOCKERFILE}: use ENV KEY=VALUE ({words:?})"))
}

/// A file a `COPY` or `ADD` puts in the image.
struct Copy {
    stage: usize,
    /// Copied `--from` another stage rather than from the build context.
    from_stage: bool,
    source: String,
    to: String,
}

fn docker_copies() -> Vec<Copy> {
    let mut copies = Vec::new();
    for i in dockerfile()
        .0
        .into_iter()
        .filter(|i| i.op == "COPY" || i.op == "ADD")
    {
        let w = words(&i.args);
        let from_stage = w.iter().any(|a| a.starts_with("--from="));
        let mut paths: Vec<&String> = w.iter().filter(|a| !a.starts_with("--")).collect();
        let dest = paths.pop().expect("COPY has a destination");
        for source in paths {
            let base = source
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(source);
            let to = if dest.ends_with('/') {
                format!("{dest}{base}")
            } else {
                dest.clone()
            };
            let (stage, source) = (i.stage, source.clone());
            copies.push(Copy {
                stage,
                from_stage,
                source,
                to,
            });
        }
    }
    copies
}

/// The values of the unit's `key=` directives (comments and section headers skipped), in order.
fn unit_values(key: &str) -> Vec<String> {
    let mut values = Vec::new();
    for line in read_repo_file(UNIT).lines().map(str::trim) {
        if line.is_empty() || line.starts_with(['#', ';', '[']) {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: {line:?}"));
        if k.trim() == key {
            values.push(v.trim().to_owned());
        }
    }
    values
}

fn unit_value(key: &str) -> String {
    let values = unit_values(key);
    assert_eq!(
        values.len(),
        1,
        "{UNIT}: expected one {key}=, got {values:?}"
    );
    values[0].clone()
}

/// `KEY=VALUE` lines of an environment file; with `examples`, also those it shows commented out
/// (`# PHONEGATE__...=value`).
fn env_file(file: &str, examples: bool) -> Env {
    let mut env = Env::new();
    for line in read_repo_file(file)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (k, v) = match line.strip_prefix('#').map(str::trim) {
            None => line
                .split_once('=')
                .unwrap_or_else(|| panic!("{file}: {line:?}")),
            Some(c) if examples && c.starts_with("PHONEGATE") => match c.split_once('=') {
                Some((k, v)) if !k.contains(' ') => (k, v),
                _ => continue,
            },
            Some(_) => continue,
        };
        env.insert(k.trim().to_owned(), words(v).join(" "));
    }
    env
}

/// A path given to `key` in a TOML file, set or commented out (`# key = "..."`).
fn toml_path_mention(file: &str, key: &str) -> String {
    let toml = if file == CONFIGMAP {
        configmap_toml()
    } else {
        read_repo_file(file)
    };
    let lines = toml
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim());
    let mut values = lines.filter_map(|l| l.strip_prefix(key)?.trim().strip_prefix('='));
    let value = values
        .next()
        .unwrap_or_else(|| panic!("{file}: no {key} line"));
    value.trim().trim_matches('"').to_owned()
}

/// Files cargo needs to find when it reads the TOML `manifest`, whatever it builds: each target
/// table's `path` (or its conventional file: `src` for the library and binaries), and a `build`
/// script. Read with the `config` crate's TOML support, phonegate's own.
fn cargo_declared_files(manifest: &str) -> Vec<String> {
    let source = config::File::from_str(manifest, config::FileFormat::Toml);
    let manifest = config::Config::builder().add_source(source).build();
    let manifest: serde_json::Value = manifest.and_then(|m| m.try_deserialize()).expect("TOML");
    let mut files: Vec<String> = manifest["package"]["build"]
        .as_str()
        .map(str::to_owned)
        .into_iter()
        .collect();
    for (table, dir) in [
        ("lib", "src"),
        ("bin", "src"),
        ("bench", "benches"),
        ("test", "tests"),
        ("example", "examples"),
    ] {
        let targets = match &manifest[table] {
            serde_json::Value::Array(targets) => targets.clone(),
            serde_json::Value::Null => Vec::new(),
            target => vec![target.clone()],
        };
        for t in targets {
            files.push(match (t["path"].as_str(), t["name"].as_str()) {
                (Some(path), _) => path.to_owned(),
                (None, Some(name)) if dir != "src" => format!("{dir}/{name}.rs"),
                _ => dir.to_owned(),
            });
        }
    }
    // Workspace members and path dependencies (dev ones too: cargo loads every manifest of the
    // workspace before it builds anything), where they lie inside the repository.
    let members = manifest["workspace"]["members"].as_array().cloned();
    files.extend(
        members
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_owned)),
    );
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(deps) = manifest[table].as_object() {
            let paths = deps.values().filter_map(|d| d["path"].as_str());
            files.extend(paths.filter(|p| !p.starts_with("..")).map(str::to_owned));
        }
    }
    files.sort();
    files.dedup();
    files
}

// ---- tests: environment names and configurations ----

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
            accepts(env).is_err(),
            "phonegate accepts the unknown name {name}: the name checks would miss a typo"
        );
    }
}

/// The environments the deploy files give in structured form: (source, environment).
fn structured_environments() -> Vec<(&'static str, Env)> {
    vec![
        (DOCKERFILE, docker_env()),
        (DEPLOYMENT, pod_env(UNSET)),
        (DEPLOYMENT, pod_env(FILLED)),
        (OVERLAY_DIR, overlay_env(UNSET)),
        (OVERLAY_DIR, overlay_env(FILLED)),
        (SYSTEMD_ENV, env_file(SYSTEMD_ENV, false)),
        (SYSTEMD_ENV, env_file(SYSTEMD_ENV, true)),
    ]
}

#[test]
fn every_phonegate_name_under_deploy_is_a_setting_the_binary_accepts() {
    // Values the files give in structured form, for names mentioned without one.
    let mut known = Env::new();
    for (_, env) in structured_environments() {
        known.extend(env);
    }
    for word in unit_values("Environment").iter().flat_map(|env| words(env)) {
        known.extend(
            word.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
    }
    let mut checked = 0;
    for file in files("deploy", true) {
        let text = read_repo_file(&file);
        let mut mentioned = Env::new();
        for (pos, _) in text.match_indices("PHONEGATE__") {
            let tail = &text[pos..];
            let end =
                tail.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
            let (name, rest) = tail.split_at(end.unwrap_or(tail.len()));
            if name.len() == "PHONEGATE__".len() || name.ends_with('_') {
                continue; // the pattern itself (`PHONEGATE__<SECTION>__<KEY>`), not a name
            }
            // An inline literal `NAME=value` wins, then a value a structured file gives the name.
            let inline = rest.strip_prefix('=').map(|v| {
                let v = v.split(|c: char| c.is_whitespace() || c == '`').next();
                v.unwrap_or_default().trim_matches(['"', '\'']).to_owned()
            });
            let literal =
                |v: &String| !v.is_empty() && !v.contains(['$', '<']) && !v.contains("...");
            let value = inline.filter(literal).or_else(|| known.get(name).cloned());
            let value = value.unwrap_or_else(|| placeholder_for(name));
            let mut alone = companions(name);
            alone.insert(name.to_owned(), value.clone());
            if let Err(e) = accepts(alone) {
                panic!("{file}: {name}={value:?} is not accepted by phonegate: {e}");
            }
            mentioned.insert(name.to_owned(), value);
            checked += 1;
        }
        // The file's names together, over the companions they need.
        let mut env: Env = mentioned.keys().flat_map(|n| companions(n)).collect();
        env.extend(mentioned);
        if let Err(e) = accepts(env.clone()) {
            panic!("{file}: its PHONEGATE__ variables together are refused: {e} ({env:?})");
        }
    }
    assert!(
        checked >= 6,
        "only {checked} PHONEGATE__ mentions found in deploy/"
    );
}

#[test]
fn each_structured_environment_is_accepted_whole() {
    for (file, env) in structured_environments() {
        for name in env.keys() {
            assert!(
                name.starts_with("PHONEGATE__") || name == "PHONEGATE_CONFIG",
                "{file}: {name} is not a phonegate variable (PHONEGATE__<SECTION>__<KEY> or \
                 PHONEGATE_CONFIG)"
            );
        }
        if let Err(e) = accepts(env) {
            panic!("{file}: its environment is refused by phonegate: {e}");
        }
    }
}

#[test]
fn phonegate_config_is_the_variable_the_binary_reads() {
    assert!(
        read_repo_file("src/main.rs").contains("env = \"PHONEGATE_CONFIG\""),
        "src/main.rs no longer reads PHONEGATE_CONFIG, which {DOCKERFILE} and {DEPLOYMENT} set"
    );
    // The container starts with no arguments: PHONEGATE_CONFIG is how it finds the ConfigMap's
    // file. Run the real binary that way, with the pod's environment.
    let out = run(&["check-config"], &pod_env(UNSET), Some(&configmap_toml()));
    assert!(
        out.status.success(),
        "{CONFIGMAP} + {DEPLOYMENT}: `phonegate check-config` fails: {}",
        stderr(&out)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let cfg = pod_config().startup;
    assert_eq!(
        shown["listen"],
        cfg.listen.to_string(),
        "{DEPLOYMENT}: listen"
    );
    assert_eq!(
        shown["server"]["drain_timeout_ms"],
        cfg.server.drain_timeout.as_millis() as u64,
        "{CONFIGMAP}: the binary did not read the file named by PHONEGATE_CONFIG"
    );
}

#[test]
fn the_configmap_and_the_example_files_are_valid_configurations() {
    let cm = load(CONFIGMAP, &configmap_toml(), &Env::new());
    assert!(
        matches!(cm.live.auth, phonegate::config::AuthConfig::Passthrough),
        "{CONFIGMAP}: should default to passthrough mode (managed needs a key file and clients)"
    );
    load(SYSTEMD_TOML, &read_repo_file(SYSTEMD_TOML), &Env::new());
    // The image's baked file layer is the defaults file.
    load(
        "config/default.toml",
        &read_repo_file("config/default.toml"),
        &Env::new(),
    );
}

// ---- tests: the base Deployment, its ConfigMap, Secret and Service ----

#[test]
fn deployment_mounts_the_configmap_where_phonegate_config_points() {
    let (d, env) = (deployment(), pod_env(UNSET));
    let cm_name = manifest(CONFIGMAP, "ConfigMap")
        .str("metadata.name")
        .to_owned();
    let volumes = d.list("spec.template.spec.volumes");
    let volume = volumes
        .iter()
        .find(|v| v.get("configMap.name") == Some(&cm_name.as_str().into()));
    let volume = volume.unwrap_or_else(|| panic!("{DEPLOYMENT}: no volume of {cm_name}"));
    let vname = volume.str("name");
    let items = volume.list("configMap.items");
    let item = items
        .iter()
        .find(|i| i.get("key") == Some(&"phonegate.toml".into()));
    assert!(
        item.is_some() || items.is_empty(),
        "{DEPLOYMENT}: {vname} omits phonegate.toml"
    );
    let file_name = item.map_or("phonegate.toml", |i| i.str("path"));
    let mount_path = container(&d)
        .named("volumeMounts", vname)
        .str("mountPath")
        .to_owned();
    assert_eq!(
        env.get("PHONEGATE_CONFIG"),
        Some(&format!("{}/{file_name}", mount_path.trim_end_matches('/'))),
        "{DEPLOYMENT}: PHONEGATE_CONFIG does not point at the mounted {CONFIGMAP} file"
    );
}

/// The ports the Dockerfile EXPOSEs.
fn exposed_ports() -> BTreeSet<u16> {
    let exposed: Vec<String> = runtime("EXPOSE")
        .iter()
        .flat_map(|args| words(args))
        .collect();
    let port = |p: &String| p.split('/').next()?.parse().ok();
    let ports: Option<BTreeSet<u16>> = exposed.iter().map(port).collect();
    ports.unwrap_or_else(|| panic!("{DOCKERFILE}: EXPOSE {exposed:?}"))
}

#[test]
fn the_image_listens_on_all_interfaces_on_its_exposed_ports() {
    let what = format!("config/default.toml with the ENV of {DOCKERFILE}");
    let cfg = load(&what, &read_repo_file("config/default.toml"), &docker_env()).startup;
    let exposed = exposed_ports();
    for (what, addr) in [("listen", cfg.listen), ("admin.listen", cfg.admin_listen)] {
        assert!(
            addr.ip().is_unspecified(),
            "{DOCKERFILE}: {what} is {addr}; a container must listen on 0.0.0.0"
        );
        assert!(
            exposed.contains(&addr.port()),
            "{DOCKERFILE}: {what} ({addr}) is not in EXPOSE {exposed:?}"
        );
    }
}

#[test]
fn the_pod_listens_on_all_interfaces_on_its_named_container_ports() {
    let (cfg, c, exposed) = (
        pod_config().startup,
        container(&deployment()),
        exposed_ports(),
    );
    for (what, addr, name) in [
        ("listen", cfg.listen, "http"),
        ("admin", cfg.admin_listen, "admin"),
    ] {
        assert!(
            addr.ip().is_unspecified(),
            "{DEPLOYMENT}: {what} is {addr}; the Service and the kubelet's probes cannot reach a \
             pod listening on loopback"
        );
        let port = c.port(&name.into());
        assert_eq!(
            port,
            addr.port(),
            "{DEPLOYMENT}: containerPort {name} is not {what} ({addr})"
        );
        assert!(
            exposed.contains(&port),
            "{DOCKERFILE}: EXPOSE lacks the pod's {what} port {port}"
        );
    }
}

#[test]
fn the_service_targets_the_proxy_and_admin_listeners() {
    let (cfg, c) = (pod_config().startup, container(&deployment()));
    let svc = manifest(SERVICE, "Service");
    assert_eq!(svc.str("spec.type"), "ClusterIP", "{SERVICE}: type");
    for (name, want) in [
        ("http", cfg.listen.port()),
        ("admin", cfg.admin_listen.port()),
    ] {
        let target = svc.named("spec.ports", name).at("targetPort").v;
        assert_eq!(
            c.port(&target),
            want,
            "{SERVICE}: port {name} targets {target:?}, not phonegate's {name} listener ({want})"
        );
    }
}

#[test]
fn probes_and_the_prometheus_annotation_use_the_admin_port() {
    let (admin, d) = (pod_config().startup.admin_listen.port(), deployment());
    let c = container(&d);
    for probe in ["readinessProbe", "livenessProbe"] {
        let port = c.at(&format!("{probe}.httpGet.port")).v;
        assert_eq!(
            c.port(&port),
            admin,
            "{DEPLOYMENT}: {probe} port {port:?} is not the admin port"
        );
    }
    let annotations = d.map("spec.template.metadata.annotations");
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&admin.to_string()),
        "{DEPLOYMENT}: prometheus.io/port is not the admin port"
    );
}

/// The status phonegate's admin listener answers `req` with.
async fn admin_status<B>(state: Arc<AppState>, req: Request<B>) -> StatusCode
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    phonegate::admin::handle(state, req)
        .await
        .expect("infallible")
        .status()
}

async fn admin_get(state: &Arc<AppState>, path: &str) -> StatusCode {
    let req = Request::get(path)
        .body(Empty::<Bytes>::new())
        .expect("request");
    admin_status(state.clone(), req).await
}

#[tokio::test]
async fn probe_paths_are_answered_by_the_admin_listener() {
    let d = deployment();
    let c = container(&d);
    let liveness = c.str("livenessProbe.httpGet.path");
    let readiness = c.str("readinessProbe.httpGet.path");
    assert_eq!(
        (liveness, readiness),
        ("/healthz", "/readyz"),
        "{DEPLOYMENT}: probe paths"
    );
    let annotations = d.map("spec.template.metadata.annotations");
    let metrics = annotations
        .get("prometheus.io/path")
        .expect("a prometheus.io/path annotation");
    let state = AppState::new(pod_config()).expect("state from the pod's configuration");
    for path in [liveness, readiness, metrics.as_str()] {
        assert_eq!(
            admin_get(&state, path).await,
            StatusCode::OK,
            "{DEPLOYMENT}: {path} is not answered 200 by phonegate's admin listener"
        );
    }
    assert_eq!(
        admin_get(&state, "/healthz-typo").await,
        StatusCode::NOT_FOUND,
        "an unknown admin path must be a 404, or a typo'd probe path would pass"
    );
    state.start_draining();
    assert_eq!(
        admin_get(&state, readiness).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "{DEPLOYMENT}: {readiness} must turn 503 while draining, so the pod leaves the endpoints"
    );
    assert_eq!(
        admin_get(&state, liveness).await,
        StatusCode::OK,
        "{DEPLOYMENT}: {liveness} must stay 200 while draining, or the kubelet kills the drain"
    );
}

#[tokio::test]
async fn cache_purges_on_the_pod_admin_port_need_the_optional_token() {
    let purge = |state: Arc<AppState>, token: Option<&str>| {
        let mut req = Request::post("/cache/purge");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = Full::new(Bytes::from_static(b"{\"all\":true}"));
        admin_status(state, req.body(body).expect("request"))
    };
    // As the template is: no admin-token, so a non-loopback admin listener refuses purges.
    let without = AppState::new(pod_config()).expect("state");
    assert_eq!(
        purge(without, None).await,
        StatusCode::FORBIDDEN,
        "{DEPLOYMENT}: without admin-token in {SECRET}, purges must be refused (deploy/README.md)"
    );
    // With the optional key in the Secret (only that one: redis-url would add a Redis tier).
    let env = pod_env(&|name| (name == "PHONEGATE__ADMIN__TOKEN").then(|| PLACEHOLDER.into()));
    assert_eq!(
        env.get("PHONEGATE__ADMIN__TOKEN").map(String::as_str),
        Some(PLACEHOLDER),
        "{DEPLOYMENT}: the optional admin-token no longer reaches PHONEGATE__ADMIN__TOKEN"
    );
    let with = AppState::new(load(DEPLOYMENT, &configmap_toml(), &env)).expect("state");
    let status = purge(with.clone(), None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "{DEPLOYMENT}: a purge without the token"
    );
    let status = purge(with, Some(PLACEHOLDER)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{DEPLOYMENT}: a purge with the token"
    );
}

#[test]
fn termination_grace_covers_prestop_and_drain() {
    let (drain, d) = (pod_config().startup.server.drain_timeout, deployment());
    let grace = Duration::from_secs(d.u64("spec.template.spec.terminationGracePeriodSeconds"));
    let pre_stop = container(&d)
        .opt("lifecycle.preStop")
        .map(|h| h.u64("sleep.seconds"));
    let pre_stop = Duration::from_secs(pre_stop.unwrap_or(0));
    assert!(
        grace > pre_stop + drain,
        "{DEPLOYMENT}: terminationGracePeriodSeconds ({grace:?}) must exceed the preStop sleep \
         ({pre_stop:?}) plus server.drain_timeout_ms from {CONFIGMAP} ({drain:?}), or the kubelet \
         SIGKILLs requests mid-drain"
    );
}

#[test]
fn each_kustomization_lists_every_manifest_but_its_secret_template() {
    for dir in [BASE_DIR, OVERLAY_DIR] {
        let kfile = format!("{dir}/kustomization.yaml");
        let k = manifest(&kfile, "Kustomization");
        let patches = k.list("patches").into_iter().map(|p| p.at("path"));
        let mut listed = BTreeSet::new();
        for entry in k.list("resources").into_iter().chain(patches) {
            let path = normalize(&format!(
                "{dir}/{}",
                entry.typed("", Value::as_str, "a path")
            ));
            assert!(
                repo_root().join(&path).exists(),
                "{kfile}: lists {path}, which does not exist"
            );
            listed.insert(path);
        }
        for path in files(dir, false)
            .into_iter()
            .filter(|f| f.ends_with(".yaml") && *f != kfile)
        {
            let template = path.ends_with(".example.yaml");
            assert_eq!(
                listed.contains(&path),
                !template,
                "{kfile}: {path} {}",
                if template {
                    "holds placeholders and must not be applied with -k"
                } else {
                    "is neither a resource nor a patch"
                }
            );
            let docs = docs(&path);
            assert_eq!(docs.len(), 1, "{path}: expected exactly one YAML document");
            for key in ["apiVersion", "kind", "metadata.name"] {
                docs[0].str(key);
            }
        }
    }
}

#[test]
fn every_selector_selects_the_pods_of_exactly_one_deployment() {
    // In the base, the phonegate pods. In the overlay, the phonegate Service, PDB and HPA target
    // never count Redis pods, and the reverse.
    for dir in [BASE_DIR, OVERLAY_DIR] {
        let objects = kustomize(dir);
        let deployments = objects_of(&objects, "Deployment");
        let pods: Vec<(&str, BTreeMap<String, String>)> = deployments
            .map(|d| {
                (
                    d.str("metadata.name"),
                    d.map("spec.template.metadata.labels"),
                )
            })
            .collect();
        for o in &objects {
            let path = match o.str("kind") {
                "Service" => "spec.selector",
                "Deployment" | "PodDisruptionBudget" => "spec.selector.matchLabels",
                "NetworkPolicy" => "spec.podSelector.matchLabels",
                _ => continue,
            };
            let selector = o.map(path);
            let selected = pods.iter().filter(|(_, labels)| selects(&selector, labels));
            let selected: Vec<&str> = selected.map(|(name, _)| *name).collect();
            assert_eq!(
                selected.len(),
                1,
                "{}: {selector:?} selects the pods of {selected:?}",
                o.file
            );
            if o.str("kind") == "Deployment" {
                assert_eq!(
                    selected,
                    [o.str("metadata.name")],
                    "{}: selects other pods",
                    o.file
                );
            }
        }
    }
}

/// Checks the autoscaling of the Deployment `d` among `objects`: one HorizontalPodAutoscaler
/// targets it, its replicas are within that HPA's range, no PodDisruptionBudget blocks every
/// eviction at the minimum, and it requests the CPU the HPA scales on. Returns the minimum.
fn check_autoscaling(objects: &[Doc], d: &Doc) -> u64 {
    let name = d.str("metadata.name");
    let hpas = objects_of(objects, "HorizontalPodAutoscaler");
    let hpas: Vec<&Doc> = hpas
        .filter(|h| h.str("spec.scaleTargetRef.name") == name)
        .collect();
    assert_eq!(
        hpas.len(),
        1,
        "{}: expected one HPA for Deployment {name}",
        d.file
    );
    let hpa = hpas[0];
    assert_eq!(
        hpa.str("spec.scaleTargetRef.kind"),
        "Deployment",
        "{}: scaleTargetRef",
        hpa.file
    );
    let (min, max) = (hpa.u64("spec.minReplicas"), hpa.u64("spec.maxReplicas"));
    let replicas = d.u64("spec.replicas");
    assert!(
        (min..=max).contains(&replicas),
        "{}: replicas {replicas} outside {}'s {min}..={max}",
        d.file,
        hpa.file
    );
    for pdb in objects_of(objects, "PodDisruptionBudget") {
        let min_available = pdb.u64("spec.minAvailable");
        assert!(
            min_available < min,
            "{}: minAvailable {min_available} would block every eviction at {min} replicas",
            pdb.file
        );
    }
    // CPU utilisation is relative to the request (and CPU is the HPA's default metric).
    let metrics = hpa.list("spec.metrics");
    if metrics.is_empty()
        || metrics
            .iter()
            .any(|m| m.get("resource.name") == Some(&"cpu".into()))
    {
        container(d).at("resources.requests.cpu");
    }
    min
}

#[test]
fn the_base_hpa_scales_the_deployment_within_the_pdb() {
    check_autoscaling(&kustomize(BASE_DIR), &deployment());
}

#[test]
fn the_cache_key_secret_of_the_template_is_long_enough() {
    let env = pod_env(UNSET);
    let key = env
        .get("PHONEGATE__CACHE__KEY_SECRET")
        .expect("PHONEGATE__CACHE__KEY_SECRET set");
    assert!(
        key.len() >= 16,
        "{SECRET}: cache-key-secret is shorter than the 16 bytes required"
    );
}

#[test]
fn the_upstream_key_is_mounted_from_the_secret_where_api_key_file_points() {
    let (d, (secret_name, data)) = (deployment(), secret(SECRET));
    let volumes = d.list("spec.template.spec.volumes");
    let volume = volumes
        .iter()
        .find(|v| v.get("secret").is_some())
        .expect("a Secret volume");
    let vname = volume.str("name");
    assert_eq!(
        volume.str("secret.secretName"),
        secret_name,
        "{DEPLOYMENT}: volume {vname}"
    );
    assert!(
        volume.flag("secret.optional"),
        "{DEPLOYMENT}: volume {vname} must be optional: passthrough mode has no upstream key"
    );
    let item = volume
        .list("secret.items")
        .into_iter()
        .next()
        .expect("an item of the volume");
    let key = item.str("key");
    assert!(
        data.contains_key(key),
        "{DEPLOYMENT}: {vname} reads {key}, absent from {SECRET}"
    );
    let mount_path = container(&d)
        .named("volumeMounts", vname)
        .str("mountPath")
        .to_owned();
    assert_eq!(
        toml_path_mention(CONFIGMAP, "api_key_file"),
        format!("{}/{}", mount_path.trim_end_matches('/'), item.str("path")),
        "{CONFIGMAP}: upstream.api_key_file is not where {DEPLOYMENT} mounts the key"
    );
}

/// Asserts the container `c` runs as non-root (as `uid`, if given, under RuntimeDefault seccomp),
/// with a read-only root, no privilege escalation and no capabilities.
fn assert_locked_down(c: &Doc, uid: Option<u64>) {
    let mut want: Vec<(&str, Value)> = vec![("runAsNonRoot", true.into())];
    want.push(("readOnlyRootFilesystem", true.into()));
    want.push(("allowPrivilegeEscalation", false.into()));
    if let Some(uid) = uid {
        want.push(("runAsUser", uid.into()));
        want.push(("seccompProfile.type", "RuntimeDefault".into()));
    }
    for (path, value) in want {
        let path = format!("securityContext.{path}");
        assert_eq!(c.at(&path).v, value, "{}: container {path}", c.file);
    }
    let drop = c.list("securityContext.capabilities.drop");
    assert!(
        drop.iter().any(|v| v.v == "ALL"),
        "{}: capabilities.drop lacks ALL",
        c.file
    );
}

#[test]
fn the_pod_runs_as_the_image_user_with_a_locked_down_context() {
    let user = runtime_one("USER");
    let uid = user.split(':').next().and_then(|uid| uid.parse().ok());
    assert_locked_down(
        &container(&deployment()),
        Some(uid.expect("a numeric USER")),
    );
}

#[test]
fn the_memory_limit_covers_the_cache_and_upstream_bodies_in_flight() {
    let (cfg, c) = (pod_config().startup, container(&deployment()));
    let limit = c.bytes("resources.limits.memory");
    let worst =
        cfg.store.max_bytes + cfg.shield.max_in_flight as u64 * cfg.upstream.max_body_bytes as u64;
    assert!(
        limit > worst,
        "{DEPLOYMENT}: memory limit {limit} B does not exceed cache.max_bytes plus \
         upstream.max_in_flight x upstream.max_body_bytes from {CONFIGMAP} ({worst} B): the pod \
         would be OOM-killed under load"
    );
    let request = c.bytes("resources.requests.memory");
    assert!(
        request <= limit,
        "{DEPLOYMENT}: memory request above the limit"
    );
}

#[test]
fn the_deployment_runs_this_version_of_the_image() {
    let image = container(&deployment()).str("image").to_owned();
    let (repo, tag) = image.rsplit_once(':').unwrap_or_default();
    assert!(repo.ends_with("phonegate"), "{DEPLOYMENT}: image {image:?}");
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "{DEPLOYMENT}: image tag vs Cargo.toml's version"
    );
}

// ---- tests: the Dockerfile ----

#[test]
fn the_dockerfile_builds_release_and_locked_in_a_build_stage() {
    let (instructions, last) = dockerfile();
    assert!(last >= 2, "{DOCKERFILE}: expected a multi-stage build");
    let builds = instructions
        .iter()
        .filter(|i| i.op == "RUN" && i.args.contains("cargo build"));
    let builds: Vec<&Instruction> = builds.collect();
    assert!(!builds.is_empty(), "{DOCKERFILE}: no `cargo build` step");
    for b in builds {
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
}

#[test]
fn the_dockerfile_runs_a_numeric_non_root_user_stopped_by_sigterm() {
    let user = runtime_one("USER");
    assert!(
        user.split(':')
            .next()
            .unwrap_or_default()
            .parse::<u32>()
            .is_ok_and(|n| n != 0),
        "{DOCKERFILE}: USER {user:?} must be a numeric non-root uid (runAsNonRoot checks it)"
    );
    let stop = runtime("STOPSIGNAL");
    assert!(
        stop.iter().all(|s| s == "SIGTERM" || s == "15"),
        "{DOCKERFILE}: STOPSIGNAL {stop:?}; phonegate drains on SIGTERM"
    );
}

#[test]
fn the_dockerfile_points_phonegate_config_at_its_copy_of_a_repository_file() {
    let last = dockerfile().1;
    let path = docker_env()
        .remove("PHONEGATE_CONFIG")
        .expect("ENV PHONEGATE_CONFIG");
    let mut copies = docker_copies()
        .into_iter()
        .filter(|c| c.stage == last && !c.from_stage);
    let copy = copies.find(|c| c.to == path);
    let copy = copy.unwrap_or_else(|| panic!("{DOCKERFILE}: no COPY puts a file at {path}"));
    let source = copy.source;
    assert!(
        repo_root().join(&source).is_file(),
        "{DOCKERFILE}: copies {source}, which is missing"
    );
}

#[test]
fn the_dockerfile_entrypoint_is_the_binary_from_the_build_stage() {
    let entrypoint: Vec<String> =
        serde_json::from_str(&runtime_one("ENTRYPOINT")).unwrap_or_else(|_| {
            panic!(
                "{DOCKERFILE}: ENTRYPOINT must be exec form (JSON), so SIGTERM reaches phonegate"
            )
        });
    let binary = entrypoint.first().expect("a non-empty ENTRYPOINT");
    let last = dockerfile().1;
    assert!(
        docker_copies()
            .iter()
            .any(|c| c.stage == last && c.from_stage && c.to == *binary),
        "{DOCKERFILE}: ENTRYPOINT {binary} is not the binary copied from the build stage"
    );
}

#[test]
fn the_dockerfile_copies_everything_the_release_build_reads() {
    let last = dockerfile().1;
    let copies = docker_copies()
        .into_iter()
        .filter(|c| c.stage < last && !c.from_stage);
    let copied: Vec<String> = copies
        .map(|c| c.source.trim_start_matches("./").to_owned())
        .collect();
    for source in &copied {
        assert!(
            repo_root().join(source).exists(),
            "{DOCKERFILE}: COPY {source}, which is missing"
        );
    }
    // Cargo.toml and its lock; the targets Cargo.toml declares, which must exist whenever cargo
    // reads it, even for a build of the binary alone; a build script.
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    needed.extend(cargo_declared_files(&read_repo_file("Cargo.toml")));
    if repo_root().join("build.rs").exists() {
        needed.push("build.rs".to_owned());
    }
    // Files pulled into non-test code with include_str!/include_bytes!: a test module is assumed
    // to start at the file's first #[cfg(test)].
    for file in files("src", true)
        .into_iter()
        .filter(|f| f.ends_with(".rs"))
    {
        let text = read_repo_file(&file);
        let live = text.split("#[cfg(test)]").next().unwrap_or_default();
        for mac in ["include_str!(\"", "include_bytes!(\""] {
            let args = live
                .split(mac)
                .skip(1)
                .filter_map(|rest| rest.split('"').next());
            needed.extend(args.map(|arg| normalize(&format!("{file}/../{arg}"))));
        }
    }
    for rel in needed {
        let mut dirs = copied.iter().map(|c| c.trim_end_matches('/'));
        assert!(
            dirs.any(|c| rel == c || rel.starts_with(&format!("{c}/"))),
            "{DOCKERFILE}: the release build reads {rel}, but the build stage does not COPY it"
        );
    }
}

#[test]
fn cargo_declared_files_reads_target_tables() {
    let files = cargo_declared_files(
        "[package]\nname = \"x\"\nbuild = \"gen.rs\"\n\n[lib]\nname = \"x\"\n\n\
         [[bin]]\nname = \"x\"\npath = \"src/main.rs\"\n\n[[bench]]\nname = \"hit_path\"\n\
         harness = false\n\n[[example]]\nname = \"demo\"\npath = \"demos/demo.rs\"\n\n\
         [workspace]\nmembers = [\"crates/mock\"]\n\n\
         [dependencies]\nfoo = { path = \"../foo\" }\n\
         [dev-dependencies]\nmock = { path = \"crates/mock\" }\nbar = { path = \"tools/bar\" }\n",
    );
    let want = [
        "benches/hit_path.rs",
        "crates/mock",
        "demos/demo.rs",
        "gen.rs",
        "src",
        "src/main.rs",
        "tools/bar",
    ];
    assert_eq!(files, want);
}

// ---- tests: the systemd unit and its files ----

fn systemd_toml() -> String {
    repo_root()
        .join(SYSTEMD_TOML)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn the_systemd_exec_lines_pass_check_config_with_the_example_files() {
    // Every command line of the unit that runs phonegate, run for real as `check-config`, with
    // the example file in place of the installed one.
    let (toml, env) = (systemd_toml(), env_file(SYSTEMD_ENV, false));
    let mut config_path = None;
    for key in ["ExecStart", "ExecReload", "ExecStartPre", "ExecStop"] {
        for line in unit_values(key) {
            let w = words(line.trim_start_matches(['-', '@', '+', '!', ':']));
            if !w.first().is_some_and(|b| b.ends_with("/phonegate")) {
                continue;
            }
            let flag = w.iter().position(|a| a == "--config");
            let path = flag.and_then(|i| w.get(i + 1));
            let path = path.unwrap_or_else(|| panic!("{UNIT}: {key} without `--config PATH`"));
            if key == "ExecStart" {
                config_path = Some(path.clone());
            }
            let mut args: Vec<&str> = w[1..].iter().map(String::as_str).collect();
            args = args
                .into_iter()
                .map(|a| if a == path { toml.as_str() } else { a })
                .collect();
            if !args.contains(&"check-config") {
                args.push("check-config");
            }
            let out = run(&args, &env, None);
            assert!(
                out.status.success(),
                "{UNIT}: `{key}={line}` fails with {SYSTEMD_TOML} and {SYSTEMD_ENV}: {}",
                stderr(&out)
            );
        }
    }
    assert_eq!(
        config_path.as_deref(),
        Some("/etc/phonegate/phonegate.toml"),
        "{UNIT}: ExecStart reads another file than the one deploy/README.md installs"
    );
}

#[test]
fn the_systemd_unit_does_not_restart_on_bad_configuration() {
    let mut env = env_file(SYSTEMD_ENV, false);
    env.insert("PHONEGATE__LISTEN".to_owned(), "not-an-address".to_owned());
    let out = run(&["--config", &systemd_toml(), "check-config"], &env, None);
    let code = out.status.code().expect("an exit code").to_string();
    assert_eq!(
        code, "64",
        "phonegate's bad-configuration exit code changed"
    );
    let prevent = unit_values("RestartPreventExitStatus");
    assert!(
        prevent.iter().flat_map(|v| words(v)).any(|c| c == code),
        "{UNIT}: RestartPreventExitStatus {prevent:?} lacks {code}, phonegate's exit code for bad \
         configuration: a typo would restart-loop"
    );
    assert_eq!(unit_value("Restart"), "on-failure", "{UNIT}: Restart");
}

#[test]
fn the_systemd_stop_timeout_covers_the_drain_on_sigterm() {
    let cfg = load(
        SYSTEMD_TOML,
        &read_repo_file(SYSTEMD_TOML),
        &env_file(SYSTEMD_ENV, false),
    );
    let drain = cfg.startup.server.drain_timeout;
    let span = unit_value("TimeoutStopSec");
    let stop = span
        .parse()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(&span));
    let stop = stop.unwrap_or_else(|e| panic!("{UNIT}: TimeoutStopSec={span}: {e}"));
    assert!(
        stop > drain,
        "{UNIT}: TimeoutStopSec ({stop:?}) must exceed server.drain_timeout_ms from \
         {SYSTEMD_TOML} ({drain:?}), or systemd SIGKILLs requests mid-drain"
    );
    let kill = unit_values("KillSignal");
    assert!(
        kill.is_empty() || kill == ["SIGTERM"],
        "{UNIT}: KillSignal {kill:?}; phonegate drains on SIGTERM"
    );
}

#[test]
fn the_systemd_unit_is_sandboxed_and_reads_its_environment_file() {
    for (key, want) in [
        ("Type", "exec"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("EnvironmentFile", "-/etc/phonegate/phonegate.env"),
    ] {
        assert_eq!(unit_value(key), want, "{UNIT}: {key}");
    }
}

#[test]
fn systemd_credential_and_api_key_file_agree() {
    // LoadCredential=NAME:SOURCE, active or commented out (managed mode only).
    let unit = read_repo_file(UNIT);
    let mut lines = unit
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim());
    let cred = lines.find_map(|l| l.strip_prefix("LoadCredential=")?.split_once(':'));
    let (name, _) = cred.unwrap_or_else(|| panic!("{UNIT}: no LoadCredential=NAME:PATH line"));
    let unit_name = UNIT.rsplit('/').next().unwrap_or_default();
    assert_eq!(
        toml_path_mention(SYSTEMD_TOML, "api_key_file"),
        format!("/run/credentials/{unit_name}/{name}"),
        "{SYSTEMD_TOML}: upstream.api_key_file is not where systemd puts the credential {name}"
    );
}

#[test]
fn the_commented_redis_examples_of_the_systemd_files_are_valid_defaults() {
    let toml = read_repo_file(SYSTEMD_TOML);
    let lines: Vec<&str> = toml.lines().map(str::trim).collect();
    let start = lines
        .iter()
        .position(|l| *l == "# [redis]")
        .expect("a `# [redis]` example");
    // Its settings: `# key = value` and `# [table]` lines up to the next uncommented line.
    let mut block = Vec::new();
    for line in lines[start..]
        .iter()
        .take_while(|l| l.is_empty() || l.starts_with('#'))
    {
        let t = line.trim_start_matches('#').trim();
        let key = t.split_once('=').map_or("", |(k, _)| k.trim());
        if t.starts_with("[redis")
            || !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            block.push(t);
        }
    }
    assert!(block.len() > 2, "{SYSTEMD_TOML}: empty [redis] example");
    let uncommented = format!("{toml}\n{}\n", block.join("\n"));
    let env = env_file(SYSTEMD_ENV, true);
    assert!(
        env.contains_key("PHONEGATE__REDIS__URL"),
        "{SYSTEMD_ENV}: no PHONEGATE__REDIS__URL"
    );
    let plain = load(SYSTEMD_TOML, &toml, &env)
        .startup
        .redis
        .expect("a tier from the URL");
    let what = format!("{SYSTEMD_TOML} with its [redis] example uncommented");
    let mut example = load(&what, &uncommented, &env)
        .startup
        .redis
        .expect("a tier");
    example.ca_path = None;
    assert_eq!(
        example, plain,
        "{what}: its values are not the defaults it says they are"
    );
    // And the real binary, as the unit runs it.
    let file = temp_file("deploy", "config.toml", &uncommented);
    let out = run(
        &["--config", &file.to_string_lossy(), "check-config"],
        &env,
        None,
    );
    std::fs::remove_file(&file).ok();
    assert!(
        out.status.success(),
        "{what}: check-config fails: {}",
        stderr(&out)
    );
}

// ---- tests: several replicas with Redis (kubernetes-replicas-with-redis), and Redis in the base ----

#[test]
fn the_strategic_merge_merges_lists_by_key() {
    let yaml = |text: &str| serde_norway::from_str::<Value>(text).expect("YAML");
    let mut target = yaml(
        "spec: {replicas: 2, template: {spec: {containers: [{name: a, image: x, env: [
           {name: K, valueFrom: {secretKeyRef: {key: k, optional: true}}}, {name: L, value: l}]}]}}}",
    );
    let patch = yaml(
        "spec: {replicas: 3, template: {spec: {containers: [{name: a, env: [
           {name: K, valueFrom: {secretKeyRef: {optional: false}}}]}]}}}",
    );
    strategic_merge("inline", "", &mut target, &patch);
    let want = yaml(
        "spec: {replicas: 3, template: {spec: {containers: [{name: a, image: x, env: [
           {name: K, valueFrom: {secretKeyRef: {key: k, optional: false}}}, {name: L, value: l}]}]}}}",
    );
    assert_eq!(target, want);
    assert_eq!(normalize(&format!("{OVERLAY_DIR}/../kubernetes")), BASE_DIR);
}

#[test]
fn the_overlay_builds_on_the_base() {
    let k = manifest(
        &format!("{OVERLAY_DIR}/kustomization.yaml"),
        "Kustomization",
    );
    let resources = k
        .list("resources")
        .into_iter()
        .map(|r| r.typed("", Value::as_str, "a path").to_owned());
    let mut resources = resources.map(|r| normalize(&format!("{OVERLAY_DIR}/{r}")));
    assert!(
        resources.any(|r| r == BASE_DIR),
        "{OVERLAY_DIR}: does not build on {BASE_DIR}"
    );
    let manifests = files(OVERLAY_DIR, false)
        .into_iter()
        .filter(|f| f.ends_with(".yaml"));
    assert!(
        manifests.count() > 4,
        "{OVERLAY_DIR}: expected its manifests"
    );
    // Everything of the base is still there, plus the overlay's own objects.
    let (base, built) = (kustomize(BASE_DIR), kustomize(OVERLAY_DIR));
    for o in &base {
        object(&built, o.str("kind"), o.str("metadata.name"));
    }
    assert!(
        built.len() > base.len(),
        "{OVERLAY_DIR}: adds nothing to the base"
    );
}

#[test]
fn the_overlay_runs_at_least_three_replicas_within_its_hpa_range() {
    let d = overlay_phonegate();
    let replicas = d.u64("spec.replicas");
    assert!(
        replicas >= 3,
        "{}: {replicas} replicas; the overlay is about several",
        d.file
    );
    let min = check_autoscaling(&kustomize(OVERLAY_DIR), &d);
    assert!(
        min >= 3,
        "{OVERLAY_DIR}: minReplicas {min}: the HPA would scale below 3 replicas"
    );
}

#[test]
fn the_overlay_requires_redis_url() {
    let var = container(&overlay_phonegate()).named("env", "PHONEGATE__REDIS__URL");
    assert!(
        !var.flag("valueFrom.secretKeyRef.optional"),
        "{}: redis-url must be required in the overlay, or a Secret without it quietly runs \
         the replicas without the shared tier",
        var.file
    );
}

#[test]
fn the_overlay_pods_get_the_shared_tier_and_the_shared_key() {
    let (_, data) = secret(OVERLAY_SECRET);
    let what = format!("{CONFIGMAP} with the env of the overlay");
    let cfg = load(&what, &configmap_toml(), &overlay_env(UNSET)).startup;
    let redis = cfg.redis.expect("the shared tier on");
    let urls: Vec<&str> = redis.urls.iter().map(|u| u.expose()).collect();
    assert_eq!(
        urls,
        [&data["redis-url"]],
        "{OVERLAY_SECRET}: redis-url is not redis.url"
    );
    assert!(!redis.cluster, "{CONFIGMAP}: redis.cluster with one Redis");
    assert_eq!(
        cfg.store.key_secret.as_ref().map(|s| s.expose()),
        Some(data["cache-key-secret"].as_str()),
        "{OVERLAY_SECRET}: cache-key-secret does not reach cache.key_secret"
    );
}

#[test]
fn the_overlay_container_passes_check_config_without_printing_the_redis_password() {
    let out = run(
        &["check-config"],
        &overlay_env(UNSET),
        Some(&configmap_toml()),
    );
    assert!(
        out.status.success(),
        "{OVERLAY_DIR}: check-config fails: {}",
        stderr(&out)
    );
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let password = &secret(OVERLAY_SECRET).1["redis-password"];
    assert!(
        !printed.contains(password),
        "check-config printed the Redis password"
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        shown["redis"]["url"].is_string(),
        "{OVERLAY_DIR}: no redis.url in {shown}"
    );
}

#[test]
fn the_overlay_without_the_shared_key_is_refused_with_exit_64_naming_it() {
    // Without the shared key the replicas would not agree: start-up refuses, naming it.
    let mut env = overlay_env(UNSET);
    env.remove("PHONEGATE__CACHE__KEY_SECRET");
    let out = run(&["check-config"], &env, Some(&configmap_toml()));
    assert_eq!(
        out.status.code(),
        Some(64),
        "redis.url without cache.key_secret must exit 64"
    );
    assert!(
        stderr(&out).contains("cache.key_secret"),
        "no cache.key_secret in {}",
        stderr(&out)
    );
}

/// The overlay's redis-url as the Redis client (phonegate's) reads it: host, port, password.
fn overlay_redis_url() -> (String, u16, Option<String>) {
    let url = secret(OVERLAY_SECRET)
        .1
        .remove("redis-url")
        .expect("redis-url in the Secret");
    let info = redis::IntoConnectionInfo::into_connection_info(url.as_str());
    let info = info.unwrap_or_else(|e| panic!("{OVERLAY_SECRET}: redis-url: {e}"));
    let password = info.redis_settings().password().map(str::to_owned);
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port, password),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, password),
        other => panic!("{OVERLAY_SECRET}: redis-url is not TCP: {other:?}"),
    }
}

#[test]
fn the_overlay_redis_url_leads_to_the_port_redis_listens_on() {
    let ((host, port, _), built) = (overlay_redis_url(), kustomize(OVERLAY_DIR));
    let (d, c, args) = redis_of(&built);
    let listens = redis_port(&args);
    assert!(
        c.list("ports")
            .iter()
            .any(|p| p.u64("containerPort") == u64::from(listens)),
        "{}: no containerPort is the port redis-server listens on ({listens})",
        c.file
    );
    // The URL's host is the Redis Service (name, or name.namespace[.svc...]), its port one of
    // the Service's ports, and that port leads to the port redis-server listens on.
    let service = host.split('.').next().unwrap_or_default();
    let svc = object(&built, "Service", service);
    assert!(
        selects(
            &svc.map("spec.selector"),
            &d.map("spec.template.metadata.labels")
        ),
        "{}: Service {service} (the host of redis-url) does not select the Redis pods",
        svc.file
    );
    let ports = svc.list("spec.ports");
    let sport = ports.iter().find(|p| p.u64("port") == u64::from(port));
    let sport = sport.unwrap_or_else(|| panic!("{}: {service} has no port {port}", svc.file));
    let target = sport.get("targetPort").map_or(port, |t| c.port(t));
    assert_eq!(
        target, listens,
        "{}: port {port} does not lead to redis-server",
        svc.file
    );
}

#[test]
fn the_overlay_redis_url_has_the_password_redis_requires_from_the_secret() {
    let (_, c, args) = redis_of(&kustomize(OVERLAY_DIR));
    let required = arg(&args, "--requirepass");
    assert!(
        required.is_some(),
        "{}: redis-server without --requirepass",
        c.file
    );
    let (_, data) = secret(OVERLAY_SECRET);
    let password = data.get("redis-password").map(String::as_str);
    assert_eq!(
        required, password,
        "{}: --requirepass is not redis-password",
        c.file
    );
    let in_url = overlay_redis_url().2;
    assert_eq!(
        in_url.as_deref(),
        required,
        "{OVERLAY_SECRET}: redis-url has another password"
    );
}

#[test]
fn the_overlay_network_policy_lets_phonegate_pods_reach_redis() {
    let built = kustomize(OVERLAY_DIR);
    let (redis, c, args) = redis_of(&built);
    let listens = redis_port(&args);
    let phonegate = object(&built, "Deployment", "phonegate").map("spec.template.metadata.labels");
    let redis = redis.map("spec.template.metadata.labels");
    let policies = objects_of(&built, "NetworkPolicy");
    let policies = policies.filter(|np| selects(&np.map("spec.podSelector.matchLabels"), &redis));
    let rules: Vec<Doc> = policies.flat_map(|np| np.list("spec.ingress")).collect();
    let admitted = rules.iter().any(|rule| {
        let from = |f: &Doc| {
            f.get("podSelector").is_some() && selects(&f.map("podSelector.matchLabels"), &phonegate)
        };
        let to = |p: &Doc| c.port(&p.at("port").v) == listens;
        rule.list("from").iter().any(from) && rule.list("ports").iter().any(to)
    });
    assert!(
        admitted,
        "{OVERLAY_DIR}: no NetworkPolicy lets phonegate pods reach Redis on {listens}"
    );
}

#[test]
fn every_secret_key_the_manifests_read_is_in_their_secret_template() {
    let mut documented = BTreeMap::new();
    for (dir, secret_file) in [(BASE_DIR, SECRET), (OVERLAY_DIR, OVERLAY_SECRET)] {
        let (secret_name, data) = secret(secret_file);
        let commented = commented_secret_keys(secret_file);
        // (file, Secret name, key, optional) of every env reference and Secret volume item.
        let mut refs = Vec::new();
        for d in objects_of(&kustomize(dir), "Deployment") {
            for c in d.list("spec.template.spec.containers") {
                for r in c
                    .list("env")
                    .iter()
                    .filter_map(|v| v.opt("valueFrom.secretKeyRef"))
                {
                    let (name, key) = (r.str("name").to_owned(), r.str("key").to_owned());
                    refs.push((r.file.clone(), name, key, r.flag("optional")));
                }
            }
            for v in d
                .list("spec.template.spec.volumes")
                .iter()
                .filter_map(|v| v.opt("secret"))
            {
                for item in v.list("items") {
                    let (name, key) = (v.str("secretName").to_owned(), item.str("key").to_owned());
                    refs.push((v.file.clone(), name, key, v.flag("optional")));
                }
            }
        }
        assert!(!refs.is_empty(), "{dir}: reads no Secret");
        for (file, name, key, optional) in refs {
            assert_eq!(
                name, secret_name,
                "{file}: reads another Secret than {secret_file}"
            );
            assert!(
                data.contains_key(&key) || optional && commented.contains(&key),
                "{file}: reads the key {key:?} (optional: {optional}), which {secret_file} neither \
                 sets nor, for an optional key, shows commented out"
            );
        }
        documented.insert(
            secret_file,
            data.into_keys().chain(commented).collect::<BTreeSet<_>>(),
        );
    }
    // The overlay's template is the base's plus the Redis keys, set or commented.
    let missing: Vec<_> = documented[SECRET]
        .difference(&documented[OVERLAY_SECRET])
        .collect();
    assert!(
        missing.is_empty(),
        "{OVERLAY_SECRET}: lacks the base template's keys {missing:?}"
    );
}

#[test]
fn the_overlay_redis_is_one_bounded_ephemeral_pod() {
    let (d, c, args) = redis_of(&kustomize(OVERLAY_DIR));
    let file = &c.file;
    assert_eq!(
        d.u64("spec.replicas"),
        1,
        "{file}: several Redis pods behind one Service are separate caches, with separate locks \
         and generations"
    );
    let given = arg(&args, "--maxmemory").unwrap_or_default();
    let maxmemory = scaled(&given.to_ascii_lowercase(), &REDIS_UNITS).unwrap_or(0);
    assert!(
        maxmemory > 0,
        "{file}: --maxmemory {given:?}: Redis would grow until OOM-killed"
    );
    let policy = arg(&args, "--maxmemory-policy").unwrap_or("noeviction");
    assert!(
        ["volatile-lru", "volatile-lfu"].contains(&policy),
        "{file}: --maxmemory-policy {policy}: full, Redis must evict entries (an evicted entry is \
         only a miss) but never phonegate's purge counters, which have no expiry"
    );
    assert_eq!(
        arg(&args, "--save"),
        Some(""),
        "{file}: --save \"\" turns RDB snapshots off"
    );
    assert_eq!(
        arg(&args, "--appendonly"),
        Some("no"),
        "{file}: --appendonly"
    );
    let limit = c.bytes("resources.limits.memory");
    assert!(
        limit >= maxmemory + maxmemory / 4,
        "{file}: memory limit {limit} B leaves too little above maxmemory ({maxmemory} B) for \
         Redis's own overhead"
    );
}

#[test]
fn the_overlay_redis_container_is_tagged_and_locked_down() {
    let (_, c, _) = redis_of(&kustomize(OVERLAY_DIR));
    let image = c.str("image");
    let tagged = image
        .rsplit_once(':')
        .is_some_and(|(_, tag)| !tag.is_empty());
    assert!(tagged, "{}: image {image} without a tag", c.file);
    assert_locked_down(&c, None);
}

#[test]
fn the_overlay_phonegate_pods_get_no_service_links() {
    // A Service named phonegate-... would inject PHONEGATE_..._SERVICE_HOST and friends.
    let d = overlay_phonegate();
    let links = d.at("spec.template.spec.enableServiceLinks").v;
    assert_eq!(links, false, "{}: enableServiceLinks", d.file);
}

#[tokio::test]
async fn overlay_pods_stay_ready_and_live_while_redis_is_unreachable() {
    let d = overlay_phonegate();
    // A loopback port nobody listens on: the Redis Deployment not up yet, or down.
    let closed = free_addr().port();
    let mut env = overlay_env(UNSET);
    let url = format!("redis://:{PLACEHOLDER}@127.0.0.1:{closed}/0");
    env.insert("PHONEGATE__REDIS__URL".into(), url);
    let cfg = load(&d.file, &configmap_toml(), &env);
    assert!(cfg.startup.redis.is_some());
    let state = AppState::new(cfg).expect("state with an unreachable Redis");
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = container(&d)
            .str(&format!("{probe}.httpGet.path"))
            .to_owned();
        let status = tokio::time::timeout(Duration::from_secs(5), admin_get(&state, &path)).await;
        let status = status.unwrap_or_else(|_| panic!("{}: {probe} {path} hangs", d.file));
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: {probe} {path} fails while Redis is unreachable; Redis down must only be a \
             slower path, not pods leaving the Service",
            d.file
        );
    }
}

#[test]
fn the_base_runs_without_redis_and_uses_it_when_the_secret_has_redis_url() {
    assert!(
        pod_config().startup.redis.is_none(),
        "{DEPLOYMENT}: the base must run without Redis"
    );
    let var = container(&deployment()).named("env", "PHONEGATE__REDIS__URL");
    let r = var.at("valueFrom.secretKeyRef");
    assert!(
        r.flag("optional"),
        "{DEPLOYMENT}: redis-url must be optional in the base"
    );
    let key = r.str("key");
    assert!(
        !secret(SECRET).1.contains_key(key),
        "{SECRET}: sets {key}, so the template as given would need a Redis"
    );
    // The same Deployment with the overlay's redis-url in its Secret.
    let url = secret(OVERLAY_SECRET)
        .1
        .remove(key)
        .expect("redis-url in the overlay's Secret");
    let env = pod_env(&|name| (name == "PHONEGATE__REDIS__URL").then(|| url.clone()));
    let cfg = load(DEPLOYMENT, &configmap_toml(), &env).startup;
    let urls: Vec<&str> = cfg
        .redis
        .iter()
        .flat_map(|r| &r.urls)
        .map(|u| u.expose())
        .collect();
    assert_eq!(
        urls,
        [url.as_str()],
        "{DEPLOYMENT}: {key} does not reach redis.url"
    );
}
