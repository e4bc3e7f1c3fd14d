//! Metric handles that bind to the recorder once there is one.
//!
//! A `metrics` handle (`Counter`, ...) is resolved against the recorder installed when it is
//! made, and a handle made before any recorder is installed records nothing, ever. The hierarchy
//! makes its handles when a cache is built, so a service that installed its exporter after
//! `Cache::build` lost every metric without a word. These handles are made the same way, and
//! one made while no recorder is installed binds again on its first use after one is: the
//! recorder may be installed before or after the cache is built.
//!
//! "No recorder" is `metrics`' [`NoopRecorder`](metrics::NoopRecorder), which answers when
//! neither a local nor a global recorder is set. `metrics` does not say which recorder answers,
//! and the no-op recorder has no size, so a handle made under a recorder of no size keeps what
//! that recorder gave (a zero-sized recorder of one's own, which forwards to statics, works as
//! it did) and binds again once a recorder with a size answers. The one order that is not
//! caught: a zero-sized recorder installed after the build. A bound handle costs one atomic load
//! more per use than a raw one; an unbound one also asks `metrics` for the current recorder (a
//! thread-local and an atomic load).

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, IntoF64, IntoLabels, Key, Level, Metadata, Recorder};

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Whether a metrics recorder answers on this thread now (a local one, else the global one).
///
/// `false` means that metrics recorded now are dropped. The hierarchy's handles do not depend
/// on it: they bind when a recorder appears (see [`LazyCounter`]).
pub fn recorder_installed() -> bool {
    metrics::with_recorder(installed)
}

fn installed(recorder: &dyn Recorder) -> bool {
    std::mem::size_of_val(recorder) != 0
}

/// A kind of `metrics` handle.
trait Register: Sized {
    fn register(recorder: &dyn Recorder, key: &Key) -> Self;
    fn noop() -> Self;
}

impl Register for Counter {
    fn register(recorder: &dyn Recorder, key: &Key) -> Self {
        recorder.register_counter(key, &METADATA)
    }
    fn noop() -> Self {
        Counter::noop()
    }
}

impl Register for Gauge {
    fn register(recorder: &dyn Recorder, key: &Key) -> Self {
        recorder.register_gauge(key, &METADATA)
    }
    fn noop() -> Self {
        Gauge::noop()
    }
}

impl Register for Histogram {
    fn register(recorder: &dyn Recorder, key: &Key) -> Self {
        recorder.register_histogram(key, &METADATA)
    }
    fn noop() -> Self {
        Histogram::noop()
    }
}

/// A handle, what a recorder of no size gave at the start, and the key it binds with (boxed:
/// a bound handle's hot part stays small).
struct Lazy<H> {
    handle: OnceLock<H>,
    tentative: H,
    key: Box<Key>,
}

impl<H: Register> Lazy<H> {
    fn new(name: &'static str, labels: impl IntoLabels) -> Self {
        let key = Box::new(Key::from_parts(name, labels));
        let handle = OnceLock::new();
        let tentative = metrics::with_recorder(|recorder| {
            let registered = H::register(recorder, &key);
            if installed(recorder) {
                let _ = handle.set(registered);
                H::noop()
            } else {
                registered
            }
        });
        Self { handle, tentative, key }
    }

    #[inline]
    fn get(&self) -> &H {
        match self.handle.get() {
            Some(handle) => handle,
            None => self.bind(),
        }
    }

    #[cold]
    #[inline(never)]
    fn bind(&self) -> &H {
        metrics::with_recorder(|recorder| {
            if installed(recorder) {
                self.handle.get_or_init(|| H::register(recorder, &self.key))
            } else {
                &self.tentative
            }
        })
    }

    fn bound(&self) -> bool {
        let _ = self.get();
        self.handle.get().is_some()
    }
}

impl<H> std::fmt::Debug for Lazy<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("key", &self.key)
            .field("bound", &self.handle.get().is_some())
            .finish()
    }
}

/// A counter that binds to the metrics recorder once one is installed (module docs).
#[derive(Debug)]
pub struct LazyCounter(Lazy<Counter>);

impl LazyCounter {
    /// The counter `name` with `labels`; bound at once when a recorder is installed.
    pub fn new(name: &'static str, labels: impl IntoLabels) -> Self {
        Self(Lazy::new(name, labels))
    }

    /// Add `value`.
    #[inline]
    pub fn increment(&self, value: u64) {
        self.0.get().increment(value);
    }

    /// A counter that records nothing, ever (bound to no recorder).
    pub fn noop() -> Self {
        let handle = OnceLock::new();
        let _ = handle.set(Counter::noop());
        Self(Lazy { handle, tentative: Counter::noop(), key: Box::new(Key::from_static_name("")) })
    }

    /// Whether it is bound to a recorder (it binds on this call when one is installed).
    pub fn bound(&self) -> bool {
        self.0.bound()
    }
}

/// A gauge that binds to the metrics recorder once one is installed (module docs).
#[derive(Debug)]
pub struct LazyGauge(Lazy<Gauge>);

impl LazyGauge {
    /// The gauge `name` with `labels`; bound at once when a recorder is installed.
    pub fn new(name: &'static str, labels: impl IntoLabels) -> Self {
        Self(Lazy::new(name, labels))
    }

    /// Set it to `value`.
    #[inline]
    pub fn set<T: IntoF64>(&self, value: T) {
        self.0.get().set(value);
    }
}

/// A histogram that binds to the metrics recorder once one is installed (module docs).
#[derive(Debug)]
pub struct LazyHistogram(Lazy<Histogram>);

impl LazyHistogram {
    /// The histogram `name` with `labels`; bound at once when a recorder is installed.
    pub fn new(name: &'static str, labels: impl IntoLabels) -> Self {
        Self(Lazy::new(name, labels))
    }

    /// Record one sample.
    #[inline]
    pub fn record<T: IntoF64>(&self, value: T) {
        self.0.get().record(value);
    }
}
