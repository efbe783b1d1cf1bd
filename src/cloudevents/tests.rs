use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use proptest::prelude::*;

use super::{
    amqp::{Message, Undecodable, decode, properties},
    http::{
        Mode, binary_headers, decode_header, encode_header, from_binary, from_structured, mode_of,
        structured_body,
    },
    *,
};
use crate::{
    amqp::text_header,
    envelope::{Envelope, ExtensionValue, SchemaVersion, TraceContext},
};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

const BINARY: [(&str, &str); 6] = [
    ("ce-specversion", "1.0"),
    ("ce-id", "order-123"),
    ("ce-source", "https://example.com/orders"),
    ("ce-type", "com.example.order.placed"),
    ("ce-time", "2026-11-27T13:00:00.5+01:00"),
    ("content-type", "application/json; charset=utf-8"),
];

fn attributes_of_errors(refused: Refused) -> Vec<String> {
    match refused {
        Refused::Invalid(errors) => errors.into_iter().map(|e| e.attribute).collect(),
        Refused::Unsupported(why) => panic!("unsupported: {why}"),
    }
}

#[test]
fn a_binary_request_maps_to_the_envelope_fields() {
    let mut sent = BINARY.to_vec();
    sent.extend([
        ("ce-subject", "order%20123"),
        (
            "ce-dataschema",
            "https://schemas.example.com/OrderPlaced/2.1.json",
        ),
        ("ce-correlationid", "txn-abc-123"),
        ("ce-causationid", "cart-9"),
        (
            "ce-traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("ce-partitionkey", "\"customer \\\"7\\\"\""),
        ("ce-comexampleflag", "true"),
    ]);
    let event = from_binary(&headers(&sent), br#"{"total": 12}"#).unwrap();
    assert_eq!(event.event_type, "com.example.order.placed");
    assert_eq!(
        event.event_id,
        super::event_id("https://example.com/orders", "order-123")
    );
    assert_eq!(
        event.occurred_at.as_deref(),
        Some("2026-11-27T12:00:00.500000Z")
    );
    assert_eq!(event.schema_version, Some("2.1".parse().unwrap()));
    assert_eq!(event.correlation_id.as_deref(), Some("txn-abc-123"));
    assert_eq!(event.causation_id.as_deref(), Some("cart-9"));
    assert_eq!(
        event.trace.traceparent.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(event.data.get(), r#"{"total": 12}"#);
    let kept = &event.attributes;
    assert_eq!(kept.id.as_deref(), Some("order-123"));
    assert_eq!(kept.source.as_deref(), Some("https://example.com/orders"));
    assert_eq!(kept.subject.as_deref(), Some("order 123"));
    assert_eq!(
        kept.datacontenttype.as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        kept.extensions.get("partitionkey"),
        Some(&ExtensionValue::Text("customer \"7\"".into()))
    );
    // Binary mode carries text: the type of an extension is not known.
    assert_eq!(
        kept.extensions.get("comexampleflag"),
        Some(&ExtensionValue::Text("true".into()))
    );
    assert!(kept.extensions.contains_key("traceparent"));
    assert!(!kept.extensions.contains_key("correlationid"));
}

#[test]
fn every_bad_binary_attribute_is_named_as_it_was_sent() {
    let refused = from_binary(
        &headers(&[
            ("ce-specversion", "0.3"),
            ("ce-source", "not a uri"),
            ("ce-type", "1bad"),
            ("ce-time", "yesterday"),
            ("ce-correlationid", "%E2%82%AC"),
            ("ce-Bad-Name", "x"),
            ("ce-datacontenttype", "application/json"),
            ("ce-subject", "%C0%A0"),
            ("content-type", "application/json"),
        ]),
        b"{}",
    )
    .unwrap_err();
    let mut named = attributes_of_errors(refused);
    named.sort();
    assert_eq!(
        named,
        [
            "ce-bad-name",
            "ce-correlationid",
            "ce-datacontenttype",
            "ce-id",
            "ce-source",
            "ce-specversion",
            "ce-subject",
            "ce-time",
            "ce-type",
        ]
    );
    let missing = from_binary(&headers(&BINARY[1..]), b"{}").unwrap_err();
    assert_eq!(attributes_of_errors(missing.clone()), ["ce-specversion"]);
    assert!(
        missing.to_string().contains("ce-specversion is required"),
        "{missing}"
    );
}

#[test]
fn binary_data_must_be_json() {
    let mut sent = BINARY[..5].to_vec();
    let refused = from_binary(&headers(&sent), b"{}").unwrap_err();
    assert!(matches!(refused, Refused::Unsupported(_)), "{refused:?}");
    sent.push(("content-type", "text/plain"));
    let refused = from_binary(&headers(&sent), b"hello").unwrap_err();
    assert!(refused.to_string().contains("text/plain"), "{refused}");
    sent.pop();
    sent.push(("content-type", "application/vnd.example+json"));
    let event = from_binary(&headers(&sent), b"[1]").unwrap();
    assert_eq!(
        event.attributes.datacontenttype.as_deref(),
        Some("application/vnd.example+json")
    );
    let refused = from_binary(&headers(&sent), b"{nope").unwrap_err();
    assert_eq!(attributes_of_errors(refused), ["data"]);
}

#[test]
fn the_mode_follows_the_content_type_then_the_headers() {
    let mode = |pairs: &[(&str, &str)]| mode_of(&headers(pairs));
    assert_eq!(
        mode(&[("content-type", "application/json")]),
        Ok(Mode::Native)
    );
    assert_eq!(mode(&BINARY), Ok(Mode::Binary));
    assert_eq!(
        mode(&[(
            "content-type",
            "Application/CloudEvents+JSON; charset=utf-8"
        )]),
        Ok(Mode::Structured)
    );
    assert_eq!(
        mode(&[("content-type", "application/cloudevents-batch+json")]),
        Ok(Mode::Batch)
    );
    for other in [
        "application/cloudevents+avro",
        "application/cloudevents-batch+xml",
    ] {
        let refused = mode(&[("content-type", other)]).unwrap_err();
        assert!(matches!(refused, Refused::Unsupported(_)), "{other}");
    }
}

#[test]
fn a_structured_event_keeps_typed_extensions_and_refuses_binary_data() {
    let event = from_structured(
        br#"{"specversion":"1.0","id":"3f0c9e5a-3b5e-4b8e-9a55-2d0f3c1e7a10",
             "source":"/orders","type":"OrderPlaced","subject":null,
             "schemaversion":"2.0","flag":true,"count":-5,"whole":2.0,"data":null}"#,
    )
    .unwrap();
    assert_eq!(
        event.event_id.to_string(),
        "3f0c9e5a-3b5e-4b8e-9a55-2d0f3c1e7a10"
    );
    assert_eq!(event.attributes.id, None, "a UUID id is the event id as is");
    assert_eq!(event.attributes.subject, None);
    assert_eq!(event.schema_version, Some("2.0".parse().unwrap()));
    assert_eq!(
        event.attributes.extensions.get("flag"),
        Some(&ExtensionValue::Bool(true))
    );
    assert_eq!(
        event.attributes.extensions.get("count"),
        Some(&ExtensionValue::Int(-5))
    );
    assert_eq!(
        event.attributes.extensions.get("whole"),
        Some(&ExtensionValue::Int(2)),
        "JSON Schema's integers include 2.0"
    );
    assert_eq!(event.data.get(), "null");

    let base64 = from_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"T","data_base64":"AAEC"}"#,
    )
    .unwrap_err();
    assert!(base64.to_string().contains("data_base64"), "{base64}");
    assert!(matches!(base64, Refused::Unsupported(_)));
    let xml = from_structured(
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"T",
             "datacontenttype":"application/xml","data":"<a/>"}"#,
    )
    .unwrap_err();
    assert!(matches!(xml, Refused::Unsupported(_)), "{xml:?}");
    let twice = from_structured(
        br#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"T","big":4294967296,
             "nested":{"a":1},"half":0.5}"#,
    )
    .unwrap_err();
    let mut named = attributes_of_errors(twice);
    named.sort();
    assert_eq!(named, ["big", "half", "id", "nested"]);
    let array = from_structured(b"[]").unwrap_err();
    assert!(array.to_string().contains("cloudevents-batch"), "{array}");
}

#[test]
fn ids_are_uuids_as_sent_or_derived_from_source_and_id() {
    let uuid = "01936f3e-0000-7000-8000-000000000001";
    assert_eq!(event_id("/a", uuid).to_string(), uuid);
    assert_eq!(event_id("/b", uuid).to_string(), uuid);
    let derived = event_id("/a", "42");
    assert_eq!(derived, event_id("/a", "42"), "the same event, the same id");
    assert_ne!(derived, event_id("/b", "42"));
    assert_ne!(event_id("/a4", "2"), event_id("/a", "42"));
    assert_eq!(derived.get_version_num(), 8);
    let nil = "00000000-0000-0000-0000-000000000000";
    assert_ne!(event_id("/a", nil).to_string(), nil);
}

#[test]
fn times_are_normalized_to_utc_microseconds() {
    for (sent, want) in [
        ("2026-11-27T12:00:00Z", Some("2026-11-27T12:00:00.000000Z")),
        (
            "2026-11-27t12:00:00.123456789z",
            Some("2026-11-27T12:00:00.123456Z"),
        ),
        (
            "2026-11-27T14:30:00+02:30",
            Some("2026-11-27T12:00:00.000000Z"),
        ),
        (
            "2026-11-27T00:00:00-05:00",
            Some("2026-11-27T05:00:00.000000Z"),
        ),
        ("1970-01-01T00:30:00+01:00", None),
        ("9999-12-31T23:30:00-01:00", None),
        ("2026-11-27T12:00:00", None),
        ("2026-11-27T12:00:00+2:00", None),
        ("2026-11-27 12:00:00Z", None),
        ("2026-13-01T00:00:00Z", None),
        ("", None),
    ] {
        assert_eq!(normalize_time(sent).as_deref(), want, "{sent}");
    }
}

#[test]
fn schema_versions_come_from_the_end_of_a_dataschema() {
    for (uri, want) in [
        (
            "https://schemas.example.com/OrderPlaced/2.1.json",
            Some("2.1"),
        ),
        (
            "https://schemas.example.com/OrderPlaced/v3.0?x=1",
            Some("3.0"),
        ),
        ("urn:example:schemas:OrderPlaced:1.4", Some("1.4")),
        ("https://schemas.example.com/OrderPlaced", None),
        ("https://schemas.example.com/orders/123", None),
    ] {
        let got = version_in_uri(uri).map(|v| v.to_string());
        assert_eq!(got.as_deref(), want, "{uri}");
    }
}

#[test]
fn extensions_are_bounded_in_count_and_size() {
    let mut many: Vec<(String, Value)> = [
        ("specversion", "1.0"),
        ("id", "1"),
        ("source", "/s"),
        ("type", "T"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), Value::Text(v.to_string())))
    .collect();
    let base = many.clone();
    for n in 0..=MAX_EXTENSIONS {
        many.push((format!("ext{n:02}"), Value::Int(n as i64)));
    }
    let data = || RawValue::NULL.to_owned();
    let refused = CloudEvent::check(many, data(), &|n: &str| n.to_owned()).unwrap_err();
    assert_eq!(
        attributes_of_errors(refused),
        [format!("ext{MAX_EXTENSIONS}")]
    );
    let mut big = base.clone();
    for n in 0..5 {
        big.push((format!("big{n}"), Value::Text("x".repeat(1000))));
    }
    let refused = CloudEvent::check(big, data(), &|n: &str| n.to_owned()).unwrap_err();
    assert_eq!(attributes_of_errors(refused), ["big4"]);
    let mut long = base;
    long.push(("long".into(), Value::Text("x".repeat(MAX_TEXT + 1))));
    long.push(("data".into(), Value::Text("x".into())));
    let refused = CloudEvent::check(long, data(), &|n: &str| n.to_owned()).unwrap_err();
    assert_eq!(attributes_of_errors(refused), ["data", "long"]);
}

/// The envelope of a CloudEvent published through this sidecar: the service is the
/// envelope's source, and the event's own source is kept.
fn envelope_of(event: CloudEvent) -> Envelope {
    let source = event.source.clone();
    let mut envelope = event.into_envelope(SchemaVersion::DEFAULT);
    envelope.source = "orders".into();
    envelope
        .cloudevents
        .get_or_insert_with(Default::default)
        .source = Some(source);
    envelope
}

#[test]
fn a_delivery_in_binary_mode_reads_back_as_the_same_event() {
    let mut sent = BINARY.to_vec();
    sent.extend([
        ("ce-subject", "caf%C3%A9 1"),
        ("ce-correlationid", "flow-1"),
    ]);
    let event = from_binary(&headers(&sent), br#"{"a":1}"#).unwrap();
    let mut envelope = event.clone().into_envelope(SchemaVersion::DEFAULT);
    envelope.causation_id = Some("cause".into());
    let trace = TraceContext::default();
    let mut delivered = HeaderMap::new();
    for (name, value) in binary_headers(&envelope, &trace) {
        delivered.insert(name, value);
    }
    assert_eq!(delivered["ce-subject"], "caf%C3%A9%201");
    assert_eq!(delivered["ce-id"], "order-123");
    assert_eq!(delivered["ce-source"], "https://example.com/orders");
    assert_eq!(delivered["ce-time"], "2026-11-27T12:00:00.500000Z");
    assert_eq!(delivered["ce-causationid"], "cause");
    assert_eq!(delivered["ce-schemaversion"], "1.0");
    assert_eq!(delivered["content-type"], "application/json; charset=utf-8");
    assert!(!delivered.contains_key("ce-traceparent"));
    let back = from_binary(&delivered, envelope.payload.get().as_bytes()).unwrap();
    assert_eq!(back.event_id, event.event_id);
    assert_eq!(back.attributes.subject.as_deref(), Some("café 1"));
    assert_eq!(back.causation_id.as_deref(), Some("cause"));
}

#[test]
fn a_native_envelope_delivered_as_a_cloudevent_names_its_trace_and_source() {
    let mut envelope = envelope_of(
        from_structured(br#"{"specversion":"1.0","id":"1","source":"/s","type":"T"}"#).unwrap(),
    );
    envelope.cloudevents = None;
    let trace = TraceContext {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: Some("a=1".into()),
    };
    let body = structured_body(&envelope, &trace);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["specversion"], "1.0");
    assert_eq!(json["id"], envelope.event_id.to_string());
    assert_eq!(json["source"], "orders");
    assert_eq!(json["correlationid"], envelope.correlation_id);
    assert_eq!(json["datacontenttype"], "application/json");
    assert_eq!(json["traceparent"], trace.traceparent.unwrap());
    assert_eq!(json["tracestate"], "a=1");
    assert_eq!(json["data"], serde_json::Value::Null);
    assert!(json.get("causationid").is_none());
    let back = from_structured(&body).unwrap();
    assert_eq!(back.event_id, envelope.event_id);
}

#[test]
fn published_envelopes_carry_the_amqp_binding_properties() {
    let mut event =
        from_structured(br#"{"specversion":"1.0","id":"e-1","source":"/s","type":"T","n":3}"#)
            .unwrap();
    event.causation_id = Some("c-1".into());
    let envelope = envelope_of(event);
    let properties = properties(&envelope, &TraceContext::default()).unwrap();
    let header = |name: &str| text_header(&properties, name);
    assert_eq!(header("cloudEvents_specversion").as_deref(), Some("1.0"));
    assert_eq!(header("cloudEvents_id").as_deref(), Some("e-1"));
    assert_eq!(header("cloudEvents_source").as_deref(), Some("/s"));
    assert_eq!(header("cloudEvents_type").as_deref(), Some("T"));
    assert_eq!(
        header("cloudEvents_time"),
        Some(envelope.occurred_at.clone())
    );
    assert_eq!(
        header("cloudEvents_correlationid"),
        Some(envelope.correlation_id.clone())
    );
    assert_eq!(header("cloudEvents_causationid").as_deref(), Some("c-1"));
    assert_eq!(header("schema_version").as_deref(), Some("1.0"));
    let table = properties.headers().as_ref().unwrap().inner();
    assert_eq!(table.get("cloudEvents_n"), Some(&AMQPValue::LongLongInt(3)));
    // The envelope is read back as one, not as a CloudEvent whose data is the envelope.
    let decoded = decode(&properties, &envelope.to_json(), "T.v1").unwrap();
    assert!(matches!(decoded, Message::Envelope(_)), "{decoded:?}");
}

fn amqp_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert((*name).into(), value.clone());
    }
    BasicProperties::default().with_headers(table)
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

#[test]
fn a_cloudevent_from_another_producer_becomes_an_envelope() {
    for prefix in ["cloudEvents_", "cloudEvents:", "ce-", "ce_", "cloudevents_"] {
        let name = |attribute: &str| format!("{prefix}{attribute}");
        let properties = amqp_headers(&[
            (name("specversion").as_str(), long("1.0")),
            (name("id").as_str(), long("k-1")),
            (name("source").as_str(), long("/knative")),
            (name("type").as_str(), long("OrderPlaced")),
            (name("time").as_str(), AMQPValue::Timestamp(1_800_000_000)),
            (name("causationid").as_str(), long("c-9")),
            (name("flag").as_str(), AMQPValue::Boolean(true)),
        ])
        .with_content_type("application/json".into());
        let decoded = decode(&properties, br#"{"sku":"A"}"#, "OrderPlaced.v3").unwrap();
        let Message::CloudEvent(envelope) = decoded else {
            panic!("{prefix}: {decoded:?}");
        };
        assert_eq!(envelope.event_id, event_id("/knative", "k-1"), "{prefix}");
        assert_eq!(envelope.source, "/knative");
        assert_eq!(envelope.schema_version.to_string(), "3.0");
        assert_eq!(envelope.correlation_id, envelope.event_id.to_string());
        assert_eq!(envelope.causation_id.as_deref(), Some("c-9"));
        assert_eq!(envelope.occurred_at, "2027-01-15T08:00:00.000000Z");
        assert_eq!(envelope.payload.get(), r#"{"sku":"A"}"#);
        let kept = envelope.cloudevents.as_deref().unwrap();
        assert_eq!(kept.id.as_deref(), Some("k-1"));
        assert_eq!(kept.source, None);
        assert_eq!(
            kept.extensions.get("flag"),
            Some(&ExtensionValue::Bool(true))
        );
    }
}

#[test]
fn a_structured_cloudevent_on_the_broker_becomes_an_envelope() {
    let properties =
        BasicProperties::default().with_content_type("application/cloudevents+json".into());
    let body = br#"{"specversion":"1.0","id":"s-1","source":"/dapr","type":"OrderPlaced",
                    "correlationid":"flow-7","data":{"sku":"B"}}"#;
    let Message::CloudEvent(envelope) = decode(&properties, body, "OrderPlaced.v1").unwrap() else {
        panic!("not a CloudEvent");
    };
    assert_eq!(envelope.correlation_id, "flow-7");
    assert_eq!(envelope.payload.get(), r#"{"sku":"B"}"#);
    // As Dapr publishes them: its own extensions, an empty tracestate, another content type
    // for the data.
    let dapr = br#"{"topic":"orders","pubsubname":"order_pub_sub","tracestate":"",
        "traceid":"00-113ad9c4e42b27583ae98ba698d54255-e3743e35ff56f219-01",
        "traceparent":"00-113ad9c4e42b27583ae98ba698d54255-e3743e35ff56f219-01",
        "data":{"orderId":1},"id":"5929aaac-a5e2-4ca1-859c-edfe73f11565","specversion":"1.0",
        "datacontenttype":"application/json; charset=utf-8","source":"checkout",
        "type":"com.dapr.event.sent","time":"2020-09-23T06:23:21Z"}"#;
    let Message::CloudEvent(envelope) = decode(&properties, dapr, "orders.v1").unwrap() else {
        panic!("not a CloudEvent");
    };
    assert_eq!(
        envelope.event_id.to_string(),
        "5929aaac-a5e2-4ca1-859c-edfe73f11565"
    );
    assert_eq!(envelope.event_type, "com.dapr.event.sent");
    assert_eq!(envelope.occurred_at, "2020-09-23T06:23:21.000000Z");
    let kept = envelope.cloudevents.as_deref().unwrap();
    assert_eq!(
        kept.extensions.get("tracestate"),
        Some(&ExtensionValue::Text(String::new()))
    );
    assert_eq!(kept.extensions.len(), 5, "{kept:?}");
    let bad = decode(&properties, br#"{"id":"s-1"}"#, "OrderPlaced.v1").unwrap_err();
    assert!(matches!(bad, Undecodable::CloudEvent(_)));
    assert!(bad.to_string().contains("specversion is required"), "{bad}");
}

#[test]
fn what_is_neither_says_why() {
    let plain = decode(&BasicProperties::default(), b"{}", "T.v1").unwrap_err();
    assert!(matches!(plain, Undecodable::Envelope(_)), "{plain}");
    // A damaged envelope stays an envelope, whatever CloudEvents headers it carries.
    let damaged = amqp_headers(&[
        ("schema_version", long("1.0")),
        ("cloudEvents_specversion", long("1.0")),
    ]);
    let error = decode(&damaged, b"{\"event_id\":1}", "T.v1").unwrap_err();
    assert!(matches!(error, Undecodable::Envelope(_)), "{error}");
    let invalid = amqp_headers(&[
        ("cloudEvents_specversion", long("1.0")),
        ("cloudEvents_id", long("1")),
        ("cloudEvents_type", long("T")),
        (
            "cloudEvents_list",
            AMQPValue::FieldArray(Default::default()),
        ),
    ]);
    let error = decode(&invalid, b"{}", "T.v1").unwrap_err().to_string();
    assert!(error.contains("cloudEvents_source is required"), "{error}");
    assert!(error.contains("cloudEvents_list"), "{error}");
    let avro = BasicProperties::default().with_content_type("application/cloudevents+avro".into());
    let error = decode(&avro, b"", "T.v1").unwrap_err().to_string();
    assert!(error.contains("not supported"), "{error}");
}

/// Text the CloudEvents `String` type allows, some of it outside ASCII.
fn ce_text() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{1,60}", "[a-z %\"\\\\\u{e9}\u{20ac}\u{1f600}]{1,30}",]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// What the binding's percent-encoding writes decodes to the same text, and is always a
    /// valid header value.
    #[test]
    fn header_values_round_trip(text in ce_text()) {
        let encoded = encode_header(&text);
        prop_assert!(HeaderValue::from_str(&encoded).is_ok());
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_graphic()));
        prop_assert_eq!(super::http::needs_encoding(&text), encoded != text);
        prop_assert_eq!(decode_header(encoded.as_bytes()), Some(text));
    }

    /// Any header bytes decode or are refused, without a panic.
    #[test]
    fn any_header_bytes_decode_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = decode_header(&bytes);
    }

    /// A CloudEvent taken in binary mode and delivered in either mode keeps its id, source,
    /// subject and extensions.
    #[test]
    fn attributes_survive_publish_and_delivery(
        id in ce_text(),
        subject in proptest::option::of(ce_text()),
        extension in ce_text(),
    ) {
        let mut sent = vec![
            ("ce-specversion".to_owned(), "1.0".to_owned()),
            ("ce-id".into(), encode_header(&id)),
            ("ce-source".into(), "/s".into()),
            ("ce-type".into(), "T".into()),
            ("ce-ext".into(), encode_header(&extension)),
            ("content-type".into(), "application/json".into()),
        ];
        if let Some(subject) = &subject {
            sent.push(("ce-subject".into(), encode_header(subject)));
        }
        let pairs: Vec<(&str, &str)> = sent.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let event = from_binary(&headers(&pairs), b"{}").unwrap();
        let envelope = envelope_of(event.clone());
        let trace = TraceContext::default();
        let mut delivered = HeaderMap::new();
        for (name, value) in binary_headers(&envelope, &trace) {
            delivered.insert(name, value);
        }
        for back in [
            from_binary(&delivered, b"{}").unwrap(),
            from_structured(&structured_body(&envelope, &trace)).unwrap(),
        ] {
            prop_assert_eq!(back.event_id, event.event_id);
            let given = back.attributes.id.clone().unwrap_or_else(|| back.event_id.to_string());
            prop_assert_eq!(given, id.clone());
            prop_assert_eq!(&back.attributes.subject, &subject);
            prop_assert_eq!(back.attributes.extensions.get("ext"), Some(&ExtensionValue::Text(extension.clone())));
        }
    }

    /// Any JSON body as a structured event is taken or refused without a panic.
    #[test]
    fn any_structured_body_is_taken_or_refused(value in crate::payload::tests::value()) {
        let body = serde_json::to_vec(&value).unwrap();
        let _ = from_structured(&body);
    }
}
