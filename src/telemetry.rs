//! OpenTelemetry traces: one server span per request, a child for the upstream exchange and one
//! for a wait on another request's fetch, W3C `traceparent`/`tracestate` taken from callers and
//! passed upstream, exported over OTLP (`http/protobuf` or `grpc`).
//!
//! Off unless `otel.endpoint` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; then the request path holds an
//! `Option<Telemetry>`, so tracing off costs a branch. Spans carry the route template, method,
//! status, cache outcome and the credential's `key_id`; never a credential, a body, a query string
//! or a path with an id in it.
//!
//! The SDK's batch processor exports from its own thread, while the OTLP clients (hyper, tonic)
//! need the tokio runtime: [`OnRuntime`] runs each export as a task on the runtime that built
//! the exporter, and the batch thread only waits for it.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter};

use crate::config::{OtelConfig, OtelProtocol};
use crate::credential::KeyId;

/// Deadline of one export call.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer and its exporter pipeline.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The pipeline `config` describes, or `None` when tracing is off. Must be called on the
    /// tokio runtime that will carry the exports.
    pub fn new(config: &OtelConfig) -> Result<Option<Self>, String> {
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let from_env = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
        if config.endpoint.is_none() && !from_env {
            return Ok(None);
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "tracing needs the async runtime".to_owned())?;
        let exporter = match config.protocol {
            OtelProtocol::HttpProtobuf => {
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_webpki_roots()
                    .https_or_http()
                    .enable_http1()
                    .build();
                let client =
                    opentelemetry_http::hyper::HyperClient::new(https, EXPORT_TIMEOUT, None);
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(client)
                    .with_protocol(Protocol::HttpBinary)
                    .with_timeout(EXPORT_TIMEOUT);
                if let Some(endpoint) = &config.endpoint {
                    builder = builder.with_endpoint(http_traces_url(endpoint));
                }
                builder.build()
            }
            OtelProtocol::Grpc => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(EXPORT_TIMEOUT);
                if let Some(endpoint) = &config.endpoint {
                    builder = builder.with_endpoint(endpoint.clone());
                }
                builder.build()
            }
        }
        .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(OnRuntime {
                inner: Arc::new(exporter),
                handle,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource())
            .build();
        let tracer = provider.tracer("phonegate");
        Ok(Some(Telemetry {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        }))
    }

    /// Starts the server span of a request, as a child of the caller's `traceparent` when it
    /// sent a valid one.
    pub fn start_request(&self, method: &Method, headers: &HeaderMap) -> RequestTrace {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(method.as_str().to_owned())
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method.to_string())])
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            cx: parent.with_span(span),
        }
    }

    /// A child span of `parent` (the upstream exchange, a coalesced wait).
    pub fn child(&self, parent: &Context, name: &'static str, kind: SpanKind) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// Adds `traceparent` (and `tracestate`) for the span in `cx` to an upstream request.
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        self.propagator
            .inject_context(cx, &mut HeaderInjector(headers));
    }

    /// Exports every finished span now; for tests and shutdown.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }

    /// Exports what is left and stops the exporter (at shutdown).
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// A request's server span.
#[derive(Debug)]
pub struct RequestTrace {
    cx: Context,
}

impl RequestTrace {
    /// The context holding the server span, parent of the request's child spans.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// Ends the span with what the request came to.
    pub fn finish(
        self,
        method: &Method,
        route: Option<&'static str>,
        status: StatusCode,
        cache: &'static str,
        key_id: Option<KeyId>,
    ) {
        let span = self.cx.span();
        if let Some(template) = route.and_then(template) {
            span.update_name(format!("{method} {template}"));
            span.set_attribute(KeyValue::new("http.route", template));
        }
        if let Some(route) = route {
            span.set_attribute(KeyValue::new("phonegate.route", route));
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        span.set_attribute(KeyValue::new("phonegate.cache", cache));
        if let Some(key_id) = key_id {
            span.set_attribute(KeyValue::new("phonegate.key_id", key_id.to_string()));
        }
        if status.is_server_error() {
            span.set_status(Status::error(
                status.canonical_reason().unwrap_or("server error"),
            ));
        }
        span.end();
    }
}

/// Ends the child span in `cx` with the upstream's answer (`None`: no answer).
pub fn finish_upstream(cx: &Context, method: &Method, status: Option<StatusCode>) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("http.request.method", method.to_string()));
    match status {
        Some(status) => {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() {
                span.set_status(Status::error("upstream server error"));
            }
        }
        None => span.set_status(Status::error("no answer from the upstream")),
    }
    span.end();
}

/// Ends the child span in `cx`.
pub fn end(cx: &Context) {
    cx.span().end();
}

/// The route template (`/phone-number/{id}`) of a route name, as `http.route`.
fn template(route: &str) -> Option<&'static str> {
    Some(match route {
        "get" | "update" | "delete" => "/phone-number/{id}",
        "list" | "create" => "/phone-number",
        "list_v2" => "/v2/phone-number",
        _ => return None,
    })
}

/// `service.name` is `phonegate` unless `OTEL_SERVICE_NAME` (or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`) says otherwise.
fn resource() -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let builder = Resource::builder();
    let builder = if named_by_env {
        builder
    } else {
        builder.with_service_name("phonegate")
    };
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `otel.endpoint` is the collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` is: traces go to
/// `{base}/v1/traces` over HTTP.
fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// An exporter whose exports run as tasks on a tokio runtime (see the module docs).
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    handle: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        match self
            .handle
            .spawn(async move { inner.export(batch).await })
            .await
        {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_base_url() {
        assert_eq!(
            http_traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn only_route_templates_name_spans() {
        assert_eq!(template("get"), Some("/phone-number/{id}"));
        assert_eq!(template("list_v2"), Some("/v2/phone-number"));
        assert_eq!(template("none"), None);
    }
}
