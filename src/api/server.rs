//! Serves a router on a listener with bounds on what clients can hold: a cap on open
//! connections, a read timeout and an idle timeout per connection, a largest request head
//! and, on the API, a budget of requests in flight. When told to stop, it stops accepting,
//! closes idle connections, and waits for the requests in flight to be answered.
//!
//! - **Connection cap.** At the cap, a new connection is accepted and closed at once. The
//!   client sees its connection closed before any answer instead of waiting in the
//!   kernel's backlog, the refusal is counted (`causeway_http_connections_closed_total`,
//!   `reason="cap"`), and the sidecar holds at most the cap's file descriptors and memory.
//! - **Read timeout.** A request's header and body must arrive within the read timeout of its
//!   first byte (for the first request of a connection, of the connection's opening). A
//!   header too slow closes the connection; a body too slow is answered `408`.
//! - **Idle timeout.** A connection with no request for that long after its last answer is
//!   closed. hyper's own `header_read_timeout` is not used: it starts as soon as an answer is
//!   written, so it would close pooled keep-alive connections as early as slow headers.
//! - **Request budget.** See [`budget`].
//! - **Accept errors** (out of file descriptors, say) are logged when they start and when
//!   they end, and accepting is tried again after a pause that doubles up to a second.

mod budget;
mod cap;
mod connection;
mod deadline;

use std::{io, sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::telemetry::metrics::{Listener, Metrics};
use budget::Budget;
use cap::Cap;
pub(crate) use deadline::is_read_timeout;

/// The largest request head (request line and headers) a client may send; beyond it, `431`.
/// Each connection's read buffer grows up to this size, so it bounds their memory.
pub const MAX_HEAD: usize = 16 * 1024;

/// The shortest and the longest pause after an accept error.
const ACCEPT_PAUSES: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How one listener is bounded.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a request may take to arrive, header and body, from its first byte.
    pub read_timeout: Duration,
    /// How long a connection may stay open without a request after an answer.
    pub idle_timeout: Duration,
    /// The budget of requests in flight, when the listener has one.
    pub requests: Option<Requests>,
}

/// A budget of requests in flight: each request weighs one, plus one for each 64 KiB of its
/// declared body (a body of unknown length weighs as one of `max_body` bytes).
#[derive(Clone, Copy, Debug)]
pub struct Requests {
    /// The budget.
    pub max: usize,
    /// The largest body the listener accepts.
    pub max_body: usize,
}

/// One listener and what its connections share.
#[derive(Debug)]
pub struct Server {
    tcp: TcpListener,
    shared: Arc<Shared>,
}

/// What every connection of a listener uses.
#[derive(Debug)]
struct Shared {
    listener: Listener,
    router: Router,
    http: http1::Builder,
    limits: Limits,
    budget: Option<Budget>,
    cap: Arc<Cap>,
    metrics: Arc<Metrics>,
}

impl Server {
    /// Serves `router` on `tcp` within `limits`.
    pub fn new(
        listener: Listener,
        tcp: TcpListener,
        router: Router,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut http = http1::Builder::new();
        // Our own watchdog bounds the header's time (see the module's comment).
        http.header_read_timeout(None).max_buf_size(MAX_HEAD);
        metrics.http().listening(listener);
        let shared = Shared {
            listener,
            router,
            http,
            limits,
            budget: limits.requests.map(Budget::new),
            cap: Arc::new(Cap::new(listener, limits.max_connections, metrics.clone())),
            metrics,
        };
        Server {
            tcp,
            shared: Arc::new(shared),
        }
    }

    /// Accepts connections until `stop`, then waits until every connection has closed: idle
    /// ones at once, the others once their request is answered (or a timeout closes them).
    pub async fn run(self, stop: CancellationToken) {
        let Server { tcp, shared } = self;
        let connections = TaskTracker::new();
        let mut errors = AcceptErrors::new(shared.listener);
        loop {
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                accepted = tcp.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    errors.recovered();
                    // At the cap the stream is dropped, which closes it (counted and logged).
                    if let Some(slot) = shared.cap.take() {
                        let shared = shared.clone();
                        connections.spawn(connection::serve(stream, slot, shared, stop.clone()));
                    }
                }
                // The client gave up before the accept: nothing wrong with the listener.
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    let pause = errors.failed(&error);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        // New connections are refused from here on.
        drop(tcp);
        connections.close();
        connections.wait().await;
    }
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Accept errors in a row: logged when they start or change, and when they end.
#[derive(Debug)]
struct AcceptErrors {
    listener: Listener,
    /// Since when, and the last error's text.
    failing: Option<(Instant, String)>,
    pause: Duration,
}

impl AcceptErrors {
    fn new(listener: Listener) -> Self {
        AcceptErrors {
            listener,
            failing: None,
            pause: Duration::ZERO,
        }
    }

    /// Notes an error; the pause before the next try.
    fn failed(&mut self, error: &io::Error) -> Duration {
        let text = error.to_string();
        let listener = self.listener.name();
        match &mut self.failing {
            Some((_, last)) if *last == text => {}
            Some((_, last)) => {
                warn!(listener, %error, "cannot accept connections; trying again");
                *last = text;
            }
            None => {
                warn!(listener, %error, "cannot accept connections; trying again");
                self.failing = Some((Instant::now(), text));
            }
        }
        let (shortest, longest) = ACCEPT_PAUSES;
        self.pause = (self.pause * 2).clamp(shortest, longest);
        self.pause
    }

    /// Notes a connection accepted.
    fn recovered(&mut self) {
        if let Some((since, _)) = self.failing.take() {
            let failed_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
            info!(
                listener = self.listener.name(),
                failed_ms, "accepting connections again"
            );
            self.pause = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests;
