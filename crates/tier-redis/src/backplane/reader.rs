//! The backplane's reader: a connection of its own that follows the stream by polling it with
//! a non-blocking `XREAD`, delivering other instances' messages and proofs of delivery.
//!
//! Invariants:
//! - Every `XREAD` that returns with fewer entries than it asked for proves that everything
//!   appended before it was sent has been delivered: it records the stream's proof
//!   (`sent_at_ms` read just before sending; an `XADD` acknowledged before then was applied
//!   before the server read this command), and the backplane emits `Confirmed` for the
//!   instant every source has proven (the stream's alone unless client-side caching tracks).
//! - A read that returned all there was is followed by the next one after [`POLL`] (a read that
//!   filled its `COUNT` at once). So a proof is never older than `POLL` plus one round trip —
//!   whatever the server does with blocked clients: `XREAD BLOCK 20` was answered on an idle
//!   Redis 7.0 (`hz 10`) only at its next timer tick, 90–100 ms later, the lease δ itself, and
//!   the local entries of an idle instance flapped to stale. The cost is one cheap read per
//!   `POLL` per instance while the stream is quiet; a message is delivered within `POLL` plus
//!   a round trip.
//! - After a failed read (a lost connection, `CLIENT KILL`, a restart) the reader checks, before
//!   reading on, that nothing after its last delivered id was lost (epoch, trimming; see
//!   `log`); then it resumes from that id and nothing is missed. Only when it cannot does it
//!   emit `Gap` and go on from the stream's head.
//! - It starts at the position read when the backplane was built, or — when that could not be
//!   read (Redis down at start-up) — at the head once connected, with a `Gap` (what came
//!   meanwhile is unknown).

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::log::{self, Check, Position};
use super::shared::Shared;
use crate::commands;
use crate::connection::{Conn, RedisConnection};
use crate::metrics::{BACKPLANE_CONNECTED, BACKPLANE_RECONNECTS};

/// The pause after a read that returned all there was (so how often delivery is proven while
/// the stream is quiet, and the most a message waits before it is read).
pub(crate) const POLL: Duration = Duration::from_millis(10);
/// Entries per `XREAD`.
const COUNT: usize = 512;
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(super) async fn run(shared: Arc<Shared>, conn: RedisConnection, start: Option<Position>) {
    let mut position = start;
    let mut reader: Option<Conn> = None;
    // Set after a failure: check the log before reading on.
    let mut suspect = false;
    let mut backoff = MIN_BACKOFF;
    let channel = shared.keys.stream.clone();
    loop {
        let c = match &reader {
            Some(c) => c.clone(),
            None => match conn.dedicated().await {
                Ok(c) => {
                    reader = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::debug!(stream = %channel, error = %e, "backplane reader not connected; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let at = match (&position, suspect) {
            (Some(p), false) => p.clone(),
            (known, _) => match resume(&shared, &conn, known.as_ref()).await {
                Ok(p) => {
                    if suspect {
                        metrics::counter!(BACKPLANE_RECONNECTS, "channel" => channel.clone())
                            .increment(1);
                        shared.reconnected();
                    }
                    metrics::gauge!(BACKPLANE_CONNECTED, "channel" => channel.clone()).set(1.0);
                    suspect = false;
                    shared.set_epoch(&p.epoch);
                    position = Some(p.clone());
                    p
                }
                Err(e) => {
                    tracing::debug!(stream = %channel, error = %e, "backplane log not readable; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let sent_at = tier_core::spi::now_ms();
        // The epoch with every read (one round trip, one slot): a log lost under a connection
        // that stays up — a `FLUSHALL`, a Cluster master back without its data behind a client
        // that reconnected on its own — shows as a missing or changed epoch, never as an error.
        let mut pipe = redis::pipe();
        pipe.add_command(commands::xread(&channel, &at.id.to_string(), COUNT));
        pipe.add_command(commands::get(&shared.keys.epoch));
        let bound = Some(conn.op_timeout());
        let read = conn
            .bounded_by(bound, "backplane read", async {
                let mut c = c;
                pipe.query_async::<(Value, Option<String>)>(&mut c).await
            })
            .await
            .and_then(|(entries, epoch)| Ok((log::parse_read(entries)?, epoch)));
        match read {
            Ok((_, epoch)) if epoch.as_deref() != Some(at.epoch.as_str()) => {
                // What was read may be of another log: not delivered; the check before the
                // next read finds the loss (a gap) and goes on from the head.
                tracing::warn!(stream = %channel, "the backplane log's epoch is missing or changed under the reader");
                shared.error("epoch");
                suspect = true;
            }
            Ok((entries, _)) => {
                backoff = MIN_BACKOFF;
                let complete = entries.len() < COUNT;
                for (id, message) in entries {
                    shared.deliver(id, message.as_deref(), &at.epoch);
                    position = Some(Position { id, epoch: at.epoch.clone() });
                }
                if complete {
                    shared.stream_proven(sent_at);
                    tokio::time::sleep(POLL).await;
                }
            }
            Err(e) => {
                if !suspect {
                    metrics::gauge!(BACKPLANE_CONNECTED, "channel" => channel.clone()).set(0.0);
                    tracing::warn!(stream = %channel, error = %e, "backplane read failed; resuming from the last delivered entry");
                }
                shared.error("read");
                suspect = true;
                reader = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Where to read on after a failure or at the start: `known` if nothing after it was lost,
/// else the head (after emitting `Gap`).
async fn resume(
    shared: &Shared,
    conn: &RedisConnection,
    known: Option<&Position>,
) -> Result<Position, tier_core::TierError> {
    let Some(known) = known else {
        let head = log::head(conn, &shared.keys).await?;
        shared.gap("the backplane started without Redis: what was published meanwhile is unknown");
        return Ok(head);
    };
    match log::check(conn, &shared.keys, known).await? {
        Check::Intact => Ok(known.clone()),
        Check::Lost(head) => {
            shared.gap("backplane messages were lost (the stream was trimmed past this instance's position, or lost with its epoch)");
            Ok(head)
        }
    }
}
