//! Small helpers for AMQP field values: writing text, and reading headers whatever type the
//! writer chose.

use lapin::{
    BasicProperties,
    types::{AMQPValue, LongString},
};

/// A text field value.
pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// A text header.
pub fn text_header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(v) => Some(v.to_string()),
        AMQPValue::ShortString(v) => Some(v.to_string()),
        _ => None,
    }
}

/// A text header's bytes, as the writer sent them (not necessarily UTF-8).
pub fn bytes_header<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a [u8]> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(v) => Some(v.as_bytes()),
        AMQPValue::ShortString(v) => Some(v.as_str().as_bytes()),
        _ => None,
    }
}

/// An integer header, whatever integer type (or decimal text) the writer used.
pub fn int_header(properties: &BasicProperties, name: &str) -> Option<u64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongString(v) => v.to_string().parse().ok(),
        _ => None,
    }
}

/// The reply code of a channel the broker closed (404 NOT_FOUND, 405 RESOURCE_LOCKED, 406
/// PRECONDITION_FAILED, …), when `error` is one.
pub fn soft_error(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            lapin::protocol::AMQPErrorKind::Soft(soft) => Some(soft.get_id()),
            lapin::protocol::AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// NOT_FOUND: a queue or exchange that does not exist.
pub const NOT_FOUND: u16 = 404;
/// RESOURCE_LOCKED: an exclusive queue another connection owns.
pub const RESOURCE_LOCKED: u16 = 405;
/// PRECONDITION_FAILED: a declaration whose arguments differ from the existing one's.
pub const PRECONDITION_FAILED: u16 = 406;

#[cfg(test)]
pub(crate) mod tests {
    use lapin::types::{FieldTable, ShortString};
    use proptest::prelude::*;

    use super::*;

    /// Any scalar field value another producer could put in a header.
    pub(crate) fn field_value() -> impl Strategy<Value = AMQPValue> {
        prop_oneof![
            any::<bool>().prop_map(AMQPValue::Boolean),
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<f32>().prop_map(AMQPValue::Float),
            any::<f64>().prop_map(AMQPValue::Double),
            any::<u64>().prop_map(AMQPValue::Timestamp),
            Just(AMQPValue::Void),
            "[ -~]{0,60}".prop_map(|s| AMQPValue::ShortString(ShortString::try_new(s).unwrap())),
            "-?[0-9]{1,22}".prop_map(|s| AMQPValue::LongString(s.into())),
            prop::collection::vec(any::<u8>(), 0..80)
                .prop_map(|bytes| AMQPValue::LongString(bytes.into())),
        ]
    }

    /// Properties whose headers hold anything under the names the sidecar reads.
    pub(crate) fn properties() -> impl Strategy<Value = BasicProperties> {
        let name = prop_oneof![
            Just("traceparent".to_owned()),
            Just("tracestate".to_owned()),
            Just("x-causeway-attempts".to_owned()),
            Just("x-delivery-count".to_owned()),
            Just("x-causeway-reason".to_owned()),
            Just("x-causeway-last-status".to_owned()),
            Just("x-causeway-last-error".to_owned()),
            Just("x-causeway-dead-lettered-at".to_owned()),
            "[a-z-]{1,12}",
        ];
        (
            prop::collection::vec((name, field_value()), 0..8),
            proptest::option::of("[ -~]{0,80}"),
        )
            .prop_map(|(headers, message_id)| {
                let mut table = FieldTable::default();
                for (name, value) in headers {
                    table.insert(ShortString::try_new(name).unwrap(), value);
                }
                let properties = BasicProperties::default().with_headers(table);
                match message_id {
                    Some(id) => properties.with_message_id(ShortString::try_new(id).unwrap()),
                    None => properties,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever type a header has, reading it never panics and gives its value only
        /// when the value is what was asked for.
        #[test]
        fn headers_of_any_type_read_as_their_value_or_nothing(value in field_value()) {
            let mut table = FieldTable::default();
            table.insert("h".into(), value.clone());
            let properties = BasicProperties::default().with_headers(table);
            let int = int_header(&properties, "h");
            let text = text_header(&properties, "h");
            let bytes = bytes_header(&properties, "h");
            match &value {
                AMQPValue::LongUInt(v) => prop_assert_eq!(int, Some(u64::from(*v))),
                AMQPValue::LongLongInt(v) => prop_assert_eq!(int, u64::try_from(*v).ok()),
                AMQPValue::LongString(v) => {
                    prop_assert_eq!(bytes, Some(v.as_bytes()));
                    prop_assert_eq!(text, Some(String::from_utf8_lossy(v.as_bytes()).into_owned()));
                    let decimal = std::str::from_utf8(v.as_bytes()).ok().and_then(|s| s.parse().ok());
                    prop_assert_eq!(int, decimal);
                }
                AMQPValue::ShortString(v) => prop_assert_eq!(text.as_deref(), Some(v.as_str())),
                AMQPValue::Boolean(_) | AMQPValue::Void | AMQPValue::Double(_) | AMQPValue::Float(_) => {
                    prop_assert_eq!((int, text, bytes), (None, None, None));
                }
                _ => {}
            }
            prop_assert_eq!(int_header(&properties, "missing"), None);
        }
    }
}
