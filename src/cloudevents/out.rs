//! An envelope's CloudEvents attributes on their way out, for every binding.

use std::borrow::Cow;

use super::{MAX_EXTENSIONS, SPEC_VERSION, rules::is_extension_name};
use crate::envelope::{Envelope, ExtensionValue, TraceContext, uuid_text};

/// An attribute value on its way out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out<'a> {
    /// Text.
    Text(Cow<'a, str>),
    /// A boolean extension.
    Bool(bool),
    /// An integer extension.
    Int(i64),
}

impl Out<'_> {
    /// The canonical string form.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            Out::Text(text) => Cow::Borrowed(text.as_ref()),
            Out::Bool(value) => Cow::Owned(value.to_string()),
            Out::Int(value) => Cow::Owned(value.to_string()),
        }
    }
}

/// An envelope's CloudEvents attributes, `datacontenttype` and `data` aside (each binding
/// carries those its own way): the required ones, the optional ones, the Correlation
/// extension, `schemaversion`, then the other extensions. `trace` is the trace to name in
/// `traceparent` and `tracestate` when the event brought none of its own.
pub fn attributes_of<'a>(
    envelope: &'a Envelope,
    trace: &'a TraceContext,
) -> Vec<(&'a str, Out<'a>)> {
    let kept = envelope.cloudevents.as_deref();
    let text = |value: &'a str| Out::Text(Cow::Borrowed(value));
    let id = match kept.and_then(|k| k.id.as_deref()) {
        Some(id) => text(id),
        None => Out::Text(Cow::Owned(
            uuid_text(&envelope.event_id, &mut uuid::Uuid::encode_buffer()).to_owned(),
        )),
    };
    let source = kept
        .and_then(|k| k.source.as_deref())
        .unwrap_or(&envelope.source);
    let mut out = Vec::with_capacity(12);
    out.push(("specversion", text(SPEC_VERSION)));
    out.push(("id", id));
    out.push(("source", text(source)));
    out.push(("type", text(&envelope.event_type)));
    out.push(("time", text(&envelope.occurred_at)));
    if let Some(subject) = kept.and_then(|k| k.subject.as_deref()) {
        out.push(("subject", text(subject)));
    }
    if let Some(dataschema) = kept.and_then(|k| k.dataschema.as_deref()) {
        out.push(("dataschema", text(dataschema)));
    }
    out.push(("correlationid", text(&envelope.correlation_id)));
    if let Some(causation_id) = &envelope.causation_id {
        out.push(("causationid", text(causation_id)));
    }
    out.push((
        "schemaversion",
        Out::Text(Cow::Owned(envelope.schema_version.text())),
    ));
    let mut traced = false;
    if let Some(kept) = kept {
        // An envelope from the broker may hold anything: only valid names go out.
        let valid = kept
            .extensions
            .iter()
            .filter(|(name, _)| is_extension_name(name))
            .take(MAX_EXTENSIONS);
        for (name, value) in valid {
            traced |= name == "traceparent";
            out.push((
                name.as_str(),
                match value {
                    ExtensionValue::Text(value) => text(value),
                    ExtensionValue::Bool(value) => Out::Bool(*value),
                    ExtensionValue::Int(value) => Out::Int(*value),
                },
            ));
        }
    }
    if !traced {
        if let Some(traceparent) = &trace.traceparent {
            out.push(("traceparent", text(traceparent)));
            if let Some(tracestate) = &trace.tracestate {
                out.push(("tracestate", text(tracestate)));
            }
        }
    }
    out
}

/// The `datacontenttype` of an envelope's payload.
pub fn datacontenttype(envelope: &Envelope) -> &str {
    envelope
        .cloudevents
        .as_deref()
        .and_then(|k| k.datacontenttype.as_deref())
        .unwrap_or("application/json")
}
