//! The envelope and an event's identity as JSON, written field by field: the bytes serde_json
//! writes for them, without its machinery per field and with one scan per string, since
//! nearly every value (ids, types, versions, times) needs no escape.

use serde_json::value::RawValue;
use uuid::Uuid;

use super::{Envelope, EventIdentity, SchemaVersion, uuid_text};

/// Room for the fields around a payload.
const FIELDS: usize = 384;

/// `envelope` as JSON.
pub(super) fn envelope(envelope: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(envelope.payload.get().len() + FIELDS);
    out.push(b'{');
    identity_fields(
        &mut out,
        &envelope.event_id,
        &envelope.event_type,
        envelope.schema_version,
        &envelope.correlation_id,
        envelope.causation_id.as_deref(),
        &envelope.occurred_at,
    );
    out.extend_from_slice(b",\"source\":");
    string(&mut out, &envelope.source);
    out.extend_from_slice(b",\"payload\":");
    raw(&mut out, &envelope.payload);
    if let Some(attributes) = &envelope.cloudevents {
        out.extend_from_slice(b",\"cloudevents\":");
        // Rare, and with nested maps: serde_json writes it. Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, attributes);
    }
    out.push(b'}');
    out
}

/// `identity` as JSON.
pub(super) fn identity(identity: &EventIdentity) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIELDS);
    out.push(b'{');
    identity_fields(
        &mut out,
        &identity.event_id,
        &identity.event_type,
        identity.schema_version,
        &identity.correlation_id,
        identity.causation_id.as_deref(),
        &identity.occurred_at,
    );
    out.push(b'}');
    out
}

/// The fields the envelope and the identity share, in their order.
fn identity_fields(
    out: &mut Vec<u8>,
    event_id: &Uuid,
    event_type: &str,
    schema_version: SchemaVersion,
    correlation_id: &str,
    causation_id: Option<&str>,
    occurred_at: &str,
) {
    out.extend_from_slice(b"\"event_id\":\"");
    out.extend_from_slice(uuid_text(event_id, &mut Uuid::encode_buffer()).as_bytes());
    out.extend_from_slice(b"\",\"event_type\":");
    string(out, event_type);
    out.extend_from_slice(b",\"schema_version\":\"");
    out.extend_from_slice(schema_version.text().as_bytes());
    out.extend_from_slice(b"\",\"correlation_id\":");
    string(out, correlation_id);
    out.extend_from_slice(b",\"causation_id\":");
    match causation_id {
        Some(causation_id) => string(out, causation_id),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"occurred_at\":");
    string(out, occurred_at);
}

/// A JSON string: as it is when nothing in it needs an escape, else escaped by serde_json.
fn string(out: &mut Vec<u8>, value: &str) {
    // serde_json escapes exactly these: control characters, the quote and the backslash.
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

/// A JSON value kept byte for byte.
fn raw(out: &mut Vec<u8>, value: &RawValue) {
    out.extend_from_slice(value.get().as_bytes());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::envelope::{CloudEventAttributes, ExtensionValue};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,40}",
            any::<String>(),
            Just("a\"b\\c\n\u{1}é".to_owned())
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The same bytes as serde_json, whatever the strings hold.
        #[test]
        fn written_as_serde_json_writes_them(
            id in any::<u128>(),
            event_type in text(),
            major in any::<u32>(),
            minor in any::<u32>(),
            correlation_id in text(),
            causation_id in proptest::option::of(text()),
            occurred_at in text(),
            source in text(),
            payload in prop_oneof![
                Just("{}".to_owned()),
                Just("[1, \"x\", {\"a\": null}]".to_owned()),
                text().prop_map(|t| serde_json::to_string(&t).unwrap()),
            ],
            subject in proptest::option::of(text()),
        ) {
            let identity = EventIdentity {
                event_id: Uuid::from_u128(id),
                event_type,
                schema_version: SchemaVersion { major, minor },
                correlation_id,
                causation_id,
                occurred_at,
            };
            prop_assert_eq!(
                String::from_utf8(super::identity(&identity)).unwrap(),
                serde_json::to_string(&identity).unwrap()
            );
            let payload = RawValue::from_string(payload).unwrap();
            let mut envelope = Envelope::new(identity, &source, payload);
            if let Some(subject) = subject {
                envelope.cloudevents = Some(Box::new(CloudEventAttributes {
                    subject: Some(subject),
                    extensions: BTreeMap::from([("tenant".to_owned(), ExtensionValue::Int(7))]),
                    ..CloudEventAttributes::default()
                }));
            }
            prop_assert_eq!(
                String::from_utf8(super::envelope(&envelope)).unwrap(),
                serde_json::to_string(&envelope).unwrap()
            );
        }
    }
}
