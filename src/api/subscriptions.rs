//! `/v1/subscriptions`: make, list and remove subscriptions, and work their dead letters.

use std::time::Duration;

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::{
    ApiState,
    body::read_json,
    extract::{ApiPath, ApiQuery},
    problem::Problem,
};
use crate::{
    delivery::{DeadLetterError, ReplayFilter, Replayed, State as ConsumerState, topology::Queues},
    flow::is_valid_correlation_id,
    subscription::{FieldProblem, Origin, RegistryError, Subscription, SubscriptionSpec},
};

/// How long a PUT waits for the consumer to be set up before answering.
const SETUP_WAIT: Duration = Duration::from_secs(5);

/// A subscription as the API shows it.
#[derive(Debug, Serialize)]
pub(super) struct View {
    name: String,
    origin: Origin,
    queue: String,
    dead_letter_queue: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(flatten)]
    spec: SubscriptionSpec,
}

impl ApiState {
    fn view(&self, subscription: &Subscription, origin: Origin) -> View {
        let queues = Queues::new(&self.service, subscription);
        let states = self.states.borrow();
        let current = states
            .get(&subscription.name)
            .filter(|s| s.spec == subscription.spec);
        let (state, error) = match current.map(|s| &s.state) {
            Some(ConsumerState::Failed(error)) => ("failed", Some(error.clone())),
            Some(state) => (state.name(), None),
            None => ("starting", None),
        };
        View {
            name: subscription.name.clone(),
            origin,
            queue: queues.main,
            dead_letter_queue: queues.dlq,
            state,
            error,
            spec: subscription.spec.clone(),
        }
    }

    async fn find(&self, name: &str) -> Result<(Subscription, Origin), Problem> {
        self.registry.get(name).await.ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "subscription-not-found",
                "Subscription not found",
                format!("there is no subscription named {name:?}"),
            )
        })
    }

    /// Replays the dead letters of `subscription` that `filter` picks.
    pub(super) async fn replay(
        &self,
        subscription: &Subscription,
        filter: &ReplayFilter,
    ) -> Result<Replayed, Problem> {
        self.dead_letters
            .replay(&self.service, subscription, filter)
            .await
            .map_err(broker_problem)
    }
}

/// `PUT /v1/subscriptions/{name}`: creates (201) or replaces (200) an API-made
/// subscription, and answers once its consumer runs or `SETUP_WAIT` has passed.
pub(super) async fn put(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<View>), Problem> {
    let spec: SubscriptionSpec = read_json(body, &headers, state.max_body).await?;
    let subscription = Subscription::new(&name, spec).map_err(invalid)?;
    let queue = Queues::new(&state.service, &subscription).main;
    let unrouted = &*state.unrouted;
    if unrouted == queue || unrouted.starts_with(&format!("{queue}.")) {
        return Err(Problem::unprocessable(format!(
            "the subscription's queues ({queue} and its .dlq and .retry queues) would include the unrouted queue {unrouted:?}: choose another name"
        )));
    }
    let created = state
        .registry
        .put(subscription.clone())
        .await
        .map_err(registry_problem)?;
    info!(subscription = %name, created, "subscription saved");
    let mut states = state.states.clone();
    let settled = states.wait_for(|states| {
        states.get(&name).is_some_and(|s| {
            s.spec == subscription.spec && !matches!(s.state, ConsumerState::Starting)
        })
    });
    let _ = tokio::time::timeout(SETUP_WAIT, settled).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(state.view(&subscription, Origin::Api))))
}

/// `GET /v1/subscriptions`.
pub(super) async fn list(State(state): State<ApiState>) -> Json<Value> {
    let views: Vec<View> = state
        .registry
        .list()
        .await
        .iter()
        .map(|(subscription, origin)| state.view(subscription, *origin))
        .collect();
    Json(json!({ "subscriptions": views }))
}

/// `GET /v1/subscriptions/{name}`.
pub(super) async fn get(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<View>, Problem> {
    let (subscription, origin) = state.find(&name).await?;
    Ok(Json(state.view(&subscription, origin)))
}

/// `DELETE /v1/subscriptions/{name}`: stops consuming; the queues stay (other replicas may
/// still consume them, and their messages are not thrown away).
pub(super) async fn delete(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, Problem> {
    match state.registry.delete(&name).await {
        Ok(true) => {
            info!(subscription = %name, "subscription deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(state
            .find(&name)
            .await
            .err()
            .unwrap_or_else(Problem::internal)),
        Err(error) => Err(registry_problem(error)),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<String>,
}

/// `GET /v1/subscriptions/{name}/dead-letters?limit=N`: the oldest `N` (default 100, at
/// most 1000), left in the queue in their order.
pub(super) async fn list_dead_letters(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, Problem> {
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(Problem::bad_request(
                    "limit must be a whole number from 1 to 1000",
                ));
            }
        },
    };
    let (subscription, _) = state.find(&name).await?;
    let queues = Queues::new(&state.service, &subscription);
    let (letters, total) = state
        .dead_letters
        .list(&queues, limit)
        .await
        .map_err(broker_problem)?;
    Ok(Json(json!({
        "subscription": name,
        "queue": queues.dlq,
        "total": total,
        "dead_letters": letters,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayRequest {
    /// Only these; all of them when absent. `null` is refused: it must not mean "all".
    #[serde(default, deserialize_with = "crate::subscription::present")]
    event_ids: Option<Vec<String>>,
    /// Only those of this flow. `null` is refused as well.
    #[serde(default, deserialize_with = "crate::subscription::present")]
    correlation_id: Option<String>,
}

impl ReplayRequest {
    /// Which dead letters the request asks for; 422 naming the field when it asks wrongly.
    fn filter(self) -> Result<ReplayFilter, Problem> {
        match (self.event_ids, self.correlation_id) {
            (None, None) => Ok(ReplayFilter::All),
            (Some(ids), None) => Ok(ReplayFilter::EventIds(ids.into_iter().collect())),
            (None, Some(id)) if is_valid_correlation_id(&id) => Ok(ReplayFilter::CorrelationId(id)),
            (None, Some(_)) => Err(field_problem(
                "correlation_id",
                "must be 1 to 128 printable ASCII characters",
            )),
            (Some(_), Some(_)) => Err(field_problem(
                "correlation_id",
                "cannot be given with event_ids: replay by event ids or by flow, not both",
            )),
        }
    }
}

fn field_problem(field: &'static str, message: &str) -> Problem {
    Problem::unprocessable(format!("{field} {message}")).with_errors([FieldProblem {
        field,
        message: message.to_owned(),
    }])
}

/// `POST /v1/subscriptions/{name}/dead-letters/replay`: all of them, `{"event_ids":[…]}`
/// or `{"correlation_id":"…"}`.
pub(super) async fn replay_dead_letters(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let request: ReplayRequest = if has_body(&headers) {
        read_json(body, &headers, state.max_body).await?
    } else {
        ReplayRequest::default()
    };
    let filter = request.filter()?;
    let (subscription, _) = state.find(&name).await?;
    let replayed = state.replay(&subscription, &filter).await?;
    info!(subscription = %name, replayed = replayed.replayed, "dead letters replayed");
    Ok(Json(replayed).into_response())
}

/// `DELETE /v1/subscriptions/{name}/dead-letters`.
pub(super) async fn purge_dead_letters(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, Problem> {
    let (subscription, _) = state.find(&name).await?;
    let queues = Queues::new(&state.service, &subscription);
    let purged = state
        .dead_letters
        .purge(&queues)
        .await
        .map_err(broker_problem)?;
    info!(subscription = %name, purged, "dead letters purged");
    Ok(Json(json!({ "purged": purged })))
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(length) => length > 0,
        None => headers.contains_key(axum::http::header::TRANSFER_ENCODING),
    }
}

fn invalid(problems: Vec<FieldProblem>) -> Problem {
    let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
    Problem::unprocessable(format!(
        "invalid subscription fields: {}",
        fields.join(", ")
    ))
    .with_errors(problems)
}

fn registry_problem(error: RegistryError) -> Problem {
    match error {
        RegistryError::ConfigOwned(name) => Problem::new(
            StatusCode::CONFLICT,
            "subscription-in-config",
            "Subscription defined in the config file",
            format!("subscription {name} is defined in the config file; change it there"),
        ),
        RegistryError::NotInPlace { name, field } => Problem::new(
            StatusCode::CONFLICT,
            "subscription-change-not-in-place",
            "The change cannot be made in place",
            format!(
                "{field} cannot change on the existing subscription {name}: its queue was declared with the old value and the broker cannot change that in place. Nothing was changed. To switch, create a subscription under a new name with the new value, let the old one drain (its queue depth reaches 0), then delete the old one and its queues"
            ),
        ),
        RegistryError::Store(error) if error.is_unavailable() => {
            warn!(%error, "subscription store unavailable");
            Problem::unavailable(
                "the subscription store is unavailable; nothing was changed, retry later",
                1,
            )
        }
        RegistryError::Store(error) => {
            error!(%error, "subscription store failed");
            Problem::internal()
        }
    }
}

fn broker_problem(error: DeadLetterError) -> Problem {
    error!(%error, "dead-letter operation failed");
    Problem::unavailable(
        "the broker could not complete the dead-letter operation; nothing was lost, retry later",
        5,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter(body: Value) -> Result<ReplayFilter, Problem> {
        serde_json::from_value::<ReplayRequest>(body)
            .map_err(|e| Problem::unprocessable(e.to_string()))?
            .filter()
    }

    #[test]
    fn a_replay_asks_for_all_some_ids_or_one_flow() {
        assert_eq!(filter(json!({})).unwrap(), ReplayFilter::All);
        assert_eq!(
            filter(json!({"event_ids": ["e-1"]})).unwrap(),
            ReplayFilter::EventIds(["e-1".to_owned()].into())
        );
        assert_eq!(
            filter(json!({"correlation_id": "order 1001"})).unwrap(),
            ReplayFilter::CorrelationId("order 1001".to_owned())
        );
    }

    #[test]
    fn a_bad_flow_replay_is_a_422_naming_the_field() {
        let too_long = "a".repeat(129);
        for body in [
            json!({"correlation_id": ""}),
            json!({"correlation_id": too_long}),
            json!({"correlation_id": "tab\there"}),
            json!({"correlation_id": "é"}),
            json!({"correlation_id": "order-1", "event_ids": []}),
        ] {
            let problem = filter(body.clone()).unwrap_err();
            assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            let errors = problem.errors.unwrap();
            assert_eq!(errors[0]["field"], "correlation_id", "{body}");
        }
        assert!(filter(json!({"correlation_id": null})).is_err());
    }
}
