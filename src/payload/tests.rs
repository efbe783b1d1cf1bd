use proptest::prelude::*;

use super::*;

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

/// A number inside `depth` arrays.
fn nested(depth: usize) -> String {
    format!("{}0{}", "[".repeat(depth), "]".repeat(depth))
}

fn malformed(json: &str) -> Malformed {
    let checked = check(&raw(json)).unwrap_err();
    let parsed = parse(&raw(json)).unwrap_err();
    assert_eq!(checked, parsed, "both walks find the same breach in {json}");
    checked
}

#[test]
fn numbers_must_fit_a_double() {
    for good in [
        "1e308",
        "-1.7976931348623157e308",
        "1e-400",
        "18446744073709551616",
        "-0",
    ] {
        assert!(check(&raw(good)).is_ok(), "{good}");
    }
    let error = malformed(r#"{"total":-5,"x":1e400}"#);
    assert_eq!(error.pointer, "/x");
    assert_eq!(error.breach, Breach::NumberOutOfRange);
    assert_eq!(
        error.to_string(),
        "the payload at /x: a number is out of the range of a double (finite IEEE 754 binary64)"
    );
    let error = malformed(r#"[1,[2,-1e400]]"#);
    assert_eq!(error.pointer, "/1/1");
    assert_eq!(malformed("1e400").pointer, "");
}

#[test]
fn nesting_is_limited_and_the_deepest_container_is_named() {
    assert!(check(&raw(&nested(MAX_DEPTH))).is_ok());
    assert!(parse(&raw(&nested(MAX_DEPTH))).is_ok());
    let error = malformed(&nested(MAX_DEPTH + 1));
    assert_eq!(error.breach, Breach::TooDeep);
    assert_eq!(error.pointer, "/0".repeat(MAX_DEPTH));
    let error = malformed(&format!(r#"{{"total":-5,"x":{}}}"#, nested(200)));
    assert_eq!(error.breach, Breach::TooDeep);
    assert!(error.pointer.starts_with("/x/0/0"), "{error}");
    let objects = format!(r#"{}1{}"#, r#"{"a":"#.repeat(40), "}".repeat(40));
    assert_eq!(malformed(&objects).pointer, "/a".repeat(MAX_DEPTH));
}

#[test]
fn a_repeated_member_name_is_named() {
    let error = malformed(r#"{"total":-5,"total":5}"#);
    assert_eq!(error.pointer, "/total");
    assert_eq!(error.breach, Breach::RepeatedName("total".into()));
    // The same name escaped differently is the same name.
    let error = malformed(r#"{"a":{"x/y":1,"x\/y":2}}"#);
    assert_eq!(error.pointer, "/a/x~1y");
    // Many members: the hashed path finds it too.
    let many: Vec<String> = (0..100).map(|i| format!(r#""k{i}":{i}"#)).collect();
    let error = malformed(&format!("{{{},\"k7\":0}}", many.join(",")));
    assert_eq!(error.pointer, "/k7");
    assert!(check(&raw(&format!("{{{}}}", many.join(",")))).is_ok());
}

#[test]
fn strings_must_be_unicode() {
    let error = malformed(r#"{"name":"\ud800"}"#);
    assert_eq!(error.pointer, "/name");
    assert!(matches!(error.breach, Breach::Text(_)), "{error}");
    assert!(!error.to_string().contains("line"), "{error}");
    assert!(check(&raw(r#""\ud83d\ude00""#)).is_ok());
}

#[test]
fn parse_builds_the_value_serde_json_reads() {
    let json =
        r#"{"order_id":"o-1","items":[{"sku":"a","n":2}],"total":12.5,"ok":true,"none":null}"#;
    let expected: Value = serde_json::from_str(json).unwrap();
    assert_eq!(parse(&raw(json)).unwrap(), expected);
}

/// Any JSON value within the grammar: finite numbers, unique names, nesting bounded.
pub(crate) fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// JSON text with what the grammar refuses mixed in: numbers out of range, lone surrogates,
/// repeated names (among few names, some spelled with escapes), deep nesting.
fn hostile() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("12.5".to_owned()),
        Just("1e400".to_owned()),
        Just("-1e309".to_owned()),
        Just("1e-400".to_owned()),
        Just("123456789012345678901234567890".to_owned()),
        Just(r#""\ud800""#.to_owned()),
        Just(r#""\udc00x""#.to_owned()),
        Just(r#""\ud83d\ude00""#.to_owned()),
        "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,5})?([eE][+-]?[0-9]{1,4})?",
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let name = prop_oneof![
        Just(r#""a""#),
        Just(r#""\u0061""#),
        Just(r#""b""#),
        Just(r#""x/y""#),
        Just(r#""x\/y""#),
        Just(r#""~""#),
    ];
    let tree = leaf.prop_recursive(5, 48, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((name.clone(), inner), 0..4).prop_map(|members| {
                let members: Vec<String> =
                    members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    });
    (tree, 0..(MAX_DEPTH + 4))
        .prop_map(|(tree, wrap)| format!("{}{tree}{}", "[".repeat(wrap), "]".repeat(wrap)))
}

/// How deep arrays and objects nest in `value`.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(members) => 1 + members.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_value_within_the_grammar_is_accepted_and_read_as_serde_json_reads_it(value in value()) {
        let text = serde_json::to_string(&value).unwrap();
        let payload = raw(&text);
        prop_assert!(check(&payload).is_ok());
        let read: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(parse(&payload).unwrap(), read);
    }

    #[test]
    fn hostile_json_is_refused_by_both_walks_alike_and_what_passes_reads_the_same_everywhere(text in hostile()) {
        let payload = raw(&text);
        let checked = check(&payload);
        let parsed = parse(&payload);
        prop_assert_eq!(checked.as_ref().err(), parsed.as_ref().err());
        let read = serde_json::from_str::<Value>(&text);
        match parsed {
            Ok(value) => {
                // What is validated is what another reader of these bytes gets.
                prop_assert_eq!(&value, read.as_ref().unwrap());
                prop_assert!(depth(&value) <= MAX_DEPTH);
            }
            Err(error) => {
                if let Breach::Text(message) = &error.breach {
                    prop_assert!(read.is_err(), "{}", message);
                }
            }
        }
        // Nothing a reader cannot read passes.
        if read.is_err() {
            prop_assert!(checked.is_err());
        }
    }

    #[test]
    fn nesting_is_accepted_up_to_the_limit(depth in 0..(MAX_DEPTH * 3), objects in any::<bool>()) {
        let text = if objects {
            format!("{}0{}", r#"{"k":"#.repeat(depth), "}".repeat(depth))
        } else {
            nested(depth)
        };
        let result = check(&raw(&text));
        prop_assert_eq!(result.is_ok(), depth <= MAX_DEPTH, "{:?}", result);
    }

    #[test]
    fn a_repeated_name_is_refused_wherever_it_is(value in value(), name in "[a-z]{1,4}", path in prop::collection::vec("[a-z]{1,3}", 0..4)) {
        // {"p1":{"p2":{…{"name":1,<value>,"name":2}}}}
        let inner = format!(
            r#"{{"{name}":1,"other":{},"{name}":2}}"#,
            serde_json::to_string(&value).unwrap()
        );
        let text = path.iter().rev().fold(inner, |text, key| format!(r#"{{"{key}":{text}}}"#));
        let error = check(&raw(&text)).unwrap_err();
        let pointer: String = path.iter().chain([&name]).map(|key| format!("/{key}")).collect();
        prop_assert_eq!(error.pointer, pointer);
        prop_assert_eq!(error.breach, Breach::RepeatedName(name));
    }
}
