//! Backfill: which tiers above a fresh hit get a copy of it (each tier's backfill policy and
//! size limit), and when the copies are written (before the answer, or in the background and
//! shed under load). A copy never lives longer than its source (`lifetime.rs`), and is written
//! only if no insert or invalidation of the key came in between (`writes.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::hierarchy::Hierarchy;
use super::options::CacheValue;
use super::rule::Found;
use super::tiers::{Level, TierSet};
use crate::entry::Entry;
use crate::policy::BackfillPolicy;

/// Does `level` admit a copy of an entry of `size` bytes under `key` (its backfill policy, which
/// counts the hit for [`BackfillPolicy::OnHits`], and its size limit)?
fn admits(level: &Level, key: &[u8], size: u32) -> bool {
    let policy = level.policy();
    let admit = match policy.backfill {
        BackfillPolicy::Always => true,
        BackfillPolicy::Never => false,
        BackfillPolicy::MaxSize(max) => size <= max,
        BackfillPolicy::OnHits(n) => level.frequency().is_some_and(|f| f.increment(key) >= n),
    };
    admit && policy.max_value_size.is_none_or(|m| size <= m)
}

impl<V: CacheValue> Hierarchy<V> {
    /// Copy a fresh entry found in `found.level` into the tiers above it, per their policies.
    pub async fn backfill(self: &Arc<Self>, key: &[u8], found: &Found<V>, skip: TierSet) {
        if found.level == 0 {
            return;
        }
        let mut writes = Vec::new();
        for (j, level) in self.tiers().iter().take(found.level) {
            if skip.contains(j) || !level.enabled() || !admits(level, key, found.entry.size) {
                continue;
            }
            match self.entries().copy_of(key, j, found) {
                Ok(entry) => writes.push((j, entry)),
                Err(e) => {
                    tracing::debug!(cache = %self.name(), error = %e, "backfill entry not built")
                }
            }
        }
        if writes.is_empty() {
            return;
        }
        let key = Bytes::copy_from_slice(key);
        let (from, seq) = (found.level, found.seq);
        if self.opts().sync_backfill {
            self.write_backfill(key, from, writes, seq).await;
            return;
        }
        // Load shedding: when the tiers above cannot keep up, skip backfills rather than queue
        // them without bound (the value is still answered; a later hit backfills).
        let pending = self.backfills_pending();
        if pending.fetch_add(1, Ordering::AcqRel) >= self.opts().max_pending_backfills {
            pending.fetch_sub(1, Ordering::AcqRel);
            self.metrics().backfills_shed.increment(1);
            return;
        }
        let hierarchy = self.clone();
        tokio::spawn(async move {
            hierarchy.write_backfill(key, from, writes, seq).await;
            hierarchy.backfills_pending().fetch_sub(1, Ordering::AcqRel);
        });
    }

    async fn write_backfill(&self, key: Bytes, from: usize, writes: Vec<(usize, Entry)>, seq: u64) {
        for j in self.writer().write_if_unchanged(&key, seq, writes).await {
            let (from, to) = (self.tiers().get(from).name(), self.tiers().get(j).name());
            self.metrics().backfill(from, to).increment(1);
        }
    }
}
