//! Client-side caching as a second source of invalidations: a RESP3 connection of its own per
//! tracked cache, with `CLIENT TRACKING ON BCAST PREFIX <the tier's prefix>`, so that Redis
//! tells this instance of every change of a key under the prefix — by anyone, also another
//! application writing the same keys — and the key is dropped from the instance's local tiers.
//!
//! Why not redis-rs's own client-side caching (`cache-aio`): it keeps values in a cache of its
//! own inside the connection (a second L1 beside ours, with its own size and policy), answers
//! reads from it, and does not tell its user which keys were invalidated — nothing for the
//! hierarchy's L1 and disk tier to act on, and no proof of delivery for the lease. This module
//! only needs the invalidation pushes, which redis-rs's push sender
//! (`AsyncConnectionConfig::set_push_sender`) hands over as they are read, in order with the
//! replies of the same connection.
//!
//! Invariants:
//! - Every push of a key under the prefix becomes `Invalidate { what: Written { key,
//!   created_at }, position: None }` for the tracked cache: with `created_at = u64::MAX` (drop
//!   whatever local copy there is) unless this instance wrote the key itself lately (see
//!   `crate::own`) *and* a read-back of the key's envelope header shows that write is still
//!   what Redis holds — then `created_at` is that write's minus 1, so that only copies older
//!   than it are dropped and the fresh copy the write put in L1 stays. When unsure (no record,
//!   the header says otherwise, the read-back fails) the copy is dropped.
//! - The pushes that arrive together are applied together: the own keys among them are read
//!   back in one pipeline (a batch write of 10 000 keys costs one round trip per batch of
//!   pushes read, not one per key).
//! - A `FLUSHDB` / `FLUSHALL` push (no keys) is a `Gap`: local entries stale, never fresh.
//! - Proof of delivery: a `PING` every [`PING_EVERY`] on the tracking connection; its reply
//!   comes after every push sent before it (one connection, in order), and the pushes read
//!   before the reply are applied before the proof is given. The backplane's lease takes the
//!   minimum of the stream's proof and every tracker's (`Shared::confirm`): an entry is fresh
//!   only while both sources are proven.
//! - A lost connection (an error reply, a timeout, redis-rs's disconnection push): no proof
//!   from then on (the lease lapses within δ), then reconnect with backoff
//!   ([`MIN_BACKOFF`] → [`MAX_BACKOFF`], ±50 % jitter), counted. Once tracking is on again, a
//!   `Gap` (what changed meanwhile is unknown: tracking cannot replay) and proofs again.
//! - A server that refuses `HELLO 3` or `CLIENT TRACKING` (an older Redis, a RESP-compatible
//!   server, an ACL without the command) turns tracking off for good: one warning, the lease
//!   goes by the stream alone, no retry loop.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, PushInfo, PushKind, RedisError, ServerErrorKind, Value};
use tier_core::spi::{now_ms, BackplaneEvent, Invalidation};
use tokio::sync::mpsc::UnboundedReceiver;

use super::shared::{Shared, SourceProof};
use crate::metrics::{
    TRACKING_CONNECTED, TRACKING_ERRORS, TRACKING_INVALIDATIONS, TRACKING_RECONNECTS,
};
use crate::tier::RedisTier;

/// How often delivery is proven on a tracking connection (a `PING`).
pub(crate) const PING_EVERY: Duration = Duration::from_millis(20);
/// First pause before making a lost tracking connection again.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A cache whose keys in `tier` are tracked.
#[derive(Clone)]
pub(super) struct Tracked {
    pub(super) cache: String,
    pub(super) tier: RedisTier,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("cache", &self.cache)
            .field("prefix", &String::from_utf8_lossy(self.tier.prefix()))
            .finish()
    }
}

/// Why a tracking connection could not be made.
pub(super) enum Setup {
    /// The server refused `HELLO 3` or `CLIENT TRACKING`: it will not do it.
    Refused(RedisError),
    /// Not reached, timed out, lost: try again later.
    Failed(RedisError),
}

/// A tracking connection with tracking on, and its pushes.
pub(super) struct Session {
    conn: MultiplexedConnection,
    pushes: UnboundedReceiver<PushInfo>,
}

/// Does `e` say that the server will not do it (rather than that it was not reached)?
fn refuses(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::RESP3NotSupported => true,
        ErrorKind::Server(kind) => !matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
        ),
        _ => false,
    }
}

/// Make a RESP3 connection (`HELLO 3`) to the tier's server and turn tracking on for its
/// prefix (`CLIENT TRACKING ON BCAST [PREFIX p]`).
pub(super) async fn open(tracked: &Tracked) -> Result<Session, Setup> {
    let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
    let conn = tracked.tier.connection();
    let classify = |e: RedisError| if refuses(&e) { Setup::Refused(e) } else { Setup::Failed(e) };
    let mut c = match conn.resp3_dedicated(tx).await {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(classify(e)),
        None => {
            return Err(Setup::Refused(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "client-side caching needs a standalone server (tracking is per Cluster node)",
            ))))
        }
    };
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("TRACKING").arg("ON").arg("BCAST");
    if !tracked.tier.prefix().is_empty() {
        cmd.arg("PREFIX").arg(tracked.tier.prefix());
    }
    match tokio::time::timeout(conn.op_timeout(), cmd.query_async::<()>(&mut c)).await {
        Ok(Ok(())) => Ok(Session { conn: c, pushes }),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(Setup::Failed(timed_out("CLIENT TRACKING"))),
    }
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out on the tracking connection"),
    ))
}

/// `d` ±50 %.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

/// What a push asks of the loop.
enum Flow {
    Go,
    Lost,
}

/// Follow the tracked cache's invalidations: `first` is the session made at build (if any),
/// else one is made here (with a gap once it is, as after every loss).
pub(super) async fn run(
    shared: Arc<Shared>,
    tracked: Tracked,
    proof: Arc<SourceProof>,
    first: Option<Session>,
) {
    let cache = tracked.cache.clone();
    let mut session = first;
    let mut backoff = MIN_BACKOFF;
    let mut lost_once = false;
    loop {
        let mut s = match session.take() {
            Some(s) => s,
            None => match open(&tracked).await {
                Ok(s) => {
                    if lost_once {
                        metrics::counter!(TRACKING_RECONNECTS, "cache" => cache.clone())
                            .increment(1);
                        tracing::info!(cache = %cache, "client-side caching connection back: local entries from before are treated as suspect");
                    }
                    // Tracking cannot replay what changed while it was not on.
                    shared.emit(BackplaneEvent::Gap);
                    s
                }
                Err(Setup::Refused(e)) => {
                    refused(&shared, &cache, &proof, &e);
                    if lost_once {
                        // What changed while it was down is unknown, and the lease now goes
                        // by the stream alone.
                        shared.emit(BackplaneEvent::Gap);
                    }
                    return;
                }
                Err(Setup::Failed(e)) => {
                    metrics::counter!(TRACKING_ERRORS, "cache" => cache.clone(), "kind" => "connect")
                        .increment(1);
                    tracing::debug!(cache = %cache, error = %e, "client-side caching connection not made; retrying in about {backoff:?}");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        backoff = MIN_BACKOFF;
        metrics::gauge!(TRACKING_CONNECTED, "cache" => cache.clone()).set(1.0);
        let why = follow(&shared, &tracked, &proof, &mut s).await;
        metrics::gauge!(TRACKING_CONNECTED, "cache" => cache.clone()).set(0.0);
        metrics::counter!(TRACKING_ERRORS, "cache" => cache.clone(), "kind" => "lost").increment(1);
        tracing::warn!(cache = %cache, reason = %why, "client-side caching connection lost: local entries are not fresh until it is back");
        lost_once = true;
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The server refused tracking: the lease goes by the stream alone, said once.
pub(super) fn refused(shared: &Shared, cache: &str, proof: &SourceProof, e: &RedisError) {
    proof.turn_off();
    shared.confirm();
    metrics::counter!(TRACKING_ERRORS, "cache" => cache.to_string(), "kind" => "refused")
        .increment(1);
    metrics::gauge!(TRACKING_CONNECTED, "cache" => cache.to_string()).set(0.0);
    tracing::warn!(cache = %cache, error = %crate::error::RedisCause::from(e.clone()), "the Redis server refuses client-side caching (HELLO 3 / CLIENT TRACKING): invalidations come from the backplane alone");
}

/// Apply pushes and prove delivery until the connection is lost; returns why.
async fn follow(
    shared: &Shared,
    tracked: &Tracked,
    proof: &SourceProof,
    s: &mut Session,
) -> String {
    let bound = tracked.tier.connection().op_timeout();
    let mut keys = Vec::new();
    loop {
        let sent_at = now_ms();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(bound, ping.query_async::<Value>(&mut s.conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("PING failed: {}", crate::error::RedisCause::from(e)),
            Err(_) => return format!("PING timed out after {bound:?}"),
        }
        // Every push sent before the reply is in the channel now.
        let mut flow = Flow::Go;
        while let Ok(push) = s.pushes.try_recv() {
            flow = flow.and(collect(shared, tracked, push, &mut keys));
        }
        apply(shared, tracked, &mut keys).await;
        if let Flow::Lost = flow {
            return "the connection was closed".into();
        }
        proof.proven(sent_at);
        shared.confirm();
        let next = tokio::time::Instant::now() + PING_EVERY;
        loop {
            tokio::select! {
                push = s.pushes.recv() => {
                    let Some(push) = push else { return "the connection was dropped".into() };
                    // This push and whatever came with it, applied together (one read-back).
                    let mut flow = collect(shared, tracked, push, &mut keys);
                    while let Ok(push) = s.pushes.try_recv() {
                        flow = flow.and(collect(shared, tracked, push, &mut keys));
                    }
                    apply(shared, tracked, &mut keys).await;
                    if let Flow::Lost = flow {
                        return "the connection was closed".into();
                    }
                }
                _ = tokio::time::sleep_until(next) => break,
            }
        }
    }
}

impl Flow {
    fn and(self, other: Flow) -> Flow {
        match (self, other) {
            (Flow::Go, Flow::Go) => Flow::Go,
            _ => Flow::Lost,
        }
    }
}

/// Add the keys of `push` under the tier's prefix (without it) to `keys`; a flush is a gap at
/// once.
fn collect(shared: &Shared, tracked: &Tracked, push: PushInfo, keys: &mut Vec<Bytes>) -> Flow {
    let prefix = tracked.tier.prefix();
    let mut add = |k: &[u8]| {
        if let Some(key) = k.strip_prefix(prefix) {
            keys.push(Bytes::copy_from_slice(key));
        }
    };
    match push.kind {
        PushKind::Disconnection => return Flow::Lost,
        PushKind::Invalidate => {
            for v in push.data {
                match v {
                    Value::Array(ks) | Value::Set(ks) => {
                        for k in ks {
                            if let Value::BulkString(k) = k {
                                add(&k);
                            }
                        }
                    }
                    Value::BulkString(k) => add(&k),
                    Value::Nil => {
                        metrics::counter!(TRACKING_INVALIDATIONS, "cache" => tracked.cache.clone(), "source" => "flush").increment(1);
                        tracing::warn!(cache = %tracked.cache, "Redis was flushed (FLUSHDB / FLUSHALL): local entries are treated as suspect");
                        shared.emit(BackplaneEvent::Gap);
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    Flow::Go
}

/// Keys (without the prefix) that changed in Redis: drop their local copies — all of them, or
/// only those older than this instance's own write that Redis still holds (the own keys read
/// back in one pipeline). Empties `keys`.
async fn apply(shared: &Shared, tracked: &Tracked, keys: &mut Vec<Bytes>) {
    if keys.is_empty() {
        return;
    }
    let now = now_ms();
    let own = tracked.tier.own_writes();
    let written: Vec<Option<u64>> = keys.iter().map(|k| own.written(k, now)).collect();
    let mut stored: Vec<Option<u64>> = vec![None; keys.len()];
    let asked: Vec<usize> = (0..keys.len()).filter(|&i| written[i].is_some()).collect();
    if !asked.is_empty() {
        let mut pipe = redis::pipe();
        for &i in &asked {
            pipe.cmd("GETRANGE").arg(tracked.tier.redis_key(&keys[i])).arg(0).arg(15);
        }
        let conn = tracked.tier.connection();
        match conn.query_pipe::<Vec<Vec<u8>>>("tracking read-back", &pipe).await {
            Ok(heads) => {
                for (&i, head) in asked.iter().zip(heads) {
                    stored[i] = parse_created_at(&head);
                }
            }
            Err(e) => {
                metrics::counter!(TRACKING_ERRORS, "cache" => tracked.cache.clone(), "kind" => "read_back").increment(1);
                tracing::debug!(cache = %tracked.cache, error = %e, "own writes could not be read back; their local copies are dropped");
            }
        }
    }
    let (mut mine, mut other) = (0u64, 0u64);
    for ((key, written), stored) in keys.drain(..).zip(written).zip(stored) {
        let created_at = match (written, stored) {
            (Some(w), Some(s)) if w == s => {
                mine += 1;
                w.saturating_sub(1)
            }
            _ => {
                other += 1;
                u64::MAX
            }
        };
        shared.emit(BackplaneEvent::Invalidate {
            cache: tracked.cache.clone(),
            what: Invalidation::Written { key, created_at },
            position: None,
        });
    }
    let counter = |source: &'static str, n: u64| {
        if n > 0 {
            metrics::counter!(TRACKING_INVALIDATIONS, "cache" => tracked.cache.clone(), "source" => source).increment(n);
        }
    };
    counter("own", mine);
    counter("other", other);
}

fn parse_created_at(head: &[u8]) -> Option<u64> {
    if head.len() != 16 || !head.starts_with(b"TIE1") {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&head[8..16]);
    Some(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_created_at_from_a_header_only() {
        let mut head = b"TIE1".to_vec();
        head.extend_from_slice(&[0; 4]);
        head.extend_from_slice(&1_234_567u64.to_le_bytes());
        assert_eq!(parse_created_at(&head), Some(1_234_567));
        assert_eq!(parse_created_at(b""), None, "no key");
        assert_eq!(parse_created_at(b"hello, raw bytes"), None, "not an envelope");
        assert_eq!(parse_created_at(&head[..15]), None, "too short");
    }

    #[test]
    fn jitter_stays_within_half() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150), "{d:?}");
        }
    }

    #[test]
    fn refusals_are_told_from_failures() {
        let noperm = RedisError::from((ErrorKind::Server(ServerErrorKind::NoPerm), "NOPERM"));
        assert!(refuses(&noperm));
        let unknown =
            RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "unknown"));
        assert!(refuses(&unknown));
        let loading = RedisError::from((ErrorKind::Server(ServerErrorKind::BusyLoading), "L"));
        assert!(!refuses(&loading));
        assert!(!refuses(&timed_out("PING")));
    }
}
