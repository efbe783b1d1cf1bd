//! Reading and building the parts of a pod spec: its lists of named items, kept in their
//! order, and the small mappings the sidecar adds.

use yaml_serde::{Mapping, Value};

use super::Problem;

/// The pod's spec, which must be a mapping with containers.
pub(super) fn pod_spec<'a>(pod: &'a mut Mapping, path: &str) -> Result<&'a mut Mapping, Problem> {
    match pod.get_mut("spec") {
        Some(Value::Mapping(spec)) if spec.contains_key("containers") => Ok(spec),
        Some(Value::Mapping(_)) => Err(Problem::Malformed(format!(
            "{path}spec.containers is missing"
        ))),
        _ => Err(Problem::Malformed(format!(
            "{path}spec is missing or not a mapping"
        ))),
    }
}

/// The pod's annotations, created when missing or null (metadata goes before spec).
pub(super) fn annotations<'a>(
    pod: &'a mut Mapping,
    path: &str,
) -> Result<&'a mut Mapping, Problem> {
    if matches!(pod.get("metadata"), None | Some(Value::Null)) {
        pod.shift_remove("metadata");
        insert_before(pod, "spec", "metadata", Value::Mapping(Mapping::new()));
    }
    let Some(Value::Mapping(metadata)) = pod.get_mut("metadata") else {
        return Err(Problem::Malformed(format!(
            "{path}metadata is not a mapping"
        )));
    };
    let annotations = metadata
        .entry("annotations".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if annotations.is_null() {
        *annotations = Value::Mapping(Mapping::new());
    }
    annotations
        .as_mapping_mut()
        .ok_or_else(|| Problem::Malformed(format!("{path}metadata.annotations is not a mapping")))
}

/// The items of the list `key` of `spec` (none when missing or null).
pub(super) fn list<'a>(spec: &'a Mapping, key: &str, path: &str) -> Result<&'a [Value], Problem> {
    match spec.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Sequence(items)) => {
            if items.iter().all(Value::is_mapping) {
                Ok(items)
            } else {
                Err(Problem::Malformed(format!(
                    "{path}spec.{key} holds an item that is not a mapping"
                )))
            }
        }
        Some(_) => Err(Problem::Malformed(format!(
            "{path}spec.{key} is not a list"
        ))),
    }
}

/// The list `key` of `spec`, created (before `before`, or at the end) when missing or null.
pub(super) fn list_or_insert<'a>(
    spec: &'a mut Mapping,
    key: &str,
    before: Option<&str>,
    path: &str,
) -> Result<&'a mut Vec<Value>, Problem> {
    if matches!(spec.get(key), None | Some(Value::Null)) {
        spec.shift_remove(key);
        insert_before(spec, before.unwrap_or(""), key, Value::Sequence(Vec::new()));
    }
    match spec.get_mut(key) {
        Some(Value::Sequence(items)) => Ok(items),
        _ => Err(Problem::Malformed(format!(
            "{path}spec.{key} is not a list"
        ))),
    }
}

/// Inserts `key` right before `before` (at the end when `before` is missing), keeping the
/// order of the other keys.
pub(super) fn insert_before(map: &mut Mapping, before: &str, key: &str, value: Value) {
    let old = std::mem::take(map);
    let mut value = Some(value);
    for (k, v) in old {
        if k.as_str() == Some(before) {
            if let Some(value) = value.take() {
                map.insert(key.into(), value);
            }
        }
        map.insert(k, v);
    }
    if let Some(value) = value {
        map.insert(key.into(), value);
    }
}

pub(super) fn names(items: &[Value]) -> impl Iterator<Item = &str> {
    items.iter().filter_map(name_of)
}

pub(super) fn position(items: &[Value], name: &str) -> Option<usize> {
    items.iter().position(|item| name_of(item) == Some(name))
}

pub(super) fn name_of(value: &Value) -> Option<&str> {
    value.get("name").and_then(Value::as_str)
}

/// The items of the list `key` of a mapping value; none when it is anything else.
pub(super) fn sequence_of<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(key)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

pub(super) fn mapping<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

pub(super) fn env_var(name: &str, value: &str) -> Value {
    mapping([("name", name.into()), ("value", value.into())])
}

pub(super) fn volume(name: &str, source: Value) -> Value {
    mapping([("name", name.into()), ("configMap", source)])
}

pub(super) fn config_map(name: &str, items: Option<Value>) -> Value {
    let mut source = Mapping::new();
    source.insert("name".into(), name.into());
    if let Some(items) = items {
        source.insert("items".into(), items);
    }
    Value::Mapping(source)
}
