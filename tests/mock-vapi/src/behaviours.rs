//! How the mock answers: [`Behavior`], and the answers of its scripted faults (NestJS error
//! statuses, Cloudflare-like HTML pages, garbage, oversized or deeply nested JSON, a body cut
//! mid-way, 429 with `Retry-After`, arbitrary raw answers).

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderName};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use crate::fixtures::{self, GARBAGE_BODY, HTML_CONTENT_TYPE, JSON_CONTENT_TYPE};
use crate::routes::{MockBody, full_body, nest_error, respond, status_or_500};

/// How the mock answers. Failure behaviors answer every request (any path, any token);
/// `Normal` and `Delay` check the token and route like the real API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Like the real API.
    #[default]
    Normal,
    /// That status with a Vapi-like NestJS JSON error body
    /// (`{"message":..,"error":..,"statusCode":..}`). Codes outside 100..=999 become 500.
    Status(u16),
    /// A Cloudflare-like HTML error page with that status, `content-type: text/html`.
    HtmlError(u16),
    /// 200 with a body that is not JSON (and not UTF-8), `content-type: application/json`.
    Garbage,
    /// 200 with a valid JSON object of exactly N bytes: the requested fixture (twilio for
    /// unknown ids/paths) with a `padding` field, or a bare padded object when N is smaller.
    Oversized(usize),
    /// 200 with valid JSON nested N levels deep (`{"d":{"d":...{}}}`).
    Deep(usize),
    /// The normal answer, after a delay.
    Delay(Duration),
    /// 200 with a `content-length` of the full normal body, writes only half of it, then
    /// aborts the connection (HTTP/2: resets the stream).
    CloseMidBody,
    /// 429 with a NestJS body and, if `Some`, that `Retry-After` header value.
    RateLimited { retry_after: Option<String> },
    /// An arbitrary answer (invalid header names/values are skipped).
    Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// The k-th request since this behavior was set uses element k; the last one repeats.
    /// An empty sequence is `Normal`.
    Sequence(Vec<Behavior>),
}

/// What a resolved behavior does with one request.
pub(crate) enum Answer {
    /// Answer like the real API, after that delay if any.
    Api { delay: Option<Duration> },
    /// Answer with this fault, whatever the request.
    Fault(Response<MockBody>),
}

impl Behavior {
    /// The behavior the `index`-th request (from 0) since this one was set gets: the element of
    /// a [`Behavior::Sequence`] (the last one repeating, nested sequences resolved the same
    /// way), else this behavior. Never a sequence.
    pub(crate) fn resolve(&self, index: usize) -> Behavior {
        match self {
            Behavior::Sequence(items) => match items.get(index).or_else(|| items.last()) {
                Some(item) => item.resolve(index),
                None => Behavior::Normal,
            },
            other => other.clone(),
        }
    }

    /// What this (resolved) behavior answers to a request for `path`.
    pub(crate) fn answer(self, path: &str) -> Answer {
        let fault = match self {
            Behavior::Normal | Behavior::Sequence(_) => return Answer::Api { delay: None },
            Behavior::Delay(delay) => return Answer::Api { delay: Some(delay) },
            Behavior::Status(code) => nest_error(status_or_500(code), default_message(code)),
            Behavior::HtmlError(code) => html_error(status_or_500(code)),
            Behavior::Garbage => respond(
                StatusCode::OK,
                JSON_CONTENT_TYPE,
                Bytes::from_static(GARBAGE_BODY),
            ),
            Behavior::Oversized(n) => respond(
                StatusCode::OK,
                JSON_CONTENT_TYPE,
                Bytes::from(oversized(requested_fixture(path), n)),
            ),
            Behavior::Deep(n) => respond(StatusCode::OK, JSON_CONTENT_TYPE, Bytes::from(deep(n))),
            Behavior::CloseMidBody => close_mid_body(path),
            Behavior::RateLimited { retry_after } => {
                let mut resp = nest_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!("ThrottlerException: Too Many Requests"),
                );
                if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    resp.headers_mut().insert(header::RETRY_AFTER, value);
                }
                resp
            }
            Behavior::Raw {
                status,
                headers,
                body,
            } => {
                let mut resp = Response::new(full_body(body));
                *resp.status_mut() = status_or_500(status);
                for (name, value) in headers {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        resp.headers_mut().append(name, value);
                    }
                }
                resp
            }
        };
        Answer::Fault(fault)
    }
}

/// The fixture a path names, twilio's for any other path.
fn requested_fixture(path: &str) -> Value {
    fixtures::fixture_for_path(path).unwrap_or_else(|| fixtures::fixture("twilio"))
}

fn default_message(code: u16) -> Value {
    let status = status_or_500(code);
    match status.as_u16() {
        400 => json!(["id must be a UUID"]),
        401 => json!(
            "Invalid Key. Hot tip, you may be using the private key instead of the public key, or vice versa."
        ),
        403 => json!("Forbidden resource"),
        404 => json!("Phone number not found"),
        429 => json!("ThrottlerException: Too Many Requests"),
        500 => json!("Internal server error"),
        _ => json!(status.canonical_reason().unwrap_or("Error")),
    }
}

/// The requested fixture's headers and half its body, then a body error.
fn close_mid_body(path: &str) -> Response<MockBody> {
    let full = requested_fixture(path).to_string().into_bytes();
    let half = Bytes::from(full[..full.len() / 2].to_vec());
    // Half the body, a pause (so hyper flushes the head and that half), then a body error,
    // which makes hyper abort the connection (HTTP/2: reset the stream).
    let first = futures_util::stream::iter([Ok::<_, io::Error>(Frame::data(half))]);
    let abort = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err::<Frame<Bytes>, _>(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "mock Vapi: closing mid-body",
        ))
    });
    let body = StreamBody::new(first.chain(abort)).boxed_unsync();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(full.len()));
    resp
}

fn html_error(status: StatusCode) -> Response<MockBody> {
    let code = status.as_u16();
    let reason = status.canonical_reason().unwrap_or("Error");
    let (title, detail) = match code {
        403 => (
            "Attention Required! | Cloudflare".to_owned(),
            "Sorry, you have been blocked. You are unable to access api.vapi.ai".to_owned(),
        ),
        429 => (
            "Access denied | api.vapi.ai used Cloudflare to restrict access".to_owned(),
            "The owner of this website (api.vapi.ai) has banned you temporarily from accessing this website.".to_owned(),
        ),
        _ => (
            format!("api.vapi.ai | {code}: {reason}"),
            format!("Error code {code}. The web server reported an error."),
        ),
    };
    let page = format!(
        r#"<!DOCTYPE html>
<!--[if lt IE 7]> <html class="no-js ie6 oldie" lang="en-US"> <![endif]-->
<!--[if gt IE 8]><!--> <html class="no-js" lang="en-US"> <!--<![endif]-->
<head>
<title>{title}</title>
<meta charset="UTF-8" />
<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
<meta http-equiv="X-UA-Compatible" content="IE=Edge" />
<meta name="robots" content="noindex, nofollow" />
<meta name="viewport" content="width=device-width,initial-scale=1" />
<link rel="stylesheet" id="cf_styles-css" href="/cdn-cgi/styles/cf.errors.css" />
</head>
<body>
  <div id="cf-wrapper">
    <div id="cf-error-details" class="cf-error-details-wrapper">
      <div class="cf-wrapper cf-header cf-error-overview">
        <h1>
          <span class="cf-error-type" data-translate="error">Error</span>
          <span class="cf-error-code">{code}</span>
        </h1>
        <h2 class="cf-subheadline">{reason}</h2>
      </div>
      <div class="cf-section cf-wrapper">
        <p>{detail}</p>
      </div>
      <div class="cf-error-footer cf-wrapper w-240 lg:w-full py-10 sm:py-4 sm:px-8 mx-auto text-center sm:text-left border-solid border-0 border-t border-gray-300">
        <p class="text-13">
          <span class="cf-footer-item sm:block sm:mb-1">Cloudflare Ray ID: <strong class="font-semibold">8c1f4a2b9d3e7f60</strong></span>
          <span class="cf-footer-separator sm:hidden">&bull;</span>
          <span id="cf-footer-item-ip" class="cf-footer-item sm:block sm:mb-1">Performance &amp; security by <a rel="noopener noreferrer" href="https://www.cloudflare.com" target="_blank">Cloudflare</a></span>
        </p>
      </div>
    </div>
  </div>
</body>
</html>
"#
    );
    let mut resp = respond(status, HTML_CONTENT_TYPE, Bytes::from(page));
    resp.headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("cloudflare"));
    resp.headers_mut().insert(
        HeaderName::from_static("cf-ray"),
        HeaderValue::from_static("8c1f4a2b9d3e7f60-SJC"),
    );
    resp
}

/// The fixture with a `padding` field so that the compact JSON is exactly `n` bytes, or a
/// bare padded object when the fixture alone is already bigger.
fn oversized(mut base: Value, n: usize) -> Vec<u8> {
    if let Value::Object(map) = &mut base {
        map.insert("padding".into(), Value::String(String::new()));
        let len = base.to_string().len();
        if n >= len {
            if let Value::Object(map) = &mut base {
                map.insert("padding".into(), Value::String("x".repeat(n - len)));
            }
            return base.to_string().into_bytes();
        }
    }
    const BARE: &str = r#"{"padding":""}"#;
    if n >= BARE.len() {
        return format!(r#"{{"padding":"{}"}}"#, "x".repeat(n - BARE.len())).into_bytes();
    }
    let mut out = b"{}".to_vec();
    out.resize(n.max(2), b' ');
    out
}

/// `n` nested objects: `{"d":{"d":{}}}` for n = 3 (n = 0 gives `{}`).
fn deep(n: usize) -> Vec<u8> {
    let n = n.max(1);
    let mut out = Vec::with_capacity(n * 6);
    for _ in 1..n {
        out.extend_from_slice(br#"{"d":"#);
    }
    out.extend_from_slice(b"{}");
    out.resize(out.len() + (n - 1), b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_resolve_per_request_and_repeat_their_last() {
        let seq = Behavior::Sequence(vec![
            Behavior::Status(502),
            Behavior::Sequence(vec![Behavior::Garbage, Behavior::Deep(3)]),
        ]);
        assert_eq!(seq.resolve(0), Behavior::Status(502));
        // A nested sequence is indexed by the same request count.
        assert_eq!(seq.resolve(1), Behavior::Deep(3));
        assert_eq!(seq.resolve(9), Behavior::Deep(3));
        assert_eq!(Behavior::Sequence(vec![]).resolve(0), Behavior::Normal);
        assert_eq!(Behavior::Garbage.resolve(5), Behavior::Garbage);
    }

    #[test]
    fn oversized_bodies_have_the_exact_size() {
        let twilio = fixtures::fixture("twilio");
        for n in [0, 1, 2, 5, 14, 15, 100, 10_000, 3 * 1024 * 1024] {
            let body = oversized(twilio.clone(), n);
            assert_eq!(body.len(), n.max(2), "{n}");
            let parsed: Value = serde_json::from_slice(&body).expect("JSON");
            assert!(parsed.is_object());
            if n >= 10_000 {
                assert_eq!(parsed["id"], fixtures::TWILIO_ID);
            }
        }
    }

    #[test]
    fn deep_nests() {
        assert_eq!(deep(0), b"{}");
        assert_eq!(deep(1), b"{}");
        assert_eq!(deep(3), br#"{"d":{"d":{}}}"#);
    }

    #[test]
    fn only_normal_and_delay_reach_the_api() {
        let api = |b: Behavior| matches!(b.answer("/x"), Answer::Api { .. });
        assert!(api(Behavior::Normal));
        assert!(api(Behavior::Delay(Duration::from_millis(1))));
        assert!(!api(Behavior::Status(503)));
        assert!(!api(Behavior::Garbage));
        assert!(!api(Behavior::RateLimited { retry_after: None }));
        match Behavior::Status(42).answer("/x") {
            Answer::Fault(resp) => assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR),
            Answer::Api { .. } => panic!("a status is a fault"),
        }
    }
}
