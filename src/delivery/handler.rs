//! One message from a subscription's queue, start to finish: decode, deduplicate, POST to
//! the app, and ack, retry or dead-letter by the app's answer.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    Counters,
    app::AppClient,
    outcome::{AppAnswer, Disposition, Reason, disposition, wait_tier},
    topology::Queues,
};
use crate::{
    broker::{PublishError, publish_confirmed},
    envelope::{Envelope, TraceContext, now_rfc3339},
    store::{Claim, DedupStore, EmbeddedStore},
    subscription::Subscription,
};

/// How long a copy waits before another try when a twin is in flight or the store failed.
const DEFER: Duration = Duration::from_secs(1);
/// How long moving a message to a wait or dead-letter queue may take.
const REPUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `x-causeway-last-error` kept.
const MAX_ERROR_LEN: usize = 1000;

/// What every delivery of one subscription shares.
pub(crate) struct Context {
    pub(crate) subscription: Subscription,
    pub(crate) queues: Queues,
    pub(crate) app: AppClient,
    pub(crate) dedup: Arc<dyn DedupStore>,
    pub(crate) store: EmbeddedStore,
    pub(crate) retention: Duration,
    /// A channel in confirm mode on the consuming connection, for retries and dead letters.
    pub(crate) republish: Channel,
    pub(crate) counters: Arc<Counters>,
}

/// Where a message goes when it leaves the main queue without being done.
enum Move<'a> {
    /// To a wait queue, to come back after `delay`.
    Wait {
        delay: Duration,
        attempts: u32,
        last: Option<&'a AppAnswer>,
    },
    /// To the dead-letter queue.
    DeadLetter {
        reason: Reason,
        attempts: u32,
        last_status: Option<u16>,
        last_error: String,
    },
}

impl Context {
    /// Handles one message; never fails: every path ends in an ack, a move or a requeue.
    pub(crate) async fn handle(&self, delivery: Delivery, stop: &CancellationToken) {
        let prior = int_header(&delivery.properties, "x-causeway-attempts").unwrap_or(0);
        let returned = int_header(&delivery.properties, "x-delivery-count").unwrap_or(0);
        let mut attempt =
            u32::try_from(prior.saturating_add(returned).saturating_add(1)).unwrap_or(u32::MAX);
        let envelope = match serde_json::from_slice::<Envelope>(&delivery.data) {
            Ok(envelope) => envelope,
            Err(error) => {
                let dead = Move::DeadLetter {
                    reason: Reason::Undecodable,
                    attempts: attempt.saturating_sub(1),
                    last_status: None,
                    last_error: format!("not a valid envelope: {error}"),
                };
                warn!(subscription = %self.subscription.name, %error, "undecodable message dead-lettered");
                return self.move_then_ack(&delivery, dead).await;
            }
        };
        let spec = &self.subscription.spec;
        if attempt > spec.max_attempts {
            // Returned to the queue more often than it may be tried (the sidecar died
            // during its deliveries): give up on it instead of trying forever.
            let dead = Move::DeadLetter {
                reason: Reason::MaxAttempts,
                attempts: attempt - 1,
                last_status: None,
                last_error: "returned to the queue unacknowledged too often".into(),
            };
            self.log_dead_letter(&envelope, Reason::MaxAttempts, attempt - 1);
            return self.move_then_ack(&delivery, dead).await;
        }
        let key = format!("{}/{}", self.subscription.name, envelope.event_id);
        let lease = self.subscription.timeout() + Duration::from_secs(30);
        match self.dedup.claim(&key, lease).await {
            Ok(Claim::Acquired) => {}
            Ok(Claim::Done) => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                info!(
                    subscription = %self.subscription.name,
                    event_id = %envelope.event_id,
                    event_type = %envelope.event_type,
                    correlation_id = %envelope.correlation_id,
                    causation_id = envelope.causation_id.as_deref(),
                    "duplicate_event_skipped"
                );
                return ack(&delivery).await;
            }
            Ok(Claim::Busy) => {
                debug!(event_id = %envelope.event_id, "a copy of this event is in flight; this one waits");
                let wait = Move::Wait {
                    delay: DEFER,
                    attempts: attempt - 1,
                    last: None,
                };
                return self.move_then_ack(&delivery, wait).await;
            }
            Err(error) => {
                warn!(%error, event_id = %envelope.event_id, "dedup store failed; the event waits");
                let wait = Move::Wait {
                    delay: DEFER,
                    attempts: attempt - 1,
                    last: None,
                };
                return self.move_then_ack(&delivery, wait).await;
            }
        }
        if let Err(error) = self
            .store
            .remember_correlation(
                &envelope.event_id.to_string(),
                &envelope.correlation_id,
                self.retention,
            )
            .await
        {
            warn!(%error, event_id = %envelope.event_id, "cannot remember the correlation id");
        }
        let trace = trace_context(&delivery.properties);
        let body = Bytes::from(delivery.data.clone());
        loop {
            let started = Instant::now();
            let answer = self
                .app
                .deliver(
                    &spec.route,
                    body.clone(),
                    &envelope,
                    attempt,
                    &trace,
                    self.subscription.timeout(),
                )
                .await;
            let outcome = disposition(&answer, attempt, spec);
            match outcome {
                Disposition::Done => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        subscription = %self.subscription.name,
                        event_id = %envelope.event_id,
                        event_type = %envelope.event_type,
                        correlation_id = %envelope.correlation_id,
                        causation_id = envelope.causation_id.as_deref(),
                        attempt,
                        took_ms = started.elapsed().as_millis() as u64,
                        "event delivered"
                    );
                    if let Err(error) = self.dedup.complete(&key, self.retention).await {
                        // The app has it: acking is right. Without the record a redelivery
                        // could reach the app again, which the log makes visible.
                        warn!(%error, event_id = %envelope.event_id, "cannot record the delivery; a redelivery would not be deduplicated");
                    }
                    return ack(&delivery).await;
                }
                Disposition::Retry { delay } => {
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    let _ = self.dedup.release(&key).await;
                    info!(
                        subscription = %self.subscription.name,
                        event_id = %envelope.event_id,
                        event_type = %envelope.event_type,
                        correlation_id = %envelope.correlation_id,
                        causation_id = envelope.causation_id.as_deref(),
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        error = %answer.describe(),
                        "delivery failed; will retry"
                    );
                    if spec.ordered {
                        // Ordered: the message keeps its place at the head of the queue, so
                        // the wait happens here; a crash returns it to the broker unharmed.
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = stop.cancelled() => return requeue(&delivery).await,
                        }
                        attempt += 1;
                        match self.dedup.claim(&key, lease).await {
                            Ok(Claim::Acquired) => continue,
                            _ => return requeue(&delivery).await,
                        }
                    }
                    let wait = Move::Wait {
                        delay,
                        attempts: attempt,
                        last: Some(&answer),
                    };
                    return self.move_then_ack(&delivery, wait).await;
                }
                Disposition::DeadLetter(reason) => {
                    let _ = self.dedup.release(&key).await;
                    self.log_dead_letter(&envelope, reason, attempt);
                    let dead = Move::DeadLetter {
                        reason,
                        attempts: attempt,
                        last_status: answer.status(),
                        last_error: answer.describe(),
                    };
                    return self.move_then_ack(&delivery, dead).await;
                }
            }
        }
    }

    fn log_dead_letter(&self, envelope: &Envelope, reason: Reason, attempts: u32) {
        warn!(
            subscription = %self.subscription.name,
            event_id = %envelope.event_id,
            event_type = %envelope.event_type,
            correlation_id = %envelope.correlation_id,
            causation_id = envelope.causation_id.as_deref(),
            reason = reason.as_str(),
            attempts,
            dlq = %self.queues.dlq,
            "event dead-lettered"
        );
    }

    /// Publishes a copy where it belongs, confirmed, then acks the original. When the copy
    /// cannot be published, the original goes back to the queue instead: never both lost.
    async fn move_then_ack(&self, delivery: &Delivery, target: Move<'_>) {
        let (queue, properties) = match target {
            Move::Wait {
                delay,
                attempts,
                last,
            } => {
                let tier = wait_tier(&self.subscription.spec, attempts.max(1));
                let properties = copy_properties(&delivery.properties, |headers| {
                    headers.insert(
                        "x-causeway-attempts".into(),
                        AMQPValue::LongLongInt(attempts.into()),
                    );
                    if let Some(last) = last {
                        if let Some(status) = last.status() {
                            headers.insert(
                                "x-causeway-last-status".into(),
                                AMQPValue::LongInt(status.into()),
                            );
                        }
                        headers.insert("x-causeway-last-error".into(), text(&last.describe()));
                    }
                })
                .with_expiration(ShortString::from(delay.as_millis().to_string()));
                (self.queues.wait(tier), properties)
            }
            Move::DeadLetter {
                reason,
                attempts,
                last_status,
                last_error,
            } => {
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                let properties = copy_properties(&delivery.properties, |headers| {
                    headers.insert("x-causeway-reason".into(), text(reason.as_str()));
                    if let Some(status) = last_status {
                        headers.insert(
                            "x-causeway-last-status".into(),
                            AMQPValue::LongInt(status.into()),
                        );
                    }
                    headers.insert("x-causeway-last-error".into(), text(&last_error));
                    headers.insert(
                        "x-causeway-attempts".into(),
                        AMQPValue::LongLongInt(attempts.into()),
                    );
                    headers.insert("x-causeway-dead-lettered-at".into(), text(&now_rfc3339()));
                    headers.insert(
                        "x-causeway-subscription".into(),
                        text(&self.subscription.name),
                    );
                });
                (self.queues.dlq.as_str(), properties)
            }
        };
        match self.send_to_queue(queue, &delivery.data, properties).await {
            Ok(()) => ack(delivery).await,
            Err(error) => {
                warn!(%error, queue, "cannot move the message; it goes back to its queue");
                requeue(delivery).await;
            }
        }
    }

    async fn send_to_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let routing_key = ShortString::try_new(queue)
            .map_err(|_| PublishError::Returned("queue name too long".into()))?;
        let deadline = Instant::now() + REPUBLISH_TIMEOUT;
        publish_confirmed(
            &self.republish,
            ShortString::from(""),
            routing_key,
            body,
            properties,
            deadline,
        )
        .await
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker redelivers and dedup catches the copy.
        debug!(%error, "ack failed");
    }
}

async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        debug!(%error, "requeue failed");
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

fn text(value: &str) -> AMQPValue {
    let value = match value.char_indices().nth(MAX_ERROR_LEN) {
        Some((cut, _)) => &value[..cut],
        None => value,
    };
    AMQPValue::LongString(LongString::from(value))
}

/// An integer header, whatever integer type (or decimal text) the writer used.
pub(crate) fn int_header(properties: &BasicProperties, name: &str) -> Option<u64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongString(v) => v.to_string().parse().ok(),
        _ => None,
    }
}

/// A text header.
pub(crate) fn text_header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(v) => Some(v.to_string()),
        AMQPValue::ShortString(v) => Some(v.to_string()),
        _ => None,
    }
}

/// The trace context the publisher attached.
fn trace_context(properties: &BasicProperties) -> TraceContext {
    TraceContext {
        traceparent: text_header(properties, "traceparent"),
        tracestate: text_header(properties, "tracestate"),
    }
}
