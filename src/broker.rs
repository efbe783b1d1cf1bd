//! The link to RabbitMQ: one connection kept up with reconnects, the topology the sidecar
//! relies on, and confirmed publishing.
//!
//! lapin's own recovery is not used: a confirm in flight when its socket dies can stay
//! pending through a whole outage there. Instead [`Connector`] owns the connection, drops it
//! at the first sign of trouble, reconnects through the [`Dialer`] (an address list with
//! failover) and redeclares the topology, and publishes its state on a watch channel that
//! the [`Publisher`] and `/readyz` read. The consumers and the dead-letter operations reach
//! the broker through the same [`Dialer`] and [`keep_connected`] loop.

mod backoff;
mod connection;
mod dialer;
mod publisher;
mod recycle;
mod topology;

pub use backoff::Backoff;
pub use connection::{Connector, Link, close_gracefully};
pub use dialer::{
    DialError, Dialed, Dialer, Ended, OwnedConnection, Trouble, address, keep_connected,
    next_trouble,
};
pub use publisher::{PendingConfirm, PublishError, Publisher, publish_confirmed};
pub use recycle::{Recycle, SharedChannel, confirm_channel};
pub use topology::{PublishTopology, existing_queue_depth, inspector, queue_depth};
