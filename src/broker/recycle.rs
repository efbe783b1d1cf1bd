//! Asking a connection's owner for a fresh channel after the broker nacked a publish.
//!
//! A channel can stay stuck on a quorum queue's lost leader: after the node that led the
//! queue dies, RabbitMQ 3.10 keeps nacking every publish to that queue on a channel that
//! first published to it before the new leader was elected, until the old node returns,
//! while a channel opened afterwards is acked at once. Any nack is therefore answered with
//! a fresh channel, at most once per [`RECYCLE_EVERY`].

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{Channel, Connection, options::ConfirmSelectOptions};
use tokio::{sync::Notify, time::Instant};
use tracing::{info, warn};

use crate::sync::lock;

/// The shortest time between two fresh channels.
const RECYCLE_EVERY: Duration = Duration::from_millis(500);
/// How long opening a fresh channel may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// A request for a fresh channel, shared by the channel's users and its owner.
#[derive(Clone, Debug, Default)]
pub struct Recycle(Arc<Notify>);

impl Recycle {
    /// Asks for a fresh channel (a publish on the current one was nacked).
    pub fn request(&self) {
        self.0.notify_one();
    }

    /// Resolves when a fresh channel was asked for.
    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

/// Opens a channel in confirm mode on `connection`.
pub async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// A confirm channel that its users share and its owner replaces when asked to.
#[derive(Debug)]
pub struct SharedChannel {
    current: Mutex<Channel>,
    recycle: Recycle,
    replaced: Mutex<Option<Instant>>,
    what: &'static str,
}

impl SharedChannel {
    /// Shares `channel`; `what` names it in log lines.
    pub fn new(channel: Channel, what: &'static str) -> Self {
        Self::with_recycle(channel, what, Recycle::default())
    }

    /// Shares `channel`, replaced when `recycle` asks (a handle made before the channel, as
    /// the publisher's is).
    pub fn with_recycle(channel: Channel, what: &'static str, recycle: Recycle) -> Self {
        SharedChannel {
            current: Mutex::new(channel),
            recycle,
            replaced: Mutex::new(None),
            what,
        }
    }

    /// The channel to publish on now.
    pub fn get(&self) -> Channel {
        lock(&self.current).clone()
    }

    /// Asks for a fresh channel (a publish on this one was nacked).
    pub fn nacked(&self) {
        self.recycle.request();
    }

    /// Resolves when a fresh channel was asked for.
    pub async fn requested(&self) {
        self.recycle.requested().await;
    }

    /// Replaces the channel with a fresh one on `connection`, unless the last replacement
    /// was less than [`RECYCLE_EVERY`] ago; whether it did. The old channel is closed after
    /// `linger`, so that the confirms still awaited on it can come.
    pub async fn replace(&self, connection: &Connection, linger: Duration) -> bool {
        let now = Instant::now();
        if lock(&self.replaced).is_some_and(|at| now < at + RECYCLE_EVERY) {
            return false;
        }
        *lock(&self.replaced) = Some(now);
        match tokio::time::timeout(OPEN_TIMEOUT, confirm_channel(connection)).await {
            Ok(Ok(fresh)) => {
                let old = std::mem::replace(&mut *lock(&self.current), fresh);
                info!(
                    channel = self.what,
                    "a publish was nacked; publishing on a fresh channel"
                );
                close_later(old, linger);
                true
            }
            Ok(Err(error)) => {
                warn!(%error, channel = self.what, "cannot open a fresh channel");
                false
            }
            Err(_) => {
                warn!(channel = self.what, "opening a fresh channel timed out");
                false
            }
        }
    }

    /// Closes the current channel, within a bound.
    pub async fn close(&self) {
        let channel = self.get();
        if channel.status().connected() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), channel.close(200, "closing".into()))
                    .await;
        }
    }
}

/// Closes `channel` after `linger`, in the background.
fn close_later(channel: Channel, linger: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(linger).await;
        if channel.status().connected() {
            let _ = channel.close(200, "replaced".into()).await;
        }
    });
}
