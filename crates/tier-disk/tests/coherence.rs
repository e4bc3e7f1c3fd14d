//! The hierarchy's invalidation state survives restarts with the disk tier (issue 13): tag
//! generations, the namespace version and the clear floor are kept in the disk tier's state
//! file; a lost state file makes every disk entry suspect; a restart catches up with the
//! invalidation log instead of serving what other instances invalidated meanwhile.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tier_core::spi::Tier;
use tier_core::testing::{LocalBackplaneHub, MapTier};
use tier_core::{Cache, FailSafe, ReconnectPolicy, TierPolicy};
use tier_disk::DiskTier;

const MINUTE: Duration = Duration::from_secs(60);

fn cache(dir: &Path) -> Cache<String> {
    Cache::builder("users")
        .tier(DiskTier::open(dir).unwrap(), TierPolicy::fresh(MINUTE))
        .fail_safe(FailSafe::up_to(MINUTE))
        .build()
        .unwrap()
}

fn value(v: Option<Arc<String>>) -> Option<String> {
    v.map(|v| v.as_ref().clone())
}

#[tokio::test]
async fn a_tag_invalidation_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    c.insert_with_tags("k", "old".into(), &["t"]).await.unwrap();
    c.insert_with_tags("other", "kept".into(), &["u"]).await.unwrap();
    c.invalidate_tag("t").await.unwrap();
    drop(c);
    let c = cache(dir.path());
    assert_eq!(c.get("k").await, None, "the invalidated value must not come back");
    assert_eq!(value(c.get("other").await).as_deref(), Some("kept"), "the rest is warm");
}

#[tokio::test]
async fn a_namespace_drop_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    let old = c.key("1");
    c.insert(&old, "old".into()).await.unwrap();
    c.invalidate_namespace().await.unwrap();
    let moved = c.key("1");
    drop(c);
    let c = cache(dir.path());
    assert_eq!(c.key("1"), moved, "the version is read back");
    assert_eq!(c.get(c.key("1")).await, None);
}

#[tokio::test]
async fn a_clear_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    c.insert("k", "old".into()).await.unwrap();
    c.clear().await.unwrap();
    c.insert("after", "new".into()).await.unwrap();
    drop(c);
    let c = cache(dir.path());
    assert_eq!(c.get("k").await, None);
    assert_eq!(value(c.get("after").await).as_deref(), Some("new"));
}

#[tokio::test]
async fn a_lost_state_file_makes_disk_entries_stale_until_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    c.insert("k", "old".into()).await.unwrap();
    drop(c);
    std::fs::remove_file(dir.path().join("STATE")).unwrap();
    let c = cache(dir.path());
    assert_eq!(c.get("k").await, None, "suspect: not fresh");
    let failing = || async { Err::<Option<String>, _>(std::io::Error::other("origin down")) };
    let stale = c.get_or_load("k", failing).await.unwrap();
    assert_eq!(value(stale).as_deref(), Some("old"), "nothing lost: served as stale");
    c.insert("k", "new".into()).await.unwrap();
    assert_eq!(value(c.get("k").await).as_deref(), Some("new"));
    drop(c);
    // Said once: the next start does not find the loss again, and the old entry stays suspect.
    let c = cache(dir.path());
    assert_eq!(value(c.get("k").await).as_deref(), Some("new"));
}

/// An instance with a disk tier over the shared tier, on `hub`.
fn instance(dir: &Path, hub: &LocalBackplaneHub, shared: &Arc<MapTier>) -> Cache<String> {
    Cache::builder("users")
        .tier(DiskTier::open(dir).unwrap(), TierPolicy::fresh(MINUTE))
        .tier(shared.clone(), TierPolicy::fresh(MINUTE))
        .backplane(Arc::new(hub.node()), ReconnectPolicy::default())
        .build()
        .unwrap()
}

/// An instance with the shared tier only.
fn shared_only(hub: &LocalBackplaneHub, shared: &Arc<MapTier>) -> Cache<String> {
    Cache::builder("users")
        .tier(shared.clone(), TierPolicy::fresh(MINUTE))
        .backplane(Arc::new(hub.node()), ReconnectPolicy::default())
        .build()
        .unwrap()
}

async fn caught_up(c: &Cache<String>) {
    let done = tokio::time::timeout(Duration::from_secs(5), c.caught_up()).await;
    assert!(done.is_ok() && c.is_caught_up(), "the start-up never finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_catches_up_with_what_others_invalidated_meanwhile() {
    let hub = LocalBackplaneHub::new();
    let shared = Arc::new(MapTier::shared("l3"));
    let dir = tempfile::tempdir().unwrap();
    let a = instance(dir.path(), &hub, &shared);
    caught_up(&a).await; // it has recorded where it starts in the log
    a.insert("k", "old".into()).await.unwrap();
    a.insert("warm", "w".into()).await.unwrap();
    // Before a stops, its listener has passed its own notices (the log position it saves on
    // drop is after them): another instance's invalidation of a marker a holds comes after
    // them in the log, and a applying it is the signal. (A notice of a's own replayed after
    // its restart would drop the copy of the same millisecond: its new id makes it foreign.)
    let b = shared_only(&hub, &shared);
    a.insert("marker", "m".into()).await.unwrap();
    b.invalidate("marker").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.get("marker").await.is_some() {
        assert!(Instant::now() < deadline, "a never applied b's invalidation");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(a);
    // Another instance invalidates k while a is down.
    b.invalidate("k").await.unwrap();
    shared.clear().await.unwrap(); // the shared tier loses "warm" too: only the disk has it
    let a = instance(dir.path(), &hub, &shared);
    caught_up(&a).await;
    assert_eq!(value(a.get("warm").await).as_deref(), Some("w"), "the disk tier is warm");
    assert_eq!(a.get("k").await, None, "the invalidation made while down was applied");
}

/// An instance's own notices, read back after the last notice of another instance it applied,
/// were replayed after its restart as another's (its node id is new): each insert notice
/// dropped the instance's own disk copy of that millisecond, so a restart lost every write made
/// since another instance last said something — all of them for an instance alone on its
/// backplane. Now the applied position moves past the instance's own notices too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_instances_own_last_writes_on_disk() {
    let hub = LocalBackplaneHub::new();
    let shared = Arc::new(MapTier::shared("l3"));
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(hub.node());
    let a: Cache<String> = Cache::builder("users")
        .tier(DiskTier::open(dir.path()).unwrap(), TierPolicy::fresh(MINUTE))
        .tier(shared.clone(), TierPolicy::fresh(MINUTE))
        .backplane(node.clone(), ReconnectPolicy::default())
        .build()
        .unwrap();
    caught_up(&a).await;
    for i in 0..20 {
        a.insert(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    // Its listener has taken every event of its node (its own notices read back).
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.queued() > 0 {
        assert!(Instant::now() < deadline, "the listener never took its events");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(a);
    shared.clear().await.unwrap(); // only the disk tier has the values now
    let a = instance(dir.path(), &hub, &shared);
    caught_up(&a).await;
    for i in 0..20 {
        let got = value(a.get(format!("k{i}")).await);
        assert_eq!(got, Some(format!("v{i}")), "k{i}: the restart dropped its own write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_cannot_replay_serves_disk_entries_only_as_stale() {
    let hub = LocalBackplaneHub::new();
    let shared = Arc::new(MapTier::shared("l3"));
    let dir = tempfile::tempdir().unwrap();
    let a = instance(dir.path(), &hub, &shared);
    caught_up(&a).await;
    a.insert("k", "old".into()).await.unwrap();
    drop(a);
    let b = shared_only(&hub, &shared);
    b.invalidate("unrelated").await.unwrap();
    hub.trim(); // the log no longer holds where a stopped
    shared.clear().await.unwrap();
    let a = instance(dir.path(), &hub, &shared);
    caught_up(&a).await;
    let deadline = Instant::now() + Duration::from_millis(100);
    while Instant::now() < deadline {
        assert_eq!(a.get("k").await, None, "never fresh after a gap");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.insert("k", "new".into()).await.unwrap();
    assert_eq!(value(a.get("k").await).as_deref(), Some("new"));
}
