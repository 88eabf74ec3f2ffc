//! Query strings of the list routes: checked against the upstream spec and put in one canonical
//! form.
//!
//! The canonical form is what goes upstream and what the cache key holds, so `?limit=5&page=1`,
//! `?page=1&limit=05` and `?page=1&limit=5&` are one entry and one upstream request shape. Anything
//! the spec does not name, or names with another format, is refused before the upstream sees it.

use std::borrow::Cow;
use std::fmt::Write as _;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Which list route a query belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `GET /phone-number`: a bare array.
    V1,
    /// `GET /v2/phone-number`: `{"results": [...], "metadata": {...}}`.
    V2,
}

/// A query parameter's expected format.
#[derive(Debug, Clone, Copy)]
enum Format {
    /// A whole number within the range.
    Integer { min: u64, max: u64 },
    /// An RFC 3339 date-time.
    DateTime,
    /// One of these exact strings.
    OneOf(&'static [&'static str]),
    /// Any text up to this many characters.
    Text { max_chars: usize },
}

const DATE_PARAMS: [&str; 8] = [
    "createdAtGt",
    "createdAtLt",
    "createdAtGe",
    "createdAtLe",
    "updatedAtGt",
    "updatedAtLt",
    "updatedAtGe",
    "updatedAtLe",
];

/// The spec's parameters for each route (`phone-number.openapi.json`).
fn format_of(kind: ListKind, name: &str) -> Option<Format> {
    if name == "limit" {
        return Some(Format::Integer { min: 0, max: 1000 });
    }
    if DATE_PARAMS.contains(&name) {
        return Some(Format::DateTime);
    }
    match (kind, name) {
        (ListKind::V2, "page") => Some(Format::Integer {
            min: 1,
            max: u32::MAX as u64,
        }),
        (ListKind::V2, "sortOrder") => Some(Format::OneOf(&["ASC", "DESC"])),
        (ListKind::V2, "sortBy") => Some(Format::OneOf(&["createdAt", "duration", "cost"])),
        (ListKind::V2, "search") => Some(Format::Text { max_chars: 100 }),
        _ => None,
    }
}

/// Characters left as they are in canonical values: RFC 3986 unreserved.
const VALUE_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Checks `raw` (the query string without `?`) and returns its canonical form: parameters sorted
/// by name, values normalised and percent-encoded. Empty when there are no parameters.
pub fn normalize(kind: ListKind, raw: Option<&str>) -> Result<String, String> {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).ok_or("the query string is not valid percent-encoded UTF-8")?;
        let value = decode(value).ok_or("the query string is not valid percent-encoded UTF-8")?;
        let Some(format) = format_of(kind, &name) else {
            return Err(format!("unknown query parameter {}", quoted(&name)));
        };
        if params.iter().any(|(n, _)| *n == name) {
            return Err(format!("query parameter {} is repeated", quoted(&name)));
        }
        let value = check(format, &value)
            .ok_or_else(|| format!("query parameter {} {}", quoted(&name), describe(format)))?;
        params.push((name.into_owned(), value));
    }
    params.sort();
    let mut out = String::new();
    for (i, (name, value)) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{name}={}", utf8_percent_encode(value, VALUE_SET));
    }
    Ok(out)
}

/// Form-style decoding (`+` is a space), as the upstream's framework reads query strings.
fn decode(s: &str) -> Option<Cow<'_, str>> {
    let spaced: Cow<'_, str> = if s.contains('+') {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    match spaced {
        Cow::Borrowed(b) => percent_decode_str(b).decode_utf8().ok(),
        Cow::Owned(o) => percent_decode_str(&o)
            .decode_utf8()
            .ok()
            .map(|c| Cow::Owned(c.into_owned())),
    }
}

/// The canonical value, or `None` when the value does not fit the format.
fn check(format: Format, value: &str) -> Option<String> {
    match format {
        Format::Integer { min, max } => {
            if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = value.parse().ok()?;
            (min..=max).contains(&n).then(|| n.to_string())
        }
        Format::DateTime => {
            time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|_| value.to_owned())
        }
        Format::OneOf(allowed) => allowed.contains(&value).then(|| value.to_owned()),
        Format::Text { max_chars } => (value.chars().count() <= max_chars
            && !value.chars().any(char::is_control))
        .then(|| value.to_owned()),
    }
}

fn describe(format: Format) -> String {
    match format {
        Format::Integer { min, max } => format!("must be a whole number from {min} to {max}"),
        Format::DateTime => "must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z".into(),
        Format::OneOf(allowed) => format!("must be one of {}", allowed.join(", ")),
        Format::Text { max_chars } => {
            format!("must be at most {max_chars} characters without control characters")
        }
    }
}

/// A parameter name for an error message: quoted if it is a plain name, else described, so a
/// message never carries arbitrary caller text.
fn quoted(name: &str) -> String {
    if !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        format!("\"{name}\"")
    } else {
        "(an unprintable name)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_sorted_and_normalised() {
        assert_eq!(normalize(ListKind::V1, None).unwrap(), "");
        assert_eq!(normalize(ListKind::V1, Some("")).unwrap(), "");
        assert_eq!(
            normalize(ListKind::V1, Some("limit=05&")).unwrap(),
            "limit=5"
        );
        assert_eq!(
            normalize(ListKind::V2, Some("sortOrder=ASC&page=2&limit=10")).unwrap(),
            "limit=10&page=2&sortOrder=ASC"
        );
        assert_eq!(
            normalize(ListKind::V2, Some("page=2&limit=10&sortOrder=ASC")).unwrap(),
            normalize(ListKind::V2, Some("sortOrder=ASC&limit=10&page=2")).unwrap(),
        );
        assert_eq!(
            normalize(ListKind::V1, Some("createdAtGt=2026-01-31T12%3A00%3A00Z")).unwrap(),
            "createdAtGt=2026-01-31T12%3A00%3A00Z"
        );
        assert_eq!(
            normalize(ListKind::V2, Some("search=support+line%21")).unwrap(),
            "search=support%20line%21"
        );
        // An offset's "+" must be sent as %2B: a bare "+" in a query string means a space.
        assert!(
            normalize(
                ListKind::V1,
                Some("updatedAtLe=2026-01-31T12:00:00.123%2B02:00")
            )
            .is_ok()
        );
        assert!(
            normalize(
                ListKind::V1,
                Some("updatedAtLe=2026-01-31T12:00:00.123+02:00")
            )
            .is_err()
        );
        assert!(normalize(ListKind::V1, Some("limit=0")).is_ok());
        assert!(normalize(ListKind::V1, Some("limit=1000")).is_ok());
    }

    #[test]
    fn refuses_what_the_spec_does_not_allow() {
        let bad: &[(ListKind, &str, &str)] = &[
            (ListKind::V1, "limit=1001", "limit"),
            (ListKind::V1, "limit=-1", "limit"),
            (ListKind::V1, "limit=ten", "limit"),
            (ListKind::V1, "limit=1.5", "limit"),
            (ListKind::V1, "limit=", "limit"),
            (ListKind::V1, "page=1", "page"),
            (ListKind::V1, "foo=bar", "foo"),
            (ListKind::V1, "limit=1&limit=2", "repeated"),
            (ListKind::V1, "createdAtGt=yesterday", "createdAtGt"),
            (
                ListKind::V1,
                "createdAtGt=2026-13-01T00:00:00Z",
                "createdAtGt",
            ),
            (ListKind::V2, "page=0", "page"),
            (ListKind::V2, "sortOrder=asc", "sortOrder"),
            (ListKind::V2, "sortBy=name", "sortBy"),
            (ListKind::V2, "search=%00", "search"),
            (ListKind::V1, "limit=%ff", "UTF-8"),
        ];
        for (kind, q, expect) in bad {
            let err = normalize(*kind, Some(q)).expect_err(q);
            assert!(err.contains(expect), "{q}: {err}");
        }
        let long = format!("search={}", "a".repeat(101));
        assert!(normalize(ListKind::V2, Some(&long)).is_err());
        let ok = format!("search={}", "é".repeat(100));
        assert!(
            normalize(ListKind::V2, Some(&ok)).is_ok(),
            "counted in characters"
        );
    }

    #[test]
    fn error_messages_never_echo_odd_names() {
        let err = normalize(ListKind::V1, Some("%3Cscript%3E=1")).unwrap_err();
        assert!(!err.contains("script"), "{err}");
    }
}
