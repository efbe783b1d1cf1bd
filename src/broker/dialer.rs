//! Reaching the broker: an address list tried in a shuffled order with failover, and the one
//! reconnect loop that the publishing connection, the consumers and the dead-letter
//! operations share.

use std::{
    future::Future,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use lapin::{Connection, ConnectionProperties, Event, types::LongString, uri::AMQPUri};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Backoff;

/// The first and the longest delay between two rounds over the address list. Short, so
/// that a broker that comes back is used again within about a second; jittered, so that
/// many sidecars do not all reconnect at once.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Connects to one of the broker's addresses.
///
/// The list is shuffled once, so that the sidecars of a fleet spread over a cluster's
/// nodes. Each round tries every address once, starting after the last one that was lost
/// or refused, each within `connect_timeout`.
#[derive(Debug)]
pub struct Dialer {
    urls: Arc<[String]>,
    next: AtomicUsize,
    connect_timeout: Duration,
    name: String,
}

/// A connection and which address it went to.
#[derive(Debug)]
pub struct Dialed {
    /// The open connection.
    pub connection: Connection,
    /// Its address, without credentials, for logs.
    pub address: String,
    index: usize,
}

/// A connection for one piece of work, closed when the work ends, also when it is cancelled
/// half-way (an HTTP client that went away, a timeout): a connection dropped without a close
/// stays open at the broker, with whatever it holds (exclusive queues, unacked messages).
#[derive(Debug)]
pub struct OwnedConnection(Option<Connection>);

impl OwnedConnection {
    /// Owns `connection`.
    pub fn new(connection: Connection) -> Self {
        OwnedConnection(Some(connection))
    }

    /// The connection.
    pub fn get(&self) -> &Connection {
        // Only `close` and `drop` take it, and both consume the owner.
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("taken only when consumed"))
    }

    /// Closes the connection (its channels first), within bounds.
    pub async fn close(mut self) {
        if let Some(connection) = self.0.take() {
            super::close_gracefully(&connection, &[]).await;
        }
    }
}

impl Drop for OwnedConnection {
    fn drop(&mut self) {
        let Some(connection) = self.0.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { super::close_gracefully(&connection, &[]).await });
        }
    }
}

/// Every address of the list refused or timed out.
#[derive(Debug, thiserror::Error)]
#[error("no broker address answered ({attempts}); last: {address}: {error}")]
pub struct DialError {
    /// How many addresses were tried.
    pub attempts: usize,
    /// The last address tried, without credentials.
    pub address: String,
    /// Its error.
    pub error: String,
}

impl Dialer {
    /// A dialer over `urls` (at least one) for connections named `name`.
    pub fn new(urls: &[String], connect_timeout: Duration, name: impl Into<String>) -> Self {
        let mut urls = urls.to_vec();
        shuffle(&mut urls);
        Dialer {
            urls: urls.into(),
            next: AtomicUsize::new(0),
            connect_timeout,
            name: name.into(),
        }
    }

    /// One round over the list: the first address that accepts a connection.
    pub async fn dial(&self) -> Result<Dialed, DialError> {
        let start = self.next.load(Ordering::Relaxed);
        let mut last = (String::from("none"), String::from("no address"));
        for step in 0..self.urls.len() {
            let index = (start + step) % self.urls.len();
            let url = &self.urls[index];
            let properties = ConnectionProperties::default()
                .with_connection_name(LongString::from(self.name.as_str()));
            let address = address(url);
            match timeout(self.connect_timeout, Connection::connect(url, properties)).await {
                Ok(Ok(connection)) => {
                    self.next.store(index, Ordering::Relaxed);
                    return Ok(Dialed {
                        connection,
                        address,
                        index,
                    });
                }
                Ok(Err(error)) => last = (address, error.to_string()),
                Err(_) => {
                    last = (
                        address,
                        format!("no answer within {:?}", self.connect_timeout),
                    )
                }
            }
            debug!(broker = %last.0, error = %last.1, "broker address did not answer");
        }
        // The next round starts one further on, whatever this one found.
        self.move_past(start);
        Err(DialError {
            attempts: self.urls.len(),
            address: last.0,
            error: last.1,
        })
    }

    /// After the connection to address `index` ended, the next round starts one further.
    fn move_past(&self, index: usize) {
        self.next
            .store((index + 1) % self.urls.len(), Ordering::Relaxed);
    }

    /// How many addresses there are.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }
}

/// How a session on one connection ended.
#[derive(Debug)]
pub enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The session ran, then the connection (or something it cannot do without) failed.
    Lost(String),
    /// The session could not be set up on the new connection (declaring the topology
    /// failed, say): tried again after a backoff, like a refused connection.
    Failed(String),
}

/// Keeps a connection up until `shutdown`: dials, runs `session` on the connection until it
/// ends, and dials again with a short jittered backoff. Logs when the broker becomes
/// unreachable and when it is back, not on every try. `what` names the connection in log
/// lines ("publishing", "consumer").
pub async fn keep_connected<F, Fut>(
    dialer: &Dialer,
    what: &'static str,
    shutdown: &CancellationToken,
    mut session: F,
) where
    F: FnMut(Dialed) -> Fut,
    Fut: Future<Output = Ended>,
{
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
    // Set while the broker is unreachable (or each session fails at once): since when, and
    // the last error logged, so that the same error is not logged again on every try.
    let mut outage: Option<(Instant, String)> = None;
    loop {
        let dialed = tokio::select! {
            _ = shutdown.cancelled() => return,
            dialed = dialer.dial() => dialed,
        };
        // What to compare (the error without the address, which changes from round to
        // round) and what to log.
        let (error, shown) = match dialed {
            Ok(dialed) => {
                let address = dialed.address.clone();
                let index = dialed.index;
                let down_ms = outage
                    .as_ref()
                    .map(|(since, _)| since.elapsed().as_millis() as u64);
                if outage.is_some() {
                    info!(connection = what, broker = %address, down_ms, "connected to the broker again");
                } else {
                    info!(connection = what, broker = %address, "connected to the broker");
                }
                let ended = session(dialed).await;
                dialer.move_past(index);
                match ended {
                    Ended::Shutdown => return,
                    Ended::Lost(error) => {
                        // A session that ran: this is a new outage.
                        backoff.reset();
                        warn!(connection = what, broker = %address, %error, "broker connection lost");
                        outage = Some((Instant::now(), error.clone()));
                        if dialer.len() > 1 {
                            // Straight to the next address: a lost node should cost no wait.
                            continue;
                        }
                        (error.clone(), error)
                    }
                    Ended::Failed(error) => (error.clone(), error),
                }
            }
            Err(error) => (error.error.clone(), error.to_string()),
        };
        match &mut outage {
            Some((_, last)) if *last == error => {
                debug!(connection = what, error = %shown, "still cannot use the broker")
            }
            Some((_, last)) => {
                warn!(connection = what, error = %shown, "cannot connect to the broker");
                *last = error;
            }
            None => {
                warn!(connection = what, error = %shown, "cannot connect to the broker");
                outage = Some((Instant::now(), error));
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// What a connection's event stream says that matters to its owner.
#[derive(Debug)]
pub enum Trouble {
    /// The connection itself failed.
    Lost(String),
    /// The broker blocks publishing (a resource alarm).
    Blocked(String),
    /// The broker publishes again.
    Unblocked,
}

/// The next event that matters on `connection`. lapin reports a channel closed by the
/// broker (a failed declare, say) on the connection's event stream too: that is the
/// channel's owner's business, and the connection goes on, so it is not [`Trouble::Lost`].
pub async fn next_trouble(
    connection: &Connection,
    events: &mut (impl Stream<Item = Event> + Unpin),
) -> Trouble {
    loop {
        match events.next().await {
            Some(Event::Error(error)) => {
                if connection.status().connected() {
                    debug!(%error, "a channel was closed by the broker; the connection goes on");
                } else {
                    return Trouble::Lost(error.to_string());
                }
            }
            Some(Event::ConnectionBlocked(reason)) => return Trouble::Blocked(reason),
            Some(Event::ConnectionUnblocked) => return Trouble::Unblocked,
            Some(_) => {}
            None => return Trouble::Lost("connection events ended".into()),
        }
    }
}

/// An AMQP URI without its credentials and query: `amqp://host:port/vhost`.
pub fn address(url: &str) -> String {
    match AMQPUri::from_str(url) {
        Ok(uri) => {
            let scheme = match uri.scheme {
                lapin::uri::AMQPScheme::AMQP => "amqp",
                lapin::uri::AMQPScheme::AMQPS => "amqps",
            };
            format!(
                "{scheme}://{}:{}/{}",
                uri.authority.host, uri.authority.port, uri.vhost
            )
        }
        Err(_) => "an invalid address".into(),
    }
}

/// Shuffles in place (Fisher-Yates); the randomness of a fresh v7 UUID is enough here.
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let random = uuid::Uuid::now_v7().as_u64_pair().1;
        let j = usize::try_from(random % (i as u64 + 1)).unwrap_or(0);
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_hides_credentials_and_query() {
        assert_eq!(
            address("amqp://user:secret@rabbit-1:5673/prod?heartbeat=10"),
            "amqp://rabbit-1:5673/prod"
        );
        assert_eq!(address("amqps://u:p@host/%2f"), "amqps://host:5671//");
    }

    #[test]
    fn a_shuffle_keeps_every_address() {
        let mut urls: Vec<u32> = (0..10).collect();
        shuffle(&mut urls);
        urls.sort_unstable();
        assert_eq!(urls, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_refused_address_fails_over_to_the_next_and_the_round_moves_on() {
        let closed = |_: ()| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let urls: Vec<String> = (0..3)
            .map(|_| format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed(())))
            .collect();
        let dialer = Dialer::new(&urls, Duration::from_secs(1), "test");
        let error = dialer.dial().await.unwrap_err();
        assert_eq!(error.attempts, 3);
        assert!(
            !error.to_string().contains("guest"),
            "credentials in {error}"
        );
        assert_eq!(dialer.next.load(Ordering::Relaxed), 1);
    }
}
