//! Every answer phonegate makes up itself, in one place: the error type, its status, its message,
//! and the reason logged for it.
//!
//! Bodies use the upstream's own NestJS shape (`{"statusCode", "error", "message"}`) so a client
//! handles one error format whether the refusal came from Vapi or from phonegate. Messages are
//! fixed strings: nothing a caller or the upstream sent is ever echoed back.

use http::StatusCode;

use crate::credential::AuthError;
use crate::route::RouteError;

/// A request phonegate answers itself instead of relaying an upstream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The path or method is not served.
    Route(RouteError),
    /// The `Authorization` header is missing or malformed.
    Auth(AuthError),
    /// A `GET`/`HEAD` arrived with a body.
    BodyNotAllowed,
    /// The upstream could not be connected to.
    UpstreamUnreachable,
    /// The upstream did not answer, body included, within `upstream.timeout_ms`.
    UpstreamTimeout,
    /// The upstream connection broke after it was made (reset, closed mid-body, protocol error).
    UpstreamFailed,
    /// A 2xx upstream body that cannot be relayed safely; the message says why.
    BadUpstreamBody(&'static str),
    /// An upstream error whose body was not JSON (or could not be redacted), replaced by ours.
    UpstreamErrorPage(StatusCode),
    /// Waiting for another request's fetch of the same entry took too long.
    CoalesceTimeout,
    /// The task fetching an entry ended without an answer (a bug; logged).
    FetcherVanished,
}

impl ProxyError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            ProxyError::Route(RouteError::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Route(RouteError::BadId | RouteError::BadPath(_)) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Route(RouteError::TooLong) => StatusCode::URI_TOO_LONG,
            ProxyError::Auth(_) => StatusCode::UNAUTHORIZED,
            ProxyError::BodyNotAllowed => StatusCode::BAD_REQUEST,
            ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamFailed
            | ProxyError::BadUpstreamBody(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout | ProxyError::CoalesceTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::UpstreamErrorPage(status) => *status,
            ProxyError::FetcherVanished => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human-readable `message` of the body.
    pub fn message(&self) -> &'static str {
        match self {
            ProxyError::Route(RouteError::NotFound) => {
                "no such route; phonegate serves GET /phone-number/{id}"
            }
            ProxyError::Route(RouteError::MethodNotAllowed) => {
                "method not allowed; this route answers GET and HEAD"
            }
            ProxyError::Route(RouteError::BadId) => "the phone number id must be a UUID",
            ProxyError::Route(RouteError::BadPath(why)) => why,
            ProxyError::Route(RouteError::TooLong) => "the request path is too long",
            ProxyError::Auth(e) => e.message(),
            ProxyError::BodyNotAllowed => "GET and HEAD requests must not carry a body",
            ProxyError::UpstreamUnreachable => "the upstream API could not be reached",
            ProxyError::UpstreamTimeout => "the upstream API did not answer in time",
            ProxyError::UpstreamFailed => "the upstream API connection failed mid-answer",
            ProxyError::BadUpstreamBody(why) => why,
            ProxyError::UpstreamErrorPage(_) => {
                "the upstream API answered with an error page that was not JSON"
            }
            ProxyError::CoalesceTimeout => "timed out waiting for the upstream answer",
            ProxyError::FetcherVanished => "internal error while fetching from the upstream API",
        }
    }

    /// A stable, machine-readable reason for the access log's `reason` field.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Route(RouteError::NotFound) => "no_route",
            ProxyError::Route(RouteError::MethodNotAllowed) => "method_not_allowed",
            ProxyError::Route(RouteError::BadId) => "bad_id",
            ProxyError::Route(RouteError::BadPath(_)) => "bad_path",
            ProxyError::Route(RouteError::TooLong) => "path_too_long",
            ProxyError::Auth(AuthError::Missing) => "missing_credential",
            ProxyError::Auth(AuthError::Malformed) => "malformed_credential",
            ProxyError::BodyNotAllowed => "body_not_allowed",
            ProxyError::UpstreamUnreachable => "upstream_unreachable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamFailed => "upstream_failed",
            ProxyError::BadUpstreamBody(_) => "bad_upstream_body",
            ProxyError::UpstreamErrorPage(_) => "upstream_error_page",
            ProxyError::CoalesceTimeout => "coalesce_timeout",
            ProxyError::FetcherVanished => "fetcher_vanished",
        }
    }

    /// The JSON body of the answer.
    pub fn body(&self) -> bytes::Bytes {
        json_error_body(self.status(), self.message())
    }
}

/// `{"statusCode":N,"error":"<reason phrase>","message":"..."}`.
pub fn json_error_body(status: StatusCode, message: &str) -> bytes::Bytes {
    let body = serde_json::json!({
        "statusCode": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": message,
    });
    bytes::Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_nestjs_shape() {
        let body = ProxyError::Auth(AuthError::Missing).body();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["statusCode"], 401);
        assert_eq!(v["error"], "Unauthorized");
        assert!(v["message"].as_str().unwrap().contains("Authorization"));
    }

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        assert_eq!(ProxyError::UpstreamUnreachable.status(), 502);
        assert_eq!(ProxyError::UpstreamTimeout.status(), 504);
        assert_eq!(ProxyError::BadUpstreamBody("x").status(), 502);
        assert_eq!(
            ProxyError::UpstreamErrorPage(StatusCode::FORBIDDEN).status(),
            StatusCode::FORBIDDEN
        );
    }
}
