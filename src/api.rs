//! The HTTP surfaces: the app-facing API and the admin listener.
//!
//! `router(state)` builds the app API (publish, subscriptions, dead letters, flows) and
//! serves the flow page at `/ui/`;
//! `admin::router(state)` builds `/healthz`, `/readyz` and `/metrics`. Both answer every error as
//! problem+json. `server` serves them, each on its listener, within bounds on connections,
//! time and requests in flight.

pub mod admin;
mod auth;
mod batch;
mod body;
mod extract;
mod flow_replay;
mod flows;
pub mod problem;
mod publish;
mod schemas;
pub mod server;
mod subscriptions;
mod ui;

use std::sync::Arc;

use axum::{
    Router,
    http::{Method, Uri},
    middleware,
    routing::{get, post, put},
};
use tokio::sync::watch;

use crate::{
    delivery::{DeadLetters, States},
    flow::Flows,
    health::Health,
    publish::PublishService,
    schema::SchemaRegistry,
    subscription::Registry,
    telemetry::metrics::Metrics,
};
pub use auth::ApiToken;
use problem::Problem;

/// What the API handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// Publishes events.
    pub publish: PublishService,
    /// Whether the sidecar is draining.
    pub health: Health,
    /// The bearer token the API requires, when set.
    pub token: Option<ApiToken>,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
    /// The service name, prefix of its queues.
    pub service: Arc<str>,
    /// The unrouted queue: no subscription's queue may have its name.
    pub unrouted: Arc<str>,
    /// The desired subscriptions.
    pub registry: Arc<Registry>,
    /// How each subscription's consumer is doing.
    pub states: watch::Receiver<States>,
    /// Dead-letter operations.
    pub dead_letters: DeadLetters,
    /// Publish counts and latencies.
    pub metrics: Arc<Metrics>,
    /// The registered schemas.
    pub schemas: Arc<SchemaRegistry>,
    /// Where flows stand.
    pub flows: Flows,
}

/// The app-facing API.
pub fn router(state: ApiState) -> Router {
    let routes = Router::new()
        .route("/v1/publish", post(batch::publish_batch))
        .route("/v1/publish/{event_type}", post(publish::publish))
        .route("/v1/flows", get(flows::list))
        .route("/v1/flows/{correlation_id}", get(flows::get))
        .route(
            "/v1/flows/{correlation_id}/replay",
            post(flow_replay::replay),
        )
        .route("/v1/schemas", get(schemas::list))
        .route("/v1/schemas/{event_type}/{version}", get(schemas::get))
        .route("/v1/subscriptions", get(subscriptions::list))
        .route(
            "/v1/subscriptions/{name}",
            put(subscriptions::put)
                .get(subscriptions::get)
                .delete(subscriptions::delete),
        )
        .route(
            "/v1/subscriptions/{name}/dead-letters",
            get(subscriptions::list_dead_letters).delete(subscriptions::purge_dead_letters),
        )
        .route(
            "/v1/subscriptions/{name}/dead-letters/replay",
            post(subscriptions::replay_dead_letters),
        );
    // Without a token the check would only cost time on every request.
    let routes = match state.token {
        Some(_) => routes.route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        )),
        None => routes,
    };
    // The page is public: it holds no data, and its API calls carry the token.
    routes
        .route("/ui", get(ui::redirect))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

pub(crate) async fn not_found(uri: Uri) -> Problem {
    Problem::not_found(uri.path())
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::method_not_allowed(method.as_str(), uri.path())
}
