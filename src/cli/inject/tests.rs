#![allow(clippy::unwrap_used)]

use super::*;

fn source(text: &str) -> Vec<Source> {
    vec![Source {
        name: "test.yaml".into(),
        text: text.into(),
    }]
}

fn inject(text: &str) -> Result<String, Vec<InjectError>> {
    run(&source(text), Mode::Inject, &Flags::default())
}

fn uninject(text: &str) -> String {
    run(&source(text), Mode::Uninject, &Flags::default()).unwrap()
}

fn value(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap()
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders
spec:
  selector:
    matchLabels:
      app: orders
  template:
    metadata:
      labels:
        app: orders
    spec:
      containers:
        - name: app
          image: orders:1
";

#[test]
fn the_template_parses() {
    Template::load().unwrap();
}

#[test]
fn injecting_twice_changes_nothing_and_uninject_restores_the_input() {
    let once = inject(DEPLOYMENT).unwrap();
    assert!(once.contains("restartPolicy: Always"), "{once}");
    assert_eq!(inject(&once).unwrap(), once);
    assert_eq!(value(&uninject(&once)), value(DEPLOYMENT));
}

#[test]
fn the_sidecar_goes_before_the_containers_and_the_pod_metadata_before_the_spec() {
    let text =
        "kind: Pod\nspec:\n  containers:\n    - name: app\n      image: a\nmetadata:\n  name: p\n";
    let out = inject(text).unwrap();
    let pod = value(&out);
    let keys: Vec<_> = pod["spec"].as_mapping().unwrap().keys().cloned().collect();
    assert_eq!(keys[0], Value::from("initContainers"), "{out}");
    assert_eq!(pod["spec"]["initContainers"][0]["env"][0]["value"], "p");
}

#[test]
fn null_metadata_and_lists_are_taken_as_empty() {
    let text = DEPLOYMENT
        .replace(
            "    metadata:\n      labels:\n        app: orders\n",
            "    metadata:\n",
        )
        .replace(
            "      containers:",
            "      initContainers:\n      volumes:\n      containers:",
        );
    let out = inject(&text).unwrap();
    let pod = &value(&out)["spec"]["template"];
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"], "causeway",
        "{out}"
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["name"], "causeway-config",
        "{out}"
    );
    assert!(pod["metadata"]["annotations"].is_mapping(), "{out}");
}

#[test]
fn a_foreign_causeway_container_or_a_port_conflict_is_refused_and_named() {
    let foreign = DEPLOYMENT.replace("- name: app", "- name: causeway");
    let errors = inject(&foreign).unwrap_err();
    assert_eq!(errors.len(), 1);
    let message = errors[0].to_string();
    assert!(
        message
            .starts_with("test.yaml, document 1 (Deployment/orders): a container named causeway"),
        "{message}"
    );
    let ports = format!(
        "{DEPLOYMENT}          ports:\n            - containerPort: 7071\n      hostNetwork: true\n"
    );
    let message = inject(&ports).unwrap_err()[0].to_string();
    assert!(
        message.contains("container app declares port 7071"),
        "{message}"
    );
    assert!(message.contains("hostNetwork"), "{message}");
}

#[test]
fn a_disabled_workload_and_other_kinds_pass_through() {
    let disabled = DEPLOYMENT.replace(
        "metadata:\n  name: orders\n",
        "metadata:\n  name: orders\n  annotations:\n    causeway.io/inject: disabled\n",
    );
    assert_eq!(value(&inject(&disabled).unwrap()), value(&disabled));
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n";
    assert_eq!(inject(service).unwrap(), service);
}

#[test]
fn empty_documents_are_dropped_and_the_rest_are_separated() {
    let out = inject("---\nkind: Service\n---\n---\nkind: Service\n").unwrap();
    assert_eq!(out, "kind: Service\n---\nkind: Service\n");
}

#[test]
fn malformed_yaml_names_the_document() {
    let errors = inject("kind: Service\n---\nkind: [\n").unwrap_err();
    let message = errors[0].to_string();
    assert!(
        message.starts_with("test.yaml, document 2: not valid YAML"),
        "{message}"
    );
}

mod emitting {
    use super::*;

    fn emit(text: &str) -> String {
        let mut out = String::new();
        emit::document(&value(text), &mut out).unwrap();
        out
    }

    #[test]
    fn strings_a_yaml_1_1_reader_would_take_for_something_else_are_quoted() {
        let out = emit(
            r#"{a: "yes", b: "on", c: "N", d: "0644", e: "1e3", f: "2001-12-14", g: "true", h: "", i: "12:30", j: "-1", k: "null"}"#,
        );
        for line in out.lines() {
            let (_, value) = line.split_once(": ").unwrap();
            assert!(value.starts_with('\''), "{line}");
        }
    }

    #[test]
    fn ordinary_strings_stay_plain() {
        let out = emit(
            "{image: 'causeway:0.1.0', cpu: 50m, memory: 128Mi, url: 'http://jaeger:4318', flag: '--port=80', path: /metrics, key: OrderPlaced-1.0.json, key2: 1.0.json}",
        );
        assert!(!out.contains('\''), "{out}");
        assert!(!out.contains('"'), "{out}");
    }

    #[test]
    fn multi_line_strings_are_literal_blocks_that_read_back() {
        for text in [
            "a\nb\n",
            "a\nb",
            "a\n\n",
            "  indented\nnext\n",
            "{\n  \"type\": \"object\"\n}\n",
            "tab\tand trailing  \nline\n",
        ] {
            let mut doc = Mapping::new();
            doc.insert(
                "data".into(),
                Value::Mapping(Mapping::from_iter([("k".into(), text.into())])),
            );
            doc.insert("items".into(), Value::Sequence(vec![text.into()]));
            let mut out = String::new();
            emit::document(&Value::Mapping(doc), &mut out).unwrap();
            assert!(out.contains('|'), "{out}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        emit::document(&Value::from("bell\u{7}\r\n"), &mut out).unwrap();
        assert_eq!(out, "\"bell\\u0007\\u000d\\n\"\n");
    }

    #[test]
    fn nested_sequences_and_empty_collections() {
        let text = "a:\n  - - 1\n    - 2\n  - {}\n  - []\n  - k: v\n    l:\n      - x\nb: {}\n";
        assert_eq!(emit(text), text);
    }
}
