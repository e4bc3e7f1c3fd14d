//! Every Redis command this crate sends, built in one place (callers run them through
//! [`RedisConnection`](crate::RedisConnection)).
//!
//! The write path is [`write`]: the one command that stores or removes an entry, used by
//! `insert`, `insert_many`, `remove` and the background retry alike — a compare-and-set script
//! ([`WRITE_SCRIPT`]) so that no write, however late it arrives, replaces a newer entry.

use std::sync::LazyLock;

use bytes::Bytes;
use redis::{Cmd, Pipeline};
use tier_core::spi::{Codec, Meta, Retime};

/// How long a removal's tombstone stays in Redis (and the longest a pending retry may wait):
/// a write that started before the removal and arrives within this time is refused by it.
pub(crate) const TOMBSTONE_LIFETIME_MS: u64 = 60_000;

/// What a write does to one key.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// Store `envelope` until `stale_until` (Unix ms), if it is newer than what the key holds:
    /// its `created_at` later than the stored one's, or equal and `wins_tie` (an insert).
    Set { envelope: Bytes, created_at: u64, stale_until: u64, wins_tie: bool },
    /// Remove the key at `at` (Unix ms): store a tombstone created then (it wins a tie), for
    /// [`TOMBSTONE_LIFETIME_MS`].
    Remove { at: u64 },
}

impl Write {
    /// Until when (Unix ms) this write's value or tombstone would live in Redis.
    pub(crate) fn until(&self) -> u64 {
        match self {
            Self::Set { stale_until, .. } => *stale_until,
            Self::Remove { at } => at.saturating_add(TOMBSTONE_LIFETIME_MS),
        }
    }

    /// Has this write's value (or tombstone) passed its end at `now`?
    pub(crate) fn expired_at(&self, now: u64) -> bool {
        self.until() <= now
    }

    /// Is this write older than a tombstone's lifetime at `now`? Then it must not be retried:
    /// a removal after it may have left no tombstone by now to refuse it.
    pub(crate) fn too_old_at(&self, now: u64) -> bool {
        self.created_at().saturating_add(TOMBSTONE_LIFETIME_MS) <= now
    }

    /// The instant the write stands for (its value's `created_at`, the removal's instant).
    pub(crate) fn created_at(&self) -> u64 {
        match self {
            Self::Set { created_at, .. } => *created_at,
            Self::Remove { at } => *at,
        }
    }
}

/// The compare-and-set write of one entry (`KEYS[1]`). `ARGV`: the envelope, its
/// `created_at`, `1` when a tie wins (an insert, a tombstone), the `PX` in ms (`0`: the value
/// has expired — only remove an older entry). What the key holds is compared by the
/// `created_at` in its envelope header (bytes 8..16, little endian; read with `GETRANGE`, so a
/// large value is not copied); a key that holds no envelope is overwritten. Returns 1 when
/// written (or removed), 0 when the stored entry is newer. Every number fits a Lua double
/// exactly (Unix ms < 2^53).
pub(crate) const WRITE_SCRIPT: &str = r#"
local head = redis.call('GETRANGE', KEYS[1], 0, 15)
if string.len(head) == 16 and string.sub(head, 1, 4) == 'TIE1' then
  local stored = 0
  for i = 16, 9, -1 do stored = stored * 256 + string.byte(head, i) end
  local new = tonumber(ARGV[2])
  if new < stored or (new == stored and ARGV[3] ~= '1') then return 0 end
end
if ARGV[4] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
end
return 1
"#;

static WRITE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(WRITE_SCRIPT));

/// The retime of one entry (`KEYS[1]`, see `tier_core::spi::Retime`): its header's times
/// rewritten in place with `SETRANGE` (the value is neither read nor sent; `SETRANGE` keeps
/// the key's TTL), consistent with [`WRITE_SCRIPT`]: only the entry the retime is meant for
/// is touched, so a late retime never changes a newer write.
///
/// `ARGV[1] == 'e'` — an expiry: `ARGV` 2 `at`, 3 the clear floor, 4 `at` as 8 bytes (little
/// endian), 5 the cut, 6 the cut as 8 bytes, 7 a tombstone created at `at`, 8 its `PX`. An
/// envelope created after the floor and at or before `at` (not a tombstone) is marked created
/// at `at` and fresh at most until the cut (1); anything else newer is left alone (0); a key
/// holding nothing usable — nothing, bytes that are not an envelope, an older tombstone, an
/// entry at or below the floor — gets the tombstone, so that a write older than the expiry is
/// refused (0).
///
/// `ARGV[1] == 'r'` — a renewal: `ARGV` 2 the revalidated entry's `created_at` as 8 bytes, 3
/// the new `created_at`, `fresh_until` and `stale_until` (24 bytes), 4 the new `PX`. Only an
/// envelope (not a tombstone) with exactly that `created_at` is renewed (1), else nothing (0).
/// Numbers compared in Lua are Unix ms (< 2^53, exact in a double); the times written are
/// bytes made in Rust (a `fresh_until` of `u64::MAX` is not a Lua number).
pub(crate) const RETIME_SCRIPT: &str = r#"
local head = redis.call('GETRANGE', KEYS[1], 0, 39)
local envelope = string.len(head) == 40 and string.sub(head, 1, 4) == 'TIE1'
local function le(from, to)
  local n = 0
  for i = to, from, -1 do n = n * 256 + string.byte(head, i) end
  return n
end
local tombstone = envelope and math.floor(string.byte(head, 5) / 8) % 2 == 1
local created = envelope and le(9, 16) or 0
if ARGV[1] == 'e' then
  local at = tonumber(ARGV[2])
  if envelope and not tombstone and created > tonumber(ARGV[3]) then
    if created > at then return 0 end
    redis.call('SETRANGE', KEYS[1], 8, ARGV[4])
    if le(17, 24) > tonumber(ARGV[5]) then redis.call('SETRANGE', KEYS[1], 16, ARGV[6]) end
    return 1
  end
  if envelope and tombstone and created >= at then return 0 end
  redis.call('SET', KEYS[1], ARGV[7], 'PX', ARGV[8])
  return 0
end
if not envelope or tombstone or string.sub(head, 9, 16) ~= ARGV[2] then return 0 end
redis.call('SETRANGE', KEYS[1], 8, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"#;

static RETIME: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RETIME_SCRIPT));

/// The longest `PX` sent: Redis refuses one whose instant overflows its clock.
const MAX_PX: u64 = 1 << 62;

/// The command that performs `how` on `key` (a Redis key, prefix included) at `now`
/// ([`RETIME_SCRIPT`]); `None` when there is nothing to send (a renewal already past its end,
/// a kind of retime this crate does not know).
pub(crate) fn retime(key: &[u8], how: &Retime, now: u64, form: ScriptForm) -> Option<Cmd> {
    let mut cmd = script(&RETIME, RETIME_SCRIPT, key, form);
    match *how {
        Retime::Expire { at, cut, floor } => {
            cmd.arg("e").arg(at).arg(floor).arg(&at.to_le_bytes()[..]);
            cmd.arg(cut).arg(&cut.to_le_bytes()[..]).arg(tombstone(at).as_ref());
            let until = at.saturating_add(TOMBSTONE_LIFETIME_MS);
            cmd.arg(until.saturating_sub(now).clamp(1, MAX_PX));
        }
        Retime::Renew { created_at, renewed_at, fresh_until, stale_until } => {
            let stale_until = stale_until.max(fresh_until);
            if stale_until <= now {
                return None;
            }
            let mut times = Vec::with_capacity(24);
            for t in [renewed_at, fresh_until, stale_until] {
                times.extend_from_slice(&t.to_le_bytes());
            }
            cmd.arg("r").arg(&created_at.to_le_bytes()[..]).arg(times);
            cmd.arg((stale_until - now).min(MAX_PX));
        }
        _ => return None,
    }
    Some(cmd)
}

/// How a script is sent: by its SHA1 (`EVALSHA`, the usual way), or with its source (`EVAL`,
/// after the server answered `NOSCRIPT`: restarted, failed over or `SCRIPT FLUSH`ed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScriptForm {
    Sha,
    Source,
}

/// A tombstone: an envelope created at `at`, flagged as a removal, with no value.
fn tombstone(at: u64) -> Bytes {
    let until = at.saturating_add(TOMBSTONE_LIFETIME_MS);
    let meta = Meta {
        created_at: at,
        fresh_until: at,
        stale_until: until,
        tombstone: true,
        ..Meta::default()
    };
    // A tagless, valueless envelope always encodes (nothing in it can be too large).
    Codec::default().encode::<()>(&meta, None).unwrap_or_default()
}

/// The command that performs `write` on `key` (a Redis key, prefix included) at `now`: the
/// compare-and-set script ([`WRITE_SCRIPT`]) with `PX (until - now)`, or with `PX 0` — remove
/// only what is older — for a value already past its end (storing it would be wrong, and
/// leaving an older value in its place too).
pub(crate) fn write(key: &[u8], write: &Write, now: u64, form: ScriptForm) -> Cmd {
    let mut cmd = script(&WRITE, WRITE_SCRIPT, key, form);
    match write {
        Write::Set { envelope, .. } => cmd.arg(envelope.as_ref()),
        Write::Remove { at } => cmd.arg(tombstone(*at).as_ref()),
    };
    let wins_tie = match write {
        Write::Set { wins_tie, .. } => *wins_tie,
        Write::Remove { .. } => true,
    };
    cmd.arg(write.created_at()).arg(if wins_tie { "1" } else { "0" });
    cmd.arg(write.until().saturating_sub(now));
    cmd
}

/// `write` for each of `writes` (keys of one slot in a Cluster), in one pipeline, replies
/// ignored.
pub(crate) fn write_pipe<'a>(
    writes: impl IntoIterator<Item = (Vec<u8>, &'a Write)>,
    now: u64,
    form: ScriptForm,
) -> Pipeline {
    let mut pipe = redis::pipe();
    for (key, w) in writes {
        pipe.add_command(write(&key, w, now, form)).ignore();
    }
    pipe
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

/// Bumps the generation `KEYS[1]`: a missing one is first set to the fresh start `ARGV[1]`
/// (so that a lost generation never restarts from 0), then `INCR`. Answers the new value as
/// the stored text: generations pass 2^53, which a Lua number (a double) cannot hold exactly.
pub(crate) const GENERATION_BUMP: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('INCR', KEYS[1])
return redis.call('GET', KEYS[1])
"#;

/// Raises the clear floor `KEYS[1]` to at least `ARGV[1]` (never lowers it); returns the floor
/// in force (Unix ms: exact as a Lua number).
pub(crate) const RAISE_FLOOR: &str = r#"
local floor = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local at = tonumber(ARGV[1])
if at > floor then
  redis.call('SET', KEYS[1], ARGV[1])
  return at
end
return floor
"#;

static BUMP: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GENERATION_BUMP));
static FLOOR: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RAISE_FLOOR));

/// `EVALSHA sha 1 key` (or `EVAL source 1 key`, see [`ScriptForm`]); arguments are added by
/// the caller.
fn script(script: &redis::Script, source: &str, key: &[u8], form: ScriptForm) -> Cmd {
    let mut cmd = match form {
        ScriptForm::Sha => {
            let mut c = redis::cmd("EVALSHA");
            c.arg(script.get_hash());
            c
        }
        ScriptForm::Source => {
            let mut c = redis::cmd("EVAL");
            c.arg(source);
            c
        }
    };
    cmd.arg(1).arg(key);
    cmd
}

/// [`GENERATION_BUMP`] of `key` with the fresh start `start`.
pub(crate) fn generation_bump(key: &[u8], start: u64, form: ScriptForm) -> Cmd {
    let mut cmd = script(&BUMP, GENERATION_BUMP, key, form);
    cmd.arg(start);
    cmd
}

/// [`RAISE_FLOOR`] of `key` to `at`.
pub(crate) fn raise_floor(key: &[u8], at: u64, form: ScriptForm) -> Cmd {
    let mut cmd = script(&FLOOR, RAISE_FLOOR, key, form);
    cmd.arg(at);
    cmd
}

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

/// `XADD stream MAXLEN ~ max_len * m payload`: append one backplane message (the stream keeps
/// about the last `max_len`).
pub(crate) fn xadd(stream: &str, max_len: usize, payload: &[u8]) -> Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("MAXLEN").arg("~").arg(max_len).arg("*").arg("m").arg(payload);
    cmd
}

/// `XREAD COUNT count STREAMS stream after`: what follows `after`, without waiting (the
/// backplane's reader polls; see its module docs for why not `BLOCK`).
pub(crate) fn xread(stream: &str, after: &str, count: usize) -> Cmd {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(count).arg("STREAMS").arg(stream).arg(after);
    cmd
}

/// `XRANGE stream (after + COUNT count`: up to `count` entries after `after` (exclusive).
pub(crate) fn xrange_after(stream: &str, after: &str, count: usize) -> Cmd {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(stream).arg(format!("({after}")).arg("+").arg("COUNT").arg(count);
    cmd
}

/// `XINFO STREAM stream`.
pub(crate) fn xinfo_stream(stream: &str) -> Cmd {
    let mut cmd = redis::cmd("XINFO");
    cmd.arg("STREAM").arg(stream);
    cmd
}

/// `SET key value NX GET`: set `key` unless it exists; answers what it held before (nil: it
/// was missing, and now holds `value`). Redis 7.0 and later.
pub(crate) fn set_nx_get(key: &[u8], value: &str) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value).arg("NX").arg("GET");
    cmd
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
        Write::Set {
            envelope: Bytes::from_static(b"x"),
            created_at: 5,
            stale_until,
            wins_tie: false,
        }
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
    fn a_write_is_the_script_until_stale_or_a_conditional_delete() {
        let sha = WRITE.get_hash().to_string();
        assert_eq!(
            words(&write(b"k", &set(30), 20, ScriptForm::Sha)),
            ["EVALSHA", &sha, "1", "k", "x", "5", "0", "10"]
        );
        assert_eq!(
            words(&write(b"k", &set(10), 20, ScriptForm::Sha))[7],
            "0",
            "expired: remove older only"
        );
        assert_eq!(words(&write(b"k", &set(20), 20, ScriptForm::Sha))[7], "0", "expires now");
        let eval = words(&write(b"k", &set(30), 20, ScriptForm::Source));
        assert_eq!((eval[0].as_str(), eval[1].as_str()), ("EVAL", WRITE_SCRIPT));
        assert!(set(20).expired_at(20) && !set(21).expired_at(20));
    }

    #[test]
    fn a_removal_is_a_tombstone_that_wins_a_tie() {
        let w = words(&write(b"k", &Write::Remove { at: 1_000 }, 1_500, ScriptForm::Sha));
        assert_eq!(w[5..], ["1000", "1", &(TOMBSTONE_LIFETIME_MS - 500).to_string()]);
        let (meta, _) =
            tier_core::spi::envelope::decode_meta(&tombstone(1_000)).expect("an envelope");
        assert!(meta.tombstone && meta.created_at == 1_000);
        assert!(Write::Remove { at: 0 }.expired_at(TOMBSTONE_LIFETIME_MS));
        let load = |created_at| Write::Set {
            envelope: Bytes::from_static(b"x"),
            created_at,
            stale_until: u64::MAX,
            wins_tie: false,
        };
        assert!(!load(1_000).too_old_at(1_000 + TOMBSTONE_LIFETIME_MS - 1));
        assert!(
            load(1_000).too_old_at(1_000 + TOMBSTONE_LIFETIME_MS),
            "a retry that old is dropped"
        );
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
