//! The queues of one subscription, and their declaration.
//!
//! ```text
//! events exchange ──{event_type}.v{major}──► {service}.{name}  (quorum; the app's queue)
//!                                                │  retry: published to wait tier k with a
//!                                                │  per-message TTL; on expiry the broker
//!                                                ▼  dead-letters it back into the main queue
//!                                  {service}.{name}.retry.{k}  (quorum, TTL → main queue,
//!                                                               at-least-once dead-lettering)
//!                                  {service}.{name}.dlq        (classic; dead letters)
//! ```

use lapin::{
    Channel,
    options::{QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use super::outcome::wait_tiers;
use crate::{amqp::text, subscription::Subscription};

/// The queue names of one subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queues {
    /// The main queue, shared by every replica of the service.
    pub main: String,
    /// Where dead letters wait for someone to look.
    pub dlq: String,
    /// Retry wait queues, tier 1 first.
    pub waits: Vec<String>,
}

impl Queues {
    /// The names for `subscription` of `service`.
    pub fn new(service: &str, subscription: &Subscription) -> Self {
        let main = format!("{service}.{}", subscription.name);
        let waits = (1..=wait_tiers(&subscription.spec))
            .map(|tier| format!("{main}.retry.{tier}"))
            .collect();
        Queues {
            dlq: format!("{main}.dlq"),
            main,
            waits,
        }
    }

    /// The wait queue of a 1-based tier.
    pub fn wait(&self, tier: u32) -> &str {
        let index = usize::try_from(tier.saturating_sub(1)).unwrap_or(0);
        self.waits
            .get(index)
            .or(self.waits.last())
            .map_or(self.main.as_str(), String::as_str)
    }
}

/// Declares the subscription's queues and binds the main queue to the events exchange.
///
/// Idempotent. Fails (and closes the channel) when a queue already exists with other
/// arguments, for example after `ordered` changed.
pub async fn declare(
    channel: &Channel,
    exchange: &str,
    subscription: &Subscription,
    queues: &Queues,
) -> lapin::Result<()> {
    let mut main_args = quorum();
    if subscription.spec.ordered {
        main_args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    declare_queue(channel, &queues.main, main_args).await?;
    // Classic, not quorum: RabbitMQ 3.10 quorum queues put returned messages at the back,
    // so every listing (read, then return) would reorder the dead letters. A classic queue
    // returns them to their place.
    let mut dlq_args = FieldTable::default();
    dlq_args.insert("x-queue-type".into(), text("classic"));
    declare_queue(channel, &queues.dlq, dlq_args).await?;
    for wait in &queues.waits {
        let mut args = quorum();
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(&queues.main));
        // The way back to the main queue is the retry itself: the broker keeps the message
        // until the main queue has confirmed it (RabbitMQ's default drops it on the way if
        // the main queue is unavailable at that moment). At-least-once requires the
        // reject-publish overflow mode.
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
        declare_queue(channel, wait, args).await?;
    }
    for key in subscription.binding_keys() {
        channel
            .queue_bind(
                name(&queues.main),
                name(exchange),
                name(&key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Removes bindings a subscription no longer wants (after its `versions` changed).
pub async fn unbind(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    keys: &[String],
) -> lapin::Result<()> {
    for key in keys {
        channel
            .queue_unbind(
                name(queue),
                name(exchange),
                name(key),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

async fn declare_queue(channel: &Channel, queue: &str, args: FieldTable) -> lapin::Result<()> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(name(queue), options, args).await?;
    Ok(())
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

/// Queue names are at most 100 (service) + 1 + 100 (name) + 12 bytes of suffix, and binding
/// keys at most 128 + 11: always within an AMQP short string.
fn name(value: &str) -> ShortString {
    ShortString::from(value)
}
