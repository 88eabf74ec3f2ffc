//! The caller's credential: parsing `Authorization: Bearer <token>` and turning the token into a
//! keyed fingerprint.
//!
//! The token itself only ever travels to the upstream. Everywhere else (cache keys, the access log's
//! `key_id`, admin calls) sees a keyed BLAKE3 fingerprint: keyed, so that someone who reads logs or
//! memory cannot test guesses of a token against it without also holding `cache.key_secret`.

use std::fmt;

use http::HeaderValue;

/// Longest bearer token accepted; real Vapi keys are UUIDs and JWTs are well under this.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Domain separation for the fingerprint key, so `cache.key_secret` is never used directly as a key.
const KEY_CONTEXT: &str = "phonegate 2026-11 credential fingerprint v1";

/// Why an `Authorization` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// Present but not a single well-formed `Bearer <token>`.
    Malformed,
    /// Well-formed, but not a token of any configured client (managed mode).
    UnknownClient,
}

impl AuthError {
    /// Message for the 401 body; never includes any part of the header.
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "missing Authorization header; expected \"Bearer <api key>\"",
            AuthError::Malformed => "malformed Authorization header; expected \"Bearer <api key>\"",
            AuthError::UnknownClient => "unknown token",
        }
    }
}

/// Extracts the token from the request's `Authorization` headers (RFC 6750 `b64token` syntax).
///
/// More than one `Authorization` header is malformed: which one an upstream would honour is not
/// ours to guess, and guessing wrong would key the cache on a credential that was not used.
pub fn bearer_token<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<&'a [u8], AuthError> {
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let bytes = value.as_bytes();
    let (scheme, token) = match bytes.iter().position(|b| *b == b' ') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => return Err(AuthError::Malformed),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || !is_b64token(token) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &[u8]) -> bool {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return false;
    }
    let body_len = token.len() - token.iter().rev().take_while(|b| **b == b'=').count();
    body_len > 0
        && token[..body_len]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b))
}

/// A keyed fingerprint of a credential. Part of every cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// All 32 bytes in hex: the form in shared-tier key names and messages (keyed, so it tells
    /// nothing about the credential to someone without `cache.key_secret`).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads [`Fingerprint::to_hex`]'s form back.
    pub fn from_hex(text: &str) -> Option<Fingerprint> {
        decode_hex::<32>(text).map(Fingerprint)
    }

    /// The short public form logged as `key_id`: the first 8 bytes in hex.
    pub fn key_id(&self) -> KeyId {
        let mut out = [0u8; 8];
        out.copy_from_slice(&self.0[..8]);
        KeyId(out)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.key_id())
    }
}

/// A short keyed fingerprint of a credential, safe to log (`key_id`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// Reads a `key_id` as logged (16 hex digits, any case).
    pub fn from_hex(text: &str) -> Option<KeyId> {
        decode_hex::<8>(text).map(KeyId)
    }

    /// The 16 hex digits, without allocating.
    pub fn hex(&self) -> KeyIdHex {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
        }
        KeyIdHex(out)
    }
}

/// A [`KeyId`] spelled out in hex, on the stack.
#[derive(Clone, Copy)]
pub struct KeyIdHex([u8; 16]);

impl std::ops::Deref for KeyIdHex {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Computes fingerprints with the process's key.
#[derive(Clone)]
pub struct Fingerprinter {
    key: [u8; 32],
}

impl Fingerprinter {
    /// A fingerprinter keyed by `secret` (from `cache.key_secret`), or by fresh random bytes.
    ///
    /// Replicas that share a cache tier must share the secret, or their fingerprints disagree.
    pub fn new(secret: Option<&str>) -> Result<Self, getrandom::Error> {
        let key = match secret {
            Some(secret) => blake3::derive_key(KEY_CONTEXT, secret.as_bytes()),
            None => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)?;
                key
            }
        };
        Ok(Fingerprinter { key })
    }

    /// The fingerprint of one credential.
    pub fn fingerprint(&self, token: &[u8]) -> Fingerprint {
        Fingerprint(*blake3::keyed_hash(&self.key, token).as_bytes())
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fingerprinter(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_forms_round_trip() {
        let f = Fingerprinter::new(Some("0123456789abcdef"))
            .unwrap()
            .fingerprint(b"k");
        assert_eq!(Fingerprint::from_hex(&f.to_hex()), Some(f));
        let id = f.key_id();
        assert_eq!(KeyId::from_hex(&id.to_string().to_uppercase()), Some(id));
        for bad in [
            "",
            "zz",
            "0123456789abcde",
            "0123456789abcdefg",
            "é123456789abcde",
        ] {
            assert_eq!(KeyId::from_hex(bad), None, "{bad:?}");
        }
    }

    fn parse(values: &[&str]) -> Result<Vec<u8>, AuthError> {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        bearer_token(values.iter()).map(<[u8]>::to_vec)
    }

    #[test]
    fn accepts_bearer_tokens() {
        assert_eq!(parse(&["Bearer abc-123"]).unwrap(), b"abc-123");
        assert_eq!(
            parse(&["bearer eyJh.eyJz.sig_-=="]).unwrap(),
            b"eyJh.eyJz.sig_-=="
        );
        assert_eq!(parse(&["BEARER a+b/c~"]).unwrap(), b"a+b/c~");
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(parse(&[]), Err(AuthError::Missing));
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer  two-spaces",
            "Basic dXNlcjpwYXNz",
            "Token abc",
            "Bearer a b",
            "Bearer ===",
            "Bearer a\"b",
            "Bearerabc",
        ] {
            assert_eq!(parse(&[bad]), Err(AuthError::Malformed), "{bad:?}");
        }
        assert_eq!(parse(&["Bearer a", "Bearer b"]), Err(AuthError::Malformed));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(parse(&[&long]), Err(AuthError::Malformed));
    }

    #[test]
    fn fingerprints_are_keyed_and_stable() {
        let a = Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        let a2 = Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        let b = Fingerprinter::new(Some("fedcba9876543210")).unwrap();
        assert_eq!(
            a.fingerprint(b"tok"),
            a2.fingerprint(b"tok"),
            "same key, same print"
        );
        assert_ne!(a.fingerprint(b"tok"), b.fingerprint(b"tok"), "key matters");
        assert_ne!(
            a.fingerprint(b"tok"),
            a.fingerprint(b"tok2"),
            "token matters"
        );
        let r1 = Fingerprinter::new(None).unwrap();
        let r2 = Fingerprinter::new(None).unwrap();
        assert_ne!(
            r1.fingerprint(b"tok"),
            r2.fingerprint(b"tok"),
            "random keys differ"
        );
    }

    #[test]
    fn key_id_is_sixteen_hex_digits_and_not_the_token() {
        let f = Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        let id = f.fingerprint(b"secret-token").key_id().to_string();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(&*f.fingerprint(b"secret-token").key_id().hex(), id);
        assert!(!format!("{:?}", f.fingerprint(b"secret-token")).contains("secret"));
    }
}
