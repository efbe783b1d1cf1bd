//! The metrics of the HTTP listeners: open connections, connections closed by a limit, and
//! requests refused by one.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// One of the sidecar's two HTTP listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The app API (`CAUSEWAY_API_ADDR`).
    Api,
    /// The admin listener (`CAUSEWAY_ADMIN_ADDR`).
    Admin,
}

impl Listener {
    /// The label value, also used in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Api => "api",
            Listener::Admin => "admin",
        }
    }
}

/// Why the sidecar closed a connection that had not misbehaved as HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The listener had its maximum of connections open: closed as soon as accepted.
    Cap,
    /// A request's header did not arrive within the read timeout of its first byte (or of
    /// the connection's opening, for its first request).
    ReadTimeout,
    /// No request came for the idle timeout after the previous answer.
    IdleTimeout,
}

impl Closed {
    const ALL: [Closed; 3] = [Closed::Cap, Closed::ReadTimeout, Closed::IdleTimeout];

    fn label(self) -> &'static str {
        match self {
            Closed::Cap => "cap",
            Closed::ReadTimeout => "read_timeout",
            Closed::IdleTimeout => "idle_timeout",
        }
    }
}

/// Why a request was answered before its handler ran to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The API had as many requests in flight as it allows, for the whole wait: `503`.
    Overloaded,
    /// The body did not arrive within the read timeout: `408`.
    ReadTimeout,
}

impl Refused {
    const ALL: [Refused; 2] = [Refused::Overloaded, Refused::ReadTimeout];

    fn label(self) -> &'static str {
        match self {
            Refused::Overloaded => "overloaded",
            Refused::ReadTimeout => "read_timeout",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: &'static str,
    reason: &'static str,
}

/// The listeners' families.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    connections: Family<ListenerLabels, Gauge>,
    closed: Family<ReasonLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
}

impl HttpMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "causeway_http_connections",
            "Connections open on each HTTP listener (api, admin)",
            self.connections.clone(),
        );
        registry.register(
            "causeway_http_connections_closed",
            "Connections the sidecar closed because of a limit, by listener and reason (cap: accepted at the connection cap and closed at once; read_timeout: a request header too slow; idle_timeout: no request after the previous answer)",
            self.closed.clone(),
        );
        registry.register(
            "causeway_http_requests_refused",
            "Requests answered before their handler ran, by listener and reason (overloaded: 503, too many requests in flight; read_timeout: 408, the body too slow)",
            self.refused.clone(),
        );
    }

    /// Shows the listener's series from its start, at zero.
    pub fn listening(&self, listener: Listener) {
        let name = listener.name();
        self.connections
            .get_or_create(&ListenerLabels { listener: name })
            .set(0);
        for reason in Closed::ALL {
            let _ = self.closed.get_or_create(&ReasonLabels {
                listener: name,
                reason: reason.label(),
            });
        }
        for reason in Refused::ALL {
            let _ = self.refused.get_or_create(&ReasonLabels {
                listener: name,
                reason: reason.label(),
            });
        }
    }

    /// Counts one connection open on `listener` while the guard lives.
    pub fn connection(&self, listener: Listener) -> OpenConnection {
        let gauge = self
            .connections
            .get_or_create(&ListenerLabels {
                listener: listener.name(),
            })
            .clone();
        gauge.inc();
        OpenConnection(gauge)
    }

    /// Counts a connection closed by a limit.
    pub fn closed(&self, listener: Listener, reason: Closed) {
        self.closed
            .get_or_create(&ReasonLabels {
                listener: listener.name(),
                reason: reason.label(),
            })
            .inc();
    }

    /// Counts a request refused by a limit.
    pub fn refused(&self, listener: Listener, reason: Refused) {
        self.refused
            .get_or_create(&ReasonLabels {
                listener: listener.name(),
                reason: reason.label(),
            })
            .inc();
    }
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
