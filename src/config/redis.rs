//! The `[redis]` section: the optional shared tier that makes several replicas one cache and one
//! shield (see [`crate::tier`]).
//!
//! Off by default. With `redis.url` set, `cache.key_secret` must be set too: replicas file
//! entries and budgets under keyed fingerprints of credentials, and those only agree when every
//! replica holds the same key.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::mask::Show;
use super::validate::{millis, non_empty, positive_ms};
use super::{ConfigError, Secret, invalid};

/// Longest `redis.prefix`: it is repeated in every key.
const MAX_PREFIX_LEN: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    #[serde(default)]
    url: Option<String>,
    cluster: bool,
    timeout_ms: u64,
    prefix: String,
    #[serde(default)]
    password_file: Option<String>,
    #[serde(default)]
    ca_path: Option<String>,
    fill_wait_ms: u64,
    breaker: RawRedisBreaker,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedisBreaker {
    failures: u64,
    open_ms: u64,
}

/// The shared Redis tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URLs: one server, or the seed nodes of a cluster. Secret, since
    /// a URL may carry a password. Default is unset (no shared tier).
    pub urls: Vec<Secret>,
    /// Whether `urls` are Redis Cluster seed nodes. Default is `false`.
    pub cluster: bool,
    /// Deadline of one Redis command; slower counts as a failure (a lookup: a miss). Default is
    /// 50 ms.
    pub timeout: Duration,
    /// Prefix of every key phonegate writes. Default is `phonegate:`.
    pub prefix: String,
    /// Password read from `redis.password_file`, overriding one in the URL. Default is none.
    pub password: Option<Secret>,
    /// Extra CA certificates (PEM) to trust for `rediss://`. Default is none (web roots only).
    pub ca_path: Option<PathBuf>,
    /// How long a replica waits for another replica's fetch of the same entry before it fetches
    /// itself. Default is 2 s.
    pub fill_wait: Duration,
    /// Consecutive Redis failures that open the Redis breaker. Default is 3.
    pub breaker_failures: u32,
    /// How long the Redis breaker stays open before one probe. Default is 1 s.
    pub breaker_open: Duration,
}

impl RedisConfig {
    /// The URLs with any password replaced by `(hidden)`, for `/config` and logs.
    pub fn masked_urls(&self) -> Vec<String> {
        self.urls.iter().map(|u| mask_url(u.expose())).collect()
    }

    /// The section as JSON, secrets shown as `show` says.
    pub(super) fn render(this: Option<&RedisConfig>, show: Show) -> serde_json::Value {
        use serde_json::json;
        match this {
            None => json!({
                "url": null,
                "cluster": false,
                "timeout_ms": null,
                "prefix": null,
            }),
            Some(c) => json!({
                "url": match show {
                    Show::Masked => json!(c.masked_urls().join(",")),
                    Show::Digest => show.secret(Some(&Secret::new(
                        c.urls.iter().map(Secret::expose).collect::<Vec<_>>().join(","),
                    ))),
                },
                "cluster": c.cluster,
                "timeout_ms": c.timeout.as_millis() as u64,
                "prefix": c.prefix,
                "password_file": show.secret(c.password.as_ref()),
                "ca_path": c.ca_path.as_ref().map(|p| p.display().to_string()),
                "fill_wait_ms": c.fill_wait.as_millis() as u64,
                "breaker": {
                    "failures": c.breaker_failures,
                    "open_ms": c.breaker_open.as_millis() as u64,
                },
            }),
        }
    }
}

/// `redis://user:pass@host:port/db` → `redis://user:(hidden)@host:port/db`.
fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(hidden)".to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:(hidden)@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

impl RawRedis {
    /// `key_secret_set`: whether `cache.key_secret` is set (required with a URL).
    pub(super) fn validate(self, key_secret_set: bool) -> Result<Option<RedisConfig>, ConfigError> {
        let Some(url) = non_empty(self.url) else {
            return Ok(None);
        };
        if !key_secret_set {
            return Err(invalid(
                "cache.key_secret",
                "",
                "must be set when redis.url is: every replica must derive the same fingerprints \
                 (set the same value of at least 16 bytes on each)",
            ));
        }
        let mut urls = Vec::new();
        for part in url.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let shown = mask_url(part);
            if !(part.starts_with("redis://") || part.starts_with("rediss://")) {
                return Err(invalid(
                    "redis.url",
                    shown,
                    "expected redis://[user:pass@]host:port[/db] or rediss://...",
                ));
            }
            if let Err(error) = redis::IntoConnectionInfo::into_connection_info(part) {
                // The client's message may quote the URL; say what kind of problem it was only.
                return Err(invalid(
                    "redis.url",
                    shown,
                    format!("not a usable Redis URL ({:?})", error.kind()),
                ));
            }
            urls.push(Secret(part.to_owned()));
        }
        if urls.is_empty() {
            return Err(invalid("redis.url", "", "no URL given"));
        }
        if urls.len() > 1 && !self.cluster {
            return Err(invalid(
                "redis.url",
                urls.iter()
                    .map(|u| mask_url(u.expose()))
                    .collect::<Vec<_>>()
                    .join(","),
                "several URLs are only allowed with redis.cluster = true",
            ));
        }
        let prefix = self.prefix;
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX_LEN
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        {
            return Err(invalid(
                "redis.prefix",
                &prefix,
                format!(
                    "must be 1 to {MAX_PREFIX_LEN} printable ASCII characters without spaces or \
                     braces (braces would change which cluster slot a key lands in)"
                ),
            ));
        }
        let password = match non_empty(self.password_file) {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(
                        "redis.password_file",
                        &path,
                        format!("cannot be read: {}", e.kind()),
                    )
                })?;
                let password = text.trim().to_owned();
                if password.is_empty() {
                    return Err(invalid("redis.password_file", &path, "the file is empty"));
                }
                Some(Secret(password))
            }
        };
        let breaker_failures = u32::try_from(self.breaker.failures)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "redis.breaker.failures",
                    self.breaker.failures,
                    "must be a positive number",
                )
            })?;
        Ok(Some(RedisConfig {
            urls,
            cluster: self.cluster,
            timeout: positive_ms("redis.timeout_ms", self.timeout_ms)?,
            prefix,
            password,
            ca_path: non_empty(self.ca_path).map(PathBuf::from),
            fill_wait: millis("redis.fill_wait_ms", self.fill_wait_ms)?,
            breaker_failures,
            breaker_open: positive_ms("redis.breaker.open_ms", self.breaker.open_ms)?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const KEY: &str = "[cache]\nkey_secret = \"0123456789abcdef-shared\"\n";

    #[test]
    fn off_by_default() {
        let c = Config::from_toml("").unwrap();
        assert!(c.startup.redis.is_none());
    }

    #[test]
    fn a_url_needs_the_key_secret() {
        let err = Config::from_toml("[redis]\nurl = \"redis://127.0.0.1:6379\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.key_secret"), "{err}");
        let c = Config::from_toml(&format!("{KEY}[redis]\nurl = \"redis://127.0.0.1:6379\"\n"))
            .unwrap();
        let r = c.startup.redis.unwrap();
        assert_eq!(r.timeout, Duration::from_millis(50));
        assert_eq!(r.prefix, "phonegate:");
        assert!(!r.cluster);
    }

    #[test]
    fn bad_urls_and_prefixes_are_refused_without_echoing_passwords() {
        let err = Config::from_toml(&format!(
            "{KEY}[redis]\nurl = \"http://u:hunter2@127.0.0.1:6379\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("redis.url"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = Config::from_toml(&format!(
            "{KEY}[redis]\nurl = \"redis://a:6379,redis://b:6379\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("redis.cluster"), "{err}");
        let err = Config::from_toml(&format!(
            "{KEY}[redis]\nurl = \"redis://a:6379\"\nprefix = \"pg{{x}}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("redis.prefix"), "{err}");
    }

    #[test]
    fn cluster_seeds_and_masking() {
        let c = Config::from_toml(&format!(
            "{KEY}[redis]\nurl = \"redis://:pw1@a:7000, redis://b:7001\"\ncluster = true\n"
        ))
        .unwrap();
        let r = c.startup.redis.as_ref().unwrap();
        assert_eq!(r.urls.len(), 2);
        assert_eq!(r.masked_urls()[0], "redis://:(hidden)@a:7000");
        let shown = format!("{:?} {}", c, c.to_masked_json());
        assert!(!shown.contains("pw1"), "{shown}");
    }
}
