//! The AMQP protocol binding: the `cloudEvents_*` application properties every published
//! envelope carries, and CloudEvents that someone else published onto the exchange, read
//! into envelopes instead of being dead-lettered as undecodable.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde_json::value::RawValue;

use super::{
    AttributeError, CloudEvent, Out, Refused, Value, attributes_of,
    http::{STRUCTURED, from_structured},
};
use crate::{
    amqp::text,
    envelope::{Envelope, EnvelopeError, SchemaVersion, TraceContext},
};

/// The prefix of the attributes this sidecar writes (the binding's preferred separator).
const PREFIX: &str = "cloudEvents_";
/// The prefixes of attributes read from other producers: the binding's two, and the `ce-`
/// of HTTP headers (Knative's RabbitMQ binding) and `ce_`.
const PREFIXES: [&str; 4] = ["cloudEvents_", "cloudEvents:", "ce-", "ce_"];

/// The envelope's AMQP properties ([`Envelope::properties_with`]) with its CloudEvents
/// attributes as `cloudEvents_*` headers; `datacontenttype` is the message's content type.
///
/// Built on every publish: the header names of the standard attributes are constants, and
/// values the attributes own already (the event id's text) move into the table uncopied.
pub fn properties(
    envelope: &Envelope,
    trace: &TraceContext,
) -> Result<BasicProperties, EnvelopeError> {
    let mut headers = FieldTable::default();
    for (name, value) in attributes_of(envelope, trace) {
        let key = match header_name(name) {
            Some(known) => ShortString::from(known),
            None => {
                let mut key = String::with_capacity(PREFIX.len() + name.len());
                key.push_str(PREFIX);
                key.push_str(name);
                match ShortString::try_new(key) {
                    Ok(key) => key,
                    Err(_) => continue,
                }
            }
        };
        let value = match value {
            Out::Text(Cow::Borrowed(value)) => text(value),
            Out::Text(Cow::Owned(value)) => AMQPValue::LongString(LongString::from(value)),
            Out::Bool(value) => AMQPValue::Boolean(value),
            Out::Int(value) => AMQPValue::LongLongInt(value),
        };
        headers.insert(key, value);
    }
    envelope.properties_with(trace, headers)
}

/// The header name of a standard attribute (or one of the envelope's extensions), without
/// formatting it on every publish.
fn header_name(attribute: &str) -> Option<&'static str> {
    Some(match attribute {
        "specversion" => "cloudEvents_specversion",
        "id" => "cloudEvents_id",
        "source" => "cloudEvents_source",
        "type" => "cloudEvents_type",
        "time" => "cloudEvents_time",
        "subject" => "cloudEvents_subject",
        "dataschema" => "cloudEvents_dataschema",
        "correlationid" => "cloudEvents_correlationid",
        "causationid" => "cloudEvents_causationid",
        "schemaversion" => "cloudEvents_schemaversion",
        "traceparent" => "cloudEvents_traceparent",
        "tracestate" => "cloudEvents_tracestate",
        _ => return None,
    })
}

/// What a message from the broker holds.
#[derive(Debug)]
pub enum Message {
    /// An envelope, as causeway publishes them.
    Envelope(Envelope),
    /// A CloudEvent another producer published, as an envelope.
    CloudEvent(Envelope),
}

impl Message {
    /// The envelope, whoever wrote it.
    pub fn into_envelope(self) -> Envelope {
        match self {
            Message::Envelope(envelope) | Message::CloudEvent(envelope) => envelope,
        }
    }
}

/// Why a message is neither an envelope nor a CloudEvent.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    /// Not an envelope, and nothing says it is a CloudEvent.
    #[error("not a valid envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// It says it is a CloudEvent, and is not a valid one.
    #[error("not a valid CloudEvent: {0}")]
    CloudEvent(#[source] Refused),
}

/// Reads a message: a structured CloudEvent by its content type, else an envelope, else a
/// CloudEvent in binary mode when its headers say so (`cloudEvents_specversion` or one of
/// the other prefixes). A message with causeway's `schema_version` header is an envelope,
/// whatever else it carries. Without a version of its own, a CloudEvent's schema version
/// is the major of its routing key (`OrderPlaced.v2` is 2.0), else 1.0.
pub fn decode(
    properties: &BasicProperties,
    body: &[u8],
    routing_key: &str,
) -> Result<Message, Undecodable> {
    let fallback = version_of_key(routing_key);
    let content_type = properties
        .content_type()
        .as_ref()
        .map(|t| t.as_str().to_ascii_lowercase());
    let essence = content_type
        .as_deref()
        .map(|t| t.split(';').next().unwrap_or("").trim());
    if let Some(essence) = essence.filter(|e| e.starts_with("application/cloudevents")) {
        if essence != STRUCTURED {
            return Err(Undecodable::CloudEvent(Refused::Unsupported(format!(
                "the CloudEvents format {essence:?} is not supported (only {STRUCTURED})"
            ))));
        }
        let event = from_structured(body).map_err(Undecodable::CloudEvent)?;
        return Ok(Message::CloudEvent(event.into_envelope(fallback)));
    }
    let not_envelope = match Envelope::decode(body) {
        Ok(envelope) => return Ok(Message::Envelope(envelope)),
        Err(error) => error,
    };
    let Some(headers) = properties.headers().as_ref().map(FieldTable::inner) else {
        return Err(Undecodable::Envelope(not_envelope));
    };
    if headers.contains_key("schema_version") {
        return Err(Undecodable::Envelope(not_envelope));
    }
    let prefix = PREFIXES.into_iter().find(|prefix| {
        headers
            .keys()
            .any(|key| strip_prefix(key.as_str(), prefix) == Some("specversion"))
    });
    let Some(prefix) = prefix else {
        return Err(Undecodable::Envelope(not_envelope));
    };
    from_binary(properties, headers, prefix, body)
        .map(|event| Message::CloudEvent(event.into_envelope(fallback)))
        .map_err(Undecodable::CloudEvent)
}

/// A CloudEvent in binary mode: attributes from the headers under `prefix`,
/// `datacontenttype` from the content type (or a `datacontenttype` header, as Knative
/// writes it), `data` from the body (`null` when empty).
fn from_binary(
    properties: &BasicProperties,
    headers: &std::collections::BTreeMap<ShortString, AMQPValue>,
    prefix: &str,
    body: &[u8],
) -> Result<CloudEvent, Refused> {
    let mut attributes = Vec::new();
    let mut errors = Vec::new();
    let mut content_type = properties
        .content_type()
        .as_ref()
        .map(|t| t.as_str().to_owned());
    for (key, value) in headers {
        let Some(name) = strip_prefix(key.as_str(), prefix) else {
            continue;
        };
        match value_of(value) {
            Some(Value::Text(text)) if name == "datacontenttype" => {
                content_type.get_or_insert(text);
            }
            Some(value) => attributes.push((name.to_owned(), value)),
            None => errors.push(AttributeError {
                attribute: key.to_string(),
                message: "must be a string, an integer, a boolean or a timestamp".into(),
            }),
        }
    }
    if let Some(content_type) = content_type {
        attributes.push(("datacontenttype".into(), Value::Text(content_type)));
    }
    let data = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(RawValue::NULL.to_owned())
    } else {
        serde_json::from_slice::<Box<RawValue>>(body)
    };
    let sent_as = |name: &str| format!("{prefix}{name}");
    let checked = CloudEvent::check(
        attributes,
        data.as_ref()
            .map_or_else(|_| RawValue::NULL.to_owned(), Clone::clone),
        &sent_as,
    );
    match (checked, data) {
        (Err(Refused::Unsupported(why)), _) => Err(Refused::Unsupported(why)),
        (checked, Err(error)) => {
            errors.push(AttributeError {
                attribute: "data".into(),
                message: format!("(the body) is not valid JSON: {error}"),
            });
            if let Err(Refused::Invalid(more)) = checked {
                errors.extend(more);
            }
            Err(Refused::Invalid(errors))
        }
        (Ok(event), Ok(_)) if errors.is_empty() => Ok(event),
        (Ok(_), Ok(_)) => Err(Refused::Invalid(errors)),
        (Err(Refused::Invalid(more)), Ok(_)) => {
            errors.extend(more);
            Err(Refused::Invalid(errors))
        }
    }
}

/// `key` without `prefix`, which is matched without regard to case (producers differ on
/// `cloudEvents_` and `cloudevents_`).
fn strip_prefix<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let head = key.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &key[prefix.len()..])
}

/// A header's value as an attribute value: text, a boolean, an integer, or a timestamp
/// (seconds, as RFC 3339 text).
fn value_of(value: &AMQPValue) -> Option<Value> {
    Some(match value {
        AMQPValue::LongString(text) => {
            Value::Text(String::from_utf8(text.as_bytes().to_vec()).ok()?)
        }
        AMQPValue::ShortString(text) => Value::Text(text.to_string()),
        AMQPValue::Boolean(value) => Value::Bool(*value),
        AMQPValue::ShortShortInt(v) => Value::Int((*v).into()),
        AMQPValue::ShortShortUInt(v) => Value::Int((*v).into()),
        AMQPValue::ShortInt(v) => Value::Int((*v).into()),
        AMQPValue::ShortUInt(v) => Value::Int((*v).into()),
        AMQPValue::LongInt(v) => Value::Int((*v).into()),
        AMQPValue::LongUInt(v) => Value::Int((*v).into()),
        AMQPValue::LongLongInt(v) => Value::Int(*v),
        AMQPValue::Timestamp(seconds) => {
            let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(*seconds))?;
            Value::Text(super::rfc3339(at, false)?)
        }
        _ => return None,
    })
}

/// The schema version a routing key names: `{type}.v{major}` is `{major}.0`; 1.0 otherwise.
fn version_of_key(routing_key: &str) -> SchemaVersion {
    routing_key
        .rsplit_once(".v")
        .and_then(|(_, major)| {
            (!major.is_empty() && major.len() <= 9 && major.bytes().all(|b| b.is_ascii_digit()))
                .then(|| major.parse().ok())
                .flatten()
        })
        .map_or(SchemaVersion::DEFAULT, |major| SchemaVersion {
            major,
            minor: 0,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_header_names_are_the_prefix_and_the_attribute() {
        for attribute in [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "subject",
            "dataschema",
            "correlationid",
            "causationid",
            "schemaversion",
            "traceparent",
            "tracestate",
        ] {
            assert_eq!(
                header_name(attribute),
                Some(&*format!("{PREFIX}{attribute}"))
            );
        }
        assert_eq!(header_name("tenant"), None);
    }
}
