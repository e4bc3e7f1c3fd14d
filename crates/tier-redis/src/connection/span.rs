//! The `tracing` span of every call sent to Redis, named and attributed after OpenTelemetry's
//! database semantic conventions, so that `tracing-opentelemetry` exports it as a client span
//! of the database: span name = `db.operation.name` = the command (`GET`, `EVALSHA`, `MGET`,
//! `XADD`; a pipeline of n > 1 commands `BATCH` + the command when all share it, else `BATCH`,
//! with `db.operation.batch.size`), `db.system.name = "redis"`, `db.namespace` = the database
//! index, `otel.kind = "client"`; on failure `error.type` (the error's kind) and
//! `otel.status_code = "ERROR"`.
//!
//! Level DEBUG (target `tier_redis::connection::span`), but the backplane reader's `XREAD`,
//! which polls about 50 times a second while the stream is quiet: TRACE. No key, value or
//! argument is recorded. Nothing is built when no subscriber wants the span (one check of the
//! level filter per call: DEBUG, then the span's own).

use redis::{Arg, Cmd, Pipeline, RedisFuture, RedisResult};
use tracing::field::Empty;
use tracing::{Instrument, Level, Span};

/// The command's name, upper case (its first argument); `UNKNOWN` when it has none.
fn command_name(cmd: &Cmd) -> String {
    match cmd.args_iter().next() {
        Some(Arg::Simple(name)) => String::from_utf8_lossy(name).to_ascii_uppercase(),
        _ => "UNKNOWN".to_string(),
    }
}

/// A span named `name` with the conventions' attributes; `batch`: the number of commands of a
/// pipeline of more than one.
fn span(name: &str, db: i64, batch: Option<usize>) -> Span {
    macro_rules! db_span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "redis",
                otel.name = name,
                otel.kind = "client",
                otel.status_code = Empty,
                db.system.name = "redis",
                db.operation.name = name,
                db.namespace = db,
                db.operation.batch.size = batch,
                error.type = Empty,
            )
        };
    }
    if name == "XREAD" {
        db_span!(Level::TRACE)
    } else {
        db_span!(Level::DEBUG)
    }
}

/// The span of one command; disabled (and nothing computed) when no subscriber wants it.
pub(super) fn command(cmd: &Cmd, db: i64) -> Span {
    if !tracing::enabled!(Level::DEBUG) {
        return Span::none();
    }
    span(&command_name(cmd), db, None)
}

/// The span of `pipeline`, sent as one call.
pub(super) fn pipeline(pipeline: &Pipeline, db: i64) -> Span {
    if !tracing::enabled!(Level::DEBUG) {
        return Span::none();
    }
    let mut names = pipeline.cmd_iter().map(command_name);
    let first = names.next().unwrap_or_else(|| "UNKNOWN".to_string());
    let size = pipeline.cmd_iter().count();
    if size <= 1 {
        return span(&first, db, None);
    }
    let name = if names.all(|n| n == first) { format!("BATCH {first}") } else { "BATCH".into() };
    span(&name, db, Some(size))
}

/// Run `call` inside `span`, recording its failure.
pub(super) fn traced<'a, T: Send + 'a>(span: Span, call: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
    if span.is_disabled() {
        return call;
    }
    Box::pin(async move {
        let result: RedisResult<T> = call.instrument(span.clone()).await;
        if let Err(e) = &result {
            span.record("error.type", tracing::field::debug(e.kind()));
            span.record("otel.status_code", "ERROR");
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::prelude::*;

    use super::*;

    /// Every field given to a span, at creation or recorded later, as `name=value`.
    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Vec<String>>>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let shown = format!("{value:?}");
            let shown = shown.trim_matches('"');
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{}={shown}", field.name()));
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Fields {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            attrs.record(&mut self.clone());
        }
        fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
            values.record(&mut self.clone());
        }
    }

    fn seen(fields: &Fields) -> Vec<String> {
        fields.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    #[tokio::test]
    async fn a_failed_call_records_its_error_type_and_status() {
        let fields = Fields::default();
        let _guard = tracing_subscriber::registry().with(fields.clone()).set_default();
        let failing: RedisFuture<'_, ()> =
            Box::pin(async { Err(redis::RedisError::from(std::io::Error::other("reset"))) });
        let result = traced(command(redis::cmd("get").arg("k"), 3), failing).await;
        assert!(result.is_err());
        let seen = seen(&fields);
        for field in [
            "otel.name=GET",
            "otel.kind=client",
            "db.system.name=redis",
            "db.operation.name=GET",
            "db.namespace=3",
            "error.type=Io",
            "otel.status_code=ERROR",
        ] {
            assert!(seen.iter().any(|f| f == field), "no {field} in {seen:?}");
        }
        assert!(!seen.iter().any(|f| f.contains('k') && f.starts_with("db.query")), "{seen:?}");
    }

    #[tokio::test]
    async fn a_pipeline_is_a_batch_and_the_backplane_poll_is_below_debug() {
        let fields = Fields::default();
        let filter = tracing_subscriber::filter::LevelFilter::DEBUG;
        let _guard =
            tracing_subscriber::registry().with(fields.clone().with_filter(filter)).set_default();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg("a").arg(1).cmd("SET").arg("b").arg(2);
        let _span = pipeline(&pipe, 0);
        let xread = command(redis::cmd("XREAD").arg("BLOCK").arg(20), 0);
        // By its level, not by whether it is enabled: tracing caches a callsite's interest
        // across the threads of a test binary, so another test's subscriber can enable it.
        // (A disabled span has no metadata: disabled under this DEBUG filter says TRACE.)
        let level = xread.metadata().map(|m| *m.level());
        assert!(xread.is_disabled() || level == Some(tracing::Level::TRACE), "XREAD is TRACE");
        let seen = seen(&fields);
        assert!(seen.iter().any(|f| f == "db.operation.name=BATCH SET"), "{seen:?}");
        assert!(seen.iter().any(|f| f == "db.operation.batch.size=2"), "{seen:?}");
    }
}
