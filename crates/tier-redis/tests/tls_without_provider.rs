//! A `rediss://` URL in a process that installed no rustls `CryptoProvider` is a set-up error
//! that says what to do — not a panic inside rustls. (Its own test binary: the provider is
//! process-wide, and `tls.rs` installs one.)
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tier_redis::{RedisConnection, SetupError};

#[tokio::test]
async fn no_crypto_provider_is_a_clear_setup_error() {
    // No server needed: the check comes before any connection.
    let err = RedisConnection::standalone("rediss://127.0.0.1:1/").connect().await.unwrap_err();
    assert!(matches!(err, SetupError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("CryptoProvider"), "{err}");
}
