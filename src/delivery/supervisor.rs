//! Keeps one consuming connection up and one consumer running per desired subscription.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use lapin::{
    Channel, Connection, ConnectionProperties, Event,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions},
    types::{FieldTable, LongString, ShortString},
};
use tokio::{
    sync::watch,
    task::JoinHandle,
    time::{Instant, timeout},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{
    app::AppClient,
    handler::Context,
    topology::{self, Queues},
};
use crate::{
    broker::{Backoff, PublishTopology, close_gracefully, queue_depth},
    config::BrokerConfig,
    schema::SchemaRegistry,
    store::{DedupStore, EmbeddedStore},
    subscription::{Subscription, SubscriptionSpec},
    telemetry::metrics::{Connection as MetricsConnection, Metrics},
};

/// How a subscription's consumer is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the broker, or being set up.
    Starting,
    /// Queues declared, consumer running.
    Consuming,
    /// Setting up failed; retried with backoff.
    Failed(String),
}

impl State {
    /// The state's name for the API.
    pub fn name(&self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Consuming => "consuming",
            State::Failed(_) => "failed",
        }
    }
}

/// The state of one subscription and the spec it runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionState {
    /// The spec the consumer runs (or tries to run) with.
    pub spec: SubscriptionSpec,
    /// How it is doing.
    pub state: State,
}

/// Subscription states by name.
pub type States = BTreeMap<String, SubscriptionState>;

/// What the supervisor needs from the configuration.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The broker connection settings.
    pub broker: BrokerConfig,
    /// The service: prefix of its queues.
    pub service: String,
    /// How long dedup records and correlations are kept.
    pub retention: Duration,
    /// How long in-flight deliveries may take to finish at shutdown.
    pub grace: Duration,
}

/// Runs the consumers of every desired subscription on a connection of their own.
pub struct Supervisor {
    config: SupervisorConfig,
    desired: watch::Receiver<Vec<Subscription>>,
    states: watch::Sender<States>,
    app: AppClient,
    dedup: Arc<dyn DedupStore>,
    store: EmbeddedStore,
    metrics: Arc<Metrics>,
    schemas: Arc<SchemaRegistry>,
}

/// A running consumer.
struct Worker {
    subscription: Subscription,
    stop: CancellationToken,
    task: JoinHandle<Result<(), String>>,
}

/// A consumer waiting to be started (again).
struct Pending {
    subscription: Subscription,
    at: Instant,
    backoff: Backoff,
}

enum Ended {
    Shutdown,
    Lost(String),
}

const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often queue and dead-letter depths are read from the broker for the metrics.
const DEPTHS_EVERY: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

impl Supervisor {
    /// A supervisor following `desired`; the receiver follows the subscriptions' states.
    pub fn new(
        config: SupervisorConfig,
        desired: watch::Receiver<Vec<Subscription>>,
        app: AppClient,
        dedup: Arc<dyn DedupStore>,
        store: EmbeddedStore,
        metrics: Arc<Metrics>,
        schemas: Arc<SchemaRegistry>,
    ) -> (Self, watch::Receiver<States>) {
        let (states, receiver) = watch::channel(States::new());
        let supervisor = Supervisor {
            config,
            desired,
            states,
            app,
            dedup,
            store,
            metrics,
            schemas,
        };
        supervisor.mark_all_starting();
        (supervisor, receiver)
    }

    /// Runs until `shutdown`: stops consuming, lets deliveries in flight finish within the
    /// grace period, and closes the connection, which returns the rest to the broker.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                attempt = timeout(self.config.broker.connect_timeout, self.connect()) => attempt,
            };
            match attempt {
                Ok(Ok((connection, republish))) => {
                    backoff.reset();
                    info!("consumer connection open");
                    self.metrics.connected(MetricsConnection::Consume, true);
                    let mut inspector = None;
                    let ended = self
                        .serve(&connection, &republish, &mut inspector, &shutdown)
                        .await;
                    self.metrics.connected(MetricsConnection::Consume, false);
                    close_gracefully(&connection, &[Some(&republish), inspector.as_ref()]).await;
                    self.mark_all_starting();
                    match ended {
                        Ended::Shutdown => {
                            info!("consumer connection closed");
                            return;
                        }
                        Ended::Lost(error) => warn!(%error, "consumer connection lost"),
                    }
                }
                Ok(Err(error)) => warn!(%error, "cannot open the consumer connection"),
                Err(_) => warn!("opening the consumer connection timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn connect(&self) -> lapin::Result<(Connection, Channel)> {
        let name = format!("causeway {} consumer", self.config.service);
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from(name));
        let connection = Connection::connect(&self.config.broker.url, properties).await?;
        let republish = connection.create_channel().await?;
        republish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, republish))
    }

    /// Runs consumers on `connection` until it fails or `shutdown`.
    async fn serve(
        &self,
        connection: &Connection,
        republish: &Channel,
        inspector: &mut Option<Channel>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let tasks = TaskTracker::new();
        let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
        let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
        let mut desired = self.desired.clone();
        let mut events = connection.events_listener();
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut depths = tokio::time::interval(DEPTHS_EVERY);
        let wanted = desired.borrow_and_update().clone();
        self.reconcile(connection, &wanted, &mut workers, &mut pending)
            .await;
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ended::Shutdown,
                changed = desired.changed() => {
                    if changed.is_err() {
                        break Ended::Shutdown;
                    }
                    let wanted = desired.borrow_and_update().clone();
                    self.reconcile(connection, &wanted, &mut workers, &mut pending).await;
                }
                event = events.next() => match event {
                    Some(Event::Error(error)) => break Ended::Lost(error.to_string()),
                    None => break Ended::Lost("connection events ended".into()),
                    Some(_) => {}
                },
                _ = check.tick() => {
                    if !connection.status().connected() || !republish.status().connected() {
                        break Ended::Lost("connection or channel closed".into());
                    }
                    self.restart_due(&mut workers, &mut pending).await;
                }
                _ = depths.tick() => self.read_depths(connection, &workers, inspector).await,
            }
            self.start_pending(connection, republish, &tasks, &mut workers, &mut pending)
                .await;
        };
        for (name, worker) in &workers {
            // Depths are no longer read: stale values would keep alerts firing (or silent).
            self.metrics.forget_subscription(name);
            worker.stop.cancel();
            if matches!(ended, Ended::Lost(_)) {
                // The channels are gone with the connection; the broker redelivers.
                worker.task.abort();
            }
        }
        tasks.close();
        // Each consumer waits up to the grace period for its deliveries, then closes its
        // channel, which returns what is left to the broker.
        if timeout(self.config.grace + 2 * CLOSE_TIMEOUT, tasks.wait())
            .await
            .is_err()
        {
            warn!("consumers did not stop in time");
        }
        ended
    }

    /// Stops consumers no longer wanted (or changed) and queues the wanted ones to start.
    async fn reconcile(
        &self,
        connection: &Connection,
        wanted: &[Subscription],
        workers: &mut BTreeMap<String, Worker>,
        pending: &mut BTreeMap<String, Pending>,
    ) {
        let by_name: BTreeMap<&str, &Subscription> =
            wanted.iter().map(|s| (s.name.as_str(), s)).collect();
        let stale: Vec<String> = workers
            .iter()
            .filter(|(name, w)| by_name.get(name.as_str()) != Some(&&w.subscription))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let Some(worker) = workers.remove(&name) else {
                continue;
            };
            // It finishes its deliveries in flight in the background.
            worker.stop.cancel();
            if let Some(new) = by_name.get(name.as_str()) {
                self.unbind_dropped(connection, &worker.subscription, new)
                    .await;
            }
            info!(subscription = %name, "consumer stopped");
        }
        pending.retain(|name, p| by_name.get(name.as_str()) == Some(&&p.subscription));
        for subscription in wanted {
            if !workers.contains_key(&subscription.name)
                && !pending.contains_key(&subscription.name)
            {
                pending.insert(
                    subscription.name.clone(),
                    Pending {
                        subscription: subscription.clone(),
                        at: Instant::now(),
                        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
                    },
                );
            }
        }
        self.states.send_modify(|states| {
            states.retain(|name, _| {
                let wanted = by_name.contains_key(name.as_str());
                if !wanted {
                    self.metrics.forget_subscription(name);
                }
                wanted
            });
            for subscription in wanted {
                let current = states.get(&subscription.name);
                if current.is_none_or(|s| s.spec != subscription.spec) {
                    states.insert(
                        subscription.name.clone(),
                        SubscriptionState {
                            spec: subscription.spec.clone(),
                            state: State::Starting,
                        },
                    );
                }
            }
        });
    }

    /// Reads each running subscription's queue and dead-letter depths into the metrics.
    async fn read_depths(
        &self,
        connection: &Connection,
        workers: &BTreeMap<String, Worker>,
        inspector: &mut Option<Channel>,
    ) {
        if !inspector.as_ref().is_some_and(|c| c.status().connected()) {
            // A channel of its own: a failed passive declare closes the channel it ran on.
            *inspector = timeout(CHECK_EVERY, connection.create_channel())
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(channel) = inspector.as_ref() else {
            return;
        };
        for (name, worker) in workers {
            let queues = Queues::new(&self.config.service, &worker.subscription);
            let read = async {
                let main = queue_depth(channel, &queues.main).await?;
                let dead = queue_depth(channel, &queues.dlq).await?;
                Ok::<_, lapin::Error>((main, dead))
            };
            match timeout(CHECK_EVERY, read).await {
                Ok(Ok((main, dead))) => self.metrics.depths(name, main, dead),
                Ok(Err(error)) => debug!(%error, subscription = %name, "cannot read queue depths"),
                Err(_) => debug!(subscription = %name, "reading queue depths timed out"),
            }
        }
    }

    /// After `versions` changed, removes the bindings of majors no longer accepted.
    async fn unbind_dropped(
        &self,
        connection: &Connection,
        old: &Subscription,
        new: &Subscription,
    ) {
        let keep = new.binding_keys();
        let dropped: Vec<String> = old
            .binding_keys()
            .into_iter()
            .filter(|key| !keep.contains(key))
            .collect();
        if dropped.is_empty() {
            return;
        }
        let queue = Queues::new(&self.config.service, old).main;
        let result = async {
            let channel = connection.create_channel().await?;
            topology::unbind(&channel, &self.config.broker.exchange, &queue, &dropped).await?;
            channel.close(200, "done".into()).await
        };
        if let Err(error) = result.await {
            warn!(%error, queue, "cannot remove bindings the subscription no longer wants");
        }
    }

    /// Moves workers that ended (their channel failed) back to pending, with backoff.
    async fn restart_due(
        &self,
        workers: &mut BTreeMap<String, Worker>,
        pending: &mut BTreeMap<String, Pending>,
    ) {
        let ended: Vec<String> = workers
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            let Some(worker) = workers.remove(&name) else {
                continue;
            };
            let error = match worker.task.await {
                Ok(Ok(())) => "consumer stopped".to_owned(),
                Ok(Err(error)) => error,
                Err(error) => error.to_string(),
            };
            warn!(subscription = %name, %error, "consumer ended; restarting it");
            self.set_state(&worker.subscription, State::Failed(error));
            pending.insert(
                name,
                Pending {
                    subscription: worker.subscription,
                    at: Instant::now() + Duration::from_millis(500),
                    backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
                },
            );
        }
    }

    /// Starts the pending consumers whose time has come.
    async fn start_pending(
        &self,
        connection: &Connection,
        republish: &Channel,
        tasks: &TaskTracker,
        workers: &mut BTreeMap<String, Worker>,
        pending: &mut BTreeMap<String, Pending>,
    ) {
        let now = Instant::now();
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, p)| p.at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let Some(mut waiting) = pending.remove(&name) else {
                continue;
            };
            let started = timeout(
                self.config.broker.connect_timeout,
                self.start(connection, republish, tasks, &waiting.subscription),
            )
            .await
            .unwrap_or_else(|_| Err("setting up the consumer timed out".into()));
            match started {
                Ok(worker) => {
                    info!(subscription = %name, queue = %Queues::new(&self.config.service, &worker.subscription).main, "consuming");
                    self.set_state(&worker.subscription, State::Consuming);
                    workers.insert(name, worker);
                }
                Err(error) => {
                    warn!(subscription = %name, %error, "cannot start the consumer");
                    self.set_state(&waiting.subscription, State::Failed(error));
                    waiting.at = Instant::now() + waiting.backoff.next_delay();
                    pending.insert(name, waiting);
                }
            }
        }
    }

    /// Declares a subscription's queues and starts its consumer on a channel of its own.
    async fn start(
        &self,
        connection: &Connection,
        republish: &Channel,
        tasks: &TaskTracker,
        subscription: &Subscription,
    ) -> Result<Worker, String> {
        let queues = Queues::new(&self.config.service, subscription);
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        // The events exchange must exist before the queue can be bound to it.
        PublishTopology {
            exchange: self.config.broker.exchange.clone(),
            unrouted: self.config.broker.unrouted.clone(),
        }
        .declare(&channel)
        .await
        .map_err(|e| e.to_string())?;
        topology::declare(
            &channel,
            &self.config.broker.exchange,
            subscription,
            &queues,
        )
        .await
        .map_err(|e| e.to_string())?;
        channel
            .basic_qos(subscription.concurrency(), BasicQosOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let tag = format!(
            "causeway-{}-{}-{}",
            self.config.service,
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
            .await
            .map_err(|e| e.to_string())?;
        let context = Arc::new(Context {
            subscription: subscription.clone(),
            queues,
            app: self.app.clone(),
            dedup: self.dedup.clone(),
            store: self.store.clone(),
            retention: self.config.retention,
            republish: republish.clone(),
            metrics: self.metrics.clone(),
            schemas: self.schemas.clone(),
        });
        let stop = CancellationToken::new();
        let task = tasks.spawn(consume(
            context,
            channel,
            consumer,
            tag,
            stop.clone(),
            self.config.grace,
        ));
        Ok(Worker {
            subscription: subscription.clone(),
            stop,
            task,
        })
    }

    fn set_state(&self, subscription: &Subscription, state: State) {
        self.states.send_modify(|states| {
            states.insert(
                subscription.name.clone(),
                SubscriptionState {
                    spec: subscription.spec.clone(),
                    state,
                },
            );
        });
    }

    fn mark_all_starting(&self) {
        let wanted = self.desired.borrow().clone();
        self.states.send_modify(|states| {
            states.clear();
            for subscription in wanted {
                states.insert(
                    subscription.name,
                    SubscriptionState {
                        spec: subscription.spec,
                        state: State::Starting,
                    },
                );
            }
        });
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
) -> Result<(), String> {
    let deliveries = TaskTracker::new();
    let ordered = context.subscription.spec.ordered;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err("the broker cancelled the consumer".into()),
        };
        let context = context.clone();
        let task_stop = stop.clone();
        let task = deliveries.spawn(async move { context.handle(delivery, &task_stop).await });
        if ordered {
            let _ = task.await;
        }
    }
    let cancel = channel.basic_cancel(
        ShortString::from(tag.as_str()),
        BasicCancelOptions::default(),
    );
    if let Err(error) = timeout(CLOSE_TIMEOUT, cancel).await.unwrap_or(Ok(())) {
        debug!(%error, "cancelling the consumer failed");
    }
    drop(consumer);
    deliveries.close();
    if timeout(grace, deliveries.wait()).await.is_err() {
        warn!(
            subscription = %context.subscription.name,
            "deliveries still in flight at the end of the grace period go back to the broker"
        );
    }
    // Deliveries prefetched but never started go back to the queue with the channel.
    let _ = timeout(CLOSE_TIMEOUT, channel.close(200, "stopped".into())).await;
    Ok(())
}
