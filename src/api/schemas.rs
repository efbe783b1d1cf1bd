//! `/v1/schemas`: what the registry holds.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{ApiState, extract::ApiPath, problem::Problem};
use crate::envelope::SchemaVersion;

/// `GET /v1/schemas`: every event type and its versions.
pub(super) async fn list(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({ "schemas": state.schemas.list() }))
}

/// `GET /v1/schemas/{event_type}/{version}`: one schema document.
pub(super) async fn get(
    State(state): State<ApiState>,
    ApiPath((event_type, version)): ApiPath<(String, String)>,
) -> Result<Response, Problem> {
    let not_found = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "schema-not-found",
            "Schema not found",
            format!("no schema {event_type} {version} is registered"),
        )
    };
    let version: SchemaVersion = version.parse().map_err(|_| not_found())?;
    let schema = state
        .schemas
        .get(&event_type, version)
        .ok_or_else(not_found)?;
    Ok((
        [(header::CONTENT_TYPE, "application/schema+json")],
        Json(schema.as_ref().clone()),
    )
        .into_response())
}
