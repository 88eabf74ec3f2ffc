//! The upstream side: one pooled HTTP/1.1 + HTTP/2 client (rustls for `https://`), the headers a
//! request carries upstream, and a whole-exchange deadline.
//!
//! The upstream request is built from scratch from an allow-list ([`upstream_headers`]), never by
//! copying the caller's headers, so hop-by-hop headers, cookies and anything else the caller sent
//! cannot reach the upstream. Likewise nothing of the upstream's response headers is relayed but
//! what [`UpstreamResponse`] keeps.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::error::ProxyError;
use crate::tls::{Certificates, TlsError};

/// Header carrying the request id to the upstream, so its logs and ours can be joined.
pub const REQUEST_ID: &str = "x-request-id";

const USER_AGENT_VALUE: &str = concat!("phonegate/", env!("CARGO_PKG_VERSION"));

/// How long an idle pooled connection is kept; below common load-balancer idle timeouts (60 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// What the upstream answered, body read in full (within the size cap).
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    /// The upstream status.
    pub status: StatusCode,
    /// The raw (unredacted) body. Never logged, never cached as is.
    pub body: Bytes,
    /// `Retry-After`, kept for 429 and 503 answers.
    pub retry_after: Option<HeaderValue>,
}

/// How an upstream exchange failed before yielding a usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made.
    Unreachable,
    /// No whole answer within the deadline.
    Timeout,
    /// The connection broke after it was made.
    Failed,
    /// A success body was larger than `upstream.max_body_bytes`.
    TooLarge,
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::Unreachable => ProxyError::UpstreamUnreachable,
            UpstreamError::Timeout => ProxyError::UpstreamTimeout,
            UpstreamError::Failed => ProxyError::UpstreamFailed,
            UpstreamError::TooLarge => {
                ProxyError::BadUpstreamBody("the upstream answer was larger than the allowed size")
            }
        }
    }
}

/// The upstream's scheme, authority and base path, kept apart so a request target is built from
/// them and a route's path, and nothing in the base URL (a `?`, a `#`) can replace the path.
#[derive(Debug, Clone)]
struct Base {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    path: String,
}

impl Base {
    fn parse(url: &str) -> Result<Self, TlsError> {
        let bad = || TlsError {
            key: "upstream.url",
            message: "not an absolute URL without query or fragment".to_owned(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let parts = uri.into_parts();
        if parts
            .path_and_query
            .as_ref()
            .is_some_and(|pq| pq.query().is_some())
        {
            return Err(bad());
        }
        Ok(Base {
            scheme: parts.scheme.ok_or_else(bad)?,
            authority: parts.authority.ok_or_else(bad)?,
            path: parts
                .path_and_query
                .map(|pq| pq.path().trim_end_matches('/').to_owned())
                .unwrap_or_default(),
        })
    }

    /// `{scheme}://{authority}{base path}{path_and_query}`.
    fn join(&self, path_and_query: &str) -> Result<http::Uri, UpstreamError> {
        http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.path))
            .build()
            // The path comes from a parsed route; a failure here is a bug, not a request.
            .map_err(|_| UpstreamError::Failed)
    }
}

/// The pooled upstream client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: Base,
    timeout: Duration,
    max_body_bytes: usize,
}

impl Upstream {
    /// Builds the client from the validated settings and the TLS set-up of `certificates`.
    pub fn new(config: &UpstreamConfig, certificates: &Certificates) -> Result<Self, TlsError> {
        let tls = certificates.client_config()?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        // The timer lets the pool close idle connections when their time is up; without one,
        // hyper-util only drops expired connections the next time the pool is used (the soak
        // bench saw idle upstream connections outlive the timeout that way).
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Upstream {
            client,
            base: Base::parse(&config.base_url)?,
            timeout: config.timeout,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// `method {base}{path_and_query}` with `authorization`; `body` (JSON) for writes.
    ///
    /// `path_and_query` comes from a parsed route (a UUID or a canonical query), never from the
    /// caller's raw request target.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        authorization: &HeaderValue,
        request_id: &HeaderValue,
        body: Option<Bytes>,
        trace: HeaderMap,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = self.base.join(path_and_query)?;
        let mut headers = upstream_headers(authorization, request_id);
        // `traceparent`/`tracestate` of this exchange's span, when tracing is on.
        headers.extend(trace);
        if body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(body.unwrap_or_default()))
            // The base URL was validated at start-up and the path comes from a parsed route.
            .map_err(|_| UpstreamError::Failed)?;
        *request.headers_mut() = headers;
        self.send(request).await
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<UpstreamResponse, UpstreamError> {
        let exchange = async {
            let mut body_bytes = Bytes::new();
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    UpstreamError::Unreachable
                } else {
                    UpstreamError::Failed
                }
            })?;
            let (parts, body) = response.into_parts();
            let status = parts.status;
            let too_large = if declared_length(&parts.headers)
                .is_some_and(|n| n > self.max_body_bytes as u64)
            {
                true
            } else {
                match Limited::new(body, self.max_body_bytes).collect().await {
                    Ok(collected) => {
                        body_bytes = collected.to_bytes();
                        false
                    }
                    Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => true,
                    Err(_) => return Err(UpstreamError::Failed),
                }
            };
            // An oversized success body is unusable; an oversized error body is only dropped, so
            // its status and Retry-After still reach the caller (with a body of our own).
            if too_large && status.is_success() {
                return Err(UpstreamError::TooLarge);
            }
            let keep_retry_after = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::SERVICE_UNAVAILABLE;
            Ok(UpstreamResponse {
                status,
                body: body_bytes,
                retry_after: keep_retry_after
                    .then(|| parts.headers.get(RETRY_AFTER))
                    .flatten()
                    .filter(|v| is_retry_after(v))
                    .cloned(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

/// The header set of an upstream request. Only these go upstream: the credential, the request
/// id, and our own `accept` and `user-agent` (plus `content-type` on writes). `host` is set by the
/// client from the URL.
pub fn upstream_headers(authorization: &HeaderValue, request_id: &HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(4);
    let mut auth = authorization.clone();
    auth.set_sensitive(true);
    headers.insert(AUTHORIZATION, auth);
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    headers.insert(REQUEST_ID, request_id.clone());
    headers
}

/// Only a well-formed `Retry-After` (delta-seconds or an HTTP date) is relayed: the header is
/// copied to the caller, so anything else in it (an echo of the request, say) must not pass.
fn is_retry_after(value: &HeaderValue) -> bool {
    let Ok(text) = value.to_str() else {
        return false;
    };
    let text = text.trim();
    (!text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit()))
        || httpdate::parse_http_date(text).is_ok()
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_in_the_base_url_can_replace_the_route_path() {
        let base = Base::parse("http://upstream:8081/prefix/").unwrap();
        let uri = base.join("/phone-number/abc").unwrap();
        assert_eq!(
            uri.to_string(),
            "http://upstream:8081/prefix/phone-number/abc"
        );
        let base = Base::parse("https://api.vapi.ai").unwrap();
        assert_eq!(
            base.join("/v2/phone-number?limit=5").unwrap().to_string(),
            "https://api.vapi.ai/v2/phone-number?limit=5"
        );
        assert!(Base::parse("http://upstream:8081/?x=1").is_err());
    }

    #[test]
    fn only_the_allow_listed_headers_go_upstream() {
        let h = upstream_headers(
            &HeaderValue::from_static("Bearer abc"),
            &HeaderValue::from_static("req-1"),
        );
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["authorization", "accept", "user-agent", "x-request-id"]
        );
        assert!(h[AUTHORIZATION].is_sensitive());
    }

    #[test]
    fn only_well_formed_retry_after_values_are_relayed() {
        for ok in ["0", "7", "120", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert!(is_retry_after(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in ["", "soon", "-1", "7 Bearer sk-123", "99999999999999"] {
            assert!(!is_retry_after(&HeaderValue::from_static(bad)), "{bad}");
        }
    }
}
