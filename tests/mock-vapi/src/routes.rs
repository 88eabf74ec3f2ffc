//! The API as the mock serves it under [`Behavior::Normal`](crate::Behavior::Normal): bearer
//! checks, routing, the phone-number handlers over the stored objects, and the NestJS-shaped
//! answers (which the fault behaviours reuse).

use std::io;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};

use crate::fixtures::{
    self, INVALID_TOKEN, JSON_CONTENT_TYPE, NOT_FOUND_BODY, UNAUTHORIZED_BODY, id_matches,
};
use crate::lock;

/// The body of every answer.
pub(crate) type MockBody = UnsyncBoxBody<Bytes, io::Error>;

/// The API's own state: who may call it and the phone numbers it stores.
pub(crate) struct Api {
    /// `None`: any bearer token but [`INVALID_TOKEN`].
    valid_tokens: Option<Vec<String>>,
    /// The stored phone numbers: the fixtures, then changed by POST, PATCH and DELETE.
    objects: Mutex<Vec<Value>>,
}

impl Api {
    pub(crate) fn new(valid_tokens: Option<Vec<String>>) -> Api {
        Api {
            valid_tokens,
            objects: Mutex::new(fixtures::all()),
        }
    }

    /// The current stored object with that id.
    pub(crate) fn object(&self, id: &str) -> Option<Value> {
        lock(&self.objects)
            .iter()
            .find(|o| id_matches(o, id))
            .cloned()
    }

    /// Restores the fixtures as the stored objects.
    pub(crate) fn reset_objects(&self) {
        *lock(&self.objects) = fixtures::all();
    }

    /// Answers one request like the real API.
    pub(crate) fn route(
        &self,
        method: &Method,
        headers: &HeaderMap,
        path: &str,
        query: &str,
        body: &Bytes,
    ) -> Response<MockBody> {
        if !self.authorized(headers) {
            return json_response(
                StatusCode::UNAUTHORIZED,
                Bytes::from_static(UNAUTHORIZED_BODY.as_bytes()),
            );
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let is_get = method == Method::GET || method == Method::HEAD;
        match segments.as_slice() {
            ["phone-number"] if is_get => self.list(query),
            ["phone-number"] if method == Method::POST => self.create(body),
            ["v2", "phone-number"] if is_get => self.list_v2(query),
            ["phone-number", id] if !id.is_empty() => {
                if is_get {
                    match self.object(id) {
                        Some(obj) => json_value(StatusCode::OK, &obj),
                        None => not_found(),
                    }
                } else if method == Method::PATCH {
                    self.update(id, body)
                } else if method == Method::DELETE {
                    self.delete(id)
                } else {
                    cannot(method, path)
                }
            }
            _ => cannot(method, path),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let value = value.trim();
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let token = token.trim();
        if token.is_empty() {
            return false;
        }
        match &self.valid_tokens {
            Some(valid) => valid.iter().any(|t| t == token),
            None => token != INVALID_TOKEN,
        }
    }

    fn list(&self, query: &str) -> Response<MockBody> {
        let limit = match numeric_param(query, "limit", 100, 0, 1000) {
            Ok(n) => n,
            Err(msg) => return bad_request(&msg),
        };
        let items: Vec<Value> = lock(&self.objects).iter().take(limit).cloned().collect();
        json_value(StatusCode::OK, &Value::Array(items))
    }

    fn list_v2(&self, query: &str) -> Response<MockBody> {
        let limit = match numeric_param(query, "limit", 100, 0, 1000) {
            Ok(n) => n,
            Err(msg) => return bad_request(&msg),
        };
        let page = match numeric_param(query, "page", 1, 1, usize::MAX) {
            Ok(n) => n,
            Err(msg) => return bad_request(&msg),
        };
        let sort_order = match query_param(query, "sortOrder") {
            Some("ASC") => "ASC",
            _ => "DESC",
        };
        let objects = lock(&self.objects);
        let total = objects.len();
        let results: Vec<Value> = objects
            .iter()
            .skip((page - 1).saturating_mul(limit))
            .take(limit)
            .cloned()
            .collect();
        drop(objects);
        let total_pages = if limit == 0 { 0 } else { total.div_ceil(limit) };
        let body = json!({
            "results": results,
            "metadata": {
                "itemsPerPage": limit,
                "totalItems": total,
                "currentPage": page,
                "totalPages": total_pages,
                "hasNextPage": page < total_pages,
                "sortOrder": sort_order,
            }
        });
        json_value(StatusCode::OK, &body)
    }

    fn create(&self, body: &Bytes) -> Response<MockBody> {
        let posted = match parse_object(body) {
            Ok(map) => map,
            Err(msg) => return bad_request(&msg),
        };
        let provider = posted.get("provider").and_then(Value::as_str).unwrap_or("");
        let Some(mut obj) = (match fixtures::canonical_provider(provider) {
            Some(p) if p == provider => fixtures::try_fixture(p),
            _ => None,
        }) else {
            return bad_request(
                "provider must be one of the following values: twilio, vonage, vapi, telnyx, byo-phone-number",
            );
        };
        if let Value::Object(target) = &mut obj {
            for (key, value) in posted {
                if !matches!(key.as_str(), "id" | "orgId" | "createdAt" | "updatedAt") {
                    target.insert(key, value);
                }
            }
            let now = now_iso8601();
            target.insert("id".into(), Value::String(uuid::Uuid::new_v4().to_string()));
            target.insert("createdAt".into(), Value::String(now.clone()));
            target.insert("updatedAt".into(), Value::String(now));
        }
        lock(&self.objects).push(obj.clone());
        json_value(StatusCode::CREATED, &obj)
    }

    fn update(&self, id: &str, body: &Bytes) -> Response<MockBody> {
        let patch = match parse_object(body) {
            Ok(map) => map,
            Err(msg) => return bad_request(&msg),
        };
        let mut objects = lock(&self.objects);
        let Some(obj) = objects.iter_mut().find(|o| id_matches(o, id)) else {
            return not_found();
        };
        if let Value::Object(target) = obj {
            for (key, value) in patch {
                match key.as_str() {
                    "id" | "orgId" | "createdAt" | "updatedAt" => {}
                    // `server` is merged field by field; its `headers` (like `hooks`) are
                    // replaced whole.
                    "server" => match (target.get_mut("server"), value) {
                        (Some(Value::Object(server)), Value::Object(fields)) => {
                            for (k, v) in fields {
                                server.insert(k, v);
                            }
                        }
                        (_, value) => {
                            target.insert(key, value);
                        }
                    },
                    _ => {
                        target.insert(key, value);
                    }
                }
            }
            target.insert("updatedAt".into(), Value::String(now_iso8601()));
        }
        let updated = obj.clone();
        drop(objects);
        json_value(StatusCode::OK, &updated)
    }

    fn delete(&self, id: &str) -> Response<MockBody> {
        let mut objects = lock(&self.objects);
        match objects.iter().position(|o| id_matches(o, id)) {
            Some(i) => {
                let obj = objects.remove(i);
                drop(objects);
                json_value(StatusCode::OK, &obj)
            }
            None => not_found(),
        }
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Parses a numeric query parameter in `min..=max`; `Err` is the 400 message.
fn numeric_param(
    query: &str,
    name: &str,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, String> {
    let Some(raw) = query_param(query, name) else {
        return Ok(default);
    };
    match raw.parse::<usize>() {
        Ok(n) if n < min => Err(format!("{name} must not be less than {min}")),
        Ok(n) if n > max => Err(format!("{name} must not be greater than {max}")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{name} must be a number conforming to the specified constraints"
        )),
    }
}

/// The body as a JSON object; `Err` is the 400 message.
fn parse_object(body: &Bytes) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("body must be a JSON object".to_owned()),
        Err(e) => Err(format!("Unexpected token in JSON: {e}")),
    }
}

/// That status, or 500 for a code outside 100..=999.
pub(crate) fn status_or_500(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A NestJS error: `{"message":..,"error":<reason>,"statusCode":..}`.
pub(crate) fn nest_error(status: StatusCode, message: Value) -> Response<MockBody> {
    let body = json!({
        "message": message,
        "error": status.canonical_reason().unwrap_or("Error"),
        "statusCode": status.as_u16(),
    });
    json_value(status, &body)
}

fn bad_request(message: &str) -> Response<MockBody> {
    nest_error(StatusCode::BAD_REQUEST, json!([message]))
}

fn not_found() -> Response<MockBody> {
    json_response(
        StatusCode::NOT_FOUND,
        Bytes::from_static(NOT_FOUND_BODY.as_bytes()),
    )
}

/// NestJS's answer for an unknown route.
fn cannot(method: &Method, path: &str) -> Response<MockBody> {
    nest_error(
        StatusCode::NOT_FOUND,
        json!(format!("Cannot {method} {path}")),
    )
}

pub(crate) fn full_body(bytes: Bytes) -> MockBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<MockBody> {
    let mut resp = Response::new(full_body(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, body: Bytes) -> Response<MockBody> {
    respond(status, JSON_CONTENT_TYPE, body)
}

fn json_value(status: StatusCode, value: &Value) -> Response<MockBody> {
    json_response(status, Bytes::from(value.to_string()))
}

/// Current time as `2026-08-18T09:41:26.459Z`.
fn now_iso8601() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    iso8601(since.as_secs(), since.subsec_millis())
}

/// Seconds and milliseconds since the Unix epoch as `2026-08-18T09:41:26.459Z`.
fn iso8601(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_vapi_shaped() {
        assert_eq!(iso8601(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(iso8601(1_787_046_086, 459), "2026-08-18T09:41:26.459Z");
        let now = now_iso8601();
        assert_eq!(now.len(), "2026-08-18T09:41:26.459Z".len());
        assert!(now.ends_with('Z'));
    }

    #[test]
    fn numeric_params_are_checked_like_nestjs() {
        assert_eq!(numeric_param("", "limit", 100, 0, 1000), Ok(100));
        assert_eq!(
            numeric_param("page=2&limit=7", "limit", 100, 0, 1000),
            Ok(7)
        );
        assert_eq!(
            numeric_param("limit=1001", "limit", 100, 0, 1000),
            Err("limit must not be greater than 1000".to_owned())
        );
        assert_eq!(
            numeric_param("page=0", "page", 1, 1, usize::MAX),
            Err("page must not be less than 1".to_owned())
        );
        assert!(numeric_param("limit", "limit", 100, 0, 1000).is_err());
        assert!(numeric_param("limit=-1", "limit", 100, 0, 1000).is_err());
    }

    #[test]
    fn tokens() {
        let api = Api::new(None);
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert!(api.authorized(&with("Bearer k")));
        assert!(api.authorized(&with("bearer  k ")));
        assert!(!api.authorized(&with("Bearer invalid-key")));
        assert!(!api.authorized(&with("Bearer ")));
        assert!(!api.authorized(&with("Basic k")));
        assert!(!api.authorized(&HeaderMap::new()));
        let strict = Api::new(Some(vec!["good".to_owned()]));
        assert!(strict.authorized(&with("Bearer good")));
        assert!(!strict.authorized(&with("Bearer k")));
    }
}
