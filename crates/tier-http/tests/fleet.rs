//! Two instances of a service — this test process and a child process — with the layer over
//! memory → Redis (one Redis server of the test's own): what one stored, the other answers
//! from Redis without calling its origin.
//!
//! The child re-executes this test binary (`--ignored --exact instance`, with
//! `TIER_HTTP_FLEET_REDIS` set): `instance` is ignored in a normal run, being only one part of
//! the fleet test. It prints the address it listens on and serves until its stdin closes.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use support::{app, keep, memory, serve_cache};
use tier::{Cache, RedisConnection, RedisTier};
use tier_http::{HttpCacheLayer, HttpEntry};
use tier_redis::testing::OwnRedis;

const REDIS_ENV: &str = "TIER_HTTP_FLEET_REDIS";

/// A cache over memory and the Redis at `url`.
async fn cache(url: &str) -> Cache<HttpEntry> {
    let connection = RedisConnection::standalone(url).connect().await.expect("Redis connects");
    let redis = RedisTier::builder(connection).build().await.expect("a Redis tier");
    Cache::builder("http").tier(memory(), keep()).tier(redis, keep()).build().expect("a cache")
}

/// The child process, killed by PID when dropped.
struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_second_instance_answers_from_redis_what_the_first_stored() {
    let redis = OwnRedis::start();
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe)
        .args(["--ignored", "--exact", "instance", "--nocapture", "--test-threads=1"])
        .env(REDIS_ENV, redis.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the second instance starts");
    let stdout = child.stdout.take().expect("its stdout");
    let other = Instance(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest's "test instance ... " may precede it on the line.
            if let Some((_, addr)) = line.split_once("LISTENING ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let s = serve_cache(cache(&redis.url()).await, app).await;
    let first = s.get("/aged").await;
    assert_eq!(first.header("cache-status"), "tier; fwd=miss; fwd-status=200; stored");
    s.memory_off_once_below("/aged").await;
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("the reader ends")
        .expect("the second instance listens");
    // The same request as the first one (the fleet is behind one name: the same Host).
    let host = s.addr.to_string();
    let uri = format!("http://{addr}/aged");
    let second = s.send_to(&uri, &[("host", host.as_str())]).await;
    assert!(
        second.header("cache-status").starts_with("tier; hit"),
        "{}",
        second.header("cache-status")
    );
    assert_eq!(
        second.text(),
        first.text(),
        "the first instance's response, not the second's origin"
    );
    assert!(second.age() >= 100);
    drop(other);
    s.stop().await;
}

/// The second instance (run by the fleet test only): its own origin answers otherwise.
#[tokio::test]
#[ignore = "a part of a_second_instance_answers_from_redis_what_the_first_stored"]
async fn instance() {
    let Ok(url) = std::env::var(REDIS_ENV) else { return };
    let layer = HttpCacheLayer::new(cache(&url).await);
    let app = Router::new()
        .route("/aged", get(|| async { ([("cache-control", "max-age=600")], "the second origin") }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    println!("LISTENING {}", listener.local_addr().expect("bound"));
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stdin_closed.await;
        })
        .await
        .expect("the second instance serves");
}
