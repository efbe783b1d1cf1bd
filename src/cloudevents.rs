//! CloudEvents 1.0 and the causeway envelope: the one place where attributes map both ways
//! (docs/cloudevents.md has the tables).
//!
//! - In: a CloudEvent from the publish API (HTTP binary or structured mode, or a batch) or
//!   from the broker (AMQP binary or structured mode, published by someone else) is read into
//!   attributes, checked here one by one ([`CloudEvent::check`]) and becomes an envelope.
//! - Out: an envelope's attributes ([`attributes_of`]) become `cloudEvents_*` AMQP
//!   properties on publish ([`amqp`]), and `ce-*` headers or an `application/cloudevents+json`
//!   body on delivery ([`http`]).

pub mod amqp;
mod check;
pub mod http;
mod out;
mod rules;

use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use out::{Out, attributes_of, datacontenttype};
pub use rules::{
    is_absolute_uri, is_ce_string, is_extension_name, is_json_media_type, is_uri_reference,
    normalize_time, rfc3339, version_in_uri,
};

use crate::envelope::{CloudEventAttributes, Envelope, SchemaVersion, TraceContext};

/// The only `specversion` taken and given.
pub const SPEC_VERSION: &str = "1.0";
/// Most extension attributes one event may carry (besides the ones the envelope maps).
pub const MAX_EXTENSIONS: usize = 32;
/// Most bytes of extension names and values together: they become HTTP headers on delivery.
pub const MAX_EXTENSION_BYTES: usize = 4096;
/// Longest `id`, in characters.
pub const MAX_ID: usize = 256;
/// Longest `source`, `subject`, `dataschema` and extension value, in characters (`source`
/// and `dataschema` are ASCII).
pub const MAX_TEXT: usize = 1024;
/// Longest attribute name (the spec asks for 20 at most, and lets longer ones through).
pub const MAX_NAME: usize = 64;
/// Longest correlation and causation id, as for native publishes.
const MAX_ID_HEADER: usize = 128;

/// The namespace of event ids derived from a CloudEvent's `source` and `id`.
const NAMESPACE: Uuid = Uuid::from_u128(0x5c0f_2a1e_8e4b_4d61_9a39_63a8_0c7e_11d4);

/// The core attributes and the ones causeway maps to envelope fields: never extensions.
const MAPPED: [&str; 13] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataschema",
    "datacontenttype",
    "correlationid",
    "causationid",
    "schemaversion",
    "data",
    "data_base64",
];

/// An attribute value as a binding carried it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A string, or any type in its canonical string form.
    Text(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
}

/// One thing wrong with a CloudEvent, by the attribute's name as it was sent (`ce-id`,
/// `cloudEvents_id`, `id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttributeError {
    /// The attribute (or header, or member) as it was sent.
    pub attribute: String,
    /// What is wrong with it.
    pub message: String,
}

/// Why a CloudEvent is not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Attributes are missing or invalid; each is named.
    #[error("{}", summary(.0))]
    Invalid(Vec<AttributeError>),
    /// The data is not JSON (another content type, or `data_base64`).
    #[error("{0}")]
    Unsupported(String),
}

impl Refused {
    fn invalid(attribute: impl Into<String>, message: impl Into<String>) -> Self {
        Refused::Invalid(vec![AttributeError {
            attribute: attribute.into(),
            message: message.into(),
        }])
    }
}

fn summary(errors: &[AttributeError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("{} {}", e.attribute, e.message))
        .collect();
    format!("invalid CloudEvent: {}", parts.join("; "))
}

/// A checked CloudEvent: what the envelope is built from.
#[derive(Clone, Debug)]
pub struct CloudEvent {
    /// The event id: `id` when it is a UUID, else derived from `source` and `id`.
    pub event_id: Uuid,
    /// `type`.
    pub event_type: String,
    /// `time`, as RFC 3339 UTC with microseconds.
    pub occurred_at: Option<String>,
    /// `schemaversion`, else the version at the end of `dataschema`.
    pub schema_version: Option<SchemaVersion>,
    /// `correlationid`.
    pub correlation_id: Option<String>,
    /// `causationid`.
    pub causation_id: Option<String>,
    /// `traceparent` and `tracestate` (the Distributed Tracing extension), when valid.
    pub trace: TraceContext,
    /// `source`.
    pub source: String,
    /// What the envelope keeps of the rest.
    pub attributes: CloudEventAttributes,
    /// `data`.
    pub data: Box<RawValue>,
}

impl CloudEvent {
    /// The envelope of an event published by someone else straight onto the exchange: its
    /// `source` is the envelope's source, and without `correlationid` the event starts a
    /// flow of its own, named after its id (the same on every redelivery).
    pub fn into_envelope(self, fallback_version: SchemaVersion) -> Envelope {
        let CloudEvent {
            event_id,
            event_type,
            occurred_at,
            schema_version,
            correlation_id,
            causation_id,
            source,
            mut attributes,
            data,
            ..
        } = self;
        attributes.source = None;
        Envelope {
            event_id,
            event_type,
            schema_version: schema_version.unwrap_or(fallback_version),
            correlation_id: correlation_id.unwrap_or_else(|| event_id.to_string()),
            causation_id,
            occurred_at: occurred_at.unwrap_or_else(crate::envelope::now_rfc3339),
            source,
            payload: data,
            cloudevents: (!attributes.is_empty()).then(|| Box::new(attributes)),
        }
    }
}

/// The event id of a CloudEvent: its `id` when that is a UUID (but not the nil or max one),
/// else a UUIDv8 from the SHA-256 of `source` and `id` (the name-based layout of RFC 9562,
/// appendix B.2), so that the same event sent twice gets the same event id.
pub fn event_id(source: &str, id: &str) -> Uuid {
    if let Ok(uuid) = Uuid::try_parse(id) {
        if !uuid.is_nil() && !uuid.is_max() {
            return uuid;
        }
    }
    let mut hash = Sha256::new();
    hash.update(NAMESPACE.as_bytes());
    hash.update((source.len() as u64).to_be_bytes());
    hash.update(source.as_bytes());
    hash.update(id.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests;
