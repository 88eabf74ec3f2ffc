//! Secret redaction for upstream phone-number bodies.
//!
//! Every body that comes back from Vapi (single objects, bare lists, `{"results": [...]}` pages and
//! error bodies alike) goes through [`Policy::redact`] before it is cached or returned, so a secret
//! can never reach a client or sit in the cache. Vapi's objects carry live credentials (Twilio auth
//! tokens, SIP digest passwords, webhook headers, tokens inside URLs) and new fields appear about
//! monthly, so the policy is deliberately broad and name-based rather than a fixed list of known
//! paths: a field we have never seen whose name says "token" or "password" is hidden too, and only
//! names on an explicit allow-list are exempt. The same reasoning makes it fail closed: a document
//! nested deeper than the configured limit is an error rather than a partially checked answer.
//!
//! Secrets are hidden at any depth:
//! 1. always-secret names (`twilioAuthToken`, `twilioApiSecret`, `twilioApiKey`, `serverUrlSecret`,
//!    `secret`), which the allow-list cannot exempt;
//! 2. `username` and `password` anywhere inside an `authentication` value (its objects, and
//!    objects in arrays in it);
//! 3. every value of a `headers` / `sipHeaders` object (a non-object value is hidden whole);
//! 4. names that name a credential: containing `secret`, `password`, `passwd`, `token`, `apikey`,
//!    `accesskey` or `privatekey`, or equal to a credential-carrying HTTP header's name
//!    (`authorization`, `proxyAuthorization`, `cookie`, `setCookie`), plus configured extra
//!    names, unless allow-listed;
//! 5. inside any URL-like string (`scheme://...`, `//host...`, `sip:`/`sips:`): the userinfo
//!    password, or the whole userinfo when it has no password (a bare `TOKEN@host` is a
//!    credential, as in `https://TOKEN@host/`); query and fragment parameters (separated by `&`
//!    or `;`) whose name looks secret; and parameter values that are themselves URLs carrying a
//!    secret (hidden whole; past [`MAX_URL_NESTING`] levels, hidden whole unread).
//!
//! Names are compared after folding case and dropping separators (`-`, `_`, `.`, spaces), so
//! `client-secret`, `client.secret`, `CLIENT_SECRET` and `clientSecret` are one name, and so are
//! `api_key`, `api-key` and `apiKey`. Nulls stay null: a null is not a secret, and masking it
//! would tell clients that one is set.

use std::fmt;

use serde_json::{Map, Value};

mod url;

use url::url_kind;
pub use url::{MAX_URL_NESTING, redact_url};

/// The text that replaces a secret value in [`Mode::Mask`].
pub const PLACEHOLDER: &str = "[REDACTED]";

/// Nesting limit used by [`Policy::default`].
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Redaction recurses once per nesting level; this ceiling on a configured `max_depth` keeps that
/// recursion far inside a 2 MiB thread stack whatever the configuration says. serde_json refuses
/// documents nested deeper than 128 anyway, so no real body is lost by it.
const MAX_DEPTH_CEILING: usize = 512;

/// Names that are secret wherever they appear, allow-list or not (lowercase).
const ALWAYS_SECRET: [&[u8]; 5] = [
    b"twilioauthtoken",
    b"twilioapisecret",
    b"twilioapikey",
    b"serverurlsecret",
    b"secret",
];

/// A field whose folded name (see [`with_folded_name`]) contains one of these is secret unless
/// allow-listed: each names a credential whatever surrounds it (`clientSecret`, `accessKeyId` is
/// over-hidden on purpose).
const SECRET_NAME_PARTS: [&[u8]; 7] = [
    b"secret",
    b"password",
    b"passwd",
    b"token",
    b"apikey",
    b"accesskey",
    b"privatekey",
];

/// Folded names of HTTP headers that carry credentials: a field with one of these names holds
/// what the header would (a field named `authorization` outside any `headers` object is a bearer
/// token all the same). Exact names: `authorizationUrl` is not a credential.
const CREDENTIAL_HEADER_NAMES: [&[u8]; 4] = [
    b"authorization",
    b"proxyauthorization",
    b"cookie",
    b"setcookie",
];

/// Names the substring rule would otherwise catch but that carry no secret.
///
/// `twilioAccountSid` and `credentialId` are identifiers clients need (they do not match today,
/// but listing them keeps them safe if the rules ever widen). `isServerUrlSecretSet` is a boolean
/// that only says whether a secret exists. A scan of every property name in the phone-number
/// OpenAPI spec (82 names) found no other non-secret name matching the substring rule: the only
/// matches are the real secrets `twilioAuthToken`, `twilioApiKey`, `twilioApiSecret` and
/// `password`. The spec's boolean flags (`smsEnabled`, `endCallEnabled`,
/// `staticIpAddressesEnabled`, `numberE164CheckEnabled`, `sipHeadersInReferToEnabled`) do not
/// match either; the last one is not mistaken for `sipHeaders` because that rule is exact-name.
const DEFAULT_ALLOW: [&str; 3] = ["twilioAccountSid", "credentialId", "isServerUrlSecretSet"];

/// What happens to a secret value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The value becomes [`PLACEHOLDER`]; the key stays so clients can see the field exists.
    Mask,
    /// The field (or URL parameter, or userinfo password) is removed altogether.
    Remove,
}

/// Version of the built-in redaction rules; part of [`Policy::identity`].
pub const RULES_VERSION: u32 = 2;

/// A compiled redaction policy: mode, configured extra/allowed names and the nesting limit.
#[derive(Debug, Clone)]
pub struct Policy {
    mode: Mode,
    /// Folded extra secret names.
    extra: Vec<Vec<u8>>,
    /// Folded allow-list: the defaults plus configured names.
    allow: Vec<Vec<u8>>,
    max_depth: usize,
}

/// Why a body could not be redacted; the body must then not be used at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedactError {
    /// The document nests objects/arrays deeper than `limit`.
    TooDeep {
        /// The nesting limit that was exceeded.
        limit: usize,
    },
}

impl fmt::Display for RedactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedactError::TooDeep { limit } => write!(
                f,
                "document nests deeper than the redaction limit of {limit} levels"
            ),
        }
    }
}

impl std::error::Error for RedactError {}

impl Default for Policy {
    /// Mask mode, no extra names, the default allow-list and a nesting limit of 64.
    fn default() -> Self {
        Policy::new(Mode::Mask, &[], &[], DEFAULT_MAX_DEPTH)
    }
}

/// How one object entry is treated, decided from its name and the enclosing object.
enum Action {
    /// The whole value is secret.
    Secret,
    /// A `headers`/`sipHeaders` value: every entry is secret.
    Headers,
    /// An `authentication` value: `username`/`password` inside it are secret.
    Authentication,
    /// Not secret by name; look inside.
    Descend,
}

impl Policy {
    /// Builds a policy.
    ///
    /// `extra_fields`: additional field names to redact at any depth (exact name, compared
    /// case-insensitively). `allow_fields`: names (exact, case-insensitive) that the name-based
    /// rules (the substring rule and `extra_fields`) must not redact; they are added to the
    /// built-in allow-list and never exempt the always-secret names, `authentication`
    /// credentials or header values. `max_depth`: nesting limit; deeper documents are an error
    /// (values above 512 are lowered to 512 to bound recursion). Names are lowercased ASCII-only,
    /// matching how keys are compared; empty names are ignored.
    pub fn new(
        mode: Mode,
        extra_fields: &[String],
        allow_fields: &[String],
        max_depth: usize,
    ) -> Self {
        let fold = |s: &str| with_folded_name(s.as_bytes(), <[u8]>::to_vec);
        let extra = extra_fields
            .iter()
            .map(|s| fold(s))
            .filter(|s| !s.is_empty())
            .collect();
        let allow = DEFAULT_ALLOW
            .iter()
            .copied()
            .chain(allow_fields.iter().map(String::as_str))
            .map(fold)
            .filter(|s| !s.is_empty())
            .collect();
        Policy {
            mode,
            extra,
            allow,
            max_depth: max_depth.min(MAX_DEPTH_CEILING),
        }
    }

    /// The configured [`Mode`].
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A short, stable name of what this policy does, for the shared tier's key names: replicas
    /// only share entries redacted by the same rules. It covers the configuration and
    /// [`RULES_VERSION`], the version of the built-in rules (bump it whenever they change, so a
    /// rolling update never serves entries redacted by the older release's rules).
    pub fn identity(&self) -> String {
        let names = |list: &[Vec<u8>]| {
            let mut names: Vec<String> = list
                .iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect();
            names.sort();
            names.dedup();
            names.join(",")
        };
        let description = format!(
            "rules={RULES_VERSION}|mode={:?}|extra={}|allow={}|depth={}",
            self.mode,
            names(&self.extra),
            names(&self.allow),
            self.max_depth
        );
        let hash = blake3::hash(description.as_bytes());
        hash.to_hex()[..16].to_owned()
    }

    /// Redacts `value` in place and returns how many values were hidden (each masked or removed
    /// field counts once, each rewritten URL string counts once; values already equal to the
    /// placeholder are left alone and not counted, so a second pass returns 0).
    ///
    /// On error the value may be partly redacted and MUST NOT be used.
    pub fn redact(&self, value: &mut Value) -> Result<usize, RedactError> {
        let mut count = 0;
        self.redact_value(value, false, 0, &mut count)?;
        Ok(count)
    }

    /// Depth of a container entered from one at `depth`, or the error if that is too deep.
    fn enter(&self, depth: usize) -> Result<usize, RedactError> {
        let depth = depth + 1;
        if depth > self.max_depth {
            Err(RedactError::TooDeep {
                limit: self.max_depth,
            })
        } else {
            Ok(depth)
        }
    }

    /// `depth` is the nesting level of the container holding `value` (0 for the root);
    /// `in_authentication`: `value` is (inside) the value of an `authentication` key.
    fn redact_value(
        &self,
        value: &mut Value,
        in_authentication: bool,
        depth: usize,
        count: &mut usize,
    ) -> Result<(), RedactError> {
        match value {
            Value::String(s) => {
                if let Some(redacted) = redact_url(s, self.mode) {
                    *s = redacted;
                    *count += 1;
                }
            }
            Value::Array(items) => {
                let depth = self.enter(depth)?;
                for item in items {
                    self.redact_value(item, in_authentication, depth, count)?;
                }
            }
            Value::Object(map) => {
                let depth = self.enter(depth)?;
                self.redact_object(map, in_authentication, depth, count)?;
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }

    /// `in_authentication`: the map is (inside) the value of an `authentication` key.
    fn redact_object(
        &self,
        map: &mut Map<String, Value>,
        in_authentication: bool,
        depth: usize,
        count: &mut usize,
    ) -> Result<(), RedactError> {
        // `retain` lets one pass both rewrite values and drop keys (Remove mode) without
        // collecting the keys to drop; its closure cannot return an error, so the first error
        // is parked here and the remaining entries are skipped untouched.
        let mut failure = None;
        map.retain(|key, value| {
            if failure.is_some() {
                return true;
            }
            match self.redact_entry(key, value, in_authentication, depth, count) {
                Ok(keep) => keep,
                Err(err) => {
                    failure = Some(err);
                    true
                }
            }
        });
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Redacts one object entry; returns whether the entry stays.
    fn redact_entry(
        &self,
        key: &str,
        value: &mut Value,
        in_authentication: bool,
        depth: usize,
        count: &mut usize,
    ) -> Result<bool, RedactError> {
        match self.classify(key, in_authentication) {
            Action::Secret => Ok(self.redact_whole(value, count)),
            Action::Headers => match value {
                Value::Object(headers) => {
                    self.enter(depth)?;
                    headers.retain(|_, header| self.redact_whole(header, count));
                    Ok(true)
                }
                // A header list or raw header string has no names to keep: all of it is secret.
                _ => Ok(self.redact_whole(value, count)),
            },
            Action::Authentication => match value {
                // Not Vapi's shape, but a string here is most likely a ready-made credential
                // (`Basic ...`, a token), so fail closed.
                Value::String(_) => Ok(self.redact_whole(value, count)),
                // Objects, and arrays of them: everything below counts as inside.
                _ => {
                    self.redact_value(value, true, depth, count)?;
                    Ok(true)
                }
            },
            Action::Descend => {
                self.redact_value(value, in_authentication, depth, count)?;
                Ok(true)
            }
        }
    }

    fn classify(&self, key: &str, in_authentication: bool) -> Action {
        with_folded_name(key.as_bytes(), |k| {
            if in_authentication && (k == b"username" || k == b"password") {
                return Action::Secret;
            }
            if ALWAYS_SECRET.contains(&k)
                || CREDENTIAL_HEADER_NAMES.contains(&k)
                || self.is_secret_name(k)
            {
                return Action::Secret;
            }
            match k {
                b"headers" | b"sipheaders" => Action::Headers,
                b"authentication" => Action::Authentication,
                _ => Action::Descend,
            }
        })
    }

    /// The name-based rules (substring + extra names), minus the allow-list.
    fn is_secret_name(&self, folded: &[u8]) -> bool {
        let named = SECRET_NAME_PARTS
            .iter()
            .any(|part| contains_bytes(folded, part))
            || self.extra.iter().any(|name| name == folded);
        // The allow-list is consulted only for names that matched, which are rare.
        named && !self.allow.iter().any(|name| name == folded)
    }

    /// Hides a whole secret value; returns whether its entry stays (false: remove it).
    fn redact_whole(&self, value: &mut Value, count: &mut usize) -> bool {
        match value {
            Value::Null => true,
            _ if self.mode == Mode::Remove => {
                *count += 1;
                false
            }
            // Already masked (a second pass, or a cached body): nothing new to hide.
            Value::String(s) if s == PLACEHOLDER => true,
            _ => {
                *value = Value::String(PLACEHOLDER.to_owned());
                *count += 1;
                true
            }
        }
    }
}

/// Longest key lowercased on the stack; longer keys (rare) allocate.
const KEY_BUF_LEN: usize = 64;

/// Calls `f` with a field name folded for comparison: ASCII-lowercased, with the separators
/// `-`, `_`, `.` and spaces dropped. Without allocating for short names.
fn with_folded_name<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let keep = |c: &&u8| !matches!(**c, b'-' | b'_' | b'.' | b' ');
    if bytes.len() <= KEY_BUF_LEN {
        let mut buf = [0u8; KEY_BUF_LEN];
        let mut n = 0;
        for c in bytes.iter().filter(keep) {
            buf[n] = c.to_ascii_lowercase();
            n += 1;
        }
        f(&buf[..n])
    } else {
        let folded: Vec<u8> = bytes
            .iter()
            .filter(keep)
            .map(u8::to_ascii_lowercase)
            .collect();
        f(&folded)
    }
}

/// Calls `f` with `bytes` ASCII-lowercased, without allocating for short input. This runs for
/// every key of every upstream body, so it avoids a `String` per key.
fn with_ascii_lower<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if bytes.len() <= KEY_BUF_LEN {
        let mut buf = [0u8; KEY_BUF_LEN];
        let lower = &mut buf[..bytes.len()];
        lower.copy_from_slice(bytes);
        lower.make_ascii_lowercase();
        f(lower)
    } else {
        f(&bytes.to_ascii_lowercase())
    }
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// True when the JSON value carries the placeholder anywhere: a string equal to
/// [`PLACEHOLDER`], or a URL-like string containing it (a masked userinfo password or query
/// value, also in its percent-encoded form `%5BREDACTED%5D`). Used to refuse write bodies that
/// would round-trip a masked value over the real secret. Other prose merely mentioning the
/// placeholder is not flagged.
pub fn contains_placeholder(value: &Value) -> bool {
    // An explicit stack: write bodies come straight from clients and this must not overflow
    // the stack on whatever nesting they send.
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) => {
                if s == PLACEHOLDER
                    || (url_kind(s).is_some()
                        && (s.contains(PLACEHOLDER)
                            || with_ascii_lower(s.as_bytes(), |lower| {
                                contains_bytes(lower, b"%5bredacted%5d")
                            })))
                {
                    return true;
                }
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIXTURE: &str = include_str!("../../tests/fixtures/example-twilio-phone-number.json");

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).expect("fixture parses")
    }

    fn mask() -> Policy {
        Policy::default()
    }

    fn remove() -> Policy {
        Policy::new(Mode::Remove, &[], &[], DEFAULT_MAX_DEPTH)
    }

    fn redacted(policy: &Policy, mut value: Value) -> Value {
        policy.redact(&mut value).expect("redacts");
        value
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Every secret string in the fixture, read from the fixture itself.
    fn fixture_secrets(original: &Value) -> Vec<String> {
        let mut secrets = Vec::new();
        for key in ["twilioAuthToken", "twilioApiKey", "twilioApiSecret"] {
            secrets.push(original[key].as_str().expect("string").to_owned());
        }
        let headers = original["server"]["headers"].as_object().expect("headers");
        assert_eq!(headers.len(), 3);
        for value in headers.values() {
            secrets.push(value.as_str().expect("string").to_owned());
        }
        let sip = original["fallbackDestination"]["sipHeaders"]
            .as_object()
            .expect("sipHeaders");
        assert_eq!(sip.len(), 1);
        for value in sip.values() {
            secrets.push(value.as_str().expect("string").to_owned());
        }
        secrets.push("FAKE-QUERY-TOKEN".to_owned());
        secrets
    }

    #[test]
    fn fixture_mask_hides_every_secret_and_keeps_the_rest() {
        let original = fixture();
        let mut value = original.clone();
        let count = mask().redact(&mut value).expect("redacts");
        let text = serde_json::to_string(&value).expect("serializes");
        for secret in fixture_secrets(&original) {
            assert!(!text.contains(&secret), "{secret} leaked: {text}");
        }
        // 3 twilio fields + 3 headers + 1 sip header + 1 URL.
        assert_eq!(count, 8);

        for key in ["twilioAuthToken", "twilioApiKey", "twilioApiSecret"] {
            assert_eq!(value[key], PLACEHOLDER, "{key}");
        }
        for name in ["Authorization", "X-Api-Key", "X-Vapi-Secret"] {
            assert_eq!(value["server"]["headers"][name], PLACEHOLDER, "{name}");
        }
        assert_eq!(
            value["fallbackDestination"]["sipHeaders"]["X-Auth-Token"],
            PLACEHOLDER
        );
        assert_eq!(
            value["server"]["url"],
            "https://hooks.example.com/vapi/webhook?token=[REDACTED]"
        );

        for key in ["twilioAccountSid", "number", "id", "orgId", "name", "hooks"] {
            assert_eq!(value[key], original[key], "{key}");
        }
        for key in [
            "credentialId",
            "backoffPlan",
            "encryptedPaths",
            "timeoutSeconds",
        ] {
            assert_eq!(value["server"][key], original["server"][key], "{key}");
        }
        for key in ["sipUri", "message", "transferPlan", "description"] {
            assert_eq!(
                value["fallbackDestination"][key], original["fallbackDestination"][key],
                "{key}"
            );
        }
        assert_eq!(
            value["fallbackDestination"]["sipUri"],
            "sip:overflow@pbx.example.com"
        );
    }

    #[test]
    fn fixture_remove_drops_secret_keys() {
        let original = fixture();
        let value = redacted(&remove(), original.clone());
        let text = serde_json::to_string(&value).expect("serializes");
        for secret in fixture_secrets(&original) {
            assert!(!text.contains(&secret), "{secret} leaked: {text}");
        }
        assert!(!text.contains(PLACEHOLDER));
        for key in ["twilioAuthToken", "twilioApiKey", "twilioApiSecret"] {
            assert!(value.get(key).is_none(), "{key} still present");
        }
        assert_eq!(value["server"]["headers"], json!({}));
        assert_eq!(value["fallbackDestination"]["sipHeaders"], json!({}));
        assert_eq!(
            value["server"]["url"],
            "https://hooks.example.com/vapi/webhook"
        );
        assert_eq!(value["twilioAccountSid"], original["twilioAccountSid"]);
        assert_eq!(value["hooks"], original["hooks"]);
    }

    #[test]
    fn list_responses_are_redacted_element_by_element() {
        let list = json!([fixture(), {"results": [fixture()], "metadata": {"totalItems": 2}}]);
        let value = redacted(&mask(), list);
        assert_eq!(value[0]["twilioAuthToken"], PLACEHOLDER);
        assert_eq!(value[1]["results"][0]["twilioAuthToken"], PLACEHOLDER);
        assert_eq!(value[1]["metadata"]["totalItems"], 2);
    }

    #[test]
    fn authentication_credentials_are_secret() {
        let value = redacted(
            &mask(),
            json!({
                "provider": "vapi",
                "username": "top-level-name-is-fine",
                "authentication": {"realm": "sip.example.com", "username": "alice", "Password": "pw"}
            }),
        );
        assert_eq!(value["authentication"]["username"], PLACEHOLDER);
        assert_eq!(value["authentication"]["Password"], PLACEHOLDER);
        assert_eq!(value["authentication"]["realm"], "sip.example.com");
        assert_eq!(value["username"], "top-level-name-is-fine");

        let value = redacted(
            &remove(),
            json!({"Authentication": {"realm": "r", "username": "alice", "password": "pw"}}),
        );
        assert_eq!(value["Authentication"], json!({"realm": "r"}));

        // A string where an object was expected is most likely a credential.
        let value = redacted(&mask(), json!({"authentication": "Basic YWxpY2U6cHc="}));
        assert_eq!(value["authentication"], PLACEHOLDER);
    }

    #[test]
    fn sip_headers_in_hook_destinations_are_secret() {
        let value = redacted(
            &mask(),
            json!({"hooks": [
                {"on": "call.ringing", "do": {"type": "transfer", "destination": {
                    "type": "sip", "sipUri": "sip:a@b.example", "sipHeaders": {"X-One": "s1"}}}},
                {"on": "call.ending", "do": [{"type": "transfer", "destination": {
                    "type": "sip", "sipHeaders": {"X-Two": "s2", "X-Null": null}}}]}
            ]}),
        );
        let text = serde_json::to_string(&value).expect("serializes");
        assert!(!text.contains("s1") && !text.contains("s2"), "{text}");
        assert_eq!(
            value["hooks"][0]["do"]["destination"]["sipHeaders"]["X-One"],
            PLACEHOLDER
        );
        assert_eq!(
            value["hooks"][1]["do"][0]["destination"]["sipHeaders"]["X-Two"],
            PLACEHOLDER
        );
        assert_eq!(
            value["hooks"][1]["do"][0]["destination"]["sipHeaders"]["X-Null"],
            Value::Null
        );
        assert_eq!(
            value["hooks"][0]["do"]["destination"]["sipUri"],
            "sip:a@b.example"
        );
    }

    #[test]
    fn non_object_headers_are_secret_whole() {
        let value = redacted(
            &mask(),
            json!({"headers": "Authorization: Bearer x", "server": {"HEADERS": ["a", "b"]}}),
        );
        assert_eq!(value["headers"], PLACEHOLDER);
        assert_eq!(value["server"]["HEADERS"], PLACEHOLDER);

        let value = redacted(&remove(), json!({"sipHeaders": ["X-A: b"], "keep": 1}));
        assert_eq!(value, json!({"keep": 1}));
    }

    #[test]
    fn legacy_secret_fields_are_secret() {
        let value = redacted(
            &mask(),
            json!({"serverUrlSecret": "legacy", "serverUrl": "https://h.example/x",
                   "server": {"secret": "shh", "url": "https://h.example/y"}}),
        );
        assert_eq!(value["serverUrlSecret"], PLACEHOLDER);
        assert_eq!(value["server"]["secret"], PLACEHOLDER);
        assert_eq!(value["serverUrl"], "https://h.example/x");
        assert_eq!(value["server"]["url"], "https://h.example/y");
    }

    #[test]
    fn undocumented_secret_names_are_secret() {
        let value = redacted(
            &mask(),
            json!({"newThing": {"webhookPrivateKey": "k1", "someApiKey": "k2",
                   "db_password": "k3", "refreshToken": "k4", "x-api-key": "k5",
                   "passwdHash": "k6", "label": "keep me"}}),
        );
        for key in [
            "webhookPrivateKey",
            "someApiKey",
            "db_password",
            "refreshToken",
            "x-api-key",
            "passwdHash",
        ] {
            assert_eq!(value["newThing"][key], PLACEHOLDER, "{key}");
        }
        assert_eq!(value["newThing"]["label"], "keep me");
    }

    #[test]
    fn always_secret_names_match_case_insensitively() {
        let value = redacted(&mask(), json!({"TWILIOAUTHTOKEN": "t", "Secret": "s"}));
        assert_eq!(
            value,
            json!({"TWILIOAUTHTOKEN": PLACEHOLDER, "Secret": PLACEHOLDER})
        );
    }

    #[test]
    fn default_allow_list_exempts_flags_and_ids() {
        let original = json!({"isServerUrlSecretSet": true, "credentialId": "c-1",
                              "server": {"credentialId": "c-2", "ISSERVERURLSECRETSET": false}});
        assert_eq!(redacted(&mask(), original.clone()), original);
    }

    #[test]
    fn configured_extra_and_allow_fields() {
        let policy = Policy::new(
            Mode::Mask,
            &strings(&["PIN", "", "tokenCount"]),
            &strings(&[
                "maxTokens",
                "tokenCount",
                "twilioAuthToken",
                "password",
                "headers",
            ]),
            DEFAULT_MAX_DEPTH,
        );
        let value = redacted(
            &policy,
            json!({"pin": 1234, "nested": [{"Pin": "9"}], "spin": "not exact",
                   "MaxTokens": 250, "tokenCount": 3, "twilioAuthToken": "t",
                   "authentication": {"password": "pw"}, "headers": {"A": "b"}}),
        );
        assert_eq!(value["pin"], PLACEHOLDER);
        assert_eq!(value["nested"][0]["Pin"], PLACEHOLDER);
        assert_eq!(value["spin"], "not exact");
        assert_eq!(value["MaxTokens"], 250);
        // Allowed wins over extra for the same name.
        assert_eq!(value["tokenCount"], 3);
        // The allow-list never exempts built-in secrets, credentials or header values.
        assert_eq!(value["twilioAuthToken"], PLACEHOLDER);
        assert_eq!(value["authentication"]["password"], PLACEHOLDER);
        assert_eq!(value["headers"]["A"], PLACEHOLDER);
        // Without configuration the same names are redacted by the substring rule.
        let value = redacted(&mask(), json!({"maxTokens": 250, "pin": 1}));
        assert_eq!(value, json!({"maxTokens": PLACEHOLDER, "pin": 1}));
    }

    #[test]
    fn null_secrets_stay_null() {
        let original = json!({"twilioAuthToken": null, "password": null,
                              "headers": null, "authentication": {"username": null}});
        assert_eq!(redacted(&mask(), original.clone()), original);
        let mut value = original.clone();
        assert_eq!(remove().redact(&mut value), Ok(0));
        assert_eq!(value, original);
    }

    #[test]
    fn non_string_secrets_are_masked_whole() {
        let value = redacted(
            &mask(),
            json!({"secret": {"nested": "https://u:p@h.example/"}, "apiKey": 42,
                   "tokens": ["a", "b"], "password": false}),
        );
        assert_eq!(
            value,
            json!({"secret": PLACEHOLDER, "apiKey": PLACEHOLDER,
                   "tokens": PLACEHOLDER, "password": PLACEHOLDER})
        );
        let value = redacted(&remove(), json!({"secret": {"a": 1}, "apiKey": 42, "k": 1}));
        assert_eq!(value, json!({"k": 1}));
    }

    #[test]
    fn urls_anywhere_are_redacted() {
        let value = redacted(
            &mask(),
            json!({"holdAudioUrl": "https://bucket.s3.amazonaws.com/a.mp3?X-Amz-Signature=abc",
                   "notes": ["ftp://user:pw@files.example/x"]}),
        );
        assert_eq!(
            value["holdAudioUrl"],
            "https://bucket.s3.amazonaws.com/a.mp3?X-Amz-Signature=[REDACTED]"
        );
        assert_eq!(value["notes"][0], "ftp://[REDACTED]@files.example/x");
    }

    #[test]
    fn redacting_twice_is_idempotent() {
        for policy in [mask(), remove()] {
            let once = redacted(&policy, fixture());
            let mut twice = once.clone();
            assert_eq!(policy.redact(&mut twice), Ok(0));
            assert_eq!(twice, once);
        }
    }

    #[test]
    fn credential_header_names_are_secret_outside_headers_too() {
        let v = redacted(
            &mask(),
            json!({
                "authorization": "Bearer a",
                "Authorization": "Bearer b",
                "nested": {"PROXY-AUTHORIZATION": "Basic c", "Cookie": "sid=d", "set_cookie": "e"},
                "authorizationUrl": "https://idp.example/authorize",
            }),
        );
        for key in ["authorization", "Authorization"] {
            assert_eq!(v[key], PLACEHOLDER);
        }
        for key in ["PROXY-AUTHORIZATION", "Cookie", "set_cookie"] {
            assert_eq!(v["nested"][key], PLACEHOLDER, "{key}");
        }
        assert_eq!(
            v["authorizationUrl"], "https://idp.example/authorize",
            "not a credential"
        );
    }

    #[test]
    fn names_are_compared_without_case_or_separators() {
        let v = redacted(
            &mask(),
            json!({
                "accessKey": "a", "access_key_id": "b", "client-secret": "c",
                "client.secret": "d", "CLIENT_SECRET": "e", "api key": "f",
                "twilio_auth_token": "g", "Private-Key": "h",
                "is-server-url-secret-set": true, "credential_id": "keep",
            }),
        );
        for key in [
            "accessKey",
            "access_key_id",
            "client-secret",
            "client.secret",
            "CLIENT_SECRET",
            "api key",
            "twilio_auth_token",
            "Private-Key",
        ] {
            assert_eq!(v[key], PLACEHOLDER, "{key}");
        }
        // The allow-list folds the same way.
        assert_eq!(v["is-server-url-secret-set"], true);
        assert_eq!(v["credential_id"], "keep");
        let extra = Policy::new(Mode::Mask, &strings(&["internal-notes"]), &[], 64);
        let v = redacted(&extra, json!({"internalNotes": "x", "INTERNAL_NOTES": "y"}));
        assert_eq!(
            v,
            json!({"internalNotes": PLACEHOLDER, "INTERNAL_NOTES": PLACEHOLDER})
        );
    }

    #[test]
    fn everything_below_authentication_counts() {
        let v = redacted(
            &mask(),
            json!({
                "authentication": {"realms": [{"username": "u1", "password": "p1", "realm": "r"}]},
                "other": {"authentication": [{"username": "u2"}, {"nested": {"password": "p2"}}]},
                "username": "a-user-name-outside",
            }),
        );
        assert_eq!(v["authentication"]["realms"][0]["username"], PLACEHOLDER);
        assert_eq!(v["authentication"]["realms"][0]["password"], PLACEHOLDER);
        assert_eq!(v["authentication"]["realms"][0]["realm"], "r");
        assert_eq!(v["other"]["authentication"][0]["username"], PLACEHOLDER);
        assert_eq!(
            v["other"]["authentication"][1]["nested"]["password"],
            PLACEHOLDER
        );
        assert_eq!(
            v["username"], "a-user-name-outside",
            "only inside authentication"
        );
    }

    // --- depth ---

    fn nested_arrays(depth: usize) -> Value {
        let mut value = json!("https://u:p@h.example/");
        for _ in 0..depth {
            value = Value::Array(vec![value]);
        }
        value
    }

    #[test]
    fn depth_limit_fails_closed() {
        let mut deep = nested_arrays(100);
        assert_eq!(
            mask().redact(&mut deep),
            Err(RedactError::TooDeep { limit: 64 })
        );
        let mut shallow = nested_arrays(10);
        assert_eq!(mask().redact(&mut shallow), Ok(1));

        let mut exact = nested_arrays(64);
        assert_eq!(mask().redact(&mut exact), Ok(1));
        let mut over = nested_arrays(65);
        assert!(mask().redact(&mut over).is_err());

        // Objects count too, including a headers object.
        let policy = Policy::new(Mode::Mask, &[], &[], 2);
        assert!(policy.redact(&mut json!({"a": {"b": 1}})).is_ok());
        assert!(policy.redact(&mut json!({"a": {"b": {}}})).is_err());
        assert!(policy.redact(&mut json!({"a": {"headers": {}}})).is_err());
        let err = RedactError::TooDeep { limit: 2 };
        assert!(err.to_string().contains('2'));
    }

    #[test]
    fn depth_ceiling_bounds_recursion() {
        let policy = Policy::new(Mode::Mask, &[], &[], usize::MAX);
        let mut at_ceiling = nested_arrays(MAX_DEPTH_CEILING);
        assert_eq!(policy.redact(&mut at_ceiling), Ok(1));
        let mut objects = json!({"secret": "s"});
        for _ in 0..MAX_DEPTH_CEILING - 1 {
            objects = json!({ "a": objects });
        }
        assert_eq!(policy.redact(&mut objects), Ok(1));
        let mut beyond = nested_arrays(MAX_DEPTH_CEILING + 1);
        assert_eq!(
            policy.redact(&mut beyond),
            Err(RedactError::TooDeep {
                limit: MAX_DEPTH_CEILING
            })
        );
    }

    // --- contains_placeholder ---

    #[test]
    fn contains_placeholder_detects_round_trips() {
        assert!(contains_placeholder(&redacted(&mask(), fixture())));
        assert!(!contains_placeholder(&fixture()));
        assert!(!contains_placeholder(&redacted(&remove(), fixture())));
        assert!(contains_placeholder(&json!({"a": [{"b": PLACEHOLDER}]})));
        assert!(contains_placeholder(&json!({"server": {
            "url": "https://h.example/?token=[REDACTED]"}})));
        assert!(contains_placeholder(&json!([
            "https://u:[REDACTED]@h.example/"
        ])));
        assert!(contains_placeholder(&json!("sip:a:[REDACTED]@h.example")));
        assert!(contains_placeholder(&json!(
            "https://h.example/?token=%5bREDACTED%5D"
        )));
        assert!(!contains_placeholder(
            &json!({"name": "[redacted]", "x": 1})
        ));
        assert!(!contains_placeholder(
            &json!({"message": "we said [REDACTED] here"})
        ));
        assert!(!contains_placeholder(
            &json!({"[REDACTED]": "keys are not values"})
        ));
        assert!(!contains_placeholder(&json!(null)));
    }
}
