//! The benchmark's lean HTTP client and the timing of a measurement.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::RUN;

/// Latencies and a count of one measurement.
pub struct Sample {
    pub count: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }
}

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Runs `clients` loops for `RUN`, each timing `once`; all share the same start and end.
pub async fn measure<F, Fut>(clients: usize, once: F) -> Sample
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let end = started + RUN;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let once = once.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < end {
                    let at = Instant::now();
                    if once(client).await {
                        latencies.push(at.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Sample {
        count: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    }
}

/// The publish request every client sends: the payload to `/v1/publish/Bench`, with
/// `headers` (whole header lines) added.
pub fn publish_request(addr: &str, headers: &str) -> Vec<u8> {
    let body = crate::payload();
    format!(
        "POST /v1/publish/Bench HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Publishes through an HTTP API (`http://host:port`) with `clients` keep-alive connections.
///
/// The client is as lean as `wrk`: one prepared request, written whole, and an answer read
/// only as far as its status and length. The benchmark measures the server, and every
/// microsecond a heavier client spends is taken from the broker on this shared machine.
pub async fn http_publish(api: &str, clients: usize) -> Sample {
    http_publish_with(api, clients, "").await
}

/// [`http_publish`] with `headers` (whole header lines) added to every request.
pub async fn http_publish_with(api: &str, clients: usize, headers: &str) -> Sample {
    let addr = api.trim_start_matches("http://").to_owned();
    let request = Arc::new(publish_request(&addr, headers));
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        let connection = HttpConnection::open(&addr).await.unwrap();
        connections.push(Arc::new(tokio::sync::Mutex::new(connection)));
    }
    let connections = Arc::new(connections);
    measure(clients, move |client| {
        let (connections, request) = (connections.clone(), request.clone());
        async move {
            let mut connection = connections[client].lock().await;
            connection.exchange(&request).await == Some(202)
        }
    })
    .await
}

/// One keep-alive HTTP/1.1 connection that sends prepared requests.
pub struct HttpConnection {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl HttpConnection {
    pub async fn open(addr: &str) -> std::io::Result<HttpConnection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Sends `request` and reads the whole answer; its status, or `None` when the
    /// connection failed.
    pub async fn exchange(&mut self, request: &[u8]) -> Option<u16> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(request).await.ok()?;
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buffer[..end]).ok()?;
                let status = head.get(9..12)?.parse().ok()?;
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                while self.buffer.len() < total {
                    self.read().await?;
                }
                self.buffer.drain(..total);
                return Some(status);
            }
            self.read().await?;
        }
    }

    async fn read(&mut self) -> Option<()> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Some(())
    }
}
