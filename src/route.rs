//! Which requests phonegate serves: the request filter's routing half.
//!
//! Only `GET`/`HEAD /phone-number/<uuid>` is served. Everything is decided on the raw path, before
//! any decoding, and anything unusual is refused rather than normalised: a path a proxy "fixes up"
//! is a path the upstream may read differently (encoded slashes, dot segments, NULs).

use http::Method;
use uuid::Uuid;

/// Longest path accepted; the only valid path is 50 bytes long.
pub const MAX_PATH_LEN: usize = 1024;

const PHONE_NUMBER_PREFIX: &str = "/phone-number/";

/// A request phonegate knows how to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET` or `HEAD /phone-number/{id}`.
    GetPhoneNumber(Uuid),
}

impl Route {
    /// The route's name in the access log.
    pub fn name(&self) -> &'static str {
        match self {
            Route::GetPhoneNumber(_) => "get",
        }
    }
}

/// Why a request was not routed; each maps to one 4xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No such route (404).
    NotFound,
    /// A known route with another method (405).
    MethodNotAllowed,
    /// The id segment is not a UUID (400).
    BadId,
    /// The path has something no valid path has (400); the message says what.
    BadPath(&'static str),
    /// The path is longer than [`MAX_PATH_LEN`] (414).
    TooLong,
}

/// Routes a request by method and raw (still percent-encoded) path.
pub fn route(method: &Method, path: &str) -> Result<Route, RouteError> {
    check_path(path)?;
    let Some(id) = path.strip_prefix(PHONE_NUMBER_PREFIX) else {
        return Err(RouteError::NotFound);
    };
    if id.contains('/') {
        return Err(RouteError::NotFound);
    }
    let id = parse_uuid(id).ok_or(RouteError::BadId)?;
    if method != Method::GET && method != Method::HEAD {
        return Err(RouteError::MethodNotAllowed);
    }
    Ok(Route::GetPhoneNumber(id))
}

/// Refuses paths that no valid request has and that proxies and origins are known to read
/// differently.
fn check_path(path: &str) -> Result<(), RouteError> {
    if path.len() > MAX_PATH_LEN {
        return Err(RouteError::TooLong);
    }
    // A UUID path never needs an escape, and %2F, %2E, %00, %5C are how traversal hides.
    if path.contains('%') {
        return Err(RouteError::BadPath(
            "percent-encoded characters are not allowed in the path",
        ));
    }
    if path.contains('\\') || path.bytes().any(|b| b.is_ascii_control()) {
        return Err(RouteError::BadPath(
            "control characters and backslashes are not allowed in the path",
        ));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(RouteError::BadPath(
            "dot segments are not allowed in the path",
        ));
    }
    Ok(())
}

/// Accepts the hyphenated form only (any version, any case); `Uuid::parse_str` alone would also
/// take braced, URN and unhyphenated forms, which the upstream does not.
fn parse_uuid(s: &str) -> Option<Uuid> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let hyphens_ok = [8, 13, 18, 23].iter().all(|&i| b[i] == b'-');
    let hex_ok = b
        .iter()
        .enumerate()
        .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) || c.is_ascii_hexdigit());
    if !(hyphens_ok && hex_ok) {
        return None;
    }
    Uuid::try_parse(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44";

    #[test]
    fn routes_get_and_head_with_any_case_and_version() {
        let expect = Route::GetPhoneNumber(Uuid::parse_str(ID).unwrap());
        assert_eq!(
            route(&Method::GET, &format!("/phone-number/{ID}")),
            Ok(expect)
        );
        assert_eq!(
            route(&Method::HEAD, &format!("/phone-number/{ID}")),
            Ok(expect)
        );
        let upper = ID.to_uppercase();
        assert_eq!(
            route(&Method::GET, &format!("/phone-number/{upper}")),
            Ok(expect)
        );
        // Version 1 and version 7 ids are accepted too.
        for id in [
            "c232ab00-9414-11ec-b3c8-9f6bdeced846",
            "01890a5d-ac96-774b-bcce-b302099a8057",
        ] {
            assert!(
                route(&Method::GET, &format!("/phone-number/{id}")).is_ok(),
                "{id}"
            );
        }
    }

    #[test]
    fn the_normalised_id_is_lowercase_hyphenated() {
        let Ok(Route::GetPhoneNumber(id)) = route(
            &Method::GET,
            &format!("/phone-number/{}", ID.to_uppercase()),
        ) else {
            panic!("should route");
        };
        assert_eq!(id.hyphenated().to_string(), ID);
    }

    #[test]
    fn refuses_other_methods_on_the_route() {
        for m in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ] {
            assert_eq!(
                route(&m, &format!("/phone-number/{ID}")),
                Err(RouteError::MethodNotAllowed),
                "{m}"
            );
        }
    }

    #[test]
    fn refuses_ids_that_are_not_hyphenated_uuids() {
        for id in [
            "123",
            "8f2b6c1e4d3a4b7e9c215a0e7d3f9b44",
            "{8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44}",
            "8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b4g",
            "8f2b6c1e-4d3a-4b7e-9c215-a0e7d3f9b44",
            "",
        ] {
            assert_eq!(
                route(&Method::GET, &format!("/phone-number/{id}")),
                Err(RouteError::BadId),
                "{id}"
            );
        }
    }

    #[test]
    fn refuses_unknown_paths() {
        for p in [
            "/",
            "/phone-number",
            "/phone-numbers/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "//phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "/phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44/",
            "/phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44/x",
            "/assistant/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
        ] {
            assert_eq!(route(&Method::GET, p), Err(RouteError::NotFound), "{p}");
        }
    }

    #[test]
    fn refuses_encoded_and_dot_tricks_before_routing() {
        for p in [
            "/phone-number%2F8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "/phone-number/%2e%2e/assistant",
            "/phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44%00",
            "/phone-number/../phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "/phone-number/./8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "/phone-number\\8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "/phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44\0",
        ] {
            assert!(
                matches!(route(&Method::GET, p), Err(RouteError::BadPath(_))),
                "{p}"
            );
        }
        let long = format!("/phone-number/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(route(&Method::GET, &long), Err(RouteError::TooLong));
    }
}
