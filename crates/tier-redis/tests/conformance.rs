//! RedisTier keeps the `Tier` contract (tier-core's conformance kit), on the standalone server
//! and on the Cluster; each check on a key prefix of its own, cleared after.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use tier_core::spi::Tier;
use tier_core::testing::conformance;
use tier_redis::{RedisConnection, RedisTier};

async fn keeps_the_contract(conn: RedisConnection, name: &str) {
    let made: Arc<Mutex<Vec<RedisTier>>> = Arc::default();
    let report = conformance::run(|| {
        let (conn, made) = (conn.clone(), made.clone());
        let prefix = common::unique_prefix(name);
        async move {
            let tier = common::data_tier(&conn, &prefix).await;
            made.lock().unwrap().push(tier.clone());
            tier
        }
    })
    .await;
    let made: Vec<RedisTier> = made.lock().unwrap().drain(..).collect();
    for tier in made {
        tier.clear().await.unwrap();
    }
    if let Err(violations) = report {
        panic!("{name}: {violations}");
    }
}

#[tokio::test]
async fn redis_tier_keeps_the_tier_contract_standalone() {
    let conn = RedisConnection::standalone(common::standalone_url()).connect().await.unwrap();
    keeps_the_contract(conn, "conformance").await;
}

#[tokio::test]
async fn redis_tier_keeps_the_tier_contract_on_a_cluster() {
    let conn = RedisConnection::cluster(common::cluster_urls()).connect().await.unwrap();
    keeps_the_contract(conn, "conformance-cluster").await;
}
