//! Dead-letter operations: list without losing or reordering, replay, purge.
//!
//! Each operation opens a short-lived connection of its own: they are rare, and this keeps
//! them apart from the consumers' prefetch and channel state. The operations on one
//! dead-letter queue take turns, within a sidecar and across every replica of the service,
//! so that a listing never misses messages another listing or a replay holds.

use std::{collections::HashSet, sync::Arc, time::Duration};

use lapin::{
    BasicProperties, Channel,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueuePurgeOptions,
    },
    types::ShortString,
};
use serde::Serialize;
use serde_json::Value;
use tokio::time::{Instant, timeout};

use super::{
    fate::copy_properties,
    topology::{Queues, lock_across_replicas},
};
use crate::{
    amqp::{int_header, text_header},
    broker::{
        DialError, Dialer, OwnedConnection, PublishError, existing_queue_depth, publish_confirmed,
    },
    envelope::Envelope,
    flow::{HopFacts, Kind, Receipt, Receipts},
    key_locks::KeyLocks,
    subscription::Subscription,
};

/// How long one dead-letter operation may take at the broker.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most messages one listing or replay reads.
const SCAN_LIMIT: u32 = 20_000;

/// A dead letter as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// The event id (the message id), when there is one.
    pub event_id: Option<String>,
    /// The event type.
    pub event_type: Option<String>,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// Why it was dead-lettered.
    pub reason: Option<String>,
    /// The app's last status code.
    pub last_status: Option<u64>,
    /// The last error, in words.
    pub last_error: Option<String>,
    /// POST attempts made.
    pub attempts: Option<u64>,
    /// When it was dead-lettered.
    pub dead_lettered_at: Option<String>,
    /// The envelope, when the body is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envelope: Option<Value>,
    /// The raw body as text, when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// Which dead letters a replay moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayFilter {
    /// Every one.
    All,
    /// Those whose event id is one of these.
    EventIds(HashSet<String>),
    /// Those of one flow: whose correlation id is this one.
    CorrelationId(String),
}

impl ReplayFilter {
    /// Whether the message with `properties` and `body` is to be replayed, and its event id.
    fn wants(&self, properties: &BasicProperties, body: &[u8]) -> (bool, Option<String>) {
        let event_id = event_id(properties, body);
        let wanted = match self {
            ReplayFilter::All => true,
            ReplayFilter::EventIds(ids) => event_id.as_ref().is_some_and(|id| ids.contains(id)),
            ReplayFilter::CorrelationId(wanted) => {
                correlation_id(properties, body).is_some_and(|id| id == *wanted)
            }
        };
        (wanted, event_id)
    }
}

/// What a replay did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Replayed {
    /// How many dead letters went back to the subscription's queue.
    pub replayed: usize,
    /// Requested event ids that are not in the dead-letter queue.
    pub not_found: Vec<String>,
}

/// A dead-letter operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// No broker address could be reached.
    #[error(transparent)]
    Unreachable(#[from] DialError),
    /// Moving a message back failed; it stays in the dead-letter queue.
    #[error("replay publish: {0}")]
    Publish(#[from] PublishError),
    /// The operation took too long.
    #[error("the broker did not answer in time")]
    Timeout,
}

/// Dead-letter operations against the broker.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    dialer: Arc<Dialer>,
    turns: Arc<KeyLocks>,
    receipts: Option<Receipts>,
}

impl DeadLetters {
    /// Operations over connections made by `dialer`.
    pub fn new(dialer: Dialer) -> Self {
        DeadLetters {
            dialer: Arc::new(dialer),
            turns: Arc::default(),
            receipts: None,
        }
    }

    /// Writes a `replayed` receipt for each event a replay moves, so that its flow shows the
    /// hop pending again.
    pub fn with_receipts(mut self, receipts: Receipts) -> Self {
        self.receipts = Some(receipts);
        self
    }

    /// Up to `limit` dead letters, oldest first (by when they were dead-lettered), and how
    /// many there are in all. Every message is read and all are returned to the queue
    /// together, which keeps their order in a quorum queue (returned messages go to its
    /// back, in the order returned).
    pub async fn list(
        &self,
        queues: &Queues,
        limit: u32,
    ) -> Result<(Vec<DeadLetter>, u32), DeadLetterError> {
        self.exclusive(&queues.dlq, |channel, depth| async move {
            let Some(depth) = depth else {
                return Ok((Vec::new(), 0));
            };
            let keep = usize::try_from(limit).unwrap_or(usize::MAX);
            let mut oldest: Vec<(Option<String>, u32, DeadLetter)> = Vec::new();
            let mut last_tag = None;
            let mut read = 0;
            // Until the queue is empty, not up to the depth read before: a quorum queue
            // may count messages just returned by the previous operation a moment late,
            // though a read already finds them.
            for position in 0..SCAN_LIMIT {
                let Some(message) = get(&channel, &queues.dlq).await? else {
                    break;
                };
                last_tag = Some(message.delivery.delivery_tag);
                read += 1;
                let letter = describe(&message.delivery.properties, &message.delivery.data);
                oldest.push((letter.dead_lettered_at.clone(), position, letter));
                if oldest.len() >= keep.saturating_mul(2).max(64) {
                    oldest.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
                    oldest.truncate(keep);
                }
            }
            if let Some(tag) = last_tag {
                channel.basic_nack(tag, requeue_all()).await?;
            }
            oldest.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            oldest.truncate(keep);
            let total = if read < SCAN_LIMIT {
                read
            } else {
                depth.max(read)
            };
            Ok((oldest.into_iter().map(|(_, _, l)| l).collect(), total))
        })
        .await
    }

    /// Moves the dead letters of `subscription` of `service` that `filter` picks back to the
    /// subscription's queue with their attempts reset. Queue order is kept, of those moved
    /// and of those left.
    pub async fn replay(
        &self,
        service: &str,
        subscription: &Subscription,
        filter: &ReplayFilter,
    ) -> Result<Replayed, DeadLetterError> {
        let queues = &Queues::new(service, subscription);
        let hop = HopFacts {
            service: service.to_owned(),
            subscription: subscription.name.clone(),
            max_attempts: Some(subscription.spec.max_attempts),
            ..HopFacts::default()
        };
        self.exclusive(&queues.dlq, |channel, depth| async move {
            let mut replayed = Replayed::default();
            let mut found = HashSet::new();
            if depth.is_some() {
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                let mut kept = None;
                for _ in 0..SCAN_LIMIT {
                    let Some(message) = get(&channel, &queues.dlq).await? else {
                        break;
                    };
                    let delivery = message.delivery;
                    let (wanted, event_id) = filter.wants(&delivery.properties, &delivery.data);
                    if !wanted {
                        kept = Some(delivery.delivery_tag);
                        continue;
                    }
                    // Dated before the publish: the delivery that may follow at once is later.
                    let receipt = self.receipts.as_ref().and_then(|_| {
                        let envelope = Envelope::decode(&delivery.data).ok()?;
                        Some(Receipt::new(Kind::Replayed, &envelope, Some(hop.clone())))
                    });
                    let deadline = Instant::now() + OPERATION_TIMEOUT;
                    publish_confirmed(
                        &channel,
                        ShortString::from(""),
                        ShortString::from(queues.main.as_str()),
                        &delivery.data,
                        // Without the per-hop and causeway headers: attempts start again at 1.
                        copy_properties(&delivery.properties, |_| {}),
                        deadline,
                    )
                    .await?;
                    channel
                        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                        .await?;
                    replayed.replayed += 1;
                    found.extend(event_id);
                    if let (Some(receipts), Some(receipt)) = (&self.receipts, receipt) {
                        receipts.record(receipt);
                    }
                }
                if let Some(tag) = kept {
                    channel.basic_nack(tag, requeue_all()).await?;
                }
            }
            if let ReplayFilter::EventIds(ids) = filter {
                replayed.not_found = ids.difference(&found).cloned().collect();
                replayed.not_found.sort();
            }
            Ok(replayed)
        })
        .await
    }

    /// Deletes every dead letter; returns how many.
    pub async fn purge(&self, queues: &Queues) -> Result<u32, DeadLetterError> {
        self.exclusive(&queues.dlq, |channel, depth| async move {
            if depth.is_none() {
                return Ok(0);
            }
            Ok(channel
                .queue_purge(
                    ShortString::from(queues.dlq.as_str()),
                    QueuePurgeOptions::default(),
                )
                .await?)
        })
        .await
    }

    /// Runs `operation` on a fresh channel of a fresh connection, with the queue's depth
    /// (`None` when it does not exist yet), within the time limit, while no other operation
    /// on `dlq` runs: not in this sidecar (a key lock) and not in any other replica (the
    /// broker's exclusive lock queue, see [`lock_across_replicas`]).
    async fn exclusive<T, F, Fut>(&self, dlq: &str, operation: F) -> Result<T, DeadLetterError>
    where
        F: FnOnce(Channel, Option<u32>) -> Fut,
        Fut: std::future::Future<Output = Result<T, DeadLetterError>>,
    {
        let _turn = self.turns.lock(dlq).await;
        let work = async {
            // Closed on every path, also when the caller goes away half-way: a connection
            // left open would keep the lock, and the next operations would wait for it.
            let owned = OwnedConnection::new(self.dialer.dial().await?.connection);
            let connection = owned.get();
            let result = async {
                let lock = lock_across_replicas(connection, dlq).await?;
                let result = async {
                    let depth = existing_queue_depth(connection, dlq).await?;
                    let channel = connection.create_channel().await?;
                    let result = operation(channel.clone(), depth).await;
                    // Closed before the lock goes: whatever the operation still holds is
                    // back in the queue when the next operation starts.
                    let _ = channel.close(200, "done".into()).await;
                    result
                }
                .await;
                lock.release().await;
                result
            }
            .await;
            owned.close().await;
            result
        };
        timeout(OPERATION_TIMEOUT, work)
            .await
            .map_err(|_| DeadLetterError::Timeout)?
    }
}

fn requeue_all() -> BasicNackOptions {
    BasicNackOptions {
        multiple: true,
        requeue: true,
    }
}

async fn get(
    channel: &Channel,
    queue: &str,
) -> Result<Option<lapin::message::BasicGetMessage>, DeadLetterError> {
    Ok(channel
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
        .await?)
}

/// The event id of a message: its message id, else the envelope's.
fn event_id(properties: &BasicProperties, body: &[u8]) -> Option<String> {
    properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .or_else(|| envelope_text(body, "event_id"))
}

/// The correlation id of a message: its correlation id property (which mirrors the
/// envelope's), else the envelope's.
fn correlation_id(properties: &BasicProperties, body: &[u8]) -> Option<String> {
    properties
        .correlation_id()
        .as_ref()
        .map(|id| id.to_string())
        .or_else(|| envelope_text(body, "correlation_id"))
}

/// A text field of the envelope, when the body is one.
fn envelope_text(body: &[u8], field: &str) -> Option<String> {
    let envelope: Value = serde_json::from_slice(body).ok()?;
    envelope[field].as_str().map(str::to_owned)
}

fn describe(properties: &BasicProperties, body: &[u8]) -> DeadLetter {
    let envelope: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        envelope
            .as_ref()
            .and_then(|e| e[name].as_str())
            .map(str::to_owned)
    };
    DeadLetter {
        event_id: event_id(properties, body),
        event_type: field("event_type")
            .or_else(|| properties.kind().as_ref().map(|k| k.to_string())),
        correlation_id: field("correlation_id"),
        reason: text_header(properties, "x-causeway-reason"),
        last_status: int_header(properties, "x-causeway-last-status"),
        last_error: text_header(properties, "x-causeway-last-error"),
        attempts: int_header(properties, "x-causeway-attempts"),
        dead_lettered_at: text_header(properties, "x-causeway-dead-lettered-at"),
        body: envelope
            .is_none()
            .then(|| String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned()),
        envelope,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{amqp::tests::properties, telemetry::field_table_trace};

    fn message(correlation: Option<&str>, body: &str) -> (BasicProperties, Vec<u8>) {
        let mut properties = BasicProperties::default();
        if let Some(id) = correlation {
            properties = properties.with_correlation_id(id.into());
        }
        (properties, body.as_bytes().to_vec())
    }

    #[test]
    fn a_flow_filter_reads_the_property_then_the_envelope() {
        let filter = ReplayFilter::CorrelationId("order-1".to_owned());
        let cases = [
            (Some("order-1"), r#"{"correlation_id":"order-2"}"#, true),
            (Some("order-2"), r#"{"correlation_id":"order-1"}"#, false),
            (
                None,
                r#"{"correlation_id":"order-1","event_id":"e-1"}"#,
                true,
            ),
            (None, r#"{"correlation_id":"order-2"}"#, false),
            (None, "not json", false),
            (Some("order-1"), "not json", true),
        ];
        for (property, body, wanted) in cases {
            let (properties, body) = message(property, body);
            assert_eq!(filter.wants(&properties, &body).0, wanted, "{property:?}");
        }
    }

    #[test]
    fn an_id_filter_picks_by_event_id_and_all_picks_everything() {
        let (properties, body) = message(None, r#"{"event_id":"e-1"}"#);
        let ids = ReplayFilter::EventIds(HashSet::from(["e-1".to_owned()]));
        assert_eq!(
            ids.wants(&properties, &body),
            (true, Some("e-1".to_owned()))
        );
        let other = ReplayFilter::EventIds(HashSet::from(["e-2".to_owned()]));
        assert!(!other.wants(&properties, &body).0);
        let (properties, body) = message(None, "garbage");
        assert!(!ids.wants(&properties, &body).0);
        assert_eq!(ReplayFilter::All.wants(&properties, &body), (true, None));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A dead letter written by anyone lists without a panic: its envelope when the body
        /// is JSON, else the start of the body as text.
        #[test]
        fn any_message_is_described(
            properties in properties(),
            body in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..6000),
                "\\{\"event_id\":\"[ -~&&[^\"\\\\]]{0,40}\",\"event_type\":\"[A-Za-z]{1,9}\"\\}"
                    .prop_map(String::into_bytes),
            ],
        ) {
            let letter = describe(&properties, &body);
            let json = serde_json::from_slice::<Value>(&body).ok();
            prop_assert_eq!(letter.envelope.is_some(), json.is_some());
            match &json {
                Some(envelope) => {
                    prop_assert_eq!(letter.body, None);
                    if properties.message_id().is_none() {
                        prop_assert_eq!(
                            letter.event_id.as_deref(),
                            envelope["event_id"].as_str()
                        );
                    }
                }
                None => prop_assert!(letter.body.is_some_and(|b| b.len() <= 4096 * 3)),
            }
            let trace = field_table_trace(&properties);
            if let Some(traceparent) = trace.traceparent {
                prop_assert!(crate::envelope::is_valid_traceparent(traceparent.as_bytes()));
            }
        }
    }
}
