//! Secrets inside URL-like strings: userinfo credentials, secret-looking query and fragment
//! parameters (and SIP URI parameters and headers), and URLs nested in parameter values.
//!
//! A scanner over byte ranges rather than a URL parser, so that everything that is not a secret
//! stays byte for byte (see [`redact_url`]).

use super::{Mode, PLACEHOLDER, contains_bytes, with_ascii_lower};

/// How deep URLs nested in other URLs' parameter values are looked into; a deeper one is hidden
/// whole without being read (fail closed).
pub const MAX_URL_NESTING: usize = 4;

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

/// The two URL shapes we know how to take apart.
pub(super) enum UrlKind {
    /// `scheme://authority...`; the field is the byte offset where the authority starts.
    Hierarchical(usize),
    /// `sip:`/`sips:`; the field is the byte offset just after the colon.
    Sip(usize),
}

/// Cheap test run on every string value: only a scheme prefix makes a string URL-like.
pub(super) fn url_kind(s: &str) -> Option<UrlKind> {
    let b = s.as_bytes();
    if b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"sip:") {
        return Some(UrlKind::Sip(4));
    }
    if b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"sips:") {
        return Some(UrlKind::Sip(5));
    }
    // A network-path reference (`//host/path?query`, RFC 3986 section 4.2) is a URL whose
    // scheme is the page's: it carries userinfo and queries all the same.
    // Whatever can start an authority (RFC 3986 section 3.2: userinfo, a host, an IP literal)
    // may follow the `//`; a space or another `/` cannot, so prose and paths are left alone.
    if b.len() > 2 && b.starts_with(b"//") && starts_authority(b[2]) {
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

/// Whether `c` can be the first byte of an authority: unreserved, `%`, sub-delims, `:`, `@`, `[`.
fn starts_authority(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@[".contains(&c)
}

/// Redacts secrets inside one URL-like string; returns `None` when nothing needed changing
/// (including when `s` is not URL-like). Pure; public for tests and benches.
///
/// A string is URL-like when it starts with an RFC 3986 scheme followed by `://`, with `//` and a
/// host (a network-path reference), or with `sip:` / `sips:` (any case). Hidden: the userinfo
/// password (masked, or removed with its `:`), or the whole userinfo when it has no password (not
/// for SIP, whose user part is an address); `name=value` pairs in the query and fragment
/// (separated by `&` or `;`; for SIP, `;` URI parameters and `?` headers) whose percent-decoded,
/// lowercased name contains token, key, secret, sig, auth, pass, pwd, code, credential, session,
/// jwt or cookie, or starts with `x-amz-` / `x-goog-`;
/// and pairs whose value is itself a URL carrying a secret. Values become the literal
/// `[REDACTED]` (or pairs are removed, together with the `?`/`#`/`;` when nothing remains).
/// Every other byte is kept as it was.
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

/// Hides the userinfo `s[start..at]` whole. In the wild, what sits there is a credential:
/// `user:password` (RFC 3986 section 3.2.1 deprecates it), a token alone
/// (`https://TOKEN@host/`), or a token with a dummy password (`https://TOKEN:x-oauth-basic@host/`),
/// so no part of it is kept. Remove mode drops it with its `@`.
fn redact_userinfo(s: &str, start: usize, at: usize, mode: Mode, out: &mut Rewrite<'_>) {
    let userinfo = &s[start..at];
    match mode {
        _ if userinfo.is_empty() => {}
        Mode::Mask if userinfo != PLACEHOLDER => out.replace(start, at, PLACEHOLDER),
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
    let carries_secret = |candidate: &str| {
        url_kind(candidate).is_some()
            && (nesting + 1 >= MAX_URL_NESTING
                || redact_url_nested(candidate, Mode::Mask, nesting + 1).is_some())
    };
    // Read both as sent and decoded: a raw nested URL may hold escapes (`%2F` in a password)
    // whose decoding would change its structure, and an encoded one must be decoded to be read.
    carries_secret(value)
        || (value.contains('%')
            && carries_secret(&String::from_utf8_lossy(&percent_decode(value.as_bytes()))))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Option<String> {
        redact_url(s, Mode::Mask)
    }

    fn url_remove(s: &str) -> Option<String> {
        redact_url(s, Mode::Remove)
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
            Some("https://[REDACTED]@host.example/p?q=1")
        );
        assert_eq!(
            url_remove("https://user:pass@host.example/p").as_deref(),
            Some("https://host.example/p"),
            "remove mode drops the whole userinfo, so a second pass changes nothing"
        );
        // The last `@` of the authority ends the userinfo.
        assert_eq!(
            url("https://u:p@ss@host.example").as_deref(),
            Some("https://[REDACTED]@host.example")
        );
        // A token with a dummy password: the token is in the user part.
        assert_eq!(
            url("https://ghp_TOKEN123:x-oauth-basic@github.example/o/r.git").as_deref(),
            Some("https://[REDACTED]@github.example/o/r.git")
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
            Some("https://h.example/p#x")
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
                "HTTP://[REDACTED]@WWW.Example.COM:0080/A%20B/c;v=1/?Z=1&token=[REDACTED]&y=%20#Frag"
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
            "https://[REDACTED]@h.example/?token=[REDACTED]#sig=[REDACTED]"
        );
        assert_eq!(url(&once), None);
    }
}
