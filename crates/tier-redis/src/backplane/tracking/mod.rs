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
//! - Redis Cluster: a node tells only of changes of the keys it holds, so there is one
//!   tracking connection per master, each a source of proofs of its own (see `masters`): the
//!   lease needs every master's, and a loss of any of them is a loss as above. What is said
//!   here of "the" connection holds for each.

mod masters;
mod session;

use std::sync::Arc;

use tier_core::spi::BackplaneEvent;
use tokio::task::JoinHandle;

use crate::backplane::shared::Shared;
use crate::connection::Route;
pub(super) use session::Tracked;
use session::{open, run, Link, Links, Setup};

/// Start client-side caching of `tracked`: its first connection (every master's, in a
/// Cluster) is tried here, at build, so that a server that refuses is said at once (`None`
/// then: the backplane alone); the task that follows it otherwise.
pub(super) async fn start(shared: &Arc<Shared>, tracked: Tracked) -> Option<JoinHandle<()>> {
    let links = Links::new(tracked.cache.clone());
    if tracked.tier.connection().is_cluster() {
        return masters::start(shared, tracked, links).await;
    }
    let route = Route::Server;
    let proof = links.add(shared, &route);
    let first = if tracked.tier.connection().is_connected() {
        match open(&tracked, &route).await {
            Ok(s) => Some(s),
            Err(Setup::Refused(e)) => {
                links.refuse(shared, &e);
                return None;
            }
            Err(Setup::Failed(_)) => None,
        }
    } else {
        None
    };
    let shared = shared.clone();
    let link = Link { tracked, route, proof, links: links.clone() };
    Some(tokio::spawn(async move {
        let refusal = run(shared.clone(), link, first, None).await;
        links.refuse(&shared, &refusal.error);
        if refusal.was_up {
            // What changed while it was down is unknown, and the lease now goes by the
            // stream alone.
            shared.emit(BackplaneEvent::Gap);
        }
    }))
}
