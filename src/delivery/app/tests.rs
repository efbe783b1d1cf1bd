//! The app client against a real HTTP server on loopback, written by hand so that each test
//! controls exactly how the app answers and when it closes connections.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::value::RawValue;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use uuid::Uuid;

use super::*;
use crate::envelope::now_rfc3339;

fn envelope() -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        event_type: "OrderPlaced".into(),
        schema_version: "1.0".parse().unwrap(),
        correlation_id: "flow-1".into(),
        causation_id: None,
        occurred_at: now_rfc3339(),
        source: "orders".into(),
        payload: RawValue::from_string("{}".into()).unwrap(),
        cloudevents: None,
    }
}

/// How the test app ends each answer.
#[derive(Clone, Copy)]
enum After {
    /// Keeps the connection for the next request.
    KeepAlive,
    /// Says `connection: close` and closes.
    SayClose,
    /// Closes without saying so, as an app closing an idle connection does.
    Drop,
}

/// An app answering every request with `answer` (status line and headers, then a chunked
/// body); returns its base URL, the connections it accepted and the requests it read.
async fn app(
    answer: &'static str,
    after: After,
) -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (accepted, seen) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    let Some(request) = read_request(&mut stream, &mut buffer).await else {
                        return;
                    };
                    seen.lock().unwrap().push(request);
                    let close = matches!(after, After::SayClose);
                    let text = format!(
                        "{answer}\r\ntransfer-encoding: chunked\r\n{}\r\n5\r\nhello\r\n0\r\n\r\n",
                        if close { "connection: close\r\n" } else { "" }
                    );
                    stream.write_all(text.as_bytes()).await.unwrap();
                    if !matches!(after, After::KeepAlive) {
                        return;
                    }
                }
            });
        }
    });
    (base, connections, requests)
}

/// Reads one request with a `content-length` body; its head, or `None` at the end.
async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buffer.len() < end + 4 + length {
                read_more(stream, buffer).await?;
            }
            buffer.drain(..end + 4 + length);
            return Some(head);
        }
        read_more(stream, buffer).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn native(envelope: &Envelope) -> Outgoing {
    Outgoing::new(
        DeliveryFormat::Causeway,
        envelope,
        Some(b"{\"event\":1}"),
        &TraceContext::default(),
    )
}

async fn deliver(client: &AppClient, route: &str) -> AppAnswer {
    let envelope = envelope();
    client
        .deliver(
            route,
            &native(&envelope),
            &envelope,
            1,
            &TraceContext::default(),
            Duration::from_secs(5),
        )
        .await
}

fn ok() -> AppAnswer {
    AppAnswer::Status {
        code: 200,
        retry_after: None,
        detail: None,
    }
}

#[tokio::test]
async fn answers_are_read_whole_and_one_connection_serves_every_delivery() {
    let (base, connections, requests) = app("HTTP/1.1 200 OK", After::KeepAlive).await;
    let client = AppClient::new(&AppUrl::parse(&base).unwrap());
    for _ in 0..3 {
        assert_eq!(deliver(&client, "/events").await, ok());
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let requests = requests.lock().unwrap();
    assert_eq!(requests.len(), 3);
    let first = requests[0].to_ascii_lowercase();
    assert!(first.starts_with("post /events http/1.1"), "{first}");
    assert!(first.contains("content-type: application/json"), "{first}");
    assert!(first.contains("x-delivery-attempt: 1"), "{first}");
    assert!(first.contains("x-correlation-id: flow-1"), "{first}");
    assert!(
        first.contains(&format!("host: {}", base.trim_start_matches("http://"))),
        "{first}"
    );
}

#[tokio::test]
async fn an_app_that_closes_every_connection_still_gets_every_delivery() {
    for after in [After::SayClose, After::Drop] {
        let (base, connections, requests) = app("HTTP/1.1 200 OK", after).await;
        let client = AppClient::new(&AppUrl::parse(&base).unwrap());
        for _ in 0..3 {
            assert_eq!(deliver(&client, "/events").await, ok());
            // The close reaches the client's connection before the next delivery, as an
            // idle timeout in the app would.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        assert_eq!(requests.lock().unwrap().len(), 3);
    }
}

#[tokio::test]
async fn a_base_path_prefixes_every_route_and_retry_after_is_read() {
    let (base, _, requests) = app(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7",
        After::KeepAlive,
    )
    .await;
    let client = AppClient::new(&AppUrl::parse(&format!("{base}/hooks/")).unwrap());
    assert_eq!(
        deliver(&client, "/events").await,
        AppAnswer::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(7)),
            detail: None,
        }
    );
    let head = requests.lock().unwrap()[0].clone();
    assert!(head.starts_with("POST /hooks/events HTTP/1.1"), "{head}");
}

#[tokio::test]
async fn nothing_listening_is_told_apart_from_a_slow_app() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    // Accepted by the kernel but never answered.
    let client = AppClient::new(&AppUrl::parse(&base).unwrap());
    let envelope = envelope();
    let answer = client
        .deliver(
            "/events",
            &native(&envelope),
            &envelope,
            1,
            &TraceContext::default(),
            Duration::from_millis(200),
        )
        .await;
    assert_eq!(answer, AppAnswer::Timeout);
    drop(listener);
    let answer = deliver(&client, "/events").await;
    assert!(matches!(answer, AppAnswer::NotListening(_)), "{answer:?}");
}

#[tokio::test]
async fn the_cloudevents_formats_carry_the_attributes_and_causeway_headers() {
    let (base, _, requests) = app("HTTP/1.1 200 OK", After::KeepAlive).await;
    let client = AppClient::new(&AppUrl::parse(&base).unwrap());
    let mut envelope = envelope();
    envelope.causation_id = Some("cause 1".into());
    let trace = TraceContext {
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    };
    for format in [
        DeliveryFormat::CloudeventsBinary,
        DeliveryFormat::CloudeventsStructured,
    ] {
        let outgoing = Outgoing::new(format, &envelope, None, &trace);
        let answer = client
            .deliver(
                "/ce",
                &outgoing,
                &envelope,
                2,
                &trace,
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(answer, ok());
    }
    let requests = requests.lock().unwrap();
    let binary = requests[0].to_ascii_lowercase();
    let id = envelope.event_id.to_string();
    for line in [
        "content-type: application/json".to_owned(),
        "ce-specversion: 1.0".into(),
        format!("ce-id: {id}"),
        "ce-source: orders".into(),
        "ce-type: orderplaced".into(),
        "ce-correlationid: flow-1".into(),
        "ce-causationid: cause%201".into(),
        "ce-schemaversion: 1.0".into(),
        "ce-traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        format!("x-event-id: {id}"),
        "x-delivery-attempt: 2".into(),
    ] {
        assert!(binary.contains(&line), "{line} in {binary}");
    }
    let structured = requests[1].to_ascii_lowercase();
    assert!(
        structured.contains("content-type: application/cloudevents+json"),
        "{structured}"
    );
    assert!(!structured.contains("ce-id:"), "{structured}");
    assert!(
        structured.contains(&format!("x-event-id: {id}")),
        "{structured}"
    );
}
