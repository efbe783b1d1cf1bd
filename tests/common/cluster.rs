//! The 3-node RabbitMQ cluster of `scripts/cluster` as tests use it: its URLs, a connection to
//! one node, and the faults a test injects (kill -9, stop_app, a memory alarm, a connection
//! closed by the broker), each undone when the handle is dropped.
//!
//! One test at a time may hold the cluster: the handle takes a machine-wide lock, so that test
//! runs of other checkouts (or `cargo test`'s threads) cannot stop nodes under each other.

use std::{
    collections::BTreeSet,
    net::TcpListener,
    path::Path,
    process::Output,
    sync::Mutex,
    time::{Duration, Instant},
};

use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

use super::Broker;

/// The nodes, by number: `c1@localhost` .. `c3@localhost`.
pub const NODES: [u8; 3] = [1, 2, 3];

/// Held while a test uses the cluster. A listening socket is a lock the kernel releases when
/// the process dies, however it dies.
const LOCK_ADDR: &str = "127.0.0.1:25680";
const LOCK_WAIT: Duration = Duration::from_secs(150);
/// The bound of a command that starts or restarts nodes (the script bounds its own waits).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(150);
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster, held by one test.
pub struct Cluster {
    _lock: TcpListener,
    http: reqwest::Client,
    /// Faults injected and not undone yet, undone on drop.
    disturbed: Mutex<Disturbed>,
}

#[derive(Default)]
struct Disturbed {
    /// Nodes killed or with their application stopped.
    nodes: BTreeSet<u8>,
    /// Nodes with a memory alarm.
    alarms: BTreeSet<u8>,
}

impl Cluster {
    /// Takes the cluster for this test, starting it first if it is not up and joined
    /// (`scripts/cluster start`, which is quick when it is).
    pub async fn take() -> Cluster {
        let deadline = Instant::now() + LOCK_WAIT;
        let lock = loop {
            match TcpListener::bind(LOCK_ADDR) {
                Ok(lock) => break lock,
                Err(_) => {
                    assert!(
                        Instant::now() < deadline,
                        "the test cluster stayed in use by another test for {LOCK_WAIT:?} \
                         (something listens on {LOCK_ADDR})"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        script(&["start"]).await;
        let cluster = Cluster {
            _lock: lock,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(MANAGEMENT_TIMEOUT)
                .build()
                .unwrap(),
            disturbed: Mutex::new(Disturbed::default()),
        };
        cluster.clear_left_alarms().await;
        cluster.empty().await;
        cluster
    }

    /// Clears memory alarms an earlier test left set (a test process killed on its timeout
    /// undoes nothing).
    async fn clear_left_alarms(&self) {
        let Some(Value::Array(nodes)) = self.get("/api/nodes?columns=name,mem_alarm").await else {
            return;
        };
        let alarmed = nodes
            .iter()
            .filter(|node| node["mem_alarm"] == true)
            .filter_map(|node| node_number(&node["name"]));
        for n in alarmed {
            ctl(n, &["set_vm_memory_high_watermark", "0.4"]).await;
        }
    }

    /// Deletes every queue and exchange (but the broker's own) that an earlier test left
    /// behind when it failed half-way. Safe: whoever holds the lock owns the cluster.
    async fn empty(&self) {
        let names = |listed: Option<Value>| -> Vec<String> {
            let Some(Value::Array(all)) = listed else {
                return Vec::new();
            };
            all.iter()
                .filter_map(|item| item["name"].as_str().map(str::to_owned))
                .filter(|name| !name.is_empty() && !name.starts_with("amq."))
                .collect()
        };
        let queues = names(self.get("/api/queues/%2f?columns=name").await);
        let exchanges = names(self.get("/api/exchanges/%2f?columns=name").await);
        for (kind, list) in [("queues", queues), ("exchanges", exchanges)] {
            for name in list {
                let mut url = reqwest::Url::parse(&Self::management(self.running_node())).unwrap();
                url.path_segments_mut()
                    .unwrap()
                    .extend(["api", kind, "/", &name]);
                let deleted = self
                    .http
                    .delete(url)
                    .basic_auth("guest", Some("guest"))
                    .send()
                    .await;
                assert!(
                    deleted
                        .as_ref()
                        .is_ok_and(|r| r.status().is_success()
                            || r.status() == reqwest::StatusCode::NOT_FOUND),
                    "cannot delete the left-over {kind} {name}: {deleted:?}"
                );
            }
        }
    }

    pub fn node_name(n: u8) -> String {
        format!("c{n}@localhost")
    }

    /// The AMQP URL of node `n`.
    pub fn url(n: u8) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + u16::from(n))
    }

    /// Every node's URL, comma-separated, as `CAUSEWAY_AMQP_URL` takes them.
    pub fn urls() -> String {
        NODES.map(Self::url).join(",")
    }

    /// The management API of node `n`.
    pub fn management(n: u8) -> String {
        format!("http://127.0.0.1:{}", 15680 + u16::from(n))
    }

    /// A test's own connection to node `n`.
    pub async fn broker(n: u8) -> Broker {
        let connection = Connection::connect(&Self::url(n), ConnectionProperties::default())
            .await
            .unwrap_or_else(|error| panic!("cannot connect to node {n}: {error}"));
        let channel = connection.create_channel().await.unwrap();
        Broker {
            connection,
            channel,
        }
    }

    /// A connection to a node that runs, for setup and cleanup.
    pub async fn any_broker(&self) -> Broker {
        let n = self.running_node();
        Self::broker(n).await
    }

    /// A node that is not disturbed.
    pub fn running_node(&self) -> u8 {
        let disturbed = self.disturbed.lock().unwrap();
        NODES
            .into_iter()
            .find(|n| !disturbed.nodes.contains(n))
            .expect("a node runs")
    }

    /// Kills node `n` at once (kill -9 of its Erlang VM).
    pub async fn kill(&self, n: u8) {
        self.disturbed.lock().unwrap().nodes.insert(n);
        script(&["kill", &n.to_string()]).await;
    }

    /// Starts node `n` again and waits until it is back in the cluster.
    pub async fn restart(&self, n: u8) {
        script(&["restart", &n.to_string()]).await;
        self.disturbed.lock().unwrap().nodes.remove(&n);
    }

    /// `rabbitmqctl stop_app` on node `n`: the broker stops, its Erlang VM stays.
    pub async fn stop_app(&self, n: u8) {
        self.disturbed.lock().unwrap().nodes.insert(n);
        ctl(n, &["stop_app"]).await;
    }

    /// `rabbitmqctl start_app` on node `n`, waiting until it runs.
    pub async fn start_app(&self, n: u8) {
        ctl(n, &["start_app"]).await;
        self.disturbed.lock().unwrap().nodes.remove(&n);
    }

    /// `rabbitmqctl stop_app` on every node at once: the whole broker stops.
    pub async fn stop_all_apps(&self) {
        self.disturbed.lock().unwrap().nodes.extend(NODES);
        let stops = NODES.map(|n| ctl(n, &["stop_app"]));
        futures_util::future::join_all(stops).await;
    }

    /// Starts the application of every stopped or killed node at once (a cluster whose
    /// nodes all stopped must start together: each waits for the last one stopped), and
    /// waits until all three run in one cluster.
    pub async fn start_all(&self) {
        script(&["start"]).await;
        self.disturbed.lock().unwrap().nodes.clear();
    }

    /// Raises a memory alarm on node `n` (a high watermark of 0): the broker blocks every
    /// publishing connection of the cluster.
    pub async fn set_memory_alarm(&self, n: u8) {
        self.disturbed.lock().unwrap().alarms.insert(n);
        ctl(n, &["set_vm_memory_high_watermark", "0"]).await;
    }

    /// Clears the memory alarm of node `n` (the default watermark, 0.4).
    pub async fn clear_memory_alarm(&self, n: u8) {
        ctl(n, &["set_vm_memory_high_watermark", "0.4"]).await;
        self.disturbed.lock().unwrap().alarms.remove(&n);
    }

    /// GET on the management API of a running node.
    async fn get(&self, path: &str) -> Option<Value> {
        let n = self.running_node();
        let response = self
            .http
            .get(format!("{}{path}", Self::management(n)))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// The node that leads quorum queue `queue`, waiting until it has one.
    pub async fn queue_leader(&self, queue: &str, within: Duration) -> u8 {
        let path = format!("/api/queues/%2f/{}", encode(queue));
        let deadline = Instant::now() + within;
        loop {
            let leader = self
                .get(&path)
                .await
                .and_then(|q| node_number(&q["leader"]));
            if let Some(leader) = leader {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} had no leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The consumers of `queue`, as the broker counts them.
    pub async fn consumers(&self, queue: &str) -> Option<u64> {
        let path = format!("/api/queues/%2f/{}", encode(queue));
        self.get(&path).await?["consumers"].as_u64()
    }

    /// The broker's connections whose client named them `name` (such as
    /// `causeway {service} publisher`): (the broker's name for it, its node).
    pub async fn connections_named(&self, name: &str) -> Vec<(String, u8)> {
        let Some(Value::Array(all)) = self.get("/api/connections").await else {
            return Vec::new();
        };
        all.iter()
            .filter(|c| c["client_properties"]["connection_name"] == name)
            .filter_map(|c| Some((c["name"].as_str()?.to_string(), node_number(&c["node"])?)))
            .collect()
    }

    /// The node the connection named `name` is on, waiting until there is exactly one.
    pub async fn connection_node(&self, name: &str, within: Duration) -> u8 {
        let deadline = Instant::now() + within;
        loop {
            let found = self.connections_named(name).await;
            if let [(_, node)] = found.as_slice() {
                return *node;
            }
            assert!(
                Instant::now() < deadline,
                "no single connection {name:?} within {within:?}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Closes the connection named `name` from the broker's side (the management API), as an
    /// operator or a broker policy would. Returns the node it was on.
    pub async fn close_connection(&self, name: &str, within: Duration) -> u8 {
        let node = self.connection_node(name, within).await;
        let (broker_name, _) = self.connections_named(name).await.remove(0);
        let mut url = reqwest::Url::parse(&Self::management(self.running_node())).unwrap();
        url.path_segments_mut()
            .unwrap()
            .extend(["api", "connections", &broker_name]);
        let response = self
            .http
            .delete(url)
            .basic_auth("guest", Some("guest"))
            .header("X-Reason", "closed by the fault test")
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "closing {broker_name:?}: {}",
            response.status()
        );
        node
    }

    /// Undoes what is still disturbed: restarts stopped or killed nodes, clears alarms.
    fn restore(&self) {
        let disturbed = std::mem::take(&mut *self.disturbed.lock().unwrap());
        for n in disturbed.alarms {
            let _ = run_blocking(
                "rabbitmqctl",
                &ctl_args(n, &["set_vm_memory_high_watermark", "0.4"]),
            );
        }
        if !disturbed.nodes.is_empty() {
            let _ = run_blocking(&script_path(), &["start"]);
        }
    }
}

impl Drop for Cluster {
    /// A test that failed half-way still leaves the cluster whole for the next one.
    fn drop(&mut self) {
        self.restore();
    }
}

/// 2 for "c2@localhost".
fn node_number(node: &Value) -> Option<u8> {
    let name = node.as_str()?;
    let n = name
        .strip_prefix('c')?
        .strip_suffix("@localhost")?
        .parse()
        .ok()?;
    NODES.contains(&n).then_some(n)
}

/// A queue name as one path segment of the management API.
fn encode(segment: &str) -> String {
    let mut url = reqwest::Url::parse("http://x").unwrap();
    url.path_segments_mut().unwrap().push(segment);
    url.path().trim_start_matches('/').to_string()
}

fn script_path() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/cluster")
        .display()
        .to_string()
}

fn ctl_args(n: u8, args: &[&str]) -> Vec<String> {
    let mut all = vec!["-q".to_string(), "-n".to_string(), Cluster::node_name(n)];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

/// Runs `scripts/cluster` with `args`; panics with its output when it fails.
async fn script(args: &[&str]) {
    run(
        &script_path(),
        args.iter().map(|a| a.to_string()).collect(),
        SCRIPT_TIMEOUT,
    )
    .await;
}

/// Runs `rabbitmqctl -n cN@localhost` with `args`; panics with its output when it fails.
async fn ctl(n: u8, args: &[&str]) {
    run("rabbitmqctl", ctl_args(n, args), CTL_TIMEOUT).await;
}

async fn run(program: &str, args: Vec<String>, within: Duration) -> Output {
    let mut command = tokio::process::Command::new(program);
    command.args(&args).kill_on_drop(true);
    let output = tokio::time::timeout(within, command.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish within {within:?}"))
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// For `Drop`, where nothing can be awaited. The script and the CLI bound their own waits.
fn run_blocking<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> std::io::Result<Output> {
    std::process::Command::new(program).args(args).output()
}
