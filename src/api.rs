//! The HTTP surfaces: the app-facing API and the admin listener.
//!
//! `router(state)` builds the app API (publish, and later subscriptions and dead letters);
//! `admin::router(state)` builds `/healthz` and `/readyz`. Both answer every error as
//! problem+json.

pub mod admin;
mod auth;
pub mod problem;
mod publish;

use std::sync::Arc;

use axum::{
    Router,
    http::{Method, Uri},
    middleware,
    routing::post,
};

use crate::{health::Health, publish::PublishService};
use problem::Problem;

/// What the API handlers share.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// Publishes events.
    pub publish: PublishService,
    /// Whether the sidecar is draining.
    pub health: Health,
    /// The bearer token the API requires, when set.
    pub token: Option<Arc<str>>,
    /// Largest accepted request body, in bytes.
    pub max_body: usize,
}

/// The app-facing API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/publish/{event_type}", post(publish::publish))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
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
