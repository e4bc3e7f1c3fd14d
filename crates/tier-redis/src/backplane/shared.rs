//! What a [`RedisBackplane`](super::RedisBackplane) handle and its reader share: the stream's
//! keys, this instance's id, delivery to subscribers and hooks, the counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tier_core::spi::{BackplaneEvent, Invalidation};
use tokio::sync::broadcast;

use super::log::{LogKeys, Position, StreamId};
use crate::metrics::{BACKPLANE_ERRORS, BACKPLANE_MESSAGES};
use crate::wire::WireMessage;

/// Something in this crate that must see backplane events before the hierarchy does
/// (the generation cache).
pub(crate) trait EventHook: Send + Sync {
    fn on_event(&self, event: &BackplaneEvent);
}

/// What the backplane handle and its reader share.
pub(super) struct Shared {
    pub(super) keys: LogKeys,
    pub(super) node_id: String,
    pub(super) tx: broadcast::Sender<BackplaneEvent>,
    pub(super) hooks: Mutex<Vec<Weak<dyn EventHook>>>,
    pub(super) reconnects: AtomicU64,
    pub(super) gaps: AtomicU64,
    /// The last sequence number this instance published.
    pub(super) seq: AtomicU64,
    /// The log's epoch as the reader last saw it (empty: not known yet).
    pub(super) epoch: Mutex<String>,
    /// The proofs of delivery of each source (the stream, each tracker) and what was last
    /// told (see [`Proofs`]).
    pub(super) proofs: Proofs,
}

/// The lease's proof combines every source of invalidations: a `Confirmed { sent_at_ms }` is
/// emitted only for an instant that *every* source in use has proven (the minimum), so a
/// tracking connection that is lost holds the lease back even while the stream reads on, and
/// the reverse.
#[derive(Default)]
pub(super) struct Proofs {
    /// The stream reader's last proof (Unix ms the proving `XREAD` was sent; 0: none yet).
    stream: AtomicU64,
    /// Each tracker's proof.
    trackers: Mutex<Vec<Arc<SourceProof>>>,
    /// The last instant emitted (only a later one is emitted again).
    told: AtomicU64,
}

/// The proof of delivery of one tracking connection.
#[derive(Default)]
pub(crate) struct SourceProof {
    /// Unix ms of the last proving `PING` (0: none yet).
    at: AtomicU64,
    /// Out of the lease: the server refused tracking, this source is not in use.
    off: AtomicBool,
}

impl SourceProof {
    /// Everything the server sent before a reply to a command sent at `sent_at_ms` was
    /// delivered.
    pub(crate) fn proven(&self, sent_at_ms: u64) {
        self.at.fetch_max(sent_at_ms, Ordering::AcqRel);
    }

    /// This source is not used (the server refused it): the lease goes by the others.
    pub(crate) fn turn_off(&self) {
        self.off.store(true, Ordering::Release);
    }
}

impl Shared {
    pub(super) fn emit(&self, event: BackplaneEvent) {
        {
            let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
            hooks.retain(|h| match h.upgrade() {
                Some(h) => {
                    h.on_event(&event);
                    true
                }
                None => false,
            });
        }
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    /// Add a source of invalidations whose proofs the lease needs from now on.
    pub(super) fn add_source(&self) -> Arc<SourceProof> {
        let proof = Arc::new(SourceProof::default());
        self.proofs.trackers.lock().unwrap_or_else(|p| p.into_inner()).push(proof.clone());
        proof
    }

    /// Stop counting `proof` in the lease (its source is gone: a Cluster master that left the
    /// topology); what the others proved may be told now.
    pub(super) fn remove_source(&self, proof: &Arc<SourceProof>) {
        self.proofs
            .trackers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|t| !Arc::ptr_eq(t, proof));
        self.confirm();
    }

    /// The stream reader proved delivery up to `sent_at_ms`: tell the lease what every source
    /// proved.
    pub(super) fn stream_proven(&self, sent_at_ms: u64) {
        self.proofs.stream.fetch_max(sent_at_ms, Ordering::AcqRel);
        self.confirm();
    }

    /// Emit `Confirmed` for the latest instant every source in use has proven, if it is later
    /// than the last one emitted.
    pub(super) fn confirm(&self) {
        let mut at = self.proofs.stream.load(Ordering::Acquire);
        for t in self.proofs.trackers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if !t.off.load(Ordering::Acquire) {
                at = at.min(t.at.load(Ordering::Acquire));
            }
        }
        if at > 0 && self.proofs.told.fetch_max(at, Ordering::AcqRel) < at {
            self.emit(BackplaneEvent::Confirmed { sent_at_ms: at });
        }
    }

    pub(super) fn error(&self, kind: &'static str) {
        metrics::counter!(BACKPLANE_ERRORS, "channel" => self.keys.stream.clone(), "kind" => kind)
            .increment(1);
    }

    pub(super) fn epoch(&self) -> String {
        self.epoch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_epoch(&self, epoch: &str) {
        let mut e = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        if *e != epoch {
            *e = epoch.to_string();
        }
    }

    pub(super) fn reconnected(&self) {
        let n = self.reconnects.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(stream = %self.keys.stream, reconnects = n, "backplane reader back; resumed from its last delivered entry");
    }

    pub(super) fn gap(&self, why: &str) {
        self.gaps.fetch_add(1, Ordering::AcqRel);
        self.error("gap");
        tracing::warn!(stream = %self.keys.stream, "{why}; local tiers are treated as suspect");
        self.emit(BackplaneEvent::Gap);
    }

    /// The message of entry `id`, if another instance sent it and it can be read.
    pub(super) fn decode(
        &self,
        id: StreamId,
        message: Option<&[u8]>,
    ) -> Option<(String, Invalidation)> {
        let msg = self.read(id, message)?;
        (msg.node != self.node_id).then(|| (msg.cache, msg.what.into_invalidation()))
    }

    /// The message of entry `id`, whoever sent it, if it can be read (else counted and said).
    fn read(&self, id: StreamId, message: Option<&[u8]>) -> Option<WireMessage> {
        let Some(bytes) = message else {
            self.error("decode");
            tracing::warn!(stream = %self.keys.stream, %id, "backplane entry without a message ignored");
            return None;
        };
        match rmp_serde::from_slice(bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                self.error("decode");
                tracing::warn!(stream = %self.keys.stream, %id, error = %e, "undecodable backplane message ignored");
                None
            }
        }
    }

    /// Deliver entry `id` of `epoch` to the subscribers: another instance's message, or our
    /// own read back ([`BackplaneEvent::Passed`]: the applied position moves past it).
    pub(super) fn deliver(&self, id: StreamId, message: Option<&[u8]>, epoch: &str) {
        let Some(msg) = self.read(id, message) else { return };
        let position = Position { id, epoch: epoch.to_string() }.to_log();
        if msg.node == self.node_id {
            self.emit(BackplaneEvent::Passed { position });
            return;
        }
        metrics::counter!(BACKPLANE_MESSAGES, "channel" => self.keys.stream.clone(), "direction" => "received")
            .increment(1);
        let (cache, what) = (msg.cache, msg.what.into_invalidation());
        self.emit(BackplaneEvent::Invalidate { cache, what, position: Some(position) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let (tx, _) = broadcast::channel(64);
        Shared {
            keys: LogKeys::new("s"),
            node_id: "n".into(),
            tx,
            hooks: Mutex::new(Vec::new()),
            reconnects: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            epoch: Mutex::new(String::new()),
            proofs: Proofs::default(),
        }
    }

    fn proofs(rx: &mut broadcast::Receiver<BackplaneEvent>) -> Vec<u64> {
        let mut at = Vec::new();
        while let Ok(e) = rx.try_recv() {
            if let BackplaneEvent::Confirmed { sent_at_ms } = e {
                at.push(sent_at_ms);
            }
        }
        at
    }

    #[test]
    fn a_proof_is_told_only_for_an_instant_every_source_proved() {
        let s = shared();
        let mut rx = s.tx.subscribe();
        s.stream_proven(10);
        assert_eq!(proofs(&mut rx), [10], "the stream alone");
        let tracker = s.add_source();
        s.stream_proven(20);
        assert!(proofs(&mut rx).is_empty(), "the tracker proved nothing yet");
        tracker.proven(15);
        s.confirm();
        assert_eq!(proofs(&mut rx), [15], "the older of the two");
        tracker.proven(30);
        s.confirm();
        assert_eq!(proofs(&mut rx), [20], "now the stream's is the older");
        s.stream_proven(40);
        assert_eq!(proofs(&mut rx), [30]);
        // A lost tracker proves nothing more: the stream alone does not move the lease on.
        s.stream_proven(50);
        s.stream_proven(60);
        assert!(proofs(&mut rx).is_empty());
        // A tracker the server refused is out of the lease.
        tracker.turn_off();
        s.confirm();
        assert_eq!(proofs(&mut rx), [60]);
    }
}
