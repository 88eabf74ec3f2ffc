//! How phonegate's responses look: cached answers, conditional requests, errors, and the headers
//! every response carries.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER,
};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::cache::Entry;
use crate::error::{ProxyError, Synthetic};

/// The body type of every response phonegate sends.
pub type Body = Full<Bytes>;

/// Response header telling how the cache took part: `hit` or `miss`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// RFC 9211 response header: how the cache handled the request, in the standard vocabulary.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Request and response header carrying the request id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Headers a cached answer's map is sized for.
const RESPONSE_HEADERS: usize = 16;

/// Answers depend on the caller's credential, so no shared cache (CDN, browser proxy) may reuse
/// them for someone else.
const PRIVATE: HeaderValue = HeaderValue::from_static("private");

/// How the cache took part in an answer; the `x-cache` header and the access log's `cache` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Fetched from the upstream (by this request or by one it waited for).
    Miss,
    /// An entry past its TTL, served while it is refreshed or because the upstream failed.
    Stale,
    /// A write: forwarded, never cached.
    Bypass,
    /// The request never reached the cache (refused before it); no `x-cache` header is sent.
    None,
}

impl CacheStatus {
    /// The header and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
            CacheStatus::None => "none",
        }
    }

    fn header(self) -> Option<HeaderValue> {
        match self {
            CacheStatus::Hit => Some(HeaderValue::from_static("hit")),
            CacheStatus::Miss => Some(HeaderValue::from_static("miss")),
            CacheStatus::Stale => Some(HeaderValue::from_static("stale")),
            CacheStatus::Bypass => Some(HeaderValue::from_static("bypass")),
            CacheStatus::None => None,
        }
    }
}

/// What an answer's RFC 9211 `Cache-Status` reports; filled in by the request phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// A fresh hit's remaining freshness (`ttl`).
    pub fresh_for: Option<Duration>,
    /// A miss whose answer was stored (`stored`).
    pub stored: bool,
    /// A miss that waited for another request's fetch (`collapsed`).
    pub collapsed: bool,
    /// Why a stale answer was served (`detail`).
    pub stale_reason: Option<&'static str>,
}

impl CacheReport {
    /// The `Cache-Status` value for an answer the cache took part in as `cache`:
    /// `phonegate; hit; ttl=58`, `phonegate; fwd=uri-miss; stored`, `phonegate; hit; fwd=stale;
    /// detail=revalidating`, `phonegate; fwd=bypass`. `None` when the request never reached the
    /// cache. Nothing in it names a key or a credential.
    pub fn header(&self, cache: CacheStatus) -> Option<HeaderValue> {
        let value = match cache {
            CacheStatus::Hit => {
                let ttl = self.fresh_for.unwrap_or_default().as_secs();
                format!("phonegate; hit; ttl={ttl}")
            }
            CacheStatus::Stale => match self.stale_reason {
                Some(reason) => format!("phonegate; hit; fwd=stale; detail={reason}"),
                None => "phonegate; hit; fwd=stale".to_owned(),
            },
            CacheStatus::Miss => {
                let mut value = String::from("phonegate; fwd=uri-miss");
                if self.stored {
                    value.push_str("; stored");
                }
                if self.collapsed {
                    value.push_str("; collapsed");
                }
                value
            }
            CacheStatus::Bypass => return Some(HeaderValue::from_static("phonegate; fwd=bypass")),
            CacheStatus::None => return None,
        };
        HeaderValue::try_from(value).ok()
    }
}

/// Builds the answer for `entry`; `304` when `if_none_match` matches its tag; no body for HEAD.
pub fn from_entry(
    entry: &Entry,
    head: bool,
    cache: CacheStatus,
    request_headers: &HeaderMap,
    now: Instant,
) -> Response<Body> {
    let not_modified = entry.etag.as_ref().is_some_and(|tag| {
        request_headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|inm| if_none_match_matches(inm, tag))
    });
    let (status, body) = if not_modified {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else if head {
        (entry.status, Bytes::new())
    } else {
        (entry.status, entry.body.clone())
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    // Sized for what a hit carries by the time it is sent (these, `x-request-id`,
    // `cache-control`, `cache-status`, the two `RateLimit` fields, CORS): the map is allocated
    // once instead of growing and rehashing half-way.
    *response.headers_mut() = HeaderMap::with_capacity(RESPONSE_HEADERS);
    let headers = response.headers_mut();
    if !not_modified {
        headers.insert(CONTENT_TYPE, APPLICATION_JSON);
        if head {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
        }
    }
    if let Some(tag) = &entry.etag {
        headers.insert(ETAG, tag.clone());
    }
    if let Some(retry_after) = &entry.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::clone(retry_after));
    }
    if matches!(cache, CacheStatus::Hit | CacheStatus::Stale) {
        let age = now.saturating_duration_since(entry.stored_at).as_secs();
        headers.insert(AGE, HeaderValue::from(age));
    }
    if let Some(value) = cache.header() {
        headers.insert(X_CACHE, value);
    }
    response
}

/// Builds the JSON error answer for `error`.
pub fn from_error(error: &ProxyError, head: bool) -> Response<Body> {
    synthetic(&error.synthetic(), head)
}

/// Builds an answer phonegate makes itself (proxy and admin listener alike): the JSON body, its
/// status, `Retry-After` and the answer's own header; no body for HEAD.
pub fn synthetic(answer: &Synthetic<'_>, head: bool) -> Response<Body> {
    let body = answer.body();
    let len = body.len();
    let mut response = Response::new(Full::new(if head { Bytes::new() } else { body }));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    if head {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some((name, value)) = &answer.header {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(secs) = answer.retry_after_secs() {
        headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Adds the headers every response carries: `x-request-id` and `cache-control: private`.
pub fn finish(response: &mut Response<Body>, mut request_id: HeaderValue) {
    // Different on every response: over HTTP/2, HPACK would add each one to the connection's
    // header table, evicting the values that do repeat (and paying for the table's upkeep);
    // marked never-indexed, it is sent as a literal. HTTP/1.1 ignores the mark.
    request_id.set_sensitive(true);
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID, request_id);
    headers.insert(CACHE_CONTROL, PRIVATE);
}

/// RFC 9110 §13.1.2: `*`, or a list of entity tags compared weakly (`W/` ignored).
fn if_none_match_matches(header: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(header) = header.to_str() else {
        return false;
    };
    let ours = strip_weak(etag.to_str().unwrap_or_default());
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || (!candidate.is_empty() && strip_weak(candidate) == ours)
    })
}

fn strip_weak(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            status: StatusCode::OK,
            body: Bytes::from_static(b"{\"id\":1}"),
            etag: Some(HeaderValue::from_static("\"abc\"")),
            retry_after: None,
            stored_at: Instant::now(),
            fresh_for: Duration::from_secs(60),
            policy_generation: 0,
        }
    }

    fn with_inm(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn matching_if_none_match_gives_304_without_body() {
        for inm in ["\"abc\"", "W/\"abc\"", "\"x\", \"abc\"", "*"] {
            let r = from_entry(
                &entry(),
                false,
                CacheStatus::Hit,
                &with_inm(inm),
                Instant::now(),
            );
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{inm}");
            assert_eq!(r.headers()[ETAG], "\"abc\"");
        }
        let r = from_entry(
            &entry(),
            false,
            CacheStatus::Hit,
            &with_inm("\"other\""),
            Instant::now(),
        );
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn hits_carry_age_and_x_cache() {
        let e = entry();
        let later = e.stored_at + Duration::from_secs(7);
        let r = from_entry(&e, false, CacheStatus::Hit, &HeaderMap::new(), later);
        assert_eq!(r.headers()[AGE], "7");
        assert_eq!(r.headers()[X_CACHE], "hit");
        let r = from_entry(&e, false, CacheStatus::Miss, &HeaderMap::new(), later);
        assert!(r.headers().get(AGE).is_none());
        assert_eq!(r.headers()[X_CACHE], "miss");
    }

    #[test]
    fn head_keeps_the_length_but_not_the_body() {
        let r = from_entry(
            &entry(),
            true,
            CacheStatus::Miss,
            &HeaderMap::new(),
            Instant::now(),
        );
        assert_eq!(r.headers()[CONTENT_LENGTH], "8");
    }

    #[test]
    fn cache_status_speaks_rfc_9211() {
        let value = |report: CacheReport, cache| {
            report.header(cache).map(|v| v.to_str().unwrap().to_owned())
        };
        let hit = CacheReport {
            fresh_for: Some(Duration::from_millis(58_900)),
            ..CacheReport::default()
        };
        assert_eq!(
            value(hit, CacheStatus::Hit).as_deref(),
            Some("phonegate; hit; ttl=58")
        );
        let stored = CacheReport {
            stored: true,
            ..CacheReport::default()
        };
        assert_eq!(
            value(stored, CacheStatus::Miss).as_deref(),
            Some("phonegate; fwd=uri-miss; stored")
        );
        let joined = CacheReport {
            stored: true,
            collapsed: true,
            ..CacheReport::default()
        };
        assert_eq!(
            value(joined, CacheStatus::Miss).as_deref(),
            Some("phonegate; fwd=uri-miss; stored; collapsed")
        );
        assert_eq!(
            value(CacheReport::default(), CacheStatus::Miss).as_deref(),
            Some("phonegate; fwd=uri-miss"),
            "not stored (a 5xx, a zero TTL)"
        );
        let stale = CacheReport {
            stale_reason: Some("upstream_5xx"),
            ..CacheReport::default()
        };
        assert_eq!(
            value(stale, CacheStatus::Stale).as_deref(),
            Some("phonegate; hit; fwd=stale; detail=upstream_5xx")
        );
        assert_eq!(
            value(CacheReport::default(), CacheStatus::Bypass).as_deref(),
            Some("phonegate; fwd=bypass")
        );
        assert_eq!(value(CacheReport::default(), CacheStatus::None), None);
    }
}
