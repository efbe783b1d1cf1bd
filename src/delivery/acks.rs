//! The acks of one consumer's channel, sent in batches by a task of their own: one
//! `basic.ack` with `multiple` for every message up to a delivery tag, when all of them are
//! done, instead of one frame (and two task hops through the broker client) per message.
//!
//! `multiple` acks every unacknowledged message up to its tag on the channel, so it is sent
//! only up to the oldest message still being handled (or being requeued: a requeue is sent
//! before its tag is let go). A message done after an older one that is still in flight
//! waits for it at most [`HOLD`], then is acked alone, so that a slow delivery does not
//! hold the others' prefetch slots.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::join_all;
use lapin::{Channel, options::BasicAckOptions, types::DeliveryTag};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::sync::lock;

/// Longest an ack waits for older messages to be done before it is sent alone.
const HOLD: Duration = Duration::from_millis(20);

/// Where each message received on the channel stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Being handled.
    InFlight,
    /// Done since `at`: its ack waits to be sent.
    Done { at: Instant },
}

/// The acks of one channel. Every message received is [`received`](Acks::received) in
/// order, then either [`ack`](Acks::ack)ed or [`let go`](Acks::let_go) once settled some
/// other way.
#[derive(Debug)]
pub(crate) struct Acks {
    /// The messages received and not yet acked, by delivery tag.
    open: Mutex<BTreeMap<DeliveryTag, Status>>,
    wake: Notify,
}

/// What one flush sends.
#[derive(Debug, Default, PartialEq, Eq)]
struct Flush {
    /// Every message up to this tag, at once.
    upto: Option<DeliveryTag>,
    /// These alone.
    alone: Vec<DeliveryTag>,
    /// When the oldest ack left waiting is due to go alone.
    due: Option<Instant>,
}

impl Acks {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Acks {
            open: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
        })
    }

    /// A message arrived (in delivery tag order, before any later one is handled).
    pub(crate) fn received(&self, tag: DeliveryTag) {
        lock(&self.open).insert(tag, Status::InFlight);
    }

    /// The message is done: its ack goes with the next batch.
    pub(crate) fn ack(&self, tag: DeliveryTag) {
        let at = Instant::now();
        if let Some(status) = lock(&self.open).get_mut(&tag) {
            *status = Status::Done { at };
        }
        self.wake.notify_one();
    }

    /// The message was settled otherwise (requeued): never acked. Call only once the
    /// broker client has sent what settled it.
    pub(crate) fn let_go(&self, tag: DeliveryTag) {
        lock(&self.open).remove(&tag);
        self.wake.notify_one();
    }

    /// What to send now; `all` sends every ack waiting, however young.
    fn take(&self, now: Instant, all: bool) -> Flush {
        let mut open = lock(&self.open);
        let mut flush = Flush::default();
        // Every message up to the first one in flight is done.
        while let Some(entry) = open.first_entry() {
            if *entry.get() == Status::InFlight {
                break;
            }
            flush.upto = Some(*entry.key());
            entry.remove();
        }
        open.retain(|tag, status| match *status {
            Status::Done { at } if all || now >= at + HOLD => {
                flush.alone.push(*tag);
                false
            }
            Status::Done { at } => {
                flush.due = Some(flush.due.map_or(at + HOLD, |due| due.min(at + HOLD)));
                true
            }
            Status::InFlight => true,
        });
        flush
    }

    /// Sends acks as messages are done until `stop`, then every ack left, and returns once
    /// they are written.
    pub(crate) async fn run(self: Arc<Self>, channel: Channel, stop: CancellationToken) {
        loop {
            let flush = self.take(Instant::now(), stop.is_cancelled());
            let idle = flush.upto.is_none() && flush.alone.is_empty();
            if !idle {
                send(&channel, &flush).await;
                // More were done while these were written.
                continue;
            }
            if stop.is_cancelled() {
                return;
            }
            let due = async {
                match flush.due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = due => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

/// Writes the acks of `flush` on `channel`. A failed ack means the channel is gone: the
/// broker delivers those messages again, and dedup knows them.
async fn send(channel: &Channel, flush: &Flush) {
    let upto = flush.upto.map(|tag| (tag, true));
    let alone = flush.alone.iter().map(|tag| (*tag, false));
    let sent = join_all(
        upto.into_iter()
            .chain(alone)
            .map(|(tag, multiple)| channel.basic_ack(tag, BasicAckOptions { multiple })),
    )
    .await;
    for error in sent.into_iter().filter_map(Result::err) {
        debug!(%error, "ack failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_go_at_once_up_to_the_first_message_in_flight_and_alone_after_a_while() {
        let acks = Acks::new();
        for tag in 1..=6 {
            acks.received(tag);
        }
        let now = Instant::now();
        for tag in [1, 2, 4, 6] {
            acks.ack(tag);
        }
        let flush = acks.take(now, false);
        assert_eq!(flush.upto, Some(2));
        assert!(flush.alone.is_empty(), "4 and 6 wait for 3 and 5");
        assert!(flush.due.is_some());

        // 3 is requeued: once that is sent, 4 may go with a multiple ack.
        acks.let_go(3);
        let flush = acks.take(now, false);
        assert_eq!((flush.upto, flush.alone.len()), (Some(4), 0));

        // 6 waits for 5, still in flight, but not for ever.
        let later = Instant::now() + HOLD;
        let flush = acks.take(later, false);
        assert_eq!((flush.upto, flush.alone), (None, vec![6]));
        let flush = acks.take(later, false);
        assert_eq!(flush, Flush::default(), "5 is still in flight");

        acks.ack(5);
        assert_eq!(acks.take(later, false).upto, Some(5));
    }

    #[test]
    fn at_the_end_every_ack_waiting_goes() {
        let acks = Acks::new();
        for tag in 1..=3 {
            acks.received(tag);
        }
        acks.ack(3);
        let flush = acks.take(Instant::now(), true);
        assert_eq!((flush.upto, flush.alone), (None, vec![3]));
    }
}
