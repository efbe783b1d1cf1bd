//! The exchanges and queues the publish side declares on every (re)connect.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{FieldTable, ShortString},
};

use crate::amqp::text;

/// The publish-side topology:
///
/// ```text
/// events exchange (topic, durable, alternate-exchange = unrouted)
///     │ no binding matched
///     ▼
/// unrouted exchange (fanout, durable) ──► unrouted queue (quorum, durable)
/// ```
///
/// The alternate exchange is an argument of the events exchange, so the broker itself keeps
/// every event that no subscription is bound for yet, from any publisher.
#[derive(Clone, Debug)]
pub struct PublishTopology {
    /// The durable topic exchange for all events.
    pub exchange: String,
    /// Name of both the alternate exchange and the queue behind it.
    pub unrouted: String,
}

impl PublishTopology {
    /// Declares the topology; idempotent when it already exists with the same arguments.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                name(&self.unrouted),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        let mut queue_args = FieldTable::default();
        queue_args.insert("x-queue-type".into(), text("quorum"));
        channel
            .queue_declare(
                name(&self.unrouted),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                queue_args,
            )
            .await?;
        channel
            .queue_bind(
                name(&self.unrouted),
                name(&self.unrouted),
                ShortString::from(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut exchange_args = FieldTable::default();
        exchange_args.insert("alternate-exchange".into(), text(&self.unrouted));
        channel
            .exchange_declare(
                name(&self.exchange),
                ExchangeKind::Topic,
                durable,
                exchange_args,
            )
            .await
    }

    /// How many events wait in the unrouted queue.
    pub async fn unrouted_depth(&self, channel: &Channel) -> lapin::Result<u32> {
        queue_depth(channel, &self.unrouted).await
    }
}

/// The channel for reading queue depths, opened again when the last passive declare closed
/// it (a missing queue closes the channel it was asked on, and only that channel); `None`
/// when no channel could be opened within `within`.
pub async fn inspector<'a>(
    connection: &lapin::Connection,
    slot: &'a mut Option<Channel>,
    within: std::time::Duration,
) -> Option<&'a Channel> {
    if !slot.as_ref().is_some_and(|c| c.status().connected()) {
        *slot = tokio::time::timeout(within, connection.create_channel())
            .await
            .ok()
            .and_then(Result::ok);
    }
    slot.as_ref()
}

/// How many messages wait in `queue`, by a passive declare (which closes the channel when
/// the queue does not exist: use a channel of its own).
pub async fn queue_depth(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(name(queue), options, FieldTable::default())
        .await?;
    Ok(declared.message_count())
}

/// How many messages wait in `queue`, or `None` when it does not exist, by a passive
/// declare on a channel of its own (a missing queue closes the channel it is asked on).
pub async fn existing_queue_depth(
    connection: &lapin::Connection,
    queue: &str,
) -> lapin::Result<Option<u32>> {
    let probe = connection.create_channel().await?;
    match queue_depth(&probe, queue).await {
        Ok(depth) => {
            let _ = probe.close(200, "done".into()).await;
            Ok(Some(depth))
        }
        Err(error) if crate::amqp::soft_error(&error) == Some(crate::amqp::NOT_FOUND) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Exchange and queue names are checked at configuration time (at most 200 ASCII bytes), so
/// they always fit an AMQP short string.
fn name(value: &str) -> ShortString {
    ShortString::from(value)
}
