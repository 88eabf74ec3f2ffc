//! The response filter: turns what the upstream said into the answer phonegate may cache and send.
//!
//! Every body is parsed and redacted here, before anything is cached or returned; a body that
//! cannot be parsed or redacted is never relayed (fail closed). The content type is not trusted
//! either way: a body is relayed only if it parses as JSON.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode};

use crate::cache::Entry;
use crate::error::{ProxyError, json_error_body};

/// The message replacing an upstream error body that could not be relayed.
pub const ERROR_PAGE_MESSAGE: &str =
    "the upstream API answered with an error page that was not JSON";
use crate::redact::{PLACEHOLDER, Policy, RedactError};
use crate::upstream::UpstreamResponse;

/// How long a 200 and a 404 of this answer may be cached; zero means never.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ttls {
    /// For a 200.
    pub ok: Duration,
    /// For a 404.
    pub not_found: Duration,
}

/// Redacts and classifies one upstream answer. `scrub` is a literal that must never be relayed
/// (the credential the request sent upstream, should an error body echo it): every string and key
/// containing it, in its plain or percent-encoded spelling, has it replaced by the placeholder.
/// JSON escapes (`\/`, `\u0041`) are undone by parsing, so they are covered too. Literals
/// shorter than [`MIN_SCRUB_LEN`] are left alone: they are no real key, and replacing them would
/// garble ordinary text.
///
/// - 2xx: must be JSON the policy can redact, else 502; a 200 is cacheable for `ttls.ok`.
/// - 404: redacted and cacheable for `ttls.not_found`.
/// - other 4xx/5xx: redacted and relayed, never cached; a body that is not JSON (a CDN's HTML
///   page, or one over the size cap) is replaced by phonegate's own JSON error with the same
///   status, keeping the upstream's `Retry-After`.
/// - anything else (1xx, 3xx): 502, since this route has no redirects to follow.
pub fn filter(
    upstream: UpstreamResponse,
    policy: &Policy,
    ttls: Ttls,
    scrub: Option<&str>,
    now: Instant,
) -> Result<Entry, ProxyError> {
    let status = upstream.status;
    let fresh_for = match status {
        StatusCode::OK => ttls.ok,
        StatusCode::NOT_FOUND => ttls.not_found,
        _ => Duration::ZERO,
    };
    if !(status.is_success() || status.is_client_error() || status.is_server_error()) {
        return Err(ProxyError::BadUpstreamBody(
            "the upstream answered with an unexpected status",
        ));
    }
    let body = match redact_body(&upstream.body, policy, scrub) {
        Ok(body) => body,
        Err(why) if status.is_success() => return Err(ProxyError::BadUpstreamBody(why)),
        Err(_) => json_error_body(status, ERROR_PAGE_MESSAGE),
    };
    let etag = (status == StatusCode::OK).then(|| etag_for(&body));
    Ok(Entry {
        status,
        body,
        etag,
        retry_after: upstream.retry_after.map(Box::new),
        stored_at: now,
        fresh_for,
        policy_generation: 0,
    })
}

/// Shortest credential that is scrubbed from answers.
pub const MIN_SCRUB_LEN: usize = 8;

/// Parses, redacts and re-serialises a body; the error says why it cannot be relayed.
fn redact_body(raw: &[u8], policy: &Policy, scrub: Option<&str>) -> Result<Bytes, &'static str> {
    let mut value: serde_json::Value = serde_json::from_slice(raw).map_err(|e| {
        // serde_json stops at 128 levels of nesting with a syntax-class error of its own.
        if e.to_string().contains("recursion limit") {
            "the upstream answer was nested too deeply"
        } else {
            "the upstream answer was not valid JSON"
        }
    })?;
    policy.redact(&mut value).map_err(|e| match e {
        RedactError::TooDeep { .. } => "the upstream answer was nested too deeply",
    })?;
    if let Some(literal) = scrub.filter(|l| l.len() >= MIN_SCRUB_LEN) {
        scrub_literal(&mut value, literal);
        let encoded =
            percent_encoding::utf8_percent_encode(literal, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        if encoded != literal {
            scrub_literal(&mut value, &encoded);
        }
    }
    // The body lives in the cache for its whole TTL: an exact-size allocation, not the doubling
    // buffer serde_json wrote into (benches/memory.rs measured ~430 B wasted per entry otherwise).
    serde_json::to_vec(&value)
        .map(|bytes| Bytes::from(bytes.into_boxed_slice()))
        .map_err(|_| "the upstream answer could not be re-encoded")
}

/// Replaces `literal` inside every string (and object key) of `value`. Depth was checked by the
/// redaction pass before this runs.
fn scrub_literal(value: &mut serde_json::Value, literal: &str) {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains(literal) => *s = s.replace(literal, PLACEHOLDER),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_literal(v, literal)),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains(literal)) {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    scrub_literal(&mut v, literal);
                    map.insert(k.replace(literal, PLACEHOLDER), v);
                }
            } else {
                map.values_mut().for_each(|v| scrub_literal(v, literal));
            }
        }
        _ => {}
    }
}

/// A strong validator over the redacted bytes: equal bodies, equal tags, across replicas too.
fn etag_for(body: &[u8]) -> HeaderValue {
    let hash = blake3::hash(body);
    let hex = hash.to_hex();
    let tag = format!("\"{}\"", &hex.as_str()[..32]);
    // 32 hex digits between quotes is always a valid header value.
    HeaderValue::from_str(&tag).unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/example-twilio-phone-number.json");

    fn upstream(status: u16, body: &str) -> UpstreamResponse {
        UpstreamResponse {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_owned()),
            retry_after: None,
        }
    }

    fn fresh() -> Ttls {
        Ttls {
            ok: Duration::from_secs(60),
            not_found: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_200_is_redacted_tagged_and_cacheable() {
        let e = filter(
            upstream(200, FIXTURE),
            &Policy::default(),
            fresh(),
            None,
            Instant::now(),
        )
        .unwrap();
        let text = std::str::from_utf8(&e.body).unwrap();
        assert!(!text.contains("FAKE0auth0token"), "{text}");
        assert!(text.contains("AC00000000000000000000000000000000"));
        assert_eq!(e.fresh_for, Duration::from_secs(60));
        let etag = e.etag.unwrap();
        assert_eq!(etag.len(), 34);
        let again = filter(
            upstream(200, FIXTURE),
            &Policy::default(),
            fresh(),
            None,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(again.etag.unwrap(), etag, "same body, same tag");
    }

    #[test]
    fn a_404_is_cached_briefly_and_errors_not_at_all() {
        let body = r#"{"message":"Not Found","error":"Not Found","statusCode":404}"#;
        let e = filter(
            upstream(404, body),
            &Policy::default(),
            fresh(),
            None,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(e.fresh_for, Duration::from_secs(5));
        assert!(e.etag.is_none());
        for status in [401, 403, 429, 500, 503] {
            let e = filter(
                upstream(status, body),
                &Policy::default(),
                fresh(),
                None,
                Instant::now(),
            )
            .unwrap();
            assert!(!e.is_cacheable(), "{status}");
        }
    }

    #[test]
    fn unusable_2xx_bodies_are_refused() {
        for body in ["<html>", "", "{\"a\":", "not json"] {
            let err = filter(
                upstream(200, body),
                &Policy::default(),
                fresh(),
                None,
                Instant::now(),
            )
            .unwrap_err();
            assert_eq!(err.status(), StatusCode::BAD_GATEWAY, "{body}");
        }
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let err = filter(
            upstream(200, &deep),
            &Policy::default(),
            fresh(),
            None,
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            ProxyError::BadUpstreamBody("the upstream answer was nested too deeply")
        );
    }

    #[test]
    fn html_error_pages_are_replaced_with_the_same_status() {
        let mut answer = upstream(429, "<html>Cloudflare</html>");
        answer.retry_after = Some(HeaderValue::from_static("7"));
        let e = filter(answer, &Policy::default(), fresh(), None, Instant::now()).unwrap();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(!e.is_cacheable());
        assert_eq!(
            e.retry_after.as_deref(),
            Some(&HeaderValue::from_static("7"))
        );
        let body: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(body["statusCode"], 429);
        assert_eq!(body["message"], ERROR_PAGE_MESSAGE);
        assert!(!String::from_utf8_lossy(&e.body).contains("Cloudflare"));
    }

    #[test]
    fn error_bodies_are_redacted_too() {
        let body = r#"{"message":["twilioAuthToken must be a string"],"statusCode":400,"twilioAuthToken":"leak-me"}"#;
        let e = filter(
            upstream(400, body),
            &Policy::default(),
            fresh(),
            None,
            Instant::now(),
        )
        .unwrap();
        assert!(!String::from_utf8_lossy(&e.body).contains("leak-me"));
    }

    #[test]
    fn a_scrubbed_literal_never_survives() {
        let body = r#"{"message":"bad key Bearer sk-upstream-123","echo":{"sk-upstream-123":1}}"#;
        let e = filter(
            upstream(400, body),
            &Policy::default(),
            fresh(),
            Some("sk-upstream-123"),
            Instant::now(),
        )
        .unwrap();
        let text = String::from_utf8_lossy(&e.body);
        assert!(!text.contains("sk-upstream-123"), "{text}");
        assert!(text.contains("bad key Bearer [REDACTED]"), "{text}");
    }

    #[test]
    fn redirects_are_not_relayed() {
        let err = filter(
            upstream(302, "{}"),
            &Policy::default(),
            fresh(),
            None,
            Instant::now(),
        )
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    }
}
