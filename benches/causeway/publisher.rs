//! The hand-rolled HTTP publisher: what an app would write to offer causeway's publish
//! endpoint itself, as a process of its own, so that causeway's HTTP path is compared with
//! an HTTP path and not with a function call.
//!
//! It is this benchmark's binary started again with [`MODE`] as its first argument: a
//! minimal hyper server that takes the same POST, builds the same envelope, properties and
//! headers as the hand-rolled baseline ([`HandRolled`]), publishes with confirms through
//! lapin (one connection, one channel in confirm mode, like the sidecar's publisher), and
//! answers 202 with the event's identity after the broker's confirm.

use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header::CONTENT_TYPE};
use lapin::{
    Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use serde_json::json;

use crate::{AMQP, baseline::HandRolled, process::Proc};

/// The first argument that makes the benchmark's binary this publisher.
pub const MODE: &str = "hand-rolled-publisher";

/// Bodies larger than this are refused, as causeway refuses them (its default limit).
const MAX_BODY: usize = 1024 * 1024;

/// The publisher process, started by the benchmark; stopped when dropped.
pub struct Publisher {
    child: Child,
    pub api: String,
}

impl Publisher {
    /// Starts the publisher for `exchange` and waits until it listens. It has the sidecar's
    /// worker count (`CAUSEWAY_WORKER_THREADS`, two by default).
    pub fn start(exchange: &str) -> Publisher {
        let binary = std::env::current_exe().unwrap();
        let mut child = Command::new(binary)
            .args([MODE, exchange])
            .envs(std::env::var("CAUSEWAY_WORKER_THREADS").map(|n| ("CAUSEWAY_WORKER_THREADS", n)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening ") {
                    let _ = sender.send(addr.to_owned());
                }
            }
        });
        let mut publisher = Publisher {
            child,
            api: String::new(),
        };
        let addr = receiver
            .recv_timeout(Duration::from_secs(20))
            .expect("the hand-rolled publisher did not start");
        publisher.api = format!("http://{addr}");
        publisher
    }

    pub fn proc(&self) -> Proc {
        Proc::new(self.child.id())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        crate::sidecar::stop(&mut self.child);
    }
}

/// The publisher's own `main`: `args` are what follows [`MODE`] (the exchange).
pub fn main(args: &[String]) {
    let exchange = args.first().expect("the exchange to publish to").clone();
    let workers = std::env::var("CAUSEWAY_WORKER_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    // It ends with the benchmark, whose end closes this process's stdin.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(serve(exchange));
}

struct State {
    channel: Channel,
    exchange: ShortString,
}

async fn serve(exchange: String) {
    let connection = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let state = Arc::new(State {
        channel,
        exchange: ShortString::from(exchange),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    loop {
        // Like causeway's listener (axum::serve): no TCP_NODELAY, one task per connection.
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: wait a little, as axum::serve does.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| publish(state.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn publish(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST || !request.uri().path().starts_with("/v1/publish/") {
        return Ok(answer(StatusCode::NOT_FOUND, Bytes::new()));
    }
    let Ok(body) = Limited::new(request.into_body(), MAX_BODY).collect().await else {
        return Ok(answer(StatusCode::BAD_REQUEST, Bytes::new()));
    };
    let Some(message) = HandRolled::new(&body.to_bytes()) else {
        return Ok(answer(StatusCode::BAD_REQUEST, Bytes::new()));
    };
    let confirmed = match state
        .channel
        .basic_publish(
            state.exchange.clone(),
            "Bench.v1".into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &message.body,
            message.properties,
        )
        .await
    {
        Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(None))),
        Err(_) => false,
    };
    if !confirmed {
        return Ok(answer(StatusCode::SERVICE_UNAVAILABLE, Bytes::new()));
    }
    let accepted = json!({
        "event_id": message.event_id, "event_type": "Bench", "schema_version": "1.0",
        "correlation_id": message.event_id, "occurred_at": message.occurred_at,
    });
    let body = serde_json::to_vec(&accepted).unwrap_or_default();
    Ok(answer(StatusCode::ACCEPTED, body.into()))
}

fn answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().unwrap());
    response
}
