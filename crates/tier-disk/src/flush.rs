//! The background flusher of [`FlushPolicy::Periodic`](crate::FlushPolicy::Periodic).

use std::sync::{mpsc, Weak};
use std::time::Duration;

use crate::segment::Segments;
use crate::state::DiskState;

/// A thread that syncs dirty segments and the state file every `every`; it ends when the
/// returned sender is dropped or the tier is gone. It holds no lock and no strong reference
/// between rounds, so dropping the tier releases the directory at once.
pub(crate) fn spawn_flusher(
    segments: Weak<Segments>,
    state: Weak<DiskState>,
    every: Duration,
) -> std::io::Result<mpsc::Sender<()>> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::Builder::new().name("tier-disk-flush".into()).spawn(move || loop {
        match rx.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let (Some(segments), Some(state)) = (segments.upgrade(), state.upgrade()) else { return };
        for seg in segments.all() {
            if let Err(e) = seg.sync() {
                tracing::warn!(segment = seg.id, error = %e, "disk tier: periodic fsync failed");
            }
        }
        if let Err(e) = state.sync() {
            tracing::warn!(error = %e, "disk tier: periodic fsync of the state file failed");
        }
    })?;
    Ok(tx)
}
