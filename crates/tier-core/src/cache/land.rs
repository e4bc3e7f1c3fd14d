//! The load of one key and what its answer becomes: the tags known before it stamped (and the
//! tag clock read, for tags learnt late), the loader called with its context, then — a value
//! written with the lifetimes its call or loader set; *not modified*: the previous value kept
//! and its life renewed where it is stored (times rewritten, no value bytes moved); *don't
//! cache*: answered, nothing stored; tags learnt late: stamped after the load and kept only
//! when no `invalidate_tag` ran in between (the tag clock did not move).

use std::sync::Arc;
use std::time::Duration;

use super::context::{Answer, LoadContext, Loaded, Previous};
use super::hierarchy::Hierarchy;
use super::lifetime::new_meta;
use super::load::{not_modified_without_value, Job};
use super::loader::Loader;
use super::lookup::Counting;
use super::options::{check_tags, CacheValue, CallSettings, Lifetimes};
use super::rule::Found;
use super::tags::{self, tag_clock};
use crate::envelope::{TagStamp, MAX_VALIDATOR_LEN};
use crate::error::CacheError;

/// What a loader said of keeping its value: tags learnt late, and whether to cache it.
struct Late {
    tags: Vec<Arc<str>>,
    validator: Option<bytes::Bytes>,
    cache: bool,
}

/// Stamps read before a load: those of the call's tags, and the tag clock when read.
struct Before {
    stamps: Option<Arc<[TagStamp]>>,
    clock: Option<u64>,
}

impl<V: CacheValue> Hierarchy<V> {
    /// Stamp, call the origin with its context, land its answer (or fail).
    pub(super) async fn load_one(&self, job: &Job<V>, loader: Loader<V>, call: CallSettings) {
        // Above every floor raised before the load started (a clear or expiry in this very
        // millisecond came first).
        let started = self.fleet().created_now();
        let before = self.stamp_before(&call.tags, loader.wants_context).await;
        let previous = match &job.previous {
            Some(found) => Some(found.clone()),
            // A refresh from the first tier's fast path did not keep the entry: look it up for
            // the loader's context (quietly: it is not a caller's read).
            None if loader.wants_context => {
                let walk = self.walk_from(job.key(), job.skip, Counting::Quiet, 0).await;
                walk.fresh.or(walk.stale)
            }
            None => None,
        };
        let shown = previous.as_ref().map(|f| Previous::of(f, self.tiers().get(f.level).name()));
        let ctx = LoadContext::new(job.key().clone(), shown);
        let (outcome, cost) = match self.behind().and_then(|b| b.pending_value(job.key())) {
            // Read-your-writes: a write-behind of the key is still owed to the origin.
            Some(queued) => (Ok(Loaded::value(queued)), std::time::Duration::ZERO),
            None => self.call_origin((loader.call)(ctx), call.timeout).await,
        };
        let loaded = match outcome {
            Ok(loaded) => loaded,
            Err(e) => return self.fail(job, e).await,
        };
        let before = match before {
            Ok(before) => before,
            Err(e) => {
                // Answered, not cached: without its stamps the value could outlive an
                // invalidation of its tags.
                tracing::debug!(cache = %self.name(), error = %e, "tags not stamped: the loaded value is not cached");
                return job.publisher.publish(match loaded.answer {
                    Answer::Value(v) => Ok(v.map(Arc::new)),
                    Answer::NotModified => {
                        previous.map(|p| p.value).ok_or_else(not_modified_without_value)
                    }
                });
            }
        };
        let Loaded { answer, fresh, stale, tags, validator, cache } = loaded;
        let set = call.lifetimes.overridden_by(Lifetimes { fresh, stale });
        match answer {
            Answer::NotModified => self.renew(job, previous, set, started).await,
            Answer::Value(value) => {
                let value = value.map(Arc::new);
                let late = Late { tags, validator, cache };
                self.land_value(job, value, late, set, before, &call, (started, cost)).await
            }
        }
    }

    /// The stamps of the call's tags, and the tag clock when the loader may learn tags late.
    async fn stamp_before(
        &self,
        tags: &[Arc<str>],
        with_clock: bool,
    ) -> Result<Before, crate::error::CacheError> {
        let guard = &self.guards().generations;
        if !with_clock {
            let stamps = tags::stamp(self.generations(), guard, tags).await?;
            return Ok(Before { stamps, clock: None });
        }
        let mut names = tags.to_vec();
        names.push(Arc::from(tag_clock(self.name())));
        let mut all = tags::stamp(self.generations(), guard, &names).await?.map(|s| s.to_vec());
        let clock = all.as_mut().and_then(Vec::pop).map(|s| s.generation);
        let stamps = all.filter(|s| !s.is_empty()).map(Arc::from);
        Ok(Before { stamps, clock })
    }

    /// Land a loaded value: answered, and written with its lifetimes unless it is not to be
    /// cached (said so, zero lifetimes, late tags that cannot be verified).
    #[allow(clippy::too_many_arguments)]
    async fn land_value(
        &self,
        job: &Job<V>,
        value: Option<Arc<V>>,
        loaded: Late,
        set: Lifetimes,
        before: Before,
        call: &CallSettings,
        (started, cost): (u64, Duration),
    ) {
        if !loaded.cache || set.is_nothing() {
            return job.publisher.publish(Ok(value));
        }
        if let Some(v) = loaded.validator.as_ref().filter(|v| v.len() > MAX_VALIDATOR_LEN) {
            return job.publisher.publish(Err(CacheError::InvalidInput(format!(
                "a validator of {} bytes, at most {MAX_VALIDATOR_LEN} allowed",
                v.len()
            ))));
        }
        let stamps = if loaded.tags.is_empty() {
            before.stamps
        } else {
            if let Err(e) = check_tags(&loaded.tags, call.tags.len()) {
                return job.publisher.publish(Err(e));
            }
            match self.stamp_late(&loaded.tags, before.clock).await {
                Some(late) => {
                    let mut all = before.stamps.map(|s| s.to_vec()).unwrap_or_default();
                    all.extend(late);
                    Some(Arc::from(all))
                }
                None => return job.publisher.publish(Ok(value)),
            }
        };
        let mut meta = new_meta(started, value.is_none(), stamps, cost);
        meta.validator = loaded.validator;
        let (entries, wrote_local) = self.land_local(job, value, &meta, set).await;
        self.land_rest(job, entries, wrote_local, started).await;
    }

    /// The stamps of tags learnt after the load, then the tag clock: `None` (do not cache)
    /// when the clock moved since `clock` was read before the load (an `invalidate_tag` ran
    /// meanwhile — of these tags or not, it cannot be told) or could not be read. The clock is
    /// read after the tags: `invalidate_tag` moves it before the tag, so a tag's new generation
    /// seen here means the clock's new one is seen too.
    async fn stamp_late(&self, late: &[Arc<str>], clock: Option<u64>) -> Option<Vec<TagStamp>> {
        let guard = &self.guards().generations;
        let clock_tag: [Arc<str>; 1] = [Arc::from(tag_clock(self.name()))];
        let stamped = match tags::stamp(self.generations(), guard, late).await {
            Ok(stamps) => tags::stamp(self.generations(), guard, &clock_tag)
                .await
                .map(|after| (stamps, after.and_then(|a| a.first().map(|s| s.generation)))),
            Err(e) => Err(e),
        };
        let (stamps, after) = match stamped {
            Ok((Some(stamps), after)) => (stamps.to_vec(), after),
            Ok((None, _)) => return None,
            Err(e) => {
                tracing::debug!(cache = %self.name(), error = %e, "late tags not stamped: the loaded value is not cached");
                return None;
            }
        };
        if clock.is_none() || after != clock {
            tracing::debug!(cache = %self.name(), "a tag was invalidated during the load: its value, tagged late, is not cached");
            return None;
        }
        Some(stamps)
    }

    /// "Not modified": keep the previous value and renew its life where it is stored (its
    /// times rewritten, created anew at `renewed_at`), in-process tiers first, then answer,
    /// then the others.
    async fn renew(
        &self,
        job: &Job<V>,
        previous: Option<Found<V>>,
        set: Lifetimes,
        renewed_at: u64,
    ) {
        let Some(previous) = previous else {
            return job.publisher.publish(Err(not_modified_without_value()));
        };
        if set.is_nothing() {
            return job.publisher.publish(Ok(previous.value));
        }
        let meta = &previous.entry.meta;
        let (local, remote): (Vec<_>, Vec<_>) = self
            .entries()
            .renewals(meta, renewed_at, job.skip, set)
            .into_iter()
            .partition(|(j, _)| self.tiers().get(*j).holds_objects());
        let seq = job.publisher.seq();
        self.writer().retime_if_unchanged(job.key(), seq, local).await;
        job.publisher.publish(Ok(previous.value.clone()));
        self.writer().retime_if_unchanged(job.key(), seq, remote).await;
    }
}
