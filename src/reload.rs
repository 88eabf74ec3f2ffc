//! Live reload (SIGHUP): apply a newly loaded configuration to a running phonegate.
//!
//! A reload applies the [`LiveConfig`](crate::config::LiveConfig) part of the new configuration as
//! one new snapshot (TTLs, budgets, redaction policy, client tokens and the upstream key, CORS
//! origins, request bounds, admin token, log level). The
//! [`StartupConfig`](crate::config::StartupConfig) part cannot change in a running process; the
//! settings that differ are named in the outcome so the log can say a restart is needed. A new
//! redaction policy starts a new policy generation: entries redacted under the old one are never
//! served again and are dropped. The certificate files are read again too ([`reload_certificates`]):
//! new handshakes use them, established connections go on.

use std::path::PathBuf;
use std::sync::Arc;

use crate::access_log::LogControl;
use crate::cache::Scope;
use crate::config::Config;
use crate::state::{AppState, Live};

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Start-up settings (dotted names) that changed in the file or environment but only take
    /// effect after a restart.
    pub restart_needed: Vec<String>,
    /// Whether the redaction policy changed (and the cache was emptied).
    pub policy_changed: bool,
    /// Whether the per-credential limits changed (budgets start afresh).
    pub limits_changed: bool,
    /// The new `log.level`, when it changed.
    pub new_log_level: Option<String>,
}

/// Applies the live part of `new` to `state`; returns what changed. Its start-up part is only
/// compared with the running one, to name what needs a restart. On error nothing changed.
pub fn apply(state: &AppState, new: Config) -> Result<Outcome, String> {
    let current = state.live();
    let old = &current.config;
    let restart_needed = state.running_config().restart_only_changes(&new);
    let new = new.live;
    let outcome = Outcome {
        restart_needed,
        policy_changed: new.redact != old.redact,
        limits_changed: new.limits != old.limits,
        new_log_level: (new.log_level != old.log_level).then(|| new.log_level.clone()),
    };

    let generation = current.policy_generation + u64::from(outcome.policy_changed);
    // Unchanged limits keep their budgets: a reload for another reason must not refill them.
    let budgets = (!outcome.limits_changed).then(|| Arc::clone(&current.budgets));
    let live = Live::new(
        new,
        &state.startup,
        &state.fingerprinter,
        generation,
        budgets,
    )
    .map_err(|e| e.to_string())?;
    if outcome.policy_changed {
        // Fetches in flight under the old policy store nothing and take no new joiners;
        // invalidated before the new snapshot is visible so no request can pair the new
        // snapshot with an old fetch. Entries also carry their policy generation (and shared-tier
        // names the policy's identity), so none of the old ones is served from here on.
        state.store.invalidate_local(Scope::All);
    }
    state.store.extend_horizon(live.horizon());
    state.set_live(live);
    Ok(outcome)
}

/// Reads the certificate files again (`tls.*`, `upstream.ca_path`, `upstream.client_*`): new
/// handshakes use them, established connections keep what they negotiated. A file that cannot
/// be used is rejected with an error line and every certificate stays as it was.
/// Returns whether they were usable.
pub fn reload_certificates(state: &AppState) -> bool {
    match state.certificates.reload() {
        Ok(files) => {
            if !files.is_empty() {
                tracing::info!(settings = ?files, "certificates reloaded");
            }
            true
        }
        Err(error) => {
            tracing::error!(%error, "certificate reload rejected; keeping the running certificates");
            false
        }
    }
}

/// Reloads the certificates, the configuration file and the environment on every SIGHUP. A configuration that does
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
            let certificates = reload_certificates(&state);
            let config = match Config::load(path.as_deref()) {
                Ok(config) => config,
                Err(error) => {
                    tracing::error!(%error, "configuration reload rejected; keeping the running configuration");
                    state.metrics.reload("rejected");
                    continue;
                }
            };
            let applied = apply(&state, config);
            let result = if certificates && applied.is_ok() {
                "applied"
            } else {
                "rejected"
            };
            state.metrics.reload(result);
            match applied {
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
            s.startup.listen,
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

    #[test]
    fn start_up_settings_are_named_by_key_and_never_applied() {
        let s = state("[cache]\nkey_secret = \"0123456789abcdef-one\"\n");
        let new = Config::from_toml(
            "[cache]\nkey_secret = \"0123456789abcdef-two\"\nmax_bytes = 1024\nttl_secs = 7\n\
             [server]\nidle_timeout_ms = 1234\nrequest_timeout_ms = 4321\n\
             [tls]\ncert_path = \"/c.pem\"\nkey_path = \"/k.pem\"\n",
        )
        .unwrap();
        let outcome = apply(&s, new).unwrap();
        let mut names = outcome.restart_needed.clone();
        names.sort();
        assert_eq!(
            names,
            [
                "cache.key_secret",
                "cache.max_bytes",
                "server.idle_timeout_ms",
                "tls.cert_path",
                "tls.key_path"
            ]
        );
        let running = s.running_config();
        assert_eq!(
            running.startup.store.max_bytes, 268_435_456,
            "max_bytes kept"
        );
        assert!(running.startup.tls.is_none(), "TLS kept off");
        assert_eq!(
            running.live.freshness.ttl,
            Duration::from_secs(7),
            "TTL applied"
        );
        assert_eq!(running.live.requests.timeout, Duration::from_millis(4321));
    }

    #[test]
    fn budgets_survive_a_reload_unless_the_limits_change() {
        let s = state("");
        let before = Arc::clone(&s.live().budgets);
        apply(&s, Config::from_toml("[cache]\nttl_secs = 9\n").unwrap()).unwrap();
        assert!(Arc::ptr_eq(&before, &s.live().budgets), "same budgets");
        let outcome = apply(
            &s,
            Config::from_toml("[cache]\nttl_secs = 9\n[limits]\nmiss_burst = 3\n").unwrap(),
        )
        .unwrap();
        assert!(outcome.limits_changed);
        assert!(!Arc::ptr_eq(&before, &s.live().budgets), "new budgets");
    }
}
