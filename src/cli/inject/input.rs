//! Reads the manifests to inject: files, the YAML and JSON files under directories, or
//! stdin; and what is taken from the documents read as a whole.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use yaml_serde::{Mapping, Value};

/// The most input read in one run, all files together: far above any set of manifests, and
/// a bound on memory when a path names something else.
pub(crate) const MAX_INPUT: u64 = 64 * 1024 * 1024;
/// How deep directories are walked (symbolic links are followed; this also ends a loop).
const MAX_DEPTH: usize = 16;

/// One input: where it came from, for error messages, and its text.
#[derive(Debug)]
pub struct Source {
    /// The path as given (or found under a directory), or `<stdin>`.
    pub name: String,
    /// The YAML text.
    pub text: String,
}

/// Why the input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A file or directory could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: String,
        /// What the system said.
        #[source]
        error: std::io::Error,
    },
    /// A file is not UTF-8 text.
    #[error("{0}: not UTF-8 text")]
    NotText(String),
    /// Too much input.
    #[error("{0}: the input is larger than 64 MiB in all")]
    TooLarge(String),
    /// A directory without a single manifest: probably not the one meant.
    #[error("{0}: no .yaml, .yml or .json files in this directory")]
    EmptyDirectory(String),
}

/// Reads `paths` in order (a directory's files sorted by path); `-`, or no path at all,
/// reads `stdin`.
pub(crate) fn read(paths: &[PathBuf], stdin: impl Read) -> Result<Vec<Source>, ReadError> {
    let mut budget = MAX_INPUT;
    if paths.is_empty() {
        return Ok(vec![read_one("<stdin>".into(), stdin, &mut budget)?]);
    }
    let mut sources = Vec::new();
    let mut stdin = Some(stdin);
    for path in paths {
        if path.as_os_str() == "-" {
            if let Some(reader) = stdin.take() {
                sources.push(read_one("<stdin>".into(), reader, &mut budget)?);
            }
            continue;
        }
        let io = |error| ReadError::Io {
            path: path.display().to_string(),
            error,
        };
        if std::fs::metadata(path).map_err(io)?.is_dir() {
            let mut files = Vec::new();
            walk(path, 0, &mut files)?;
            if files.is_empty() {
                return Err(ReadError::EmptyDirectory(path.display().to_string()));
            }
            files.sort();
            for file in files {
                sources.push(read_file(&file, &mut budget)?);
            }
        } else {
            sources.push(read_file(path, &mut budget)?);
        }
    }
    Ok(sources)
}

fn read_file(path: &Path, budget: &mut u64) -> Result<Source, ReadError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|error| ReadError::Io {
        path: name.clone(),
        error,
    })?;
    read_one(name, file, budget)
}

fn read_one(name: String, reader: impl Read, budget: &mut u64) -> Result<Source, ReadError> {
    let mut bytes = Vec::new();
    reader
        .take(*budget + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| ReadError::Io {
            path: name.clone(),
            error,
        })?;
    let read = bytes.len() as u64;
    if read > *budget {
        return Err(ReadError::TooLarge(name));
    }
    *budget -= read;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Source { name, text }),
        Err(_) => Err(ReadError::NotText(name)),
    }
}

/// Collects the `.yaml`, `.yml` and `.json` files under `dir`, skipping hidden entries.
fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<(), ReadError> {
    let io = |error| ReadError::Io {
        path: dir.display().to_string(),
        error,
    };
    if depth > MAX_DEPTH {
        return Err(io(std::io::Error::other(format!(
            "directories nested deeper than {MAX_DEPTH} levels (a symbolic link loop?)"
        ))));
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, depth + 1, files)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            files.push(path);
        }
    }
    Ok(())
}

/// File modes written the YAML 1.1 way (`defaultMode: 0644`), as Kubernetes reads them:
/// octal numbers. The YAML 1.2 parser reads them as strings, which would be written back
/// quoted and refused by the API server. Data, labels, annotations and environment
/// variables are strings and are left alone.
pub(crate) fn octal_modes(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            for (key, value) in map.iter_mut() {
                match key.as_str() {
                    Some(
                        "data" | "stringData" | "binaryData" | "labels" | "annotations" | "env",
                    ) => {}
                    Some("mode" | "defaultMode") => {
                        let octal = value
                            .as_str()
                            .filter(|s| s.len() > 1 && s.starts_with('0'))
                            .and_then(|s| u64::from_str_radix(s, 8).ok());
                        if let Some(mode) = octal {
                            *value = mode.into();
                        }
                    }
                    _ => octal_modes(value),
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

/// The ConfigMaps of the input, for the keys of a schema ConfigMap.
pub(crate) struct ConfigMaps(Vec<(Option<String>, String, Vec<String>)>);

impl ConfigMaps {
    pub(crate) fn collect<'a>(documents: impl Iterator<Item = &'a Value>) -> Self {
        fn visit(value: &Value, found: &mut Vec<(Option<String>, String, Vec<String>)>) {
            match value.get("kind").and_then(Value::as_str) {
                Some("List") => {
                    for item in value
                        .get("items")
                        .and_then(Value::as_sequence)
                        .into_iter()
                        .flatten()
                    {
                        visit(item, found);
                    }
                }
                Some("ConfigMap") => {
                    let text = |key: &str| {
                        value
                            .get("metadata")
                            .and_then(|m| m.get(key))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    };
                    let Some(name) = text("name") else { return };
                    let mut keys: Vec<String> = ["data", "binaryData"]
                        .iter()
                        .filter_map(|field| value.get(*field).and_then(Value::as_mapping))
                        .flat_map(Mapping::keys)
                        .filter_map(|key| key.as_str().map(str::to_owned))
                        .collect();
                    keys.sort();
                    found.push((text("namespace"), name, keys));
                }
                _ => {}
            }
        }
        let mut found = Vec::new();
        for document in documents {
            visit(document, &mut found);
        }
        ConfigMaps(found)
    }

    /// The keys of ConfigMap `name` in `namespace` (a ConfigMap or a workload without a
    /// namespace matches any).
    pub(crate) fn keys(&self, name: &str, namespace: Option<&str>) -> Option<&[String]> {
        self.0
            .iter()
            .find(|(ns, n, _)| {
                n == name && (ns.is_none() || namespace.is_none() || ns.as_deref() == namespace)
            })
            .map(|(_, _, keys)| keys.as_slice())
    }
}
