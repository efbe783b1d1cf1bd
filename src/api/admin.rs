//! The admin listener: liveness and readiness probes.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use serde_json::{Value, json};

use tokio::sync::watch;

use crate::{
    delivery::{State as ConsumerState, States},
    health::{Health, Store, StoreState},
    publish::PublishService,
    telemetry::metrics::Metrics,
};

/// What the admin handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Draining flag.
    pub health: Health,
    /// The publish path, for the broker link's state.
    pub publish: PublishService,
    /// How each subscription's consumer is doing.
    pub states: watch::Receiver<States>,
    /// What `/metrics` shows.
    pub metrics: Arc<Metrics>,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(super::not_found)
        .method_not_allowed_fallback(super::method_not_allowed)
        .with_state(state)
}

/// The Prometheus metrics, in the OpenMetrics text format.
async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Alive as long as the process answers.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the broker link is up, every subscription is consuming, every store works,
/// and the sidecar is not draining.
async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<Value>) {
    let draining = state.health.is_draining();
    let broker = state.publish.is_connected();
    let subscriptions: serde_json::Map<String, Value> = state
        .states
        .borrow()
        .iter()
        .map(|(name, s)| (name.clone(), Value::from(s.state.name())))
        .collect();
    // The broker's reason for each failed subscription, beside the states.
    let subscription_errors: serde_json::Map<String, Value> = state
        .states
        .borrow()
        .iter()
        .filter_map(|(name, s)| match &s.state {
            ConsumerState::Failed(error) => Some((name.clone(), Value::from(error.as_str()))),
            _ => None,
        })
        .collect();
    let consuming = state
        .states
        .borrow()
        .values()
        .all(|s| s.state == ConsumerState::Consuming);
    let stores = state.health.stores();
    let stores_ok = stores.iter().all(|(_, s)| *s == StoreState::Ok);
    let ready = broker && consuming && stores_ok && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "broker": state.publish.link_state(),
        "subscriptions": subscriptions,
        "draining": draining,
    });
    if !subscription_errors.is_empty() {
        body["subscription_errors"] = Value::Object(subscription_errors);
    }
    for (store, store_state) in stores {
        let key = match store {
            Store::Embedded => "store",
            Store::Redis => "redis",
        };
        body[key] = Value::from(store_state.name());
        if let StoreState::Failing { reason } = store_state {
            body[format!("{key}_error")] = Value::from(reason);
        }
    }
    (status, Json(body))
}
