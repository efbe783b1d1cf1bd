//! Is a new schema safe for the consumers of an old one?
//!
//! A change is safe when events written under either version keep making sense to code
//! written for the other: nothing a consumer reads disappears or changes type, and nothing
//! that was valid becomes invalid. The check walks both schemas side by side over the
//! keywords that carry that meaning (`type`, `properties`, `required`, `enum`, `const`,
//! `items`, `additionalProperties` and the numeric, string and array bounds), following
//! local `$ref`s, and names each breaking difference in plain words.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Map, Value};

/// One breaking difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Breaking {
    /// Where, as a path into the payload (`/items/*/sku`; `/` for the top).
    pub path: String,
    /// The kind: `property-removed`, `type-changed`, `newly-required`, `enum-narrowed`,
    /// `constraint-tightened`.
    pub kind: &'static str,
    /// The difference in words.
    pub message: String,
}

/// Every breaking difference from `old` to `new`; empty when `new` is safe.
pub fn check(old: &Value, new: &Value) -> Vec<Breaking> {
    let mut walk = Walk {
        old_root: old,
        new_root: new,
        found: Vec::new(),
    };
    walk.compare(old, new, "", 0);
    walk.found
}

struct Walk<'a> {
    old_root: &'a Value,
    new_root: &'a Value,
    found: Vec<Breaking>,
}

/// How deep `$ref`s and nesting are followed (recursive schemas end here).
const MAX_DEPTH: usize = 32;

impl<'a> Walk<'a> {
    fn report(&mut self, path: &str, kind: &'static str, message: String) {
        let path = if path.is_empty() { "/" } else { path };
        self.found.push(Breaking {
            path: path.to_owned(),
            kind,
            message,
        });
    }

    fn compare(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let (Some(old), Some(new)) = (
            resolve(self.old_root, old, 0),
            resolve(self.new_root, new, 0),
        ) else {
            return;
        };
        self.types(old, new, path);
        self.enums(old, new, path);
        self.bounds(old, new, path);
        self.objects(old, new, path, depth);
        if let (Some(old_items), Some(new_items)) = (old.get("items"), new.get("items")) {
            if old_items.is_object() && new_items.is_object() {
                self.compare(old_items, new_items, &format!("{path}/*"), depth + 1);
            }
        }
    }

    fn types(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        let Some(new_types) = types(new) else {
            return;
        };
        let old_types = types(old).unwrap_or_else(|| {
            ["null", "boolean", "object", "array", "number", "string"]
                .into_iter()
                .map(String::from)
                .collect()
        });
        // An integer is a number: number → integer narrows, integer → number widens.
        let lost: Vec<&String> = old_types
            .iter()
            .filter(|t| {
                let widened = *t == "integer" && new_types.contains("number");
                !(new_types.contains(*t) || widened)
            })
            .collect();
        if !lost.is_empty() {
            let was = old_types.iter().cloned().collect::<Vec<_>>().join(" or ");
            let now = new_types.iter().cloned().collect::<Vec<_>>().join(" or ");
            self.report(
                path,
                "type-changed",
                format!("type changed from {was} to {now}"),
            );
        }
    }

    fn enums(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        if let Some(new_enum) = new.get("enum").and_then(Value::as_array) {
            match old.get("enum").and_then(Value::as_array) {
                Some(old_enum) => {
                    let removed: Vec<String> = old_enum
                        .iter()
                        .filter(|v| !new_enum.contains(v))
                        .map(Value::to_string)
                        .collect();
                    if !removed.is_empty() {
                        let message =
                            format!("enum narrowed: {} no longer allowed", removed.join(", "));
                        self.report(path, "enum-narrowed", message);
                    }
                }
                None => self.report(
                    path,
                    "enum-narrowed",
                    "now limited to an enum of values".into(),
                ),
            }
        }
        if let Some(constant) = new.get("const") {
            if old.get("const") != Some(constant) {
                self.report(
                    path,
                    "constraint-tightened",
                    format!("now fixed to {constant}"),
                );
            }
        }
    }

    fn bounds(&mut self, old: &Map<String, Value>, new: &Map<String, Value>, path: &str) {
        const LOWER: [&str; 5] = [
            "minimum",
            "exclusiveMinimum",
            "minLength",
            "minItems",
            "minProperties",
        ];
        const UPPER: [&str; 5] = [
            "maximum",
            "exclusiveMaximum",
            "maxLength",
            "maxItems",
            "maxProperties",
        ];
        for keyword in LOWER {
            if let Some(now) = new.get(keyword).and_then(Value::as_f64) {
                let was = old.get(keyword).and_then(Value::as_f64);
                if was.is_none_or(|was| now > was) {
                    let message = tightened(keyword, old.get(keyword), now);
                    self.report(path, "constraint-tightened", message);
                }
            }
        }
        for keyword in UPPER {
            if let Some(now) = new.get(keyword).and_then(Value::as_f64) {
                let was = old.get(keyword).and_then(Value::as_f64);
                if was.is_none_or(|was| now < was) {
                    let message = tightened(keyword, old.get(keyword), now);
                    self.report(path, "constraint-tightened", message);
                }
            }
        }
        for keyword in ["pattern", "format", "multipleOf"] {
            if let Some(now) = new.get(keyword) {
                if old.get(keyword) != Some(now) {
                    let message = format!("{keyword} is now {now}");
                    self.report(path, "constraint-tightened", message);
                }
            }
        }
    }

    fn objects(
        &mut self,
        old: &'a Map<String, Value>,
        new: &'a Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
        let old_props = old.get("properties").and_then(Value::as_object);
        let new_props = new.get("properties").and_then(Value::as_object);
        for (name, old_schema) in old_props.into_iter().flatten() {
            let child = format!("{path}/{name}");
            match new_props.and_then(|props| props.get(name)) {
                Some(new_schema) => self.compare(old_schema, new_schema, &child, depth + 1),
                None => self.report(&child, "property-removed", "property removed".into()),
            }
        }
        let old_required = required(old);
        for name in required(new).difference(&old_required) {
            self.report(
                &format!("{path}/{name}"),
                "newly-required",
                "newly required".into(),
            );
        }
        let closed_now = new.get("additionalProperties") == Some(&Value::Bool(false));
        let closed_before = old.get("additionalProperties") == Some(&Value::Bool(false));
        if closed_now && !closed_before {
            self.report(
                path,
                "constraint-tightened",
                "no longer allows properties beyond those listed".into(),
            );
        }
    }
}

/// The object a schema is, following local `$ref`s (`#/...`); `None` for `true` or what
/// cannot be followed.
fn resolve<'v>(root: &'v Value, schema: &'v Value, depth: usize) -> Option<&'v Map<String, Value>> {
    let object = schema.as_object()?;
    match object.get("$ref").and_then(Value::as_str) {
        Some(reference) if depth < MAX_DEPTH => {
            let pointer = reference.strip_prefix('#')?;
            resolve(root, root.pointer(pointer)?, depth + 1)
        }
        Some(_) => None,
        None => Some(object),
    }
}

fn types(schema: &Map<String, Value>) -> Option<BTreeSet<String>> {
    match schema.get("type")? {
        Value::String(one) => Some(BTreeSet::from([one.clone()])),
        Value::Array(many) => Some(
            many.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
        ),
        _ => None,
    }
}

fn required(schema: &Map<String, Value>) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn tightened(keyword: &str, was: Option<&Value>, now: f64) -> String {
    match was {
        Some(was) => format!("{keyword} tightened from {was} to {now}"),
        None => format!("{keyword} {now} added"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(old: Value, new: Value) -> Vec<(String, &'static str)> {
        check(&old, &new)
            .into_iter()
            .map(|b| (b.path, b.kind))
            .collect()
    }

    #[test]
    fn an_added_optional_property_is_safe() {
        let old = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let new = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}});
        assert!(check(&old, &new).is_empty());
    }

    #[test]
    fn each_kind_of_breaking_change_is_named() {
        let old = json!({
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": "number"},
                "b": {"type": "string", "enum": ["x", "y"]},
                "c": {"type": "string", "maxLength": 10},
                "d": {"type": "array", "items": {"type": "object", "properties": {"e": {"type": "string"}}}},
                "gone": {"type": "string"}
            }
        });
        let new = json!({
            "type": "object",
            "required": ["a", "b"],
            "additionalProperties": false,
            "properties": {
                "a": {"type": "string"},
                "b": {"type": "string", "enum": ["x"]},
                "c": {"type": "string", "maxLength": 5},
                "d": {"type": "array", "items": {"$ref": "#/$defs/d"}}
            },
            "$defs": {"d": {"type": "object", "properties": {"e": {"type": "integer"}}}}
        });
        assert_eq!(
            kinds(old, new),
            [
                ("/a".to_string(), "type-changed"),
                ("/b".to_string(), "enum-narrowed"),
                ("/c".to_string(), "constraint-tightened"),
                ("/d/*/e".to_string(), "type-changed"),
                ("/gone".to_string(), "property-removed"),
                ("/b".to_string(), "newly-required"),
                ("/".to_string(), "constraint-tightened"),
            ]
        );
    }

    #[test]
    fn widening_is_safe() {
        let old = json!({"type": "integer", "minimum": 5, "maximum": 10, "enum": [5, 6]});
        let new = json!({"type": "number", "minimum": 1, "maximum": 20, "enum": [5, 6, 7]});
        assert!(check(&old, &new).is_empty(), "{:?}", check(&old, &new));
    }

    #[test]
    fn a_recursive_schema_ends() {
        let schema = json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
            "properties": {"next": {"$ref": "#/$defs/node"}}}}});
        assert!(check(&schema, &schema).is_empty());
    }
}
