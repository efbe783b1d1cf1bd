//! Adds the causeway sidecar to one pod (a mapping with the pod's `metadata` and `spec`: a
//! Pod, or a workload's pod template) and takes it away again.
//!
//! Injecting into a pod that has the sidecar first takes the old one away, so that injecting
//! twice changes nothing and a second injection updates the sidecar in place.

use serde::{Deserialize, Serialize};
use yaml_serde::{Mapping, Value};

mod parts;

use parts::{
    annotations, config_map, env_var, list, list_or_insert, mapping, name_of, names, pod_spec,
    position, sequence_of, volume,
};

use super::{
    Problem,
    settings::{RECORD, Settings},
};
use crate::envelope::{SchemaVersion, is_valid_event_type};

/// The sidecar container's name.
const NAME: &str = "causeway";
const CONFIG_VOLUME: &str = "causeway-config";
const SCHEMAS_VOLUME: &str = "causeway-schemas";
const DATA_VOLUME: &str = "causeway-data";
/// The ports the sidecar listens on in the pod: the app API (loopback) and the admin listener.
const PORTS: [u64; 2] = [7070, 7071];
/// The sidecar's drain, below the template's terminationGracePeriodSeconds (45 s) with room
/// for closing connections and exporting spans (deploy/kubernetes/base/sidecar/sidecar.yaml).
const SHUTDOWN_GRACE: &str = "20s";
/// The variables inject sets; an existing sidecar's other variables are kept.
const MANAGED_ENV: [&str; 7] = [
    "CAUSEWAY_SERVICE",
    "CAUSEWAY_AMQP_URL",
    "CAUSEWAY_CONFIG",
    "CAUSEWAY_SCHEMAS_DIR",
    "CAUSEWAY_SHUTDOWN_GRACE",
    "CAUSEWAY_APP_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// What is added to every pod, from sidecar.yaml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Template {
    annotations: Mapping,
    termination_grace_period_seconds: u64,
    container: Mapping,
    data_volume: Value,
}

impl Template {
    /// The built-in template.
    pub(crate) fn load() -> Result<Self, yaml_serde::Error> {
        yaml_serde::from_str(include_str!("sidecar.yaml"))
    }
}

/// What inject changed in the pod besides the container and its volumes, kept in the pod's
/// annotation `causeway.io/injected` so that `--uninject` can undo it.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// The causeway that injected.
    version: String,
    /// The annotations it added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    annotations: Vec<String>,
    /// The pod's terminationGracePeriodSeconds before (null: none), when inject raised it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    termination_grace_period_seconds: Option<Option<u64>>,
}

/// A field that is present, even as null, is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// What an old sidecar leaves behind for the new one.
#[derive(Default)]
struct Removed {
    /// Where it was among the init containers.
    index: Option<usize>,
    /// Its environment variables that inject does not set.
    env: Vec<Value>,
    /// Its schema volume, whose items are kept when the ConfigMap is not in the input.
    schemas: Option<Value>,
}

/// Adds the sidecar to `pod` (whose path in the document is `path`). `schema_keys` are the
/// keys of the schema ConfigMap when the input holds it.
pub(crate) fn inject(
    pod: &mut Mapping,
    path: &str,
    template: &Template,
    settings: &Settings,
    schema_keys: Option<&[String]>,
) -> Result<(), Problem> {
    check_names(pod_spec(pod, path)?, path)?;
    let removed = take_away(pod, path)?;
    let mut volumes = vec![volume(
        CONFIG_VOLUME,
        config_map(&settings.config_map, None),
    )];
    if let Some(name) = &settings.schemas {
        let items = schema_items(name, schema_keys, removed.schemas.as_ref())?;
        volumes.push(volume(SCHEMAS_VOLUME, config_map(name, Some(items))));
    }
    volumes.push(template.data_volume.clone());
    let spec = pod_spec(pod, path)?;
    check_ports(spec, path)?;
    let existing: Vec<&str> = names(list(spec, "volumes", path)?).collect();
    if let Some(name) = names(&volumes).find(|name| existing.contains(name)) {
        return Err(Problem::VolumeConflict(name.to_owned()));
    }
    let container = container(template, settings, removed.env);
    let init = list_or_insert(spec, "initContainers", Some("containers"), path)?;
    let index = removed.index.unwrap_or(0).min(init.len());
    init.insert(index, container);
    list_or_insert(spec, "volumes", None, path)?.extend(volumes);
    adjust_pod(pod, path, template)
}

/// A container named `causeway` must be the sidecar, if there is one.
fn check_names(spec: &Mapping, path: &str) -> Result<(), Problem> {
    if names(list(spec, "containers", path)?).any(|name| name == NAME) {
        return Err(Problem::Foreign("containers"));
    }
    let init = list(spec, "initContainers", path)?;
    match position(init, NAME) {
        Some(index) if !is_ours(&init[index]) => Err(Problem::Foreign("initContainers")),
        _ => Ok(()),
    }
}

/// The pod settings the sidecar needs (its grace period, the Prometheus annotations), and
/// the record of what was changed for them.
fn adjust_pod(pod: &mut Mapping, path: &str, template: &Template) -> Result<(), Problem> {
    let mut record = Record {
        version: env!("CARGO_PKG_VERSION").into(),
        ..Record::default()
    };
    let spec = pod_spec(pod, path)?;
    let grace = match spec.get("terminationGracePeriodSeconds") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().ok_or_else(|| {
            Problem::Malformed(format!(
                "{path}spec.terminationGracePeriodSeconds is not a whole number"
            ))
        })?),
    };
    let least = template.termination_grace_period_seconds;
    if grace.is_none_or(|grace| grace < least) {
        spec.insert("terminationGracePeriodSeconds".into(), least.into());
        record.termination_grace_period_seconds = Some(grace);
    }
    let annotations = annotations(pod, path)?;
    if !annotations.contains_key("prometheus.io/scrape") {
        for (key, value) in &template.annotations {
            if !annotations.contains_key(key) {
                annotations.insert(key.clone(), value.clone());
                record.annotations.extend(key.as_str().map(str::to_owned));
            }
        }
    }
    let record = serde_json::to_string(&record)
        .map_err(|error| Problem::Malformed(format!("cannot write {RECORD}: {error}")))?;
    annotations.insert(RECORD.into(), record.into());
    Ok(())
}

/// Takes the sidecar away from `pod`, with the volumes only it mounted and what its record
/// says inject changed. A pod without the sidecar is left as it is.
pub(crate) fn uninject(pod: &mut Mapping, path: &str) -> Result<(), Problem> {
    take_away(pod, path).map(drop)
}

fn take_away(pod: &mut Mapping, path: &str) -> Result<Removed, Problem> {
    let mut removed = Removed::default();
    let spec = pod_spec(pod, path)?;
    let init = list(spec, "initContainers", path)?;
    let index = position(init, NAME).filter(|&i| is_ours(&init[i]));
    let sidecar = match (index, spec.get_mut("initContainers")) {
        (Some(index), Some(Value::Sequence(init))) => Some(init.remove(index)),
        _ => None,
    };
    if let Some(sidecar) = sidecar {
        if list(spec, "initContainers", path)?.is_empty() {
            spec.shift_remove("initContainers");
        }
        removed.index = index;
        removed.env = sequence_of(&sidecar, "env")
            .filter(|e| !name_of(e).is_some_and(|n| MANAGED_ENV.contains(&n)))
            .cloned()
            .collect();
        let mounted: Vec<&str> = sequence_of(&sidecar, "volumeMounts")
            .filter_map(name_of)
            .collect();
        let mut elsewhere = Vec::new();
        for key in ["initContainers", "containers", "ephemeralContainers"] {
            for container in list(spec, key, path)? {
                let names = sequence_of(container, "volumeMounts").filter_map(name_of);
                elsewhere.extend(names.map(str::to_owned));
            }
        }
        if let Some(Value::Sequence(volumes)) = spec.get_mut("volumes") {
            volumes.retain(|volume| {
                let only_ours = name_of(volume)
                    .is_some_and(|n| mounted.contains(&n) && !elsewhere.iter().any(|e| e == n));
                if only_ours && name_of(volume) == Some(SCHEMAS_VOLUME) {
                    removed.schemas = Some(volume.clone());
                }
                !only_ours
            });
            if volumes.is_empty() {
                spec.shift_remove("volumes");
            }
        }
    }
    undo_record(pod, path)?;
    Ok(removed)
}

/// Undoes what the record annotation says inject changed, and removes the record.
fn undo_record(pod: &mut Mapping, path: &str) -> Result<(), Problem> {
    let Some(Value::Mapping(metadata)) = pod.get_mut("metadata") else {
        return Ok(());
    };
    let Some(Value::Mapping(annotations)) = metadata.get_mut("annotations") else {
        return Ok(());
    };
    let Some(text) = annotations.shift_remove(RECORD) else {
        return Ok(());
    };
    let record: Record = text
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or_else(|| {
            Problem::Malformed(format!(
                "{path}metadata.annotations[{RECORD}] is not what causeway inject writes"
            ))
        })?;
    for name in &record.annotations {
        annotations.shift_remove(name.as_str());
    }
    if annotations.is_empty() {
        metadata.shift_remove("annotations");
    }
    if metadata.is_empty() {
        pod.shift_remove("metadata");
    }
    if let Some(grace) = record.termination_grace_period_seconds {
        let spec = pod_spec(pod, path)?;
        match grace {
            Some(seconds) => spec.insert("terminationGracePeriodSeconds".into(), seconds.into()),
            None => spec.shift_remove("terminationGracePeriodSeconds"),
        };
    }
    Ok(())
}

/// The sidecar container for `settings`, with `kept` variables of an old sidecar at the end.
fn container(template: &Template, settings: &Settings, kept: Vec<Value>) -> Value {
    let mut env = vec![
        env_var("CAUSEWAY_SERVICE", &settings.service),
        mapping([
            ("name", "CAUSEWAY_AMQP_URL".into()),
            (
                "valueFrom",
                mapping([(
                    "secretKeyRef",
                    mapping([
                        ("name", settings.amqp_secret.as_str().into()),
                        ("key", settings.amqp_secret_key.as_str().into()),
                    ]),
                )]),
            ),
        ]),
        env_var("CAUSEWAY_CONFIG", "/etc/causeway/causeway.toml"),
    ];
    let mut mounts = vec![mapping([
        ("name", CONFIG_VOLUME.into()),
        ("mountPath", "/etc/causeway/causeway.toml".into()),
        ("subPath", "causeway.toml".into()),
        ("readOnly", true.into()),
    ])];
    if settings.schemas.is_some() {
        env.push(env_var("CAUSEWAY_SCHEMAS_DIR", "/etc/causeway/schemas"));
        mounts.push(mapping([
            ("name", SCHEMAS_VOLUME.into()),
            ("mountPath", "/etc/causeway/schemas".into()),
            ("readOnly", true.into()),
        ]));
    }
    env.push(env_var("CAUSEWAY_SHUTDOWN_GRACE", SHUTDOWN_GRACE));
    if let Some(url) = &settings.app_url {
        env.push(env_var("CAUSEWAY_APP_URL", url));
    }
    if let Some(endpoint) = &settings.otlp_endpoint {
        env.push(env_var("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
    }
    env.extend(kept);
    mounts.push(mapping([
        ("name", DATA_VOLUME.into()),
        ("mountPath", "/var/lib/causeway".into()),
    ]));
    let mut container = template.container.clone();
    container.insert("image".into(), settings.image.as_str().into());
    container.insert("env".into(), Value::Sequence(env));
    container.insert("volumeMounts".into(), Value::Sequence(mounts));
    Value::Mapping(container)
}

/// The items of the schema volume: from the ConfigMap's keys when the input has it, else
/// those of the old sidecar's volume of the same ConfigMap.
fn schema_items(
    config_map: &str,
    keys: Option<&[String]>,
    old: Option<&Value>,
) -> Result<Value, Problem> {
    if let Some(keys) = keys {
        let mut items = Vec::new();
        for key in keys {
            let path = key
                .strip_suffix(".json")
                .and_then(|stem| stem.rsplit_once('-'))
                .filter(|(event_type, version)| {
                    is_valid_event_type(event_type) && version.parse::<SchemaVersion>().is_ok()
                })
                .map(|(event_type, version)| format!("{event_type}/{version}.json"))
                .ok_or_else(|| Problem::SchemaKey {
                    config_map: config_map.to_owned(),
                    key: key.clone(),
                })?;
            items.push(mapping([
                ("key", key.as_str().into()),
                ("path", path.into()),
            ]));
        }
        if items.is_empty() {
            return Err(Problem::NoSchemas(config_map.to_owned()));
        }
        return Ok(Value::Sequence(items));
    }
    let old = old
        .and_then(|v| v.get("configMap"))
        .filter(|source| source.get("name").and_then(Value::as_str) == Some(config_map))
        .and_then(|source| source.get("items"));
    match old {
        Some(items) => Ok(items.clone()),
        None => Err(Problem::SchemaKeysUnknown(config_map.to_owned())),
    }
}

/// No other container may declare the sidecar's ports: containers of a pod share its network
/// (and with hostNetwork, the node's).
fn check_ports(spec: &Mapping, path: &str) -> Result<(), Problem> {
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["initContainers", "containers"] {
        for container in list(spec, key, path)? {
            for port in sequence_of(container, "ports") {
                let number = port.get("containerPort").and_then(Value::as_u64);
                if let Some(number) = number.filter(|n| PORTS.contains(n)) {
                    return Err(Problem::PortConflict {
                        container: name_of(container).unwrap_or("?").to_owned(),
                        port: number,
                        host_network,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Ours: an init container with `restartPolicy: Always` that sets CAUSEWAY_SERVICE, as
/// inject and the kustomize component make it.
fn is_ours(container: &Value) -> bool {
    container.get("restartPolicy").and_then(Value::as_str) == Some("Always")
        && sequence_of(container, "env").any(|e| name_of(e) == Some("CAUSEWAY_SERVICE"))
}
