//! The queues of one subscription, and their declaration.
//!
//! ```text
//! events exchange ──{event_type}.v{major}──► {service}.{name}  (quorum; the app's queue)
//!                                                │  retry: published to wait tier k with a
//!                                                │  per-message TTL; on expiry the broker
//!                                                ▼  dead-letters it back into the main queue
//!                                  {service}.{name}.retry.{k}  (quorum, TTL → main queue,
//!                                                               at-least-once dead-lettering)
//!                                  {service}.{name}.dlq        (quorum; dead letters)
//! ```
//!
//! Every queue is a quorum queue, replicated over the cluster's nodes: none is lost with a
//! node. A dead-letter queue that an earlier version declared as a classic queue is moved
//! into a quorum queue of the same name the first time the subscription starts.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::time::Instant;
use tracing::{info, warn};

use super::outcome::wait_tiers;
use crate::{
    amqp::{PRECONDITION_FAILED, RESOURCE_LOCKED, soft_error, text},
    broker::{Backoff, PublishError, confirm_channel, existing_queue_depth, publish_confirmed},
    subscription::Subscription,
};

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
/// arguments, for example after `ordered` changed. Run [`upgrade_dead_letters`] first.
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
    declare_queue(channel, &queues.dlq, dead_letter_args()).await?;
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

/// The dead-letter queue's arguments: a quorum queue whose messages are never dropped for
/// being returned too often. Every listing returns each message once, and RabbitMQ 4 gives
/// quorum queues a default delivery limit of 20, past which a message would be dropped.
fn dead_letter_args() -> FieldTable {
    let mut args = quorum();
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(DEAD_LETTER_DELIVERY_LIMIT),
    );
    args
}

/// Returns a dead letter may take (listings, replays of others): practically unlimited.
const DEAD_LETTER_DELIVERY_LIMIT: i32 = 1_000_000_000;

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

/// Why moving a classic dead-letter queue into a quorum queue failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// A message could not be moved; it stays where it was.
    #[error("moving a dead letter: {0}")]
    Publish(#[from] PublishError),
}

/// How long moving one message may take.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes sure the dead-letter queue is a quorum queue. One that an earlier version declared
/// as a classic queue (the broker refuses the quorum declaration with PRECONDITION_FAILED)
/// is moved, message by message with confirms, to `{dlq}.upgrading`, deleted, declared
/// again as a quorum queue, and filled back in order. A move interrupted by a crash is
/// finished the next time. Replicas take turns through the dead-letter lock.
pub async fn upgrade_dead_letters(
    connection: &Connection,
    queues: &Queues,
) -> Result<(), UpgradeError> {
    let probe = connection.create_channel().await?;
    match declare_queue(&probe, &queues.dlq, dead_letter_args()).await {
        Ok(()) => {
            let _ = probe.close(200, "declared".into()).await;
            let holding = holding_queue(&queues.dlq);
            if existing_queue_depth(connection, &holding).await?.is_some() {
                let lock = lock_across_replicas(connection, &queues.dlq).await?;
                let finished = finish_upgrade(connection, &holding, &queues.dlq).await;
                lock.release().await;
                finished?;
            }
            Ok(())
        }
        // Only a queue of another type is upgraded; any other difference in arguments is
        // the subscription's failure to report, with the broker's reason.
        Err(error)
            if soft_error(&error) == Some(PRECONDITION_FAILED)
                && error.to_string().contains("'x-queue-type'") =>
        {
            let lock = lock_across_replicas(connection, &queues.dlq).await?;
            let upgraded = upgrade_classic(connection, queues).await;
            lock.release().await;
            let moved = upgraded?;
            info!(queue = %queues.dlq, moved, "dead-letter queue upgraded to a replicated quorum queue");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Moves a classic dead-letter queue's messages aside, declares it again as a quorum queue
/// and moves them back; returns how many moved.
async fn upgrade_classic(connection: &Connection, queues: &Queues) -> Result<u64, UpgradeError> {
    let holding = holding_queue(&queues.dlq);
    let channel = confirm_channel(connection).await?;
    declare_queue(&channel, &holding, quorum()).await?;
    let moved = move_all(&channel, &queues.dlq, &holding).await?;
    // The classic queue: `if_empty`, in case an older replica dead-lettered meanwhile.
    let delete = QueueDeleteOptions {
        if_empty: true,
        ..QueueDeleteOptions::default()
    };
    channel.queue_delete(name(&queues.dlq), delete).await?;
    declare_queue(&channel, &queues.dlq, dead_letter_args()).await?;
    let _ = channel.close(200, "upgraded".into()).await;
    finish_upgrade(connection, &holding, &queues.dlq).await?;
    Ok(moved)
}

/// Moves what waits in `holding` to `dlq` and deletes `holding`.
async fn finish_upgrade(
    connection: &Connection,
    holding: &str,
    dlq: &str,
) -> Result<(), UpgradeError> {
    let channel = confirm_channel(connection).await?;
    let moved = move_all(&channel, holding, dlq).await?;
    // Only this move, under the lock, puts messages there, and it has just emptied it.
    // (Quorum queues do not take `if_empty`: the broker closes the connection for it.)
    channel
        .queue_delete(name(holding), QueueDeleteOptions::default())
        .await?;
    let _ = channel.close(200, "done".into()).await;
    if moved > 0 {
        warn!(queue = %dlq, moved, "finished moving dead letters into the quorum dead-letter queue");
    }
    Ok(())
}

fn holding_queue(dlq: &str) -> String {
    format!("{dlq}.upgrading")
}

/// Moves every message of `from` to `to` in order, each confirmed before its original is
/// acked: a failure leaves it in `from`.
async fn move_all(channel: &Channel, from: &str, to: &str) -> Result<u64, UpgradeError> {
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(name(from), BasicGetOptions { no_ack: false })
        .await?
    {
        let delivery = message.delivery;
        let properties: BasicProperties = delivery.properties.clone();
        publish_confirmed(
            channel,
            ShortString::from(""),
            name(to),
            &delivery.data,
            properties,
            Instant::now() + MOVE_TIMEOUT,
        )
        .await?;
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await?;
        moved += 1;
    }
    Ok(moved)
}

/// The lock on one dead-letter queue's operations, across every replica of the service:
/// an exclusive queue named `{dlq}.lock`, which only one connection in the whole cluster
/// can hold, and which the broker deletes when that connection ends, also when its holder
/// crashes. Released by [`ReplicaLock::release`] or with its connection.
pub(crate) struct ReplicaLock {
    channel: Channel,
    queue: String,
    released: bool,
}

impl ReplicaLock {
    /// Deletes the lock queue, so that the next replica can take it.
    pub(crate) async fn release(mut self) {
        self.released = true;
        unlock(&self.channel, &self.queue).await;
    }
}

impl Drop for ReplicaLock {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Dropped unreleased (a timeout cut the work short): release in the background, as
        // the connection that holds the lock may live on for long.
        let channel = self.channel.clone();
        let queue = std::mem::take(&mut self.queue);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { unlock(&channel, &queue).await });
        }
    }
}

async fn unlock(channel: &Channel, queue: &str) {
    if !channel.status().connected() {
        // Gone with its channel's connection, or released with it.
        return;
    }
    let deleted = channel
        .queue_delete(name(queue), QueueDeleteOptions::default())
        .await;
    if let Err(error) = deleted {
        warn!(%error, queue, "cannot release the dead-letter lock; it goes with the connection");
    }
    let _ = channel.close(200, "unlocked".into()).await;
}

/// Takes the [`ReplicaLock`] of `dlq`. A replica that finds it held (RESOURCE_LOCKED) waits
/// and tries again; the caller bounds the wait.
pub(crate) async fn lock_across_replicas(
    connection: &Connection,
    dlq: &str,
) -> lapin::Result<ReplicaLock> {
    let queue = format!("{dlq}.lock");
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        let channel = connection.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), text("classic"));
        let options = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        match channel.queue_declare(name(&queue), options, args).await {
            Ok(_) => {
                return Ok(ReplicaLock {
                    channel,
                    queue,
                    released: false,
                });
            }
            Err(error) if soft_error(&error) == Some(RESOURCE_LOCKED) => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(error),
        }
    }
}
