//! Events of the link to Redis: a call that finds the connection lost (dropped, refused, an I/O
//! error) says so once (WARN, at most once a second when it flaps, with the count held back),
//! and the first call that is answered after it says the connection is back (INFO). redis-rs
//! reconnects by itself (standalone: `ConnectionManager`; Cluster: per node); these events are
//! what an operator sees of it. A timeout of ours is not a loss (the call was slow).

use std::sync::atomic::{AtomicBool, Ordering};

use tier_core::spi::EventLimit;

/// Whether the link is known lost, and the limit of its "lost" events.
#[derive(Default)]
pub(super) struct Link {
    lost: AtomicBool,
    said: EventLimit,
}

impl Link {
    /// A call was answered (an error reply is an answer).
    pub fn answered(&self) {
        if self.lost.load(Ordering::Relaxed) && self.lost.swap(false, Ordering::Relaxed) {
            tracing::info!(target: "tier", "the connection to Redis is back");
        }
    }

    /// A call failed with `e`.
    pub fn failed(&self, op: &str, e: &redis::RedisError) {
        let lost = e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal();
        if !lost {
            if matches!(e.kind(), redis::ErrorKind::Server(_)) {
                self.answered();
            }
            return;
        }
        if self.lost.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(suppressed) = self.said.admit() {
            let error = crate::error::RedisCause::new(e.clone());
            tracing::warn!(target: "tier", op, error = %error, suppressed, "the connection to Redis was lost; reconnecting");
        }
    }
}
