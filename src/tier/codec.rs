//! How an entry is written into Redis: a small versioned binary record of redacted bytes and the
//! metadata a hit needs, nothing else.
//!
//! Layout of version 1 (integers big-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | format version (`1`) |
//! | 2 | status |
//! | 8 | stored at, Unix milliseconds (when the upstream answered, on whichever replica) |
//! | 8 | fresh for, milliseconds |
//! | 8 | stale-while-revalidate window, milliseconds |
//! | 8 | stale-if-error window, milliseconds |
//! | 2 + n | etag |
//! | 2 + n | retry-after |
//! | rest | the redacted body |
//!
//! A record of another version is refused (a miss), so a release that changes the layout bumps
//! the version and never misreads what an older or newer replica wrote.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use http::{HeaderValue, StatusCode};

use crate::cache::{Entry, Lifetimes};

/// The version this release writes and reads.
pub const FORMAT_VERSION: u8 = 1;

const FIXED: usize = 1 + 2 + 8 * 4 + 2 + 2;

/// An entry as read back from Redis, with its times on this replica's clocks.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The entry, `stored_at` translated to this replica's monotonic clock.
    pub entry: Entry,
    /// When the upstream answered, as Unix time.
    pub stored_unix: SystemTime,
}

/// Why a record was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Written by a release with another format.
    Version(u8),
    /// Cut short or otherwise malformed.
    Malformed,
}

/// When `entry` was stored, as Unix time, given the current readings of both clocks.
pub fn unix_time_of(entry: &Entry, now: Instant, wall: SystemTime) -> SystemTime {
    wall.checked_sub(now.saturating_duration_since(entry.stored_at))
        .unwrap_or(UNIX_EPOCH)
}

/// Encodes `entry` (stored at `stored_unix`) with the stale windows in force.
pub fn encode(entry: &Entry, stored_unix: SystemTime, lifetimes: &Lifetimes) -> Vec<u8> {
    let etag = entry.etag.as_ref().map_or(&[][..], HeaderValue::as_bytes);
    let retry_after = entry
        .retry_after
        .as_deref()
        .map_or(&[][..], HeaderValue::as_bytes);
    let mut out = Vec::with_capacity(FIXED + etag.len() + retry_after.len() + entry.body.len());
    out.put_u8(FORMAT_VERSION);
    out.put_u16(entry.status.as_u16());
    out.put_u64(unix_millis(stored_unix));
    out.put_u64(millis(entry.fresh_for));
    out.put_u64(millis(lifetimes.stale_while_revalidate));
    out.put_u64(millis(lifetimes.stale_if_error));
    put_short(&mut out, etag);
    put_short(&mut out, retry_after);
    out.extend_from_slice(&entry.body);
    out
}

/// Decodes a record, placing its stored time on this replica's clocks (`now`, `wall`).
pub fn decode(record: &[u8], now: Instant, wall: SystemTime) -> Result<Decoded, DecodeError> {
    let mut buf = record;
    if buf.remaining() < FIXED {
        return Err(DecodeError::Malformed);
    }
    let version = buf.get_u8();
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let status = StatusCode::from_u16(buf.get_u16()).map_err(|_| DecodeError::Malformed)?;
    let stored_unix = UNIX_EPOCH + Duration::from_millis(buf.get_u64());
    let fresh_for = Duration::from_millis(buf.get_u64());
    let _stale_while_revalidate = buf.get_u64();
    let _stale_if_error = buf.get_u64();
    let etag = get_short(&mut buf)?;
    let retry_after = get_short(&mut buf)?;
    // A record from a replica whose clock runs ahead is treated as stored just now.
    let age = wall.duration_since(stored_unix).unwrap_or(Duration::ZERO);
    let stored_at = now.checked_sub(age).unwrap_or(now);
    Ok(Decoded {
        entry: Entry {
            status,
            body: Bytes::copy_from_slice(buf),
            etag,
            retry_after: retry_after.map(Box::new),
            stored_at,
            fresh_for,
            policy_generation: 0,
        },
        stored_unix,
    })
}

/// How long Redis should keep a record stored at `stored_unix`: until its last stale window
/// ends. `None` when that moment has passed (nothing to store).
pub fn redis_ttl(
    fresh_for: Duration,
    lifetimes: &Lifetimes,
    stored_unix: SystemTime,
    wall: SystemTime,
) -> Option<Duration> {
    let life = fresh_for.saturating_add(lifetimes.stale_window());
    let age = wall.duration_since(stored_unix).unwrap_or(Duration::ZERO);
    life.checked_sub(age).filter(|left| !left.is_zero())
}

/// Unix milliseconds of `t` (0 before the epoch).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    // Header values phonegate stores are short (an etag, a Retry-After); a longer one is dropped
    // rather than cut, since a cut validator would be wrong.
    match u16::try_from(bytes.len()) {
        Ok(len) => {
            out.put_u16(len);
            out.extend_from_slice(bytes);
        }
        Err(_) => out.put_u16(0),
    }
}

fn get_short(buf: &mut &[u8]) -> Result<Option<HeaderValue>, DecodeError> {
    if buf.remaining() < 2 {
        return Err(DecodeError::Malformed);
    }
    let len = usize::from(buf.get_u16());
    if buf.remaining() < len {
        return Err(DecodeError::Malformed);
    }
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    if value.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_bytes(value)
        .map(Some)
        .map_err(|_| DecodeError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            ok: Duration::from_secs(60),
            not_found: Duration::from_secs(5),
            list: Duration::from_secs(10),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(300),
        }
    }

    fn entry(stored_at: Instant) -> Entry {
        Entry {
            status: StatusCode::OK,
            body: Bytes::from_static(br#"{"id":"x","twilioAuthToken":"[REDACTED]"}"#),
            etag: Some(HeaderValue::from_static("\"abc\"")),
            retry_after: None,
            stored_at,
            fresh_for: Duration::from_secs(60),
            policy_generation: 3,
        }
    }

    #[test]
    fn round_trips_and_keeps_the_age_from_the_original_fetch() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let e = entry(now - Duration::from_secs(7));
        let stored = unix_time_of(&e, now, wall);
        let bytes = encode(&e, stored, &lifetimes());
        // Read on another replica 2 s later.
        let later = now + Duration::from_secs(2);
        let d = decode(&bytes, later, wall + Duration::from_secs(2)).unwrap();
        assert_eq!(d.entry.status, StatusCode::OK);
        assert_eq!(d.entry.body, e.body);
        assert_eq!(d.entry.etag, e.etag);
        assert_eq!(d.entry.retry_after, None);
        assert_eq!(d.entry.fresh_for, e.fresh_for);
        let age = later.duration_since(d.entry.stored_at);
        assert!(
            age >= Duration::from_millis(8_990) && age <= Duration::from_millis(9_010),
            "{age:?}"
        );
    }

    #[test]
    fn other_versions_and_short_records_are_refused() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut bytes = encode(&entry(now), wall, &lifetimes());
        bytes[0] = 2;
        assert_eq!(
            decode(&bytes, now, wall).unwrap_err(),
            DecodeError::Version(2)
        );
        assert_eq!(
            decode(&bytes[..10], now, wall).unwrap_err(),
            DecodeError::Malformed
        );
        let mut bytes = encode(&entry(now), wall, &lifetimes());
        bytes.truncate(FIXED + 2);
        assert_eq!(
            decode(&bytes, now, wall).unwrap_err(),
            DecodeError::Malformed
        );
    }

    #[test]
    fn redis_keeps_records_until_the_last_stale_window_ends() {
        let wall = SystemTime::now();
        let l = lifetimes();
        let ttl = redis_ttl(
            Duration::from_secs(60),
            &l,
            wall - Duration::from_secs(10),
            wall,
        );
        assert_eq!(ttl, Some(Duration::from_secs(350)));
        assert_eq!(
            redis_ttl(
                Duration::from_secs(60),
                &l,
                wall - Duration::from_secs(400),
                wall
            ),
            None
        );
    }
}
