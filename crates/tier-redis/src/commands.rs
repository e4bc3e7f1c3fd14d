//! Every Redis command this crate sends, built in one place (callers run them through
//! [`RedisConnection`](crate::RedisConnection)).
//!
//! The write path is [`write`]: the one command that stores or removes an entry, used by
//! `insert`, `insert_many`, `remove` and the background retry alike. Replacing it (e.g. by a
//! compare-and-set script) changes every write of the tier at once.

use bytes::Bytes;
use redis::{Cmd, Pipeline};

/// What a write does to one key.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// Store `envelope` until `stale_until` (Unix ms).
    Set { envelope: Bytes, stale_until: u64 },
    /// Remove the key.
    Remove,
}

impl Write {
    /// Has this write's value passed its `stale_until` at `now`?
    pub(crate) fn expired_at(&self, now: u64) -> bool {
        matches!(self, Self::Set { stale_until, .. } if *stale_until <= now)
    }
}

/// The command that performs `write` on `key` (a Redis key, prefix included) at `now`:
/// `SET key envelope PX (stale_until - now)`, or `DEL key` to remove — also for a value already
/// past `stale_until` (storing it would be wrong, and leaving an older value in its place too).
pub(crate) fn write(key: &[u8], write: &Write, now: u64) -> Cmd {
    match write {
        Write::Set { envelope, stale_until } if *stale_until > now => {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(envelope.as_ref()).arg("PX").arg(*stale_until - now);
            cmd
        }
        Write::Set { .. } | Write::Remove => {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(key);
            cmd
        }
    }
}

/// `GET key`.
pub(crate) fn get(key: &[u8]) -> Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    cmd
}

/// `MGET keys...`.
pub(crate) fn mget<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Cmd {
    let mut cmd = redis::cmd("MGET");
    for k in keys {
        cmd.arg(k);
    }
    cmd
}

/// `PTTL key`.
pub(crate) fn pttl(key: &[u8]) -> Cmd {
    let mut cmd = redis::cmd("PTTL");
    cmd.arg(key);
    cmd
}

/// Keys per `SCAN` step.
pub(crate) const SCAN_COUNT: usize = 1000;

/// `SCAN cursor MATCH pattern COUNT 1000`.
pub(crate) fn scan(cursor: u64, pattern: &[u8]) -> Cmd {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT);
    cmd
}

/// `UNLINK key` for each of `keys`, one command per key (so that no command spans hash slots),
/// in one pipeline.
pub(crate) fn unlink(keys: &[Vec<u8>]) -> Pipeline {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("UNLINK").arg(k);
    }
    pipe
}

/// What the inspector asks of each key: `PTTL`, `STRLEN` and the first `head` bytes
/// (`GETRANGE key 0 head-1`), three replies per key.
pub(crate) fn describe(keys: &[Vec<u8>], head: usize) -> Pipeline {
    let last = i64::try_from(head).unwrap_or(i64::MAX).saturating_sub(1).max(0);
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("PTTL").arg(k).cmd("STRLEN").arg(k).cmd("GETRANGE").arg(k).arg(0).arg(last);
    }
    pipe
}

/// `SET key value NX`: create a key that does not exist.
pub(crate) fn set_nx(key: &[u8], value: u64) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value).arg("NX");
    cmd
}

/// Bumps the generation `KEYS[1]`, starting a missing one at `ARGV[1]` (a fresh start) first.
/// Returns the new generation as a string: generations pass 2^53, and a Lua number (a double)
/// would round them.
pub(crate) const GENERATION_BUMP: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('INCR', KEYS[1])
return redis.call('GET', KEYS[1])
"#;

/// Raises the clear floor `KEYS[1]` to `ARGV[1]` when that is higher; returns the floor in force.
pub(crate) const RAISE_FLOOR: &str = r#"
local floor = redis.call('GET', KEYS[1])
if (not floor) or tonumber(floor) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], ARGV[1])
    return ARGV[1]
end
return floor
"#;

/// `SET key token NX PX ttl_ms`: take a lock that nobody holds.
pub(crate) fn lock_acquire(key: &[u8], token: &str, ttl_ms: u64) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(token).arg("NX").arg("PX").arg(ttl_ms);
    cmd
}

/// Deletes the lock `KEYS[1]` only when it still holds our token `ARGV[1]`.
pub(crate) const LOCK_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
else
    return 0
end
"#;

/// `PUBLISH channel payload`, added to `pipe` with its reply ignored.
pub(crate) fn publish(pipe: &mut Pipeline, channel: &str, payload: Vec<u8>) {
    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
}

/// `CLUSTER SLOTS`.
pub(crate) fn cluster_slots() -> Cmd {
    redis::cmd("CLUSTER").arg("SLOTS").clone()
}

/// `INFO section`.
pub(crate) fn info(section: &str) -> Cmd {
    redis::cmd("INFO").arg(section).clone()
}

/// `PING`.
pub(crate) fn ping() -> Cmd {
    redis::cmd("PING")
}

/// `DBSIZE`.
pub(crate) fn dbsize() -> Cmd {
    redis::cmd("DBSIZE")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(stale_until: u64) -> Write {
        Write::Set { envelope: Bytes::from_static(b"x"), stale_until }
    }

    fn words(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    #[test]
    fn a_write_sets_until_stale_or_deletes() {
        assert_eq!(words(&write(b"k", &set(30), 20)), ["SET", "k", "x", "PX", "10"]);
        assert_eq!(words(&write(b"k", &set(10), 20)), ["DEL", "k"], "expired: deleted");
        assert_eq!(words(&write(b"k", &set(20), 20)), ["DEL", "k"], "expires now: deleted");
        assert_eq!(words(&write(b"k", &Write::Remove, 20)), ["DEL", "k"]);
        assert!(set(20).expired_at(20) && !set(21).expired_at(20) && !Write::Remove.expired_at(0));
    }

    #[test]
    fn describe_asks_three_things_per_key() {
        let pipe = describe(&[b"a".to_vec(), b"b".to_vec()], 40);
        let cmds: Vec<Vec<String>> = pipe.cmd_iter().map(words).collect();
        assert_eq!(cmds.len(), 6);
        assert_eq!(cmds[2], ["GETRANGE", "a", "0", "39"]);
        assert_eq!(cmds[3], ["PTTL", "b"]);
    }
}
