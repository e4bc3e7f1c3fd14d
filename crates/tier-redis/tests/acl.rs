//! A Redis user restricted by ACL to the cache's key prefixes and stream, with exactly the
//! rules of `tier_redis::acl`: the tier, generations, lock and backplane work with them, on a
//! standalone server and on a Cluster; a user that lacks one of them gets an error that names
//! what is missing. (Users are created on the test run's servers under unique names, on every
//! node of the Cluster, and deleted at the end.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tier_core::spi::{Backplane, DistributedLock, GenerationStore, Invalidation, Tier};
use tier_redis::{acl, RedisBackplane, RedisConnection, RedisGenerations, RedisLock, RedisTier};

/// ACL users of the test, deleted from every node when dropped (also when a test fails).
struct AclUser {
    name: String,
    password: String,
    nodes: Vec<String>,
}

impl AclUser {
    /// A user on every node of `nodes` with these rules.
    async fn create(nodes: &[String], rules: &[String]) -> Self {
        let name = unique_prefix("acl").replace(':', "-").trim_end_matches('-').to_string();
        let password = format!("pw-{}", rand::random::<u64>());
        for url in nodes {
            let mut c = raw(url).await;
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&name)
                .arg("on")
                .arg(format!(">{password}"))
                .arg(rules)
                .query_async(&mut c)
                .await
                .unwrap_or_else(|e| panic!("ACL SETUSER {rules:?} on {url}: {e}"));
        }
        Self { name, password, nodes: nodes.to_vec() }
    }

    /// `url` with this user's credentials.
    fn url(&self, url: &str) -> String {
        url.replacen("redis://", &format!("redis://{}:{}@", self.name, self.password), 1)
    }

    fn connection(&self, mode: Mode) -> tier_redis::RedisConnectionBuilder {
        match mode {
            Mode::Standalone => RedisConnection::standalone(self.url(&self.nodes[0])),
            Mode::Cluster => RedisConnection::cluster(self.nodes.iter().map(|u| self.url(u))),
        }
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        for url in &self.nodes {
            // A plain connection, outside the test's runtime (which may be gone).
            if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
                let _: redis::RedisResult<()> =
                    redis::cmd("ACL").arg("DELUSER").arg(&self.name).query(&mut c);
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Standalone,
    Cluster,
}

fn nodes(mode: Mode) -> Vec<String> {
    match mode {
        Mode::Standalone => vec![standalone_url()],
        Mode::Cluster => cluster_urls(),
    }
}

/// The key prefixes and backplane stream of one cache of the test.
struct Names {
    data: String,
    generations: String,
    locks: String,
    stream: String,
}

impl Names {
    fn new(name: &str) -> Self {
        let base = unique_prefix(name);
        Self {
            data: format!("{base}data:"),
            generations: format!("{base}gen:"),
            locks: format!("{base}lock:"),
            stream: format!("{base}log"),
        }
    }

    fn rules(&self) -> Vec<String> {
        acl::rules(&[&self.data, &self.generations, &self.locks, &self.stream], &[])
    }
}

async fn works_with_exactly_the_documented_rules(mode: Mode) {
    let names = Names::new("acl-ok");
    let user = AclUser::create(&nodes(mode), &names.rules()).await;
    let conn = user.connection(mode).connect().await.unwrap();

    // The tier: every operation, and the server figures of the background poller.
    let tier = RedisTier::builder(conn.clone()).prefix(&names.data).build().await.unwrap();
    tier.insert(key("a"), entry("A", 60_000, 60_000)).await.unwrap();
    tier.insert_many(vec![
        (key("b"), entry("B", 60_000, 60_000)),
        (key("c"), entry("C", 60_000, 60_000)),
    ])
    .await
    .unwrap();
    assert!(tier.get(b"a").await.unwrap().is_hit());
    let many = tier.get_many(&[key("a"), key("b"), key("c"), key("d")]).await.unwrap();
    assert_eq!(many.iter().filter(|l| l.is_hit()).count(), 3);
    tier.remove(b"a").await.unwrap();
    assert!(!tier.get(b"a").await.unwrap().is_hit());
    tier.clear().await.unwrap();
    assert!(!tier.get(b"b").await.unwrap().is_hit());
    assert_eq!(tier.pending_retries(), 0);
    if matches!(mode, Mode::Cluster) {
        assert_eq!(tier.node_breakers().len(), 3, "the topology was read");
    }

    // Generations, lock, backplane.
    let generations = RedisGenerations::new(conn.clone()).prefix(&names.generations);
    let tags = [std::sync::Arc::from("users")];
    let before = generations.stamp(&tags).await.unwrap();
    let bumped = generations.bump("users").await.unwrap();
    assert!(bumped > before[0]);
    assert_eq!(generations.current(&tags).await.unwrap(), [Some(bumped)]);
    assert_eq!(generations.raise_floor("acl", 7).await.unwrap(), 7);
    assert_eq!(generations.floor("acl").await.unwrap(), 7);
    let lock = RedisLock::new(conn.clone()).prefix(&names.locks);
    let token = lock.try_acquire(b"k", Duration::from_secs(5)).await.unwrap();
    lock.release(b"k", &token.expect("the lock is free")).await.unwrap();
    let a = RedisBackplane::builder(conn.clone()).stream(&names.stream).build().await.unwrap();
    let b = RedisBackplane::builder(user.connection(mode).connect().await.unwrap())
        .stream(&names.stream)
        .build()
        .await
        .unwrap();
    let mut rx = b.subscribe();
    let at = a.publish("acl", &Invalidation::Clear { at: 1 }).await.unwrap().expect("a position");
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        if matches!(event, tier_core::spi::BackplaneEvent::Invalidate { .. }) {
            break;
        }
    }
    assert!(b.replay(&at).await.is_ok(), "XRANGE and XINFO are allowed");

    // The server figures (INFO, DBSIZE) are read in the background: the stats are filled.
    eventually(Duration::from_secs(10), "server figures read", || async { tier.stats().bytes > 0 })
        .await;
}

#[tokio::test]
async fn standalone_works_with_exactly_the_documented_rules() {
    works_with_exactly_the_documented_rules(Mode::Standalone).await;
}

#[tokio::test]
async fn cluster_works_with_exactly_the_documented_rules() {
    works_with_exactly_the_documented_rules(Mode::Cluster).await;
}

async fn a_missing_permission_is_named(mode: Mode) {
    let names = Names::new("acl-missing");
    // No `get`: reads are refused, and the error says the command.
    let without_get: Vec<&str> = acl::COMMANDS.iter().copied().filter(|c| *c != "get").collect();
    let rules = acl::rules_with(&[&names.data], &[], &without_get);
    let user = AclUser::create(&nodes(mode), &rules).await;
    let tier = RedisTier::builder(user.connection(mode)).prefix(&names.data).build().await.unwrap();
    let e = tier.get(b"k").await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("ACL") && text.contains("'get'") && text.contains("+get"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    eprintln!("{mode:?}, no +get: {text}");

    // No `set`: writes (a script, whose refused call Redis does not name) are refused, and the
    // error says it is the ACL and what the tier needs.
    let without_set: Vec<&str> = acl::COMMANDS.iter().copied().filter(|c| *c != "set").collect();
    let rules = acl::rules_with(&[&names.data], &[], &without_set);
    let user = AclUser::create(&nodes(mode), &rules).await;
    let tier = RedisTier::builder(user.connection(mode)).prefix(&names.data).build().await.unwrap();
    let e = tier.insert(key("k"), entry("v", 60_000, 60_000)).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("ACL") && text.contains("+set"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    eprintln!("{mode:?}, no +set: {text}");

    // Keys of another prefix only: reads are refused, and the error names the key pattern.
    let other = Names::new("acl-elsewhere");
    let user = AclUser::create(&nodes(mode), &acl::rules(&[&other.data], &[])).await;
    let tier = RedisTier::builder(user.connection(mode)).prefix(&names.data).build().await.unwrap();
    let e = tier.get(b"k").await.unwrap_err();
    let text = e.to_string();
    let pattern = format!("~{}*", names.data);
    assert!(text.contains("ACL") && text.contains(&pattern), "{text}");
    eprintln!("{mode:?}, other keys: {text}");
}

#[tokio::test]
async fn standalone_a_missing_permission_is_named() {
    a_missing_permission_is_named(Mode::Standalone).await;
}

#[tokio::test]
async fn cluster_a_missing_permission_is_named() {
    a_missing_permission_is_named(Mode::Cluster).await;
}
