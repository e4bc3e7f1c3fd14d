//! A fault-injecting TCP proxy between the nodes and a cache Redis server: it can delay every
//! reply (latency, not a bandwidth cap: each chunk leaves `delay` after it arrived) and drop
//! every connection, refusing new ones until told to accept again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Context, HarnessError};

struct State {
    upstream: SocketAddr,
    delay_ms: AtomicU64,
    refuse: AtomicBool,
    /// Moves on at every drop: every connection of an older generation ends.
    cut: watch::Sender<u64>,
}

/// A proxy on a free loopback port; its tasks end when it is dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self, HarnessError> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.context(|| "bind a proxy port".into())?;
        let addr = listener.local_addr().context(|| "the proxy's address".into())?;
        let state = Arc::new(State {
            upstream,
            delay_ms: AtomicU64::new(0),
            refuse: AtomicBool::new(false),
            cut: watch::channel(0).0,
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Delay every server → client chunk by `delay` (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Close every connection; with `refuse`, new ones too until [`FaultProxy::accept`].
    pub fn drop_all(&self, refuse: bool) {
        self.state.refuse.store(refuse, Ordering::SeqCst);
        self.state.cut.send_modify(|g| *g += 1);
    }

    /// Accept connections again.
    pub fn accept(&self) {
        self.state.refuse.store(false, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.cut.send_modify(|g| *g += 1);
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if state.refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(state.upstream).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let generation = *state.cut.borrow();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = pipe(cr, sw, None, state.cut.subscribe(), generation);
            let down = pipe(sr, cw, Some(state.clone()), state.cut.subscribe(), generation);
            tokio::join!(up, down);
        });
    }
}

/// Copy `from` to `to` until either side closes or the connection is cut; with `delayed`,
/// each chunk is written its state's delay after it was read.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delayed: Option<Arc<State>>,
    mut cut: watch::Receiver<u64>,
    generation: u64,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    // Each half moves into its future: when the reader ends, the writer drains and closes.
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let delay = delayed.as_ref().map_or(0, |s| s.delay_ms.load(Ordering::SeqCst));
            let due = Instant::now() + Duration::from_millis(delay);
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let cut_off = async {
        while *cut.borrow_and_update() == generation {
            if cut.changed().await.is_err() {
                return;
            }
        }
    };
    // The cut first: nothing that arrives after a drop is forwarded.
    tokio::select! {
        biased;
        _ = cut_off => {}
        _ = async { tokio::join!(read, write) } => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An echo server on a free loopback port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Send `ping` and read it back; `None` when the connection is closed.
    async fn round_trip(s: &mut TcpStream) -> Option<Duration> {
        let start = std::time::Instant::now();
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.ok()?;
        assert_eq!(&buf, b"ping");
        Some(start.elapsed())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_proxy_forwards_delays_replies_and_drops_connections() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let to_proxy = || TcpStream::connect(("127.0.0.1", proxy.port()));
        let mut s = to_proxy().await.unwrap();
        assert!(round_trip(&mut s).await.is_some());

        proxy.set_delay(Duration::from_millis(200));
        let slow = round_trip(&mut s).await.unwrap();
        assert!(slow >= Duration::from_millis(200), "{slow:?}");
        proxy.set_delay(Duration::ZERO);
        assert!(round_trip(&mut s).await.unwrap() < Duration::from_millis(200));

        proxy.drop_all(true);
        assert!(round_trip(&mut s).await.is_none(), "the open connection is dropped");
        let mut refused = to_proxy().await.unwrap();
        assert!(round_trip(&mut refused).await.is_none(), "a new one is closed at once");
        proxy.accept();
        let mut again = to_proxy().await.unwrap();
        assert!(round_trip(&mut again).await.is_some());
    }
}
