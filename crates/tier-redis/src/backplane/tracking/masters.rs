//! Client-side caching in a Redis Cluster: one tracking connection per master, following the
//! topology.
//!
//! A Cluster node tells a tracking client only of changes of the keys it holds (its slots), so
//! every master has a connection of its own with `CLIENT TRACKING ON BCAST PREFIX <prefix>`,
//! each one [`run`](super::run) as on a standalone server (proofs, reconnects with bounded
//! jittered backoff, a gap once back).
//!
//! Invariants:
//! - **Every master is tracked, or the lease waits.** Each connection is a source of proofs of
//!   its own: the lease needs every master's, so a loss of any one holds every local entry back
//!   (then a gap once it is back), as a standalone server's loss does.
//! - **The topology is followed.** The masters are read (`CLUSTER SLOTS`) every
//!   [`TOPOLOGY_EVERY`], and [`SOON_AFTER_A_LOSS`] after a connection was lost (a master that
//!   failed over). A master that appears gets a connection (with a gap once it is made: what it
//!   changed before is unknown) *before* one that left is dropped from the lease, so there is
//!   no instant at which neither proves; a master that left is dropped with a gap (its slots
//!   went elsewhere; keys that moved with them may have changed unseen). A failed read keeps
//!   the connections as they are.
//! - **A master that steps down stops proving at once.** In a manual failover the old master
//!   stays up, and so does its connection, which then tells nothing of its former slots: every
//!   [`ROLE_EVERY`](super::session::ROLE_EVERY)th proof of a master's connection is an `INFO
//!   replication`, and a node that says it is no master is lost (no proof; a connection to it
//!   is not made again while it is not a master), until the topology read drops it.
//! - **No masters known, no proof.** Until the masters are first read (a lazy connection not
//!   made yet, a failed read at build), a placeholder source that never proves holds the lease
//!   back: tracking is on nowhere, so the stream alone must not make entries fresh.
//! - **A refusal is the whole cache's.** A master that refuses tracking turns it off for the
//!   cache on every master (one warning; the backplane alone), as on a standalone server.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tier_core::spi::BackplaneEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::session::{open, run, Link, Links, Refusal, Session, Setup, Tracked};
use crate::backplane::shared::Shared;
use crate::connection::Route;

/// How often the masters are read while nothing is lost.
pub(crate) const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);
/// How soon after a lost connection the masters are read again.
pub(crate) const SOON_AFTER_A_LOSS: Duration = Duration::from_millis(100);

/// Open every master's connection now (so that a refusal is said at build: `None`, the
/// backplane alone), then follow them in a task.
pub(super) async fn start(
    shared: &Arc<Shared>,
    tracked: Tracked,
    links: Arc<Links>,
) -> Option<JoinHandle<()>> {
    let conn = tracked.tier.connection();
    let mut first = Vec::new();
    if conn.is_connected() {
        if let Ok(masters) = conn.routes().await {
            let opened = futures::future::join_all(masters.iter().map(|m| open(&tracked, m))).await;
            for (master, session) in masters.into_iter().zip(opened) {
                match session {
                    Ok(s) => first.push((master, Some(s))),
                    Err(Setup::Refused(e)) => {
                        links.refuse(shared, &e);
                        return None;
                    }
                    Err(Setup::Failed(_)) => first.push((master, None)),
                }
            }
        }
    }
    if first.is_empty() {
        links.add(shared, &UNKNOWN);
    }
    Some(tokio::spawn(follow_masters(shared.clone(), tracked, links, first)))
}

/// The placeholder of the masters not known yet (never a master's route).
const UNKNOWN: Route = Route::Server;

/// A master's connection, stopped when dropped.
struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn follow_masters(
    shared: Arc<Shared>,
    tracked: Tracked,
    links: Arc<Links>,
    first: Vec<(Route, Option<Session>)>,
) {
    let (lost_tx, mut lost_rx) = mpsc::unbounded_channel::<Route>();
    let (refused_tx, mut refused_rx) = mpsc::unbounded_channel::<Refusal>();
    let spawn = |master: Route, session: Option<Session>| {
        let link = Link {
            tracked: tracked.clone(),
            proof: links.add(&shared, &master),
            route: master,
            links: links.clone(),
        };
        let (shared, lost, refused) = (shared.clone(), lost_tx.clone(), refused_tx.clone());
        Running(tokio::spawn(async move {
            let refusal = run(shared, link, session, Some(lost)).await;
            // The supervisor is gone only with this task.
            let _ = refused.send(refusal);
        }))
    };
    let mut running: HashMap<Route, Running> = HashMap::new();
    for (master, session) in first {
        let task = spawn(master.clone(), session);
        running.insert(master, task);
    }
    let conn = tracked.tier.connection();
    let mut next =
        Instant::now() + if running.is_empty() { Duration::ZERO } else { TOPOLOGY_EVERY };
    loop {
        tokio::select! {
            Some(refusal) = refused_rx.recv() => {
                running.clear();
                links.refuse(&shared, &refusal.error);
                if refusal.was_up {
                    shared.emit(BackplaneEvent::Gap);
                }
                return;
            }
            Some(_) = lost_rx.recv() => {
                next = next.min(Instant::now() + SOON_AFTER_A_LOSS);
            }
            _ = tokio::time::sleep_until(next) => {
                match conn.routes().await {
                    Ok(masters) => {
                        for master in &masters {
                            if !running.contains_key(master) {
                                tracing::info!(cache = %tracked.cache, node = %master.address().unwrap_or_default(), "client-side caching: a new Cluster master, tracked from now on");
                                let task = spawn(master.clone(), None);
                                running.insert(master.clone(), task);
                            }
                        }
                        // Every master has its source now: the placeholder goes.
                        links.remove(&shared, &UNKNOWN);
                        let gone: Vec<Route> =
                            running.keys().filter(|r| !masters.contains(r)).cloned().collect();
                        for master in &gone {
                            running.remove(master);
                            links.remove(&shared, master);
                            tracing::info!(cache = %tracked.cache, node = %master.address().unwrap_or_default(), "client-side caching: no longer a Cluster master, not tracked any more; local entries are treated as suspect");
                        }
                        if !gone.is_empty() {
                            shared.emit(BackplaneEvent::Gap);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(cache = %tracked.cache, error = %e, "client-side caching: the Cluster's masters could not be read; tracking goes on as it is");
                    }
                }
                next = Instant::now() + TOPOLOGY_EVERY;
            }
        }
    }
}
