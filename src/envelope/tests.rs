use lapin::types::AMQPValue;
use proptest::prelude::*;

use super::*;

fn sample() -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        event_type: "OrderPlaced".into(),
        schema_version: "2.1".parse().unwrap(),
        correlation_id: "flow-1".into(),
        causation_id: Some("parent".into()),
        occurred_at: now_rfc3339(),
        source: "orders".into(),
        payload: RawValue::from_string(r#"{"total_cents": 1250}"#.into()).unwrap(),
        cloudevents: None,
    }
}

#[test]
fn routing_key_carries_the_major_version() {
    assert_eq!(sample().routing_key(), "OrderPlaced.v2");
}

#[test]
fn body_keeps_the_payload_bytes_and_round_trips() {
    let envelope = sample();
    let body = envelope.to_json();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(
        text.contains(r#""payload":{"total_cents": 1250}"#),
        "{text}"
    );
    let back: Envelope = serde_json::from_slice(&body).unwrap();
    assert_eq!(back.event_id, envelope.event_id);
    assert_eq!(back.schema_version, envelope.schema_version);
    assert_eq!(back.causation_id.as_deref(), Some("parent"));
}

#[test]
fn properties_mirror_the_envelope() {
    let envelope = sample();
    let trace = TraceContext {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    };
    let props = envelope.properties(&trace).unwrap();
    let id = envelope.event_id.to_string();
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some(id.as_str())
    );
    assert_eq!(
        props.kind().as_ref().map(|s| s.as_str()),
        Some("OrderPlaced")
    );
    assert_eq!(props.delivery_mode(), &Some(2));
    let headers = props.headers().as_ref().unwrap().inner();
    assert!(headers.contains_key("traceparent"));
    assert!(!headers.contains_key("tracestate"));
    assert_eq!(
        headers.get("schema_version"),
        Some(&AMQPValue::LongString("2.1".into()))
    );
}

#[test]
fn versions_must_be_major_dot_minor() {
    assert_eq!(
        "10.3".parse::<SchemaVersion>().unwrap(),
        SchemaVersion {
            major: 10,
            minor: 3
        }
    );
    for bad in [
        "2",
        "2.",
        ".1",
        "a.b",
        "1.0.0",
        "-1.0",
        "+1.0",
        "9999999999.0",
    ] {
        assert!(bad.parse::<SchemaVersion>().is_err(), "{bad}");
    }
}

#[test]
fn event_types_follow_the_contract() {
    for good in ["OrderPlaced", "a", "orders.v2-Placed_x"] {
        assert!(is_valid_event_type(good), "{good}");
    }
    let too_long = format!("A{}", "b".repeat(128));
    for bad in [
        "",
        "1Order",
        "Order Placed",
        "Order/Placed",
        too_long.as_str(),
    ] {
        assert!(!is_valid_event_type(bad), "{bad}");
    }
}

#[test]
fn traceparent_must_follow_the_w3c_format() {
    assert!(is_valid_traceparent(
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ));
    for bad in [
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-",
    ] {
        assert!(!is_valid_traceparent(bad.as_bytes()), "{bad}");
    }
}

#[test]
fn a_tracestate_travels_only_with_a_valid_traceparent_and_within_512_bytes() {
    let parent = Some(&b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..]);
    let kept = TraceContext::from_untrusted(parent, Some(b"vendor=1"));
    assert_eq!(kept.tracestate.as_deref(), Some("vendor=1"));
    let long = vec![b'a'; TraceContext::MAX_TRACESTATE + 1];
    for dropped in [&long[..], b"", b"a\tb", b"caf\xc3\xa9"] {
        let trace = TraceContext::from_untrusted(parent, Some(dropped));
        assert!(trace.traceparent.is_some());
        assert_eq!(trace.tracestate, None, "{dropped:?}");
    }
    let orphan = TraceContext::from_untrusted(Some(b"junk"), Some(b"vendor=1"));
    assert_eq!(orphan, TraceContext::default());
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex(&format!("[ -~]{{0,{max}}}")).unwrap(),
        prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter),
    ]
}

/// Envelopes as the publish path makes them, and beyond: any text in the free fields.
fn envelope() -> impl Strategy<Value = Envelope> {
    let version = (0u32..1_000_000_000, 0u32..1_000_000_000)
        .prop_map(|(major, minor)| SchemaVersion { major, minor });
    (
        any::<u128>(),
        "[A-Za-z][A-Za-z0-9_.-]{0,127}",
        version,
        text(300),
        proptest::option::of(text(300)),
        text(40),
        text(300),
        crate::payload::tests::value(),
    )
        .prop_map(
            |(
                id,
                event_type,
                schema_version,
                correlation_id,
                causation_id,
                occurred_at,
                source,
                payload,
            )| {
                Envelope {
                    event_id: Uuid::from_u128(id),
                    event_type,
                    schema_version,
                    correlation_id,
                    causation_id,
                    occurred_at,
                    source,
                    payload: serde_json::value::to_raw_value(&payload).unwrap(),
                    cloudevents: None,
                }
            },
        )
}

fn same(a: &Envelope, b: &Envelope) -> bool {
    a.identity() == b.identity() && a.source == b.source && a.payload.get() == b.payload.get()
}

/// A valid traceparent.
fn traceparent() -> impl Strategy<Value = String> {
    (
        "[0-9a-e][0-9a-f]",
        "[0-9a-f]{32}",
        "[0-9a-f]{16}",
        "[0-9a-f]{2}",
    )
        .prop_filter("ids not all zeros", |(_, trace, parent, _)| {
            trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0')
        })
        .prop_map(|(version, trace, parent, flags)| format!("{version}-{trace}-{parent}-{flags}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn an_envelope_round_trips_through_its_body(envelope in envelope()) {
        let body = envelope.to_json();
        let back = Envelope::decode(&body).unwrap();
        prop_assert!(same(&envelope, &back));
        prop_assert_eq!(back.to_json(), body);
    }

    #[test]
    fn any_body_decodes_or_fails_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn a_damaged_body_decodes_or_fails_and_what_decodes_round_trips(
        envelope in envelope(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6),
    ) {
        let mut body = envelope.to_json();
        for (at, byte, kind) in edits {
            let at = at.index(body.len());
            match kind {
                0 => body[at] = byte,
                1 => body.insert(at, byte),
                _ => { body.remove(at); }
            }
        }
        if let Ok(decoded) = Envelope::decode(&body) {
            let again = Envelope::decode(&decoded.to_json()).unwrap();
            prop_assert!(same(&decoded, &again));
        }
    }

    #[test]
    fn properties_never_panic_and_refuse_only_what_amqp_cannot_carry(envelope in envelope()) {
        let fits = [
            envelope.correlation_id.as_str(),
            envelope.event_type.as_str(),
            envelope.source.as_str(),
        ]
        .iter()
        .all(|value| value.len() <= 255);
        let properties = envelope.properties(&TraceContext::default());
        prop_assert_eq!(properties.is_ok(), fits);
        if let Ok(properties) = properties {
            let id = envelope.event_id.to_string();
            prop_assert_eq!(properties.message_id().as_ref().map(|s| s.as_str()), Some(id.as_str()));
            prop_assert_eq!(
                properties.correlation_id().as_ref().map(|s| s.as_str()),
                Some(envelope.correlation_id.as_str())
            );
        }
    }

    #[test]
    fn any_trace_headers_give_a_valid_context_or_none(
        traceparent in proptest::option::of(prop_oneof![
            traceparent().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..70),
        ]),
        tracestate in proptest::option::of(prop_oneof![
            "[ -~]{0,600}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..600),
        ]),
    ) {
        let trace = TraceContext::from_untrusted(traceparent.as_deref(), tracestate.as_deref());
        let valid = traceparent.as_deref().is_some_and(is_valid_traceparent);
        prop_assert_eq!(trace.traceparent.is_some(), valid);
        if let Some(kept) = &trace.traceparent {
            prop_assert_eq!(Some(kept.as_bytes()), traceparent.as_deref());
        }
        if let Some(state) = &trace.tracestate {
            prop_assert!(valid);
            prop_assert!(!state.is_empty() && state.len() <= TraceContext::MAX_TRACESTATE);
            prop_assert!(state.bytes().all(|b| (0x20..0x7f).contains(&b)));
            prop_assert_eq!(Some(state.as_bytes()), tracestate.as_deref());
        }
    }

    #[test]
    fn a_valid_traceparent_is_always_kept(traceparent in traceparent(), tracestate in "[ -~]{1,512}") {
        let trace = TraceContext::from_untrusted(Some(traceparent.as_bytes()), Some(tracestate.as_bytes()));
        prop_assert_eq!(trace.traceparent, Some(traceparent));
        prop_assert_eq!(trace.tracestate, Some(tracestate));
    }

    #[test]
    fn schema_versions_parse_only_major_dot_minor_and_print_back(text in prop_oneof![
        "[0-9]{1,11}\\.[0-9]{1,11}",
        "[0-9.+ -]{0,12}",
        any::<String>(),
    ]) {
        if let Ok(version) = text.parse::<SchemaVersion>() {
            let (major, minor) = text.split_once('.').unwrap();
            prop_assert!(major.len() <= 9 && minor.len() <= 9);
            prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'.'));
            prop_assert_eq!(version.to_string().parse::<SchemaVersion>().unwrap(), version);
        }
    }

    #[test]
    fn every_version_of_nine_digits_or_fewer_round_trips(major in 0u32..1_000_000_000, minor in 0u32..1_000_000_000) {
        let version: SchemaVersion = format!("{major}.{minor}").parse().unwrap();
        prop_assert_eq!(version, SchemaVersion { major, minor });
        let json = serde_json::to_string(&version).unwrap();
        prop_assert_eq!(serde_json::from_str::<SchemaVersion>(&json).unwrap(), version);
        prop_assert_eq!(version.text(), version.to_string());
    }
}
