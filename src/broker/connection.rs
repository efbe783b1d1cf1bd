//! Keeps one publishing connection to the broker up, and tells everyone whether it is.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lapin::{Channel, Connection};
use tokio::{sync::watch, time::timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    PublishTopology, Recycle, SharedChannel, confirm_channel,
    dialer::{Dialer, Ended, Trouble, keep_connected, next_trouble},
};
use crate::{
    config::BrokerConfig,
    telemetry::metrics::{Connection as MetricsConnection, Metrics},
};

/// The state of the publishing link, as the publisher and `/readyz` see it.
#[derive(Clone, Debug, Default)]
pub enum Link {
    /// Not connected (yet, or any more): publishes fail fast.
    #[default]
    Down,
    /// Connected, topology declared, confirms on.
    Up(Channel),
    /// Connected, but the broker blocks publishers (a memory or disk alarm).
    Blocked(Channel),
}

impl Link {
    /// Whether publishes can go through now.
    pub fn is_up(&self) -> bool {
        matches!(self, Link::Up(_))
    }

    /// The state's name, as `/readyz` reports it.
    pub fn name(&self) -> &'static str {
        match self {
            Link::Down => "disconnected",
            Link::Up(_) => "connected",
            Link::Blocked(_) => "blocked",
        }
    }
}

/// How often the channel's health and the unrouted queue are checked while connected.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const UNROUTED_EVERY: Duration = Duration::from_secs(10);
/// The unrouted depth before the first reading.
const NOT_READ: u64 = u64::MAX;
/// How long closing the connection may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long declaring the topology on a new connection may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes the channels that are still open, then the connection, each within a bound.
///
/// lapin closes a channel by itself when its last handle is dropped; if that happens while
/// the connection is closing, the two closes race and lapin logs a connection error. Closed
/// first and explicitly, the channels are done before their handles go.
pub async fn close_gracefully(connection: &Connection, channels: &[Option<&Channel>]) {
    for channel in channels.iter().flatten() {
        if channel.status().connected() {
            let _ = timeout(CLOSE_TIMEOUT, channel.close(200, "closing".into())).await;
        }
    }
    let _ = timeout(CLOSE_TIMEOUT, connection.close(200, "closing".into())).await;
}

/// Owns the publishing connection: connects, declares the topology, watches for trouble,
/// and reconnects until shut down.
#[derive(Debug)]
pub struct Connector {
    dialer: Dialer,
    topology: PublishTopology,
    link: watch::Sender<Link>,
    recycle: Recycle,
    confirm_timeout: Duration,
    unrouted_depth: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Connector {
    /// A connector for `service`; the receiver follows the link's state.
    pub fn new(
        config: &BrokerConfig,
        service: &str,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<Link>) {
        let (link, state) = watch::channel(Link::Down);
        let topology = PublishTopology {
            exchange: config.exchange.clone(),
            unrouted: config.unrouted.clone(),
        };
        let connector = Connector {
            dialer: Dialer::new(
                &config.urls,
                config.connect_timeout,
                format!("causeway {service} publisher"),
            ),
            topology,
            link,
            recycle: Recycle::default(),
            confirm_timeout: config.confirm_timeout,
            unrouted_depth: AtomicU64::new(NOT_READ),
            metrics,
        };
        (connector, state)
    }

    /// Where the publisher asks for a fresh channel after a nack.
    pub fn recycle(&self) -> Recycle {
        self.recycle.clone()
    }

    /// Runs until `shutdown`, then closes the connection.
    pub async fn run(self, shutdown: CancellationToken) {
        keep_connected(&self.dialer, "publishing", &shutdown, |dialed| {
            self.session(dialed.connection, &shutdown)
        })
        .await;
        info!("broker connection closed");
    }

    /// Declares the topology on a fresh connection, then publishes over it until it fails.
    async fn session(&self, connection: Connection, shutdown: &CancellationToken) -> Ended {
        let setup = async {
            let channel = confirm_channel(&connection).await?;
            self.topology.declare(&channel).await?;
            Ok::<_, lapin::Error>(channel)
        };
        let channel = match timeout(SETUP_TIMEOUT, setup).await {
            Ok(Ok(channel)) => {
                SharedChannel::with_recycle(channel, "publishing", self.recycle.clone())
            }
            Ok(Err(error)) => {
                close_gracefully(&connection, &[]).await;
                return Ended::Failed(format!("cannot declare the topology: {error}"));
            }
            Err(_) => {
                close_gracefully(&connection, &[]).await;
                return Ended::Failed("declaring the topology timed out".into());
            }
        };
        self.link.send_replace(Link::Up(channel.get()));
        self.metrics.connected(MetricsConnection::Publish, true);
        let mut inspector = None;
        let ended = self
            .watch(&connection, &channel, &mut inspector, shutdown)
            .await;
        self.link.send_replace(Link::Down);
        self.metrics.connected(MetricsConnection::Publish, false);
        channel.close().await;
        close_gracefully(&connection, &[inspector.as_ref()]).await;
        ended
    }

    /// Follows the connection until it fails or `shutdown`.
    async fn watch(
        &self,
        connection: &Connection,
        channel: &SharedChannel,
        inspector: &mut Option<Channel>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut events = connection.events_listener();
        let mut check = tokio::time::interval(CHECK_EVERY);
        let mut unrouted = tokio::time::interval(UNROUTED_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                trouble = next_trouble(connection, &mut events) => match trouble {
                    Trouble::Lost(error) => return Ended::Lost(error),
                    Trouble::Blocked(reason) => {
                        warn!(%reason, "the broker blocks publishing");
                        self.link.send_replace(Link::Blocked(channel.get()));
                    }
                    Trouble::Unblocked => {
                        info!("the broker unblocked publishing");
                        self.link.send_replace(Link::Up(channel.get()));
                    }
                },
                _ = check.tick() => {
                    if !connection.status().connected() {
                        return Ended::Lost("connection is no longer open".into());
                    }
                    // A channel-level error (an exchange deleted under us, say) closes the
                    // channel for good: start over with a fresh connection and topology.
                    if !channel.get().status().connected() {
                        return Ended::Lost("publishing channel closed by the broker".into());
                    }
                }
                _ = unrouted.tick() => self.check_unrouted(connection, inspector).await,
                _ = channel.requested() => {
                    // Confirms still awaited on the old channel may come meanwhile.
                    if channel.replace(connection, self.confirm_timeout).await {
                        let blocked = matches!(*self.link.borrow(), Link::Blocked(_));
                        self.link.send_replace(if blocked {
                            Link::Blocked(channel.get())
                        } else {
                            Link::Up(channel.get())
                        });
                    }
                }
            }
        }
    }

    /// Logs when events pile up in the unrouted queue: they wait there until a subscription
    /// binds their routing key and someone moves them.
    async fn check_unrouted(&self, connection: &Connection, inspector: &mut Option<Channel>) {
        let Some(channel) = super::inspector(connection, inspector, CHECK_EVERY).await else {
            return;
        };
        let depth = match timeout(CHECK_EVERY, self.topology.unrouted_depth(channel)).await {
            Ok(Ok(depth)) => u64::from(depth),
            Ok(Err(error)) => return debug!(%error, "cannot read the unrouted queue depth"),
            Err(_) => return,
        };
        self.metrics.unrouted(depth);
        let before = self.unrouted_depth.swap(depth, Ordering::Relaxed);
        if before == NOT_READ {
            // The first reading: what waits was published before this sidecar looked.
            if depth > 0 {
                warn!(
                    queue = %self.topology.unrouted,
                    waiting = depth,
                    "events wait in the unrouted queue: no subscription was bound for them when they were published"
                );
            }
        } else if depth > before {
            warn!(
                queue = %self.topology.unrouted,
                waiting = depth,
                new = depth - before,
                "events were published that no subscription is bound for; they are kept in the unrouted queue"
            );
        }
    }
}
