//! `causeway inject` run as a binary on the golden files of tests/fixtures/inject/: each
//! case's output (or error), the outputs against the Kubernetes schemas, idempotence, and the
//! sidecar's agreement with the kustomize component in deploy/kubernetes/base/sidecar/.
//!
//! A case is a directory with `input.yaml` (or other inputs), optional `args` (one argument a
//! line; default `input.yaml`; a `-` sends `input.yaml` on stdin), and the expected
//! `output.yaml` (exit 0) or `error.txt` (stderr; exit 1, or the number in `status`).
//! `UPDATE_GOLDEN=1 cargo nextest run --test inject` rewrites the expected files.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Deserialize as _;
use yaml_serde::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

struct Outcome {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Runs `causeway inject ARGS` in `dir`, with `stdin` on its standard input.
fn inject(dir: &Path, args: &[String], stdin: &str) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .arg("inject")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        // The command may exit before reading everything; that is not this test's failure.
        let _ = input.write_all(stdin.as_bytes());
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Outcome {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn args_of(case: &Path) -> Vec<String> {
    match std::fs::read_to_string(case.join("args")) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => vec!["input.yaml".into()],
    }
}

fn stdin_of(case: &Path, args: &[String]) -> String {
    if args.iter().any(|a| a == "-") {
        std::fs::read_to_string(case.join("input.yaml")).unwrap()
    } else {
        String::new()
    }
}

/// The documents of a YAML stream, empty ones left out.
fn documents(text: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Checks one case against its expected files (or rewrites them with UPDATE_GOLDEN).
fn golden(name: &str) {
    let case = fixtures().join(name);
    let args = args_of(&case);
    let outcome = inject(&case, &args, &stdin_of(&case, &args));
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let expected_output = case.join("output.yaml");
    let expected_error = case.join("error.txt");
    if expected_output.exists() || (update && outcome.status == 0) {
        assert_eq!(outcome.status, 0, "{name}: {}", outcome.stderr);
        assert_eq!(outcome.stderr, "", "{name}");
        if update {
            std::fs::write(&expected_output, &outcome.stdout).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_output).unwrap();
        assert_eq!(
            outcome.stdout, expected,
            "{name}: output differs from {expected_output:?}"
        );
    } else {
        let status =
            std::fs::read_to_string(case.join("status")).map_or(1, |s| s.trim().parse().unwrap());
        assert_eq!(outcome.status, status, "{name}: {}", outcome.stderr);
        assert_eq!(
            outcome.stdout, "",
            "{name}: nothing may be written on an error"
        );
        if update {
            std::fs::write(&expected_error, &outcome.stderr).unwrap();
        }
        let expected = std::fs::read_to_string(&expected_error).unwrap();
        assert_eq!(
            outcome.stderr, expected,
            "{name}: stderr differs from {expected_error:?}"
        );
    }
}

macro_rules! golden_cases {
    ($($name:ident => $dir:literal,)*) => {
        $(
            #[test]
            fn $name() {
                golden($dir);
            }
        )*
        /// Every case directory has its test above.
        const CASES: &[&str] = &[$($dir),*];
    };
}

golden_cases! {
    injects_a_deployment => "deployment",
    injects_a_statefulset => "statefulset",
    injects_a_daemonset => "daemonset",
    injects_a_job => "job",
    injects_a_cronjob_in_its_job_template => "cronjob",
    injects_a_pod_from_stdin => "pod",
    injects_the_items_of_a_list => "list",
    injects_a_multi_document_file_and_passes_other_objects_through => "multi-document",
    injects_the_yaml_and_json_files_of_a_directory => "directory",
    updates_an_injected_sidecar_to_this_version_keeping_extra_env => "already-injected",
    updates_a_sidecar_made_by_the_kustomize_component => "kustomize-made",
    uninject_takes_away_what_inject_added => "uninject",
    flags_win_over_pod_annotations_which_win_over_workload_annotations => "annotations-and-flags",
    leaves_a_workload_with_inject_disabled_alone => "disabled",
    keeps_strings_that_kubernetes_reads_as_other_types_quoted => "quoting",
    refuses_documents_it_cannot_inject_naming_each => "errors",
    refuses_malformed_yaml_naming_the_document => "malformed-yaml",
    refuses_a_schema_config_map_it_cannot_see => "schemas-unknown",
    refuses_a_bad_flag_value_before_reading => "bad-flag",
    refuses_a_missing_file => "missing-file",
}

#[test]
fn every_case_directory_has_a_test() {
    let mut dirs: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut cases: Vec<String> = CASES.iter().map(|c| (*c).to_owned()).collect();
    cases.sort();
    assert_eq!(dirs, cases);
}

/// The cases whose expected result is a manifest.
fn successful_cases() -> Vec<PathBuf> {
    CASES
        .iter()
        .map(|c| fixtures().join(c))
        .filter(|c| c.join("output.yaml").exists())
        .collect()
}

#[test]
fn every_output_matches_the_kubernetes_schemas() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/validate-manifests");
    let outputs: Vec<PathBuf> = successful_cases()
        .iter()
        .map(|c| c.join("output.yaml"))
        .collect();
    assert!(outputs.len() >= 10);
    let result = Command::new(script).args(&outputs).output().unwrap();
    let report = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        report.contains("Deployment/orders matches the Kubernetes"),
        "{report}"
    );
}

#[test]
fn injecting_again_changes_nothing_and_uninject_restores_the_input() {
    for case in successful_cases() {
        let args = args_of(&case);
        if args.iter().any(|a| a == "--uninject") {
            continue;
        }
        let output = std::fs::read_to_string(case.join("output.yaml")).unwrap();
        // The same flags (the arguments that are not inputs), on the output.
        let mut again: Vec<String> = args
            .iter()
            .filter(|a| *a != "-" && !case.join(a).exists())
            .cloned()
            .collect();
        again.push("-".into());
        let twice = inject(&case, &again, &output);
        assert_eq!(twice.status, 0, "{case:?}: {}", twice.stderr);
        assert_eq!(
            twice.stdout, output,
            "{case:?}: injecting twice changed the output"
        );

        let input = std::fs::read_to_string(case.join("input.yaml")).unwrap_or_default();
        if input.is_empty() || input.contains("name: causeway\n") {
            continue; // a directory, or a sidecar in the input already
        }
        // The input as the command writes it: the same objects, in its formatting.
        let canonical = inject(&case, &["--uninject".into(), "-".into()], &input);
        assert_eq!(canonical.status, 0, "{case:?}: {}", canonical.stderr);
        if !input.contains("ode: 0") {
            // (File modes such as `defaultMode: 0644` are written as numbers.)
            assert_eq!(documents(&canonical.stdout), documents(&input), "{case:?}");
        }
        let back = inject(&case, &["--uninject".into(), "-".into()], &output);
        assert_eq!(back.status, 0, "{case:?}: {}", back.stderr);
        assert_eq!(
            back.stdout, canonical.stdout,
            "{case:?}: uninject did not restore the input"
        );
    }
}

/// The fields of the base's sidecar that inject takes over as they are.
const SAME_FIELDS: [&str; 10] = [
    "name",
    "image",
    "imagePullPolicy",
    "restartPolicy",
    "ports",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "resources",
    "securityContext",
];

#[test]
fn the_sidecar_agrees_with_the_kustomize_component() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base =
        std::fs::read_to_string(root.join("deploy/kubernetes/base/sidecar/sidecar.yaml")).unwrap();
    let base: Value = yaml_serde::from_str(&base).unwrap();
    let output = std::fs::read_to_string(fixtures().join("deployment/output.yaml")).unwrap();
    let injected = &documents(&output)[0];
    let (base_pod, pod) = (&base["spec"]["template"], &injected["spec"]["template"]);
    let find = |pod: &Value| -> Value {
        pod["spec"]["initContainers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "causeway")
            .unwrap()
            .clone()
    };
    let (want, have) = (find(base_pod), find(pod));
    for field in SAME_FIELDS {
        assert_eq!(
            have[field], want[field],
            "{field} differs from the base's: src/cli/inject/sidecar.yaml and \
             deploy/kubernetes/base/sidecar/sidecar.yaml change together"
        );
    }
    // The environment the base sets for every service, and its mounts of the configuration
    // and the data volume.
    for name in [
        "CAUSEWAY_AMQP_URL",
        "CAUSEWAY_CONFIG",
        "CAUSEWAY_SHUTDOWN_GRACE",
    ] {
        let var = |c: &Value| {
            c["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
        };
        assert_eq!(var(&have), var(&want), "{name} differs from the base's");
    }
    for volume in ["causeway-config", "causeway-data"] {
        let mount = |c: &Value| {
            c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| m["name"] == volume)
                .cloned()
        };
        assert_eq!(
            mount(&have),
            mount(&want),
            "mount of {volume} differs from the base's"
        );
    }
    let volume = |pod: &Value, name: &str| {
        pod["spec"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
    };
    assert_eq!(
        volume(pod, "causeway-data"),
        volume(base_pod, "causeway-data")
    );
    assert_eq!(
        volume(pod, "causeway-config"),
        volume(base_pod, "causeway-config")
    );
    assert_eq!(
        pod["spec"]["terminationGracePeriodSeconds"],
        base_pod["spec"]["terminationGracePeriodSeconds"]
    );
    for (key, value) in base_pod["metadata"]["annotations"].as_mapping().unwrap() {
        assert_eq!(
            &pod["metadata"]["annotations"][key], value,
            "annotation {key:?}"
        );
    }
}

/// The schema volume that inject writes, laid out as the kubelet lays out a ConfigMap volume
/// (the files in a hidden timestamped directory, `..data` pointing to it, and a link per
/// top-level entry), is what the sidecar reads as its schema directory.
#[test]
fn the_schema_volume_is_read_by_the_sidecar_as_the_kubelet_lays_it_out() {
    let output = std::fs::read_to_string(fixtures().join("multi-document/output.yaml")).unwrap();
    let docs = documents(&output);
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "shop-schemas")
        .unwrap();
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "causeway-schemas")
        .unwrap();
    assert_eq!(volume["configMap"]["name"], "shop-schemas");

    let dir = std::env::temp_dir().join(format!("causeway-inject-schemas-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let timestamped = dir.join("..2026_12_07_00_00_00.000000001");
    let mut top = Vec::new();
    for item in volume["configMap"]["items"].as_sequence().unwrap() {
        let path = item["path"].as_str().unwrap();
        let file = timestamped.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let key = item["key"].as_str().unwrap();
        std::fs::write(&file, config_map["data"][key].as_str().unwrap()).unwrap();
        top.push(path.split('/').next().unwrap().to_owned());
    }
    std::os::unix::fs::symlink("..2026_12_07_00_00_00.000000001", dir.join("..data")).unwrap();
    top.dedup();
    for entry in &top {
        std::os::unix::fs::symlink(format!("..data/{entry}"), dir.join(entry)).unwrap();
    }
    let registry = causeway::schema::SchemaRegistry::load(Some(&dir), false);
    std::fs::remove_dir_all(&dir).unwrap();
    let listed: Vec<(String, Vec<String>)> = registry.unwrap().list().into_iter().collect();
    assert_eq!(
        listed,
        [
            ("OrderPlaced".into(), vec!["1.0".into(), "2.0".into()]),
            ("StockReserved".into(), vec!["1.0".into()]),
        ]
    );
}
