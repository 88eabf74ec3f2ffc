//! OpenTelemetry traces end to end: phonegate exports over OTLP/HTTP to a test receiver, which
//! decodes each export with the OpenTelemetry protobuf definitions; the spans' names, kinds,
//! parents and attributes are checked, W3C trace context is followed from the caller and passed
//! upstream, and nothing secret appears anywhere in the export.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use prost::Message;
use tokio::net::TcpListener;

use crate::support::mock_vapi::{PLANTED, TWILIO_ID, VAPI_ID};
use crate::support::{Behavior, MockVapi, Proxy, TOKEN_A, get_with, path, write};

/// A caller's trace: trace id and parent span id, as in its `traceparent`.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP trace receiver on loopback: keeps every export's raw body.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (b, p) = (Arc::clone(&bodies), Arc::clone(&paths));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (b, p) = (Arc::clone(&b), Arc::clone(&p));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (b, p) = (Arc::clone(&b), Arc::clone(&p));
                        async move {
                            p.lock().unwrap().push(req.uri().path().to_owned());
                            let body = req.into_body().collect().await?.to_bytes();
                            b.lock().unwrap().push(body);
                            let mut answer = Response::new(Full::new(Bytes::new()));
                            answer.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("application/x-protobuf"),
                            );
                            Ok::<_, hyper::Error>(answer)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            bodies,
            paths,
            task,
        }
    }

    fn raw(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }

    /// The resource spans of every export so far, decoded.
    fn resource_spans(&self) -> impl Iterator<Item = ResourceSpans> {
        self.raw()
            .into_iter()
            .map(|body| ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf"))
            .flat_map(|export| export.resource_spans)
    }

    /// Every span exported so far, decoded.
    fn spans(&self) -> Vec<Span> {
        self.resource_spans()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }

    fn service_names(&self) -> Vec<String> {
        self.resource_spans()
            .filter_map(|rs| rs.resource)
            .flat_map(|r| r.attributes)
            .filter(|kv| kv.key == "service.name")
            .filter_map(|kv| match kv.value.and_then(|v| v.value) {
                Some(AnyValue::StringValue(s)) => Some(s),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

async fn traced_proxy(mock: &MockVapi, receiver: &Receiver) -> Proxy {
    Proxy::start(
        &mock.url(),
        &format!(
            "[otel]\nendpoint = \"http://{}\"\n[limits]\nmisses_per_sec_per_key = 0\n",
            receiver.addr
        ),
    )
    .await
}

/// Exports what phonegate has and returns the spans the receiver decoded.
async fn exported(proxy: &Proxy, receiver: &Receiver) -> Vec<Span> {
    proxy
        .state
        .telemetry
        .as_ref()
        .expect("tracing is on")
        .flush()
        .await;
    receiver.spans()
}

#[tokio::test]
async fn a_request_is_a_server_span_following_the_callers_trace_with_an_upstream_child() {
    let receiver = Receiver::start().await;
    let mock = MockVapi::start().await;
    let proxy = traced_proxy(&mock, &receiver).await;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let miss = get_with(
        &proxy,
        Method::GET,
        &path(TWILIO_ID),
        Some(TOKEN_A),
        &[
            ("traceparent", traceparent.as_str()),
            ("tracestate", "vendor=opaque-1"),
        ],
    )
    .await;
    assert_eq!(miss.status, StatusCode::OK);
    let hit = get_with(&proxy, Method::GET, &path(TWILIO_ID), Some(TOKEN_A), &[]).await;
    hit.assert_cache("hit");

    // The upstream request carried our upstream span's context: same trace, its own span id,
    // the caller's tracestate.
    let upstream = mock.last_request().expect("one upstream request");
    let sent = upstream.headers["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        parts[1], CALLER_TRACE,
        "the caller's trace goes on upstream"
    );
    assert_ne!(parts[2], CALLER_SPAN, "with a span of ours as parent");
    assert_eq!(parts[3], "01");
    assert_eq!(upstream.headers["tracestate"], "vendor=opaque-1");

    let spans = exported(&proxy, &receiver).await;
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 2, "one server span per request: {spans:#?}");
    let followed = servers
        .iter()
        .find(|s| hex(&s.trace_id) == CALLER_TRACE)
        .expect("the miss joined the caller's trace");
    assert_eq!(hex(&followed.parent_span_id), CALLER_SPAN);
    assert_eq!(followed.name, "GET /phone-number/{id}");
    let attrs = attributes(followed);
    assert_eq!(attrs["http.route"], "/phone-number/{id}");
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["http.response.status_code"], "200");
    assert_eq!(attrs["phonegate.cache"], "miss");
    assert_eq!(attrs["phonegate.route"], "get");
    assert_eq!(attrs["phonegate.key_id"].len(), 16, "a key_id: {attrs:?}");

    let child = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("an upstream span");
    assert_eq!(child.name, "upstream");
    assert_eq!(child.parent_span_id, followed.span_id);
    assert_eq!(child.trace_id, followed.trace_id);
    assert_eq!(
        hex(&child.span_id),
        parts[2],
        "the span whose context went upstream"
    );
    assert_eq!(attributes(child)["http.response.status_code"], "200");

    let fresh = servers
        .iter()
        .find(|s| hex(&s.trace_id) != CALLER_TRACE)
        .expect("the hit started a trace of its own");
    assert!(fresh.parent_span_id.is_empty(), "a root span");
    assert_eq!(attributes(fresh)["phonegate.cache"], "hit");
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.trace_id == fresh.trace_id)
            .count(),
        1,
        "a hit makes no upstream span"
    );
    assert_eq!(receiver.service_names(), ["phonegate"]);
    assert!(
        receiver
            .paths
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == "/v1/traces")
    );
}

#[tokio::test]
async fn a_coalesced_wait_is_a_child_of_the_waiting_request() {
    let receiver = Receiver::start().await;
    let mock = MockVapi::builder()
        .behavior(Behavior::Delay(Duration::from_millis(300)))
        .start()
        .await;
    let proxy = traced_proxy(&mock, &receiver).await;
    let id = path(VAPI_ID);
    let answers = futures_util::future::join_all(
        (0..4).map(|_| get_with(&proxy, Method::GET, &id, Some(TOKEN_A), &[])),
    )
    .await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(mock.hits(), 1);
    let spans = exported(&proxy, &receiver).await;
    let waits: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "coalesced wait")
        .collect();
    assert_eq!(
        waits.len(),
        3,
        "three requests waited for the fourth's fetch"
    );
    for wait in waits {
        assert_eq!(wait.kind, SpanKind::Internal as i32);
        let parent = spans
            .iter()
            .find(|s| s.span_id == wait.parent_span_id)
            .expect("the waiting request's span");
        assert_eq!(parent.kind, SpanKind::Server as i32);
        assert_eq!(parent.trace_id, wait.trace_id);
        assert!(
            wait.end_time_unix_nano - wait.start_time_unix_nano >= 100_000_000,
            "it spans the wait"
        );
    }
    assert_eq!(
        spans.iter().filter(|s| s.name == "upstream").count(),
        1,
        "one upstream exchange"
    );
}

#[tokio::test]
async fn no_secret_credential_or_query_string_is_ever_exported() {
    let receiver = Receiver::start().await;
    let mock = MockVapi::start().await;
    let proxy = traced_proxy(&mock, &receiver).await;
    // Reads of every kind (the fixtures hold planted secrets), a list with a query, a write
    // whose body names a secret, and an upstream error.
    for target in [
        path(TWILIO_ID),
        path(VAPI_ID),
        "/phone-number?limit=2&createdAtGt=2024-01-01T00:00:00Z".to_owned(),
    ] {
        let resp = get_with(&proxy, Method::GET, &target, Some(TOKEN_A), &[]).await;
        assert_eq!(resp.status, StatusCode::OK, "{target}");
    }
    let body = format!("{{\"name\":\"x\",\"twilioAuthToken\":\"{PLANTED}-write\"}}");
    let written = write(&proxy, Method::PATCH, &path(TWILIO_ID), TOKEN_A, &body).await;
    assert_eq!(written.status, StatusCode::OK);
    mock.set_behavior(Behavior::Status(500));
    let failed = get_with(
        &proxy,
        Method::GET,
        &path(crate::support::mock_vapi::VONAGE_ID),
        Some(TOKEN_A),
        &[],
    )
    .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);

    let spans = exported(&proxy, &receiver).await;
    assert!(
        spans.len() >= 8,
        "server and upstream spans: {}",
        spans.len()
    );
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"PATCH /phone-number/{id}"), "{names:?}");
    assert!(names.contains(&"GET /phone-number"), "{names:?}");
    let failed_span = spans
        .iter()
        .find(|s| {
            attributes(s)
                .get("http.response.status_code")
                .map(String::as_str)
                == Some("500")
                && s.kind == SpanKind::Server as i32
        })
        .expect("the failed request's span");
    assert_eq!(
        failed_span.status.as_ref().map(|s| s.code),
        Some(2),
        "marked as an error"
    );
    for body in receiver.raw() {
        for needle in [
            TOKEN_A,
            PLANTED,
            "limit=2",
            "createdAtGt",
            TWILIO_ID,
            VAPI_ID,
            "twilioAuthToken",
        ] {
            assert!(
                !body.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in an export"
            );
        }
    }
}

#[tokio::test]
async fn tracing_off_adds_no_header_upstream_and_has_no_pipeline() {
    let mock = MockVapi::start().await;
    let proxy = Proxy::start(&mock.url(), "").await;
    assert!(proxy.state.telemetry.is_none());
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    get_with(
        &proxy,
        Method::GET,
        &path(TWILIO_ID),
        Some(TOKEN_A),
        &[("traceparent", traceparent.as_str())],
    )
    .await;
    let upstream = mock.last_request().expect("one upstream request");
    assert!(upstream.headers.get("traceparent").is_none());
}
