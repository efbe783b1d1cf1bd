//! Dead-letter operations: list without losing or reordering, replay, purge.
//!
//! Each operation opens a short-lived connection of its own: they are rare, and this keeps
//! them apart from the consumers' prefetch and channel state. Within one sidecar the
//! operations on one subscription take turns, so that a listing never hides messages
//! another listing holds.

use std::{collections::HashSet, sync::Arc, time::Duration};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueuePurgeOptions,
    },
    types::{LongString, ShortString},
};
use serde::Serialize;
use serde_json::Value;
use tokio::time::{Instant, timeout};

use super::{handler::copy_properties, topology::Queues};
use crate::{
    amqp::{int_header, text_header},
    broker::{PublishError, close_gracefully, publish_confirmed, queue_depth},
    key_locks::{KeyGuard, KeyLocks},
};

/// How long one dead-letter operation may take at the broker.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most messages one replay looks at.
const REPLAY_SCAN_LIMIT: u32 = 100_000;

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
    /// The broker could not be reached or failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
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
    url: String,
    turns: Arc<KeyLocks>,
}

impl DeadLetters {
    /// Operations over connections to `url`.
    pub fn new(url: &str) -> Self {
        DeadLetters {
            url: url.to_owned(),
            turns: Arc::default(),
        }
    }

    /// Up to `limit` dead letters, oldest first, and how many there are in all. The
    /// messages are read and returned to the queue in their order.
    pub async fn list(
        &self,
        queues: &Queues,
        limit: u32,
    ) -> Result<(Vec<DeadLetter>, u32), DeadLetterError> {
        let _turn = self.turn(&queues.dlq).await;
        self.with_channel(|channel| async move {
            let total = queue_depth(&channel, &queues.dlq).await?;
            let mut letters = Vec::new();
            let mut last_tag = None;
            for _ in 0..limit.min(total) {
                let Some(message) = get(&channel, &queues.dlq).await? else {
                    break;
                };
                last_tag = Some(message.delivery.delivery_tag);
                letters.push(describe(
                    &message.delivery.properties,
                    &message.delivery.data,
                ));
            }
            if let Some(tag) = last_tag {
                channel.basic_nack(tag, requeue_all()).await?;
            }
            Ok((letters, total))
        })
        .await
    }

    /// Moves dead letters back to the subscription's queue with their attempts reset: all
    /// of them, or those whose event id is in `only`. Order is kept.
    pub async fn replay(
        &self,
        queues: &Queues,
        only: Option<HashSet<String>>,
    ) -> Result<Replayed, DeadLetterError> {
        let _turn = self.turn(&queues.dlq).await;
        self.with_channel(|channel| async move {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let total = queue_depth(&channel, &queues.dlq).await?;
            let mut replayed = Replayed::default();
            let mut found = HashSet::new();
            let mut kept = None;
            for _ in 0..total.min(REPLAY_SCAN_LIMIT) {
                let Some(message) = get(&channel, &queues.dlq).await? else {
                    break;
                };
                let delivery = message.delivery;
                let event_id = event_id(&delivery.properties, &delivery.data);
                let wanted = match (&only, &event_id) {
                    (None, _) => true,
                    (Some(ids), Some(id)) => ids.contains(id),
                    (Some(_), None) => false,
                };
                if !wanted {
                    kept = Some(delivery.delivery_tag);
                    continue;
                }
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
            }
            if let Some(tag) = kept {
                channel.basic_nack(tag, requeue_all()).await?;
            }
            if let Some(ids) = only {
                replayed.not_found = ids.into_iter().filter(|id| !found.contains(id)).collect();
                replayed.not_found.sort();
            }
            Ok(replayed)
        })
        .await
    }

    /// Deletes every dead letter; returns how many.
    pub async fn purge(&self, queues: &Queues) -> Result<u32, DeadLetterError> {
        let _turn = self.turn(&queues.dlq).await;
        self.with_channel(|channel| async move {
            Ok(channel
                .queue_purge(
                    ShortString::from(queues.dlq.as_str()),
                    QueuePurgeOptions::default(),
                )
                .await?)
        })
        .await
    }

    async fn turn(&self, queue: &str) -> KeyGuard<'_> {
        self.turns.lock(queue).await
    }

    /// Runs `operation` on a fresh channel of a fresh connection, within the time limit.
    async fn with_channel<T, F, Fut>(&self, operation: F) -> Result<T, DeadLetterError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, DeadLetterError>>,
    {
        let work = async {
            let properties = ConnectionProperties::default()
                .with_connection_name(LongString::from("causeway dead-letter operation"));
            let connection = Connection::connect(&self.url, properties).await?;
            let channel = connection.create_channel().await?;
            let result = operation(channel.clone()).await;
            // Closing returns anything still unacknowledged to the queue.
            close_gracefully(&connection, &[Some(&channel)]).await;
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
        .or_else(|| {
            let envelope: Value = serde_json::from_slice(body).ok()?;
            envelope["event_id"].as_str().map(str::to_owned)
        })
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
