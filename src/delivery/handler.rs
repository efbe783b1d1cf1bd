//! One message from a subscription's queue, start to finish: decode, deduplicate, POST to
//! the app, and ack, retry or dead-letter by the app's answer.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use lapin::message::Delivery;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, debug, field::Empty, info_span, warn};

use super::{
    acks::Acks,
    app::{AppClient, Outgoing},
    claim::ClaimGuard,
    fate::Fate,
    outcome::{AppAnswer, Disposition, Reason, disposition},
    record::{Recorded, record_done},
    topology::Queues,
};
use crate::{
    amqp::int_header,
    broker::SharedChannel,
    cloudevents::amqp::{Message, decode},
    envelope::Envelope,
    flow::{HopFacts, Kind, Receipt, Receipts},
    schema::{Invalid, SchemaRegistry},
    store::{Claim, DedupStore, EmbeddedStore, StoreError, now_ms},
    subscription::Subscription,
    telemetry::{
        TraceExt, current_trace_id, field_table_trace,
        metrics::{DeliveryOutcome, Metrics},
    },
};

/// Logs about one event at `level`, with the fields every such line carries: subscription,
/// event id, type, correlation and causation ids, and the trace id.
macro_rules! event_log {
    ($level:ident, $context:expr, $envelope:expr, $($rest:tt)+) => {
        tracing::$level!(
            subscription = %$context.subscription.name,
            event_id = %$envelope.event_id,
            event_type = %$envelope.event_type,
            correlation_id = %$envelope.correlation_id,
            causation_id = $envelope.causation_id.as_deref(),
            trace_id = %current_trace_id(),
            $($rest)+
        )
    };
}

/// How long a copy waits before another try when a twin is in flight or the store failed.
const DEFER: Duration = Duration::from_secs(1);
/// How long a delivery waits before trying an app that was not listening again.
const APP_WAIT: Duration = Duration::from_millis(500);

/// One event on its way to the app: the envelope, and what the app gets for it.
struct Event {
    envelope: Envelope,
    outgoing: Outgoing,
}

/// What every delivery of one subscription shares.
pub(crate) struct Context {
    pub(crate) subscription: Subscription,
    pub(crate) queues: Queues,
    pub(crate) app: AppClient,
    pub(crate) dedup: Arc<dyn DedupStore>,
    pub(crate) store: EmbeddedStore,
    pub(crate) retention: Duration,
    /// A channel in confirm mode on the consuming connection, for retries and dead letters.
    pub(crate) republish: Arc<SharedChannel>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) schemas: Arc<SchemaRegistry>,
    /// The service, for the flow receipts.
    pub(crate) service: String,
    /// Where hop outcomes are written down for the flows.
    pub(crate) receipts: Receipts,
    /// The acks of the subscription's channel.
    pub(crate) acks: Arc<Acks>,
}

impl Context {
    /// Handles one message in a CONSUMER span that continues the publisher's trace; never
    /// fails: every path ends in an ack, a move or a requeue.
    pub(crate) async fn handle(&self, delivery: Delivery, stop: &CancellationToken) {
        let _in_flight = self.metrics.in_flight("delivery");
        let prior = int_header(&delivery.properties, "x-causeway-attempts").unwrap_or(0);
        let returned = int_header(&delivery.properties, "x-delivery-count").unwrap_or(0);
        let attempt =
            u32::try_from(prior.saturating_add(returned).saturating_add(1)).unwrap_or(u32::MAX);
        let span = info_span!(
            "process",
            otel.name = %format!("process {}", self.queues.main),
            otel.kind = "consumer",
            otel.status_code = Empty,
            otel.status_description = Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %self.queues.main,
            messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
            messaging.message.id = Empty,
            messaging.message.conversation_id = Empty,
            causeway.event_type = Empty,
            causeway.causation_id = Empty,
            causeway.schema_version = Empty,
            causeway.subscription = %self.subscription.name,
            causeway.delivery.attempt = attempt,
            causeway.outcome = Empty,
        );
        span.continue_trace(&field_table_trace(&delivery.properties));
        self.process(delivery, attempt, stop).instrument(span).await;
    }

    async fn process(&self, delivery: Delivery, attempt: u32, stop: &CancellationToken) {
        let span = Span::current();
        // A CloudEvent another producer put on the exchange is read into an envelope.
        let decoded = decode(
            &delivery.properties,
            &delivery.data,
            delivery.routing_key.as_str(),
        );
        let (envelope, foreign) = match decoded {
            Ok(Message::Envelope(envelope)) => (envelope, false),
            Ok(Message::CloudEvent(envelope)) => (envelope, true),
            Err(error) => {
                let last_error = error.to_string();
                warn!(
                    subscription = %self.subscription.name,
                    trace_id = %current_trace_id(),
                    error = %last_error,
                    "undecodable message dead-lettered"
                );
                span.record("causeway.outcome", "dead_lettered");
                // The parser's message may quote the body: keep it out of exported spans.
                span.fail("not a valid envelope or CloudEvent");
                let dead = Fate::DeadLetter {
                    reason: Reason::Undecodable,
                    attempts: attempt.saturating_sub(1),
                    last_status: None,
                    last_error,
                };
                return self.settle(&delivery, dead).await;
            }
        };
        span.record("messaging.message.id", envelope.event_id.to_string());
        span.record(
            "messaging.message.conversation_id",
            envelope.correlation_id.as_str(),
        );
        span.record("causeway.event_type", envelope.event_type.as_str());
        span.record(
            "causeway.schema_version",
            envelope.schema_version.to_string(),
        );
        if let Some(causation_id) = &envelope.causation_id {
            span.record("causeway.causation_id", causation_id.as_str());
        }
        let spec = &self.subscription.spec;
        if spec.validate {
            let checked = self.schemas.check(
                &envelope.event_type,
                Some(envelope.schema_version),
                &envelope.payload,
            );
            if let Err(invalid) = checked {
                // A payload outside the grammar fails validation too: it is dead-lettered as
                // `schema`, with where and why in the last error.
                let last_error = invalid.summary();
                // Validation messages may quote payload values: keep them out of spans.
                Span::current().fail(match invalid {
                    Invalid::Malformed(_) => "the payload is outside the payload grammar",
                    _ => "the payload does not match its schema",
                });
                let dead = Fate::DeadLetter {
                    reason: Reason::Schema,
                    attempts: attempt - 1,
                    last_status: None,
                    last_error,
                };
                self.dead_lettered(&envelope, &dead);
                return self.settle(&delivery, dead).await;
            }
        }
        if attempt > spec.max_attempts {
            // Returned to the queue more often than it may be tried (the sidecar died
            // during its deliveries): give up on it instead of trying forever.
            let dead = Fate::DeadLetter {
                reason: Reason::MaxAttempts,
                attempts: attempt - 1,
                last_status: None,
                last_error: "returned to the queue unacknowledged too often".into(),
            };
            Span::current().fail("returned to the queue unacknowledged too often");
            self.dead_lettered(&envelope, &dead);
            return self.settle(&delivery, dead).await;
        }
        let key = format!("{}/{}", self.subscription.name, envelope.event_id);
        let lease = self.subscription.timeout() + Duration::from_secs(30);
        let mut claim = self.dedup.claim(&key, lease).await;
        if spec.ordered {
            // A wait queue would put the event behind later ones: an ordered subscription
            // waits here for its twin (or the store) instead, holding its place.
            while matches!(claim, Ok(Claim::Busy) | Err(_)) {
                tokio::select! {
                    _ = tokio::time::sleep(DEFER) => {}
                    _ = stop.cancelled() => return self.settle(&delivery, Fate::Requeue).await,
                }
                claim = self.dedup.claim(&key, lease).await;
            }
        }
        let Some(claim) = self
            .claimed(claim, key, &delivery, &envelope, attempt)
            .await
        else {
            return;
        };
        // Events the app publishes in reaction find the correlation id from now on.
        let mut event_id = uuid::Uuid::encode_buffer();
        let claim = claim.holding(self.store.hold_correlation(
            envelope.event_id.hyphenated().encode_lower(&mut event_id),
            &envelope.correlation_id,
            self.retention,
        ));
        // Rendered once for every attempt: the message as is in causeway's format, unless
        // it was a CloudEvent from another producer.
        let wire = (!foreign).then_some(delivery.data.as_slice());
        let outgoing = Outgoing::new(
            spec.format,
            &envelope,
            wire,
            &field_table_trace(&delivery.properties),
        );
        let event = Event { envelope, outgoing };
        self.attempts(&delivery, &event, claim, lease, attempt, stop)
            .await;
    }

    /// Acts on the dedup claim of `key`; the guard of the claim when the delivery is ours
    /// to make.
    async fn claimed(
        &self,
        claim: Result<Claim, StoreError>,
        key: String,
        delivery: &Delivery,
        envelope: &Envelope,
        attempt: u32,
    ) -> Option<ClaimGuard> {
        let wait = Fate::Wait {
            delay: DEFER,
            attempts: attempt - 1,
            last: None,
        };
        match claim {
            Ok(Claim::Acquired) => return Some(ClaimGuard::new(self.dedup.clone(), key)),
            Ok(Claim::Done) => {
                self.metrics
                    .delivery(&self.subscription.name, DeliveryOutcome::Duplicate);
                Span::current().record("causeway.outcome", "duplicate");
                event_log!(info, self, envelope, "duplicate_event_skipped");
                self.receipt(Kind::DuplicateSkipped, envelope, HopFacts::default());
                self.settle(delivery, Fate::Ack).await;
            }
            Ok(Claim::Busy) => {
                debug!(event_id = %envelope.event_id, "a copy of this event is in flight; this one waits");
                Span::current().record("causeway.outcome", "deferred");
                self.settle(delivery, wait).await;
            }
            Err(error) => {
                debug!(%error, event_id = %envelope.event_id, "dedup store failed; the event waits");
                Span::current().record("causeway.outcome", "deferred");
                self.settle(delivery, wait).await;
            }
        }
        None
    }

    /// POSTs to the app, then acks, retries or dead-letters by its answer. Ordered
    /// subscriptions retry here, keeping the message (and its place) until done.
    async fn attempts(
        &self,
        delivery: &Delivery,
        event: &Event,
        mut claim: ClaimGuard,
        lease: Duration,
        mut attempt: u32,
        stop: &CancellationToken,
    ) {
        let span = Span::current();
        let spec = &self.subscription.spec;
        let trace = field_table_trace(&delivery.properties);
        let envelope = &event.envelope;
        let mut waited_for_app = false;
        loop {
            let started = Instant::now();
            let answer = self
                .app
                .deliver(
                    &spec.route,
                    &event.outgoing,
                    envelope,
                    attempt,
                    &trace,
                    self.subscription.timeout(),
                )
                .await;
            self.metrics
                .delivery_took(&self.subscription.name, started.elapsed());
            if let AppAnswer::NotListening(error) = &answer {
                // Not the event's fault: no attempt is used up. The delivery keeps its
                // prefetch slot while it waits, so consuming pauses by itself until the app
                // listens again; events wait in the queue, not in the dead letters.
                if !waited_for_app {
                    event_log!(warn, self, envelope, %error, "the app is not listening; the delivery waits for it");
                    waited_for_app = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(APP_WAIT) => continue,
                    _ = stop.cancelled() => {
                        claim.release().await;
                        return self.settle(delivery, Fate::Requeue).await;
                    }
                }
            }
            match disposition(&answer, attempt, spec) {
                Disposition::Done => {
                    self.metrics
                        .delivery(&self.subscription.name, DeliveryOutcome::Success);
                    span.record("causeway.outcome", "success");
                    // An ordered retry may have marked the span failed before.
                    span.record("otel.status_code", "ok");
                    span.record("otel.status_description", "");
                    event_log!(
                        debug,
                        self,
                        envelope,
                        attempt,
                        took_ms = started.elapsed().as_millis() as u64,
                        "event delivered"
                    );
                    // Acked only with its record; at shutdown, requeued without it.
                    let recorded = record_done(&mut claim, self.retention, stop).await;
                    if let Recorded::GaveUp(error) = recorded {
                        event_log!(warn, self, envelope, %error, "the delivery could not be recorded before shutdown; the event goes back to its queue and may reach the app again");
                        claim.release().await;
                        return self.settle(delivery, Fate::Requeue).await;
                    }
                    self.settle(delivery, Fate::Ack).await;
                    let took = started.elapsed();
                    self.receipt(
                        Kind::Delivered,
                        envelope,
                        HopFacts {
                            attempt,
                            took_ms: Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX)),
                            ..HopFacts::default()
                        },
                    );
                    if let Ok(occurred) = humantime::parse_rfc3339(&envelope.occurred_at) {
                        let age = SystemTime::now()
                            .duration_since(occurred)
                            .unwrap_or_default();
                        self.metrics.end_to_end(&self.subscription.name, age);
                    }
                    return;
                }
                Disposition::Retry { delay } => {
                    self.metrics
                        .delivery(&self.subscription.name, DeliveryOutcome::Retry);
                    let key = claim.key().to_owned();
                    claim.release().await;
                    span.record("causeway.outcome", "retry");
                    span.fail(&answer.describe());
                    event_log!(
                        warn,
                        self,
                        envelope,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        error = %answer.describe(),
                        "delivery failed; will retry"
                    );
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    self.receipt(
                        Kind::AttemptFailed,
                        envelope,
                        HopFacts {
                            attempt,
                            status: answer.status(),
                            error: Some(answer.describe()),
                            next_attempt_ms: Some(now_ms().saturating_add(delay_ms)),
                            ..HopFacts::default()
                        },
                    );
                    if !spec.ordered {
                        let wait = Fate::Wait {
                            delay,
                            attempts: attempt,
                            last: Some(&answer),
                        };
                        return self.settle(delivery, wait).await;
                    }
                    // Ordered: the message keeps its place at the head of the queue, so the
                    // wait happens here; a crash returns it to the broker unharmed.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return self.settle(delivery, Fate::Requeue).await,
                    }
                    attempt += 1;
                    span.record("causeway.delivery.attempt", attempt);
                    claim = match self.dedup.claim(&key, lease).await {
                        Ok(Claim::Acquired) => ClaimGuard::new(self.dedup.clone(), key),
                        _ => return self.settle(delivery, Fate::Requeue).await,
                    };
                }
                Disposition::DeadLetter(reason) => {
                    claim.release().await;
                    span.fail(&answer.describe());
                    let dead = Fate::DeadLetter {
                        reason,
                        attempts: attempt,
                        last_status: answer.status(),
                        last_error: answer.describe(),
                    };
                    self.dead_lettered(envelope, &dead);
                    return self.settle(delivery, dead).await;
                }
            }
        }
    }

    /// Logs a dead letter and writes down its receipt.
    fn dead_lettered(&self, envelope: &Envelope, dead: &Fate<'_>) {
        let Fate::DeadLetter {
            reason,
            attempts,
            last_status,
            last_error,
        } = dead
        else {
            return;
        };
        Span::current().record("causeway.outcome", "dead_lettered");
        event_log!(
            warn,
            self,
            envelope,
            reason = reason.as_str(),
            attempts,
            dlq = %self.queues.dlq,
            "event dead-lettered"
        );
        self.receipt(
            Kind::DeadLettered,
            envelope,
            HopFacts {
                attempt: *attempts,
                status: *last_status,
                error: Some(last_error.clone()),
                reason: Some(reason.as_str().to_owned()),
                dead_letter_queue: Some(self.queues.dlq.clone()),
                ..HopFacts::default()
            },
        );
    }

    /// Writes down a hop outcome of this subscription for the flows; never waits.
    fn receipt(&self, kind: Kind, envelope: &Envelope, facts: HopFacts) {
        if !self.receipts.is_on() {
            return;
        }
        let hop = HopFacts {
            service: self.service.clone(),
            subscription: self.subscription.name.clone(),
            max_attempts: Some(self.subscription.spec.max_attempts),
            ..facts
        };
        self.receipts
            .record(Receipt::new(kind, envelope, Some(hop)));
    }
}
