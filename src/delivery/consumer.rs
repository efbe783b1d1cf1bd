//! One subscription's consumer: declares its queues on a channel of its own, consumes, and
//! hands each message to the handler. A failure here closes at most that channel.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{FieldTable, ShortString},
};
use tokio::{task::JoinHandle, time::timeout};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use super::{
    acks::Acks,
    app::AppClient,
    handler::Context,
    topology::{self, Queues},
};
use crate::{
    broker::{self, PublishTopology, SharedChannel, queue_depth},
    flow::Receipts,
    schema::SchemaRegistry,
    store::{DedupStore, EmbeddedStore},
    subscription::Subscription,
    telemetry::metrics::Metrics,
};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long reading one subscription's depths may take.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a consumer could not start or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The broker refused a declaration or the consume, or the channel failed.
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    /// Setting up took longer than the connect timeout.
    #[error("setting up the consumer timed out")]
    Timeout,
    /// A classic dead-letter queue could not be upgraded to a quorum queue.
    #[error("upgrading the dead-letter queue: {0}")]
    Upgrade(#[from] topology::UpgradeError),
    /// The broker cancelled the consumer (its queue was deleted, say).
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

/// What every consumer of one sidecar shares.
pub(crate) struct Shared {
    pub(crate) service: String,
    pub(crate) exchange: String,
    pub(crate) unrouted: String,
    pub(crate) app: AppClient,
    pub(crate) dedup: Arc<dyn DedupStore>,
    pub(crate) store: EmbeddedStore,
    pub(crate) retention: Duration,
    pub(crate) grace: Duration,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) schemas: Arc<SchemaRegistry>,
    pub(crate) receipts: Receipts,
}

/// A running consumer.
pub(crate) struct Worker {
    pub(crate) subscription: Subscription,
    pub(crate) stop: CancellationToken,
    pub(crate) task: JoinHandle<Result<(), ConsumerError>>,
}

impl Shared {
    /// Declares a subscription's queues and starts its consumer on a channel of its own.
    /// On failure the channel is closed (the broker may have closed it already).
    pub(crate) async fn start(
        &self,
        connection: &Connection,
        republish: &Arc<SharedChannel>,
        tasks: &TaskTracker,
        subscription: &Subscription,
    ) -> Result<Worker, ConsumerError> {
        topology::upgrade_dead_letters(connection, &Queues::new(&self.service, subscription))
            .await?;
        let channel = connection.create_channel().await?;
        match self
            .consume_on(&channel, republish, tasks, subscription)
            .await
        {
            Ok(worker) => Ok(worker),
            Err(error) => {
                if channel.status().connected() {
                    let _ = timeout(CLOSE_TIMEOUT, channel.close(200, "setup failed".into())).await;
                }
                Err(error)
            }
        }
    }

    async fn consume_on(
        &self,
        channel: &Channel,
        republish: &Arc<SharedChannel>,
        tasks: &TaskTracker,
        subscription: &Subscription,
    ) -> Result<Worker, ConsumerError> {
        let queues = Queues::new(&self.service, subscription);
        // The events exchange must exist before the queue can be bound to it.
        PublishTopology {
            exchange: self.exchange.clone(),
            unrouted: self.unrouted.clone(),
        }
        .declare(channel)
        .await?;
        topology::declare(channel, &self.exchange, subscription, &queues).await?;
        channel
            .basic_qos(subscription.concurrency(), BasicQosOptions::default())
            .await?;
        let tag = format!(
            "causeway-{}-{}-{}",
            self.service,
            subscription.name,
            uuid::Uuid::now_v7().simple()
        );
        let consumer = channel
            .basic_consume(
                ShortString::from(queues.main.as_str()),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let context = Arc::new(Context {
            subscription: subscription.clone(),
            queues,
            app: self.app.clone(),
            dedup: self.dedup.clone(),
            store: self.store.clone(),
            retention: self.retention,
            republish: republish.clone(),
            metrics: self.metrics.clone(),
            schemas: self.schemas.clone(),
            service: self.service.clone(),
            receipts: self.receipts.clone(),
            acks: Acks::new(),
        });
        let stop = CancellationToken::new();
        let task = tasks.spawn(consume(
            context,
            channel.clone(),
            consumer,
            tag,
            stop.clone(),
            self.grace,
        ));
        Ok(Worker {
            subscription: subscription.clone(),
            stop,
            task,
        })
    }

    /// Reads each running subscription's queue and dead-letter depths into the metrics, on
    /// `inspector`, a channel of its own: a passive declare of a missing queue closes the
    /// channel it ran on (and only that channel).
    pub(crate) async fn read_depths<'a>(
        &self,
        connection: &Connection,
        subscriptions: impl Iterator<Item = &'a Subscription>,
        inspector: &mut Option<Channel>,
    ) {
        for subscription in subscriptions {
            let Some(channel) = broker::inspector(connection, inspector, DEPTH_TIMEOUT).await
            else {
                return;
            };
            let queues = Queues::new(&self.service, subscription);
            let read = async {
                let main = queue_depth(channel, &queues.main).await?;
                let dead = queue_depth(channel, &queues.dlq).await?;
                Ok::<_, lapin::Error>((main, dead))
            };
            let name = &subscription.name;
            match timeout(DEPTH_TIMEOUT, read).await {
                Ok(Ok((main, dead))) => self.metrics.depths(name, main, dead),
                Ok(Err(error)) => debug!(%error, subscription = %name, "cannot read queue depths"),
                Err(_) => debug!(subscription = %name, "reading queue depths timed out"),
            }
        }
    }
}

/// Takes deliveries from one subscription's consumer until `stop`, each handled as a task
/// of its own (prefetch bounds how many run at once; ordered subscriptions handle one at a
/// time). After `stop`, the deliveries in flight get `grace` to finish; closing the channel
/// then returns everything unacknowledged to the broker.
async fn consume(
    context: Arc<Context>,
    channel: Channel,
    mut consumer: lapin::Consumer,
    tag: String,
    stop: CancellationToken,
    grace: Duration,
) -> Result<(), ConsumerError> {
    let deliveries = TaskTracker::new();
    let ordered = context.subscription.spec.ordered;
    let acking = CancellationToken::new();
    let acker = tokio::spawn(context.acks.clone().run(channel.clone(), acking.clone()));
    let ended = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => break Err(ConsumerError::Broker(error)),
            None => break Err(ConsumerError::Cancelled),
        };
        context.acks.received(delivery.delivery_tag);
        let context = context.clone();
        let task_stop = stop.clone();
        let task = deliveries.spawn(async move { context.handle(delivery, &task_stop).await });
        if ordered {
            let _ = task.await;
        }
    };
    if channel.status().connected() {
        let cancel = channel.basic_cancel(
            ShortString::from(tag.as_str()),
            BasicCancelOptions::default(),
        );
        if let Err(error) = timeout(CLOSE_TIMEOUT, cancel).await.unwrap_or(Ok(())) {
            debug!(%error, "cancelling the consumer failed");
        }
    }
    drop(consumer);
    deliveries.close();
    if timeout(grace, deliveries.wait()).await.is_err() {
        warn!(
            subscription = %context.subscription.name,
            "deliveries still in flight at the end of the grace period go back to the broker"
        );
    }
    // The acks of the deliveries done go out before the channel closes.
    acking.cancel();
    if timeout(CLOSE_TIMEOUT, acker).await.is_err() {
        debug!("sending the last acks timed out");
    }
    // Deliveries prefetched but never started go back to the queue with the channel.
    if channel.status().connected() {
        let _ = timeout(CLOSE_TIMEOUT, channel.close(200, "stopped".into())).await;
    }
    ended
}
