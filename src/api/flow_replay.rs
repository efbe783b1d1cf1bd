//! `POST /v1/flows/{correlation_id}/replay`: one flow's dead letters, in every subscription.

use std::collections::BTreeMap;

use axum::{Json, extract::State};
use serde::Serialize;
use tracing::{info, warn};

use super::{ApiState, extract::ApiPath, problem::Problem};
use crate::delivery::ReplayFilter;

/// What a flow replay did.
#[derive(Debug, Default, Serialize)]
pub(super) struct FlowReplayed {
    /// Dead letters moved back, in all.
    replayed: usize,
    /// Per subscription, those that had any.
    subscriptions: BTreeMap<String, usize>,
}

/// Replays the flow's dead letters of each subscription of this sidecar in turn, by name.
/// A failure part-way answers `503`; what was moved stays moved, and a second call moves
/// the rest.
pub(super) async fn replay(
    State(state): State<ApiState>,
    ApiPath(correlation_id): ApiPath<String>,
) -> Result<Json<FlowReplayed>, Problem> {
    super::flows::check_correlation_id(&correlation_id)?;
    let mut subscriptions = state.registry.list().await;
    subscriptions.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let filter = ReplayFilter::CorrelationId(correlation_id);
    let mut answer = FlowReplayed::default();
    for (subscription, _) in &subscriptions {
        let replayed = match state.replay(subscription, &filter).await {
            Ok(replayed) => replayed.replayed,
            Err(problem) => {
                warn!(
                    subscription = %subscription.name,
                    replayed = answer.replayed,
                    "flow replay stopped part-way"
                );
                return Err(problem);
            }
        };
        if replayed > 0 {
            answer.replayed += replayed;
            answer
                .subscriptions
                .insert(subscription.name.clone(), replayed);
        }
    }
    info!(
        replayed = answer.replayed,
        subscriptions = answer.subscriptions.len(),
        "flow dead letters replayed"
    );
    Ok(Json(answer))
}
