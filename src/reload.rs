//! Live reload (SIGHUP): apply a newly loaded configuration to a running phonegate.
//!
//! What can change live does (TTLs, limits, redaction policy, client tokens and the upstream key,
//! CORS origins, log level); what cannot (listeners, TLS, the upstream client, connection and
//! concurrency handling, cache size and key, stale windows) keeps its running value and is named in
//! the outcome so the log can say a restart is needed. A new redaction policy starts a new policy
//! generation: entries redacted under the old one are never served again and are dropped.

use std::path::PathBuf;
use std::sync::Arc;

use crate::access_log::LogControl;
use crate::cache::Scope;
use crate::config::Config;
use crate::state::{AppState, Live};

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Settings that changed in the file or environment but only take effect after a restart.
    pub restart_needed: Vec<&'static str>,
    /// Whether the redaction policy changed (and the cache was emptied).
    pub policy_changed: bool,
    /// Whether the per-credential limits changed (budgets start afresh).
    pub limits_changed: bool,
    /// The new `log.level`, when it changed.
    pub new_log_level: Option<String>,
}

/// Applies `new` to `state`; returns what changed. On error nothing changed.
pub fn apply(state: &AppState, mut new: Config) -> Result<Outcome, String> {
    let current = state.live();
    let old = &current.config;
    let mut outcome = Outcome::default();

    // Restart-only settings keep their running values, so the snapshot always describes what
    // actually runs.
    macro_rules! keep {
        ($name:literal, $($field:tt)+) => {
            if new.$($field)+ != old.$($field)+ {
                outcome.restart_needed.push($name);
                new.$($field)+ = old.$($field)+.clone();
            }
        };
    }
    keep!("listen", listen);
    keep!("admin.listen", admin_listen);
    keep!("upstream.url", upstream.base_url);
    keep!("upstream.timeout_ms", upstream.timeout);
    keep!("upstream.max_body_bytes", upstream.max_body_bytes);
    keep!("upstream.ca_path", upstream.ca_path);
    keep!("upstream.max_in_flight", shield.max_in_flight);
    keep!("upstream.queue_timeout_ms", shield.queue_timeout);
    keep!("upstream.max_retry_after_secs", shield.max_retry_after);
    keep!("upstream.breaker.failures", shield.breaker_failures);
    keep!("upstream.breaker.open_secs", shield.breaker_open);
    keep!("limits.max_tracked_keys", shield.max_tracked_keys);
    keep!("cache.max_bytes", cache.max_bytes);
    keep!("cache.key_secret", cache.key_secret);
    keep!(
        "cache.stale_while_revalidate_secs",
        cache.stale_while_revalidate
    );
    keep!("cache.stale_if_error_secs", cache.stale_if_error);
    keep!("log.format", log.format);
    keep!("server.header_timeout_ms", server.header_timeout);
    keep!("server.idle_timeout_ms", server.idle_timeout);
    keep!("server.drain_timeout_ms", server.drain_timeout);
    keep!("server.max_connections", server.max_connections);
    keep!("redis", redis);
    if tls_paths(&new) != tls_paths(old) {
        outcome.restart_needed.push("tls");
        new.tls = old.tls.clone();
    }

    outcome.policy_changed = new.redact != old.redact;
    let s = (&new.shield, &old.shield);
    outcome.limits_changed = s.0.misses_per_sec_per_key != s.1.misses_per_sec_per_key
        || s.0.miss_burst != s.1.miss_burst
        || s.0.requests_per_sec_per_key != s.1.requests_per_sec_per_key
        || s.0.request_burst != s.1.request_burst
        || s.0.upstream_requests_per_sec != s.1.upstream_requests_per_sec
        || s.0.upstream_burst != s.1.upstream_burst;
    if new.log.level != old.log.level {
        outcome.new_log_level = Some(new.log.level.clone());
    }

    let generation = current.policy_generation + u64::from(outcome.policy_changed);
    let live = Live::new(new, &state.fingerprinter, generation).map_err(|e| e.to_string())?;
    let shield_config = live.config.shield.clone();
    if outcome.policy_changed {
        // Fetches in flight under the old policy store nothing and take no new joiners;
        // invalidated before the new snapshot is visible so no request can pair the new
        // snapshot with an old fetch. Entries also carry their policy generation (and shared-tier
        // names the policy's identity), so none of the old ones is served from here on.
        state.store.invalidate_local(Scope::All);
    }
    state.store.extend_horizon(live.horizon());
    state.set_live(live);
    if outcome.limits_changed {
        state.shield.set_limits(&shield_config);
    }
    Ok(outcome)
}

fn tls_paths(config: &Config) -> Option<(String, String)> {
    config.tls.as_ref().map(|t| {
        (
            t.cert_path.display().to_string(),
            t.key_path.display().to_string(),
        )
    })
}

/// Reloads the configuration file and environment on every SIGHUP. A configuration that does
/// not load is rejected with an error line and the running one stays.
pub async fn on_sighup(state: Arc<AppState>, path: Option<PathBuf>, log: LogControl) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; live reload is off");
            return;
        };
        while hup.recv().await.is_some() {
            let config = match Config::load(path.as_deref()) {
                Ok(config) => config,
                Err(error) => {
                    tracing::error!(%error, "configuration reload rejected; keeping the running configuration");
                    continue;
                }
            };
            match apply(&state, config) {
                Ok(outcome) => {
                    if let Some(level) = &outcome.new_log_level {
                        match log.set_level(level) {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                "log.level changed but RUST_LOG is set; keeping RUST_LOG"
                            ),
                            Err(error) => tracing::error!(%error, "log.level not changed"),
                        }
                    }
                    if !outcome.restart_needed.is_empty() {
                        tracing::warn!(
                            settings = ?outcome.restart_needed,
                            "these settings changed but only take effect after a restart"
                        );
                    }
                    tracing::info!(
                        policy_changed = outcome.policy_changed,
                        limits_changed = outcome.limits_changed,
                        "configuration reloaded"
                    );
                }
                Err(error) => {
                    tracing::error!(%error, "configuration reload rejected; keeping the running configuration");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (state, path, log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(toml: &str) -> std::sync::Arc<AppState> {
        AppState::new(Config::from_toml(toml).unwrap()).unwrap()
    }

    #[test]
    fn live_settings_change_and_restart_only_ones_are_reported() {
        let s = state("");
        let new = Config::from_toml(
            "listen = \"127.0.0.1:1\"\n[cache]\nttl_secs = 5\n[limits]\nmisses_per_sec_per_key = 3\n\
             [log]\nlevel = \"debug\"\n",
        )
        .unwrap();
        let outcome = apply(&s, new).unwrap();
        assert_eq!(outcome.restart_needed, vec!["listen"]);
        assert!(outcome.limits_changed);
        assert!(!outcome.policy_changed);
        assert_eq!(outcome.new_log_level.as_deref(), Some("debug"));
        let live = s.live();
        assert_eq!(live.lifetimes.ok, Duration::from_secs(5), "TTL applied");
        assert_eq!(
            live.config.listen,
            "127.0.0.1:8080".parse().unwrap(),
            "listen kept"
        );
        assert_eq!(live.policy_generation, 0);
    }

    #[test]
    fn a_new_redaction_policy_starts_a_new_generation() {
        let s = state("");
        let new = Config::from_toml("[redact]\nmode = \"remove\"\n").unwrap();
        let outcome = apply(&s, new).unwrap();
        assert!(outcome.policy_changed);
        assert_eq!(s.live().policy_generation, 1);
        let again = Config::from_toml("[redact]\nmode = \"remove\"\n").unwrap();
        assert!(!apply(&s, again).unwrap().policy_changed);
        assert_eq!(s.live().policy_generation, 1);
    }
}
