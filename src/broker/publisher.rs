//! Confirmed publishing: many publishes in flight on one channel, each awaited with a bound.

use std::{sync::Arc, time::Duration};

use lapin::{
    BasicProperties, Channel, Confirmation, PublisherConfirm, options::BasicPublishOptions,
    types::ShortString,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    time::{Instant, timeout_at},
};

use super::{Link, Recycle};

/// Publishes to the events exchange with publisher confirms.
///
/// Confirms are pipelined: each publish awaits only its own confirm, and up to
/// `max_in_flight` publishes wait at once. Every await on the broker shares one deadline,
/// `confirm_timeout` after the publish began, so no caller waits longer than that.
#[derive(Clone, Debug)]
pub struct Publisher {
    link: watch::Receiver<Link>,
    recycle: Recycle,
    exchange: ShortString,
    in_flight: Arc<Semaphore>,
    confirm_timeout: Duration,
}

/// Why a publish did not end in a confirm.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Not connected to the broker; nothing was published.
    #[error("not connected to the broker")]
    Disconnected,
    /// The broker blocks publishers (resource alarm); nothing was published.
    #[error("the broker is blocking publishers")]
    Blocked,
    /// Too many publishes waited for confirms for the whole deadline; nothing was published.
    #[error("too many publishes in flight")]
    Busy,
    /// The publish could not be sent; nothing was published.
    #[error("the publish could not be sent: {0}")]
    Send(#[source] lapin::Error),
    /// The broker refused the message (a nack); nothing was stored.
    #[error("the broker refused the event (nack)")]
    Nacked,
    /// The broker returned the message as unroutable, although the alternate exchange
    /// should have taken it: the topology is broken.
    #[error("the broker returned the event as unroutable: {0}")]
    Returned(String),
    /// No confirm came before the deadline; the event may or may not be stored.
    #[error("the broker did not confirm in time")]
    Timeout,
    /// The connection failed while waiting for the confirm; the event may or may not be
    /// stored.
    #[error("the connection failed before the confirm: {0}")]
    Lost(#[source] lapin::Error),
}

impl PublishError {
    /// Whether the broker may hold the event although the publish failed. Producers should
    /// retry such publishes with the same `Idempotency-Key`.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, PublishError::Timeout | PublishError::Lost(_))
    }
}

impl Publisher {
    /// A publisher to `exchange` over the connector's link; a nack asks the connector for
    /// a fresh channel through `recycle`.
    pub fn new(
        link: watch::Receiver<Link>,
        recycle: Recycle,
        exchange: &str,
        max_in_flight: usize,
        confirm_timeout: Duration,
    ) -> Self {
        Publisher {
            link,
            recycle,
            // Exchange names are checked at configuration time (at most 200 ASCII bytes).
            exchange: ShortString::from(exchange),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            confirm_timeout,
        }
    }

    /// Whether the broker link is up.
    pub fn is_connected(&self) -> bool {
        self.link.borrow().is_up()
    }

    /// The exchange events are published to.
    pub fn exchange(&self) -> &str {
        self.exchange.as_str()
    }

    /// The longest a publish waits for its confirm.
    pub fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }

    /// The link's state name: connected, blocked or disconnected.
    pub fn link_state(&self) -> &'static str {
        self.link.borrow().name()
    }

    /// Publishes one message (mandatory, so a missing route cannot pass unnoticed) and
    /// waits for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.start(routing_key.to_owned(), body, properties)
            .await?
            .confirmed()
            .await
    }

    /// Sends one message and returns its pending confirm. Messages started one after the
    /// other reach the queue in that order; their confirms can be awaited together.
    pub async fn start(
        &self,
        routing_key: String,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<PendingConfirm, PublishError> {
        let deadline = Instant::now() + self.confirm_timeout;
        let routing_key = ShortString::try_new(routing_key)
            .map_err(|_| PublishError::Returned("routing key longer than 255 bytes".into()))?;
        let permit = match timeout_at(deadline, self.in_flight.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => return Err(PublishError::Busy),
        };
        let channel = match &*self.link.borrow() {
            Link::Up(channel) => channel.clone(),
            Link::Blocked(_) => return Err(PublishError::Blocked),
            Link::Down => return Err(PublishError::Disconnected),
        };
        let exchange = self.exchange.clone();
        let confirm = send(&channel, exchange, routing_key, body, properties, deadline).await?;
        Ok(PendingConfirm {
            confirm,
            deadline,
            recycle: self.recycle.clone(),
            _permit: permit,
        })
    }
}

/// A published message whose confirm has not come yet; it holds its in-flight slot.
#[derive(Debug)]
pub struct PendingConfirm {
    confirm: PublisherConfirm,
    deadline: Instant,
    recycle: Recycle,
    _permit: OwnedSemaphorePermit,
}

impl PendingConfirm {
    /// Waits for the confirm until the publish's deadline.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let outcome = outcome(timeout_at(self.deadline, self.confirm).await);
        if matches!(outcome, Err(PublishError::Nacked)) {
            self.recycle.request();
        }
        outcome
    }
}

/// What a confirm (or its absence before the deadline) means.
fn outcome(
    confirm: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
) -> Result<(), PublishError> {
    match confirm {
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => {
            Err(PublishError::Returned(returned.reply_text.to_string()))
        }
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
        // Channels are put in confirm mode before anyone publishes on them.
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        Ok(Err(error)) => Err(PublishError::Lost(error)),
        Err(_) => Err(PublishError::Timeout),
    }
}

/// Publishes one mandatory message on a channel in confirm mode and waits for its confirm
/// until `deadline`. A nack, a return or a missing confirm is an error.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    body: &[u8],
    properties: BasicProperties,
    deadline: Instant,
) -> Result<(), PublishError> {
    let confirm = send(channel, exchange, routing_key, body, properties, deadline).await?;
    outcome(timeout_at(deadline, confirm).await)
}

/// Sends one mandatory message, until `deadline`; the confirm is still to come.
async fn send(
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    body: &[u8],
    properties: BasicProperties,
    deadline: Instant,
) -> Result<PublisherConfirm, PublishError> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let publish = channel.basic_publish(exchange, routing_key, options, body, properties);
    match timeout_at(deadline, publish).await {
        Ok(Ok(confirm)) => Ok(confirm),
        Ok(Err(error)) => Err(PublishError::Send(error)),
        Err(_) => Err(PublishError::Timeout),
    }
}
