//! The Redis ACL a service's user needs for this crate: the commands it sends and the key and
//! channel patterns of its prefixes, in one place (extend [`COMMANDS`] when a part of the crate
//! starts sending a command).
//!
//! ```
//! use tier_redis::acl;
//! let rules = acl::rules(&["app:users:", "tier-gen:", "tier-lock:", "tier-log:invalidations"], &[]);
//! // ACL SETUSER app on >secret <rules...>
//! assert_eq!(rules[..3], ["resetkeys", "~app:users:*", "~tier-gen:*"]);
//! assert!(rules.contains(&"~tier-log:invalidations*".to_string()));
//! assert!(rules.contains(&"+get".to_string()) && rules.contains(&"+cluster|slots".to_string()));
//! ```
//!
//! Tested with a user that has exactly these rules (`tests/acl.rs`, standalone and Cluster):
//! the tier, generations, lock and backplane work; a user without one of them gets errors that
//! say which (the server names the command; the tier adds the key pattern it needs). Not in the
//! list: `AUTH` (always allowed), `CLIENT SETINFO` (sent by redis-rs at connect, its refusal is
//! ignored), `SELECT` (only when the URL names a database other than 0: add `+select`), and
//! what client-side caching ([`track`](crate::RedisBackplaneBuilder::track)) adds: `+hello`
//! and `+client|tracking` (without them it falls back to the backplane alone, with one
//! warning); in a Cluster it also asks each master its role (`info`, in the list; without it
//! a master that steps down in a manual failover is noticed at the next topology read only).

use crate::keys::scan_pattern;

/// Every command the crate's parts send, as ACL rule names (`+name`), including those its
/// scripts call (Redis checks a script's calls against the user's rules too):
/// - [`RedisTier`](crate::RedisTier): reads (`get`, `mget`), the write path — the
///   compare-and-set script (`evalsha`, `eval` when the server answers `NOSCRIPT`; inside:
///   `getrange`, `set`, `del`), the retime script of an expiry or a renewal (`getrange`,
///   `setrange`, `pexpire`, `set`) — `clear` (`scan`, `unlink`), the server figures of `stats()`
///   (`info`, `dbsize`: without them the figures stay 0 and the eviction policy is not
///   checked), the per-master probes (`ping`);
/// - a Cluster's topology, for the client and the per-master breakers (`cluster|slots`);
/// - [`RedisGenerations`](crate::RedisGenerations): `mget`, `set` (`NX GET`: a fresh start),
///   the bump script (`exists`, `set`, `incr`), the clear floor (`get`, the max script);
/// - [`RedisLock`](crate::RedisLock): `set` with `NX PX`, and the compare-and-delete script
///   (`evalsha`, `script|load` when the server does not know it yet; inside: `get`, `del`);
/// - [`RedisBackplane`](crate::RedisBackplane): the stream (`xadd`, `xread`, `xrange`,
///   `xinfo|stream`) and its epoch key (`set` `NX GET`, `get`). Its keys — the stream key and
///   its epoch key, which starts with it — go in the key patterns: pass the stream key as one of the
///   `key_prefixes` of [`rules`].
pub const COMMANDS: &[&str] = &[
    "get",
    "mget",
    "set",
    "del",
    "getrange",
    "setrange",
    "pexpire",
    "scan",
    "unlink",
    "info",
    "dbsize",
    "ping",
    "cluster|slots",
    "incr",
    "exists",
    "evalsha",
    "eval",
    "script|load",
    "xadd",
    "xread",
    "xrange",
    "xinfo|stream",
];

/// What [`RedisInspector`](crate::RedisInspector) (the `tier redis` command) sends besides
/// [`COMMANDS`]: TTLs, sizes and envelope headers of a listing.
pub const INSPECT_COMMANDS: &[&str] = &["pttl", "strlen", "getrange"];

/// The `ACL SETUSER` rules of a user restricted to the keys under `key_prefixes` (each one's
/// glob characters escaped, then `*`) and to the pub/sub `channels` (escaped, exact), allowed
/// [`COMMANDS`] and nothing else: `resetkeys ~p1* … resetchannels &c1 … -@all +get …`.
pub fn rules(key_prefixes: &[&str], channels: &[&str]) -> Vec<String> {
    rules_with(key_prefixes, channels, COMMANDS)
}

/// [`rules`] with these commands.
pub fn rules_with(key_prefixes: &[&str], channels: &[&str], commands: &[&str]) -> Vec<String> {
    let mut out = vec!["resetkeys".to_string()];
    for p in key_prefixes {
        out.push(format!("~{}", String::from_utf8_lossy(&scan_pattern(p.as_bytes()))));
    }
    out.push("resetchannels".into());
    for c in channels {
        let mut pattern = scan_pattern(c.as_bytes());
        pattern.pop(); // exact: no trailing `*`
        out.push(format!("&{}", String::from_utf8_lossy(&pattern)));
    }
    out.push("-@all".into());
    out.extend(commands.iter().map(|c| format!("+{c}")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_escaped() {
        let r = rules(&["a*b:"], &["ch[1]"]);
        assert_eq!(r[..4], ["resetkeys", "~a\\*b:*", "resetchannels", "&ch\\[1\\]"]);
        assert_eq!(r[4], "-@all");
        assert_eq!(r.len(), 5 + COMMANDS.len());
        assert_eq!(rules_with(&[], &[], &["get"]), ["resetkeys", "resetchannels", "-@all", "+get"]);
    }
}
