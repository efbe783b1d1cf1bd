//! The publish path without HTTP: from an app's event to a confirmed envelope on the broker,
//! with idempotency keys honoured.

use std::{sync::Arc, time::Duration};

use serde_json::value::RawValue;
use tracing::{Span, debug, field::Empty, info_span, warn};
use uuid::Uuid;

use crate::{
    broker::{PendingConfirm, PublishError, Publisher},
    envelope::{
        CloudEventAttributes, Envelope, EventIdentity, SchemaVersion, TraceContext, now_rfc3339,
        uuid_text,
    },
    flow::{EventFacts, Kind, Receipt, Receipts},
    key_locks::{KeyGuard, KeyLocks},
    schema::{Invalid, SchemaRegistry},
    store::{
        CorrelationMemory, IdempotencyRecord, IdempotencyStore, StoreError, expiry_after, now_ms,
    },
    telemetry::{
        TraceExt, current_trace_id,
        metrics::{InFlight, Metrics},
        trace_of,
    },
};

/// One event an app asked to publish, checked for syntax already.
#[derive(Debug)]
pub struct PublishRequest {
    /// The event's type.
    pub event_type: String,
    /// The app's JSON payload.
    pub payload: Box<RawValue>,
    /// The schema version, when the app gave one.
    pub schema_version: Option<SchemaVersion>,
    /// The flow to join, when the app gave one.
    pub correlation_id: Option<String>,
    /// The event that caused this one.
    pub causation_id: Option<String>,
    /// The producer's key for safe retries.
    pub idempotency_key: Option<String>,
    /// The trace to continue.
    pub trace: TraceContext,
    /// What the event brings of its own when it came as a CloudEvent.
    pub given: Option<Box<Given>>,
}

/// What an event published as a CloudEvent brings of its own (see docs/cloudevents.md).
#[derive(Debug)]
pub struct Given {
    /// Its event id, from its `id`.
    pub event_id: Uuid,
    /// Its `time`, as `occurred_at` carries it.
    pub occurred_at: Option<String>,
    /// The attributes the envelope keeps to give back.
    pub attributes: CloudEventAttributes,
}

/// The answer to an accepted publish: who the new event is.
pub type Accepted = EventIdentity;

/// Why a publish was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// The broker did not take it.
    #[error(transparent)]
    Broker(#[from] PublishError),
    /// The idempotency store failed; nothing was published.
    #[error("idempotency store: {0}")]
    Store(#[from] StoreError),
    /// Another request with the same key did not finish within the confirm timeout.
    #[error("a request with this Idempotency-Key is still in progress")]
    KeyBusy,
    /// The key was first used for another event type.
    #[error("the Idempotency-Key was first used for event type {first}")]
    KeyReused {
        /// The event type the key was first used with.
        first: String,
    },
    /// The payload does not match its schema, or its version is not registered.
    #[error(transparent)]
    Schema(#[from] Invalid),
    /// The envelope does not fit AMQP properties.
    #[error(transparent)]
    Envelope(#[from] crate::envelope::EnvelopeError),
}

/// Turns app events into confirmed envelopes.
#[derive(Clone)]
pub struct PublishService {
    source: Arc<str>,
    /// The producer span's name, `send {exchange}`.
    send_name: Arc<str>,
    publisher: Publisher,
    keys: Arc<dyn IdempotencyStore>,
    causes: Arc<dyn CorrelationMemory>,
    locks: Arc<KeyLocks>,
    retention: Duration,
    metrics: Arc<Metrics>,
    schemas: Arc<SchemaRegistry>,
    receipts: Receipts,
}

impl std::fmt::Debug for PublishService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishService")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl PublishService {
    /// A service publishing as `source` and keeping idempotency keys for `retention`.
    pub fn new(
        source: &str,
        publisher: Publisher,
        keys: Arc<dyn IdempotencyStore>,
        causes: Arc<dyn CorrelationMemory>,
        retention: Duration,
        metrics: Arc<Metrics>,
        schemas: Arc<SchemaRegistry>,
    ) -> Self {
        PublishService {
            source: source.into(),
            send_name: format!("send {}", publisher.exchange()).into(),
            publisher,
            keys,
            causes,
            locks: Arc::default(),
            retention,
            receipts: Receipts::off(metrics.clone()),
            metrics,
            schemas,
        }
    }

    /// The same service, writing a `published` flow receipt for each event confirmed.
    pub fn with_receipts(self, receipts: Receipts) -> Self {
        PublishService { receipts, ..self }
    }

    /// Whether the broker link is up.
    pub fn is_connected(&self) -> bool {
        self.publisher.is_connected()
    }

    /// The broker link's state name: connected, blocked or disconnected.
    pub fn link_state(&self) -> &'static str {
        self.publisher.link_state()
    }

    /// Publishes one event and returns once the broker confirmed it.
    pub async fn publish(&self, mut request: PublishRequest) -> Result<Accepted, Rejected> {
        self.check(&mut request)?;
        let prepared = self.prepare(request).await?;
        let result = match prepared.envelope {
            Ready::Done(accepted) => return Ok(accepted),
            Ready::Send(envelope, trace) => match self.start(envelope, trace).await {
                Ok(sending) => sending.finish().await,
                Err(rejected) => Err(rejected),
            },
        };
        self.settle(prepared.key, result).await
    }

    /// Publishes checked events in their order and awaits their confirms together: one
    /// result per event, in the same order. Events must not share an idempotency key.
    pub async fn publish_all(
        &self,
        requests: Vec<PublishRequest>,
    ) -> Vec<Result<Accepted, Rejected>> {
        let mut prepared = Vec::with_capacity(requests.len());
        for request in requests {
            prepared.push(self.prepare(request).await);
        }
        // Sent one after the other, so that the queue holds them in this order.
        let mut pending = Vec::with_capacity(prepared.len());
        for item in prepared {
            pending.push(match item {
                Err(rejected) => (None, Pending::Failed(rejected)),
                Ok(Prepared {
                    key,
                    envelope: Ready::Done(accepted),
                }) => (key, Pending::Done(accepted)),
                Ok(Prepared {
                    key,
                    envelope: Ready::Send(envelope, trace),
                }) => match self.start(envelope, trace).await {
                    Ok(sending) => (key, Pending::Sent(sending)),
                    Err(rejected) => (key, Pending::Failed(rejected)),
                },
            });
        }
        let finished =
            futures_util::future::join_all(pending.into_iter().map(|(key, pending)| async move {
                let result = match pending {
                    Pending::Done(accepted) => return Ok(accepted),
                    Pending::Failed(rejected) => Err(rejected),
                    Pending::Sent(sending) => sending.finish().await,
                };
                self.settle(key, result).await
            }));
        finished.await
    }

    /// Settles the version, the correlation id and, with an idempotency key, the identity
    /// the key already names (or a new one, recorded before it is published).
    async fn prepare(&self, mut request: PublishRequest) -> Result<Prepared<'_>, Rejected> {
        if request.correlation_id.is_none() {
            request.correlation_id = self.inherited_correlation(request.causation_id.as_deref());
        }
        let Some(key) = request.idempotency_key.clone() else {
            let (envelope, trace) = self.envelope(request, None);
            return Ok(Prepared {
                key: None,
                envelope: Ready::Send(envelope, trace),
            });
        };
        // One request per key at a time in this sidecar: a concurrent retry waits for the
        // first attempt's outcome instead of racing it.
        let store_key = format!("{}/{}", self.source, key);
        let wait = self.publisher.confirm_timeout();
        let Ok(guard) = tokio::time::timeout(wait, self.locks.lock(&store_key)).await else {
            return Err(Rejected::KeyBusy);
        };
        let earlier = self.keys.get_key(&store_key).await?;
        if let Some(record) = &earlier {
            if record.event.event_type != request.event_type {
                return Err(Rejected::KeyReused {
                    first: record.event.event_type.clone(),
                });
            }
            if record.confirmed {
                debug!(event_id = %record.event.event_id, "idempotent publish answered from the store");
                return Ok(Prepared {
                    key: None,
                    envelope: Ready::Done(record.event.clone()),
                });
            }
        }
        let (envelope, trace) = self.envelope(request, earlier.as_ref());
        let record = IdempotencyRecord {
            event: envelope.identity(),
            confirmed: false,
            expires_at_ms: expiry_after(self.retention),
        };
        // Written before publishing: if the confirm never comes, a retry reuses this
        // event_id, so a second copy on the broker is a duplicate, not a second event.
        if earlier.is_none() {
            self.keys.put_key(&store_key, record.clone()).await?;
        }
        Ok(Prepared {
            key: Some(KeyHold {
                store_key,
                record,
                fresh: earlier.is_none(),
                _guard: guard,
            }),
            envelope: Ready::Send(envelope, trace),
        })
    }

    /// Records what became of a keyed publish: confirmed, or (when nothing was published)
    /// forgotten so that the key can be used afresh.
    async fn settle(
        &self,
        key: Option<KeyHold<'_>>,
        result: Result<Accepted, Rejected>,
    ) -> Result<Accepted, Rejected> {
        if let Ok(accepted) = &result {
            self.published(accepted);
        }
        let Some(mut key) = key else {
            return result;
        };
        match &result {
            Ok(accepted) => {
                key.record.confirmed = true;
                if let Err(error) = self.keys.put_key(&key.store_key, key.record).await {
                    // The event is on the broker; a retry would publish the same event_id
                    // again, which delivery deduplicates. Success is the right answer.
                    warn!(%error, event_id = %accepted.event_id, "cannot mark the idempotency key confirmed");
                }
            }
            Err(Rejected::Broker(error)) if key.fresh && !error.outcome_unknown() => {
                if let Err(store_error) = self.keys.remove_key(&key.store_key).await {
                    warn!(error = %store_error, "cannot forget an unused idempotency key");
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Writes down the `published` receipt of a confirmed event.
    fn published(&self, accepted: &Accepted) {
        if !self.receipts.is_on() {
            return;
        }
        self.receipts.record(Receipt {
            kind: Kind::Published,
            at_ms: now_ms(),
            correlation_id: accepted.correlation_id.clone(),
            event: EventFacts {
                event_id: uuid_text(&accepted.event_id, &mut Uuid::encode_buffer()).to_owned(),
                event_type: accepted.event_type.clone(),
                schema_version: accepted.schema_version.text(),
                source: self.source.to_string(),
                occurred_at: accepted.occurred_at.clone(),
                causation_id: accepted.causation_id.clone(),
            },
            hop: None,
        });
    }

    /// Checks the payload against its schema and settles the version (the one asked for,
    /// or the highest registered).
    pub fn check(&self, request: &mut PublishRequest) -> Result<(), Invalid> {
        let version = self.schemas.check(
            &request.event_type,
            request.schema_version,
            &request.payload,
        )?;
        request.schema_version = Some(version);
        Ok(())
    }

    /// The correlation id of the causing event, when this sidecar delivered it: an app that
    /// reacts to an event only has to echo its id in `X-Causation-ID` to stay in the flow.
    fn inherited_correlation(&self, causation_id: Option<&str>) -> Option<String> {
        match self.causes.correlation_of(causation_id?) {
            Ok(found) => found,
            // The store's outage is logged once by its health, not per publish.
            Err(error) if error.is_unavailable() => {
                debug!(%error, "cannot look up the causing event's correlation id");
                None
            }
            Err(error) => {
                warn!(%error, "cannot look up the causing event's correlation id");
                None
            }
        }
    }

    /// Builds the envelope, reusing the identity of an unconfirmed earlier attempt. A
    /// CloudEvent keeps its id and time, and without a correlation id starts a flow named
    /// after its id, so that sending it again builds the same envelope.
    fn envelope(
        &self,
        request: PublishRequest,
        earlier: Option<&IdempotencyRecord>,
    ) -> (Envelope, TraceContext) {
        let given = request.given.map(|given| *given);
        let identity = match earlier {
            Some(record) => record.event.clone(),
            None => {
                let event_id = given.as_ref().map_or_else(Uuid::now_v7, |g| g.event_id);
                let correlation_id = request.correlation_id.unwrap_or_else(|| match &given {
                    Some(_) => event_id.to_string(),
                    None => Uuid::now_v7().to_string(),
                });
                EventIdentity {
                    event_id,
                    event_type: request.event_type,
                    schema_version: request.schema_version.unwrap_or(SchemaVersion::DEFAULT),
                    correlation_id,
                    causation_id: request.causation_id,
                    occurred_at: given
                        .as_ref()
                        .and_then(|g| g.occurred_at.clone())
                        .unwrap_or_else(now_rfc3339),
                }
            }
        };
        let mut envelope = Envelope::new(identity, &self.source, request.payload);
        envelope.cloudevents = given
            .map(|g| g.attributes)
            .filter(|a| !a.is_empty())
            .map(Box::new);
        (envelope, request.trace)
    }

    /// Sends the envelope in a PRODUCER span whose context travels in the AMQP headers, so
    /// that the consumer's span becomes its child; the confirm is still to come.
    async fn start(
        &self,
        envelope: Envelope,
        trace: TraceContext,
    ) -> Result<SendingConfirm, Rejected> {
        let routing_key = envelope.routing_key();
        let exchange = self.publisher.exchange();
        let span = info_span!(
            "send",
            otel.name = &*self.send_name,
            otel.kind = "producer",
            otel.status_code = Empty,
            otel.status_description = Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = exchange,
            messaging.rabbitmq.destination.routing_key = routing_key.as_str(),
            messaging.message.id = %envelope.event_id,
            messaging.message.conversation_id = envelope.correlation_id.as_str(),
            causeway.event_type = envelope.event_type.as_str(),
            causeway.causation_id = envelope.causation_id.as_deref(),
            causeway.schema_version = %envelope.schema_version,
        );
        if Span::current().is_disabled() {
            // Not inside a server span: continue the caller's trace directly.
            span.continue_trace(&trace);
        }
        // Without tracing installed, the caller's context passes through unchanged.
        let trace = trace_of(&span).unwrap_or(trace);
        let properties = crate::cloudevents::amqp::properties(&envelope, &trace)?;
        let in_flight = self.metrics.in_flight("publish");
        let body = envelope.to_json();
        let identity = envelope.into_identity();
        // The span is not entered while the broker is awaited: each poll would enter and
        // leave it (a registry lookup and a clock read each time), and nothing logs in
        // there. It ends when it is dropped, after the confirm.
        let started = self.publisher.start(routing_key, &body, properties).await;
        drop(body);
        let sending = Sending {
            identity,
            span,
            _in_flight: in_flight,
        };
        match started {
            Ok(pending) => Ok(sending.with(pending)),
            Err(error) => Err(sending.failed(error)),
        }
    }
}

/// A publish made ready.
struct Prepared<'a> {
    key: Option<KeyHold<'a>>,
    envelope: Ready,
}

enum Ready {
    /// The key names an event the broker already confirmed: answer with it.
    Done(Accepted),
    /// Publish this.
    Send(Envelope, TraceContext),
}

/// An idempotency key held for one publish, with its record.
struct KeyHold<'a> {
    store_key: String,
    record: IdempotencyRecord,
    /// No earlier attempt had written the record.
    fresh: bool,
    _guard: KeyGuard<'a>,
}

enum Pending {
    Done(Accepted),
    Sent(SendingConfirm),
    Failed(Rejected),
}

/// An event on its way, in its producer span.
struct Sending {
    identity: EventIdentity,
    span: Span,
    _in_flight: InFlight,
}

/// An event sent, waiting for its confirm.
struct SendingConfirm {
    sending: Sending,
    pending: PendingConfirm,
}

impl Sending {
    fn with(self, pending: PendingConfirm) -> SendingConfirm {
        SendingConfirm {
            sending: self,
            pending,
        }
    }

    fn failed(&self, error: PublishError) -> Rejected {
        let event = &self.identity;
        self.span.fail(&error.to_string());
        let _entered = self.span.enter();
        warn!(
            %error,
            outcome_unknown = error.outcome_unknown(),
            event_id = %event.event_id,
            event_type = %event.event_type,
            correlation_id = %event.correlation_id,
            causation_id = event.causation_id.as_deref(),
            trace_id = %current_trace_id(),
            "publish failed"
        );
        error.into()
    }
}

impl SendingConfirm {
    /// Waits for the confirm.
    async fn finish(self) -> Result<Accepted, Rejected> {
        match self.pending.confirmed().await {
            Ok(()) => Ok(self.sending.identity),
            Err(error) => Err(self.sending.failed(error)),
        }
    }
}
