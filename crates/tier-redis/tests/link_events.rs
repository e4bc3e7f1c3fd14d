//! The events of the link to Redis: a lost connection is one warning however many calls fail,
//! and its return one info. (A test binary of its own: `tracing` callsites that another test's
//! thread registers first, with no subscriber of its own, can miss a scoped one.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tier_core::spi::Tier;
use tier_redis::RedisConnection;

/// The level and message of each `tracing` event of target `tier`.
#[derive(Clone, Default)]
struct Said(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Said {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        if event.metadata().target() == "tier" {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(format!("{} {}", event.metadata().level(), message.0));
        }
    }
}

#[tokio::test]
async fn a_lost_connection_is_one_warning_and_its_return_one_info() {
    use tracing_subscriber::prelude::*;
    let said = Said::default();
    let _guard = tracing_subscriber::registry().with(said.clone()).set_default();
    let mut server = OwnRedis::start();
    let conn = connect_quick(RedisConnection::standalone(server.url())).await;
    let t = data_tier(&conn, &unique_prefix("link")).await;
    t.insert(key("k"), entry("v", 60_000, 60_000)).await.unwrap();

    server.kill();
    for _ in 0..5 {
        t.get(b"k").await.expect_err("server is down");
    }
    server.restart();
    eventually(Duration::from_secs(5), "tier answers again", || async {
        t.get(b"k").await.is_ok()
    })
    .await;
    t.get(b"k").await.unwrap();
    let said = said.0.lock().unwrap().clone();
    let lost: Vec<&String> = said.iter().filter(|l| l.contains("was lost")).collect();
    let back: Vec<&String> = said.iter().filter(|l| l.contains("is back")).collect();
    assert_eq!(lost.len(), 1, "one warning for five failed calls: {said:?}");
    assert!(lost[0].starts_with("WARN "), "{said:?}");
    assert_eq!(back.len(), 1, "{said:?}");
    assert!(back[0].starts_with("INFO "), "{said:?}");
}
