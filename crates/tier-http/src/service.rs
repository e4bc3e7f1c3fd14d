//! [`HttpCache`], the service: a request answered from the cache when a stored response may
//! answer it, else sent to the inner service from inside the cache's single flight, and every
//! response marked with `Cache-Status` (and `Age` when it comes from the cache).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION};
use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use tower::Service;

use crate::body::CacheBody;
use crate::conditional::Conditions;
use crate::directives::RequestDirectives;
use crate::entry::{CachedResponse, HttpEntry, Variants};
use crate::key;
use crate::origin::{self, gateway_timeout, now_ms, Answer, Exchange, Level, Mode, Origin};
use crate::policy::{self, Verdict};
use crate::shared::Shared;
use crate::status::{CacheStatus, CACHE_STATUS};

/// The service [`HttpCacheLayer`](crate::HttpCacheLayer) wraps around an inner one.
///
/// Ready at once: the inner service's readiness is awaited when a request is sent to it (which
/// may be in a task of the cache's own). Cloned per request, as axum does.
#[derive(Clone)]
pub struct HttpCache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> HttpCache<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

/// The future of [`HttpCache`]'s responses.
pub type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

impl<S, ReqB, ResB> Service<Request<ReqB>> for HttpCache<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let origin = Origin(self.inner.clone());
        let flow = Flow { shared: self.shared.clone(), _types: PhantomData };
        Box::pin(flow.respond(origin, req))
    }
}

/// What a load left to do: answer, or look at a variant's key.
enum Next<S, ReqB, B: Body, E> {
    Answer(Result<Response<CacheBody<B>>, E>),
    Variant(Variants, Origin<S>, Request<ReqB>),
}

/// One request's way through the layer: its steps, with the bounds they share.
struct Flow<S, ReqB, ResB> {
    shared: Arc<Shared>,
    _types: PhantomData<fn(S, ReqB) -> ResB>,
}

impl<S, ReqB, ResB> Clone for Flow<S, ReqB, ResB> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone(), _types: PhantomData }
    }
}

impl<S, ReqB, ResB> Flow<S, ReqB, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send,
{
    async fn respond(
        self,
        origin: Origin<S>,
        req: Request<ReqB>,
    ) -> Result<Response<CacheBody<ResB>>, S::Error> {
        let shared = &self.shared;
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return pass(shared, origin, req, CacheStatus::fwd("method")).await;
        }
        let directives = RequestDirectives::parse(req.headers());
        if directives.no_store {
            return pass(shared, origin, req, CacheStatus::fwd("request")).await;
        }
        // A response to a request with credentials is the requester's: not shared (RFC 9111 §3.5
        // allows it when the response says so; the layer does not).
        if req.headers().contains_key(AUTHORIZATION) {
            let status = CacheStatus::fwd("bypass").detail("authorization");
            return pass(shared, origin, req, status).await;
        }
        let mut req = req;
        let conditions = Conditions::take(req.headers_mut());
        let response = self.cached(origin, req, &directives).await?;
        Ok(conditions.apply(response))
    }

    /// A request the cache may answer (its validators taken out), answered.
    async fn cached(
        &self,
        origin: Origin<S>,
        req: Request<ReqB>,
        directives: &RequestDirectives,
    ) -> Result<Response<CacheBody<ResB>>, S::Error> {
        let shared = &self.shared;
        let head = req.method() == Method::HEAD;
        let url_id = key::url_id(&req, &shared.key_headers);
        let mut level = Level { key: shared.cache.key(&url_id), url_id, variants: None };
        let (mut origin, mut req) = (origin, req);
        loop {
            let found = shared.cache.get(&level.key).await;
            let next = match found.as_deref() {
                Some(HttpEntry::Variants(names)) if level.variants.is_none() => {
                    Next::Variant(names.clone(), origin, req)
                }
                Some(HttpEntry::Response(stored)) => {
                    let now = now_ms();
                    match policy::judge(stored, now, directives) {
                        Verdict::Fresh => {
                            let status = CacheStatus::hit(policy::ttl_seconds(stored, now));
                            return Ok(render(shared, stored, now, status, head));
                        }
                        Verdict::WhileRevalidate => {
                            self.revalidate(origin, req, level);
                            let status = CacheStatus::hit(policy::ttl_seconds(stored, now))
                                .detail("stale-while-revalidate");
                            return Ok(render(shared, stored, now, status, head));
                        }
                        Verdict::Stale => {
                            let stale = stored.clone();
                            self.load(origin, req, level.clone(), Mode::Refresh, Some(stale)).await
                        }
                    }
                }
                _ => self.load(origin, req, level.clone(), Mode::Miss, None).await,
            };
            match next {
                Next::Answer(answer) => return answer,
                Next::Variant(names, o, r) => {
                    let id = key::variant_id(&level.url_id, r.headers(), &names);
                    level = Level {
                        key: shared.cache.key(&id),
                        url_id: level.url_id,
                        variants: Some(names),
                    };
                    (origin, req) = (o, r);
                }
            }
        }
    }

    /// Send `req` through the cache's single flight of its key and answer with what came back.
    async fn load(
        &self,
        origin: Origin<S>,
        req: Request<ReqB>,
        level: Level,
        mode: Mode,
        stale: Option<CachedResponse>,
    ) -> Next<S, ReqB, ResB, S::Error> {
        let shared = &self.shared;
        let head = req.method() == Method::HEAD;
        let reason = match (mode, &level.variants) {
            (Mode::Refresh, _) => "stale",
            (Mode::Miss, None) => "miss",
            (Mode::Miss, Some(_)) => "vary-miss",
        };
        let at_url = level.variants.is_none();
        let exchange = Exchange::new(origin, req);
        let result = self.flight(&exchange, level, mode).await;
        let now = now_ms();
        let answer = match exchange.take_answer() {
            Some(answer) => answer,
            // The load of another request answered this one.
            None => match (result.as_ref().map(|e| e.as_deref()), exchange.take_request()) {
                (Ok(Some(HttpEntry::Response(r))), _) => {
                    let status = CacheStatus { collapsed: true, ..CacheStatus::fwd(reason) };
                    return Next::Answer(Ok(render(shared, r, now, status, head)));
                }
                (Ok(Some(HttpEntry::Variants(names))), Some((origin, req)))
                    if mode == Mode::Miss && at_url =>
                {
                    return Next::Variant(names.clone(), origin, req);
                }
                // Its answer was not for sharing: this request goes to the origin itself.
                (_, Some((origin, req))) => Answer::from_origin(origin.call(req).await),
                // This request's own load ended without an answer (it timed out).
                (_, None) => match stale.filter(|s| policy::servable_on_error(s, now)) {
                    Some(s) => {
                        let status = stale_status(&s, now, None);
                        return Next::Answer(Ok(render(shared, &s, now, status, head)));
                    }
                    None => {
                        let status = CacheStatus::fwd(reason).detail("load-timeout");
                        return Next::Answer(Ok(mark(shared, gateway_timeout(), status)));
                    }
                },
            },
        };
        Next::Answer(answered(shared, answer, reason, stale, now, head))
    }

    /// The cache's single flight of the level's key, whose loader is [`origin::load`].
    async fn flight(
        &self,
        exchange: &Arc<Exchange<S, ReqB, ResB, S::Error>>,
        level: Level,
        mode: Mode,
    ) -> Result<Option<Arc<HttpEntry>>, tier_core::CacheError> {
        let shared = &self.shared;
        let key = level.key.clone();
        let (s, ex) = (shared.clone(), exchange.clone());
        let loader = move || origin::load(s, ex, level, mode);
        match mode {
            Mode::Miss => shared.cache.get_or_load(&key, loader).await,
            Mode::Refresh => shared.cache.get_or_load_with(&key, &shared.reload, loader).await,
        }
    }

    /// Refresh the level's key in the background with this request (`stale-while-revalidate`):
    /// a task on the current Tokio runtime (none: no refresh, the next request past the window
    /// refreshes in the foreground).
    fn revalidate(&self, origin: Origin<S>, req: Request<ReqB>, level: Level) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let flow = self.clone();
        runtime.spawn(async move {
            let exchange = Exchange::new(origin, req);
            let _ = flow.flight(&exchange, level, Mode::Refresh).await;
        });
    }
}

impl<B: Body, E> Answer<B, E> {
    fn from_origin(result: Result<Response<B>, E>) -> Self {
        match result {
            Ok(response) => Self::Passed { response: response.map(CacheBody::origin), why: None },
            Err(e) => Self::Failed(e),
        }
    }
}

/// The response for a request whose load (or own call) answered `answer`: a stale stored one
/// instead of a failure when `stale-if-error` allows.
fn answered<B: Body, E>(
    shared: &Shared,
    answer: Answer<B, E>,
    reason: &'static str,
    stale: Option<CachedResponse>,
    now: u64,
    head: bool,
) -> Result<Response<CacheBody<B>>, E> {
    let failed = match &answer {
        Answer::Failed(_) => Some(None),
        Answer::Passed { response, .. } if policy::is_failure(response.status()) => {
            Some(Some(response.status().as_u16()))
        }
        _ => None,
    };
    if let (Some(fwd_status), Some(s)) = (failed, &stale) {
        if policy::servable_on_error(s, now) {
            return Ok(render(shared, s, now, stale_status(s, now, fwd_status), head));
        }
    }
    match answer {
        Answer::Stored { response, stored } => {
            let status = CacheStatus {
                fwd_status: Some(response.status()),
                stored,
                ..CacheStatus::fwd(reason)
            };
            Ok(render(shared, &response, now, status, head))
        }
        Answer::Passed { response, why } => {
            let mut status = CacheStatus {
                fwd_status: Some(response.status().as_u16()),
                ..CacheStatus::fwd(reason)
            };
            status.detail = why.map(|w| w.detail());
            Ok(mark(shared, response, status))
        }
        Answer::Failed(e) => Err(e),
    }
}

fn stale_status(stale: &CachedResponse, now: u64, fwd_status: Option<u16>) -> CacheStatus {
    CacheStatus {
        fwd_status,
        ttl: Some(policy::ttl_seconds(stale, now)),
        ..CacheStatus::fwd("stale")
    }
    .detail("stale-if-error")
}

/// Send `req` to the origin outside the cache and mark its response.
async fn pass<S, ReqB, ResB>(
    shared: &Shared,
    origin: Origin<S>,
    req: Request<ReqB>,
    status: CacheStatus,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    let response = origin.call(req).await?;
    Ok(mark(shared, response.map(CacheBody::origin), status))
}

/// A stored response as the answer: its status and headers, `Age`, `Cache-Status`, and its body
/// (none for a `HEAD` request).
fn render<B: Body>(
    shared: &Shared,
    stored: &CachedResponse,
    now: u64,
    status: CacheStatus,
    head: bool,
) -> Response<CacheBody<B>> {
    let (code, headers) = stored.head();
    let body = if head { Bytes::new() } else { stored.body().clone() };
    let mut response = Response::new(CacheBody::full(body));
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    response.headers_mut().insert(AGE, HeaderValue::from(stored.age(now).as_secs()));
    mark(shared, response, status)
}

/// Add the layer's member to the response's `Cache-Status` (after those of caches nearer the
/// origin).
fn mark<B>(shared: &Shared, mut response: Response<B>, status: CacheStatus) -> Response<B> {
    response.headers_mut().append(CACHE_STATUS, status.render(&shared.name));
    response
}
