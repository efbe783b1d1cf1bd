//! The process environment as the configuration reads it: any bytes, UTF-8 or not.
//!
//! A value that is not UTF-8 is a problem only when something reads it: a setting, the
//! telemetry's `OTEL_*` variables or `RUST_LOG`. Then it is reported by the variable's name,
//! never with its value. Other variables, whatever they hold, are left alone.

use std::{collections::HashMap, ffi::OsString, path::PathBuf};

use super::{CONFIG_FILE_VAR, Invalid, KEYS};

/// The prefix of every setting's variable.
pub(super) const PREFIX: &str = "CAUSEWAY_";

/// The environment, split by what the configuration can do with each variable.
#[derive(Debug, Default)]
pub(super) struct Environment {
    /// Variables whose name and value are both UTF-8.
    pub(super) text: HashMap<String, String>,
    /// The config file that `CAUSEWAY_CONFIG` names: a path, which need not be UTF-8.
    pub(super) config_file: Option<PathBuf>,
    /// Variables that something reads, whose value is not UTF-8.
    pub(super) unreadable: Vec<Invalid>,
    /// Other `CAUSEWAY_` variables whose name or value is not UTF-8, by name (lossily
    /// decoded when the name itself is not UTF-8).
    pub(super) other_names: Vec<String>,
}

impl Environment {
    /// Sorts the variables; keeps no value it cannot read.
    pub(super) fn read(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let mut env = Environment::default();
        for (name, value) in vars {
            if name == CONFIG_FILE_VAR {
                env.config_file = Some(PathBuf::from(&value));
            }
            let name = match name.into_string() {
                Ok(name) => name,
                Err(name) => {
                    let name = name.to_string_lossy().into_owned();
                    if name.starts_with(PREFIX) {
                        env.other_names.push(name);
                    }
                    continue;
                }
            };
            match value.into_string() {
                Ok(value) => {
                    env.text.insert(name, value);
                }
                Err(_) if name == CONFIG_FILE_VAR => {}
                Err(_) if is_read(&name) => env.unreadable.push(Invalid {
                    origin: name,
                    problem: "the value is not valid UTF-8 (value not shown)".into(),
                }),
                Err(_) if name.starts_with(PREFIX) => env.other_names.push(name),
                Err(_) => {}
            }
        }
        env.unreadable.sort_by(|a, b| a.origin.cmp(&b.origin));
        env
    }

    /// The environment of the given UTF-8 variables, with no config file.
    pub(super) fn from_text(text: &HashMap<String, String>) -> Self {
        Environment {
            text: text.clone(),
            ..Environment::default()
        }
    }

    /// Every `CAUSEWAY_` variable's name, readable or not.
    pub(super) fn causeway_names(&self) -> impl Iterator<Item = &str> {
        self.text
            .keys()
            .map(String::as_str)
            .filter(|name| name.starts_with(PREFIX))
            .chain(self.other_names.iter().map(String::as_str))
    }
}

/// Whether the sidecar reads the variable: a setting, or telemetry's.
fn is_read(name: &str) -> bool {
    let setting = name.strip_prefix(PREFIX).is_some_and(|rest| {
        KEYS.iter()
            .any(|key| key.len() == rest.len() && key.to_ascii_uppercase() == rest)
    });
    setting || name.starts_with("OTEL_") || name == "RUST_LOG"
}
