//! The `tracing` span of a read: one `get_or_load` span (level DEBUG, target `tier`) with the
//! cache, the key as configured ([`TraceKeys`]: hashed by default, never the raw bytes unless
//! asked), and, once answered, `result` (`hit`: a fresh value or cached "none" of a tier;
//! `stale`; `loaded`; `error`), `tier`
//! (the tier that answered, or `origin`), `loaded` (whether the call waited for a load, started
//! or joined) and `duration_us`. The read path says where its answer came from ([`Answered`]);
//! nothing is recorded, formatted or timed when no subscriber wants the span.

use std::fmt;
use std::time::Instant;

use tracing::field::Empty;
use tracing::Span;

/// How keys appear in `tracing` spans and events (they may hold user ids, emails, tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TraceKeys {
    /// A 64-bit hash of the key (xxh3, hex): the same key gives the same hash, so a key's
    /// reads can be followed without its bytes. Default.
    #[default]
    Hashed,
    /// The first `n` bytes (lossy UTF-8), then `…` when cut.
    Truncated(usize),
    /// The whole key (lossy UTF-8). Only for keys that hold nothing private.
    Raw,
    /// No key field at all.
    Off,
}

/// A key as [`TraceKeys`] shows it.
struct ShownKey<'a>(&'a [u8], TraceKeys);

impl fmt::Display for ShownKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            TraceKeys::Hashed | TraceKeys::Off => {
                write!(f, "{:016x}", xxhash_rust::xxh3::xxh3_64(self.0))
            }
            TraceKeys::Truncated(n) if n < self.0.len() => {
                write!(f, "{}…", String::from_utf8_lossy(&self.0[..n]))
            }
            TraceKeys::Truncated(_) | TraceKeys::Raw => {
                f.write_str(&String::from_utf8_lossy(self.0))
            }
        }
    }
}

/// The span of one read, and when it started.
pub(super) struct ReadSpan {
    pub span: Span,
    started: Instant,
}

impl ReadSpan {
    /// The span of a `get_or_load` of `key` in cache `cache`; `None` when no subscriber wants
    /// it (then nothing is formatted or timed).
    pub fn new(cache: &str, key: &[u8], keys: TraceKeys) -> Option<Self> {
        let span = tracing::debug_span!(
            target: "tier",
            "get_or_load",
            cache,
            key = Empty,
            result = Empty,
            tier = Empty,
            loaded = Empty,
            duration_us = Empty,
        );
        if span.is_disabled() {
            return None;
        }
        if keys != TraceKeys::Off {
            span.record("key", tracing::field::display(ShownKey(key, keys)));
        }
        Some(Self { span, started: Instant::now() })
    }

    /// Record how the read was answered.
    pub fn answered(&self, result: &'static str, tier: Option<&str>, loaded: bool) {
        self.span.record("result", result);
        if let Some(tier) = tier {
            self.span.record("tier", tier);
        }
        self.span.record("loaded", loaded);
        self.span.record("duration_us", self.started.elapsed().as_micros() as u64);
    }
}

/// How a read was answered, for its span: where the value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answered {
    /// A fresh entry (a value or a cached "none") of this tier.
    Tier(usize),
    /// The stale entry of this tier (fail-safe, soft timeout, stale-while-revalidate); `loaded`:
    /// the caller waited for a load that did not answer in time or failed.
    Stale { level: usize, loaded: bool },
    /// The origin, through a load this call started or joined.
    Loaded,
    /// The origin, the tiers bypassed.
    Bypassed,
}
