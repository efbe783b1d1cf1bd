//! One connection: HTTP/1.1 by hyper, with a watchdog that closes it when a request is too
//! slow to arrive or when no request comes for the idle timeout.
//!
//! The connection's reads, its requests and its watchdog are all polled by the connection's
//! one task, and the watchdog is polled right after the connection each time: so it sees
//! every change of the connection's state (a first byte, a request begun or answered) and
//! moves its deadline at once, without a wake-up of its own.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, response::IntoResponse, response::Response};
use hyper::{Request, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::debug;

use super::{Shared, cap::Slot, deadline::Deadline};
use crate::{
    api::problem::Problem,
    telemetry::metrics::{Closed, Refused},
};

/// Serves one connection until the client closes it, a limit does, or `stop` (then the
/// request in flight, if any, is answered first).
pub(super) async fn serve(
    stream: TcpStream,
    slot: Slot,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let handler = Handler {
        shared: shared.clone(),
        activity: activity.clone(),
    };
    let mut conn = pin!(shared.http.serve_connection(io, handler));
    let mut watchdog = Watchdog::new(activity, &shared);
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(error) = ended {
                    debug!(listener = shared.listener.name(), %error, "connection ended");
                }
                break;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            reason = &mut watchdog => {
                shared.metrics.http().closed(shared.listener, reason);
                break;
            }
        }
    }
    drop(slot);
}

/// Means "not set" in [`Activity`]'s times.
const UNSET: u64 = u64::MAX;

/// What the watchdog needs to know of a connection. Times are milliseconds since it opened.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests being handled.
    busy: AtomicU32,
    /// When the next request's first byte came (for the first request: the opening).
    reading_since: AtomicU64,
    /// When the last request was answered.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            busy: AtomicU32::new(0),
            reading_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(UNSET - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.opened + Duration::from_millis(millis)
    }

    /// Notes bytes read: between requests, the first byte of the next one.
    fn read(&self) {
        if self.busy.load(Relaxed) == 0 && self.reading_since.load(Relaxed) == UNSET {
            self.reading_since.store(self.now(), Relaxed);
        }
    }

    /// Notes a request whose head was read; its body is due `read_timeout` after the
    /// request's first byte.
    fn begin(self: &Arc<Self>, read_timeout: Duration) -> (Busy, Instant) {
        self.busy.fetch_add(1, Relaxed);
        let since = match self.reading_since.swap(UNSET, Relaxed) {
            // Its bytes came with the previous request's (pipelined).
            UNSET => self.now(),
            since => since,
        };
        (Busy(self.clone()), self.at(since) + read_timeout)
    }

    /// When the watchdog closes the connection, and why; `None` while a request is handled.
    fn deadline(
        &self,
        read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<(Instant, Closed)> {
        if self.busy.load(Relaxed) > 0 {
            return None;
        }
        match self.reading_since.load(Relaxed) {
            UNSET => Some((
                self.at(self.idle_since.load(Relaxed)) + idle_timeout,
                Closed::IdleTimeout,
            )),
            since => Some((self.at(since) + read_timeout, Closed::ReadTimeout)),
        }
    }
}

/// A request being handled, until dropped.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since.store(self.0.now(), Relaxed);
        }
    }
}

/// Closes the connection at its deadline.
struct Watchdog {
    activity: Arc<Activity>,
    read_timeout: Duration,
    idle_timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Watchdog {
    fn new(activity: Arc<Activity>, shared: &Shared) -> Self {
        let sleep = Box::pin(tokio::time::sleep_until(activity.opened));
        Watchdog {
            activity,
            read_timeout: shared.limits.read_timeout,
            idle_timeout: shared.limits.idle_timeout,
            sleep,
            armed: None,
        }
    }
}

impl Future for Watchdog {
    type Output = Closed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Closed> {
        let this = self.get_mut();
        let Some((deadline, reason)) = this.activity.deadline(this.read_timeout, this.idle_timeout)
        else {
            // The end of the request is polled by the same task, which polls this next.
            return Poll::Pending;
        };
        if this.armed != Some(deadline) {
            this.sleep.as_mut().reset(deadline);
            this.armed = Some(deadline);
        }
        this.sleep.as_mut().poll(cx).map(|()| reason)
    }
}

/// The connection's socket, noting each read in the connection's activity.
#[derive(Debug)]
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Hands each request to the router, with its body's deadline, within the budget.
#[derive(Clone, Debug)]
struct Handler {
    shared: Arc<Shared>,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let shared = self.shared.clone();
        let (busy, deadline) = self.activity.begin(shared.limits.read_timeout);
        Box::pin(async move {
            let _busy = busy;
            let _room = match &shared.budget {
                Some(budget) => match budget.enter(budget.weight(request.body())).await {
                    Some(room) => Some(room),
                    None => {
                        let listener = shared.listener;
                        shared.metrics.http().refused(listener, Refused::Overloaded);
                        return Ok(Problem::overloaded().into_response());
                    }
                },
                None => None,
            };
            let (listener, metrics) = (shared.listener, shared.metrics.clone());
            let request =
                request.map(|body| Body::new(Deadline::new(body, deadline, listener, metrics)));
            let answered = shared.router.clone().oneshot(request).await;
            Ok(answered.unwrap_or_else(|never| match never {}))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn each_state_of_a_connection_has_its_deadline() {
        let activity = Arc::new(Activity::new());
        let opened = activity.opened;
        let deadline = || activity.deadline(READ, IDLE);
        // The first request is due a read timeout after the opening, bytes or not.
        assert_eq!(deadline(), Some((opened + READ, Closed::ReadTimeout)));
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.read();
        assert_eq!(deadline(), Some((opened + READ, Closed::ReadTimeout)));

        // While a request is handled, none; its body is due with the header's deadline.
        let (busy, body_due) = activity.begin(READ);
        assert_eq!(body_due, opened + READ);
        assert_eq!(deadline(), None);
        activity.read();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(deadline(), None);

        // Answered: idle until the next request's first byte, which starts its read timeout.
        drop(busy);
        let answered = opened + Duration::from_secs(32);
        assert_eq!(deadline(), Some((answered + IDLE, Closed::IdleTimeout)));
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.read();
        let first_byte = answered + Duration::from_secs(5);
        assert_eq!(deadline(), Some((first_byte + READ, Closed::ReadTimeout)));
        // More bytes of the same head do not move it.
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.read();
        assert_eq!(deadline(), Some((first_byte + READ, Closed::ReadTimeout)));
        let (_busy, body_due) = activity.begin(READ);
        assert_eq!(body_due, first_byte + READ);
    }
}
