//! phonegate: a caching, secret-redacting reverse proxy for Vapi's `GET /phone-number/{id}`.
//!
//! A request goes through the phases in [`proxy`] in a fixed order: request filter ([`route`],
//! [`credential`]), cache key and lookup ([`cache`]), upstream fetch, coalesced per key
//! ([`upstream`], [`cache::coalesce`]), response filter ([`response_filter`], [`redact`]), cache
//! store, response ([`response`]) and access log ([`access_log`]). [`server`] owns the listeners
//! and the connection lifecycle, [`admin`] the health endpoints, [`config`] the settings.

// The request path never panics on data from the network, the upstream or the configuration:
// no `unwrap` outside tests (clippy.toml allows it in unit tests). Integration tests and the
// harness may unwrap, so this lives here rather than in Cargo.toml's [lints].
#![warn(missing_docs, unreachable_pub, clippy::unwrap_used)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod config;
pub(crate) mod cors;
pub mod credential;
pub mod error;
pub mod log_writer;
pub mod metrics;
pub mod proxy;
pub mod query;
pub mod redact;
pub mod reload;
pub mod response;
pub mod response_filter;
pub mod route;
pub mod server;
pub(crate) mod shield;
pub mod state;
pub mod stream_tasks;
pub mod telemetry;
pub mod tier;
pub(crate) mod tls;
pub mod upstream;
pub(crate) mod write_body;
