//! The payload grammar: which JSON an event may carry, checked on the very bytes that are
//! published, in the same pass that builds the value a schema is validated against.
//!
//! A payload is any JSON value (RFC 8259) that is also I-JSON (RFC 7493) in the ways that
//! decide what a reader sees, plus a depth limit:
//! - every number is within the range of a double (a finite IEEE 754 binary64): `1e400` is
//!   refused, since readers disagree about it (an error, infinity, a big decimal) and a
//!   validator cannot check a value it cannot read;
//! - no object has two members with the same name: readers disagree about which one counts;
//! - strings are Unicode: no unpaired surrogate escape (`"\ud800"`);
//! - arrays and objects nest at most [`MAX_DEPTH`] levels deep.
//!
//! The bytes are kept as they came; these rules only decide whether they are accepted.

use std::{borrow::Cow, cell::RefCell, collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value, value::RawValue};

/// Deepest nesting of arrays and objects in a payload (`[[1]]` is 2 deep; a number, 0).
///
/// Apps receive the payload inside the envelope, one level deeper, and may nest it again in
/// events of their own; 32 leaves room for both under the strictest common parser default
/// (System.Text.Json reads 64 levels) and far under serde_json's 128, while no record-like
/// event comes near it.
pub const MAX_DEPTH: usize = 32;

/// Objects with more members than this look for repeated names in a hash set instead of
/// comparing with each name before.
const FEW_MEMBERS: usize = 16;

/// A payload outside the grammar: where, and what is wrong there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the payload{}: {breach}", At(pointer))]
pub struct Malformed {
    /// Where, as a JSON Pointer (`/items/0/price`; empty for the payload itself).
    pub pointer: String,
    /// What is wrong.
    pub breach: Breach,
}

/// What part of the grammar a payload breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Breach {
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("arrays and objects are nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
    /// A number a double cannot hold.
    #[error("a number is out of the range of a double (finite IEEE 754 binary64)")]
    NumberOutOfRange,
    /// A member name used twice in one object.
    #[error("the member name {0:?} appears more than once in the object")]
    RepeatedName(String),
    /// A string that is not Unicode (an unpaired surrogate escape), in the parser's words.
    #[error("{0}")]
    Text(String),
}

struct At<'a>(&'a str);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " at {}", self.0)
        }
    }
}

/// Checks `payload` against the grammar without building anything.
pub fn check(payload: &RawValue) -> Result<(), Malformed> {
    walk::<false>(payload).map(drop)
}

/// Checks `payload` against the grammar and returns its value, for a schema to validate.
pub fn parse(payload: &RawValue) -> Result<Value, Malformed> {
    walk::<true>(payload)
}

fn walk<const BUILD: bool>(payload: &RawValue) -> Result<Value, Malformed> {
    let trail = RefCell::new(Trail::default());
    let mut json = serde_json::Deserializer::from_str(payload.get());
    let walked = Walk::<BUILD> {
        depth: 0,
        trail: &trail,
    }
    .deserialize(&mut json);
    walked.map_err(|error| {
        let trail = trail.into_inner();
        Malformed {
            pointer: trail.pointer(),
            breach: trail.breach.unwrap_or_else(|| breach_of(&error)),
        }
    })
}

/// The breach serde_json found itself (a number out of range, a bad string escape).
fn breach_of(error: &serde_json::Error) -> Breach {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    let message = text.strip_suffix(&position).unwrap_or(&text);
    if message == "number out of range" {
        Breach::NumberOutOfRange
    } else {
        Breach::Text(message.to_owned())
    }
}

/// The way back out of a failure, recorded as the error passes each level: no cost on the
/// way in.
#[derive(Default)]
struct Trail {
    /// Reference tokens, innermost first, escaped for a JSON Pointer.
    reversed: Vec<String>,
    /// The breach found by the walk (rather than by the parser).
    breach: Option<Breach>,
}

impl Trail {
    fn pointer(&self) -> String {
        self.reversed
            .iter()
            .rev()
            .fold(String::new(), |mut pointer, token| {
                pointer.push('/');
                pointer.push_str(token);
                pointer
            })
    }
}

/// A JSON Pointer reference token for a member name (RFC 6901: `~` and `/` escaped).
fn token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Walks one value at `depth`; builds it only when `BUILD`, returning `null` otherwise.
struct Walk<'t, const BUILD: bool> {
    depth: usize,
    trail: &'t RefCell<Trail>,
}

impl<const BUILD: bool> Walk<'_, BUILD> {
    fn breach<E: de::Error>(&self, breach: Breach) -> E {
        let error = E::custom(&breach);
        self.trail.borrow_mut().breach = Some(breach);
        error
    }

    /// The depth inside a container that starts here.
    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.breach(Breach::TooDeep));
        }
        Ok(depth)
    }

    fn passed(&self, token: String) {
        self.trail.borrow_mut().reversed.push(token);
    }

    fn built(value: impl FnOnce() -> Value) -> Value {
        if BUILD { value() } else { Value::Null }
    }
}

impl<'de, const BUILD: bool> DeserializeSeed<'de> for Walk<'_, BUILD> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, const BUILD: bool> Visitor<'de> for Walk<'_, BUILD> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Self::built(|| Value::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Self::built(|| Value::Number(value.into())))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Self::built(|| Value::Number(value.into())))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        // The parser refuses what overflows a double before it gets here; this keeps the
        // rule true whatever the parser does.
        match Number::from_f64(value) {
            Some(number) => Ok(Self::built(|| Value::Number(number))),
            None => Err(self.breach(Breach::NumberOutOfRange)),
        }
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Self::built(|| Value::String(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Self::built(|| Value::String(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        let mut index = 0usize;
        loop {
            let item = Walk::<BUILD> {
                depth,
                trail: self.trail,
            };
            match seq.next_element_seed(item) {
                Ok(Some(value)) => {
                    if BUILD {
                        items.push(value);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    self.passed(index.to_string());
                    return Err(error);
                }
            }
            index += 1;
        }
        Ok(Self::built(|| Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut object = Map::new();
        let mut names = Names::default();
        while let Some(name) = map.next_key_seed(Name)? {
            let repeated = if BUILD {
                object.contains_key(name.as_ref())
            } else {
                !names.insert(name.clone())
            };
            if repeated {
                self.passed(token(&name));
                return Err(self.breach(Breach::RepeatedName(name.into_owned())));
            }
            let member = Walk::<BUILD> {
                depth,
                trail: self.trail,
            };
            match map.next_value_seed(member) {
                Ok(value) => {
                    if BUILD {
                        object.insert(name.into_owned(), value);
                    }
                }
                Err(error) => {
                    self.passed(token(&name));
                    return Err(error);
                }
            }
        }
        Ok(Self::built(|| Value::Object(object)))
    }
}

/// The member names of one object seen so far: compared one by one while they are few,
/// hashed once they are many (so that a huge object costs linear time, not quadratic).
#[derive(Default)]
struct Names<'de> {
    few: Vec<Cow<'de, str>>,
    many: HashSet<Cow<'de, str>>,
}

impl<'de> Names<'de> {
    /// Adds `name`; false when it was there already.
    fn insert(&mut self, name: Cow<'de, str>) -> bool {
        if !self.many.is_empty() {
            return self.many.insert(name);
        }
        if self.few.contains(&name) {
            return false;
        }
        self.few.push(name);
        if self.few.len() > FEW_MEMBERS {
            self.many.extend(self.few.drain(..));
        }
        true
    }
}

/// A member name, borrowed from the payload unless it holds escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(name))
    }

    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(name.to_owned()))
    }

    fn visit_string<E>(self, name: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(name))
    }
}

#[cfg(test)]
pub(crate) mod tests;
