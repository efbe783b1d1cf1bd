//! A stream of keyed publishes through a sidecar while a test breaks something, and the check
//! of what the app received, by event id, against what each publish was answered.
//!
//! Each event has its own `Idempotency-Key`, also written into its payload (`{"key": ..}`) so
//! that a delivery can be traced back to the publish even when no event id was answered. The
//! rules checked at the end:
//! - every event answered 202 is delivered (none lost);
//! - none is POSTed again after the app answered 2xx for it, beyond an allowed in-flight
//!   window (for kill -9 instants);
//! - every event answered 503, and never 202 later, is absent;
//! - a key answered 504 is retried with the same key until 202, and every delivery of it
//!   carries the event id of that 202.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::Semaphore, task::JoinHandle};

use super::app::TestApp;

/// How a stream publishes.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Names the scenario in the printed summary.
    pub scenario: String,
    pub event_type: String,
    /// Publishes started per second.
    pub rate: u32,
    /// How long new keys are started.
    pub duration: Duration,
    /// How long a key answered 504 is retried, after the stream ended, before it counts as
    /// unresolved.
    pub resolve_within: Duration,
    /// Pause between two attempts of one key.
    pub retry_pause: Duration,
}

impl StreamOptions {
    /// 25 events a second for `duration`.
    pub fn new(scenario: &str, event_type: &str, duration: Duration) -> Self {
        StreamOptions {
            scenario: scenario.to_string(),
            event_type: event_type.to_string(),
            rate: 25,
            duration,
            resolve_within: Duration::from_secs(30),
            retry_pause: Duration::from_millis(200),
        }
    }

    pub fn rate(mut self, rate: u32) -> Self {
        self.rate = rate;
        self
    }
}

/// What became of one key.
#[derive(Clone, Debug, Default)]
pub struct KeyRecord {
    pub key: String,
    /// Every answer's status, in order; 0 when the request itself failed.
    pub statuses: Vec<u16>,
    /// The event id of the 202, if one came.
    pub event_id: Option<String>,
    /// When the 202 came, from the start of the stream.
    pub accepted_at: Option<Duration>,
    /// How long each answer took, in order.
    pub took: Vec<Duration>,
}

impl KeyRecord {
    fn timed_out(&self) -> bool {
        self.statuses.iter().any(|&s| s == 504 || s == 0)
    }

    /// Answered 503 and nothing else: nothing was published.
    fn refused(&self) -> bool {
        self.event_id.is_none() && !self.timed_out()
    }
}

/// A stream running in a tokio task.
pub struct Stream {
    task: JoinHandle<Published>,
    accepted: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

/// The answers of a finished stream.
pub struct Published {
    pub options: StreamOptions,
    pub keys: Vec<KeyRecord>,
    /// From the start of the stream to its end (the last key started).
    pub ran: Duration,
    started: Instant,
}

/// What to check at the app.
#[derive(Clone, Debug)]
pub struct Verify {
    /// The app's path the stream's subscription delivers to.
    pub route: String,
    /// Events that may be POSTed once more after the app answered (kill -9 of the sidecar:
    /// the deliveries in flight at that instant). 0 for everything else.
    pub in_flight_window: usize,
    /// How long deliveries may take to arrive after the stream ended.
    pub within: Duration,
}

impl Verify {
    pub fn route(route: &str) -> Self {
        Verify {
            route: route.to_string(),
            in_flight_window: 0,
            within: Duration::from_secs(60),
        }
    }
}

/// The figures of one scenario.
#[derive(Clone, Debug)]
pub struct Summary {
    pub scenario: String,
    /// Keys published.
    pub events: usize,
    /// Keys answered 202 (at once or after 504s).
    pub accepted: usize,
    /// Keys answered 503 only.
    pub refused: usize,
    /// 503 and 504 answers, all attempts counted.
    pub answers_503: usize,
    pub answers_504: usize,
    /// Keys answered 504 that never got a 202.
    pub unresolved: usize,
    /// Accepted events the app never received.
    pub lost: usize,
    /// POSTs of an event after the app had answered 2xx for it.
    pub duplicates: usize,
    /// The longest time without a 202 answer while the stream ran.
    pub recovery: Duration,
    /// The longest time without a delivery while accepted events were still on their way.
    pub delivery_gap: Duration,
    /// The slowest publish answer, and the slowest 503.
    pub slowest_answer: Duration,
    pub slowest_503: Duration,
}

impl Summary {
    /// One line, starting with `fault-suite:`, for the docs.
    pub fn line(&self) -> String {
        format!(
            "fault-suite: scenario={} events={} accepted={} refused_503={} answers_503={} \
             answers_504={} unresolved={} lost={} duplicates={} recovery_ms={} \
             delivery_gap_ms={} slowest_answer_ms={} slowest_503_ms={}",
            self.scenario,
            self.events,
            self.accepted,
            self.refused,
            self.answers_503,
            self.answers_504,
            self.unresolved,
            self.lost,
            self.duplicates,
            self.recovery.as_millis(),
            self.delivery_gap.as_millis(),
            self.slowest_answer.as_millis(),
            self.slowest_503.as_millis()
        )
    }
}

impl Stream {
    /// Starts publishing through the sidecar whose API is at `api`.
    pub fn start(api: &str, options: StreamOptions) -> Stream {
        let accepted = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(
            api.to_string(),
            options,
            accepted.clone(),
            answered.clone(),
        ));
        Stream {
            task,
            accepted,
            answered,
        }
    }

    /// Keys answered 202 so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until `count` keys were answered 202.
    pub async fn wait_accepted(&self, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.accepted() < count {
            assert!(
                Instant::now() < deadline,
                "the stream had {} of {count} events accepted within {within:?}",
                self.accepted()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `more` further keys were answered 202, counted from now.
    pub async fn wait_more_accepted(&self, more: usize, within: Duration) {
        self.wait_accepted(self.accepted() + more, within).await;
    }

    /// Answers of any kind so far, retries included.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Waits for the stream to end and every key to settle.
    pub async fn finish(self) -> Published {
        self.task.await.expect("the stream task ran to its end")
    }
}

async fn run(
    api: String,
    options: StreamOptions,
    accepted: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
) -> Published {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let url = format!("{api}/v1/publish/{}", options.event_type);
    let prefix = super::unique("stream");
    let started = Instant::now();
    let every = Duration::from_secs(1) / options.rate.max(1);
    // Publishes that wait (on a confirm timeout) must not hold up the rate: each key runs in
    // its own task, at most this many at once.
    let slots = Arc::new(Semaphore::new(256));
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(every);
    let mut n = 0u64;
    while started.elapsed() < options.duration {
        tick.tick().await;
        let permit = slots.clone().acquire_owned().await.expect("open semaphore");
        let key = format!("{prefix}-{n}");
        n += 1;
        let attempt = Attempt {
            http: http.clone(),
            url: url.clone(),
            started,
            stream_end: started + options.duration,
            options: options.clone(),
            accepted: accepted.clone(),
            answered: answered.clone(),
        };
        let records = records.clone();
        tasks.push(tokio::spawn(async move {
            let record = attempt.publish(key).await;
            records.lock().unwrap().push(record);
            drop(permit);
        }));
    }
    let ran = started.elapsed();
    for task in tasks {
        task.await.expect("a publish task ran to its end");
    }
    let mut keys = std::mem::take(&mut *records.lock().unwrap());
    keys.sort_by_key(|k| {
        k.key
            .split('-')
            .next_back()
            .and_then(|n| n.parse::<u64>().ok())
    });
    Published {
        options,
        keys,
        ran,
        started,
    }
}

/// One key's publishes.
struct Attempt {
    http: reqwest::Client,
    url: String,
    started: Instant,
    stream_end: Instant,
    options: StreamOptions,
    accepted: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
}

impl Attempt {
    /// Publishes once; after a 504 (or no answer) again with the same key until a 202, also
    /// through 503s, since the first attempt may have reached the broker.
    async fn publish(self, key: String) -> KeyRecord {
        let body = serde_json::json!({ "key": key }).to_string();
        let mut record = KeyRecord {
            key: key.clone(),
            ..KeyRecord::default()
        };
        let give_up = self.stream_end + self.options.resolve_within;
        loop {
            let sent = Instant::now();
            let response = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("Idempotency-Key", &key)
                .body(body.clone())
                .send()
                .await;
            let answer = match response {
                Ok(response) => Some(super::read(response).await),
                Err(_) => None,
            };
            record.took.push(sent.elapsed());
            self.answered.fetch_add(1, Ordering::SeqCst);
            let status = answer.as_ref().map_or(0, |a| a.status);
            record.statuses.push(status);
            match status {
                202 => {
                    let answer = answer.expect("a 202 is an answer");
                    let event_id = answer.body["event_id"].as_str().unwrap_or_default();
                    record.event_id = Some(event_id.to_string());
                    record.accepted_at = Some(self.started.elapsed());
                    self.accepted.fetch_add(1, Ordering::SeqCst);
                    return record;
                }
                503 if !record.timed_out() => return record,
                503 | 504 | 0 => {}
                other => panic!("key {key}: unexpected answer {other}: {answer:?}"),
            }
            if Instant::now() >= give_up {
                return record;
            }
            tokio::time::sleep(self.options.retry_pause).await;
        }
    }
}

impl Published {
    /// Waits until the app has every accepted event on `verify.route` (bounded), then checks
    /// the rules, prints the summary line and fails the test on any broken rule.
    pub async fn verify(&self, app: &TestApp, verify: &Verify) -> Summary {
        let accepted: HashSet<&str> = self
            .keys
            .iter()
            .filter_map(|k| k.event_id.as_deref())
            .collect();
        let deadline = Instant::now() + verify.within;
        loop {
            let delivered: HashSet<String> = app
                .received(&verify.route)
                .iter()
                .map(|r| r.event_id())
                .collect();
            if accepted.iter().all(|id| delivered.contains(*id)) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Late copies, if any, come soon after: a quiet second lets them show.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (summary, problems) = self.check(app, verify);
        println!("{}", summary.line());
        assert!(
            problems.is_empty(),
            "{}: {}\n{}",
            self.options.scenario,
            summary.line(),
            problems.join("\n")
        );
        summary
    }

    /// The figures, and every broken rule in words.
    fn check(&self, app: &TestApp, verify: &Verify) -> (Summary, Vec<String>) {
        let received = app.received(&verify.route);
        let mut posts: HashMap<String, usize> = HashMap::new();
        let mut ids_of_key: HashMap<String, HashSet<String>> = HashMap::new();
        for r in &received {
            *posts.entry(r.event_id()).or_default() += 1;
            if let Some(key) = r.body["payload"]["key"].as_str() {
                ids_of_key
                    .entry(key.to_string())
                    .or_default()
                    .insert(r.event_id());
            }
        }
        let mut problems = Vec::new();
        let mut lost = 0;
        let mut unresolved = 0;
        for key in &self.keys {
            match &key.event_id {
                Some(id) => {
                    if !posts.contains_key(id) {
                        lost += 1;
                        problems.push(format!(
                            "lost: key {} event {id} {:?}",
                            key.key, key.statuses
                        ));
                    }
                    let ids = ids_of_key.get(&key.key).cloned().unwrap_or_default();
                    if ids.iter().any(|other| other != id) {
                        problems.push(format!(
                            "key {} answered event {id} but delivered as {ids:?}",
                            key.key
                        ));
                    }
                }
                None if key.refused() => {
                    if let Some(ids) = ids_of_key.get(&key.key) {
                        problems.push(format!(
                            "key {} was answered 503 but delivered as {ids:?}",
                            key.key
                        ));
                    }
                }
                None => {
                    unresolved += 1;
                    problems.push(format!(
                        "key {} never got a 202 after a 504: {:?}",
                        key.key, key.statuses
                    ));
                }
            }
        }
        // The app answers every POST on the route at once with 200, so a second POST of an
        // event came after the app had accepted it.
        let repeated: Vec<(&String, &usize)> = posts.iter().filter(|(_, n)| **n > 1).collect();
        let duplicates: usize = repeated.iter().map(|(_, n)| *n - 1).sum();
        if repeated.len() > verify.in_flight_window {
            let text: String = repeated
                .iter()
                .take(10)
                .map(|(id, n)| format!(" {id}×{n}"))
                .collect();
            problems.push(format!(
                "{} events POSTed more than once (allowed: {}):{text}",
                repeated.len(),
                verify.in_flight_window
            ));
        }
        let count = |status: u16| {
            self.keys
                .iter()
                .flat_map(|k| &k.statuses)
                .filter(|&&s| s == status)
                .count()
        };
        let summary = Summary {
            scenario: self.options.scenario.clone(),
            events: self.keys.len(),
            accepted: accepted_count(&self.keys),
            refused: self.keys.iter().filter(|k| k.refused()).count(),
            answers_503: count(503),
            answers_504: count(504) + count(0),
            unresolved,
            lost,
            duplicates,
            recovery: self.longest_gap(),
            delivery_gap: self.delivery_gap(&received),
            slowest_answer: self.slowest(|_| true),
            slowest_503: self.slowest(|status| status == 503),
        };
        (summary, problems)
    }

    /// How long after `at` the first publish answered 202 came (a recovery time).
    pub fn first_accepted_after(&self, at: Instant) -> Option<Duration> {
        let since_start = at.saturating_duration_since(self.started);
        self.keys
            .iter()
            .filter_map(|k| k.accepted_at)
            .filter(|accepted| *accepted >= since_start)
            .min()
            .map(|accepted| accepted - since_start)
    }

    /// The slowest answer whose status passes `filter`.
    fn slowest(&self, filter: impl Fn(u16) -> bool) -> Duration {
        self.keys
            .iter()
            .flat_map(|k| k.statuses.iter().zip(&k.took))
            .filter(|(status, _)| filter(**status))
            .map(|(_, took)| *took)
            .max()
            .unwrap_or_default()
    }

    /// The longest time without a 202 between the start and the end of the stream.
    fn longest_gap(&self) -> Duration {
        let mut times: Vec<Duration> = self.keys.iter().filter_map(|k| k.accepted_at).collect();
        times.push(Duration::ZERO);
        times.push(self.ran);
        times.sort();
        times
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or_default()
    }

    /// The longest time without a delivery, from the start of the stream until the last
    /// accepted event arrived.
    fn delivery_gap(&self, received: &[super::app::Received]) -> Duration {
        let accepted: HashSet<&str> = self
            .keys
            .iter()
            .filter_map(|k| k.event_id.as_deref())
            .collect();
        let mut times: Vec<Duration> = received
            .iter()
            .filter(|r| accepted.contains(r.event_id().as_str()))
            .map(|r| r.at.saturating_duration_since(self.started))
            .collect();
        times.push(Duration::ZERO);
        times.sort();
        times
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or_default()
    }
}

fn accepted_count(keys: &[KeyRecord]) -> usize {
    keys.iter().filter(|k| k.event_id.is_some()).count()
}
