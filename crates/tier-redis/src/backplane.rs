//! [`RedisBackplane`]: invalidations between instances over Redis pub/sub.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tier_core::spi::{Backplane, BackplaneEvent, Invalidation, LogPosition};
use tier_core::TierError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::commands;
use crate::connection::{ConnectionSource, RedisConnection, Route};
use crate::error::{RedisCause, SetupError};
use crate::keys::DEFAULT_CHANNEL;
use crate::metrics::{
    BACKPLANE_CONNECTED, BACKPLANE_ERRORS, BACKPLANE_MESSAGES, BACKPLANE_RECONNECTS,
};
use crate::wire::{WireMessage, WireWhat};

/// Something in this crate that must see backplane events before the hierarchy does
/// (the generation cache).
pub(crate) trait EventHook: Send + Sync {
    fn on_event(&self, event: &BackplaneEvent);
}

/// Builds a [`RedisBackplane`]; see [`RedisBackplane::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisBackplaneBuilder {
    connection: ConnectionSource,
    channel: String,
    node_id: Option<String>,
    capacity: usize,
    ping_interval: Duration,
}

impl RedisBackplaneBuilder {
    /// The pub/sub channel; every instance of a service uses the same. Default:
    /// `"tier:invalidations"`.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// This instance's id, carried by its messages (so that it ignores its own). Default: 64
    /// random bits in hex.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Events buffered per subscriber before a slow one lags (and misses events), and publishes
    /// that may wait to be sent before `publish` waits too. Default: 4096.
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events;
        self
    }

    /// How often the subscription connection is checked with a `PING` (a dead peer that sends no
    /// RST is found this way). Default: 1 s.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Connect (unless given a connection), subscribe (waiting for the first subscription to be
    /// confirmed) and start the receive loop.
    pub async fn build(self) -> Result<RedisBackplane, SetupError> {
        if self.channel.is_empty() {
            return Err(SetupError::Config("the backplane channel name is empty".into()));
        }
        if self.capacity == 0 || self.ping_interval.is_zero() {
            return Err(SetupError::Config("capacity and ping interval must be positive".into()));
        }
        let conn = self.connection.connect().await?;
        let clients = conn.node_clients().to_vec();
        // Cluster: the first node that answers (any node relays every PUBLISH).
        let mut first = None;
        let mut last_error = None;
        for client in &clients {
            match subscribe(client, &self.channel, conn.op_timeout()).await {
                Ok(pubsub) => {
                    first = Some(pubsub);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some(first) = first else {
            let source = last_error.unwrap_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no node to subscribe on",
                ))
            });
            return Err(SetupError::Subscribe {
                channel: self.channel,
                source: RedisCause::new(source),
            });
        };
        crate::metrics::describe();
        let (tx, _) = broadcast::channel(self.capacity);
        let shared = Arc::new(Shared {
            channel: self.channel,
            node_id: self.node_id.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>())),
            tx,
            hooks: Mutex::new(Vec::new()),
            last_seq: Mutex::new(HashMap::new()),
            reconnects: AtomicU64::new(0),
        });
        metrics::gauge!(BACKPLANE_CONNECTED, "channel" => shared.channel.clone()).set(1.0);
        let task = tokio::spawn(receive_loop(
            shared.clone(),
            clients,
            first,
            conn.op_timeout(),
            self.ping_interval,
        ));
        let (outgoing, rx) = mpsc::channel(self.capacity);
        let publisher = tokio::spawn(publish_loop(shared.clone(), conn, rx));
        Ok(RedisBackplane {
            shared,
            outgoing,
            _tasks: Arc::new([AbortOnDrop(task), AbortOnDrop(publisher)]),
        })
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Shared {
    channel: String,
    node_id: String,
    tx: broadcast::Sender<BackplaneEvent>,
    hooks: Mutex<Vec<Weak<dyn EventHook>>>,
    /// Last sequence number seen per sender, to detect lost messages.
    last_seq: Mutex<HashMap<String, u64>>,
    reconnects: AtomicU64,
}

impl Shared {
    fn emit(&self, event: BackplaneEvent) {
        {
            let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
            hooks.retain(|h| match h.upgrade() {
                Some(h) => {
                    h.on_event(&event);
                    true
                }
                None => false,
            });
        }
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }

    fn error(&self, kind: &'static str) {
        metrics::counter!(BACKPLANE_ERRORS, "channel" => self.channel.clone(), "kind" => kind)
            .increment(1);
    }

    fn handle(&self, payload: &[u8]) {
        let msg: WireMessage = match rmp_serde::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                self.error("decode");
                tracing::warn!(channel = %self.channel, error = %e, "undecodable backplane message ignored");
                return;
            }
        };
        if msg.node == self.node_id {
            return;
        }
        let gap = {
            let mut last = self.last_seq.lock().unwrap_or_else(|p| p.into_inner());
            if last.len() > 10_000 && !last.contains_key(&msg.node) {
                last.clear();
            }
            let prev = last.insert(msg.node.clone(), msg.seq);
            prev.is_some_and(|p| msg.seq > p + 1)
        };
        if gap {
            // Lost messages: the same situation as a reconnect (local tiers are suspect).
            self.error("gap");
            tracing::warn!(
                channel = %self.channel, node = %msg.node,
                "backplane messages from a node were lost; local tiers are treated as suspect"
            );
            self.emit(BackplaneEvent::Gap);
        }
        metrics::counter!(BACKPLANE_MESSAGES, "channel" => self.channel.clone(), "direction" => "received")
            .increment(1);
        let what = msg.what.into_invalidation(tier_core::spi::now_ms());
        self.emit(BackplaneEvent::Invalidate { cache: msg.cache, what, position: None });
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeout: Duration,
) -> redis::RedisResult<redis::aio::PubSub> {
    let connecting = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribing took too long",
        ))),
    }
}

/// Pump messages until the subscription is lost (stream ends or a `PING` fails).
async fn pump(shared: &Shared, pubsub: redis::aio::PubSub, timeout: Duration, ping: Duration) {
    let (mut sink, mut stream) = pubsub.split();
    let mut ticker = tokio::time::interval(ping);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => shared.handle(msg.get_payload_bytes()),
                None => return,
            },
            _ = ticker.tick() => {
                let alive = tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await;
                if !matches!(alive, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// A message waiting to be published, with where to send the outcome.
struct Outgoing {
    cache: String,
    what: WireWhat,
    reply: oneshot::Sender<Result<(), TierError>>,
}

/// Most messages sent in one pipeline.
const MAX_BATCH: usize = 256;

/// Publishes in sequence-number order: one task takes what is waiting, numbers it and sends it
/// as one pipeline (a pipeline reaches one node in order), so receivers can tell a lost message
/// (a gap) from concurrent publishes. In a Cluster every pipeline goes to the same master (the
/// cluster bus keeps one node's messages in order, not those of two nodes); another one is picked
/// after a failure.
async fn publish_loop(
    shared: Arc<Shared>,
    conn: RedisConnection,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let mut seq: u64 = 0;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut node: Option<Route> = None;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let mut replies = Vec::with_capacity(batch.len());
        for out in batch.drain(..) {
            seq += 1;
            let msg = WireMessage {
                v: 1,
                node: shared.node_id.clone(),
                seq,
                cache: out.cache,
                what: out.what,
            };
            match rmp_serde::to_vec_named(&msg) {
                Ok(payload) => {
                    commands::publish(&mut pipe, &shared.channel, payload);
                    replies.push(out.reply);
                }
                Err(e) => {
                    seq -= 1;
                    let _ = out.reply.send(Err(TierError::new(
                        tier_core::TierErrorKind::Rejected,
                        format!("backplane message: {e}"),
                    )));
                }
            }
        }
        if replies.is_empty() {
            continue;
        }
        if node.is_none() {
            // The first master by address (`routes` are sorted); the server when standalone.
            node = conn.routes().await.ok().and_then(|routes| routes.into_iter().next());
        }
        let result = match &node {
            Some(route) => conn.pipe_on("publish", route, &pipe).await.map(drop),
            None => conn.query_pipe::<()>("publish", &pipe).await,
        };
        if result.is_err() {
            node = None;
        }
        match &result {
            Ok(()) => metrics::counter!(BACKPLANE_MESSAGES, "channel" => shared.channel.clone(), "direction" => "sent")
                .increment(replies.len() as u64),
            Err(_) => shared.error("publish"),
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

async fn receive_loop(
    shared: Arc<Shared>,
    clients: Vec<redis::Client>,
    first: redis::aio::PubSub,
    timeout: Duration,
    ping: Duration,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(20);
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let channel = shared.channel.clone();
    pump(&shared, first, timeout, ping).await;
    let mut node = 0usize;
    let mut backoff = MIN_BACKOFF;
    loop {
        metrics::gauge!(BACKPLANE_CONNECTED, "channel" => channel.clone()).set(0.0);
        tracing::warn!(channel = %channel, "backplane subscription lost; reconnecting");
        loop {
            // Cluster: any node relays every PUBLISH of the cluster; try them in turn.
            node = (node + 1) % clients.len();
            match subscribe(&clients[node], &channel, timeout).await {
                Ok(pubsub) => {
                    backoff = MIN_BACKOFF;
                    // Metrics first: whoever sees `reconnects()` move sees them counted too.
                    metrics::counter!(BACKPLANE_RECONNECTS, "channel" => channel.clone())
                        .increment(1);
                    metrics::gauge!(BACKPLANE_CONNECTED, "channel" => channel.clone()).set(1.0);
                    let n = shared.reconnects.fetch_add(1, Ordering::Release) + 1;
                    // A new baseline per sender: what was missed is covered by this event.
                    shared.last_seq.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    tracing::warn!(
                        channel = %channel, reconnects = n,
                        "backplane reconnected; invalidations may have been missed, local tiers are treated as suspect"
                    );
                    shared.emit(BackplaneEvent::Gap);
                    pump(&shared, pubsub, timeout, ping).await;
                    break;
                }
                Err(e) => {
                    tracing::debug!(channel = %channel, error = %e, "backplane reconnect failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Invalidations between the instances of a service, over a Redis pub/sub channel.
///
/// Invariants:
/// - Messages are MessagePack: format version, sender node id, sender sequence number (1, 2, …),
///   cache name and the [`Invalidation`]. An instance ignores its own messages.
/// - Subscription uses a dedicated connection (not the shared multiplexed one), watched by a
///   `PING` every `ping_interval`. When it is lost, a loop reconnects with backoff (20 ms up to
///   2 s); once subscribed again it emits [`BackplaneEvent::Gap`], increments
///   `tier_backplane_reconnects_total` and logs a warning.
/// - One task publishes, numbering messages as it sends them in one pipeline, so a sender's
///   messages arrive in sequence order. A gap in a sender's sequence numbers (a lost message,
///   e.g. a publish that failed) is counted (`tier_backplane_errors_total{kind="gap"}`), logged,
///   and also emitted as [`BackplaneEvent::Gap`]: the local tiers are suspect either way.
/// - Redis Cluster: `PUBLISH` goes through the cluster connection to any node, and the cluster
///   bus relays it to every node, so the subscription is a plain `SUBSCRIBE` on one node (the
///   configured node URLs in turn on reconnect). Sharded pub/sub is not used.
/// - Delivery is at most once (Redis pub/sub): the reconnect event is how an instance learns that
///   it may have missed something.
#[derive(Clone)]
pub struct RedisBackplane {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    _tasks: Arc<[AbortOnDrop; 2]>,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("channel", &self.shared.channel)
            .field("node_id", &self.shared.node_id)
            .finish()
    }
}

impl RedisBackplane {
    /// A builder publishing through `connection` — a [`RedisConnection`] or a
    /// [`RedisConnectionBuilder`](crate::RedisConnectionBuilder) that `build()` connects — and
    /// subscribing on a dedicated connection to the same server (or to one node of the same
    /// cluster).
    pub fn builder(connection: impl Into<ConnectionSource>) -> RedisBackplaneBuilder {
        RedisBackplaneBuilder {
            connection: connection.into(),
            channel: DEFAULT_CHANNEL.into(),
            node_id: None,
            capacity: 4096,
            ping_interval: Duration::from_secs(1),
        }
    }

    /// This instance's node id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// How many times the subscription was re-established.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Acquire)
    }

    pub(crate) fn add_hook(&self, hook: Weak<dyn EventHook>) {
        self.shared.hooks.lock().unwrap_or_else(|p| p.into_inner()).push(hook);
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(
        &self,
        cache: &str,
        what: &Invalidation,
    ) -> Result<Option<LogPosition>, TierError> {
        let Some(wire) = WireWhat::of(what) else {
            let why = format!("the backplane cannot send a {} invalidation", what.kind());
            return Err(TierError::new(tier_core::TierErrorKind::Other, why));
        };
        let (reply, answer) = oneshot::channel();
        let msg = Outgoing { cache: cache.to_string(), what: wire, reply };
        let closed =
            || TierError::new(tier_core::TierErrorKind::Unavailable, "backplane publisher stopped");
        self.outgoing.send(msg).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?.map(|()| None)
    }

    fn subscribe(&self) -> broadcast::Receiver<BackplaneEvent> {
        self.shared.tx.subscribe()
    }
}
