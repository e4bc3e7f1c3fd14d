//! Background tasks of a hierarchy: the gauge task, and the backplane listener that applies
//! other instances' invalidations to the local tiers and treats a gap in what it heard as
//! making them suspect. Both end when the last clone of the cache is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::hierarchy::Hierarchy;
use super::options::CacheValue;
use crate::backplane::{BackplaneEvent, Invalidation, ReconnectPolicy};
use crate::time::now_ms;

/// Start the background tasks of `hierarchy` when inside a tokio runtime.
pub(super) fn start<V: CacheValue>(hierarchy: &Arc<Hierarchy<V>>, gauge_interval: Duration) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::debug!(cache = %hierarchy.name(), "built outside a tokio runtime: no background tasks");
        return;
    };
    let weak = Arc::downgrade(hierarchy);
    let mut tasks = vec![handle.spawn(report_gauges(weak.clone(), gauge_interval))];
    tasks.extend(listen(&handle, hierarchy, weak));
    hierarchy.keep_tasks(tasks);
}

async fn report_gauges<V>(weak: Weak<Hierarchy<V>>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hierarchy) = weak.upgrade() else { return };
        hierarchy.report_gauges();
    }
}

/// The backplane listener, when there is a backplane.
fn listen<V: CacheValue>(
    handle: &tokio::runtime::Handle,
    hierarchy: &Hierarchy<V>,
    weak: Weak<Hierarchy<V>>,
) -> Option<JoinHandle<()>> {
    let mut rx = hierarchy.backplane()?.subscribe();
    Some(handle.spawn(async move {
        loop {
            let event = rx.recv().await;
            let Some(hierarchy) = weak.upgrade() else { return };
            match event {
                Ok(BackplaneEvent::Invalidate { cache, what, .. }) if cache == hierarchy.name() => {
                    hierarchy.apply_remote(what).await;
                }
                Ok(BackplaneEvent::Invalidate { .. } | BackplaneEvent::Confirmed { .. }) => {}
                Ok(BackplaneEvent::Gap) => hierarchy.recover("backplane gap").await,
                Err(RecvError::Lagged(n)) => {
                    let why = format!("{n} backplane messages dropped (slow consumer)");
                    hierarchy.recover(&why).await
                }
                Err(RecvError::Closed) => return,
            }
        }
    }))
}

impl<V: CacheValue> Hierarchy<V> {
    /// Apply another instance's invalidation to this instance's local tiers.
    pub(super) async fn apply_remote(&self, what: Invalidation) {
        let kind = what.kind();
        match what {
            Invalidation::Key(key) => {
                if let Some(e) = self.writer().remove_everywhere(&key, true).await {
                    tracing::warn!(cache = %self.name(), error = %e, "remote invalidation failed on a local tier");
                }
            }
            Invalidation::Written { key, .. } => {
                if let Some(e) = self.writer().remove_everywhere(&key, true).await {
                    tracing::warn!(cache = %self.name(), error = %e, "remote insert notice failed on a local tier");
                }
            }
            Invalidation::Tag(tag) => self.generations().remote_bump(&tag, None),
            Invalidation::Namespace(v) => {
                self.keys().set_version(v);
                self.stripes().bump_all();
            }
            Invalidation::Clear { .. } => {
                if let Some(e) = self.writer().clear_everywhere(true).await {
                    tracing::warn!(cache = %self.name(), error = %e, "remote clear failed on a local tier");
                }
            }
        }
        self.metrics().invalidation(kind, "backplane");
    }

    /// Messages may have been missed: the local tiers are suspect.
    async fn recover(&self, why: &str) {
        self.generations().forget_cached();
        match self.opts().reconnect {
            ReconnectPolicy::Clear => {
                tracing::warn!(cache = %self.name(), reason = why, "backplane gap: clearing local tiers");
                if let Some(e) = self.writer().clear_everywhere(true).await {
                    tracing::warn!(cache = %self.name(), error = %e, "clearing local tiers failed");
                }
            }
            ReconnectPolicy::MarkStale | ReconnectPolicy::CatchUp => {
                tracing::warn!(cache = %self.name(), reason = why, "backplane gap: local entries marked stale");
                self.stripes().bump_all();
                self.fleet().mark_local_suspect(now_ms());
            }
        }
        self.metrics().invalidation("clear", "backplane");
    }
}
