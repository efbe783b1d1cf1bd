//! The real sidecar binary as a child process, and the local servers it talks to (the app,
//! an OTLP receiver).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::process::Proc;

/// The real sidecar binary as a child process.
pub struct Sidecar {
    child: Child,
    pub api: String,
    pub admin: String,
}

impl Sidecar {
    pub fn start(env: &[(&str, String)]) -> Sidecar {
        // BENCH_SIDECAR_BIN measures another build of the binary.
        let binary = std::env::var("BENCH_SIDECAR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_causeway").to_owned());
        let child = Command::new(binary)
            .env_clear()
            .env("CAUSEWAY_API_ADDR", "127.0.0.1:0")
            .env("CAUSEWAY_ADMIN_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn,causeway::sidecar=info")
            .envs(std::env::var("CAUSEWAY_WORKER_THREADS").map(|n| ("CAUSEWAY_WORKER_THREADS", n)))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Owned at once, so that every path below ends the process (Drop).
        let mut sidecar = Sidecar {
            child,
            api: String::new(),
            admin: String::new(),
        };
        let stdout = sidecar.child.stdout.take().unwrap();
        let found = Arc::new(Mutex::new(None));
        {
            let found = found.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let Ok(json) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if json["message"] == "listening" {
                        *found.lock().unwrap() = Some((
                            json["api_addr"].as_str().unwrap().to_owned(),
                            json["admin_addr"].as_str().unwrap().to_owned(),
                        ));
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((api, admin)) = found.lock().unwrap().clone() {
                sidecar.api = format!("http://{api}");
                sidecar.admin = format!("http://{admin}");
                return sidecar;
            }
            assert!(Instant::now() < deadline, "the sidecar did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub async fn wait_ready(&self) {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{}/readyz", self.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sidecar did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sidecar's process, for its CPU time and memory.
    pub fn proc(&self) -> Proc {
        Proc::new(self.child.id())
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.proc().cpu_seconds()
    }

    /// Peak resident memory so far, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        self.proc().peak_rss_mb()
    }

    /// With `BENCH_PERF=dir` set, records the sidecar's stacks (`perf record`) into
    /// `dir/{what}.perf.data` until the returned guard is dropped.
    pub fn profile(&self, what: &str) -> Option<Profile> {
        let dir = std::env::var("BENCH_PERF").ok()?;
        let child = Command::new("perf")
            .args([
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf,32768",
                "-o",
            ])
            .arg(format!("{dir}/{what}.perf.data"))
            .args(["-p", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        Some(Profile(child))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Ends a child process with SIGTERM (a drain, for the sidecar) and waits for it.
pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A running `perf record`; dropping it stops the recording and waits for the file.
pub struct Profile(Child);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A local app that answers 200 to everything and counts.
pub async fn app(received: Arc<AtomicU64>) -> String {
    use axum::{Router, extract::State, http::StatusCode};
    async fn take(State(received): State<Arc<AtomicU64>>) -> StatusCode {
        received.fetch_add(1, Ordering::Relaxed);
        StatusCode::OK
    }
    let router = Router::new().fallback(take).with_state(received);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// An OTLP/HTTP endpoint that accepts every export and keeps nothing.
pub async fn otlp_sink() -> String {
    use axum::Router;
    let router = Router::new().fallback(|| async { "" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}
