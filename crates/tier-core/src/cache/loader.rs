//! The loader as the hierarchy holds it: a type-erased loader of one key (plain, or given a
//! [`LoadContext`]) or of many, and what `cache_loads_total` counts of their answers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use super::context::{self, LoadContext, Loaded};
use super::options::CacheValue;
use crate::error::BoxError;

/// What a loader returns, boxed.
pub(super) type LoadFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

type LoadOneFn<V> = dyn FnOnce(LoadContext<V>) -> LoadFuture<Loaded<V>> + Send;

/// A type-erased loader of one key, plain (`FnOnce() -> Fut`) or given a [`LoadContext`].
pub(super) struct Loader<V> {
    pub(super) call: Box<LoadOneFn<V>>,
    /// Given a context: it may learn tags late (the tag clock is read for it) and revalidate
    /// the value it replaces (a refresh looks the value up for it).
    pub(super) wants_context: bool,
}

impl<V: CacheValue> Loader<V> {
    pub fn new<F, Fut, E>(f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let call = move |_ctx: LoadContext<V>| -> LoadFuture<Loaded<V>> {
            Box::pin(async move { f().await.map(Loaded::from).map_err(Into::into) })
        };
        Self { call: Box::new(call), wants_context: false }
    }

    pub fn with_context<F, Fut, E>(f: F) -> Self
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let call = move |ctx: LoadContext<V>| -> LoadFuture<Loaded<V>> {
            Box::pin(async move { f(ctx).await.map_err(Into::into) })
        };
        Self { call: Box::new(call), wants_context: true }
    }
}

type LoadManyFn<V> = dyn FnOnce(Vec<Bytes>) -> LoadFuture<HashMap<Bytes, V>> + Send;

/// A type-erased loader of many keys: the values it found, by key.
pub(super) struct BatchLoader<V>(pub(super) Box<LoadManyFn<V>>);

impl<V: CacheValue> BatchLoader<V> {
    pub fn new<F, Fut, E>(f: F) -> Self
    where
        F: FnOnce(Vec<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<HashMap<Bytes, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        Self(Box::new(move |keys| Box::pin(async move { f(keys).await.map_err(Into::into) })))
    }
}

/// An origin's answer, as `cache_loads_total` counts it.
pub(super) trait Answer {
    /// `ok` (true) or `none`.
    fn has_value(&self) -> bool;
}

impl<V> Answer for Option<V> {
    fn has_value(&self) -> bool {
        self.is_some()
    }
}

impl<V> Answer for Loaded<V> {
    /// A value or "not modified" is `ok`.
    fn has_value(&self) -> bool {
        !matches!(self.answer, context::Answer::Value(None))
    }
}

impl<V> Answer for HashMap<Bytes, V> {
    /// A batch load that answered is counted `ok`, whatever it found.
    fn has_value(&self) -> bool {
        true
    }
}
