//! `causeway inject`: reads Kubernetes manifests and writes them back with the causeway native
//! sidecar added to every pod (or taken away with `--uninject`), as `linkerd inject` does.
//!
//! Every document is read and changed before anything is written: when one cannot be
//! injected, the run names each such document and writes nothing, so that a pipe into
//! `kubectl apply` never applies half of a set. Comments are not kept; key order is.

mod emit;
mod input;
mod pod;
mod settings;

use std::{fmt, io::Write as _, path::PathBuf, process::ExitCode};

use serde::Deserialize as _;
use yaml_serde::{Mapping, Value};

pub use emit::EmitError;
pub use input::{ReadError, Source};
pub use settings::{Flags, SettingError};

use input::ConfigMaps;
use pod::Template;
use settings::Settings;

/// Exit code for a flag whose value cannot be used (as clap's usage errors).
const EXIT_USAGE: u8 = 2;

/// The arguments of `causeway inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// Manifest files, or directories (their .yaml, .yml and .json files, sorted); `-` or
    /// none reads stdin.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Take the sidecar away instead, with the volumes and annotations inject added.
    #[arg(long, conflicts_with = "Flags")]
    pub uninject: bool,
    #[command(flatten)]
    pub flags: Flags,
}

/// Add the sidecar, or take it away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Add it, or update the one there.
    Inject,
    /// Take it away.
    Uninject,
}

/// Runs `causeway inject`: reads the input, writes the manifests to stdout or says on stderr
/// what could not be injected. Exit code 0, 1 when something could not be read or injected,
/// 2 for a flag's value.
pub fn command(args: &InjectArgs) -> ExitCode {
    if let Err(error) = args.flags.check() {
        eprintln!("causeway: {error}");
        return ExitCode::from(EXIT_USAGE);
    }
    let sources = match input::read(&args.paths, std::io::stdin().lock()) {
        Ok(sources) => sources,
        Err(error) => {
            eprintln!("causeway: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mode = if args.uninject {
        Mode::Uninject
    } else {
        Mode::Inject
    };
    match run(&sources, mode, &args.flags) {
        Ok(output) => match std::io::stdout().lock().write_all(output.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("causeway: cannot write the output: {error}");
                ExitCode::FAILURE
            }
        },
        Err(errors) => {
            for error in &errors {
                eprintln!("causeway: {error}");
            }
            eprintln!("causeway: nothing written ({} problem(s))", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// Where a document is: its source, its place there, and the object it describes.
#[derive(Clone, Debug)]
pub struct Origin {
    source: String,
    document: usize,
    item: Option<usize>,
    object: Option<String>,
}

impl Origin {
    fn with_object(&self, object: &Mapping) -> Origin {
        let kind = object.get("kind").and_then(Value::as_str);
        let metadata = object.get("metadata");
        let name = metadata
            .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
            .and_then(Value::as_str);
        Origin {
            object: kind.map(|kind| format!("{kind}/{}", name.unwrap_or("?"))),
            ..self.clone()
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.source, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        Ok(())
    }
}

/// Why a run wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A document is not YAML; the documents after it in that source cannot be read.
    #[error("{origin}: not valid YAML: {error}")]
    Yaml {
        /// Where.
        origin: Origin,
        /// What the parser said.
        #[source]
        error: yaml_serde::Error,
    },
    /// A document cannot be injected (or written back).
    #[error("{origin}: {problem}")]
    Document {
        /// Where.
        origin: Origin,
        /// What is wrong.
        problem: Problem,
    },
    /// The built-in sidecar template does not parse: a bug.
    #[error("the built-in sidecar template is invalid: {0}")]
    Template(#[source] yaml_serde::Error),
}

/// What is wrong with one document.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Not a mapping with a `kind`.
    #[error("not a Kubernetes object (a mapping with a kind)")]
    NotAnObject,
    /// A field is missing or of the wrong type.
    #[error("{0}")]
    Malformed(String),
    /// A setting's value cannot be used.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// A container named `causeway` that inject did not make.
    #[error(
        "a container named causeway is already in {0} and is not a causeway sidecar (an init \
         container with restartPolicy: Always that sets CAUSEWAY_SERVICE): rename or remove it"
    )]
    Foreign(&'static str),
    /// Another container declares a port the sidecar listens on.
    #[error(
        "container {container} declares port {port}, which the sidecar listens on (7070: its \
         API, 7071: its admin listener){}",
        if *host_network { "; with hostNetwork: true these are ports of the node" } else { "" }
    )]
    PortConflict {
        /// The container.
        container: String,
        /// The port.
        port: u64,
        /// Whether the pod uses the node's network.
        host_network: bool,
    },
    /// The pod has a volume of the name the sidecar's volume needs.
    #[error("the pod already has a volume named {0}, which the sidecar needs")]
    VolumeConflict(String),
    /// A key of the schema ConfigMap is not a schema's.
    #[error("ConfigMap {config_map}: key {key} is not named <EventType>-<MAJOR.MINOR>.json")]
    SchemaKey {
        /// The ConfigMap.
        config_map: String,
        /// The key.
        key: String,
    },
    /// The schema ConfigMap has no keys.
    #[error("ConfigMap {0} has no schemas (keys named <EventType>-<MAJOR.MINOR>.json)")]
    NoSchemas(String),
    /// The schema ConfigMap is not in the input, so its keys are unknown.
    #[error(
        "the keys of the schema ConfigMap {0} are unknown: give the ConfigMap in the input too, \
         for example `causeway inject deploy.yaml schemas.yaml`"
    )]
    SchemaKeysUnknown(String),
    /// The document cannot be written back.
    #[error(transparent)]
    Emit(#[from] EmitError),
}

/// Injects (or uninjects) every document of `sources`, and returns them as one YAML stream;
/// or every problem found, when there is one.
pub fn run(sources: &[Source], mode: Mode, flags: &Flags) -> Result<String, Vec<InjectError>> {
    let template = Template::load().map_err(|error| vec![InjectError::Template(error)])?;
    let mut errors = Vec::new();
    let mut documents = Vec::new();
    for source in sources {
        let stream = yaml_serde::Deserializer::from_str(&source.text);
        for (index, document) in stream.enumerate() {
            let origin = Origin {
                source: source.name.clone(),
                document: index + 1,
                item: None,
                object: None,
            };
            match Value::deserialize(document) {
                Ok(Value::Null) => {}
                Ok(mut value) => {
                    input::octal_modes(&mut value);
                    documents.push((origin, value));
                }
                Err(error) => {
                    errors.push(InjectError::Yaml { origin, error });
                    break;
                }
            }
        }
    }
    let config_maps = ConfigMaps::collect(documents.iter().map(|(_, value)| value));
    let run = Run {
        mode,
        flags,
        template: &template,
        config_maps: &config_maps,
    };
    let mut output = String::new();
    for (origin, mut value) in documents {
        let before = errors.len();
        run.object(&mut value, &origin, &mut errors);
        if errors.len() > before {
            continue;
        }
        let mut text = String::new();
        match emit::document(&value, &mut text) {
            Ok(()) => {
                if !output.is_empty() {
                    output.push_str("---\n");
                }
                output.push_str(&text);
            }
            Err(error) => errors.push(InjectError::Document {
                origin: origin.with_object(value.as_mapping().unwrap_or(&Mapping::new())),
                problem: error.into(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(output)
    } else {
        Err(errors)
    }
}

/// What one run applies to each document.
struct Run<'a> {
    mode: Mode,
    flags: &'a Flags,
    template: &'a Template,
    config_maps: &'a ConfigMaps,
}

impl Run<'_> {
    /// Injects the pod of `value` (or of each item of a List); other objects stay as they are.
    fn object(&self, value: &mut Value, origin: &Origin, errors: &mut Vec<InjectError>) {
        let Some(object) = value.as_mapping_mut() else {
            errors.push(InjectError::Document {
                origin: origin.clone(),
                problem: Problem::NotAnObject,
            });
            return;
        };
        let origin = origin.with_object(object);
        let Some(kind) = object
            .get("kind")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            errors.push(InjectError::Document {
                origin,
                problem: Problem::NotAnObject,
            });
            return;
        };
        if kind == "List" {
            match object.get_mut("items") {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(items)) => {
                    for (index, item) in items.iter_mut().enumerate() {
                        let origin = Origin {
                            item: Some(index + 1),
                            ..origin.clone()
                        };
                        self.object(item, &origin, errors);
                    }
                }
                Some(_) => errors.push(InjectError::Document {
                    origin,
                    problem: Problem::Malformed("items is not a list".into()),
                }),
            }
            return;
        }
        if let Err(problem) = self.workload(object, &kind) {
            errors.push(InjectError::Document { origin, problem });
        }
    }

    fn workload(&self, object: &mut Mapping, kind: &str) -> Result<(), Problem> {
        // Where the pod (its metadata and spec) is in each kind.
        let path: &[&str] = match kind {
            "Pod" => &[],
            "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => &["spec", "template"],
            "CronJob" => &["spec", "jobTemplate", "spec", "template"],
            _ => return Ok(()),
        };
        let metadata = |node: &Mapping, key: &str| {
            node.get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let name = metadata(object, "name");
        let namespace = metadata(object, "namespace");
        // The annotations of each level that has them, the pod template's first.
        let mut layers = vec![annotations_of(object, "")?];
        let mut node: &Mapping = object;
        for (depth, key) in path.iter().enumerate() {
            let here = path[..=depth].join(".");
            node = node
                .get(*key)
                .and_then(Value::as_mapping)
                .ok_or_else(|| Problem::Malformed(format!("{here} is missing or not a mapping")))?;
            layers.push(annotations_of(node, &format!("{here}."))?);
        }
        layers.reverse();
        let layers: Vec<&Mapping> = layers.iter().flatten().collect();
        let mut pod = object;
        for key in path {
            pod = pod
                .get_mut(*key)
                .and_then(Value::as_mapping_mut)
                .ok_or_else(|| Problem::Malformed(format!("{key} is missing")))?;
        }
        let at = if path.is_empty() {
            String::new()
        } else {
            format!("{}.", path.join("."))
        };
        match self.mode {
            Mode::Uninject => pod::uninject(pod, &at),
            Mode::Inject => {
                if !settings::enabled(&layers)? {
                    return Ok(());
                }
                let settings = Settings::resolve(self.flags, &layers, name.as_deref())?;
                let keys = settings
                    .schemas
                    .as_deref()
                    .and_then(|config_map| self.config_maps.keys(config_map, namespace.as_deref()));
                pod::inject(pod, &at, self.template, &settings, keys)
            }
        }
    }
}

/// The `metadata.annotations` of `node` (at `at`), if it has any.
fn annotations_of(node: &Mapping, at: &str) -> Result<Option<Mapping>, Problem> {
    match node.get("metadata").and_then(|m| m.get("annotations")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Mapping(annotations)) => Ok(Some(annotations.clone())),
        Some(_) => Err(Problem::Malformed(format!(
            "{at}metadata.annotations is not a mapping"
        ))),
    }
}

#[cfg(test)]
mod tests;
