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

/// A field whose folded name (see [`fold_name`]) contains one of these is secret unless
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

/// How deep URLs nested in other URLs' parameter values are looked into; a deeper one is hidden
/// whole without being read (fail closed).
pub const MAX_URL_NESTING: usize = 4;

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

/// A URL query/fragment parameter whose lowercased, percent-decoded name contains one of these
/// has its value hidden. Broad on purpose (`key` also hits `monkey`): over-hiding a URL parameter
/// costs little, leaking a signed-URL signature or OAuth token costs a lot. `jwt` is an addition
/// to the brief's list for URLs that pass bearer tokens as `?jwt=`.
const SECRET_PARAM_PARTS: [&[u8]; 12] = [
    b"token",
    b"key",
    b"secret",
    b"sig",
    b"auth",
    b"pass",
    b"pwd",
    b"code",
    b"credential",
    b"session",
    b"jwt",
    b"cookie",
];

/// Cloud presigned-URL parameters: every one of them is part of the signed credential set.
const SECRET_PARAM_PREFIXES: [&[u8]; 2] = [b"x-amz-", b"x-goog-"];

/// What happens to a secret value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// The two URL shapes we know how to take apart.
enum UrlKind {
    /// `scheme://authority...`; the field is the byte offset where the authority starts.
    Hierarchical(usize),
    /// `sip:`/`sips:`; the field is the byte offset just after the colon.
    Sip(usize),
}

/// Cheap test run on every string value: only a scheme prefix makes a string URL-like.
fn url_kind(s: &str) -> Option<UrlKind> {
    let b = s.as_bytes();
    if b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"sip:") {
        return Some(UrlKind::Sip(4));
    }
    if b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"sips:") {
        return Some(UrlKind::Sip(5));
    }
    // A network-path reference (`//host/path?query`, RFC 3986 section 4.2) is a URL whose
    // scheme is the page's: it carries userinfo and queries all the same.
    if b.len() > 2 && b.starts_with(b"//") && (b[2].is_ascii_alphanumeric() || b[2] == b'[') {
        return Some(UrlKind::Hierarchical(2));
    }
    // RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
    if !b.first()?.is_ascii_alphabetic() {
        return None;
    }
    let end = b
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))?;
    b[end..]
        .starts_with(b"://")
        .then_some(UrlKind::Hierarchical(end + 3))
}

/// Redacts secrets inside one URL-like string; returns `None` when nothing needed changing
/// (including when `s` is not URL-like). Pure; public for tests and benches.
///
/// A string is URL-like when it starts with an RFC 3986 scheme followed by `://`, or with `sip:` /
/// `sips:` (any case). The userinfo password is masked (or removed with its `:`), and
/// `name=value` pairs in the query and fragment (and, for SIP, in `;` URI parameters and `?`
/// headers) whose percent-decoded, lowercased name contains `token`, `key`, `secret`, `sig`,
/// `auth`, `password`, `passwd`, `pwd`, `code`, `credential`, `session` or `jwt`, or starts with
/// `x-amz-` / `x-goog-`, get the literal value `[REDACTED]` (or are removed, together with the
/// `?`/`#`/`;` when nothing remains). Every other byte is kept as it was.
pub fn redact_url(s: &str, mode: Mode) -> Option<String> {
    redact_url_nested(s, mode, 0)
}

/// [`redact_url`] for a URL found `nesting` levels deep inside other URLs' parameter values.
fn redact_url_nested(s: &str, mode: Mode, nesting: usize) -> Option<String> {
    // Hand-written instead of the `url` crate on purpose: that crate normalises what it parses
    // (lowercases hosts, adds a trailing `/`, re-encodes paths and queries, drops default
    // ports), and a client that PATCHes a redacted object back would silently change those
    // non-secret parts. Here only the byte ranges of secrets are replaced.
    match url_kind(s)? {
        UrlKind::Hierarchical(authority) => redact_hierarchical(s, authority, mode, nesting),
        UrlKind::Sip(rest) => redact_sip(s, rest, mode, nesting),
    }
}

fn redact_hierarchical(s: &str, authority: usize, mode: Mode, nesting: usize) -> Option<String> {
    let b = s.as_bytes();
    let authority_end = find_from(b, authority, b.len(), |c| matches!(c, b'/' | b'?' | b'#'));
    let mut out = Rewrite::new(s);
    // The last `@` ends the userinfo (as browsers parse it), so an unescaped `@` in a password
    // cannot leave the rest of the password looking like a host.
    if let Some(at) = rfind_from(b, authority, authority_end, |c| c == b'@') {
        redact_userinfo(s, authority, at, mode, &mut out);
    }
    // The fragment starts at the first `#`; the query is between the first `?` and it. Both
    // `&` and `;` separate parameters (HTML 4's and W3C's alternative separator).
    let fragment = find_opt(b, authority_end, b.len(), |c| c == b'#');
    let query_end = fragment.unwrap_or(b.len());
    let query_separators = |c: u8| c == b'&' || c == b';';
    if let Some(q) = find_opt(b, authority_end, query_end, |c| c == b'?') {
        redact_params(s, q, query_end, query_separators, mode, nesting, &mut out);
    }
    // Fragments are treated like queries because OAuth's implicit flow returns
    // `#access_token=...` there; a plain `#section` has no `=` and is left alone.
    if let Some(f) = fragment {
        redact_params(s, f, b.len(), query_separators, mode, nesting, &mut out);
    }
    out.finish()
}

/// Hides the credential in the userinfo `s[start..at]`: the password of `user:password`, or, with
/// no (or an empty) password, the whole userinfo (`https://TOKEN@host/` puts a token where a user
/// name goes).
fn redact_userinfo(s: &str, start: usize, at: usize, mode: Mode, out: &mut Rewrite<'_>) {
    let userinfo = &s.as_bytes()[start..at];
    if let Some(colon) = userinfo.iter().position(|c| *c == b':') {
        if colon + 1 < userinfo.len() {
            redact_password(s, start, at, mode, out);
            return;
        }
    }
    let user = &s[start..at];
    match mode {
        _ if user.is_empty() => {}
        Mode::Mask if user != PLACEHOLDER => out.replace(start, at, PLACEHOLDER),
        Mode::Mask => {}
        Mode::Remove => out.replace(start, at + 1, ""),
    }
}

/// `sip:user:password@host:port;uri-parameters?headers` (RFC 3261 section 19.1). The user part
/// of a SIP URI is an address (a number, a name), not a credential, so only a password is hidden.
fn redact_sip(s: &str, rest: usize, mode: Mode, nesting: usize) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Rewrite::new(s);
    // RFC 3261 allows `;` and `?` inside the user part but not `@` anywhere unescaped, so the
    // userinfo ends at an `@`. We take the last one before the first `?`: headers may carry
    // unescaped `<sip:x@y>` values in the wild, and a `?` inside a user name is far rarer.
    let first_q = find_from(b, rest, b.len(), |c| c == b'?');
    let host = match rfind_from(b, rest, first_q, |c| c == b'@') {
        Some(at) => {
            redact_password(s, rest, at, mode, &mut out);
            at + 1
        }
        None => rest,
    };
    let headers = find_opt(b, host, b.len(), |c| c == b'?');
    let params_end = headers.unwrap_or(b.len());
    if let Some(semi) = find_opt(b, host, params_end, |c| c == b';') {
        redact_params(s, semi, params_end, |c| c == b';', mode, nesting, &mut out);
    }
    if let Some(q) = headers {
        redact_params(s, q, b.len(), |c| c == b'&', mode, nesting, &mut out);
    }
    out.finish()
}

/// Hides the password in `s[start..at]` (`user:password`), if there is a non-empty one.
fn redact_password(s: &str, start: usize, at: usize, mode: Mode, out: &mut Rewrite<'_>) {
    let Some(colon) = find_opt(s.as_bytes(), start, at, |c| c == b':') else {
        return;
    };
    let password = &s[colon + 1..at];
    if password.is_empty() {
        return;
    }
    match mode {
        Mode::Mask if password != PLACEHOLDER => out.replace(colon + 1, at, PLACEHOLDER),
        Mode::Mask => {}
        Mode::Remove => out.replace(colon, at, ""),
    }
}

/// Handles the `name=value` list in `s[delim + 1..end]`, pairs separated by bytes matching
/// `is_sep`, where `s[delim]` is the `?`, `#` or `;` that introduces it.
fn redact_params(
    s: &str,
    delim: usize,
    end: usize,
    is_sep: impl Fn(u8) -> bool,
    mode: Mode,
    nesting: usize,
    out: &mut Rewrite<'_>,
) {
    let start = delim + 1;
    let b = s.as_bytes();
    // Each pair as (start, end), in order.
    let mut pairs = Vec::new();
    let mut pair_start = start;
    for (i, c) in b[start..end].iter().enumerate() {
        if is_sep(*c) {
            pairs.push((pair_start, start + i));
            pair_start = start + i + 1;
        }
    }
    pairs.push((pair_start, end));
    let secret = |&(a, z): &(usize, usize)| secret_value(&s[a..z], nesting).map(|off| a + off);
    match mode {
        Mode::Mask => {
            for pair in &pairs {
                if let Some(value_start) = secret(pair) {
                    if &s[value_start..pair.1] != PLACEHOLDER {
                        out.replace(value_start, pair.1, PLACEHOLDER);
                    }
                }
            }
        }
        Mode::Remove => {
            // Checked first so the common case (nothing to remove) allocates nothing.
            if !pairs.iter().any(|pair| secret(pair).is_some()) {
                return;
            }
            let mut kept = String::with_capacity(end - start);
            let mut any_content = false;
            for pair in pairs.iter().filter(|pair| secret(pair).is_none()) {
                if !kept.is_empty() || any_content {
                    // The separator that preceded this pair in the original.
                    kept.push(char::from(b[pair.0 - 1]));
                }
                any_content |= pair.1 > pair.0;
                kept.push_str(&s[pair.0..pair.1]);
            }
            if any_content {
                out.replace(start, end, &kept);
            } else {
                // Nothing but empty pairs left: drop the introducing `?`/`#`/`;` as well.
                out.replace(delim, end, "");
            }
        }
    }
}

/// For a `name=value` pair whose value is secret, where the value starts within the pair. A value
/// is secret when the name looks secret, or the value is itself a URL carrying a secret. A bare
/// `name` or `name=` carries nothing to hide.
fn secret_value(pair: &str, nesting: usize) -> Option<usize> {
    let (name, value) = pair.split_once('=')?;
    let secret =
        !value.is_empty() && (is_secret_param(name) || is_secret_url_value(value, nesting));
    secret.then_some(name.len() + 1)
}

/// Whether a parameter value is (percent-encoded or not) a URL that carries a secret. Past
/// [`MAX_URL_NESTING`] levels a URL-like value counts as secret unread: fail closed.
fn is_secret_url_value(value: &str, nesting: usize) -> bool {
    let decoded;
    let value = if value.contains('%') {
        decoded = String::from_utf8_lossy(&percent_decode(value.as_bytes())).into_owned();
        decoded.as_str()
    } else {
        value
    };
    if url_kind(value).is_none() {
        return false;
    }
    nesting + 1 >= MAX_URL_NESTING || redact_url_nested(value, Mode::Mask, nesting + 1).is_some()
}

fn is_secret_param(name: &str) -> bool {
    let raw = name.as_bytes();
    if raw.contains(&b'%') {
        // Names are matched decoded so `%74oken` cannot slip past; decoding allocates, but
        // only for the rare encoded name.
        let mut decoded = percent_decode(raw);
        decoded.make_ascii_lowercase();
        is_secret_param_lower(&decoded)
    } else {
        with_ascii_lower(raw, is_secret_param_lower)
    }
}

fn is_secret_param_lower(lower: &[u8]) -> bool {
    SECRET_PARAM_PARTS
        .iter()
        .any(|part| contains_bytes(lower, part))
        || SECRET_PARAM_PREFIXES
            .iter()
            .any(|prefix| lower.starts_with(prefix))
}

/// Decodes `%XX` escapes; malformed escapes are kept literally.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    fn hex(c: u8) -> Option<u8> {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escaped = match raw.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(hi, lo)| hi << 4 | lo),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    out
}

/// Index of the first byte in `b[from..to]` matching `pred`, or `to`.
fn find_from(b: &[u8], from: usize, to: usize, pred: impl Fn(u8) -> bool) -> usize {
    find_opt(b, from, to, pred).unwrap_or(to)
}

fn find_opt(b: &[u8], from: usize, to: usize, pred: impl Fn(u8) -> bool) -> Option<usize> {
    b.get(from..to)?
        .iter()
        .position(|&c| pred(c))
        .map(|p| from + p)
}

fn rfind_from(b: &[u8], from: usize, to: usize, pred: impl Fn(u8) -> bool) -> Option<usize> {
    b.get(from..to)?
        .iter()
        .rposition(|&c| pred(c))
        .map(|p| from + p)
}

/// Copy-on-write output: the new string is only allocated once the first range is replaced,
/// so URLs without secrets cost nothing. Ranges must be given in increasing, disjoint order;
/// all offsets sit next to ASCII delimiters, so they are always on `char` boundaries.
struct Rewrite<'a> {
    src: &'a str,
    out: Option<String>,
    copied: usize,
}

impl<'a> Rewrite<'a> {
    fn new(src: &'a str) -> Self {
        Rewrite {
            src,
            out: None,
            copied: 0,
        }
    }

    fn replace(&mut self, start: usize, end: usize, with: &str) {
        let capacity = self.src.len() + PLACEHOLDER.len();
        let out = self
            .out
            .get_or_insert_with(|| String::with_capacity(capacity));
        out.push_str(&self.src[self.copied..start]);
        out.push_str(with);
        self.copied = end;
    }

    fn finish(self) -> Option<String> {
        let mut out = self.out?;
        out.push_str(&self.src[self.copied..]);
        Some(out)
    }
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

    const FIXTURE: &str = include_str!("../tests/fixtures/example-twilio-phone-number.json");

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
        assert_eq!(value["notes"][0], "ftp://user:[REDACTED]@files.example/x");
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
    fn mode_deserializes_lowercase() {
        let mode: Mode = serde_json::from_str("\"remove\"").expect("parses");
        assert_eq!(mode, Mode::Remove);
        let mode: Mode = serde_json::from_str("\"mask\"").expect("parses");
        assert_eq!(mode, Mode::Mask);
        assert!(serde_json::from_str::<Mode>("\"Mask\"").is_err());
        assert_eq!(remove().mode(), Mode::Remove);
    }

    // --- redact_url ---

    fn url(s: &str) -> Option<String> {
        redact_url(s, Mode::Mask)
    }

    fn url_remove(s: &str) -> Option<String> {
        redact_url(s, Mode::Remove)
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

    #[test]
    fn url_parameter_classes() {
        // `;` separates parameters as `&` does.
        assert_eq!(
            url("https://h.example/p?a=1;token=abc;b=2").as_deref(),
            Some("https://h.example/p?a=1;token=[REDACTED];b=2")
        );
        assert_eq!(
            url_remove("https://h.example/p?a=1;token=abc&b=2").as_deref(),
            Some("https://h.example/p?a=1&b=2")
        );
        // `pass` names a password whatever follows.
        assert_eq!(
            url("https://h.example/p?pass=abc&passphrase=def").as_deref(),
            Some("https://h.example/p?pass=[REDACTED]&passphrase=[REDACTED]")
        );
        // Scheme-relative URLs are URLs.
        assert_eq!(
            url("//cdn.example/a.mp3?token=abc").as_deref(),
            Some("//cdn.example/a.mp3?token=[REDACTED]")
        );
        assert_eq!(url("// not a url?token=abc"), None);
    }

    #[test]
    fn urls_nested_in_parameter_values() {
        // Percent-encoded and raw: a nested URL carrying a secret is hidden whole.
        assert_eq!(
            url("https://h.example/login?next=https%3A%2F%2Fo.example%2Fcb%3Ftoken%3Dabc&x=1")
                .as_deref(),
            Some("https://h.example/login?next=[REDACTED]&x=1")
        );
        assert_eq!(
            url("https://h.example/login?next=https://o.example/cb?sig=abc").as_deref(),
            Some("https://h.example/login?next=[REDACTED]")
        );
        // A nested URL without secrets is left byte for byte.
        assert_eq!(
            url("https://h.example/login?next=https%3A%2F%2Fo.example%2Fcb%3Fa%3D1"),
            None
        );
        // Too deep to read: hidden whole (fail closed).
        let mut deep = String::from("https://z.example/");
        for _ in 0..MAX_URL_NESTING {
            deep = format!(
                "https://h.example/?u={}",
                percent_encoding::utf8_percent_encode(&deep, percent_encoding::NON_ALPHANUMERIC)
            );
        }
        assert!(url(&deep).is_some_and(|r| r.ends_with("?u=[REDACTED]")));
    }

    #[test]
    fn url_userinfo_password() {
        assert_eq!(
            url("https://user:pass@host.example/p?q=1").as_deref(),
            Some("https://user:[REDACTED]@host.example/p?q=1")
        );
        assert_eq!(
            url_remove("https://user:pass@host.example/p").as_deref(),
            Some("https://user@host.example/p")
        );
        // The last `@` of the authority ends the userinfo.
        assert_eq!(
            url("https://u:p@ss@host.example").as_deref(),
            Some("https://u:[REDACTED]@host.example")
        );
        // No password: the user part is the credential (`https://TOKEN@host/`).
        assert_eq!(
            url("https://ghp_TOKEN123@host.example/").as_deref(),
            Some("https://[REDACTED]@host.example/")
        );
        assert_eq!(
            url("https://TOKEN:@host.example/").as_deref(),
            Some("https://[REDACTED]@host.example/")
        );
        assert_eq!(
            url_remove("https://TOKEN@host.example/p").as_deref(),
            Some("https://host.example/p")
        );
        // A SIP user part is an address, not a credential.
        assert_eq!(url("sip:alice@pbx.example.com"), None);
        // `@` in the path is not userinfo.
        assert_eq!(url("https://host.example:8080/users/@me"), None);
    }

    #[test]
    fn url_presigned_s3() {
        let s = "https://b.s3.amazonaws.com/k/a.mp3?X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=AKIAFAKE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request\
                 &X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600\
                 &X-Amz-Security-Token=FAKEsessiontoken&X-Amz-SignedHeaders=host\
                 &X-Amz-Signature=deadbeef&versionId=v1";
        let out = url(s).expect("changed");
        for secret in ["AKIAFAKE", "FAKEsessiontoken", "deadbeef"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(out.starts_with("https://b.s3.amazonaws.com/k/a.mp3?X-Amz-Algorithm=[REDACTED]&"));
        assert!(out.contains("&X-Amz-Signature=[REDACTED]&"), "{out}");
        assert!(out.ends_with("&versionId=v1"), "{out}");
    }

    #[test]
    fn url_sig_and_other_names() {
        assert_eq!(
            url("https://cdn.example/a.wav?sv=2024&sig=abc%2Bdef&se=2026").as_deref(),
            Some("https://cdn.example/a.wav?sv=2024&sig=[REDACTED]&se=2026")
        );
        assert_eq!(
            url("https://x.example/?AUTH=1&page=2&Code=3&jwt=4&lang=en").as_deref(),
            Some(
                "https://x.example/?AUTH=[REDACTED]&page=2&Code=[REDACTED]&jwt=[REDACTED]&lang=en"
            )
        );
        // Bare names and empty values have nothing to hide.
        assert_eq!(url("https://x.example/?token&key=&a=b"), None);
    }

    #[test]
    fn url_fragment_tokens() {
        assert_eq!(
            url("https://app.example/cb#access_token=abc&state=xyz").as_deref(),
            Some("https://app.example/cb#access_token=[REDACTED]&state=xyz")
        );
        assert_eq!(
            url_remove("https://app.example/cb?a=1#access_token=abc").as_deref(),
            Some("https://app.example/cb?a=1")
        );
        assert_eq!(url("https://app.example/docs#section-2"), None);
        // A `?` inside the fragment does not start a query.
        assert_eq!(
            url("https://app.example/#/route?token=t").as_deref(),
            Some("https://app.example/#/route?token=[REDACTED]")
        );
    }

    #[test]
    fn url_without_secrets_or_not_a_url() {
        assert_eq!(
            url("https://hooks.example.com/vapi/webhook?page=2#top"),
            None
        );
        assert_eq!(url("HTTPS://Host.Example:8443/A/B/?x=1"), None);
        for s in [
            "",
            "token=abc",
            "Support line (US)",
            "+14155550123",
            "/relative?token=abc",
            "1http://x.example/?token=a",
            "mailto:a:b@c.example",
            "{{phoneNumber.number}}",
        ] {
            assert_eq!(url(s), None, "{s}");
            assert_eq!(url_remove(s), None, "{s}");
        }
    }

    #[test]
    fn url_sip_uris() {
        assert_eq!(
            url("sip:alice:pw@pbx.example.com").as_deref(),
            Some("sip:alice:[REDACTED]@pbx.example.com")
        );
        assert_eq!(
            url_remove("SIPS:alice:pw@pbx.example.com:5061;transport=tls").as_deref(),
            Some("SIPS:alice@pbx.example.com:5061;transport=tls")
        );
        assert_eq!(
            url("sip:bob@pbx.example.com;transport=tls;x-token=t1?X-Auth-Token=t2&Subject=hi")
                .as_deref(),
            Some(
                "sip:bob@pbx.example.com;transport=tls;x-token=[REDACTED]\
                 ?X-Auth-Token=[REDACTED]&Subject=hi"
            )
        );
        assert_eq!(
            url_remove("sip:bob@pbx.example.com;x-token=t1?X-Auth-Token=t2").as_deref(),
            Some("sip:bob@pbx.example.com")
        );
        assert_eq!(url("sip:overflow@pbx.example.com"), None);
        assert_eq!(url("sip:pbx.example.com:5060;transport=udp"), None);
    }

    #[test]
    fn url_remove_drops_pairs_and_question_mark() {
        assert_eq!(
            url_remove("https://h.example/p?token=a").as_deref(),
            Some("https://h.example/p")
        );
        assert_eq!(
            url_remove("https://h.example/p?a=1&token=a&b=2").as_deref(),
            Some("https://h.example/p?a=1&b=2")
        );
        assert_eq!(
            url_remove("https://h.example/p?token=a&").as_deref(),
            Some("https://h.example/p")
        );
        assert_eq!(
            url_remove("https://u:pw@h.example/p?sig=a#x").as_deref(),
            Some("https://u@h.example/p#x")
        );
    }

    #[test]
    fn url_percent_encoded_names() {
        assert_eq!(
            url("https://h.example/?%74oken=a&x%2Dapi%2Dkey=b&caf%C3%A9=c").as_deref(),
            Some("https://h.example/?%74oken=[REDACTED]&x%2Dapi%2Dkey=[REDACTED]&caf%C3%A9=c")
        );
        // Malformed escapes are matched literally rather than rejected.
        assert_eq!(
            url("https://h.example/?%zzsecret=a&%=b").as_deref(),
            Some("https://h.example/?%zzsecret=[REDACTED]&%=b")
        );
    }

    #[test]
    fn url_preserves_everything_else_exactly() {
        assert_eq!(
            url("HTTP://Admin:Pw@WWW.Example.COM:0080/A%20B/c;v=1/?Z=1&token=%E2%9C%93&y=%20#Frag")
                .as_deref(),
            Some(
                "HTTP://Admin:[REDACTED]@WWW.Example.COM:0080/A%20B/c;v=1/?Z=1&token=[REDACTED]&y=%20#Frag"
            )
        );
        assert_eq!(
            url("wss://h.example:9000?api_key=k").as_deref(),
            Some("wss://h.example:9000?api_key=[REDACTED]")
        );
        assert_eq!(
            url("https://h.example/é?token=ü&ß=1").as_deref(),
            Some("https://h.example/é?token=[REDACTED]&ß=1")
        );
    }

    #[test]
    fn url_is_idempotent() {
        let once = url("https://u:p@h.example/?token=a#sig=b").expect("changed");
        assert_eq!(
            once,
            "https://u:[REDACTED]@h.example/?token=[REDACTED]#sig=[REDACTED]"
        );
        assert_eq!(url(&once), None);
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
