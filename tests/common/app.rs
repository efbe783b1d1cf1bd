//! A real HTTP app on loopback that records what the sidecar POSTs and answers as a test
//! scripts it.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri},
};
use serde_json::Value;

/// One request the app received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn event_id(&self) -> String {
        self.body["event_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Default)]
struct Script {
    /// Answers to give, in order, per path; then `always` or 200.
    next: HashMap<String, VecDeque<u16>>,
    always: HashMap<String, u16>,
    delay: HashMap<String, Duration>,
    /// Headers added to every answer, per path.
    headers: HashMap<String, Vec<(String, String)>>,
    /// Publish in reaction: (sidecar API URL, event type) per path.
    react: HashMap<String, (String, String)>,
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Script>>,
}

pub struct TestApp {
    pub url: String,
    shared: Shared,
    server: tokio::task::AbortHandle,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_on(0).await
    }

    /// An app on a given loopback port (0: any free one).
    pub async fn start_on(port: u16) -> TestApp {
        let shared = Shared::default();
        let router = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        })
        .abort_handle();
        TestApp {
            url,
            shared,
            server,
        }
    }

    /// Answers `statuses` in order on `path`, then the default.
    pub fn respond(&self, path: &str, statuses: &[u16]) {
        let mut script = self.shared.script.lock().unwrap();
        script
            .next
            .entry(path.to_string())
            .or_default()
            .extend(statuses);
    }

    /// Answers `status` on `path` once any scripted answers are used up.
    pub fn always(&self, path: &str, status: u16) {
        let mut script = self.shared.script.lock().unwrap();
        script.always.insert(path.to_string(), status);
    }

    /// Waits `delay` before answering on `path`.
    pub fn delay(&self, path: &str, delay: Duration) {
        let mut script = self.shared.script.lock().unwrap();
        script.delay.insert(path.to_string(), delay);
    }

    /// Adds the header `name: value` to every answer on `path` (such as a `Retry-After`).
    pub fn answer_header(&self, path: &str, name: &str, value: &str) {
        let mut script = self.shared.script.lock().unwrap();
        script
            .headers
            .entry(path.to_string())
            .or_default()
            .push((name.to_string(), value.to_string()));
    }

    /// On each delivery to `path`, publishes `event_type` through the sidecar at `api`, as
    /// an app that reacts to an event does: it echoes the event id in `X-Causation-ID` and
    /// passes the `traceparent` it received, then answers.
    pub fn react(&self, path: &str, api: &str, event_type: &str) {
        let mut script = self.shared.script.lock().unwrap();
        script
            .react
            .insert(path.to_string(), (api.to_string(), event_type.to_string()));
    }

    pub fn received(&self, path: &str) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` received at least `count` requests.
    pub async fn wait_for(&self, path: &str, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received(path);
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{path} received {} of {count} requests within {within:?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap) {
    let path = uri.path().to_string();
    let received = Received {
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    };
    shared.received.lock().unwrap().push(received);
    let (status, delay, react, answer_headers) = {
        let mut script = shared.script.lock().unwrap();
        let scripted = script.next.get_mut(&path).and_then(VecDeque::pop_front);
        let status = scripted
            .or_else(|| script.always.get(&path).copied())
            .unwrap_or(200);
        (
            status,
            script.delay.get(&path).copied(),
            script.react.get(&path).cloned(),
            script.headers.get(&path).cloned().unwrap_or_default(),
        )
    };
    let mut answer = HeaderMap::new();
    for (name, value) in answer_headers {
        answer.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(&value).unwrap(),
        );
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if let Some((api, event_type)) = react {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let published = super::http_client()
            .post(format!("{api}/v1/publish/{event_type}"))
            .header("content-type", "application/json")
            .header("X-Causation-ID", header("x-event-id"))
            .header("traceparent", header("traceparent"))
            .body("{}")
            .send()
            .await;
        if !published.is_ok_and(|r| r.status().is_success()) {
            return (StatusCode::SERVICE_UNAVAILABLE, answer);
        }
    }
    (StatusCode::from_u16(status).unwrap(), answer)
}
