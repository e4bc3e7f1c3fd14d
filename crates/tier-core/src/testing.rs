//! Test helpers (feature `test-util`): a plain in-memory envelope tier, a wrapper that fails,
//! stalls or counts calls on command, an in-process backplane and fleet lock, an origin writer
//! that records what it is handed ([`RecordingOrigin`]), crash points ([`fault_point`]), and the
//! [`conformance`] kit that checks any tier against the `Tier` contract (and, with feature
//! `encryption`, [`sealing`]: altered sealed entries are misses in any byte tier). For tests,
//! not for production.

pub mod conformance;
mod origin;
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub mod sealing;

pub use crate::fault::fault_point;
pub use origin::RecordingOrigin;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::entry::{Entry, Lookup, Storage, Value};
use crate::error::{TierError, TierErrorKind};
use crate::tier::{Tier, TierStats};
use crate::time::now_ms;

/// An envelope tier in a `HashMap` (like a tiny Redis in process): stores bytes, classifies on read.
#[derive(Default)]
pub struct MapTier {
    name: String,
    shared: bool,
    map: Mutex<HashMap<Bytes, Bytes>>,
}

impl MapTier {
    /// A tier named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), shared: false, map: Mutex::default() }
    }

    /// A tier that says it is shared by every instance (as Redis is).
    pub fn shared(name: impl Into<String>) -> Self {
        Self { name: name.into(), shared: true, map: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Bytes>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Put raw bytes under `key` (e.g. another service's JSON).
    pub fn put_raw(&self, key: impl Into<Bytes>, bytes: impl Into<Bytes>) {
        self.lock().insert(key.into(), bytes.into());
    }

    /// The raw bytes under `key`.
    pub fn raw(&self, key: &[u8]) -> Option<Bytes> {
        self.lock().get(key).cloned()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Tier for MapTier {
    fn name(&self) -> &str {
        &self.name
    }
    fn storage(&self) -> Storage {
        Storage::Envelopes
    }
    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        let Some(bytes) = self.raw(key) else { return Ok(Lookup::Miss) };
        Ok(Entry::from_envelope(bytes)?.lookup_at(now_ms()))
    }
    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        match entry.value {
            Value::Envelope(b) => {
                self.lock().insert(key, b);
                Ok(())
            }
            Value::Object(_) => {
                Err(TierError::new(TierErrorKind::Rejected, "MapTier stores envelopes"))
            }
        }
    }
    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        self.lock().remove(key);
        Ok(())
    }
    async fn clear(&self) -> Result<(), TierError> {
        self.lock().clear();
        Ok(())
    }
    fn stats(&self) -> TierStats {
        let map = self.lock();
        TierStats {
            entries: map.len() as u64,
            bytes: map.values().map(|v| v.len() as u64).sum(),
            capacity_bytes: 0,
        }
    }
    fn is_shared(&self) -> bool {
        self.shared
    }
}

/// How a [`FaultyTier`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Pass calls through.
    None,
    /// Fail every call with this kind.
    Fail(TierErrorKind),
    /// Hang every call until [`FaultyTier::release`] (or forever).
    Stall,
}

/// Calls a [`FaultyTier`] saw.
#[derive(Debug, Default)]
pub struct CallCounts {
    /// `get` and `get_many` calls.
    pub gets: AtomicU64,
    /// `insert` and `insert_many` calls.
    pub inserts: AtomicU64,
    /// `remove` calls.
    pub removes: AtomicU64,
    /// `retime` calls (a rewrite of an entry's times: no value bytes).
    pub retimes: AtomicU64,
    /// Bytes handed to `insert` and `insert_many` (the entries' sizes).
    pub inserted_bytes: AtomicU64,
}

/// Wraps a tier; fails, stalls or passes through on command, and counts calls.
pub struct FaultyTier {
    inner: Arc<dyn Tier>,
    fault: AtomicU8,
    fail_kind: Mutex<TierErrorKind>,
    release: Notify,
    /// Calls seen (including failed and stalled ones).
    pub calls: Arc<CallCounts>,
}

/// A handle to switch a [`FaultyTier`] after it was moved into a cache.
#[derive(Clone)]
pub struct FaultHandle(Arc<FaultyTier>);

impl FaultHandle {
    /// Change the behaviour.
    pub fn set(&self, fault: Fault) {
        self.0.set(fault);
    }
    /// Wake every stalled call (they then pass through).
    pub fn release(&self) {
        self.0.release();
    }
    /// Calls seen.
    pub fn calls(&self) -> &CallCounts {
        &self.0.calls
    }
    /// `get` calls seen so far.
    pub fn gets(&self) -> u64 {
        self.0.calls.gets.load(Ordering::SeqCst)
    }
}

impl FaultyTier {
    /// Wrap `inner`, passing through.
    pub fn new(inner: impl Tier) -> Self {
        Self::from_arc(Arc::new(inner))
    }

    /// Wrap a shared tier.
    pub fn from_arc(inner: Arc<dyn Tier>) -> Self {
        Self {
            inner,
            fault: AtomicU8::new(0),
            fail_kind: Mutex::new(TierErrorKind::Unavailable),
            release: Notify::new(),
            calls: Arc::default(),
        }
    }

    /// Wrap `inner` and return the tier (to give to a cache) with a handle to control it.
    pub fn with_handle(inner: impl Tier) -> (Arc<dyn Tier>, FaultHandle) {
        let t = Arc::new(Self::new(inner));
        (t.clone(), FaultHandle(t))
    }

    /// Change the behaviour.
    pub fn set(&self, fault: Fault) {
        match fault {
            Fault::None => self.fault.store(0, Ordering::SeqCst),
            Fault::Fail(kind) => {
                *self.fail_kind.lock().unwrap_or_else(|p| p.into_inner()) = kind;
                self.fault.store(1, Ordering::SeqCst);
            }
            Fault::Stall => self.fault.store(2, Ordering::SeqCst),
        }
    }

    /// Wake every stalled call.
    pub fn release(&self) {
        self.fault.store(0, Ordering::SeqCst);
        self.release.notify_waiters();
    }

    async fn gate(&self, op: &str) -> Result<(), TierError> {
        match self.fault.load(Ordering::SeqCst) {
            1 => {
                let kind = *self.fail_kind.lock().unwrap_or_else(|p| p.into_inner());
                Err(TierError::new(kind, format!("{op} failed on purpose")))
            }
            2 => {
                let notified = self.release.notified();
                if self.fault.load(Ordering::SeqCst) == 2 {
                    notified.await;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Tier for FaultyTier {
    crate::tier::forward_tier_info!();
    async fn get(&self, key: &[u8]) -> Result<Lookup, TierError> {
        self.calls.gets.fetch_add(1, Ordering::SeqCst);
        self.gate("get").await?;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[Bytes]) -> Result<Vec<Lookup>, TierError> {
        self.calls.gets.fetch_add(1, Ordering::SeqCst);
        self.gate("get_many").await?;
        self.inner.get_many(keys).await
    }
    async fn insert(&self, key: Bytes, entry: Entry) -> Result<(), TierError> {
        self.calls.inserts.fetch_add(1, Ordering::SeqCst);
        self.calls.inserted_bytes.fetch_add(u64::from(entry.size), Ordering::SeqCst);
        self.gate("insert").await?;
        self.inner.insert(key, entry).await
    }
    async fn insert_many(&self, entries: Vec<(Bytes, Entry)>) -> Result<(), TierError> {
        self.calls.inserts.fetch_add(1, Ordering::SeqCst);
        let bytes: u64 = entries.iter().map(|(_, e)| u64::from(e.size)).sum();
        self.calls.inserted_bytes.fetch_add(bytes, Ordering::SeqCst);
        self.gate("insert_many").await?;
        self.inner.insert_many(entries).await
    }
    async fn remove(&self, key: &[u8]) -> Result<(), TierError> {
        self.calls.removes.fetch_add(1, Ordering::SeqCst);
        self.gate("remove").await?;
        self.inner.remove(key).await
    }
    async fn clear(&self) -> Result<(), TierError> {
        self.gate("clear").await?;
        self.inner.clear().await
    }
    async fn retime(&self, key: &[u8], how: crate::retime::Retime) -> Result<bool, TierError> {
        self.calls.retimes.fetch_add(1, Ordering::SeqCst);
        self.gate("retime").await?;
        self.inner.retime(key, how).await
    }
}

type EventSender = tokio::sync::broadcast::Sender<crate::backplane::BackplaneEvent>;

/// One message of a hub's log: its sender, cache and what.
type Logged = (u64, String, crate::backplane::Invalidation);

/// An in-process backplane hub: every [`LocalBackplane`] made by one hub hears the others, and
/// the hub keeps a log of every message (a position is its index), so that a node can
/// [`replay`](crate::spi::Backplane::replay) what it missed — the way a Redis Stream does.
/// For tests of the hierarchy's backplane handling (the Redis backplane is the real one).
#[derive(Clone, Default)]
pub struct LocalBackplaneHub {
    nodes: Arc<Mutex<Vec<(u64, EventSender)>>>,
    log: Arc<Mutex<Vec<Logged>>>,
    /// Messages before this index were trimmed (a replay from before it is a gap).
    trimmed: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl LocalBackplaneHub {
    /// A hub with no node.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new node on the hub, with a log but no proofs of delivery.
    pub fn node(&self) -> LocalBackplane {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let (tx, _) = tokio::sync::broadcast::channel(1024);
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).push((id, tx.clone()));
        LocalBackplane { id, hub: self.clone(), tx, confirms: false, logless: false }
    }

    /// A node that sends proofs of delivery ([`LocalBackplane::confirm`]): the hierarchy holds
    /// its local entries to the lease.
    pub fn confirming_node(&self) -> LocalBackplane {
        LocalBackplane { confirms: true, ..self.node() }
    }

    /// A node that cannot replay (like Redis pub/sub): no positions, every replay a gap.
    pub fn logless_node(&self) -> LocalBackplane {
        LocalBackplane { logless: true, ..self.node() }
    }

    /// Forget the log so far: a replay from a position before now is a gap.
    pub fn trim(&self) {
        let len = self.log.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.trimmed.store(len as u64, Ordering::SeqCst);
    }

    /// How many messages were published so far.
    pub fn published(&self) -> usize {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The position of the message at `index` (the position of "nothing yet" is 0).
fn position(index: usize) -> crate::backplane::LogPosition {
    let p = index as u64 + 1;
    crate::backplane::LogPosition(Bytes::copy_from_slice(&p.to_be_bytes()))
}

fn index_of(position: &crate::backplane::LogPosition) -> Option<u64> {
    <[u8; 8]>::try_from(&position.0[..]).ok().map(u64::from_be_bytes)
}

/// One node of a [`LocalBackplaneHub`].
pub struct LocalBackplane {
    id: u64,
    hub: LocalBackplaneHub,
    tx: EventSender,
    confirms: bool,
    logless: bool,
}

impl LocalBackplane {
    /// Tell this node's subscribers that messages may have been missed
    /// ([`BackplaneEvent::Gap`](crate::spi::BackplaneEvent::Gap)), as a backplane does when its
    /// connection was lost and it cannot replay.
    pub fn simulate_reconnect(&self) {
        let _ = self.tx.send(crate::backplane::BackplaneEvent::Gap);
    }

    /// Send a proof of delivery: everything published before `sent_at_ms` was delivered.
    pub fn confirm(&self, sent_at_ms: u64) {
        let _ = self.tx.send(crate::backplane::BackplaneEvent::Confirmed { sent_at_ms });
    }

    /// How many events sent to this node some subscriber has not received yet (0: the
    /// hierarchy's listener has taken every one).
    pub fn queued(&self) -> usize {
        self.tx.len()
    }
}

#[async_trait]
impl crate::backplane::Backplane for LocalBackplane {
    async fn publish(
        &self,
        cache: &str,
        what: &crate::backplane::Invalidation,
    ) -> Result<Option<crate::backplane::LogPosition>, TierError> {
        let at = {
            let mut log = self.hub.log.lock().unwrap_or_else(|p| p.into_inner());
            log.push((self.id, cache.to_string(), what.clone()));
            log.len() - 1
        };
        let position = (!self.logless).then(|| position(at));
        let nodes = self.hub.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for (id, tx) in nodes.iter() {
            if *id != self.id {
                let _ = tx.send(crate::backplane::BackplaneEvent::Invalidate {
                    cache: cache.to_string(),
                    what: what.clone(),
                    position: position.clone(),
                });
            } else if let Some(position) = &position {
                // Read back, as a stream reader reads its own entries.
                let position = position.clone();
                let _ = tx.send(crate::backplane::BackplaneEvent::Passed { position });
            }
        }
        Ok(position)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::backplane::BackplaneEvent> {
        self.tx.subscribe()
    }

    async fn replay(
        &self,
        after: &crate::backplane::LogPosition,
    ) -> Result<crate::backplane::Replay, TierError> {
        use crate::backplane::Replay;
        // `after` is the position of the last message applied: messages from index `after` on.
        let Some(after) = index_of(after).filter(|_| !self.logless) else { return Ok(Replay::Gap) };
        if after < self.hub.trimmed.load(Ordering::SeqCst) {
            return Ok(Replay::Gap);
        }
        let log = self.hub.log.lock().unwrap_or_else(|p| p.into_inner());
        let events = log
            .iter()
            .enumerate()
            .skip(usize::try_from(after).unwrap_or(usize::MAX))
            .filter(|(_, (sender, _, _))| *sender != self.id)
            .map(|(i, (_, cache, what))| (cache.clone(), what.clone(), position(i)))
            .collect();
        Ok(Replay::Events(events))
    }

    async fn head(&self) -> Result<Option<crate::backplane::LogPosition>, TierError> {
        if self.logless {
            return Ok(None);
        }
        let len = self.hub.log.lock().unwrap_or_else(|p| p.into_inner()).len();
        // The position of the last message (0 before any).
        Ok(Some(crate::backplane::LogPosition(Bytes::copy_from_slice(&(len as u64).to_be_bytes()))))
    }

    fn confirms_delivery(&self) -> bool {
        self.confirms
    }
}

/// A fleet lock held in this process ([`DistributedLock`](crate::spi::DistributedLock)): what several hierarchies of
/// one test share to stand for instances of a fleet. Counts the attempts to take it.
#[derive(Default)]
pub struct LocalLock {
    held: Mutex<HashMap<Bytes, (String, std::time::Instant)>>,
    next: AtomicU64,
    attempts: AtomicU64,
    changed: Notify,
}

impl LocalLock {
    /// A lock nobody holds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Attempts to take the lock of any key so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Is the lock of `key` held (and not expired) now?
    pub fn is_held(&self, key: &[u8]) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(key).is_some_and(|(_, until)| *until > std::time::Instant::now())
    }

    /// Wait until at least `n` attempts were made.
    pub async fn attempted(&self, n: u64) {
        loop {
            let changed = self.changed.notified();
            if self.attempts() >= n {
                return;
            }
            changed.await;
        }
    }
}

#[async_trait]
impl crate::lock::DistributedLock for LocalLock {
    async fn try_acquire(
        &self,
        key: &[u8],
        ttl: std::time::Duration,
    ) -> Result<Option<crate::lock::LockToken>, TierError> {
        let now = std::time::Instant::now();
        let token = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            match held.get(key) {
                Some((_, until)) if *until > now => None,
                _ => {
                    let token = format!("t{}", self.next.fetch_add(1, Ordering::SeqCst));
                    let until = now
                        .checked_add(ttl)
                        .unwrap_or(now + std::time::Duration::from_secs(86_400 * 365));
                    held.insert(Bytes::copy_from_slice(key), (token.clone(), until));
                    Some(crate::lock::LockToken(token))
                }
            }
        };
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Ok(token)
    }

    async fn release(&self, key: &[u8], token: &crate::lock::LockToken) -> Result<(), TierError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.get(key).is_some_and(|(t, _)| *t == token.0) {
            held.remove(key);
        }
        Ok(())
    }
}

/// Generations held in this process that behave as a store shared by a fleet does (Redis):
/// several caches of one test are given the same one, and a bump heard on the backplane
/// changes nothing in it — the store saw the bump itself. A [`LocalGenerations`] shared by
/// several caches instead moves its own copy on at every namespace notice it hears (a cache's
/// own generations follow the fleet that way), which a real shared store never does: a test
/// of several instances then sees versions move that no instance moved.
///
/// [`LocalGenerations`]: crate::spi::LocalGenerations
#[derive(Debug, Default)]
pub struct SharedGenerations(crate::generations::LocalGenerations);

impl SharedGenerations {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl crate::generations::GenerationStore for SharedGenerations {
    async fn current(&self, tags: &[Arc<str>]) -> Result<Vec<Option<u64>>, TierError> {
        self.0.current(tags).await
    }
    async fn stamp(&self, tags: &[Arc<str>]) -> Result<Vec<u64>, TierError> {
        self.0.stamp(tags).await
    }
    async fn bump(&self, tag: &str) -> Result<u64, TierError> {
        self.0.bump(tag).await
    }
    async fn floor(&self, cache: &str) -> Result<u64, TierError> {
        self.0.floor(cache).await
    }
    async fn raise_floor(&self, cache: &str, at: u64) -> Result<u64, TierError> {
        self.0.raise_floor(cache, at).await
    }
}
