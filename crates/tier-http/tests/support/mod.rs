//! What the tests of the layer share: an axum app with the layer on a free loopback port,
//! hyper's client, an origin that counts its calls per path.
#![allow(dead_code)] // each test binary uses a part

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tier::{Cache, MemoryTier, TierPolicy};
use tier_http::{HttpCacheLayer, HttpEntry};
use tokio::sync::{Notify, Semaphore};

/// The origin's state: calls per path, a gate the slow route waits on, a switch that makes
/// the flaky routes fail.
pub struct Origin {
    calls: Mutex<HashMap<String, usize>>,
    called: Notify,
    pub gate: Semaphore,
    pub failing: AtomicBool,
}

impl Default for Origin {
    fn default() -> Self {
        Self {
            calls: Mutex::default(),
            called: Notify::new(),
            gate: Semaphore::new(0),
            failing: AtomicBool::new(false),
        }
    }
}

impl Origin {
    pub fn count(&self, path: &str) -> usize {
        let mut calls = self.calls.lock().expect("not poisoned");
        let n = calls.entry(path.to_owned()).or_default();
        *n += 1;
        self.called.notify_waiters();
        *n
    }

    pub fn calls(&self, path: &str) -> usize {
        self.calls.lock().expect("not poisoned").get(path).copied().unwrap_or(0)
    }

    /// Wait until `path` was called `n` times (the origin signals each call).
    pub async fn called(&self, path: &str, n: usize) {
        let wait = async {
            loop {
                let notified = self.called.notified();
                if self.calls(path) >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait).await.expect("the origin was called");
    }
}

pub type Shared = State<Arc<Origin>>;

pub fn with(cc: &'static str, n: usize, what: &str) -> Response {
    ([("cache-control", cc)], format!("{what} {n}")).into_response()
}

pub fn app(origin: Arc<Origin>, layer: HttpCacheLayer) -> Router {
    Router::new()
        .route("/plain", get(|State(o): Shared| async move { with("max-age=60", o.count("/plain"), "plain") }))
        .route("/head", get(|State(o): Shared| async move { with("max-age=60", o.count("/head"), "head") }))
        .route("/aged", get(|State(o): Shared| async move {
            let n = o.count("/aged");
            ([("cache-control", "max-age=600"), ("age", "100")], format!("aged {n}")).into_response()
        }))
        .route("/no-store", get(|State(o): Shared| async move { with("no-store, max-age=60", o.count("/no-store"), "ns") }))
        .route("/private", get(|State(o): Shared| async move { with("private, max-age=60", o.count("/private"), "p") }))
        .route("/zero", get(|State(o): Shared| async move { with("max-age=0", o.count("/zero"), "zero") }))
        .route("/created", get(|State(o): Shared| async move {
            (StatusCode::CREATED, with("max-age=60", o.count("/created"), "created"))
        }))
        .route("/vary", get(|State(o): Shared, headers: HeaderMap| async move {
            let n = o.count("/vary");
            let lang = headers.get("accept-language").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
            ([("cache-control", "max-age=60"), ("vary", "Accept-Language")], format!("{lang} {n}")).into_response()
        }))
        .route("/flaky", get(|State(o): Shared| async move {
            let n = o.count("/flaky");
            if o.failing.load(Ordering::SeqCst) {
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("down {n}")).into_response();
            }
            with("max-age=0, stale-if-error=60", n, "flaky")
        }))
        .route("/etag", get(|State(o): Shared, headers: HeaderMap| async move {
            let n = o.count("/etag");
            if headers.contains_key("if-none-match") {
                return (StatusCode::NOT_MODIFIED, "the origin saw the validator").into_response();
            }
            ([("cache-control", "max-age=60"), ("etag", "\"v1\"")], format!("etag {n}")).into_response()
        }))
        .route("/swr", get(|State(o): Shared| async move { with("max-age=0, stale-while-revalidate=60", o.count("/swr"), "swr") }))
        .route("/big", get(|State(o): Shared| async move {
            o.count("/big");
            ([("cache-control", "max-age=60")], vec![b'x'; 100_000]).into_response()
        }))
        .route("/big-stream", get(|State(o): Shared| async move {
            o.count("/big-stream");
            let chunks = (0..10).map(|i| Ok::<_, Infallible>(Bytes::from(vec![b'a' + i; 10_000])));
            let body = Body::from_stream(futures::stream::iter(chunks));
            ([("cache-control", "max-age=60")], body).into_response()
        }))
        .route("/slow-stale", get(|State(o): Shared| async move {
            let n = o.count("/slow-stale");
            let _permit = o.gate.acquire().await.expect("the gate stays open");
            with("max-age=0, stale-if-error=60", n, "slow-stale")
        }))
        .route("/slow", get(|State(o): Shared| async move {
            let n = o.count("/slow");
            let _permit = o.gate.acquire().await.expect("the gate stays open");
            with("max-age=60", n, "slow")
        }))
        .with_state(origin)
        .layer(layer)
}

pub struct Server {
    pub addr: SocketAddr,
    pub origin: Arc<Origin>,
    pub cache: Cache<HttpEntry>,
    pub layer: HttpCacheLayer,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The app with the layer (body limit 64 KiB) on a free loopback port.
pub async fn serve() -> Server {
    serve_app(app).await
}

pub fn keep() -> TierPolicy {
    TierPolicy::fresh(Duration::from_secs(3600))
}

pub fn memory() -> MemoryTier {
    MemoryTier::builder().max_bytes(16 << 20).build()
}

/// An app built by `make` with the layer on a free loopback port.
pub async fn serve_app(make: impl FnOnce(Arc<Origin>, HttpCacheLayer) -> Router) -> Server {
    let cache = Cache::builder("http").tier(memory(), keep()).build().expect("a valid cache");
    serve_cache(cache, make).await
}

/// An app built by `make` with the layer over `cache` on a free loopback port.
pub async fn serve_cache(
    cache: Cache<HttpEntry>,
    make: impl FnOnce(Arc<Origin>, HttpCacheLayer) -> Router,
) -> Server {
    let origin = Arc::new(Origin::default());
    let layer = HttpCacheLayer::new(cache.clone()).max_body_bytes(64 << 10);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = listener.local_addr().expect("bound");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = make(origin.clone(), layer.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    Server { addr, origin, cache, layer, client, stop: Some(stop), task: Some(task) }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn age(&self) -> u64 {
        self.header("age").parse().expect("an Age header")
    }
}

impl Server {
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request(method, &format!("http://{}{path}", self.addr), headers).await
    }

    /// A GET of `uri` (another server's) through this server's client.
    pub async fn send_to(&self, uri: &str, headers: &[(&str, &str)]) -> Reply {
        self.request("GET", uri, headers).await
    }

    async fn request(&self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).expect("a valid request");
        let response = self.client.request(req).await.expect("the server answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("a whole body").to_bytes();
        Reply { status: parts.status, headers: parts.headers, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, &[]).await
    }

    /// The cache key of a GET of `path` as the layer builds it (hyper's client sends `Host`).
    pub fn key(&self, path: &str) -> Bytes {
        self.cache.key(format!("GET {} {path}", self.addr))
    }

    /// Turn the memory tier off once the tier below holds the response to a GET of `path` (a
    /// load writes the tiers below after it answered).
    pub async fn memory_off_once_below(&self, path: &str) {
        assert!(self.cache.set_tier_enabled("memory", false));
        let key = self.key(path);
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.cache.get(&key).await.is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the tier below holds the response");
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the server task ends");
        }
    }
}
