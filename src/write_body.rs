//! Checks on the JSON body of a write (POST, PATCH) before it is forwarded byte for byte.
//!
//! The body must be one JSON object, with no object key repeated at any depth (parsers disagree
//! on which duplicate wins, so `{"twilioAuthToken":"[REDACTED]","twilioAuthToken":"real"}` would
//! pass a check that reads the first and write the second), and free of the redaction
//! placeholder (a client that sends back an object it read would overwrite the real secret with
//! `"[REDACTED]"`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::redact;

/// Why a write body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Not valid JSON.
    NotJson,
    /// Valid JSON, but not an object.
    NotObject,
    /// An object repeats this key (the first one repeated, possibly cut short).
    DuplicateKey(String),
    /// Contains the redaction placeholder.
    Placeholder,
}

/// Longest duplicate key quoted back in an error.
const MAX_QUOTED_KEY: usize = 64;

/// Checks `bytes` as a write body.
pub(crate) fn check(bytes: &[u8]) -> Result<(), BodyError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match NoDuplicates.deserialize(&mut deserializer) {
        Ok(()) => {}
        Err(error) => {
            return Err(match duplicate_of(&error) {
                Some(key) => BodyError::DuplicateKey(key),
                None => BodyError::NotJson,
            });
        }
    }
    if deserializer.end().is_err() {
        return Err(BodyError::NotJson);
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| BodyError::NotJson)?;
    if !value.is_object() {
        return Err(BodyError::NotObject);
    }
    if redact::contains_placeholder(&value) {
        return Err(BodyError::Placeholder);
    }
    Ok(())
}

const DUPLICATE: &str = "duplicate key: ";

fn duplicate_of(error: &serde_json::Error) -> Option<String> {
    let text = error.to_string();
    let start = text.find(DUPLICATE)? + DUPLICATE.len();
    // serde_json appends " at line L column C"; the key itself was written before it.
    let rest = &text[start..];
    let key = rest.rsplit_once(" at line ").map_or(rest, |(key, _)| key);
    Some(key.to_owned())
}

/// Walks a JSON document, keeping nothing, failing on the first object with a repeated key.
struct NoDuplicates;

impl<'de> DeserializeSeed<'de> for NoDuplicates {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoDuplicates {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicates)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                let mut shown = key;
                if shown.len() > MAX_QUOTED_KEY {
                    let mut end = MAX_QUOTED_KEY;
                    while !shown.is_char_boundary(end) {
                        end -= 1;
                    }
                    shown.truncate(end);
                }
                return Err(de::Error::custom(format!("{DUPLICATE}{shown}")));
            }
            map.next_value_seed(NoDuplicates)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_and_named() {
        assert_eq!(
            check(br#"{"twilioAuthToken":"[REDACTED]","twilioAuthToken":"real"}"#),
            Err(BodyError::DuplicateKey("twilioAuthToken".into()))
        );
        assert_eq!(
            check(br#"{"server":{"headers":[{"a":1,"a":2}]}}"#),
            Err(BodyError::DuplicateKey("a".into()))
        );
        // Escaped spellings of one key are the same key.
        assert_eq!(
            check(br#"{"name":"x","n\u0061me":"y"}"#),
            Err(BodyError::DuplicateKey("name".into()))
        );
        assert_eq!(
            check(br#"{"a":{"b":1},"c":{"b":2}}"#),
            Ok(()),
            "same key, other objects"
        );
    }

    #[test]
    fn other_refusals() {
        assert_eq!(check(b"[1]"), Err(BodyError::NotObject));
        assert_eq!(check(b"{"), Err(BodyError::NotJson));
        assert_eq!(check(b"{} {}"), Err(BodyError::NotJson));
        assert_eq!(check(br#"{"x":"[REDACTED]"}"#), Err(BodyError::Placeholder));
        assert_eq!(check(br#"{"name":"ok"}"#), Ok(()));
    }
}
