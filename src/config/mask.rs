//! The effective configuration as JSON in the shape of the TOML file, for `phonegate
//! check-config` and the admin `/config`, with every secret hidden; and the names of the
//! start-up settings that differ between two configurations, for a reload to report.

use serde_json::{Value, json};

use super::{AuthConfig, Config, LogFormat, RedisConfig, Secret};
use crate::redact;

/// How a secret setting is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Show {
    /// `"(set)"` or `null`: what may be printed.
    Masked,
    /// A digest of the value: only for comparing two renderings in memory, never printed.
    Digest,
}

impl Show {
    pub(super) fn secret(self, secret: Option<&Secret>) -> Value {
        match (secret, self) {
            (None, _) => Value::Null,
            (Some(_), Show::Masked) => json!("(set)"),
            (Some(s), Show::Digest) => json!(blake3::hash(s.expose().as_bytes()).to_hex().as_str()),
        }
    }
}

impl Config {
    /// The effective configuration as JSON, every secret masked: what `phonegate check-config`
    /// prints and the admin `/config` answers.
    pub fn to_masked_json(&self) -> Value {
        render(self, Show::Masked)
    }

    /// The dotted names (`cache.max_bytes`, `tls.cert_path`) of start-up settings that differ in
    /// `new`: what a reload cannot apply and should say needs a restart.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<String> {
        let probe = Config {
            startup: new.startup.clone(),
            live: self.live.clone(),
        };
        let mut changed = Vec::new();
        diff(
            "",
            &render(self, Show::Digest),
            &render(&probe, Show::Digest),
            &mut changed,
        );
        changed
    }
}

/// Leaf paths whose values differ between `old` and `new` (objects are walked, anything else is
/// compared whole).
fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff(
                    &child,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if old != new => out.push(path.to_owned()),
        _ => {}
    }
}

fn render(config: &Config, show: Show) -> Value {
    let (startup, live) = (&config.startup, &config.live);
    let secs = |d: std::time::Duration| d.as_secs();
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    let auth = match &live.auth {
        AuthConfig::Passthrough => json!({ "mode": "passthrough", "clients": [] }),
        AuthConfig::Managed { clients, .. } => json!({
            "mode": "managed",
            "clients": clients.iter().map(|c| {
                let mut scopes = Vec::new();
                if c.read { scopes.push("read"); }
                if c.write { scopes.push("write"); }
                json!({ "name": c.name, "token_sha256": "(set)", "scopes": scopes })
            }).collect::<Vec<_>>(),
        }),
    };
    let api_key = match &live.auth {
        AuthConfig::Passthrough => None,
        AuthConfig::Managed { api_key, .. } => Some(api_key),
    };
    let (upstream, shield, store, limits) = (
        &startup.upstream,
        &startup.shield,
        &startup.store,
        &live.limits,
    );
    let path = |p: Option<&std::path::Path>| p.map(|p| p.display().to_string());
    json!({
        "listen": startup.listen.to_string(),
        "admin": {
            "listen": startup.admin_listen.to_string(),
            "token": show.secret(live.admin_token.as_ref()),
        },
        "upstream": {
            "url": upstream.base_url,
            "timeout_ms": ms(upstream.timeout),
            "max_body_bytes": upstream.max_body_bytes,
            "ca_path": path(upstream.ca_path.as_deref()),
            "client_cert_path": path(upstream.client_cert.as_ref().map(|t| t.cert_path.as_path())),
            "client_key_path": path(upstream.client_cert.as_ref().map(|t| t.key_path.as_path())),
            "max_in_flight": shield.max_in_flight,
            "queue_timeout_ms": ms(shield.queue_timeout),
            "max_retry_after_secs": secs(shield.max_retry_after),
            "breaker": {
                "failures": shield.breaker_failures,
                "open_secs": secs(shield.breaker_open),
            },
            "api_key": show.secret(api_key),
        },
        "cache": {
            "ttl_secs": secs(live.freshness.ttl),
            "negative_ttl_secs": secs(live.freshness.negative_ttl),
            "auth_failure_ttl_secs": secs(live.freshness.auth_failure_ttl),
            "list_ttl_secs": secs(live.freshness.list_ttl),
            "stale_while_revalidate_secs": secs(store.stale_while_revalidate),
            "stale_if_error_secs": secs(store.stale_if_error),
            "max_bytes": store.max_bytes,
            "key_secret": show.secret(store.key_secret.as_ref()),
        },
        "redact": {
            "mode": match live.redact.mode { redact::Mode::Mask => "mask", redact::Mode::Remove => "remove" },
            "extra_fields": live.redact.extra_fields,
            "allow_fields": live.redact.allow_fields,
            "max_depth": live.redact.max_depth,
        },
        "limits": {
            "misses_per_sec_per_key": limits.misses_per_sec_per_key,
            "miss_burst": limits.miss_burst,
            "requests_per_sec_per_key": limits.requests_per_sec_per_key,
            "request_burst": limits.request_burst,
            "max_tracked_keys": shield.max_tracked_keys,
            "upstream_requests_per_sec": limits.upstream_requests_per_sec,
            "upstream_burst": limits.upstream_burst,
        },
        "auth": auth,
        "cors": { "allowed_origins": live.cors_allowed_origins },
        "log": {
            "format": match startup.log_format { LogFormat::Json => "json", LogFormat::Pretty => "pretty" },
            "level": live.log_level,
        },
        "tls": {
            "cert_path": path(startup.tls.as_ref().map(|t| t.cert_path.as_path())),
            "key_path": path(startup.tls.as_ref().map(|t| t.key_path.as_path())),
        },
        "server": {
            "header_timeout_ms": ms(startup.server.header_timeout),
            "idle_timeout_ms": ms(startup.server.idle_timeout),
            "drain_timeout_ms": ms(startup.server.drain_timeout),
            "max_connections": startup.server.max_connections,
            "worker_threads": startup.server.worker_threads.unwrap_or(0),
            "request_timeout_ms": ms(live.requests.timeout),
            "max_request_body_bytes": live.requests.max_body_bytes,
        },
        "redis": RedisConfig::render(startup.redis.as_ref(), show),
        "otel": startup.otel.render(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn the_masked_view_hides_every_secret() {
        let c = Config::from_toml(
            "[cache]\nkey_secret = \"0123456789abcdef-very-secret\"\n\
             [upstream]\napi_key = \"sk-upstream-hidden\"\n\
             [auth]\nmode = \"managed\"\n\
             [[auth.clients]]\nname = \"web\"\n\
             token_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n\
             scopes = [\"read\"]\n",
        )
        .unwrap();
        let text = c.to_masked_json().to_string();
        for secret in ["very-secret", "sk-upstream-hidden", "9f86d081"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let v = c.to_masked_json();
        assert_eq!(v["cache"]["key_secret"], "(set)");
        assert_eq!(v["auth"]["clients"][0]["name"], "web");
        assert_eq!(v["cache"]["ttl_secs"], 60);
        assert_eq!(v["upstream"]["breaker"]["failures"], 5);
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let c = Config::from_toml(
            "[cache]\nkey_secret = \"0123456789abcdef-very-secret\"\n\
             [admin]\ntoken = \"admin-token-0123456789\"\n\
             [upstream]\napi_key = \"sk-upstream-hidden\"\n\
             [auth]\nmode = \"managed\"\n\
             [[auth.clients]]\nname = \"web\"\n\
             token_sha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n\
             scopes = [\"read\"]\n",
        )
        .unwrap();
        let shown = format!("{c:?}");
        for secret in ["very-secret", "admin-token", "sk-upstream", "159, 134, 208"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("web"), "the client's name is shown");
    }
}
