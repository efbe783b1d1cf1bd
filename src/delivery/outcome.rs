//! From the app's answer to what happens to the message: the one place that decides.

use std::time::Duration;

use crate::{broker::Backoff, subscription::SubscriptionSpec};

/// What the app's side of one delivery attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppAnswer {
    /// The app answered with this status (and maybe a `Retry-After` in seconds).
    Status {
        /// The HTTP status code.
        code: u16,
        /// The delay the app asked for.
        retry_after: Option<Duration>,
        /// What a failing answer said: the `detail` of a problem+json body, or the start of
        /// a plain-text one (see [`error_detail`]).
        detail: Option<String>,
    },
    /// No answer within the subscription's `timeout_ms`.
    Timeout,
    /// The app could not be reached (reset, a broken answer, …).
    Unreachable(String),
    /// Nothing accepts connections at the app's address: the app is not running (starting,
    /// restarting, or stopped before its sidecar, as Kubernetes stops native sidecars last).
    NotListening(String),
}

impl AppAnswer {
    /// The status code, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            AppAnswer::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A short description for logs and dead-letter headers.
    pub fn describe(&self) -> String {
        match self {
            AppAnswer::Status {
                code,
                detail: Some(detail),
                ..
            } => format!("the app answered {code}: {detail}"),
            AppAnswer::Status { code, .. } => format!("the app answered {code}"),
            AppAnswer::Timeout => "the app did not answer in time".into(),
            AppAnswer::Unreachable(error) => format!("the app is unreachable: {error}"),
            AppAnswer::NotListening(error) => format!("the app is not listening: {error}"),
        }
    }
}

/// Longest detail kept from a failing answer's body.
const MAX_DETAIL: usize = 200;

/// What a failing answer's body says, for logs, dead letters and flows: the `detail` (else
/// `title`) of a JSON body, or the first line of a `text/*` one; at most 200 characters, with
/// control characters replaced. Nothing for other bodies.
pub fn error_detail(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let kind = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    let text = if kind.ends_with("json") {
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        ["detail", "title"]
            .iter()
            .find_map(|field| value.get(field)?.as_str().map(str::to_owned))?
    } else if kind.starts_with("text/") {
        String::from_utf8_lossy(body).lines().next()?.to_owned()
    } else {
        return None;
    };
    let mut clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL)
        .collect();
    clean = clean.trim().to_owned();
    (!clean.is_empty()).then_some(clean)
}

/// Why an event went to the dead-letter queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The app rejected it (400, 401, 403, 410, 413, 415, 422, 501).
    Rejected,
    /// It failed `max_attempts` times.
    MaxAttempts,
    /// The message is not a valid envelope.
    Undecodable,
    /// The payload does not match its schema.
    Schema,
}

impl Reason {
    /// The value of the `x-causeway-reason` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::MaxAttempts => "max-attempts",
            Reason::Undecodable => "undecodable",
            Reason::Schema => "schema",
        }
    }
}

/// What to do with a message after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The app accepted it: record it as done, then ack.
    Done,
    /// Try again after `delay`.
    Retry {
        /// How long the message waits before the next attempt.
        delay: Duration,
    },
    /// Give up: move it to the dead-letter queue.
    DeadLetter(Reason),
}

/// Status codes by which the app says "never send me this again".
const REJECT: [u16; 8] = [400, 401, 403, 410, 413, 415, 422, 501];

/// Decides the fate of a message after `attempt` (1-based) ended with `answer`.
///
/// 2xx is done; a reject code dead-letters at once; anything else retries with exponential
/// backoff and full jitter, never sooner than a `Retry-After` the app sent, never later
/// than `backoff_max_ms`, until `max_attempts` attempts have failed.
pub fn disposition(answer: &AppAnswer, attempt: u32, spec: &SubscriptionSpec) -> Disposition {
    match answer {
        AppAnswer::Status { code, .. } if (200..300).contains(code) => Disposition::Done,
        AppAnswer::Status { code, .. } if REJECT.contains(code) => {
            Disposition::DeadLetter(Reason::Rejected)
        }
        _ if attempt >= spec.max_attempts => Disposition::DeadLetter(Reason::MaxAttempts),
        _ => {
            let max = Duration::from_millis(spec.backoff_max_ms);
            let jittered = backoff_for(spec, attempt).next_delay();
            let asked = match answer {
                AppAnswer::Status { retry_after, .. } => retry_after.unwrap_or_default(),
                _ => Duration::ZERO,
            };
            Disposition::Retry {
                delay: jittered.max(asked).min(max),
            }
        }
    }
}

/// The backoff positioned at `attempt`: its bound is `initial × 2^(attempt-1)`, capped.
pub fn backoff_for(spec: &SubscriptionSpec, attempt: u32) -> Backoff {
    let mut backoff = Backoff::new(
        Duration::from_millis(spec.backoff_initial_ms),
        Duration::from_millis(spec.backoff_max_ms),
    );
    backoff.skip(attempt.saturating_sub(1));
    backoff
}

/// How many retry wait queues a subscription has: one per distinct backoff bound, so that
/// the messages of one queue wait at most that bound, whatever their order.
pub fn wait_tiers(spec: &SubscriptionSpec) -> u32 {
    let retries = spec.max_attempts.saturating_sub(1).max(1);
    let max = Duration::from_millis(spec.backoff_max_ms);
    (1..=retries)
        .find(|&attempt| backoff_for(spec, attempt).bound() >= max)
        .unwrap_or(retries)
}

/// The wait queue (1-based tier) for a retry after `attempt` failed.
pub fn wait_tier(spec: &SubscriptionSpec, attempt: u32) -> u32 {
    attempt.clamp(1, wait_tiers(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SubscriptionSpec {
        serde_json::from_str(
            r#"{"event_type":"A","route":"/a","max_attempts":5,
                "backoff_initial_ms":100,"backoff_max_ms":1000}"#,
        )
        .unwrap()
    }

    fn status(code: u16) -> AppAnswer {
        AppAnswer::Status {
            code,
            retry_after: None,
            detail: None,
        }
    }

    #[test]
    fn a_failing_answer_is_described_with_what_its_body_says() {
        let problem =
            br#"{"type":"about:blank","title":"Unprocessable","detail":"unknown SKU\nflux"}"#;
        assert_eq!(
            error_detail(Some("application/problem+json"), problem).as_deref(),
            Some("unknown SKU flux")
        );
        assert_eq!(
            error_detail(
                Some("application/json; charset=utf-8"),
                br#"{"title":"No"}"#
            )
            .as_deref(),
            Some("No")
        );
        assert_eq!(
            error_detail(Some("text/plain"), b"out of stock\nsecond line").as_deref(),
            Some("out of stock")
        );
        let long = "x".repeat(500);
        assert_eq!(
            error_detail(Some("text/plain"), long.as_bytes())
                .unwrap()
                .len(),
            200
        );
        assert_eq!(error_detail(Some("image/png"), b"\x89PNG"), None);
        assert_eq!(error_detail(None, b"hello"), None);
        assert_eq!(error_detail(Some("application/json"), b"[1]"), None);
        let answer = AppAnswer::Status {
            code: 422,
            retry_after: None,
            detail: Some("unknown SKU".into()),
        };
        assert_eq!(answer.describe(), "the app answered 422: unknown SKU");
    }

    #[test]
    fn success_is_done_whatever_the_attempt() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(disposition(&status(code), 1, &spec()), Disposition::Done);
            assert_eq!(disposition(&status(code), 5, &spec()), Disposition::Done);
        }
    }

    #[test]
    fn reject_codes_dead_letter_at_once() {
        for code in REJECT {
            assert_eq!(
                disposition(&status(code), 1, &spec()),
                Disposition::DeadLetter(Reason::Rejected),
                "{code}"
            );
        }
    }

    #[test]
    fn everything_else_retries_within_the_bound_then_dead_letters() {
        let answers = [
            status(404),
            status(408),
            status(409),
            status(429),
            status(500),
            status(503),
            AppAnswer::Timeout,
            AppAnswer::Unreachable("connection reset".into()),
            AppAnswer::NotListening("connection refused".into()),
        ];
        for answer in &answers {
            for (attempt, bound_ms) in [(1, 100), (2, 200), (3, 400), (4, 800)] {
                for _ in 0..20 {
                    match disposition(answer, attempt, &spec()) {
                        Disposition::Retry { delay } => {
                            assert!(delay <= Duration::from_millis(bound_ms), "{delay:?}")
                        }
                        other => panic!("{answer:?} at {attempt}: {other:?}"),
                    }
                }
            }
            assert_eq!(
                disposition(answer, 5, &spec()),
                Disposition::DeadLetter(Reason::MaxAttempts)
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum() {
        let asked = |secs| AppAnswer::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(secs)),
            detail: None,
        };
        let Disposition::Retry { delay } = disposition(&asked(60), 1, &spec()) else {
            panic!("expected a retry");
        };
        assert_eq!(
            delay,
            Duration::from_millis(1000),
            "capped at backoff_max_ms"
        );
        let mut long = spec();
        long.backoff_max_ms = 120_000;
        let Disposition::Retry { delay } = disposition(&asked(60), 1, &long) else {
            panic!("expected a retry");
        };
        assert_eq!(delay, Duration::from_secs(60));
    }

    #[test]
    fn wait_tiers_stop_where_the_bound_is_capped() {
        // Bounds 100, 200, 400, 800, 1000: the fifth would be the cap, but only four
        // retries happen with five attempts.
        assert_eq!(wait_tiers(&spec()), 4);
        let mut s = spec();
        s.max_attempts = 20;
        assert_eq!(wait_tiers(&s), 5);
        assert_eq!(wait_tier(&s, 3), 3);
        assert_eq!(wait_tier(&s, 12), 5);
        s.max_attempts = 1;
        assert_eq!(wait_tiers(&s), 1, "a tier exists even without retries");
    }
}
