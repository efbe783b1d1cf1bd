//! Subscriptions: which events a service wants, where the app takes them, and how hard to
//! try. Checked here, once, whether they come from the config file or the API.

mod registry;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use registry::{Registry, RegistryError};

use crate::envelope::{is_uri_text, is_valid_event_type, routing_key};

/// One subscription, as the API and the config file describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The event type to receive.
    pub event_type: String,
    /// The major versions accepted; all of them when absent. `null` is refused: it is more
    /// often a list left unset than a choice of every version.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub versions: Option<Vec<u32>>,
    /// The app's path for deliveries, such as `/events/order-placed`.
    pub route: String,
    /// POST attempts before an event is dead-lettered.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Upper bound of the first retry delay.
    #[serde(default = "defaults::backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Largest retry delay.
    #[serde(default = "defaults::backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Deliveries in flight at once for this subscription in this sidecar.
    #[serde(default = "defaults::concurrency")]
    pub concurrency: u16,
    /// One event at a time across all replicas, in queue order.
    #[serde(default)]
    pub ordered: bool,
    /// How long one POST to the app may take.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Check each delivery against the local schema registry; a mismatch is dead-lettered
    /// with reason `schema`.
    #[serde(default)]
    pub validate: bool,
    /// What the app receives: causeway's envelope (the default), or a CloudEvent in HTTP
    /// binary or structured mode (see docs/cloudevents.md).
    #[serde(default)]
    pub format: DeliveryFormat,
}

/// How events reach the app.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryFormat {
    /// The envelope as the body (`application/json`).
    #[default]
    Causeway,
    /// The payload as the body, the attributes in `ce-*` headers.
    CloudeventsBinary,
    /// One `application/cloudevents+json` object: the attributes and the payload as `data`.
    CloudeventsStructured,
}

/// An optional field that, when present, must hold a value: `null` is an error, not "absent"
/// (use with `#[serde(default, deserialize_with = "present")]`).
pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

mod defaults {
    pub(super) fn max_attempts() -> u32 {
        5
    }
    pub(super) fn backoff_initial_ms() -> u64 {
        1_000
    }
    pub(super) fn backoff_max_ms() -> u64 {
        300_000
    }
    pub(super) fn concurrency() -> u16 {
        16
    }
    pub(super) fn timeout_ms() -> u64 {
        10_000
    }
}

/// A field of a subscription that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    /// The field's name.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

/// A checked subscription with its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The name: the queue is `{service}.{name}`.
    pub name: String,
    /// What it asks for.
    pub spec: SubscriptionSpec,
}

/// Where a subscription was defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file; read-only over the API.
    Config,
    /// `PUT /v1/subscriptions/{name}`; kept in the data directory.
    Api,
}

/// Whether `route` is a path the app can be called on exactly as written: `/`, then at
/// most 1024 characters of a URI's path and query (RFC 3986: letters, digits,
/// `-._~!$&'()*+,;=:@/?` and `%XX` escapes). No fragment, no space, nothing to escape.
pub fn is_valid_route(route: &str) -> bool {
    route.starts_with('/')
        && route.len() <= 1024
        && is_uri_text(route.as_bytes(), b"-._~!$&'()*+,;=:@/?")
}

/// Whether `name` can name a subscription: 1-100 of `[A-Za-z0-9_-]`, starting with a letter
/// or digit. Dots are kept out so that `{service}.{name}` parses back unambiguously.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Subscription {
    /// Checks every field and returns all the problems found.
    pub fn new(name: &str, spec: SubscriptionSpec) -> Result<Self, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &'static str, message: &str| {
            if !ok {
                problems.push(FieldProblem {
                    field,
                    message: message.to_owned(),
                });
            }
        };
        check(
            is_valid_name(name),
            "name",
            "must be 1-100 letters, digits, '-' or '_', starting with a letter or digit",
        );
        check(
            is_valid_event_type(&spec.event_type),
            "event_type",
            "must match ^[A-Za-z][A-Za-z0-9_.-]{0,127}$",
        );
        if let Some(versions) = &spec.versions {
            check(
                !versions.is_empty(),
                "versions",
                "must list at least one major version, or be left out for all",
            );
            check(
                versions.len() <= 32,
                "versions",
                "at most 32 major versions",
            );
        }
        check(
            is_valid_route(&spec.route),
            "route",
            "must be a path starting with '/', at most 1024 characters, of URI path and query \
             characters only (letters, digits, -._~!$&'()*+,;=:@/? and %XX escapes)",
        );
        check(
            (1..=100).contains(&spec.max_attempts),
            "max_attempts",
            "must be from 1 to 100",
        );
        check(
            (1..=3_600_000).contains(&spec.backoff_initial_ms),
            "backoff_initial_ms",
            "must be from 1 to 3600000",
        );
        check(
            (spec.backoff_initial_ms..=86_400_000).contains(&spec.backoff_max_ms),
            "backoff_max_ms",
            "must be at least backoff_initial_ms and at most 86400000 (a day)",
        );
        check(
            (1..=1000).contains(&spec.concurrency),
            "concurrency",
            "must be from 1 to 1000",
        );
        check(
            (1..=3_600_000).contains(&spec.timeout_ms),
            "timeout_ms",
            "must be from 1 to 3600000",
        );
        if problems.is_empty() {
            Ok(Subscription {
                name: name.to_owned(),
                spec,
            })
        } else {
            Err(problems)
        }
    }

    /// The routing keys to bind: one per accepted major, or every major.
    pub fn binding_keys(&self) -> Vec<String> {
        match &self.spec.versions {
            Some(majors) => {
                let mut majors = majors.clone();
                majors.sort_unstable();
                majors.dedup();
                majors
                    .into_iter()
                    .map(|major| routing_key(&self.spec.event_type, major))
                    .collect()
            }
            None => vec![format!("{}.*", self.spec.event_type)],
        }
    }

    /// Deliveries in flight at once: one when ordered.
    pub fn concurrency(&self) -> u16 {
        if self.spec.ordered {
            1
        } else {
            self.spec.concurrency
        }
    }

    /// How long one POST may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.spec.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> SubscriptionSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_fill_in_what_is_left_out() {
        let s = spec(r#"{"event_type":"OrderPlaced","route":"/events"}"#);
        assert_eq!(s.max_attempts, 5);
        assert_eq!(s.backoff_initial_ms, 1000);
        assert_eq!(s.backoff_max_ms, 300_000);
        assert_eq!(s.concurrency, 16);
        assert!(!s.ordered);
        assert_eq!(s.timeout_ms, 10_000);
        assert_eq!(s.format, DeliveryFormat::Causeway);
    }

    #[test]
    fn formats_are_named_and_unknown_ones_refused() {
        for (name, format) in [
            ("causeway", DeliveryFormat::Causeway),
            ("cloudevents-binary", DeliveryFormat::CloudeventsBinary),
            (
                "cloudevents-structured",
                DeliveryFormat::CloudeventsStructured,
            ),
        ] {
            let s = spec(&format!(
                r#"{{"event_type":"A","route":"/a","format":"{name}"}}"#
            ));
            assert_eq!(s.format, format);
            let json = serde_json::to_value(&s).unwrap();
            assert_eq!(json["format"], name);
        }
        let error = serde_json::from_str::<SubscriptionSpec>(
            r#"{"event_type":"A","route":"/a","format":"cloudevents"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("cloudevents-binary"), "{error}");
    }

    #[test]
    fn every_bad_field_is_named() {
        let s = spec(
            r#"{"event_type":"1x","route":"events","max_attempts":0,"backoff_initial_ms":10,
                "backoff_max_ms":5,"concurrency":0,"timeout_ms":0,"versions":[]}"#,
        );
        let fields: Vec<_> = Subscription::new("bad.name", s)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "name",
                "event_type",
                "versions",
                "route",
                "max_attempts",
                "backoff_max_ms",
                "concurrency",
                "timeout_ms"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = serde_json::from_str::<SubscriptionSpec>(
            r#"{"event_type":"A","route":"/a","retries":3}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("retries"), "{error}");
    }

    #[test]
    fn routes_are_uri_paths_exactly_as_written() {
        for good in [
            "/",
            "/events/order-placed",
            "/a?b=1&c=%2F",
            "/~x/@:!$&'()*+,;=.-_",
        ] {
            assert!(is_valid_route(good), "{good}");
        }
        let long = format!("/{}", "a".repeat(1024));
        for bad in [
            "",
            "events",
            "/a<b>",
            "/a b",
            "/a#b",
            "/a\\b",
            "/a%2",
            "/a%zz",
            "/{x}",
            "/a|b",
            "/a\"b",
            "/é",
            long.as_str(),
        ] {
            assert!(!is_valid_route(bad), "{bad}");
        }
    }

    #[test]
    fn null_versions_are_refused_and_absent_ones_mean_all() {
        let error = serde_json::from_str::<SubscriptionSpec>(
            r#"{"event_type":"A","route":"/a","versions":null}"#,
        )
        .unwrap_err();
        assert!(error.to_string().contains("null"), "{error}");
        let all = spec(r#"{"event_type":"A","route":"/a"}"#);
        assert_eq!(all.versions, None);
        let some = spec(r#"{"event_type":"A","route":"/a","versions":[2]}"#);
        assert_eq!(some.versions, Some(vec![2]));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// A route that passes is one the HTTP client sends exactly as written, under any
        /// app path prefix.
        #[test]
        fn a_valid_route_is_a_uri_path_as_written(route in proptest::prop_oneof![
            "/[ -~]{0,40}",
            "/(/|[a-z]|%[0-9A-Fa-f]{2}|%|[?=&#]){0,20}",
            "/[ -~\\t\\u{80}-\\u{10ffff}]{0,20}",
        ]) {
            if is_valid_route(&route) {
                for full in [route.clone(), format!("/prefix{route}")] {
                    let uri: axum::http::Uri = full.parse().unwrap();
                    let sent = uri.path_and_query().map(|p| p.as_str());
                    proptest::prop_assert_eq!(sent, Some(full.as_str()));
                }
            } else {
                proptest::prop_assert!(
                    route.bytes().any(|b| !b.is_ascii_graphic() || b"\"#<>[\\]^`{|}%".contains(&b)),
                    "{:?} refused", route
                );
            }
        }
    }

    /// RabbitMQ's topic matching: `*` is one word, `#` zero or more.
    fn topic_matches(pattern: &str, key: &str) -> bool {
        fn words(pattern: &[&str], key: &[&str]) -> bool {
            match (pattern.split_first(), key.split_first()) {
                (None, None) => true,
                (Some((&"#", rest)), _) => {
                    words(rest, key) || key.split_first().is_some_and(|(_, k)| words(pattern, k))
                }
                (Some((&"*", rest)), Some((_, k))) => words(rest, k),
                (Some((p, rest)), Some((w, k))) => p == w && words(rest, k),
                _ => false,
            }
        }
        let pattern: Vec<&str> = pattern.split('.').collect();
        let key: Vec<&str> = key.split('.').collect();
        words(&pattern, &key)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// A subscription's bindings take exactly its event type at its majors: no crafted
        /// event type (dots, dashes, names ending in `.v1`) reaches another type's queue.
        #[test]
        fn bindings_match_only_their_own_type_and_majors(
            own in "[A-Za-z][A-Za-z0-9_.-]{0,12}",
            other in proptest::prop_oneof![
                "[A-Za-z][A-Za-z0-9_.-]{0,12}",
                "[A-Za-z][a-z.]{0,4}(\\.v[0-9])?",
            ],
            versions in proptest::option::of(proptest::collection::vec(0u32..4, 1..3)),
            major in 0u32..4,
            same in proptest::bool::ANY,
        ) {
            let other = if same { own.clone() } else { other };
            let subscription = Subscription::new("s", SubscriptionSpec {
                versions: versions.clone(),
                ..spec(&format!(r#"{{"event_type":"{own}","route":"/a"}}"#))
            }).unwrap();
            let key = routing_key(&other, major);
            let matched = subscription.binding_keys().iter().any(|b| topic_matches(b, &key));
            let wanted = other == own && versions.as_ref().is_none_or(|v| v.contains(&major));
            proptest::prop_assert_eq!(matched, wanted, "{} at {:?}", key, subscription.binding_keys());
        }
    }

    #[test]
    fn bindings_follow_the_versions() {
        let all =
            Subscription::new("a", spec(r#"{"event_type":"OrderPlaced","route":"/a"}"#)).unwrap();
        assert_eq!(all.binding_keys(), ["OrderPlaced.*"]);
        let some = Subscription::new(
            "a",
            spec(r#"{"event_type":"OrderPlaced","route":"/a","versions":[2,1,2]}"#),
        )
        .unwrap();
        assert_eq!(some.binding_keys(), ["OrderPlaced.v1", "OrderPlaced.v2"]);
    }
}
