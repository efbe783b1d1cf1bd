//! The one door a message leaves its queue by: acked, returned to its queue, moved to a
//! wait queue for a retry, or moved to the dead-letter queue with why. Nothing else in the
//! sidecar acks, requeues or moves a delivery.

use std::time::Duration;

use lapin::{
    BasicProperties,
    message::Delivery,
    options::BasicNackOptions,
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    handler::Context,
    outcome::{AppAnswer, Reason, wait_tier},
};
use crate::{
    amqp,
    broker::{PublishError, publish_confirmed},
    envelope::now_rfc3339,
    telemetry::metrics::DeliveryOutcome,
};

/// How long moving a message to a wait or dead-letter queue may take.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `x-causeway-last-error` kept.
const MAX_ERROR_LEN: usize = 1000;

/// Where a message goes when its handling ends.
pub(crate) enum Fate<'a> {
    /// Done (delivered, or a duplicate skipped): acked.
    Ack,
    /// Back to its queue unharmed (shutdown, or a twin holds its claim in ordered mode);
    /// the broker delivers it again.
    Requeue,
    /// To a wait queue, to come back after `delay`.
    Wait {
        delay: Duration,
        attempts: u32,
        last: Option<&'a AppAnswer>,
    },
    /// To the dead-letter queue, with why.
    DeadLetter {
        reason: Reason,
        attempts: u32,
        last_status: Option<u16>,
        last_error: String,
    },
}

impl Context {
    /// Sends `delivery` to its fate. A move publishes a copy, confirmed, before the
    /// original is acked; when the copy cannot be published the original goes back to its
    /// queue instead: never both lost, never acked without a copy.
    pub(crate) async fn settle(&self, delivery: &Delivery, fate: Fate<'_>) {
        let (queue, properties) = match fate {
            Fate::Ack => return self.ack(delivery),
            Fate::Requeue => return self.requeue(delivery).await,
            Fate::Wait {
                delay,
                attempts,
                last,
            } => {
                let tier = wait_tier(&self.subscription.spec, attempts.max(1));
                let properties = copy_properties(&delivery.properties, |headers| {
                    set_int(headers, "x-causeway-attempts", attempts);
                    if let Some(last) = last {
                        if let Some(status) = last.status() {
                            set_int(headers, "x-causeway-last-status", status.into());
                        }
                        headers.insert("x-causeway-last-error".into(), text(&last.describe()));
                    }
                })
                .with_expiration(ShortString::from(delay.as_millis().to_string()));
                (self.queues.wait(tier), properties)
            }
            Fate::DeadLetter {
                reason,
                attempts,
                last_status,
                last_error,
            } => {
                self.metrics
                    .delivery(&self.subscription.name, DeliveryOutcome::DeadLettered);
                let properties = copy_properties(&delivery.properties, |headers| {
                    headers.insert("x-causeway-reason".into(), text(reason.as_str()));
                    if let Some(status) = last_status {
                        set_int(headers, "x-causeway-last-status", status.into());
                    }
                    headers.insert("x-causeway-last-error".into(), text(&last_error));
                    set_int(headers, "x-causeway-attempts", attempts);
                    headers.insert("x-causeway-dead-lettered-at".into(), text(&now_rfc3339()));
                    headers.insert(
                        "x-causeway-subscription".into(),
                        text(&self.subscription.name),
                    );
                });
                (self.queues.dlq.as_str(), properties)
            }
        };
        match self
            .publish_to_queue(queue, &delivery.data, properties)
            .await
        {
            Ok(()) => self.ack(delivery),
            Err(error) => {
                warn!(%error, queue, "cannot move the message; it goes back to its queue");
                self.requeue(delivery).await;
            }
        }
    }

    /// Acks with the channel's next batch. A failed ack means the channel is gone: the
    /// broker redelivers the message and dedup catches the copy.
    fn ack(&self, delivery: &Delivery) {
        self.acks.ack(delivery.delivery_tag);
    }

    /// Returns the message to its queue; a batch of acks covers it only once that is sent.
    async fn requeue(&self, delivery: &Delivery) {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if let Err(error) = delivery.acker.nack(options).await {
            debug!(%error, "requeue failed");
        }
        self.acks.let_go(delivery.delivery_tag);
    }

    async fn publish_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        // Queue names are at most 100 + 1 + 100 + 12 ASCII bytes (checked at configuration).
        let routing_key = ShortString::from(queue);
        let published = publish_confirmed(
            &self.republish.get(),
            ShortString::from(""),
            routing_key,
            body,
            properties,
            Instant::now() + MOVE_TIMEOUT,
        )
        .await;
        if matches!(published, Err(PublishError::Nacked)) {
            self.republish.nacked();
        }
        published
    }
}

/// Headers the broker or causeway set per hop; never copied to a new message.
fn is_hop_header(name: &str) -> bool {
    name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death")
        || name.starts_with("x-last-death")
        || name.starts_with("x-causeway-")
}

/// The original properties with hop headers dropped and `set` applied; persistent.
pub(crate) fn copy_properties(
    original: &BasicProperties,
    set: impl FnOnce(&mut FieldTable),
) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = original.headers() {
        for (name, value) in old.inner() {
            if !is_hop_header(name.as_str()) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    set(&mut headers);
    original.clone().with_headers(headers).with_delivery_mode(2)
}

fn set_int(headers: &mut FieldTable, name: &str, value: u32) {
    headers.insert(name.into(), AMQPValue::LongLongInt(value.into()));
}

/// A text header value, cut to `MAX_ERROR_LEN` characters.
fn text(value: &str) -> AMQPValue {
    let value = match value.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => &value[..cut],
        None => value,
    };
    amqp::text(value)
}
