//! The schema registry: JSON Schemas per event type and version, read from
//! `CAUSEWAY_SCHEMAS_DIR/<EventType>/<MAJOR.MINOR>.json`, compiled once, reloaded on SIGHUP.

pub mod compat;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
};

use serde::Serialize;
use serde_json::{Value, value::RawValue};

use crate::{
    envelope::{SchemaVersion, is_valid_event_type},
    payload::{self, Malformed},
};

/// One reason a payload does not match its schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Where in the payload, as a JSON Pointer (`/items/0/sku`).
    pub instance_path: String,
    /// Which schema keyword failed, as a JSON Pointer into the schema.
    pub schema_path: String,
    /// What is wrong, in words.
    pub message: String,
}

/// Why a payload was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The type has schemas, but not this version.
    #[error("{event_type} has no schema version {version}; registered: {}", registered.join(", "))]
    UnknownVersion {
        /// The event type.
        event_type: String,
        /// The version asked for.
        version: SchemaVersion,
        /// The versions there are.
        registered: Vec<String>,
    },
    /// Strict mode: the type has no schema at all.
    #[error("{0} has no registered schema, and CAUSEWAY_SCHEMAS_STRICT is on")]
    Unregistered(String),
    /// The payload is outside the payload grammar (checked with or without a schema).
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The payload fails its schema.
    #[error("the payload does not match schema {event_type} {version}")]
    Payload {
        /// The event type.
        event_type: String,
        /// The version checked against.
        version: SchemaVersion,
        /// Every failure found.
        violations: Vec<Violation>,
    },
}

impl Invalid {
    /// The mismatch in one line: what is wrong and the first few failures with their
    /// paths (for a dead letter's `x-causeway-last-error`).
    pub fn summary(&self) -> String {
        if !matches!(self, Invalid::Payload { .. }) {
            return self.to_string();
        }
        let failures: Vec<String> = self
            .violations()
            .iter()
            .take(5)
            .map(|v| {
                if v.instance_path.is_empty() {
                    v.message.clone()
                } else {
                    format!("{}: {}", v.instance_path, v.message)
                }
            })
            .collect();
        format!("{self}: {}", failures.join("; "))
    }

    /// The individual failures, for a problem's `errors`.
    pub fn violations(&self) -> Vec<Violation> {
        match self {
            Invalid::Payload { violations, .. } => violations.clone(),
            Invalid::Malformed(malformed) => vec![Violation {
                instance_path: malformed.pointer.clone(),
                schema_path: String::new(),
                message: malformed.breach.to_string(),
            }],
            other => vec![Violation {
                instance_path: String::new(),
                schema_path: String::new(),
                message: other.to_string(),
            }],
        }
    }
}

/// A schema file that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct SchemaError {
    /// The file (or directory).
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

struct Compiled {
    schema: Arc<Value>,
    validator: jsonschema::Validator,
}

type Versions = BTreeMap<SchemaVersion, Compiled>;

/// The registered schemas, swapped whole on reload.
pub struct SchemaRegistry {
    dir: Option<PathBuf>,
    strict: bool,
    current: RwLock<Arc<BTreeMap<String, Versions>>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("dir", &self.dir)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

impl SchemaRegistry {
    /// Loads every schema under `dir` (none when `dir` is `None`); fails naming the first
    /// file that is not a valid schema.
    pub fn load(dir: Option<&Path>, strict: bool) -> Result<Self, SchemaError> {
        let types = match dir {
            Some(dir) => read_dir(dir)?,
            None => BTreeMap::new(),
        };
        Ok(SchemaRegistry {
            dir: dir.map(Path::to_path_buf),
            strict,
            current: RwLock::new(Arc::new(types)),
        })
    }

    /// Reads the directory again; on any error the schemas in use stay as they were.
    /// Returns how many schemas are loaded.
    pub fn reload(&self) -> Result<usize, SchemaError> {
        let Some(dir) = &self.dir else {
            return Ok(0);
        };
        let types = read_dir(dir)?;
        let count = types.values().map(BTreeMap::len).sum();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(types);
        Ok(count)
    }

    fn current(&self) -> Arc<BTreeMap<String, Versions>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Checks `payload` of `event_type` against the payload grammar and its schema, and
    /// returns the version it is: the one asked for, or else the highest registered (or 1.0
    /// for a type without schemas). The schema sees the value of exactly these bytes.
    pub fn check(
        &self,
        event_type: &str,
        version: Option<SchemaVersion>,
        payload: &RawValue,
    ) -> Result<SchemaVersion, Invalid> {
        let current = self.current();
        let Some(versions) = current.get(event_type) else {
            if self.strict {
                return Err(Invalid::Unregistered(event_type.to_owned()));
            }
            payload::check(payload)?;
            return Ok(version.unwrap_or(SchemaVersion::DEFAULT));
        };
        let version = match version {
            Some(version) => version,
            // A type is only listed with at least one version.
            None => *versions
                .keys()
                .next_back()
                .unwrap_or(&SchemaVersion::DEFAULT),
        };
        let Some(compiled) = versions.get(&version) else {
            return Err(Invalid::UnknownVersion {
                event_type: event_type.to_owned(),
                version,
                registered: versions.keys().map(ToString::to_string).collect(),
            });
        };
        let value = payload::parse(payload)?;
        let violations: Vec<Violation> = compiled
            .validator
            .iter_errors(&value)
            .map(|error| Violation {
                instance_path: error.instance_path().to_string(),
                schema_path: error.schema_path().to_string(),
                message: error.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(version)
        } else {
            Err(Invalid::Payload {
                event_type: event_type.to_owned(),
                version,
                violations,
            })
        }
    }

    /// Every type and its versions, lowest first.
    pub fn list(&self) -> BTreeMap<String, Vec<String>> {
        self.current()
            .iter()
            .map(|(name, versions)| {
                (
                    name.clone(),
                    versions.keys().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    /// One schema document.
    pub fn get(&self, event_type: &str, version: SchemaVersion) -> Option<Arc<Value>> {
        let current = self.current();
        current
            .get(event_type)?
            .get(&version)
            .map(|c| c.schema.clone())
    }
}

/// Reads `<dir>/<EventType>/<MAJOR.MINOR>.json` files; other files are ignored.
fn read_dir(dir: &Path) -> Result<BTreeMap<String, Versions>, SchemaError> {
    let error = |path: &Path, problem: String| SchemaError {
        path: path.to_path_buf(),
        problem,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| error(dir, format!("cannot read: {e}")))?;
    let mut types = BTreeMap::new();
    for entry in entries {
        let type_dir = entry.map_err(|e| error(dir, e.to_string()))?.path();
        if !type_dir.is_dir() {
            continue;
        }
        let event_type = type_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        // Hidden directories (a ConfigMap volume's `..data`, `.git`) and `lost+found`
        // belong to the filesystem, not to the registry.
        if event_type.starts_with('.') || event_type == "lost+found" {
            continue;
        }
        if !is_valid_event_type(&event_type) {
            return Err(error(
                &type_dir,
                "the directory name is not a valid event type".into(),
            ));
        }
        let mut versions = Versions::new();
        let files = std::fs::read_dir(&type_dir).map_err(|e| error(&type_dir, e.to_string()))?;
        for file in files {
            let path = file.map_err(|e| error(&type_dir, e.to_string()))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let version: SchemaVersion = stem.parse().map_err(|_| {
                error(
                    &path,
                    "the file name must be the version, such as 2.0.json".into(),
                )
            })?;
            let text = std::fs::read_to_string(&path).map_err(|e| error(&path, e.to_string()))?;
            let schema: Value = serde_json::from_str(&text)
                .map_err(|e| error(&path, format!("not valid JSON: {e}")))?;
            let validator = jsonschema::validator_for(&schema)
                .map_err(|e| error(&path, format!("not a valid JSON Schema: {e}")))?;
            versions.insert(
                version,
                Compiled {
                    schema: Arc::new(schema),
                    validator,
                },
            );
        }
        if !versions.is_empty() {
            types.insert(event_type, versions);
        }
    }
    Ok(types)
}

#[cfg(test)]
mod tests;
