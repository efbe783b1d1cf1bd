use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schemas")
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

#[test]
fn the_seed_schemas_load_and_the_highest_version_is_the_default() {
    let registry = SchemaRegistry::load(Some(&fixtures()), false).unwrap();
    assert_eq!(
        registry.list(),
        BTreeMap::from([(
            "OrderPlaced".to_string(),
            vec!["1.0".to_string(), "2.0".to_string()]
        )])
    );
    let v2 = r#"{"order_id":"o-1","total_cents":1250,"currency":"EUR","items":[{"sku":"a","quantity":1}]}"#;
    assert_eq!(
        registry.check("OrderPlaced", None, &raw(v2)).unwrap(),
        "2.0".parse().unwrap()
    );
    let v1 = r#"{"order_id":"o-1","total":12.5}"#;
    assert_eq!(
        registry
            .check("OrderPlaced", Some("1.0".parse().unwrap()), &raw(v1))
            .unwrap(),
        "1.0".parse().unwrap()
    );
}

#[test]
fn every_failing_path_is_named() {
    let registry = SchemaRegistry::load(Some(&fixtures()), false).unwrap();
    let bad =
        r#"{"order_id":"","total_cents":-1,"currency":"XXX","items":[{"sku":"a","quantity":0}]}"#;
    let Err(Invalid::Payload { violations, .. }) = registry.check("OrderPlaced", None, &raw(bad))
    else {
        panic!("expected violations");
    };
    let paths: Vec<&str> = violations
        .iter()
        .map(|v| v.instance_path.as_str())
        .collect();
    for path in [
        "/order_id",
        "/total_cents",
        "/currency",
        "/items/0/quantity",
    ] {
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
    assert!(
        violations
            .iter()
            .all(|v| !v.message.is_empty() && !v.schema_path.is_empty())
    );
}

#[test]
fn unknown_versions_and_unregistered_types() {
    let registry = SchemaRegistry::load(Some(&fixtures()), false).unwrap();
    let error = registry
        .check("OrderPlaced", Some("3.0".parse().unwrap()), &raw("{}"))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "OrderPlaced has no schema version 3.0; registered: 1.0, 2.0"
    );
    assert_eq!(
        registry.check("Other", None, &raw("{}")).unwrap(),
        SchemaVersion::DEFAULT
    );
    let strict = SchemaRegistry::load(Some(&fixtures()), true).unwrap();
    assert!(matches!(
        strict.check("Other", None, &raw("{}")),
        Err(Invalid::Unregistered(_))
    ));
}

#[test]
fn a_bad_schema_file_is_named() {
    let dir = std::env::temp_dir().join(format!("causeway-schemas-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(dir.join("Thing")).unwrap();
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    std::fs::create_dir_all(dir.join("lost+found")).unwrap();
    std::fs::write(dir.join("Thing/1.0.json"), r#"{"type": "no-such-type"}"#).unwrap();
    let error = SchemaRegistry::load(Some(&dir), false).unwrap_err();
    assert_eq!(error.path, dir.join("Thing/1.0.json"));
    std::fs::write(dir.join("Thing/1.0.json"), r#"{"type": "object"}"#).unwrap();
    std::fs::write(dir.join("Thing/latest.json"), "{}").unwrap();
    let error = SchemaRegistry::load(Some(&dir), false).unwrap_err();
    assert!(error.problem.contains("2.0.json"), "{error}");
    std::fs::remove_file(dir.join("Thing/latest.json")).unwrap();
    let registry = SchemaRegistry::load(Some(&dir), false).unwrap();
    std::fs::write(dir.join("Thing/2.0.json"), r#"{"type": "object"}"#).unwrap();
    assert_eq!(registry.reload().unwrap(), 2);
    std::fs::write(dir.join("Thing/3.0.json"), "not json").unwrap();
    assert!(registry.reload().is_err());
    assert_eq!(
        registry.list()["Thing"],
        ["1.0", "2.0"],
        "a failed reload keeps the old set"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_payload_outside_the_grammar_is_never_validated_as_something_else() {
    let dir = std::env::temp_dir().join(format!("causeway-schemas-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(dir.join("Untyped")).unwrap();
    std::fs::create_dir_all(dir.join("Typed")).unwrap();
    std::fs::write(
        dir.join("Untyped/1.0.json"),
        r#"{"required":["order_id"],"properties":{"order_id":{"type":"string","minLength":1},"total":{"minimum":0}}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("Typed/1.0.json"), r#"{"type":"object"}"#).unwrap();
    let registry = SchemaRegistry::load(Some(&dir), false).unwrap();
    let check = |event_type: &str, json: &str| registry.check(event_type, None, &raw(json));

    assert!(matches!(
        check("Untyped", r#"{"order_id":"o","total":-5}"#),
        Err(Invalid::Payload { .. })
    ));
    let deep = format!(
        r#"{{"order_id":"o","total":-5,"x":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for (json, pointer) in [
        (r#"{"order_id":"o","total":-5,"x":1e400}"#, "/x"),
        (
            deep.as_str(),
            "/x/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0/0",
        ),
        (r#"{"order_id":"o","total":5,"total":-5}"#, "/total"),
    ] {
        let Err(Invalid::Malformed(malformed)) = check("Untyped", json) else {
            panic!("{json} passed");
        };
        assert_eq!(malformed.pointer, pointer);
    }
    // A type without a schema follows the grammar too.
    assert!(matches!(
        check("NoSchema", r#"{"x":1e400}"#),
        Err(Invalid::Malformed(_))
    ));
    assert!(check("Typed", r#"{"order_id":"o","x":[1e308]}"#).is_ok());
    let error = check("Typed", r#"{"x":-1e400}"#).unwrap_err();
    assert_eq!(
        error.summary(),
        "the payload at /x: a number is out of the range of a double (finite IEEE 754 binary64)"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
