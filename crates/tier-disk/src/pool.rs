//! [`ReadPool`]: a few threads that wait for the device on behalf of reads whose pages are not
//! in the page cache, fed through a bounded queue. A job that finds the queue full is refused
//! at once ([`Saturated`]), never queued without bound.

use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// The queue was full: the job was not started.
#[derive(Debug)]
pub(crate) struct Saturated;

type Job = Box<dyn FnOnce() + Send>;

/// The pool. Its threads end when it is dropped (after the job each one is doing).
pub(crate) struct ReadPool {
    tx: SyncSender<Job>,
}

impl ReadPool {
    /// Start `threads` threads; at most `queue` jobs wait beyond those running.
    pub fn start(threads: usize, queue: usize) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("tier-disk-read-{i}"))
                .spawn(move || work(&rx))?;
        }
        Ok(Self { tx })
    }

    /// Run `job` on a pool thread, or refuse it when every thread is busy and the queue full.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Saturated> {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Saturated),
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            // Poison only means another worker panicked while waiting; the receiver is intact.
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // the pool is gone
            }
        };
        job();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_full_pool_refuses_at_once_and_takes_jobs_again_once_free() {
        let pool = ReadPool::start(1, 1).expect("pool");
        let (started, has_started) = channel();
        let (release, released) = channel::<()>();
        pool.run(move || {
            started.send(()).expect("test waits");
            released.recv().expect("test releases");
        })
        .expect("the thread is free");
        has_started.recv().expect("the job runs");
        let (done, is_done) = channel();
        let d = done.clone();
        pool.run(move || d.send(1).expect("test waits")).expect("one may wait in the queue");
        assert!(pool.run(|| {}).is_err(), "thread busy and queue full: refused");
        release.send(()).expect("job waits");
        assert_eq!(is_done.recv().expect("the queued job runs"), 1);
        pool.run(move || done.send(2).expect("test waits")).expect("free again");
        assert_eq!(is_done.recv().expect("runs"), 2);
    }
}
