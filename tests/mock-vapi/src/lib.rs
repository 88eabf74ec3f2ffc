//! A mock of Vapi's phone-number REST API, shared by phonegate's tests, benchmarks and the README
//! demo (`cargo run --example mock_vapi`).
//!
//! The mock is a real HTTP server (hyper 1, HTTP/1.1 and HTTP/2, optionally HTTPS through
//! rustls with ALPN `h2` + `http/1.1`) bound to a local port. It answers like
//! `https://api.vapi.ai` would:
//!
//! * `GET /phone-number/{id}`: one phone-number object (ids compared case-insensitively),
//!   else the NestJS-shaped 404 `{"message":"Phone number not found",...}`.
//! * `GET /phone-number?limit=`: a bare JSON array (limit 0..=1000, default 100).
//! * `GET /v2/phone-number?page=&limit=`: `{"results": [...], "metadata": {...}}`.
//! * `POST /phone-number`: 201, a fixture of the posted `provider` with the posted fields merged
//!   over it and a fresh id (so secrets the client sent come back).
//! * `PATCH /phone-number/{id}`: 200, the object with the patch merged in (top-level fields and
//!   `server` fields are replaced whole, like the real API). The change is kept.
//! * `DELETE /phone-number/{id}`: 200, the whole deleted object, secrets included.
//! * A missing bearer token, or the literal token `invalid-key` (or, with
//!   [`MockBuilder::valid_tokens`], any token not in that list) gets Vapi's real 401 body.
//!
//! The data comes from five fixtures in this crate's `fixtures/phone-numbers/`, one per provider
//! variant, compiled in with `include_str!`. The mock never redacts anything: every secret in
//! the fixtures is a string containing [`PLANTED`], and no non-secret value contains it, so a
//! test can assert that the marker never appears in what a proxy returns or logs.
//! [`SECRET_POINTERS`], [`provider_secret_pointers`], [`SECRET_URL_POINTERS`] and
//! [`KEPT_POINTERS`] list where the secrets (and the values that must survive) are.
//!
//! Failure modes are switched with [`Behavior`] (at build time or at run time with
//! [`MockVapi::set_behavior`]): NestJS error statuses, Cloudflare-like HTML pages, garbage,
//! oversized or deeply nested JSON, delays, a connection closed mid-body, 429 with
//! `Retry-After`, and sequences of those.
//!
//! Every request is counted ([`MockVapi::hits`], [`MockVapi::hits_for`]) and recorded
//! ([`MockVapi::requests`]). The server task is aborted when the last [`MockVapi`] handle is
//! dropped, or by [`MockVapi::shutdown`].
//!
//! ```
//! use mock_vapi::{Behavior, MockVapi, TWILIO_ID};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mock = MockVapi::start().await;
//! let upstream_url = mock.url(); // e.g. http://127.0.0.1:40123: point the proxy under test here
//! assert!(upstream_url.starts_with("http://127.0.0.1:"));
//! mock.set_behavior(Behavior::Status(503)); // every request from now on gets a NestJS 503
//! assert_eq!(mock.hits_for(&format!("/phone-number/{TWILIO_ID}")), 0);
//! mock.shutdown().await;
//! # }
//! ```
//!
//! The crate does not depend on `phonegate`. Its modules: `fixtures` (the data, ids, planted
//! secrets and constant bodies), `behaviours` ([`Behavior`] and the fault answers), `routes` (the
//! API's routing and handlers) and `server` ([`MockVapi`]: bind, serve, count and record); every
//! public name is re-exported here.

mod behaviours;
mod fixtures;
mod routes;
mod server;

pub use behaviours::Behavior;
pub use fixtures::{
    BYO_ID, FIXTURE_IDS, HTML_CONTENT_TYPE, INVALID_TOKEN, JSON_CONTENT_TYPE, KEPT_POINTERS,
    NOT_FOUND_BODY, PLANTED, SECRET_POINTERS, SECRET_URL_POINTERS, TELNYX_ID, TWILIO_ID,
    UNAUTHORIZED_BODY, VAPI_ID, VONAGE_ID, provider_kept_pointers, provider_secret_pointers,
};
pub use server::{MockBuilder, MockVapi, RecordedRequest};

use std::sync::{Mutex, MutexGuard};

/// Locks, ignoring poisoning (a panicking test thread must not cascade into the server).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
