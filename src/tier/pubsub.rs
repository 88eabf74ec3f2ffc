//! The invalidation channel: every replica publishes what it invalidated and drops its own
//! copies when another replica does.
//!
//! A replica that loses its subscription cannot know what it missed, so it stops trusting its
//! memory: everything in L1 is invalidated when the subscription is lost and again when it is
//! back (entries filled meanwhile may have missed messages too). Subscriptions are kept alive with
//! a ping each second, so a silently dead connection is found within about two; the purge
//! counters that name entries are re-read at the same pace.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use uuid::Uuid;

use super::Tier;
use crate::cache::Scope;
use crate::credential::{Fingerprint, KeyId};

/// Where invalidations from other replicas are applied: this replica's memory.
pub trait Local: Send + Sync {
    /// Drops (makes unreachable) this replica's copies covered by `scope`.
    fn invalidate_local(&self, scope: Scope);
}

const PING_EVERY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// `<instance> <kind> [<argument>]`.
pub(super) fn encode(instance: &str, scope: &Scope) -> String {
    match scope {
        Scope::Number(id) => format!("{instance} n {}", id.hyphenated()),
        Scope::Lists(credential) => format!("{instance} l {}", credential.to_hex()),
        Scope::Credential(key_id) => format!("{instance} c {key_id}"),
        Scope::All => format!("{instance} a"),
    }
}

/// Reads a message: who sent it and what it covers. Unknown messages (a newer release's) are
/// `None` and ignored.
pub(super) fn decode(message: &str) -> Option<(&str, Scope)> {
    let mut parts = message.split(' ');
    let instance = parts.next()?;
    let scope = match (parts.next()?, parts.next()) {
        ("n", Some(id)) => Scope::Number(Uuid::try_parse(id).ok()?),
        ("l", Some(fp)) => Scope::Lists(Fingerprint::from_hex(fp)?),
        ("c", Some(key_id)) => Scope::Credential(KeyId::from_hex(key_id)?),
        ("a", None) => Scope::All,
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((instance, scope))
}

/// Subscribes, applies messages, and re-subscribes whenever the connection is lost, until the
/// tier is dropped.
pub(super) async fn listen(tier: Weak<Tier>, local: Arc<dyn Local>) {
    let mut backoff = Duration::from_millis(100);
    let mut seed = 0usize;
    let mut failures = 0u32;
    loop {
        let Some(current) = tier.upgrade() else {
            return;
        };
        let client = current.pubsub_clients[seed % current.pubsub_clients.len()].clone();
        let channel = current.keys.channel();
        drop(current);
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        let why = match connected {
            Ok(Ok(pubsub)) => {
                let Some(current) = tier.upgrade() else {
                    return;
                };
                // Invalidations queued while Redis was away go out first; then the purge
                // counters are read again and this replica's memory is distrusted, since messages
                // may have been missed.
                let _ = current.replay().await;
                let _ = current.refresh_namespace().await;
                local.invalidate_local(Scope::All);
                current.subscribed.store(true, Ordering::Release);
                current.metrics.tier.subscribed(true);
                tracing::info!("subscribed to redis invalidations");
                drop(current);
                backoff = Duration::from_millis(100);
                failures = 0;
                serve(&tier, &local, pubsub).await;
                let Some(current) = tier.upgrade() else {
                    return;
                };
                current.subscribed.store(false, Ordering::Release);
                current.metrics.tier.subscribed(false);
                local.invalidate_local(Scope::All);
                tracing::warn!(
                    "lost the redis invalidation subscription; memory entries are no longer \
                     trusted and the subscription is being re-made"
                );
                None
            }
            // An ACL without channel rights (Redis 7's default `resetchannels`) fails here while
            // ordinary commands work: say so, but not on every retry.
            Ok(Err(error)) => Some(format!("{:?} {}", error.kind(), error.code().unwrap_or(""))),
            Err(_) => Some("no answer in time".to_owned()),
        };
        if let Some(why) = why {
            failures += 1;
            seed = seed.wrapping_add(1);
            if failures == 1 || failures % 30 == 0 {
                tracing::warn!(
                    error = %why,
                    attempts = failures,
                    "cannot subscribe to redis invalidations; the shared tier is not used until \
                     this works"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Applies messages until the subscription fails a ping or ends.
async fn serve(tier: &Weak<Tier>, local: &Arc<dyn Local>, pubsub: redis::aio::PubSub) {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return };
                let Some(tier) = tier.upgrade() else { return };
                let Ok(text) = std::str::from_utf8(message.get_payload_bytes()) else { continue };
                let Some((from, scope)) = decode(text) else { continue };
                if from == tier.instance {
                    continue;
                }
                tier.metrics.tier.invalidation("received");
                if matches!(scope, Scope::All | Scope::Credential(_)) {
                    let _ = tier.refresh_namespace().await;
                }
                local.invalidate_local(scope);
            }
            _ = ping.tick() => {
                let Some(current) = tier.upgrade() else { return };
                let alive = tokio::time::timeout(PING_EVERY, sink.ping::<redis::Value>()).await;
                if !matches!(alive, Ok(Ok(_))) {
                    return;
                }
                // The purge counters are re-read each second as well, so a message lost without
                // the connection dropping delays a purge by a second at most.
                if let Some(moved) = current.refresh_namespace().await {
                    for scope in moved {
                        local.invalidate_local(scope);
                    }
                }
                // Invalidations Redis did not take go out as soon as it answers again.
                if current.has_pending() {
                    let _ = current.replay().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Fingerprinter;

    #[test]
    fn messages_round_trip_and_junk_is_ignored() {
        let fp = Fingerprinter::new(Some("0123456789abcdef"))
            .unwrap()
            .fingerprint(b"t");
        for scope in [
            Scope::Number(Uuid::from_u128(9)),
            Scope::Lists(fp),
            Scope::Credential(fp.key_id()),
            Scope::All,
        ] {
            let text = encode("me", &scope);
            assert_eq!(decode(&text), Some(("me", scope)), "{text}");
        }
        for junk in [
            "",
            "me",
            "me n",
            "me n not-a-uuid",
            "me a extra",
            "me z 1",
            "me l abc",
        ] {
            assert_eq!(decode(junk), None, "{junk:?}");
        }
    }
}
