//! The `[[flows]]` tables of the config file: flow definitions.

use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, values::parse_duration};
use crate::{envelope::is_valid_event_type, flow::FlowDefinition};

/// One `[[flows]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    name: String,
    starts_with: String,
    #[serde(default)]
    completes_on: Vec<String>,
    #[serde(default)]
    fails_on: Vec<String>,
    within: String,
}

/// The flow definitions of the file's `flows` value, or every problem with them.
pub(super) fn definitions(
    file: &str,
    value: &toml::Value,
) -> Result<Vec<FlowDefinition>, Vec<Invalid>> {
    let Some(entries) = value.as_array() else {
        return Err(vec![Invalid {
            origin: format!("flows in {file}"),
            problem: "expected [[flows]] tables".into(),
        }]);
    };
    let mut problems = Vec::new();
    let mut definitions: Vec<FlowDefinition> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let origin = format!("flows[{index}] in {file}");
        let written = match Written::deserialize(entry.clone()) {
            Ok(written) => written,
            Err(error) => {
                problems.push(Invalid {
                    origin,
                    problem: error.message().to_owned(),
                });
                continue;
            }
        };
        let origin = format!("flows[{index}] ({}) in {file}", written.name);
        let mut problem = |field: &str, text: String| {
            problems.push(Invalid {
                origin: format!("{origin}.{field}"),
                problem: text,
            });
        };
        let name_ok = !written.name.is_empty()
            && written.name.len() <= 100
            && written
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            problem(
                "name",
                "expected 1 to 100 letters, digits, '-', '_' or '.'".into(),
            );
        }
        if definitions.iter().any(|d| d.name == written.name) {
            problem("name", "the name is used twice".into());
        }
        if !is_valid_event_type(&written.starts_with) {
            problem("starts_with", "expected an event type".into());
        }
        for (field, types) in [
            ("completes_on", &written.completes_on),
            ("fails_on", &written.fails_on),
        ] {
            if types.iter().any(|t| !is_valid_event_type(t)) {
                problem(field, "expected a list of event types".into());
            }
        }
        if written.completes_on.is_empty() && written.fails_on.is_empty() {
            problem(
                "completes_on",
                "a flow needs an event type that completes or fails it".into(),
            );
        }
        if let Some(both) = written
            .completes_on
            .iter()
            .find(|t| written.fails_on.contains(t))
        {
            problem(
                "fails_on",
                format!("{both} cannot both complete and fail the flow"),
            );
        }
        let within = match parse_duration(&written.within) {
            Ok(within) => within,
            Err(text) => {
                problem("within", text);
                Duration::ZERO
            }
        };
        if definitions
            .iter()
            .any(|d| d.starts_with == written.starts_with)
        {
            problem(
                "starts_with",
                format!("another flow already starts with {}", written.starts_with),
            );
        }
        definitions.push(FlowDefinition {
            name: written.name,
            starts_with: written.starts_with,
            completes_on: written.completes_on,
            fails_on: written.fails_on,
            within,
        });
    }
    if problems.is_empty() {
        Ok(definitions)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<FlowDefinition>, Vec<Invalid>> {
        let table: toml::Table = text.parse().unwrap();
        definitions("causeway.toml", &table["flows"])
    }

    #[test]
    fn a_definition_reads_with_its_budget() {
        let flows = read(
            r#"
            [[flows]]
            name = "order"
            starts_with = "OrderPlaced"
            completes_on = ["OrderShipped"]
            fails_on = ["PaymentFailed", "OrderRejected"]
            within = "30s"
            "#,
        )
        .unwrap();
        assert_eq!(flows[0].within, Duration::from_secs(30));
        assert_eq!(flows[0].fails_on.len(), 2);
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let problems = read(
            r#"
            [[flows]]
            name = "order"
            starts_with = "Order Placed"
            completes_on = ["OrderShipped"]
            fails_on = ["OrderShipped"]
            within = "soon"
            [[flows]]
            name = "order"
            starts_with = "X"
            within = "1m"
            surprise = true
            "#,
        )
        .unwrap_err();
        let origins: Vec<&str> = problems.iter().map(|p| p.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "flows[0] (order) in causeway.toml.starts_with",
                "flows[0] (order) in causeway.toml.fails_on",
                "flows[0] (order) in causeway.toml.within",
                "flows[1] in causeway.toml",
            ]
        );
        assert!(problems[3].problem.contains("surprise"), "{problems:?}");
    }
}
