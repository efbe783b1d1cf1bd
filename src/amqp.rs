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
