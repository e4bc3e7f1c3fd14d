//! One tracking connection (to the standalone server or to one Cluster master): making it,
//! following its pushes, proving delivery, reconnecting; and the cache's [`Links`] (see the
//! parent module for the invariants).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, PushInfo, PushKind, RedisError, ServerErrorKind, Value};
use tier_core::spi::{now_ms, BackplaneEvent, Invalidation};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::backplane::shared::{Shared, SourceProof};
use crate::connection::Route;
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
pub(crate) struct Tracked {
    pub(crate) cache: String,
    pub(crate) tier: RedisTier,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("cache", &self.cache)
            .field("prefix", &String::from_utf8_lossy(self.tier.prefix()))
            .finish()
    }
}

/// The tracking connections of one cache (one, or one per Cluster master): each one's proof
/// of delivery and whether it is up, which `tier_redis_tracking_connected` sums up (1 only
/// while every one is).
pub(super) struct Links {
    cache: String,
    links: Mutex<HashMap<Route, (Arc<SourceProof>, bool)>>,
}

impl Links {
    pub(super) fn new(cache: String) -> Arc<Self> {
        Arc::new(Self { cache, links: Mutex::default() })
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<Route, (Arc<SourceProof>, bool)>> {
        // Proof handles and flags only: a poisoned lock still holds consistent ones.
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `route` from now on: its proof, which the lease needs.
    pub(super) fn add(&self, shared: &Shared, route: &Route) -> Arc<SourceProof> {
        let proof = shared.add_source();
        let mut links = self.links();
        links.insert(route.clone(), (proof.clone(), false));
        self.publish(&links);
        proof
    }

    /// No connection to `route` any more (a master that left the topology): out of the lease.
    pub(super) fn remove(&self, shared: &Shared, route: &Route) {
        let removed = {
            let mut links = self.links();
            let removed = links.remove(route);
            self.publish(&links);
            removed
        };
        if let Some((proof, _)) = removed {
            shared.remove_source(&proof);
        }
    }

    fn set_up(&self, route: &Route, up: bool) {
        let mut links = self.links();
        if let Some(link) = links.get_mut(route) {
            link.1 = up;
        }
        self.publish(&links);
    }

    fn publish(&self, links: &HashMap<Route, (Arc<SourceProof>, bool)>) {
        let up = !links.is_empty() && links.values().all(|(_, up)| *up);
        metrics::gauge!(TRACKING_CONNECTED, "cache" => self.cache.clone()).set(if up {
            1.0
        } else {
            0.0
        });
    }

    /// The server refused tracking: every connection of the cache is out of the lease, which
    /// goes by the stream alone; said once.
    pub(super) fn refuse(&self, shared: &Shared, e: &RedisError) {
        {
            let mut links = self.links();
            for (proof, up) in links.values_mut() {
                proof.turn_off();
                *up = false;
            }
            metrics::gauge!(TRACKING_CONNECTED, "cache" => self.cache.clone()).set(0.0);
        }
        shared.confirm();
        metrics::counter!(TRACKING_ERRORS, "cache" => self.cache.clone(), "kind" => "refused")
            .increment(1);
        tracing::warn!(cache = %self.cache, error = %crate::error::RedisCause::from(e.clone()), "the Redis server refuses client-side caching (HELLO 3 / CLIENT TRACKING): invalidations come from the backplane alone");
    }
}

/// One tracking connection: the cache, the node (the standalone server or a Cluster master),
/// its proof and the cache's links.
pub(super) struct Link {
    pub(super) tracked: Tracked,
    pub(super) route: Route,
    pub(super) proof: Arc<SourceProof>,
    pub(super) links: Arc<Links>,
}

impl Link {
    /// The node, as logs show it.
    fn node(&self) -> String {
        self.route.address().unwrap_or_else(|| "server".into())
    }
}

/// The server refused tracking (`run` ends only so); `was_up`: the connection had been up
/// before (what changed since it was lost is unknown).
pub(super) struct Refusal {
    pub(super) error: RedisError,
    pub(super) was_up: bool,
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
    /// A Cluster master whose role is asked every [`ROLE_EVERY`]th proof (false: standalone,
    /// or a server that does not answer `INFO`).
    role_checks: bool,
}

/// On a Cluster master, every this many proofs is an `INFO replication` instead of a `PING`
/// (its reply proves delivery the same way): a master that stepped down (a manual failover, in
/// which it stays up) is noticed within this many [`PING_EVERY`], not at the next topology read.
pub(crate) const ROLE_EVERY: u32 = 5;

/// What `INFO replication` says of the node: `Some(true)` a master, `Some(false)` not, `None`
/// it did not say (an error reply: an ACL without `info`, a server without the section).
fn says_master(reply: &Value) -> Option<bool> {
    let text = match reply {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => text.clone(),
        _ => return None,
    };
    text.lines().find_map(|l| l.trim().strip_prefix("role:")).map(|role| role == "master")
}

/// The node's role, within `bound`: `Ok(None)` when it does not say.
async fn ask_role(
    conn: &mut MultiplexedConnection,
    bound: Duration,
) -> Result<Option<bool>, RedisError> {
    let info = redis::cmd("INFO").arg("replication").to_owned();
    match tokio::time::timeout(bound, info.query_async::<Value>(conn)).await {
        Ok(Ok(reply)) => Ok(says_master(&reply)),
        Ok(Err(e)) if matches!(e.kind(), ErrorKind::Server(_)) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(timed_out("INFO replication")),
    }
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

/// Make a RESP3 connection (`HELLO 3`) to the tier's node at `route` and turn tracking on for
/// its prefix (`CLIENT TRACKING ON BCAST [PREFIX p]`).
pub(super) async fn open(tracked: &Tracked, route: &Route) -> Result<Session, Setup> {
    let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
    let conn = tracked.tier.connection();
    let classify = |e: RedisError| if refuses(&e) { Setup::Refused(e) } else { Setup::Failed(e) };
    let mut c = match conn.resp3_dedicated(route, tx).await {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(classify(e)),
        None => {
            return Err(Setup::Failed(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "no connection settings for this node",
            ))))
        }
    };
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("TRACKING").arg("ON").arg("BCAST");
    if !tracked.tier.prefix().is_empty() {
        cmd.arg("PREFIX").arg(tracked.tier.prefix());
    }
    match tokio::time::timeout(conn.op_timeout(), cmd.query_async::<()>(&mut c)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(classify(e)),
        Err(_) => return Err(Setup::Failed(timed_out("CLIENT TRACKING"))),
    }
    // A Cluster node that is no master (any more) tells nothing of the writes to its slots:
    // not a source of proofs (the topology read takes it out).
    let role_checks = match route {
        Route::Server => false,
        Route::Master { .. } => match ask_role(&mut c, conn.op_timeout()).await {
            Ok(Some(true)) => true,
            Ok(Some(false)) => {
                return Err(Setup::Failed(RedisError::from((
                    ErrorKind::Client,
                    "this Cluster node is not a master (any more)",
                ))))
            }
            Ok(None) => false,
            Err(e) => return Err(Setup::Failed(e)),
        },
    };
    Ok(Session { conn: c, pushes, role_checks })
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

/// Follow the invalidations of one tracking connection: `first` is the session made at build
/// (if any), else one is made here (with a gap once it is, as after every loss). Each loss is
/// told on `lost` (the Cluster's topology is read again soon). Ends only when the server
/// refuses tracking.
pub(super) async fn run(
    shared: Arc<Shared>,
    link: Link,
    first: Option<Session>,
    lost: Option<UnboundedSender<Route>>,
) -> Refusal {
    let cache = link.tracked.cache.clone();
    let node = link.node();
    let mut session = first;
    let mut backoff = MIN_BACKOFF;
    let mut lost_once = false;
    loop {
        let mut s = match session.take() {
            Some(s) => s,
            None => match open(&link.tracked, &link.route).await {
                Ok(s) => {
                    if lost_once {
                        metrics::counter!(TRACKING_RECONNECTS, "cache" => cache.clone())
                            .increment(1);
                        tracing::info!(cache = %cache, node = %node, "client-side caching connection back: local entries from before are treated as suspect");
                    }
                    // Tracking cannot replay what changed while it was not on.
                    shared.emit(BackplaneEvent::Gap);
                    s
                }
                Err(Setup::Refused(error)) => return Refusal { error, was_up: lost_once },
                Err(Setup::Failed(e)) => {
                    metrics::counter!(TRACKING_ERRORS, "cache" => cache.clone(), "kind" => "connect")
                        .increment(1);
                    tracing::debug!(cache = %cache, node = %node, error = %e, "client-side caching connection not made; retrying in about {backoff:?}");
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        backoff = MIN_BACKOFF;
        link.links.set_up(&link.route, true);
        let why = follow(&shared, &link, &mut s).await;
        link.links.set_up(&link.route, false);
        metrics::counter!(TRACKING_ERRORS, "cache" => cache.clone(), "kind" => "lost").increment(1);
        tracing::warn!(cache = %cache, node = %node, reason = %why, "client-side caching connection lost: local entries are not fresh until it is back");
        lost_once = true;
        if let Some(lost) = &lost {
            // The supervisor is gone only with this task.
            let _ = lost.send(link.route.clone());
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Apply pushes and prove delivery until the connection is lost; returns why.
async fn follow(shared: &Shared, link: &Link, s: &mut Session) -> String {
    let (tracked, proof) = (&link.tracked, &link.proof);
    let bound = tracked.tier.connection().op_timeout();
    let mut keys = Vec::new();
    let mut round = 0u32;
    loop {
        let sent_at = now_ms();
        round = round.wrapping_add(1);
        if s.role_checks && round.is_multiple_of(ROLE_EVERY) {
            // The reply proves delivery as a PING's does.
            match ask_role(&mut s.conn, bound).await {
                Ok(Some(true)) => {}
                Ok(Some(false)) => return "the node is no longer a master (a failover)".into(),
                Ok(None) => s.role_checks = false,
                Err(e) => {
                    return format!("INFO failed: {}", crate::error::RedisCause::from(e));
                }
            }
        } else {
            let ping = redis::cmd("PING");
            match tokio::time::timeout(bound, ping.query_async::<Value>(&mut s.conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("PING failed: {}", crate::error::RedisCause::from(e)),
                Err(_) => return format!("PING timed out after {bound:?}"),
            }
        }
        // Every push sent before the reply is in the channel now.
        let mut flow = Flow::Go;
        while let Ok(push) = s.pushes.try_recv() {
            flow = flow.and(collect(shared, tracked, push, &mut keys));
        }
        apply(shared, link, &mut keys).await;
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
                    apply(shared, link, &mut keys).await;
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
/// back in one pipeline, on the node that told: the keys live there). Empties `keys`.
async fn apply(shared: &Shared, link: &Link, keys: &mut Vec<Bytes>) {
    let tracked = &link.tracked;
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
        match conn.pipe_on("tracking read-back", &link.route, &pipe).await {
            Ok(heads) => {
                for (&i, head) in asked.iter().zip(heads) {
                    if let Value::BulkString(head) = head {
                        stored[i] = parse_created_at(&head);
                    }
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
    fn the_role_is_read_from_info_replication() {
        let info = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        assert_eq!(
            says_master(&info("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n")),
            Some(true)
        );
        assert_eq!(
            says_master(&info("# Replication\r\nrole:slave\r\nmaster_host:h\r\n")),
            Some(false)
        );
        let verbatim = Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: "role:master\r\n".into(),
        };
        assert_eq!(says_master(&verbatim), Some(true));
        assert_eq!(says_master(&info("")), None);
        assert_eq!(says_master(&Value::Nil), None);
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
