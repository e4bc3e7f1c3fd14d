//! Tag stamps: what an entry is stamped with when it is written (a load stamps *before* its
//! loader runs, so a tag invalidated during the load makes the value born invalid), and whether
//! an entry's stamps are still current when it is read.

use std::sync::Arc;

use super::fleet::Guard;
use super::rule::TagVerdict;
use crate::envelope::{Meta, TagStamp};
use crate::error::CacheError;
use crate::generations::GenerationStore;

/// The generation-store tag that holds a namespace's version.
pub(super) fn namespace_tag(cache: &str) -> String {
    format!("\u{0}ns:{cache}")
}

/// The generation-store tag that is the cache's *tag clock*: every `invalidate_tag` moves it
/// on before the tag itself, so that a load which learns its tags only after it ran can tell
/// whether any tag was invalidated meanwhile (`land.rs`).
pub(super) fn tag_clock(cache: &str) -> String {
    format!("{}{cache}", crate::generations::TAG_CLOCK_PREFIX)
}

/// The name under which a cache's expiry floor is kept in the generation store (beside its
/// clear floor, which is kept under the cache's own name).
pub(super) fn expiry_floor_name(cache: &str) -> String {
    format!("{cache}\u{0}expire")
}

/// A generation-store failure as the caller sees it.
pub(super) fn store_failed(source: crate::error::TierError) -> CacheError {
    CacheError::Tier { tier: "generations".into(), source }
}

/// A store that answered another number of generations than it was asked for.
fn wrong_count(asked: usize, got: usize) -> crate::error::TierError {
    crate::error::TierError::new(
        crate::error::TierErrorKind::Other,
        format!("asked for {asked} tag generations, the store answered {got}"),
    )
}

/// The stamps of a value tagged `tags`: each tag with its current generation, created when
/// missing (`None` when untagged).
pub(super) async fn stamp(
    store: &dyn GenerationStore,
    guard: &Guard,
    tags: &[Arc<str>],
) -> Result<Option<Arc<[TagStamp]>>, CacheError> {
    if tags.is_empty() {
        return Ok(None);
    }
    let generations = guard.run(store.stamp(tags)).await.map_err(store_failed)?;
    if generations.len() != tags.len() {
        return Err(store_failed(wrong_count(tags.len(), generations.len())));
    }
    Ok(Some(
        tags.iter()
            .zip(generations)
            .map(|(t, g)| TagStamp { tag: t.clone(), generation: g })
            .collect(),
    ))
}

/// Are the stamps of `meta` still their tags' current generations? A store that cannot say
/// (down, slow, its breaker open) makes the verdict `Unknown`: the entry is at most stale.
pub(super) async fn verdict(
    store: &dyn GenerationStore,
    guard: &Guard,
    meta: &Meta,
    cache: &str,
) -> TagVerdict {
    let tags = meta.tags();
    if tags.is_empty() {
        return TagVerdict::Untagged;
    }
    let names: Vec<Arc<str>> = tags.iter().map(|t| t.tag.clone()).collect();
    match guard.run(store.current(&names)).await {
        Ok(current) if current.len() != tags.len() => {
            let e = wrong_count(tags.len(), current.len());
            tracing::debug!(cache, error = %e, "tag generations unusable");
            TagVerdict::Unknown
        }
        Ok(current)
            if tags.iter().zip(&current).any(|(t, g)| g.is_some_and(|g| g != t.generation)) =>
        {
            TagVerdict::Outdated
        }
        Ok(current) if current.iter().all(Option::is_some) => TagVerdict::Current,
        Ok(_) => TagVerdict::Unknown,
        Err(e) => {
            tracing::debug!(cache, error = %e, "tag generations unavailable");
            TagVerdict::Unknown
        }
    }
}

/// Is the namespace version `key` was built with still the store's? Asked of entries of a
/// shared tier while the lease has lapsed (the backplane did not prove delivery within δ): a
/// namespace move it did not deliver leaves this instance building keys of the old namespace,
/// whose entries in a shared tier are otherwise served as fresh. `Untagged` for a key not built
/// by `keys`; `Current` or `Outdated` with the store's version (to adopt) when the store
/// answered; `Unknown` when it cannot say (missing, down).
pub(super) async fn namespace_verdict(
    store: &dyn GenerationStore,
    guard: &Guard,
    keys: &crate::key::KeyBuilder,
    key: &[u8],
    cache: &str,
) -> (TagVerdict, Option<u64>) {
    let Some(built) = keys.version_of(key) else { return (TagVerdict::Untagged, None) };
    let tag: [Arc<str>; 1] = [Arc::from(namespace_tag(cache))];
    match guard.run(store.current(&tag)).await.map(|v| v.first().copied().flatten()) {
        Ok(Some(v)) if v == built => (TagVerdict::Current, Some(v)),
        Ok(Some(v)) if v > built => (TagVerdict::Outdated, Some(v)),
        Ok(_) => (TagVerdict::Unknown, None),
        Err(e) => {
            tracing::debug!(cache, error = %e, "namespace version unavailable");
            (TagVerdict::Unknown, None)
        }
    }
}
