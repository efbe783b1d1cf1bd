//! Flows: every event that shares one correlation id, and what happened to each of them at
//! each service.
//!
//! Each sidecar writes a [`Receipt`] per hop outcome (published, attempt failed, delivered,
//! dead-lettered, replayed, duplicate skipped) through [`Receipts`], in the background and in
//! batches, so that neither a publish nor a delivery ever waits for one. [`view`] turns a
//! flow's receipts and the registered [`Route`]s into the answer of
//! `GET /v1/flows/{correlation_id}`: each event with its hops and their states, and the flow's
//! state. No payload is ever stored: ids, types, states, timings, status codes and error texts.

mod definition;
mod receipt;
mod recorder;
mod routes;
mod view;

pub use definition::{FlowDefinition, Outcome as DefinitionOutcome};
pub use receipt::{EventFacts, HopFacts, Kind, Receipt, Route, Scope};
pub use recorder::{Receipts, start_recorder};
pub use routes::register_routes;
pub use view::{FlowSummary, FlowView, Settings as ViewSettings, summarize, view};

use std::{sync::Arc, time::Duration};

use crate::store::{BoxFuture, StoreError};

/// Most receipts kept for one flow; a flow with more answers with the latest ones and says
/// it is truncated.
pub const MAX_RECEIPTS: usize = 5_000;

/// Most flows `GET /v1/flows` remembers as recent.
pub const MAX_RECENT: usize = 1_000;

/// Where receipts and routes are kept: the embedded store (this sidecar only) or Redis
/// (every sidecar that shares it).
pub trait FlowStore: Send + Sync + 'static {
    /// Whether the answers cover this sidecar only or every sidecar sharing the store.
    fn scope(&self) -> Scope;

    /// Appends receipts, each kept for `retention`.
    fn append<'a>(
        &'a self,
        receipts: &'a [Receipt],
        retention: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The receipts of a flow (at most [`MAX_RECEIPTS`], the latest), and whether older ones
    /// were left out.
    fn receipts<'a>(
        &'a self,
        correlation_id: &'a str,
    ) -> BoxFuture<'a, Result<(Vec<Receipt>, bool), StoreError>>;

    /// The correlation id of an event with receipts.
    fn flow_of_event<'a>(
        &'a self,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// The correlation ids of the flows with the latest receipts, newest first.
    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;

    /// Every registered route, current and ended.
    fn routes(&self) -> BoxFuture<'_, Result<Vec<Route>, StoreError>>;

    /// Stores routes, replacing those with the same service and subscription.
    fn put_routes<'a>(&'a self, routes: &'a [Route]) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Whether `id` can be a correlation id: 1 to 128 printable ASCII characters, as
/// `X-Correlation-ID` allows.
pub fn is_valid_correlation_id(id: &str) -> bool {
    crate::envelope::is_printable_within(id.as_bytes(), 128)
}

/// Answers for flows: reads receipts and routes and builds views.
#[derive(Clone)]
pub struct Flows {
    store: Arc<dyn FlowStore>,
    exchange: Arc<str>,
    service: Arc<str>,
    definitions: Arc<[FlowDefinition]>,
    stuck_after: Duration,
}

impl std::fmt::Debug for Flows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("scope", &self.store.scope())
            .finish_non_exhaustive()
    }
}

impl Flows {
    /// Flows read from `store`, answered by `service`'s sidecar. Flows live on one exchange:
    /// only routes bound to `exchange` count.
    pub fn new(
        store: Arc<dyn FlowStore>,
        exchange: &str,
        service: &str,
        definitions: Vec<FlowDefinition>,
        stuck_after: Duration,
    ) -> Self {
        Flows {
            store,
            exchange: exchange.into(),
            service: service.into(),
            definitions: definitions.into(),
            stuck_after,
        }
    }

    /// Whether answers cover this sidecar only.
    pub fn scope(&self) -> Scope {
        self.store.scope()
    }

    /// The flow `correlation_id`, when it has receipts.
    pub async fn get(&self, correlation_id: &str) -> Result<Option<FlowView>, StoreError> {
        let routes = self.routes().await?;
        self.build(correlation_id, &routes).await
    }

    /// The flow of the event `event_id`, when it has receipts.
    pub async fn of_event(&self, event_id: &str) -> Result<Option<FlowView>, StoreError> {
        match self.store.flow_of_event(event_id).await? {
            Some(correlation_id) => self.get(&correlation_id).await,
            None => Ok(None),
        }
    }

    /// The `limit` flows with the latest receipts, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<FlowSummary>, StoreError> {
        let routes = self.routes().await?;
        let mut flows = Vec::new();
        for correlation_id in self.store.recent(limit).await? {
            if let Some(view) = self.build(&correlation_id, &routes).await? {
                flows.push(summarize(&view));
            }
        }
        Ok(flows)
    }

    async fn routes(&self) -> Result<Vec<Route>, StoreError> {
        let mut routes = self.store.routes().await?;
        routes.retain(|r| *r.exchange == *self.exchange);
        Ok(routes)
    }

    async fn build(
        &self,
        correlation_id: &str,
        routes: &[Route],
    ) -> Result<Option<FlowView>, StoreError> {
        let (receipts, truncated) = self.store.receipts(correlation_id).await?;
        let settings = ViewSettings {
            scope: self.store.scope(),
            service: &self.service,
            stuck_after: self.stuck_after,
            definitions: &self.definitions,
            now_ms: crate::store::now_ms(),
        };
        Ok(view(correlation_id, receipts, routes, truncated, &settings))
    }
}
