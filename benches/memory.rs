//! Memory report: what the response cache costs in resident memory, and whether `cache.max_bytes`
//! bounds it. Prints markdown.
//!
//!   cargo bench --bench memory              # every phase, each in a fresh process
//!   cargo bench --bench memory -- fill      # one phase, in this process
//!   cargo bench --bench memory -- bound
//!
//! Freed memory need not go back to the OS, so phases never share a process: without a phase
//! argument the binary re-runs itself once per phase and prints what they report. Resident
//! memory is VmRSS from /proc/self/status (Linux only), with the allocator the binary uses (the
//! system one). Entries are built the way the proxy builds them, through the response filter.
//!
//! Phases:
//! - `fill`: 100,000 cached numbers (the redacted twilio fixture, a distinct id each) in a cache
//!   with room to spare; resident growth against the bytes of the bodies held.
//! - `fill-exact`: the same, with each body copied into an allocation of exactly its length
//!   (a diagnostic, not what the proxy does): the difference from `fill` is the spare capacity
//!   the serialiser's `Vec` leaves in every body, the rest is the per-entry bookkeeping.
//! - `bound`: a 64 MiB cache offered four times that; `weighted_size()` must stay near or under
//!   the bound, and so must resident growth.

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use phonegate::cache::{CacheKey, Entry, Resource, ResponseCache, Stamp};
use phonegate::credential::{Fingerprint, Fingerprinter};
use phonegate::redact::Policy;
use phonegate::response_filter::{Ttls, filter};
use phonegate::upstream::UpstreamResponse;
use uuid::Uuid;

const FIXTURE: &str = include_str!("../tests/fixtures/example-twilio-phone-number.json");
const FIXTURE_ID: &str = "8f2b6c1e-4d3a-4b7e-9c21-5a0e7d3f9b44";
const KEY_SECRET: &str = "bench-key-secret-0123456789abcdef";
const API_KEY: &str = "3f6c2a1e-9b7d-4e58-a0c3-5d8f1b2e4a97";

const MIB: u64 = 1024 * 1024;
/// Entries of the `fill` phase.
const FILL_ENTRIES: u32 = 100_000;
/// `cache.max_bytes` of the `bound` phase, and how many times that is offered.
const BOUND_MAX_BYTES: u64 = 64 * MIB;
const BOUND_OFFERED: u64 = 4;
/// Resident growth may be this many times the bytes held ...
const RSS_RATIO_TARGET: f64 = 1.3;
/// ... plus this fixed base (allocator arenas, moka's fixed tables, the code pages first touched).
const RSS_BASE: u64 = 16 * MIB;
/// `weighted_size()` may exceed `max_bytes` by this fraction.
const BOUND_SLACK: f64 = 0.10;

const PHASES: [&str; 3] = ["fill", "fill-exact", "bound"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(phase) = args.iter().find(|a| PHASES.contains(&a.as_str())) {
        return match phase.as_str() {
            "fill" => fill(false),
            "fill-exact" => fill(true),
            _ => bound(),
        };
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and must stay quick.
    if !args.iter().any(|a| a == "--bench") {
        println!("memory: skipped (run it with `cargo bench --bench memory`)");
        return ExitCode::SUCCESS;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("memory: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("# phonegate cache memory\n");
    let mut code = ExitCode::SUCCESS;
    for phase in PHASES {
        match Command::new(&exe).arg(phase).output() {
            Ok(out) => {
                print!("{}", String::from_utf8_lossy(&out.stdout));
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                if !out.status.success() {
                    println!("phase `{phase}` failed: {}\n", out.status);
                    code = ExitCode::FAILURE;
                }
            }
            Err(e) => {
                println!("phase `{phase}` could not start: {e}\n");
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}

/// Resident set size and its high-water mark, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("/proc/self/status has no {name}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// Builds cache entries the way the proxy does: an upstream answer for number `i` (the fixture
/// with its own id) through the response filter.
struct Maker {
    policy: Policy,
    credential: Fingerprint,
    now: Instant,
}

impl Maker {
    fn new() -> Self {
        assert!(FIXTURE.contains(FIXTURE_ID), "the fixture's id changed");
        let fp = Fingerprinter::new(Some(KEY_SECRET)).expect("fingerprinter");
        Maker {
            policy: Policy::default(),
            credential: fp.fingerprint(API_KEY.as_bytes()),
            now: Instant::now(),
        }
    }

    fn make(&self, i: u32) -> (CacheKey, Arc<Entry>) {
        let id = Uuid::from_u128(0x8f2b_6c1e_4d3a_4b7e_9c21_0000_0000_0000 | u128::from(i));
        let raw = FIXTURE.replace(FIXTURE_ID, &id.hyphenated().to_string());
        let upstream = UpstreamResponse {
            status: StatusCode::OK,
            body: Bytes::from(raw),
            retry_after: None,
        };
        let ttls = Ttls {
            ok: Duration::from_secs(3600),
            not_found: Duration::from_secs(60),
        };
        let entry = filter(upstream, &self.policy, ttls, None, self.now).expect("fixture filters");
        let key = CacheKey {
            resource: Resource::PhoneNumber(id),
            credential: self.credential,
        };
        (key, Arc::new(entry))
    }
}

fn fill(exact: bool) -> ExitCode {
    let maker = Maker::new();
    // Warm the code paths once so first-touch of code and statics is not charged to the entries.
    drop(maker.make(u32::MAX));
    let (rss_before, _) = rss();
    let started = Instant::now();

    let cache = ResponseCache::new(4 * 1024 * MIB, Duration::ZERO);
    let mut body_bytes = 0u64;
    for i in 0..FILL_ENTRIES {
        let (key, mut entry) = maker.make(i);
        if exact {
            let body = Bytes::copy_from_slice(&entry.body);
            Arc::make_mut(&mut entry).body = body;
        }
        body_bytes += entry.body.len() as u64;
        cache.insert(key, entry, Stamp::default());
    }
    cache.run_pending_tasks();

    let (rss_after, hwm_after) = rss();
    let elapsed = started.elapsed();
    let growth = rss_after.saturating_sub(rss_before);
    let n = u64::from(FILL_ENTRIES);
    let ratio = growth as f64 / body_bytes as f64;
    let overhead = (growth as f64 - body_bytes as f64) / n as f64;
    let limit = (RSS_RATIO_TARGET * body_bytes as f64) as u64 + RSS_BASE;

    if exact {
        println!(
            "## fill-exact: {FILL_ENTRIES} cached numbers, bodies copied to exact-size \
             allocations (diagnostic)\n"
        );
    } else {
        println!("## fill: {FILL_ENTRIES} cached numbers, cache with room to spare\n");
    }
    println!("| measure | value |");
    println!("|---|---|");
    println!("| entries (`entry_count()`) | {} |", cache.entry_count());
    println!(
        "| body bytes held (sum) | {body_bytes} ({}, {} B/entry) |",
        mib(body_bytes),
        body_bytes / n
    );
    println!(
        "| `weighted_size()` | {} ({}, {} B/entry) |",
        cache.weighted_size(),
        mib(cache.weighted_size()),
        cache.weighted_size() / n
    );
    println!("| RSS before | {} |", mib(rss_before));
    println!(
        "| RSS after | {} (peak {}) |",
        mib(rss_after),
        mib(hwm_after)
    );
    println!("| RSS growth | {} |", mib(growth));
    println!("| RSS growth / body bytes | {ratio:.2}x |");
    println!("| RSS growth beyond bodies, per entry | {overhead:.0} B |");
    println!(
        "| `weighted_size()` / RSS growth | {:.2} |",
        cache.weighted_size() as f64 / growth as f64
    );
    println!("| build time | {:.2} s |", elapsed.as_secs_f64());
    println!();
    println!(
        "- {}: RSS growth {} <= {RSS_RATIO_TARGET}x bodies + {} = {}",
        verdict(growth <= limit),
        mib(growth),
        mib(RSS_BASE),
        mib(limit)
    );
    println!();
    ExitCode::SUCCESS
}

fn bound() -> ExitCode {
    let maker = Maker::new();
    // One entry's weight, as the cache charges it, decides how many make "4x max_bytes".
    let probe = ResponseCache::new(u64::MAX, Duration::ZERO);
    let (key, entry) = maker.make(u32::MAX);
    probe.insert(key, entry, Stamp::default());
    probe.run_pending_tasks();
    let weight = probe.weighted_size();
    assert!(weight > 0, "the probe entry was cached");
    drop(probe);

    let offered_bytes = BOUND_OFFERED * BOUND_MAX_BYTES;
    let offered = u32::try_from(offered_bytes.div_ceil(weight)).expect("entry count fits u32");
    let (rss_before, hwm_before) = rss();
    let started = Instant::now();

    let cache = ResponseCache::new(BOUND_MAX_BYTES, Duration::ZERO);
    for i in 0..offered {
        let (key, entry) = maker.make(i);
        cache.insert(key, entry, Stamp::default());
    }
    cache.run_pending_tasks();

    let (rss_after, hwm_after) = rss();
    let elapsed = started.elapsed();
    let growth = rss_after.saturating_sub(rss_before);
    let peak_growth = hwm_after.saturating_sub(hwm_before.max(rss_before));
    let weighted = cache.weighted_size();
    let kept = cache.entry_count();
    let weighted_ok = weighted as f64 <= BOUND_MAX_BYTES as f64 * (1.0 + BOUND_SLACK);
    let limit = (RSS_RATIO_TARGET * BOUND_MAX_BYTES as f64) as u64 + RSS_BASE;

    println!(
        "## bound: `max_bytes` = {}, offered {BOUND_OFFERED}x that\n",
        mib(BOUND_MAX_BYTES)
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| weight of one entry | {weight} B |");
    println!(
        "| entries offered | {offered} ({} by weight) |",
        mib(u64::from(offered) * weight)
    );
    println!("| entries kept (`entry_count()`) | {kept} |");
    println!(
        "| `weighted_size()` | {weighted} ({}, {:.1}% of max) |",
        mib(weighted),
        100.0 * weighted as f64 / BOUND_MAX_BYTES as f64
    );
    println!("| RSS before | {} |", mib(rss_before));
    println!(
        "| RSS after | {} (peak {}) |",
        mib(rss_after),
        mib(hwm_after)
    );
    println!(
        "| RSS growth | {} ({:.2}x max_bytes) |",
        mib(growth),
        growth as f64 / BOUND_MAX_BYTES as f64
    );
    println!("| peak RSS growth | {} |", mib(peak_growth));
    println!("| build time | {:.2} s |", elapsed.as_secs_f64());
    println!();
    println!(
        "- {}: `weighted_size()` {} <= max_bytes {} + {:.0}% ({})",
        verdict(weighted_ok),
        mib(weighted),
        mib(BOUND_MAX_BYTES),
        BOUND_SLACK * 100.0,
        if weighted <= BOUND_MAX_BYTES {
            "under max"
        } else {
            "over max"
        }
    );
    println!(
        "- {}: RSS growth {} <= {RSS_RATIO_TARGET}x max_bytes + {} = {}",
        verdict(growth <= limit),
        mib(growth),
        mib(RSS_BASE),
        mib(limit)
    );
    println!();
    ExitCode::SUCCESS
}
