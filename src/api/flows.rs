//! `GET /v1/flows/{correlation_id}` and `GET /v1/flows`: where a flow stands.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use super::{
    ApiState,
    extract::{ApiPath, ApiQuery},
    problem::Problem,
};
use crate::{
    flow::{FlowView, is_valid_correlation_id},
    store::StoreError,
};

/// Flows listed when no `limit` is given, and the most a `limit` may ask for.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

/// `GET /v1/flows/{correlation_id}`.
pub(super) async fn get(
    State(state): State<ApiState>,
    ApiPath(correlation_id): ApiPath<String>,
) -> Result<Json<FlowView>, Problem> {
    check_correlation_id(&correlation_id)?;
    let view = state
        .flows
        .get(&correlation_id)
        .await
        .map_err(store_problem)?;
    view.map(Json).ok_or_else(|| {
        not_found(format!(
            "no receipts for the flow {correlation_id}{}",
            scope_note(&state)
        ))
    })
}

/// The query of `GET /v1/flows`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    event_id: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/flows?event_id=…`: the flow of one event; `GET /v1/flows`: the latest flows.
pub(super) async fn list(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    if let Some(event_id) = query.event_id {
        if uuid::Uuid::parse_str(&event_id).is_err() {
            return Err(Problem::bad_request("event_id must be a UUID"));
        }
        let view = state
            .flows
            .of_event(&event_id)
            .await
            .map_err(store_problem)?;
        return match view {
            Some(view) => Ok(Json(view).into_response()),
            None => Err(not_found(format!(
                "no flow has receipts for the event {event_id}{}",
                scope_note(&state)
            ))),
        };
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let flows = state.flows.recent(limit).await.map_err(store_problem)?;
    Ok(Json(json!({ "scope": state.flows.scope(), "flows": flows })).into_response())
}

/// A `400` unless `id` can be a correlation id.
pub(super) fn check_correlation_id(id: &str) -> Result<(), Problem> {
    if is_valid_correlation_id(id) {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-correlation-id",
        "Invalid correlation id",
        "a correlation id is 1 to 128 printable ASCII characters",
    ))
}

fn not_found(detail: String) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "flow-not-found",
        "Flow not found",
        detail,
    )
}

fn scope_note(state: &ApiState) -> &'static str {
    match state.flows.scope() {
        crate::flow::Scope::Local => {
            " in this sidecar (receipts are local: set CAUSEWAY_DEDUP_URL to share them)"
        }
        crate::flow::Scope::Shared => "",
    }
}

fn store_problem(error: StoreError) -> Problem {
    if error.is_unavailable() {
        return Problem::unavailable(format!("the flow store is unavailable: {error}"), 1);
    }
    warn!(%error, "reading a flow failed");
    Problem::internal()
}
