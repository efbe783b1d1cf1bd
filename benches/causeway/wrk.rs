//! `wrk` as a second, external load generator: the same POST, from a process of its own.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::RUN;

/// What one `wrk` run measured.
pub struct WrkRun {
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Answers with another status, and connect, read, write and timeout errors.
    pub failed: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Whether `wrk` can be run; when not, says so once, with how to get it.
pub fn available() -> bool {
    let found = Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        println!("   wrk is not installed: its rows are skipped (Debian: apt-get install -y wrk)");
    }
    found
}

/// The Lua script that makes wrk send the benchmark's publish and print its summary as
/// one JSON line.
fn script() -> String {
    let body = crate::payload();
    format!(
        r#"wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('result {{"requests":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p99_us":%.0f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#
    )
}

/// Runs wrk against `api`'s publish endpoint with `connections` keep-alive connections
/// on two threads for `RUN`.
pub async fn publish(api: &str, connections: usize) -> WrkRun {
    let path = std::env::temp_dir().join(format!("causeway-bench-{}.lua", std::process::id()));
    std::fs::write(&path, script()).unwrap();
    let output = tokio::process::Command::new("wrk")
        .args(["-t2", &format!("-c{connections}")])
        .arg(format!("-d{}s", RUN.as_secs()))
        .args(["--timeout", "10s", "-s"])
        .arg(&path)
        .arg(format!("{api}/v1/publish/Bench"))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("wrk runs");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(result) = stdout
        .lines()
        .find_map(|line| line.strip_prefix("result "))
        .and_then(|json| serde_json::from_str::<Value>(json).ok())
    else {
        panic!(
            "wrk printed no result (exit {:?}):\n{stdout}\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let number = |name: &str| result[name].as_f64().unwrap_or_default();
    let errors = ["connect", "read", "write", "timeout"]
        .iter()
        .map(|name| number(name))
        .sum::<f64>();
    WrkRun {
        ok: (number("requests") - number("status")) as u64,
        failed: (number("status") + errors) as u64,
        seconds: number("duration_us") / 1e6,
        p50_ms: number("p50_us") / 1000.0,
        p99_ms: number("p99_us") / 1000.0,
    }
}
