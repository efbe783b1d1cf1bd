//! The Prometheus metrics of `/metrics`. Labels are bounded: outcomes and connection kinds
//! are fixed words, subscriptions are configured names, and event types are capped (an app
//! could make up any number of them).
//!
//! Besides the sidecar's own families: `causeway_build_info`, and the standard `process_*`
//! metrics of Prometheus' client libraries, read from `/proc` at each scrape (on Linux).

mod process;

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, OnceLock, RwLock},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

/// Distinct event types with a label of their own; the rest count as `other`.
const MAX_EVENT_TYPES: usize = 200;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    event_type: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    subscription: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    subscription: String,
    state: &'static str,
}

/// The states a subscription's consumer can be in, as `causeway_subscription_state` names them.
pub const SUBSCRIPTION_STATES: [&str; 3] = ["starting", "consuming", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    connection: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a delivery attempt ended, for `causeway_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The app accepted the event.
    Success,
    /// It failed and waits for another attempt.
    Retry,
    /// It went to the dead-letter queue.
    DeadLettered,
    /// The app already had it; skipped.
    Duplicate,
}

impl DeliveryOutcome {
    fn label(self) -> &'static str {
        match self {
            DeliveryOutcome::Success => "success",
            DeliveryOutcome::Retry => "retry",
            DeliveryOutcome::DeadLettered => "dead_lettered",
            DeliveryOutcome::Duplicate => "duplicate",
        }
    }
}

/// Which broker connection a gauge is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// The publishing connection.
    Publish,
    /// The consuming connection.
    Consume,
}

/// Every metric of the sidecar.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    publishes: Family<PublishLabels, Counter>,
    publish_seconds: Histograms<OutcomeLabels>,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_seconds: Histograms<SubscriptionLabels>,
    end_to_end_seconds: Histograms<SubscriptionLabels>,
    queue_depth: Family<SubscriptionLabels, Gauge>,
    dead_letter_depth: Family<SubscriptionLabels, Gauge>,
    subscription_state: Family<StateLabels, Gauge>,
    in_flight: Family<KindLabels, Gauge>,
    broker_connected: Family<ConnectionLabels, Gauge>,
    unrouted: Gauge,
    store_errors: Family<StoreLabels, Counter>,
    store_up: Family<StoreLabels, Gauge>,
    flow_receipts: Family<OutcomeLabels, Counter>,
    event_types: Mutex<HashSet<String>>,
    handles: Handles,
}

/// The outcomes of a publish, as `causeway_publishes_total` labels them; a publish's
/// handles are kept in this order.
const PUBLISH_OUTCOMES: [&str; 5] = ["accepted", "rejected", "unavailable", "timeout", "error"];

/// Handles to the series every publish touches, taken from their families once: a
/// family's lookup hashes the labels and takes its lock on every use.
#[derive(Debug, Default)]
struct Handles {
    /// `causeway_publishes_total` by event type (within the cap), by outcome.
    publishes: RwLock<HashMap<String, [OnceLock<Counter>; PUBLISH_OUTCOMES.len()]>>,
    /// `causeway_publish_duration_seconds` by outcome.
    publish_seconds: [OnceLock<Histogram>; PUBLISH_OUTCOMES.len()],
    /// `causeway_in_flight` for publishes and for deliveries.
    in_flight_publish: OnceLock<Gauge>,
    in_flight_delivery: OnceLock<Gauge>,
}

/// Where `outcome` is in [`PUBLISH_OUTCOMES`].
fn outcome_index(outcome: &str) -> Option<usize> {
    PUBLISH_OUTCOMES.iter().position(|known| *known == outcome)
}

/// Bucket bounds, written out so that each `le` label is the decimal number as written:
/// multiplying floats (`exponential_buckets`) prints bounds such as `0.009000000000000001`.
/// 0.5 ms, doubling, to ~16 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096, 8.192, 16.384,
];

/// 1 ms, tripling, to ~4 h: events can wait in queues and retries for a long time.
const END_TO_END_BUCKETS: [f64; 16] = [
    0.001, 0.003, 0.009, 0.027, 0.081, 0.243, 0.729, 2.187, 6.561, 19.683, 59.049, 177.147,
    531.441, 1594.323, 4782.969, 14348.907,
];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn end_to_end() -> Histogram {
    Histogram::new(END_TO_END_BUCKETS)
}

/// The labels of `causeway_build_info`.
fn build_info() -> Info<Vec<(&'static str, &'static str)>> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    Info::new(vec![
        ("version", env!("CARGO_PKG_VERSION")),
        ("profile", profile),
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let publishes = Family::<PublishLabels, Counter>::default();
        let publish_seconds: Histograms<OutcomeLabels> = Family::new_with_constructor(latency);
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let delivery_seconds: Histograms<SubscriptionLabels> =
            Family::new_with_constructor(latency);
        let end_to_end_seconds: Histograms<SubscriptionLabels> =
            Family::new_with_constructor(end_to_end);
        let queue_depth = Family::<SubscriptionLabels, Gauge>::default();
        let dead_letter_depth = Family::<SubscriptionLabels, Gauge>::default();
        let subscription_state = Family::<StateLabels, Gauge>::default();
        let in_flight = Family::<KindLabels, Gauge>::default();
        let broker_connected = Family::<ConnectionLabels, Gauge>::default();
        let unrouted = Gauge::default();
        let store_errors = Family::<StoreLabels, Counter>::default();
        let store_up = Family::<StoreLabels, Gauge>::default();
        let flow_receipts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "causeway_publishes",
            "Publish requests by event type and outcome (accepted, rejected, unavailable, timeout, error)",
            publishes.clone(),
        );
        registry.register(
            "causeway_publish_duration_seconds",
            "Time from a publish request to its answer, by outcome",
            publish_seconds.clone(),
        );
        registry.register(
            "causeway_deliveries",
            "Delivery attempts by subscription and outcome (success, retry, dead_lettered, duplicate)",
            deliveries.clone(),
        );
        registry.register(
            "causeway_delivery_duration_seconds",
            "Time the app took to answer a delivery, by subscription",
            delivery_seconds.clone(),
        );
        registry.register(
            "causeway_end_to_end_seconds",
            "Time from an event's occurred_at to its acknowledged delivery, by subscription",
            end_to_end_seconds.clone(),
        );
        registry.register(
            "causeway_queue_depth",
            "Events waiting in a subscription's queue (consumer lag), read from the broker",
            queue_depth.clone(),
        );
        registry.register(
            "causeway_dead_letter_depth",
            "Events in a subscription's dead-letter queue, read from the broker",
            dead_letter_depth.clone(),
        );
        registry.register(
            "causeway_subscription_state",
            "1 for the state each subscription's consumer is in (starting, consuming, failed), 0 for the others",
            subscription_state.clone(),
        );
        registry.register(
            "causeway_in_flight",
            "Publishes under way (waiting for an in-flight slot or a confirm), and deliveries under way",
            in_flight.clone(),
        );
        registry.register(
            "causeway_broker_connected",
            "1 when the connection (publish or consume) to the broker is up",
            broker_connected.clone(),
        );
        registry.register(
            "causeway_unrouted_events",
            "Events waiting in the unrouted queue: published with no subscription bound",
            unrouted.clone(),
        );
        registry.register(
            "causeway_store_errors",
            "Store operations that failed, by store (embedded, redis)",
            store_errors.clone(),
        );
        registry.register(
            "causeway_store_up",
            "1 while the store (embedded, redis) works, 0 while it fails",
            store_up.clone(),
        );
        registry.register(
            "causeway_flow_receipts",
            "Flow receipts written, failed (one per failed batch write; the batch is tried again) and dropped (the queue was full)",
            flow_receipts.clone(),
        );
        registry.register(
            "causeway_build",
            "The sidecar's version, and whether it is a release or a debug build",
            build_info(),
        );
        registry.register_collector(Box::new(process::ProcessCollector));
        // Both connections start down, so that a sidecar that never connects is visible.
        for connection in ["publish", "consume"] {
            broker_connected
                .get_or_create(&ConnectionLabels { connection })
                .set(0);
        }
        Metrics {
            registry,
            publishes,
            publish_seconds,
            deliveries,
            delivery_seconds,
            end_to_end_seconds,
            queue_depth,
            dead_letter_depth,
            subscription_state,
            in_flight,
            broker_connected,
            unrouted,
            store_errors,
            store_up,
            flow_receipts,
            event_types: Mutex::default(),
            handles: Handles::default(),
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Counts a publish and how long it took.
    pub fn publish(&self, event_type: &str, outcome: &'static str, took: Duration) {
        let Some(index) = outcome_index(outcome) else {
            self.publish_uncached(event_type, outcome, took);
            return;
        };
        let cached = crate::sync::read(&self.handles.publishes)
            .get(event_type)
            .and_then(|counters| counters[index].get().cloned());
        let counter = match cached {
            Some(counter) => counter,
            None => self.publish_counter(event_type, index),
        };
        counter.inc();
        self.handles.publish_seconds[index]
            .get_or_init(|| {
                self.publish_seconds
                    .get_or_create(&OutcomeLabels { outcome })
                    .clone()
            })
            .observe(took.as_secs_f64());
    }

    /// The counter of a publish outcome, from its family, kept for next time when the event
    /// type has a label of its own (the others share `other`, and are not kept).
    fn publish_counter(&self, event_type: &str, index: usize) -> Counter {
        let label = self.event_type_label(event_type);
        let counter = self
            .publishes
            .get_or_create(&PublishLabels {
                event_type: label.clone(),
                outcome: PUBLISH_OUTCOMES[index],
            })
            .clone();
        if label == event_type {
            let mut handles = crate::sync::write(&self.handles.publishes);
            let counters = handles.entry(label).or_default();
            let _ = counters[index].set(counter.clone());
        }
        counter
    }

    /// [`Metrics::publish`] for an outcome outside [`PUBLISH_OUTCOMES`].
    fn publish_uncached(&self, event_type: &str, outcome: &'static str, took: Duration) {
        let event_type = self.event_type_label(event_type);
        self.publishes
            .get_or_create(&PublishLabels {
                event_type,
                outcome,
            })
            .inc();
        self.publish_seconds
            .get_or_create(&OutcomeLabels { outcome })
            .observe(took.as_secs_f64());
    }

    /// Counts a delivery attempt's outcome.
    pub fn delivery(&self, subscription: &str, outcome: DeliveryOutcome) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                subscription: subscription.to_owned(),
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Records how long the app took to answer.
    pub fn delivery_took(&self, subscription: &str, took: Duration) {
        self.delivery_seconds
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records the time from `occurred_at` to the acknowledged delivery.
    pub fn end_to_end(&self, subscription: &str, took: Duration) {
        self.end_to_end_seconds
            .get_or_create(&SubscriptionLabels {
                subscription: subscription.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Sets the depths read from the broker.
    pub fn depths(&self, subscription: &str, queue: u32, dead_letters: u32) {
        let labels = SubscriptionLabels {
            subscription: subscription.to_owned(),
        };
        self.queue_depth
            .get_or_create(&labels)
            .set(i64::from(queue));
        self.dead_letter_depth
            .get_or_create(&labels)
            .set(i64::from(dead_letters));
    }

    /// Drops the gauges of a subscription that is gone.
    pub fn forget_subscription(&self, subscription: &str) {
        let labels = SubscriptionLabels {
            subscription: subscription.to_owned(),
        };
        self.queue_depth.remove(&labels);
        self.dead_letter_depth.remove(&labels);
    }

    /// Sets the state of a subscription's consumer: 1 for `state`, 0 for the others.
    pub fn subscription_state(&self, subscription: &str, state: &'static str) {
        for name in SUBSCRIPTION_STATES {
            self.subscription_state
                .get_or_create(&StateLabels {
                    subscription: subscription.to_owned(),
                    state: name,
                })
                .set(i64::from(name == state));
        }
    }

    /// Drops the state gauges of a subscription that is no longer wanted.
    pub fn forget_subscription_state(&self, subscription: &str) {
        for state in SUBSCRIPTION_STATES {
            self.subscription_state.remove(&StateLabels {
                subscription: subscription.to_owned(),
                state,
            });
        }
    }

    /// A guard counting one publish (or delivery) in flight while it lives.
    pub fn in_flight(&self, kind: &'static str) -> InFlight {
        let family = || self.in_flight.get_or_create(&KindLabels { kind }).clone();
        let gauge = match kind {
            "publish" => self.handles.in_flight_publish.get_or_init(family).clone(),
            "delivery" => self.handles.in_flight_delivery.get_or_init(family).clone(),
            _ => family(),
        };
        gauge.inc();
        InFlight(gauge)
    }

    /// Sets whether a broker connection is up.
    pub fn connected(&self, connection: Connection, up: bool) {
        let connection = match connection {
            Connection::Publish => "publish",
            Connection::Consume => "consume",
        };
        self.broker_connected
            .get_or_create(&ConnectionLabels { connection })
            .set(i64::from(up));
    }

    /// Sets the unrouted queue's depth.
    pub fn unrouted(&self, depth: u64) {
        self.unrouted.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts a store operation that failed; `store` is `embedded` or `redis`.
    pub fn store_error(&self, store: &'static str) {
        self.store_errors
            .get_or_create(&StoreLabels { store })
            .inc();
    }

    /// Sets whether a store (`embedded` or `redis`) works; its error counter shows from then
    /// on, at 0 until the first error.
    pub fn store_up(&self, store: &'static str, up: bool) {
        let _ = self.store_errors.get_or_create(&StoreLabels { store });
        self.store_up
            .get_or_create(&StoreLabels { store })
            .set(i64::from(up));
    }

    /// Counts flow receipts by outcome: `written`, `failed` (batch writes) or `dropped`.
    pub fn flow_receipts(&self, outcome: &'static str, count: u64) {
        self.flow_receipts
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(count);
    }

    fn event_type_label(&self, event_type: &str) -> String {
        let mut seen = crate::sync::lock(&self.event_types);
        if seen.contains(event_type) {
            return event_type.to_owned();
        }
        if seen.len() < MAX_EVENT_TYPES {
            seen.insert(event_type.to_owned());
            return event_type.to_owned();
        }
        "other".to_owned()
    }
}

/// Counts one unit of work in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_exposed_with_their_labels() {
        let metrics = Metrics::default();
        metrics.publish("OrderPlaced", "accepted", Duration::from_millis(2));
        metrics.delivery("ship", DeliveryOutcome::Duplicate);
        metrics.depths("ship", 3, 1);
        metrics.connected(Connection::Publish, true);
        let guard = metrics.in_flight("delivery");
        let text = metrics.encode();
        drop(guard);
        for line in [
            "causeway_publishes_total{event_type=\"OrderPlaced\",outcome=\"accepted\"} 1",
            "causeway_deliveries_total{subscription=\"ship\",outcome=\"duplicate\"} 1",
            "causeway_dead_letter_depth{subscription=\"ship\"} 1",
            "causeway_queue_depth{subscription=\"ship\"} 3",
            "causeway_broker_connected{connection=\"publish\"} 1",
            "causeway_in_flight{kind=\"delivery\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            metrics
                .encode()
                .contains("causeway_in_flight{kind=\"delivery\"} 0")
        );
    }

    #[test]
    fn bucket_bounds_print_as_written() {
        let metrics = Metrics::default();
        metrics.end_to_end("ship", Duration::from_millis(5));
        metrics.delivery_took("ship", Duration::from_millis(5));
        let text = metrics.encode();
        assert!(
            text.contains(
                "causeway_end_to_end_seconds_bucket{le=\"0.009\",subscription=\"ship\"} 1"
            ) || text.contains(
                "causeway_end_to_end_seconds_bucket{subscription=\"ship\",le=\"0.009\"} 1"
            ),
            "{text}"
        );
        let bounds: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("_bucket{"))
            .filter_map(|line| line.split("le=\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .filter(|bound| *bound != "+Inf")
            .collect();
        assert_eq!(bounds.len(), 32, "{text}");
        for bound in bounds {
            let decimals = bound.split('.').nth(1).unwrap_or_default();
            assert!(decimals.len() <= 4, "le=\"{bound}\" in\n{text}");
        }
    }

    #[test]
    fn build_info_process_metrics_and_store_errors_are_exposed() {
        let metrics = Metrics::default();
        metrics.store_up("embedded", true);
        let text = metrics.encode();
        assert!(
            text.contains("causeway_store_errors_total{store=\"embedded\"} 0"),
            "{text}"
        );
        let version = env!("CARGO_PKG_VERSION");
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        assert!(
            text.contains(&format!(
                "causeway_build_info{{version=\"{version}\",profile=\"{profile}\"}} 1"
            )),
            "{text}"
        );
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|line| line.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing from\n{text}"));
            line[name.len() + 1..].parse().unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );
    }

    #[test]
    fn event_type_labels_are_capped() {
        let metrics = Metrics::default();
        for n in 0..MAX_EVENT_TYPES + 5 {
            metrics.publish(&format!("Type{n}"), "accepted", Duration::ZERO);
        }
        let text = metrics.encode();
        assert!(
            text.contains("event_type=\"other\",outcome=\"accepted\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn kept_handles_count_in_their_families() {
        let metrics = Metrics::default();
        for n in 0..MAX_EVENT_TYPES + 2 {
            metrics.publish(&format!("Type{n}"), "accepted", Duration::ZERO);
        }
        // Again, now that the handles are kept; the types past the cap share `other`.
        for _ in 0..3 {
            metrics.publish("Type0", "accepted", Duration::from_millis(1));
            metrics.publish("Type0", "timeout", Duration::from_millis(1));
            metrics.publish(
                &format!("Type{MAX_EVENT_TYPES}"),
                "accepted",
                Duration::ZERO,
            );
        }
        metrics.publish("Type0", "throttled", Duration::ZERO);
        let in_flight = [metrics.in_flight("publish"), metrics.in_flight("publish")];
        let text = metrics.encode();
        for line in [
            "causeway_publishes_total{event_type=\"Type0\",outcome=\"accepted\"} 4",
            "causeway_publishes_total{event_type=\"Type0\",outcome=\"timeout\"} 3",
            "causeway_publishes_total{event_type=\"Type0\",outcome=\"throttled\"} 1",
            "causeway_publishes_total{event_type=\"other\",outcome=\"accepted\"} 5",
            "causeway_publish_duration_seconds_count{outcome=\"timeout\"} 3",
            "causeway_in_flight{kind=\"publish\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        drop(in_flight);
        assert!(
            metrics
                .encode()
                .contains("causeway_in_flight{kind=\"publish\"} 0")
        );
    }
}
