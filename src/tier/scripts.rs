//! The Lua scripts that make the tier's rules atomic inside Redis.
//!
//! Each script touches keys of one hash-tag slot only (see [`super::keys`]), so it runs unchanged
//! on a Redis Cluster. The generation check lives here, where the data is written: a lock only
//! saves work, the generation decides what may be stored.

use redis::Script;

/// The scripts, loaded once per process (`EVALSHA`, falling back to `EVAL` after a restart of
/// Redis flushed its script cache; redis-rs does that fallback).
pub(super) struct Scripts {
    /// KEYS: generation, entry. Returns the record if the entry belongs to the current
    /// generation, else nil.
    pub lookup: Script,
    /// KEYS: generation, entry, lock. ARGV: now (Unix ms), token, lock ms.
    /// Returns `{"filled", gen, record}` for a current, fresh entry; else tries the lock:
    /// `{"claimed", gen, ""}` or `{"busy", gen, ""}`.
    pub claim: Script,
    /// KEYS: generation, entry, lock. ARGV: the generation the fill began in, fresh-until (Unix
    /// ms), record, ttl ms, token. Stores only if the generation has not moved; releases the lock
    /// if it is still ours. Returns 1 if stored.
    pub store: Script,
    /// KEYS: lock. ARGV: token. Releases the lock if it is still ours.
    pub release: Script,
    /// KEYS: generation. Moves the generation. Counters never expire: one that vanished (expired
    /// or evicted) would read as 0 again and revive entries stored under 0 before it moved, so
    /// they live as long as the phone numbers and credentials that were written, and Redis must
    /// evict with a `volatile-*` policy (entries have expiries, counters do not).
    pub bump: Script,
    /// KEYS: budget. ARGV: emission interval (ms), burst. GCRA on Redis's clock:
    /// `{0, units left, ms until the burst is full again}` when allowed, else `{ms until a unit
    /// is available, 0, 0}`.
    pub gcra: Script,
    /// KEYS: cool-down, probe. ARGV: probe lease (ms). `{1, 0}` open, `{0, ms}` cooling,
    /// `{2, 0}` this caller is the one probe.
    pub cooldown_check: Script,
    /// KEYS: cool-down, probe. ARGV: retry-after (ms), how long past it to remember (ms).
    pub cooldown_start: Script,
    /// KEYS: cool-down, probe. Ends a cool-down (its probe got a non-429 answer).
    pub cooldown_end: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            lookup: Script::new(
                r"
local g = redis.call('GET', KEYS[1]) or '0'
local e = redis.call('HMGET', KEYS[2], 'g', 'v')
if e[1] == g and e[2] then return e[2] end
return false
",
            ),
            claim: Script::new(
                r"
local g = redis.call('GET', KEYS[1]) or '0'
local e = redis.call('HMGET', KEYS[2], 'g', 'x', 'v')
if e[1] == g and e[3] and tonumber(e[2]) > tonumber(ARGV[1]) then
  return {'filled', g, e[3]}
end
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {'claimed', g, ''}
end
return {'busy', g, ''}
",
            ),
            store: Script::new(
                r"
local stored = 0
if (redis.call('GET', KEYS[1]) or '0') == ARGV[1] then
  redis.call('HSET', KEYS[2], 'g', ARGV[1], 'x', ARGV[2], 'v', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  stored = 1
end
if redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('DEL', KEYS[3]) end
return stored
",
            ),
            release: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
",
            ),
            bump: Script::new(
                r"
return redis.call('INCR', KEYS[1])
",
            ),
            gcra: Script::new(
                r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return {math.max(1, math.ceil(allow_at - now)), 0, 0} end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
local left = math.floor((now + tolerance - new_tat) / interval) + 1
return {0, math.max(0, left), math.ceil(new_tat - now)}
",
            ),
            cooldown_check: Script::new(
                r"
local until_ms = redis.call('GET', KEYS[1])
if not until_ms then return {1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = tonumber(until_ms) - now
if left > 0 then return {0, left} end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return {2, 0} end
return {0, 1000}
",
            ),
            cooldown_start: Script::new(
                r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > until_ms then until_ms = current end
redis.call('SET', KEYS[1], string.format('%d', until_ms), 'PX', until_ms - now + tonumber(ARGV[2]))
redis.call('DEL', KEYS[2])
return 0
",
            ),
            cooldown_end: Script::new(
                r"
redis.call('DEL', KEYS[1], KEYS[2])
return 0
",
            ),
        }
    }
}
