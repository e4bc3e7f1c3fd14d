//! How the hierarchy answered the last read: a `tracing` layer that keeps the `result` and
//! `tier` fields of the last closed `get_or_load` span (target `tier`). The node runs one call
//! at a time, so the last span closed after a read is that read's. Diagnostics for the
//! checker's examples (`Record::via`), never judged.

use std::fmt::Write;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The last answer, taken by [`take`].
static LAST: Mutex<Option<String>> = Mutex::new(None);

/// The answer of the read that just ended (`result@tier`), if its span was seen.
pub fn take() -> Option<String> {
    LAST.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// The fields kept of a span.
#[derive(Default)]
struct Fields {
    result: String,
    tier: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "result" => self.result = value.to_string(),
            "tier" => self.tier = value.to_string(),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let slot = match field.name() {
            "result" => &mut self.result,
            "tier" => &mut self.tier,
            _ => return,
        };
        slot.clear();
        let _ = write!(slot, "{value:?}");
    }
}

/// The layer (install it with a filter that lets target `tier` at DEBUG through).
pub struct Answered;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Answered {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "get_or_load" {
            return;
        }
        if let Some(span) = ctx.span(id) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(f) = span.extensions().get::<Fields>() {
                let answer = format!("{}@{}", f.result, f.tier);
                *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer);
            }
        }
    }
}
