//! CORS for browser frontends: preflights answered by phonegate, and the response headers that
//! let listed origins read answers.
//!
//! Only origins in `cors.allowed_origins` ever see an `Access-Control-Allow-Origin`; any other
//! origin gets no CORS header at all (and a 403 to its preflight), so a browser on an unlisted
//! site can never read an answer. `Access-Control-Allow-Credentials` is never sent: phonegate
//! authenticates with the `Authorization` header, not cookies, so no origin needs it.

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::response::Body;

const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE");
const ALLOW_HEADERS: HeaderValue =
    HeaderValue::from_static("authorization, content-type, if-none-match, x-request-id");
const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static(
    "x-cache, cache-status, x-request-id, etag, age, retry-after, ratelimit, ratelimit-policy",
);
/// Browsers cap this (Chrome at 2 h); 10 minutes keeps preflights rare without pinning a policy.
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");

/// The CORS policy.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<HeaderValue>,
}

/// What to do with a preflight.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// Not a CORS preflight (or CORS is off): route the request as usual.
    Absent,
    /// A preflight from a listed origin: answer it.
    Allowed,
    /// A preflight from an unlisted origin: refuse it.
    Refused,
}

impl Cors {
    /// A policy for these exact origins; empty turns CORS off.
    pub fn new(origins: &[String]) -> Self {
        Cors {
            origins: origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        }
    }

    /// Whether any origin is allowed.
    pub fn is_enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        self.origins.iter().any(|o| o == origin).then_some(origin)
    }

    /// Classifies a request as a preflight or not.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Preflight {
        if !self.is_enabled()
            || method != Method::OPTIONS
            || !headers.contains_key(ORIGIN)
            || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Preflight::Absent;
        }
        if self.allowed_origin(headers).is_some() {
            Preflight::Allowed
        } else {
            Preflight::Refused
        }
    }

    /// The answer to an allowed preflight.
    pub fn preflight_response(&self, headers: &HeaderMap) -> Response<Body> {
        let mut response = Response::new(Body::default());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let h = response.headers_mut();
        if let Some(origin) = self.allowed_origin(headers) {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS);
            h.insert(ACCESS_CONTROL_MAX_AGE, MAX_AGE);
        }
        h.insert(VARY, HeaderValue::from_static("origin"));
        response
    }

    /// Adds the CORS headers for the request's origin to an actual (non-preflight) answer.
    pub fn decorate(&self, request: &HeaderMap, response: &mut Response<Body>) {
        if !self.is_enabled() {
            return;
        }
        let h = response.headers_mut();
        // The answer depends on Origin whether or not it is listed (a preflight answer says so
        // already).
        let varies = h
            .get_all(VARY)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"origin"));
        if !varies {
            h.append(VARY, HeaderValue::from_static("origin"));
        }
        if let Some(origin) = self.allowed_origin(request) {
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn off_by_default() {
        let cors = Cors::new(&[]);
        let h = req(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert_eq!(cors.preflight(&Method::OPTIONS, &h), Preflight::Absent);
        let mut r = Response::new(Body::default());
        cors.decorate(&h, &mut r);
        assert!(r.headers().is_empty());
    }

    #[test]
    fn listed_origins_only() {
        let cors = Cors::new(&["https://app.example".to_owned()]);
        let good = req(&[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
        ]);
        let bad = req(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert_eq!(cors.preflight(&Method::OPTIONS, &good), Preflight::Allowed);
        assert_eq!(cors.preflight(&Method::OPTIONS, &bad), Preflight::Refused);
        let r = cors.preflight_response(&good);
        assert_eq!(
            r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example"
        );
        assert!(
            r.headers()[ACCESS_CONTROL_ALLOW_HEADERS]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        let mut r = Response::new(Body::default());
        cors.decorate(&bad, &mut r);
        assert!(r.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(
            r.headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
        assert_eq!(r.headers()[VARY], "origin");
    }

    #[test]
    fn a_preflight_answer_says_vary_origin_once() {
        let cors = Cors::new(&["https://app.example.com".to_owned()]);
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::from_static("https://app.example.com"));
        let mut r = cors.preflight_response(&h);
        cors.decorate(&h, &mut r);
        assert_eq!(r.headers().get_all(VARY).iter().count(), 1);
    }
}
