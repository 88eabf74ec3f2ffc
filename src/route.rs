//! Which requests phonegate serves: the request filter's routing half.
//!
//! The phone-number resource: `GET`/`HEAD /phone-number/<uuid>`, the two list routes, and `POST`,
//! `PATCH`, `DELETE`. Everything is decided on the raw path, before any decoding, and anything
//! unusual is refused rather than normalised: a path a proxy "fixes up" is a path the upstream may
//! read differently (encoded slashes, dot segments, NULs).

use http::Method;
use uuid::Uuid;

use crate::query::{self, ListKind};

/// Longest path accepted; the only valid path is 50 bytes long.
pub const MAX_PATH_LEN: usize = 1024;

const PHONE_NUMBER_PREFIX: &str = "/phone-number/";

/// A request phonegate knows how to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET`/`HEAD /phone-number/{id}`.
    Get(Uuid),
    /// `GET`/`HEAD /phone-number` or `/v2/phone-number`, with the canonical query.
    List(ListKind, String),
    /// `POST /phone-number`.
    Create,
    /// `PATCH /phone-number/{id}`.
    Update(Uuid),
    /// `DELETE /phone-number/{id}`.
    Delete(Uuid),
}

impl Route {
    /// The route's name in the access log and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Get(_) => "get",
            Route::List(ListKind::V1, _) => "list",
            Route::List(ListKind::V2, _) => "list_v2",
            Route::Create => "create",
            Route::Update(_) => "update",
            Route::Delete(_) => "delete",
        }
    }

    /// Whether the route changes data upstream (needs the `write` scope, never cached).
    pub fn is_write(&self) -> bool {
        matches!(self, Route::Create | Route::Update(_) | Route::Delete(_))
    }
}

/// Why a request was not routed; each maps to one 4xx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such route (404).
    NotFound,
    /// A known path with another method (405); the `Allow` value.
    MethodNotAllowed(&'static str),
    /// The id segment is not a UUID (400).
    BadId,
    /// The path has something no valid path has (400); the message says what.
    BadPath(&'static str),
    /// A list query the spec does not allow (400); the message says which parameter and why.
    BadQuery(String),
    /// The path is longer than [`MAX_PATH_LEN`] (414).
    TooLong,
}

/// Routes a request by method, raw (still percent-encoded) path and query string.
///
/// The query string matters only to the list routes; elsewhere it is ignored and never forwarded.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    check_path(path)?;
    let list_kind = match path {
        "/phone-number" => Some(ListKind::V1),
        "/v2/phone-number" => Some(ListKind::V2),
        _ => None,
    };
    if let Some(kind) = list_kind {
        return match (method, kind) {
            (&Method::GET | &Method::HEAD, _) => query::normalize(kind, query)
                .map(|q| Route::List(kind, q))
                .map_err(RouteError::BadQuery),
            (&Method::POST, ListKind::V1) => Ok(Route::Create),
            (_, ListKind::V1) => Err(RouteError::MethodNotAllowed("GET, HEAD, POST")),
            (_, ListKind::V2) => Err(RouteError::MethodNotAllowed("GET, HEAD")),
        };
    }
    let Some(id) = path.strip_prefix(PHONE_NUMBER_PREFIX) else {
        return Err(RouteError::NotFound);
    };
    if id.contains('/') {
        return Err(RouteError::NotFound);
    }
    let id = parse_uuid(id).ok_or(RouteError::BadId)?;
    match *method {
        Method::GET | Method::HEAD => Ok(Route::Get(id)),
        Method::PATCH => Ok(Route::Update(id)),
        Method::DELETE => Ok(Route::Delete(id)),
        _ => Err(RouteError::MethodNotAllowed("GET, HEAD, PATCH, DELETE")),
    }
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

    fn at(method: Method, path: &str) -> Result<Route, RouteError> {
        route(&method, path, None)
    }

    #[test]
    fn routes_the_whole_resource() {
        let id = Uuid::parse_str(ID).unwrap();
        let one = format!("/phone-number/{ID}");
        assert_eq!(at(Method::GET, &one), Ok(Route::Get(id)));
        assert_eq!(at(Method::HEAD, &one), Ok(Route::Get(id)));
        assert_eq!(at(Method::PATCH, &one), Ok(Route::Update(id)));
        assert_eq!(at(Method::DELETE, &one), Ok(Route::Delete(id)));
        assert_eq!(at(Method::POST, "/phone-number"), Ok(Route::Create));
        assert_eq!(
            at(Method::GET, "/phone-number"),
            Ok(Route::List(ListKind::V1, String::new()))
        );
        assert_eq!(
            route(&Method::GET, "/v2/phone-number", Some("page=2&limit=5")),
            Ok(Route::List(ListKind::V2, "limit=5&page=2".into()))
        );
        let names: Vec<&str> = [
            Route::Get(id),
            Route::List(ListKind::V1, String::new()),
            Route::List(ListKind::V2, String::new()),
            Route::Create,
            Route::Update(id),
            Route::Delete(id),
        ]
        .iter()
        .map(Route::name)
        .collect();
        assert_eq!(
            names,
            ["get", "list", "list_v2", "create", "update", "delete"]
        );
    }

    #[test]
    fn ids_are_any_version_any_case_normalised_to_lowercase() {
        let upper = ID.to_uppercase();
        let Ok(Route::Get(id)) = at(Method::GET, &format!("/phone-number/{upper}")) else {
            panic!("should route");
        };
        assert_eq!(id.hyphenated().to_string(), ID);
        for id in [
            "c232ab00-9414-11ec-b3c8-9f6bdeced846",
            "01890a5d-ac96-774b-bcce-b302099a8057",
        ] {
            assert!(
                at(Method::GET, &format!("/phone-number/{id}")).is_ok(),
                "{id}"
            );
        }
    }

    #[test]
    fn other_methods_get_405_with_the_allowed_ones() {
        let one = format!("/phone-number/{ID}");
        for m in [Method::POST, Method::PUT, Method::OPTIONS] {
            assert_eq!(
                at(m.clone(), &one),
                Err(RouteError::MethodNotAllowed("GET, HEAD, PATCH, DELETE")),
                "{m}"
            );
        }
        assert_eq!(
            at(Method::DELETE, "/phone-number"),
            Err(RouteError::MethodNotAllowed("GET, HEAD, POST"))
        );
        assert_eq!(
            at(Method::POST, "/v2/phone-number"),
            Err(RouteError::MethodNotAllowed("GET, HEAD"))
        );
    }

    #[test]
    fn list_queries_are_checked() {
        assert!(matches!(
            route(&Method::GET, "/phone-number", Some("limit=5000")),
            Err(RouteError::BadQuery(_))
        ));
        // Elsewhere the query string is ignored.
        assert!(route(&Method::GET, &format!("/phone-number/{ID}"), Some("x=1")).is_ok());
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
                at(Method::GET, &format!("/phone-number/{id}")),
                Err(RouteError::BadId),
                "{id}"
            );
        }
    }

    #[test]
    fn refuses_unknown_paths() {
        for p in [
            "/",
            "/phone-numbers/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "//phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "/phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44/",
            "/phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44/x",
            "/assistant/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "/v2/phone-number/8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44",
            "/phone-number/",
        ] {
            let r = at(Method::GET, p);
            assert!(
                matches!(r, Err(RouteError::NotFound) | Err(RouteError::BadId)),
                "{p}: {r:?}"
            );
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
                matches!(at(Method::GET, p), Err(RouteError::BadPath(_))),
                "{p}"
            );
        }
        let long = format!("/phone-number/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(at(Method::GET, &long), Err(RouteError::TooLong));
    }
}
