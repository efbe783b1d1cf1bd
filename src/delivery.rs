//! Delivery: from a subscription's queue to the local app, once per event.
//!
//! [`Supervisor`] keeps a consuming connection of its own and one consumer per subscription;
//! each message goes through [`handler`](self): decode, claim in the dedup store, POST to the
//! app, then one decision ([`outcome::disposition`]) to ack, retry through a broker-held
//! wait queue, or dead-letter with the reason. [`DeadLetters`] lists, replays and purges
//! what ended in a dead-letter queue.

mod acks;
mod app;
mod claim;
mod consumer;
mod dead_letters;
mod fate;
mod handler;
pub mod outcome;
mod record;
mod state;
mod supervisor;
pub mod topology;

pub use app::AppClient;
pub use consumer::ConsumerError;
pub use dead_letters::{DeadLetter, DeadLetterError, DeadLetters, ReplayFilter, Replayed};
pub use state::{State, States, SubscriptionState};
pub use supervisor::{Supervisor, SupervisorConfig};
