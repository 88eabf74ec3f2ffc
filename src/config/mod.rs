//! Configuration: what phonegate runs with, split by what may change while it runs.
//!
//! [`Config`] is two parts: [`StartupConfig`], fixed for the life of the process, and
//! [`LiveConfig`], which a reload (SIGHUP) applies. The split is the reload boundary: the running
//! process keeps the start-up part it began with, so no list decides what a reload may touch.
//!
//! Layers, later wins: the built-in defaults (`config/default.toml`, compiled in), an optional file,
//! then `PHONEGATE__<SECTION>__<KEY>` environment variables. The layers are merged into the raw
//! shape of the file ([`raw`]), then checked and split ([`validate`]); every check that can fail
//! happens there, at start-up or reload, so the request path never meets a bad setting. Each error
//! names the key and the offending value (masked for secrets). [`mask`] renders the effective
//! configuration with every secret hidden, and names what changed between two.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

mod live;
mod mask;
mod otel;
mod raw;
mod redis;
mod startup;
mod validate;

pub use live::{
    AuthConfig, ClientConfig, FreshnessConfig, LimitsConfig, LiveConfig, RedactConfig,
    RequestConfig,
};
pub use otel::{OtelConfig, OtelProtocol};
pub use redis::RedisConfig;
pub use startup::{
    LogFormat, ServerConfig, ShieldConfig, StartupConfig, StoreConfig, TlsConfig, UpstreamConfig,
};

/// The text of `config/default.toml`: every setting's default, compiled into the binary.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Prefix of the environment variables that override settings (`PHONEGATE__CACHE__TTL_SECS`).
pub const ENV_PREFIX: &str = "PHONEGATE";

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: [&str; 3] = [
    "redact.extra_fields",
    "redact.allow_fields",
    "cors.allowed_origins",
];

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// What only a restart changes.
    pub startup: StartupConfig,
    /// What a reload applies.
    pub live: LiveConfig,
}

/// A setting that stopped start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The layers could not be read or merged (unreadable file, TOML syntax, wrong type, unknown key).
    Load(String),
    /// A value was read but is not acceptable.
    Invalid {
        /// Dotted key, as in the TOML file (`cache.ttl_secs`).
        key: &'static str,
        /// The offending value as given, or `(hidden)` for secrets.
        value: String,
        /// What an acceptable value looks like.
        reason: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Load(msg) => write!(f, "invalid configuration: {msg}"),
            ConfigError::Invalid { key, value, reason } => {
                write!(f, "invalid setting {key} = {value:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A secret setting (a text by default): compared and used, never shown by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T = String>(T);

impl Secret {
    /// Wraps a secret text.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<T> Secret<T> {
    /// Wraps a secret value of another kind (a token digest).
    pub fn hidden(value: T) -> Self {
        Secret(value)
    }

    /// The value itself.
    pub fn reveal(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(set)")
    }
}

impl Config {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, None)
    }

    /// Like [`Config::load`] with an explicit environment instead of the process's (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "configuration file {} does not exist or is not a file",
                    path.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(path.to_path_buf()).format(config::FileFormat::Toml),
            );
        }
        let mut environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .try_parsing(true)
            .source(env);
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        builder = builder.add_source(environment);
        Self::from_builder(builder)
    }

    /// Defaults overlaid with TOML text; no file, no environment. Handy for tests and embedding.
    pub fn from_toml(overrides: &str) -> Result<Config, ConfigError> {
        let builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(overrides, config::FileFormat::Toml));
        Self::from_builder(builder)
    }

    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Config, ConfigError> {
        let raw: raw::RawSettings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        raw.validate()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::redact;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults are valid");
        assert_eq!(c.startup.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.startup.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.startup.upstream.base_url, "https://api.vapi.ai");
        assert_eq!(c.startup.upstream.timeout, Duration::from_millis(5000));
        assert_eq!(c.live.freshness.ttl, Duration::from_secs(60));
        assert_eq!(c.live.freshness.negative_ttl, Duration::from_secs(5));
        assert_eq!(c.startup.store.max_bytes, 268_435_456);
        assert!(c.startup.store.key_secret.is_none());
        assert_eq!(c.live.redact.mode, redact::Mode::Mask);
        assert_eq!(c.startup.log_format, LogFormat::Json);
        assert!(c.startup.tls.is_none());
        assert_eq!(c.startup.server.header_timeout, Duration::from_secs(10));
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("PHONEGATE__CACHE__TTL_SECS", "30"),
                ("PHONEGATE__LISTEN", "0.0.0.0:8000"),
                ("PHONEGATE__ADMIN__LISTEN", "[::1]:9999"),
                ("PHONEGATE__UPSTREAM__URL", "http://127.0.0.1:1234/"),
                ("PHONEGATE__REDACT__MODE", "remove"),
                ("PHONEGATE__REDACT__EXTRA_FIELDS", "mySecretThing,other"),
                ("PHONEGATE__CACHE__KEY_SECRET", "0123456789abcdef0123"),
                ("PHONEGATE_CONFIG", "/not/a/setting"),
            ]),
        )
        .expect("valid overrides");
        assert_eq!(c.live.freshness.ttl, Duration::from_secs(30));
        assert_eq!(c.startup.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(c.startup.admin_listen, "[::1]:9999".parse().unwrap());
        assert_eq!(c.startup.upstream.base_url, "http://127.0.0.1:1234");
        assert_eq!(c.live.redact.mode, redact::Mode::Remove);
        assert_eq!(c.live.redact.extra_fields, vec!["mySecretThing", "other"]);
        assert_eq!(
            c.startup.store.key_secret.as_ref().map(Secret::expose),
            Some("0123456789abcdef0123")
        );
    }

    #[test]
    fn a_file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("phonegate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("layer.toml");
        std::fs::write(&path, "[cache]\nttl_secs = 7\nnegative_ttl_secs = 2\n").unwrap();
        let c = Config::load_with_env(Some(&path), env(&[("PHONEGATE__CACHE__TTL_SECS", "9")]))
            .unwrap();
        assert_eq!(
            c.live.freshness.ttl,
            Duration::from_secs(9),
            "environment wins over file"
        );
        assert_eq!(
            c.live.freshness.negative_ttl,
            Duration::from_secs(2),
            "file wins over defaults"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn errors_name_the_key_and_the_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("PHONEGATE__CACHE__TTL_SECS", "soon", "ttl_secs"),
            ("PHONEGATE__LISTEN", "localhost", "listen"),
            ("PHONEGATE__REDACT__MODE", "scramble", "redact.mode"),
            ("PHONEGATE__LOG__FORMAT", "xml", "log.format"),
            ("PHONEGATE__UPSTREAM__URL", "ftp://x", "upstream.url"),
            (
                "PHONEGATE__UPSTREAM__TIMEOUT_MS",
                "0",
                "upstream.timeout_ms",
            ),
            ("PHONEGATE__REDACT__MAX_DEPTH", "500", "redact.max_depth"),
            ("PHONEGATE__CACHE__TTL", "5", "ttl"),
            (
                "PHONEGATE__CACHE__TTL_SECS",
                "99999999999",
                "cache.ttl_secs",
            ),
            (
                "PHONEGATE__SERVER__REQUEST_TIMEOUT_MS",
                "18446744073709551615",
                "request_timeout_ms",
            ),
        ];
        for (key, value, expect_key) in cases {
            let err = Config::load_with_env(None, env(&[(key, value)]))
                .err()
                .unwrap_or_else(|| panic!("{key}={value} must be rejected"));
            let msg = err.to_string();
            assert!(msg.contains(expect_key), "{msg} should name {expect_key}");
            if !matches!(*key, "PHONEGATE__CACHE__TTL") {
                assert!(msg.contains(value), "{msg} should show the value {value}");
            }
        }
    }
}
