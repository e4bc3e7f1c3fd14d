//! Checks of sealed entries (features `test-util` + `encryption`) for any byte tier, through a
//! whole [`Cache`]: every byte of a sealed envelope altered in turn in the tier's storage, and
//! the entry read back.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::Cache;

/// What [`altered_bytes_are_misses`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tampering {
    /// Bytes altered whose entry was a miss (the origin was asked).
    pub misses: usize,
    /// Bytes of the times (offsets 16..32, outside the seal by design) altered: each served
    /// the right value or was a miss, never another value.
    pub times: usize,
    /// Of those, how many served the value: more than none shows that the reads did see the
    /// bytes as altered in the tier (an unreadable record would make every one a miss).
    pub times_served: usize,
}

/// Read `key` through `cache` with a loader that fails: `Some(value)` when a tier served it,
/// `None` for a miss (the loader ran; its failure is not cached, so a read writes nothing and
/// the next read sees the tier as the test left it).
pub async fn read_through(cache: &Cache<String>, key: &[u8]) -> Result<Option<String>, String> {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let answer = cache
        .get_or_load(key, move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Err::<Option<String>, _>(std::io::Error::other("the origin is not asked in this test"))
        })
        .await;
    match (answer, calls.load(Ordering::SeqCst)) {
        (Err(_), 1) => Ok(None),
        (Ok(Some(v)), 0) => Ok(Some(v.as_ref().clone())),
        (answer, calls) => Err(format!("unexpected answer {answer:?} after {calls} loads")),
    }
}

/// For each byte of `sealed` (the envelope the tier holds for `key`, whose value is `value`):
/// store a copy with that byte altered through `store` (behind the cache's back: a file
/// rewritten, a `SET` in Redis), then read `key` through `cache` ([`read_through`]). Every byte
/// but the times must make a miss; an altered time may serve `value` (never another value).
/// `cache` must have no tier above the one `store` writes (an L1 would answer first).
pub async fn altered_bytes_are_misses<F, Fut>(
    cache: &Cache<String>,
    key: &[u8],
    sealed: &[u8],
    value: &str,
    mut store: F,
) -> Result<Tampering, String>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut seen = Tampering { misses: 0, times: 0, times_served: 0 };
    for at in 0..sealed.len() {
        let mut altered = sealed.to_vec();
        altered[at] ^= 0x01;
        store(altered).await;
        let got = read_through(cache, key).await?;
        if (16..32).contains(&at) {
            if got.as_deref().is_some_and(|v| v != value) {
                return Err(format!("time byte {at} altered served {got:?}"));
            }
            seen.times += 1;
            seen.times_served += usize::from(got.is_some());
        } else if got.is_some() {
            return Err(format!("byte {at} of {} altered, and {got:?} was served", sealed.len()));
        } else {
            seen.misses += 1;
        }
    }
    Ok(seen)
}
