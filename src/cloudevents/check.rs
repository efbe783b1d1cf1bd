//! Reading a CloudEvent: every attribute checked, each failure named as it was sent.

use std::collections::{BTreeMap, btree_map::Entry};

use serde_json::value::RawValue;

use super::{
    AttributeError, CloudEvent, MAX_EXTENSION_BYTES, MAX_EXTENSIONS, MAX_ID, MAX_ID_HEADER,
    MAX_NAME, MAX_TEXT, Refused, SPEC_VERSION, Value, event_id,
    rules::{
        clip, is_absolute_uri, is_ce_string, is_extension_name, is_json_media_type,
        is_uri_reference, normalize_time, version_in_uri,
    },
};
use crate::envelope::{
    CloudEventAttributes, ExtensionValue, SchemaVersion, TraceContext, is_valid_event_type,
};

impl CloudEvent {
    /// Checks every attribute; `sent_as` gives the name an attribute was sent under, for
    /// the errors. Every problem is reported, not only the first.
    pub fn check(
        attributes: Vec<(String, Value)>,
        data: Box<RawValue>,
        sent_as: &dyn Fn(&str) -> String,
    ) -> Result<CloudEvent, Refused> {
        let mut checker = Checker {
            sent_as,
            errors: Vec::new(),
        };
        let mut fields = BTreeMap::new();
        for (name, value) in attributes {
            match fields.entry(name) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => checker.fail(slot.key(), "appears more than once"),
            }
        }
        let mut take = |name: &str| fields.remove(name);
        let specversion = take("specversion");
        let id = take("id");
        let source = take("source");
        let event_type = take("type");
        let time = take("time");
        let subject = take("subject");
        let dataschema = take("dataschema");
        let datacontenttype = take("datacontenttype");
        let correlationid = take("correlationid");
        let causationid = take("causationid");
        let schemaversion = take("schemaversion");

        match checker.required("specversion", specversion) {
            Some(version) if version == SPEC_VERSION => {}
            Some(version) => checker.fail(
                "specversion",
                format!("must be 1.0 (CloudEvents 1.0); got {:?}", clip(&version)),
            ),
            None => {}
        }
        let id = checker
            .required("id", id)
            .filter(|id| checker.string("id", id, MAX_ID));
        let source = checker.required("source", source).filter(|source| {
            checker.check(
                is_uri_reference(source),
                "source",
                format!("must be a URI reference of 1 to {MAX_TEXT} characters"),
            )
        });
        let event_type = checker.required("type", event_type).filter(|t| {
            checker.check(
                is_valid_event_type(t),
                "type",
                "must match ^[A-Za-z][A-Za-z0-9_.-]{0,127}$ (causeway's event types)",
            )
        });
        let occurred_at = checker.optional("time", time).and_then(|time| {
            let normalized = normalize_time(&time);
            checker.check(
                normalized.is_some(),
                "time",
                "must be an RFC 3339 timestamp, such as 2026-11-27T12:00:00Z",
            );
            normalized
        });
        let subject = checker
            .optional("subject", subject)
            .filter(|s| checker.string("subject", s, MAX_TEXT));
        let dataschema = checker.optional("dataschema", dataschema).filter(|uri| {
            checker.check(
                is_absolute_uri(uri),
                "dataschema",
                format!("must be an absolute URI of 1 to {MAX_TEXT} characters"),
            )
        });
        let datacontenttype = checker.optional("datacontenttype", datacontenttype);
        if let Some(content_type) = &datacontenttype {
            if !is_json_media_type(content_type) {
                return Err(Refused::Unsupported(format!(
                    "datacontenttype {:?} is not JSON: causeway carries JSON data only \
                     (application/json or a */*+json type)",
                    clip(content_type)
                )));
            }
        }
        let correlation_id = checker
            .optional("correlationid", correlationid)
            .filter(|v| checker.printable("correlationid", v));
        let causation_id = checker
            .optional("causationid", causationid)
            .filter(|v| checker.printable("causationid", v));
        let mut schema_version =
            checker
                .optional("schemaversion", schemaversion)
                .and_then(|text| {
                    let parsed = text.parse::<SchemaVersion>().ok();
                    checker.check(
                        parsed.is_some(),
                        "schemaversion",
                        "must be MAJOR.MINOR, such as 2.0",
                    );
                    parsed
                });
        if schema_version.is_none() {
            schema_version = dataschema.as_deref().and_then(version_in_uri);
        }
        let extensions = checker.extensions(fields);
        if !checker.errors.is_empty() {
            return Err(Refused::Invalid(checker.errors));
        }
        // Each is Some when no error was recorded: required ones fail when absent.
        let (Some(id), Some(source), Some(event_type)) = (id, source, event_type) else {
            return Err(Refused::invalid("id", "is required"));
        };
        let text = |name: &str| match extensions.get(name) {
            Some(ExtensionValue::Text(value)) => Some(value.as_bytes()),
            _ => None,
        };
        let trace = TraceContext::from_untrusted(text("traceparent"), text("tracestate"));
        let event_id = event_id(&source, &id);
        let attributes = CloudEventAttributes {
            id: (id != event_id.hyphenated().to_string()).then_some(id),
            source: Some(source.clone()),
            subject,
            dataschema,
            datacontenttype: datacontenttype
                .filter(|t| !t.trim().eq_ignore_ascii_case("application/json")),
            extensions,
        };
        Ok(CloudEvent {
            event_id,
            event_type,
            occurred_at,
            schema_version,
            correlation_id,
            causation_id,
            trace,
            source,
            attributes,
            data,
        })
    }
}

/// Collects what is wrong while the attributes are read.
struct Checker<'a> {
    sent_as: &'a dyn Fn(&str) -> String,
    errors: Vec<AttributeError>,
}

impl Checker<'_> {
    fn fail(&mut self, name: &str, message: impl Into<String>) {
        self.errors.push(AttributeError {
            attribute: (self.sent_as)(name),
            message: message.into(),
        });
    }

    /// Records the failure unless `ok`; returns `ok`.
    fn check(&mut self, ok: bool, name: &str, message: impl Into<String>) -> bool {
        if !ok {
            self.fail(name, message);
        }
        ok
    }

    fn required(&mut self, name: &str, value: Option<Value>) -> Option<String> {
        if value.is_none() {
            self.fail(name, "is required");
        }
        self.optional(name, value)
    }

    /// A string attribute's text; other types are refused.
    fn optional(&mut self, name: &str, value: Option<Value>) -> Option<String> {
        match value? {
            Value::Text(text) => Some(text),
            _ => {
                self.fail(name, "must be a string");
                None
            }
        }
    }

    /// A CloudEvents `String` of 1 to `max` characters.
    fn string(&mut self, name: &str, value: &str, max: usize) -> bool {
        self.check(
            !value.is_empty() && value.chars().count() <= max && is_ce_string(value),
            name,
            format!("must be 1 to {max} characters without control characters"),
        )
    }

    /// An id that AMQP properties and HTTP headers carry as is, as for native publishes.
    fn printable(&mut self, name: &str, value: &str) -> bool {
        let ok = crate::envelope::is_printable_within(value.as_bytes(), MAX_ID_HEADER);
        self.check(
            ok,
            name,
            format!("must be 1 to {MAX_ID_HEADER} printable ASCII characters"),
        )
    }

    /// The remaining attributes: extensions, checked and bounded.
    fn extensions(&mut self, fields: BTreeMap<String, Value>) -> BTreeMap<String, ExtensionValue> {
        let mut extensions = BTreeMap::new();
        let mut bytes = 0;
        for (name, value) in fields {
            if !is_extension_name(&name) {
                self.fail(
                    &name,
                    format!(
                        "is not a valid attribute name (1 to {MAX_NAME} lower-case letters \
                         and digits, not data)"
                    ),
                );
                continue;
            }
            let value = match value {
                // Unlike `id` or `subject`, an extension may be empty (Dapr sends an empty
                // `tracestate`).
                Value::Text(text) if text.is_empty() => ExtensionValue::Text(text),
                Value::Text(text) => {
                    if !self.string(&name, &text, MAX_TEXT) {
                        continue;
                    }
                    ExtensionValue::Text(text)
                }
                Value::Bool(value) => ExtensionValue::Bool(value),
                Value::Int(value) if i32::try_from(value).is_ok() => ExtensionValue::Int(value),
                Value::Int(_) => {
                    self.fail(&name, "is an integer outside the 32-bit range");
                    continue;
                }
            };
            bytes += name.len() + value.to_string().len();
            if extensions.len() == MAX_EXTENSIONS {
                self.fail(
                    &name,
                    format!("is one extension too many: at most {MAX_EXTENSIONS}"),
                );
                break;
            }
            if bytes > MAX_EXTENSION_BYTES {
                self.fail(
                    &name,
                    format!(
                        "takes the extensions over {MAX_EXTENSION_BYTES} bytes (names and values)"
                    ),
                );
                break;
            }
            extensions.insert(name, value);
        }
        extensions
    }
}
