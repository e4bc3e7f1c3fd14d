//! The layer's response body — a stored body, or the origin's passed through (after the part
//! read while deciding whether to store it) — and the reading of an origin body up to the size
//! limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

/// The body of a response the layer answers: [`Body`] with `Bytes` data and the origin body's
/// error.
pub struct CacheBody<B: Body> {
    kind: Kind<B>,
}

impl<B: Body> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Origin { .. } => "origin",
            Kind::Done => "done",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

// No field is pinned in place (the origin's body is pinned in its box), so the body moves
// freely whatever `B` and its error are.
impl<B: Body> Unpin for CacheBody<B> {}

enum Kind<B: Body> {
    /// A whole body in memory (stored, or read whole from the origin).
    Full(Option<Bytes>),
    /// The origin's body: what was read of it first, then the rest as it comes, then the
    /// trailers read first, then (when reading it failed) its error.
    Origin {
        read: Option<Bytes>,
        rest: Option<Pin<Box<B>>>,
        trailers: Option<HeaderMap>,
        error: Option<B::Error>,
    },
    /// Nothing: a full body already given out, or an origin body with nothing after it.
    Done,
}

impl<B: Body> CacheBody<B> {
    /// A body of these bytes.
    pub(crate) fn full(bytes: Bytes) -> Self {
        Self { kind: Kind::Full(Some(bytes).filter(|b| !b.is_empty())) }
    }

    /// The origin's body untouched.
    pub(crate) fn origin(body: B) -> Self {
        Self {
            kind: Kind::Origin {
                read: None,
                rest: Some(Box::pin(body)),
                trailers: None,
                error: None,
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CacheBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut self.get_mut().kind;
        match this {
            Kind::Full(bytes) => {
                let frame = bytes.take().map(|b| Ok(Frame::data(b)));
                *this = Kind::Done;
                Poll::Ready(frame)
            }
            Kind::Origin { read, rest, trailers, error } => {
                if let Some(bytes) = read.take().filter(|b| !b.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                if let Some(body) = rest {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Ready(None) => *rest = None,
                        other => return other,
                    }
                }
                if let Some(t) = trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                let e = error.take();
                *this = Kind::Done;
                Poll::Ready(e.map(Err))
            }
            Kind::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Origin { read, rest, trailers, error } => {
                read.as_ref().is_none_or(Bytes::is_empty)
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
                    && trailers.is_none()
                    && error.is_none()
            }
            Kind::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Origin { read, rest, .. } => {
                let read = read.as_ref().map_or(0, |b| b.len() as u64);
                let rest = rest.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
            Kind::Done => SizeHint::with_exact(0),
        }
    }
}

/// An origin body after reading it up to the limit.
pub(crate) enum Read<B: Body> {
    /// All of it, within the limit, without trailers.
    Whole(Bytes),
    /// Not storable (over the limit, trailers, or reading failed): to be passed on as it is.
    PassOn(CacheBody<B>),
}

/// Read `body` whole if it ends within `limit` bytes and has no trailers. A body whose
/// announced size (`Content-Length` or its size hint) is over the limit is not read at all.
pub(crate) async fn read_up_to<B>(body: B, headers: &HeaderMap, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes>,
{
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0)
        .max(body.size_hint().lower());
    if announced > limit as u64 {
        return Read::PassOn(CacheBody::origin(body));
    }
    let mut body = Box::pin(body);
    let mut read = BytesMut::new();
    let pass_on = |read: BytesMut, rest, trailers, error| {
        Read::PassOn(CacheBody {
            kind: Kind::Origin { read: Some(read.freeze()), rest, trailers, error },
        })
    };
    loop {
        match body.frame().await {
            None => return Read::Whole(read.freeze()),
            Some(Err(e)) => return pass_on(read, None, None, Some(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    read.extend_from_slice(&data);
                    if read.len() > limit {
                        return pass_on(read, Some(body), None, None);
                    }
                }
                // Trailers end the body: passed on with it (a body with trailers is not stored).
                Err(frame) => return pass_on(read, None, frame.into_trailers().ok(), None),
            },
        }
    }
}
