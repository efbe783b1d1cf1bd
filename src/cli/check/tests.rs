use super::*;
use crate::config::Invalid;

#[test]
fn the_exit_code_is_64_for_an_invalid_configuration_1_for_a_failure_and_0_otherwise() {
    let invalid = Report::new(invalid(&ConfigError(vec![Invalid {
        origin: "CAUSEWAY_SERVICE".into(),
        problem: "required but not set".into(),
    }])));
    assert_eq!(invalid.exit_code, EXIT_CONFIG);
    assert_eq!(invalid.status, Status::Fail);
    assert!(
        invalid.checks[1..]
            .iter()
            .all(|finding| finding.status == Status::Skip)
    );

    let failed = Report::new(vec![
        Finding::ok("config", "valid"),
        Finding::fail("redis", "connection refused", "start Redis"),
        Finding::warn("app", "nothing listens", "start the app"),
    ]);
    assert_eq!(failed.exit_code, EXIT_FAILED);

    let warned = Report::new(vec![
        Finding::ok("config", "valid"),
        Finding::warn("app", "nothing listens", "start the app"),
        Finding::skip("redis", "not set"),
    ]);
    assert_eq!(warned.exit_code, 0);
    assert_eq!(warned.status, Status::Ok);
}

#[test]
fn the_text_has_one_line_per_check_with_its_fix_below() {
    let mut config = Finding::fail("config", "invalid: 1 problem(s)", "correct it");
    config.problems.push(Problem {
        origin: "CAUSEWAY_MAX_BODY".into(),
        problem: "expected a size".into(),
    });
    let report = Report::new(vec![
        config,
        Finding::ok("broker", "connected").on("amqp://rabbit:5672//"),
    ]);
    let text = report.render(Output::Text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "fail  config     invalid: 1 problem(s)", "{text}");
    assert_eq!(
        lines[1].trim(),
        "CAUSEWAY_MAX_BODY: expected a size",
        "{text}"
    );
    assert_eq!(lines[2].trim(), "fix: correct it", "{text}");
    assert_eq!(
        lines[3], "ok    broker     amqp://rabbit:5672//: connected",
        "{text}"
    );
    assert_eq!(lines.last(), Some(&"1 check(s) failed, 0 warning(s)"));

    let json: serde_json::Value = serde_json::from_str(&report.render(Output::Json)).unwrap();
    assert_eq!(json["exit_code"], 64);
    assert_eq!(
        json["checks"][0]["problems"][0]["origin"],
        "CAUSEWAY_MAX_BODY"
    );
    assert_eq!(json["checks"][1]["target"], "amqp://rabbit:5672//");
    assert!(json["checks"][1].get("fix").is_none());
}

#[test]
fn a_broker_failure_gets_the_fix_for_its_cause() {
    for (problem, fix) in [
        (
            "IO error: Connection refused (os error 111)",
            "nothing listens",
        ),
        (
            "ACCESS_REFUSED - Login was refused",
            "user name or password",
        ),
        ("NOT_ALLOWED - vhost nope not found", "virtual host"),
        ("no answer within 5s", "did not answer in time"),
        ("failed to lookup address information", "does not resolve"),
        ("something else", "check that RabbitMQ runs"),
    ] {
        assert!(
            probes::broker_fix(problem).contains(fix),
            "{problem}: {}",
            probes::broker_fix(problem)
        );
    }
}
