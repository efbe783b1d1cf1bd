//! Wiring: builds every part from the configuration, runs them, and drains them in order.
//!
//! Shutdown order, once `shutdown` is cancelled:
//! 1. not ready, and new publishes get 503 (the draining flag);
//! 2. at the same time, within the grace period: the API stops accepting and finishes the
//!    requests in flight, whose confirms are still awaited on the open publishing
//!    connection; the consumers stop taking deliveries, let those in flight finish, and
//!    close their connection, which returns the rest to the broker;
//! 3. the publishing connection closes;
//! 4. the admin listener stops; the store's writer thread ends when the last handle to it
//!    is dropped, after its queued writes.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    api::{
        self, ApiState, ApiToken,
        admin::AdminState,
        server::{Limits, Requests, Server},
    },
    broker::{Connector, Dialer, Publisher},
    config::Config,
    delivery::{AppClient, DeadLetters, Supervisor, SupervisorConfig},
    flow::{FlowStore, Flows, Receipts, register_routes, start_recorder},
    health::{Health, Store, StoreState},
    publish::PublishService,
    schema::{SchemaError, SchemaRegistry},
    store::{DedupStore, EmbeddedStore, RedisDedup, StoreError},
    subscription::Registry,
    telemetry::metrics::{Listener, Metrics},
};

/// Why the sidecar could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The embedded store could not be opened, or the Redis URL is malformed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A schema could not be loaded: a configuration error.
    #[error("schemas: {0}")]
    Schema(#[from] SchemaError),
    /// A listener stopped while it should have been serving (its task panicked).
    #[error("the {name} listener stopped unexpectedly")]
    Serve {
        /// Which listener.
        name: &'static str,
    },
}

/// Runs the sidecar until `shutdown` is cancelled, then drains it.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), SidecarError> {
    let schemas = Arc::new(SchemaRegistry::load(
        config.schemas_dir.as_deref(),
        config.schemas_strict,
    )?);
    let metrics = Arc::new(Metrics::default());
    let health = Health::default();
    let store = EmbeddedStore::open_with(
        &config.data_dir,
        health.track(Store::Embedded, StoreState::Ok, metrics.clone()),
    )?;
    // Redis is not needed to start: while it is down, deliveries wait and `/readyz` says so.
    let (dedup, redis): (Arc<dyn DedupStore>, _) = match &config.dedup_url {
        Some(url) => {
            let tracked = health.track(Store::Redis, StoreState::Unknown, metrics.clone());
            let redis = RedisDedup::open(url, &config.service, tracked)?;
            (Arc::new(redis.clone()), Some(redis))
        }
        None => (Arc::new(store.clone()), None),
    };
    // Kept to the end, to wait for the file to be closed.
    let closing = store.clone();
    let registry = Arc::new(Registry::load(config.subscriptions.clone(), store.clone())?);
    // Receipts go where dedup records go: Redis shares them with every sidecar using it.
    let flow_store: Arc<dyn FlowStore> = match &redis {
        Some(redis) => Arc::new(redis.clone()),
        None => Arc::new(store.clone()),
    };
    // Stopped after the consumers, so that the last deliveries' receipts are written.
    let receipts_shutdown = CancellationToken::new();
    let (receipts, receipts_task) = if config.flow_receipts {
        let (receipts, task) = start_recorder(
            flow_store.clone(),
            config.flow_retention,
            metrics.clone(),
            receipts_shutdown.clone(),
        );
        (receipts, Some(task))
    } else {
        (Receipts::off(metrics.clone()), None)
    };
    let routes_task = tokio::spawn(register_routes(
        flow_store.clone(),
        config.broker.exchange.clone(),
        config.service.clone(),
        registry.watch(),
        config.flow_retention,
        shutdown.clone(),
    ));
    let app = AppClient::new(&config.app_url);
    let api_listener = bind(config.api_addr).await?;
    let admin_listener = bind(config.admin_addr).await?;
    info!(
        service = %config.service,
        api_addr = %local_addr(&api_listener),
        admin_addr = %local_addr(&admin_listener),
        "listening"
    );

    let broker_shutdown = CancellationToken::new();
    let (connector, link) = Connector::new(&config.broker, &config.service, metrics.clone());
    let recycle = connector.recycle();
    let broker_task = tokio::spawn(connector.run(broker_shutdown.clone()));
    let (supervisor, states) = Supervisor::new(
        SupervisorConfig {
            broker: config.broker.clone(),
            service: config.service.clone(),
            retention: config.dedup_retention,
            grace: config.shutdown_grace,
            receipts: receipts.clone(),
        },
        registry.watch(),
        app,
        dedup,
        store.clone(),
        metrics.clone(),
        schemas.clone(),
    );
    let consumers_task = tokio::spawn(supervisor.run(shutdown.clone()));
    let sweeper_task = tokio::spawn(store.clone().run_sweeper(shutdown.clone()));
    let probe_task = redis.map(|redis| tokio::spawn(redis.run_probe(shutdown.clone())));
    tokio::spawn(reload_on_hangup(schemas.clone(), shutdown.clone()));

    let publisher = Publisher::new(
        link,
        recycle,
        &config.broker.exchange,
        config.broker.max_in_flight,
        config.broker.confirm_timeout,
    );
    let publish = PublishService::new(
        &config.service,
        publisher,
        Arc::new(store.clone()),
        Arc::new(store),
        config.dedup_retention,
        metrics.clone(),
        schemas.clone(),
    )
    .with_receipts(receipts.clone());
    let api_state = ApiState {
        publish: publish.clone(),
        health: health.clone(),
        token: config.api_token.as_deref().map(ApiToken::new),
        max_body: config.max_body,
        service: config.service.as_str().into(),
        unrouted: config.broker.unrouted.as_str().into(),
        registry,
        states: states.clone(),
        dead_letters: DeadLetters::new(Dialer::new(
            &config.broker.urls,
            config.broker.connect_timeout,
            format!("causeway {} dead-letter operation", config.service),
        ))
        .with_receipts(receipts),
        metrics: metrics.clone(),
        schemas,
        flows: Flows::new(
            flow_store,
            &config.broker.exchange,
            &config.service,
            config.flows.clone(),
            config.flow_stuck_after,
        ),
    };
    let http = config.http;
    let api_limits = Limits {
        max_connections: http.api_max_connections,
        read_timeout: http.read_timeout,
        idle_timeout: http.idle_timeout,
        requests: Some(Requests {
            max: http.api_max_requests,
            max_body: config.max_body,
        }),
    };
    let admin_limits = Limits {
        max_connections: http.admin_max_connections,
        requests: None,
        ..api_limits
    };
    let mut api_task = tokio::spawn(
        Server::new(
            Listener::Api,
            api_listener,
            api::router(api_state),
            api_limits,
            metrics.clone(),
        )
        .run(shutdown.clone()),
    );
    let admin_shutdown = CancellationToken::new();
    let admin_router = api::admin::router(AdminState {
        health: health.clone(),
        publish,
        states,
        metrics: metrics.clone(),
    });
    let admin_task = tokio::spawn(
        Server::new(
            Listener::Admin,
            admin_listener,
            admin_router,
            admin_limits,
            metrics,
        )
        .run(admin_shutdown.clone()),
    );

    // A listener that fails is a critical fault: drain what we can and exit non-zero.
    let mut failure = None;
    // The API listener also stops on `shutdown`: only an end before it is a fault.
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        _ = &mut api_task => if !shutdown.is_cancelled() {
            failure = Some(SidecarError::Serve { name: "api" });
        },
    }
    health.start_draining();
    shutdown.cancel();
    info!("draining");
    if !api_task.is_finished() {
        match tokio::time::timeout(config.shutdown_grace, &mut api_task).await {
            Ok(Err(error)) if error.is_panic() => {
                failure = Some(SidecarError::Serve { name: "api" });
            }
            Ok(_) => {}
            Err(_) => {
                warn!(
                    grace_ms = millis(config.shutdown_grace),
                    "requests still in flight at the end of the grace period were cut off"
                );
                api_task.abort();
            }
        }
    }
    // The consumers drain within the grace period on their own (they saw `shutdown`).
    let _ = consumers_task.await;
    receipts_shutdown.cancel();
    if let Some(receipts_task) = receipts_task {
        let _ = receipts_task.await;
    }
    let _ = routes_task.await;
    broker_shutdown.cancel();
    let _ = broker_task.await;
    admin_shutdown.cancel();
    let _ = admin_task.await;
    let _ = sweeper_task.await;
    if let Some(probe_task) = probe_task {
        let _ = probe_task.await;
    }
    if !closing.close(STORE_CLOSE).await {
        warn!(
            within_ms = millis(STORE_CLOSE),
            "the store was still in use at exit; it is checked and repaired at the next start"
        );
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// How long the drain waits for the store's file to be closed.
const STORE_CLOSE: Duration = Duration::from_secs(5);

/// Reads the schema directory again on each SIGHUP; a bad change keeps the old schemas.
async fn reload_on_hangup(schemas: Arc<SchemaRegistry>, shutdown: CancellationToken) {
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hangups.recv() => match schemas.reload() {
                Ok(count) => info!(schemas = count, "schemas reloaded"),
                Err(error) => warn!(%error, "schemas not reloaded; the previous ones stay in use"),
            },
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, SidecarError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
