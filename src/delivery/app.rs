//! The HTTP client that POSTs events to the local app.
//!
//! The app is on the pod's loopback, so the client is HTTP/1.1 over a pool of plain
//! keep-alive connections and nothing more: no proxies, redirects, URL parsing per request
//! or name resolution beyond the connect. Each delivery takes an idle connection (or opens
//! one), sends, reads the whole answer so that the connection can serve the next delivery,
//! and puts it back.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, StatusCode, Uri,
    client::conn::http1::{self, SendRequest},
    header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};
use tracing::{Instrument, debug, field::Empty, info_span};

use super::outcome::{AppAnswer, error_detail};
use crate::{
    cloudevents::http::{STRUCTURED, binary_headers, structured_body},
    config::AppUrl,
    envelope::{Envelope, TraceContext},
    subscription::DeliveryFormat,
    telemetry::{TraceExt, trace_of},
};

/// What the app gets for one event in its subscription's format: the body, and the headers
/// that go with it (`Content-Type` included) besides causeway's own.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Outgoing {
    /// The event in `format`. `wire` is the message body when it is the envelope as
    /// causeway published it, sent as is in causeway's format; `trace` is the trace the
    /// message carried (the publisher's), named in `ce-traceparent` when the event brought
    /// none of its own.
    pub(crate) fn new(
        format: DeliveryFormat,
        envelope: &Envelope,
        wire: Option<&[u8]>,
        trace: &TraceContext,
    ) -> Self {
        let json = || vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        match format {
            DeliveryFormat::Causeway => Outgoing {
                body: match wire {
                    Some(wire) => Bytes::copy_from_slice(wire),
                    None => Bytes::from(envelope.to_json()),
                },
                headers: json(),
            },
            DeliveryFormat::CloudeventsBinary => Outgoing {
                body: Bytes::copy_from_slice(envelope.payload.get().as_bytes()),
                headers: binary_headers(envelope, trace),
            },
            DeliveryFormat::CloudeventsStructured => Outgoing {
                body: Bytes::from(structured_body(envelope, trace)),
                headers: vec![(CONTENT_TYPE, HeaderValue::from_static(STRUCTURED))],
            },
        }
    }
}

/// Idle connections kept at most: one per delivery that can be in flight at once is plenty.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused. Servers close idle
/// connections after a few seconds (2 s for gunicorn, 5 s for Node.js); a request sent just
/// as the app closes one would fail for nothing.
const IDLE_FOR: Duration = Duration::from_secs(1);
/// How much of a failing answer's body is kept to say why it failed.
const DETAIL_BYTES: usize = 4096;

/// A pooled keep-alive client for the app at one base URL.
#[derive(Clone, Debug)]
pub struct AppClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `host:port`, to connect to.
    address: String,
    /// The `Host` header.
    host: HeaderValue,
    /// The path every route is under (empty, or `/prefix`).
    prefix: String,
    /// `http://host:port/prefix`, for spans.
    base: String,
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

impl AppClient {
    /// A client for the app at `url`.
    pub fn new(url: &AppUrl) -> Self {
        AppClient {
            inner: Arc::new(Inner {
                address: url.address.clone(),
                host: url.host.clone(),
                prefix: url.prefix.clone(),
                base: url.base.clone(),
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// POSTs the event (`outgoing`) to `route` in a CLIENT span, whose context the app gets
    /// in `traceparent`, and reports how the app answered.
    pub(crate) async fn deliver(
        &self,
        route: &str,
        outgoing: &Outgoing,
        envelope: &Envelope,
        attempt: u32,
        trace: &TraceContext,
        timeout: Duration,
    ) -> AppAnswer {
        let span = info_span!(
            "POST",
            otel.kind = "client",
            otel.status_code = Empty,
            otel.status_description = Empty,
            http.request.method = "POST",
            url.full = Empty,
            http.response.status_code = Empty,
        );
        if !span.is_disabled() {
            span.record("url.full", format!("{}{route}", self.inner.base));
        }
        // Without tracing installed, the publisher's context passes through unchanged.
        let trace = trace_of(&span).unwrap_or_else(|| trace.clone());
        let answer = match self.request(route, outgoing, envelope, attempt, &trace) {
            Ok(request) => {
                let exchange = self.exchange(request);
                match tokio::time::timeout(timeout, exchange)
                    .instrument(span.clone())
                    .await
                {
                    Ok(answer) => answer,
                    Err(_) => AppAnswer::Timeout,
                }
            }
            Err(error) => AppAnswer::Unreachable(error),
        };
        match &answer {
            AppAnswer::Status { code, .. } => {
                span.record("http.response.status_code", code);
                if *code >= 400 {
                    span.fail(&answer.describe());
                }
            }
            other => span.fail(&other.describe()),
        }
        answer
    }

    fn request(
        &self,
        route: &str,
        outgoing: &Outgoing,
        envelope: &Envelope,
        attempt: u32,
        trace: &TraceContext,
    ) -> Result<Request<Full<Bytes>>, String> {
        let path = if self.inner.prefix.is_empty() {
            Uri::try_from(route)
        } else {
            Uri::try_from(format!("{}{route}", self.inner.prefix))
        }
        .map_err(|error| format!("invalid route {route:?}: {error}"))?;
        let mut request = Request::post(path)
            .body(Full::new(outgoing.body.clone()))
            .map_err(|error| error.to_string())?;
        let headers = request.headers_mut();
        headers.insert(HOST, self.inner.host.clone());
        set_headers(headers, envelope, attempt, trace);
        for (name, value) in &outgoing.headers {
            headers.insert(name.clone(), value.clone());
        }
        Ok(request)
    }

    /// Sends `request` on a pooled or new connection and reads the whole answer.
    async fn exchange(&self, mut request: Request<Full<Bytes>>) -> AppAnswer {
        loop {
            let (mut sender, reused) = match self.checkout().await {
                Some(sender) => (sender, true),
                None => match self.connect().await {
                    Ok(sender) => (sender, false),
                    Err(answer) => return answer,
                },
            };
            let response = match sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut error) => match error.take_message() {
                    // The app closed the connection before the request was written (an idle
                    // connection closing as it was taken): it goes again on a new one.
                    Some(unsent) if reused => {
                        debug!(error = %error.error(), "a pooled connection to the app was closed; reconnecting");
                        request = unsent;
                        continue;
                    }
                    _ => return AppAnswer::Unreachable(crate::errors::chain(error.error())),
                },
            };
            let code = response.status();
            let retry_after = retry_after(response.headers());
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // Reading the answer to its end frees the connection for the next delivery; an
            // answer that breaks half-way still counts, but its connection is not reused. A
            // failing answer's first bytes say why.
            let mut body = response.into_body();
            let mut whole = true;
            let mut head = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    whole = false;
                    break;
                };
                if let Some(data) = frame.data_ref() {
                    if !code.is_success() && head.len() < DETAIL_BYTES {
                        let room = DETAIL_BYTES - head.len();
                        head.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
            if whole && code != StatusCode::SWITCHING_PROTOCOLS {
                self.checkin(sender);
            }
            let detail = if code.is_success() {
                None
            } else {
                error_detail(content_type.as_deref(), &head)
            };
            return AppAnswer::Status {
                code: code.as_u16(),
                retry_after,
                detail,
            };
        }
    }

    /// The most recently used idle connection that is still open.
    async fn checkout(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let idle = self.idle().pop()?;
            if idle.since.elapsed() > IDLE_FOR || idle.sender.is_closed() {
                // Older ones sit below it in the stack: drop them all.
                self.idle()
                    .retain(|older| older.since.elapsed() <= IDLE_FOR);
                continue;
            }
            let mut sender = idle.sender;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn checkin(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, AppAnswer> {
        let stream = TcpStream::connect(&self.inner.address)
            .await
            .map_err(|error| AppAnswer::NotListening(format!("connect: {error}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| AppAnswer::Unreachable(crate::errors::chain(&error)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "a connection to the app ended");
            }
        });
        Ok(sender)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        crate::sync::lock(&self.inner.idle)
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// The delivery headers: the envelope's ids, the attempt, and the trace context.
fn set_headers(headers: &mut HeaderMap, envelope: &Envelope, attempt: u32, trace: &TraceContext) {
    let mut set = |name: &'static str, value: &str| {
        // Values came through the publish checks (printable ASCII); a message written by
        // another producer may hold anything, and a header that cannot be sent is left out.
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    let mut id = uuid::Uuid::encode_buffer();
    set(
        "x-event-id",
        envelope.event_id.hyphenated().encode_lower(&mut id),
    );
    set("x-event-type", &envelope.event_type);
    set("x-schema-version", &envelope.schema_version.to_string());
    set("x-correlation-id", &envelope.correlation_id);
    if let Some(causation_id) = &envelope.causation_id {
        set("x-causation-id", causation_id);
    }
    if let Some(traceparent) = &trace.traceparent {
        set("traceparent", traceparent);
    }
    if let Some(tracestate) = &trace.tracestate {
        set("tracestate", tracestate);
    }
    headers.insert(
        HeaderName::from_static("x-delivery-attempt"),
        HeaderValue::from(attempt),
    );
}

#[cfg(test)]
mod tests;
