//! Every Redis key and channel name phonegate uses, built in one place.
//!
//! Getting these wrong leads to one caller reading another's data, so each part is deliberate:
//!
//! - `prefix` first, so a shared Redis can host other tenants and an operator can find ours;
//! - a hash tag (`{n:<id>}` for a number, `{l:<fingerprint>}` for a credential's lists,
//!   `{c:<fingerprint>}` for a credential's budgets) puts an entry, its generation counter and its
//!   fill lock in one Redis Cluster slot, so one script can check the generation and write the
//!   entry atomically;
//! - the redaction policy's identity: replicas only share entries redacted by the same rules;
//! - the namespace (`<epoch>.<credential epoch>`): purges of everything or of one credential move
//!   it, which makes every older entry unreachable without scanning;
//! - the credential's keyed fingerprint, never the credential: answers depend on it.

use uuid::Uuid;

use crate::cache::{CacheKey, Resource};
use crate::credential::Fingerprint;
use crate::query::ListKind;
use crate::tier::codec::FORMAT_VERSION;

/// Names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of one cache entry: its generation counter, the entry, its fill lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKeys {
    /// Counter moved by invalidations of the entry's group (a number, a credential's lists).
    pub generation: String,
    /// The entry itself (a hash: generation, fresh-until, record).
    pub entry: String,
    /// The short lock a replica holds while it fetches the entry for everyone.
    pub lock: String,
}

impl Keys {
    /// Names under `prefix` (validated by the configuration: no braces, no spaces).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The keys of `key`'s entry, redacted under `policy`, in namespace `namespace`.
    pub fn entry(&self, key: &CacheKey, policy: &str, namespace: &str) -> EntryKeys {
        let fp = key.credential.to_hex();
        let (tag, rest) = match &key.resource {
            Resource::PhoneNumber(id) => (format!("n:{}", id.hyphenated()), fp),
            Resource::List(kind, query) => {
                let kind = match kind {
                    ListKind::V1 => "v1",
                    ListKind::V2 => "v2",
                };
                let query = blake3::hash(query.as_bytes()).to_hex();
                (format!("l:{fp}"), format!("{kind}:{}", &query[..32]))
            }
        };
        let p = &self.prefix;
        EntryKeys {
            generation: format!("{p}{{{tag}}}:g"),
            // The record format is part of the name: replicas of two releases mid-way through a
            // rolling update never read (or lock against) each other's records.
            entry: format!(
                "{p}{{{tag}}}:e{v}:{policy}:{namespace}:{rest}",
                v = FORMAT_VERSION
            ),
            lock: format!(
                "{p}{{{tag}}}:k{v}:{policy}:{namespace}:{rest}",
                v = FORMAT_VERSION
            ),
        }
    }

    /// The generation counter of one phone number (every credential's entries of it).
    pub fn number_generation(&self, id: Uuid) -> String {
        format!("{}{{n:{}}}:g", self.prefix, id.hyphenated())
    }

    /// The generation counter of one credential's lists.
    pub fn lists_generation(&self, credential: &Fingerprint) -> String {
        format!("{}{{l:{}}}:g", self.prefix, credential.to_hex())
    }

    /// The hash of namespace counters: field `epoch` and one `c:<key_id>` per purged credential.
    pub fn namespace(&self) -> String {
        format!("{}ns", self.prefix)
    }

    /// The per-credential budget state (`kind`: `m` misses, `r` requests).
    pub fn budget(&self, credential: &Fingerprint, kind: char) -> String {
        format!("{}{{c:{}}}:{kind}", self.prefix, credential.to_hex())
    }

    /// The budget of all upstream requests together.
    pub fn upstream_budget(&self) -> String {
        format!("{}{{u}}:r", self.prefix)
    }

    /// The 429 cool-down of an upstream credential, and its probe marker (same slot).
    pub fn cooldown(&self, credential: &Fingerprint) -> (String, String) {
        let base = format!("{}{{c:{}}}", self.prefix, credential.to_hex());
        (format!("{base}:cd"), format!("{base}:cp"))
    }

    /// The channel invalidations are published on.
    pub fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// The pattern matching every key phonegate writes (for operators and tests).
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Fingerprinter;

    fn slot_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn an_entry_its_generation_and_its_lock_share_a_slot() {
        let f = Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        let keys = Keys::new("pg:");
        let id = Uuid::from_u128(7);
        let key = CacheKey {
            resource: Resource::PhoneNumber(id),
            credential: f.fingerprint(b"secret-token"),
        };
        let k = keys.entry(&key, "pol", "0.0");
        assert_eq!(slot_tag(&k.generation), slot_tag(&k.entry));
        assert_eq!(slot_tag(&k.lock), slot_tag(&k.entry));
        assert_eq!(k.generation, keys.number_generation(id));
        assert!(
            k.entry
                .starts_with("pg:{n:00000000-0000-0000-0000-000000000007}:e1:pol:0.0:")
        );
        for name in [&k.generation, &k.entry, &k.lock] {
            assert!(!name.contains("secret-token"), "{name}");
        }
        let list = CacheKey {
            resource: Resource::List(ListKind::V2, "limit=5".into()),
            credential: key.credential,
        };
        let l = keys.entry(&list, "pol", "0.0");
        assert_eq!(l.generation, keys.lists_generation(&key.credential));
        assert_eq!(slot_tag(&l.generation), slot_tag(&l.entry));
        assert_ne!(
            l.entry,
            keys.entry(
                &CacheKey {
                    resource: Resource::List(ListKind::V2, "limit=6".into()),
                    credential: key.credential,
                },
                "pol",
                "0.0"
            )
            .entry
        );
    }

    #[test]
    fn policy_namespace_and_credential_are_part_of_the_name() {
        let f = Fingerprinter::new(Some("0123456789abcdef")).unwrap();
        let keys = Keys::new("pg:");
        let key = |t: &[u8]| CacheKey {
            resource: Resource::PhoneNumber(Uuid::from_u128(1)),
            credential: f.fingerprint(t),
        };
        let a = keys.entry(&key(b"a"), "p1", "0.0").entry;
        assert_ne!(a, keys.entry(&key(b"b"), "p1", "0.0").entry);
        assert_ne!(a, keys.entry(&key(b"a"), "p2", "0.0").entry);
        assert_ne!(a, keys.entry(&key(b"a"), "p1", "1.0").entry);
        let (cd, cp) = keys.cooldown(&f.fingerprint(b"a"));
        assert_eq!(slot_tag(&cd), slot_tag(&cp));
    }
}
