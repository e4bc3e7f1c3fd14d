//! Repair of a Cluster connection that stays broken.
//!
//! redis-rs's cluster client (1.x) can wedge itself: when its map of node connections is empty
//! (every node refused while it refreshed them) and a slot refresh is under way, the refresh
//! only asks the connections it has — none — and fails at once, again and again; every command
//! then fails with `ClusterConnectionNotFound` ("No connections found") until the process
//! restarts, though the nodes are back. No option of the client changes that (retries,
//! timeouts and connection attempts all act inside the loop).
//!
//! So the connection in use is watched ([`Health`]): from the first `ClusterConnectionNotFound`
//! with no success since, a task of the connection's own waits [`BROKEN_FOR`]; if the connection
//! still has not answered once, it builds a new one (the client connects to the configured
//! nodes again and reads the slots), with backoff (50 ms up to 2 s, each attempt within the
//! operation timeout), and swaps it in. One repair at a time; calls in the meantime fail fast
//! on the broken connection (`Unavailable`), as they did.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a Cluster connection may answer only `ClusterConnectionNotFound` before it is
/// rebuilt. The client's own recovery takes milliseconds once a node accepts again.
pub(super) const BROKEN_FOR: Duration = Duration::from_secs(1);

/// What the calls on a Cluster connection saw lately.
#[derive(Default)]
pub(crate) struct Health {
    /// Milliseconds (since `epoch`, plus one: 0 is "healthy") of the first
    /// `ClusterConnectionNotFound` with no answer since.
    broken_since: AtomicU64,
    epoch: OnceLock<Instant>,
    /// Told at the first failure of a broken spell.
    broke: Notify,
}

impl Health {
    fn now(&self) -> u64 {
        let epoch = *self.epoch.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// A call was answered (a reply, even an error reply of the server).
    pub(crate) fn answered(&self) {
        if self.broken_since.load(Ordering::Relaxed) != 0 {
            self.broken_since.store(0, Ordering::Relaxed);
        }
    }

    /// A call failed with `ClusterConnectionNotFound`.
    pub(crate) fn not_found(&self) {
        let now = self.now();
        if self.broken_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.broke.notify_one();
        }
    }

    /// How long it has been broken; `None` while it answers.
    fn broken_for(&self) -> Option<Duration> {
        match self.broken_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(self.now().saturating_sub(since))),
        }
    }
}

/// How one attempt to build a new connection ended.
pub(super) enum Attempt {
    /// Built and in use.
    Done,
    /// Not built (the nodes are not reachable yet).
    Failed,
    /// The connection is dropped: stop watching.
    Gone,
}

/// Watch `health` and, whenever it stays broken for [`BROKEN_FOR`], `rebuild` (again with
/// backoff, until it is done, the connection answers again, or it is gone).
pub(super) async fn watch<F, Fut>(health: Arc<Health>, mut rebuild: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    loop {
        health.broke.notified().await;
        while let Some(d) = health.broken_for() {
            if d < BROKEN_FOR {
                tokio::time::sleep(BROKEN_FOR - d).await;
                continue;
            }
            tracing::warn!(
                "the Redis Cluster connection found no node connection for {d:?}; building a new one"
            );
            let mut backoff = Duration::from_millis(50);
            loop {
                match rebuild().await {
                    Attempt::Done => {
                        health.answered();
                        tracing::info!("the Redis Cluster connection was rebuilt");
                        break;
                    }
                    Attempt::Gone => return,
                    Attempt::Failed if health.broken_for().is_none() => break,
                    Attempt::Failed => {
                        tracing::debug!("rebuilding the Redis Cluster connection failed; retrying in {backoff:?}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    }
}
