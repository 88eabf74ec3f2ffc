//! The `[otel]` section: OpenTelemetry traces (see [`crate::telemetry`]).

use serde::Deserialize;
use serde_json::{Value, json};

use super::validate::non_empty;
use super::{ConfigError, invalid};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOtel {
    #[serde(default)]
    endpoint: Option<String>,
    protocol: String,
    sample_ratio: f64,
}

/// How spans are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtelProtocol {
    /// OTLP over HTTP with protobuf bodies. The default.
    HttpProtobuf,
    /// OTLP over gRPC.
    Grpc,
}

/// Trace export settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// The collector's base URL; `None` (the default) leaves tracing to the standard
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables, and off without them.
    pub endpoint: Option<String>,
    /// Default is `http/protobuf`.
    pub protocol: OtelProtocol,
    /// Share of new traces kept, 0.0 to 1.0. Default is 1.0.
    pub sample_ratio: f64,
}

impl RawOtel {
    pub(super) fn validate(self) -> Result<OtelConfig, ConfigError> {
        let protocol = match self.protocol.trim() {
            "http/protobuf" => OtelProtocol::HttpProtobuf,
            "grpc" => OtelProtocol::Grpc,
            other => {
                return Err(invalid(
                    "otel.protocol",
                    other,
                    "expected \"http/protobuf\" or \"grpc\"",
                ));
            }
        };
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "otel.sample_ratio",
                self.sample_ratio,
                "must be between 0.0 and 1.0",
            ));
        }
        let endpoint = match non_empty(self.endpoint) {
            Some(url) => Some(check_endpoint(url)?),
            None => None,
        };
        Ok(OtelConfig {
            endpoint,
            protocol,
            sample_ratio: self.sample_ratio,
        })
    }
}

impl OtelConfig {
    pub(super) fn render(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "protocol": match self.protocol {
                OtelProtocol::HttpProtobuf => "http/protobuf",
                OtelProtocol::Grpc => "grpc",
            },
            "sample_ratio": self.sample_ratio,
        })
    }
}

/// An absolute http(s) URL without credentials or a query string, which could carry one (a
/// collector's key goes in `OTEL_EXPORTER_OTLP_HEADERS`, which is never shown).
fn check_endpoint(url: String) -> Result<String, ConfigError> {
    let shown = if url.contains(['@', '?']) {
        "(hidden)"
    } else {
        &url
    };
    let ok = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http") | Some("https")))
        .filter(|u| u.query().is_none())
        .and_then(|u| u.authority().cloned())
        .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'));
    if ok {
        Ok(url.trim().to_owned())
    } else {
        Err(invalid(
            "otel.endpoint",
            shown,
            "expected an http:// or https:// URL without credentials (put a collector key in \
             OTEL_EXPORTER_OTLP_HEADERS)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn off_by_default_and_checked_when_set() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.startup.otel.endpoint, None);
        assert_eq!(c.startup.otel.protocol, OtelProtocol::HttpProtobuf);
        let c = Config::from_toml(
            "[otel]\nendpoint = \"http://127.0.0.1:4318\"\nprotocol = \"grpc\"\nsample_ratio = 0.25\n",
        )
        .unwrap();
        assert_eq!(
            c.startup.otel.endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(c.startup.otel.protocol, OtelProtocol::Grpc);
        assert_eq!(c.startup.otel.sample_ratio, 0.25);
        for (toml, key) in [
            ("[otel]\nprotocol = \"http/json\"\n", "otel.protocol"),
            ("[otel]\nsample_ratio = 1.5\n", "otel.sample_ratio"),
            ("[otel]\nendpoint = \"collector:4318\"\n", "otel.endpoint"),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml}: {err}");
        }
        for url in ["http://user:s3cret@c:4318", "http://c:4318/?api_key=s3cret"] {
            let err = Config::from_toml(&format!("[otel]\nendpoint = \"{url}\"\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("otel.endpoint") && !err.contains("s3cret"),
                "{err}"
            );
        }
    }
}
