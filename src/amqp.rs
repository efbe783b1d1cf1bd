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
