//! phonegate: a caching, secret-redacting reverse proxy for Vapi's `GET /phone-number/{id}`.
//!
//! A request goes through the phases in [`proxy`] in a fixed order: request filter ([`route`],
//! [`credential`]), cache key and lookup ([`cache`]), upstream fetch, coalesced per key
//! ([`upstream`], [`cache::coalesce`]), response filter ([`response_filter`], [`redact`]), cache
//! store, response ([`response`]) and access log ([`access_log`]). [`server`] owns the listeners
//! and the connection lifecycle, [`admin`] the health endpoints, [`config`] the settings.

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod cors;
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
pub mod shield;
pub mod state;
pub mod tier;
pub mod tls;
pub mod upstream;
pub mod write_body;
