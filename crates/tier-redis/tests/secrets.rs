//! A planted Redis password never shows in anything this crate prints: errors (`Display` and
//! `Debug`), the `Debug` of every type, logs at TRACE (redis-rs's `log` records included) and
//! metrics — with the right password, a wrong one, a closed port, and a URL that does not parse.
//! One test: the tracing subscriber and the metrics recorder are global to this binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use metrics_util::debugging::DebuggingRecorder;
use tier_core::spi::DistributedLock;
use tier_core::{Cache, LockOptions, ReconnectPolicy, TierPolicy};
use tier_redis::{RedisBackplane, RedisConnection, RedisGenerations, RedisLock, RedisTier};

/// The password, with every character that ends a part of a URL.
const PASSWORD: &str = "pl4nted/S3cr@t:pw?#x";
/// The same, percent-encoded, as it stands in a URL that parses.
const ENCODED: &str = "pl4nted%2FS3cr%40t%3Apw%3F%23x";
/// Pieces that a redaction stopping at the wrong character would leave.
const PIECES: [&str; 4] = ["pl4nted", "S3cr", "t:pw", "%2FS3"];

/// Everything written to the log, shared with the subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The outputs in `printed` that show the password or a piece of it.
fn leaks(printed: &[(String, String)]) -> Vec<String> {
    let secrets = || [PASSWORD, ENCODED].into_iter().chain(PIECES);
    printed
        .iter()
        .filter(|(_, text)| secrets().any(|s| text.contains(s)))
        .map(|(what, text)| format!("{what}: {text}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_password_is_never_printed() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let mut server = OwnRedis::start_with(&["--requirepass", PASSWORD]);
    let right = format!("redis://default:{ENCODED}@127.0.0.1:{}/", server.port);
    let no_user = format!("redis://:{ENCODED}@127.0.0.1:{}/0", server.port);
    let closed = format!("redis://:{ENCODED}@127.0.0.1:{}/", free_port());
    let wrong = format!("redis://:{ENCODED}x@127.0.0.1:{}/", server.port);
    let unparsable = format!("redis://:{PASSWORD}@127.0.0.1:{}/", server.port);
    let mut printed: Vec<(String, String)> = Vec::new();
    let mut print = |what: &str, text: String| printed.push((what.to_string(), text));

    // The right password: every part of a hierarchy, in use.
    let builder = RedisConnection::standalone(right.clone()).connect_timeout(QUICK_CONNECT);
    print("connection builder", format!("{builder:?}"));
    let conn = builder.connect().await.unwrap();
    print("connection", format!("{conn:?}"));
    print("cluster builder", format!("{:?}", RedisConnection::cluster([right.clone(), no_user])));
    let tier_builder = RedisTier::builder(RedisConnection::standalone(right.clone()))
        .prefix(unique_prefix("secrets"));
    print("tier builder", format!("{tier_builder:?}"));
    let l3 = tier_builder.build().await.unwrap();
    print("tier", format!("{l3:?}"));
    let backplane_builder = RedisBackplane::builder(conn.clone()).channel(unique_prefix("chan"));
    print("backplane builder", format!("{backplane_builder:?}"));
    let backplane = backplane_builder.build().await.unwrap();
    print("backplane", format!("{backplane:?}"));
    let generations =
        RedisGenerations::new(conn.clone()).prefix(unique_prefix("gen")).cached_with(&backplane);
    print("generations", format!("{generations:?}"));
    let lock = RedisLock::new(conn.clone()).prefix(unique_prefix("lock"));
    print("lock", format!("{lock:?}"));
    let token = lock.try_acquire(b"k", Duration::from_secs(5)).await.unwrap().expect("free");
    lock.release(b"k", &token).await.unwrap();
    let cache: Cache<String> = Cache::builder("secrets")
        .tier(l3.clone(), TierPolicy::fresh(Duration::from_secs(60)))
        .generations(Arc::new(generations))
        .backplane(Arc::new(backplane), ReconnectPolicy::Clear)
        .distributed_lock(Arc::new(lock), LockOptions::default())
        .fleet_state_timeout(Duration::from_secs(2)) // the machine's load is not the subject
        .build()
        .unwrap();
    let key = cache.key("1");
    let got = cache
        .get_or_load(&key, || async { Ok::<_, std::io::Error>(Some("v".to_string())) })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("v"));
    cache.insert_with_tags(cache.key("2"), "w".to_string(), &["t"]).await.unwrap();
    cache.invalidate_tag("t").await.unwrap();
    cache.invalidate(&key).await.unwrap();

    // The server goes away under a running hierarchy: errors of running operations.
    server.kill();
    let err = cache.insert(cache.key("3"), "x".to_string()).await.expect_err("server down");
    print("insert error", format!("{err} / {err:?}"));
    let err = cache.invalidate_tag("t").await.expect_err("server down");
    print("invalidate_tag error", format!("{err} / {err:?}"));
    server.restart();

    // Errors at set-up.
    for (what, url) in [("wrong password", &wrong), ("closed port", &closed)] {
        let err = connect_quick_err(RedisConnection::standalone(url.clone())).await;
        print(what, format!("{err} / {err:?}"));
        let err = connect_quick_err(RedisConnection::cluster([url.clone()])).await;
        print(&format!("{what} (cluster)"), format!("{err} / {err:?}"));
        let err = RedisTier::builder(RedisConnection::standalone(url.clone()).lazy(false))
            .build()
            .await
            .expect_err(what);
        print(&format!("{what} (tier)"), format!("{err} / {err:?}"));
    }
    // By default a closed port is connected to in the background, after one log line (checked
    // below with the other logs).
    let background = RedisConnection::standalone(closed.clone())
        .connect_timeout(QUICK_CONNECT)
        .response_timeout(QUICK_RESPONSE)
        .connect()
        .await
        .expect("in the background");
    print("background connection", format!("{background:?}"));
    let err = RedisConnection::standalone(unparsable.clone()).connect().await.expect_err("parse");
    print("unparsable URL", format!("{err} / {err:?}"));
    let err = RedisConnection::cluster([unparsable]).connect().await.expect_err("parse");
    print("unparsable URL (cluster)", format!("{err} / {err:?}"));

    // One command through a cluster client, which always logs at TRACE (redis-rs's `log`
    // records): the check below that the logs were captured at TRACE does not hang on the
    // failed cluster connects above, which log at TRACE only now and then.
    let cluster =
        RedisTier::builder(RedisConnection::cluster(cluster_urls())).build().await.unwrap();
    tier_core::spi::Tier::get(&cluster, b"secrets-trace").await.unwrap();
    drop(cluster);

    drop(cache);
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("TRACE"), "the logs were captured at TRACE: {logs}");
    let metrics: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, unit, description, value)| {
            format!("{key:?} {unit:?} {description:?} {value:?}")
        })
        .collect();
    assert!(!metrics.is_empty(), "metrics were recorded");
    for line in logs.lines() {
        print("a log line", line.to_string());
    }
    print("the metrics", metrics.join("\n"));
    let leaks = leaks(&printed);
    assert!(leaks.is_empty(), "the password is shown by:\n{}", leaks.join("\n"));
}

async fn connect_quick_err(builder: tier_redis::RedisConnectionBuilder) -> tier_redis::SetupError {
    builder
        // Fail instead of connecting in the background: the errors' texts are what is checked.
        .lazy(false)
        .connect_timeout(QUICK_CONNECT)
        .response_timeout(QUICK_RESPONSE)
        .connect()
        .await
        .expect_err("must not connect")
}
