//! phonegate's integration tests, as one test binary: one link instead of one per file, and every
//! test of the suite scheduled on the same thread pool. Each module owns one area of behaviour;
//! `support` (tests/support/) holds what they share: the mock upstream (re-exported from the
//! `mock-vapi` crate, tests/mock-vapi/, which has its own tests), a running proxy, real Redis
//! servers, and the helpers the modules assert with.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod bad_input;
mod binary;
mod browser;
mod cache_signals;
mod cert_rotation;
mod connections;
mod deploy_files;
mod managed_and_cors;
mod metrics;
mod otel;
mod promtool;
mod properties;
mod proxy_core;
mod redaction;
mod redis_harness;
mod resource;
mod shared_tier;
mod shielding;
mod smuggling;
mod tls;
mod upstream_faults;
