//! The event envelope: the wire type on the broker, its AMQP properties and routing key.
//! No I/O happens here.

use std::{collections::BTreeMap, fmt, str::FromStr, time::SystemTime};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::amqp::text;

/// One event as it travels through the broker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id of this event (UUID v7: sortable by creation time).
    pub event_id: Uuid,
    /// The event's type, such as `OrderPlaced`.
    pub event_type: String,
    /// The version of the payload's schema, `MAJOR.MINOR`.
    pub schema_version: SchemaVersion,
    /// The id shared by every event of one business flow.
    pub correlation_id: String,
    /// The `event_id` of the event that caused this one.
    pub causation_id: Option<String>,
    /// When the event was accepted, RFC 3339 UTC with microseconds.
    pub occurred_at: String,
    /// The service that published it.
    pub source: String,
    /// The app's JSON payload, kept byte for byte.
    pub payload: Box<RawValue>,
    /// The CloudEvents attributes the event came with that have no field above; absent for
    /// an event published natively (see docs/cloudevents.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudevents: Option<Box<CloudEventAttributes>>,
}

/// What a CloudEvent carried beyond the envelope's own fields, kept to give it back to
/// consumers: `id` and `source` as the producer wrote them, `subject`, `dataschema`,
/// `datacontenttype`, and its extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudEventAttributes {
    /// `id`, when it is not the event id's canonical form (it was not a UUID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `source`, when it is not the envelope's `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `dataschema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// `datacontenttype`, when it is not plain `application/json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// Extension attributes other than those the envelope has fields for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, ExtensionValue>,
}

impl CloudEventAttributes {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        *self == CloudEventAttributes::default()
    }
}

/// The value of a CloudEvents extension attribute: JSON carries booleans and integers as
/// such, HTTP headers and most AMQP producers carry text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExtensionValue {
    /// `Boolean`.
    Bool(bool),
    /// `Integer` (32-bit in CloudEvents; wider values from other producers are kept).
    Int(i64),
    /// Every other type, in its canonical string form.
    Text(String),
}

impl fmt::Display for ExtensionValue {
    /// The canonical string form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionValue::Bool(value) => write!(f, "{value}"),
            ExtensionValue::Int(value) => write!(f, "{value}"),
            ExtensionValue::Text(value) => f.write_str(value),
        }
    }
}

/// Who an event is: the envelope without its source and payload. It is what a publish
/// answers with (`202`), and what an idempotency key remembers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventIdentity {
    /// The event's id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Its schema version.
    pub schema_version: SchemaVersion,
    /// Its correlation id.
    pub correlation_id: String,
    /// Its causation id.
    pub causation_id: Option<String>,
    /// When it was accepted.
    pub occurred_at: String,
}

impl EventIdentity {
    /// The JSON serde writes for the identity (a publish's answer), written directly.
    pub fn to_json(&self) -> Vec<u8> {
        json::identity(self)
    }
}

/// W3C trace context to carry along with an event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// The `traceparent` header value.
    pub traceparent: Option<String>,
    /// The `tracestate` header value.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Longest `tracestate` carried along (the W3C recommendation's minimum to propagate).
    pub const MAX_TRACESTATE: usize = 512;

    /// The context to continue from values someone else wrote (HTTP or AMQP headers). An
    /// invalid `traceparent` is dropped with its `tracestate`, as the W3C recommendation
    /// asks: the event starts a new trace instead of failing. A `tracestate` is kept when it
    /// is 1 to 512 printable ASCII characters; otherwise it is dropped.
    pub fn from_untrusted(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Self {
        let text = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(str::to_owned);
        let Some(traceparent) = traceparent
            .filter(|t| is_valid_traceparent(t))
            .and_then(text)
        else {
            return TraceContext::default();
        };
        let tracestate = tracestate
            .filter(|t| is_printable_within(t, Self::MAX_TRACESTATE))
            .and_then(text);
        TraceContext {
            traceparent: Some(traceparent),
            tracestate,
        }
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero, version not
/// `ff` (lower-case hex only, as the W3C format has it).
pub fn is_valid_traceparent(value: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
    let parts: Vec<&[u8]> = value.split(|b| *b == b'-').collect();
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if version.len() == 2 && hex(version) && *version != b"ff"
            && trace.len() == 32 && hex(trace) && nonzero(trace)
            && parent.len() == 16 && hex(parent) && nonzero(parent)
            && flags.len() == 2 && hex(flags))
}

impl Envelope {
    /// The envelope in a message body from the broker, whoever wrote it.
    pub fn decode(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// An envelope for `identity`, published by `source`.
    pub fn new(identity: EventIdentity, source: &str, payload: Box<RawValue>) -> Self {
        Envelope {
            event_id: identity.event_id,
            event_type: identity.event_type,
            schema_version: identity.schema_version,
            correlation_id: identity.correlation_id,
            causation_id: identity.causation_id,
            occurred_at: identity.occurred_at,
            source: source.to_owned(),
            payload,
            cloudevents: None,
        }
    }

    /// Who the event is.
    pub fn identity(&self) -> EventIdentity {
        EventIdentity {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            occurred_at: self.occurred_at.clone(),
        }
    }

    /// Who the event is, keeping its fields rather than copying them.
    pub fn into_identity(self) -> EventIdentity {
        EventIdentity {
            event_id: self.event_id,
            event_type: self.event_type,
            schema_version: self.schema_version,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            occurred_at: self.occurred_at,
        }
    }

    /// The routing key on the events exchange: `{event_type}.v{major}`.
    pub fn routing_key(&self) -> String {
        routing_key(&self.event_type, self.schema_version.major)
    }

    /// The body published to the broker: the JSON serde writes for the envelope, written
    /// into a buffer of its size.
    pub fn to_json(&self) -> Vec<u8> {
        json::envelope(self)
    }

    /// The AMQP properties that mirror the envelope, so that brokers and tools can route and
    /// inspect events without parsing bodies.
    pub fn properties(&self, trace: &TraceContext) -> Result<BasicProperties, EnvelopeError> {
        self.properties_with(trace, FieldTable::default())
    }

    /// The same, with `headers` besides the envelope's own (the CloudEvents binding's).
    pub fn properties_with(
        &self,
        trace: &TraceContext,
        mut headers: FieldTable,
    ) -> Result<BasicProperties, EnvelopeError> {
        if let Some(causation_id) = &self.causation_id {
            headers.insert("causation_id".into(), text(causation_id));
        }
        headers.insert(
            "schema_version".into(),
            AMQPValue::LongString(self.schema_version.text().into()),
        );
        if let Some(traceparent) = &trace.traceparent {
            headers.insert("traceparent".into(), text(traceparent));
        }
        if let Some(tracestate) = &trace.tracestate {
            headers.insert("tracestate".into(), text(tracestate));
        }
        // The same instant as `occurred_at`, also when a retry republishes the event later.
        let occurred =
            humantime::parse_rfc3339(&self.occurred_at).unwrap_or_else(|_| SystemTime::now());
        let timestamp = occurred
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(BasicProperties::default()
            .with_message_id(short(uuid_text(
                &self.event_id,
                &mut Uuid::encode_buffer(),
            ))?)
            .with_correlation_id(short(&self.correlation_id)?)
            .with_type(short(&self.event_type)?)
            .with_app_id(short(&self.source)?)
            .with_timestamp(timestamp)
            .with_content_type("application/json".into())
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers))
    }
}

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

fn short(value: &str) -> Result<ShortString, EnvelopeError> {
    ShortString::try_new(value).map_err(|_| EnvelopeError::TooLong)
}

/// Whether `bytes` are 1 to `max` printable ASCII characters, as ids, keys and the values
/// carried in AMQP and HTTP headers as they are must be.
pub fn is_printable_within(bytes: &[u8], max: usize) -> bool {
    !bytes.is_empty() && bytes.len() <= max && bytes.iter().all(|b| (0x20..0x7f).contains(b))
}

/// Whether `bytes` are RFC 3986 characters only: letters, digits, the bytes of `allowed`
/// (the punctuation the caller's part of a URI may hold) and `%XX` escapes.
pub fn is_uri_text(bytes: &[u8], allowed: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let escape = bytes.get(i + 1..i + 3);
                if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || allowed.contains(&b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// A UUID's canonical text (lower-case, hyphenated) in `buffer`, without the formatting
/// machinery of `to_string`.
pub fn uuid_text<'a>(id: &Uuid, buffer: &'a mut [u8; 45]) -> &'a str {
    id.hyphenated().encode_lower(buffer)
}

/// The routing key of an event type at a major version.
pub fn routing_key(event_type: &str, major: u32) -> String {
    let mut key = String::with_capacity(event_type.len() + 12);
    key.push_str(event_type);
    key.push_str(".v");
    push_decimal(&mut key, major);
    key
}

/// Why an envelope could not be turned into AMQP properties.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// An AMQP short string holds at most 255 bytes.
    #[error("a property value is longer than 255 bytes")]
    TooLong,
}

/// The current time as RFC 3339 UTC with microseconds, as `occurred_at` carries it.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Whether `value` is a valid event type: `^[A-Za-z][A-Za-z0-9_.-]{0,127}$`.
pub fn is_valid_event_type(value: &str) -> bool {
    let mut chars = value.chars();
    value.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A schema version, `MAJOR.MINOR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SchemaVersion {
    /// Incompatible changes bump the major version; each major has its own routing key.
    pub major: u32,
    /// Compatible changes bump the minor version.
    pub minor: u32,
}

impl SchemaVersion {
    /// The version assumed when none is given and no schema is registered.
    pub const DEFAULT: SchemaVersion = SchemaVersion { major: 1, minor: 0 };
}

impl SchemaVersion {
    /// `MAJOR.MINOR` as text, as [`Display`](fmt::Display) writes it, without the
    /// formatting machinery.
    pub fn text(&self) -> String {
        let mut text = String::with_capacity(8);
        push_decimal(&mut text, self.major);
        text.push('.');
        push_decimal(&mut text, self.minor);
        text
    }
}

/// Appends `n` in decimal.
fn push_decimal(text: &mut String, n: u32) {
    if n >= 10 {
        push_decimal(text, n / 10);
    }
    // A digit is 0..=9.
    text.push(char::from(b'0' + (n % 10) as u8));
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A version string that is not `MAJOR.MINOR`.
#[derive(Debug, thiserror::Error)]
#[error("expected MAJOR.MINOR, such as 2.0")]
pub struct InvalidVersion;

impl FromStr for SchemaVersion {
    type Err = InvalidVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (major, minor) = s.split_once('.').ok_or(InvalidVersion)?;
        let number = |part: &str| {
            if part.is_empty() || part.len() > 9 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidVersion);
            }
            part.parse::<u32>().map_err(|_| InvalidVersion)
        };
        Ok(SchemaVersion {
            major: number(major)?,
            minor: number(minor)?,
        })
    }
}

impl Serialize for SchemaVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

mod json;
#[cfg(test)]
mod tests;
