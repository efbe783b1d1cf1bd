//! The HTTP protocol binding: reading a CloudEvent from a publish request (binary mode,
//! structured mode, batches), and writing one for a delivery (`ce-*` headers, or an
//! `application/cloudevents+json` body).

use std::fmt;

use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{CloudEvent, Out, Refused, Value, attributes_of, datacontenttype, is_json_media_type};
use crate::envelope::{Envelope, TraceContext};

/// The media type of a structured CloudEvent in JSON.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The media type of a batch of CloudEvents in JSON.
pub const BATCH: &str = "application/cloudevents-batch+json";
/// The prefix of binary-mode headers.
const PREFIX: &str = "ce-";

/// How a publish request carries its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Causeway's own: the body is the payload, the ids are in `X-` headers.
    Native,
    /// A CloudEvent in binary mode: attributes in `ce-*` headers, the body is `data`.
    Binary,
    /// A CloudEvent in structured mode (`application/cloudevents+json`).
    Structured,
    /// A batch of structured CloudEvents (`application/cloudevents-batch+json`).
    Batch,
}

/// The mode of a request by its `Content-Type` and headers, as the binding tells them
/// apart; an event format other than JSON is refused.
pub fn mode_of(headers: &HeaderMap) -> Result<Mode, Refused> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.starts_with("application/cloudevents-batch") {
        return match essence {
            BATCH => Ok(Mode::Batch),
            _ => Err(unsupported_format(essence)),
        };
    }
    if essence.starts_with("application/cloudevents") {
        return match essence {
            STRUCTURED => Ok(Mode::Structured),
            _ => Err(unsupported_format(essence)),
        };
    }
    let binary = headers.keys().any(|name| name.as_str().starts_with(PREFIX));
    Ok(if binary { Mode::Binary } else { Mode::Native })
}

fn unsupported_format(essence: &str) -> Refused {
    Refused::Unsupported(format!(
        "the CloudEvents format {essence:?} is not supported: use {STRUCTURED} (or \
         {BATCH}), or binary mode with ce-* headers"
    ))
}

/// A CloudEvent in binary mode: its attributes from the `ce-*` headers (percent-decoded),
/// `datacontenttype` from `Content-Type`, and `data` from the body.
pub fn from_binary(headers: &HeaderMap, body: &[u8]) -> Result<CloudEvent, Refused> {
    let mut attributes = Vec::new();
    let mut errors = Vec::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix(PREFIX) else {
            continue;
        };
        if attribute == "datacontenttype" {
            errors.push(super::AttributeError {
                attribute: name.to_string(),
                message: "must not be sent in binary mode: Content-Type is the datacontenttype"
                    .into(),
            });
            continue;
        }
        match decode_header(value.as_bytes()) {
            Some(text) => attributes.push((attribute.to_owned(), Value::Text(text))),
            None => errors.push(super::AttributeError {
                attribute: name.to_string(),
                message: "is not valid percent-encoded UTF-8".into(),
            }),
        }
    }
    let content_type = headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
    let Some(content_type) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
        return Err(Refused::Unsupported(
            "a CloudEvent in binary mode needs Content-Type (its datacontenttype): causeway \
             carries JSON data only, so application/json or a */*+json type"
                .into(),
        ));
    };
    if !is_json_media_type(content_type) {
        return Err(Refused::Unsupported(format!(
            "Content-Type {content_type:?} (the datacontenttype) is not JSON: causeway carries \
             JSON data only (application/json or a */*+json type)"
        )));
    }
    attributes.push((
        "datacontenttype".to_owned(),
        Value::Text(content_type.to_owned()),
    ));
    let data = serde_json::from_slice::<Box<RawValue>>(body);
    let sent_as = |name: &str| match name {
        "datacontenttype" => "Content-Type".to_owned(),
        _ => format!("{PREFIX}{name}"),
    };
    let checked = CloudEvent::check(
        attributes,
        data.as_ref().map_or_else(|_| null(), Clone::clone),
        &sent_as,
    );
    if let Err(error) = &data {
        errors.push(super::AttributeError {
            attribute: "data".into(),
            message: format!("(the body) is not valid JSON: {error}"),
        });
    }
    merge(checked, errors)
}

/// Adds the errors found while reading to the ones found while checking.
fn merge(
    checked: Result<CloudEvent, Refused>,
    mut errors: Vec<super::AttributeError>,
) -> Result<CloudEvent, Refused> {
    match checked {
        Ok(event) if errors.is_empty() => Ok(event),
        Ok(_) => Err(Refused::Invalid(errors)),
        Err(Refused::Invalid(more)) => {
            errors.extend(more);
            Err(Refused::Invalid(errors))
        }
        Err(unsupported) => Err(unsupported),
    }
}

fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// A header value as the binding writes it: a double-quoted string is unquoted first (older
/// senders), then one round of percent-decoding, which must give UTF-8.
pub fn decode_header(value: &[u8]) -> Option<String> {
    let unquoted;
    let value = match value {
        [b'"', inner @ .., b'"'] => {
            let mut out = Vec::with_capacity(inner.len());
            let mut bytes = inner.iter();
            while let Some(&b) = bytes.next() {
                match b {
                    b'\\' => out.push(*bytes.next()?),
                    b'"' => return None,
                    b => out.push(b),
                }
            }
            unquoted = out;
            unquoted.as_slice()
        }
        value => value,
    };
    percent_decode(value)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

/// What a header value percent-encodes: space, `"`, `%` and everything outside printable
/// ASCII (which the encoder escapes by itself).
const ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// `value` percent-encoded as the binding asks for header values.
pub fn encode_header(value: &str) -> String {
    utf8_percent_encode(value, ENCODE).to_string()
}

/// A CloudEvent in structured mode: one JSON object holding the attributes and `data`.
pub fn from_structured(body: &[u8]) -> Result<CloudEvent, Refused> {
    let members = serde_json::from_slice::<Members>(body).map_err(|error| {
        Refused::invalid(
            "(body)",
            format!("must be a CloudEvent as one JSON object: {error}"),
        )
    })?;
    from_members(members.0)
}

/// The events of a batch, each as raw JSON, or why the body is not a batch.
pub fn batch_items(body: &[u8]) -> Result<Vec<&RawValue>, Refused> {
    serde_json::from_slice::<Vec<&RawValue>>(body).map_err(|error| {
        Refused::invalid(
            "(body)",
            format!("must be a JSON array of CloudEvents: {error}"),
        )
    })
}

/// One event of a batch.
pub fn from_item(item: &RawValue) -> Result<CloudEvent, Refused> {
    from_structured(item.get().as_bytes())
}

fn from_members(members: Vec<(String, Box<RawValue>)>) -> Result<CloudEvent, Refused> {
    let mut attributes = Vec::with_capacity(members.len());
    let mut errors = Vec::new();
    let mut data = None;
    for (name, raw) in members {
        match name.as_str() {
            "data_base64" => {
                return Err(Refused::Unsupported(
                    "data_base64 (binary data) is not supported: causeway carries JSON data \
                     only; send it as JSON in data"
                        .into(),
                ));
            }
            "data" => {
                if data.replace(raw).is_some() {
                    errors.push(super::AttributeError {
                        attribute: "data".into(),
                        message: "appears more than once".into(),
                    });
                }
            }
            _ => match value_of(&raw) {
                Ok(Some(value)) => attributes.push((name, value)),
                Ok(None) => {}
                Err(message) => errors.push(super::AttributeError {
                    attribute: name,
                    message: message.into(),
                }),
            },
        }
    }
    // Without data the payload is null, as JSON has no "absent" to carry.
    let checked = CloudEvent::check(attributes, data.unwrap_or_else(null), &|name: &str| {
        name.to_owned()
    });
    merge(checked, errors)
}

/// An attribute's JSON value: a string, an integer or a boolean; `null` means unset.
fn value_of(raw: &RawValue) -> Result<Option<Value>, &'static str> {
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::Null) => Ok(None),
        Ok(serde_json::Value::String(text)) => Ok(Some(Value::Text(text))),
        Ok(serde_json::Value::Bool(value)) => Ok(Some(Value::Bool(value))),
        // JSON Schema counts 1.0 as an integer; so does this.
        Ok(serde_json::Value::Number(number)) => number
            .as_i64()
            .or_else(|| {
                number
                    .as_f64()
                    .filter(|n| n.fract() == 0.0 && n.abs() < 9.0e15)
                    .map(|n| n as i64)
            })
            .map(|n| Some(Value::Int(n)))
            .ok_or("must be an integer"),
        _ => Err("must be a string, an integer or a boolean"),
    }
}

/// A JSON object's members in order, repeated names included (a map would keep only one).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Members, A::Error> {
                Err(serde::de::Error::custom(
                    "a JSON array: a batch needs Content-Type: application/cloudevents-batch+json",
                ))
            }
        }
        // `any`, so that an array reaches `visit_seq` and its message.
        deserializer.deserialize_any(Fields)
    }
}

/// The `ce-*` headers of an envelope delivered in binary mode (values percent-encoded),
/// with `Content-Type` as its datacontenttype.
pub fn binary_headers(envelope: &Envelope, trace: &TraceContext) -> Vec<(HeaderName, HeaderValue)> {
    let attributes = attributes_of(envelope, trace);
    let mut headers = Vec::with_capacity(attributes.len() + 1);
    for (name, value) in &attributes {
        let Some(name) = header_name(name) else {
            continue;
        };
        let text = value.as_text();
        // Most values need no escape: they are copied once, not encoded first.
        let value = if needs_encoding(&text) {
            HeaderValue::from_str(&encode_header(&text))
        } else {
            HeaderValue::from_str(&text)
        };
        // Percent-encoded text is printable ASCII: always a valid header value.
        if let Ok(value) = value {
            headers.push((name, value));
        }
    }
    let content_type = HeaderValue::from_str(datacontenttype(envelope))
        .unwrap_or(HeaderValue::from_static("application/json"));
    headers.push((CONTENT_TYPE, content_type));
    headers
}

/// `ce-{attribute}`: a constant for the attributes every delivery has, built for the rest.
fn header_name(attribute: &str) -> Option<HeaderName> {
    Some(HeaderName::from_static(match attribute {
        "specversion" => "ce-specversion",
        "id" => "ce-id",
        "source" => "ce-source",
        "type" => "ce-type",
        "time" => "ce-time",
        "subject" => "ce-subject",
        "dataschema" => "ce-dataschema",
        "correlationid" => "ce-correlationid",
        "causationid" => "ce-causationid",
        "schemaversion" => "ce-schemaversion",
        "traceparent" => "ce-traceparent",
        "tracestate" => "ce-tracestate",
        other => return HeaderName::from_bytes(format!("{PREFIX}{other}").as_bytes()).ok(),
    }))
}

/// Whether `value` has a character the binding percent-encodes.
pub(super) fn needs_encoding(value: &str) -> bool {
    value
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b == b'"' || b == b'%')
}

/// An envelope as a structured CloudEvent in JSON: every attribute as a member, the payload
/// as `data`, byte for byte.
pub fn structured_body(envelope: &Envelope, trace: &TraceContext) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    for (name, value) in attributes_of(envelope, trace) {
        let value = match value {
            Out::Text(text) => serde_json::Value::String(text.into_owned()),
            Out::Bool(value) => serde_json::Value::Bool(value),
            Out::Int(value) => serde_json::Value::from(value),
        };
        object.insert(name.to_owned(), value);
    }
    object.insert(
        "datacontenttype".into(),
        datacontenttype(envelope).to_owned().into(),
    );
    // Serializing a map of strings cannot fail; it ends with '}', which `data` goes before.
    let mut body = serde_json::to_vec(&object).unwrap_or_else(|_| b"{}".to_vec());
    body.pop();
    if body.len() > 1 {
        body.push(b',');
    }
    body.extend_from_slice(b"\"data\":");
    body.extend_from_slice(envelope.payload.get().as_bytes());
    body.push(b'}');
    body
}
