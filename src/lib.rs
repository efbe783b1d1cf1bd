//! causeway: a sidecar that gives any service confirmed event publishing with an envelope of
//! correlation and causation ids, on RabbitMQ, behind a plain HTTP API on localhost.
//!
//! # Layout
//! - [`config`]: environment variables and the optional TOML file, validated up front.
//! - [`sidecar`]: builds the parts, runs them, and drains them in order on shutdown.
//! - [`api`]: the app-facing HTTP API and the admin listener; errors as problem+json.
//! - [`publish`]: the publish path without HTTP: envelope, idempotency keys, confirm.
//! - [`envelope`]: the wire type, its AMQP properties and routing key; no I/O.
//! - [`cloudevents`]: CloudEvents 1.0 attributes to and from the envelope, over HTTP and
//!   AMQP; no I/O.
//! - [`payload`]: the payload grammar (finite numbers, unique names, bounded nesting).
//! - [`schema`]: the schema registry and validation.
//! - [`broker`]: the connection with reconnects, topology, and confirmed publishing.
//! - [`store`]: durable records (idempotency keys) in an embedded crash-safe file.
//! - [`health`]: the draining flag and each store's state, shared by handlers and probes.
//! - [`shutdown`]: signal handling.
//! - `errors`: an error and its causes on one line.
//! - [`telemetry`]: log setup.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod amqp;
pub mod api;
pub mod broker;
pub mod cli;
pub mod cloudevents;
pub mod config;
pub mod delivery;
pub mod envelope;
mod errors;
pub mod flow;
pub mod health;
mod key_locks;
pub mod payload;
pub mod publish;
pub mod schema;
pub mod shutdown;
pub mod sidecar;
pub mod store;
pub mod subscription;
mod sync;
pub mod telemetry;
