//! A load: the request sent to the inner service (the origin) from inside the cache's single
//! flight, its response read up to the size limit, judged, and handed to the cache to store —
//! and, whatever happened, the answer for the caller whose request it was.
//!
//! The layer keeps responses for the tiers' lifetimes and judges their HTTP freshness itself.
//! A response that is stale by its own `max-age` while the cache still holds it fresh is
//! refreshed through a flight that loads whatever the tiers hold (`Shared::reload`, i.e.
//! `CallOptions::reload`: concurrent refreshes of a key still share one request), and the
//! flight writes what it loaded as any load does — the write yields to a purge of the key made
//! while the origin answered, so a refresh never puts back a purged response.
//!
//! **The one place that writes with `Cache::insert`**: when the response at a variant's key
//! varies otherwise now, the URL's entry (and the new variant) are inserted, and that load
//! returns nothing for its own flight to write. Such an insert, of another key than the
//! flight's, does not yield to an invalidation made while the origin answered (rare: the
//! origin changed its `Vary` meanwhile).
//!
//! A load never inserts while its own flight is to write: an insert moves its key's write
//! stripe on, and a flight whose key shares the stripe would then not write (the variant found
//! while loading a URL is stored by a load of its own instead).

use std::future::poll_fn;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::AGE;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use crate::body::{read_up_to, CacheBody, Read};
use crate::directives::RequestDirectives;
use crate::entry::{fresh_epoch, CachedResponse, HttpEntry, Variants};
use crate::key::{self, Vary};
use crate::policy::{self, NotStored, Verdict};
use crate::shared::Shared;

/// The inner service, called once it is ready.
pub(crate) struct Origin<S>(pub S);

impl<S> Origin<S> {
    pub async fn call<ReqB, ResB>(mut self, req: Request<ReqB>) -> Result<Response<ResB>, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>>,
    {
        poll_fn(|cx| self.0.poll_ready(cx)).await?;
        self.0.call(req).await
    }
}

/// What the caller whose request a load sent is answered with.
pub(crate) enum Answer<B: Body, E> {
    /// The response, stored (`stored`: the write was acknowledged or is the load's own).
    Stored { response: CachedResponse, stored: bool },
    /// The origin's response, not stored (`why`: `None` when it was not offered to the cache).
    Passed { response: Response<CacheBody<B>>, why: Option<NotStored> },
    /// The inner service failed.
    Failed(E),
}

/// One request's exchange with a load that may or may not run: the request waits here until
/// the load takes it (or the caller takes it back, when its load did not run), and the load
/// leaves the caller's answer here.
pub(crate) struct Exchange<S, ReqB, B: Body, E> {
    state: Mutex<State<S, ReqB, B, E>>,
}

enum State<S, ReqB, B: Body, E> {
    Waiting(Origin<S>, Request<ReqB>),
    Answered(Answer<B, E>),
    Empty,
}

impl<S, ReqB, B: Body, E> Exchange<S, ReqB, B, E> {
    pub fn new(origin: Origin<S>, req: Request<ReqB>) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State::Waiting(origin, req)) })
    }

    fn replace(&self, with: State<S, ReqB, B, E>) -> State<S, ReqB, B, E> {
        std::mem::replace(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()), with)
    }

    /// The request, if no load took it.
    pub fn take_request(&self) -> Option<(Origin<S>, Request<ReqB>)> {
        match self.replace(State::Empty) {
            State::Waiting(origin, req) => Some((origin, req)),
            other => {
                self.replace(other);
                None
            }
        }
    }

    /// The answer a load left.
    pub fn take_answer(&self) -> Option<Answer<B, E>> {
        match self.replace(State::Empty) {
            State::Answered(answer) => Some(answer),
            other => {
                self.replace(other);
                None
            }
        }
    }

    fn answer(&self, answer: Answer<B, E>) {
        self.replace(State::Answered(answer));
    }
}

/// How a load stores what it may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Nothing fresh in the cache: the flight's own write stores the entry it returns.
    Miss,
    /// The cache holds the key, stale by HTTP: the flight writes no tier; the entry is inserted.
    Refresh,
}

/// Where a request's response lives: the URL's key, or a variant's.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub url_id: Vec<u8>,
    pub key: Bytes,
    /// At a variant's key: the names its URL varies on.
    pub variants: Option<Variants>,
}

/// Why a load's answer is not the cache's to share (its error, for the waiters of the flight
/// that did not send the request: they send their own).
#[derive(Debug)]
pub(crate) struct NotShared;

impl std::fmt::Display for NotShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the origin's answer is not shared: not storable, or the origin failed")
    }
}

impl std::error::Error for NotShared {}

/// The load: send the waiting request, leave the caller's answer in `exchange`, and return what
/// the flight stores and hands its waiters (`Err(NotShared)`: nothing).
pub(crate) async fn load<S, ReqB, ResB>(
    shared: Arc<Shared>,
    exchange: Arc<Exchange<S, ReqB, ResB, S::Error>>,
    level: Level,
    mode: Mode,
) -> Result<Option<HttpEntry>, NotShared>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    let Some((origin, req)) = exchange.take_request() else { return Err(NotShared) };
    // Look again (the flight of a refresh reads no tier): a request that saw the stale response
    // before another's refresh stored the new one, and came to the flight after it ended, takes
    // the new one (the cache answers it as a collapsed request).
    if mode == Mode::Refresh {
        if let Some(HttpEntry::Response(stored)) = shared.cache.get(&level.key).await.as_deref() {
            let directives = RequestDirectives::parse(req.headers());
            if policy::judge(stored, now_ms(), &directives) == Verdict::Fresh {
                return Ok(Some(HttpEntry::Response(stored.clone())));
            }
        }
    }
    let request_headers = req.headers().clone();
    let response = match origin.call(req).await {
        Ok(response) => response,
        Err(e) => {
            exchange.answer(Answer::Failed(e));
            return Err(NotShared);
        }
    };
    let (parts, body) = response.into_parts();
    let pass = |body, why| Answer::Passed {
        response: Response::from_parts(parts.clone(), body),
        why: Some(why),
    };
    let (lifetimes, vary) = match policy::storable(&shared.rules, parts.status, &parts.headers) {
        Ok(storable) => storable,
        Err(why) => {
            exchange.answer(pass(CacheBody::origin(body), why));
            return Err(NotShared);
        }
    };
    let body = match read_up_to(body, &parts.headers, shared.max_body_bytes).await {
        Read::Whole(bytes) => bytes,
        Read::PassOn(body) => {
            exchange.answer(pass(body, NotStored::Body));
            return Err(NotShared);
        }
    };
    let generated_at = now_ms().saturating_sub(arrived_age_ms(&parts.headers));
    let response = CachedResponse::new(parts.status, &parts.headers, body, generated_at, lifetimes);
    let variant = |names: &Variants| {
        shared.cache.key(key::variant_id(&level.url_id, &request_headers, names))
    };
    let url_key = || shared.cache.key(&level.url_id);
    let insert = |key: Bytes, entry: HttpEntry| {
        let cache = shared.cache.clone();
        async move { cache.insert(key, entry).await.is_ok() }
    };
    // The variant found while loading its URL is stored by a load of its own (answered at
    // once; its key, of a new epoch, holds nothing), not an insert: an insert moves its key's
    // write stripe on, and when the URL's key shares it, the URL's flight would not write.
    let store_variant = |key: Bytes, entry: HttpEntry| {
        let cache = shared.cache.clone();
        async move {
            let load =
                cache.get_or_load(key, move || async move { Ok::<_, NotShared>(Some(entry)) });
            load.await.is_ok()
        }
    };
    // What the key being loaded holds: the response, or the names its URL varies on (the
    // response then under its variant's key).
    let entry = match (vary, &level.variants) {
        (Vary::None, None) => HttpEntry::Response(response.clone()),
        (Vary::Names(names), Some(known)) if names == known.names() => {
            HttpEntry::Response(response.clone())
        }
        (Vary::Names(names), None) => {
            let names = Variants::new(names, fresh_epoch());
            let stored =
                store_variant(variant(&names), HttpEntry::Response(response.clone())).await;
            if !stored {
                exchange.answer(Answer::Stored { response, stored });
                return Err(NotShared);
            }
            HttpEntry::Variants(names)
        }
        // At a variant's key, the response varies otherwise now: the URL's entry is replaced.
        (Vary::None, Some(_)) => {
            let stored = insert(url_key(), HttpEntry::Response(response.clone())).await;
            exchange.answer(Answer::Stored { response, stored });
            return Err(NotShared);
        }
        (Vary::Names(names), Some(_)) => {
            let names = Variants::new(names, fresh_epoch());
            let stored = insert(variant(&names), HttpEntry::Response(response.clone())).await
                && insert(url_key(), HttpEntry::Variants(names)).await;
            exchange.answer(Answer::Stored { response, stored });
            return Err(NotShared);
        }
        // `storable` refused these already.
        (Vary::Any, _) => {
            let body = CacheBody::full(response.body().clone());
            exchange.answer(pass(body, NotStored::VaryAny));
            return Err(NotShared);
        }
    };
    // The flight writes it (a miss's and a refresh's alike: the write yields to an insert or
    // invalidation of the key made while the origin answered).
    exchange.answer(Answer::Stored { response, stored: true });
    Ok(Some(entry))
}

/// The `Age` a response arrived with (from a cache before the origin), in ms.
fn arrived_age_ms(headers: &HeaderMap) -> u64 {
    headers
        .get(AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map_or(0, |s| s.saturating_mul(1000))
}

/// Now, in Unix ms.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A response the layer makes itself when the origin's answer is lost (the load timed out or
/// ended without one).
pub(crate) fn gateway_timeout<B: Body>() -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::full(Bytes::new()));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response
}
