//! Keeps one consuming connection up and one consumer running per desired subscription.
//! A subscription that fails is reported and retried on its own; the others go on.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use lapin::{Channel, Connection};
use tokio::{
    sync::watch,
    time::{Instant, timeout},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use super::{
    app::AppClient,
    consumer::{ConsumerError, Shared, Worker},
    state::{Board, State, States},
    topology::{self, Queues},
};
use crate::{
    broker::{
        Backoff, Dialer, Ended, SharedChannel, Trouble, close_gracefully, confirm_channel,
        keep_connected, next_trouble,
    },
    config::BrokerConfig,
    flow::Receipts,
    schema::SchemaRegistry,
    store::{DedupStore, EmbeddedStore},
    subscription::Subscription,
    telemetry::metrics::{Connection as MetricsConnection, Metrics},
};

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
    /// Where hop outcomes are written down for the flows.
    pub receipts: Receipts,
}

/// Runs the consumers of every desired subscription on a connection of their own.
pub struct Supervisor {
    dialer: Dialer,
    connect_timeout: Duration,
    desired: watch::Receiver<Vec<Subscription>>,
    board: Board,
    shared: Shared,
}

/// A consumer waiting to be started (again).
struct Retry {
    subscription: Subscription,
    at: Instant,
    backoff: Backoff,
}

impl Retry {
    fn now(subscription: Subscription) -> Self {
        Retry {
            subscription,
            at: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        }
    }
}

/// The consumers of one connection: those running and those waiting for their turn.
#[derive(Default)]
struct Consumers {
    running: BTreeMap<String, Worker>,
    waiting: BTreeMap<String, Retry>,
}

const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often queue and dead-letter depths are read from the broker for the metrics.
const DEPTHS_EVERY: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a replaced republish channel stays open for the confirms still awaited on it
/// (a move waits at most this long).
const MOVE_LINGER: Duration = Duration::from_secs(10);

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
        let (board, receiver) = Board::new(&config.service, metrics.clone());
        board.all_starting(&desired.borrow());
        let broker = config.broker;
        let supervisor = Supervisor {
            dialer: Dialer::new(
                &broker.urls,
                broker.connect_timeout,
                format!("causeway {} consumer", config.service),
            ),
            connect_timeout: broker.connect_timeout,
            desired,
            board,
            shared: Shared {
                service: config.service,
                exchange: broker.exchange,
                unrouted: broker.unrouted,
                app,
                dedup,
                store,
                retention: config.retention,
                grace: config.grace,
                metrics,
                schemas,
                receipts: config.receipts,
            },
        };
        (supervisor, receiver)
    }

    /// Runs until `shutdown`: stops consuming, lets deliveries in flight finish within the
    /// grace period, and closes the connection, which returns the rest to the broker.
    pub async fn run(self, shutdown: CancellationToken) {
        keep_connected(&self.dialer, "consumer", &shutdown, |dialed| {
            self.session(dialed.connection, &shutdown)
        })
        .await;
        info!("consumer connection closed");
    }

    /// Runs the consumers on one connection until it fails or `shutdown`.
    async fn session(&self, connection: Connection, shutdown: &CancellationToken) -> Ended {
        let republish = match timeout(self.connect_timeout, confirm_channel(&connection)).await {
            Ok(Ok(channel)) => Arc::new(SharedChannel::new(channel, "retries and dead letters")),
            Ok(Err(error)) => return Ended::Failed(error.to_string()),
            Err(_) => return Ended::Failed("opening the consumer channel timed out".into()),
        };
        self.shared
            .metrics
            .connected(MetricsConnection::Consume, true);
        let mut inspector = None;
        let ended = self
            .serve(&connection, &republish, &mut inspector, shutdown)
            .await;
        self.shared
            .metrics
            .connected(MetricsConnection::Consume, false);
        republish.close().await;
        close_gracefully(&connection, &[inspector.as_ref()]).await;
        self.board.all_starting(&self.desired.borrow());
        ended
    }

    /// Runs consumers on `connection` until it fails or `shutdown`.
    async fn serve(
        &self,
        connection: &Connection,
        republish: &Arc<SharedChannel>,
        inspector: &mut Option<Channel>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let tasks = TaskTracker::new();
        let mut consumers = Consumers::default();
        let mut desired = self.desired.clone();
        let mut events = connection.events_listener();
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut depths = tokio::time::interval(DEPTHS_EVERY);
        let wanted = desired.borrow_and_update().clone();
        self.reconcile(connection, &wanted, &mut consumers).await;
        let ended = loop {
            self.start_due(connection, republish, &tasks, &mut consumers)
                .await;
            tokio::select! {
                _ = shutdown.cancelled() => break Ended::Shutdown,
                changed = desired.changed() => {
                    if changed.is_err() {
                        break Ended::Shutdown;
                    }
                    let wanted = desired.borrow_and_update().clone();
                    self.reconcile(connection, &wanted, &mut consumers).await;
                }
                trouble = next_trouble(connection, &mut events) => {
                    if let Trouble::Lost(error) = trouble {
                        break Ended::Lost(error);
                    }
                }
                _ = check.tick() => {
                    if !connection.status().connected() {
                        break Ended::Lost("connection closed".into());
                    }
                    if !republish.get().status().connected() {
                        // Closed by the broker: moves would fail until a fresh one is open.
                        republish.nacked();
                    }
                    self.collect_ended(&mut consumers).await;
                }
                _ = republish.requested() => {
                    republish.replace(connection, MOVE_LINGER).await;
                }
                _ = depths.tick() => {
                    let running = consumers.running.values().map(|w| &w.subscription);
                    self.shared.read_depths(connection, running, inspector).await;
                }
            }
        };
        for (name, worker) in &consumers.running {
            // Depths are no longer read: stale values would keep alerts firing (or silent).
            self.shared.metrics.forget_subscription(name);
            worker.stop.cancel();
            if matches!(ended, Ended::Lost(_)) {
                // The channels are gone with the connection; the broker redelivers.
                worker.task.abort();
            }
        }
        tasks.close();
        // Each consumer waits up to the grace period for its deliveries, then closes its
        // channel, which returns what is left to the broker.
        if timeout(self.shared.grace + 2 * CLOSE_TIMEOUT, tasks.wait())
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
        consumers: &mut Consumers,
    ) {
        let by_name: BTreeMap<&str, &Subscription> =
            wanted.iter().map(|s| (s.name.as_str(), s)).collect();
        let stale: Vec<String> = consumers
            .running
            .iter()
            .filter(|(name, w)| by_name.get(name.as_str()) != Some(&&w.subscription))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let Some(worker) = consumers.running.remove(&name) else {
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
        consumers
            .waiting
            .retain(|name, r| by_name.get(name.as_str()) == Some(&&r.subscription));
        for subscription in wanted {
            if !consumers.running.contains_key(&subscription.name)
                && !consumers.waiting.contains_key(&subscription.name)
            {
                consumers
                    .waiting
                    .insert(subscription.name.clone(), Retry::now(subscription.clone()));
            }
        }
        self.board.follow(wanted);
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
        let queue = Queues::new(&self.shared.service, old).main;
        let result = async {
            let channel = connection.create_channel().await?;
            topology::unbind(&channel, &self.shared.exchange, &queue, &dropped).await?;
            channel.close(200, "done".into()).await
        };
        if let Err(error) = result.await {
            warn!(%error, queue, "cannot remove bindings the subscription no longer wants");
        }
    }

    /// Moves consumers that ended on their own (their channel failed, or the broker
    /// cancelled them) back to waiting, with backoff.
    async fn collect_ended(&self, consumers: &mut Consumers) {
        let ended: Vec<String> = consumers
            .running
            .iter()
            .filter(|(_, w)| w.task.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            let Some(worker) = consumers.running.remove(&name) else {
                continue;
            };
            let error = match worker.task.await {
                Ok(Ok(())) => "the consumer stopped".to_owned(),
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            self.board.set(&worker.subscription, State::Failed(error));
            let mut retry = Retry::now(worker.subscription);
            retry.at = Instant::now() + retry.backoff.next_delay();
            consumers.waiting.insert(name, retry);
        }
    }

    /// Starts the waiting consumers whose time has come.
    async fn start_due(
        &self,
        connection: &Connection,
        republish: &Arc<SharedChannel>,
        tasks: &TaskTracker,
        consumers: &mut Consumers,
    ) {
        let now = Instant::now();
        let due: Vec<String> = consumers
            .waiting
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            let Some(mut retry) = consumers.waiting.remove(&name) else {
                continue;
            };
            let started = timeout(
                self.connect_timeout,
                self.shared
                    .start(connection, republish, tasks, &retry.subscription),
            )
            .await
            .unwrap_or(Err(ConsumerError::Timeout));
            match started {
                Ok(worker) => {
                    self.board.set(&worker.subscription, State::Consuming);
                    consumers.running.insert(name, worker);
                }
                Err(error) => {
                    self.board
                        .set(&retry.subscription, State::Failed(error.to_string()));
                    retry.at = Instant::now() + retry.backoff.next_delay();
                    consumers.waiting.insert(name, retry);
                }
            }
        }
    }
}
