//! Who the caller is, and which credential goes upstream on its behalf.
//!
//! - Passthrough (the default): the caller's own Vapi key is the credential. It goes upstream as
//!   is, and its fingerprint keys the cache, the limits and the cool-downs.
//! - Managed: callers present tokens phonegate issued (`[[auth.clients]]`, stored as SHA-256),
//!   compared in constant time; phonegate sends its own key upstream. All clients see one org, so
//!   they share cache entries and the upstream's 429 cool-down (both keyed by the upstream key),
//!   while rate limits stay per client (keyed by the client's token).

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, ClientConfig};
use crate::credential::{self, AuthError, Fingerprint, Fingerprinter, KeyId};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's name (managed mode), logged as `client`.
    pub client: Option<Arc<str>>,
    /// Logged as `key_id`: the fingerprint of the caller's own token.
    pub key_id: KeyId,
    /// Keys the caller's rate limits.
    pub limit_key: Fingerprint,
    /// Keys the cache and the 429 cool-down: the fingerprint of the credential sent upstream.
    pub upstream_key: Fingerprint,
    /// The `Authorization` value sent upstream.
    pub upstream_authorization: HeaderValue,
    /// May call the GET routes.
    pub can_read: bool,
    /// May call POST, PATCH and DELETE.
    pub can_write: bool,
}

struct Client {
    name: Arc<str>,
    token_sha256: [u8; 32],
    read: bool,
    write: bool,
}

enum Mode {
    Passthrough,
    Managed {
        clients: Vec<Client>,
        upstream_authorization: HeaderValue,
        upstream_key: Fingerprint,
    },
}

/// Authenticates callers according to `auth.mode`.
pub struct Authenticator {
    mode: Mode,
}

impl Authenticator {
    /// Builds the authenticator; `fingerprinter` keys the upstream key's fingerprint.
    pub fn new(config: &AuthConfig, fingerprinter: &Fingerprinter) -> Result<Self, String> {
        let mode = match config {
            AuthConfig::Passthrough => Mode::Passthrough,
            AuthConfig::Managed { clients, api_key } => {
                let mut value = HeaderValue::try_from(format!("Bearer {}", api_key.expose()))
                    .map_err(|_| "upstream.api_key cannot be sent as a header".to_owned())?;
                value.set_sensitive(true);
                Mode::Managed {
                    clients: clients.iter().map(Client::from).collect(),
                    upstream_authorization: value,
                    upstream_key: fingerprinter.fingerprint(api_key.expose().as_bytes()),
                }
            }
        };
        Ok(Authenticator { mode })
    }

    /// Whether phonegate holds the upstream key itself (managed mode).
    pub fn is_managed(&self) -> bool {
        matches!(self.mode, Mode::Managed { .. })
    }

    /// Authenticates the request's `Authorization` header.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        fingerprinter: &Fingerprinter,
    ) -> Result<Caller, AuthError> {
        let token = credential::bearer_token(headers.get_all(AUTHORIZATION).iter())?;
        let own = fingerprinter.fingerprint(token);
        match &self.mode {
            Mode::Passthrough => {
                // bearer_token accepted exactly one header, so this is it.
                let header = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
                Ok(Caller {
                    client: None,
                    key_id: own.key_id(),
                    limit_key: own,
                    upstream_key: own,
                    upstream_authorization: header.clone(),
                    can_read: true,
                    can_write: true,
                })
            }
            Mode::Managed {
                clients,
                upstream_authorization,
                upstream_key,
            } => {
                let client = find_client(clients, token).ok_or(AuthError::UnknownClient)?;
                Ok(Caller {
                    client: Some(Arc::clone(&client.name)),
                    key_id: own.key_id(),
                    limit_key: own,
                    upstream_key: *upstream_key,
                    upstream_authorization: upstream_authorization.clone(),
                    can_read: client.read,
                    can_write: client.write,
                })
            }
        }
    }
}

/// Compares the token's digest with every client's in constant time, without stopping at a
/// match, so timing reveals neither which client matched nor how much of a digest did.
fn find_client<'a>(clients: &'a [Client], token: &[u8]) -> Option<&'a Client> {
    let digest: [u8; 32] = Sha256::digest(token).into();
    let mut found = None;
    for client in clients {
        if bool::from(client.token_sha256.ct_eq(&digest)) {
            found = Some(client);
        }
    }
    found
}

impl From<&ClientConfig> for Client {
    fn from(c: &ClientConfig) -> Self {
        Client {
            name: Arc::from(c.name.as_str()),
            token_sha256: *c.token_sha256.reveal(),
            read: c.read,
            write: c.write,
        }
    }
}

/// The `token_sha256` to configure for `token` (hex), as `phonegate hash-token` prints it.
pub fn token_sha256_hex(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn managed() -> (Authenticator, Fingerprinter) {
        let f = Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        let digest = |t: &str| {
            let hex = token_sha256_hex(t);
            let mut out = [0u8; 32];
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            }
            out
        };
        let config = AuthConfig::Managed {
            clients: vec![
                ClientConfig {
                    name: "reader".into(),
                    token_sha256: Secret::hidden(digest("read-token")),
                    read: true,
                    write: false,
                },
                ClientConfig {
                    name: "writer".into(),
                    token_sha256: Secret::hidden(digest("write-token")),
                    read: true,
                    write: true,
                },
            ],
            api_key: Secret::new("upstream-secret-key"),
        };
        (Authenticator::new(&config, &f).unwrap(), f)
    }

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn the_hash_matches_sha256_of_the_token() {
        assert_eq!(
            token_sha256_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn managed_clients_share_the_upstream_key_but_not_limits() {
        let (auth, f) = managed();
        let r = auth.authenticate(&headers("read-token"), &f).unwrap();
        let w = auth.authenticate(&headers("write-token"), &f).unwrap();
        assert_eq!(r.client.as_deref(), Some("reader"));
        assert!(r.can_read && !r.can_write);
        assert!(w.can_write);
        assert_eq!(r.upstream_key, w.upstream_key, "one org, one cache");
        assert_ne!(r.limit_key, w.limit_key, "limits per client");
        assert_eq!(r.upstream_authorization, "Bearer upstream-secret-key");
        assert!(r.upstream_authorization.is_sensitive());
        assert_eq!(
            auth.authenticate(&headers("guess"), &f).unwrap_err(),
            AuthError::UnknownClient
        );
    }

    #[test]
    fn passthrough_forwards_the_callers_own_key() {
        let f = Fingerprinter::new(None).unwrap();
        let auth = Authenticator::new(&AuthConfig::Passthrough, &f).unwrap();
        let c = auth.authenticate(&headers("vapi-key"), &f).unwrap();
        assert_eq!(c.upstream_authorization, "Bearer vapi-key");
        assert_eq!(c.limit_key, c.upstream_key);
        assert!(c.client.is_none());
        assert_eq!(
            auth.authenticate(&HeaderMap::new(), &f).unwrap_err(),
            AuthError::Missing
        );
    }
}
