//! TLS against a real TLS-only Redis (scripts/redis-env's, with a CA and a server certificate
//! for 127.0.0.1 made in the run): the connection verifies the server against the CA file it is
//! given, and refuses a server its CA did not sign.
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use tier_core::spi::Tier;
use tier_redis::{RedisConnection, RedisTier, SetupError};

/// The TLS server and the CAs, or `None` (said on stderr) with the Valkey flavour, whose build
/// has no TLS. Panics when they are missing otherwise: Redis tests never skip silently.
fn tls_server() -> Option<(String, PathBuf, PathBuf)> {
    let Ok(url) = std::env::var("TIER_TEST_REDIS_TLS_URL") else {
        let flavor = std::env::var("TIER_TEST_REDIS_FLAVOR").unwrap_or_default();
        assert_eq!(
            flavor, "valkey",
            "TIER_TEST_REDIS_TLS_URL is not set: run the tests through scripts/test, or start \
             servers with `scripts/redis-env start DIR` and `source DIR/env`"
        );
        eprintln!("not run: the {flavor} flavour of scripts/redis-env has no TLS server");
        return None;
    };
    let ca = std::env::var("TIER_TEST_REDIS_TLS_CA").expect("TIER_TEST_REDIS_TLS_CA");
    let other =
        std::env::var("TIER_TEST_REDIS_TLS_OTHER_CA").expect("TIER_TEST_REDIS_TLS_OTHER_CA");
    // What the application does at start (the crate docs say so).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Some((url, ca.into(), other.into()))
}

#[tokio::test]
async fn a_connection_verified_against_the_ca_file_works() {
    let Some((url, ca, _)) = tls_server() else { return };
    let conn = RedisConnection::standalone(&url).tls_ca_file(&ca).connect().await.unwrap();
    let tier = RedisTier::builder(conn).prefix(unique_prefix("tls")).build().await.unwrap();
    tier.insert(key("k"), entry("over TLS", 60_000, 60_000)).await.unwrap();
    let got = tier.get(b"k").await.unwrap();
    assert_eq!(value_of(got.entry().expect("a hit")), "over TLS");
}

#[tokio::test]
async fn a_server_the_ca_did_not_sign_is_refused() {
    let Some((url, _, other)) = tls_server() else { return };
    for builder in [
        RedisConnection::standalone(&url).tls_ca_file(&other),
        // The system's trust store does not know the run's CA either.
        RedisConnection::standalone(&url),
    ] {
        let err = builder.connect().await.expect_err("not verified");
        assert!(matches!(err, SetupError::Connect { .. }), "{err:?}");
        let text = err.to_string();
        eprintln!("refused: {text}");
        assert!(text.contains("rediss://127.0.0.1") && !text.contains('\n'), "{text}");
    }
}

#[tokio::test]
async fn ca_files_that_cannot_be_used_are_setup_errors() {
    let Some((url, _, _)) = tls_server() else { return };
    let dir = std::env::temp_dir().join(unique_prefix("tls-ca").replace(':', "-"));
    std::fs::create_dir_all(&dir).unwrap();
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    for (path, says) in [(dir.join("missing.pem"), "cannot read"), (not_pem, "no certificate")] {
        let err = RedisConnection::standalone(&url).tls_ca_file(&path).connect().await.unwrap_err();
        assert!(matches!(err, SetupError::Config(_)), "{err:?}");
        assert!(err.to_string().contains(says), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Client-side caching over TLS: the tracking connection (RESP3, made from the same URL and CA)
/// proves delivery and reports another client's write.
#[tokio::test]
async fn client_side_caching_works_over_tls() {
    use tier_core::spi::{Backplane, BackplaneEvent, Invalidation};
    let Some((url, ca, _)) = tls_server() else { return };
    let conn = RedisConnection::standalone(&url).tls_ca_file(&ca).connect().await.unwrap();
    let prefix = unique_prefix("tls-csc");
    let tracked = RedisTier::builder(conn.clone()).prefix(&prefix).build().await.unwrap();
    let other = RedisTier::builder(conn.clone()).prefix(&prefix).build().await.unwrap();
    let backplane = tier_redis::RedisBackplane::builder(conn)
        .stream(format!("{prefix}log"))
        .track("users", &tracked)
        .build()
        .await
        .unwrap();
    let mut rx = backplane.subscribe();
    other.insert(key("k"), entry("v", 60_000, 60_000)).await.unwrap();
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv())
            .await
            .expect("events over TLS")
            .unwrap();
        match ev {
            BackplaneEvent::Confirmed { .. } => {}
            BackplaneEvent::Invalidate {
                what: Invalidation::Written { key, created_at }, ..
            } => {
                assert_eq!(&key[..], b"k");
                assert_eq!(created_at, u64::MAX, "another client's write");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A proof needs the tracking connection's too: it proves over TLS.
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv()).await;
        if matches!(ev.expect("a proof of delivery").unwrap(), BackplaneEvent::Confirmed { .. }) {
            break;
        }
    }
}
