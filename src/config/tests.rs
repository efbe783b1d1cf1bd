use std::{ffi::OsString, os::unix::ffi::OsStringExt};

use super::{values::*, *};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn origins(error: &ConfigError) -> Vec<&str> {
    error.0.iter().map(|i| i.origin.as_str()).collect()
}

#[test]
fn defaults_apply_when_only_the_service_is_set() {
    let config = Config::load(None, &env(&[("CAUSEWAY_SERVICE", "orders")])).unwrap();
    assert_eq!(config.service, "orders");
    assert_eq!(config.api_addr, "127.0.0.1:7070".parse().unwrap());
    assert_eq!(config.admin_addr, "0.0.0.0:7071".parse().unwrap());
    assert_eq!(config.broker.exchange, "causeway.events");
    assert_eq!(config.broker.unrouted, "causeway.unrouted");
    assert_eq!(
        config.broker.urls,
        ["amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10&frame_max=16384"]
    );
    assert_eq!(config.max_body, 1024 * 1024);
    assert_eq!(config.dedup_retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.api_token, None);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(config.worker_threads, cores.min(2));
}

#[test]
fn every_invalid_variable_is_named_at_once() {
    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_API_ADDR", "nowhere"),
            ("CAUSEWAY_MAX_BODY", "lots"),
            ("CAUSEWAY_AMQP_URL", "http://broker"),
            ("CAUSEWAY_CONFIRM_TIMEOUT", "0s"),
            ("CAUSEWAY_WORKER_THREADS", "0"),
            ("CAUSEWAY_LOG_FORMAT", "xml"),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        origins(&error),
        [
            "CAUSEWAY_SERVICE",
            "CAUSEWAY_API_ADDR",
            "CAUSEWAY_AMQP_URL",
            "CAUSEWAY_MAX_BODY",
            "CAUSEWAY_CONFIRM_TIMEOUT",
            "CAUSEWAY_LOG_FORMAT",
            "CAUSEWAY_WORKER_THREADS",
        ]
    );
    let text = error.to_string();
    assert!(
        text.contains("CAUSEWAY_SERVICE: required but not set"),
        "{text}"
    );
    assert!(text.contains("\"lots\""), "{text}");
}

#[test]
fn sizes_and_durations_take_units() {
    assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
    assert_eq!(parse_size("2mb"), Ok(2 * 1024 * 1024));
    assert_eq!(parse_size("100"), Ok(100));
    assert!(parse_size("0").is_err());
    assert!(parse_size("1GiB").is_err());
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
}

#[test]
fn explicit_heartbeat_and_frame_max_are_kept() {
    assert_eq!(
        parse_amqp_url("amqp://u:p@host:5672/vh?heartbeat=30").unwrap(),
        "amqp://u:p@host:5672/vh?heartbeat=30&frame_max=16384"
    );
    assert_eq!(
        parse_amqp_url("amqps://host/vh?frame_max=8192").unwrap(),
        "amqps://host/vh?frame_max=8192&heartbeat=10"
    );
}

#[test]
fn an_address_list_names_each_node_and_a_bad_entry_by_its_place() {
    let urls = parse_amqp_urls(
        "amqp://u:p@rabbit-0:5672/vh, amqp://u:p@rabbit-1:5672/vh ,amqps://v:q@rabbit-2/other",
    )
    .unwrap();
    assert_eq!(
        urls,
        [
            "amqp://u:p@rabbit-0:5672/vh?heartbeat=10&frame_max=16384",
            "amqp://u:p@rabbit-1:5672/vh?heartbeat=10&frame_max=16384",
            "amqps://v:q@rabbit-2/other?heartbeat=10&frame_max=16384",
        ]
    );
    let error = parse_amqp_urls("amqp://a:b@one/%2f,http://two").unwrap_err();
    assert!(error.starts_with("address 2 of the list"), "{error}");
    assert!(!error.contains("two"), "the value is echoed: {error}");
    assert!(parse_amqp_urls("amqp://one,,amqp://two").is_err());
    assert_eq!(parse_amqp_urls("amqp://one, amqp://one").unwrap().len(), 1);
}

#[test]
fn the_file_fills_in_and_the_environment_wins() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        "service = \"billing\"\nmax_body = 2048\nexchange = \"from-file\"\n",
    )
    .unwrap();
    let config = Config::load(Some(&path), &env(&[("CAUSEWAY_EXCHANGE", "from-env")])).unwrap();
    assert_eq!(config.service, "billing");
    assert_eq!(config.max_body, 2048);
    assert_eq!(config.broker.exchange, "from-env");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_file_keys_and_bad_file_values_are_reported() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        "service = \"billing\"\nmax_bodyy = 1\nmax_in_flight = 0\n",
    )
    .unwrap();
    let error = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    let name = path.display().to_string();
    assert_eq!(
        origins(&error),
        [
            format!("max_bodyy in {name}"),
            format!("max_in_flight in {name}")
        ]
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_file_is_reported() {
    let error = Config::load(
        Some(Path::new("/nonexistent/causeway.toml")),
        &env(&[("CAUSEWAY_SERVICE", "orders")]),
    )
    .unwrap_err();
    assert_eq!(origins(&error), ["/nonexistent/causeway.toml"]);
}

#[test]
fn a_toml_error_names_its_line_and_column_and_no_secret() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        "service = \"billing\"\namqp_url = \"amqp://u:hunter2@rabbit/%2f\"\nmax_body = = 2\n",
    )
    .unwrap();
    let error = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    assert_eq!(origins(&error), [path.display().to_string()]);
    let problem = &error.0[0].problem;
    assert!(
        problem.starts_with("not valid TOML at line 3, column 12: "),
        "{problem}"
    );
    assert!(!error.to_string().contains("hunter2"), "{error}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_file_that_fails_adds_no_missing_service_but_real_env_problems_stay() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(&path, "service = \"billing\n").unwrap();
    let error = Config::load(
        Some(&path),
        &env(&[
            ("CAUSEWAY_MAX_BODY", "lots"),
            ("CAUSEWAY_LOG_FORMAT", "xml"),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        origins(&error),
        [
            path.display().to_string().as_str(),
            "CAUSEWAY_MAX_BODY",
            "CAUSEWAY_LOG_FORMAT"
        ]
    );
    assert!(error.0[0].problem.contains("line 1, column"), "{error}");
    // The same for a file that cannot be read.
    let missing = dir.join("missing.toml");
    let error = Config::load(Some(&missing), &HashMap::new()).unwrap_err();
    assert_eq!(origins(&error), [missing.display().to_string()]);
    // Without a file, a missing service is still reported.
    let error = Config::load(None, &HashMap::new()).unwrap_err();
    assert_eq!(origins(&error), ["CAUSEWAY_SERVICE"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn subscriptions_come_from_the_file_and_are_checked() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        r#"
service = "inventory"

[[subscriptions]]
name = "reserve-stock"
event_type = "OrderPlaced"
versions = [1, 2]
route = "/events/order-placed"
max_attempts = 3

[[subscriptions]]
name = "audit"
event_type = "OrderPlaced"
route = "/audit"
"#,
    )
    .unwrap();
    let config = Config::load(Some(&path), &HashMap::new()).unwrap();
    let names: Vec<_> = config
        .subscriptions
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["reserve-stock", "audit"]);
    assert_eq!(config.subscriptions[0].spec.max_attempts, 3);
    assert_eq!(config.subscriptions[0].spec.versions, Some(vec![1, 2]));

    std::fs::write(
        &path,
        r#"
service = "inventory"

[[subscriptions]]
name = "a"
event_type = "OrderPlaced"
route = "no-slash"

[[subscriptions]]
event_type = "OrderPlaced"
route = "/b"

[[subscriptions]]
name = "c"
event_type = "OrderPlaced"
route = "/c"
retries = 4
"#,
    )
    .unwrap();
    let error = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    let text = error.to_string();
    assert_eq!(error.0.len(), 3, "{text}");
    assert!(text.contains("subscriptions[0] (a).route"), "{text}");
    assert!(text.contains("subscriptions[1]"), "{text}");
    assert!(text.contains("retries"), "{text}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unknown_causeway_variables_are_warned_about_but_kubernetes_ones_are_not() {
    let config = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_MAX_BODYY", "1"),
            ("CAUSEWAY_SERVICE_HOST", "10.0.0.1"),
            ("CAUSEWAY_PORT_7070_TCP", "tcp://10.0.0.1:7070"),
            ("CAUSEWAY_CONFIG", "/etc/causeway.toml"),
        ]),
    )
    .unwrap();
    assert_eq!(
        config.warnings,
        ["CAUSEWAY_MAX_BODYY is set but no setting reads it (a typo?)"]
    );
}

#[test]
fn values_that_may_hold_secrets_are_not_echoed() {
    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_AMQP_URL", "http://user:hunter2@rabbit"),
            ("CAUSEWAY_DEDUP_URL", "rediss://:hunter2@redis"),
            ("CAUSEWAY_APP_URL", "https://127.0.0.1:8080"),
        ]),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("CAUSEWAY_AMQP_URL") && text.contains("CAUSEWAY_DEDUP_URL"),
        "{text}"
    );
    assert!(text.contains("\"https://127.0.0.1:8080\""), "{text}");
}

fn os_env(pairs: &[(&str, &[u8])]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from_vec(v.to_vec())))
        .collect()
}

#[test]
fn a_setting_that_is_not_utf8_is_named_without_its_value() {
    let error = Config::from_vars(
        None,
        os_env(&[
            ("CAUSEWAY_SERVICE", b"orders"),
            ("CAUSEWAY_AMQP_URL", b"amqp://u:hunter2\xff@rabbit"),
            ("CAUSEWAY_API_TOKEN", b"hunter2hunter2hunter2\xfe"),
            ("OTEL_EXPORTER_OTLP_HEADERS", b"authorization=hunter2\xff"),
            ("RUST_LOG", b"\xffinfo"),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        origins(&error),
        [
            "CAUSEWAY_AMQP_URL",
            "CAUSEWAY_API_TOKEN",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "RUST_LOG"
        ]
    );
    let text = error.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("not valid UTF-8"), "{text}");
}

#[test]
fn variables_nothing_reads_may_hold_any_bytes() {
    let config = Config::from_vars(
        None,
        os_env(&[
            ("CAUSEWAY_SERVICE", b"orders"),
            ("UNRELATED_DB_PASSWORD", b"hunter2\xff"),
            ("LANG", b"\xc3\x28"),
            ("CAUSEWAY_API_URL", b"http://\xff"),
            ("CAUSEWAY_MAX_BODYY", b"\xff"),
        ]),
    )
    .unwrap();
    assert_eq!(config.service, "orders");
    assert_eq!(
        config.warnings,
        ["CAUSEWAY_MAX_BODYY is set but no setting reads it (a typo?)"]
    );
    let mut name = b"CAUSEWAY_\xff".to_vec();
    name.extend_from_slice(b"X");
    let vars = vec![
        (OsString::from("CAUSEWAY_SERVICE"), OsString::from("orders")),
        (OsString::from_vec(name), OsString::from("1")),
    ];
    let config = Config::from_vars(None, vars).unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].starts_with("CAUSEWAY_\u{fffd}X"));
}

#[test]
fn the_config_file_may_have_any_path() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut path = dir.clone().into_os_string().into_vec();
    path.extend_from_slice(b"/caus\xffeway.toml");
    let path = OsString::from_vec(path);
    std::fs::write(&path, "service = \"billing\"\n").unwrap();
    let config = Config::from_vars(None, vec![(OsString::from(CONFIG_FILE_VAR), path)]).unwrap();
    assert_eq!(config.service, "billing");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn broker_names_that_cannot_be_declared_are_refused() {
    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_EXCHANGE", "amq.topic"),
            ("CAUSEWAY_UNROUTED_QUEUE", "amq.unrouted"),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        origins(&error),
        ["CAUSEWAY_EXCHANGE", "CAUSEWAY_UNROUTED_QUEUE"]
    );
    assert!(error.to_string().contains("reserved"), "{error}");

    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_EXCHANGE", "shared.events"),
            ("CAUSEWAY_UNROUTED_QUEUE", "shared.events"),
        ]),
    )
    .unwrap_err();
    assert_eq!(origins(&error), ["CAUSEWAY_UNROUTED_QUEUE"]);
    assert!(error.to_string().contains("events exchange"), "{error}");
    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_UNROUTED_QUEUE", "causeway.events"),
        ]),
    )
    .unwrap_err();
    assert_eq!(origins(&error), ["CAUSEWAY_UNROUTED_QUEUE"]);
}

#[test]
fn an_unrouted_queue_that_is_a_subscription_queue_is_refused() {
    let dir = std::env::temp_dir().join(format!("causeway-config-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        "service = \"orders\"\nunrouted_queue = \"orders.audit.dlq\"\n\n[[subscriptions]]\nname = \"audit\"\nevent_type = \"OrderPlaced\"\nroute = \"/audit\"\n",
    )
    .unwrap();
    let error = Config::load(Some(&path), &HashMap::new()).unwrap_err();
    assert_eq!(
        origins(&error),
        [format!("unrouted_queue in {}", path.display())]
    );
    assert!(
        error.to_string().contains("subscription \"audit\""),
        "{error}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn app_urls_the_client_cannot_use_as_written_are_refused_without_credentials() {
    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_APP_URL", "http://127.0.0.1:99999"),
        ]),
    )
    .unwrap_err();
    assert!(error.to_string().contains("out of range"), "{error}");
    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_APP_URL", "http://user:hunter2@127.0.0.1:8080"),
        ]),
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("\"http://***@127.0.0.1:8080\""), "{text}");
    let config = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_APP_URL", "http://app:8080/hooks/"),
        ]),
    )
    .unwrap();
    assert_eq!(config.app_url.address, "app:8080");
    assert_eq!(config.app_url.prefix, "/hooks");
}

#[test]
fn credentials_are_cut_from_what_is_shown() {
    assert_eq!(
        without_credentials("http://u:p@host:1/x"),
        "http://***@host:1/x"
    );
    assert_eq!(without_credentials("http://host/x"), "http://host/x");
    assert_eq!(
        without_credentials("http://u:p/a@b?c@host"),
        "http://***@host"
    );
    assert_eq!(without_credentials("u:p@host://x"), "***@host://x");
}

#[test]
fn redis_urls_are_checked_by_the_client() {
    assert!(parse_redis_url("redis://127.0.0.1:6379/0").is_ok());
    assert!(parse_redis_url("redis://:pw@redis/2").is_ok());
    for bad in [
        "redis://",
        "redis://host/notanumber",
        "redis://host:99999",
        "redis://host/?protocol=hunter2",
    ] {
        let problem = parse_redis_url(bad).unwrap_err();
        assert!(!problem.contains("hunter2"), "{bad}: {problem}");
    }
}

#[test]
fn a_required_setting_that_is_not_utf8_is_reported_once() {
    let error =
        Config::from_vars(None, os_env(&[("CAUSEWAY_SERVICE", b"ord\xffers")])).unwrap_err();
    assert_eq!(origins(&error), ["CAUSEWAY_SERVICE"]);
}

#[test]
fn the_http_limits_have_defaults_for_128_mib_and_name_each_bad_value() {
    let config = Config::load(None, &env(&[("CAUSEWAY_SERVICE", "orders")])).unwrap();
    let http = config.http;
    assert_eq!(http.api_max_connections, 1024);
    assert_eq!(http.admin_max_connections, 64);
    assert_eq!(http.read_timeout, Duration::from_secs(10));
    assert_eq!(http.idle_timeout, Duration::from_secs(60));
    assert_eq!(http.api_max_requests, 256);

    let error = Config::load(
        None,
        &env(&[
            ("CAUSEWAY_SERVICE", "orders"),
            ("CAUSEWAY_API_MAX_CONNECTIONS", "0"),
            ("CAUSEWAY_ADMIN_MAX_CONNECTIONS", "many"),
            ("CAUSEWAY_READ_TIMEOUT", "0s"),
            ("CAUSEWAY_IDLE_TIMEOUT", "10"),
            ("CAUSEWAY_API_MAX_REQUESTS", "65536"),
        ]),
    )
    .unwrap_err();
    assert_eq!(
        origins(&error),
        [
            "CAUSEWAY_API_MAX_CONNECTIONS",
            "CAUSEWAY_ADMIN_MAX_CONNECTIONS",
            "CAUSEWAY_READ_TIMEOUT",
            "CAUSEWAY_IDLE_TIMEOUT",
            "CAUSEWAY_API_MAX_REQUESTS",
        ]
    );
    let text = error.to_string();
    for expected in [
        "CAUSEWAY_API_MAX_CONNECTIONS: expected a whole number from 1 to 1000000 (got \"0\")",
        "CAUSEWAY_READ_TIMEOUT: expected a duration above zero (got \"0s\")",
        "CAUSEWAY_IDLE_TIMEOUT: expected a duration such as 500ms, 5s, 10m or 7d (got \"10\")",
        "CAUSEWAY_API_MAX_REQUESTS: expected a whole number from 1 to 65535 (got \"65536\")",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
}

#[test]
fn the_http_limits_are_read_from_the_file() {
    let dir = std::env::temp_dir().join(format!("causeway-http-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("causeway.toml");
    std::fs::write(
        &path,
        "service = \"orders\"\napi_max_connections = 100\nadmin_max_connections = 8\n\
         read_timeout = \"2s\"\nidle_timeout = \"5m\"\napi_max_requests = 32\n",
    )
    .unwrap();
    let http = Config::load(Some(&path), &HashMap::new()).unwrap().http;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(http.api_max_connections, 100);
    assert_eq!(http.admin_max_connections, 8);
    assert_eq!(http.read_timeout, Duration::from_secs(2));
    assert_eq!(http.idle_timeout, Duration::from_secs(300));
    assert_eq!(http.api_max_requests, 32);
}
