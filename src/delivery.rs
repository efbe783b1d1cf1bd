//! Delivery: from a subscription's queue to the local app, once per event.
//!
//! [`Supervisor`] keeps a consuming connection of its own and one consumer per subscription;
//! each message goes through [`handler`](self): decode, claim in the dedup store, POST to the
//! app, then one decision ([`outcome::disposition`]) to ack, retry through a broker-held
//! wait queue, or dead-letter with the reason. [`DeadLetters`] lists, replays and purges
//! what ended in a dead-letter queue.

mod app;
mod dead_letters;
mod handler;
pub mod outcome;
mod supervisor;
pub mod topology;

use std::sync::atomic::AtomicU64;

pub use app::AppClient;
pub use dead_letters::{DeadLetter, DeadLetterError, DeadLetters, Replayed};
pub use supervisor::{State, States, SubscriptionState, Supervisor, SupervisorConfig};

/// Running totals of delivery outcomes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Accepted by the app.
    pub delivered: AtomicU64,
    /// Failed and scheduled for another attempt.
    pub retried: AtomicU64,
    /// Moved to a dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Skipped because the app already accepted the event.
    pub duplicates: AtomicU64,
}
