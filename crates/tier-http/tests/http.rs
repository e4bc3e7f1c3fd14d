//! The layer through real HTTP on loopback (the app and the origin: `support`).

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use http::StatusCode;
use support::{keep, memory, serve, serve_app, serve_cache, with, Server};
use tier::Cache;
use tier_http::HttpEntry;

#[tokio::test]
async fn a_hit_after_a_miss_calls_the_origin_once_and_says_so() {
    let s = serve().await;
    let first = s.get("/plain").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "plain 1");
    assert_eq!(first.header("cache-status"), "tier; fwd=miss; fwd-status=200; stored");
    let second = s.get("/plain").await;
    assert_eq!(second.text(), "plain 1");
    assert!(
        second.header("cache-status").starts_with("tier; hit; ttl="),
        "{}",
        second.header("cache-status")
    );
    assert_eq!(second.header("cache-control"), "max-age=60");
    assert!(second.age() <= 1);
    assert_eq!(s.origin.calls("/plain"), 1);
    s.stop().await;
}

#[tokio::test]
async fn age_counts_the_age_it_arrived_with_and_grows() {
    let s = serve().await;
    let first = s.get("/aged").await;
    assert_eq!(first.age(), 100, "answered from the store, with the origin's Age");
    // Age is in whole seconds: the time passing is what is tested.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = s.get("/aged").await;
    assert!(later.header("cache-status").contains("hit"));
    assert!(later.age() >= 101, "Age grew: {}", later.age());
    assert_eq!(s.origin.calls("/aged"), 1);
    s.stop().await;
}

#[tokio::test]
async fn no_store_private_max_age_zero_and_other_statuses_are_not_stored() {
    let s = serve().await;
    for (path, detail) in [
        ("/no-store", "no-store"),
        ("/private", "private"),
        ("/zero", "no-lifetime"),
        ("/created", "status"),
    ] {
        for n in 1..=2 {
            let r = s.get(path).await;
            assert!(r.text().ends_with(&format!(" {n}")), "{path}: the origin answered each time");
            assert!(
                r.header("cache-status").ends_with(&format!("detail={detail}")),
                "{path}: {}",
                r.header("cache-status")
            );
            assert!(r.headers.get("age").is_none(), "{path}: not from the store");
        }
        assert_eq!(s.origin.calls(path), 2, "{path}");
        assert!(s.cache.get(s.key(path)).await.is_none(), "{path}: nothing in the cache");
    }
    s.stop().await;
}

#[tokio::test]
async fn vary_on_a_header_keeps_two_entries() {
    let s = serve().await;
    let de = s.send("GET", "/vary", &[("accept-language", "de")]).await;
    let en = s.send("GET", "/vary", &[("accept-language", "en")]).await;
    assert_eq!((de.text().as_str(), en.text().as_str()), ("de 1", "en 2"));
    assert_eq!(de.header("cache-status"), "tier; fwd=miss; fwd-status=200; stored");
    assert_eq!(en.header("cache-status"), "tier; fwd=vary-miss; fwd-status=200; stored");
    let de = s.send("GET", "/vary", &[("accept-language", "de")]).await;
    let en = s.send("GET", "/vary", &[("accept-language", "en")]).await;
    assert_eq!((de.text().as_str(), en.text().as_str()), ("de 1", "en 2"));
    assert!(de.header("cache-status").contains("hit") && en.header("cache-status").contains("hit"));
    let none = s.get("/vary").await;
    assert_eq!(none.text(), "- 3", "a request without the header is a variant of its own");
    assert_eq!(s.origin.calls("/vary"), 3);
    match s.cache.get(s.key("/vary")).await.as_deref() {
        Some(HttpEntry::Variants(v)) => assert_eq!(v.names(), ["accept-language"]),
        other => panic!("the URL's entry names the Vary headers, not {other:?}"),
    }
    s.stop().await;
}

/// Invalidating a varying URL's key reaches its variants: they are keyed by the URL entry's
/// epoch, so the old ones are never found again — also when the purge and the reload come
/// within one tick of the clock (the epoch was the clock's instant: a reload in the same tick
/// made the same epoch, and the purged variant was served again; found by `scripts/test`).
#[tokio::test]
async fn invalidating_a_varying_url_drops_its_variants() {
    let s = serve().await;
    let de = [("accept-language", "de")];
    assert_eq!(s.send("GET", "/vary", &de).await.text(), "de 1");
    assert_eq!(s.send("GET", "/vary", &de).await.text(), "de 1");
    // The purge a service would make of the URL, whatever the variant; rounds in quick
    // succession, so that some fall within one clock tick.
    let purge = http::Request::get(format!("http://{}/vary", s.addr)).body(()).expect("a request");
    for round in 2..=30 {
        s.cache.invalidate(s.layer.key_for(&purge)).await.expect("invalidated");
        let fresh = format!("de {round}");
        assert_eq!(s.send("GET", "/vary", &de).await.text(), fresh, "round {round}");
        let again = s.send("GET", "/vary", &de).await;
        assert_eq!(again.text(), fresh, "the new variant, not one stored before the purge");
        assert!(again.header("cache-status").starts_with("tier; hit"));
    }
    s.stop().await;
}

/// A URL's `Variants` entry is written by its load while the variant is written beside it: the
/// variant's write must not cancel the URL's when their keys share a write stripe of the cache
/// (so many URLs that some do: about 4 % did, 256 stripes).
#[tokio::test]
async fn every_varying_url_keeps_its_variants_entry() {
    let s = serve().await;
    let mut lost = Vec::new();
    for i in 0..500 {
        let path = format!("/vary?i={i}");
        let r = s.send("GET", &path, &[("accept-language", "de")]).await;
        assert!(r.header("cache-status").ends_with("stored"), "{}", r.header("cache-status"));
        if !matches!(s.cache.get(s.key(&path)).await.as_deref(), Some(HttpEntry::Variants(_))) {
            lost.push(i);
        }
    }
    assert!(lost.is_empty(), "URLs whose Variants entry was not stored: {lost:?}");
    s.stop().await;
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_response_when_the_origin_returns_500() {
    let s = serve().await;
    let first = s.get("/flaky").await;
    assert_eq!(first.text(), "flaky 1");
    s.origin.failing.store(true, Ordering::SeqCst);
    let during = s.get("/flaky").await;
    assert_eq!(during.status, StatusCode::OK);
    assert_eq!(during.text(), "flaky 1");
    let status = during.header("cache-status");
    assert!(
        status.starts_with("tier; fwd=stale; fwd-status=500; ttl=")
            && status.ends_with("detail=stale-if-error"),
        "{status}"
    );
    assert_eq!(s.origin.calls("/flaky"), 2, "the origin was asked first");
    s.origin.failing.store(false, Ordering::SeqCst);
    let after = s.get("/flaky").await;
    assert_eq!(after.text(), "flaky 3");
    assert_eq!(after.header("cache-status"), "tier; fwd=stale; fwd-status=200; stored");
    s.stop().await;
}

#[tokio::test]
async fn stale_while_revalidate_answers_stale_and_refreshes_in_the_background() {
    let s = serve().await;
    assert_eq!(s.get("/swr").await.text(), "swr 1");
    let stale = s.get("/swr").await;
    assert_eq!(stale.text(), "swr 1", "answered at once with the stored response");
    assert!(
        stale.header("cache-status").ends_with("detail=stale-while-revalidate"),
        "{}",
        stale.header("cache-status")
    );
    s.origin.called("/swr", 2).await;
    // The refresh stores what it fetched (the insert ends before the flight does).
    let key = s.key("/swr");
    let stored = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(HttpEntry::Response(r)) = s.cache.get(&key).await.as_deref() {
                if r.body().as_ref() == b"swr 2" {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    });
    stored.await.expect("the refreshed response is stored");
    s.stop().await;
}

/// A purge made while a refresh waits for the origin holds: the refresh answers its request,
/// but what it fetched (sent before the purge) is not stored — the refresh's flight writes it
/// as a load does, and a load's write yields to an invalidation made while it ran.
#[tokio::test]
async fn a_purge_made_while_a_refresh_waits_for_the_origin_is_not_undone() {
    let s = Arc::new(serve().await);
    s.origin.gate.add_permits(1);
    assert_eq!(s.get("/slow-stale").await.text(), "slow-stale 1");
    // Stale by its own max-age=0: the next request refreshes it in the foreground.
    let refreshing = {
        let s = s.clone();
        tokio::spawn(async move { s.get("/slow-stale").await })
    };
    s.origin.called("/slow-stale", 2).await;
    s.cache.invalidate(s.key("/slow-stale")).await.expect("purged");
    // Not a synchronisation: the cache's clock moves on, so that a write after the purge is
    // not a tie with it (which the purge's tombstone would win anyway).
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.origin.gate.add_permits(1);
    assert_eq!(refreshing.await.expect("answered").text(), "slow-stale 2");
    assert!(
        s.cache.get(s.key("/slow-stale")).await.is_none(),
        "the response fetched before the purge was stored after it"
    );
    s.origin.gate.add_permits(1);
    let next = s.get("/slow-stale").await;
    assert_eq!(next.text(), "slow-stale 3", "the next request goes to the origin");
    Arc::try_unwrap(s).ok().expect("one owner left").stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_streams_through_uncached() {
    let s = serve().await;
    for _ in 0..2 {
        let big = s.get("/big").await;
        assert_eq!(big.body.len(), 100_000);
        assert!(big.header("cache-status").ends_with("detail=body-too-large"));
        let streamed = s.get("/big-stream").await;
        let expected: Vec<u8> = (0..10u8).flat_map(|i| vec![b'a' + i; 10_000]).collect();
        assert_eq!(streamed.body.as_ref(), expected.as_slice(), "the whole body, in order");
        assert!(streamed.header("cache-status").ends_with("detail=body-too-large"));
    }
    assert_eq!((s.origin.calls("/big"), s.origin.calls("/big-stream")), (2, 2));
    s.stop().await;
}

/// `N` concurrent GETs of `path` while the origin's gate is closed: once every one waits in
/// the cache's flight of the key, the gate opens; their bodies and `Cache-Status`es.
async fn burst(s: &Arc<Server>, path: &'static str) -> Vec<(String, String)> {
    let requests: Vec<_> = (0..N)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.get(path).await })
        })
        .collect();
    let key = s.key(path);
    tokio::time::timeout(Duration::from_secs(10), async {
        while s.cache.load_waiters(&key) < N {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("all requests joined one flight");
    s.origin.gate.add_permits(N);
    let mut replies = Vec::new();
    for r in requests {
        let r = r.await.expect("the request task ends");
        replies.push((r.text(), r.header("cache-status").to_owned()));
    }
    replies
}

const N: usize = 8;

fn count(replies: &[(String, String)], body: &str, status: &str) -> usize {
    replies.iter().filter(|(b, s)| b == body && s == status).count()
}

#[tokio::test]
async fn concurrent_requests_for_one_key_call_the_origin_once() {
    let s = Arc::new(serve().await);
    let replies = burst(&s, "/slow").await;
    assert_eq!(s.origin.calls("/slow"), 1);
    assert_eq!(
        count(&replies, "slow 1", "tier; fwd=miss; fwd-status=200; stored"),
        1,
        "{replies:?}"
    );
    assert_eq!(count(&replies, "slow 1", "tier; fwd=miss; collapsed"), N - 1, "{replies:?}");
    Arc::into_inner(s).expect("the last handle").stop().await;
}

/// A response stale by HTTP that the cache still holds is refreshed by one origin request
/// however many requests want it.
#[tokio::test]
async fn concurrent_requests_for_a_stale_response_refresh_it_once() {
    let s = Arc::new(serve().await);
    s.origin.gate.add_permits(1);
    assert_eq!(s.get("/slow-stale").await.text(), "slow-stale 1");
    // The permit came back when the origin answered: the gate is closed again.
    s.origin.gate.acquire().await.expect("the gate stays open").forget();
    let replies = burst(&s, "/slow-stale").await;
    assert_eq!(s.origin.calls("/slow-stale"), 2);
    let stored = "tier; fwd=stale; fwd-status=200; stored";
    assert_eq!(count(&replies, "slow-stale 2", stored), 1, "{replies:?}");
    let collapsed = "tier; fwd=stale; collapsed";
    assert_eq!(count(&replies, "slow-stale 2", collapsed), N - 1, "{replies:?}");
    Arc::into_inner(s).expect("the last handle").stop().await;
}

#[tokio::test]
async fn head_is_cached_on_its_own_and_answered_without_body() {
    let s = serve().await;
    let first = s.send("HEAD", "/head", &[]).await;
    let second = s.send("HEAD", "/head", &[]).await;
    assert_eq!((first.status, second.status), (StatusCode::OK, StatusCode::OK));
    assert!(first.body.is_empty() && second.body.is_empty());
    assert!(second.header("cache-status").contains("hit"), "{}", second.header("cache-status"));
    assert_eq!(s.origin.calls("/head"), 1);
    assert_eq!(s.get("/head").await.text(), "head 2", "GET is an entry of its own");
    s.stop().await;
}

#[tokio::test]
async fn methods_other_than_get_and_head_and_no_store_requests_pass_through() {
    let s = serve().await;
    let post = s.send("POST", "/plain", &[]).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.header("cache-status"), "tier; fwd=method");
    s.get("/plain").await;
    let bypass = s.send("GET", "/plain", &[("cache-control", "no-store")]).await;
    assert_eq!(
        (bypass.text().as_str(), bypass.header("cache-status")),
        ("plain 2", "tier; fwd=request")
    );
    let refresh = s.send("GET", "/plain", &[("cache-control", "no-cache")]).await;
    assert_eq!(refresh.text(), "plain 3");
    assert_eq!(refresh.header("cache-status"), "tier; fwd=stale; fwd-status=200; stored");
    assert_eq!(s.get("/plain").await.text(), "plain 3", "the refreshed response is stored");
    let auth = s.send("GET", "/plain", &[("authorization", "Bearer x")]).await;
    assert_eq!(auth.text(), "plain 4");
    s.stop().await;
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_response_when_the_origin_fails() {
    let s = serve_app(|origin, layer| {
        let o = origin.clone();
        let flaky = tower::service_fn(move |_req: http::Request<Body>| {
            let o = o.clone();
            async move {
                let n = o.count("/error");
                if o.failing.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other(format!("origin down {n}")));
                }
                Ok(with("max-age=0, stale-if-error=60", n, "error"))
            }
        });
        let service = tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(|e: std::io::Error| async move {
                (StatusCode::BAD_GATEWAY, e.to_string())
            }))
            .layer(layer)
            .service(flaky);
        Router::new().route_service("/error", service).with_state(origin)
    })
    .await;
    assert_eq!(s.get("/error").await.text(), "error 1");
    s.origin.failing.store(true, Ordering::SeqCst);
    let during = s.get("/error").await;
    assert_eq!((during.status, during.text().as_str()), (StatusCode::OK, "error 1"));
    let status = during.header("cache-status");
    assert!(
        status.starts_with("tier; fwd=stale; ttl=") && status.ends_with("detail=stale-if-error"),
        "{status}"
    );
    // Without a stored response the error is the answer.
    let miss = s.send("GET", "/error?other", &[]).await;
    assert_eq!((miss.status, miss.text().as_str()), (StatusCode::BAD_GATEWAY, "origin down 3"));
    s.stop().await;
}

#[tokio::test]
async fn a_conditional_request_fills_the_cache_and_is_answered_not_modified() {
    let s = serve().await;
    let first = s.send("GET", "/etag", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(first.status, StatusCode::NOT_MODIFIED, "answered by the layer");
    assert!(first.body.is_empty());
    assert_eq!(first.header("cache-status"), "tier; fwd=miss; fwd-status=200; stored");
    let whole = s.get("/etag").await;
    assert_eq!(
        (whole.status, whole.text().as_str()),
        (StatusCode::OK, "etag 1"),
        "the whole response was stored"
    );
    let again = s.send("GET", "/etag", &[("if-none-match", "W/\"v0\", \"v1\"")]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.header("cache-status").starts_with("tier; hit"));
    let other = s.send("GET", "/etag", &[("if-none-match", "\"v2\"")]).await;
    assert_eq!((other.status, other.text().as_str()), (StatusCode::OK, "etag 1"));
    assert_eq!(s.origin.calls("/etag"), 1);
    s.stop().await;
}

/// A load the cache gives up (its hard timeout) answers 504, or the stored response when
/// `stale-if-error` allows.
#[tokio::test]
async fn a_load_cut_off_by_the_hard_timeout_answers_504_or_stale() {
    let cache = Cache::builder("http")
        .tier(memory(), keep())
        .hard_timeout(Duration::from_millis(200))
        .build()
        .expect("a valid cache");
    let s = serve_cache(cache, support::app).await;
    let timed_out = s.get("/slow").await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(timed_out.header("cache-status"), "tier; fwd=miss; detail=load-timeout");
    s.origin.gate.add_permits(1);
    assert_eq!(s.get("/slow-stale").await.text(), "slow-stale 1");
    s.origin.gate.acquire().await.expect("the gate stays open").forget();
    let stale = s.get("/slow-stale").await;
    assert_eq!((stale.status, stale.text().as_str()), (StatusCode::OK, "slow-stale 1"));
    assert!(
        stale.header("cache-status").ends_with("detail=stale-if-error"),
        "{}",
        stale.header("cache-status")
    );
    s.stop().await;
}
