//! The [`Tier`] contract as a test kit: [`run`] checks any tier against it.
//!
//! A tier author runs it from an integration test, giving a function that makes a new, empty
//! tier for each check (for a tier that cannot be emptied by construction, a fresh key prefix
//! or directory each time):
//!
//! ```
//! use tier_core::testing::{conformance, MapTier};
//!
//! #[tokio::main]
//! async fn main() {
//!     let report = conformance::run(|| async { MapTier::new("map") }).await;
//!     match report {
//!         Ok(passed) => assert!(passed.checks.len() >= 10),
//!         Err(violations) => panic!("{violations}"),
//!     }
//! }
//! ```
//!
//! What is checked (each on a tier of its own):
//! - entries are classified at read time: fresh is a [`Lookup::Hit`], stale a
//!   [`Lookup::Stale`], past `stale_until` a [`Lookup::Miss`] — also once an entry stored fresh
//!   has lived past its `stale_until`;
//! - what is read back is what was stored: the meta (times, flags, load cost, tags) and the
//!   value, negative entries and binary keys included; an insert replaces;
//! - bytes that are not an envelope (another service's JSON, a truncated envelope) are refused
//!   on insert or read back as a [`TierErrorKind::Decode`] error, never as a value;
//! - an entry of the form the tier does not store is refused with an error;
//! - `remove` and `clear` remove (and removing an absent key is fine);
//! - `get_many` agrees with `get`, key by key, in order; `insert_many` stores each entry;
//! - `get_ready` and `peek_ready` agree with `get`: `Fresh` only for a fresh untagged hit, `Miss` only for a
//!   miss.
//!
//! The kit sleeps (a few hundred milliseconds, once) to let an entry outlive its `stale_until`:
//! run it on a runtime with a time driver (`#[tokio::test]` has one).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::entry::{Entry, Lookup, ReadyLookup, Storage, Value};
use crate::envelope::{self, Codec, Meta, TagStamp};
use crate::error::TierErrorKind;
use crate::retime::Retime;
use crate::tier::Tier;
use crate::time::now_ms;

/// The checks that passed.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Passed {
    /// Their names, in the order they ran.
    pub checks: Vec<&'static str>,
}

/// A part of the contract a tier broke.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Violation {
    /// The check's name.
    pub check: &'static str,
    /// What the tier did.
    pub message: String,
}

/// The checks that failed (and those that passed).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Violations {
    /// What failed.
    pub failed: Vec<Violation>,
    /// What passed.
    pub passed: Passed,
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} checks failed:",
            self.failed.len(),
            self.failed.len() + self.passed.checks.len()
        )?;
        for v in &self.failed {
            write!(f, "\n- {}: {}", v.check, v.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

type Outcome = Result<(), String>;
type Check = for<'a> fn(&'a dyn Tier) -> BoxFuture<'a, Outcome>;

const CHECKS: &[(&str, Check)] = &[
    ("classifies fresh, stale and expired entries", classifies),
    ("stale_until is respected over time", ages_out),
    ("reads back what was stored", round_trips),
    ("an insert replaces", replaces),
    ("bytes that are not an envelope are decode errors", foreign_bytes),
    ("an entry of the wrong form is refused", wrong_form),
    ("remove and clear remove", removes),
    ("get_many agrees with get", get_many_agrees),
    ("insert_many stores each entry", insert_many_stores),
    ("get_ready and peek_ready agree with get", get_ready_agrees),
    ("retime rewrites only the entry it is meant for", retimes),
];

/// Run every check of the contract, each on a tier `make` makes.
pub async fn run<F, Fut, T>(mut make: F) -> Result<Passed, Violations>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    T: Tier,
{
    let mut passed = Passed::default();
    let mut failed = Vec::new();
    for (check, run_check) in CHECKS {
        let tier = make().await;
        match run_check(&tier).await {
            Ok(()) => passed.checks.push(check),
            Err(message) => failed.push(Violation { check, message }),
        }
    }
    if failed.is_empty() {
        Ok(passed)
    } else {
        Err(Violations { failed, passed })
    }
}

/// Fail with `message` unless `ok`.
fn ensure(ok: bool, message: impl FnOnce() -> String) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}

/// Meta of an entry created now with these times relative to now (ms).
fn meta(fresh_in: i64, stale_in: i64) -> Meta {
    let now = now_ms();
    let at = |d: i64| now.saturating_add_signed(d);
    Meta {
        created_at: now,
        fresh_until: at(fresh_in),
        stale_until: at(stale_in),
        load_cost_us: 7,
        // What `Cache::insert` writes: an insert wins a `created_at` tie, so a replacement of
        // the same millisecond replaces in a tier that compares (the Redis tier's
        // compare-and-set write).
        insert: true,
        ..Meta::default()
    }
}

/// An entry of the form `tier` stores holding `value` (`None`: a negative entry).
fn entry_for(tier: &dyn Tier, meta: Meta, value: Option<&str>) -> Entry {
    let meta = Meta { negative: value.is_none(), ..meta };
    let value = value.map(str::to_string);
    let bytes = Codec::default().encode(&meta, value.as_ref()).unwrap_or_default();
    let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let value = match tier.storage() {
        Storage::Envelopes => Value::Envelope(bytes),
        Storage::Objects => match value {
            Some(v) => Value::Object(Arc::new(v)),
            None => Value::Object(Arc::new(())),
        },
    };
    Entry { meta, value, size }
}

/// The string an entry holds (`None` for a negative entry), or why it cannot be read.
fn value_of(entry: &Entry) -> Result<Option<String>, String> {
    let value = entry.decode::<String>().map_err(|e| e.to_string())?;
    Ok(value.map(|v| (*v).clone()))
}

async fn put(tier: &dyn Tier, key: &str, entry: Entry) -> Outcome {
    tier.insert(Bytes::copy_from_slice(key.as_bytes()), entry)
        .await
        .map_err(|e| format!("insert of {key:?} failed: {e}"))
}

async fn get(tier: &dyn Tier, key: &str) -> Result<Lookup, String> {
    tier.get(key.as_bytes()).await.map_err(|e| format!("get of {key:?} failed: {e}"))
}

/// The variant of a lookup, for messages and comparisons.
fn kind(lookup: &Lookup) -> &'static str {
    match lookup {
        Lookup::Hit(_) => "Hit",
        Lookup::Stale(_) => "Stale",
        Lookup::Miss => "Miss",
    }
}

fn classifies(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        put(tier, "fresh", entry_for(tier, meta(60_000, 120_000), Some("f"))).await?;
        put(tier, "stale", entry_for(tier, meta(-1_000, 60_000), Some("s"))).await?;
        // An expired entry may be refused or dropped; it must not be served.
        let _ = tier
            .insert(Bytes::from("expired"), entry_for(tier, meta(-2_000, -1_000), Some("e")))
            .await;
        for (key, want) in
            [("fresh", "Hit"), ("stale", "Stale"), ("expired", "Miss"), ("absent", "Miss")]
        {
            let got = get(tier, key).await?;
            ensure(kind(&got) == want, || format!("{key:?} read as {}, not {want}", kind(&got)))?;
        }
        Ok(())
    })
}

fn retimes(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        let m = meta(60_000, 120_000);
        let (created, stale_until) = (m.created_at, m.stale_until);
        put(tier, "r", entry_for(tier, m, Some("kept"))).await?;
        let retime = |how| async move {
            tier.retime(b"r", how).await.map_err(|e| format!("retime failed: {e}"))
        };
        let now = now_ms();
        let renew = Retime::Renew {
            created_at: created.wrapping_sub(1),
            renewed_at: now,
            fresh_until: now + 600_000,
            stale_until: now + 900_000,
        };
        ensure(!retime(renew).await?, || "renewed an entry of another created_at".into())?;
        let expire = Retime::Expire { at: created + 1, cut: now, floor: 0 };
        ensure(retime(expire).await?, || "did not expire the entry".into())?;
        let got = get(tier, "r").await?;
        let Lookup::Stale(e) = &got else {
            return Err(format!("an expired entry read as {}, not Stale", kind(&got)));
        };
        ensure(e.meta.created_at == created + 1 && e.meta.stale_until == stale_until, || {
            format!("expired as {:?}", e.meta)
        })?;
        ensure(value_of(e)?.as_deref() == Some("kept"), || "the value changed".into())?;
        let renew = Retime::Renew {
            created_at: created + 1,
            renewed_at: now,
            fresh_until: now + 600_000,
            stale_until: now + 900_000,
        };
        ensure(retime(renew).await?, || "did not renew the entry".into())?;
        let got = get(tier, "r").await?;
        let Lookup::Hit(e) = &got else {
            return Err(format!("a renewed entry read as {}, not Hit", kind(&got)));
        };
        ensure(
            (e.meta.created_at, e.meta.fresh_until, e.meta.stale_until)
                == (now, now + 600_000, now + 900_000),
            || format!("renewed as {:?}", e.meta),
        )?;
        ensure(value_of(e)?.as_deref() == Some("kept"), || "the value changed".into())?;
        // A newer write is not expired.
        let older = Retime::Expire { at: now.saturating_sub(1), cut: now, floor: 0 };
        ensure(!retime(older).await?, || "expired a newer entry".into())?;
        ensure(get(tier, "r").await?.is_hit(), || "a newer entry lost its freshness".into())
    })
}

fn ages_out(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        let m = meta(150, 300);
        let stale_until = m.stale_until;
        put(tier, "short", entry_for(tier, m, Some("v"))).await?;
        let first = get(tier, "short").await?;
        ensure(matches!(first, Lookup::Hit(_)), || format!("read at once as {}", kind(&first)))?;
        // Past stale_until (plus a coarse clock's tick): gone, whatever the tier's own clock.
        let left = stale_until.saturating_sub(now_ms()) + 20;
        tokio::time::sleep(Duration::from_millis(left)).await;
        let later = get(tier, "short").await?;
        ensure(matches!(later, Lookup::Miss), || {
            format!("read past stale_until as {}", kind(&later))
        })?;
        let ready = tier.get_ready(b"short");
        ensure(!matches!(ready, ReadyLookup::Fresh(_)), || {
            "get_ready answered Fresh past stale_until".into()
        })
    })
}

fn round_trips(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        let tags: Arc<[TagStamp]> = Arc::from(vec![
            TagStamp { tag: Arc::from("user:1"), generation: 3 },
            TagStamp { tag: Arc::from("team"), generation: u64::MAX },
        ]);
        // Bound here: Rust 1.88 (the MSRV) does not extend a temporary's life inside `Some(..)`.
        let long = "long value ".repeat(300);
        let cases: [(&str, Meta, Option<&str>); 4] = [
            ("plain", meta(60_000, 120_000), Some("a value")),
            ("negative", meta(60_000, 60_000), None),
            ("tagged", Meta { tags: Some(tags), ..meta(60_000, 90_000) }, Some("tagged value")),
            ("\u{0}binary\u{7f}", meta(60_000, 60_000), Some(&long)),
        ];
        for (key, m, value) in cases {
            let stored = entry_for(tier, m, value);
            put(tier, key, stored.clone()).await?;
            let got = get(tier, key).await?;
            let Lookup::Hit(got) = got else {
                return Err(format!("{key:?} read as {}, not Hit", kind(&got)));
            };
            let (want, read) = (&stored.meta, &got.meta);
            ensure(
                read.created_at == want.created_at
                    && read.fresh_until == want.fresh_until
                    && read.stale_until == want.stale_until,
                || format!("{key:?}: times read back {read:?}, stored {want:?}"),
            )?;
            ensure(
                read.negative == want.negative
                    && read.tags == want.tags
                    && read.load_cost_us == want.load_cost_us,
                || format!("{key:?}: flags, tags or load cost read back {read:?}, stored {want:?}"),
            )?;
            let back = value_of(&got).map_err(|e| format!("{key:?}: {e}"))?;
            ensure(back.as_deref() == value, || {
                format!("{key:?}: value read back {back:?}, stored {value:?}")
            })?;
        }
        Ok(())
    })
}

fn replaces(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        put(tier, "k", entry_for(tier, meta(60_000, 60_000), Some("one"))).await?;
        put(tier, "k", entry_for(tier, meta(60_000, 60_000), Some("two"))).await?;
        let got = get(tier, "k").await?;
        let back = got.entry().map(value_of).transpose()?.flatten();
        ensure(back.as_deref() == Some("two"), || {
            format!("read back {back:?} after replacing with \"two\"")
        })
    })
}

fn foreign_bytes(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        if tier.storage() != Storage::Envelopes {
            return Ok(());
        }
        let valid = Codec::default()
            .encode(&meta(60_000, 60_000), Some(&"v".to_string()))
            .map_err(|e| format!("encode: {e}"))?;
        let foreign: [(&str, Bytes); 3] = [
            ("json", Bytes::from_static(b"{\"another\":\"service\"}")),
            ("truncated", valid.slice(..valid.len() - 1)),
            ("header only", valid.slice(..envelope::HEADER_LEN - 3)),
        ];
        for (key, bytes) in foreign {
            let size = bytes.len() as u32;
            let entry = Entry { meta: meta(60_000, 60_000), value: Value::Envelope(bytes), size };
            if tier.insert(Bytes::copy_from_slice(key.as_bytes()), entry).await.is_err() {
                continue; // refused on the way in: fine
            }
            match tier.get(key.as_bytes()).await {
                Err(e) if e.kind() == TierErrorKind::Decode => {}
                Err(e) => {
                    return Err(format!(
                        "{key:?} read back as a {} error, not decode: {e}",
                        e.kind().as_str()
                    ))
                }
                Ok(l) => {
                    return Err(format!("{key:?} (not an envelope) read back as {}", kind(&l)))
                }
            }
            let batch = [Bytes::copy_from_slice(key.as_bytes())];
            match tier.get_many(&batch).await {
                Err(e) if e.kind() == TierErrorKind::Decode => {}
                Ok(l) if l.len() == 1 && matches!(l[0], Lookup::Miss) => {}
                Err(e) => {
                    return Err(format!(
                        "get_many of {key:?}: a {} error, not decode",
                        e.kind().as_str()
                    ))
                }
                Ok(l) => {
                    return Err(format!(
                        "get_many of {key:?} (not an envelope) answered {:?}",
                        l.iter().map(kind).collect::<Vec<_>>()
                    ))
                }
            }
        }
        Ok(())
    })
}

fn wrong_form(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        let right = entry_for(tier, meta(60_000, 60_000), Some("v"));
        let value = match tier.storage() {
            Storage::Envelopes => Value::Object(Arc::new("v".to_string())),
            Storage::Objects => {
                match Codec::default().encode(&right.meta, Some(&"v".to_string())) {
                    Ok(bytes) => Value::Envelope(bytes),
                    Err(e) => return Err(format!("encode: {e}")),
                }
            }
        };
        let wrong = Entry { value, ..right };
        let r = tier.insert(Bytes::from("k"), wrong).await;
        ensure(r.is_err(), || {
            format!("an entry of the wrong form was stored ({:?} tier)", tier.storage())
        })?;
        let got = get(tier, "k").await?;
        ensure(matches!(got, Lookup::Miss), || format!("the refused entry reads as {}", kind(&got)))
    })
}

fn removes(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        for key in ["a", "b", "c"] {
            put(tier, key, entry_for(tier, meta(60_000, 60_000), Some(key))).await?;
        }
        tier.remove(b"a").await.map_err(|e| format!("remove: {e}"))?;
        tier.remove(b"absent").await.map_err(|e| format!("remove of an absent key: {e}"))?;
        let (a, b) = (get(tier, "a").await?, get(tier, "b").await?);
        ensure(matches!(a, Lookup::Miss), || format!("a removed key reads as {}", kind(&a)))?;
        ensure(matches!(b, Lookup::Hit(_)), || {
            format!("another key reads as {} after a remove", kind(&b))
        })?;
        tier.clear().await.map_err(|e| format!("clear: {e}"))?;
        for key in ["b", "c"] {
            let got = get(tier, key).await?;
            ensure(matches!(got, Lookup::Miss), || {
                format!("{key:?} reads as {} after clear", kind(&got))
            })?;
            let ready = tier.get_ready(key.as_bytes());
            ensure(!matches!(ready, ReadyLookup::Fresh(_)), || {
                format!("get_ready of {key:?} answered Fresh after clear")
            })?;
        }
        Ok(())
    })
}

/// Fresh, stale, expired and absent keys in one tier, returned in this order.
async fn mixed(tier: &dyn Tier) -> Result<Vec<Bytes>, String> {
    put(tier, "h1", entry_for(tier, meta(60_000, 60_000), Some("1"))).await?;
    put(tier, "h2", entry_for(tier, meta(60_000, 60_000), None)).await?;
    put(tier, "st", entry_for(tier, meta(-1_000, 60_000), Some("s"))).await?;
    let _ = tier.insert(Bytes::from("ex"), entry_for(tier, meta(-2_000, -1_000), Some("e"))).await;
    Ok(["h1", "absent", "st", "ex", "h2", "h1"].into_iter().map(Bytes::from).collect())
}

fn get_many_agrees(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        let keys = mixed(tier).await?;
        let many = tier.get_many(&keys).await.map_err(|e| format!("get_many: {e}"))?;
        ensure(many.len() == keys.len(), || {
            format!("get_many of {} keys answered {}", keys.len(), many.len())
        })?;
        for (key, batch) in keys.iter().zip(&many) {
            let one = tier.get(key).await.map_err(|e| format!("get: {e}"))?;
            ensure(kind(&one) == kind(batch), || {
                format!("{key:?}: get says {}, get_many {}", kind(&one), kind(batch))
            })?;
            let same_meta = one.entry().map(|e| &e.meta) == batch.entry().map(|e| &e.meta);
            ensure(same_meta, || format!("{key:?}: get and get_many read other metas"))?;
        }
        let none = tier.get_many(&[]).await.map_err(|e| format!("get_many of no key: {e}"))?;
        ensure(none.is_empty(), || format!("get_many of no key answered {} lookups", none.len()))
    })
}

fn insert_many_stores(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        let entries: Vec<(Bytes, Entry)> = ["x", "y", "z"]
            .into_iter()
            .map(|k| (Bytes::from(k), entry_for(tier, meta(60_000, 60_000), Some(k))))
            .collect();
        tier.insert_many(entries).await.map_err(|e| format!("insert_many: {e}"))?;
        for key in ["x", "y", "z"] {
            let got = get(tier, key).await?;
            let back = got.entry().map(value_of).transpose()?.flatten();
            ensure(back.as_deref() == Some(key), || {
                format!("{key:?} read back as {back:?} after insert_many")
            })?;
        }
        Ok(())
    })
}

fn get_ready_agrees(tier: &dyn Tier) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        let mut keys = mixed(tier).await?;
        let tags: Arc<[TagStamp]> =
            Arc::from(vec![TagStamp { tag: Arc::from("t"), generation: 1 }]);
        let tagged = Meta { tags: Some(tags), ..meta(60_000, 60_000) };
        put(tier, "tagged", entry_for(tier, tagged, Some("t"))).await?;
        keys.push(Bytes::from("tagged"));
        keys.push(Bytes::from("never written"));
        for key in &keys {
            let full = tier.get(key).await.map_err(|e| format!("get: {e}"))?;
            for (name, ready) in
                [("get_ready", tier.get_ready(key)), ("peek_ready", tier.peek_ready(key))]
            {
                ready_agrees(key, name, &ready, &full)?;
            }
        }
        Ok(())
    })
}

/// `ready` (what `name` answered for `key`) agrees with `full`, what `get` answered.
fn ready_agrees(key: &Bytes, name: &str, ready: &ReadyLookup, full: &Lookup) -> Outcome {
    match (ready, full) {
        (ReadyLookup::Ask, _) | (ReadyLookup::Miss, Lookup::Miss) => Ok(()),
        (ReadyLookup::Fresh(hit), Lookup::Hit(e)) if hit.tags().is_empty() => {
            ensure(hit.meta() == e.meta, || format!("{key:?}: {name} and get read other metas"))
        }
        (ReadyLookup::Fresh(_), _) => Err(format!(
            "{key:?}: {name} answered Fresh, get {} (Fresh is only for a fresh untagged hit)",
            kind(full)
        )),
        (ReadyLookup::Miss, _) => Err(format!("{key:?}: {name} answered Miss, get {}", kind(full))),
    }
}
