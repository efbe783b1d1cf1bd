//! The delivery outcome table end to end: for each status code the contract names, and for an
//! app that does not answer in time, how many POSTs the app gets and what the dead letter says;
//! and `Retry-After` against the configured backoff. One sidecar, one subscription per row, all
//! rows at once.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Broker, Settings, Sidecar, app::TestApp};
use futures_util::future::join_all;
use serde_json::Value;

/// The codes by which an app rejects an event: one POST, then a dead letter `rejected`.
const REJECT: [u16; 8] = [400, 401, 403, 410, 413, 415, 422, 501];
/// Codes that are retried: `max_attempts` POSTs, then a dead letter `max-attempts`.
const RETRY: [u16; 8] = [404, 408, 409, 429, 500, 502, 503, 504];
const MAX_ATTEMPTS: usize = 3;
const ARRIVES: Duration = Duration::from_secs(20);
/// What the sidecar and the broker may add to a backoff delay between two POSTs on a busy
/// machine (the answer, the move to a wait queue, the way back, the next POST).
const SLACK: Duration = Duration::from_millis(1500);

/// What the app does with the row's event.
#[derive(Clone, Copy)]
enum Answer {
    /// Answers this status, with this `Retry-After` (seconds) when there is one.
    Status(u16, Option<u64>),
    /// Answers 200, but only after the subscription's `timeout_ms`.
    TooSlow,
}

/// What must happen to the row's event.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    Rejected,
    MaxAttempts,
}

struct Row {
    label: String,
    answer: Answer,
    expect: Expect,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    timeout_ms: u64,
}

impl Row {
    fn new(label: String, answer: Answer, expect: Expect) -> Row {
        Row {
            label,
            answer,
            expect,
            backoff_initial_ms: 50,
            backoff_max_ms: 200,
            timeout_ms: 10_000,
        }
    }

    fn name(&self) -> String {
        format!("row-{}", self.label)
    }

    fn event_type(&self) -> String {
        format!("Row.{}", self.label)
    }

    fn route(&self) -> String {
        format!("/row/{}", self.label)
    }

    fn posts(&self) -> usize {
        match self.expect {
            Expect::Rejected => 1,
            Expect::MaxAttempts => MAX_ATTEMPTS,
        }
    }

    /// The subscription, one delivery at a time so that `common::marker` applies.
    fn toml(&self) -> String {
        format!(
            "[[subscriptions]]\nname = \"{}\"\nevent_type = \"{}\"\nroute = \"{}\"\n\
             max_attempts = {MAX_ATTEMPTS}\nbackoff_initial_ms = {}\nbackoff_max_ms = {}\n\
             timeout_ms = {}\nconcurrency = 1\n\n",
            self.name(),
            self.event_type(),
            self.route(),
            self.backoff_initial_ms,
            self.backoff_max_ms,
            self.timeout_ms,
        )
    }
}

/// The table: every code of the contract, a timeout, and `Retry-After` with and without.
fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for code in REJECT {
        let answer = Answer::Status(code, None);
        rows.push(Row::new(format!("{code}"), answer, Expect::Rejected));
    }
    for code in RETRY {
        let answer = Answer::Status(code, None);
        rows.push(Row::new(format!("{code}"), answer, Expect::MaxAttempts));
    }
    rows.push(Row {
        timeout_ms: 300,
        ..Row::new("timeout".into(), Answer::TooSlow, Expect::MaxAttempts)
    });
    // The same backoff with and without `Retry-After: 2`: the bound of the first delay is
    // 100 ms, the app asks for 2 s.
    for (label, retry_after) in [("503-retry-after-2", Some(2)), ("503-no-retry-after", None)] {
        rows.push(Row {
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
            ..Row::new(
                label.into(),
                Answer::Status(503, retry_after),
                Expect::MaxAttempts,
            )
        });
    }
    // A `Retry-After` beyond `backoff_max_ms` waits `backoff_max_ms`.
    rows.push(Row {
        backoff_initial_ms: 100,
        backoff_max_ms: 1_000,
        ..Row::new(
            "429-retry-after-30".into(),
            Answer::Status(429, Some(30)),
            Expect::MaxAttempts,
        )
    });
    rows
}

#[tokio::test]
async fn every_answer_of_the_outcome_table_ends_as_the_contract_says() {
    let app = TestApp::start().await;
    let rows = rows();
    for row in &rows {
        match row.answer {
            Answer::Status(code, retry_after) => {
                app.always(&row.route(), code);
                if let Some(seconds) = retry_after {
                    app.answer_header(&row.route(), "retry-after", &seconds.to_string());
                }
            }
            Answer::TooSlow => app.delay(&row.route(), Duration::from_millis(1_500)),
        }
    }
    let toml: String = rows.iter().map(Row::toml).collect();
    let sidecar = Settings::new().app(&app.url).config_file(&toml).start();
    sidecar.wait_ready().await;
    let broker = Broker::connect().await;

    let started = Instant::now();
    join_all(rows.iter().map(|row| check(&sidecar, &broker, &app, row))).await;
    println!(
        "outcome table: {} rows checked in {:?}",
        rows.len(),
        started.elapsed()
    );

    for row in &rows {
        sidecar.cleanup_subscription(&broker, &row.name()).await;
    }
    sidecar.cleanup(&broker).await;
}

/// Delivers one event through the row's subscription and checks its POSTs and dead letter.
async fn check(sidecar: &Sidecar, broker: &Broker, app: &TestApp, row: &Row) {
    let label = &row.label;
    let route = row.route();
    let published = sidecar
        .publish(&row.event_type(), &format!(r#"{{"row":"{label}"}}"#), &[])
        .await;
    assert_eq!(published.status, 202, "{label}: {published:?}");
    let event_id = published.body["event_id"].as_str().unwrap().to_owned();

    app.wait_for(&route, row.posts(), ARRIVES).await;
    let listed = sidecar.wait_dead_letters(&row.name(), 1, ARRIVES).await;

    // From now on the app accepts, so the marker goes through; after it, the count of POSTs
    // of the event is final (see `common::marker`).
    app.always(&route, 200);
    app.delay(&route, Duration::ZERO);
    common::marker(sidecar, broker, app, &row.name(), &row.event_type(), &route).await;
    let posts: Vec<_> = app
        .received(&route)
        .into_iter()
        .filter(|r| r.event_id() == event_id)
        .collect();
    let attempts: Vec<&str> = posts
        .iter()
        .map(|r| r.header("x-delivery-attempt").unwrap())
        .collect();
    let expected: Vec<String> = (1..=row.posts()).map(|n| n.to_string()).collect();
    assert_eq!(attempts, expected, "{label}: the attempts the app saw");

    let letter = &listed["dead_letters"][0];
    assert_eq!(letter["event_id"], event_id.as_str(), "{label}: {letter}");
    let (reason, last_error) = match (row.expect, row.answer) {
        (Expect::Rejected, Answer::Status(code, _)) => ("rejected", format!("answered {code}")),
        (Expect::MaxAttempts, Answer::Status(code, _)) => {
            ("max-attempts", format!("answered {code}"))
        }
        (_, Answer::TooSlow) => ("max-attempts", "did not answer in time".to_owned()),
    };
    assert_eq!(letter["reason"], reason, "{label}: {letter}");
    assert_eq!(letter["attempts"], row.posts(), "{label}: {letter}");
    match row.answer {
        Answer::Status(code, _) => assert_eq!(letter["last_status"], code, "{label}: {letter}"),
        Answer::TooSlow => assert_eq!(letter["last_status"], Value::Null, "{label}: {letter}"),
    }
    assert!(
        letter["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&last_error)),
        "{label}: {letter}"
    );
    // The marker was accepted: the dead letter is still the only one.
    let after = sidecar.dead_letters(&row.name()).await;
    assert_eq!(after["total"], 1, "{label}: {after}");

    let gaps: Vec<Duration> = posts.windows(2).map(|p| p[1].at - p[0].at).collect();
    check_gaps(row, &gaps);
    println!(
        "outcome {label}: {} POSTs, gaps {:?}, reason {reason}, last_status {}",
        posts.len(),
        gaps,
        letter["last_status"]
    );
}

/// The time between two POSTs of one event: the backoff, or what `Retry-After` asked for.
fn check_gaps(row: &Row, gaps: &[Duration]) {
    let label = &row.label;
    let max = Duration::from_millis(row.backoff_max_ms);
    for (n, gap) in gaps.iter().enumerate() {
        // After failed attempt n + 1 the delay is drawn below this bound.
        let bound = (Duration::from_millis(row.backoff_initial_ms) * 2u32.pow(n as u32)).min(max);
        let asked = match row.answer {
            Answer::Status(_, Some(seconds)) => Duration::from_secs(seconds),
            _ => Duration::ZERO,
        };
        // The delay is at least what the app asked for and at most `backoff_max_ms`. Both
        // POSTs' arrival times are taken in this process; the delay starts after the first
        // one arrived, so a gap below it would be a retry that came too early.
        let least = asked.min(max);
        // The gap also holds the failed attempt itself: for an app too slow, the timeout.
        let answering = match row.answer {
            Answer::TooSlow => Duration::from_millis(row.timeout_ms),
            Answer::Status(..) => Duration::ZERO,
        };
        let most = bound.max(least) + answering;
        assert!(
            *gap + Duration::from_millis(20) >= least,
            "{label}: attempt {} came {gap:?} after the one before; at least {least:?} was due",
            n + 2
        );
        assert!(
            *gap <= most + SLACK,
            "{label}: attempt {} came {gap:?} after the one before; at most {most:?} was due",
            n + 2
        );
    }
}
