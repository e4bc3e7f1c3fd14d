//! The conditional-refresh loader: a value stored with its ETag is revalidated when it stops
//! being fresh — the loader sends the ETag of the value it replaces (`LoadContext::previous`),
//! and an origin that answers
//! "not modified" (HTTP 304) costs no body: the cached value is kept and its life renewed in
//! every tier. Only a changed value is transferred again.
//!
//! ```text
//! cargo run -p tier-examples --bin conditional_refresh -- --redis redis://127.0.0.1:6379/
//! ```
//!
//! memory → Redis; `expire` ends the freshness at once (in every tier and every instance) so
//! that each step is a revalidation. It exits 0 once each step transferred what it should,
//! non-zero with the reason otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tier::{Cache, LoadContext, Loaded, MemoryTier, TierPolicy};
use tier_examples::{ready, say, Fleet, DEFAULT_REDIS_URL};

#[derive(Parser)]
#[command(about = "Conditional refresh: revalidate with a validator, renew on 'not modified'")]
struct Args {
    /// The Redis server (L3).
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    redis: String,
}

/// A document service with ETags: `GET` with `If-None-Match` answers 304 (no body) when the
/// version is unchanged. It counts what it sends.
#[derive(Default)]
struct Origin {
    /// The current body and its version.
    document: Mutex<(String, u64)>,
    full: AtomicU64,
    not_modified: AtomicU64,
    body_bytes: AtomicU64,
}

/// What the origin answered.
enum Reply {
    Ok { body: String, etag: String },
    NotModified,
}

impl Origin {
    fn publish(&self, body: String) {
        let mut doc = self.document.lock().unwrap_or_else(|e| e.into_inner());
        *doc = (body, doc.1 + 1);
    }

    fn get(&self, if_none_match: Option<&[u8]>) -> Reply {
        let doc = self.document.lock().unwrap_or_else(|e| e.into_inner());
        let etag = format!("\"v{}\"", doc.1);
        if if_none_match == Some(etag.as_bytes()) {
            self.not_modified.fetch_add(1, Ordering::Relaxed);
            return Reply::NotModified;
        }
        self.full.fetch_add(1, Ordering::Relaxed);
        self.body_bytes.fetch_add(doc.0.len() as u64, Ordering::Relaxed);
        Reply::Ok { body: doc.0.clone(), etag }
    }

    fn counts(&self) -> (u64, u64, u64) {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (read(&self.full), read(&self.not_modified), read(&self.body_bytes))
    }
}

/// What the cache holds: the document and the ETag it was sent with.
#[derive(serde::Serialize, serde::Deserialize)]
struct Document {
    etag: String,
    body: String,
}

/// The loader: revalidate what the tiers hold (its ETag as `If-None-Match`), or fetch it whole.
fn loader(
    origin: Arc<Origin>,
) -> impl FnOnce(LoadContext<Document>) -> std::future::Ready<Result<Loaded<Document>, std::io::Error>>
{
    move |ctx| {
        let previous = ctx.previous().and_then(|p| p.value.as_ref());
        let answer = match origin.get(previous.map(|d| d.etag.as_bytes())) {
            Reply::NotModified => ctx.not_modified(),
            Reply::Ok { body, etag } => {
                Loaded::value(Document { etag, body }).fresh_for(Duration::from_secs(60))
            }
        };
        std::future::ready(Ok(answer))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let fleet =
        Fleet::connect(&args.redis, &format!("tier-example-{}:", std::process::id())).await?;
    if !fleet.connected(Duration::from_secs(5)).await {
        return Err(format!("Redis at {} not reachable", args.redis).into());
    }
    let builder = Cache::builder("documents")
        .tier(MemoryTier::builder().build(), TierPolicy::fresh(Duration::from_secs(60)));
    let docs: Cache<Document> =
        fleet.mount(builder, TierPolicy::fresh(Duration::from_secs(600))).build()?;
    ready(&docs, Duration::from_secs(5)).await?;
    let origin = Arc::new(Origin::default());
    origin.publish("x".repeat(10_000));
    let key = docs.key("handbook");
    let mut expected = (0, 0, 0);
    let mut step = |what: &str, full: u64, not_modified: u64, bytes: u64| {
        expected = (expected.0 + full, expected.1 + not_modified, expected.2 + bytes);
        let counts = origin.counts();
        say(format!(
            "{what}: origin sent {} full answers, {} not-modified, {} body bytes in all",
            counts.0, counts.1, counts.2
        ));
        if counts != expected {
            return Err(format!("{what}: expected {expected:?}, the origin counted {counts:?}"));
        }
        Ok(())
    };

    docs.get_or_load_ctx(&key, loader(origin.clone())).await?.ok_or("no document")?;
    step("first read: loaded whole", 1, 0, 10_000)?;

    docs.expire(&key).await?;
    let doc = docs.get_or_load_ctx(&key, loader(origin.clone())).await?.ok_or("no document")?;
    step("after expire, unchanged at the origin: revalidated (304)", 0, 1, 0)?;
    let hit = docs.try_get(&key).await.ok_or("not cached")?;
    if doc.body.len() != 10_000 {
        return Err("the revalidated value is not the kept one".into());
    }
    // (Freshness is not asserted: the other tiers' renewal lands just after the answer, and a
    // loaded machine can let the L1's lease lapse meanwhile.)
    say(format!(
        "the kept value is served ({}, {} bytes; fresh: {}, in {})",
        doc.etag,
        doc.body.len(),
        hit.fresh,
        hit.tier
    ));

    origin.publish("y".repeat(12_000));
    docs.expire(&key).await?;
    let doc = docs.get_or_load_ctx(&key, loader(origin.clone())).await?.ok_or("no document")?;
    step("after expire, changed at the origin: loaded whole", 1, 0, 12_000)?;
    if !doc.body.starts_with('y') {
        return Err("the changed document was not served".into());
    }
    say("ok: only changed documents were transferred");
    Ok(())
}
