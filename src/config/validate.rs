//! From raw settings to a [`Config`]: every check, and the split into what is fixed at start-up
//! and what a reload may change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{
    RawAuth, RawCache, RawClient, RawLimits, RawLog, RawRedact, RawServer, RawSettings, RawTls,
    RawUpstream,
};
use super::{
    AuthConfig, ClientConfig, Config, ConfigError, FreshnessConfig, LimitsConfig, LiveConfig,
    LogFormat, RedactConfig, RequestConfig, Secret, ServerConfig, ShieldConfig, StartupConfig,
    StoreConfig, TlsConfig, UpstreamConfig, invalid,
};
use crate::redact;

/// Minimum length of `cache.key_secret` and `admin.token`: a shorter key makes fingerprints
/// guessable offline.
const MIN_KEY_SECRET_LEN: usize = 16;

/// More runtime workers than this is a typo, not a tuning.
const MAX_WORKER_THREADS: u64 = 1024;

/// serde_json refuses documents nested deeper than 128 levels, so a larger limit could never apply.
const MAX_REDACT_DEPTH: usize = 128;

impl RawSettings {
    pub(super) fn validate(self) -> Result<Config, ConfigError> {
        let shield = validate_shield(&self.upstream, &self.limits)?;
        let limits = validate_limits(&self.limits)?;
        let auth = validate_auth(self.auth, &self.upstream)?;
        let cors_allowed_origins = validate_origins(self.cors.allowed_origins)?;
        let (store, freshness) = self.cache.validate()?;
        let redis = self.redis.validate(store.key_secret.is_some())?;
        let (log_format, log_level) = self.log.validate()?;
        let (server, requests) = self.server.validate()?;
        let admin_token = match non_empty(self.admin.token) {
            Some(token) if token.len() < MIN_KEY_SECRET_LEN => {
                return Err(invalid(
                    "admin.token",
                    "(hidden)",
                    format!("must be at least {MIN_KEY_SECRET_LEN} bytes long"),
                ));
            }
            token => token.map(Secret),
        };
        Ok(Config {
            startup: StartupConfig {
                listen: parse_addr("listen", &self.listen)?,
                admin_listen: parse_addr("admin.listen", &self.admin.listen)?,
                upstream: self.upstream.validate()?,
                store,
                shield,
                log_format,
                tls: self.tls.validate()?,
                server,
                redis,
                otel: self.otel.validate()?,
            },
            live: LiveConfig {
                admin_token,
                freshness,
                redact: self.redact.validate()?,
                limits,
                auth,
                cors_allowed_origins,
                requests,
                log_level,
            },
        })
    }
}

impl RawServer {
    fn validate(self) -> Result<(ServerConfig, RequestConfig), ConfigError> {
        let server = ServerConfig {
            header_timeout: positive_ms("server.header_timeout_ms", self.header_timeout_ms)?,
            idle_timeout: positive_ms("server.idle_timeout_ms", self.idle_timeout_ms)?,
            drain_timeout: millis("server.drain_timeout_ms", self.drain_timeout_ms)?,
            max_connections: at_least_one("server.max_connections", self.max_connections)?,
            worker_threads: match self.worker_threads {
                0 => None,
                n @ 1..=MAX_WORKER_THREADS => usize::try_from(n).ok(),
                n => {
                    return Err(invalid(
                        "server.worker_threads",
                        n,
                        format!("must be 0 (one per core) or at most {MAX_WORKER_THREADS}"),
                    ));
                }
            },
        };
        let requests = RequestConfig {
            timeout: positive_ms("server.request_timeout_ms", self.request_timeout_ms)?,
            max_body_bytes: at_least_one(
                "server.max_request_body_bytes",
                self.max_request_body_bytes,
            )?,
        };
        Ok((server, requests))
    }
}

impl RawUpstream {
    fn validate(self) -> Result<UpstreamConfig, ConfigError> {
        let base_url = parse_base_url(&self.url)?;
        let max_body_bytes = usize::try_from(self.max_body_bytes)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "upstream.max_body_bytes",
                    self.max_body_bytes,
                    "must be a positive number of bytes",
                )
            })?;
        Ok(UpstreamConfig {
            base_url,
            timeout: positive_ms("upstream.timeout_ms", self.timeout_ms)?,
            max_body_bytes,
            ca_path: non_empty(self.ca_path).map(PathBuf::from),
            client_cert: key_pair(
                ("upstream.client_cert_path", self.client_cert_path),
                ("upstream.client_key_path", self.client_key_path),
            )?,
        })
    }
}

impl RawCache {
    fn validate(self) -> Result<(StoreConfig, FreshnessConfig), ConfigError> {
        let key_secret = non_empty(self.key_secret);
        if let Some(secret) = &key_secret {
            if secret.len() < MIN_KEY_SECRET_LEN {
                return Err(invalid(
                    "cache.key_secret",
                    "(hidden)",
                    format!("must be at least {MIN_KEY_SECRET_LEN} bytes long"),
                ));
            }
        }
        let store = StoreConfig {
            stale_while_revalidate: seconds(
                "cache.stale_while_revalidate_secs",
                self.stale_while_revalidate_secs,
            )?,
            stale_if_error: seconds("cache.stale_if_error_secs", self.stale_if_error_secs)?,
            max_bytes: self.max_bytes,
            key_secret: key_secret.map(Secret),
        };
        let freshness = FreshnessConfig {
            ttl: seconds("cache.ttl_secs", self.ttl_secs)?,
            negative_ttl: seconds("cache.negative_ttl_secs", self.negative_ttl_secs)?,
            auth_failure_ttl: seconds("cache.auth_failure_ttl_secs", self.auth_failure_ttl_secs)?,
            list_ttl: seconds("cache.list_ttl_secs", self.list_ttl_secs)?,
        };
        Ok((store, freshness))
    }
}

impl RawRedact {
    fn validate(self) -> Result<RedactConfig, ConfigError> {
        let mode = match self.mode.to_ascii_lowercase().as_str() {
            "mask" => redact::Mode::Mask,
            "remove" => redact::Mode::Remove,
            _ => {
                return Err(invalid(
                    "redact.mode",
                    &self.mode,
                    "expected \"mask\" or \"remove\"",
                ));
            }
        };
        let max_depth = usize::try_from(self.max_depth)
            .ok()
            .filter(|d| (1..=MAX_REDACT_DEPTH).contains(d))
            .ok_or_else(|| {
                invalid(
                    "redact.max_depth",
                    self.max_depth,
                    format!("must be between 1 and {MAX_REDACT_DEPTH}"),
                )
            })?;
        Ok(RedactConfig {
            mode,
            extra_fields: clean_names("redact.extra_fields", self.extra_fields)?,
            allow_fields: clean_names("redact.allow_fields", self.allow_fields)?,
            max_depth,
        })
    }
}

impl RawLog {
    fn validate(self) -> Result<(LogFormat, String), ConfigError> {
        let format = match self.format.to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            _ => {
                return Err(invalid(
                    "log.format",
                    &self.format,
                    "expected \"json\" or \"pretty\"",
                ));
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(invalid(
                "log.level",
                &self.level,
                "expected a level such as \"info\" or a filter such as \"phonegate=debug\"",
            ));
        }
        Ok((format, self.level))
    }
}

impl RawTls {
    fn validate(self) -> Result<Option<TlsConfig>, ConfigError> {
        key_pair(
            ("tls.cert_path", self.cert_path),
            ("tls.key_path", self.key_path),
        )
    }
}

/// A certificate and key file named by two settings: both or neither.
fn key_pair(
    (cert_key, cert): (&'static str, Option<String>),
    (key_key, key): (&'static str, Option<String>),
) -> Result<Option<TlsConfig>, ConfigError> {
    match (non_empty(cert), non_empty(key)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsConfig {
            cert_path: cert.into(),
            key_path: key.into(),
        })),
        (Some(cert), None) => Err(invalid(
            key_key,
            "",
            format!("must be set when {cert_key} is ({cert})"),
        )),
        (None, Some(key)) => Err(invalid(
            cert_key,
            "",
            format!("must be set when {key_key} is ({key})"),
        )),
    }
}

fn validate_shield(
    upstream: &RawUpstream,
    limits: &RawLimits,
) -> Result<ShieldConfig, ConfigError> {
    let max_in_flight = at_least_one("upstream.max_in_flight", upstream.max_in_flight)?;
    if max_in_flight > tokio::sync::Semaphore::MAX_PERMITS {
        return Err(invalid(
            "upstream.max_in_flight",
            max_in_flight,
            "is too large",
        ));
    }
    let breaker_failures = u32::try_from(upstream.breaker.failures)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| {
            invalid(
                "upstream.breaker.failures",
                upstream.breaker.failures,
                "must be a whole number from 1 up",
            )
        })?;
    if upstream.breaker.open_secs == 0 {
        return Err(invalid(
            "upstream.breaker.open_secs",
            0,
            "must be at least 1 second",
        ));
    }
    Ok(ShieldConfig {
        max_in_flight,
        queue_timeout: positive_ms("upstream.queue_timeout_ms", upstream.queue_timeout_ms)?,
        max_retry_after: seconds(
            "upstream.max_retry_after_secs",
            upstream.max_retry_after_secs,
        )?,
        breaker_failures,
        breaker_open: seconds("upstream.breaker.open_secs", upstream.breaker.open_secs)?,
        max_tracked_keys: at_least_one("limits.max_tracked_keys", limits.max_tracked_keys)? as u64,
    })
}

fn validate_limits(limits: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    if limits.misses_per_sec_per_key > 0 && limits.miss_burst == 0 {
        return Err(invalid(
            "limits.miss_burst",
            0,
            "must be at least 1 while limits.misses_per_sec_per_key is on",
        ));
    }
    // A burst of 0 means "the rate".
    let burst_or_rate = |burst: u32, rate: u32| if burst == 0 { rate } else { burst };
    Ok(LimitsConfig {
        misses_per_sec_per_key: limits.misses_per_sec_per_key,
        miss_burst: limits.miss_burst,
        requests_per_sec_per_key: limits.requests_per_sec_per_key,
        request_burst: burst_or_rate(limits.request_burst, limits.requests_per_sec_per_key),
        upstream_requests_per_sec: limits.upstream_requests_per_sec,
        upstream_burst: burst_or_rate(limits.upstream_burst, limits.upstream_requests_per_sec),
    })
}

fn validate_auth(auth: RawAuth, upstream: &RawUpstream) -> Result<AuthConfig, ConfigError> {
    match auth.mode.to_ascii_lowercase().as_str() {
        "passthrough" => Ok(AuthConfig::Passthrough),
        "managed" => {
            let api_key = match (
                non_empty(upstream.api_key.clone()),
                non_empty(upstream.api_key_file.clone()),
            ) {
                (Some(key), None) => key,
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|e| {
                        invalid(
                            "upstream.api_key_file",
                            &path,
                            format!("cannot be read: {e}"),
                        )
                    })?
                    .trim()
                    .to_owned(),
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "upstream.api_key",
                        "(hidden)",
                        "set upstream.api_key or upstream.api_key_file, not both",
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        "upstream.api_key",
                        "",
                        "auth.mode = \"managed\" needs upstream.api_key or upstream.api_key_file",
                    ));
                }
            };
            if api_key.is_empty()
                || api_key
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || !b.is_ascii_graphic())
            {
                return Err(invalid(
                    "upstream.api_key",
                    "(hidden)",
                    "must be a non-empty key without spaces or control characters",
                ));
            }
            if auth.clients.is_empty() {
                return Err(invalid(
                    "auth.clients",
                    "[]",
                    "auth.mode = \"managed\" needs at least one [[auth.clients]] entry",
                ));
            }
            let mut clients: Vec<ClientConfig> = Vec::with_capacity(auth.clients.len());
            for raw in auth.clients {
                clients.push(validate_client(raw, &clients)?);
            }
            Ok(AuthConfig::Managed {
                clients,
                api_key: Secret(api_key),
            })
        }
        _ => Err(invalid(
            "auth.mode",
            &auth.mode,
            "expected \"passthrough\" or \"managed\"",
        )),
    }
}

fn validate_client(raw: RawClient, earlier: &[ClientConfig]) -> Result<ClientConfig, ConfigError> {
    let name = raw.name.trim().to_owned();
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(
            "auth.clients.name",
            &raw.name,
            "must be 1 to 64 printable ASCII characters without spaces",
        ));
    }
    if earlier.iter().any(|c| c.name == name) {
        return Err(invalid(
            "auth.clients.name",
            &name,
            "is used by two clients",
        ));
    }
    let hex = raw.token_sha256.trim();
    let mut token_sha256 = [0u8; 32];
    let valid_hex = hex.len() == 64
        && hex
            .as_bytes()
            .chunks(2)
            .zip(token_sha256.iter_mut())
            .all(|(pair, out)| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .map(|b| *out = b)
                    .is_some()
            });
    if !valid_hex {
        return Err(invalid(
            "auth.clients.token_sha256",
            format!("(client {name})"),
            "must be 64 hex digits, as printed by `phonegate hash-token`",
        ));
    }
    if earlier
        .iter()
        .any(|c| *c.token_sha256.reveal() == token_sha256)
    {
        return Err(invalid(
            "auth.clients.token_sha256",
            format!("(client {name})"),
            "is used by two clients",
        ));
    }
    let (mut read, mut write) = (false, false);
    for scope in &raw.scopes {
        match scope.as_str() {
            "read" => read = true,
            "write" => write = true,
            other => {
                return Err(invalid(
                    "auth.clients.scopes",
                    other,
                    "scopes are \"read\" and \"write\"",
                ));
            }
        }
    }
    if !read && !write {
        return Err(invalid(
            "auth.clients.scopes",
            format!("(client {name})"),
            "needs \"read\", \"write\" or both",
        ));
    }
    Ok(ClientConfig {
        name,
        token_sha256: Secret::hidden(token_sha256),
        read,
        write,
    })
}

/// Origins as browsers send them: `scheme://host[:port]`, nothing else.
fn validate_origins(origins: Vec<String>) -> Result<Vec<String>, ConfigError> {
    origins
        .into_iter()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .map(|o| {
            let ok = o
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http") | Some("https")))
                .filter(|u| u.authority().is_some())
                .is_some_and(|u| u.path() == "/" && u.query().is_none() && !o.contains('@'))
                && !o.ends_with("/");
            if ok {
                Ok(o)
            } else {
                Err(invalid(
                    "cors.allowed_origins",
                    &o,
                    "expected an origin such as https://app.example.com (scheme, host, port only)",
                ))
            }
        })
        .collect()
}

pub(super) fn at_least_one(key: &'static str, n: u64) -> Result<usize, ConfigError> {
    usize::try_from(n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| invalid(key, n, "must be a whole number from 1 up"))
}

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            value,
            "expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
        )
    })
}

/// Longest duration any setting may hold: far beyond any sensible TTL or timeout, and far from
/// the overflow that adding a larger one to a clock reading would cause.
const MAX_SECS: u64 = 365 * 24 * 60 * 60;

fn seconds(key: &'static str, secs: u64) -> Result<Duration, ConfigError> {
    if secs > MAX_SECS {
        return Err(invalid(
            key,
            secs,
            format!("must be at most {MAX_SECS} (one year)"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

pub(super) fn millis(key: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms / 1000 > MAX_SECS {
        return Err(invalid(key, ms, "must be at most one year"));
    }
    Ok(Duration::from_millis(ms))
}

pub(super) fn positive_ms(key: &'static str, ms: u64) -> Result<Duration, ConfigError> {
    if ms == 0 {
        return Err(invalid(
            key,
            ms,
            "must be a positive number of milliseconds",
        ));
    }
    millis(key, ms)
}

/// The environment has no way to say "unset" but an empty string, so empty means unset.
pub(super) fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn clean_names(key: &'static str, names: Vec<String>) -> Result<Vec<String>, ConfigError> {
    names
        .into_iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .map(|n| {
            if n.chars().all(|c| c.is_ascii_graphic()) {
                Ok(n)
            } else {
                Err(invalid(
                    key,
                    &n,
                    "field names must be printable ASCII without spaces",
                ))
            }
        })
        .collect()
}

/// Checks `upstream.url` and returns it without a trailing slash, ready for `{base}/phone-number/{id}`.
fn parse_base_url(raw: &str) -> Result<String, ConfigError> {
    const KEY: &str = "upstream.url";
    // An unusable URL may still carry a key in its query or userinfo: never echo those parts.
    let shown = if raw.contains('?') || raw.contains('@') || raw.contains('#') {
        "(hidden)"
    } else {
        raw
    };
    let value = shown;
    // A fragment would end every request target built on this base (`{base}/phone-number/{id}`
    // with a `#` in the base sends `GET {path before #}` for every id), so none is allowed.
    if raw.contains('#') {
        return Err(invalid(
            KEY,
            value,
            "the URL must not have a fragment (#...)",
        ));
    }
    let uri: http::Uri = raw
        .parse()
        .map_err(|_| invalid(KEY, value, "expected an absolute http:// or https:// URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(invalid(
                KEY,
                value,
                "expected an absolute http:// or https:// URL",
            ));
        }
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(invalid(KEY, value, "the URL has no host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(
            KEY,
            "(hidden)",
            "credentials in the URL are not allowed; callers' keys are forwarded per request",
        ));
    }
    if uri.query().is_some() {
        return Err(invalid(KEY, value, "the URL must not have a query string"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn a_short_key_secret_is_refused_without_echoing_it() {
        let err = Config::from_toml("[cache]\nkey_secret = \"hunter2\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.key_secret"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn tls_needs_both_files() {
        let err = Config::from_toml("[tls]\ncert_path = \"/a.pem\"\n").unwrap_err();
        assert!(err.to_string().contains("tls.key_path"), "{err}");
        let ok =
            Config::from_toml("[tls]\ncert_path = \"/a.pem\"\nkey_path = \"/k.pem\"\n").unwrap();
        assert!(ok.startup.tls.is_some());
    }

    #[test]
    fn upstream_url_with_a_fragment_is_refused() {
        for url in [
            "http://upstream:8081/#x",
            "http://upstream:8081#x",
            "https://api.vapi.ai/#",
        ] {
            let err = Config::from_toml(&format!("[upstream]\nurl = \"{url}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("upstream.url") && err.contains("fragment"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn upstream_url_with_credentials_or_query_is_refused() {
        for url in [
            "http://user:pw@host",
            "http://host/?a=1",
            "not a url",
            "/relative",
        ] {
            let toml = format!("[upstream]\nurl = {url:?}\n");
            let err = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(err.contains("upstream.url"), "{url}: {err}");
            assert!(!err.contains("pw@"), "{err}");
            assert!(!err.contains("a=1"), "the query is not echoed: {err}");
        }
    }

    #[test]
    fn managed_mode_needs_a_key_and_clients() {
        let err = Config::from_toml("[auth]\nmode = \"managed\"\n").unwrap_err();
        assert!(err.to_string().contains("upstream.api_key"), "{err}");
        let err = Config::from_toml("[upstream]\napi_key = \"k\"\n[auth]\nmode = \"managed\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("auth.clients"), "{err}");
        let err = Config::from_toml(
            "[upstream]\napi_key = \"k\"\n[auth]\nmode = \"managed\"\n\
             [[auth.clients]]\nname = \"x\"\ntoken_sha256 = \"abc\"\nscopes = [\"read\"]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("token_sha256"), "{err}");
    }

    #[test]
    fn cors_origins_are_checked() {
        assert!(
            Config::from_toml("[cors]\nallowed_origins = [\"https://app.example.com\"]\n").is_ok()
        );
        for bad in ["app.example.com", "https://app.example.com/path", "ftp://x"] {
            let err =
                Config::from_toml(&format!("[cors]\nallowed_origins = [{bad:?}]\n")).unwrap_err();
            assert!(
                err.to_string().contains("cors.allowed_origins"),
                "{bad}: {err}"
            );
        }
    }
}
